//! The operations listener end to end, against the in-process simulator:
//! `/metrics` counts exactly what happened (events, actions, handler errors,
//! API errors and retries, poll cycles, histograms), its text is valid
//! Prometheus exposition (a strict parser here plus the `prometheus-parse`
//! crate, the checks `promtool check metrics` makes), `/readyz` follows the
//! API's health both for an erroring API and for one that is gone, the
//! bearer token guards everything but `/healthz`, and the shipped Grafana
//! dashboard and alert rules name only metrics and labels that exist.
//!
//! The metrics recorder is process-wide: the tests that read it hold
//! `SERIAL` and assert on the difference between two scrapes, taken while
//! nothing else in the process moves the counters in question. Waits are on
//! conditions with a generous deadline, never on a fixed sleep.

use crate::util;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skyrules::api::{ApiKey, Client, ClientConfig, RetryPolicy, SenderType};
use skyrules::engine::{Engine, Note};
use skyrules::sim::{self, Fault, SimConfig, SimHandle};
use skyrules::store::MemoryStore;
use skyrules::telemetry::status::Board;
use skyrules::tracking::EventKind;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const KEY: &str = "ops-test-key";
/// Time between polls: readiness allows three of them (450 ms).
const POLL: Duration = Duration::from_millis(150);
/// Longest wait for any condition (generous: the machine may be loaded).
const WAIT: Duration = Duration::from_secs(30);

/// Serialises the tests that read the process-wide metrics.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const REPLIER: &str = r#"on("visitor_message", |ev| ev.reply("got it: " + ev.message.text));"#;
const THROWER: &str = r#"
on("visitor_message", |ev| {
    if ev.message.text == "boom" {
        throw "boom on purpose";
    }
});
"#;

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn sim_config() -> SimConfig {
    SimConfig {
        api_key: KEY.into(),
        seed: 11,
        bot_delay: None,
        clock_speed: 1.0,
        traffic: None,
    }
}

/// An API client with quick retries, so injected faults cost milliseconds.
fn client(base_url: &str) -> Client {
    let mut cfg = ClientConfig::new(base_url, ApiKey::new(KEY));
    cfg.timeout = Duration::from_secs(5);
    cfg.retry = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
        max_retry_after: Duration::from_secs(1),
    };
    Client::new(cfg).expect("client")
}

fn web() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// Writes a rule file the way editors save (a rename), so the reloader
/// never reads half a file.
fn write_rule(dir: &Path, name: &str, source: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, source).expect("write rule");
    std::fs::rename(&tmp, dir.join(name)).expect("rename rule");
}

/// A deadline for one awaited condition.
struct Deadline {
    what: String,
    at: Instant,
}

fn deadline(what: &str) -> Deadline {
    Deadline {
        what: what.to_string(),
        at: Instant::now() + WAIT,
    }
}

impl Deadline {
    /// Fails the test if the deadline passed, with `detail` for context.
    fn check(&self, detail: impl FnOnce() -> String) {
        if Instant::now() > self.at {
            panic!(
                "timed out after {WAIT:?} waiting for {}\n{}",
                self.what,
                detail()
            );
        }
    }
}

async fn pause() {
    tokio::time::sleep(Duration::from_millis(40)).await;
}

