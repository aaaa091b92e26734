//! A replica's right to act on one workspace, by its own monotonic clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Until when this replica may act on a workspace: the lease's expiry as
/// this process can vouch for it, minus a margin, on the monotonic clock
/// (`Instant`, CLOCK_MONOTONIC, which keeps running while the process is
/// stopped, so a replica woken from SIGSTOP sees its time is up).
///
/// Checked by the API client immediately before every action request
/// leaves, and by the executor before a notification is handed over. The
/// database's fence stops writes; this stops what the database cannot see.
/// Once it has run out it stays out: renewals cannot revive it.
#[derive(Debug)]
pub struct Tenure {
    base: Instant,
    // Nanoseconds after `base` until which acting is allowed; 0: revoked.
    until: AtomicU64,
}

impl Tenure {
    /// A tenure that runs until `until`.
    pub(crate) fn new(until: Instant) -> Arc<Tenure> {
        let base = Instant::now();
        Arc::new(Tenure {
            base,
            until: AtomicU64::new(nanos(until.saturating_duration_since(base)).max(1)),
        })
    }

    /// Moves the deadline to `until` (after a renewal), unless it has
    /// passed already: whoever saw [`Tenure::may_act`] say no can rely on
    /// it (the workspace's engine is stopped; a new one gets a new tenure).
    pub(crate) fn extend(&self, until: Instant) {
        let ns = nanos(until.saturating_duration_since(self.base)).max(1);
        let now = nanos(self.base.elapsed());
        let _ = self
            .until
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |old| {
                (old > now).then_some(ns)
            });
    }

    /// Ends the tenure now (the lease was lost or handed over).
    pub(crate) fn revoke(&self) {
        self.until.store(0, Ordering::SeqCst);
    }

    /// Whether this replica may still act. Synchronous on purpose: the
    /// caller checks it and sends with no `.await` in between.
    pub(crate) fn may_act(&self) -> bool {
        nanos(self.base.elapsed()) < self.until.load(Ordering::SeqCst)
    }

    /// How long acting stays allowed from now (zero once it is not).
    pub(crate) fn remaining(&self) -> Duration {
        let until = Duration::from_nanos(self.until.load(Ordering::SeqCst));
        until.saturating_sub(self.base.elapsed())
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenure_ends_at_its_deadline_or_when_revoked_and_stays_ended() {
        let t = Tenure::new(Instant::now() + Duration::from_secs(60));
        assert!(t.may_act());
        t.extend(Instant::now() + Duration::from_secs(120));
        assert!(t.remaining() > Duration::from_secs(100), "renewed");
        t.extend(Instant::now());
        assert!(!t.may_act(), "a deadline that has come");
        t.extend(Instant::now() + Duration::from_secs(60));
        assert!(!t.may_act(), "a tenure that ran out stays out");
        let t = Tenure::new(Instant::now() + Duration::from_secs(60));
        t.revoke();
        assert!(!t.may_act());
        assert_eq!(t.remaining(), Duration::ZERO);
    }
}
