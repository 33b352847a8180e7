//! The manifest of one machine's output tree: every entry (directory, file,
//! symlink) with its mode, size and sha256 or link target. `lab build` writes
//! it beside the tree, `lab sync` diffs it against the manifest the machine
//! last applied. This crate owns the entry types and the on-disk format; it
//! does no I/O.
//!
//! # Format (version 1)
//!
//! UTF-8 text, one JSON object per line (JSON Lines). The first line is a
//! header, the rest are entries sorted by path (byte order):
//!
//! ```text
//! {"lab_manifest":1,"machine":"web1"}
//! {"path":"/etc","kind":"dir","mode":"0755"}
//! {"path":"/etc/motd","kind":"file","mode":"0644","size":13,"sha256":"…"}
//! {"path":"/etc/localtime","kind":"symlink","target":"/usr/share/zoneinfo/UTC"}
//! ```
//!
//! `owner` and `group` (names or numeric ids) appear on entries that
//! lab.toml's `[[owners]]` rules give an owner; absent, the entry belongs
//! to whoever the executor runs as (root).
//!
//! Paths are absolute on the target machine. `mode` is the permission bits
//! in octal (with setuid/setgid/sticky), absent for symlinks. The same tree
//! always serializes to the same bytes, so the file's sha256 identifies the
//! tree.

use lab_core::{Digest, Hasher};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    Dir,
    File { size: u64, sha256: Digest },
    Symlink { target: String },
}

/// One entry of an output tree. `path` is relative to the machine's root
/// (`etc/motd`), never empty, without leading or trailing slash.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    pub path: String,
    pub mode: u32,
    pub kind: EntryKind,
    /// Owner and group the machine gives the entry (names or numeric ids;
    /// `None`: whoever writes it, root), from lab.toml's `[[owners]]`.
    pub owner: Option<String>,
    pub group: Option<String>,
}

impl Entry {
    /// Identifies the entry's path, kind, mode and content: two entries with
    /// equal digests produce identical files.
    pub fn digest(&self) -> Digest {
        let mut h = Hasher::new("lab-entry-v1");
        h.str(&self.path);
        match &self.kind {
            EntryKind::Dir => h.str("d").u64(self.mode as u64),
            EntryKind::File { size, sha256 } => {
                h.str("f").u64(self.mode as u64).u64(*size).digest(sha256)
            }
            EntryKind::Symlink { target } => h.str("l").str(target),
        };
        // (entries without an owner keep the digests they always had)
        if self.owner.is_some() || self.group.is_some() {
            h.str("o")
                .str(self.owner.as_deref().unwrap_or(""))
                .str(self.group.as_deref().unwrap_or(""));
        }
        h.finish()
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            EntryKind::Dir => "dir",
            EntryKind::File { .. } => "file",
            EntryKind::Symlink { .. } => "symlink",
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self.kind, EntryKind::Dir)
    }
}

/// All entries of a machine's output tree, keyed by path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    pub machine: String,
    pub entries: BTreeMap<String, Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("unsupported manifest version {0} (this lab reads version 1)")]
    Version(u64),
}

#[derive(Serialize, Deserialize)]
struct Header {
    lab_manifest: u64,
    machine: String,
}

#[derive(Serialize, Deserialize)]
struct Line {
    path: String,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<String>,
}

impl Manifest {
    pub fn new(machine: impl Into<String>) -> Manifest {
        Manifest {
            machine: machine.into(),
            entries: BTreeMap::new(),
        }
    }

