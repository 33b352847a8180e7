//! lab's state under `.lab/state/`, and how it is written.
//!
//! ```text
//! .lab/state/roots/layers/NAME    fingerprints of one source root (and
//! .lab/state/roots/machines/NAME  the generation they are)
//! .lab/state/machines/NAME.sum    one machine's input summary (tiny)
//! .lab/state/machines/NAME.graph  one machine's graph, manifest and inputs
//! .lab/state/machines/NAME.log    what later builds changed in them
//! .lab/out/NAME/                  the machine's output tree
//! .lab/out/NAME.manifest          its manifest (see lab-manifest)
//! .lab/stage/NAME/                a build's outputs before they switch in
//! ```
//!
//! Every state file is `MAGIC` (8 bytes: `LABSTATE`), a format version (u32
//! little endian), the payload length (u64 little endian), then a postcard
//! payload. A file whose magic, version or length does not match, or whose
//! payload does not decode, is treated as missing: the affected machine is
//! rebuilt from scratch, which is always correct. Files are written to a
//! temporary name in the same directory and renamed into place, so a crash
//! leaves the old file or the new one.
//!
//! A root's fingerprints are only a cache from stat to content digest: they
//! may be newer or older than any machine's state without harm. Each root
//! has a file of its own, rewritten only when something in it changed (or a
//! file of it had to be read), so an edit rewrites one root's file, not the
//! fingerprints of every source. Each write gives the root a new generation
//! ([`RootFile::gen`]); a machine records the generations of its roots it
//! was built against ([`MachineState::gens`]), and may take their `changed`
//! lists as every change since when the generations it finds are those. A machine's `.graph` is
//! written after its outputs and manifest, and its `.sum` after its `.graph`,
//! so a summary never vouches for outputs that were not written. A build
//! that looked only at what a change affects appends what it changed (the
//! nodes it ran, the entries it wrote: a [`MachineDelta`]) to the machine's
//! `.log` instead of rewriting its `.graph`, as ninja's `.ninja_log` does;
//! a build that looked at everything, or a log grown as large as the
//! `.graph`, writes the `.graph` afresh with a new epoch, and a log of
//! another epoch is ignored. A log record is its length (u32 little
//! endian), a postcard payload and the first 8 bytes of the payload's
//! sha256: a torn or corrupt record ends the log (and the next build writes
//! the `.graph` afresh). A fresh
//! process decides that a machine is up to date from its `.sum` alone: the
//! summary digest covers the machine's layer stack (each root's tree digest),
//! its facts and the inventory; the manifest's stat guards against the
//! output having been removed or replaced behind lab's back.

pub use crate::scan::RootState;
use lab_graph::{Digest, Fingerprint, GraphState, Key, Stat};
use lab_manifest::Entry;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"LABSTATE";
/// Bump when any state type changes shape or meaning.
const VERSION: u32 = 7;

/// One root's fingerprints as its state file holds them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RootFile {
    /// Identifies this version of the root's fingerprints (a new one each
    /// time the file is written; see [`new_gen`]).
    pub gen: u64,
    pub root: RootState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineSummary {
    pub summary: Digest,
    pub manifest: Stat,
    /// Files outside the scanned roots (or read through symlinks) that the
    /// machine's outputs depend on, with their fingerprints; `summary`
    /// covers their digests (empty for a style that reads none).
    pub files: Vec<(String, Fingerprint)>,
    /// When the build that recorded `files` started (see
    /// [`Fingerprint::reusable`]).
    pub files_scanned_at_ns: i64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MachineState {
    /// Identifies this `.graph`: only a log of the same epoch extends it.
    pub epoch: u64,
    /// The [`RootFile::gen`] of each root of the stack this machine was
    /// built against (empty: unknown).
    pub gens: Vec<u64>,
    /// Root names of the layer stack, lowest first.
    pub stack: Vec<String>,
    /// Digest of each root's listing (paths and kinds) when last resolved.
    pub listings: Vec<Digest>,
    /// Digests of the inputs that are not source paths (facts, machines),
    /// as the style gave them.
    pub inputs: HashMap<Key, Digest>,
    pub graph: GraphState,
    pub entries: Vec<Entry>,
}

/// What a build that looked only at what a change affects changed in a
/// machine's state: its roots' generations and listings and its inputs
/// (as they are now), the nodes it ran and the entries it wrote.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MachineDelta {
    pub gens: Vec<u64>,
    pub listings: Vec<Digest>,
    pub inputs: HashMap<Key, Digest>,
    pub nodes: Vec<(Key, lab_graph::Trace)>,
    pub entries: Vec<Entry>,
}

/// A machine's state as loaded: the `.graph` with its log applied.
pub struct LoadedMachine {
    pub state: MachineState,
    /// Size of the `.graph`, and of the part of the log that was applied.
    pub base_len: u64,
    pub log_len: u64,
    /// The whole log was read: a record may be appended to it.
    pub log_intact: bool,
}

