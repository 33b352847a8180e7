//! Writing a machine's output tree under `.lab/out/NAME/`.
//!
//! A build first stages every new file and symlink under
//! `.lab/stage/NAME/` and only when all of them are there (a full disk or
//! an unreadable source fails the build before the tree is touched) does it
//! switch: remove what is gone, create directories, rename each staged
//! entry over its output (rename(2): a reader sees the old entry or the
//! new). A build that fails before the switch leaves the previous outputs
//! as they were; whatever a killed build left in the stage is removed by
//! the next one. Only paths that the previous manifest lists are ever
//! removed; a directory holding anything else is left alone.
//!
//! The manifest is written after the switch, so every entry of a tree that
//! lab finished has its ctime at or before the manifest's mtime: an entry
//! changed later (by hand, by a tool, by a build killed mid-switch) is
//! found by [`changed_since`] without any recorded state.

use crate::MachineError;
use lab_manifest::{Entry, EntryKind};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Prefix of the temporary names earlier versions of lab used inside the
/// output tree; such a leftover is lab's own and is removed.
const OLD_TMP_PREFIX: &str = ".lab~";

pub struct OutTree {
    pub root: PathBuf,
    stage: PathBuf,
    stage_ready: OnceLock<Result<(), String>>,
    counter: AtomicU64,
    /// Staged files and symlinks: (staged path, output path).
    staged: Mutex<Vec<(PathBuf, PathBuf)>>,
    /// Directory entries to create or fix at the switch.
    dirs: Mutex<Vec<Entry>>,
}

impl Drop for OutTree {
    fn drop(&mut self) {
        self.discard();
    }
}

impl OutTree {
    /// The tree at `root`, staging under `stage`.
    pub fn new(root: PathBuf, stage: PathBuf) -> OutTree {
        OutTree {
            root,
            stage,
            stage_ready: OnceLock::new(),
            counter: AtomicU64::new(0),
            staged: Mutex::new(Vec::new()),
            dirs: Mutex::new(Vec::new()),
        }
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

    /// Create (or fix the mode of) a directory entry now. Anything but a
    /// real directory at that path is replaced: lab created it (it was in
    /// the old manifest), or the tree is lab's own.
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
        let mode = std::fs::Permissions::from_mode(e.mode);
        std::fs::set_permissions(&p, mode).map_err(MachineError::io(&p))
    }

