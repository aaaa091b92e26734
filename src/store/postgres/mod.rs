//! The PostgreSQL store (`SKYRULES_STATE_URL`): the same tables and the
//! same contract as the SQLite file, every row keyed by workspace, in a
//! database that many workspaces (and, later, many replicas) share.
//!
//! - **Driver.** tokio-postgres through a deadpool pool; no database is
//!   needed at compile time. Connections are checked before reuse
//!   ([`RecyclingMethod::Verified`]), so after a database restart the
//!   broken ones are dropped and the next call opens a fresh one.
//! - **Blocking calls.** [`Store`] is a blocking interface: each call runs
//!   its queries with `Handle::block_on` on the runtime captured by
//!   [`PgStore::connect`]. That is valid from a thread outside the runtime
//!   or from `spawn_blocking` (how the engine and the command line call
//!   every store), and panics from inside an async task (tokio's rule).
//! - **Never hangs, never panics on a lost database.** Connecting gives up
//!   after `connect_timeout` (5 s unless the URL says otherwise), waiting
//!   for a pooled connection after 5 s, and a whole call after 30 s; each
//!   is a [`StoreError::Unavailable`], like a connection dropped mid-call.
//!   The engine keeps what it could not write and tries again.
//! - **Transactions.** Every write (a commit, an intent with its journal,
//!   an outcome, a purge) is one transaction, as in SQLite. A batch's rows
//!   go in one statement per table (`UNNEST` of arrays), not one per row.
//! - **Schema.** Versioned steps in `skyrules_schema`, applied at connect
//!   under a transaction-scoped advisory lock, so two processes starting
//!   together do not race; a database newer than this build is refused.
//!   Timestamps are stored as text in the SQLite file's fixed-width UTC
//!   form, with the `C` collation so that text order is time order.
//! - **TLS** (rustls): `sslmode=disable` never encrypts; `prefer` (the
//!   default) encrypts when the server offers it and `require` insists on
//!   it. Like libpq in those modes, the server's certificate is not
//!   verified (a self-signed one is fine): the link is encrypted against
//!   eavesdroppers, not authenticated. `verify-ca` and `verify-full` are
//!   refused with a message rather than silently weakened.
//! - **Secrets.** The URL's password never appears in a message:
//!   [`Store::location`] and every error name `postgres://user@host/db`.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
};
use tokio_postgres::types::ToSql;

mod leases;

pub(crate) use leases::PgLeases;

use super::rows::{self, BatchRows, TIMER_EVENTS};
use super::{
    ActionRow, AuditEntry, AuditFilter, Batch, Begin, Dump, Intent, JournalRow, Loaded, Pending,
    Store, StoreError, DEFAULT_WORKSPACE,
};
use crate::api::{format_ts, Timestamp};
use crate::rules::Memory;
use crate::trace::TraceRows;
use crate::tracking::Tracked;

/// Schema steps; entry N brings a database from version N to N+1.
const MIGRATIONS: &[&str] = &[
    // 0 → 1: the schema of SQLite version 3, keyed by workspace.
    r#"CREATE TABLE meta (
         workspace TEXT NOT NULL,
         key       TEXT NOT NULL,
         value     TEXT COLLATE "C" NOT NULL,
         PRIMARY KEY (workspace, key)
     );
     CREATE TABLE sessions (
         workspace  TEXT NOT NULL,
         session_id TEXT NOT NULL,
         tracked    TEXT NOT NULL,
         ended_at   TEXT COLLATE "C",
         PRIMARY KEY (workspace, session_id)
     );
     CREATE INDEX sessions_ended ON sessions (workspace, ended_at) WHERE ended_at IS NOT NULL;
     CREATE TABLE memory (
         workspace  TEXT NOT NULL,
         session_id TEXT NOT NULL,
         rule       TEXT NOT NULL,
         value      TEXT NOT NULL,
         PRIMARY KEY (workspace, session_id, rule)
     );
     CREATE TABLE actions (
         id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         workspace  TEXT NOT NULL,
         key        TEXT COLLATE "C" NOT NULL,
         at         TEXT COLLATE "C" NOT NULL,
         rule       TEXT COLLATE "C" NOT NULL,
         session_id TEXT NOT NULL,
         event      TEXT NOT NULL,
         action     TEXT NOT NULL,
         text       TEXT,
         outcome    TEXT,
         detail     TEXT,
         UNIQUE (workspace, key)
     );
     CREATE INDEX actions_session ON actions (workspace, session_id);
     CREATE INDEX actions_pending ON actions (workspace, id) WHERE outcome IS NULL;
     CREATE INDEX actions_at ON actions (workspace, at);
     CREATE TABLE journal (
         seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
         workspace  TEXT NOT NULL,
         key        TEXT NOT NULL,
         session_id TEXT NOT NULL,
         event      TEXT NOT NULL,
         context    TEXT NOT NULL,
         UNIQUE (workspace, key)
     );
     CREATE INDEX journal_session ON journal (workspace, session_id);"#,
    // 1 → 2: replicas (SPEC §7): one lease per workspace and one heartbeat
    // per replica, both expiring on the database's clock, the only clock
    // every replica shares. `released`: given up at SIGTERM, so the next
    // holder need not wait for an old request to land.
    r#"CREATE TABLE leases (
         workspace  TEXT PRIMARY KEY,
         holder     TEXT NOT NULL,
         epoch      BIGINT NOT NULL,
         expires_at TIMESTAMPTZ NOT NULL,
         released   BOOLEAN NOT NULL DEFAULT false
     );
     CREATE TABLE replicas (
         replica    TEXT PRIMARY KEY,
         expires_at TIMESTAMPTZ NOT NULL,
         workspaces TEXT[] NOT NULL
     );"#,
    // 2 → 3: the decision trace (SPEC §8), as in SQLite version 4.
    r#"CREATE TABLE trace (
         workspace  TEXT NOT NULL,
         session_id TEXT NOT NULL,
         seq        BIGINT NOT NULL,
         rule_set   TEXT NOT NULL,
         step       TEXT NOT NULL,
         PRIMARY KEY (workspace, session_id, seq)
     );
     CREATE TABLE rule_sets (
         workspace TEXT NOT NULL,
         version   TEXT NOT NULL,
         rules     TEXT NOT NULL,
         PRIMARY KEY (workspace, version)
     );"#,
];

