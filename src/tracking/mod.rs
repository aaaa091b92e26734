//! Tracking chats: what the engine knows of each one and what changed.
//!
//! [`poll`] asks the API (the only part that does I/O); [`tracker`] keeps
//! what is known of every active chat and turns what a poll read into each
//! chat's share of the cycle, without HTTP (the benchmark measures it);
//! [`diff`] turns two snapshots into message and state events, [`timers`]
//! decides when `idle`, `unanswered` and `human_waiting` are due, and
//! [`sla_facts`] keeps what the SLA report needs. Does not own the loop's
//! timing or what happens to events (the engine), nor durable state (it
//! starts from what the store loaded and hands back new states).

mod diff;
mod event;
mod poll;
mod recent;
mod sla_facts;
#[cfg(test)]
mod tests;
mod timers;
mod tracker;

pub use diff::{diff, Tracked, RECENT_MESSAGES};
pub use event::{Event, EventKind, TimerSpec};
pub use poll::{Cycle, Sweep, Watcher};
pub(crate) use sla_facts::SlaState;
pub(crate) use timers::running_timers;
pub use timers::{due_timers, due_timers_in};
pub(crate) use timers::{timer_state, TimerState};
pub use tracker::{SessionCycle, Tracker};
