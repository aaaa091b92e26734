//! Hot reload of the rules directory.
//!
//! Owns: watching the directory (not single files: editors save by writing
//! a new file and renaming it over the old one), debouncing, and rescanning.
//! A rescan recompiles only files whose content changed, keeps the previous
//! version of a file that no longer compiles, drops deleted files, and
//! publishes the new rule set in one step. The canned replies
//! (`replies.toml`) are read by the same rescan and published in the same
//! step; a replies file that stops parsing keeps the previous replies, as
//! a rule file that stops compiling keeps its previous version. A slow
//! periodic rescan backs up the watcher, for file systems where
//! notifications do not arrive.
//!
//! A Kubernetes ConfigMap mounted as the rules directory is followed too:
//! its `NAME.rhai` entries are symlinks through `..data`, which an update
//! swaps to a new timestamped directory without touching them (see
//! [`is_atomic_writer_entry`]).

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::replies::{self, Replies};
use super::{is_rule_file, rule_files, RuleError, RuleSet, Runtime};

/// Time between periodic rescans when no notification arrives.
const FALLBACK_RESCAN: Duration = Duration::from_secs(2);
/// Quiet time the debouncer waits for before reporting changes.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// The load status of one rule file, for logs and the status page.
#[derive(Debug, Clone, PartialEq)]
pub struct FileStatus {
    /// Rule id.
    pub id: String,
    /// Whether a version of the rule is running.
    pub running: bool,
    /// The running version's mode (live when none runs).
    pub mode: super::RuleMode,
    /// The latest load error, if the file on disk does not compile.
    pub error: Option<RuleError>,
}

/// What a rescan changed.
#[derive(Debug, Default, PartialEq)]
pub struct ReloadReport {
    /// Rules (re)loaded.
    pub loaded: Vec<String>,
    /// Rules removed because their file was deleted.
    pub removed: Vec<String>,
    /// Files that failed to load (their previous version, if any, stays);
    /// the replies file among them when it does not parse.
    pub errors: Vec<RuleError>,
    /// The canned replies now in use, when the replies file changed.
    pub replies: Option<RepliesChange>,
}

/// What became of the canned replies in a rescan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepliesChange {
    /// `replies.toml` was (re)read; this many replies are in use.
    Loaded(usize),
    /// `replies.toml` was deleted: there are no canned replies.
    Removed,
}

impl ReloadReport {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.loaded.is_empty()
            && self.removed.is_empty()
            && self.errors.is_empty()
            && self.replies.is_none()
    }
}

struct Known {
    hash: u64,
    error: Option<RuleError>,
}

/// Loads a rules directory into a [`Runtime`] and keeps it current.
pub struct Reloader {
    runtime: Arc<Runtime>,
    dir: PathBuf,
    known: Mutex<HashMap<PathBuf, Known>>,
    /// The replies file as last read; `None` while there is none. Locked
    /// after `known`.
    replies: Mutex<Option<Known>>,
}

impl Reloader {
    /// A reloader for `dir`; nothing is loaded until [`Reloader::rescan`].
    pub fn new(runtime: Arc<Runtime>, dir: impl Into<PathBuf>) -> Reloader {
        Reloader {
            runtime,
            dir: dir.into(),
            known: Mutex::new(HashMap::new()),
            replies: Mutex::new(None),
        }
    }

    /// The directory watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every rule file's status, by id.
    pub fn status(&self) -> Vec<FileStatus> {
        let set = self.runtime.rules();
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: BTreeMap<String, FileStatus> = BTreeMap::new();
        for r in &set.rules {
            out.insert(
                r.id.clone(),
                FileStatus {
                    id: r.id.clone(),
                    running: true,
                    mode: r.mode,
                    error: None,
                },
            );
        }
        for (path, k) in known.iter() {
            let id = super::rule_id(path);
            let entry = out.entry(id.clone()).or_insert(FileStatus {
                id,
                running: false,
                mode: super::RuleMode::Live,
                error: None,
            });
            entry.error = k.error.clone();
        }
        drop(known);
        // A replies file shows only while it has an error, as a rule file
        // does: "running" when replies from before are still in use. Not
        // while no rule runs, so that the replies alone never make the
        // engine look ready.
        let replies = self.replies.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(Known { error: Some(e), .. }) = &*replies {
            out.insert(
                replies::FILE_NAME.to_string(),
                FileStatus {
                    id: replies::FILE_NAME.to_string(),
                    running: set.replies.exists() && !set.rules.is_empty(),
                    mode: super::RuleMode::Live,
                    error: Some(e.clone()),
                },
            );
        }
        out.into_values().collect()
    }

