//! `skyrules bench`: the load benchmark — the engine against the simulator
//! with N live chats, a fraction of them changing every poll.
//!
//! Owns: setting the scene (the simulator in its own process, sessions with
//! history, rules, a state file), driving traffic spread over each poll
//! interval, and measuring what ops care about: poll-cycle time, requests
//! per cycle (list pages versus session reads versus actions), reaction
//! latency from a human request to the take-over (both stamped by the
//! simulator's clock), hot-reload time, CPU seconds and memory of the
//! engine alone (the simulator's are reported beside it). The engine runs
//! its real service loop, [`Engine::run`], as `skyrules run` does.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::stream::{self, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiKey, Client, ClientConfig};
use crate::engine::{Engine, EngineOptions, Note};
use crate::executor::Guard;
use crate::store::SqliteStore;

mod fleet;
pub(crate) use fleet::{render as render_fleet, run as run_fleet};

/// Load benchmark settings.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Active sessions.
    pub sessions: usize,
    /// How long to measure after the first (baseline) poll.
    pub duration: Duration,
    /// Fraction of sessions that change between two polls.
    pub changed: f64,
    /// Fraction of sessions that end, and are replaced by new ones, per
    /// poll interval (0 for a fixed set).
    pub churn: f64,
    /// Messages each session starts with.
    pub history: usize,
    /// The engine's poll interval.
    pub poll_interval: Duration,
    /// Traffic seed.
    pub seed: u64,
    /// Events each session's decision trace keeps (0: no trace), to
    /// measure what the trace costs.
    pub trace_length: usize,
    /// The pending fast lane's interval (zero: off, the full walk alone).
    pub pending_interval: Duration,
    /// The key's request budget per minute (`api.max_requests_per_minute`).
    pub max_requests_per_minute: Option<usize>,
}

/// The engine's memory at one moment of the measured run.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryPoint {
    /// Seconds into the measured run.
    pub at_secs: u64,
    /// Resident memory, MiB.
    pub rss_mib: f64,
    /// Heap in use, MiB (glibc).
    pub heap_mib: f64,
}

/// Points on the memory timeline a run reports: enough to see a trend in
/// a one-hour run without a line per cycle.
const TIMELINE_POINTS: u32 = 12;

