//! The typed SkyLight client (`skyrules::api::Client`) over real HTTP: every
//! endpoint against the in-process simulator, the response shapes only a
//! mock server produces, error classes and retries, the no-blind-resend rule
//! for messages, local validation, and key redaction.

use crate::util;

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Timelike};
use serde_json::{json, Value};
use skyrules::api::{
    format_ts, ApiError, ApiKey, Client, ClientConfig, HandledBy, ListQuery, Period, RetryPolicy,
    SenderType, SessionStatus, Transient,
};
use skyrules::sim::{Fault, SimHandle};
use util::{count, create, create_many, start_sim};
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const KEY: &str = "sk_test_client_key";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Fast retries so error tests take milliseconds, not seconds.
fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: ms(10),
        max_delay: ms(50),
        max_retry_after: Duration::from_secs(5),
    }
}

fn client_with(base: &str, key: &str, timeout: Duration, max_attempts: u32) -> Client {
    let mut config = ClientConfig::new(base, ApiKey::new(key));
    config.timeout = timeout;
    config.retry = fast_retry(max_attempts);
    Client::new(config).expect("build the client")
}

/// A client with a generous timeout (the machine may be loaded) and fast retries.
fn client(base: &str) -> Client {
    client_with(base, KEY, Duration::from_secs(5), 3)
}

fn sim_client(sim: &SimHandle) -> Client {
    client(&sim.base_url())
}

/// The text of every message of session `id` as the simulator holds it.
fn texts(sim: &SimHandle, id: &str) -> Vec<String> {
    sim.session(id)
        .expect("session exists")
        .messages
        .iter()
        .map(|m| m.text().to_string())
        .collect()
}

fn occurrences(sim: &SimHandle, id: &str, text: &str) -> usize {
    texts(sim, id).iter().filter(|t| *t == text).count()
}

// ---------------------------------------------------------------------------
// 1. Every endpoint against the simulator
// ---------------------------------------------------------------------------

#[tokio::test]
async fn analytics_counts_each_period() {
    // A frozen clock keeps "today" from crossing midnight mid-test.
    let sim = skyrules::sim::start(
        skyrules::sim::SimConfig {
            clock_speed: 0.0,
            ..util::quiet(KEY)
        },
        util::loopback(),
    )
    .await
    .unwrap();
    let now = sim.now();
    let ago = |days: i64| format_ts(&(now - TimeDelta::days(days)));
    create(
        &sim,
        json!({"visitor_email": "a@example.com", "messages": [
            {"sender_type": "visitor", "text": "hi"},
            {"sender_type": "bot", "text": "hello"},
            {"sender_type": "visitor", "text": "pricing?"}]}),
    );
    create(&sim, json!({"status": "ended", "visitor_name": "B"}));
    create(&sim, json!({"visitor_name": "C"}));
    create(&sim, json!({"visitor_name": "D", "created_at": ago(3)}));
    create(&sim, json!({"visitor_name": "E", "created_at": ago(20)}));
    create(&sim, json!({"visitor_name": "F", "created_at": ago(200)}));

    let api = sim_client(&sim);
    let today = api.analytics(Period::Today).await.unwrap();
    assert_eq!(today.total_chats, 3, "{today:?}");
    assert_eq!(today.active_chats, 2);
    assert_eq!(today.completed_chats, 1);
    assert_eq!(today.engaged_chats, 1);
    assert_eq!(today.total_messages, 3);
    assert_eq!(today.visitor_messages, 2);
    assert_eq!(today.bot_messages, 1);
    assert_eq!(today.unique_visitors, 3);
    assert!((today.avg_messages_per_chat - 1.0).abs() < 1e-9);
    assert!(today.chart_data.is_object(), "chart_data passed through");

    let totals = [(Period::Week, 4), (Period::Month, 5), (Period::Year, 6)];
    for (period, total) in totals {
        let a = api.analytics(period).await.unwrap();
        assert_eq!(a.total_chats, total, "{period:?}: {a:?}");
    }
    let sent: Vec<String> = sim
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/web-chat/analytics"))
        .map(|r| r.query.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        sent,
        ["period=today", "period=week", "period=month", "period=year"]
    );
}

#[tokio::test]
async fn list_one_page_with_filters() {
    let sim = start_sim(KEY).await;
    let alice = create(
        &sim,
        json!({"visitor_name": "Alice", "visitor_email": "alice@example.com"}),
    );
    let bob = create(&sim, json!({"visitor_name": "Bob", "handled_by": "human"}));
    let carol = create(
        &sim,
        json!({"visitor_name": "Carol", "status": "ended", "visitor_phone": "+15550100"}),
    );
    let dave = create(
        &sim,
        json!({"visitor_name": "Dave", "handled_by": "pending"}),
    );
    let work = create(&sim, json!({"visitor_email": "ALICE.work@corp.example"}));
    let api = sim_client(&sim);

    let ids = |p: &skyrules::api::Page| -> HashSet<String> {
        p.sessions.iter().map(|s| s.session_id.clone()).collect()
    };
    let set = |v: &[&String]| -> HashSet<String> { v.iter().map(|s| s.to_string()).collect() };

    let q = ListQuery {
        status: Some(SessionStatus::Ended),
        ..ListQuery::default()
    };
    let p = api.list_sessions(&q, 1).await.unwrap();
    assert_eq!(ids(&p), set(&[&carol]));
    assert_eq!(p.sessions[0].visitor_phone.as_deref(), Some("+15550100"));
    assert_eq!(p.sessions[0].status, SessionStatus::Ended);

    let q = ListQuery {
        handled_by: Some(HandledBy::Human),
        ..ListQuery::default()
    };
    assert_eq!(ids(&api.list_sessions(&q, 1).await.unwrap()), set(&[&bob]));

    let q = ListQuery {
        handled_by: Some(HandledBy::Pending),
        ..ListQuery::default()
    };
    let p = api.list_sessions(&q, 1).await.unwrap();
    assert_eq!(ids(&p), set(&[&dave]));
    assert_eq!(p.sessions[0].handled_by, HandledBy::Pending);

    let q = ListQuery {
        search: Some("alice".into()),
        ..ListQuery::default()
    };
    assert_eq!(
        ids(&api.list_sessions(&q, 1).await.unwrap()),
        set(&[&alice, &work])
    );

    // Filters combine, and a search with spaces and symbols is encoded.
    let q = ListQuery {
        status: Some(SessionStatus::Active),
        handled_by: Some(HandledBy::Ai),
        search: Some("alice@example.com".into()),
        per_page: None,
    };
    assert_eq!(
        ids(&api.list_sessions(&q, 1).await.unwrap()),
        set(&[&alice])
    );
    let q = ListQuery {
        search: Some("no such & visitor".into()),
        ..ListQuery::default()
    };
    assert!(api.list_sessions(&q, 1).await.unwrap().sessions.is_empty());

    // One page of a paged list, with the server's page metadata.
    let q = ListQuery {
        per_page: Some(2),
        ..ListQuery::default()
    };
    let p1 = api.list_sessions(&q, 1).await.unwrap();
    assert_eq!(p1.sessions.len(), 2);
    assert_eq!((p1.current_page, p1.last_page), (Some(1), Some(3)));
    assert_eq!(p1.has_next, Some(true));
    let p3 = api.list_sessions(&q, 3).await.unwrap();
    assert_eq!(p3.sessions.len(), 1);
    assert_eq!((p3.current_page, p3.has_next), (Some(3), Some(false)));
    let p2 = api.list_sessions(&q, 2).await.unwrap();
    let all: HashSet<String> = [&p1, &p2, &p3].iter().flat_map(|p| ids(p)).collect();
    assert_eq!(all, set(&[&alice, &bob, &carol, &dave, &work]));
}

