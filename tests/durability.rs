//! Durability of the real `skyrules` binary (SPEC §2 "After a restart,
//! skyrules picks up exactly where it stopped", §5 state and delivery).
//!
//! The engine runs as a child process against an in-process simulator and
//! is SIGKILLed and restarted at random points while visitors write; the
//! simulator's messages must then hold exactly one reply per event. The
//! other tests cover restarts around a human request and `ev.once`, the
//! state-file lock, migrations and corrupt files, SIGTERM, and `audit`.
//! The last two tests pin bugs found here: a due timer lost to a kill
//! between two actions of its cycle, and the loop guard seeded on an
//! uncalibrated clock.
//!
//! The tests that hold for any state store run twice, on a SQLite file
//! and on PostgreSQL (`SKYRULES_STATE_URL`, a fresh database each; skipped
//! without `SKYRULES_TEST_POSTGRES_URL`, required in CI), as
//! `<test>::sqlite` and `<test>::postgres`; the PostgreSQL runs also check
//! that no SQLite file was written. The lock-file, empty-file and
//! garbage-file tests are SQLite's alone; the database outage test (a
//! relay to the server cut and restored) is PostgreSQL's.
//!
//! The crash test's seed can be replayed with `DURABILITY_SEED=<n>`.
//!
//! Tests run one at a time (see [`serial`]): they time real processes and
//! the machine they run on may be small and busy.

use crate::util::{self, wait_until};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use skyrules::api::{HandledBy, Message, SenderType, SessionDetail, Timestamp};
use skyrules::sim::{Fault, SimConfig};

const KEY: &str = "sk_test_durability_KEY";
const POLL: &str = "200ms";
/// How long a process gets to exit after SIGTERM or a startup error.
const EXIT_LIMIT: Duration = Duration::from_secs(15);
/// The generous limit of every wait on a condition.
const WAIT_LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// One test at a time: each drives real processes on real timers.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

type Sim = util::BlockingSim;

/// Which store a test's engines keep their state in.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The state to use, or `None` when this backend is not available.
    fn state(self) -> Option<State> {
        match self {
            Backend::Sqlite => Some(State::Sqlite),
            Backend::Postgres => util::fresh_postgres_database().map(State::Postgres),
        }
    }
}

/// A test's state: the `--state` file, or a database URL given to every
/// command in `SKYRULES_STATE_URL` (the `--state` flag is then unused).
enum State {
    Sqlite,
    Postgres(String),
}

/// Runs each test function once per backend, as `<test>::sqlite` and
/// `<test>::postgres`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn sqlite() {
                    super::$name(super::Backend::Sqlite)
                }
                #[test]
                fn postgres() {
                    super::$name(super::Backend::Postgres)
                }
            }
        )*
    };
}

on_both_stores!(
    sigkill_at_random_points_loses_no_event_and_sends_no_reply_twice,
    a_human_request_made_while_stopped_is_taken_over_once_after_restart,
    once_is_remembered_across_restarts,
    sigterm_mid_run_finishes_in_flight_work_and_exits_0,
    a_due_timer_survives_a_kill_between_the_actions_of_its_cycle,
    the_loop_guard_seeded_at_restart_uses_the_servers_clock,
);

/// A simulator on a real-time clock with a silent bot and no generated
/// traffic: every message in it is the test's or the engine's.
fn start_sim() -> Sim {
    Sim::start(SimConfig {
        api_key: KEY.to_string(),
        seed: 7,
        bot_delay: None,
        clock_speed: 1.0,
        traffic: None,
    })
}

impl Sim {
    fn create(&self, body: Value) -> String {
        self.create_session(body)
            .expect("create a session")
            .session
            .session_id
    }

    fn say(&self, id: &str, text: &str) -> Message {
        self.visitor_message(id, text).expect("visitor message")
    }

    fn detail(&self, id: &str) -> SessionDetail {
        self.session(id).expect("session exists")
    }

    /// `GET /web-chat/sessions` requests served so far: one per poll.
    fn list_polls(&self) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with("/web-chat/sessions"))
            .count()
    }

    /// Requests with `method` whose path ends with `suffix`.
    fn count_requests(&self, method: &str, suffix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path.ends_with(suffix))
            .count()
    }
}

fn agent_texts(d: &SessionDetail) -> Vec<String> {
    d.messages
        .iter()
        .filter(|m| m.sender_type == SenderType::Agent)
        .map(|m| m.text().to_string())
        .collect()
}

fn count_text(d: &SessionDetail, text: &str) -> usize {
    agent_texts(d).iter().filter(|t| *t == text).count()
}

