//! The tree of an image and its text format (version 1, stable):
//!
//! ```text
//! {"lab_image_tree":1,"config":{"Cmd":["/bin/sh"],"Env":["PATH=/bin"]}}
//! {"path":"bin","kind":"dir","mode":"0755","uid":0,"gid":0}
//! {"path":"bin/busybox","kind":"file","mode":"0755","uid":0,"gid":0,"size":1024,"sha256":"…"}
//! {"path":"bin/sh","kind":"symlink","mode":"0777","uid":0,"gid":0,"target":"busybox"}
//! {"path":"dev/null","kind":"char","mode":"0666","uid":0,"gid":0,"major":1,"minor":3}
//! ```
//!
//! One JSON object per line after the header, sorted by path (relative to
//! the image's root, no leading `/`). A tree's ID is the sha256 of this text,
//! so the same image is the same ID however it was packed.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

/// A name as the tree writes it: its bytes as UTF-8 text, where `%` and
/// every byte that is not part of valid UTF-8 are `%XX` (names of a root
/// file system are bytes; the tree is text).
pub fn encode(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '%' {
                out.push_str("%25");
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The bytes of a name [`encode`] wrote.
pub fn decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn os(b: Vec<u8>) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStringExt;
    std::ffi::OsString::from_vec(b).into()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Char,
    Block,
    Fifo,
}

/// One entry of an image's root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    #[serde(with = "octal")]
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<u32>,
}

mod octal {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(m: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{m:04o}"))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let s = String::deserialize(d)?;
        u32::from_str_radix(&s, 8).map_err(serde::de::Error::custom)
    }
}

impl Entry {
    /// A regular file's name in a node's store: its content, mode and
    /// owner (`SHA256.MODE.UID.GID`), since the image's file on the node
    /// is a hard link to it and shares its inode. Nothing else has one.
    pub fn key(&self) -> Option<String> {
        let sha = self.sha256.as_deref()?;
        (self.kind == Kind::File)
            .then(|| format!("{sha}.{:04o}.{}.{}", self.mode, self.uid, self.gid))
    }
}

/// What the image runs: the fields of its OCI config that podman uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(
        rename = "ExposedPorts",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub exposed_ports: Vec<String>,
}

impl Config {
    /// The config as Dockerfile instructions (`podman import --change`).
    pub fn changes(&self) -> Vec<String> {
        let json = |v: &Vec<String>| serde_json::to_string(v).expect("strings");
        let mut out = Vec::new();
        if let Some(e) = &self.entrypoint {
            out.push(format!("ENTRYPOINT {}", json(e)));
        }
        if let Some(c) = &self.cmd {
            out.push(format!("CMD {}", json(c)));
        }
        for e in &self.env {
            let (k, v) = e.split_once('=').unwrap_or((e, ""));
            out.push(format!(
                "ENV {k}={}",
                serde_json::to_string(v).expect("a string")
            ));
        }
        if let Some(w) = self.working_dir.as_deref().filter(|w| !w.is_empty()) {
            out.push(format!("WORKDIR {w}"));
        }
        if let Some(u) = self.user.as_deref().filter(|u| !u.is_empty()) {
            out.push(format!("USER {u}"));
        }
        for p in &self.exposed_ports {
            out.push(format!("EXPOSE {p}"));
        }
        out
    }
}

/// An image as a tree: its entries by path, and its config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub entries: BTreeMap<String, Entry>,
    pub config: Config,
}

/// What turns the tree `old` into `new` on a node (see [`Tree::delta`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Paths to remove first (gone, or replaced by another kind or content).
    pub remove: Vec<String>,
    /// Entries to place then (new or changed), in path order.
    pub place: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    lab_image_tree: u32,
    config: Config,
}

impl Tree {
    /// The tree's text (see the module's documentation).
    pub fn to_text(&self) -> String {
        let mut s = serde_json::to_string(&Header {
            lab_image_tree: 1,
            config: self.config.clone(),
        })
        .expect("plain data");
        s.push('\n');
        for e in self.entries.values() {
            s.push_str(&serde_json::to_string(e).expect("plain data"));
            s.push('\n');
        }
        s
    }

    /// Read a tree's text; `None` when it is not one (a cache to be made
    /// again).
    pub fn parse(text: &str) -> Option<Tree> {
        let mut lines = text.lines();
        let h: Header = serde_json::from_str(lines.next()?).ok()?;
        if h.lab_image_tree != 1 {
            return None;
        }
        let mut entries = BTreeMap::new();
        for l in lines {
            let e: Entry = serde_json::from_str(l).ok()?;
            entries.insert(e.path.clone(), e);
        }
        Some(Tree {
            entries,
            config: h.config,
        })
    }

    /// The tree's ID: the sha256 of its text.
    pub fn id(&self) -> String {
        hex::encode(Sha256::digest(self.to_text().as_bytes()))
    }

    /// Every store key its files have (see [`Entry::key`]).
    pub fn keys(&self) -> BTreeSet<String> {
        self.entries.values().filter_map(Entry::key).collect()
    }

    /// The bytes of its files.
    pub fn file_bytes(&self) -> u64 {
        self.entries.values().filter_map(|e| e.size).sum()
    }

