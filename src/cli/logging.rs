//! Log set-up: `tracing` to stderr, human-readable on a terminal and JSON
//! for log pipelines, filtered by `--log-level` or `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Pretty on a terminal, JSON otherwise.
    Auto,
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber. `level` beats `RUST_LOG`; the default
/// shows skyrules' info lines and other crates' warnings.
pub fn init(level: Option<&str>, format: LogFormat) -> Result<(), String> {
    let filter = match level {
        Some(l) => EnvFilter::try_new(expand(l))
            .map_err(|e| format!("--log-level {l:?} is not a valid filter: {e}"))?,
        None => match std::env::var("RUST_LOG") {
            Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(expand(&v))
                .map_err(|e| format!("RUST_LOG {v:?} is not a valid filter: {e}"))?,
            _ => EnvFilter::new("warn,skyrules=info"),
        },
    };
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.with_target(false).compact().try_init()
    };
    result.map_err(|e| format!("cannot set up logging: {e}"))
}

/// A bare level (`debug`) means "skyrules at that level, others at warn", so
/// `--log-level trace` does not drown the output in hyper's internals.
fn expand(filter: &str) -> String {
    let f = filter.trim();
    if matches!(
        f.to_ascii_lowercase().as_str(),
        "trace" | "debug" | "info" | "warn" | "error" | "off"
    ) {
        format!("warn,skyrules={f}")
    } else {
        f.to_string()
    }
}