#[tokio::test]
async fn list_all_sessions_returns_every_session_exactly_once() {
    let sim = start_sim(KEY).await;
    let mut created = create_many(&sim, 230);
    let api = sim_client(&sim);

    let all = api.list_all_sessions(&ListQuery::default()).await.unwrap();
    let mut got: Vec<String> = all.iter().map(|s| s.session_id.clone()).collect();
    got.sort();
    created.sort();
    assert_eq!(got.len(), 230, "no session lost or repeated");
    assert_eq!(got, created);
    // 100 per page: pages 1, 2 and 3, and not one request more.
    let log = sim.requests();
    assert_eq!(count(&log, "GET", "/web-chat/sessions"), 3, "{log:?}");
    assert!(log
        .iter()
        .all(|r| r.query.as_deref().unwrap_or("").contains("per_page=100")));

    // Smaller pages, with a filter carried to every page.
    for id in created.iter().take(30) {
        sim.leave(id).unwrap();
    }
    sim.clear_requests();
    let q = ListQuery {
        status: Some(SessionStatus::Ended),
        per_page: Some(7),
        ..ListQuery::default()
    };
    let ended = api.list_all_sessions(&q).await.unwrap();
    let ended_ids: HashSet<String> = ended.iter().map(|s| s.session_id.clone()).collect();
    assert_eq!(ended.len(), 30);
    assert_eq!(ended_ids, created.iter().take(30).cloned().collect());
    assert!(ended.iter().all(|s| s.status == SessionStatus::Ended));
    assert_eq!(count(&sim.requests(), "GET", "/web-chat/sessions"), 5);
}

#[tokio::test]
async fn get_session_decodes_fields_and_messages_in_order() {
    let sim = start_sim(KEY).await;
    let t0 = sim.now() - TimeDelta::minutes(10);
    let at = |secs: i64| format_ts(&(t0 + TimeDelta::seconds(secs)));
    let id = create(
        &sim,
        json!({
            "session_id": "sess_a1b2c3d4e5f6",
            "visitor_name": "Ahmad",
            "visitor_email": "ahmad@example.com",
            "visitor_ip": "1.2.3.4",
            "visitor_page_url": "https://yoursite.com/pricing",
            "visitor_referrer": "https://google.com",
            "created_at": at(0),
            "messages": [
                {"sender_type": "visitor", "text": "Hello! I'd like to know about pricing.", "created_at": at(30)},
                {"sender_type": "bot", "text": "Hi! Our pricing starts at $29/month.", "created_at": at(32)},
                {"sender_type": "visitor", "text": "Can I talk to a person?", "created_at": at(40)},
            ]
        }),
    );
    sim.request_human(&id).unwrap();
    sim.post_message(&id, SenderType::Agent, "Hi Ahmad, I'm a live agent.")
        .unwrap();

    let d = sim_client(&sim).get_session(&id).await.unwrap();
    let s = &d.session;
    assert_eq!(s.session_id, "sess_a1b2c3d4e5f6");
    assert_eq!(s.status, SessionStatus::Active);
    assert_eq!(s.handled_by, HandledBy::Pending);
    assert_eq!(s.visitor_name.as_deref(), Some("Ahmad"));
    assert_eq!(s.visitor_email.as_deref(), Some("ahmad@example.com"));
    assert_eq!(s.visitor_phone, None);
    assert_eq!(s.visitor_ip.as_deref(), Some("1.2.3.4"));
    assert_eq!(
        s.visitor_page_url.as_deref(),
        Some("https://yoursite.com/pricing")
    );
    assert_eq!(s.visitor_referrer.as_deref(), Some("https://google.com"));
    assert!(s.has_visitor_messages);
    assert!(s.human_requested_at.is_some());
    assert_eq!(s.human_took_over_at, None);
    assert_eq!(s.created_at.map(|t| format_ts(&t)), Some(at(0)));

    let got: Vec<(i64, SenderType, &str)> = d
        .messages
        .iter()
        .map(|m| (m.id, m.sender_type.clone(), m.text()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                1,
                SenderType::Visitor,
                "Hello! I'd like to know about pricing."
            ),
            (2, SenderType::Bot, "Hi! Our pricing starts at $29/month."),
            (3, SenderType::Visitor, "Can I talk to a person?"),
            (4, SenderType::Agent, "Hi Ahmad, I'm a live agent."),
        ]
    );
    assert_eq!(
        d.messages[1].created_at.map(|t| format_ts(&t)),
        Some(at(32))
    );
    assert!(d.messages.iter().all(|m| m.message_type == "text"));
    assert!(d.messages[0].is_read, "the bot answered, so it was read");
}

