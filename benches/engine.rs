//! Micro-benchmarks of the engine's hot paths (`cargo bench`).
//!
//! 1. `rules/dispatch_simple_handler`: one small handler called per event
//!    through `Runtime::evaluate` (target ≥ 200,000 calls/s on one core).
//! 2. `rules/shipped_*`: the shipped rule set per event, over a realistic
//!    mix of visitor messages, bot messages, human requests and idle timers,
//!    with `EventData::new` included as the engine does it per event
//!    (target ≥ 30,000 events/s).
//! 3. `watcher/poll`: the per-poll work of the watcher for N tracked
//!    sessions with 1% changed, through the watcher's own `Tracker`: which
//!    listed sessions to read, the diff of the changed ones, and the due
//!    timers of every session with the shipped timers and calendars (the
//!    watcher's poll minus the HTTP).
//! 4. `api/decode_page_100`: a 100-session list body as SkyLight sends it,
//!    bytes → `Page` through `parse_page` (what the client does, which
//!    builds no `serde_json::Value` of the sessions); `sessions_only` is the
//!    share spent decoding the 100 sessions from their own JSON text.
//! 5. `store/*`: one poll cycle's writes to a `SqliteStore` in a temporary
//!    directory: the cycle's one `commit` (100 changed sessions, and the
//!    handled events of the 10 sessions that acted taken off the journal
//!    with their memory); a session's first action, whose intent carries
//!    its journal; and any later action's intent and outcome
//!    (`begin_action` + `finish_action`).
//!
//! Everything is deterministic: the data builders use a fixed-seed
//! generator, and all clocks are fixed timestamps.

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use serde_json::json;

use skyrules::api::client::parse_page;
use skyrules::api::{HandledBy, Message, SenderType, Session, SessionDetail, Timestamp};
use skyrules::config::Config;
use skyrules::hours::Calendars;
use skyrules::rules::{EventData, Memory, RuleSet, Runtime, World};
use skyrules::store::{Batch, Begin, Done, Intent, Pending, SqliteStore, Store};
use skyrules::trace::{Decision, RuleSetVersion, RuleVersion, Step, Verdict};
use skyrules::tracking::{
    diff, due_timers_in, Event, EventKind, SessionCycle, TimerSpec, Tracked, Tracker,
};

// ---------------------------------------------------------------------------
// Data builders
// ---------------------------------------------------------------------------

/// A small deterministic generator (SplitMix64): benchmarks must see the
/// same data on every run.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    /// True with probability `pct`%.
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.next() as usize % items.len()]
    }
}

const FIRST_NAMES: &[&str] = &[
    "Ahmad", "Maria", "Jonas", "Léa", "Sofia", "Mehmet", "Emma", "Lukas", "Aisha", "Noah",
    "Chiara", "Mateusz", "Hannah", "Yusuf", "Ines", "Oliver", "Freya", "Kenji",
];
const LAST_NAMES: &[&str] = &[
    "Karimi", "Schmidt", "Müller", "Rossi", "Nowak", "Yılmaz", "Dubois", "García", "Jensen",
    "Weber", "Fischer", "Costa", "Novák", "Svensson",
];
const PAGES: &[&str] = &[
    "https://shop.example.com/",
    "https://shop.example.com/orders",
    "https://shop.example.com/products/winter-jacket-green",
    "https://shop.example.com/help/shipping",
    "https://shop.example.com/checkout",
    "https://shop.example.com/account/returns",
];
const REFERRERS: &[&str] = &[
    "https://www.google.com/",
    "https://www.bing.com/",
    "https://www.instagram.com/",
    "https://newsletter.example.com/march",
];
const VISITOR_TEXTS: &[&str] = &[
    "Hi there",
    "Hello, I have a question about my order",
    "I ordered a winter jacket last week and it still hasn't arrived",
    "The order number is 48213",
    "Can you tell me when it will be delivered?",
    "Do you ship to Austria and Switzerland?",
    "What are your opening hours on Saturday?",
    "How do I change the delivery address of an order I already placed?",
    "Is there a student discount?",
    "The zipper broke after two days, I want a refund",
    "ok thanks",
    "That doesn't answer my question",
    "Can I pay by invoice?",
    "I'd like to cancel my subscription",
    "Where can I find the size chart for the boots?",
    "thank you, that helps a lot!",
];
const BOT_TEXTS: &[&str] = &[
    "Hello! I'm the SkyLight assistant. How can I help you today?",
    "Let me look that up for you.",
    "Your order #48213 was shipped on Monday and should arrive within 2 business days.",
    "We ship to all EU countries and Switzerland; delivery takes 3–5 business days.",
    "Our customer service is available Monday to Friday, 09:00–18:00 (Berlin time).",
    "You can change the delivery address under Account → Orders until the parcel ships.",
    "Sorry, I don't know the answer to that.",
    "I'm not sure I understood. Could you rephrase your question?",
    "Students get 10% off with a valid student ID; apply it at checkout.",
    "The size chart is on every product page, right below the size selector.",
    "Is there anything else I can help you with?",
    "You can pay by card, PayPal or invoice (for orders up to €500).",
];
const AGENT_TEXTS: &[&str] = &[
    "Hi, this is Maria from the support team. I'll take it from here.",
    "I'm sorry about that. Let me check your order right away.",
    "I've issued a return label; you'll get it by e-mail in a few minutes.",
    "Could you send me a photo of the damaged item?",
    "Done! Anything else I can do for you?",
];

