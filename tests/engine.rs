//! The engine end to end, against the in-process simulator over real HTTP:
//! every event kind, the first-start baseline, each action, rule memory,
//! dry-run, the reply-loop guard, failing handlers, hot reload, replies to
//! ended chats, API outages, per-session ordering, restarts, and the rules
//! shipped in `rules/`.
//!
//! Every test drives its own simulator (silent bot, no traffic) and an
//! engine polling every 100 ms. Timer tests freeze the simulated clock and
//! advance it explicitly; the others run it in real time, where timers of a
//! minute or more never come due. Tests wait on conditions with a deadline,
//! never on a fixed sleep; to show that something did *not* happen they let
//! a few more poll cycles pass after the moment it would have happened,
//! then look.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use skyrules::api::{
    ApiKey, Client, ClientConfig, HandledBy, RetryPolicy, SenderType, SessionStatus, Timestamp,
};
use skyrules::engine::{Engine, EngineOptions, Note};
use skyrules::rules::Memory;
use skyrules::sim::{self, Fault, SimConfig, SimHandle};
use skyrules::store::{self, MemoryStore, Store, StoreError};
use skyrules::tracking::{EventKind, Tracked};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::util;

const KEY: &str = "engine-test-key";
/// Time between polls.
const POLL: Duration = Duration::from_millis(100);
/// Longest wait for any condition (generous: the machine may be loaded).
const WAIT: Duration = Duration::from_secs(20);
/// Poll cycles to let pass before asserting that something did not happen:
/// the first may have started before the moment in question.
const SETTLE: usize = 3;

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// How to start an engine.
struct Setup {
    /// Rule files written into a fresh temporary directory.
    rules: Vec<(&'static str, String)>,
    /// Use this directory instead (the shipped rules).
    rules_dir: Option<PathBuf>,
    dry_run: bool,
    max_replies: u32,
}

impl Setup {
    fn rules(rules: &[(&'static str, &str)]) -> Setup {
        Setup {
            rules: rules.iter().map(|(n, s)| (*n, s.to_string())).collect(),
            rules_dir: None,
            dry_run: false,
            max_replies: 50,
        }
    }
}

/// Every request for page 3 of the session list fails with a 500.
fn page_three_fails() -> Fault {
    Fault {
        method: Some("GET".into()),
        path_contains: Some("/web-chat/sessions".into()),
        query_contains: Some("page=3".into()),
        status: Some(500),
        times: None,
        ..Fault::default()
    }
}

/// A simulator whose clock only moves when a test advances it, with a
/// silent bot and no generated traffic: for timer tests.
async fn frozen_sim() -> SimHandle {
    start_sim(0.0).await
}

/// A simulator on a real-time clock, silent bot, no traffic. Timers of a
/// minute or more never come due during such a test.
async fn live_sim() -> SimHandle {
    start_sim(1.0).await
}

async fn start_sim(clock_speed: f64) -> SimHandle {
    sim::start(
        SimConfig {
            api_key: KEY.into(),
            seed: 7,
            bot_delay: None,
            clock_speed,
            traffic: None,
        },
        "127.0.0.1:0".parse().expect("address"),
    )
    .await
    .expect("start the simulator")
}

/// An API client with quick retries, so injected faults cost milliseconds.
fn client(sim: &SimHandle) -> Client {
    let mut cfg = ClientConfig::new(sim.base_url(), ApiKey::new(KEY));
    cfg.timeout = Duration::from_secs(5);
    cfg.retry = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
        max_retry_after: Duration::from_secs(1),
    };
    Client::new(cfg).expect("client")
}

/// Writes a rule file the way editors save: a temporary file renamed over
/// the target, so the reloader never reads half a file.
fn write_rule(dir: &Path, name: &str, source: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, source).expect("write rule");
    std::fs::rename(&tmp, dir.join(name)).expect("rename rule");
}

/// The texts of a chat's messages from `who`, oldest first.
fn texts(sim: &SimHandle, id: &str, who: SenderType) -> Vec<String> {
    sim.session(id)
        .expect("session exists")
        .messages
        .into_iter()
        .filter(|m| m.sender_type == who)
        .map(|m| m.text().to_string())
        .collect()
}

/// An engine on `sim` and `store` with the rules in `rules`, polled by
/// hand (tests that restart it call this again on the same store).
async fn engine_on(sim: &SimHandle, store: Arc<dyn Store>, rules: &Path) -> Engine {
    Engine::new(client(sim), store, util::engine_options(rules, POLL, 50))
        .await
        .expect("engine")
        .0
}

/// One running engine.
struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
    collector: JoinHandle<()>,
}

/// The simulator, an engine on it, and every note the engine emitted.
struct Harness {
    sim: SimHandle,
    /// The test's own client (to play a human agent through the API).
    api: Client,
    store: Arc<MemoryStore>,
    rules_dir: PathBuf,
    setup: Setup,
    notes: Arc<Mutex<Vec<Note>>>,
    running: Option<Running>,
    _tmp: Option<tempfile::TempDir>,
}

impl Harness {
    /// Starts an engine on `sim` and waits for its first (baseline) cycle.
    async fn start(sim: SimHandle, setup: Setup) -> Harness {
        let (rules_dir, tmp) = match &setup.rules_dir {
            Some(d) => (d.clone(), None),
            None => {
                let tmp = tempfile::tempdir().expect("tempdir");
                for (name, src) in &setup.rules {
                    write_rule(tmp.path(), name, src);
                }
                (tmp.path().to_path_buf(), Some(tmp))
            }
        };
        let mut h = Harness {
            api: client(&sim),
            sim,
            store: Arc::new(MemoryStore::new()),
            rules_dir,
            setup,
            notes: Arc::new(Mutex::new(Vec::new())),
            running: None,
            _tmp: tmp,
        };
        h.launch().await;
        h
    }

