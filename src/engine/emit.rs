//! Each thing the engine reports, reported once, everywhere it must go: the
//! log, the metrics, the status board and the engine's observers
//! ([`Note`]s), in the manner of Vector's `internal_events` — one struct per
//! occurrence whose `emit` does all of it, so no call site can report an
//! outcome to three of the four places.

use super::{Engine, Note};
use crate::executor::Outcome;
use crate::rules::{Action, RuleError};
use crate::telemetry::status::ActionView;
use crate::tracking::{Event, EventKind};

/// An action a rule asked for, and how it went.
pub(super) struct ActionFinished<'a> {
    pub rule: &'a str,
    pub session_id: &'a str,
    pub event: EventKind,
    pub action: &'a Action,
    pub outcome: &'a Outcome,
    /// The handler that asked for it, `file:line:column`, when known.
    pub origin: Option<&'a str>,
}

impl ActionFinished<'_> {
    pub(super) fn emit(self, engine: &Engine) {
        let ActionFinished {
            rule,
            session_id,
            event,
            action,
            outcome,
            origin,
        } = self;
        let (event_name, name) = (event.name(), action.name());
        match outcome {
            Outcome::Taken => {
                tracing::info!(
                    rule,
                    session_id,
                    event = event_name,
                    action = name,
                    "action taken"
                )
            }
            Outcome::DryRun => tracing::info!(
                rule,
                session_id,
                event = event_name,
                action = name,
                text = action.text().as_deref().unwrap_or(""),
                "dry run: would take action"
            ),
            Outcome::Skipped(why) => {
                tracing::warn!(rule, session_id, event = event_name, action = name, reason = %why, "action skipped")
            }
            Outcome::Capped(why) => {
                tracing::warn!(rule, session_id, event = event_name, action = name, reason = %why, "reply dropped")
            }
            Outcome::Failed(why) => {
                tracing::error!(rule, session_id, event = event_name, action = name, error = %why, "action failed")
            }
        }
        crate::telemetry::metrics::action(engine.api.workspace(), rule, name, outcome.name());
        engine
            .board
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push_action(ActionView {
                at: engine.api.clock().now(),
                rule: rule.to_string(),
                session_id: session_id.to_string(),
                event: event_name.to_string(),
                action: name.to_string(),
                outcome: outcome.name().to_string(),
                detail: outcome.detail().map(str::to_string),
            });
        let _ = engine.notes.send(Note::Action {
            rule: rule.to_string(),
            session_id: session_id.to_string(),
            event,
            action: action.clone(),
            outcome: outcome.clone(),
            origin: origin.map(str::to_string),
        });
    }
}

/// A handler that failed; the other rules and sessions carried on.
pub(super) struct HandlerFailed<'a> {
    pub rule: &'a str,
    pub session_id: &'a str,
    pub event: EventKind,
    pub error: &'a RuleError,
}

impl HandlerFailed<'_> {
    pub(super) fn emit(self, engine: &Engine) {
        let HandlerFailed {
            rule,
            session_id,
            event,
            error,
        } = self;
        crate::telemetry::metrics::handler_run(engine.api.workspace(), rule, true);
        tracing::error!(rule, session_id, event = event.name(), error = %error, "rule handler failed; other rules carry on");
        let _ = engine.notes.send(Note::RuleFailed {
            rule: rule.to_string(),
            session_id: session_id.to_string(),
            event,
            error: error.to_string(),
        });
    }
}

/// An event about to go to the rules.
pub(super) struct EventDispatched<'a> {
    pub event: &'a Event,
    pub visitor: Option<&'a str>,
}

impl EventDispatched<'_> {
    pub(super) fn emit(self, engine: &Engine) {
        let EventDispatched { event, visitor } = self;
        let text = event.message.as_ref().map(|m| m.text());
        crate::telemetry::metrics::event(engine.api.workspace(), event.kind.name());
        // Message texts are personal data: debug level only (SPEC §6).
        tracing::debug!(session_id = %event.session_id, event = %event.kind, text = ?text, "event");
        let _ = engine.notes.send(Note::Event {
            session_id: event.session_id.clone(),
            kind: event.kind,
            text: text.map(str::to_string),
            visitor: visitor.map(str::to_string),
        });
    }
}
