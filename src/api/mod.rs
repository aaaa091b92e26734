//! The SkyLight Web Chat API as the rest of skyrules sees it: typed data
//! (`types`), a client that speaks HTTP with retries and tolerant decoding
//! (`client`), and its error classes (`error`).
//!
//! Nothing here knows about rules, events or state; the watcher and the
//! executor are its only callers inside the engine.

pub(crate) mod budget;
pub mod client;
pub mod error;
pub mod types;

pub(crate) use budget::Lane;
pub use client::{ApiKey, Client, ClientConfig, Page, RetryPolicy};
pub(crate) use client::{DEFAULT_BASE_URL, MAX_MESSAGE_CHARS};
pub use error::{ApiError, Transient};
pub use types::*;
