//! Replicas (SPEC §7): which workspaces this process acts on when several
//! `skyrules run` processes share one PostgreSQL state.
//!
//! Owns: the lease loop — heartbeats, renewals, taking free workspaces,
//! sharing them out evenly, handing them over at SIGTERM — and each held
//! workspace's [`Tenure`], the deadline by this process's monotonic clock
//! after which it no longer acts. Starts and stops a workspace's engine
//! through the [`Launch`] it is given; knows nothing of polls, rules or
//! actions. The leases themselves (SQL, fencing of writes) are the store's
//! ([`crate::store::Leases`]).
//!
//! Timing, for a lease `L` (`[ha] lease`, default 15 s): every `L/5` (at
//! most 2 s) the loop renews every held lease in one statement and looks
//! for free ones. A renewal that started at `t` lets this process act
//! until `t + L − L/5`: the database's expiry is at least `t + L`, so this
//! process stops before anyone else may start, even if every renewal after
//! `t` fails: at the default 15 s lease, five renewals in a row can fail
//! before that.

mod tenure;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::{LeaseTable, Leases, Store, StoreError};
use crate::telemetry::status::{LeaseView, SharedBoard};
pub use tenure::Tenure;

/// The longest time between two renewal rounds.
const MAX_TICK: Duration = Duration::from_secs(2);

/// Renewal rounds a replica must be over its share in a row before it
/// hands the excess over: a heartbeat that lapses once must not move
/// workspaces back and forth.
const OVER_SHARE_ROUNDS: u32 = 3;

/// How long a workspace whose engine stopped on its own (it could not
/// start) is left to the other replicas before this one tries it again.
const COOLDOWN: Duration = Duration::from_secs(30);

/// How this replica takes part.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    /// Its id, unique among the replicas (`SKYRULES_REPLICA`, else
    /// `host-pid`).
    pub id: String,
    /// The lease (`[ha] lease`).
    pub lease: Duration,
    /// The SkyLight client's request timeout: how long a request the last
    /// holder sent just before its deadline may still take to land.
    pub api_timeout: Duration,
}

impl ReplicaOptions {
    /// Time between renewal rounds.
    fn tick(&self) -> Duration {
        (self.lease / 5).min(MAX_TICK)
    }

    /// How long a renewal that started at `t` lets this process act.
    fn tenure(&self) -> Duration {
        self.lease - self.lease / 5
    }
}

/// The default replica id: the host name and the process id.
pub fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "replica".into());
    format!("{host}-{}", std::process::id())
}

/// What a workspace's engine gets when this replica takes it.
pub struct Takeover {
    /// The workspace's state, every write fenced by the lease's epoch.
    pub store: Arc<dyn Store>,
    /// The deadline that every action checks.
    pub tenure: Arc<Tenure>,
    /// When replies the last holder may have been sending have landed:
    /// set when it let the lease expire rather than handing it over. Its
    /// unfinished replies are settled against the API only after this.
    pub settle_after: Option<Instant>,
}

/// Starts a workspace's engine; the task ends when `stop` is cancelled
/// (after its in-flight actions finish) or the engine stops on its own,
/// with whether it finished every action it had started (`false`: one was
/// cut short and its request may still land).
pub type Launch =
    Arc<dyn Fn(Arc<str>, Takeover, CancellationToken) -> JoinHandle<bool> + Send + Sync>;

/// A workspace this replica holds.
struct Held {
    epoch: i64,
    tenure: Arc<Tenure>,
    stop: CancellationToken,
    task: JoinHandle<bool>,
    // Being handed over: the engine is stopping, the lease is still
    // renewed until it has, then released.
    leaving: bool,
}

/// The lease loop of one replica over `workspaces`.
pub struct Coordinator {
    opts: ReplicaOptions,
    leases: Arc<dyn Leases>,
    launch: Launch,
    boards: BTreeMap<Arc<str>, SharedBoard>,
    held: BTreeMap<Arc<str>, Held>,
    // Engines stopped after a loss, still finishing: their workspace is
    // not taken again until they have.
    stopping: BTreeMap<Arc<str>, JoinHandle<bool>>,
    over_share: u32,
    // The workspaces served, sorted: written with the heartbeat, so that
    // only replicas of the same configuration share them out.
    serves: Vec<String>,
    // Shutting down: no heartbeat any more, so the others count this
    // replica gone while it hands its workspaces over.
    leaving_all: bool,
    // Workspaces whose engine stopped on its own, not taken again before.
    cooldown: BTreeMap<Arc<str>, Instant>,
}

