//! The status board: what the engine reports about itself for people and
//! probes — readiness, the sessions it tracks with their running timers,
//! the last actions, and the rules' load status.
//!
//! Owns the data only; the engine writes it, the `http` module renders it.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::api::Timestamp;

/// Actions kept for the status page.
const RECENT_ACTIONS: usize = 50;

/// A running timer of a session.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TimerView {
    /// `idle`, `unanswered` or `human_waiting`.
    pub kind: String,
    /// Its threshold, in seconds.
    pub after_secs: u64,
    /// How long its condition has held, in seconds.
    pub elapsed_secs: u64,
}

/// A tracked session.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SessionView {
    /// The session id.
    pub session_id: String,
    /// The visitor's name, if known.
    pub visitor: Option<String>,
    /// `ai`, `human` or `pending`.
    pub handled_by: String,
    /// Last activity on the server's clock.
    pub last_activity_at: Option<Timestamp>,
    /// Timers whose condition holds now.
    pub timers: Vec<TimerView>,
}

/// An action, as the status page lists it: the audit log's record of it
/// (ids and outcomes, never texts).
pub type ActionView = crate::store::AuditEntry;

/// A rule file's status.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RuleView {
    /// Rule id.
    pub id: String,
    /// Whether a version of it runs.
    pub running: bool,
    /// `live`, `shadow` (actions only logged) or `off` (not run).
    pub mode: &'static str,
    /// The file's current load error, if any.
    pub error: Option<String>,
}

/// Who holds a workspace, when replicas share the state (SPEC §7).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LeaseView {
    /// This process's replica id.
    pub replica: String,
    /// The replica holding the workspace now, if any does.
    pub holder: Option<String>,
    /// The lease's epoch (one more at every change of holder).
    pub epoch: i64,
    /// Whether this replica holds it (and acts on it).
    pub held_here: bool,
    /// Why this replica cannot take part just now (the database cannot
    /// be reached), if so.
    pub error: Option<String>,
}

/// Everything on the board.
#[derive(Debug, Default)]
pub struct Board {
    /// The workspace this board is of.
    pub workspace: String,
    /// When the last poll succeeded (monotonic).
    pub last_poll_ok: Option<Instant>,
    /// The last poll error, cleared by a success.
    pub last_poll_error: Option<String>,
    /// The poll interval, for readiness.
    pub poll_interval: Duration,
    /// Tracked sessions with their timers, newest activity first.
    pub sessions: Vec<SessionView>,
    /// The most recent actions, newest first.
    pub actions: VecDeque<ActionView>,
    /// Rules by id.
    pub rules: Vec<RuleView>,
    /// Whether actions are only logged.
    pub dry_run: bool,
    /// The state store's last failure, cleared by a successful write: the
    /// engine then keeps the cycle's state in memory and starts no action.
    pub store_error: Option<String>,
    /// The lease, when replicas share the state; `None` for one process.
    pub lease: Option<LeaseView>,
    /// What the request budget does to the configured poll intervals,
    /// when it changes them.
    pub plan_note: Option<String>,
}

impl Board {
    /// Records an action, forgetting the oldest beyond the limit.
    pub(crate) fn push_action(&mut self, a: ActionView) {
        self.actions.push_front(a);
        self.actions.truncate(RECENT_ACTIONS);
    }

    /// `Ok` when ready to act; else why not, for `/readyz`.
    pub fn readiness(&self) -> Result<(), String> {
        if let Some(lease) = &self.lease {
            if let Some(e) = &lease.error {
                return Err(format!("cannot take part in the leases: {e}"));
            }
            // A healthy standby is ready: it takes over when needed.
            if !lease.held_here {
                return Ok(());
            }
        }
        if let Some(e) = &self.store_error {
            return Err(format!(
                "the state store is failing (state kept in memory, no action started): {e}"
            ));
        }
        if !self.rules.iter().any(|r| r.running) {
            return Err("no rule is loaded".into());
        }
        let limit = self.poll_interval * 3;
        match self.last_poll_ok {
            None => Err(match &self.last_poll_error {
                Some(e) => format!("no successful poll yet; last error: {e}"),
                None => "no successful poll yet".into(),
            }),
            Some(t) if t.elapsed() > limit => Err(format!(
                "last successful poll was {} ago (limit {}){}",
                humantime::format_duration(Duration::from_millis(t.elapsed().as_millis() as u64)),
                humantime::format_duration(limit),
                self.last_poll_error
                    .as_ref()
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default()
            )),
            Some(_) => Ok(()),
        }
    }
}

/// The board, shared between the engine (writer) and the server (reader).
pub(crate) type SharedBoard = Arc<RwLock<Board>>;
