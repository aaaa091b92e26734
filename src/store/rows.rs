//! What the SQLite and PostgreSQL stores share: a batch turned into rows
//! (serialized once, duplicates resolved as sequential writes would), and
//! rows read back turned into the engine's types. The two stores differ
//! only in how they send and fetch these rows.

use std::collections::HashMap;

use super::{ActionRow, AuditEntry, Batch, Begin, Intent, JournalRow, Pending};
use crate::api::{format_ts, parse_ts, Timestamp};
use crate::rules::Memory;
use crate::tracking::{Event, Tracked};

/// Timer event kinds: their first action counts as an SLA breach.
pub(super) const TIMER_EVENTS: [&str; 3] = ["idle", "unanswered", "human_waiting"];

/// A batch as rows to write, in the order a transaction writes them:
/// the baselined flag, session states, journaled events, rule memory, then
/// the handled events taken off the journal.
#[derive(Debug, Default)]
pub(super) struct BatchRows {
    /// The baseline's time, when the batch sets the flag.
    pub baselined: Option<String>,
    /// (session id, tracked JSON, ended at); one per session, the last
    /// written winning (an ended state over a tracked one), as one upsert
    /// after another would leave it.
    pub sessions: Vec<(String, String, Option<String>)>,
    /// Events to journal; a key already journaled keeps its first row.
    pub journal: Vec<JournalRow>,
    /// (session id, rule, JSON); one per pair, the last winning.
    pub memory: Vec<(String, String, String)>,
    /// Keys of handled events.
    pub done: Vec<String>,
    /// Decision-trace steps to append: (session id, rule-set version,
    /// body JSON), in order.
    pub trace: Vec<(String, String, String)>,
    /// Per session with new steps, how many its trace keeps (a session
    /// handled twice in one batch is listed twice; trimming twice is harmless).
    pub trace_keep: Vec<(String, i64)>,
    /// The rule sets the new steps name (version, rules JSON), each once.
    pub rule_sets: Vec<(String, String)>,
}

impl BatchRows {
    /// Serializes a batch.
    pub fn new(batch: &Batch) -> Result<BatchRows, serde_json::Error> {
        let mut rows = BatchRows {
            baselined: batch.baselined.then(|| format_ts(&batch.at)),
            ..BatchRows::default()
        };
        let ended_at = format_ts(&batch.at);
        let mut index: HashMap<&str, usize> = HashMap::new();
        let states = batch
            .sessions
            .iter()
            .map(|t| (t, None))
            .chain(batch.ended.iter().map(|t| (t, Some(ended_at.clone()))));
        for (t, ended) in states {
            let row = (
                t.session.session_id.clone(),
                serde_json::to_string(t)?,
                ended,
            );
            match index.get(t.session.session_id.as_str()) {
                Some(&i) => rows.sessions[i] = row,
                None => {
                    index.insert(&t.session.session_id, rows.sessions.len());
                    rows.sessions.push(row);
                }
            }
        }
        for p in &batch.events {
            let context = serde_json::to_string(&p.tracked)?;
            for e in &p.events {
                rows.journal.push(JournalRow {
                    key: e.key(),
                    session_id: e.session_id.clone(),
                    event: serde_json::to_string(e)?,
                    context: context.clone(),
                });
            }
        }
        let mut index: HashMap<(&str, &str), usize> = HashMap::new();
        for d in &batch.done {
            for (rule, m) in &d.memory {
                let row = (
                    d.session_id.clone(),
                    rule.clone(),
                    serde_json::to_string(m)?,
                );
                match index.get(&(d.session_id.as_str(), rule.as_str())) {
                    Some(&i) => rows.memory[i] = row,
                    None => {
                        index.insert((&d.session_id, rule), rows.memory.len());
                        rows.memory.push(row);
                    }
                }
            }
            rows.done.extend(d.keys.iter().cloned());
            for step in &d.steps {
                if !rows.rule_sets.iter().any(|(v, _)| *v == step.rules.version) {
                    rows.rule_sets
                        .push((step.rules.version.clone(), step.rules.rules_json()));
                }
                rows.trace.push((
                    d.session_id.clone(),
                    step.rules.version.clone(),
                    step.body_json()?,
                ));
            }
            if !d.steps.is_empty() {
                let keep = i64::try_from(d.keep_steps.max(1)).unwrap_or(i64::MAX);
                rows.trace_keep.push((d.session_id.clone(), keep));
            }
        }
        Ok(rows)
    }
}

