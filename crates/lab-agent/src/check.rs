//! Reading the machine's own account of itself (`check.sh`): the paths
//! that are not what the applied generation put there, and the unit
//! actions that have not run; and telling what kind of drift each is.

use crate::plan::{UnitAction, UnitOp};
use lab_core::Digest;
use lab_manifest::{Entry, EntryKind};
use std::collections::BTreeMap;

/// What the check saw at one managed path whose stat changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Nothing there (or below something that is not a directory).
    Gone,
    Present {
        /// `st_mode`: type and permission bits.
        rawmode: u32,
        uid: u32,
        gid: u32,
        /// Owner and group right after lab's apply (`None`: not recorded).
        was: Option<(u32, u32)>,
        /// The content's sha256 (regular files; `None`: unreadable).
        sha256: Option<Digest>,
        /// A symlink's target.
        target: Option<String>,
        /// The path existed before lab first wrote it (lab took it over).
        taken_over: bool,
    },
}

impl Seen {
    /// `file`, `dir`, `symlink`, or what else is there.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Seen::Gone => "missing",
            Seen::Present { rawmode, .. } => match rawmode & 0o170000 {
                0o100000 => "file",
                0o040000 => "dir",
                0o120000 => "symlink",
                0o010000 => "fifo",
                0o140000 => "socket",
                0o020000 => "char-device",
                0o060000 => "block-device",
                _ => "unknown",
            },
        }
    }

    /// Equal to what `e` describes (for owners: root when `e` names none;
    /// a named owner cannot be told from here, so never equal).
    pub fn matches(&self, e: &Entry) -> bool {
        let Seen::Present {
            rawmode,
            uid,
            gid,
            sha256,
            target,
            ..
        } = self
        else {
            return false;
        };
        if self.kind_name() != e.kind_name() {
            return false;
        }
        if e.owner.is_some() || e.group.is_some() || (*uid, *gid) != (0, 0) {
            return false;
        }
        match &e.kind {
            EntryKind::Symlink { target: t } => target.as_deref() == Some(t.as_str()),
            EntryKind::File { sha256: s, .. } => {
                sha256.as_ref() == Some(s) && rawmode & 0o7777 == e.mode
            }
            EntryKind::Dir => rawmode & 0o7777 == e.mode,
        }
    }
}

/// How a managed path differs from what lab put there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DriftKind {
    /// Other content than lab wrote.
    ContentChanged,
    /// A file lab took over (it existed before lab) changed again.
    TakenOverChanged,
    Deleted,
    ModeChanged,
    OwnerChanged,
    /// A symlink that points elsewhere.
    Retargeted,
    /// Something else there: a directory where a file was, a symlink
    /// where a file was, ...
    KindChanged,
}

impl DriftKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            DriftKind::ContentChanged => "content-changed",
            DriftKind::TakenOverChanged => "taken-over-changed",
            DriftKind::Deleted => "deleted",
            DriftKind::ModeChanged => "mode-changed",
            DriftKind::OwnerChanged => "owner-changed",
            DriftKind::Retargeted => "symlink-retargeted",
            DriftKind::KindChanged => "kind-changed",
        }
    }
}

/// One drifted path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    /// Relative to the machine's root, as in the manifest.
    pub path: String,
    pub kind: DriftKind,
    /// What is there now.
    pub seen: Seen,
}

/// The check's lines of one run: drift and pending actions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Check {
    /// The `drift`/`pending` lines as printed: what an apply planned
    /// from this check expects to find (see [`Check::expect`]).
    pub lines: Vec<String>,
    /// Paths whose stat changed, and what is there now.
    pub seen: BTreeMap<String, Seen>,
    /// Unit actions of the current generation that have not run.
    pub pending: Vec<UnitAction>,
}

fn name(s: &str) -> String {
    s.replace('\u{1}', "\n")
}

fn op(s: &str) -> Option<UnitOp> {
    Some(match s {
        "stop" => UnitOp::Stop,
        "daemon-reload" => UnitOp::DaemonReload,
        "reload" => UnitOp::Reload,
        "reload-or-restart" => UnitOp::ReloadOrRestart,
        "restart" => UnitOp::Restart,
        "start" => UnitOp::Start,
        _ => return None,
    })
}

