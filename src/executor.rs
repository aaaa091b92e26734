//! The action executor: carries out what rules asked for, against the API.
//!
//! Owns: validation against the session as last seen (no reply to an ended
//! chat, no take-over of a chat a human already has), the reply-loop guard
//! (SPEC §3), dry-run, and turning each attempt into an outcome for the
//! audit log. Does not own: deciding what to do (the rules), ordering per
//! session (the engine runs one session's actions in sequence), or
//! retries (the API client).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::client::find_sent;
use crate::api::{ApiError, Client, HandledBy, Session, SessionStatus, Timestamp};
use crate::notifications::{Notification, Notifier, Refused};
use crate::rules::Action;

/// How an action ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Taken,
    /// `--dry-run`: logged, not done.
    DryRun,
    /// Not needed or not possible (ended session, already handled).
    Skipped(String),
    /// Dropped by the reply-loop guard.
    Capped(String),
    /// The API refused or was unavailable.
    Failed(String),
}

impl Outcome {
    /// The outcome's name in logs, metrics and the audit log.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Taken => "taken",
            Outcome::DryRun => "dry_run",
            Outcome::Skipped(_) => "skipped",
            Outcome::Capped(_) => "capped",
            Outcome::Failed(_) => "failed",
        }
    }

    /// The reason, for anything but `taken`/`dry_run`.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Outcome::Skipped(d) | Outcome::Capped(d) | Outcome::Failed(d) => Some(d),
            _ => None,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An outcome equals its name (`outcome == "taken"`), as the audit log
/// spells it.
impl PartialEq<str> for Outcome {
    fn eq(&self, name: &str) -> bool {
        self.name() == name
    }
}

impl PartialEq<&str> for Outcome {
    fn eq(&self, name: &&str) -> bool {
        self.name() == *name
    }
}

/// Reply-loop guard settings.
#[derive(Debug, Clone, Copy)]
pub struct Guard {
    /// Replies allowed per session per window.
    pub max_replies: u32,
    /// The sliding window.
    pub window: Duration,
}

