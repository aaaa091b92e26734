//! The SLA report's data and math: per-session facts and per-rule, per-day
//! breach counts in, an [`SlaReport`] out.
//!
//! This module owns the input records ([`SlaRecord`], [`BreachCount`]), the
//! report ([`SlaReport`] and its parts), [`build_report`] — nearest-rank
//! percentiles, one row per UTC day, breaches by rule and the first-response
//! distribution — and the small facts both renderers share (durations, bucket
//! labels, the period line, shares).
//!
//! It does not render (that is `text` and `html` next to it) and does not
//! collect data (the command reads the state store and the audit log).
//! Everything here is pure and deterministic, so the numbers can be checked
//! against hand-computed fixtures.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

/// One session's SLA facts (from the state store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlaRecord {
    /// The session id.
    pub session_id: String,
    /// When the session was created. It decides whether the session is in the
    /// report's window and which (UTC) day it counts on — its human waits and
    /// agent-silence breaches included.
    pub created_at: DateTime<Utc>,
    /// Seconds from the visitor's first message to the first bot or agent
    /// reply; `None` while nobody has replied.
    pub first_response_secs: Option<f64>,
    /// Seconds from each human request to its take-over, one per request that
    /// was taken over.
    pub human_wait_secs: Vec<f64>,
    /// How often an agent stayed silent past the limit in this session.
    pub agent_silence_breaches: u32,
}

/// Timer-triggered rule actions, per rule and day (from the audit log).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreachCount {
    /// The rule's id (its file stem).
    pub rule: String,
    /// The UTC day the actions were taken on.
    pub day: NaiveDate,
    /// How many actions the rule's timers triggered that day.
    pub count: u64,
}

/// Percentiles of a series; `None` fields when there are no samples.
///
/// Computed by nearest rank (see `percentile` in this module), so every
/// value is one of the samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Percentiles {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Largest sample.
    pub max: Option<f64>,
}

impl Percentiles {
    /// The percentiles of `samples`, in any order. Non-finite samples are
    /// dropped and negative ones (clock skew) count as zero.
    fn from_samples(samples: &[f64]) -> Self {
        let mut sorted: Vec<f64> = samples.iter().copied().filter_map(clean).collect();
        sorted.sort_by(f64::total_cmp);
        Percentiles {
            count: sorted.len(),
            p50: percentile(&sorted, 50.0),
            p90: percentile(&sorted, 90.0),
            p99: percentile(&sorted, 99.0),
            max: sorted.last().copied(),
        }
    }
}

/// One UTC day of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DayRow {
    /// The day (UTC).
    pub day: NaiveDate,
    /// Sessions created that day (within the window).
    pub sessions: usize,
    /// p90 of those sessions' first-response times, in seconds.
    pub first_response_p90: Option<f64>,
    /// p90 of those sessions' human-wait times, in seconds.
    pub human_wait_p90: Option<f64>,
    /// Agent-silence breaches of those sessions.
    pub agent_silence_breaches: u64,
    /// Timer-triggered rule actions that day, all rules together.
    pub rule_breaches: u64,
}

/// One rule's timer-triggered actions over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleBreaches {
    /// The rule's id.
    pub rule: String,
    /// All its breaches in the window.
    pub total: u64,
    /// Its breaches per day, aligned with [`SlaReport::per_day`].
    pub per_day: Vec<u64>,
}

/// One bucket of the first-response distribution: samples in
/// `[from_secs, to_secs)`, the last bucket open-ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistogramBucket {
    /// Inclusive lower bound, in seconds.
    pub from_secs: f64,
    /// Exclusive upper bound, in seconds; `None` for the last bucket.
    pub to_secs: Option<f64>,
    /// Samples in the bucket.
    pub count: usize,
}

/// The SLA report over a window `[since, until]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlaReport {
    /// Start of the window (inclusive).
    pub since: DateTime<Utc>,
    /// End of the window (inclusive).
    pub until: DateTime<Utc>,
    /// Sessions created in the window.
    pub sessions: usize,
    /// First-response times of those sessions, in seconds.
    pub first_response: Percentiles,
    /// Human-wait times of those sessions (one sample per request), in seconds.
    pub human_wait: Percentiles,
    /// Agent-silence breaches of those sessions.
    pub agent_silence_breaches: u64,
    /// Every UTC day from `since` to `until`, even empty ones, oldest first.
    pub per_day: Vec<DayRow>,
    /// Rules with breaches in the window, most breaches first (ties by name).
    pub breaches_by_rule: Vec<RuleBreaches>,
    /// The first-response distribution: `<10s`, `10s-30s`, `30s-1m`,
    /// `1m-2m`, `2m-5m`, `5m-10m`, `>=10m`.
    pub first_response_buckets: Vec<HistogramBucket>,
}

