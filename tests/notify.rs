//! Outbound notifications against local receivers: payload shapes and
//! headers, retries, dedupe, isolation from a hanging endpoint, shutdown, and
//! secrets kept out of logs, errors and `Debug`.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use skyrules::notifications::{
    ChannelConfig, Channels, Delivery, DeliveryPolicy, Notification, Notifier, Refused,
};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Generous bound for anything that should happen "soon" on a loaded machine.
const SOON: Duration = Duration::from_secs(15);

/// Fast retries so tests take milliseconds, not seconds.
fn fast() -> DeliveryPolicy {
    DeliveryPolicy {
        request_timeout: Duration::from_secs(5),
        max_attempts: 5,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_retry_after: Duration::from_secs(3),
        queue_capacity: 16,
        shutdown_grace: Duration::from_millis(200),
    }
}

/// Writes `text` to `dir/name` and returns the path as a TOML literal string.
fn secret(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("{text}\n")).unwrap();
    format!("'{}'", p.display())
}

/// Parses `[notify.*]` tables the way the config file holds them.
fn raw(toml_text: &str) -> BTreeMap<String, ChannelConfig> {
    #[derive(serde::Deserialize)]
    struct Doc {
        notify: BTreeMap<String, ChannelConfig>,
    }
    toml::from_str::<Doc>(toml_text).unwrap().notify
}

fn channels(toml_text: &str) -> Channels {
    Channels::from_config(&raw(toml_text)).unwrap()
}

/// One Slack channel, `team`, posting to `server`'s `/hook` (its URL in a
/// secret file under `dir`).
fn slack_team(server: &MockServer, dir: &Path) -> Channels {
    let url = secret(dir, "url", &format!("{}/hook", server.uri()));
    channels(&format!(
        "[notify.team]\nkind = \"slack\"\nurl_file = {url}\n"
    ))
}

fn note(channel: &str, session: &str, text: &str) -> Notification {
    Notification {
        channel: channel.into(),
        session_id: session.into(),
        rule: "escalate-waiting".into(),
        text: text.into(),
    }
}

/// The next outcome matching `pred`, or a panic after `within`.
async fn wait_for(
    rx: &mut broadcast::Receiver<Delivery>,
    within: Duration,
    pred: impl Fn(&Delivery) -> bool,
) -> Delivery {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(d)) if pred(&d) => return d,
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(e)) => panic!("delivery channel closed: {e}"),
            Err(_) => panic!("no matching delivery within {within:?}"),
        }
    }
}

async fn requests(server: &MockServer) -> Vec<wiremock::Request> {
    server.received_requests().await.unwrap_or_default()
}

/// A receiver that accepts connections and never answers.
async fn hanging_receiver() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    addr
}

#[tokio::test]
async fn slack_payload_and_headers() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hooks/SECRET123"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let url = secret(
        dir.path(),
        "url",
        &format!("{}/hooks/SECRET123", server.uri()),
    );
    let chans = channels(&format!(
        "[notify.team]\nkind = \"slack\"\nurl_file = {url}\n"
    ));
    assert_eq!(chans.names(), vec!["team".to_string()]);
    assert!(chans.contains("team") && !chans.contains("oncall"));

    let shutdown = CancellationToken::new();
    let notifier = Notifier::start_with(chans, fast(), shutdown.clone());
    let mut rx = notifier.delivered();
    notifier
        .send(note("team", "sess_42", "Visitor waited 2m for a human"))
        .unwrap();
    let d = wait_for(&mut rx, SOON, |_| true).await;
    assert_eq!(
        d,
        Delivery {
            channel: "team".into(),
            session_id: "sess_42".into(),
            rule: "escalate-waiting".into(),
            ok: true,
            attempts: 1,
            error: None,
        }
    );

    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.headers["content-type"], "application/json");
    assert!(r.headers["user-agent"]
        .to_str()
        .unwrap()
        .starts_with("skyrules/"));
    assert!(r.headers.get("authorization").is_none());
    let body: Value = r.body_json().unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "text": "[skyrules] Visitor waited 2m for a human (session sess_42, rule escalate-waiting)"
        })
    );
    shutdown.cancel();
}

