//! The HTTP client for the SkyLight Web Chat API.
//!
//! Owns: one reqwest connection pool, the API key (as a sensitive header,
//! never formatted anywhere), retries with capped exponential backoff and
//! jitter, the optional request rate limit (shared by every clone), the
//! tolerant envelope and pagination decoding of SPEC §1, the server-clock
//! estimate from `Date` headers, and the no-blind-resend rule for messages.
//! Does not own: what to poll or when (the watcher), or whether an action
//! should be taken at all (the executor).

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota};

use super::budget::{Budget, Lane};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::de::{DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserializer as _;
use serde_json::value::RawValue;
use serde_json::Value;

use super::error::{ApiError, Transient};
use super::types::{
    Analytics, ListQuery, Message, Period, SenderType, Session, SessionDetail, SessionStatus,
    Timestamp,
};

/// The production base URL.
pub(crate) const DEFAULT_BASE_URL: &str = "https://dashboard.skylightchat.com/api/v1";
/// The API's limit on one agent message, in characters.
pub(crate) const MAX_MESSAGE_CHARS: usize = 4096;
/// The API's page-size limit.
pub(crate) const MAX_PER_PAGE: u32 = 100;
/// The largest response body read by default (`api.max_body`): a list page
/// of 100 sessions is about 100 KiB, a session with a long history a few MiB.
pub(crate) const DEFAULT_MAX_BODY: usize = 16 * 1024 * 1024;
/// Walking pages stops here whatever the server says, so a broken paginator
/// can never keep the watcher busy forever.
const MAX_PAGES: u32 = 10_000;

/// The SkyLight API key. Its `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key, trimming the newline a key file usually ends with.
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into().trim().to_string())
    }

    /// True when nothing is left after trimming.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn header(&self) -> Result<HeaderValue, ApiError> {
        let mut v = HeaderValue::from_str(&self.0).map_err(|_| {
            ApiError::Invalid(
                "the API key contains characters that cannot be sent in a header; check SKYLIGHT_API_KEY or `api.api_key_file`".into(),
            )
        })?;
        v.set_sensitive(true);
        Ok(v)
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl std::fmt::Display for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How hard to try before giving up on a request.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Requests per call, first included.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles each time.
    pub base_delay: Duration,
    /// Largest delay between two attempts.
    pub max_delay: Duration,
    /// Largest `Retry-After` honoured; a longer one is clamped to this.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Capped exponential backoff with jitter in [50%, 100%] of the step, so
    /// many engines restarting together do not retry in lock step.
    pub fn backoff(&self, attempt: u32) -> Duration {
        crate::net::backoff(self.base_delay, self.max_delay, attempt)
    }
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// e.g. `https://dashboard.skylightchat.com/api/v1`.
    pub base_url: String,
    /// The key sent as `X-Api-Key`.
    pub api_key: ApiKey,
    /// Limit for one request, connect to last byte.
    pub timeout: Duration,
    /// Retry behaviour.
    pub retry: RetryPolicy,
    /// Most requests sent per second on average, every attempt counted
    /// (retries, list pages, reads, actions), shared by all clones of the
    /// client; up to `max(1, rate)` may go out back to back. `None`:
    /// unlimited (SkyLight documents no limit).
    pub max_requests_per_second: Option<f64>,
    /// Most requests sent in any sliding minute, every attempt counted,
    /// shared by all clones (`api.max_requests_per_minute`); `None`: no
    /// budget but the server's own rate-limit headers.
    pub max_requests_per_minute: Option<usize>,
    /// What the pending fast lane needs per minute, kept free of the full
    /// walk for urgent requests; the budget keeps at least a quarter of
    /// itself for them (actions) anyway, and at most half.
    pub urgent_reserve: usize,
    /// Largest response body read, in bytes; a larger one is an error like
    /// a malformed body, and no more of it is held in memory.
    pub max_body: usize,
    /// The workspace (SkyLight account) this client speaks for: the
    /// `workspace` label of its metrics and field of its logs.
    pub workspace: String,
    /// Where the key came from, for the error when SkyLight refuses it.
    pub key_source: String,
}

impl ClientConfig {
    /// Defaults for everything but the address and key.
    pub fn new(base_url: impl Into<String>, api_key: ApiKey) -> Self {
        ClientConfig {
            base_url: base_url.into(),
            api_key,
            timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            max_requests_per_second: None,
            max_requests_per_minute: None,
            urgent_reserve: 0,
            max_body: DEFAULT_MAX_BODY,
            workspace: crate::config::DEFAULT_WORKSPACE.to_string(),
            key_source: "SKYLIGHT_API_KEY or `api.api_key_file` in the config".to_string(),
        }
    }
}

/// The limiter for `rate` requests per second with a burst of
/// `max(1, rate)`; `None` for a rate too high to measure (over 10⁹/s).
fn rate_limiter(rate: f64) -> Result<Option<DefaultDirectRateLimiter>, ApiError> {
    if !(rate.is_finite() && rate > 0.0) {
        return Err(ApiError::Invalid(format!(
            "`api.max_requests_per_second` must be a positive number, not {rate}"
        )));
    }
    let burst = std::num::NonZeroU32::new(rate.clamp(1.0, u32::MAX as f64) as u32)
        .unwrap_or(std::num::NonZeroU32::MIN);
    Ok(Quota::with_period(Duration::from_secs_f64(1.0 / rate))
        .map(|q| DefaultDirectRateLimiter::direct(q.allow_burst(burst))))
}

/// The server's clock as seen from here: local time plus an offset learned
/// from `Date` headers. Timers (SPEC §2) run on the server's clock.
#[derive(Debug, Default)]
pub struct ServerClock {
    offset_ms: AtomicI64,
}

