//! `skyrules test`: runs the scenario files next to the rules.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::UserError;
use crate::config::Config;
use crate::rules::World;
use crate::tools::scenario::{junit, load_file, run_scenario, scenario_files, ScenarioResult};

/// Flags of `skyrules test`.
#[derive(Debug, Args)]
pub(crate) struct TestArgs {
    /// Rules directory; scenarios are read from DIR/tests/*.toml
    dir: Option<PathBuf>,
    /// Only scenarios whose name or file contains this text
    #[arg(long)]
    filter: Option<String>,
    /// Also write the results as JUnit XML to FILE
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
}

/// Runs every scenario; exit 1 if any fails.
pub async fn run(config: Config, workspace: Option<&str>, a: TestArgs) -> anyhow::Result<ExitCode> {
    let dir = match a.dir.clone() {
        Some(d) => d,
        None => config.workspace(workspace)?.engine.rules_dir,
    };
    if !dir.is_dir() {
        return Err(UserError(format!("rules directory {} does not exist", dir.display())).into());
    }
    let files = scenario_files(&dir)
        .map_err(|e| UserError(format!("cannot read scenarios in {}: {e}", dir.display())))?;
    if files.is_empty() {
        return Err(UserError(format!(
            "no scenario files in {}/tests/ (*.toml); see `skyrules test --help` and the README",
            dir.display()
        ))
        .into());
    }
    let mut results = Vec::new();
    for file in &files {
        let parsed = match load_file(file) {
            Ok(p) => p,
            Err(e) => {
                println!("✗ {e}");
                results.push(ScenarioResult {
                    file: file.clone(),
                    name: "(scenario file)".into(),
                    failure: Some(e),
                    elapsed: Default::default(),
                });
                continue;
            }
        };
        let wanted: Vec<_> = parsed
            .scenario
            .iter()
            .filter(|s| {
                a.filter.as_ref().is_none_or(|f| {
                    s.name.contains(f.as_str()) || file.display().to_string().contains(f.as_str())
                })
            })
            .collect();
        if wanted.is_empty() {
            continue;
        }
        println!("{}", file.display());
        for s in wanted {
            let world = World {
                calendars: config.calendars()?,
                channels: config.notify.keys().cloned().collect(),
                notifier: None,
                max_rule_memory: config.engine.max_rule_memory as usize,
                shadow_is_live: true,
            };
            let r = run_scenario(&dir, file, s, world).await;
            match &r.failure {
                None => println!("  ✓ {} ({} ms)", r.name, r.elapsed.as_millis()),
                Some(f) => println!(
                    "  ✗ {}\n    {}",
                    r.name,
                    f.trim_end().replace('\n', "\n    ")
                ),
            }
            results.push(r);
        }
    }
    if results.is_empty() {
        return Err(UserError(match &a.filter {
            Some(f) => format!("no scenario matches --filter {f:?}"),
            None => format!("no scenarios in {}", dir.display()),
        })
        .into());
    }
    let failed = results.iter().filter(|r| r.failure.is_some()).count();
    println!(
        "\n{} scenario(s): {} passed, {} failed",
        results.len(),
        results.len() - failed,
        failed
    );
    if let Some(path) = a.junit {
        std::fs::write(&path, junit(&results))
            .map_err(|e| UserError(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
