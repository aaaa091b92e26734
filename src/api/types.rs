//! The SkyLight Web Chat data model, as serde types.
//!
//! Decoding is tolerant the way SPEC §1 asks: unknown fields are ignored,
//! documented nullable fields may be null or missing, unknown enum values do
//! not fail a whole page, and timestamps accept any RFC 3339 precision.
//! Encoding is exact: it produces the seed reference's field names and its
//! `2026-03-08T14:22:00.000000Z` timestamp format (the simulator relies on it).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time on the server's clock, as the API writes it.
pub type Timestamp = DateTime<Utc>;

/// Formats a timestamp exactly as SkyLight does (microseconds, `Z`).
pub fn format_ts(ts: &Timestamp) -> String {
    ts.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Parses a timestamp in RFC 3339 (any fraction) or the `YYYY-MM-DD HH:MM:SS`
/// form some Laravel back ends emit. A time outside the years 0000 to 9999
/// (UTC) is `None`: [`format_ts`] would write it as `+12345-…` or `-0001-…`,
/// which reads back as nothing (the state file would lose it).
pub fn parse_ts(s: &str) -> Option<Timestamp> {
    let t = match DateTime::parse_from_rfc3339(s) {
        Ok(t) => t.with_timezone(&Utc),
        Err(_) => chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
            .ok()?
            .and_utc(),
    };
    (0..=9999)
        .contains(&chrono::Datelike::year(&t))
        .then_some(t)
}

/// serde adapter for `Option<Timestamp>` fields: null, missing, empty or
/// unparseable values all decode as `None` rather than failing the record.
pub mod opt_ts {
    use super::*;

    /// Writes the SkyLight format, or null.
    pub fn serialize<S: Serializer>(v: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(t) => s.serialize_str(&format_ts(t)),
            None => s.serialize_none(),
        }
    }

    /// Reads any accepted form; garbage becomes `None`.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Timestamp>, D::Error> {
        let v = Option::<serde_json::Value>::deserialize(d)?;
        Ok(match v {
            Some(serde_json::Value::String(s)) => parse_ts(&s),
            _ => None,
        })
    }
}

/// serde adapter for a required timestamp field.
pub mod ts {
    use super::*;

    /// Writes the SkyLight format.
    pub fn serialize<S: Serializer>(v: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_ts(v))
    }

    /// Reads any accepted form; an unparseable value is an error.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let s = String::deserialize(d)?;
        parse_ts(&s).ok_or_else(|| serde::de::Error::custom(format!("bad timestamp {s:?}")))
    }
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A value this version of skyrules does not know; kept verbatim.
            Other(String),
        }

        impl $name {
            /// The wire spelling.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $text,)+
                    $name::Other(s) => s,
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::convert::Infallible;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ok(match s {
                    $($text => $name::$variant,)+
                    other => $name::Other(other.to_string()),
                })
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = Option::<String>::deserialize(d)?.unwrap_or_default();
                Ok(s.parse().unwrap_or_else(|e| match e {}))
            }
        }
    };
}

