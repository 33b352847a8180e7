//! Unpacking an image's source into a [`Tree`] and the local blob store.
//!
//! A source is read once: `.lab/images/NAME.source` keeps the tree's ID
//! under a signature of the source's stat (an archive's; every entry's of a
//! layout or root directory), and while that holds, opening the image reads
//! only its tree file. Layers are read entry by entry; each file's content
//! is hashed as it is copied into the blob store, so memory stays small
//! whatever the image's size.

use crate::error::ImageError;
use crate::tree::{Config, Entry, Kind, Tree};
use lab_core::LabDir;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// An image opened: its tree and the tree's ID.
#[derive(Clone, Debug)]
pub struct Opened {
    pub id: String,
    pub tree: Tree,
}

/// Open the image `name` whose source is `source` (an OCI archive, an OCI
/// layout directory, a docker-archive, or a root directory), unpacking it
/// into `lab`'s blob store unless its cached tree still holds.
pub fn open(source: &Path, name: &str, lab: &LabDir) -> Result<Opened, ImageError> {
    let signature = signature(source)?;
    let cache = lab.image_source_path(name);
    let blobs = lab.image_blobs_dir();
    if let Some(id) = fs_err::read_to_string(&cache)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .filter(|v| v["signature"] == signature.as_str())
        .and_then(|v| v["id"].as_str().map(str::to_string))
    {
        if let Some(tree) = fs_err::read_to_string(lab.image_tree_path(&id))
            .ok()
            .and_then(|t| Tree::parse(&t))
        {
            let whole = tree
                .entries
                .values()
                .filter_map(|e| e.sha256.as_deref())
                .all(|s| blobs.join(s).exists());
            if whole && tree.id() == id {
                return Ok(Opened { id, tree });
            }
        }
    }
    fs_err::create_dir_all(&blobs).map_err(ImageError::io(&blobs))?;
    let tree = unpack(source, &blobs)?;
    let id = tree.id();
    let tree_path = lab.image_tree_path(&id);
    write_atomic(&tree_path, tree.to_text().as_bytes())?;
    let text = serde_json::json!({"signature": signature, "id": id}).to_string();
    write_atomic(&cache, text.as_bytes())?;
    Ok(Opened { id, tree })
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    let dir = path.parent().expect("a file in a directory");
    fs_err::create_dir_all(dir).map_err(ImageError::io(dir))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs_err::write(&tmp, data)
        .and_then(|()| fs_err::rename(&tmp, path))
        .map_err(ImageError::io(path))
}

/// The stat of the source (every entry below a directory), hashed.
fn signature(source: &Path) -> Result<String, ImageError> {
    use std::os::unix::fs::MetadataExt;
    let mut h = Sha256::new();
    h.update(b"lab-images source v1\0");
    for e in walkdir::WalkDir::new(source)
        .follow_links(false)
        .sort_by_file_name()
    {
        let e = e.map_err(|e| ImageError::Io {
            path: e.path().unwrap_or(source).to_path_buf(),
            source: e.into(),
        })?;
        let m = e.metadata().map_err(|err| ImageError::Io {
            path: e.path().to_path_buf(),
            source: err.into(),
        })?;
        h.update(e.path().as_os_str().as_encoded_bytes());
        h.update([0]);
        for n in [
            m.ino(),
            m.size(),
            m.mtime() as u64,
            m.mtime_nsec() as u64,
            m.ctime() as u64,
            m.ctime_nsec() as u64,
            m.mode() as u64,
            m.uid() as u64,
            m.gid() as u64,
        ] {
            h.update(n.to_le_bytes());
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Copy `r` into the blob store as it is hashed; returns its sha256 and
/// size.
fn put_blob(blobs: &Path, r: &mut dyn Read) -> std::io::Result<(String, u64)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let tmp = blobs.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = std::io::BufWriter::new(fs_err::File::create(&tmp)?);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut len = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = fs_err::remove_file(&tmp);
                return Err(e);
            }
        };
        h.update(&buf[..n]);
        std::io::Write::write_all(&mut f, &buf[..n])?;
        len += n as u64;
    }
    f.into_inner().map_err(|e| e.into_error())?;
    let sha = hex::encode(h.finalize());
    let dest = blobs.join(&sha);
    if dest.exists() {
        fs_err::remove_file(&tmp)?;
    } else {
        fs_err::rename(&tmp, &dest)?;
    }
    Ok((sha, len))
}

