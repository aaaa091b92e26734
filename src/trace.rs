//! The decision trace (SPEC §8): for every session, each event the engine
//! saw and what each rule made of it, so that "why did (or didn't) the
//! rules act on this chat?" has an answer.
//!
//! Owns: the outcome vocabulary ([`Verdict`]), one event's [`Step`] as the
//! engine records it, its stored form (compact JSON that names the rule
//! set it was decided under instead of repeating every rule), and the
//! [`Entry`] list `skyrules why` and the status page show. Holds ids and
//! decisions, never message texts (SPEC §6). Does not own where steps are
//! kept (the store appends them with the cycle's commit, keeps the newest
//! few hundred per session and purges them with the session) or how the
//! decisions are made (the engine fills them in from the rules' runs and
//! the executor's outcomes).

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::api::Timestamp;
use crate::tracking::EventKind;

/// How many steps a session's trace keeps by default
/// (`engine.trace_length`).
pub const DEFAULT_TRACE_LENGTH: usize = 200;

/// What came of one event for one rule: SPEC §8's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The handler asked for actions and they were taken.
    Acted,
    /// The handler ran and asked for nothing.
    NoAction,
    /// The handler failed (the error, with `file:line:column`), or an
    /// action it asked for failed at the API.
    Failed,
    /// The rule has no handler for this event.
    NoHandler,
    /// One of the rule's timers runs and is not due yet.
    NotDue,
    /// One of the rule's business-time timers is paused by its calendar.
    OutOfHours,
    /// One of the rule's timers fired for this stretch already.
    AlreadyFired,
    /// Its actions were not needed or not possible (an ended chat, one
    /// already handled).
    Skipped,
    /// The reply-loop guard dropped its reply.
    Capped,
    /// Its actions were only logged (a shadow rule, or `--dry-run`).
    DryRun,
    /// The rule is `mode("off")`.
    Disabled,
}

impl Verdict {
    /// The name `why` prints.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Acted => "acted",
            Verdict::NoAction => "no_action",
            Verdict::Failed => "failed",
            Verdict::NoHandler => "no_handler",
            Verdict::NotDue => "not_due",
            Verdict::OutOfHours => "out_of_hours",
            Verdict::AlreadyFired => "already_fired",
            Verdict::Skipped => "skipped",
            Verdict::Capped => "capped",
            Verdict::DryRun => "dry_run",
            Verdict::Disabled => "disabled",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A short, stable content hash (FNV-1a, 32 bits as 8 hex digits): a rule
/// file's version as `why` names it. Not a security measure; stable across
/// builds, which std's hasher does not promise.
pub(crate) fn short_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", (h >> 32) ^ (h & 0xffff_ffff))
}

/// One rule file as a step was decided under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleVersion {
    /// The rule id (file stem).
    pub rule: String,
    /// Its content hash.
    pub version: String,
    /// `live`, `shadow` or `off`.
    pub mode: String,
}

/// The rules loaded when a step was decided. Stored once per version, so
/// a step names it with 8 characters instead of listing every rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleSetVersion {
    /// A hash of every rule's id, version and mode.
    pub version: String,
    /// The rules, in id order (a step's decisions index into it).
    pub rules: Vec<RuleVersion>,
}

impl RuleSetVersion {
    /// The version of a set of rules, given in id order.
    pub fn new(rules: Vec<RuleVersion>) -> RuleSetVersion {
        let mut text = String::new();
        for r in &rules {
            text.push_str(&format!("{}\n{}\n{}\n", r.rule, r.version, r.mode));
        }
        RuleSetVersion {
            version: short_hash(text.as_bytes()),
            rules,
        }
    }

    /// The stored form of the rule list.
    pub(crate) fn rules_json(&self) -> String {
        serde_json::to_string(&self.rules).unwrap_or_else(|_| "[]".into())
    }
}

/// One rule's decision about one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The rule's index in the step's [`RuleSetVersion`].
    pub rule: usize,
    /// What came of it.
    pub verdict: Verdict,
    /// The actions and their outcomes, the error, the timer and its due
    /// time; ids only, never texts.
    pub detail: String,
}