/// Percentiles of a series, in milliseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Millis {
    /// Samples.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Millis {
    fn of(mut v: Vec<f64>) -> Millis {
        if v.is_empty() {
            return Millis::default();
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let at = |p: f64| v[((p / 100.0 * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Millis {
            count: v.len(),
            p50: at(50.0),
            p99: at(99.0),
            max: v[v.len() - 1],
        }
    }
}

/// What one benchmark run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Active sessions.
    pub sessions: usize,
    /// Messages each session started with.
    pub history: usize,
    /// Sessions changed per poll.
    pub changed_per_cycle: usize,
    /// Sessions ended and replaced per poll interval.
    pub churned_per_cycle: usize,
    /// The poll interval, ms.
    pub poll_interval_ms: u64,
    /// Engine construction to the start of the first poll, ms (rules
    /// loaded, state opened, clock learned).
    pub startup_ms: f64,
    /// The first poll, which reads every session once (the baseline), ms.
    pub baseline_ms: f64,
    /// Steady-state poll cycles measured.
    pub cycles: usize,
    /// Poll-cycle wall time (poll, rules, actions, commits).
    pub cycle_ms: Millis,
    /// Average list-page requests per cycle.
    pub list_requests_per_cycle: f64,
    /// Average session reads per cycle.
    pub detail_requests_per_cycle: f64,
    /// Average action requests per cycle.
    pub action_requests_per_cycle: f64,
    /// Average state-store transactions per cycle for sessions, events
    /// and rule memory (one, or one per 1,000 changed sessions; each
    /// action adds two of its own).
    pub state_commits_per_cycle: f64,
    /// Human request → take-over, both as stamped by the simulator.
    pub reaction_ms: Millis,
    /// A visitor message sent → the engine handling its event.
    pub message_reaction_ms: Millis,
    /// Average list requests per cycle of the pending fast lane.
    pub pending_requests_per_cycle: f64,
    /// Every request the engine sent, per minute (this one key's).
    pub requests_per_minute: f64,
    /// The most requests the key sent in any 60 s of the measured run.
    pub busiest_minute: usize,
    /// How often the full walk ran on average, ms (the poll interval, or
    /// longer when the budget stretched it).
    pub walk_every_ms: f64,
    /// Human requests never taken over in a chat still open (should be 0).
    pub reactions_missed: usize,
    /// Human requests in chats that ended before they were taken over.
    pub reactions_moot: usize,
    /// Requests of the benchmark's traffic driver that failed.
    pub traffic_errors: usize,
    /// Whether the run outgrew the simulator's request log, so requests
    /// per cycle are over the newest requests only.
    pub requests_log_truncated: bool,
    /// A rule file written → the engine reporting it live, ms.
    pub hot_reload_ms: Millis,
    /// CPU seconds of the engine process over the measured run.
    pub cpu_seconds: f64,
    /// CPU seconds of the simulator process over the measured run.
    pub sim_cpu_seconds: f64,
    /// The engine's peak resident memory, MiB.
    pub peak_rss_mib: f64,
    /// The engine's resident memory after its first steady cycle, MiB.
    pub rss_first_mib: f64,
    /// The engine's resident memory after its last cycle, MiB.
    pub rss_last_mib: f64,
    /// The engine's heap in use after its first steady cycle, MiB (glibc).
    pub heap_first_mib: f64,
    /// The engine's heap in use after its last cycle, MiB (glibc).
    pub heap_last_mib: f64,
    /// The simulator's peak resident memory, MiB.
    pub sim_peak_rss_mib: f64,
    /// The engine's memory at even steps over the run, for growth over a
    /// long run.
    pub memory_timeline: Vec<MemoryPoint>,
    /// The pending fast lane's interval, ms (0: off).
    pub pending_interval_ms: u64,
    /// The request budget per minute, if one was set.
    pub max_requests_per_minute: Option<usize>,
    /// Events each session's decision trace keeps (0: trace off).
    pub trace_length: usize,
    /// Decision-trace steps in the state at the end.
    pub trace_steps: u64,
    /// Bytes the decision trace takes in the state per session it holds,
    /// on average (its rows' columns, without SQLite's page overhead).
    pub trace_bytes_per_session: f64,
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    // Fields 14 and 15 of /proc/PID/stat, in clock ticks (100 per second
    // on Linux).
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after_comm = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// A `/proc/PID/status` figure in MiB (`VmHWM` peak, `VmRSS` now).
fn memory_mib(pid: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Memory the allocators have handed out and not had back, MiB: jemalloc
/// (the binary's allocator, for Rust's memory) plus glibc's malloc (what C
/// code such as SQLite allocates). Beside the resident size it tells a leak
/// from memory an allocator merely keeps.
fn heap_in_use_mib() -> f64 {
    #[cfg(not(target_env = "msvc"))]
    let rust = {
        // The statistics are a snapshot taken when the epoch advances.
        let _ = tikv_jemalloc_ctl::epoch::advance();
        tikv_jemalloc_ctl::stats::allocated::read().unwrap_or(0) as f64 / 1048576.0
    };
    #[cfg(target_env = "msvc")]
    let rust = 0.0;
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    let c = {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let info = unsafe { libc::mallinfo2() };
        (info.uordblks + info.hblkhd) as f64 / 1048576.0
    };
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let c = 0.0;
    rust + c
}

/// `skyrules sim` in a child process, so that its CPU and memory are not
/// the engine's.
struct SimProcess {
    child: tokio::process::Child,
    pid: String,
    base: String,
    control: String,
}

const BENCH_KEY: &str = "bench";

async fn spawn_sim(seed: u64) -> anyhow::Result<SimProcess> {
    let exe = std::env::current_exe()
        .context("cannot find the skyrules binary to start the simulator")?;
    let mut child = tokio::process::Command::new(exe)
        .args([
            "sim",
            "--port",
            "0",
            "--rate",
            "0",
            "--bot-delay",
            "off",
            "--seed",
        ])
        .arg(seed.to_string())
        .env(crate::config::API_KEY_ENV, BENCH_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the simulator (skyrules sim)")?;
    let pid = child.id().map(|p| p.to_string()).unwrap_or_default();
    let out = child.stdout.take().context("simulator has no stdout")?;
    let mut lines = tokio::io::BufReader::new(out).lines();
    let (mut base, mut control) = (None, None);
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("base"), Some("URL")) => base = words.next().map(str::to_string),
                (Some("control"), Some(url)) => control = Some(url.to_string()),
                _ => {}
            }
            if base.is_some() && control.is_some() {
                break;
            }
        }
        anyhow::Ok(())
    })
    .await;
    // Its later lines still need a reader: a closed pipe would kill it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    match (found, base, control) {
        (Ok(Ok(())), Some(base), Some(control)) => Ok(SimProcess {
            child,
            pid,
            base,
            control,
        }),
        _ => anyhow::bail!("the simulator did not say where it listens"),
    }
}