#[tokio::test]
async fn webhook_payload_with_bearer_token() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/in"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let url = secret(dir.path(), "url", &format!("{}/in", server.uri()));
    let token = secret(dir.path(), "token", "TOKSECRET42");
    let chans = channels(&format!(
        "[notify.ops]\nkind = \"webhook\"\nurl_file = {url}\ntoken_file = {token}\n"
    ));
    let shutdown = CancellationToken::new();
    let notifier = Notifier::start_with(chans, fast(), shutdown.clone());
    let mut rx = notifier.delivered();
    notifier
        .send(note("ops", "sess_7", "refund requested"))
        .unwrap();
    let d = wait_for(&mut rx, SOON, |_| true).await;
    assert!(d.ok && d.attempts == 1, "{d:?}");

    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.headers["authorization"], "Bearer TOKSECRET42");
    let body: Value = r.body_json().unwrap();
    assert_eq!(body["source"], "skyrules");
    assert_eq!(body["channel"], "ops");
    assert_eq!(body["session_id"], "sess_7");
    assert_eq!(body["rule"], "escalate-waiting");
    assert_eq!(body["text"], "refund requested");
    let sent_at = body["sent_at"].as_str().unwrap();
    let t = chrono::DateTime::parse_from_rfc3339(sent_at).expect("RFC 3339 sent_at");
    assert!(
        (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
            .num_seconds()
            .abs()
            < 60
    );
    assert_eq!(body.as_object().unwrap().len(), 6, "{body}");
    shutdown.cancel();
}

#[tokio::test]
async fn pagerduty_event_shape() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/enqueue"))
        .respond_with(
            ResponseTemplate::new(202).set_body_json(
                serde_json::json!({"status": "success", "message": "Event processed"}),
            ),
        )
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let url = secret(dir.path(), "url", &format!("{}/v2/enqueue", server.uri()));
    let key = secret(dir.path(), "key", "PDKEY0123456789");
    let chans = channels(&format!(
        "[notify.oncall]\nkind = \"pagerduty\"\nurl_file = {url}\nrouting_key_file = {key}\nseverity = \"critical\"\n"
    ));
    let shutdown = CancellationToken::new();
    let notifier = Notifier::start_with(chans, fast(), shutdown.clone());
    let mut rx = notifier.delivered();
    let long = "y".repeat(2000);
    notifier.send(note("oncall", "sess_9", &long)).unwrap();
    let d = wait_for(&mut rx, SOON, |_| true).await;
    assert!(d.ok && d.attempts == 1, "{d:?}");

    let reqs = requests(&server).await;
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].headers["content-type"], "application/json");
    let body: Value = reqs[0].body_json().unwrap();
    assert_eq!(body["routing_key"], "PDKEY0123456789");
    assert_eq!(body["event_action"], "trigger");
    assert_eq!(body["dedup_key"], "skyrules-sess_9-oncall");
    let p = &body["payload"];
    assert_eq!(p["source"], "skyrules");
    assert_eq!(p["severity"], "critical");
    assert_eq!(
        p["custom_details"],
        serde_json::json!({"session_id": "sess_9", "rule": "escalate-waiting"})
    );
    assert!(p["summary"].as_str().unwrap().chars().count() <= 1024);
    assert!(p["summary"].as_str().unwrap().starts_with("yyyy"));
    shutdown.cancel();
}

#[tokio::test]
async fn retries_on_500_then_delivers_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_string("boom"))
        .up_to_n_times(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let chans = slack_team(&server, dir.path());
    let shutdown = CancellationToken::new();
    let notifier = Notifier::start_with(chans, fast(), shutdown.clone());
    let mut rx = notifier.delivered();
    notifier.send(note("team", "sess_1", "help")).unwrap();
    let d = wait_for(&mut rx, SOON, |_| true).await;
    assert!(d.ok, "{d:?}");
    assert_eq!(d.attempts, 3);
    assert_eq!(d.error, None);
    assert_eq!(requests(&server).await.len(), 3);
    shutdown.cancel();
}

#[tokio::test]
async fn honours_retry_after_on_429() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "1"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let chans = slack_team(&server, dir.path());
    let shutdown = CancellationToken::new();
    let notifier = Notifier::start_with(chans, fast(), shutdown.clone());
    let mut rx = notifier.delivered();
    let started = Instant::now();
    notifier.send(note("team", "sess_1", "help")).unwrap();
    let d = wait_for(&mut rx, SOON, |_| true).await;
    assert!(d.ok && d.attempts == 2, "{d:?}");
    // Backoff alone would retry after at most 50 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "retried after {:?}",
        started.elapsed()
    );
    shutdown.cancel();
}

