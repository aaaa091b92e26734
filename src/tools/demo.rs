//! `skyrules demo`: the simulator with generated traffic and the engine in
//! one process, narrated in the terminal.
//!
//! Owns: wiring the two together on a fast simulated clock (so a 15-minute
//! idle timer plays out in half a minute) and turning engine [`Note`]s into
//! lines a newcomer can follow. Needs no account and no network. When no
//! `rules/` directory is at hand, the rules shipped inside the binary are
//! used.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiKey, Client, ClientConfig};
use crate::engine::{Engine, EngineOptions, Note};
use crate::executor::{Guard, Outcome};
use crate::rules::reload::ReloadReport;
use crate::rules::Action;
use crate::sim::{SimConfig, SimHandle, TrafficConfig};
use crate::store::MemoryStore;
use crate::tools::embedded_rules;
use crate::tracking::EventKind;

/// Demo settings.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Rules to run; the embedded ones when the directory does not exist.
    pub rules_dir: PathBuf,
    /// Traffic seed.
    pub seed: u64,
    /// Visitors per simulated minute.
    pub rate: f64,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// Real time between polls.
    pub poll_interval: Duration,
    /// Stop after this long (real time); `None` runs until Ctrl-C.
    pub duration: Option<Duration>,
    /// Take no action, only narrate what would be done.
    pub dry_run: bool,
    /// Where to serve the status page and metrics (another free port is
    /// used when this one is taken); `None` for no listener.
    pub listen: Option<SocketAddr>,
    /// Calendars the rules may use (from `./skyrules.toml` when present).
    pub calendars: crate::hours::Calendars,
    /// Notification channel names the rules may use; the demo sends
    /// nothing and narrates them as a dry run.
    pub channels: Vec<String>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            rules_dir: PathBuf::from("rules"),
            seed: 7,
            rate: 0.4,
            speed: 60.0,
            poll_interval: Duration::from_secs(1),
            duration: None,
            dry_run: false,
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9187))),
            calendars: Default::default(),
            channels: Vec::new(),
        }
    }
}

/// What the demo saw, for the closing line (and tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DemoSummary {
    /// Sessions that started.
    pub sessions: usize,
    /// Events dispatched.
    pub events: usize,
    /// Actions taken.
    pub actions: usize,
    /// Take-overs taken.
    pub escalations: usize,
    /// Sessions ended by a rule.
    pub closes: usize,
    /// Handler failures.
    pub rule_errors: usize,
}

