//! Several SkyLight workspaces in one `skyrules run` (SPEC §7): each chat
//! is handled by its own workspace's rules with its own key, a workspace
//! whose key is refused is named and retried without stopping the others,
//! and the commands that read one account take `--workspace`.

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;

use crate::util::{self, agent_texts, BlockingSim, Running};

const LIMIT: Duration = Duration::from_secs(60);

fn rule(signature: &str) -> String {
    format!(
        r#"on("human_requested", |ev| {{
    if ev.session.handled_by == "human" {{ return; }}
    ev.take_over();
    ev.reply("{signature}: a teammate is joining you.");
}});
"#
    )
}

fn write_config(
    dir: &Path,
    acme: &BlockingSim,
    globex: &BlockingSim,
    initech: &BlockingSim,
    listen: &str,
) {
    for (name, signature) in [
        ("acme", "Acme"),
        ("globex", "Globex"),
        ("initech", "Initech"),
    ] {
        let rules = dir.join("rules").join(name);
        fs::create_dir_all(&rules).expect("rules dir");
        fs::write(rules.join("escalate.rhai"), rule(signature)).expect("rule");
    }
    fs::write(dir.join("acme.key"), "key-acme\n").expect("key");
    // Initech's key file holds a key its account does not accept.
    fs::write(dir.join("initech.key"), "key-revoked\n").expect("key");
    let config = format!(
        r#"[engine]
poll_interval = "200ms"
state_path = "state.db"

[http]
listen = "{listen}"

[workspaces.acme]
base_url = "{a}"
api_key_file = "acme.key"
rules_dir = "rules/acme"

[workspaces.globex]
base_url = "{g}"
api_key_env = "GLOBEX_KEY"
rules_dir = "rules/globex"

[workspaces.initech]
base_url = "{i}"
api_key_file = "initech.key"
rules_dir = "rules/initech"
"#,
        a = acme.base_url(),
        g = globex.base_url(),
        i = initech.base_url(),
    );
    fs::write(dir.join("skyrules.toml"), config).expect("config");
}

/// Whether the engine has listed `sim`'s chats three times: its start-up
/// probe, its baseline and one poll after, so a chat opened now is new.
fn past_baseline(sim: &BlockingSim) -> bool {
    sim.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/web-chat/sessions") && r.status == 200)
        .count()
        >= 3
}