/// A session body for `POST /_sim/sessions` with `history` messages.
fn session_body(id: &str, i: usize, history: usize) -> Value {
    const VISITOR: [&str; 4] = [
        "Hi, how much is the Pro plan?",
        "And for a team of five?",
        "Can I pay yearly instead?",
        "Is there a discount for non-profits?",
    ];
    const BOT: [&str; 4] = [
        "The Pro plan is $29 a month.",
        "For five seats it is $119 a month.",
        "Yes, yearly billing saves two months.",
        "Yes, non-profits get 30% off.",
    ];
    let messages: Vec<Value> = (0..history)
        .map(|m| {
            let (sender, text) = if m % 2 == 0 {
                ("visitor", VISITOR[(m / 2) % 4])
            } else {
                ("bot", BOT[(m / 2) % 4])
            };
            json!({"sender_type": sender, "text": text})
        })
        .collect();
    json!({
        "session_id": id,
        "visitor_name": format!("Visitor {i}"),
        "visitor_email": format!("visitor{i}@example.com"),
        "messages": messages,
    })
}

/// A GET to the simulator's control API, its body as JSON.
async fn get(http: &reqwest::Client, url: String) -> anyhow::Result<Value> {
    Ok(http.get(url).send().await?.json().await?)
}

/// A POST to the simulator's control API; a non-2xx answer is an error.
async fn post(http: &reqwest::Client, url: String, body: &Value) -> anyhow::Result<Value> {
    let r = http.post(&url).json(body).send().await?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "{url}: {status} {v}");
    Ok(v)
}

/// What the traffic driver did: chats asked for a human (by number, see
/// [`bench_id`]), with the simulator's stamp of the request.
///
/// Kept compact because it lives in the engine's process for the whole
/// run: an hour asks for a human thousands of times.
#[derive(Default)]
struct Traffic {
    asked: Vec<(u32, chrono::DateTime<chrono::FixedOffset>)>,
    failures: usize,
}

/// Visitor messages the traffic sent that the engine has not handled yet:
/// when each chat's oldest went out. The engine's `Event` note for the
/// chat's `visitor_message` takes it off, and the time between is that
/// message's reaction time.
type Posted = Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>>;

/// Takes a handled visitor message off `posted`; its reaction time, ms.
fn message_handled(posted: &Posted, note: &Note) -> Option<f64> {
    let Note::Event {
        session_id,
        kind: crate::tracking::EventKind::VisitorMessage,
        ..
    } = note
    else {
        return None;
    };
    let sent = posted.lock().ok()?.remove(session_id)?;
    Some(sent.elapsed().as_secs_f64() * 1000.0)
}

/// The id of the benchmark's chat number `n`.
fn bench_id(n: u32) -> String {
    format!("sess_bench{n:07}")
}

