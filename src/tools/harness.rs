//! A simulator whose clock stands still and an engine on it, stepped by
//! hand: how `skyrules test` runs a scenario and `skyrules replay` runs past
//! sessions. Time moves only when the caller moves it, so a two-hour timer
//! takes no real time, and a step is "poll until a poll sees no event".
//!
//! Owns: starting the pair (in-memory state, quick retries), resuming, one
//! poll, and settling. Does not own what is put into the simulator or what
//! is read from the engine's notes: that is the caller's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::{ApiKey, Client, ClientConfig, RetryPolicy};
use crate::engine::{CycleEnd, Engine, EngineOptions};
use crate::rules::reload::ReloadReport;
use crate::rules::World;
use crate::sim::{SimConfig, SimHandle};
use crate::store::MemoryStore;
use crate::tracking::Watcher;

/// Polls a settle makes before it gives up: more means a rule keeps
/// answering what it caused itself.
pub(crate) const MAX_SETTLE_CYCLES: usize = 10;

/// The stepped simulator and engine.
pub(crate) struct Harness {
    /// The simulator (frozen clock, no bot, no traffic).
    pub sim: SimHandle,
    /// A client of the simulator, as the engine's own.
    pub api: Client,
    /// The engine, polled only by [`Harness::step`].
    pub engine: Engine,
    watcher: Option<Watcher>,
    stop: CancellationToken,
}

impl Harness {
    /// Starts the simulator and an engine with in-memory state on it; the
    /// rules' load report says which rules failed to load.
    pub(crate) async fn start(
        opts: EngineOptions,
        world: World,
    ) -> Result<(Harness, ReloadReport), String> {
        const KEY: &str = "harness";
        let sim = crate::sim::start(
            SimConfig {
                api_key: KEY.into(),
                seed: 1,
                bot_delay: None,
                clock_speed: 0.0,
                traffic: None,
            },
            SocketAddr::from(([127, 0, 0, 1], 0)),
        )
        .await
        .map_err(|e| format!("cannot start the simulator: {e}"))?;
        let mut cfg = ClientConfig::new(sim.base_url(), ApiKey::new(KEY));
        // Local and in-process: a retry is a fault the caller injected.
        cfg.retry = RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
            max_retry_after: Duration::from_millis(20),
        };
        let api = Client::new(cfg).map_err(|e| e.to_string())?;
        let (engine, report) =
            Engine::with_world(api.clone(), Arc::new(MemoryStore::new()), opts, world)
                .await
                .map_err(|e| e.to_string())?;
        let harness = Harness {
            sim,
            api,
            engine,
            watcher: None,
            stop: CancellationToken::new(),
        };
        Ok((harness, report))
    }

    /// Does what the engine does before its first poll.
    pub(crate) async fn resume(&mut self) -> Result<(), String> {
        self.watcher = Some(self.engine.resume().await.map_err(|e| e.to_string())?);
        Ok(())
    }

    /// One poll cycle (resuming first if that was not done).
    pub(crate) async fn step(&mut self) -> Result<(), String> {
        if self.watcher.is_none() {
            self.resume().await?;
        }
        let watcher = self.watcher.as_mut().ok_or("the engine did not resume")?;
        match self.engine.cycle(watcher, &self.stop).await {
            Ok(CycleEnd::Done) => Ok(()),
            Ok(CycleEnd::Interrupted) => Err("interrupted".into()),
            Err(e) => Err(format!("poll failed: {e}")),
        }
    }

    /// Polls until `quiet` (called after each poll, typically draining the
    /// engine's notes) says the poll saw no event, at most
    /// [`MAX_SETTLE_CYCLES`] times; false when it never got quiet.
    pub(crate) async fn settle(&mut self, mut quiet: impl FnMut() -> bool) -> Result<bool, String> {
        for _ in 0..MAX_SETTLE_CYCLES {
            self.step().await?;
            if quiet() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Stops the simulator.
    pub(crate) async fn shutdown(self) {
        self.stop.cancel();
        self.sim.shutdown().await;
    }
}
