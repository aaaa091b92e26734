//! `skyrules test`: scenario files that unit-test rules before they touch a
//! customer.
//!
//! Owns: the scenario format (TOML, kept next to the rules in
//! `rules/tests/`), running each scenario, and reporting. A scenario runs
//! the real code path — the simulator over HTTP, the watcher's change
//! detection, the rules, the executor with its validation and loop guard —
//! on the simulator's frozen clock, which the scenario advances: a two-hour
//! idle timer takes milliseconds, and nothing sleeps.
//!
//! ```toml
//! [[scenario]]
//! name = "a human request is taken over with a greeting"
//! rules = ["escalate-on-request"]          # optional; default: every rule
//!
//! [[scenario.session]]
//! id = "s1"                                # any other Session field too
//! visitor_name = "Ahmad"
//!
//! [[scenario.step]]
//! visitor = "Can I talk to a person?"
//! expect = []                              # nothing happens
//!
//! [[scenario.step]]
//! request_human = true
//! expect = ["take_over", "reply: Hi Ahmad, a teammate is joining you now."]
//! ```
//!
//! A step does one thing — `visitor`, `bot` or `agent` (a message),
//! `request_human`, `take_over` / `release` (by someone else), `leave`, or
//! `advance` (a duration) — to `session` (default: the first one), then the
//! engine polls until nothing more happens. `expect` lists the actions
//! skyrules took in that step, in order; leave it out to not check.
//! Actions read `take_over`, `release`, `end`, `reply: <text after
//! templating>`; one that was not taken gets its outcome appended, e.g.
//! `reply: hello (capped)`. With several sessions, each is prefixed with
//! the session id: `s2 take_over`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::broadcast;

use crate::api::SenderType;
use crate::config::parse_duration;
use crate::engine::{EngineOptions, Note};
use crate::executor::Guard;
use crate::rules::World;
use crate::tools::harness::{Harness, MAX_SETTLE_CYCLES};
/// Clock steps when a scenario advances time, so that timers fire in order.
const ADVANCE_STEP: Duration = Duration::from_secs(30);

/// A scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// The scenarios, in file order.
    #[serde(default)]
    pub scenario: Vec<Scenario>,
}

/// One scenario.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What it shows, in words.
    pub name: String,
    /// Rule ids to load; all rules of the directory when absent.
    #[serde(default)]
    pub rules: Option<Vec<String>>,
    /// Reply-loop guard limit for this scenario.
    #[serde(default)]
    pub max_replies: Option<u32>,
    /// When the scenario starts on the virtual clock (RFC 3339, e.g.
    /// "2026-11-27T17:58:00+01:00"); default: now. Business-hours rules
    /// need it.
    #[serde(default)]
    pub start: Option<String>,
    /// Sessions open when the scenario starts.
    #[serde(default)]
    pub session: Vec<toml::Table>,
    /// What happens, in order.
    #[serde(default)]
    pub step: Vec<Step>,
}

/// One step of a scenario.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The session acted on (default: the first).
    pub session: Option<String>,
    /// A visitor message.
    pub visitor: Option<String>,
    /// An AI bot message.
    pub bot: Option<String>,
    /// A message from a human agent (not skyrules).
    pub agent: Option<String>,
    /// The visitor asks for a human.
    #[serde(default)]
    pub request_human: bool,
    /// Someone takes the chat over.
    #[serde(default)]
    pub take_over: bool,
    /// Someone hands the chat back to the AI.
    #[serde(default)]
    pub release: bool,
    /// The visitor leaves; the chat ends.
    #[serde(default)]
    pub leave: bool,
    /// Time passes, e.g. "15m".
    pub advance: Option<String>,
    /// The actions expected in this step, in order.
    pub expect: Option<Vec<String>>,
}

impl Step {
    fn describe(&self) -> String {
        let what = if let Some(t) = &self.visitor {
            format!("visitor says {t:?}")
        } else if let Some(t) = &self.bot {
            format!("bot says {t:?}")
        } else if let Some(t) = &self.agent {
            format!("agent says {t:?}")
        } else if self.request_human {
            "visitor asks for a human".into()
        } else if self.take_over {
            "someone takes over".into()
        } else if self.release {
            "someone releases to the AI".into()
        } else if self.leave {
            "visitor leaves".into()
        } else if let Some(d) = &self.advance {
            format!("{d} pass")
        } else {
            "nothing".into()
        };
        match &self.session {
            Some(s) => format!("{what} ({s})"),
            None => what,
        }
    }

