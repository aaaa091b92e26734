//! A session's SLA facts (first response, human waits, agent answers),
//! updated as its messages are seen: what `skyrules sla` and the SLA
//! histograms read. Does not own the report (`crate::report`).

use serde::{Deserialize, Serialize};

use crate::api::{Message, SenderType, Timestamp};

/// A session's SLA facts, updated as its messages are seen.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SlaState {
    /// When the visitor first wrote.
    pub first_visitor_at: Option<Timestamp>,
    /// Seconds from then to the first bot or agent reply.
    pub first_response_secs: Option<f64>,
    /// Seconds from each human request to its take-over.
    pub human_wait_secs: Vec<f64>,
    /// Seconds a human agent took to answer each visitor message (the
    /// oldest unanswered one) while handling the chat.
    pub agent_response_secs: Vec<f64>,
    /// The oldest visitor message not answered yet.
    pub waiting_since: Option<Timestamp>,
}

impl SlaState {
    /// Updates the facts with one new message; `human` says whether a
    /// human handled the chat when it was written.
    pub(super) fn observe(&mut self, m: &Message, human: bool) {
        let Some(at) = m.created_at else { return };
        match m.sender_type {
            SenderType::Visitor => {
                self.first_visitor_at.get_or_insert(at);
                self.waiting_since.get_or_insert(at);
            }
            SenderType::Bot | SenderType::Agent => {
                if let (Some(first), None) = (self.first_visitor_at, self.first_response_secs) {
                    if at >= first {
                        self.first_response_secs = Some(secs(at - first));
                    }
                }
                if let Some(since) = self.waiting_since.take() {
                    if human && m.sender_type == SenderType::Agent && at >= since {
                        self.agent_response_secs.push(secs(at - since));
                    }
                }
            }
            SenderType::Other(_) => {}
        }
    }
}

pub(super) fn secs(d: chrono::Duration) -> f64 {
    d.num_milliseconds().max(0) as f64 / 1000.0
}
