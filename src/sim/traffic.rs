//! The seeded visitor generator: when the next visitor arrives and who they
//! are — name, contact details, landing page — and the script they follow
//! (what they write, when, and whether they ask for a human, go quiet or
//! leave). Every random choice for a visitor is made at arrival from one
//! seeded rng, so the same seed yields the same sequence of visitors whatever
//! the timing. The world turns the script into scheduled events.

use chrono::TimeDelta;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::api::types::{HandledBy, Session, SessionStatus, Timestamp};

/// Most generated sessions that may be open at once; arrivals beyond it are
/// turned away so a long run does not grow without bound.
pub(crate) const MAX_ACTIVE_GENERATED: usize = 200;

/// Settings of the traffic generator.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficConfig {
    /// New visitors per simulated minute (a Poisson process).
    pub rate_per_min: f64,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        TrafficConfig { rate_per_min: 6.0 }
    }
}

/// One thing a generated visitor does.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Writes a message.
    Say(String),
    /// Presses the widget's "talk to a human" button.
    RequestHuman,
    /// Closes the widget; the session ends.
    Leave,
}

/// A generated visitor: their new session and their script, each step at an
/// offset from the arrival time.
#[derive(Debug, Clone)]
pub struct Visitor {
    /// The session as it opens (status active, handled by the AI).
    pub session: Session,
    /// What the visitor will do, in order, with offsets from arrival.
    pub steps: Vec<(TimeDelta, Step)>,
}

/// The generator's state: its rng and arrival rate.
#[derive(Debug)]
pub(crate) struct Traffic {
    rng: StdRng,
    rate_per_min: f64,
}

const FIRST_NAMES: &[&str] = &[
    "Ahmad", "Sara", "Liam", "Olivia", "Noah", "Emma", "Mateo", "Aisha", "Yuki", "Chen", "Priya",
    "Lucas", "Fatima", "Omar", "Sofia", "Jonas", "Ines", "Kwame", "Elena", "Diego", "Hana",
    "Marco", "Leila", "Tomás", "Anya", "Ravi", "Grace", "Felix", "Nadia", "Ben",
];

const LAST_NAMES: &[&str] = &[
    "Haddad",
    "Smith",
    "Garcia",
    "Nguyen",
    "Müller",
    "Rossi",
    "Kowalski",
    "Okafor",
    "Tanaka",
    "Silva",
    "Johansson",
    "Dubois",
    "Patel",
    "Kim",
    "Novak",
    "Ali",
    "Costa",
    "Walsh",
];

const DOMAINS: &[&str] = &[
    "example.com",
    "mail.example.org",
    "inbox.example.net",
    "corp.example.com",
];

const PAGES: &[&str] = &[
    "https://yoursite.com/",
    "https://yoursite.com/pricing",
    "https://yoursite.com/checkout",
    "https://yoursite.com/account/billing",
    "https://yoursite.com/help/shipping",
    "https://yoursite.com/products/pro-plan",
    "https://yoursite.com/orders",
];

const REFERRERS: &[&str] = &[
    "https://google.com",
    "https://bing.com",
    "https://twitter.com",
    "https://newsletter.example.com",
];

const QUESTIONS: &[&str] = &[
    "Hello! I'd like to know about pricing.",
    "How much does the Pro plan cost?",
    "Do you offer a discount for annual billing?",
    "I want a refund for my order",
    "My order #4821 arrived damaged, can I get my money back?",
    "how do I cancel my subscription",
    "Can I cancel my plan and keep my data?",
    "this is a complaint: I was charged twice this month",
    "Where is my package? It's been a week.",
    "Do you ship to Canada?",
    "How do I reset my password?",
    "Is there an API I can use?",
    "Can I change the email on my account?",
    "The checkout page keeps failing with an error",
];

const HUMAN_LINES: &[&str] = &[
    "can I talk to a human?",
    "I'd like to speak to a real person please",
    "Please connect me with an agent",
];

const THANKS_LINES: &[&str] = &[
    "Thanks, that's all I needed.",
    "ok thank you",
    "Great, thanks!",
];

/// How a generated visitor's chat goes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    AskHuman,
    Quiet,
    Leave,
    Finish,
}

impl Traffic {
    /// A generator for `config`, reproducible from `seed`.
    pub fn new(config: &TrafficConfig, seed: u64) -> Self {
        Traffic {
            rng: StdRng::seed_from_u64(seed ^ 0x7452_4146_4649_4321),
            rate_per_min: config.rate_per_min,
        }
    }

    /// Simulated time until the next arrival; `None` when the rate is zero.
    pub(crate) fn next_gap(&mut self) -> Option<TimeDelta> {
        if !(self.rate_per_min.is_finite() && self.rate_per_min > 0.0) {
            return None;
        }
        // Exponential inter-arrival times; u in (0, 1] keeps ln finite.
        let u: f64 = 1.0 - self.rng.random::<f64>();
        let secs = (-u.ln() / (self.rate_per_min / 60.0)).min(86_400.0 * 365.0);
        Some(TimeDelta::microseconds((secs * 1e6) as i64).max(TimeDelta::microseconds(1)))
    }

    /// A fresh session id `sess_` + 12 lowercase hex digits.
    pub fn session_id(rng: &mut StdRng) -> String {
        format!("sess_{:012x}", rng.random::<u64>() & 0xffff_ffff_ffff)
    }

