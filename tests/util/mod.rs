//! Helpers shared by the integration tests: a quiet simulator, seeding,
//! request-log counting, an address nobody listens on, and a fresh
//! PostgreSQL database per test.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};
use skyrules::sim::{self, RequestRecord, SimConfig, SimHandle};

/// 127.0.0.1 on a port the OS picks.
pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A simulator that changes nothing by itself: no bot, no traffic.
pub fn quiet(api_key: &str) -> SimConfig {
    SimConfig {
        api_key: api_key.to_string(),
        bot_delay: None,
        traffic: None,
        ..SimConfig::default()
    }
}

/// Starts a quiet simulator on a free loopback port.
pub async fn start_sim(api_key: &str) -> SimHandle {
    sim::start(quiet(api_key), loopback())
        .await
        .expect("start the simulator")
}

/// Creates a session from `body` and returns its id.
pub fn create(sim: &SimHandle, body: Value) -> String {
    sim.create_session(body)
        .expect("create a session")
        .session
        .session_id
}

/// Creates `n` plain sessions (visitor `Visitor N`) and returns their ids.
pub fn create_many(sim: &SimHandle, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| create(sim, json!({ "visitor_name": format!("Visitor {i}") })))
        .collect()
}

/// Requests in `log` with `method` whose path ends with `suffix`.
pub fn count(log: &[RequestRecord], method: &str, suffix: &str) -> usize {
    log.iter()
        .filter(|r| r.method == method && r.path.ends_with(suffix))
        .count()
}

/// A base URL on a loopback port nobody listens on (bound, then released).
pub fn dead_base_url() -> String {
    format!("http://{}/api/v1", free_addr())
}

/// A loopback address nobody listens on now (bound, then released): for a
/// listener a child process is told to open, or a dead server.
pub fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").to_string()
}

/// The skyrules binary with what configures it from the environment
/// removed (`SKYRULES_*`, `SKYLIGHT_API_KEY`, `RUST_LOG`), so that a
/// developer's shell never changes what a test sees.
pub fn skyrules_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_skyrules"));
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("SKYRULES_") || k == "SKYLIGHT_API_KEY" || k == "RUST_LOG" {
            cmd.env_remove(k.as_ref());
        }
    }
    cmd
}

/// A simulator served by its own runtime, for tests whose own thread runs
/// the binary synchronously.
pub struct BlockingSim {
    handle: SimHandle,
    _rt: tokio::runtime::Runtime,
}

impl std::ops::Deref for BlockingSim {
    type Target = SimHandle;
    fn deref(&self) -> &SimHandle {
        &self.handle
    }
}

impl BlockingSim {
    /// Starts a simulator configured by `config` on a free loopback port.
    pub fn start(config: SimConfig) -> BlockingSim {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let handle = rt
            .block_on(sim::start(config, loopback()))
            .expect("start the simulator");
        BlockingSim { handle, _rt: rt }
    }
}

/// Engine options for a test: rules from `rules_dir`, polling every
/// `poll_interval`, at most `max_replies` replies per chat in ten minutes,
/// four chats at a time, actions taken for real.
pub fn engine_options(
    rules_dir: &std::path::Path,
    poll_interval: std::time::Duration,
    max_replies: u32,
) -> skyrules::engine::EngineOptions {
    skyrules::engine::EngineOptions {
        rules_dir: rules_dir.to_path_buf(),
        poll_interval,
        dry_run: false,
        max_concurrency: 4,
        guard: skyrules::executor::Guard {
            max_replies,
            window: std::time::Duration::from_secs(600),
        },
        pending_interval: std::time::Duration::ZERO,
        trace_length: skyrules::trace::DEFAULT_TRACE_LENGTH,
    }
}

