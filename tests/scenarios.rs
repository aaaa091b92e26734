//! Tests of the tester: `skyrules test` driven as a user drives it, through
//! the binary, with rules and scenario files in a temp dir. A passing run
//! exits 0, a failing one shows what differs and which rule acted, broken
//! rules and broken scenario files are failures that point at the line,
//! `--filter` and `--junit` do what they say, long timers take no real time,
//! and the scenarios shipped next to the rules pass.

use crate::util;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// How long one run may take before the test gives up (a loaded 2-core CI
/// box is slow; a hang must still end the test).
const RUN_LIMIT: Duration = Duration::from_secs(120);

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A rules directory (`<tmp>/rules`, scenarios in `rules/tests/`) and an
/// empty working directory, so no `skyrules.toml` of the caller is read.
struct Project {
    tmp: tempfile::TempDir,
}

impl Project {
    fn new() -> Project {
        let tmp = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(tmp.path().join("rules/tests")).expect("mkdir");
        std::fs::create_dir_all(tmp.path().join("work")).expect("mkdir");
        Project { tmp }
    }

    fn rules(&self) -> PathBuf {
        self.tmp.path().join("rules")
    }

    fn rule(&self, id: &str, text: &str) -> PathBuf {
        let p = self.rules().join(format!("{id}.rhai"));
        std::fs::write(&p, text).expect("write rule");
        p
    }

    fn scenarios(&self, file: &str, text: &str) -> PathBuf {
        let p = self.rules().join("tests").join(file);
        std::fs::write(&p, text).expect("write scenarios");
        p
    }

