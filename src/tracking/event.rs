//! Session events: their kinds, the timers rules register, and one
//! occurrence of an event with the key that makes it happen only once.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::{Message, Timestamp};
use crate::hours::Calendars;

/// The kinds of event a rule can handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A session is seen for the first time.
    SessionStarted,
    /// A new visitor message.
    VisitorMessage,
    /// A new AI bot message.
    BotMessage,
    /// A new human agent message (skyrules' own replies included).
    AgentMessage,
    /// `human_requested_at` got a (new) time.
    HumanRequested,
    /// `handled_by` became `human`.
    TakenOver,
    /// `handled_by` went from `human` back to `ai`.
    Released,
    /// `status` became `ended`.
    SessionEnded,
    /// Timer: no message from anyone for D.
    Idle,
    /// Timer: the newest message is the visitor's and has waited D.
    Unanswered,
    /// Timer: a human was requested, nobody took over, and D passed.
    HumanWaiting,
}

impl EventKind {
    /// Every kind, in the order of the SPEC's table.
    pub const ALL: [EventKind; 11] = [
        EventKind::SessionStarted,
        EventKind::VisitorMessage,
        EventKind::BotMessage,
        EventKind::AgentMessage,
        EventKind::HumanRequested,
        EventKind::TakenOver,
        EventKind::Released,
        EventKind::SessionEnded,
        EventKind::Idle,
        EventKind::Unanswered,
        EventKind::HumanWaiting,
    ];

    /// The name rules use in `on(...)`.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::SessionStarted => "session_started",
            EventKind::VisitorMessage => "visitor_message",
            EventKind::BotMessage => "bot_message",
            EventKind::AgentMessage => "agent_message",
            EventKind::HumanRequested => "human_requested",
            EventKind::TakenOver => "taken_over",
            EventKind::Released => "released",
            EventKind::SessionEnded => "session_ended",
            EventKind::Idle => "idle",
            EventKind::Unanswered => "unanswered",
            EventKind::HumanWaiting => "human_waiting",
        }
    }

    /// Looks a kind up by its rule name.
    pub(crate) fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Timers need a duration in `on(event, duration, handler)`.
    pub(crate) fn is_timer(self) -> bool {
        matches!(
            self,
            EventKind::Idle | EventKind::Unanswered | EventKind::HumanWaiting
        )
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A timer some rule registered: the kind, its duration, and the business
/// hours it counts in (wall-clock time when `None`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TimerSpec {
    /// `idle`, `unanswered` or `human_waiting`.
    pub kind: EventKind,
    /// How long the condition must hold.
    pub after: Duration,
    /// The `[hours.NAME]` calendar whose open time counts, if any.
    #[serde(default)]
    pub hours: Option<String>,
}

impl TimerSpec {
    /// A timer counted in wall-clock time.
    pub fn wall(kind: EventKind, after: Duration) -> TimerSpec {
        TimerSpec {
            kind,
            after,
            hours: None,
        }
    }

    /// How long the condition has held between `since` and `now`, counted
    /// in the timer's business hours when it has some.
    pub fn elapsed(&self, since: Timestamp, now: Timestamp, calendars: &Calendars) -> Duration {
        match self.hours.as_deref().and_then(|h| calendars.get(h)) {
            Some(cal) => cal.business_elapsed(since, now),
            None => (now - since).to_std().unwrap_or_default(),
        }
    }
}

/// One thing that happened to one session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The session, as of this poll.
    pub session_id: String,
    /// The message, for message events.
    pub message: Option<Message>,
    /// The timer that fired, for timer events.
    pub timer: Option<TimerSpec>,
    /// How long the timer's condition has held, for timer events.
    pub waited: Option<Duration>,
    /// When it happened on the server's clock (timers: when they fired).
    pub at: Timestamp,
}

impl Event {
    /// A stable identity for this occurrence, the same every time the same
    /// history is diffed: the state store uses it so that an event replayed
    /// after a crash never acts twice.
    pub fn key(&self) -> String {
        let detail = match (&self.message, &self.timer) {
            (Some(m), _) => format!("m{}", m.id),
            (None, Some(t)) => format!(
                "{}ms{}@{}",
                t.after.as_millis(),
                t.hours
                    .as_deref()
                    .map(|h| format!("/{h}"))
                    .unwrap_or_default(),
                self.at.timestamp_micros()
            ),
            (None, None) => format!("@{}", self.at.timestamp_micros()),
        };
        format!("{}|{}|{detail}", self.session_id, self.kind.name())
    }
}