/// The simulator, an engine polling it, the operations listener on the
/// engine's board, and every note the engine emitted.
struct Ops {
    sim: Option<SimHandle>,
    sim_addr: SocketAddr,
    notes: Arc<Mutex<Vec<Note>>>,
    engine: Option<(CancellationToken, JoinHandle<()>)>,
    http: SocketAddr,
    http_stop: CancellationToken,
    web: reqwest::Client,
    rules_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Ops {
    /// Starts everything and waits for the engine's first poll cycle.
    async fn start(rules: &[(&str, &str)]) -> Ops {
        // Installed before the engine exists, as `skyrules run` does, so the
        // start-up rule load is counted too.
        let metrics =
            skyrules::telemetry::metrics::install().expect("the only recorder in this process");
        let sim = sim::start(sim_config(), loopback())
            .await
            .expect("start the simulator");
        let tmp = tempfile::tempdir().expect("tempdir");
        for (name, src) in rules {
            write_rule(tmp.path(), name, src);
        }
        let opts = util::engine_options(tmp.path(), POLL, 50);
        let (engine, report) =
            Engine::new(client(&sim.base_url()), Arc::new(MemoryStore::new()), opts)
                .await
                .expect("engine starts");
        assert!(report.errors.is_empty(), "rules load: {:?}", report.errors);

        let listener = skyrules::telemetry::http::bind(loopback(), None)
            .await
            .expect("bind the listener");
        let http = listener.local_addr().expect("listener address");
        let http_stop = CancellationToken::new();
        tokio::spawn(skyrules::telemetry::http::serve(
            listener,
            vec![engine.board()],
            engine.store(),
            Some(metrics),
            None,
            http_stop.clone(),
        ));

        let notes = Arc::new(Mutex::new(Vec::new()));
        let mut rx = engine.subscribe();
        let sink = notes.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(n) => sink.lock().unwrap().push(n),
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
        let ops = Ops {
            sim_addr: sim.addr(),
            sim: Some(sim),
            notes,
            engine: Some((stop, task)),
            http,
            http_stop,
            web: web(),
            rules_dir: tmp.path().to_path_buf(),
            _tmp: tmp,
        };
        ops.settle(1).await;
        ops
    }

    fn sim(&self) -> &SimHandle {
        self.sim.as_ref().expect("the simulator is running")
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

    fn dump(&self) -> String {
        let notes: Vec<String> = self
            .notes()
            .iter()
            .filter(|n| !matches!(n, Note::Cycle { events: 0, .. }))
            .map(|n| format!("  {n:?}"))
            .collect();
        let skip = notes.len().saturating_sub(40);
        format!(
            "{} cycles; notes:\n{}",
            self.cycles(),
            notes[skip..].join("\n")
        )
    }

    /// Waits until `cond` holds.
    async fn wait(&self, what: &str, cond: impl Fn(&Ops) -> bool) {
        let d = deadline(what);
        while !cond(self) {
            d.check(|| self.dump());
            pause().await;
        }
    }

    /// Lets `n` more poll cycles complete.
    async fn settle(&self, n: usize) {
        let target = self.cycles() + n;
        self.wait(&format!("{n} more poll cycle(s)"), |o| o.cycles() >= target)
            .await;
    }

    /// Stops the engine and waits until it has: the counters stop moving.
    async fn stop_engine(&mut self) {
        let (stop, task) = self.engine.take().expect("an engine is running");
        stop.cancel();
        tokio::time::timeout(WAIT, task)
            .await
            .expect("the engine stops promptly")
            .expect("the engine task");
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// GET `path` from the listener: status and body.
    async fn get(&self, path: &str) -> (u16, String) {
        get(&self.web, &self.url(path), None).await
    }

    /// Scrapes `/metrics` and validates the whole text.
    async fn scrape(&self) -> expo::Exposition {
        scrape(&self.web, &self.url("/metrics"), None).await
    }

    /// Waits until `/readyz` answers `status` and its body contains `needle`.
    async fn wait_readyz(&self, status: u16, needle: &str) -> String {
        let d = deadline(&format!("/readyz {status} mentioning {needle:?}"));
        loop {
            let (s, body) = self.get("/readyz").await;
            if s == status && body.contains(needle) {
                return body;
            }
            d.check(|| format!("last answer: {s} {body:?}\n{}", self.dump()));
            pause().await;
        }
    }

    /// Events the engine dispatched for a session, by kind.
    fn events(&self, id: &str, kind: EventKind) -> usize {
        self.notes()
            .iter()
            .filter(|n| {
                matches!(n, Note::Event { session_id, kind: k, .. } if session_id == id && *k == kind)
            })
            .count()
    }

    /// `(rule, action, outcome)` of every action on a session.
    fn actions(&self, id: &str) -> Vec<(String, String, String)> {
        self.notes()
            .into_iter()
            .filter_map(|n| match n {
                Note::Action {
                    rule,
                    session_id,
                    action,
                    outcome,
                    ..
                } if session_id == id => Some((rule, action.to_string(), outcome.to_string())),
                _ => None,
            })
            .collect()
    }

    fn rule_failures(&self, rule: &str) -> usize {
        self.notes()
            .iter()
            .filter(|n| matches!(n, Note::RuleFailed { rule: r, .. } if r == rule))
            .count()
    }
}

impl Drop for Ops {
    fn drop(&mut self) {
        if let Some((stop, _)) = &self.engine {
            stop.cancel();
        }
        self.http_stop.cancel();
    }
}

async fn get(web: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = web.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// Scrapes `url` and validates the text: our strict parser, the lints
/// `promtool check metrics` makes, and the `prometheus-parse` crate reading
/// the same samples.
async fn scrape(web: &reqwest::Client, url: &str, token: Option<&str>) -> expo::Exposition {
    let mut req = web.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("GET /metrics");
    assert_eq!(resp.status().as_u16(), 200, "GET /metrics");
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        ctype.starts_with("text/plain") && ctype.contains("version=0.0.4"),
        "the Prometheus text format's content type: {ctype:?}"
    );
    let text = resp.text().await.expect("metrics body");
    validate(&text)
}

fn validate(text: &str) -> expo::Exposition {
    let e = expo::parse(text).unwrap_or_else(|err| panic!("invalid exposition: {err}\n{text}"));
    let problems = expo::lint(&e);
    assert!(
        problems.is_empty(),
        "lint problems:\n  {}\n{text}",
        problems.join("\n  ")
    );
    cross_check(text, &e);
    e
}

/// The `prometheus-parse` crate reads every line and the same values.
fn cross_check(text: &str, ours: &expo::Exposition) {
    use prometheus_parse::{LineInfo, Scrape, Value as PValue};
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let info = LineInfo::parse(line);
        let fine = if t.starts_with("# HELP") {
            matches!(info, LineInfo::Doc { .. })
        } else if t.starts_with("# TYPE") {
            matches!(info, LineInfo::Type { .. })
        } else if t.starts_with('#') {
            true
        } else {
            matches!(info, LineInfo::Sample { .. })
        };
        assert!(fine, "prometheus-parse reads {line:?} as {info:?}");
    }
    let scrape =
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("prometheus-parse reads it");
    let theirs: BTreeSet<&str> = scrape.docs.keys().map(String::as_str).collect();
    let mine: BTreeSet<&str> = ours.families.keys().map(String::as_str).collect();
    assert_eq!(theirs, mine, "families with HELP");
    let mut seen = 0;
    for s in &scrape.samples {
        let labels: Vec<(&str, &str)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        match &s.value {
            PValue::Counter(v) | PValue::Gauge(v) | PValue::Untyped(v) => {
                let mine = ours
                    .find(&s.metric, &labels)
                    .unwrap_or_else(|| panic!("{} {labels:?} only in prometheus-parse", s.metric));
                assert!(
                    mine.value == *v || (mine.value.is_nan() && v.is_nan()),
                    "{} {labels:?}: {} vs {v}",
                    s.metric,
                    mine.value
                );
                seen += 1;
            }
            PValue::Histogram(buckets) => {
                let name = format!("{}_bucket", s.metric);
                for b in buckets {
                    let mine = ours
                        .samples
                        .iter()
                        .find(|m| {
                            m.name == name
                                && m.labels.len() == labels.len() + 1
                                && labels
                                    .iter()
                                    .all(|(k, v)| m.labels.get(*k).map(String::as_str) == Some(*v))
                                && m.labels.get("le").and_then(|le| expo::parse_value(le))
                                    == Some(b.less_than)
                        })
                        .unwrap_or_else(|| {
                            panic!(
                                "{name} {labels:?} le={} only in prometheus-parse",
                                b.less_than
                            )
                        });
                    assert_eq!(mine.value, b.count, "{name} {labels:?} le={}", b.less_than);
                    seen += 1;
                }
            }
            PValue::Summary(_) => panic!("no summaries are exported: {}", s.metric),
        }
    }
    assert_eq!(
        seen,
        ours.samples.len(),
        "prometheus-parse and the strict parser saw as many samples"
    );
}

/// Every metric name `src/telemetry/metrics.rs` declares (`pub const X: &str = "…"`),
/// read at test time so a new metric is covered without touching this file.
fn declared_metrics() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/telemetry/metrics.rs");
    let src = std::fs::read_to_string(&path).expect("read src/telemetry/metrics.rs");
    let names: BTreeSet<String> = src
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|rest| rest.split_once(": &str = \""))
        .filter_map(|(_, rest)| rest.split('"').next())
        .map(str::to_string)
        .collect();
    // The file parse agrees with the constants the code uses.
    for known in [
        skyrules::telemetry::metrics::POLL_CYCLES,
        skyrules::telemetry::metrics::POLL_DURATION,
        skyrules::telemetry::metrics::API_REQUESTS,
        skyrules::telemetry::metrics::ACTIONS,
        skyrules::telemetry::metrics::HANDLER_ERRORS,
        skyrules::telemetry::metrics::STORE_WRITE,
    ] {
        assert!(names.contains(known), "{known} not found in {path:?}");
    }
    names
}

/// Every label name `src/telemetry/metrics.rs` attaches (`"name" =>`), plus the ones
/// Prometheus adds (`le`, `instance`, `job`).
fn declared_labels() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/telemetry/metrics.rs");
    let src = std::fs::read_to_string(path).expect("read src/telemetry/metrics.rs");
    let mut labels: BTreeSet<String> = ["le", "instance", "job"]
        .into_iter()
        .map(String::from)
        .collect();
    for (i, _) in src.match_indices("\" =>") {
        let before = &src[..i];
        if let Some(start) = before.rfind('"') {
            let name = &before[start + 1..];
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                labels.insert(name.to_string());
            }
        }
    }
    assert!(labels.contains("rule") && labels.contains("endpoint"));
    labels
}

