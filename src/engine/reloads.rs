//! Rule reloads as the engine reports them: the reloader watches the rules
//! directory and logs; this relays each reload to the status board, the
//! metrics and the engine's observers.

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Note;
use crate::rules::reload::{log_report, ReloadReport, Reloader};
use crate::telemetry::status::{RuleView, SharedBoard};

/// Puts the rules' load status on the board and in the metrics.
pub(super) fn refresh_rules(
    workspace: &Arc<str>,
    board: &SharedBoard,
    reloader: &Reloader,
    report: &ReloadReport,
) {
    let status = reloader.status();
    let running = status.iter().filter(|r| r.running).count();
    crate::telemetry::metrics::reload(workspace, report.errors.is_empty(), running);
    let views = status
        .into_iter()
        .map(|r| {
            crate::telemetry::metrics::rule_mode(workspace, &r.id, r.mode.name());
            RuleView {
                id: r.id,
                running: r.running,
                mode: r.mode.name(),
                error: r.error.map(|e| e.to_string()),
            }
        })
        .collect();
    board.write().unwrap_or_else(|p| p.into_inner()).rules = views;
}

pub(super) async fn watch_rules(
    workspace: Arc<str>,
    reloader: Arc<Reloader>,
    shutdown: CancellationToken,
    notes: broadcast::Sender<Note>,
    board: SharedBoard,
) {
    // The reloader logs; this adapter also tells observers.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let observer = reloader.clone();
    let stop = shutdown.clone();
    let watch =
        tokio::spawn(async move { observer.watch_with(stop, Some(tx)).await }.in_current_span());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = rx.recv() => match r {
                Some(report) => {
                    let report: ReloadReport = report;
                    log_report(&report);
                    refresh_rules(&workspace, &board, &reloader, &report);
                    let _ = notes.send(Note::Reloaded {
                        loaded: report.loaded,
                        removed: report.removed,
                        errors: report.errors.iter().map(|e| e.to_string()).collect(),
                    });
                }
                None => break,
            }
        }
    }
    let _ = watch.await;
}
