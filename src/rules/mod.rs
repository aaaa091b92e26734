//! The rules runtime: Rhai rule files, compiled once, called per event.
//!
//! Owns: the sandboxed `Engine` (built once), loading a directory of
//! `*.rhai` files into a [`RuleSet`] (each file compiled to an `AST` once,
//! its top-level code run once to register handlers), and calling the
//! matching handlers for an event; the canned replies of `replies.toml`
//! live in [`replies`]. Does not own: where events come from
//! (the watcher), carrying out actions (the executor) or keeping memory
//! (the state store) — handlers only record intents through [`ev`].

pub mod ev;
pub mod reload;
pub(crate) mod replies;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rhai::{
    Dynamic, Engine, EvalAltResult, FnPtr, ImmutableString, NativeCallContext, Position, AST,
};

use crate::hours::Calendars;
use crate::trace::{RuleSetVersion, RuleVersion};
use crate::tracking::{Event, EventKind, TimerSpec};
pub use ev::{Action, EventData, Memory};
pub(crate) use replies::Replies;

/// Limits of the sandbox. Generous for real rules, small enough that a
/// runaway handler fails in well under a second.
pub mod limits {
    use std::time::Duration;
    /// Rhai operations per handler call.
    pub(crate) const MAX_OPERATIONS: u64 = 2_000_000;
    /// Wall-clock time per handler call.
    pub(crate) const MAX_CALL_TIME: Duration = Duration::from_millis(500);
    /// Nested function calls.
    pub(crate) const MAX_CALL_LEVELS: usize = 32;
    /// Expression nesting (global, inside functions).
    pub(crate) const MAX_EXPR_DEPTHS: (usize, usize) = (64, 32);
    /// Bytes in one string.
    pub(crate) const MAX_STRING_SIZE: usize = 256 * 1024;
    /// Items in one array.
    pub(crate) const MAX_ARRAY_SIZE: usize = 10_000;
    /// Entries in one map.
    pub(crate) const MAX_MAP_SIZE: usize = 10_000;
    /// Variables alive at once.
    pub(crate) const MAX_VARIABLES: usize = 1_000;
}

/// A rule that failed to load or a handler that failed to run, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", path.display(), position_text(*line, *column))]
pub struct RuleError {
    /// The rule file.
    pub path: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What went wrong.
    pub message: String,
}

fn position_text(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

impl RuleError {
    fn new(path: &Path, pos: Position, message: impl Into<String>) -> RuleError {
        RuleError {
            path: path.to_path_buf(),
            line: pos.line(),
            column: pos.position(),
            message: message.into(),
        }
    }

    fn from_eval(path: &Path, e: &EvalAltResult) -> RuleError {
        // The innermost error carries the position inside the rule; an outer
        // "error in function call" only points at the call.
        let inner = e.unwrap_inner();
        let pos = if inner.position().is_none() {
            e.position()
        } else {
            inner.position()
        };
        let message = match inner {
            EvalAltResult::ErrorRuntime(v, _) => v.to_string(),
            EvalAltResult::ErrorTooManyOperations(_) => {
                "the handler ran too long (operation limit reached); look for an endless loop"
                    .into()
            }
            EvalAltResult::ErrorTerminated(_, _) => format!(
                "the handler ran longer than {} ms and was stopped",
                limits::MAX_CALL_TIME.as_millis()
            ),
            other => {
                let mut s = other.to_string();
                // Rhai appends " (line x, position y)"; we print it our way.
                if let Some(i) = s.rfind(" (line ") {
                    s.truncate(i);
                }
                s
            }
        };
        RuleError::new(path, pos, message)
    }

    /// The error with the offending source line and a caret under the
    /// column, as `skyrules check` prints it.
    pub fn render(&self, source: Option<&str>) -> String {
        let mut out = self.to_string();
        if let (Some(src), Some(line)) = (source, self.line) {
            if let Some(text) = src.lines().nth(line.saturating_sub(1)) {
                let gutter = line.to_string().len();
                out.push_str(&format!("\n{:gutter$} |\n{line} | {text}", ""));
                if let Some(col) = self.column {
                    let pad: String = text
                        .chars()
                        .take(col.saturating_sub(1))
                        .map(|c| if c == '\t' { '\t' } else { ' ' })
                        .collect();
                    out.push_str(&format!("\n{:gutter$} | {pad}^", ""));
                }
            }
        }
        out
    }
}

/// One `on(...)` registration.
#[derive(Debug, Clone)]
pub struct Handler {
    /// The event it handles.
    pub kind: EventKind,
    /// For timers, after how long.
    pub after: Option<Duration>,
    /// For timers, the `[hours.NAME]` calendar the time counts in.
    pub hours: Option<String>,
    /// The script function to call.
    pub func: FnPtr,
    /// Where `on` was called, for messages.
    pub position: Position,
}

/// How a rule runs (SPEC §8), set by a top-level `mode("…");`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuleMode {
    /// It acts (the default).
    #[default]
    Live,
    /// Its handlers run, its actions are only logged and recorded as
    /// `dry_run`, while the other rules act.
    Shadow,
    /// Its handlers do not run at all; the file stays.
    Off,
}

