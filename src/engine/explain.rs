//! What the rules and the executor made of one event, written down as a
//! decision-trace [`Step`] (SPEC §8): which event, what made it, and for
//! each rule whether it acted (with every action's outcome), asked for
//! nothing, failed, was only logged, and where its timers stand.
//!
//! Owns the wording of causes and details, which hold ids, names and times
//! but never message or reply texts (SPEC §6). Does not own deciding
//! anything (the rules and executor did) or keeping steps (the store).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::SecondsFormat;

use crate::api::Timestamp;
use crate::executor::Outcome;
use crate::hours::Calendars;
use crate::rules::{Action, RuleRun, RuleSet};
use crate::trace::{Decision, Step, Verdict};
use crate::tracking::{timer_state, Event, EventKind, TimerSpec, TimerState, Tracked};

/// How one action of a run ended: its outcome now, or `None` when it was
/// taken before a restart and not again.
pub(super) type Taken<'a> = (&'a Action, Option<Outcome>);

/// A step being filled in while one event goes through the rules.
pub(super) struct StepBuilder {
    step: Step,
}

impl StepBuilder {
    /// A step for `event`, decided under `rules`, with no decisions yet.
    pub(super) fn new(rules: &RuleSet, event: &Event, seen_at: Timestamp) -> StepBuilder {
        let key = event.key();
        let prefix = format!("{}|{}|", event.session_id, event.kind.name());
        StepBuilder {
            step: Step {
                session_id: event.session_id.clone(),
                seen_at,
                at: event.at,
                event: event.kind,
                key: key.strip_prefix(&prefix).unwrap_or(&key).to_string(),
                cause: cause(event),
                rules: Arc::clone(&rules.traced),
                decisions: Vec::new(),
            },
        }
    }

