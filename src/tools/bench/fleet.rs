//! `skyrules bench --workspaces N`: many SkyLight accounts in one process
//! (SPEC §7), each its own simulator with its own chats, all on one state
//! store (SQLite, or PostgreSQL when `SKYRULES_BENCH_STATE_URL` is set).
//!
//! Owns: starting N simulators and N engines as `skyrules run` does for N
//! `[workspaces.*]` tables, and measuring per workspace-cycle what decides
//! whether one process can carry them: cycle time, state commits, the
//! store's commit latency, resident memory per tracked chat and CPU.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{
    cpu_seconds, create_sessions, drive_traffic, memory_mib, message_handled, reactions,
    request_log, spawn_sim, BenchOptions, Millis, Posted, SimProcess,
};
use crate::api::Client;
use crate::engine::{Engine, Note};
use crate::store::{
    AuditEntry, AuditFilter, Batch, Begin, Intent, Loaded, Pending, Store, StoreError,
};
use crate::tracking::Tracked;

/// The variable naming a PostgreSQL database for the benchmark's state
/// (one to spare: it is written to, and not cleaned up).
pub(crate) const BENCH_STATE_URL_ENV: &str = "SKYRULES_BENCH_STATE_URL";

/// What a many-workspace run measured.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    /// Workspaces (one simulator each).
    pub workspaces: usize,
    /// Active sessions per workspace.
    pub sessions_per_workspace: usize,
    /// Sessions changed per workspace and poll.
    pub changed_per_cycle: usize,
    /// The poll interval, ms.
    pub poll_interval_ms: u64,
    /// Where the state was: `sqlite` or `postgres`.
    pub store: String,
    /// Workspace-cycles measured.
    pub cycles: usize,
    /// Cycle wall time over every workspace's cycles.
    pub cycle_ms: Millis,
    /// The worst workspace's cycle p99, ms.
    pub worst_workspace_p99_ms: f64,
    /// State commits (sessions, events, memory; not the actions' own
    /// records) per workspace-cycle.
    pub state_commits_per_workspace_cycle: f64,
    /// Latency of the store's cycle commits.
    pub commit_ms: Millis,
    /// Resident memory one workspace's engine takes before it tracks a
    /// chat (rules, client, channels), MiB.
    pub rss_per_workspace_mib: f64,
    /// Resident memory after every workspace's baseline, minus with the
    /// engines built and no chat tracked, per tracked chat, KiB.
    pub rss_per_chat_kib: f64,
    /// Resident memory at the end, MiB.
    pub rss_mib: f64,
    /// Engine CPU per workspace-cycle, ms.
    pub cpu_ms_per_workspace_cycle: f64,
    /// Human requests the traffic made.
    pub human_requests: usize,
    /// Human request → take-over over every workspace, simulator clock.
    pub reaction_ms: Millis,
    /// A visitor message sent → its engine handling its event, over every
    /// workspace.
    pub message_reaction_ms: Millis,
    /// The busiest workspace's requests per minute (one key's).
    pub max_requests_per_minute: f64,
    /// Take-overs the engines sent.
    pub take_overs: usize,
}

/// A store that times its commits, around the real one.
struct Timed {
    inner: Arc<dyn Store>,
    commits: Arc<Mutex<Vec<f64>>>,
}

