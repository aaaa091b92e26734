//! What can go wrong talking to SkyLight, classified by what the caller
//! should do about it (fix config, give up, retry later).
//!
//! No variant ever carries the API key: messages come from the server's body
//! or from reqwest errors with the URL stripped of nothing secret (the key
//! travels in a header, never in the URL).

use std::time::Duration;

/// An error from the SkyLight API client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401/403: the key is wrong, revoked or lacks access.
    #[error("SkyLight rejected the API key (HTTP {status}: {message}); check {key_source}")]
    Unauthorized {
        /// 401 or 403.
        status: u16,
        /// The server's explanation.
        message: String,
        /// Where the key came from, as the user configured it.
        key_source: String,
    },
    /// 404: the session (or endpoint) does not exist.
    #[error("not found: {what} (HTTP 404: {message})")]
    NotFound {
        /// What was asked for, e.g. `session sess_123`.
        what: String,
        /// The server's explanation.
        message: String,
    },
    /// 422 or another 4xx: the request was understood and refused; retrying
    /// would not help.
    #[error("SkyLight refused {what} (HTTP {status}: {message})")]
    Rejected {
        /// What was attempted.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The server's explanation, with field errors folded in.
        message: String,
    },
    /// A 3xx: the API key is sent only to `api.base_url`'s host, so a
    /// redirect is never followed.
    #[error("SkyLight answered {what} with HTTP {status}, a redirect to {location}; redirects are not followed, so that the API key goes only to the host of `api.base_url`: set `api.base_url` to the API's real address")]
    Redirected {
        /// What was attempted.
        what: String,
        /// The 3xx status.
        status: u16,
        /// The host (and port) the redirect pointed to.
        location: String,
    },
    /// Refused locally, before any request was sent.
    #[error("{0}")]
    Invalid(String),
    /// Not sent: this replica's time to act on the workspace ran out (its
    /// lease could not be renewed in time, or another replica took it).
    #[error("not sent ({what}): this replica no longer holds workspace {workspace}'s lease")]
    Fenced {
        /// What was attempted.
        what: String,
        /// The workspace.
        workspace: String,
    },
    /// Retries ran out on 429, 5xx, timeouts, connection errors or
    /// undecodable bodies.
    #[error("SkyLight API unavailable for {what} after {attempts} attempt(s): {last}")]
    Unavailable {
        /// What was attempted.
        what: String,
        /// How many requests were made.
        attempts: u32,
        /// The last failure.
        last: Transient,
    },
}

impl ApiError {
    /// True for errors the user must fix (key, id, input), as opposed to an
    /// outage; the binary maps the first kind to exit code 1.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            ApiError::Unauthorized { .. }
                | ApiError::Redirected { .. }
                | ApiError::NotFound { .. }
                | ApiError::Rejected { .. }
                | ApiError::Invalid(_)
        )
    }

    /// True when the session no longer exists or can no longer be acted on.
    pub fn is_gone(&self) -> bool {
        matches!(self, ApiError::NotFound { .. })
    }
}

/// A failure worth retrying.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Transient {
    /// 429 Too Many Requests.
    #[error("rate limited (HTTP 429){}", retry_after_text(.retry_after))]
    RateLimited {
        /// The server's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// 5xx.
    #[error("server error (HTTP {status}: {message})")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The server's explanation.
        message: String,
    },
    /// No response in time.
    #[error("timed out")]
    Timeout,
    /// Could not connect: the request was never sent.
    #[error("could not connect: {0}")]
    Connect(String),
    /// The connection broke after the request may have been sent.
    #[error("connection failed: {0}")]
    Connection(String),
    /// A 2xx whose body was not the JSON we expect.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// A body larger than `api.max_body`; the rest was not read.
    #[error("response body larger than {} (`api.max_body`); not read further", size_text(*.limit))]
    TooLarge {
        /// The cap, in bytes.
        limit: usize,
    },
}

fn size_text(bytes: usize) -> String {
    bytesize::ByteSize::b(bytes as u64)
        .display()
        .iec()
        .to_string()
}

impl Transient {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Transient::RateLimited { .. } => "rate_limited",
            Transient::Server { .. } => "server_error",
            Transient::Timeout => "timeout",
            Transient::Connect(_) => "connect",
            Transient::Connection(_) => "connection",
            Transient::Malformed(_) => "malformed",
            Transient::TooLarge { .. } => "too_large",
        }
    }

    /// Whether the request may have been carried out by the server even
    /// though we saw no success (the basis of the no-blind-resend rule).
    pub(crate) fn outcome_unknown(&self) -> bool {
        match self {
            Transient::RateLimited { .. } | Transient::Connect(_) => false,
            // A 503 from a proxy usually means "not reached"; a 500 may come
            // after the write. Treat every 5xx as unknown: re-reading is cheap,
            // a duplicate customer message is not.
            Transient::Server { .. } => true,
            Transient::Timeout
            | Transient::Connection(_)
            | Transient::Malformed(_)
            | Transient::TooLarge { .. } => true,
        }
    }
}

fn retry_after_text(d: &Option<Duration>) -> String {
    match d {
        Some(d) => format!(", retry after {}", humantime::format_duration(*d)),
        None => String::new(),
    }
}
