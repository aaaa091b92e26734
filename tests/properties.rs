//! Property tests (proptest) of the parsers of outside input and of the
//! pure cores that turn that input into behaviour: the list-page and
//! session decoders, the snapshot diff and its timers, reply templates,
//! durations, business-hours calendars and the config loader.
//!
//! Every property runs a bounded number of generated cases and persists
//! nothing: a case that once failed is kept below as a named `#[test]`.

use std::cell::Cell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, TimeDelta, Utc};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseResult, TestRunner};
use serde_json::{json, Value};

use skyrules::api::client::{parse_page, parse_session};
use skyrules::api::{
    format_ts, HandledBy, Message, MessageType, SenderType, Session, SessionDetail, SessionStatus,
    Timestamp,
};
use skyrules::config::{parse_duration, Config};
use skyrules::hours::{Calendar, CalendarConfig};
use skyrules::rules::ev::fill_template;
use skyrules::tracking::{diff, due_timers, Event, EventKind, TimerSpec, Tracked, RECENT_MESSAGES};

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// `cases` generated cases, no failure files written into the repository.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Runs one property outside the `proptest!` macro, so that the test can
/// count what the generated cases exercised and assert afterwards that the
/// property was not vacuous.
fn check<S>(cases: u32, strategy: S, test: impl Fn(S::Value) -> TestCaseResult)
where
    S: Strategy,
    S::Value: Debug,
{
    let mut runner = TestRunner::new(config(cases));
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

fn bump(c: &Cell<u32>) {
    c.set(c.get() + 1);
}

/// At least `share` of `total` cases did the interesting thing.
fn assert_share(what: &str, hits: &Cell<u32>, total: &Cell<u32>, share: f64) {
    let (h, t) = (hits.get(), total.get());
    if std::env::var_os("PROPERTIES_STATS").is_some() {
        eprintln!("{what}: {h} of {t}");
    }
    assert!(
        t > 0 && f64::from(h) >= share * f64::from(t),
        "vacuous property: only {h} of {t} cases {what}"
    );
}

fn ts_micros(us: i64) -> Timestamp {
    DateTime::from_timestamp_micros(us).expect("in range")
}

fn utc(s: &str) -> Timestamp {
    DateTime::parse_from_rfc3339(s)
        .expect("test timestamp")
        .with_timezone(&Utc)
}

// ---------------------------------------------------------------------------
// 1. The list-page and session decoders
// ---------------------------------------------------------------------------

/// Member names the decoders look at, so that arbitrary JSON reaches them.
const KEYS: &[&str] = &[
    "data",
    "meta",
    "links",
    "next",
    "current_page",
    "last_page",
    "next_page_url",
    "success",
    "session_id",
    "status",
    "handled_by",
    "visitor_name",
    "has_visitor_messages",
    "human_requested_at",
    "created_at",
    "last_activity_at",
    "messages",
    "id",
    "sender_type",
    "message_text",
    "message_type",
    "is_read",
    "total",
];

fn json_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "(?s).{0,12}",
        1 => Just(String::new()),
        1 => Just("2026-03-08T14:22:00.000000Z".to_string()),
        1 => Just("2025-01-02 03:04:05".to_string()),
        1 => "[0-9]{1,3}",
        1 => prop::sample::select(vec!["true", "1", "active", "ended", "human", "http://x?page=2"])
            .prop_map(str::to_string),
        1 => prop::sample::select(KEYS).prop_map(str::to_string),
    ]
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(KEYS).prop_map(str::to_string),
        1 => "(?s).{0,8}",
    ]
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-3i64..300).prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        json_text().prop_map(Value::String),
    ]
}

/// Any JSON value, at most 5 levels deep and about 100 nodes.
fn arb_json() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(5, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((json_key(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// An object that looks like a session or message, with odd member values.
fn session_like() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            3 => "[a-z0-9_]{0,6}".prop_map(Value::String),
            1 => json_leaf(),
        ],
        prop::collection::vec((prop::sample::select(KEYS), arb_json()), 0..5),
        prop::collection::vec(
            prop::collection::vec((prop::sample::select(KEYS), json_leaf()), 0..5),
            0..4,
        ),
        any::<u8>(),
    )
        .prop_map(|(id, members, messages, mask)| {
            let mut o = serde_json::Map::new();
            if mask & 1 == 0 {
                o.insert("session_id".into(), id);
            }
            for (k, v) in members {
                o.insert(k.to_string(), v);
            }
            if mask & 2 == 0 {
                let messages = messages
                    .into_iter()
                    .enumerate()
                    .map(|(i, kv)| {
                        let mut m: serde_json::Map<String, Value> =
                            kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                        if mask & 4 == 0 {
                            m.entry("id").or_insert(json!(10 - i as i64));
                        }
                        Value::Object(m)
                    })
                    .collect();
                o.insert("messages".into(), Value::Array(messages));
            }
            Value::Object(o)
        })
}

/// Bodies shaped like the three page shapes, with odd contents.
fn page_like() -> impl Strategy<Value = Value> {
    let items = prop::collection::vec(prop_oneof![4 => session_like(), 1 => arb_json()], 0..6);
    prop_oneof![
        1 => arb_json(),
        2 => (items.clone(), json_leaf(), json_leaf(), json_leaf(), any::<bool>()).prop_map(
            |(items, cur, last, next, top)| {
                if top {
                    json!({"data": items, "current_page": cur, "last_page": last, "next_page_url": next})
                } else {
                    json!({"success": true, "data": items,
                           "meta": {"current_page": cur, "last_page": last}, "links": {"next": next}})
                }
            }
        ),
        2 => (items.clone(), json_leaf(), json_leaf(), json_leaf()).prop_map(|(items, cur, last, next)| {
            json!({"success": true, "data": {"data": items, "current_page": cur,
                   "last_page": last, "next_page_url": next, "total": 3}})
        }),
        1 => items.prop_map(Value::Array),
    ]
}

/// A page number as [`parse_page`] documents reading it.
fn ref_page_num(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn ref_next_link(v: Option<&Value>) -> Option<bool> {
    match v {
        None => None,
        Some(Value::String(s)) => Some(!s.is_empty()),
        Some(_) => Some(false),
    }
}

type PageView = (Vec<Session>, Option<u64>, Option<u64>, Option<bool>);

/// An independent reading of a list body through `serde_json::Value`, as
/// the decoder's doc describes it: the oracle for the byte decoder.
fn reference_page(v: &Value) -> Option<PageView> {
    fn sessions(items: &[Value]) -> Vec<Session> {
        items
            .iter()
            .filter_map(|i| serde_json::from_value::<Session>(i.clone()).ok())
            .filter(|s| !s.session_id.is_empty())
            .collect()
    }
    match v {
        Value::Array(items) => Some((sessions(items), None, None, None)),
        Value::Object(o) => match o.get("data") {
            Some(Value::Array(items)) => {
                let meta = o.get("meta");
                Some((
                    sessions(items),
                    ref_page_num(meta.and_then(|m| m.get("current_page")))
                        .or_else(|| ref_page_num(o.get("current_page"))),
                    ref_page_num(meta.and_then(|m| m.get("last_page")))
                        .or_else(|| ref_page_num(o.get("last_page"))),
                    ref_next_link(o.get("links").and_then(|l| l.get("next")))
                        .or_else(|| ref_next_link(o.get("next_page_url"))),
                ))
            }
            Some(Value::Object(p)) => match p.get("data") {
                Some(Value::Array(items)) => Some((
                    sessions(items),
                    ref_page_num(p.get("current_page")),
                    ref_page_num(p.get("last_page")),
                    ref_next_link(p.get("next_page_url")),
                )),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

fn page_view(body: &[u8]) -> Option<PageView> {
    parse_page(body)
        .ok()
        .map(|p| (p.sessions, p.current_page, p.last_page, p.has_next))
}

/// Timestamps with microseconds, 2000 to 2100.
fn arb_ts() -> impl Strategy<Value = Timestamp> {
    (946_684_800_000_000i64..4_102_444_800_000_000).prop_map(ts_micros)
}

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "(?s).{0,12}",
        2 => "[a-zA-Z .@+0-9-]{0,12}",
        1 => Just("\"\\\u{0}\u{1f}\u{7f}é😀\u{2028}{{x}}".to_string()),
    ]
}

fn opt<S: Strategy>(s: S) -> impl Strategy<Value = Option<S::Value>>
where
    S::Value: Debug,
{
    prop::option::weighted(0.6, s)
}

fn unknown_word(known: &'static [&'static str]) -> impl Strategy<Value = String> {
    "[a-z_]{0,8}".prop_filter("an unknown word", move |s| !known.contains(&s.as_str()))
}

fn arb_status() -> impl Strategy<Value = SessionStatus> {
    prop_oneof![
        3 => Just(SessionStatus::Active),
        2 => Just(SessionStatus::Ended),
        1 => unknown_word(&["active", "ended"]).prop_map(SessionStatus::Other),
    ]
}

fn arb_handled_by() -> impl Strategy<Value = HandledBy> {
    prop_oneof![
        3 => Just(HandledBy::Ai),
        2 => Just(HandledBy::Human),
        2 => Just(HandledBy::Pending),
        1 => unknown_word(&["ai", "human", "pending"]).prop_map(HandledBy::Other),
    ]
}

fn arb_sender() -> impl Strategy<Value = SenderType> {
    prop_oneof![
        3 => Just(SenderType::Visitor),
        2 => Just(SenderType::Bot),
        2 => Just(SenderType::Agent),
        1 => unknown_word(&["visitor", "bot", "agent"]).prop_map(SenderType::Other),
    ]
}

/// A session with every field arbitrary but valid; `session_id` is set by
/// the caller.
fn arb_session() -> impl Strategy<Value = Session> {
    (
        (arb_status(), arb_handled_by(), any::<bool>()),
        (
            opt(arb_string()),
            opt(arb_string()),
            opt(arb_string()),
            opt(arb_string()),
            opt(arb_string()),
            opt(arb_string()),
        ),
        (opt(arb_ts()), opt(arb_ts()), opt(arb_ts()), opt(arb_ts())),
    )
        .prop_map(|((status, handled_by, hvm), v, t)| Session {
            session_id: String::new(),
            status,
            handled_by,
            visitor_name: v.0,
            visitor_email: v.1,
            visitor_phone: v.2,
            visitor_ip: v.3,
            visitor_page_url: v.4,
            visitor_referrer: v.5,
            has_visitor_messages: hvm,
            human_requested_at: t.0,
            human_took_over_at: t.1,
            last_activity_at: t.2,
            created_at: t.3,
        })
}

/// Unique, non-empty ids: an index prefix and an arbitrary tail.
fn arb_sessions(max: usize) -> impl Strategy<Value = Vec<Session>> {
    prop::collection::vec((arb_session(), arb_string()), 0..max).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (mut s, tail))| {
                s.session_id = format!("{i}{tail}");
                s
            })
            .collect()
    })
}

