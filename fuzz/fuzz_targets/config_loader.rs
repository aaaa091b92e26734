//! `Config::from_text` then `Config::validate`: the config file loader.
//!
//! Never panics; every error names the file; a parse error has a 1-based
//! line and column inside the text and is one line; and when it names a
//! dotted key (`` `engine.poll_interval`: … ``) or a table (`in [guard]: …`)
//! of a file that is valid TOML, that key or table is in the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use skyrules::config::{Config, ConfigError};

/// The value at a dotted path, going into the last table of an array of
/// tables as TOML does. Blanks around a dot are TOML's own (`a . b`).
fn lookup<'a>(doc: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let mut segments = path.split('.').map(str::trim);
    let mut here = doc.get(segments.next()?)?;
    for seg in segments {
        let table = match here {
            toml::Value::Table(t) => t,
            toml::Value::Array(a) => a.last()?.as_table()?,
            _ => return None,
        };
        here = table.get(seg)?;
    }
    Some(here)
}

/// A message naming `` `key` `` or `in [table]` names one that exists.
fn check_named_key(message: &str, doc: &toml::Table) {
    if let Some(rest) = message.strip_prefix('`') {
        let Some((key, _)) = rest.split_once("`: ") else {
            return;
        };
        // Quoted segments cannot be split on dots; leave them be.
        if !key.contains(['"', '\'']) {
            assert!(
                lookup(doc, key).is_some(),
                "names `{key}`, which is not in the file: {message}"
            );
        }
    } else if let Some(rest) = message.strip_prefix("in [") {
        let Some((table, _)) = rest.split_once("]: ") else {
            return;
        };
        if !table.contains(['"', '\'']) {
            assert!(
                lookup(doc, table).is_some_and(|v| v.is_table() || v.is_array()),
                "names [{table}], which is not a table of the file: {message}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    let err = match Config::from_text(text, path) {
        Ok(config) => match config.validate() {
            Ok(()) => return,
            Err(e) => e,
        },
        Err(e) => {
            if let ConfigError::Parse {
                line,
                column,
                message,
                ..
            } = &e
            {
                let lines = text.split('\n').count();
                assert!(*line >= 1 && *line <= lines, "line {line} of {lines}");
                assert!(*column >= 1, "column {column}");
                assert!(!message.trim().is_empty(), "empty parse message");
            }
            let shown = e.to_string();
            assert!(
                !shown.contains('\n'),
                "a parse error spans lines: {shown:?}"
            );
            if let (ConfigError::Parse { message, .. }, Ok(doc)) = (&e, text.parse::<toml::Table>())
            {
                check_named_key(message, &doc);
            }
            e
        }
    };
    let shown = err.to_string();
    if std::env::var_os("FUZZ_SHOW").is_some() {
        eprintln!("error: {shown}");
    }
    assert!(!shown.trim().is_empty(), "empty error text");
    assert!(
        shown.contains("fuzz.toml"),
        "the error does not name the file: {shown}"
    );
});
