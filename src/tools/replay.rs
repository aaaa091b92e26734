//! `skyrules replay`: what would these rules have done last week?
//!
//! Owns: reading past sessions (ended and active) with their history from
//! the API, and replaying that history, in time order, into an in-process
//! simulator on a frozen clock that an engine in dry-run mode polls — the
//! same code path as `skyrules run --dry-run`, so the counts agree with what
//! it would have logged. Nothing is sent to the real API but reads.
//!
//! Known gap: the API does not say when a chat was released back to the AI,
//! so a chat taken over and later released is replayed as taken over until
//! it ends.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::api::{
    ApiError, Client, ListQuery, SenderType, SessionDetail, SessionStatus, Timestamp,
};
use crate::engine::{EngineOptions, Note};
use crate::executor::Guard;
use crate::sim::SimHandle;
use crate::tools::harness::Harness;

/// Session details read at once; the client also honours 429 Retry-After.
const READ_CONCURRENCY: usize = 4;
/// Sessions sampled per rule in the report.
const SAMPLES: usize = 3;

/// Replay settings.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// How far back to read.
    pub since: Duration,
    /// The rules to replay.
    pub rules_dir: PathBuf,
    /// The reply-loop guard, as the engine would apply it.
    pub guard: Guard,
    /// The calendars rules may use (`[hours.NAME]`).
    pub calendars: crate::hours::Calendars,
    /// The notification channel names rules may use (`[notify.NAME]`);
    /// nothing is sent.
    pub channels: Vec<String>,
}

/// Progress while reading, for a bar or log lines.
pub trait Progress: Send + Sync {
    /// `total` sessions are to be read.
    fn start(&self, total: usize);
    /// One more was read.
    fn tick(&self);
    /// Reading is done.
    fn finish(&self);
}

/// One session a rule would have acted on.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// The session.
    pub session_id: String,
    /// The event that triggered the first action.
    pub event: String,
    /// The visitor's latest message before it, if any.
    pub trigger: Option<String>,
    /// The actions, as `take_over` or `reply: text`.
    pub actions: Vec<String>,
}

/// What one rule would have done.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct RuleReport {
    /// Sessions it would have acted on.
    pub sessions: usize,
    /// Actions it would have taken, by kind.
    pub actions: BTreeMap<String, usize>,
    /// A few of the sessions, with what triggered the rule.
    pub samples: Vec<Sample>,
}

/// The whole replay.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct ReplayReport {
    /// Sessions read.
    pub sessions: usize,
    /// Per rule, in file-name order; rules that would not act are listed
    /// with zero counts.
    pub rules: BTreeMap<String, RuleReport>,
}

/// Something to replay at a point in time.
#[derive(Debug, Clone)]
enum Item {
    Open(Box<SessionDetail>),
    Message(String, SenderType, String),
    RequestHuman(String),
    TakeOver(String),
    End(String),
}

/// Reads the history and replays it. `since` is measured on the server's
/// clock.
pub async fn replay(
    api: &Client,
    opts: &ReplayOptions,
    progress: &dyn Progress,
) -> anyhow::Result<ReplayReport> {
    let all = api
        .list_all_sessions(&ListQuery {
            per_page: Some(100),
            ..ListQuery::default()
        })
        .await?;
    let from = api.clock().now() - chrono::Duration::from_std(opts.since)?;
    let wanted: Vec<String> = all
        .iter()
        .filter(|s| {
            s.last_activity_at
                .or(s.created_at)
                .is_some_and(|t| t >= from)
        })
        .map(|s| s.session_id.clone())
        .collect();
    progress.start(wanted.len());
    let details: Vec<Result<SessionDetail, ApiError>> = stream::iter(wanted)
        .map(|id| async move {
            let r = api.get_session(&id).await;
            progress.tick();
            r
        })
        .buffer_unordered(READ_CONCURRENCY)
        .collect()
        .await;
    progress.finish();
    let mut history = Vec::new();
    for d in details {
        match d {
            Ok(d) => history.push(d),
            Err(e) if e.is_gone() => {}
            Err(e) => return Err(e.into()),
        }
    }
    let horizon = api.clock().now();
    run_history(history, horizon, opts).await
}