    fn count(&self) -> usize {
        [
            self.visitor.is_some(),
            self.bot.is_some(),
            self.agent.is_some(),
            self.request_human,
            self.take_over,
            self.release,
            self.leave,
            self.advance.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count()
    }
}

/// The result of one scenario.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    /// The file.
    pub file: PathBuf,
    /// The scenario's name.
    pub name: String,
    /// `None` when it passed; else what went wrong, ready to print.
    pub failure: Option<String>,
    /// Run time.
    pub elapsed: Duration,
}

/// The scenario files under `dir/tests/` (or `dir` itself when it holds
/// scenario files directly), sorted.
pub(crate) fn scenario_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let tests = dir.join("tests");
    let base = if tests.is_dir() {
        tests
    } else {
        dir.to_path_buf()
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&base)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Parses a scenario file; the error names the file and line.
pub(crate) fn load_file(path: &Path) -> Result<ScenarioFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_scenarios(&text, path)
}

/// Parses scenario text read from `path` (named in errors).
pub fn parse_scenarios(text: &str, path: &Path) -> Result<ScenarioFile, String> {
    toml::from_str::<ScenarioFile>(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
            .unwrap_or(1);
        format!("{}:{line}: {}", path.display(), e.message().trim())
    })
}

/// Runs one scenario against the rules of `rules_dir`, in the calendars and
/// channels `world` gives (the configuration's).
pub(crate) async fn run_scenario(
    rules_dir: &Path,
    file: &Path,
    s: &Scenario,
    world: World,
) -> ScenarioResult {
    let started = std::time::Instant::now();
    let failure = run_inner(rules_dir, s, world).await.err();
    ScenarioResult {
        file: file.to_path_buf(),
        name: s.name.clone(),
        failure,
        elapsed: started.elapsed(),
    }
}

async fn run_inner(rules_dir: &Path, s: &Scenario, world: World) -> Result<(), String> {
    for (i, step) in s.step.iter().enumerate() {
        if step.count() != 1 {
            return Err(format!(
                "step {}: a step does exactly one thing (visitor, bot, agent, request_human, take_over, release, leave or advance); this one does {}",
                i + 1,
                step.count()
            ));
        }
    }
    let rules = RuleDir::new(rules_dir, s.rules.as_deref())?;
    let opts = EngineOptions {
        rules_dir: rules.path().to_path_buf(),
        poll_interval: Duration::from_secs(5),
        dry_run: false,
        max_concurrency: 4,
        guard: Guard {
            max_replies: s.max_replies.unwrap_or(5),
            window: Duration::from_secs(600),
        },
        pending_interval: std::time::Duration::ZERO,
        trace_length: crate::trace::DEFAULT_TRACE_LENGTH,
    };
    let (h, report) = Harness::start(opts, world).await?;
    if let Some(e) = report.errors.first() {
        return Err(format!("rule does not load: {e}"));
    }
    let mut run = Run {
        notes: h.engine.subscribe(),
        h,
        multi: s.session.len() > 1,
        // Subsets run from a copy; messages name the real files.
        paths: (
            rules.path().display().to_string(),
            rules_dir.display().to_string(),
        ),
    };
    let result = run.scenario(s).await;
    run.h.shutdown().await;
    result
}

/// A scenario being run: the harness, the engine's notes, and how to
/// describe what it saw.
struct Run {
    h: Harness,
    notes: broadcast::Receiver<Note>,
    /// Several sessions: actions are prefixed with their session id.
    multi: bool,
    /// The rules directory the engine loads, and the one to name instead.
    paths: (String, String),
}

impl Run {
    async fn scenario(&mut self, s: &Scenario) -> Result<(), String> {
        if let Some(start) = &s.start {
            let t = crate::api::parse_ts(start).ok_or_else(|| {
                format!("`start` {start:?} is not an RFC 3339 time like 2026-11-27T17:58:00+01:00")
            })?;
            self.h.sim.set_time(t);
        }
        self.h.resume().await?;
        // The empty first poll is the baseline; sessions created after it
        // are new to the engine and fire their events.
        self.h.step().await?;
        let ids = self.open_sessions(s)?;
        let setup = self.settle().await?;
        if let Some(err) = setup.errors.first() {
            return Err(format!("while the sessions open: {err}"));
        }
        for (i, step) in s.step.iter().enumerate() {
            let id = match &step.session {
                Some(id) => id.clone(),
                None => ids
                    .first()
                    .cloned()
                    .ok_or("a step needs a session; add a [[scenario.session]]")?,
            };
            self.step(i + 1, step, &id).await?;
        }
        Ok(())
    }

