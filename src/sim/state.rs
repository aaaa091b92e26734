//! The simulator's in-memory state: every session and its messages, the
//! simulated clock, the queue of scheduled happenings (the AI bot's pending
//! replies, traffic arrivals and visitors' next steps), the fault rules and
//! the request log. Pure and synchronous: the server keeps it behind a
//! `std::sync::Mutex`, locks it for one operation at a time and never holds
//! the lock across an `.await`. Both the public API routes and the `/_sim`
//! control routes (and `SimHandle`'s in-process helpers) call the methods
//! here, so each behaviour has exactly one implementation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use chrono::{Days, NaiveTime, SubsecRound, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

use super::bot;
use super::faults::{FaultQueue, RequestLog};
use super::traffic::{Step, Traffic, MAX_ACTIVE_GENERATED};
use super::SimConfig;
use crate::api::types::{
    parse_ts, Analytics, HandledBy, Message, Period, SenderType, Session, SessionDetail,
    SessionStatus, Timestamp,
};

/// Longest message text the API accepts, in characters.
pub(crate) const MAX_MESSAGE_CHARS: usize = 4096;
/// Sessions kept before the oldest ended ones are forgotten.
const MAX_SESSIONS: usize = 10_000;
/// Largest single clock advance accepted, in seconds (ten years).
const MAX_ADVANCE_SECS: f64 = 10.0 * 365.0 * 86_400.0;
/// Longest bot delay honoured (longer ones are clamped to it).
const MAX_BOT_DELAY: TimeDelta = TimeDelta::days(365);

const ENDED_SESSION: &str = "Session has ended.";
const ENDED_SEND: &str = "You cannot send messages to ended sessions.";

/// Why a simulator operation was refused; maps onto an HTTP status and body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    /// No session with that id (404).
    #[error("Session not found.")]
    NotFound,
    /// The session has ended (422 with `success:false`).
    #[error("{0}")]
    Ended(&'static str),
    /// A field failed validation (422, Laravel style with `errors`).
    #[error("{message}")]
    Invalid {
        /// The offending field.
        field: String,
        /// Laravel-style message.
        message: String,
    },
    /// The session id is taken (409).
    #[error("{0}")]
    Conflict(String),
    /// The request body is unusable (400).
    #[error("{0}")]
    BadRequest(String),
}

impl SimError {
    /// A validation failure of `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        SimError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The HTTP status this error is served with.
    pub fn status(&self) -> u16 {
        match self {
            SimError::NotFound => 404,
            SimError::Ended(_) | SimError::Invalid { .. } => 422,
            SimError::Conflict(_) => 409,
            SimError::BadRequest(_) => 400,
        }
    }

    /// The JSON body this error is served with.
    pub fn body(&self) -> Value {
        match self {
            SimError::Invalid { field, message } => {
                json!({"message": message, "errors": {field.as_str(): [message]}})
            }
            other => json!({"success": false, "message": other.to_string()}),
        }
    }
}

/// The simulated clock: real time scaled by `speed`, plus manual advances.
#[derive(Debug)]
pub(crate) struct Clock {
    start: Timestamp,
    real_start: Instant,
    speed: f64,
    offset: TimeDelta,
}

impl Clock {
    /// A clock starting at the real time now, running `speed` simulated
    /// seconds per real second (0 freezes it; negative or non-finite values
    /// mean 1; at most a million).
    pub fn new(speed: f64) -> Self {
        let speed = if speed.is_finite() && speed >= 0.0 {
            speed.min(1e6)
        } else {
            1.0
        };
        Clock {
            start: Utc::now().trunc_subsecs(6),
            real_start: Instant::now(),
            speed,
            offset: TimeDelta::zero(),
        }
    }

    /// The simulated time now, to the microsecond.
    pub fn now(&self) -> Timestamp {
        let scaled = self.real_start.elapsed().as_secs_f64() * self.speed;
        let run = TimeDelta::microseconds((scaled * 1e6) as i64);
        self.start
            .checked_add_signed(run)
            .and_then(|t| t.checked_add_signed(self.offset))
            .unwrap_or(self.start)
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&mut self, by: TimeDelta) {
        if let Some(o) = self.offset.checked_add(&by) {
            self.offset = o;
        }
    }
}

/// Filters of the session list.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListFilter {
    /// Only sessions with this status.
    pub status: Option<SessionStatus>,
    /// Only sessions handled by this party.
    pub handled_by: Option<HandledBy>,
    /// Case-insensitive substring of visitor name, e-mail or phone.
    pub search: Option<String>,
}