    /// The visitor arriving at `at`: their session and script.
    ///
    /// Long on purpose: one visitor's whole script (what they write, when they ask for a human, when they leave) reads best as one story.
    pub fn visitor(&mut self, at: Timestamp) -> Visitor {
        let rng = &mut self.rng;
        let session_id = Self::session_id(rng);
        let first = pick(rng, FIRST_NAMES);
        let last = pick(rng, LAST_NAMES);
        let named = rng.random_bool(0.8);
        let with_email = rng.random_bool(0.75);
        let with_phone = rng.random_bool(0.25);
        let email_n: u32 = rng.random_range(1..100);
        let domain = pick(rng, DOMAINS);
        let phone_n: u32 = rng.random_range(100..10_000);
        let ip: [u8; 4] = [
            rng.random_range(1..224),
            rng.random(),
            rng.random(),
            rng.random_range(1..255),
        ];
        let page = pick(rng, PAGES);
        let referrer = rng.random_bool(0.5).then(|| pick(rng, REFERRERS));

        let ascii_last: String = last
            .chars()
            .map(|c| if c == 'ü' { 'u' } else { c })
            .collect();
        let session = Session {
            session_id,
            status: SessionStatus::Active,
            handled_by: HandledBy::Ai,
            visitor_name: named.then(|| first.to_string()),
            visitor_email: with_email.then(|| {
                format!("{}.{}{email_n}@{domain}", first, ascii_last)
                    .to_lowercase()
                    .replace('á', "a")
            }),
            visitor_phone: with_phone.then(|| format!("+1-555-01{:02}", phone_n % 100)),
            visitor_ip: Some(format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3])),
            visitor_page_url: Some(page.to_string()),
            visitor_referrer: referrer.map(str::to_string),
            has_visitor_messages: false,
            human_requested_at: None,
            human_took_over_at: None,
            last_activity_at: Some(at),
            created_at: Some(at),
        };

        let roll: f64 = rng.random();
        let outcome = if roll < 0.25 {
            Outcome::AskHuman
        } else if roll < 0.55 {
            Outcome::Quiet
        } else if roll < 0.80 {
            Outcome::Leave
        } else {
            Outcome::Finish
        };
        let planned: usize = rng.random_range(1..=4);
        let by_button = rng.random_bool(0.5);

        let mut lines: Vec<String> = (0..planned)
            .map(|_| pick(rng, QUESTIONS).to_string())
            .collect();
        match outcome {
            Outcome::AskHuman if !by_button => {
                if let Some(last) = lines.last_mut() {
                    *last = pick(rng, HUMAN_LINES).to_string();
                }
            }
            Outcome::Quiet => {
                // Writes part of what they meant to, then stops answering.
                let keep = rng.random_range(1..=planned);
                lines.truncate(keep);
            }
            Outcome::Finish => lines.push(pick(rng, THANKS_LINES).to_string()),
            _ => {}
        }

        let mut steps = Vec::with_capacity(lines.len() + 1);
        let mut offset = rng.random_range(3.0..20.0);
        for (i, line) in lines.into_iter().enumerate() {
            if i > 0 {
                offset += rng.random_range(10.0..60.0);
            }
            steps.push((secs(offset), Step::Say(line)));
        }
        match outcome {
            Outcome::AskHuman if by_button => {
                offset += rng.random_range(5.0..20.0);
                steps.push((secs(offset), Step::RequestHuman));
            }
            Outcome::Leave => {
                offset += rng.random_range(30.0..120.0);
                steps.push((secs(offset), Step::Leave));
            }
            _ => {}
        }
        Visitor { session, steps }
    }
}

fn pick<'a>(rng: &mut StdRng, from: &[&'a str]) -> &'a str {
    from[rng.random_range(0..from.len())]
}

fn secs(s: f64) -> TimeDelta {
    TimeDelta::microseconds((s * 1e6) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn same_seed_same_visitors() {
        let cfg = TrafficConfig { rate_per_min: 10.0 };
        let (mut a, mut b) = (Traffic::new(&cfg, 1), Traffic::new(&cfg, 1));
        let at = Utc::now();
        for _ in 0..50 {
            assert_eq!(a.next_gap(), b.next_gap());
            let (va, vb) = (a.visitor(at), b.visitor(at));
            assert_eq!(va.session, vb.session);
            assert_eq!(va.steps, vb.steps);
            assert!(va.session.session_id.len() == 17);
        }
    }

    #[test]
    fn scripts_are_plausible() {
        let mut t = Traffic::new(&TrafficConfig { rate_per_min: 1.0 }, 9);
        let at = Utc::now();
        let (mut leave, mut human, mut anonymous) = (0, 0, 0);
        for _ in 0..400 {
            let v = t.visitor(at);
            anonymous += usize::from(v.session.visitor_name.is_none());
            assert!(!v.steps.is_empty() && v.steps.len() <= 5);
            assert!(v.steps.windows(2).all(|w| w[0].0 < w[1].0));
            leave += usize::from(v.steps.iter().any(|s| s.1 == Step::Leave));
            human += usize::from(v.steps.iter().any(|s| match &s.1 {
                Step::RequestHuman => true,
                Step::Say(t) => crate::sim::bot::asks_for_human(t),
                Step::Leave => false,
            }));
        }
        assert!((60..=140).contains(&leave), "{leave}");
        assert!((60..=140).contains(&human), "{human}");
        assert!((40..=130).contains(&anonymous), "{anonymous}");
    }
}
