//! Fault injection and the request log for the simulated API: the queue of
//! fault rules tests install through `/_sim/faults`, the record of every
//! `/api/v1` request served, and the middleware that applies both. Faults
//! never touch `/_sim` paths.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer, Serialize};

use super::{is_api_path, Shared};
use crate::api::types::Timestamp;

/// Most request records kept; older ones are forgotten first.
/// Requests the log keeps; older ones are forgotten.
pub(crate) const MAX_RECORDS: usize = 100_000;

/// One fault rule: which requests it matches, what it does to them and how
/// many times it fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// HTTP method to match (any case); `None` matches every method.
    #[serde(default)]
    pub method: Option<String>,
    /// Substring the request path must contain; `None` matches every path.
    #[serde(default)]
    pub path_contains: Option<String>,
    /// Substring the raw query string must contain (e.g. `page=3`); `None`
    /// matches any query, or none.
    #[serde(default)]
    pub query_contains: Option<String>,
    /// Respond with this status and `{"success":false,"message":"Simulated failure."}`.
    #[serde(default)]
    pub status: Option<u16>,
    /// Seconds to put in a `Retry-After` header of the status response.
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// Real milliseconds to wait before responding (after the operation ran).
    #[serde(default, deserialize_with = "null_default")]
    pub latency_ms: u64,
    /// Respond with a truncated JSON body (the operation still runs).
    #[serde(default, deserialize_with = "null_default")]
    pub malformed: bool,
    /// Run the operation, then break the connection instead of responding.
    #[serde(default, deserialize_with = "null_default")]
    pub drop_connection: bool,
    /// Run the operation, then answer with a JSON body of this many MiB,
    /// streamed with no `Content-Length` (a client must cap what it reads).
    #[serde(default, deserialize_with = "null_default")]
    pub oversized_mib: u64,
    /// With `status`: run the operation first, then answer with the fault status.
    #[serde(default, deserialize_with = "null_default")]
    pub after_store: bool,
    /// How many requests the rule applies to; `None` (JSON null) means forever.
    #[serde(default = "one")]
    pub times: Option<u32>,
}

impl Default for Fault {
    fn default() -> Self {
        Fault {
            method: None,
            path_contains: None,
            query_contains: None,
            status: None,
            retry_after: None,
            latency_ms: 0,
            malformed: false,
            drop_connection: false,
            oversized_mib: 0,
            after_store: false,
            times: Some(1),
        }
    }
}

fn one() -> Option<u32> {
    Some(1)
}

fn null_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl Fault {
    /// A rule answering `status` once to every request.
    pub fn status(status: u16) -> Self {
        Fault {
            status: Some(status),
            ..Fault::default()
        }
    }

    /// Why the rule cannot be used, if it cannot.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(s) = self.status {
            if !(100..=599).contains(&s) {
                return Err(format!("status {s} is not an HTTP status"));
            }
        }
        if self.times == Some(0) {
            return Err("times must be at least 1 (or null for forever)".into());
        }
        if self.latency_ms > 600_000 {
            return Err("latency_ms must be at most 600000".into());
        }
        if self.oversized_mib > 1 << 20 {
            return Err("oversized_mib must be at most 1048576 (1 TiB)".into());
        }
        Ok(())
    }

    fn matches(&self, method: &str, path: &str, query: Option<&str>) -> bool {
        self.times != Some(0)
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self
                .path_contains
                .as_deref()
                .is_none_or(|p| path.contains(p))
            && self
                .query_contains
                .as_deref()
                .is_none_or(|q| query.is_some_and(|query| query.contains(q)))
    }

    /// Whether the real operation runs before the fault's response.
    fn performs_operation(&self) -> bool {
        self.drop_connection || self.status.is_none() || self.after_store
    }
}

/// The installed fault rules, first match wins.
#[derive(Debug, Default)]
pub(crate) struct FaultQueue {
    rules: Vec<Fault>,
}

impl FaultQueue {
    /// Appends a rule.
    pub fn push(&mut self, fault: Fault) {
        self.rules.push(fault);
    }

    /// Removes every rule.
    pub fn clear(&mut self) {
        self.rules.clear();
    }

    /// The rules still armed.
    pub fn list(&self) -> Vec<Fault> {
        self.rules.clone()
    }

    /// Takes one use of the first rule matching the request, if any.
    pub fn take(&mut self, method: &str, path: &str, query: Option<&str>) -> Option<Fault> {
        let i = self
            .rules
            .iter()
            .position(|f| f.matches(method, path, query))?;
        let fault = self.rules[i].clone();
        if let Some(n) = self.rules[i].times.as_mut() {
            *n -= 1;
            if *n == 0 {
                self.rules.remove(i);
            }
        }
        Some(fault)
    }
}

/// One `/api/v1` request as served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// Path, e.g. `/api/v1/web-chat/sessions`.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// Status sent (for a dropped connection: the status that was not sent).
    pub status: u16,
    /// Which fault applied: `status`, `malformed`, `drop_connection`,
    /// `oversized`, `latency`.
    pub fault: Option<String>,
    /// Simulated time the request was served.
    #[serde(with = "crate::api::types::ts")]
    pub at: Timestamp,
}

/// The bounded log of served requests.
#[derive(Debug, Default)]
pub(crate) struct RequestLog {
    records: VecDeque<RequestRecord>,
}