/// One timestamp as the server may write it: `Z` or an offset, always
/// with microseconds.
fn serve_ts(t: &Timestamp, pick: u32) -> Value {
    let offsets = [0, 5 * 3600 + 1800, -5 * 3600, 14 * 3600, -(9 * 3600 + 1800)];
    match pick % 6 {
        0 => Value::String(format_ts(t)),
        n => {
            let off = FixedOffset::east_opt(offsets[n as usize - 1]).expect("offset");
            Value::String(
                t.with_timezone(&off)
                    .format("%Y-%m-%dT%H:%M:%S%.6f%:z")
                    .to_string(),
            )
        }
    }
}

/// The JSON the server might send for `s`: nulls sometimes missing,
/// defaults sometimes left out, timestamps in varying offsets, extra
/// members. `mask` picks the variations.
fn serve_session(s: &Session, mask: u64) -> Value {
    let mut v = serde_json::to_value(s).expect("serialize a session");
    let o = v.as_object_mut().expect("an object");
    let keys: Vec<String> = o.keys().cloned().collect();
    for (bit, k) in keys.iter().enumerate() {
        let droppable = match &o[k] {
            Value::Null => true,
            Value::Bool(false) => true,
            Value::String(v) => {
                (k == "status" && v == "active") || (k == "handled_by" && v == "ai")
            }
            _ => false,
        };
        if droppable && mask & (1 << bit) != 0 {
            o.remove(k);
        }
    }
    let stamps = [
        ("human_requested_at", s.human_requested_at),
        ("human_took_over_at", s.human_took_over_at),
        ("last_activity_at", s.last_activity_at),
        ("created_at", s.created_at),
    ];
    for (i, (k, t)) in stamps.into_iter().enumerate() {
        if let Some(t) = t {
            o.insert(k.into(), serve_ts(&t, (mask >> (20 + 3 * i)) as u32));
        }
    }
    if s.has_visitor_messages && mask & (1 << 40) != 0 {
        o.insert("has_visitor_messages".into(), json!(1));
    }
    if mask & (1 << 41) != 0 {
        o.insert(
            "x_brand_new".into(),
            json!({"nested": [1, 2.5, {"a": null}], "data": []}),
        );
    }
    v
}

fn arb_message_type() -> impl Strategy<Value = MessageType> {
    prop_oneof![
        4 => Just(MessageType::from("text")),
        2 => prop::sample::select(vec!["image", "file", "audio", "video", "document"])
            .prop_map(MessageType::from),
        1 => "[a-z]{1,8}".prop_map(MessageType::from),
    ]
}

fn arb_messages(max: usize) -> impl Strategy<Value = Vec<Message>> {
    (
        -1_000_000i64..1_000_000,
        prop::collection::vec(
            (
                1i64..1000,
                arb_sender(),
                opt(arb_string()),
                arb_message_type(),
                opt(arb_string()),
                any::<bool>(),
                opt(arb_ts()),
            ),
            0..max,
        ),
    )
        .prop_map(|(first, raw)| {
            let mut id = first;
            raw.into_iter()
                .map(|(gap, sender_type, text, kind, media, read, at)| {
                    id += gap;
                    Message {
                        id,
                        sender_type,
                        message_text: text,
                        message_type: kind,
                        media_url: media,
                        is_read: read,
                        created_at: at,
                    }
                })
                .collect()
        })
}

fn serve_message(m: &Message, mask: u64) -> Value {
    let mut v = serde_json::to_value(m).expect("serialize a message");
    let o = v.as_object_mut().expect("an object");
    let keys: Vec<String> = o.keys().cloned().collect();
    for (bit, k) in keys.iter().enumerate() {
        let droppable = matches!(&o[k], Value::Null | Value::Bool(false))
            || (k == "message_type" && o[k] == "text");
        if droppable && mask & (1 << bit) != 0 {
            o.remove(k);
        }
    }
    if mask & (1 << 20) != 0 {
        o.insert("id".into(), Value::String(m.id.to_string()));
    }
    if let Some(t) = m.created_at {
        o.insert("created_at".into(), serve_ts(&t, (mask >> 21) as u32));
    }
    v
}

/// How a page's `next` link is served.
#[derive(Debug, Clone)]
enum NextLink {
    Missing,
    Null,
    Empty,
    Url(String),
}

impl NextLink {
    fn expected(&self) -> Option<bool> {
        match self {
            NextLink::Missing => None,
            NextLink::Null | NextLink::Empty => Some(false),
            NextLink::Url(_) => Some(true),
        }
    }
    fn value(&self) -> Option<Value> {
        match self {
            NextLink::Missing => None,
            NextLink::Null => Some(Value::Null),
            NextLink::Empty => Some(json!("")),
            NextLink::Url(u) => Some(json!(u)),
        }
    }
}

fn arb_next() -> impl Strategy<Value = NextLink> {
    prop_oneof![
        Just(NextLink::Missing),
        Just(NextLink::Null),
        Just(NextLink::Empty),
        "[a-z:/?=0-9]{1,20}".prop_map(NextLink::Url),
    ]
}

/// A page number served as a number or a numeric string, or left out.
fn put_page_num(o: &mut serde_json::Map<String, Value>, key: &str, n: Option<u64>, as_str: bool) {
    if let Some(n) = n {
        let v = if as_str {
            json!(n.to_string())
        } else {
            json!(n)
        };
        o.insert(key.into(), v);
    }
}

#[derive(Debug, Clone)]
struct ServedPage {
    sessions: Vec<Session>,
    masks: Vec<u64>,
    current_page: Option<u64>,
    last_page: Option<u64>,
    next: NextLink,
    as_str: bool,
}

fn arb_served_page() -> impl Strategy<Value = ServedPage> {
    arb_sessions(8)
        .prop_flat_map(|sessions| {
            let n = sessions.len();
            (
                Just(sessions),
                prop::collection::vec(any::<u64>(), n),
                opt(0u64..1000),
                opt(0u64..1000),
                arb_next(),
                any::<bool>(),
            )
        })
        .prop_map(
            |(sessions, masks, current_page, last_page, next, as_str)| ServedPage {
                sessions,
                masks,
                current_page,
                last_page,
                next,
                as_str,
            },
        )
}

impl ServedPage {
    fn items(&self) -> Vec<Value> {
        self.sessions
            .iter()
            .zip(&self.masks)
            .map(|(s, m)| serve_session(s, *m))
            .collect()
    }

    /// `{"data": [..], "meta": {..}, "links": {"next": ..}}`
    fn resource(&self) -> Value {
        let mut meta = serde_json::Map::new();
        put_page_num(&mut meta, "current_page", self.current_page, self.as_str);
        put_page_num(&mut meta, "last_page", self.last_page, self.as_str);
        meta.insert("per_page".into(), json!(100));
        let mut body = serde_json::Map::new();
        body.insert("success".into(), json!(true));
        body.insert("data".into(), Value::Array(self.items()));
        body.insert("meta".into(), Value::Object(meta));
        if let Some(next) = self.next.value() {
            body.insert(
                "links".into(),
                json!({"next": next, "first": "http://x?page=1"}),
            );
        }
        Value::Object(body)
    }

    /// `{"data": {"data": [..], "current_page", "last_page", "next_page_url"}}`
    fn paginator(&self) -> Value {
        let mut p = serde_json::Map::new();
        p.insert("data".into(), Value::Array(self.items()));
        put_page_num(&mut p, "current_page", self.current_page, self.as_str);
        put_page_num(&mut p, "last_page", self.last_page, self.as_str);
        if let Some(next) = self.next.value() {
            p.insert("next_page_url".into(), next);
        }
        p.insert("links".into(), json!([{"url": null, "label": "&laquo;"}]));
        p.insert("total".into(), json!(self.sessions.len()));
        json!({"success": true, "data": p})
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn page_decoder_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_page(&bytes);
        let _ = parse_session(&bytes);
    }

    /// Damaged versions of real bodies: cut anywhere (also inside a UTF-8
    /// sequence) or with one byte changed. A cut object or array is never
    /// a page.
    #[test]
    fn damaged_bodies_never_panic(page in arb_served_page(), cut in any::<prop::sample::Index>(),
                                  at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let text = serde_json::to_vec(&page.resource()).unwrap();
        let n = cut.index(text.len());
        prop_assert!(parse_page(&text[..n]).is_err(), "a cut body decoded: {:?}",
                     String::from_utf8_lossy(&text[..n]));
        let _ = parse_session(&text[..n]);
        let mut changed = text.clone();
        let i = at.index(changed.len());
        changed[i] = byte;
        let _ = parse_page(&changed);
        let _ = parse_session(&changed);
    }

