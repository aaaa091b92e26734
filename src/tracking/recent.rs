//! A tracked session's newest messages, packed.
//!
//! The watcher keeps up to [`super::RECENT_MESSAGES`] messages for every
//! live chat, 10,000 chats at a time, for as long as each chat lives. As
//! plain `Message`s that is a vector plus one or two strings per message:
//! some twenty small allocations per chat, made at the moment the chat
//! changes, amid the poll's short-lived buffers. Under churn (chats ending
//! and new ones starting) those long-lived crumbs end up spread over ever
//! more heap pages, and the process grows although the live data does not.
//! Packed, a chat's history is two allocations: fixed-size heads and one
//! string holding every text. Messages are unpacked only when a rule needs
//! them, which is only for a chat that has events.
//!
//! Stored and serialized as the plain list of messages, so the state file
//! does not change.

use serde::{Deserialize, Serialize};

use crate::api::{Message, SenderType, Timestamp};

/// A session's newest messages, oldest first, packed into two allocations.
#[derive(Clone, Default, PartialEq)]
pub struct Recent {
    heads: Box<[Head]>,
    strings: Box<str>,
}

/// Where one string field sits in [`Recent::strings`]; `start == NONE`
/// stands for a field that was absent.
#[derive(Clone, Copy, PartialEq)]
struct Span {
    start: u32,
    len: u32,
}

const NONE: u32 = u32::MAX;

/// One message without its strings.
#[derive(Clone, Copy, PartialEq)]
struct Head {
    id: i64,
    created_at: Option<Timestamp>,
    is_read: bool,
    sender: Span,
    text: Span,
    kind: Span,
    media_url: Span,
}

/// What the timers need of the newest message, without unpacking it.
#[derive(Debug, Clone, PartialEq)]
pub struct LastMessage {
    /// Its id.
    pub id: i64,
    /// When it was written.
    pub created_at: Option<Timestamp>,
    /// Who wrote it.
    pub sender_type: SenderType,
}

impl Recent {
    /// Packs `messages` (oldest first).
    pub fn new(messages: &[Message]) -> Recent {
        let mut strings = String::with_capacity(
            messages
                .iter()
                .map(|m| {
                    m.sender_type.as_str().len()
                        + m.message_text.as_deref().map_or(0, str::len)
                        + m.message_type.len()
                        + m.media_url.as_deref().map_or(0, str::len)
                })
                .sum(),
        );
        let mut put = |s: Option<&str>| match s {
            // A chat history past 4 GiB is not a chat; it loses the field
            // rather than the process.
            Some(s) if strings.len() + s.len() < NONE as usize => {
                let start = strings.len() as u32;
                strings.push_str(s);
                Span {
                    start,
                    len: s.len() as u32,
                }
            }
            _ => Span {
                start: NONE,
                len: 0,
            },
        };
        let heads = messages
            .iter()
            .map(|m| Head {
                id: m.id,
                created_at: m.created_at,
                is_read: m.is_read,
                sender: put(Some(m.sender_type.as_str())),
                text: put(m.message_text.as_deref()),
                kind: put(Some(&m.message_type)),
                media_url: put(m.media_url.as_deref()),
            })
            .collect();
        Recent {
            heads,
            strings: strings.into_boxed_str(),
        }
    }

    /// How many messages are kept.
    pub fn len(&self) -> usize {
        self.heads.len()
    }

    /// Whether no message is kept.
    pub fn is_empty(&self) -> bool {
        self.heads.is_empty()
    }

    /// The messages, unpacked, oldest first.
    pub fn to_vec(&self) -> Vec<Message> {
        self.heads.iter().map(|h| self.unpack(h)).collect()
    }

    /// The newest message's id, time and sender, without unpacking its text.
    pub fn last(&self) -> Option<LastMessage> {
        self.heads.last().map(|h| LastMessage {
            id: h.id,
            created_at: h.created_at,
            sender_type: self.sender(h),
        })
    }

    fn get(&self, span: Span) -> Option<&str> {
        if span.start == NONE {
            return None;
        }
        let start = span.start as usize;
        self.strings.get(start..start + span.len as usize)
    }

    fn sender(&self, h: &Head) -> SenderType {
        let s = self.get(h.sender).unwrap_or_default();
        s.parse().unwrap_or_else(|e| match e {})
    }

    fn unpack(&self, h: &Head) -> Message {
        Message {
            id: h.id,
            sender_type: self.sender(h),
            message_text: self.get(h.text).map(str::to_string),
            message_type: crate::api::message_type_from(self.get(h.kind).unwrap_or("text")),
            media_url: self.get(h.media_url).map(str::to_string),
            is_read: h.is_read,
            created_at: h.created_at,
        }
    }
}

impl From<Vec<Message>> for Recent {
    fn from(messages: Vec<Message>) -> Recent {
        Recent::new(&messages)
    }
}

impl From<Recent> for Vec<Message> {
    fn from(r: Recent) -> Vec<Message> {
        r.to_vec()
    }
}

impl std::fmt::Debug for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.to_vec()).finish()
    }
}

impl Serialize for Recent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_vec().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Recent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Recent, D::Error> {
        Ok(Recent::from(Vec::<Message>::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: i64, sender: &str, text: Option<&str>, kind: &str, url: Option<&str>) -> Message {
        Message {
            id,
            sender_type: sender.parse().unwrap_or_else(|e| match e {}),
            message_text: text.map(str::to_string),
            message_type: crate::api::message_type_from(kind),
            media_url: url.map(str::to_string),
            is_read: id % 2 == 0,
            created_at: chrono::DateTime::from_timestamp(1_700_000_000 + id, 0),
        }
    }

    #[test]
    fn unpacks_exactly_what_was_packed() {
        let messages = vec![
            msg(1, "visitor", Some("hello, I need help"), "text", None),
            msg(2, "bot", Some(""), "text", None),
            msg(3, "agent", None, "image", Some("https://cdn.example/p.png")),
            msg(4, "system", Some("naïve ✓ unicode"), "sticker", None),
        ];
        let r = Recent::new(&messages);
        assert_eq!(r.len(), 4);
        assert_eq!(r.to_vec(), messages);
        // An absent text stays absent; an empty one stays empty.
        assert_eq!(r.to_vec()[1].message_text.as_deref(), Some(""));
        assert_eq!(r.to_vec()[2].message_text, None);
        assert_eq!(
            r.last(),
            Some(LastMessage {
                id: 4,
                created_at: messages[3].created_at,
                sender_type: SenderType::Other("system".into()),
            })
        );
    }

    #[test]
    fn serializes_as_the_plain_message_list() {
        let messages = vec![
            msg(7, "visitor", Some("hi"), "text", None),
            msg(8, "bot", Some("hello"), "text", None),
        ];
        let packed = serde_json::to_string(&Recent::new(&messages)).unwrap();
        assert_eq!(packed, serde_json::to_string(&messages).unwrap());
        let back: Recent = serde_json::from_str(&packed).unwrap();
        assert_eq!(back.to_vec(), messages);
    }

    #[test]
    fn empty_history() {
        let r = Recent::default();
        assert!(r.is_empty());
        assert_eq!(r.last(), None);
        assert_eq!(r.to_vec(), Vec::<Message>::new());
    }
}