impl Store for Timed {
    fn load(&self) -> Result<Loaded, StoreError> {
        self.inner.load()
    }
    fn memory(
        &self,
        session_id: &str,
    ) -> Result<std::collections::HashMap<String, crate::rules::Memory>, StoreError> {
        self.inner.memory(session_id)
    }
    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let started = Instant::now();
        let r = self.inner.commit(batch);
        if let Ok(mut c) = self.commits.lock() {
            c.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        r
    }
    fn pending_events(&self) -> Result<Vec<Pending>, StoreError> {
        self.inner.pending_events()
    }
    fn trace(&self, session_id: &str) -> Result<Option<crate::trace::TraceRows>, StoreError> {
        self.inner.trace(session_id)
    }
    fn begin_action(&self, intent: &Intent, journal: Option<&Batch>) -> Result<Begin, StoreError> {
        self.inner.begin_action(intent, journal)
    }
    fn finish_action(
        &self,
        key: &str,
        outcome: &str,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        self.inner.finish_action(key, outcome, detail)
    }
    fn pending_actions(&self) -> Result<Vec<Intent>, StoreError> {
        self.inner.pending_actions()
    }
    fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner.audit(filter)
    }
    fn sessions_since(&self, since: crate::api::Timestamp) -> Result<Vec<Tracked>, StoreError> {
        self.inner.sessions_since(since)
    }
    fn timer_breaches(
        &self,
        since: crate::api::Timestamp,
    ) -> Result<Vec<(String, chrono::NaiveDate, u64)>, StoreError> {
        self.inner.timer_breaches(since)
    }
    fn latest_action_at(&self) -> Result<Option<crate::api::Timestamp>, StoreError> {
        self.inner.latest_action_at()
    }
    fn purge(&self, before: crate::api::Timestamp) -> Result<usize, StoreError> {
        self.inner.purge(before)
    }
    fn workspace(&self, name: &str) -> Arc<dyn Store> {
        Arc::new(Timed {
            inner: self.inner.workspace(name),
            commits: self.commits.clone(),
        })
    }
    fn location(&self) -> String {
        self.inner.location()
    }
}