    #[test]
    fn session_decoder_never_panics_on_json(v in prop_oneof![arb_json(), session_like(),
            session_like().prop_map(|s| json!({"success": true, "data": s}))]) {
        let text = serde_json::to_vec(&v).unwrap();
        if let Ok(d) = parse_session(&text) {
            // Oldest first, whatever order the server used.
            prop_assert!(d.messages.windows(2).all(|w| w[0].id <= w[1].id), "{:?}", d.messages);
        }
    }

    /// A page served in each of the three shapes decodes to exactly the
    /// sessions served, in order, with the paging fields as served.
    #[test]
    fn pages_round_trip_in_every_shape(page in arb_served_page()) {
        let want_next = page.next.expected();
        for (shape, body, paging) in [
            ("resource", page.resource(), (page.current_page, page.last_page, want_next)),
            ("paginator", page.paginator(), (page.current_page, page.last_page, want_next)),
            ("bare", Value::Array(page.items()), (None, None, None)),
        ] {
            let text = serde_json::to_vec(&body).unwrap();
            let got = parse_page(&text).map_err(|e| TestCaseError::fail(format!("{shape}: {e}")))?;
            prop_assert_eq!(&got.sessions, &page.sessions, "{}: {}", shape, body);
            prop_assert_eq!((got.current_page, got.last_page, got.has_next), paging, "{}", shape);
        }
    }

    /// A session detail decodes back, enveloped or bare, with its messages
    /// oldest first even when served out of order.
    #[test]
    fn session_details_round_trip(
        session in arb_session(), id in "[a-z0-9_]{1,12}", smask in any::<u64>(),
        messages in arb_messages(8), mmasks in prop::collection::vec(any::<u64>(), 8),
        order in Just(()).prop_perturb(|_, mut rng| rng.next_u64()),
    ) {
        let mut session = session;
        session.session_id = format!("sess_{id}");
        let want = SessionDetail { session, messages };
        let mut served: Vec<Value> = want.messages.iter().zip(&mmasks)
            .map(|(m, mask)| serve_message(m, *mask)).collect();
        if !served.is_empty() {
            let k = order as usize % served.len();
            served.rotate_left(k);
            if order & 1 == 1 { served.reverse(); }
        }
        let mut bare = serve_session(&want.session, smask);
        bare.as_object_mut().unwrap().insert("messages".into(), Value::Array(served));
        let enveloped = json!({"success": true, "data": bare.clone()});
        for body in [enveloped, bare] {
            let text = serde_json::to_vec(&body).unwrap();
            let got = parse_session(&text).map_err(|e| TestCaseError::fail(format!("{e}: {body}")))?;
            prop_assert_eq!(&got, &want, "{}", body);
        }
    }
}

/// Arbitrary JSON never panics either decoder, and the byte-level page
/// decoder reads every body exactly as the documented reading through a
/// `serde_json::Value` does.
#[test]
fn page_decoder_agrees_with_the_value_reading() {
    let (total, pages, with_sessions) = (Cell::new(0), Cell::new(0), Cell::new(0));
    check(256, page_like(), |v| {
        bump(&total);
        let text = serde_json::to_vec(&v).unwrap();
        let got = page_view(&text);
        let _ = parse_session(&text);
        let want = reference_page(&v);
        prop_assert_eq!(&got, &want, "{}", v);
        if let Some((sessions, ..)) = got {
            bump(&pages);
            if !sessions.is_empty() {
                bump(&with_sessions);
            }
        }
        Ok(())
    });
    assert_share("decoded as a page", &pages, &total, 0.3);
    assert_share("decoded sessions", &with_sessions, &total, 0.15);
}

// ---------------------------------------------------------------------------
// 2. The snapshot diff and its timers, against a model of one chat
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Visitor,
    Bot,
    Agent,
    /// A sender kind skyrules does not know: no event.
    Odd,
}

impl Who {
    fn sender(self) -> SenderType {
        match self {
            Who::Visitor => SenderType::Visitor,
            Who::Bot => SenderType::Bot,
            Who::Agent => SenderType::Agent,
            Who::Odd => SenderType::Other("system".into()),
        }
    }
}

/// One thing that happens to the chat, after `ms` milliseconds; or a poll.
#[derive(Debug, Clone)]
enum Step {
    Say(Who, u32),
    /// `n` messages in a row, `ms` apart: long runs between two polls.
    Burst(Who, u8, u32),
    Request(u32),
    TakeOver(u32),
    Release(u32),
    End(u32),
    /// A snapshot read, diffed once or twice, then timers checked at each
    /// of `checks` (milliseconds after one another).
    Poll {
        twice: bool,
        checks: Vec<u32>,
    },
}

#[derive(Debug, Clone)]
struct History {
    start_us: i64,
    first_id: i64,
    steps: Vec<Step>,
    /// idle, unanswered and human_waiting durations, in seconds.
    timers: (u64, u64, u64),
}

fn arb_who() -> impl Strategy<Value = Who> {
    prop_oneof![
        6 => Just(Who::Visitor),
        4 => Just(Who::Bot),
        3 => Just(Who::Agent),
        1 => Just(Who::Odd),
    ]
}

fn arb_step() -> impl Strategy<Value = Step> {
    let quick = prop_oneof![3 => Just(0u32), 5 => 0u32..90_000];
    let later = 1u32..120_000;
    prop_oneof![
        12 => (arb_who(), quick.clone()).prop_map(|(w, ms)| Step::Say(w, ms)),
        2 => (arb_who(), 2u8..30, quick).prop_map(|(w, n, ms)| Step::Burst(w, n, ms)),
        2 => later.clone().prop_map(Step::Request),
        2 => later.clone().prop_map(Step::TakeOver),
        2 => later.clone().prop_map(Step::Release),
        1 => later.prop_map(Step::End),
        6 => (
            prop::bool::weighted(0.3),
            prop::collection::vec(prop_oneof![1 => Just(0u32), 3 => 0u32..400_000], 0..4)
        )
            .prop_map(|(twice, checks)| Step::Poll { twice, checks }),
    ]
}

fn arb_history() -> impl Strategy<Value = History> {
    (
        // 2026, to the microsecond.
        1_767_225_600_000_000i64..1_798_761_600_000_000,
        // Ids as the API hands them out: positive, increasing.
        1i64..1_000_000,
        prop::collection::vec(arb_step(), 1..40),
        (1u64..300, 1u64..300, 1u64..300),
    )
        .prop_map(|(start_us, first_id, mut steps, timers)| {
            steps.push(Step::Poll {
                twice: false,
                checks: vec![],
            });
            History {
                start_us,
                first_id,
                steps,
                timers,
            }
        })
}

/// The chat as the server holds it.
struct Chat {
    session: Session,
    messages: Vec<Message>,
    clock: Timestamp,
    next_id: i64,
}

impl Chat {
    fn wait(&mut self, ms: u32) {
        self.clock += TimeDelta::milliseconds(i64::from(ms));
    }

    fn ended(&self) -> bool {
        self.session.status == SessionStatus::Ended
    }

    fn touch(&mut self) {
        self.session.last_activity_at = Some(self.clock);
    }

    fn say(&mut self, who: Who) {
        if self.ended() {
            return;
        }
        let id = self.next_id;
        self.next_id += 1 + id.rem_euclid(3);
        self.messages.push(Message {
            id,
            sender_type: who.sender(),
            message_text: Some(format!("message {id}")),
            message_type: MessageType::from("text"),
            media_url: None,
            is_read: false,
            created_at: Some(self.clock),
        });
        if who == Who::Visitor {
            self.session.has_visitor_messages = true;
        }
        self.touch();
    }

    /// The simulator's rules: a request counts only from the AI, or while
    /// pending without one; a human's chat is left alone.
    fn request(&mut self) {
        let s = &self.session;
        let fresh = s.handled_by == HandledBy::Ai
            || (s.handled_by == HandledBy::Pending && s.human_requested_at.is_none());
        if !self.ended() && fresh {
            self.session.human_requested_at = Some(self.clock);
            self.session.handled_by = HandledBy::Pending;
            self.touch();
        }
    }

    fn take_over(&mut self) {
        if !self.ended() {
            self.session.handled_by = HandledBy::Human;
            self.session.human_took_over_at = Some(self.clock);
            self.touch();
        }
    }

    fn release(&mut self) {
        if !self.ended() {
            self.session.handled_by = HandledBy::Ai;
            self.touch();
        }
    }

    fn end(&mut self) {
        if !self.ended() {
            self.session.status = SessionStatus::Ended;
            self.touch();
        }
    }

    fn snapshot(&self) -> SessionDetail {
        SessionDetail {
            session: self.session.clone(),
            messages: self.messages.clone(),
        }
    }
}

fn message_kind(s: &SenderType) -> Option<EventKind> {
    match s {
        SenderType::Visitor => Some(EventKind::VisitorMessage),
        SenderType::Bot => Some(EventKind::BotMessage),
        SenderType::Agent => Some(EventKind::AgentMessage),
        SenderType::Other(_) => None,
    }
}

fn is_message_event(k: EventKind) -> bool {
    matches!(
        k,
        EventKind::VisitorMessage | EventKind::BotMessage | EventKind::AgentMessage
    )
}

/// The SPEC's state-change events for one poll, from two snapshots.
fn expected_state_events(prev: Option<&Session>, now: &Session) -> Vec<EventKind> {
    let mut want = Vec::new();
    if prev.is_none() {
        want.push(EventKind::SessionStarted);
    }
    if now.human_requested_at.is_some()
        && prev.and_then(|p| p.human_requested_at) != now.human_requested_at
    {
        want.push(EventKind::HumanRequested);
    }
    let was = prev.map(|p| &p.handled_by);
    if now.handled_by == HandledBy::Human && was != Some(&HandledBy::Human) {
        want.push(EventKind::TakenOver);
    }
    if now.handled_by == HandledBy::Ai && was == Some(&HandledBy::Human) {
        want.push(EventKind::Released);
    }
    if now.status == SessionStatus::Ended && prev.is_none_or(|p| p.status != SessionStatus::Ended) {
        want.push(EventKind::SessionEnded);
    }
    want.sort();
    want
}

