//! Canned replies: the texts rules send, kept in the rules directory's
//! `replies.toml` apart from the rules' logic, so that people who do not
//! write Rhai can reword them and a rule reads `ev.reply(canned("apology"))`.
//!
//! Owns: the file's format (a flat table `name = "text"`), the
//! `canned(name)` and `canned(name, fields)` functions rules call, and what
//! `skyrules check` holds rules and replies against each other with (the
//! `canned("…")` calls found in a rule's compiled code). Does not own when
//! the file is read: the reloader reads it with the rules and publishes
//! both in one [`super::RuleSet`], so an event never sees new rules with
//! old replies.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rhai::{ASTNode, Engine, EvalAltResult, Expr, ImmutableString, Map, NativeCallContext, AST};

use super::{rt_err, Rule, RuleError};

/// The replies file's name, in the rules directory.
pub(crate) const FILE_NAME: &str = "replies.toml";

/// Names listed in an "unknown canned reply" message before the rest is
/// only counted: enough to spot a typo, short enough for one log line.
const NAMES_SHOWN: usize = 30;

/// The canned replies of a rules directory, by name. Immutable once read:
/// a reload reads a new table and publishes it with the rules.
#[derive(Debug, Clone)]
pub(crate) struct Replies {
    /// The file, named in messages (also when it does not exist).
    file: PathBuf,
    /// Whether the file exists: a missing file means no replies, and says
    /// so when a rule names one.
    exists: bool,
    texts: BTreeMap<String, Reply>,
}

#[derive(Debug, Clone)]
struct Reply {
    text: ImmutableString,
    /// 1-based line of its entry, for `skyrules check`.
    line: usize,
}

impl Default for Replies {
    fn default() -> Self {
        Replies::none(Path::new(FILE_NAME))
    }
}

thread_local! {
    /// The replies `canned(…)` reads on this thread: those of the rule set
    /// being evaluated (see [`in_use`]).
    static IN_USE: RefCell<Option<Arc<Replies>>> = const { RefCell::new(None) };
}

