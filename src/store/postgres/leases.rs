//! Leases and fencing for replicas (SPEC §7), in the tables of schema
//! step 2: `leases` (one row per workspace: holder, epoch, expiry) and
//! `replicas` (one heartbeat per process).
//!
//! - **Clock.** Every expiry is compared with `clock_timestamp()`, the
//!   database's wall clock at that instant; `now()` would be frozen at the
//!   start of the transaction. No replica's own clock is ever compared with
//!   another's.
//! - **Single statements.** Taking a lease is one `INSERT … ON CONFLICT DO
//!   UPDATE … WHERE` free, renewing every held lease one `UPDATE`, so two
//!   replicas racing for a free lease cannot both win: the row lock
//!   serialises them and the loser's `WHERE` no longer matches.
//! - **Fencing.** The epoch is the token. A fenced view's every write runs
//!   [`PgStore::check_fence`] first, in the write's own transaction: `FOR
//!   KEY SHARE` on the lease row, which a takeover's `FOR UPDATE` must wait
//!   for (and the holder's own renewal, a no-key `UPDATE`, need not). So an
//!   old holder's write either lands before the takeover (and the new
//!   holder reads it) or is refused.
//! - **Own connections.** The lease rounds have a pool of their own, so a
//!   burst of state writes (a first baseline across many workspaces) never
//!   makes a renewal wait for a connection.
//! - **Not an advisory lock.** A session-level advisory lock would be held
//!   by a socket, not by a live process: a half-open connection or a
//!   SIGSTOPped holder keeps it and nobody can take over.
//! - **A stopped holder.** A holder paused inside a transaction would keep
//!   its `FOR KEY SHARE` lock; every connection of ours sets
//!   `idle_in_transaction_session_timeout` (see `parse_url`) so the server
//!   ends such a transaction, and a takeover waits at most `lock_timeout`
//!   per try meanwhile.

use std::sync::Arc;
use std::time::Duration;

use super::{execute, query, PgStore};

/// Connections of the lease rounds' own pool.
const LEASE_POOL: usize = 2;

/// The leases of a shared database: rounds on a pool of their own, fenced
/// views on the state's.
pub(crate) struct PgLeases {
    lease: PgStore,
    data: PgStore,
}

impl PgLeases {
    /// Connects to `url` for `skyrules run` with replicas: migrates it and
    /// opens both pools.
    pub(crate) async fn connect(url: &str) -> Result<PgLeases, StoreError> {
        let data = PgStore::connect(url).await?;
        let lease = PgStore::reach(url, LEASE_POOL).await?;
        Ok(PgLeases { lease, data })
    }
}
use crate::store::{Acquired, LeaseRow, LeaseTable, Leases, Store, StoreError};

/// How long a takeover waits for a row lock before it gives up this try.
const LOCK_TIMEOUT_MS: u64 = 1_000;

/// Heartbeats expired longer ago than this are deleted (replicas that
/// left without saying so).
const FORGET_REPLICAS: &str = "1 hour";

impl PgStore {
    /// Inside a write's transaction: fails with [`StoreError::Fenced`]
    /// unless this view's lease is still held, unexpired, at its epoch.
    /// `FOR KEY SHARE` makes a takeover (which locks the row `FOR UPDATE`)
    /// wait until this transaction ends.
    pub(super) async fn check_fence(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
    ) -> Result<(), StoreError> {
        let Some(fence) = &self.fence else {
            return Ok(());
        };
        let (holder, epoch) = (&fence.0, fence.1);
        let held = query(
            tx,
            "SELECT 1 FROM leases WHERE workspace = $1 AND holder = $2 AND epoch = $3
               AND NOT released AND expires_at > clock_timestamp() FOR KEY SHARE",
            &[&self.workspace, holder, &epoch],
        )
        .await
        .map_err(|e| self.pg(e))?;
        if held.is_empty() {
            crate::telemetry::metrics::fenced(&self.workspace, "state write");
            return Err(StoreError::Fenced {
                workspace: self.workspace.clone(),
                epoch,
            });
        }
        Ok(())
    }
}

