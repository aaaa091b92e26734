//! `parse_scenarios`: the scenario-file loader of `skyrules test`.
//!
//! Never panics; an error names the file and a line inside the text.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use skyrules::tools::scenario::parse_scenarios;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = parse_scenarios(text, Path::new("fuzz.toml")) {
        assert!(!e.trim().is_empty(), "empty error text");
        let rest = e
            .strip_prefix("fuzz.toml:")
            .unwrap_or_else(|| panic!("the error does not start with the file: {e}"));
        let line: usize = rest
            .split(':')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the error names no line: {e}"));
        let lines = text.split('\n').count();
        assert!(line >= 1 && line <= lines, "line {line} of {lines}: {e}");
    }
});