impl Coordinator {
    /// A coordinator for the workspaces whose boards are given (each
    /// board is updated with who holds its workspace).
    pub fn new(
        opts: ReplicaOptions,
        leases: Arc<dyn Leases>,
        launch: Launch,
        boards: Vec<(Arc<str>, SharedBoard)>,
    ) -> Coordinator {
        for (ws, b) in &boards {
            crate::telemetry::metrics::lease_not_held(ws);
            b.write().unwrap_or_else(|p| p.into_inner()).lease = Some(LeaseView {
                replica: opts.id.clone(),
                holder: None,
                epoch: 0,
                held_here: false,
                error: None,
            });
        }
        let boards: BTreeMap<Arc<str>, SharedBoard> = boards.into_iter().collect();
        Coordinator {
            opts,
            leases,
            launch,
            serves: boards.keys().map(|w| w.to_string()).collect(),
            boards,
            held: BTreeMap::new(),
            stopping: BTreeMap::new(),
            over_share: 0,
            leaving_all: false,
            cooldown: BTreeMap::new(),
        }
    }

    /// Runs until `shutdown`, then hands every held workspace over: each
    /// engine finishes its in-flight actions (the lease still renewed
    /// meanwhile), its lease is released, and this replica's heartbeat is
    /// removed, so the others take over at their next round.
    pub async fn run(mut self, shutdown: CancellationToken) {
        tracing::info!(replica = %self.opts.id, lease = %humantime::format_duration(self.opts.lease), workspaces = self.boards.len(), "taking part in the leases as a replica");
        let mut tick = tokio::time::interval(self.opts.tick());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            self.round(true).await;
        }
        // Gone from the heartbeats first: the others' shares grow at once,
        // so they take each workspace as soon as it is released.
        self.leaving_all = true;
        let (leases, id) = (self.leases.clone(), self.opts.id.clone());
        if let Err(e) = self.bounded(move || leases.leave(&id)).await {
            tracing::warn!(error = %e, "could not remove this replica's heartbeat; the others see it gone within one lease");
        }
        for (ws, h) in self.held.iter_mut() {
            if !h.leaving {
                tracing::info!(workspace = %ws, epoch = h.epoch, "shutting down: handing the workspace over");
                h.leaving = true;
                h.stop.cancel();
            }
        }
        while !self.held.is_empty() {
            tick.tick().await;
            self.round(false).await;
        }
    }

    /// A lease call, given up on after one round's time: a database that
    /// stopped answering must not hold up the loop (and the deadlines it
    /// enforces).
    async fn bounded<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let limit = self.opts.tick();
        match tokio::time::timeout(limit, blocking(f)).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable {
                location: "the leases".into(),
                message: format!("no answer within {}", humantime::format_duration(limit)),
            }),
        }
    }

    /// One round: renew, stop what was lost or ran out, settle engines
    /// that finished, and (unless shutting down) take or hand over
    /// workspaces towards this replica's share.
    async fn round(&mut self, balance: bool) {
        let started = Instant::now();
        let held: Vec<(String, i64)> = self
            .held
            .iter()
            .map(|(w, h)| (w.to_string(), h.epoch))
            .collect();
        let (leases, id, ttl) = (self.leases.clone(), self.opts.id.clone(), self.opts.lease);
        let serves = (!self.leaving_all).then(|| self.serves.clone());
        let seen = self
            .bounded(move || leases.tick(&id, &held, ttl, serves.as_deref()))
            .await
            .map_err(|e| e.to_string());
        match seen {
            Ok(table) => {
                self.renewed(&table, started);
                self.show(&table);
                self.settle_finished().await;
                if balance {
                    self.balance(&table).await;
                }
            }
            Err(e) => {
                let left = self
                    .held
                    .values()
                    .map(|h| h.tenure.remaining())
                    .min()
                    .unwrap_or_default();
                if self.held.is_empty() {
                    tracing::warn!(error = %e, "cannot reach the leases; this replica takes no workspace until it can");
                } else {
                    tracing::warn!(error = %e, acting_for = %humantime::format_duration(round_s(left)), "cannot renew the leases; this replica stops acting when its deadline comes unless a renewal succeeds first");
                }
                self.show_error(&e);
                self.expire();
                self.settle_finished().await;
            }
        }
    }

    /// Moves each renewed lease's deadline; stops the engines of leases
    /// lost (another replica took them, or they expired unrenewed).
    fn renewed(&mut self, table: &LeaseTable, started: Instant) {
        let until = started + self.opts.tenure();
        let lost: Vec<Arc<str>> = self
            .held
            .iter()
            .filter(|(w, h)| {
                !table
                    .renewed
                    .iter()
                    .any(|(rw, re)| rw.as_str() == &***w && *re == h.epoch)
            })
            .map(|(w, _)| w.clone())
            .collect();
        for (w, h) in self.held.iter() {
            if !lost.contains(w) {
                h.tenure.extend(until);
            }
        }
        for w in lost {
            if let Some(h) = self.held.remove(&w) {
                let holder = table
                    .leases
                    .iter()
                    .find(|l| l.workspace == *w)
                    .filter(|l| l.live)
                    .map(|l| format!("{} (epoch {})", l.holder, l.epoch))
                    .unwrap_or_else(|| "nobody yet".into());
                tracing::warn!(workspace = %w, epoch = h.epoch, now_held_by = %holder, "fenced: this replica lost the workspace's lease; it stopped acting on it");
                self.stop_lost(w, h);
            }
        }
        self.expire();
    }

    /// Stops the engines whose deadline passed without a renewal.
    fn expire(&mut self) {
        let out: Vec<Arc<str>> = self
            .held
            .iter()
            .filter(|(_, h)| !h.tenure.may_act())
            .map(|(w, _)| w.clone())
            .collect();
        for w in out {
            if let Some(h) = self.held.remove(&w) {
                tracing::error!(workspace = %w, epoch = h.epoch, "fenced: no lease renewal succeeded in time; this replica stopped acting on the workspace before its lease can expire");
                self.stop_lost(w, h);
            }
        }
    }

    fn stop_lost(&mut self, w: Arc<str>, h: Held) {
        h.tenure.revoke();
        h.stop.cancel();
        crate::telemetry::metrics::lease(&w, "lost", false);
        self.stopping.insert(w, h.task);
    }

    /// Releases the leases of engines that finished handing over, and
    /// forgets stopped engines that have finished.
    async fn settle_finished(&mut self) {
        self.stopping.retain(|_, t| !t.is_finished());
        let done: Vec<Arc<str>> = self
            .held
            .iter()
            .filter(|(_, h)| h.task.is_finished())
            .map(|(w, _)| w.clone())
            .collect();
        for w in done {
            let Some(h) = self.held.remove(&w) else {
                continue;
            };
            h.tenure.revoke();
            if !h.leaving {
                tracing::error!(workspace = %w, epoch = h.epoch, retry_in = %humantime::format_duration(COOLDOWN), "the workspace's engine stopped on its own; its lease is released for another replica");
                self.cooldown.insert(w.clone(), Instant::now() + COOLDOWN);
            }
            // Finished, so this does not wait; a task that panicked counts
            // as cut short.
            let clean = h.task.await.unwrap_or(false);
            let (leases, id, ws, epoch) = (
                self.leases.clone(),
                self.opts.id.clone(),
                w.clone(),
                h.epoch,
            );
            match self
                .bounded(move || leases.release(&ws, &id, epoch, clean))
                .await
            {
                Ok(()) => {
                    tracing::info!(workspace = %w, epoch = h.epoch, "handed the workspace over: lease released");
                    crate::telemetry::metrics::lease(&w, "handed_over", false);
                }
                Err(e) => {
                    tracing::warn!(workspace = %w, epoch = h.epoch, error = %e, "could not release the lease; another replica takes the workspace once it expires");
                    crate::telemetry::metrics::lease(&w, "lost", false);
                }
            }
            self.with_lease(&w, |l| {
                l.held_here = false;
                l.holder = None;
            });
        }
    }

    /// Takes free workspaces up to this replica's share, or hands the
    /// excess over when it has held more than its share for a few rounds. A workspace
    /// left free for a whole lease is taken whatever the shares say.
    async fn balance(&mut self, table: &LeaseTable) {
        let share = share(&table.replicas, &self.opts.id, self.boards.len());
        let now = Instant::now();
        self.cooldown.retain(|_, until| *until > now);
        let active = self.held.values().filter(|h| !h.leaving).count();
        let mut free: Vec<(Arc<str>, Duration)> = self
            .boards
            .keys()
            .filter(|w| {
                !self.held.contains_key(*w)
                    && !self.stopping.contains_key(*w)
                    && !self.cooldown.contains_key(*w)
            })
            .filter_map(|w| match table.leases.iter().find(|l| l.workspace == **w) {
                None => Some((w.clone(), Duration::MAX)),
                Some(l) if !l.live => Some((w.clone(), l.free_for)),
                Some(_) => None,
            })
            .collect();
        // The longest unwatched first.
        free.sort_by_key(|f| std::cmp::Reverse(f.1));
        let mut wanted = share.saturating_sub(active);
        for (w, free_for) in free {
            let orphaned = free_for >= self.opts.lease;
            if wanted == 0 && !orphaned {
                continue;
            }
            if self.take(&w).await {
                wanted = wanted.saturating_sub(1);
            }
        }
        let active = self.held.values().filter(|h| !h.leaving).count();
        if active > share {
            self.over_share += 1;
        } else {
            self.over_share = 0;
        }
        if self.over_share >= OVER_SHARE_ROUNDS {
            self.over_share = 0;
            // All of the excess at once: a replica that joins gets its
            // share within a few rounds, whatever the number of workspaces.
            let excess = active - share;
            for (w, h) in self
                .held
                .iter_mut()
                .rev()
                .filter(|(_, h)| !h.leaving)
                .take(excess)
            {
                tracing::info!(workspace = %w, epoch = h.epoch, share, held = active, "more than this replica's share: handing the workspace over");
                h.leaving = true;
                h.stop.cancel();
            }
        }
    }

    /// Tries to take `w`; whether it was taken.
    async fn take(&mut self, w: &Arc<str>) -> bool {
        let (leases, id, ttl, ws) = (
            self.leases.clone(),
            self.opts.id.clone(),
            self.opts.lease,
            w.clone(),
        );
        let started = Instant::now();
        let got = match self.bounded(move || leases.acquire(&ws, &id, ttl)).await {
            Ok(Some(a)) => a,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(workspace = %w, error = %e, "cannot take the workspace's lease");
                return false;
            }
        };
        let tenure = Tenure::new(started + self.opts.tenure());
        let settle_after = (!got.released).then(|| Instant::now() + self.opts.api_timeout);
        tracing::info!(workspace = %w, epoch = got.epoch, after = if got.released { "the lease was free or handed over" } else { "the last holder's lease expired" }, "took the workspace's lease; resuming from the ledger");
        crate::telemetry::metrics::lease(w, "taken", true);
        let stop = CancellationToken::new();
        let takeover = Takeover {
            store: self.leases.fenced(w, &self.opts.id, got.epoch),
            tenure: tenure.clone(),
            settle_after,
        };
        let task = (self.launch)(w.clone(), takeover, stop.clone());
        self.held.insert(
            w.clone(),
            Held {
                epoch: got.epoch,
                tenure,
                stop,
                task,
                leaving: false,
            },
        );
        self.with_lease(w, |l| {
            l.held_here = true;
            l.holder = Some(l.replica.clone());
            l.epoch = got.epoch;
        });
        true
    }

    /// Shows on every board who holds its workspace, as a round read it.
    fn show(&self, table: &LeaseTable) {
        for w in self.boards.keys() {
            let row = table.leases.iter().find(|l| l.workspace == **w);
            self.with_lease(w, |l| {
                l.held_here = self.held.contains_key(w);
                l.holder = row.filter(|r| r.live).map(|r| r.holder.clone());
                l.epoch = row.map(|r| r.epoch).unwrap_or(0);
                l.error = None;
            });
        }
    }

    /// Shows on every board that the leases cannot be reached.
    fn show_error(&self, e: &str) {
        for w in self.boards.keys() {
            self.with_lease(w, |l| l.error = Some(e.to_string()));
        }
    }

    /// Changes what `w`'s board says of its lease.
    fn with_lease(&self, w: &Arc<str>, change: impl FnOnce(&mut LeaseView)) {
        if let Some(b) = self.boards.get(w) {
            if let Some(l) = &mut b.write().unwrap_or_else(|p| p.into_inner()).lease {
                change(l);
            }
        }
    }
}

