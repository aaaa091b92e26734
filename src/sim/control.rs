//! The `/_sim` control surface: HTTP routes that let tests, the demo and
//! other processes seed sessions, play the visitor, move the simulated clock,
//! install faults and read the request log. No API key; plain JSON in and
//! out (no `success` envelope). Every route calls the same `SimState` method the
//! in-process `SimHandle` helpers use.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Map, Value};

use super::faults::Fault;
use super::state::SimError;
use super::{respond, Shared};
use crate::api::types::{format_ts, SenderType};

/// The control routes, relative to `/_sim`.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/sessions", post(create_session).get(all_sessions))
        .route("/sessions/{id}", get(one_session))
        .route("/sessions/{id}/messages", post(post_message))
        .route("/sessions/{id}/request-human", post(request_human))
        .route("/sessions/{id}/leave", post(leave))
        .route("/clock", get(clock))
        .route("/clock/advance", post(advance))
        .route(
            "/faults",
            post(add_fault).get(list_faults).delete(clear_faults),
        )
        .route("/requests", get(list_requests).delete(clear_requests))
        .route("/rate-limit", post(set_rate_limit))
}

/// Parses a JSON body; an empty body is `{}`.
fn body_json(body: &Bytes) -> Result<Value, SimError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_slice(body)
        .map_err(|e| SimError::BadRequest(format!("Malformed JSON body: {e}")))
}

fn body_object(body: &Bytes) -> Result<Map<String, Value>, SimError> {
    match body_json(body)? {
        Value::Object(m) => Ok(m),
        _ => Err(SimError::BadRequest(
            "The request body must be a JSON object.".into(),
        )),
    }
}

/// The `{id}` path segment; one that does not decode names no session.
fn session_id(path: Result<Path<String>, PathRejection>) -> Result<String, SimError> {
    path.map(|Path(id)| id).map_err(|_| SimError::NotFound)
}

type Reply = Result<Response, SimError>;

async fn create_session(State(shared): State<Arc<Shared>>, body: Bytes) -> Reply {
    let value = body_json(&body)?;
    let detail = shared.world().create_session(value)?;
    Ok(respond(StatusCode::CREATED, detail))
}

async fn all_sessions(State(shared): State<Arc<Shared>>) -> Response {
    respond(StatusCode::OK, shared.world().all_details())
}

async fn one_session(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
) -> Reply {
    let id = session_id(id)?;
    let detail = shared.world().detail(&id)?;
    Ok(respond(StatusCode::OK, detail))
}

async fn post_message(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Reply {
    let id = session_id(id)?;
    let obj = body_object(&body)?;
    let sender = match obj.get("sender_type") {
        None | Some(Value::Null) => SenderType::Visitor,
        Some(Value::String(s)) if ["visitor", "bot", "agent"].contains(&s.as_str()) => {
            s.parse().unwrap_or_default()
        }
        Some(_) => {
            return Err(SimError::invalid(
                "sender_type",
                "The selected sender type is invalid.",
            ))
        }
    };
    let key = ["text", "message_text", "message"]
        .into_iter()
        .find(|k| obj.contains_key(*k))
        .unwrap_or("text");
    let message = shared
        .world()
        .post_message(&id, sender, obj.get(key), key)?;
    Ok(respond(StatusCode::CREATED, message))
}

async fn request_human(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
) -> Reply {
    let id = session_id(id)?;
    let session = shared.world().request_human(&id)?;
    Ok(respond(StatusCode::OK, session))
}

async fn leave(
    State(shared): State<Arc<Shared>>,
    id: Result<Path<String>, PathRejection>,
) -> Reply {
    let id = session_id(id)?;
    let session = shared.world().end(&id)?;
    Ok(respond(StatusCode::OK, session))
}

async fn clock(State(shared): State<Arc<Shared>>) -> Response {
    let now = shared.world().sync();
    respond(StatusCode::OK, json!({"now": format_ts(&now)}))
}

async fn advance(State(shared): State<Arc<Shared>>, body: Bytes) -> Reply {
    let obj = body_object(&body)?;
    let secs = match obj.get("seconds") {
        None | Some(Value::Null) => {
            return Err(SimError::invalid(
                "seconds",
                "The seconds field is required.",
            ))
        }
        Some(v) => v
            .as_f64()
            .ok_or_else(|| SimError::invalid("seconds", "The seconds field must be a number."))?,
    };
    let now = shared.world().advance_secs(secs)?;
    Ok(respond(StatusCode::OK, json!({"now": format_ts(&now)})))
}

async fn add_fault(State(shared): State<Arc<Shared>>, body: Bytes) -> Reply {
    let value = body_json(&body)?;
    let fault: Fault = serde_json::from_value(value)
        .map_err(|e| SimError::invalid("fault", format!("Invalid fault: {e}")))?;
    fault
        .validate()
        .map_err(|m| SimError::invalid("fault", format!("Invalid fault: {m}")))?;
    shared.world().faults.push(fault.clone());
    Ok(respond(StatusCode::CREATED, fault))
}

async fn list_faults(State(shared): State<Arc<Shared>>) -> Response {
    respond(StatusCode::OK, shared.world().faults.list())
}

async fn clear_faults(State(shared): State<Arc<Shared>>) -> Response {
    shared.world().faults.clear();
    respond(StatusCode::OK, json!({"cleared": true}))
}

async fn list_requests(State(shared): State<Arc<Shared>>) -> Response {
    respond(StatusCode::OK, shared.world().requests.list())
}

async fn clear_requests(State(shared): State<Arc<Shared>>) -> Response {
    shared.world().requests.clear();
    respond(StatusCode::OK, json!({"cleared": true}))
}

/// `POST /_sim/rate-limit {"per_minute": N}` or `{"limit": N,
/// "window_secs": S}`: limits the public API to N requests per window
/// (`null` or `0`: no limit).
async fn set_rate_limit(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Response, SimError> {
    let body = body_object(&body)?;
    let number = |key: &str| -> Result<Option<u64>, SimError> {
        match body.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                SimError::BadRequest(format!("{key} must be a whole number or null"))
            }),
        }
    };
    let limit = number("limit")?
        .or(number("per_minute")?)
        .filter(|n| *n > 0);
    let window = number("window_secs")?.unwrap_or(60);
    let limit = limit.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    shared
        .rate()
        .set(limit, std::time::Duration::from_secs(window));
    Ok(respond(
        StatusCode::OK,
        json!({ "limit": limit, "window_secs": window }),
    ))
}
