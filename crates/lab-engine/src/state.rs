//! lab's state under `.lab/state/`, and how it is written.
//!
//! ```text
//! .lab/state/roots/layers/NAME    fingerprints of one source root (and
//! .lab/state/roots/machines/NAME  the generation they are)
//! .lab/state/machines/NAME.sum    one machine's input summary (tiny)
//! .lab/state/machines/NAME.graph  one machine's graph, manifest and inputs
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
//! so a summary never vouches for outputs that were not written. A fresh
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

    pub fn load_machine(&self, machine: &str) -> Option<MachineState> {
        read(&self.graph_path(machine))
    }

    pub fn forget_machine(&self, machine: &str) -> std::io::Result<()> {
        for p in [self.summary_path(machine), self.graph_path(machine)] {
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