    /// The stage directory, emptied of what a killed build left, once per
    /// build.
    fn stage_dir(&self) -> Result<&Path, MachineError> {
        let ready = self.stage_ready.get_or_init(|| {
            match std::fs::remove_dir_all(&self.stage) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.to_string()),
            }
            std::fs::create_dir_all(&self.stage).map_err(|e| e.to_string())
        });
        match ready {
            Ok(()) => Ok(&self.stage),
            Err(e) => Err(MachineError::io(&self.stage)(std::io::Error::other(
                e.clone(),
            ))),
        }
    }

    /// Stage a file or symlink entry (`bytes` is a file's content); a
    /// directory entry is remembered. Nothing in the tree changes before
    /// [`OutTree::commit`].
    pub fn write(&self, e: &Entry, bytes: &[u8]) -> Result<(), MachineError> {
        let p = self.path(&e.path);
        if let EntryKind::Dir = e.kind {
            self.dirs.lock().expect("not poisoned").push(e.clone());
            return Ok(());
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.stage_dir()?.join(n.to_string());
        let staged = match &e.kind {
            EntryKind::File { .. } => (|| {
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(bytes)?;
                f.set_permissions(std::fs::Permissions::from_mode(e.mode))
            })(),
            EntryKind::Symlink { target } => std::os::unix::fs::symlink(target, &tmp),
            EntryKind::Dir => unreachable!("handled above"),
        };
        if let Err(err) = staged {
            let _ = std::fs::remove_file(&tmp);
            return Err(MachineError::io(&p)(err));
        }
        self.staged.lock().expect("not poisoned").push((tmp, p));
        Ok(())
    }

    /// The switch: create the remembered directories (parents first), then
    /// rename every staged entry into place.
    pub fn commit(&self) -> Result<(), MachineError> {
        let mut dirs = std::mem::take(&mut *self.dirs.lock().expect("not poisoned"));
        dirs.sort_by(|a, b| a.path.cmp(&b.path));
        for d in &dirs {
            self.make_dir(d)?;
        }
        let staged = std::mem::take(&mut *self.staged.lock().expect("not poisoned"));
        let mut failed = None;
        for (i, (tmp, dest)) in staged.iter().enumerate() {
            let dir = dest.parent().expect("entry paths are below the root");
            if let Err(e) = self
                .check_parent(dir)
                .and_then(|()| std::fs::rename(tmp, dest).map_err(MachineError::io(dest)))
            {
                failed = Some((i, e));
                break;
            }
        }
        match failed {
            None => {
                if self.stage_ready.get().is_some() {
                    let _ = std::fs::remove_dir(&self.stage);
                }
                Ok(())
            }
            Some((i, e)) => {
                for (tmp, _) in &staged[i..] {
                    let _ = std::fs::remove_file(tmp);
                }
                Err(e)
            }
        }
    }

    /// Remove what a killed build left in the stage (before any staging).
    pub fn remove_leftover_stage(&self) {
        if self.stage_ready.get().is_none() && self.stage.exists() {
            let _ = std::fs::remove_dir_all(&self.stage);
        }
    }

    /// Remove the temporary files earlier versions of lab left in the tree
    /// (a whole walk; only after [`changed_since`] found a change).
    pub fn remove_old_temporaries(&self) {
        let mut level = vec![self.root.clone()];
        while let Some(dir) = level.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for ent in rd.flatten() {
                let Ok(ft) = ent.file_type() else { continue };
                if ft.is_dir() {
                    level.push(ent.path());
                } else if ent
                    .file_name()
                    .as_encoded_bytes()
                    .starts_with(OLD_TMP_PREFIX.as_bytes())
                {
                    let _ = std::fs::remove_file(ent.path());
                }
            }
        }
    }

    /// Forget what was staged and not committed.
    pub fn discard(&self) {
        let staged = std::mem::take(&mut *self.staged.lock().expect("not poisoned"));
        for (tmp, _) in staged {
            let _ = std::fs::remove_file(tmp);
        }
        self.dirs.lock().expect("not poisoned").clear();
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

/// Give each entry the owner and group `[[owners]]` says (symlinks keep
/// none); whether any entry's changed.
pub(crate) fn apply_owners(
    entries: &mut BTreeMap<String, Entry>,
    rules: &[lab_config::OwnerRule],
) -> bool {
    let mut changed = false;
    for e in entries.values_mut() {
        let (owner, group) = match e.kind {
            EntryKind::Symlink { .. } => (None, None),
            _ if rules.is_empty() => (None, None),
            _ => lab_config::owner_of(rules, &e.path),
        };
        if e.owner != owner || e.group != group {
            e.owner = owner;
            e.group = group;
            changed = true;
        }
    }
    changed
}

/// Whether any entry of the output tree at `root` (the root included)
/// changed after `t_ns` (ctime, ns since the epoch), or the tree is not
/// there. One lstat per entry, a depth at a time; stops at the first
/// change.
pub fn changed_since(root: &Path, t_ns: i64) -> bool {
    let ctime = |m: &std::fs::Metadata| m.ctime() * 1_000_000_000 + m.ctime_nsec();
    match std::fs::symlink_metadata(root) {
        Ok(m) if m.is_dir() && ctime(&m) <= t_ns => {}
        _ => return true,
    }
    let mut level = vec![root.to_path_buf()];
    while !level.is_empty() {
        let found: Vec<Option<Vec<PathBuf>>> = level
            .par_iter()
            .map(|dir| {
                let mut subdirs = Vec::new();
                for ent in std::fs::read_dir(dir).ok()? {
                    let ent = ent.ok()?;
                    let meta = ent.metadata().ok()?;
                    if ctime(&meta) > t_ns {
                        return None;
                    }
                    if meta.is_dir() {
                        subdirs.push(ent.path());
                    }
                }
                Some(subdirs)
            })
            .collect();
        level = Vec::new();
        for f in found {
            match f {
                Some(subdirs) => level.extend(subdirs),
                None => return true,
            }
        }
    }
    false
}

/// Rewrite in place, in the manifest file at `path`, the lines of entries
/// whose path is already listed there and whose new line has the length of
/// the old one (a file's new content of the same size width, a mode, a
/// symlink target of the same length): what a one-file edit changes, so it
/// writes a line, not the machine's whole manifest (7 MB for 40k entries).
///
/// The caller knows the file is the manifest of the entries it had (its
/// stat matched the state, or this process wrote it). `Ok(false)`: some
/// line cannot be patched (new length, path not listed, a line that is not
/// an entry): nothing was written, write the whole manifest. The lines are
/// found by binary search (the manifest is sorted by path), a few `pread`s
/// each. A crash during the writes leaves every path as it was (only the
/// bytes after a path change) and the manifest's new mtime, which no saved
/// state vouches for: the next build writes it whole.
pub(crate) fn patch_manifest(path: &Path, changed: &[&Entry]) -> std::io::Result<bool> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let lines = Lines {
        f: &f,
        size: f.metadata()?.len(),
    };
    let Some((_, first)) = lines.line_at(0)? else {
        return Ok(false);
    };
    let mut writes: Vec<(u64, String)> = Vec::new();
    for e in changed {
        let Some((at, old)) = lines.find(first, &e.path)? else {
            return Ok(false);
        };
        let new = lab_manifest::entry_line(e);
        if new.len() != old.len() {
            return Ok(false);
        }
        // (written even when equal: the manifest's mtime must follow the
        // outputs' ctimes, see [`changed_since`])
        writes.push((at, new));
    }
    for (at, bytes) in writes {
        f.write_all_at(bytes.as_bytes(), at)?;
    }
    Ok(true)
}

