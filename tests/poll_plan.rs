//! The poll plan (issue: poll planning): a human request is handled by the
//! pending fast lane long before the next full walk, and the walk then
//! fires nothing again for it; a tight request budget stretches the walk
//! and is never exceeded, and a walk it holds up does not hold up a human
//! request; the server's rate-limit headers slow the client
//! before a 429. Real `skyrules run` processes against the simulator over
//! HTTP, counted in the simulator's request log.

use std::fs;
use std::time::Duration;

use serde_json::json;
use skyrules::api::HandledBy;
use skyrules::sim::RequestRecord;

use crate::util::{self, agent_texts, wait_until, BlockingSim, Running};

const KEY: &str = "poll-plan-test-key";
const LIMIT: Duration = Duration::from_secs(60);

const ESCALATE: &str = r#"on("human_requested", |ev| {
    ev.take_over();
    ev.reply("a teammate is coming");
});"#;

fn is_list(r: &RequestRecord) -> bool {
    r.method == "GET" && r.path == "/api/v1/web-chat/sessions"
}

/// Full walks' list requests (the fast lane's carry `handled_by=pending`).
fn walk_pages(sim: &BlockingSim) -> usize {
    sim.requests()
        .iter()
        .filter(|r| is_list(r))
        .filter(|r| {
            !r.query
                .as_deref()
                .unwrap_or("")
                .contains("handled_by=pending")
        })
        .count()
}

fn fast_looks(sim: &BlockingSim) -> usize {
    sim.requests()
        .iter()
        .filter(|r| is_list(r))
        .filter(|r| {
            r.query
                .as_deref()
                .unwrap_or("")
                .contains("handled_by=pending")
        })
        .count()
}

fn take_overs(sim: &BlockingSim) -> usize {
    util::count(&sim.requests(), "POST", "/take-over")
}

/// `skyrules run` in `dir` with `config` as its skyrules.toml.
fn run(dir: &std::path::Path, sim: &BlockingSim, config: &str, listen: &str) -> Running {
    fs::write(dir.join("skyrules.toml"), config).expect("config");
    Running::logged(
        util::skyrules_command()
            .env("SKYLIGHT_API_KEY", KEY)
            .current_dir(dir)
            .args(["--base-url", &sim.base_url(), "run", "--listen", listen]),
        &dir.join("run.err"),
    )
}

fn rules_dir(dir: &std::path::Path) {
    fs::create_dir_all(dir.join("rules")).expect("rules dir");
    fs::write(dir.join("rules/escalate.rhai"), ESCALATE).expect("rule");
}

#[test]
fn a_human_request_is_taken_over_by_the_fast_lane_before_the_next_walk_and_only_once() {
    let sim = BlockingSim::start(util::quiet(KEY));
    let dir = tempfile::tempdir().expect("tempdir");
    rules_dir(dir.path());
    let listen = util::free_addr();
    let config = "[engine]\npoll_interval = \"8s\"\npending_interval = \"200ms\"\nstate_path = \"state.db\"\n";
    let _engine = run(dir.path(), &sim, config, &listen);
    let stderr = || fs::read_to_string(dir.path().join("run.err")).unwrap_or_default();
    let chat = util::create(&sim, json!({ "visitor_name": "In A Hurry" }));
    assert!(
        wait_until(LIMIT, || walk_pages(&sim) >= 1 && fast_looks(&sim) >= 1),
        "the first walk, then the fast lane: {}",
        stderr()
    );
    let walks_before = walk_pages(&sim);
    sim.request_human(&chat).expect("request a human");
    assert!(
        wait_until(LIMIT, || sim
            .session(&chat)
            .is_some_and(|d| d.session.handled_by == HandledBy::Human)),
        "taken over: {}",
        stderr()
    );
    assert_eq!(
        walk_pages(&sim),
        walks_before,
        "taken over by the fast lane, before the next full walk (8 s away)"
    );
    assert_eq!(take_overs(&sim), 1);
    // Two more full walks see the chat unchanged: nothing fires again.
    assert!(
        wait_until(LIMIT, || walk_pages(&sim) >= walks_before + 2),
        "the walk goes on: {}",
        stderr()
    );
    assert_eq!(take_overs(&sim), 1, "the walk took nothing over again");
    assert_eq!(
        agent_texts(&sim, &chat),
        ["a teammate is coming"],
        "one reply, not two"
    );
}

