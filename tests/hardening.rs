//! Hardening against a hostile network and hostile input (issue 15):
//!
//! - the API key never follows a redirect to another host, for `skyrules
//!   run` and `skyrules sessions list` (a real second server records what
//!   reaches it);
//! - a response body of hundreds of MiB is cut at `api.max_body`, the
//!   engine's peak memory stays in tens of MiB, and other chats are served;
//! - the demo's rules live in a private directory nobody can guess;
//! - `skyrules test --junit` writes XML a strict parser accepts, whatever
//!   characters a scenario name or a reply carries;
//! - a rule cannot grow its memory past `engine.max_rule_memory`;
//! - `skyrules sla` takes its window on the clock the state was written
//!   with, so its session and breach counts agree.

use crate::util::{self, wait_until};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use skyrules::api::HandledBy;
use skyrules::sim::{Fault, SimConfig};

const KEY: &str = "sk_live_HARDENING_secret_key_123";
/// The generous limit of every wait on a condition.
const WAIT_LIMIT: Duration = Duration::from_secs(60);

/// A child that is killed when the test ends, whatever happens.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Reaped {
    /// Waits (bounded) for the child to exit; `None` if it is still running.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut status = None;
        wait_until(limit, || {
            status = self.0.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }
}

/// `skyrules run` on `base_url` with the key, one escalation rule, its
/// state in a fresh directory and JSON logs in `run.err` there.
fn spawn_run(base_url: &str) -> (Reaped, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).expect("rules dir");
    std::fs::write(
        rules.join("escalate.rhai"),
        r#"on("human_requested", |ev| { ev.take_over(); });"#,
    )
    .expect("rule");
    let err = dir.path().join("run.err");
    let child = util::skyrules_command()
        .env("SKYLIGHT_API_KEY", KEY)
        .current_dir(dir.path())
        .args([
            "--base-url",
            base_url,
            "--log-format",
            "json",
            "run",
            "--rules",
            "rules",
            "--state",
            "state.db",
            "--poll-interval",
            "200ms",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("spawn skyrules run");
    (Reaped(child), dir)
}

/// A directory holding `rules/NAME.rhai` and `rules/tests/NAME.toml`, as
/// `skyrules test` reads them.
fn rule_and_scenario(name: &str, rule: &str, scenario: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(rules.join("tests")).expect("rules/tests");
    std::fs::write(rules.join(format!("{name}.rhai")), rule).expect("rule");
    std::fs::write(rules.join(format!("tests/{name}.toml")), scenario).expect("scenario");
    dir
}

/// `skyrules test rules` (and `extra`) run in `dir`, to its end.
fn skyrules_test(dir: &Path, extra: &[&str]) -> std::process::Output {
    util::skyrules_command()
        .current_dir(dir)
        .args(["test", "rules"])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run skyrules test")
}

fn read_file(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// 1. Redirects
// ---------------------------------------------------------------------------

/// A plain HTTP/1.1 server on a loopback port that answers every request
/// with `answer(request head)` and records each request's head.
struct RawServer {
    port: u16,
    heads: Arc<Mutex<Vec<String>>>,
}

impl RawServer {
    fn start(answer: impl Fn(&str) -> String + Send + 'static) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                seen.lock().unwrap().push(head.clone());
                let _ = conn.write_all(answer(&head).as_bytes());
            }
        });
        RawServer { port, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

fn http_response(status: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    )
}

/// The request line's path and query (`GET /x?y HTTP/1.1` → `/x?y`).
fn target(head: &str) -> String {
    head.split_whitespace().nth(1).unwrap_or("/").to_string()
}

/// An "evil" server that answers like SkyLight (an empty list, a session),
/// and a "proxy" at the configured base URL that redirects every request
/// there, as a misconfigured proxy or a hijacked name would.
fn redirect_pair() -> (RawServer, RawServer) {
    let evil = RawServer::start(|_| {
        http_response(
            "200 OK",
            "",
            r#"{"success":true,"data":[],"meta":{"current_page":1,"last_page":1}}"#,
        )
    });
    let evil_port = evil.port;
    let proxy = RawServer::start(move |head| {
        http_response(
            "307 Temporary Redirect",
            &format!("Location: http://localhost:{evil_port}{}\r\n", target(head)),
            "",
        )
    });
    (proxy, evil)
}

fn assert_never_saw_the_key(evil: &RawServer) {
    for head in evil.heads() {
        assert!(
            !head.contains(KEY) && !head.to_ascii_lowercase().contains("x-api-key"),
            "the redirect target received the API key:\n{head}"
        );
    }
}

#[test]
fn sessions_list_does_not_follow_a_redirect_with_the_key() {
    let (proxy, evil) = redirect_pair();
    let out = util::skyrules_command()
        .env("SKYLIGHT_API_KEY", KEY)
        .args([
            "--base-url",
            &format!("http://127.0.0.1:{}/api/v1", proxy.port),
            "sessions",
            "list",
            "--json",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run skyrules sessions list");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(!proxy.heads().is_empty(), "the configured server was asked");
    assert_never_saw_the_key(&evil);
    assert!(
        evil.heads().is_empty(),
        "the redirect was followed: {:?}",
        evil.heads()
    );
    // One line that says where it pointed and what to fix, and no key.
    assert!(
        stderr.contains(&format!("localhost:{}", evil.port)),
        "{stderr}"
    );
    assert!(stderr.contains("api.base_url"), "{stderr}");
    assert!(!stderr.contains(KEY), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn run_does_not_follow_a_redirect_with_the_key() {
    let (proxy, evil) = redirect_pair();
    let (mut engine, dir) = spawn_run(&format!("http://127.0.0.1:{}/api/v1", proxy.port));
    let err = dir.path().join("run.err");
    // Fixed: the engine stops at its first poll, as for a wrong key.
    // Broken: it polls the other host, key and all, and keeps running.
    let status = engine.wait_exit(WAIT_LIMIT);
    assert_never_saw_the_key(&evil);
    assert!(
        evil.heads().is_empty(),
        "the redirect was followed: {:?}",
        evil.heads()
    );
    let stderr = read_file(&err);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "skyrules run should stop with a config error; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("localhost:{}", evil.port)),
        "{stderr}"
    );
    assert!(stderr.contains("api.base_url"), "{stderr}");
    assert!(!stderr.contains(KEY), "{stderr}");
}

// ---------------------------------------------------------------------------
// 2. Bounded bodies
// ---------------------------------------------------------------------------

/// The peak resident memory (`VmHWM`) of a running process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn a_body_of_hundreds_of_mib_is_cut_at_the_cap_and_other_chats_are_served() {
    if !Path::new("/proc/self/status").exists() {
        eprintln!("skipped: no /proc to read the engine's peak memory from");
        return;
    }
    let sim = util::BlockingSim::start(SimConfig {
        clock_speed: 1.0,
        ..util::quiet(KEY)
    });
    let huge = util::create(&sim, json!({"visitor_name": "Huge"}));
    let others: Vec<String> = (0..3)
        .map(|i| util::create(&sim, json!({"visitor_name": format!("Other {i}")})))
        .collect();
    // Every read of this one chat streams 512 MiB with no Content-Length.
    sim.add_fault(Fault {
        method: Some("GET".into()),
        path_contains: Some(format!("/sessions/{huge}")),
        oversized_mib: 512,
        times: None,
        ..Fault::default()
    })
    .expect("install the fault");

    let (mut engine, dir) = spawn_run(&sim.base_url());
    let err = dir.path().join("run.err");
    let pid = engine.0.id();

    // The baseline is taken (its cycle is over once a later poll lists
    // again: the start-up probe, the baseline, the next poll); then
    // everyone asks for a human. A request made during the baseline would
    // be taken as it is, firing nothing.
    assert!(
        wait_until(WAIT_LIMIT, || util::count(
            &sim.requests(),
            "GET",
            "/sessions"
        ) >= 3),
        "the engine never polled; stderr:\n{}",
        read_file(&err)
    );
    sim.request_human(&huge).expect("request human");
    for id in &others {
        sim.request_human(id).expect("request human");
    }
    let served = wait_until(WAIT_LIMIT, || {
        others.iter().all(|id| {
            sim.session(id)
                .is_some_and(|d| d.session.handled_by == HandledBy::Human)
        })
    });
    // Several reads of the huge body, each cut at the cap.
    let cut = wait_until(WAIT_LIMIT, || {
        sim.requests()
            .iter()
            .filter(|r| r.fault.as_deref() == Some("oversized"))
            .count()
            >= 3
    });
    let peak = peak_rss_kib(pid).expect("the engine's VmHWM");
    assert!(
        engine.0.try_wait().ok().flatten().is_none(),
        "the engine exited; stderr:\n{}",
        read_file(&err)
    );
    let stderr = read_file(&err);
    assert!(served, "the other chats were not taken over:\n{stderr}");
    assert!(
        cut,
        "the huge session was not read again and again:\n{stderr}"
    );
    eprintln!(
        "engine peak resident memory while served 512 MiB bodies: {:.1} MiB",
        peak as f64 / 1024.0
    );
    assert!(
        peak < 100 * 1024,
        "peak resident memory {} KiB: the body was not cut at the cap",
        peak
    );
    assert!(
        stderr.contains("api.max_body"),
        "the log says which setting cut the body:\n{stderr}"
    );
    assert_ne!(
        sim.session(&huge).map(|d| d.session.handled_by),
        Some(HandledBy::Human),
        "a chat whose detail cannot be read is not acted on"
    );
}

// ---------------------------------------------------------------------------
// 3. Private scratch directories
// ---------------------------------------------------------------------------

#[cfg(unix)]
#[test]
fn the_demo_writes_its_rules_to_a_private_unguessable_directory() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let child = util::skyrules_command()
        .env("TMPDIR", tmp.path())
        .current_dir(tmp.path())
        .args([
            "demo",
            "--rules",
            "no-such-rules-dir",
            "--for",
            "60s",
            "--no-listen",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn skyrules demo");
    let mut demo = Reaped(child);
    let pid = demo.0.id();
    let stdout = demo.0.stdout.take().expect("stdout");
    let mut dir = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(rest) = line.trim_start().strip_prefix("rules ") {
            if let Some((_, path)) = rest.split_once(" from ") {
                dir = Some(PathBuf::from(
                    path.trim_end_matches(" (built-in copies)").trim(),
                ));
                break;
            }
        }
    }
    let dir = dir.expect("the demo names its rules directory");
    let meta = std::fs::metadata(&dir).expect("the rules directory exists while the demo runs");
    assert!(meta.is_dir());
    assert!(
        dir.starts_with(tmp.path()),
        "{} is not under TMPDIR",
        dir.display()
    );
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o700,
        "{} is readable or writable by others",
        dir.display()
    );
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        !name.contains(&pid.to_string()),
        "{name} is derived from the process id, so another user can create it first"
    );
}

// ---------------------------------------------------------------------------
// 5. JUnit output that a strict XML parser accepts
// ---------------------------------------------------------------------------

#[test]
fn junit_output_parses_whatever_characters_names_and_replies_carry() {
    let python = ["python3", "python"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok());
    let Some(python) = python else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have Python to check JUnit output"
        );
        eprintln!("skipped: no python3 to parse the JUnit XML with");
        return;
    };
    // A reply with an escape sequence and a vertical tab, a name with a
    // form feed and a NUL: legal in Rhai and TOML, forbidden in XML 1.0.
    let dir = rule_and_scenario(
        "greet",
        "on(\"visitor_message\", |ev| { ev.reply(\"Hi \\x1b[1mthere\\x0b <&> \\uFFFE!\"); });",
        r#"
[[scenario]]
name = "greets \f politely \u0000 <fast> & \"well\""
[[scenario.session]]
id = "s1"
[[scenario.step]]
visitor = "hello"
expect = ["reply: something else"]

[[scenario]]
name = "passes"
[[scenario.session]]
id = "s1"
[[scenario.step]]
advance = "1m"
expect = []
"#,
    );
    let report = dir.path().join("report.xml");
    let out = skyrules_test(dir.path(), &["--junit", "report.xml"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "one scenario fails: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Python's expat is a conforming XML 1.0 parser, as JUnit consumers use.
    let check = r#"
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
cases = root.findall("./testsuite/testcase")
print(len(cases))
for c in cases:
    f = c.find("failure")
    print(repr(c.get("name")), "failure" if f is not None else "ok", repr(f.text if f is not None else ""))
"#;
    let parsed = Command::new(python)
        .arg("-c")
        .arg(check)
        .arg(&report)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&parsed.stdout);
    assert!(
        parsed.status.success(),
        "the JUnit file does not parse:\n{}\n{}",
        String::from_utf8_lossy(&parsed.stderr),
        read_file(&report)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "2", "{stdout}");
    assert!(
        lines[1].starts_with(r#"'greets  politely  <fast> & "well"' failure"#),
        "{stdout}"
    );
    assert!(lines[1].contains("Hi [1mthere <&> !"), "{stdout}");
    assert!(lines[2].starts_with("'passes' ok"), "{stdout}");
}

// ---------------------------------------------------------------------------
// 6. Bounded rule memory
// ---------------------------------------------------------------------------

#[test]
fn a_rule_cannot_grow_its_memory_past_the_limit() {
    // Each visitor message stores 25 KiB more under a new key; the third
    // would pass 64 KiB and fails, replying nothing.
    let dir = rule_and_scenario(
        "hoard",
        r#"
on("visitor_message", |ev| {
    let n = ev.get("n");
    if n == () { n = 0; }
    let blob = "abcdefghijklmnopqrstuvwxy";
    while blob.len() < 25000 { blob += blob; }
    ev.set("n", n + 1);
    ev.set("blob" + n, blob);
    ev.reply("stored " + (n + 1));
});
"#,
        r#"
[[scenario]]
name = "memory is bounded"
[[scenario.session]]
id = "s1"
[[scenario.step]]
visitor = "one"
expect = ["reply: stored 1"]
[[scenario.step]]
visitor = "two"
expect = ["reply: stored 2"]
[[scenario.step]]
visitor = "three"
expect = ["reply: stored 3"]
"#,
    );
    let out = skyrules_test(dir.path(), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    // Steps one and two pass; step three fails in the handler, with the
    // rule's file and position and the limit named.
    assert!(stdout.contains("step 3"), "{stdout}");
    assert!(!stdout.contains("step 2"), "{stdout}");
    assert!(stdout.contains("hoard.rhai:"), "{stdout}");
    assert!(stdout.contains("engine.max_rule_memory"), "{stdout}");
    assert!(stdout.contains("65536"), "{stdout}");

    // The limit is configurable: raised, all three steps pass.
    std::fs::write(
        dir.path().join("skyrules.toml"),
        "[engine]\nmax_rule_memory = \"1MiB\"\n",
    )
    .expect("config");
    let out = skyrules_test(dir.path(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

// ---------------------------------------------------------------------------
// 7. The SLA window on the state's clock
// ---------------------------------------------------------------------------

#[test]
fn the_sla_window_is_taken_on_the_clock_the_state_was_written_with() {
    use skyrules::store::{Batch, Intent, SqliteStore, Store};
    // The state was written by an engine watching a server whose clock runs
    // 40 days ahead of this machine's (the simulator's fast clock does).
    let ahead = chrono::Utc::now() + chrono::Duration::days(40);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path).expect("open state");
    let mut batch = Batch {
        at: ahead,
        baselined: true,
        ..Batch::default()
    };
    // Ten sessions over the server's last five days, each with a breach.
    for i in 0..10i64 {
        let created = ahead - chrono::Duration::hours(12 * i + 1);
        let detail: skyrules::api::SessionDetail = serde_json::from_value(json!({
            "session_id": format!("s{i}"),
            "status": "active",
            "handled_by": "ai",
            "created_at": skyrules::api::format_ts(&created),
            "last_activity_at": skyrules::api::format_ts(&created),
            "messages": [],
        }))
        .expect("session");
        let (tracked, _) = skyrules::tracking::diff(None, detail, true);
        batch.save(tracked, false);
        let intent = Intent {
            key: format!("s{i}|idle|900000ms@{}|sla|0", created.timestamp_micros()),
            at: created + chrono::Duration::minutes(15),
            rule: "close-idle".into(),
            session_id: format!("s{i}"),
            event: "idle".into(),
            action: "end".into(),
            text: None,
        };
        store.begin_action(&intent, None).expect("intent");
        store
            .finish_action(&intent.key, "taken", None)
            .expect("outcome");
    }
    store.commit(&batch).expect("commit");
    drop(store);

    let out = util::skyrules_command()
        .current_dir(dir.path())
        .args(["sla", "--state", "state.db", "--since", "7d", "--json"])
        .stdin(Stdio::null())
        .output()
        .expect("run skyrules sla");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let breaches: u64 = report["breaches_by_rule"]
        .as_array()
        .expect("breaches_by_rule")
        .iter()
        .map(|b| b["total"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(report["sessions"], 10, "{report:#}");
    assert_eq!(breaches, 10, "{report:#}");
}