/// The ids one list filter matched, valid while `generation` holds.
#[derive(Debug)]
struct ListCache {
    generation: u64,
    status: Option<SessionStatus>,
    handled_by: Option<HandledBy>,
    needle: Option<String>,
    ids: Vec<String>,
}

/// One page of the session list.
#[derive(Debug, Clone)]
pub struct Page {
    /// The sessions on this page, newest first.
    pub items: Vec<Session>,
    /// How many sessions match the filter across all pages.
    pub total: usize,
}

#[derive(Debug, Clone)]
struct SimSession {
    session: Session,
    messages: Vec<Message>,
    generated: bool,
}

impl SimSession {
    fn detail(&self) -> SessionDetail {
        SessionDetail {
            session: self.session.clone(),
            messages: self.messages.clone(),
        }
    }

    fn is_active(&self) -> bool {
        self.session.status == SessionStatus::Active
    }

    /// Appends a message at `at` and updates the session's activity fields.
    fn push(&mut self, sender: SenderType, text: String, at: Timestamp) -> Message {
        let id = self.messages.last().map_or(1, |m| m.id + 1);
        let from_visitor = sender == SenderType::Visitor;
        // Writing answers the other side: what they wrote has been read.
        for m in &mut self.messages {
            if (m.sender_type == SenderType::Visitor) != from_visitor {
                m.is_read = true;
            }
        }
        let message = Message {
            id,
            sender_type: sender,
            message_text: Some(text),
            message_type: "text".into(),
            media_url: None,
            is_read: false,
            created_at: Some(at),
        };
        self.messages.push(message.clone());
        self.touch(at);
        if from_visitor {
            self.session.has_visitor_messages = true;
        }
        message
    }

    fn touch(&mut self, at: Timestamp) {
        let last = self.session.last_activity_at.map_or(at, |t| t.max(at));
        self.session.last_activity_at = Some(last);
    }
}

#[derive(Debug, Clone)]
enum Event {
    BotReply {
        session_id: String,
        text: String,
        handoff: bool,
    },
    Arrival,
    Visitor {
        session_id: String,
        step: Step,
    },
}

/// Everything the simulator knows.
#[derive(Debug)]
pub(crate) struct SimState {
    clock: Clock,
    // Sessions newest first (the list's order), rebuilt only when sessions
    // come or go: sorting every page request would make a 10,000-session
    // list cost more in the simulator than in the engine it measures.
    order: Vec<String>,
    order_dirty: bool,
    // Bumped by every write to a session. A list walk asks for page after
    // page of the same filter; the filtered ids are kept while nothing
    // changed so that a page costs its hundred entries, not the whole list.
    generation: u64,
    list_cache: Option<ListCache>,
    // The last time a write was stamped with: writes get strictly increasing
    // times, as on a real server, so that even on a frozen clock every
    // change moves `last_activity_at` and a poller sees it.
    last_write: Option<Timestamp>,
    bot_delay: Option<TimeDelta>,
    bot_rng: StdRng,
    id_rng: StdRng,
    sessions: HashMap<String, SimSession>,
    events: BTreeMap<(Timestamp, u64), Event>,
    seq: u64,
    traffic: Option<Traffic>,
    active_generated: usize,
    /// Installed fault rules.
    pub faults: FaultQueue,
    /// Served `/api/v1` requests.
    pub requests: RequestLog,
}

impl SimState {
    /// An empty world configured by `config`, its clock starting now.
    pub fn new(config: &SimConfig) -> Self {
        let mut world = SimState {
            clock: Clock::new(config.clock_speed),
            order: Vec::new(),
            order_dirty: false,
            generation: 0,
            list_cache: None,
            last_write: None,
            bot_delay: config
                .bot_delay
                .map(|d| TimeDelta::from_std(d).map_or(MAX_BOT_DELAY, |d| d.min(MAX_BOT_DELAY))),
            bot_rng: StdRng::seed_from_u64(config.seed ^ 0x0b07_b07b_07b0_7b07),
            id_rng: StdRng::seed_from_u64(config.seed ^ 0x1d1d_1d1d_1d1d_1d1d),
            sessions: HashMap::new(),
            events: BTreeMap::new(),
            seq: 0,
            traffic: config
                .traffic
                .as_ref()
                .map(|t| Traffic::new(t, config.seed)),
            active_generated: 0,
            faults: FaultQueue::default(),
            requests: RequestLog::default(),
        };
        let now = world.clock.now();
        world.schedule_arrival(now);
        world
    }

