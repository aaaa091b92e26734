//! The state store's contract (SPEC §5, §7 "State"), written once over
//! `&dyn Store` and run against every backend: a SQLite file, the
//! in-memory store and PostgreSQL (a fresh database per test; skipped
//! without `SKYRULES_TEST_POSTGRES_URL`, required in CI). A failing test
//! is named `store_contract::<backend>::<test>`.
//!
//! The PostgreSQL-only tests below the contract cover what only a server
//! can do: be unreachable, drop connections, and receive `skyrules state
//! copy`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use serde_json::json;
use skyrules::api::{SessionDetail, Timestamp};
use skyrules::rules::Memory;
use skyrules::store::{
    AuditFilter, Batch, Begin, Done, Intent, MemoryStore, Pending, PgStore, SqliteStore, Store,
    StoreError,
};
use skyrules::trace::{self, Decision, RuleSetVersion, RuleVersion, Step, TraceRows, Verdict};
use skyrules::tracking::{diff, Event, Tracked};

use crate::util;

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

/// Where a test's store lives.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Memory,
    Postgres,
}

/// A store and what must outlive it.
struct Fixture {
    store: Arc<dyn Store>,
    /// Peeks below the interface (stored texts), per backend.
    raw: Raw,
    // Dropped after the store: the file's directory, the pool's runtime.
    _dir: Option<tempfile::TempDir>,
    _rt: Option<tokio::runtime::Runtime>,
}

enum Raw {
    Sqlite(std::path::PathBuf),
    Memory,
    Postgres(String),
}

/// A runtime for a PgStore's pool; the test thread calls the store from
/// outside it, as the engine's blocking threads do.
fn pg_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Opens a fresh store, or `None` when the backend is not available here.
fn fixture(backend: Backend) -> Option<Fixture> {
    Some(match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("state.db");
            Fixture {
                store: Arc::new(SqliteStore::open(&path).expect("open sqlite")),
                raw: Raw::Sqlite(path),
                _dir: Some(dir),
                _rt: None,
            }
        }
        Backend::Memory => Fixture {
            store: Arc::new(MemoryStore::new()),
            raw: Raw::Memory,
            _dir: None,
            _rt: None,
        },
        Backend::Postgres => {
            let url = util::fresh_postgres_database()?;
            let rt = pg_runtime();
            let store = rt
                .block_on(PgStore::connect(&url))
                .expect("connect to the test database");
            Fixture {
                store: Arc::new(store),
                raw: Raw::Postgres(url),
                _dir: None,
                _rt: Some(rt),
            }
        }
    })
}

fn run(backend: Backend, test: fn(&Fixture)) {
    let Some(f) = fixture(backend) else {
        return;
    };
    test(&f);
}

/// One test per backend and contract function.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::run(super::Backend::Sqlite, super::$name) } )*
        }
        mod memory {
            $( #[test] fn $name() { super::run(super::Backend::Memory, super::$name) } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::run(super::Backend::Postgres, super::$name) } )*
        }
    };
}

contract!(
    load_after_commit,
    baselined_is_set_once,
    begin_action_is_new_then_pending_then_done,
    a_journal_written_with_an_intent_is_pending_until_done,
    memory_round_trips,
    audit_filters_keep_order,
    sessions_since_counts_tracked_and_ended,
    timer_breaches_per_rule_and_utc_day,
    latest_action_at_is_the_newest,
    purge_forgets_old_ended_sessions,
    workspaces_are_isolated,
    a_commit_of_1000_sessions,
    a_trace_appends_keeps_the_newest_and_is_purged_with_its_session,
);

// ---------------------------------------------------------------------------
// Building blocks
// ---------------------------------------------------------------------------

fn at(day: u32, hour: u32, min: u32) -> Timestamp {
    Utc.with_ymd_and_hms(2026, 3, day, hour, min, 0).unwrap()
}

/// A chat created at `created` with visitor messages `ids`, as a poll
/// would see it the first time: its state and its events.
fn chat(id: &str, created: Timestamp, ids: &[i64]) -> (Tracked, Vec<Event>) {
    let messages: Vec<_> = ids
        .iter()
        .map(|m| {
            json!({
                "id": m, "sender_type": "visitor", "message_text": format!("message {m}"),
                "created_at": (created + chrono::Duration::seconds(*m)).to_rfc3339(),
            })
        })
        .collect();
    let detail: SessionDetail = serde_json::from_value(json!({
        "session_id": id,
        "created_at": created.to_rfc3339(),
        "last_activity_at": created.to_rfc3339(),
        "messages": messages,
    }))
    .expect("a session detail");
    diff(None, detail, false)
}

fn tracked(id: &str, created: Timestamp) -> Tracked {
    chat(id, created, &[]).0
}

fn intent(key: &str, when: Timestamp, rule: &str, session: &str, event: &str) -> Intent {
    Intent {
        key: key.into(),
        at: when,
        rule: rule.into(),
        session_id: session.into(),
        event: event.into(),
        action: "reply".into(),
        text: Some(format!("text of {key}")),
    }
}

fn memory(pairs: serde_json::Value) -> Memory {
    serde_json::from_value(pairs).expect("a memory object")
}

