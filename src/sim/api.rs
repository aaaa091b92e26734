//! The public Web Chat API routes (`/api/v1/web-chat/...`) and the API-key
//! check in front of them. Handlers parse and validate HTTP input, call one
//! `SimState` method under a brief lock, and shape the JSON the way the real
//! service does (`{"success": true, "data": …}`, Laravel-style 422s).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use serde_json::Value;

use super::state::{ListFilter, SimError};
use super::{is_api_path, message_response, respond, Shared};
use crate::api::types::{HandledBy, Period, SenderType, Session, SessionStatus};

const DEFAULT_PER_PAGE: usize = 25;
const MAX_PER_PAGE: i64 = 100;
const SESSIONS_PATH: &str = "/api/v1/web-chat/sessions";

/// The API routes, at their full paths.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route(SESSIONS_PATH, get(list_sessions))
        .route("/api/v1/web-chat/sessions/{id}", get(show_session))
        .route("/api/v1/web-chat/sessions/{id}/take-over", post(take_over))
        .route("/api/v1/web-chat/sessions/{id}/release", post(release))
        .route(
            "/api/v1/web-chat/sessions/{id}/messages",
            post(send_message),
        )
        .route("/api/v1/web-chat/sessions/{id}/end", post(end_session))
        .route("/api/v1/web-chat/analytics", get(analytics))
}

/// Middleware: every `/api/v1` request needs the configured `X-Api-Key`.
pub(crate) async fn require_key(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    if is_api_path(req.uri().path()) {
        let ok = req
            .headers()
            .get("x-api-key")
            .is_some_and(|v| v.as_bytes() == shared.api_key.as_bytes());
        if !ok {
            return message_response(StatusCode::UNAUTHORIZED, "Invalid API key.");
        }
    }
    next.run(req).await
}

#[derive(Serialize)]
struct Envelope<T> {
    success: bool,
    data: T,
}

fn ok<T: Serialize>(status: StatusCode, data: T) -> Response {
    respond(
        status,
        Envelope {
            success: true,
            data,
        },
    )
}

/// The `{id}` path segment; one that does not decode names no session.
fn session_id(path: Result<Path<String>, PathRejection>) -> Result<String, SimError> {
    path.map(|Path(id)| id).map_err(|_| SimError::NotFound)
}

type Reply = Result<Response, SimError>;

/// The query parameters, first occurrence of each name wins.
fn query_params(uri: &Uri) -> Vec<(String, String)> {
    Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map(|Query(q)| q)
        .unwrap_or_default()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

#[derive(Serialize)]
struct ListBody {
    success: bool,
    data: Vec<Session>,
    meta: Meta,
    links: Links,
}

#[derive(Serialize)]
struct Meta {
    current_page: usize,
    from: Option<usize>,
    last_page: usize,
    path: String,
    per_page: usize,
    to: Option<usize>,
    total: usize,
}

#[derive(Serialize)]
struct Links {
    first: String,
    last: String,
    prev: Option<String>,
    next: Option<String>,
}

fn list_params(params: &[(String, String)]) -> Result<(ListFilter, usize, usize), SimError> {
    let status = match param(params, "status") {
        None => None,
        Some("active") => Some(SessionStatus::Active),
        Some("ended") => Some(SessionStatus::Ended),
        Some(_) => {
            return Err(SimError::invalid(
                "status",
                "The selected status is invalid.",
            ))
        }
    };
    let handled_by = match param(params, "handled_by") {
        None => None,
        Some("ai") => Some(HandledBy::Ai),
        Some("human") => Some(HandledBy::Human),
        Some("pending") => Some(HandledBy::Pending),
        Some(_) => {
            return Err(SimError::invalid(
                "handled_by",
                "The selected handled by is invalid.",
            ))
        }
    };
    let per_page = match param(params, "per_page") {
        None => DEFAULT_PER_PAGE,
        Some(raw) => {
            let n: i64 = raw.trim().parse().map_err(|_| {
                SimError::invalid("per_page", "The per page field must be an integer.")
            })?;
            if n < 1 {
                return Err(SimError::invalid(
                    "per_page",
                    "The per page field must be at least 1.",
                ));
            }
            if n > MAX_PER_PAGE {
                return Err(SimError::invalid(
                    "per_page",
                    "The per page field must not be greater than 100.",
                ));
            }
            n as usize
        }
    };
    // Like Laravel's paginator: an unusable page number means page 1.
    let page = param(params, "page")
        .and_then(|p| p.trim().parse::<usize>().ok())
        .filter(|p| *p >= 1)
        .unwrap_or(1);
    let filter = ListFilter {
        status,
        handled_by,
        search: param(params, "search").map(str::to_string),
    };
    Ok((filter, page, per_page))
}

/// Percent-encodes a query component.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn page_url(base: &str, params: &[(String, String)], page: usize) -> String {
    let mut parts: Vec<String> = params
        .iter()
        .filter(|(k, _)| k != "page")
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    parts.push(format!("page={page}"));
    format!("{base}?{}", parts.join("&"))
}

