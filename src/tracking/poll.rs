//! The watcher: one poll of the SkyLight API, the only I/O of tracking.
//!
//! Owns: listing active sessions across pages, reading the details the
//! [`Tracker`] wants (new, changed, or gone from the list) a few at a time,
//! and handing each session's share of the cycle to the engine as soon as
//! it is read. The bookkeeping is the tracker's.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use futures::stream::{self, FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use super::diff::Tracked;
use super::event::TimerSpec;
use super::tracker::{SessionCycle, TrackedMap, Tracker};
use crate::api::{
    ApiError, Client, HandledBy, Lane, ListQuery, Session, SessionDetail, SessionStatus, Timestamp,
};
use crate::hours::Calendars;

/// Detail reads in flight at once.
const DETAIL_CONCURRENCY: usize = 8;

/// What a poll looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// Every active chat: the source of truth, with the chats that left
    /// the list and every due timer.
    Full,
    /// Only the chats waiting for a human (`handled_by=pending`), as
    /// urgent requests: their changes and their due timers, at once.
    Pending,
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
    tracker: Tracker,
}

impl Watcher {
    /// A watcher resuming from `tracked` (empty and not `baselined` on the
    /// very first start).
    pub fn new(api: Client, tracked: HashMap<String, Tracked>, baselined: bool) -> Watcher {
        Watcher {
            tracker: Tracker::new(tracked, baselined).in_workspace(api.workspace().clone()),
            api,
        }
    }

    /// Whether the first-start baseline has been taken.
    pub fn baselined(&self) -> bool {
        self.tracker.baselined()
    }

