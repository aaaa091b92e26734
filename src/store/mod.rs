//! The state store: what the engine must remember between polls and across
//! restarts — per-session snapshots and message cursors, fired timers, rule
//! memory, and every action as an intent and its outcome (the audit log).
//!
//! Owns: the [`Store`] interface, the SQLite implementation (the default,
//! one file), the PostgreSQL one (`SKYRULES_STATE_URL`, shared by many
//! workspaces and processes) and an in-memory one (the demo, tests), and
//! [`open`], which picks between the first two. The watcher and the rules
//! never see a store: the engine loads from it at start, records each
//! action's intent before taking it and its outcome after, and commits one
//! [`Batch`] per poll cycle.
//!
//! A [`Store`] is one workspace's view: every row is keyed by workspace,
//! and [`Store::workspace`] gives another workspace's view of the same
//! database, so one process holds one file or one pool for all of them.
//!
//! Exactly-once delivery rests on three facts.
//!
//! - Nothing a cycle learns is saved before anything is done about it,
//!   except what an action needs: before a session's first action of the
//!   cycle, its new state and its events are journaled in the same
//!   transaction as that action's intent. A crash before that point leaves
//!   the session's old state, so the next start reads the chat as if the
//!   cycle had never run (every message is found again; a state or a due
//!   timer only if the chat is still in it), and nothing was done about it
//!   yet. A crash after it leaves the journal, which the next start
//!   handles first (a timer that was due stays due even if our own first
//!   reply changed the session).
//! - An action's intent is written under `event key + rule + index` before
//!   the action runs, so an event handled again after a crash does not act
//!   twice, and an intent left without an outcome is reconciled against
//!   the API.
//! - The cycle's one commit saves every session's new state, the rule
//!   memory the handlers left, and takes the handled events off the
//!   journal, together.

mod memory;
mod postgres;
mod rows;
mod sqlite;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::api::Timestamp;
use crate::rules::Memory;
use crate::trace::{Step, TraceRows};
use crate::tracking::{Event, Tracked};

pub use memory::MemoryStore;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// The workspace of a single-workspace configuration, and of every row an
/// older (version 2) SQLite file held.
pub(crate) use crate::config::DEFAULT_WORKSPACE;

/// A state-store failure; the message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file is held by another running engine.
    #[error("state file {path} is in use by another skyrules process (lock on {path}.lock); stop that process first, or give this one its own --state file")]
    Locked {
        /// The state file.
        path: String,
    },
    /// The file exists but is not a usable skyrules database.
    #[error("state file {path} is unreadable or corrupt ({message}); it was left untouched: restore a backup, or move it aside to start fresh (skyrules then takes a new baseline of open chats)")]
    Corrupt {
        /// The state file.
        path: String,
        /// What SQLite said.
        message: String,
    },
    /// The file was written by a newer skyrules.
    #[error("state {path} has schema version {found}, newer than this skyrules understands ({known}); upgrade skyrules, or point --state / SKYRULES_STATE_URL elsewhere")]
    TooNew {
        /// The state file.
        path: String,
        /// Version in the file.
        found: i64,
        /// Newest version known here.
        known: i64,
    },
    /// The state database cannot be reached (down, restarting, or the
    /// network to it broken); nothing was written, and the engine keeps
    /// what it meant to write and tries again.
    #[error("cannot reach the state database {location}: {message}")]
    Unavailable {
        /// Where the state is, without the password.
        location: String,
        /// What failed, and what to check.
        message: String,
    },
    /// `skyrules state copy` into a database that already holds state for
    /// the workspaces copied.
    #[error("the state database {location} already holds state for workspace(s) {workspaces}; nothing was copied: copy into a database without them")]
    Occupied {
        /// Where the state is, without the password.
        location: String,
        /// The workspaces found there, comma-separated.
        workspaces: String,
    },
    /// A write refused because this replica no longer holds the
    /// workspace's lease (another took it over): nothing was written, and
    /// this replica must stop acting on the workspace.
    #[error("workspace {workspace}: this replica's lease (epoch {epoch}) was taken over by another replica; it no longer acts on this workspace")]
    Fenced {
        /// The workspace.
        workspace: String,
        /// The epoch this replica held.
        epoch: i64,
    },
    /// Any other read or write failure.
    #[error("state {path}: {message}")]
    Io {
        /// The state file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// One action, as the audit log keeps it (ids, never texts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When it was decided, on the server's clock.
    pub at: Timestamp,
    /// The rule that asked for it.
    pub rule: String,
    /// The session.
    pub session_id: String,
    /// The event that triggered it.
    pub event: String,
    /// `take_over`, `release`, `reply` or `end`.
    pub action: String,
    /// `taken`, `dry_run`, `skipped`, `capped`, `failed`, or `pending`
    /// while in flight.
    pub outcome: String,
    /// Why, for anything but `taken`.
    pub detail: Option<String>,
}