/// The reply texts still stored, by peeking below the interface.
fn stored_texts(f: &Fixture) -> Option<Vec<Option<String>>> {
    match &f.raw {
        Raw::Memory => None,
        Raw::Sqlite(path) => {
            let conn = rusqlite::Connection::open(path).expect("open");
            let mut stmt = conn
                .prepare("SELECT text FROM actions ORDER BY id")
                .expect("prepare");
            let texts = stmt
                .query_map([], |r| r.get(0))
                .expect("query")
                .collect::<Result<Vec<Option<String>>, _>>()
                .expect("rows");
            Some(texts)
        }
        Raw::Postgres(url) => Some(
            pg_rows(url, "SELECT text FROM actions ORDER BY id")
                .into_iter()
                .map(|r| r.get(0))
                .collect(),
        ),
    }
}

/// Rows of one statement run on its own connection.
fn pg_rows(url: &str, sql: &str) -> Vec<tokio_postgres::Row> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client.query(sql, &[]).await.expect("query")
    })
}

// ---------------------------------------------------------------------------
// The contract
// ---------------------------------------------------------------------------

fn load_after_commit(f: &Fixture) {
    let s = f.store.as_ref();
    let loaded = s.load().unwrap();
    assert!(!loaded.baselined && loaded.sessions.is_empty());
    let mut batch = Batch {
        at: at(1, 10, 0),
        ..Batch::default()
    };
    batch.save(tracked("s1", at(1, 9, 0)), false);
    batch.save(tracked("s2", at(1, 9, 5)), false);
    batch.save(tracked("gone", at(1, 8, 0)), true);
    s.commit(&batch).unwrap();
    let loaded = s.load().unwrap();
    let mut ids: Vec<_> = loaded.sessions.keys().cloned().collect();
    ids.sort();
    assert_eq!(ids, ["s1", "s2"], "ended sessions are not tracked");
    assert_eq!(loaded.sessions["s1"], tracked("s1", at(1, 9, 0)));

    // A later state wins; within one batch too (appended batches).
    let mut newer = tracked("s1", at(1, 9, 0));
    newer.cursor = 42;
    // (two cycles' batches written together, as a retried commit is).
    let batch = Batch {
        at: at(1, 10, 2),
        sessions: vec![tracked("s1", at(1, 9, 0)), newer],
        ended: vec![tracked("s2", at(1, 9, 5))],
        ..Batch::default()
    };
    s.commit(&batch).unwrap();
    let loaded = s.load().unwrap();
    assert_eq!(loaded.sessions.len(), 1, "{:?}", loaded.sessions.keys());
    assert_eq!(loaded.sessions["s1"].cursor, 42);
    // An empty batch changes nothing.
    s.commit(&Batch::default()).unwrap();
    assert_eq!(s.load().unwrap().sessions.len(), 1);
}

fn baselined_is_set_once(f: &Fixture) {
    let s = f.store.as_ref();
    s.commit(&Batch {
        at: at(1, 10, 0),
        ..Batch::default()
    })
    .unwrap();
    assert!(!s.load().unwrap().baselined);
    for minute in [1, 2] {
        s.commit(&Batch {
            at: at(1, 10, minute),
            baselined: true,
            ..Batch::default()
        })
        .unwrap();
        assert!(s.load().unwrap().baselined);
    }
    // Later batches without the flag do not clear it.
    s.commit(&Batch {
        at: at(1, 11, 0),
        ..Batch::default()
    })
    .unwrap();
    assert!(s.load().unwrap().baselined);
}

fn begin_action_is_new_then_pending_then_done(f: &Fixture) {
    let s = f.store.as_ref();
    let i = intent(
        "s1|visitor_message|m1|r|0",
        at(1, 10, 0),
        "r",
        "s1",
        "visitor_message",
    );
    assert_eq!(s.begin_action(&i, None).unwrap(), Begin::New);
    // Asked again before an outcome: the same intent, text and all.
    match s.begin_action(&i, None).unwrap() {
        Begin::Pending(p) => assert_eq!(p, i),
        other => panic!("expected Pending, got {other:?}"),
    }
    assert_eq!(s.pending_actions().unwrap(), vec![i.clone()]);
    assert_eq!(
        s.audit(&AuditFilter::default()).unwrap()[0].outcome,
        "pending"
    );

    s.finish_action(&i.key, "taken", None).unwrap();
    assert_eq!(
        s.begin_action(&i, None).unwrap(),
        Begin::Done {
            outcome: "taken".into()
        }
    );
    assert!(s.pending_actions().unwrap().is_empty());
    let audit = s.audit(&AuditFilter::default()).unwrap();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(
        (audit[0].outcome.as_str(), audit[0].detail.as_deref()),
        ("taken", None)
    );
    if let Some(texts) = stored_texts(f) {
        assert_eq!(texts, vec![None], "the audit log keeps ids, not texts");
    }

    let j = intent(
        "s1|visitor_message|m2|r|0",
        at(1, 10, 1),
        "r",
        "s1",
        "visitor_message",
    );
    assert_eq!(s.begin_action(&j, None).unwrap(), Begin::New);
    s.finish_action(&j.key, "failed", Some("HTTP 500")).unwrap();
    let audit = s.audit(&AuditFilter::default()).unwrap();
    assert_eq!(audit[1].detail.as_deref(), Some("HTTP 500"));
    // An outcome for an unknown key is no error.
    s.finish_action("nobody", "taken", None).unwrap();
}

