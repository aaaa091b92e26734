//! Business-hours calendars: the `[hours.NAME]` tables of the config.
//!
//! A calendar is an IANA time zone, weekly opening hours (`"Mon-Fri
//! 09:00-18:00"`) and holidays (`"2026-12-25"`, closed all day). Opening hours
//! are local wall-clock times in the zone, so daylight-saving changes are
//! handled the way people expect: a day with a spring-forward gap has fewer
//! real hours, one with a fall-back overlap has more. A local time that does
//! not exist rounds forward to the first instant that does; an ambiguous one
//! takes the earlier instant.
//!
//! Owns: parsing and validating calendars (errors name the key, e.g.
//! `` `hours.support.week[1]` ``), and the time arithmetic the rules need:
//! whether a calendar is open, when it next opens, how much open time lies
//! between two instants, and when a business-time timer fires.
//! Does not own: reading the config file, the rules API (`ev.in_hours(...)`)
//! or the timers; those call into [`Calendars`] and [`Calendar`].
//!
//! Cost: every query walks local days, a few hundred nanoseconds per day, so
//! a span of a few days costs microseconds. Searches give up after
//! [`MAX_CLOSED_DAYS`] days without any open time, so a calendar that never
//! opens cannot hang a caller.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, TimeZone, Utc,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// Searches stop after this many consecutive local days without open time.
const MAX_CLOSED_DAYS: u32 = 400;

/// Hard limit, in local days, on any single walk (about 100 years).
const MAX_WALK_DAYS: u32 = 36_600;

/// Minutes in a day; `24:00` as an end time.
const DAY_MINUTES: u16 = 24 * 60;

/// Raw config of one calendar, as in `[hours.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarConfig {
    /// IANA time zone name, e.g. `"Europe/Berlin"`.
    pub tz: String,
    /// Weekly opening hours, e.g. `["Mon-Fri 09:00-18:00", "Sat 10:00-14:00"]`.
    pub week: Vec<String>,
    /// Local dates closed all day, `"YYYY-MM-DD"`.
    #[serde(default)]
    pub holidays: Vec<String>,
}

/// A bad calendar in the config; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoursError {
    /// `tz` is not an IANA time zone name.
    #[error(
        "`{key}`: unknown time zone \"{value}\" (expected an IANA name such as \"Europe/Berlin\")"
    )]
    UnknownTimeZone {
        /// e.g. `hours.support.tz`.
        key: String,
        /// The configured name.
        value: String,
    },
    /// A `week` entry cannot be parsed.
    #[error("`{key}`: \"{entry}\": {reason}; expected e.g. \"Mon-Fri 09:00-18:00\"")]
    Week {
        /// e.g. `hours.support.week[1]`.
        key: String,
        /// The configured entry.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `holidays` entry is not a `YYYY-MM-DD` date.
    #[error("`{key}`: \"{value}\": expected a date \"YYYY-MM-DD\", e.g. \"2026-12-25\"")]
    Holiday {
        /// e.g. `hours.support.holidays[0]`.
        key: String,
        /// The configured entry.
        value: String,
    },
}

impl HoursError {
    /// The dotted config key at fault, e.g. `hours.support.week[1]`.
    pub fn key(&self) -> &str {
        match self {
            HoursError::UnknownTimeZone { key, .. }
            | HoursError::Week { key, .. }
            | HoursError::Holiday { key, .. } => key,
        }
    }
}

/// A parsed calendar.
#[derive(Clone)]
pub struct Calendar {
    name: String,
    tz: Tz,
    /// Open ranges per weekday (Monday = 0) in local minutes, sorted, merged.
    week: [Vec<(u16, u16)>; 7],
    holidays: BTreeSet<NaiveDate>,
}

impl fmt::Debug for Calendar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Calendar")
            .field("name", &self.name)
            .field("tz", &self.tz.name())
            .field("week", &self.week)
            .field("holidays", &self.holidays)
            .finish()
    }
}