/// An action about to be taken, written before it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Intent {
    /// `event key|rule|index`: the same when a replayed event asks again.
    pub key: String,
    /// When it was decided, on the server's clock.
    pub at: Timestamp,
    /// The rule.
    pub rule: String,
    /// The session.
    pub session_id: String,
    /// The event kind.
    pub event: String,
    /// The action name.
    pub action: String,
    /// The reply text, kept only until the outcome is known (needed to
    /// reconcile a send that was cut short).
    pub text: Option<String>,
}

/// What the store knew of an intent before it was written.
#[derive(Debug, Clone, PartialEq)]
pub enum Begin {
    /// First time: take the action.
    New,
    /// Already taken (or refused) before: do not take it again.
    Done {
        /// The recorded outcome.
        outcome: String,
    },
    /// Written but never finished (a crash in between): reconcile.
    Pending(Intent),
}

/// Filters of `skyrules audit`.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this session.
    pub session_id: Option<String>,
    /// Only this rule.
    pub rule: Option<String>,
    /// Only entries at or after this time.
    pub since: Option<Timestamp>,
}

impl AuditFilter {
    /// Whether an entry passes.
    pub fn matches(&self, e: &AuditEntry) -> bool {
        self.session_id.as_ref().is_none_or(|s| *s == e.session_id)
            && self.rule.as_ref().is_none_or(|r| *r == e.rule)
            && self.since.is_none_or(|t| e.at >= t)
    }
}

/// What the engine knew when it last stopped.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    /// Whether the first-start baseline was taken already.
    pub baselined: bool,
    /// Every session still tracked (ended ones are not).
    pub sessions: HashMap<String, Tracked>,
}

/// One session's events still to be handled, with the session as they saw
/// it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// The session after the poll that produced the events.
    pub tracked: Tracked,
    /// The events, in order.
    pub events: Vec<Event>,
}

/// What one transaction writes: a poll cycle's sessions and handled
/// events, or one session's state and events journaled with its first
/// action's intent.
#[derive(Debug, Default)]
pub struct Batch {
    /// When the cycle ran (server clock); ended sessions are stamped with it.
    pub at: Timestamp,
    /// Set once the first cycle has taken its baseline.
    pub baselined: bool,
    /// New or changed session states.
    pub sessions: Vec<Tracked>,
    /// Sessions that ended; kept until the retention purge, not tracked.
    pub ended: Vec<Tracked>,
    /// Events to journal: they are not handled yet (or not wholly), and
    /// the next start handles them first.
    pub events: Vec<Pending>,
    /// Sessions whose events were handled, to take off the journal with
    /// their rule memory.
    pub done: Vec<Done>,
}

impl Batch {
    /// Whether writing it would change nothing.
    pub fn is_empty(&self) -> bool {
        !self.baselined
            && self.sessions.is_empty()
            && self.ended.is_empty()
            && self.events.is_empty()
            && self.done.is_empty()
    }

    /// Adds a session's state: as ended, or as still tracked.
    pub fn save(&mut self, tracked: Tracked, ended: bool) {
        if ended {
            self.ended.push(tracked);
        } else {
            self.sessions.push(tracked);
        }
    }

    /// Adds a later batch after this one: written together, the later
    /// states and memory win, as if the two had been written in turn.
    pub(crate) fn append(&mut self, later: Batch) {
        // The usual cases (nothing left from a failed commit, or nothing
        // new): no copying.
        if later.is_empty() {
            return;
        }
        if self.is_empty() {
            *self = later;
            return;
        }
        self.at = later.at;
        self.baselined |= later.baselined;
        self.sessions.extend(later.sessions);
        self.ended.extend(later.ended);
        self.events.extend(later.events);
        self.done.extend(later.done);
    }
}

/// One session's handled events and the rule memory they left.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Done {
    /// The session.
    pub session_id: String,
    /// Keys of its handled events to take off the journal (none when its
    /// events were never journaled).
    pub keys: Vec<String>,
    /// Rule memory the handlers changed, by rule.
    pub memory: Vec<(String, Memory)>,
    /// What the rules decided about each event, to append to the
    /// session's decision trace.
    pub steps: Vec<Step>,
    /// How many steps the session's trace keeps: older ones are dropped
    /// as these are added.
    pub keep_steps: usize,
}