// ---------------------------------------------------------------------------
// 1. Counters move by exactly what happened
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_events_actions_and_errors_exactly() {
    if !util::in_own_process(
        module_path!(),
        "metrics_count_events_actions_and_errors_exactly",
    ) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let started_unix = unix_now();
    let mut ops = Ops::start(&[("replier.rhai", REPLIER), ("thrower.rhai", THROWER)]).await;
    ops.settle(2).await;
    let before = ops.scrape().await;

    // One 500 on the session list, injected while the engine is idle (no
    // session exists, so a cycle is one list request and nothing else).
    ops.sim().clear_requests();
    ops.sim()
        .add_fault(Fault {
            method: Some("GET".into()),
            path_contains: Some("/web-chat/sessions".into()),
            status: Some(500),
            times: Some(1),
            ..Fault::default()
        })
        .expect("fault");
    ops.wait("the fault to fire", |o| {
        o.sim().requests().iter().any(|r| r.fault.is_some())
    })
    .await;
    let faulted: Vec<_> = ops
        .sim()
        .requests()
        .into_iter()
        .filter(|r| r.fault.is_some())
        .collect();
    assert_eq!(faulted.len(), 1, "{faulted:?}");
    assert_eq!(
        (
            faulted[0].method.as_str(),
            faulted[0].path.as_str(),
            faulted[0].status
        ),
        ("GET", "/api/v1/web-chat/sessions", 500),
        "the fault hit the session list"
    );
    // The retry succeeded: cycles keep completing.
    ops.settle(2).await;

    // Three visitor messages: both rules see each, one reply each, and the
    // thrower fails on "boom".
    let id = ops
        .sim()
        .create_session(json!({"session_id": "ops-chat", "visitor_name": "Ada"}))
        .expect("create session")
        .session
        .session_id;
    for text in ["hello", "boom", "bye"] {
        ops.sim().advance(Duration::from_millis(1));
        ops.sim()
            .visitor_message(&id, text)
            .expect("visitor message");
    }
    ops.wait("three replies and one handler failure", |o| {
        o.events(&id, EventKind::VisitorMessage) == 3
            && o.events(&id, EventKind::AgentMessage) == 3
            && o.actions(&id).len() == 3
            && o.rule_failures("thrower") == 1
    })
    .await;
    ops.settle(2).await;
    ops.stop_engine().await;

    let after = ops.scrape().await;
    let d =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    let ds =
        |name: &str, labels: &[(&str, &str)]| after.sum(name, labels) - before.sum(name, labels);

    // What the engine told observers agrees with what it counted.
    let actions = ops.actions(&id);
    assert!(
        actions
            .iter()
            .all(|a| (a.0.as_str(), a.1.as_str(), a.2.as_str()) == ("replier", "reply", "taken")),
        "{actions:?}"
    );
    let mut agent = ops.sim().session(&id).expect("session").messages;
    agent.retain(|m| m.sender_type == SenderType::Agent);
    let texts: Vec<&str> = agent.iter().map(|m| m.text()).collect();
    assert_eq!(texts, ["got it: hello", "got it: boom", "got it: bye"]);

    // Events, by kind.
    let events = "skyrules_events_total";
    assert_eq!(d(events, &[("kind", "visitor_message")]), 3.0);
    assert_eq!(d(events, &[("kind", "session_started")]), 1.0);
    assert_eq!(d(events, &[("kind", "agent_message")]), 3.0);
    assert_eq!(ds(events, &[]), 7.0, "no other event");
    // Every engine metric names its workspace (`default`: no tables).
    assert_eq!(
        d(
            events,
            &[("workspace", "default"), ("kind", "visitor_message")]
        ),
        3.0
    );

    // Handler runs and failures, by rule.
    assert_eq!(
        d("skyrules_handler_runs_total", &[("rule", "replier")]),
        3.0
    );
    assert_eq!(
        d("skyrules_handler_runs_total", &[("rule", "thrower")]),
        3.0
    );
    assert_eq!(
        d("skyrules_handler_errors_total", &[("rule", "thrower")]),
        1.0
    );
    assert_eq!(
        ds("skyrules_handler_errors_total", &[]),
        1.0,
        "only the thrower failed"
    );

    // Actions, by rule, action and outcome.
    let taken = [
        ("rule", "replier"),
        ("action", "reply"),
        ("outcome", "taken"),
    ];
    assert_eq!(d("skyrules_actions_total", &taken), 3.0);
    assert_eq!(ds("skyrules_actions_total", &[]), 3.0, "no other action");

    // API requests, errors and retries.
    let api = "skyrules_api_requests_total";
    assert_eq!(
        d(api, &[("endpoint", "list_sessions"), ("status", "5xx")]),
        1.0
    );
    assert_eq!(
        ds(api, &[("status", "5xx")]),
        1.0,
        "one server error in all"
    );
    assert_eq!(ds(api, &[("status", "error")]), 0.0, "no transport error");
    assert_eq!(
        d(api, &[("endpoint", "send_message"), ("status", "2xx")]),
        3.0
    );
    assert_eq!(
        d(
            "skyrules_api_retries_total",
            &[("endpoint", "list_sessions"), ("reason", "server_error")]
        ),
        1.0
    );
    assert_eq!(
        ds("skyrules_api_retries_total", &[]),
        1.0,
        "one retry in all"
    );
    // Every request is timed: the latency histogram counts them all
    // (compared once nothing runs, so no request is between the two).
    for endpoint in ["list_sessions", "get_session", "send_message"] {
        assert_eq!(
            after.get(
                "skyrules_api_request_duration_seconds_count",
                &[("endpoint", endpoint)]
            ),
            after.sum(api, &[("endpoint", endpoint)]),
            "{endpoint}: timed requests = counted requests"
        );
    }

    // Poll cycles: several succeeded, none failed (the retry saved the
    // faulted one), and the histogram saw each success.
    let cycles = "skyrules_poll_cycles_total";
    let ok = d(cycles, &[("result", "ok")]);
    assert!(ok >= 4.0, "ok cycles: {ok}");
    assert_eq!(d(cycles, &[("result", "error")]), 0.0);
    let hist = "skyrules_poll_cycle_duration_seconds";
    for suffix in ["_bucket", "_sum", "_count"] {
        assert!(after.has(&format!("{hist}{suffix}")), "{hist}{suffix}");
    }
    // Nothing in the process polls now: the histogram has exactly one
    // observation per ok cycle ever counted.
    assert_eq!(
        after.get(&format!("{hist}_count"), &[]),
        after.get(cycles, &[("result", "ok")]),
        "the histogram and the counter agree"
    );
    assert_eq!(
        after.get(&format!("{hist}_bucket"), &[("le", "+Inf")]),
        after.get(&format!("{hist}_count"), &[])
    );
    assert!(d(&format!("{hist}_sum"), &[]) > 0.0);

    // State writes: one intent and one outcome per action.
    let store = "skyrules_state_write_duration_seconds_count";
    assert_eq!(d(store, &[("op", "intent")]), 3.0);
    assert_eq!(d(store, &[("op", "outcome")]), 3.0);
    // A cycle writes its sessions, events and rule memory in at most one
    // commit (none when nothing changed), never a transaction per session.
    let commits = after.get(store, &[("op", "commit")]);
    assert!(commits >= 1.0, "the replies' cycle committed");
    assert!(
        commits
            <= after.get(cycles, &[("result", "ok")]) + after.get(cycles, &[("result", "error")]),
        "at most one commit per cycle: {commits}"
    );
    assert_eq!(
        ds(store, &[]),
        d(store, &[("op", "commit")]) + 6.0,
        "no state write besides the commits and the actions' records"
    );

    // Gauges.
    let last = after.get("skyrules_last_successful_poll_timestamp_seconds", &[]);
    assert!(
        last >= started_unix - 1.0 && last <= unix_now() + 1.0,
        "last poll {last}"
    );
    assert_eq!(after.sum("skyrules_sessions_tracked", &[]), 1.0, "one chat");
    assert_eq!(
        after.get(
            "skyrules_sessions_tracked",
            &[("status", "active"), ("handled_by", "ai")]
        ),
        1.0
    );
    assert_eq!(after.get("skyrules_rules_loaded", &[]), 2.0);
    assert_eq!(after.get("skyrules_rule_last_reload_successful", &[]), 1.0);
    assert_eq!(ds("skyrules_rule_reloads_total", &[]), 0.0, "no reload");

    // Nothing is exported under a name src/metrics.rs does not declare, and
    // everything this traffic touches is exported (HELP and TYPE are
    // checked for every family by the lints).
    let declared = declared_metrics();
    for name in after.families.keys() {
        assert!(
            declared.contains(name),
            "{name} is exported but not declared"
        );
    }
    for name in [
        "skyrules_poll_cycles_total",
        "skyrules_poll_cycle_duration_seconds",
        "skyrules_last_successful_poll_timestamp_seconds",
        "skyrules_api_requests_total",
        "skyrules_api_request_duration_seconds",
        "skyrules_api_retries_total",
        "skyrules_sessions_tracked",
        "skyrules_events_total",
        "skyrules_handler_runs_total",
        "skyrules_handler_errors_total",
        "skyrules_actions_total",
        "skyrules_rule_reloads_total",
        "skyrules_rules_loaded",
        "skyrules_rule_last_reload_successful",
        "skyrules_rule_last_reload_timestamp_seconds",
        "skyrules_state_write_duration_seconds",
    ] {
        assert!(declared.contains(name), "{name} is no longer declared");
        assert!(after.families.contains_key(name), "{name} is not exported");
    }

    // The board agrees.
    let (status, body) = ops.get("/status.json").await;
    assert_eq!(status, 200);
    let status_json: Value = serde_json::from_str(&body).expect("status json");
    assert_eq!(status_json["workspaces"][0]["workspace"], "default");
    let board = &status_json["workspaces"][0];
    assert!(
        board["sessions"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["session_id"] == "ops-chat")),
        "{board}"
    );
    let shown: Vec<&Value> = board["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|a| a["session_id"] == "ops-chat")
        .collect();
    assert_eq!(shown.len(), 3, "{board}");
    assert!(shown
        .iter()
        .all(|a| a["rule"] == "replier" && a["action"] == "reply" && a["outcome"] == "taken"));
    let (status, page) = ops.get("/").await;
    assert_eq!(status, 200);
    for needle in ["Active sessions", "ops-chat", "Ada", "replier", "thrower"] {
        assert!(page.contains(needle), "the page shows {needle:?}");
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

// ---------------------------------------------------------------------------
// 2. Readiness follows the API
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_flips_when_the_api_fails_or_disappears_and_back() {
    if !util::in_own_process(
        module_path!(),
        "readyz_flips_when_the_api_fails_or_disappears_and_back",
    ) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut ops = Ops::start(&[("replier.rhai", REPLIER)]).await;
    assert_eq!(ops.get("/healthz").await, (200, "ok\n".to_string()));
    ops.wait_readyz(200, "ready").await;

    // The API answers 503 to everything.
    let before = ops.scrape().await;
    ops.sim()
        .add_fault(Fault {
            times: None,
            ..Fault::status(503)
        })
        .expect("fault");
    let why = ops.wait_readyz(503, "last error").await;
    assert!(why.starts_with("not ready: "), "{why:?}");
    assert!(why.contains("HTTP 503"), "says what failed: {why:?}");
    let (status, body) = ops.get("/status.json").await;
    assert_eq!(status, 200);
    let board: Value = serde_json::from_str(&body).expect("status json");
    assert_eq!(board["ready"], false, "{board}");
    assert_eq!(board["workspaces"][0]["ready"], false, "{board}");
    assert!(
        board["workspaces"][0]["not_ready_because"].is_string(),
        "{board}"
    );
    assert_eq!(ops.get("/healthz").await.0, 200, "alive while not ready");
    let during = ops.scrape().await;
    let d =
        |name: &str, labels: &[(&str, &str)]| during.get(name, labels) - before.get(name, labels);
    assert!(d("skyrules_poll_cycles_total", &[("result", "error")]) >= 1.0);
    // A failed cycle made all three attempts, two of them retries.
    assert!(
        d(
            "skyrules_api_requests_total",
            &[("endpoint", "list_sessions"), ("status", "5xx")]
        ) >= 3.0
    );
    assert!(
        d(
            "skyrules_api_retries_total",
            &[("endpoint", "list_sessions"), ("reason", "server_error")]
        ) >= 2.0
    );

    ops.sim().clear_faults();
    ops.wait_readyz(200, "ready").await;

    // The simulator goes away altogether, then comes back on the same port.
    let before = ops.scrape().await;
    let addr = ops.sim_addr;
    ops.sim.take().expect("sim").shutdown().await;
    let why = ops.wait_readyz(503, "last error").await;
    assert!(why.contains("could not connect"), "{why:?}");
    let during = ops.scrape().await;
    assert!(
        during.get(
            "skyrules_api_requests_total",
            &[("endpoint", "list_sessions"), ("status", "error")]
        ) > before.get(
            "skyrules_api_requests_total",
            &[("endpoint", "list_sessions"), ("status", "error")]
        ),
        "requests without a response are counted as status=\"error\""
    );
    let d = deadline("the simulator to bind its old port again");
    let sim = loop {
        match sim::start(sim_config(), addr).await {
            Ok(s) => break s,
            Err(e) => d.check(|| format!("bind {addr}: {e}")),
        }
        pause().await;
    };
    ops.sim = Some(sim);
    ops.wait_readyz(200, "ready").await;
    ops.stop_engine().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_needs_a_rule_and_reloads_are_counted() {
    if !util::in_own_process(
        module_path!(),
        "readyz_needs_a_rule_and_reloads_are_counted",
    ) {
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut ops = Ops::start(&[]).await;
    // Polling works, but nothing would act on what it sees.
    let why = ops.wait_readyz(503, "no rule is loaded").await;
    assert!(why.starts_with("not ready: "), "{why:?}");
    let before = ops.scrape().await;
    assert_eq!(before.get("skyrules_rules_loaded", &[]), 0.0);

    write_rule(&ops.rules_dir, "replier.rhai", REPLIER);
    ops.wait_readyz(200, "ready").await;
    let d = deadline("the reload to be counted");
    let loaded = loop {
        let m = ops.scrape().await;
        if m.get("skyrules_rules_loaded", &[]) == 1.0 {
            break m;
        }
        d.check(|| "skyrules_rules_loaded stays 0".into());
        pause().await;
    };
    let reloads = |m: &expo::Exposition, result: &str| {
        m.get("skyrules_rule_reloads_total", &[("result", result)])
    };
    assert!(reloads(&loaded, "ok") > reloads(&before, "ok"));
    assert_eq!(loaded.get("skyrules_rule_last_reload_successful", &[]), 1.0);
    let t = loaded.get("skyrules_rule_last_reload_timestamp_seconds", &[]);
    assert!(t > 0.0 && t <= unix_now() + 1.0, "reload time {t}");

    // A broken file: the reload fails, the running rule stays, still ready.
    write_rule(
        &ops.rules_dir,
        "broken.rhai",
        "on(\"visitor_message\", |ev| {",
    );
    let d = deadline("the failed reload to be counted");
    let failed = loop {
        let m = ops.scrape().await;
        if m.get("skyrules_rule_last_reload_successful", &[]) == 0.0 {
            break m;
        }
        d.check(|| "skyrules_rule_last_reload_successful stays 1".into());
        pause().await;
    };
    assert!(reloads(&failed, "error") > reloads(&loaded, "error"));
    assert_eq!(failed.get("skyrules_rules_loaded", &[]), 1.0);
    assert_eq!(ops.get("/readyz").await.0, 200, "one rule still runs");
    ops.stop_engine().await;
}

// ---------------------------------------------------------------------------
// 3. The bearer token
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_guards_everything_but_healthz() {
    if !util::in_own_process(module_path!(), "the_token_guards_everything_but_healthz") {
        return;
    }
    const TOKEN: &str = "s3cret-ops-token";
    let metrics = skyrules::telemetry::metrics::install().expect("recorder");
    let listener = skyrules::telemetry::http::bind(loopback(), Some(TOKEN))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let stop = CancellationToken::new();
    let board = Arc::new(RwLock::new(Board::default()));
    let server = tokio::spawn(skyrules::telemetry::http::serve(
        listener,
        vec![board],
        Arc::new(MemoryStore::new()),
        Some(metrics),
        Some(TOKEN.to_string()),
        stop.clone(),
    ));
    let web = web();
    let url = |p: &str| format!("http://{addr}{p}");

    for path in [
        "/",
        "/status.json",
        "/metrics",
        "/readyz",
        "/sessions/s1",
        "/sessions/s1.json",
    ] {
        let resp = web.get(url(path)).send().await.expect("GET");
        assert_eq!(resp.status().as_u16(), 401, "{path} without a token");
        assert_eq!(
            resp.headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer"),
            "{path}"
        );
        assert_eq!(get(&web, &url(path), Some("wrong")).await.0, 401, "{path}");
        assert_eq!(
            get(&web, &url(path), Some(&format!("{TOKEN}x"))).await.0,
            401,
            "{path}"
        );
        let resp = web
            .get(url(path))
            .header("authorization", TOKEN)
            .send()
            .await
            .expect("GET");
        assert_eq!(
            resp.status().as_u16(),
            401,
            "{path}: the scheme is required"
        );
    }
    assert_eq!(
        get(&web, &url("/healthz"), None).await,
        (200, "ok\n".into())
    );
    assert_eq!(get(&web, &url("/metrics"), Some(TOKEN)).await.0, 200);
    scrape(&web, &url("/metrics"), Some(TOKEN)).await;
    assert_eq!(get(&web, &url("/"), Some(TOKEN)).await.0, 200);
    assert_eq!(get(&web, &url("/status.json"), Some(TOKEN)).await.0, 200);
    // Authorised, but an empty board is not ready.
    let (status, body) = get(&web, &url("/readyz"), Some(TOKEN)).await;
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready: no rule is loaded\n")
    );

    stop.cancel();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("the server stops")
        .expect("server task")
        .expect("serve");

    // Off loopback a token is mandatory.
    let public = SocketAddr::from(([0, 0, 0, 0], 0));
    let err = skyrules::telemetry::http::bind(public, None)
        .await
        .expect_err("no token, not loopback");
    assert!(err.to_string().contains("token_file"), "{err}");
    skyrules::telemetry::http::bind(public, Some(TOKEN))
        .await
        .expect("with a token any address is fine");
}

#[test]
fn run_refuses_a_public_listener_without_a_token_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("rules")).expect("rules dir");
    let mut child = util::skyrules_command()
        .env("SKYLIGHT_API_KEY", "sk_unused")
        .current_dir(dir.path())
        .args([
            "--base-url",
            "http://127.0.0.1:9/api/v1",
            "run",
            "--rules",
            "rules",
            "--state",
            "state.db",
            "--listen",
            "0.0.0.0:0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn skyrules");
    let d = Instant::now() + WAIT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > d {
            let _ = child.kill();
            panic!("`skyrules run --listen 0.0.0.0:0` did not exit within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit code; stderr:\n{stderr}");
    assert!(
        stderr.contains("http.token_file"),
        "names the setting:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !dir.path().join("state.db").exists(),
        "refused before touching the state"
    );
}

// ---------------------------------------------------------------------------
// 4. The shipped dashboard and alert rules
// ---------------------------------------------------------------------------

/// `skyrules_…` identifiers in `text`.
fn metric_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    for (i, _) in text.match_indices("skyrules_") {
        if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_') {
            continue;
        }
        let end = text[i..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |n| i + n);
        out.insert(text[i..end].to_string());
    }
    out
}

/// The metric a referenced series name belongs to (`_bucket`, `_sum` and
/// `_count` belong to their histogram), if it is declared.
fn resolve<'a>(name: &str, declared: &'a BTreeSet<String>) -> Option<&'a String> {
    if let Some(d) = declared.get(name) {
        return Some(d);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s).and_then(|base| declared.get(base)))
}