/// The newest schema version this build knows.
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The advisory lock key that serialises migrations ("skyrules" in ASCII).
const MIGRATION_LOCK: i64 = 0x736b_7972_756c_6573;

/// How long to wait for a new connection, unless the URL sets
/// `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for a pooled connection (all busy, or being made).
const POOL_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest one store call may take before it counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Sessions in a commit past which its connection is closed afterwards
/// rather than pooled: 9.1 → 4.3 KiB resident per tracked chat at 10
/// workspaces × 1,000 chats (BENCHMARKS.md, "Many workspaces").
const LARGE_COMMIT: usize = 200;
/// How long the server lets one of our transactions sit idle before it
/// ends it (and releases its locks).
const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(5);
/// Connections kept: one per workspace busy at once is plenty.
const POOL_SIZE: usize = 16;

/// What to check when the database cannot be reached at start.
const CONNECT_HINT: &str =
    "is it running, and is the state URL (SKYRULES_STATE_URL or engine.state_url_file) right?";
/// What happens when it cannot be reached later.
const RUNTIME_HINT: &str = "skyrules keeps what it has not written and tries again";

/// State in PostgreSQL: one workspace's view of a shared pool.
pub struct PgStore {
    workspace: String,
    shared: Arc<Shared>,
    // The lease every write of this view must still hold (holder, epoch):
    // checked in the write's own transaction, under a row lock a takeover
    // waits for. `None`: a single replica, no lease.
    fence: Option<Arc<(String, i64)>>,
}

/// What every workspace's view shares.
struct Shared {
    pool: Pool,
    handle: tokio::runtime::Handle,
    location: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("location", &self.shared.location)
            .field("workspace", &self.workspace)
            .finish()
    }
}

impl PgStore {
    /// Connects to the database at `url` for the engine: builds the pool,
    /// checks a connection can be made, and migrates the schema. The view
    /// is workspace `default`; its calls run on the current runtime.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let store = PgStore::reach(url, POOL_SIZE).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to read (`audit`, `sla`): nothing is migrated, and a
    /// database `skyrules run` has not initialised is refused.
    pub(crate) async fn connect_read_only(url: &str) -> Result<PgStore, StoreError> {
        let store = PgStore::reach(url, POOL_SIZE).await?;
        let client = store.client().await?;
        let version = schema_version(&client).await.map_err(|e| store.pg(e))?;
        match version {
            Some(v) if v > SCHEMA_VERSION => Err(store.too_new(v)),
            Some(v) if v == SCHEMA_VERSION => Ok(store),
            _ => Err(StoreError::Io {
                path: store.shared.location.clone(),
                message: "holds no skyrules state yet (not initialised by `skyrules run`)".into(),
            }),
        }
    }

