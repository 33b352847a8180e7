//! `.lab/watch.log`: a running `lab watch` says there what it does, so
//! that another process (the web console) can follow it live. One JSON
//! object a line, each line written whole with one `write` to a file
//! opened for appending:
//!
//! ```text
//! {"pid":N,"at":SECS,"what":{"start":{"machines":["a","b"]}}}
//! {"pid":N,"at":SECS,"what":{"cycle":{"number":3,"changed":["layers/x"],
//!     "machines":[{"name":"a","ok":true,"what":"1 rendered, generation 4 applied: 1 written, 0 removed"}],"ms":41}}}
//! {"pid":N,"at":SECS,"what":{"error":{"machine":"a","text":"..."}}}     (machine null: the cycle's)
//! {"pid":N,"at":SECS,"what":{"stop":{}}}
//! ```
//!
//! A session starts a file of its own (its first line written to a new
//! file that is then renamed over the old one: a reader sees one session
//! or the other, never a mix); past [`MAX_BYTES`] the session starts a new
//! file the same way. A reader follows it with a [`WatchCursor`] (inode and
//! offset), taking only whole lines. A session that ends without its
//! `stop` line (killed) is over when its process is gone.

use crate::event::{Cycle, Event, Events, MachineCycle};
use lab_sync::Outcome;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A session's file is started again (from a `start` line) past this size.
pub const MAX_BYTES: u64 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WatchRecord {
    pub pid: u32,
    /// Seconds since the epoch.
    pub at: u64,
    pub what: WatchWhat,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchWhat {
    Start {
        machines: Vec<String>,
    },
    Cycle {
        number: u64,
        changed: Vec<String>,
        machines: Vec<MachineLine>,
        ms: u64,
    },
    Error {
        machine: Option<String>,
        text: String,
    },
    Stop {},
}

/// One machine in a cycle: did it go well, and what happened, in words.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MachineLine {
    pub name: String,
    pub ok: bool,
    pub what: String,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What happened to `m` in a cycle, in words.
pub fn machine_words(m: &MachineCycle) -> String {
    let mut p = Vec::new();
    if !m.rendered.is_empty() {
        p.push(format!("{} rendered", m.rendered.len()));
    }
    if let Some(Err(errors)) = &m.build {
        match errors.first() {
            Some(e) if errors.len() == 1 => p.push(format!("build failed: {e}")),
            Some(e) => p.push(format!(
                "build failed: {e} (and {} more errors)",
                errors.len() - 1
            )),
            None => p.push("build failed".into()),
        }
    }
    match &m.sync {
        Some(Ok(r)) => {
            match r.outcome {
                Outcome::Applied { gen } => p.push(format!(
                    "generation {gen} applied: {} written, {} removed",
                    r.written, r.removed
                )),
                Outcome::RolledBack { gen } => {
                    p.push(format!("a unit failed: back on generation {gen}"))
                }
                Outcome::Unchanged { .. } => {}
            }
            for u in &r.apply.units {
                p.push(format!("{} {}: {}", u.action, u.unit, u.result));
            }
            for u in &r.failed_units {
                p.push(format!("failed unit: {u}"));
            }
        }
        Some(Err(e)) => {
            p.push(format!("sync failed: {e}"));
            if let Some(d) = m.retry_in {
                p.push(format!("retry in {} s", d.as_secs()));
            }
        }
        None => {}
    }
    if p.is_empty() {
        "nothing to do".into()
    } else {
        p.join(", ")
    }
}

struct Open {
    file: std::fs::File,
    size: u64,
}

/// Writes a watch session's records, and passes every event on to the
/// [`Events`] it wraps.
pub struct WatchLog<'a> {
    path: PathBuf,
    machines: Vec<String>,
    inner: &'a dyn Events,
    open: Mutex<Option<Open>>,
}

impl<'a> WatchLog<'a> {
    /// Start the session's file at `path` (`.lab/watch.log`) with its
    /// `start` line, for the watch of `machines`.
    pub fn start(
        path: &Path,
        machines: Vec<String>,
        inner: &'a dyn Events,
    ) -> std::io::Result<WatchLog<'a>> {
        let log = WatchLog {
            path: path.to_path_buf(),
            machines,
            inner,
            open: Mutex::new(None),
        };
        let open = log.fresh()?;
        *log.open.lock().unwrap_or_else(|p| p.into_inner()) = Some(open);
        Ok(log)
    }

    fn line(what: WatchWhat) -> Vec<u8> {
        let r = WatchRecord {
            pid: std::process::id(),
            at: now(),
            what,
        };
        let mut l = serde_json::to_vec(&r).expect("a record is JSON");
        l.push(b'\n');
        l
    }

    /// A new file holding the `start` line, renamed over the old one.
    fn fresh(&self) -> std::io::Result<Open> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self
            .path
            .with_extension(format!("log.{}.tmp", std::process::id()));
        let first = Self::line(WatchWhat::Start {
            machines: self.machines.clone(),
        });
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&tmp)
            .or_else(|_| {
                // (one a crashed session left)
                std::fs::remove_file(&tmp)?;
                std::fs::OpenOptions::new()
                    .append(true)
                    .create_new(true)
                    .open(&tmp)
            })?;
        file.write_all(&first)?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(Open {
            file,
            size: first.len() as u64,
        })
    }

    /// Append one record (a failure to write loses that line, never the
    /// watch).
    fn write(&self, what: WatchWhat) {
        let line = Self::line(what);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.as_ref().is_some_and(|o| o.size > MAX_BYTES) {
            *open = self.fresh().ok();
        }
        if let Some(o) = open.as_mut() {
            if o.file.write_all(&line).is_ok() {
                o.size += line.len() as u64;
            }
        }
    }

    fn cycle(&self, c: &Cycle) {
        self.write(WatchWhat::Cycle {
            number: c.number,
            changed: c.changed.clone(),
            machines: c
                .machines
                .iter()
                .map(|m| MachineLine {
                    name: m.name.clone(),
                    ok: m.ok(),
                    what: machine_words(m),
                })
                .collect(),
            ms: c.times.total_ms as u64,
        });
    }
}

