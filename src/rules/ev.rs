//! The `ev` object a handler receives, and the actions it records.
//!
//! Everything a handler can do goes through here, and nothing here does
//! I/O: actions and memory writes are only recorded, and the executor and
//! the state store carry them out after the handler has run to completion.

use std::sync::{Arc, Mutex};

use rhai::{Array, Dynamic, EvalAltResult, ImmutableString, Map, Position};

use super::World;
use crate::api::{format_ts, Message, Session, SessionStatus, Timestamp, MAX_MESSAGE_CHARS};
use crate::tracking::Event;

/// What a rule asked for; carried out in order after its handler returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `ev.take_over()`.
    TakeOver,
    /// `ev.release()`.
    Release,
    /// `ev.reply(text)`, with the template already filled.
    Reply(String),
    /// `ev.end()`.
    End,
    /// `ev.notify(channel, text)`: tell people through a configured channel.
    Notify {
        /// The `[notify.NAME]` channel.
        channel: String,
        /// The text, template filled.
        text: String,
    },
}

impl Action {
    /// The action's name as rules and the audit log spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Action::TakeOver => "take_over",
            Action::Release => "release",
            Action::Reply(_) => "reply",
            Action::End => "end",
            Action::Notify { .. } => "notify",
        }
    }

    /// What a person reads of it: a reply's text, or `channel: text` for a
    /// notification; `None` for the others.
    pub fn text(&self) -> Option<String> {
        match self {
            Action::Reply(t) => Some(t.clone()),
            Action::Notify { channel, text } => Some(format!("{channel}: {text}")),
            _ => None,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An action equals its name (`action == "reply"`), as logs spell it.
impl PartialEq<str> for Action {
    fn eq(&self, name: &str) -> bool {
        self.name() == name
    }
}

impl PartialEq<&str> for Action {
    fn eq(&self, name: &&str) -> bool {
        self.name() == *name
    }
}

/// Per-session, per-rule memory (`once`, `get`, `set`), as JSON values so
/// the state store can keep it across restarts.
pub type Memory = serde_json::Map<String, serde_json::Value>;

/// The event data shared by every rule that handles one event.
#[derive(Debug)]
pub struct EventData {
    /// The event.
    pub event: Event,
    /// `ev.session`, built once per event.
    pub session: Map,
    /// The raw session, for templates.
    pub raw_session: Session,
    /// `ev.message`, or unit.
    pub message: Dynamic,
    /// Recent history for `ev.messages()`.
    pub history: Vec<Message>,
    /// `ev.now`, formatted.
    pub now: ImmutableString,
    /// `ev.now`, for calendar questions.
    pub now_ts: Timestamp,
}

impl EventData {
    /// Prepares the script-facing views of an event.
    pub fn new(event: Event, session: &Session, history: &[Message], now: Timestamp) -> Self {
        let message = event
            .message
            .as_ref()
            .map(|m| Dynamic::from_map(message_map(m)))
            .unwrap_or(Dynamic::UNIT);
        EventData {
            session: session_map(session),
            raw_session: session.clone(),
            message,
            history: history.to_vec(),
            now: format_ts(&now).into(),
            now_ts: now,
            event,
        }
    }
}

/// What one handler call produced.
#[derive(Debug, Default)]
pub(crate) struct Recorded {
    /// Actions, in call order.
    pub actions: Vec<Action>,
    /// The memory after the call.
    pub memory: Memory,
    /// Whether the handler changed the memory.
    pub memory_changed: bool,
    /// Template fields that sessions do not have, for a warning.
    pub unknown_fields: Vec<String>,
}

/// The `ev` value. Cloning shares the recorder, as Rhai clones custom types
/// when passing them around.
#[derive(Clone)]
pub(crate) struct Ev {
    data: Arc<EventData>,
    rule: ImmutableString,
    rec: Arc<Mutex<Recorded>>,
}

impl Ev {
    /// A fresh `ev` for one rule's handler.
    pub fn new(data: Arc<EventData>, rule: &str, memory: Memory) -> Ev {
        Ev {
            data,
            rule: rule.into(),
            rec: Arc::new(Mutex::new(Recorded {
                memory,
                ..Recorded::default()
            })),
        }
    }

    /// Takes what the handler recorded.
    pub fn finish(self) -> Recorded {
        let mut rec = self.rec.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *rec)
    }

    /// Actions recorded so far.
    pub(crate) fn action_count(&self) -> usize {
        self.with(|r| r.actions.len())
    }

    fn with<R>(&self, f: impl FnOnce(&mut Recorded) -> R) -> R {
        let mut rec = self.rec.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut rec)
    }

    fn push(&mut self, a: Action) {
        self.with(|r| r.actions.push(a));
    }

    fn reply(&mut self, text: &str) -> Result<(), Box<EvalAltResult>> {
        let (filled, unknown) = fill_template(text, &self.data.raw_session);
        if filled.trim().is_empty() {
            return Err(runtime_error(
                "reply text is empty after filling the template",
            ));
        }
        let n = filled.chars().count();
        if n > MAX_MESSAGE_CHARS {
            return Err(runtime_error(format!(
                "reply is {n} characters after filling the template; SkyLight accepts at most {MAX_MESSAGE_CHARS}"
            )));
        }
        self.with(|r| {
            r.unknown_fields.extend(unknown);
            r.actions.push(Action::Reply(filled));
        });
        Ok(())
    }

    fn notify(
        &mut self,
        world: &World,
        channel: &str,
        text: &str,
    ) -> Result<(), Box<EvalAltResult>> {
        if !world.channels.iter().any(|c| c == channel) {
            return Err(runtime_error(format!(
                "unknown notify channel {channel:?}; configured: {}",
                if world.channels.is_empty() {
                    "none (add [notify.NAME] to the config)".to_string()
                } else {
                    world.channels.join(", ")
                }
            )));
        }
        let (filled, unknown) = fill_template(text, &self.data.raw_session);
        if filled.trim().is_empty() {
            return Err(runtime_error(
                "notification text is empty after filling the template",
            ));
        }
        self.with(|r| {
            r.unknown_fields.extend(unknown);
            r.actions.push(Action::Notify {
                channel: channel.to_string(),
                text: filled,
            });
        });
        Ok(())
    }

    fn calendar<'w>(
        world: &'w World,
        name: &str,
    ) -> Result<&'w crate::hours::Calendar, Box<EvalAltResult>> {
        world.calendars.get(name).ok_or_else(|| {
            let known = world.calendars.names();
            runtime_error(format!(
                "unknown calendar {name:?}; configured: {}",
                if known.is_empty() {
                    "none (add [hours.NAME] to the config)".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })
    }

    fn once(&mut self, limit: usize, key: &str) -> Result<bool, Box<EvalAltResult>> {
        if self.with(|r| r.memory.contains_key(key)) {
            return Ok(false);
        }
        self.remember(limit, "once", key, serde_json::Value::Bool(true))?;
        Ok(true)
    }

    fn get(&mut self, key: &str) -> Dynamic {
        self.with(|r| {
            r.memory
                .get(key)
                .and_then(|v| rhai::serde::to_dynamic(v).ok())
                .unwrap_or(Dynamic::UNIT)
        })
    }

    fn set(&mut self, limit: usize, key: &str, value: Dynamic) -> Result<(), Box<EvalAltResult>> {
        let v: serde_json::Value = rhai::serde::from_dynamic(&value).map_err(|_| {
            runtime_error(format!(
                "ev.set({key:?}, …): a {} cannot be remembered; use strings, numbers, booleans, arrays or maps",
                value.type_name()
            ))
        })?;
        self.remember(limit, "set", key, v)
    }

    /// Stores `key = v` in this rule's memory for the session unless the
    /// memory would then serialize to more than `limit` bytes: one rule
    /// must not grow the state without end (64 KiB by default).
    fn remember(
        &mut self,
        limit: usize,
        call: &str,
        key: &str,
        v: serde_json::Value,
    ) -> Result<(), Box<EvalAltResult>> {
        self.with(|r| {
            let old = r.memory.insert(key.to_string(), v);
            let size = serialized_len(&r.memory);
            if size <= limit {
                r.memory_changed = true;
                return Ok(());
            }
            // Left as it was: the handler fails, and its writes are dropped.
            match old {
                Some(o) => r.memory.insert(key.to_string(), o),
                None => r.memory.remove(key),
            };
            let shown: String = key.chars().take(40).collect();
            let more = if shown.len() < key.len() { "…" } else { "" };
            Err(runtime_error(format!(
                "ev.{call}({shown:?}{more}) would make rule {:?}'s memory for session {} {size} bytes, over the limit of {limit} bytes (`engine.max_rule_memory`); remember less, or raise the limit",
                self.rule.as_str(),
                self.data.event.session_id
            )))
        })
    }
}

/// The length of `memory` as JSON, counted without building the text.
fn serialized_len(memory: &Memory) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing JSON values to a counter cannot fail.
    let _ = serde_json::to_writer(&mut c, memory);
    c.0
}