#[tokio::test]
async fn take_over_release_and_end_change_the_session() {
    let sim = start_sim(KEY).await;
    let id = create(&sim, json!({"visitor_name": "Ahmad"}));
    // A trailing slash on the base URL is a common config typo; it must work.
    let api = client(&format!("{}/", sim.base_url()));

    let s = api.take_over(&id).await.unwrap().expect("session returned");
    assert_eq!(s.handled_by, HandledBy::Human);
    let d = api.get_session(&id).await.unwrap();
    assert_eq!(d.session.handled_by, HandledBy::Human);
    assert!(d.session.human_took_over_at.is_some());
    assert_eq!(
        sim.session(&id).unwrap().session.handled_by,
        HandledBy::Human
    );

    let s = api.release(&id).await.unwrap().expect("session returned");
    assert_eq!(s.handled_by, HandledBy::Ai);
    assert_eq!(
        api.get_session(&id).await.unwrap().session.handled_by,
        HandledBy::Ai
    );

    let s = api.end(&id).await.unwrap().expect("session returned");
    assert_eq!(s.status, SessionStatus::Ended);
    assert_eq!(
        api.get_session(&id).await.unwrap().session.status,
        SessionStatus::Ended
    );
    // Ending twice is harmless.
    api.end(&id).await.unwrap();

    // Acting on an ended session is refused, and refusals are not retried.
    sim.clear_requests();
    let e = api.take_over(&id).await.unwrap_err();
    assert!(matches!(e, ApiError::Rejected { status: 422, .. }), "{e:?}");
    assert_eq!(sim.requests().len(), 1, "{:?}", sim.requests());
}

#[tokio::test]
async fn send_message_is_stored_as_an_agent_message() {
    let sim = start_sim(KEY).await;
    let id = create(
        &sim,
        json!({"messages": [{"sender_type": "visitor", "text": "anyone there?"}]}),
    );
    let api = sim_client(&sim);

    let m = api
        .send_message(&id, "Hi! A teammate here — how can I help? 👋")
        .await
        .unwrap();
    assert_eq!(m.sender_type, SenderType::Agent);
    assert_eq!(m.text(), "Hi! A teammate here — how can I help? 👋");
    assert_eq!(m.id, 2);
    let log = sim.requests();
    assert_eq!(log.len(), 1);
    assert_eq!((log[0].method.as_str(), log[0].status), ("POST", 201));

    let d = api.get_session(&id).await.unwrap();
    let last = d.messages.last().unwrap();
    assert_eq!(last.sender_type, SenderType::Agent);
    assert_eq!(last.text(), "Hi! A teammate here — how can I help? 👋");
    assert_eq!(last.id, m.id);

    // 4096 characters is the limit, counted in characters, not bytes.
    let long = "é".repeat(4096);
    api.send_message(&id, &long).await.unwrap();
    assert_eq!(occurrences(&sim, &id, &long), 1);
}

#[tokio::test]
async fn unknown_session_is_not_found() {
    let sim = start_sim(KEY).await;
    let api = sim_client(&sim);
    let e = api.get_session("sess_does_not_exist").await.unwrap_err();
    assert!(matches!(e, ApiError::NotFound { .. }), "{e:?}");
    assert!(e.is_gone() && e.is_user_error());
    assert!(e.to_string().contains("sess_does_not_exist"), "{e}");

    let e = api.take_over("sess_does_not_exist").await.unwrap_err();
    assert!(matches!(e, ApiError::NotFound { .. }), "{e:?}");
    let e = api
        .send_message("sess_does_not_exist", "hello")
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::NotFound { .. }), "{e:?}");
    // 404s are final: one request each.
    assert_eq!(sim.requests().len(), 3, "{:?}", sim.requests());
}

#[tokio::test]
async fn sending_to_an_ended_session_is_rejected_once() {
    let sim = start_sim(KEY).await;
    let id = create(&sim, json!({"status": "ended"}));
    let api = sim_client(&sim);
    let e = api
        .send_message(&id, "are you still there?")
        .await
        .unwrap_err();
    match &e {
        ApiError::Rejected {
            status, message, ..
        } => {
            assert_eq!(*status, 422);
            assert!(message.contains("ended"), "{message}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(e.is_user_error());
    let log = sim.requests();
    assert_eq!(count(&log, "POST", "/messages"), 1, "{log:?}");
    assert_eq!(log.len(), 1, "no retry, no re-read: {log:?}");
    assert_eq!(occurrences(&sim, &id, "are you still there?"), 0);
}

#[tokio::test]
async fn wrong_key_is_unauthorized_and_says_what_to_fix() {
    let sim = start_sim(KEY).await;
    let wrong = "sk_live_WRONG_key_987";
    let api = client_with(&sim.base_url(), wrong, Duration::from_secs(5), 3);
    let e = api.analytics(Period::Month).await.unwrap_err();
    assert!(
        matches!(e, ApiError::Unauthorized { status: 401, .. }),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(text.contains("SKYLIGHT_API_KEY"), "{text}");
    assert!(text.contains("api_key_file"), "{text}");
    assert!(!text.contains(wrong) && !format!("{e:?}").contains(wrong));
    assert!(e.is_user_error());
    assert_eq!(sim.requests().len(), 1, "401 is not retried");

    let e = api
        .list_all_sessions(&ListQuery::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ApiError::Unauthorized { .. }), "{e:?}");
}

// ---------------------------------------------------------------------------
// 2. Response shapes the simulator does not produce (wiremock)
// ---------------------------------------------------------------------------

const SESSIONS: &str = "/api/v1/web-chat/sessions";

fn base(server: &MockServer) -> String {
    format!("{}/api/v1", server.uri())
}

fn sess(id: &str) -> Value {
    json!({"session_id": id, "status": "active", "handled_by": "ai"})
}

fn sessions(prefix: &str, n: usize) -> Vec<Value> {
    (0..n).map(|i| sess(&format!("{prefix}{i}"))).collect()
}

async fn received(server: &MockServer) -> usize {
    server.received_requests().await.map_or(0, |r| r.len())
}

fn ids_of(list: &[skyrules::api::Session]) -> Vec<String> {
    list.iter().map(|s| s.session_id.clone()).collect()
}

/// Fails instead of hanging when a paginator loop never ends.
async fn list_all_bounded(api: &Client, q: &ListQuery) -> Vec<skyrules::api::Session> {
    tokio::time::timeout(Duration::from_secs(10), api.list_all_sessions(q))
        .await
        .expect("list_all_sessions must terminate")
        .expect("list_all_sessions succeeds")
}

#[tokio::test]
async fn paginator_object_shape_is_walked_to_the_last_page() {
    let server = MockServer::start().await;
    let next = format!("{}{SESSIONS}?page=2", server.uri());
    Mock::given(method("GET"))
        .and(path(SESSIONS))
        .and(query_param("page", "1"))
        .and(header("x-api-key", KEY))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "success": true,
            "data": {"data": [sess("p1a"), sess("p1b")], "current_page": 1, "last_page": 2,
                     "per_page": 2, "total": 3, "next_page_url": next}
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(SESSIONS))
        .and(query_param("page", "2"))
        .and(header("x-api-key", KEY))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "success": true,
            "data": {"data": [sess("p2a")], "current_page": 2, "last_page": 2,
                     "per_page": 2, "total": 3, "next_page_url": null}
        })))
        .mount(&server)
        .await;
    let api = client(&base(&server));
    let q = ListQuery {
        per_page: Some(2),
        ..ListQuery::default()
    };
    let all = list_all_bounded(&api, &q).await;
    assert_eq!(ids_of(&all), ["p1a", "p1b", "p2a"]);
    assert_eq!(received(&server).await, 2);

    let p = api.list_sessions(&q, 1).await.unwrap();
    assert_eq!((p.current_page, p.last_page), (Some(1), Some(2)));
    assert_eq!(p.has_next, Some(true));
}