    /// Builds a pool of `size` and makes one connection.
    async fn reach(url: &str, size: usize) -> Result<PgStore, StoreError> {
        let (config, location) = parse_url(url)?;
        let manager = Manager::from_config(
            config,
            tls()?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            // Making a connection is bounded by its own connect timeout;
            // this also bounds the authentication after it.
            .create_timeout(Some(CONNECT_TIMEOUT + POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Io {
                path: location.clone(),
                message: format!("cannot set up the connection pool: {e}"),
            })?;
        let store = PgStore {
            workspace: DEFAULT_WORKSPACE.to_string(),
            shared: Arc::new(Shared {
                pool,
                handle: tokio::runtime::Handle::current(),
                location,
            }),
            fence: None,
        };
        if let Err(e) = store.shared.pool.get().await {
            return Err(StoreError::Unavailable {
                location: store.shared.location.clone(),
                message: format!("{}; {CONNECT_HINT}", pool_cause(&e)),
            });
        }
        Ok(store)
    }

    /// Brings the schema to [`SCHEMA_VERSION`], one transaction under the
    /// migration lock.
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.pg(e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| self.pg(e))?;
        let found = schema_version(&tx).await.map_err(|e| self.pg(e))?;
        if found.is_none() {
            tx.batch_execute(
                "CREATE TABLE skyrules_schema (version BIGINT NOT NULL);
                 INSERT INTO skyrules_schema (version) VALUES (0);",
            )
            .await
            .map_err(|e| self.pg(e))?;
        }
        let version = found.unwrap_or(0);
        if version > SCHEMA_VERSION {
            return Err(self.too_new(version));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(sql).await.map_err(|e| self.pg(e))?;
            let next = (i + 1) as i64;
            tx.execute("UPDATE skyrules_schema SET version = $1", &[&next])
                .await
                .map_err(|e| self.pg(e))?;
            tracing::info!(location = %self.shared.location, version = next, "state schema migrated");
        }
        tx.commit().await.map_err(|e| self.pg(e))
    }

    /// Copies a dump in, in one transaction, into workspaces that hold no
    /// state here; if any does, nothing is written.
    pub(crate) fn import(&self, dump: &Dump) -> Result<(), StoreError> {
        self.call(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.pg(e))?;
            let names: Vec<&str> = dump.workspaces.iter().map(|w| w.name.as_str()).collect();
            let taken = query(
                &tx,
                "SELECT workspace FROM meta WHERE workspace = ANY($1)
                 UNION SELECT workspace FROM sessions WHERE workspace = ANY($1)
                 UNION SELECT workspace FROM memory WHERE workspace = ANY($1)
                 UNION SELECT workspace FROM journal WHERE workspace = ANY($1)
                 UNION SELECT workspace FROM actions WHERE workspace = ANY($1)
                 UNION SELECT workspace FROM trace WHERE workspace = ANY($1)
                 ORDER BY 1",
                &[&names],
            )
            .await
            .map_err(|e| self.pg(e))?;
            if !taken.is_empty() {
                return Err(StoreError::Occupied {
                    location: self.shared.location.clone(),
                    workspaces: taken
                        .iter()
                        .map(|r| r.get::<_, String>(0))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            for w in &dump.workspaces {
                let ws = w.name.as_str();
                for (key, value) in &w.meta {
                    execute(
                        &tx,
                        "INSERT INTO meta (workspace, key, value) VALUES ($1, $2, $3)",
                        &[&ws, key, value],
                    )
                    .await
                    .map_err(|e| self.pg(e))?;
                }
                upsert_sessions(&tx, ws, &w.sessions)
                    .await
                    .map_err(|e| self.pg(e))?;
                upsert_memory(&tx, ws, &w.memory)
                    .await
                    .map_err(|e| self.pg(e))?;
                insert_journal(&tx, ws, &w.journal)
                    .await
                    .map_err(|e| self.pg(e))?;
                insert_actions(&tx, ws, &w.actions)
                    .await
                    .map_err(|e| self.pg(e))?;
                copy_trace(&tx, ws, &w.trace, &w.rule_sets)
                    .await
                    .map_err(|e| self.pg(e))?;
            }
            tx.commit().await.map_err(|e| self.pg(e))
        })
    }

    /// Runs one call's queries on the captured runtime, bounded by
    /// [`CALL_TIMEOUT`].
    fn call<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.shared.handle.block_on(async {
            match tokio::time::timeout(CALL_TIMEOUT, work).await {
                Ok(result) => result,
                Err(_) => Err(self.unavailable(format!("no answer within {CALL_TIMEOUT:?}"))),
            }
        })
    }

    /// A pooled connection.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.shared.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => self.pg(e),
            e @ (PoolError::Timeout(_) | PoolError::PostCreateHook(_)) => {
                self.unavailable(pool_cause(&e))
            }
            e => StoreError::Io {
                path: self.shared.location.clone(),
                message: e.to_string(),
            },
        })
    }

    /// Writes a batch's rows inside the caller's transaction.
    async fn write_in(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        rows: &BatchRows,
    ) -> Result<(), tokio_postgres::Error> {
        let ws = self.workspace.as_str();
        if let Some(at) = &rows.baselined {
            execute(
                tx,
                "INSERT INTO meta (workspace, key, value) VALUES ($1, 'baselined', $2)
                 ON CONFLICT DO NOTHING",
                &[&ws, at],
            )
            .await?;
        }
        upsert_sessions(tx, ws, &rows.sessions).await?;
        insert_journal(tx, ws, &rows.journal).await?;
        upsert_memory(tx, ws, &rows.memory).await?;
        if !rows.done.is_empty() {
            execute(
                tx,
                "DELETE FROM journal WHERE workspace = $1 AND key = ANY($2)",
                &[&ws, &rows.done],
            )
            .await?;
        }
        append_trace(tx, ws, rows).await
    }

    fn rows_of(&self, batch: &Batch) -> Result<BatchRows, StoreError> {
        BatchRows::new(batch).map_err(|e| StoreError::Io {
            path: self.shared.location.clone(),
            message: format!(
                "cannot encode the state of workspace {}: {e}",
                self.workspace
            ),
        })
    }

    /// A driver error as a store error: the connection's failures are
    /// [`StoreError::Unavailable`], the database's refusals are I/O errors.
    fn pg(&self, e: tokio_postgres::Error) -> StoreError {
        let message = chain(&e);
        let lost = match e.as_db_error() {
            // Connection exceptions, and the server shutting down or
            // starting up.
            Some(db) => {
                let code = db.code().code();
                code.starts_with("08") || code.starts_with("57P")
            }
            None => {
                e.is_closed()
                    || std::iter::successors(std::error::Error::source(&e), |s| s.source())
                        .any(|s| s.is::<std::io::Error>())
            }
        };
        if lost {
            self.unavailable(message)
        } else {
            StoreError::Io {
                path: self.shared.location.clone(),
                message: format!("workspace {}: {message}", self.workspace),
            }
        }
    }

    fn unavailable(&self, cause: String) -> StoreError {
        StoreError::Unavailable {
            location: self.shared.location.clone(),
            message: format!("{cause}; {RUNTIME_HINT}"),
        }
    }

    fn too_new(&self, found: i64) -> StoreError {
        StoreError::TooNew {
            path: self.shared.location.clone(),
            found,
            known: SCHEMA_VERSION,
        }
    }
}

