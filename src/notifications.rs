//! Outbound notifications to people: `ev.notify(channel, text)`.
//!
//! Owns: the `[notify.NAME]` channel configuration and its secrets (webhook
//! URLs, PagerDuty routing keys, webhook bearer tokens, read from files or
//! the environment), the three payload shapes (Slack-compatible incoming
//! webhook, generic JSON webhook, PagerDuty Events API v2), per session and
//! channel deduplication, and delivery: a bounded queue and one background
//! task per channel, so a slow or hanging endpoint delays only its own
//! channel and never the caller, with a per-request timeout and retries with
//! capped exponential backoff and jitter (honouring `Retry-After`).
//! Every outcome is published as a [`Delivery`] for the audit log and
//! metrics.
//!
//! URLs live only in config: a rule names a channel, never an address, so a
//! rule cannot reach arbitrary hosts. Redirects are not followed for the same
//! reason. Secrets never appear in logs, errors, `Debug` output or
//! [`Delivery::error`]: transport errors are stripped of their URL and every
//! error text is scrubbed of the channel's secrets. Notification texts may
//! hold visitor data, so they are logged at debug level only.
//!
//! Does not own: deciding when to notify (rules and their timers; several
//! timers on one event make an escalation chain), or writing the audit log
//! (the executor, from [`Notifier::delivered`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::net::retry_after;
use tokio::sync::{broadcast, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// PagerDuty's Events API v2 endpoint, used when a pagerduty channel sets no URL.
const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";
/// PagerDuty's limit on `payload.summary`, in characters.
const PAGERDUTY_SUMMARY_MAX: usize = 1024;
/// The PagerDuty severities accepted in `severity`.
const PAGERDUTY_SEVERITIES: [&str; 4] = ["critical", "error", "warning", "info"];
/// The default deduplication window per session and channel.
const DEFAULT_DEDUPE: Duration = Duration::from_secs(10 * 60);

/// Error bodies are read up to this many bytes, and quoted up to `EXCERPT` chars.
const BODY_LIMIT: usize = 2048;
const EXCERPT: usize = 200;
/// Outcomes kept for slow [`Notifier::delivered`] receivers.
const DELIVERY_BACKLOG: usize = 1024;
const REDACTED: &str = "<redacted>";

/// The kind of endpoint a channel talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// A Slack-compatible incoming webhook (`{"text": …}`).
    Slack,
    /// A generic JSON webhook.
    Webhook,
    /// PagerDuty Events API v2.
    Pagerduty,
}

impl ChannelKind {
    /// The name used in config and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Slack => "slack",
            ChannelKind::Webhook => "webhook",
            ChannelKind::Pagerduty => "pagerduty",
        }
    }
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_dedupe() -> Duration {
    DEFAULT_DEDUPE
}

/// `[notify.NAME]`: one channel; it names where its secrets are, never holds them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    /// `slack`, `webhook` or `pagerduty`.
    pub kind: ChannelKind,
    /// A file holding the endpoint URL (a secret).
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// An environment variable holding the endpoint URL (a secret).
    #[serde(default)]
    pub url_env: Option<String>,
    /// PagerDuty: a file holding the integration (routing) key.
    #[serde(default)]
    pub routing_key_file: Option<PathBuf>,
    /// PagerDuty: an environment variable holding the integration key.
    #[serde(default)]
    pub routing_key_env: Option<String>,
    /// Generic webhook: a file holding a bearer token sent as `Authorization`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Generic webhook: an environment variable holding the bearer token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// A second notification for the same session within this window is refused.
    #[serde(
        default = "default_dedupe",
        deserialize_with = "crate::config::duration"
    )]
    pub dedupe: Duration,
    /// PagerDuty: `critical`, `error` (default), `warning` or `info`.
    #[serde(default)]
    pub severity: Option<String>,
}

/// A problem with the `[notify]` configuration; never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// A channel setting is missing, unreadable or invalid.
    #[error("`{key}`: {message}")]
    Config {
        /// The config key, e.g. `notify.oncall.routing_key_file`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn config_error(key: impl Into<String>, message: impl Into<String>) -> NotifyError {
    NotifyError::Config {
        key: key.into(),
        message: message.into(),
    }
}

/// A secret string whose `Debug` never shows it.
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// One resolved channel: its secrets loaded and checked.
struct Channel {
    name: String,
    kind: ChannelKind,
    url: Url,
    routing_key: Option<Secret>,
    token: Option<HeaderValue>,
    severity: String,
    dedupe: Duration,
    /// Every form of a secret that could show up in an error text, longest first.
    secrets: Vec<String>,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &REDACTED)
            .field("dedupe", &self.dedupe)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// `text` with every secret of this channel replaced by `<redacted>`.
    fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), REDACTED);
            }
        }
        out
    }
}