impl SlaReport {
    /// All rule breaches in the window.
    pub fn rule_breaches(&self) -> u64 {
        self.breaches_by_rule.iter().map(|b| b.total).sum()
    }

    /// Whether the window holds nothing at all to report.
    pub fn is_empty(&self) -> bool {
        self.sessions == 0 && self.rule_breaches() == 0
    }
}

/// Upper bounds (seconds) of the first-response buckets; one more bucket
/// holds everything from the last bound up.
const FIRST_RESPONSE_BOUNDS: [f64; 6] = [10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// The `p`th percentile (`p` in percent, 0–100, clamped) of an ascending
/// slice, by the nearest-rank method: the sample at rank `ceil(p/100 * n)`
/// (1-based, at least 1), so the result is always one of the samples and
/// nothing is interpolated. `None` for an empty slice or a NaN `p`.
///
/// For `[1, 2, …, 10]`: p50 = 5, p90 = 9, p99 = 10.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() || p.is_nan() {
        return None;
    }
    let n = sorted.len();
    // `p * n` first: exact for whole-number percentiles, so p90 of 10 samples
    // is rank 9, not 10 through a rounding error in 0.9 * 10.
    let rank = (p.clamp(0.0, 100.0) * n as f64 / 100.0).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

/// A usable duration sample: finite, negatives (clock skew) as zero.
fn clean(secs: f64) -> Option<f64> {
    secs.is_finite().then_some(secs.max(0.0))
}

/// The report's days: every UTC day from `since`'s to `until`'s, none for an
/// inverted window.
struct Window {
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    days: Vec<NaiveDate>,
}

impl Window {
    fn new(since: DateTime<Utc>, until: DateTime<Utc>) -> Self {
        let days = if since <= until {
            since
                .date_naive()
                .iter_days()
                .take_while(|d| *d <= until.date_naive())
                .collect()
        } else {
            Vec::new()
        };
        Window { since, until, days }
    }

    /// The index of `day` among the window's days, if it is one.
    fn index(&self, day: NaiveDate) -> Option<usize> {
        let i = usize::try_from((day - self.since.date_naive()).num_days()).ok()?;
        (i < self.days.len()).then_some(i)
    }

    /// Whether `t` is inside the window (both ends inclusive).
    fn contains(&self, t: DateTime<Utc>) -> bool {
        self.since <= t && t <= self.until
    }
}

/// One day's session facts, gathered before the percentiles are taken.
#[derive(Default)]
struct DayAcc {
    sessions: usize,
    first: Vec<f64>,
    wait: Vec<f64>,
    silence: u64,
}

/// The records created in the window, gathered per day.
fn sessions_per_day(records: &[SlaRecord], w: &Window) -> Vec<DayAcc> {
    let mut acc: Vec<DayAcc> = w.days.iter().map(|_| DayAcc::default()).collect();
    for r in records {
        if !w.contains(r.created_at) {
            continue;
        }
        let Some(i) = w.index(r.created_at.date_naive()) else {
            continue;
        };
        let a = &mut acc[i];
        a.sessions += 1;
        a.first.extend(r.first_response_secs.and_then(clean));
        a.wait
            .extend(r.human_wait_secs.iter().copied().filter_map(clean));
        a.silence += u64::from(r.agent_silence_breaches);
    }
    acc
}

/// The breach counts on the window's days, added up per rule and day; rules
/// without any left out, most breaches first (ties by name).
fn breaches_per_rule(breaches: &[BreachCount], w: &Window) -> Vec<RuleBreaches> {
    let mut by_rule: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for b in breaches {
        if let Some(i) = w.index(b.day) {
            let row = by_rule
                .entry(b.rule.as_str())
                .or_insert_with(|| vec![0; w.days.len()]);
            row[i] = row[i].saturating_add(b.count);
        }
    }
    let mut breaches_by_rule: Vec<RuleBreaches> = by_rule
        .into_iter()
        .map(|(rule, per_day)| RuleBreaches {
            rule: rule.to_string(),
            total: per_day.iter().fold(0u64, |s, c| s.saturating_add(*c)),
            per_day,
        })
        .filter(|b| b.total > 0)
        .collect();
    breaches_by_rule.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.rule.cmp(&b.rule)));
    breaches_by_rule
}

