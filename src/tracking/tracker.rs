//! What the watcher knows of each active chat, and the bookkeeping of a
//! poll without the HTTP: which listed chats must be read, what a read
//! comes to (diffed, timers added, the table updated), which chats left the
//! list, and which unchanged chats have a timer due. [`super::poll`] drives
//! it from the API; the benchmark drives it with bodies in memory, so it
//! measures the code that runs.

use std::collections::{HashMap, HashSet};

use super::diff::{diff, needs_detail, Tracked};
use super::event::{Event, TimerSpec};
use super::timers::due_timers_in;
use crate::api::{ApiError, Session, SessionDetail, SessionStatus, Timestamp};
use crate::hours::Calendars;

/// What the watcher knows of each active session, by id.
///
/// Boxed so that the table holds pointers, not 400-byte snapshots: under
/// churn the table's deleted slots eventually make it double once, and a
/// table of snapshots at 10,000 chats doubles from 7 to 14 MiB for good.
pub(crate) type TrackedMap = HashMap<String, Box<Tracked>>;

/// One session's share of a poll cycle.
#[derive(Debug)]
pub struct SessionCycle {
    /// The session's state after this cycle.
    pub tracked: Tracked,
    /// Its events, oldest first, timers last.
    pub events: Vec<Event>,
    /// Whether the state changed and must be committed.
    pub changed: bool,
    /// Whether the session ended and leaves tracking after this cycle.
    pub finished: bool,
}

/// The table of tracked chats and whether the first start's baseline was
/// taken.
#[derive(Debug, Default)]
pub struct Tracker {
    tracked: TrackedMap,
    baselined: bool,
    // The `workspace` label of the SLA metrics.
    workspace: std::sync::Arc<str>,
}

impl Tracker {
    /// Resumes from `tracked` (empty and not `baselined` on the very first
    /// start).
    pub fn new(tracked: HashMap<String, Tracked>, baselined: bool) -> Tracker {
        Tracker {
            tracked: tracked.into_iter().map(|(k, v)| (k, Box::new(v))).collect(),
            baselined,
            workspace: crate::config::DEFAULT_WORKSPACE.into(),
        }
    }

    /// Labels the SLA metrics with `workspace`.
    pub(crate) fn in_workspace(mut self, workspace: std::sync::Arc<str>) -> Tracker {
        self.workspace = workspace;
        self
    }

    /// Whether the first-start baseline has been taken.
    pub fn baselined(&self) -> bool {
        self.baselined
    }

    /// Marks the baseline taken (at the end of a poll).
    pub(crate) fn set_baselined(&mut self) {
        self.baselined = true;
    }

    /// Sessions currently tracked.
    pub fn tracked(&self) -> &TrackedMap {
        &self.tracked
    }

    /// Whether a listed session must be read: new, or changed in what the
    /// list shows (SPEC §2).
    pub fn wants(&self, listed: &Session) -> bool {
        self.tracked
            .get(&listed.session_id)
            .is_none_or(|t| needs_detail(&t.session, listed))
    }

    /// Tracked sessions missing from the list: each is read once more to
    /// learn that (and how) it ended.
    pub fn gone(&self, listed: &HashSet<String>) -> Vec<String> {
        self.tracked
            .keys()
            .filter(|id| !listed.contains(*id))
            .cloned()
            .collect()
    }

    /// One detail read turned into the session's share of the cycle:
    /// diffed against what was known, its due timers added, and the table
    /// updated (an ended session leaves it). `None` when the read failed
    /// and the session waits for the next poll.
    pub fn absorb(
        &mut self,
        id: &str,
        result: Result<SessionDetail, ApiError>,
        timers: &[TimerSpec],
        now: Timestamp,
        calendars: &Calendars,
    ) -> Option<SessionCycle> {
        let prev = self.tracked.get(id).map(|t| &**t);
        let detail = match result {
            Ok(d) => d,
            Err(e) if e.is_gone() && prev.is_some() => {
                // Deleted upstream: it ended as far as rules can tell.
                let mut s = prev.map(|p| p.session.clone()).unwrap_or_default();
                s.status = SessionStatus::Ended;
                SessionDetail {
                    session: s,
                    messages: prev.map(|p| p.recent.to_vec()).unwrap_or_default(),
                }
            }
            Err(e) => {
                tracing::warn!(session_id = %id, error = %e, "cannot read session; will retry next poll");
                return None;
            }
        };
        let before = prev.map(|p| p.sla.clone()).unwrap_or_default();
        let (mut t, mut events) = diff(prev, detail, !self.baselined);
        crate::telemetry::metrics::sla(&self.workspace, &before, &t.sla);
        events.extend(due_timers_in(&mut t, timers, now, calendars));
        let finished = t.session.status == SessionStatus::Ended;
        if finished {
            self.tracked.remove(id);
        } else {
            match self.tracked.get_mut(id) {
                // The snapshot's box is reused: no allocation per changed chat.
                Some(known) => Tracked::clone_from(known, &t),
                None => {
                    self.tracked.insert(id.to_string(), Box::new(t.clone()));
                }
            }
        }
        Some(SessionCycle {
            tracked: t,
            events,
            changed: true,
            finished,
        })
    }

    /// One tracked session's due timers, checked in place; `None` when it
    /// has none (or is not tracked).
    pub(crate) fn due_for(
        &mut self,
        id: &str,
        timers: &[TimerSpec],
        now: Timestamp,
        calendars: &Calendars,
    ) -> Option<SessionCycle> {
        let t = self.tracked.get_mut(id)?;
        let due = due_timers_in(t, timers, now, calendars);
        (!due.is_empty()).then(|| SessionCycle {
            tracked: Tracked::clone(t),
            events: due,
            changed: true,
            finished: false,
        })
    }

    /// The due timers of listed sessions not read this poll, checked in
    /// place: only a session with a due timer is copied out.
    pub fn due(
        &mut self,
        read: &HashSet<String>,
        listed: &HashSet<String>,
        timers: &[TimerSpec],
        now: Timestamp,
        calendars: &Calendars,
    ) -> Vec<SessionCycle> {
        let mut out = Vec::new();
        for (id, t) in self.tracked.iter_mut() {
            if read.contains(id) || !listed.contains(id) {
                continue;
            }
            let due = due_timers_in(t, timers, now, calendars);
            if !due.is_empty() {
                out.push(SessionCycle {
                    tracked: Tracked::clone(t),
                    events: due,
                    changed: true,
                    finished: false,
                });
            }
        }
        out
    }
}
