//! Listing source roots (`layers/NAME/`, `machines/NAME/`) with `lstat`, and
//! hashing only the files whose stat changed since the previous scan.

use crate::MachineError;
use globset::GlobSet;
use lab_graph::{Digest, Fingerprint, Hasher, Stat};
use rayon::prelude::*;
use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum SrcKind {
    File,
    Dir,
    Symlink,
}

/// One source root's fingerprints, as its file under `.lab/state/roots/` keeps them.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RootState {
    pub exists: bool,
    /// When the scan that produced these fingerprints started (ns since
    /// the epoch); see [`Fingerprint::reusable`].
    pub scanned_at_ns: i64,
    pub tree: Digest,
    pub listing: Digest,
    pub entries: HashMap<String, (SrcKind, Fingerprint)>,
}

/// One file, directory or symlink of a source root.
#[derive(Clone, Debug)]
pub struct SrcEntry {
    pub kind: SrcKind,
    pub stat: Stat,
    /// sha256 of the content (file), of the target text (symlink), or of
    /// nothing (directory).
    pub digest: Digest,
}

impl SrcEntry {
    pub fn perm(&self) -> u32 {
        self.stat.mode & 0o7777
    }
}

/// A scanned source root.
#[derive(Clone, Debug)]
pub struct RootScan {
    /// `layers/nginx`, `machines/web1`: also its path under the project.
    pub name: String,
    pub dir: PathBuf,
    pub exists: bool,
    pub entries: HashMap<String, SrcEntry>,
    /// Digest over every entry's path, kind, mode and content.
    pub tree: Digest,
    /// Paths whose digest or mode changed, appeared or disappeared since the
    /// previous scan.
    pub changed: Vec<String>,
    /// Digest over every entry's path and kind: equal listings resolve to
    /// equal layer stacks.
    pub listing: Digest,
    /// How many entries were read and hashed in this scan.
    pub hashed: usize,
    /// `tree` and `listing` are out of date (see [`RootScan::update`]).
    pub digests_stale: bool,
}

struct Listed {
    rel: String,
    stat: Stat,
    kind: SrcKind,
}

/// File names that are never sources: editor droppings.
pub fn default_ignores() -> GlobSet {
    let mut b = globset::GlobSetBuilder::new();
    for g in [
        "*.swp",
        "*.swx",
        "*.swo",
        "*~",
        ".#*",
        "#*#",
        ".DS_Store",
        "4913",
    ] {
        b.add(globset::Glob::new(g).expect("valid glob"));
    }
    b.build().expect("valid globs")
}

/// Every entry below `dir` (its path relative to the root is `rel`). The
/// walk goes one depth at a time, each depth's directories in parallel, and
/// never recurses: a tree thousands of directories deep costs no stack.
fn list_dir(dir: &Path, rel: &str, ignore: &GlobSet) -> Result<Vec<Listed>, MachineError> {
    let mut all = Vec::new();
    let mut level = vec![(dir.to_path_buf(), rel.to_string())];
    while !level.is_empty() {
        let listed: Vec<Listing> = level
            .par_iter()
            .map(|(p, r)| list_one(p, r, ignore))
            .collect::<Result<_, _>>()?;
        level = Vec::new();
        for (here, subdirs) in listed {
            all.extend(here);
            level.extend(subdirs);
        }
    }
    Ok(all)
}

/// The entries of one directory, and its subdirectories to list next.
type Listing = (Vec<Listed>, Vec<(PathBuf, String)>);

fn list_one(dir: &Path, rel: &str, ignore: &GlobSet) -> Result<Listing, MachineError> {
    let rd = std::fs::read_dir(dir).map_err(MachineError::io(dir))?;
    let mut here = Vec::new();
    let mut subdirs = Vec::new();
    for ent in rd {
        let ent = ent.map_err(MachineError::io(dir))?;
        let name = ent.file_name();
        if ignore.is_match(&name) {
            continue;
        }
        let name_str = name.to_str().ok_or_else(|| MachineError::NotUtf8 {
            path: dir.join(&name),
        })?;
        // DirEntry::metadata does not follow symlinks (lstat).
        let meta = ent
            .metadata()
            .map_err(|e| MachineError::io(&dir.join(&name))(e))?;
        let mut r = String::with_capacity(rel.len() + 1 + name_str.len());
        if !rel.is_empty() {
            r.push_str(rel);
            r.push('/');
        }
        r.push_str(name_str);
        let ft = meta.file_type();
        if ft.is_dir() {
            subdirs.push((dir.join(&name), r.clone()));
        } else if !ft.is_file() && !ft.is_symlink() {
            return Err(MachineError::SpecialFile {
                path: dir.join(&name),
            });
        }
        here.push(Listed {
            rel: r,
            stat: stat_of(&meta),
            kind: kind_of(&meta),
        });
    }
    Ok((here, subdirs))
}

pub fn stat_of(meta: &Metadata) -> Stat {
    Stat {
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        size: meta.size(),
        ino: meta.ino(),
        mode: meta.mode(),
    }
}

