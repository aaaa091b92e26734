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
        let t = Tenure {
            base,
            until: AtomicU64::new(0),
        };
        t.extend(until);
        Arc::new(t)
    }

    /// Moves the deadline to `until` (after a renewal).
    pub(crate) fn extend(&self, until: Instant) {
        let ns = until.saturating_duration_since(self.base).as_nanos();
        self.until.store(
            u64::try_from(ns).unwrap_or(u64::MAX).max(1),
            Ordering::SeqCst,
        );
    }

    /// Ends the tenure now (the lease was lost or handed over).
    pub(crate) fn revoke(&self) {
        self.until.store(0, Ordering::SeqCst);
    }

    /// Whether this replica may still act. Synchronous on purpose: the
    /// caller checks it and sends with no `.await` in between.
    pub fn may_act(&self) -> bool {
        let now = self.base.elapsed().as_nanos();
        now < u128::from(self.until.load(Ordering::SeqCst))
    }

    /// How long acting stays allowed from now (zero once it is not).
    pub(crate) fn remaining(&self) -> Duration {
        let until = Duration::from_nanos(self.until.load(Ordering::SeqCst));
        until.saturating_sub(self.base.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenure_ends_at_its_deadline_or_when_revoked() {
        let t = Tenure::new(Instant::now() + Duration::from_secs(60));
        assert!(t.may_act());
        assert!(t.remaining() > Duration::from_secs(50));
        t.extend(Instant::now());
        assert!(!t.may_act(), "a deadline that has come");
        t.extend(Instant::now() + Duration::from_secs(60));
        assert!(t.may_act());
        t.revoke();
        assert!(!t.may_act());
        assert_eq!(t.remaining(), Duration::ZERO);
    }
}
