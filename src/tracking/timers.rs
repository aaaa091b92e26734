//! Timers (`idle`, `unanswered`, `human_waiting`): when one is due, and
//! the fired keys that make it fire once per occurrence. Where a timer is
//! decided. Pure, like the diff.

use std::time::Duration;

use super::diff::Tracked;
use super::event::{Event, EventKind, TimerSpec};
use crate::api::{HandledBy, SenderType, SessionStatus, Timestamp};
use crate::hours::Calendars;

fn fired_key(spec: &TimerSpec, anchor: &str) -> String {
    match &spec.hours {
        None => format!("{}:{}:{}", spec.kind.name(), spec.after.as_millis(), anchor),
        // The calendar is part of the duration; `@` never appears in kinds
        // or anchors, so keys stay parseable.
        Some(h) => format!(
            "{}:{}@{h}:{}",
            spec.kind.name(),
            spec.after.as_millis(),
            anchor
        ),
    }
}

/// The anchor of a timer (an id for "this occurrence") and when its clock
/// started; `None` when the timer's condition does not hold at all.
fn timer_anchor(t: &Tracked, kind: EventKind) -> Option<(String, Timestamp)> {
    let s = &t.session;
    if s.status == SessionStatus::Ended {
        return None;
    }
    match kind {
        EventKind::Idle => match t.last_message() {
            Some(m) => Some((format!("m{}", m.id), m.created_at.or(s.last_activity_at)?)),
            None => Some(("open".into(), s.created_at.or(s.last_activity_at)?)),
        },
        EventKind::Unanswered => {
            let m = t.last_message()?;
            if m.sender_type != SenderType::Visitor {
                return None;
            }
            Some((format!("m{}", m.id), m.created_at.or(s.last_activity_at)?))
        }
        EventKind::HumanWaiting => {
            let req = s.human_requested_at?;
            let taken =
                s.handled_by == HandledBy::Human || s.human_took_over_at.is_some_and(|t| t >= req);
            (!taken).then(|| (format!("r{}", req.timestamp_micros()), req))
        }
        _ => None,
    }
}

/// Timers whose condition has held long enough and that have not fired for
/// this occurrence, counted in wall-clock time. Marks them fired in `t`.
/// Oldest deadline first.
pub fn due_timers(t: &mut Tracked, specs: &[TimerSpec], now: Timestamp) -> Vec<Event> {
    due_timers_in(t, specs, now, &Calendars::default())
}

/// Like [`due_timers`], with business-hours timers counted in `calendars`.
pub fn due_timers_in(
    t: &mut Tracked,
    specs: &[TimerSpec],
    now: Timestamp,
    calendars: &Calendars,
) -> Vec<Event> {
    let mut due = Vec::new();
    for spec in specs {
        let Some((anchor, since)) = timer_anchor(t, spec.kind) else {
            continue;
        };
        let waited = spec.elapsed(since, now, calendars);
        if waited < spec.after {
            continue;
        }
        if !t.fired.insert(fired_key(spec, &anchor)) {
            continue;
        }
        // The deadline: in business hours, when the open time ran out.
        let at = match spec.hours.as_deref().and_then(|h| calendars.get(h)) {
            Some(cal) => cal.deadline(since, spec.after).unwrap_or(now),
            None => {
                since
                    + chrono::Duration::from_std(spec.after)
                        .unwrap_or_else(|_| chrono::Duration::zero())
            }
        };
        due.push(Event {
            kind: spec.kind,
            session_id: t.session.session_id.clone(),
            message: None,
            timer: Some(spec.clone()),
            waited: Some(waited),
            at,
        });
    }
    due.sort_by_key(|e| e.at);
    due
}

/// Timers whose condition holds now and that have not fired yet, with how
/// long the condition has held: what a status page shows as "running".
pub(crate) fn running_timers(
    t: &Tracked,
    specs: &[TimerSpec],
    now: Timestamp,
    calendars: &Calendars,
) -> Vec<(TimerSpec, Duration)> {
    specs
        .iter()
        .filter_map(|spec| {
            let (anchor, since) = timer_anchor(t, spec.kind)?;
            if t.fired.contains(&fired_key(spec, &anchor)) {
                return None;
            }
            Some((spec.clone(), spec.elapsed(since, now, calendars)))
        })
        .collect()
}

/// Where one timer stands for a session: what the decision trace shows
/// for a rule's timer at an event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TimerState {
    /// It fired for this occurrence (this message, this request) already.
    Fired,
    /// Its condition holds and it has not fired.
    Running {
        /// How long the condition has held (in open time, with hours).
        waited: Duration,
        /// When it falls due; `None` when its calendar does not open in time.
        due: Option<Timestamp>,
        /// Its calendar is closed now, so its clock is paused.
        paused: bool,
    },
}

/// Where `spec` stands for `t` at `now`; `None` when its condition does
/// not hold (no visitor message waiting, no open request).
pub(crate) fn timer_state(
    t: &Tracked,
    spec: &TimerSpec,
    now: Timestamp,
    calendars: &Calendars,
) -> Option<TimerState> {
    let (anchor, since) = timer_anchor(t, spec.kind)?;
    if t.fired.contains(&fired_key(spec, &anchor)) {
        return Some(TimerState::Fired);
    }
    let waited = spec.elapsed(since, now, calendars);
    let calendar = spec.hours.as_deref().and_then(|h| calendars.get(h));
    let (due, paused) = match calendar {
        Some(cal) => (cal.deadline(since, spec.after), !cal.is_open(now)),
        None => (
            chrono::Duration::from_std(spec.after)
                .ok()
                .map(|d| since + d),
            false,
        ),
    };
    Some(TimerState::Running {
        waited,
        due,
        paused,
    })
}

/// Forgets fired keys whose occurrence is over (a newer message, a new
/// request), so the set does not grow with the session's length.
pub(super) fn prune_fired(t: &mut Tracked) {
    let live: Vec<(&str, String)> = [
        EventKind::Idle,
        EventKind::Unanswered,
        EventKind::HumanWaiting,
    ]
    .into_iter()
    .filter_map(|k| timer_anchor(t, k).map(|(anchor, _)| (k.name(), anchor)))
    .collect();
    t.fired.retain(|key| {
        let mut parts = key.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(kind), Some(_), Some(anchor)) => {
                live.iter().any(|(k, a)| *k == kind && a == anchor)
            }
            _ => false,
        }
    });
}
