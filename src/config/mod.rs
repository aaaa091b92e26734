//! Configuration: built-in defaults, then the TOML file, then `SKYRULES_*`
//! environment variables and flags (SPEC §4), validated before anything
//! starts.
//!
//! Owns: the schema, its defaults, and errors that name the key and file.
//! Does not own: parsing the command line (the `cli` module hands over an
//! [`Overrides`]) or acting on any setting.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::api::DEFAULT_BASE_URL;

mod workspace;
pub use workspace::{GuardOverride, Workspace, WorkspaceConfig, DEFAULT_WORKSPACE};

/// The config file looked for when `--config` is not given.
const DEFAULT_CONFIG_FILE: &str = "skyrules.toml";
/// The environment variable holding the API key when no key file is set.
pub(crate) const API_KEY_ENV: &str = "SKYLIGHT_API_KEY";
/// The environment variable holding a PostgreSQL URL for the state.
pub(crate) const STATE_URL_ENV: &str = "SKYRULES_STATE_URL";

/// A configuration problem; always names the file or variable and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid, or a key is unknown or has a bad value.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A value from a flag or environment variable is bad.
    #[error("{source_name}: {message}")]
    Override {
        /// e.g. `--poll-interval / SKYRULES_POLL_INTERVAL`.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// A setting is missing or unusable.
    #[error("{0}")]
    Invalid(String),
}

/// The `[api]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// SkyLight API base URL.
    pub base_url: String,
    /// File holding the API key; else `SKYLIGHT_API_KEY`.
    pub api_key_file: Option<PathBuf>,
    /// Limit for one HTTP request.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Attempts per API call before giving up (1 = no retries).
    pub max_attempts: u32,
    /// Most requests per second to SkyLight, every attempt counted; unset:
    /// unlimited.
    #[serde(deserialize_with = "rate")]
    pub max_requests_per_second: Option<f64>,
    /// Most requests to SkyLight in any minute with this key, every
    /// attempt counted; the poll plan fits in it. Unset: no budget.
    pub max_requests_per_minute: Option<u64>,
    /// Largest response body read from SkyLight, in bytes (`"16MiB"` or a
    /// number of bytes in the file).
    #[serde(deserialize_with = "size")]
    pub max_body: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            base_url: DEFAULT_BASE_URL.to_string(),
            api_key_file: None,
            timeout: Duration::from_secs(10),
            max_attempts: 5,
            max_requests_per_second: None,
            max_requests_per_minute: None,
            max_body: crate::api::client::DEFAULT_MAX_BODY as u64,
        }
    }
}

/// The `[engine]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Directory of `*.rhai` rule files.
    pub rules_dir: PathBuf,
    /// Time between two polls of the session list.
    #[serde(deserialize_with = "duration")]
    pub poll_interval: Duration,
    /// Time between two looks at the chats waiting for a human (the
    /// pending fast lane); zero turns it off.
    #[serde(deserialize_with = "duration")]
    pub pending_interval: Duration,
    /// The state database file (SQLite), unless a PostgreSQL URL is given.
    pub state_path: PathBuf,
    /// File holding a PostgreSQL URL to keep the state in instead
    /// (`SKYRULES_STATE_URL` beats it). Never the URL itself: it holds a
    /// password.
    pub state_url_file: Option<PathBuf>,
    /// Log actions instead of taking them.
    pub dry_run: bool,
    /// Sessions whose actions may run at the same time.
    pub max_concurrency: usize,
    /// How long ended sessions' snapshots, messages and rule memory are
    /// kept in the state file (the audit log keeps its ids).
    #[serde(deserialize_with = "duration")]
    pub retention: Duration,
    /// Largest rule memory (`ev.set`, `ev.once`) one rule may keep for one
    /// session, serialized, in bytes.
    #[serde(deserialize_with = "size")]
    pub max_rule_memory: u64,
    /// Events each session's decision trace (`skyrules why`) keeps, the
    /// newest ones; 0 keeps none.
    pub trace_length: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            rules_dir: PathBuf::from("rules"),
            poll_interval: Duration::from_secs(5),
            pending_interval: Duration::from_secs(1),
            state_path: PathBuf::from("skyrules.db"),
            state_url_file: None,
            dry_run: false,
            max_concurrency: 8,
            retention: Duration::from_secs(30 * 24 * 3600),
            max_rule_memory: crate::rules::DEFAULT_MAX_RULE_MEMORY as u64,
            trace_length: crate::trace::DEFAULT_TRACE_LENGTH,
        }
    }
}

