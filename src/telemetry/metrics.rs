//! Prometheus metrics: the names, their help texts and buckets, and the one
//! process-wide recorder.
//!
//! Owns: what is measured and how it is named (`skyrules_` prefix, `_total`
//! for counters, `_seconds` for durations, base units). The modules that
//! observe things call the small helpers here, so a name is spelled in one
//! place. Does not own serving them (the `http` module).

use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Poll cycles, by `result` (`ok`, `error`).
pub const POLL_CYCLES: &str = "skyrules_poll_cycles_total";
/// Duration of a poll cycle, poll to commit (histogram).
pub const POLL_DURATION: &str = "skyrules_poll_cycle_duration_seconds";
/// Unix time of the last successful poll.
pub const LAST_POLL: &str = "skyrules_last_successful_poll_timestamp_seconds";
/// API requests, by `endpoint` and `status` class (`2xx`, `4xx`, `5xx`, `error`).
pub const API_REQUESTS: &str = "skyrules_api_requests_total";
/// API request latency, by `endpoint` (histogram).
pub const API_DURATION: &str = "skyrules_api_request_duration_seconds";
/// API retries, by `endpoint` and `reason`.
pub const API_RETRIES: &str = "skyrules_api_retries_total";
/// Sessions tracked now, by `status` and `handled_by`.
pub const SESSIONS: &str = "skyrules_sessions_tracked";
/// Events dispatched to the rules, by `kind`.
pub const EVENTS: &str = "skyrules_events_total";
/// Handler runs, by `rule`.
pub const HANDLER_RUNS: &str = "skyrules_handler_runs_total";
/// Handler failures (errors, loops, limits), by `rule`.
pub const HANDLER_ERRORS: &str = "skyrules_handler_errors_total";
/// Actions, by `rule`, `action` and `outcome` (`taken`, `skipped`,
/// `dry_run`, `failed`, `capped`).
pub const ACTIONS: &str = "skyrules_actions_total";
/// Rule directory reloads, by `result` (`ok`, `error`).
pub const RELOADS: &str = "skyrules_rule_reloads_total";
/// Rules loaded and running.
pub const RULES_LOADED: &str = "skyrules_rules_loaded";
/// 1 when the last reload loaded every changed file, 0 when one failed.
pub const LAST_RELOAD_OK: &str = "skyrules_rule_last_reload_successful";
/// Unix time of the last reload that changed something.
pub const LAST_RELOAD_TIME: &str = "skyrules_rule_last_reload_timestamp_seconds";
/// State-store write latency, by `op` (`commit`, `intent`, `outcome`)
/// (histogram).
pub const STORE_WRITE: &str = "skyrules_state_write_duration_seconds";

/// Visitor's first message to the first bot or agent reply (histogram).
pub const SLA_FIRST_RESPONSE: &str = "skyrules_sla_first_response_seconds";
/// Human request to take-over (histogram).
pub const SLA_HUMAN_WAIT: &str = "skyrules_sla_human_wait_seconds";
/// A human agent's time to answer a waiting visitor (histogram).
pub const SLA_AGENT_RESPONSE: &str = "skyrules_sla_agent_response_seconds";

/// 1 for each rule's current `mode` (`live`, `shadow`, `off`), 0 for the
/// others, by `workspace` and `rule`.
pub const RULE_MODE: &str = "skyrules_rule_mode";
/// 1 while this replica holds the `workspace`'s lease, else 0.
pub const LEASE_HELD: &str = "skyrules_lease_held";
/// Lease changes on this replica, by `workspace` and `change` (`taken`,
/// `handed_over`, `lost`).
pub const LEASE_TRANSITIONS: &str = "skyrules_lease_transitions_total";
/// Writes and actions refused because the lease was lost, by `workspace`
/// and `what` (`state write`, `action`).
pub const FENCED: &str = "skyrules_fenced_total";
/// Replies found twice in a chat after a takeover, by `workspace`.
pub const DUPLICATE_REPLIES: &str = "skyrules_duplicate_replies_total";

/// Notifications delivered or given up on, by `channel` and `result`
/// (`delivered`, `failed`).
pub const NOTIFICATIONS: &str = "skyrules_notifications_total";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once) and returns the handle that
/// renders the text format; `None` if another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0, 30.0,
                    ],
                )
                .ok()?
                // SLA times are minutes, not milliseconds.
                .set_buckets_for_metric(
                    Matcher::Prefix("skyrules_sla_".into()),
                    &[
                        5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
                    ],
                )
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

/// Drains histogram samples into their buckets every few seconds until
/// `shutdown`. The recorder keeps every sample until something does this,
/// and a service nobody scrapes would otherwise grow by every request it
/// ever timed.
pub(crate) fn keep_up(handle: PrometheusHandle, shutdown: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => handle.run_upkeep(),
            }
        }
    });
}