fn unpack(source: &Path, blobs: &Path) -> Result<Tree, ImageError> {
    let meta = fs_err::symlink_metadata(source).map_err(ImageError::io(source))?;
    if meta.is_dir() {
        if source.join("index.json").exists() {
            return unpack_oci(&mut Layout(source.to_path_buf()), source, blobs);
        }
        return unpack_rootfs(source, blobs);
    }
    let mut ar = Archive::open(source)?;
    if ar.members.contains_key("index.json") {
        unpack_oci(&mut ar, source, blobs)
    } else if ar.members.contains_key("manifest.json") {
        unpack_docker(&mut ar, source, blobs)
    } else {
        Err(ImageError::Format {
            path: source.to_path_buf(),
            reason: "it has neither index.json nor manifest.json".into(),
        })
    }
}

/// Where an image's blobs are read from.
trait Blobs {
    fn open(&mut self, name: &str) -> std::io::Result<Box<dyn Read + '_>>;
}

/// An OCI layout directory.
struct Layout(PathBuf);

impl Blobs for Layout {
    fn open(&mut self, name: &str) -> std::io::Result<Box<dyn Read + '_>> {
        if name.split('/').any(|c| c == "..") {
            return Err(std::io::Error::other(format!("{name}: outside the image")));
        }
        Ok(Box::new(std::io::BufReader::new(fs_err::File::open(
            self.0.join(name),
        )?)))
    }
}

/// A tar archive, read by seeking to its members.
struct Archive {
    file: fs_err::File,
    members: BTreeMap<String, (u64, u64)>,
}

impl Archive {
    fn open(path: &Path) -> Result<Archive, ImageError> {
        let io = ImageError::io(path);
        let f = fs_err::File::open(path).map_err(ImageError::io(path))?;
        let mut members = BTreeMap::new();
        {
            let mut ar = tar::Archive::new(std::io::BufReader::new(&f));
            let entries = ar.entries_with_seek();
            let entries = match entries {
                Ok(e) => e,
                Err(e) => return Err(io(e)),
            };
            for e in entries {
                let e = e.map_err(ImageError::io(path))?;
                let name = e.path().map_err(ImageError::io(path))?;
                let name = name.to_string_lossy().trim_start_matches("./").to_string();
                members.insert(name, (e.raw_file_position(), e.size()));
            }
        }
        Ok(Archive { file: f, members })
    }
}

impl Blobs for Archive {
    fn open(&mut self, name: &str) -> std::io::Result<Box<dyn Read + '_>> {
        let (pos, size) = *self
            .members
            .get(name)
            .ok_or_else(|| std::io::Error::other(format!("no member {name}")))?;
        self.file.seek(SeekFrom::Start(pos))?;
        Ok(Box::new(std::io::BufReader::new(
            (&mut self.file).take(size),
        )))
    }
}

fn read_json(b: &mut dyn Blobs, name: &str, src: &Path) -> Result<serde_json::Value, ImageError> {
    let bad = |reason: String| ImageError::Format {
        path: src.to_path_buf(),
        reason,
    };
    let mut text = Vec::new();
    b.open(name)
        .and_then(|mut r| r.by_ref().take(16 << 20).read_to_end(&mut text))
        .map_err(|e| bad(format!("{name}: {e}")))?;
    serde_json::from_slice(&text).map_err(|e| bad(format!("{name}: {e}")))
}

