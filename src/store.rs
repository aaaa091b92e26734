//! The state store: what the engine must remember between polls and across
//! restarts — per-session snapshots and message cursors, fired timers, rule
//! memory, and the audit log of every action.
//!
//! Owns: the [`Store`] interface and the in-memory implementation. The
//! watcher and the rules never see a store; the engine loads from it at
//! start and commits one [`Batch`] per poll cycle, so a database can replace
//! the in-memory version without touching them.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::api::Timestamp;
use crate::events::Tracked;
use crate::rules::Memory;

/// A state-store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be read or written.
    #[error("state store {path}: {message}")]
    Io {
        /// The state file.
        path: String,
        /// What went wrong and what to do.
        message: String,
    },
}

/// One action, as the audit log keeps it (ids, never texts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When, on the server's clock.
    pub at: Timestamp,
    /// The rule that asked for it.
    pub rule: String,
    /// The session.
    pub session_id: String,
    /// `take_over`, `release`, `reply` or `end`.
    pub action: String,
    /// `taken`, `dry_run`, `skipped`, `capped` or `failed`.
    pub outcome: String,
    /// Why, for anything but `taken`.
    pub detail: Option<String>,
}

/// What the engine knew when it last stopped.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    /// Whether the first-start baseline was taken already.
    pub baselined: bool,
    /// Every tracked session.
    pub sessions: HashMap<String, Tracked>,
}

/// Everything one poll cycle changed, committed together.
#[derive(Debug, Default)]
pub struct Batch {
    /// Set once the first cycle has taken its baseline.
    pub baselined: bool,
    /// New or changed session states.
    pub sessions: Vec<Tracked>,
    /// Sessions no longer tracked (ended and processed).
    pub removed: Vec<String>,
    /// Rule memory writes: (session, rule, memory).
    pub memory: Vec<(String, String, Memory)>,
    /// Actions taken or refused.
    pub audit: Vec<AuditEntry>,
}

/// Durable engine state.
pub trait Store: Send + Sync + 'static {
    /// Reads what the engine needs at start.
    fn load(&self) -> Result<Loaded, StoreError>;
    /// Every rule's memory for one session.
    fn memory(&self, session_id: &str) -> Result<HashMap<String, Memory>, StoreError>;
    /// Applies a batch atomically.
    fn commit(&self, batch: Batch) -> Result<(), StoreError>;
    /// The audit log, oldest first.
    fn audit_log(&self) -> Result<Vec<AuditEntry>, StoreError>;
}

/// State kept in memory only: lost on restart.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    loaded: Loaded,
    memory: HashMap<String, HashMap<String, Memory>>,
    audit: Vec<AuditEntry>,
}

/// Audit entries kept by the in-memory store; older ones are dropped.
const MEMORY_AUDIT_LIMIT: usize = 10_000;

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        Ok(self.lock().loaded.clone())
    }

    fn memory(&self, session_id: &str) -> Result<HashMap<String, Memory>, StoreError> {
        Ok(self
            .lock()
            .memory
            .get(session_id)
            .cloned()
            .unwrap_or_default())
    }

    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.loaded.baselined |= batch.baselined;
        for t in batch.sessions {
            inner
                .loaded
                .sessions
                .insert(t.session.session_id.clone(), t);
        }
        for (session, rule, mem) in batch.memory {
            inner.memory.entry(session).or_default().insert(rule, mem);
        }
        for id in batch.removed {
            inner.loaded.sessions.remove(&id);
            // Memory outlives the session only as long as the session is
            // tracked; an ended chat cannot act again.
            inner.memory.remove(&id);
        }
        inner.audit.extend(batch.audit);
        let excess = inner.audit.len().saturating_sub(MEMORY_AUDIT_LIMIT);
        inner.audit.drain(..excess);
        Ok(())
    }

    fn audit_log(&self) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(self.lock().audit.clone())
    }
}
