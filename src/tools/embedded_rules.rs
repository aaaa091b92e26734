//! The shipped rules that need no configuration, and the canned replies
//! they send, compiled into the binary: what the demo runs without a
//! `rules/` directory, and what the benchmark and the tests use as "the
//! shipped rules".

use std::path::Path;

/// The shipped rules that need no configuration (no calendar, no channel),
/// built into the binary: what the demo runs without a `rules/` directory,
/// and what benchmarks and tests use as "the shipped rules".
pub const RULES: &[(&str, &str)] = &[
    (
        "close-idle-ai-chats.rhai",
        include_str!("../../rules/close-idle-ai-chats.rhai"),
    ),
    (
        "escalate-failing-bot.rhai",
        include_str!("../../rules/escalate-failing-bot.rhai"),
    ),
    (
        "escalate-on-keywords.rhai",
        include_str!("../../rules/escalate-on-keywords.rhai"),
    ),
    (
        "escalate-on-request.rhai",
        include_str!("../../rules/escalate-on-request.rhai"),
    ),
    (
        "release-silent-agent.rhai",
        include_str!("../../rules/release-silent-agent.rhai"),
    ),
    (
        "sla-human-wait.rhai",
        include_str!("../../rules/sla-human-wait.rhai"),
    ),
];

/// The shipped `replies.toml`, the texts [`RULES`] send with `canned(…)`.
/// Whole: it also holds the replies of the shipped rules that need
/// configuration, which the embedded rules do not use.
const REPLIES: &str = include_str!("../../rules/replies.toml");

/// Writes [`RULES`] and the replies file into `dir`, creating it.
pub fn write(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in RULES {
        std::fs::write(dir.join(name), text)?;
    }
    std::fs::write(dir.join("replies.toml"), REPLIES)?;
    Ok(())
}