async fn list_sessions(State(shared): State<Arc<Shared>>, headers: HeaderMap, uri: Uri) -> Reply {
    let params = query_params(&uri);
    let (filter, page, per_page) = list_params(&params)?;
    let result = shared.world().list(&filter, page, per_page);

    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| shared.addr.to_string());
    let path = format!("http://{host}{SESSIONS_PATH}");
    let last_page = result.total.div_ceil(per_page).max(1);
    let from = (!result.items.is_empty()).then(|| (page - 1) * per_page + 1);
    let to = from.map(|f| f + result.items.len() - 1);
    let links = Links {
        first: page_url(&path, &params, 1),
        last: page_url(&path, &params, last_page),
        prev: (page > 1).then(|| page_url(&path, &params, (page - 1).min(last_page))),
        next: (page < last_page).then(|| page_url(&path, &params, page + 1)),
    };
    Ok(respond(
        StatusCode::OK,
        ListBody {
            success: true,
            data: result.items,
            meta: Meta {
                current_page: page,
                from,
                last_page,
                path,
                per_page,
                to,
                total: result.total,
            },
            links,
        },
    ))
}

async fn show_session(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
) -> Reply {
    let id = session_id(id)?;
    let data = shared.world().detail(&id)?;
    Ok(ok(StatusCode::OK, data))
}

async fn take_over(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
) -> Reply {
    let id = session_id(id)?;
    let data = shared.world().take_over(&id)?;
    Ok(ok(StatusCode::OK, data))
}

async fn release(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
) -> Reply {
    let id = session_id(id)?;
    let data = shared.world().release(&id)?;
    Ok(ok(StatusCode::OK, data))
}

async fn end_session(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
) -> Reply {
    let id = session_id(id)?;
    let data = shared.world().end(&id)?;
    Ok(ok(StatusCode::OK, data))
}

async fn send_message(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Reply {
    let id = session_id(id)?;
    // Like Laravel, an unreadable body is simply an empty input.
    let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let message =
        shared
            .world()
            .post_message(&id, SenderType::Agent, input.get("message"), "message")?;
    Ok(ok(StatusCode::CREATED, message))
}

async fn analytics(State(shared): State<Arc<Shared>>, uri: Uri) -> Reply {
    let params = query_params(&uri);
    let period = match param(&params, "period") {
        None | Some("month") => Period::Month,
        Some("today") => Period::Today,
        Some("week") => Period::Week,
        Some("year") => Period::Year,
        Some(_) => {
            return Err(SimError::invalid(
                "period",
                "The selected period is invalid.",
            ))
        }
    };
    let data = shared.world().analytics(period);
    Ok(ok(StatusCode::OK, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links_keep_the_filters() {
        let params = vec![
            ("status".to_string(), "active".to_string()),
            ("search".to_string(), "a b&c".to_string()),
            ("page".to_string(), "1".to_string()),
        ];
        assert_eq!(
            page_url("http://h/x", &params, 2),
            "http://h/x?status=active&search=a%20b%26c&page=2"
        );
    }

    #[test]
    fn per_page_is_validated() {
        let p = |v: &str| vec![("per_page".to_string(), v.to_string())];
        assert!(list_params(&p("100")).is_ok());
        for bad in ["101", "0", "-3", "ten"] {
            assert_eq!(list_params(&p(bad)).map(|_| ()).unwrap_err().status(), 422);
        }
    }
}