pub struct StateDir {
    pub dir: PathBuf,
}

impl StateDir {
    pub fn new(lab: &lab_core::LabDir) -> StateDir {
        StateDir {
            dir: lab.state_dir(),
        }
    }

    /// `.lab/state/roots/layers/NAME` for root `layers/NAME`: root names
    /// are `layers/NAME` and `machines/NAME`, NAME one directory entry.
    pub fn root_path(&self, root: &str) -> PathBuf {
        self.dir.join("roots").join(root)
    }

    pub fn summary_path(&self, machine: &str) -> PathBuf {
        self.dir.join("machines").join(format!("{machine}.sum"))
    }

    pub fn graph_path(&self, machine: &str) -> PathBuf {
        self.dir.join("machines").join(format!("{machine}.graph"))
    }

    /// Touch `.lab/state/stamp` and return its mtime: "now" on the clock
    /// the file system stamps files with. That clock is coarse (a file
    /// written a moment after a precise `now` can carry an earlier mtime),
    /// so comparing source mtimes against this stamp, not against the
    /// system time, is what makes [`Fingerprint::reusable`] safe.
    pub fn stamp(&self) -> std::io::Result<i64> {
        std::fs::create_dir_all(&self.dir)?;
        let p = self.dir.join("stamp");
        // A new file, so its mtime is set by the file system now.
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, b"")?;
        let m = std::fs::metadata(&p)?;
        use std::os::unix::fs::MetadataExt;
        Ok(m.mtime() * 1_000_000_000 + m.mtime_nsec())
    }

    /// Save one machine's state after its outputs and manifest are written:
    /// its graph, then its summary `record` with the manifest's stat taken
    /// now (in that order; see the module note). Every machine state is
    /// written here, by builds and watch sessions alike.
    pub fn save_machine(
        &self,
        machine: &str,
        state: &MachineState,
        record: &MachineSummary,
        manifest_path: &Path,
    ) -> Result<(), crate::MachineError> {
        let gp = self.graph_path(machine);
        write(&gp, state).map_err(crate::MachineError::io(&gp))?;
        // (a log of the old epoch would be ignored; it is only clutter)
        let lp = self.log_path(machine);
        match std::fs::remove_file(&lp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(crate::MachineError::io(&lp)(e)),
        }
        self.save_summary(machine, record, manifest_path)
    }

    /// The `.sum` of a machine: `record` with its manifest's stat now.
    fn save_summary(
        &self,
        machine: &str,
        record: &MachineSummary,
        manifest_path: &Path,
    ) -> Result<(), crate::MachineError> {
        let manifest = std::fs::symlink_metadata(manifest_path)
            .map(|m| crate::scan::stat_of(&m))
            .map_err(crate::MachineError::io(manifest_path))?;
        let sp = self.summary_path(machine);
        write(
            &sp,
            &MachineSummary {
                manifest,
                ..record.clone()
            },
        )
        .map_err(crate::MachineError::io(&sp))
    }

    /// Save one root's fingerprints as generation `gen`.
    pub fn save_root(&self, root: &str, gen: u64, state: RootState) -> std::io::Result<()> {
        write(&self.root_path(root), &RootFile { gen, root: state })
    }

    /// The fingerprint files of `roots` that can be read, by root name.
    pub fn load_roots(&self, roots: &[String]) -> HashMap<String, RootFile> {
        use rayon::prelude::*;
        roots
            .par_iter()
            .filter_map(|r| read(&self.root_path(r)).map(|f| (r.clone(), f)))
            .collect()
    }

    pub fn load_summary(&self, machine: &str) -> Option<MachineSummary> {
        read(&self.summary_path(machine))
    }

    pub fn log_path(&self, machine: &str) -> PathBuf {
        self.dir.join("machines").join(format!("{machine}.log"))
    }

    pub fn load_machine(&self, machine: &str) -> Option<MachineState> {
        self.load_machine_log(machine).map(|l| l.state)
    }

    /// A machine's `.graph` with its log applied.
    pub fn load_machine_log(&self, machine: &str) -> Option<LoadedMachine> {
        let gp = self.graph_path(machine);
        let base_len = std::fs::metadata(&gp).ok()?.len();
        let mut state: MachineState = read(&gp)?;
        let log = std::fs::read(self.log_path(machine)).unwrap_or_default();
        let header = log_header(state.epoch);
        if log.len() < header.len() || log[..header.len()] != header[..] {
            // no log, or one of another epoch (or torn in its header)
            return Some(LoadedMachine {
                state,
                base_len,
                log_len: 0,
                log_intact: log.is_empty(),
            });
        }
        let mut at = header.len();
        let mut deltas = Vec::new();
        while let Some((d, next)) = log_record(&log, at) {
            deltas.push(d);
            at = next;
        }
        if !deltas.is_empty() {
            apply(&mut state, deltas);
        }
        Some(LoadedMachine {
            state,
            base_len,
            log_len: at as u64,
            log_intact: at == log.len(),
        })
    }

    /// Append `delta` to a machine's log (whose `.graph` has `epoch`), then
    /// save its summary `record` (see [`StateDir::save_machine`]).
    pub fn append_machine(
        &self,
        machine: &str,
        epoch: u64,
        delta: &MachineDelta,
        record: &MachineSummary,
        manifest_path: &Path,
    ) -> Result<(), crate::MachineError> {
        let lp = self.log_path(machine);
        let payload = postcard::to_stdvec(delta)
            .map_err(|e| crate::MachineError::io(&lp)(std::io::Error::other(e)))?;
        let mut bytes = Vec::with_capacity(payload.len() + 12);
        let empty = std::fs::metadata(&lp).map_or(true, |m| m.len() == 0);
        if empty {
            bytes.extend_from_slice(&log_header(epoch));
        }
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&payload);
        bytes.extend_from_slice(&lab_graph::Digest::of(&payload).0[..8]);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&lp)
            .and_then(|mut f| f.write_all(&bytes))
            .map_err(crate::MachineError::io(&lp))?;
        self.save_summary(machine, record, manifest_path)
    }

    pub fn forget_machine(&self, machine: &str) -> std::io::Result<()> {
        for p in [
            self.summary_path(machine),
            self.graph_path(machine),
            self.log_path(machine),
        ] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// A new root generation (see [`RootFile::gen`]): unique, so a machine
/// state names the very fingerprints it was built against.
pub fn new_gen() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    now as u64 ^ ((std::process::id() as u64) << 32)
}