fn a_journal_written_with_an_intent_is_pending_until_done(f: &Fixture) {
    let s = f.store.as_ref();
    let (t, events) = chat("s1", at(1, 9, 0), &[1, 2]);
    assert_eq!(events.len(), 3, "started and two messages: {events:?}");
    let journal = Batch {
        at: at(1, 10, 0),
        sessions: vec![t.clone()],
        events: vec![Pending {
            tracked: t.clone(),
            events: events.clone(),
        }],
        ..Batch::default()
    };
    let first = intent(
        &format!("{}|greet|0", events[0].key()),
        at(1, 10, 0),
        "greet",
        "s1",
        "session_started",
    );
    assert_eq!(s.begin_action(&first, Some(&journal)).unwrap(), Begin::New);
    // The session's state was saved with it, and its events await.
    assert_eq!(s.load().unwrap().sessions["s1"], t);
    let pending = s.pending_events().unwrap();
    assert_eq!(
        pending,
        vec![Pending {
            tracked: t.clone(),
            events: events.clone()
        }]
    );
    // Journaling the same events again (a retried commit) keeps one copy.
    s.commit(&journal).unwrap();
    assert_eq!(s.pending_events().unwrap()[0].events.len(), 3);

    // A commit that handled two of them takes those off, with the memory
    // they left, in the same transaction.
    s.commit(&Batch {
        at: at(1, 10, 1),
        done: vec![Done {
            session_id: "s1".into(),
            keys: vec![events[0].key(), events[1].key()],
            memory: vec![("greet".into(), memory(json!({ "greeted": true })))],
            ..Done::default()
        }],
        ..Batch::default()
    })
    .unwrap();
    let pending = s.pending_events().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].events, vec![events[2].clone()]);
    assert_eq!(s.memory("s1").unwrap()["greet"]["greeted"], true);
    s.commit(&Batch {
        at: at(1, 10, 2),
        done: vec![Done {
            session_id: "s1".into(),
            keys: vec![events[2].key()],
            memory: vec![],
            ..Done::default()
        }],
        ..Batch::default()
    })
    .unwrap();
    assert!(s.pending_events().unwrap().is_empty());
}

fn memory_round_trips(f: &Fixture) {
    let s = f.store.as_ref();
    assert!(s.memory("s1").unwrap().is_empty());
    let done = |rule: &str, value: serde_json::Value| Done {
        session_id: "s1".into(),
        keys: vec![],
        memory: vec![(rule.into(), memory(value))],
        ..Done::default()
    };
    s.commit(&Batch {
        at: at(1, 10, 0),
        done: vec![
            done(
                "a",
                json!({ "n": 1, "nested": { "list": [1, 2, "three"] } }),
            ),
            done("b", json!({ "seen": "yes" })),
            // The last memory a batch holds for a rule wins.
            done(
                "a",
                json!({ "n": 2, "nested": { "list": [1, 2, "three"] } }),
            ),
        ],
        ..Batch::default()
    })
    .unwrap();
    let m = s.memory("s1").unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(m["a"]["n"], 2);
    assert_eq!(m["a"]["nested"]["list"][2], "three");
    assert_eq!(m["b"]["seen"], "yes");
    s.commit(&Batch {
        at: at(1, 10, 1),
        done: vec![done("b", json!({}))],
        ..Batch::default()
    })
    .unwrap();
    assert!(s.memory("s1").unwrap()["b"].is_empty());
    assert!(s.memory("s2").unwrap().is_empty());
}