impl Check {
    /// Read the `drift` and `pending` lines of the executor's output (other
    /// lines are left alone).
    pub fn parse(text: &str) -> Check {
        let mut c = Check::default();
        let mut last: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("pending ") {
                c.lines.push(line.to_string());
                let (o, u) = rest.split_once(' ').unwrap_or((rest, "-"));
                if let Some(op) = op(o) {
                    c.pending.push(UnitAction {
                        op,
                        // (`-`: the system manager's daemon-reload;
                        // `USER/`: a user manager's)
                        unit: if op == UnitOp::DaemonReload && u == "-" {
                            String::new()
                        } else {
                            u.to_string()
                        },
                    });
                }
                continue;
            }
            let Some(rest) = line.strip_prefix("drift ") else {
                continue;
            };
            c.lines.push(line.to_string());
            if let Some(p) = rest.strip_prefix("gone ") {
                c.seen.insert(name(p), Seen::Gone);
                last = None;
            } else if let Some(t) = rest.strip_prefix("link ") {
                if let Some(Seen::Present { target, .. }) =
                    last.as_ref().and_then(|p| c.seen.get_mut(p))
                {
                    *target = Some(name(t));
                }
            } else if let Some(r) = rest.strip_prefix("now ") {
                let f: Vec<&str> = r.splitn(8, ' ').collect();
                if f.len() < 8 {
                    continue;
                }
                let num = |s: &str| s.parse::<u32>().ok();
                let seen = Seen::Present {
                    rawmode: u32::from_str_radix(f[0], 16).unwrap_or(0),
                    uid: num(f[1]).unwrap_or(u32::MAX),
                    gid: num(f[2]).unwrap_or(u32::MAX),
                    was: num(f[3]).zip(num(f[4])),
                    taken_over: f[5] == "1",
                    sha256: Digest::from_hex(f[6]),
                    target: None,
                };
                let p = name(f[7]);
                c.seen.insert(p.clone(), seen);
                last = Some(p);
            }
        }
        c
    }

    /// What an apply planned from this check expects the machine to
    /// report (`expect` in executor.sh): `none`, or the sha256 of the lines.
    pub fn expect(&self) -> String {
        if self.lines.is_empty() {
            "none".into()
        } else {
            Digest::of(self.lines.join("\n").as_bytes()).to_hex()
        }
    }

    /// What a rollback planned from this check expects of the machine's
    /// pending unit actions (`expect ... pending` in executor.sh): `none`, or
    /// the sha256 of their lines.
    pub fn expect_pending(&self) -> String {
        let lines: Vec<&str> = self
            .lines
            .iter()
            .filter(|l| l.starts_with("pending "))
            .map(String::as_str)
            .collect();
        if lines.is_empty() {
            "none".into()
        } else {
            Digest::of(lines.join("\n").as_bytes()).to_hex()
        }
    }

    /// The drift against `applied`, the manifest of the machine's current
    /// generation (paths whose stat changed but which are still what lab
    /// wrote, a `touch` say, are no drift).
    pub fn drift(&self, applied: &lab_manifest::Manifest) -> Vec<Drift> {
        let mut out = Vec::new();
        for (p, seen) in &self.seen {
            let Some(e) = applied.get(p) else { continue };
            if let Some(kind) = classify(e, seen) {
                out.push(Drift {
                    path: p.clone(),
                    kind,
                    seen: seen.clone(),
                });
            }
        }
        out
    }
}

/// How `seen` differs from entry `e` (`None`: it does not).
pub fn classify(e: &Entry, seen: &Seen) -> Option<DriftKind> {
    let Seen::Present {
        rawmode,
        uid,
        gid,
        was,
        sha256,
        target,
        taken_over,
    } = seen
    else {
        return Some(DriftKind::Deleted);
    };
    if seen.kind_name() != e.kind_name() {
        return Some(DriftKind::KindChanged);
    }
    match &e.kind {
        EntryKind::Symlink { target: t } => {
            if target.as_deref() != Some(t.as_str()) {
                return Some(DriftKind::Retargeted);
            }
        }
        EntryKind::File { sha256: s, .. } => {
            if sha256.as_ref() != Some(s) {
                return Some(if *taken_over {
                    DriftKind::TakenOverChanged
                } else {
                    DriftKind::ContentChanged
                });
            }
        }
        EntryKind::Dir => {}
    }
    if !matches!(e.kind, EntryKind::Symlink { .. }) && rawmode & 0o7777 != e.mode {
        return Some(DriftKind::ModeChanged);
    }
    let expected = match was {
        Some(w) => Some(*w),
        None if e.owner.is_none() && e.group.is_none() => Some((0, 0)),
        None => None,
    };
    if expected.is_some_and(|w| w != (*uid, *gid)) {
        return Some(DriftKind::OwnerChanged);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use lab_manifest::Manifest;

    #[test]
    fn reads_and_classifies() {
        let sha = Digest::of(b"x\n");
        let text = format!(
            "1 abc\nat 5\ndrift gone etc/gone\ndrift now 81a4 0 0 0 0 0 {} etc/ch\u{1}ged\n\
             drift now a1ff 0 0 0 0 0 - etc/link\ndrift link /else\n\
             drift now 81ed 0 0 0 0 0 {sha} etc/mode\npending restart a.service\n",
            Digest::of(b"y").to_hex()
        );
        let c = Check::parse(&text);
        assert_eq!(c.lines.len(), 6);
        assert_eq!(
            c.pending,
            vec![UnitAction {
                op: UnitOp::Restart,
                unit: "a.service".into()
            }]
        );
        let mut m = Manifest::new("m");
        let file = |p: &str| Entry {
            path: p.into(),
            mode: 0o644,
            kind: EntryKind::File {
                size: 2,
                sha256: sha,
            },
            owner: None,
            group: None,
        };
        for p in ["etc/gone", "etc/ch\nged", "etc/mode"] {
            m.insert(file(p));
        }
        m.insert(Entry {
            path: "etc/link".into(),
            mode: 0o777,
            kind: EntryKind::Symlink {
                target: "/there".into(),
            },
            owner: None,
            group: None,
        });
        let kinds: Vec<(String, DriftKind)> =
            c.drift(&m).into_iter().map(|d| (d.path, d.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                ("etc/ch\nged".to_string(), DriftKind::ContentChanged),
                ("etc/gone".to_string(), DriftKind::Deleted),
                ("etc/link".to_string(), DriftKind::Retargeted),
                ("etc/mode".to_string(), DriftKind::ModeChanged),
            ]
        );
        assert_ne!(c.expect(), "none");
        assert_eq!(Check::parse("1 abc\n").expect(), "none");
    }
}
