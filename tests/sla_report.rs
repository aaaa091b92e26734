//! The SLA report's HTML page, as a browser sees it: a realistic week is
//! rendered to `target/test-artifacts/sla-report.html` and, when Chromium is
//! installed (`/usr/bin/chromium`, `chromium` on the PATH, or the `CHROMIUM`
//! environment variable), opened headless to dump its DOM and to take a
//! screenshot (`target/test-artifacts/sla-report.png`). Without Chromium the
//! browser checks are skipped with a message and the tests pass.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use skyrules::report::sla::{
    build_report, format_duration, render_html, render_text, BreachCount, SlaRecord, SlaReport,
};

/// How long one Chromium run may take.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(90);

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir
}

/// A small deterministic generator (64-bit LCG), so the fixture is the same
/// on every run without a dependency.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next()
    }
}

fn window() -> (DateTime<Utc>, DateTime<Utc>) {
    (
        Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2026, 3, 8, 23, 59, 59).unwrap(),
    )
}

/// A support week: busy weekdays, a quiet weekend, mostly fast bot replies
/// with a slow tail, a quarter of the sessions asking for a human, and four
/// rules' timer breaches — one of them with a name that needs escaping.
fn realistic() -> (Vec<SlaRecord>, Vec<BreachCount>) {
    let (since, _) = window();
    let mut rng = Lcg(0x5EED_5EED);
    let per_day = [46u32, 52, 49, 57, 41, 18, 14];
    let mut records = Vec::new();
    for (d, n) in per_day.iter().enumerate() {
        let slow_day = d == 3; // Thursday: the team was short-staffed.
        for i in 0..*n {
            let created = since
                + chrono::Duration::days(d as i64)
                + chrono::Duration::seconds((rng.between(7.0, 21.0) * 3600.0) as i64);
            let roll = rng.next();
            let first = if roll < 0.04 {
                None
            } else if roll < 0.58 {
                Some(rng.between(1.0, 12.0))
            } else if roll < (if slow_day { 0.72 } else { 0.86 }) {
                Some(rng.between(12.0, 110.0))
            } else {
                Some(rng.between(110.0, if slow_day { 1500.0 } else { 700.0 }))
            };
            let human_wait_secs = if rng.next() < 0.26 {
                let mut w = vec![rng.between(25.0, if slow_day { 1400.0 } else { 540.0 })];
                if rng.next() < 0.15 {
                    w.push(rng.between(40.0, 300.0));
                }
                w
            } else {
                Vec::new()
            };
            let agent_silence_breaches = u32::from(rng.next() < if slow_day { 0.2 } else { 0.06 });
            records.push(SlaRecord {
                session_id: format!("ws_{d}{i:03}"),
                created_at: created,
                first_response_secs: first,
                human_wait_secs,
                agent_silence_breaches,
            });
        }
    }
    let rules: [(&str, [u64; 7]); 4] = [
        ("escalate-unanswered", [6, 8, 5, 14, 4, 2, 1]),
        ("close-idle-chats", [9, 11, 10, 12, 8, 3, 2]),
        ("vip-human-waiting", [1, 0, 2, 6, 1, 0, 0]),
        ("after-hours & weekend", [0, 0, 0, 0, 2, 5, 4]),
    ];
    let mut breaches = Vec::new();
    for (rule, counts) in rules {
        for (d, count) in counts.iter().enumerate() {
            breaches.push(BreachCount {
                rule: rule.to_string(),
                day: since.date_naive() + chrono::Duration::days(d as i64),
                count: *count,
            });
        }
    }
    // Outside the window: ignored.
    breaches.push(BreachCount {
        rule: "escalate-unanswered".to_string(),
        day: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
        count: 99,
    });
    (records, breaches)
}

fn realistic_report() -> SlaReport {
    let (records, breaches) = realistic();
    let (since, until) = window();
    build_report(&records, &breaches, since, until)
}

/// The Chromium binary to use, if any.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.exists(), "CHROMIUM={} does not exist", p.display());
        return Some(p);
    }
    let fixed = Path::new("/usr/bin/chromium");
    if fixed.exists() {
        return Some(fixed.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|p| p.is_file())
}

/// Runs Chromium headless on `page` with `extra` arguments; returns its
/// stdout. Panics (with its stderr) if it fails or hangs.
fn run_chromium(bin: &Path, page: &Path, extra: &[String]) -> String {
    let profile = tempfile::tempdir().expect("temp profile dir");
    let url = format!("file://{}", page.display()).replace(' ', "%20");
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + CHROMIUM_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish within {CHROMIUM_TIMEOUT:?}; stderr:\n{}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    assert!(
        status.success(),
        "chromium failed ({status}); stderr:\n{stderr}"
    );
    stdout
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(
        png.len() > 24 && png.starts_with(b"\x89PNG\r\n\x1a\n") && &png[12..16] == b"IHDR",
        "not a PNG"
    );
    let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
    (w, h)
}