impl Calendar {
    /// Parses `[hours.NAME]`; errors name the offending key.
    pub fn parse(name: &str, c: &CalendarConfig) -> Result<Calendar, HoursError> {
        let tz: Tz =
            c.tz.trim()
                .parse()
                .map_err(|_| HoursError::UnknownTimeZone {
                    key: format!("hours.{name}.tz"),
                    value: c.tz.clone(),
                })?;

        let mut week: [Vec<(u16, u16)>; 7] = Default::default();
        for (i, entry) in c.week.iter().enumerate() {
            let (days, range) = parse_week_entry(entry).map_err(|reason| HoursError::Week {
                key: format!("hours.{name}.week[{i}]"),
                entry: entry.clone(),
                reason,
            })?;
            for d in days {
                week[d].push(range);
            }
        }
        for ranges in &mut week {
            merge_ranges(ranges);
        }

        let mut holidays = BTreeSet::new();
        for (i, h) in c.holidays.iter().enumerate() {
            let date = parse_date(h.trim()).ok_or_else(|| HoursError::Holiday {
                key: format!("hours.{name}.holidays[{i}]"),
                value: h.clone(),
            })?;
            holidays.insert(date);
        }

        Ok(Calendar {
            name: name.to_string(),
            tz,
            week,
            holidays,
        })
    }

    /// The calendar's name (the `NAME` of `[hours.NAME]`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The calendar's time zone.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// Whether the calendar is open at `t` (opening ranges are half-open).
    pub fn is_open(&self, t: DateTime<Utc>) -> bool {
        if self.never_open() {
            return false;
        }
        let d = self.local_date(t);
        // Neighbouring days too, for zones whose DST change crosses midnight.
        [d.pred_opt(), Some(d), d.succ_opt()]
            .into_iter()
            .flatten()
            .any(|day| self.day_intervals(day).any(|(s, e)| s <= t && t < e))
    }

    /// The first open instant at or after `t` (`t` itself if open); `None`
    /// if the calendar does not open within [`MAX_CLOSED_DAYS`] days.
    pub fn next_open(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.never_open() {
            return None;
        }
        let start = self.local_date(t);
        let mut day = start.pred_opt().unwrap_or(start);
        for _ in 0..MAX_CLOSED_DAYS + 2 {
            if let Some((s, _)) = self.day_intervals(day).find(|&(_, e)| e > t) {
                return Some(s.max(t));
            }
            day = day.succ_opt()?;
        }
        None
    }

    /// Open time within `[from, to)`; zero if `to <= from`.
    pub fn business_elapsed(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> std::time::Duration {
        if to <= from || self.never_open() {
            return std::time::Duration::ZERO;
        }
        let first = self.local_date(from);
        let last = self.local_date(to);
        let mut day = first.pred_opt().unwrap_or(first);
        let mut total = TimeDelta::zero();
        for _ in 0..MAX_WALK_DAYS {
            for (s, e) in self.day_intervals(day) {
                let (s, e) = (s.max(from), e.min(to));
                if s < e {
                    total += e - s;
                }
            }
            match day.succ_opt() {
                Some(next) if day <= last => day = next,
                _ => break,
            }
        }
        total.to_std().unwrap_or_default()
    }

    /// The earliest `t` with `business_elapsed(from, t) >= business`, i.e. when
    /// a timer of `business` open time started at `from` fires; `None` if
    /// the calendar stays closed for [`MAX_CLOSED_DAYS`] days on the way.
    pub fn deadline(
        &self,
        from: DateTime<Utc>,
        business: std::time::Duration,
    ) -> Option<DateTime<Utc>> {
        if business.is_zero() {
            return Some(from);
        }
        if self.never_open() {
            return None;
        }
        let mut remaining = TimeDelta::from_std(business).ok()?;
        let first = self.local_date(from);
        let mut day = first.pred_opt().unwrap_or(first);
        let mut closed_days = 0;
        for _ in 0..MAX_WALK_DAYS {
            let mut open_today = false;
            for (s, e) in self.day_intervals(day) {
                let s = s.max(from);
                if s >= e {
                    continue;
                }
                open_today = true;
                let available = e - s;
                if available >= remaining {
                    return s.checked_add_signed(remaining);
                }
                remaining -= available;
            }
            if open_today {
                closed_days = 0;
            } else {
                closed_days += 1;
                if closed_days > MAX_CLOSED_DAYS + 1 {
                    return None;
                }
            }
            day = day.succ_opt()?;
        }
        None
    }

    /// When the calendar next opens, for reply texts: `"now"` if open at `t`,
    /// else e.g. `"Monday 09:00"` in the calendar's zone (with the date,
    /// e.g. `"Monday 4 January 09:00"`, when it is a week or more away).
    pub(crate) fn describe_next_open(&self, t: DateTime<Utc>) -> Option<String> {
        let next = self.next_open(t)?;
        if next == t {
            return Some("now".to_string());
        }
        let local = next.with_timezone(&self.tz);
        let days_away = (local.date_naive() - t.with_timezone(&self.tz).date_naive()).num_days();
        let format = if days_away >= 7 {
            "%A %-d %B %H:%M"
        } else {
            "%A %H:%M"
        };
        Some(local.format(format).to_string())
    }

    /// True if no weekday has any opening hours.
    fn never_open(&self) -> bool {
        self.week.iter().all(Vec::is_empty)
    }

    /// The local calendar date of `t` in the calendar's zone.
    fn local_date(&self, t: DateTime<Utc>) -> NaiveDate {
        t.with_timezone(&self.tz).date_naive()
    }

    /// The open intervals of local date `day` as UTC instants, in order,
    /// skipping holidays and ranges that vanish in a DST gap.
    fn day_intervals(
        &self,
        day: NaiveDate,
    ) -> impl Iterator<Item = (DateTime<Utc>, DateTime<Utc>)> + '_ {
        let ranges: &[(u16, u16)] = if self.holidays.contains(&day) {
            &[]
        } else {
            &self.week[day.weekday().num_days_from_monday() as usize]
        };
        ranges.iter().filter_map(move |&(s, e)| {
            let s = self.resolve(day, s)?;
            let e = self.resolve(day, e)?;
            (s < e).then_some((s, e))
        })
    }