    /// `skyrules test <rules> <extra…>`.
    fn test(&self, extra: &[&str]) -> Run {
        let rules = self.rules();
        let mut args = vec!["test", rules.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        skyrules(&args, &self.tmp.path().join("work"))
    }
}

/// Runs the binary in `cwd` with no `SKYRULES_*` (or key, or log filter)
/// from the caller's environment.
fn skyrules(args: &[&str], cwd: &Path) -> Run {
    let out_dir = tempfile::tempdir().expect("temp dir");
    let out_path = out_dir.path().join("stdout.txt");
    let err_path = out_dir.path().join("stderr.txt");
    let mut cmd = util::skyrules_command();
    cmd.current_dir(cwd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"));
    let mut child = cmd.spawn().expect("spawn skyrules");
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("skyrules {args:?} did not finish within {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let run = Run {
        code: status.code(),
        stdout: read(&out_path),
        stderr: read(&err_path),
    };
    assert!(
        !run.stderr.contains("panicked"),
        "skyrules panicked: {run:?}"
    );
    run
}

fn has(run: &Run, needle: &str) {
    assert!(
        run.stdout.contains(needle),
        "stdout lacks {needle:?}: {run:?}"
    );
}

fn lacks(run: &Run, needle: &str) {
    assert!(
        !run.stdout.contains(needle),
        "stdout has {needle:?}: {run:?}"
    );
}

/// A rule whose handler is on line 2, column 1.
const GREET: &str = r#"// greets whoever asks for a person
on("human_requested", |ev| {
    ev.take_over();
    ev.reply("Hi {{visitor_name}}, a teammate is joining you now.");
});
"#;

const GREET_PASSES: &str = r#"
[[scenario]]
name = "a request is taken over with a greeting"
rules = ["greet"]

[[scenario.session]]
id = "s1"
visitor_name = "Ahmad"

[[scenario.step]]
visitor = "hello"
expect = []

[[scenario.step]]
request_human = true
expect = ["take_over", "reply: Hi Ahmad, a teammate is joining you now."]
"#;

const GREET_FAILS: &str = r#"
[[scenario]]
name = "the greeting is not what we expect"
rules = ["greet"]

[[scenario.session]]
id = "s1"
visitor_name = "Ahmad"

[[scenario.step]]
visitor = "hello"
expect = []

[[scenario.step]]
request_human = true
expect = ["reply: Hello Ahmad!"]
"#;

#[test]
fn a_passing_scenario_exits_0_with_a_tick() {
    let p = Project::new();
    p.rule("greet", GREET);
    p.scenarios("greet.toml", GREET_PASSES);
    let run = p.test(&[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    has(&run, "✓ a request is taken over with a greeting");
    has(&run, "1 passed, 0 failed");
    lacks(&run, "✗");
}

/// `skyrules test` runs a rule in shadow as if it were live: it is the
/// rule being tried out, and its scenarios say what it would do.
#[test]
fn a_shadow_rules_scenarios_run_as_if_it_were_live() {
    let p = Project::new();
    p.rule("greet", &format!("mode(\"shadow\");\n{GREET}"));
    p.scenarios("greet.toml", GREET_PASSES);
    let run = p.test(&[]);
    assert_eq!(run.code, Some(0), "{run:?}");
    has(&run, "1 passed, 0 failed");
}

#[test]
fn a_failing_scenario_shows_step_expected_actual_and_the_acting_rule() {
    let p = Project::new();
    let rule = p.rule("greet", GREET);
    // Another rule in the directory: the scenario runs `greet` alone, and
    // the acting rule is still named by its real file.
    p.rule(
        "other",
        "on(\"visitor_message\", |ev| { ev.reply(\"other\"); });\n",
    );
    p.scenarios("greet.toml", GREET_FAILS);
    let run = p.test(&[]);
    assert_eq!(run.code, Some(1), "{run:?}");
    has(&run, "✗ the greeting is not what we expect");
    has(&run, "step 2 (visitor asks for a human)");
    has(&run, "expected:");
    has(&run, "actual:");
    has(&run, "reply: Hello Ahmad!");
    has(&run, "take_over");
    has(&run, "reply: Hi Ahmad, a teammate is joining you now.");
    has(&run, "rule greet");
    has(&run, &format!("{}:2:1", rule.display()));
    // The expected list comes before the actual one.
    let e = run.stdout.find("expected:").unwrap();
    let a = run.stdout.find("actual:").unwrap();
    assert!(e < a, "{run:?}");
    assert!(
        run.stdout[e..a].contains("reply: Hello Ahmad!")
            && run.stdout[a..].contains("reply: Hi Ahmad, a teammate"),
        "{run:?}"
    );
    // Step 1 passed, so no one says "other".
    lacks(&run, "reply: other");
    has(&run, "0 passed, 1 failed");
}

#[test]
fn a_failing_scenario_among_passing_ones_fails_the_run() {
    let p = Project::new();
    p.rule("greet", GREET);
    p.scenarios("a.toml", GREET_PASSES);
    p.scenarios("b.toml", GREET_FAILS);
    let run = p.test(&[]);
    assert_eq!(run.code, Some(1), "{run:?}");
    has(&run, "2 scenario(s): 1 passed, 1 failed");
}

#[test]
fn a_timer_over_hours_passes_without_waiting_for_it() {
    let p = Project::new();
    p.rule(
        "long-idle",
        r#"on("idle", "2h", |ev| { ev.reply("Still there, {{visitor_name}}?"); });"#,
    );
    p.scenarios(
        "long-idle.toml",
        r#"
[[scenario]]
name = "a two-hour idle timer fires once per quiet stretch"

[[scenario.session]]
id = "s1"
visitor_name = "Ada"

[[scenario.step]]
visitor = "hi"
expect = []

[[scenario.step]]
advance = "1h 59m"
expect = []

[[scenario.step]]
advance = "1h"
expect = ["reply: Still there, Ada?"]

# Its own reply started a new quiet stretch: not again within 2h of it...
[[scenario.step]]
advance = "1h"
expect = []

# ...but once that one is 2h quiet too.
[[scenario.step]]
advance = "1h"
expect = ["reply: Still there, Ada?"]
"#,
    );
    let started = Instant::now();
    let run = p.test(&[]);
    // Printed for people and benchmarks; speed is not asserted here.
    println!(
        "5 simulated hours of scenario took {:?} of wall time",
        started.elapsed()
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    has(&run, "1 passed, 0 failed");
}

#[test]
fn a_rule_that_throws_or_calls_an_unknown_function_fails_with_its_position() {
    let p = Project::new();
    let boom = p.rule(
        "boom",
        "// throws on every visitor message\non(\"visitor_message\", |ev| {\n    throw \"boom\";\n});\n",
    );
    let undef = p.rule(
        "undef",
        "on(\"bot_message\", |ev| {\n    let x = 1;\n    no_such_fn(x);\n});\n",
    );
    // No `rules = […]`: the whole directory runs, and a handler error fails
    // the scenario even with no `expect` on the step.
    p.scenarios(
        "errors.toml",
        r#"
[[scenario]]
name = "a visitor message meets a throwing rule"

[[scenario.session]]
id = "s1"

[[scenario.step]]
visitor = "hi"

[[scenario]]
name = "a bot message meets an undefined function"

[[scenario.session]]
id = "s1"

[[scenario.step]]
bot = "hello"
expect = []
"#,
    );
    let run = p.test(&[]);
    assert_eq!(run.code, Some(1), "{run:?}");
    has(&run, "✗ a visitor message meets a throwing rule");
    has(&run, "step 1 (visitor says \"hi\")");
    has(&run, "rule boom");
    has(&run, &format!("{}:3:5", boom.display()));
    has(&run, "boom");
    has(&run, "✗ a bot message meets an undefined function");
    has(&run, "rule undef");
    has(&run, &format!("{}:3:5", undef.display()));
    has(&run, "no_such_fn");
    has(&run, "0 passed, 2 failed");
}

/// A scenario that runs a subset of the rules runs them from a copy; the
/// error must still name the user's file, not a deleted temp copy.
#[test]
fn a_rule_error_in_a_subset_run_names_the_real_file() {
    let p = Project::new();
    let boom = p.rule(
        "boom",
        "on(\"visitor_message\", |ev| {\n    throw \"boom\";\n});\n",
    );
    p.scenarios(
        "boom.toml",
        r#"
[[scenario]]
name = "only the throwing rule"
rules = ["boom"]

[[scenario.session]]
id = "s1"

[[scenario.step]]
visitor = "hi"
expect = []
"#,
    );
    let run = p.test(&[]);
    assert_eq!(run.code, Some(1), "{run:?}");
    has(&run, "rule boom");
    has(&run, &format!("{}:2:5", boom.display()));
}

#[test]
fn malformed_scenario_files_fail_naming_the_file_and_line() {
    let p = Project::new();
    p.rule("greet", GREET);
    p.scenarios("good.toml", GREET_PASSES);
    p.scenarios(
        "bad-toml.toml",
        "[[scenario]]\nname = \"unterminated\n\n[[scenario.step]]\n",
    );
    p.scenarios(
        "unknown-key.toml",
        "[[scenario]]\nname = \"typo\"\n\n[[scenario.step]]\nvisiter = \"hi\"\n",
    );
    let run = p.test(&[]);
    assert_eq!(run.code, Some(1), "{run:?}");
    has(&run, "bad-toml.toml:2:");
    has(&run, "unknown-key.toml:5:");
    has(&run, "visiter");
    // The good file still runs.
    has(&run, "✓ a request is taken over with a greeting");
    has(&run, "3 scenario(s): 1 passed, 2 failed");
}

#[test]
fn filter_runs_only_matching_scenarios() {
    let p = Project::new();
    p.rule("greet", GREET);
    p.scenarios(
        "greet.toml",
        &format!(
            "{}\n{}",
            GREET_PASSES.replace("a request is taken over", "alpha: a request is taken over"),
            GREET_FAILS.replace("the greeting is not", "beta: the greeting is not")
        ),
    );
    p.scenarios(
        "gamma.toml",
        &GREET_PASSES.replace("a request is taken over", "gamma: a request is taken over"),
    );

    let run = p.test(&["--filter", "alpha"]);
    assert_eq!(run.code, Some(0), "the failing beta must not run: {run:?}");
    has(&run, "✓ alpha:");
    lacks(&run, "beta:");
    lacks(&run, "gamma:");
    has(&run, "1 scenario(s): 1 passed, 0 failed");

    // A file name matches too.
    let run = p.test(&["--filter", "gamma.toml"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    has(&run, "✓ gamma:");
    lacks(&run, "alpha:");
    has(&run, "1 scenario(s): 1 passed, 0 failed");

    let run = p.test(&["--filter", "beta"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    has(&run, "✗ beta:");
    lacks(&run, "alpha:");
    has(&run, "1 scenario(s): 0 passed, 1 failed");
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn junit_writes_testcases_and_failures() {
    let p = Project::new();
    p.rule("greet", GREET);
    p.scenarios("a.toml", GREET_PASSES);
    p.scenarios("b.toml", GREET_FAILS);
    let xml_path = p.tmp.path().join("out/junit.xml");
    std::fs::create_dir_all(xml_path.parent().unwrap()).unwrap();
    let run = p.test(&["--junit", xml_path.to_str().unwrap()]);
    assert_eq!(run.code, Some(1), "{run:?}");
    let xml = std::fs::read_to_string(&xml_path).expect("junit file written");
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert!(xml.contains("<testsuites"), "{xml}");
    assert!(
        xml.contains("tests=\"2\"") && xml.contains("failures=\"1\""),
        "{xml}"
    );
    assert_eq!(count(&xml, "<testsuite "), 2, "{xml}");
    assert_eq!(count(&xml, "<testcase "), 2, "{xml}");
    assert_eq!(count(&xml, "<failure "), 1, "{xml}");
    assert_eq!(count(&xml, "</testsuites>"), 1, "{xml}");
    assert!(
        xml.contains("name=\"a request is taken over with a greeting\""),
        "{xml}"
    );
    assert!(
        xml.contains("name=\"the greeting is not what we expect\""),
        "{xml}"
    );
    // The failure carries the diff, escaped.
    assert!(xml.contains("reply: Hello Ahmad!"), "{xml}");
    assert!(!xml.contains("<failure message=\"\""), "{xml}");
}

/// A broken scenario file is a failure on the console and in the exit code,
/// so a CI dashboard reading the JUnit file must see it too.
#[test]
fn junit_counts_a_malformed_scenario_file_as_a_failure() {
    let p = Project::new();
    p.rule("greet", GREET);
    p.scenarios("a.toml", GREET_PASSES);
    p.scenarios("broken.toml", "[[scenario]]\nname = \"x\"\nbogus = 1\n");
    let xml_path = p.tmp.path().join("junit.xml");
    let run = p.test(&["--junit", xml_path.to_str().unwrap()]);
    assert_eq!(run.code, Some(1), "{run:?}");
    has(&run, "2 scenario(s): 1 passed, 1 failed");
    let xml = std::fs::read_to_string(&xml_path).expect("junit file written");
    assert!(xml.contains("broken.toml"), "{xml}");
    assert!(count(&xml, "<failure ") >= 1, "{xml}");
    assert!(
        xml.contains("<testsuites name=\"skyrules\" tests=\"2\" failures=\"1\">"),
        "{xml}"
    );
}

#[test]
fn the_shipped_rules_pass_their_scenarios() {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    // Every shipped rule has a scenario file named after it.
    for entry in std::fs::read_dir(&rules).expect("rules dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|x| x == "rhai") {
            let id = path.file_stem().unwrap().to_string_lossy().to_string();
            let toml = rules.join("tests").join(format!("{id}.toml"));
            assert!(toml.is_file(), "rule {id} has no {}", toml.display());
        }
    }
    let cwd = tempfile::tempdir().expect("temp dir");
    // The shipped rules' calendar and channels live in the repository's
    // skyrules.toml.
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("skyrules.toml");
    let run = skyrules(
        &[
            "--config",
            config.to_str().unwrap(),
            "test",
            rules.to_str().unwrap(),
        ],
        cwd.path(),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    has(&run, " passed, 0 failed");
    lacks(&run, "✗");
    has(&run, "together.toml");
}
