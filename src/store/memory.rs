//! The in-memory store: same contract as SQLite, gone on exit. Used by the
//! demo and by tests that do not restart. Its workspace views share one
//! map of per-workspace state.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::{
    AuditEntry, AuditFilter, Batch, Begin, Intent, Loaded, Pending, Store, StoreError,
    DEFAULT_WORKSPACE,
};
use crate::api::Timestamp;
use crate::rules::Memory;
use crate::trace::{Step, TraceRows};
use crate::tracking::{Event, Tracked};

/// Audit entries kept; older ones are dropped so a long demo stays small.
const AUDIT_LIMIT: usize = 10_000;

/// An action's outcome and its detail.
type Finished = (String, Option<String>);

/// State kept in memory only: one workspace's view of it.
#[derive(Debug)]
pub struct MemoryStore {
    workspace: String,
    shared: Arc<Mutex<HashMap<String, Inner>>>,
}

impl Default for MemoryStore {
    fn default() -> MemoryStore {
        MemoryStore {
            workspace: DEFAULT_WORKSPACE.to_string(),
            shared: Arc::default(),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    loaded: Loaded,
    ended: HashMap<String, (Timestamp, Tracked)>,
    memory: HashMap<String, HashMap<String, Memory>>,
    actions: Vec<(Intent, Option<Finished>)>,
    journal: Vec<(String, Event, Tracked)>,
    index: HashMap<String, usize>,
    trace: HashMap<String, VecDeque<Step>>,
}

impl MemoryStore {
    /// An empty store; the view is workspace `default`.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Runs `f` on this workspace's state, under the one lock.
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut all = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        f(all.entry(self.workspace.clone()).or_default())
    }
}

/// Applies a batch to the held state.
fn write(inner: &mut Inner, batch: &Batch) {
    inner.loaded.baselined |= batch.baselined;
    for t in &batch.sessions {
        // Tracked again (as a SQL upsert would make it): no longer ended.
        inner.ended.remove(&t.session.session_id);
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
        if !d.steps.is_empty() {
            let trace = inner.trace.entry(d.session_id.clone()).or_default();
            trace.extend(d.steps.iter().cloned());
            while trace.len() > d.keep_steps.max(1) {
                trace.pop_front();
            }
        }
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
    fn workspace(&self, name: &str) -> Arc<dyn Store> {
        Arc::new(MemoryStore {
            workspace: name.to_string(),
            shared: self.shared.clone(),
        })
    }

    fn location(&self) -> String {
        "memory".to_string()
    }

    fn load(&self) -> Result<Loaded, StoreError> {
        Ok(self.with(|inner| inner.loaded.clone()))
    }

    fn memory(&self, session_id: &str) -> Result<HashMap<String, Memory>, StoreError> {
        Ok(self.with(|inner| inner.memory.get(session_id).cloned().unwrap_or_default()))
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        self.with(|inner| write(inner, batch));
        Ok(())
    }

    fn pending_events(&self) -> Result<Vec<Pending>, StoreError> {
        self.with(|inner| Ok(pending_in(inner)))
    }

    fn begin_action(&self, intent: &Intent, journal: Option<&Batch>) -> Result<Begin, StoreError> {
        self.with(|inner| Ok(begin_in(inner, intent, journal)))
    }

    fn finish_action(
        &self,
        key: &str,
        outcome: &str,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        self.with(|inner| {
            if let Some(&i) = inner.index.get(key) {
                let entry = &mut inner.actions[i];
                entry.0.text = None;
                entry.1 = Some((outcome.to_string(), detail.map(str::to_string)));
            }
        });
        Ok(())
    }

    fn pending_actions(&self) -> Result<Vec<Intent>, StoreError> {
        Ok(self.with(|inner| {
            inner
                .actions
                .iter()
                .filter(|(_, o)| o.is_none())
                .map(|(i, _)| i.clone())
                .collect()
        }))
    }

    fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(self.with(|inner| audit_in(inner, filter)))
    }

    fn sessions_since(&self, since: Timestamp) -> Result<Vec<Tracked>, StoreError> {
        Ok(self.with(|inner| {
            inner
                .loaded
                .sessions
                .values()
                .chain(inner.ended.values().map(|(_, t)| t))
                .filter(|t| t.session.created_at.is_some_and(|c| c >= since))
                .cloned()
                .collect()
        }))
    }

    fn timer_breaches(
        &self,
        since: Timestamp,
    ) -> Result<Vec<(String, chrono::NaiveDate, u64)>, StoreError> {
        Ok(self.with(|inner| breaches_in(inner, since)))
    }

    fn latest_action_at(&self) -> Result<Option<Timestamp>, StoreError> {
        Ok(self.with(|inner| inner.actions.iter().map(|(i, _)| i.at).max()))
    }

    fn trace(&self, session_id: &str) -> Result<Option<TraceRows>, StoreError> {
        self.with(|inner| {
            if !inner.loaded.sessions.contains_key(session_id)
                && !inner.ended.contains_key(session_id)
            {
                return Ok(None);
            }
            let mut rows = TraceRows::default();
            for step in inner.trace.get(session_id).into_iter().flatten() {
                let version = &step.rules.version;
                if !rows.rule_sets.iter().any(|(v, _)| v == version) {
                    rows.rule_sets
                        .push((version.clone(), step.rules.rules_json()));
                }
                let body = step.body_json().map_err(|e| StoreError::Io {
                    path: "memory".into(),
                    message: e.to_string(),
                })?;
                rows.steps.push((version.clone(), body));
            }
            Ok(Some(rows))
        })
    }

    fn purge(&self, before: Timestamp) -> Result<usize, StoreError> {
        Ok(self.with(|inner| {
            let old: Vec<String> = inner
                .ended
                .iter()
                .filter(|(_, (at, _))| *at < before)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &old {
                inner.ended.remove(id);
                inner.memory.remove(id);
                inner.trace.remove(id);
            }
            old.len()
        }))
    }
}

/// Journaled events per session, oldest first; each session as its newest
/// event saw it (as the SQLite store reads them).
fn pending_in(inner: &Inner) -> Vec<Pending> {
    let mut out: Vec<Pending> = Vec::new();
    for (_, e, t) in &inner.journal {
        match out
            .iter_mut()
            .find(|p| p.tracked.session.session_id == e.session_id)
        {
            Some(p) => {
                p.events.push(e.clone());
                p.tracked = t.clone();
            }
            None => out.push(Pending {
                tracked: t.clone(),
                events: vec![e.clone()],
            }),
        }
    }
    out
}

/// Writes the journal, if any, then records the intent unless its key is
/// known.
fn begin_in(inner: &mut Inner, intent: &Intent, journal: Option<&Batch>) -> Begin {
    if let Some(batch) = journal {
        write(inner, batch);
    }
    if let Some(&i) = inner.index.get(&intent.key) {
        let (old, outcome) = &inner.actions[i];
        return match outcome {
            Some((o, _)) => Begin::Done { outcome: o.clone() },
            None => Begin::Pending(old.clone()),
        };
    }
    if inner.actions.len() >= AUDIT_LIMIT {
        inner.actions.remove(0);
        inner.index = inner
            .actions
            .iter()
            .enumerate()
            .map(|(i, (a, _))| (a.key.clone(), i))
            .collect();
    }
    let n = inner.actions.len();
    inner.index.insert(intent.key.clone(), n);
    inner.actions.push((intent.clone(), None));
    Begin::New
}

/// The audit log, oldest first.
fn audit_in(inner: &Inner, filter: &AuditFilter) -> Vec<AuditEntry> {
    inner
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
        .collect()
}

/// Timer-event first actions per rule and UTC day.
fn breaches_in(inner: &Inner, since: Timestamp) -> Vec<(String, chrono::NaiveDate, u64)> {
    let mut counts: std::collections::BTreeMap<(chrono::NaiveDate, String), u64> =
        Default::default();
    for (i, _) in &inner.actions {
        if super::rows::TIMER_EVENTS.contains(&i.event.as_str())
            && i.key.ends_with("|0")
            && i.at >= since
        {
            *counts
                .entry((i.at.date_naive(), i.rule.clone()))
                .or_default() += 1;
        }
    }
    // Day first, then rule: the order the SQL stores return.
    counts
        .into_iter()
        .map(|((day, rule), n)| (rule, day, n))
        .collect()
}
