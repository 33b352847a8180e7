//! A machine's layer stack: which source wins each output path.
//!
//! The stack is `layers/_` (if present), the machine's layers in order, then
//! `machines/NAME/`; later roots win per output path. A regular file named
//! `X.j2` is a template producing `X`. Everything under a top-level
//! `_partials/` is only for `{% include %}` and never output, nor is a
//! top-level `pods/` (pod sources: see `pods`). When the
//! winner of a path is not a directory, entries of lower roots below it are
//! shadowed (a machine can replace a directory with a symlink).

use crate::scan::{RootScan, SrcEntry, SrcKind};
use crate::MachineError;
use lab_graph::{Digest, Hasher};
use std::collections::{BTreeMap, HashMap, HashSet};

pub const PARTIALS_DIR: &str = "_partials";

/// The source that produces an output path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Winner {
    /// Index into the stack.
    pub root: usize,
    /// Path of the source inside its root (with `.j2` for templates).
    pub src: String,
    pub template: bool,
}

/// Output path and template flag for a source path, or `None` for sources
/// that are never output (partials).
pub fn output_path(rel: &str, kind: SrcKind) -> Option<(&str, bool)> {
    if rel == PARTIALS_DIR || rel.starts_with("_partials/") {
        return None;
    }
    // pod sources become Quadlet files (see `pods`), never `/pods/...`
    if rel
        .strip_prefix(lab_pods::SOURCE_DIR)
        .is_some_and(|r| r.is_empty() || r.starts_with('/'))
    {
        return None;
    }
    if kind == SrcKind::File {
        // `NAME.age` is NAME encrypted; `NAME.j2.age` an encrypted template
        let rel = match rel.strip_suffix(crate::secret::AGE_SUFFIX) {
            Some(stem) if !stem.is_empty() && !stem.ends_with('/') => stem,
            _ => rel,
        };
        if let Some(stem) = rel.strip_suffix(".j2") {
            if !stem.is_empty() && !stem.ends_with('/') {
                return Some((stem, true));
            }
        }
        return Some((rel, false));
    }
    Some((rel, false))
}

/// The layer stack of one machine, lowest first.
pub struct Stack<'a> {
    pub roots: Vec<&'a RootScan>,
}

impl<'a> Stack<'a> {
    /// Resolve every output path. Errors when one root has two sources for
    /// one output (`x` and `x.j2`).
    pub fn resolve(&self) -> Result<BTreeMap<String, Winner>, MachineError> {
        let mut outs: HashMap<&str, Winner> = HashMap::new();
        let mut dirs: HashSet<&str> = HashSet::new();
        for (ri, root) in self.roots.iter().enumerate() {
            let mut here: HashMap<&str, &str> = HashMap::new();
            for (rel, e) in &root.entries {
                let Some((out, template)) = output_path(rel, e.kind) else {
                    continue;
                };
                if out
                    .rsplit('/')
                    .next()
                    .is_some_and(|n| n == "." || n == "..")
                {
                    return Err(MachineError::DotOutput {
                        source_path: root.path_of(rel),
                        output: out.to_string(),
                    });
                }
                if let Some(other) = here.insert(out, rel) {
                    let (a, b) = if other < rel.as_str() {
                        (other, rel.as_str())
                    } else {
                        (rel.as_str(), other)
                    };
                    return Err(MachineError::Conflict {
                        output: out.to_string(),
                        first: root.path_of(a),
                        second: root.path_of(b),
                    });
                }
                if e.kind == SrcKind::Dir {
                    dirs.insert(out);
                }
                outs.insert(
                    out,
                    Winner {
                        root: ri,
                        src: rel.clone(),
                        template,
                    },
                );
            }
        }
        // Directories some root has that end up as a file or symlink: their
        // subtrees are shadowed.
        let shadowing: Vec<String> = dirs
            .iter()
            .filter(|d| {
                let w = &outs[*d];
                self.roots[w.root].entries[&w.src].kind != SrcKind::Dir
            })
            .map(|d| format!("{d}/"))
            .collect();
        let mut resolved: BTreeMap<String, Winner> =
            outs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        if !shadowing.is_empty() {
            resolved.retain(|k, _| !shadowing.iter().any(|s| k.starts_with(s.as_str())));
        }
        Ok(resolved)
    }

    /// The winner of one output path, without resolving the whole stack.
    /// Only valid when no root's listing changed since the last full
    /// resolution (then shadowing is unchanged too).
    pub fn winner_of(&self, out: &str) -> Option<Winner> {
        let candidates = [
            (format!("{out}.j2"), true),
            (format!("{out}.j2.age"), true),
            (format!("{out}.age"), false),
        ];
        for (ri, root) in self.roots.iter().enumerate().rev() {
            for (src, template) in &candidates {
                if let Some(e) = root.entries.get(src) {
                    if e.kind == SrcKind::File
                        && output_path(src, e.kind).is_some_and(|(o, _)| o == out)
                    {
                        return Some(Winner {
                            root: ri,
                            src: src.clone(),
                            template: *template,
                        });
                    }
                }
            }
            if let Some(e) = root.entries.get(out) {
                if output_path(out, e.kind).is_some() {
                    return Some(Winner {
                        root: ri,
                        src: out.to_string(),
                        template: false,
                    });
                }
            }
        }
        None
    }

