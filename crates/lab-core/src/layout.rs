//! The layout of a project's `.lab/` directory: every path under it is
//! built here and nowhere else.
//!
//! ```text
//! .lab/lock                       held by a build or watch session
//! .lab/out/NAME/                  a machine's output tree
//! .lab/out/NAME.manifest          its manifest (lab-manifest's format)
//! .lab/stage/NAME/                a build's new outputs before they switch in
//! .lab/state/                     the engine's state (see lab-engine's `state`)
//! .lab/facts/NAME.json            facts gathered from a machine (user-editable)
//! .lab/sync/NAME.applied          the generation lab last saw applied on it
//! .lab/sync/NAME.last             the generation lab last put on it, and when
//! .lab/sync/NAME.libs             the executor's libraries it keeps (digests,
//!                                 a line each: see lab-agent's `library`)
//! .lab/machines/known_hosts       host keys of container machines, pinned
//!                                 at creation under their names
//! .lab/images/blobs/SHA256        a file of an image, by content (lab-images)
//! .lab/images/trees/ID.tree       an image as a tree (lab-images' format)
//! .lab/images/NAME.source         which tree an image's source gave, under
//!                                 a signature of its stat
//! .lab/console.sqlite             `lab console`'s accounts, roles, sessions
//!                                 and audit log (lab-console's schema)
//! .lab/watch.log                  what the running (or last) `lab watch`
//!                                 did, a JSON object a line (lab-deploy's
//!                                 `WatchLog`)
//! .lab/ssh/                       control sockets of SSH connections kept
//!                                 open across runs (or $XDG_RUNTIME_DIR/lab-ssh/)
//! ```

use std::path::{Path, PathBuf};

/// The name of lab's directory in a project.
pub const LAB_DIR: &str = ".lab";

/// A project's `.lab/` directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabDir {
    root: PathBuf,
}

impl LabDir {
    /// `.lab/` of the project in `project`.
    pub fn of_project(project: &Path) -> LabDir {
        LabDir {
            root: project.join(LAB_DIR),
        }
    }

    /// A `.lab/` directory at `dir` itself.
    pub fn at(dir: &Path) -> LabDir {
        LabDir {
            root: dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn lock_path(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// `.lab/out/`: every machine's tree and manifest.
    pub fn out_root(&self) -> PathBuf {
        self.root.join("out")
    }

    /// `.lab/out/NAME/`
    pub fn out_dir(&self, machine: &str) -> PathBuf {
        self.out_root().join(machine)
    }

    /// `.lab/out/NAME.manifest`
    pub fn manifest_path(&self, machine: &str) -> PathBuf {
        self.out_root().join(format!("{machine}{MANIFEST_SUFFIX}"))
    }

    /// The machine whose manifest a file of `.lab/out/` is, if it is one.
    pub fn manifest_machine(file_name: &str) -> Option<&str> {
        file_name.strip_suffix(MANIFEST_SUFFIX)
    }

    /// `.lab/stage/`
    pub fn stage_root(&self) -> PathBuf {
        self.root.join("stage")
    }

    /// `.lab/stage/NAME/`
    pub fn stage_dir(&self, machine: &str) -> PathBuf {
        self.stage_root().join(machine)
    }

    /// `.lab/state/`
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    /// `.lab/sync/NAME.applied`: what lab last saw applied on the machine.
    pub fn applied_path(&self, machine: &str) -> PathBuf {
        self.root.join("sync").join(format!("{machine}.applied"))
    }

    /// `.lab/sync/NAME.last`: the generation lab last put on the machine
    /// and when (`lab ls`).
    pub fn last_sync_path(&self, machine: &str) -> PathBuf {
        self.root.join("sync").join(format!("{machine}.last"))
    }

    /// `.lab/sync/NAME.libs`: the digests of the executor's libraries
    /// the machine said it stored, a line each.
    pub fn libraries_path(&self, machine: &str) -> PathBuf {
        self.root.join("sync").join(format!("{machine}.libs"))
    }

    /// Where the control sockets of SSH connections shared across runs
    /// live: `runtime_dir/lab-ssh` (the caller passes
    /// `$XDG_RUNTIME_DIR`, private to the user), else `.lab/ssh`.
    pub fn ssh_control_dir(&self, runtime_dir: Option<&Path>) -> PathBuf {
        match runtime_dir {
            Some(r) if r.is_absolute() => r.join("lab-ssh"),
            _ => self.root.join("ssh"),
        }
    }

    /// `.lab/images/blobs/`: the files of every image, by sha256.
    pub fn image_blobs_dir(&self) -> PathBuf {
        self.root.join("images").join("blobs")
    }

    /// `.lab/images/trees/ID.tree`: an image unpacked into a tree.
    pub fn image_tree_path(&self, id: &str) -> PathBuf {
        self.root
            .join("images")
            .join("trees")
            .join(format!("{id}.tree"))
    }

    /// `.lab/images/NAME.source`: the tree the image NAME's source gave,
    /// under a signature of the source's stat.
    pub fn image_source_path(&self, image: &str) -> PathBuf {
        self.root.join("images").join(format!("{image}.source"))
    }

    /// `.lab/machines/known_hosts`: the host keys of container machines
    /// (lab.toml's `on = "HOST"`), pinned when lab created them.
    pub fn machines_known_hosts(&self) -> PathBuf {
        self.root.join("machines").join("known_hosts")
    }

    /// `.lab/console.sqlite`: the web console's accounts, namespaces,
    /// roles, sessions and audit log.
    pub fn console_db_path(&self) -> PathBuf {
        self.root.join("console.sqlite")
    }

    /// `.lab/watch.log`: the progress of the running (or last) `lab
    /// watch`, appended cycle by cycle, read by the web console.
    pub fn watch_log_path(&self) -> PathBuf {
        self.root.join("watch.log")
    }

    /// `.lab/facts/NAME.json`
    pub fn facts_path(&self, machine: &str) -> PathBuf {
        self.root.join("facts").join(format!("{machine}.json"))
    }
}

const MANIFEST_SUFFIX: &str = ".manifest";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let l = LabDir::of_project(Path::new("/p"));
        assert_eq!(l.out_dir("web"), Path::new("/p/.lab/out/web"));
        assert_eq!(
            l.manifest_path("web"),
            Path::new("/p/.lab/out/web.manifest")
        );
        assert_eq!(l.stage_dir("web"), Path::new("/p/.lab/stage/web"));
        assert_eq!(l.facts_path("web"), Path::new("/p/.lab/facts/web.json"));
        assert_eq!(LabDir::manifest_machine("web.manifest"), Some("web"));
        assert_eq!(LabDir::manifest_machine("web"), None);
    }
}
