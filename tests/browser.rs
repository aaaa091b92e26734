//! The status page in a real browser: `skyrules demo` runs the shipped rules
//! against generated traffic, headless Chromium renders `http://ADDR/`, and
//! the rendered DOM shows the tracked sessions and the rules' actions. The
//! screenshot is kept as a test artifact in
//! `target/test-artifacts/status-page.png`.
//!
//! Needs Chromium (`/usr/bin/chromium`, or the path in `CHROMIUM`); CI
//! installs Debian's `chromium` package. Without it the test says so and
//! passes, so a local `cargo test` works anywhere.

use crate::util;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest wait for the demo to show a session and an action.
const TRAFFIC_WAIT: Duration = Duration::from_secs(120);
/// Longest a Chromium run or the demo's exit may take.
const PROCESS_WAIT: Duration = Duration::from_secs(90);

/// Chromium's path, if installed (`CHROMIUM` beats the usual places).
pub(crate) fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Where test artifacts go: `$CARGO_TARGET_DIR/test-artifacts`, else
/// `target/test-artifacts` in the package.
fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("create the artifacts directory");
    dir
}

/// A running `skyrules demo`; killed if the test fails while it runs.
struct Demo {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: PathBuf,
}

impl Demo {
    fn start(tmp: &Path) -> Demo {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let stderr = tmp.join("demo.err");
        let mut child = util::skyrules_command()
            .env("TMPDIR", tmp)
            // The repository's own rules/.
            .current_dir(root)
            .args([
                "demo",
                "--listen",
                "127.0.0.1:0",
                "--rules",
                "rules",
                "--poll-interval",
                "250ms",
                "--rate",
                "2",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn skyrules demo");
        let out = child.stdout.take().expect("stdout");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let lines = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
        Demo {
            child,
            stdout,
            stderr,
        }
    }

    fn output(&self) -> String {
        let out = self.stdout.lock().unwrap().join("\n");
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        format!("--- demo stdout\n{out}\n--- demo stderr\n{err}")
    }

    /// The address from the `status     http://ADDR/` line.
    fn status_addr(&mut self) -> String {
        let deadline = Instant::now() + PROCESS_WAIT;
        loop {
            let found = self.stdout.lock().unwrap().iter().find_map(|l| {
                let rest = l.trim_start().strip_prefix("status")?.trim_start();
                let addr = rest.strip_prefix("http://")?.split('/').next()?;
                Some(addr.to_string())
            });
            if let Some(a) = found {
                return a;
            }
            if let Some(status) = self.child.try_wait().expect("wait") {
                panic!("the demo exited ({status}) early\n{}", self.output());
            }
            if Instant::now() > deadline {
                panic!("the demo printed no status address\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ctrl-C, then the exit status (bounded).
    fn interrupt(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("run kill -INT");
        assert!(sent.success(), "kill -INT {pid}");
        wait_exit(&mut self.child, PROCESS_WAIT)
            .unwrap_or_else(|| panic!("the demo ignored SIGINT\n{}", self.output()))
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs Chromium headless on `url` with `extra` flags; its stdout.
pub(crate) fn run_chromium(chromium: &Path, profile: &Path, extra: &[String], url: &str) -> String {
    let out = profile.with_extension("out");
    let err = profile.with_extension("err");
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1200,1600",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .env("HOME", profile.parent().expect("profile parent"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("chromium stdout"))
        .stderr(std::fs::File::create(&err).expect("chromium stderr"))
        .spawn()
        .expect("spawn chromium");
    let status = wait_exit(&mut child, PROCESS_WAIT).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "chromium {extra:?} did not finish within {PROCESS_WAIT:?}\n{}",
            std::fs::read_to_string(&err).unwrap_or_default()
        )
    });
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(status.success(), "chromium {extra:?}: {status}\n{stderr}");
    std::fs::read_to_string(&out).unwrap_or_default()
}

/// Session ids and action names on the board right now.
fn board(addr: &str) -> Option<(Vec<String>, Vec<String>)> {
    let (status, body) = util::http_get(addr, "/status.json").ok()?;
    if status != 200 {
        return None;
    }
    let all: Value = serde_json::from_str(&body).ok()?;
    let v = &all["workspaces"][0];
    let ids = v["sessions"]
        .as_array()?
        .iter()
        .filter_map(|s| s["session_id"].as_str().map(str::to_string))
        .collect();
    let actions = v["actions"]
        .as_array()?
        .iter()
        .filter_map(|a| a["action"].as_str().map(str::to_string))
        .collect();
    Some((ids, actions))
}

#[test]
fn the_status_page_renders_sessions_and_actions_in_chromium() {
    let Some(chromium) = chromium() else {
        println!(
            "SKIPPED the_status_page_renders_sessions_and_actions_in_chromium: no Chromium at \
             /usr/bin/chromium (or $CHROMIUM); install Debian's `chromium` package to run it"
        );
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut demo = Demo::start(tmp.path());
    let addr = demo.status_addr();

    // Wait until the board has a session and an action to show.
    let deadline = Instant::now() + TRAFFIC_WAIT;
    loop {
        if let Some((ids, actions)) = board(&addr) {
            if !ids.is_empty() && !actions.is_empty() {
                break;
            }
        }
        if let Some(status) = demo.child.try_wait().expect("wait") {
            panic!("the demo exited ({status})\n{}", demo.output());
        }
        if Instant::now() > deadline {
            panic!(
                "no session and action on the board within {TRAFFIC_WAIT:?}: {:?}\n{}",
                board(&addr),
                demo.output()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // The rendered DOM. Chats come and go, so a render that happens to fall
    // between two is retried (bounded); the actions stay listed.
    let url = format!("http://{addr}/");
    let mut attempt = 0;
    let dom = loop {
        attempt += 1;
        let profile = tmp.path().join(format!("profile-dom-{attempt}"));
        let dom = run_chromium(&chromium, &profile, &["--dump-dom".to_string()], &url);
        if dom.contains("sess_") || attempt == 5 {
            break dom;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(
        dom.contains("<h1>skyrules</h1>"),
        "the page rendered:\n{dom}"
    );
    assert!(dom.contains("Active sessions"), "{dom}");
    assert!(dom.contains("Last actions"), "{dom}");
    assert!(dom.contains("sess_"), "a tracked session is listed:\n{dom}");
    let action_row = ["take_over", "reply", "release", "end"]
        .iter()
        .any(|a| dom.contains(&format!("<td>{a}</td>")));
    assert!(action_row, "an action row is listed:\n{dom}");
    assert!(dom.contains("session(s) tracked"), "{dom}");
    for rule in ["escalate-on-request", "escalate-on-keywords"] {
        assert!(dom.contains(rule), "the rules table lists {rule}");
    }

    // The screenshot, kept as an artifact.
    let shot = artifacts_dir().join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &chromium,
        &tmp.path().join("profile-shot"),
        &[format!("--screenshot={}", shot.display())],
        &url,
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("read {shot:?}: {e}"));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let dim = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!(&png[12..16], b"IHDR");
    assert!(
        dim(16) >= 1000 && dim(20) >= 1000,
        "{}x{}",
        dim(16),
        dim(20)
    );
    assert!(
        png.len() > 20_000,
        "a page with content, not a blank: {} bytes",
        png.len()
    );
    println!("screenshot: {}", shot.display());

    // A session's timeline, linked from the page: the session an action
    // was taken on shows that rule's decision.
    assert!(
        dom.contains("href=\"/sessions/sess_"),
        "sessions link to their timelines:\n{dom}"
    );
    let (_, body) = util::http_get(&addr, "/status.json").expect("status.json");
    let all: Value = serde_json::from_str(&body).expect("json");
    let acted = &all["workspaces"][0]["actions"][0];
    let (session, rule) = (
        acted["session_id"].as_str().expect("an action's session"),
        acted["rule"].as_str().expect("an action's rule"),
    );
    let url = format!("http://{addr}/sessions/{session}?workspace=default");
    let dom = run_chromium(
        &chromium,
        &tmp.path().join("profile-timeline"),
        &["--dump-dom".to_string()],
        &url,
    );
    assert!(
        dom.contains(&format!("<code>{session}</code>")),
        "the session's page:\n{dom}"
    );
    assert!(dom.contains("id=\"timeline\""), "a timeline table:\n{dom}");
    let decision = dom
        .split("<tr class=\"decision\">")
        .any(|row| row.contains(&format!("<td>{rule}</td>")) && row.contains(">acted</td>"));
    assert!(decision, "{rule} shows as acted on {session}:\n{dom}");
    let shot = artifacts_dir().join("session-timeline.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(
        &chromium,
        &tmp.path().join("profile-timeline-shot"),
        &[format!("--screenshot={}", shot.display())],
        &url,
    );
    assert!(
        std::fs::read(&shot).is_ok_and(|png| png.starts_with(b"\x89PNG")),
        "a timeline screenshot at {shot:?}"
    );
    println!("screenshot: {}", shot.display());

    let status = demo.interrupt();
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGINT\n{}",
        demo.output()
    );
    let out = demo.output();
    assert!(out.contains("demo stopped:"), "{out}");
    assert!(!out.contains("panicked"), "{out}");
}