fn secs_between(from: Timestamp, to: Timestamp) -> f64 {
    (to - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after `limit`.
fn wait_for(what: &str, limit: Duration, cond: impl FnMut() -> bool) {
    if !wait_until(limit, cond) {
        panic!("timed out after {limit:?} waiting for {what}");
    }
}

/// What a finished command left behind.
struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A working directory for the binary: `rules/`, `skyrules.toml`, the state
/// file and one stdout/stderr pair per process started. When the test
/// fails, the logs' tails are printed and the directory is kept.
struct Workdir {
    dir: Option<tempfile::TempDir>,
    base_url: String,
    runs: usize,
    state_url: Option<String>,
}

impl Workdir {
    fn new(state: &State, base_url: &str, rules: &[(&str, &str)]) -> Workdir {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules_dir = dir.path().join("rules");
        fs::create_dir(&rules_dir).expect("rules dir");
        for (name, source) in rules {
            fs::write(rules_dir.join(name), source).expect("write rule");
        }
        // The loop guard would cap a busy test chat; it is not under test here.
        fs::write(
            dir.path().join("skyrules.toml"),
            "[guard]\nmax_replies = 100000\nwindow = \"10m\"\n",
        )
        .expect("write config");
        fs::create_dir(dir.path().join("logs")).expect("logs dir");
        Workdir {
            dir: Some(dir),
            base_url: base_url.to_string(),
            runs: 0,
            state_url: match state {
                State::Sqlite => None,
                State::Postgres(url) => Some(url.clone()),
            },
        }
    }

    /// Checks the state went where it should: with PostgreSQL, no SQLite
    /// file (neither `--state` nor the default `skyrules.db`) was written.
    fn assert_state_in(&self, state: &State) {
        let files = [
            self.state(),
            self.path().join("state.db.lock"),
            self.path().join("skyrules.db"),
        ];
        match state {
            State::Sqlite => assert!(self.state().exists(), "no state file"),
            State::Postgres(_) => {
                for f in files {
                    assert!(!f.exists(), "{} was written", f.display());
                }
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().expect("workdir").path()
    }

    fn state(&self) -> PathBuf {
        self.path().join("state.db")
    }

    /// The binary with `args`, in this directory, with a clean environment
    /// (no `SKYRULES_*` but the state URL, no `RUST_LOG`) and the key in
    /// `SKYLIGHT_API_KEY`;
    /// stdout and stderr go to `logs/<n>-<tag>.{out,err}`.
    fn command(&mut self, tag: &str, args: &[&str]) -> (Command, PathBuf, PathBuf) {
        self.runs += 1;
        let logs = self.path().join("logs");
        let out = logs.join(format!("{:02}-{tag}.out", self.runs));
        let err = logs.join(format!("{:02}-{tag}.err", self.runs));
        let mut cmd = util::skyrules_command();
        if let Some(url) = &self.state_url {
            // One replica, restarted under the same id (as a container
            // in its pod): it takes its workspace back at once instead of
            // waiting for the killed run's lease to expire.
            cmd.env("SKYRULES_STATE_URL", url)
                .env("SKYRULES_REPLICA", "durability");
        }
        cmd.env("SKYLIGHT_API_KEY", KEY)
            .current_dir(self.path())
            .arg("--base-url")
            .arg(&self.base_url)
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("stdout file"))
            .stderr(File::create(&err).expect("stderr file"));
        (cmd, out, err)
    }

    /// Starts `skyrules run` on this directory's rules and state.
    fn spawn_engine(&mut self) -> Engine {
        self.spawn_engine_with(&[])
    }

    /// Like [`Workdir::spawn_engine`], with more flags of `run`.
    fn spawn_engine_with(&mut self, extra: &[&str]) -> Engine {
        let rules = self.path().join("rules").display().to_string();
        let state = self.state().display().to_string();
        let mut args = vec![
            "--log-level",
            "skyrules=debug",
            "run",
            "--rules",
            &rules,
            "--state",
            &state,
            "--poll-interval",
            POLL,
        ];
        args.extend_from_slice(extra);
        let (mut cmd, _, err) = self.command("run", &args);
        let child = cmd.spawn().expect("spawn skyrules run");
        Engine { child, err }
    }

    /// Runs a command to its end (bounded).
    fn run_cli(&mut self, tag: &str, args: &[&str]) -> Output {
        let (mut cmd, out, err) = self.command(tag, args);
        let mut child = cmd.spawn().expect("spawn skyrules");
        let status = wait_exit(&mut child, EXIT_LIMIT).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("skyrules {args:?} did not finish within {EXIT_LIMIT:?}");
        });
        Output {
            code: status.code(),
            stdout: fs::read_to_string(out).unwrap_or_default(),
            stderr: fs::read_to_string(err).unwrap_or_default(),
        }
    }

    /// How often each needle occurs in all the logs, as `label: n, …`.
    fn log_counts(&self, needles: &[(&str, &str)]) -> String {
        let mut all = String::new();
        if let Ok(entries) = fs::read_dir(self.path().join("logs")) {
            for e in entries.flatten() {
                all.push_str(&fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        needles
            .iter()
            .map(|(label, needle)| format!("{label}: {}", all.matches(needle).count()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn dump_logs(&self) {
        let Ok(entries) = fs::read_dir(self.path().join("logs")) else {
            return;
        };
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for f in files {
            let text = fs::read_to_string(&f).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let skip = lines.len().saturating_sub(40);
            eprintln!(
                "===== {} ({} lines, last {})",
                f.display(),
                lines.len(),
                lines.len() - skip
            );
            for l in &lines[skip..] {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
            if let Some(dir) = self.dir.take() {
                eprintln!("work directory kept: {}", dir.keep().display());
            }
        }
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `skyrules run`; killed (SIGKILL) if dropped while running.
struct Engine {
    child: Child,
    err: PathBuf,
}

impl Engine {
    fn stderr(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Panics (with its stderr) if the engine has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("the engine exited early ({status}):\n{}", self.stderr());
        }
    }

    /// SIGKILL, then reap.
    fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the engine");
        self.child.wait().expect("reap the engine");
    }

    /// SIGTERM; returns the exit status once it exits (bounded).
    fn terminate(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill -TERM");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let started = Instant::now();
        let status = wait_exit(&mut self.child, EXIT_LIMIT).unwrap_or_else(|| {
            panic!(
                "the engine did not exit within {EXIT_LIMIT:?} of SIGTERM:\n{}",
                self.stderr()
            )
        });
        eprintln!(
            "engine exited {status} {:?} after SIGTERM",
            started.elapsed()
        );
        (status, self.stderr())
    }

    /// SIGTERM and expect a clean exit 0 with no panic.
    fn stop(self) -> String {
        let (status, stderr) = self.terminate();
        assert_eq!(status.code(), Some(0), "exit after SIGTERM:\n{stderr}");
        assert_clean(&stderr);
        stderr
    }

    /// Waits until `n` more polls than `before` were served, and checks the
    /// engine is still alive.
    fn wait_polls(&mut self, sim: &Sim, before: usize, n: usize) {
        wait_for(&format!("{n} polls"), WAIT_LIMIT, || {
            self.assert_running();
            sim.list_polls() >= before + n
        });
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn assert_clean(stderr: &str) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("internal error"),
        "the engine panicked:\n{stderr}"
    );
}

/// Starts an engine and waits for its first cycle to be committed (the
/// second poll begins only after the first cycle's commit).
fn start_engine(wd: &mut Workdir, sim: &Sim) -> Engine {
    let before = sim.list_polls();
    let mut engine = wd.spawn_engine();
    engine.wait_polls(sim, before, 2);
    engine
}

fn audit(wd: &mut Workdir, extra: &[&str]) -> Vec<Value> {
    let state = wd.state().display().to_string();
    let mut args = vec!["audit", "--state", &state, "--json"];
    args.extend_from_slice(extra);
    let out = wd.run_cli("audit", &args);
    assert_eq!(out.code, Some(0), "{out:?}");
    match serde_json::from_str(&out.stdout) {
        Ok(Value::Array(entries)) => entries,
        other => panic!("audit --json is not an array: {other:?}\n{out:?}"),
    }
}

fn field<'a>(v: &'a Value, name: &str) -> &'a str {
    v.get(name).and_then(Value::as_str).unwrap_or("")
}

// ---------------------------------------------------------------------------
// 1 + 7: SIGKILL at random points under traffic; exactly one reply per
// event; the audit log agrees.
// ---------------------------------------------------------------------------

/// The idle timer of the crash test, and its tolerances.
const IDLE_SECS: f64 = 4.0;
/// The engine's clock estimate comes from `Date` headers (1 s resolution).
const CLOCK_TOL: f64 = 1.5;
/// How late an idle may come while the engine is up (a busy machine).
const LATE_TOL: f64 = 6.0;

const ACK_RULE: &str = r#"on("visitor_message", |ev| { ev.reply("ack " + ev.message.id); });"#;
/// The reply names the message the quiet stretch started at (the newest
/// message the engine saw), so each occurrence has its own text.
const IDLE_RULE: &str = r#"on("idle", "4s", |ev| {
    let m = ev.messages();
    let last = if m.len() == 0 { 0 } else { m[m.len() - 1].id };
    ev.reply("idle " + ev.session.session_id + " after " + last);
});"#;

/// Writes visitor messages at a steady pace into a growing set of chats.
/// A chat gets a message only while its newest message is younger than
/// half the idle timer: a visitor never ends a quiet stretch the engine
/// could not see (an engine polls; what happens between two polls is not
/// its to catch), so every stretch long enough must get its idle reply.
fn traffic(sim: &Sim, seed: u64, stop: &AtomicBool, mut chats: Vec<String>) -> (usize, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut sent, mut held_back) = (0usize, 0usize);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(rng.random_range(60..180)));
        if chats.len() < 10 && (chats.len() < 4 || rng.random_bool(0.1)) {
            let id = sim.create(json!({ "visitor_name": format!("Visitor {}", chats.len()) }));
            sim.say(&id, &format!("hello from {}", chats.len()));
            chats.push(id);
            sent += 1;
            continue;
        }
        let id = chats[rng.random_range(0..chats.len())].clone();
        let d = sim.detail(&id);
        let last = d
            .messages
            .last()
            .and_then(|m| m.created_at)
            .or(d.session.created_at)
            .expect("timestamps");
        if secs_between(last, sim.now()) < IDLE_SECS / 2.0 {
            sim.say(&id, &format!("message {sent}"));
            sent += 1;
        } else {
            held_back += 1;
        }
    }
    (sent, held_back)
}

fn sigkill_at_random_points_loses_no_event_and_sends_no_reply_twice(backend: Backend) {
    let _serial = serial();
    let Some(state) = backend.state() else {
        return;
    };
    let t0 = Instant::now();
    let seed: u64 = std::env::var("DURABILITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_260_308);
    eprintln!("seed {seed} (set DURABILITY_SEED to replay)");
    let mut rng = StdRng::seed_from_u64(seed);
    let sim = start_sim();
    let mut wd = Workdir::new(
        &state,
        &sim.base_url(),
        &[("ack.rhai", ACK_RULE), ("idle.rhai", IDLE_RULE)],
    );

    // Chats open before the very first start are the baseline: their
    // history fires no message events (their timers do run).
    let mut before_baseline: HashSet<(String, i64)> = HashSet::new();
    let mut chats = Vec::new();
    for i in 0..2 {
        let id = sim.create(json!({ "visitor_name": format!("Early {i}") }));
        let m = sim.say(&id, "written before skyrules ever ran");
        before_baseline.insert((id.clone(), m.id));
        chats.push(id);
    }

    // Every reply is slow to be acknowledged, so kills often land between
    // the send and its recorded outcome.
    let slow_replies = Fault {
        method: Some("POST".into()),
        path_contains: Some("/messages".into()),
        latency_ms: 120,
        times: None,
        ..Fault::default()
    };
    sim.add_fault(slow_replies.clone()).expect("fault");

    let mut engine = start_engine(&mut wd, &sim);
    eprintln!("baseline taken after {:?}", t0.elapsed());

    let stop = AtomicBool::new(false);
    let kills = rng.random_range(9..=12);
    let (sent, held_back) = std::thread::scope(|s| {
        let writer = s.spawn(|| traffic(&sim, seed ^ 0x5eed, &stop, chats.clone()));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for k in 0..kills {
                let delay = Duration::from_millis(rng.random_range(100..=1500));
                std::thread::sleep(delay);
                engine.assert_running();
                engine.kill();
                engine = wd.spawn_engine();
                if k == kills / 2 {
                    // A few sends whose connection breaks after the message
                    // was stored: the client must not blindly resend.
                    sim.clear_faults();
                    sim.add_fault(Fault {
                        method: Some("POST".into()),
                        path_contains: Some("/messages".into()),
                        drop_connection: true,
                        times: Some(3),
                        ..Fault::default()
                    })
                    .expect("fault");
                    sim.add_fault(slow_replies.clone()).expect("fault");
                }
            }
        }));
        stop.store(true, Ordering::Relaxed);
        let traffic = writer.join().expect("traffic thread");
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
        traffic
    });
    eprintln!(
        "{kills} kills done after {:?}; {sent} visitor messages written, {held_back} held back",
        t0.elapsed()
    );
    assert!(sent >= 20, "too little traffic to mean anything: {sent}");

    // The last engine runs until every visitor message has its ack and the
    // last quiet stretch of every chat has had its idle reply.
    let idle_after = |d: &SessionDetail, id: i64| {
        let text = format!("idle {} after {id}", d.session.session_id);
        count_text(d, &text)
    };
    // On a timeout the checks below say precisely what is missing.
    let quiet = wait_until(WAIT_LIMIT, || {
        engine.assert_running();
        sim.sessions().iter().all(|d| {
            let acks_done = d
                .messages
                .iter()
                .filter(|m| m.sender_type == SenderType::Visitor)
                .filter(|m| !before_baseline.contains(&(d.session.session_id.clone(), m.id)))
                .all(|m| count_text(d, &format!("ack {}", m.id)) >= 1);
            let last_visitor = d
                .messages
                .iter()
                .rfind(|m| m.sender_type == SenderType::Visitor)
                .map_or(0, |m| m.id);
            let idled = d
                .messages
                .iter()
                .any(|m| m.id >= last_visitor && idle_after(d, m.id) >= 1);
            acks_done && idled
        })
    });
    let stopped_at = sim.now();
    engine.stop();
    eprintln!("quiet ({quiet}) and stopped after {:?}", t0.elapsed());

    // What the simulator holds is what visitors saw.
    let sessions = sim.sessions();
    let mut problems: Vec<String> = Vec::new();
    if !quiet {
        problems.push(format!(
            "not every ack and final idle reply arrived within {WAIT_LIMIT:?}"
        ));
    }
    let (mut acks, mut idles) = (0usize, 0usize);
    for d in &sessions {
        let sid = &d.session.session_id;
        let by_id: BTreeMap<i64, &Message> = d.messages.iter().map(|m| (m.id, m)).collect();
        let at = |m: &Message| m.created_at.expect("message time");
        // Agent messages, classified.
        let mut ack_count: HashMap<i64, usize> = HashMap::new();
        let mut idle_count: HashMap<i64, Vec<&Message>> = HashMap::new();
        for m in d
            .messages
            .iter()
            .filter(|m| m.sender_type == SenderType::Agent)
        {
            let text = m.text();
            if let Some(n) = text.strip_prefix("ack ").and_then(|n| n.parse().ok()) {
                *ack_count.entry(n).or_default() += 1;
                acks += 1;
            } else if let Some(n) = text
                .strip_prefix(&format!("idle {sid} after "))
                .and_then(|n| n.parse().ok())
            {
                idle_count.entry(n).or_default().push(m);
                idles += 1;
            } else {
                problems.push(format!("{sid}: unexpected agent message {text:?}"));
            }
        }
        // Exactly one ack per visitor message written after the baseline;
        // none for the history before it.
        for m in d
            .messages
            .iter()
            .filter(|m| m.sender_type == SenderType::Visitor)
        {
            let n = ack_count.remove(&m.id).unwrap_or(0);
            let expected = usize::from(!before_baseline.contains(&(sid.clone(), m.id)));
            if n != expected {
                problems.push(format!(
                    "{sid}: visitor message {} has {n} acks, expected {expected}",
                    m.id
                ));
            }
        }
        for (n, count) in ack_count {
            problems.push(format!("{sid}: {count} acks of {n}, not a visitor message"));
        }
        // Exactly one idle reply per quiet stretch, never early, never for
        // a stretch a visitor had broken.
        for (anchor, replies) in &idle_count {
            if replies.len() != 1 {
                problems.push(format!(
                    "{sid}: {} idle replies for the quiet stretch after message {anchor}",
                    replies.len()
                ));
            }
            let start = if *anchor == 0 {
                d.session.created_at
            } else {
                by_id.get(anchor).and_then(|m| m.created_at)
            };
            let Some(start) = start else {
                problems.push(format!("{sid}: idle reply after unknown message {anchor}"));
                continue;
            };
            let r = replies[0];
            let waited = secs_between(start, at(r));
            if waited < IDLE_SECS - CLOCK_TOL {
                problems.push(format!(
                    "{sid}: idle reply {} came {waited:.2}s after message {anchor}, before {IDLE_SECS}s",
                    r.id
                ));
            }
            let deadline =
                start + chrono::Duration::milliseconds(((IDLE_SECS - CLOCK_TOL) * 1000.0) as i64);
            if let Some(v) = d.messages.iter().find(|m| {
                m.id > *anchor
                    && m.id < r.id
                    && m.sender_type == SenderType::Visitor
                    && at(m) < deadline
            }) {
                problems.push(format!(
                    "{sid}: idle reply {} after message {anchor} though visitor message {} broke the stretch",
                    r.id, v.id
                ));
            }
        }
        // No quiet stretch long enough went without its idle reply.
        let mut stretches: Vec<(i64, Timestamp, Timestamp)> = Vec::new();
        let mut prev = (0i64, d.session.created_at.expect("created_at"));
        for m in &d.messages {
            stretches.push((prev.0, prev.1, at(m)));
            prev = (m.id, at(m));
        }
        stretches.push((prev.0, prev.1, stopped_at));
        for (anchor, from, to) in stretches {
            let quiet = secs_between(from, to);
            if quiet >= IDLE_SECS + LATE_TOL && !idle_count.contains_key(&anchor) {
                problems.push(format!(
                    "{sid}: {quiet:.2}s of quiet after message {anchor} and no idle reply"
                ));
            }
        }
    }
    let elapsed = t0.elapsed();
    eprintln!(
        "{} chats, {acks} acks, {idles} idle replies; crash windows hit: {}",
        sessions.len(),
        wd.log_counts(&[
            (
                "unfinished actions settled",
                "settling an action left unfinished"
            ),
            (
                "of them already delivered",
                "reply was delivered before the restart"
            ),
            (
                "replayed actions skipped",
                "action already handled before a restart"
            ),
            ("sends with unknown outcome", "send outcome unknown"),
        ])
    );
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(idles >= sessions.len(), "too few idle replies: {idles}");

    // 7: the audit log lists every reply, each taken once.
    let entries = audit(&mut wd, &[]);
    let replies: Vec<&Value> = entries
        .iter()
        .filter(|e| field(e, "action") == "reply")
        .collect();
    let not_taken: Vec<&&Value> = replies
        .iter()
        .filter(|e| field(e, "outcome") != "taken")
        .collect();
    assert!(
        not_taken.is_empty(),
        "replies not taken: {not_taken:#?}\n{}",
        wd.run_cli("audit-table", &["audit", "--state", "state.db"])
            .stdout
    );
    assert_eq!(
        replies.len(),
        acks + idles,
        "audit reply entries vs agent messages in the simulator"
    );
    assert_eq!(
        entries.len(),
        replies.len(),
        "only replies were asked for: {entries:#?}"
    );
    let busiest = sessions
        .iter()
        .max_by_key(|d| agent_texts(d).len())
        .expect("a chat");
    let sid = busiest.session.session_id.as_str();
    let one = audit(&mut wd, &["--session", sid]);
    assert_eq!(one.len(), agent_texts(busiest).len(), "{one:#?}");
    assert!(
        one.iter().all(|e| field(e, "session_id") == sid),
        "{one:#?}"
    );
    for e in &one {
        assert!(e.get("at").is_some() && !field(e, "rule").is_empty(), "{e}");
    }
    eprintln!(
        "crash test done in {elapsed:?} (with audit {:?})",
        t0.elapsed()
    );
    wd.assert_state_in(&state);
}

