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
use skyrules::api::client::{parse_page, parse_page_value};
use skyrules::api::Session;

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
            let want = parse_page_value(v);
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