/// Resolved channels (secrets loaded), by name. `Debug` shows names and kinds only.
#[derive(Clone, Default)]
pub struct Channels {
    by_name: BTreeMap<String, Arc<Channel>>,
}

impl fmt::Debug for Channels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.by_name.iter().map(|(n, c)| (n, c.kind)))
            .finish()
    }
}

impl Channels {
    /// Loads every channel's secrets; an error names the key, never the secret.
    pub fn from_config(raw: &BTreeMap<String, ChannelConfig>) -> Result<Channels, NotifyError> {
        let mut by_name = BTreeMap::new();
        for (name, cfg) in raw {
            by_name.insert(name.clone(), Arc::new(resolve(name, cfg)?));
        }
        Ok(Channels { by_name })
    }

    /// The configured channel names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    /// True when a channel of this name is configured.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The kind of the channel of this name, if configured.
    pub fn kind(&self, name: &str) -> Option<ChannelKind> {
        self.by_name.get(name).map(|c| c.kind)
    }

    /// True when no channel is configured.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// A configured channel with its secrets read and every setting checked;
/// each error names the `notify.NAME.*` key to fix.
fn resolve(name: &str, cfg: &ChannelConfig) -> Result<Channel, NotifyError> {
    if name.trim().is_empty() {
        return Err(config_error("notify", "a channel name is empty"));
    }
    let key = |field: &str| format!("notify.{name}.{field}");
    let (raw_url, url) = channel_url(cfg, &key)?;
    let routing_key = routing_key(cfg, &key)?;
    let (token, token_text) = bearer(cfg, &key)?;
    let severity = severity(cfg, &key)?;
    let mut secrets = url_secrets(&raw_url, &url);
    if let Some(k) = &routing_key {
        secrets.push(k.0.clone());
    }
    secrets.extend(token_text);
    secrets.retain(|s| !s.is_empty());
    secrets.sort();
    secrets.dedup();
    // Longest first, so a secret is scrubbed before any part of it.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    Ok(Channel {
        name: name.to_string(),
        kind: cfg.kind,
        url,
        routing_key,
        token,
        severity,
        dedupe: cfg.dedupe,
        secrets,
    })
}

/// The channel's URL as configured (a secret: from a file or the
/// environment; PagerDuty's public endpoint by default), and parsed.
fn channel_url(
    cfg: &ChannelConfig,
    key: &dyn Fn(&str) -> String,
) -> Result<(String, Url), NotifyError> {
    let kind = cfg.kind;
    let (raw_url, url_key) = match load_secret(
        &key("url_file"),
        cfg.url_file.as_deref(),
        &key("url_env"),
        cfg.url_env.as_deref(),
    )? {
        Some(found) => found,
        None if kind == ChannelKind::Pagerduty => {
            (PAGERDUTY_EVENTS_URL.to_string(), key("url_file"))
        }
        None => {
            return Err(config_error(
                key("url_file"),
                format!(
                    "a {kind} channel needs its URL: set `url_file` or `url_env` (URLs are secrets and never go in the config itself)"
                ),
            ))
        }
    };
    let url = Url::parse(&raw_url)
        .map_err(|e| config_error(&url_key, format!("not a valid URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(config_error(&url_key, "not an http(s) URL with a host"));
    }
    Ok((raw_url, url))
}

/// PagerDuty's integration key: required there, refused elsewhere.
fn routing_key(
    cfg: &ChannelConfig,
    key: &dyn Fn(&str) -> String,
) -> Result<Option<Secret>, NotifyError> {
    let found = load_secret(
        &key("routing_key_file"),
        cfg.routing_key_file.as_deref(),
        &key("routing_key_env"),
        cfg.routing_key_env.as_deref(),
    )?;
    match (cfg.kind, found) {
        (ChannelKind::Pagerduty, Some((k, _))) => Ok(Some(Secret(k))),
        (ChannelKind::Pagerduty, None) => Err(config_error(
            key("routing_key_file"),
            "a pagerduty channel needs its integration key: set `routing_key_file` or `routing_key_env`",
        )),
        (_, Some((_, k))) => Err(config_error(k, "only pagerduty channels take a routing key")),
        (_, None) => Ok(None),
    }
}

/// A webhook's bearer token, as the header to send and as text to scrub.
fn bearer(
    cfg: &ChannelConfig,
    key: &dyn Fn(&str) -> String,
) -> Result<(Option<HeaderValue>, Option<String>), NotifyError> {
    let found = load_secret(
        &key("token_file"),
        cfg.token_file.as_deref(),
        &key("token_env"),
        cfg.token_env.as_deref(),
    )?;
    match (cfg.kind, found) {
        (ChannelKind::Webhook, Some((t, k))) => {
            let mut v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                config_error(
                    &k,
                    "the token holds characters that cannot be sent in a header",
                )
            })?;
            v.set_sensitive(true);
            Ok((Some(v), Some(t)))
        }
        (_, Some((_, k))) => Err(config_error(k, "only webhook channels take a bearer token")),
        (_, None) => Ok((None, None)),
    }
}