// ---------------------------------------------------------------------------
// 2: a human request made while the engine was down
// ---------------------------------------------------------------------------

fn a_human_request_made_while_stopped_is_taken_over_once_after_restart(backend: Backend) {
    let _serial = serial();
    let Some(state) = backend.state() else {
        return;
    };
    let sim = start_sim();
    let mut wd = Workdir::new(
        &state,
        &sim.base_url(),
        &[(
            "escalate.rhai",
            r#"on("human_requested", |ev| { ev.take_over(); });"#,
        )],
    );
    let mut engine = start_engine(&mut wd, &sim);
    let id = sim.create(json!({ "visitor_name": "Dana" }));
    sim.say(&id, "hello");
    let detail_path = format!("/web-chat/sessions/{id}");
    wait_for("the engine to read the new chat", WAIT_LIMIT, || {
        engine.assert_running();
        sim.count_requests("GET", &detail_path) >= 1
    });
    let before = sim.list_polls();
    engine.wait_polls(&sim, before, 2);
    engine.stop();

    sim.request_human(&id).expect("request a human");
    assert_eq!(sim.count_requests("POST", "/take-over"), 0);

    let mut engine = start_engine(&mut wd, &sim);
    wait_for("the take-over", WAIT_LIMIT, || {
        engine.assert_running();
        sim.detail(&id).session.handled_by == HandledBy::Human
    });
    // A few more polls (and one more restart) must not take it over again.
    let before = sim.list_polls();
    engine.wait_polls(&sim, before, 4);
    engine.stop();
    let mut engine = start_engine(&mut wd, &sim);
    let before = sim.list_polls();
    engine.wait_polls(&sim, before, 3);
    engine.stop();
    assert_eq!(
        sim.count_requests("POST", &format!("/web-chat/sessions/{id}/take-over")),
        1,
        "take-over requests"
    );
    let entries = audit(&mut wd, &[]);
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert_eq!(field(&entries[0], "action"), "take_over");
    assert_eq!(field(&entries[0], "event"), "human_requested");
    assert_eq!(field(&entries[0], "outcome"), "taken");
    // The SLA report reads the same state: the one chat, and its wait for
    // a human (requested while stopped, taken over after the restart).
    let sla = sla_report(&mut wd);
    assert_eq!(sla["sessions"], 1, "{sla}");
    assert_eq!(sla["human_wait"]["count"], 1, "{sla}");
    wd.assert_state_in(&state);
}

