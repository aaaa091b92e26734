//! The poll plan: how often the full walk (every active chat, the source
//! of truth) and the pending fast lane (only the chats waiting for a
//! human, `handled_by=pending`) run, fitted into the key's request budget
//! (`api.max_requests_per_minute`).
//!
//! Owns the two intervals and the note that says when the configured ones
//! cannot be met. Does not own counting requests (the client's budget,
//! which also holds every request to it, so a plan that is off for a
//! cycle still never spends more than the budget) or running a sweep (the
//! engine's loop).

use std::time::Duration;

/// Headroom left in the routine budget, for a walk that grows between
/// two measurements.
const HEADROOM: f64 = 1.1;

/// How much the newest walk weighs in the smoothed cost.
const WEIGHT: f64 = 0.3;

/// The intervals the engine's loop runs at.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    poll_interval: Duration,
    /// `None`: the fast lane is off.
    pending_interval: Option<Duration>,
    /// (budget per minute, what of it the full walk may spend).
    budget: Option<(usize, usize)>,
    walk_every: Duration,
    pending_every: Option<Duration>,
    note: Option<String>,
    /// Requests a walk costs, smoothed over the last few.
    walk_cost: Option<f64>,
}

impl Plan {
    /// The plan before the first walk is measured: the configured
    /// intervals, the fast lane slowed only if its reserve cannot pay for
    /// one look per interval.
    pub(super) fn new(
        poll_interval: Duration,
        pending_interval: Duration,
        budget: Option<(usize, usize)>,
    ) -> Plan {
        let pending_interval = (!pending_interval.is_zero()).then_some(pending_interval);
        let pending_every = pending_interval.map(|p| match budget {
            // Half the urgent reserve is for the looks; the rest for the
            // reads and actions they lead to.
            Some((total, routine)) => {
                let looks = ((total - routine) / 2).max(1);
                p.max(Duration::from_secs_f64(60.0 / looks as f64))
            }
            None => p,
        });
        let mut plan = Plan {
            poll_interval,
            pending_interval,
            budget,
            walk_every: poll_interval,
            pending_every,
            note: None,
            walk_cost: None,
        };
        plan.note = plan.describe();
        plan
    }

    /// How often the full walk runs.
    pub(super) fn walk_every(&self) -> Duration {
        self.walk_every
    }

    /// How often the fast lane runs; `None` when it is off.
    pub(super) fn pending_every(&self) -> Option<Duration> {
        self.pending_every
    }

    /// What the budget does to the configured intervals, when it does
    /// anything: for the log, `/readyz` and the status page.
    pub(super) fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// Takes in what the last full walk cost (list pages and detail
    /// reads; a first start's baseline, which reads everything once, does
    /// not count) and stretches the walk's interval until walks of that
    /// cost, smoothed over the last few, fit in the routine budget.
    /// Returns whether the interval changed.
    pub(super) fn after_walk(&mut self, requests: usize) -> bool {
        let Some((_, routine)) = self.budget else {
            return false;
        };
        let cost = match self.walk_cost {
            Some(c) => c + WEIGHT * (requests as f64 - c),
            None => requests as f64,
        };
        self.walk_cost = Some(cost);
        let needed =
            Duration::from_secs_f64(cost.max(1.0) * 60.0 / routine.max(1) as f64 * HEADROOM);
        let every = self.poll_interval.max(needed);
        // A change of under 10% is noise, not a new plan.
        let ratio = every.as_secs_f64() / self.walk_every.as_secs_f64();
        if (0.9..=1.1).contains(&ratio) {
            return false;
        }
        self.walk_every = every;
        self.note = self.describe();
        true
    }

    fn describe(&self) -> Option<String> {
        let (total, _) = self.budget?;
        let mut parts = Vec::new();
        if self.walk_every > self.poll_interval {
            parts.push(format!(
                "the full walk runs every {} instead of every {} (engine.poll_interval)",
                secs(self.walk_every),
                secs(self.poll_interval)
            ));
        }
        if let (Some(p), Some(every)) = (self.pending_interval, self.pending_every) {
            if every > p {
                parts.push(format!(
                    "chats waiting for a human are looked at every {} instead of every {} (engine.pending_interval)",
                    secs(every),
                    secs(p)
                ));
            }
        }
        (!parts.is_empty()).then(|| {
            format!(
                "api.max_requests_per_minute = {total} cannot pay for the configured intervals: {}; raise the budget or the intervals",
                parts.join("; ")
            )
        })
    }
}

/// A duration to a tenth of a second, as people read it.
fn secs(d: Duration) -> String {
    let tenths = (d.as_millis() as f64 / 100.0).round() / 10.0;
    format!("{tenths}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn without_a_budget_the_configured_intervals_hold() {
        let mut p = Plan::new(S(5), S(1), None);
        assert!(!p.after_walk(10_000));
        assert_eq!((p.walk_every(), p.pending_every()), (S(5), Some(S(1))));
        assert_eq!(p.note(), None);
    }

    #[test]
    fn a_short_budget_stretches_the_walk_and_says_so() {
        // 600 a minute, 120 kept for urgent requests: 480 for the walk.
        let mut p = Plan::new(S(5), S(1), Some((600, 480)));
        assert_eq!(p.pending_every(), Some(S(1)));
        assert!(!p.after_walk(30), "30 × 12 walks a minute = 360 fits");
        assert_eq!(p.walk_every(), S(5));
        let mut p = Plan::new(S(5), S(1), Some((600, 480)));
        assert!(p.after_walk(200));
        // 200 requests × 60 s / 480 × 1.1 = 27.5 s.
        assert_eq!(p.walk_every(), Duration::from_secs_f64(27.5));
        let note = p.note().expect("a note");
        assert!(note.contains("every 27.5s instead of every 5s"), "{note}");
        assert!(!p.after_walk(205), "a small change keeps the plan");
        for _ in 0..20 {
            p.after_walk(20);
        }
        assert_eq!(
            (p.walk_every(), p.note()),
            (S(5), None),
            "back within the budget"
        );
    }

    #[test]
    fn a_tiny_budget_slows_the_fast_lane_too_and_zero_turns_it_off() {
        let p = Plan::new(S(5), S(1), Some((20, 10)));
        assert_eq!(p.pending_every(), Some(S(12)), "5 looks a minute");
        assert!(p.note().unwrap().contains("every 12s instead of every 1s"));
        assert_eq!(Plan::new(S(5), S(0), None).pending_every(), None);
    }
}
