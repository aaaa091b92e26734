//! `skyrules run`, `skyrules check` and `skyrules demo`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::UserError;
use crate::api::Client;
use crate::config::{Config, Overrides};
use crate::engine::{Engine, EngineOptions};
use crate::executor::Guard;
use crate::rules::reload::log_report;
use crate::rules::{Runtime, World};

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

/// Engine options from a loaded config.
pub fn engine_options(config: &Config) -> EngineOptions {
    EngineOptions {
        rules_dir: config.engine.rules_dir.clone(),
        poll_interval: config.engine.poll_interval,
        dry_run: config.engine.dry_run,
        max_concurrency: config.engine.max_concurrency,
        guard: Guard {
            max_replies: config.guard.max_replies,
            window: config.guard.window,
        },
    }
}

/// Runs the engine against the configured API until Ctrl-C or SIGTERM.
pub async fn run(config: Config) -> anyhow::Result<ExitCode> {
    let api = Client::new(config.client_config()?)?;
    let opts = engine_options(&config);
    ensure_rules_dir(&opts.rules_dir)?;
    // Every secret and setting is checked before the state file is touched.
    let channels = crate::notifications::Channels::from_config(&config.notify)?;
    let calendars = config.calendars()?;
    let http_token = config.http_token()?;
    let metrics = crate::telemetry::metrics::install();
    let store =
        crate::store::open(&config.engine.state_path, config.state_url()?.as_deref()).await?;
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
    let world = World {
        calendars,
        channels: names,
        notifier,
        max_rule_memory: config.engine.max_rule_memory as usize,
    };
    let (mut engine, report) =
        Engine::with_world(api.clone(), store.clone(), opts.clone(), world).await?;
    engine.set_retention(config.engine.retention);
    log_report(&report);
    let running = engine.runtime().rules().rules.len();
    tracing::info!(
        base_url = api.base_url(),
        rules = running,
        rules_dir = %opts.rules_dir.display(),
        poll_interval = %humantime::format_duration(opts.poll_interval),
        dry_run = opts.dry_run,
        state = %store.location(),
        "skyrules running"
    );
    if running == 0 {
        tracing::warn!(rules_dir = %opts.rules_dir.display(), "no rule loaded; add *.rhai files (they are picked up without a restart)");
    }
    let server = match config.http.listen {
        Some(addr) => {
            let token = http_token.clone();
            let listener = crate::telemetry::http::bind(addr, token.as_deref()).await?;
            let shown = listener.local_addr().unwrap_or(addr);
            tracing::info!(address = %shown, "status page, /metrics, /healthz and /readyz at http://{shown}/");
            Some(tokio::spawn(crate::telemetry::http::serve(
                listener,
                engine.board(),
                metrics,
                token,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let stop = shutdown.clone();
    tokio::spawn(async move {
        crate::shutdown::signal().await;
        tracing::info!("shutting down");
        stop.cancel();
    });
    let result = engine.run(shutdown.clone()).await;
    shutdown.cancel();
    if let Some(server) = server {
        let _ = server.await;
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

fn ensure_rules_dir(dir: &Path) -> Result<(), UserError> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(UserError(format!(
            "rules directory {} does not exist; create it or set `engine.rules_dir` / --rules",
            dir.display()
        )))
    }
}

/// Loads every rule and prints each error with its source line and a caret.
pub async fn check(config: Config, a: CheckArgs) -> anyhow::Result<ExitCode> {
    let dir = a.dir.unwrap_or(config.engine.rules_dir.clone());
    ensure_rules_dir(&dir)?;
    let files = crate::rules::rule_files(&dir).map_err(|e| UserError(e.to_string()))?;
    let world = World {
        calendars: config.calendars()?,
        channels: config.notify.keys().cloned().collect(),
        notifier: None,
        max_rule_memory: config.engine.max_rule_memory as usize,
    };
    let result = tokio::task::spawn_blocking(move || {
        let runtime = Runtime::with_world(world);
        let mut ok = 0;
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        for path in files {
            let source = std::fs::read_to_string(&path).ok();
            match runtime.load_file(&path) {
                Ok(rule) => {
                    ok += 1;
                    warnings.extend(crate::rules::lint(&rule, source.as_deref().unwrap_or("")));
                }
                Err(e) => errors.push(e.render(source.as_deref())),
            }
        }
        (ok, errors, warnings)
    })
    .await
    .context("rule check crashed")?;
    let (ok, errors, warnings) = result;
    for e in &errors {
        eprintln!("error: {e}\n");
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "{ok} rule(s) ok, {} with errors, {} warning(s) in {}",
        errors.len(),
        warnings.len(),
        dir.display()
    );
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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
