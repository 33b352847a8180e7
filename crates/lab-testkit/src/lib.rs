//! Test support shared by lab's test suites: a throwaway project directory
//! with helpers to write sources, and an exact, comparable listing of a
//! directory tree (paths, kinds, modes, contents, link targets). Used only
//! by tests; never by lab itself.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A lab project in a temporary directory, deleted on drop.
pub struct TestLab {
    dir: tempfile::TempDir,
}

impl Default for TestLab {
    fn default() -> Self {
        Self::new()
    }
}

impl TestLab {
    pub fn new() -> TestLab {
        TestLab {
            dir: tempfile::Builder::new()
                .prefix("lab-test.")
                .tempdir()
                .expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Write a file (creating parents), mode 0644.
    pub fn file(&self, rel: &str, content: &str) -> &Self {
        self.bytes(rel, content.as_bytes())
    }

    pub fn bytes(&self, rel: &str, content: &[u8]) -> &Self {
        let p = self.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        if p.is_symlink() {
            std::fs::remove_file(&p).unwrap();
        }
        std::fs::write(&p, content).unwrap();
        self
    }

    pub fn symlink(&self, rel: &str, target: &str) -> &Self {
        let p = self.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(target, &p).unwrap();
        self
    }

    pub fn dir(&self, rel: &str) -> &Self {
        std::fs::create_dir_all(self.join(rel)).unwrap();
        self
    }

    pub fn chmod(&self, rel: &str, mode: u32) -> &Self {
        std::fs::set_permissions(self.join(rel), std::fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    pub fn remove(&self, rel: &str) -> &Self {
        let p = self.join(rel);
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(p).unwrap();
        } else {
            std::fs::remove_file(p).unwrap();
        }
        self
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.join(rel)).unwrap()
    }

    /// Copy the project's sources (everything but `.lab/`) into a new
    /// TestLab: the starting point of a clean build.
    pub fn copy_sources(&self) -> TestLab {
        let to = TestLab::new();
        for e in walkdir::WalkDir::new(self.path()).min_depth(1) {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(self.path()).unwrap();
            if rel.starts_with(".lab") {
                continue;
            }
            let dst = to.path().join(rel);
            let ft = e.file_type();
            if ft.is_dir() {
                std::fs::create_dir_all(&dst).unwrap();
                let mode = e.metadata().unwrap().permissions().mode();
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode)).unwrap();
            } else if ft.is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), &dst).unwrap();
            } else {
                std::fs::copy(e.path(), &dst).unwrap();
            }
        }
        to
    }
}

/// Every entry under `root`, one per line, sorted: `path kind mode` plus the
/// content (files, escaped) or target (symlinks). Two trees are identical
/// exactly when their listings are equal.
pub fn tree_listing(root: &Path) -> String {
    let mut out = String::new();
    if !root.exists() {
        return "(missing)\n".into();
    }
    // (an entry that vanishes while it is listed, as a sync or watch
    // writing into the tree renames its staged files, is left out: a
    // caller polling for a tree sees it whole on its next look)
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let mut entries: Vec<_> = walkdir::WalkDir::new(root)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter()
        .filter_map(|e| match e {
            Ok(e) => Some(e),
            Err(e) if e.io_error().is_some_and(gone) => None,
            Err(e) => panic!("{e}"),
        })
        .collect();
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    for e in entries {
        let rel = e.path().strip_prefix(root).unwrap().display().to_string();
        let meta = match std::fs::symlink_metadata(e.path()) {
            Ok(m) => m,
            Err(e) if gone(&e) => continue,
            Err(e) => panic!("{rel}: {e}"),
        };
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        if ft.is_symlink() {
            match std::fs::read_link(e.path()) {
                Ok(t) => writeln!(out, "{rel} -> {}", t.display()).unwrap(),
                Err(e) if gone(&e) => continue,
                Err(e) => panic!("{rel}: {e}"),
            }
        } else if ft.is_dir() {
            writeln!(out, "{rel}/ {mode:04o}").unwrap();
        } else {
            match std::fs::read(e.path()) {
                Ok(data) => {
                    writeln!(out, "{rel} {mode:04o} {:?}", String::from_utf8_lossy(&data)).unwrap()
                }
                Err(e) if gone(&e) => continue,
                Err(e) => panic!("{rel}: {e}"),
            }
        }
    }
    out
}

/// The `lab` binary, run in `t` with `args` (no colour).
pub fn lab(t: &TestLab, args: &[&str]) -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("lab").unwrap();
    c.current_dir(t.path()).env("NO_COLOR", "1").args(args);
    c
}

/// Run `lab` in `t` and return (exit code, stdout, stderr).
pub fn run(t: &TestLab, args: &[&str]) -> (i32, String, String) {
    let out = lab(t, args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// An image layer as tests write one: a tar of `items`, each (path, type,
/// mode, data; for a symlink or hard link the target), owned by root, with
/// mtime 0.
pub fn tar_layer<P, D>(items: impl IntoIterator<Item = (P, tar::EntryType, u32, D)>) -> Vec<u8>
where
    P: AsRef<str>,
    D: AsRef<[u8]>,
{
    let mut b = tar::Builder::new(Vec::new());
    for (path, t, mode, data) in items {
        let (path, data) = (path.as_ref(), data.as_ref());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(t);
        h.set_mode(mode);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match t {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                h.set_size(0);
                b.append_link(&mut h, path, std::str::from_utf8(data).unwrap())
                    .unwrap();
            }
            _ => {
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}