/// The `[guard]` table: the reply-loop guard of SPEC §3.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// Replies skyrules may send to one session per window.
    pub max_replies: u32,
    /// The sliding window.
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            max_replies: 5,
            window: Duration::from_secs(600),
        }
    }
}

/// The `[http]` table: the metrics, health and status listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to serve on; off when unset.
    pub listen: Option<std::net::SocketAddr>,
    /// File holding the bearer token every path but `/healthz` requires;
    /// mandatory when `listen` is not a loopback address.
    pub token_file: Option<PathBuf>,
}

/// The `[ha]` table: replicas sharing a PostgreSQL state (SPEC §7).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HaConfig {
    /// How long a workspace's lease lasts without a renewal: a dead or
    /// frozen holder is replaced after about this long.
    #[serde(deserialize_with = "duration")]
    pub lease: Duration,
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig {
            lease: Duration::from_secs(15),
        }
    }
}

/// The whole configuration, after all layers are applied.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[api]`.
    pub api: ApiConfig,
    /// `[engine]`.
    pub engine: EngineConfig,
    /// `[guard]`.
    pub guard: GuardConfig,
    /// `[http]`.
    pub http: HttpConfig,
    /// `[ha]`.
    pub ha: HaConfig,
    /// `[hours.NAME]`: business-hours calendars.
    pub hours: std::collections::BTreeMap<String, crate::hours::CalendarConfig>,
    /// `[notify.NAME]`: channels rules may notify (secrets in files or the
    /// environment, resolved only by `run`).
    pub notify: std::collections::BTreeMap<String, crate::notifications::ChannelConfig>,
    /// `[workspaces.NAME]`: several SkyLight accounts (SPEC §7); none
    /// means one workspace, `default`, described by `[api]` and `[engine]`.
    pub workspaces: std::collections::BTreeMap<String, WorkspaceConfig>,
    /// The file the settings came from, if any.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// Which settings a flag or variable gave: those beat a workspace's
    /// own key too.
    #[serde(skip)]
    flags: Flags,
}

/// The overrides that were given, so workspaces do not hide them.
#[derive(Debug, Clone, Copy, Default)]
struct Flags {
    base_url: bool,
    rules_dir: bool,
    poll_interval: bool,
    dry_run: bool,
}

/// Settings from flags or `SKYRULES_*` variables, which beat the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--base-url` / `SKYRULES_BASE_URL`.
    pub base_url: Option<String>,
    /// `--rules` / `SKYRULES_RULES_DIR`.
    pub rules_dir: Option<PathBuf>,
    /// `--poll-interval` / `SKYRULES_POLL_INTERVAL`, unparsed.
    pub poll_interval: Option<String>,
    /// `--state` / `SKYRULES_STATE_PATH`.
    pub state_path: Option<PathBuf>,
    /// `--dry-run` / `SKYRULES_DRY_RUN`.
    pub dry_run: bool,
    /// `--listen` / `SKYRULES_LISTEN`, unparsed.
    pub listen: Option<String>,
}

impl Config {
    /// Loads `path`, or `./skyrules.toml` when `path` is `None` and the file
    /// exists, or the defaults; then applies `overrides`.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(p) => Config::from_file(p)?,
            None if Path::new(DEFAULT_CONFIG_FILE).is_file() => {
                Config::from_file(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => Config::default(),
        };
        config.apply(overrides)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses one TOML file (no overrides, no validation).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_text(&text, path)
    }