    pub fn insert(&mut self, e: Entry) {
        self.entries.insert(e.path.clone(), e);
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The sha256 of the serialized manifest: equal trees, equal digests.
    pub fn digest(&self) -> Digest {
        Digest::of(self.to_text().as_bytes())
    }

    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(64 + self.entries.len() * 120);
        out.push_str(&header_line(&self.machine));
        out.push('\n');
        for e in self.entries.values() {
            push_line(&mut out, e);
            out.push('\n');
        }
        out
    }

    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let mut lines = text.lines().enumerate();
        let err = |line: usize, message: String| ManifestError::Syntax {
            line: line + 1,
            message,
        };
        let (_, first) = lines
            .next()
            .ok_or_else(|| err(0, "empty manifest".into()))?;
        let header: Header = serde_json::from_str(first).map_err(|e| err(0, e.to_string()))?;
        if header.lab_manifest != 1 {
            return Err(ManifestError::Version(header.lab_manifest));
        }
        let mut m = Manifest::new(header.machine);
        for (n, text) in lines {
            if text.is_empty() {
                continue;
            }
            let l: Line = serde_json::from_str(text).map_err(|e| err(n, e.to_string()))?;
            let path = l
                .path
                .strip_prefix('/')
                .filter(|p| !p.is_empty())
                .ok_or_else(|| err(n, format!("path `{}` is not absolute", l.path)))?
                .to_string();
            let mode = match &l.mode {
                Some(m) => {
                    u32::from_str_radix(m, 8).map_err(|_| err(n, format!("bad mode `{m}`")))?
                }
                None => 0o777,
            };
            let missing = |f: &str| err(n, format!("{} entry without `{f}`", l.kind));
            let kind = match l.kind.as_str() {
                "dir" => EntryKind::Dir,
                "file" => EntryKind::File {
                    size: l.size.ok_or_else(|| missing("size"))?,
                    sha256: l
                        .sha256
                        .as_deref()
                        .and_then(Digest::from_hex)
                        .ok_or_else(|| missing("sha256"))?,
                },
                "symlink" => EntryKind::Symlink {
                    target: l.target.ok_or_else(|| missing("target"))?,
                },
                other => return Err(err(n, format!("unknown kind `{other}`"))),
            };
            m.insert(Entry {
                path,
                mode,
                kind,
                owner: l.owner,
                group: l.group,
            });
        }
        Ok(m)
    }

    /// The paths of manifest `text` (relative, in its order) without
    /// parsing its entries, for what needs only the paths (`lab status`
    /// asks a machine about the units they belong to): `None` when a line
    /// is not plainly `{"path":"/...",...` (an escaped name, another
    /// format), and the caller parses it whole.
    pub fn paths(text: &str) -> Option<Vec<&str>> {
        let mut lines = text.lines();
        lines.next()?.strip_prefix("{\"lab_manifest\":1,")?;
        let mut out = Vec::new();
        for l in lines.filter(|l| !l.is_empty()) {
            let rest = l.strip_prefix("{\"path\":\"/")?;
            let end = rest.find('"')?;
            let p = &rest[..end];
            if p.is_empty() || p.contains('\\') || !rest[end..].starts_with("\",") {
                return None;
            }
            out.push(p);
        }
        Some(out)
    }
}

/// The header line of a manifest of `machine` (without its newline).
pub fn header_line(machine: &str) -> String {
    let header = Header {
        lab_manifest: 1,
        machine: machine.to_string(),
    };
    serde_json::to_string(&header).expect("serializable")
}

/// The line of entry `e` in a manifest (without its newline): the bytes
/// [`Manifest::to_text`] writes for it, so a tool that changes entries in
/// place (same path, new content) can rewrite just their lines.
pub fn entry_line(e: &Entry) -> String {
    let mut s = String::with_capacity(160);
    push_line(&mut s, e);
    s
}

/// The path (relative, as in [`Entry::path`]) of a manifest entry line,
/// `None` when it is not an entry line.
pub fn line_path(line: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct PathOnly {
        path: String,
    }
    let p: PathOnly = serde_json::from_slice(line).ok()?;
    p.path.strip_prefix('/').map(str::to_string)
}

