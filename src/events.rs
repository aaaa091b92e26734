//! Session events and the snapshot diff that produces them (SPEC §2).
//!
//! Everything here is pure: (what we knew, what the API says now, the time)
//! → (what we know now, events). No I/O, no clock reads, so every case can
//! be tested exhaustively. The watcher does the polling; the rules runtime
//! consumes the events.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::{
    HandledBy, Message, SenderType, Session, SessionDetail, SessionStatus, Timestamp,
};
use crate::hours::Calendars;

mod recent;
pub use recent::{LastMessage, Recent};

/// How many recent messages are kept per session for `ev.messages()` on
/// events that did not re-read the session (timers).
pub const RECENT_MESSAGES: usize = 20;

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
    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Timers need a duration in `on(event, duration, handler)`.
    pub fn is_timer(self) -> bool {
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

/// What the watcher remembers about one session between polls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tracked {
    /// The last snapshot.
    pub session: Session,
    /// The highest message id already turned into events.
    pub cursor: i64,
    /// Newest messages, oldest first, at most [`RECENT_MESSAGES`].
    pub recent: Recent,
    /// Timers already fired, keyed by kind, duration and occurrence; only
    /// keys of current occurrences are kept, so this stays small.
    pub fired: BTreeSet<String>,
    /// What the SLA report needs to know about this session.
    #[serde(default)]
    pub sla: SlaState,
}

/// A session's SLA facts, updated as its messages are seen.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SlaState {
    /// When the visitor first wrote.
    pub first_visitor_at: Option<Timestamp>,
    /// Seconds from then to the first bot or agent reply.
    pub first_response_secs: Option<f64>,
    /// Seconds from each human request to its take-over.
    pub human_wait_secs: Vec<f64>,
    /// Seconds a human agent took to answer each visitor message (the
    /// oldest unanswered one) while handling the chat.
    pub agent_response_secs: Vec<f64>,
    /// The oldest visitor message not answered yet.
    pub waiting_since: Option<Timestamp>,
}

impl SlaState {
    /// Updates the facts with one new message; `human` says whether a
    /// human handled the chat when it was written.
    fn observe(&mut self, m: &Message, human: bool) {
        let Some(at) = m.created_at else { return };
        match m.sender_type {
            SenderType::Visitor => {
                self.first_visitor_at.get_or_insert(at);
                self.waiting_since.get_or_insert(at);
            }
            SenderType::Bot | SenderType::Agent => {
                if let (Some(first), None) = (self.first_visitor_at, self.first_response_secs) {
                    if at >= first {
                        self.first_response_secs = Some(secs(at - first));
                    }
                }
                if let Some(since) = self.waiting_since.take() {
                    if human && m.sender_type == SenderType::Agent && at >= since {
                        self.agent_response_secs.push(secs(at - since));
                    }
                }
            }
            SenderType::Other(_) => {}
        }
    }
}

fn secs(d: chrono::Duration) -> f64 {
    d.num_milliseconds().max(0) as f64 / 1000.0
}

impl Tracked {
    /// The newest message's id, time and sender, if any.
    pub fn last_message(&self) -> Option<LastMessage> {
        self.recent.last()
    }
}

/// Whether the cheap list entry says the session changed since `prev`, so
/// that its detail must be read.
pub fn needs_detail(prev: &Session, now: &Session) -> bool {
    prev.last_activity_at != now.last_activity_at
        || prev.handled_by != now.handled_by
        || prev.status != now.status
        || prev.human_requested_at != now.human_requested_at
}