impl RuleMode {
    /// The name rules and metrics use: `live`, `shadow` or `off`.
    pub fn name(self) -> &'static str {
        match self {
            RuleMode::Live => "live",
            RuleMode::Shadow => "shadow",
            RuleMode::Off => "off",
        }
    }

    fn from_name(name: &str) -> Option<RuleMode> {
        match name {
            "live" => Some(RuleMode::Live),
            "shadow" => Some(RuleMode::Shadow),
            "off" => Some(RuleMode::Off),
            _ => None,
        }
    }
}

/// A loaded rule file.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The file stem.
    pub id: String,
    /// The file.
    pub path: PathBuf,
    /// Compiled once; handlers are called against it.
    pub ast: Arc<AST>,
    /// Registered handlers, in registration order.
    pub handlers: Vec<Handler>,
    /// Live, shadow or off.
    pub mode: RuleMode,
    /// A short hash of the file's content: the version `why` names.
    pub version: String,
}

/// Every loaded rule, in file-name order, and the canned replies they
/// send. Immutable once built: a reload builds a new set and publishes it
/// whole, so an event never sees new rules with old replies.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    /// Rules sorted by id.
    pub rules: Vec<Rule>,
    /// Every rule's id, version and mode, as the decision trace names
    /// them; set when the set is published.
    pub(crate) traced: Arc<RuleSetVersion>,
    /// The rules directory's `replies.toml`, what `canned(…)` reads.
    pub(crate) replies: Arc<Replies>,
}

impl RuleSet {
    /// A set of these rules, in id order.
    pub fn new(rules: Vec<Rule>) -> RuleSet {
        let mut set = RuleSet::default();
        for r in rules {
            set.upsert(r);
        }
        set.traced = Arc::new(set.versions());
        set
    }

    /// The rules' ids, versions and modes, in id order.
    fn versions(&self) -> RuleSetVersion {
        RuleSetVersion::new(
            self.rules
                .iter()
                .map(|r| RuleVersion {
                    rule: r.id.clone(),
                    version: r.version.clone(),
                    mode: r.mode.name().to_string(),
                })
                .collect(),
        )
    }

    /// The position of rule `id`.
    pub(crate) fn index_of(&self, id: &str) -> Option<usize> {
        self.rules.binary_search_by(|r| r.id.as_str().cmp(id)).ok()
    }

    /// Every timer any rule registered, deduplicated.
    pub fn timers(&self) -> Vec<TimerSpec> {
        let mut t: Vec<TimerSpec> = self
            .rules
            .iter()
            .flat_map(|r| &r.handlers)
            .filter_map(|h| {
                h.after.map(|after| TimerSpec {
                    kind: h.kind,
                    after,
                    hours: h.hours.clone(),
                })
            })
            .collect();
        t.sort();
        t.dedup();
        t
    }

    /// Whether some rule handles `kind` at all.
    pub fn handles(&self, kind: EventKind) -> bool {
        self.rules
            .iter()
            .flat_map(|r| &r.handlers)
            .any(|h| h.kind == kind)
    }