/// Label names a PromQL expression groups by or matches on.
fn label_refs(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> Option<String> {
        let s = s.trim();
        (!s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .then(|| s.to_string())
    };
    for kw in [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ] {
        let mut rest = expr;
        while let Some(i) = rest.find(kw) {
            let before_ok = i == 0
                || (!rest.as_bytes()[i - 1].is_ascii_alphanumeric()
                    && rest.as_bytes()[i - 1] != b'_');
            let after = rest[i + kw.len()..].trim_start();
            rest = &rest[i + kw.len()..];
            if before_ok {
                if let Some(inner) = after.strip_prefix('(') {
                    if let Some(end) = inner.find(')') {
                        out.extend(inner[..end].split(',').filter_map(ident));
                    }
                }
            }
        }
    }
    let mut rest = expr;
    while let Some(i) = rest.find('{') {
        let Some(end) = rest[i..].find('}') else {
            break;
        };
        for m in rest[i + 1..i + end].split(',') {
            if let Some(pos) = m.find(['=', '!']) {
                out.extend(ident(&m[..pos]));
            }
        }
        rest = &rest[i + end..];
    }
    out
}

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"))
}

/// Every string in a JSON document, with the key it is under.
fn strings<'a>(v: &'a Value, key: &'a str, out: &mut Vec<(&'a str, &'a str)>) {
    match v {
        Value::String(s) => out.push((key, s)),
        Value::Array(a) => a.iter().for_each(|x| strings(x, key, out)),
        Value::Object(o) => o.iter().for_each(|(k, x)| strings(x, k, out)),
        _ => {}
    }
}