    /// The simulated time now (does not deliver anything).
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Delivers everything due by now (bot replies, traffic) and returns now.
    pub fn sync(&mut self) -> Timestamp {
        let now = self.clock.now();
        self.run_due(now);
        now
    }

    /// Like [`SimState::sync`], but the time returned is strictly after the
    /// one the previous write got: for stamping writes.
    fn stamp(&mut self) -> Timestamp {
        let now = self.sync();
        let t = match self.last_write {
            Some(last) if now <= last => last + TimeDelta::microseconds(1),
            _ => now,
        };
        self.last_write = Some(t);
        t
    }

    /// Moves the clock to `t` (backwards too, for replaying history from its
    /// start) and delivers what became due.
    pub(crate) fn set_time(&mut self, t: Timestamp) -> Timestamp {
        let by = t - self.clock.now();
        self.clock.advance(by);
        self.last_write = None;
        self.sync()
    }

    /// Advances the simulated clock by `secs` seconds, delivers what became
    /// due, and returns the new time.
    pub(crate) fn advance_secs(&mut self, secs: f64) -> Result<Timestamp, SimError> {
        if !secs.is_finite() || secs < 0.0 {
            return Err(SimError::invalid(
                "seconds",
                "The seconds field must be a non-negative number.",
            ));
        }
        if secs > MAX_ADVANCE_SECS {
            return Err(SimError::invalid(
                "seconds",
                format!("The seconds field must not be greater than {MAX_ADVANCE_SECS}."),
            ));
        }
        self.sync();
        self.clock
            .advance(TimeDelta::microseconds((secs * 1e6).round() as i64));
        Ok(self.sync())
    }

    fn schedule(&mut self, at: Timestamp, event: Event) {
        self.seq += 1;
        self.events.insert((at, self.seq), event);
    }

    fn schedule_arrival(&mut self, after: Timestamp) {
        let gap = self.traffic.as_mut().and_then(Traffic::next_gap);
        if let Some(at) = gap.and_then(|g| after.checked_add_signed(g)) {
            self.schedule(at, Event::Arrival);
        }
    }

