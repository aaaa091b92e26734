//! The simulated AI bot's voice: which canned reply it gives to a visitor's
//! message. Pure functions over a seeded rng; *when* a reply is delivered (and
//! whether it is dropped) is the world's business, not this module's.

use rand::rngs::StdRng;
use rand::Rng;

/// What the bot says when the visitor asks for a person.
pub const HANDOFF_REPLY: &str = "Let me connect you with a human agent.";

/// Replies that show the bot did not cope; rule authors escalate on these.
const FAILURE_REPLIES: &[&str] = &[
    "Sorry, I don't know the answer to that.",
    "I'm sorry, I'm not sure I understand.",
    "I'm not able to help with that, unfortunately.",
];

const PRICING_REPLIES: &[&str] = &[
    "Hi! Our pricing starts at $29/month. Would you like to know more?",
    "We have three plans: Starter ($29/month), Growth ($79/month) and Business ($199/month).",
];

const REFUND_REPLIES: &[&str] = &[
    "I can help with refunds. Could you share your order number?",
    "Refunds are processed within 5-7 business days once approved.",
];

const CANCEL_REPLIES: &[&str] = &[
    "You can cancel any time from Settings → Billing → Cancel subscription.",
    "To cancel, open Settings → Billing. Your plan stays active until the end of the period.",
];

const GENERIC_REPLIES: &[&str] = &[
    "Thanks for reaching out! How can I help you today?",
    "Sure — could you tell me a bit more about what you need?",
    "Great question! You can find step-by-step guides in our help center.",
    "Happy to help. Is there anything else you'd like to know?",
    "Orders usually ship within 2 business days.",
];

/// Whether the visitor's text asks for a person ("human", "agent", "person").
pub(crate) fn asks_for_human(text: &str) -> bool {
    text.split(|c: char| !c.is_alphanumeric())
        .map(str::to_lowercase)
        .any(|w| {
            matches!(
                w.as_str(),
                "human" | "humans" | "agent" | "agents" | "person"
            )
        })
}

/// The bot's reply to `visitor_text`, and whether it is a hand-off to a human.
///
/// Consumes the rng the same way for every input so that a seeded run is
/// reproducible regardless of what the visitors wrote.
pub fn reply(rng: &mut StdRng, visitor_text: &str) -> (String, bool) {
    let failure = rng.random_ratio(1, 6);
    let pick: usize = rng.random_range(0..1000);
    if asks_for_human(visitor_text) {
        return (HANDOFF_REPLY.to_string(), true);
    }
    let text = visitor_text.to_lowercase();
    let pool: &[&str] = if failure {
        FAILURE_REPLIES
    } else if ["price", "pricing", "cost", "plan", "discount"]
        .iter()
        .any(|w| text.contains(w))
    {
        PRICING_REPLIES
    } else if ["refund", "money back", "chargeback"]
        .iter()
        .any(|w| text.contains(w))
    {
        REFUND_REPLIES
    } else if text.contains("cancel") {
        CANCEL_REPLIES
    } else {
        GENERIC_REPLIES
    };
    (pool[pick % pool.len()].to_string(), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn human_requests_are_words_not_substrings() {
        assert!(asks_for_human("Can I talk to a HUMAN?"));
        assert!(asks_for_human("real person please"));
        assert!(asks_for_human("agent!"));
        assert!(!asks_for_human("my personal account"));
        assert!(!asks_for_human("our agency"));
    }

    #[test]
    fn replies_are_reproducible_and_sometimes_fail() {
        let mut a = StdRng::seed_from_u64(7);
        let mut b = StdRng::seed_from_u64(7);
        let mut failures = 0;
        for i in 0..600 {
            let text = format!("question {i}");
            let ra = reply(&mut a, &text);
            assert_eq!(ra, reply(&mut b, &text));
            if FAILURE_REPLIES.contains(&ra.0.as_str()) {
                failures += 1;
            }
        }
        assert!((60..=140).contains(&failures), "{failures} failures of 600");
        let (text, handoff) = reply(&mut a, "can I talk to a human?");
        assert_eq!(text, HANDOFF_REPLY);
        assert!(handoff);
    }
}