/// `skyrules sla --json` over the work directory's state.
fn sla_report(wd: &mut Workdir) -> Value {
    let state = wd.state().display().to_string();
    let out = wd.run_cli("sla", &["sla", "--state", &state, "--json"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("sla --json is not JSON ({e}): {out:?}"))
}

// ---------------------------------------------------------------------------
// 3: `ev.once` survives restarts (graceful and SIGKILL)
// ---------------------------------------------------------------------------

fn once_is_remembered_across_restarts(backend: Backend) {
    let _serial = serial();
    let Some(state) = backend.state() else {
        return;
    };
    let sim = start_sim();
    let mut wd = Workdir::new(
        &state,
        &sim.base_url(),
        &[
            // Runs first (file-name order) and shows each message was handled.
            (
                "a-seen.rhai",
                r#"on("visitor_message", |ev| { ev.reply("seen " + ev.message.id); });"#,
            ),
            (
                "greet.rhai",
                r#"on("visitor_message", |ev| { if ev.once("greeted") { ev.reply("welcome"); } });"#,
            ),
        ],
    );
    let mut engine = start_engine(&mut wd, &sim);
    let id = sim.create(json!({ "visitor_name": "Ola" }));
    let seen = |engine: &mut Engine, m: &Message| {
        let text = format!("seen {}", m.id);
        wait_for(&text, WAIT_LIMIT, || {
            engine.assert_running();
            count_text(&sim.detail(&id), &text) == 1
        });
    };

    let m1 = sim.say(&id, "first");
    seen(&mut engine, &m1);
    wait_for("welcome", WAIT_LIMIT, || {
        count_text(&sim.detail(&id), "welcome") == 1
    });
    // Killed right away: the cycle that greeted may not be committed yet.
    engine.kill();

    let mut engine = start_engine(&mut wd, &sim);
    let m2 = sim.say(&id, "second");
    seen(&mut engine, &m2);
    engine.stop();

    let mut engine = start_engine(&mut wd, &sim);
    let m3 = sim.say(&id, "third");
    seen(&mut engine, &m3);
    let before = sim.list_polls();
    engine.wait_polls(&sim, before, 2);
    engine.stop();

    let d = sim.detail(&id);
    assert_eq!(count_text(&d, "welcome"), 1, "{:#?}", agent_texts(&d));
    for m in [&m1, &m2, &m3] {
        assert_eq!(count_text(&d, &format!("seen {}", m.id)), 1);
    }
    wd.assert_state_in(&state);
}

// ---------------------------------------------------------------------------
// 4: two engines on one state file
// ---------------------------------------------------------------------------

#[test]
fn a_second_engine_on_the_same_state_file_exits_1() {
    let _serial = serial();
    let sim = start_sim();
    let mut wd = Workdir::new(&State::Sqlite, &sim.base_url(), &[("ack.rhai", ACK_RULE)]);
    let mut first = start_engine(&mut wd, &sim);

    let mut second = wd.spawn_engine();
    let started = Instant::now();
    let status = wait_exit(&mut second.child, EXIT_LIMIT)
        .unwrap_or_else(|| panic!("the second engine is still running:\n{}", second.stderr()));
    let stderr = second.stderr();
    eprintln!("second engine: {status} after {:?}", started.elapsed());
    assert_eq!(status.code(), Some(1), "{stderr}");
    let mentions: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("in use by another skyrules"))
        .collect();
    assert_eq!(mentions.len(), 1, "{stderr}");
    assert!(mentions[0].starts_with("error: "), "{stderr}");
    assert!(!mentions[0].contains(KEY));
    assert_clean(&stderr);

    // The first one carries on undisturbed.
    let id = sim.create(json!({}));
    let m = sim.say(&id, "still there?");
    wait_for("an ack from the first engine", WAIT_LIMIT, || {
        first.assert_running();
        count_text(&sim.detail(&id), &format!("ack {}", m.id)) == 1
    });
    first.stop();
    // Once it is gone, the file is free again.
    start_engine(&mut wd, &sim).stop();
}