    /// The instant of local wall-clock time `minute` (0..=1440) on `day`:
    /// the earlier one if ambiguous, the first existing one after if in a gap.
    fn resolve(&self, day: NaiveDate, minute: u16) -> Option<DateTime<Utc>> {
        let naive = day
            .and_time(NaiveTime::MIN)
            .checked_add_signed(TimeDelta::minutes(i64::from(minute)))?;
        match self.tz.from_local_datetime(&naive) {
            LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
            LocalResult::None => self.first_instant_at_or_after(naive),
        }
    }

    /// The first instant whose local time is at least `naive` (used for
    /// local times in a DST gap: that is the instant the gap ends).
    fn first_instant_at_or_after(&self, naive: NaiveDateTime) -> Option<DateTime<Utc>> {
        // UTC offsets lie within ±26 h, so the answer is in this window.
        let window = 26 * 3600;
        let base = naive.and_utc().timestamp();
        let (mut lo, mut hi) = (base - window, base + window);
        let reached = |secs: i64| {
            DateTime::from_timestamp(secs, 0)
                .map(|u| u.with_timezone(&self.tz).naive_local() >= naive)
        };
        if !reached(hi)? {
            return None;
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if reached(mid)? {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        DateTime::from_timestamp(hi, 0)
    }
}

/// All calendars by name.
#[derive(Debug, Clone, Default)]
pub struct Calendars {
    by_name: BTreeMap<String, Calendar>,
}

impl Calendars {
    /// Parses the whole `[hours]` table; the first bad calendar is the error.
    pub fn parse(raw: &BTreeMap<String, CalendarConfig>) -> Result<Calendars, HoursError> {
        let by_name = raw
            .iter()
            .map(|(name, c)| Ok((name.clone(), Calendar::parse(name, c)?)))
            .collect::<Result<_, HoursError>>()?;
        Ok(Calendars { by_name })
    }

    /// The calendar called `name`, if configured.
    pub fn get(&self, name: &str) -> Option<&Calendar> {
        self.by_name.get(name)
    }

    /// The configured calendar names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    /// Whether no calendars are configured.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Parses `"Mon-Fri 09:00-18:00"` into weekday indexes (Monday = 0) and a
/// range of local minutes.
fn parse_week_entry(entry: &str) -> Result<(Vec<usize>, (u16, u16)), String> {
    let mut parts = entry.split_whitespace();
    let (Some(days), Some(range), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err("expected days and a time range separated by a space".to_string());
    };

    let days = match days.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse_day(a)?, parse_day(b)?);
            let mut out = vec![a];
            let mut d = a;
            while d != b {
                d = (d + 1) % 7;
                out.push(d);
            }
            out
        }
        None => vec![parse_day(days)?],
    };

