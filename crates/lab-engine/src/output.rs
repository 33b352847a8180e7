//! Writing a machine's output tree under `.lab/out/NAME/`.
//!
//! Every file and symlink is created under a temporary name in its final
//! directory and renamed into place, so a reader (or a crash) sees the old
//! entry or the new one. Only paths that the previous manifest lists are
//! ever removed; a directory holding anything else is left alone.

use crate::MachineError;
use lab_manifest::{Entry, EntryKind};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct OutTree {
    pub root: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn tmp_name(dir: &Path) -> PathBuf {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".lab~{}.{n}", std::process::id()))
}

impl OutTree {
    pub fn new(root: PathBuf) -> OutTree {
        OutTree { root }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Remove entries of `old` that `new` no longer has or has as another
    /// kind (directory <-> non-directory), deepest first. Returns the paths
    /// removed. A directory that still holds files lab did not create stays,
    /// unless `new` needs its path for something else.
    /// `new_is_dir` tells for a path whether the new tree has a directory
    /// there (`Some(true)`), something else (`Some(false)`) or nothing.
    pub fn remove_stale(
        &self,
        old: &BTreeMap<String, Entry>,
        new_is_dir: &dyn Fn(&str) -> Option<bool>,
    ) -> Result<Vec<String>, MachineError> {
        let mut removed = Vec::new();
        for (path, e) in old.iter().rev() {
            let replacement = new_is_dir(path);
            if replacement == Some(e.is_dir()) {
                continue;
            }
            let p = self.path(path);
            let meta = match std::fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(MachineError::io(&p)(err)),
            };
            if meta.is_dir() {
                match std::fs::remove_dir(&p) {
                    Ok(()) => removed.push(path.clone()),
                    Err(err) if err.raw_os_error() == Some(libc::ENOTEMPTY) => {
                        if replacement.is_some() {
                            return Err(MachineError::Foreign {
                                path: p,
                                kind: "file or symlink",
                            });
                        }
                    }
                    Err(err) => return Err(MachineError::io(&p)(err)),
                }
            } else {
                std::fs::remove_file(&p).map_err(MachineError::io(&p))?;
                removed.push(path.clone());
            }
        }
        Ok(removed)
    }

    /// Create (or fix the mode of) a directory entry. Anything but a real
    /// directory at that path is replaced: lab created it (it was in the old
    /// manifest), or the tree is lab's own.
    pub fn make_dir(&self, e: &Entry) -> Result<(), MachineError> {
        let p = self.path(&e.path);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                std::fs::remove_file(&p).map_err(MachineError::io(&p))?;
                std::fs::create_dir(&p).map_err(MachineError::io(&p))?;
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&p).map_err(MachineError::io(&p))?;
            }
            Err(err) => return Err(MachineError::io(&p)(err)),
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode))
            .map_err(MachineError::io(&p))
    }

    /// Write a file or symlink entry atomically. `bytes` is the file's
    /// content (ignored for symlinks).
    pub fn write(&self, e: &Entry, bytes: &[u8]) -> Result<(), MachineError> {
        let p = self.path(&e.path);
        let dir = p.parent().expect("entry paths are below the root");
        self.check_parent(dir)?;
        match &e.kind {
            EntryKind::File { .. } => {
                let mut tmp = tempfile::Builder::new()
                    .prefix(".lab~")
                    .tempfile_in(dir)
                    .map_err(MachineError::io(dir))?;
                tmp.write_all(bytes).map_err(MachineError::io(&p))?;
                tmp.as_file()
                    .set_permissions(std::fs::Permissions::from_mode(e.mode))
                    .map_err(MachineError::io(&p))?;
                tmp.persist(&p)
                    .map_err(|err| MachineError::io(&p)(err.error))?;
            }
            EntryKind::Symlink { target } => {
                let tmp = tmp_name(dir);
                std::os::unix::fs::symlink(target, &tmp).map_err(MachineError::io(&tmp))?;
                if let Err(err) = std::fs::rename(&tmp, &p) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(MachineError::io(&p)(err));
                }
            }
            EntryKind::Dir => self.make_dir(e)?,
        }
        Ok(())
    }

    /// Never write through a symlink: the parent must be a real directory.
    fn check_parent(&self, dir: &Path) -> Result<(), MachineError> {
        match std::fs::symlink_metadata(dir) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(MachineError::io(dir)(std::io::Error::other(
                "refusing to write through something that is not a directory",
            ))),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(MachineError::io(dir))
            }
            Err(err) => Err(MachineError::io(dir)(err)),
        }
    }
}