// ---------------------------------------------------------------------------
// 5: migrations from an empty file; a corrupt file is left alone
// ---------------------------------------------------------------------------

#[test]
fn an_empty_state_file_is_initialised_and_a_garbage_one_refused_untouched() {
    let _serial = serial();
    let sim = start_sim();

    // A zero-byte file (e.g. `touch skyrules.db`) becomes a working state file.
    let mut wd = Workdir::new(&State::Sqlite, &sim.base_url(), &[("ack.rhai", ACK_RULE)]);
    File::create(wd.state()).expect("empty state file");
    let mut engine = start_engine(&mut wd, &sim);
    let id = sim.create(json!({}));
    let m = sim.say(&id, "anyone?");
    wait_for("an ack", WAIT_LIMIT, || {
        engine.assert_running();
        count_text(&sim.detail(&id), &format!("ack {}", m.id)) == 1
    });
    engine.stop();
    let entries = audit(&mut wd, &[]);
    assert_eq!(entries.len(), 1, "{entries:#?}");
    let mut header = [0u8; 16];
    std::io::Read::read_exact(&mut File::open(wd.state()).expect("open"), &mut header)
        .expect("the state file has a header");
    assert_eq!(&header, b"SQLite format 3\0");
    // And it restarts from what it wrote.
    start_engine(&mut wd, &sim).stop();
    assert_eq!(count_text(&sim.detail(&id), &format!("ack {}", m.id)), 1);

    // Not SQLite at all: exit 1, one line saying to move it aside, and the
    // file exactly as it was.
    let mut wd = Workdir::new(&State::Sqlite, &sim.base_url(), &[("ack.rhai", ACK_RULE)]);
    let garbage: Vec<u8> = b"these are someone's notes, not a database\n"
        .iter()
        .copied()
        .cycle()
        .take(8192)
        .collect();
    fs::write(wd.state(), &garbage).expect("garbage state file");
    let mut engine = wd.spawn_engine();
    let status = wait_exit(&mut engine.child, EXIT_LIMIT).unwrap_or_else(|| {
        panic!(
            "the engine runs on a garbage state file:\n{}",
            engine.stderr()
        )
    });
    let stderr = engine.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("move it aside"), "{stderr}");
    assert!(errors[0].contains("state.db"), "{stderr}");
    assert_clean(&stderr);
    assert_eq!(
        fs::read(wd.state()).expect("read"),
        garbage,
        "the file changed"
    );
}

