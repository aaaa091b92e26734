//! Test fixtures shared by the SLA report's unit tests: timestamps and days
//! in March 2025, record and breach-count builders, and the hand-computed
//! four-day fixture. Test-only; nothing here is part of the report.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};

use super::model::{BreachCount, SlaRecord};

/// 2025-03-`d` at `h:m:s` UTC.
pub(super) fn at(d: u32, h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, d, h, m, s).unwrap()
}

/// The day `m`/`d` of 2025.
pub(super) fn day(m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2025, m, d).unwrap()
}

/// A session record: id, creation time, first response, human waits and
/// agent-silence breaches.
pub(super) fn rec(
    id: &str,
    created: DateTime<Utc>,
    first: Option<f64>,
    waits: &[f64],
    silence: u32,
) -> SlaRecord {
    SlaRecord {
        session_id: id.to_string(),
        created_at: created,
        first_response_secs: first,
        human_wait_secs: waits.to_vec(),
        agent_silence_breaches: silence,
    }
}

/// A breach count of `rule` on day `d`.
pub(super) fn bc(rule: &str, d: NaiveDate, count: u64) -> BreachCount {
    BreachCount {
        rule: rule.to_string(),
        day: d,
        count,
    }
}

/// 10 sessions over Mar 1–3 (Mar 4 empty), two outside the window, two
/// rules' breaches (one duplicated row, two rows outside the window).
pub(super) fn fixture() -> (
    Vec<SlaRecord>,
    Vec<BreachCount>,
    DateTime<Utc>,
    DateTime<Utc>,
) {
    let records = vec![
        rec("a1", at(1, 0, 0, 0), Some(5.0), &[], 0),
        rec("a2", at(1, 9, 30, 0), Some(20.0), &[120.0], 1),
        rec("a3", at(1, 13, 0, 0), Some(40.0), &[], 0),
        rec("a4", at(1, 23, 59, 59), None, &[300.0, 60.0], 2),
        rec("b1", at(2, 8, 0, 0), Some(10.0), &[], 0),
        rec("b2", at(2, 12, 0, 0), Some(90.0), &[], 0),
        rec("b3", at(2, 18, 0, 0), Some(15.0), &[600.0], 1),
        rec("c1", at(3, 7, 0, 0), Some(30.0), &[45.0], 0),
        rec("c2", at(3, 11, 0, 0), Some(200.0), &[], 0),
        rec("c3", at(3, 20, 0, 0), Some(8.0), &[], 0),
        // Outside the window: a second before it, a second after it.
        rec(
            "early",
            Utc.with_ymd_and_hms(2025, 2, 28, 23, 59, 59).unwrap(),
            Some(9999.0),
            &[9999.0],
            7,
        ),
        rec("late", at(4, 12, 0, 1), Some(9999.0), &[9999.0], 7),
    ];
    let breaches = vec![
        bc("escalate-vip", day(3, 1), 2),
        bc("escalate-vip", day(3, 3), 1),
        bc("close-idle", day(3, 1), 1),
        bc("close-idle", day(3, 2), 4),
        bc("close-idle", day(3, 2), 1),
        bc("close-idle", day(2, 28), 7),
        bc("close-idle", day(3, 5), 9),
        bc("never-in-window", day(3, 6), 3),
    ];
    (records, breaches, at(1, 0, 0, 0), at(4, 12, 0, 0))
}
