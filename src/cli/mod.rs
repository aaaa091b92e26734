//! The `skyrules` command line: argument parsing, logging set-up, and one
//! function per subcommand.
//!
//! Owns: flags, output formats (tables for people, `--json` for scripts) and
//! exit codes (0 ok, 1 user error, 2 runtime failure). Does not own any
//! behaviour: every subcommand calls into the library modules.

mod api_cmds;
mod audit_cmd;
mod bench_cmd;
mod defs_cmd;
mod demo_cmd;
mod engine_cmds;
mod logging;
mod replay_cmd;
mod sim_cmd;
mod sla_cmd;
mod state_cmd;
mod test_cmd;
mod why_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::api::ApiError;
use crate::config::{Config, ConfigError, Overrides};
use crate::engine::EngineError;
use crate::store::StoreError;

pub(crate) use logging::LogFormat;

/// A `--since` window as a length of time, checked.
fn since_span(flag_value: &str) -> Result<chrono::Duration, UserError> {
    let d = crate::config::parse_duration(flag_value)
        .map_err(|e| UserError(format!("--since: {e}")))?;
    chrono::Duration::from_std(d)
        .map_err(|_| UserError(format!("--since {flag_value:?} is too long")))
}

/// `--since DURATION`, when given, as the time that long ago.
fn since_time(flag_value: Option<&str>) -> Result<Option<crate::api::Timestamp>, UserError> {
    flag_value
        .map(|s| since_span(s).map(|d| chrono::Utc::now() - d))
        .transpose()
}

/// One workspace's state, opened to read while an engine may run (the
/// reporting commands): the store's view, the workspace's name and where
/// the state is (`--state`, else `engine.state_path`).
async fn read_state(
    config: &Config,
    workspace: Option<&str>,
    state_path: Option<PathBuf>,
) -> anyhow::Result<(std::sync::Arc<dyn crate::store::Store>, String, PathBuf)> {
    let name = config.workspace(workspace)?.name;
    let path = state_path.unwrap_or(config.engine.state_path.clone());
    let store = crate::store::open_read_only(&path, config.state_url()?.as_deref())
        .await?
        .workspace(&name);
    Ok((store, name, path))
}

/// An error the user can fix (bad arguments, input or rules): exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UserError(pub String);

/// skyrules — automation and escalation rules for SkyLight Web Chat.
#[derive(Debug, Parser)]
#[command(name = "skyrules", version, about, max_term_width = 100)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct GlobalArgs {
    /// Config file [default: ./skyrules.toml if present]
    #[arg(long, global = true, env = "SKYRULES_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// SkyLight API base URL (overrides `api.base_url`)
    #[arg(long, global = true, env = "SKYRULES_BASE_URL", value_name = "URL")]
    base_url: Option<String>,
    /// The workspace to act on, with several `[workspaces.*]` in the config
    /// (`run`: only this one)
    #[arg(long, global = true, env = "SKYRULES_WORKSPACE", value_name = "NAME")]
    workspace: Option<String>,
    /// Log level or RUST_LOG-style filter, e.g. `debug` or `skyrules=trace`
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    /// Log format
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine: watch live chats and apply the rules
    Run(engine_cmds::EngineArgs),
    /// Load every rule and report errors with file, line and column
    Check(engine_cmds::CheckArgs),
    /// Run the rule scenarios in DIR/tests/*.toml
    Test(test_cmd::TestArgs),
    /// The simulator with generated visitors and the engine, narrated
    Demo(demo_cmd::DemoArgs),
    /// Run the SkyLight simulator alone, for rule authors and tests
    Sim(sim_cmd::SimArgs),
    /// List, inspect and act on chat sessions
    #[command(subcommand)]
    Sessions(api_cmds::SessionsCmd),
    /// Show Web Chat analytics
    Analytics(api_cmds::AnalyticsArgs),
    /// Show what the engine did: time, rule, session, action, outcome
    Audit(audit_cmd::AuditArgs),
    /// Why the rules did (or did not) act on one chat: every event and decision
    Why(why_cmd::WhyArgs),
    /// Write Rhai definition files so editors complete and check rules
    Defs(defs_cmd::DefsArgs),
    /// Run the rules over past sessions and report what they would have done
    Replay(replay_cmd::ReplayArgs),
    /// SLA report: response and wait percentiles, breaches per rule and day
    Sla(sla_cmd::SlaArgs),
    /// Load benchmark: simulator and engine with N live chats
    Bench(bench_cmd::BenchArgs),
    /// Manage the state database: copy a SQLite file into PostgreSQL
    #[command(subcommand)]
    State(state_cmd::StateCmd),
}