impl ServerClock {
    /// The current time on the server's clock (best estimate).
    pub fn now(&self) -> Timestamp {
        chrono::Utc::now() + chrono::Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    fn observe(&self, headers: &HeaderMap) {
        let Some(date) = headers
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| httpdate::parse_http_date(s).ok())
        else {
            return;
        };
        let server: Timestamp = date.into();
        // `Date` has one-second resolution and is truncated: the true server
        // time lies in [date, date + 1s), so aim at the middle.
        let server = server + chrono::Duration::milliseconds(500);
        let offset = (server - chrono::Utc::now()).num_milliseconds();
        self.offset_ms.store(offset, Ordering::Relaxed);
    }
}

/// One page of `GET /web-chat/sessions`, whatever shape the server used.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The sessions on this page.
    pub sessions: Vec<Session>,
    /// `current_page`, when the server said.
    pub current_page: Option<u64>,
    /// `last_page`, when the server said.
    pub last_page: Option<u64>,
    /// Whether a next-page link was present (`None`: no link fields at all).
    pub has_next: Option<bool>,
}

/// Pages fetched at once when walking a list whose size is known.
const PAGE_CONCURRENCY: usize = 8;

/// The state of walking a paginated list: what was collected and the
/// guards against a server that pages forever.
#[derive(Default)]
struct Walk {
    ids: HashSet<String>,
    signatures: HashSet<(String, String, usize)>,
}

impl Walk {
    /// Takes in page `n`: its sessions not seen on an earlier page, and
    /// false when the walk is over (an empty page, a page seen before, or
    /// the server's last page).
    fn absorb(&mut self, p: Page, n: u32, per_page: usize) -> (Vec<Session>, bool) {
        if p.sessions.is_empty() {
            return (Vec::new(), false);
        }
        let sig = (
            p.sessions[0].session_id.clone(),
            p.sessions[p.sessions.len() - 1].session_id.clone(),
            p.sessions.len(),
        );
        if !self.signatures.insert(sig) {
            tracing::debug!(page = n, "session list repeated a page; stopping");
            return (Vec::new(), false);
        }
        let more = match (p.last_page, p.has_next) {
            (Some(last), _) => p.current_page.unwrap_or(n as u64) < last,
            (None, Some(next)) => next,
            (None, None) => p.sessions.len() >= per_page,
        };
        let fresh = p
            .sessions
            .into_iter()
            .filter(|s| self.ids.insert(s.session_id.clone()))
            .collect();
        (fresh, more)
    }
}

/// The typed SkyLight Web Chat client. Cheap to clone; clones share the
/// pool, the clock and the request rate limit.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    retry: RetryPolicy,
    clock: Arc<ServerClock>,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    budget: Arc<Budget>,
    lane: Lane,
    max_body: usize,
    workspace: Arc<str>,
    key_source: Arc<str>,
    // Set on a replica (SPEC §7): actions leave only while it holds.
    tenure: Option<Arc<crate::replicas::Tenure>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("workspace", &self.workspace)
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

/// Why one attempt failed.
enum Fail {
    Final(ApiError),
    Retry(Transient),
}

impl Client {
    /// Builds a client; fails on a malformed base URL or key.
    pub fn new(config: ClientConfig) -> Result<Client, ApiError> {
        let base = Url::parse(config.base_url.trim()).map_err(|e| {
            ApiError::Invalid(format!(
                "`api.base_url` {:?} is not a valid URL ({e}); expected e.g. {DEFAULT_BASE_URL}",
                config.base_url
            ))
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(ApiError::Invalid(format!(
                "`api.base_url` {:?} must be an http:// or https:// URL",
                config.base_url
            )));
        }
        if config.api_key.is_empty() {
            return Err(ApiError::Invalid(
                "the API key is empty; set SKYLIGHT_API_KEY or `api.api_key_file`".into(),
            ));
        }
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", config.api_key.header()?);
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("skyrules/", env!("CARGO_PKG_VERSION")))
            // The key is a custom header, which reqwest keeps on a redirect
            // to another host: a redirect is an error, never followed.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ApiError::Invalid(format!("cannot build the HTTP client: {e}")))?;
        let limiter = match config.max_requests_per_second {
            Some(rate) => rate_limiter(rate)?.map(Arc::new),
            None => None,
        };
        Ok(Client {
            http,
            base,
            retry: config.retry,
            clock: Arc::new(ServerClock::default()),
            limiter,
            budget: Arc::new(Budget::new(
                config.max_requests_per_minute,
                config.urgent_reserve,
            )),
            lane: Lane::Urgent,
            max_body: config.max_body,
            workspace: config.workspace.into(),
            key_source: config.key_source.into(),
            tenure: None,
        })
    }

    /// This client with its requests in `lane` of the key's budget (same
    /// pool, clock and budget).
    pub(crate) fn in_lane(&self, lane: Lane) -> Client {
        Client {
            lane,
            ..self.clone()
        }
    }

    /// The key's budget per minute (`api.max_requests_per_minute`), and
    /// what of it routine requests may spend.
    pub(crate) fn budget_per_minute(&self) -> Option<(usize, usize)> {
        Some((self.budget.per_minute()?, self.budget.routine_per_minute()?))
    }

    /// This client, sending actions (every request but a `GET`) only while
    /// `tenure` lasts: it is checked immediately before each request
    /// leaves, with no `.await` in between, retries included.
    pub(crate) fn with_tenure(mut self, tenure: Arc<crate::replicas::Tenure>) -> Client {
        self.tenure = Some(tenure);
        self
    }

    /// Whether this client may act now (always, outside a replica).
    pub(crate) fn may_act(&self) -> bool {
        self.tenure.as_ref().is_none_or(|t| t.may_act())
    }

    /// The server's clock, as learned from its responses.
    pub fn clock(&self) -> &Arc<ServerClock> {
        &self.clock
    }

    /// The workspace this client speaks for.
    pub(crate) fn workspace(&self) -> &Arc<str> {
        &self.workspace
    }

