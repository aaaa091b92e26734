//! Hot reload of a rules directory mounted from a Kubernetes ConfigMap:
//! `skyrules run` against the simulator, with the directory laid out and
//! updated the way the kubelet's AtomicWriter does it. The `NAME.rhai`
//! entries are symlinks through `..data`; an update writes a new
//! `..<timestamp>` directory, renames `..data_tmp` over `..data`, links
//! keys added, unlinks keys removed and deletes the old directory. Each key
//! runs once, a swap that changes only what `..data` points to is picked up
//! (the new version answers, the old one never again), and a key added or
//! removed adds or removes its rule.

#![cfg(unix)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::util::{self, agent_texts, logged, wait_until, BlockingSim, Running};

const KEY: &str = "configmap-test-key";
/// The generous limit of every wait on a condition.
const LIMIT: Duration = Duration::from_secs(60);

/// Publishes `files` (key, content) as version `n` of the ConfigMap mounted
/// at `dir`, in the kubelet's order: the files in a new `..<timestamp>`
/// directory, `..data_tmp` pointing at it renamed over `..data` (the atomic
/// step), a top-level link for each key added, the links of keys removed
/// deleted, and the previous version's directory deleted.
fn publish(dir: &Path, n: u32, files: &[(&str, String)]) {
    let version = format!("..2026_12_01_10_00_{n:02}.123456789");
    fs::create_dir(dir.join(&version)).expect("version dir");
    for (name, text) in files {
        fs::write(dir.join(&version).join(name), text).expect("key file");
    }
    let previous = fs::read_link(dir.join("..data")).ok();
    symlink(&version, dir.join("..data_tmp")).expect("..data_tmp");
    fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap ..data");
    for (name, _) in files {
        if dir.join(name).symlink_metadata().is_err() {
            symlink(Path::new("..data").join(name), dir.join(name)).expect("key link");
        }
    }
    for entry in fs::read_dir(dir).expect("read the volume") {
        let name = entry.expect("entry").file_name();
        let name = name.to_string_lossy();
        if !name.starts_with("..") && !files.iter().any(|(f, _)| *f == name) {
            fs::remove_file(dir.join(&*name)).expect("unlink a removed key");
        }
    }
    if let Some(old) = previous {
        fs::remove_dir_all(dir.join(old)).expect("delete the old version");
    }
}

fn replier(text: &str) -> String {
    format!(r#"on("visitor_message", |ev| ev.reply("{text}"));"#)
}

fn escalation(text: &str) -> String {
    format!(r#"on("human_requested", |ev| ev.reply("{text}"));"#)
}

/// Successful polls of the chat list so far.
fn polls(sim: &BlockingSim) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/web-chat/sessions") && r.status == 200)
        .count()
}

/// The ids of the running rules on the status page, sorted.
fn running_rules(listen: &str) -> Vec<String> {
    let Ok((200, body)) = util::http_get(listen, "/status.json") else {
        return Vec::new();
    };
    let board: Value = serde_json::from_str(&body).unwrap_or_default();
    let mut ids: Vec<String> = board["workspaces"][0]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["running"] == true)
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

#[test]
fn hot_reload_follows_a_configmap_swap_of_data() {
    let sim = BlockingSim::start(util::quiet(KEY));
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    fs::create_dir(&rules).expect("rules dir");
    publish(
        &rules,
        1,
        &[
            ("old.rhai", escalation("old escalation")),
            ("reply.rhai", replier("v1")),
        ],
    );
    let log = dir.path().join("run.err");
    let listen = util::free_addr();
    let _engine = Running::logged(
        util::skyrules_command()
            .env("SKYLIGHT_API_KEY", KEY)
            .current_dir(dir.path())
            .args(["--base-url", &sim.base_url(), "--log-format", "json", "run"])
            .args(["--rules", "rules", "--state", "state.db"])
            .args(["--poll-interval", "200ms", "--listen", &listen]),
        &log,
    );
    let stderr = || fs::read_to_string(&log).unwrap_or_default();

    // Its start-up probe, its baseline and one poll after: a chat opened
    // now is new to it.
    assert!(
        wait_until(LIMIT, || polls(&sim) >= 3),
        "the engine polls: {}",
        stderr()
    );
    // One rule per key: the hidden `..data` and `..<timestamp>`
    // directories are not loaded a second time.
    assert_eq!(running_rules(&listen), ["old", "reply"], "{}", stderr());
    assert_eq!(logged(&log, "rule loaded", "reply"), 1, "{}", stderr());
    assert_eq!(logged(&log, "rule loaded", "old"), 1, "{}", stderr());

    let chat = util::create(&sim, json!({ "visitor_name": "Kube Visitor" }));
    sim.visitor_message(&chat, "hello")
        .expect("visitor message");
    assert!(
        wait_until(LIMIT, || !agent_texts(&sim, &chat).is_empty()),
        "version 1 replies: {}",
        stderr()
    );
    assert_eq!(agent_texts(&sim, &chat), ["v1"]);

    // An update that changes only what `..data` points to: every `*.rhai`
    // entry of the directory stays as it is.
    publish(
        &rules,
        2,
        &[
            ("old.rhai", escalation("old escalation")),
            ("reply.rhai", replier("v2")),
        ],
    );
    assert!(
        wait_until(LIMIT, || logged(&log, "rule loaded", "reply") == 2),
        "the swap of ..data is followed: {}",
        stderr()
    );
    sim.visitor_message(&chat, "again")
        .expect("visitor message");
    assert!(
        wait_until(LIMIT, || agent_texts(&sim, &chat).len() >= 2),
        "version 2 replies: {}",
        stderr()
    );
    assert_eq!(agent_texts(&sim, &chat), ["v1", "v2"]);

    // An update that removes one key and adds another.
    publish(
        &rules,
        3,
        &[
            ("new.rhai", escalation("new escalation")),
            ("reply.rhai", replier("v2")),
        ],
    );
    assert!(
        wait_until(LIMIT, || running_rules(&listen) == ["new", "reply"]),
        "the removed key's rule goes, the added key's rule runs: {:?} {}",
        running_rules(&listen),
        stderr()
    );
    sim.request_human(&chat).expect("request a human");
    sim.visitor_message(&chat, "still there?")
        .expect("visitor message");
    assert!(
        wait_until(LIMIT, || agent_texts(&sim, &chat).len() >= 4),
        "the added rule and version 2 reply: {}",
        stderr()
    );
    // Two more polls: any second reply to a message would be sent by now.
    let seen = polls(&sim);
    assert!(
        wait_until(LIMIT, || polls(&sim) >= seen + 2),
        "the engine keeps polling: {}",
        stderr()
    );
    let mut texts = agent_texts(&sim, &chat);
    // The escalation and the reply to the message after it come from one
    // poll, in either order.
    texts[2..].sort();
    assert_eq!(
        texts,
        ["v1", "v2", "new escalation", "v2"],
        "one reply per event, each by the version running then: {}",
        stderr()
    );
    assert_eq!(logged(&log, "rule loaded", "old"), 1, "{}", stderr());
}