#[tokio::test]
async fn gives_up_after_max_attempts() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_string("maintenance"))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let chans = slack_team(&server, dir.path());
    let shutdown = CancellationToken::new();
    let policy = DeliveryPolicy {
        max_attempts: 3,
        ..fast()
    };
    let notifier = Notifier::start_with(chans, policy, shutdown.clone());
    let mut rx = notifier.delivered();
    notifier.send(note("team", "sess_1", "help")).unwrap();
    let d = wait_for(&mut rx, SOON, |_| true).await;
    assert!(!d.ok);
    assert_eq!(d.attempts, 3);
    let e = d.error.unwrap();
    assert!(
        e.contains("HTTP 503") && e.contains("maintenance") && e.contains("gave up"),
        "{e}"
    );
    assert_eq!(requests(&server).await.len(), 3);
    shutdown.cancel();
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_string("invalid_payload"))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let chans = slack_team(&server, dir.path());
    let shutdown = CancellationToken::new();
    let notifier = Notifier::start_with(chans, fast(), shutdown.clone());
    let mut rx = notifier.delivered();
    notifier.send(note("team", "sess_1", "help")).unwrap();
    let d = wait_for(&mut rx, SOON, |_| true).await;
    assert!(!d.ok);
    assert_eq!(d.attempts, 1);
    let e = d.error.unwrap();
    assert!(
        e.contains("HTTP 400") && e.contains("invalid_payload"),
        "{e}"
    );
    // Give a (wrong) retry time to happen: fast backoff is ≤ 50 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(requests(&server).await.len(), 1);
    shutdown.cancel();
}

#[tokio::test]
async fn dedupes_per_session_and_channel() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let url = secret(dir.path(), "url", &format!("{}/hook", server.uri()));
    let chans = channels(&format!(
        "[notify.team]\nkind = \"slack\"\nurl_file = {url}\n\
         [notify.oncall]\nkind = \"webhook\"\nurl_file = {url}\n\
         [notify.brief]\nkind = \"webhook\"\nurl_file = {url}\ndedupe = \"300ms\"\n\
         [notify.every]\nkind = \"webhook\"\nurl_file = {url}\ndedupe = \"0s\"\n"
    ));
    let shutdown = CancellationToken::new();
    let notifier = Notifier::start_with(chans, fast(), shutdown.clone());
    let mut rx = notifier.delivered();

    assert_eq!(notifier.send(note("team", "sess_1", "first")), Ok(()));
    assert_eq!(
        notifier.send(note("team", "sess_1", "second")),
        Err(Refused::Duplicate {
            window: Duration::from_secs(600)
        })
    );
    // Another session, or another channel, is its own pair.
    assert_eq!(
        notifier.send(note("team", "sess_2", "other session")),
        Ok(())
    );
    assert_eq!(
        notifier.send(note("oncall", "sess_1", "chain step 2")),
        Ok(())
    );
    // A short window expires.
    assert_eq!(notifier.send(note("brief", "sess_1", "a")), Ok(()));
    assert!(matches!(
        notifier.send(note("brief", "sess_1", "b")),
        Err(Refused::Duplicate { .. })
    ));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(notifier.send(note("brief", "sess_1", "c")), Ok(()));
    // A zero window turns dedupe off.
    assert_eq!(notifier.send(note("every", "sess_1", "x")), Ok(()));
    assert_eq!(notifier.send(note("every", "sess_1", "y")), Ok(()));

    let mut seen = Vec::new();
    for _ in 0..7 {
        let d = wait_for(&mut rx, SOON, |_| true).await;
        assert!(d.ok, "{d:?}");
        seen.push((d.channel, d.session_id));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("brief".to_string(), "sess_1".to_string()),
            ("brief".to_string(), "sess_1".to_string()),
            ("every".to_string(), "sess_1".to_string()),
            ("every".to_string(), "sess_1".to_string()),
            ("oncall".to_string(), "sess_1".to_string()),
            ("team".to_string(), "sess_1".to_string()),
            ("team".to_string(), "sess_2".to_string()),
        ]
    );
    // The refused "second" never reached the receiver.
    let texts: Vec<String> = requests(&server)
        .await
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(texts.len(), 7);
    assert!(!texts.iter().any(|t| t.contains("second")));
    shutdown.cancel();
}