/// Runs the demo until `shutdown` or the configured duration, writing the
/// narration to `out`.
pub async fn run(
    opts: DemoOptions,
    shutdown: CancellationToken,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<DemoSummary> {
    // Held to the end: dropping it deletes the embedded rules' directory.
    let rules = rules_dir(&opts.rules_dir)?;
    let sim = crate::sim::start(
        SimConfig {
            api_key: "demo-key".into(),
            seed: opts.seed,
            bot_delay: Some(Duration::from_secs(3)),
            clock_speed: opts.speed,
            traffic: Some(TrafficConfig {
                rate_per_min: opts.rate,
            }),
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await?;
    // Installed before the engine starts, so the first rule load counts.
    let metrics = opts
        .listen
        .and_then(|_| crate::telemetry::metrics::install());
    let (engine, report) = start_engine(&sim, &opts, rules.path()).await?;
    header(out, &sim, &opts, &engine, &rules, &report)?;
    let stop = shutdown.child_token();
    let server = match opts.listen {
        Some(addr) => serve_status(out, addr, &engine, metrics, &stop).await?,
        None => None,
    };
    writeln!(out, "Press Ctrl-C to stop.\n")?;
    out.flush()?;
    let mut notes = engine.subscribe();
    let engine_task = tokio::spawn(engine.run(stop.clone()));
    let summary = narrate_until(out, &sim, &mut notes, &shutdown, opts.duration).await?;
    stop.cancel();
    let _ = engine_task.await;
    if let Some(server) = server {
        let _ = server.await;
    }
    sim.shutdown().await;
    writeln!(
        out,
        "\ndemo stopped: {} sessions, {} events, {} actions ({} escalations, {} chats closed), {} rule errors",
        summary.sessions, summary.events, summary.actions, summary.escalations, summary.closes, summary.rule_errors
    )?;
    out.flush()?;
    Ok(summary)
}

/// The engine on the simulator, with in-memory state.
async fn start_engine(
    sim: &SimHandle,
    opts: &DemoOptions,
    rules_dir: &Path,
) -> anyhow::Result<(Engine, ReloadReport)> {
    let api = Client::new(ClientConfig::new(sim.base_url(), ApiKey::new("demo-key")))?;
    let engine_opts = EngineOptions {
        rules_dir: rules_dir.to_path_buf(),
        poll_interval: opts.poll_interval,
        dry_run: opts.dry_run,
        max_concurrency: 8,
        guard: Guard {
            max_replies: 5,
            window: Duration::from_secs(600),
        },
        pending_interval: Duration::from_secs(1),
        trace_length: crate::trace::DEFAULT_TRACE_LENGTH,
    };
    let world = crate::rules::World {
        calendars: opts.calendars.clone(),
        channels: opts.channels.clone(),
        notifier: None,
        ..Default::default()
    };
    Ok(Engine::with_world(api, Arc::new(MemoryStore::new()), engine_opts, world).await?)
}

/// What runs where, before the narration starts.
fn header(
    out: &mut (dyn Write + Send),
    sim: &SimHandle,
    opts: &DemoOptions,
    engine: &Engine,
    rules: &RulesDir,
    report: &ReloadReport,
) -> std::io::Result<()> {
    let names: Vec<String> = engine
        .runtime()
        .rules()
        .rules
        .iter()
        .map(|r| r.id.clone())
        .collect();
    writeln!(out, "skyrules demo: a simulated SkyLight Web Chat with generated visitors, and the engine running your rules.")?;
    writeln!(
        out,
        "  simulator  {}  (key demo-key; simulated time runs {}x)",
        sim.base_url(),
        opts.speed
    )?;
    writeln!(
        out,
        "  rules      {} from {}{}",
        names.join(", "),
        rules.path().display(),
        if matches!(rules, RulesDir::Embedded(_)) {
            " (built-in copies)"
        } else {
            ""
        }
    )?;
    for e in &report.errors {
        writeln!(out, "  rule error {e}")?;
    }
    if opts.dry_run {
        writeln!(out, "  dry run: actions are narrated, not taken")?;
    }
    Ok(())
}

/// Serves the status page on `addr`, or on another free port of the same
/// address when it is taken; the demo goes on without it if neither works.
async fn serve_status(
    out: &mut (dyn Write + Send),
    addr: SocketAddr,
    engine: &Engine,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    stop: &CancellationToken,
) -> std::io::Result<Option<tokio::task::JoinHandle<std::io::Result<()>>>> {
    let listener = match crate::telemetry::http::bind(addr, None).await {
        Ok(l) => Ok(l),
        Err(_) => crate::telemetry::http::bind(SocketAddr::new(addr.ip(), 0), None).await,
    };
    match listener {
        Ok(l) => {
            if let Ok(a) = l.local_addr() {
                writeln!(out, "  status     http://{a}/  (metrics at /metrics)")?;
            }
            Ok(Some(tokio::spawn(crate::telemetry::http::serve(
                l,
                vec![engine.board()],
                engine.store(),
                metrics,
                None,
                stop.clone(),
            ))))
        }
        Err(e) => {
            writeln!(out, "  status     not served: {e}")?;
            Ok(None)
        }
    }
}

/// Narrates the engine's notes until `shutdown` or `duration`.
async fn narrate_until(
    out: &mut (dyn Write + Send),
    sim: &SimHandle,
    notes: &mut broadcast::Receiver<Note>,
    shutdown: &CancellationToken,
    duration: Option<Duration>,
) -> std::io::Result<DemoSummary> {
    let deadline = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut summary = DemoSummary::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = &mut deadline => break,
            note = notes.recv() => match note {
                Ok(n) => {
                    let clock = sim.now().format("%H:%M:%S").to_string();
                    if let Some(line) = narrate(&n, &mut summary) {
                        writeln!(out, "{clock}  {line}")?;
                        out.flush()?;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    writeln!(out, "         … {n} notes skipped (terminal too slow)")?;
                }
                Err(_) => break,
            }
        }
    }
    Ok(summary)
}

/// Where the demo's rules live: `wanted` if it is a directory, else the
/// embedded rules written to a fresh private directory (mode 0700, a name
/// nobody can guess and create first: the demo hot-reloads what is there).
fn rules_dir(wanted: &Path) -> anyhow::Result<RulesDir> {
    if wanted.is_dir() {
        return Ok(RulesDir::Given(wanted.to_path_buf()));
    }
    let dir = crate::tools::scratch::private_dir("skyrules-demo-rules-")
        .context("cannot create a private directory for the demo's rules")?;
    embedded_rules::write(dir.path())?;
    Ok(RulesDir::Embedded(dir))
}

/// The demo's rules directory; the embedded one is deleted when dropped.
enum RulesDir {
    Given(PathBuf),
    Embedded(tempfile::TempDir),
}

impl RulesDir {
    fn path(&self) -> &Path {
        match self {
            RulesDir::Given(p) => p,
            RulesDir::Embedded(t) => t.path(),
        }
    }
}

fn short(id: &str) -> &str {
    // Session ids are long; the tail is enough to tell them apart here.
    let n = id.len();
    if n > 8 {
        &id[n - 6..]
    } else {
        id
    }
}

fn quote(text: &str) -> String {
    let t: String = text.chars().take(70).collect();
    let more = if text.chars().count() > 70 { "…" } else { "" };
    format!("\"{}{more}\"", t.replace('\n', " "))
}

/// One narration line for a note, or `None` for notes not worth a line.
///
/// Long on purpose: one arm per kind of note, each a line of narration.
fn narrate(n: &Note, s: &mut DemoSummary) -> Option<String> {
    Some(match n {
        Note::Event {
            session_id,
            kind,
            text,
            visitor,
        } => {
            s.events += 1;
            let who = visitor.clone().unwrap_or_else(|| "visitor".into());
            let chat = format!("chat …{:<6} {:<8}", short(session_id), truncate(&who, 8));
            let what = match kind {
                EventKind::SessionStarted => {
                    s.sessions += 1;
                    "arrives".to_string()
                }
                EventKind::VisitorMessage => {
                    format!("says {}", quote(text.as_deref().unwrap_or("")))
                }
                EventKind::BotMessage => format!("bot: {}", quote(text.as_deref().unwrap_or(""))),
                EventKind::AgentMessage => return None, // our own replies are narrated as actions
                EventKind::HumanRequested => "asks for a human".into(),
                EventKind::TakenOver => "is now handled by a human".into(),
                EventKind::Released => "is back with the AI".into(),
                EventKind::SessionEnded => "ended".into(),
                EventKind::Idle => "has gone quiet (idle timer)".into(),
                EventKind::Unanswered => "is waiting for an answer (unanswered timer)".into(),
                EventKind::HumanWaiting => "still waits for a human (SLA timer)".into(),
            };
            format!("{chat} {what}")
        }
        Note::Action {
            rule,
            session_id,
            action,
            outcome,
            ..
        } => {
            if *outcome == Outcome::Taken {
                s.actions += 1;
                match action {
                    Action::TakeOver => s.escalations += 1,
                    Action::End => s.closes += 1,
                    _ => {}
                }
            }
            let what = match action {
                Action::Reply(t) => format!("reply {}", quote(t)),
                Action::TakeOver => "TAKE OVER (escalate to a human)".into(),
                Action::End => "END the chat".into(),
                Action::Release => "RELEASE to the AI".into(),
                Action::Notify { .. } => {
                    format!("NOTIFY {}", quote(&action.text().unwrap_or_default()))
                }
            };
            let status = match outcome {
                Outcome::Taken => "✓".to_string(),
                Outcome::DryRun => "(dry run)".to_string(),
                Outcome::Skipped(why) => format!("– skipped: {why}"),
                other => format!("✗ {other}: {}", other.detail().unwrap_or_default()),
            };
            format!(
                "chat …{:<6}   ↳ rule {rule}: {what} {status}",
                short(session_id)
            )
        }
        Note::RuleFailed {
            rule,
            session_id,
            error,
            ..
        } => {
            s.rule_errors += 1;
            format!(
                "chat …{:<6}   ↳ rule {rule} FAILED: {error}",
                short(session_id)
            )
        }
        Note::PollFailed { error } => format!("poll failed (will retry): {error}"),
        Note::Reloaded {
            loaded,
            removed,
            errors,
        } => {
            let mut parts = Vec::new();
            if !loaded.is_empty() {
                parts.push(format!("loaded {}", loaded.join(", ")));
            }
            if !removed.is_empty() {
                parts.push(format!("removed {}", removed.join(", ")));
            }
            for e in errors {
                parts.push(format!("error {e}"));
            }
            format!("rules reloaded: {}", parts.join("; "))
        }
        Note::Cycle { .. } | Note::PendingSwept { .. } => return None,
    })
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}
