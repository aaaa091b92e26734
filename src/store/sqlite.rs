//! The SQLite store: one file (default `skyrules.db`), WAL mode, schema
//! versioned with migrations that run at open, and an exclusive lock file
//! so that two engines never act on the same state. Every table is keyed
//! by workspace; the views of one file ([`Store::workspace`]) share its
//! connection and its lock.
//!
//! Crash safety: every write is a transaction; with WAL, a process killed
//! at any point leaves the file at the last committed transaction.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::rows::{self, BatchRows, TIMER_EVENTS};
use super::{
    ActionRow, AuditEntry, AuditFilter, Batch, Begin, Dump, Intent, JournalRow, Loaded, Pending,
    Store, StoreError, WorkspaceDump, DEFAULT_WORKSPACE,
};
use crate::api::{format_ts, Timestamp};
use crate::rules::Memory;
use crate::trace::TraceRows;
use crate::tracking::Tracked;

/// Schema migrations; entry N brings a file from version N to N+1.
const MIGRATIONS: &[&str] = &[
    // 0 → 1: the first schema.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE sessions (
         session_id TEXT PRIMARY KEY,
         tracked    TEXT NOT NULL,
         ended_at   TEXT
     );
     CREATE INDEX sessions_ended ON sessions (ended_at);
     CREATE TABLE memory (
         session_id TEXT NOT NULL,
         rule       TEXT NOT NULL,
         value      TEXT NOT NULL,
         PRIMARY KEY (session_id, rule)
     );
     CREATE TABLE actions (
         id         INTEGER PRIMARY KEY AUTOINCREMENT,
         key        TEXT NOT NULL UNIQUE,
         at         TEXT NOT NULL,
         rule       TEXT NOT NULL,
         session_id TEXT NOT NULL,
         event      TEXT NOT NULL,
         action     TEXT NOT NULL,
         text       TEXT,
         outcome    TEXT,
         detail     TEXT
     );
     CREATE INDEX actions_session ON actions (session_id);
     CREATE INDEX actions_pending ON actions (outcome) WHERE outcome IS NULL;",
    // 1 → 2: the event journal: a cycle's events, kept until handled.
    "CREATE TABLE journal (
         seq        INTEGER PRIMARY KEY AUTOINCREMENT,
         key        TEXT NOT NULL UNIQUE,
         session_id TEXT NOT NULL,
         event      TEXT NOT NULL,
         context    TEXT NOT NULL
     );
     CREATE INDEX journal_session ON journal (session_id);",
    // 2 → 3: every table keyed by workspace; what was there is workspace
    // `default`. SQLite cannot change a primary key in place, so each
    // table is rebuilt (ids and journal order kept).
    "CREATE TABLE meta_v3 (
         workspace TEXT NOT NULL,
         key       TEXT NOT NULL,
         value     TEXT NOT NULL,
         PRIMARY KEY (workspace, key)
     );
     INSERT INTO meta_v3 (workspace, key, value) SELECT 'default', key, value FROM meta;
     DROP TABLE meta;
     ALTER TABLE meta_v3 RENAME TO meta;

     CREATE TABLE sessions_v3 (
         workspace  TEXT NOT NULL,
         session_id TEXT NOT NULL,
         tracked    TEXT NOT NULL,
         ended_at   TEXT,
         PRIMARY KEY (workspace, session_id)
     );
     INSERT INTO sessions_v3 (workspace, session_id, tracked, ended_at)
         SELECT 'default', session_id, tracked, ended_at FROM sessions;
     DROP TABLE sessions;
     ALTER TABLE sessions_v3 RENAME TO sessions;
     CREATE INDEX sessions_ended ON sessions (workspace, ended_at);

     CREATE TABLE memory_v3 (
         workspace  TEXT NOT NULL,
         session_id TEXT NOT NULL,
         rule       TEXT NOT NULL,
         value      TEXT NOT NULL,
         PRIMARY KEY (workspace, session_id, rule)
     );
     INSERT INTO memory_v3 (workspace, session_id, rule, value)
         SELECT 'default', session_id, rule, value FROM memory;
     DROP TABLE memory;
     ALTER TABLE memory_v3 RENAME TO memory;

     CREATE TABLE actions_v3 (
         id         INTEGER PRIMARY KEY AUTOINCREMENT,
         workspace  TEXT NOT NULL,
         key        TEXT NOT NULL,
         at         TEXT NOT NULL,
         rule       TEXT NOT NULL,
         session_id TEXT NOT NULL,
         event      TEXT NOT NULL,
         action     TEXT NOT NULL,
         text       TEXT,
         outcome    TEXT,
         detail     TEXT,
         UNIQUE (workspace, key)
     );
     INSERT INTO actions_v3
         (id, workspace, key, at, rule, session_id, event, action, text, outcome, detail)
         SELECT id, 'default', key, at, rule, session_id, event, action, text, outcome, detail
         FROM actions;
     DROP TABLE actions;
     ALTER TABLE actions_v3 RENAME TO actions;
     CREATE INDEX actions_session ON actions (workspace, session_id);
     CREATE INDEX actions_pending ON actions (workspace, outcome) WHERE outcome IS NULL;
     CREATE INDEX actions_at ON actions (workspace, at);

     CREATE TABLE journal_v3 (
         seq        INTEGER PRIMARY KEY AUTOINCREMENT,
         workspace  TEXT NOT NULL,
         key        TEXT NOT NULL,
         session_id TEXT NOT NULL,
         event      TEXT NOT NULL,
         context    TEXT NOT NULL,
         UNIQUE (workspace, key)
     );
     INSERT INTO journal_v3 (seq, workspace, key, session_id, event, context)
         SELECT seq, 'default', key, session_id, event, context FROM journal;
     DROP TABLE journal;
     ALTER TABLE journal_v3 RENAME TO journal;
     CREATE INDEX journal_session ON journal (workspace, session_id);",
    // 3 → 4: the decision trace (SPEC §8), appended with each cycle's
    // commit, trimmed to the newest steps, purged with the session. A step
    // names the rule set it was decided under, stored once.
    "CREATE TABLE trace (
         workspace  TEXT NOT NULL,
         session_id TEXT NOT NULL,
         seq        INTEGER NOT NULL,
         rule_set   TEXT NOT NULL,
         step       TEXT NOT NULL,
         PRIMARY KEY (workspace, session_id, seq)
     ) WITHOUT ROWID;
     CREATE TABLE rule_sets (
         workspace TEXT NOT NULL,
         version   TEXT NOT NULL,
         rules     TEXT NOT NULL,
         PRIMARY KEY (workspace, version)
     ) WITHOUT ROWID;",
];

