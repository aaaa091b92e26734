//! Every input under `fuzz/regressions/<target>/` — each one that made a
//! fuzz target (see `fuzz/README.md`) panic, hang or misread, plus a few
//! committed examples (`seed-*`) — fed to the function that target calls.
//! Each must return, `Ok` or `Err`, without panicking, and an error must
//! say what is wrong and where.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use skyrules::api::client::{parse_page, parse_session};
use skyrules::config::{Config, ConfigError};
use skyrules::tools::scenario::parse_scenarios;

/// The inputs kept for `target`, sorted; fails when there are none.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "cannot read the fuzz regression inputs in {}: {e}",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "{} holds no regression inputs",
        dir.display()
    );
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

/// Runs `check` on every input of `target`, reporting every one that fails.
fn each(target: &str, check: impl Fn(&[u8])) {
    let failed: Vec<String> = inputs(target)
        .iter()
        .filter_map(|(path, bytes)| {
            catch_unwind(AssertUnwindSafe(|| check(bytes)))
                .err()
                .map(|e| {
                    let why = e
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    format!("{}: {why}", path.display())
                })
        })
        .collect();
    assert!(failed.is_empty(), "failing inputs:\n{}", failed.join("\n"));
}

/// The config loader's input: the text, or `None` when it is not UTF-8
/// (the target skips those too).
fn text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok()
}

