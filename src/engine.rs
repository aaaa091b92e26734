//! The engine: the poll loop that wires the parts together.
//!
//! poll (watcher) → events → rules (runtime) → actions (executor) → API and
//! state (store). Owns the loop's timing, per-session ordering (one
//! session's events and actions run strictly in sequence; sessions run
//! concurrently up to a bound), the per-cycle commit, and [`Note`]s that
//! tell observers (the demo's narrator, tests, the status page) what
//! happened. Owns no policy of its own: that is the rules'.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{broadcast, mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::api::{ApiError, Client, Session, Timestamp};
use crate::events::EventKind;
use crate::executor::{Executor, Guard, Outcome};
use crate::rules::reload::{log_report, ReloadReport, Reloader};
use crate::rules::{Action, EventData, Memory, RuleError, Runtime, World};
use crate::status::{ActionView, Board, RuleView, SessionView, SharedBoard, TimerView};
use crate::store::{Batch, Begin, Done, Intent, Pending, Store, StoreError};
use crate::watcher::{SessionCycle, Watcher};

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
    /// Log actions instead of taking them.
    pub dry_run: bool,
    /// Sessions processed at once.
    pub max_concurrency: usize,
    /// The reply-loop guard.
    pub guard: Guard,
}

/// Default retention of ended sessions' state (SPEC §6).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

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
        /// `take_over`, `release`, `reply` or `end`.
        action: String,
        /// The reply text, for replies.
        text: Option<String>,
        /// `taken`, `dry_run`, `skipped`, `capped`, `failed`.
        outcome: String,
        /// Why, when not taken.
        detail: Option<String>,
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

/// What a cycle's handling came to.
#[derive(Debug, Default)]
struct Handled {
    end: CycleEnd,
    events: usize,
    /// Transactions written for the cycle's own state.
    commits: usize,
    finished: Vec<String>,
    /// What the cycle's commit writes.
    batch: Batch,
}

impl Handled {
    /// Takes in one polled session: one without events goes straight to
    /// the commit; one with events comes back as work for the rules.
    fn admit(&mut self, sc: SessionCycle) -> Option<Work> {
        if sc.finished {
            self.finished.push(sc.tracked.session.session_id.clone());
        }
        if sc.events.is_empty() {
            if sc.finished || sc.changed {
                self.batch.save(sc.tracked, sc.finished);
            }
            return None;
        }
        self.events += sc.events.len();
        Some(Work {
            pending: Pending {
                tracked: sc.tracked,
                events: sc.events,
            },
            finished: sc.finished,
            journaled: false,
        })
    }

    /// Whether the held batch is big enough to be written early.
    fn full(&self) -> bool {
        self.batch.sessions.len() + self.batch.ended.len() >= COMMIT_AT
    }

    /// Adds a session whose events went through the rules to the commit.
    /// One that acted is in the journal already, with its state: the
    /// commit takes its events off. One whose rules could not run is
    /// journaled now, for the next start.
    fn settle(&mut self, w: Work, done: Option<Done>) {
        match done {
            Some(mut d) => {
                if !w.journaled {
                    d.keys.clear();
                }
                if !d.keys.is_empty() || !d.memory.is_empty() {
                    self.batch.done.push(d);
                }
            }
            None if !w.journaled => self.batch.events.push(w.pending.clone()),
            None => {}
        }
        if !w.journaled {
            self.batch.save(w.pending.tracked, w.finished);
        }
    }
}

/// One session's events on their way through the rules, with what saving
/// the session needs afterwards.
#[derive(Debug)]
struct Work {
    pending: Pending,
    /// The session ended this cycle: it is saved as ended.
    finished: bool,
    /// Its state and events are in the journal (written with its first
    /// action's intent, or left by the last run).
    journaled: bool,
}