fn at(base: Timestamp, secs_before: u64) -> Timestamp {
    base - chrono::Duration::seconds(secs_before as i64)
}

/// One realistic open session and its 10–20 messages, the newest written
/// up to 30 minutes before `now`.
fn session_detail(g: &mut Gen, i: usize, now: Timestamp) -> SessionDetail {
    let last_secs = g.range(5, 30 * 60);
    let n = g.range(10, 21) as usize;
    // Message times, oldest first, 15–90 s apart, ending `last_secs` ago.
    let mut gaps: Vec<u64> = (0..n).map(|_| g.range(15, 90)).collect();
    gaps[n - 1] = 0;
    let mut offsets = Vec::with_capacity(n);
    let mut acc = last_secs;
    for gap in gaps.iter().rev() {
        offsets.push(acc);
        acc += gap;
    }
    offsets.reverse();
    let created_secs = offsets[0] + g.range(2, 30);

    let roll = g.next() % 100;
    let handled_by = match roll {
        0..=79 => HandledBy::Ai,
        80..=94 => HandledBy::Human,
        _ => HandledBy::Pending,
    };
    let requested = handled_by != HandledBy::Ai || g.chance(3);
    let human_requested_at = requested.then(|| at(now, offsets[n / 2]));
    let human_took_over_at =
        (handled_by == HandledBy::Human).then(|| at(now, offsets[n / 2].saturating_sub(40)));
    let name = g
        .chance(85)
        .then(|| format!("{} {}", g.pick(FIRST_NAMES), g.pick(LAST_NAMES)));
    let email = name.as_ref().filter(|_| g.chance(60)).map(|n| {
        format!(
            "{}@example.org",
            n.to_lowercase()
                .replace(' ', ".")
                .replace(['é', 'ü', 'ı', 'í', 'á'], "")
        )
    });
    let phone = g.chance(30).then(|| {
        format!(
            "+49 151 {:04} {:04}",
            g.range(0, 10_000),
            g.range(0, 10_000)
        )
    });
    let session = Session {
        session_id: format!("sess_{:012x}", g.next() & 0xffff_ffff_ffff),
        status: Default::default(),
        handled_by: handled_by.clone(),
        visitor_name: name,
        visitor_email: email,
        visitor_phone: phone,
        visitor_ip: Some(format!(
            "{}.{}.{}.{}",
            g.range(1, 224),
            g.range(0, 256),
            g.range(0, 256),
            g.range(1, 255)
        )),
        visitor_page_url: Some(g.pick(PAGES).to_string()),
        visitor_referrer: g.chance(50).then(|| g.pick(REFERRERS).to_string()),
        has_visitor_messages: true,
        human_requested_at,
        human_took_over_at,
        last_activity_at: Some(at(now, last_secs)),
        created_at: Some(at(now, created_secs)),
    };
    let base_id = (i as i64) * 1000 + 1;
    let messages = offsets
        .iter()
        .enumerate()
        .map(|(k, &secs)| {
            // Visitor and bot take turns; after a take-over the agent answers.
            let sender = if k % 2 == 0 {
                SenderType::Visitor
            } else if handled_by == HandledBy::Human && k > n / 2 {
                SenderType::Agent
            } else {
                SenderType::Bot
            };
            let text = match sender {
                SenderType::Visitor => g.pick(VISITOR_TEXTS),
                SenderType::Bot => g.pick(BOT_TEXTS),
                _ => g.pick(AGENT_TEXTS),
            };
            Message {
                id: base_id + k as i64,
                sender_type: sender,
                message_text: Some(text.to_string()),
                message_type: "text".into(),
                media_url: None,
                is_read: k + 1 < n,
                created_at: Some(at(now, secs)),
            }
        })
        .collect();
    SessionDetail { session, messages }
}