impl Store for PgStore {
    fn workspace(&self, name: &str) -> Arc<dyn Store> {
        Arc::new(PgStore {
            workspace: name.to_string(),
            shared: self.shared.clone(),
            fence: None,
        })
    }

    fn location(&self) -> String {
        self.shared.location.clone()
    }

    fn load(&self) -> Result<Loaded, StoreError> {
        self.call(async {
            let client = self.client().await?;
            let ws = self.workspace.as_str();
            let baselined = query(
                &client,
                "SELECT 1 FROM meta WHERE workspace = $1 AND key = 'baselined'",
                &[&ws],
            )
            .await
            .map_err(|e| self.pg(e))?;
            let found = query(
                &client,
                "SELECT session_id, tracked FROM sessions WHERE workspace = $1 AND ended_at IS NULL",
                &[&ws],
            )
            .await
            .map_err(|e| self.pg(e))?;
            Ok(Loaded {
                baselined: !baselined.is_empty(),
                sessions: rows::sessions(found.iter().map(|r| (r.get(0), r.get(1)))),
            })
        })
    }

    fn memory(
        &self,
        session_id: &str,
    ) -> Result<std::collections::HashMap<String, Memory>, StoreError> {
        self.call(async {
            let client = self.client().await?;
            let found = query(
                &client,
                "SELECT rule, value FROM memory WHERE workspace = $1 AND session_id = $2",
                &[&self.workspace, &session_id],
            )
            .await
            .map_err(|e| self.pg(e))?;
            Ok(rows::memory(found.iter().map(|r| (r.get(0), r.get(1)))))
        })
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let rows = self.rows_of(batch)?;
        let large = batch.sessions.len() + batch.ended.len() > LARGE_COMMIT;
        self.call(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.pg(e))?;
            self.check_fence(&tx).await?;
            self.write_in(&tx, &rows).await.map_err(|e| self.pg(e))?;
            tx.commit().await.map_err(|e| self.pg(e))?;
            if large {
                // The connection's buffers keep the size of the largest
                // message it sent (a baseline's thousand sessions, some
                // MiB) for as long as it lives: closed, not pooled.
                drop(deadpool_postgres::Object::take(client));
            }
            Ok(())
        })
    }

    fn pending_events(&self) -> Result<Vec<Pending>, StoreError> {
        self.call(async {
            let client = self.client().await?;
            let found = query(
                &client,
                "SELECT session_id, event, context FROM journal WHERE workspace = $1 ORDER BY seq",
                &[&self.workspace],
            )
            .await
            .map_err(|e| self.pg(e))?;
            Ok(rows::pending(
                found.iter().map(|r| (r.get(0), r.get(1), r.get(2))),
            ))
        })
    }

    fn begin_action(&self, intent: &Intent, journal: Option<&Batch>) -> Result<Begin, StoreError> {
        let rows = journal.map(|b| self.rows_of(b)).transpose()?;
        let at = format_ts(&intent.at);
        self.call(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.pg(e))?;
            self.check_fence(&tx).await?;
            if let Some(rows) = &rows {
                self.write_in(&tx, rows).await.map_err(|e| self.pg(e))?;
            }
            let inserted = query(
                &tx,
                "INSERT INTO actions (workspace, key, at, rule, session_id, event, action, text)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (workspace, key) DO NOTHING RETURNING id",
                &[
                    &self.workspace,
                    &intent.key,
                    &at,
                    &intent.rule,
                    &intent.session_id,
                    &intent.event,
                    &intent.action,
                    &intent.text,
                ],
            )
            .await
            .map_err(|e| self.pg(e))?;
            let result = if !inserted.is_empty() {
                Begin::New
            } else {
                let found = query(
                    &tx,
                    &format!(
                        "SELECT {} FROM actions WHERE workspace = $1 AND key = $2",
                        rows::ACTION_COLUMNS
                    ),
                    &[&self.workspace, &intent.key],
                )
                .await
                .map_err(|e| self.pg(e))?;
                let r = found.first().ok_or_else(|| StoreError::Io {
                    path: self.shared.location.clone(),
                    message: format!(
                        "workspace {}: the intent {} neither inserted nor found",
                        self.workspace, intent.key
                    ),
                })?;
                rows::existing(action_row(r))
            };
            tx.commit().await.map_err(|e| self.pg(e))?;
            Ok(result)
        })
    }

    fn finish_action(
        &self,
        key: &str,
        outcome: &str,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        self.call(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.pg(e))?;
            self.check_fence(&tx).await?;
            execute(
                &tx,
                "UPDATE actions SET outcome = $3, detail = $4, text = NULL
                 WHERE workspace = $1 AND key = $2",
                &[&self.workspace, &key, &outcome, &detail],
            )
            .await
            .map_err(|e| self.pg(e))?;
            tx.commit().await.map_err(|e| self.pg(e))
        })
    }

    fn pending_actions(&self) -> Result<Vec<Intent>, StoreError> {
        self.call(async {
            let client = self.client().await?;
            let found = query(
                &client,
                &format!(
                    "SELECT {} FROM actions WHERE workspace = $1 AND outcome IS NULL ORDER BY id",
                    rows::ACTION_COLUMNS
                ),
                &[&self.workspace],
            )
            .await
            .map_err(|e| self.pg(e))?;
            Ok(found.iter().map(|r| action_row(r).into_intent()).collect())
        })
    }

    fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let since = filter.since.as_ref().map(format_ts);
        self.call(async {
            let client = self.client().await?;
            let found = query(
                &client,
                &format!(
                    "SELECT {} FROM actions
                     WHERE workspace = $1
                       AND ($2::text IS NULL OR session_id = $2) AND ($3::text IS NULL OR rule = $3)
                       AND ($4::text IS NULL OR at >= $4)
                     ORDER BY id",
                    rows::ACTION_COLUMNS
                ),
                &[&self.workspace, &filter.session_id, &filter.rule, &since],
            )
            .await
            .map_err(|e| self.pg(e))?;
            Ok(found
                .iter()
                .map(|r| action_row(r).into_audit_entry())
                .collect())
        })
    }

    fn sessions_since(&self, since: Timestamp) -> Result<Vec<Tracked>, StoreError> {
        self.call(async {
            let client = self.client().await?;
            let found = query(
                &client,
                "SELECT tracked FROM sessions WHERE workspace = $1",
                &[&self.workspace],
            )
            .await
            .map_err(|e| self.pg(e))?;
            Ok(rows::created_since(found.iter().map(|r| r.get(0)), since))
        })
    }

    fn timer_breaches(
        &self,
        since: Timestamp,
    ) -> Result<Vec<(String, chrono::NaiveDate, u64)>, StoreError> {
        let since = format_ts(&since);
        let events: Vec<&str> = TIMER_EVENTS.to_vec();
        self.call(async {
            let client = self.client().await?;
            // One row per occurrence: the first action (index 0) of each
            // timer event a rule acted on; the day is the UTC date the
            // stored time starts with.
            let found = query(
                &client,
                "SELECT rule, substr(at, 1, 10) AS day, count(*) FROM actions
                 WHERE workspace = $1 AND event = ANY($2)
                   AND key LIKE '%|0' AND at >= $3
                 GROUP BY rule, day ORDER BY day, rule",
                &[&self.workspace, &events, &since],
            )
            .await
            .map_err(|e| self.pg(e))?;
            Ok(rows::breaches(
                found.iter().map(|r| (r.get(0), r.get(1), r.get(2))),
            ))
        })
    }

    fn latest_action_at(&self) -> Result<Option<Timestamp>, StoreError> {
        self.call(async {
            let client = self.client().await?;
            let found = query(
                &client,
                "SELECT max(at) FROM actions WHERE workspace = $1",
                &[&self.workspace],
            )
            .await
            .map_err(|e| self.pg(e))?;
            let newest: Option<String> = found.first().and_then(|r| r.get(0));
            Ok(newest.as_deref().and_then(crate::api::parse_ts))
        })
    }

    fn purge(&self, before: Timestamp) -> Result<usize, StoreError> {
        let cutoff = format_ts(&before);
        self.call(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.pg(e))?;
            self.check_fence(&tx).await?;
            let ws = self.workspace.as_str();
            for sql in [
                "DELETE FROM memory WHERE workspace = $1 AND session_id IN
                     (SELECT session_id FROM sessions
                      WHERE workspace = $1 AND ended_at IS NOT NULL AND ended_at < $2)",
                "DELETE FROM trace WHERE workspace = $1 AND session_id IN
                     (SELECT session_id FROM sessions
                      WHERE workspace = $1 AND ended_at IS NOT NULL AND ended_at < $2)",
            ] {
                execute(&tx, sql, &[&ws, &cutoff])
                    .await
                    .map_err(|e| self.pg(e))?;
            }
            let n = execute(
                &tx,
                "DELETE FROM sessions WHERE workspace = $1 AND ended_at IS NOT NULL AND ended_at < $2",
                &[&ws, &cutoff],
            )
            .await
            .map_err(|e| self.pg(e))?;
            // Rule sets no step names any more (a commit that names one
            // again writes it again).
            execute(
                &tx,
                "DELETE FROM rule_sets r WHERE r.workspace = $1 AND NOT EXISTS
                     (SELECT 1 FROM trace t WHERE t.workspace = $1 AND t.rule_set = r.version)",
                &[&ws],
            )
            .await
            .map_err(|e| self.pg(e))?;
            tx.commit().await.map_err(|e| self.pg(e))?;
            Ok(n as usize)
        })
    }

    fn trace(&self, session_id: &str) -> Result<Option<TraceRows>, StoreError> {
        self.call(async {
            let mut client = self.client().await?;
            // One snapshot: a commit between the reads cannot name a rule
            // set the second read misses.
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(|e| self.pg(e))?;
            let known = query(
                &tx,
                "SELECT 1 FROM sessions WHERE workspace = $1 AND session_id = $2",
                &[&self.workspace, &session_id],
            )
            .await
            .map_err(|e| self.pg(e))?;
            if known.is_empty() {
                return Ok(None);
            }
            let steps = query(
                &tx,
                "SELECT rule_set, step FROM trace WHERE workspace = $1 AND session_id = $2
                 ORDER BY seq",
                &[&self.workspace, &session_id],
            )
            .await
            .map_err(|e| self.pg(e))?;
            let sets = query(
                &tx,
                "SELECT version, rules FROM rule_sets WHERE workspace = $1 AND version IN
                     (SELECT rule_set FROM trace WHERE workspace = $1 AND session_id = $2)",
                &[&self.workspace, &session_id],
            )
            .await
            .map_err(|e| self.pg(e))?;
            tx.commit().await.map_err(|e| self.pg(e))?;
            Ok(Some(TraceRows {
                steps: steps.iter().map(|r| (r.get(0), r.get(1))).collect(),
                rule_sets: sets.iter().map(|r| (r.get(0), r.get(1))).collect(),
            }))
        })
    }
}