    /// Re-reads the directory and publishes what changed. Blocking (file
    /// reads, compilation): call it from a blocking thread.
    pub(crate) fn rescan(&self) -> Result<ReloadReport, RuleError> {
        let files = rule_files(&self.dir)?;
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let mut set: RuleSet = (*self.runtime.rules()).clone();
        let mut report = ReloadReport::default();
        self.rescan_replies(&mut set, &mut report);
        for path in &files {
            let Ok(source) = std::fs::read_to_string(path) else {
                // Vanished between listing and reading: the next rescan sees it.
                continue;
            };
            let hash = hash(&source);
            if known.get(path).is_some_and(|k| k.hash == hash) {
                continue;
            }
            match self.runtime.load_source(path, &source) {
                Ok(rule) => {
                    report.loaded.push(rule.id.clone());
                    set.upsert(rule);
                    known.insert(path.clone(), Known { hash, error: None });
                }
                Err(e) => {
                    report.errors.push(e.clone());
                    known.insert(
                        path.clone(),
                        Known {
                            hash,
                            error: Some(e),
                        },
                    );
                }
            }
        }
        let gone: Vec<PathBuf> = known
            .keys()
            .filter(|p| !files.contains(p))
            .cloned()
            .collect();
        for path in gone {
            known.remove(&path);
            let id = super::rule_id(&path);
            if set.remove(&id) {
                report.removed.push(id);
            }
        }
        if !report.loaded.is_empty() || !report.removed.is_empty() || report.replies.is_some() {
            self.runtime.publish(set);
        }
        Ok(report)
    }

    /// Re-reads the replies file into `set` if it changed. One that does
    /// not parse (or cannot be read) is reported once per content and the
    /// previous replies stay; a deleted one leaves no replies.
    fn rescan_replies(&self, set: &mut RuleSet, report: &mut ReloadReport) {
        let path = replies::path_in(&self.dir);
        let mut known = self.replies.lock().unwrap_or_else(|p| p.into_inner());
        let text = match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if known.take().is_some() {
                    set.replies = Arc::new(Replies::none(&path));
                    report.replies = Some(RepliesChange::Removed);
                }
                return;
            }
            read => read,
        };
        // A failure to read is hashed like content, so that the same
        // failure is reported once, not at every rescan.
        let hash = match &text {
            Ok(t) => hash(t),
            Err(e) => hash(&e.to_string()),
        };
        if known.as_ref().is_some_and(|k| k.hash == hash) {
            return;
        }
        let parsed = text
            .map_err(|e| replies::unreadable(&path, &e))
            .and_then(|t| Replies::parse(&path, &t));
        match parsed {
            Ok(r) => {
                report.replies = Some(RepliesChange::Loaded(r.len()));
                set.replies = Arc::new(r);
                *known = Some(Known { hash, error: None });
            }
            Err(e) => {
                report.errors.push(e.clone());
                *known = Some(Known {
                    hash,
                    error: Some(e),
                });
            }
        }
    }

    /// Watches the directory until `shutdown`, rescanning on every change
    /// and every few seconds regardless. Never returns early on errors: a
    /// broken watcher is recreated and the periodic rescan carries on.
    /// Non-empty reports go to `reports` when given (the caller logs them),
    /// else they are logged here.
    pub(crate) async fn watch_with(
        self: Arc<Self>,
        shutdown: CancellationToken,
        reports: Option<tokio::sync::mpsc::UnboundedSender<ReloadReport>>,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut watcher = start_watcher(&self.dir, tx.clone());
        let mut tick = tokio::time::interval(FALLBACK_RESCAN);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(()) = rx.recv() => {
                    // Coalesce a burst of notifications into one rescan.
                    while rx.try_recv().is_ok() {}
                }
                _ = tick.tick() => {
                    if watcher.is_none() {
                        watcher = start_watcher(&self.dir, tx.clone());
                    }
                }
            }
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.rescan()).await {
                Ok(Ok(report)) if report.is_empty() => {}
                Ok(Ok(report)) => match &reports {
                    Some(tx) => {
                        let _ = tx.send(report);
                    }
                    None => log_report(&report),
                },
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot rescan the rules directory; the loaded rules keep running")
                }
                Err(e) => {
                    tracing::error!(error = %e, "rule reload task failed; the loaded rules keep running")
                }
            }
        }
        drop(watcher);
    }
}