/// Runs a test alone in a child process of this test binary, for tests that
/// read process-wide state other tests change while they run (the metrics
/// recorder: every engine in the process counts into it). Call it first
/// with `module_path!()` and the test's name: it returns true in the child,
/// which goes on with the test's body, and in the parent waits for the
/// child, fails the test if the child failed, and returns false.
pub fn in_own_process(module: &str, test: &str) -> bool {
    const VAR: &str = "SKYRULES_TEST_IN_OWN_PROCESS";
    // libtest names tests by their path below the crate.
    let name = match module.split_once("::") {
        Some((_, below)) => format!("{below}::{test}"),
        None => test.to_string(),
    };
    if std::env::var(VAR).as_deref() == Ok(name.as_str()) {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(exe)
        .args([name.as_str(), "--exact", "--test-threads=1", "--nocapture"])
        .env(VAR, &name)
        .output()
        .expect("run the test in its own process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name}, run in its own process, failed:\n{stdout}\n{stderr}"
    );
    false
}

/// Polls `cond` every 50 ms until it holds (true) or `limit` passes (false).
pub fn wait_until(limit: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The variable naming the PostgreSQL server of the tests (a role that may
/// create databases).
const POSTGRES_URL_VAR: &str = "SKYRULES_TEST_POSTGRES_URL";

/// The tests' PostgreSQL server, from `SKYRULES_TEST_POSTGRES_URL`. Unset,
/// the Postgres tests skip themselves (one line says so), except in CI,
/// which must provide one.
pub fn postgres_url() -> Option<String> {
    if let Ok(url) = std::env::var(POSTGRES_URL_VAR) {
        if !url.trim().is_empty() {
            return Some(url.trim().to_string());
        }
    }
    if std::env::var_os("CI").is_some() {
        panic!("{POSTGRES_URL_VAR} is not set: CI must provide a PostgreSQL server (.ci/run starts one)");
    }
    static SAID: std::sync::Once = std::sync::Once::new();
    // Straight to stderr: the test harness would capture an eprintln!.
    SAID.call_once(|| {
        let _ = writeln!(
            std::io::stderr(),
            "postgres tests skipped: set {POSTGRES_URL_VAR}=postgres://user:password@localhost/dbname to run them"
        );
    });
    None
}

/// A new, empty database on the tests' server, its URL; one per call
/// (named after this process and a counter), so tests running at once
/// never share state. Databases left by test processes that are gone are
/// dropped first. The server URL's `sslmode` must allow a plain connection
/// (`prefer`, the default, or `disable`).
pub fn fresh_postgres_database() -> Option<String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    static SWEPT: std::sync::Once = std::sync::Once::new();
    let admin = postgres_url()?;
    let pid = std::process::id();
    let name = format!(
        "skyrules_test_{pid}_{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {POSTGRES_URL_VAR}: {e}"));
        let driver = tokio::spawn(conn);
        let mut stale = Vec::new();
        SWEPT.call_once(|| stale.push(()));
        if !stale.is_empty() {
            let rows = client
                .query(
                    "SELECT datname FROM pg_database WHERE datname LIKE 'skyrules\\_test\\_%'",
                    &[],
                )
                .await
                .expect("list test databases");
            for row in rows {
                let db: String = row.get(0);
                let owner = db.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
                let gone = owner.is_some_and(|p| {
                    p != pid && !std::path::Path::new(&format!("/proc/{p}")).exists()
                });
                if gone {
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                        .await;
                }
            }
        }
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .expect("drop an old test database");
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("create the test database {name}: {e}"));
        drop(client);
        let _ = driver.await;
    });
    Some(with_database(&admin, &name))
}

/// `url` naming database `name` instead of its own.
pub fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let (target, query) = match rest.split_once('?') {
        Some((t, q)) => (t, Some(q)),
        None => (rest, None),
    };
    let authority = target.split('/').next().unwrap_or_default();
    match query {
        Some(q) => format!("{scheme}://{authority}/{name}?{q}"),
        None => format!("{scheme}://{authority}/{name}"),
    }
}

/// A plain HTTP/1.1 GET: status and body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

/// The body of a chunked response, joined.
fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A child process killed (and reaped) when the test ends, whatever
/// happens.
pub struct Running(pub std::process::Child);

impl Running {
    /// Starts `cmd` with no stdin, stdout discarded and stderr (its log)
    /// written to `log`.
    pub fn logged(cmd: &mut std::process::Command, log: &std::path::Path) -> Running {
        use std::process::Stdio;
        Running(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).expect("log file"))
                .spawn()
                .expect("spawn skyrules"),
        )
    }
}

/// Rule (or file) `id`'s row on the status page of the first workspace.
pub fn rule_status(listen: &str, id: &str) -> Option<serde_json::Value> {
    let (200, body) = http_get(listen, "/status.json").ok()? else {
        return None;
    };
    let board: serde_json::Value = serde_json::from_str(&body).ok()?;
    board["workspaces"][0]["rules"]
        .as_array()?
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The texts of a chat's agent messages (skyrules' replies), oldest first.
pub fn agent_texts(sim: &BlockingSim, id: &str) -> Vec<String> {
    sim.session(id)
        .map(|d| {
            d.messages
                .iter()
                .filter(|m| m.sender_type == skyrules::api::SenderType::Agent)
                .map(|m| m.text().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// How many JSON log lines of `log` say `message` about `rule`.
pub fn logged(log: &std::path::Path, message: &str, rule: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == message && v["rule"] == rule)
        .count()
}
