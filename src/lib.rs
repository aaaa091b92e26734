//! skyrules: an automation and escalation engine for SkyLight Chat's Web Chat.
//!
//! Data flows one way: the watcher polls the API and diffs snapshots into
//! events, the rules runtime turns events into intended actions, and the
//! executor carries them out against the API and records them in the state
//! store. Each module owns one step of that flow.

pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod demo;
pub mod engine;
pub mod escape;
pub mod events;
pub mod executor;
pub mod hours;
pub mod http;
pub mod metrics;
mod net;
pub mod notify;
pub mod replay;
pub mod report;
pub mod rules;
pub mod scenario;
mod scratch;
pub mod shutdown;
pub mod sim;
pub mod status;
pub mod store;
pub mod watcher;
