//! An optional rate limit on the public API, as a real service may have
//! one: a fixed window (a minute unless told otherwise) per simulator,
//! `X-RateLimit-Limit`, `-Remaining` and `-Reset` (seconds to the
//! window's end) on every API response, and a 429 with `Retry-After` past
//! it. Off until set with `POST /_sim/rate-limit {"per_minute": N}` or
//! `{"limit": N, "window_secs": S}` (`null` turns it off).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::{is_api_path, message_response, Shared};

/// The limit and the current window's count.
#[derive(Debug)]
pub(crate) struct RateLimit {
    limit: Option<u32>,
    window: Duration,
    window_start: Instant,
    used: u32,
    /// Requests refused with a 429 since the limit was set.
    pub(crate) refused: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            limit: None,
            window: Duration::from_secs(60),
            window_start: Instant::now(),
            used: 0,
            refused: 0,
        }
    }
}

impl RateLimit {
    /// Sets (or, with `None`, lifts) a limit of `limit` requests per
    /// `window`; a new window starts.
    pub(crate) fn set(&mut self, limit: Option<u32>, window: Duration) {
        *self = RateLimit {
            limit,
            window: window.max(Duration::from_secs(1)),
            ..RateLimit::default()
        };
    }

    /// Counts one request: `Ok(remaining)` when it may pass, `Err(())`
    /// when the window is used up; with the seconds to the window's end.
    fn take(&mut self, now: Instant) -> Option<(Result<u32, ()>, u32, u64)> {
        let limit = self.limit?;
        if now.duration_since(self.window_start) >= self.window {
            self.window_start = now;
            self.used = 0;
        }
        let reset = (self
            .window
            .saturating_sub(now.duration_since(self.window_start)))
        .as_secs_f64()
        .ceil()
        .max(1.0) as u64;
        if self.used >= limit {
            self.refused += 1;
            return Some((Err(()), limit, reset));
        }
        self.used += 1;
        Some((Ok(limit - self.used), limit, reset))
    }
}

fn stamp(headers: &mut HeaderMap, limit: u32, remaining: u32, reset: u64) {
    for (name, value) in [
        ("x-ratelimit-limit", limit.to_string()),
        ("x-ratelimit-remaining", remaining.to_string()),
        ("x-ratelimit-reset", reset.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
}

/// Middleware: applies the limit to `/api/v1` requests.
pub(crate) async fn layer(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if !is_api_path(req.uri().path()) {
        return next.run(req).await;
    }
    let taken = shared.rate().take(Instant::now());
    match taken {
        None => next.run(req).await,
        Some((Err(()), limit, reset)) => {
            let mut resp = message_response(StatusCode::TOO_MANY_REQUESTS, "Too Many Attempts.");
            stamp(resp.headers_mut(), limit, 0, reset);
            if let Ok(v) = HeaderValue::from_str(&reset.to_string()) {
                resp.headers_mut().insert("retry-after", v);
            }
            resp
        }
        Some((Ok(remaining), limit, reset)) => {
            let mut resp = next.run(req).await;
            stamp(resp.headers_mut(), limit, remaining, reset);
            resp
        }
    }
}