pub fn kind_of(meta: &Metadata) -> SrcKind {
    let ft = meta.file_type();
    if ft.is_dir() {
        SrcKind::Dir
    } else if ft.is_symlink() {
        SrcKind::Symlink
    } else {
        SrcKind::File
    }
}

/// Content digest of a source, read from disk now.
pub fn hash_source(path: &Path, kind: SrcKind) -> Result<Digest, MachineError> {
    Ok(match kind {
        SrcKind::Dir => Digest::of(b""),
        SrcKind::File => Digest::of(&std::fs::read(path).map_err(MachineError::io(path))?),
        SrcKind::Symlink => {
            let t = std::fs::read_link(path).map_err(MachineError::io(path))?;
            Digest::of(t.as_os_str().as_bytes())
        }
    })
}

pub fn link_target(path: &Path) -> Result<String, MachineError> {
    let t = std::fs::read_link(path).map_err(MachineError::io(path))?;
    t.into_os_string()
        .into_string()
        .map_err(|_| MachineError::NotUtf8 {
            path: path.to_path_buf(),
        })
}

/// Scan one root, reusing the digests of `prev` for files whose stat did not
/// change (see [`Fingerprint::reusable`]).
///
/// `prev` is taken: its entries are let go one by one as the new ones
/// are made, so a scan does not hold two full sets of a large root.
pub fn scan_root(
    project: &Path,
    name: &str,
    prev: Option<RootState>,
    ignore: &GlobSet,
) -> Result<RootScan, MachineError> {
    let dir = project.join(name);
    let exists = match std::fs::symlink_metadata(&dir) {
        Ok(m) => m.is_dir(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(MachineError::io(&dir)(e)),
    };
    let listed = if exists {
        list_dir(&dir, "", ignore)?
    } else {
        Vec::new()
    };
    let prev_scanned_at = prev.as_ref().map_or(i64::MIN, |p| p.scanned_at_ns);
    let results: Vec<(String, SrcEntry, bool)> = listed
        .into_par_iter()
        .map(|l| {
            let (stat, kind) = (l.stat, l.kind);
            let old = prev.as_ref().and_then(|p| p.entries.get(&l.rel));
            let reuse = old.filter(|(k, fp)| *k == kind && fp.reusable(&stat, prev_scanned_at));
            let (digest, fresh) = match reuse {
                Some((_, fp)) => (fp.digest, false),
                None => (hash_source(&dir.join(&l.rel), kind)?, true),
            };
            Ok((l.rel, SrcEntry { kind, stat, digest }, fresh))
        })
        .collect::<Result<_, MachineError>>()?;

    let mut prev = prev;
    let mut entries = HashMap::with_capacity(results.len());
    let mut changed = Vec::new();
    let mut listing_changed = prev
        .as_ref()
        .is_none_or(|p| p.entries.len() != results.len());
    let mut hashed = 0;
    for (rel, e, fresh) in results {
        let old = prev.as_mut().and_then(|p| p.entries.remove(&rel));
        if fresh {
            hashed += 1;
            match old {
                Some((k, fp)) => {
                    if k != e.kind {
                        listing_changed = true;
                    }
                    if k != e.kind || fp.digest != e.digest || fp.stat.mode != e.stat.mode {
                        changed.push(rel.clone());
                    }
                }
                None => {
                    listing_changed = true;
                    changed.push(rel.clone());
                }
            }
        }
        entries.insert(rel, e);
    }
    // (what is left of the previous entries is what is gone)
    if let Some(p) = &mut prev {
        for (rel, _) in p.entries.drain() {
            listing_changed = true;
            changed.push(rel);
        }
    }
    let listing_changed = listing_changed || prev.as_ref().is_some_and(|p| p.exists != exists);
    let (tree, listing) = match prev {
        Some(p) if changed.is_empty() && !listing_changed => (p.tree, p.listing),
        Some(p) if !listing_changed => (tree_digest(exists, &entries).0, p.listing),
        _ => tree_digest(exists, &entries),
    };
    changed.sort();
    Ok(RootScan {
        name: name.to_string(),
        dir,
        exists,
        entries,
        tree,
        changed,
        listing,
        hashed,
        digests_stale: false,
    })
}

/// The tree digest (paths, kinds, modes, contents) and the listing digest
/// (paths and kinds) of a root.
fn tree_digest(exists: bool, entries: &HashMap<String, SrcEntry>) -> (Digest, Digest) {
    let mut paths: Vec<(&String, &SrcEntry)> = entries.iter().collect();
    paths.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut tree = Hasher::new("lab-tree-v1");
    let mut listing = Hasher::new("lab-listing-v1");
    tree.u64(exists as u64);
    listing.u64(exists as u64);
    for (p, e) in paths {
        tree.str(p).u64(e.stat.mode as u64).digest(&e.digest);
        listing.str(p).u64(e.kind as u64);
    }
    (tree.finish(), listing.finish())
}

impl RootScan {
    /// A root as a previous scan recorded it (trusting the record).
    pub fn from_state(project: &Path, name: &str, st: &RootState) -> RootScan {
        RootScan {
            name: name.to_string(),
            dir: project.join(name),
            exists: st.exists,
            entries: st
                .entries
                .iter()
                .map(|(k, (kind, fp))| {
                    (
                        k.clone(),
                        SrcEntry {
                            kind: *kind,
                            stat: fp.stat,
                            digest: fp.digest,
                        },
                    )
                })
                .collect(),
            tree: st.tree,
            changed: Vec::new(),
            listing: st.listing,
            hashed: 0,
            digests_stale: false,
        }
    }

    /// Bring the entries at `rels` (and, for directories, everything below
    /// them) up to date with the disk; `changed` then lists exactly what
    /// changed. Paths named by events are always read again: an event says
    /// the file changed even when its stat looks the same. Returns whether
    /// the listing (paths and kinds) changed. The tree and listing digests
    /// are recomputed.
    pub fn update(&mut self, rels: &[String], ignore: &GlobSet) -> Result<bool, MachineError> {
        self.changed.clear();
        self.hashed = 0;
        let mut listing_changed = false;
        let exists = std::fs::symlink_metadata(&self.dir).is_ok_and(|m| m.is_dir());
        if exists != self.exists {
            listing_changed = true;
            self.exists = exists;
        }
        let mut rels: Vec<&String> = rels.iter().collect();
        rels.sort();
        rels.dedup();
        for rel in rels {
            if rel.split('/').any(|c| ignore.is_match(c)) {
                continue;
            }
            let path = self.dir.join(rel);
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => Some(m),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => None,
                Err(e) => return Err(MachineError::io(&path)(e)),
            };
            let old_kind = self.entries.get(rel.as_str()).map(|e| e.kind);
            let old_ino = self.entries.get(rel.as_str()).map(|e| e.stat.ino);
            let new_kind = meta.as_ref().map(kind_of);
            // Whatever was below a path that is no longer the same
            // directory is gone (it may come back from the walk below).
            if old_kind == Some(SrcKind::Dir)
                && (new_kind != Some(SrcKind::Dir) || old_ino != meta.as_ref().map(|m| m.ino()))
            {
                let prefix = format!("{rel}/");
                let below: Vec<String> = self
                    .entries
                    .keys()
                    .filter(|k| k.starts_with(&prefix))
                    .cloned()
                    .collect();
                for k in below {
                    self.entries.remove(&k);
                    self.changed.push(k);
                    listing_changed = true;
                }
            }
            let Some(meta) = meta else {
                if self.entries.remove(rel.as_str()).is_some() {
                    self.changed.push(rel.clone());
                    listing_changed = true;
                }
                continue;
            };
            let ft = meta.file_type();
            if !ft.is_dir() && !ft.is_file() && !ft.is_symlink() {
                return Err(MachineError::SpecialFile { path });
            }
            let kind = kind_of(&meta);
            let entry = SrcEntry {
                kind,
                stat: stat_of(&meta),
                digest: hash_source(&path, kind)?,
            };
            self.hashed += 1;
            let same = self.entries.get(rel.as_str()).is_some_and(|e| {
                e.kind == entry.kind && e.digest == entry.digest && e.stat.mode == entry.stat.mode
            });
            if old_kind != Some(kind) {
                listing_changed = true;
            }
            if !same {
                self.changed.push(rel.clone());
            }
            self.entries.insert(rel.clone(), entry);
            // A directory that is new here (created, renamed in): its content.
            if kind == SrcKind::Dir
                && (old_kind != Some(SrcKind::Dir) || old_ino != Some(meta.ino()))
            {
                for l in list_dir(&path, rel, ignore)? {
                    let kind = l.kind;
                    let e = SrcEntry {
                        kind,
                        stat: l.stat,
                        digest: hash_source(&self.dir.join(&l.rel), kind)?,
                    };
                    self.hashed += 1;
                    self.changed.push(l.rel.clone());
                    self.entries.insert(l.rel, e);
                    listing_changed = true;
                }
            }
        }
        self.changed.sort();
        self.changed.dedup();
        if !self.changed.is_empty() || listing_changed {
            // Recomputed on demand ([`RootScan::refresh_digests`]): a watch
            // cycle must not pay a sort of every path.
            self.digests_stale = true;
        }
        Ok(listing_changed)
    }

    /// Recompute the tree and listing digests after [`RootScan::update`].
    pub fn refresh_digests(&mut self) {
        if self.digests_stale {
            let (tree, listing) = tree_digest(self.exists, &self.entries);
            self.tree = tree;
            self.listing = listing;
            self.digests_stale = false;
        }
    }

    pub fn to_state(&self, scanned_at_ns: i64) -> RootState {
        RootState {
            exists: self.exists,
            scanned_at_ns,
            tree: self.tree,
            listing: self.listing,
            entries: self
                .entries
                .iter()
                .map(|(k, e)| {
                    (
                        k.clone(),
                        (
                            e.kind,
                            Fingerprint {
                                stat: e.stat,
                                digest: e.digest,
                            },
                        ),
                    )
                })
                .collect(),
        }
    }

    pub fn path_of(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}
