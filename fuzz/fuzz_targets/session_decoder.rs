//! `parse_session`: the session-detail body decoder.
//!
//! Never panics; errors say something; messages come oldest first; the
//! session fields read the same as the list decoder reads them; and what
//! it returns survives the encode/decode round trip the state file does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use skyrules::api::client::parse_session;
use skyrules::api::Session;

/// `{"success": true, "data": X}` → X, as the client unwraps it.
fn unwrap_envelope(v: Value) -> Value {
    match v {
        Value::Object(mut o) if o.contains_key("data") && !o.contains_key("session_id") => {
            o.remove("data").unwrap_or(Value::Null)
        }
        other => other,
    }
}

fuzz_target!(|data: &[u8]| {
    let detail = match parse_session(data) {
        Ok(d) => d,
        Err(e) => {
            assert!(!e.is_empty(), "empty error text");
            return;
        }
    };
    assert!(
        detail.messages.windows(2).all(|w| w[0].id <= w[1].id),
        "messages out of order: {:?}",
        detail.messages
    );

    // The same object read as a list item gives the same session.
    let v: Value = serde_json::from_slice(data).expect("a decoded body is JSON");
    let as_item = serde_json::from_value::<Session>(unwrap_envelope(v));
    match as_item {
        Ok(s) => assert_eq!(
            s, detail.session,
            "detail and list read the session differently"
        ),
        Err(e) => panic!("the detail decodes but its session does not: {e}"),
    }

    // Encode, decode, encode: the second encoding is the first.
    let once = serde_json::to_vec(&detail).expect("a detail encodes");
    let back = parse_session(&once).expect("an encoded detail decodes");
    let twice = serde_json::to_vec(&back).expect("encodes again");
    assert_eq!(
        String::from_utf8_lossy(&once),
        String::from_utf8_lossy(&twice),
        "a session detail does not survive a round trip"
    );
});
