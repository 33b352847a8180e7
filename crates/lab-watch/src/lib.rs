//! Turns file system events into batches of changed paths for `lab watch`.
//! Owns the `notify` watcher and the coalescing: a batch closes when the
//! project has been quiet for a short window (tens of milliseconds), so an
//! editor's write-temp-and-rename or a `git checkout` of hundreds of files
//! is one batch, not hundreds. Knows nothing about builds or machines.

use notify::{RecursiveMode, Watcher as _};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch `{}`: {source}", path.display())]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

/// Paths that changed, and when the first of them was reported.
#[derive(Debug)]
pub struct Batch {
    pub paths: Vec<PathBuf>,
    pub first_event: Instant,
    /// The kernel dropped events (queue overflow): the caller must look at
    /// everything again.
    pub overflow: bool,
    /// [`Stopper::stop`] was called: the caller should finish (the paths
    /// gathered so far are still in the batch).
    pub stop: bool,
}

enum Msg {
    Event(notify::Result<notify::Event>),
    Stop,
}

/// Ends a watch from another thread (a signal handler's, say): the
/// watcher's current or next wait returns a batch with `stop` set.
#[derive(Clone)]
pub struct Stopper(Sender<Msg>);

impl Stopper {
    pub fn stop(&self) {
        let _ = self.0.send(Msg::Stop);
    }
}

/// Watches a project: its top directory (for `lab.toml`), and the given
/// subdirectories (`layers`, `machines`) recursively. Nothing else is
/// watched, so a big `target/` or `.git/` costs nothing.
pub struct ProjectWatcher {
    watcher: std::cell::RefCell<notify::RecommendedWatcher>,
    rx: Receiver<Msg>,
    tx: Sender<Msg>,
    root: PathBuf,
    subdirs: Vec<PathBuf>,
    watched: std::cell::RefCell<BTreeSet<PathBuf>>,
    /// How long the project must be quiet before a batch closes.
    pub quiet: Duration,
    /// A batch closes after this long even if events keep coming.
    pub max_wait: Duration,
}

impl ProjectWatcher {
    pub fn new(root: &Path, subdirs: &[&str]) -> Result<ProjectWatcher, WatchError> {
        let (tx, rx) = channel();
        let events = tx.clone();
        let mut w = notify::recommended_watcher(move |e| {
            let _ = events.send(Msg::Event(e));
        })
        .map_err(|e| WatchError::Watch {
            path: root.to_path_buf(),
            source: e,
        })?;
        w.watch(root, RecursiveMode::NonRecursive)
            .map_err(|e| WatchError::Watch {
                path: root.to_path_buf(),
                source: e,
            })?;
        let me = ProjectWatcher {
            watcher: std::cell::RefCell::new(w),
            rx,
            tx,
            root: root.to_path_buf(),
            subdirs: subdirs.iter().map(|d| root.join(d)).collect(),
            watched: Default::default(),
            quiet: Duration::from_millis(
                std::env::var("LAB_WATCH_QUIET_MS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(10),
            ),
            max_wait: Duration::from_millis(1000),
        };
        for d in &me.subdirs {
            me.watch_subdir(d)?;
        }
        Ok(me)
    }

    /// A handle that ends the watch from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper(self.tx.clone())
    }

    /// Start watching a subdirectory once it exists.
    fn watch_subdir(&self, d: &Path) -> Result<(), WatchError> {
        if d.is_dir() && !self.watched.borrow().contains(d) {
            self.watcher
                .borrow_mut()
                .watch(d, RecursiveMode::Recursive)
                .map_err(|e| WatchError::Watch {
                    path: d.to_path_buf(),
                    source: e,
                })?;
            self.watched.borrow_mut().insert(d.to_path_buf());
        }
        Ok(())
    }

    /// `lab.toml` and anything under a watched subdirectory; not the other
    /// entries of the top directory (`.lab/`, `target/`, `README.md`).
    fn relevant(&self, p: &Path) -> bool {
        if self.subdirs.iter().any(|d| p.starts_with(d)) {
            return true;
        }
        p.parent() == Some(self.root.as_path()) && p.file_name().is_some_and(|n| n == "lab.toml")
    }

    /// Wait up to `timeout` (forever with `None`) for a change, then gather
    /// events until the project is quiet. `None` when nothing happened.
    pub fn next_batch(&self, timeout: Option<Duration>) -> Option<Batch> {
        self.gather(timeout, false)
    }