/// Where a rules directory keeps its replies.
pub(crate) fn path_in(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Whether `path` is a replies file (for the directory watcher).
pub(crate) fn is_replies_file(path: &Path) -> bool {
    path.file_name().is_some_and(|n| n == FILE_NAME)
}

impl Replies {
    /// No replies: the rules directory has no `replies.toml`.
    pub(crate) fn none(file: &Path) -> Replies {
        Replies {
            file: file.to_path_buf(),
            exists: false,
            texts: BTreeMap::new(),
        }
    }

    /// Reads `dir`'s replies; a missing file is no replies, not an error.
    pub(crate) fn load(dir: &Path) -> Result<Replies, RuleError> {
        let file = path_in(dir);
        match std::fs::read_to_string(&file) {
            Ok(text) => Replies::parse(&file, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Replies::none(&file)),
            Err(e) => Err(unreadable(&file, &e)),
        }
    }

    /// Parses `source`, the text of `file`. The error names the file, the
    /// line and, where one is at fault, the reply.
    pub(crate) fn parse(file: &Path, source: &str) -> Result<Replies, RuleError> {
        let error = |offset: usize, message: String| {
            let (line, column) = line_col(source, offset);
            RuleError {
                path: file.to_path_buf(),
                line: Some(line),
                column: Some(column),
                message,
            }
        };
        let table: BTreeMap<String, toml::Spanned<toml::Value>> =
            toml::from_str(source).map_err(|e| {
                let at = e.span().map(|s| s.start).unwrap_or(0);
                let mut message = e.message().trim().replace('\n', "; ");
                if let Some(name) = name_on_line(source, at) {
                    message.push_str(&format!(" (reply {name:?})"));
                }
                error(at, message)
            })?;
        let mut texts = BTreeMap::new();
        for (name, value) in table {
            let at = value.span().start;
            if !is_name(&name) {
                return Err(error(
                    at,
                    format!("reply name {name:?} is not a name; use letters, digits, _ and -"),
                ));
            }
            let text = match value.into_inner() {
                toml::Value::String(s) => s,
                other => {
                    return Err(error(
                        at,
                        format!(
                            "reply {name:?} must be a string in quotes, not {}",
                            with_article(other.type_str())
                        ),
                    ))
                }
            };
            if text.trim().is_empty() {
                return Err(error(at, format!("reply {name:?} is empty")));
            }
            let line = line_col(source, at).0;
            texts.insert(
                name,
                Reply {
                    text: text.into(),
                    line,
                },
            );
        }
        Ok(Replies {
            file: file.to_path_buf(),
            exists: true,
            texts,
        })
    }

    /// How many replies there are.
    pub(crate) fn len(&self) -> usize {
        self.texts.len()
    }

    /// Whether the replies came from a file (one that exists).
    pub(crate) fn exists(&self) -> bool {
        self.exists
    }

    /// The file they came from (or would have).
    pub(crate) fn file(&self) -> &Path {
        &self.file
    }

    /// The message when a rule names a reply that is not there.
    fn unknown(&self, name: &str) -> String {
        let file = self.file.display();
        if !self.exists {
            return format!("unknown canned reply {name:?} (there is no {file})");
        }
        if self.texts.is_empty() {
            return format!("unknown canned reply {name:?} ({file} has none)");
        }
        let names: Vec<&str> = self
            .texts
            .keys()
            .take(NAMES_SHOWN)
            .map(String::as_str)
            .collect();
        let more = self.texts.len().saturating_sub(NAMES_SHOWN);
        let more = if more > 0 {
            format!(", … ({more} more)")
        } else {
            String::new()
        };
        format!(
            "unknown canned reply {name:?} ({file} has: {}{more})",
            names.join(", ")
        )
    }
}

/// The error for a replies file that exists but cannot be read.
pub(crate) fn unreadable(file: &Path, e: &std::io::Error) -> RuleError {
    RuleError {
        path: file.to_path_buf(),
        line: None,
        column: None,
        message: format!("cannot read the replies file: {e}"),
    }
}

/// "an integer", "a table": TOML's type names as a message reads them.
fn with_article(type_name: &str) -> String {
    let vowel = type_name.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {type_name}", if vowel { "an" } else { "a" })
}

/// Whether `name` may name a reply: letters, digits, `_` and `-`, the
/// characters of a bare TOML key and of rule file names.
fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The reply named on the line of byte `offset` (`name = …`), if it looks
/// like one: a TOML error points at a place, people think in replies.
fn name_on_line(text: &str, offset: usize) -> Option<String> {
    let line = text.lines().nth(line_col(text, offset).0 - 1)?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
    is_name(key).then(|| key.to_string())
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut cut = offset.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let before = &text[..cut];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// Makes `replies` what `canned(…)` reads on this thread until the guard
/// is dropped: the evaluation of one event against one rule set.
pub(super) fn in_use(replies: Arc<Replies>) -> InUse {
    IN_USE.with(|r| *r.borrow_mut() = Some(replies));
    InUse
}

/// While alive, `canned(…)` on this thread reads the replies given to
/// [`in_use`]; dropped, it lets them go (an old table is not kept alive by
/// an idle thread after a reload).
pub(super) struct InUse;

impl Drop for InUse {
    fn drop(&mut self) {
        IN_USE.with(|r| r.borrow_mut().take());
    }
}

/// `canned(name)` and `canned(name, fields)`.
fn canned(
    ctx: &NativeCallContext,
    name: &str,
    fields: Option<&Map>,
) -> Result<ImmutableString, Box<EvalAltResult>> {
    let pos = ctx.call_position();
    if super::LOADING.with(|l| l.borrow().is_some()) {
        // The text would be fixed at load time, and a reworded reply would
        // not reach this rule until the rule itself changed.
        return Err(rt_err(
            format!("canned(...) reads {FILE_NAME} when a handler runs; call it inside a handler (|ev| …), not at the top level of the file"),
            pos,
        ));
    }
    IN_USE.with(|r| {
        let r = r.borrow();
        let none = Replies::default();
        let replies = r.as_deref().unwrap_or(&none);
        let Some(reply) = replies.texts.get(name) else {
            return Err(rt_err(replies.unknown(name), pos));
        };
        Ok(match fields {
            Some(fields) => fill_fields(&reply.text, fields).into(),
            None => reply.text.clone(),
        })
    })
}

/// Fills the `{{key}}` fields `fields` has and leaves the others for
/// `ev.reply`, which fills them from the session.
fn fill_fields(text: &str, fields: &Map) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else {
            break;
        };
        let end = start + 2 + len + 2;
        let name = rest[start + 2..start + 2 + len].trim();
        match fields.get(name) {
            Some(v) => {
                out.push_str(&rest[..start]);
                out.push_str(&v.to_string());
            }
            None => out.push_str(&rest[..end]),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Registers `canned`. Volatile: its result changes with the replies file,
/// so the optimizer must never fold a call into a constant.
pub(super) fn register(engine: &mut Engine) {
    use rhai::FuncRegistration as F;
    F::new("canned")
        .with_params_info(["name: string", "string"])
        .with_comments(["/// The text of the canned reply `name` in the rules directory's replies.toml, for\n/// `ev.reply(canned(\"name\"))` (which fills {{field}} from the session). An unknown name\n/// fails the handler."])
        .with_volatility(true)
        .register_into_engine(engine, |ctx: NativeCallContext, name: &str| {
            canned(&ctx, name, None)
        });
    F::new("canned")
        .with_params_info(["name: string", "fields: map", "string"])
        .with_comments(["/// Like canned(name), with {{key}} filled from `fields` first, for text only the rule knows:\n/// `canned(\"after-hours\", #{ next_open: ev.next_open(\"support\") })`."])
        .with_volatility(true)
        .register_into_engine(engine, |ctx: NativeCallContext, name: &str, fields: Map| {
            canned(&ctx, name, Some(&fields))
        });
}

/// A `canned(…)` call in a rule's compiled code.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Use {
    /// The reply it names, when it names it with a string literal.
    pub name: Option<String>,
    /// The fields it fills (none for `canned(name)`), when they are a map
    /// literal; `None` when they are computed.
    pub fields: Option<Vec<String>>,
    /// 1-based line and column of the call.
    pub line: usize,
    pub column: usize,
}

/// Every `canned(…)` call of a compiled rule, handlers and functions
/// included, in source order. Read from the AST, so comments, strings that
/// merely contain "canned(" and other functions of that name are not
/// counted; a call written as a method (`"x".canned()`) counts as one
/// with a computed name. A rule that defines its own `fn canned` calls
/// that one, so it has none.
pub(crate) fn uses(ast: &AST) -> Vec<Use> {
    let mut out = Vec::new();
    if ast.iter_functions().any(|f| f.name == "canned") {
        return out;
    }
    ast.walk(&mut |path: &[ASTNode]| {
        let Some(ASTNode::Expr(expr)) = path.last() else {
            return true;
        };
        let (call, pos, method) = match expr {
            Expr::FnCall(call, pos) => (call, pos, false),
            Expr::MethodCall(call, pos) => (call, pos, true),
            _ => return true,
        };
        if call.name != "canned" || call.is_operator_call() {
            return true;
        }
        let (name, fields) = if method {
            (None, None)
        } else {
            match call.args.as_slice() {
                [n] => (literal(n), Some(Vec::new())),
                [n, f] => (literal(n), map_keys(f)),
                _ => return true,
            }
        };
        out.push(Use {
            name,
            fields,
            line: pos.line().unwrap_or(1),
            column: pos.position().unwrap_or(1),
        });
        true
    });
    out.sort_by_key(|u| (u.line, u.column));
    out
}

fn literal(e: &Expr) -> Option<String> {
    match e {
        Expr::StringConstant(s, _) => Some(s.to_string()),
        _ => None,
    }
}

/// The keys of a map literal (the optimizer may have made a constant one
/// a `DynamicConstant`).
fn map_keys(e: &Expr) -> Option<Vec<String>> {
    match e {
        Expr::Map(m, _) => Some(m.0.iter().map(|(k, _)| k.name.to_string()).collect()),
        Expr::DynamicConstant(d, _) => d
            .read_lock::<Map>()
            .map(|m| m.keys().map(|k| k.to_string()).collect()),
        _ => None,
    }
}

/// What `skyrules check` finds holding rules and replies together.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    /// Calls naming a reply the file does not have (the rule's file and
    /// the call's position): the rule would fail when it runs.
    pub errors: Vec<RuleError>,
    /// Replies no rule uses, and template fields nothing fills.
    pub warnings: Vec<String>,
    /// Why unused replies are not reported, when that cannot be told.
    pub notes: Vec<String>,
}

/// Holds the `canned("…")` calls of `rules` against `replies`.
///
/// Only a literal name is checked. A name computed at run time
/// (`canned(ev.get("which"))`) may be any reply, so when a rule has one,
/// unused replies are not reported (a note says which call); names it
/// computes are still checked when the handler runs.
pub(crate) fn check(replies: &Replies, rules: &[&Rule]) -> Findings {
    let mut found = Findings::default();
    let mut used: BTreeMap<&str, Vec<&Use>> = BTreeMap::new();
    let all: Vec<(&Rule, Vec<Use>)> = rules.iter().map(|r| (*r, uses(&r.ast))).collect();
    let mut computed = Vec::new();
    for (rule, calls) in &all {
        for u in calls {
            let at = format!("{}:{}:{}", rule.path.display(), u.line, u.column);
            match &u.name {
                Some(name) if replies.texts.contains_key(name) => {
                    used.entry(name.as_str()).or_default().push(u)
                }
                Some(name) => found.errors.push(RuleError {
                    path: rule.path.clone(),
                    line: Some(u.line),
                    column: Some(u.column),
                    message: replies.unknown(name),
                }),
                None => {
                    found.notes.push(format!(
                        "{at}: canned(…) is called with a computed name; unused replies are not reported"
                    ));
                    computed.push(u);
                }
            }
        }
    }
    let file = replies.file.display();
    let blank = crate::api::Session::default();
    // In file order, as a person reads the warnings against the file.
    let mut in_order: Vec<(&String, &Reply)> = replies.texts.iter().collect();
    in_order.sort_by_key(|(_, r)| r.line);
    for (name, reply) in in_order {
        let calls = used.get(name.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        if calls.is_empty() && computed.is_empty() {
            found.warnings.push(format!(
                "{file}:{}: reply {name:?} is not used by any rule",
                reply.line
            ));
        }
        // A field is filled by the session or by the calls' `fields`; when
        // some call's fields are computed, any field may be filled.
        let mut given = BTreeSet::new();
        let mut unknown_given = false;
        for u in calls.iter().chain(&computed) {
            match &u.fields {
                Some(keys) => given.extend(keys.iter().map(String::as_str)),
                None => unknown_given = true,
            }
        }
        if unknown_given {
            continue;
        }
        for field in template_fields(&reply.text) {
            if !given.contains(field) && super::ev::field_text(&blank, field).is_none() {
                found.warnings.push(format!(
                    "{file}:{}: reply {name:?}: template field {{{{{field}}}}} is not a session field and will be left empty",
                    reply.line
                ));
            }
        }
    }
    found
}

/// The names of the `{{field}}`s of a text.
fn template_fields(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else {
            break;
        };
        out.push(rest[start + 2..start + 2 + len].trim());
        rest = &rest[start + 2 + len + 2..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Session;
    use crate::rules::reload::{Reloader, RepliesChange};
    use crate::rules::{Action, EventData, RuleSet, Runtime};
    use crate::tracking::{Event, EventKind};
    use std::collections::HashMap;

    const FILE: &str = "rules/replies.toml";

    fn parse(text: &str) -> Result<Replies, RuleError> {
        Replies::parse(Path::new(FILE), text)
    }

    /// A visitor message from Ahmad, as the rules see it.
    fn message_event() -> Arc<EventData> {
        let session = Session {
            session_id: "s1".into(),
            visitor_name: Some("Ahmad".into()),
            ..Session::default()
        };
        Arc::new(EventData::new(
            Event {
                kind: EventKind::VisitorMessage,
                session_id: "s1".into(),
                message: None,
                timer: None,
                waited: None,
                at: chrono::Utc::now(),
            },
            &session,
            &[],
            chrono::Utc::now(),
        ))
    }

    /// Runs one rule against one visitor message with `replies`.
    fn run(rule: &str, replies: &str) -> crate::rules::RuleRun {
        let rt = Runtime::new();
        let rule = rt
            .load_source(Path::new("rules/greet.rhai"), rule)
            .expect("the rule loads");
        let set = RuleSet {
            rules: vec![rule],
            replies: Arc::new(parse(replies).expect("the replies parse")),
            ..RuleSet::default()
        };
        let mut runs = rt.evaluate(&set, &message_event(), &mut HashMap::new());
        runs.remove(0)
    }

    #[test]
    fn a_canned_reply_is_templated_like_any_reply() {
        let replies = "apology = \"Sorry {{visitor_name}}, we are on it.\"\nafter-hours = \"Back {{next_open}}, {{visitor_name}}.\"\n";
        let r = run(
            r#"on("visitor_message", |ev| ev.reply(canned("apology")));"#,
            replies,
        );
        assert_eq!(
            r.actions,
            [Action::Reply("Sorry Ahmad, we are on it.".into())]
        );
        // Fields only the rule knows first, then the session's.
        let r = run(
            r#"on("visitor_message", |ev| ev.reply(canned("after-hours", #{ next_open: "Monday 09:00" })));"#,
            replies,
        );
        assert_eq!(
            r.actions,
            [Action::Reply("Back Monday 09:00, Ahmad.".into())]
        );
    }

    #[test]
    fn an_unknown_name_fails_the_handler_with_its_position_and_the_names_there_are() {
        let r = run(
            "on(\"visitor_message\", |ev| {\n    ev.reply(canned(\"apolgy\"));\n});",
            "apology = \"Sorry\"\nthanks = \"Thanks\"\n",
        );
        assert!(r.actions.is_empty());
        let e = r.error.expect("the handler fails");
        assert_eq!(
            e.to_string(),
            "rules/greet.rhai:2:14: unknown canned reply \"apolgy\" (rules/replies.toml has: apology, thanks)"
        );
        // No file at all says so.
        let rt = Runtime::new();
        let rule = rt
            .load_source(
                Path::new("rules/greet.rhai"),
                r#"on("visitor_message", |ev| ev.reply(canned("apology")));"#,
            )
            .unwrap();
        let set = RuleSet {
            rules: vec![rule],
            replies: Arc::new(Replies::none(Path::new(FILE))),
            ..RuleSet::default()
        };
        let runs = rt.evaluate(&set, &message_event(), &mut HashMap::new());
        let e = runs[0].error.as_ref().expect("the handler fails");
        assert!(
            e.message.ends_with("(there is no rules/replies.toml)"),
            "{e}"
        );
    }

    #[test]
    fn canned_at_the_top_level_is_a_load_error() {
        // The text would be fixed at load and miss every later edit.
        let e = Runtime::new()
            .load_source(
                Path::new("rules/greet.rhai"),
                "let text = canned(\"apology\");\non(\"visitor_message\", |ev| ev.reply(text));",
            )
            .unwrap_err();
        assert_eq!((e.line, e.column), (Some(1), Some(12)), "{e}");
        assert!(e.message.contains("inside a handler"), "{e}");
    }

    #[test]
    fn a_bad_file_is_an_error_naming_the_file_the_line_and_the_reply() {
        let e = parse("apology = \"Sorry\"\nwait = 5\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "rules/replies.toml:2:8: reply \"wait\" must be a string in quotes, not an integer"
        );
        let e = parse("apology = \"Sorry\"\n[wait]\ntext = \"x\"\n").unwrap_err();
        assert!(e.message.contains("reply \"wait\" must be a string"), "{e}");
        let e = parse("\"sorry!\" = \"Sorry\"\n").unwrap_err();
        assert!(e.message.contains("\"sorry!\" is not a name"), "{e}");
        let e = parse("apology = \"  \"\n").unwrap_err();
        assert!(e.message.contains("reply \"apology\" is empty"), "{e}");
        let e = parse("apology = \"Sorry\"\nthanks = \"unclosed\n").unwrap_err();
        assert_eq!(e.path, Path::new(FILE));
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.ends_with("(reply \"thanks\")"), "{e}");
        let e = parse("apology = \"Sorry\"\napology = \"Again\"\n").unwrap_err();
        assert!(e.message.contains("duplicate"), "{e}");
        let ok = parse("# comment\nwait-2 = 'Still here'\nwait_1 = \"\"\"\nSorry\"\"\"\n").unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok.texts["wait-2"].line, 2);
    }

    #[test]
    fn uses_are_read_from_the_compiled_rule_not_its_text() {
        let rt = Runtime::new();
        let rule = rt
            .load_source(
                Path::new("rules/r.rhai"),
                r#"// canned("in-a-comment")
fn closing(ev) { ev.reply(canned("bye", #{ when: "soon" })); }
on("visitor_message", |ev| {
    ev.reply("canned(\"in-a-string\")");
    ev.reply(canned("hello"));
    ev.reply(canned(ev.message.text));
    closing(ev);
});"#,
            )
            .unwrap();
        let found = uses(&rule.ast);
        let named: Vec<(Option<&str>, usize)> =
            found.iter().map(|u| (u.name.as_deref(), u.line)).collect();
        assert_eq!(named, [(Some("bye"), 2), (Some("hello"), 5), (None, 6)]);
        assert_eq!(found[0].fields.as_deref(), Some(&["when".to_string()][..]));
        assert_eq!(found[1].fields.as_deref(), Some(&[][..]));
        let own = rt
            .load_source(
                Path::new("rules/own.rhai"),
                "fn canned(x) { x }\non(\"visitor_message\", |ev| ev.reply(canned(\"raw text\")));",
            )
            .unwrap();
        assert!(uses(&own.ast).is_empty(), "its own canned is not ours");
    }

    #[test]
    fn check_fails_unknown_names_and_warns_about_unused_replies() {
        let rt = Runtime::new();
        let load = |name: &str, src: &str| rt.load_source(Path::new(name), src).unwrap();
        let a = load(
            "rules/a.rhai",
            "on(\"visitor_message\", |ev| {\n  ev.reply(canned(\"apolgy\"));\n});",
        );
        let b = load(
            "rules/b.rhai",
            r#"on("visitor_message", |ev| ev.reply(canned("thanks")));"#,
        );
        let replies =
            parse("apology = \"Sorry\"\nthanks = \"Thanks {{visitor_nme}}\"\nspare = \"x\"\n")
                .unwrap();
        let found = check(&replies, &[&a, &b]);
        let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            errors,
            ["rules/a.rhai:2:12: unknown canned reply \"apolgy\" (rules/replies.toml has: apology, spare, thanks)"]
        );
        assert_eq!(
            found.warnings,
            [
                "rules/replies.toml:1: reply \"apology\" is not used by any rule",
                "rules/replies.toml:2: reply \"thanks\": template field {{visitor_nme}} is not a session field and will be left empty",
                "rules/replies.toml:3: reply \"spare\" is not used by any rule",
            ]
        );
        assert!(found.notes.is_empty());

        // A computed name may be any reply: no unused warnings, a note.
        let c = load(
            "rules/c.rhai",
            r#"on("visitor_message", |ev| ev.reply(canned(ev.get("which"))));"#,
        );
        let found = check(&replies, &[&b, &c]);
        assert!(found.errors.is_empty());
        assert!(
            found.warnings.iter().all(|w| !w.contains("not used")),
            "{:?}",
            found.warnings
        );
        assert_eq!(found.notes.len(), 1);
        assert!(
            found.notes[0].starts_with("rules/c.rhai:1:"),
            "{:?}",
            found.notes
        );
    }

    /// The reply the published rule set sends to Ahmad.
    fn sent(rt: &Runtime) -> Result<Vec<Action>, String> {
        let set = rt.rules();
        let mut runs = rt.evaluate(&set, &message_event(), &mut HashMap::new());
        let r = runs.remove(0);
        match r.error {
            Some(e) => Err(e.to_string()),
            None => Ok(r.actions),
        }
    }

    #[test]
    fn a_rescan_reloads_the_replies_keeps_them_when_broken_and_drops_them_when_deleted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("greet.rhai"),
            r#"on("visitor_message", |ev| ev.reply(canned("greeting")));"#,
        )
        .unwrap();
        let file = dir.path().join(FILE_NAME);
        std::fs::write(&file, "greeting = \"Hello {{visitor_name}}\"\n").unwrap();
        let rt = Arc::new(Runtime::new());
        let reloader = Reloader::new(rt.clone(), dir.path());
        let report = reloader.rescan().unwrap();
        assert_eq!(report.replies, Some(RepliesChange::Loaded(1)));
        assert_eq!(sent(&rt).unwrap(), [Action::Reply("Hello Ahmad".into())]);
        assert!(reloader.rescan().unwrap().is_empty(), "nothing changed");

        // Reworded: the next event uses the new text; the rule is not reloaded.
        std::fs::write(&file, "greeting = \"Welcome back, {{visitor_name}}\"\n").unwrap();
        let report = reloader.rescan().unwrap();
        assert!(report.loaded.is_empty(), "{report:?}");
        assert_eq!(report.replies, Some(RepliesChange::Loaded(1)));
        assert_eq!(
            sent(&rt).unwrap(),
            [Action::Reply("Welcome back, Ahmad".into())]
        );

        // Broken: reported once, shown in the status, the previous text stays.
        std::fs::write(&file, "greeting = \"unclosed\n").unwrap();
        let report = reloader.rescan().unwrap();
        assert_eq!(report.errors.len(), 1, "{report:?}");
        assert_eq!(report.errors[0].path, file);
        assert_eq!(report.replies, None);
        assert!(reloader.rescan().unwrap().is_empty(), "reported once");
        let status = reloader.status();
        let shown = status
            .iter()
            .find(|s| s.id == FILE_NAME)
            .expect("a status row");
        assert!(shown.running && shown.error.is_some(), "{shown:?}");
        assert_eq!(
            sent(&rt).unwrap(),
            [Action::Reply("Welcome back, Ahmad".into())]
        );

        // Fixed: the row goes.
        std::fs::write(&file, "greeting = \"Hi {{visitor_name}}\"\n").unwrap();
        reloader.rescan().unwrap();
        assert!(reloader.status().iter().all(|s| s.id != FILE_NAME));
        assert_eq!(sent(&rt).unwrap(), [Action::Reply("Hi Ahmad".into())]);

        // Deleted: no replies, and the rule says which file is missing.
        std::fs::remove_file(&file).unwrap();
        let report = reloader.rescan().unwrap();
        assert_eq!(report.replies, Some(RepliesChange::Removed));
        let e = sent(&rt).unwrap_err();
        assert!(
            e.contains("unknown canned reply \"greeting\" (there is no"),
            "{e}"
        );
    }
}