fn runtime_error(msg: impl Into<String>) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(msg.into()),
        Position::NONE,
    ))
}

/// Registers one function with its parameter names and doc comment, so
/// `skyrules defs` can give editors complete definitions.
macro_rules! reg {
    ($engine:expr, $reg:expr, [$($param:expr),*], $doc:expr, $f:expr) => {
        $reg.with_params_info([$($param),*])
            .with_comments([$doc])
            .register_into_engine($engine, $f);
    };
}

/// Registers the `Ev` type, its fields and its methods.
///
/// Long on purpose: one flat table of every function rules can call, each with its signature and documentation for `skyrules defs`; split up, the sandbox's whole surface could no longer be read in one place.
pub(crate) fn register(engine: &mut rhai::Engine, world: std::sync::Arc<World>) {
    use rhai::FuncRegistration as F;
    let limit = world.max_rule_memory;
    engine.register_type_with_name::<Ev>("Event");
    let w = world.clone();
    reg!(engine, F::new("notify"), ["ev: Event", "channel: string", "text: string", "()"],
        "/// Sends `text` ({{field}} filled) to the `[notify.NAME]` channel: a Slack webhook, a JSON\n/// webhook or PagerDuty. At most once per session and channel within the channel's dedupe window.",
        move |ev: &mut Ev, channel: ImmutableString, text: ImmutableString| ev.notify(&w, &channel, &text));
    let w = world.clone();
    reg!(
        engine,
        F::new("in_hours"),
        ["ev: Event", "calendar: string", "bool"],
        "/// Whether the `[hours.NAME]` calendar is open now.",
        move |ev: &mut Ev, name: ImmutableString| -> Result<bool, Box<EvalAltResult>> {
            Ok(Ev::calendar(&w, &name)?.is_open(ev.data.now_ts))
        }
    );
    let w = world;
    reg!(
        engine,
        F::new("next_open"),
        ["ev: Event", "calendar: string", "string"],
        "/// When the `[hours.NAME]` calendar opens next, e.g. \"Monday 09:00\" (\"now\" if open).",
        move |ev: &mut Ev, name: ImmutableString| -> Result<String, Box<EvalAltResult>> {
            Ok(Ev::calendar(&w, &name)?
                .describe_next_open(ev.data.now_ts)
                .unwrap_or_else(|| "never".into()))
        }
    );
    reg!(
        engine,
        F::new_getter("kind"),
        ["ev: Event", "string"],
        "/// The event: \"visitor_message\", \"idle\", …",
        |ev: &mut Ev| -> ImmutableString { ev.data.event.kind.name().into() }
    );
    reg!(
        engine,
        F::new_getter("rule"),
        ["ev: Event", "string"],
        "/// The id of the rule handling the event (its file name).",
        |ev: &mut Ev| ev.rule.clone()
    );
    reg!(
        engine,
        F::new_getter("now"),
        ["ev: Event", "string"],
        "/// The server's time when the event was processed (RFC 3339).",
        |ev: &mut Ev| ev.data.now.clone()
    );
    reg!(engine, F::new_getter("session"), ["ev: Event", "map"],
        "/// Every session field of the API: session_id, status, handled_by, visitor_name,\n/// visitor_email, visitor_phone, visitor_ip, visitor_page_url, visitor_referrer,\n/// has_visitor_messages, human_requested_at, human_took_over_at, last_activity_at,\n/// created_at. Missing values are ().",
        |ev: &mut Ev| ev.data.session.clone());
    reg!(
        engine,
        F::new_getter("message"),
        ["ev: Event", "?"],
        "/// For message events: #{ id, text, sender_type, type, media_url, created_at }; else ().",
        |ev: &mut Ev| ev.data.message.clone()
    );
    reg!(
        engine,
        F::new_getter("waited"),
        ["ev: Event", "?"],
        "/// For timer events: how long the condition has held, in seconds; else ().",
        |ev: &mut Ev| -> Dynamic {
            ev.data
                .event
                .waited
                .map(|w| Dynamic::from_int(w.as_secs() as i64))
                .unwrap_or(Dynamic::UNIT)
        }
    );
    reg!(
        engine,
        F::new("messages"),
        ["ev: Event", "array"],
        "/// The session's recent history, oldest first, as message maps.",
        |ev: &mut Ev| -> Array {
            ev.data
                .history
                .iter()
                .map(|m| Dynamic::from_map(message_map(m)))
                .collect()
        }
    );
    reg!(
        engine,
        F::new("take_over"),
        ["ev: Event", "()"],
        "/// A human takes the chat over from the AI (after the handler returns).",
        |ev: &mut Ev| ev.push(Action::TakeOver)
    );
    reg!(
        engine,
        F::new("release"),
        ["ev: Event", "()"],
        "/// The chat goes back to the AI (after the handler returns).",
        |ev: &mut Ev| ev.push(Action::Release)
    );
    reg!(
        engine,
        F::new("end"),
        ["ev: Event", "()"],
        "/// Ends the chat (after the handler returns).",
        |ev: &mut Ev| ev.push(Action::End)
    );
    reg!(engine, F::new("reply"), ["ev: Event", "text: string", "()"],
        "/// Sends an agent message; {{field}} is filled from the session ({{visitor_name}} is\n/// \"there\" when unknown). Fails the handler if the result is empty or over 4096 characters.",
        |ev: &mut Ev, text: ImmutableString| ev.reply(&text));
    reg!(
        engine,
        F::new("once"),
        ["ev: Event", "key: string", "bool"],
        "/// True the first time it is called with `key` for this session and rule, false after.",
        move |ev: &mut Ev, key: ImmutableString| ev.once(limit, &key)
    );
    reg!(
        engine,
        F::new("get"),
        ["ev: Event", "key: string", "?"],
        "/// The value remembered under `key` for this session and rule, or ().",
        |ev: &mut Ev, key: ImmutableString| ev.get(&key)
    );
    reg!(
        engine,
        F::new("set"),
        ["ev: Event", "key: string", "value: ?", "()"],
        "/// Remembers `value` under `key` for this session and rule, across restarts.",
        move |ev: &mut Ev, key: ImmutableString, v: Dynamic| ev.set(limit, &key, v)
    );
    reg!(
        engine,
        F::new("to_string"),
        ["ev: Event", "string"],
        "/// A short description of the event.",
        |ev: &mut Ev| -> String {
            format!(
                "Event({} of {} for rule {})",
                ev.data.event.kind, ev.data.event.session_id, ev.rule
            )
        }
    );
}