/// PagerDuty's severity (`error` by default); refused for other kinds.
fn severity(cfg: &ChannelConfig, key: &dyn Fn(&str) -> String) -> Result<String, NotifyError> {
    match (&cfg.severity, cfg.kind) {
        (None, _) => Ok("error".to_string()),
        (Some(s), ChannelKind::Pagerduty) => {
            let s = s.trim().to_ascii_lowercase();
            if !PAGERDUTY_SEVERITIES.contains(&s.as_str()) {
                return Err(config_error(
                    key("severity"),
                    format!(
                        "unknown severity {s:?}; expected one of {}",
                        PAGERDUTY_SEVERITIES.join(", ")
                    ),
                ));
            }
            Ok(s)
        }
        (Some(_), _) => Err(config_error(
            key("severity"),
            "only pagerduty channels take a severity",
        )),
    }
}

/// The forms of a channel URL that must never appear in a log or error.
fn url_secrets(raw_url: &str, url: &Url) -> Vec<String> {
    let mut secrets = vec![raw_url.to_string(), url.as_str().to_string()];
    secrets.push(url.as_str().trim_end_matches('/').to_string());
    let mut path_query = url.path().to_string();
    if let Some(q) = url.query() {
        path_query.push('?');
        path_query.push_str(q);
        secrets.push(q.to_string());
    }
    secrets.push(path_query);
    secrets.push(url.path().to_string());
    // Short URL fragments ("/", "v2") would scrub ordinary words; the full
    // forms above already cover them.
    secrets.retain(|s| s.chars().count() >= 6);
    if url.as_str() == PAGERDUTY_EVENTS_URL {
        // The public default is no secret; scrubbing it would hide nothing.
        secrets.clear();
    }
    // Credentials are scrubbed whatever their length.
    if let Some(p) = url.password() {
        secrets.push(p.to_string());
    }
    secrets
}

/// Reads a secret from a file or an environment variable (at most one set).
/// Returns the trimmed value and the key it came from.
fn load_secret(
    file_key: &str,
    file: Option<&Path>,
    env_key: &str,
    env: Option<&str>,
) -> Result<Option<(String, String)>, NotifyError> {
    let (value, key) = match (file, env) {
        (Some(_), Some(_)) => {
            return Err(config_error(
                file_key,
                format!("set either `{file_key}` or `{env_key}`, not both"),
            ))
        }
        (None, None) => return Ok(None),
        (Some(path), None) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                config_error(file_key, format!("cannot read {}: {e}", path.display()))
            })?;
            if text.trim().is_empty() {
                return Err(config_error(
                    file_key,
                    format!("{} is empty", path.display()),
                ));
            }
            (text, file_key)
        }
        (None, Some(var)) => {
            let text = match std::env::var(var) {
                Ok(t) => t,
                Err(std::env::VarError::NotPresent) => {
                    return Err(config_error(
                        env_key,
                        format!("the environment variable {var} is not set"),
                    ))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(config_error(
                        env_key,
                        format!("the environment variable {var} is not valid UTF-8"),
                    ))
                }
            };
            if text.trim().is_empty() {
                return Err(config_error(
                    env_key,
                    format!("the environment variable {var} is empty"),
                ));
            }
            (text, env_key)
        }
    };
    Ok(Some((value.trim().to_string(), key.to_string())))
}

/// One notification, as a rule asked for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    /// The `[notify.NAME]` channel.
    pub channel: String,
    /// The session it is about.
    pub session_id: String,
    /// The rule that sent it.
    pub rule: String,
    /// What to tell people; may hold visitor data.
    pub text: String,
}

/// Why a notification was not queued.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// No `[notify.NAME]` of this name is configured.
    UnknownChannel(String),
    /// This session already notified this channel within the channel's window.
    Duplicate {
        /// The channel's `dedupe` window.
        window: Duration,
    },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::UnknownChannel(c) => {
                write!(
                    f,
                    "no notification channel `{c}` is configured ([notify.{c}])"
                )
            }
            Refused::Duplicate { window } => write!(
                f,
                "this session already notified this channel within {}",
                humantime::format_duration(*window)
            ),
        }
    }
}

impl std::error::Error for Refused {}