/// Moves `changed` chats per interval at random instants spread over it
/// (one in ten asks for a human), and ends and replaces `churn` chats.
async fn drive_traffic(
    http: reqwest::Client,
    control: String,
    opts: BenchOptions,
    mut ids: Vec<u32>,
    posted: Posted,
    stop: CancellationToken,
) -> Traffic {
    let changed = changed_per_cycle(&opts);
    let churn = churned_per_cycle(&opts);
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut traffic = Traffic::default();
    let mut asked = std::collections::HashSet::new();
    let mut next_id = ids.len() as u32;
    let start = tokio::time::Instant::now();
    let mut k = 0u32;
    while !stop.is_cancelled() {
        let from = start + opts.poll_interval * k;
        let mut plan: Vec<(Duration, usize)> = (0..changed + churn)
            .map(|n| (opts.poll_interval.mul_f64(rng.random::<f64>()), n))
            .collect();
        plan.sort();
        for (offset, n) in plan {
            tokio::select! {
                _ = stop.cancelled() => return traffic,
                _ = tokio::time::sleep_until(from + offset) => {}
            }
            let slot = rng.random_range(0..ids.len());
            let num = ids[slot];
            let id = bench_id(num);
            let r = if n < changed {
                if let Ok(mut p) = posted.lock() {
                    p.entry(id.clone()).or_insert_with(Instant::now);
                }
                let r = post(
                    &http,
                    format!("{control}/sessions/{id}/messages"),
                    &json!({"text": "Another question about pricing"}),
                )
                .await;
                if n % 10 == 0 && r.is_ok() && asked.insert(num) {
                    match post(
                        &http,
                        format!("{control}/sessions/{id}/request-human"),
                        &json!({}),
                    )
                    .await
                    {
                        Ok(v) => {
                            if let Some(at) = v["human_requested_at"]
                                .as_str()
                                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                            {
                                traffic.asked.push((num, at));
                            }
                            Ok(v)
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    r
                }
            } else {
                // A chat ends and a new one with the same history starts.
                let r = post(&http, format!("{control}/sessions/{id}/leave"), &json!({})).await;
                let body = session_body(&bench_id(next_id), next_id as usize, opts.history);
                ids[slot] = next_id;
                next_id += 1;
                match r {
                    Ok(_) => post(&http, format!("{control}/sessions"), &body).await,
                    Err(e) => Err(e),
                }
            };
            if r.is_err() {
                traffic.failures += 1;
            }
        }
        k += 1;
    }
    traffic
}

fn changed_per_cycle(opts: &BenchOptions) -> usize {
    ((opts.sessions as f64 * opts.changed).round() as usize).max(1)
}

fn churned_per_cycle(opts: &BenchOptions) -> usize {
    (opts.sessions as f64 * opts.churn).round() as usize
}

/// Runs the benchmark: sessions created, the engine started on them and
/// its baseline taken, traffic driven while cycles and memory are sampled,
/// then the simulator's request log and the take-overs read back.
///
/// Long on purpose: most of it is the report's fields, filled in one place.
pub async fn run(opts: BenchOptions) -> anyhow::Result<BenchReport> {
    let mut sim = spawn_sim(opts.seed).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let ids: Vec<u32> = (0..opts.sessions as u32).collect();
    create_sessions(&http, &sim, &ids, opts.history).await?;
    let scratch = tempdir()?;
    let rules = scratch.path().join("rules");
    crate::tools::embedded_rules::write(&rules)?;

    // Measured with metrics on, as `skyrules run` has them.
    let metrics = crate::telemetry::metrics::install();
    let started = Instant::now();
    let engine = start_engine(&sim, scratch.path(), &opts).await?;
    let mut notes = engine.subscribe();
    let stop = CancellationToken::new();
    if let Some(handle) = metrics {
        crate::telemetry::metrics::keep_up(handle, stop.clone());
    }
    let engine_task = tokio::spawn(engine.run(stop.clone()));
    let (startup, baseline) = first_cycle(&mut notes, started).await?;
    let _ = http
        .delete(format!("{}/requests", sim.control))
        .send()
        .await;
    let me = std::process::id().to_string();
    let (cpu_before, sim_cpu_before) = (cpu_seconds(&me), cpu_seconds(&sim.pid));
    let traffic_stop = CancellationToken::new();
    let posted = Posted::default();
    let traffic = tokio::spawn(drive_traffic(
        http.clone(),
        sim.control.clone(),
        opts.clone(),
        ids,
        posted.clone(),
        traffic_stop.clone(),
    ));
    let samples = sample(&mut notes, &rules, &opts, &me, &posted).await?;
    traffic_stop.cancel();
    let traffic = traffic.await?;
    // Human requests from the last interval are answered by the next poll.
    let drain_cycles = drain(&mut notes, opts.poll_interval * 2).await;
    let cpu = cpu_seconds(&me) - cpu_before;
    let sim_cpu = cpu_seconds(&sim.pid) - sim_cpu_before;
    let peak = memory_mib(&me, "VmHWM:");
    let sim_peak = memory_mib(&sim.pid, "VmHWM:");
    stop.cancel();
    let _ = engine_task.await;

    let log = request_log(&http, &sim).await?;
    let reactions = reactions(&http, &sim, &traffic.asked).await?;
    let _ = sim.child.kill().await;
    let state = scratch.path().join("bench.db");
    let (trace_bytes, trace_steps, tracked) = tokio::task::spawn_blocking(move || {
        SqliteStore::open_read_only(&state).and_then(|s| s.trace_size())
    })
    .await??;
    drop(scratch);
    // Cycles during the drain count too: the request log covers them.
    let cycles = samples.cycle_ms.len().max(1) as f64;
    let all_cycles = match log.span {
        Some(span) => (span.as_secs_f64() / opts.poll_interval.as_secs_f64()).max(1.0),
        None => cycles + drain_cycles as f64,
    };
    let Samples {
        cycle_ms,
        message_ms,
        commits,
        rss,
        heap,
        reload_ms,
        timeline,
    } = samples;
    Ok(BenchReport {
        sessions: opts.sessions,
        history: opts.history,
        changed_per_cycle: changed_per_cycle(&opts),
        churned_per_cycle: churned_per_cycle(&opts),
        poll_interval_ms: opts.poll_interval.as_millis() as u64,
        startup_ms: startup,
        baseline_ms: baseline,
        cycles: cycle_ms.len(),
        list_requests_per_cycle: log.list as f64 / all_cycles,
        detail_requests_per_cycle: log.detail as f64 / all_cycles,
        action_requests_per_cycle: log.actions as f64 / all_cycles,
        state_commits_per_cycle: commits as f64 / cycles,
        cycle_ms: Millis::of(cycle_ms),
        reaction_ms: Millis::of(reactions.ms),
        message_reaction_ms: Millis::of(message_ms),
        pending_requests_per_cycle: log.pending_lists as f64 / all_cycles,
        requests_per_minute: (log.list + log.pending_lists + log.detail + log.actions) as f64
            / (log.covers.unwrap_or(opts.duration).as_secs_f64() / 60.0).max(1e-9),
        busiest_minute: log.busiest_minute,
        walk_every_ms: opts.duration.as_secs_f64() * 1000.0 / cycles,
        reactions_missed: reactions.missed,
        reactions_moot: reactions.ended_first,
        traffic_errors: traffic.failures,
        requests_log_truncated: log.full,
        hot_reload_ms: Millis::of(reload_ms),
        cpu_seconds: cpu,
        sim_cpu_seconds: sim_cpu,
        peak_rss_mib: peak,
        rss_first_mib: rss.first().copied().unwrap_or(0.0),
        rss_last_mib: rss.last().copied().unwrap_or(0.0),
        heap_first_mib: heap.first().copied().unwrap_or(0.0),
        heap_last_mib: heap.last().copied().unwrap_or(0.0),
        sim_peak_rss_mib: sim_peak,
        memory_timeline: timeline,
        pending_interval_ms: opts.pending_interval.as_millis() as u64,
        max_requests_per_minute: opts.max_requests_per_minute,
        trace_length: opts.trace_length,
        trace_steps,
        trace_bytes_per_session: trace_bytes as f64 / tracked.max(1) as f64,
    })
}

/// Creates the benchmark's sessions in the simulator, 16 at a time.
async fn create_sessions(
    http: &reqwest::Client,
    sim: &SimProcess,
    ids: &[u32],
    history: usize,
) -> anyhow::Result<()> {
    // Only the outcome is kept: the replies (whole sessions) would sit in
    // this process's memory, which is the engine's figure.
    let mut created = stream::iter(ids.iter().copied())
        .map(|n| {
            let url = format!("{}/sessions", sim.control);
            async move {
                post(http, url, &session_body(&bench_id(n), n as usize, history))
                    .await
                    .map(drop)
            }
        })
        .buffer_unordered(16);
    while let Some(r) = created.next().await {
        r.context("cannot create the benchmark's sessions in the simulator")?;
    }
    Ok(())
}

/// The engine under test, on a SQLite state in `dir` and the rules in
/// `dir/rules`, as `skyrules run` would run it.
async fn start_engine(sim: &SimProcess, dir: &Path, opts: &BenchOptions) -> anyhow::Result<Engine> {
    let api = Client::new(client_config(sim, opts))?;
    let state = dir.join("bench.db");
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&state)).await??;
    let (engine, _) = Engine::new(
        api,
        Arc::new(store),
        engine_options(&dir.join("rules"), opts),
    )
    .await?;
    Ok(engine)
}