/// The SPEC's timer conditions on the last snapshot the watcher saw: the
/// occurrence's anchor and when its clock started.
fn model_timer(seen: &SessionDetail, kind: EventKind) -> Option<(String, Timestamp)> {
    let s = &seen.session;
    if s.status == SessionStatus::Ended {
        return None;
    }
    let last = seen.messages.last();
    match kind {
        // "No message from anyone for D; once per quiet stretch", counted
        // from the newest message or the session's creation.
        EventKind::Idle => Some(match last {
            Some(m) => (format!("m{}", m.id), m.created_at?),
            None => ("open".to_string(), s.created_at?),
        }),
        // "The newest message is the visitor's and has waited D."
        EventKind::Unanswered => {
            let m = last.filter(|m| m.sender_type == SenderType::Visitor)?;
            Some((format!("m{}", m.id), m.created_at?))
        }
        // "A human was requested, nobody took over, and D has passed."
        EventKind::HumanWaiting => {
            let req = s.human_requested_at?;
            let taken =
                s.handled_by == HandledBy::Human || s.human_took_over_at.is_some_and(|t| t >= req);
            (!taken).then(|| (format!("r{}", req.timestamp_micros()), req))
        }
        _ => None,
    }
}

/// What one run of a history produced, for the coverage counters.
#[derive(Default, Debug)]
struct RunStats {
    keys: Vec<String>,
    message_events: usize,
    state_events: usize,
    timer_events: usize,
    longest_unseen_run: usize,
}

/// Plays `h` against the diff and the timers, checking every poll against
/// the model.
fn play(h: &History) -> Result<RunStats, TestCaseError> {
    let start = ts_micros(h.start_us);
    let mut chat = Chat {
        session: Session {
            session_id: "sess_prop".into(),
            created_at: Some(start),
            last_activity_at: Some(start),
            ..Session::default()
        },
        messages: Vec::new(),
        clock: start,
        next_id: h.first_id,
    };
    let specs = [
        TimerSpec::wall(EventKind::Idle, Duration::from_secs(h.timers.0)),
        TimerSpec::wall(EventKind::Unanswered, Duration::from_secs(h.timers.1)),
        TimerSpec::wall(EventKind::HumanWaiting, Duration::from_secs(h.timers.2)),
    ];
    let mut stats = RunStats::default();
    let mut tracked: Option<Tracked> = None;
    let mut seen: Option<SessionDetail> = None;
    let mut message_ids: Vec<i64> = Vec::new();
    let mut fired: HashMap<(EventKind, String), Timestamp> = HashMap::new();
    let mut all_keys: HashSet<String> = HashSet::new();
    let mut record = |e: &Event, stats: &mut RunStats| -> TestCaseResult {
        let key = e.key();
        prop_assert!(all_keys.insert(key.clone()), "event key {key} twice: {e:?}");
        stats.keys.push(key);
        Ok(())
    };

    for step in &h.steps {
        match step {
            Step::Say(who, ms) => {
                chat.wait(*ms);
                chat.say(*who);
            }
            Step::Burst(who, n, ms) => {
                for _ in 0..*n {
                    chat.wait(*ms);
                    chat.say(*who);
                }
            }
            Step::Request(ms) => {
                chat.wait(*ms);
                chat.request();
            }
            Step::TakeOver(ms) => {
                chat.wait(*ms);
                chat.take_over();
            }
            Step::Release(ms) => {
                chat.wait(*ms);
                chat.release();
            }
            Step::End(ms) => {
                chat.wait(*ms);
                chat.end();
            }
            Step::Poll { twice, checks } => {
                let snap = chat.snapshot();
                let prev_max = seen
                    .as_ref()
                    .and_then(|s| s.messages.last())
                    .map_or(i64::MIN, |m| m.id);
                let new: Vec<&Message> = snap.messages.iter().filter(|m| m.id > prev_max).collect();
                stats.longest_unseen_run = stats.longest_unseen_run.max(new.len());

                let (t, events) = diff(tracked.as_ref(), snap.clone(), false);
                for e in &events {
                    prop_assert_eq!(&e.session_id, "sess_prop");
                    record(e, &mut stats)?;
                }
                // Every new message exactly once, oldest first, by sender.
                let got: Vec<&Event> = events.iter().filter(|e| is_message_event(e.kind)).collect();
                let want: Vec<&&Message> = new
                    .iter()
                    .filter(|m| message_kind(&m.sender_type).is_some())
                    .collect();
                prop_assert_eq!(
                    got.iter()
                        .map(|e| e.message.as_ref().map(|m| m.id))
                        .collect::<Vec<_>>(),
                    want.iter().map(|m| Some(m.id)).collect::<Vec<_>>(),
                    "message events of a poll with {} new messages",
                    new.len()
                );
                for (e, m) in got.iter().zip(&want) {
                    prop_assert_eq!(Some(e.kind), message_kind(&m.sender_type));
                    prop_assert_eq!(e.message.as_ref(), Some(**m));
                    prop_assert_eq!(Some(e.at), m.created_at);
                    message_ids.push(m.id);
                }
                stats.message_events += got.len();
                // State changes, as the snapshots show them.
                let mut state: Vec<EventKind> = events
                    .iter()
                    .map(|e| e.kind)
                    .filter(|k| !is_message_event(*k))
                    .collect();
                state.sort();
                let want_state =
                    expected_state_events(seen.as_ref().map(|s| &s.session), &snap.session);
                prop_assert_eq!(&state, &want_state);
                stats.state_events += state.len();
                if want_state.contains(&EventKind::SessionStarted) {
                    prop_assert_eq!(events[0].kind, EventKind::SessionStarted);
                }
                if want_state.contains(&EventKind::SessionEnded) {
                    prop_assert_eq!(events.last().unwrap().kind, EventKind::SessionEnded);
                }
                prop_assert!(t.recent.len() <= RECENT_MESSAGES);
                tracked = Some(t);
                if *twice {
                    // The same snapshot again: nothing happened.
                    let (t2, again) = diff(tracked.as_ref(), snap.clone(), false);
                    prop_assert!(again.is_empty(), "an unchanged snapshot fired {:?}", again);
                    prop_assert_eq!(Some(&t2), tracked.as_ref());
                    tracked = Some(t2);
                }
                seen = Some(snap);

                let seen_now = seen.as_ref().unwrap();
                let t = tracked.as_mut().unwrap();
                for ms in checks {
                    chat.wait(*ms);
                    let now = chat.clock;
                    let due = due_timers(t, &specs, now);
                    for e in &due {
                        record(e, &mut stats)?;
                    }
                    stats.timer_events += due.len();
                    for spec in &specs {
                        let mine: Vec<&Event> =
                            due.iter().filter(|e| e.kind == spec.kind).collect();
                        let after = TimeDelta::from_std(spec.after).unwrap();
                        let want = match model_timer(seen_now, spec.kind) {
                            Some((anchor, since)) if now - since >= after => {
                                match fired.entry((spec.kind, anchor)) {
                                    std::collections::hash_map::Entry::Occupied(_) => None,
                                    std::collections::hash_map::Entry::Vacant(v) => {
                                        v.insert(since + after);
                                        Some((since + after, (now - since).to_std().unwrap()))
                                    }
                                }
                            }
                            _ => None,
                        };
                        match want {
                            None => prop_assert!(
                                mine.is_empty(),
                                "{} fired at {} but should not: {:?}",
                                spec.kind,
                                now,
                                mine
                            ),
                            Some((at, waited)) => {
                                prop_assert_eq!(
                                    mine.len(),
                                    1,
                                    "{} due at {} did not fire once",
                                    spec.kind,
                                    at
                                );
                                prop_assert_eq!(mine[0].at, at);
                                prop_assert_eq!(mine[0].waited, Some(waited));
                                prop_assert_eq!(mine[0].timer.as_ref(), Some(spec));
                            }
                        }
                    }
                }
            }
        }
    }
    // Across all polls: every message the chat holds was an event once.
    let held: Vec<i64> = seen
        .as_ref()
        .map(|s| {
            s.messages
                .iter()
                .filter(|m| message_kind(&m.sender_type).is_some())
                .map(|m| m.id)
                .collect()
        })
        .unwrap_or_default();
    prop_assert_eq!(message_ids, held, "message events over the whole run");
    Ok(stats)
}

/// Found by `diff_and_timers_match_the_model`: 21 messages between two
/// polls (one more than `RECENT_MESSAGES`) lost the oldest one's event.
#[test]
fn more_new_messages_than_recent_messages_all_fire() {
    let start = utc("2026-01-01T00:00:00Z");
    let messages: Vec<Message> = (1..=RECENT_MESSAGES as i64 + 1)
        .map(|id| Message {
            id,
            sender_type: SenderType::Visitor,
            message_text: Some(format!("m{id}")),
            message_type: MessageType::from("text"),
            media_url: None,
            is_read: false,
            created_at: Some(start),
        })
        .collect();
    let detail = SessionDetail {
        session: Session {
            session_id: "s".into(),
            created_at: Some(start),
            last_activity_at: Some(start),
            ..Session::default()
        },
        messages,
    };
    let (t, events) = diff(None, detail, false);
    let ids: Vec<i64> = events
        .iter()
        .filter_map(|e| e.message.as_ref().map(|m| m.id))
        .collect();
    assert_eq!(ids, (1..=RECENT_MESSAGES as i64 + 1).collect::<Vec<_>>());
    assert_eq!(t.recent.len(), RECENT_MESSAGES, "only the newest are kept");
    assert_eq!(t.cursor, RECENT_MESSAGES as i64 + 1);
    assert_eq!(
        t.last_message().map(|m| m.id),
        Some(RECENT_MESSAGES as i64 + 1)
    );
}

