//! The operations listener: `/metrics` (Prometheus text), `/healthz`,
//! `/readyz` and `/`, a live status page for people.
//!
//! Owns: binding (loopback by default; any other address needs a bearer
//! token, SPEC §6), authentication, and rendering the status board. Does not
//! own what is measured (the `metrics` module) or what the board says (the
//! engine writes it).

use std::fmt::Write as _;
use std::net::SocketAddr;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use crate::escape::html as esc;
use crate::store::Store;
use crate::telemetry::status::{Board, SharedBoard};
use crate::trace::{Entry, Verdict};

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
    /// The state the boards' engines write: session timelines are read
    /// from it, one workspace's view per board.
    state: Arc<dyn Store>,
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

/// Serves until `shutdown`: the boards, and session timelines read from
/// `state`.
pub async fn serve(
    listener: TcpListener,
    boards: Vec<SharedBoard>,
    state: Arc<dyn Store>,
    metrics: Option<PrometheusHandle>,
    token: Option<String>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = AppState {
        boards,
        state,
        metrics,
        token,
    };
    let app = Router::new()
        .route("/", get(page))
        .route("/status.json", get(status_json))
        .route("/metrics", get(metrics_text))
        .route("/readyz", get(readyz))
        .route("/sessions/{id}", get(session_page))
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
    // What the request budget does to the poll plan: said, but no reason
    // to take the service out of rotation.
    let notes: Vec<String> = s
        .boards
        .iter()
        .filter_map(|b| {
            let b = read(b);
            b.plan_note.as_ref().map(|n| {
                if several {
                    format!("note: workspace {}: {n}\n", b.workspace)
                } else {
                    format!("note: {n}\n")
                }
            })
        })
        .collect();
    if why.is_empty() {
        (StatusCode::OK, format!("ready\n{}", notes.concat())).into_response()
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
                "poll_plan_note": b.plan_note,
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
code{font-size:13px}tr.event td{background:#fafbfc}tr.event td:first-child{white-space:nowrap}
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
    if let Some(n) = &b.plan_note {
        let _ = write!(h, "<div class=warn>{}</div>", esc(n));
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
                "<tr><td><a href=\"{}\"><code>{}</code></a></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                session_link(&sv.session_id, &b.workspace),
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
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><a href=\"{}\"><code>{}</code></a></td><td class=hide-sm>{}</td><td class={class}>{}{}</td></tr>",
                a.at.format("%H:%M:%S"),
                esc(&a.rule),
                esc(&a.action),
                session_link(&a.session_id, &b.workspace),
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

/// The page of one session's timeline, for `href`.
fn session_link(session_id: &str, workspace: &str) -> String {
    format!(
        "/sessions/{}?workspace={}",
        esc(&percent(session_id)),
        esc(&percent(workspace))
    )
}

/// Everything but RFC 3986's unreserved characters, encoded in a path
/// segment or a query value.
const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn percent(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

/// Query of `/sessions/{id}`.
#[derive(serde::Deserialize)]
struct SessionQuery {
    /// The workspace; the first whose state holds the session when absent.
    workspace: Option<String>,
    /// Only this rule's decisions.
    rule: Option<String>,
}

/// `/sessions/{id}` (the timeline as HTML) and `/sessions/{id}.json` (the
/// same entries as `skyrules why --json`).
async fn session_page(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<SessionQuery>,
) -> Response {
    let (id, json) = match id.strip_suffix(".json") {
        Some(base) => (base.to_string(), true),
        None => (id, false),
    };
    let workspaces: Vec<String> = s.boards.iter().map(|b| read(b).workspace.clone()).collect();
    if let Some(w) = &q.workspace {
        if !workspaces.contains(w) {
            return not_found(
                json,
                &format!(
                    "no workspace {w:?} here; workspaces: {}",
                    workspaces.join(", ")
                ),
            );
        }
    }
    let candidates: Vec<String> = match &q.workspace {
        Some(w) => vec![w.clone()],
        None => workspaces.clone(),
    };
    let state = s.state.clone();
    let sid = id.clone();
    let found = tokio::task::spawn_blocking(move || {
        for w in candidates {
            match state.workspace(&w).trace(&sid) {
                Ok(Some(rows)) => return Ok(Some((w, rows))),
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(None)
    })
    .await
    .unwrap_or_else(|e| Err(format!("reading the trace crashed: {e}")));
    let (workspace, rows) = match found {
        Ok(Some(found)) => found,
        Ok(None) => {
            return not_found(
                json,
                &format!("session {id} is not in the state: never seen, or ended and purged"),
            )
        }
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the state: {e}\n"),
            )
                .into_response()
        }
    };
    let mut entries = match crate::trace::entries(&id, &rows) {
        Ok(e) => e,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    };
    if let Some(rule) = &q.rule {
        entries.retain(|e| e.rule.as_deref() == Some(rule.as_str()));
    }
    if json {
        return axum::Json(entries).into_response();
    }
    Html(timeline_page(&id, &workspace, q.rule.as_deref(), &entries)).into_response()
}

fn not_found(json: bool, why: &str) -> Response {
    if json {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({ "error": why })),
        )
            .into_response();
    }
    (
        StatusCode::NOT_FOUND,
        Html(format!(
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>skyrules: not found</title><style>{STYLE}</style></head><body><h1>Not found</h1><p>{}</p><p><a href=/>Back to the status page</a></p></body></html>",
            esc(why)
        )),
    )
        .into_response()
}

/// The CSS class of a verdict on the page.
fn verdict_class(v: Verdict) -> &'static str {
    match v {
        Verdict::Acted => "ok",
        Verdict::Failed => "bad",
        Verdict::Capped | Verdict::Skipped | Verdict::DryRun => "warn",
        _ => "muted",
    }
}

/// One session's timeline: an event per row group, one row per rule that
/// decided something, the rules without a handler on one muted line.
fn timeline_page(id: &str, workspace: &str, rule: Option<&str>, entries: &[Entry]) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width,initial-scale=1\"><title>skyrules: session {0}</title><style>{STYLE}</style></head><body><p><a href=/>← status</a></p><h1>Session <code>{0}</code></h1><div class=muted>Workspace {1}{2} · every event the engine saw, oldest first, and what each rule made of it · <a href=\"{3}.json?workspace={4}\">json</a></div>",
        esc(id),
        esc(workspace),
        rule.map(|r| format!(" · rule {}", esc(r))).unwrap_or_default(),
        esc(&percent(id)),
        esc(&percent(workspace)),
    );
    if entries.is_empty() {
        let _ = write!(h, "<p class=muted>No events recorded.</p></body></html>");
        return h;
    }
    let _ = write!(
        h,
        "<table id=timeline><tr><th>Time</th><th>Event</th><th>Rule</th><th class=hide-sm>Version</th><th>Outcome</th><th>Detail</th></tr>"
    );
    for event in crate::trace::by_event(entries) {
        let head = &event[0];
        let _ = write!(
            h,
            "<tr class=event><td>{}</td><td colspan=5><b>{}</b> <span class=muted>{}</span></td></tr>",
            head.at.format("%Y-%m-%d %H:%M:%S"),
            esc(&head.event),
            esc(&head.cause)
        );
        for e in event.iter().filter(|e| !e.is_idle()) {
            let _ = write!(
                h,
                "<tr class=decision><td></td><td></td><td>{}</td><td class=hide-sm><code>{}</code></td><td class={}>{}</td><td>{}</td></tr>",
                esc(e.rule.as_deref().unwrap_or("—")),
                esc(e.version.as_deref().unwrap_or("")),
                verdict_class(e.outcome),
                e.outcome.name(),
                esc(&e.detail)
            );
        }
        let idle: Vec<String> = event
            .iter()
            .filter(|e| e.is_idle())
            .filter_map(|e| e.rule.as_deref().map(esc))
            .collect();
        if !idle.is_empty() {
            let _ = write!(
                h,
                "<tr class=decision><td></td><td></td><td colspan=4 class=muted>no handler: {}</td></tr>",
                idle.join(", ")
            );
        }
    }
    let _ = write!(h, "</table></body></html>");
    h
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