/// Reading lines of a file by offset.
struct Lines<'a> {
    f: &'a std::fs::File,
    size: u64,
}

impl Lines<'_> {
    /// The line starting at `at` (without its newline) and where the next
    /// one starts; `None` at the end of the file.
    fn line_at(&self, at: u64) -> std::io::Result<Option<(Vec<u8>, u64)>> {
        use std::os::unix::fs::FileExt;
        if at >= self.size {
            return Ok(None);
        }
        let mut line = Vec::new();
        let mut buf = [0u8; 512];
        let mut pos = at;
        while pos < self.size {
            let n = self.f.read_at(&mut buf, pos)?;
            if n == 0 {
                break;
            }
            if let Some(i) = buf[..n].iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&buf[..i]);
                return Ok(Some((line, pos + i as u64 + 1)));
            }
            line.extend_from_slice(&buf[..n]);
            pos += n as u64;
        }
        Ok(Some((line, self.size)))
    }

    /// Where the first line starting at or after `at` starts (`at > 0`).
    fn next_start(&self, at: u64) -> std::io::Result<u64> {
        // the line holding byte at-1 ends somewhere at or after it
        Ok(match self.line_at(at - 1)? {
            Some((_, next)) => next,
            None => self.size,
        })
    }

    /// The entry line of `path` among the lines from `first` on (sorted by
    /// path): its offset and bytes.
    fn find(&self, first: u64, path: &str) -> std::io::Result<Option<(u64, Vec<u8>)>> {
        // lines before `lo` hold smaller paths, lines from `hi` on greater
        // or equal ones; both are line starts (or the end)
        let (mut lo, mut hi) = (first, self.size);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let s = if mid == lo { lo } else { self.next_start(mid)? };
            // no line starts in [mid, hi): look at the one at lo
            let s = if s >= hi { lo } else { s };
            let Some((line, end)) = self.line_at(s)? else {
                return Ok(None);
            };
            let Some(p) = lab_manifest::line_path(&line) else {
                return Ok(None);
            };
            if p.as_str() < path {
                lo = end;
            } else {
                hi = s;
            }
        }
        let Some((line, _)) = self.line_at(lo)? else {
            return Ok(None);
        };
        Ok((lab_manifest::line_path(&line).as_deref() == Some(path)).then_some((lo, line)))
    }
}