impl Work {
    /// The batch that journals this session: its state and its events.
    fn journal(&self, at: Timestamp) -> Batch {
        let mut b = Batch {
            at,
            events: vec![self.pending.clone()],
            ..Batch::default()
        };
        b.save(self.pending.tracked.clone(), self.finished);
        b
    }
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
            poll_interval: opts.poll_interval,
            dry_run: opts.dry_run,
            ..Board::default()
        }));
        refresh_rules(&board, &reloader, &report);
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
            },
            report,
        ))
    }

    /// How long ended sessions' snapshots, messages and memory are kept.
    pub fn set_retention(&mut self, retention: Duration) {
        self.retention = retention;
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
        let mut watcher = self.resume().await?;
        let mut last_purge: Option<std::time::Instant> = None;
        let reload_notes = self.notes.clone();
        let reloader = self.reloader.clone();
        let reload_stop = shutdown.child_token();
        let reload_task = tokio::spawn(watch_rules(
            reloader,
            reload_stop.clone(),
            reload_notes,
            self.board.clone(),
        ));

        let mut polled_once = false;
        let mut tick = tokio::time::interval(self.opts.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if last_purge.is_none_or(|t| t.elapsed() >= PURGE_EVERY) {
                self.purge().await;
                last_purge = Some(std::time::Instant::now());
            }
            match self.cycle(&mut watcher, &shutdown).await {
                Ok(CycleEnd::Done) => polled_once = true,
                Ok(CycleEnd::Interrupted) => break,
                // A wrong key or address at start is a config error to fix,
                // not an outage to wait out.
                Err(e @ (ApiError::Unauthorized { .. } | ApiError::Redirected { .. }))
                    if !polled_once =>
                {
                    reload_stop.cancel();
                    let _ = reload_task.await;
                    return Err(e.into());
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

    /// After a successful poll: readiness, sessions and their timers.
    fn update_board(&self, watcher: &Watcher, timers: &[crate::events::TimerSpec], now: Timestamp) {
        let (mut ai, mut human, mut pending, mut other) = (0, 0, 0, 0);
        for t in watcher.tracked().values() {
            match t.session.handled_by {
                crate::api::HandledBy::Ai => ai += 1,
                crate::api::HandledBy::Human => human += 1,
                crate::api::HandledBy::Pending => pending += 1,
                crate::api::HandledBy::Other(_) => other += 1,
            }
        }
        crate::metrics::sessions(ai, human, pending, other);
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
                timers: crate::events::running_timers(t, timers, now, self.runtime.calendars())
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

    /// Everything before the first poll: loads the state, learns the
    /// server's clock, seeds the loop guard, settles actions the last run
    /// left unfinished, and handles the events it journaled but did not get
    /// to.
    pub async fn resume(&self) -> Result<Watcher, EngineError> {
        let store = self.store.clone();
        let loaded = tokio::task::spawn_blocking(move || store.load())
            .await
            .map_err(|e| StoreError::Io {
                path: "state".into(),
                message: e.to_string(),
            })??;
        // One cheap request so that the clock is the server's before the
        // audit log's server-time stamps are compared with it. A failure
        // here is the first poll's to report.
        let probe = crate::api::ListQuery {
            per_page: Some(1),
            ..Default::default()
        };
        let _ = self.api.list_sessions(&probe, 1).await;
        self.seed_guard().await;
        self.reconcile_pending(&loaded.sessions).await;
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.pending_events()).await {
            Ok(Ok(pending)) if !pending.is_empty() => {
                tracing::info!(
                    sessions = pending.len(),
                    "handling events the last run journaled but did not finish"
                );
                let now = self.api.clock().now();
                self.handle_journaled(pending, now).await;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => {
                return Err(StoreError::Io {
                    path: "state".into(),
                    message: e.to_string(),
                }
                .into())
            }
        }
        Ok(Watcher::new(
            self.api.clone(),
            loaded.sessions,
            loaded.baselined,
        ))
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
        let started = std::time::Instant::now();
        let timers = self.runtime.rules().timers();
        let baseline = !watcher.baselined();
        let (tx, rx) = mpsc::unbounded_channel::<SessionCycle>();
        let produce = async {
            let mut polled = tokio::select! {
                _ = shutdown.cancelled() => None,
                r = watcher.poll(&timers, self.runtime.calendars(), &tx) => Some(r),
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
        }
        // A first start's baseline is whole only once the list was read to
        // the end and every session in it saved. One that is cut short
        // saves what it read as the known state and takes the baseline
        // again at the next start.
        handled.batch.baselined =
            baseline && matches!(polled, Some(Ok(_))) && handled.end == CycleEnd::Done;
        let commits = handled.commits + self.commit(std::mem::take(&mut handled.batch)).await;
        let cycle = match polled {
            None => return Ok(CycleEnd::Interrupted),
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                crate::metrics::poll(false, started.elapsed());
                self.board
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .last_poll_error = Some(e.to_string());
                return Err(e);
            }
        };
        if handled.end == CycleEnd::Interrupted {
            return Ok(CycleEnd::Interrupted);
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
        crate::metrics::poll(true, started.elapsed());
        let _ = self.notes.send(Note::Cycle {
            listed: cycle.listed,
            details_read: cycle.details_read,
            events: handled.events,
            baseline: cycle.baseline,
            elapsed: started.elapsed(),
            commits,
        });
        Ok(CycleEnd::Done)
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
        let permits = Arc::new(Semaphore::new(self.opts.max_concurrency));
        let mut work = FuturesUnordered::new();
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
                        work.push(self.process_bounded(&permits, w, now));
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
        let store = self.store.clone();
        let saved = tokio::task::spawn_blocking(move || {
            let t = std::time::Instant::now();
            let r = store.commit(&batch);
            crate::metrics::store_write("commit", t.elapsed());
            (r, batch)
        })
        .await;
        let (error, batch) = match saved {
            Ok((Ok(()), _)) => return 1,
            Ok((Err(e), batch)) => (e.to_string(), batch),
            Err(e) => {
                // The batch went down with the task; its sessions are
                // written again when they next change.
                tracing::error!(error = %e, "state commit task failed; this cycle's state was not saved");
                return 0;
            }
        };
        tracing::error!(error = %error, sessions = batch.sessions.len() + batch.ended.len(), "cannot save this cycle's state; kept in memory and written with the next commit");
        let mut unsaved = self.unsaved.lock().unwrap_or_else(|p| p.into_inner());
        let later = std::mem::take(&mut *unsaved);
        *unsaved = batch;
        unsaved.append(later);
        0
    }

    /// Runs the events a previous run journaled but did not handle,
    /// sessions concurrently up to the bound, before the first poll, and
    /// takes them off the journal in one commit.
    async fn handle_journaled(&self, pending: Vec<Pending>, now: Timestamp) {
        let permits = Arc::new(Semaphore::new(self.opts.max_concurrency));
        let mut work: FuturesUnordered<_> = pending
            .into_iter()
            .map(|pending| {
                let w = Work {
                    pending,
                    finished: false,
                    journaled: true,
                };
                self.process_bounded(&permits, w, now)
            })
            .collect();
        let mut handled = Handled::default();
        while let Some((w, d)) = work.next().await {
            handled.settle(w, d);
        }
        drop(work);
        self.commit(handled.batch).await;
    }

    /// [`Engine::process_session`] once one of `permits` is free.
    fn process_bounded(
        &self,
        permits: &Arc<Semaphore>,
        w: Work,
        now: Timestamp,
    ) -> impl std::future::Future<Output = (Work, Option<Done>)> + '_ {
        let permits = permits.clone();
        async move {
            let _permit = permits.acquire_owned().await.ok();
            self.process_session(w, now).await
        }
    }

    /// One session's events, strictly in order. Gives the work back with
    /// what takes its events off the journal and the rule memory they
    /// changed; `None` when the rules could not run, and the events wait
    /// in the journal for the next start.
    async fn process_session(&self, mut w: Work, now: Timestamp) -> (Work, Option<Done>) {
        let mut writes: HashMap<String, Memory> = HashMap::new();
        let id = w.pending.tracked.session.session_id.clone();
        let store = self.store.clone();
        let sid = id.clone();
        let mut memory = match tokio::task::spawn_blocking(move || store.memory(&sid)).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                tracing::error!(session_id = %id, error = %e, "cannot read rule memory; this session's events stay journaled until the next start");
                return (w, None);
            }
            Err(e) => {
                tracing::error!(session_id = %id, error = %e, "rule memory task failed; events stay journaled");
                return (w, None);
            }
        };
        // Memory the last, failed commit still holds is newer than the
        // file's.
        {
            let unsaved = self.unsaved.lock().unwrap_or_else(|p| p.into_inner());
            for d in unsaved.done.iter().filter(|d| d.session_id == id) {
                for (rule, m) in &d.memory {
                    memory.insert(rule.clone(), m.clone());
                }
            }
        }
        let mut journaled = w.journaled;
        let mut crashed = false;
        let mut effective = w.pending.tracked.session.clone();
        // Unpacked once for all of this session's events.
        let history = w.pending.tracked.recent.to_vec();
        for event in &w.pending.events {
            let kind = event.kind;
            crate::metrics::event(kind.name());
            let _ = self.notes.send(Note::Event {
                session_id: id.clone(),
                kind,
                text: event.message.as_ref().map(|m| m.text().to_string()),
                visitor: effective.visitor_name.clone(),
            });
            tracing::debug!(session_id = %id, event = %kind, text = ?event.message.as_ref().map(|m| m.text()), "event");
            let rules = self.runtime.rules();
            if !rules.rules.iter().any(|r| !r.handlers.is_empty()) {
                continue;
            }
            let data = Arc::new(EventData::new(event.clone(), &effective, &history, now));
            let runtime = self.runtime.clone();
            let (runs, mem) = match tokio::task::spawn_blocking(move || {
                let runs = runtime.evaluate(&rules, &data, &mut memory);
                (runs, memory)
            })
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(session_id = %id, event = %kind, error = %e, "rule evaluation crashed; this session's events stay journaled until the next start");
                    crashed = true;
                    break;
                }
            };
            memory = mem;
            for run in runs {
                crate::metrics::handler_run(&run.rule, run.error.is_some());
                if let Some(err) = run.error {
                    tracing::error!(rule = %run.rule, session_id = %id, event = %kind, error = %err, "rule handler failed; other rules carry on");
                    let _ = self.notes.send(Note::RuleFailed {
                        rule: run.rule.clone(),
                        session_id: id.clone(),
                        event: kind,
                        error: err.to_string(),
                    });
                    continue;
                }
                if let Some(m) = run.memory {
                    writes.insert(run.rule.clone(), m);
                }
                let event_key = event.key();
                for (i, action) in run.actions.iter().enumerate() {
                    let intent = Intent {
                        key: format!("{event_key}|{}|{i}", run.rule),
                        at: now,
                        rule: run.rule.clone(),
                        session_id: id.clone(),
                        event: kind.name().to_string(),
                        action: action.name().to_string(),
                        text: match action {
                            Action::Reply(t) => Some(t.clone()),
                            // The intent keeps what a restart needs to redo it.
                            Action::Notify { channel, text } => Some(format!("{channel}\n{text}")),
                            _ => None,
                        },
                    };
                    let journal = (!journaled).then(|| w.journal(now));
                    if let Some(outcome) = self
                        .take_action(&mut effective, action, intent, journal, &mut journaled)
                        .await
                    {
                        let origin = run.origins.get(i).map(String::as_str);
                        self.record(&run.rule, &id, kind.name(), action, &outcome, origin);
                    }
                }
            }
        }
        w.journaled = journaled;
        if crashed {
            return (w, None);
        }
        let done = Done {
            session_id: id,
            keys: w.pending.events.iter().map(|e| e.key()).collect(),
            memory: writes.into_iter().collect(),
        };
        (w, Some(done))
    }

    /// Records the intent, takes (or reconciles, or skips) the action, and
    /// records the outcome. `None` when the action was already taken before
    /// a restart and nothing was done now.
    ///
    /// `journal`, the session's state and events, is written with the
    /// intent; `journaled` is set once it has been.
    async fn take_action(
        &self,
        session: &mut Session,
        action: &Action,
        intent: Intent,
        journal: Option<Batch>,
        journaled: &mut bool,
    ) -> Option<Outcome> {
        let store = self.store.clone();
        let written = intent.clone();
        let with_journal = journal.is_some();
        let begin = tokio::task::spawn_blocking(move || {
            let t = std::time::Instant::now();
            let r = store.begin_action(&written, journal.as_ref());
            crate::metrics::store_write("intent", t.elapsed());
            r
        })
        .await;
        if with_journal && matches!(begin, Ok(Ok(_))) {
            *journaled = true;
        }
        let outcome = match begin {
            Ok(Ok(Begin::New)) => self.executor.execute(session, &intent.rule, action).await,
            Ok(Ok(Begin::Pending(old))) => {
                self.executor
                    .reconcile(session, &intent.rule, action, old.at)
                    .await
            }
            Ok(Ok(Begin::Done { outcome })) => {
                tracing::debug!(key = %intent.key, %outcome, "action already handled before a restart");
                return None;
            }
            Ok(Err(e)) => {
                tracing::error!(session_id = %intent.session_id, rule = %intent.rule, error = %e, "cannot record the action before taking it; not taking it");
                return Some(Outcome::Failed(format!("state store: {e}")));
            }
            Err(e) => return Some(Outcome::Failed(format!("state store task failed: {e}"))),
        };
        self.finish(&intent.key, &outcome).await;
        Some(outcome)
    }

    async fn finish(&self, key: &str, outcome: &Outcome) {
        let store = self.store.clone();
        let key = key.to_string();
        let name = outcome.name();
        let detail = outcome.detail().map(str::to_string);
        let done = tokio::task::spawn_blocking(move || {
            let t = std::time::Instant::now();
            let r = store.finish_action(&key, name, detail.as_deref());
            crate::metrics::store_write("outcome", t.elapsed());
            r
        })
        .await;
        if !matches!(done, Ok(Ok(()))) {
            tracing::error!(
                "cannot record an action's outcome; it will be reconciled at the next start"
            );
        }
    }

    /// Settles actions whose outcome was never recorded (the last run died
    /// between intent and outcome), before anything else happens.
    async fn reconcile_pending(&self, sessions: &HashMap<String, crate::events::Tracked>) {
        let store = self.store.clone();
        let pending = match tokio::task::spawn_blocking(move || store.pending_actions()).await {
            Ok(Ok(p)) => p,
            _ => {
                tracing::error!("cannot read unfinished actions from the state store");
                return;
            }
        };
        for intent in pending {
            let action = match (intent.action.as_str(), &intent.text) {
                ("take_over", _) => Action::TakeOver,
                ("release", _) => Action::Release,
                ("end", _) => Action::End,
                ("reply", Some(t)) => Action::Reply(t.clone()),
                ("notify", Some(t)) => match t.split_once('\n') {
                    Some((channel, text)) => Action::Notify {
                        channel: channel.to_string(),
                        text: text.to_string(),
                    },
                    None => Action::Reply(t.clone()),
                },
                _ => {
                    self.finish(
                        &intent.key,
                        &Outcome::Failed("unfinished action could not be recovered".into()),
                    )
                    .await;
                    continue;
                }
            };
            let mut session = sessions
                .get(&intent.session_id)
                .map(|t| t.session.clone())
                .unwrap_or_else(|| Session {
                    session_id: intent.session_id.clone(),
                    ..Session::default()
                });
            tracing::info!(session_id = %intent.session_id, rule = %intent.rule, action = %intent.action, "settling an action left unfinished by the last run");
            let outcome = self
                .executor
                .reconcile(&mut session, &intent.rule, &action, intent.at)
                .await;
            self.finish(&intent.key, &outcome).await;
            self.record(
                &intent.rule,
                &intent.session_id,
                &intent.event,
                &action,
                &outcome,
                None,
            );
        }
    }

    /// Replays the replies of the last guard window into the loop guard.
    async fn seed_guard(&self) {
        let now = self.api.clock().now();
        let Ok(window) = chrono::Duration::from_std(self.opts.guard.window) else {
            return;
        };
        let filter = crate::store::AuditFilter {
            since: Some(now - window),
            ..Default::default()
        };
        let store = self.store.clone();
        let Ok(Ok(entries)) = tokio::task::spawn_blocking(move || store.audit(&filter)).await
        else {
            tracing::warn!("cannot read recent replies; the reply-loop guard starts empty");
            return;
        };
        for e in entries
            .iter()
            .filter(|e| e.action == "reply" && e.outcome == "taken")
        {
            let age = (now - e.at).to_std().unwrap_or_default();
            self.executor.seed_reply(&e.session_id, age);
        }
    }

    async fn purge(&self) {
        let store = self.store.clone();
        let before = self.api.clock().now()
            - chrono::Duration::from_std(self.retention)
                .unwrap_or_else(|_| chrono::Duration::days(30));
        match tokio::task::spawn_blocking(move || store.purge(before)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(sessions = n, "purged ended sessions past their retention"),
            _ => tracing::warn!("cannot purge old sessions from the state store"),
        }
    }

    fn record(
        &self,
        rule: &str,
        session_id: &str,
        event: &str,
        action: &Action,
        outcome: &Outcome,
        origin: Option<&str>,
    ) {
        let text = match action {
            Action::Reply(t) => Some(t.clone()),
            Action::Notify { channel, text } => Some(format!("{channel}: {text}")),
            _ => None,
        };
        match outcome {
            Outcome::Taken => {
                tracing::info!(
                    rule,
                    session_id,
                    event,
                    action = action.name(),
                    "action taken"
                )
            }
            Outcome::DryRun => {
                tracing::info!(
                    rule,
                    session_id,
                    event,
                    action = action.name(),
                    text = text.as_deref().unwrap_or(""),
                    "dry run: would take action"
                )
            }
            Outcome::Skipped(why) => {
                tracing::warn!(rule, session_id, event, action = action.name(), reason = %why, "action skipped")
            }
            Outcome::Capped(why) => {
                tracing::warn!(rule, session_id, event, action = action.name(), reason = %why, "reply dropped")
            }
            Outcome::Failed(why) => {
                tracing::error!(rule, session_id, event, action = action.name(), error = %why, "action failed")
            }
        }
        crate::metrics::action(rule, action.name(), outcome.name());
        self.board
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push_action(ActionView {
                at: self.api.clock().now(),
                rule: rule.to_string(),
                session_id: session_id.to_string(),
                event: event.to_string(),
                action: action.name().to_string(),
                outcome: outcome.name().to_string(),
                detail: outcome.detail().map(str::to_string),
            });
        let _ = self.notes.send(Note::Action {
            rule: rule.to_string(),
            session_id: session_id.to_string(),
            event: EventKind::from_name(event).unwrap_or(EventKind::SessionStarted),
            action: action.name().to_string(),
            text,
            outcome: outcome.name().to_string(),
            detail: outcome.detail().map(str::to_string),
            origin: origin.map(str::to_string),
        });
    }
}