    /// Applies every scheduled event due by `now`, oldest first, each at its
    /// own due time.
    fn run_due(&mut self, now: Timestamp) {
        while let Some(entry) = self.events.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((at, _), event) = entry.remove_entry();
            self.apply(at, event);
        }
    }

    fn apply(&mut self, at: Timestamp, event: Event) {
        match event {
            Event::BotReply {
                session_id,
                text,
                handoff,
            } => {
                let Some(s) = self.session_mut(&session_id) else {
                    return;
                };
                if !s.is_active() || s.session.handled_by != HandledBy::Ai {
                    return;
                }
                s.push(SenderType::Bot, text, at);
                if handoff {
                    s.session.human_requested_at = Some(at);
                    s.session.handled_by = HandledBy::Pending;
                }
            }
            Event::Arrival => self.arrive(at),
            Event::Visitor { session_id, step } => {
                if !self
                    .sessions
                    .get(&session_id)
                    .is_some_and(|s| s.is_active())
                {
                    return;
                }
                match step {
                    Step::Say(text) => {
                        self.visitor_says(&session_id, text, at);
                    }
                    Step::RequestHuman => self.request_human_at(&session_id, at),
                    Step::Leave => self.end_at(&session_id, at),
                }
            }
        }
    }

    /// A traffic visitor arrives at `at` (unless too many are already open).
    fn arrive(&mut self, at: Timestamp) {
        self.schedule_arrival(at);
        if self.active_generated >= MAX_ACTIVE_GENERATED {
            return;
        }
        let Some(traffic) = self.traffic.as_mut() else {
            return;
        };
        let visitor = traffic.visitor(at);
        let id = visitor.session.session_id.clone();
        if self.sessions.contains_key(&id) {
            return;
        }
        self.order_dirty = true;
        self.generation += 1;
        self.sessions.insert(
            id.clone(),
            SimSession {
                session: visitor.session,
                messages: Vec::new(),
                generated: true,
            },
        );
        self.active_generated += 1;
        for (offset, step) in visitor.steps {
            if let Some(when) = at.checked_add_signed(offset) {
                self.schedule(
                    when,
                    Event::Visitor {
                        session_id: id.clone(),
                        step,
                    },
                );
            }
        }
        self.prune();
    }

    /// Forgets the oldest ended sessions once there are too many.
    fn prune(&mut self) {
        if self.sessions.len() <= MAX_SESSIONS {
            return;
        }
        let mut ended: Vec<(Option<Timestamp>, String)> = self
            .sessions
            .values()
            .filter(|s| !s.is_active())
            .map(|s| (s.session.created_at, s.session.session_id.clone()))
            .collect();
        ended.sort();
        let excess = self.sessions.len() - MAX_SESSIONS * 9 / 10;
        for (_, id) in ended.into_iter().take(excess) {
            self.sessions.remove(&id);
            self.order_dirty = true;
            self.generation += 1;
        }
    }

    /// The visitor of `id` writes `text` at `at`; schedules the bot's answer.
    fn visitor_says(&mut self, id: &str, text: String, at: Timestamp) -> Option<Message> {
        let s = self.session_mut(id)?;
        let ai = s.session.handled_by == HandledBy::Ai;
        let message = s.push(SenderType::Visitor, text, at);
        if let (true, Some(delay)) = (ai, self.bot_delay) {
            let (reply, handoff) = bot::reply(&mut self.bot_rng, message.text());
            if let Some(due) = at.checked_add_signed(delay) {
                self.schedule(
                    due,
                    Event::BotReply {
                        session_id: id.to_string(),
                        text: reply,
                        handoff,
                    },
                );
            }
        }
        Some(message)
    }

    /// The visitor asks for a person at `at`. A chat already waiting keeps
    /// its original request time; one a human has is left alone.
    fn request_human_at(&mut self, id: &str, at: Timestamp) {
        if let Some(s) = self.session_mut(id) {
            let fresh = s.session.handled_by == HandledBy::Ai
                || (s.session.handled_by == HandledBy::Pending
                    && s.session.human_requested_at.is_none());
            if s.is_active() && fresh {
                s.session.human_requested_at = Some(at);
                s.session.handled_by = HandledBy::Pending;
            }
        }
    }

    fn end_at(&mut self, id: &str, at: Timestamp) {
        if let Some(s) = self.session_mut(id) {
            if s.is_active() {
                s.session.status = SessionStatus::Ended;
                s.touch(at);
                if s.generated {
                    self.active_generated = self.active_generated.saturating_sub(1);
                }
            }
        }
    }

    fn fresh_id(&mut self) -> String {
        loop {
            let id = Traffic::session_id(&mut self.id_rng);
            if !self.sessions.contains_key(&id) {
                return id;
            }
        }
    }

    /// One page of sessions matching `filter`, newest first (ties by id).
    pub fn list(&mut self, filter: &ListFilter, page: usize, per_page: usize) -> Page {
        self.sync();
        let needle = filter
            .search
            .as_deref()
            .map(str::to_lowercase)
            .filter(|s| !s.is_empty());
        if self.order_dirty {
            let mut all: Vec<&Session> = self.sessions.values().map(|s| &s.session).collect();
            all.sort_by(|a, b| {
                b.created_at
                    .cmp(&a.created_at)
                    .then_with(|| a.session_id.cmp(&b.session_id))
            });
            self.order = all.into_iter().map(|s| s.session_id.clone()).collect();
            self.order_dirty = false;
        }
        let cached = self.list_cache.as_ref().is_some_and(|c| {
            c.generation == self.generation
                && c.status == filter.status
                && c.handled_by == filter.handled_by
                && c.needle == needle
        });
        if !cached {
            let sessions = &self.sessions;
            let ids = self
                .order
                .iter()
                .filter(|id| {
                    sessions.get(*id).is_some_and(|s| {
                        let s = &s.session;
                        filter.status.as_ref().is_none_or(|st| &s.status == st)
                            && filter
                                .handled_by
                                .as_ref()
                                .is_none_or(|h| &s.handled_by == h)
                            && needle.as_deref().is_none_or(|n| {
                                [&s.visitor_name, &s.visitor_email, &s.visitor_phone]
                                    .iter()
                                    .any(|f| {
                                        f.as_deref().is_some_and(|v| v.to_lowercase().contains(n))
                                    })
                            })
                    })
                })
                .cloned()
                .collect();
            self.list_cache = Some(ListCache {
                generation: self.generation,
                status: filter.status.clone(),
                handled_by: filter.handled_by.clone(),
                needle,
                ids,
            });
        }
        let ids: &[String] = self.list_cache.as_ref().map_or(&[], |c| &c.ids);
        let total = ids.len();
        let skip = page.saturating_sub(1).saturating_mul(per_page);
        let items = ids
            .iter()
            .skip(skip)
            .take(per_page)
            .filter_map(|id| self.sessions.get(id))
            .map(|s| s.session.clone())
            .collect();
        Page { items, total }
    }

    /// One session with its messages.
    pub fn detail(&mut self, id: &str) -> Result<SessionDetail, SimError> {
        self.sync();
        self.sessions
            .get(id)
            .map(SimSession::detail)
            .ok_or(SimError::NotFound)
    }

    /// Every session with its messages, newest first.
    pub(crate) fn all_details(&mut self) -> Vec<SessionDetail> {
        self.sync();
        let mut all: Vec<SessionDetail> = self.sessions.values().map(SimSession::detail).collect();
        all.sort_by(|a, b| {
            b.session
                .created_at
                .cmp(&a.session.created_at)
                .then_with(|| a.session.session_id.cmp(&b.session.session_id))
        });
        all
    }

    /// A session to change: every write goes through here so that the
    /// list's cached ids know they are stale.
    fn session_mut(&mut self, id: &str) -> Option<&mut SimSession> {
        self.generation += 1;
        self.sessions.get_mut(id)
    }

    fn active_mut(&mut self, id: &str) -> Result<&mut SimSession, SimError> {
        let s = self.session_mut(id).ok_or(SimError::NotFound)?;
        if !s.is_active() {
            return Err(SimError::Ended(ENDED_SESSION));
        }
        Ok(s)
    }

    /// A human agent takes the session over from the AI.
    pub fn take_over(&mut self, id: &str) -> Result<Session, SimError> {
        let now = self.stamp();
        let s = self.active_mut(id)?;
        s.session.handled_by = HandledBy::Human;
        s.session.human_took_over_at = Some(now);
        s.touch(now);
        Ok(s.session.clone())
    }

    /// The session goes back to the AI.
    pub fn release(&mut self, id: &str) -> Result<Session, SimError> {
        let now = self.stamp();
        let s = self.active_mut(id)?;
        s.session.handled_by = HandledBy::Ai;
        s.touch(now);
        Ok(s.session.clone())
    }

    /// The session is closed (by an agent or the visitor); idempotent.
    pub fn end(&mut self, id: &str) -> Result<Session, SimError> {
        let now = self.stamp();
        if !self.sessions.contains_key(id) {
            return Err(SimError::NotFound);
        }
        self.end_at(id, now);
        self.detail(id).map(|d| d.session)
    }

    /// The visitor asks for a human (the widget's button).
    pub fn request_human(&mut self, id: &str) -> Result<Session, SimError> {
        let now = self.stamp();
        self.active_mut(id)?;
        self.request_human_at(id, now);
        self.detail(id).map(|d| d.session)
    }

    /// Stores a message from `sender`; `text` is the raw JSON value of the
    /// request's `field`, validated here. A visitor message wakes the bot.
    pub fn post_message(
        &mut self,
        id: &str,
        sender: SenderType,
        text: Option<&Value>,
        field: &str,
    ) -> Result<Message, SimError> {
        let now = self.stamp();
        let active = self.sessions.get(id).ok_or(SimError::NotFound)?.is_active();
        let text = validate_text(field, text)?;
        if let SenderType::Other(other) = &sender {
            return Err(SimError::invalid(
                "sender_type",
                format!("The selected sender type {other:?} is invalid."),
            ));
        }
        if !active {
            return Err(SimError::Ended(ENDED_SEND));
        }
        let message = if sender == SenderType::Visitor {
            self.visitor_says(id, text, now)
        } else {
            self.session_mut(id).map(|s| s.push(sender, text, now))
        }
        .ok_or(SimError::NotFound)?;
        self.run_due(now);
        Ok(message)
    }

    /// Creates a session from any subset of the session fields plus optional
    /// seed `messages` (which do not wake the bot).
    pub fn create_session(&mut self, body: Value) -> Result<SessionDetail, SimError> {
        let now = self.stamp();
        let Value::Object(mut obj) = body else {
            return Err(SimError::BadRequest(
                "The request body must be a JSON object.".into(),
            ));
        };
        let raw_messages = obj.remove("messages");
        let id = match obj.get("session_id") {
            None | Some(Value::Null) => self.fresh_id(),
            Some(Value::String(s)) if s.trim().is_empty() => self.fresh_id(),
            Some(Value::String(s)) => {
                if self.sessions.contains_key(s) {
                    return Err(SimError::Conflict(format!("Session {s} already exists.")));
                }
                s.clone()
            }
            Some(_) => {
                return Err(SimError::invalid(
                    "session_id",
                    "The session id field must be a string.",
                ))
            }
        };
        obj.insert("session_id".into(), Value::String(id.clone()));
        check_choice(&obj, "status", &["active", "ended"])?;
        check_choice(&obj, "handled_by", &["ai", "human", "pending"])?;
        for field in [
            "human_requested_at",
            "human_took_over_at",
            "last_activity_at",
            "created_at",
        ] {
            match obj.get(field) {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if parse_ts(s).is_some() => {}
                Some(_) => {
                    return Err(SimError::invalid(
                        field,
                        format!("The {} field must be a valid date.", label(field)),
                    ))
                }
            }
        }
        let mut session: Session = serde_json::from_value(Value::Object(obj))
            .map_err(|e| SimError::invalid("session", format!("Invalid session: {e}")))?;
        let seeds = match raw_messages {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| seed_message(i, item))
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => {
                return Err(SimError::invalid(
                    "messages",
                    "The messages field must be an array.",
                ))
            }
        };

        let explicit_activity = session.last_activity_at;
        let created = *session.created_at.get_or_insert(now);
        session.last_activity_at = Some(created);
        let mut s = SimSession {
            session,
            messages: Vec::new(),
            generated: false,
        };
        for (sender, text, at) in seeds {
            s.push(sender, text, at.unwrap_or(now));
        }
        if explicit_activity.is_some() {
            s.session.last_activity_at = explicit_activity;
        }
        let detail = s.detail();
        self.order_dirty = true;
        self.generation += 1;
        self.sessions.insert(id, s);
        Ok(detail)
    }

    /// Aggregates over the sessions created in `period` (whole days by the
    /// simulated clock, today included).
    pub fn analytics(&mut self, period: Period) -> Analytics {
        let now = self.sync();
        let days: u64 = match period {
            Period::Today => 1,
            Period::Week => 7,
            Period::Month => 30,
            Period::Year => 365,
        };
        let today = now.date_naive();
        let first_day = today.checked_sub_days(Days::new(days - 1)).unwrap_or(today);
        let from = first_day.and_time(NaiveTime::MIN).and_utc();

        let mut a = Analytics::default();
        let mut visitors = HashSet::new();
        let mut per_day: BTreeMap<chrono::NaiveDate, u64> = BTreeMap::new();
        for s in self.sessions.values() {
            let Some(created) = s.session.created_at.filter(|c| *c >= from) else {
                continue;
            };
            a.total_chats += 1;
            *per_day.entry(created.date_naive()).or_default() += 1;
            match s.session.status {
                SessionStatus::Active => a.active_chats += 1,
                SessionStatus::Ended => a.completed_chats += 1,
                SessionStatus::Other(_) => {}
            }
            let mut engaged = false;
            for m in &s.messages {
                a.total_messages += 1;
                match m.sender_type {
                    SenderType::Visitor => {
                        a.visitor_messages += 1;
                        engaged = true;
                    }
                    SenderType::Bot => a.bot_messages += 1,
                    _ => {}
                }
            }
            a.engaged_chats += u64::from(engaged);
            let who = s
                .session
                .visitor_email
                .as_deref()
                .or(s.session.visitor_name.as_deref())
                .map(|v| format!("v:{}", v.to_lowercase()))
                .unwrap_or_else(|| format!("s:{}", s.session.session_id));
            visitors.insert(who);
        }
        a.unique_visitors = visitors.len() as u64;
        if a.total_chats > 0 {
            let avg = a.total_messages as f64 / a.total_chats as f64;
            a.avg_messages_per_chat = (avg * 10.0).round() / 10.0;
        }
        let mut labels = Vec::new();
        let mut chats = Vec::new();
        let mut day = first_day;
        while day <= today {
            labels.push(day.format("%Y-%m-%d").to_string());
            chats.push(per_day.get(&day).copied().unwrap_or(0));
            match day.succ_opt() {
                Some(next) => day = next,
                None => break,
            }
        }
        a.chart_data = json!({"labels": labels, "chats": chats});
        a
    }
}

