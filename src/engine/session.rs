//! One chat's events through the rules and their actions through the
//! executor, strictly in order: where a chat's event is handled and where
//! an action's intent is written before the action is taken.
//!
//! Owns [`Work`] (a session on its way through the rules) and [`Handled`]
//! (what a cycle's work comes to, for its commit). Does not own when a
//! session is worked on (the [`super::runner`]) or what is remembered
//! across a crash (the store's journal and intents).

use std::collections::HashMap;
use std::sync::Arc;

use super::explain::StepBuilder;
use super::{emit, store_io, CycleEnd, Engine, COMMIT_AT};
use crate::api::{Session, Timestamp};
use crate::executor::Outcome;
use crate::rules::{Action, EventData, Memory};
use crate::store::{Batch, Begin, Done, Intent, Pending, StoreError};
use crate::tracking::Event;
use crate::tracking::SessionCycle;

/// What a cycle's handling came to.
#[derive(Debug, Default)]
pub(super) struct Handled {
    pub(super) end: CycleEnd,
    pub(super) events: usize,
    /// Transactions written for the cycle's own state.
    pub(super) commits: usize,
    pub(super) finished: Vec<String>,
    /// What the cycle's commit writes.
    pub(super) batch: Batch,
}

impl Handled {
    /// Takes in one polled session: one without events goes straight to
    /// the commit; one with events comes back as work for the rules.
    pub(super) fn admit(&mut self, sc: SessionCycle) -> Option<Work> {
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
    pub(super) fn full(&self) -> bool {
        self.batch.sessions.len() + self.batch.ended.len() >= COMMIT_AT
    }

    /// Adds a session whose events went through the rules to the commit.
    /// One that acted is in the journal already, with its state: the
    /// commit takes its events off. One whose rules could not run is
    /// journaled now, for the next start.
    pub(super) fn settle(&mut self, w: Work, done: Option<Done>) {
        match done {
            Some(mut d) => {
                if !w.journaled {
                    d.keys.clear();
                }
                if !d.keys.is_empty() || !d.memory.is_empty() || !d.steps.is_empty() {
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
pub(super) struct Work {
    pub(super) pending: Pending,
    /// The session ended this cycle: it is saved as ended.
    pub(super) finished: bool,
    /// Its state and events are in the journal (written with its first
    /// action's intent, or left by the last run).
    pub(super) journaled: bool,
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

impl Engine {
    /// One session's events, strictly in order. Gives the work back with
    /// what takes its events off the journal and the rule memory they
    /// changed; `None` when the rules could not run, and the events wait
    /// in the journal for the next start.
    pub(super) async fn process_session(
        &self,
        mut w: Work,
        now: Timestamp,
    ) -> (Work, Option<Done>) {
        let id = w.pending.tracked.session.session_id.clone();
        let Some(mut memory) = self.rule_memory(&id).await else {
            return (w, None);
        };
        let mut writes: HashMap<String, Memory> = HashMap::new();
        let mut journaled = w.journaled;
        let mut effective = w.pending.tracked.session.clone();
        // Unpacked once for all of this session's events.
        let history = w.pending.tracked.recent.to_vec();
        for found in self.duplicates.check(&id, &w.pending.events, &history) {
            self.report_duplicate(&id, found, now).await;
        }
        let mut steps = Vec::with_capacity(w.pending.events.len());
        let mut last_rules = None;
        for event in &w.pending.events {
            emit::EventDispatched {
                event,
                visitor: effective.visitor_name.as_deref(),
            }
            .emit(self);
            let rules = self.runtime.rules();
            // `engine.trace_length = 0`: no trace, and nothing spent on it.
            let mut step =
                (self.opts.trace_length > 0).then(|| StepBuilder::new(&rules, event, now));
            if !rules.rules.iter().any(|r| !r.handlers.is_empty()) {
                steps.extend(step);
                last_rules = Some(rules);
                continue;
            }
            let data = Arc::new(EventData::new(event.clone(), &effective, &history, now));
            let runtime = self.runtime.clone();
            let set = rules.clone();
            // Rhai is CPU work: off the async workers.
            // A rule's `log()` lines carry the workspace too.
            let span = tracing::Span::current();
            let evaluated = tokio::task::spawn_blocking(move || {
                let _entered = span.enter();
                let runs = runtime.evaluate(&set, &data, &mut memory);
                (runs, memory)
            })
            .await;
            let Ok((runs, mem)) = evaluated else {
                tracing::error!(session_id = %id, event = %event.kind, "rule evaluation crashed; this session's events stay journaled until the next start");
                w.journaled = journaled;
                return (w, None);
            };
            memory = mem;
            for run in runs {
                if let Some(error) = &run.error {
                    emit::HandlerFailed {
                        rule: &run.rule,
                        session_id: &id,
                        event: event.kind,
                        error,
                    }
                    .emit(self);
                    if let Some(step) = step.as_mut() {
                        step.ran(&rules, &run, &[]);
                    }
                    continue;
                }
                let mut taken = Vec::with_capacity(run.actions.len());
                crate::telemetry::metrics::handler_run(self.api.workspace(), &run.rule, false);
                if let Some(m) = run.memory.clone() {
                    writes.insert(run.rule.clone(), m);
                }
                for (i, action) in run.actions.iter().enumerate() {
                    let intent = intent_for(event, &run.rule, i, action, now);
                    let journal = (!journaled).then(|| w.journal(now));
                    let taken_now = self
                        .take_action(
                            &mut effective,
                            action,
                            intent,
                            journal,
                            &mut journaled,
                            run.shadow,
                        )
                        .await;
                    let Ok(taken_now) = taken_now else {
                        // Its intent could not be written: neither this
                        // action nor any later one is taken now. The
                        // session's events stay journaled and are handled
                        // again, under the same intent keys, once the store
                        // works (what was done already is not repeated).
                        w.journaled = journaled;
                        return (w, None);
                    };
                    if let Some(outcome) = &taken_now {
                        emit::ActionFinished {
                            rule: &run.rule,
                            session_id: &id,
                            event: event.kind,
                            action,
                            outcome,
                            origin: run.origins.get(i).map(String::as_str),
                        }
                        .emit(self);
                    }
                    taken.push((action, taken_now));
                }
                if let Some(step) = step.as_mut() {
                    step.ran(&rules, &run, &taken);
                }
            }
            steps.extend(step);
            last_rules = Some(rules);
        }
        // Where the timers stand once this cycle's events are handled, on
        // the last of them: the same for all, so written once.
        if let (Some(last), Some(rules)) = (steps.last_mut(), &last_rules) {
            let timer = w.pending.events.last().and_then(|e| e.timer.as_ref());
            last.timers(
                rules,
                &w.pending.tracked,
                now,
                self.runtime.calendars(),
                timer,
            );
        }
        w.journaled = journaled;
        let done = Done {
            session_id: id,
            keys: w.pending.events.iter().map(|e| e.key()).collect(),
            memory: writes.into_iter().collect(),
            steps: steps.into_iter().map(StepBuilder::finish).collect(),
            keep_steps: self.opts.trace_length,
        };
        (w, Some(done))
    }

    /// The session's rule memory: the store's, with what a failed commit
    /// still holds on top (it is newer). `None` when the store cannot be
    /// read; the session's events then stay journaled.
    async fn rule_memory(&self, id: &str) -> Option<HashMap<String, Memory>> {
        let sid = id.to_string();
        let mut memory = match store_io::read(&self.store, move |s| s.memory(&sid)).await {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(session_id = %id, error = %e, "cannot read rule memory; this session's events wait in the journal until the state store works");
                self.store_trouble(Some(e.to_string()));
                return None;
            }
        };
        let unsaved = self.unsaved.lock().unwrap_or_else(|p| p.into_inner());
        for d in unsaved.done.iter().filter(|d| d.session_id == id) {
            for (rule, m) in &d.memory {
                memory.insert(rule.clone(), m.clone());
            }
        }
        Some(memory)
    }

    /// Records the intent, takes (or reconciles, or skips) the action, and
    /// records the outcome. `None` when the action was already taken before
    /// a restart and nothing was done now; an error, and nothing done, when
    /// the intent could not be written.
    ///
    /// `journal`, the session's state and events, is written with the
    /// intent; `journaled` is set once it has been. A `shadow` rule's
    /// action is recorded as `dry_run` and never reaches the executor: it
    /// neither calls the API nor counts against the loop guard, nor changes
    /// the session the other rules see.
    async fn take_action(
        &self,
        session: &mut Session,
        action: &Action,
        intent: Intent,
        journal: Option<Batch>,
        journaled: &mut bool,
        shadow: bool,
    ) -> Result<Option<Outcome>, StoreError> {
        let written = intent.clone();
        let with_journal = journal.is_some();
        let begin = store_io::write(&self.store, self.api.workspace(), "intent", move |s| {
            s.begin_action(&written, journal.as_ref())
        })
        .await;
        if with_journal && begin.is_ok() {
            *journaled = true;
        }
        let outcome = match begin {
            Ok(Begin::New | Begin::Pending(_)) if shadow => Outcome::DryRun,
            Ok(Begin::New) => self.executor.execute(session, &intent.rule, action).await,
            Ok(Begin::Pending(old)) => {
                self.executor
                    .reconcile(session, &intent.rule, action, old.at)
                    .await
            }
            Ok(Begin::Done { outcome }) => {
                tracing::debug!(key = %intent.key, %outcome, "action already handled before a restart");
                return Ok(None);
            }
            Err(e) => {
                // No intent, no action: it could not be told from a new one
                // after a crash.
                tracing::error!(session_id = %intent.session_id, rule = %intent.rule, error = %e, "cannot record the action before taking it; not taking it now: it is taken when the state store works again");
                self.store_trouble(Some(e.to_string()));
                return Err(e);
            }
        };
        if matches!(outcome, Outcome::Failed(_)) && !self.api.may_act() {
            // Held back (or cut short) because this replica's time to act
            // ran out: left pending, for the replica that takes over to
            // settle, rather than recorded as a failure nobody retries.
            tracing::warn!(session_id = %intent.session_id, rule = %intent.rule, action = %intent.action, "fenced: not acting, this replica no longer holds the workspace; the replica that takes over settles the action");
            return Err(StoreError::Fenced {
                workspace: self.api.workspace().to_string(),
                epoch: 0,
            });
        }
        if let (Outcome::Taken, Action::Reply(text)) = (&outcome, action) {
            self.duplicates.sent(&intent.session_id, text);
        }
        self.finish(&intent.key, &outcome).await;
        Ok(Some(outcome))
    }

    /// Records an action's outcome; one that cannot be recorded is
    /// reconciled at the next start.
    pub(super) async fn finish(&self, key: &str, outcome: &Outcome) {
        let key = key.to_string();
        let name = outcome.name();
        let detail = outcome.detail().map(str::to_string);
        let done = store_io::write(&self.store, self.api.workspace(), "outcome", move |s| {
            s.finish_action(&key, name, detail.as_deref())
        })
        .await;
        if let Err(e) = done {
            tracing::error!(error = %e, "cannot record an action's outcome; it will be reconciled at the next start");
        }
    }
}

/// The intent of action `i` of `rule` for `event`: its key is the same
/// every time the same history asks for it, so a replayed event never acts
/// twice.
fn intent_for(event: &Event, rule: &str, i: usize, action: &Action, now: Timestamp) -> Intent {
    Intent {
        key: format!("{}|{rule}|{i}", event.key()),
        at: now,
        rule: rule.to_string(),
        session_id: event.session_id.clone(),
        event: event.kind.name().to_string(),
        action: action.name().to_string(),
        text: match action {
            Action::Reply(t) => Some(t.clone()),
            // The intent keeps what a restart needs to redo it.
            Action::Notify { channel, text } => Some(format!("{channel}\n{text}")),
            _ => None,
        },
    }
}

/// The action an unfinished intent asked for, as [`intent_for`] wrote it.
pub(super) fn action_of(intent: &Intent) -> Option<Action> {
    Some(match (intent.action.as_str(), &intent.text) {
        ("take_over", _) => Action::TakeOver,
        ("release", _) => Action::Release,
        ("end", _) => Action::End,
        ("reply", Some(t)) => Action::Reply(t.clone()),
        ("notify", Some(t)) => {
            let (channel, text) = t.split_once('\n')?;
            Action::Notify {
                channel: channel.to_string(),
                text: text.to_string(),
            }
        }
        _ => return None,
    })
}