#[test]
fn diff_and_timers_match_the_model() {
    let total = Cell::new(0);
    let (messages, states, timers, long_runs) =
        (Cell::new(0), Cell::new(0), Cell::new(0), Cell::new(0));
    check(128, arb_history(), |h| {
        bump(&total);
        let first = play(&h)?;
        // The same history diffed again gives the same event keys.
        let second = play(&h)?;
        prop_assert_eq!(&first.keys, &second.keys);
        if first.message_events > 0 {
            bump(&messages);
        }
        if first.state_events > 1 {
            bump(&states);
        }
        if first.timer_events > 0 {
            bump(&timers);
        }
        if first.longest_unseen_run > RECENT_MESSAGES {
            bump(&long_runs);
        }
        Ok(())
    });
    assert_share("fired message events", &messages, &total, 0.7);
    assert_share(
        "fired state changes besides session_started",
        &states,
        &total,
        0.4,
    );
    assert_share("fired timers", &timers, &total, 0.3);
    assert_share(
        "had more new messages in one poll than RECENT_MESSAGES",
        &long_runs,
        &total,
        0.05,
    );
}

// ---------------------------------------------------------------------------
// 3. Reply templates
// ---------------------------------------------------------------------------

/// The template fields and their text, per SPEC §3, independently of
/// `field_text`.
fn model_field(s: &Session, name: &str) -> Option<String> {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let ts = |v: &Option<Timestamp>| v.as_ref().map(format_ts).unwrap_or_default();
    Some(match name {
        "visitor_name" => match &s.visitor_name {
            Some(n) if !n.trim().is_empty() => n.clone(),
            _ => "there".to_string(),
        },
        "session_id" => s.session_id.clone(),
        "status" => s.status.as_str().to_string(),
        "handled_by" => s.handled_by.as_str().to_string(),
        "visitor_email" => opt(&s.visitor_email),
        "visitor_phone" => opt(&s.visitor_phone),
        "visitor_ip" => opt(&s.visitor_ip),
        "visitor_page_url" => opt(&s.visitor_page_url),
        "visitor_referrer" => opt(&s.visitor_referrer),
        "has_visitor_messages" => s.has_visitor_messages.to_string(),
        "human_requested_at" => ts(&s.human_requested_at),
        "human_took_over_at" => ts(&s.human_took_over_at),
        "last_activity_at" => ts(&s.last_activity_at),
        "created_at" => ts(&s.created_at),
        _ => return None,
    })
}

const FIELDS: &[&str] = &[
    "visitor_name",
    "session_id",
    "status",
    "handled_by",
    "visitor_email",
    "visitor_phone",
    "visitor_ip",
    "visitor_page_url",
    "visitor_referrer",
    "has_visitor_messages",
    "human_requested_at",
    "human_took_over_at",
    "last_activity_at",
    "created_at",
];

#[derive(Debug, Clone)]
enum Tok {
    /// Text without braces (multibyte characters included).
    Plain(String),
    /// `{{ name }}` with the given padding.
    Field(String, String, String),
}

fn padding() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(String::new()),
        1 => "[ \t]{1,2}",
        1 => Just("\u{3000}".to_string()),
    ]
}

fn arb_tokens() -> impl Strategy<Value = Vec<Tok>> {
    let name = prop_oneof![
        3 => prop::sample::select(FIELDS).prop_map(str::to_string),
        2 => "[a-z_]{0,10}",
        1 => "[a-zé😀 .-]{1,6}",
    ];
    prop::collection::vec(
        prop_oneof![
            "[^{}]{0,6}".prop_map(Tok::Plain),
            (padding(), name, padding()).prop_map(|(a, n, b)| Tok::Field(a, n, b)),
        ],
        0..10,
    )
}

fn template_session() -> impl Strategy<Value = Session> {
    (
        arb_session(),
        arb_string(),
        prop_oneof![
            Just(None),
            Just(Some(String::new())),
            "[ \t\n\u{3000}]{1,3}".prop_map(Some),
            "[A-Za-zé]{1,8}".prop_map(Some),
        ],
    )
        .prop_map(|(mut s, id, name)| {
            s.session_id = format!("sess_{id}");
            s.visitor_name = name;
            s
        })
}

/// Text rich in braces and multibyte characters next to them.
fn brace_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[{}a é😀\u{3000}_]{0,24}",
        "(\\{\\{|\\}\\}|\\{|\\}|[a-z_]{1,12}|é|😀| ){0,12}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn templates_fill_known_fields_and_report_unknown_ones(
        toks in arb_tokens(), s in template_session(),
    ) {
        let mut text = String::new();
        let mut want = String::new();
        let mut unknown = Vec::new();
        for t in &toks {
            match t {
                Tok::Plain(p) => {
                    text.push_str(p);
                    want.push_str(p);
                }
                Tok::Field(a, n, b) => {
                    text.push_str(&format!("{{{{{a}{n}{b}}}}}"));
                    let name = format!("{a}{n}{b}").trim().to_string();
                    match model_field(&s, &name) {
                        Some(v) => want.push_str(&v),
                        None => unknown.push(name),
                    }
                }
            }
        }
        let (got, got_unknown) = fill_template(&text, &s);
        prop_assert_eq!(&got, &want, "template {:?}", text);
        prop_assert_eq!(&got_unknown, &unknown);
    }

    #[test]
    fn templates_never_panic_and_leave_no_placeholder(text in brace_text(), s in template_session()) {
        // Values without braces, so that braces in the output come from the
        // template.
        let mut s = s;
        for v in [&mut s.visitor_email, &mut s.visitor_phone, &mut s.visitor_ip,
                  &mut s.visitor_page_url, &mut s.visitor_referrer] {
            *v = v.as_ref().map(|x| x.replace(['{', '}'], ""));
        }
        s.session_id = s.session_id.replace(['{', '}'], "");
        let (out, unknown) = fill_template(&text, &s);
        if !text.contains("{{") {
            prop_assert_eq!(&out, &text);
            prop_assert!(unknown.is_empty());
        }
        // Every complete `{{..}}` was replaced: after the first `{{` left
        // in the output, no `}}` follows.
        if let Some(i) = out.find("{{") {
            prop_assert!(!out[i + 2..].contains("}}"), "placeholder left in {:?} from {:?}", out, text);
        }
        for name in &unknown {
            prop_assert!(model_field(&s, name).is_none(), "{:?} is a field", name);
        }
    }
}

#[test]
fn blank_visitor_name_is_there() {
    for name in [None, Some(""), Some("   "), Some("\t\n"), Some("\u{3000}")] {
        let s = Session {
            session_id: "s".into(),
            visitor_name: name.map(str::to_string),
            ..Session::default()
        };
        let (out, unknown) = fill_template("Hi {{visitor_name}}! {{ visitor_name }}", &s);
        assert_eq!(out, "Hi there! there", "{name:?}");
        assert!(unknown.is_empty());
    }
}

// ---------------------------------------------------------------------------
// 4. Durations
// ---------------------------------------------------------------------------

/// Unit spellings humantime documents, with their length.
const UNITS: &[(&str, Duration)] = &[
    ("ns", Duration::from_nanos(1)),
    ("nsec", Duration::from_nanos(1)),
    ("us", Duration::from_micros(1)),
    ("µs", Duration::from_micros(1)),
    ("ms", Duration::from_millis(1)),
    ("msec", Duration::from_millis(1)),
    ("millis", Duration::from_millis(1)),
    ("s", Duration::from_secs(1)),
    ("sec", Duration::from_secs(1)),
    ("secs", Duration::from_secs(1)),
    ("second", Duration::from_secs(1)),
    ("seconds", Duration::from_secs(1)),
    ("m", Duration::from_secs(60)),
    ("min", Duration::from_secs(60)),
    ("mins", Duration::from_secs(60)),
    ("minutes", Duration::from_secs(60)),
    ("h", Duration::from_secs(3600)),
    ("hr", Duration::from_secs(3600)),
    ("hours", Duration::from_secs(3600)),
    ("d", Duration::from_secs(86400)),
    ("days", Duration::from_secs(86400)),
    ("w", Duration::from_secs(7 * 86400)),
    ("weeks", Duration::from_secs(7 * 86400)),
];

fn duration_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9 .a-zµMSH_-]{0,16}",
        "[0-9]{1,22}(ns|us|ms|s|m|h|d|w|M|y)( [0-9]{1,22}(\\.[0-9]{1,12})?(ns|ms|s|m|h|d|w|y))*",
        Just("18446744073709551615s 1000ms".to_string()),
    ]
}