#[tokio::test]
async fn unknown_channel_is_refused() {
    let shutdown = CancellationToken::new();
    let notifier = Notifier::start_with(Channels::default(), fast(), shutdown.clone());
    assert_eq!(
        notifier.send(note("nowhere", "sess_1", "x")),
        Err(Refused::UnknownChannel("nowhere".into()))
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_channel_blocks_neither_caller_nor_other_channels() {
    let hang = hanging_receiver().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let slow = secret(dir.path(), "slow", &format!("http://{hang}/hooks/slow"));
    let fine = secret(dir.path(), "fine", &format!("{}/hook", server.uri()));
    let chans = channels(&format!(
        "[notify.a]\nkind = \"slack\"\nurl_file = {slow}\n\
         [notify.b]\nkind = \"slack\"\nurl_file = {fine}\n"
    ));
    let shutdown = CancellationToken::new();
    let policy = DeliveryPolicy {
        // Much longer than the test: A stays in flight until shutdown.
        request_timeout: Duration::from_secs(120),
        queue_capacity: 2,
        ..fast()
    };
    let notifier = Notifier::start_with(chans, policy, shutdown.clone());
    let mut rx = notifier.delivered();

    let started = Instant::now();
    notifier
        .send(note("a", "sess_a1", "to the hanging one"))
        .unwrap();
    notifier
        .send(note("b", "sess_b1", "to the good one"))
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "send took {:?}",
        started.elapsed()
    );
    let d = wait_for(&mut rx, SOON, |d| d.channel == "b").await;
    assert!(d.ok && d.attempts == 1, "{d:?}");

    // A's first notification is in flight (taken off the queue) and stuck.
    let deadline = Instant::now() + SOON;
    while notifier.queued("a") > 0 {
        assert!(
            Instant::now() < deadline,
            "A's notification never left the queue"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A's queue fills behind the stuck request; the oldest waiting one goes.
    for s in ["sess_a2", "sess_a3", "sess_a4"] {
        let t = Instant::now();
        notifier.send(note("a", s, "more")).unwrap();
        assert!(t.elapsed() < Duration::from_millis(500));
    }
    let dropped = wait_for(&mut rx, SOON, |d| d.channel == "a").await;
    assert!(!dropped.ok && dropped.attempts == 0, "{dropped:?}");
    assert!(
        dropped.error.as_deref().unwrap().contains("queue was full"),
        "{dropped:?}"
    );
    assert_eq!(dropped.session_id, "sess_a2");

    // B still flows while A hangs.
    notifier.send(note("b", "sess_b2", "again")).unwrap();
    let d = wait_for(&mut rx, SOON, |d| d.channel == "b").await;
    assert!(d.ok && d.session_id == "sess_b2", "{d:?}");

    // Shutdown: after the grace, A's in-flight and queued ones are reported unsent.
    shutdown.cancel();
    let mut unsent = Vec::new();
    for _ in 0..3 {
        let d = wait_for(&mut rx, SOON, |d| d.channel == "a").await;
        assert!(!d.ok, "{d:?}");
        assert!(
            d.error.as_deref().unwrap().contains("shutting down"),
            "{d:?}"
        );
        unsent.push(d.session_id);
    }
    unsent.sort();
    assert_eq!(unsent.len(), 3);
    tokio::time::timeout(SOON, notifier.stopped())
        .await
        .expect("delivery tasks end after the grace");

    // A send after the tasks ended is accepted and reported as unsent.
    notifier.send(note("b", "sess_b3", "late")).unwrap();
    let d = wait_for(&mut rx, SOON, |d| d.session_id == "sess_b3").await;
    assert!(!d.ok && d.attempts == 0, "{d:?}");
}

#[tokio::test]
async fn shutdown_lets_queued_notifications_out_within_the_grace() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(50)))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let chans = slack_team(&server, dir.path());
    let shutdown = CancellationToken::new();
    let policy = DeliveryPolicy {
        shutdown_grace: Duration::from_secs(10),
        ..fast()
    };
    let notifier = Notifier::start_with(chans, policy, shutdown.clone());
    let mut rx = notifier.delivered();
    for s in ["sess_1", "sess_2", "sess_3"] {
        notifier.send(note("team", s, "x")).unwrap();
    }
    shutdown.cancel();
    for _ in 0..3 {
        let d = wait_for(&mut rx, SOON, |_| true).await;
        assert!(d.ok, "{d:?}");
    }
    tokio::time::timeout(SOON, notifier.stopped())
        .await
        .expect("tasks end once the queue is empty");
}