/// Writes `html` as `<name>.html`; with Chromium, dumps its DOM and takes a
/// screenshot `<name>.png` (at least `min_png_bytes`, so not a blank page). Returns the DOM, or `None` when Chromium is
/// missing.
fn open_in_chromium(name: &str, html: &str, min_png_bytes: usize) -> Option<String> {
    let dir = artifacts();
    let page = dir.join(format!("{name}.html"));
    std::fs::write(&page, html).expect("write the report");
    let Some(bin) = chromium() else {
        eprintln!(
            "SKIPPED the browser checks of {name}: Chromium not found (set CHROMIUM, or install \
             chromium); the page is at {}",
            page.display()
        );
        return None;
    };
    let png = dir.join(format!("{name}.png"));
    let _ = std::fs::remove_file(&png);
    run_chromium(
        &bin,
        &page,
        &[
            "--window-size=1200,1800".to_string(),
            format!("--screenshot={}", png.display()),
        ],
    );
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("read {}: {e}", png.display()));
    assert_eq!(png_size(&bytes), (1200, 1800), "screenshot size");
    assert!(
        bytes.len() > min_png_bytes,
        "screenshot is only {} bytes: a blank page?",
        bytes.len()
    );
    eprintln!("screenshot: {}", png.display());
    let dom = run_chromium(&bin, &page, &["--dump-dom".to_string()]);
    assert!(dom.contains("</html>"), "no DOM dumped:\n{dom}");
    Some(dom)
}

/// Checks shared by the page as written and the DOM Chromium built from it.
fn assert_report_page(page: &str, r: &SlaReport) {
    assert!(page.contains("<title>skyrules SLA report</title>"));
    assert_eq!(page.matches("<svg").count(), 3, "three charts");
    assert_eq!(page.matches("<figcaption>").count(), 3);
    assert_eq!(page.matches(r#"role="img""#).count(), 3);
    assert!(page.contains("2026-03-02 00:00 to 2026-03-08 23:59 UTC (7 days)"));

    // The headline cards carry the headline numbers.
    let start = page.find(r#"class="cards""#).expect("headline cards");
    let cards = &page[start..start + page[start..].find("<figure").unwrap()];
    let expect = [
        r.sessions.to_string(),
        format_duration(r.first_response.p50.unwrap()),
        format_duration(r.first_response.p90.unwrap()),
        format_duration(r.first_response.p99.unwrap()),
        format_duration(r.human_wait.p50.unwrap()),
        format_duration(r.human_wait.p90.unwrap()),
        format_duration(r.human_wait.p99.unwrap()),
        r.rule_breaches().to_string(),
        r.agent_silence_breaches.to_string(),
    ];
    for e in &expect {
        assert!(
            cards.contains(&format!(">{e}<")),
            "card value {e} missing in:\n{cards}"
        );
    }

    for rule in [
        "escalate-unanswered",
        "close-idle-chats",
        "vip-human-waiting",
        "after-hours &amp; weekend",
    ] {
        assert!(page.contains(rule), "rule {rule} missing");
    }
    assert!(!page.contains("after-hours & weekend"), "unescaped");
}

#[test]
fn realistic_week_is_summed_as_expected() {
    let r = realistic_report();
    assert_eq!(r.sessions, 46 + 52 + 49 + 57 + 41 + 18 + 14);
    assert_eq!(r.per_day.len(), 7);
    assert_eq!(r.rule_breaches(), 40 + 55 + 10 + 11);
    assert_eq!(r.breaches_by_rule[0].rule, "close-idle-chats");
    assert_eq!(r.breaches_by_rule[0].per_day, vec![9, 11, 10, 12, 8, 3, 2]);
    let fr = &r.first_response;
    assert!(fr.p50 <= fr.p90 && fr.p90 <= fr.p99 && fr.p99 <= fr.max);
    assert_eq!(
        r.first_response_buckets
            .iter()
            .map(|b| b.count)
            .sum::<usize>(),
        fr.count
    );
    let text = render_text(&r);
    assert!(text.contains("after-hours & weekend"));
    assert!(text.contains(&format_duration(fr.p90.unwrap())));
}

#[test]
fn html_report_opens_in_headless_chromium_with_its_charts() {
    let r = realistic_report();
    let html = render_html(&r);
    assert_report_page(&html, &r);
    let Some(dom) = open_in_chromium("sla-report", &html, 40_000) else {
        return;
    };
    assert_report_page(&dom, &r);
}

#[test]
fn empty_report_opens_with_empty_states() {
    let (since, until) = window();
    let r = build_report(&[], &[], since, until);
    let html = render_html(&r);
    assert_eq!(html.matches("<svg").count(), 0);
    let Some(dom) = open_in_chromium("sla-report-empty", &html, 5_000) else {
        return;
    };
    assert!(dom.contains("No sessions and no rule breaches in this period"));
    assert_eq!(dom.matches("<figure").count(), 3);
    assert_eq!(dom.matches(r#"class="empty""#).count(), 4);
}