    /// Parses TOML text read from `path` (named in errors; no overrides, no
    /// validation). The config loader's whole parsing step, reading no file.
    pub fn from_text(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config = Config::from_toml(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: explain(text, &e),
            }
        })?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    fn from_toml(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    fn apply(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        self.flags = Flags {
            base_url: o.base_url.is_some(),
            rules_dir: o.rules_dir.is_some(),
            poll_interval: o.poll_interval.is_some(),
            dry_run: o.dry_run,
        };
        if let Some(u) = &o.base_url {
            self.api.base_url = u.clone();
        }
        if let Some(d) = &o.rules_dir {
            self.engine.rules_dir = d.clone();
        }
        if let Some(p) = &o.poll_interval {
            self.engine.poll_interval =
                parse_duration(p).map_err(|message| ConfigError::Override {
                    source_name: "--poll-interval / SKYRULES_POLL_INTERVAL".into(),
                    message,
                })?;
        }
        if let Some(s) = &o.state_path {
            self.engine.state_path = s.clone();
        }
        self.engine.dry_run |= o.dry_run;
        if let Some(l) = &o.listen {
            self.http.listen = Some(l.trim().parse().map_err(|_| ConfigError::Override {
                source_name: "--listen / SKYRULES_LISTEN".into(),
                message: format!("{l:?} is not an address like 127.0.0.1:9187"),
            })?);
        }
        Ok(())
    }

    /// Checks every setting that can be checked without reading a secret:
    /// what [`Config::load`] does after the overrides.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let file = self
            .source
            .as_ref()
            .map(|p| format!(" in {}", p.display()))
            .unwrap_or_default();
        let bad = |key: &str, why: &str| ConfigError::Invalid(format!("`{key}`{file}: {why}"));
        check_url(&self.api.base_url, "api.base_url", &bad)?;
        check_timing(
            self.engine.poll_interval,
            self.guard.window,
            ("engine.poll_interval", "guard.window"),
            &bad,
        )?;
        if self.api.timeout.is_zero() {
            return Err(bad("api.timeout", "must be more than zero"));
        }
        if self.api.max_attempts == 0 {
            return Err(bad("api.max_attempts", "must be at least 1"));
        }
        if let Some(rate) = self.api.max_requests_per_second {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(bad(
                    "api.max_requests_per_second",
                    &format!("must be a positive number, not {rate}"),
                ));
            }
        }
        if self.api.max_requests_per_minute == Some(0) {
            return Err(bad(
                "api.max_requests_per_minute",
                "must be at least 1 (leave it unset for no budget)",
            ));
        }
        if !self.engine.pending_interval.is_zero()
            && self.engine.pending_interval < Duration::from_millis(100)
        {
            return Err(bad(
                "engine.pending_interval",
                "must be at least 100ms (or 0s to turn the pending fast lane off)",
            ));
        }
        if self.api.max_body < 1024 {
            return Err(bad("api.max_body", "must be at least 1KiB"));
        }
        if self.engine.max_rule_memory < 64 {
            return Err(bad("engine.max_rule_memory", "must be at least 64B"));
        }
        if self.engine.max_concurrency == 0 {
            return Err(bad("engine.max_concurrency", "must be at least 1"));
        }
        if self.engine.trace_length > 100_000 {
            return Err(bad(
                "engine.trace_length",
                "must be at most 100000 events (0 turns the trace off)",
            ));
        }
        if self.ha.lease < Duration::from_secs(1) {
            return Err(bad("ha.lease", "must be at least 1s"));
        }
        self.calendars()?;
        self.validate_workspaces(&bad)?;
        if let Some(addr) = self.http.listen {
            if !addr.ip().is_loopback() && self.http.token_file.is_none() {
                return Err(bad(
                    "http.token_file",
                    &format!("serving on {addr} (not loopback) requires a bearer token file"),
                ));
            }
        }
        Ok(())
    }

    /// The business-hours calendars, parsed; errors name the key and file.
    pub fn calendars(&self) -> Result<crate::hours::Calendars, ConfigError> {
        crate::hours::Calendars::parse(&self.hours).map_err(|e| {
            ConfigError::Invalid(match &self.source {
                Some(p) => format!("{}: {e}", p.display()),
                None => e.to_string(),
            })
        })
    }

    /// The PostgreSQL URL the state lives at, if any: `SKYRULES_STATE_URL`,
    /// else the contents of `engine.state_url_file`. `None` means the
    /// SQLite file `engine.state_path`.
    pub(crate) fn state_url(&self) -> Result<Option<String>, ConfigError> {
        let (url, from) = match std::env::var(STATE_URL_ENV) {
            Ok(u) if !u.trim().is_empty() => (u, STATE_URL_ENV.to_string()),
            _ => match &self.engine.state_url_file {
                None => return Ok(None),
                Some(file) => {
                    let text = std::fs::read_to_string(file).map_err(|e| {
                        ConfigError::Invalid(format!(
                            "cannot read the state URL file {} (`engine.state_url_file`): {e}",
                            file.display()
                        ))
                    })?;
                    (
                        text,
                        format!(
                            "the state URL file {} (`engine.state_url_file`)",
                            file.display()
                        ),
                    )
                }
            },
        };
        postgres_url(&url, &from).map(Some)
    }

    /// The bearer token of the HTTP listener, if `[http] token_file` is set.
    pub(crate) fn http_token(&self) -> Result<Option<String>, ConfigError> {
        let Some(file) = &self.http.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(file).map_err(|e| {
            ConfigError::Invalid(format!(
                "cannot read the token file {} (`http.token_file`): {e}",
                file.display()
            ))
        })?;
        let token = text.trim().to_string();
        if token.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "the token file {} (`http.token_file`) is empty",
                file.display()
            )));
        }
        Ok(Some(token))
    }
}

