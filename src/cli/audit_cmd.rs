//! `skyrules audit`: what was done, when, by which rule, with what outcome.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use comfy_table::{presets, ContentArrangement, Table};

use crate::config::Config;
use crate::store::AuditFilter;

/// Flags of `skyrules audit`.
#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// Only this session
    #[arg(long = "session", value_name = "ID")]
    session_id: Option<String>,
    /// Only this rule
    #[arg(long, value_name = "ID")]
    rule: Option<String>,
    /// Only the last DURATION, e.g. 1h or 7d
    #[arg(long, value_name = "DURATION")]
    since: Option<String>,
    /// State database file (`engine.state_path`)
    #[arg(long = "state", env = "SKYRULES_STATE_PATH", value_name = "FILE")]
    state_path: Option<PathBuf>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// Prints the audit log. Reads the state file without locking it, so it
/// works while the engine runs.
pub async fn run(
    config: Config,
    workspace: Option<&str>,
    a: AuditArgs,
) -> anyhow::Result<ExitCode> {
    let since = super::since_time(a.since.as_deref())?;
    let (store, _, _) = super::read_state(&config, workspace, a.state_path).await?;
    let filter = AuditFilter {
        session_id: a.session_id,
        rule: a.rule,
        since,
    };
    let entries = tokio::task::spawn_blocking(move || store.audit(&filter))
        .await
        .context("reading the audit log crashed")??;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        println!("no actions recorded");
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new();
    t.load_preset(presets::UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec![
            "TIME", "RULE", "SESSION", "EVENT", "ACTION", "OUTCOME", "DETAIL",
        ]);
    for e in &entries {
        t.add_row(vec![
            e.at.format("%Y-%m-%d %H:%M:%S").to_string(),
            e.rule.clone(),
            e.session_id.clone(),
            e.event.clone(),
            e.action.clone(),
            e.outcome.clone(),
            e.detail.clone().unwrap_or_default(),
        ]);
    }
    println!("{t}");
    println!("{} action(s)", entries.len());
    Ok(ExitCode::SUCCESS)
}
