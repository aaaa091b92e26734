//! The in-memory store: same contract as SQLite, gone on exit. Used by the
//! demo and by tests that do not restart.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{AuditEntry, AuditFilter, Batch, Begin, Intent, Loaded, Pending, Store, StoreError};
use crate::api::Timestamp;
use crate::rules::Memory;
use crate::tracking::{Event, Tracked};

/// Audit entries kept; older ones are dropped so a long demo stays small.
const AUDIT_LIMIT: usize = 10_000;

/// An action's outcome and its detail.
type Finished = (String, Option<String>);

/// State kept in memory only.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    loaded: Loaded,
    ended: HashMap<String, (Timestamp, Tracked)>,
    memory: HashMap<String, HashMap<String, Memory>>,
    actions: Vec<(Intent, Option<Finished>)>,
    journal: Vec<(String, Event, Tracked)>,
    index: HashMap<String, usize>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Applies a batch to the held state.
fn write(inner: &mut Inner, batch: &Batch) {
    inner.loaded.baselined |= batch.baselined;
    for t in &batch.sessions {
        inner
            .loaded
            .sessions
            .insert(t.session.session_id.clone(), t.clone());
    }
    for t in &batch.ended {
        let id = t.session.session_id.clone();
        inner.loaded.sessions.remove(&id);
        inner.ended.insert(id, (batch.at, t.clone()));
    }
    for p in &batch.events {
        for e in &p.events {
            let key = e.key();
            if !inner.journal.iter().any(|(k, _, _)| *k == key) {
                inner.journal.push((key, e.clone(), p.tracked.clone()));
            }
        }
    }
    for d in &batch.done {
        finish(inner, &d.session_id, &d.keys, &d.memory);
    }
}

/// Takes handled events off the journal and saves rule memory.
fn finish(inner: &mut Inner, session_id: &str, keys: &[String], memory: &[(String, Memory)]) {
    for (rule, m) in memory {
        inner
            .memory
            .entry(session_id.to_string())
            .or_default()
            .insert(rule.clone(), m.clone());
    }
    inner.journal.retain(|(k, _, _)| !keys.contains(k));
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        Ok(self.lock().loaded.clone())
    }

    fn memory(&self, session_id: &str) -> Result<HashMap<String, Memory>, StoreError> {
        Ok(self
            .lock()
            .memory
            .get(session_id)
            .cloned()
            .unwrap_or_default())
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        write(&mut self.lock(), batch);
        Ok(())
    }

    fn pending_events(&self) -> Result<Vec<Pending>, StoreError> {
        let inner = self.lock();
        let mut out: Vec<Pending> = Vec::new();
        for (_, e, t) in &inner.journal {
            match out
                .iter_mut()
                .find(|p| p.tracked.session.session_id == e.session_id)
            {
                Some(p) => p.events.push(e.clone()),
                None => out.push(Pending {
                    tracked: t.clone(),
                    events: vec![e.clone()],
                }),
            }
        }
        Ok(out)
    }

    fn begin_action(&self, intent: &Intent, journal: Option<&Batch>) -> Result<Begin, StoreError> {
        let mut inner = self.lock();
        if let Some(batch) = journal {
            write(&mut inner, batch);
        }
        if let Some(&i) = inner.index.get(&intent.key) {
            let (old, outcome) = &inner.actions[i];
            return Ok(match outcome {
                Some((o, _)) => Begin::Done { outcome: o.clone() },
                None => Begin::Pending(old.clone()),
            });
        }
        if inner.actions.len() >= AUDIT_LIMIT {
            inner.actions.remove(0);
            let actions = &inner.actions;
            let index = actions
                .iter()
                .enumerate()
                .map(|(i, (a, _))| (a.key.clone(), i))
                .collect();
            inner.index = index;
        }
        let n = inner.actions.len();
        inner.index.insert(intent.key.clone(), n);
        inner.actions.push((intent.clone(), None));
        Ok(Begin::New)
    }

    fn finish_action(
        &self,
        key: &str,
        outcome: &str,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if let Some(&i) = inner.index.get(key) {
            let entry = &mut inner.actions[i];
            entry.0.text = None;
            entry.1 = Some((outcome.to_string(), detail.map(str::to_string)));
        }
        Ok(())
    }

    fn pending_actions(&self) -> Result<Vec<Intent>, StoreError> {
        Ok(self
            .lock()
            .actions
            .iter()
            .filter(|(_, o)| o.is_none())
            .map(|(i, _)| i.clone())
            .collect())
    }

    fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(self
            .lock()
            .actions
            .iter()
            .map(|(i, o)| AuditEntry {
                at: i.at,
                rule: i.rule.clone(),
                session_id: i.session_id.clone(),
                event: i.event.clone(),
                action: i.action.clone(),
                outcome: o
                    .as_ref()
                    .map_or_else(|| "pending".to_string(), |(o, _)| o.clone()),
                detail: o.as_ref().and_then(|(_, d)| d.clone()),
            })
            .filter(|e| filter.matches(e))
            .collect())
    }

    fn sessions_since(&self, since: Timestamp) -> Result<Vec<Tracked>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .loaded
            .sessions
            .values()
            .chain(inner.ended.values().map(|(_, t)| t))
            .filter(|t| t.session.created_at.is_some_and(|c| c >= since))
            .cloned()
            .collect())
    }

    fn timer_breaches(
        &self,
        since: Timestamp,
    ) -> Result<Vec<(String, chrono::NaiveDate, u64)>, StoreError> {
        let inner = self.lock();
        let mut counts: std::collections::BTreeMap<(String, chrono::NaiveDate), u64> =
            Default::default();
        for (i, _) in &inner.actions {
            if matches!(i.event.as_str(), "idle" | "unanswered" | "human_waiting")
                && i.key.ends_with("|0")
                && i.at >= since
            {
                *counts
                    .entry((i.rule.clone(), i.at.date_naive()))
                    .or_default() += 1;
            }
        }
        Ok(counts
            .into_iter()
            .map(|((rule, day), n)| (rule, day, n))
            .collect())
    }

    fn latest_action_at(&self) -> Result<Option<Timestamp>, StoreError> {
        Ok(self.lock().actions.iter().map(|(i, _)| i.at).max())
    }

    fn purge(&self, before: Timestamp) -> Result<usize, StoreError> {
        let mut inner = self.lock();
        let old: Vec<String> = inner
            .ended
            .iter()
            .filter(|(_, (at, _))| *at < before)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &old {
            inner.ended.remove(id);
            inner.memory.remove(id);
        }
        Ok(old.len())
    }
}