/// The newest schema version this build knows.
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// State in a SQLite file: one workspace's view of it.
pub struct SqliteStore {
    path: String,
    workspace: String,
    shared: Arc<Shared>,
}

/// What every workspace's view of one file shares.
struct Shared {
    conn: Mutex<Connection>,
    // Held for the store's lifetime: the OS releases it if the process dies.
    _lock: Option<File>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("workspace", &self.workspace)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the state file for the engine: takes the
    /// exclusive lock, checks the file, and migrates it. The view is
    /// workspace `default`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let shown = path.display().to_string();
        let lock = take_lock(path, &shown)?;
        let conn = Connection::open(path).map_err(|e| corrupt(&shown, &e))?;
        let store = SqliteStore::new(shown, conn, Some(lock));
        store.prepare()?;
        Ok(store)
    }

    /// Opens an existing state file to read it (`skyrules audit`), without
    /// the lock, so it works while an engine runs.
    pub(crate) fn open_read_only(path: &Path) -> Result<SqliteStore, StoreError> {
        let shown = path.display().to_string();
        if !path.exists() {
            return Err(StoreError::Io {
                path: shown,
                message: "no such file; is `engine.state_path` / --state right?".into(),
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| corrupt(&shown, &e))?;
        let store = SqliteStore::new(shown, conn, None);
        let version = store.version()?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: store.path.clone(),
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        if version < SCHEMA_VERSION {
            return Err(StoreError::Io {
                path: store.path.clone(),
                message: "not yet initialised by `skyrules run`".into(),
            });
        }
        Ok(store)
    }

    fn new(path: String, conn: Connection, lock: Option<File>) -> SqliteStore {
        SqliteStore {
            path,
            workspace: DEFAULT_WORKSPACE.to_string(),
            shared: Arc::new(Shared {
                conn: Mutex::new(conn),
                _lock: lock,
            }),
        }
    }

    /// Every workspace's rows, read in one transaction: the source of
    /// `skyrules state copy`.
    pub(crate) fn export(&self) -> Result<Dump, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.io(e))?;
        let mut by_name: BTreeMap<String, WorkspaceDump> = BTreeMap::new();
        let mut read = || -> rusqlite::Result<()> {
            each_row(
                &tx,
                "SELECT workspace, key, value FROM meta ORDER BY workspace, key",
                |r| {
                    let meta = (r.get(1)?, r.get(2)?);
                    dump_of(&mut by_name, r.get(0)?).meta.push(meta);
                    Ok(())
                },
            )?;
            each_row(
                &tx,
                "SELECT workspace, session_id, tracked, ended_at FROM sessions
                 ORDER BY workspace, session_id",
                |r| {
                    let session = (r.get(1)?, r.get(2)?, r.get(3)?);
                    dump_of(&mut by_name, r.get(0)?).sessions.push(session);
                    Ok(())
                },
            )?;
            each_row(
                &tx,
                "SELECT workspace, session_id, rule, value FROM memory
                 ORDER BY workspace, session_id, rule",
                |r| {
                    let memory = (r.get(1)?, r.get(2)?, r.get(3)?);
                    dump_of(&mut by_name, r.get(0)?).memory.push(memory);
                    Ok(())
                },
            )?;
            each_row(
                &tx,
                "SELECT workspace, key, session_id, event, context FROM journal ORDER BY seq",
                |r| {
                    let row = JournalRow {
                        key: r.get(1)?,
                        session_id: r.get(2)?,
                        event: r.get(3)?,
                        context: r.get(4)?,
                    };
                    dump_of(&mut by_name, r.get(0)?).journal.push(row);
                    Ok(())
                },
            )?;
            each_row(
                &tx,
                &format!(
                    "SELECT workspace, {} FROM actions ORDER BY id",
                    rows::ACTION_COLUMNS
                ),
                |r| {
                    let row = action_row(r, 1)?;
                    dump_of(&mut by_name, r.get(0)?).actions.push(row);
                    Ok(())
                },
            )?;
            each_row(
                &tx,
                "SELECT workspace, session_id, seq, rule_set, step FROM trace
                 ORDER BY workspace, session_id, seq",
                |r| {
                    let row = (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
                    dump_of(&mut by_name, r.get(0)?).trace.push(row);
                    Ok(())
                },
            )?;
            each_row(
                &tx,
                "SELECT workspace, version, rules FROM rule_sets ORDER BY workspace, version",
                |r| {
                    let row = (r.get(1)?, r.get(2)?);
                    dump_of(&mut by_name, r.get(0)?).rule_sets.push(row);
                    Ok(())
                },
            )
        };
        read().map_err(|e| self.io(e))?;
        Ok(Dump {
            workspaces: by_name.into_values().collect(),
        })
    }

    /// What the decision trace takes in the file: (bytes of its rows'
    /// columns, steps, sessions in the state). For the load benchmark's
    /// per-session figure.
    pub(crate) fn trace_size(&self) -> Result<(u64, u64, u64), StoreError> {
        let conn = self.conn();
        let (bytes, steps): (i64, i64) = conn
            .query_row(
                "SELECT COALESCE(SUM(length(workspace) + length(session_id) + 8
                                     + length(rule_set) + length(step)), 0),
                        COUNT(*)
                 FROM trace WHERE workspace = ?1",
                [&self.workspace],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.io(e))?;
        let sessions: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sessions WHERE workspace = ?1",
                [&self.workspace],
                |r| r.get(0),
            )
            .map_err(|e| self.io(e))?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok((n(bytes), n(steps), n(sessions)))
    }

    /// Writes a batch inside the caller's transaction.
    fn write_in(&self, tx: &rusqlite::Transaction<'_>, batch: &Batch) -> Result<(), StoreError> {
        let rows = BatchRows::new(batch).map_err(|e| self.io(e))?;
        let ws = &self.workspace;
        if let Some(at) = &rows.baselined {
            tx.execute(
                "INSERT OR IGNORE INTO meta (workspace, key, value) VALUES (?1, 'baselined', ?2)",
                params![ws, at],
            )
            .map_err(|e| self.io(e))?;
        }
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO sessions (workspace, session_id, tracked, ended_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (workspace, session_id) DO UPDATE SET tracked = ?3, ended_at = ?4",
            )
            .map_err(|e| self.io(e))?;
        for (id, json, ended_at) in &rows.sessions {
            upsert
                .execute(params![ws, id, json, ended_at])
                .map_err(|e| self.io(e))?;
        }
        let mut journal = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO journal (workspace, key, session_id, event, context)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(|e| self.io(e))?;
        for j in &rows.journal {
            journal
                .execute(params![ws, j.key, j.session_id, j.event, j.context])
                .map_err(|e| self.io(e))?;
        }
        let mut mem = tx
            .prepare_cached(
                "INSERT INTO memory (workspace, session_id, rule, value) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (workspace, session_id, rule) DO UPDATE SET value = ?4",
            )
            .map_err(|e| self.io(e))?;
        for (session_id, rule, json) in &rows.memory {
            mem.execute(params![ws, session_id, rule, json])
                .map_err(|e| self.io(e))?;
        }
        let mut done = tx
            .prepare_cached("DELETE FROM journal WHERE workspace = ?1 AND key = ?2")
            .map_err(|e| self.io(e))?;
        for k in &rows.done {
            done.execute(params![ws, k]).map_err(|e| self.io(e))?;
        }
        let mut sets = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO rule_sets (workspace, version, rules) VALUES (?1, ?2, ?3)",
            )
            .map_err(|e| self.io(e))?;
        for (version, rules) in &rows.rule_sets {
            sets.execute(params![ws, version, rules])
                .map_err(|e| self.io(e))?;
        }
        let mut step = tx
            .prepare_cached(
                "INSERT INTO trace (workspace, session_id, seq, rule_set, step)
                 VALUES (?1, ?2, COALESCE((SELECT MAX(seq) FROM trace
                                           WHERE workspace = ?1 AND session_id = ?2), 0) + 1,
                         ?3, ?4)",
            )
            .map_err(|e| self.io(e))?;
        for (session_id, set, body) in &rows.trace {
            step.execute(params![ws, session_id, set, body])
                .map_err(|e| self.io(e))?;
        }
        let mut trim = tx
            .prepare_cached(
                "DELETE FROM trace WHERE workspace = ?1 AND session_id = ?2
                 AND seq <= (SELECT MAX(seq) FROM trace WHERE workspace = ?1 AND session_id = ?2) - ?3",
            )
            .map_err(|e| self.io(e))?;
        for (session_id, keep) in &rows.trace_keep {
            trim.execute(params![ws, session_id, keep])
                .map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.shared.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn io(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn version(&self) -> Result<i64, StoreError> {
        self.conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| corrupt(&self.path, &e))
    }

    fn prepare(&self) -> Result<(), StoreError> {
        {
            let conn = self.conn();
            // A file that is not SQLite fails here, before anything writes.
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(|e| corrupt(&self.path, &e))?;
            let check: String = conn
                .query_row("PRAGMA quick_check", [], |r| r.get(0))
                .map_err(|e| corrupt(&self.path, &e))?;
            if check != "ok" {
                return Err(StoreError::Corrupt {
                    path: self.path.clone(),
                    message: check,
                });
            }
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(|e| self.io(e))?;
            // NORMAL in WAL mode survives a killed process; only a power
            // loss can drop the last transactions, never corrupt the file.
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(|e| self.io(e))?;
            conn.pragma_update(None, "busy_timeout", 5000)
                .map_err(|e| self.io(e))?;
        }
        let version = self.version()?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        let mut conn = self.conn();
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction().map_err(|e| self.io(e))?;
            tx.execute_batch(sql).map_err(|e| self.io(e))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(|e| self.io(e))?;
            tx.commit().map_err(|e| self.io(e))?;
            tracing::info!(path = %self.path, version = i + 1, "state schema migrated");
        }
        Ok(())
    }
}

