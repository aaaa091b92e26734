//! The SLA report behind `skyrules sla`: its math and its rendering.
//!
//! This module owns turning per-session SLA facts ([`SlaRecord`], kept in the
//! state store) and per-rule, per-day counts of timer-triggered rule actions
//! ([`BreachCount`], from the audit log) into an [`SlaReport`] —
//! nearest-rank percentiles, one row per UTC day, breaches by rule and the
//! first-response distribution — and rendering that report for the terminal
//! ([`render_text`]) or as one self-contained HTML page with inline SVG charts
//! ([`render_html`]).
//!
//! It does not collect data: reading the state store and the audit log, and
//! the command line that picks the window and the output, live elsewhere.
//! Everything here is pure and deterministic, so the numbers can be checked
//! against hand-computed fixtures.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::escape::html as esc;

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
/// Computed with [`percentile`] (nearest rank), so every value is one of the
/// samples.
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
    pub(crate) fn from_samples(samples: &[f64]) -> Self {
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
pub(crate) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
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
    let first_day = since.date_naive();
    let days: Vec<NaiveDate> = if since <= until {
        first_day
            .iter_days()
            .take_while(|d| *d <= until.date_naive())
            .collect()
    } else {
        Vec::new()
    };
    let day_index = |day: NaiveDate| -> Option<usize> {
        let i = usize::try_from((day - first_day).num_days()).ok()?;
        (i < days.len()).then_some(i)
    };

    #[derive(Default)]
    struct DayAcc {
        sessions: usize,
        first: Vec<f64>,
        wait: Vec<f64>,
        silence: u64,
    }
    let mut acc: Vec<DayAcc> = days.iter().map(|_| DayAcc::default()).collect();
    for r in records {
        if r.created_at < since || r.created_at > until {
            continue;
        }
        let Some(i) = day_index(r.created_at.date_naive()) else {
            continue;
        };
        let a = &mut acc[i];
        a.sessions += 1;
        a.first.extend(r.first_response_secs.and_then(clean));
        a.wait
            .extend(r.human_wait_secs.iter().copied().filter_map(clean));
        a.silence += u64::from(r.agent_silence_breaches);
    }

    let mut by_rule: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for b in breaches {
        if let Some(i) = day_index(b.day) {
            let row = by_rule
                .entry(b.rule.as_str())
                .or_insert_with(|| vec![0; days.len()]);
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

    let per_day: Vec<DayRow> = days
        .iter()
        .zip(&acc)
        .enumerate()
        .map(|(i, (day, a))| DayRow {
            day: *day,
            sessions: a.sessions,
            first_response_p90: Percentiles::from_samples(&a.first).p90,
            human_wait_p90: Percentiles::from_samples(&a.wait).p90,
            agent_silence_breaches: a.silence,
            rule_breaches: breaches_by_rule.iter().map(|b| b.per_day[i]).sum(),
        })
        .collect();

    let all_first: Vec<f64> = acc.iter().flat_map(|a| a.first.iter().copied()).collect();
    let all_wait: Vec<f64> = acc.iter().flat_map(|a| a.wait.iter().copied()).collect();
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
    for s in &all_first {
        let i = FIRST_RESPONSE_BOUNDS.partition_point(|bound| *bound <= *s);
        buckets[i].count += 1;
    }

    SlaReport {
        since,
        until,
        sessions: acc.iter().map(|a| a.sessions).sum(),
        first_response: Percentiles::from_samples(&all_first),
        human_wait: Percentiles::from_samples(&all_wait),
        agent_silence_breaches: acc.iter().map(|a| a.silence).sum(),
        per_day,
        breaches_by_rule,
        first_response_buckets: buckets,
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

/// A missing value on the page: an em dash.
fn html_duration(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_string(), format_duration)
}

/// A missing value read aloud: "none".
fn aria_duration(v: Option<f64>) -> String {
    v.map_or_else(|| "none".to_string(), format_duration)
}

fn opt_duration(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), format_duration)
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
fn bucket_label(b: &HistogramBucket, ascii: bool) -> String {
    let (dash, ge) = if ascii { ("-", ">=") } else { ("–", "≥") };
    match b.to_secs {
        Some(to) if b.from_secs <= 0.0 => format!("<{}", short_bound(to)),
        Some(to) => format!("{}{dash}{}", short_bound(b.from_secs), short_bound(to)),
        None => format!("{ge}{}", short_bound(b.from_secs)),
    }
}

fn period_text(r: &SlaReport) -> String {
    format!(
        "{} to {} UTC ({} day{})",
        r.since.format("%Y-%m-%d %H:%M"),
        r.until.format("%Y-%m-%d %H:%M"),
        r.per_day.len(),
        if r.per_day.len() == 1 { "" } else { "s" }
    )
}

/// Percent of `part` in `whole`, rounded; 0 for an empty whole.
fn pct(part: usize, whole: usize) -> usize {
    (part * 100 + whole / 2).checked_div(whole).unwrap_or(0)
}

/// Sessions answered within a minute.
fn answered_within_minute(r: &SlaReport) -> usize {
    r.first_response_buckets
        .iter()
        .filter(|b| b.to_secs.is_some_and(|t| t <= 60.0))
        .map(|b| b.count)
        .sum()
}

/// A name made safe for a terminal column: control characters (escape
/// sequences, tabs, newlines) become `?`.
fn terminal_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A plain table: two-space indent, columns padded to their widest cell,
/// right-aligned where `right[i]`.
fn text_table(out: &mut String, header: &[&str], rows: &[Vec<String>], right: &[bool]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::from(" ");
        for (i, cell) in cells.enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            s.push(' ');
            if right[i] {
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&" ".repeat(pad));
            }
            s.push(' ');
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(out, &mut header.iter().copied());
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(out, &mut rule.iter().map(String::as_str));
    for row in rows {
        line(out, &mut row.iter().map(String::as_str));
    }
}

/// The report for the terminal: a summary block, the first-response
/// distribution, breaches by rule and one row per day, in plain
/// space-padded columns (control characters in rule names are replaced).
pub fn render_text(r: &SlaReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "SLA report, {}", period_text(r));
    out.push('\n');
    if r.is_empty() {
        out.push_str("No sessions and no rule breaches in this period.\n\n");
    }
    let answered = r.first_response.count;
    let _ = writeln!(
        out,
        "  Sessions                {:>6}   ({} answered, {} without a reply)",
        r.sessions,
        answered,
        r.sessions.saturating_sub(answered)
    );
    let _ = writeln!(out, "  Rule breaches           {:>6}", r.rule_breaches());
    let _ = writeln!(
        out,
        "  Agent-silence breaches  {:>6}",
        r.agent_silence_breaches
    );
    out.push('\n');
    let prow = |name: &str, p: &Percentiles| -> Vec<String> {
        vec![
            name.to_string(),
            p.count.to_string(),
            opt_duration(p.p50),
            opt_duration(p.p90),
            opt_duration(p.p99),
            opt_duration(p.max),
        ]
    };
    text_table(
        &mut out,
        &["", "samples", "p50", "p90", "p99", "max"],
        &[
            prow("First response", &r.first_response),
            prow("Human wait", &r.human_wait),
        ],
        &[false, true, true, true, true, true],
    );

    out.push_str("\nFirst-response distribution\n");
    if answered == 0 {
        out.push_str("  no first responses\n");
    } else {
        let most = r
            .first_response_buckets
            .iter()
            .map(|b| b.count)
            .max()
            .unwrap_or(0)
            .max(1);
        let rows: Vec<Vec<String>> = r
            .first_response_buckets
            .iter()
            .map(|b| {
                let len = (b.count * 30).div_ceil(most);
                vec![
                    bucket_label(b, true),
                    b.count.to_string(),
                    format!("{}%", pct(b.count, answered)),
                    "#".repeat(len),
                ]
            })
            .collect();
        text_table(
            &mut out,
            &["time", "sessions", "share", ""],
            &rows,
            &[false, true, true, false],
        );
    }

    out.push_str("\nBreaches by rule\n");
    if r.breaches_by_rule.is_empty() {
        out.push_str("  none\n");
    } else {
        let rows: Vec<Vec<String>> = r
            .breaches_by_rule
            .iter()
            .map(|b| vec![terminal_safe(&b.rule), b.total.to_string()])
            .collect();
        text_table(&mut out, &["rule", "total"], &rows, &[false, true]);
    }

    out.push_str("\nPer day (UTC)\n");
    if r.per_day.is_empty() {
        out.push_str("  none\n");
    } else {
        let rows: Vec<Vec<String>> = r
            .per_day
            .iter()
            .map(|d| {
                vec![
                    d.day.format("%Y-%m-%d %a").to_string(),
                    d.sessions.to_string(),
                    opt_duration(d.first_response_p90),
                    opt_duration(d.human_wait_p90),
                    d.agent_silence_breaches.to_string(),
                    d.rule_breaches.to_string(),
                ]
            })
            .collect();
        text_table(
            &mut out,
            &[
                "day",
                "sessions",
                "first resp p90",
                "human wait p90",
                "agent silence",
                "rule breaches",
            ],
            &rows,
            &[false, true, true, true, true, true],
        );
    }
    out
}

