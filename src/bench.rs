//! `skyrules bench`: the load benchmark — the simulator and the engine in
//! one process, N live chats, a fraction of them changing every poll.
//!
//! Owns: setting the scene (sessions, rules, a state file), driving traffic
//! and measuring what ops care about: poll-cycle time, requests per cycle
//! (list pages versus session reads versus actions), reaction latency from a
//! human request to the take-over reaching the simulator, CPU seconds and
//! peak memory. The numbers cover the whole process, simulator included.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::api::{ApiKey, Client, ClientConfig};
use crate::engine::{Engine, EngineOptions, Note};
use crate::executor::Guard;
use crate::sim::SimConfig;
use crate::store::SqliteStore;

/// Load benchmark settings.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Active sessions.
    pub sessions: usize,
    /// How long to measure after the first (baseline) poll.
    pub duration: Duration,
    /// Fraction of sessions that change between two polls.
    pub changed: f64,
    /// The engine's poll interval.
    pub poll_interval: Duration,
    /// Traffic seed.
    pub seed: u64,
}

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
    /// Sessions changed per poll.
    pub changed_per_cycle: usize,
    /// The poll interval, ms.
    pub poll_interval_ms: u64,
    /// Engine construction to the first poll, ms (rules loaded, state
    /// opened).
    pub startup_ms: f64,
    /// The first poll, which reads every session once (the baseline), ms.
    pub baseline_ms: f64,
    /// Steady-state poll cycles measured.
    pub cycles: usize,
    /// Poll-cycle wall time (poll, rules, actions, commit).
    pub cycle_ms: Millis,
    /// Average list-page requests per cycle.
    pub list_requests_per_cycle: f64,
    /// Average session reads per cycle.
    pub detail_requests_per_cycle: f64,
    /// Average action requests per cycle.
    pub action_requests_per_cycle: f64,
    /// Human request → take-over reaching the simulator.
    pub reaction_ms: Millis,
    /// CPU seconds of the whole process (engine and simulator).
    pub cpu_seconds: f64,
    /// Peak resident memory of the whole process, MiB.
    pub peak_rss_mib: f64,
}

