//! The snapshot diff (SPEC §2), pure: (what we knew, what the API says now)
//! → (what we know now, events). No I/O, no clock reads, so every case can
//! be tested exhaustively. Where a chat's message and state events come
//! from; timers are [`super::timers`].

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::event::{Event, EventKind};
use super::recent::{LastMessage, Recent};
use super::sla_facts::{secs, SlaState};
use super::timers::prune_fired;
use crate::api::{HandledBy, SenderType, Session, SessionDetail, SessionStatus, Timestamp};

/// How many recent messages are kept per session for `ev.messages()` on
/// events that did not re-read the session (timers).
pub const RECENT_MESSAGES: usize = 20;

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

impl Tracked {
    /// The newest message's id, time and sender, if any.
    pub fn last_message(&self) -> Option<LastMessage> {
        self.recent.last()
    }
}

/// Whether the cheap list entry says the session changed since `prev`, so
/// that its detail must be read.
pub(crate) fn needs_detail(prev: &Session, now: &Session) -> bool {
    prev.last_activity_at != now.last_activity_at
        || prev.handled_by != now.handled_by
        || prev.status != now.status
        || prev.human_requested_at != now.human_requested_at
}

/// Diffs a freshly read session against what we knew. `prev` is `None` for
/// a session never seen; `baseline` marks the very first start, when open
/// sessions are taken as they are and fire nothing.
///
/// Long on purpose: the order of a poll's events (started, messages, state changes, ended, with ranks at equal times) is one rule and is kept in one function.
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