/// A PostgreSQL URL read from `from` (a variable or a file), trimmed; an
/// error naming `from` (never the URL: it holds a password) otherwise.
pub(crate) fn postgres_url(value: &str, from: &str) -> Result<String, ConfigError> {
    let url = value.trim();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(url.to_string())
    } else {
        Err(ConfigError::Invalid(format!(
            "{from}: expected a PostgreSQL URL such as postgres://user:password@host/dbname"
        )))
    }
}

/// The checks of a workspace's poll interval and guard window, for the
/// shared defaults (`engine.`, `guard.`) and each workspace's own.
fn check_timing(
    poll_interval: Duration,
    window: Duration,
    keys: (&str, &str),
    bad: &dyn Fn(&str, &str) -> ConfigError,
) -> Result<(), ConfigError> {
    if poll_interval < Duration::from_millis(100) {
        return Err(bad(keys.0, "must be at least 100ms"));
    }
    if window.is_zero() {
        return Err(bad(keys.1, "must be more than zero"));
    }
    Ok(())
}

/// Checks an API base URL's scheme.
fn check_url(
    url: &str,
    key: &str,
    bad: &dyn Fn(&str, &str) -> ConfigError,
) -> Result<(), ConfigError> {
    let url = url.trim();
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(bad(
            key,
            &format!("{url:?} must start with http:// or https://"),
        ))
    }
}

/// Parses a humantime duration (`5s`, `1m 30s`) with an error that shows
/// the expected form.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = |e: &dyn std::fmt::Display| {
        format!("invalid duration {s:?} ({e}); expected e.g. \"5s\" or \"1m 30s\"")
    };
    if beyond_humantime(s.trim()) {
        return Err(bad(&"number is too large"));
    }
    humantime::parse_duration(s.trim()).map_err(|e| bad(&e))
}

/// Whether `s` may add up to `u64::MAX` seconds or more, where humantime
/// panics (`Duration::new` overflows on `"18446744073709551615s 1000ms"`)
/// instead of failing. An upper bound, read as humantime reads: each
/// number (digits, spaces ignored, up to its unit) counts one more of its
/// unit, and of a year when the unit is unknown.
fn beyond_humantime(s: &str) -> bool {
    const SEC: u128 = 1_000_000_000;
    let unit_ns = |u: &str| -> u128 {
        match u {
            "nanos" | "nsec" | "ns" => 1,
            "usec" | "us" | "µs" => 1_000,
            "millis" | "msec" | "ms" => 1_000_000,
            "seconds" | "second" | "secs" | "sec" | "s" => SEC,
            "minutes" | "minute" | "min" | "mins" | "m" => 60 * SEC,
            "hours" | "hour" | "hr" | "hrs" | "h" => 3_600 * SEC,
            "days" | "day" | "d" => 86_400 * SEC,
            "weeks" | "week" | "wk" | "wks" | "w" => 604_800 * SEC,
            _ => 31_557_600 * SEC,
        }
    };
    let (mut total, mut digits, mut unit, mut fraction) =
        (0u128, String::new(), String::new(), false);
    let mut add = |digits: &mut String, unit: &mut String| {
        if !digits.is_empty() {
            let n: u128 = digits.parse().unwrap_or(u128::MAX);
            total = total.saturating_add(n.saturating_add(1).saturating_mul(unit_ns(unit)));
        }
        digits.clear();
        unit.clear();
    };
    for c in s.chars() {
        if c.is_alphabetic() {
            unit.push(c);
            continue;
        }
        if !unit.is_empty() {
            add(&mut digits, &mut unit);
            fraction = false;
        }
        if c == '.' {
            fraction = true;
        } else if c.is_ascii_digit() && !fraction {
            digits.push(c);
        }
    }
    add(&mut digits, &mut unit);
    total >= u128::from(u64::MAX) * SEC
}