#[test]
fn a_tight_budget_stretches_the_walk_and_is_never_exceeded() {
    let sim = BlockingSim::start(util::quiet(KEY));
    for i in 0..3 {
        util::create(&sim, json!({ "visitor_name": format!("Visitor {i}") }));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    rules_dir(dir.path());
    let listen = util::free_addr();
    // A walk every 200 ms would be 300 requests a minute; the budget is
    // 40, of which 20 stay free for the fast lane (every 6 s) and actions:
    // the walk must come down to one every 3.3 s.
    let config = "[api]\nmax_requests_per_minute = 40\n[engine]\npoll_interval = \"200ms\"\npending_interval = \"6s\"\nstate_path = \"state.db\"\n";
    let _engine = run(dir.path(), &sim, config, &listen);
    let stderr = || fs::read_to_string(dir.path().join("run.err")).unwrap_or_default();
    assert!(
        wait_until(LIMIT, || stderr()
            .contains("cannot pay for the configured intervals")),
        "the log says the walk is stretched: {}",
        stderr()
    );
    let (code, body) = util::http_get(&listen, "/readyz").expect("readyz");
    assert_eq!(code, 200, "a stretched plan is still ready: {body}");
    assert!(
        body.contains("note: api.max_requests_per_minute = 40 cannot pay")
            && body.contains("the full walk runs every 3.3s instead of every 0.2s"),
        "{body}"
    );
    // A human request still gets through, by the fast lane.
    let chat = util::create(&sim, json!({ "visitor_name": "Waiting" }));
    sim.request_human(&chat).expect("request a human");
    assert!(
        wait_until(LIMIT, || take_overs(&sim) == 1),
        "taken over: {}",
        stderr()
    );
    assert!(
        wait_until(LIMIT, || walk_pages(&sim) >= 6),
        "the walk goes on, slower: {}",
        stderr()
    );
    // Walks at least 3 s apart once measured (the first two may be
    // closer: the plan is made from the first walk's cost).
    let walks: Vec<_> = sim
        .requests()
        .into_iter()
        .filter(is_list)
        .filter(|r| {
            !r.query
                .as_deref()
                .unwrap_or("")
                .contains("handled_by=pending")
        })
        .map(|r| r.at)
        .collect();
    for pair in walks[2..].windows(2) {
        let gap = (pair[1] - pair[0]).num_milliseconds();
        assert!(gap >= 3_000, "walks {gap} ms apart: {walks:?}");
    }
    // And never more than 40 requests in any minute of the log.
    let times: Vec<_> = sim
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/api/v1/"))
        .map(|r| r.at)
        .collect();
    let most = times
        .iter()
        .map(|start| {
            times
                .iter()
                .filter(|t| **t >= *start && **t < *start + chrono::Duration::seconds(60))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(most <= 40, "{most} requests in one minute, budget 40");
}

#[test]
fn a_walk_held_up_by_the_budget_does_not_hold_up_a_human_request() {
    let sim = BlockingSim::start(util::quiet(KEY));
    let waiting = util::create(&sim, json!({ "visitor_name": "Will Ask" }));
    let dir = tempfile::tempdir().expect("tempdir");
    rules_dir(dir.path());
    let listen = util::free_addr();
    // 40 a minute: the walk's reads may use 18 of them, the fast lane
    // (every 6 s) and actions all 40.
    let config = "[api]\nmax_requests_per_minute = 40\n[engine]\npoll_interval = \"1s\"\npending_interval = \"6s\"\nstate_path = \"state.db\"\n";
    let _engine = run(dir.path(), &sim, config, &listen);
    let stderr = || fs::read_to_string(dir.path().join("run.err")).unwrap_or_default();
    assert!(
        wait_until(LIMIT, || util::http_get(&listen, "/readyz")
            .is_ok_and(|(code, _)| code == 200)),
        "the baseline: {}",
        stderr()
    );
    // 30 new chats at once: the next walk must read them all, which the
    // budget spreads over minutes.
    let new: Vec<String> = (0..30)
        .map(|i| util::create(&sim, json!({ "visitor_name": format!("New {i}") })))
        .collect();
    let reads_of_new = || {
        sim.requests()
            .iter()
            .filter(|r| r.method == "GET" && new.iter().any(|id| r.path.ends_with(id.as_str())))
            .count()
    };
    assert!(
        wait_until(LIMIT, || reads_of_new() >= 1),
        "the walk starts reading them: {}",
        stderr()
    );
    sim.request_human(&waiting).expect("request a human");
    assert!(
        wait_until(LIMIT, || take_overs(&sim) == 1),
        "taken over: {}",
        stderr()
    );
    let read = reads_of_new();
    assert!(
        read < new.len(),
        "taken over during the walk (the fast lane looked inside it), not after: {read} of {} new chats read",
        new.len()
    );
}

#[test]
fn the_servers_rate_limit_headers_slow_the_client_before_a_429() {
    let sim = BlockingSim::start(util::quiet(KEY));
    for i in 0..50 {
        util::create(&sim, json!({ "visitor_name": format!("Visitor {i}") }));
    }
    // 20 requests per 5 s window: the first start's 51 need three.
    sim.set_rate_limit(Some(20), Duration::from_secs(5));
    let dir = tempfile::tempdir().expect("tempdir");
    rules_dir(dir.path());
    let listen = util::free_addr();
    // No budget of our own: only the server's headers.
    let config =
        "[engine]\npoll_interval = \"1s\"\npending_interval = \"0s\"\nstate_path = \"state.db\"\n";
    let _engine = run(dir.path(), &sim, config, &listen);
    let stderr = || fs::read_to_string(dir.path().join("run.err")).unwrap_or_default();
    assert!(
        wait_until(LIMIT, || util::http_get(&listen, "/readyz")
            .is_ok_and(|(code, _)| code == 200)),
        "the baseline completes within the server's limit: {}",
        stderr()
    );
    assert!(
        sim.requests().len() > 40,
        "the limit was reached: {} requests",
        sim.requests().len()
    );
    assert_eq!(sim.rate_limited(), 0, "no request was refused with a 429");
}