/// Found by `parse_duration_never_panics`: humantime panics with
/// "overflow in Duration::new" when a duration reaches `u64::MAX` seconds
/// with exactly one second of carried nanoseconds. Config files, flags,
/// rule files (`on("idle", "…", …)`) and `[notify.*] dedupe` read it.
#[test]
fn a_duration_of_u64_max_seconds_is_an_error_not_a_panic() {
    for s in [
        "18446744073709551615s 1000ms",
        "18446744073709551615s 1000000us",
        "18446744073709551614s 1s 1000ms",
        "18446744073709551615 s 1000 ms",
    ] {
        let e = parse_duration(s).unwrap_err();
        assert!(
            e.contains("too large") && e.contains("expected e.g."),
            "{s}: {e}"
        );
    }
    // Further below (the guard is a bound, one unit per number too
    // high), and huge counts of small units, still parse.
    assert_eq!(
        parse_duration("18446744073709551000s 999ms"),
        Ok(Duration::new(18_446_744_073_709_551_000, 999_000_000))
    );
    assert_eq!(
        parse_duration("600000000000000ns"),
        Ok(Duration::from_secs(600_000))
    );
    let text = "[notify.team]\nkind = \"slack\"\ndedupe = \"18446744073709551615s 1000ms\"\n";
    let e = Config::from_text(text, Path::new("skyrules.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("notify.team.dedupe") && e.contains("too large"),
        "{e}"
    );
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn parse_duration_never_panics(s in duration_like()) {
        if let Err(e) = parse_duration(&s) {
            prop_assert!(e.contains("expected e.g."), "{}", e);
        }
    }

    #[test]
    fn generated_durations_round_trip(
        parts in prop::collection::vec((0u64..100_000, prop::sample::select(UNITS)), 1..5),
        sep in prop::sample::select(vec![" ", "", "  ", "\t"]),
        pad in prop::sample::select(vec!["", " ", "\n "]),
    ) {
        let text = parts.iter().map(|(n, (u, _))| format!("{n}{u}")).collect::<Vec<_>>().join(sep);
        let want: Duration = parts.iter().map(|(n, (_, d))| *d * (*n as u32)).sum();
        let got = parse_duration(&format!("{pad}{text}{pad}"));
        prop_assert_eq!(got, Ok(want), "{:?}", text);
    }

    #[test]
    fn seconds_and_minutes_round_trip(m in 0u64..10_000, s in 0u64..60, n in 0u64..10_000_000) {
        prop_assert_eq!(parse_duration(&format!("{n}s")), Ok(Duration::from_secs(n)));
        prop_assert_eq!(parse_duration(&format!("{m}m {s}s")), Ok(Duration::from_secs(m * 60 + s)));
        let d = Duration::from_secs(m * 60 + s) + Duration::from_millis(n % 1000);
        let formatted = humantime::format_duration(d).to_string();
        prop_assert_eq!(parse_duration(&formatted), Ok(d), "{}", formatted);
    }
}

// ---------------------------------------------------------------------------
// 5. Business-hours calendars
// ---------------------------------------------------------------------------

const TZS: &[&str] = &[
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "UTC",
    "America/Santiago",
    "Asia/Kathmandu",
    "Pacific/Apia",
    "America/Sao_Paulo",
];

const DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

fn day_name(d: usize, full: bool, upper: bool) -> String {
    let n = if full { DAYS[d] } else { &DAYS[d][..3] };
    if upper {
        n.to_ascii_uppercase()
    } else {
        let mut c = n.chars();
        c.next().map_or(String::new(), |f| {
            f.to_ascii_uppercase().to_string() + c.as_str()
        })
    }
}

fn hhmm(m: u16) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// A valid `week` entry of at least 15 minutes; often around 02:00-03:00
/// local, where DST changes happen.
fn week_entry() -> impl Strategy<Value = String> {
    let start = prop_oneof![2 => 0u16..1425, 1 => 90u16..200, 1 => Just(0u16)];
    (
        0usize..7,
        opt(0usize..7),
        start,
        15u16..720,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(a, b, start, len, full, upper, to_midnight)| {
            let end = if to_midnight {
                1440
            } else {
                (start + len).min(1440)
            };
            let days = match b {
                Some(b) => format!("{}-{}", day_name(a, full, upper), day_name(b, full, false)),
                None => day_name(a, full, upper),
            };
            format!("{days} {}-{}", hhmm(start), hhmm(end.max(start + 15)))
        })
}

fn holiday() -> impl Strategy<Value = String> {
    (0i64..400).prop_map(|d| {
        (chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + TimeDelta::days(d))
            .format("%Y-%m-%d")
            .to_string()
    })
}

fn arb_calendar() -> impl Strategy<Value = CalendarConfig> {
    (
        prop::sample::select(TZS),
        prop::collection::vec(week_entry(), 1..4),
        prop::collection::vec(holiday(), 0..4),
    )
        .prop_map(|(tz, week, holidays)| CalendarConfig {
            tz: tz.to_string(),
            week,
            holidays,
        })
}

/// Instants in 2026, mostly within days of a DST change of one of the
/// zones, sometimes on a minute boundary.
fn arb_instant() -> impl Strategy<Value = Timestamp> {
    let changes = vec![
        "2026-03-08T07:00:00Z", // New York, spring
        "2026-03-29T01:00:00Z", // Berlin, spring
        "2026-04-04T15:00:00Z", // Lord Howe, back by 30 minutes
        "2026-04-05T03:00:00Z", // Santiago, midnight
        "2026-09-06T04:00:00Z", // Santiago, midnight
        "2026-10-03T15:30:00Z", // Lord Howe, forward by 30 minutes
        "2026-10-25T01:00:00Z", // Berlin, autumn
        "2026-11-01T06:00:00Z", // New York, autumn
        "2026-06-15T12:00:00Z",
    ];
    (
        prop::sample::select(changes),
        -4 * 86400i64..4 * 86400,
        prop_oneof![Just(0i64), Just(999_999_999), 0i64..1_000_000_000],
        any::<bool>(),
    )
        .prop_map(|(base, secs, nanos, on_minute)| {
            let secs = if on_minute {
                secs - secs.rem_euclid(60)
            } else {
                secs
            };
            let nanos = if on_minute { 0 } else { nanos };
            utc(base) + TimeDelta::seconds(secs) + TimeDelta::nanoseconds(nanos)
        })
}

fn to_std(d: TimeDelta) -> Duration {
    d.to_std().expect("non-negative")
}

#[test]
fn calendar_queries_are_consistent() {
    let (total, open, closed, deadlines) = (Cell::new(0), Cell::new(0), Cell::new(0), Cell::new(0));
    let strategy = (
        arb_calendar(),
        prop::collection::vec(arb_instant(), 3),
        0u64..12 * 3600 * 1000,
    );
    check(128, strategy, |(cfg, mut ts, d_ms)| {
        bump(&total);
        let cal = Calendar::parse("prop", &cfg).map_err(|e| TestCaseError::fail(e.to_string()))?;
        ts.sort();
        let (a, b, c) = (ts[0], ts[1], ts[2]);
        let t = b;

        // is_open and next_open agree.
        match cal.next_open(t) {
            Some(n) => {
                prop_assert!(n >= t);
                prop_assert!(cal.is_open(n), "next_open({t}) = {n} is closed");
                if cal.is_open(t) {
                    bump(&open);
                    prop_assert_eq!(n, t);
                    prop_assert!(
                        cal.business_elapsed(t, t + TimeDelta::seconds(1)) > Duration::ZERO
                    );
                } else {
                    bump(&closed);
                    prop_assert!(n > t);
                    prop_assert_eq!(cal.business_elapsed(t, n), Duration::ZERO);
                    let mid = t + (n - t) / 2;
                    prop_assert!(!cal.is_open(mid), "open at {mid}, before next_open {n}");
                    prop_assert!(!cal.is_open(n - TimeDelta::nanoseconds(1)));
                }
            }
            None => {
                prop_assert!(!cal.is_open(t));
                prop_assert_eq!(
                    cal.business_elapsed(t, t + TimeDelta::days(8)),
                    Duration::ZERO
                );
            }
        }

        // business_elapsed: within wall time, monotonic, additive.
        let ab = cal.business_elapsed(a, b);
        let bc = cal.business_elapsed(b, c);
        let ac = cal.business_elapsed(a, c);
        prop_assert!(ab <= to_std(b - a) && bc <= to_std(c - b) && ac <= to_std(c - a));
        prop_assert!(ab <= ac, "not monotonic in the end: {ab:?} > {ac:?}");
        prop_assert_eq!(ab + bc, ac, "not additive over {}", b);
        prop_assert_eq!(cal.business_elapsed(c, a), Duration::ZERO);

        // deadline: the earliest instant with that much open time.
        let d = Duration::from_millis(d_ms);
        let dl = cal.deadline(a, d);
        prop_assert!(
            dl.is_some(),
            "a calendar open every week never reaches {d:?} from {a}"
        );
        let dl = dl.unwrap();
        bump(&deadlines);
        prop_assert!(dl >= a);
        let got = cal.business_elapsed(a, dl);
        let off = got.abs_diff(d);
        prop_assert!(
            off <= Duration::from_secs(1),
            "business_elapsed({a}, {dl}) = {got:?}, not {d:?}"
        );
        if !d.is_zero() {
            prop_assert!(
                cal.is_open(dl - TimeDelta::nanoseconds(1)),
                "fires at {dl} after closed time"
            );
            prop_assert!(cal.business_elapsed(a, dl - TimeDelta::milliseconds(1)) < d);
        }
        Ok(())
    });
    assert_share("were open at the probe", &open, &total, 0.1);
    assert_share("were closed at the probe", &closed, &total, 0.1);
}

fn week_like() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<String>(),
        1 => "[A-Za-z]{0,9}(-[A-Za-z]{0,9})?( [0-9]{0,3}:[0-9]{0,3}-[0-9]{0,3}:[0-9]{0,3})?",
        2 => "(Mon|tue|WEDNESDAY|Fri|Sun|Xyz)(-(Sat|sun|Mon))? [0-2][0-9]:[0-6][0-9]-[0-2][0-9]:[0-6][0-9]",
        6 => week_entry(),
    ]
}

fn tz_like() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => any::<String>(),
        6 => prop::sample::select(TZS).prop_map(str::to_string),
        1 => "[A-Za-z_/+-]{0,20}",
        1 => Just(" Europe/Berlin ".to_string()),
    ]
}