// ---------------------------------------------------------------------------
// 6: SIGTERM while an action is in flight
// ---------------------------------------------------------------------------

fn sigterm_mid_run_finishes_in_flight_work_and_exits_0(backend: Backend) {
    let _serial = serial();
    let Some(state) = backend.state() else {
        return;
    };
    let sim = start_sim();
    let mut wd = Workdir::new(&state, &sim.base_url(), &[("ack.rhai", ACK_RULE)]);
    let mut engine = start_engine(&mut wd, &sim);
    let id = sim.create(json!({ "visitor_name": "Kai" }));
    // The reply is stored at once but answered 1.5 s later: SIGTERM lands
    // while the engine waits for it.
    sim.add_fault(Fault {
        method: Some("POST".into()),
        path_contains: Some("/messages".into()),
        latency_ms: 1500,
        times: Some(1),
        ..Fault::default()
    })
    .expect("fault");
    let m = sim.say(&id, "hi");
    let ack = format!("ack {}", m.id);
    wait_for("the ack to be stored", WAIT_LIMIT, || {
        engine.assert_running();
        count_text(&sim.detail(&id), &ack) == 1
    });
    let started = Instant::now();
    let stderr = engine.stop();
    eprintln!("SIGTERM to exit: {:?}", started.elapsed());
    assert!(!stderr.contains("did not finish"), "{stderr}");
    let entries = audit(&mut wd, &[]);
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert_eq!(
        field(&entries[0], "outcome"),
        "taken",
        "the in-flight reply was finished, not left pending: {entries:#?}"
    );
    // A restart sends nothing again.
    let mut engine = start_engine(&mut wd, &sim);
    let before = sim.list_polls();
    engine.wait_polls(&sim, before, 3);
    engine.stop();
    assert_eq!(count_text(&sim.detail(&id), &ack), 1);
    assert_eq!(audit(&mut wd, &[]).len(), 1);
    wd.assert_state_in(&state);
}