/// `ev.session`: every session field of the API, nulls as `()`.
fn session_map(s: &Session) -> Map {
    match rhai::serde::to_dynamic(s).map(|d| d.try_cast::<Map>()) {
        Ok(Some(m)) => m,
        _ => Map::new(),
    }
}

/// `ev.message`: `id`, `text`, `sender_type`, `type`, `media_url`,
/// `created_at` (SPEC §3 names, not the API's).
fn message_map(m: &Message) -> Map {
    let mut map = Map::new();
    map.insert("id".into(), Dynamic::from_int(m.id));
    map.insert("text".into(), m.text().into());
    map.insert("sender_type".into(), m.sender_type.as_str().into());
    map.insert("type".into(), m.message_type.as_ref().into());
    map.insert(
        "media_url".into(),
        m.media_url
            .clone()
            .map(Dynamic::from)
            .unwrap_or(Dynamic::UNIT),
    );
    map.insert(
        "created_at".into(),
        m.created_at
            .as_ref()
            .map(|t| Dynamic::from(format_ts(t)))
            .unwrap_or(Dynamic::UNIT),
    );
    map
}

/// Fills `{{field}}` from the session; `{{visitor_name}}` falls back to
/// "there". Returns the text and any field names sessions do not have
/// (filled with nothing, so a customer never sees raw braces).
pub fn fill_template(text: &str, s: &Session) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len());
    let mut unknown = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else {
            break;
        };
        out.push_str(&rest[..start]);
        let name = rest[start + 2..start + 2 + len].trim();
        match field_text(s, name) {
            Some(v) => out.push_str(&v),
            None => unknown.push(name.to_string()),
        }
        rest = &rest[start + 2 + len + 2..];
    }
    out.push_str(rest);
    (out, unknown)
}