/// One row per day from the gathered sessions and the rules' breaches.
fn day_rows(w: &Window, acc: &[DayAcc], by_rule: &[RuleBreaches]) -> Vec<DayRow> {
    w.days
        .iter()
        .zip(acc)
        .enumerate()
        .map(|(i, (day, a))| DayRow {
            day: *day,
            sessions: a.sessions,
            first_response_p90: Percentiles::from_samples(&a.first).p90,
            human_wait_p90: Percentiles::from_samples(&a.wait).p90,
            agent_silence_breaches: a.silence,
            rule_breaches: by_rule.iter().map(|b| b.per_day[i]).sum(),
        })
        .collect()
}

/// The first-response samples sorted into the [`FIRST_RESPONSE_BOUNDS`]
/// buckets.
fn first_response_histogram(samples: &[f64]) -> Vec<HistogramBucket> {
    let mut buckets: Vec<HistogramBucket> = (0..=FIRST_RESPONSE_BOUNDS.len())
        .map(|i| HistogramBucket {
            from_secs: if i == 0 {
                0.0
            } else {
                FIRST_RESPONSE_BOUNDS[i - 1]
            },
            to_secs: FIRST_RESPONSE_BOUNDS.get(i).copied(),
            count: 0,
        })
        .collect();
    for s in samples {
        let i = FIRST_RESPONSE_BOUNDS.partition_point(|bound| *bound <= *s);
        buckets[i].count += 1;
    }
    buckets
}