/// Logs what a rescan did, one line per change.
pub(crate) fn log_report(report: &ReloadReport) {
    for id in &report.loaded {
        tracing::info!(rule = %id, "rule loaded");
    }
    for id in &report.removed {
        tracing::info!(rule = %id, "rule removed (file deleted)");
    }
    match report.replies {
        Some(RepliesChange::Loaded(n)) => tracing::info!(replies = n, "canned replies loaded"),
        Some(RepliesChange::Removed) => {
            tracing::info!("canned replies removed (file deleted); rules calling canned() fail")
        }
        None => {}
    }
    for e in &report.errors {
        if replies::is_replies_file(&e.path) {
            tracing::error!(file = %e.path.display(), error = %e, "canned replies failed to load; the previous replies (if any) stay in use");
        } else {
            tracing::error!(rule = %super::rule_id(&e.path), error = %e, "rule failed to load; its previous version (if any) keeps running");
        }
    }
}

type Watcher = notify_debouncer_full::Debouncer<
    notify::RecommendedWatcher,
    notify_debouncer_full::RecommendedCache,
>;

fn start_watcher(dir: &Path, tx: tokio::sync::mpsc::UnboundedSender<()>) -> Option<Watcher> {
    let handler = move |res: notify_debouncer_full::DebounceEventResult| match res {
        Ok(events) => {
            let relevant = events.iter().any(|e| changes_a_rule(e));
            if relevant {
                let _ = tx.send(());
            }
        }
        Err(errors) => {
            for e in errors {
                tracing::warn!(error = %e, "rules directory watcher error");
            }
            let _ = tx.send(());
        }
    };
    let mut debouncer = match notify_debouncer_full::new_debouncer(DEBOUNCE, None, handler) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the rules watcher; falling back to rescanning every {}s", FALLBACK_RESCAN.as_secs());
            return None;
        }
    };
    if let Err(e) = debouncer.watch(dir, notify::RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the rules directory; falling back to rescanning every {}s", FALLBACK_RESCAN.as_secs());
        return None;
    }
    Some(debouncer)
}

/// Whether a watcher event may have changed a rule file or the replies
/// file. Reading one is an
/// event too (inotify's open and close): counted, every rescan would cause
/// the next, and engines sharing a directory (workspaces with one rules
/// directory) would wake each other for ever — 90% of their CPU in the
/// many-workspace benchmark.
fn changes_a_rule(e: &notify::Event) -> bool {
    !matches!(e.kind, notify::EventKind::Access(_))
        && e.paths
            .iter()
            .any(|p| is_rule_file(p) || replies::is_replies_file(p) || is_atomic_writer_entry(p))
}

/// Whether a path is one of the entries through which Kubernetes (the
/// kubelet's AtomicWriter) updates a mounted ConfigMap: `..data`, the
/// symlink every `NAME.rhai -> ..data/NAME.rhai` goes through, `..data_tmp`,
/// renamed over it to swap versions, and the `..<timestamp>` directories
/// that hold the files. An update changes only these: the `NAME.rhai` links
/// stay as they are and the new files are in a subdirectory, which the
/// non-recursive watch does not see. Ignored, a changed rule would wait
/// for the periodic rescan (SPEC §3 wants a reload within a second). Rule
/// files never start with a dot, and Kubernetes refuses keys that start
/// with `..`, so nothing else is counted.
fn is_atomic_writer_entry(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(".."))
}

