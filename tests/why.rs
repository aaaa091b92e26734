//! `skyrules why` (SPEC §8): a real `skyrules run` against the simulator
//! over HTTP, and `why` reading its state file while it runs. Every rule
//! outcome the Done-means names shows for the chat it happened to; no
//! message text reaches the output or the stored trace; a hot reload shows
//! as a new rule version.

use std::fs;
use std::process::Output;
use std::time::Duration;

use serde_json::{json, Value};

use crate::util::{self, wait_until, BlockingSim, Running};

const KEY: &str = "why-test-key";
const LIMIT: Duration = Duration::from_secs(60);
/// In every visitor message: it must appear nowhere `why` shows or keeps.
const MARKER: &str = "SECRET-MARKER-7f3a";

const RULES: &[(&str, &str)] = &[
    (
        "condition-false.rhai",
        r#"on("visitor_message", |ev| {
    if ev.message.text == "never this" { ev.take_over(); }
});"#,
    ),
    (
        "throws.rhai",
        r#"// fails on every visitor message
on("visitor_message", |ev| {
    throw "rule bug";
});"#,
    ),
    (
        "waits.rhai",
        r#"on("unanswered", "1h", |ev| ev.reply("late"));"#,
    ),
    (
        "shadowed.rhai",
        "mode(\"shadow\");\non(\"visitor_message\", |ev| ev.reply(\"shadow \" + ev.message.id));",
    ),
    (
        "switched-off.rhai",
        "mode(\"off\");\non(\"visitor_message\", |ev| ev.take_over());",
    ),
];

fn why(dir: &std::path::Path, args: &[&str]) -> Output {
    util::skyrules_command()
        .current_dir(dir)
        .arg("why")
        .args(args)
        .args(["--state", "state.db"])
        .output()
        .expect("run skyrules why")
}

/// `why --json`'s entries, once it succeeds.
fn entries(dir: &std::path::Path, chat: &str) -> Vec<Value> {
    let out = why(dir, &[chat, "--json"]);
    if !out.status.success() {
        return Vec::new();
    }
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn find<'a>(entries: &'a [Value], rule: &str, outcome: &str) -> Option<&'a Value> {
    entries
        .iter()
        .find(|e| e["rule"] == rule && e["outcome"] == outcome)
}

/// Every stored trace step and rule set, as text.
fn stored_trace(db: &std::path::Path) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the state file");
    let mut all = String::new();
    for sql in ["SELECT step FROM trace", "SELECT rules FROM rule_sets"] {
        let mut stmt = conn.prepare(sql).expect("query");
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).expect("rows");
        for r in rows {
            all.push_str(&r.expect("row"));
            all.push('\n');
        }
    }
    all
}