/// Runs `workspaces` engines, each on its own simulator with
/// `opts.sessions` chats, on one store, and measures them.
///
/// Long on purpose: set-up, measurement and the report in the order they
/// happen.
pub async fn run(opts: BenchOptions, workspaces: usize) -> anyhow::Result<FleetReport> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut sims: Vec<SimProcess> = Vec::new();
    let ids: Vec<u32> = (0..opts.sessions as u32).collect();
    for w in 0..workspaces {
        let sim = spawn_sim(opts.seed + w as u64).await?;
        create_sessions(&http, &sim, &ids, opts.history).await?;
        sims.push(sim);
    }
    let scratch = super::tempdir()?;
    let rules = scratch.path().join("rules");
    crate::tools::embedded_rules::write(&rules)?;
    // Its own variable, never SKYRULES_STATE_URL: the benchmark writes its
    // workspaces into the database it is given.
    let url = std::env::var(BENCH_STATE_URL_ENV)
        .ok()
        .filter(|u| !u.trim().is_empty());
    let kind = if url.is_some() { "postgres" } else { "sqlite" };
    let store = crate::store::open(&scratch.path().join("bench.db"), url.as_deref())
        .await
        .context("opening the benchmark's state")?;
    let commits = Arc::new(Mutex::new(Vec::new()));
    let timed: Arc<dyn Store> = Arc::new(Timed {
        inner: store,
        commits: commits.clone(),
    });
    // Each run is its own set of workspaces, so a Postgres database used
    // before starts from an empty state for them too.
    let run_id = std::process::id();

    let metrics = crate::telemetry::metrics::install();
    let stop = CancellationToken::new();
    if let Some(handle) = metrics {
        crate::telemetry::metrics::keep_up(handle, stop.clone());
    }
    let me = std::process::id().to_string();
    let rss_before = memory_mib(&me, "VmRSS:");
    let mut notes = Vec::new();
    let mut engines = Vec::new();
    for (w, sim) in sims.iter().enumerate() {
        let name = format!("bench-{run_id}-{w}");
        let mut config = super::client_config(sim, &opts);
        config.workspace = name.clone();
        let api = Client::new(config)?;
        let (mut engine, _) = Engine::new(
            api,
            timed.workspace(&name),
            super::engine_options(&rules, &opts),
        )
        .await?;
        engine.keep_trying_when_refused();
        notes.push(engine.subscribe());
        engines.push(engine);
    }
    let rss_engines = memory_mib(&me, "VmRSS:");
    let tasks: Vec<_> = engines
        .into_iter()
        .map(|e| tokio::spawn(e.run(stop.clone())))
        .collect();
    // Every workspace's baseline first, and the memory they freed given
    // back (jemalloc returns freed pages after a second).
    for rx in &mut notes {
        first_cycle(rx).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after_baseline = memory_mib(&me, "VmRSS:");
    if let Ok(mut c) = commits.lock() {
        c.clear();
    }
    let cpu_before = cpu_seconds(&me);
    let traffic_stop = CancellationToken::new();
    let _ = futures::future::join_all(
        sims.iter()
            .map(|sim| http.delete(format!("{}/requests", sim.control)).send()),
    )
    .await;
    let measured = Instant::now();
    let posted: Vec<Posted> = sims.iter().map(|_| Posted::default()).collect();
    let traffic: Vec<_> = sims
        .iter()
        .zip(&posted)
        .map(|(sim, posted)| {
            tokio::spawn(drive_traffic(
                http.clone(),
                sim.control.clone(),
                opts.clone(),
                ids.clone(),
                posted.clone(),
                traffic_stop.clone(),
            ))
        })
        .collect();
    let (per_workspace, state_commits, message_ms) =
        collect_cycles(&mut notes, &posted, opts.duration).await;
    traffic_stop.cancel();
    // Human requests of the last interval are answered by the next poll.
    tokio::time::sleep(opts.poll_interval * 2).await;
    let mut asked = Vec::new();
    for t in traffic {
        asked.push(t.await.map(|t| t.asked).unwrap_or_default());
    }
    let minutes = measured.elapsed().as_secs_f64() / 60.0;
    let cpu = cpu_seconds(&me) - cpu_before;
    let rss = memory_mib(&me, "VmRSS:");
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let mut take_overs = 0;
    let mut reaction = Vec::new();
    let mut max_rpm: f64 = 0.0;
    for (sim, asked) in sims.iter().zip(&asked) {
        take_overs += take_overs_sent(&http, sim).await?;
        reaction.extend(reactions(&http, sim, asked).await?.ms);
        let log = request_log(&http, sim).await?;
        let sent = log.list + log.pending_lists + log.detail + log.actions;
        max_rpm = max_rpm.max(sent as f64 / minutes.max(1e-9));
    }
    let asked: usize = asked.iter().map(Vec::len).sum();
    for mut sim in sims {
        let _ = sim.child.kill().await;
    }
    let cycles: usize = per_workspace.iter().map(Vec::len).sum();
    let worst = per_workspace
        .iter()
        .map(|v| Millis::of(v.clone()).p99)
        .fold(0.0, f64::max);
    let commit_ms = Millis::of(commits.lock().map(|c| c.clone()).unwrap_or_default());
    let chats = (workspaces * opts.sessions).max(1) as f64;
    Ok(FleetReport {
        workspaces,
        sessions_per_workspace: opts.sessions,
        changed_per_cycle: super::changed_per_cycle(&opts),
        poll_interval_ms: opts.poll_interval.as_millis() as u64,
        store: kind.to_string(),
        cycles,
        cycle_ms: Millis::of(per_workspace.concat()),
        worst_workspace_p99_ms: worst,
        state_commits_per_workspace_cycle: state_commits as f64 / cycles.max(1) as f64,
        commit_ms,
        rss_per_workspace_mib: (rss_engines - rss_before).max(0.0) / workspaces.max(1) as f64,
        rss_per_chat_kib: (rss_after_baseline - rss_engines).max(0.0) * 1024.0 / chats,
        rss_mib: rss,
        cpu_ms_per_workspace_cycle: cpu * 1000.0 / cycles.max(1) as f64,
        human_requests: asked,
        take_overs,
        reaction_ms: Millis::of(reaction),
        message_reaction_ms: Millis::of(message_ms),
        max_requests_per_minute: max_rpm,
    })
}