/// One event of one session and what the rules made of it. Rules with no
/// decision listed had no handler for it (or were off).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The session.
    pub session_id: String,
    /// When the engine handled it (the clock the state is written with).
    pub seen_at: Timestamp,
    /// When it happened (a timer: when it fell due).
    pub at: Timestamp,
    /// The event.
    pub event: EventKind,
    /// Its key, without the session and the kind (`m12`, `@…`): the same
    /// every time the same history produces it.
    pub key: String,
    /// What made it: the message id, the field that changed, the timer and
    /// how long it waited.
    pub cause: String,
    /// The rules it was decided under.
    pub rules: Arc<RuleSetVersion>,
    /// The decisions, in rule order.
    pub decisions: Vec<Decision>,
}

/// A step as stored, as small as it reads back: short keys, the event
/// time in microseconds and the handling time as milliseconds after it,
/// the key without what the row and the kind already say, and no cause
/// where the key says it (a message's id).
#[derive(Serialize, Deserialize)]
struct StoredStep {
    a: i64,
    w: i64,
    e: EventKind,
    k: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    c: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    d: Vec<(usize, Verdict, String)>,
}

impl Step {
    /// The stored form of everything but the session and the rule set
    /// (the row's own columns).
    pub(crate) fn body_json(&self) -> Result<String, serde_json::Error> {
        let message_cause = self
            .key
            .strip_prefix('m')
            .is_some_and(|id| self.cause == format!("message {id}"));
        serde_json::to_string(&StoredStep {
            a: self.at.timestamp_micros(),
            w: (self.seen_at - self.at).num_milliseconds(),
            e: self.event,
            k: self.key.clone(),
            c: (!message_cause).then(|| self.cause.clone()),
            d: self
                .decisions
                .iter()
                .map(|d| (d.rule, d.verdict, d.detail.clone()))
                .collect(),
        })
    }
}

/// A session's trace as the store read it: each step's rule-set version
/// and stored body, oldest first, and the rule sets they name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceRows {
    /// (rule-set version, body JSON), oldest first.
    pub steps: Vec<(String, String)>,
    /// (rule-set version, rules JSON).
    pub rule_sets: Vec<(String, String)>,
}

/// One line of the timeline: one event and one rule's decision about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// When the event happened (a timer: when it fell due).
    pub at: Timestamp,
    /// When the engine handled it.
    pub seen_at: Timestamp,
    /// The event kind.
    pub event: String,
    /// The event's key without the session id: `kind|m12` for a message,
    /// `kind|@micros` for a change, `kind|600000ms@micros` for a timer.
    pub key: String,
    /// What made the event.
    pub cause: String,
    /// The rule; `None` when no rule was loaded.
    pub rule: Option<String>,
    /// The rule file's version (content hash) that decided.
    pub version: Option<String>,
    /// What came of it.
    pub outcome: Verdict,
    /// The actions and their outcomes, the error, the timer.
    pub detail: String,
}

impl Entry {
    /// A rule that had no handler for the event: timelines put these on
    /// one line per event rather than a line each.
    pub fn is_idle(&self) -> bool {
        self.outcome == Verdict::NoHandler && self.rule.is_some()
    }

    /// Whether `other` is a decision about the same event.
    fn same_event(&self, other: &Entry) -> bool {
        self.key == other.key && self.seen_at == other.seen_at && self.event == other.event
    }
}

/// A timeline's entries, one slice per event, in order.
pub fn by_event(entries: &[Entry]) -> impl Iterator<Item = &[Entry]> {
    entries.chunk_by(Entry::same_event)
}

/// A stored trace that cannot be read back.
#[derive(Debug, thiserror::Error)]
#[error("session {session_id}: its stored decision trace is unreadable ({message})")]
pub struct TraceError {
    session_id: String,
    message: String,
}