    /// Starts an engine on the harness's store and waits for its first cycle.
    async fn launch(&mut self) {
        let opts = EngineOptions {
            dry_run: self.setup.dry_run,
            ..util::engine_options(&self.rules_dir, POLL, self.setup.max_replies)
        };
        let (engine, report) = Engine::new(client(&self.sim), self.store.clone(), opts)
            .await
            .expect("engine starts");
        assert!(report.errors.is_empty(), "rules load: {:?}", report.errors);
        let mut rx = engine.subscribe();
        let notes = self.notes.clone();
        let collector = tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(n) => notes.lock().unwrap().push(n),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        panic!("the test fell {n} notes behind")
                    }
                    Err(_) => break,
                }
            }
        });
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            engine.run(token).await.expect("engine runs");
        });
        let before = self.cycles();
        self.running = Some(Running {
            stop,
            task,
            collector,
        });
        self.wait("the engine's first poll cycle", |h| h.cycles() > before)
            .await;
    }

    /// Stops the engine and waits until it has.
    async fn stop_engine(&mut self) {
        let r = self.running.take().expect("an engine is running");
        r.stop.cancel();
        tokio::time::timeout(WAIT, r.task)
            .await
            .expect("the engine stops promptly")
            .expect("the engine task");
        let _ = tokio::time::timeout(WAIT, r.collector).await;
    }

    fn notes(&self) -> Vec<Note> {
        self.notes.lock().unwrap().clone()
    }

    fn cycles(&self) -> usize {
        self.notes
            .lock()
            .unwrap()
            .iter()
            .filter(|n| matches!(n, Note::Cycle { .. }))
            .count()
    }

    /// Waits until `cond` holds, or fails the test saying what it waited for.
    async fn wait(&self, what: &str, cond: impl Fn(&Harness) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond(self) {
            if Instant::now() > deadline {
                panic!(
                    "timed out after {WAIT:?} waiting for {what}\nlast notes:\n{}",
                    self.dump()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Lets `n` more poll cycles complete.
    async fn settle(&self, n: usize) {
        let target = self.cycles() + n;
        self.wait(&format!("{n} more poll cycles"), |h| h.cycles() >= target)
            .await;
    }

    fn dump(&self) -> String {
        let notes: Vec<String> = self
            .notes()
            .iter()
            .filter(|n| !matches!(n, Note::Cycle { events: 0, .. }))
            .map(|n| format!("  {n:?}"))
            .collect();
        let skip = notes.len().saturating_sub(60);
        format!("{} cycles\n{}", self.cycles(), notes[skip..].join("\n"))
    }

    /// Creates a session in the simulator and returns its id.
    fn create(&self, body: serde_json::Value) -> String {
        self.sim
            .create_session(body)
            .expect("create session")
            .session
            .session_id
    }

    /// Moves the simulated clock by a millisecond. The watcher re-reads a
    /// chat only when its `last_activity_at` (or state) changed (SPEC §2);
    /// on a frozen clock a message written at the very instant of the
    /// chat's last activity would be invisible, which no real server does.
    fn tick(&self) {
        self.sim.advance(Duration::from_millis(1));
    }

    fn visitor(&self, id: &str, text: &str) {
        self.tick();
        self.sim.visitor_message(id, text).expect("visitor message");
    }

    fn post(&self, id: &str, who: SenderType, text: &str) {
        self.tick();
        self.sim.post_message(id, who, text).expect("post message");
    }

    fn request_human(&self, id: &str) {
        self.tick();
        self.sim.request_human(id).expect("request a human");
    }

    fn leave(&self, id: &str) {
        self.tick();
        self.sim.leave(id).expect("leave");
    }

    /// The events the engine dispatched for a session, in order.
    fn events(&self, id: &str) -> Vec<(EventKind, Option<String>)> {
        self.notes()
            .into_iter()
            .filter_map(|n| match n {
                Note::Event {
                    session_id,
                    kind,
                    text,
                    ..
                } if session_id == id => Some((kind, text)),
                _ => None,
            })
            .collect()
    }

    fn count(&self, id: &str, kind: EventKind) -> usize {
        self.events(id).iter().filter(|(k, _)| *k == kind).count()
    }

    /// Whether the engine dispatched `kind` for the session with this text.
    fn saw(&self, id: &str, kind: EventKind, text: &str) -> bool {
        self.events(id)
            .iter()
            .any(|(k, t)| *k == kind && t.as_deref() == Some(text))
    }

    /// The actions the engine attempted for a session, in order.
    fn actions(&self, id: &str) -> Vec<Act> {
        self.notes()
            .into_iter()
            .filter_map(|n| match n {
                Note::Action {
                    rule,
                    session_id,
                    event,
                    action,
                    outcome,
                    ..
                } if session_id == id => Some(Act {
                    rule,
                    event,
                    action: action.to_string(),
                    text: action.text(),
                    outcome: outcome.to_string(),
                    detail: outcome.detail().map(str::to_string),
                }),
                _ => None,
            })
            .collect()
    }

    /// Texts of the session's messages from `who`, oldest first.
    fn texts(&self, id: &str, who: SenderType) -> Vec<String> {
        texts(&self.sim, id, who)
    }

    fn agent_texts(&self, id: &str) -> Vec<String> {
        self.texts(id, SenderType::Agent)
    }

    fn handled_by(&self, id: &str) -> HandledBy {
        self.sim.session(id).expect("session").session.handled_by
    }

    fn status(&self, id: &str) -> SessionStatus {
        self.sim.session(id).expect("session").session.status
    }

    /// `(method, path)` of every API request the simulator served that is
    /// not a GET.
    fn writes(&self) -> Vec<(String, String)> {
        self.sim
            .requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .map(|r| (r.method, r.path))
            .collect()
    }

    fn posts_to(&self, id: &str, what: &str) -> usize {
        let path = format!("/web-chat/sessions/{id}/{what}");
        self.writes()
            .iter()
            .filter(|(m, p)| m == "POST" && p.ends_with(&path))
            .count()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.stop.cancel();
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Act {
    rule: String,
    event: EventKind,
    action: String,
    text: Option<String>,
    outcome: String,
    detail: Option<String>,
}

fn rule_failures(notes: &[Note]) -> Vec<(String, String, EventKind, String)> {
    notes
        .iter()
        .filter_map(|n| match n {
            Note::RuleFailed {
                rule,
                session_id,
                event,
                error,
            } => Some((rule.clone(), session_id.clone(), *event, error.clone())),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// 1. Events
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_and_state_events_fire_once_per_occurrence() {
    use EventKind::*;
    // Takes over on every request and answers with a per-chat counter
    // (which also exercises ev.get/ev.set); ends a chat on request.
    let rule = r#"
        on("human_requested", |ev| {
            let n = (ev.get("requests") ?? 0) + 1;
            ev.set("requests", n);
            ev.take_over();
            ev.reply("Hi {{visitor_name}}, saw " + ev.kind + " #" + n);
        });
        on("visitor_message", |ev| {
            if ev.message.text == "please close" {
                ev.end();
            }
        });
    "#;
    let h = Harness::start(live_sim().await, Setup::rules(&[("events.rhai", rule)])).await;

    let ana = h.create(json!({"session_id": "ana", "visitor_name": "Ana"}));
    h.wait("session_started", |h| h.count(&ana, SessionStarted) == 1)
        .await;
    h.visitor("ana", "hello");
    h.post(&ana, SenderType::Bot, "bot hi");
    h.wait("bot_message", |h| h.saw(&ana, BotMessage, "bot hi"))
        .await;

    // A request: the rule takes over and replies; its own reply comes back
    // as an agent_message, the take-over as taken_over.
    h.request_human(&ana);
    h.wait("human_requested, then taken_over and our own reply", |h| {
        h.count(&ana, TakenOver) == 1 && h.saw(&ana, AgentMessage, "Hi Ana, saw human_requested #1")
    })
    .await;
    assert_eq!(h.handled_by(&ana), HandledBy::Human);

    // A human agent writes; then the chat is released through the API.
    h.post(&ana, SenderType::Agent, "agent typed");
    h.wait("the agent's message", |h| {
        h.saw(&ana, AgentMessage, "agent typed")
    })
    .await;
    h.api.release(&ana).await.expect("release");
    h.wait("released", |h| h.count(&ana, Released) == 1).await;

    // A second request is a second occurrence.
    h.request_human(&ana);
    h.wait("the second request's reply", |h| {
        h.saw(&ana, AgentMessage, "Hi Ana, saw human_requested #2") && h.count(&ana, TakenOver) == 2
    })
    .await;
    h.leave(&ana);
    h.wait("session_ended (visitor left)", |h| {
        h.count(&ana, SessionEnded) == 1
    })
    .await;

    // The engine's own end also produces session_ended.
    let bea = h.create(json!({"session_id": "bea"}));
    h.visitor(&bea, "please close");
    h.wait("session_ended (ended by a rule)", |h| {
        h.count(&bea, SessionEnded) == 1
    })
    .await;
    assert_eq!(h.status(&bea), SessionStatus::Ended);

    h.settle(SETTLE).await;
    let count = |id: &str| {
        let mut c: Vec<(EventKind, usize)> = EventKind::ALL
            .into_iter()
            .map(|k| (k, h.count(id, k)))
            .filter(|(_, n)| *n > 0)
            .collect();
        c.sort();
        c
    };
    assert_eq!(
        count(&ana),
        vec![
            (SessionStarted, 1),
            (VisitorMessage, 1),
            (BotMessage, 1),
            (AgentMessage, 3),
            (HumanRequested, 2),
            (TakenOver, 2),
            (Released, 1),
            (SessionEnded, 1),
        ],
        "events of ana: {:?}",
        h.events(&ana)
    );
    let ev = h.events(&ana);
    assert_eq!(ev.first().map(|e| e.0), Some(SessionStarted));
    assert_eq!(ev.last().map(|e| e.0), Some(SessionEnded));
    let agent: Vec<_> = ev
        .iter()
        .filter(|(k, _)| *k == AgentMessage)
        .map(|(_, t)| t.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        agent,
        [
            "Hi Ana, saw human_requested #1",
            "agent typed",
            "Hi Ana, saw human_requested #2"
        ],
        "agent messages, oldest first"
    );
    let visitor_then_bot: Vec<_> = ev
        .iter()
        .filter(|(k, _)| matches!(k, VisitorMessage | BotMessage))
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(visitor_then_bot, [VisitorMessage, BotMessage]);
    assert_eq!(
        count(&bea),
        vec![(SessionStarted, 1), (VisitorMessage, 1), (SessionEnded, 1)],
        "events of bea: {:?}",
        h.events(&bea)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_once_per_occurrence() {
    use EventKind::*;
    let rule = r#"
        on("unanswered", "1m", |ev| log("unanswered for " + ev.waited + "s"));
        on("idle", "5m", |ev| log("idle for " + ev.waited + "s"));
        on("human_waiting", "2m", |ev| log("waiting for " + ev.waited + "s"));
    "#;
    let h = Harness::start(frozen_sim().await, Setup::rules(&[("timers.rhai", rule)])).await;
    let t = h.create(json!({"session_id": "tim"}));
    h.visitor(&t, "anyone there?"); // t0
    h.wait("the message", |h| h.count(&t, VisitorMessage) == 1)
        .await;

    // The frozen clock has not moved: nothing is due, however long we poll.
    h.settle(SETTLE).await;
    assert_eq!(h.count(&t, Unanswered), 0);

    h.sim.advance(Duration::from_secs(62)); // t0+62
    h.wait("unanswered", |h| h.count(&t, Unanswered) == 1).await;
    h.settle(SETTLE).await;
    assert_eq!(h.count(&t, Unanswered), 1, "once per message");
    assert_eq!(h.count(&t, Idle), 0, "idle is 5 minutes");

    // A new visitor message is a new occurrence.
    h.visitor(&t, "hello??"); // t0+62
    h.wait("the second message", |h| h.count(&t, VisitorMessage) == 2)
        .await;
    h.sim.advance(Duration::from_secs(62)); // t0+124
    h.wait("unanswered again", |h| h.count(&t, Unanswered) == 2)
        .await;

    // A request nobody takes: human_waiting once.
    h.request_human(&t); // requested at t0+124
    h.wait("human_requested", |h| h.count(&t, HumanRequested) == 1)
        .await;
    h.sim.advance(Duration::from_secs(122)); // t0+246
    h.wait("human_waiting", |h| h.count(&t, HumanWaiting) == 1)
        .await;

    // Idle: 5 minutes after the last message (t0+62), once per quiet stretch.
    h.sim.advance(Duration::from_secs(120)); // t0+366
    h.wait("idle", |h| h.count(&t, Idle) == 1).await;
    h.sim.advance(Duration::from_secs(600)); // t0+966
    h.settle(SETTLE).await;
    assert_eq!(
        (
            h.count(&t, Unanswered),
            h.count(&t, HumanWaiting),
            h.count(&t, Idle)
        ),
        (2, 1, 1),
        "each timer once per occurrence: {:?}",
        h.events(&t)
    );
}

// ---------------------------------------------------------------------------
// 2. First-start baseline
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_takes_open_chats_as_a_baseline_but_runs_their_timers() {
    use EventKind::*;
    let sim = frozen_sim().await;
    let now = skyrules::api::format_ts(&sim.now());
    // Open before the engine ever ran: one with history, one waiting for a human.
    sim.create_session(json!({
        "session_id": "old", "visitor_name": "Olga",
        "messages": [
            {"sender_type": "visitor", "text": "old question"},
            {"sender_type": "bot", "text": "old answer"},
            {"sender_type": "visitor", "text": "old follow-up"},
        ]
    }))
    .expect("seed");
    sim.create_session(json!({
        "session_id": "waiting", "handled_by": "pending", "human_requested_at": now,
    }))
    .expect("seed");
    let rule = r#"
        on("session_started", |ev| ev.reply("welcome"));
        on("visitor_message", |ev| ev.reply("seen: " + ev.message.text));
        on("human_requested", |ev| ev.take_over());
        on("unanswered", "1m", |ev| ev.reply("still there, {{visitor_name}}?"));
        on("human_waiting", "2m", |ev| ev.reply("sorry for the wait"));
    "#;
    let h = Harness::start(sim, Setup::rules(&[("rules.rhai", rule)])).await;
    let first = h
        .notes()
        .into_iter()
        .find(|n| matches!(n, Note::Cycle { .. }));
    assert!(
        matches!(
            first,
            Some(Note::Cycle {
                baseline: true,
                listed: 2,
                events: 0,
                ..
            })
        ),
        "{first:?}"
    );
    h.settle(SETTLE).await;
    assert!(h.events("old").is_empty(), "{:?}", h.events("old"));
    assert!(h.events("waiting").is_empty(), "{:?}", h.events("waiting"));
    assert!(
        h.writes().is_empty(),
        "no action on history: {:?}",
        h.writes()
    );

    // Their timers run, though.
    h.sim.advance(Duration::from_secs(125));
    h.wait("the baseline chats' timers", |h| {
        h.agent_texts("old") == ["still there, Olga?"]
            && h.agent_texts("waiting") == ["sorry for the wait"]
    })
    .await;
    assert_eq!(h.count("old", Unanswered), 1);
    assert_eq!(h.count("waiting", HumanWaiting), 1);

    // A chat opened afterwards gets its events as usual.
    let new = h.create(json!({"session_id": "new"}));
    h.visitor(&new, "new question");
    h.wait("the new chat's events", |h| {
        h.agent_texts(&new) == ["welcome", "seen: new question"]
    })
    .await;
    h.settle(SETTLE).await;
    for id in ["old", "waiting"] {
        for kind in [SessionStarted, VisitorMessage, BotMessage, HumanRequested] {
            assert_eq!(h.count(id, kind), 0, "{id}: {:?}", h.events(id));
        }
    }
    assert_eq!(h.agent_texts("old"), ["still there, Olga?"]);
}

// ---------------------------------------------------------------------------
// 3-5. Actions, once, dry-run
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_reach_the_simulator_with_templated_replies() {
    let rule = r#"
        on("visitor_message", |ev| {
            switch ev.message.text {
                "take" => ev.take_over(),
                "release" => ev.release(),
                "greet" => ev.reply("Hi {{visitor_name}}"),
                "end" => ev.end(),
                _ => {}
            }
        });
    "#;
    let h = Harness::start(live_sim().await, Setup::rules(&[("act.rhai", rule)])).await;
    let ana = h.create(json!({"session_id": "ana", "visitor_name": "Ana"}));
    let anon = h.create(json!({"session_id": "anon", "visitor_name": null}));

    h.visitor(&ana, "take");
    h.wait("take_over", |h| h.handled_by(&ana) == HandledBy::Human)
        .await;
    h.visitor(&ana, "greet");
    h.visitor(&anon, "greet");
    h.wait("greetings", |h| {
        h.agent_texts(&ana) == ["Hi Ana"] && h.agent_texts(&anon) == ["Hi there"]
    })
    .await;
    h.visitor(&ana, "release");
    h.wait("release", |h| h.handled_by(&ana) == HandledBy::Ai)
        .await;
    h.visitor(&ana, "end");
    h.wait("end", |h| h.status(&ana) == SessionStatus::Ended)
        .await;
    h.wait("the end's outcome", |h| {
        h.actions(&ana).iter().any(|a| a.action == "end")
    })
    .await;

    let acts: Vec<(String, Option<String>, String)> = h
        .actions(&ana)
        .into_iter()
        .map(|a| (a.action, a.text, a.outcome))
        .collect();
    let taken = |a: &str, t: Option<&str>| (a.to_string(), t.map(str::to_string), "taken".into());
    assert_eq!(
        acts,
        [
            taken("take_over", None),
            taken("reply", Some("Hi Ana")),
            taken("release", None),
            taken("end", None),
        ]
    );
    assert!(h.actions(&ana).iter().all(|a| a.rule == "act"));
    for what in ["take-over", "messages", "release", "end"] {
        assert_eq!(h.posts_to(&ana, what), 1, "POST {what}: {:?}", h.writes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_escalates_a_keyword_chat_a_single_time() {
    let rule = r#"
        on("visitor_message", |ev| {
            let text = ev.message.text.to_lower();
            if text.contains("refund") && ev.once("refund-escalated") {
                ev.take_over();
                ev.reply("A teammate will sort out your refund.");
            }
        });
    "#;
    let h = Harness::start(live_sim().await, Setup::rules(&[("refund.rhai", rule)])).await;
    let id = h.create(json!({"session_id": "ref"}));
    h.visitor(&id, "I want a REFUND");
    h.wait("the escalation", |h| {
        h.agent_texts(&id) == ["A teammate will sort out your refund."]
    })
    .await;
    // Released by someone, then the visitor insists: the rule stays quiet.
    h.api.release(&id).await.expect("release");
    h.visitor(&id, "refund please, again");
    h.wait("the second keyword message", |h| {
        h.saw(&id, EventKind::VisitorMessage, "refund please, again")
    })
    .await;
    h.settle(SETTLE).await;
    assert_eq!(
        h.agent_texts(&id),
        ["A teammate will sort out your refund."]
    );
    assert_eq!(h.handled_by(&id), HandledBy::Ai);
    assert_eq!(h.posts_to(&id, "take-over"), 1);
    assert_eq!(h.actions(&id).len(), 2, "{:?}", h.actions(&id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_sends_nothing_but_reports_every_action() {
    let rule = r#"
        on("visitor_message", |ev| {
            ev.take_over();
            ev.reply("Hi {{visitor_name}}");
            ev.end();
        });
    "#;
    let mut setup = Setup::rules(&[("all.rhai", rule)]);
    setup.dry_run = true;
    let h = Harness::start(live_sim().await, setup).await;
    let id = h.create(json!({"session_id": "dry", "visitor_name": "Dana"}));
    h.visitor(&id, "hello");
    h.wait("three actions", |h| h.actions(&id).len() == 3).await;
    h.settle(SETTLE).await;
    let acts: Vec<(String, Option<String>, String)> = h
        .actions(&id)
        .into_iter()
        .map(|a| (a.action, a.text, a.outcome))
        .collect();
    let dry = |a: &str, t: Option<&str>| (a.to_string(), t.map(str::to_string), "dry_run".into());
    assert_eq!(
        acts,
        [
            dry("take_over", None),
            dry("reply", Some("Hi Dana")),
            dry("end", None)
        ]
    );
    assert!(h.writes().is_empty(), "only GETs: {:?}", h.writes());
    let s = h.sim.session(&id).expect("session");
    assert_eq!(s.session.handled_by, HandledBy::Ai);
    assert_eq!(s.session.status, SessionStatus::Active);
    assert_eq!(s.messages.len(), 1);
}

// ---------------------------------------------------------------------------
// 6-7. Reply-loop guard, runaway handlers
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_loop_guard_caps_an_echo_rule() {
    let rule = r#"
        on("visitor_message", |ev| ev.reply("first answer"));
        on("agent_message", |ev| ev.reply("echo of #" + ev.message.id));
    "#;
    let mut setup = Setup::rules(&[("echo.rhai", rule)]);
    setup.max_replies = 3;
    let h = Harness::start(live_sim().await, setup).await;
    let id = h.create(json!({"session_id": "echo"}));
    h.visitor(&id, "hi");
    h.wait("the guard to cap the loop", |h| {
        h.actions(&id).iter().any(|a| a.outcome == "capped")
    })
    .await;
    h.settle(SETTLE).await;
    assert_eq!(
        h.agent_texts(&id),
        ["first answer", "echo of #2", "echo of #3"]
    );
    assert_eq!(h.posts_to(&id, "messages"), 3);
    let outcomes: Vec<String> = h.actions(&id).into_iter().map(|a| a.outcome).collect();
    assert_eq!(outcomes, ["taken", "taken", "taken", "capped"]);
    let capped = h.actions(&id).pop().expect("capped");
    assert_eq!(capped.text.as_deref(), Some("echo of #4"));
    assert!(
        capped
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("max_replies"),
        "{capped:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_fails_alone_and_the_engine_carries_on() {
    let looping = r#"on("visitor_message", |ev| { let n = 0; loop { n += 1; } });"#;
    let fine = r#"on("visitor_message", |ev| ev.reply("still here: " + ev.message.text));"#;
    let h = Harness::start(
        live_sim().await,
        Setup::rules(&[("a-loop.rhai", looping), ("b-fine.rhai", fine)]),
    )
    .await;
    let id = h.create(json!({"session_id": "spin"}));
    h.visitor(&id, "first");
    h.wait("the other rule's reply", |h| {
        h.agent_texts(&id) == ["still here: first"]
    })
    .await;
    let fails = rule_failures(&h.notes());
    assert_eq!(fails.len(), 1, "{fails:?}");
    let (rule, session, event, error) = &fails[0];
    assert_eq!(
        (rule.as_str(), session.as_str(), *event),
        ("a-loop", "spin", EventKind::VisitorMessage)
    );
    assert!(error.contains("a-loop.rhai"), "{error}");
    assert!(
        error.contains("too long") || error.contains("longer than"),
        "says it ran away: {error}"
    );

    // Later events, in this chat and others, are still handled.
    let other = h.create(json!({"session_id": "other"}));
    h.visitor(&id, "second");
    h.visitor(&other, "third");
    h.wait("later replies", |h| {
        h.agent_texts(&id) == ["still here: first", "still here: second"]
            && h.agent_texts(&other) == ["still here: third"]
    })
    .await;
    assert_eq!(rule_failures(&h.notes()).len(), 3);
    assert!(rule_failures(&h.notes()).iter().all(|f| f.0 == "a-loop"));
}

// ---------------------------------------------------------------------------
// 8. Hot reload
// ---------------------------------------------------------------------------

fn reloads(notes: &[Note]) -> Vec<(Vec<String>, Vec<String>, Vec<String>)> {
    notes
        .iter()
        .filter_map(|n| match n {
            Note::Reloaded {
                loaded,
                removed,
                errors,
            } => Some((loaded.clone(), removed.clone(), errors.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_adds_changes_keeps_broken_and_removes_rules() {
    let h = Harness::start(live_sim().await, Setup::rules(&[])).await;
    let dir = h.rules_dir.clone();
    let id = h.create(json!({"session_id": "hot"}));
    let n_reloads = |h: &Harness| reloads(&h.notes()).len();

    // Added.
    let before = n_reloads(&h);
    write_rule(
        &dir,
        "greet.rhai",
        r#"on("visitor_message", |ev| ev.reply("v1: " + ev.message.text));"#,
    );
    h.wait("greet.rhai loaded", |h| {
        reloads(&h.notes())[before..]
            .iter()
            .any(|r| r.0 == ["greet"] && r.2.is_empty())
    })
    .await;
    h.visitor(&id, "a");
    h.wait("v1 reply", |h| h.agent_texts(&id) == ["v1: a"])
        .await;

    // Changed.
    let before = n_reloads(&h);
    write_rule(
        &dir,
        "greet.rhai",
        r#"on("visitor_message", |ev| ev.reply("v2: " + ev.message.text));"#,
    );
    h.wait("greet.rhai reloaded", |h| {
        reloads(&h.notes())[before..]
            .iter()
            .any(|r| r.0 == ["greet"])
    })
    .await;
    h.visitor(&id, "b");
    h.wait("v2 reply", |h| h.agent_texts(&id) == ["v1: a", "v2: b"])
        .await;

    // Broken: the error names the file and line; v2 keeps running.
    let before = n_reloads(&h);
    write_rule(
        &dir,
        "greet.rhai",
        "on(\"visitor_message\", |ev| {\n    let x = ;\n});\n",
    );
    h.wait("the load error", |h| {
        reloads(&h.notes())[before..]
            .iter()
            .any(|r| !r.2.is_empty())
    })
    .await;
    let (loaded, removed, errors) = reloads(&h.notes())[before..]
        .iter()
        .find(|r| !r.2.is_empty())
        .cloned()
        .expect("error report");
    assert!(
        loaded.is_empty() && removed.is_empty(),
        "{loaded:?} {removed:?}"
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("greet.rhai:2:"),
        "file and line: {}",
        errors[0]
    );
    h.visitor(&id, "c");
    h.wait("v2 still replying", |h| {
        h.agent_texts(&id) == ["v1: a", "v2: b", "v2: c"]
    })
    .await;

    // Deleted: no more replies.
    let before = n_reloads(&h);
    std::fs::remove_file(dir.join("greet.rhai")).expect("delete rule");
    h.wait("greet removed", |h| {
        reloads(&h.notes())[before..]
            .iter()
            .any(|r| r.1 == ["greet"])
    })
    .await;
    h.visitor(&id, "d");
    h.wait("the message after deletion", |h| {
        h.saw(&id, EventKind::VisitorMessage, "d")
    })
    .await;
    h.settle(SETTLE).await;
    assert_eq!(h.agent_texts(&id), ["v1: a", "v2: b", "v2: c"]);
}

// ---------------------------------------------------------------------------
// 9. Ended chats
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_to_ended_chats_are_skipped_not_sent() {
    let rule = r#"
        on("visitor_message", |ev| {
            if ev.message.text == "close it" {
                ev.end();
                ev.reply("after the end");
            }
        });
        on("session_ended", |ev| ev.reply("goodbye {{visitor_name}}"));
    "#;
    let h = Harness::start(live_sim().await, Setup::rules(&[("bye.rhai", rule)])).await;
    let left = h.create(json!({"session_id": "left"}));
    let closed = h.create(json!({"session_id": "closed"}));
    h.wait("both chats seen", |h| {
        h.count(&left, EventKind::SessionStarted) == 1
            && h.count(&closed, EventKind::SessionStarted) == 1
    })
    .await;
    h.leave(&left);
    h.visitor(&closed, "close it");
    h.wait("the replies' outcomes", |h| {
        h.actions(&left).len() == 1 && h.actions(&closed).len() == 3
    })
    .await;
    h.settle(SETTLE).await;

    let left_acts = h.actions(&left);
    assert_eq!(left_acts[0].event, EventKind::SessionEnded);
    assert_eq!(
        (left_acts[0].action.as_str(), left_acts[0].outcome.as_str()),
        ("reply", "skipped")
    );
    assert!(
        left_acts[0]
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("ended"),
        "{left_acts:?}"
    );
    let closed_acts: Vec<(String, String)> = h
        .actions(&closed)
        .into_iter()
        .map(|a| (a.action, a.outcome))
        .collect();
    let pair = |a: &str, o: &str| (a.to_string(), o.to_string());
    assert_eq!(
        closed_acts,
        [
            pair("end", "taken"),
            pair("reply", "skipped"),
            pair("reply", "skipped")
        ]
    );
    assert_eq!(h.status(&closed), SessionStatus::Ended);
    assert!(h.agent_texts(&left).is_empty() && h.agent_texts(&closed).is_empty());
    assert_eq!(
        h.posts_to(&left, "messages") + h.posts_to(&closed, "messages"),
        0
    );
}

/// A chat that ends between the poll that saw it open and the reply: the
/// reply is skipped (SPEC §3), not reported as a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn reply_to_a_chat_that_ended_after_the_poll_is_skipped() {
    let rule = r#"
        on("visitor_message", |ev| {
            ev.take_over();
            ev.reply("a teammate is here");
        });
    "#;
    let h = Harness::start(live_sim().await, Setup::rules(&[("late.rhai", rule)])).await;
    let id = h.create(json!({"session_id": "late"}));
    // Hold the take-over's response long enough for the visitor to leave.
    h.sim
        .add_fault(Fault {
            method: Some("POST".into()),
            path_contains: Some("/take-over".into()),
            latency_ms: 1500,
            ..Fault::default()
        })
        .expect("fault");
    h.visitor(&id, "help");
    h.wait("the take-over request", |h| {
        h.posts_to(&id, "take-over") == 1
    })
    .await;
    h.leave(&id);
    h.wait("the reply's outcome", |h| {
        h.actions(&id).iter().any(|a| a.action == "reply")
    })
    .await;
    let reply = h
        .actions(&id)
        .into_iter()
        .find(|a| a.action == "reply")
        .expect("reply");
    assert!(h.agent_texts(&id).is_empty());
    assert_eq!(reply.outcome, "skipped", "{reply:?}");
}

// ---------------------------------------------------------------------------
// 10. API failures
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_failures_never_stop_the_loop() {
    let rule = r#"on("visitor_message", |ev| ev.reply("ok: " + ev.message.text));"#;
    let h = Harness::start(live_sim().await, Setup::rules(&[("ok.rhai", rule)])).await;

    // The session list fails for a while (retries included).
    h.sim
        .add_fault(Fault {
            path_contains: Some("/web-chat/sessions".into()),
            status: Some(500),
            times: Some(9),
            ..Fault::default()
        })
        .expect("fault");
    let id = h.create(json!({"session_id": "outage"}));
    h.visitor(&id, "during the outage");
    h.wait("a failed poll", |h| {
        h.notes()
            .iter()
            .any(|n| matches!(n, Note::PollFailed { .. }))
    })
    .await;
    h.wait("the reply once the API is back", |h| {
        h.agent_texts(&id) == ["ok: during the outage"]
    })
    .await;
    let served_500 = h.sim.requests().iter().filter(|r| r.status == 500).count();
    assert_eq!(served_500, 9);

    // A reply that cannot be delivered fails alone; the next one goes out.
    h.sim
        .add_fault(Fault {
            method: Some("POST".into()),
            path_contains: Some("/messages".into()),
            status: Some(503),
            times: Some(3),
            ..Fault::default()
        })
        .expect("fault");
    h.visitor(&id, "unlucky");
    h.wait("the failed reply", |h| {
        h.actions(&id).iter().any(|a| a.outcome == "failed")
    })
    .await;
    h.visitor(&id, "after");
    h.wait("the next reply", |h| {
        h.agent_texts(&id) == ["ok: during the outage", "ok: after"]
    })
    .await;
    h.settle(SETTLE).await;
    assert_eq!(h.count(&id, EventKind::VisitorMessage), 3);
    assert_eq!(h.count(&id, EventKind::SessionStarted), 1);
}

// ---------------------------------------------------------------------------
// 11. Ordering
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_chats_events_and_actions_run_in_order() {
    let rule = r#"
        on("visitor_message", |ev| {
            ev.reply("1: " + ev.message.text);
            ev.reply("2: " + ev.message.text);
        });
    "#;
    let h = Harness::start(live_sim().await, Setup::rules(&[("order.rhai", rule)])).await;
    // Each chat appears with three messages at once: one poll sees them all.
    let ids = ["ord1", "ord2", "ord3"];
    for id in ids {
        h.create(json!({
            "session_id": id,
            "messages": [
                {"sender_type": "visitor", "text": format!("{id}-a")},
                {"sender_type": "visitor", "text": format!("{id}-b")},
                {"sender_type": "visitor", "text": format!("{id}-c")},
            ]
        }));
    }
    h.wait("all replies", |h| {
        ids.iter().all(|id| h.agent_texts(id).len() == 6)
    })
    .await;
    for id in ids {
        let want: Vec<String> = ["a", "b", "c"]
            .iter()
            .flat_map(|m| [format!("1: {id}-{m}"), format!("2: {id}-{m}")])
            .collect();
        assert_eq!(h.agent_texts(id), want, "replies of {id} in message order");
        let visitor: Vec<Option<String>> = h
            .events(id)
            .into_iter()
            .filter(|(k, _)| *k == EventKind::VisitorMessage)
            .map(|(_, t)| t)
            .collect();
        assert_eq!(
            visitor,
            ["a", "b", "c"].map(|m| Some(format!("{id}-{m}"))),
            "visitor messages oldest first"
        );
    }
}

// ---------------------------------------------------------------------------
// Restart
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_neither_repeats_nor_loses_events() {
    use EventKind::*;
    let rule = r#"
        on("session_started", |ev| ev.reply("welcome"));
        on("visitor_message", |ev| ev.reply("got: " + ev.message.text));
    "#;
    let mut h = Harness::start(live_sim().await, Setup::rules(&[("r.rhai", rule)])).await;
    let id = h.create(json!({"session_id": "r1"}));
    h.visitor(&id, "one");
    h.wait("replies seen back", |h| {
        h.agent_texts(&id) == ["welcome", "got: one"] && h.count(&id, AgentMessage) == 2
    })
    .await;
    // Handled events leave the journal with the cycle, not only at
    // shutdown: a crash now would not handle them again.
    h.wait("the journal emptied while running", |h| {
        h.store.pending_events().expect("journal").is_empty()
    })
    .await;
    h.stop_engine().await;

    // While the engine is down.
    h.visitor(&id, "two");
    let id2 = h.create(json!({"session_id": "r2"}));
    h.visitor(&id2, "hi");

    h.launch().await;
    h.wait("what happened while down", |h| {
        h.agent_texts(&id) == ["welcome", "got: one", "got: two"]
            && h.agent_texts(&id2) == ["welcome", "got: hi"]
    })
    .await;
    h.settle(SETTLE).await;
    let baselines = h
        .notes()
        .iter()
        .filter(|n| matches!(n, Note::Cycle { baseline: true, .. }))
        .count();
    assert_eq!(baselines, 1, "only the very first start is a baseline");
    assert_eq!(h.count(&id, SessionStarted), 1);
    assert_eq!(h.count(&id, VisitorMessage), 2);
    assert_eq!(h.count(&id, AgentMessage), 3);
    assert_eq!(h.count(&id2, SessionStarted), 1);
    assert_eq!(h.agent_texts(&id), ["welcome", "got: one", "got: two"]);
}

// ---------------------------------------------------------------------------
// The shipped rules
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_rules_escalate_and_close_idle_chats() {
    // The shipped rules that need no configuration (the business-hours and
    // notification ones depend on skyrules.toml and on the time of day; they
    // have their own scenarios).
    let copy = tempfile::tempdir().unwrap();
    skyrules::tools::embedded_rules::write(copy.path()).unwrap();
    let setup = Setup {
        rules_dir: Some(copy.path().to_path_buf()),
        ..Setup::rules(&[])
    };
    let h = Harness::start(frozen_sim().await, setup).await;

    // escalate-on-request
    let maya = h.create(json!({"session_id": "maya", "visitor_name": "Maya"}));
    h.visitor(&maya, "hi, I have a question about my plan");
    h.request_human(&maya);
    // escalate-on-keywords
    let raj = h.create(json!({"session_id": "raj", "visitor_name": "Raj"}));
    h.visitor(&raj, "I want a refund for my order");
    // close-idle-ai-chats
    let lee = h.create(json!({"session_id": "lee", "visitor_name": "Lee"}));
    h.visitor(&lee, "just browsing");

    h.wait("escalations", |h| {
        h.handled_by(&maya) == HandledBy::Human
            && h.agent_texts(&maya) == ["Hi Maya, a teammate is joining you now."]
            && h.handled_by(&raj) == HandledBy::Human
            && h.agent_texts(&raj) == ["I'm bringing in a teammate who can sort this out with you."]
    })
    .await;
    h.visitor(&raj, "seriously, refund me or I file a chargeback");
    h.wait("raj's second message", |h| {
        h.count(&raj, EventKind::VisitorMessage) == 2
    })
    .await;
    h.settle(SETTLE).await;
    assert_eq!(h.posts_to(&raj, "take-over"), 1);
    assert_eq!(
        h.agent_texts(&raj),
        ["I'm bringing in a teammate who can sort this out with you."]
    );
    assert!(h.agent_texts(&lee).is_empty());
    assert_eq!(h.status(&lee), SessionStatus::Active);

    h.sim.advance(Duration::from_secs(15 * 60 + 2));
    h.wait("the idle AI chat closed with a goodbye", |h| {
        h.status(&lee) == SessionStatus::Ended
            && h.agent_texts(&lee) == ["We'll close this chat for now. Write again any time!"]
            && h.actions(&lee).len() == 2
    })
    .await;
    let acts: Vec<(String, String, String)> = h
        .actions(&lee)
        .into_iter()
        .map(|a| (a.rule, a.action, a.outcome))
        .collect();
    let t = |a: &str| {
        (
            "close-idle-ai-chats".to_string(),
            a.to_string(),
            "taken".to_string(),
        )
    };
    assert_eq!(acts, [t("reply"), t("end")]);
    // Chats a human has are not closed.
    assert_eq!(h.status(&maya), SessionStatus::Active);
    assert!(
        rule_failures(&h.notes()).is_empty(),
        "{:?}",
        rule_failures(&h.notes())
    );
}

/// A changed chat is handled as soon as its list page and its detail are
/// in, not after the whole list: while every poll fails on page 3, a chat
/// on page 1 is still taken over (once), and one on page 3 waits for the
/// page to come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_on_an_early_list_page_is_handled_while_a_later_page_fails() {
    let rule = r#"on("human_requested", |ev| ev.take_over());"#;
    let h = Harness::start(live_sim().await, Setup::rules(&[("esc.rhai", rule)])).await;
    // 250 chats: three list pages of 100, newest first.
    for i in 0..250 {
        h.create(json!({"session_id": format!("c{i:03}")}));
    }
    h.settle(2).await;
    let (first_page, third_page) = ("c249", "c000");
    h.sim.add_fault(page_three_fails()).expect("fault");
    h.request_human(first_page);
    h.request_human(third_page);
    h.wait("the take-over of the chat on page 1", |h| {
        h.handled_by(first_page) == HandledBy::Human
    })
    .await;
    let failed = |h: &Harness| {
        h.notes()
            .iter()
            .filter(|n| matches!(n, Note::PollFailed { .. }))
            .count()
    };
    let seen = failed(&h);
    h.wait("another failed poll", |h| failed(h) > seen).await;
    assert_eq!(
        h.handled_by(third_page),
        HandledBy::Pending,
        "page 3 never arrived"
    );

    h.sim.clear_faults();
    h.wait("the take-over of the chat on page 3", |h| {
        h.handled_by(third_page) == HandledBy::Human
    })
    .await;
    h.settle(2).await;
    assert_eq!(h.posts_to(first_page, "take-over"), 1, "{:?}", h.writes());
    assert_eq!(h.posts_to(third_page, "take-over"), 1, "{:?}", h.writes());
}

/// The first-start baseline is saved as it is read and marked whole only
/// at the end: a first start whose list walk fails half-way leaves the
/// next start a baseline too, so the chats it had not reached yet do not
/// look new (no events for their history).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_cut_short_takes_the_baseline_again() {
    let sim = live_sim().await;
    for i in 0..250 {
        sim.create_session(json!({
            "session_id": format!("c{i:03}"),
            "messages": [{"sender_type": "visitor", "text": "hello"}],
        }))
        .expect("create");
    }
    let store = Arc::new(MemoryStore::new());
    let rules = tempfile::tempdir().expect("tempdir");
    write_rule(
        rules.path(),
        "greet.rhai",
        r#"on("session_started", |ev| ev.reply("welcome"));"#,
    );
    let start = || engine_on(&sim, store.clone(), rules.path());
    let never = CancellationToken::new();

    sim.add_fault(page_three_fails()).expect("fault");
    let first = start().await;
    let mut watcher = first.resume().await.expect("resume");
    assert!(
        first.cycle(&mut watcher, &never).await.is_err(),
        "page 3 fails"
    );
    drop(first);

    sim.clear_faults();
    let second = start().await;
    assert_eq!(
        resume_and_poll(&second).await,
        Some((true, 0)),
        "still a baseline, no events"
    );
    assert!(
        sim.requests().iter().all(|r| r.method != "POST"),
        "no welcome for chats that were already open"
    );
}

/// Resumes `engine` and runs one whole poll; returns the cycle's note as
/// (baseline, events), if it sent one.
async fn resume_and_poll(engine: &Engine) -> Option<(bool, usize)> {
    let mut watcher = engine.resume().await.expect("resume");
    poll_once(engine, &mut watcher)
        .await
        .map(|(baseline, events, _)| (baseline, events))
}

/// Runs one whole poll; returns the cycle's note as (baseline, events,
/// commits), if it sent one.
async fn poll_once(
    engine: &Engine,
    watcher: &mut skyrules::tracking::Watcher,
) -> Option<(bool, usize, usize)> {
    let mut notes = engine.subscribe();
    engine
        .cycle(watcher, &CancellationToken::new())
        .await
        .expect("a whole poll");
    let mut cycle = None;
    while let Ok(n) = notes.try_recv() {
        if let Note::Cycle {
            baseline,
            events,
            commits,
            ..
        } = n
        {
            cycle = Some((baseline, events, commits));
        }
    }
    cycle
}

/// Events a first start journaled before it died are handled at the next
/// start without marking the baseline whole: the chats it never saved are
/// still taken as a baseline, not greeted as new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journaled_events_of_a_cut_short_first_start_leave_the_baseline_open() {
    let sim = live_sim().await;
    for i in 0..10 {
        sim.create_session(json!({
            "session_id": format!("c{i:03}"),
            "messages": [{"sender_type": "visitor", "text": "hello"}],
        }))
        .expect("create");
    }
    // What the first start left: one chat's message event, journaled and
    // not handled, and no baseline mark.
    let store = Arc::new(MemoryStore::new());
    let detail = client(&sim).get_session("c000").await.expect("read");
    let (tracked, events) = skyrules::tracking::diff(None, detail, false);
    let events: Vec<_> = events
        .into_iter()
        .filter(|e| e.kind == EventKind::VisitorMessage)
        .collect();
    assert_eq!(events.len(), 1);
    store
        .commit(&skyrules::store::Batch {
            events: vec![skyrules::store::Pending { tracked, events }],
            ..skyrules::store::Batch::default()
        })
        .expect("journal");

    let rules = tempfile::tempdir().expect("tempdir");
    write_rule(
        rules.path(),
        "greet.rhai",
        r#"on("session_started", |ev| ev.reply("welcome"));"#,
    );
    let start = || engine_on(&sim, store.clone(), rules.path());
    // The second start handles the journal, then dies before its poll.
    let second = start().await;
    second.resume().await.expect("resume");
    assert!(
        store.pending_events().expect("journal").is_empty(),
        "the journaled event was handled"
    );
    drop(second);

    let third = start().await;
    assert_eq!(
        resume_and_poll(&third).await,
        Some((true, 0)),
        "still a baseline, no events"
    );
    assert!(
        sim.requests().iter().all(|r| r.method != "POST"),
        "no welcome for chats that were already open"
    );
}

// ---------------------------------------------------------------------------
// The cycle's one transaction
// ---------------------------------------------------------------------------

/// A store that counts its transactions and can lose a cycle's commit, as
/// a process killed just before making it would.
#[derive(Default)]
struct Watched {
    inner: MemoryStore,
    /// Cycle commits made (lost ones included).
    commits: AtomicUsize,
    /// Intents written, and how many of them journaled a session.
    intents: AtomicUsize,
    journaled: AtomicUsize,
    /// Commits are acknowledged but not written.
    lose_commits: AtomicBool,
    /// Commits fail, as on a full disk.
    fail_commits: AtomicBool,
    /// Intents fail (and are counted), as when the database drops between
    /// a session's memory read and its first action.
    fail_intents: AtomicBool,
    failed_intents: AtomicUsize,
}

impl Watched {
    fn counts(&self) -> (usize, usize, usize) {
        (
            self.commits.load(SeqCst),
            self.intents.load(SeqCst),
            self.journaled.load(SeqCst),
        )
    }
}

impl Store for Watched {
    fn workspace(&self, name: &str) -> Arc<dyn Store> {
        self.inner.workspace(name)
    }
    fn location(&self) -> String {
        self.inner.location()
    }
    fn load(&self) -> Result<store::Loaded, StoreError> {
        self.inner.load()
    }
    fn memory(&self, id: &str) -> Result<HashMap<String, Memory>, StoreError> {
        self.inner.memory(id)
    }
    fn commit(&self, batch: &store::Batch) -> Result<(), StoreError> {
        self.commits.fetch_add(1, SeqCst);
        if self.lose_commits.load(SeqCst) {
            return Ok(());
        }
        if self.fail_commits.load(SeqCst) {
            return Err(StoreError::Io {
                path: "test.db".into(),
                message: "database or disk is full".into(),
            });
        }
        self.inner.commit(batch)
    }
    fn pending_events(&self) -> Result<Vec<store::Pending>, StoreError> {
        self.inner.pending_events()
    }
    fn trace(&self, session_id: &str) -> Result<Option<skyrules::trace::TraceRows>, StoreError> {
        self.inner.trace(session_id)
    }
    fn begin_action(
        &self,
        intent: &store::Intent,
        journal: Option<&store::Batch>,
    ) -> Result<store::Begin, StoreError> {
        if self.fail_intents.load(SeqCst) {
            self.failed_intents.fetch_add(1, SeqCst);
            return Err(StoreError::Unavailable {
                location: "postgres://test@db/state".into(),
                message: "connection closed".into(),
            });
        }
        self.intents.fetch_add(1, SeqCst);
        if journal.is_some() {
            self.journaled.fetch_add(1, SeqCst);
        }
        self.inner.begin_action(intent, journal)
    }
    fn finish_action(
        &self,
        key: &str,
        outcome: &str,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        self.inner.finish_action(key, outcome, detail)
    }
    fn pending_actions(&self) -> Result<Vec<store::Intent>, StoreError> {
        self.inner.pending_actions()
    }
    fn audit(&self, filter: &store::AuditFilter) -> Result<Vec<store::AuditEntry>, StoreError> {
        self.inner.audit(filter)
    }
    fn sessions_since(&self, since: Timestamp) -> Result<Vec<Tracked>, StoreError> {
        self.inner.sessions_since(since)
    }
    fn timer_breaches(
        &self,
        since: Timestamp,
    ) -> Result<Vec<(String, chrono::NaiveDate, u64)>, StoreError> {
        self.inner.timer_breaches(since)
    }
    fn latest_action_at(&self) -> Result<Option<Timestamp>, StoreError> {
        self.inner.latest_action_at()
    }
    fn purge(&self, before: Timestamp) -> Result<usize, StoreError> {
        self.inner.purge(before)
    }
}

/// Runs one whole poll on a resumed engine; returns the cycle's note as
/// (events, commits).
async fn one_cycle(engine: &Engine, watcher: &mut skyrules::tracking::Watcher) -> (usize, usize) {
    let (_, events, commits) = poll_once(engine, watcher)
        .await
        .expect("the cycle sent no note");
    (events, commits)
}

/// A cycle over three list pages in which thirty chats changed writes
/// their new states, their events and the rule memory they left in one
/// transaction; the three take-overs add only their own intents, each
/// carrying its chat's journal. A cycle in which nothing changed writes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_writes_its_state_in_one_transaction() {
    let sim = live_sim().await;
    for i in 0..250 {
        sim.create_session(json!({"session_id": format!("c{i:03}")}))
            .expect("create");
    }
    let rules = tempfile::tempdir().expect("tempdir");
    write_rule(
        rules.path(),
        "count.rhai",
        r#"on("visitor_message", |ev| { let n = ev.get("n"); ev.set("n", if n == () { 1 } else { n + 1 }); });"#,
    );
    write_rule(
        rules.path(),
        "esc.rhai",
        r#"on("human_requested", |ev| ev.take_over());"#,
    );
    let store = Arc::new(Watched::default());
    let engine = engine_on(&sim, store.clone(), rules.path()).await;
    let mut watcher = engine.resume().await.expect("resume");
    assert_eq!(
        one_cycle(&engine, &mut watcher).await,
        (0, 1),
        "the baseline"
    );

    // Every eighth chat writes, on all three pages; three ask for a human.
    let wrote: Vec<String> = (0..250).step_by(8).map(|i| format!("c{i:03}")).collect();
    assert_eq!(wrote.len(), 32);
    for id in &wrote {
        sim.visitor_message(id, "hello").expect("message");
    }
    let asked = ["c000", "c120", "c248"];
    for id in asked {
        sim.request_human(id).expect("request");
    }
    let before = store.counts();
    let (events, commits) = one_cycle(&engine, &mut watcher).await;
    assert_eq!(events, 35, "32 messages and 3 human requests");
    assert_eq!(commits, 1, "the cycle reports one commit");
    let after = store.counts();
    assert_eq!(
        (after.0 - before.0, after.1 - before.1, after.2 - before.2),
        (1, 3, 3),
        "one commit; three intents, each journaling its chat"
    );
    for id in asked {
        assert_eq!(
            sim.session(id).expect("session").session.handled_by,
            HandledBy::Human
        );
    }
    // What the commit saved: every chat's memory and new state, and an
    // empty journal.
    for id in &wrote {
        let memory = store.memory(id).expect("memory");
        assert_eq!(
            memory.get("count").map(|m| json!(m).to_string()),
            Some(r#"{"n":1}"#.to_string()),
            "{id}"
        );
    }
    let loaded = store.load().expect("load");
    for id in &wrote {
        assert!(loaded.sessions[id].session.has_visitor_messages, "{id}");
    }
    assert!(store.pending_events().expect("journal").is_empty());

    // The next poll sees the take-overs come back (three events).
    assert_eq!(one_cycle(&engine, &mut watcher).await, (3, 1));
    let quiet = store.counts();
    assert_eq!(
        one_cycle(&engine, &mut watcher).await,
        (0, 0),
        "nothing changed"
    );
    assert_eq!(store.counts(), quiet, "and nothing was written");
}

/// A process that dies after a cycle's actions but before its commit:
/// the chat that acted was journaled with its first action, so the next
/// start finishes its events without acting again; the chats that did not
/// act were never saved, so the next poll finds their events again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_that_dies_before_its_commit_loses_no_event_and_repeats_no_reply() {
    use EventKind::*;
    let sim = live_sim().await;
    let rules = tempfile::tempdir().expect("tempdir");
    write_rule(
        rules.path(),
        "help.rhai",
        r#"on("visitor_message", |ev| {
            let n = ev.get("n");
            ev.set("n", if n == () { 1 } else { n + 1 });
            if ev.message.text == "help" { ev.reply("on it"); ev.reply("still here"); }
        });"#,
    );
    let store = Arc::new(Watched::default());
    let start = || engine_on(&sim, store.clone(), rules.path());
    let first = start().await;
    let mut watcher = first.resume().await.expect("resume");
    one_cycle(&first, &mut watcher).await;
    for id in ["asks", "chats"] {
        sim.create_session(json!({"session_id": id}))
            .expect("create");
    }
    sim.visitor_message("asks", "help").expect("message");
    sim.visitor_message("chats", "hello").expect("message");
    store.lose_commits.store(true, SeqCst);
    let (events, _) = one_cycle(&first, &mut watcher).await;
    assert_eq!(events, 4, "two chats started, two messages");
    drop(first);
    store.lose_commits.store(false, SeqCst);
    let replies = |id: &str| texts(&sim, id, SenderType::Agent);
    assert_eq!(replies("asks"), ["on it", "still here"]);
    // What the dead process left: the chat that acted, journaled with its
    // first reply's intent; the other chat, nowhere.
    let journal = store.pending_events().expect("journal");
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0].tracked.session.session_id, "asks");
    assert_eq!(journal[0].events.len(), 2);
    let known = store.load().expect("load").sessions;
    assert!(known.contains_key("asks") && !known.contains_key("chats"));

    let second = start().await;
    let mut notes = second.subscribe();
    let mut watcher = second.resume().await.expect("resume");
    one_cycle(&second, &mut watcher).await;
    let mut seen = Vec::new();
    while let Ok(n) = notes.try_recv() {
        if let Note::Event {
            session_id, kind, ..
        } = n
        {
            seen.push((session_id, kind));
        }
    }
    let of = |id: &str| -> Vec<EventKind> {
        seen.iter()
            .filter(|(s, _)| s == id)
            .map(|(_, k)| *k)
            .collect()
    };
    assert_eq!(
        of("asks"),
        [SessionStarted, VisitorMessage, AgentMessage, AgentMessage],
        "the journaled chat's events once (from the journal, not the poll again), then its replies"
    );
    assert_eq!(
        of("chats"),
        [SessionStarted, VisitorMessage],
        "the unsaved chat's events, found again"
    );
    assert_eq!(
        replies("asks"),
        ["on it", "still here"],
        "no reply sent twice"
    );
    for id in ["asks", "chats"] {
        assert_eq!(
            store
                .memory(id)
                .expect("memory")
                .get("help")
                .map(|m| json!(m).to_string()),
            Some(r#"{"n":1}"#.to_string()),
            "{id}: the handler's memory counted its message once"
        );
    }
    assert!(store.pending_events().expect("journal").is_empty());
}

/// A cycle whose commit fails (a full disk) is not dropped: the rules
/// still see the memory it left, and it is written with the next commit
/// that succeeds, so a restart afterwards neither greets nor replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_is_kept_and_written_with_the_next() {
    let sim = live_sim().await;
    let rules = tempfile::tempdir().expect("tempdir");
    write_rule(
        rules.path(),
        "greet.rhai",
        r#"on("visitor_message", |ev| if ev.once("greeted") { ev.reply("welcome"); });"#,
    );
    let store = Arc::new(Watched::default());
    let start = || engine_on(&sim, store.clone(), rules.path());
    let welcomes = || texts(&sim, "a", SenderType::Agent).len();
    let engine = start().await;
    let mut watcher = engine.resume().await.expect("resume");
    one_cycle(&engine, &mut watcher).await;
    sim.create_session(json!({"session_id": "a"}))
        .expect("create");

    store.fail_commits.store(true, SeqCst);
    sim.visitor_message("a", "hello").expect("message");
    one_cycle(&engine, &mut watcher).await;
    assert_eq!(welcomes(), 1);
    sim.visitor_message("a", "hello again").expect("message");
    let (events, _) = one_cycle(&engine, &mut watcher).await;
    assert!(events >= 1, "the second message was seen");
    assert_eq!(welcomes(), 1, "once() remembered through the failed commit");
    assert!(
        store.memory("a").expect("memory").is_empty(),
        "no memory written yet"
    );
    assert!(
        !store.pending_events().expect("journal").is_empty(),
        "the first message is still in the journal, as its reply left it"
    );

    store.fail_commits.store(false, SeqCst);
    one_cycle(&engine, &mut watcher).await;
    assert!(store.load().expect("load").sessions.contains_key("a"));
    assert_eq!(
        store
            .memory("a")
            .expect("memory")
            .get("greet")
            .map(|m| json!(m).to_string()),
        Some(r#"{"greeted":true}"#.to_string())
    );
    assert!(store.pending_events().expect("journal").is_empty());
    drop(engine);

    let second = start().await;
    let mut watcher = second.resume().await.expect("resume");
    assert_eq!(
        one_cycle(&second, &mut watcher).await.0,
        0,
        "nothing replayed"
    );
    sim.visitor_message("a", "third").expect("message");
    one_cycle(&second, &mut watcher).await;
    assert_eq!(welcomes(), 1, "still one welcome after the restart");
}

/// An intent that cannot be written (the database gone between a chat's
/// memory read and its action) takes no action and loses no event: the
/// chat's events wait in the journal and are handled, once, as soon as the
/// store works again, by the running engine (no restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intent_that_cannot_be_written_is_taken_once_when_the_store_is_back() {
    let sim = live_sim().await;
    let rules = tempfile::tempdir().expect("tempdir");
    write_rule(
        rules.path(),
        "echo.rhai",
        r#"on("visitor_message", |ev| { ev.reply("got it: " + ev.message.text); });"#,
    );
    let store = Arc::new(Watched::default());
    let engine = engine_on(&sim, store.clone(), rules.path()).await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(engine.run(stop.clone()));
    let lists = || util::count(&sim.requests(), "GET", "/web-chat/sessions");
    eventually("the baseline", || lists() >= 3).await;
    sim.create_session(json!({"session_id": "o"}))
        .expect("create");
    let replies = |text: &str| {
        texts(&sim, "o", SenderType::Agent)
            .iter()
            .filter(|t| *t == &format!("got it: {text}"))
            .count()
    };
    sim.visitor_message("o", "one").expect("message");
    eventually("the first reply", || replies("one") == 1).await;

    store.fail_intents.store(true, SeqCst);
    sim.visitor_message("o", "two").expect("message");
    eventually("an intent that fails", || {
        store.failed_intents.load(SeqCst) >= 1
    })
    .await;
    let polls = lists();
    eventually("two more polls", || lists() >= polls + 2).await;
    assert_eq!(replies("two"), 0, "no action without its intent");

    store.fail_intents.store(false, SeqCst);
    eventually("the reply that waited", || replies("two") == 1).await;
    sim.visitor_message("o", "three").expect("message");
    eventually("the next reply", || replies("three") == 1).await;
    let polls = lists();
    eventually("three more polls", || lists() >= polls + 3).await;
    stop.cancel();
    task.await.expect("engine task").expect("engine ran");
    for text in ["one", "two", "three"] {
        assert_eq!(replies(text), 1, "one reply to {text:?}");
    }
}

/// Waits (without blocking a worker) until `cond` holds; fails the test
/// naming `what` after 30 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