string_enum! {
    /// `status` of a session.
    SessionStatus { #[default] Active => "active", Ended => "ended" }
}

string_enum! {
    /// `handled_by` of a session.
    HandledBy { #[default] Ai => "ai", Human => "human", Pending => "pending" }
}

string_enum! {
    /// `sender_type` of a message.
    SenderType { #[default] Visitor => "visitor", Bot => "bot", Agent => "agent" }
}

/// A chat session, as listed (no messages).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Session {
    /// Unique session identifier, e.g. `sess_a1b2c3d4e5f6`.
    pub session_id: String,
    /// `active` or `ended`.
    #[serde(default)]
    pub status: SessionStatus,
    /// `ai`, `human` or `pending`.
    #[serde(default)]
    pub handled_by: HandledBy,
    /// Visitor's name, when the widget asked for it.
    #[serde(default)]
    pub visitor_name: Option<String>,
    /// Visitor's e-mail address.
    #[serde(default)]
    pub visitor_email: Option<String>,
    /// Visitor's phone number.
    #[serde(default)]
    pub visitor_phone: Option<String>,
    /// Visitor's IP address.
    #[serde(default)]
    pub visitor_ip: Option<String>,
    /// Page the widget was opened on.
    #[serde(default)]
    pub visitor_page_url: Option<String>,
    /// Referrer of that page.
    #[serde(default)]
    pub visitor_referrer: Option<String>,
    /// Whether the visitor has sent at least one message.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub has_visitor_messages: bool,
    /// When the visitor asked for a human, if they did.
    #[serde(default, with = "opt_ts")]
    pub human_requested_at: Option<Timestamp>,
    /// When a human agent took control, if one did.
    #[serde(default, with = "opt_ts")]
    pub human_took_over_at: Option<Timestamp>,
    /// Last message or state change.
    #[serde(default, with = "opt_ts")]
    pub last_activity_at: Option<Timestamp>,
    /// When the session was opened.
    #[serde(default, with = "opt_ts")]
    pub created_at: Option<Timestamp>,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Message id; increases within a session.
    #[serde(deserialize_with = "lenient_i64")]
    pub id: i64,
    /// `visitor`, `bot` or `agent`.
    #[serde(default)]
    pub sender_type: SenderType,
    /// The text; null for some media messages.
    #[serde(default)]
    pub message_text: Option<String>,
    /// `text` or a media kind.
    #[serde(
        default = "default_message_type",
        deserialize_with = "string_or_default"
    )]
    pub message_type: MessageType,
    /// Link to the media, for media messages.
    #[serde(default)]
    pub media_url: Option<String>,
    /// Whether the other side has read it.
    #[serde(default, deserialize_with = "lenient_bool")]
    pub is_read: bool,
    /// When it was written.
    #[serde(default, with = "opt_ts")]
    pub created_at: Option<Timestamp>,
}

impl Message {
    /// The text, or an empty string for a text-less message.
    pub fn text(&self) -> &str {
        self.message_text.as_deref().unwrap_or("")
    }
}

fn default_message_type() -> MessageType {
    MessageType::from("text")
}

/// A message's kind, `text` or a media kind. Shared, not copied: 10,000
/// tracked chats hold 20 messages each, nearly all of them `text`.
pub type MessageType = std::borrow::Cow<'static, str>;

const KNOWN_MESSAGE_TYPES: [&str; 6] = ["text", "image", "file", "audio", "video", "document"];

/// The shared spelling of a common kind.
fn known_message_type(s: &str) -> Option<&'static str> {
    KNOWN_MESSAGE_TYPES.iter().find(|k| **k == s).copied()
}

/// The kind as stored: the common ones without an allocation each.
fn message_type_of(s: String) -> MessageType {
    known_message_type(&s).map_or(MessageType::Owned(s), MessageType::Borrowed)
}

/// [`MessageType`] from borrowed text, allocating only for an unusual kind.
pub(crate) fn message_type_from(s: &str) -> MessageType {
    known_message_type(s).map_or_else(|| MessageType::Owned(s.to_string()), MessageType::Borrowed)
}

/// A session with its full message history (`GET /web-chat/sessions/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionDetail {
    /// The session fields.
    #[serde(flatten)]
    pub session: Session,
    /// Every message, oldest first.
    #[serde(default, deserialize_with = "lenient_messages")]
    pub messages: Vec<Message>,
}

/// Aggregates from `GET /web-chat/analytics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Analytics {
    /// Sessions opened in the period.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub total_chats: u64,
    /// Sessions in which the visitor wrote.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub engaged_chats: u64,
    /// Sessions open now.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub active_chats: u64,
    /// Sessions ended in the period.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub completed_chats: u64,
    /// Messages of any sender.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub total_messages: u64,
    /// Messages from visitors.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub visitor_messages: u64,
    /// Messages from the AI bot.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub bot_messages: u64,
    /// Mean messages per session.
    #[serde(default, deserialize_with = "lenient_f64")]
    pub avg_messages_per_chat: f64,
    /// Distinct visitors.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub unique_visitors: u64,
    /// Opaque chart series, passed through.
    #[serde(default)]
    pub chart_data: serde_json::Value,
}

/// Analytics period (`period=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Period {
    /// Since midnight.
    Today,
    /// The last 7 days.
    Week,
    /// The last 30 days (the API's default).
    #[default]
    Month,
    /// The last 365 days.
    Year,
}

