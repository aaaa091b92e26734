//! Business hours through the whole engine: a timer counted in open time
//! (Friday 17:58 → Monday 09:03), `ev.in_hours` and `ev.next_open`, and a
//! calendar a rule names but the config lacks.

use crate::util;

use std::path::Path;
use std::process::Command;

const CONFIG: &str = r#"
[hours.support]
tz = "Europe/Berlin"
week = ["Mon-Fri 09:00-18:00"]
holidays = ["2026-12-25"]
"#;

const WAIT_RULE: &str = r#"
// Five minutes of open time, not wall time.
on("unanswered", "5m", #{ hours: "support" }, |ev| {
    ev.reply("Sorry for the wait, a teammate is on it.");
});
"#;

const AFTER_HOURS_RULE: &str = r#"
on("visitor_message", |ev| {
    if !ev.in_hours("support") && ev.once("told") {
        ev.reply("We're closed right now; we're back " + ev.next_open("support") + ".");
    }
});
"#;

const SCENARIOS: &str = r#"
[[scenario]]
name = "a business-time timer started Friday 17:58 fires Monday 09:03"
rules = ["wait"]
start = "2026-11-27T17:58:00+01:00"

[[scenario.session]]
id = "s1"

[[scenario.step]]
visitor = "Is anyone there?"
expect = []

[[scenario.step]]
advance = "2m"            # Friday 18:00: two minutes of open time, then closed
expect = []

[[scenario.step]]
advance = "63h"           # Monday 09:00: the weekend does not count
expect = []

[[scenario.step]]
advance = "2m"            # Monday 09:02: four minutes
expect = []

[[scenario.step]]
advance = "1m"            # Monday 09:03: five
expect = ["reply: Sorry for the wait, a teammate is on it."]

[[scenario]]
name = "after hours the visitor hears when we are back"
rules = ["after-hours"]
start = "2026-11-28T11:00:00+01:00"   # a Saturday

[[scenario.session]]
id = "s1"

[[scenario.step]]
visitor = "Hello?"
expect = ["reply: We're closed right now; we're back Monday 09:00."]

[[scenario.step]]
visitor = "Still there?"
expect = []

[[scenario]]
name = "in hours nobody is told we are closed"
rules = ["after-hours"]
start = "2026-11-30T10:00:00+01:00"   # a Monday

[[scenario.session]]
id = "s1"

[[scenario.step]]
visitor = "Hello?"
expect = []
"#;

fn skyrules(dir: &Path) -> Command {
    let mut c = util::skyrules_command();
    c.current_dir(dir);
    c
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(rules.join("tests")).unwrap();
    std::fs::write(dir.path().join("skyrules.toml"), CONFIG).unwrap();
    std::fs::write(rules.join("wait.rhai"), WAIT_RULE).unwrap();
    std::fs::write(rules.join("after-hours.rhai"), AFTER_HOURS_RULE).unwrap();
    std::fs::write(rules.join("tests/business.toml"), SCENARIOS).unwrap();
    dir
}

#[test]
fn business_time_timers_and_calendar_functions_work_end_to_end() {
    let dir = setup();
    let out = skyrules(dir.path())
        .args(["test", "rules"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3 passed, 0 failed"), "{stdout}");
}

#[test]
fn a_rule_naming_an_unconfigured_calendar_does_not_load() {
    let dir = setup();
    std::fs::write(dir.path().join("skyrules.toml"), "").unwrap();
    let out = skyrules(dir.path())
        .args(["check", "rules"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("wait.rhai:3:1: unknown calendar \"support\""),
        "{stderr}"
    );
}

#[test]
fn a_bad_calendar_is_a_config_error_naming_the_key() {
    let dir = setup();
    std::fs::write(
        dir.path().join("skyrules.toml"),
        "[hours.support]\ntz = \"Europe/Berln\"\nweek = [\"Mon-Fri 09:00-18:00\"]\n",
    )
    .unwrap();
    let out = skyrules(dir.path())
        .args(["check", "rules"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("hours.support.tz"), "{stderr}");
    assert!(stderr.contains("skyrules.toml"), "{stderr}");
}