    /// Replaces or adds one rule, keeping file-name order.
    pub fn upsert(&mut self, rule: Rule) {
        match self.rules.binary_search_by(|r| r.id.cmp(&rule.id)) {
            Ok(i) => self.rules[i] = rule,
            Err(i) => self.rules.insert(i, rule),
        }
    }

    /// Removes a rule by id; true if it was there.
    pub fn remove(&mut self, id: &str) -> bool {
        let before = self.rules.len();
        self.rules.retain(|r| r.id != id);
        before != self.rules.len()
    }
}

/// What one rule did with one event.
#[derive(Debug)]
pub struct RuleRun {
    /// The rule.
    pub rule: String,
    /// Actions to carry out, in order (empty if the handler failed).
    pub actions: Vec<Action>,
    /// For each action, the handler that asked for it (`file:line:column`
    /// of its `on(...)`).
    pub origins: Vec<String>,
    /// The rule's memory for the session, if the handler changed it.
    pub memory: Option<Memory>,
    /// Why the handler failed; its actions and memory writes are dropped.
    pub error: Option<RuleError>,
    /// The rule runs in shadow mode: its actions are only logged.
    pub shadow: bool,
}

thread_local! {
    /// Handlers registered by the file being loaded on this thread.
    static LOADING: RefCell<Option<Vec<Handler>>> = const { RefCell::new(None) };
    /// The mode the file being loaded set, if it called `mode(…)`.
    static LOADING_MODE: Cell<Option<RuleMode>> = const { Cell::new(None) };
    /// When the running script must stop.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// (rule, session) of the running script, for `log`.
    static CURRENT: RefCell<(String, String)> = const { RefCell::new((String::new(), String::new())) };
}

/// The sandboxed Rhai engine and the currently published rule set.
pub struct Runtime {
    engine: Engine,
    current: RwLock<Arc<RuleSet>>,
    world: Arc<World>,
}

/// What the configuration gives rules beyond the event: business-hours
/// calendars (`[hours.NAME]`) and notification channels (`[notify.NAME]`).
/// Rules name them; they cannot reach anything else.
#[derive(Clone)]
pub struct World {
    /// Calendars by name.
    pub calendars: Calendars,
    /// Names of the configured notification channels.
    pub channels: Vec<String>,
    /// The sender behind them; `None` where nothing is delivered (checks,
    /// scenarios, the demo): notify actions then end as `skipped`.
    pub notifier: Option<Arc<crate::notifications::Notifier>>,
    /// Bytes of memory one rule may keep per session (`engine.max_rule_memory`).
    pub max_rule_memory: usize,
    /// Runs shadow rules as if live: `skyrules test`, where the rule under
    /// test is the one in shadow.
    pub shadow_is_live: bool,
}

/// The default of `engine.max_rule_memory`: far above what `once` flags and
/// counters need, far below what would bloat the state.
pub(crate) const DEFAULT_MAX_RULE_MEMORY: usize = 64 * 1024;

impl Default for World {
    fn default() -> Self {
        World {
            calendars: Calendars::default(),
            channels: Vec::new(),
            notifier: None,
            max_rule_memory: DEFAULT_MAX_RULE_MEMORY,
            shadow_is_live: false,
        }
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime::new()
    }
}

impl Runtime {
    /// Builds the engine once, with every sandbox limit set.
    pub fn new() -> Runtime {
        Runtime::with_world(World::default())
    }

    /// A runtime whose rules can use these calendars and channels.
    pub fn with_world(world: World) -> Runtime {
        let world = Arc::new(world);
        Runtime {
            engine: build_engine(world.clone()),
            current: RwLock::new(Arc::new(RuleSet::default())),
            world,
        }
    }

    /// The calendars rules and timers count business hours in.
    pub fn calendars(&self) -> &Calendars {
        &self.world.calendars
    }

    /// The rule set events are evaluated against right now.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Publishes a new rule set atomically: an event sees all of it or none.
    pub(crate) fn publish(&self, mut set: RuleSet) {
        set.traced = Arc::new(set.versions());
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
    }