    /// Records one rule's run: its error, or what its actions came to.
    pub(super) fn ran(&mut self, rules: &RuleSet, run: &RuleRun, taken: &[Taken<'_>]) {
        let Some(rule) = rules.index_of(&run.rule) else {
            return;
        };
        let (verdict, detail) = match &run.error {
            // The file name is enough (the rule is named already).
            Some(e) => (Verdict::Failed, short_error(e)),
            None if run.actions.is_empty() && run.shadow => {
                (Verdict::NoAction, "shadow mode".to_string())
            }
            None if run.actions.is_empty() => (Verdict::NoAction, String::new()),
            None => (verdict_of(run.shadow, taken), actions_detail(run, taken)),
        };
        self.step.decisions.push(Decision {
            rule,
            verdict,
            detail,
        });
    }

    /// Records where each rule's timers stand after this cycle, for the
    /// session as `t` holds it: running ones as `not_due` (with when they
    /// fall due) or `out_of_hours`, fired ones as `already_fired`. The
    /// timer this event is (a timer event) is left out: its handler's own
    /// decision says what came of it.
    pub(super) fn timers(
        &mut self,
        rules: &RuleSet,
        t: &Tracked,
        now: Timestamp,
        calendars: &Calendars,
        event_timer: Option<&TimerSpec>,
    ) {
        for (i, rule) in rules.rules.iter().enumerate() {
            if rule.mode == crate::rules::RuleMode::Off {
                continue;
            }
            let mut seen = HashSet::new();
            for h in &rule.handlers {
                let Some(after) = h.after else { continue };
                let spec = TimerSpec {
                    kind: h.kind,
                    after,
                    hours: h.hours.clone(),
                };
                if Some(&spec) == event_timer || !seen.insert(spec.clone()) {
                    continue;
                }
                let Some(state) = timer_state(t, &spec, now, calendars) else {
                    continue;
                };
                let name = timer_name(&spec);
                let (verdict, detail) = match state {
                    TimerState::Fired => (
                        Verdict::AlreadyFired,
                        format!("{name} fired for this stretch already"),
                    ),
                    TimerState::Running {
                        waited,
                        due,
                        paused,
                    } => {
                        let due = match due {
                            Some(d) => format!("due {}", time(d)),
                            None => "not due while its calendar stays closed".to_string(),
                        };
                        if paused {
                            (
                                Verdict::OutOfHours,
                                format!(
                                    "{name} paused outside business hours, waited {}, {due}",
                                    dur(waited)
                                ),
                            )
                        } else {
                            // How long it waited follows from the due time.
                            (Verdict::NotDue, format!("{name} {due}"))
                        }
                    }
                };
                self.step.decisions.push(Decision {
                    rule: i,
                    verdict,
                    detail,
                });
            }
        }
        self.step.decisions.sort_by_key(|d| d.rule);
    }

    /// The finished step.
    pub(super) fn finish(self) -> Step {
        self.step
    }
}

/// A rule error as `file.rhai:line:column: message`.
fn short_error(e: &crate::rules::RuleError) -> String {
    let short = crate::rules::RuleError {
        path: e
            .path
            .file_name()
            .map(Into::into)
            .unwrap_or_else(|| e.path.clone()),
        ..e.clone()
    };
    short.to_string()
}

/// What made an event, in ids and field names.
fn cause(event: &Event) -> String {
    if let Some(m) = &event.message {
        return format!("message {}", m.id);
    }
    if let Some(t) = &event.timer {
        let waited = event.waited.map(dur).unwrap_or_default();
        return format!("{} waited {waited}", timer_name(t));
    }
    match event.kind {
        EventKind::SessionStarted => "first seen".into(),
        EventKind::HumanRequested => format!("human_requested_at {}", time(event.at)),
        EventKind::TakenOver => "handled_by became human".into(),
        EventKind::Released => "handled_by went from human to ai".into(),
        EventKind::SessionEnded => "status became ended".into(),
        _ => String::new(),
    }
}

/// The rule's verdict from its actions' outcomes: a failure, a capped
/// reply or a dry run says more than the actions that went through.
fn verdict_of(shadow: bool, taken: &[Taken<'_>]) -> Verdict {
    let outcomes: Vec<&Outcome> = taken.iter().filter_map(|(_, o)| o.as_ref()).collect();
    if shadow {
        Verdict::DryRun
    } else if outcomes.iter().any(|o| matches!(o, Outcome::Failed(_))) {
        Verdict::Failed
    } else if outcomes.iter().any(|o| matches!(o, Outcome::Capped(_))) {
        Verdict::Capped
    } else if !outcomes.is_empty() && outcomes.iter().all(|o| **o == Outcome::DryRun) {
        Verdict::DryRun
    } else if !outcomes.is_empty()
        && outcomes.len() == taken.len()
        && outcomes.iter().all(|o| matches!(o, Outcome::Skipped(_)))
    {
        Verdict::Skipped
    } else {
        Verdict::Acted
    }
}

/// Each action with its outcome: `take_over: taken, reply: capped (…)`.
/// Actions by name only: a reply's text stays out.
fn actions_detail(run: &RuleRun, taken: &[Taken<'_>]) -> String {
    let mut parts = Vec::new();
    for (i, action) in run.actions.iter().enumerate() {
        let what = match action {
            Action::Notify { channel, .. } => format!("notify {channel}"),
            other => other.name().to_string(),
        };
        let outcome = match taken.get(i) {
            Some((_, Some(o))) => match o.detail() {
                Some(d) => format!("{} ({d})", o.name()),
                None => o.name().to_string(),
            },
            Some((_, None)) => "taken before a restart".to_string(),
            None if run.shadow => "dry_run".to_string(),
            None => "not reached".to_string(),
        };
        parts.push(format!("{what}: {outcome}"));
    }
    parts.join(", ")
}

/// `idle 30m`, `human_waiting 10m in hours support`.
fn timer_name(t: &TimerSpec) -> String {
    match &t.hours {
        Some(h) => format!("{} {} in hours {h}", t.kind.name(), dur(t.after)),
        None => format!("{} {}", t.kind.name(), dur(t.after)),
    }
}

/// A duration to the second, as people write it (`2m 5s`).
fn dur(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// A time to the second, in UTC.
fn time(t: Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(o: Option<Outcome>) -> Taken<'static> {
        (&Action::TakeOver, o)
    }

    #[test]
    fn the_verdict_names_the_worst_outcome() {
        assert_eq!(
            verdict_of(false, &[taken(Some(Outcome::Taken))]),
            Verdict::Acted
        );
        assert_eq!(
            verdict_of(
                false,
                &[
                    taken(Some(Outcome::Taken)),
                    taken(Some(Outcome::Capped("5 replies in 10m".into())))
                ]
            ),
            Verdict::Capped
        );
        assert_eq!(
            verdict_of(false, &[taken(Some(Outcome::Skipped("ended".into())))]),
            Verdict::Skipped
        );
        assert_eq!(
            verdict_of(false, &[taken(Some(Outcome::DryRun))]),
            Verdict::DryRun
        );
        assert_eq!(verdict_of(true, &[]), Verdict::DryRun);
        assert_eq!(
            verdict_of(
                false,
                &[
                    taken(Some(Outcome::Skipped("x".into()))),
                    taken(Some(Outcome::Failed("503".into())))
                ]
            ),
            Verdict::Failed
        );
        assert_eq!(verdict_of(false, &[taken(None)]), Verdict::Acted);
    }
}
