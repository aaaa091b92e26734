//! An in-memory SkyLight Web Chat server for tests, the demo and rule authors.
//!
//! The simulator owns a real HTTP server speaking the Web Chat API under
//! `/api/v1/web-chat/...` (strict like the real service: API key, 422s,
//! pagination), a simulated clock (scaled, manually advanceable, and served
//! in every response's `Date` header), an AI bot that answers visitors after
//! a delay, an optional seeded traffic generator, fault injection, and a
//! control surface under `/_sim` to drive all of that.
//!
//! It does not own any skyrules logic: it knows nothing of rules, events or
//! the state store, and it never talks to the real SkyLight service. All
//! state lives in memory and is gone when the handle shuts down.

mod api;
mod bot;
mod control;
mod faults;
mod ratelimit;
pub(crate) use faults::MAX_RECORDS as REQUEST_LOG_CAP;
mod state;
mod traffic;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::types::{Message, SenderType, Session, SessionDetail, Timestamp};
pub use bot::HANDOFF_REPLY;
pub use faults::{Fault, RequestRecord};
pub(crate) use state::SimError;
use state::SimState;
pub use traffic::TrafficConfig;

/// How often the background task delivers due bot replies and traffic.
const TICK: Duration = Duration::from_millis(50);
/// How long `shutdown` waits for in-flight requests before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Settings of a simulator instance.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// The `X-Api-Key` value every `/api/v1` request must carry.
    pub api_key: String,
    /// Seed of every random choice (bot replies, ids, traffic).
    pub seed: u64,
    /// Simulated time before the AI bot answers a visitor; `None` = silent bot.
    pub bot_delay: Option<Duration>,
    /// Simulated seconds per real second (1.0 normal, 0.0 frozen).
    pub clock_speed: f64,
    /// Generated visitor traffic, if any.
    pub traffic: Option<TrafficConfig>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            api_key: "sim-key".to_string(),
            seed: 42,
            bot_delay: Some(Duration::from_secs(2)),
            clock_speed: 1.0,
            traffic: None,
        }
    }
}

/// State shared by the HTTP handlers, the ticker and the handle.
pub(crate) struct Shared {
    world: Mutex<SimState>,
    rate: Mutex<ratelimit::RateLimit>,
    api_key: String,
    addr: SocketAddr,
}

impl Shared {
    /// Locks the world for one operation; never hold the guard across `.await`.
    pub(crate) fn world(&self) -> MutexGuard<'_, SimState> {
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The API's rate limit, if one is set.
    pub(crate) fn rate(&self) -> MutexGuard<'_, ratelimit::RateLimit> {
        self.rate.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether `path` belongs to the public API (auth, faults, request log).
pub(crate) fn is_api_path(path: &str) -> bool {
    path == "/api/v1" || path.starts_with("/api/v1/")
}

/// A JSON response with `status`.
pub(crate) fn respond<T: Serialize>(status: StatusCode, body: T) -> Response {
    (status, Json(body)).into_response()
}

/// The JSON response for a refused operation.
fn error_response(e: &SimError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
    respond(status, e.body())
}

impl IntoResponse for SimError {
    fn into_response(self) -> Response {
        error_response(&self)
    }
}

/// A `{"success": false, "message": …}` response.
pub(crate) fn message_response(status: StatusCode, message: &str) -> Response {
    respond(status, json!({"success": false, "message": message}))
}

async fn not_found() -> Response {
    message_response(StatusCode::NOT_FOUND, "Not found.")
}

async fn method_not_allowed() -> Response {
    message_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "The method is not supported for this route.",
    )
}

/// Middleware: stamps every response with the simulated clock's `Date`.
async fn date_layer(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let now = shared.world().now();
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(SystemTime::from(now))) {
        resp.headers_mut().insert(header::DATE, v);
    }
    resp
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .merge(api::routes())
        .nest("/_sim", control::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(shared.clone(), ratelimit::layer))
        .layer(from_fn_with_state(shared.clone(), api::require_key))
        .layer(from_fn_with_state(shared.clone(), faults::fault_layer))
        .layer(from_fn_with_state(shared.clone(), date_layer))
        .with_state(shared)
}

/// Delivers due bot replies and traffic every [`TICK`] until cancelled.
async fn tick(shared: Arc<Shared>, stop: CancellationToken) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = interval.tick() => {
                shared.world().sync();
            }
        }
    }
}