#[test]
fn config_errors_name_the_key_never_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");

    let e = Channels::from_config(&raw(&format!(
        "[notify.team]\nkind = \"slack\"\nurl_file = '{}'\n",
        missing.display()
    )))
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("`notify.team.url_file`: cannot read"), "{e}");
    assert!(e.contains(&missing.display().to_string()), "{e}");

    let e = Channels::from_config(&raw(&format!(
        "[notify.oncall]\nkind = \"pagerduty\"\nrouting_key_file = '{}'\n",
        missing.display()
    )))
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("`notify.oncall.routing_key_file`: cannot read"),
        "{e}"
    );

    let e = Channels::from_config(&raw("[notify.oncall]\nkind = \"pagerduty\"\n"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("`notify.oncall.routing_key_file`"), "{e}");

    let e = Channels::from_config(&raw("[notify.team]\nkind = \"slack\"\n"))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("`notify.team.url_file`"), "{e}");

    // Environment variables: unset, and set to something that is not a URL.
    let e = Channels::from_config(&raw(
        "[notify.team]\nkind = \"slack\"\nurl_env = \"SKYRULES_TEST_NOTIFY_UNSET_VAR\"\n",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("`notify.team.url_env`") && e.contains("SKYRULES_TEST_NOTIFY_UNSET_VAR"),
        "{e}"
    );
    std::env::set_var(
        "SKYRULES_TEST_NOTIFY_BAD_URL",
        "hooks.slack.example/SECRET123",
    );
    let e = Channels::from_config(&raw(
        "[notify.team]\nkind = \"slack\"\nurl_env = \"SKYRULES_TEST_NOTIFY_BAD_URL\"\n",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("`notify.team.url_env`"), "{e}");
    assert!(!e.contains("SECRET123"), "{e}");

    // Unknown keys are rejected by serde.
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Doc {
        notify: BTreeMap<String, ChannelConfig>,
    }
    let err = toml::from_str::<Doc>("[notify.team]\nkind = \"slack\"\nurl = \"https://x\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("url"), "{err}");

    // A working config from the environment; its Debug shows no secret.
    std::env::set_var(
        "SKYRULES_TEST_NOTIFY_GOOD_URL",
        "https://hooks.slack.example/services/SECRET123",
    );
    std::env::set_var("SKYRULES_TEST_NOTIFY_PD_KEY", "PDKEYSECRET456");
    let chans = Channels::from_config(&raw(
        "[notify.team]\nkind = \"slack\"\nurl_env = \"SKYRULES_TEST_NOTIFY_GOOD_URL\"\n\
         [notify.oncall]\nkind = \"pagerduty\"\nrouting_key_env = \"SKYRULES_TEST_NOTIFY_PD_KEY\"\n",
    ))
    .unwrap();
    let shown = format!("{chans:?} {chans:#?}");
    assert!(
        shown.contains("team") && shown.contains("oncall"),
        "{shown}"
    );
    assert!(
        !shown.contains("SECRET123")
            && !shown.contains("PDKEYSECRET456")
            && !shown.contains("hooks."),
        "{shown}"
    );
}

/// A `MakeWriter` that appends to a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// Everything logged on this thread at TRACE, including the `log` records of
/// reqwest (forwarded by the `LogTracer` the global init installs).
fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(io::sink)
        .try_init();
    let buf = Captured::default();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(buf.clone())
        .finish();
    let guard = tracing::subscriber::set_default(sub);
    (buf, guard)
}

// Current-thread runtime: every task runs on this thread, under the capture.
#[tokio::test]
async fn secrets_never_appear_in_logs_or_outcomes() {
    let (logs, _guard) = capture_logs();
    let server = MockServer::start().await;
    // Receivers that fail and echo the secrets back in their error bodies.
    Mock::given(method("POST"))
        .and(path("/hooks/SECRET123"))
        .respond_with(
            ResponseTemplate::new(500).set_body_string("no luck at /hooks/SECRET123 for you"),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/pd/SECRETPD77"))
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_string(r#"{"status":"invalid event","routing_key":"PDKEYSECRET456"}"#),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/ok/SECRETOK88"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let slack = secret(
        dir.path(),
        "slack",
        &format!("{}/hooks/SECRET123", server.uri()),
    );
    let pd_url = secret(dir.path(), "pd", &format!("{}/pd/SECRETPD77", server.uri()));
    let pd_key = secret(dir.path(), "pdkey", "PDKEYSECRET456");
    let ok_url = secret(
        dir.path(),
        "ok",
        &format!("{}/ok/SECRETOK88?sig=SIGSECRET99", server.uri()),
    );
    let token = secret(dir.path(), "token", "TOKSECRET42");
    let refused = secret(
        dir.path(),
        "refused",
        &format!("http://{}/hooks/SECRETDOWN55", crate::util::free_addr()),
    );
    let chans = channels(&format!(
        "[notify.team]\nkind = \"slack\"\nurl_file = {slack}\n\
         [notify.oncall]\nkind = \"pagerduty\"\nurl_file = {pd_url}\nrouting_key_file = {pd_key}\n\
         [notify.hook]\nkind = \"webhook\"\nurl_file = {ok_url}\ntoken_file = {token}\n\
         [notify.down]\nkind = \"webhook\"\nurl_file = {refused}\n"
    ));
    let secrets = [
        "SECRET123",
        "SECRETPD77",
        "PDKEYSECRET456",
        "SECRETOK88",
        "SIGSECRET99",
        "TOKSECRET42",
        "SECRETDOWN55",
    ];
    let shutdown = CancellationToken::new();
    let policy = DeliveryPolicy {
        max_attempts: 3,
        ..fast()
    };
    let notifier = Notifier::start_with(chans.clone(), policy, shutdown.clone());
    tracing::info!(channels = ?chans, notifier = ?notifier, "started");
    let mut rx = notifier.delivered();
    for ch in ["team", "oncall", "hook", "down"] {
        notifier
            .send(note(ch, "sess_1", "VISITOR-PII says hello"))
            .unwrap();
    }
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        outcomes.push(wait_for(&mut rx, SOON, |_| true).await);
    }
    outcomes.sort_by(|a, b| a.channel.cmp(&b.channel));
    let by = |c: &str| outcomes.iter().find(|d| d.channel == c).unwrap().clone();
    let team = by("team");
    assert!(!team.ok && team.attempts == 3, "{team:?}");
    assert!(
        team.error.as_deref().unwrap().contains("HTTP 500"),
        "{team:?}"
    );
    let oncall = by("oncall");
    assert!(!oncall.ok && oncall.attempts == 1, "{oncall:?}");
    let down = by("down");
    assert!(!down.ok && down.attempts == 3, "{down:?}");
    assert!(
        down.error.as_deref().unwrap().contains("connect"),
        "{down:?}"
    );
    assert!(by("hook").ok);

    shutdown.cancel();
    tokio::time::timeout(SOON, notifier.stopped())
        .await
        .unwrap();

    let text = logs.text();
    assert!(text.contains("notification delivered"), "{text}");
    assert!(text.contains("notification failed; retrying"), "{text}");
    assert!(text.contains("notification not delivered"), "{text}");
    for s in secrets {
        assert!(!text.contains(s), "{s} leaked into the logs:\n{text}");
        for d in &outcomes {
            assert!(
                !d.error.as_deref().unwrap_or("").contains(s),
                "{s} leaked into {d:?}"
            );
        }
    }
    // Notification texts (visitor data) are logged at debug level only.
    for line in text.lines().filter(|l| l.contains("VISITOR-PII")) {
        assert!(line.contains("DEBUG"), "text logged above debug: {line}");
    }
    for d in &outcomes {
        assert!(!d.error.as_deref().unwrap_or("").contains("VISITOR-PII"));
    }
}