/// How often [`keep_up`] drains histogram samples.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

fn describe() {
    describe_counter!(POLL_CYCLES, "Poll cycles, by result.");
    describe_histogram!(
        POLL_DURATION,
        metrics::Unit::Seconds,
        "Duration of a poll cycle, from the first request to the commit."
    );
    describe_gauge!(LAST_POLL, "Unix time of the last successful poll.");
    describe_counter!(
        API_REQUESTS,
        "SkyLight API requests, by endpoint and status class."
    );
    describe_histogram!(
        API_DURATION,
        metrics::Unit::Seconds,
        "SkyLight API request latency, by endpoint."
    );
    describe_counter!(API_RETRIES, "SkyLight API retries, by endpoint and reason.");
    describe_gauge!(SESSIONS, "Sessions tracked now, by status and handler.");
    describe_counter!(EVENTS, "Events dispatched to the rules, by kind.");
    describe_counter!(HANDLER_RUNS, "Rule handler runs, by rule.");
    describe_counter!(HANDLER_ERRORS, "Rule handler failures, by rule.");
    describe_counter!(ACTIONS, "Actions, by rule, action and outcome.");
    describe_counter!(RELOADS, "Rule directory reloads, by result.");
    describe_gauge!(RULES_LOADED, "Rules loaded and running.");
    describe_gauge!(
        LAST_RELOAD_OK,
        "1 when the last rule reload loaded every changed file, else 0."
    );
    describe_gauge!(
        LAST_RELOAD_TIME,
        "Unix time of the last rule reload that changed something."
    );
    describe_histogram!(
        SLA_FIRST_RESPONSE,
        metrics::Unit::Seconds,
        "Time from a visitor's first message to the first bot or agent reply."
    );
    describe_histogram!(
        SLA_HUMAN_WAIT,
        metrics::Unit::Seconds,
        "Time from a human request to the take-over."
    );
    describe_histogram!(
        SLA_AGENT_RESPONSE,
        metrics::Unit::Seconds,
        "Time a human agent took to answer a waiting visitor."
    );
    describe_counter!(
        NOTIFICATIONS,
        "Notifications delivered or given up on, by channel and result."
    );
    describe_gauge!(
        RULE_MODE,
        "1 for the rule's mode (live, shadow: actions only logged, off: not run), 0 for the others."
    );
    describe_gauge!(
        LEASE_HELD,
        "1 while this replica holds the workspace's lease (SPEC 7), else 0."
    );
    describe_counter!(
        LEASE_TRANSITIONS,
        "Leases taken, handed over or lost by this replica, by workspace."
    );
    describe_counter!(
        FENCED,
        "State writes and actions refused because this replica lost the workspace's lease."
    );
    describe_counter!(
        DUPLICATE_REPLIES,
        "Replies found twice in a chat after a takeover (a paused old holder sent once more)."
    );
    describe_histogram!(
        STORE_WRITE,
        metrics::Unit::Seconds,
        "State store write latency, by operation."
    );
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// One API request finished (`status` None: no response).
pub(crate) fn api_request(
    workspace: &Arc<str>,
    endpoint: &'static str,
    status: Option<u16>,
    took: Duration,
) {
    let class = match status {
        Some(s) => match s / 100 {
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            5 => "5xx",
            _ => "other",
        },
        None => "error",
    };
    counter!(API_REQUESTS, "workspace" => workspace.clone(), "endpoint" => endpoint, "status" => class).increment(1);
    histogram!(API_DURATION, "workspace" => workspace.clone(), "endpoint" => endpoint)
        .record(took.as_secs_f64());
}

/// An API request is being retried.
pub(crate) fn api_retry(workspace: &Arc<str>, endpoint: &'static str, reason: &'static str) {
    counter!(API_RETRIES, "workspace" => workspace.clone(), "endpoint" => endpoint, "reason" => reason).increment(1);
}

/// A poll cycle ended.
pub fn poll(workspace: &Arc<str>, ok: bool, took: Duration) {
    counter!(POLL_CYCLES, "workspace" => workspace.clone(), "result" => if ok { "ok" } else { "error" }).increment(1);
    if ok {
        histogram!(POLL_DURATION, "workspace" => workspace.clone()).record(took.as_secs_f64());
        gauge!(LAST_POLL, "workspace" => workspace.clone()).set(unix_now());
    }
}

/// Sessions tracked now, per handler (all tracked sessions are active).
pub fn sessions(workspace: &Arc<str>, ai: usize, human: usize, pending: usize, other: usize) {
    for (h, n) in [
        ("ai", ai),
        ("human", human),
        ("pending", pending),
        ("other", other),
    ] {
        gauge!(SESSIONS, "workspace" => workspace.clone(), "status" => "active", "handled_by" => h)
            .set(n as f64);
    }
}

/// An event went to the rules.
pub fn event(workspace: &Arc<str>, kind: &'static str) {
    counter!(EVENTS, "workspace" => workspace.clone(), "kind" => kind).increment(1);
}

/// A rule's handlers ran for an event; `failed` if one errored.
pub(crate) fn handler_run(workspace: &Arc<str>, rule: &str, failed: bool) {
    counter!(HANDLER_RUNS, "workspace" => workspace.clone(), "rule" => rule.to_string())
        .increment(1);
    if failed {
        counter!(HANDLER_ERRORS, "workspace" => workspace.clone(), "rule" => rule.to_string())
            .increment(1);
    }
}

/// An action ended with `outcome`.
pub fn action(workspace: &Arc<str>, rule: &str, action: &'static str, outcome: &'static str) {
    counter!(ACTIONS, "workspace" => workspace.clone(), "rule" => rule.to_string(), "action" => action, "outcome" => outcome)
        .increment(1);
}

/// A rescan of the rules directory changed something.
pub fn reload(workspace: &Arc<str>, ok: bool, rules_loaded: usize) {
    let ws = || workspace.clone();
    counter!(RELOADS, "workspace" => ws(), "result" => if ok { "ok" } else { "error" })
        .increment(1);
    gauge!(LAST_RELOAD_OK, "workspace" => ws()).set(if ok { 1.0 } else { 0.0 });
    gauge!(LAST_RELOAD_TIME, "workspace" => ws()).set(unix_now());
    gauge!(RULES_LOADED, "workspace" => ws()).set(rules_loaded as f64);
}

/// A state-store write took `took`.
pub(crate) fn store_write(workspace: &Arc<str>, op: &'static str, took: Duration) {
    histogram!(STORE_WRITE, "workspace" => workspace.clone(), "op" => op)
        .record(took.as_secs_f64());
}

/// `rule` of `workspace` runs in `mode`.
pub(crate) fn rule_mode(workspace: &Arc<str>, rule: &str, mode: &'static str) {
    for m in ["live", "shadow", "off"] {
        gauge!(RULE_MODE, "workspace" => workspace.clone(), "rule" => rule.to_string(), "mode" => m)
            .set(if m == mode { 1.0 } else { 0.0 });
    }
}

/// This replica took, handed over or lost `workspace`'s lease.
pub(crate) fn lease(workspace: &Arc<str>, change: &'static str, held: bool) {
    counter!(LEASE_TRANSITIONS, "workspace" => workspace.clone(), "change" => change).increment(1);
    gauge!(LEASE_HELD, "workspace" => workspace.clone()).set(if held { 1.0 } else { 0.0 });
}

/// A standby's gauge: the `workspace` is not held here.
pub(crate) fn lease_not_held(workspace: &Arc<str>) {
    gauge!(LEASE_HELD, "workspace" => workspace.clone()).set(0.0);
}

/// A write or an action of `workspace` was refused: its lease was lost.
pub(crate) fn fenced(workspace: &str, what: &'static str) {
    counter!(FENCED, "workspace" => workspace.to_string(), "what" => what).increment(1);
}

/// A reply was found twice in a chat of `workspace` after a takeover.
pub(crate) fn duplicate_reply(workspace: &Arc<str>) {
    counter!(DUPLICATE_REPLIES, "workspace" => workspace.clone()).increment(1);
}

/// New SLA facts of a session since the last poll.
pub fn sla(
    workspace: &Arc<str>,
    before: &crate::tracking::SlaState,
    after: &crate::tracking::SlaState,
) {
    if before.first_response_secs.is_none() {
        if let Some(s) = after.first_response_secs {
            histogram!(SLA_FIRST_RESPONSE, "workspace" => workspace.clone()).record(s);
        }
    }
    for s in after
        .human_wait_secs
        .iter()
        .skip(before.human_wait_secs.len())
    {
        histogram!(SLA_HUMAN_WAIT, "workspace" => workspace.clone()).record(*s);
    }
    for s in after
        .agent_response_secs
        .iter()
        .skip(before.agent_response_secs.len())
    {
        histogram!(SLA_AGENT_RESPONSE, "workspace" => workspace.clone()).record(*s);
    }
}

/// A notification was delivered, or given up on.
pub fn notification(channel: &str, delivered: bool) {
    counter!(
        NOTIFICATIONS,
        "channel" => channel.to_string(),
        "result" => if delivered { "delivered" } else { "failed" }
    )
    .increment(1);
}