// ---------------------------------------------------------------------------
// Known product bugs, reproduced; run with `--ignored`.
// ---------------------------------------------------------------------------

/// A timer due in the same cycle as a message event: the engine replies to
/// the message, is killed before the timer's action is recorded, and after
/// the restart the timer's condition no longer holds (its own reply is now
/// the newest message), so the timer event is never delivered. Without the
/// kill, both replies go out. SPEC §2: "no event is fired twice and none is
/// lost".
fn a_due_timer_survives_a_kill_between_the_actions_of_its_cycle(backend: Backend) {
    let _serial = serial();
    let Some(state) = backend.state() else {
        return;
    };
    let sim = start_sim();
    let mut wd = Workdir::new(
        &state,
        &sim.base_url(),
        &[
            ("ack.rhai", ACK_RULE),
            (
                "nudge.rhai",
                r#"on("unanswered", "2s", |ev| { ev.reply("nudge"); });"#,
            ),
        ],
    );
    let mut engine = start_engine(&mut wd, &sim);
    let id = sim.create(json!({ "visitor_name": "Lee" }));
    let before = sim.list_polls();
    engine.wait_polls(&sim, before, 3);
    engine.stop();
    // While the engine is down a visitor writes and waits: at the next poll
    // the message and the `unanswered` timer are due together.
    let v = sim.say(&id, "hello?");
    sim.advance(Duration::from_secs(10));
    // The ack is stored at once but answered late: the kill lands between
    // the ack and the nudge.
    sim.add_fault(Fault {
        method: Some("POST".into()),
        path_contains: Some("/messages".into()),
        latency_ms: 5000,
        times: Some(1),
        ..Fault::default()
    })
    .expect("fault");
    let mut engine = wd.spawn_engine();
    let ack = format!("ack {}", v.id);
    wait_for("the ack to be stored", WAIT_LIMIT, || {
        engine.assert_running();
        count_text(&sim.detail(&id), &ack) == 1
    });
    engine.kill();
    let mut engine = start_engine(&mut wd, &sim);
    let nudged = wait_until(Duration::from_secs(8), || {
        engine.assert_running();
        count_text(&sim.detail(&id), "nudge") >= 1
    });
    engine.stop();
    let d = sim.detail(&id);
    assert!(
        nudged,
        "the unanswered timer was lost: agent messages {:?}",
        agent_texts(&d)
    );
    assert_eq!(count_text(&d, "nudge"), 1);
    assert_eq!(count_text(&d, &ack), 1);
    wd.assert_state_in(&state);
}

