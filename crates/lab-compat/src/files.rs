//! Files a make-style build reads outside its scanned sources, or through
//! symlinks: m4 preludes and `m4_include`d files, the targets of `!`
//! sources, `[[compat.copy]]` files. Each is a [`file_key`](crate::file_key)
//! input whose digest covers the followed file's content and permission
//! bits. Like sources, they are fingerprinted by stat (following symlinks)
//! and read only when the stat changed.

use lab_graph::{Digest, Fingerprint, Hasher};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The digests of files looked up during one build, shared by machines.
pub struct FileCache {
    root: PathBuf,
    now: Mutex<HashMap<String, Option<Fingerprint>>>,
    /// Literal `m4_include`/`m4_sinclude` names of each file read so far
    /// (preludes are read by every render).
    includes: Mutex<HashMap<String, Vec<String>>>,
}

/// The digest recorded for a followed file: its permission bits and content.
pub fn file_digest(perm: u32, content: &[u8]) -> Digest {
    Hasher::new("lab-file-v1")
        .u64(perm as u64)
        .bytes(content)
        .finish()
}

impl FileCache {
    pub fn new(root: &Path) -> FileCache {
        FileCache {
            root: root.to_path_buf(),
            now: Mutex::new(HashMap::new()),
            includes: Mutex::new(HashMap::new()),
        }
    }

    /// The literal include names in file `key` (see
    /// [`lab_render::m4::literal_includes`]); empty when it cannot be read.
    pub fn literal_includes(&self, key: &str) -> Vec<String> {
        if let Some(v) = self.includes.lock().unwrap().get(key) {
            return v.clone();
        }
        let text = std::fs::read(self.path(key))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let v = lab_render::m4::literal_includes(&text);
        self.includes
            .lock()
            .unwrap()
            .insert(key.to_string(), v.clone());
        v
    }

    pub fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// The key of a path as m4 or the plan names it: relative to the
    /// project when it lies inside it.
    pub fn key_of(&self, p: &str) -> String {
        let path = Path::new(p);
        if path.is_absolute() {
            if let Ok(rel) = path.strip_prefix(&self.root) {
                return rel.to_string_lossy().into_owned();
            }
        }
        p.trim_start_matches("./").to_string()
    }

    /// The fingerprint of `key` now (`None`: missing or not readable as a
    /// file). `prev` (with the stamp of the scan that recorded it) is reused
    /// when the stat still matches.
    pub fn fingerprint(&self, key: &str, prev: Option<(&Fingerprint, i64)>) -> Option<Fingerprint> {
        if let Some(f) = self.now.lock().unwrap().get(key) {
            return *f;
        }
        let fp = self.compute(key, prev);
        self.now.lock().unwrap().insert(key.to_string(), fp);
        fp
    }

    pub fn digest(&self, key: &str, prev: Option<(&Fingerprint, i64)>) -> Digest {
        self.fingerprint(key, prev)
            .map_or(Digest::ABSENT, |f| f.digest)
    }

    fn compute(&self, key: &str, prev: Option<(&Fingerprint, i64)>) -> Option<Fingerprint> {
        let p = self.path(key);
        let meta = std::fs::metadata(&p).ok()?;
        let stat = lab_engine::scan::stat_of(&meta);
        if let Some((fp, scanned_at)) = prev {
            if fp.reusable(&stat, scanned_at) {
                return Some(*fp);
            }
        }
        let digest = if meta.is_dir() {
            Hasher::new("lab-file-dir-v1").finish()
        } else {
            file_digest(stat.mode & 0o7777, &std::fs::read(&p).ok()?)
        };
        Some(Fingerprint { stat, digest })
    }
}