    /// The base URL (contains no secret).
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// `GET /web-chat/analytics?period=`.
    pub async fn analytics(&self, period: Period) -> Result<Analytics, ApiError> {
        let url = self.url(&["web-chat", "analytics"]);
        let v = self
            .call(
                Method::GET,
                url,
                &[("period", period.as_str().to_string())],
                None,
                "analytics",
            )
            .await?;
        decode(unwrap_envelope(v), "analytics")
    }

    /// `GET /web-chat/sessions` for one page.
    pub async fn list_sessions(&self, query: &ListQuery, page: u32) -> Result<Page, ApiError> {
        let per_page = query.per_page.unwrap_or(25);
        if !(1..=MAX_PER_PAGE).contains(&per_page) {
            return Err(ApiError::Invalid(format!(
                "per_page must be between 1 and {MAX_PER_PAGE}, not {per_page}"
            )));
        }
        let mut params = vec![
            ("per_page", per_page.to_string()),
            ("page", page.to_string()),
        ];
        if let Some(s) = &query.status {
            params.push(("status", s.to_string()));
        }
        if let Some(h) = &query.handled_by {
            params.push(("handled_by", h.to_string()));
        }
        if let Some(s) = &query.search {
            params.push(("search", s.clone()));
        }
        let url = self.url(&["web-chat", "sessions"]);
        let what = "the session list";
        self.retrying(&url, what, || self.attempt_page(url.clone(), &params, what))
            .await
    }

    /// Every session matching `query`, across all pages. Stops on an empty
    /// page, a page seen before, or the server's last page, whichever first.
    pub async fn list_all_sessions(&self, query: &ListQuery) -> Result<Vec<Session>, ApiError> {
        let mut all = Vec::new();
        self.walk_sessions(query, |page| all.extend(page)).await?;
        Ok(all)
    }

    /// Like [`Client::list_all_sessions`], but hands each page's sessions
    /// (the ones not seen on an earlier page) to `on_page` as soon as the
    /// page arrives, in page order, and keeps none: a poller can start on
    /// page 1's changes while page 100 is still on its way. Returns the ids
    /// of every session listed.
    pub(crate) async fn walk_sessions(
        &self,
        query: &ListQuery,
        mut on_page: impl FnMut(Vec<Session>),
    ) -> Result<HashSet<String>, ApiError> {
        let mut query = query.clone();
        let per_page = *query.per_page.get_or_insert(MAX_PER_PAGE) as usize;
        let mut walk = Walk::default();
        let first = self.list_sessions(&query, 1).await?;
        let last = first.last_page;
        let (fresh, more) = walk.absorb(first, 1, per_page);
        on_page(fresh);
        if !more {
            return Ok(walk.ids);
        }
        match last {
            // The first page says how many there are: fetch the rest a few
            // at a time, in order, so a large list costs one round trip per
            // window rather than per page. A server that lies about its
            // page count wastes at most one window before the guards stop.
            Some(last) => {
                let last = last.min(MAX_PAGES as u64) as u32;
                let mut next = 2;
                // The second page alone first: a server that ignores `page`
                // is caught after one extra request, not a window's worth.
                let mut width = 1;
                while next <= last {
                    let window: Vec<u32> = (next..=last).take(width).collect();
                    width = PAGE_CONCURRENCY;
                    next += window.len() as u32;
                    let q = &query;
                    let mut pages = stream::iter(window)
                        .map(|n| async move { (n, self.list_sessions(q, n).await) })
                        .buffered(PAGE_CONCURRENCY);
                    while let Some((n, page)) = pages.next().await {
                        let (fresh, more) = walk.absorb(page?, n, per_page);
                        on_page(fresh);
                        if !more {
                            return Ok(walk.ids);
                        }
                    }
                }
            }
            None => {
                for page in 2..=MAX_PAGES {
                    let p = self.list_sessions(&query, page).await?;
                    let (fresh, more) = walk.absorb(p, page, per_page);
                    on_page(fresh);
                    if !more {
                        break;
                    }
                }
            }
        }
        Ok(walk.ids)
    }

    /// `GET /web-chat/sessions/{id}`: the session and its whole history.
    pub async fn get_session(&self, id: &str) -> Result<SessionDetail, ApiError> {
        check_id(id)?;
        let url = self.url(&["web-chat", "sessions", id]);
        let what = format!("session {id}");
        let v = self.call(Method::GET, url, &[], None, &what).await?;
        decode_session(v).map_err(|e| ApiError::Unavailable {
            what,
            attempts: 1,
            last: Transient::Malformed(e.to_string()),
        })
    }

    /// `POST …/{id}/take-over`: a human takes the chat; the AI stops.
    pub async fn take_over(&self, id: &str) -> Result<Option<Session>, ApiError> {
        self.session_action(id, "take-over").await
    }

    /// `POST …/{id}/release`: the chat goes back to the AI.
    pub async fn release(&self, id: &str) -> Result<Option<Session>, ApiError> {
        self.session_action(id, "release").await
    }

    /// `POST …/{id}/end`: closes the chat.
    pub async fn end(&self, id: &str) -> Result<Option<Session>, ApiError> {
        self.session_action(id, "end").await
    }