/// The serde form of [`parse_duration`], for config fields.
pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// A byte size: a whole number of bytes, or a string such as `"16MiB"`,
/// `"64 KiB"` or `"1MB"`.
fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct Size;
    impl serde::de::Visitor<'_> for Size {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a size such as \"16MiB\", \"64KiB\" or a number of bytes")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("a size cannot be negative ({v})")))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u64, E> {
            v.trim()
                .parse::<bytesize::ByteSize>()
                .map(|b| b.as_u64())
                .map_err(|_| {
                    E::custom(format!(
                        "invalid size {v:?}; expected e.g. \"16MiB\", \"64KiB\" or a number of bytes"
                    ))
                })
        }
    }
    d.deserialize_any(Size)
}

/// A request rate: any TOML number (`20`, `2.5`); range-checked in
/// `validate`.
fn rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    struct Rate;
    impl serde::de::Visitor<'_> for Rate {
        type Value = f64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a positive number of requests per second, e.g. 20 or 2.5")
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }
    }
    d.deserialize_any(Rate).map(Some)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// toml's messages name the field but not its table; add the dotted key the
/// user has to fix.
fn explain(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span().and_then(|span| key_at(text, span.start)) {
        Some(key) => format!("`{key}`: {msg}"),
        None => msg,
    }
}