/// Append `e`'s line. The fields and their order are those of [`Line`]
/// (serde's output, pinned by `format_is_pinned` and checked against it
/// by `lines_are_serdes`), written without building a `Line`.
fn push_line(out: &mut String, e: &Entry) {
    out.push_str("{\"path\":");
    push_json_str2(out, "/", &e.path);
    out.push_str(",\"kind\":\"");
    out.push_str(e.kind_name());
    out.push('"');
    match &e.kind {
        EntryKind::Dir => {
            let _ = write!(out, ",\"mode\":\"{:04o}\"", e.mode);
        }
        EntryKind::File { size, sha256 } => {
            let _ = write!(
                out,
                ",\"mode\":\"{:04o}\",\"size\":{size},\"sha256\":\"",
                e.mode
            );
            const HEX: &[u8; 16] = b"0123456789abcdef";
            for b in sha256.0 {
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
            out.push('"');
        }
        EntryKind::Symlink { target } => {
            out.push_str(",\"target\":");
            push_json_str2(out, "", target);
        }
    }
    if let Some(o) = &e.owner {
        out.push_str(",\"owner\":");
        push_json_str2(out, "", o);
    }
    if let Some(g) = &e.group {
        out.push_str(",\"group\":");
        push_json_str2(out, "", g);
    }
    out.push('}');
}

/// Append `a` followed by `b` as one JSON string, escaped as serde_json
/// escapes it.
fn push_json_str2(out: &mut String, a: &str, b: &str) {
    let plain = |s: &str| !s.bytes().any(|c| c < 0x20 || c == b'"' || c == b'\\');
    if plain(a) && plain(b) {
        out.push('"');
        out.push_str(a);
        out.push_str(b);
        out.push('"');
    } else {
        let mut both = String::with_capacity(a.len() + b.len());
        both.push_str(a);
        both.push_str(b);
        out.push_str(&serde_json::to_string(&both).expect("serializable"));
    }
}

/// One line of a human-readable summary: `+ /etc/motd (file 0644, 13 B)`.
pub fn describe(e: &Entry) -> String {
    let mut s = format!("/{} ({}", e.path, e.kind_name());
    match &e.kind {
        EntryKind::Dir => {
            let _ = write!(s, " {:04o}", e.mode);
        }
        EntryKind::File { size, .. } => {
            let _ = write!(s, " {:04o}, {size} B", e.mode);
        }
        EntryKind::Symlink { target } => {
            let _ = write!(s, " -> {target}");
        }
    }
    match (&e.owner, &e.group) {
        (None, None) => {}
        (o, g) => {
            let _ = write!(
                s,
                ", {}:{}",
                o.as_deref().unwrap_or("root"),
                g.as_deref().unwrap_or("root")
            );
        }
    }
    s.push(')');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_without_parsing() {
        let mut m = Manifest::new("web");
        for p in ["etc/a b", "etc/x\"y", "etc/z"] {
            m.insert(Entry {
                path: p.into(),
                mode: 0o644,
                kind: EntryKind::Symlink { target: "t".into() },
                owner: None,
                group: None,
            });
        }
        // an escaped name: parse it whole
        assert_eq!(Manifest::paths(&m.to_text()), None);
        m.entries.remove("etc/x\"y");
        assert_eq!(
            Manifest::paths(&m.to_text()),
            Some(vec!["etc/a b", "etc/z"])
        );
    }

    fn sample() -> Manifest {
        let mut m = Manifest::new("web1");
        m.insert(Entry {
            path: "etc".into(),
            mode: 0o755,
            kind: EntryKind::Dir,
            owner: None,
            group: None,
        });
        m.insert(Entry {
            path: "etc/motd".into(),
            mode: 0o644,
            kind: EntryKind::File {
                size: 5,
                sha256: Digest::of(b"hello"),
            },
            owner: None,
            group: None,
        });
        m.insert(Entry {
            path: "etc/weird \"name\"\n".into(),
            mode: 0o1755,
            kind: EntryKind::Dir,
            owner: None,
            group: None,
        });
        m.insert(Entry {
            path: "etc/localtime".into(),
            mode: 0o777,
            kind: EntryKind::Symlink {
                target: "/usr/share/zoneinfo/UTC".into(),
            },
            owner: None,
            group: None,
        });
        m
    }

    /// The line as serde writes a [`Line`]: what the format was defined by.
    fn serde_line(e: &Entry) -> String {
        let mut line = Line {
            path: format!("/{}", e.path),
            kind: e.kind_name().to_string(),
            mode: None,
            size: None,
            sha256: None,
            target: None,
            owner: e.owner.clone(),
            group: e.group.clone(),
        };
        match &e.kind {
            EntryKind::Dir => line.mode = Some(format!("{:04o}", e.mode)),
            EntryKind::File { size, sha256 } => {
                line.mode = Some(format!("{:04o}", e.mode));
                line.size = Some(*size);
                line.sha256 = Some(sha256.to_hex());
            }
            EntryKind::Symlink { target } => line.target = Some(target.clone()),
        }
        serde_json::to_string(&line).unwrap()
    }

    #[test]
    fn lines_are_serdes() {
        let names = [
            "etc/motd",
            "etc/weird \"name\"\n",
            "a\\b",
            "tab\there",
            "ctl\u{1}\u{1f}\u{7f}",
            "ünïcødé/名前",
            "-",
            "sp ace/",
        ];
        let mut n = 0u64;
        for name in names {
            for who in [None, Some("www-data"), Some("q\"uote"), Some("1000")] {
                for kind in [
                    EntryKind::Dir,
                    EntryKind::File {
                        size: n * 7919,
                        sha256: Digest::of(name.as_bytes()),
                    },
                    EntryKind::Symlink {
                        target: format!("../{name}"),
                    },
                ] {
                    n += 1;
                    let e = Entry {
                        path: name.to_string(),
                        mode: (n as u32 * 37) & 0o7777,
                        kind,
                        owner: who.map(str::to_string),
                        group: if n.is_multiple_of(2) {
                            who.map(str::to_string)
                        } else {
                            None
                        },
                    };
                    let line = entry_line(&e);
                    assert_eq!(line, serde_line(&e), "{e:?}");
                    assert_eq!(line_path(line.as_bytes()).as_deref(), Some(name));
                }
            }
        }
        assert_eq!(line_path(header_line("web1").as_bytes()), None);
    }

    #[test]
    fn text_round_trip() {
        let m = sample();
        let text = m.to_text();
        assert_eq!(Manifest::parse(&text).unwrap(), m);
        assert!(text.starts_with("{\"lab_manifest\":1,\"machine\":\"web1\"}\n{\"path\":\"/etc\""));
    }

    #[test]
    fn format_is_pinned() {
        let text = sample().to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[2],
            r#"{"path":"/etc/localtime","kind":"symlink","target":"/usr/share/zoneinfo/UTC"}"#
        );
        assert_eq!(
            lines[3],
            r#"{"path":"/etc/motd","kind":"file","mode":"0644","size":5,"sha256":"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}"#
        );
    }

    #[test]
    fn bad_lines_name_their_line() {
        let e = Manifest::parse(
            "{\"lab_manifest\":1,\"machine\":\"m\"}\n{\"path\":\"/x\",\"kind\":\"file\"}\n",
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "line 2: file entry without `size`");
        let e = Manifest::parse("{\"lab_manifest\":2,\"machine\":\"m\"}\n").unwrap_err();
        assert!(matches!(e, ManifestError::Version(2)));
    }

    #[test]
    fn digests_see_mode_and_content() {
        let m = sample();
        let e = m.get("etc/motd").unwrap().clone();
        let mut chmod = e.clone();
        chmod.mode = 0o600;
        assert_ne!(e.digest(), chmod.digest());
        assert_ne!(sample().digest(), {
            let mut m2 = sample();
            m2.insert(chmod);
            m2.digest()
        });
    }
}

#[cfg(test)]
mod owner_tests {
    use super::*;

    #[test]
    fn owners_round_trip_and_show() {
        let mut m = Manifest::new("m");
        m.insert(Entry {
            path: "srv/app/config".into(),
            mode: 0o640,
            kind: EntryKind::File {
                size: 1,
                sha256: Digest::of(b"x"),
            },
            owner: Some("app".into()),
            group: None,
        });
        let text = m.to_text();
        assert!(text.contains("\"owner\":\"app\""), "{text}");
        assert!(!text.contains("\"group\""), "{text}");
        assert_eq!(Manifest::parse(&text).unwrap(), m);
        let e = m.get("srv/app/config").unwrap();
        assert_eq!(describe(e), "/srv/app/config (file 0640, 1 B, app:root)");
        let mut plain = e.clone();
        plain.owner = None;
        assert_ne!(plain.digest(), e.digest());
    }
}
