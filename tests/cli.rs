//! The `skyrules` binary against an in-process simulator: `sessions …` and
//! `analytics` do what they say, and bad input ends in one `error:` line and
//! the right exit code, never a panic.

use crate::util;

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skyrules::api::{HandledBy, SenderType, SessionStatus};
use util::{count, create, create_many};

const KEY: &str = "sk_test_cli_SECRET_42";

type Sim = util::BlockingSim;

fn sim() -> Sim {
    Sim::start(util::quiet(KEY))
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// What to run: arguments, the key in the environment, stdin, and files to
/// put in the (otherwise empty) working directory.
#[derive(Default)]
struct Opts<'a> {
    key: Option<&'a str>,
    stdin: Option<&'a str>,
    files: &'a [(&'a str, &'a str)],
    env: &'a [(&'a str, &'a str)],
}

fn with_key() -> Opts<'static> {
    Opts {
        key: Some(KEY),
        ..Opts::default()
    }
}

/// Runs the binary in a fresh temp dir with a clean environment; gives up
/// (and fails) after 30 s.
fn skyrules(args: &[&str], opts: Opts) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text) in opts.files {
        std::fs::write(dir.path().join(name), text).expect("write file");
    }
    let out_path = dir.path().join("stdout.txt");
    let err_path = dir.path().join("stderr.txt");
    let mut cmd = util::skyrules_command();
    cmd.current_dir(dir.path())
        .args(args)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .stdin(if opts.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    // A panic would print a backtrace; the tests below check there is none.
    cmd.env("RUST_BACKTRACE", "1");
    if let Some(k) = opts.key {
        cmd.env("SKYLIGHT_API_KEY", k);
    }
    cmd.envs(opts.env.iter().copied());
    let mut child = cmd.spawn().expect("spawn skyrules");
    if let Some(input) = opts.stdin {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("skyrules {args:?} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let run = Run {
        code: status.code(),
        stdout: read(&out_path),
        stderr: read(&err_path),
    };
    assert!(
        !run.stdout.contains(KEY) && !run.stderr.contains(KEY),
        "the API key was printed: {run:?}"
    );
    run
}

fn ok(run: &Run) {
    assert_eq!(run.code, Some(0), "{run:?}");
}

fn json_out(run: &Run) -> Value {
    ok(run);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {run:?}"))
}

/// One `error:` line on stderr, exit `code`, no panic or backtrace, and every
/// `needle` in the message.
fn fails(run: &Run, code: i32, needles: &[&str]) {
    assert_eq!(run.code, Some(code), "{run:?}");
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr: {run:?}");
    assert!(lines[0].starts_with("error:"), "{run:?}");
    for bad in ["panicked", "RUST_BACKTRACE", "backtrace", "internal error"] {
        assert!(!run.stderr.contains(bad), "{bad}: {run:?}");
    }
    for needle in needles {
        assert!(lines[0].contains(needle), "expected {needle:?}: {run:?}");
    }
}

// ---------------------------------------------------------------------------
// Commands that work
// ---------------------------------------------------------------------------

#[test]
fn sessions_list_all_json_returns_every_session_across_pages() {
    let sim = sim();
    let mut created = create_many(&sim, 130);
    created.sort();
    let url = sim.base_url();

    let v = json_out(&skyrules(
        &["--base-url", &url, "sessions", "list", "--all", "--json"],
        with_key(),
    ));
    let mut ids: Vec<String> = v
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|s| s["session_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids.len(), 130, "each session exactly once");
    assert_eq!(ids, created);
    assert_eq!(count(&sim.requests(), "GET", "/web-chat/sessions"), 2);

    // Without --all: one page, of the requested size.
    let first = json_out(&skyrules(
        &["--base-url", &url, "sessions", "list", "--json"],
        with_key(),
    ));
    assert_eq!(
        first.as_array().unwrap().len(),
        25,
        "the API's default page"
    );
    let page2 = json_out(&skyrules(
        &[
            "--base-url",
            &url,
            "sessions",
            "list",
            "--per-page",
            "7",
            "--page",
            "2",
            "--json",
        ],
        with_key(),
    ));
    assert_eq!(page2.as_array().unwrap().len(), 7);
}

#[test]
fn sessions_list_filters_and_prints_a_table() {
    let sim = sim();
    let ended = create(
        &sim,
        json!({"visitor_name": "Zed Ended", "status": "ended"}),
    );
    let human = create(&sim, json!({"visitor_name": "Hana", "handled_by": "human"}));
    let url = sim.base_url();

    let run = skyrules(
        &["--base-url", &url, "sessions", "list", "--status", "ended"],
        with_key(),
    );
    ok(&run);
    assert!(run.stdout.contains(&ended), "{run:?}");
    assert!(run.stdout.contains("Zed Ended"), "{run:?}");
    assert!(!run.stdout.contains(&human), "{run:?}");

    let v = json_out(&skyrules(
        &[
            "--base-url",
            &url,
            "sessions",
            "list",
            "--handled-by",
            "human",
            "--search",
            "hana",
            "--json",
        ],
        with_key(),
    ));
    let ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [human.as_str()]);
}

#[test]
fn sessions_show_prints_the_transcript() {
    let sim = sim();
    let id = create(
        &sim,
        json!({"visitor_name": "Ahmad", "visitor_email": "ahmad@example.com", "messages": [
            {"sender_type": "visitor", "text": "Hello! I'd like to know about pricing."},
            {"sender_type": "bot", "text": "Hi! Our pricing starts at $29/month."}
        ]}),
    );
    let run = skyrules(
        &["--base-url", &sim.base_url(), "sessions", "show", &id],
        with_key(),
    );
    ok(&run);
    let out = &run.stdout;
    assert!(out.contains(&id), "{run:?}");
    assert!(out.contains("Ahmad"), "{run:?}");
    let visitor = out
        .find("Hello! I'd like to know about pricing.")
        .unwrap_or_else(|| panic!("visitor text missing: {run:?}"));
    let bot = out
        .find("Hi! Our pricing starts at $29/month.")
        .unwrap_or_else(|| panic!("bot text missing: {run:?}"));
    assert!(visitor < bot, "oldest first: {run:?}");

    let v = json_out(&skyrules(
        &[
            "--base-url",
            &sim.base_url(),
            "sessions",
            "show",
            &id,
            "--json",
        ],
        with_key(),
    ));
    assert_eq!(v["session_id"], id.as_str());
    assert_eq!(v["messages"].as_array().unwrap().len(), 2);
}

#[test]
fn sessions_send_delivers_and_show_contains_it() {
    let sim = sim();
    let id = create(&sim, json!({"visitor_name": "Ahmad"}));
    let url = sim.base_url();
    let text = "Hi Ahmad! I'm a live agent. How can I help you today?";
    let run = skyrules(
        &["--base-url", &url, "sessions", "send", &id, text],
        with_key(),
    );
    ok(&run);
    let d = sim.session(&id).unwrap();
    assert_eq!(d.messages.len(), 1, "sent exactly once");
    assert_eq!(d.messages[0].sender_type, SenderType::Agent);
    assert_eq!(d.messages[0].text(), text);

    let run = skyrules(&["--base-url", &url, "sessions", "show", &id], with_key());
    ok(&run);
    assert!(run.stdout.contains(text), "{run:?}");
}

#[test]
fn sessions_send_dash_reads_the_message_from_stdin() {
    let sim = sim();
    let id = create(&sim, json!({}));
    let run = skyrules(
        &["--base-url", &sim.base_url(), "sessions", "send", &id, "-"],
        Opts {
            stdin: Some("First line from stdin\nsecond line\n"),
            ..with_key()
        },
    );
    ok(&run);
    let d = sim.session(&id).unwrap();
    assert_eq!(d.messages.len(), 1);
    assert_eq!(d.messages[0].text(), "First line from stdin\nsecond line");
    assert_eq!(d.messages[0].sender_type, SenderType::Agent);
}

#[test]
fn take_over_release_and_end_change_state() {
    let sim = sim();
    let id = create(&sim, json!({"visitor_name": "Ahmad"}));
    let url = sim.base_url();
    let state = || sim.session(&id).unwrap().session;

    ok(&skyrules(
        &["--base-url", &url, "sessions", "take-over", &id],
        with_key(),
    ));
    assert_eq!(state().handled_by, HandledBy::Human);
    assert!(state().human_took_over_at.is_some());

    let v = json_out(&skyrules(
        &["--base-url", &url, "sessions", "release", &id, "--json"],
        with_key(),
    ));
    assert_eq!(v["session_id"], id.as_str());
    assert_eq!(state().handled_by, HandledBy::Ai);

    ok(&skyrules(
        &["--base-url", &url, "sessions", "end", &id],
        with_key(),
    ));
    assert_eq!(state().status, SessionStatus::Ended);

    // Sending to the ended session is the user's problem: exit 1, one line.
    let run = skyrules(
        &["--base-url", &url, "sessions", "send", &id, "still there?"],
        with_key(),
    );
    fails(&run, 1, &["ended"]);
    assert!(sim.session(&id).unwrap().messages.is_empty());
}

#[test]
fn analytics_json_is_machine_readable() {
    let sim = sim();
    create(
        &sim,
        json!({"messages": [{"sender_type": "visitor", "text": "hi"}]}),
    );
    create(&sim, json!({"status": "ended"}));
    create(&sim, json!({}));
    let url = sim.base_url();
    let v = json_out(&skyrules(
        &["--base-url", &url, "analytics", "--json"],
        with_key(),
    ));
    assert_eq!(v["total_chats"], 3, "{v}");
    assert_eq!(v["active_chats"], 2, "{v}");
    assert_eq!(v["completed_chats"], 1, "{v}");
    assert_eq!(v["visitor_messages"], 1, "{v}");
    let v = json_out(&skyrules(
        &[
            "--base-url",
            &url,
            "analytics",
            "--period",
            "year",
            "--json",
        ],
        with_key(),
    ));
    assert_eq!(v["total_chats"], 3, "{v}");
    assert!(sim
        .requests()
        .iter()
        .any(|r| r.query.as_deref() == Some("period=year")));

    let run = skyrules(&["--base-url", &url, "analytics"], with_key());
    ok(&run);
    assert!(run.stdout.contains("total chats"), "{run:?}");
}

#[test]
fn settings_come_from_file_then_environment_then_flags() {
    let sim = sim();
    let url = sim.base_url();
    let dead = util::dead_base_url();
    let id = create(&sim, json!({}));
    // The key from `api.api_key_file` (with the newline editors leave), and
    // the base URL from ./skyrules.toml.
    let config = format!("[api]\nbase_url = \"{url}\"\napi_key_file = \"key.txt\"\n");
    let key_file = format!("{KEY}\n");
    let files = [
        ("skyrules.toml", config.as_str()),
        ("key.txt", key_file.as_str()),
    ];
    let v = json_out(&skyrules(
        &["sessions", "list", "--json"],
        Opts {
            files: &files,
            ..Opts::default()
        },
    ));
    assert_eq!(v[0]["session_id"], id.as_str());

    // SKYRULES_BASE_URL beats the file; --base-url beats both.
    let dead_file = format!("[api]\nbase_url = \"{dead}\"\nmax_attempts = 1\n");
    let files = [("skyrules.toml", dead_file.as_str())];
    let run = skyrules(
        &["sessions", "list", "--json"],
        Opts {
            files: &files,
            env: &[("SKYRULES_BASE_URL", &url)],
            ..with_key()
        },
    );
    ok(&run);
    let run = skyrules(
        &["--base-url", &url, "sessions", "list", "--json"],
        Opts {
            files: &files,
            env: &[("SKYRULES_BASE_URL", &dead)],
            ..with_key()
        },
    );
    ok(&run);
    let run = skyrules(
        &["sessions", "list"],
        Opts {
            files: &files,
            ..with_key()
        },
    );
    fails(&run, 2, &[]);
}

// ---------------------------------------------------------------------------
// Bad input: one clear line, the right exit code, no panic
// ---------------------------------------------------------------------------

#[test]
fn wrong_key_exits_1_and_names_the_setting() {
    let sim = sim();
    let wrong = "sk_live_WRONG_cli_999";
    let run = skyrules(
        &["--base-url", &sim.base_url(), "sessions", "list"],
        Opts {
            key: Some(wrong),
            ..Opts::default()
        },
    );
    fails(&run, 1, &["SKYLIGHT_API_KEY"]);
    assert!(!run.stderr.contains(wrong), "{run:?}");
}

#[test]
fn unknown_session_exits_1() {
    let sim = sim();
    let url = sim.base_url();
    let run = skyrules(
        &["--base-url", &url, "sessions", "show", "sess_nope"],
        with_key(),
    );
    fails(&run, 1, &["sess_nope"]);
    let run = skyrules(
        &["--base-url", &url, "sessions", "take-over", "sess_nope"],
        with_key(),
    );
    fails(&run, 1, &[]);
}

#[test]
fn unreachable_server_exits_2() {
    let dead = util::dead_base_url();
    let config = "[api]\nmax_attempts = 1\ntimeout = \"2s\"\n";
    let started = Instant::now();
    let run = skyrules(
        &[
            "--config",
            "fast.toml",
            "--base-url",
            &dead,
            "sessions",
            "list",
        ],
        Opts {
            files: &[("fast.toml", config)],
            ..with_key()
        },
    );
    fails(&run, 2, &[]);
    assert!(started.elapsed() < Duration::from_secs(15), "{run:?}");
}

#[test]
fn malformed_config_exits_1_naming_file_and_line() {
    let sim = sim();
    let run = skyrules(
        &[
            "--config",
            "broken.toml",
            "--base-url",
            &sim.base_url(),
            "analytics",
        ],
        Opts {
            files: &[("broken.toml", "[api]\nmax_attempts = \n")],
            ..with_key()
        },
    );
    fails(&run, 1, &["broken.toml", ":2"]);
    assert!(sim.requests().is_empty());
}

#[test]
fn unknown_config_key_exits_1_naming_the_key() {
    let run = skyrules(
        &["--config", "typo.toml", "analytics"],
        Opts {
            files: &[("typo.toml", "[engine]\nwhatever = 1\n")],
            ..with_key()
        },
    );
    fails(&run, 1, &["engine.whatever", "typo.toml"]);

    // ./skyrules.toml is read when --config is not given.
    let run = skyrules(
        &["analytics"],
        Opts {
            files: &[("skyrules.toml", "[api]\nbase_urll = \"http://x\"\n")],
            ..with_key()
        },
    );
    fails(&run, 1, &["api.base_urll", "skyrules.toml"]);
}

#[test]
fn missing_api_key_exits_1_naming_the_variable() {
    let sim = sim();
    let run = skyrules(
        &["--base-url", &sim.base_url(), "sessions", "list"],
        Opts::default(),
    );
    fails(&run, 1, &["SKYLIGHT_API_KEY"]);
    assert!(sim.requests().is_empty());
}

#[test]
fn bad_arguments_are_refused_before_any_request() {
    let sim = sim();
    let url = sim.base_url();
    let id = create(&sim, json!({}));

    let run = skyrules(
        &["--base-url", &url, "sessions", "list", "--per-page", "101"],
        with_key(),
    );
    assert_ne!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.starts_with("error:"), "{run:?}");
    assert!(run.stderr.contains("101"), "{run:?}");
    assert!(!run.stderr.contains("panicked"), "{run:?}");

    // An empty message from stdin, and an over-long one.
    let run = skyrules(
        &["--base-url", &url, "sessions", "send", &id, "-"],
        Opts {
            stdin: Some("\n"),
            ..with_key()
        },
    );
    fails(&run, 1, &["empty"]);
    let long = "x".repeat(4097);
    let run = skyrules(
        &["--base-url", &url, "sessions", "send", &id, &long],
        with_key(),
    );
    fails(&run, 1, &["4096"]);

    // The key is never taken from a flag (it would show in `ps`).
    let run = skyrules(
        &[
            "--base-url",
            &url,
            "--api-key",
            "sk_flag_value",
            "sessions",
            "list",
        ],
        Opts::default(),
    );
    assert_ne!(run.code, Some(0), "{run:?}");

    assert!(sim.requests().is_empty(), "{:?}", sim.requests());
}