    /// What turns `old` (None: nothing) into this tree: paths that are
    /// gone or whose kind or content changed are removed; new and changed
    /// entries are placed (a directory whose mode or owner changed is
    /// placed again, not removed: its children stay).
    pub fn delta(&self, old: Option<&Tree>) -> Delta {
        let mut d = Delta::default();
        let empty = BTreeMap::new();
        let old_entries = old.map_or(&empty, |o| &o.entries);
        for (p, o) in old_entries {
            match self.entries.get(p) {
                None => d.remove.push(p.clone()),
                Some(n) if n == o => {}
                Some(n) if n.kind == Kind::Dir && o.kind == Kind::Dir => {}
                Some(_) => d.remove.push(p.clone()),
            }
        }
        for (p, n) in &self.entries {
            if old_entries.get(p) != Some(n) {
                d.place.push(p.clone());
            }
        }
        d
    }

    /// A tar of the entries at `paths` (in order), each named
    /// `prefix/PATH`; a regular file is a hard link to `store/KEY` (the
    /// node keeps its content there). Times are 0: the same tree is the
    /// same stream.
    pub fn structure_tar(
        &self,
        paths: &[String],
        prefix: &str,
        store: &str,
        w: &mut dyn Write,
    ) -> std::io::Result<()> {
        let mut b = tar::Builder::new(w);
        for p in paths {
            let Some(e) = self.entries.get(p) else {
                continue;
            };
            let name = os([format!("{prefix}/").into_bytes(), decode(&e.path)].concat());
            let mut h = tar::Header::new_gnu();
            h.set_mode(e.mode);
            h.set_uid(e.uid);
            h.set_gid(e.gid);
            h.set_mtime(0);
            h.set_size(0);
            match e.kind {
                Kind::File => {
                    h.set_entry_type(tar::EntryType::Link);
                    let key = e.key().expect("a file has a key");
                    b.append_link(&mut h, &name, format!("{store}/{key}"))?;
                }
                Kind::Symlink => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    b.append_link(&mut h, &name, os(decode(e.target.as_deref().unwrap_or(""))))?;
                }
                Kind::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    b.append_data(&mut h, &name, std::io::empty())?;
                }
                Kind::Char | Kind::Block | Kind::Fifo => {
                    h.set_entry_type(match e.kind {
                        Kind::Char => tar::EntryType::Char,
                        Kind::Block => tar::EntryType::Block,
                        _ => tar::EntryType::Fifo,
                    });
                    h.set_device_major(e.major.unwrap_or(0))?;
                    h.set_device_minor(e.minor.unwrap_or(0))?;
                    b.append_data(&mut h, &name, std::io::empty())?;
                }
            }
        }
        b.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, sha: &str, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::File,
            mode,
            uid: 0,
            gid: 0,
            size: Some(1),
            sha256: Some(sha.into()),
            target: None,
            major: None,
            minor: None,
        }
    }

    fn tree(entries: Vec<Entry>) -> Tree {
        Tree {
            entries: entries.into_iter().map(|e| (e.path.clone(), e)).collect(),
            config: Config {
                cmd: Some(vec!["/bin/sh".into()]),
                ..Config::default()
            },
        }
    }

    #[test]
    fn text_round_trips_and_names_the_tree() {
        let t = tree(vec![file("a", "aa", 0o644), file("b", "bb", 0o4755)]);
        let text = t.to_text();
        assert!(text.contains(r#""mode":"4755""#), "{text}");
        assert_eq!(Tree::parse(&text).unwrap(), t);
        assert_eq!(Tree::parse(&text).unwrap().id(), t.id());
        assert!(Tree::parse("{\"lab_image_tree\":2,\"config\":{}}\n").is_none());
    }

    #[test]
    fn delta_removes_what_is_gone_or_replaced_and_places_what_is_new() {
        let old = tree(vec![
            file("a", "aa", 0o644),
            file("b", "bb", 0o644),
            file("c", "cc", 0o644),
        ]);
        let new = tree(vec![
            file("a", "aa", 0o644),
            file("b", "bb", 0o600),
            file("d", "dd", 0o644),
        ]);
        let d = new.delta(Some(&old));
        assert_eq!(d.remove, ["b", "c"]);
        assert_eq!(d.place, ["b", "d"]);
        assert_eq!(new.delta(None).place, ["a", "b", "d"]);
    }

    #[test]
    fn names_are_bytes_written_as_text() {
        for raw in [&b"plain"[..], b"100%", b"\xff\xfe", b"a%2", "é%".as_bytes()] {
            assert_eq!(decode(&encode(raw)), raw);
        }
        assert_eq!(encode(b"a%\xff"), "a%25%FF");
    }

    #[test]
    fn config_becomes_change_lines() {
        let c = Config {
            entrypoint: Some(vec!["/init".into()]),
            cmd: Some(vec!["httpd".into(), "-f".into()]),
            env: vec!["PATH=/bin".into(), "A=b c".into()],
            working_dir: Some("/www".into()),
            user: Some("1000:1000".into()),
            exposed_ports: vec!["8080/tcp".into()],
        };
        assert_eq!(
            c.changes(),
            [
                r#"ENTRYPOINT ["/init"]"#,
                r#"CMD ["httpd","-f"]"#,
                r#"ENV PATH="/bin""#,
                r#"ENV A="b c""#,
                "WORKDIR /www",
                "USER 1000:1000",
                "EXPOSE 8080/tcp"
            ]
        );
    }
}