/// The dump of workspace `name`, added if new.
fn dump_of(by_name: &mut BTreeMap<String, WorkspaceDump>, name: String) -> &mut WorkspaceDump {
    by_name
        .entry(name.clone())
        .or_insert_with(|| WorkspaceDump {
            name,
            ..WorkspaceDump::default()
        })
}

fn take_lock(path: &Path, shown: &str) -> Result<File, StoreError> {
    let mut lock_path = PathBuf::from(path);
    let name = format!(
        "{}.lock",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "skyrules.db".into())
    );
    lock_path.set_file_name(name);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::Io {
            path: shown.to_string(),
            message: format!("cannot create the lock file {}: {e}", lock_path.display()),
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: shown.to_string(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Io {
            path: shown.to_string(),
            message: format!("cannot lock {}: {e}", lock_path.display()),
        }),
    }
}

/// Runs `sql` and hands each row to `f`, in order.
fn each_row(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    mut f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare(sql)?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        f(r)?;
    }
    Ok(())
}

/// An [`ActionRow`] from [`rows::ACTION_COLUMNS`], starting at column
/// `from`.
fn action_row(r: &rusqlite::Row<'_>, from: usize) -> rusqlite::Result<ActionRow> {
    Ok(ActionRow {
        key: r.get(from)?,
        at: r.get(from + 1)?,
        rule: r.get(from + 2)?,
        session_id: r.get(from + 3)?,
        event: r.get(from + 4)?,
        action: r.get(from + 5)?,
        text: r.get(from + 6)?,
        outcome: r.get(from + 7)?,
        detail: r.get(from + 8)?,
    })
}