/// Parses the command line, runs the command, and turns the outcome into an
/// exit code. Errors are printed as one line with their cause chain.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    install_panic_hook();
    // The demo narrates on stdout; its logs would only interleave with it.
    let quiet = matches!(
        cli.command,
        Command::Demo(_)
            | Command::Check(_)
            | Command::Test(_)
            | Command::Replay(_)
            | Command::Bench(_)
    );
    // `test` reports rule failures itself, in context; log lines would
    // only repeat them.
    let silent = matches!(cli.command, Command::Test(_));
    let level = cli.global.log_level.clone().or_else(|| {
        if silent {
            Some("off".to_string())
        } else {
            quiet.then(|| "warn".to_string())
        }
    });
    if let Err(e) = logging::init(level.as_deref(), cli.global.log_format) {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(run(cli));
    // Background tasks (a hung request, a file watcher) must not hold the
    // exit hostage once the command is done.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let g = &cli.global;
    let ws = g.workspace.as_deref();
    match cli.command {
        Command::Run(a) => {
            engine_cmds::run(
                engine_cmds::load(g.config.as_deref(), g.base_url.clone(), &a)?,
                ws,
            )
            .await
        }
        Command::Check(a) => engine_cmds::check(load_config(g, Overrides::default())?, ws, a).await,
        Command::Demo(a) => demo_cmd::run(a).await,
        Command::Test(a) => test_cmd::run(load_config(g, Overrides::default())?, ws, a).await,
        Command::Bench(a) => bench_cmd::run(a).await,
        Command::Sla(a) => sla_cmd::run(load_config(g, Overrides::default())?, ws, a).await,
        Command::Replay(a) => replay_cmd::run(load_config(g, Overrides::default())?, ws, a).await,
        Command::Defs(a) => defs_cmd::run(load_config(g, Overrides::default())?, ws, a).await,
        Command::Audit(a) => audit_cmd::run(load_config(g, Overrides::default())?, ws, a).await,
        Command::Why(a) => why_cmd::run(load_config(g, Overrides::default())?, ws, a).await,
        Command::Sim(args) => sim_cmd::run(args).await,
        Command::State(cmd) => state_cmd::run(cmd).await,
        Command::Sessions(cmd) => {
            api_cmds::sessions(load_config(g, Overrides::default())?, ws, cmd).await
        }
        Command::Analytics(args) => {
            api_cmds::analytics(load_config(g, Overrides::default())?, ws, args).await
        }
    }
}

fn load_config(g: &GlobalArgs, mut o: Overrides) -> Result<Config, ConfigError> {
    o.base_url = g.base_url.clone();
    Config::load(g.config.as_deref(), &o)
}

/// 1 for what the user can fix, 2 for everything else.
fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<ConfigError>() || cause.is::<UserError>() {
            return 1;
        }
        if let Some(api) = cause.downcast_ref::<ApiError>() {
            return if api.is_user_error() { 1 } else { 2 };
        }
        if let Some(s) = cause.downcast_ref::<StoreError>() {
            return if matches!(s, StoreError::Io { .. } | StoreError::Unavailable { .. }) {
                2
            } else {
                1
            };
        }
        if let Some(EngineError::Rules(_)) = cause.downcast_ref::<EngineError>() {
            return 1;
        }
        if cause.is::<crate::telemetry::http::HttpError>()
            || cause.is::<crate::notifications::NotifyError>()
        {
            return 1;
        }
    }
    2
}

/// The cause chain on one line, without repeating a cause a parent already
/// quoted.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out.replace('\n', " ")
}

fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown cause".into());
        eprintln!(
            "error: internal error{place}: {what} (this is a skyrules bug; please report it)"
        );
    }));
}