    /// Writes Rhai definition files (`*.d.rhai`) for everything a rule can
    /// call, for the Rhai language server and editor extensions.
    pub(crate) fn write_definitions(&self, dir: &Path) -> std::io::Result<()> {
        self.engine
            .definitions()
            .with_headers(true)
            .include_standard_packages(true)
            .write_to_dir(dir)
    }

    /// Compiles one file and runs its top-level code to collect handlers.
    pub(crate) fn load_file(&self, path: &Path) -> Result<Rule, RuleError> {
        let source = std::fs::read_to_string(path).map_err(|e| {
            RuleError::new(
                path,
                Position::NONE,
                format!("cannot read the rule file: {e}"),
            )
        })?;
        self.load_source(path, &source)
    }

    /// Like [`Runtime::load_file`], from text already read.
    pub fn load_source(&self, path: &Path, source: &str) -> Result<Rule, RuleError> {
        let id = rule_id(path);
        let ast = self.engine.compile(source).map_err(|e| {
            let mut msg = e.0.to_string();
            if let Some(i) = msg.rfind(" (line ") {
                msg.truncate(i);
            }
            RuleError::new(path, e.1, msg)
        })?;
        LOADING.with(|l| *l.borrow_mut() = Some(Vec::new()));
        LOADING_MODE.with(|m| m.set(None));
        CURRENT.with(|c| *c.borrow_mut() = (id.clone(), String::new()));
        DEADLINE.with(|d| d.set(Some(Instant::now() + limits::MAX_CALL_TIME)));
        let ran = self.engine.run_ast(&ast);
        DEADLINE.with(|d| d.set(None));
        let handlers = LOADING.with(|l| l.borrow_mut().take()).unwrap_or_default();
        let mode = LOADING_MODE.with(|m| m.take()).unwrap_or_default();
        ran.map_err(|e| RuleError::from_eval(path, &e))?;
        Ok(Rule {
            id,
            path: path.to_path_buf(),
            ast: Arc::new(ast),
            handlers,
            mode,
            version: crate::trace::short_hash(source.as_bytes()),
        })
    }

    /// Loads every `*.rhai` in `dir`, in file-name order, and its canned
    /// replies. Returns the rules that loaded and the errors of those that
    /// did not (and of a replies file that does not parse).
    pub fn load_dir(&self, dir: &Path) -> Result<(RuleSet, Vec<RuleError>), RuleError> {
        let mut set = RuleSet::default();
        let mut errors = Vec::new();
        match Replies::load(dir) {
            Ok(r) => set.replies = Arc::new(r),
            Err(e) => errors.push(e),
        }
        for path in rule_files(dir)? {
            match self.load_file(&path) {
                Ok(rule) => set.upsert(rule),
                Err(e) => errors.push(e),
            }
        }
        Ok((set, errors))
    }

    /// Runs every matching handler of every rule, in file-name order, for
    /// one event. `memory` holds each rule's memory for the session and is
    /// updated in place for the rules that changed it.
    pub fn evaluate(
        &self,
        set: &RuleSet,
        data: &Arc<EventData>,
        memory: &mut HashMap<String, Memory>,
    ) -> Vec<RuleRun> {
        let event = &data.event;
        let mut runs = Vec::new();
        let _replies = replies::in_use(set.replies.clone());
        for rule in set.rules.iter().filter(|r| r.mode != RuleMode::Off) {
            let matching: Vec<&Handler> =
                rule.handlers.iter().filter(|h| handles(h, event)).collect();
            if matching.is_empty() {
                continue;
            }
            let mem = memory.get(&rule.id).cloned().unwrap_or_default();
            let ev = ev::Ev::new(data.clone(), &rule.id, mem);
            let mut error = None;
            let mut origins = Vec::new();
            CURRENT.with(|c| *c.borrow_mut() = (rule.id.clone(), event.session_id.clone()));
            for h in matching {
                DEADLINE.with(|d| d.set(Some(Instant::now() + limits::MAX_CALL_TIME)));
                let result = h
                    .func
                    .call::<Dynamic>(&self.engine, &rule.ast, (ev.clone(),));
                DEADLINE.with(|d| d.set(None));
                if let Err(e) = result {
                    error = Some(RuleError::from_eval(&rule.path, &e));
                    break;
                }
                let origin = format!(
                    "{}{}",
                    rule.path.display(),
                    position_text(h.position.line(), h.position.position())
                );
                origins.resize(ev.action_count(), origin);
            }
            let rec = ev.finish();
            if !rec.unknown_fields.is_empty() {
                tracing::warn!(rule = %rule.id, session_id = %event.session_id, fields = ?rec.unknown_fields, "reply template names fields sessions do not have; filled with nothing");
            }
            if let Some(err) = error {
                runs.push(RuleRun {
                    rule: rule.id.clone(),
                    actions: Vec::new(),
                    origins: Vec::new(),
                    memory: None,
                    error: Some(err),
                    shadow: self.shadowed(rule),
                });
                continue;
            }
            let changed = rec.memory_changed.then(|| rec.memory.clone());
            if let Some(m) = &changed {
                memory.insert(rule.id.clone(), m.clone());
            }
            runs.push(RuleRun {
                rule: rule.id.clone(),
                actions: rec.actions,
                origins,
                memory: changed,
                error: None,
                shadow: self.shadowed(rule),
            });
        }
        runs
    }
}