    /// `POST …/{id}/messages`: sends an agent reply.
    ///
    /// Refuses empty or over-long text before sending. When the outcome of a
    /// send is unknown (timeout, broken connection, 5xx, garbled body) the
    /// session is re-read and the message is sent again only if it is not
    /// there: a visitor must never get the same reply twice.
    pub async fn send_message(&self, id: &str, text: &str) -> Result<Message, ApiError> {
        check_id(id)?;
        check_message(text)?;
        let url = self.url(&["web-chat", "sessions", id, "messages"]);
        let what = format!("sending a message to session {id}");
        let body = serde_json::json!({ "message": text });
        // Anything of ours created since the first attempt is this send. The
        // window is placed on the server's clock only after the re-read (whose
        // `Date` header calibrates it): before any response, a client whose
        // clock runs ahead of the server's would miss its own message and
        // send it twice.
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let fail = match self
                .attempt(Method::POST, url.clone(), &[], Some(&body), &what)
                .await
            {
                Ok(v) => match serde_json::from_value::<Message>(unwrap_envelope(v)) {
                    Ok(m) => return Ok(m),
                    // Accepted, but we cannot read what was stored: find it.
                    Err(e) => Transient::Malformed(e.to_string()),
                },
                Err(Fail::Final(e)) => return Err(e),
                Err(Fail::Retry(t)) => t,
            };
            if fail.outcome_unknown() {
                tracing::warn!(session_id = id, error = %fail, "send outcome unknown; re-reading the session before any resend");
                let detail = self.get_session(id).await?;
                // The margin covers the one-second resolution of `Date`.
                let since = self.clock.now()
                    - chrono::Duration::from_std(started.elapsed()).unwrap_or_default()
                    - chrono::Duration::seconds(3);
                if let Some(m) = find_sent(&detail, text, since) {
                    tracing::info!(
                        session_id = id,
                        message_id = m.id,
                        "message was delivered despite the error; not re-sending"
                    );
                    return Ok(m.clone());
                }
                if detail.session.status == SessionStatus::Ended {
                    return Err(ApiError::Rejected {
                        what,
                        status: 422,
                        message: "the session has ended".into(),
                    });
                }
            }
            if attempt >= self.retry.max_attempts {
                return Err(ApiError::Unavailable {
                    what,
                    attempts: attempt,
                    last: fail,
                });
            }
            self.pause(&fail, attempt, &what, endpoint_of(&url)).await;
        }
    }

    async fn session_action(&self, id: &str, verb: &str) -> Result<Option<Session>, ApiError> {
        check_id(id)?;
        let url = self.url(&["web-chat", "sessions", id, verb]);
        let what = format!("{verb} of session {id}");
        // take-over, release and end are idempotent, so a retry after an
        // unknown outcome is safe.
        let v = self.call(Method::POST, url, &[], None, &what).await?;
        Ok(serde_json::from_value(unwrap_envelope(v)).ok())
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// One logical call: attempts with backoff until success, a final error,
    /// or the attempt budget is spent.
    async fn call(
        &self,
        method: Method,
        url: Url,
        query: &[(&str, String)],
        body: Option<&Value>,
        what: &str,
    ) -> Result<Value, ApiError> {
        self.retrying(&url, what, || {
            self.attempt(method.clone(), url.clone(), query, body, what)
        })
        .await
    }

    /// Runs `attempt_once` until it succeeds, fails for good, or the
    /// attempt budget is spent, pausing between attempts.
    async fn retrying<T, F, Fut>(
        &self,
        url: &Url,
        what: &str,
        mut attempt_once: F,
    ) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Fail>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match attempt_once().await {
                Ok(v) => return Ok(v),
                Err(Fail::Final(e)) => return Err(e),
                Err(Fail::Retry(t)) if attempt >= self.retry.max_attempts => {
                    return Err(ApiError::Unavailable {
                        what: what.to_string(),
                        attempts: attempt,
                        last: t,
                    })
                }
                Err(Fail::Retry(t)) => self.pause(&t, attempt, what, endpoint_of(url)).await,
            }
        }
    }

    async fn pause(&self, t: &Transient, attempt: u32, what: &str, endpoint: &'static str) {
        crate::telemetry::metrics::api_retry(&self.workspace, endpoint, t.reason());
        let delay = match t {
            Transient::RateLimited {
                retry_after: Some(d),
            } => (*d).min(self.retry.max_retry_after),
            _ => self.retry.backoff(attempt),
        };
        tracing::warn!(error = %t, attempt, retry_in = %humantime::format_duration(round_ms(delay)), "{what}: retrying");
        tokio::time::sleep(delay).await;
    }

    /// One request whose body is read as JSON: whitespace is `null`, a
    /// body that is not JSON is retried, and `"success": false` is final.
    async fn attempt(
        &self,
        method: Method,
        url: Url,
        query: &[(&str, String)],
        body: Option<&Value>,
        what: &str,
    ) -> Result<Value, Fail> {
        self.exchange(method, url, query, body, what, |status, bytes| {
            let v =
                json_body(bytes).map_err(|e| Fail::Retry(Transient::Malformed(format!("{e}"))))?;
            if v.get("success") == Some(&Value::Bool(false)) {
                return Err(refused(what, status, bytes));
            }
            Ok(v)
        })
        .await
    }

    /// One request for a list page, decoded straight from the body's bytes
    /// (no `Value` tree of the sessions) under the same rules as
    /// [`Client::attempt`]; a body of the wrong shape is final.
    async fn attempt_page(
        &self,
        url: Url,
        query: &[(&str, String)],
        what: &str,
    ) -> Result<Page, Fail> {
        self.exchange(Method::GET, url, query, None, what, |status, bytes| {
            let body = split_list_body(bytes)
                .map_err(|e| Fail::Retry(Transient::Malformed(format!("{e}"))))?;
            if body.rejected() {
                return Err(refused(what, status, bytes));
            }
            page_of(body).map_err(|e| {
                Fail::Final(ApiError::Unavailable {
                    what: what.to_string(),
                    attempts: 1,
                    last: Transient::Malformed(e),
                })
            })
        })
        .await
    }

    /// Sends one request and reads the whole response: a 2xx's status and
    /// body go to `read`; any other status is classified as final or
    /// retryable.
    async fn exchange<T>(
        &self,
        method: Method,
        url: Url,
        query: &[(&str, String)],
        body: Option<&Value>,
        what: &str,
        read: impl FnOnce(StatusCode, &[u8]) -> Result<T, Fail>,
    ) -> Result<T, Fail> {
        // Every request waits its turn, retries included; the wait is not
        // part of the request's latency.
        let _ticket = self.budget.acquire(self.lane).await;
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
        let started = Instant::now();
        let mut req = self.http.request(method.clone(), url.clone());
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let endpoint = endpoint_of(&url);
        // The last moment an action can still be held back. Between this
        // check and the request leaving there is no `.await`: a replica
        // paused after it can still send once (README, "Running more than
        // one replica"), and nothing else can.
        if method != Method::GET && !self.may_act() {
            crate::telemetry::metrics::fenced(&self.workspace, "action");
            return Err(Fail::Final(ApiError::Fenced {
                what: what.to_string(),
                workspace: self.workspace.to_string(),
            }));
        }
        let resp = req.send().await.map_err(|e| {
            crate::telemetry::metrics::api_request(
                &self.workspace,
                endpoint,
                None,
                started.elapsed(),
            );
            Fail::Retry(transport(&e))
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        self.clock.observe(&headers);
        self.budget.observe(&headers);
        let body = crate::net::read_body(resp, self.max_body)
            .await
            .map_err(|e| {
                crate::telemetry::metrics::api_request(
                    &self.workspace,
                    endpoint,
                    None,
                    started.elapsed(),
                );
                Fail::Retry(transport(&e))
            })?;
        crate::telemetry::metrics::api_request(
            &self.workspace,
            endpoint,
            Some(status.as_u16()),
            started.elapsed(),
        );
        if !body.complete {
            return Err(Fail::Retry(Transient::TooLarge {
                limit: self.max_body,
            }));
        }
        let bytes = body.bytes;
        tracing::debug!(
            method = %method,
            path = url.path(),
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "skylight request"
        );
        if status.is_success() {
            return read(status, &bytes);
        }
        if status.is_redirection() {
            return Err(Fail::Final(ApiError::Redirected {
                what: what.to_string(),
                status: status.as_u16(),
                location: location_host(&url, &headers),
            }));
        }
        let message = error_message(&bytes);
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Fail::Final(ApiError::Unauthorized {
                    status: status.as_u16(),
                    message,
                    key_source: self.key_source.to_string(),
                })
            }
            StatusCode::NOT_FOUND => Fail::Final(ApiError::NotFound {
                what: what.to_string(),
                message,
            }),
            StatusCode::TOO_MANY_REQUESTS => Fail::Retry(Transient::RateLimited {
                retry_after: crate::net::retry_after(&headers),
            }),
            s if s.is_server_error() => Fail::Retry(Transient::Server {
                status: s.as_u16(),
                message,
            }),
            s => Fail::Final(ApiError::Rejected {
                what: what.to_string(),
                status: s.as_u16(),
                message,
            }),
        })
    }
}

