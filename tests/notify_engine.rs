//! `ev.notify` through the engine: a rule's notification reaches a local
//! webhook once per session within the dedupe window, and the audit trail
//! (engine notes) says what happened.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skyrules::api::{ApiKey, Client, ClientConfig};
use skyrules::engine::{Engine, EngineOptions, Note};
use skyrules::executor::Guard;
use skyrules::notifications::{ChannelConfig, Channels, Notifier};
use skyrules::rules::World;
use skyrules::sim::SimConfig;
use skyrules::store::MemoryStore;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_notifies_a_webhook_once_per_session_within_the_window() {
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hooks/team-secret"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&hook)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("team-url");
    std::fs::write(&url_file, format!("{}/hooks/team-secret\n", hook.uri())).unwrap();
    let raw: BTreeMap<String, ChannelConfig> = toml::from_str(&format!(
        "[team]\nkind = \"webhook\"\nurl_file = {:?}\ndedupe = \"10m\"\n",
        url_file.display().to_string()
    ))
    .unwrap();
    let stop = CancellationToken::new();
    let channels = Channels::from_config(&raw).unwrap();
    let notifier = Arc::new(Notifier::start(channels.clone(), stop.clone()));

    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(
        rules.join("tell-team.rhai"),
        r#"on("visitor_message", |ev| { ev.notify("team", "{{visitor_name}} wrote: " + ev.message.text); });"#,
    )
    .unwrap();

    let sim = skyrules::sim::start(
        SimConfig {
            api_key: "k".into(),
            bot_delay: None,
            ..SimConfig::default()
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .unwrap();
    let mut cfg = ClientConfig::new(sim.base_url(), ApiKey::new("k"));
    cfg.retry.base_delay = Duration::from_millis(5);
    let api = Client::new(cfg).unwrap();
    let world = World {
        calendars: Default::default(),
        channels: channels.names(),
        notifier: Some(notifier),
        ..Default::default()
    };
    let opts = EngineOptions {
        rules_dir: rules.clone(),
        poll_interval: Duration::from_millis(100),
        dry_run: false,
        max_concurrency: 4,
        guard: Guard {
            max_replies: 5,
            window: Duration::from_secs(600),
        },
        pending_interval: std::time::Duration::ZERO,
        trace_length: skyrules::trace::DEFAULT_TRACE_LENGTH,
    };
    let (engine, report) = Engine::with_world(api, Arc::new(MemoryStore::new()), opts, world)
        .await
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let mut notes = engine.subscribe();
    let run = tokio::spawn(engine.run(stop.clone()));

    // Let the first poll take its (empty) baseline, then talk.
    loop {
        if let Note::Cycle { .. } = notes.recv().await.unwrap() {
            break;
        }
    }
    sim.create_session(serde_json::json!({"session_id": "s1", "visitor_name": "Ana"}))
        .unwrap();
    sim.visitor_message("s1", "my order is late").unwrap();
    let mut outcomes = Vec::new();
    while outcomes.is_empty() {
        if let Note::Action {
            action, outcome, ..
        } = notes.recv().await.unwrap()
        {
            assert_eq!(action, "notify");
            outcomes.push(outcome);
        }
    }
    sim.visitor_message("s1", "hello??").unwrap();
    while outcomes.len() < 2 {
        if let Note::Action {
            action, outcome, ..
        } = notes.recv().await.unwrap()
        {
            assert_eq!(action, "notify");
            assert!(outcome
                .detail()
                .unwrap_or_default()
                .contains("already notified"));
            outcomes.push(outcome);
        }
    }
    assert_eq!(outcomes, ["taken", "skipped"]);

    let deadline = Instant::now() + Duration::from_secs(20);
    let requests = loop {
        let got = hook.received_requests().await.unwrap_or_default();
        if !got.is_empty() {
            break got;
        }
        assert!(Instant::now() < deadline, "the webhook was never called");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(requests.len(), 1, "deduplicated to one call");
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(body["channel"], "team");
    assert_eq!(body["session_id"], "s1");
    assert_eq!(body["rule"], "tell-team");
    assert_eq!(body["text"], "Ana wrote: my order is late");

    stop.cancel();
    run.await.unwrap().unwrap();
    sim.shutdown().await;
}