/// Carries out actions. Shared by every session worker.
pub(crate) struct Executor {
    api: Client,
    dry_run: bool,
    guard: Guard,
    notifier: Option<Arc<Notifier>>,
    sent: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Executor {
    /// An executor talking to `api`.
    pub fn new(api: Client, dry_run: bool, guard: Guard) -> Executor {
        Executor {
            api,
            dry_run,
            guard,
            notifier: None,
            sent: Mutex::new(HashMap::new()),
        }
    }

    /// Delivers `notify` actions through `notifier`.
    pub(crate) fn with_notifier(mut self, notifier: Option<Arc<Notifier>>) -> Executor {
        self.notifier = notifier;
        self
    }

    /// Carries out one action. `session` is the session as this batch sees
    /// it and is updated with the action's effect, so that a reply after an
    /// `end` in the same batch is skipped.
    pub(crate) async fn execute(
        &self,
        session: &mut Session,
        rule: &str,
        action: &Action,
    ) -> Outcome {
        let id = session.session_id.clone();
        // People may need to hear about a chat that has ended too.
        let needs_open_session = !matches!(action, Action::Notify { .. });
        if needs_open_session && session.status == SessionStatus::Ended {
            return Outcome::Skipped("the session has ended".into());
        }
        match action {
            Action::TakeOver if session.handled_by == HandledBy::Human => {
                return Outcome::Skipped("a human already handles the session".into())
            }
            Action::Release if session.handled_by == HandledBy::Ai => {
                return Outcome::Skipped("the AI already handles the session".into())
            }
            Action::Reply(_) => {
                if let Err(why) = self.admit_reply(&id) {
                    return Outcome::Capped(why);
                }
            }
            _ => {}
        }
        if self.dry_run {
            apply(session, action);
            return Outcome::DryRun;
        }
        let result = match action {
            Action::TakeOver => self.api.take_over(&id).await.map(|_| ()),
            Action::Release => self.api.release(&id).await.map(|_| ()),
            Action::End => self.api.end(&id).await.map(|_| ()),
            Action::Reply(text) => self.api.send_message(&id, text).await.map(|_| ()),
            // Not an API call: handed to the notifier, never awaited.
            Action::Notify { channel, text } => return self.notify(&id, rule, channel, text),
        };
        match result {
            Ok(()) => {
                apply(session, action);
                Outcome::Taken
            }
            Err(e) => {
                if let Action::Reply(_) = action {
                    self.refund_reply(&id);
                }
                if e.is_gone()
                    || (matches!(e, ApiError::Rejected { status: 422, .. })
                        && self.has_ended(&id).await)
                {
                    // It ended after the poll that triggered this action:
                    // nothing went wrong, there is just nobody to act on.
                    session.status = SessionStatus::Ended;
                    return Outcome::Skipped("the session has ended".into());
                }
                Outcome::Failed(e.to_string())
            }
        }
    }

    /// Finishes an action whose intent was recorded but whose outcome was
    /// not (the process died in between). A reply is sent only if the
    /// session does not already hold it; the other actions are idempotent
    /// and simply taken again.
    pub(crate) async fn reconcile(
        &self,
        session: &mut Session,
        rule: &str,
        action: &Action,
        since: Timestamp,
    ) -> Outcome {
        if let Action::Reply(text) = action {
            if !self.dry_run {
                // The window is wider than the client's own: the intent was
                // written just before the send, on our clock estimate.
                let since = since - chrono::Duration::seconds(5);
                match self.api.get_session(&session.session_id).await {
                    Ok(d) if find_sent(&d, text, since).is_some() => {
                        tracing::info!(session_id = %session.session_id, "reply was delivered before the restart; not sending it again");
                        // It counts against the loop guard like any reply.
                        let _ = self.admit_reply(&session.session_id);
                        return Outcome::Taken;
                    }
                    Ok(d) => session.status = d.session.status,
                    Err(e) => {
                        return Outcome::Failed(format!(
                            "cannot check whether the reply was delivered: {e}"
                        ))
                    }
                }
            }
        }
        self.execute(session, rule, action).await
    }

    /// Hands a notification to the notifier; never waits for delivery.
    fn notify(&self, session_id: &str, rule: &str, channel: &str, text: &str) -> Outcome {
        if self.dry_run {
            return Outcome::DryRun;
        }
        // Checks, scenarios and the demo have channel names but no sender:
        // what would have been sent is the useful answer there.
        let Some(notifier) = &self.notifier else {
            return Outcome::DryRun;
        };
        // Like an API action: never handed over once this replica's time
        // to act on the workspace has run out.
        if !self.api.may_act() {
            crate::telemetry::metrics::fenced(self.api.workspace(), "action");
            return Outcome::Failed("not sent: this replica no longer holds the workspace".into());
        }
        match notifier.send(Notification {
            channel: channel.to_string(),
            session_id: session_id.to_string(),
            rule: rule.to_string(),
            text: text.to_string(),
        }) {
            Ok(()) => Outcome::Taken,
            Err(r @ Refused::Duplicate { .. }) => Outcome::Skipped(r.to_string()),
            Err(r) => Outcome::Failed(r.to_string()),
        }
    }

    async fn has_ended(&self, id: &str) -> bool {
        matches!(self.api.get_session(id).await, Ok(d) if d.session.status == SessionStatus::Ended)
    }

    /// Counts a reply against the session's window, or says why not.
    fn admit_reply(&self, id: &str) -> Result<(), String> {
        let now = Instant::now();
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        let q = sent.entry(id.to_string()).or_default();
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.guard.window)
        {
            q.pop_front();
        }
        if q.len() as u32 >= self.guard.max_replies {
            return Err(format!(
                "reply-loop guard: {} replies to this session within {} already (guard.max_replies)",
                self.guard.max_replies,
                humantime::format_duration(self.guard.window)
            ));
        }
        q.push_back(now);
        Ok(())
    }

    fn refund_reply(&self, id: &str) {
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(q) = sent.get_mut(id) {
            q.pop_back();
        }
    }

    /// Counts a reply sent `age` ago (before a restart) against the
    /// session's window, so a restart does not reset the loop guard.
    pub(crate) fn seed_reply(&self, id: &str, age: Duration) {
        let Some(at) = Instant::now().checked_sub(age) else {
            return;
        };
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.entry(id.to_string()).or_default().push_back(at);
    }

    /// Forgets a session's guard window (it ended and left tracking).
    pub(crate) fn forget(&self, id: &str) {
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

fn apply(session: &mut Session, action: &Action) {
    match action {
        Action::TakeOver => session.handled_by = HandledBy::Human,
        Action::Release => session.handled_by = HandledBy::Ai,
        Action::End => session.status = SessionStatus::Ended,
        Action::Reply(_) | Action::Notify { .. } => {}
    }
}