/// The outcome of one accepted notification; `error` never holds a secret or the text.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The channel.
    pub channel: String,
    /// The session it was about.
    pub session_id: String,
    /// The rule that sent it.
    pub rule: String,
    /// True when the endpoint accepted it (2xx).
    pub ok: bool,
    /// Requests made, first included (0 when it was dropped before any).
    pub attempts: u32,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// How deliveries are paced: timeouts, retries, queue size, shutdown grace.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    /// Limit for one request, connect to last byte.
    pub request_timeout: Duration,
    /// Requests per notification, first included.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each time.
    pub base_delay: Duration,
    /// Largest delay between two attempts.
    pub max_delay: Duration,
    /// Largest `Retry-After` honoured; a longer one is clamped to this.
    pub max_retry_after: Duration,
    /// Notifications waiting per channel; beyond it the oldest is dropped.
    pub queue_capacity: usize,
    /// After shutdown, how long queued and retrying notifications may still go out.
    pub shutdown_grace: Duration,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            request_timeout: Duration::from_secs(10),
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
            queue_capacity: 256,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl DeliveryPolicy {
    /// Capped exponential backoff before retry number `attempt` (1-based),
    /// with jitter in [50%, 100%] of the step.
    pub fn backoff(&self, attempt: u32) -> Duration {
        crate::net::backoff(self.base_delay, self.max_delay, attempt)
    }
}

/// A notification waiting in its channel's queue.
struct Job {
    n: Notification,
}

/// One channel's queue and the wake-up of its delivery task.
struct Lane {
    channel: Arc<Channel>,
    queue: Mutex<LaneQueue>,
    wake: Notify,
}

struct LaneQueue {
    jobs: VecDeque<Job>,
    /// Set by the delivery task as it exits; later sends fail at once.
    closed: bool,
}

/// When each (session, channel) pair was last accepted.
struct Seen {
    at: HashMap<(String, String), (Instant, Duration)>,
    prune_at: usize,
}

