//! `skyrules sessions …` and `skyrules analytics`: the API from the shell,
//! as tables and transcripts for people and `--json` for scripts.

use std::io::Read;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use comfy_table::{presets, ContentArrangement, Table};

use crate::api::{
    format_ts, Client, HandledBy, ListQuery, Period, Session, SessionDetail, SessionStatus,
    Timestamp,
};
use crate::config::Config;

/// `skyrules sessions`.
#[derive(Debug, Subcommand)]
pub(crate) enum SessionsCmd {
    /// List sessions (one page, or every page with --all)
    List(ListArgs),
    /// Show one session with its transcript
    Show(IdArgs),
    /// Take a session over from the AI
    TakeOver(IdArgs),
    /// Hand a session back to the AI
    Release(IdArgs),
    /// Send an agent message (TEXT, or `-` to read it from stdin)
    Send(SendArgs),
    /// End a session
    End(IdArgs),
}

/// Filters and paging for `sessions list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only sessions with this status
    #[arg(long, value_parser = ["active", "ended"])]
    status: Option<String>,
    /// Only sessions handled by
    #[arg(long, value_parser = ["ai", "human", "pending"])]
    handled_by: Option<String>,
    /// Match visitor name, e-mail or phone
    #[arg(long)]
    search: Option<String>,
    /// Page size, 1-100
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    per_page: Option<u32>,
    /// Page to show (ignored with --all)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    page: u32,
    /// Walk every page
    #[arg(long)]
    all: bool,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

