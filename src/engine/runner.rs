//! Bounded concurrency for per-session work, in the manner of kube-rs's
//! controller runner: at most `limit` sessions are worked on at once,
//! results come back as they finish, and never two workers hold one chat —
//! work for a chat already in flight waits until that work is done, so one
//! session's events and actions never interleave (SPEC §3).

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::Semaphore;

/// Runs keyed futures, a bounded number at a time, one per key at a time.
pub(super) struct Runner<'a, T> {
    permits: Arc<Semaphore>,
    running: FuturesUnordered<BoxFuture<'a, (String, T)>>,
    busy: HashSet<String>,
    waiting: HashMap<String, VecDeque<BoxFuture<'a, T>>>,
}

impl<'a, T: Send + 'a> Runner<'a, T> {
    /// A runner that works on at most `limit` keys at once.
    pub(super) fn new(limit: usize) -> Self {
        Runner {
            permits: Arc::new(Semaphore::new(limit.max(1))),
            running: FuturesUnordered::new(),
            busy: HashSet::new(),
            waiting: HashMap::new(),
        }
    }

    /// Adds work for `key`; it starts once a slot is free and no earlier
    /// work for the same key is still running.
    pub(super) fn push(&mut self, key: &str, work: impl Future<Output = T> + Send + 'a) {
        let work: BoxFuture<'a, T> = Box::pin(work);
        if self.busy.contains(key) {
            self.waiting
                .entry(key.to_string())
                .or_default()
                .push_back(work);
        } else {
            self.busy.insert(key.to_string());
            self.start(key.to_string(), work);
        }
    }

    fn start(&mut self, key: String, work: BoxFuture<'a, T>) {
        let permits = self.permits.clone();
        self.running.push(Box::pin(async move {
            // A closed semaphore cannot happen (it is never closed); run
            // unbounded rather than drop the work if it ever did.
            let _permit = permits.acquire_owned().await.ok();
            (key, work.await)
        }));
    }

    /// Whether nothing is running or waiting.
    pub(super) fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// The next result, as work finishes; `None` when nothing is left.
    pub(super) async fn next(&mut self) -> Option<T> {
        let (key, out) = self.running.next().await?;
        match self.waiting.get_mut(&key).and_then(VecDeque::pop_front) {
            Some(next) => self.start(key, next),
            None => {
                self.waiting.remove(&key);
                self.busy.remove(&key);
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::Runner;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[tokio::test]
    async fn work_for_one_key_runs_in_order_and_never_overlaps() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut r = Runner::new(4);
        for (key, n, ms) in [("a", 1, 30), ("b", 2, 1), ("a", 3, 1), ("a", 4, 1)] {
            let log = log.clone();
            r.push(key, async move {
                log.lock().unwrap().push(format!("start {n}"));
                tokio::time::sleep(Duration::from_millis(ms)).await;
                log.lock().unwrap().push(format!("end {n}"));
                n
            });
        }
        let mut done = Vec::new();
        while let Some(n) = r.next().await {
            done.push(n);
        }
        done.sort();
        assert_eq!(done, [1, 2, 3, 4]);
        let log = log.lock().unwrap().clone();
        let pos = |s: &str| log.iter().position(|l| l == s).unwrap();
        // "a" work ran one after another, in the order given.
        assert!(pos("end 1") < pos("start 3"), "{log:?}");
        assert!(pos("end 3") < pos("start 4"), "{log:?}");
        // Another key was not held up behind "a".
        assert!(pos("end 2") < pos("end 1"), "{log:?}");
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn at_most_limit_run_at_once() {
        let live = Arc::new(Mutex::new((0usize, 0usize)));
        let mut r = Runner::new(2);
        for i in 0..6 {
            let live = live.clone();
            r.push(&format!("k{i}"), async move {
                {
                    let mut l = live.lock().unwrap();
                    l.0 += 1;
                    l.1 = l.1.max(l.0);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                live.lock().unwrap().0 -= 1;
            });
        }
        while r.next().await.is_some() {}
        assert_eq!(live.lock().unwrap().1, 2);
    }
}
