//! The watcher: one poll of the SkyLight API turned into session events.
//!
//! Owns: listing active sessions across pages, deciding which sessions'
//! details to read (new, changed, or gone from the list), running the pure
//! diff of [`crate::events`], and asking for due timers. Does not own the
//! loop's timing or what happens to the events (the engine), nor durable
//! state (it starts from what the store loaded and hands back new states).

use std::collections::{HashMap, HashSet, VecDeque};

use futures::stream::{self, FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use crate::api::{ApiError, Client, ListQuery, Session, SessionDetail, SessionStatus, Timestamp};
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

/// What the watcher knows of each active session, by id.
///
/// Boxed so that the table holds pointers, not 400-byte snapshots: under
/// churn the table's deleted slots eventually make it double once, and a
/// table of snapshots at 10,000 chats doubles from 7 to 14 MiB for good.
pub type TrackedMap = HashMap<String, Box<Tracked>>;

/// Polls the API and remembers what it saw.
pub struct Watcher {
    api: Client,
    tracked: TrackedMap,
    baselined: bool,
}

impl Watcher {
    /// A watcher resuming from `tracked` (empty and not `baselined` on the
    /// very first start).
    pub fn new(api: Client, tracked: HashMap<String, Tracked>, baselined: bool) -> Watcher {
        Watcher {
            api,
            tracked: tracked.into_iter().map(|(k, v)| (k, Box::new(v))).collect(),
            baselined,
        }
    }

    /// Whether the first-start baseline has been taken.
    pub fn baselined(&self) -> bool {
        self.baselined
    }

    /// Sessions currently tracked.
    pub fn tracked(&self) -> &TrackedMap {
        &self.tracked
    }

    /// One poll: list, read what changed, diff, and add due `timers`.
    ///
    /// A listed session that changed (or, for the first-start baseline, any
    /// listed session) is read as soon as its list page arrives, and its
    /// [`SessionCycle`] (events and due timers included) goes to `early` at
    /// once, so the engine can act on page 1 while later pages are still
    /// being listed, and never holds 10,000 session histories at once.
    /// The returned [`Cycle`] holds the rest: sessions that left the list
    /// and unchanged sessions whose timers are due. A session is in at most
    /// one of the two per poll.
    ///
    /// On a list failure the error is returned: sessions already sent early
    /// keep their new state, nothing else changes. A failed detail read
    /// only postpones that session to the next poll.
    pub async fn poll(
        &mut self,
        timers: &[TimerSpec],
        calendars: &Calendars,
        early: &mpsc::UnboundedSender<SessionCycle>,
    ) -> Result<Cycle, ApiError> {
        let query = ListQuery {
            status: Some(SessionStatus::Active),
            per_page: Some(crate::api::client::MAX_PER_PAGE),
            ..ListQuery::default()
        };
        let baseline = !self.baselined;
        let api = &self.api;
        let tracked = &mut self.tracked;
        let mut read: HashSet<String> = HashSet::new();
        let mut details_read = 0;
        let (pages_tx, mut pages) = mpsc::unbounded_channel::<Vec<Session>>();
        let walk = async move {
            api.walk_sessions(&query, |page| {
                let _ = pages_tx.send(page);
            })
            .await
        };
        let reads = async {
            let mut queue: VecDeque<String> = VecDeque::new();
            let mut inflight = FuturesUnordered::new();
            let mut listing = true;
            loop {
                while inflight.len() < DETAIL_CONCURRENCY {
                    let Some(id) = queue.pop_front() else { break };
                    inflight.push(read_detail(api, id));
                }
                tokio::select! {
                    page = pages.recv(), if listing => match page {
                        Some(page) => {
                            for s in page {
                                let changed = tracked
                                    .get(&s.session_id)
                                    .is_none_or(|t| needs_detail(&t.session, &s));
                                if changed && read.insert(s.session_id.clone()) {
                                    queue.push_back(s.session_id);
                                }
                            }
                        }
                        None => listing = false,
                    },
                    Some((id, result)) = inflight.next(), if !inflight.is_empty() => {
                        details_read += 1;
                        let now = api.clock().now();
                        match settle(tracked, &id, result, baseline, timers, now, calendars) {
                            Some(sc) => {
                                let _ = early.send(sc);
                            }
                            // Not read after all: its timers are checked
                            // below like any unchanged session's.
                            None => {
                                read.remove(&id);
                            }
                        }
                    }
                    else => break,
                }
            }
        };
        let (listed, ()) = tokio::join!(walk, reads);
        let listed_ids = listed?;
        let now = api.clock().now();
        // A session that left the active list is read once more to learn
        // that (and how) it ended.
        let to_read: Vec<String> = tracked
            .keys()
            .filter(|id| !listed_ids.contains(*id))
            .cloned()
            .collect();
        details_read += to_read.len();
        let details: Vec<(String, Result<SessionDetail, ApiError>)> = stream::iter(to_read)
            .map(|id| read_detail(api, id))
            .buffer_unordered(DETAIL_CONCURRENCY)
            .collect()
            .await;
        let mut out: Vec<SessionCycle> = Vec::new();
        for (id, result) in details {
            if let Some(sc) = settle(tracked, &id, result, baseline, timers, now, calendars) {
                read.insert(id);
                out.push(sc);
            }
        }
        // Checked in place: only a session with a due timer is copied out.
        for (id, t) in tracked.iter_mut() {
            if read.contains(id) || !listed_ids.contains(id) {
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
        self.baselined = true;
        Ok(Cycle {
            now,
            baseline,
            sessions: out,
            listed: listed_ids.len(),
            details_read,
        })
    }
}

/// A session's detail, with its id for whoever collects the reads.
async fn read_detail(api: &Client, id: String) -> (String, Result<SessionDetail, ApiError>) {
    let r = api.get_session(&id).await;
    (id, r)
}

/// One detail read turned into the session's share of the cycle: diffed
/// against what was known, its due timers added, and `tracked` updated
/// (an ended session leaves it). `None` when the read failed and the
/// session waits for the next poll.
fn settle(
    tracked: &mut TrackedMap,
    id: &str,
    result: Result<SessionDetail, ApiError>,
    baseline: bool,
    timers: &[TimerSpec],
    now: Timestamp,
    calendars: &Calendars,
) -> Option<SessionCycle> {
    let prev = tracked.get(id).map(|t| &**t);
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
    let (mut t, mut events) = diff(prev, detail, baseline);
    crate::metrics::sla(&before, &t.sla);
    events.extend(due_timers_in(&mut t, timers, now, calendars));
    let finished = t.session.status == SessionStatus::Ended;
    if finished {
        tracked.remove(id);
    } else {
        match tracked.get_mut(id) {
            // The snapshot's box is reused: no allocation per changed chat.
            Some(known) => Tracked::clone_from(known, &t),
            None => {
                tracked.insert(id.to_string(), Box::new(t.clone()));
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