/// Where a redirect pointed, as `host[:port]` only (a full URL could carry
/// a token of the other side's).
fn location_host(base: &Url, headers: &HeaderMap) -> String {
    let Some(raw) = headers
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
    else {
        return "nowhere (no Location header)".into();
    };
    match base.join(raw.trim()) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => format!("a URL with no host ({})", u.scheme()),
        },
        Err(_) => "an unreadable Location".into(),
    }
}

/// The endpoint a URL addresses, as a metric label (never the session id).
fn endpoint_of(url: &Url) -> &'static str {
    let path = url.path().trim_end_matches('/');
    let last = path.rsplit('/').next().unwrap_or("");
    match last {
        "analytics" => "analytics",
        "sessions" => "list_sessions",
        "take-over" => "take_over",
        "release" => "release",
        "messages" => "send_message",
        "end" => "end",
        _ => "get_session",
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

fn check_id(id: &str) -> Result<(), ApiError> {
    if id.trim().is_empty() {
        return Err(ApiError::Invalid("the session id is empty".into()));
    }
    Ok(())
}

/// Refuses a message the API would refuse, before anything is sent.
fn check_message(text: &str) -> Result<(), ApiError> {
    let n = text.chars().count();
    if text.trim().is_empty() {
        return Err(ApiError::Invalid("the message is empty".into()));
    }
    if n > MAX_MESSAGE_CHARS {
        return Err(ApiError::Invalid(format!(
            "the message is {n} characters long; SkyLight accepts at most {MAX_MESSAGE_CHARS}"
        )));
    }
    Ok(())
}

/// The agent message with exactly `text` created at or after `since`, if
/// any: how an uncertain send is checked before it is repeated.
pub(crate) fn find_sent<'a>(
    detail: &'a SessionDetail,
    text: &str,
    since: Timestamp,
) -> Option<&'a Message> {
    detail.messages.iter().rev().find(|m| {
        m.sender_type == SenderType::Agent
            && m.text() == text
            // A message with no timestamp counts as ours: a missed duplicate
            // is worse than a missed resend the next rule run can redo.
            && m.created_at.is_none_or(|t| t >= since)
    })
}

fn transport(e: &reqwest::Error) -> Transient {
    // reqwest's Display includes the URL, which carries no secret here; the
    // key travels only in a sensitive header.
    if e.is_timeout() {
        Transient::Timeout
    } else if e.is_connect() {
        Transient::Connect(crate::net::error_chain(e))
    } else {
        Transient::Connection(crate::net::error_chain(e))
    }
}

/// Pulls a one-line explanation out of an error body of either documented
/// shape; falls back to a short excerpt of whatever came back.
fn error_message(bytes: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
        let text = crate::net::excerpt(bytes, 200);
        return if text.is_empty() {
            "no details".into()
        } else {
            text
        };
    };
    let mut msg = v
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("no details")
        .to_string();
    if let Some(errors) = v.get("errors").and_then(Value::as_object) {
        let details: Vec<String> = errors
            .iter()
            .map(|(field, e)| {
                let texts: Vec<&str> = match e {
                    Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                    Value::String(s) => vec![s.as_str()],
                    _ => vec![],
                };
                format!("{field}: {}", texts.join("; "))
            })
            .collect();
        if !details.is_empty() {
            msg = format!("{msg} ({})", details.join(", "));
        }
    }
    msg
}

