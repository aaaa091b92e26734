//! The request budget of one SkyLight key: at most N requests in any
//! sliding minute (`api.max_requests_per_minute`), every attempt counted,
//! with urgent requests first; and what the server says of its own limit
//! (`X-RateLimit-Remaining` / `-Reset`), so that the client slows down
//! before a 429 rather than after.
//!
//! Owns the counting and the waiting. Does not own what is worth a request
//! (the engine's poll plan decides how often to walk and how often to look
//! at pending chats) or what is retried (the client).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;

/// How urgent a request is, most urgent first: when the budget is short,
/// the pending fast lane and actions go before the full walk's list pages,
/// and those before its detail reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lane {
    /// A human request waiting, or an action a rule asked for: may spend
    /// the whole budget.
    #[default]
    Urgent,
    /// The full walk's list pages: leave the urgent reserve.
    Walk,
    /// The full walk's detail reads: leave the urgent reserve and a tenth
    /// of the rest for list pages.
    Read,
}

/// The sliding window a budget counts in.
const WINDOW: Duration = Duration::from_secs(60);

/// Most a server's `X-RateLimit-Reset` is waited for.
const MAX_SERVER_PAUSE: Duration = Duration::from_secs(60);

/// One key's budget, shared by every clone of its client.
#[derive(Debug)]
pub(crate) struct Budget {
    /// Requests per sliding minute; `None`: no budget of our own.
    per_minute: Option<usize>,
    /// Of those, kept free of routine requests for urgent ones.
    reserve: usize,
    inner: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When each request of the last minute went out, oldest first.
    sent: VecDeque<Instant>,
    /// What the server's headers leave: requests still allowed until its
    /// window resets.
    server: Option<(u64, Instant)>,
    /// Requests sent and not yet answered: the server may not have
    /// counted them in the remaining it last reported.
    in_flight: u64,
}

/// A request's place in the budget, held until its answer is read.
pub(crate) struct Ticket<'a> {
    budget: &'a Budget,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut s = self.budget.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.in_flight = s.in_flight.saturating_sub(1);
    }
}

impl Budget {
    /// A budget of `per_minute` requests (none: only the server's own
    /// limit is heeded), of which the walk leaves `looks` (what the fast
    /// lane needs), and at least a quarter for actions, to urgent
    /// requests; never more than half.
    pub(crate) fn new(per_minute: Option<usize>, looks: usize) -> Budget {
        let reserve = per_minute.map_or(0, |n| looks.max(n / 4).min(n / 2));
        Budget {
            per_minute,
            reserve,
            inner: Mutex::new(State::default()),
        }
    }

    /// The budget per minute, if any.
    pub(crate) fn per_minute(&self) -> Option<usize> {
        self.per_minute
    }

    /// What the full walk (list pages and reads) may spend per minute.
    pub(crate) fn routine_per_minute(&self) -> Option<usize> {
        self.per_minute.map(|n| n - self.reserve)
    }

    /// Waits until a request of `lane` may go out, and counts it; the
    /// ticket is held until its answer has been read.
    pub(crate) async fn acquire(&self, lane: Lane) -> Ticket<'_> {
        loop {
            let wait = {
                let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                match s.wait(now, self.limit(lane)) {
                    None => {
                        s.sent.push_back(now);
                        s.in_flight += 1;
                        if let Some((left, _)) = &mut s.server {
                            *left = left.saturating_sub(1);
                        }
                        return Ticket { budget: self };
                    }
                    Some(until) => until.saturating_duration_since(now),
                }
            };
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    fn limit(&self, lane: Lane) -> Option<usize> {
        let walk = self.routine_per_minute()?;
        Some(match lane {
            Lane::Urgent => self.per_minute?,
            Lane::Walk => walk,
            Lane::Read => walk - walk / 10,
        })
    }

    /// Reads the server's rate-limit headers from a response (whose
    /// ticket is still held): until the server's window resets, at most
    /// what it says remains is sent, less what is in flight beside this
    /// one (the server may not have counted those yet).
    pub(crate) fn observe(&self, headers: &HeaderMap) {
        let Some(remaining) = header_number(headers, "x-ratelimit-remaining") else {
            return;
        };
        let reset = header_number(headers, "x-ratelimit-reset").unwrap_or(1.0);
        // Seconds from now, or (as GitHub sends it) a Unix time.
        let secs = if reset > 1.0e9 {
            reset - chrono::Utc::now().timestamp() as f64
        } else {
            reset
        };
        let pause = Duration::from_secs_f64(secs.clamp(0.0, MAX_SERVER_PAUSE.as_secs_f64()));
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let others = s.in_flight.saturating_sub(1);
        let left = (remaining.max(0.0) as u64).saturating_sub(others);
        let until = Instant::now() + pause;
        s.server = Some(match s.server {
            // The same window: the lower count wins (answers arrive out of
            // order).
            Some((l, u)) if u + Duration::from_secs(1) >= until => (l.min(left), u.max(until)),
            _ => (left, until),
        });
        if left == 0 {
            tracing::debug!(
                pause_ms = pause.as_millis() as u64,
                "SkyLight's rate limit is used up; waiting for its reset before the next request"
            );
        }
    }
}

impl State {
    /// `None` when a request may go now; else when to look again.
    fn wait(&mut self, now: Instant, limit: Option<usize>) -> Option<Instant> {
        if let Some((left, until)) = self.server {
            if until <= now {
                self.server = None;
            } else if left == 0 {
                return Some(until);
            }
        }
        let limit = limit?;
        while self
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            self.sent.pop_front();
        }
        if self.sent.len() < limit {
            return None;
        }
        // The oldest request that must leave the window first.
        let k = self.sent.len() - limit;
        self.sent.get(k).map(|t| *t + WINDOW)
    }
}

