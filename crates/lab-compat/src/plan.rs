//! Which source produces each output path of a make-style machine, and how.
//!
//! The rules (docs/compat.md, "The rules"): every
//! regular file and symlink under `layers/_`, the selected layers and
//! `machines/NAME/` is a source; directories are not (the tree's
//! directories are the parents of its entries, mode 0755, plus the sticky
//! bit where a `.pin` lands). In the file's own name every `.m4.` becomes
//! `.` and then one leading `!` is dropped; a file whose name minus its last
//! extension ends in `.m4` is an m4 template; a `!` anywhere in the path
//! means "follow symlinks". Link lists add symlinks. Two sources for one
//! path are kept side by side here ([`Out::also`]); they are an error naming
//! both unless they give the same bytes, kind and mode, which only making
//! them can tell (a `!` link to the very file another layer provides at the
//! same path is not a conflict: make's result does not depend on the order).
//! After a tree is assembled the style's recipe makes every regular file
//! under two directories group- and other-readable ([`final_mode`]).

use crate::CompatError;
use lab_config::compat::{parse_link_list, CompatCopy, LINK_LISTS};
use lab_engine::scan::{RootScan, SrcKind};
use lab_engine::MachineError;
use lab_graph::{Digest, Hasher};
use std::collections::BTreeMap;

/// How an output entry is made from its source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum How {
    /// A regular file, copied with its mode (umask 022 applied).
    Copy,
    /// A symlink, copied as a symlink with the same target text.
    Link,
    /// A symlink with `!` in its path: a regular file with the content and
    /// mode (umask 022 applied) of what it points to.
    Follow,
    /// Rendered by m4 (following symlinks), mode 0644.
    Template,
    /// A line of a link list: a symlink with this literal target.
    ListLink { target: String },
    /// `[[compat.copy]]`: a project file, followed, mode with umask 022.
    Extra { from: String },
}

/// One output entry and where it comes from.
#[derive(Clone, Debug)]
pub struct Out {
    /// Index of the source root (unused for extra copies).
    pub root: usize,
    /// Path inside the root (the link list's path for list links).
    pub src: String,
    pub how: How,
    /// The source as a person reads it: `layers/x/etc/a` or
    /// `machines/m/usr/local/opt/initd/links/a.txt:3`.
    pub origin: String,
    /// Other sources of the same path, in the order make would meet them.
    /// Allowed only when each makes exactly this entry.
    pub also: Vec<Out>,
}

impl Out {
    /// The project-relative path of the source file (for followed reads).
    pub fn src_path(&self, roots: &[&RootScan]) -> String {
        match &self.how {
            How::Extra { from } => from.clone(),
            _ => format!("{}/{}", roots[self.root].name, self.src),
        }
    }
}

#[derive(Debug, Default)]
pub struct Plan {
    pub outs: BTreeMap<String, Out>,
    /// Every directory of the tree with its mode.
    pub dirs: BTreeMap<String, u32>,
}

/// The output name of a file name: `.m4.` -> `.`, then one leading `!` dropped.
pub fn output_name(name: &str) -> String {
    let n = name.replace(".m4.", ".");
    match n.strip_prefix('!') {
        Some(rest) => rest.to_string(),
        None => n,
    }
}

/// Is a file with this name an m4 template: does its name without the last
/// extension end in `.m4`?
pub fn is_template(name: &str) -> bool {
    name.rfind('.').is_some_and(|i| name[..i].ends_with(".m4"))
}

/// Is `rel` a link list of its root (`usr/local/opt/initd/links/*.txt`)?
fn is_link_list(rel: &str) -> bool {
    rel.strip_prefix(LINK_LISTS)
        .and_then(|r| r.strip_prefix('/'))
        .is_some_and(|n| !n.contains('/') && n.ends_with(".txt"))
}