fn blob_name(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

fn unpack_oci(b: &mut dyn Blobs, src: &Path, blobs: &Path) -> Result<Tree, ImageError> {
    let bad = |reason: String| ImageError::Format {
        path: src.to_path_buf(),
        reason,
    };
    let index = read_json(b, "index.json", src)?;
    let mut manifest_digest = index["manifests"]
        .as_array()
        .and_then(|m| m.first())
        .and_then(|d| d["digest"].as_str())
        .ok_or_else(|| bad("index.json lists no manifest".into()))?
        .to_string();
    let mut manifest = read_json(b, &blob_name(&manifest_digest), src)?;
    // (an index of indexes, as some tools write: its first manifest)
    for _ in 0..4 {
        let Some(d) = manifest["manifests"]
            .as_array()
            .and_then(|m| m.first())
            .and_then(|d| d["digest"].as_str())
        else {
            break;
        };
        manifest_digest = d.to_string();
        manifest = read_json(b, &blob_name(&manifest_digest), src)?;
    }
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .ok_or_else(|| bad("the manifest names no config".into()))?;
    let config = read_json(b, &blob_name(config_digest), src)?;
    let mut layers = Vec::new();
    for l in manifest["layers"].as_array().into_iter().flatten() {
        let digest = l["digest"]
            .as_str()
            .ok_or_else(|| bad("a layer has no digest".into()))?;
        let media = l["mediaType"].as_str().unwrap_or("");
        layers.push((blob_name(digest), media.to_string()));
    }
    build(b, src, blobs, &config, &layers)
}

fn unpack_docker(b: &mut dyn Blobs, src: &Path, blobs: &Path) -> Result<Tree, ImageError> {
    let bad = |reason: String| ImageError::Format {
        path: src.to_path_buf(),
        reason,
    };
    let m = read_json(b, "manifest.json", src)?;
    let first = m
        .as_array()
        .and_then(|a| a.first())
        .ok_or_else(|| bad("manifest.json lists no image".into()))?;
    let config_name = first["Config"]
        .as_str()
        .ok_or_else(|| bad("manifest.json names no Config".into()))?
        .to_string();
    let layers: Vec<(String, String)> = first["Layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str())
        .map(|l| (l.to_string(), String::new()))
        .collect();
    let config = read_json(b, &config_name, src)?;
    build(b, src, blobs, &config, &layers)
}

/// The config's fields podman uses.
fn config_of(v: &serde_json::Value) -> Config {
    let c = &v["config"];
    let strings = |v: &serde_json::Value| -> Option<Vec<String>> {
        v.as_array().map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
    };
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    Config {
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        env: strings(&c["Env"]).unwrap_or_default(),
        working_dir: text(&c["WorkingDir"]).filter(|s| !s.is_empty()),
        user: text(&c["User"]).filter(|s| !s.is_empty()),
        exposed_ports: c["ExposedPorts"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default(),
    }
}

fn build(
    b: &mut dyn Blobs,
    src: &Path,
    blobs: &Path,
    config: &serde_json::Value,
    layers: &[(String, String)],
) -> Result<Tree, ImageError> {
    let mut tree = Tree {
        entries: BTreeMap::new(),
        config: config_of(config),
    };
    for (name, media) in layers {
        let r = b.open(name).map_err(|e| ImageError::Format {
            path: src.to_path_buf(),
            reason: format!("layer {name}: {e}"),
        })?;
        let mut r = std::io::BufReader::new(r);
        // (by media type, else by the gzip magic)
        let gz = media.contains("gzip") || {
            use std::io::BufRead;
            let head = r.fill_buf().map_err(ImageError::io(src))?;
            head.starts_with(&[0x1f, 0x8b])
        };
        if media.contains("zstd") {
            return Err(ImageError::Format {
                path: src.to_path_buf(),
                reason: format!("layer {name} is zstd-compressed, which lab does not read yet"),
            });
        }
        let r: Box<dyn Read + '_> = if gz {
            Box::new(flate2::read::GzDecoder::new(r))
        } else {
            Box::new(r)
        };
        apply_layer(&mut tree, r, src, name, blobs)?;
    }
    Ok(tree)
}

/// A path of a layer as the tree names it: no `./`, no leading or
/// trailing `/`; `..` is refused.
fn clean(raw: &[u8], src: &Path, layer: &str) -> Result<String, ImageError> {
    let s = crate::tree::encode(raw);
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(ImageError::Entry {
                    path: src.to_path_buf(),
                    entry: s.to_string(),
                    reason: format!("in layer {layer}: a name with `..` would leave the image"),
                })
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

fn parent(p: &str) -> Option<&str> {
    p.rsplit_once('/').map(|(d, _)| d)
}

fn remove_below(tree: &mut Tree, p: &str) {
    tree.entries.remove(p);
    remove_children(tree, &format!("{p}/"));
}

/// Remove every entry whose path starts with `prefix` (`DIR/`, or `` for
/// the whole tree).
fn remove_children(tree: &mut Tree, prefix: &str) {
    let below: Vec<String> = tree
        .entries
        .range(prefix.to_string()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in below {
        tree.entries.remove(&k);
    }
}

fn apply_layer(
    tree: &mut Tree,
    r: Box<dyn Read + '_>,
    src: &Path,
    layer: &str,
    blobs: &Path,
) -> Result<(), ImageError> {
    let io = |e: std::io::Error| ImageError::Format {
        path: src.to_path_buf(),
        reason: format!("layer {layer}: {e}"),
    };
    let mut ar = tar::Archive::new(r);
    let mut placed: Vec<Entry> = Vec::new();
    let mut whiteouts: Vec<String> = Vec::new();
    let mut opaque: Vec<String> = Vec::new();
    for e in ar.entries().map_err(io)? {
        let mut e = e.map_err(io)?;
        let path = clean(&e.path_bytes(), src, layer)?;
        if path.is_empty() {
            continue;
        }
        let (dir, base) = match path.rsplit_once('/') {
            Some((d, b)) => (d.to_string(), b.to_string()),
            None => (String::new(), path.clone()),
        };
        if base == ".wh..wh..opq" {
            opaque.push(dir);
            continue;
        }
        if let Some(gone) = base.strip_prefix(".wh.") {
            whiteouts.push(if dir.is_empty() {
                gone.to_string()
            } else {
                format!("{dir}/{gone}")
            });
            continue;
        }
        let h = e.header();
        let mode = h.mode().map_err(io)? & 0o7777;
        // (a field left blank is 0, as podman's reader takes it)
        let blank = |f: &[u8]| f.iter().all(|b| *b == 0 || *b == b' ');
        let uid = if blank(&h.as_old().uid) {
            0
        } else {
            h.uid().map_err(io)?
        };
        let gid = if blank(&h.as_old().gid) {
            0
        } else {
            h.gid().map_err(io)?
        };
        let mut entry = Entry {
            path: path.clone(),
            kind: Kind::File,
            mode,
            uid,
            gid,
            size: None,
            sha256: None,
            target: None,
            major: None,
            minor: None,
        };
        let t = h.entry_type();
        match t {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let (sha, size) = put_blob(blobs, &mut e).map_err(io)?;
                entry.sha256 = Some(sha);
                entry.size = Some(size);
            }
            tar::EntryType::Directory => entry.kind = Kind::Dir,
            tar::EntryType::Symlink => {
                entry.kind = Kind::Symlink;
                let target = e.link_name_bytes().unwrap_or_default();
                entry.target = Some(crate::tree::encode(&target));
            }
            tar::EntryType::Link => {
                let target = clean(&e.link_name_bytes().unwrap_or_default(), src, layer)?;
                let of = placed
                    .iter()
                    .rev()
                    .find(|p| p.path == target)
                    .or_else(|| tree.entries.get(&target))
                    .filter(|p| p.kind == Kind::File)
                    .ok_or_else(|| ImageError::Entry {
                        path: src.to_path_buf(),
                        entry: path.clone(),
                        reason: format!("in layer {layer}: a hard link to `{target}`, which is not a file before it"),
                    })?;
                entry.sha256 = of.sha256.clone();
                entry.size = of.size;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                entry.kind = match t {
                    tar::EntryType::Char => Kind::Char,
                    tar::EntryType::Block => Kind::Block,
                    _ => Kind::Fifo,
                };
                if entry.kind != Kind::Fifo {
                    entry.major = h.device_major().ok().flatten();
                    entry.minor = h.device_minor().ok().flatten();
                }
            }
            other => {
                return Err(ImageError::Entry {
                    path: src.to_path_buf(),
                    entry: path,
                    reason: format!(
                    "in layer {layer}: an entry of tar type {other:?}, which an image cannot hold"
                ),
                })
            }
        }
        placed.push(entry);
    }
    // whiteouts hide what the layers below hold, never this layer's own
    for w in whiteouts {
        remove_below(tree, &w);
    }
    for d in opaque {
        let prefix = if d.is_empty() {
            String::new()
        } else {
            format!("{d}/")
        };
        remove_children(tree, &prefix);
    }
    for e in placed {
        let replaced_dir = tree
            .entries
            .get(&e.path)
            .is_some_and(|o| o.kind == Kind::Dir && e.kind != Kind::Dir);
        if replaced_dir {
            remove_below(tree, &e.path);
        }
        // every parent a directory (made as 0755 root when the layer
        // leaves it out)
        let mut p = parent(&e.path);
        let mut missing = Vec::new();
        while let Some(d) = p {
            match tree.entries.get(d) {
                Some(x) if x.kind == Kind::Dir => break,
                Some(_) => {
                    return Err(ImageError::Entry {
                        path: src.to_path_buf(),
                        entry: e.path.clone(),
                        reason: format!(
                            "in layer {layer}: it lies below `{d}`, which is not a directory"
                        ),
                    })
                }
                None => missing.push(d.to_string()),
            }
            p = parent(d);
        }
        for d in missing {
            tree.entries.insert(
                d.clone(),
                Entry {
                    path: d,
                    kind: Kind::Dir,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    size: None,
                    sha256: None,
                    target: None,
                    major: None,
                    minor: None,
                },
            );
        }
        tree.entries.insert(e.path.clone(), e);
    }
    Ok(())
}

/// A root directory: its entries as they are (owners and modes included).
fn unpack_rootfs(dir: &Path, blobs: &Path) -> Result<Tree, ImageError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut tree = Tree {
        entries: BTreeMap::new(),
        config: Config {
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            ..Config::default()
        },
    };
    for e in walkdir::WalkDir::new(dir)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
    {
        let e = e.map_err(|e| ImageError::Io {
            path: e.path().unwrap_or(dir).to_path_buf(),
            source: e.into(),
        })?;
        let rel = e.path().strip_prefix(dir).expect("below the root");
        let path = clean(rel.as_os_str().as_encoded_bytes(), dir, "(root directory)")?;
        let m = e.metadata().map_err(|err| ImageError::Io {
            path: e.path().to_path_buf(),
            source: err.into(),
        })?;
        let ft = m.file_type();
        let mut entry = Entry {
            path: path.clone(),
            kind: Kind::File,
            mode: m.mode() & 0o7777,
            uid: m.uid() as u64,
            gid: m.gid() as u64,
            size: None,
            sha256: None,
            target: None,
            major: None,
            minor: None,
        };
        if ft.is_file() {
            let mut f = fs_err::File::open(e.path()).map_err(ImageError::io(e.path()))?;
            let (sha, size) = put_blob(blobs, &mut f).map_err(ImageError::io(e.path()))?;
            entry.sha256 = Some(sha);
            entry.size = Some(size);
        } else if ft.is_dir() {
            entry.kind = Kind::Dir;
        } else if ft.is_symlink() {
            entry.kind = Kind::Symlink;
            let t = fs_err::read_link(e.path()).map_err(ImageError::io(e.path()))?;
            entry.target =
                Some(
                    t.to_str()
                        .map(str::to_string)
                        .ok_or_else(|| ImageError::Entry {
                            path: dir.to_path_buf(),
                            entry: path.clone(),
                            reason: "a link target that is not UTF-8".into(),
                        })?,
                );
        } else if ft.is_fifo() {
            entry.kind = Kind::Fifo;
        } else if ft.is_char_device() || ft.is_block_device() {
            entry.kind = if ft.is_char_device() {
                Kind::Char
            } else {
                Kind::Block
            };
            let dev = m.rdev();
            entry.major = Some((((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)) as u32);
            entry.minor = Some((((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)) as u32);
        } else {
            return Err(ImageError::Entry {
                path: dir.to_path_buf(),
                entry: path,
                reason: "a socket cannot be part of an image; remove it".into(),
            });
        }
        tree.entries.insert(entry.path.clone(), entry);
    }
    Ok(tree)
}
