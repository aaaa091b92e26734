//! `skyrules replay`: run the rules over recorded history, taking no action.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::Args;
use comfy_table::{presets, ContentArrangement, Table};

use super::UserError;
use crate::api::Client;
use crate::config::{parse_duration, Config};
use crate::executor::Guard;
use crate::tools::replay::{replay, Progress, ReplayOptions};

/// Flags of `skyrules replay`.
#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// How far back to read, e.g. 7d or 24h
    #[arg(long, default_value = "7d")]
    since: String,
    /// Rules directory [default: `engine.rules_dir`]
    #[arg(long = "rules", value_name = "DIR")]
    rules_dir: Option<PathBuf>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// A progress bar on a terminal, a line per tenth otherwise.
struct Shown {
    bar: Option<indicatif::ProgressBar>,
    total: AtomicUsize,
    done: AtomicUsize,
}

impl Progress for Shown {
    fn start(&self, total: usize) {
        self.total.store(total, Ordering::Relaxed);
        match &self.bar {
            Some(bar) => {
                bar.set_length(total as u64);
                bar.set_message("reading sessions");
            }
            None => eprintln!("reading {total} session(s)"),
        }
    }

    fn tick(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        match &self.bar {
            Some(bar) => bar.inc(1),
            None => {
                let total = self.total.load(Ordering::Relaxed).max(1);
                let step = (total / 10).max(1);
                if done.is_multiple_of(step) || done == total {
                    eprintln!("read {done}/{total} sessions");
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Reads the history and prints what each rule would have done.
pub async fn run(
    config: Config,
    workspace: Option<&str>,
    a: ReplayArgs,
) -> anyhow::Result<ExitCode> {
    let since = parse_duration(&a.since).map_err(|e| UserError(format!("--since: {e}")))?;
    let ws = config.workspace(workspace)?;
    let rules_dir = a.rules_dir.unwrap_or(ws.engine.rules_dir.clone());
    if !rules_dir.is_dir() {
        return Err(UserError(format!(
            "rules directory {} does not exist",
            rules_dir.display()
        ))
        .into());
    }
    let api = Client::new(ws.client_config()?)?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({eta})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    });
    let progress = Shown {
        bar,
        total: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
    };
    let opts = ReplayOptions {
        since,
        rules_dir,
        guard: Guard {
            max_replies: config.guard.max_replies,
            window: config.guard.window,
        },
        calendars: config.calendars()?,
        channels: config.notify.keys().cloned().collect(),
    };
    let report = replay(&api, &opts, &progress).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} session(s) from the last {} replayed; no action was taken.\n",
        report.sessions,
        humantime::format_duration(since)
    );
    let mut t = Table::new();
    t.load_preset(presets::UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec!["RULE", "SESSIONS", "ACTIONS"]);
    for (rule, r) in &report.rules {
        let actions: Vec<String> = r.actions.iter().map(|(a, n)| format!("{a} ×{n}")).collect();
        t.add_row(vec![
            rule.clone(),
            r.sessions.to_string(),
            if actions.is_empty() {
                "-".into()
            } else {
                actions.join(", ")
            },
        ]);
    }
    println!("{t}");
    for (rule, r) in &report.rules {
        if r.samples.is_empty() {
            continue;
        }
        println!("\n{rule} would have acted on, for example:");
        for s in &r.samples {
            let trigger = s
                .trigger
                .as_deref()
                .map(|t| format!(" after \"{}\"", t.chars().take(80).collect::<String>()))
                .unwrap_or_default();
            println!(
                "  {} on {}{trigger}: {}",
                s.session_id,
                s.event,
                s.actions.join("; ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
