//! `skyrules state copy`: moves the state of a SQLite file into PostgreSQL,
//! every workspace at once, for a switch to `SKYRULES_STATE_URL`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use comfy_table::{presets, ContentArrangement, Table};

use super::UserError;
use crate::store::{PgStore, SqliteStore, Store};

/// `skyrules state …`.
#[derive(Debug, Subcommand)]
pub(crate) enum StateCmd {
    /// Copy every workspace's state from a SQLite file into PostgreSQL
    Copy(CopyArgs),
}

/// Flags of `skyrules state copy`.
#[derive(Debug, Args)]
pub(crate) struct CopyArgs {
    /// The SQLite state file to copy (no engine may be running on it; an
    /// older file is migrated in place first)
    #[arg(long, value_name = "FILE")]
    from: PathBuf,
    /// The environment variable that holds the PostgreSQL URL to copy into
    #[arg(
        long = "to-env",
        value_name = "VAR",
        default_value = "SKYRULES_STATE_URL"
    )]
    to_env: String,
}

/// Runs a `state` subcommand.
pub async fn run(cmd: StateCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        StateCmd::Copy(a) => copy(a).await,
    }
}

/// Copies in one PostgreSQL transaction; refuses, writing nothing, when
/// the target already holds state for any workspace of the file.
async fn copy(a: CopyArgs) -> anyhow::Result<ExitCode> {
    // The URL holds a password: it comes from the environment, never a flag.
    let url = match std::env::var(&a.to_env) {
        Ok(u) if !u.trim().is_empty() => u.trim().to_string(),
        _ => {
            return Err(UserError(format!(
                "{} is not set: set it to the PostgreSQL URL to copy into, such as postgres://user:password@host/dbname",
                a.to_env
            ))
            .into())
        }
    };
    let url = crate::config::postgres_url(&url, &a.to_env)?;
    // Opening would create a missing file; a typo must not copy nothing.
    if !a.from.is_file() {
        return Err(UserError(format!("{}: no such state file", a.from.display())).into());
    }
    let from = a.from.clone();
    let dump = tokio::task::spawn_blocking(move || SqliteStore::open(&from)?.export())
        .await
        .context("reading the state file crashed")??;
    if dump.workspaces.is_empty() {
        println!("{} holds no state; nothing copied", a.from.display());
        return Ok(ExitCode::SUCCESS);
    }
    let target = PgStore::connect(&url).await?;
    let location = target.location();
    let dump = tokio::task::spawn_blocking(move || target.import(&dump).map(|()| dump))
        .await
        .context("writing the state database crashed")??;

    let mut t = Table::new();
    t.load_preset(presets::UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec![
            "WORKSPACE",
            "TRACKED",
            "ENDED",
            "MEMORY",
            "JOURNAL",
            "ACTIONS",
            "BASELINED",
        ]);
    for w in &dump.workspaces {
        let ended = w.sessions.iter().filter(|s| s.2.is_some()).count();
        t.add_row(vec![
            w.name.clone(),
            (w.sessions.len() - ended).to_string(),
            ended.to_string(),
            w.memory.len().to_string(),
            w.journal.len().to_string(),
            w.actions.len().to_string(),
            if w.meta.iter().any(|(k, _)| k == "baselined") {
                "yes"
            } else {
                "no"
            }
            .to_string(),
        ]);
    }
    println!("{t}");
    println!(
        "copied {} workspace(s) from {} to {location}",
        dump.workspaces.len(),
        a.from.display()
    );
    Ok(ExitCode::SUCCESS)
}