/// Runs a cached statement.
async fn query(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let statement = c.prepare_cached(sql).await?;
    c.query(&statement, params).await
}

/// Runs a cached statement; returns the rows it changed.
async fn execute(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let statement = c.prepare_cached(sql).await?;
    c.execute(&statement, params).await
}

/// Upserts (session id, tracked, ended at) rows, one per session.
async fn upsert_sessions(
    c: &impl GenericClient,
    ws: &str,
    sessions: &[(String, String, Option<String>)],
) -> Result<(), tokio_postgres::Error> {
    if sessions.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = sessions.iter().map(|s| s.0.as_str()).collect();
    let tracked: Vec<&str> = sessions.iter().map(|s| s.1.as_str()).collect();
    let ended: Vec<Option<&str>> = sessions.iter().map(|s| s.2.as_deref()).collect();
    execute(
        c,
        "INSERT INTO sessions (workspace, session_id, tracked, ended_at)
         SELECT $1::text, * FROM UNNEST($2::text[], $3::text[], $4::text[])
         ON CONFLICT (workspace, session_id)
         DO UPDATE SET tracked = EXCLUDED.tracked, ended_at = EXCLUDED.ended_at",
        &[&ws, &ids, &tracked, &ended],
    )
    .await?;
    Ok(())
}

