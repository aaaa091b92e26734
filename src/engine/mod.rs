//! The engine: the poll loop that wires the parts together.
//!
//! poll (watcher) → events → rules (runtime) → actions (executor) → API and
//! state (store). This file owns the loop's timing, a cycle and its one
//! commit, and [`Note`]s that tell observers (the demo's narrator, tests,
//! the status page) what happened. One chat's events and actions are in
//! [`session`], bounded concurrency in [`runner`], what happens before the
//! first poll in [`recovery`], the store calls in [`store_io`], reporting in
//! [`emit`]. Owns no policy of its own: that is the rules'.

mod duplicates;
mod emit;
mod explain;
mod plan;
mod recovery;
mod reloads;
mod runner;
mod session;
mod store_io;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::api::{ApiError, Client, Timestamp};
use crate::executor::{Executor, Guard, Outcome};
use crate::rules::reload::{ReloadReport, Reloader};
use crate::rules::{Action, RuleError, Runtime, World};
use crate::store::{Batch, Store, StoreError};
use crate::telemetry::status::{Board, SessionView, SharedBoard, TimerView};
use crate::tracking::EventKind;
use crate::tracking::{SessionCycle, Sweep, Watcher};
use runner::Runner;
use session::Handled;

/// How long a shutdown waits for in-flight actions.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Sessions a cycle holds for its commit before it writes them early: a
/// cycle in which this many changed (the first start's baseline, a mass
/// change) is written in transactions of this size, so that it never holds
/// 10,000 sessions' histories at once. Only handled work is held, so
/// writing it early is always safe.
const COMMIT_AT: usize = 1_000;

/// How often ended sessions past their retention are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// Engine settings (from `[engine]` and `[guard]`).
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// The rules directory.
    pub rules_dir: PathBuf,
    /// Time between polls.
    pub poll_interval: Duration,
    /// Time between looks at the chats waiting for a human (the pending
    /// fast lane); zero: off.
    pub pending_interval: Duration,
    /// Log actions instead of taking them.
    pub dry_run: bool,
    /// Sessions processed at once.
    pub max_concurrency: usize,
    /// The reply-loop guard.
    pub guard: Guard,
    /// Events each session's decision trace keeps; 0 records none.
    pub trace_length: usize,
}

/// The longest wait between two tries of a refused key or an unreadable
/// state.
const RETRY_MAX: Duration = Duration::from_secs(300);

/// How long to wait after the `n`th failure in a row: the client's backoff
/// (doubling, jittered) from one poll interval up to [`RETRY_MAX`].
fn retry_backoff(interval: Duration, n: u32) -> Duration {
    crate::net::backoff(interval, RETRY_MAX.max(interval), n)
}

/// Default retention of ended sessions' state (SPEC §6).
const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Something that happened inside the engine, for observers.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// A poll finished.
    Cycle {
        /// Active sessions listed.
        listed: usize,
        /// Detail reads made.
        details_read: usize,
        /// Events produced.
        events: usize,
        /// Whether it was the first-start baseline.
        baseline: bool,
        /// Wall time of the whole cycle: poll, rules, actions, commits.
        elapsed: Duration,
        /// State-store transactions for the cycle's sessions, their events
        /// and rule memory: one (one per 1,000 changed sessions), or none
        /// when nothing changed. The actions' intents and outcomes are not
        /// counted.
        commits: usize,
    },
    /// A look at the chats waiting for a human (the pending fast lane)
    /// finished; the full walk's [`Note::Cycle`]s are apart.
    PendingSwept {
        /// Chats listed as waiting for a human.
        listed: usize,
        /// Detail reads made.
        details_read: usize,
        /// Events produced.
        events: usize,
        /// Wall time of the sweep: poll, rules, actions, commit.
        elapsed: Duration,
    },
    /// A poll failed; the loop carries on.
    PollFailed {
        /// Why.
        error: String,
    },
    /// An event was dispatched to the rules.
    Event {
        /// The session.
        session_id: String,
        /// The event.
        kind: EventKind,
        /// The message text, for message events (personal data: the run
        /// command logs it at debug level only).
        text: Option<String>,
        /// The visitor's name, if known.
        visitor: Option<String>,
    },
    /// A rule asked for an action and this is how it went.
    Action {
        /// The rule.
        rule: String,
        /// The session.
        session_id: String,
        /// The event that triggered it.
        event: EventKind,
        /// What was asked for (a reply with its text).
        action: Action,
        /// How it went (with the reason, when not taken).
        outcome: Outcome,
        /// The handler that asked for it, `file:line:column`.
        origin: Option<String>,
    },
    /// A handler failed; other rules and sessions carried on.
    RuleFailed {
        /// The rule.
        rule: String,
        /// The session.
        session_id: String,
        /// The event.
        event: EventKind,
        /// The error with file:line:column.
        error: String,
    },
    /// The rules directory was rescanned and something changed.
    Reloaded {
        /// Rules (re)loaded.
        loaded: Vec<String>,
        /// Rules removed.
        removed: Vec<String>,
        /// Load errors (previous versions kept).
        errors: Vec<String>,
    },
}