fn hash(s: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::changes_a_rule;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode};
    use notify::{Event, EventKind};

    fn event(kind: EventKind, path: &str) -> Event {
        Event::new(kind).add_path(path.into())
    }

    #[test]
    fn reading_a_rule_is_not_a_change_but_writing_one_is() {
        let read = EventKind::Access(AccessKind::Close(AccessMode::Read));
        let opened = EventKind::Access(AccessKind::Open(AccessMode::Any));
        assert!(!changes_a_rule(&event(read, "/r/a.rhai")));
        assert!(!changes_a_rule(&event(opened, "/r/a.rhai")));
        let written = EventKind::Modify(ModifyKind::Any);
        assert!(changes_a_rule(&event(written, "/r/a.rhai")));
        assert!(changes_a_rule(&event(
            EventKind::Create(CreateKind::File),
            "/r/b.rhai"
        )));
        assert!(!changes_a_rule(&event(written, "/r/notes.txt")));
        // The canned replies are reloaded with the rules.
        assert!(changes_a_rule(&event(written, "/r/replies.toml")));
    }

    #[test]
    fn a_configmap_swap_is_a_change_but_reading_through_it_is_not() {
        let renamed = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        let swap = Event::new(renamed)
            .add_path("/r/..data_tmp".into())
            .add_path("/r/..data".into());
        assert!(changes_a_rule(&swap));
        assert!(changes_a_rule(&event(
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            "/r/..data"
        )));
        assert!(changes_a_rule(&event(
            EventKind::Remove(RemoveKind::Folder),
            "/r/..2026_12_01_10_00_00.123456789"
        )));
        let read = EventKind::Access(AccessKind::Close(AccessMode::Read));
        assert!(!changes_a_rule(&event(read, "/r/..data")));
    }

    /// A rules directory laid out as the kubelet lays out a ConfigMap
    /// volume, updated the way it updates one.
    #[cfg(unix)]
    mod configmap {
        use std::os::unix::fs::symlink;
        use std::path::Path;

        /// Publishes `files` (name, content) as version `n`: a new
        /// `..<timestamp>` directory, `..data_tmp` pointing at it renamed
        /// over `..data`, a top-level link for each new key, the links of
        /// keys gone removed, and the previous version's directory deleted.
        pub fn publish(dir: &Path, n: u32, files: &[(&str, &str)]) {
            let version = format!("..2026_12_01_10_00_{n:02}.123456789");
            std::fs::create_dir(dir.join(&version)).unwrap();
            for (name, text) in files {
                std::fs::write(dir.join(&version).join(name), text).unwrap();
            }
            let previous = std::fs::read_link(dir.join("..data")).ok();
            symlink(&version, dir.join("..data_tmp")).unwrap();
            std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
            for (name, _) in files {
                if dir.join(name).symlink_metadata().is_err() {
                    symlink(Path::new("..data").join(name), dir.join(name)).unwrap();
                }
            }
            for entry in std::fs::read_dir(dir).unwrap() {
                let name = entry.unwrap().file_name();
                let name = name.to_string_lossy();
                if !name.starts_with("..") && !files.iter().any(|(f, _)| *f == name) {
                    std::fs::remove_file(dir.join(&*name)).unwrap();
                }
            }
            if let Some(old) = previous {
                std::fs::remove_dir_all(dir.join(old)).unwrap();
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_rescan_follows_a_configmap_swap_and_loads_each_key_once() {
        use super::Reloader;
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let rule = |text: &str| format!("on(\"visitor_message\", |ev| ev.reply(\"{text}\"));");
        configmap::publish(
            dir.path(),
            1,
            &[("old.rhai", &rule("old")), ("reply.rhai", &rule("v1"))],
        );
        let runtime = Arc::new(super::Runtime::new());
        let reloader = Reloader::new(runtime.clone(), dir.path());
        let ids =
            || -> Vec<String> { runtime.rules().rules.iter().map(|r| r.id.clone()).collect() };
        let report = reloader.rescan().unwrap();
        assert_eq!(report.loaded, ["old", "reply"], "{report:?}");
        assert_eq!(ids().len(), 2);

        // Only what `..data` points to changes.
        configmap::publish(
            dir.path(),
            2,
            &[("old.rhai", &rule("old")), ("reply.rhai", &rule("v2"))],
        );
        let report = reloader.rescan().unwrap();
        assert_eq!(report.loaded, ["reply"], "{report:?}");
        assert!(
            report.removed.is_empty() && report.errors.is_empty(),
            "{report:?}"
        );

        // A key removed, one added.
        configmap::publish(
            dir.path(),
            3,
            &[("new.rhai", &rule("new")), ("reply.rhai", &rule("v2"))],
        );
        let report = reloader.rescan().unwrap();
        assert_eq!(report.loaded, ["new"], "{report:?}");
        assert_eq!(report.removed, ["old"], "{report:?}");
        let mut now = ids();
        now.sort();
        assert_eq!(now, ["new", "reply"]);
    }

    /// The watcher alone, without the periodic rescan, reports a swap of
    /// `..data` that leaves every `*.rhai` entry as it is.
    #[cfg(unix)]
    #[test]
    fn the_watcher_reports_a_configmap_swap() {
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        configmap::publish(dir.path(), 1, &[("reply.rhai", "// v1")]);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let watcher = super::start_watcher(dir.path(), tx);
        assert!(watcher.is_some(), "the watcher starts");
        configmap::publish(dir.path(), 2, &[("reply.rhai", "// v2")]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while rx.try_recv().is_err() {
            assert!(
                Instant::now() < deadline,
                "no change reported for the swap of ..data"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