    /// The events queued so far, as a batch (`None` when none of them is a
    /// change): waits until no event at all, reads included, has come for
    /// the quiet window (at most `max_wait`), so that the events of a burst
    /// the watcher is still reading are not left behind.
    pub fn pending(&self) -> Option<Batch> {
        self.gather(Some(Duration::ZERO), true)
    }

    /// Throw away the events queued so far (see [`ProjectWatcher::pending`]).
    /// For the moment before a full scan, which sees whatever they were
    /// about: the walk that set up the watches opened every directory, and
    /// each open is an event that fills the kernel's queue
    /// (`fs.inotify.max_queued_events`) until it is read.
    pub fn discard_pending(&self) {
        let _ = self.pending();
    }

    fn gather(&self, timeout: Option<Duration>, drain: bool) -> Option<Batch> {
        let started = Instant::now();
        let mut paths = BTreeSet::new();
        let mut overflow = false;
        let mut stop = false;
        let mut first: Option<Instant> = None;
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let wait = match first {
                Some(f) => {
                    let left = self.max_wait.saturating_sub(f.elapsed());
                    if left.is_zero() {
                        break;
                    }
                    self.quiet.min(left)
                }
                None => match deadline {
                    Some(d) => d.saturating_duration_since(Instant::now()),
                    None => Duration::from_secs(3600),
                },
            };
            let wait = if drain {
                // any event, reads included, keeps a drain going (at most
                // max_wait): the watcher is still reading the queue
                let left = self.max_wait.saturating_sub(started.elapsed());
                if left.is_zero() {
                    break;
                }
                self.quiet.min(left)
            } else {
                wait
            };
            match self.rx.recv_timeout(wait) {
                Ok(Msg::Stop) => {
                    stop = true;
                    first.get_or_insert_with(Instant::now);
                    break;
                }
                // Reads (lab's own, when it builds) are not changes.
                Ok(Msg::Event(Ok(ev))) if matches!(ev.kind, notify::EventKind::Access(_)) => {
                    if !drain && first.is_none() && deadline.is_some_and(|d| Instant::now() >= d) {
                        return None;
                    }
                }
                Ok(Msg::Event(Ok(ev))) => {
                    if ev.need_rescan() {
                        overflow = true;
                    }
                    let mut any = false;
                    for p in ev.paths {
                        if self.subdirs.contains(&p) {
                            let _ = self.watch_subdir(&p);
                        }
                        if self.relevant(&p) {
                            paths.insert(p);
                            any = true;
                        }
                    }
                    if (any || overflow) && first.is_none() {
                        first = Some(Instant::now());
                    }
                }
                Ok(Msg::Event(Err(_))) => {
                    overflow = true;
                    first.get_or_insert_with(Instant::now);
                }
                Err(RecvTimeoutError::Timeout) => {
                    if first.is_some() || drain {
                        break;
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return None;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return None,
            }
        }
        Some(Batch {
            paths: paths.into_iter().collect(),
            first_event: first?,
            overflow,
            stop,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_one_batch_and_other_dirs_are_ignored() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join(".lab")).unwrap();
        let w = ProjectWatcher::new(d.path(), &["layers"]).unwrap();
        std::fs::write(d.path().join(".lab/x"), "x").unwrap();
        std::fs::write(d.path().join("README"), "x").unwrap();
        assert!(
            w.next_batch(Some(Duration::from_millis(200))).is_none(),
            ".lab is ignored"
        );
        // a watched subdirectory that appears later is picked up
        std::fs::create_dir_all(d.path().join("layers/a")).unwrap();
        let b = w.next_batch(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(b.paths[0], d.path().join("layers"));
        for i in 0..200 {
            std::fs::write(d.path().join(format!("layers/a/f{i}")), "x").unwrap();
        }
        // reading is not changing
        let _ = std::fs::read(d.path().join("layers/a/f0"));
        let b = w.next_batch(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(b.paths.len(), 200);
        std::fs::write(d.path().join("lab.toml"), "x").unwrap();
        let b = w.next_batch(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(b.paths, vec![d.path().join("lab.toml")]);
        assert!(w.next_batch(Some(Duration::from_millis(100))).is_none());
        // a stop ends a wait at once, from any thread
        let stopper = w.stopper();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            stopper.stop();
        });
        let b = w.next_batch(None).unwrap();
        assert!(b.stop && b.paths.is_empty());
    }
}