    /// Creates the scenario's sessions; returns their ids.
    fn open_sessions(&self, s: &Scenario) -> Result<Vec<String>, String> {
        let mut ids = Vec::new();
        for (i, table) in s.session.iter().enumerate() {
            let mut body = serde_json::to_value(table).map_err(|e| e.to_string())?;
            if let Some(obj) = body.as_object_mut() {
                let id = obj
                    .remove("id")
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("s{}", i + 1));
                obj.insert("session_id".into(), id.clone().into());
                ids.push(id);
            }
            self.h
                .sim
                .create_session(body)
                .map_err(|e| format!("session {}: {e:?}", i + 1))?;
        }
        Ok(ids)
    }

    /// Step `n`: does what it says to session `id`, lets the engine settle,
    /// and checks what it did against `expect`.
    async fn step(&mut self, n: usize, step: &Step, id: &str) -> Result<(), String> {
        let fail = |e: String| format!("step {n} ({}): {e}", step.describe());
        let seen = match &step.advance {
            Some(d) => self.advance(parse_duration(d).map_err(fail)?).await?,
            None => {
                self.act(step, id).await.map_err(fail)?;
                self.settle().await?
            }
        };
        if let Some(err) = seen.errors.first() {
            return Err(format!("step {n} ({}): {err}", step.describe()));
        }
        if let Some(expected) = &step.expect {
            let actual: Vec<&str> = seen.actions.iter().map(|(a, _)| a.as_str()).collect();
            if actual != expected.iter().map(String::as_str).collect::<Vec<_>>() {
                return Err(diff_text(n, step, expected, &seen.actions));
            }
        }
        Ok(())
    }

    /// Moves the clock by `total` in steps, settling after each, so that
    /// timers fire in order.
    async fn advance(&mut self, total: Duration) -> Result<Seen, String> {
        let mut seen = Seen::default();
        // A second more than asked, so a timer due exactly then fires
        // despite the one-second resolution of the server clock.
        let mut left = total + Duration::from_secs(1);
        while !left.is_zero() {
            let chunk = left.min(ADVANCE_STEP);
            self.h.sim.advance(chunk);
            left -= chunk;
            seen.extend(self.settle().await?);
        }
        Ok(seen)
    }

    /// What a step (other than `advance`) does to session `id`.
    async fn act(&self, step: &Step, id: &str) -> Result<(), String> {
        let sim = &self.h.sim;
        let r = if let Some(t) = &step.visitor {
            sim.post_message(id, SenderType::Visitor, t).map(|_| ())
        } else if let Some(t) = &step.bot {
            sim.post_message(id, SenderType::Bot, t).map(|_| ())
        } else if let Some(t) = &step.agent {
            sim.post_message(id, SenderType::Agent, t).map(|_| ())
        } else if step.request_human {
            sim.request_human(id).map(|_| ())
        } else if step.leave {
            sim.leave(id).map(|_| ())
        } else {
            Ok(())
        };
        r.map_err(|e| format!("the simulator refused: {e:?}"))?;
        if step.take_over {
            self.h.api.take_over(id).await.map_err(|e| e.to_string())?;
        }
        if step.release {
            self.h.api.release(id).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Polls until a poll sees no event, collecting what the engine did.
    async fn settle(&mut self) -> Result<Seen, String> {
        let mut seen = Seen::default();
        let Run {
            h,
            notes,
            multi,
            paths,
        } = self;
        let quiet = h
            .settle(|| take_notes(notes, *multi, paths, &mut seen) == 0)
            .await?;
        if !quiet {
            seen.errors.push(format!(
                "still producing events after {MAX_SETTLE_CYCLES} polls: a rule may be answering itself"
            ));
        }
        Ok(seen)
    }
}

#[derive(Debug, Default)]
struct Seen {
    /// (action as expectations spell it, rule that took it)
    actions: Vec<(String, String)>,
    errors: Vec<String>,
}

impl Seen {
    fn extend(&mut self, other: Seen) {
        self.actions.extend(other.actions);
        self.errors.extend(other.errors);
    }
}

/// Reads the notes of the last poll into `seen`; returns how many events
/// that poll saw.
fn take_notes(
    notes: &mut broadcast::Receiver<Note>,
    multi: bool,
    paths: &(String, String),
    seen: &mut Seen,
) -> usize {
    let mut events = 0;
    loop {
        match notes.try_recv() {
            Ok(Note::Cycle { events: n, .. }) => events = n,
            Ok(Note::Action {
                rule,
                session_id,
                action,
                outcome,
                origin,
                ..
            }) => {
                let action_is_notify = action == "notify";
                let mut s = if multi {
                    format!("{session_id} {action}")
                } else {
                    action.to_string()
                };
                if let Some(t) = action.text() {
                    s = format!("{s}: {t}");
                }
                // Scenarios have no notification sender: a notification
                // that would have gone out counts as taken.
                let sent = outcome == "taken" || (outcome == "dry_run" && action_is_notify);
                if !sent {
                    s = format!("{s} ({outcome})");
                }
                let by = match origin {
                    Some(o) => format!("rule {rule}, {}", o.replacen(&paths.0, &paths.1, 1)),
                    None => format!("rule {rule}"),
                };
                seen.actions.push((s, by));
            }
            Ok(Note::RuleFailed {
                rule, event, error, ..
            }) => seen.errors.push(format!(
                "rule {rule} failed on {event}: {}",
                // Every path: an unknown canned reply names the replies file too.
                error.replace(&paths.0, &paths.1)
            )),
            Ok(_) => {}
            Err(broadcast::error::TryRecvError::Lagged(_)) => {}
            Err(_) => break,
        }
    }
    events
}

fn diff_text(n: usize, step: &Step, expected: &[String], actual: &[(String, String)]) -> String {
    let mut out = format!("step {n} ({}):\n", step.describe());
    out.push_str("      expected:");
    if expected.is_empty() {
        out.push_str(" nothing\n");
    } else {
        out.push('\n');
        for e in expected {
            out.push_str(&format!("        {e}\n"));
        }
    }
    out.push_str("      actual:");
    if actual.is_empty() {
        out.push_str(" nothing\n");
    } else {
        out.push('\n');
        for (a, rule) in actual {
            out.push_str(&format!("        {a}    ({rule})\n"));
        }
    }
    out
}

/// The rules a scenario runs: the whole directory, or a copy of a subset
/// (with the directory's replies file).
enum RuleDir {
    Whole(PathBuf),
    Subset(tempfile::TempDir),
}

impl RuleDir {
    fn new(dir: &Path, only: Option<&[String]>) -> Result<RuleDir, String> {
        let Some(only) = only else {
            return Ok(RuleDir::Whole(dir.to_path_buf()));
        };
        // Private (0700) and unguessable: the engine loads whatever is there.
        let tmp = crate::tools::scratch::private_dir("skyrules-test-rules-").map_err(|e| {
            format!("cannot create a private directory for the scenario's rules: {e}")
        })?;
        for id in only {
            let src = dir.join(format!("{id}.rhai"));
            std::fs::copy(&src, tmp.path().join(format!("{id}.rhai")))
                .map_err(|e| format!("rule {id:?} ({}): {e}", src.display()))?;
        }
        // The rules of the subset send the directory's canned replies.
        let replies = crate::rules::replies::path_in(dir);
        if replies.is_file() {
            std::fs::copy(&replies, crate::rules::replies::path_in(tmp.path()))
                .map_err(|e| format!("{}: {e}", replies.display()))?;
        }
        Ok(RuleDir::Subset(tmp))
    }

    fn path(&self) -> &Path {
        match self {
            RuleDir::Whole(p) => p,
            RuleDir::Subset(t) => t.path(),
        }
    }
}

/// JUnit XML for CI systems: one suite per file, one case per scenario.
pub fn junit(results: &[ScenarioResult]) -> String {
    let mut by_file: BTreeMap<&Path, Vec<&ScenarioResult>> = BTreeMap::new();
    for r in results {
        by_file.entry(&r.file).or_default().push(r);
    }
    let esc = crate::escape::xml;
    let failures = results.iter().filter(|r| r.failure.is_some()).count();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"skyrules\" tests=\"{}\" failures=\"{failures}\">\n",
        results.len()
    );
    for (file, rs) in by_file {
        let f = rs.iter().filter(|r| r.failure.is_some()).count();
        out.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{f}\">\n",
            esc(&file.display().to_string()),
            rs.len()
        ));
        for r in rs {
            out.push_str(&format!(
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
                esc(&file.display().to_string()),
                esc(&r.name),
                r.elapsed.as_secs_f64()
            ));
            match &r.failure {
                None => out.push_str("/>\n"),
                Some(f) => out.push_str(&format!(
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                    esc(f.lines().next().unwrap_or("")),
                    esc(f)
                )),
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}