/// Whether `s` starts with `fuzz.toml:LINE:COLUMN:`.
fn names_a_location(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("fuzz.toml:") else {
        return false;
    };
    let mut parts = rest.splitn(3, ':');
    let mut number = || {
        parts
            .next()
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    number() && number()
}

#[test]
fn page_decoder_regressions() {
    each("page_decoder", |body| match parse_page(body) {
        Ok(page) => {
            for s in &page.sessions {
                assert!(!s.session_id.is_empty(), "empty session_id in {page:?}");
            }
        }
        Err(e) => assert!(!e.trim().is_empty(), "empty error text"),
    });
}

#[test]
fn session_decoder_regressions() {
    each("session_decoder", |body| match parse_session(body) {
        Ok(d) => assert!(
            d.messages.windows(2).all(|w| w[0].id <= w[1].id),
            "messages out of order"
        ),
        Err(e) => assert!(!e.trim().is_empty(), "empty error text"),
    });
}

#[test]
fn config_loader_regressions() {
    each("config_loader", |bytes| {
        let Some(text) = text(bytes) else { return };
        let err = match Config::from_text(text, Path::new("fuzz.toml")) {
            Ok(config) => match config.validate() {
                Ok(()) => return,
                Err(e) => e,
            },
            Err(e) => e,
        };
        let shown = err.to_string();
        assert!(!shown.trim().is_empty(), "empty error text");
        match &err {
            ConfigError::Parse { line, column, .. } => {
                assert!(*line >= 1 && *column >= 1, "{shown}");
                assert!(names_a_location(&shown), "no file:line:column: {shown}");
                assert!(!shown.contains('\n'), "spans lines: {shown:?}");
            }
            // validate's errors quote the dotted key, e.g. `api.timeout`.
            ConfigError::Invalid(_) => {
                assert!(shown.contains("fuzz.toml"), "no file: {shown}");
                assert!(shown.matches('`').count() >= 2, "no `key`: {shown}");
            }
            other => panic!("from_text/validate cannot give {other:?}"),
        }
    });
}

#[test]
fn scenario_loader_regressions() {
    each("scenario_loader", |bytes| {
        let Some(text) = text(bytes) else { return };
        if let Err(e) = parse_scenarios(text, Path::new("fuzz.toml")) {
            assert!(!e.trim().is_empty(), "empty error text");
            let line = e
                .strip_prefix("fuzz.toml:")
                .and_then(|r| r.split(':').next())
                .and_then(|n| n.parse::<usize>().ok());
            assert!(line.is_some_and(|l| l >= 1), "no file:line: {e}");
        }
    });
}

/// page_decoder found it: a list item repeating a field (`"status"` twice)
/// failed serde's direct read ("duplicate field") and was dropped from the
/// page, where a `Value` (the session-detail decoder, and the list decoder
/// before it read bytes) keeps the last one. The session must stay listed.
#[test]
fn a_repeated_field_does_not_drop_a_listed_session() {
    let body = read("page_decoder", "duplicate-session-field.json");
    let p = parse_page(&body).unwrap();
    let ids: Vec<&str> = p.sessions.iter().map(|s| s.session_id.as_str()).collect();
    assert_eq!(ids, ["s"]);
    let page = parse_page(br#"[{"session_id":"a","status":"active","status":"ended"}]"#).unwrap();
    assert_eq!(
        page.sessions[0].status.as_str(),
        "ended",
        "the last one wins"
    );
}

/// session_decoder's round-trip check: a time outside the years 0000-9999
/// once it is in UTC (`0000-01-01T00:00:00+23:59` is year -1) decoded, but
/// `format_ts` writes it as `-0001-…` / `+12345-…`, which `parse_ts` cannot
/// read back: the state file lost it. Now it decodes as no time at all.
#[test]
fn out_of_range_timestamps_read_as_none_and_survive_a_round_trip() {
    for name in [
        "timestamp-before-year-0-in-utc.json",
        "timestamp-five-digit-year.json",
    ] {
        let d = parse_session(&read("session_decoder", name)).unwrap();
        assert_eq!(d.session.created_at, None, "{name}");
        let again = parse_session(&serde_json::to_vec(&d).unwrap()).unwrap();
        assert_eq!(again, d, "{name}");
    }
    for ok in ["0000-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z"] {
        let t = skyrules::api::parse_ts(ok).unwrap();
        assert_eq!(
            skyrules::api::parse_ts(&skyrules::api::format_ts(&t)),
            Some(t)
        );
    }
}

fn read(target: &str, name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target)
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The committed examples read as they should, so the tests above are not
/// vacuous.
#[test]
fn the_committed_examples_read_as_expected() {
    let p = parse_page(&read("page_decoder", "seed-resource.json")).unwrap();
    assert_eq!(
        (p.sessions.len(), p.current_page, p.last_page, p.has_next),
        (1, Some(1), Some(3), Some(true))
    );
    assert_eq!(p.sessions[0].session_id, "sess_a1b2c3d4e5f6");
    let p = parse_page(&read("page_decoder", "seed-paginator.json")).unwrap();
    let ids: Vec<&str> = p.sessions.iter().map(|s| s.session_id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);

    let d = parse_session(&read("session_decoder", "seed-enveloped.json")).unwrap();
    assert_eq!(d.session.session_id, "sess_a1b2c3d4e5f6");
    assert_eq!(d.messages.len(), 2);

    let path = Path::new("fuzz.toml");
    let ok = read("config_loader", "seed-skyrules.toml");
    let c = Config::from_text(std::str::from_utf8(&ok).unwrap(), path).unwrap();
    c.validate().unwrap();
    assert!(c.hours.contains_key("support"));
    let bad = read("config_loader", "seed-unknown-key.toml");
    let e = Config::from_text(std::str::from_utf8(&bad).unwrap(), path)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("fuzz.toml:3:1:"), "{e}");
    assert!(e.contains("engine.poll_intervall"), "{e}");

    let ok = read("scenario_loader", "seed-escalate-on-request.toml");
    let f = parse_scenarios(std::str::from_utf8(&ok).unwrap(), path).unwrap();
    assert!(!f.scenario.is_empty());
    let bad = read("scenario_loader", "seed-unknown-key.toml");
    let e = parse_scenarios(std::str::from_utf8(&bad).unwrap(), path).unwrap_err();
    assert!(e.starts_with("fuzz.toml:4:"), "{e}");
    assert!(e.contains("visitr"), "{e}");
}
