//! The engine's one way into the state store: every call runs on tokio's
//! blocking pool (SQLite reads files and waits for fsync; PostgreSQL waits
//! on the network), and a call whose task died comes back as a store error
//! like any other, never a panic.
//!
//! Why the store stays a blocking trait behind this wrapper rather than
//! becoming async: the SQLite and in-memory stores are synchronous, and the
//! command line (`audit`, `sla`) and the tests use them synchronously. The
//! PostgreSQL store fits the same trait: its async driver runs each call
//! with `Handle::block_on` on the runtime it was connected on, which is
//! allowed here because every call comes from a blocking-pool thread, never
//! from an async task (there it would panic).

use std::sync::Arc;
use std::time::Instant;

use crate::store::{Store, StoreError};

/// Runs `f` against the store off the async workers.
pub(super) async fn read<T, F>(store: &Arc<dyn Store>, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
{
    let store = store.clone();
    // The blocking pool's threads have no span: the store's own log lines
    // keep the workspace's.
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(|| f(store.as_ref())))
        .await
        .unwrap_or_else(|e| {
            Err(StoreError::Io {
                path: "state".into(),
                message: format!("the state store task failed: {e}"),
            })
        })
}

/// Like [`read`], timing the call as the store write `what` (`commit`,
/// `intent`, `outcome`) of `workspace` in the metrics.
pub(super) async fn write<T, F>(
    store: &Arc<dyn Store>,
    workspace: &Arc<str>,
    what: &'static str,
    f: F,
) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
{
    let workspace = workspace.clone();
    read(store, move |s| {
        let started = Instant::now();
        let r = f(s);
        crate::telemetry::metrics::store_write(&workspace, what, started.elapsed());
        r
    })
    .await
}
