//! `parse_page`: the session-list body decoder.
//!
//! Never panics; every session it returns has a non-empty `session_id`;
//! whenever the body is JSON a `serde_json::Value` can hold, the page is
//! exactly what decoding through a `Value` gives (the decoder's documented
//! contract, see `pages_decode_from_bytes_exactly_as_through_a_value`); and
//! every session survives the encode/decode round trip the state file does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use skyrules::api::client::parse_page;
use skyrules::api::{Page, Session};

fn page_num(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn next_link(v: Option<&Value>) -> Option<bool> {
    match v {
        None => None,
        Some(Value::String(s)) => Some(!s.is_empty()),
        Some(_) => Some(false),
    }
}

fn sessions(items: Vec<Value>) -> Vec<Session> {
    items
        .into_iter()
        .filter_map(|item| serde_json::from_value::<Session>(item).ok())
        .filter(|s| !s.session_id.is_empty())
        .collect()
}

/// The reference decoder: body → `Value` → page.
fn page_via_value(v: Value) -> Result<Page, String> {
    match v {
        Value::Array(items) => Ok(Page {
            sessions: sessions(items),
            ..Page::default()
        }),
        Value::Object(mut o) => match o.remove("data") {
            Some(Value::Array(items)) => {
                let meta = o.get("meta");
                Ok(Page {
                    sessions: sessions(items),
                    current_page: page_num(meta.and_then(|m| m.get("current_page")))
                        .or_else(|| page_num(o.get("current_page"))),
                    last_page: page_num(meta.and_then(|m| m.get("last_page")))
                        .or_else(|| page_num(o.get("last_page"))),
                    has_next: next_link(o.get("links").and_then(|l| l.get("next")))
                        .or_else(|| next_link(o.get("next_page_url"))),
                })
            }
            Some(Value::Object(mut p)) => match p.remove("data") {
                Some(Value::Array(items)) => Ok(Page {
                    sessions: sessions(items),
                    current_page: page_num(p.get("current_page")),
                    last_page: page_num(p.get("last_page")),
                    has_next: next_link(p.get("next_page_url")),
                }),
                _ => Err("`data` is an object without a `data` list of sessions".into()),
            },
            Some(Value::Null) | None => Err("the response has no `data` list of sessions".into()),
            Some(_) => Err("`data` is neither a list nor a paginator".into()),
        },
        _ => Err("the response is neither a list nor an object".into()),
    }
}

fuzz_target!(|data: &[u8]| {
    let got = parse_page(data);
    match &got {
        Ok(page) => {
            for s in &page.sessions {
                assert!(!s.session_id.is_empty(), "empty session_id in {page:?}");
                // What the state file keeps must read back as the same thing.
                let once = serde_json::to_value(s).expect("a session encodes");
                let back: Session = serde_json::from_value(once.clone()).expect("re-decodes");
                let twice = serde_json::to_value(&back).expect("encodes again");
                assert_eq!(once, twice, "a session does not survive a round trip");
            }
        }
        Err(e) => assert!(!e.is_empty(), "empty error text"),
    }

    let value = if data.iter().all(u8::is_ascii_whitespace) {
        Ok(Value::Null)
    } else {
        serde_json::from_slice::<Value>(data)
    };
    match value {
        Ok(v) => {
            let want = page_via_value(v);
            assert_eq!(
                format!("{got:?}"),
                format!("{want:?}"),
                "the byte decoder and the Value decoder disagree"
            );
        }
        // Not JSON a Value can hold (or not JSON at all): the byte decoder
        // may still read it (a number beyond f64 where nothing reads it),
        // but a body that is not JSON must fail.
        Err(_) => {
            if got.is_ok() {
                assert!(
                    serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok(),
                    "a body that is not JSON decoded as {got:?}"
                );
            }
        }
    }
});