/// The timeline of one session: every stored step, oldest first, each
/// expanded into one entry per rule (rules without a decision as
/// `no_handler`, or `disabled` when off).
pub fn entries(session_id: &str, rows: &TraceRows) -> Result<Vec<Entry>, TraceError> {
    let bad = |message: String| TraceError {
        session_id: session_id.to_string(),
        message,
    };
    let mut sets: HashMap<&str, Vec<RuleVersion>> = HashMap::new();
    for (version, json) in &rows.rule_sets {
        let rules =
            serde_json::from_str(json).map_err(|e| bad(format!("rule set {version}: {e}")))?;
        sets.insert(version, rules);
    }
    let mut out = Vec::new();
    for (set, body) in &rows.steps {
        let s: StoredStep = serde_json::from_str(body).map_err(|e| bad(e.to_string()))?;
        let rules = sets.get(set.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        let at = |micros: i64| {
            chrono::DateTime::from_timestamp_micros(micros)
                .ok_or_else(|| bad(format!("time {micros} is out of range")))
        };
        let happened = at(s.a)?;
        let seen_at = happened + chrono::Duration::milliseconds(s.w);
        let cause = match &s.c {
            Some(c) => c.clone(),
            None => format!("message {}", s.k.strip_prefix('m').unwrap_or(&s.k)),
        };
        let entry = |rule: Option<&RuleVersion>,
                     outcome: Verdict,
                     detail: String|
         -> Result<Entry, TraceError> {
            Ok(Entry {
                at: happened,
                seen_at,
                event: s.e.name().to_string(),
                key: format!("{}|{}", s.e.name(), s.k),
                cause: cause.clone(),
                rule: rule.map(|r| r.rule.clone()),
                version: rule.map(|r| r.version.clone()),
                outcome,
                detail,
            })
        };
        if rules.is_empty() {
            out.push(entry(
                None,
                Verdict::NoHandler,
                "no rules were loaded".into(),
            )?);
            continue;
        }
        for (i, rule) in rules.iter().enumerate() {
            let mut any = false;
            for (_, verdict, detail) in s.d.iter().filter(|d| d.0 == i) {
                out.push(entry(Some(rule), *verdict, detail.clone())?);
                any = true;
            }
            if !any {
                let (verdict, detail) = if rule.mode == "off" {
                    (Verdict::Disabled, "mode(\"off\")".to_string())
                } else {
                    (Verdict::NoHandler, String::new())
                };
                out.push(entry(Some(rule), verdict, detail)?);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> Arc<RuleSetVersion> {
        Arc::new(RuleSetVersion::new(vec![
            RuleVersion {
                rule: "a".into(),
                version: short_hash(b"a"),
                mode: "live".into(),
            },
            RuleVersion {
                rule: "b".into(),
                version: short_hash(b"b"),
                mode: "off".into(),
            },
            RuleVersion {
                rule: "c".into(),
                version: short_hash(b"c"),
                mode: "live".into(),
            },
        ]))
    }

    #[test]
    fn a_stored_step_reads_back_with_every_rule_accounted_for() {
        let rules = set();
        let now = chrono::DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap();
        let step = Step {
            session_id: "s1".into(),
            seen_at: now,
            at: now,
            event: EventKind::VisitorMessage,
            key: "m7".into(),
            cause: "message 7".into(),
            rules: rules.clone(),
            decisions: vec![Decision {
                rule: 2,
                verdict: Verdict::Acted,
                detail: "take_over: taken".into(),
            }],
        };
        let rows = TraceRows {
            steps: vec![(rules.version.clone(), step.body_json().unwrap())],
            rule_sets: vec![(rules.version.clone(), rules.rules_json())],
        };
        let e = entries("s1", &rows).unwrap();
        let got: Vec<(Option<&str>, Verdict)> =
            e.iter().map(|e| (e.rule.as_deref(), e.outcome)).collect();
        assert_eq!(
            got,
            vec![
                (Some("a"), Verdict::NoHandler),
                (Some("b"), Verdict::Disabled),
                (Some("c"), Verdict::Acted)
            ]
        );
        assert_eq!(e[2].at, now);
        assert_eq!(e[2].version.as_deref(), Some(short_hash(b"c").as_str()));
        assert_eq!(e[2].event, "visitor_message");
        assert_eq!(e[2].key, "visitor_message|m7");
        assert_eq!(e[2].cause, "message 7");
        assert_eq!(e[2].seen_at, now);
    }

    #[test]
    fn versions_change_with_content_and_stay_stable() {
        assert_eq!(short_hash(b"on(\"idle\")"), short_hash(b"on(\"idle\")"));
        assert_ne!(
            short_hash(b"mode(\"off\");"),
            short_hash(b"mode(\"shadow\");")
        );
        assert_eq!(short_hash(b"").len(), 8);
        // Pinned (FNV-1a computed by hand): a stored version must mean the
        // same file after an upgrade.
        assert_eq!(short_hash(b"skyrules"), "95334f47");
    }
}