impl Period {
    /// The wire spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            Period::Today => "today",
            Period::Week => "week",
            Period::Month => "month",
            Period::Year => "year",
        }
    }
}

/// Filters of `GET /web-chat/sessions`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    /// `active` or `ended`.
    pub status: Option<SessionStatus>,
    /// `ai`, `human` or `pending`.
    pub handled_by: Option<HandledBy>,
    /// Matches visitor name, e-mail or phone.
    pub search: Option<String>,
    /// Page size, 1..=100.
    pub per_page: Option<u32>,
}

fn lenient_bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::Bool(b)) => b,
        Some(serde_json::Value::Number(n)) => n.as_i64().unwrap_or(0) != 0,
        Some(serde_json::Value::String(s)) => matches!(s.as_str(), "1" | "true"),
        _ => false,
    })
}

fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| serde::de::Error::custom("message id is not an integer")),
        serde_json::Value::String(s) => s
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("message id {s:?} is not an integer"))),
        other => Err(serde::de::Error::custom(format!(
            "message id {other} is not an integer"
        ))),
    }
}

fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().map(|f| f.max(0.0) as u64))
            .unwrap_or(0),
        Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0),
        _ => 0,
    })
}

fn lenient_f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::Number(n)) => n.as_f64().unwrap_or(0.0),
        Some(serde_json::Value::String(s)) => s.parse().unwrap_or(0.0),
        _ => 0.0,
    })
}

fn string_or_default<'de, D: Deserializer<'de>>(d: D) -> Result<MessageType, D::Error> {
    Ok(Option::<String>::deserialize(d)?
        .map(message_type_of)
        .unwrap_or_else(default_message_type))
}

/// Messages that fail to decode (no id, say) are dropped one by one instead of
/// failing the whole session: the watcher must keep running on odd data.
fn lenient_messages<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Message>, D::Error> {
    let raw = Option::<Vec<serde_json::Value>>::deserialize(d)?.unwrap_or_default();
    let mut out: Vec<Message> = raw
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect();
    // Oldest first is what the event stream promises; the API says so but
    // does not guarantee it, so make it true here.
    out.sort_by_key(|m| m.id);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_reference_session_and_tolerates_odd_fields() {
        let json = r#"{
          "session_id": "sess_a1b2c3d4e5f6", "status": "active", "handled_by": "ai",
          "visitor_name": "Ahmad", "visitor_phone": null, "has_visitor_messages": true,
          "human_requested_at": null, "last_activity_at": "2026-03-08T14:22:00.000000Z",
          "created_at": "2026-03-08T14:15:00Z", "brand_new_field": {"x": 1}
        }"#;
        let s: Session = serde_json::from_str(json).unwrap();
        assert_eq!(s.session_id, "sess_a1b2c3d4e5f6");
        assert_eq!(s.handled_by, HandledBy::Ai);
        assert_eq!(s.visitor_email, None);
        assert_eq!(
            format_ts(&s.last_activity_at.unwrap()),
            "2026-03-08T14:22:00.000000Z"
        );
        assert!(s.human_took_over_at.is_none());
    }

    #[test]
    fn unknown_enum_values_survive_a_round_trip() {
        let s: Session =
            serde_json::from_str(r#"{"session_id":"a","status":"archived","handled_by":"queue"}"#)
                .unwrap();
        assert_eq!(s.status, SessionStatus::Other("archived".into()));
        let back = serde_json::to_value(&s).unwrap();
        assert_eq!(back["handled_by"], "queue");
    }

    #[test]
    fn a_broken_message_does_not_lose_the_others() {
        let d: SessionDetail = serde_json::from_str(
            r#"{"session_id":"a","messages":[{"id":2,"sender_type":"bot","message_text":"hi"},
                {"no_id":true},{"id":"1","sender_type":"visitor","message_text":null}]}"#,
        )
        .unwrap();
        assert_eq!(d.messages.len(), 2);
        assert_eq!(d.messages[0].id, 1);
        assert_eq!(d.messages[0].text(), "");
        assert_eq!(d.messages[1].message_type, "text");
    }
}