/// Arbitrary `week`, `holidays` and `tz` never panic, and an error names
/// the first bad entry's key.
#[test]
fn calendar_parse_never_panics_and_names_the_bad_entry() {
    let (total, ok, bad_week) = (Cell::new(0), Cell::new(0), Cell::new(0));
    let strategy = (
        tz_like(),
        prop::collection::vec(week_like(), 0..4),
        prop::collection::vec(
            prop_oneof![6 => holiday(), 1 => any::<String>(), 1 => "[0-9-]{8,11}"],
            0..3,
        ),
    );
    check(256, strategy, |(tz, week, holidays)| {
        bump(&total);
        let cfg = CalendarConfig {
            tz: tz.clone(),
            week: week.clone(),
            holidays: holidays.clone(),
        };
        let tz_ok = Calendar::parse(
            "x",
            &CalendarConfig {
                tz: tz.clone(),
                week: vec![],
                holidays: vec![],
            },
        )
        .is_ok();
        let first_bad_week = week.iter().position(|w| {
            Calendar::parse(
                "x",
                &CalendarConfig {
                    tz: "UTC".into(),
                    week: vec![w.clone()],
                    holidays: vec![],
                },
            )
            .is_err()
        });
        let first_bad_holiday = holidays.iter().position(|h| {
            Calendar::parse(
                "x",
                &CalendarConfig {
                    tz: "UTC".into(),
                    week: vec![],
                    holidays: vec![h.clone()],
                },
            )
            .is_err()
        });
        let want_key = if !tz_ok {
            Some("hours.x.tz".to_string())
        } else if let Some(i) = first_bad_week {
            Some(format!("hours.x.week[{i}]"))
        } else {
            first_bad_holiday.map(|i| format!("hours.x.holidays[{i}]"))
        };
        match Calendar::parse("x", &cfg) {
            Ok(cal) => {
                bump(&ok);
                prop_assert_eq!(want_key, None);
                let _ = cal.next_open(utc("2026-03-29T00:30:00Z"));
            }
            Err(e) => {
                if first_bad_week.is_some() && tz_ok {
                    bump(&bad_week);
                }
                prop_assert_eq!(Some(e.key().to_string()), want_key.clone());
                let text = e.to_string();
                prop_assert!(
                    text.starts_with(&format!("`{}`: ", want_key.unwrap())),
                    "{}",
                    text
                );
                prop_assert!(
                    !text.contains('\n')
                        || tz.contains('\n')
                        || week.iter().any(|w| w.contains('\n'))
                        || holidays.iter().any(|h| h.contains('\n')),
                    "{}",
                    text
                );
            }
        }
        Ok(())
    });
    assert_share("parsed", &ok, &total, 0.1);
    assert_share("had a bad week entry", &bad_week, &total, 0.1);
}

#[test]
fn calendar_parse_accepts_padded_and_full_names() {
    let cfg = CalendarConfig {
        tz: " Australia/Lord_Howe ".into(),
        week: vec!["MONDAY-sunday 00:00-24:00".into(), "Sat 02:00-02:30".into()],
        holidays: vec![" 2026-12-25 ".into()],
    };
    let cal = Calendar::parse("x", &cfg).unwrap();
    // Lord Howe goes from +10:30 to +11:00 at 02:00 local on 2026-10-04:
    // that day has 23.5 hours.
    let from = utc("2026-10-03T13:30:00Z");
    assert_eq!(
        cal.business_elapsed(from, from + TimeDelta::hours(24)),
        Duration::from_secs(24 * 3600)
    );
    let day = cal.business_elapsed(utc("2026-10-03T13:30:00Z"), utc("2026-10-04T13:00:00Z"));
    assert_eq!(day, Duration::from_secs(23 * 3600 + 1800));
}

// ---------------------------------------------------------------------------
// 6. The config loader
// ---------------------------------------------------------------------------

/// A TOML value of any type.
#[derive(Debug, Clone)]
enum TVal {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Date,
    Arr(Vec<TVal>, bool),
    Inline(Vec<(String, TVal)>),
}