#[tokio::test]
async fn links_next_without_meta_is_followed() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(SESSIONS))
        .and(query_param("page", "1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "success": true, "data": sessions("a", 3),
            "links": {"next": format!("{}{SESSIONS}?page=2", server.uri())}
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(SESSIONS))
        .and(query_param("page", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "success": true, "data": sessions("b", 3), "links": {"next": null}
        })))
        .mount(&server)
        .await;
    let api = client(&base(&server));
    let all = list_all_bounded(&api, &ListQuery::default()).await;
    assert_eq!(all.len(), 6, "{:?}", ids_of(&all));
    assert_eq!(received(&server).await, 2);
}

#[tokio::test]
async fn bare_array_pages_are_read_until_a_short_page() {
    let server = MockServer::start().await;
    for (page, items) in [
        ("1", sessions("a", 3)),
        ("2", sessions("b", 3)),
        ("3", sessions("c", 1)),
    ] {
        Mock::given(method("GET"))
            .and(path(SESSIONS))
            .and(query_param("page", page))
            .and(query_param("per_page", "3"))
            .respond_with(ResponseTemplate::new(200).set_body_json(Value::Array(items)))
            .mount(&server)
            .await;
    }
    // Anything further would be a client bug: answer it with a loud failure.
    Mock::given(method("GET"))
        .and(path(SESSIONS))
        .respond_with(ResponseTemplate::new(418))
        .with_priority(10)
        .mount(&server)
        .await;
    let api = client(&base(&server));
    let q = ListQuery {
        per_page: Some(3),
        ..ListQuery::default()
    };
    let all = list_all_bounded(&api, &q).await;
    assert_eq!(ids_of(&all), ["a0", "a1", "a2", "b0", "b1", "b2", "c0"]);
    assert_eq!(received(&server).await, 3, "stops after the short page");
}

#[tokio::test]
async fn bare_array_pages_stop_on_an_empty_page() {
    let server = MockServer::start().await;
    for (page, items) in [("1", sessions("a", 2)), ("2", sessions("b", 2))] {
        Mock::given(method("GET"))
            .and(path(SESSIONS))
            .and(query_param("page", page))
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!({"success": true, "data": items})),
            )
            .mount(&server)
            .await;
    }
    Mock::given(method("GET"))
        .and(path(SESSIONS))
        .and(query_param("page", "3"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"success": true, "data": []})),
        )
        .mount(&server)
        .await;
    let api = client(&base(&server));
    let q = ListQuery {
        per_page: Some(2),
        ..ListQuery::default()
    };
    assert_eq!(list_all_bounded(&api, &q).await.len(), 4);
    assert_eq!(received(&server).await, 3);
}

#[tokio::test]
async fn a_server_that_ignores_page_does_not_loop_forever() {
    // Same full bare page whatever `page` says.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(SESSIONS))
        .respond_with(ResponseTemplate::new(200).set_body_json(Value::Array(sessions("s", 5))))
        .mount(&server)
        .await;
    let api = client(&base(&server));
    let q = ListQuery {
        per_page: Some(5),
        ..ListQuery::default()
    };
    let all = list_all_bounded(&api, &q).await;
    assert_eq!(all.len(), 5, "each session once: {:?}", ids_of(&all));
    assert!(received(&server).await <= 3, "stops on the repeat");

    // Same page, and metadata that keeps promising more.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(SESSIONS))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "success": true, "data": sessions("m", 5),
            "meta": {"current_page": 1, "last_page": 50}
        })))
        .mount(&server)
        .await;
    let api = client(&base(&server));
    let all = list_all_bounded(&api, &q).await;
    assert_eq!(all.len(), 5);
    assert!(received(&server).await <= 3, "stops on the repeat");
}

#[tokio::test]
async fn bare_objects_unknown_fields_nulls_and_microseconds_decode() {
    let server = MockServer::start().await;
    // get_session without the envelope, with odd and missing fields.
    Mock::given(method("GET"))
        .and(path(format!("{SESSIONS}/sess_bare")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "session_id": "sess_bare",
            "status": "active",
            "handled_by": "human",
            "visitor_name": null,
            "visitor_email": "x@example.com",
            // visitor_phone, visitor_ip, … missing entirely
            "has_visitor_messages": 1,
            "human_requested_at": null,
            "human_took_over_at": "2026-03-08T14:20:00.123456Z",
            "last_activity_at": "2026-03-08T14:22:00.000001Z",
            "created_at": "2026-03-08T14:15:00Z",
            "widget": {"theme": "dark", "version": 7},
            "tags": ["vip"],
            "messages": [
                {"id": 1, "sender_type": "visitor", "message_text": "Hello!",
                 "message_type": "text", "is_read": true,
                 "created_at": "2026-03-08T14:15:30.654321Z", "reactions": []},
                {"id": 2, "sender_type": "visitor", "message_text": null,
                 "message_type": "image", "media_url": "https://cdn.example/x.png",
                 "created_at": null},
                {"id": 3, "sender_type": "bot", "message_text": "Nice picture",
                 "created_at": "2026-03-08T14:16:00.000000Z"}
            ]
        })))
        .mount(&server)
        .await;
    // The enveloped form of the same endpoint, with extra envelope fields.
    Mock::given(method("GET"))
        .and(path(format!("{SESSIONS}/sess_env")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "success": true, "message": "OK", "request_id": "r-1",
            "data": {"session_id": "sess_env", "status": "ended", "messages": []}
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/web-chat/analytics"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "total_chats": 142, "engaged_chats": 118, "active_chats": 7,
            "avg_messages_per_chat": 7.3, "unique_visitors": null,
            "chart_data": {"labels": ["a"], "chats": [1]}, "new_metric": 5
        })))
        .mount(&server)
        .await;
    let api = client(&base(&server));

    let d = api.get_session("sess_bare").await.unwrap();
    let s = &d.session;
    assert_eq!(s.session_id, "sess_bare");
    assert_eq!(s.handled_by, HandledBy::Human);
    assert_eq!(s.visitor_name, None);
    assert_eq!(s.visitor_phone, None);
    assert_eq!(s.visitor_email.as_deref(), Some("x@example.com"));
    assert!(s.has_visitor_messages);
    assert_eq!(s.human_requested_at, None);
    let took = s.human_took_over_at.expect("timestamp decoded");
    assert_eq!(took.nanosecond(), 123_456_000, "microseconds kept");
    assert_eq!(format_ts(&took), "2026-03-08T14:20:00.123456Z");
    assert_eq!(
        format_ts(&s.last_activity_at.unwrap()),
        "2026-03-08T14:22:00.000001Z"
    );
    assert_eq!(
        format_ts(&s.created_at.unwrap()),
        "2026-03-08T14:15:00.000000Z"
    );
    assert_eq!(d.messages.len(), 3);
    assert_eq!(d.messages[0].text(), "Hello!");
    assert_eq!(
        format_ts(&d.messages[0].created_at.unwrap()),
        "2026-03-08T14:15:30.654321Z"
    );
    assert_eq!(d.messages[1].message_text, None);
    assert_eq!(d.messages[1].message_type, "image");
    assert_eq!(
        d.messages[1].media_url.as_deref(),
        Some("https://cdn.example/x.png")
    );
    assert_eq!(d.messages[1].created_at, None);
    assert_eq!(d.messages[2].message_type, "text", "missing type is text");
    assert_eq!(d.messages[2].media_url, None);
    assert!(!d.messages[2].is_read);

    let d = api.get_session("sess_env").await.unwrap();
    assert_eq!(d.session.session_id, "sess_env");
    assert_eq!(d.session.status, SessionStatus::Ended);
    assert!(d.messages.is_empty());

    let a = api.analytics(Period::Week).await.unwrap();
    assert_eq!(
        (a.total_chats, a.engaged_chats, a.active_chats),
        (142, 118, 7)
    );
    assert_eq!(a.unique_visitors, 0);
    assert_eq!(a.completed_chats, 0);
    assert!((a.avg_messages_per_chat - 7.3).abs() < 1e-9);
    assert_eq!(a.chart_data["chats"], json!([1]));
}