/// Puts the rules' load status on the board and in the metrics.
fn refresh_rules(board: &SharedBoard, reloader: &Reloader, report: &ReloadReport) {
    let status = reloader.status();
    let running = status.iter().filter(|r| r.running).count();
    crate::metrics::reload(report.errors.is_empty(), running);
    let views = status
        .into_iter()
        .map(|r| RuleView {
            id: r.id,
            running: r.running,
            error: r.error.map(|e| e.to_string()),
        })
        .collect();
    board.write().unwrap_or_else(|p| p.into_inner()).rules = views;
}

async fn watch_rules(
    reloader: Arc<Reloader>,
    shutdown: CancellationToken,
    notes: broadcast::Sender<Note>,
    board: SharedBoard,
) {
    // The reloader logs; this adapter also tells observers.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let observer = reloader.clone();
    let stop = shutdown.clone();
    let watch = tokio::spawn(async move { observer.watch_with(stop, Some(tx)).await });
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = rx.recv() => match r {
                Some(report) => {
                    let report: ReloadReport = report;
                    log_report(&report);
                    refresh_rules(&board, &reloader, &report);
                    let _ = notes.send(Note::Reloaded {
                        loaded: report.loaded,
                        removed: report.removed,
                        errors: report.errors.iter().map(|e| e.to_string()).collect(),
                    });
                }
                None => break,
            }
        }
    }
    let _ = watch.await;
}