impl TVal {
    fn render(&self) -> String {
        match self {
            TVal::Str(s) => toml::Value::String(s.clone()).to_string(),
            TVal::Int(i) => i.to_string(),
            TVal::Float(f) if f.is_nan() => "nan".into(),
            TVal::Float(f) if f.is_infinite() => if *f > 0.0 { "inf" } else { "-inf" }.into(),
            TVal::Float(f) => format!("{f:?}"),
            TVal::Bool(b) => b.to_string(),
            TVal::Date => "1979-05-27T07:32:00Z".into(),
            TVal::Arr(items, false) => {
                format!(
                    "[{}]",
                    items
                        .iter()
                        .map(TVal::render)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
            TVal::Arr(items, true) => {
                let mut s = "[\n".to_string();
                for i in items {
                    s.push_str(&format!("    {},\n", i.render()));
                }
                s.push(']');
                s
            }
            TVal::Inline(kv) => format!(
                "{{ {} }}",
                kv.iter()
                    .map(|(k, v)| format!("{k} = {}", v.render()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

fn strs(v: &[&'static str]) -> impl Strategy<Value = TVal> {
    prop::sample::select(v.to_vec()).prop_map(|s| TVal::Str(s.to_string()))
}

fn tval_leaf() -> impl Strategy<Value = TVal> {
    prop_oneof![
        "(?s).{0,10}".prop_map(TVal::Str),
        prop_oneof![any::<i64>(), -3i64..10].prop_map(TVal::Int),
        prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::INFINITY), Just(2.5)]
            .prop_map(TVal::Float),
        any::<bool>().prop_map(TVal::Bool),
        Just(TVal::Date),
    ]
}

fn any_tval() -> impl Strategy<Value = TVal> {
    tval_leaf().prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            (prop::collection::vec(inner.clone(), 0..4), any::<bool>())
                .prop_map(|(v, m)| TVal::Arr(v, m)),
            prop::collection::vec(("[a-z_]{1,6}", inner), 0..3).prop_map(|kv| {
                let mut seen = HashSet::new();
                TVal::Inline(
                    kv.into_iter()
                        .filter(|(k, _)| seen.insert(k.clone()))
                        .collect(),
                )
            }),
        ]
    })
}

fn durations() -> impl Strategy<Value = TVal> {
    strs(&[
        "5s",
        "1m 30s",
        "0s",
        "50ms",
        "10m",
        "soon",
        "",
        "1.5h",
        "18446744073709551615s 1000ms",
    ])
}

fn string_arr(item: BoxedStrategy<TVal>) -> impl Strategy<Value = TVal> {
    (prop::collection::vec(item, 0..4), any::<bool>()).prop_map(|(v, m)| TVal::Arr(v, m))
}

/// A value for `key`: usually the right type (good or bad), sometimes any.
fn value_for(key: &'static str) -> BoxedStrategy<TVal> {
    let typed: BoxedStrategy<TVal> = match key {
        "base_url" => strs(&["https://x.example/api/v1", "http://127.0.0.1:1", "ftp://x", " ", ""]).boxed(),
        "timeout" | "poll_interval" | "retention" | "window" | "dedupe" => durations().boxed(),
        "max_attempts" | "max_replies" | "max_concurrency" => {
            prop_oneof![Just(0i64), Just(1), Just(5), Just(-1), Just(4_294_967_296)].prop_map(TVal::Int).boxed()
        }
        "max_requests_per_second" => prop_oneof![
            Just(TVal::Int(0)), Just(TVal::Int(20)), Just(TVal::Float(2.5)), Just(TVal::Float(-1.0)),
            Just(TVal::Float(f64::NAN)), Just(TVal::Float(f64::INFINITY)),
        ].boxed(),
        "dry_run" => any::<bool>().prop_map(TVal::Bool).boxed(),
        "max_body" | "max_rule_memory" => prop_oneof![
            strs(&["16MiB", "64KiB", "1KiB", "63 B", "1.5 GB", "abc", "", "nan KiB", "inf B", "-1 KiB",
                   "1e30 EiB", "99999999999999999999999 EiB", "18446744073709551615", "0.0000001 B"]),
            prop_oneof![Just(0i64), Just(64), Just(1024), Just(-1), Just(i64::MAX)].prop_map(TVal::Int),
        ]
        .boxed(),
        "listen" => strs(&["127.0.0.1:9187", "0.0.0.0:80", "[::1]:1", "localhost:80", "abc"]).boxed(),
        "tz" => strs(&["Europe/Berlin", "UTC", "Australia/Lord_Howe", "Europe/Berln", ""]).boxed(),
        "week" => string_arr(
            prop_oneof![4 => week_entry().prop_map(TVal::Str), 1 => strs(&["Mon 9-10", "Fri 18:00-09:00", ""]),
                        1 => tval_leaf()].boxed(),
        ).boxed(),
        "holidays" => string_arr(
            prop_oneof![3 => holiday().prop_map(TVal::Str), 1 => strs(&["2026-02-30", "christmas"]), 1 => tval_leaf()].boxed(),
        ).boxed(),
        "kind" => strs(&["slack", "webhook", "pagerduty", "email", "Slack"]).boxed(),
        "severity" => strs(&["critical", "error", "bogus"]).boxed(),
        _ => "[a-zA-Z0-9/._ -]{0,12}".prop_map(TVal::Str).boxed(),
    };
    prop_oneof![3 => typed, 1 => any_tval()].boxed()
}

const API_KEYS: &[&str] = &[
    "base_url",
    "api_key_file",
    "timeout",
    "max_attempts",
    "max_requests_per_second",
    "max_body",
];
const ENGINE_KEYS: &[&str] = &[
    "rules_dir",
    "poll_interval",
    "state_path",
    "dry_run",
    "max_concurrency",
    "retention",
    "max_rule_memory",
];
const GUARD_KEYS: &[&str] = &["max_replies", "window"];
const HTTP_KEYS: &[&str] = &["listen", "token_file"];
const HOURS_KEYS: &[&str] = &["tz", "week", "holidays"];
const NOTIFY_KEYS: &[&str] = &[
    "kind",
    "url_file",
    "url_env",
    "routing_key_file",
    "routing_key_env",
    "token_file",
    "token_env",
    "dedupe",
    "severity",
];

#[derive(Debug, Clone)]
struct Table {
    name: String,
    keys: Vec<(String, TVal)>,
}

fn arb_table() -> impl Strategy<Value = Table> {
    let named = |prefix: &'static str| {
        prop_oneof![4 => "[a-z][a-z0-9_-]{0,6}", 1 => Just("support".to_string())]
            .prop_map(move |n| format!("{prefix}.{n}"))
    };
    let table = prop_oneof![
        Just(("api".to_string(), API_KEYS)),
        Just(("engine".to_string(), ENGINE_KEYS)),
        Just(("guard".to_string(), GUARD_KEYS)),
        Just(("http".to_string(), HTTP_KEYS)),
        named("hours").prop_map(|n| (n, HOURS_KEYS)),
        named("notify").prop_map(|n| (n, NOTIFY_KEYS)),
        Just(("engin".to_string(), GUARD_KEYS)),
    ];
    table.prop_flat_map(|(name, keys)| {
        let mut options: Vec<BoxedStrategy<(String, TVal)>> = keys
            .iter()
            .map(|&k| value_for(k).prop_map(move |v| (k.to_string(), v)).boxed())
            .collect();
        options.push(
            (
                prop::sample::select(vec!["bogus", "poll_intervall", "timezone", "kind_"]),
                any_tval(),
            )
                .prop_map(|(k, v)| (k.to_string(), v))
                .boxed(),
        );
        // Each key at most once: a subset of the table's keys, in order.
        let n = options.len();
        (
            Just(name),
            prop::collection::vec(any::<bool>(), n),
            options,
            prop::bool::weighted(0.15),
        )
            .prop_map(|(name, pick, values, with_unknown)| {
                let last = values.len() - 1;
                let keys = values
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| if *i == last { with_unknown } else { pick[*i] })
                    .map(|(_, kv)| kv)
                    .collect();
                Table { name, keys }
            })
    })
}

#[derive(Debug, Clone)]
struct Doc {
    top: Vec<(String, TVal)>,
    tables: Vec<Table>,
}

impl Doc {
    fn render(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.top {
            s.push_str(&format!("{k} = {}\n", v.render()));
        }
        for t in &self.tables {
            s.push_str(&format!("\n[{}]\n", t.name));
            for (k, v) in &t.keys {
                s.push_str(&format!("{k} = {}\n", v.render()));
            }
        }
        s
    }

    /// Every dotted key an error could be about.
    fn keys(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (k, v) in &self.top {
            inline_keys(k, v, &mut out);
            // serde reads a table from an array too, field by field.
            let fields: &[&str] = match k.as_str() {
                "api" => API_KEYS,
                "engine" => ENGINE_KEYS,
                "guard" => GUARD_KEYS,
                "http" => HTTP_KEYS,
                _ => &[],
            };
            out.extend(fields.iter().map(|f| format!("{k}.{f}")));
        }
        for t in &self.tables {
            out.insert(t.name.clone());
            let required: &[&str] = if t.name.starts_with("hours.") {
                &["tz", "week"]
            } else if t.name.starts_with("notify.") {
                &["kind"]
            } else {
                &[]
            };
            for k in required {
                out.insert(format!("{}.{k}", t.name));
            }
            if t.name == "http" {
                // Needed by a `listen` address that is not loopback.
                out.insert("http.token_file".into());
            }
            for (k, v) in &t.keys {
                inline_keys(&format!("{}.{k}", t.name), v, &mut out);
                if let TVal::Arr(items, _) = v {
                    for i in 0..items.len() {
                        out.insert(format!("{}.{k}[{i}]", t.name));
                    }
                }
            }
        }
        out
    }
}

/// `key` and the dotted keys of the inline tables in its value.
fn inline_keys(key: &str, v: &TVal, out: &mut BTreeSet<String>) {
    out.insert(key.to_string());
    if let TVal::Inline(kv) = v {
        for (k, v) in kv {
            inline_keys(&format!("{key}.{k}"), v, out);
        }
    }
}

fn arb_doc() -> impl Strategy<Value = Doc> {
    (
        prop::collection::vec(
            (
                prop::sample::select(vec!["api", "debug", "poll_interval"]),
                any_tval(),
            )
                .prop_map(|(k, v)| (k.to_string(), v)),
            0..2,
        )
        .prop_map(|v| {
            let mut seen = HashSet::new();
            v.into_iter()
                .filter(|(k, _)| seen.insert(k.clone()))
                .collect::<Vec<_>>()
        }),
        prop::collection::vec(arb_table(), 0..6),
    )
        .prop_map(|(top, tables)| {
            let mut seen = HashSet::new();
            let tables = tables
                .into_iter()
                .filter(|t| seen.insert(t.name.clone()))
                .collect();
            Doc { top, tables }
        })
}

/// Loads `text` as `skyrules.toml` and validates it: the error, if any.
fn load(text: &str) -> Option<String> {
    match Config::from_text(text, Path::new("skyrules.toml")) {
        Err(e) => Some(e.to_string()),
        Ok(c) => c.validate().err().map(|e| e.to_string()),
    }
}

/// Whether `err` names one of `keys` in backquotes.
fn names_a_key(err: &str, keys: &BTreeSet<String>) -> bool {
    keys.iter().any(|k| err.contains(&format!("`{k}`")))
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn config_loader_never_panics_on_text(text in prop_oneof![
        any::<String>(),
        "(\\[[a-z.]{0,10}\\]\n|[a-z_]{1,8} = [^\n]{0,10}\n|\n){0,6}",
    ]) {
        if let Some(e) = load(&text) {
            prop_assert!(e.contains("skyrules.toml"), "{}", e);
        }
    }
}

/// Documents of the known tables and keys with values of any type: loading
/// never panics, and every error is one line that names, in backquotes,
/// the dotted key to fix and the file.
#[test]
fn config_errors_name_the_key() {
    let (total, loaded, failed, keyed) = (Cell::new(0), Cell::new(0), Cell::new(0), Cell::new(0));
    check(256, arb_doc(), |doc| {
        bump(&total);
        let text = doc.render();
        let is_toml = text.parse::<toml::Table>().is_ok();
        match load(&text) {
            None => bump(&loaded),
            Some(e) => {
                bump(&failed);
                prop_assert!(
                    !e.contains('\n'),
                    "a multi-line error: {e}\n--- in:\n{text}"
                );
                prop_assert!(
                    e.contains("skyrules.toml"),
                    "the file is not named: {e}\n--- in:\n{text}"
                );
                if is_toml {
                    bump(&keyed);
                    prop_assert!(
                        names_a_key(&e, &doc.keys()),
                        "no key named: {e}\n--- in:\n{text}"
                    );
                } else {
                    // Not TOML at all: there is no key, only where it broke.
                    prop_assert!(
                        has_location(&e),
                        "no file:line:column: {e}\n--- in:\n{text}"
                    );
                }
            }
        }
        Ok(())
    });
    assert_share("loaded", &loaded, &total, 0.05);
    assert_share("failed", &failed, &total, 0.3);
    assert_share("failed on valid TOML", &keyed, &total, 0.25);
}

/// `skyrules.toml:LINE:COLUMN:` at the start.
fn has_location(e: &str) -> bool {
    let Some(rest) = e.strip_prefix("skyrules.toml:") else {
        return false;
    };
    let mut parts = rest.splitn(3, ':');
    let num =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    num(parts.next()) && num(parts.next())
}

/// Found by `config_errors_name_the_key`: errors that named the wrong
/// table, a piece of a value as the key, or no key at all.
#[test]
fn config_errors_name_the_right_key() {
    let cases = [
        // A table lacking a field was reported under the table before it
        // ("in [api]: missing field `kind`").
        (
            "[api]\ntimeout = \"5s\"\n\n[notify.team]\nurl_env = \"X\"\n",
            "skyrules.toml:4:1: `notify.team`: missing field `kind`",
        ),
        (
            "[guard]\nwindow = \"1m\"\n[hours.support]\nweek = []\n",
            "skyrules.toml:3:1: `hours.support`: missing field `tz`",
        ),
        // An element of a multi-line array named no key ("in [hours.x]: …")
        // or a piece of itself ("`hours.x.{ yy_`: …").
        (
            "[hours.x]\ntz = \"UTC\"\nweek = [\n  \"Mon 09:00-10:00\",\n  5,\n]\n",
            "skyrules.toml:5:3: `hours.x.week`: invalid type: integer `5`, expected a string",
        ),
        (
            "[hours.x]\ntz = \"UTC\"\nweek = [\n    { yy_ = false },\n]\n",
            "skyrules.toml:4:5: `hours.x.week`: invalid type: map, expected a string",
        ),
        // Top-level values and inline tables named no key.
        (
            "api = \"\"\n",
            "skyrules.toml:1:7: `api`: invalid type: string \"\", expected struct ApiConfig",
        ),
        (
            "api = { timeout = 5 }\n",
            "skyrules.toml:1:19: `api.timeout`: invalid type: integer `5`, expected a string",
        ),
        // As before: unknown keys and bad values.
        (
            "[engine]\npoll_intervall = \"5s\"\n",
            "skyrules.toml:2:1: `engine.poll_intervall`: unknown field `poll_intervall`, expected one of `rules_dir`, ",
        ),
        (
            "[guard]\nwindow = \"ten minutes\"\n",
            "skyrules.toml:2:10: `guard.window`: invalid duration \"ten minutes\" (expected number at 0); expected e.g. \"5s\" or \"1m 30s\"",
        ),
    ];
    for (text, want) in cases {
        let got = Config::from_text(text, Path::new("skyrules.toml"))
            .unwrap_err()
            .to_string();
        assert!(got.starts_with(want), "{text}\n got: {got}\nwant: {want}");
    }
}
