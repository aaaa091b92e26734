//! Replies that may arrive twice after a takeover, watched until they show.
//!
//! A replica paused after its last deadline check but before its request
//! left can still send once more after another replica took the workspace
//! (README, "Running more than one replica"). Such a send is always one of
//! the replies the new holder found unfinished and settled. So exactly those
//! are watched: each time the chat is read again, a watched text that is in
//! the chat more often than this replica sent or found it is a duplicate. It
//! is logged, counted and written to the audit log, never hidden.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::api::{Message, SenderType, Timestamp};
use crate::tracking::{Event, EventKind};

/// How long a settled reply is watched: far longer than a paused process
/// is likely to sleep, short enough to forget.
const WATCH_FOR: Duration = Duration::from_secs(3600);

/// One watched reply.
struct Watched {
    text: String,
    // Messages with this text from this time on are this reply or repeats.
    since: Timestamp,
    // How many of them this replica sent or found (its own sends of the
    // same text by later rule runs included).
    ours: usize,
    until: Instant,
}

/// The replies watched, by session.
#[derive(Default)]
pub(super) struct Duplicates {
    watched: Mutex<HashMap<String, Vec<Watched>>>,
}

/// A reply found twice.
pub(super) struct Found {
    pub text: String,
    pub copies: usize,
    pub message_ids: Vec<i64>,
}

impl Duplicates {
    /// Watches `text` in `session_id` from `since` (the intent's time, less
    /// a margin): a reply the last holder left unfinished, now settled.
    pub(super) fn watch(&self, session_id: &str, text: &str, since: Timestamp) {
        let mut w = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        w.entry(session_id.to_string()).or_default().push(Watched {
            text: text.to_string(),
            since,
            ours: 1,
            until: Instant::now() + WATCH_FOR,
        });
    }

    /// Counts a reply this replica sent, so its own repeats of a watched
    /// text are not taken for duplicates.
    pub(super) fn sent(&self, session_id: &str, text: &str) {
        let mut w = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = w.get_mut(session_id) {
            for x in list.iter_mut().filter(|x| x.text == text) {
                x.ours += 1;
            }
        }
    }

    /// Checks a chat whose new events include an agent message against its
    /// watched replies; returns those now found more often than sent (each
    /// reported once, then no longer watched).
    pub(super) fn check(
        &self,
        session_id: &str,
        events: &[Event],
        history: &[Message],
    ) -> Vec<Found> {
        if !events.iter().any(|e| e.kind == EventKind::AgentMessage) {
            return Vec::new();
        }
        let mut w = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = w.get_mut(session_id) else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut found = Vec::new();
        list.retain(|x| {
            if x.until <= now {
                return false;
            }
            let copies: Vec<i64> = history
                .iter()
                .filter(|m| {
                    m.sender_type == SenderType::Agent
                        && m.text() == x.text
                        && m.created_at.is_none_or(|t| t >= x.since)
                })
                .map(|m| m.id)
                .collect();
            if copies.len() > x.ours {
                found.push(Found {
                    text: x.text.clone(),
                    copies: copies.len(),
                    message_ids: copies,
                });
                return false;
            }
            true
        });
        if list.is_empty() {
            w.remove(session_id);
        }
        found
    }

    /// Stops watching a chat that ended.
    pub(super) fn forget(&self, session_id: &str) {
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(session_id);
    }
}

impl super::Engine {
    /// Reports a reply found twice: an error line, the duplicate counter,
    /// and an audit entry (action `duplicate`, outcome `detected`).
    pub(super) async fn report_duplicate(&self, session_id: &str, f: Found, now: Timestamp) {
        tracing::error!(session_id, copies = f.copies, message_ids = ?f.message_ids, "duplicate reply: the same reply is in the chat more often than it was sent here; a replica paused past its lease sent it once more after the takeover");
        crate::telemetry::metrics::duplicate_reply(self.api.workspace());
        let last = f.message_ids.last().copied().unwrap_or_default();
        let intent = crate::store::Intent {
            key: format!("duplicate|{session_id}|m{last}"),
            at: now,
            rule: "skyrules".into(),
            session_id: session_id.to_string(),
            event: EventKind::AgentMessage.name().to_string(),
            action: "duplicate".into(),
            text: None,
        };
        let detail = format!(
            "reply sent {} times (messages {:?}), once by a replica paused past its lease: {:?}",
            f.copies, f.message_ids, f.text
        );
        let written =
            super::store_io::write(&self.store, self.api.workspace(), "intent", move |s| {
                s.begin_action(&intent, None)?;
                s.finish_action(&intent.key, "detected", Some(&detail))
            })
            .await;
        if let Err(e) = written {
            tracing::warn!(session_id, error = %e, "cannot record the duplicate in the audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: i64, text: &str, at: Timestamp) -> Message {
        serde_json::from_value(serde_json::json!({
            "id": id,
            "sender_type": "agent",
            "message_text": text,
            "created_at": crate::api::format_ts(&at),
        }))
        .unwrap()
    }

    fn agent_event() -> Event {
        Event {
            kind: EventKind::AgentMessage,
            session_id: "s".into(),
            message: None,
            timer: None,
            waited: None,
            at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_settled_reply_seen_twice_is_a_duplicate_and_our_own_repeats_are_not() {
        let t0 = chrono::Utc::now();
        let d = Duplicates::default();
        d.watch("s", "hello", t0 - chrono::Duration::seconds(1));
        let once = [agent(1, "hello", t0)];
        assert!(d.check("s", &[agent_event()], &once).is_empty());
        // A later rule run of ours sends the same text: not a duplicate.
        d.sent("s", "hello");
        let ours = [agent(1, "hello", t0), agent(2, "hello", t0)];
        assert!(d.check("s", &[agent_event()], &ours).is_empty());
        // A third copy nobody here sent: the paused old holder's.
        let three = [
            agent(1, "hello", t0),
            agent(2, "hello", t0),
            agent(3, "hello", t0),
        ];
        let found = d.check("s", &[agent_event()], &three);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].copies, 3);
        assert_eq!(found[0].message_ids, [1, 2, 3]);
        assert!(
            d.check("s", &[agent_event()], &three).is_empty(),
            "reported once"
        );
    }

    #[test]
    fn only_watched_replies_and_copies_since_the_intent_count() {
        let t0 = chrono::Utc::now();
        let d = Duplicates::default();
        let before = t0 - chrono::Duration::minutes(10);
        let history = [agent(1, "hi", before), agent(2, "hi", t0)];
        assert!(
            d.check("s", &[agent_event()], &history).is_empty(),
            "not watched"
        );
        d.watch("s", "hi", t0 - chrono::Duration::seconds(1));
        assert!(
            d.check("s", &[agent_event()], &history).is_empty(),
            "the older copy is not this reply"
        );
    }
}
