//! `skyrules run`, `skyrules check` and `skyrules demo`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::UserError;
use crate::api::Client;
use crate::config::{Config, Overrides, Workspace};
use crate::engine::{Engine, EngineOptions};
use crate::executor::Guard;
use crate::rules::reload::log_report;
use crate::rules::{Runtime, World};
use crate::telemetry::status::{Board, SharedBoard};
use tracing::Instrument;

/// Engine flags shared by `run` and `demo`; each beats the config file.
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct EngineArgs {
    /// Rules directory (`engine.rules_dir`)
    #[arg(long = "rules", env = "SKYRULES_RULES_DIR", value_name = "DIR")]
    pub rules_dir: Option<PathBuf>,
    /// Poll interval, e.g. 5s or "1m 30s" (`engine.poll_interval`)
    #[arg(long, env = "SKYRULES_POLL_INTERVAL", value_name = "DURATION")]
    pub poll_interval: Option<String>,
    /// State database file (`engine.state_path`)
    #[arg(long = "state", env = "SKYRULES_STATE_PATH", value_name = "FILE")]
    pub state_path: Option<PathBuf>,
    /// Log every action instead of taking it (`engine.dry_run`)
    #[arg(long, env = "SKYRULES_DRY_RUN")]
    pub dry_run: bool,
    /// Serve /metrics, /healthz, /readyz and a status page here, e.g.
    /// 127.0.0.1:9187 (`http.listen`)
    #[arg(long, env = "SKYRULES_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
}

impl EngineArgs {
    /// As config overrides.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            base_url: None,
            rules_dir: self.rules_dir.clone(),
            poll_interval: self.poll_interval.clone(),
            state_path: self.state_path.clone(),
            dry_run: self.dry_run,
            listen: self.listen.clone(),
        }
    }
}

/// `skyrules check`.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Rules directory [default: `engine.rules_dir`, else ./rules]
    dir: Option<PathBuf>,
}

/// Engine options of one workspace.
pub fn engine_options(ws: &Workspace) -> EngineOptions {
    EngineOptions {
        rules_dir: ws.engine.rules_dir.clone(),
        poll_interval: ws.engine.poll_interval,
        dry_run: ws.engine.dry_run,
        max_concurrency: ws.engine.max_concurrency,
        guard: Guard {
            max_replies: ws.guard.max_replies,
            window: ws.guard.window,
        },
        pending_interval: ws.engine.pending_interval,
        trace_length: ws.engine.trace_length,
    }
}

