//! Escaping text for hand-built HTML and XML output (the status page, JUnit
//! files): the one place that decides which characters are special and
//! which cannot appear at all. The SLA report is templated with maud, which
//! escapes on its own.

/// Escapes text for element content and quoted attribute values.
pub fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes text for XML 1.0 content and quoted attributes, and drops the
/// characters XML 1.0 forbids even as references (control characters other
/// than tab, newline and carriage return; U+FFFE and U+FFFF), which a rule
/// name or a reply can carry and which make a strict parser reject the
/// whole document.
pub fn xml(s: &str) -> String {
    html(&s.replace(|c: char| !allowed_in_xml(c), ""))
}

fn allowed_in_xml(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_special_character_is_escaped() {
        assert_eq!(
            super::html(r#"<a href="x">Tom & Jerry's</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; Jerry&#39;s&lt;/a&gt;"
        );
    }

    #[test]
    fn xml_drops_what_xml_forbids_and_keeps_the_rest() {
        assert_eq!(
            super::xml("a\u{0}b\u{1b}[31mc\u{b}\u{c}\u{fffe}\u{ffff}d\te\nf\r<&>"),
            "ab[31mcd\te\nf\r&lt;&amp;&gt;"
        );
        assert_eq!(super::xml("Grüße 👋 \u{fffd}"), "Grüße 👋 \u{fffd}");
    }
}
