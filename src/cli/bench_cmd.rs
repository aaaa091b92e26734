//! `skyrules bench`: the load benchmark from the shell.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::UserError;
use crate::config::parse_duration;
use crate::tools::bench::{render, render_fleet, run as run_bench, run_fleet, BenchOptions};

/// Flags of `skyrules bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Active sessions
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// How long to measure after the baseline poll
    #[arg(long, default_value = "60s")]
    duration: String,
    /// Percentage of sessions that change between two polls
    #[arg(long, default_value_t = 1.0)]
    changed_percent: f64,
    /// Percentage of sessions that end, and are replaced by new ones,
    /// per poll interval (for a long run: ended sessions must leave memory)
    #[arg(long, default_value_t = 0.0)]
    churn_percent: f64,
    /// Messages each session starts with
    #[arg(long, default_value_t = 12)]
    history: usize,
    /// The engine's poll interval
    #[arg(long, default_value = "5s")]
    poll_interval: String,
    /// Traffic seed
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Events each session's decision trace keeps (`engine.trace_length`);
    /// 0 turns the trace off, to measure what it costs
    #[arg(long, default_value_t = crate::trace::DEFAULT_TRACE_LENGTH)]
    trace_length: usize,
    /// The pending fast lane's interval (`engine.pending_interval`); 0s
    /// turns it off, to compare with the full walk alone
    #[arg(long, default_value = "1s")]
    pending_interval: String,
    /// Each key's request budget per minute (`api.max_requests_per_minute`)
    #[arg(long, value_name = "N")]
    max_requests_per_minute: Option<usize>,
    /// SkyLight accounts, each its own simulator with --sessions chats, run
    /// by one process on one state (PostgreSQL when SKYRULES_BENCH_STATE_URL
    /// names a database to spare, else SQLite)
    #[arg(long, default_value_t = 1)]
    workspaces: usize,
    /// Also write the results as JSON to FILE
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// Runs the benchmark and prints the table (and JSON when asked).
pub async fn run(a: BenchArgs) -> anyhow::Result<ExitCode> {
    let dur =
        |flag: &str, v: &str| parse_duration(v).map_err(|e| UserError(format!("{flag}: {e}")));
    if a.sessions == 0 || !(a.changed_percent > 0.0 && a.changed_percent <= 100.0) {
        return Err(
            UserError("--sessions must be > 0 and --changed-percent in (0, 100]".into()).into(),
        );
    }
    if !(0.0..=100.0).contains(&a.churn_percent) {
        return Err(UserError("--churn-percent must be in [0, 100]".into()).into());
    }
    let opts = BenchOptions {
        sessions: a.sessions,
        duration: dur("--duration", &a.duration)?,
        changed: a.changed_percent / 100.0,
        churn: a.churn_percent / 100.0,
        history: a.history,
        poll_interval: dur("--poll-interval", &a.poll_interval)?,
        seed: a.seed,
        trace_length: a.trace_length,
        pending_interval: dur("--pending-interval", &a.pending_interval)?,
        max_requests_per_minute: a.max_requests_per_minute,
    };
    if opts.max_requests_per_minute == Some(0) {
        return Err(UserError("--max-requests-per-minute must be at least 1".into()).into());
    }
    if a.workspaces == 0 {
        return Err(UserError("--workspaces must be at least 1".into()).into());
    }
    eprintln!(
        "creating {} × {} sessions and measuring for {}…",
        a.workspaces,
        opts.sessions,
        humantime::format_duration(opts.duration)
    );
    let json = if a.workspaces > 1 {
        let report = run_fleet(opts, a.workspaces).await?;
        print!("{}", render_fleet(&report));
        serde_json::to_string_pretty(&report)?
    } else {
        let report = run_bench(opts).await?;
        print!("{}", render(&report));
        serde_json::to_string_pretty(&report)?
    };
    if let Some(path) = a.json {
        std::fs::write(&path, &json)
            .map_err(|e| UserError(format!("cannot write {}: {e}", path.display())))?;
    } else {
        println!("\n{json}");
    }
    Ok(ExitCode::SUCCESS)
}