/// One session id.
#[derive(Debug, Args)]
pub(crate) struct IdArgs {
    /// Session id, e.g. sess_a1b2c3d4e5f6
    id: String,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// `sessions send`.
#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// Session id
    id: String,
    /// The message, or `-` to read it from stdin
    text: String,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// `skyrules analytics`.
#[derive(Debug, Args)]
pub(crate) struct AnalyticsArgs {
    /// Period to aggregate over
    #[arg(long, value_enum, default_value_t = Period::Month)]
    period: Period,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

fn client(config: &Config, workspace: Option<&str>) -> anyhow::Result<Client> {
    Ok(Client::new(config.workspace(workspace)?.client_config()?)?)
}

/// Runs a `sessions` subcommand.
pub async fn sessions(
    config: Config,
    workspace: Option<&str>,
    cmd: SessionsCmd,
) -> anyhow::Result<ExitCode> {
    let api = client(&config, workspace)?;
    match cmd {
        SessionsCmd::List(a) => list(&api, a).await,
        SessionsCmd::Show(a) => {
            let d = api.get_session(&a.id).await?;
            if a.json {
                print_json(&d)?;
            } else {
                print!("{}", transcript(&d));
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionsCmd::TakeOver(a) => {
            let s = api.take_over(&a.id).await?;
            done(a.json, &a.id, s, "taken over: a human handles it now")
        }
        SessionsCmd::Release(a) => {
            let s = api.release(&a.id).await?;
            done(a.json, &a.id, s, "released to the AI")
        }
        SessionsCmd::End(a) => {
            let s = api.end(&a.id).await?;
            done(a.json, &a.id, s, "ended")
        }
        SessionsCmd::Send(a) => {
            let text = if a.text == "-" {
                let mut buf = String::new();
                std::io::stdin()
                    .read_to_string(&mut buf)
                    .context("cannot read the message from stdin")?;
                // A trailing newline from `echo` is not part of the message.
                buf.trim_end_matches(['\n', '\r']).to_string()
            } else {
                a.text
            };
            let m = api.send_message(&a.id, &text).await?;
            if a.json {
                print_json(&m)?;
            } else {
                println!("{}: message {} sent", a.id, m.id);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn list(api: &Client, a: ListArgs) -> anyhow::Result<ExitCode> {
    let query = ListQuery {
        status: a
            .status
            .as_deref()
            .map(|s| s.parse::<SessionStatus>().unwrap_or_else(|e| match e {})),
        handled_by: a
            .handled_by
            .as_deref()
            .map(|s| s.parse::<HandledBy>().unwrap_or_else(|e| match e {})),
        search: a.search,
        per_page: a.per_page,
    };
    let sessions = if a.all {
        api.list_all_sessions(&query).await?
    } else {
        api.list_sessions(&query, a.page).await?.sessions
    };
    if a.json {
        print_json(&sessions)?;
    } else if sessions.is_empty() {
        println!("no sessions");
    } else {
        println!("{}", session_table(&sessions, api.clock().now()));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `analytics`.
pub async fn analytics(
    config: Config,
    workspace: Option<&str>,
    a: AnalyticsArgs,
) -> anyhow::Result<ExitCode> {
    let api = client(&config, workspace)?;
    let an = api.analytics(a.period).await?;
    if a.json {
        print_json(&an)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = table();
    t.set_header(vec!["metric", a.period.as_str()]);
    for (k, v) in [
        ("total chats", an.total_chats.to_string()),
        ("engaged chats", an.engaged_chats.to_string()),
        ("active chats", an.active_chats.to_string()),
        ("completed chats", an.completed_chats.to_string()),
        ("total messages", an.total_messages.to_string()),
        ("visitor messages", an.visitor_messages.to_string()),
        ("bot messages", an.bot_messages.to_string()),
        (
            "messages per chat",
            format!("{:.1}", an.avg_messages_per_chat),
        ),
        ("unique visitors", an.unique_visitors.to_string()),
    ] {
        t.add_row(vec![k.to_string(), v]);
    }
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}

fn done(json: bool, id: &str, s: Option<Session>, what: &str) -> anyhow::Result<ExitCode> {
    if json {
        print_json(&serde_json::json!({ "session_id": id, "ok": true, "session": s }))?;
    } else {
        println!("{id}: {what}");
    }
    Ok(ExitCode::SUCCESS)
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn table() -> Table {
    let mut t = Table::new();
    t.load_preset(presets::UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t
}

/// `3m ago`-style age; exact timestamps are one `--json` away.
fn ago(t: Option<Timestamp>, now: Timestamp) -> String {
    let Some(t) = t else { return "-".into() };
    let secs = (now - t).num_seconds().max(0) as u64;
    let d = std::time::Duration::from_secs(if secs >= 3600 { secs / 60 * 60 } else { secs });
    format!("{} ago", humantime::format_duration(d))
}

fn session_table(sessions: &[Session], now: Timestamp) -> Table {
    let mut t = table();
    t.set_header(vec![
        "SESSION",
        "STATUS",
        "HANDLED BY",
        "VISITOR",
        "HUMAN REQUESTED",
        "LAST ACTIVITY",
    ]);
    for s in sessions {
        let visitor = match (&s.visitor_name, &s.visitor_email) {
            (Some(n), Some(e)) => format!("{n} <{e}>"),
            (Some(n), None) => n.clone(),
            (None, Some(e)) => e.clone(),
            (None, None) => "(anonymous)".into(),
        };
        t.add_row(vec![
            s.session_id.clone(),
            s.status.to_string(),
            s.handled_by.to_string(),
            visitor,
            ago(s.human_requested_at, now),
            ago(s.last_activity_at, now),
        ]);
    }
    t
}

/// A session as a people-readable header plus chat transcript.
pub(crate) fn transcript(d: &SessionDetail) -> String {
    use std::fmt::Write;
    let s = &d.session;
    let mut out = String::new();
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let ts = |v: &Option<Timestamp>| v.as_ref().map(format_ts).unwrap_or_else(|| "-".into());
    let _ = writeln!(out, "session    {}", s.session_id);
    let _ = writeln!(out, "status     {} (handled by {})", s.status, s.handled_by);
    let _ = writeln!(
        out,
        "visitor    {} / {} / {}",
        opt(&s.visitor_name),
        opt(&s.visitor_email),
        opt(&s.visitor_phone)
    );
    let _ = writeln!(out, "page       {}", opt(&s.visitor_page_url));
    let _ = writeln!(out, "created    {}", ts(&s.created_at));
    let _ = writeln!(out, "activity   {}", ts(&s.last_activity_at));
    let _ = writeln!(out, "human asked {}", ts(&s.human_requested_at));
    let _ = writeln!(out, "taken over {}", ts(&s.human_took_over_at));
    let _ = writeln!(out);
    if d.messages.is_empty() {
        let _ = writeln!(out, "(no messages)");
    }
    let name = s.visitor_name.clone().unwrap_or_else(|| "visitor".into());
    for m in &d.messages {
        let when = m
            .created_at
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "-".into());
        let who = match m.sender_type {
            crate::api::SenderType::Visitor => name.clone(),
            crate::api::SenderType::Bot => "bot".into(),
            crate::api::SenderType::Agent => "agent".into(),
            crate::api::SenderType::Other(ref o) => o.clone(),
        };
        let body = match (&m.message_text, &m.media_url) {
            (Some(t), _) if !t.is_empty() => t.clone(),
            (_, Some(u)) => format!("[{}] {u}", m.message_type),
            _ => format!("[{}]", m.message_type),
        };
        let mut lines = body.lines();
        let _ = writeln!(out, "[{when}] {who}: {}", lines.next().unwrap_or(""));
        for l in lines {
            let _ = writeln!(out, "{:width$}{l}", "", width = when.len() + 4 + who.len());
        }
    }
    out
}