    let Some((start, end)) = range.split_once('-') else {
        return Err(format!("bad time range \"{range}\""));
    };
    let (start, end) = (parse_time(start)?, parse_time(end)?);
    if start >= DAY_MINUTES {
        return Err("24:00 can only end a range".to_string());
    }
    if start >= end {
        return Err(
            "start must be before end (a range cannot cross midnight: split it in two)".to_string(),
        );
    }
    Ok((days, (start, end)))
}

/// Parses a day name (`Mon`..`Sun` or in full, any case) to Monday = 0.
fn parse_day(s: &str) -> Result<usize, String> {
    const NAMES: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let lower = s.to_ascii_lowercase();
    NAMES
        .iter()
        .position(|full| lower == full[..3] || lower == *full)
        .ok_or_else(|| {
            format!("unknown day \"{s}\" (expected Mon, Tue, Wed, Thu, Fri, Sat or Sun)")
        })
}

/// Parses `HH:MM` (00:00..=24:00) to minutes after midnight.
fn parse_time(s: &str) -> Result<u16, String> {
    let bad = || format!("bad time \"{s}\" (expected HH:MM, 00:00 to 24:00)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let digits = |x: &str, max_len: usize| {
        !x.is_empty() && x.len() <= max_len && x.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(h, 2) || !digits(m, 2) || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// Parses a strict `YYYY-MM-DD` date.
fn parse_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape_ok {
        return None;
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

/// Sorts ranges and merges overlapping or touching ones.
fn merge_ranges(ranges: &mut Vec<(u16, u16)>) {
    ranges.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for &(s, e) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    *ranges = merged;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(tz: &str, week: &[&str], holidays: &[&str]) -> CalendarConfig {
        CalendarConfig {
            tz: tz.to_string(),
            week: week.iter().map(|s| s.to_string()).collect(),
            holidays: holidays.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn cal(tz: &str, week: &[&str], holidays: &[&str]) -> Calendar {
        Calendar::parse("support", &config(tz, week, holidays)).unwrap()
    }

    fn office(tz: &str) -> Calendar {
        cal(tz, &["Mon-Fri 09:00-18:00"], &[])
    }

    /// A local wall-clock time (must exist and be unambiguous) as UTC.
    fn at(c: &Calendar, s: &str) -> DateTime<Utc> {
        let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap();
        c.tz.from_local_datetime(&naive)
            .single()
            .unwrap()
            .with_timezone(&Utc)
    }

    fn utc(s: &str) -> DateTime<Utc> {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M")
            .unwrap()
            .and_utc()
    }

    fn mins(m: u64) -> Duration {
        Duration::from_secs(m * 60)
    }

    fn hours(h: u64) -> Duration {
        Duration::from_secs(h * 3600)
    }

    fn err(c: CalendarConfig) -> String {
        Calendar::parse("support", &c).unwrap_err().to_string()
    }

    #[test]
    fn parses_good_entries() {
        let c = cal(
            "Europe/Berlin",
            &[
                "Mon-Fri 09:00-18:00",
                "sat 10:00-14:00",
                "SUN 00:00-24:00",
                "Wed 19:00-20:00",
                "Thursday 8:00-09:00",
            ],
            &["2026-12-25", " 2026-12-26 "],
        );
        assert_eq!(c.tz().name(), "Europe/Berlin");
        assert_eq!(c.name(), "support");
        assert_eq!(c.week[0], vec![(540, 1080)]);
        assert_eq!(c.week[2], vec![(540, 1080), (1140, 1200)]);
        // Touching ranges merge.
        assert_eq!(c.week[3], vec![(480, 1080)]);
        assert_eq!(c.week[5], vec![(600, 840)]);
        assert_eq!(c.week[6], vec![(0, 1440)]);
        assert_eq!(c.holidays.len(), 2);
    }

    #[test]
    fn wrapping_day_range_and_split_day() {
        let c = cal(
            "UTC",
            &["Fri-Mon 10:00-12:00", "Tue 09:00-12:00", "Tue 13:00-17:00"],
            &[],
        );
        for d in [4, 5, 6, 0] {
            assert_eq!(c.week[d], vec![(600, 720)], "day {d}");
        }
        assert_eq!(c.week[1], vec![(540, 720), (780, 1020)]);
        assert!(c.week[2].is_empty() && c.week[3].is_empty());
        // 2026-04-07 is a Tuesday: closed over lunch.
        assert!(c.is_open(utc("2026-04-07 11:59")));
        assert!(!c.is_open(utc("2026-04-07 12:30")));
        assert!(c.is_open(utc("2026-04-07 13:00")));
    }

    #[test]
    fn errors_name_the_key() {
        let e = err(config("Europe/Berln", &["Mon 09:00-10:00"], &[]));
        assert!(
            e.starts_with("`hours.support.tz`: unknown time zone \"Europe/Berln\""),
            "{e}"
        );

        let bad_weeks = [
            ("Mon-Fir 09:00-18:00", "unknown day \"Fir\""),
            ("Mon 18:00-09:00", "start must be before end"),
            ("Mon 09:00-09:00", "start must be before end"),
            ("Mon 24:00-24:00", "24:00 can only end"),
            ("Mon 09:00-24:30", "bad time \"24:30\""),
            ("Mon 09:60-10:00", "bad time \"09:60\""),
            ("Mon 9-10", "bad time \"9\""),
            ("Mon", "expected days and a time range"),
            ("Mon 09:00-10:00 extra", "expected days and a time range"),
            ("Mon 09:00", "bad time range"),
            ("", "expected days and a time range"),
        ];
        for (entry, reason) in bad_weeks {
            let e = err(config("UTC", &["Sat 10:00-14:00", entry], &[]));
            assert!(e.starts_with("`hours.support.week[1]`: "), "{e}");
            assert!(e.contains(reason), "{entry}: {e}");
            assert!(e.contains("expected e.g. \"Mon-Fri 09:00-18:00\""), "{e}");
            assert!(!e.contains('\n'));
        }

        for bad in [
            "2026-13-01",
            "2026-02-30",
            "25.12.2026",
            "2026-1-5",
            "christmas",
        ] {
            let e = err(config("UTC", &["Mon 09:00-10:00"], &[bad]));
            assert!(e.starts_with("`hours.support.holidays[0]`: "), "{e}");
            assert!(e.contains(bad), "{e}");
        }

        let e = Calendar::parse("support", &config("UTC", &["Mon 9:00-8:00"], &[])).unwrap_err();
        assert_eq!(e.key(), "hours.support.week[0]");
    }

    #[test]
    fn config_deserializes_and_rejects_unknown_fields() {
        let raw: BTreeMap<String, CalendarConfig> = toml::from_str(
            r#"
            [support]
            tz = "Europe/Berlin"
            week = ["Mon-Fri 09:00-18:00", "Sat 10:00-14:00"]
            holidays = ["2026-12-25"]

            [night]
            tz = "America/New_York"
            week = ["Mon-Sun 00:00-06:00"]
            "#,
        )
        .unwrap();
        let cals = Calendars::parse(&raw).unwrap();
        assert_eq!(
            cals.names(),
            vec!["night".to_string(), "support".to_string()]
        );
        assert_eq!(cals.get("night").unwrap().tz().name(), "America/New_York");
        assert!(cals.get("sales").is_none());
        assert!(!cals.is_empty());
        assert!(Calendars::default().is_empty());

        let bad = toml::from_str::<BTreeMap<String, CalendarConfig>>(
            "[support]\ntz = \"UTC\"\nweek = []\ntimezone = \"UTC\"\n",
        );
        assert!(bad.unwrap_err().to_string().contains("timezone"));

        let mut raw = raw;
        raw.get_mut("support").unwrap().week[1] = "Sat 10-14".to_string();
        let e = Calendars::parse(&raw).unwrap_err().to_string();
        assert!(e.starts_with("`hours.support.week[1]`: "), "{e}");
    }

    #[test]
    fn is_open_at_boundaries() {
        let c = office("Europe/Berlin");
        // 2026-04-10 is a Friday.
        assert!(!c.is_open(at(&c, "2026-04-10 08:59")));
        assert!(c.is_open(at(&c, "2026-04-10 09:00")));
        assert!(c.is_open(at(&c, "2026-04-10 17:59")));
        assert!(!c.is_open(at(&c, "2026-04-10 18:00")));
        assert!(!c.is_open(at(&c, "2026-04-11 12:00")));
        let just_before_six = at(&c, "2026-04-10 18:00") - TimeDelta::nanoseconds(1);
        assert!(c.is_open(just_before_six));
        // 09:00 Berlin summer time is 07:00 UTC.
        assert!(c.is_open(utc("2026-04-10 07:00")));
        assert!(!c.is_open(utc("2026-04-10 06:59")));
    }

    #[test]
    fn holiday_is_closed_all_day() {
        let c = cal("Europe/Berlin", &["Mon-Sun 00:00-24:00"], &["2026-12-25"]);
        assert!(c.is_open(at(&c, "2026-12-24 23:59")));
        assert!(!c.is_open(at(&c, "2026-12-25 00:00")));
        assert!(!c.is_open(at(&c, "2026-12-25 12:00")));
        assert!(!c.is_open(at(&c, "2026-12-25 23:59")));
        assert!(c.is_open(at(&c, "2026-12-26 00:00")));
        let elapsed = c.business_elapsed(at(&c, "2026-12-24 00:00"), at(&c, "2026-12-27 00:00"));
        assert_eq!(elapsed, hours(48));
        // The holiday is a local date: in UTC it runs 23:00 to 23:00.
        assert!(c.is_open(utc("2026-12-24 22:59")));
        assert!(!c.is_open(utc("2026-12-24 23:00")));
        assert!(c.is_open(utc("2026-12-25 23:00")));
    }

    #[test]
    fn berlin_dst_days_have_23_and_25_hours() {
        let c = cal("Europe/Berlin", &["Mon-Sun 00:00-24:00"], &[]);
        // Spring forward: 2026-03-29 02:00 -> 03:00.
        let spring = c.business_elapsed(at(&c, "2026-03-29 00:00"), at(&c, "2026-03-30 00:00"));
        assert_eq!(spring, hours(23));
        // Fall back: 2026-10-25 03:00 -> 02:00.
        let fall = c.business_elapsed(at(&c, "2026-10-25 00:00"), at(&c, "2026-10-26 00:00"));
        assert_eq!(fall, hours(25));
        // Over the change nights, from evening to morning.
        let night = c.business_elapsed(at(&c, "2026-03-28 22:00"), at(&c, "2026-03-29 06:00"));
        assert_eq!(night, hours(7));
        let night = c.business_elapsed(at(&c, "2026-10-24 22:00"), at(&c, "2026-10-25 06:00"));
        assert_eq!(night, hours(9));
        // A whole week containing the change.
        let week = c.business_elapsed(at(&c, "2026-03-23 00:00"), at(&c, "2026-03-30 00:00"));
        assert_eq!(week, hours(7 * 24 - 1));
        // Always open, so elapsed equals wall time at any instant pair.
        let (a, b) = (utc("2026-10-24 12:34"), utc("2026-10-26 01:02"));
        assert_eq!(c.business_elapsed(a, b), (b - a).to_std().unwrap());
    }

    #[test]
    fn berlin_hours_inside_dst_gap_and_overlap() {
        // Sunday 01:30-03:30 local.
        let c = cal("Europe/Berlin", &["Sun 01:30-03:30"], &[]);
        // Spring: 02:00-03:00 does not exist, so 1 real hour.
        let spring = c.business_elapsed(utc("2026-03-28 12:00"), utc("2026-03-29 12:00"));
        assert_eq!(spring, hours(1));
        // Fall: 02:00-03:00 happens twice, so 3 real hours.
        let fall = c.business_elapsed(utc("2026-10-24 12:00"), utc("2026-10-25 12:00"));
        assert_eq!(fall, hours(3));

        // A range starting in the gap opens when the gap ends (03:00 CEST).
        let g = cal("Europe/Berlin", &["Sun 02:30-04:00"], &[]);
        assert_eq!(
            g.next_open(utc("2026-03-28 12:00")),
            Some(utc("2026-03-29 01:00"))
        );
        assert_eq!(
            g.business_elapsed(utc("2026-03-28 12:00"), utc("2026-03-29 12:00")),
            hours(1)
        );
        // A range wholly inside the gap vanishes that day.
        let v = cal("Europe/Berlin", &["Sun 02:10-02:50"], &[]);
        assert_eq!(
            v.business_elapsed(utc("2026-03-28 12:00"), utc("2026-03-29 12:00")),
            Duration::ZERO
        );
        assert_eq!(
            v.next_open(utc("2026-03-28 12:00")),
            Some(at(&v, "2026-04-05 02:10"))
        );
        // An ambiguous start takes the earlier instant (02:30 CEST = 00:30 UTC).
        let a = cal("Europe/Berlin", &["Sun 02:30-04:00"], &[]);
        assert_eq!(
            a.next_open(utc("2026-10-24 12:00")),
            Some(utc("2026-10-25 00:30"))
        );
    }

    #[test]
    fn new_york_dst() {
        let c = cal("America/New_York", &["Mon-Sun 00:00-24:00"], &[]);
        // 2026-03-08 02:00 -> 03:00; 2026-11-01 02:00 -> 01:00.
        let spring = c.business_elapsed(at(&c, "2026-03-08 00:00"), at(&c, "2026-03-09 00:00"));
        assert_eq!(spring, hours(23));
        let fall = c.business_elapsed(at(&c, "2026-11-01 00:00"), at(&c, "2026-11-02 00:00"));
        assert_eq!(fall, hours(25));

        let o = office("America/New_York");
        // 09:00 EST is 14:00 UTC; 09:00 EDT is 13:00 UTC.
        assert!(o.is_open(utc("2026-03-06 14:00")));
        assert!(!o.is_open(utc("2026-03-06 13:59")));
        assert!(o.is_open(utc("2026-03-09 13:00")));
        assert!(!o.is_open(utc("2026-03-09 12:59")));
        // Friday 17:00 EST to Monday 10:00 EDT: 1 h + 1 h.
        let e = o.business_elapsed(at(&o, "2026-03-06 17:00"), at(&o, "2026-03-09 10:00"));
        assert_eq!(e, hours(2));
        assert_eq!(
            o.next_open(at(&o, "2026-03-06 18:00")),
            Some(at(&o, "2026-03-09 09:00"))
        );
    }

    #[test]
    fn next_open_over_weekend_and_holiday() {
        let c = cal("Europe/Berlin", &["Mon-Fri 09:00-18:00"], &["2026-12-25"]);
        // Open: itself.
        let t = at(&c, "2026-04-10 12:00");
        assert_eq!(c.next_open(t), Some(t));
        // Friday evening -> Monday morning.
        assert_eq!(
            c.next_open(at(&c, "2026-04-10 18:00")),
            Some(at(&c, "2026-04-13 09:00"))
        );
        // Saturday -> Monday.
        assert_eq!(
            c.next_open(at(&c, "2026-04-11 10:00")),
            Some(at(&c, "2026-04-13 09:00"))
        );
        // Early morning -> same day.
        assert_eq!(
            c.next_open(at(&c, "2026-04-13 03:00")),
            Some(at(&c, "2026-04-13 09:00"))
        );
        // Thursday 24 Dec evening: Friday is a holiday -> Monday 28 Dec.
        assert_eq!(
            c.next_open(at(&c, "2026-12-24 18:30")),
            Some(at(&c, "2026-12-28 09:00"))
        );
        assert!(!c.is_open(at(&c, "2026-12-25 10:00")));
    }

    #[test]
    fn describe_next_open_texts() {
        let c = cal(
            "Europe/Berlin",
            &["Mon-Fri 09:00-18:00"],
            &[
                "2026-12-21",
                "2026-12-22",
                "2026-12-23",
                "2026-12-24",
                "2026-12-25",
                "2026-12-28",
            ],
        );
        assert_eq!(
            c.describe_next_open(at(&c, "2026-04-10 18:30")).as_deref(),
            Some("Monday 09:00")
        );
        assert_eq!(
            c.describe_next_open(at(&c, "2026-04-14 07:00")).as_deref(),
            Some("Tuesday 09:00")
        );
        assert_eq!(
            c.describe_next_open(at(&c, "2026-04-10 10:00")).as_deref(),
            Some("now")
        );
        // A week or more away: with the date.
        assert_eq!(
            c.describe_next_open(at(&c, "2026-12-18 19:00")).as_deref(),
            Some("Tuesday 29 December 09:00")
        );
        // In the calendar's zone, not UTC.
        let ny = office("America/New_York");
        assert_eq!(
            ny.describe_next_open(utc("2026-04-11 02:00")).as_deref(),
            Some("Monday 09:00")
        );
    }

    #[test]
    fn business_timer_friday_1758_fires_monday_0903() {
        let c = office("Europe/Berlin");
        // Plain weekend.
        let from = at(&c, "2026-04-10 17:58");
        let fires = c.deadline(from, mins(5)).unwrap();
        assert_eq!(fires, at(&c, "2026-04-13 09:03"));
        assert_eq!(c.business_elapsed(from, fires), mins(5));
        assert_eq!(
            c.business_elapsed(from, fires - TimeDelta::seconds(1)),
            mins(5) - Duration::from_secs(1)
        );
        // The weekend of the spring-forward change.
        let from = at(&c, "2026-03-27 17:58");
        let fires = c.deadline(from, mins(5)).unwrap();
        assert_eq!(fires, at(&c, "2026-03-30 09:03"));
        assert_eq!(c.business_elapsed(from, fires), mins(5));
        // And of the fall-back change.
        let from = at(&c, "2026-10-23 17:58");
        assert_eq!(c.deadline(from, mins(5)), Some(at(&c, "2026-10-26 09:03")));
        // With Monday a holiday it fires Tuesday.
        let h = cal("Europe/Berlin", &["Mon-Fri 09:00-18:00"], &["2026-04-13"]);
        assert_eq!(
            h.deadline(at(&h, "2026-04-10 17:58"), mins(5)),
            Some(at(&h, "2026-04-14 09:03"))
        );
    }

    #[test]
    fn deadline_edge_cases() {
        let c = office("Europe/Berlin");
        let open = at(&c, "2026-04-10 10:00");
        let closed = at(&c, "2026-04-11 10:00");
        // Zero business time fires at once, open or not.
        assert_eq!(c.deadline(open, Duration::ZERO), Some(open));
        assert_eq!(c.deadline(closed, Duration::ZERO), Some(closed));
        // Ending exactly at closing time.
        assert_eq!(c.deadline(open, hours(8)), Some(at(&c, "2026-04-10 18:00")));
        // Over the weekend and a full Monday (9 h) into Tuesday.
        let tuesday = at(&c, "2026-04-14 10:00");
        assert_eq!(c.deadline(open, hours(8 + 9 + 1)), Some(tuesday));
        assert_eq!(c.business_elapsed(open, tuesday), hours(18));
        // Reversed or empty spans.
        assert_eq!(c.business_elapsed(open, open), Duration::ZERO);
        assert_eq!(c.business_elapsed(closed, open), Duration::ZERO);
        // Sub-second durations are kept.
        let d = Duration::from_millis(1500);
        assert_eq!(
            c.deadline(open, d),
            Some(open + TimeDelta::milliseconds(1500))
        );
    }

    #[test]
    fn always_open_calendar() {
        let c = cal("UTC", &["Mon-Sun 00:00-24:00"], &[]);
        let t = utc("2026-06-03 04:05");
        assert!(c.is_open(t));
        assert_eq!(c.next_open(t), Some(t));
        assert_eq!(c.deadline(t, mins(5)), Some(t + TimeDelta::minutes(5)));
        assert_eq!(c.deadline(t, hours(24 * 10)), Some(t + TimeDelta::days(10)));
        assert_eq!(
            c.business_elapsed(t, t + TimeDelta::days(30)),
            hours(24 * 30)
        );
        assert_eq!(c.describe_next_open(t).as_deref(), Some("now"));
        // Also when written as a wrapping range.
        let w = cal("UTC", &["Sat-Fri 00:00-24:00"], &[]);
        assert_eq!(w.business_elapsed(t, t + TimeDelta::days(7)), hours(24 * 7));
    }

    #[test]
    fn empty_week_never_opens() {
        let c = cal("Europe/Berlin", &[], &[]);
        let t = utc("2026-06-03 04:05");
        assert!(!c.is_open(t));
        assert_eq!(c.next_open(t), None);
        assert_eq!(c.deadline(t, mins(5)), None);
        assert_eq!(
            c.business_elapsed(t, t + TimeDelta::days(365)),
            Duration::ZERO
        );
        assert_eq!(c.describe_next_open(t), None);
    }

    #[test]
    fn closed_for_longer_than_search_window() {
        // Open only on Mondays, and every Monday for two years is a holiday.
        let start = NaiveDate::from_ymd_opt(2026, 1, 5).unwrap();
        let holidays: Vec<String> = (0..105)
            .map(|w| (start + TimeDelta::weeks(w)).format("%Y-%m-%d").to_string())
            .collect();
        let refs: Vec<&str> = holidays.iter().map(String::as_str).collect();
        let c = cal("UTC", &["Mon 09:00-10:00"], &refs);
        let t = utc("2026-01-01 00:00");
        assert_eq!(c.next_open(t), None);
        assert_eq!(c.deadline(t, mins(1)), None);
        assert!(!c.is_open(utc("2026-01-05 09:30")));
    }
}