impl RequestLog {
    /// Appends a record, forgetting the oldest beyond the cap.
    pub fn push(&mut self, record: RequestRecord) {
        if self.records.len() >= MAX_RECORDS {
            self.records.pop_front();
        }
        self.records.push_back(record);
    }

    /// Every record, oldest first.
    pub fn list(&self) -> Vec<RequestRecord> {
        self.records.iter().cloned().collect()
    }

    /// Forgets every record.
    pub fn clear(&mut self) {
        self.records.clear();
    }
}

/// Middleware: applies the first matching fault to an `/api/v1` request and
/// records the request. Other paths pass straight through.
pub(crate) async fn fault_layer(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_string();
    if !is_api_path(&path) {
        return next.run(req).await;
    }
    let method = req.method().as_str().to_string();
    let query = req.uri().query().map(str::to_string);
    let fault = shared.world().faults.take(&method, &path, query.as_deref());

    let inner = match &fault {
        Some(f) if !f.performs_operation() => None,
        _ => Some(next.run(req).await),
    };
    let (response, label) = match (&fault, inner) {
        (None, Some(resp)) => (resp, None),
        (Some(f), inner) => shape(f, inner),
        (None, None) => (StatusCode::INTERNAL_SERVER_ERROR.into_response(), None),
    };

    {
        let mut world = shared.world();
        let at = world.now();
        world.requests.push(RequestRecord {
            method,
            path,
            query,
            status: response.status().as_u16(),
            fault: label.map(str::to_string),
            at,
        });
    }
    if let Some(f) = &fault {
        if f.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(f.latency_ms)).await;
        }
    }
    response
}

/// The response a fault turns `inner` (the real response, if the operation
/// ran) into, and the fault's label for the request log.
fn shape(f: &Fault, inner: Option<Response>) -> (Response, Option<&'static str>) {
    if f.drop_connection {
        let status = inner.as_ref().map(|r| r.status()).unwrap_or(StatusCode::OK);
        let stream = futures::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "simulated dropped connection",
            ))
        });
        let mut resp = Response::new(Body::from_stream(stream));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return (resp, Some("drop_connection"));
    }
    let status = f
        .status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    if f.oversized_mib > 0 {
        // Valid JSON that never ends within any sane cap: a list of
        // padding, produced lazily so the simulator itself stays small.
        const CHUNK: usize = 64 * 1024;
        let chunks = f.oversized_mib * (1024 * 1024 / CHUNK as u64);
        let pad = Bytes::from(vec![b' '; CHUNK]);
        let body = futures::stream::iter(
            std::iter::once(Bytes::from_static(b"{\"success\":true,\"data\":["))
                .chain(std::iter::repeat_n(pad, chunks as usize))
                .chain(std::iter::once(Bytes::from_static(b"]}")))
                .map(Ok::<Bytes, std::io::Error>),
        );
        let mut resp = Response::new(Body::from_stream(body));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return (resp, Some("oversized"));
    }
    if f.malformed {
        let mut resp = Response::new(Body::from(r#"{"success": tru"#));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return (resp, Some("malformed"));
    }
    if f.status.is_some() {
        let mut resp = (
            status,
            axum::Json(serde_json::json!({"success": false, "message": "Simulated failure."})),
        )
            .into_response();
        if let Some(secs) = f.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        return (resp, Some("status"));
    }
    match inner {
        Some(resp) => (resp, (f.latency_ms > 0).then_some("latency")),
        None => (StatusCode::INTERNAL_SERVER_ERROR.into_response(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_rule_is_used_and_counted_down() {
        let mut q = FaultQueue::default();
        q.push(Fault {
            method: Some("post".into()),
            path_contains: Some("/messages".into()),
            times: Some(2),
            ..Fault::status(503)
        });
        q.push(Fault {
            times: None,
            ..Fault::status(500)
        });
        assert_eq!(
            q.take("GET", "/x/messages", None).and_then(|f| f.status),
            Some(500)
        );
        assert_eq!(
            q.take("POST", "/x/messages", None).and_then(|f| f.status),
            Some(503)
        );
        assert_eq!(
            q.take("POST", "/x/messages", None).and_then(|f| f.status),
            Some(503)
        );
        assert_eq!(
            q.take("POST", "/x/messages", None).and_then(|f| f.status),
            Some(500)
        );
        let mut by_query = FaultQueue::default();
        by_query.push(Fault {
            query_contains: Some("page=3".into()),
            ..Fault::status(502)
        });
        assert!(by_query
            .take("GET", "/x/sessions", Some("page=2"))
            .is_none());
        assert!(by_query.take("GET", "/x/sessions", None).is_none());
        assert_eq!(
            by_query
                .take("GET", "/x/sessions", Some("per_page=100&page=3"))
                .and_then(|f| f.status),
            Some(502)
        );
        assert_eq!(q.list().len(), 1);
    }

    #[test]
    fn rules_decode_leniently_but_reject_typos() {
        let f: Fault = serde_json::from_str(
            r#"{"method":null,"path_contains":null,"status":503,"retry_after":2,
                "latency_ms":null,"malformed":false,"after_store":false}"#,
        )
        .unwrap();
        assert_eq!(f.times, Some(1));
        assert_eq!(f.retry_after, Some(2));
        let forever: Fault = serde_json::from_str(r#"{"status":500,"times":null}"#).unwrap();
        assert_eq!(forever.times, None);
        assert!(serde_json::from_str::<Fault>(r#"{"stauts":500}"#).is_err());
        assert!(Fault::status(42).validate().is_err());
    }
}