/// The text of a session field for templates; `None` for an unknown name.
pub fn field_text(s: &Session, name: &str) -> Option<String> {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let ts = |v: &Option<Timestamp>| v.as_ref().map(format_ts).unwrap_or_default();
    Some(match name {
        "visitor_name" => s
            .visitor_name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| "there".into()),
        "session_id" => s.session_id.clone(),
        "status" => s.status.to_string(),
        "handled_by" => s.handled_by.to_string(),
        "visitor_email" => opt(&s.visitor_email),
        "visitor_phone" => opt(&s.visitor_phone),
        "visitor_ip" => opt(&s.visitor_ip),
        "visitor_page_url" => opt(&s.visitor_page_url),
        "visitor_referrer" => opt(&s.visitor_referrer),
        "has_visitor_messages" => s.has_visitor_messages.to_string(),
        "human_requested_at" => ts(&s.human_requested_at),
        "human_took_over_at" => ts(&s.human_took_over_at),
        "last_activity_at" => ts(&s.last_activity_at),
        "created_at" => ts(&s.created_at),
        _ => return None,
    })
}

/// Whether the session can still receive actions.
pub fn is_open(s: &Session) -> bool {
    s.status != SessionStatus::Ended
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_fields_and_fall_back_for_the_name() {
        let mut s = Session {
            session_id: "sess_1".into(),
            ..Session::default()
        };
        let (t, u) = fill_template("Hi {{visitor_name}}, ref {{ session_id }}.", &s);
        assert_eq!(t, "Hi there, ref sess_1.");
        assert!(u.is_empty());
        s.visitor_name = Some("Ahmad".into());
        let (t, u) = fill_template("Hi {{visitor_name}}{{nope}}! {{unclosed", &s);
        assert_eq!(t, "Hi Ahmad! {{unclosed");
        assert_eq!(u, ["nope"]);
    }
}
