//! Helpers shared by the integration tests: a quiet simulator, seeding,
//! request-log counting and an address nobody listens on.

use std::net::{SocketAddr, TcpListener};

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
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = listener.local_addr().expect("local addr").port();
    drop(listener);
    format!("http://127.0.0.1:{port}/api/v1")
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