#[tokio::test]
async fn action_and_send_responses_of_other_shapes_are_accepted() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{SESSIONS}/s1/end")))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("{SESSIONS}/s1/take-over")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"success": true, "message": "Taken over."})),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("{SESSIONS}/s1/messages")))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "id": 9, "sender_type": "agent", "message_text": "hello",
            "created_at": "2026-03-08T14:22:00.000000Z", "extra": true
        })))
        .mount(&server)
        .await;
    let api = client(&base(&server));
    assert!(api.end("s1").await.is_ok());
    assert!(api.take_over("s1").await.is_ok());
    let m = api.send_message("s1", "hello").await.unwrap();
    assert_eq!((m.id, m.text()), (9, "hello"));
    assert_eq!(received(&server).await, 3);
    let reqs = server.received_requests().await.unwrap();
    let body: Value = serde_json::from_slice(&reqs[2].body).unwrap();
    assert_eq!(body, json!({"message": "hello"}));
    assert!(reqs
        .iter()
        .all(|r| r.headers.get("x-api-key").unwrap() == KEY));
}

// ---------------------------------------------------------------------------
// 3. Error classes and retries
// ---------------------------------------------------------------------------

fn analytics_ok() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"success": true, "data": {"total_chats": 42}}))
}

const ANALYTICS: &str = "/api/v1/web-chat/analytics";

/// Mounts `first` for the first `n` GETs of `route`, then `then`.
async fn flaky_at(
    route: &str,
    first: ResponseTemplate,
    n: u64,
    then: ResponseTemplate,
) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(route))
        .respond_with(first)
        .up_to_n_times(n)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(route))
        .respond_with(then)
        .with_priority(2)
        .mount(&server)
        .await;
    server
}

/// Mounts `first` for the first `n` requests, then a healthy analytics answer.
async fn flaky(first: ResponseTemplate, n: u64) -> MockServer {
    flaky_at(ANALYTICS, first, n, analytics_ok()).await
}

#[tokio::test]
async fn a_500_is_retried_and_then_succeeds() {
    let server = flaky(
        ResponseTemplate::new(500).set_body_json(json!({"success": false, "message": "boom"})),
        1,
    )
    .await;
    let a = client(&base(&server))
        .analytics(Period::Month)
        .await
        .unwrap();
    assert_eq!(a.total_chats, 42);
    assert_eq!(received(&server).await, 2);
}

#[tokio::test]
async fn a_429_waits_for_retry_after() {
    let server = flaky(
        ResponseTemplate::new(429)
            .insert_header("Retry-After", "1")
            .set_body_json(json!({"message": "Too Many Attempts."})),
        1,
    )
    .await;
    let started = Instant::now();
    let a = client(&base(&server))
        .analytics(Period::Month)
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(a.total_chats, 42);
    assert_eq!(received(&server).await, 2);
    assert!(
        waited >= ms(950),
        "Retry-After: 1 must be honoured, waited {waited:?}"
    );
}