fn details(seed: u64, n: usize, now: Timestamp) -> Vec<SessionDetail> {
    let mut g = Gen(seed);
    (0..n).map(|i| session_detail(&mut g, i, now)).collect()
}

/// A Tuesday, 10:00 UTC (11:00 in Berlin: the support calendar is open).
fn t0() -> Timestamp {
    Utc.with_ymd_and_hms(2026, 3, 10, 10, 0, 0).unwrap()
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The world `skyrules check` builds from the repository's skyrules.toml:
/// its calendars and channel names, no notifier.
fn shipped_world() -> World {
    let config = Config::from_file(&manifest_dir().join("skyrules.toml")).expect("skyrules.toml");
    World {
        calendars: config.calendars().expect("calendars"),
        channels: config.notify.keys().cloned().collect(),
        notifier: None,
        max_rule_memory: config.engine.max_rule_memory as usize,
        shadow_is_live: false,
    }
}

/// The six shipped rules that need no configuration.
fn no_config_runtime() -> (Runtime, RuleSet) {
    let rt = Runtime::new();
    // The shipped rules that need no configuration (no calendars, no
    // channels) and their canned replies, exactly as the binary embeds them.
    let dir = tempfile::tempdir().expect("tempdir");
    skyrules::tools::embedded_rules::write(dir.path()).expect("write the embedded rules");
    let (set, errors) = rt.load_dir(dir.path()).expect("rules dir");
    assert!(errors.is_empty(), "embedded rules fail to load: {errors:?}");
    assert_eq!(
        set.rules.len(),
        skyrules::tools::embedded_rules::RULES.len()
    );
    (rt, set)
}

/// All nine shipped rules, with the world of skyrules.toml.
fn all_shipped_runtime() -> (Runtime, RuleSet) {
    let rt = Runtime::with_world(shipped_world());
    let (set, errors) = rt
        .load_dir(&manifest_dir().join("rules"))
        .expect("rules dir");
    assert!(errors.is_empty(), "shipped rules fail to load: {errors:?}");
    assert_eq!(set.rules.len(), 9);
    (rt, set)
}

/// One event as the engine hands it to the rules: the event, the session
/// as the rules see it, its recent history, and the rules' memory for the
/// session as the store would load it.
struct EventCase {
    event: Event,
    session: Session,
    recent: Vec<Message>,
    memory: HashMap<String, Memory>,
}

fn message_event(kind: EventKind, d: &SessionDetail, m: &Message) -> Event {
    Event {
        kind,
        session_id: d.session.session_id.clone(),
        message: Some(m.clone()),
        timer: None,
        waited: None,
        at: m.created_at.unwrap(),
    }
}

/// A realistic mix, per 20 events: 9 visitor messages, 8 bot messages,
/// 1 human request and 2 idle timers (15 min, as close-idle-ai-chats
/// registers it), over 200 different sessions. A quarter of the bot
/// messages come with a failure streak already remembered, and some
/// visitors already had their keyword escalation.
fn event_mix(now: Timestamp) -> Vec<EventCase> {
    let sessions = details(7, 200, now);
    let mut g = Gen(11);
    let mut out = Vec::new();
    for (i, d) in sessions.iter().cycle().take(2000).enumerate() {
        let slot = i % 20;
        let mut session = d.session.clone();
        let mut memory = HashMap::new();
        let pick = |sender: SenderType, g: &mut Gen| -> Message {
            let of: Vec<&Message> = d
                .messages
                .iter()
                .filter(|m| m.sender_type == sender)
                .collect();
            of[g.next() as usize % of.len()].clone()
        };
        let event = match slot {
            0..=8 => {
                if g.chance(20) {
                    let mut m = Memory::new();
                    m.insert("keyword-escalated".into(), true.into());
                    memory.insert("escalate-on-keywords".to_string(), m);
                }
                let m = pick(SenderType::Visitor, &mut g);
                message_event(EventKind::VisitorMessage, d, &m)
            }
            9..=16 => {
                // Bot messages are written while the AI handles the chat.
                session.handled_by = HandledBy::Ai;
                if g.chance(25) {
                    let mut m = Memory::new();
                    m.insert("failures".into(), 1.into());
                    memory.insert("escalate-failing-bot".to_string(), m);
                }
                let m = pick(SenderType::Bot, &mut g);
                message_event(EventKind::BotMessage, d, &m)
            }
            17 => {
                session.handled_by = HandledBy::Pending;
                let req = d.messages[d.messages.len() - 1].created_at.unwrap();
                session.human_requested_at = Some(req);
                session.human_took_over_at = None;
                Event {
                    kind: EventKind::HumanRequested,
                    session_id: session.session_id.clone(),
                    message: None,
                    timer: None,
                    waited: None,
                    at: req,
                }
            }
            _ => {
                let spec = TimerSpec::wall(EventKind::Idle, Duration::from_secs(15 * 60));
                let last = d.messages[d.messages.len() - 1].created_at.unwrap();
                Event {
                    kind: EventKind::Idle,
                    session_id: session.session_id.clone(),
                    message: None,
                    timer: Some(spec),
                    waited: Some(Duration::from_secs(15 * 60 + 3)),
                    at: last + chrono::Duration::minutes(15),
                }
            }
        };
        out.push(EventCase {
            event,
            session,
            recent: d.messages.clone(),
            memory,
        });
    }
    out
}

// ---------------------------------------------------------------------------
// 1 + 2: rules
// ---------------------------------------------------------------------------

const SIMPLE_HANDLER: &str = r#"
on("visitor_message", |ev| {
    if ev.message.text.contains("refund") {
        ev.take_over();
    }
});
"#;

fn bench_rules(c: &mut Criterion) {
    let now = t0();
    let mut group = c.benchmark_group("rules");
    group.throughput(Throughput::Elements(1));

    // 1. One handler, called per event through evaluate.
    {
        let rt = Runtime::new();
        let rule = rt
            .load_source(Path::new("rules/refund.rhai"), SIMPLE_HANDLER)
            .expect("handler loads");
        let set = RuleSet::new(vec![rule]);
        let cases = event_mix(now);
        let events: Vec<Arc<EventData>> = cases
            .iter()
            .filter(|c| c.event.kind == EventKind::VisitorMessage)
            .take(256)
            .map(|c| Arc::new(EventData::new(c.event.clone(), &c.session, &c.recent, now)))
            .collect();
        let refunds = events
            .iter()
            .filter(|e| e.event.message.as_ref().unwrap().text().contains("refund"))
            .count();
        assert!(refunds > 0 && refunds < events.len());
        let mut memory: HashMap<String, Memory> = HashMap::new();
        let mut i = 0usize;
        group.bench_function("dispatch_simple_handler", |b| {
            b.iter(|| {
                let data = &events[i % events.len()];
                i += 1;
                black_box(rt.evaluate(&set, data, &mut memory))
            })
        });
    }

    // 2. The shipped rule sets, per event, as the engine runs them:
    //    EventData::new, then evaluate with the session's memory.
    let cases = event_mix(now);
    let run_case = |rt: &Runtime, set: &RuleSet, c: &EventCase| {
        let data = Arc::new(EventData::new(c.event.clone(), &c.session, &c.recent, now));
        let mut memory = c.memory.clone();
        let runs = rt.evaluate(set, &data, &mut memory);
        (runs, memory)
    };
    for (name, (rt, set)) in [
        ("shipped_six_no_config", no_config_runtime()),
        ("shipped_all_nine_with_config", all_shipped_runtime()),
    ] {
        // The mix must make the rules act, not only pass: check once.
        let mut acted = 0;
        for c in &cases {
            let (runs, _) = run_case(&rt, &set, c);
            assert!(runs.iter().all(|r| r.error.is_none()), "{runs:?}");
            acted += runs.iter().filter(|r| !r.actions.is_empty()).count();
        }
        assert!(acted > cases.len() / 20, "{name}: only {acted} runs acted");
        let mut i = 0usize;
        group.bench_function(name, |b| {
            b.iter(|| {
                let c = &cases[i % cases.len()];
                i += 1;
                black_box(run_case(&rt, &set, c))
            })
        });
    }

    // The same mix through evaluate alone (EventData prepared beforehand),
    // to split the per-event cost between the two.
    {
        let (rt, set) = no_config_runtime();
        let prepared: Vec<(Arc<EventData>, HashMap<String, Memory>)> = cases
            .iter()
            .map(|c| {
                (
                    Arc::new(EventData::new(c.event.clone(), &c.session, &c.recent, now)),
                    c.memory.clone(),
                )
            })
            .collect();
        let mut i = 0usize;
        group.bench_function("shipped_six_evaluate_only", |b| {
            b.iter(|| {
                let (data, memory) = &prepared[i % prepared.len()];
                i += 1;
                let mut memory = memory.clone();
                black_box(rt.evaluate(&set, data, &mut memory))
            })
        });
        let mut i = 0usize;
        group.bench_function("event_data_new", |b| {
            b.iter(|| {
                let c = &cases[i % cases.len()];
                i += 1;
                black_box(EventData::new(c.event.clone(), &c.session, &c.recent, now))
            })
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// 3: the watcher's per-poll work
// ---------------------------------------------------------------------------

/// What the watcher knows and what the next poll brings: `tracked` as of
/// the previous poll (timers due then already fired), the new list with
/// 1% of the sessions changed (a new visitor message), and the details
/// the watcher will read for those.
struct PollWorld {
    tracked: HashMap<String, Tracked>,
    listed: Vec<Session>,
    changed: Vec<SessionDetail>,
    now: Timestamp,
    timers: Vec<TimerSpec>,
    calendars: Calendars,
}

fn poll_world(n: usize) -> PollWorld {
    let (rt, set) = all_shipped_runtime();
    let timers = set.timers();
    let calendars = rt.calendars().clone();
    let before = t0();
    // The poll interval is 5 s.
    let now = before + chrono::Duration::seconds(5);
    let all = details(42, n, before);
    let mut tracked = HashMap::with_capacity(n);
    for d in &all {
        let (mut t, _) = diff(None, d.clone(), true);
        due_timers_in(&mut t, &timers, before, &calendars);
        tracked.insert(t.session.session_id.clone(), t);
    }
    let mut g = Gen(99);
    let mut listed = Vec::with_capacity(n);
    let mut changed = Vec::new();
    for (i, d) in all.iter().enumerate() {
        if i % 100 == 37 {
            let mut d = d.clone();
            let id = d.messages.last().map_or(1, |m| m.id + 1);
            let written = now - chrono::Duration::seconds(2);
            d.messages.push(Message {
                id,
                sender_type: SenderType::Visitor,
                message_text: Some(g.pick(VISITOR_TEXTS).to_string()),
                message_type: "text".into(),
                media_url: None,
                is_read: false,
                created_at: Some(written),
            });
            d.session.last_activity_at = Some(written);
            listed.push(d.session.clone());
            changed.push(d);
        } else {
            listed.push(d.session.clone());
        }
    }
    PollWorld {
        tracked,
        listed,
        changed,
        now,
        timers,
        calendars,
    }
}

/// The watcher's poll after the HTTP, through the same [`Tracker`] that
/// `Watcher::poll` drives: which sessions to read, what each read comes to
/// (diffed, timers added, the table updated), and the due timers of every
/// other listed session. `details` are the bodies read, in list order.
fn poll_once(
    w: &PollWorld,
    tracker: &mut Tracker,
    details: Vec<SessionDetail>,
) -> Vec<SessionCycle> {
    let listed: HashSet<String> = w.listed.iter().map(|s| s.session_id.clone()).collect();
    let to_read: Vec<String> = w
        .listed
        .iter()
        .filter(|s| tracker.wants(s))
        .map(|s| s.session_id.clone())
        .collect();
    let mut out = Vec::new();
    let mut read = HashSet::new();
    for (id, detail) in to_read.into_iter().zip(details) {
        if let Some(sc) = tracker.absorb(&id, Ok(detail), &w.timers, w.now, &w.calendars) {
            read.insert(id);
            out.push(sc);
        }
    }
    out.extend(tracker.due(&read, &listed, &w.timers, w.now, &w.calendars));
    out
}

fn bench_watcher(c: &mut Criterion) {
    let mut group = c.benchmark_group("watcher");
    group.sampling_mode(SamplingMode::Flat);
    for n in [1_000usize, 10_000] {
        let w = poll_world(n);
        // Sanity: 1% read, each with its new message; some timers due.
        let out = poll_once(
            &w,
            &mut Tracker::new(w.tracked.clone(), true),
            w.changed.clone(),
        );
        assert_eq!(w.changed.len(), n / 100);
        let messages = out
            .iter()
            .flat_map(|sc| &sc.events)
            .filter(|e| e.kind == EventKind::VisitorMessage)
            .count();
        assert_eq!(messages, n / 100);
        let timers = out
            .iter()
            .flat_map(|sc| &sc.events)
            .filter(|e| e.timer.is_some())
            .count();
        eprintln!(
            "watcher/poll/{n}: {} sessions read, {messages} message events, {timers} timer events per poll",
            w.changed.len()
        );
        group.throughput(Throughput::Elements(n as u64));
        group.sample_size(if n >= 10_000 { 20 } else { 50 });
        // Each iteration starts from the same tracked state (its copy made
        // untimed), since a poll marks timers fired.
        group.bench_function(format!("poll/{n}"), |b| {
            b.iter_batched(
                || (Tracker::new(w.tracked.clone(), true), w.changed.clone()),
                // The table is handed back so that dropping it is not timed.
                |(mut tracker, details)| {
                    let out = poll_once(&w, &mut tracker, details);
                    (out, tracker)
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// 4: decoding a list page
// ---------------------------------------------------------------------------

/// A 100-session page exactly as the SkyLight (Laravel resource) API, and
/// the simulator, write it.
fn page_body() -> Vec<u8> {
    let sessions: Vec<Session> = details(5, 100, t0())
        .into_iter()
        .map(|d| d.session)
        .collect();
    let path = "https://api.skylight.example/api/v1/web-chat/sessions";
    serde_json::to_vec(&json!({
        "success": true,
        "data": sessions,
        "meta": {
            "current_page": 2, "from": 101, "last_page": 4, "path": path,
            "per_page": 100, "to": 200, "total": 371
        },
        "links": {
            "first": format!("{path}?status=active&per_page=100&page=1"),
            "last": format!("{path}?status=active&per_page=100&page=4"),
            "prev": format!("{path}?status=active&per_page=100&page=1"),
            "next": format!("{path}?status=active&per_page=100&page=3")
        }
    }))
    .unwrap()
}

fn bench_page(c: &mut Criterion) {
    let body = page_body();
    let page = parse_page(&body).unwrap();
    assert_eq!(page.sessions.len(), 100);
    assert_eq!(page.has_next, Some(true));
    assert_eq!((page.current_page, page.last_page), (Some(2), Some(4)));
    // Each session's JSON text as it stands in the body (compact, as sent).
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let items: Vec<String> = value["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert!(items
        .iter()
        .all(|s| body.windows(s.len()).any(|w| w == s.as_bytes())));
    eprintln!("api/decode_page_100: body is {} bytes", body.len());
    let mut group = c.benchmark_group("api");
    group.throughput(Throughput::Elements(100));
    group.bench_function("decode_page_100/bytes_to_page", |b| {
        b.iter(|| parse_page(black_box(&body)).unwrap())
    });
    group.bench_function("decode_page_100/sessions_only", |b| {
        b.iter(|| {
            black_box(&items)
                .iter()
                .map(|s| serde_json::from_str::<Session>(s).unwrap())
                .collect::<Vec<_>>()
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------
// 5: the state store
// ---------------------------------------------------------------------------

/// One cycle's writes: 100 changed sessions; 10 of them acted, so their 20
/// events (a visitor message and a bot answer each) were journaled with
/// their first intents; and the memory writes handling them produces (a
/// failure counter for half of them).
struct StoreCycle {
    /// What the 10 sessions' first intents journaled.
    journal: Batch,
    /// The cycle's one commit: every session's new state, and the 10
    /// sessions' events taken off the journal with their memory.
    commit: Batch,
}

/// A trace step as the engine writes one for a message event with the
/// shipped rules: one rule's decision and two timers' due times.
fn trace_step(e: &Event, rules: &Arc<RuleSetVersion>) -> Step {
    let due = |rule: usize, timer: &str| Decision {
        rule,
        verdict: Verdict::NotDue,
        detail: format!("{timer} due 2026-12-01T17:58:17Z"),
    };
    Step {
        session_id: e.session_id.clone(),
        seen_at: e.at,
        at: e.at,
        event: e.kind,
        key: e.key().rsplit('|').next().unwrap_or_default().to_string(),
        cause: String::new(),
        rules: rules.clone(),
        decisions: vec![
            due(1, "idle 15m"),
            Decision {
                rule: 3,
                verdict: Verdict::NoAction,
                detail: String::new(),
            },
            due(5, "unanswered 10m"),
        ],
    }
}

fn store_cycle(now: Timestamp, traced: bool) -> StoreCycle {
    let rules = Arc::new(RuleSetVersion::new(
        [
            "after-hours-reply",
            "close-idle-ai-chats",
            "escalate-failing-bot",
            "escalate-on-keywords",
            "escalate-on-request",
            "release-silent-agent",
        ]
        .iter()
        .map(|r| RuleVersion {
            rule: r.to_string(),
            version: "5392cd06".into(),
            mode: "live".into(),
        })
        .collect(),
    ));
    let all = details(3, 100, now);
    let sessions: Vec<Tracked> = all.iter().map(|d| diff(None, d.clone(), true).0).collect();
    let mut events = Vec::new();
    let mut finished = Vec::new();
    for (k, d) in all.iter().take(10).enumerate() {
        let t = &sessions[k];
        let visitor = d
            .messages
            .iter()
            .rfind(|m| m.sender_type == SenderType::Visitor)
            .unwrap();
        let bot = d
            .messages
            .iter()
            .rfind(|m| m.sender_type != SenderType::Visitor)
            .unwrap();
        let evs = vec![
            message_event(EventKind::VisitorMessage, d, visitor),
            message_event(EventKind::BotMessage, d, bot),
        ];
        let keys = evs.iter().map(Event::key).collect();
        let mut memory = Vec::new();
        if k % 2 == 0 {
            let mut m = Memory::new();
            m.insert("failures".into(), 0.into());
            memory.push(("escalate-failing-bot".to_string(), m));
        }
        let steps = if traced {
            evs.iter().map(|e| trace_step(e, &rules)).collect()
        } else {
            Vec::new()
        };
        finished.push(Done {
            session_id: t.session.session_id.clone(),
            keys,
            memory,
            steps,
            keep_steps: skyrules::trace::DEFAULT_TRACE_LENGTH,
        });
        events.push(Pending {
            tracked: t.clone(),
            events: evs,
        });
    }
    StoreCycle {
        journal: Batch {
            at: now,
            sessions: sessions[..10].to_vec(),
            events,
            ..Batch::default()
        },
        commit: Batch {
            at: now,
            sessions,
            done: finished,
            ..Batch::default()
        },
    }
}

/// A session's first action: its intent, written with the session's state
/// and events (the journal), then its outcome.
fn first_action(store: &SqliteStore, cycle: &StoreCycle, n: u64) {
    let pending = &cycle.journal.events[0];
    let journal = Batch {
        at: cycle.journal.at,
        sessions: vec![pending.tracked.clone()],
        events: vec![pending.clone()],
        ..Batch::default()
    };
    let intent = reply_intent(&pending.tracked.session.session_id, n);
    assert_eq!(
        store.begin_action(&intent, Some(&journal)).unwrap(),
        Begin::New
    );
    store.finish_action(&intent.key, "taken", None).unwrap();
}

/// A reply's intent, unique per `n`.
fn reply_intent(session_id: &str, n: u64) -> Intent {
    Intent {
        key: format!("{session_id}|visitor_message|m{n}|escalate-on-keywords|0"),
        at: t0(),
        rule: "escalate-on-keywords".into(),
        session_id: session_id.to_string(),
        event: "visitor_message".into(),
        action: "reply".into(),
        text: Some("I'm bringing in a teammate who can sort this out with you.".into()),
    }
}

fn bench_store(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("state.db")).expect("open");
    // A file with history: 2,000 other tracked sessions.
    let others = Batch {
        at: t0(),
        baselined: true,
        sessions: details(4, 2_000, t0())
            .into_iter()
            .map(|d| diff(None, d, true).0)
            .collect(),
        ..Batch::default()
    };
    store.commit(&others).unwrap();
    let cycle = store_cycle(t0(), false);
    let traced = store_cycle(t0(), true);
    store.commit(&cycle.journal).unwrap();
    assert_eq!(store.pending_events().unwrap().len(), 10);
    store.commit(&cycle.commit).unwrap();
    assert!(store.pending_events().unwrap().is_empty());
    let json: usize = cycle
        .commit
        .sessions
        .iter()
        .map(|t| serde_json::to_string(t).unwrap().len())
        .sum();
    eprintln!(
        "store: a tracked session is {} bytes of JSON on average",
        json / cycle.commit.sessions.len()
    );

    let mut group = c.benchmark_group("store");
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(6));
    // The cycle's one transaction (the 10 sessions are journaled again
    // between iterations, untimed, as their first intents would).
    group.bench_function("cycle_commit_100_sessions_10_handled", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                store.commit(&cycle.journal).unwrap();
                let t = Instant::now();
                store.commit(black_box(&cycle.commit)).unwrap();
                spent += t.elapsed();
            }
            spent
        })
    });
    // The same with the decision trace: each handled event's step appended
    // and the session's trace trimmed to its newest 200.
    group.bench_function("cycle_commit_100_sessions_10_handled_traced", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                store.commit(&traced.journal).unwrap();
                let t = Instant::now();
                store.commit(black_box(&traced.commit)).unwrap();
                spent += t.elapsed();
            }
            spent
        })
    });
    // A session's first action of a cycle: the intent carries the
    // session's journal (the cycle's commit empties it between
    // iterations, untimed).
    let mut n = 0u64;
    group.bench_function("first_action_intent_with_journal_and_outcome", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let t = Instant::now();
                first_action(&store, &cycle, n);
                spent += t.elapsed();
                store.commit(&cycle.commit).unwrap();
            }
            spent
        })
    });
    // Any later action: its intent before (`begin_action`) and its outcome
    // after (`finish_action`), two transactions.
    let session = cycle.commit.sessions[0].session.session_id.clone();
    group.bench_function("action_intent_begin_and_finish", |b| {
        b.iter(|| {
            n += 1;
            let intent = reply_intent(&session, n);
            assert_eq!(store.begin_action(&intent, None).unwrap(), Begin::New);
            store.finish_action(&intent.key, "taken", None).unwrap();
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5))
        .sample_size(50);
    targets = bench_rules, bench_watcher, bench_page, bench_store
}
criterion_main!(benches);
