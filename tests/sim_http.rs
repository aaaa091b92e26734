//! The SkyLight simulator over real HTTP: auth, validation, pagination,
//! session state changes, the simulated clock, the bot, faults and traffic.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use skyrules::api::types::{parse_ts, HandledBy, SenderType, SessionStatus};
use skyrules::sim::{self, Fault, SimConfig, SimHandle, TrafficConfig};

const KEY: &str = "sim-key";

fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A simulator with a frozen clock (only explicit advances move it).
async fn frozen() -> SimHandle {
    sim::start(
        SimConfig {
            clock_speed: 0.0,
            ..SimConfig::default()
        },
        local(),
    )
    .await
    .expect("start simulator")
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

async fn api(
    c: &reqwest::Client,
    sim: &SimHandle,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = c
        .request(method, format!("{}{path}", sim.base_url()))
        .header("X-Api-Key", KEY);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, body)
}

async fn get(c: &reqwest::Client, sim: &SimHandle, path: &str) -> (u16, Value) {
    api(c, sim, reqwest::Method::GET, path, None).await
}

async fn post(
    c: &reqwest::Client,
    sim: &SimHandle,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    api(c, sim, reqwest::Method::POST, path, body).await
}

async fn control(c: &reqwest::Client, sim: &SimHandle, path: &str, body: Value) -> (u16, Value) {
    let resp = c
        .post(format!("{}{path}", sim.control_url()))
        .json(&body)
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Polls `cond` every 20 ms for at most 2 s.
async fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

#[tokio::test]
async fn requests_need_the_api_key() {
    let sim = frozen().await;
    let c = client();
    let url = format!("{}/web-chat/sessions", sim.base_url());
    let none = c.get(&url).send().await.unwrap();
    assert_eq!(none.status().as_u16(), 401);
    let body: Value = none.json().await.unwrap();
    assert_eq!(
        body,
        json!({"success": false, "message": "Invalid API key."})
    );
    let wrong = c
        .get(&url)
        .header("X-Api-Key", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let (status, body) = get(&c, &sim, "/web-chat/sessions").await;
    assert_eq!(status, 200);
    assert_eq!(body["success"], true);
    assert_eq!(body["meta"]["last_page"], 1);
    assert_eq!(body["links"]["next"], Value::Null);
    // Unknown API paths are JSON 404s; the control surface needs no key.
    let (status, body) = get(&c, &sim, "/web-chat/nope").await;
    assert_eq!((status, body["success"].clone()), (404, json!(false)));
    let clock = c
        .get(format!("{}/clock", sim.control_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(clock.status().as_u16(), 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn per_page_over_100_is_rejected() {
    let sim = frozen().await;
    let c = client();
    let (status, body) = get(&c, &sim, "/web-chat/sessions?per_page=101").await;
    assert_eq!(status, 422);
    assert_eq!(
        body,
        json!({"message": "The per page field must not be greater than 100.",
               "errors": {"per_page": ["The per page field must not be greater than 100."]}})
    );
    assert_eq!(get(&c, &sim, "/web-chat/sessions?per_page=0").await.0, 422);
    assert_eq!(
        get(&c, &sim, "/web-chat/sessions?per_page=100").await.0,
        200
    );
    assert_eq!(get(&c, &sim, "/web-chat/sessions?status=open").await.0, 422);
    assert_eq!(
        get(&c, &sim, "/web-chat/analytics?period=decade").await.0,
        422
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn lists_page_newest_first_with_filters() {
    let sim = frozen().await;
    let c = client();
    for i in 0..7 {
        sim.create_session(json!({
            "session_id": format!("s{i}"),
            "visitor_name": if i == 3 { "Ahmad Haddad" } else { "Sara" },
            "created_at": format!("2026-03-08T14:0{i}:00.000000Z"),
            "handled_by": if i % 2 == 0 { "ai" } else { "human" },
        }))
        .unwrap();
    }
    let mut seen = Vec::new();
    let mut path = "/web-chat/sessions?per_page=3".to_string();
    for page in 1..=3 {
        let (status, body) = get(&c, &sim, &path).await;
        assert_eq!(status, 200);
        assert_eq!(body["meta"]["current_page"], page);
        assert_eq!(body["meta"]["last_page"], 3);
        assert_eq!(body["meta"]["per_page"], 3);
        assert_eq!(body["meta"]["total"], 7);
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), if page < 3 { 3 } else { 1 });
        assert!(data.iter().all(|s| s.get("messages").is_none()));
        seen.extend(
            data.iter()
                .map(|s| s["session_id"].as_str().unwrap().to_string()),
        );
        match body["links"]["next"].as_str() {
            Some(next) => {
                assert!(page < 3);
                let q = next.split_once('?').unwrap().1;
                assert!(q.contains("per_page=3") && q.contains(&format!("page={}", page + 1)));
                path = format!("/web-chat/sessions?{q}");
            }
            None => assert_eq!(page, 3),
        }
    }
    assert_eq!(seen, ["s6", "s5", "s4", "s3", "s2", "s1", "s0"]);

    let (_, body) = get(&c, &sim, "/web-chat/sessions?search=HADDAD").await;
    assert_eq!(body["data"][0]["session_id"], "s3");
    assert_eq!(body["meta"]["total"], 1);
    let (_, body) = get(&c, &sim, "/web-chat/sessions?handled_by=human").await;
    assert_eq!(body["meta"]["total"], 3);
    let (_, body) = get(&c, &sim, "/web-chat/sessions?per_page=3&page=9").await;
    assert_eq!(body["data"], json!([]));
    assert_eq!(body["links"]["next"], Value::Null);
    sim.shutdown().await;
}

#[tokio::test]
async fn take_over_release_and_end_change_state() {
    let sim = frozen().await;
    let c = client();
    let id = sim.create_session(json!({})).unwrap().session.session_id;
    assert!(id.starts_with("sess_") && id.len() == 17);

    let advanced = sim.advance(Duration::from_secs(60));
    let (status, body) = post(
        &c,
        &sim,
        &format!("/web-chat/sessions/{id}/take-over"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["handled_by"], "human");
    let took = body["data"]["human_took_over_at"].as_str().unwrap();
    assert_eq!(parse_ts(took), Some(advanced));
    assert_eq!(body["data"]["last_activity_at"].as_str(), Some(took));
    // The reference's timestamp format, microseconds and Z.
    assert!(took.len() == 27 && took.ends_with('Z') && took.as_bytes()[19] == b'.');

    let (status, body) = post(&c, &sim, &format!("/web-chat/sessions/{id}/release"), None).await;
    assert_eq!(
        (status, body["data"]["handled_by"].clone()),
        (200, json!("ai"))
    );

    let (status, body) = post(&c, &sim, &format!("/web-chat/sessions/{id}/end"), None).await;
    assert_eq!(
        (status, body["data"]["status"].clone()),
        (200, json!("ended"))
    );
    let (status, _) = post(&c, &sim, &format!("/web-chat/sessions/{id}/end"), None).await;
    assert_eq!(status, 200);

    for action in ["take-over", "release"] {
        let (status, body) =
            post(&c, &sim, &format!("/web-chat/sessions/{id}/{action}"), None).await;
        assert_eq!(status, 422, "{action}");
        assert_eq!(
            body,
            json!({"success": false, "message": "Session has ended."})
        );
    }
    let (status, body) = post(
        &c,
        &sim,
        &format!("/web-chat/sessions/{id}/messages"),
        Some(json!({"message": "hello?"})),
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(
        body["message"],
        "You cannot send messages to ended sessions."
    );

    let (status, body) = get(&c, &sim, "/web-chat/sessions/sess_nope").await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({"success": false, "message": "Session not found."})
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn messages_are_created_and_validated() {
    let sim = frozen().await;
    let c = client();
    let id = sim
        .create_session(json!({"messages": [{"sender_type": "visitor", "text": "hi"}]}))
        .unwrap()
        .session
        .session_id;
    let path = format!("/web-chat/sessions/{id}/messages");

    let (status, body) = post(
        &c,
        &sim,
        &path,
        Some(json!({"message": "Hi! I'm a live agent."})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(body["success"], true);
    assert_eq!(body["data"]["id"], 2);
    assert_eq!(body["data"]["sender_type"], "agent");
    assert_eq!(body["data"]["message_text"], "Hi! I'm a live agent.");
    assert_eq!(body["data"]["message_type"], "text");
    assert_eq!(body["data"]["media_url"], Value::Null);
    assert_eq!(body["data"]["is_read"], false);

    // 4096 characters is the limit, counted in characters, not bytes.
    let max = "é".repeat(4096);
    assert_eq!(
        post(&c, &sim, &path, Some(json!({"message": max}))).await.0,
        201
    );
    let (status, body) = post(&c, &sim, &path, Some(json!({"message": "x".repeat(4097)}))).await;
    assert_eq!(status, 422);
    assert_eq!(
        body["errors"]["message"][0],
        "The message field must not be greater than 4096 characters."
    );
    for bad in [json!({}), json!({"message": ""}), json!({"message": 5})] {
        let (status, body) = post(&c, &sim, &path, Some(bad)).await;
        assert_eq!(status, 422);
        assert!(body["errors"]["message"].is_array());
    }
    let detail = sim.session(&id).unwrap();
    assert_eq!(detail.messages.len(), 3);
    assert_eq!(detail.messages[2].id, 3);
    assert!(detail.session.has_visitor_messages);
    sim.shutdown().await;
}

#[tokio::test]
async fn date_header_follows_the_simulated_clock() {
    let sim = frozen().await;
    let c = client();
    let date_of = |r: &reqwest::Response| {
        let raw = r
            .headers()
            .get("date")
            .expect("Date header")
            .to_str()
            .unwrap()
            .to_string();
        httpdate::parse_http_date(&raw).expect("HTTP date")
    };
    let before = c
        .get(format!("{}/web-chat/sessions", sim.base_url()))
        .header("X-Api-Key", KEY)
        .send()
        .await
        .unwrap();
    let d0 = date_of(&before);
    let (status, body) = control(&c, &sim, "/clock/advance", json!({"seconds": 7200})).await;
    assert_eq!(status, 200);
    let now = parse_ts(body["now"].as_str().unwrap()).unwrap();
    assert_eq!(now, sim.now());
    let after = c
        .get(format!("{}/clock", sim.control_url()))
        .send()
        .await
        .unwrap();
    let d1 = date_of(&after);
    let gap = d1.duration_since(d0).unwrap();
    assert!((7199..=7201).contains(&gap.as_secs()), "{gap:?}");
    assert_eq!(
        d1,
        httpdate::parse_http_date(&httpdate::fmt_http_date(now.into())).unwrap()
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn the_bot_answers_after_its_delay_unless_a_human_has_the_chat() {
    // A running clock: the bot is due 30 simulated seconds later, which the
    // test reaches by advancing the clock, not by waiting.
    let sim = sim::start(
        SimConfig {
            bot_delay: Some(Duration::from_secs(30)),
            ..SimConfig::default()
        },
        local(),
    )
    .await
    .unwrap();
    let c = client();
    let ai = sim.create_session(json!({"session_id": "ai"})).unwrap();
    sim.create_session(json!({"session_id": "human"})).unwrap();
    post(&c, &sim, "/web-chat/sessions/human/take-over", None).await;
    for id in ["ai", "human"] {
        let (status, body) = control(
            &c,
            &sim,
            &format!("/sessions/{id}/messages"),
            json!({"sender_type": "visitor", "text": "What does the Pro plan cost?"}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    assert_eq!(sim.session("ai").unwrap().messages.len(), 1);

    control(&c, &sim, "/clock/advance", json!({"seconds": 30})).await;
    assert!(eventually(|| sim.session("ai").is_some_and(|s| s.messages.len() == 2)).await);
    let (_, body) = get(&c, &sim, "/web-chat/sessions/ai").await;
    assert_eq!(body["data"]["messages"][1]["sender_type"], "bot");
    assert_eq!(body["data"]["has_visitor_messages"], true);
    let visitor_at = sim.session("ai").unwrap().messages[0].created_at.unwrap();
    let bot_at = sim.session("ai").unwrap().messages[1].created_at.unwrap();
    assert_eq!((bot_at - visitor_at).num_seconds(), 30);
    assert!(ai.session.created_at.unwrap() <= visitor_at);
    // The advance delivered everything due; the human's chat got no bot reply.
    assert_eq!(sim.session("human").unwrap().messages.len(), 1);

    // Asking for a person hands the chat off.
    sim.visitor_message("ai", "can I talk to a human?").unwrap();
    sim.advance(Duration::from_secs(30));
    let s = sim.session("ai").unwrap();
    assert_eq!(s.session.handled_by, HandledBy::Pending);
    assert!(s.session.human_requested_at.is_some());
    assert_eq!(s.messages.last().unwrap().text(), sim::HANDOFF_REPLY);
    assert_eq!(s.messages.last().unwrap().sender_type, SenderType::Bot);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_status_fault_is_served_once_with_retry_after() {
    let sim = frozen().await;
    let c = client();
    let (status, _) = control(
        &c,
        &sim,
        "/faults",
        json!({"method": "GET", "path_contains": "/sessions", "status": 503, "retry_after": 2,
               "latency_ms": 0, "malformed": false, "drop_connection": false,
               "after_store": false, "times": 1}),
    )
    .await;
    assert_eq!(status, 201);
    let url = format!("{}/web-chat/sessions", sim.base_url());
    let first = c.get(&url).header("X-Api-Key", KEY).send().await.unwrap();
    assert_eq!(first.status().as_u16(), 503);
    assert_eq!(first.headers().get("retry-after").unwrap(), "2");
    assert!(first.headers().get("date").is_some());
    let body: Value = first.json().await.unwrap();
    assert_eq!(
        body,
        json!({"success": false, "message": "Simulated failure."})
    );
    assert_eq!(get(&c, &sim, "/web-chat/sessions").await.0, 200);

    // A rule without a limit stays until cleared.
    sim.add_fault(Fault {
        times: None,
        ..Fault::status(500)
    })
    .unwrap();
    assert_eq!(get(&c, &sim, "/web-chat/analytics").await.0, 500);
    assert_eq!(get(&c, &sim, "/web-chat/analytics").await.0, 500);
    let cleared = c
        .delete(format!("{}/faults", sim.control_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status().as_u16(), 200);
    assert_eq!(get(&c, &sim, "/web-chat/analytics").await.0, 200);

    let log = sim.requests();
    let statuses: Vec<u16> = log.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 200, 500, 500, 200]);
    assert_eq!(log[0].path, "/api/v1/web-chat/sessions");
    assert_eq!(log[0].fault.as_deref(), Some("status"));
    // The control surface's view of the same log.
    let remote: Value = c
        .get(format!("{}/requests", sim.control_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(remote.as_array().map(Vec::len), Some(5));
    c.delete(format!("{}/requests", sim.control_url()))
        .send()
        .await
        .unwrap();
    assert!(sim.requests().is_empty());
    sim.shutdown().await;
}

#[tokio::test]
async fn a_dropped_connection_still_stores_the_message() {
    let sim = frozen().await;
    let c = client();
    let id = sim.create_session(json!({})).unwrap().session.session_id;
    sim.add_fault(Fault {
        method: Some("POST".into()),
        path_contains: Some("/messages".into()),
        drop_connection: true,
        ..Fault::default()
    })
    .unwrap();
    let sent = c
        .post(format!(
            "{}/web-chat/sessions/{id}/messages",
            sim.base_url()
        ))
        .header("X-Api-Key", KEY)
        .json(&json!({"message": "are you still there?"}))
        .send()
        .await;
    let client_saw_error = match sent {
        Err(_) => true,
        Ok(resp) => resp.bytes().await.is_err(),
    };
    assert!(client_saw_error, "the client must not see a success");
    let stored = sim.session(&id).unwrap().messages;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].text(), "are you still there?");
    // The next request is served normally.
    assert_eq!(
        get(&c, &sim, &format!("/web-chat/sessions/{id}")).await.0,
        200
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn after_store_malformed_and_latency_faults() {
    let sim = frozen().await;
    let c = client();
    let id = sim.create_session(json!({})).unwrap().session.session_id;
    let path = format!("/web-chat/sessions/{id}/messages");

    sim.add_fault(Fault {
        after_store: true,
        ..Fault::status(502)
    })
    .unwrap();
    assert_eq!(
        post(&c, &sim, &path, Some(json!({"message": "one"})))
            .await
            .0,
        502
    );
    assert_eq!(sim.session(&id).unwrap().messages.len(), 1);

    sim.add_fault(Fault::status(503)).unwrap();
    assert_eq!(
        post(&c, &sim, &path, Some(json!({"message": "two"})))
            .await
            .0,
        503
    );
    assert_eq!(sim.session(&id).unwrap().messages.len(), 1);

    sim.add_fault(Fault {
        malformed: true,
        ..Fault::default()
    })
    .unwrap();
    let resp = c
        .get(format!("{}/web-chat/sessions/{id}", sim.base_url()))
        .header("X-Api-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.json::<Value>().await.is_err());

    // A client that gives up during the latency still took the session over.
    sim.add_fault(Fault {
        latency_ms: 1500,
        ..Fault::default()
    })
    .unwrap();
    let timed_out = c
        .post(format!(
            "{}/web-chat/sessions/{id}/take-over",
            sim.base_url()
        ))
        .header("X-Api-Key", KEY)
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(timed_out.is_err());
    assert_eq!(
        sim.session(&id).unwrap().session.handled_by,
        HandledBy::Human
    );

    // Bad control input is a JSON error, not a crash.
    let bad = c
        .post(format!("{}/faults", sim.control_url()))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let (status, _) = control(&c, &sim, "/faults", json!({"status": 42})).await;
    assert_eq!(status, 422);
    let (status, _) = control(&c, &sim, "/clock/advance", json!({"seconds": -1})).await;
    assert_eq!(status, 422);
    let (status, _) = control(&c, &sim, "/sessions", json!({"status": "archived"})).await;
    assert_eq!(status, 422);
    let (status, _) = control(&c, &sim, "/sessions/nope/messages", json!({"text": "x"})).await;
    assert_eq!(status, 404);
    sim.shutdown().await;
}

#[tokio::test]
async fn control_surface_plays_the_visitor() {
    let sim = frozen().await;
    let c = client();
    let (status, created) = control(
        &c,
        &sim,
        "/sessions",
        json!({"visitor_name": "Ahmad", "visitor_email": "ahmad@example.com",
               "messages": [{"sender_type": "visitor", "text": "Hello!"},
                            {"sender_type": "bot", "text": "Hi!"}]}),
    )
    .await;
    assert_eq!(status, 201);
    let id = created["session_id"].as_str().unwrap().to_string();
    assert_eq!(created["messages"].as_array().map(Vec::len), Some(2));
    assert_eq!(created["handled_by"], "ai");
    assert_eq!(created["status"], "active");

    let (status, body) = control(
        &c,
        &sim,
        &format!("/sessions/{id}/request-human"),
        json!({}),
    )
    .await;
    assert_eq!(
        (status, body["handled_by"].clone()),
        (200, json!("pending"))
    );
    assert!(body["human_requested_at"].is_string());
    let (status, body) = control(&c, &sim, &format!("/sessions/{id}/leave"), json!({})).await;
    assert_eq!((status, body["status"].clone()), (200, json!("ended")));

    let all: Value = c
        .get(format!("{}/sessions", sim.control_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all[0]["session_id"], id.as_str());
    assert_eq!(all[0]["messages"][1]["message_text"], "Hi!");

    let (status, body) = get(&c, &sim, "/web-chat/analytics?period=today").await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["total_chats"], 1);
    assert_eq!(body["data"]["completed_chats"], 1);
    assert_eq!(body["data"]["bot_messages"], 1);
    assert_eq!(body["data"]["unique_visitors"], 1);
    assert_eq!(body["data"]["chart_data"]["chats"], json!([1]));
    sim.shutdown().await;
}

async fn traffic_sim(seed: u64) -> SimHandle {
    sim::start(
        SimConfig {
            seed,
            clock_speed: 0.0,
            traffic: Some(TrafficConfig { rate_per_min: 20.0 }),
            ..SimConfig::default()
        },
        local(),
    )
    .await
    .unwrap()
}

fn visitors(sim: &SimHandle) -> Vec<(Option<String>, Option<String>, usize)> {
    let mut all = sim.sessions();
    all.sort_by_key(|s| s.session.created_at);
    all.into_iter()
        .take(10)
        .map(|s| {
            (
                s.session.visitor_name,
                s.session.visitor_email,
                s.messages
                    .iter()
                    .filter(|m| m.sender_type == SenderType::Visitor)
                    .count(),
            )
        })
        .collect()
}

#[tokio::test]
async fn traffic_is_reproducible_from_the_seed() {
    let (a, b, other) = (
        traffic_sim(7).await,
        traffic_sim(7).await,
        traffic_sim(8).await,
    );
    for sim in [&a, &b, &other] {
        // Several steps, as a ticking clock would take them.
        for _ in 0..10 {
            sim.advance(Duration::from_secs(60));
        }
    }
    let first = visitors(&a);
    assert_eq!(first.len(), 10, "about 200 visitors expected in 10 minutes");
    assert_eq!(first, visitors(&b));
    assert_ne!(first, visitors(&other));

    let all = a.sessions();
    assert!(all
        .iter()
        .any(|s| s.messages.iter().any(|m| m.sender_type == SenderType::Bot)));
    assert!(all.iter().any(|s| s.session.status == SessionStatus::Ended));
    assert!(all
        .iter()
        .any(|s| s.session.handled_by == HandledBy::Pending));
    assert!(all.iter().any(|s| s.session.visitor_name.is_none()));
    for sim in [a, b, other] {
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn traffic_follows_a_running_clock() {
    // Ten simulated minutes per real second: visitors arrive and write on
    // their own, with no manual advance.
    let sim = sim::start(
        SimConfig {
            clock_speed: 600.0,
            traffic: Some(TrafficConfig { rate_per_min: 30.0 }),
            ..SimConfig::default()
        },
        local(),
    )
    .await
    .unwrap();
    let started = sim.now();
    assert!(
        eventually(|| sim
            .sessions()
            .iter()
            .any(|s| s.messages.iter().any(|m| m.sender_type == SenderType::Bot)))
        .await
    );
    assert!(sim.now() > started);
    let c = client();
    let (status, body) = get(&c, &sim, "/web-chat/sessions?status=active&per_page=100").await;
    assert_eq!(status, 200);
    assert!(body["meta"]["total"].as_u64().unwrap_or(0) >= 1);
    sim.shutdown().await;
}