/// Durable engine state of one workspace. Every method blocks: call from a
/// blocking thread.
pub trait Store: Send + Sync + 'static {
    /// The view of workspace `name` in the same database (same connection
    /// or pool, same lock); it never sees or changes this one's rows.
    fn workspace(&self, name: &str) -> Arc<dyn Store>;
    /// Where the state is, for logs: a file, or a URL without its password.
    fn location(&self) -> String;
    /// Reads what the engine needs at start.
    fn load(&self) -> Result<Loaded, StoreError>;
    /// Every rule's memory for one session.
    fn memory(&self, session_id: &str) -> Result<HashMap<String, Memory>, StoreError>;
    /// Applies a batch atomically.
    fn commit(&self, batch: &Batch) -> Result<(), StoreError>;
    /// Journaled events not yet handled, per session, oldest first.
    fn pending_events(&self) -> Result<Vec<Pending>, StoreError>;
    /// Records an intent, unless one with its key exists; says which.
    /// `journal`, when given, is written in the same transaction: the
    /// session's state and events, saved before its first action.
    fn begin_action(&self, intent: &Intent, journal: Option<&Batch>) -> Result<Begin, StoreError>;
    /// Records an intent's outcome (and forgets its text).
    fn finish_action(
        &self,
        key: &str,
        outcome: &str,
        detail: Option<&str>,
    ) -> Result<(), StoreError>;
    /// Intents never finished, oldest first.
    fn pending_actions(&self) -> Result<Vec<Intent>, StoreError>;
    /// The audit log, oldest first.
    fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError>;
    /// Every session still in the file (tracked, or ended and not yet
    /// purged) created at or after `since`: the SLA report's input.
    fn sessions_since(&self, since: Timestamp) -> Result<Vec<Tracked>, StoreError>;
    /// Occurrences of timer events that made a rule act, per rule and UTC
    /// day, since `since`: the SLA report's breach counts.
    fn timer_breaches(
        &self,
        since: Timestamp,
    ) -> Result<Vec<(String, chrono::NaiveDate, u64)>, StoreError>;
    /// When the newest action in the audit log was decided, on the clock
    /// the engine wrote the state with (the server's, which a simulator or
    /// a skewed server can run far from this machine's).
    fn latest_action_at(&self) -> Result<Option<Timestamp>, StoreError>;
    /// One session's decision trace, oldest first, with the rule sets its
    /// steps name; `None` when the state holds no such session (never
    /// seen, or purged).
    fn trace(&self, session_id: &str) -> Result<Option<TraceRows>, StoreError>;
    /// Forgets ended sessions (snapshots, messages, memory, trace) that ended
    /// before `before`; returns how many. The audit log keeps its ids.
    fn purge(&self, before: Timestamp) -> Result<usize, StoreError>;
}

/// Per-workspace leases and replica heartbeats in a database that several
/// `skyrules run` processes share (PostgreSQL; SPEC §7). Every expiry is on
/// the database's clock. Each method is one short transaction; like
/// [`Store`], every method blocks.
pub(crate) trait Leases: Send + Sync + 'static {
    /// One renewal round for `replica`: marks it alive for `ttl`, serving
    /// `serves` (sorted; `None`: leaving, no heartbeat), renews the leases
    /// it holds (`held`: workspace and epoch) for `ttl`, and reads its
    /// live peers (replicas serving the same workspaces) and every lease.
    fn tick(
        &self,
        replica: &str,
        held: &[(String, i64)],
        ttl: std::time::Duration,
        serves: Option<&[String]>,
    ) -> Result<LeaseTable, StoreError>;
    /// Takes `workspace` for `replica` if its lease is free (never held,
    /// expired or released) or was `replica`'s own (the same id is the
    /// same replica restarted), with a new epoch; `None` while another
    /// replica holds it.
    fn acquire(
        &self,
        workspace: &str,
        replica: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<Acquired>, StoreError>;
    /// Gives `workspace` up at once, if `replica` still holds it at `epoch`.
    /// `clean`: nothing of this replica's can still be in flight (its
    /// engine finished every action it started); otherwise the next holder
    /// waits for such requests to land before it settles them.
    fn release(
        &self,
        workspace: &str,
        replica: &str,
        epoch: i64,
        clean: bool,
    ) -> Result<(), StoreError>;
    /// Forgets `replica`'s heartbeat (a clean stop), so the others share
    /// the workspaces out without waiting for it to expire.
    fn leave(&self, replica: &str) -> Result<(), StoreError>;
    /// `workspace`'s state, writable only while `replica` holds its lease
    /// at `epoch`: every write checks it in its own transaction and fails
    /// with [`StoreError::Fenced`] otherwise.
    fn fenced(&self, workspace: &str, replica: &str, epoch: i64) -> Arc<dyn Store>;
}