    /// Sessions currently tracked.
    pub fn tracked(&self) -> &TrackedMap {
        self.tracker.tracked()
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
    ///
    /// A [`Sweep::Pending`] poll lists only the chats waiting for a human:
    /// a chat that changed is read and handled as in a full walk (whose
    /// next pass then finds it unchanged, so nothing fires twice); nothing
    /// is taken for gone, and only the listed chats' timers are checked.
    ///
    /// During a full walk, every `looks` the chats waiting for a human
    /// are looked at too (the pending fast lane), so that a walk slowed by
    /// the request budget does not hold a human request back: a waiting
    /// chat that changed is read at once, ahead of the walk's own reads and
    /// as an urgent request, and one with a timer due has it fired. Each
    /// chat is still read at most once per poll, so nothing fires twice.
    ///
    /// Long on purpose: the walk of the list, the looks and the detail reads run interleaved in one `select!` loop, whose state is shared.
    pub async fn poll(
        &mut self,
        sweep: Sweep,
        looks: Option<Duration>,
        timers: &[TimerSpec],
        calendars: &Calendars,
        early: &mpsc::UnboundedSender<SessionCycle>,
    ) -> Result<Cycle, ApiError> {
        let full = sweep == Sweep::Full;
        let pending_query = ListQuery {
            status: Some(SessionStatus::Active),
            handled_by: Some(HandledBy::Pending),
            per_page: Some(crate::api::client::MAX_PER_PAGE),
            ..ListQuery::default()
        };
        let query = if full {
            ListQuery {
                handled_by: None,
                ..pending_query.clone()
            }
        } else {
            pending_query.clone()
        };
        let baseline = full && !self.tracker.baselined();
        let urgent_client = self.api.in_lane(Lane::Urgent);
        let (lister, reader) = if full {
            (self.api.in_lane(Lane::Walk), self.api.in_lane(Lane::Read))
        } else {
            (urgent_client.clone(), urgent_client.clone())
        };
        let api = &lister;
        let reads_api = &reader;
        let urgent_api = &urgent_client;
        let tracker = &mut self.tracker;
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
            // Waiting chats found by a look: read first, as urgent.
            let mut urgent: VecDeque<String> = VecDeque::new();
            let mut started: HashSet<String> = HashSet::new();
            let mut inflight = FuturesUnordered::new();
            // Apart from the walk's: those may all be waiting on the
            // budget, which urgent reads need not.
            let mut urgent_inflight = FuturesUnordered::new();
            let mut looking = FuturesUnordered::new();
            let mut tick = looks.filter(|_| full).map(|p| {
                let mut t = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            let mut listing = true;
            loop {
                while urgent_inflight.len() < DETAIL_CONCURRENCY {
                    let Some(id) = urgent.pop_front() else { break };
                    if started.insert(id.clone()) {
                        urgent_inflight.push(read_detail(urgent_api, id));
                    }
                }
                while inflight.len() < DETAIL_CONCURRENCY {
                    let Some(id) = queue.pop_front() else { break };
                    if started.insert(id.clone()) {
                        inflight.push(read_detail(reads_api, id));
                    }
                }
                let busy = listing || !inflight.is_empty();
                tokio::select! {
                    biased;
                    Some(found) = looking.next(), if !looking.is_empty() => {
                        let found: Result<Vec<Session>, ApiError> = found;
                        match found {
                            Ok(waiting) => {
                                let now = api.clock().now();
                                for s in waiting {
                                    let id = s.session_id.clone();
                                    if read.contains(&id) {
                                        // Queued by the walk, not begun:
                                        // moved ahead.
                                        if !started.contains(&id) {
                                            urgent.push_back(id);
                                        }
                                    } else if tracker.wants(&s) {
                                        read.insert(id.clone());
                                        urgent.push_back(id);
                                    } else if let Some(sc) = tracker.due_for(&id, timers, now, calendars) {
                                        read.insert(id);
                                        let _ = early.send(sc);
                                    }
                                }
                            }
                            Err(e) => tracing::debug!(error = %e, "a look at the chats waiting for a human during the walk failed"),
                        }
                    }
                    _ = async {
                        match tick.as_mut() {
                            Some(t) => t.tick().await,
                            None => std::future::pending().await,
                        }
                    }, if busy && looking.is_empty() && tick.is_some() => {
                        let q = pending_query.clone();
                        looking.push(async move {
                            let mut waiting = Vec::new();
                            urgent_api
                                .walk_sessions(&q, |page| waiting.extend(page))
                                .await
                                .map(|_| waiting)
                        });
                    }
                    Some((id, result)) = next_read(&mut urgent_inflight, &mut inflight), if !urgent_inflight.is_empty() || !inflight.is_empty() => {
                        details_read += 1;
                        let now = api.clock().now();
                        match tracker.absorb(&id, result, timers, now, calendars) {
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
                    page = pages.recv(), if listing => match page {
                        Some(page) => {
                            for s in page {
                                if tracker.wants(&s) && read.insert(s.session_id.clone()) {
                                    queue.push_back(s.session_id);
                                }
                            }
                        }
                        None => listing = false,
                    },
                    else => break,
                }
            }
        };
        let (listed, ()) = tokio::join!(walk, reads);
        let listed_ids = listed?;
        let now = api.clock().now();
        // A session that left the active list is read once more to learn
        // that (and how) it ended.
        let to_read = if full {
            tracker.gone(&listed_ids)
        } else {
            Vec::new()
        };
        details_read += to_read.len();
        let details: Vec<(String, Result<SessionDetail, ApiError>)> = stream::iter(to_read)
            .map(|id| read_detail(reads_api, id))
            .buffer_unordered(DETAIL_CONCURRENCY)
            .collect()
            .await;
        let mut out: Vec<SessionCycle> = Vec::new();
        for (id, result) in details {
            if let Some(sc) = tracker.absorb(&id, result, timers, now, calendars) {
                read.insert(id);
                out.push(sc);
            }
        }
        if full {
            out.extend(tracker.due(&read, &listed_ids, timers, now, calendars));
        } else {
            // Only the few waiting chats: not a pass over every tracked one.
            out.extend(
                listed_ids
                    .iter()
                    .filter(|id| !read.contains(*id))
                    .filter_map(|id| tracker.due_for(id, timers, now, calendars)),
            );
        }
        if full {
            tracker.set_baselined();
        }
        Ok(Cycle {
            now,
            baseline,
            sessions: out,
            listed: listed_ids.len(),
            details_read,
        })
    }
}

/// The next detail read to finish, the urgent ones first when both are.
async fn next_read<F: std::future::Future<Output = (String, Result<SessionDetail, ApiError>)>>(
    urgent: &mut FuturesUnordered<F>,
    walk: &mut FuturesUnordered<F>,
) -> Option<(String, Result<SessionDetail, ApiError>)> {
    tokio::select! {
        biased;
        Some(r) = urgent.next(), if !urgent.is_empty() => Some(r),
        Some(r) = walk.next(), if !walk.is_empty() => Some(r),
        else => None,
    }
}

/// A session's detail, with its id for whoever collects the reads.
async fn read_detail(api: &Client, id: String) -> (String, Result<SessionDetail, ApiError>) {
    let r = api.get_session(&id).await;
    (id, r)
}
