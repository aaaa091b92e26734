//! The diff and the timers, case by case.

use std::time::Duration;

use super::*;
use crate::api::{
    parse_ts, HandledBy, Message, SenderType, Session, SessionDetail, SessionStatus, Timestamp,
};

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