/// Runs one engine per workspace (or only `only`) against the configured
/// API until Ctrl-C or SIGTERM. The store, the notifier and the HTTP
/// listener are shared; each workspace has its own poll loop, rules,
/// executor and guard, so that one's trouble never holds up another.
pub async fn run(config: Config, only: Option<&str>) -> anyhow::Result<ExitCode> {
    let workspaces = match only {
        Some(name) => vec![config.workspace(Some(name))?],
        None => config.workspaces(),
    };
    let several = workspaces.len() > 1;
    // Every secret and setting is checked before the state is touched.
    let mut clients = Vec::new();
    for ws in &workspaces {
        ensure_rules_dir(&ws.engine.rules_dir, &ws.rules_dir_key())
            .map_err(|e| named(ws, several, e.into()))?;
        let api = ws
            .client_config()
            .map_err(anyhow::Error::from)
            .and_then(|c| Ok(Client::new(c)?))
            .map_err(|e| named(ws, several, e))?;
        clients.push(api);
    }
    let channels = crate::notifications::Channels::from_config(&config.notify)?;
    let calendars = config.calendars()?;
    let http_token = config.http_token()?;
    let state_url = config.state_url()?;
    let metrics = crate::telemetry::metrics::install();
    let shutdown = CancellationToken::new();
    if let Some(handle) = &metrics {
        crate::telemetry::metrics::keep_up(handle.clone(), shutdown.clone());
    }
    let names = channels.names();
    let notifier = (!channels.is_empty()).then(|| {
        Arc::new(crate::notifications::Notifier::start(
            channels,
            shutdown.clone(),
        ))
    });
    if let Some(n) = &notifier {
        log_deliveries(n);
    }
    let world = |ws: &Workspace| World {
        calendars: calendars.clone(),
        channels: names.clone(),
        notifier: notifier.clone(),
        max_rule_memory: ws.engine.max_rule_memory as usize,
        shadow_is_live: false,
    };
    let parts: Vec<Part> = workspaces
        .iter()
        .zip(clients)
        .map(|(ws, api)| Part {
            world: world(ws),
            ws: ws.clone(),
            api,
        })
        .collect();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        crate::shutdown::signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    let (server, failed) = match state_url {
        Some(url) => {
            let leases = crate::store::open_shared(&url).await?;
            let replica = replica_options(&config, &workspaces)?;
            let boards = parts.iter().map(|p| p.board()).collect::<Vec<_>>();
            // The page reads timelines on every replica, standbys too.
            let readable =
                crate::store::open_read_only(&config.engine.state_path, Some(&url)).await?;
            let server = serve(&config, &boards, readable, metrics, http_token, &shutdown).await?;
            let launch = launcher(parts, boards.clone());
            let named: Vec<(Arc<str>, SharedBoard)> = workspaces
                .iter()
                .map(|w| Arc::<str>::from(w.name.as_str()))
                .zip(boards)
                .collect();
            crate::replicas::Coordinator::new(replica, leases, launch, named)
                .run(shutdown.clone())
                .await;
            (server, None)
        }
        None => {
            let store = crate::store::open(&config.engine.state_path, None).await?;
            let mut engines = Vec::new();
            let mut boards = Vec::new();
            for p in parts {
                let (mut engine, span) =
                    start_engine(&p.ws, p.api, store.workspace(&p.ws.name), p.world)
                        .await
                        .map_err(|e| named(&p.ws, several, e))?;
                if several {
                    engine.keep_trying_when_refused();
                }
                boards.push(engine.board());
                engines.push((p.ws.name.clone(), engine, span));
            }
            let server = serve(
                &config,
                &boards,
                store.clone(),
                metrics,
                http_token,
                &shutdown,
            )
            .await?;
            (server, run_engines(engines, &shutdown, several).await)
        }
    };
    shutdown.cancel();
    if let Some(server) = server {
        let _ = server.await;
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// What a workspace's engine is built from.
#[derive(Clone)]
struct Part {
    ws: Workspace,
    api: Client,
    world: World,
}

impl Part {
    /// The workspace's board before any engine runs (a replica's standby
    /// workspaces have no engine, only this).
    fn board(&self) -> SharedBoard {
        let opts = engine_options(&self.ws);
        Arc::new(std::sync::RwLock::new(Board {
            workspace: self.ws.name.clone(),
            poll_interval: opts.poll_interval,
            dry_run: opts.dry_run,
            ..Board::default()
        }))
    }
}

/// This replica's id (`SKYRULES_REPLICA`, else host and pid) and lease.
fn replica_options(
    config: &Config,
    workspaces: &[Workspace],
) -> anyhow::Result<crate::replicas::ReplicaOptions> {
    let id = match std::env::var("SKYRULES_REPLICA") {
        Ok(id) if !id.trim().is_empty() => {
            let id = id.trim().to_string();
            if id.len() > 200 || id.chars().any(char::is_control) {
                return Err(UserError(
                    "SKYRULES_REPLICA: a replica id is at most 200 printable characters".into(),
                )
                .into());
            }
            id
        }
        _ => crate::replicas::default_replica_id(),
    };
    let api_timeout = workspaces
        .iter()
        .map(|w| w.client_config().map(|c| c.timeout))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .max()
        .unwrap_or_default();
    Ok(crate::replicas::ReplicaOptions {
        id,
        lease: config.ha.lease,
        api_timeout,
    })
}

/// Starts a workspace's engine each time this replica takes its lease:
/// its state fenced by the lease, its actions held to the tenure, its
/// reports on the workspace's lasting board.
fn launcher(parts: Vec<Part>, boards: Vec<SharedBoard>) -> crate::replicas::Launch {
    let parts: std::collections::HashMap<String, (Part, SharedBoard)> = parts
        .into_iter()
        .zip(boards)
        .map(|(p, b)| (p.ws.name.clone(), (p, b)))
        .collect();
    Arc::new(move |name, takeover, stop| {
        let Some((p, board)) = parts.get(&*name).cloned() else {
            return tokio::spawn(async { true });
        };
        tokio::spawn(async move {
            let api = p.api.with_tenure(takeover.tenure.clone());
            let (mut engine, span) = match start_engine(&p.ws, api, takeover.store, p.world).await {
                Ok(started) => started,
                Err(e) => {
                    tracing::error!(workspace = %p.ws.name, error = %e, "cannot start the workspace's engine");
                    return true;
                }
            };
            // A refused key is retried, not the end of the engine: its
            // lease would only move to a replica with the same key.
            engine.keep_trying_when_refused();
            engine.report_on(board);
            if let Some(at) = takeover.settle_after {
                engine.settle_after(at);
            }
            let cut_short = engine.cut_short();
            if let Err(e) = engine.run(stop).instrument(span).await {
                tracing::error!(workspace = %p.ws.name, error = %e, "the workspace's engine stopped");
            }
            !cut_short.load(std::sync::atomic::Ordering::Relaxed)
        })
    })
}

/// Serves the status page and probes, if `[http] listen` is set.
async fn serve(
    config: &Config,
    boards: &[SharedBoard],
    state: Arc<dyn crate::store::Store>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    token: Option<String>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = config.http.listen else {
        return Ok(None);
    };
    let listener = crate::telemetry::http::bind(addr, token.as_deref()).await?;
    let shown = listener.local_addr().unwrap_or(addr);
    tracing::info!(address = %shown, "status page, /metrics, /healthz and /readyz at http://{shown}/");
    let server = crate::telemetry::http::serve(
        listener,
        boards.to_vec(),
        state,
        metrics,
        token,
        shutdown.clone(),
    );
    Ok(Some(tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "the status listener stopped");
        }
    })))
}