impl Runtime {
    /// Whether `rule`'s actions are only logged.
    fn shadowed(&self, rule: &Rule) -> bool {
        rule.mode == RuleMode::Shadow && !self.world.shadow_is_live
    }
}

fn handles(h: &Handler, event: &Event) -> bool {
    h.kind == event.kind
        && match (h.after, &event.timer) {
            (Some(after), Some(t)) => after == t.after && h.hours == t.hours,
            (None, None) => true,
            _ => false,
        }
}

/// The rule id of a file: its stem.
pub(crate) fn rule_id(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Whether a path is a rule file (not an editor's temp or backup file).
pub(crate) fn is_rule_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.ends_with(".rhai") && !name.starts_with('.') && !name.starts_with('#')
}

/// The rule files of a directory, sorted by name. Not recursive, and a
/// symlink counts as the file it points to: a ConfigMap volume's
/// `NAME.rhai -> ..data/NAME.rhai` is one rule, and the `..data` and
/// `..<timestamp>` directories behind it (dot names, not `*.rhai`) are not
/// read a second time. A link whose file is gone (a key being removed) is
/// not a rule.
pub(crate) fn rule_files(dir: &Path) -> Result<Vec<PathBuf>, RuleError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        RuleError::new(
            dir,
            Position::NONE,
            format!("cannot read the rules directory: {e}"),
        )
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| is_rule_file(p) && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

fn rt_err(msg: String, pos: Position) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(msg.into(), pos))
}

fn register_handler(
    ctx: &NativeCallContext,
    world: &World,
    kind: &str,
    after: Option<&str>,
    options: Option<rhai::Map>,
    func: FnPtr,
) -> Result<(), Box<EvalAltResult>> {
    let pos = ctx.call_position();
    let Some(k) = EventKind::from_name(kind) else {
        let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.name()).collect();
        return Err(rt_err(
            format!("unknown event {kind:?}; events are {}", names.join(", ")),
            pos,
        ));
    };
    let after = match (k.is_timer(), after) {
        (true, None) => {
            return Err(rt_err(
                format!("{kind:?} is a timer and needs a duration: on({kind:?}, \"15m\", |ev| …)"),
                pos,
            ))
        }
        (false, Some(_)) => {
            return Err(rt_err(
                format!("{kind:?} is not a timer and takes no duration: on({kind:?}, |ev| …)"),
                pos,
            ))
        }
        (true, Some(d)) => Some(crate::config::parse_duration(d).map_err(|e| rt_err(e, pos))?),
        (false, None) => None,
    };
    let mut hours = None;
    for (key, value) in options.unwrap_or_default() {
        match key.as_str() {
            "hours" => {
                let name = value.into_immutable_string().map_err(|t| {
                    rt_err(format!("`hours` must be a calendar name, not a {t}"), pos)
                })?;
                if world.calendars.get(&name).is_none() {
                    let known = world.calendars.names();
                    return Err(rt_err(
                        format!(
                            "unknown calendar {name:?}; configured: {}",
                            if known.is_empty() {
                                "none (add [hours.NAME] to the config)".into()
                            } else {
                                known.join(", ")
                            }
                        ),
                        pos,
                    ));
                }
                hours = Some(name.to_string());
            }
            other => {
                return Err(rt_err(
                    format!("unknown option {other:?}; timers take #{{ hours: \"NAME\" }}"),
                    pos,
                ))
            }
        }
    }
    LOADING.with(|l| match l.borrow_mut().as_mut() {
        Some(list) => {
            list.push(Handler {
                kind: k,
                after,
                hours,
                func,
                position: pos,
            });
            Ok(())
        }
        None => Err(rt_err(
            "on(...) registers handlers and only works at the top level of a rule file".into(),
            pos,
        )),
    })
}

