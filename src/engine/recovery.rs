//! Starting where the last run stopped: the state loaded, the clock made
//! the server's, the loop guard seeded from the audit log, actions left
//! between intent and outcome settled against the API, and events the last
//! run journaled but did not finish handled — all before the first poll.

use std::collections::HashMap;

use super::runner::Runner;
use super::session::{action_of, Handled, Work};
use super::{emit, store_io, Engine, EngineError};
use crate::api::{Session, Timestamp};
use crate::executor::Outcome;
use crate::rules::{Action, RuleMode};
use crate::store::{AuditFilter, Pending};
use crate::tracking::Watcher;
use crate::tracking::{EventKind, Tracked};

impl Engine {
    /// Everything before the first poll: loads the state, learns the
    /// server's clock, seeds the loop guard, settles actions the last run
    /// left unfinished, and handles the events it journaled but did not get
    /// to.
    pub async fn resume(&self) -> Result<Watcher, EngineError> {
        let loaded = store_io::read(&self.store, |s| s.load()).await?;
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
        let pending = store_io::read(&self.store, |s| s.pending_events()).await?;
        if !pending.is_empty() {
            tracing::info!(
                sessions = pending.len(),
                "handling events the last run journaled but did not finish"
            );
            let now = self.api.clock().now();
            self.handle_journaled(pending, now).await;
        }
        Ok(Watcher::new(
            self.api.clone(),
            loaded.sessions,
            loaded.baselined,
        ))
    }

    /// Handles the events journaled while the store was failing (their
    /// rules could not read their memory), once it works again.
    pub(super) async fn handle_waiting_journal(&self) {
        match store_io::read(&self.store, |s| s.pending_events()).await {
            Ok(pending) if pending.is_empty() => {}
            Ok(pending) => {
                tracing::info!(
                    sessions = pending.len(),
                    "handling the events that waited while the state store was failing"
                );
                let now = self.api.clock().now();
                self.handle_journaled(pending, now).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the journal; trying again before the next poll");
                self.store_trouble(Some(e.to_string()));
            }
        }
    }

    /// Runs the events a previous run journaled but did not handle,
    /// sessions concurrently up to the bound, before the first poll, and
    /// takes them off the journal in one commit.
    async fn handle_journaled(&self, pending: Vec<Pending>, now: Timestamp) {
        let mut work = Runner::new(self.opts.max_concurrency);
        for pending in pending {
            let key = pending.tracked.session.session_id.clone();
            let w = Work {
                pending,
                finished: false,
                journaled: true,
            };
            work.push(&key, self.process_session(w, now));
        }
        let mut handled = Handled::default();
        while let Some((w, d)) = work.next().await {
            handled.settle(w, d);
        }
        drop(work);
        self.commit(handled.batch).await;
    }

    /// Settles actions whose outcome was never recorded (the last run died
    /// between intent and outcome), before anything else happens.
    async fn reconcile_pending(&self, sessions: &HashMap<String, Tracked>) {
        let pending = match store_io::read(&self.store, |s| s.pending_actions()).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read unfinished actions from the state store");
                return;
            }
        };
        for intent in pending {
            let (Some(action), Some(event)) =
                (action_of(&intent), EventKind::from_name(&intent.event))
            else {
                self.finish(
                    &intent.key,
                    &Outcome::Failed("unfinished action could not be recovered".into()),
                )
                .await;
                continue;
            };
            let mut session = sessions
                .get(&intent.session_id)
                .map(|t| t.session.clone())
                .unwrap_or_else(|| Session {
                    session_id: intent.session_id.clone(),
                    ..Session::default()
                });
            tracing::info!(session_id = %intent.session_id, rule = %intent.rule, action = %intent.action, "settling an action left unfinished by the last run");
            // A rule switched to shadow or off meanwhile (or a shadow
            // rule's own intent) is not acted on now.
            let mode = self
                .runtime
                .rules()
                .rules
                .iter()
                .find(|r| r.id == intent.rule)
                .map(|r| r.mode)
                .unwrap_or_default();
            let outcome = match mode {
                RuleMode::Shadow => Outcome::DryRun,
                RuleMode::Off => Outcome::Skipped("the rule is off (mode \"off\")".into()),
                RuleMode::Live => {
                    self.executor
                        .reconcile(&mut session, &intent.rule, &action, intent.at)
                        .await
                }
            };
            if matches!(outcome, Outcome::Failed(_)) && !self.api.may_act() {
                // This replica's time ran out while settling: left pending
                // for the replica that takes over, not recorded as failed.
                tracing::warn!(session_id = %intent.session_id, rule = %intent.rule, "fenced: not settling the action, this replica no longer holds the workspace");
                return;
            }
            if let (Some(_), Outcome::Taken, Action::Reply(text)) =
                (self.settle_after, &outcome, &action)
            {
                // The last holder may yet send it too (it was paused, not
                // dead): watched until a second copy shows or an hour
                // passes.
                self.duplicates.watch(
                    &intent.session_id,
                    text,
                    intent.at - chrono::Duration::seconds(5),
                );
            }
            self.finish(&intent.key, &outcome).await;
            emit::ActionFinished {
                rule: &intent.rule,
                session_id: &intent.session_id,
                event,
                action: &action,
                outcome: &outcome,
                origin: None,
            }
            .emit(self);
        }
    }

    /// Replays the replies of the last guard window into the loop guard.
    async fn seed_guard(&self) {
        let now = self.api.clock().now();
        let Ok(window) = chrono::Duration::from_std(self.opts.guard.window) else {
            return;
        };
        let filter = AuditFilter {
            since: Some(now - window),
            ..Default::default()
        };
        let Ok(entries) = store_io::read(&self.store, move |s| s.audit(&filter)).await else {
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
}