/// One workspace's engine, built inside its log span: its rules loaded and
/// reported, its state opened.
async fn start_engine(
    ws: &Workspace,
    api: Client,
    store: Arc<dyn crate::store::Store>,
    world: World,
) -> anyhow::Result<(Engine, tracing::Span)> {
    let span = tracing::info_span!("workspace", workspace = %ws.name);
    let opts = engine_options(ws);
    let location = store.location();
    let (mut engine, report) = Engine::with_world(api.clone(), store, opts.clone(), world)
        .instrument(span.clone())
        .await?;
    engine.set_retention(ws.engine.retention);
    span.in_scope(|| {
        log_report(&report);
        let running = engine.runtime().rules().rules.len();
        tracing::info!(
            base_url = api.base_url(),
            rules = running,
            rules_dir = %opts.rules_dir.display(),
            poll_interval = %humantime::format_duration(opts.poll_interval),
            dry_run = opts.dry_run,
            state = %location,
            "skyrules running"
        );
        if running == 0 {
            tracing::warn!(rules_dir = %opts.rules_dir.display(), "no rule loaded; add *.rhai files (they are picked up without a restart)");
        }
    });
    Ok((engine, span))
}

/// Runs every workspace's engine until `shutdown`. Alone, a workspace
/// that cannot run is the process's error (returned, the rest stopped);
/// next to others it is logged and they carry on.
async fn run_engines(
    engines: Vec<(String, Engine, tracing::Span)>,
    shutdown: &CancellationToken,
    several: bool,
) -> Option<anyhow::Error> {
    let mut running = tokio::task::JoinSet::new();
    for (name, engine, span) in engines {
        let stop = shutdown.clone();
        running.spawn(async move { (name, engine.run(stop).await) }.instrument(span));
    }
    let mut failed = None;
    while let Some(done) = running.join_next().await {
        match done {
            Ok((_, Ok(()))) => {}
            Ok((_, Err(e))) if !several => {
                failed = Some(anyhow::Error::from(e));
                shutdown.cancel();
            }
            Ok((name, Err(e))) => {
                tracing::error!(workspace = %name, error = %e, "workspace stopped; the other workspaces carry on");
            }
            Err(e) => {
                tracing::error!(error = %e, "a workspace's engine task failed");
            }
        }
    }
    failed
}