struct Inner {
    lanes: BTreeMap<String, Arc<Lane>>,
    seen: Mutex<Seen>,
    events: broadcast::Sender<Delivery>,
    capacity: usize,
    /// Child of the caller's shutdown token; also cancelled when the last
    /// handle is dropped.
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The sender: per channel a bounded queue and a background delivery task.
/// Cheap to clone; all clones share the queues.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifier")
            .field("channels", &self.inner.lanes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Notifier {
    /// Starts delivery tasks on the current tokio runtime with the default policy.
    pub fn start(channels: Channels, shutdown: CancellationToken) -> Notifier {
        Notifier::start_with(channels, DeliveryPolicy::default(), shutdown)
    }

    /// Starts delivery tasks on the current tokio runtime with `policy`.
    pub fn start_with(
        channels: Channels,
        policy: DeliveryPolicy,
        shutdown: CancellationToken,
    ) -> Notifier {
        let client = http_client(&policy);
        let (events, _) = broadcast::channel(DELIVERY_BACKLOG);
        let stop = shutdown.child_token();
        // After shutdown, deliveries get `shutdown_grace` more, then are cut off.
        let hard = CancellationToken::new();
        {
            let (stop, hard, grace) = (stop.clone(), hard.clone(), policy.shutdown_grace);
            tokio::spawn(async move {
                stop.cancelled().await;
                tokio::time::sleep(grace).await;
                hard.cancel();
            });
        }
        let tracker = TaskTracker::new();
        let policy = Arc::new(policy);
        let mut lanes = BTreeMap::new();
        for (name, channel) in channels.by_name {
            let lane = Arc::new(Lane {
                channel,
                queue: Mutex::new(LaneQueue {
                    jobs: VecDeque::new(),
                    closed: false,
                }),
                wake: Notify::new(),
            });
            tracker.spawn(run_lane(
                lane.clone(),
                client.clone(),
                policy.clone(),
                events.clone(),
                stop.clone(),
                hard.clone(),
            ));
            lanes.insert(name, lane);
        }
        tracker.close();
        Notifier {
            inner: Arc::new(Inner {
                lanes,
                seen: Mutex::new(Seen {
                    at: HashMap::new(),
                    prune_at: 1024,
                }),
                events,
                capacity: policy.queue_capacity.max(1),
                stop,
                tracker,
            }),
        }
    }

    /// Dedupe check and enqueue; never blocks or awaits. A full queue drops its oldest.
    pub fn send(&self, n: Notification) -> Result<(), Refused> {
        let Some(lane) = self.inner.lanes.get(&n.channel) else {
            tracing::debug!(channel = %n.channel, session_id = %n.session_id, rule = %n.rule, "notification refused: unknown channel");
            return Err(Refused::UnknownChannel(n.channel));
        };
        let window = lane.channel.dedupe;
        if !window.is_zero() {
            let now = Instant::now();
            let mut seen = lock(&self.inner.seen);
            if seen.at.len() >= seen.prune_at {
                seen.at.retain(|_, (t, w)| now.duration_since(*t) < *w);
                seen.prune_at = (seen.at.len() * 2).max(1024);
            }
            let key = (n.session_id.clone(), n.channel.clone());
            if let Some((first, _)) = seen.at.get(&key) {
                if now.duration_since(*first) < window {
                    tracing::debug!(channel = %n.channel, session_id = %n.session_id, rule = %n.rule, "notification refused: duplicate within the window");
                    return Err(Refused::Duplicate { window });
                }
            }
            seen.at.insert(key, (now, window));
        }
        tracing::debug!(channel = %n.channel, session_id = %n.session_id, rule = %n.rule, text = %n.text, "notification queued");

        let (dropped, closed) = {
            let mut q = lock(&lane.queue);
            if q.closed {
                (None, Some(n))
            } else {
                let dropped = if q.jobs.len() >= self.inner.capacity {
                    q.jobs.pop_front()
                } else {
                    None
                };
                q.jobs.push_back(Job { n });
                (dropped, None)
            }
        };
        lane.wake.notify_one();
        if let Some(job) = dropped {
            tracing::warn!(channel = %job.n.channel, session_id = %job.n.session_id, rule = %job.n.rule, capacity = self.inner.capacity, "notification queue full: dropped the oldest notification");
            let error = format!(
                "dropped: the channel's queue was full ({} waiting)",
                self.inner.capacity
            );
            publish(&self.inner.events, failed(&job.n, 0, error));
        }
        if let Some(n) = closed {
            tracing::warn!(channel = %n.channel, session_id = %n.session_id, rule = %n.rule, "notification not sent: the notifier has stopped");
            let error = "not sent: the notifier has stopped".to_string();
            publish(&self.inner.events, failed(&n, 0, error));
        }
        Ok(())
    }

    /// Outcomes of accepted notifications, for the audit log, metrics and tests.
    pub fn delivered(&self) -> broadcast::Receiver<Delivery> {
        self.inner.events.subscribe()
    }

    /// The configured channel names, sorted.
    pub fn channels(&self) -> Vec<String> {
        self.inner.lanes.keys().cloned().collect()
    }

    /// Resolves once every delivery task has ended (after shutdown and its grace).
    pub async fn stopped(&self) {
        self.inner.tracker.wait().await;
    }

    /// Notifications waiting (not yet in flight) on a channel; 0 for unknown ones.
    pub fn queued(&self, channel: &str) -> usize {
        self.inner
            .lanes
            .get(channel)
            .map_or(0, |l| lock(&l.queue).jobs.len())
    }
}

fn http_client(policy: &DeliveryPolicy) -> reqwest::Client {
    let mut headers = HeaderMap::new();
    headers.insert(
        reqwest::header::ACCEPT,
        HeaderValue::from_static("application/json, text/plain;q=0.9, */*;q=0.1"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(policy.request_timeout)
        .connect_timeout(policy.request_timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("skyrules/", env!("CARGO_PKG_VERSION")))
        // A redirect could lead anywhere; channels reach only what config names.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_else(|e| {
            tracing::error!(error = %e.without_url(), "cannot build the notification HTTP client; using the defaults");
            reqwest::Client::new()
        })
}

fn publish(events: &broadcast::Sender<Delivery>, d: Delivery) {
    // No receiver is fine: outcomes are also logged.
    let _ = events.send(d);
}

fn failed(n: &Notification, attempts: u32, error: String) -> Delivery {
    Delivery {
        channel: n.channel.clone(),
        session_id: n.session_id.clone(),
        rule: n.rule.clone(),
        ok: false,
        attempts,
        error: Some(error),
    }
}

/// One channel's delivery task: takes notifications in order, one at a time,
/// so retries and `Retry-After` pace that endpoint without touching others.
async fn run_lane(
    lane: Arc<Lane>,
    client: reqwest::Client,
    policy: Arc<DeliveryPolicy>,
    events: broadcast::Sender<Delivery>,
    stop: CancellationToken,
    hard: CancellationToken,
) {
    loop {
        let next = lock(&lane.queue).jobs.pop_front();
        match next {
            Some(job) => {
                let d = deliver(&client, &lane.channel, &policy, &job.n, &hard).await;
                publish(&events, d);
            }
            None if stop.is_cancelled() => break,
            None => {
                tokio::select! {
                    _ = lane.wake.notified() => {}
                    _ = stop.cancelled() => {}
                }
            }
        }
    }
    let left: Vec<Job> = {
        let mut q = lock(&lane.queue);
        q.closed = true;
        q.jobs.drain(..).collect()
    };
    for job in left {
        publish(
            &events,
            failed(&job.n, 0, "not sent: shutting down".to_string()),
        );
    }
    tracing::debug!(channel = %lane.channel.name, "notification channel stopped");
}

/// What one request came to, when it did not succeed.
enum Fail {
    /// Worth another try, after `Retry-After` if the server sent one.
    Retry(String, Option<Duration>),
    /// Another try would fail the same way.
    Final(String),
}

/// One notification: attempts until success, a final error, the attempt budget
/// is spent, or the shutdown grace runs out.
async fn deliver(
    client: &reqwest::Client,
    ch: &Channel,
    policy: &DeliveryPolicy,
    n: &Notification,
    hard: &CancellationToken,
) -> Delivery {
    let body = payload(ch, n, chrono::Utc::now());
    let max_attempts = policy.max_attempts.max(1);
    let mut attempts = 0;
    let error = loop {
        if hard.is_cancelled() {
            break "not sent: shutting down".to_string();
        }
        attempts += 1;
        let started = Instant::now();
        let outcome = tokio::select! {
            r = attempt(client, ch, &body, policy) => r,
            _ = hard.cancelled() => Err(Fail::Final("abandoned: shutting down while the request was in flight".to_string())),
        };
        let fail = match outcome {
            Ok(status) => {
                tracing::info!(
                    channel = %ch.name,
                    kind = %ch.kind,
                    session_id = %n.session_id,
                    rule = %n.rule,
                    attempts,
                    status,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "notification delivered"
                );
                return Delivery {
                    channel: n.channel.clone(),
                    session_id: n.session_id.clone(),
                    rule: n.rule.clone(),
                    ok: true,
                    attempts,
                    error: None,
                };
            }
            Err(f) => f,
        };
        match fail {
            Fail::Final(e) => break scrub(ch, n, &e),
            Fail::Retry(e, _) if attempts >= max_attempts => {
                break format!("{} (gave up after {attempts} attempts)", scrub(ch, n, &e))
            }
            Fail::Retry(e, retry_after) => {
                let delay = match retry_after {
                    Some(d) => d.min(policy.max_retry_after),
                    None => policy.backoff(attempts),
                };
                tracing::warn!(
                    channel = %ch.name,
                    session_id = %n.session_id,
                    rule = %n.rule,
                    attempt = attempts,
                    error = %scrub(ch, n, &e),
                    retry_in = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)),
                    "notification failed; retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = hard.cancelled() => {
                        break format!("{} (not retried: shutting down)", scrub(ch, n, &e));
                    }
                }
            }
        }
    };
    tracing::error!(
        channel = %ch.name,
        kind = %ch.kind,
        session_id = %n.session_id,
        rule = %n.rule,
        attempts,
        error = %error,
        "notification not delivered"
    );
    failed(n, attempts, error)
}

