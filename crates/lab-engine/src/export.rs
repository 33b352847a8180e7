//! `lab build --out DIR`: a copy of a machine's built tree at `DIR/NAME/`,
//! to compare with the tree another tool (make) produced.
//!
//! The copy is made from the manifest and `.lab/out/NAME/`, into a
//! temporary directory that is renamed into place. An existing `DIR/NAME`
//! is replaced only when lab wrote it (a marker file `DIR/.NAME.lab-export`
//! beside it says so), never a tree lab did not create.

use crate::{Engine, EngineError};
use lab_manifest::{EntryKind, Manifest};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

impl Engine {
    /// Copy machine `machine`'s built tree to `dir/machine/`; returns that path.
    pub fn export(&self, machine: &str, dir: &Path) -> Result<PathBuf, EngineError> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| EngineError::Io { path: p, source }
        };
        let mpath = self.manifest_path(machine);
        let text = std::fs::read_to_string(&mpath).map_err(io(&mpath))?;
        let manifest = Manifest::parse(&text).map_err(|e| EngineError::Io {
            path: mpath.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let dest = dir.join(machine);
        let marker = dir.join(format!(".{machine}.lab-export"));
        if std::fs::symlink_metadata(&dest).is_ok() && !marker.exists() {
            return Err(EngineError::Io {
                path: dest,
                source: std::io::Error::other(
                    "exists and was not written by `lab build --out`; refusing to replace it",
                ),
            });
        }
        let tmp = dir.join(format!(".{machine}.lab-export-tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir(&tmp).map_err(io(&tmp))?;
        let src_root = self.out_dir(machine);
        for e in manifest.entries.values() {
            let to = tmp.join(&e.path);
            match &e.kind {
                EntryKind::Dir => std::fs::create_dir_all(&to).map_err(io(&to))?,
                EntryKind::File { .. } => {
                    let from = src_root.join(&e.path);
                    std::fs::copy(&from, &to).map_err(io(&from))?;
                    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(e.mode))
                        .map_err(io(&to))?;
                }
                EntryKind::Symlink { target } => {
                    std::os::unix::fs::symlink(target, &to).map_err(io(&to))?
                }
            }
        }
        // Directory modes last (deepest first), so read-only ones were
        // still writable while being filled.
        for e in manifest.entries.values().rev() {
            if e.is_dir() {
                let to = tmp.join(&e.path);
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(e.mode))
                    .map_err(io(&to))?;
            }
        }
        std::fs::write(&marker, b"").map_err(io(&marker))?;
        if std::fs::symlink_metadata(&dest).is_ok() {
            std::fs::remove_dir_all(&dest).map_err(io(&dest))?;
        }
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        Ok(dest)
    }
}
