//! The SQLite store: one file (default `skyrules.db`), WAL mode, schema
//! versioned with migrations that run at open, and an exclusive lock file
//! so that two engines never act on the same state.
//!
//! Crash safety: every write is a transaction; with WAL, a process killed
//! at any point leaves the file at the last committed transaction.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::{AuditEntry, AuditFilter, Batch, Begin, Intent, Loaded, Pending, Store, StoreError};
use crate::api::{format_ts, parse_ts, Timestamp};
use crate::rules::Memory;
use crate::tracking::{Event, Tracked};

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
];

/// The newest schema version this build knows.
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// State in a SQLite file.
pub struct SqliteStore {
    path: String,
    conn: Mutex<Connection>,
    // Held for the store's lifetime: the OS releases it if the process dies.
    _lock: Option<File>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the state file for the engine: takes the
    /// exclusive lock, checks the file, and migrates it.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let shown = path.display().to_string();
        let lock = take_lock(path, &shown)?;
        let conn = Connection::open(path).map_err(|e| corrupt(&shown, &e))?;
        let store = SqliteStore {
            path: shown,
            conn: Mutex::new(conn),
            _lock: Some(lock),
        };
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
        let store = SqliteStore {
            path: shown,
            conn: Mutex::new(conn),
            _lock: None,
        };
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