impl Events for WatchLog<'_> {
    fn event(&self, e: Event<'_>) {
        match &e {
            Event::Cycle(c) => self.cycle(c),
            Event::ConnectFailed { machine, error } => self.write(WatchWhat::Error {
                machine: Some(machine.to_string()),
                text: format!("cannot reach it: {error}"),
            }),
            Event::CycleError(error) => self.write(WatchWhat::Error {
                machine: None,
                text: error.to_string(),
            }),
            _ => {}
        }
        self.inner.event(e);
    }

    fn reporter(&self) -> &dyn lab_engine::Reporter {
        self.inner.reporter()
    }
}

impl Drop for WatchLog<'_> {
    fn drop(&mut self) {
        self.write(WatchWhat::Stop {});
    }
}

/// Where a reader is in a watch log: which file (its inode) and how far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchCursor {
    inode: u64,
    offset: u64,
}

/// What a read of the watch log found.
#[derive(Debug, Default)]
pub struct WatchRead {
    /// The records after the cursor (whole lines only).
    pub records: Vec<WatchRecord>,
    /// The file is another session's than at the last read (or the
    /// first read): `records` start from its beginning.
    pub new_session: bool,
}

/// Read the records of the watch log at `path` after `cursor` (none:
/// from the beginning), moving it on. No file: nothing.
pub fn read_watch_log(path: &Path, cursor: &mut Option<WatchCursor>) -> WatchRead {
    let Ok(mut file) = std::fs::File::open(path) else {
        return WatchRead::default();
    };
    let Ok(meta) = file.metadata() else {
        return WatchRead::default();
    };
    let mut at = match *cursor {
        Some(c) if c.inode == meta.ino() && c.offset <= meta.len() => c,
        _ => WatchCursor {
            inode: meta.ino(),
            offset: 0,
        },
    };
    let new_session = at.offset == 0 && *cursor != Some(at);
    let mut text = Vec::new();
    if file.seek(std::io::SeekFrom::Start(at.offset)).is_err()
        || file.read_to_end(&mut text).is_err()
    {
        return WatchRead::default();
    }
    let whole = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    at.offset += whole as u64;
    *cursor = Some(at);
    let records = text[..whole]
        .split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    WatchRead {
        records,
        new_session,
    }
}

/// Is the process of a session still there?
pub fn watch_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Quiet;

    #[test]
    fn a_reader_follows_sessions_line_by_line() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(".lab/watch.log");
        let mut cursor = None;
        assert!(read_watch_log(&path, &mut cursor).records.is_empty());

        let log = WatchLog::start(&path, vec!["a".into()], &Quiet).unwrap();
        let r = read_watch_log(&path, &mut cursor);
        assert!(r.new_session);
        assert_eq!(
            r.records[0].what,
            WatchWhat::Start {
                machines: vec!["a".into()]
            }
        );
        assert_eq!(r.records[0].pid, std::process::id());
        log.write(WatchWhat::Error {
            machine: None,
            text: "one".into(),
        });
        // a half-written line waits for its end
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"pid\":1,")
            .unwrap();
        let r = read_watch_log(&path, &mut cursor);
        assert!(!r.new_session);
        assert_eq!(r.records.len(), 1);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"\"at\":2,\"what\":{\"stop\":{}}}\n")
            .unwrap();
        let r = read_watch_log(&path, &mut cursor);
        assert_eq!(r.records[0].what, WatchWhat::Stop {});
        drop(log);
        assert_eq!(
            read_watch_log(&path, &mut cursor).records[0].what,
            WatchWhat::Stop {}
        );

        // the next session: a new file, read from its start
        let _log = WatchLog::start(&path, vec!["b".into()], &Quiet).unwrap();
        let r = read_watch_log(&path, &mut cursor);
        assert!(r.new_session);
        assert_eq!(r.records.len(), 1);
        assert!(watch_alive(std::process::id()));
        // (no temporary file is left)
        let names: Vec<_> = std::fs::read_dir(d.path().join(".lab"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["watch.log"]);
    }
}
