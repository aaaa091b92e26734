//! The watcher: one poll of the SkyLight API turned into session events.
//!
//! Owns: listing active sessions across pages, deciding which sessions'
//! details to read (new, changed, or gone from the list), running the pure
//! diff of [`crate::events`], and asking for due timers. Does not own the
//! loop's timing or what happens to the events (the engine), nor durable
//! state (it starts from what the store loaded and hands back new states).

use std::collections::{HashMap, HashSet};

use futures::stream::{self, StreamExt};

use crate::api::{ApiError, Client, ListQuery, SessionDetail, SessionStatus, Timestamp};
use crate::events::{diff, due_timers_in, needs_detail, Event, TimerSpec, Tracked};
use crate::hours::Calendars;

/// Detail reads in flight at once.
const DETAIL_CONCURRENCY: usize = 8;

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

/// The result of one poll.
#[derive(Debug)]
pub struct Cycle {
    /// The server time the cycle ran at.
    pub now: Timestamp,
    /// Whether this was the first-start baseline.
    pub baseline: bool,
    /// Sessions with events or state changes.
    pub sessions: Vec<SessionCycle>,
    /// Active sessions listed.
    pub listed: usize,
    /// Detail reads made.
    pub details_read: usize,
}

/// Polls the API and remembers what it saw.
pub struct Watcher {
    api: Client,
    tracked: HashMap<String, Tracked>,
    baselined: bool,
}

impl Watcher {
    /// A watcher resuming from `tracked` (empty and not `baselined` on the
    /// very first start).
    pub fn new(api: Client, tracked: HashMap<String, Tracked>, baselined: bool) -> Watcher {
        Watcher {
            api,
            tracked,
            baselined,
        }
    }

    /// Sessions currently tracked.
    pub fn tracked(&self) -> &HashMap<String, Tracked> {
        &self.tracked
    }

    /// One poll: list, read what changed, diff, and add due `timers`.
    /// On a list failure nothing changes and the error is returned; a
    /// failed detail read only postpones that session to the next poll.
    pub async fn poll(
        &mut self,
        timers: &[TimerSpec],
        calendars: &Calendars,
    ) -> Result<Cycle, ApiError> {
        let query = ListQuery {
            status: Some(SessionStatus::Active),
            per_page: Some(crate::api::client::MAX_PER_PAGE),
            ..ListQuery::default()
        };
        let listed = self.api.list_all_sessions(&query).await?;
        let now = self.api.clock().now();
        let baseline = !self.baselined;
        let listed_ids: HashSet<&str> = listed.iter().map(|s| s.session_id.as_str()).collect();

        let mut to_read: Vec<String> = listed
            .iter()
            .filter(|s| {
                self.tracked
                    .get(&s.session_id)
                    .is_none_or(|t| needs_detail(&t.session, s))
            })
            .map(|s| s.session_id.clone())
            .collect();
        // A session that left the active list is read once more to learn
        // that (and how) it ended.
        to_read.extend(
            self.tracked
                .keys()
                .filter(|id| !listed_ids.contains(id.as_str()))
                .cloned(),
        );
        let details_read = to_read.len();
        let api = &self.api;
        let details: Vec<(String, Result<SessionDetail, ApiError>)> = stream::iter(to_read)
            .map(|id| async move {
                let r = api.get_session(&id).await;
                (id, r)
            })
            .buffer_unordered(DETAIL_CONCURRENCY)
            .collect()
            .await;

        let mut out: Vec<SessionCycle> = Vec::new();
        let mut read: HashSet<String> = HashSet::new();
        for (id, result) in details {
            let prev = self.tracked.get(&id);
            let detail = match result {
                Ok(d) => d,
                Err(e) if e.is_gone() && prev.is_some() => {
                    // Deleted upstream: it ended as far as rules can tell.
                    let mut s = prev.map(|p| p.session.clone()).unwrap_or_default();
                    s.status = SessionStatus::Ended;
                    SessionDetail {
                        session: s,
                        messages: prev.map(|p| p.recent.clone()).unwrap_or_default(),
                    }
                }
                Err(e) => {
                    tracing::warn!(session_id = %id, error = %e, "cannot read session; will retry next poll");
                    continue;
                }
            };
            let before = prev.map(|p| p.sla.clone()).unwrap_or_default();
            let (tracked, events) = diff(prev, detail, baseline);
            crate::metrics::sla(&before, &tracked.sla);
            read.insert(id.clone());
            let finished = tracked.session.status == SessionStatus::Ended;
            out.push(SessionCycle {
                tracked,
                events,
                changed: true,
                finished,
            });
        }

        // Timers for every open session, read this cycle or not.
        for sc in out.iter_mut() {
            let t = &mut sc.tracked;
            sc.events.extend(due_timers_in(t, timers, now, calendars));
        }
        // Checked in place: only a session with a due timer is copied out.
        for (id, t) in self.tracked.iter_mut() {
            if read.contains(id) || !listed_ids.contains(id.as_str()) {
                continue;
            }
            let due = due_timers_in(t, timers, now, calendars);
            if !due.is_empty() {
                out.push(SessionCycle {
                    tracked: t.clone(),
                    events: due,
                    changed: true,
                    finished: false,
                });
            }
        }

        for sc in &out {
            if sc.finished {
                self.tracked.remove(&sc.tracked.session.session_id);
            } else {
                self.tracked
                    .insert(sc.tracked.session.session_id.clone(), sc.tracked.clone());
            }
        }
        self.baselined = true;
        Ok(Cycle {
            now,
            baseline,
            sessions: out,
            listed: listed.len(),
            details_read,
        })
    }
}