#[cfg(test)]
mod patch_tests {
    use super::*;
    use lab_core::Digest;
    use lab_manifest::Manifest;

    fn file(path: &str, content: &str, mode: u32) -> Entry {
        Entry {
            path: path.to_string(),
            mode,
            kind: EntryKind::File {
                size: content.len() as u64,
                sha256: Digest::of(content.as_bytes()),
            },
            owner: None,
            group: None,
        }
    }

    /// Random manifests, random edits of their entries: a patch, when it
    /// is made, gives exactly the text of the new manifest; when refused,
    /// leaves the file as it was.
    #[test]
    fn patched_manifest_equals_the_whole_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.manifest");
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let (mut patched, mut refused) = (0, 0);
        for round in 0..300 {
            let mut m = Manifest::new("web1");
            let n = 1 + rnd(200);
            for i in 0..n {
                let name = match rnd(4) {
                    0 => format!("etc/d{}/f{i}", rnd(5)),
                    1 => format!("etc/q\"uote/{i}\n"),
                    2 => format!("usr/ünï/{i}"),
                    _ => format!("a{i}"),
                };
                let e = match rnd(3) {
                    0 => Entry {
                        path: name,
                        mode: 0o755,
                        kind: EntryKind::Dir,
                        owner: None,
                        group: None,
                    },
                    1 => Entry {
                        path: name,
                        mode: 0o777,
                        kind: EntryKind::Symlink {
                            target: format!("t{}", rnd(100)),
                        },
                        owner: None,
                        group: None,
                    },
                    _ => file(&name, &"x".repeat(rnd(150) as usize), 0o644),
                };
                m.insert(e);
            }
            std::fs::write(&path, m.to_text()).unwrap();
            let before = m.to_text();
            let paths: Vec<String> = m.entries.keys().cloned().collect();
            let mut changed = Vec::new();
            for _ in 0..1 + rnd(4) {
                let p = &paths[rnd(paths.len() as u64) as usize];
                let e = m.entries.get_mut(p).unwrap();
                match &mut e.kind {
                    EntryKind::Dir => e.mode = [0o700, 0o1777, 0o755][rnd(3) as usize],
                    EntryKind::Symlink { target } => *target = format!("u{}", rnd(100)),
                    EntryKind::File { .. } => {
                        *e = file(p, &"y".repeat(rnd(150) as usize), 0o640);
                    }
                }
                changed.push(p.clone());
            }
            // (a path not in the manifest is refused)
            if round % 17 == 0 {
                changed.push("zz/not-there".into());
            }
            let entries: Vec<Entry> = changed
                .iter()
                .map(|p| {
                    m.entries
                        .get(p)
                        .cloned()
                        .unwrap_or_else(|| file(p, "", 0o644))
                })
                .collect();
            let refs: Vec<&Entry> = entries.iter().collect();
            let on_disk = || std::fs::read_to_string(&path).unwrap();
            if patch_manifest(&path, &refs).unwrap() {
                assert_eq!(on_disk(), m.to_text(), "round {round}");
                patched += 1;
            } else {
                assert_eq!(on_disk(), before, "round {round}");
                refused += 1;
            }
        }
        // both branches ran
        assert!(
            patched > 50 && refused > 20,
            "{patched} patched, {refused} refused"
        );
    }

    #[test]
    fn a_symlink_in_place_of_the_manifest_is_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        let mut m = Manifest::new("web1");
        m.insert(file("etc/motd", "hello", 0o644));
        std::fs::write(&elsewhere, m.to_text()).unwrap();
        let link = dir.path().join("m.manifest");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let e = file("etc/motd", "HELLO", 0o644);
        assert!(patch_manifest(&link, &[&e]).is_err());
        assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), m.to_text());
    }
}