/// Each workspace's cycle times (ms) and the state commits of all, from
/// the engines' notes over `duration`.
async fn collect_cycles(
    notes: &mut [broadcast::Receiver<Note>],
    posted: &[Posted],
    duration: Duration,
) -> (Vec<Vec<f64>>, usize, Vec<f64>) {
    let mut message_ms = Vec::new();
    let until = Instant::now() + duration;
    let mut per_workspace: Vec<Vec<f64>> = vec![Vec::new(); notes.len()];
    let mut state_commits = 0usize;
    while Instant::now() < until {
        for (w, rx) in notes.iter_mut().enumerate() {
            loop {
                match rx.try_recv() {
                    Ok(Note::Cycle {
                        elapsed, commits, ..
                    }) => {
                        per_workspace[w].push(elapsed.as_secs_f64() * 1000.0);
                        state_commits += commits;
                    }
                    Ok(n @ Note::Event { .. }) => {
                        message_ms.extend(message_handled(&posted[w], &n));
                    }
                    Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                    Err(_) => break,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (per_workspace, state_commits, message_ms)
}

/// Take-over requests a simulator received, from its request log.
async fn take_overs_sent(http: &reqwest::Client, sim: &SimProcess) -> anyhow::Result<usize> {
    let log = super::get(http, format!("{}/requests", sim.control)).await?;
    Ok(log
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|r| {
                    r["method"] == "POST"
                        && r["path"]
                            .as_str()
                            .is_some_and(|p| p.ends_with("/take-over"))
                })
                .count()
        })
        .unwrap_or(0))
}

/// Waits for one engine's baseline poll.
async fn first_cycle(notes: &mut broadcast::Receiver<Note>) -> anyhow::Result<()> {
    loop {
        match notes.recv().await {
            Ok(Note::Cycle { .. }) => return Ok(()),
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(_) => anyhow::bail!("an engine stopped before its first poll"),
        }
    }
}

/// The report as a table, with the targets of SPEC §7's benchmark.
pub fn render(r: &FleetReport) -> String {
    let mark = |ok: bool| if ok { "met" } else { "NOT met" };
    let per_chat_ok = r.rss_per_chat_kib <= 6.0;
    format!(
        "workspaces {w} × {s} chats, {c} changing per poll, every {i} ms, state in {store}\n\
         workspace-cycles measured   {cycles}\n\
         cycle p50 / p99 / max       {p50:.1} / {p99:.1} / {max:.1} ms\n\
         worst workspace's p99       {worst:.1} ms   (target ≤ 1000 ms: {m1})\n\
         state commits per ws-cycle  {commits:.2}   (target ≤ 1: {m2})\n\
         store commit p50 / p99      {c50:.2} / {c99:.2} ms\n\
         resident per tracked chat   {kib:.2} KiB   (target ≤ 6 KiB: {m3})\n\
         resident per workspace      {wmib:.2} MiB before its first chat\n\
         resident at the end         {rss:.1} MiB\n\
         CPU per workspace-cycle     {cpu:.2} ms\n\
         human requests / take-overs {asked} / {t}\n\
         reaction p50 / p99          {r50:.0} / {r99:.0} ms (human request → take-over)\n\
         message reaction p50 / p99  {m50:.0} / {m99:.0} ms (visitor message → handled)\n\
         busiest workspace           {rpm:.0} requests per minute\n",
        w = r.workspaces,
        s = r.sessions_per_workspace,
        c = r.changed_per_cycle,
        i = r.poll_interval_ms,
        store = r.store,
        cycles = r.cycles,
        p50 = r.cycle_ms.p50,
        p99 = r.cycle_ms.p99,
        max = r.cycle_ms.max,
        worst = r.worst_workspace_p99_ms,
        m1 = mark(r.worst_workspace_p99_ms <= 1000.0),
        commits = r.state_commits_per_workspace_cycle,
        m2 = mark(r.state_commits_per_workspace_cycle <= 1.0),
        c50 = r.commit_ms.p50,
        c99 = r.commit_ms.p99,
        kib = r.rss_per_chat_kib,
        wmib = r.rss_per_workspace_mib,
        m3 = mark(per_chat_ok),
        rss = r.rss_mib,
        cpu = r.cpu_ms_per_workspace_cycle,
        asked = r.human_requests,
        t = r.take_overs,
        r50 = r.reaction_ms.p50,
        r99 = r.reaction_ms.p99,
        m50 = r.message_reaction_ms.p50,
        m99 = r.message_reaction_ms.p99,
        rpm = r.max_requests_per_minute,
    )
}