/// An error text with the channel's secrets and the notification text removed.
fn scrub(ch: &Channel, n: &Notification, text: &str) -> String {
    let mut out = ch.redact(text);
    let t = n.text.trim();
    if t.chars().count() >= 8 && out.contains(t) {
        out = out.replace(t, "<text>");
    }
    out
}

/// One request. `Ok` carries the HTTP status.
async fn attempt(
    client: &reqwest::Client,
    ch: &Channel,
    body: &Value,
    policy: &DeliveryPolicy,
) -> Result<u16, Fail> {
    let mut req = client.post(ch.url.clone()).json(body);
    if let Some(token) = &ch.token {
        req = req.header(reqwest::header::AUTHORIZATION, token.clone());
    }
    let resp = req.send().await.map_err(|e| transport(e, policy))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(status.as_u16());
    }
    let retry_after = retry_after(resp.headers());
    // The status is what matters; a body cut short or unreadable just says less.
    let bytes = crate::net::read_body(resp, BODY_LIMIT)
        .await
        .map(|b| b.bytes)
        .unwrap_or_default();
    let message = format!("HTTP {}{}", status.as_u16(), excerpt(&bytes));
    if status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
    {
        Err(Fail::Retry(message, retry_after))
    } else if status.is_redirection() {
        Err(Fail::Final(format!(
            "{message} (redirects are not followed; configure the final URL)"
        )))
    } else {
        Err(Fail::Final(message))
    }
}

/// A transport error in our own words: reqwest's text includes the URL.
fn transport(e: reqwest::Error, policy: &DeliveryPolicy) -> Fail {
    let e = e.without_url();
    let text = if e.is_timeout() {
        format!(
            "timed out after {}",
            humantime::format_duration(policy.request_timeout)
        )
    } else if e.is_connect() {
        format!("cannot connect: {}", source_chain(&e))
    } else {
        format!("request failed: {}", source_chain(&e))
    };
    Fail::Retry(text, None)
}

/// The causes under a reqwest error (its own text is generic once the URL is stripped).
fn source_chain(e: &reqwest::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => crate::net::error_chain(cause),
        None => e.to_string(),
    }
}

/// `: <first line of the body>` for an error message, or nothing.
fn excerpt(bytes: &[u8]) -> String {
    let text = crate::net::excerpt(bytes, EXCERPT);
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

/// The request body for a channel. Holds the routing key for PagerDuty: never log it.
fn payload(ch: &Channel, n: &Notification, now: chrono::DateTime<chrono::Utc>) -> Value {
    match ch.kind {
        ChannelKind::Slack => slack_payload(n),
        ChannelKind::Webhook => webhook_payload(n, now),
        ChannelKind::Pagerduty => pagerduty_payload(
            n,
            ch.routing_key.as_ref().map_or("", |k| k.0.as_str()),
            &ch.severity,
        ),
    }
}

/// Slack `mrkdwn` control characters escaped, so a visitor's text cannot
/// ping `<!channel>` or forge links.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn slack_payload(n: &Notification) -> Value {
    json!({
        "text": format!(
            "[skyrules] {} (session {}, rule {})",
            slack_escape(&n.text),
            slack_escape(&n.session_id),
            slack_escape(&n.rule)
        )
    })
}