/// Requests per minute the pending fast lane needs kept for it: twice
/// what it lists per minute (its page, and a read or an action beside
/// it); none without the fast lane. The budget keeps at least a quarter
/// for urgent requests anyway (actions), and at most half.
pub(crate) fn urgent_reserve(pending_interval: Duration) -> usize {
    if pending_interval.is_zero() {
        return 0;
    }
    (2.0 * 60.0 / pending_interval.as_secs_f64()).ceil() as usize
}

fn header_number(headers: &HeaderMap, name: &str) -> Option<f64> {
    headers
        .get(name)?
        .to_str()
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_window_waits_for_its_oldest_request_and_routine_leaves_a_reserve() {
        let b = Budget::new(Some(10), 4);
        let t0 = Instant::now();
        let mut s = b.inner.lock().unwrap();
        for i in 0..6 {
            assert_eq!(s.wait(t0, b.limit(Lane::Walk)), None, "walk {i}");
            s.sent.push_back(t0 + Duration::from_millis(i));
        }
        assert_eq!(
            s.wait(t0, b.limit(Lane::Walk)),
            Some(t0 + WINDOW),
            "the walk stops at 10 - 4"
        );
        assert!(
            s.wait(t0, b.limit(Lane::Read)).is_some(),
            "reads stop before it"
        );
        for _ in 0..4 {
            assert_eq!(s.wait(t0, b.limit(Lane::Urgent)), None);
            s.sent.push_back(t0);
        }
        assert!(
            s.wait(t0, b.limit(Lane::Urgent)).is_some(),
            "10 in the minute"
        );
        // A minute after the first, room again.
        assert_eq!(
            s.wait(
                t0 + WINDOW + Duration::from_millis(1),
                b.limit(Lane::Urgent)
            ),
            None
        );
    }

    #[test]
    fn the_servers_remaining_is_spent_then_its_reset_waited_for() {
        let b = Budget::new(None, 4);
        let now = Instant::now();
        assert_eq!(b.inner.lock().unwrap().wait(now, b.limit(Lane::Walk)), None);
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", "2".parse().unwrap());
        h.insert("x-ratelimit-reset", "2".parse().unwrap());
        b.observe(&h);
        let mut s = b.inner.lock().unwrap();
        for _ in 0..2 {
            assert_eq!(s.wait(Instant::now(), None), None);
            s.server.as_mut().unwrap().0 -= 1;
        }
        let until = s.wait(Instant::now(), None).expect("paused");
        let left = until.saturating_duration_since(Instant::now());
        assert!(
            left > Duration::from_millis(1500) && left <= Duration::from_secs(2),
            "{left:?}"
        );
        assert_eq!(s.wait(until, None), None, "the reset passed");
    }

    #[test]
    fn requests_in_flight_count_against_what_the_server_says_remains() {
        let b = Budget::new(None, 0);
        b.inner.lock().unwrap().in_flight = 4;
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", "3".parse().unwrap());
        h.insert("x-ratelimit-reset", "30".parse().unwrap());
        b.observe(&h);
        assert_eq!(
            b.inner.lock().unwrap().server.unwrap().0,
            0,
            "3 minus the 3 others in flight"
        );
    }
}