#[test]
fn why_explains_every_rule_decision_for_a_chat_without_its_texts() {
    let sim = BlockingSim::start(util::quiet(KEY));
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    fs::create_dir(&rules).expect("rules dir");
    for (name, src) in RULES {
        fs::write(rules.join(name), src).expect("rule");
    }
    let log = dir.path().join("run.err");
    let listen = util::free_addr();
    let _engine = Running::logged(
        util::skyrules_command()
            .env("SKYLIGHT_API_KEY", KEY)
            .current_dir(dir.path())
            .args(["--base-url", &sim.base_url(), "run"])
            .args(["--rules", "rules", "--state", "state.db"])
            .args(["--poll-interval", "200ms", "--listen", &listen]),
        &log,
    );
    let stderr = || fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(LIMIT, || util::http_get(&listen, "/readyz")
            .is_ok_and(|(code, _)| code == 200)),
        "the engine gets ready: {}",
        stderr()
    );
    let chat = util::create(&sim, json!({ "visitor_name": "Asks Why" }));
    sim.visitor_message(&chat, &format!("{MARKER} where is my order?"))
        .expect("visitor message");

    let mut seen = Vec::new();
    assert!(
        wait_until(LIMIT, || {
            seen = entries(dir.path(), &chat);
            find(&seen, "throws", "failed").is_some() && find(&seen, "waits", "not_due").is_some()
        }),
        "why shows the message's decisions: {seen:#?}\n{}",
        stderr()
    );
    let message: Vec<&Value> = seen
        .iter()
        .filter(|e| e["event"] == "visitor_message")
        .collect();
    let outcome = |rule: &str| -> Vec<String> {
        message
            .iter()
            .filter(|e| e["rule"] == rule)
            .map(|e| e["outcome"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(outcome("condition-false"), ["no_action"], "{message:#?}");
    assert_eq!(outcome("shadowed"), ["dry_run"], "{message:#?}");
    assert_eq!(outcome("switched-off"), ["disabled"], "{message:#?}");
    assert_eq!(outcome("throws"), ["failed"], "{message:#?}");
    let failed = find(&seen, "throws", "failed").expect("failed entry");
    let detail = failed["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("throws.rhai:3:") && detail.contains("rule bug"),
        "file:line:column of the throw: {detail}"
    );
    // The timer: due one hour after the message.
    let wait = find(&seen, "waits", "not_due").expect("not_due entry");
    let detail = wait["detail"].as_str().unwrap_or_default();
    let due = detail
        .strip_prefix("unanswered 1h due ")
        .unwrap_or_else(|| panic!("a due time: {detail}"));
    let due = chrono::DateTime::parse_from_rfc3339(due).expect("an RFC 3339 due time");
    let at = chrono::DateTime::parse_from_rfc3339(message[0]["at"].as_str().unwrap())
        .expect("the event's time");
    let ahead = (due - at).num_seconds();
    assert!(
        (3599..=3600).contains(&ahead),
        "due 1h after the message: {ahead}s"
    );
    assert!(
        message
            .iter()
            .all(|e| e["version"].as_str().is_some_and(|v| v.len() == 8)),
        "each entry names its rule file's version: {message:#?}"
    );
    assert_eq!(
        util::count(&sim.requests(), "POST", "/messages"),
        0,
        "the shadow rule reached no endpoint"
    );

    // --rule shows that rule alone; the text form is plain when piped.
    let out = why(dir.path(), &[&chat, "--rule", "throws", "--json"]);
    assert!(out.status.success());
    let only: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        !only.is_empty() && only.iter().all(|e| e["rule"] == "throws"),
        "{only:#?}"
    );
    let out = why(dir.path(), &[&chat]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("visitor_message") && text.contains("throws.rhai:3:"),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "no colour when piped: {text}");

    // The status page serves the same timeline.
    let (code, body) =
        util::http_get(&listen, &format!("/sessions/{chat}.json")).expect("timeline json");
    assert_eq!(code, 200, "{body}");
    let page: Vec<Value> = serde_json::from_str(&body).expect("json");
    assert!(find(&page, "throws", "failed").is_some(), "{body}");

    // Off with the mode line: the next message finds it live, under a new
    // version.
    let shadow_version = find(&seen, "shadowed", "dry_run").unwrap()["version"].clone();
    fs::write(
        rules.join("shadowed.rhai"),
        "on(\"visitor_message\", |ev| ev.reply(\"shadow \" + ev.message.id));",
    )
    .expect("rule");
    assert!(
        wait_until(LIMIT, || util::rule_status(&listen, "shadowed")
            .is_some_and(|r| r["mode"] == "live")),
        "reloaded: {}",
        stderr()
    );
    sim.visitor_message(&chat, &format!("{MARKER} still waiting"))
        .expect("visitor message");
    assert!(
        wait_until(LIMIT, || {
            seen = entries(dir.path(), &chat);
            find(&seen, "shadowed", "acted").is_some()
        }),
        "the reloaded rule acts: {seen:#?}\n{}",
        stderr()
    );
    let acted = find(&seen, "shadowed", "acted").unwrap();
    assert_eq!(acted["detail"], "reply: taken");
    assert_ne!(
        acted["version"], shadow_version,
        "the reload shows as a new version"
    );
    assert!(
        util::agent_texts(&sim, &chat)
            .iter()
            .any(|t| t.starts_with("shadow ")),
        "the reply was sent"
    );

    // Never a message text: not in why's output, nor in the stored trace.
    let all = why(dir.path(), &[&chat, "--json"]);
    assert!(!String::from_utf8_lossy(&all.stdout).contains(MARKER));
    assert!(!String::from_utf8_lossy(&why(dir.path(), &[&chat]).stdout).contains(MARKER));
    assert!(!body.contains(MARKER));
    let stored = stored_trace(&dir.path().join("state.db"));
    assert!(stored.contains("rule bug"), "the trace was read: {stored}");
    assert!(!stored.contains(MARKER), "{stored}");
    assert!(!stored.contains("where is my order"), "{stored}");

    // An unknown session is a clear error.
    let out = why(dir.path(), &["sess_nobody"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("session sess_nobody is not in the state of workspace default"),
        "{err}"
    );
}