/// `mode("…")`: only at load, once, with a known name.
fn set_mode(ctx: &NativeCallContext, name: &str) -> Result<(), Box<EvalAltResult>> {
    let pos = ctx.call_position();
    let Some(mode) = RuleMode::from_name(name) else {
        return Err(rt_err(
            format!("unknown mode {name:?}; a rule's mode is \"live\", \"shadow\" or \"off\""),
            pos,
        ));
    };
    if LOADING.with(|l| l.borrow().is_none()) {
        return Err(rt_err(
            "mode(...) sets how the whole rule runs and only works at the top level of a rule file"
                .into(),
            pos,
        ));
    }
    LOADING_MODE.with(|m| match m.get() {
        Some(_) => Err(rt_err(
            "mode(...) is set twice in this file; keep one".into(),
            pos,
        )),
        None => {
            m.set(Some(mode));
            Ok(())
        }
    })
}

fn build_engine(world: Arc<World>) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_max_operations(limits::MAX_OPERATIONS)
        .set_max_call_levels(limits::MAX_CALL_LEVELS)
        .set_max_expr_depths(limits::MAX_EXPR_DEPTHS.0, limits::MAX_EXPR_DEPTHS.1)
        .set_max_string_size(limits::MAX_STRING_SIZE)
        .set_max_array_size(limits::MAX_ARRAY_SIZE)
        .set_max_map_size(limits::MAX_MAP_SIZE)
        .set_max_variables(limits::MAX_VARIABLES)
        .set_strict_variables(true)
        .disable_symbol("eval");
    engine.on_progress(|ops| {
        // Reading the clock on every operation would cost more than the
        // script; every 4096 operations is well under a millisecond.
        if ops % 4096 == 0 {
            let late = DEADLINE.with(|d| d.get().is_some_and(|t| Instant::now() > t));
            if late {
                return Some(Dynamic::from("deadline"));
            }
        }
        None
    });
    engine.on_print(|s| {
        CURRENT.with(|c| {
            let c = c.borrow();
            tracing::info!(rule = %c.0, session_id = %c.1, "{s}");
        })
    });
    engine.on_debug(|s, _, pos| {
        CURRENT.with(|c| {
            let c = c.borrow();
            tracing::debug!(rule = %c.0, session_id = %c.1, %pos, "{s}");
        })
    });
    use rhai::FuncRegistration as F;
    F::new("log")
        .with_params_info(["text: string", "()"])
        .with_comments(["/// Writes `text` to the engine's log, with the rule id and the session."])
        .register_into_engine(&mut engine, |text: ImmutableString| {
            CURRENT.with(|c| {
                let c = c.borrow();
                tracing::info!(rule = %c.0, session_id = %c.1, "{text}");
            })
        });
    F::new("mode")
        .with_params_info(["mode: string", "()"])
        .with_comments(["/// At the top of a rule file: `mode(\"shadow\");` runs the rule as a dry run\n/// while the others act, `mode(\"off\");` stops it, `mode(\"live\");` is the default."])
        .register_into_engine(&mut engine, |ctx: NativeCallContext, name: &str| {
            set_mode(&ctx, name)
        });
    let events = EventKind::ALL.map(|k| k.name()).join(", ");
    let w = world.clone();
    F::new("on")
        .with_params_info(["event: string", "handler: Fn", "()"])
        .with_comments([format!(
            "/// Registers `handler` (|ev| {{ … }}) for `event`, one of: {events}."
        )])
        .register_into_engine(
            &mut engine,
            move |ctx: NativeCallContext, kind: &str, f: FnPtr| {
                register_handler(&ctx, &w, kind, None, None, f)
            },
        );
    let w = world.clone();
    F::new("on")
        .with_params_info(["event: string", "after: string", "handler: Fn", "()"])
        .with_comments(["/// Registers `handler` for a timer event (idle, unanswered, human_waiting)\n/// that fires once the condition has held for `after`, e.g. \"15m\"."])
        .register_into_engine(
            &mut engine,
            move |ctx: NativeCallContext, kind: &str, after: &str, f: FnPtr| {
                register_handler(&ctx, &w, kind, Some(after), None, f)
            },
        );
    let w = world.clone();
    F::new("on")
        .with_params_info(["event: string", "after: string", "options: map", "handler: Fn", "()"])
        .with_comments(["/// A timer counted in business hours: on(\"unanswered\", \"5m\", #{ hours: \"support\" }, |ev| …)\n/// waits five minutes of the `[hours.support]` calendar's open time."])
        .register_into_engine(
            &mut engine,
            move |ctx: NativeCallContext, kind: &str, after: &str, opts: rhai::Map, f: FnPtr| {
                register_handler(&ctx, &w, kind, Some(after), Some(opts), f)
            },
        );
    replies::register(&mut engine);
    ev::register(&mut engine, world);
    engine
}