/// Replays already-read sessions through the rules, up to `horizon` (when
/// they were read: timers not due by then had not fired yet); the part of
/// [`replay`] that needs no API.
async fn run_history(
    history: Vec<SessionDetail>,
    horizon: Timestamp,
    opts: &ReplayOptions,
) -> anyhow::Result<ReplayReport> {
    let mut report = ReplayReport {
        sessions: history.len(),
        ..ReplayReport::default()
    };
    let timeline = timeline(history);
    let engine_opts = EngineOptions {
        rules_dir: opts.rules_dir.clone(),
        poll_interval: Duration::from_secs(5),
        dry_run: true,
        max_concurrency: 8,
        guard: opts.guard,
        pending_interval: std::time::Duration::ZERO,
        trace_length: crate::trace::DEFAULT_TRACE_LENGTH,
    };
    let world = crate::rules::World {
        calendars: opts.calendars.clone(),
        channels: opts.channels.clone(),
        notifier: None,
        ..Default::default()
    };
    let (mut h, load) = Harness::start(engine_opts, world)
        .await
        .map_err(anyhow::Error::msg)?;
    if let Some(e) = load.errors.first() {
        anyhow::bail!("rule does not load: {e}");
    }
    let rules = h.engine.runtime().rules();
    for r in &rules.rules {
        report.rules.insert(r.id.clone(), RuleReport::default());
    }
    let timers: Vec<Duration> = rules.timers().iter().map(|t| t.after).collect();
    let mut notes = h.engine.subscribe();
    h.resume().await.map_err(anyhow::Error::msg)?;
    if let Some((first, _)) = timeline.first() {
        h.sim.set_time(*first - chrono::Duration::seconds(1));
    }
    h.step().await.map_err(anyhow::Error::msg)?;
    let mut tally = Tally::default();
    for (t, items) in instants(timeline, &timers, horizon) {
        if t > h.sim.now() {
            h.sim.set_time(t);
        }
        for item in items {
            apply(&h.sim, &h.api, item).await;
        }
        // Replay goes on even when a rule keeps answering itself: the
        // counts then show it.
        h.settle(|| tally.drain(&mut notes) == 0)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    h.shutdown().await;
    tally.into_report(&mut report);
    Ok(report)
}

/// The instants to poll at, up to `horizon`, with what happens at each:
/// every recorded instant and every instant a timer could come due after
/// one, so that timers fire exactly when they would have.
fn instants(
    timeline: Vec<(Timestamp, Item)>,
    timers: &[Duration],
    horizon: Timestamp,
) -> Vec<(Timestamp, Vec<Item>)> {
    let mut at: BTreeSet<Timestamp> = timeline.iter().map(|(t, _)| *t).collect();
    for (t, _) in &timeline {
        for d in timers {
            if let Ok(d) = chrono::Duration::from_std(*d + Duration::from_secs(1)) {
                at.insert(*t + d);
            }
        }
    }
    let mut by_time: BTreeMap<Timestamp, Vec<Item>> = BTreeMap::new();
    for (t, item) in timeline {
        by_time.entry(t).or_default().push(item);
    }
    at.into_iter()
        .take_while(|t| *t <= horizon)
        .map(|t| (t, by_time.remove(&t).unwrap_or_default()))
        .collect()
}

/// The history as timed items, oldest first; a session opens before
/// anything else happens to it, and ends after.
fn timeline(history: Vec<SessionDetail>) -> Vec<(Timestamp, Item)> {
    let mut out: Vec<(Timestamp, u8, Item)> = Vec::new();
    for d in history {
        let s = &d.session;
        let id = s.session_id.clone();
        let first_msg = d.messages.iter().filter_map(|m| m.created_at).min();
        let Some(opened) = s.created_at.or(first_msg).or(s.last_activity_at) else {
            continue;
        };
        let last = d
            .messages
            .iter()
            .filter_map(|m| m.created_at)
            .chain(s.last_activity_at)
            .max()
            .unwrap_or(opened);
        for m in &d.messages {
            let text = m
                .message_text
                .clone()
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| format!("[{}]", m.message_type));
            out.push((
                m.created_at.unwrap_or(opened).max(opened),
                1,
                Item::Message(id.clone(), m.sender_type.clone(), text),
            ));
        }
        if let Some(t) = s.human_requested_at {
            out.push((t.max(opened), 2, Item::RequestHuman(id.clone())));
        }
        if let Some(t) = s.human_took_over_at {
            out.push((t.max(opened), 3, Item::TakeOver(id.clone())));
        }
        if s.status == SessionStatus::Ended {
            out.push((last.max(opened), 9, Item::End(id.clone())));
        }
        let mut open = d.clone();
        open.messages.clear();
        out.push((opened, 0, Item::Open(Box::new(open))));
    }
    out.sort_by_key(|(t, rank, _)| (*t, *rank));
    out.into_iter().map(|(t, _, i)| (t, i)).collect()
}

