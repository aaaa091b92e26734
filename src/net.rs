//! What every HTTP client of skyrules shares: capped exponential backoff
//! with jitter, `Retry-After`, a response body read up to a cap counted
//! while it streams (a server sending hundreds of MiB, or never stopping,
//! costs at most the cap in memory), and errors in one line (cause chains,
//! body excerpts).
//!
//! Used by the SkyLight client and the notification channels. Does not own
//! when to retry or what a cut-off body means: the SkyLight client treats
//! it as a malformed response, a notifier only shows less of an error body.

use std::time::Duration;

use rand::Rng;
use reqwest::header::HeaderMap;

/// The delay before retry number `attempt` (1-based): `base` doubled per
/// attempt, capped at `max`, with jitter in [50%, 100%] of the step so that
/// many clients restarting together do not retry in lock step.
pub(crate) fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    exp.min(max).mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// The `Retry-After` of a response, in seconds or as an HTTP date (read
/// against the response's own `Date`, so clock skew does not matter).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    let now = headers
        .get(reqwest::header::DATE)
        .and_then(|d| d.to_str().ok())
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .unwrap_or_else(std::time::SystemTime::now);
    Some(at.duration_since(now).unwrap_or_default())
}

/// An error and its causes in one line, `outer: inner: innermost`, leaving
/// out a cause whose text an earlier part already holds (reqwest and hyper
/// repeat each other).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let next = c.to_string();
        if !s.contains(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cur = c.source();
    }
    s
}

/// The start of a body as one line of at most `max` characters (white
/// space folded), for an error message; empty for an empty body.
pub(crate) fn excerpt(bytes: &[u8], max: usize) -> String {
    String::from_utf8_lossy(bytes)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(max)
        .collect()
}

/// A response body, read as far as the cap allowed.
pub(crate) struct Body {
    /// The bytes read, at most the cap.
    pub bytes: Vec<u8>,
    /// False when the server had more to send than the cap allowed; the
    /// rest was never read (the connection is dropped with the response).
    pub complete: bool,
}

/// Reads `resp`'s body, stopping before it would hold more than `limit`
/// bytes. A `Content-Length` over the limit is refused before any byte is
/// read; without one, chunks are counted as they arrive.
pub(crate) async fn read_body(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Body, reqwest::Error> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Ok(Body {
            bytes: Vec::new(),
            complete: false,
        });
    }
    // Sized from what the server announced, never from more than the cap.
    let hint = resp.content_length().unwrap_or(0).min(limit as u64) as usize;
    let mut bytes = Vec::with_capacity(hint);
    while let Some(chunk) = resp.chunk().await? {
        if bytes.len() + chunk.len() > limit {
            let room = limit - bytes.len();
            bytes.extend_from_slice(&chunk[..room]);
            return Ok(Body {
                bytes,
                complete: false,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Body {
        bytes,
        complete: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn backoff_grows_and_is_capped() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(1));
        assert!(backoff(base, max, 1) <= Duration::from_millis(100));
        assert!(backoff(base, max, 1) >= Duration::from_millis(50));
        assert!(backoff(base, max, 3) >= Duration::from_millis(200));
        assert!(backoff(base, max, 30) <= Duration::from_secs(1));
        assert!(backoff(base, max, 40) >= Duration::from_millis(500));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static(" 7 "));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Sun, 08 Mar 2026 14:22:30 GMT"),
        );
        h.insert(
            "date",
            HeaderValue::from_static("Sun, 08 Mar 2026 14:22:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::from_secs(30)));
        h.insert("retry-after", HeaderValue::from_static("later"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn excerpts_are_one_short_line() {
        assert_eq!(excerpt(b"", 200), "");
        assert_eq!(excerpt(b"  no_service\n", 200), "no_service");
        assert_eq!(
            excerpt(b"<html>\n<body>Bad\tGateway", 200),
            "<html> <body>Bad Gateway"
        );
        assert_eq!(excerpt(&[b'a'; 500], 200).len(), 200);
    }
}