fn corrupt(path: &str, e: &rusqlite::Error) -> StoreError {
    StoreError::Corrupt {
        path: path.to_string(),
        message: e.to_string(),
    }
}

impl Store for SqliteStore {
    fn workspace(&self, name: &str) -> Arc<dyn Store> {
        Arc::new(SqliteStore {
            path: self.path.clone(),
            workspace: name.to_string(),
            shared: self.shared.clone(),
        })
    }

    fn location(&self) -> String {
        self.path.clone()
    }

    fn load(&self) -> Result<Loaded, StoreError> {
        let conn = self.conn();
        let baselined = conn
            .query_row(
                "SELECT value FROM meta WHERE workspace = ?1 AND key = 'baselined'",
                [&self.workspace],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .map_err(|e| self.io(e))?
            .is_some();
        let mut stmt = conn
            .prepare(
                "SELECT session_id, tracked FROM sessions
                 WHERE workspace = ?1 AND ended_at IS NULL",
            )
            .map_err(|e| self.io(e))?;
        let found = stmt
            .query_map([&self.workspace], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.io(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.io(e))?;
        Ok(Loaded {
            baselined,
            sessions: rows::sessions(found),
        })
    }

    fn memory(
        &self,
        session_id: &str,
    ) -> Result<std::collections::HashMap<String, Memory>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "SELECT rule, value FROM memory WHERE workspace = ?1 AND session_id = ?2",
            )
            .map_err(|e| self.io(e))?;
        let found = stmt
            .query_map(params![self.workspace, session_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(|e| self.io(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.io(e))?;
        Ok(rows::memory(found))
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.io(e))?;
        self.write_in(&tx, batch)?;
        tx.commit().map_err(|e| self.io(e))
    }

    fn pending_events(&self) -> Result<Vec<Pending>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT session_id, event, context FROM journal
                 WHERE workspace = ?1 ORDER BY seq",
            )
            .map_err(|e| self.io(e))?;
        let found = stmt
            .query_map([&self.workspace], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| self.io(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.io(e))?;
        Ok(rows::pending(found))
    }

    fn begin_action(&self, intent: &Intent, journal: Option<&Batch>) -> Result<Begin, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.io(e))?;
        if let Some(batch) = journal {
            self.write_in(&tx, batch)?;
        }
        let existing = tx
            .query_row(
                &format!(
                    "SELECT {} FROM actions WHERE workspace = ?1 AND key = ?2",
                    rows::ACTION_COLUMNS
                ),
                params![self.workspace, intent.key],
                |r| action_row(r, 0),
            )
            .optional()
            .map_err(|e| self.io(e))?;
        let result = match existing {
            Some(row) => rows::existing(row),
            None => {
                tx.execute(
                    "INSERT INTO actions (workspace, key, at, rule, session_id, event, action, text)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        self.workspace,
                        intent.key,
                        format_ts(&intent.at),
                        intent.rule,
                        intent.session_id,
                        intent.event,
                        intent.action,
                        intent.text
                    ],
                )
                .map_err(|e| self.io(e))?;
                Begin::New
            }
        };
        tx.commit().map_err(|e| self.io(e))?;
        Ok(result)
    }

    fn finish_action(
        &self,
        key: &str,
        outcome: &str,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE actions SET outcome = ?3, detail = ?4, text = NULL
                 WHERE workspace = ?1 AND key = ?2",
                params![self.workspace, key, outcome, detail],
            )
            .map_err(|e| self.io(e))?;
        Ok(())
    }

    fn pending_actions(&self) -> Result<Vec<Intent>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {} FROM actions WHERE workspace = ?1 AND outcome IS NULL ORDER BY id",
                rows::ACTION_COLUMNS
            ))
            .map_err(|e| self.io(e))?;
        let found = stmt
            .query_map([&self.workspace], |r| {
                action_row(r, 0).map(ActionRow::into_intent)
            })
            .map_err(|e| self.io(e))?;
        found.collect::<Result<Vec<_>, _>>().map_err(|e| self.io(e))
    }

    fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {} FROM actions
                 WHERE workspace = ?1
                   AND (?2 IS NULL OR session_id = ?2) AND (?3 IS NULL OR rule = ?3)
                   AND (?4 IS NULL OR at >= ?4)
                 ORDER BY id",
                rows::ACTION_COLUMNS
            ))
            .map_err(|e| self.io(e))?;
        let since = filter.since.as_ref().map(format_ts);
        let found = stmt
            .query_map(
                params![self.workspace, filter.session_id, filter.rule, since],
                |r| action_row(r, 0).map(ActionRow::into_audit_entry),
            )
            .map_err(|e| self.io(e))?;
        found.collect::<Result<Vec<_>, _>>().map_err(|e| self.io(e))
    }

    fn sessions_since(&self, since: Timestamp) -> Result<Vec<Tracked>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT tracked FROM sessions WHERE workspace = ?1")
            .map_err(|e| self.io(e))?;
        let found = stmt
            .query_map([&self.workspace], |r| r.get::<_, String>(0))
            .map_err(|e| self.io(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.io(e))?;
        Ok(rows::created_since(found, since))
    }

    fn timer_breaches(
        &self,
        since: Timestamp,
    ) -> Result<Vec<(String, chrono::NaiveDate, u64)>, StoreError> {
        let conn = self.conn();
        // One row per occurrence: the first action (index 0) of each
        // timer event a rule acted on.
        let mut stmt = conn
            .prepare(
                "SELECT rule, substr(at, 1, 10), count(*) FROM actions
                 WHERE workspace = ?1 AND event IN (?2, ?3, ?4)
                   AND key LIKE '%|0' AND at >= ?5
                 GROUP BY rule, substr(at, 1, 10) ORDER BY 2, 1",
            )
            .map_err(|e| self.io(e))?;
        let [a, b, c] = TIMER_EVENTS;
        let found = stmt
            .query_map(params![self.workspace, a, b, c, format_ts(&since)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(|e| self.io(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.io(e))?;
        Ok(rows::breaches(found))
    }

    fn latest_action_at(&self) -> Result<Option<Timestamp>, StoreError> {
        // Timestamps are stored in one fixed-width UTC form, so the text's
        // maximum is the latest time.
        let newest: Option<String> = self
            .conn()
            .query_row(
                "SELECT max(at) FROM actions WHERE workspace = ?1",
                [&self.workspace],
                |r| r.get(0),
            )
            .map_err(|e| self.io(e))?;
        Ok(newest.as_deref().and_then(crate::api::parse_ts))
    }

    fn purge(&self, before: Timestamp) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.io(e))?;
        let cutoff = format_ts(&before);
        for table in ["memory", "trace"] {
            tx.execute(
                &format!(
                    "DELETE FROM {table} WHERE workspace = ?1 AND session_id IN
                         (SELECT session_id FROM sessions
                          WHERE workspace = ?1 AND ended_at IS NOT NULL AND ended_at < ?2)"
                ),
                params![self.workspace, cutoff],
            )
            .map_err(|e| self.io(e))?;
        }
        let n = tx
            .execute(
                "DELETE FROM sessions
                 WHERE workspace = ?1 AND ended_at IS NOT NULL AND ended_at < ?2",
                params![self.workspace, cutoff],
            )
            .map_err(|e| self.io(e))?;
        // Rule sets no step names any more (a commit that names one again
        // writes it again).
        tx.execute(
            "DELETE FROM rule_sets WHERE workspace = ?1
             AND version NOT IN (SELECT rule_set FROM trace WHERE workspace = ?1)",
            params![self.workspace],
        )
        .map_err(|e| self.io(e))?;
        tx.commit().map_err(|e| self.io(e))?;
        Ok(n)
    }

    fn trace(&self, session_id: &str) -> Result<Option<TraceRows>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.io(e))?;
        let known = tx
            .query_row(
                "SELECT 1 FROM sessions WHERE workspace = ?1 AND session_id = ?2",
                params![self.workspace, session_id],
                |_| Ok(()),
            )
            .optional()
            .map_err(|e| self.io(e))?;
        if known.is_none() {
            return Ok(None);
        }
        let mut rows = TraceRows::default();
        let mut read = || -> rusqlite::Result<()> {
            let mut stmt = tx.prepare(
                "SELECT rule_set, step FROM trace WHERE workspace = ?1 AND session_id = ?2
                 ORDER BY seq",
            )?;
            rows.steps = stmt
                .query_map(params![self.workspace, session_id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<Result<_, _>>()?;
            let mut stmt = tx.prepare(
                "SELECT version, rules FROM rule_sets WHERE workspace = ?1 AND version IN
                     (SELECT rule_set FROM trace WHERE workspace = ?1 AND session_id = ?2)",
            )?;
            rows.rule_sets = stmt
                .query_map(params![self.workspace, session_id], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<Result<_, _>>()?;
            Ok(())
        };
        read().map_err(|e| self.io(e))?;
        Ok(Some(rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(key: &str) -> Intent {
        Intent {
            key: key.into(),
            at: chrono::Utc::now(),
            rule: "r".into(),
            session_id: "s".into(),
            event: "visitor_message".into(),
            action: "reply".into(),
            text: Some("hello".into()),
        }
    }

    #[test]
    fn migrates_an_empty_file_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        {
            let s = SqliteStore::open(&p).unwrap();
            assert_eq!(s.version().unwrap(), SCHEMA_VERSION);
            assert!(!s.load().unwrap().baselined);
        }
        let s = SqliteStore::open(&p).unwrap();
        assert_eq!(s.version().unwrap(), SCHEMA_VERSION);
    }

    #[test]
    fn a_version_2_file_migrates_in_place_into_workspace_default() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        {
            // The file as the previous release left it.
            let conn = Connection::open(&p).unwrap();
            for sql in &MIGRATIONS[..2] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 2).unwrap();
            let t = serde_json::json!({
                "session": { "session_id": "s1", "created_at": "2026-01-02T03:04:05Z" },
                "cursor": 7, "recent": [], "fired": []
            });
            conn.execute_batch(&format!(
                "INSERT INTO meta (key, value) VALUES ('baselined', '2026-01-02T00:00:00.000000Z');
                 INSERT INTO sessions (session_id, tracked, ended_at) VALUES ('s1', '{t}', NULL);
                 INSERT INTO memory (session_id, rule, value) VALUES ('s1', 'greet', '{{\"greeted\":true}}');
                 INSERT INTO actions (key, at, rule, session_id, event, action, outcome)
                     VALUES ('s1|visitor_message|m1|greet|0', '2026-01-02T03:04:06.000000Z',
                             'greet', 's1', 'visitor_message', 'reply', 'taken');
                 INSERT INTO journal (key, session_id, event, context)
                     VALUES ('k', 's1', 'not json', 'not json');"
            ))
            .unwrap();
        }
        let s = SqliteStore::open(&p).unwrap();
        assert_eq!(s.version().unwrap(), SCHEMA_VERSION);
        let loaded = s.load().unwrap();
        assert!(loaded.baselined);
        assert_eq!(loaded.sessions["s1"].cursor, 7);
        assert_eq!(s.memory("s1").unwrap()["greet"]["greeted"], true);
        let audit = s.audit(&AuditFilter::default()).unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].rule, "greet");
        assert_eq!(s.location(), p.display().to_string());
        // Ids carry on after the copied rows.
        assert_eq!(s.begin_action(&intent("k2"), None).unwrap(), Begin::New);
        let ids: Vec<i64> = s
            .conn()
            .prepare("SELECT id FROM actions ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ids, vec![1, 2]);

        let other = s.workspace("other");
        let loaded = other.load().unwrap();
        assert!(!loaded.baselined);
        assert!(loaded.sessions.is_empty());
        assert!(other.memory("s1").unwrap().is_empty());
        assert!(other.audit(&AuditFilter::default()).unwrap().is_empty());
        assert!(other.latest_action_at().unwrap().is_none());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        Connection::open(&p)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let e = SqliteStore::open(&p).unwrap_err();
        assert!(matches!(e, StoreError::TooNew { .. }), "{e}");
        assert!(e.to_string().contains("upgrade skyrules"), "{e}");
    }

    #[test]
    fn a_second_engine_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        let _first = SqliteStore::open(&p).unwrap();
        let e = SqliteStore::open(&p).unwrap_err();
        assert!(matches!(e, StoreError::Locked { .. }), "{e}");
        assert!(e.to_string().contains("another skyrules"), "{e}");
        // Reading the audit log while it runs is fine.
        SqliteStore::open_read_only(&p).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_an_error_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.db");
        std::fs::write(&p, b"this is not a database, but someone's notes").unwrap();
        let e = SqliteStore::open(&p).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("move it aside"), "{e}");
        assert_eq!(
            std::fs::read(&p).unwrap(),
            b"this is not a database, but someone's notes"
        );
    }

    #[test]
    fn intents_are_recorded_once_and_texts_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        assert_eq!(s.begin_action(&intent("k1"), None).unwrap(), Begin::New);
        match s.begin_action(&intent("k1"), None).unwrap() {
            Begin::Pending(i) => assert_eq!(i.text.as_deref(), Some("hello")),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.pending_actions().unwrap().len(), 1);
        s.finish_action("k1", "taken", None).unwrap();
        assert_eq!(
            s.begin_action(&intent("k1"), None).unwrap(),
            Begin::Done {
                outcome: "taken".into()
            }
        );
        assert!(s.pending_actions().unwrap().is_empty());
        let text: Option<String> = s
            .conn()
            .query_row("SELECT text FROM actions WHERE key = 'k1'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(text, None, "the audit log keeps ids, not texts");
        let audit = s.audit(&AuditFilter::default()).unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].outcome, "taken");
    }
}