/// A running simulator; dropping it stops the server too, `shutdown` waits.
pub struct SimHandle {
    addr: SocketAddr,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl SimHandle {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API base URL, e.g. `http://127.0.0.1:PORT/api/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }

    /// The control surface's URL, e.g. `http://127.0.0.1:PORT/_sim`.
    pub fn control_url(&self) -> String {
        format!("http://{}/_sim", self.addr)
    }

    /// The simulated clock.
    pub fn now(&self) -> Timestamp {
        self.shared.world().now()
    }

    /// Every session with its messages, newest first.
    pub fn sessions(&self) -> Vec<SessionDetail> {
        self.shared.world().all_details()
    }

    /// One session with its messages.
    pub fn session(&self, id: &str) -> Option<SessionDetail> {
        self.shared.world().detail(id).ok()
    }

    /// Creates a session like `POST /_sim/sessions`.
    pub fn create_session(&self, body: Value) -> Result<SessionDetail, SimError> {
        self.shared.world().create_session(body)
    }

    /// The visitor writes `text` (the bot answers if it handles the chat).
    pub fn visitor_message(&self, id: &str, text: &str) -> Result<Message, SimError> {
        self.post_message(id, SenderType::Visitor, text)
    }

    /// A message from any sender, like `POST /_sim/sessions/{id}/messages`.
    pub fn post_message(
        &self,
        id: &str,
        sender: SenderType,
        text: &str,
    ) -> Result<Message, SimError> {
        let text = Value::String(text.to_string());
        self.shared
            .world()
            .post_message(id, sender, Some(&text), "text")
    }

    /// Limits the public API to `limit` requests per fixed `window`
    /// (`None`: no limit), as `POST /_sim/rate-limit` does.
    pub fn set_rate_limit(&self, limit: Option<u32>, window: std::time::Duration) {
        self.shared.rate().set(limit, window);
    }

    /// Requests refused with a 429 by the rate limit since it was set.
    pub fn rate_limited(&self) -> u64 {
        self.shared.rate().refused
    }

    /// The visitor presses "talk to a human".
    pub fn request_human(&self, id: &str) -> Result<Session, SimError> {
        self.shared.world().request_human(id)
    }

    /// The visitor closes the widget; the session ends.
    pub fn leave(&self, id: &str) -> Result<Session, SimError> {
        self.shared.world().end(id)
    }

    /// Advances the simulated clock, delivers what became due, returns now.
    pub fn advance(&self, by: Duration) -> Timestamp {
        let mut world = self.shared.world();
        world
            .advance_secs(by.as_secs_f64())
            .unwrap_or_else(|_| world.now())
    }

    /// Sets the simulated clock to `t`; for replaying recorded history on a
    /// frozen clock. Moving it backwards is only sensible before any write.
    pub(crate) fn set_time(&self, t: Timestamp) -> Timestamp {
        self.shared.world().set_time(t)
    }

    /// Installs a fault rule (after the ones already installed).
    pub fn add_fault(&self, fault: Fault) -> Result<(), SimError> {
        fault
            .validate()
            .map_err(|m| SimError::invalid("fault", m))?;
        self.shared.world().faults.push(fault);
        Ok(())
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        self.shared.world().faults.clear();
    }

    /// Every `/api/v1` request served since start or the last clear.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.world().requests.list()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.shared.world().requests.clear();
    }

    /// Stops the server and the background tasks, waiting briefly for
    /// in-flight requests.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let abort = task.abort_handle();
            if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts a simulator on `bind` (port 0 picks a free port) and returns at once.
pub async fn start(config: SimConfig, bind: SocketAddr) -> std::io::Result<SimHandle> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        world: Mutex::new(SimState::new(&config)),
        rate: Mutex::new(ratelimit::RateLimit::default()),
        api_key: config.api_key.clone(),
        addr,
    });
    let stop = CancellationToken::new();
    let app = router(shared.clone());
    let server_stop = stop.clone();
    let server = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(server_stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "simulator server failed");
        }
    });
    let ticker = tokio::spawn(tick(shared.clone(), stop.clone()));
    tracing::debug!(
        %addr,
        clock_speed = config.clock_speed,
        traffic = config.traffic.is_some(),
        "SkyLight simulator listening"
    );
    Ok(SimHandle {
        addr,
        stop,
        tasks: vec![server, ticker],
        shared,
    })
}