/// Upserts (session id, rule, value) rows, one per pair.
async fn upsert_memory(
    c: &impl GenericClient,
    ws: &str,
    memory: &[(String, String, String)],
) -> Result<(), tokio_postgres::Error> {
    if memory.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = memory.iter().map(|m| m.0.as_str()).collect();
    let rules: Vec<&str> = memory.iter().map(|m| m.1.as_str()).collect();
    let values: Vec<&str> = memory.iter().map(|m| m.2.as_str()).collect();
    execute(
        c,
        "INSERT INTO memory (workspace, session_id, rule, value)
         SELECT $1::text, * FROM UNNEST($2::text[], $3::text[], $4::text[])
         ON CONFLICT (workspace, session_id, rule) DO UPDATE SET value = EXCLUDED.value",
        &[&ws, &ids, &rules, &values],
    )
    .await?;
    Ok(())
}

/// Appends decision-trace steps after each session's newest, writes the
/// rule sets they name, and trims each session to the steps it keeps.
async fn append_trace(
    c: &impl GenericClient,
    ws: &str,
    rows: &BatchRows,
) -> Result<(), tokio_postgres::Error> {
    if rows.trace.is_empty() {
        return Ok(());
    }
    let versions: Vec<&str> = rows.rule_sets.iter().map(|r| r.0.as_str()).collect();
    let rules: Vec<&str> = rows.rule_sets.iter().map(|r| r.1.as_str()).collect();
    execute(
        c,
        "INSERT INTO rule_sets (workspace, version, rules)
         SELECT $1::text, * FROM UNNEST($2::text[], $3::text[])
         ON CONFLICT DO NOTHING",
        &[&ws, &versions, &rules],
    )
    .await?;
    let ids: Vec<&str> = rows.trace.iter().map(|t| t.0.as_str()).collect();
    let sets: Vec<&str> = rows.trace.iter().map(|t| t.1.as_str()).collect();
    let bodies: Vec<&str> = rows.trace.iter().map(|t| t.2.as_str()).collect();
    execute(
        c,
        "INSERT INTO trace (workspace, session_id, seq, rule_set, step)
         SELECT $1::text, u.s,
                COALESCE((SELECT MAX(t.seq) FROM trace t
                          WHERE t.workspace = $1 AND t.session_id = u.s), 0)
                    + ROW_NUMBER() OVER (PARTITION BY u.s ORDER BY u.n),
                u.r, u.b
         FROM UNNEST($2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS u (s, r, b, n)",
        &[&ws, &ids, &sets, &bodies],
    )
    .await?;
    let ids: Vec<&str> = rows.trace_keep.iter().map(|t| t.0.as_str()).collect();
    let keep: Vec<i64> = rows.trace_keep.iter().map(|t| t.1).collect();
    execute(
        c,
        "DELETE FROM trace t
         USING (SELECT k.s, MAX(k.keep) AS keep
                FROM UNNEST($2::text[], $3::bigint[]) AS k (s, keep) GROUP BY k.s) k
         WHERE t.workspace = $1 AND t.session_id = k.s
           AND t.seq <= (SELECT MAX(m.seq) FROM trace m
                         WHERE m.workspace = $1 AND m.session_id = k.s) - k.keep",
        &[&ws, &ids, &keep],
    )
    .await?;
    Ok(())
}

/// Journals events in order; a key already journaled keeps its row.
async fn insert_journal(
    c: &impl GenericClient,
    ws: &str,
    journal: &[JournalRow],
) -> Result<(), tokio_postgres::Error> {
    if journal.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = journal.iter().map(|j| j.key.as_str()).collect();
    let ids: Vec<&str> = journal.iter().map(|j| j.session_id.as_str()).collect();
    let events: Vec<&str> = journal.iter().map(|j| j.event.as_str()).collect();
    let contexts: Vec<&str> = journal.iter().map(|j| j.context.as_str()).collect();
    execute(
        c,
        "INSERT INTO journal (workspace, key, session_id, event, context)
         SELECT $1::text, k, s, e, c
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS j (k, s, e, c, n)
         ORDER BY n
         ON CONFLICT (workspace, key) DO NOTHING",
        &[&ws, &keys, &ids, &events, &contexts],
    )
    .await?;
    Ok(())
}

/// Inserts a copy's decision trace as it was numbered, and its rule sets.
async fn copy_trace(
    c: &impl GenericClient,
    ws: &str,
    trace: &[(String, i64, String, String)],
    rule_sets: &[(String, String)],
) -> Result<(), tokio_postgres::Error> {
    let versions: Vec<&str> = rule_sets.iter().map(|r| r.0.as_str()).collect();
    let rules: Vec<&str> = rule_sets.iter().map(|r| r.1.as_str()).collect();
    execute(
        c,
        "INSERT INTO rule_sets (workspace, version, rules)
         SELECT $1::text, * FROM UNNEST($2::text[], $3::text[])",
        &[&ws, &versions, &rules],
    )
    .await?;
    let ids: Vec<&str> = trace.iter().map(|t| t.0.as_str()).collect();
    let seqs: Vec<i64> = trace.iter().map(|t| t.1).collect();
    let sets: Vec<&str> = trace.iter().map(|t| t.2.as_str()).collect();
    let bodies: Vec<&str> = trace.iter().map(|t| t.3.as_str()).collect();
    execute(
        c,
        "INSERT INTO trace (workspace, session_id, seq, rule_set, step)
         SELECT $1::text, * FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::text[])",
        &[&ws, &ids, &seqs, &sets, &bodies],
    )
    .await?;
    Ok(())
}

