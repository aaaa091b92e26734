//! `skyrules why SESSION`: every event the engine saw for one chat and
//! what each rule made of it (SPEC §8), as an aligned timeline for people
//! (coloured on a terminal) or a JSON list for scripts.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::UserError;
use crate::config::Config;
use crate::trace::{Entry, Verdict};

/// Flags of `skyrules why`.
#[derive(Debug, Args)]
pub(crate) struct WhyArgs {
    /// The session (chat) id
    #[arg(value_name = "SESSION")]
    session_id: String,
    /// Only this rule's decisions
    #[arg(long, value_name = "ID")]
    rule: Option<String>,
    /// Only events of the last DURATION, e.g. 10m or 2h
    #[arg(long, value_name = "DURATION")]
    since: Option<String>,
    /// State database file (`engine.state_path`)
    #[arg(long = "state", env = "SKYRULES_STATE_PATH", value_name = "FILE")]
    state_path: Option<PathBuf>,
    /// Print JSON: a list of entries
    #[arg(long)]
    json: bool,
}

/// Prints one session's decision trace. Reads the state without locking
/// it, so it works while the engine runs.
pub async fn run(config: Config, workspace: Option<&str>, a: WhyArgs) -> anyhow::Result<ExitCode> {
    let since = super::since_time(a.since.as_deref())?;
    let (store, name, path) = super::read_state(&config, workspace, a.state_path).await?;
    let id = a.session_id.clone();
    let rows = tokio::task::spawn_blocking(move || store.trace(&id))
        .await
        .context("reading the decision trace crashed")??;
    let Some(rows) = rows else {
        return Err(UserError(format!(
            "session {} is not in the state of workspace {name} ({}): it was never seen, or it ended and was purged; `skyrules sessions list` shows the live ones",
            a.session_id,
            path.display()
        ))
        .into());
    };
    let mut entries = crate::trace::entries(&a.session_id, &rows)?;
    if let Some(rule) = &a.rule {
        let known = entries.iter().any(|e| e.rule.as_deref() == Some(rule));
        if !known && !entries.is_empty() {
            return Err(UserError(format!(
                "no rule {rule:?} decided anything for session {}; its trace names: {}",
                a.session_id,
                rule_names(&entries).join(", ")
            ))
            .into());
        }
        entries.retain(|e| e.rule.as_deref() == Some(rule));
    }
    if let Some(t) = since {
        entries.retain(|e| e.at >= t);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(ExitCode::SUCCESS);
    }
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    print!("{}", timeline(&a.session_id, &name, &entries, colour));
    Ok(ExitCode::SUCCESS)
}

/// Every rule the entries name, in order of appearance.
fn rule_names(entries: &[Entry]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in entries.iter().filter_map(|e| e.rule.as_ref()) {
        if !names.contains(r) {
            names.push(r.clone());
        }
    }
    names
}

/// The timeline for people: one heading per event (time, kind, what made
/// it), then one aligned line per rule decision; rules without a handler
/// share one line.
fn timeline(session_id: &str, workspace: &str, entries: &[Entry], colour: bool) -> String {
    let paint = |code: &str, s: &str| {
        if colour {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    let mut out = String::new();
    if entries.is_empty() {
        out.push_str(&format!(
            "session {session_id} (workspace {workspace}): no events recorded\n"
        ));
        return out;
    }
    // Rules without a handler share a line: they do not set the widths.
    let shown = || entries.iter().filter(|e| !e.is_idle());
    let rule_w = shown()
        .map(|e| e.rule.as_deref().unwrap_or("-").len())
        .max()
        .unwrap_or(1);
    let outcome_w = shown().map(|e| e.outcome.name().len()).max().unwrap_or(1);
    let mut events = 0;
    for event in crate::trace::by_event(entries) {
        let head = &event[0];
        events += 1;
        out.push_str(&format!(
            "{}  {}  {}\n",
            paint("2", &head.at.format("%Y-%m-%d %H:%M:%S").to_string()),
            paint("1", &head.event),
            head.cause
        ));
        for e in event.iter().filter(|e| !e.is_idle()) {
            let outcome = format!("{:outcome_w$}", e.outcome.name());
            let version = e.version.as_deref().unwrap_or("");
            out.push_str(
                format!(
                    "    {:rule_w$}  {}  {}  {}",
                    e.rule.as_deref().unwrap_or("-"),
                    paint("2", &format!("{version:8}")),
                    paint(verdict_colour(e.outcome), &outcome),
                    e.detail
                )
                .trim_end(),
            );
            out.push('\n');
        }
        let idle: Vec<&str> = event
            .iter()
            .filter(|e| e.is_idle())
            .filter_map(|e| e.rule.as_deref())
            .collect();
        if !idle.is_empty() {
            out.push_str(&format!(
                "    {}\n",
                paint("2", &format!("no handler: {}", idle.join(", ")))
            ));
        }
    }
    out.push_str(&format!(
        "{events} event(s) of session {session_id} (workspace {workspace})\n"
    ));
    out
}

/// ANSI colour of a verdict: green acted, red failed, yellow held back,
/// cyan only logged, blue timers, dim for nothing to say.
fn verdict_colour(v: Verdict) -> &'static str {
    match v {
        Verdict::Acted => "32",
        Verdict::Failed => "31",
        Verdict::Capped | Verdict::Skipped => "33",
        Verdict::DryRun => "36",
        Verdict::NotDue | Verdict::OutOfHours | Verdict::AlreadyFired => "34",
        Verdict::NoAction | Verdict::NoHandler | Verdict::Disabled => "2",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(rule: &str, outcome: Verdict, detail: &str) -> Entry {
        let at = chrono::DateTime::from_timestamp(1_764_000_000, 0).unwrap();
        Entry {
            at,
            seen_at: at,
            event: "visitor_message".into(),
            key: "m1".into(),
            cause: "message 1".into(),
            rule: Some(rule.into()),
            version: Some("0a1b2c3d".into()),
            outcome,
            detail: detail.into(),
        }
    }

    #[test]
    fn the_timeline_groups_an_event_and_aligns_its_rules() {
        let text = timeline(
            "s1",
            "default",
            &[
                entry("escalate", Verdict::Acted, "take_over: taken"),
                entry("a", Verdict::NoHandler, ""),
                entry("b", Verdict::NoHandler, ""),
                entry(
                    "idle-close",
                    Verdict::NotDue,
                    "idle 30m due 2025-11-24T16:30:00Z",
                ),
            ],
            false,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "2025-11-24 16:00:00  visitor_message  message 1");
        assert_eq!(
            lines[1],
            "    escalate    0a1b2c3d  acted    take_over: taken"
        );
        assert_eq!(
            lines[2],
            "    idle-close  0a1b2c3d  not_due  idle 30m due 2025-11-24T16:30:00Z"
        );
        assert_eq!(lines[3], "    no handler: a, b");
        assert!(!text.contains('\x1b'), "plain when not a terminal");
        let coloured = timeline(
            "s1",
            "default",
            &[entry("x", Verdict::Failed, "boom")],
            true,
        );
        assert!(coloured.contains("\x1b[31mfailed\x1b[0m"));
    }
}