/// The columns of `actions` an [`ActionRow`] is read from, in its fields'
/// order: every read of an action selects these.
pub(super) const ACTION_COLUMNS: &str =
    "key, at, rule, session_id, event, action, text, outcome, detail";

impl ActionRow {
    /// The intent it records (its outcome aside).
    pub(super) fn into_intent(self) -> Intent {
        Intent {
            key: self.key,
            at: ts_col(&self.at),
            rule: self.rule,
            session_id: self.session_id,
            event: self.event,
            action: self.action,
            text: self.text,
        }
    }

    /// The entry the audit log shows: an intent without an outcome is
    /// `pending`.
    pub(super) fn into_audit_entry(self) -> AuditEntry {
        AuditEntry {
            at: ts_col(&self.at),
            rule: self.rule,
            session_id: self.session_id,
            event: self.event,
            action: self.action,
            outcome: self.outcome.unwrap_or_else(|| "pending".into()),
            detail: self.detail,
        }
    }
}

/// A stored timestamp; an unreadable one reads as the epoch rather than
/// failing the whole read.
pub(super) fn ts_col(s: &str) -> Timestamp {
    parse_ts(s).unwrap_or_default()
}

/// Tracked sessions from (id, JSON) rows.
pub(super) fn sessions(
    rows: impl IntoIterator<Item = (String, String)>,
) -> HashMap<String, Tracked> {
    let mut out = HashMap::new();
    for (id, json) in rows {
        match serde_json::from_str::<Tracked>(&json) {
            Ok(t) => {
                out.insert(id, t);
            }
            Err(e) => {
                // One unreadable row must not stop the engine: the
                // session is re-read as new on the next poll.
                tracing::warn!(session_id = %id, error = %e, "unreadable session state; it will be re-read")
            }
        }
    }
    out
}

/// Sessions created at or after `since`, from tracked JSON rows.
pub(super) fn created_since(
    rows: impl IntoIterator<Item = String>,
    since: Timestamp,
) -> Vec<Tracked> {
    rows.into_iter()
        .filter_map(|json| serde_json::from_str::<Tracked>(&json).ok())
        .filter(|t| t.session.created_at.is_some_and(|c| c >= since))
        .collect()
}

/// Rule memory from (rule, JSON) rows.
pub(super) fn memory(rows: impl IntoIterator<Item = (String, String)>) -> HashMap<String, Memory> {
    rows.into_iter()
        .filter_map(|(rule, json)| Some((rule, serde_json::from_str::<Memory>(&json).ok()?)))
        .collect()
}

/// Journaled events from (session id, event JSON, context JSON) rows in
/// journal order, grouped by session; each session as its newest event
/// saw it.
pub(super) fn pending(rows: impl IntoIterator<Item = (String, String, String)>) -> Vec<Pending> {
    let mut out: Vec<Pending> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (session_id, event, context) in rows {
        let (Ok(event), Ok(tracked)) = (
            serde_json::from_str::<Event>(&event),
            serde_json::from_str::<Tracked>(&context),
        ) else {
            tracing::warn!(session_id = %session_id, "unreadable journaled event; skipped");
            continue;
        };
        match index.get(&session_id) {
            Some(&i) => {
                out[i].events.push(event);
                out[i].tracked = tracked;
            }
            None => {
                index.insert(session_id, out.len());
                out.push(Pending {
                    tracked,
                    events: vec![event],
                });
            }
        }
    }
    out
}

/// What an existing action row says to a new `begin_action` of its key.
pub(super) fn existing(mut row: ActionRow) -> Begin {
    match row.outcome.take() {
        Some(outcome) => Begin::Done { outcome },
        None => Begin::Pending(row.into_intent()),
    }
}

/// Breach counts from (rule, `YYYY-MM-DD`, count) rows.
pub(super) fn breaches(
    rows: impl IntoIterator<Item = (String, String, i64)>,
) -> Vec<(String, chrono::NaiveDate, u64)> {
    rows.into_iter()
        .filter_map(|(rule, day, n)| {
            let day = chrono::NaiveDate::parse_from_str(&day, "%Y-%m-%d").ok()?;
            Some((rule, day, n.max(0) as u64))
        })
        .collect()
}
