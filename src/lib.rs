//! skyrules: an automation and escalation engine for SkyLight Chat's Web Chat.
//!
//! Data flows one way: the watcher polls the API and diffs snapshots into
//! events, the rules runtime turns events into intended actions, and the
//! executor carries them out against the API and records them in the state
//! store. Each module owns one step of that flow.

pub mod api;
pub mod cli;
pub mod config;
pub mod engine;
pub mod escape;
pub mod executor;
pub mod hours;
mod net;
pub mod notifications;
mod replicas;
pub mod report;
pub mod rules;
pub mod shutdown;
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod tools;
pub mod trace;
pub mod tracking;