fn cpu_seconds() -> f64 {
    // utime and stime, fields 14 and 15 of /proc/self/stat, in clock ticks
    // (100 per second on Linux).
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
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

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Runs the benchmark.
pub async fn run(opts: BenchOptions) -> anyhow::Result<BenchReport> {
    let sim = crate::sim::start(
        SimConfig {
            api_key: "bench".into(),
            seed: opts.seed,
            bot_delay: None,
            clock_speed: 1.0,
            traffic: None,
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await?;
    let mut ids = Vec::with_capacity(opts.sessions);
    for i in 0..opts.sessions {
        let id = format!("sess_bench{i:07}");
        sim.create_session(serde_json::json!({
            "session_id": id,
            "visitor_name": format!("Visitor {i}"),
            "messages": [
                {"sender_type": "visitor", "text": "Hi, how much is the Pro plan?"},
                {"sender_type": "bot", "text": "The Pro plan is $29 a month."},
                {"sender_type": "visitor", "text": "Thanks, and for a team of five?"},
            ],
        }))
        .map_err(|e| anyhow::anyhow!("cannot create session {id}: {e:?}"))?;
        ids.push(id);
    }
    let dir = tempdir()?;
    let rules = dir.join("rules");
    crate::demo::write_embedded_rules(&rules)?;

    let started = Instant::now();
    let api = Client::new(ClientConfig::new(sim.base_url(), ApiKey::new("bench")))?;
    let state = dir.join("bench.db");
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&state)).await??;
    let (engine, _) = Engine::new(
        api,
        Arc::new(store),
        EngineOptions {
            rules_dir: rules,
            poll_interval: opts.poll_interval,
            dry_run: false,
            max_concurrency: 8,
            guard: Guard {
                max_replies: 5,
                window: Duration::from_secs(600),
            },
        },
    )
    .await?;
    let mut notes = engine.subscribe();
    let stop = CancellationToken::new();
    let mut watcher = engine.resume().await?;
    let startup = started.elapsed();

    let baseline_started = Instant::now();
    engine.cycle(&mut watcher, &stop).await?;
    let baseline = baseline_started.elapsed();
    while notes.try_recv().is_ok() {}
    sim.clear_requests();

    let changed = ((opts.sessions as f64 * opts.changed).round() as usize).max(1);
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut cycle_ms = Vec::new();
    let mut asked: HashMap<String, Instant> = HashMap::new();
    let mut reaction_ms = Vec::new();
    let cpu_before = cpu_seconds();
    let until = Instant::now() + opts.duration;
    let mut tick = tokio::time::interval(opts.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut turn = 0usize;
    while Instant::now() < until {
        // Between polls, `changed` chats move; one in ten of those asks for
        // a human, whose take-over is timed.
        for k in 0..changed {
            let id = &ids[rng.random_range(0..ids.len())];
            let _ = sim.visitor_message(id, "Another question about pricing");
            if k % 10 == 0 && !asked.contains_key(id) {
                let _ = sim.request_human(id);
                asked.insert(id.clone(), Instant::now());
            }
        }
        turn += 1;
        tick.tick().await;
        let t = Instant::now();
        engine.cycle(&mut watcher, &stop).await?;
        cycle_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        while let Ok(n) = notes.try_recv() {
            if let Note::Action {
                session_id,
                action,
                outcome,
                ..
            } = n
            {
                if action == "take_over" && outcome == "taken" {
                    if let Some(at) = asked.get(&session_id) {
                        reaction_ms.push(at.elapsed().as_secs_f64() * 1000.0);
                    }
                }
            }
        }
    }
    let cpu = cpu_seconds() - cpu_before;
    let requests = sim.requests();
    let cycles = cycle_ms.len().max(1) as f64;
    let (mut list, mut detail, mut actions) = (0usize, 0usize, 0usize);
    for r in &requests {
        if r.method == "POST" {
            actions += 1;
        } else if r.path.ends_with("/sessions") {
            list += 1;
        } else {
            detail += 1;
        }
    }
    let _ = turn;
    stop.cancel();
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(BenchReport {
        sessions: opts.sessions,
        changed_per_cycle: changed,
        poll_interval_ms: opts.poll_interval.as_millis() as u64,
        startup_ms: startup.as_secs_f64() * 1000.0,
        baseline_ms: baseline.as_secs_f64() * 1000.0,
        cycles: cycle_ms.len(),
        cycle_ms: Millis::of(cycle_ms),
        list_requests_per_cycle: list as f64 / cycles,
        detail_requests_per_cycle: detail as f64 / cycles,
        action_requests_per_cycle: actions as f64 / cycles,
        reaction_ms: Millis::of(reaction_ms),
        cpu_seconds: cpu,
        peak_rss_mib: peak_rss_mib(),
    })
}

fn tempdir() -> std::io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("skyrules-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
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
        "skyrules load benchmark: {} sessions, {} changed per poll, poll every {} ms\n\
         \n  start-up to first poll   {:.1} ms\
         \n  baseline poll            {:.1} ms (reads every session once)\
         \n  poll cycles              {}\
         \n  cycle time               {}\
         \n  requests per cycle       {:.1} list pages + {:.1} session reads + {:.1} actions\
         \n  reaction latency         {} ({} take-overs; request → take-over)\
         \n  CPU                      {:.1} s over the measured run (engine + simulator)\
         \n  peak memory              {:.1} MiB resident (engine + simulator)\n",
        r.sessions,
        r.changed_per_cycle,
        r.poll_interval_ms,
        r.startup_ms,
        r.baseline_ms,
        r.cycles,
        ms(&r.cycle_ms),
        r.list_requests_per_cycle,
        r.detail_requests_per_cycle,
        r.action_requests_per_cycle,
        ms(&r.reaction_ms),
        r.reaction_ms.count,
        r.cpu_seconds,
        r.peak_rss_mib,
    )
}