/// This replica's share of `workspaces` among the live `replicas` (ids in
/// order): an even split, the first `workspaces % replicas` ids taking
/// one more. A replica not (yet) in the list counts itself last.
fn share(replicas: &[String], me: &str, workspaces: usize) -> usize {
    let mut all: Vec<&str> = replicas.iter().map(String::as_str).collect();
    if !all.contains(&me) {
        all.push(me);
    }
    let n = all.len();
    let rank = all.iter().position(|r| *r == me).unwrap_or(n - 1);
    workspaces / n + usize::from(rank < workspaces % n)
}

/// Runs a lease call on the blocking pool (the store blocks).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(StoreError::Io {
            path: "leases".into(),
            message: format!("the lease task failed: {e}"),
        })
    })
}

fn round_s(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_split_evenly_and_cover_every_workspace() {
        let ids: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        for w in 0..10 {
            let total: usize = ids.iter().map(|me| share(&ids, me, w)).sum();
            assert_eq!(total, w, "{w} workspaces");
            for me in &ids {
                let s = share(&ids, me, w);
                assert!(s == w / 3 || s == w / 3 + 1);
            }
        }
        assert_eq!(share(&ids[..1], "z", 3), 1, "a newcomer counts itself");
        assert_eq!(share(&[], "z", 3), 3);
    }

    #[test]
    fn a_renewal_lets_a_replica_act_for_four_fifths_of_the_lease() {
        let o = ReplicaOptions {
            id: "r".into(),
            lease: Duration::from_secs(15),
            api_timeout: Duration::from_secs(10),
        };
        assert_eq!(o.tenure(), Duration::from_secs(12));
        assert_eq!(o.tick(), Duration::from_secs(2));
    }
}