fn webhook_payload(n: &Notification, now: chrono::DateTime<chrono::Utc>) -> Value {
    json!({
        "source": "skyrules",
        "channel": n.channel,
        "session_id": n.session_id,
        "rule": n.rule,
        "text": n.text,
        "sent_at": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

fn pagerduty_payload(n: &Notification, routing_key: &str, severity: &str) -> Value {
    let text = n.text.trim();
    let summary = if text.is_empty() {
        format!(
            "skyrules: session {} needs attention (rule {})",
            n.session_id, n.rule
        )
    } else {
        text.to_string()
    };
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": format!("skyrules-{}-{}", n.session_id, n.channel),
        "payload": {
            "summary": truncate(&summary, PAGERDUTY_SUMMARY_MAX),
            "source": "skyrules",
            "severity": severity,
            "custom_details": {
                "session_id": n.session_id,
                "rule": n.rule,
            },
        },
    })
}

/// At most `max` characters, ending in `…` when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(text: &str) -> Notification {
        Notification {
            channel: "team".into(),
            session_id: "sess_1".into(),
            rule: "escalate".into(),
            text: text.into(),
        }
    }

    fn cfg(kind: ChannelKind) -> ChannelConfig {
        ChannelConfig {
            kind,
            url_file: None,
            url_env: None,
            routing_key_file: None,
            routing_key_env: None,
            token_file: None,
            token_env: None,
            dedupe: DEFAULT_DEDUPE,
            severity: None,
        }
    }

    fn secret_file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn config_parses_with_defaults_and_rejects_unknown_keys() {
        let c: ChannelConfig = toml::from_str(
            r#"kind = "pagerduty"
routing_key_env = "PD_KEY"
severity = "critical""#,
        )
        .unwrap();
        assert_eq!(c.kind, ChannelKind::Pagerduty);
        assert_eq!(c.dedupe, Duration::from_secs(600));
        assert_eq!(c.severity.as_deref(), Some("critical"));
        let c: ChannelConfig =
            toml::from_str("kind = \"slack\"\nurl_file = \"/x\"\ndedupe = \"2m 30s\"").unwrap();
        assert_eq!(c.dedupe, Duration::from_secs(150));
        assert!(toml::from_str::<ChannelConfig>("kind = \"slack\"\nurl = \"https://x\"").is_err());
        assert!(toml::from_str::<ChannelConfig>("kind = \"email\"").is_err());
        assert!(toml::from_str::<ChannelConfig>("kind = \"slack\"\ndedupe = \"soon\"").is_err());
    }

    #[test]
    fn resolves_secrets_and_checks_them() {
        let dir = tempfile::tempdir().unwrap();
        let url = secret_file(
            dir.path(),
            "url",
            "https://hooks.example.com/services/T0/B0/XyZsecret\n",
        );
        let mut c = cfg(ChannelKind::Slack);
        c.url_file = Some(url.clone());
        let ch = resolve("team", &c).unwrap();
        assert_eq!(
            ch.url.as_str(),
            "https://hooks.example.com/services/T0/B0/XyZsecret"
        );
        assert!(ch
            .redact("POST https://hooks.example.com/services/T0/B0/XyZsecret failed")
            .contains(REDACTED));
        assert!(!ch
            .redact("path /services/T0/B0/XyZsecret")
            .contains("XyZsecret"));

        // Both sources set.
        c.url_env = Some("X".into());
        let e = resolve("team", &c).unwrap_err().to_string();
        assert!(
            e.contains("`notify.team.url_file`") && e.contains("not both"),
            "{e}"
        );

        // No URL for slack.
        let e = resolve("team", &cfg(ChannelKind::Slack))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("`notify.team.url_file`"), "{e}");

        // Not a URL: the error does not quote it.
        let bad = secret_file(dir.path(), "bad", "hooks.example.com/SECRETPATH");
        let mut c = cfg(ChannelKind::Webhook);
        c.url_file = Some(bad);
        let e = resolve("hook", &c).unwrap_err().to_string();
        assert!(
            e.starts_with("`notify.hook.url_file`") && !e.contains("SECRETPATH"),
            "{e}"
        );
        let ftp = secret_file(dir.path(), "ftp", "ftp://example.com/SECRETPATH");
        c.url_file = Some(ftp);
        let e = resolve("hook", &c).unwrap_err().to_string();
        assert!(e.contains("http(s)") && !e.contains("SECRETPATH"), "{e}");

        // PagerDuty: default URL, key required, severity checked.
        let mut pd = cfg(ChannelKind::Pagerduty);
        let e = resolve("oncall", &pd).unwrap_err().to_string();
        assert!(e.starts_with("`notify.oncall.routing_key_file`"), "{e}");
        pd.routing_key_file = Some(secret_file(dir.path(), "key", "R0UTINGKEY123\n"));
        let ch = resolve("oncall", &pd).unwrap();
        assert_eq!(ch.url.as_str(), PAGERDUTY_EVENTS_URL);
        assert_eq!(ch.severity, "error");
        assert_eq!(ch.redact("key R0UTINGKEY123"), "key <redacted>");
        pd.severity = Some("loud".into());
        let e = resolve("oncall", &pd).unwrap_err().to_string();
        assert!(e.starts_with("`notify.oncall.severity`"), "{e}");

        // Keys on the wrong kind.
        let mut c = cfg(ChannelKind::Slack);
        c.url_file = Some(url.clone());
        c.routing_key_file = Some(url.clone());
        let e = resolve("team", &c).unwrap_err().to_string();
        assert!(
            e.starts_with("`notify.team.routing_key_file`") && e.contains("pagerduty"),
            "{e}"
        );
        let mut c = cfg(ChannelKind::Slack);
        c.url_file = Some(url.clone());
        c.severity = Some("info".into());
        assert!(resolve("team", &c).is_err());
        let mut c = cfg(ChannelKind::Slack);
        c.url_file = Some(url);
        c.token_env = Some("WHATEVER".into());
        let e = resolve("team", &c).unwrap_err().to_string();
        assert!(e.starts_with("`notify.team.token_env`"), "{e}");
    }

    #[test]
    fn empty_secret_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(ChannelKind::Webhook);
        c.url_file = Some(secret_file(dir.path(), "empty", " \n"));
        let e = resolve("hook", &c).unwrap_err().to_string();
        assert!(
            e.contains("`notify.hook.url_file`") && e.contains("is empty"),
            "{e}"
        );
    }

    #[test]
    fn payload_shapes() {
        let n = note("Visitor <!channel> wants a refund & more");
        let s = slack_payload(&n);
        assert_eq!(
            s,
            json!({"text": "[skyrules] Visitor &lt;!channel&gt; wants a refund &amp; more (session sess_1, rule escalate)"})
        );

        let now = chrono::DateTime::parse_from_rfc3339("2026-03-08T14:22:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let w = webhook_payload(&n, now);
        assert_eq!(w["source"], "skyrules");
        assert_eq!(w["channel"], "team");
        assert_eq!(w["session_id"], "sess_1");
        assert_eq!(w["rule"], "escalate");
        assert_eq!(w["text"], n.text.as_str());
        assert_eq!(w["sent_at"], "2026-03-08T14:22:00.000Z");

        let long = note(&"x".repeat(3000));
        let p = pagerduty_payload(&long, "KEY", "warning");
        assert_eq!(p["routing_key"], "KEY");
        assert_eq!(p["event_action"], "trigger");
        assert_eq!(p["dedup_key"], "skyrules-sess_1-team");
        assert_eq!(p["payload"]["source"], "skyrules");
        assert_eq!(p["payload"]["severity"], "warning");
        assert_eq!(
            p["payload"]["custom_details"],
            json!({"session_id": "sess_1", "rule": "escalate"})
        );
        let summary = p["payload"]["summary"].as_str().unwrap();
        assert_eq!(summary.chars().count(), PAGERDUTY_SUMMARY_MAX);
        assert!(summary.ends_with('…'));
        let empty = pagerduty_payload(&note("  "), "KEY", "error");
        assert!(empty["payload"]["summary"]
            .as_str()
            .unwrap()
            .contains("sess_1"));
    }

    #[test]
    fn excerpt_and_truncate() {
        assert_eq!(excerpt(b""), "");
        assert_eq!(excerpt(b"  no_service\n"), ": no_service");
        assert_eq!(excerpt(&[b'a'; 500]).len(), 2 + EXCERPT);
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "ab…");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(ChannelKind::Webhook);
        c.url_file = Some(secret_file(
            dir.path(),
            "u",
            "http://127.0.0.1:9/hooks/SECRET999",
        ));
        c.token_file = Some(secret_file(dir.path(), "t", "T0KEN999"));
        let mut raw = BTreeMap::new();
        raw.insert("hook".to_string(), c);
        let chans = Channels::from_config(&raw).unwrap();
        let shown = format!("{chans:?} {:?}", chans.by_name["hook"]);
        assert!(
            !shown.contains("SECRET999") && !shown.contains("T0KEN999"),
            "{shown}"
        );
        assert!(shown.contains("hook"));
    }
}