/// Things in a rule that load fine but are almost certainly mistakes:
/// handlers that can never fire and templates naming fields sessions do not
/// have. Each is `file:line:column: message`.
pub fn lint(rule: &Rule, source: &str) -> Vec<String> {
    let mut out = Vec::new();
    let at = |line: usize, col: usize| format!("{}:{line}:{col}", rule.path.display());
    if rule.handlers.is_empty() {
        out.push(format!(
            "{}: rule {} registers no handler and will never act",
            rule.path.display(),
            rule.id
        ));
    }
    for h in &rule.handlers {
        if h.after == Some(Duration::ZERO) {
            out.push(format!(
                "{}: {} timer with a zero duration can never fire; give it a duration like \"5m\"",
                at(
                    h.position.line().unwrap_or(1),
                    h.position.position().unwrap_or(1)
                ),
                h.kind
            ));
        }
    }
    let blank = crate::api::Session::default();
    for (i, line) in source.lines().enumerate() {
        let mut rest = line;
        let mut offset = 0;
        while let Some(start) = rest.find("{{") {
            let Some(len) = rest[start + 2..].find("}}") else {
                break;
            };
            let name = rest[start + 2..start + 2 + len].trim();
            if ev::field_text(&blank, name).is_none() {
                let col = line[..offset + start].chars().count() + 1;
                out.push(format!(
                    "{}: template field {{{{{name}}}}} is not a session field and will be left empty",
                    at(i + 1, col)
                ));
            }
            offset += start + 2 + len + 2;
            rest = &rest[start + 2 + len + 2..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Session, SessionDetail};

    fn load(src: &str) -> Result<Rule, RuleError> {
        Runtime::new().load_source(Path::new("rules/t.rhai"), src)
    }

    #[test]
    fn a_rule_sets_its_mode_once_at_the_top_level() {
        let live = r#"on("visitor_message", |ev| ev.reply("hi"));"#;
        assert_eq!(load(live).unwrap().mode, RuleMode::Live);
        let shadow = load(&format!("mode(\"shadow\");\n{live}")).unwrap();
        assert_eq!(shadow.mode, RuleMode::Shadow);
        assert_eq!(
            load(&format!("mode(\"off\");\n{live}")).unwrap().mode,
            RuleMode::Off
        );
        let e = load(&format!("mode(\"shadow\");\nmode(\"off\");\n{live}")).unwrap_err();
        assert!(e.to_string().contains("set twice"), "{e}");
        assert_eq!(e.line, Some(2));
        let e = load(&format!("mode(\"dark\");\n{live}")).unwrap_err();
        assert!(
            e.to_string().contains("\"live\", \"shadow\" or \"off\""),
            "{e}"
        );
        // A mode set in a handler would change a rule mid-run: refused.
        let rt = Runtime::new();
        let rule = rt
            .load_source(
                Path::new("rules/t.rhai"),
                r#"on("visitor_message", |ev| { mode("off"); });"#,
            )
            .unwrap();
        let set = RuleSet::new(vec![rule]);
        let data = Arc::new(EventData::new(
            crate::tracking::Event {
                kind: EventKind::VisitorMessage,
                session_id: "s".into(),
                message: None,
                timer: None,
                waited: None,
                at: chrono::Utc::now(),
            },
            &Session::default(),
            &[],
            chrono::Utc::now(),
        ));
        let runs = rt.evaluate(&set, &data, &mut HashMap::new());
        let e = runs[0].error.as_ref().expect("an error");
        assert!(e.to_string().contains("top level"), "{e}");
    }

    #[test]
    fn load_errors_carry_file_line_and_column() {
        let e = load("on(\"visitor_message\", |ev| {\n  ev.reply(\"hi\")\n  let x = ;\n});")
            .unwrap_err();
        assert_eq!(e.path, Path::new("rules/t.rhai"));
        assert!(e.line.is_some() && e.column.is_some(), "{e}");
        let e = load("\n  on(\"visitor_mesage\", |ev| {});").unwrap_err();
        assert_eq!((e.line, e.column), (Some(2), Some(3)), "{e}");
        assert!(e.message.contains("unknown event"), "{e}");
        let e = load("on(\"idle\", |ev| {});").unwrap_err();
        assert!(e.message.contains("needs a duration"), "{e}");
        let e = load("on(\"idle\", \"fifteen\", |ev| {});").unwrap_err();
        assert!(e.message.contains("invalid duration"), "{e}");
        let e = load("on(\"idle\", \"5m\", |ev| { undefined_var });").unwrap_err();
        assert!(e.message.contains("undefined_var"), "{e}");
        let e = load("let x = eval(\"1\");").unwrap_err();
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn definitions_describe_the_rule_api_with_names() {
        let dir = tempfile::tempdir().unwrap();
        Runtime::new().write_definitions(dir.path()).unwrap();
        let defs = std::fs::read_to_string(dir.path().join("__static__.d.rhai")).unwrap();
        for want in [
            "fn on(event: string, handler: Fn)",
            "fn on(event: string, after: string, handler: Fn)",
            "fn reply(ev: Event, text: string)",
            "fn once(ev: Event, key: string) -> bool",
            "fn get session(ev: Event) -> map",
            "fn log(text: string)",
            "/// Registers `handler` (|ev| { … }) for `event`",
        ] {
            assert!(defs.contains(want), "missing {want:?}");
        }
    }

    #[test]
    fn a_looping_handler_fails_alone() {
        let rt = Runtime::new();
        let a = rt
            .load_source(
                Path::new("a.rhai"),
                "on(\"session_started\", |ev| { loop { } });",
            )
            .unwrap();
        let b = rt
            .load_source(
                Path::new("b.rhai"),
                "on(\"session_started\", |ev| { if ev.once(\"x\") { ev.reply(\"Hi {{visitor_name}}\"); } });",
            )
            .unwrap();
        let set = RuleSet::new(vec![a, b]);
        let s = Session {
            session_id: "s1".into(),
            ..Session::default()
        };
        let (_, events) = crate::tracking::diff(
            None,
            SessionDetail {
                session: s.clone(),
                messages: vec![],
            },
            false,
        );
        let data = Arc::new(EventData::new(
            events[0].clone(),
            &s,
            &[],
            chrono::Utc::now(),
        ));
        let mut mem = HashMap::new();
        let runs = rt.evaluate(&set, &data, &mut mem);
        assert!(
            runs[0].error.as_ref().unwrap().message.contains("too long"),
            "{:?}",
            runs[0].error
        );
        assert_eq!(runs[1].actions, vec![Action::Reply("Hi there".into())]);
        let runs = rt.evaluate(&set, &data, &mut mem);
        assert!(runs[1].actions.is_empty(), "once holds across calls");
    }
}
