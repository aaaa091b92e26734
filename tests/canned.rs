//! Canned replies (`replies.toml` next to the rules, `canned("name")` in
//! them), as a user meets them through the binary: `skyrules check` fails
//! a rule naming a reply that is not there and warns about replies no rule
//! uses, `skyrules test` sees the final text, and a running engine sends
//! the text of the file as it is now, edits included.

use std::fs;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::util::{self, agent_texts, wait_until, BlockingSim, Running};

const KEY: &str = "canned-test-key";
/// Bound on every wait: generous for a loaded 2-core machine.
const LIMIT: Duration = Duration::from_secs(60);

const GREET: &str = r#"// greets every visitor message
on("visitor_message", |ev| {
    ev.reply(canned("greeting"));
});
"#;

fn check(dir: &Path) -> Output {
    util::skyrules_command()
        .current_dir(dir)
        .args(["check", "."])
        .stdin(Stdio::null())
        .output()
        .expect("run skyrules check")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Replaces `path` the way editors save: a new file renamed over it, so
/// that a rescan never reads it half written.
fn save(path: &Path, text: &str) {
    let tmp = path.with_file_name(".replies.toml.tmp");
    fs::write(&tmp, text).expect("write");
    fs::rename(&tmp, path).expect("rename");
}

#[test]
fn check_fails_a_rule_naming_a_reply_that_is_not_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("greet.rhai"),
        GREET.replace("greeting", "greetng"),
    )
    .expect("rule");
    fs::write(
        dir.path().join("replies.toml"),
        "greeting = \"Hello {{visitor_name}}\"\napology = \"Sorry\"\n",
    )
    .expect("replies");
    let out = check(dir.path());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(
            "greet.rhai:3:14: unknown canned reply \"greetng\" (./replies.toml has: apology, greeting)"
        ),
        "{stderr}"
    );
    assert!(stdout.contains("0 rule(s) ok, 1 with errors"), "{stdout}");

    // A replies file that does not parse fails too, naming the file and key.
    fs::write(dir.path().join("greet.rhai"), GREET).expect("rule");
    fs::write(dir.path().join("replies.toml"), "greeting = 42\n").expect("replies");
    let out = check(dir.path());
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("replies.toml:1:12: reply \"greeting\" must be a string in quotes"),
        "{stderr}"
    );
}

#[test]
fn check_warns_about_replies_no_rule_uses_unless_a_name_is_computed() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("greet.rhai"), GREET).expect("rule");
    fs::write(
        dir.path().join("replies.toml"),
        "greeting = \"Hello {{visitor_name}}\"\nold-apology = \"Sorry\"\n",
    )
    .expect("replies");
    let out = check(dir.path());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "a warning only: {stdout}{stderr}");
    assert!(
        stderr.contains("warning: ./replies.toml:2: reply \"old-apology\" is not used by any rule"),
        "{stderr}"
    );
    assert!(!stderr.contains("\"greeting\" is not used"), "{stderr}");
    assert!(
        stdout.contains("1 rule(s) ok, 0 with errors, 1 warning(s)"),
        "{stdout}"
    );

    // A name computed at run time may be any reply: said, not warned.
    fs::write(
        dir.path().join("pick.rhai"),
        "on(\"visitor_message\", |ev| ev.reply(canned(ev.get(\"which\") ?? \"greeting\")));\n",
    )
    .expect("rule");
    let out = check(dir.path());
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("is not used"), "{stderr}");
    assert!(
        stderr.contains("note: ./pick.rhai:1:") && stderr.contains("computed name"),
        "{stderr}"
    );
}

#[test]
fn a_scenario_sees_the_final_text_also_when_it_runs_a_subset_of_the_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    fs::create_dir_all(rules.join("tests")).expect("dirs");
    fs::write(rules.join("greet.rhai"), GREET).expect("rule");
    fs::write(
        rules.join("other.rhai"),
        "on(\"visitor_message\", |ev| ev.end());",
    )
    .expect("rule");
    fs::write(
        rules.join("replies.toml"),
        "greeting = \"Hello {{visitor_name}}, how can we help?\"\n",
    )
    .expect("replies");
    fs::write(
        rules.join("tests/greet.toml"),
        r#"
[[scenario]]
name = "a visitor is greeted by name"
rules = ["greet"]

[[scenario.session]]
id = "s1"
visitor_name = "Ahmad"

[[scenario.step]]
visitor = "hello"
expect = ["reply: Hello Ahmad, how can we help?"]
"#,
    )
    .expect("scenarios");
    let out = util::skyrules_command()
        .current_dir(dir.path())
        .args(["test", "rules"])
        .stdin(Stdio::null())
        .output()
        .expect("run skyrules test");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("1 passed, 0 failed"), "{stdout}");
}

