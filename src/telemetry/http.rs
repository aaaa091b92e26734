//! The operations listener: `/metrics` (Prometheus text), `/healthz`,
//! `/readyz` and `/`, a live status page for people.
//!
//! Owns: binding (loopback by default; any other address needs a bearer
//! token, SPEC §6), authentication, and rendering the status board. Does not
//! own what is measured (the `metrics` module) or what the board says (the
//! engine writes it).

use std::fmt::Write as _;
use std::net::SocketAddr;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::escape::html as esc;
use crate::telemetry::status::{Board, SharedBoard};

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// A non-loopback address without a token.
    #[error("refusing to serve on {0} without a bearer token: set `[http] token_file` (or listen on 127.0.0.1)")]
    NoToken(SocketAddr),
    /// The address could not be bound.
    #[error("cannot listen on {addr} (`[http] listen` / --listen): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

#[derive(Clone)]
struct AppState {
    boards: Vec<SharedBoard>,
    metrics: Option<PrometheusHandle>,
    token: Option<String>,
}

/// Binds the listener, refusing a non-loopback address without a token.
pub async fn bind(addr: SocketAddr, token: Option<&str>) -> Result<TcpListener, HttpError> {
    if !addr.ip().is_loopback() && token.is_none() {
        return Err(HttpError::NoToken(addr));
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Serves until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    boards: Vec<SharedBoard>,
    metrics: Option<PrometheusHandle>,
    token: Option<String>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = AppState {
        boards,
        metrics,
        token,
    };
    let app = Router::new()
        .route("/", get(page))
        .route("/status.json", get(status_json))
        .route("/metrics", get(metrics_text))
        .route("/readyz", get(readyz))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn auth(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| token_matches(g.as_bytes(), token.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a bearer token is required\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// Whether the token presented equals ours, in time that depends on
/// neither's content. `subtle` compares slices of unequal length as
/// unequal at once; a token's length is no secret worth hiding.
fn token_matches(given: &[u8], ours: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    given.ct_eq(ours).into()
}

fn read(board: &SharedBoard) -> std::sync::RwLockReadGuard<'_, Board> {
    board.read().unwrap_or_else(|p| p.into_inner())
}

async fn readyz(State(s): State<AppState>) -> Response {
    let several = s.boards.len() > 1;
    let why: Vec<String> = s
        .boards
        .iter()
        .filter_map(|b| {
            let b = read(b);
            b.readiness().err().map(|why| {
                if several {
                    format!("workspace {}: {why}", b.workspace)
                } else {
                    why
                }
            })
        })
        .collect();
    if why.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", why.join("; ")),
        )
            .into_response()
    }
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    match &s.metrics {
        Some(h) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            h.render(),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics are not available in this process\n",
        )
            .into_response(),
    }
}

async fn status_json(State(s): State<AppState>) -> Response {
    let workspaces: Vec<serde_json::Value> = s
        .boards
        .iter()
        .map(|b| {
            let b = read(b);
            let readiness = b.readiness();
            serde_json::json!({
                "workspace": b.workspace,
                "ready": readiness.is_ok(),
                "not_ready_because": readiness.err(),
                "dry_run": b.dry_run,
                "lease": b.lease,
                "sessions": b.sessions,
                "actions": b.actions,
                "rules": b.rules,
            })
        })
        .collect();
    let ready = workspaces.iter().all(|w| w["ready"] == true);
    axum::Json(serde_json::json!({ "ready": ready, "workspaces": workspaces })).into_response()
}

/// Who holds the workspace, for the page.
fn lease_line(l: &crate::telemetry::status::LeaseView) -> String {
    let here = esc(&l.replica);
    match (&l.holder, l.held_here) {
        (_, true) => format!(
            "Held by this replica, <code>{here}</code> (lease epoch {})",
            l.epoch
        ),
        (Some(other), false) => format!(
            "<span class=muted>Standby: held by replica <code>{}</code> (lease epoch {}); this replica, <code>{here}</code>, takes over if it stops</span>",
            esc(other),
            l.epoch
        ),
        (None, false) => format!(
            "<span class=warn>Held by no replica just now; this replica, <code>{here}</code>, may take it</span>"
        ),
    }
}