impl Leases for PgLeases {
    fn tick(
        &self,
        replica: &str,
        held: &[(String, i64)],
        ttl: Duration,
        serves: Option<&[String]>,
    ) -> Result<LeaseTable, StoreError> {
        let secs = ttl.as_secs_f64();
        let (names, epochs): (Vec<&str>, Vec<i64>) =
            held.iter().map(|(w, e)| (w.as_str(), *e)).unzip();
        self.lease.call(async {
            let client = self.lease.client().await?;
            // The heartbeat first, so that it expires just before the
            // leases renewed after it: when this replica dies, the others
            // count it gone by the time its workspaces are free.
            if let Some(serves) = serves {
                execute(
                    &client,
                    "INSERT INTO replicas (replica, expires_at, workspaces)
                     VALUES ($1, clock_timestamp() + make_interval(secs => $2), $3)
                     ON CONFLICT (replica) DO UPDATE
                         SET expires_at = EXCLUDED.expires_at, workspaces = EXCLUDED.workspaces",
                    &[&replica, &secs, &serves],
                )
                .await
                .map_err(|e| self.lease.pg(e))?;
            }
            let renewed = query(
                &client,
                "UPDATE leases l SET expires_at = clock_timestamp() + make_interval(secs => $2)
                 FROM UNNEST($3::text[], $4::bigint[]) AS h(workspace, epoch)
                 WHERE l.workspace = h.workspace AND l.epoch = h.epoch AND l.holder = $1
                   AND NOT l.released AND l.expires_at > clock_timestamp()
                 RETURNING l.workspace, l.epoch",
                &[&replica, &secs, &names, &epochs],
            )
            .await
            .map_err(|e| self.lease.pg(e))?;
            // Peers: live replicas serving the same workspaces (the same
            // configuration); one with another set neither takes from nor
            // hands over to this one by the shares.
            let replicas = query(
                &client,
                &format!(
                    "WITH gone AS (DELETE FROM replicas
                         WHERE expires_at < clock_timestamp() - interval '{FORGET_REPLICAS}')
                     SELECT replica FROM replicas
                     WHERE expires_at > clock_timestamp() AND workspaces = $1
                     ORDER BY replica COLLATE \"C\""
                ),
                &[&serves.unwrap_or_default()],
            )
            .await
            .map_err(|e| self.lease.pg(e))?;
            let leases = query(
                &client,
                "SELECT workspace, holder, epoch,
                        NOT released AND expires_at > clock_timestamp(),
                        GREATEST(EXTRACT(EPOCH FROM clock_timestamp() - expires_at), 0)::float8
                 FROM leases ORDER BY workspace",
                &[],
            )
            .await
            .map_err(|e| self.lease.pg(e))?;
            Ok(LeaseTable {
                renewed: renewed.iter().map(|r| (r.get(0), r.get(1))).collect(),
                replicas: replicas.iter().map(|r| r.get(0)).collect(),
                leases: leases
                    .iter()
                    .map(|r| {
                        let live: bool = r.get(3);
                        LeaseRow {
                            workspace: r.get(0),
                            holder: r.get(1),
                            epoch: r.get(2),
                            live,
                            free_for: if live {
                                Duration::ZERO
                            } else {
                                Duration::from_secs_f64(r.get::<_, f64>(4).max(0.0))
                            },
                        }
                    })
                    .collect(),
            })
        })
    }

    fn acquire(
        &self,
        workspace: &str,
        replica: &str,
        ttl: Duration,
    ) -> Result<Option<Acquired>, StoreError> {
        let secs = ttl.as_secs_f64();
        self.lease.call(async {
            let mut client = self.lease.client().await?;
            let tx = client.transaction().await.map_err(|e| self.lease.pg(e))?;
            // A stopped old holder's write transaction holds the row's
            // FOR SHARE lock until the server ends it: give up this try
            // rather than wait on it.
            tx.batch_execute(&format!("SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}"))
                .await
                .map_err(|e| self.lease.pg(e))?;
            // The upsert alone would lock the row `FOR NO KEY UPDATE`,
            // which the holder's fenced writes (`FOR KEY SHARE`) do not
            // block: lock it as a takeover must, waiting out those writes.
            let locked = query(
                &tx,
                "SELECT 1 FROM leases WHERE workspace = $1 FOR UPDATE",
                &[&workspace],
            )
            .await;
            match locked {
                Ok(_) => {}
                Err(e) if lock_not_available(&e) => return Ok(None),
                Err(e) => return Err(self.lease.pg(e)),
            }
            let row = match query(
                &tx,
                "INSERT INTO leases AS l (workspace, holder, epoch, expires_at, released)
                 VALUES ($1, $2, 1, clock_timestamp() + make_interval(secs => $3), true)
                 ON CONFLICT (workspace) DO UPDATE SET
                     holder = EXCLUDED.holder,
                     epoch = l.epoch + 1,
                     expires_at = EXCLUDED.expires_at,
                     released = l.released OR l.holder = EXCLUDED.holder
                   WHERE l.released OR l.expires_at <= clock_timestamp()
                      OR l.holder = EXCLUDED.holder
                 RETURNING epoch, released",
                &[&workspace, &replica, &secs],
            )
            .await
            {
                Ok(rows) => rows,
                Err(e) if lock_not_available(&e) => return Ok(None),
                Err(e) => return Err(self.lease.pg(e)),
            };
            let Some(row) = row.first() else {
                return Ok(None);
            };
            let acquired = Acquired {
                epoch: row.get(0),
                released: row.get(1),
            };
            // `released` came back as it was (how the last holder left);
            // the lease itself is held now.
            execute(
                &tx,
                "UPDATE leases SET released = false WHERE workspace = $1",
                &[&workspace],
            )
            .await
            .map_err(|e| self.lease.pg(e))?;
            tx.commit().await.map_err(|e| self.lease.pg(e))?;
            Ok(Some(acquired))
        })
    }

    fn release(
        &self,
        workspace: &str,
        replica: &str,
        epoch: i64,
        clean: bool,
    ) -> Result<(), StoreError> {
        self.lease.call(async {
            let client = self.lease.client().await?;
            execute(
                &client,
                "UPDATE leases SET expires_at = clock_timestamp(), released = $4
                 WHERE workspace = $1 AND holder = $2 AND epoch = $3",
                &[&workspace, &replica, &epoch, &clean],
            )
            .await
            .map_err(|e| self.lease.pg(e))?;
            Ok(())
        })
    }

    fn leave(&self, replica: &str) -> Result<(), StoreError> {
        self.lease.call(async {
            let client = self.lease.client().await?;
            execute(
                &client,
                "DELETE FROM replicas WHERE replica = $1",
                &[&replica],
            )
            .await
            .map_err(|e| self.lease.pg(e))?;
            Ok(())
        })
    }

    fn fenced(&self, workspace: &str, replica: &str, epoch: i64) -> Arc<dyn Store> {
        Arc::new(PgStore {
            workspace: workspace.to_string(),
            shared: self.data.shared.clone(),
            fence: Some(Arc::new((replica.to_string(), epoch))),
        })
    }
}