#[test]
fn the_grafana_dashboard_names_only_real_metrics() {
    let text = example("grafana-dashboard.json");
    let dash: Value = serde_json::from_str(&text).expect("valid JSON");
    let declared = declared_metrics();
    let labels = declared_labels();

    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dash["uid"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(
        dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion {}",
        dash["schemaVersion"]
    );
    let inputs = dash["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "a ${{DS_PROMETHEUS}} datasource input"
    );

    // Panels (rows may nest theirs), each with a unique id, a place and
    // queries on the Prometheus input.
    let mut panels = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        panels.push(p);
        if let Some(inner) = p["panels"].as_array() {
            panels.extend(inner);
        }
    }
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for p in &panels {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id: {title}"
        );
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].is_u64(), "{title}: gridPos.{k}");
        }
        if p["type"] == "row" {
            continue;
        }
        assert!(p["type"].is_string(), "{title}: type");
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            let expr = t["expr"].as_str().expect("every target has an expr");
            assert!(refs.insert(t["refId"].as_str().expect("refId")), "{title}");
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            assert!(
                !metric_refs(expr).is_empty(),
                "{title}: {expr:?} queries no skyrules metric"
            );
            let open = expr.matches('(').count();
            assert_eq!(open, expr.matches(')').count(), "{title}: {expr}");
            exprs.push((title.to_string(), expr.to_string()));
        }
    }

    // Every name anywhere in the dashboard (queries, variables,
    // descriptions) is a declared metric; every label exists.
    let mut all = Vec::new();
    strings(&dash, "", &mut all);
    let mut used = BTreeSet::new();
    for (_, s) in &all {
        for name in metric_refs(s) {
            let m = resolve(&name, &declared).unwrap_or_else(|| {
                panic!("the dashboard names {name}, which src/metrics.rs does not declare")
            });
            used.insert(m.clone());
        }
    }
    for (title, expr) in &exprs {
        for l in label_refs(expr) {
            assert!(
                labels.contains(&l),
                "{title}: label {l:?} in {expr:?} does not exist"
            );
        }
    }

    // The panels the issue asks for.
    let has = |needle: &str| exprs.iter().any(|(_, e)| e.contains(needle));
    assert!(has("histogram_quantile(0.5") && has("histogram_quantile(0.99"));
    assert!(has("skyrules_poll_cycle_duration_seconds_bucket"));
    assert!(has("skyrules_state_write_duration_seconds_bucket"));
    for m in [
        "skyrules_poll_cycles_total",
        "skyrules_api_requests_total",
        "skyrules_api_retries_total",
        "skyrules_actions_total",
        "skyrules_handler_errors_total",
        "skyrules_events_total",
        "skyrules_sessions_tracked",
        "skyrules_rules_loaded",
        "skyrules_rule_last_reload_successful",
    ] {
        assert!(used.contains(m), "no panel shows {m}");
    }
    assert!(has("5xx|error"), "an API error-rate panel");
}

