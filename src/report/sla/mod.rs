//! The SLA report behind `skyrules sla`: its math and its rendering.
//!
//! This module owns turning per-session SLA facts ([`SlaRecord`], kept in the
//! state store) and per-rule, per-day counts of timer-triggered rule actions
//! ([`BreachCount`], from the audit log) into an [`SlaReport`] (`model`:
//! nearest-rank percentiles, one row per UTC day, breaches by rule and the
//! first-response distribution), and rendering that report for the terminal
//! ([`render_text`], in `text`) or as one self-contained HTML page with
//! inline SVG charts ([`render_html`], in `html`, templated with maud so
//! everything from the data is escaped).
//!
//! It does not collect data: reading the state store and the audit log, and
//! the command line that picks the window and the output, live in
//! `cli::sla_cmd`. Everything here is pure and deterministic, so the numbers
//! can be checked against hand-computed fixtures.
//!
//! Re-exported: the entry points and the types a caller builds or reads.

#[cfg(test)]
mod fixtures;
mod html;
mod model;
mod text;

pub use html::render_html;
pub use model::{
    build_report, format_duration, BreachCount, DayRow, HistogramBucket, Percentiles, RuleBreaches,
    SlaRecord, SlaReport,
};
pub use text::render_text;