/// Builds the report for `[since, until]` (both inclusive).
///
/// Records created outside the window are ignored; a record counts on the
/// UTC day it was created, with all its human waits and agent-silence
/// breaches. Breach counts are daily, so they count when their day is one of
/// the window's days (`since`'s day to `until`'s day, UTC); counts for the same
/// rule and day are added up and rules without breaches in the window are
/// left out. Non-finite durations are dropped and negative ones count as
/// zero. An inverted window (`since > until`) gives an empty report.
pub fn build_report(
    records: &[SlaRecord],
    breaches: &[BreachCount],
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> SlaReport {
    let w = Window::new(since, until);
    let acc = sessions_per_day(records, &w);
    let breaches_by_rule = breaches_per_rule(breaches, &w);
    let per_day = day_rows(&w, &acc, &breaches_by_rule);
    let all_first: Vec<f64> = acc.iter().flat_map(|a| a.first.iter().copied()).collect();
    let all_wait: Vec<f64> = acc.iter().flat_map(|a| a.wait.iter().copied()).collect();
    SlaReport {
        since,
        until,
        sessions: acc.iter().map(|a| a.sessions).sum(),
        first_response: Percentiles::from_samples(&all_first),
        human_wait: Percentiles::from_samples(&all_wait),
        agent_silence_breaches: acc.iter().map(|a| a.silence).sum(),
        per_day,
        breaches_by_rule,
        first_response_buckets: first_response_histogram(&all_first),
    }
}

/// A duration for people, rounded to the second: `12s`, `3m 05s`,
/// `2h 07m`, `3d 04h`; `-` for a non-finite value.
pub fn format_duration(secs: f64) -> String {
    if !secs.is_finite() {
        return "-".to_string();
    }
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A bound as a short unit: `10s`, `1m`, `2h`.
fn short_bound(secs: f64) -> String {
    let s = secs.round() as u64;
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// A bucket's label; `ascii` for the terminal, else with typographic dash
/// and ≥ for the page.
pub(super) fn bucket_label(b: &HistogramBucket, ascii: bool) -> String {
    let (dash, ge) = if ascii { ("-", ">=") } else { ("–", "≥") };
    match b.to_secs {
        Some(to) if b.from_secs <= 0.0 => format!("<{}", short_bound(to)),
        Some(to) => format!("{}{dash}{}", short_bound(b.from_secs), short_bound(to)),
        None => format!("{ge}{}", short_bound(b.from_secs)),
    }
}

/// The window for people: `2025-03-01 00:00 to 2025-03-04 12:00 UTC (4 days)`.
pub(super) fn period_text(r: &SlaReport) -> String {
    format!(
        "{} to {} UTC ({} day{})",
        r.since.format("%Y-%m-%d %H:%M"),
        r.until.format("%Y-%m-%d %H:%M"),
        r.per_day.len(),
        if r.per_day.len() == 1 { "" } else { "s" }
    )
}

/// Percent of `part` in `whole`, rounded; 0 for an empty whole.
pub(super) fn pct(part: usize, whole: usize) -> usize {
    (part * 100 + whole / 2).checked_div(whole).unwrap_or(0)
}

/// Sessions answered within a minute.
pub(super) fn answered_within_minute(r: &SlaReport) -> usize {
    r.first_response_buckets
        .iter()
        .filter(|b| b.to_secs.is_some_and(|t| t <= 60.0))
        .map(|b| b.count)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sla::fixtures::{at, bc, day, fixture, rec};

    #[test]
    fn percentile_nearest_rank_on_one_to_ten() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(5.0));
        assert_eq!(percentile(&v, 90.0), Some(9.0));
        assert_eq!(percentile(&v, 99.0), Some(10.0));
        assert_eq!(percentile(&v, 100.0), Some(10.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 10.0), Some(1.0));
        assert_eq!(percentile(&v, 11.0), Some(2.0));
        assert_eq!(percentile(&v, 25.0), Some(3.0));
        // Out-of-range p is clamped; NaN has no answer.
        assert_eq!(percentile(&v, 150.0), Some(10.0));
        assert_eq!(percentile(&v, -5.0), Some(1.0));
        assert_eq!(percentile(&v, f64::NAN), None);
    }

    #[test]
    fn percentile_of_one_and_of_none() {
        assert_eq!(percentile(&[42.0], 50.0), Some(42.0));
        assert_eq!(percentile(&[42.0], 99.0), Some(42.0));
        assert_eq!(percentile(&[42.0], 0.0), Some(42.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[], 99.0), None);
    }

    #[test]
    fn percentile_hand_computed_uneven() {
        // n = 9: p50 → rank ceil(4.5) = 5, p90 → ceil(8.1) = 9, p10 → ceil(0.9) = 1,
        // p20 → ceil(1.8) = 2, p75 → ceil(6.75) = 7.
        let v = [5.0, 8.0, 10.0, 15.0, 20.0, 30.0, 40.0, 90.0, 200.0];
        assert_eq!(percentile(&v, 50.0), Some(20.0));
        assert_eq!(percentile(&v, 90.0), Some(200.0));
        assert_eq!(percentile(&v, 10.0), Some(5.0));
        assert_eq!(percentile(&v, 20.0), Some(8.0));
        assert_eq!(percentile(&v, 75.0), Some(40.0));
        // n = 100: p99 is rank 99, p90 rank 90.
        let h: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&h, 99.0), Some(99.0));
        assert_eq!(percentile(&h, 90.0), Some(90.0));
        assert_eq!(percentile(&h, 99.5), Some(100.0));
    }

    #[test]
    fn percentiles_from_unsorted_samples_drop_junk() {
        let p = Percentiles::from_samples(&[3.0, f64::NAN, 1.0, -2.0, 2.0, f64::INFINITY]);
        // Samples: 0 (from -2), 1, 2, 3.
        assert_eq!(p.count, 4);
        assert_eq!(p.p50, Some(1.0));
        assert_eq!(p.p90, Some(3.0));
        assert_eq!(p.p99, Some(3.0));
        assert_eq!(p.max, Some(3.0));
        let none = Percentiles::from_samples(&[]);
        assert_eq!(
            none,
            Percentiles {
                count: 0,
                p50: None,
                p90: None,
                p99: None,
                max: None
            }
        );
    }

    /// Every field of the fixture's report against hand-computed values;
    /// long because each expected value is spelled out.
    #[test]
    fn build_report_hand_computed() {
        let (records, breaches, since, until) = fixture();
        let r = build_report(&records, &breaches, since, until);
        assert_eq!(r.since, since);
        assert_eq!(r.until, until);
        assert_eq!(r.sessions, 10);
        // First responses sorted: 5 8 10 15 20 30 40 90 200 (n = 9; a4 none).
        assert_eq!(
            r.first_response,
            Percentiles {
                count: 9,
                p50: Some(20.0),
                p90: Some(200.0),
                p99: Some(200.0),
                max: Some(200.0)
            }
        );
        // Human waits sorted: 45 60 120 300 600 (n = 5): p50 rank 3, p90 rank 5.
        assert_eq!(
            r.human_wait,
            Percentiles {
                count: 5,
                p50: Some(120.0),
                p90: Some(600.0),
                p99: Some(600.0),
                max: Some(600.0)
            }
        );
        assert_eq!(r.agent_silence_breaches, 4);
        assert_eq!(
            r.per_day,
            vec![
                // Mar 1: first 5 20 40 → p90 40; waits 60 120 300 → 300.
                DayRow {
                    day: day(3, 1),
                    sessions: 4,
                    first_response_p90: Some(40.0),
                    human_wait_p90: Some(300.0),
                    agent_silence_breaches: 3,
                    rule_breaches: 3,
                },
                // Mar 2: first 10 15 90 → 90; waits 600.
                DayRow {
                    day: day(3, 2),
                    sessions: 3,
                    first_response_p90: Some(90.0),
                    human_wait_p90: Some(600.0),
                    agent_silence_breaches: 1,
                    rule_breaches: 5,
                },
                // Mar 3: first 8 30 200 → 200; waits 45.
                DayRow {
                    day: day(3, 3),
                    sessions: 3,
                    first_response_p90: Some(200.0),
                    human_wait_p90: Some(45.0),
                    agent_silence_breaches: 0,
                    rule_breaches: 1,
                },
                // Mar 4: in the window, no data.
                DayRow {
                    day: day(3, 4),
                    sessions: 0,
                    first_response_p90: None,
                    human_wait_p90: None,
                    agent_silence_breaches: 0,
                    rule_breaches: 0,
                },
            ]
        );
        assert_eq!(
            r.breaches_by_rule,
            vec![
                RuleBreaches {
                    rule: "close-idle".to_string(),
                    total: 6,
                    per_day: vec![1, 5, 0, 0],
                },
                RuleBreaches {
                    rule: "escalate-vip".to_string(),
                    total: 3,
                    per_day: vec![2, 0, 1, 0],
                },
            ]
        );
        assert_eq!(r.rule_breaches(), 9);
        // Buckets: <10s: 5 8; 10s-30s: 10 15 20; 30s-1m: 30 40; 1m-2m: 90;
        // 2m-5m: 200; 5m-10m and >=10m: none.
        let counts: Vec<usize> = r.first_response_buckets.iter().map(|b| b.count).collect();
        assert_eq!(counts, vec![2, 3, 2, 1, 1, 0, 0]);
        let labels: Vec<String> = r
            .first_response_buckets
            .iter()
            .map(|b| bucket_label(b, true))
            .collect();
        assert_eq!(
            labels,
            ["<10s", "10s-30s", "30s-1m", "1m-2m", "2m-5m", "5m-10m", ">=10m"]
        );
        assert_eq!(r.first_response_buckets[6].to_secs, None);
        assert_eq!(answered_within_minute(&r), 7);
    }

    #[test]
    fn window_bounds_are_inclusive_and_days_are_utc() {
        let since = at(1, 12, 0, 0);
        let until = at(2, 12, 0, 0);
        let records = vec![
            rec("before", at(1, 11, 59, 59), Some(1.0), &[], 0),
            rec("at-since", since, Some(2.0), &[], 0),
            rec("at-until", until, Some(3.0), &[], 0),
            rec("after", at(2, 12, 0, 1), Some(4.0), &[], 0),
        ];
        // The morning of Mar 1 is outside the window, but its day is not:
        // breach counts are daily.
        let breaches = vec![bc("r", day(3, 1), 1), bc("r", day(3, 2), 2)];
        let r = build_report(&records, &breaches, since, until);
        assert_eq!(r.sessions, 2);
        assert_eq!(r.first_response.max, Some(3.0));
        assert_eq!(r.per_day.len(), 2);
        assert_eq!(r.per_day[0].sessions, 1);
        assert_eq!(r.per_day[1].sessions, 1);
        assert_eq!(r.breaches_by_rule[0].per_day, vec![1, 2]);
    }

    #[test]
    fn empty_and_inverted_windows() {
        let r = build_report(&[], &[], at(1, 0, 0, 0), at(7, 23, 0, 0));
        assert_eq!(r.sessions, 0);
        assert_eq!(r.per_day.len(), 7);
        assert!(r
            .per_day
            .iter()
            .all(|d| d.sessions == 0 && d.first_response_p90.is_none() && d.rule_breaches == 0));
        assert!(r.breaches_by_rule.is_empty());
        assert_eq!(r.first_response.count, 0);
        assert_eq!(r.first_response.p50, None);
        assert!(r.is_empty());

        let (records, breaches, since, until) = fixture();
        let inverted = build_report(&records, &breaches, until, since);
        assert_eq!(inverted.sessions, 0);
        assert!(inverted.per_day.is_empty());
        assert!(inverted.breaches_by_rule.is_empty());
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(format_duration(0.0), "0s");
        assert_eq!(format_duration(0.4), "0s");
        assert_eq!(format_duration(12.0), "12s");
        assert_eq!(format_duration(59.6), "1m 00s");
        assert_eq!(format_duration(185.0), "3m 05s");
        assert_eq!(format_duration(3599.6), "1h 00m");
        assert_eq!(format_duration(7620.0), "2h 07m");
        assert_eq!(format_duration(273_600.0), "3d 04h");
        assert_eq!(format_duration(-3.0), "0s");
        assert_eq!(format_duration(f64::NAN), "-");
    }
}