/// How many JSON log lines of `log` say `message`.
fn said(log: &Path, message: &str) -> usize {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == message)
        .count()
}

fn engine(sim: &BlockingSim, dir: &Path, log: &Path, listen: &str) -> Running {
    Running::logged(
        util::skyrules_command()
            .env("SKYLIGHT_API_KEY", KEY)
            .current_dir(dir)
            .args(["--base-url", &sim.base_url(), "--log-format", "json", "run"])
            .args(["--rules", "rules", "--state", "state.db"])
            .args(["--poll-interval", "200ms", "--listen", listen]),
        log,
    )
}

#[test]
fn a_running_engine_sends_the_canned_text_and_the_edited_one_after_a_save() {
    let sim = BlockingSim::start(util::quiet(KEY));
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    fs::create_dir(&rules).expect("rules dir");
    fs::write(rules.join("greet.rhai"), GREET).expect("rule");
    let replies = rules.join("replies.toml");
    save(
        &replies,
        "greeting = \"Hello {{visitor_name}}, how can we help?\"\n",
    );
    let log = dir.path().join("run.err");
    let listen = util::free_addr();
    let _engine = engine(&sim, dir.path(), &log, &listen);
    let stderr = || fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(LIMIT, || util::rule_status(&listen, "greet").is_some()),
        "the engine runs: {}",
        stderr()
    );

    let chat = util::create(&sim, json!({ "visitor_name": "Maya" }));
    sim.visitor_message(&chat, "hi").expect("visitor message");
    assert!(
        wait_until(LIMIT, || agent_texts(&sim, &chat).len() == 1),
        "a reply is sent: {}",
        stderr()
    );
    assert_eq!(agent_texts(&sim, &chat), ["Hello Maya, how can we help?"]);

    // Reworded: the next reply uses the new text, with no restart.
    save(&replies, "greeting = \"Welcome back, {{visitor_name}}!\"\n");
    assert!(
        wait_until(LIMIT, || said(&log, "canned replies loaded") >= 2),
        "the edit is picked up: {}",
        stderr()
    );
    sim.visitor_message(&chat, "again")
        .expect("visitor message");
    assert!(
        wait_until(LIMIT, || agent_texts(&sim, &chat).len() == 2),
        "a second reply is sent: {}",
        stderr()
    );
    assert_eq!(agent_texts(&sim, &chat)[1], "Welcome back, Maya!");

    // Broken: reported in the log and on the status page; the previous
    // text is still sent.
    save(&replies, "greeting = \"Unclosed\n");
    assert!(
        wait_until(LIMIT, || util::rule_status(&listen, "replies.toml")
            .is_some_and(|r| r["error"]
                .as_str()
                .is_some_and(|e| e.contains("replies.toml:1:")))),
        "the status page shows the error: {}",
        stderr()
    );
    assert_eq!(
        said(
            &log,
            "canned replies failed to load; the previous replies (if any) stay in use"
        ),
        1,
        "{}",
        stderr()
    );
    sim.visitor_message(&chat, "third")
        .expect("visitor message");
    assert!(
        wait_until(LIMIT, || agent_texts(&sim, &chat).len() == 3),
        "a third reply is sent: {}",
        stderr()
    );
    assert_eq!(agent_texts(&sim, &chat)[2], "Welcome back, Maya!");

    // Fixed without the name the rule uses: the handler fails, saying so,
    // and sends nothing rather than an empty reply.
    save(&replies, "hello = \"Hi\"\n");
    assert!(
        wait_until(LIMIT, || util::rule_status(&listen, "replies.toml")
            .is_none()
            && said(&log, "canned replies loaded") >= 3),
        "the fixed file is loaded: {}",
        stderr()
    );
    sim.visitor_message(&chat, "fourth")
        .expect("visitor message");
    assert!(
        wait_until(LIMIT, || {
            stderr().contains(
            "rules/greet.rhai:3:14: unknown canned reply \\\"greeting\\\" (rules/replies.toml has: hello)"
        )
        }),
        "the rule's error names the reply and what the file has: {}",
        stderr()
    );
    assert_eq!(agent_texts(&sim, &chat).len(), 3, "nothing more was sent");
}