/// Whether `e` is `lock_timeout` running out (55P03): another
/// transaction holds the row, so this try is given up, not failed.
fn lock_not_available(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code() == "55P03")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Batch;

    /// Leases and fencing on the tests' server (`SKYRULES_TEST_POSTGRES_URL`;
    /// skipped without it). Each run uses workspaces of its own.
    #[test]
    fn a_lease_is_exclusive_and_a_taken_over_holder_is_fenced() {
        let Ok(url) = std::env::var("SKYRULES_TEST_POSTGRES_URL") else {
            eprintln!(
                "postgres tests skipped: set SKYRULES_TEST_POSTGRES_URL=postgres://… to run them"
            );
            return;
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        let store = rt.block_on(PgLeases::connect(&url)).unwrap();
        let ws = format!(
            "lease-test-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros()
        );
        let ttl = Duration::from_secs(30);
        let batch = Batch {
            baselined: true,
            ..Batch::default()
        };
        std::thread::scope(|t| {
            t.spawn(|| {
                let first = store.acquire(&ws, "r1", ttl).unwrap().unwrap();
                assert_eq!(first.epoch, 1);
                assert!(first.released, "never held: nothing in flight");
                assert_eq!(store.acquire(&ws, "r2", ttl).unwrap(), None, "held by r1");
                let held = [(ws.clone(), 1)];
                let serves = [ws.clone()];
                let seen = store.tick("r1", &held, ttl, Some(&serves)).unwrap();
                assert_eq!(seen.renewed, held);
                assert!(seen.replicas.contains(&"r1".to_string()));
                let row = seen.leases.iter().find(|l| l.workspace == ws).unwrap();
                assert!(row.live && row.holder == "r1");

                let r1 = store.fenced(&ws, "r1", 1);
                r1.commit(&batch).unwrap();
                store.release(&ws, "r1", 1, true).unwrap();
                let second = store.acquire(&ws, "r2", ttl).unwrap().unwrap();
                assert_eq!(
                    second,
                    Acquired {
                        epoch: 2,
                        released: true
                    }
                );
                let e = r1.commit(&batch).unwrap_err();
                assert!(matches!(e, StoreError::Fenced { epoch: 1, .. }), "{e}");
                let e = r1.finish_action("k", "taken", None).unwrap_err();
                assert!(matches!(e, StoreError::Fenced { .. }), "{e}");
                store.fenced(&ws, "r2", 2).commit(&batch).unwrap();
                assert!(store
                    .tick("r1", &held, ttl, None)
                    .unwrap()
                    .renewed
                    .is_empty());
                let other = ["another-set".to_string()];
                let seen = store.tick("r3", &[], ttl, Some(&other)).unwrap();
                assert_eq!(seen.replicas, ["r3"], "peers serve the same workspaces");

                // A lease left to expire is taken with `released: false`:
                // the next holder must wait out the old one's requests.
                store
                    .tick("r2", &[(ws.clone(), 2)], Duration::from_millis(1), None)
                    .unwrap();
                std::thread::sleep(Duration::from_millis(20));
                let third = store.acquire(&ws, "r1", ttl).unwrap().unwrap();
                assert_eq!(
                    third,
                    Acquired {
                        epoch: 3,
                        released: false
                    }
                );
                // The same id again is the same replica restarted (a
                // container restarted in its pod): it resumes at once.
                let again = store.acquire(&ws, "r1", ttl).unwrap().unwrap();
                assert_eq!(
                    again,
                    Acquired {
                        epoch: 4,
                        released: true
                    }
                );
                // Released after an engine was cut short: the next holder
                // must wait too.
                store.release(&ws, "r1", 4, false).unwrap();
                let fifth = store.acquire(&ws, "r2", ttl).unwrap().unwrap();
                assert_eq!(
                    fifth,
                    Acquired {
                        epoch: 5,
                        released: false
                    }
                );
                for r in ["r1", "r2", "r3"] {
                    store.leave(r).unwrap();
                }
            })
            .join()
            .unwrap();
        });
    }
}
