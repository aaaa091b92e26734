//! What the engine tells the people and systems that watch it: Prometheus
//! [`metrics`] (names and the recorder), the [`status`] board (readiness,
//! sessions and their timers, recent actions, rules), and the [`http`]
//! listener that serves both with `/healthz` and `/readyz`. The engine's
//! own report of each occurrence, which feeds all of them, is
//! `crate::engine`'s emitter.

pub mod http;
pub mod metrics;
pub mod status;