fn dur(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

const STYLE: &str = "body{font:15px/1.4 system-ui,sans-serif;margin:0;padding:12px;background:#f6f7f9;color:#1d2330}
h1{font-size:20px;margin:0 0 4px}h2{font-size:18px;margin:24px 0 4px;border-top:1px solid #d5d9e0;padding-top:12px}h3{font-size:16px;margin:20px 0 6px}
.muted{color:#667}.ok{color:#167c3a}.bad{color:#b3261e}.warn{color:#8a5a00}
table{border-collapse:collapse;width:100%;background:#fff;border-radius:6px;overflow:hidden}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #e6e8ec;vertical-align:top}
th{background:#eef0f4;font-weight:600;font-size:13px}
.timer{white-space:nowrap}.bar{display:inline-block;width:70px;height:8px;background:#e3e6eb;border-radius:4px;vertical-align:middle;margin-left:4px}
.bar i{display:block;height:8px;border-radius:4px;background:#3b6fd8}.bar i.late{background:#b3261e}
code{font-size:13px}
@media (max-width:640px){.hide-sm{display:none}td,th{padding:5px}}";

/// The status page for people: per workspace, sessions and their timers,
/// recent actions, rules.
async fn page(State(s): State<AppState>) -> Html<String> {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width,initial-scale=1\"><meta http-equiv=refresh content=5><title>skyrules</title><style>{STYLE}</style></head><body><h1>skyrules</h1>"
    );
    let several = s.boards.len() > 1;
    for board in &s.boards {
        let b = read(board);
        let heading = if several {
            format!("<h2 id=\"ws-{0}\">Workspace {0}</h2>", esc(&b.workspace))
        } else {
            String::new()
        };
        workspace_section(&mut h, &b, &heading);
    }
    let _ = write!(
        h,
        "<p class=muted>Refreshes every 5 s · <a href=/metrics>metrics</a> · <a href=/status.json>json</a></p></body></html>"
    );
    Html(h)
}

/// One workspace's part of the page.
///
/// Long on purpose: written top to bottom in one place, in the order a reader sees it; every value goes through `escape::html`.
fn workspace_section(h: &mut String, b: &Board, heading: &str) {
    let ready = b.readiness();
    let _ = write!(
        h,
        "{heading}<div>{} · {} session(s) tracked · {} rule(s) running{}</div>",
        match &ready {
            Ok(()) => "<span class=ok>● ready</span>".to_string(),
            Err(why) => format!("<span class=bad>● not ready: {}</span>", esc(why)),
        },
        b.sessions.len(),
        b.rules.iter().filter(|r| r.running).count(),
        if b.dry_run {
            " · <span class=warn>dry run: actions are logged, not taken</span>"
        } else {
            ""
        }
    );

    if let Some(l) = &b.lease {
        let _ = write!(h, "<div>{}</div>", lease_line(l));
    }
    let _ = write!(h, "<h3>Active sessions</h3>");
    if b.sessions.is_empty() {
        let _ = write!(h, "<p class=muted>No active sessions.</p>");
    } else {
        let _ = write!(
            h,
            "<table><tr><th>Session</th><th>Visitor</th><th>Handled by</th><th>Running timers</th></tr>"
        );
        for sv in b.sessions.iter().take(200) {
            let timers: Vec<String> = sv
                .timers
                .iter()
                .map(|t| {
                    let pct = (t.elapsed_secs * 100)
                        .checked_div(t.after_secs)
                        .unwrap_or(100)
                        .min(100);
                    let late = if t.elapsed_secs >= t.after_secs { " class=late" } else { "" };
                    format!(
                        "<div class=timer>{} {} of {} <span class=bar><i{late} style=\"width:{pct}%\"></i></span></div>",
                        esc(&t.kind.replace('_', " ")),
                        dur(t.elapsed_secs),
                        dur(t.after_secs)
                    )
                })
                .collect();
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&sv.session_id),
                esc(sv.visitor.as_deref().unwrap_or("—")),
                esc(&sv.handled_by),
                if timers.is_empty() {
                    "<span class=muted>—</span>".to_string()
                } else {
                    timers.join("")
                }
            );
        }
        let _ = write!(h, "</table>");
        if b.sessions.len() > 200 {
            let _ = write!(
                h,
                "<p class=muted>… and {} more.</p>",
                b.sessions.len() - 200
            );
        }
    }

    let _ = write!(h, "<h3>Last actions</h3>");
    if b.actions.is_empty() {
        let _ = write!(h, "<p class=muted>No action yet.</p>");
    } else {
        let _ = write!(
            h,
            "<table><tr><th>Time</th><th>Rule</th><th>Action</th><th>Session</th><th class=hide-sm>Event</th><th>Outcome</th></tr>"
        );
        for a in &b.actions {
            let class = match a.outcome.as_str() {
                "taken" => "ok",
                "failed" => "bad",
                _ => "warn",
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td class=hide-sm>{}</td><td class={class}>{}{}</td></tr>",
                a.at.format("%H:%M:%S"),
                esc(&a.rule),
                esc(&a.action),
                esc(&a.session_id),
                esc(&a.event),
                esc(&a.outcome),
                a.detail
                    .as_ref()
                    .map(|d| format!("<div class=muted>{}</div>", esc(d)))
                    .unwrap_or_default()
            );
        }
        let _ = write!(h, "</table>");
    }

    let _ = write!(
        h,
        "<h3>Rules</h3><table><tr><th>Rule</th><th>Status</th></tr>"
    );
    for r in &b.rules {
        let status = match (&r.error, r.running) {
            (None, true) => "<span class=ok>loaded</span>".to_string(),
            (Some(e), true) => format!(
                "<span class=warn>previous version running; file has an error:</span><div><code>{}</code></div>",
                esc(e)
            ),
            (Some(e), false) => format!("<span class=bad>not loaded:</span><div><code>{}</code></div>", esc(e)),
            (None, false) => "<span class=muted>not loaded</span>".to_string(),
        };
        let mode = match r.mode {
            "shadow" if r.running => " · <span class=warn>shadow: actions only logged</span>",
            "off" if r.running => " · <span class=muted>off: not run</span>",
            _ => "",
        };
        let _ = write!(h, "<tr><td>{}</td><td>{status}{mode}</td></tr>", esc(&r.id));
    }
    let _ = write!(h, "</table>");
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn only_the_exact_token_matches() {
        let ours = b"s3cret-token-value";
        assert!(token_matches(ours, ours));
        for given in [
            &b"s3cret-token-valuE"[..],
            b"s3cret-token-valu",
            b"s3cret-token-value ",
            b"",
            b"S3CRET-TOKEN-VALUE",
        ] {
            assert!(!token_matches(given, ours), "{given:?}");
        }
    }
}