#[tokio::test]
async fn persistent_503_gives_unavailable_after_max_attempts() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(ANALYTICS))
        .respond_with(
            ResponseTemplate::new(503).set_body_string("<html>Service Unavailable</html>"),
        )
        .mount(&server)
        .await;
    let api = client_with(&base(&server), KEY, Duration::from_secs(5), 4);
    let started = Instant::now();
    let e = api.analytics(Period::Month).await.unwrap_err();
    match &e {
        ApiError::Unavailable { attempts, last, .. } => {
            assert_eq!(*attempts, 4);
            assert!(
                matches!(last, Transient::Server { status: 503, .. }),
                "{last:?}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(!e.is_user_error());
    assert_eq!(received(&server).await, 4);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "backoff is capped"
    );
}

#[tokio::test]
async fn malformed_json_on_200_is_retried() {
    let server = flaky(
        ResponseTemplate::new(200).set_body_raw(r#"{"success": tru"#, "application/json"),
        1,
    )
    .await;
    let a = client(&base(&server))
        .analytics(Period::Month)
        .await
        .unwrap();
    assert_eq!(a.total_chats, 42);
    assert_eq!(received(&server).await, 2);
}

#[tokio::test]
async fn connection_refused_is_unavailable() {
    let api = client(&util::dead_base_url());
    let started = Instant::now();
    let e = api.analytics(Period::Month).await.unwrap_err();
    match &e {
        ApiError::Unavailable { attempts, last, .. } => {
            assert_eq!(*attempts, 3);
            assert!(matches!(last, Transient::Connect(_)), "{last:?}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_timeout_is_retried() {
    let server = flaky(analytics_ok().set_delay(Duration::from_secs(3)), 1).await;
    let api = client_with(&base(&server), KEY, ms(400), 3);
    let started = Instant::now();
    let a = api.analytics(Period::Month).await.unwrap();
    assert_eq!(a.total_chats, 42);
    assert_eq!(received(&server).await, 2);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "did not wait it out"
    );

    // And when every attempt times out, the error says so.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(ANALYTICS))
        .respond_with(analytics_ok().set_delay(Duration::from_secs(3)))
        .mount(&server)
        .await;
    let api = client_with(&base(&server), KEY, ms(200), 2);
    let e = api.analytics(Period::Month).await.unwrap_err();
    assert!(
        matches!(
            e,
            ApiError::Unavailable {
                attempts: 2,
                last: Transient::Timeout,
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn client_errors_are_final_and_keep_the_servers_reason() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("{SESSIONS}/s1/messages")))
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({
            "message": "The given data was invalid.",
            "errors": {"message": ["The message field must not be greater than 4096 characters."]}
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(ANALYTICS))
        .respond_with(
            ResponseTemplate::new(403)
                .set_body_json(json!({"success": false, "message": "Web Chat is not enabled."})),
        )
        .mount(&server)
        .await;
    let api = client(&base(&server));
    let e = api.send_message("s1", "hello").await.unwrap_err();
    match &e {
        ApiError::Rejected {
            status, message, ..
        } => {
            assert_eq!(*status, 422);
            assert!(message.contains("4096"), "{message}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(received(&server).await, 1, "422 is not retried");

    let e = api.analytics(Period::Month).await.unwrap_err();
    assert!(
        matches!(e, ApiError::Unauthorized { status: 403, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("Web Chat is not enabled."), "{e}");
    assert_eq!(received(&server).await, 2, "403 is not retried");
}

// ---------------------------------------------------------------------------
// 4. No blind resend of messages (simulator faults)
// ---------------------------------------------------------------------------

fn on_send(fault: Fault) -> Fault {
    Fault {
        method: Some("POST".into()),
        path_contains: Some("/messages".into()),
        ..fault
    }
}

#[tokio::test]
async fn dropped_connection_after_storing_does_not_resend() {
    let sim = start_sim(KEY).await;
    let id = create(&sim, json!({}));
    sim.add_fault(on_send(Fault {
        drop_connection: true,
        ..Fault::default()
    }))
    .unwrap();
    let text = "Thanks, a teammate will join shortly.";
    let m = sim_client(&sim).send_message(&id, text).await.unwrap();
    assert_eq!(m.text(), text);
    assert_eq!(m.sender_type, SenderType::Agent);
    assert_eq!(occurrences(&sim, &id, text), 1, "{:?}", texts(&sim, &id));
    let log = sim.requests();
    assert_eq!(count(&log, "POST", "/messages"), 1, "{log:?}");
    assert_eq!(log[0].fault.as_deref(), Some("drop_connection"));
}

#[tokio::test]
async fn timeout_after_storing_does_not_resend() {
    let sim = start_sim(KEY).await;
    let id = create(&sim, json!({}));
    sim.add_fault(on_send(Fault {
        latency_ms: 2_500,
        ..Fault::default()
    }))
    .unwrap();
    let api = client_with(&sim.base_url(), KEY, ms(600), 3);
    let text = "We're looking into it.";
    let started = Instant::now();
    let m = api.send_message(&id, text).await.unwrap();
    assert!(started.elapsed() < ms(2_400), "the client timed out");
    assert_eq!(m.text(), text);
    assert_eq!(occurrences(&sim, &id, text), 1, "{:?}", texts(&sim, &id));
    assert_eq!(count(&sim.requests(), "POST", "/messages"), 1);
}

#[tokio::test]
async fn error_after_storing_does_not_resend() {
    let sim = start_sim(KEY).await;
    let id = create(&sim, json!({}));
    sim.add_fault(on_send(Fault {
        after_store: true,
        ..Fault::status(500)
    }))
    .unwrap();
    sim.add_fault(Fault {
        malformed: true,
        ..on_send(Fault::default())
    })
    .unwrap();
    let api = sim_client(&sim);
    api.send_message(&id, "first").await.unwrap();
    api.send_message(&id, "second").await.unwrap();
    assert_eq!(texts(&sim, &id), ["first", "second"]);
    assert_eq!(count(&sim.requests(), "POST", "/messages"), 2);
}

#[tokio::test]
async fn a_503_that_stored_nothing_is_retried_once_delivered() {
    let sim = start_sim(KEY).await;
    let id = create(&sim, json!({}));
    sim.add_fault(on_send(Fault::status(503))).unwrap();
    let text = "Hello from support";
    let m = sim_client(&sim).send_message(&id, text).await.unwrap();
    assert_eq!(m.text(), text);
    assert_eq!(occurrences(&sim, &id, text), 1, "{:?}", texts(&sim, &id));
    let posts: Vec<u16> = sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.status)
        .collect();
    assert_eq!(posts, [503, 201]);
}

#[tokio::test]
async fn an_old_identical_reply_does_not_suppress_a_new_one() {
    let sim = start_sim(KEY).await;
    let text = "We'll close this chat for now — write again any time.";
    let an_hour_ago = format_ts(&(sim.now() - TimeDelta::hours(1)));
    let id = create(
        &sim,
        json!({"messages": [
            {"sender_type": "agent", "text": text, "created_at": an_hour_ago},
            {"sender_type": "visitor", "text": "back again"}
        ]}),
    );
    sim.add_fault(on_send(Fault::status(503))).unwrap();
    sim_client(&sim).send_message(&id, text).await.unwrap();
    assert_eq!(occurrences(&sim, &id, text), 2, "{:?}", texts(&sim, &id));
    assert_eq!(count(&sim.requests(), "POST", "/messages"), 2);
}

#[tokio::test]
async fn a_server_clock_behind_ours_does_not_cause_a_resend() {
    // The server's clock runs a minute behind this machine's, and this send is
    // the first call the client makes (as with `skyrules sessions send`).
    let server = MockServer::start().await;
    let server_now = chrono::Utc::now() - TimeDelta::seconds(60);
    let date = httpdate::fmt_http_date(server_now.into());
    Mock::given(method("POST"))
        .and(path(format!("{SESSIONS}/s1/messages")))
        .respond_with(
            ResponseTemplate::new(500)
                .insert_header("Date", date.as_str())
                .set_body_json(json!({"success": false, "message": "Server Error"})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("{SESSIONS}/s1/messages")))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "success": true,
            "data": {"id": 3, "sender_type": "agent", "message_text": "On it."}
        })))
        .with_priority(2)
        .mount(&server)
        .await;
    // The 500 came after the write: the message is there, stamped by the
    // server's clock.
    Mock::given(method("GET"))
        .and(path(format!("{SESSIONS}/s1")))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("Date", date.as_str())
                .set_body_json(json!({"success": true, "data": {
                    "session_id": "s1", "status": "active",
                    "messages": [
                        {"id": 1, "sender_type": "visitor", "message_text": "help",
                         "created_at": format_ts(&(server_now - TimeDelta::seconds(5)))},
                        {"id": 2, "sender_type": "agent", "message_text": "On it.",
                         "created_at": format_ts(&server_now)}
                    ]
                }})),
        )
        .mount(&server)
        .await;
    let m = client(&base(&server))
        .send_message("s1", "On it.")
        .await
        .unwrap();
    assert_eq!(m.id, 2, "the stored message is found, not sent again");
    let posts = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method == wiremock::http::Method::POST)
        .count();
    assert_eq!(posts, 1, "the message was sent twice");
}

// ---------------------------------------------------------------------------
// 5. Local validation: nothing reaches the server
// ---------------------------------------------------------------------------

#[tokio::test]
async fn invalid_messages_and_arguments_are_refused_locally() {
    let sim = start_sim(KEY).await;
    let id = create(&sim, json!({}));
    let api = sim_client(&sim);
    let too_long = "a".repeat(4097);
    let too_long_wide = "é".repeat(4097);
    for text in [
        "",
        "   ",
        " \n\t ",
        too_long.as_str(),
        too_long_wide.as_str(),
    ] {
        let e = api.send_message(&id, text).await.unwrap_err();
        assert!(
            matches!(e, ApiError::Invalid(_)),
            "{} chars: {e:?}",
            text.chars().count()
        );
        assert!(e.is_user_error());
    }
    let e = api.send_message(&id, &too_long).await.unwrap_err();
    assert!(e.to_string().contains("4096"), "{e}");
    for bad in [0, 101] {
        let q = ListQuery {
            per_page: Some(bad),
            ..ListQuery::default()
        };
        let e = api.list_sessions(&q, 1).await.unwrap_err();
        assert!(matches!(e, ApiError::Invalid(_)), "{e:?}");
        let e = api.list_all_sessions(&q).await.unwrap_err();
        assert!(matches!(e, ApiError::Invalid(_)), "{e:?}");
    }
    let e = api.get_session("  ").await.unwrap_err();
    assert!(matches!(e, ApiError::Invalid(_)), "{e:?}");
    assert!(sim.requests().is_empty(), "{:?}", sim.requests());
    assert!(texts(&sim, &id).is_empty());
}

// ---------------------------------------------------------------------------
// 6. The key never shows: logs at TRACE, Debug, errors
// ---------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Buffer {
        self.clone()
    }
}

#[tokio::test]
async fn the_key_never_appears_in_logs_debug_or_errors() {
    const SECRET: &str = "sk_live_SECRET_abc123";
    let buffer = Buffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(buffer.clone())
        .finish();
    // The test runs on a current-thread runtime: every task (client, the
    // simulator's server) logs on this thread, into this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);
    // With exactly one registered dispatcher, tracing-core computes a new
    // callsite's interest from the *registering thread's* default, so a log
    // line first reached by another test (no subscriber there) would be
    // cached as "never" for everyone. A second, idle dispatcher makes it
    // consult every registered one instead.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());

    let mut seen = Vec::new();

    // Successful calls and a recovered send against the simulator.
    let sim = start_sim(SECRET).await;
    let id = create(&sim, json!({"visitor_name": "Ahmad"}));
    let api = client_with(&sim.base_url(), SECRET, Duration::from_secs(5), 3);
    seen.push(format!("{api:?}"));
    // Callsites other tests registered before the lines above may still
    // hold a cached "never"; recompute them.
    tracing::callsite::rebuild_interest_cache();
    api.analytics(Period::Today).await.unwrap();
    api.list_all_sessions(&ListQuery::default()).await.unwrap();
    api.take_over(&id).await.unwrap();
    sim.add_fault(on_send(Fault {
        drop_connection: true,
        ..Fault::default()
    }))
    .unwrap();
    api.send_message(&id, "hello").await.unwrap();
    let e = api.get_session("sess_missing").await.unwrap_err();
    seen.push(format!("{e} {e:?}"));

    // Failures: 401, 500s until retries run out, 404, connection refused.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(ANALYTICS))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(json!({"success": false, "message": "Invalid API key."})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(SESSIONS))
        .respond_with(
            ResponseTemplate::new(500)
                .set_body_json(json!({"success": false, "message": "Server Error"})),
        )
        .mount(&server)
        .await;
    let mock_api = client_with(&base(&server), SECRET, Duration::from_secs(5), 3);
    for e in [
        mock_api.analytics(Period::Month).await.unwrap_err(),
        mock_api
            .list_all_sessions(&ListQuery::default())
            .await
            .unwrap_err(),
        mock_api.get_session("sess_404").await.unwrap_err(),
        client_with(&util::dead_base_url(), SECRET, Duration::from_secs(5), 2)
            .end("s")
            .await
            .unwrap_err(),
    ] {
        seen.push(format!("{e} {e:?}"));
    }
    // A key that cannot even be sent is refused without echoing it.
    let bad = ClientConfig::new(sim.base_url(), ApiKey::new("sk_live_SECRET\u{7f}abc123"));
    seen.push(format!("{bad:?}"));
    let e = Client::new(bad).unwrap_err();
    seen.push(format!("{e} {e:?}"));
    drop(_guard);

    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(!logs.is_empty(), "the subscriber captured nothing");
    assert!(
        logs.contains("skylight request"),
        "client debug lines captured"
    );
    assert!(logs.contains("retrying"), "retry warnings captured");
    assert!(!logs.contains(SECRET), "the key leaked into the logs");
    assert!(
        !logs.contains("SECRET"),
        "part of the key leaked into the logs"
    );
    for s in &seen {
        assert!(!s.contains("SECRET"), "the key leaked: {s}");
    }
}

// ---------------------------------------------------------------------------
// 7. The request rate limit (`api.max_requests_per_second`)
// ---------------------------------------------------------------------------

/// A client allowed `rate` requests per second (burst `max(1, rate)`).
fn limited_client(base: &str, rate: f64, max_attempts: u32) -> Client {
    let mut config = ClientConfig::new(base, ApiKey::new(KEY));
    config.timeout = Duration::from_secs(5);
    config.retry = fast_retry(max_attempts);
    config.max_requests_per_second = Some(rate);
    Client::new(config).expect("build the client")
}

/// The least wall time `n` requests can take at `rate` per second with a
/// burst of `burst`, less 1% for timer rounding. Only a lower bound: a slow
/// machine takes longer, never shorter.
fn least_time(n: usize, burst: usize, rate: f64) -> Duration {
    Duration::from_secs_f64(n.saturating_sub(burst) as f64 / rate * 0.99)
}

#[tokio::test]
async fn list_pages_and_reads_of_all_clones_share_one_rate_limit() {
    const RATE: f64 = 20.0;
    let sim = start_sim(KEY).await;
    let ids = create_many(&sim, 90);
    let api = limited_client(&sim.base_url(), RATE, 3);
    let other = api.clone();
    let q = ListQuery {
        per_page: Some(2),
        ..ListQuery::default()
    };
    let started = Instant::now();
    // 45 list pages (fetched in windows) on one clone while another reads
    // 15 sessions: 60 requests against one budget of 20/s, burst 20.
    let (all, details) = tokio::join!(api.list_all_sessions(&q), async {
        let mut out = Vec::new();
        for id in ids.iter().take(15) {
            out.push(other.get_session(id).await.unwrap());
        }
        out
    });
    let elapsed = started.elapsed();
    assert_eq!(all.unwrap().len(), 90);
    assert_eq!(details.len(), 15);
    let log = sim.requests();
    assert_eq!(count(&log, "GET", "/web-chat/sessions"), 45, "{log:?}");
    assert_eq!(log.len(), 60, "{log:?}");
    let least = least_time(log.len(), RATE as usize, RATE);
    assert!(
        elapsed >= least,
        "{} requests at {RATE}/s (burst {RATE}) took {elapsed:?}, less than {least:?}",
        log.len()
    );
}

#[tokio::test]
async fn every_retry_waits_for_the_rate_limit() {
    const RATE: f64 = 5.0;
    // Eight 503s, then an answer: nine attempts at 5/s, burst 5.
    let server = flaky(
        ResponseTemplate::new(503).set_body_json(json!({"message": "busy"})),
        8,
    )
    .await;
    let api = limited_client(&base(&server), RATE, 10);
    let started = Instant::now();
    let a = api.analytics(Period::Month).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(a.total_chats, 42);
    assert_eq!(received(&server).await, 9);
    let least = least_time(9, RATE as usize, RATE);
    assert!(
        elapsed >= least,
        "9 attempts took {elapsed:?}, less than {least:?}"
    );
}

#[tokio::test]
async fn a_rate_limit_that_is_not_positive_is_refused() {
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let mut config = ClientConfig::new("http://127.0.0.1:9/api/v1", ApiKey::new(KEY));
        config.max_requests_per_second = Some(bad);
        let e = Client::new(config).unwrap_err();
        assert!(matches!(e, ApiError::Invalid(_)), "{bad}: {e:?}");
        assert!(e.to_string().contains("max_requests_per_second"), "{e}");
    }
}

// ---------------------------------------------------------------------------
// 8. List bodies, decoded from bytes, keep the envelope rules of every call
// ---------------------------------------------------------------------------

/// Serves `first` for the first `n` list requests, then a one-session page.
async fn flaky_list(first: ResponseTemplate, n: u64) -> MockServer {
    let ok = ResponseTemplate::new(200).set_body_json(json!({
        "success": true, "data": [sess("ok")], "meta": {"current_page": 1, "last_page": 1}
    }));
    flaky_at(SESSIONS, first, n, ok).await
}

fn raw_200(body: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(body.to_string(), "application/json")
}

#[tokio::test]
async fn a_list_body_saying_success_false_is_a_final_refusal() {
    let server = flaky_list(
        ResponseTemplate::new(200).set_body_json(
            json!({"success": false, "message": "Web Chat is not enabled.", "data": []}),
        ),
        1,
    )
    .await;
    let e = client(&base(&server))
        .list_sessions(&ListQuery::default(), 1)
        .await
        .unwrap_err();
    match &e {
        ApiError::Rejected {
            what,
            status,
            message,
        } => {
            assert_eq!((what.as_str(), *status), ("the session list", 200));
            assert_eq!(message, "Web Chat is not enabled.");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(received(&server).await, 1, "not retried");
}

#[tokio::test]
async fn a_list_body_that_is_not_json_is_retried() {
    let server = flaky_list(
        raw_200(r#"{"success": true, "data": [{"session_id": "a"}"#),
        2,
    )
    .await;
    let all = list_all_bounded(&client(&base(&server)), &ListQuery::default()).await;
    assert_eq!(ids_of(&all), ["ok"]);
    assert_eq!(received(&server).await, 3);

    let server = flaky_list(raw_200("<html>Bad Gateway</html>"), 10).await;
    let e = client(&base(&server))
        .list_sessions(&ListQuery::default(), 1)
        .await
        .unwrap_err();
    match &e {
        ApiError::Unavailable {
            attempts,
            last: Transient::Malformed(m),
            ..
        } => {
            assert_eq!(*attempts, 3);
            assert!(m.contains("line 1 column"), "{m}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert_eq!(received(&server).await, 3);
}

#[tokio::test]
async fn a_list_body_of_the_wrong_shape_is_not_retried() {
    let cases = [
        (
            r#"{"success": true, "data": 5}"#,
            "`data` is neither a list nor a paginator",
        ),
        (
            r#"{"success": true, "message": "ok"}"#,
            "the response has no `data` list of sessions",
        ),
        (
            r#"{"data": null}"#,
            "the response has no `data` list of sessions",
        ),
        (
            r#"{"data": {"items": []}}"#,
            "`data` is an object without a `data` list of sessions",
        ),
        (
            r#""sessions""#,
            "the response is neither a list nor an object",
        ),
        ("  \n", "the response is neither a list nor an object"),
    ];
    for (body, why) in cases {
        let server = flaky_list(raw_200(body), 1).await;
        let e = client(&base(&server))
            .list_sessions(&ListQuery::default(), 1)
            .await
            .unwrap_err();
        match &e {
            ApiError::Unavailable {
                what,
                attempts: 1,
                last: Transient::Malformed(m),
            } => {
                assert_eq!(what, "the session list");
                assert_eq!(m, why, "{body}");
            }
            other => panic!("{body}: expected Unavailable, got {other:?}"),
        }
        assert_eq!(received(&server).await, 1, "{body}: not retried");
    }
}
