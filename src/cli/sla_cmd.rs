//! `skyrules sla`: first-response and human-wait percentiles, SLA breaches
//! per rule and day, as text, JSON or a one-page HTML report.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::UserError;
use crate::api::Timestamp;
use crate::config::{parse_duration, Config};
use crate::report::sla::{build_report, render_html, render_text, BreachCount, SlaRecord};
use crate::tracking::Tracked;

/// Flags of `skyrules sla`.
#[derive(Debug, Args)]
pub(crate) struct SlaArgs {
    /// The period to report on, e.g. 7d or 24h
    #[arg(long, default_value = "7d")]
    since: String,
    /// An agent answer slower than this is an agent-silence breach
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    agent_silence: String,
    /// Also write a one-page HTML report with charts to FILE
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// State database file (`engine.state_path`)
    #[arg(long = "state", env = "SKYRULES_STATE_PATH", value_name = "FILE")]
    state_path: Option<PathBuf>,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

/// "Now" on the clock the state was written with: the server's, as its
/// newest timestamp shows, or this machine's when that is later (a state
/// no engine has written to for a while). Sessions and breaches are both
/// stamped by the server, so a window taken on this machine's clock would
/// count them over different spans when the two clocks disagree.
fn state_now(sessions: &[Tracked], latest_action: Option<Timestamp>) -> Timestamp {
    sessions
        .iter()
        .flat_map(|t| [t.session.last_activity_at, t.session.created_at])
        .chain([latest_action])
        .flatten()
        .fold(chrono::Utc::now(), std::cmp::max)
}

/// Reads the state file (without locking it) and reports.
pub async fn run(config: Config, workspace: Option<&str>, a: SlaArgs) -> anyhow::Result<ExitCode> {
    let span = super::since_span(&a.since)?;
    let silence =
        parse_duration(&a.agent_silence).map_err(|e| UserError(format!("--agent-silence: {e}")))?;
    let (store, _, _) = super::read_state(&config, workspace, a.state_path).await?;
    let (from, until, sessions, breaches) = tokio::task::spawn_blocking(move || {
        let sessions = store.sessions_since(chrono::DateTime::<chrono::Utc>::MIN_UTC)?;
        let until = state_now(&sessions, store.latest_action_at()?);
        let from = until - span;
        let sessions: Vec<Tracked> = sessions
            .into_iter()
            .filter(|t| t.session.created_at.is_some_and(|c| c >= from))
            .collect();
        Ok::<_, crate::store::StoreError>((from, until, sessions, store.timer_breaches(from)?))
    })
    .await
    .context("reading the state file crashed")??;
    let limit = silence.as_secs_f64();
    let records: Vec<SlaRecord> = sessions
        .iter()
        .filter_map(|t| {
            Some(SlaRecord {
                session_id: t.session.session_id.clone(),
                created_at: t.session.created_at?,
                first_response_secs: t.sla.first_response_secs,
                human_wait_secs: t.sla.human_wait_secs.clone(),
                agent_silence_breaches: t
                    .sla
                    .agent_response_secs
                    .iter()
                    .filter(|s| **s > limit)
                    .count() as u32,
            })
        })
        .collect();
    let breaches: Vec<BreachCount> = breaches
        .into_iter()
        .map(|(rule, day, count)| BreachCount { rule, day, count })
        .collect();
    let report = build_report(&records, &breaches, from, until);
    if let Some(file) = &a.html {
        std::fs::write(file, render_html(&report))
            .map_err(|e| UserError(format!("cannot write {}: {e}", file.display())))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_text(&report));
        if let Some(file) = &a.html {
            println!("\nHTML report written to {}", file.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
