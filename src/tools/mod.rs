//! The tools around the engine, each a command of its own: the narrated
//! demo, `skyrules test` (scenarios), `skyrules replay`, `skyrules bench`,
//! and what they share — the stepped [`harness`], the embedded rules and
//! private scratch directories. The engine does not depend on any of them.

pub mod bench;
pub mod demo;
pub mod embedded_rules;
pub(crate) mod harness;
pub mod replay;
pub mod scenario;
pub(crate) mod scratch;