/// The dotted key of the deepest key or value of `text` that holds byte
/// `at`: the key itself for an unknown key, the key of a bad value (also
/// an element of a multi-line array or inline table), the table of a
/// `[table]` header that lacks a field. `None` if `text` is not TOML.
fn key_at(text: &str, at: usize) -> Option<String> {
    use toml::de::{DeTable, DeValue};
    fn walk(t: &DeTable<'_>, at: usize, path: &mut Vec<String>, best: &mut Vec<String>) {
        for (k, v) in t.iter() {
            let name = k.get_ref();
            let plain = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            path.push(if plain {
                name.to_string()
            } else {
                format!("{name:?}")
            });
            if (k.span().contains(&at) || v.span().contains(&at)) && path.len() > best.len() {
                best.clone_from(path);
            }
            if let DeValue::Table(inner) = v.get_ref() {
                walk(inner, at, path, best);
            }
            path.pop();
        }
    }
    let doc = DeTable::parse(text).ok()?;
    let mut best = Vec::new();
    walk(doc.get_ref(), at, &mut Vec::new(), &mut best);
    (!best.is_empty()).then(|| best.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `text` as a config file, as `skyrules` would.
    pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("skyrules.toml");
        std::fs::write(&p, text).unwrap();
        Config::load(Some(&p), &Overrides::default())
    }

    #[test]
    fn the_spec_example_loads() {
        let c = parse(
            r#"
[api]
base_url = "https://dashboard.skylightchat.com/api/v1"
api_key_file = "/run/secrets/skylight"
[engine]
rules_dir = "rules"
poll_interval = "1m 30s"
state_path = "skyrules.db"
dry_run = false
[guard]
max_replies = 5
window = "10m"
"#,
        )
        .unwrap();
        assert_eq!(c.engine.poll_interval, Duration::from_secs(90));
        assert_eq!(c.guard.window, Duration::from_secs(600));
    }

    #[test]
    fn the_shipped_example_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/skyrules.toml");
        let c = Config::load(Some(&p), &Overrides::default()).unwrap();
        assert_eq!(c.engine.poll_interval, Duration::from_secs(5));
        assert_eq!(c.guard.max_replies, 5);
    }

    #[test]
    fn unknown_key_names_table_key_and_line() {
        let e = parse("[engine]\nrules_dir = \"r\"\npoll_intervall = \"5s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("skyrules.toml:3:1"), "{e}");
        assert!(e.contains("engine.poll_intervall"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn bad_duration_names_the_key() {
        let e = parse("[guard]\nwindow = \"ten minutes\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2:") && e.contains("guard.window"), "{e}");
        assert!(e.contains("ten minutes"), "{e}");
    }

    #[test]
    fn overrides_beat_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[engine]\npoll_interval = \"5s\"\n").unwrap();
        let o = Overrides {
            poll_interval: Some("2s".into()),
            ..Overrides::default()
        };
        let c = Config::load(Some(&p), &o).unwrap();
        assert_eq!(c.engine.poll_interval, Duration::from_secs(2));
        let bad = Overrides {
            poll_interval: Some("soon".into()),
            ..Overrides::default()
        };
        let e = Config::load(Some(&p), &bad).unwrap_err().to_string();
        assert!(e.contains("SKYRULES_POLL_INTERVAL"), "{e}");
    }

    #[test]
    fn the_budget_and_the_fast_lane_reach_the_client_and_bad_values_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "sk_test\n").unwrap();
        let c = parse(&format!(
            "[api]\napi_key_file = {:?}\nmax_requests_per_minute = 600\n[engine]\npending_interval = \"2s\"\n",
            key.display().to_string()
        ))
        .unwrap();
        assert_eq!(c.engine.pending_interval, Duration::from_secs(2));
        let cc = c.workspace(None).unwrap().client_config().unwrap();
        assert_eq!(cc.max_requests_per_minute, Some(600));
        assert_eq!(
            cc.urgent_reserve, 60,
            "twice the fast lane's 30 looks a minute"
        );
        let d = parse("").unwrap();
        assert_eq!(
            d.engine.pending_interval,
            Duration::from_secs(1),
            "on by default"
        );
        assert_eq!(d.api.max_requests_per_minute, None, "no budget by default");
        for (text, key) in [
            (
                "[api]\nmax_requests_per_minute = 0\n",
                "api.max_requests_per_minute",
            ),
            (
                "[engine]\npending_interval = \"10ms\"\n",
                "engine.pending_interval",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        assert!(
            parse("[engine]\npending_interval = \"0s\"\n").is_ok(),
            "0s: off"
        );
    }

    #[test]
    fn max_requests_per_second_is_optional_and_passed_to_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "sk_test\n").unwrap();
        let with = |rate: &str| {
            format!(
                "[api]\napi_key_file = {:?}\n{rate}\n",
                key.display().to_string()
            )
        };
        let c = parse(&with("")).unwrap();
        assert_eq!(c.api.max_requests_per_second, None, "unlimited by default");
        assert_eq!(
            c.workspace(None)
                .unwrap()
                .client_config()
                .unwrap()
                .max_requests_per_second,
            None
        );
        for (text, rate) in [("20", 20.0), ("2.5", 2.5)] {
            let c = parse(&with(&format!("max_requests_per_second = {text}"))).unwrap();
            assert_eq!(c.api.max_requests_per_second, Some(rate));
            let cc = c.workspace(None).unwrap().client_config().unwrap();
            assert_eq!(cc.max_requests_per_second, Some(rate));
            crate::api::Client::new(cc).unwrap();
        }
    }

    #[test]
    fn a_bad_max_requests_per_second_names_the_key() {
        for bad in ["0", "-5", "0.0", "nan", "inf", "\"abc\"", "true"] {
            let e = parse(&format!("[api]\nmax_requests_per_second = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("api.max_requests_per_second"), "{bad}: {e}");
            assert!(!e.contains('\n'), "{bad}: {e}");
        }
        for bad in ["0", "-5"] {
            let e = parse(&format!("[api]\nmax_requests_per_second = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("must be a positive number"), "{e}");
        }
        let e = parse("[api]\nmax_requests_per_second = \"abc\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2:") && e.contains("positive number"), "{e}");
    }
}