/// The client of one simulator's key, with the benchmark's budget.
fn client_config(sim: &SimProcess, opts: &BenchOptions) -> ClientConfig {
    let mut c = ClientConfig::new(sim.base.clone(), ApiKey::new(BENCH_KEY));
    c.max_requests_per_minute = opts.max_requests_per_minute;
    c.urgent_reserve = crate::api::budget::urgent_reserve(opts.pending_interval);
    c
}

/// The benchmark's engine settings, as `skyrules run` has them by default.
fn engine_options(rules_dir: &Path, opts: &BenchOptions) -> EngineOptions {
    EngineOptions {
        rules_dir: rules_dir.to_path_buf(),
        poll_interval: opts.poll_interval,
        dry_run: false,
        max_concurrency: 8,
        guard: Guard {
            max_replies: 5,
            window: Duration::from_secs(600),
        },
        pending_interval: opts.pending_interval,
        trace_length: opts.trace_length,
    }
}

/// Waits for the baseline poll; returns (start-up ms, baseline ms).
async fn first_cycle(
    notes: &mut broadcast::Receiver<Note>,
    started: Instant,
) -> anyhow::Result<(f64, f64)> {
    loop {
        match notes.recv().await {
            Ok(Note::Cycle { elapsed, .. }) => {
                let baseline = elapsed.as_secs_f64() * 1000.0;
                return Ok((
                    started.elapsed().as_secs_f64() * 1000.0 - baseline,
                    baseline,
                ));
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(_) => anyhow::bail!("the engine stopped before its first poll"),
        }
    }
}

/// What the measured part of the run saw, cycle by cycle.
#[derive(Default)]
struct Samples {
    cycle_ms: Vec<f64>,
    message_ms: Vec<f64>,
    commits: usize,
    rss: Vec<f64>,
    heap: Vec<f64>,
    reload_ms: Vec<f64>,
    timeline: Vec<MemoryPoint>,
}

impl Samples {
    /// Takes in one cycle's figures, and a memory point at each step.
    fn cycle(&mut self, elapsed: Duration, commits: usize, me: &str, at: Duration, step: Duration) {
        self.cycle_ms.push(elapsed.as_secs_f64() * 1000.0);
        self.commits += commits;
        self.rss.push(memory_mib(me, "VmRSS:"));
        self.heap.push(heap_in_use_mib());
        if self.timeline.len() < TIMELINE_POINTS as usize
            && at >= step * (self.timeline.len() as u32 + 1)
        {
            self.timeline.push(MemoryPoint {
                at_secs: at.as_secs(),
                rss_mib: self.rss.last().copied().unwrap_or(0.0),
                heap_mib: self.heap.last().copied().unwrap_or(0.0),
            });
        }
    }
}

/// Samples every cycle for the run's duration, and measures hot reload a
/// few times over it: a rule file is written, then the engine reports it
/// loaded.
async fn sample(
    notes: &mut broadcast::Receiver<Note>,
    rules: &Path,
    opts: &BenchOptions,
    me: &str,
    posted: &Posted,
) -> anyhow::Result<Samples> {
    const RELOADS: u32 = 3;
    let mut out = Samples::default();
    let step = opts.duration / TIMELINE_POINTS;
    let measured = Instant::now();
    let until = measured + opts.duration;
    let mut next_reload = 1u32;
    let mut reload_started: Option<Instant> = None;
    while Instant::now() < until {
        if reload_started.is_none()
            && next_reload <= RELOADS
            && measured.elapsed() >= opts.duration * next_reload / (RELOADS + 1)
        {
            let body = format!("// written by skyrules bench\non(\"session_ended\", |ev| {{ let n = {next_reload}; }});\n");
            std::fs::write(rules.join("zz-bench-reload.rhai"), body)?;
            reload_started = Some(Instant::now());
            next_reload += 1;
        }
        let note = tokio::select! {
            n = notes.recv() => n,
            _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
        };
        match note {
            Ok(Note::Cycle {
                elapsed, commits, ..
            }) => out.cycle(elapsed, commits, me, measured.elapsed(), step),
            Ok(n @ Note::Event { .. }) => {
                if let Some(ms) = message_handled(posted, &n) {
                    out.message_ms.push(ms);
                }
            }
            Ok(Note::Reloaded { loaded, .. }) if loaded.iter().any(|r| r == "zz-bench-reload") => {
                if let Some(t) = reload_started.take() {
                    out.reload_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(_) => anyhow::bail!("the engine stopped during the benchmark"),
        }
    }
    Ok(out)
}

/// Lets the engine run for `period` more; returns the cycles it completed.
async fn drain(notes: &mut broadcast::Receiver<Note>, period: Duration) -> usize {
    let until = Instant::now() + period;
    let mut cycles = 0;
    while Instant::now() < until {
        tokio::select! {
            n = notes.recv() => if let Ok(Note::Cycle { .. }) = n { cycles += 1 },
            _ = tokio::time::sleep_until(until.into()) => {}
        }
    }
    cycles
}

/// The simulator's request log, counted by kind.
struct RequestCounts {
    list: usize,
    /// List requests of the pending fast lane (`handled_by=pending`).
    pending_lists: usize,
    detail: usize,
    actions: usize,
    /// The log reached its cap and keeps only the newest requests.
    full: bool,
    /// The time the log spans, when it is full.
    span: Option<Duration>,
    /// The time between its first and last request.
    covers: Option<Duration>,
    /// The most requests in any 60 s of the log.
    busiest_minute: usize,
}

/// Reads and counts the simulator's request log.
async fn request_log(http: &reqwest::Client, sim: &SimProcess) -> anyhow::Result<RequestCounts> {
    let requests = get(http, format!("{}/requests", sim.control)).await?;
    let records = requests.as_array().map(Vec::as_slice).unwrap_or_default();
    let (mut list, mut detail, mut actions) = (0usize, 0usize, 0usize);
    let mut pending_lists = 0usize;
    for r in records {
        let path = r["path"].as_str().unwrap_or("");
        if r["method"] == "POST" {
            actions += 1;
        } else if path.ends_with("/sessions") {
            if r["query"]
                .as_str()
                .unwrap_or("")
                .contains("handled_by=pending")
            {
                pending_lists += 1;
            } else {
                list += 1;
            }
        } else {
            detail += 1;
        }
    }
    // A long run outgrows the simulator's request log, which keeps only the
    // newest requests: per cycle is then over the cycles that log spans.
    let full = records.len() >= crate::sim::REQUEST_LOG_CAP;
    let stamp =
        |r: &Value| chrono::DateTime::parse_from_rfc3339(r["at"].as_str().unwrap_or("")).ok();
    let covers = match (
        records.first().and_then(stamp),
        records.last().and_then(stamp),
    ) {
        (Some(a), Some(b)) => (b - a).to_std().ok(),
        _ => None,
    };
    let span = covers.filter(|_| full);
    let mut times: Vec<_> = records.iter().filter_map(stamp).collect();
    times.sort();
    let mut busiest_minute = 0;
    let mut first = 0;
    for (i, t) in times.iter().enumerate() {
        while *t - times[first] >= chrono::Duration::seconds(60) {
            first += 1;
        }
        busiest_minute = busiest_minute.max(i + 1 - first);
    }
    Ok(RequestCounts {
        list,
        pending_lists,
        detail,
        actions,
        full,
        span,
        covers,
        busiest_minute,
    })
}

/// How fast the human requests the traffic made were taken over.
struct Reactions {
    ms: Vec<f64>,
    /// Never taken over.
    missed: usize,
    /// The chat ended (churn) before a poll saw the request open.
    ended_first: usize,
}

async fn reactions(
    http: &reqwest::Client,
    sim: &SimProcess,
    asked: &[(u32, chrono::DateTime<chrono::FixedOffset>)],
) -> anyhow::Result<Reactions> {
    let mut out = Reactions {
        ms: Vec::new(),
        missed: 0,
        ended_first: 0,
    };
    for (num, a) in asked {
        let v = get(http, format!("{}/sessions/{}", sim.control, bench_id(*num))).await?;
        let took = v["human_took_over_at"]
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
        match took {
            Some(t) => out
                .ms
                .push((t - *a).num_microseconds().unwrap_or(0) as f64 / 1000.0),
            _ if v["status"] == "ended" => out.ended_first += 1,
            _ => out.missed += 1,
        }
    }
    Ok(out)
}

/// A private (0700), unguessable directory for the run's rules and state;
/// deleted when dropped.
fn tempdir() -> std::io::Result<tempfile::TempDir> {
    crate::tools::scratch::private_dir("skyrules-bench-")
}

/// `m:ss rss` pairs, resident memory at even steps over the run.
fn timeline(points: &[MemoryPoint]) -> String {
    if points.is_empty() {
        return "(run too short)".into();
    }
    points
        .iter()
        .map(|p| format!("{}:{:02} {:.1}", p.at_secs / 60, p.at_secs % 60, p.rss_mib))
        .collect::<Vec<_>>()
        .join(" · ")
        + " MiB resident"
}

/// The report as a table for people.
pub fn render(r: &BenchReport) -> String {
    let ms = |m: &Millis| {
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            m.p50, m.p99, m.max
        )
    };
    format!(
        "skyrules load benchmark: {} sessions ({} messages each), {} changed and {} replaced per poll, poll every {} ms\n\
         \n  start-up to first poll   {:.1} ms\
         \n  baseline poll            {:.1} ms (reads every session once)\
         \n  poll cycles              {}\
         \n  cycle time               {}\
         \n  requests per cycle       {:.1} list pages + {:.1} session reads + {:.1} actions{}\
         \n  state commits            {:.2} per cycle (sessions, events, rule memory), + 2 per action (intent, outcome) = {:.1} in all\
         \n  reaction latency         {} ({} take-overs, {} missed, {} chats ended first; request → take-over, simulator clock)\
         \n  message reaction         {} ({} visitor messages; sent → the engine handling its event)\
         \n  poll plan                a full walk every {:.0} ms (poll interval {} ms), pending fast lane {}; {:.1} fast-lane lists per cycle; {:.0} requests per minute in all, at most {} in any minute{}\
         \n  traffic errors           {} (the benchmark's own requests that failed)\
         \n  hot reload               {} ({} reloads; file written → rule live)\
         \n  engine CPU               {:.1} s over the measured run (simulator: {:.1} s)\
         \n  engine memory            peak {:.1} MiB resident; {:.1} MiB after the first cycle, {:.1} MiB after the last\
         \n  engine heap in use       {:.1} MiB after the first cycle, {:.1} MiB after the last\
         \n  engine memory over time  {}\
         \n  simulator memory         peak {:.1} MiB resident\
         \n  decision trace           {}\n",
        r.sessions,
        r.history,
        r.changed_per_cycle,
        r.churned_per_cycle,
        r.poll_interval_ms,
        r.startup_ms,
        r.baseline_ms,
        r.cycles,
        ms(&r.cycle_ms),
        r.list_requests_per_cycle,
        r.detail_requests_per_cycle,
        r.action_requests_per_cycle,
        if r.requests_log_truncated {
            format!(
                " (over the simulator's newest {} requests)",
                crate::sim::REQUEST_LOG_CAP
            )
        } else {
            String::new()
        },
        r.state_commits_per_cycle,
        r.state_commits_per_cycle + 2.0 * r.action_requests_per_cycle,
        ms(&r.reaction_ms),
        r.reaction_ms.count,
        r.reactions_missed,
        r.reactions_moot,
        ms(&r.message_reaction_ms),
        r.message_reaction_ms.count,
        r.walk_every_ms,
        r.poll_interval_ms,
        if r.pending_interval_ms == 0 {
            "off".to_string()
        } else {
            format!("every {} ms", r.pending_interval_ms)
        },
        r.pending_requests_per_cycle,
        r.requests_per_minute,
        r.busiest_minute,
        match r.max_requests_per_minute {
            Some(n) => format!(" (budget {n})"),
            None => String::new(),
        },
        r.traffic_errors,
        ms(&r.hot_reload_ms),
        r.hot_reload_ms.count,
        r.cpu_seconds,
        r.sim_cpu_seconds,
        r.peak_rss_mib,
        r.rss_first_mib,
        r.rss_last_mib,
        r.heap_first_mib,
        r.heap_last_mib,
        timeline(&r.memory_timeline),
        r.sim_peak_rss_mib,
        if r.trace_length == 0 {
            "off (--trace-length 0)".to_string()
        } else {
            format!(
                "{} steps kept, {:.0} bytes per session in the state on average (newest {} per session)",
                r.trace_steps, r.trace_bytes_per_session, r.trace_length
            )
        },
    )
}