/// A 2xx body saying `"success": false`: a final refusal, with the
/// server's message.
fn refused(what: &str, status: StatusCode, body: &[u8]) -> Fail {
    Fail::Final(ApiError::Rejected {
        what: what.to_string(),
        status: status.as_u16(),
        message: error_message(body),
    })
}

/// `{"success": true, "data": X}` → X; a bare object stays as it is.
fn unwrap_envelope(v: Value) -> Value {
    match v {
        Value::Object(mut o) if o.contains_key("data") && !o.contains_key("session_id") => {
            o.remove("data").unwrap_or(Value::Null)
        }
        other => other,
    }
}

fn decode<T: DeserializeOwned>(v: Value, what: &str) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| ApiError::Unavailable {
        what: what.to_string(),
        attempts: 1,
        last: Transient::Malformed(e.to_string()),
    })
}

/// A body read as JSON; whitespace alone is `null` (some servers answer an
/// action with an empty 200).
fn json_body(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(bytes)
}

/// A session's detail from its enveloped or bare JSON value.
fn decode_session(v: Value) -> Result<SessionDetail, serde_json::Error> {
    serde_json::from_value(unwrap_envelope(v))
}

/// Decodes a session-detail body (`GET /web-chat/sessions/{id}`), as
/// received: what the client does minus the envelope check
/// (`"success": false`).
pub fn parse_session(body: &[u8]) -> Result<SessionDetail, String> {
    json_body(body)
        .and_then(decode_session)
        .map_err(|e| e.to_string())
}

/// Decodes a session-list body, as received, in any of the three shapes
/// SPEC §1 names: `{"data": [..], "meta": .., "links": ..}`, a paginator
/// `{"data": {"data": [..], "current_page": .., ..}}`, or a bare `[..]`.
///
/// The sessions are decoded one by one straight from their bytes, with no
/// `serde_json::Value` tree of the page: one that cannot be read is skipped
/// with a warning (as is one with an empty `session_id`), not the page.
/// What the client does minus the envelope check (`"success": false`).
pub fn parse_page(body: &[u8]) -> Result<Page, String> {
    page_of(split_list_body(body).map_err(|e| e.to_string())?)
}

/// The reference reading of a list body already parsed into a `Value`:
/// slow and plain, and what [`parse_page`] must agree with exactly. Kept
/// for the unit tests and the fuzz target, which check that agreement.
pub fn parse_page_value(v: Value) -> Result<Page, String> {
    fn sessions(items: Vec<Value>) -> Vec<Session> {
        items
            .into_iter()
            .filter_map(|item| serde_json::from_value::<Session>(item).ok())
            .filter(|s| !s.session_id.is_empty())
            .collect()
    }
    match v {
        Value::Array(items) => Ok(Page {
            sessions: sessions(items),
            ..Page::default()
        }),
        Value::Object(mut o) => match o.remove("data") {
            Some(Value::Array(items)) => {
                let meta = o.get("meta");
                Ok(Page {
                    sessions: sessions(items),
                    current_page: page_num(meta.and_then(|m| m.get("current_page")))
                        .or_else(|| page_num(o.get("current_page"))),
                    last_page: page_num(meta.and_then(|m| m.get("last_page")))
                        .or_else(|| page_num(o.get("last_page"))),
                    has_next: next_link(o.get("links").and_then(|l| l.get("next")))
                        .or_else(|| next_link(o.get("next_page_url"))),
                })
            }
            Some(Value::Object(mut p)) => match p.remove("data") {
                Some(Value::Array(items)) => Ok(Page {
                    sessions: sessions(items),
                    current_page: page_num(p.get("current_page")),
                    last_page: page_num(p.get("last_page")),
                    has_next: next_link(p.get("next_page_url")),
                }),
                _ => Err("`data` is an object without a `data` list of sessions".into()),
            },
            Some(Value::Null) | None => Err("the response has no `data` list of sessions".into()),
            Some(_) => Err("`data` is neither a list nor a paginator".into()),
        },
        _ => Err("the response is neither a list nor an object".into()),
    }
}

/// The members of a list body's top level that paging reads, besides
/// `data`.
const TOP_MEMBERS: &[&str] = &[
    "success",
    "meta",
    "links",
    "current_page",
    "last_page",
    "next_page_url",
];
/// The members of a paginator object that paging reads, besides `data`.
const PAGINATOR_MEMBERS: &[&str] = &["current_page", "last_page", "next_page_url"];

/// A JSON value of a list body, split only as far as paging needs: lists
/// into their items, left as raw JSON text; objects into their `data` and
/// the few small members paging reads.
enum Node<'a> {
    List(Vec<&'a RawValue>),
    Object(Box<Members<'a>>),
    Null,
    Other,
}

/// An object's `data`, split, and the members paging reads, as `Value`s
/// (they are small). As with `Value`, the last of duplicate keys wins.
struct Members<'a> {
    data: Option<Node<'a>>,
    kept: serde_json::Map<String, Value>,
}

impl Node<'_> {
    /// `"success": false` at the top: the server refused the request.
    fn rejected(&self) -> bool {
        matches!(self, Node::Object(m) if m.kept.get("success") == Some(&Value::Bool(false)))
    }
}