/// What one [`Leases::tick`] saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LeaseTable {
    /// The leases renewed (workspace, epoch); a held lease missing here
    /// was lost.
    pub renewed: Vec<(String, i64)>,
    /// Live replicas serving the same workspaces, by id.
    pub replicas: Vec<String>,
    /// Every workspace's lease.
    pub leases: Vec<LeaseRow>,
}

/// One workspace's lease as [`Leases::tick`] read it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LeaseRow {
    /// The workspace.
    pub workspace: String,
    /// The replica that holds or last held it.
    pub holder: String,
    /// Its epoch: one more at every change of holder.
    pub epoch: i64,
    /// Whether it is held (unexpired and not released).
    pub live: bool,
    /// How long it has been free (zero while held).
    pub free_for: std::time::Duration,
}

/// A lease taken by [`Leases::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Acquired {
    /// The new epoch: the fencing token of every write from now on.
    pub epoch: i64,
    /// Whether nothing of the last holder's can still be in flight: it
    /// released the lease (a clean stop), or it was this same replica
    /// before a restart. `false` when it let the lease expire.
    pub released: bool,
}

/// Opens the engine's state, workspace `default`: in PostgreSQL when
/// `state_url` is given, else in the SQLite file `state_path` (opened on
/// a blocking thread, as it reads and migrates the file).
pub async fn open(
    state_path: &Path,
    state_url: Option<&str>,
) -> Result<Arc<dyn Store>, StoreError> {
    match state_url {
        Some(url) => Ok(Arc::new(PgStore::connect(url).await?)),
        None => open_file(state_path, SqliteStore::open).await,
    }
}

/// Opens a PostgreSQL state that replicas share, for `skyrules run`: its
/// leases, whose fenced views ([`Leases::fenced`]) are the workspaces'
/// state.
pub(crate) async fn open_shared(url: &str) -> Result<Arc<dyn Leases>, StoreError> {
    Ok(Arc::new(postgres::PgLeases::connect(url).await?))
}

/// Opens the state to read it while an engine may run (`audit`, `sla`):
/// the SQLite file without its lock, or PostgreSQL without migrating it.
/// Either must have been initialised by `skyrules run` first.
pub async fn open_read_only(
    state_path: &Path,
    state_url: Option<&str>,
) -> Result<Arc<dyn Store>, StoreError> {
    match state_url {
        Some(url) => Ok(Arc::new(PgStore::connect_read_only(url).await?)),
        None => open_file(state_path, SqliteStore::open_read_only).await,
    }
}

/// Runs one of SQLite's opens on a blocking thread.
async fn open_file(
    path: &Path,
    open: fn(&Path) -> Result<SqliteStore, StoreError>,
) -> Result<Arc<dyn Store>, StoreError> {
    let owned = path.to_path_buf();
    match tokio::task::spawn_blocking(move || open(&owned)).await {
        Ok(store) => Ok(Arc::new(store?)),
        Err(e) => Err(StoreError::Io {
            path: path.display().to_string(),
            message: format!("opening the state file failed: {e}"),
        }),
    }
}

/// Every workspace's rows, as stored (JSON texts, timestamps as
/// [`crate::api::format_ts`] writes them): what `skyrules state copy`
/// moves from a SQLite file into PostgreSQL.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Dump {
    /// By workspace name, in name order.
    pub workspaces: Vec<WorkspaceDump>,
}

/// One workspace's rows.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct WorkspaceDump {
    /// The workspace.
    pub name: String,
    /// `meta` rows (key, value): the baselined flag.
    pub meta: Vec<(String, String)>,
    /// Sessions (id, tracked JSON, ended at), tracked and ended.
    pub sessions: Vec<(String, String, Option<String>)>,
    /// Rule memory (session id, rule, JSON).
    pub memory: Vec<(String, String, String)>,
    /// Journaled events, oldest first.
    pub journal: Vec<JournalRow>,
    /// Actions with their outcomes, oldest first.
    pub actions: Vec<ActionRow>,
    /// Decision-trace steps (session id, seq, rule set, step JSON).
    pub trace: Vec<(String, i64, String, String)>,
    /// The rule sets the steps name (version, rules JSON).
    pub rule_sets: Vec<(String, String)>,
}

/// One journaled event, as stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JournalRow {
    pub key: String,
    pub session_id: String,
    pub event: String,
    pub context: String,
}

/// One action, as stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ActionRow {
    pub key: String,
    pub at: String,
    pub rule: String,
    pub session_id: String,
    pub event: String,
    pub action: String,
    pub text: Option<String>,
    pub outcome: Option<String>,
    pub detail: Option<String>,
}