/// How a cycle ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CycleEnd {
    /// Polled, processed and committed.
    #[default]
    Done,
    /// Shutdown was requested before the cycle could finish.
    Interrupted,
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The rules directory is unusable.
    #[error("{0}")]
    Rules(#[from] RuleError),
    /// The state store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The very first poll was refused: the key is wrong. Later refusals
    /// (a key revoked while running) are logged and retried instead.
    #[error("{0}")]
    Api(#[from] ApiError),
}

/// A running engine's parts.
pub struct Engine {
    api: Client,
    runtime: Arc<Runtime>,
    reloader: Arc<Reloader>,
    store: Arc<dyn Store>,
    executor: Arc<Executor>,
    opts: EngineOptions,
    retention: Duration,
    notes: broadcast::Sender<Note>,
    board: SharedBoard,
    // Whether anyone was handed the board: the per-session views (timers
    // of every tracked chat, sorted) cost real time at 10,000 chats and
    // only a status page reads them.
    board_watched: std::sync::atomic::AtomicBool,
    // A commit that failed (a full disk, say), kept to be written with the
    // next one: its sessions, memory and handled events are not dropped,
    // and the rules read its memory meanwhile.
    unsaved: std::sync::Mutex<Batch>,
    // Whether a key refused at the first poll is retried (next to other
    // workspaces) rather than ending `run` (alone).
    keep_trying: bool,
    // Set when the store came back after failing: the events journaled
    // meanwhile are handled before the next poll.
    journal_waiting: std::sync::atomic::AtomicBool,
    // On a replica that took the workspace from one that stopped renewing:
    // when the replies it may still have been sending have landed.
    settle_after: Option<std::time::Instant>,
    // Replies settled at such a takeover, watched for a second copy.
    duplicates: duplicates::Duplicates,
    // Set when a shutdown's grace ran out with actions still in flight.
    cut_short: Arc<std::sync::atomic::AtomicBool>,
}

impl Engine {
    /// Loads the rules and the state; reports rule errors (the rules that
    /// load run, the broken ones are logged) and fails only when the rules
    /// directory or the store cannot be read at all.
    pub async fn new(
        api: Client,
        store: Arc<dyn Store>,
        opts: EngineOptions,
    ) -> Result<(Engine, ReloadReport), EngineError> {
        Engine::with_world(api, store, opts, World::default()).await
    }

    /// Like [`Engine::new`], with the calendars and notification channels
    /// rules may use.
    pub async fn with_world(
        api: Client,
        store: Arc<dyn Store>,
        opts: EngineOptions,
        world: World,
    ) -> Result<(Engine, ReloadReport), EngineError> {
        let notifier = world.notifier.clone();
        let runtime = Arc::new(Runtime::with_world(world));
        let reloader = Arc::new(Reloader::new(runtime.clone(), opts.rules_dir.clone()));
        let r = reloader.clone();
        let report = tokio::task::spawn_blocking(move || r.rescan())
            .await
            .unwrap_or_else(|e| {
                Err(RuleError {
                    path: opts.rules_dir.clone(),
                    line: None,
                    column: None,
                    message: format!("rule loading crashed: {e}"),
                })
            })?;
        let executor =
            Arc::new(Executor::new(api.clone(), opts.dry_run, opts.guard).with_notifier(notifier));
        let (notes, _) = broadcast::channel(4096);
        let board: SharedBoard = Arc::new(std::sync::RwLock::new(Board {
            workspace: api.workspace().to_string(),
            poll_interval: opts.poll_interval,
            dry_run: opts.dry_run,
            ..Board::default()
        }));
        reloads::refresh_rules(api.workspace(), &board, &reloader, &report);
        Ok((
            Engine {
                api,
                runtime,
                reloader,
                store,
                executor,
                opts,
                retention: DEFAULT_RETENTION,
                notes,
                board,
                board_watched: std::sync::atomic::AtomicBool::new(false),
                unsaved: std::sync::Mutex::new(Batch::default()),
                keep_trying: false,
                journal_waiting: std::sync::atomic::AtomicBool::new(false),
                settle_after: None,
                duplicates: duplicates::Duplicates::default(),
                cut_short: Arc::default(),
            },
            report,
        ))
    }

    /// How long ended sessions' snapshots, messages and memory are kept.
    pub(crate) fn set_retention(&mut self, retention: Duration) {
        self.retention = retention;
    }

    /// Retries a key or address refused at the first poll, with backoff,
    /// instead of returning the error from [`Engine::run`]: one workspace
    /// of several must not stop the others.
    pub(crate) fn keep_trying_when_refused(&mut self) {
        self.keep_trying = true;
    }

    /// On a replica: reports on `board`, which outlives this engine (the
    /// workspace's board stays while other replicas hold it), keeping
    /// what the board says of the lease.
    pub(crate) fn report_on(&mut self, board: SharedBoard) {
        {
            let mut mine = self.board.write().unwrap_or_else(|p| p.into_inner());
            let mut shared = board.write().unwrap_or_else(|p| p.into_inner());
            let lease = shared.lease.take();
            *shared = std::mem::take(&mut *mine);
            shared.lease = lease;
        }
        self.board = board;
        self.board_watched
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// On a replica that took the workspace after the last holder's lease
    /// expired: replies it left unfinished are settled only after `at`,
    /// when any request it had sent has landed (or timed out).
    pub(crate) fn settle_after(&mut self, at: std::time::Instant) {
        self.settle_after = Some(at);
    }

    /// Set (after [`Engine::run`] returned) when its shutdown's grace ran
    /// out with actions in flight: their requests may still land.
    pub(crate) fn cut_short(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.cut_short.clone()
    }

    /// The state this engine writes, for readers beside it (the status
    /// page's session timelines).
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// The status board (readiness, sessions, timers, actions, rules).
    pub fn board(&self) -> SharedBoard {
        self.board_watched
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.board.clone()
    }

    /// Observes what the engine does from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Note> {
        self.notes.subscribe()
    }

    /// The rules runtime (for status).
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The reloader (for status).
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// Runs until `shutdown`: polls every interval, never stops on API
    /// errors, and reloads rules as their files change.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), EngineError> {
        let mut watcher = match self.resume_or_wait(&shutdown).await? {
            Some(w) => w,
            None => return Ok(()),
        };
        let mut last_purge: Option<std::time::Instant> = None;
        let reload_notes = self.notes.clone();
        let reloader = self.reloader.clone();
        let reload_stop = shutdown.child_token();
        let reload_task = tokio::spawn(
            reloads::watch_rules(
                self.api.workspace().clone(),
                reloader,
                reload_stop.clone(),
                reload_notes,
                self.board.clone(),
            )
            .in_current_span(),
        );

        let mut polled_once = false;
        let mut refused: u32 = 0;
        let mut plan = plan::Plan::new(
            self.opts.poll_interval,
            self.opts.pending_interval,
            self.api.budget_per_minute(),
        );
        self.show_plan(&plan);
        let mut tick = every(plan.walk_every(), false);
        // The fast lane's first look waits a whole interval: the first
        // walk comes first.
        let mut pending = plan.pending_every().map(|p| every(p, true));
        let mut pending_failing = false;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = async {
                    match pending.as_mut() {
                        Some(p) => p.tick().await,
                        None => std::future::pending().await,
                    }
                }, if polled_once => {
                    match self.sweep(&mut watcher, Sweep::Pending, None, &shutdown).await {
                        Ok((CycleEnd::Interrupted, _)) => break,
                        Ok(_) => pending_failing = false,
                        // Once per outage, not every second: the full
                        // walk reports the outage too.
                        Err(e) if !pending_failing => {
                            pending_failing = true;
                            tracing::warn!(error = %e, "the look at chats waiting for a human failed; the full walk carries on");
                        }
                        Err(e) => tracing::debug!(error = %e, "the look at chats waiting for a human failed again"),
                    }
                    continue;
                }
                _ = tick.tick() => {}
            }
            if last_purge.is_none_or(|t| t.elapsed() >= PURGE_EVERY) {
                self.purge().await;
                last_purge = Some(std::time::Instant::now());
            }
            if self
                .journal_waiting
                .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                self.handle_waiting_journal().await;
            }
            // A first start's baseline reads every chat once: not what a
            // walk costs.
            let baseline = !watcher.baselined();
            match self
                .sweep(&mut watcher, Sweep::Full, plan.pending_every(), &shutdown)
                .await
            {
                Ok((CycleEnd::Done, requests)) => {
                    polled_once = true;
                    refused = 0;
                    if !baseline && plan.after_walk(requests) {
                        self.show_plan(&plan);
                        tick = every(plan.walk_every(), true);
                    }
                }
                Ok((CycleEnd::Interrupted, _)) => break,
                // A wrong key or address at start is a config error to fix,
                // not an outage to wait out: alone, the process stops on it.
                Err(e @ (ApiError::Unauthorized { .. } | ApiError::Redirected { .. }))
                    if !polled_once && !self.keep_trying =>
                {
                    reload_stop.cancel();
                    let _ = reload_task.await;
                    return Err(e.into());
                }
                // Next to other workspaces, a refused key must not stop
                // them: it is retried, less and less often, until fixed.
                Err(e @ (ApiError::Unauthorized { .. } | ApiError::Redirected { .. })) => {
                    refused = refused.saturating_add(1);
                    let wait = retry_backoff(self.opts.poll_interval, refused);
                    tracing::error!(error = %e, retry_in = %humantime::format_duration(wait), "the SkyLight API refused this workspace; fix its key or base_url (other workspaces carry on)");
                    let _ = self.notes.send(Note::PollFailed {
                        error: e.to_string(),
                    });
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    tick.reset();
                }
                Err(e) => {
                    tracing::error!(error = %e, "poll failed; retrying next interval");
                    let _ = self.notes.send(Note::PollFailed {
                        error: e.to_string(),
                    });
                }
            }
        }
        reload_stop.cancel();
        let _ = reload_task.await;
        Ok(())
    }

    /// [`Engine::resume`]; next to other workspaces, a state store that
    /// cannot be read yet is waited for (with backoff, shown on the board)
    /// rather than ending this workspace. `None`: shut down meanwhile.
    async fn resume_or_wait(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Option<Watcher>, EngineError> {
        if let Some(at) = self.settle_after {
            if !self.wait_for_old_holder(at, shutdown).await {
                return Ok(None);
            }
        }
        let mut tries: u32 = 0;
        loop {
            match self.resume().await {
                Ok(w) => {
                    if tries > 0 {
                        self.store_trouble(None);
                    }
                    return Ok(Some(w));
                }
                Err(EngineError::Store(e)) if self.keep_trying => {
                    tries = tries.saturating_add(1);
                    let wait = retry_backoff(self.opts.poll_interval, tries);
                    tracing::error!(error = %e, retry_in = %humantime::format_duration(wait), "cannot read this workspace's state; retrying (other workspaces carry on)");
                    self.store_trouble(Some(e.to_string()));
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until `at` if the last holder left a reply unfinished: it may
    /// still be on its way, and reading the chat before it lands would
    /// send it twice. `false`: shut down meanwhile.
    async fn wait_for_old_holder(
        &self,
        at: std::time::Instant,
        shutdown: &CancellationToken,
    ) -> bool {
        let replies = match store_io::read(&self.store, |s| s.pending_actions()).await {
            Ok(p) => p.iter().filter(|i| i.action == "reply").count(),
            // Resuming reads them again and reports the failure.
            Err(_) => 0,
        };
        let wait = at.saturating_duration_since(std::time::Instant::now());
        if replies == 0 || wait.is_zero() {
            return true;
        }
        tracing::info!(replies, wait = %humantime::format_duration(Duration::from_millis(wait.as_millis() as u64)), "the last holder left replies unfinished; waiting until any it was still sending has landed before settling them");
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }

    /// After a successful poll: readiness, sessions and their timers.
    fn update_board(
        &self,
        watcher: &Watcher,
        timers: &[crate::tracking::TimerSpec],
        now: Timestamp,
    ) {
        let (mut ai, mut human, mut pending, mut other) = (0, 0, 0, 0);
        for t in watcher.tracked().values() {
            match t.session.handled_by {
                crate::api::HandledBy::Ai => ai += 1,
                crate::api::HandledBy::Human => human += 1,
                crate::api::HandledBy::Pending => pending += 1,
                crate::api::HandledBy::Other(_) => other += 1,
            }
        }
        crate::telemetry::metrics::sessions(self.api.workspace(), ai, human, pending, other);
        let watched = self
            .board_watched
            .load(std::sync::atomic::Ordering::Relaxed);
        let mut sessions: Vec<SessionView> = watcher
            .tracked()
            .values()
            .filter(|_| watched)
            .map(|t| SessionView {
                session_id: t.session.session_id.clone(),
                visitor: t.session.visitor_name.clone(),
                handled_by: t.session.handled_by.to_string(),
                last_activity_at: t.session.last_activity_at,
                timers: crate::tracking::running_timers(t, timers, now, self.runtime.calendars())
                    .into_iter()
                    .map(|(spec, elapsed)| TimerView {
                        kind: spec.kind.name().to_string(),
                        after_secs: spec.after.as_secs(),
                        elapsed_secs: elapsed.as_secs(),
                    })
                    .collect(),
            })
            .collect();
        sessions.sort_by_key(|s| std::cmp::Reverse(s.last_activity_at));
        let mut board = self.board.write().unwrap_or_else(|p| p.into_inner());
        board.last_poll_ok = Some(std::time::Instant::now());
        board.last_poll_error = None;
        board.sessions = sessions;
    }

    /// One cycle: poll, run the events through the rules and the actions
    /// through the executor, commit. Tools that drive the engine step by
    /// step (tests, scenario runs) call this instead of [`Engine::run`].
    ///
    /// Handling starts while the list is still being walked: a session that
    /// changed is handed to the rules as soon as its page and its detail are
    /// in, so a chat on page 1 of 100 is answered without waiting for page
    /// 100 (reaction time does not grow with the number of chats). Sessions
    /// that left the list and due timers follow the walk.
    ///
    /// The cycle's state is written in one transaction at its end (a cycle
    /// with more than 1,000 changed sessions, such as the first start's
    /// baseline, writes them 1,000 at a time as they are handled). The only
    /// other writes are the actions' own records: a session's first action
    /// also journals that session, so that a crash after it loses nothing
    /// (see [`crate::store`]).
    pub async fn cycle(
        &self,
        watcher: &mut Watcher,
        shutdown: &CancellationToken,
    ) -> Result<CycleEnd, ApiError> {
        Ok(self.sweep(watcher, Sweep::Full, None, shutdown).await?.0)
    }

    /// One poll of `sweep`'s chats, handled and committed like a cycle;
    /// also returns the requests its listing and reads took (what the poll
    /// plan fits into the budget).
    ///
    /// `looks`: during a full walk, how often the chats waiting for a
    /// human are looked at too (the fast lane's interval).
    async fn sweep(
        &self,
        watcher: &mut Watcher,
        sweep: Sweep,
        looks: Option<Duration>,
        shutdown: &CancellationToken,
    ) -> Result<(CycleEnd, usize), ApiError> {
        let started = std::time::Instant::now();
        let timers = self.runtime.rules().timers();
        let baseline = sweep == Sweep::Full && !watcher.baselined();
        let (tx, rx) = mpsc::unbounded_channel::<SessionCycle>();
        let produce = async {
            let mut polled = tokio::select! {
                _ = shutdown.cancelled() => None,
                r = watcher.poll(sweep, looks, &timers, self.runtime.calendars(), &tx) => Some(r),
            };
            if let Some(Ok(cycle)) = &mut polled {
                for sc in cycle.sessions.drain(..) {
                    let _ = tx.send(sc);
                }
            }
            drop(tx);
            polled
        };
        let (polled, mut handled) = tokio::join!(produce, self.consume(rx, shutdown));
        for id in &handled.finished {
            self.executor.forget(id);
            self.duplicates.forget(id);
        }
        // A first start's baseline is whole only once the list was read to
        // the end and every session in it saved. One that is cut short
        // saves what it read as the known state and takes the baseline
        // again at the next start.
        handled.batch.baselined =
            baseline && matches!(polled, Some(Ok(_))) && handled.end == CycleEnd::Done;
        let commits = handled.commits + self.commit(std::mem::take(&mut handled.batch)).await;
        let cycle = match polled {
            None => return Ok((CycleEnd::Interrupted, 0)),
            Some(Ok(c)) => c,
            Some(Err(e)) if sweep == Sweep::Pending => return Err(e),
            Some(Err(e)) => {
                crate::telemetry::metrics::poll(self.api.workspace(), false, started.elapsed());
                self.board
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .last_poll_error = Some(e.to_string());
                return Err(e);
            }
        };
        if handled.end == CycleEnd::Interrupted {
            return Ok((CycleEnd::Interrupted, 0));
        }
        let requests = cycle
            .listed
            .div_ceil(crate::api::client::MAX_PER_PAGE as usize)
            .max(1)
            + cycle.details_read;
        if sweep == Sweep::Pending {
            tracing::debug!(
                listed = cycle.listed,
                details_read = cycle.details_read,
                events = handled.events,
                "looked at the chats waiting for a human"
            );
            let _ = self.notes.send(Note::PendingSwept {
                listed: cycle.listed,
                details_read: cycle.details_read,
                events: handled.events,
                elapsed: started.elapsed(),
            });
            return Ok((CycleEnd::Done, requests));
        }
        self.update_board(watcher, &timers, cycle.now);
        tracing::debug!(
            listed = cycle.listed,
            details_read = cycle.details_read,
            events = handled.events,
            commits,
            baseline = cycle.baseline,
            "poll cycle"
        );
        if cycle.baseline {
            tracing::info!(
                sessions = cycle.listed,
                "first start: open sessions taken as a baseline (no events for their history)"
            );
        }
        crate::telemetry::metrics::poll(self.api.workspace(), true, started.elapsed());
        let _ = self.notes.send(Note::Cycle {
            listed: cycle.listed,
            details_read: cycle.details_read,
            events: handled.events,
            baseline: cycle.baseline,
            elapsed: started.elapsed(),
            commits,
        });
        Ok((CycleEnd::Done, requests))
    }

    /// Logs the poll plan and puts its note on the board.
    fn show_plan(&self, plan: &plan::Plan) {
        match plan.note() {
            Some(note) => tracing::warn!(
                walk_every = %humantime::format_duration(plan.walk_every()),
                "{note}"
            ),
            None => tracing::debug!(
                walk_every = %humantime::format_duration(plan.walk_every()),
                pending_every = ?plan.pending_every(),
                "poll plan"
            ),
        }
        let mut board = self.board.write().unwrap_or_else(|p| p.into_inner());
        board.plan_note = plan.note().map(str::to_string);
        // Readiness allows three walks' time since the last good poll.
        board.poll_interval = plan.walk_every();
    }

    /// Takes the poll's sessions as they come and runs their events,
    /// sessions concurrently up to the bound, gathering what the cycle's
    /// commit writes. Returns once the poll is over and every session it
    /// sent has been handled. On shutdown, in-flight work gets a bounded
    /// grace period; a session whose work does not finish is not saved, so
    /// the next start finds its events again (or in the journal, if it had
    /// begun to act).
    async fn consume(
        &self,
        mut incoming: mpsc::UnboundedReceiver<SessionCycle>,
        shutdown: &CancellationToken,
    ) -> Handled {
        let mut work = Runner::new(self.opts.max_concurrency);
        let mut handled = Handled::default();
        let mut open = true;
        while open || !work.is_empty() {
            tokio::select! {
                next = incoming.recv(), if open => {
                    let Some(sc) = next else {
                        open = false;
                        continue;
                    };
                    if let Some(w) = handled.admit(sc) {
                        let now = self.api.clock().now();
                        let key = w.pending.tracked.session.session_id.clone();
                        work.push(&key, self.process_session(w, now));
                    }
                    if handled.full() {
                        handled.commits += self.commit(std::mem::take(&mut handled.batch)).await;
                    }
                }
                Some((w, d)) = work.next(), if !work.is_empty() => handled.settle(w, d),
                _ = shutdown.cancelled() => {
                    let all = async {
                        while let Some((w, d)) = work.next().await {
                            handled.settle(w, d);
                        }
                    };
                    if tokio::time::timeout(SHUTDOWN_GRACE, all).await.is_err() {
                        tracing::warn!("in-flight actions did not finish within {}s; they will be settled at the next start", SHUTDOWN_GRACE.as_secs());
                        handled.end = CycleEnd::Interrupted;
                        self.cut_short
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    break;
                }
            }
        }
        handled
    }

    /// Writes a batch in one transaction, if it holds anything, after what
    /// an earlier failed commit left; returns how many transactions were
    /// written (0 or 1). A batch that cannot be written is kept for the
    /// next commit.
    async fn commit(&self, batch: Batch) -> usize {
        let mut batch = {
            let mut unsaved = self.unsaved.lock().unwrap_or_else(|p| p.into_inner());
            let mut all = std::mem::take(&mut *unsaved);
            all.append(batch);
            all
        };
        if batch.is_empty() {
            return 0;
        }
        batch.at = self.api.clock().now();
        let journals = !batch.events.is_empty();
        let saved = store_io::write(&self.store, self.api.workspace(), "commit", move |s| {
            Ok((s.commit(&batch), batch))
        })
        .await;
        let (error, batch) = match saved {
            Ok((Ok(()), _)) => {
                self.store_trouble(None);
                if journals {
                    // Events whose rules could not run (a store read that
                    // failed) are in the journal now: handled before the
                    // next poll, not at the next start.
                    self.journal_waiting
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                return 1;
            }
            Ok((Err(e), batch)) => (e.to_string(), batch),
            Err(e) => {
                // The batch went down with the task; its sessions are
                // written again when they next change.
                tracing::error!(error = %e, "this cycle's state was not saved");
                return 0;
            }
        };
        tracing::error!(error = %error, sessions = batch.sessions.len() + batch.ended.len(), "cannot save this cycle's state; kept in memory and written with the next commit");
        self.store_trouble(Some(error));
        let mut unsaved = self.unsaved.lock().unwrap_or_else(|p| p.into_inner());
        let later = std::mem::take(&mut *unsaved);
        *unsaved = batch;
        unsaved.append(later);
        0
    }

    /// Shows a failing state store on the board (and `/readyz`), or that
    /// it works again.
    ///
    /// A failure also means a session's rules could not finish: its events
    /// wait in the journal, which is tried again before every poll until
    /// the store works (and then handled, not left for the next start).
    fn store_trouble(&self, error: Option<String>) {
        let mut board = self.board.write().unwrap_or_else(|p| p.into_inner());
        if board.store_error.is_some() && error.is_none() {
            tracing::info!("the state store works again; the state kept in memory is saved");
        }
        if error.is_some() || board.store_error.is_some() {
            self.journal_waiting
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        board.store_error = error;
    }

    async fn purge(&self) {
        let before = self.api.clock().now()
            - chrono::Duration::from_std(self.retention)
                .unwrap_or_else(|_| chrono::Duration::days(30));
        match store_io::read(&self.store, move |s| s.purge(before)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "purged ended sessions past their retention"),
            Err(e) => tracing::warn!(error = %e, "cannot purge old sessions from the state store"),
        }
    }
}

/// A timer ticking every `period` that delays (never bursts) after a slow
/// tick; its first tick at once, or after one period when `later`.
fn every(period: Duration, later: bool) -> tokio::time::Interval {
    let start = tokio::time::Instant::now() + if later { period } else { Duration::ZERO };
    let mut t = tokio::time::interval_at(start, period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}