/// Resolve a machine's roots (lowest first) and extra copies into a plan.
pub fn resolve(
    machine: &str,
    roots: &[&RootScan],
    copies: &[CompatCopy],
) -> Result<Plan, MachineError> {
    let mut plan = Plan::default();
    let insert = |plan: &mut Plan, path: String, out: Out| -> Result<(), MachineError> {
        match plan.outs.get_mut(&path) {
            Some(prev) => prev.also.push(out),
            None => {
                plan.outs.insert(path, out);
            }
        }
        Ok(())
    };
    for (ri, root) in roots.iter().enumerate() {
        let mut rels: Vec<(&String, SrcKind)> = root
            .entries
            .iter()
            .filter(|(_, e)| e.kind != SrcKind::Dir)
            .map(|(r, e)| (r, e.kind))
            .collect();
        rels.sort_by(|a, b| a.0.cmp(b.0));
        for (rel, kind) in rels {
            let (dir, name) = match rel.rsplit_once('/') {
                Some((d, n)) => (Some(d), n),
                None => (None, rel.as_str()),
            };
            let oname = output_name(name);
            let origin = format!("{}/{rel}", root.name);
            if oname.is_empty() {
                return Err(CompatError::Name { origin }.into());
            }
            let path = match dir {
                Some(d) => format!("{d}/{oname}"),
                None => oname,
            };
            let how = if is_template(name) {
                How::Template
            } else if kind == SrcKind::Symlink {
                if rel.contains('!') {
                    How::Follow
                } else {
                    How::Link
                }
            } else {
                How::Copy
            };
            insert(
                &mut plan,
                path,
                Out {
                    root: ri,
                    src: rel.clone(),
                    how,
                    origin,
                    also: Vec::new(),
                },
            )?;
        }
        let mut lists: Vec<&String> = root
            .entries
            .iter()
            .filter(|(r, e)| e.kind != SrcKind::Dir && is_link_list(r))
            .map(|(r, _)| r)
            .collect();
        lists.sort();
        for rel in lists {
            let file = root.path_of(rel);
            let bytes = std::fs::read(&file).map_err(MachineError::io(&file))?;
            let text = String::from_utf8_lossy(&bytes);
            let shown = std::path::Path::new(&root.name).join(rel);
            let lines =
                parse_link_list(&shown, &text).map_err(|e| MachineError::Config(Box::new(e)))?;
            for l in lines {
                insert(
                    &mut plan,
                    l.path.clone(),
                    Out {
                        root: ri,
                        src: rel.clone(),
                        how: How::ListLink { target: l.target },
                        origin: format!("{}/{rel}:{}", root.name, l.at.line),
                        also: Vec::new(),
                    },
                )?;
            }
        }
    }
    for c in copies {
        if !c.machines.is_empty() && !c.machines.iter().any(|m| m == machine) {
            continue;
        }
        insert(
            &mut plan,
            c.to.clone(),
            Out {
                root: usize::MAX,
                src: c.from.clone(),
                how: How::Extra {
                    from: c.from.clone(),
                },
                origin: format!("{}:{} (compat.copy)", c.at.path.display(), c.at.line),
                also: Vec::new(),
            },
        )?;
    }
    // Directories: every parent of an entry. A path cannot be both.
    let mut dirs: BTreeMap<String, u32> = BTreeMap::new();
    for (path, out) in &plan.outs {
        let mut p = path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            if let Some(other) = plan.outs.get(parent) {
                return Err(CompatError::Shape {
                    output: parent.to_string(),
                    file: other.origin.clone(),
                    below: out.origin.clone(),
                }
                .into());
            }
            if dirs.insert(parent.to_string(), 0o755).is_some() {
                break;
            }
            p = parent;
        }
    }
    for path in plan.outs.keys() {
        if let Some((parent, name)) = path.rsplit_once('/') {
            if name == ".pin" {
                dirs.insert(parent.to_string(), 0o1755);
            }
        }
    }
    plan.dirs = dirs;
    Ok(plan)
}

/// The current digest of an output's [`Key::Source`](lab_graph::Key::Source):
/// where it comes from, how, and the source entry's own digest and mode;
/// and the same of every other source of the path ([`Out::also`]), so a
/// change of any of them makes the output dirty and the sources are
/// compared again.
pub fn source_digest(out: &Out, roots: &[&RootScan], content: Option<Digest>) -> Digest {
    let mut h = Hasher::new("lab-compat-source-v2");
    h.str(&out.origin);
    match &out.how {
        How::ListLink { target } => {
            h.str("list").str(target);
        }
        How::Extra { from } => {
            h.str("extra").str(from);
        }
        how => {
            let e = &roots[out.root].entries[&out.src];
            h.str(match how {
                How::Copy => "copy",
                How::Link => "link",
                How::Follow => "follow",
                _ => "m4",
            })
            .u64(e.kind as u64)
            .u64(e.perm() as u64)
            .digest(&content.unwrap_or(e.digest));
        }
    }
    for a in &out.also {
        h.digest(&source_digest(a, roots, None));
    }
    h.finish()
}

/// Directories whose regular files the style's recipe makes group- and
/// other-readable once a machine's tree is assembled:
/// `find fs/usr/local/lib/systemd fs/usr/local/opt -type f -exec chmod g+r,o+r {} +`.
const READABLE_DIRS: &[&str] = &["usr/local/lib/systemd/", "usr/local/opt/"];

/// The mode a regular file at `path` ends with, after that fix-up (a `!`
/// copy of a 0600 secret under `usr/local/opt/` ends 0644; elsewhere it
/// stays 0600). `find` does not follow symlinks, and only files are changed.
pub fn final_mode(path: &str, mode: u32) -> u32 {
    if READABLE_DIRS.iter().any(|d| path.starts_with(d)) {
        mode | 0o044
    } else {
        mode
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(output_name("wan.m4.env"), "wan.env");
        assert_eq!(output_name(".m4.iftoprc"), ".iftoprc");
        assert_eq!(output_name("!.m4.bashrc"), ".bashrc");
        assert_eq!(output_name("!!x"), "!x");
        assert_eq!(output_name("x.m4@.service"), "x.m4@.service");
        assert_eq!(output_name("a.m4.m4.b"), "a.m4.b");
        assert!(is_template("wan.m4.env"));
        assert!(is_template(".m4.iftoprc"));
        assert!(is_template("!x.m4.conf"));
        assert!(!is_template("prelude.m4"));
        assert!(!is_template("x.m4@.service"));
        assert!(!is_template("a.m4.b.conf"));
        assert!(!is_template("m4.conf"));
        assert!(is_link_list("usr/local/opt/initd/links/a.txt"));
        assert!(!is_link_list("usr/local/opt/initd/links/x/a.txt"));
        assert!(!is_link_list("usr/local/opt/initd/links/a.txt.bak"));
    }

    #[test]
    fn final_modes() {
        assert_eq!(final_mode("usr/local/opt/x/secret", 0o600), 0o644);
        assert_eq!(
            final_mode("usr/local/lib/systemd/system/a.service", 0o700),
            0o744
        );
        assert_eq!(final_mode("usr/local/optional/secret", 0o600), 0o600);
        assert_eq!(final_mode("etc/secret", 0o600), 0o600);
        assert_eq!(final_mode("usr/local/lib/systemd-x/f", 0o600), 0o600);
    }
}
