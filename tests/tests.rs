//! The integration tests: one binary (one link of rhai, axum, reqwest and
//! SQLite, not one per file), one module per area, and `util` shared by all.
//!
//! Run one area with `cargo test --test tests cli::` or one test by name.

mod util;

mod browser;
mod business_hours;
mod canned;
mod cli;
mod client;
mod commands;
mod configmap;
mod durability;
mod engine;
mod fuzz_regressions;
mod hardening;
mod notify;
mod notify_engine;
mod operability;
mod poll_plan;
mod properties;
mod replay;
mod replicas;
mod rule_modes;
mod scenarios;
mod sim_http;
mod sla_report;
mod store_contract;
mod why;
mod workspaces;