    pub fn entry(&self, w: &Winner) -> &'a SrcEntry {
        &self.roots[w.root].entries[&w.src]
    }

    /// The root and entry found for an include name: the highest root that
    /// has exactly that path.
    pub fn include(&self, name: &str) -> Option<(usize, &'a SrcEntry)> {
        self.roots
            .iter()
            .enumerate()
            .rev()
            .find_map(|(ri, r)| r.entries.get(name).map(|e| (ri, e)))
    }

    /// Current digest of [`Key::Source`](lab_graph::Key::Source) for a
    /// winner: its source name, kind, mode and content, not its layer.
    pub fn source_digest(&self, w: &Winner) -> Digest {
        source_digest(&w.src, self.entry(w), self.entry(w).digest)
    }
}

/// See [`Stack::source_digest`]; `content` is passed separately so a digest
/// can be made for bytes just read.
pub fn source_digest(src: &str, e: &SrcEntry, content: Digest) -> Digest {
    Hasher::new("lab-source-v1")
        .str(src)
        .u64(e.stat.mode as u64 & 0o170000)
        .u64(e.perm() as u64)
        .digest(&content)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lab_graph::Stat;
    use std::path::PathBuf;

    fn root(name: &str, files: &[(&str, SrcKind)]) -> RootScan {
        RootScan {
            name: name.into(),
            dir: PathBuf::from(name),
            exists: true,
            entries: files
                .iter()
                .map(|(p, k)| {
                    (
                        p.to_string(),
                        SrcEntry {
                            kind: *k,
                            stat: Stat {
                                mtime_ns: 0,
                                size: 0,
                                ino: 0,
                                mode: match k {
                                    SrcKind::Dir => 0o040755,
                                    SrcKind::File => 0o100644,
                                    SrcKind::Symlink => 0o120777,
                                },
                            },
                            digest: Digest::of(p.as_bytes()),
                        },
                    )
                })
                .collect(),
            tree: Digest::ABSENT,
            changed: vec![],
            listing: Digest::ABSENT,
            hashed: 0,
            digests_stale: false,
        }
    }

    use SrcKind::*;

    #[test]
    fn later_roots_win_and_templates_drop_suffix() {
        let base = root(
            "layers/_",
            &[("etc", Dir), ("etc/motd", File), ("etc/a.j2", File)],
        );
        let m = root("machines/m", &[("etc", Dir), ("etc/motd.j2", File)]);
        let s = Stack {
            roots: vec![&base, &m],
        };
        let r = s.resolve().unwrap();
        assert_eq!(r.keys().collect::<Vec<_>>(), ["etc", "etc/a", "etc/motd"]);
        assert_eq!(
            r["etc/motd"],
            Winner {
                root: 1,
                src: "etc/motd.j2".into(),
                template: true
            }
        );
        assert_eq!(s.winner_of("etc/motd"), Some(r["etc/motd"].clone()));
        assert_eq!(s.winner_of("etc/a"), Some(r["etc/a"].clone()));
    }

    #[test]
    fn partials_are_not_outputs() {
        let base = root("layers/_", &[("_partials", Dir), ("_partials/x.j2", File)]);
        let s = Stack { roots: vec![&base] };
        assert!(s.resolve().unwrap().is_empty());
        assert_eq!(s.include("_partials/x.j2").unwrap().0, 0);
    }

    #[test]
    fn one_root_with_x_and_x_j2_is_a_conflict() {
        let base = root(
            "layers/_",
            &[("etc", Dir), ("etc/x", File), ("etc/x.j2", File)],
        );
        let e = Stack { roots: vec![&base] }.resolve().unwrap_err();
        assert_eq!(
            e.to_string(),
            "`layers/_/etc/x` and `layers/_/etc/x.j2` both produce `/etc/x`"
        );
    }

    #[test]
    fn a_symlink_shadows_a_lower_directory() {
        let base = root(
            "layers/_",
            &[("etc", Dir), ("etc/d", Dir), ("etc/d/f", File)],
        );
        let m = root("machines/m", &[("etc", Dir), ("etc/d", Symlink)]);
        let r = Stack {
            roots: vec![&base, &m],
        }
        .resolve()
        .unwrap();
        assert_eq!(r.keys().collect::<Vec<_>>(), ["etc", "etc/d"]);
    }
}