/// `field` with underscores as spaces, the way Laravel names fields in messages.
fn label(field: &str) -> String {
    field.replace('_', " ")
}

/// Validates a message text the way the API does: required, a string, at
/// most 4096 characters.
fn validate_text(field: &str, value: Option<&Value>) -> Result<String, SimError> {
    let name = label(field);
    match value {
        None | Some(Value::Null) => Err(SimError::invalid(
            field,
            format!("The {name} field is required."),
        )),
        Some(Value::String(s)) if s.trim().is_empty() => Err(SimError::invalid(
            field,
            format!("The {name} field is required."),
        )),
        Some(Value::String(s)) if s.chars().count() > MAX_MESSAGE_CHARS => Err(SimError::invalid(
            field,
            format!("The {name} field must not be greater than {MAX_MESSAGE_CHARS} characters."),
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(SimError::invalid(
            field,
            format!("The {name} field must be a string."),
        )),
    }
}

fn check_choice(
    obj: &serde_json::Map<String, Value>,
    field: &str,
    allowed: &[&str],
) -> Result<(), SimError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(()),
        Some(_) => Err(SimError::invalid(
            field,
            format!("The selected {} is invalid.", label(field)),
        )),
    }
}

/// Parses one seed message of `POST /_sim/sessions`.
fn seed_message(
    i: usize,
    item: Value,
) -> Result<(SenderType, String, Option<Timestamp>), SimError> {
    let Value::Object(m) = item else {
        return Err(SimError::invalid(
            format!("messages.{i}"),
            format!("The messages.{i} field must be an object."),
        ));
    };
    let sender = match m.get("sender_type") {
        None | Some(Value::Null) => SenderType::Visitor,
        Some(Value::String(s)) if ["visitor", "bot", "agent"].contains(&s.as_str()) => {
            s.parse().unwrap_or_default()
        }
        Some(_) => {
            return Err(SimError::invalid(
                format!("messages.{i}.sender_type"),
                format!("The selected messages.{i}.sender_type is invalid."),
            ))
        }
    };
    let text_key = ["text", "message_text", "message"]
        .into_iter()
        .find(|k| m.contains_key(*k))
        .unwrap_or("text");
    let text = validate_text(&format!("messages.{i}.{text_key}"), m.get(text_key))?;
    let at = match m.get("created_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(parse_ts(s).ok_or_else(|| {
            SimError::invalid(
                format!("messages.{i}.created_at"),
                format!("The messages.{i}.created_at field must be a valid date."),
            )
        })?),
        Some(_) => {
            return Err(SimError::invalid(
                format!("messages.{i}.created_at"),
                format!("The messages.{i}.created_at field must be a valid date."),
            ))
        }
    };
    Ok((sender, text, at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn frozen(bot_delay: Option<Duration>) -> SimState {
        SimState::new(&SimConfig {
            clock_speed: 0.0,
            bot_delay,
            ..SimConfig::default()
        })
    }

    #[test]
    fn a_filtered_list_sees_every_write_made_between_two_pages() {
        let mut w = frozen(None);
        for id in ["a", "b", "c"] {
            w.create_session(json!({"session_id": id})).unwrap();
        }
        let ai = ListFilter {
            handled_by: Some(HandledBy::Ai),
            ..ListFilter::default()
        };
        let ids = |p: &Page| {
            p.items
                .iter()
                .map(|s| s.session_id.clone())
                .collect::<Vec<_>>()
        };
        let first = w.list(&ai, 1, 2);
        assert_eq!(
            (ids(&first), first.total),
            (vec!["c".into(), "b".into()], 3)
        );
        // A take-over between two pages of the same walk leaves the AI list.
        w.take_over("a").unwrap();
        let second = w.list(&ai, 2, 2);
        assert_eq!((ids(&second), second.total), (Vec::<String>::new(), 2));
        let humans = ListFilter {
            handled_by: Some(HandledBy::Human),
            ..ListFilter::default()
        };
        assert_eq!(ids(&w.list(&humans, 1, 2)), vec!["a".to_string()]);
        w.end("a").unwrap();
        let active = ListFilter {
            status: Some(SessionStatus::Active),
            ..ListFilter::default()
        };
        assert_eq!(w.list(&active, 1, 10).total, 2);
    }

    #[test]
    fn bot_answers_after_its_delay_and_not_when_a_human_has_the_chat() {
        let mut w = frozen(Some(Duration::from_secs(2)));
        let a = w.create_session(json!({"session_id": "a"})).unwrap();
        w.create_session(json!({"session_id": "b"})).unwrap();
        let v = json!("hello there");
        w.post_message("a", SenderType::Visitor, Some(&v), "text")
            .unwrap();
        w.post_message("b", SenderType::Visitor, Some(&v), "text")
            .unwrap();
        w.take_over("b").unwrap();
        w.advance_secs(1.9).unwrap();
        assert_eq!(w.detail("a").unwrap().messages.len(), 1);
        w.advance_secs(0.2).unwrap();
        let d = w.detail("a").unwrap();
        assert_eq!(d.messages.len(), 2);
        assert_eq!(d.messages[1].sender_type, SenderType::Bot);
        assert_eq!(d.messages[1].id, 2);
        assert!(d.messages[0].is_read);
        // Writes get strictly increasing stamps, so the bot's delay is
        // measured from the visitor's message itself.
        assert!(a.session.created_at.unwrap() < d.messages[0].created_at.unwrap());
        assert_eq!(
            d.messages[1].created_at.unwrap() - d.messages[0].created_at.unwrap(),
            TimeDelta::seconds(2)
        );
        assert_eq!(w.detail("b").unwrap().messages.len(), 1);
    }

    #[test]
    fn asking_for_a_human_hands_off() {
        let mut w = frozen(Some(Duration::from_secs(1)));
        w.create_session(json!({"session_id": "a"})).unwrap();
        let v = json!("Can I talk to a human?");
        w.post_message("a", SenderType::Visitor, Some(&v), "text")
            .unwrap();
        w.advance_secs(1.001).unwrap();
        let d = w.detail("a").unwrap();
        assert_eq!(d.session.handled_by, HandledBy::Pending);
        assert!(d.session.human_requested_at.is_some());
        assert_eq!(d.messages[1].text(), bot::HANDOFF_REPLY);
        // Asking again while waiting does not restart the wait.
        w.advance_secs(60.0).unwrap();
        let again = w.request_human("a").unwrap();
        assert_eq!(again.human_requested_at, d.session.human_requested_at);
        w.take_over("a").unwrap();
        assert_eq!(w.request_human("a").unwrap().handled_by, HandledBy::Human);
    }

    #[test]
    fn ended_sessions_refuse_changes() {
        let mut w = frozen(None);
        w.create_session(json!({"session_id": "a", "status": "ended"}))
            .unwrap();
        assert_eq!(w.take_over("a"), Err(SimError::Ended(ENDED_SESSION)));
        let v = json!("hi");
        assert_eq!(
            w.post_message("a", SenderType::Agent, Some(&v), "message"),
            Err(SimError::Ended(ENDED_SEND))
        );
        assert_eq!(w.take_over("zzz"), Err(SimError::NotFound));
        assert!(w.end("a").is_ok());
    }

    #[test]
    fn bad_seed_bodies_are_rejected_not_panicked_on() {
        let mut w = frozen(None);
        for body in [
            json!(1),
            json!({"status": "archived"}),
            json!({"session_id": 5}),
            json!({"created_at": "yesterday"}),
            json!({"visitor_name": 5}),
            json!({"messages": {}}),
            json!({"messages": [{"sender_type": "robot", "text": "x"}]}),
            json!({"messages": [{"text": ""}]}),
        ] {
            let e = w.create_session(body.clone()).unwrap_err();
            assert!(matches!(e.status(), 400 | 422), "{body}: {e:?}");
        }
        let d = w
            .create_session(json!({"created_at": "2026-03-08T14:15:00Z",
                "messages": [{"sender_type": "visitor", "text": "hi",
                              "created_at": "2026-03-08T14:15:30Z"}]}))
            .unwrap();
        assert!(d.session.session_id.starts_with("sess_"));
        assert_eq!(d.session.session_id.len(), 17);
        assert!(d.session.has_visitor_messages);
        assert_eq!(d.session.last_activity_at, parse_ts("2026-03-08T14:15:30Z"));
    }

    #[test]
    fn analytics_counts_the_period() {
        let mut w = frozen(Some(Duration::from_secs(1)));
        w.create_session(json!({"session_id": "a", "visitor_email": "x@example.com"}))
            .unwrap();
        w.create_session(json!({"session_id": "b", "visitor_email": "X@example.com",
                                "status": "ended"}))
            .unwrap();
        w.create_session(json!({"session_id": "old", "created_at": "2001-01-01T00:00:00Z"}))
            .unwrap();
        let v = json!("pricing?");
        w.post_message("a", SenderType::Visitor, Some(&v), "text")
            .unwrap();
        w.advance_secs(1.001).unwrap();
        let a = w.analytics(Period::Week);
        assert_eq!(a.total_chats, 2);
        assert_eq!(
            (a.active_chats, a.completed_chats, a.engaged_chats),
            (1, 1, 1)
        );
        assert_eq!(
            (a.total_messages, a.visitor_messages, a.bot_messages),
            (2, 1, 1)
        );
        assert_eq!(a.avg_messages_per_chat, 1.0);
        assert_eq!(a.unique_visitors, 1);
        assert_eq!(a.chart_data["labels"].as_array().map(Vec::len), Some(7));
    }
}
