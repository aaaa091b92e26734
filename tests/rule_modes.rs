//! Rule modes (SPEC §8): `mode("shadow");` runs a rule as a dry run while
//! the others act, `mode("off");` stops it, and either takes effect by hot
//! reload. A real `skyrules run` against the simulator over HTTP.

use std::fs;
use std::time::Duration;

use serde_json::json;

use crate::util::{self, agent_texts, logged, wait_until, BlockingSim, Running};

const KEY: &str = "rule-modes-test-key";
const LIMIT: Duration = Duration::from_secs(60);

/// Message sends the simulator received.
fn sends(sim: &BlockingSim) -> usize {
    util::count(&sim.requests(), "POST", "/messages")
}

/// The rule's mode on the status page.
fn mode_shown(listen: &str, rule: &str) -> Option<String> {
    util::rule_status(listen, rule).and_then(|r| r["mode"].as_str().map(str::to_string))
}

const LIVE: &str = r#"on("visitor_message", |ev| ev.reply("live " + ev.message.id));"#;

#[test]
fn a_shadow_rule_sends_nothing_an_off_rule_does_not_run_and_reload_switches_them() {
    let sim = BlockingSim::start(util::quiet(KEY));
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    fs::create_dir(&rules).expect("rules dir");
    let trial = rules.join("trial.rhai");
    fs::write(
        &trial,
        format!("mode(\"shadow\");\n{}", LIVE.replace("live ", "trial ")),
    )
    .expect("rule");
    let log = dir.path().join("run.err");
    let listen = util::free_addr();
    let _engine = Running::logged(
        util::skyrules_command()
            .env("SKYLIGHT_API_KEY", KEY)
            .current_dir(dir.path())
            .args(["--base-url", &sim.base_url(), "--log-format", "json"])
            .args(["--log-level", "skyrules=debug", "run"])
            .args(["--rules", "rules", "--state", "state.db"])
            .args(["--poll-interval", "200ms", "--listen", &listen]),
        &log,
    );
    let stderr = || fs::read_to_string(&log).unwrap_or_default();
    assert!(
        wait_until(LIMIT, || mode_shown(&listen, "trial").as_deref()
            == Some("shadow")),
        "the status page shows the mode: {}",
        stderr()
    );
    let chat = util::create(&sim, json!({ "visitor_name": "Shadowed" }));
    sim.visitor_message(&chat, "hello")
        .expect("visitor message");
    assert!(
        wait_until(LIMIT, || logged(
            &log,
            "dry run: would take action",
            "trial"
        ) == 1),
        "the shadow rule's reply is logged as a dry run: {}",
        stderr()
    );
    assert_eq!(sends(&sim), 0, "a shadow rule reaches no endpoint");
    assert!(agent_texts(&sim, &chat).is_empty());

    // The mode line removed: live at the next message.
    fs::write(&trial, LIVE.replace("live ", "trial ")).expect("rule");
    assert!(
        wait_until(LIMIT, || mode_shown(&listen, "trial").as_deref()
            == Some("live")),
        "reloaded as live: {}",
        stderr()
    );
    sim.visitor_message(&chat, "again")
        .expect("visitor message");
    assert!(
        wait_until(LIMIT, || agent_texts(&sim, &chat).len() == 1),
        "the live rule replies: {}",
        stderr()
    );

    // Off: not run at all, and nothing sent.
    fs::write(
        &trial,
        format!("mode(\"off\");\n{}", LIVE.replace("live ", "trial ")),
    )
    .expect("rule");
    assert!(
        wait_until(LIMIT, || mode_shown(&listen, "trial").as_deref()
            == Some("off")),
        "reloaded as off: {}",
        stderr()
    );
    let before = sends(&sim);
    // A second, live rule proves the message was seen and handled.
    fs::write(rules.join("witness.rhai"), LIVE).expect("rule");
    assert!(
        wait_until(LIMIT, || mode_shown(&listen, "witness").as_deref()
            == Some("live")),
        "{}",
        stderr()
    );
    sim.visitor_message(&chat, "third")
        .expect("visitor message");
    assert!(
        wait_until(LIMIT, || agent_texts(&sim, &chat)
            .iter()
            .any(|t| t.starts_with("live "))),
        "the witness replies: {}",
        stderr()
    );
    assert_eq!(sends(&sim), before + 1, "only the witness sent");
    assert_eq!(
        agent_texts(&sim, &chat)
            .iter()
            .filter(|t| t.starts_with("trial "))
            .count(),
        1,
        "the off rule did not run"
    );
    let metrics = util::http_get(&listen, "/metrics").expect("metrics").1;
    assert!(
        metrics.contains(r#"skyrules_rule_mode{workspace="default",rule="trial",mode="off"} 1"#),
        "{metrics}"
    );
}

#[test]
fn check_lists_modes_and_refuses_an_unknown_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(
        dir.path().join("a.rhai"),
        format!("mode(\"shadow\");\n{LIVE}"),
    )
    .expect("rule");
    fs::write(dir.path().join("b.rhai"), format!("mode(\"of\");\n{LIVE}")).expect("rule");
    let out = util::skyrules_command()
        .current_dir(dir.path())
        .args(["check", "."])
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stdout.contains("a.rhai: mode shadow"), "{stdout}");
    assert!(
        stderr.contains("b.rhai:1:1") && stderr.contains("unknown mode \"of\""),
        "{stderr}"
    );
}