/// Reads one [`Node`], keeping `keep` (and `data`) of an object; the
/// `data` of an object is read keeping [`PAGINATOR_MEMBERS`], and below
/// that nothing.
#[derive(Clone, Copy)]
struct NodeSeed(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for NodeSeed {
    type Value = Node<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Node<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_PER_PAGE as usize));
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            items.push(item);
        }
        Ok(Node::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node<'de>, A::Error> {
        let mut m = Members {
            data: None,
            kept: serde_json::Map::new(),
        };
        let below = if self.0 == TOP_MEMBERS {
            PAGINATOR_MEMBERS
        } else {
            &[]
        };
        while let Some(key) = map.next_key::<String>()? {
            if key == "data" {
                m.data = Some(map.next_value_seed(NodeSeed(below))?);
            } else if self.0.contains(&key.as_str()) {
                m.kept.insert(key, map.next_value()?);
            } else {
                // Still checked to be valid JSON (and UTF-8), as before.
                map.next_value::<&'de RawValue>()?;
            }
        }
        Ok(Node::Object(Box::new(m)))
    }

    fn visit_unit<E>(self) -> Result<Node<'de>, E> {
        Ok(Node::Null)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node<'de>, E> {
        Ok(Node::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Node<'de>, E> {
        Ok(Node::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Node<'de>, E> {
        Ok(Node::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Node<'de>, E> {
        Ok(Node::Other)
    }

    fn visit_str<E>(self, _: &str) -> Result<Node<'de>, E> {
        Ok(Node::Other)
    }
}

/// Splits a list body; fails only when it is not JSON. Whitespace alone
/// reads as `null`, as in [`Client::attempt`].
fn split_list_body(bytes: &[u8]) -> Result<Node<'_>, serde_json::Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Node::Null);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let node = (&mut de).deserialize_any(NodeSeed(TOP_MEMBERS))?;
    de.end()?;
    Ok(node)
}

