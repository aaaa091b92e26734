//! The SLA report for the terminal: [`render_text`].
//!
//! This module owns the plain-text layout — a summary block, the
//! first-response distribution, breaches by rule and one row per day, in
//! space-padded ASCII columns — and keeping rule names from steering the
//! terminal. It computes nothing (that is `model`) and knows nothing of HTML.

use std::fmt::Write as _;

use super::model::{bucket_label, format_duration, pct, period_text, Percentiles, SlaReport};

/// The report for the terminal: a summary block, the first-response
/// distribution, breaches by rule and one row per day, in plain
/// space-padded columns (control characters in rule names are replaced).
pub fn render_text(r: &SlaReport) -> String {
    let mut out = String::new();
    summary(&mut out, r);
    distribution(&mut out, r);
    by_rule(&mut out, r);
    per_day(&mut out, r);
    out
}

/// A duration, `-` when there is none.
fn opt_duration(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), format_duration)
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

/// The period, the headline counts and the percentile table.
fn summary(out: &mut String, r: &SlaReport) {
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
        out,
        &["", "samples", "p50", "p90", "p99", "max"],
        &[
            prow("First response", &r.first_response),
            prow("Human wait", &r.human_wait),
        ],
        &[false, true, true, true, true, true],
    );
}

/// The first-response buckets with their share and a `#` bar.
fn distribution(out: &mut String, r: &SlaReport) {
    out.push_str("\nFirst-response distribution\n");
    let answered = r.first_response.count;
    if answered == 0 {
        out.push_str("  no first responses\n");
        return;
    }
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
        out,
        &["time", "sessions", "share", ""],
        &rows,
        &[false, true, true, false],
    );
}

/// Each rule's breaches in the window, most first.
fn by_rule(out: &mut String, r: &SlaReport) {
    out.push_str("\nBreaches by rule\n");
    if r.breaches_by_rule.is_empty() {
        out.push_str("  none\n");
        return;
    }
    let rows: Vec<Vec<String>> = r
        .breaches_by_rule
        .iter()
        .map(|b| vec![terminal_safe(&b.rule), b.total.to_string()])
        .collect();
    text_table(out, &["rule", "total"], &rows, &[false, true]);
}

/// One row per UTC day.
fn per_day(out: &mut String, r: &SlaReport) {
    out.push_str("\nPer day (UTC)\n");
    if r.per_day.is_empty() {
        out.push_str("  none\n");
        return;
    }
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
        out,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sla::fixtures::{at, bc, day, fixture};
    use crate::report::sla::model::build_report;

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
}
