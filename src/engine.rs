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
use tokio::sync::{broadcast, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::api::{Client, Timestamp};
use crate::events::EventKind;
use crate::executor::{Executor, Guard, Outcome};
use crate::rules::reload::{log_report, ReloadReport, Reloader};
use crate::rules::{Action, EventData, Memory, RuleError, Runtime};
use crate::store::{AuditEntry, Batch, Store, StoreError};
use crate::watcher::{SessionCycle, Watcher};

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

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The rules directory is unusable.
    #[error("{0}")]
    Rules(#[from] RuleError),
    /// The state store failed.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// A running engine's parts.
pub struct Engine {
    api: Client,
    runtime: Arc<Runtime>,
    reloader: Arc<Reloader>,
    store: Arc<dyn Store>,
    executor: Arc<Executor>,
    opts: EngineOptions,
    notes: broadcast::Sender<Note>,
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
        let runtime = Arc::new(Runtime::new());
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
        let executor = Arc::new(Executor::new(api.clone(), opts.dry_run, opts.guard));
        let (notes, _) = broadcast::channel(4096);
        Ok((
            Engine {
                api,
                runtime,
                reloader,
                store,
                executor,
                opts,
                notes,
            },
            report,
        ))
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
        let store = self.store.clone();
        let loaded = tokio::task::spawn_blocking(move || store.load())
            .await
            .map_err(|e| StoreError::Io {
                path: "state".into(),
                message: e.to_string(),
            })??;
        let mut watcher = Watcher::new(self.api.clone(), loaded.sessions, loaded.baselined);
        let reload_notes = self.notes.clone();
        let reloader = self.reloader.clone();
        let reload_stop = shutdown.child_token();
        let reload_task = tokio::spawn(watch_rules(reloader, reload_stop.clone(), reload_notes));

        let mut tick = tokio::time::interval(self.opts.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let timers = self.runtime.rules().timers();
            let polled = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = watcher.poll(&timers) => r,
            };
            let cycle = match polled {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "poll failed; retrying next interval");
                    let _ = self.notes.send(Note::PollFailed {
                        error: e.to_string(),
                    });
                    continue;
                }
            };
            let events: usize = cycle.sessions.iter().map(|s| s.events.len()).sum();
            tracing::debug!(
                listed = cycle.listed,
                details_read = cycle.details_read,
                events,
                baseline = cycle.baseline,
                "poll cycle"
            );
            if cycle.baseline {
                tracing::info!(
                    sessions = cycle.listed,
                    "first start: open sessions taken as a baseline (no events for their history)"
                );
            }
            let batch = self.process(cycle.sessions, cycle.now).await;
            let store = self.store.clone();
            match tokio::task::spawn_blocking(move || store.commit(batch)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "cannot save state"),
                Err(e) => tracing::error!(error = %e, "state commit task failed"),
            }
            let _ = self.notes.send(Note::Cycle {
                listed: cycle.listed,
                details_read: cycle.details_read,
                events,
                baseline: cycle.baseline,
            });
        }
        reload_stop.cancel();
        let _ = reload_task.await;
        Ok(())
    }

    /// Runs every session's events through the rules and their actions
    /// through the executor; one batch for the whole cycle.
    async fn process(&self, sessions: Vec<SessionCycle>, now: Timestamp) -> Batch {
        let permits = Arc::new(Semaphore::new(self.opts.max_concurrency));
        let mut work = FuturesUnordered::new();
        for sc in sessions {
            let permits = permits.clone();
            work.push(async move {
                let _permit = permits.acquire_owned().await.ok();
                self.process_session(sc, now).await
            });
        }
        let mut batch = Batch {
            baselined: true,
            ..Batch::default()
        };
        while let Some((sc, memory, audit)) = work.next().await {
            let id = sc.tracked.session.session_id.clone();
            for (rule, mem) in memory {
                batch.memory.push((id.clone(), rule, mem));
            }
            batch.audit.extend(audit);
            if sc.finished {
                self.executor.forget(&id);
                batch.removed.push(id);
            } else if sc.changed {
                batch.sessions.push(sc.tracked);
            }
        }
        batch
    }

    async fn process_session(
        &self,
        sc: SessionCycle,
        now: Timestamp,
    ) -> (SessionCycle, HashMap<String, Memory>, Vec<AuditEntry>) {
        let mut writes: HashMap<String, Memory> = HashMap::new();
        let mut audit = Vec::new();
        if sc.events.is_empty() {
            return (sc, writes, audit);
        }
        let id = sc.tracked.session.session_id.clone();
        let store = self.store.clone();
        let sid = id.clone();
        let mut memory = match tokio::task::spawn_blocking(move || store.memory(&sid)).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                tracing::error!(session_id = %id, error = %e, "cannot read rule memory; skipping this session's events until it can");
                return (sc, writes, audit);
            }
            Err(e) => {
                tracing::error!(session_id = %id, error = %e, "rule memory task failed");
                return (sc, writes, audit);
            }
        };
        let mut effective = sc.tracked.session.clone();
        for event in &sc.events {
            let kind = event.kind;
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
            let data = Arc::new(EventData::new(
                event.clone(),
                &effective,
                &sc.tracked.recent,
                now,
            ));
            let runtime = self.runtime.clone();
            let (runs, mem) = match tokio::task::spawn_blocking(move || {
                let runs = runtime.evaluate(&rules, &data, &mut memory);
                (runs, memory)
            })
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(session_id = %id, event = %kind, error = %e, "rule evaluation crashed; the event is skipped");
                    return (sc, writes, audit);
                }
            };
            memory = mem;
            for run in runs {
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
                for action in &run.actions {
                    let outcome = self.executor.execute(&mut effective, action).await;
                    audit.push(self.record(&run.rule, &id, kind, action, &outcome, now));
                }
            }
        }
        (sc, writes, audit)
    }

    fn record(
        &self,
        rule: &str,
        session_id: &str,
        event: EventKind,
        action: &Action,
        outcome: &Outcome,
        now: Timestamp,
    ) -> AuditEntry {
        let text = match action {
            Action::Reply(t) => Some(t.clone()),
            _ => None,
        };
        match outcome {
            Outcome::Taken => {
                tracing::info!(rule, session_id, event = %event, action = action.name(), "action taken")
            }
            Outcome::DryRun => {
                tracing::info!(rule, session_id, event = %event, action = action.name(), text = text.as_deref().unwrap_or(""), "dry run: would take action")
            }
            Outcome::Skipped(why) => {
                tracing::warn!(rule, session_id, event = %event, action = action.name(), reason = %why, "action skipped")
            }
            Outcome::Capped(why) => {
                tracing::warn!(rule, session_id, event = %event, action = action.name(), reason = %why, "reply dropped")
            }
            Outcome::Failed(why) => {
                tracing::error!(rule, session_id, event = %event, action = action.name(), error = %why, "action failed")
            }
        }
        let _ = self.notes.send(Note::Action {
            rule: rule.to_string(),
            session_id: session_id.to_string(),
            event,
            action: action.name().to_string(),
            text,
            outcome: outcome.name().to_string(),
            detail: outcome.detail().map(str::to_string),
        });
        AuditEntry {
            at: now,
            rule: rule.to_string(),
            session_id: session_id.to_string(),
            action: action.name().to_string(),
            outcome: outcome.name().to_string(),
            detail: outcome.detail().map(str::to_string),
        }
    }
}

async fn watch_rules(
    reloader: Arc<Reloader>,
    shutdown: CancellationToken,
    notes: broadcast::Sender<Note>,
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