    /// Writes a batch inside the caller's transaction.
    fn write_in(&self, tx: &rusqlite::Transaction<'_>, batch: &Batch) -> Result<(), StoreError> {
        if batch.baselined {
            tx.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('baselined', ?1)",
                [format_ts(&batch.at)],
            )
            .map_err(|e| self.io(e))?;
        }
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO sessions (session_id, tracked, ended_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (session_id) DO UPDATE SET tracked = ?2, ended_at = ?3",
            )
            .map_err(|e| self.io(e))?;
        for t in &batch.sessions {
            let json = serde_json::to_string(t).map_err(|e| self.io(e))?;
            upsert
                .execute(params![t.session.session_id, json, None::<String>])
                .map_err(|e| self.io(e))?;
        }
        let ended_at = format_ts(&batch.at);
        for t in &batch.ended {
            let json = serde_json::to_string(t).map_err(|e| self.io(e))?;
            upsert
                .execute(params![t.session.session_id, json, ended_at])
                .map_err(|e| self.io(e))?;
        }
        let mut journal = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO journal (key, session_id, event, context)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(|e| self.io(e))?;
        for p in &batch.events {
            let context = serde_json::to_string(&p.tracked).map_err(|e| self.io(e))?;
            for e in &p.events {
                let json = serde_json::to_string(e).map_err(|e| self.io(e))?;
                journal
                    .execute(params![e.key(), e.session_id, json, context])
                    .map_err(|e| self.io(e))?;
            }
        }
        for d in &batch.done {
            self.finish_in(tx, &d.session_id, &d.keys, &d.memory)?;
        }
        Ok(())
    }

    /// Takes handled events off the journal and saves rule memory, inside
    /// the caller's transaction.
    fn finish_in(
        &self,
        tx: &rusqlite::Transaction<'_>,
        session_id: &str,
        keys: &[String],
        memory: &[(String, Memory)],
    ) -> Result<(), StoreError> {
        let mut mem = tx
            .prepare_cached(
                "INSERT INTO memory (session_id, rule, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (session_id, rule) DO UPDATE SET value = ?3",
            )
            .map_err(|e| self.io(e))?;
        for (rule, m) in memory {
            let json = serde_json::to_string(m).map_err(|e| self.io(e))?;
            mem.execute(params![session_id, rule, json])
                .map_err(|e| self.io(e))?;
        }
        let mut done = tx
            .prepare_cached("DELETE FROM journal WHERE key = ?1")
            .map_err(|e| self.io(e))?;
        for k in keys {
            done.execute([k]).map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
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

fn corrupt(path: &str, e: &rusqlite::Error) -> StoreError {
    StoreError::Corrupt {
        path: path.to_string(),
        message: e.to_string(),
    }
}

fn ts_col(s: &str) -> Timestamp {
    parse_ts(s).unwrap_or_default()
}

impl Store for SqliteStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let conn = self.conn();
        let baselined = conn
            .query_row("SELECT value FROM meta WHERE key = 'baselined'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .map_err(|e| self.io(e))?
            .is_some();
        let mut stmt = conn
            .prepare("SELECT session_id, tracked FROM sessions WHERE ended_at IS NULL")
            .map_err(|e| self.io(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.io(e))?;
        let mut sessions = HashMap::new();
        for row in rows {
            let (id, json) = row.map_err(|e| self.io(e))?;
            match serde_json::from_str::<Tracked>(&json) {
                Ok(t) => {
                    sessions.insert(id, t);
                }
                Err(e) => {
                    // One unreadable row must not stop the engine: the
                    // session is re-read as new on the next poll.
                    tracing::warn!(session_id = %id, error = %e, "unreadable session state; it will be re-read")
                }
            }
        }
        Ok(Loaded {
            baselined,
            sessions,
        })
    }

    fn memory(&self, session_id: &str) -> Result<HashMap<String, Memory>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT rule, value FROM memory WHERE session_id = ?1")
            .map_err(|e| self.io(e))?;
        let rows = stmt
            .query_map([session_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(|e| self.io(e))?;
        let mut out = HashMap::new();
        for row in rows {
            let (rule, json) = row.map_err(|e| self.io(e))?;
            if let Ok(m) = serde_json::from_str::<Memory>(&json) {
                out.insert(rule, m);
            }
        }
        Ok(out)
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
            .prepare("SELECT session_id, event, context FROM journal ORDER BY seq")
            .map_err(|e| self.io(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(|e| self.io(e))?;
        let mut out: Vec<Pending> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for row in rows {
            let (session_id, event, context) = row.map_err(|e| self.io(e))?;
            let (Ok(event), Ok(tracked)) = (
                serde_json::from_str::<Event>(&event),
                serde_json::from_str::<Tracked>(&context),
            ) else {
                tracing::warn!(session_id = %session_id, "unreadable journaled event; skipped");
                continue;
            };
            match index.get(&session_id) {
                Some(&i) => {
                    out[i].events.push(event);
                    out[i].tracked = tracked;
                }
                None => {
                    index.insert(session_id, out.len());
                    out.push(Pending {
                        tracked,
                        events: vec![event],
                    });
                }
            }
        }
        Ok(out)
    }

    fn begin_action(&self, intent: &Intent, journal: Option<&Batch>) -> Result<Begin, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.io(e))?;
        if let Some(batch) = journal {
            self.write_in(&tx, batch)?;
        }
        let existing = tx
            .query_row(
                "SELECT at, rule, session_id, event, action, text, outcome FROM actions WHERE key = ?1",
                [&intent.key],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, Option<String>>(5)?,
                        r.get::<_, Option<String>>(6)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.io(e))?;
        let result = match existing {
            Some((_, _, _, _, _, _, Some(outcome))) => Begin::Done { outcome },
            Some((at, rule, session_id, event, action, text, None)) => Begin::Pending(Intent {
                key: intent.key.clone(),
                at: ts_col(&at),
                rule,
                session_id,
                event,
                action,
                text,
            }),
            None => {
                tx.execute(
                    "INSERT INTO actions (key, at, rule, session_id, event, action, text)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
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
                "UPDATE actions SET outcome = ?2, detail = ?3, text = NULL WHERE key = ?1",
                params![key, outcome, detail],
            )
            .map_err(|e| self.io(e))?;
        Ok(())
    }

    fn pending_actions(&self) -> Result<Vec<Intent>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT key, at, rule, session_id, event, action, text FROM actions
                 WHERE outcome IS NULL ORDER BY id",
            )
            .map_err(|e| self.io(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Intent {
                    key: r.get(0)?,
                    at: ts_col(&r.get::<_, String>(1)?),
                    rule: r.get(2)?,
                    session_id: r.get(3)?,
                    event: r.get(4)?,
                    action: r.get(5)?,
                    text: r.get(6)?,
                })
            })
            .map_err(|e| self.io(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.io(e))
    }

    fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT at, rule, session_id, event, action, outcome, detail FROM actions
                 WHERE (?1 IS NULL OR session_id = ?1) AND (?2 IS NULL OR rule = ?2)
                   AND (?3 IS NULL OR at >= ?3)
                 ORDER BY id",
            )
            .map_err(|e| self.io(e))?;
        let since = filter.since.as_ref().map(format_ts);
        let rows = stmt
            .query_map(params![filter.session_id, filter.rule, since], |r| {
                Ok(AuditEntry {
                    at: ts_col(&r.get::<_, String>(0)?),
                    rule: r.get(1)?,
                    session_id: r.get(2)?,
                    event: r.get(3)?,
                    action: r.get(4)?,
                    outcome: r
                        .get::<_, Option<String>>(5)?
                        .unwrap_or_else(|| "pending".into()),
                    detail: r.get(6)?,
                })
            })
            .map_err(|e| self.io(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.io(e))
    }

    fn sessions_since(&self, since: Timestamp) -> Result<Vec<Tracked>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT tracked FROM sessions")
            .map_err(|e| self.io(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.io(e))?;
        let mut out = Vec::new();
        for row in rows {
            let json = row.map_err(|e| self.io(e))?;
            if let Ok(t) = serde_json::from_str::<Tracked>(&json) {
                if t.session.created_at.is_some_and(|c| c >= since) {
                    out.push(t);
                }
            }
        }
        Ok(out)
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
                 WHERE event IN ('idle', 'unanswered', 'human_waiting')
                   AND key LIKE '%|0' AND at >= ?1
                 GROUP BY rule, substr(at, 1, 10) ORDER BY 2, 1",
            )
            .map_err(|e| self.io(e))?;
        let rows = stmt
            .query_map([format_ts(&since)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(|e| self.io(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (rule, day, n) = row.map_err(|e| self.io(e))?;
            if let Ok(day) = chrono::NaiveDate::parse_from_str(&day, "%Y-%m-%d") {
                out.push((rule, day, n.max(0) as u64));
            }
        }
        Ok(out)
    }

    fn latest_action_at(&self) -> Result<Option<Timestamp>, StoreError> {
        // Timestamps are stored in one fixed-width UTC form, so the text's
        // maximum is the latest time.
        let newest: Option<String> = self
            .conn()
            .query_row("SELECT max(at) FROM actions", [], |r| r.get(0))
            .map_err(|e| self.io(e))?;
        Ok(newest.as_deref().and_then(crate::api::parse_ts))
    }

    fn purge(&self, before: Timestamp) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.io(e))?;
        let cutoff = format_ts(&before);
        tx.execute(
            "DELETE FROM memory WHERE session_id IN
                 (SELECT session_id FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ?1)",
            [&cutoff],
        )
        .map_err(|e| self.io(e))?;
        let n = tx
            .execute(
                "DELETE FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ?1",
                [&cutoff],
            )
            .map_err(|e| self.io(e))?;
        tx.commit().map_err(|e| self.io(e))?;
        Ok(n)
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