/// Inserts actions in order (a copy's; the engine writes one at a time).
async fn insert_actions(
    c: &impl GenericClient,
    ws: &str,
    actions: &[ActionRow],
) -> Result<(), tokio_postgres::Error> {
    if actions.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&ActionRow) -> &str| actions.iter().map(f).collect::<Vec<&str>>();
    let opt = |f: fn(&ActionRow) -> Option<&str>| actions.iter().map(f).collect::<Vec<_>>();
    execute(
        c,
        "INSERT INTO actions
             (workspace, key, at, rule, session_id, event, action, text, outcome, detail)
         SELECT $1::text, k, a, r, s, e, x, t, o, d
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                     $8::text[], $9::text[], $10::text[])
              WITH ORDINALITY AS u (k, a, r, s, e, x, t, o, d, n)
         ORDER BY n",
        &[
            &ws,
            &col(|a| &a.key),
            &col(|a| &a.at),
            &col(|a| &a.rule),
            &col(|a| &a.session_id),
            &col(|a| &a.event),
            &col(|a| &a.action),
            &opt(|a| a.text.as_deref()),
            &opt(|a| a.outcome.as_deref()),
            &opt(|a| a.detail.as_deref()),
        ],
    )
    .await?;
    Ok(())
}

/// The schema version, or `None` before the first migration.
async fn schema_version(c: &impl GenericClient) -> Result<Option<i64>, tokio_postgres::Error> {
    let exists = c
        .query_one("SELECT to_regclass('skyrules_schema') IS NOT NULL", &[])
        .await?;
    if !exists.get::<_, bool>(0) {
        return Ok(None);
    }
    let row = c
        .query_opt("SELECT version FROM skyrules_schema", &[])
        .await?;
    Ok(Some(row.map_or(0, |r| r.get(0))))
}