fn audit_filters_keep_order(f: &Fixture) {
    let s = f.store.as_ref();
    let entries = [
        intent("k1", at(1, 10, 0), "greet", "s1", "visitor_message"),
        intent("k2", at(1, 9, 0), "nudge", "s2", "idle"),
        intent("k3", at(1, 11, 0), "greet", "s2", "visitor_message"),
        intent("k4", at(1, 12, 0), "nudge", "s1", "idle"),
    ];
    for (n, i) in entries.iter().enumerate() {
        assert_eq!(s.begin_action(i, None).unwrap(), Begin::New);
        if n != 3 {
            s.finish_action(&i.key, "taken", None).unwrap();
        }
    }
    let sessions = |filter: AuditFilter| -> Vec<(String, String, String)> {
        s.audit(&filter)
            .unwrap()
            .into_iter()
            .map(|e| (e.session_id, e.rule, e.outcome))
            .collect()
    };
    let all = sessions(AuditFilter::default());
    assert_eq!(
        all.iter().map(|e| e.1.as_str()).collect::<Vec<_>>(),
        ["greet", "nudge", "greet", "nudge"],
        "in the order they were written, not by time"
    );
    assert_eq!(all[3].2, "pending");
    let by_session = sessions(AuditFilter {
        session_id: Some("s2".into()),
        ..AuditFilter::default()
    });
    assert_eq!(
        by_session,
        [
            ("s2".into(), "nudge".into(), "taken".into()),
            ("s2".into(), "greet".into(), "taken".into())
        ]
    );
    let by_rule = s
        .audit(&AuditFilter {
            rule: Some("greet".into()),
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(
        by_rule.iter().map(|e| e.at).collect::<Vec<_>>(),
        [at(1, 10, 0), at(1, 11, 0)]
    );
    let since = s
        .audit(&AuditFilter {
            since: Some(at(1, 10, 0)),
            ..AuditFilter::default()
        })
        .unwrap();
    assert_eq!(since.len(), 3, "at or after: {since:?}");
    let all_three = s
        .audit(&AuditFilter {
            session_id: Some("s1".into()),
            rule: Some("nudge".into()),
            since: Some(at(1, 11, 59)),
        })
        .unwrap();
    assert_eq!(all_three.len(), 1);
    assert_eq!(all_three[0].event, "idle");
    assert_eq!(all_three[0].action, "reply");
}

fn sessions_since_counts_tracked_and_ended(f: &Fixture) {
    let s = f.store.as_ref();
    let mut batch = Batch {
        at: at(2, 12, 0),
        ..Batch::default()
    };
    batch.save(tracked("old", at(1, 8, 0)), false);
    batch.save(tracked("new", at(2, 9, 0)), false);
    batch.save(tracked("ended", at(2, 10, 0)), true);
    s.commit(&batch).unwrap();
    let mut ids: Vec<_> = s
        .sessions_since(at(2, 0, 0))
        .unwrap()
        .into_iter()
        .map(|t| t.session.session_id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["ended", "new"]);
    assert_eq!(
        s.sessions_since(at(1, 8, 0)).unwrap().len(),
        3,
        "at or after"
    );
    assert!(s.sessions_since(at(3, 0, 0)).unwrap().is_empty());
}

fn timer_breaches_per_rule_and_utc_day(f: &Fixture) {
    let s = f.store.as_ref();
    let late = Utc.with_ymd_and_hms(2026, 3, 1, 23, 59, 59).unwrap();
    let rows = [
        ("s1|idle|a|nudge|0", at(1, 10, 0), "nudge", "idle"),
        ("s1|idle|a|nudge|1", at(1, 10, 0), "nudge", "idle"), // second action: no
        ("s2|idle|b|nudge|0", late, "nudge", "idle"),
        ("s3|unanswered|c|ping|0", at(1, 11, 0), "ping", "unanswered"),
        (
            "s3|human_waiting|d|ping|0",
            at(2, 0, 0),
            "ping",
            "human_waiting",
        ),
        (
            "s4|visitor_message|m1|nudge|0",
            at(1, 12, 0),
            "nudge",
            "visitor_message",
        ), // no
        ("s5|idle|e|nudge|0", at(2, 1, 0), "nudge", "idle"),
        (
            "s6|idle|f|nudge|0",
            Utc.with_ymd_and_hms(2026, 2, 28, 23, 0, 0).unwrap(),
            "nudge",
            "idle",
        ), // before
    ];
    for (key, when, rule, event) in rows {
        let session = key.split('|').next().unwrap();
        s.begin_action(&intent(key, when, rule, session, event), None)
            .unwrap();
    }
    let day = |d| chrono::NaiveDate::from_ymd_opt(2026, 3, d).unwrap();
    assert_eq!(
        s.timer_breaches(at(1, 0, 0)).unwrap(),
        vec![
            ("nudge".to_string(), day(1), 2),
            ("ping".to_string(), day(1), 1),
            ("nudge".to_string(), day(2), 1),
            ("ping".to_string(), day(2), 1),
        ]
    );
    assert_eq!(
        s.timer_breaches(at(2, 0, 30)).unwrap(),
        vec![("nudge".to_string(), day(2), 1)]
    );
}

fn latest_action_at_is_the_newest(f: &Fixture) {
    let s = f.store.as_ref();
    assert_eq!(s.latest_action_at().unwrap(), None);
    s.begin_action(&intent("k1", at(2, 10, 0), "r", "s1", "idle"), None)
        .unwrap();
    // Written later, decided earlier (a reconciled intent): not the newest.
    s.begin_action(&intent("k2", at(1, 10, 0), "r", "s1", "idle"), None)
        .unwrap();
    assert_eq!(s.latest_action_at().unwrap(), Some(at(2, 10, 0)));
    let precise = at(2, 10, 0) + chrono::Duration::microseconds(123_456);
    s.begin_action(&intent("k3", precise, "r", "s1", "idle"), None)
        .unwrap();
    assert_eq!(s.latest_action_at().unwrap(), Some(precise));
}

fn purge_forgets_old_ended_sessions(f: &Fixture) {
    let s = f.store.as_ref();
    let remember = |id: &str| Done {
        session_id: id.into(),
        keys: vec![],
        memory: vec![("r".into(), memory(json!({ "x": 1 })))],
        ..Done::default()
    };
    s.commit(&Batch {
        at: at(1, 10, 0),
        ended: vec![tracked("old", at(1, 9, 0))],
        sessions: vec![tracked("live", at(1, 9, 0))],
        done: vec![remember("old"), remember("live")],
        ..Batch::default()
    })
    .unwrap();
    s.commit(&Batch {
        at: at(3, 10, 0),
        ended: vec![tracked("recent", at(3, 9, 0))],
        done: vec![remember("recent")],
        ..Batch::default()
    })
    .unwrap();
    s.begin_action(&intent("k", at(1, 9, 30), "r", "old", "idle"), None)
        .unwrap();
    assert_eq!(s.purge(at(2, 0, 0)).unwrap(), 1);
    assert!(s.memory("old").unwrap().is_empty());
    assert_eq!(s.memory("recent").unwrap().len(), 1);
    assert_eq!(s.memory("live").unwrap().len(), 1, "tracked sessions stay");
    let mut left: Vec<_> = s
        .sessions_since(at(1, 0, 0))
        .unwrap()
        .into_iter()
        .map(|t| t.session.session_id)
        .collect();
    left.sort();
    assert_eq!(left, ["live", "recent"]);
    assert_eq!(s.load().unwrap().sessions.len(), 1);
    assert_eq!(
        s.audit(&AuditFilter::default()).unwrap().len(),
        1,
        "the audit log keeps its ids"
    );
    assert_eq!(s.purge(at(2, 0, 0)).unwrap(), 0);
}

/// A step of session `id` for message `n`, decided under `rules`.
fn step(id: &str, n: i64, rules: &Arc<RuleSetVersion>, verdict: Verdict) -> Step {
    Step {
        session_id: id.into(),
        seen_at: at(1, 10, n as u32),
        at: at(1, 10, n as u32),
        event: skyrules::tracking::EventKind::VisitorMessage,
        key: format!("m{n}"),
        cause: format!("message {n}"),
        rules: rules.clone(),
        decisions: vec![Decision {
            rule: 0,
            verdict,
            detail: format!("step {n}"),
        }],
    }
}

fn a_trace_appends_keeps_the_newest_and_is_purged_with_its_session(f: &Fixture) {
    let s = f.store.as_ref();
    let set = |version: &str| {
        Arc::new(RuleSetVersion::new(vec![RuleVersion {
            rule: "escalate".into(),
            version: version.into(),
            mode: "live".into(),
        }]))
    };
    let (v1, v2) = (set("11111111"), set("22222222"));
    let append = |steps: Vec<Step>| Done {
        session_id: "s".into(),
        steps,
        keep_steps: 2,
        ..Done::default()
    };
    assert_eq!(
        s.trace("s").unwrap(),
        None,
        "an unknown session has no trace"
    );
    s.commit(&Batch {
        at: at(1, 10, 0),
        sessions: vec![tracked("s", at(1, 9, 0))],
        done: vec![append(vec![
            step("s", 1, &v1, Verdict::NoAction),
            step("s", 2, &v1, Verdict::Acted),
            step("s", 3, &v1, Verdict::Failed),
        ])],
        ..Batch::default()
    })
    .unwrap();
    let details = |rows: &TraceRows| -> Vec<(String, String)> {
        trace::entries("s", rows)
            .unwrap()
            .into_iter()
            .map(|e| (e.version.unwrap(), e.detail))
            .collect()
    };
    let rows = s
        .trace("s")
        .unwrap()
        .expect("a tracked session has a trace");
    assert_eq!(
        details(&rows),
        [
            ("11111111".to_string(), "step 2".to_string()),
            ("11111111".to_string(), "step 3".to_string())
        ],
        "the newest two, oldest first"
    );
    // A reload: the next step names another rule set; both read back.
    s.commit(&Batch {
        at: at(1, 10, 5),
        done: vec![append(vec![step("s", 4, &v2, Verdict::Acted)])],
        ..Batch::default()
    })
    .unwrap();
    let rows = s.trace("s").unwrap().unwrap();
    assert_eq!(
        details(&rows),
        [
            ("11111111".to_string(), "step 3".to_string()),
            ("22222222".to_string(), "step 4".to_string())
        ]
    );
    assert_eq!(
        f.store.workspace("other").trace("s").unwrap(),
        None,
        "another workspace's session"
    );
    // Ended and purged: gone, trace and all. Seen again later, it starts
    // with an empty trace.
    s.commit(&Batch {
        at: at(1, 11, 0),
        ended: vec![tracked("s", at(1, 9, 0))],
        ..Batch::default()
    })
    .unwrap();
    assert!(s.trace("s").unwrap().is_some(), "kept until the purge");
    assert_eq!(s.purge(at(2, 0, 0)).unwrap(), 1);
    assert_eq!(s.trace("s").unwrap(), None);
    s.commit(&Batch {
        at: at(3, 10, 0),
        sessions: vec![tracked("s", at(3, 9, 0))],
        ..Batch::default()
    })
    .unwrap();
    assert_eq!(s.trace("s").unwrap().unwrap().steps, vec![]);
}

fn workspaces_are_isolated(f: &Fixture) {
    let a = f.store.workspace("acme");
    let b = f.store.workspace("bravo");
    let default = f.store.as_ref();
    // The same session id in both, with different states.
    let (ta, events) = chat("s1", at(1, 9, 0), &[1]);
    let mut tb = ta.clone();
    tb.cursor = 99;
    let key = format!("{}|r|0", events[1].key());
    let journal = Batch {
        at: at(1, 10, 0),
        baselined: true,
        sessions: vec![ta.clone()],
        events: vec![Pending {
            tracked: ta.clone(),
            events: events.clone(),
        }],
        ..Batch::default()
    };
    assert_eq!(
        a.begin_action(
            &intent(&key, at(1, 10, 0), "r", "s1", "visitor_message"),
            Some(&journal)
        )
        .unwrap(),
        Begin::New
    );
    b.commit(&Batch {
        at: at(1, 10, 0),
        sessions: vec![tb.clone()],
        ended: vec![tracked("s2", at(1, 8, 0))],
        done: vec![Done {
            session_id: "s1".into(),
            keys: vec![events[0].key()],
            memory: vec![("r".into(), memory(json!({ "in": "bravo" })))],
            ..Done::default()
        }],
        ..Batch::default()
    })
    .unwrap();
    // The same key is a new intent in the other workspace.
    assert_eq!(
        b.begin_action(
            &intent(&key, at(1, 11, 0), "r", "s1", "visitor_message"),
            None
        )
        .unwrap(),
        Begin::New
    );
    b.finish_action(&key, "taken", None).unwrap();

    assert!(a.load().unwrap().baselined);
    assert!(!b.load().unwrap().baselined);
    assert_eq!(a.load().unwrap().sessions["s1"].cursor, ta.cursor);
    assert_eq!(b.load().unwrap().sessions["s1"].cursor, 99);
    assert_eq!(a.pending_events().unwrap().len(), 1);
    assert_eq!(
        a.pending_events().unwrap()[0].events.len(),
        2,
        "bravo's done did not touch acme's journal"
    );
    assert!(b.pending_events().unwrap().is_empty());
    assert!(a.memory("s1").unwrap().is_empty());
    assert_eq!(b.memory("s1").unwrap()["r"]["in"], "bravo");
    assert_eq!(
        a.pending_actions().unwrap().len(),
        1,
        "acme's is unfinished"
    );
    assert!(b.pending_actions().unwrap().is_empty());
    assert_eq!(
        a.audit(&AuditFilter::default()).unwrap()[0].outcome,
        "pending"
    );
    assert_eq!(
        b.audit(&AuditFilter::default()).unwrap()[0].outcome,
        "taken"
    );
    assert_eq!(a.latest_action_at().unwrap(), Some(at(1, 10, 0)));
    assert_eq!(b.latest_action_at().unwrap(), Some(at(1, 11, 0)));
    assert_eq!(a.sessions_since(at(1, 0, 0)).unwrap().len(), 1);
    assert_eq!(b.sessions_since(at(1, 0, 0)).unwrap().len(), 2);
    assert_eq!(
        a.purge(at(9, 0, 0)).unwrap(),
        0,
        "acme has no ended session"
    );
    assert_eq!(b.sessions_since(at(1, 0, 0)).unwrap().len(), 2);
    assert_eq!(b.purge(at(9, 0, 0)).unwrap(), 1);
    assert_eq!(a.timer_breaches(at(1, 0, 0)).unwrap(), vec![]);

    // The view it was made from is workspace `default`: it saw none of it.
    let loaded = default.load().unwrap();
    assert!(!loaded.baselined && loaded.sessions.is_empty());
    assert!(default.audit(&AuditFilter::default()).unwrap().is_empty());
    assert!(default.pending_events().unwrap().is_empty());
    // A view of a view is still the same database.
    let again = b.workspace("acme");
    assert_eq!(again.pending_events().unwrap().len(), 1);
    assert_eq!(again.location(), f.store.location());
}

fn a_commit_of_1000_sessions(f: &Fixture) {
    let s = f.store.as_ref();
    let (t, events) = chat("template", at(1, 9, 0), &[1, 2, 3]);
    let mut batch = Batch {
        at: at(1, 10, 0),
        baselined: true,
        ..Batch::default()
    };
    for n in 0..1000 {
        let mut t = t.clone();
        t.session.session_id = format!("sess_{n:04}");
        batch.sessions.push(t);
        batch.done.push(Done {
            session_id: format!("sess_{n:04}"),
            keys: vec![],
            memory: vec![("r".into(), memory(json!({ "n": n })))],
            ..Done::default()
        });
    }
    let started = Instant::now();
    s.commit(&batch).unwrap();
    let first = started.elapsed();
    // Again, as the next cycle's commit of the same chats (updates).
    let started = Instant::now();
    s.commit(&batch).unwrap();
    let second = started.elapsed();
    eprintln!(
        "commit of 1,000 sessions with memory ({}): {first:?} new, {second:?} updated",
        f.store.location()
    );
    assert_eq!(s.load().unwrap().sessions.len(), 1000);
    assert_eq!(s.memory("sess_0999").unwrap()["r"]["n"], 999);
    assert!(!events.is_empty());
}

// ---------------------------------------------------------------------------
// PostgreSQL only
// ---------------------------------------------------------------------------

/// How a URL's password would show in a message (`:password@`; the
/// password alone may also be the user's or the database's name).
fn password_of(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let (userinfo, _) = rest.split_once('@')?;
    let (_, pw) = userinfo.split_once(':')?;
    Some(format!(":{pw}@"))
}

#[test]
fn an_unreachable_server_is_a_clear_error_without_the_password() {
    // No server needed: nobody listens on the port.
    let rt = pg_runtime();
    let url = format!(
        "postgres://sky:SeCrEtPw@{}/state?connect_timeout=2",
        util::free_addr()
    );
    let started = Instant::now();
    let e = rt.block_on(PgStore::connect(&url)).unwrap_err();
    let text = e.to_string();
    eprintln!("{text} (after {:?})", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
    assert!(
        text.starts_with("cannot reach the state database postgres://sky@127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains("SKYRULES_STATE_URL"), "{text}");
    assert!(!text.contains("SeCrEtPw"), "{text}");
    assert!(!format!("{e:?}").contains("SeCrEtPw"), "{e:?}");
    // The read-only open says the same.
    let e = rt
        .block_on(skyrules::store::open_read_only(
            std::path::Path::new("unused.db"),
            Some(&url),
        ))
        .err()
        .expect("refused");
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
    assert!(!e.to_string().contains("SeCrEtPw"), "{e}");
}

#[test]
fn a_wrong_password_names_the_location_not_the_password() {
    let Some(url) = util::fresh_postgres_database() else {
        return;
    };
    let wrong = match url.split_once("://").and_then(|(_, r)| r.split_once('@')) {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("postgres://{user}:WrOnGpAsS@{host}")
        }
        None => return,
    };
    let rt = pg_runtime();
    let e = rt.block_on(PgStore::connect(&wrong)).unwrap_err();
    let text = e.to_string();
    assert!(text.contains("postgres://"), "{text}");
    assert!(!text.contains("WrOnGpAsS"), "{text}");
}

#[test]
fn calls_work_again_after_the_server_dropped_every_connection() {
    let Some(f) = fixture(Backend::Postgres) else {
        return;
    };
    let Raw::Postgres(url) = &f.raw else {
        unreachable!()
    };
    let s = f.store.as_ref();
    let mut batch = Batch {
        at: at(1, 10, 0),
        ..Batch::default()
    };
    batch.save(tracked("s1", at(1, 9, 0)), false);
    s.commit(&batch).unwrap();
    // As a server restart would: every connection of the store is cut.
    let db = url.rsplit('/').next().unwrap().split('?').next().unwrap();
    let admin = util::postgres_url().unwrap();
    let cut = pg_rows(
        &admin,
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = '{db}' AND pid <> pg_backend_pid()"
        ),
    );
    assert!(!cut.is_empty(), "the store had no connection to cut");
    // The next calls find the broken connection, drop it and open another;
    // at worst the first one fails as unreachable, never panics or hangs.
    let started = Instant::now();
    let loaded = match s.load() {
        Ok(l) => l,
        Err(e) => {
            assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
            s.load().expect("the second call after the cut")
        }
    };
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(loaded.sessions.len(), 1);
    s.commit(&batch).expect("a write after the cut");
}

#[test]
fn a_read_only_open_refuses_an_uninitialised_database() {
    let Some(url) = util::fresh_postgres_database() else {
        return;
    };
    let rt = pg_runtime();
    let e = rt.block_on(skyrules::store::open_read_only(
        std::path::Path::new("unused.db"),
        Some(&url),
    ));
    let text = e.err().expect("refused").to_string();
    assert!(text.contains("not initialised by `skyrules run`"), "{text}");
    // Once initialised, it reads (and never writes a SQLite file).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("never.db");
    let rw = rt
        .block_on(skyrules::store::open(&file, Some(&url)))
        .unwrap();
    let ro = rt
        .block_on(skyrules::store::open_read_only(&file, Some(&url)))
        .unwrap();
    assert!(ro.audit(&AuditFilter::default()).unwrap().is_empty());
    assert!(ro.location().starts_with("postgres://"));
    if let Some(pw) = password_of(&url) {
        assert!(!ro.location().contains(&pw), "{}", ro.location());
    }
    drop((rw, ro));
    assert!(!file.exists(), "a SQLite file was written");
}

#[test]
fn two_processes_migrating_at_once_do_not_race() {
    let Some(url) = util::fresh_postgres_database() else {
        return;
    };
    let rt = pg_runtime();
    let results = rt.block_on(async {
        let (a, b, c) = tokio::join!(
            PgStore::connect(&url),
            PgStore::connect(&url),
            PgStore::connect(&url)
        );
        [a.is_ok(), b.is_ok(), c.is_ok()]
    });
    assert_eq!(results, [true, true, true]);
}

#[test]
fn a_newer_schema_is_refused() {
    let Some(url) = util::fresh_postgres_database() else {
        return;
    };
    let rt = pg_runtime();
    drop(rt.block_on(PgStore::connect(&url)).unwrap());
    pg_rows(
        &url,
        "UPDATE skyrules_schema SET version = version + 5 RETURNING version",
    );
    let e = rt.block_on(PgStore::connect(&url)).unwrap_err();
    assert!(matches!(e, StoreError::TooNew { .. }), "{e}");
    assert!(e.to_string().contains("upgrade skyrules"), "{e}");
}

#[test]
fn state_copy_moves_every_workspace_into_postgres_once() {
    let Some(url) = util::fresh_postgres_database() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("old.db");
    let (t, events) = chat("s1", at(1, 9, 0), &[1, 2]);
    {
        let s = SqliteStore::open(&file).unwrap();
        let acme = s.workspace("acme");
        for (name, ws) in [("default", &s as &dyn Store), ("acme", acme.as_ref())] {
            let journal = Batch {
                at: at(1, 10, 0),
                baselined: true,
                sessions: vec![t.clone()],
                ended: vec![tracked("gone", at(1, 8, 0))],
                events: vec![Pending {
                    tracked: t.clone(),
                    events: events.clone(),
                }],
                done: vec![Done {
                    session_id: "s1".into(),
                    keys: vec![events[0].key()],
                    memory: vec![("r".into(), memory(json!({ "in": name })))],
                    ..Done::default()
                }],
            };
            ws.begin_action(
                &intent("k1", at(1, 10, 0), "r", "s1", "idle"),
                Some(&journal),
            )
            .unwrap();
            ws.finish_action("k1", "taken", None).unwrap();
            ws.begin_action(&intent("k2", at(1, 10, 1), "r", "s1", "idle"), None)
                .unwrap();
        }
    }
    let copy = || {
        util::skyrules_command()
            .args(["state", "copy", "--from"])
            .arg(&file)
            .env("SKYRULES_STATE_URL", &url)
            .output()
            .expect("run skyrules state copy")
    };
    let out = copy();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("copied 2 workspace(s)"), "{stdout}");
    assert!(
        stdout.contains("acme") && stdout.contains("default"),
        "{stdout}"
    );
    if let Some(pw) = password_of(&url) {
        assert!(
            !stdout.contains(&pw) && !stderr.contains(&pw),
            "{stdout}{stderr}"
        );
    }

    let rt = pg_runtime();
    let pg = rt.block_on(PgStore::connect(&url)).unwrap();
    let sqlite = SqliteStore::open(&file).unwrap();
    for name in ["default", "acme"] {
        let (p, q) = (pg.workspace(name), sqlite.workspace(name));
        let (lp, lq) = (p.load().unwrap(), q.load().unwrap());
        assert_eq!(lp.baselined, lq.baselined);
        assert_eq!(lp.sessions, lq.sessions, "{name}");
        assert_eq!(
            p.pending_events().unwrap(),
            q.pending_events().unwrap(),
            "{name}"
        );
        assert_eq!(
            p.pending_actions().unwrap(),
            q.pending_actions().unwrap(),
            "{name}"
        );
        assert_eq!(
            p.audit(&AuditFilter::default()).unwrap(),
            q.audit(&AuditFilter::default()).unwrap(),
            "{name}"
        );
        assert_eq!(p.memory("s1").unwrap(), q.memory("s1").unwrap(), "{name}");
        assert_eq!(
            p.sessions_since(at(1, 0, 0)).unwrap().len(),
            2,
            "tracked and ended"
        );
        // The copy carries on: the next intent is new, the old ones known.
        assert!(matches!(
            p.begin_action(&intent("k1", at(1, 10, 0), "r", "s1", "idle"), None)
                .unwrap(),
            Begin::Done { .. }
        ));
    }

    // Not while another process holds the file.
    let out = copy();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another skyrules"));
    drop(sqlite);

    // A second copy finds the workspaces there and writes nothing.
    let before = pg.audit(&AuditFilter::default()).unwrap().len();
    let out = copy();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("already holds state for workspace(s) acme, default"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was copied"), "{stderr}");
    assert_eq!(pg.audit(&AuditFilter::default()).unwrap().len(), before);
}

#[test]
fn connections_are_encrypted_unless_sslmode_disable() {
    let Some(url) = util::fresh_postgres_database() else {
        return;
    };
    let server_ssl = pg_rows(&url, "SHOW ssl")[0].get::<_, String>(0) == "on";
    let db = url.rsplit('/').next().unwrap().split('?').next().unwrap();
    let rt = pg_runtime();
    for (mode, encrypted) in [
        ("prefer", server_ssl),
        ("require", true),
        ("disable", false),
    ] {
        let with_mode = format!(
            "{url}{}sslmode={mode}",
            if url.contains('?') { '&' } else { '?' }
        );
        let store = match rt.block_on(PgStore::connect(&with_mode)) {
            Ok(s) => s,
            Err(e) => {
                assert!(mode == "require" && !server_ssl, "sslmode={mode}: {e}");
                continue;
            }
        };
        store.load().unwrap();
        let ssl: Vec<bool> = pg_rows(
            &url,
            &format!(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE a.datname = '{db}' AND a.application_name = 'skyrules'"
            ),
        )
        .iter()
        .map(|r| r.get(0))
        .collect();
        assert!(!ssl.is_empty(), "sslmode={mode}: no connection seen");
        assert!(
            ssl.iter().all(|s| *s == encrypted),
            "sslmode={mode}: {ssl:?}"
        );
        drop(store);
        // The next mode's connections are the only ones left.
        assert!(util::wait_until(Duration::from_secs(10), || {
            pg_rows(
            &url,
            &format!(
                "SELECT 1 FROM pg_stat_activity WHERE datname = '{db}' AND application_name = 'skyrules'"
            )
        )
        .is_empty()
        }));
    }
}
