//! `skyrules check` and `skyrules demo`, as a user runs them.

use crate::util;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn skyrules() -> Command {
    util::skyrules_command()
}

fn shipped_rules() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rules"))
}

#[test]
fn check_passes_on_the_shipped_rules() {
    let out = skyrules()
        .arg("check")
        .arg(shipped_rules())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("9 rule(s) ok, 0 with errors"), "{stdout}");
}

#[test]
fn check_reports_a_broken_copy_with_file_line_and_caret() {
    let dir = tempfile::tempdir().unwrap();
    // The rules and the canned replies they send.
    for entry in std::fs::read_dir(shipped_rules()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|x| x == "rhai" || x == "toml") {
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let broken = dir.path().join("escalate-on-request.rhai");
    let text = std::fs::read_to_string(&broken).unwrap();
    // Drop the closing parenthesis of the `on(` call: a typical slip.
    let text = text.replace("});", "};");
    std::fs::write(&broken, text).unwrap();
    std::fs::write(
        dir.path().join("typo.rhai"),
        "on(\"visitor_mesage\", |ev| { ev.take_over(); });\n",
    )
    .unwrap();

    let out = skyrules().arg("check").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("8 rule(s) ok, 2 with errors"), "{stdout}");
    assert!(
        stderr.contains("escalate-on-request.rhai:"),
        "names the file: {stderr}"
    );
    assert!(
        stderr.contains("typo.rhai:1:1: unknown event \"visitor_mesage\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("1 | on(\"visitor_mesage\""),
        "source line: {stderr}"
    );
    assert!(stderr.contains("  | ^"), "caret: {stderr}");
}

#[test]
fn check_on_a_missing_directory_is_a_one_line_user_error() {
    let out = skyrules()
        .args(["check", "/nonexistent/rules"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: rules directory /nonexistent/rules does not exist"));
}

/// The README's first command: within a minute a newcomer sees an
/// escalation and an idle chat being closed, and Ctrl-C exits cleanly.
#[test]
fn demo_shows_an_escalation_and_an_idle_close_then_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("demo.out");
    let mut child = skyrules()
        .arg("demo")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut seen = String::new();
    // Simulated time runs 60x: a 15-minute idle timer takes ~15 s of real
    // time. The bound is generous for a loaded machine; it is not a speed
    // assertion.
    while started.elapsed() < Duration::from_secs(120) {
        seen = std::fs::read_to_string(&out_path).unwrap_or_default();
        if seen.contains("TAKE OVER (escalate to a human) ✓") && seen.contains("END the chat ✓")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "demo did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let seen = std::fs::read_to_string(&out_path).unwrap_or(seen);
    assert!(
        seen.contains("TAKE OVER (escalate to a human) ✓"),
        "no escalation:\n{seen}"
    );
    assert!(seen.contains("END the chat ✓"), "no idle close:\n{seen}");
    assert!(seen.contains("demo stopped:"), "no clean stop:\n{seen}");
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The load benchmark runs end to end and reports every figure (how fast
/// is for BENCHMARKS.md, not for tests).
#[test]
fn bench_reports_cycles_requests_and_reactions() {
    let (stdout, r) = bench(&[
        "--sessions",
        "200",
        "--duration",
        "3s",
        "--poll-interval",
        "300ms",
        "--changed-percent",
        "5",
    ]);
    assert!(stdout.contains("cycle time"), "{stdout}");
    assert_eq!(r["sessions"], 200);
    assert_eq!(r["changed_per_cycle"], 10);
    assert!(r["cycles"].as_u64().unwrap() > 0, "{r}");
    // Two list pages of 100 per poll, and only changed sessions are read.
    assert_eq!(r["list_requests_per_cycle"].as_f64().unwrap(), 2.0, "{r}");
    let reads = r["detail_requests_per_cycle"].as_f64().unwrap();
    assert!(reads > 0.0 && reads < 20.0, "reads only what changed: {r}");
    assert!(r["reaction_ms"]["count"].as_u64().unwrap() > 0, "{r}");
    assert!(r["peak_rss_mib"].as_f64().unwrap() > 0.0, "{r}");
    // The traffic driver's own failures are counted apart from reactions.
    assert_eq!(r["traffic_errors"], 0, "{r}");
    assert_eq!(r["requests_log_truncated"], false, "{r}");
    // A rule file written during the run is seen live.
    assert!(r["hot_reload_ms"]["count"].as_u64().unwrap() >= 1, "{r}");
    // Memory over the run, for growth in a long one.
    let timeline = r["memory_timeline"].as_array().unwrap();
    assert!(!timeline.is_empty(), "{r}");
    assert!(timeline
        .iter()
        .all(|p| p["rss_mib"].as_f64().unwrap() > 0.0));
    assert!(stdout.contains("engine memory over time"), "{stdout}");
}

/// `bench --workspaces` runs one engine per simulated account on one store
/// and reports per workspace-cycle.
#[test]
fn bench_runs_many_workspaces_in_one_process() {
    let (stdout, r) = bench(&[
        "--workspaces",
        "2",
        "--sessions",
        "50",
        "--duration",
        "3s",
        "--poll-interval",
        "300ms",
        "--changed-percent",
        "10",
    ]);
    assert!(stdout.contains("worst workspace's p99"), "{stdout}");
    assert_eq!(r["workspaces"], 2, "{r}");
    assert_eq!(r["store"], "sqlite", "{r}");
    assert!(
        r["cycles"].as_u64().unwrap() >= 2,
        "both workspaces polled: {r}"
    );
    let commits = r["state_commits_per_workspace_cycle"].as_f64().unwrap();
    assert!(commits > 0.0 && commits <= 1.0, "{r}");
    assert_eq!(r["take_overs"], r["human_requests"], "{r}");
}

/// Runs `skyrules bench` with `args` (on SQLite, in a directory of its
/// own) to a successful end; its table and its JSON report.
fn bench(args: &[&str]) -> (String, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = skyrules()
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg(&json)
        .env_remove("SKYRULES_BENCH_STATE_URL")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    (stdout, report)
}