/// Puts the workspace's name in front of an error, when there are several.
fn named(ws: &Workspace, several: bool, e: anyhow::Error) -> anyhow::Error {
    if several {
        e.context(format!("workspace {}", ws.name))
    } else {
        e
    }
}

/// Checks a rules directory exists; the error names `key`, where it is set.
fn ensure_rules_dir(dir: &Path, key: &str) -> Result<(), UserError> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(UserError(format!(
            "rules directory {} does not exist; create it or set `{key}` / --rules",
            dir.display()
        )))
    }
}

/// Loads every rule and prints each error with its source line and a caret:
/// the rules of `dir`, of the workspace named, or of every workspace.
pub async fn check(
    config: Config,
    workspace: Option<&str>,
    a: CheckArgs,
) -> anyhow::Result<ExitCode> {
    // Without a directory or a workspace named, every workspace's rules.
    let dirs: Vec<(PathBuf, usize)> = match (a.dir, workspace) {
        (Some(d), _) => vec![(d, config.engine.max_rule_memory as usize)],
        (None, Some(_)) => {
            let ws = config.workspace(workspace)?;
            vec![(ws.engine.rules_dir, ws.engine.max_rule_memory as usize)]
        }
        (None, None) => {
            let mut dirs: Vec<(PathBuf, usize)> = Vec::new();
            for ws in config.workspaces() {
                if !dirs.iter().any(|(d, _)| *d == ws.engine.rules_dir) {
                    dirs.push((ws.engine.rules_dir, ws.engine.max_rule_memory as usize));
                }
            }
            dirs
        }
    };
    let mut failed = false;
    for (dir, max_rule_memory) in dirs {
        failed |= !check_dir(&config, &dir, max_rule_memory).await?;
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Checks one rules directory and its canned replies and prints what it
/// found; whether there was no error.
async fn check_dir(config: &Config, dir: &Path, max_rule_memory: usize) -> anyhow::Result<bool> {
    ensure_rules_dir(dir, "engine.rules_dir")?;
    let files = crate::rules::rule_files(dir).map_err(|e| UserError(e.to_string()))?;
    let world = World {
        calendars: config.calendars()?,
        channels: config.notify.keys().cloned().collect(),
        notifier: None,
        max_rule_memory,
        shadow_is_live: false,
    };
    let canned_dir = dir.to_path_buf();
    let result = tokio::task::spawn_blocking(move || {
        let runtime = Runtime::with_world(world);
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut listed = Vec::new();
        let mut loaded = Vec::new();
        let mut failed = 0;
        for path in files {
            let source = std::fs::read_to_string(&path).ok();
            match runtime.load_file(&path) {
                Ok(rule) => {
                    if rule.mode != crate::rules::RuleMode::Live {
                        listed.push(format!(
                            "{}: mode {}",
                            rule.path.display(),
                            rule.mode.name()
                        ));
                    }
                    warnings.extend(crate::rules::lint(&rule, source.as_deref().unwrap_or("")));
                    loaded.push((rule, source));
                }
                Err(e) => {
                    failed += 1;
                    errors.push(e.render(source.as_deref()));
                }
            }
        }
        let canned = check_canned(&canned_dir, &loaded);
        errors.extend(canned.errors);
        warnings.extend(canned.warnings);
        listed.extend(canned.shown);
        let summary = Summary {
            ok: loaded.len() - canned.bad_rules,
            with_errors: failed + canned.bad_rules,
            broken_replies: canned.broken,
        };
        (summary, errors, warnings, listed, canned.notes)
    })
    .await
    .context("rule check crashed")?;
    let (summary, errors, warnings, listed, notes) = result;
    for m in &listed {
        println!("{m}");
    }
    for e in &errors {
        eprintln!("error: {e}\n");
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    for n in &notes {
        eprintln!("note: {n}");
    }
    println!(
        "{} rule(s) ok, {} with errors, {} warning(s) in {}{}",
        summary.ok,
        summary.with_errors,
        warnings.len(),
        dir.display(),
        summary
            .broken_replies
            .map(|f| format!("; {} does not load", f.display()))
            .unwrap_or_default()
    );
    Ok(errors.is_empty())
}

/// What `skyrules check` says about a directory's canned replies.
struct CannedCheck {
    /// Rendered errors: the replies file does not parse, or a rule names a
    /// reply it lacks.
    errors: Vec<String>,
    warnings: Vec<String>,
    notes: Vec<String>,
    /// The line saying how many replies there are.
    shown: Option<String>,
    /// Rules that name a reply the file lacks.
    bad_rules: usize,
    /// The replies file, when it does not parse.
    broken: Option<PathBuf>,
}

/// Checks `dir`'s replies file and the `canned("…")` calls of the rules
/// that loaded (not when the file does not parse: every name would look
/// unknown).
fn check_canned(dir: &Path, loaded: &[(crate::rules::Rule, Option<String>)]) -> CannedCheck {
    let replies = match crate::rules::Replies::load(dir) {
        Ok(r) => r,
        Err(e) => {
            let source = std::fs::read_to_string(&e.path).ok();
            return CannedCheck {
                errors: vec![e.render(source.as_deref())],
                warnings: Vec::new(),
                notes: Vec::new(),
                shown: None,
                bad_rules: 0,
                broken: Some(e.path),
            };
        }
    };
    let rules: Vec<&crate::rules::Rule> = loaded.iter().map(|(r, _)| r).collect();
    let found = crate::rules::replies::check(&replies, &rules);
    let mut bad: Vec<&Path> = Vec::new();
    let errors = found
        .errors
        .iter()
        .map(|e| {
            if !bad.contains(&e.path.as_path()) {
                bad.push(&e.path);
            }
            let source = loaded.iter().find(|(r, _)| r.path == e.path);
            e.render(source.and_then(|(_, s)| s.as_deref()))
        })
        .collect();
    let n = replies.len();
    CannedCheck {
        errors,
        warnings: found.warnings,
        notes: found.notes,
        shown: replies.exists().then(|| {
            let s = if n == 1 { "reply" } else { "replies" };
            format!("{}: {n} canned {s}", replies.file().display())
        }),
        bad_rules: bad.len(),
        broken: None,
    }
}

/// The last line of `skyrules check`.
struct Summary {
    /// Rules that load and name only replies the file has.
    ok: usize,
    /// Rules that do not load or name a reply the file lacks.
    with_errors: usize,
    /// The replies file, when it does not parse.
    broken_replies: Option<PathBuf>,
}

/// Loads the config for an engine command.
pub fn load(
    global_config: Option<&Path>,
    base_url: Option<String>,
    a: &EngineArgs,
) -> anyhow::Result<Config> {
    let mut o = a.overrides();
    o.base_url = base_url;
    Ok(Config::load(global_config, &o)?)
}

/// Logs and counts each notification's delivery. Deliveries finish after
/// the action was recorded as handed over, so this is where their outcome
/// shows.
fn log_deliveries(n: &crate::notifications::Notifier) {
    let mut delivered = n.delivered();
    tokio::spawn(async move {
        loop {
            let d = match delivered.recv().await {
                Ok(d) => d,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "notification outcomes came too fast to log");
                    continue;
                }
                Err(_) => break,
            };
            crate::telemetry::metrics::notification(&d.channel, d.ok);
            if d.ok {
                tracing::info!(rule = %d.rule, session_id = %d.session_id, channel = %d.channel, attempts = d.attempts, "notification delivered");
            } else {
                tracing::error!(rule = %d.rule, session_id = %d.session_id, channel = %d.channel, attempts = d.attempts, error = d.error.as_deref().unwrap_or(""), "notification not delivered");
            }
        }
    });
}
