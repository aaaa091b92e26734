//! `skyrules replay` agrees with what `skyrules run --dry-run` logged for
//! the same history.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use skyrules::api::{ApiKey, Client, ClientConfig, SenderType};
use skyrules::engine::{Engine, EngineOptions, Note};
use skyrules::executor::Guard;
use skyrules::sim::{SimConfig, SimHandle};
use skyrules::store::MemoryStore;
use skyrules::tools::replay::{replay, Progress, ReplayOptions};
use tokio_util::sync::CancellationToken;

struct Quiet;

impl Progress for Quiet {
    fn start(&self, _: usize) {}
    fn tick(&self) {}
    fn finish(&self) {}
}

/// The shipped rules that need no configuration (the business-hours and
/// notification ones need skyrules.toml and behave by the time of day).
fn shipped_rules() -> PathBuf {
    static COPY: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let dir = COPY.get_or_init(|| {
        let copy = tempfile::tempdir().unwrap();
        skyrules::tools::embedded_rules::write(copy.path()).unwrap();
        copy
    });
    dir.path().to_path_buf()
}

fn options() -> EngineOptions {
    EngineOptions {
        rules_dir: shipped_rules(),
        poll_interval: Duration::from_secs(5),
        dry_run: true,
        max_concurrency: 4,
        guard: Guard {
            max_replies: 5,
            window: Duration::from_secs(600),
        },
        pending_interval: std::time::Duration::ZERO,
        trace_length: skyrules::trace::DEFAULT_TRACE_LENGTH,
    }
}

/// What happens at a second of the scripted history.
fn script(sim: &SimHandle, api: &Client, second: u64) -> Vec<tokio::task::JoinHandle<()>> {
    let mut later = Vec::new();
    let post = |id: &str, who: SenderType, text: &str| {
        sim.post_message(id, who, text).unwrap();
    };
    let open = |id: &str, name: Option<&str>| {
        sim.create_session(serde_json::json!({ "session_id": id, "visitor_name": name }))
            .unwrap();
    };
    match second {
        0 => {
            open("ahmad", Some("Ahmad"));
            post(
                "ahmad",
                SenderType::Visitor,
                "Hi, a question about my invoice",
            );
            open("quiet", None);
            post("quiet", SenderType::Visitor, "hello?");
            open("stuck", Some("Bo"));
            post("stuck", SenderType::Visitor, "Can you export to PDF?");
            open("agent", Some("Cy"));
        }
        30 => {
            open("refund", Some("Dee"));
            post(
                "refund",
                SenderType::Visitor,
                "I want a refund for order 12",
            );
        }
        60 => {
            sim.request_human("ahmad").unwrap();
            post("stuck", SenderType::Bot, "Sorry, I don't know that one.");
            let api = api.clone();
            later.push(tokio::spawn(async move {
                api.take_over("agent").await.unwrap();
            }));
        }
        120 => {
            post("stuck", SenderType::Bot, "I'm not sure I understand.");
            post("agent", SenderType::Visitor, "Are you there?");
            open("leaver", Some("Eve"));
            post("leaver", SenderType::Visitor, "just browsing, bye");
        }
        300 => {
            sim.leave("leaver").unwrap();
            post(
                "refund",
                SenderType::Visitor,
                "also, I want to cancel my plan",
            );
        }
        _ => {}
    }
    later
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_counts_match_a_dry_run_over_the_same_history() {
    let sim = skyrules::sim::start(
        SimConfig {
            api_key: "k".into(),
            seed: 3,
            bot_delay: None,
            clock_speed: 0.0,
            traffic: None,
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .unwrap();
    let mut cfg = ClientConfig::new(sim.base_url(), ApiKey::new("k"));
    cfg.retry.base_delay = Duration::from_millis(5);
    let api = Client::new(cfg).unwrap();

    // The dry run, polling every 5 simulated seconds for 25 minutes while
    // the history happens.
    let (engine, _) = Engine::new(api.clone(), Arc::new(MemoryStore::new()), options())
        .await
        .unwrap();
    let mut notes = engine.subscribe();
    let stop = CancellationToken::new();
    let mut watcher = engine.resume().await.unwrap();
    engine.cycle(&mut watcher, &stop).await.unwrap();
    let mut dry_run: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for second in (0..=25 * 60).step_by(5) {
        for h in script(&sim, &api, second) {
            h.await.unwrap();
        }
        engine.cycle(&mut watcher, &stop).await.unwrap();
        while let Ok(n) = notes.try_recv() {
            if let Note::Action {
                rule,
                action,
                outcome,
                ..
            } = n
            {
                assert_eq!(outcome, "dry_run");
                *dry_run
                    .entry(rule)
                    .or_default()
                    .entry(action.to_string())
                    .or_default() += 1;
            }
        }
        sim.advance(Duration::from_secs(5));
    }
    // The history exercises most rules, so agreement means something.
    for rule in [
        "escalate-on-request",
        "escalate-on-keywords",
        "escalate-failing-bot",
        "sla-human-wait",
        "close-idle-ai-chats",
        "release-silent-agent",
    ] {
        assert!(
            dry_run.contains_key(rule),
            "{rule} never acted: {dry_run:?}"
        );
    }

    let report = replay(
        &api,
        &ReplayOptions {
            since: Duration::from_secs(3600),
            rules_dir: shipped_rules(),
            guard: Guard {
                max_replies: 5,
                window: Duration::from_secs(600),
            },
            calendars: Default::default(),
            channels: Vec::new(),
        },
        &Quiet,
    )
    .await
    .unwrap();
    assert_eq!(report.sessions, 6);
    let replayed: BTreeMap<String, BTreeMap<String, usize>> = report
        .rules
        .iter()
        .filter(|(_, r)| !r.actions.is_empty())
        .map(|(rule, r)| (rule.clone(), r.actions.clone()))
        .collect();
    eprintln!("dry run: {dry_run:?}");
    assert_eq!(replayed, dry_run);
    let request = &report.rules["escalate-on-request"];
    assert_eq!(request.sessions, 1);
    assert_eq!(request.samples[0].session_id, "ahmad");
    assert_eq!(
        request.samples[0].actions,
        [
            "take_over",
            "reply: Hi Ahmad, a teammate is joining you now."
        ]
    );
    let keywords = &report.rules["escalate-on-keywords"];
    assert_eq!(
        keywords.samples[0].trigger.as_deref(),
        Some("I want a refund for order 12")
    );
    sim.shutdown().await;
}
