//! Reports read from the state: what the engine did and how fast people
//! were answered, over a window. Today that is the SLA report ([`sla`]).
//!
//! Reports are pure functions of data handed to them; reading the state
//! store and the audit log, and the commands that print or write a report,
//! live in `cli`.

pub mod sla;