// ---------------------------------------------------------------------------
// HTML

/// Truncates a name for a chart legend; the full name goes in a tooltip.
fn short_name(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

const STYLE: &str = r#":root{--ink:#1d2330;--muted:#5f6b7a;--line:#e4e7ec;--bg:#f4f6f9;--fr:#3b6fd8;--hw:#e8710a;--br:#c2185b}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;background:var(--bg);color:var(--ink)}
main{max-width:1000px;margin:0 auto;padding:24px 16px 32px}
header h1{font-size:24px;margin:0;letter-spacing:-.01em}
header p{margin:4px 0 0;color:var(--muted)}
.notice{background:#fff8e1;border:1px solid #f3d27a;border-radius:8px;padding:10px 14px;margin:16px 0 0}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(210px,1fr));gap:12px;margin:18px 0}
.card,figure,section{background:#fff;border-radius:10px;box-shadow:0 1px 2px rgba(16,24,40,.06),0 0 0 1px var(--line)}
.card{padding:12px 16px 14px;border-top:4px solid #98a2b3}
.card.fr{border-top-color:var(--fr)}.card.hw{border-top-color:var(--hw)}.card.br{border-top-color:var(--br)}
.card h2{font-size:12px;font-weight:600;text-transform:uppercase;letter-spacing:.05em;color:var(--muted);margin:0 0 4px}
.big{font-size:32px;font-weight:700;line-height:1.15;font-variant-numeric:tabular-nums}
.big small{font-size:13px;font-weight:600;color:var(--muted);margin-left:6px}
.sub{display:flex;flex-wrap:wrap;gap:4px 14px;margin-top:6px;font-size:14px;color:var(--muted)}
.sub b{color:var(--ink);font-variant-numeric:tabular-nums}
figure{margin:0 0 14px;padding:14px 16px 10px;overflow-x:auto}
figcaption{font-weight:600;font-size:16px;margin-bottom:6px}
figcaption span{display:block;font-weight:400;font-size:13px;color:var(--muted)}
figure svg{display:block;width:100%;height:auto;min-width:520px}
svg text{font-size:12px;fill:#475467}
svg .t{font-size:13px;font-weight:600;fill:var(--ink)}
svg .v{font-size:11px;font-weight:600;fill:var(--ink);paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}
svg .m{fill:#98a2b3}
svg .grid{stroke:#eaecf0}
svg .axis{stroke:#98a2b3}
.empty{color:var(--muted);text-align:center;padding:32px 12px;margin:4px 0 8px;border:1px dashed #cfd4dc;border-radius:8px}
section{padding:14px 16px;margin:0 0 14px}
section h2{font-size:16px;margin:0 0 8px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{padding:6px 8px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
th{font-size:12px;font-weight:600;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr.zero td{color:#98a2b3}td.hi{color:#b3261e;font-weight:600}
section .note{margin:-4px 0 6px;font-size:13px;color:var(--muted)}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:8px;vertical-align:baseline}
.share{display:inline-block;height:8px;border-radius:4px;background:var(--br);vertical-align:middle}
footer{color:var(--muted);font-size:13px;margin-top:18px}
@media (max-width:600px){main{padding:16px 10px 24px}.cards{grid-template-columns:repeat(2,minmax(0,1fr));gap:8px}.card{padding:10px 12px}.big{font-size:24px}.sub{font-size:13px;gap:2px 10px}header h1{font-size:21px}figure,section{padding:12px 10px 8px}}"#;

/// Width of every chart's viewBox.
const CW: f64 = 720.0;
/// Left margin of a plot (y tick labels and the y axis title).
const ML: f64 = 70.0;
/// Right margin of a plot.
const MR: f64 = 14.0;
/// Series colours for rules; more rules than this share an "other" colour.
/// Distinct from the first-response blue and human-wait orange of chart 1.
const PALETTE: [&str; 8] = [
    "#7b5cd6", "#0f9d8a", "#d81b60", "#c79a00", "#4f7cac", "#8d6e63", "#5e9e2f", "#00838f",
];
const OTHER_COLOR: &str = "#98a2b3";
/// Histogram colours, fast (green) to slow (red).
const BUCKET_COLORS: [&str; 7] = [
    "#1e9e6a", "#5bb56b", "#a3c644", "#e6b422", "#f08c1a", "#e0622a", "#c62f2f",
];

/// A plot area inside a chart's viewBox.
struct Frame {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
}

impl Frame {
    fn bottom(&self) -> f64 {
        self.top + self.height
    }
    /// The y coordinate of `v` on an axis from 0 to `max`.
    fn y(&self, v: f64, max: f64) -> f64 {
        self.bottom() - v / max * self.height
    }
    /// Width of one of `n` slots along x.
    fn slot(&self, n: usize) -> f64 {
        self.width / n.max(1) as f64
    }
}

/// A tick step for a duration axis from 0 to `max` seconds: a round
/// duration giving at most four intervals.
fn duration_step(max: f64) -> f64 {
    const STEPS: [f64; 19] = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
        10_800.0, 21_600.0, 43_200.0, 86_400.0, 172_800.0,
    ];
    STEPS
        .iter()
        .copied()
        .find(|s| max / s <= 4.0)
        .unwrap_or_else(|| (max / 4.0 / 86_400.0).ceil() * 86_400.0)
}

/// A tick step for a count axis from 0 to `max`: 1, 2 or 5 times a power of
/// ten, giving at most five intervals.
fn count_step(max: f64) -> f64 {
    if !max.is_finite() {
        return 1.0;
    }
    let mut base = 1.0;
    loop {
        for m in [1.0, 2.0, 5.0] {
            if max / (m * base) <= 5.0 {
                return m * base;
            }
        }
        base *= 10.0;
    }
}

/// A compact duration for an axis tick: `0`, `45s`, `1m30s`, `5m`, `2h`, `1d`.
fn axis_duration(secs: f64) -> String {
    let s = secs.round() as u64;
    if s == 0 {
        "0".to_string()
    } else if s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Horizontal grid lines and y tick labels from 0 to `max` by `step`.
fn y_grid(out: &mut String, f: &Frame, max: f64, step: f64, label: &dyn Fn(f64) -> String) {
    let ticks = (max / step).round() as usize;
    for k in 0..=ticks {
        let v = step * k as f64;
        let y = f.y(v, max);
        let _ = write!(
            out,
            r#"<line class="{}" x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            if k == 0 { "axis" } else { "grid" },
            f.left,
            f.left + f.width,
            f.left - 8.0,
            y + 4.0,
            esc(&label(v))
        );
    }
}

/// A rotated y axis title, centred on the frame.
fn y_title(out: &mut String, f: &Frame, title: &str) {
    let _ = write!(
        out,
        r#"<text transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
        f.top + f.height / 2.0,
        esc(title)
    );
}

/// Day labels under a frame: weekday over date when there is room, thinned
/// out when there are many days.
fn day_labels(out: &mut String, f: &Frame, days: &[NaiveDate]) {
    let n = days.len();
    let slot = f.slot(n);
    let every = n
        .div_ceil(((f.width / 64.0).floor() as usize).max(1))
        .max(1);
    let two_lines = n <= 16;
    for (i, d) in days.iter().enumerate() {
        if i % every != 0 {
            continue;
        }
        let x = f.left + slot * (i as f64 + 0.5);
        let y = f.bottom() + 16.0;
        if two_lines {
            let _ = write!(
                out,
                r#"<text x="{x:.1}" y="{y:.1}" text-anchor="middle">{}</text><text class="m" x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                d.format("%a"),
                y + 14.0,
                d.format("%b %-d")
            );
        } else {
            let _ = write!(
                out,
                r#"<text x="{x:.1}" y="{y:.1}" text-anchor="middle">{}</text>"#,
                d.format("%b %-d")
            );
        }
    }
}

fn svg_open(out: &mut String, height: f64, label: &str) {
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {CW} {height:.0}" role="img" aria-label="{}">"#,
        esc(label)
    );
}

fn figure_open(out: &mut String, id: &str, caption: &str, detail: &str) {
    let _ = write!(
        out,
        r#"<figure id="{id}"><figcaption>{}<span>{}</span></figcaption>"#,
        esc(caption),
        esc(detail)
    );
}

fn empty_state(out: &mut String, message: &str) {
    let _ = write!(out, r#"<p class="empty">{}</p></figure>"#, esc(message));
}

/// One panel of chart 1: a duration per day as bars, with the period's
/// value as a dashed reference line.
struct DurationPanel<'a> {
    title: &'a str,
    color: &'a str,
    values: Vec<Option<f64>>,
    overall: Option<f64>,
    none_message: &'a str,
}

fn duration_panel(out: &mut String, f: &Frame, days: &[NaiveDate], p: &DurationPanel) {
    // Title row: swatch and name on the left, the period's p90 on the right.
    let _ = write!(
        out,
        r#"<rect x="{:.1}" y="{:.1}" width="11" height="11" rx="2" fill="{}"/><text class="t" x="{:.1}" y="{:.1}">{}</text>"#,
        f.left,
        f.top - 27.0,
        p.color,
        f.left + 17.0,
        f.top - 17.0,
        esc(p.title)
    );
    if let Some(o) = p.overall {
        let x = f.left + f.width;
        let _ = write!(
            out,
            r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="1.5" stroke-dasharray="5 3"/><text x="{x:.1}" y="{:.1}" text-anchor="end">period p90 <tspan class="v">{}</tspan></text>"#,
            x - 178.0,
            f.top - 21.0,
            x - 158.0,
            f.top - 21.0,
            p.color,
            f.top - 17.0,
            esc(&format_duration(o))
        );
    }
    let top = p
        .values
        .iter()
        .flatten()
        .copied()
        .chain(p.overall)
        .fold(0.0_f64, f64::max);
    if p.values.iter().all(Option::is_none) {
        let _ = write!(
            out,
            r#"<line class="axis" x1="{:.1}" y1="{b:.1}" x2="{:.1}" y2="{b:.1}"/><text class="m" x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            f.left,
            f.left + f.width,
            f.left + f.width / 2.0,
            f.top + f.height / 2.0,
            esc(p.none_message),
            b = f.bottom()
        );
        day_labels(out, f, days);
        return;
    }
    let step = duration_step(top);
    let max = ((top / step).ceil() * step).max(step);
    y_grid(out, f, max, step, &axis_duration);
    y_title(out, f, "p90");
    let n = days.len();
    let slot = f.slot(n);
    let bw = (slot * 0.62).min(56.0);
    for (i, (day, v)) in days.iter().zip(&p.values).enumerate() {
        let cx = f.left + slot * (i as f64 + 0.5);
        match v {
            Some(v) => {
                let y = f.y(*v, max).min(f.bottom() - 1.5);
                let _ = write!(
                    out,
                    r#"<rect x="{:.1}" y="{y:.1}" width="{bw:.1}" height="{:.1}" rx="2" fill="{}"><title>{}: p90 {}</title></rect>"#,
                    cx - bw / 2.0,
                    f.bottom() - y,
                    p.color,
                    day.format("%a %Y-%m-%d"),
                    esc(&format_duration(*v))
                );
                if n <= 16 {
                    let _ = write!(
                        out,
                        r#"<text class="v" x="{cx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                        y - 5.0,
                        esc(&format_duration(*v))
                    );
                }
            }
            None => {
                let _ = write!(
                    out,
                    r#"<text class="m" x="{cx:.1}" y="{:.1}" text-anchor="middle">–</text>"#,
                    f.bottom() - 5.0
                );
            }
        }
    }
    if let Some(o) = p.overall {
        let y = f.y(o, max);
        let _ = write!(
            out,
            r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="1.5" stroke-dasharray="5 3" opacity=".8"/>"#,
            f.left,
            f.left + f.width,
            p.color
        );
    }
    day_labels(out, f, days);
}

/// Chart 1: first-response p90 and human-wait p90 per day, one panel each
/// (their scales differ by an order of magnitude).
fn chart_daily_p90(out: &mut String, r: &SlaReport) {
    figure_open(
        out,
        "chart-p90",
        "Response times per day",
        "p90 of first response and of human wait per UTC day; the dashed line is the whole period's p90.",
    );
    let has_data = r
        .per_day
        .iter()
        .any(|d| d.first_response_p90.is_some() || d.human_wait_p90.is_some());
    if !has_data {
        empty_state(out, "No first responses or human waits in this period.");
        return;
    }
    let days: Vec<NaiveDate> = r.per_day.iter().map(|d| d.day).collect();
    let label_h = if days.len() <= 16 { 34.0 } else { 22.0 };
    let (title_h, plot_h, gap) = (34.0, 120.0, 14.0);
    let panel_h = title_h + plot_h + label_h;
    let height = 2.0 * panel_h + gap + 24.0;
    svg_open(
        out,
        height,
        &format!(
            "Bar charts of the daily p90 first response and the daily p90 human wait, {} to {}. Period p90: first response {}, human wait {}.",
            r.since.format("%Y-%m-%d"),
            r.until.format("%Y-%m-%d"),
            aria_duration(r.first_response.p90),
            aria_duration(r.human_wait.p90)
        ),
    );
    let panels = [
        DurationPanel {
            title: "First response p90",
            color: "#3b6fd8",
            values: r.per_day.iter().map(|d| d.first_response_p90).collect(),
            overall: r.first_response.p90,
            none_message: "no first responses in this period",
        },
        DurationPanel {
            title: "Human wait p90",
            color: "#e8710a",
            values: r.per_day.iter().map(|d| d.human_wait_p90).collect(),
            overall: r.human_wait.p90,
            none_message: "no human was requested and taken over in this period",
        },
    ];
    for (i, p) in panels.iter().enumerate() {
        let f = Frame {
            left: ML,
            top: i as f64 * (panel_h + gap) + title_h,
            width: CW - ML - MR,
            height: plot_h,
        };
        duration_panel(out, &f, &days, p);
    }
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">day (UTC)</text></svg></figure>"#,
        ML + (CW - ML - MR) / 2.0,
        height - 6.0
    );
}

/// Chart 2: rule breaches per day, stacked by rule, with a legend.
fn chart_breaches(out: &mut String, r: &SlaReport) {
    figure_open(
        out,
        "chart-breaches",
        "Rule breaches per day",
        "Timer-triggered rule actions per UTC day, stacked by rule.",
    );
    if r.rule_breaches() == 0 || r.per_day.is_empty() {
        empty_state(out, "No rule breaches in this period.");
        return;
    }
    // The biggest rules get their own colour, the rest share "other".
    let own = if r.breaches_by_rule.len() <= PALETTE.len() {
        r.breaches_by_rule.len()
    } else {
        PALETTE.len() - 1
    };
    let mut series: Vec<(String, String, &str, Vec<u64>)> = r.breaches_by_rule[..own]
        .iter()
        .zip(PALETTE)
        .map(|(b, c)| {
            (
                short_name(&b.rule, 32),
                format!("{} ({})", b.rule, b.total),
                c,
                b.per_day.clone(),
            )
        })
        .collect();
    let rest = &r.breaches_by_rule[own..];
    if !rest.is_empty() {
        let sums = (0..r.per_day.len())
            .map(|i| rest.iter().filter_map(|b| b.per_day.get(i)).sum())
            .collect();
        let total: u64 = rest.iter().map(|b| b.total).sum();
        series.push((
            format!("{} other rules", rest.len()),
            format!("{} other rules ({total})", rest.len()),
            OTHER_COLOR,
            sums,
        ));
    }

    // Legend rows, laid out before the plot so the plot can start below.
    let mut legend = String::new();
    let (mut x, mut row) = (ML, 0usize);
    for (name, full, color, _) in &series {
        let w = 16.0 + name.chars().count() as f64 * 6.6 + 22.0;
        if x + w > CW - MR && x > ML {
            x = ML;
            row += 1;
        }
        let y = 8.0 + row as f64 * 20.0;
        let _ = write!(
            legend,
            r#"<g><title>{}</title><rect x="{x:.1}" y="{y:.1}" width="11" height="11" rx="2" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text></g>"#,
            esc(full),
            x + 16.0,
            y + 10.0,
            esc(name)
        );
        x += w;
    }
    let legend_h = (row + 1) as f64 * 20.0;
    let days: Vec<NaiveDate> = r.per_day.iter().map(|d| d.day).collect();
    let label_h = if days.len() <= 16 { 34.0 } else { 22.0 };
    let f = Frame {
        left: ML,
        top: 8.0 + legend_h + 22.0,
        width: CW - ML - MR,
        height: 160.0,
    };
    let height = f.bottom() + label_h + 24.0;
    svg_open(
        out,
        height,
        &format!(
            "Stacked bar chart of rule breaches per day, {} to {}: {} in total; {}.",
            r.since.format("%Y-%m-%d"),
            r.until.format("%Y-%m-%d"),
            r.rule_breaches(),
            r.breaches_by_rule
                .iter()
                .map(|b| format!("{} {}", b.rule, b.total))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    out.push_str(&legend);
    let top = r.per_day.iter().map(|d| d.rule_breaches).max().unwrap_or(0) as f64;
    let step = count_step(top);
    let max = ((top / step).ceil() * step).max(step);
    y_grid(out, &f, max, step, &|v| format!("{v:.0}"));
    y_title(out, &f, "breaches");
    let n = days.len();
    let slot = f.slot(n);
    let bw = (slot * 0.62).min(56.0);
    for (i, day) in days.iter().enumerate() {
        let cx = f.left + slot * (i as f64 + 0.5);
        let mut acc = 0u64;
        for (name, _, color, counts) in &series {
            let c = counts.get(i).copied().unwrap_or(0);
            if c == 0 {
                continue;
            }
            let y0 = f.y(acc as f64, max);
            acc += c;
            let y1 = f.y(acc as f64, max);
            let _ = write!(
                out,
                r##"<rect x="{:.1}" y="{y1:.1}" width="{bw:.1}" height="{:.1}" fill="{color}" stroke="#fff" stroke-width=".75"><title>{}: {} on {}</title></rect>"##,
                cx - bw / 2.0,
                y0 - y1,
                esc(name),
                c,
                day.format("%a %Y-%m-%d")
            );
        }
        if acc > 0 && n <= 31 {
            let _ = write!(
                out,
                r#"<text class="v" x="{cx:.1}" y="{:.1}" text-anchor="middle">{acc}</text>"#,
                f.y(acc as f64, max) - 5.0
            );
        }
    }
    day_labels(out, &f, &days);
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">day (UTC)</text></svg></figure>"#,
        f.left + f.width / 2.0,
        height - 6.0
    );
}

/// Chart 3: the distribution of first-response times.
fn chart_distribution(out: &mut String, r: &SlaReport) {
    let total = r.first_response.count;
    let within = answered_within_minute(r);
    figure_open(
        out,
        "chart-distribution",
        "How fast visitors got a first reply",
        &if total == 0 {
            "Sessions by time from the visitor's first message to the first bot or agent reply."
                .to_string()
        } else {
            format!(
                "{within} of {total} answered sessions ({}%) got a first reply within a minute; {} got none.",
                pct(within, total),
                r.sessions.saturating_sub(total)
            )
        },
    );
    if total == 0 {
        empty_state(out, "No first responses in this period.");
        return;
    }
    let f = Frame {
        left: ML,
        top: 22.0,
        width: CW - ML - MR,
        height: 170.0,
    };
    let height = f.bottom() + 22.0 + 26.0;
    svg_open(
        out,
        height,
        &format!(
            "Histogram of first-response times: {}.",
            r.first_response_buckets
                .iter()
                .map(|b| format!("{} {}", bucket_label(b, true), b.count))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let top = r
        .first_response_buckets
        .iter()
        .map(|b| b.count)
        .max()
        .unwrap_or(0) as f64;
    let step = count_step(top);
    let max = ((top / step).ceil() * step).max(step);
    y_grid(out, &f, max, step, &|v| format!("{v:.0}"));
    y_title(out, &f, "sessions");
    let n = r.first_response_buckets.len();
    let slot = f.slot(n);
    let bw = slot * 0.72;
    for (i, b) in r.first_response_buckets.iter().enumerate() {
        let cx = f.left + slot * (i as f64 + 0.5);
        let label = bucket_label(b, false);
        let color = BUCKET_COLORS[i.min(BUCKET_COLORS.len() - 1)];
        let y = f.y(b.count as f64, max);
        if b.count > 0 {
            let _ = write!(
                out,
                r#"<rect x="{:.1}" y="{y:.1}" width="{bw:.1}" height="{:.1}" rx="2" fill="{color}"><title>{}: {} sessions</title></rect>"#,
                cx - bw / 2.0,
                (f.bottom() - y).max(1.5),
                esc(&label),
                b.count
            );
        }
        let _ = write!(
            out,
            r#"<text class="v" x="{cx:.1}" y="{:.1}" text-anchor="middle">{} <tspan class="m">({}%)</tspan></text><text x="{cx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            y.min(f.bottom() - 1.5) - 6.0,
            b.count,
            pct(b.count, total),
            f.bottom() + 17.0,
            esc(&label)
        );
    }
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time to first reply</text></svg></figure>"#,
        f.left + f.width / 2.0,
        height - 6.0
    );
}

/// ` hi` when a day's value is worse than the period's.
fn worse(day: Option<f64>, period: Option<f64>) -> &'static str {
    match (day, period) {
        (Some(d), Some(p)) if d > p => " hi",
        _ => "",
    }
}

fn card(out: &mut String, class: &str, title: &str, big: &str, unit: &str, sub: &[(&str, String)]) {
    let _ = write!(
        out,
        r#"<div class="card {class}"><h2>{}</h2><div class="big">{}{}</div><div class="sub">"#,
        esc(title),
        esc(big),
        if unit.is_empty() {
            String::new()
        } else {
            format!("<small>{}</small>", esc(unit))
        }
    );
    for (k, v) in sub {
        let _ = write!(out, "<span>{} <b>{}</b></span>", esc(k), esc(v));
    }
    out.push_str("</div></div>");
}

/// The report as one self-contained HTML page: inline CSS and SVG, no
/// scripts, no external assets; every string from the data is escaped.
///
/// It holds the period, headline cards (sessions, first response and human
/// wait p50/p90/p99, breaches), three charts — daily p90s, rule breaches per
/// day stacked by rule, the first-response distribution — each an
/// `<svg role="img" aria-label=…>` in a `<figure>` with a `<figcaption>` (an
/// empty-state message instead when it has no data), and the rule and
/// per-day tables.
pub fn render_html(r: &SlaReport) -> String {
    let mut h = String::with_capacity(32 * 1024);
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>skyrules SLA report</title><style>{STYLE}</style></head><body><main><header><h1>SLA report</h1><p>{}</p></header>"#,
        esc(&period_text(r))
    );
    if r.is_empty() {
        h.push_str(r#"<p class="notice">No sessions and no rule breaches in this period: nothing to chart yet.</p>"#);
    }

    let answered = r.first_response.count;
    h.push_str(r#"<div class="cards">"#);
    card(
        &mut h,
        "",
        "Sessions",
        &r.sessions.to_string(),
        "",
        &[
            ("answered", answered.to_string()),
            ("no reply", r.sessions.saturating_sub(answered).to_string()),
        ],
    );
    card(
        &mut h,
        "fr",
        "First response",
        &html_duration(r.first_response.p50),
        "p50",
        &[
            ("p90", html_duration(r.first_response.p90)),
            ("p99", html_duration(r.first_response.p99)),
        ],
    );
    card(
        &mut h,
        "hw",
        "Human wait",
        &html_duration(r.human_wait.p50),
        "p50",
        &[
            ("p90", html_duration(r.human_wait.p90)),
            ("p99", html_duration(r.human_wait.p99)),
            ("requests", r.human_wait.count.to_string()),
        ],
    );
    card(
        &mut h,
        "br",
        "Breaches",
        &r.rule_breaches().to_string(),
        "by rules",
        &[
            ("agent silence", r.agent_silence_breaches.to_string()),
            ("rules", r.breaches_by_rule.len().to_string()),
        ],
    );
    h.push_str("</div>");

    chart_daily_p90(&mut h, r);
    chart_breaches(&mut h, r);
    chart_distribution(&mut h, r);

    h.push_str("<section><h2>Breaches by rule</h2>");
    if r.breaches_by_rule.is_empty() {
        h.push_str(r#"<p class="empty">No rule breaches in this period.</p>"#);
    } else {
        let top = r.breaches_by_rule[0].total.max(1);
        let own = if r.breaches_by_rule.len() <= PALETTE.len() {
            r.breaches_by_rule.len()
        } else {
            PALETTE.len() - 1
        };
        h.push_str(r#"<div class="scroll"><table><tr><th>Rule</th><th class="n">Total</th><th class="n">Busiest day</th><th></th></tr>"#);
        for (i, b) in r.breaches_by_rule.iter().enumerate() {
            let color = if i < own { PALETTE[i] } else { OTHER_COLOR };
            let busiest = b
                .per_day
                .iter()
                .zip(&r.per_day)
                .max_by(|(a, da), (c, dc)| a.cmp(c).then_with(|| dc.day.cmp(&da.day)))
                .map(|(c, d)| format!("{} ({c})", d.day.format("%a %b %-d")))
                .unwrap_or_default();
            let _ = write!(
                h,
                r#"<tr><td><span class="sw" style="background:{color}"></span>{}</td><td class="n">{}</td><td class="n">{}</td><td style="width:30%"><span class="share" style="width:{:.0}%;background:{color}"></span></td></tr>"#,
                esc(&b.rule),
                b.total,
                esc(&busiest),
                (b.total as f64 / top as f64 * 100.0).max(1.0)
            );
        }
        h.push_str("</table></div>");
    }
    h.push_str("</section>");

    h.push_str(r#"<section><h2>Per day (UTC)</h2><p class="note">A day's p90 in red is worse than the whole period's.</p>"#);
    if r.per_day.is_empty() {
        h.push_str(r#"<p class="empty">The period has no days.</p>"#);
    } else {
        h.push_str(r#"<div class="scroll"><table><tr><th>Day</th><th class="n">Sessions</th><th class="n">First response p90</th><th class="n">Human wait p90</th><th class="n">Agent silence</th><th class="n">Rule breaches</th></tr>"#);
        for d in &r.per_day {
            let zero = d.sessions == 0 && d.rule_breaches == 0;
            let _ = write!(
                h,
                r#"<tr{}><td>{}</td><td class="n">{}</td><td class="n{}">{}</td><td class="n{}">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
                if zero { r#" class="zero""# } else { "" },
                d.day.format("%a %Y-%m-%d"),
                d.sessions,
                worse(d.first_response_p90, r.first_response.p90),
                esc(&html_duration(d.first_response_p90)),
                worse(d.human_wait_p90, r.human_wait.p90),
                esc(&html_duration(d.human_wait_p90)),
                d.agent_silence_breaches,
                d.rule_breaches
            );
        }
        h.push_str("</table></div>");
    }
    h.push_str("</section>");

    h.push_str(
        "<footer>Generated by skyrules. Percentiles use the nearest-rank method (every value is a real sample). Sessions count on the UTC day they were created; first response runs from the visitor's first message to the first bot or agent reply, human wait from a request for a human to the take-over.</footer></main></body></html>\n",
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(d: u32, h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, d, h, m, s).unwrap()
    }

    fn day(m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2025, m, d).unwrap()
    }

    fn rec(
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

    fn bc(rule: &str, d: NaiveDate, count: u64) -> BreachCount {
        BreachCount {
            rule: rule.to_string(),
            day: d,
            count,
        }
    }

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

    /// 10 sessions over Mar 1–3 (Mar 4 empty), two outside the window, two
    /// rules' breaches (one duplicated row, two rows outside the window).
    fn fixture() -> (
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
        assert_eq!(axis_duration(90.0), "1m30s");
        assert_eq!(axis_duration(300.0), "5m");
        assert_eq!(axis_duration(5400.0), "1h30m");
        assert_eq!(duration_step(200.0), 60.0);
        assert_eq!(duration_step(40.0), 10.0);
        assert_eq!(count_step(7.0), 2.0);
        assert_eq!(count_step(0.0), 1.0);
        assert_eq!(count_step(230.0), 50.0);
    }

    #[test]
    fn text_report_has_every_section() {
        let (records, breaches, since, until) = fixture();
        let t = render_text(&build_report(&records, &breaches, since, until));
        assert!(t.is_ascii(), "{t}");
        assert!(
            t.contains("2025-03-01 00:00 to 2025-03-04 12:00 UTC (4 days)"),
            "{t}"
        );
        assert!(t.contains("Sessions                    10"), "{t}");
        let first = t.lines().find(|l| l.contains("First response")).unwrap();
        assert_eq!(
            first.split_whitespace().collect::<Vec<_>>(),
            ["First", "response", "9", "20s", "3m", "20s", "3m", "20s", "3m", "20s"]
        );
        let wait = t.lines().find(|l| l.contains("Human wait")).unwrap();
        assert!(
            wait.contains("2m 00s") && wait.contains("10m 00s"),
            "{wait}"
        );
        assert!(t.contains("close-idle        6"), "{t}");
        assert!(t.contains("escalate-vip      3"), "{t}");
        let mar4 = t
            .lines()
            .find(|l| l.trim_start().starts_with("2025-03-04"))
            .unwrap();
        assert_eq!(
            mar4.split_whitespace().collect::<Vec<_>>(),
            ["2025-03-04", "Tue", "0", "-", "-", "0", "0"]
        );
        let mar1 = t.lines().find(|l| l.contains("2025-03-01 Sat")).unwrap();
        assert_eq!(
            mar1.split_whitespace().collect::<Vec<_>>(),
            ["2025-03-01", "Sat", "4", "40s", "5m", "00s", "3", "3"]
        );
    }

    #[test]
    fn text_report_neutralises_control_characters() {
        let r = build_report(
            &[],
            &[bc("evil\x1b[2Jrule\n", day(3, 1), 1)],
            at(1, 0, 0, 0),
            at(1, 1, 0, 0),
        );
        let t = render_text(&r);
        assert!(!t.contains('\x1b'));
        assert!(t.contains("evil?[2Jrule?"));
        let empty = render_text(&build_report(&[], &[], at(1, 0, 0, 0), at(2, 0, 0, 0)));
        assert!(empty.contains("No sessions and no rule breaches"));
        assert!(empty.contains("no first responses"));
    }

    #[test]
    fn html_escapes_and_has_three_charts() {
        let (records, mut breaches, since, until) = fixture();
        breaches.push(bc("<script>alert('x')</script> & \"co\"", day(3, 2), 2));
        let h = render_html(&build_report(&records, &breaches, since, until));
        assert!(!h.contains("<script"), "rule name not escaped");
        assert!(h.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;co&quot;"));
        assert_eq!(h.matches("<svg").count(), 3);
        assert_eq!(h.matches(r#"role="img""#).count(), 3);
        assert_eq!(h.matches("aria-label=").count(), 3);
        assert_eq!(h.matches("<figure").count(), 3);
        assert_eq!(h.matches("<figcaption>").count(), 3);
        assert!(h.contains("<title>skyrules SLA report</title>"));
        // No external assets: the only URL is the SVG namespace.
        assert!(!h.replace("http://www.w3.org/2000/svg", "").contains("http"));
        assert!(!h.contains("src=") && !h.contains("<link"));
    }

    #[test]
    fn html_with_no_data_shows_empty_states() {
        let r = build_report(&[], &[], at(1, 0, 0, 0), at(7, 0, 0, 0));
        let h = render_html(&r);
        assert_eq!(h.matches("<svg").count(), 0);
        assert_eq!(h.matches("<figure").count(), 3);
        assert_eq!(h.matches(r#"class="empty""#).count(), 4);
        assert!(h.contains("No sessions and no rule breaches in this period"));
        assert!(!h.contains("NaN") && !h.contains("inf\""));
        // An inverted window must not panic either.
        let h = render_html(&build_report(&[], &[], at(7, 0, 0, 0), at(1, 0, 0, 0)));
        assert!(h.contains("The period has no days."));
    }

    #[test]
    fn html_with_many_rules_and_days_stays_sane() {
        let since = at(1, 0, 0, 0);
        let until = since + chrono::Duration::days(89);
        let breaches: Vec<BreachCount> = (0..12)
            .flat_map(|i| {
                (0..90).map(move |d| {
                    bc(
                        &format!("rule-{i:02}"),
                        since.date_naive() + chrono::Duration::days(d),
                        (d as u64 + i) % 4,
                    )
                })
            })
            .collect();
        let records: Vec<SlaRecord> = (0..90)
            .map(|d| {
                rec(
                    "s",
                    since + chrono::Duration::days(d),
                    Some(d as f64 * 7.0),
                    &[],
                    0,
                )
            })
            .collect();
        let r = build_report(&records, &breaches, since, until);
        assert_eq!(r.per_day.len(), 90);
        let h = render_html(&r);
        assert_eq!(h.matches("<svg").count(), 3);
        assert!(h.contains("5 other rules"));
        assert!(!h.contains("NaN") && !h.contains("inf\""));
    }
}