/// Diffs a freshly read session against what we knew. `prev` is `None` for
/// a session never seen; `baseline` marks the very first start, when open
/// sessions are taken as they are and fire nothing.
pub fn diff(
    prev: Option<&Tracked>,
    detail: SessionDetail,
    baseline: bool,
) -> (Tracked, Vec<Event>) {
    let SessionDetail { session, messages } = detail;
    let cursor_before = prev.map_or(0, |p| p.cursor);
    let cursor = messages
        .iter()
        .map(|m| m.id)
        .max()
        .unwrap_or(0)
        .max(cursor_before);
    // Every new message is an event, however many arrived since the last
    // poll; only the newest RECENT_MESSAGES are kept (below).
    let mut recent = messages;
    let mut events = Vec::new();
    if !baseline {
        // Events carry a rank so that, at equal timestamps, the order is
        // the natural one: started, then what happened, then ended.
        let mut ranked: Vec<(Timestamp, u8, Event)> = Vec::new();
        let fallback = session
            .last_activity_at
            .or(session.created_at)
            .unwrap_or_default();
        let ev = |kind, at, message| Event {
            kind,
            session_id: session.session_id.clone(),
            message,
            timer: None,
            waited: None,
            at,
        };
        let old = prev.map(|p| &p.session);
        if old.is_none() {
            let at = session.created_at.unwrap_or(fallback);
            ranked.push((at, 0, ev(EventKind::SessionStarted, at, None)));
        }
        for m in recent.iter().filter(|m| m.id > cursor_before) {
            let kind = match m.sender_type {
                SenderType::Visitor => EventKind::VisitorMessage,
                SenderType::Bot => EventKind::BotMessage,
                SenderType::Agent => EventKind::AgentMessage,
                SenderType::Other(_) => continue,
            };
            let at = m.created_at.unwrap_or(fallback);
            ranked.push((at, 1, ev(kind, at, Some(m.clone()))));
        }
        if let Some(req) = session.human_requested_at {
            if old.and_then(|o| o.human_requested_at) != Some(req) {
                ranked.push((req, 1, ev(EventKind::HumanRequested, req, None)));
            }
        }
        let old_handler = old.map(|o| &o.handled_by);
        if session.handled_by == HandledBy::Human && old_handler != Some(&HandledBy::Human) {
            let at = session.human_took_over_at.unwrap_or(fallback);
            ranked.push((at, 2, ev(EventKind::TakenOver, at, None)));
        }
        if session.handled_by == HandledBy::Ai && old_handler == Some(&HandledBy::Human) {
            ranked.push((fallback, 2, ev(EventKind::Released, fallback, None)));
        }
        if session.status == SessionStatus::Ended
            && old.is_none_or(|o| o.status != SessionStatus::Ended)
        {
            // Always last: nothing a rule does can follow an end.
            ranked.push((
                Timestamp::MAX_UTC,
                9,
                ev(EventKind::SessionEnded, fallback, None),
            ));
        }
        ranked.sort_by_key(|(at, rank, _)| (*at, *rank));
        events = ranked.into_iter().map(|(_, _, e)| e).collect();
    }
    let mut sla = prev.map(|p| p.sla.clone()).unwrap_or_default();
    if !baseline {
        let human = session.handled_by == HandledBy::Human;
        for m in recent.iter().filter(|m| m.id > cursor_before) {
            sla.observe(m, human);
        }
        if let (Some(req), Some(took)) = (session.human_requested_at, session.human_took_over_at) {
            let new_take_over = prev.is_none_or(|p| p.session.human_took_over_at != Some(took));
            if new_take_over && took >= req {
                sla.human_wait_secs.push(secs(took - req));
            }
        }
    }
    if recent.len() > RECENT_MESSAGES {
        recent.drain(..recent.len() - RECENT_MESSAGES);
    }
    let mut tracked = Tracked {
        session,
        cursor,
        recent: Recent::new(&recent),
        fired: prev.map(|p| p.fired.clone()).unwrap_or_default(),
        sla,
    };
    prune_fired(&mut tracked);
    (tracked, events)
}

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
pub fn running_timers(
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

/// Forgets fired keys whose occurrence is over (a newer message, a new
/// request), so the set does not grow with the session's length.
fn prune_fired(t: &mut Tracked) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::parse_ts;

    fn ts(s: &str) -> Timestamp {
        parse_ts(&format!("2026-03-08T{s}Z")).unwrap()
    }

    fn session(id: &str) -> Session {
        Session {
            session_id: id.into(),
            created_at: Some(ts("10:00:00")),
            last_activity_at: Some(ts("10:00:00")),
            ..Session::default()
        }
    }

    fn msg(id: i64, who: SenderType, at: &str, text: &str) -> Message {
        Message {
            id,
            sender_type: who,
            message_text: Some(text.into()),
            message_type: "text".into(),
            media_url: None,
            is_read: false,
            created_at: Some(ts(at)),
        }
    }

    fn kinds(events: &[Event]) -> Vec<&'static str> {
        events.iter().map(|e| e.kind.name()).collect()
    }

    #[test]
    fn baseline_fires_nothing_but_keeps_the_cursor() {
        let d = SessionDetail {
            session: session("a"),
            messages: vec![msg(1, SenderType::Visitor, "10:00:01", "hi")],
        };
        let (t, ev) = diff(None, d, true);
        assert!(ev.is_empty());
        assert_eq!(t.cursor, 1);
    }

    #[test]
    fn a_new_session_fires_started_then_messages_oldest_first() {
        let d = SessionDetail {
            session: session("a"),
            messages: vec![
                msg(2, SenderType::Bot, "10:00:03", "hello"),
                msg(1, SenderType::Visitor, "10:00:01", "hi"),
            ],
        };
        let mut d = d;
        d.messages.sort_by_key(|m| m.id);
        let (_, ev) = diff(None, d, false);
        assert_eq!(
            kinds(&ev),
            ["session_started", "visitor_message", "bot_message"]
        );
    }

    #[test]
    fn only_new_messages_fire_and_state_changes_fire_once() {
        let d1 = SessionDetail {
            session: session("a"),
            messages: vec![msg(1, SenderType::Visitor, "10:00:01", "hi")],
        };
        let (t1, _) = diff(None, d1, false);
        let mut s2 = session("a");
        s2.human_requested_at = Some(ts("10:01:00"));
        s2.handled_by = HandledBy::Pending;
        let d2 = SessionDetail {
            session: s2.clone(),
            messages: vec![
                msg(1, SenderType::Visitor, "10:00:01", "hi"),
                msg(2, SenderType::Visitor, "10:00:59", "human please"),
            ],
        };
        let (t2, ev) = diff(Some(&t1), d2.clone(), false);
        assert_eq!(kinds(&ev), ["visitor_message", "human_requested"]);
        let (t3, ev) = diff(Some(&t2), d2, false);
        assert!(ev.is_empty(), "{ev:?}");
        let mut s4 = s2.clone();
        s4.handled_by = HandledBy::Human;
        s4.human_took_over_at = Some(ts("10:02:00"));
        let (t4, ev) = diff(
            Some(&t3),
            SessionDetail {
                session: s4.clone(),
                messages: t3.recent.to_vec(),
            },
            false,
        );
        assert_eq!(kinds(&ev), ["taken_over"]);
        let mut s5 = s4.clone();
        s5.handled_by = HandledBy::Ai;
        s5.status = SessionStatus::Ended;
        let (_, ev) = diff(
            Some(&t4),
            SessionDetail {
                session: s5,
                messages: t4.recent.to_vec(),
            },
            false,
        );
        assert_eq!(kinds(&ev), ["released", "session_ended"]);
    }

    #[test]
    fn timers_fire_once_per_occurrence() {
        let specs = [
            TimerSpec::wall(EventKind::Idle, Duration::from_secs(300)),
            TimerSpec::wall(EventKind::Unanswered, Duration::from_secs(60)),
        ];
        let d = SessionDetail {
            session: session("a"),
            messages: vec![msg(1, SenderType::Visitor, "10:00:00", "hi")],
        };
        let (mut t, _) = diff(None, d, false);
        assert!(due_timers(&mut t, &specs, ts("10:00:59")).is_empty());
        let ev = due_timers(&mut t, &specs, ts("10:01:00"));
        assert_eq!(kinds(&ev), ["unanswered"]);
        assert_eq!(ev[0].waited, Some(Duration::from_secs(60)));
        assert!(due_timers(&mut t, &specs, ts("10:02:00")).is_empty());
        assert_eq!(kinds(&due_timers(&mut t, &specs, ts("10:06:00"))), ["idle"]);
        assert!(due_timers(&mut t, &specs, ts("11:00:00")).is_empty());
        // A bot answer ends both occurrences: unanswered cannot hold, idle restarts.
        let d = SessionDetail {
            session: session("a"),
            messages: vec![
                msg(1, SenderType::Visitor, "10:00:00", "hi"),
                msg(2, SenderType::Bot, "11:00:00", "hello"),
            ],
        };
        let (mut t, _) = diff(Some(&t), d, false);
        assert!(due_timers(&mut t, &specs, ts("11:04:00")).is_empty());
        assert_eq!(kinds(&due_timers(&mut t, &specs, ts("11:05:00"))), ["idle"]);
        assert_eq!(
            t.fired.len(),
            1,
            "old occurrences are pruned: {:?}",
            t.fired
        );
    }

    #[test]
    fn human_waiting_stops_at_take_over_and_rearms_on_a_new_request() {
        let spec = [TimerSpec::wall(
            EventKind::HumanWaiting,
            Duration::from_secs(120),
        )];
        let mut s = session("a");
        s.human_requested_at = Some(ts("10:00:00"));
        s.handled_by = HandledBy::Pending;
        let (mut t, _) = diff(
            None,
            SessionDetail {
                session: s.clone(),
                messages: vec![],
            },
            true,
        );
        assert_eq!(
            kinds(&due_timers(&mut t, &spec, ts("10:02:00"))),
            ["human_waiting"]
        );
        assert!(due_timers(&mut t, &spec, ts("10:09:00")).is_empty());
        s.handled_by = HandledBy::Human;
        s.human_took_over_at = Some(ts("10:10:00"));
        let (t2, _) = diff(
            Some(&t),
            SessionDetail {
                session: s.clone(),
                messages: vec![],
            },
            false,
        );
        let mut t2 = t2;
        assert!(due_timers(&mut t2, &spec, ts("10:30:00")).is_empty());
        s.handled_by = HandledBy::Pending;
        s.human_requested_at = Some(ts("10:40:00"));
        let (mut t3, ev) = diff(
            Some(&t2),
            SessionDetail {
                session: s,
                messages: vec![],
            },
            false,
        );
        assert_eq!(kinds(&ev), ["human_requested"]);
        assert_eq!(
            kinds(&due_timers(&mut t3, &spec, ts("10:42:00"))),
            ["human_waiting"]
        );
    }

    #[test]
    fn ended_sessions_have_no_timers() {
        let spec = [TimerSpec::wall(EventKind::Idle, Duration::from_secs(1))];
        let mut s = session("a");
        s.status = SessionStatus::Ended;
        let (mut t, _) = diff(
            None,
            SessionDetail {
                session: s,
                messages: vec![],
            },
            true,
        );
        assert!(due_timers(&mut t, &spec, ts("12:00:00")).is_empty());
    }
}