/// Parses the URL and fills in the timeouts it does not set; returns it
/// with the location shown in messages.
fn parse_url(url: &str) -> Result<(tokio_postgres::Config, String), StoreError> {
    // Before the URL is parsed its password cannot be told from the rest
    // (it may hold '/', '@' or '?'), so these errors name no part of it.
    let shown = "the state URL (SKYRULES_STATE_URL or engine.state_url_file)".to_string();
    if let Some(mode) = query_param(url, "sslmode") {
        if !matches!(mode, "disable" | "prefer" | "require") {
            return Err(StoreError::Io {
                path: shown,
                message: format!(
                    "sslmode={mode} is not supported; use sslmode=require (encrypted, the \
                     server's certificate not verified), prefer (the default) or disable"
                ),
            });
        }
    }
    let mut config: tokio_postgres::Config =
        url.parse()
            .map_err(|e: tokio_postgres::Error| StoreError::Io {
                path: shown.clone(),
                message: format!("not a usable PostgreSQL URL: {}", chain(&e)),
            })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_tcp_user_timeout().is_none() {
        // A write the server never acknowledges fails instead of hanging.
        config.tcp_user_timeout(CALL_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("skyrules");
    }
    // A replica paused (SIGSTOP, a frozen VM) inside a transaction would
    // keep its row locks, a lease's among them, for as long as it sleeps:
    // the server ends such a transaction instead (see `leases`).
    let options = config.get_options().unwrap_or_default();
    if !options.contains("idle_in_transaction_session_timeout") {
        let ours = format!(
            "-c idle_in_transaction_session_timeout={}",
            IDLE_IN_TRANSACTION.as_millis()
        );
        config.options(format!("{options} {ours}").trim());
    }
    let location = location_of(&config);
    Ok((config, location))
}

/// `postgres://user@host[:port]/dbname`: the URL without password or
/// parameters.
fn location_of(config: &tokio_postgres::Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(dir) => dir.display().to_string(),
            };
            // One port for every host, or one per host.
            match ports.get(i).or(ports.first()) {
                Some(&port) if port != 5432 => format!("{host}:{port}"),
                _ => host,
            }
        })
        .collect();
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let db = config.get_dbname().unwrap_or_default();
    format!("postgres://{user}{}/{db}", hosts.join(","))
}

/// A query parameter of the URL, as written.
fn query_param<'a>(url: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = url.split_once('?')?;
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// An [`ActionRow`] from a row of [`rows::ACTION_COLUMNS`].
fn action_row(r: &tokio_postgres::Row) -> ActionRow {
    ActionRow {
        key: r.get(0),
        at: r.get(1),
        rule: r.get(2),
        session_id: r.get(3),
        event: r.get(4),
        action: r.get(5),
        text: r.get(6),
        outcome: r.get(7),
        detail: r.get(8),
    }
}

/// An error with its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    // The server's DETAIL and HINT come on lines of their own; a log line
    // and the `/readyz` body keep to one.
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Why the pool gave no connection.
fn pool_cause(e: &PoolError) -> String {
    match e {
        PoolError::Backend(e) => chain(e),
        PoolError::Timeout(TimeoutType::Wait) => {
            format!("no free connection within {POOL_TIMEOUT:?}")
        }
        PoolError::Timeout(TimeoutType::Create) => "no connection could be made in time".into(),
        PoolError::Timeout(TimeoutType::Recycle) => {
            "a pooled connection did not answer in time".into()
        }
        e => e.to_string(),
    }
}

/// The TLS connector: rustls with ring, encrypting without verifying the
/// server's certificate (see the module doc).
fn tls() -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Io {
            path: "state database".into(),
            message: format!("cannot set up TLS: {e}"),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// Accepts the server's certificate whoever signed it, as libpq's
/// `sslmode=require` does; the handshake's signatures are still checked
/// against it, so the link is encrypted with the key the server showed.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_never_show_the_password() {
        let (_, loc) =
            parse_url("postgres://sky:s3cret@db.example:6543/state?sslmode=require").unwrap();
        assert_eq!(loc, "postgres://sky@db.example:6543/state");
        let (_, loc) = parse_url("postgresql://sky:s3cret@localhost/skyrules").unwrap();
        assert_eq!(loc, "postgres://sky@localhost/skyrules");
        // A password with '/', '@' and '?' in it, unencoded: a URL that
        // cannot be parsed names none of it.
        let e = parse_url("postgres://sky:a/b@c?d@host/db?sslmode=verify-full").unwrap_err();
        assert!(
            !e.to_string().contains("a/b") && !e.to_string().contains("c?d"),
            "{e}"
        );
        let e = parse_url("postgres://sky:s3cret@host/db?sslmode=verify-full").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("sslmode=verify-full is not supported"),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
        let e = parse_url("postgres://sky:s3cret@host/db?bogus=1").unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn timeouts_are_filled_in_unless_given() {
        let (c, _) = parse_url("postgres://u@h/d").unwrap();
        assert_eq!(c.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        let (c, _) = parse_url("postgres://u@h/d?connect_timeout=2").unwrap();
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(2)));
    }
}