async fn apply(sim: &SimHandle, api: &Client, item: Item) {
    let result = match item {
        Item::Open(d) => {
            let s = &d.session;
            let body = serde_json::json!({
                "session_id": s.session_id,
                "visitor_name": s.visitor_name,
                "visitor_email": s.visitor_email,
                "visitor_phone": s.visitor_phone,
                "visitor_ip": s.visitor_ip,
                "visitor_page_url": s.visitor_page_url,
                "visitor_referrer": s.visitor_referrer,
            });
            sim.create_session(body)
                .map(|_| ())
                .map_err(|e| format!("{e:?}"))
        }
        Item::Message(id, sender, text) => sim
            .post_message(&id, sender, &text)
            .map(|_| ())
            .map_err(|e| format!("{e:?}")),
        Item::RequestHuman(id) => sim
            .request_human(&id)
            .map(|_| ())
            .map_err(|e| format!("{e:?}")),
        Item::TakeOver(id) => api
            .take_over(&id)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Item::End(id) => sim.leave(&id).map(|_| ()).map_err(|e| format!("{e:?}")),
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "a recorded step could not be replayed");
    }
}

/// The first triggering event, the visitor's text before it, and every
/// action of one rule in one session.
type Acted = (String, Option<String>, Vec<String>);

#[derive(Default)]
struct Tally {
    last_visitor_text: HashMap<String, String>,
    /// (rule, session) → what the rule did there.
    acted: BTreeMap<(String, String), Acted>,
    counts: BTreeMap<String, BTreeMap<String, usize>>,
}

impl Tally {
    /// Takes the notes so far; returns how many events the last poll saw.
    fn drain(&mut self, notes: &mut broadcast::Receiver<Note>) -> usize {
        let mut events = 0;
        loop {
            match notes.try_recv() {
                Ok(Note::Cycle { events: n, .. }) => events = n,
                Ok(Note::Event {
                    session_id,
                    kind: crate::tracking::EventKind::VisitorMessage,
                    text: Some(text),
                    ..
                }) => {
                    self.last_visitor_text.insert(session_id, text);
                }
                Ok(Note::Action {
                    rule,
                    session_id,
                    event,
                    action,
                    outcome,
                    ..
                }) if outcome == "dry_run" => {
                    *self
                        .counts
                        .entry(rule.clone())
                        .or_default()
                        .entry(action.to_string())
                        .or_default() += 1;
                    let trigger = self.last_visitor_text.get(&session_id).cloned();
                    let entry = self
                        .acted
                        .entry((rule, session_id))
                        .or_insert_with(|| (event.name().to_string(), trigger, Vec::new()));
                    entry.2.push(match action.text() {
                        Some(t) => format!("{action}: {t}"),
                        None => action.to_string(),
                    });
                }
                Ok(_) => {}
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
        events
    }

    fn into_report(self, report: &mut ReplayReport) {
        for (rule, actions) in self.counts {
            report.rules.entry(rule).or_default().actions = actions;
        }
        for ((rule, session_id), (event, trigger, actions)) in self.acted {
            let r = report.rules.entry(rule).or_default();
            r.sessions += 1;
            if r.samples.len() < SAMPLES {
                r.samples.push(Sample {
                    session_id,
                    event,
                    trigger,
                    actions,
                });
            }
        }
    }
}