/// The first bytes of a log: magic, version, the epoch of its `.graph`.
fn log_header(epoch: u64) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..].copy_from_slice(&epoch.to_le_bytes());
    h
}

/// The log record at `at`, and where the next one starts.
fn log_record(log: &[u8], at: usize) -> Option<(MachineDelta, usize)> {
    let len = u32::from_le_bytes(log.get(at..at + 4)?.try_into().ok()?) as usize;
    let payload = log.get(at + 4..at + 4 + len)?;
    let check = log.get(at + 4 + len..at + 12 + len)?;
    if lab_graph::Digest::of(payload).0[..8] != *check {
        return None;
    }
    Some((postcard::from_bytes(payload).ok()?, at + 12 + len))
}

/// Apply log records to a state, in order.
fn apply(state: &mut MachineState, deltas: Vec<MachineDelta>) {
    let mut nodes: HashMap<Key, usize> = state
        .graph
        .nodes
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.clone(), i))
        .collect();
    let mut entries: HashMap<String, usize> = state
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.path.clone(), i))
        .collect();
    for d in deltas {
        state.gens = d.gens;
        state.listings = d.listings;
        state.inputs = d.inputs;
        for (k, t) in d.nodes {
            match nodes.get(&k) {
                Some(&i) => state.graph.nodes[i].1 = t,
                None => {
                    nodes.insert(k.clone(), state.graph.nodes.len());
                    state.graph.nodes.push((k, t));
                }
            }
        }
        for e in d.entries {
            match entries.get(&e.path) {
                Some(&i) => state.entries[i] = e,
                None => {
                    entries.insert(e.path.clone(), state.entries.len());
                    state.entries.push(e);
                }
            }
        }
    }
}

fn read<T: DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < 20 || &bytes[..8] != MAGIC {
        return None;
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().ok()?);
    let len = u64::from_le_bytes(bytes[12..20].try_into().ok()?);
    if version != VERSION || len != (bytes.len() - 20) as u64 {
        return None;
    }
    postcard::from_bytes(&bytes[20..]).ok()
}

/// Serialize and write atomically.
pub fn write<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    let payload = postcard::to_stdvec(value).map_err(std::io::Error::other)?;
    let mut bytes = Vec::with_capacity(payload.len() + 20);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&payload);
    write_atomic(path, &bytes)
}

/// Write `bytes` to `path` through a temporary file in the same directory
/// and a rename: readers see the old content or the new, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("state paths have a parent");
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".lab-tmp.")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption_means_missing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        let s = MachineSummary {
            summary: Digest::of(b"a"),
            manifest: Stat {
                mtime_ns: 1,
                size: 2,
                ino: 3,
                mode: 4,
            },
            files: Vec::new(),
            files_scanned_at_ns: 0,
        };
        write(&p, &s).unwrap();
        assert_eq!(read::<MachineSummary>(&p), Some(s));
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.pop();
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(read::<MachineSummary>(&p), None, "truncated");
        std::fs::write(&p, b"garbage that is long enough to pass").unwrap();
        assert_eq!(read::<MachineSummary>(&p), None);
    }
}
