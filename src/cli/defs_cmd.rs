//! `skyrules defs`: Rhai definition files for editors.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::config::Config;
use crate::rules::Runtime;

/// Flags of `skyrules defs`.
#[derive(Debug, Args)]
pub(crate) struct DefsArgs {
    /// Rules directory; files go to DIR/.rhai/definitions/
    dir: Option<PathBuf>,
}

/// Writes the definition files and says where.
pub async fn run(config: Config, workspace: Option<&str>, a: DefsArgs) -> anyhow::Result<ExitCode> {
    let dir = match a.dir {
        Some(d) => d,
        None => config.workspace(workspace)?.engine.rules_dir,
    }
    .join(".rhai")
    .join("definitions");
    let target = dir.clone();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&target)?;
        Runtime::new().write_definitions(&target)
    })
    .await
    .context("writing definitions crashed")?
    .with_context(|| format!("cannot write definitions to {}", dir.display()))?;
    println!("wrote Rhai definitions to {}", dir.display());
    println!("open the rules directory in an editor with the Rhai extension (VS Code: \"Rhai Language Support\") for completion and checks of on(...), ev and its fields");
    Ok(ExitCode::SUCCESS)
}