/// A page number, as a number or a numeric string.
fn page_num(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Whether a `next` link says there is another page: a non-empty string.
fn next_link(v: Option<&Value>) -> Option<bool> {
    match v {
        None => None,
        Some(Value::String(s)) => Some(!s.is_empty()),
        Some(_) => Some(false),
    }
}

/// One list item as a session, straight from its bytes. A repeated field
/// fails that read (serde's "duplicate field") where a `Value` keeps the
/// last, as the detail decoder and the list decoder before it do: such an
/// item is read through a `Value` instead of being dropped.
fn read_session(item: &RawValue) -> Result<Session, serde_json::Error> {
    serde_json::from_str::<Session>(item.get()).or_else(|e| {
        serde_json::from_str::<Value>(item.get())
            .map_err(|_| e)
            .and_then(serde_json::from_value)
    })
}

/// The page a split list body describes, or what is wrong with its shape.
fn page_of(body: Node<'_>) -> Result<Page, String> {
    fn sessions(items: Vec<&RawValue>) -> Vec<Session> {
        items
            .into_iter()
            .filter_map(|item| match read_session(item) {
                Ok(s) if !s.session_id.is_empty() => Some(s),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a session the API sent in a form skyrules cannot read");
                    None
                }
            })
            .collect()
    }
    match body {
        Node::List(items) => Ok(Page {
            sessions: sessions(items),
            ..Page::default()
        }),
        Node::Object(o) => {
            let Members { data, kept: o } = *o;
            match data {
                Some(Node::List(items)) => {
                    let meta = o.get("meta");
                    let current_page = page_num(meta.and_then(|m| m.get("current_page")))
                        .or_else(|| page_num(o.get("current_page")));
                    let last_page = page_num(meta.and_then(|m| m.get("last_page")))
                        .or_else(|| page_num(o.get("last_page")));
                    let has_next = next_link(o.get("links").and_then(|l| l.get("next")))
                        .or_else(|| next_link(o.get("next_page_url")));
                    Ok(Page {
                        sessions: sessions(items),
                        current_page,
                        last_page,
                        has_next,
                    })
                }
                Some(Node::Object(p)) => match p.data {
                    Some(Node::List(items)) => Ok(Page {
                        sessions: sessions(items),
                        current_page: page_num(p.kept.get("current_page")),
                        last_page: page_num(p.kept.get("last_page")),
                        has_next: next_link(p.kept.get("next_page_url")),
                    }),
                    _ => Err("`data` is an object without a `data` list of sessions".into()),
                },
                Some(Node::Null) | None => {
                    Err("the response has no `data` list of sessions".into())
                }
                Some(Node::Other) => Err("`data` is neither a list nor a paginator".into()),
            }
        }
        Node::Null | Node::Other => Err("the response is neither a list nor an object".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_key_never_shows_in_debug_or_display() {
        let key = ApiKey::new("sk_live_very_secret\n");
        assert!(!format!("{key:?} {key}").contains("very_secret"));
        let cfg = ClientConfig::new("http://localhost", key);
        assert!(!format!("{cfg:?}").contains("very_secret"));
    }

    #[test]
    fn all_three_page_shapes_decode() {
        let laravel_resource = json!({"success": true, "data": [{"session_id": "a"}],
            "meta": {"current_page": 1, "last_page": 3}, "links": {"next": "http://x?page=2"}});
        let p = parse_page(laravel_resource.to_string().as_bytes()).unwrap();
        assert_eq!(
            (p.sessions.len(), p.current_page, p.last_page, p.has_next),
            (1, Some(1), Some(3), Some(true))
        );

        let paginator = json!({"success": true, "data": {"data": [{"session_id": "a"}, {"session_id": "b"}],
            "current_page": 2, "last_page": 2, "next_page_url": null}});
        let p = parse_page(paginator.to_string().as_bytes()).unwrap();
        assert_eq!(
            (p.sessions.len(), p.current_page, p.last_page, p.has_next),
            (2, Some(2), Some(2), Some(false))
        );

        let bare = json!([{"session_id": "a"}, {"bogus": 1}]);
        let p = parse_page(bare.to_string().as_bytes()).unwrap();
        assert_eq!((p.sessions.len(), p.last_page, p.has_next), (1, None, None));

        assert!(parse_page(br#"{"success": true, "message": "ok"}"#).is_err());
    }

    /// The list decoding as it was before pages were decoded from bytes:
    /// body → `Value` → page. The byte decoder must agree with it exactly.
    fn page_via_value(body: &[u8]) -> Result<Page, String> {
        let v = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(body).map_err(|e| e.to_string())?
        };
        parse_page_value(v)
    }

    #[test]
    fn pages_decode_from_bytes_exactly_as_through_a_value() {
        let bodies: &[&str] = &[
            // The three shapes, with paging fields in every accepted form.
            r#"{"success":true,"data":[{"session_id":"a","status":"ended","handled_by":"human","has_visitor_messages":1,"created_at":"2025-01-02 03:04:05","visitor_name":null}],"meta":{"current_page":1,"last_page":3},"links":{"next":"http://x?page=2"}}"#,
            r#"{"data":[{"session_id":"a"}],"meta":{"current_page":"2","last_page":"3"},"links":{"next":null}}"#,
            r#"{"data":[{"session_id":"a"}],"meta":[],"links":[],"current_page":2,"last_page":2,"next_page_url":""}"#,
            r#"{"data":[{"session_id":"a"}],"meta":{"current_page":1.0,"last_page":-1},"links":{"next":5}}"#,
            r#"{"data":[{"session_id":"a"}],"meta":"x","links":"y","next_page_url":"http://x?page=2"}"#,
            r#"{"data":[],"current_page":1,"last_page":1}"#,
            r#"{"success":true,"data":{"data":[{"session_id":"a"},{"session_id":"b"}],"current_page":2,"last_page":2,"next_page_url":null,"links":[{"url":null}],"total":3}}"#,
            r#"{"data":{"data":[{"session_id":"a"}],"current_page":"1","last_page":"2","next_page_url":"http://x?page=2"}}"#,
            r#"  [{"session_id":"a"},{"bogus":1},{"session_id":""},{"session_id":7},"text",null,{"session_id":"b","status":5}]  "#,
            "[]",
            // Duplicate and escaped keys: the last one wins, escapes count.
            r#"{"data":5,"data":[{"session_id":"a"}],"meta":{"last_page":9},"meta":{"last_page":2}}"#,
            r#"{"d\u0061ta":[{"session_id":"\u0061"}],"m\u0065ta":{"last_page":2}}"#,
            r#"{"data":{"data":null,"data":[{"session_id":"a"}],"last_page":4,"last_page":5}}"#,
            // Unknown members of any size and depth are ignored.
            r#"{"x":{"y":[1,2,{"z":"é"}]},"data":[{"session_id":"a","extra":{"deep":[[[]]]}}],"y":1e300}"#,
            // Wrong shapes.
            r#"{"success":true,"message":"ok"}"#,
            r#"{"data":null}"#,
            r#"{"data":5}"#,
            r#"{"data":"x"}"#,
            r#"{"data":true}"#,
            r#"{"data":{}}"#,
            r#"{"data":{"data":{}}}"#,
            r#"{"data":{"data":"x"}}"#,
            r#""text""#,
            "5",
            "-5",
            "1.5",
            "null",
            "true",
            "",
            " \n ",
            // Not JSON at all.
            r#"{"success": tru"#,
            r#"{"data":[{"session_id":"a"}"#,
            r#"{"data":[{"session_id":"a"}]} x"#,
            r#"[{"session_id":"a"},]"#,
            r#"{"data":[{"session_id":"a"}],}"#,
            "<html>Bad Gateway</html>",
            r#"{"data":[{"session_id":"a\q"}]}"#,
        ];
        for body in bodies {
            let want = page_via_value(body.as_bytes());
            let got = parse_page(body.as_bytes());
            assert_eq!(format!("{got:?}"), format!("{want:?}"), "{body}");
        }
        // The one difference: a number beyond f64's range where nothing
        // reads it no longer fails the whole page (it failed the list for
        // good before, after every retry).
        for body in [
            r#"{"x":1e400,"data":[{"session_id":"a"}]}"#,
            r#"[{"session_id":"a","x":1e400}]"#,
        ] {
            assert!(page_via_value(body.as_bytes()).is_err());
            assert_eq!(parse_page(body.as_bytes()).unwrap().sessions.len(), 1);
        }
        // Invalid UTF-8, in a session and outside.
        for body in [
            &b"[{\"session_id\":\"\xff\"}]"[..],
            b"{\"x\":\"\xff\",\"data\":[]}",
        ] {
            assert_eq!(
                format!("{:?}", parse_page(body)),
                format!("{:?}", page_via_value(body))
            );
        }
    }

    #[test]
    fn only_a_top_level_success_false_is_a_refusal() {
        let rejected = |b: &str| split_list_body(b.as_bytes()).unwrap().rejected();
        assert!(rejected(r#"{"success":false,"message":"no"}"#));
        assert!(rejected(r#"{"data":[],"success":true,"success":false}"#));
        assert!(!rejected(r#"{"success":true,"data":[]}"#));
        assert!(!rejected(r#"{"success":"false","data":[]}"#));
        assert!(!rejected(r#"{"data":{"success":false,"data":[]}}"#));
        assert!(!rejected(r#"[{"success":false}]"#));
        assert!(!rejected("  "));
    }

    #[test]
    fn error_bodies_become_one_line() {
        let m = error_message(br#"{"message":"The given data was invalid.","errors":{"message":["The message may not be greater than 4096 characters."]}}"#);
        assert_eq!(
            m,
            "The given data was invalid. (message: The message may not be greater than 4096 characters.)"
        );
        assert_eq!(
            error_message(b"<html>\nBad Gateway</html>"),
            "<html> Bad Gateway</html>"
        );
    }

    #[test]
    fn messages_are_checked_before_sending() {
        assert!(check_message("").is_err());
        assert!(check_message("   ").is_err());
        assert!(check_message(&"é".repeat(4096)).is_ok());
        assert!(check_message(&"é".repeat(4097)).is_err());
    }
}