#[test]
fn the_alert_rules_name_only_real_metrics() {
    let text = example("prometheus-alerts.yml");
    let declared = declared_metrics();
    let labels = declared_labels();
    assert!(!text.contains('\t'), "YAML is indented with spaces");
    assert!(
        text.lines().any(|l| l.trim_end() == "groups:"),
        "a rules file"
    );

    // Split into alerts: each `- alert: Name` up to the next one.
    let mut alerts: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(name) = t.strip_prefix("- alert:") {
            if let Some((n, body)) = current.take() {
                alerts.insert(n, body);
            }
            current = Some((name.trim().to_string(), String::new()));
        } else if t.starts_with("- name:") {
            if let Some((n, body)) = current.take() {
                alerts.insert(n, body);
            }
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    if let Some((n, body)) = current.take() {
        alerts.insert(n, body);
    }
    for wanted in [
        "SkyrulesNotPolling",
        "SkyrulesRuleFailing",
        "SkyrulesRuleReloadFailed",
        "SkyrulesApiErrors",
    ] {
        assert!(alerts.contains_key(wanted), "missing alert {wanted}");
    }
    for (name, body) in &alerts {
        for key in [
            "expr:",
            "labels:",
            "severity:",
            "annotations:",
            "summary:",
            "description:",
        ] {
            assert!(body.contains(key), "{name}: no {key}");
        }
        let refs = metric_refs(body);
        assert!(!refs.is_empty(), "{name}: queries no skyrules metric");
        for l in label_refs(body.split("annotations:").next().unwrap_or("")) {
            assert!(labels.contains(&l), "{name}: label {l:?} does not exist");
        }
    }
    for name in metric_refs(&text) {
        assert!(
            resolve(&name, &declared).is_some(),
            "the alerts name {name}, which src/metrics.rs does not declare"
        );
    }
    let not_polling = &alerts["SkyrulesNotPolling"];
    assert!(not_polling.contains("skyrules_last_successful_poll_timestamp_seconds"));
    assert!(
        not_polling.contains("absent("),
        "also fires when nothing is scraped"
    );
    assert!(alerts["SkyrulesRuleFailing"].contains("skyrules_handler_errors_total"));
    assert!(alerts["SkyrulesRuleReloadFailed"].contains("skyrules_rule_last_reload_successful"));
    assert!(alerts["SkyrulesApiErrors"].contains("5xx|error"));
}

// ---------------------------------------------------------------------------
// 5. The validator itself rejects what Prometheus would
// ---------------------------------------------------------------------------

#[test]
fn the_exposition_checks_reject_broken_text() {
    let good = "# HELP skyrules_x_total Things.\n# TYPE skyrules_x_total counter\nskyrules_x_total{a=\"1\"} 3\n\
                # HELP skyrules_d_seconds Time.\n# TYPE skyrules_d_seconds histogram\n\
                skyrules_d_seconds_bucket{le=\"0.1\"} 1\nskyrules_d_seconds_bucket{le=\"+Inf\"} 2\n\
                skyrules_d_seconds_sum 0.3\nskyrules_d_seconds_count 2\n";
    let e = validate(good);
    assert_eq!(e.get("skyrules_x_total", &[("a", "1")]), 3.0);
    assert_eq!(e.get("skyrules_d_seconds_bucket", &[("le", "+Inf")]), 2.0);

    let parse_errors = [
        ("no TYPE", "skyrules_y 1\n"),
        ("bad escape", "# TYPE skyrules_y gauge\nskyrules_y{a=\"\\q\"} 1\n"),
        ("unclosed labels", "# TYPE skyrules_y gauge\nskyrules_y{a=\"1\" 1\n"),
        ("bad value", "# TYPE skyrules_y gauge\nskyrules_y one\n"),
        ("no newline at the end", "# TYPE skyrules_y gauge\nskyrules_y 1"),
        ("duplicate series", "# TYPE skyrules_y gauge\nskyrules_y 1\nskyrules_y 2\n"),
        ("duplicate label", "# TYPE skyrules_y gauge\nskyrules_y{a=\"1\",a=\"2\"} 1\n"),
        (
            "interleaved",
            "# TYPE skyrules_y gauge\n# TYPE skyrules_z gauge\nskyrules_z 1\nskyrules_y 1\n",
        ),
        (
            "no +Inf bucket",
            "# TYPE skyrules_h histogram\nskyrules_h_bucket{le=\"1\"} 1\nskyrules_h_sum 1\nskyrules_h_count 1\n",
        ),
        (
            "count differs from +Inf",
            "# TYPE skyrules_h histogram\nskyrules_h_bucket{le=\"+Inf\"} 1\nskyrules_h_sum 1\nskyrules_h_count 2\n",
        ),
        (
            "decreasing buckets",
            "# TYPE skyrules_h histogram\nskyrules_h_bucket{le=\"1\"} 2\nskyrules_h_bucket{le=\"+Inf\"} 1\nskyrules_h_sum 1\nskyrules_h_count 1\n",
        ),
    ];
    for (what, text) in parse_errors {
        assert!(expo::parse(text).is_err(), "{what}: accepted {text:?}");
    }
    let lint_errors = [
        (
            "counter without _total",
            "# HELP skyrules_y Y.\n# TYPE skyrules_y counter\nskyrules_y 1\n",
        ),
        (
            "gauge with _total",
            "# HELP skyrules_y_total Y.\n# TYPE skyrules_y_total gauge\nskyrules_y_total 1\n",
        ),
        ("no HELP", "# TYPE skyrules_y gauge\nskyrules_y 1\n"),
        (
            "foreign name",
            "# HELP other_y Y.\n# TYPE other_y gauge\nother_y 1\n",
        ),
        (
            "upper case",
            "# HELP skyrules_Y Y.\n# TYPE skyrules_Y gauge\nskyrules_Y 1\n",
        ),
    ];
    for (what, text) in lint_errors {
        let e = expo::parse(text).unwrap_or_else(|err| panic!("{what}: {err}"));
        assert!(!expo::lint(&e).is_empty(), "{what}: no lint for {text:?}");
    }
}

// ---------------------------------------------------------------------------
// The Prometheus text format (0.0.4), strictly
// ---------------------------------------------------------------------------

mod expo {
    use std::collections::{BTreeMap, BTreeSet};

    pub type Labels = BTreeMap<String, String>;

    #[derive(Debug, Clone, PartialEq)]
    pub struct Sample {
        pub name: String,
        pub labels: Labels,
        pub value: f64,
    }

    #[derive(Debug, Default, Clone)]
    pub struct Family {
        pub help: Option<String>,
        pub kind: Option<String>,
        /// Sample lines of the family.
        pub series: usize,
    }

    #[derive(Debug, Default)]
    pub struct Exposition {
        pub families: BTreeMap<String, Family>,
        pub samples: Vec<Sample>,
    }

    impl Exposition {
        /// The sample with exactly these labels, besides `workspace` when
        /// they do not name one (every engine metric has it; these tests
        /// run one workspace).
        pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Sample> {
            let named = labels.iter().any(|(k, _)| *k == "workspace");
            self.samples.iter().find(|s| {
                let own = s
                    .labels
                    .keys()
                    .filter(|k| named || k.as_str() != "workspace")
                    .count();
                s.name == name
                    && own == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
        }

        /// The value of the sample with exactly these labels; 0 when absent
        /// (a counter not incremented yet is not exported).
        pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
            self.find(name, labels).map_or(0.0, |s| s.value)
        }

        /// The sum over the samples that have at least these labels.
        pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
            self.samples
                .iter()
                .filter(|s| {
                    s.name == name
                        && labels
                            .iter()
                            .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
                })
                .map(|s| s.value)
                .sum()
        }

        pub fn has(&self, name: &str) -> bool {
            self.samples.iter().any(|s| s.name == name)
        }
    }

    const KINDS: [&str; 5] = ["counter", "gauge", "histogram", "summary", "untyped"];

    fn is_name(s: &str) -> bool {
        let mut c = s.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
    }

    fn is_label_name(s: &str) -> bool {
        let mut c = s.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
    }

    /// A float as the format writes it (Go's ParseFloat, `+Inf`, `NaN`).
    pub fn parse_value(t: &str) -> Option<f64> {
        match t {
            "+Inf" | "Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            "NaN" => Some(f64::NAN),
            _ if t
                .bytes()
                .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
            {
                t.parse().ok()
            }
            _ => None,
        }
    }

    /// The first whitespace-separated token and the rest.
    fn token(s: &str) -> (&str, &str) {
        let s = s.trim_start_matches([' ', '\t']);
        match s.find([' ', '\t']) {
            Some(i) => (&s[..i], &s[i..]),
            None => (s, ""),
        }
    }

    fn unescape(s: &str, quotes: bool) -> Result<String, String> {
        let mut out = String::new();
        let mut it = s.chars();
        while let Some(c) = it.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match it.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('"') if quotes => out.push('"'),
                other => return Err(format!("invalid escape \\{other:?}")),
            }
        }
        Ok(out)
    }

    /// name, labels, value, timestamp
    type Parsed = (String, Labels, f64, Option<i64>);

    fn parse_sample(line: &str) -> Result<Parsed, String> {
        let name_end = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(line.len());
        let name = &line[..name_end];
        if !is_name(name) {
            return Err(format!("bad metric name {name:?}"));
        }
        let mut rest = &line[name_end..];
        let mut labels = Labels::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                rest = rest.trim_start_matches([' ', '\t']);
                if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let eq = rest.find('=').ok_or("label without '='")?;
                let lname = rest[..eq].trim_matches([' ', '\t']);
                if !is_label_name(lname) {
                    return Err(format!("bad label name {lname:?}"));
                }
                rest = rest[eq + 1..].trim_start_matches([' ', '\t']);
                rest = rest
                    .strip_prefix('"')
                    .ok_or("label value without opening quote")?;
                // The closing quote is the first one not escaped.
                let mut end = None;
                let mut escaped = false;
                for (i, c) in rest.char_indices() {
                    match (escaped, c) {
                        (true, _) => escaped = false,
                        (false, '\\') => escaped = true,
                        (false, '"') => {
                            end = Some(i);
                            break;
                        }
                        _ => {}
                    }
                }
                let end = end.ok_or("unterminated label value")?;
                let value = unescape(&rest[..end], true)?;
                if labels.insert(lname.to_string(), value).is_some() {
                    return Err(format!("duplicate label {lname:?}"));
                }
                rest = rest[end + 1..].trim_start_matches([' ', '\t']);
                if let Some(r) = rest.strip_prefix(',') {
                    rest = r;
                } else if !rest.starts_with('}') {
                    return Err("expected ',' or '}' after a label".into());
                }
            }
        }
        if !rest.starts_with([' ', '\t']) {
            return Err("no whitespace before the value".into());
        }
        let mut toks = rest.split_whitespace();
        let v = toks.next().ok_or("no value")?;
        let value = parse_value(v).ok_or_else(|| format!("bad value {v:?}"))?;
        let ts = match toks.next() {
            Some(t) => Some(
                t.parse::<i64>()
                    .map_err(|_| format!("bad timestamp {t:?}"))?,
            ),
            None => None,
        };
        if toks.next().is_some() {
            return Err("trailing text after the timestamp".into());
        }
        Ok((name.to_string(), labels, value, ts))
    }

    /// The family a sample name belongs to, given the TYPEs seen so far.
    fn family_of(families: &BTreeMap<String, Family>, name: &str) -> Option<String> {
        let kind = |n: &str| families.get(n).and_then(|f| f.kind.clone());
        if let Some(k) = kind(name) {
            if k != "histogram" {
                return Some(name.to_string());
            }
        }
        for (suffix, kinds) in [
            ("_bucket", &["histogram"][..]),
            ("_sum", &["histogram", "summary"][..]),
            ("_count", &["histogram", "summary"][..]),
        ] {
            if let Some(base) = name.strip_suffix(suffix) {
                if kind(base).is_some_and(|k| kinds.contains(&k.as_str())) {
                    return Some(base.to_string());
                }
            }
        }
        None
    }

    /// Parses the whole text, failing on anything Prometheus' own parser
    /// would refuse, plus: every sample's family must have a TYPE first.
    pub fn parse(text: &str) -> Result<Exposition, String> {
        let mut e = Exposition::default();
        if !text.is_empty() && !text.ends_with('\n') {
            return Err("the text must end with a newline".into());
        }
        let mut current: Option<String> = None;
        let mut closed: BTreeSet<String> = BTreeSet::new();
        let mut series: BTreeSet<(String, Labels)> = BTreeSet::new();
        let mut enter = |name: &str, current: &mut Option<String>| -> Result<(), String> {
            if current.as_deref() == Some(name) {
                return Ok(());
            }
            if closed.contains(name) {
                return Err(format!("the lines of {name} are not one group"));
            }
            if let Some(c) = current.take() {
                closed.insert(c);
            }
            *current = Some(name.to_string());
            Ok(())
        };
        for (i, line) in text.lines().enumerate() {
            let at = |m: String| format!("line {}: {m}: {line:?}", i + 1);
            if line.trim().is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let (kw, rest) = token(comment);
                match kw {
                    "HELP" => {
                        let (name, doc) = token(rest);
                        if !is_name(name) {
                            return Err(at(format!("bad metric name {name:?}")));
                        }
                        let doc = doc.strip_prefix([' ', '\t']).unwrap_or(doc);
                        let doc = unescape(doc, false).map_err(at)?;
                        enter(name, &mut current).map_err(at)?;
                        let fam = e.families.entry(name.to_string()).or_default();
                        if fam.help.replace(doc).is_some() {
                            return Err(at("second HELP".into()));
                        }
                    }
                    "TYPE" => {
                        let (name, rest) = token(rest);
                        let (kind, extra) = token(rest);
                        if !is_name(name) {
                            return Err(at(format!("bad metric name {name:?}")));
                        }
                        if !KINDS.contains(&kind) || !extra.trim().is_empty() {
                            return Err(at(format!("bad type {kind:?}")));
                        }
                        enter(name, &mut current).map_err(at)?;
                        let fam = e.families.entry(name.to_string()).or_default();
                        if fam.series > 0 {
                            return Err(at("TYPE after samples".into()));
                        }
                        if fam.kind.replace(kind.to_string()).is_some() {
                            return Err(at("second TYPE".into()));
                        }
                    }
                    _ => {} // a plain comment
                }
                continue;
            }
            let (name, labels, value, _ts) = parse_sample(line).map_err(at)?;
            let fam_name = family_of(&e.families, &name)
                .ok_or_else(|| at("a sample without a TYPE for its family".into()))?;
            enter(&fam_name, &mut current).map_err(at)?;
            let fam = e.families.get_mut(&fam_name).expect("family");
            let kind = fam.kind.clone().unwrap_or_default();
            let is_bucket = kind == "histogram" && name.ends_with("_bucket");
            if is_bucket != labels.contains_key("le") {
                return Err(at(
                    "`le` belongs on histogram buckets, and only there".into()
                ));
            }
            if kind == "summary" && (name == fam_name) != labels.contains_key("quantile") {
                return Err(at("`quantile` belongs on summary quantiles".into()));
            }
            if !series.insert((name.clone(), labels.clone())) {
                return Err(at("duplicate series".into()));
            }
            fam.series += 1;
            e.samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        check_histograms(&e)?;
        Ok(e)
    }

    fn check_histograms(e: &Exposition) -> Result<(), String> {
        for (fam, f) in &e.families {
            if f.kind.as_deref() != Some("histogram") {
                continue;
            }
            let mut groups: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
            for s in e
                .samples
                .iter()
                .filter(|s| s.name == format!("{fam}_bucket"))
            {
                let mut key = s.labels.clone();
                let le = key.remove("le").unwrap_or_default();
                let le = parse_value(&le).ok_or_else(|| format!("{fam}: bad le {le:?}"))?;
                groups.entry(key).or_default().push((le, s.value));
            }
            let other: BTreeSet<Labels> = e
                .samples
                .iter()
                .filter(|s| s.name == format!("{fam}_sum") || s.name == format!("{fam}_count"))
                .map(|s| s.labels.clone())
                .collect();
            for labels in &other {
                if !groups.contains_key(labels) {
                    return Err(format!("{fam} {labels:?}: _sum/_count without buckets"));
                }
            }
            for (labels, buckets) in &groups {
                let ctx = || format!("{fam} {labels:?}");
                for w in buckets.windows(2) {
                    if w[1].0 <= w[0].0 {
                        return Err(format!("{}: le not increasing", ctx()));
                    }
                    if w[1].1 < w[0].1 {
                        return Err(format!("{}: bucket counts decrease", ctx()));
                    }
                }
                let last = buckets.last().expect("a bucket");
                if last.0 != f64::INFINITY {
                    return Err(format!("{}: no +Inf bucket", ctx()));
                }
                let find = |suffix: &str| {
                    e.samples
                        .iter()
                        .find(|s| s.name == format!("{fam}{suffix}") && &s.labels == labels)
                };
                let count = find("_count").ok_or_else(|| format!("{}: no _count", ctx()))?;
                find("_sum").ok_or_else(|| format!("{}: no _sum", ctx()))?;
                if count.value != last.1 {
                    return Err(format!(
                        "{}: _count {} != +Inf bucket {}",
                        ctx(),
                        count.value,
                        last.1
                    ));
                }
            }
        }
        Ok(())
    }

    /// The checks `promtool check metrics` makes, plus this project's
    /// naming rules (SPEC: `skyrules_` prefix, `_total` counters, durations
    /// in `_seconds`).
    pub fn lint(e: &Exposition) -> Vec<String> {
        let mut out = Vec::new();
        for (name, f) in &e.families {
            if !(name.starts_with("skyrules_")
                && name.len() > "skyrules_".len()
                && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            {
                out.push(format!("{name}: does not match ^skyrules_[a-z_]+$"));
            }
            match f.help.as_deref() {
                None => out.push(format!("{name}: no HELP")),
                Some(h) if h.trim().is_empty() => out.push(format!("{name}: empty HELP")),
                _ => {}
            }
            let kind = f.kind.as_deref().unwrap_or("");
            if kind.is_empty() {
                out.push(format!("{name}: no TYPE"));
            }
            if kind == "counter" && !name.ends_with("_total") {
                out.push(format!("{name}: counter names end in _total"));
            }
            if kind != "counter" && name.ends_with("_total") {
                out.push(format!("{name}: only counters end in _total"));
            }
            if kind == "histogram" && !name.ends_with("_seconds") {
                out.push(format!(
                    "{name}: the histograms here are durations in _seconds"
                ));
            }
            if kind != "histogram"
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.ends_with(s))
            {
                out.push(format!("{name}: reserved suffix"));
            }
            if f.series == 0 {
                out.push(format!("{name}: described but no sample"));
            }
        }
        for s in &e.samples {
            for l in s.labels.keys() {
                if l.starts_with("__") {
                    out.push(format!("{}: label {l} is reserved", s.name));
                }
            }
            let counter = e
                .families
                .get(&s.name)
                .is_some_and(|f| f.kind.as_deref() == Some("counter"));
            if counter && !(s.value.is_finite() && s.value >= 0.0) {
                out.push(format!(
                    "{} {:?}: counter value {}",
                    s.name, s.labels, s.value
                ));
            }
        }
        out
    }
}