/// The loop guard is seeded at start from the audit log, before any
/// response has calibrated the server clock: with the server's clock ahead
/// of this machine's, replies from well outside the window count as just
/// sent and cap new replies after a restart (and with it behind, recent
/// replies would not count at all).
fn the_loop_guard_seeded_at_restart_uses_the_servers_clock(backend: Backend) {
    let _serial = serial();
    let Some(state) = backend.state() else {
        return;
    };
    let sim = start_sim();
    let mut wd = Workdir::new(&state, &sim.base_url(), &[("ack.rhai", ACK_RULE)]);
    fs::write(
        wd.path().join("skyrules.toml"),
        "[guard]\nmax_replies = 5\nwindow = \"10m\"\n",
    )
    .expect("write config");
    // The server's clock runs an hour ahead of this machine's.
    sim.advance(Duration::from_secs(3600));
    let mut engine = start_engine(&mut wd, &sim);
    let id = sim.create(json!({}));
    for i in 0..5 {
        let m = sim.say(&id, &format!("message {i}"));
        let ack = format!("ack {}", m.id);
        wait_for(&ack, WAIT_LIMIT, || {
            engine.assert_running();
            count_text(&sim.detail(&id), &ack) == 1
        });
    }
    engine.stop();
    // Down for 15 minutes: the five replies leave the 10-minute window.
    sim.advance(Duration::from_secs(15 * 60));
    let mut engine = start_engine(&mut wd, &sim);
    let m = sim.say(&id, "after the restart");
    let ack = format!("ack {}", m.id);
    let acked = wait_until(Duration::from_secs(8), || {
        engine.assert_running();
        count_text(&sim.detail(&id), &ack) == 1
    });
    engine.stop();
    let last = audit(&mut wd, &[]).pop();
    assert!(acked, "capped by replies 15 minutes old: {last:#?}");
    wd.assert_state_in(&state);
}

// ---------------------------------------------------------------------------
// 8: the state database goes away and comes back (PostgreSQL only)
// ---------------------------------------------------------------------------

/// A TCP relay to the tests' PostgreSQL server that can be cut (every
/// connection dropped, new ones refused) and restored: the database
/// going away, as a restart or a network failure makes it, without
/// touching the server other tests use.
struct CuttableProxy {
    url: String,
    cut: std::sync::Arc<AtomicBool>,
    open: std::sync::Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl CuttableProxy {
    fn start(url: &str) -> CuttableProxy {
        use std::net::{TcpListener, TcpStream, ToSocketAddrs};
        let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (user, host) = authority.rsplit_once('@').unwrap_or(("", authority));
        let host = if host.contains(':') {
            host.to_string()
        } else {
            format!("{host}:5432")
        };
        let target = host
            .to_socket_addrs()
            .expect("resolve the PostgreSQL host")
            .next()
            .expect("an address");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let cut = std::sync::Arc::new(AtomicBool::new(false));
        let open = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if c.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let pipe = |from: &TcpStream, to: &TcpStream| {
                    let (mut from, mut to) = (
                        from.try_clone().expect("clone"),
                        to.try_clone().expect("clone"),
                    );
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                };
                pipe(&client, &server);
                pipe(&server, &client);
                let mut held = o.lock().unwrap_or_else(|p| p.into_inner());
                held.push(client);
                held.push(server);
            }
        });
        let at = if user.is_empty() {
            String::new()
        } else {
            format!("{user}@")
        };
        CuttableProxy {
            url: format!("{scheme}://{at}127.0.0.1:{port}/{path}"),
            cut,
            open,
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[test]
fn a_database_outage_is_reported_and_no_reply_is_lost_or_sent_twice() {
    let _serial = serial();
    let Some(url) = util::fresh_postgres_database() else {
        return;
    };
    let proxy = CuttableProxy::start(&url);
    let sim = start_sim();
    let state = State::Postgres(proxy.url.clone());
    let mut wd = Workdir::new(
        &state,
        &sim.base_url(),
        &[(
            "echo.rhai",
            r#"on("visitor_message", |ev| { ev.reply("got it: " + ev.message.text); });"#,
        )],
    );
    let listen = util::free_addr();
    let before = sim.list_polls();
    let mut engine = wd.spawn_engine_with(&["--listen", &listen]);
    engine.wait_polls(&sim, before, 3);
    let id = sim.create(json!({ "visitor_name": "Olga" }));
    let replied = |text: &str| count_text(&sim.detail(&id), &format!("got it: {text}"));
    sim.say(&id, "one");
    wait_for("the first reply", WAIT_LIMIT, || replied("one") == 1);
    let readyz = || util::http_get(&listen, "/readyz").unwrap_or((0, String::new()));

    proxy.cut();
    sim.say(&id, "two");
    wait_for("/readyz to report the state store", WAIT_LIMIT, || {
        engine.assert_running();
        let (status, why) = readyz();
        status == 503 && why.contains("state store")
    });
    let before = sim.list_polls();
    engine.wait_polls(&sim, before, 2);
    assert_eq!(
        replied("two"),
        0,
        "no action is taken while its intent cannot be written"
    );

    proxy.restore();
    wait_for("the reply held back by the outage", WAIT_LIMIT, || {
        engine.assert_running();
        replied("two") == 1
    });
    wait_for("/readyz to recover", WAIT_LIMIT, || readyz().0 == 200);
    sim.say(&id, "three");
    wait_for("a reply after the outage", WAIT_LIMIT, || {
        replied("three") == 1
    });
    let before = sim.list_polls();
    engine.wait_polls(&sim, before, 3);
    let stderr = engine.stop();
    assert!(
        stderr.contains("state store works again"),
        "the recovery is logged: {stderr}"
    );
    for text in ["one", "two", "three"] {
        assert_eq!(replied(text), 1, "one reply to {text:?}");
    }
    let entries = audit(&mut wd, &[]);
    assert_eq!(entries.len(), 3, "{entries:#?}");
    assert!(
        entries.iter().all(|e| field(e, "outcome") == "taken"),
        "{entries:#?}"
    );
    wd.assert_state_in(&state);
}