#[test]
fn each_chat_is_handled_by_its_own_workspace_and_a_refused_key_stops_neither() {
    let acme = BlockingSim::start(util::quiet("key-acme"));
    let globex = BlockingSim::start(util::quiet("key-globex"));
    let initech = BlockingSim::start(util::quiet("key-initech"));
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = util::free_addr();
    write_config(dir.path(), &acme, &globex, &initech, &listen);
    let log = dir.path().join("run.err");
    let engine = Running(
        util::skyrules_command()
            .current_dir(dir.path())
            .env("GLOBEX_KEY", "key-globex")
            .args(["--log-format", "json", "run"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn skyrules run"),
    );
    let stderr = || fs::read_to_string(&log).unwrap_or_default();

    // Chats opened after each workspace's first poll (the baseline).
    assert!(
        util::wait_until(LIMIT, || past_baseline(&acme) && past_baseline(&globex)),
        "both good workspaces poll: {}",
        stderr()
    );
    let ada = util::create(&acme, json!({ "visitor_name": "Ada Acme" }));
    let gil = util::create(&globex, json!({ "visitor_name": "Gil Globex" }));
    acme.request_human(&ada).expect("request a human");
    globex.request_human(&gil).expect("request a human");
    assert!(
        util::wait_until(LIMIT, || {
            !agent_texts(&acme, &ada).is_empty() && !agent_texts(&globex, &gil).is_empty()
        }),
        "both chats escalated: {}",
        stderr()
    );
    assert_eq!(
        agent_texts(&acme, &ada),
        ["Acme: a teammate is joining you."],
        "acme's chat, by acme's rule only"
    );
    assert_eq!(
        agent_texts(&globex, &gil),
        ["Globex: a teammate is joining you."],
        "globex's chat, by globex's rule only"
    );
    assert_eq!(
        acme.session(&ada)
            .expect("chat")
            .session
            .handled_by
            .to_string(),
        "human"
    );

    // No request went to an account with another's key: each simulator
    // refuses any key but its own, and none was refused.
    for (name, sim) in [("acme", &acme), ("globex", &globex)] {
        let refused = sim.requests().iter().filter(|r| r.status == 401).count();
        assert_eq!(refused, 0, "{name} saw a request with another key");
    }
    // Initech is refused, retried, named, and shown as not ready.
    assert!(
        util::wait_until(LIMIT, || {
            initech
                .requests()
                .iter()
                .filter(|r| r.status == 401)
                .count()
                >= 2
        }),
        "initech's refused key is retried: {}",
        stderr()
    );
    let (status, why) = util::http_get(&listen, "/readyz").expect("GET /readyz");
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("workspace initech"), "{why}");
    assert!(
        !why.contains("workspace acme") && !why.contains("workspace globex"),
        "{why}"
    );
    let refusal = stderr()
        .lines()
        .find(|l| l.contains("refused this workspace"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("the refusal is logged: {}", stderr()));
    assert!(refusal.contains("\"workspace\":\"initech\""), "{refusal}");
    assert!(
        refusal.contains("initech.key"),
        "names the key to fix: {refusal}"
    );
    let (_, board) = util::http_get(&listen, "/status.json").expect("GET /status.json");
    let board: serde_json::Value = serde_json::from_str(&board).expect("status json");
    let names: Vec<&str> = board["workspaces"]
        .as_array()
        .expect("workspaces")
        .iter()
        .filter_map(|w| w["workspace"].as_str())
        .collect();
    assert_eq!(names, ["acme", "globex", "initech"]);
    // The page people read, rendered by a real browser: a section per
    // workspace, the chats under their own.
    match crate::browser::chromium() {
        None => eprintln!("chromium not found: the status page was not rendered (CI installs it)"),
        Some(chromium) => {
            let profile = dir.path().join("profile");
            let dom = crate::browser::run_chromium(
                &chromium,
                &profile,
                &["--dump-dom".to_string()],
                &format!("http://{listen}/"),
            );
            let at = |needle: &str| {
                dom.find(needle)
                    .unwrap_or_else(|| panic!("{needle:?} is not on the page: {dom}"))
            };
            let (a, g, i) = (
                at("Workspace acme"),
                at("Workspace globex"),
                at("Workspace initech"),
            );
            assert!(a < at("Ada Acme") && at("Ada Acme") < g, "Ada under acme");
            assert!(
                g < at("Gil Globex") && at("Gil Globex") < i,
                "Gil under globex"
            );
            assert!(dom[i..].contains("not ready"), "initech shown not ready");
        }
    }

    // `sessions list` reads one account, named when there are several.
    let list = |args: &[&str]| {
        util::skyrules_command()
            .current_dir(dir.path())
            .env("GLOBEX_KEY", "key-globex")
            .args(args)
            .output()
            .expect("run skyrules sessions list")
    };
    let out = list(&["sessions", "list", "--workspace", "acme", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let text = listed.to_string();
    assert!(text.contains(&ada) && text.contains("Ada Acme"), "{text}");
    assert!(!text.contains("Gil Globex"), "only acme's chats: {text}");
    let out = list(&["sessions", "list", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("--workspace") && e.contains("acme, globex, initech"),
        "{e}"
    );
    let out = list(&["sessions", "list", "--workspace", "umbrella"]);
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("\"umbrella\"") && e.contains("acme, globex, initech"),
        "{e}"
    );
    drop(engine);
}

#[test]
fn check_without_a_workspace_checks_every_workspaces_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, source) in [
        ("acme", rule("Acme")),
        (
            "globex",
            "on(\"human_requested\", |ev| { ev.take_over( });\n".to_string(),
        ),
    ] {
        let rules = dir.path().join("rules").join(name);
        fs::create_dir_all(&rules).expect("rules dir");
        fs::write(rules.join("escalate.rhai"), source).expect("rule");
    }
    fs::write(
        dir.path().join("skyrules.toml"),
        "[workspaces.acme]\napi_key_env = \"A\"\nrules_dir = \"rules/acme\"\n\
         [workspaces.globex]\napi_key_env = \"G\"\nrules_dir = \"rules/globex\"\n",
    )
    .expect("config");
    let check = |args: &[&str]| {
        util::skyrules_command()
            .current_dir(dir.path())
            .arg("check")
            .args(args)
            .output()
            .expect("run skyrules check")
    };
    let all = check(&[]);
    let out = String::from_utf8_lossy(&all.stdout);
    assert_eq!(all.status.code(), Some(1), "globex's rule is broken: {out}");
    assert!(
        out.contains("rules/acme") && out.contains("rules/globex"),
        "{out}"
    );
    assert!(String::from_utf8_lossy(&all.stderr).contains("escalate.rhai"));
    let acme = check(&["--workspace", "acme"]);
    assert_eq!(
        acme.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&acme.stdout)
    );
}
