//! Container images for a machine's pods, shipped over the sync's own
//! connection: no registry, no `podman image scp`.
//!
//! An image is an OCI image archive `images/NAME.tar`, an OCI layout
//! directory `images/NAME/` (with an `index.json`) or a root directory
//! `images/NAME/` (any other directory: one layer, no command) in the
//! project, and its name is
//! `localhost/NAME:latest` (as lab-pods names it in the pods it compiles);
//! its ID is the sha256 of its config, which is podman's image ID after a
//! load.
//!
//! Before the files of a sync are applied, lab reads which images the
//! machine's Quadlet files name (`image:` in a pod's YAML, `Image=` in a
//! `.kube`/`.container`), asks the machine once which images the pod user
//! (for `/etc/containers/systemd/users/`) and root (for the rest) have, and
//! for each one they lack streams the archive (a layout directory as a tar
//! of it) into `podman load` as that user, then tags it with its name. An
//! image already there under its name costs nothing more. When a name
//! pointed at another image before (the image was updated), the pods of
//! that user that use it and whose own files this sync does not change are
//! restarted (`restart`: a stopped pod stays stopped): those restarts are
//! journaled on the machine as pending unit actions of its generation in
//! the command that moves the name, and the sync runs them with the rest
//! of its unit actions, so a dropped link never loses one.

use crate::error::SyncError;
use crate::transport::Transport;
use lab_agent::quote;
use lab_manifest::Manifest;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

/// One image of the project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// `localhost/web:latest`
    pub name: String,
    /// Hex sha256 of its config (podman's image ID).
    pub id: String,
    /// The archive, the layout directory or the root directory.
    pub path: PathBuf,
    /// A root directory's layer (what [`Image::stream`] makes of it).
    rootfs: Option<Rootfs>,
}

/// An image made of a root directory: one layer, the directory as a tar
/// (entries sorted by name, each with its own mode, owner and mtime), and
/// a config with no command (a pod gives it).
#[derive(Clone, Debug)]
struct Rootfs {
    /// Hex sha256 and size of the layer.
    layer: String,
    layer_size: u64,
    config: Vec<u8>,
    /// Where the layer's digest and size were cached (dropped when the
    /// directory turns out not to give that layer).
    cache: Option<PathBuf>,
}

impl PartialEq for Rootfs {
    fn eq(&self, o: &Rootfs) -> bool {
        (&self.layer, self.layer_size, &self.config) == (&o.layer, o.layer_size, &o.config)
    }
}

impl Eq for Rootfs {}

/// What is wrong with an image of `images/`.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not an OCI image (archive or layout): {reason}\nhint: write one with `podman save --format oci-archive -o {} IMAGE`", path.display(), path.display())]
    Format { path: PathBuf, reason: String },
}

/// `web:1` -> `localhost/web:1`; a name with a registry (a first component
/// with `.` or `:`, or `localhost`) stays; no tag means `latest`.
pub fn normalize(name: &str) -> String {
    let name = name.trim();
    let with_domain = match name.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => name.to_string(),
        _ => format!("localhost/{name}"),
    };
    let last = with_domain.rsplit('/').next().unwrap_or("");
    if last.contains([':', '@']) {
        with_domain
    } else {
        format!("{with_domain}:latest")
    }
}

impl Image {
    /// Read the ID of the OCI archive, layout directory (it has an
    /// `index.json`) or root directory (any other directory) at `path`,
    /// named `name`.
    /// `lab`: where to keep (and find) what a root directory's layer is.
    pub fn open(
        path: &Path,
        name: &str,
        lab: Option<&lab_core::LabDir>,
    ) -> Result<Image, ImageError> {
        if path.is_dir() && !path.join("index.json").exists() {
            let cache = lab.map(|l| l.rootfs_cache_path(name));
            return Image::open_rootfs(path, name, cache.as_deref());
        }
        let io = |source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bad = |reason: String| ImageError::Format {
            path: path.to_path_buf(),
            reason,
        };
        // index.json and the blobs it leads to by digest (small JSON; the
        // layers are never read)
        let mut small: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let dir = path.is_dir();
        let read_small =
            |rel: &str, small: &mut BTreeMap<String, Vec<u8>>| -> Result<(), ImageError> {
                if dir && !small.contains_key(rel) {
                    if let Ok(b) = fs_err::read(path.join(rel)) {
                        small.insert(rel.to_string(), b);
                    }
                }
                Ok(())
            };
        if !dir {
            // (seeking past the layers: a 100 MB image costs a few reads)
            let f = std::io::BufReader::new(fs_err::File::open(path).map_err(io)?);
            let mut ar = tar::Archive::new(f);
            for entry in ar.entries_with_seek().map_err(io)? {
                let mut entry = entry.map_err(io)?;
                let p = entry.path().map_err(io)?.display().to_string();
                let p = p.trim_start_matches("./").to_string();
                if entry.size() <= 1 << 20 {
                    let mut buf = Vec::new();
                    entry.read_to_end(&mut buf).map_err(io)?;
                    small.insert(p, buf);
                }
            }
        }
        let mut json = |p: &str| -> Result<serde_json::Value, ImageError> {
            read_small(p, &mut small)?;
            let bytes = small.get(p).ok_or_else(|| bad(format!("no {p}")))?;
            serde_json::from_slice(bytes).map_err(|e| bad(format!("{p}: {e}")))
        };
        let blob = |digest: &str| format!("blobs/{}", digest.replacen(':', "/", 1));
        let index = json("index.json")?;
        let manifest_digest = index["manifests"]
            .as_array()
            .and_then(|m| m.first())
            .and_then(|d| d["digest"].as_str())
            .ok_or_else(|| bad("index.json lists no manifest".into()))?
            .to_string();
        let manifest = json(&blob(&manifest_digest))?;
        let config = manifest["config"]["digest"]
            .as_str()
            .and_then(|d| d.strip_prefix("sha256:"))
            .ok_or_else(|| bad("the manifest has no sha256 config digest".into()))?;
        Ok(Image {
            name: normalize(name),
            id: config.to_string(),
            path: path.to_path_buf(),
            rootfs: None,
        })
    }

    /// A root directory: its layer is made (and only hashed and counted,
    /// never held) to know the image's ID; or, when `cache` holds the
    /// layer of a directory whose every entry has the stat it has now,
    /// taken from there (the ctime moves with any write, chmod, chown or
    /// rename, and nothing sets it back).
    fn open_rootfs(path: &Path, name: &str, cache: Option<&Path>) -> Result<Image, ImageError> {
        // The file system's clock now, from a file written before the
        // tree is looked at: an entry whose times are not older may be
        // written again within the same clock tick and keep its stat (the
        // "racily clean" entries of git), so such a tree is not cached.
        let tmp = cache.map(|c| c.with_extension("rootfs.tmp"));
        let now = tmp.as_deref().and_then(|t| {
            use std::os::unix::fs::MetadataExt;
            fs_err::create_dir_all(t.parent()?).ok()?;
            fs_err::write(t, b"").ok()?;
            let m = fs_err::metadata(t).ok()?;
            Some((m.mtime(), m.mtime_nsec()))
        });
        let (signature, newest) = tree_signature(path)?;
        let cached = cache
            .and_then(|c| fs_err::read_to_string(c).ok())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .filter(|v| v["signature"] == signature.as_str())
            .and_then(|v| Some((v["layer"].as_str()?.to_string(), v["size"].as_u64()?)));
        let (layer, layer_size) = match cached {
            Some(found) => found,
            None => {
                let mut sink = HashCount::default();
                rootfs_tar(path, &mut sink)?;
                let found = (hex::encode(sink.hash.finalize()), sink.len);
                let settled = now.is_some_and(|now| newest < now);
                if let (Some(c), Some(tmp), true) = (cache, &tmp, settled) {
                    // (a cache that cannot be written costs a read next time)
                    let text = serde_json::json!({
                        "signature": signature, "layer": found.0, "size": found.1,
                    })
                    .to_string();
                    let _ = fs_err::write(tmp, text).and_then(|()| fs_err::rename(tmp, c));
                } else if let Some(tmp) = &tmp {
                    let _ = fs_err::remove_file(tmp);
                }
                found
            }
        };
        let config = serde_json::json!({
            "architecture": go_arch(),
            "os": "linux",
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer}")]},
        })
        .to_string()
        .into_bytes();
        Ok(Image {
            name: normalize(name),
            id: hex::encode(Sha256::digest(&config)),
            path: path.to_path_buf(),
            rootfs: Some(Rootfs {
                layer,
                layer_size,
                config,
                cache: cache.map(Path::to_path_buf),
            }),
        })
    }

    /// Write the image as an OCI archive (a layout directory is tarred on
    /// the way).
    fn stream(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        if let Some(r) = &self.rootfs {
            return r.stream(&self.path, &self.name, w);
        }
        if self.path.is_dir() {
            let mut b = tar::Builder::new(w);
            b.follow_symlinks(false);
            b.sparse(false);
            b.append_dir_all(".", &self.path)?;
            b.finish()
        } else {
            let mut f = fs_err::File::open(&self.path)?;
            std::io::copy(&mut f, w).map(|_| ())
        }
    }
}

impl Rootfs {
    /// The OCI archive: layout, index, manifest, config, and the layer
    /// made again from the directory on the way (its size and digest
    /// must be what [`Image::open`] found: a directory changed since
    /// fails here, and podman refuses a layer that does not match).
    fn stream(&self, dir: &Path, name: &str, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": format!("sha256:{}", hex::encode(Sha256::digest(&self.config))),
                "size": self.config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": format!("sha256:{}", self.layer),
                "size": self.layer_size,
            }],
        })
        .to_string()
        .into_bytes();
        let manifest_digest = hex::encode(Sha256::digest(&manifest));
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{manifest_digest}"),
                "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": name},
            }],
        })
        .to_string()
        .into_bytes();
        let config_digest = hex::encode(Sha256::digest(&self.config));
        let small: [(&str, &[u8]); 4] = [
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            ("index.json", &index),
            (&format!("blobs/sha256/{config_digest}"), &self.config),
            (&format!("blobs/sha256/{manifest_digest}"), &manifest),
        ];
        for (path, data) in small {
            tar_header(w, path, data.len() as u64)?;
            w.write_all(data)?;
            tar_pad(w, data.len() as u64)?;
        }
        tar_header(w, &format!("blobs/sha256/{}", self.layer), self.layer_size)?;
        let mut counted = HashCount {
            inner: Some(&mut *w),
            ..HashCount::default()
        };
        rootfs_tar(dir, &mut counted).map_err(|e| std::io::Error::other(e.to_string()))?;
        let (len, digest) = (counted.len, hex::encode(counted.hash.finalize()));
        if len != self.layer_size || digest != self.layer {
            // (what was cached of it is not what it gives: read it again
            // next time)
            if let Some(c) = &self.cache {
                let _ = fs_err::remove_file(c);
            }
            return Err(std::io::Error::other(format!(
                "{} changed while it was shipped (or since it was read); nothing was loaded \
                 under its name: sync again",
                dir.display()
            )));
        }
        tar_pad(w, len)?;
        w.write_all(&[0; 1024])
    }
}

/// One entry's header of an archive written by hand (a regular file).
fn tar_header(w: &mut dyn std::io::Write, path: &str, size: u64) -> std::io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    w.write_all(h.as_bytes())
}

/// The zeros that round an entry of `size` bytes up to a block.
fn tar_pad(w: &mut dyn std::io::Write, size: u64) -> std::io::Result<()> {
    let rest = (512 - size % 512) % 512;
    w.write_all(&vec![0; rest as usize])
}

/// The layer of a root directory, written to `w`: every entry below it,
/// sorted by name, symlinks as symlinks.
fn rootfs_tar(dir: &Path, w: &mut dyn std::io::Write) -> Result<(), ImageError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let bad = |p: &Path, e: std::io::Error| ImageError::Io {
        path: p.to_path_buf(),
        source: e,
    };
    let mut b = tar::Builder::new(w);
    b.follow_symlinks(false);
    // (podman's unpacker refuses GNU sparse entries: holes go as zeros)
    b.sparse(false);
    for e in walkdir::WalkDir::new(dir)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
    {
        let e = e.map_err(|e| {
            let p = e.path().unwrap_or(dir).to_path_buf();
            bad(&p, e.into())
        })?;
        let rel = e.path().strip_prefix(dir).expect("below the root");
        let ft = e.file_type();
        if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            // (the tar crate would name these by their path on this host)
            let m = e.metadata().map_err(|err| bad(e.path(), err.into()))?;
            let mut h = tar::Header::new_gnu();
            h.set_metadata(&m);
            h.set_size(0);
            h.set_entry_type(if ft.is_fifo() {
                tar::EntryType::Fifo
            } else if ft.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            });
            let dev = m.rdev();
            h.set_device_major(dev_major(dev))
                .and_then(|()| h.set_device_minor(dev_minor(dev)))
                .and_then(|()| b.append_data(&mut h, rel, std::io::empty()))
                .map_err(|err| bad(e.path(), err))?;
            continue;
        }
        if ft.is_socket() {
            return Err(bad(
                e.path(),
                std::io::Error::other("a socket cannot be part of an image; remove it"),
            ));
        }
        b.append_path_with_name(e.path(), rel)
            .map_err(|err| bad(e.path(), err))?;
    }
    b.finish().map_err(|e| bad(dir, e))
}

/// A device number's major and minor (glibc's encoding).
fn dev_major(dev: u64) -> u32 {
    (((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)) as u32
}

fn dev_minor(dev: u64) -> u32 {
    (((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)) as u32
}

/// The stat of every entry below `dir` (path, inode, size, mtime, ctime,
/// mode, owner), hashed: what a root directory's cached layer is valid for;
/// and the newest mtime or ctime of an entry (seconds, nanoseconds).
fn tree_signature(dir: &Path) -> Result<(String, (i64, i64)), ImageError> {
    use std::os::unix::fs::MetadataExt;
    let mut h = Sha256::new();
    // (the layer's format: a cache of another format is not this one's)
    h.update(b"layer v2: no sparse entries\0");
    let mut newest = (i64::MIN, 0);
    for e in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
    {
        let e = e.map_err(|e| ImageError::Io {
            path: e.path().unwrap_or(dir).to_path_buf(),
            source: e.into(),
        })?;
        let m = e.metadata().map_err(|err| ImageError::Io {
            path: e.path().to_path_buf(),
            source: err.into(),
        })?;
        newest = newest
            .max((m.mtime(), m.mtime_nsec()))
            .max((m.ctime(), m.ctime_nsec()));
        let rel = e.path().strip_prefix(dir).unwrap_or(e.path());
        h.update(rel.as_os_str().as_encoded_bytes());
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
    Ok((hex::encode(h.finalize()), newest))
}

/// A writer that hashes and counts what goes through it (to `inner`, if
/// any).
#[derive(Default)]
struct HashCount<'a> {
    hash: Sha256,
    len: u64,
    inner: Option<&'a mut dyn std::io::Write>,
}

impl std::io::Write for HashCount<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = match &mut self.inner {
            Some(w) => w.write(buf)?,
            None => buf.len(),
        };
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.inner {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

/// The image config's name for this machine's architecture.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        other => other,
    }
}

/// The project's images: every `NAME.tar` and `NAME/` in `dir` that
/// [`lab_pods::image_name`] takes (none when
/// it does not exist), named `localhost/NAME:latest`.
/// `lab`: see [`Image::open`].
pub fn project_images(
    dir: &Path,
    lab: Option<&lab_core::LabDir>,
) -> Result<Vec<Image>, ImageError> {
    let rd = match fs_err::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ImageError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|source| ImageError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let p = e.path();
        let file = e.file_name().to_string_lossy().into_owned();
        if let Some(name) = lab_pods::image_name(&file, p.is_dir()) {
            out.push(Image::open(&p, name, lab)?);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// One Quadlet file's use of an image.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Use {
    /// `None`: root's storage; else the pod user's.
    pub user: Option<String>,
    /// The image's name, normalized.
    pub image: String,
    /// The Quadlet file (machine path, no leading `/`) naming it.
    pub path: String,
}

/// The images the Quadlet files of a built tree use.
pub fn wanted(out_dir: &Path, manifest: &Manifest, pod_user: &str) -> Vec<Use> {
    let mut out = Vec::new();
    for (path, e) in &manifest.entries {
        let under = |dir: &str| path.strip_prefix(dir).and_then(|r| r.strip_prefix('/'));
        if e.is_dir() || under(lab_pods::ROOTFUL_DIR).is_none() {
            continue;
        }
        let user = path
            .strip_prefix(lab_pods::ROOTLESS_DIR)
            .and_then(|r| r.strip_prefix('/'))
            .filter(|rest| !rest.contains('/'))
            .map(|_| pod_user.to_string());
        if under(lab_pods::ROOTLESS_DIR).is_some() && user.is_none() {
            continue;
        }
        let Ok(text) = fs_err::read_to_string(out_dir.join(path)) else {
            continue;
        };
        let yaml = path.ends_with(".yaml") || path.ends_with(".yml");
        for line in text.lines() {
            let l = line.trim_start().trim_start_matches("- ").trim_start();
            let value = if yaml {
                l.strip_prefix("image:")
            } else {
                l.strip_prefix("Image=")
            };
            if let Some(v) = value {
                let v = v.trim().trim_matches(['"', '\'']);
                if !v.is_empty() {
                    out.push(Use {
                        user: user.clone(),
                        image: normalize(v),
                        path: path.clone(),
                    });
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `podman ARGS` as `user` (root when `None`), with the environment
/// rootless podman needs and no other.
pub fn podman_as(user: Option<&str>, args: &str) -> String {
    match user {
        None => format!("podman {args}"),
        Some(u) => {
            let q = quote(u);
            format!(
                "(cd / && uid=$(id -u {q}) && home=$(getent passwd {q} | cut -d: -f6) && \
                 exec runuser -u {q} -- env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=\"$home\" \
                 XDG_RUNTIME_DIR=/run/user/$uid podman {args})"
            )
        }
    }
}

/// The Quadlet unit a file of the tree belongs to: `users/web.yaml` and
/// `users/web.kube` are `web.service`.
fn unit_of(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let (stem, ext) = file.rsplit_once('.')?;
    matches!(ext, "yaml" | "yml" | "kube" | "container").then(|| format!("{stem}.service"))
}

/// Ship the images the machine's pods use and it lacks. `changed`: the
/// paths this sync changes (their units act anyway). Returns notes
/// (`loaded image localhost/web:latest (0123456789ab) for pods`).
pub fn ship(
    transport: &mut dyn Transport,
    root: &str,
    images: &[Image],
    uses: &[Use],
    changed: &dyn Fn(&str) -> bool,
) -> Result<Vec<String>, SyncError> {
    let mut todo: BTreeMap<(Option<&str>, &str), &Image> = BTreeMap::new();
    for u in uses {
        if let Some(img) = images.iter().find(|i| i.name == u.image) {
            todo.insert((u.user.as_deref(), img.name.as_str()), img);
        }
    }
    if todo.is_empty() {
        return Ok(Vec::new());
    }
    // one command: which image each name is, for each user
    let users: BTreeSet<Option<&str>> = todo.keys().map(|(u, _)| *u).collect();
    let mut cmd = String::new();
    for u in &users {
        // (a pod user that is not there, or does not linger, gets no
        // images: its units fail, saying why, when they act)
        let check = match u {
            Some(name) => format!(
                "id -u {q} >/dev/null 2>&1 && [ -e /var/lib/systemd/linger/{q} ] && ",
                q = quote(name)
            ),
            None => "command -v podman >/dev/null && ".to_string(),
        };
        cmd.push_str(&format!(
            "if {check}:; then echo \"user {}\"; {} 2>/dev/null || :; fi; ",
            u.unwrap_or("-"),
            podman_as(
                *u,
                "images --no-trunc --format '{{.ID}} {{.Repository}}:{{.Tag}}'"
            )
        ));
    }
    let out = transport.run(&cmd, &mut |_| Ok(()))?;
    // user -> (ids, name -> id)
    let mut have: BTreeMap<String, (BTreeSet<String>, BTreeMap<String, String>)> = BTreeMap::new();
    let mut cur = String::new();
    for line in out.stdout_text().lines() {
        if let Some(u) = line.strip_prefix("user ") {
            cur = u.to_string();
            have.entry(cur.clone()).or_default();
        } else if let Some((id, name)) = line.trim().split_once(' ') {
            let id = id.trim_start_matches("sha256:").to_string();
            let e = have.entry(cur.clone()).or_default();
            e.0.insert(id.clone());
            e.1.insert(name.to_string(), id);
        }
    }
    let mut notes = Vec::new();
    for ((user, name), img) in todo {
        let key = user.unwrap_or("-").to_string();
        let Some((ids, names)) = have.get(&key) else {
            continue;
        };
        let before = names.get(name).cloned();
        if before.as_deref() == Some(img.id.as_str()) {
            continue;
        }
        // An updated image: its running pods that this sync does not touch
        // otherwise must run it from now on. Their restarts are journaled
        // on the machine before the name moves (in the same command), so
        // a link that drops in between cannot lose them: the rest of this
        // sync, or the next one, finds them pending and runs them.
        let units: BTreeSet<String> = if before.is_none() {
            BTreeSet::new()
        } else {
            uses.iter()
                .filter(|u| u.user.as_deref() == user && u.image == name)
                .filter_map(|u| {
                    let dir = u.path.rsplit_once('/').map_or("", |(d, _)| d);
                    let unit = unit_of(&u.path)?;
                    let stem = unit.trim_end_matches(".service");
                    let own = [
                        format!("{dir}/{stem}.kube"),
                        format!("{dir}/{stem}.yaml"),
                        format!("{dir}/{stem}.container"),
                    ];
                    (!own.iter().any(|p| changed(p))).then_some(unit)
                })
                .collect()
        };
        let scoped: Vec<String> = units
            .iter()
            .map(|u| match user {
                Some(who) => format!("{who}/{u}"),
                None => u.clone(),
            })
            .collect();
        let mut tag = podman_as(user, &format!("tag {} {}", img.id, quote(name)));
        if !scoped.is_empty() {
            let actions: Vec<(&str, &str)> =
                scoped.iter().map(|u| ("restart", u.as_str())).collect();
            tag = lab_agent::enqueue_command(root, &actions, &tag);
        }
        // (hang-ups ignored: once the image is here, the journal and the
        // tag are done even if the link drops)
        let out = if ids.contains(&img.id) {
            transport.run(&format!("trap '' HUP PIPE; {tag}"), &mut |_| Ok(()))?
        } else {
            // (whatever podman leaves unread is drained, so the stream
            // always ends)
            let load = format!(
                "trap '' HUP PIPE; {}; rc=$?; cat >/dev/null; [ $rc = 0 ] && {{ {tag}; }}",
                podman_as(user, "load -q")
            );
            // (an error reading the image is the image's, not the
            // link's: what was sent is cut short and podman refuses it)
            let mut unread = None;
            let out = transport.run(&load, &mut |w| {
                if let Err(e) = img.stream(w) {
                    unread = Some(e);
                }
                Ok(())
            });
            if let Some(e) = unread {
                return Err(SyncError::Image {
                    image: name.to_string(),
                    user: key,
                    output: e.to_string(),
                });
            }
            let out = out?;
            if out.status == 0 {
                notes.push(format!(
                    "loaded image {name} ({}) for {}",
                    &img.id[..12.min(img.id.len())],
                    user.unwrap_or("root")
                ));
            }
            out
        };
        if out.status != 0 {
            return Err(SyncError::Image {
                image: name.to_string(),
                user: key,
                output: format!("{}{}", out.stdout_text(), out.stderr_text()),
            });
        }
        for u in &scoped {
            notes.push(format!(
                "restart of {u} journaled: its image {name} changed"
            ));
        }
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes this thread has read so far.
    fn thread_rchar() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Opening an archive reads its index, manifest and config, and seeks
    /// past its layers (every sync of a machine with pods opens them all).
    #[test]
    fn opening_an_archive_does_not_read_its_layers() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("big");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("blob"), vec![7u8; 32 << 20]).unwrap();
        let img = Image::open(&root, "big", None).unwrap();
        let archive = d.path().join("big.tar");
        let mut f = std::fs::File::create(&archive).unwrap();
        img.stream(&mut f).unwrap();
        drop(f);
        let before = thread_rchar();
        assert_eq!(Image::open(&archive, "big", None).unwrap().id, img.id);
        let read = thread_rchar() - before;
        assert!(read < 1 << 20, "read {read} bytes of a 32 MiB archive");
    }

    /// A root directory is read once: after that, its stat alone says the
    /// cached layer still holds; any change reads it again.
    #[test]
    fn a_root_directory_is_read_again_only_when_it_changed() {
        let d = tempfile::tempdir().unwrap();
        let lab = lab_core::LabDir::at(&d.path().join(".lab"));
        let root = d.path().join("big");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/blob"), vec![7u8; 16 << 20]).unwrap();
        // (a tree changed in this clock tick is not cached: let it settle)
        std::thread::sleep(std::time::Duration::from_millis(50));
        let read = |f: &dyn Fn() -> Image| {
            let before = thread_rchar();
            let img = f();
            (img, thread_rchar() - before)
        };
        let (first, n) = read(&|| Image::open(&root, "big", Some(&lab)).unwrap());
        assert!(n >= 16 << 20, "read {n}");
        let (again, n) = read(&|| Image::open(&root, "big", Some(&lab)).unwrap());
        assert!(n < 1 << 20, "read {n} bytes again");
        assert_eq!(again, first);
        // a file rewritten with the same size: read again, another image
        std::fs::write(root.join("d/blob"), vec![8u8; 16 << 20]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (changed, n) = read(&|| Image::open(&root, "big", Some(&lab)).unwrap());
        assert!(n >= 16 << 20, "read {n}");
        assert_ne!(changed.id, first.id);
        assert_eq!(changed, Image::open(&root, "big", None).unwrap());
    }

    /// A tree with an entry not older than the moment it was looked at
    /// is not cached (here an mtime in the future; the same holds for a
    /// write in the clock tick of the look, which a coarse clock would
    /// give the stat the cache saw): it is read again the next time.
    #[test]
    fn a_tree_changed_as_it_is_read_is_not_cached() {
        let d = tempfile::tempdir().unwrap();
        let lab = lab_core::LabDir::at(&d.path().join(".lab"));
        let root = d.path().join("web");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("f"), vec![1u8; 4 << 20]).unwrap();
        let future = std::time::SystemTime::now() + std::time::Duration::from_secs(3600 * 24 * 365);
        std::fs::File::options()
            .write(true)
            .open(root.join("f"))
            .unwrap()
            .set_modified(future)
            .unwrap();
        Image::open(&root, "web", Some(&lab)).unwrap();
        assert!(!lab.rootfs_cache_path("web").exists());
        let before = thread_rchar();
        Image::open(&root, "web", Some(&lab)).unwrap();
        assert!(thread_rchar() - before >= 4 << 20, "not read again");
    }

    /// A cache entry that names another layer for the directory's stat (a
    /// corrupted or hand-edited file): the stream fails naming the
    /// directory and drops the entry, so the next open reads it again.
    #[test]
    fn a_cache_that_lies_fails_the_stream_once() {
        let d = tempfile::tempdir().unwrap();
        let lab = lab_core::LabDir::at(&d.path().join(".lab"));
        let root = d.path().join("web");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("f"), "one\n").unwrap();
        let good = Image::open(&root, "web", None).unwrap();
        // (let the tree's times fall behind the clock, so it is cached)
        std::thread::sleep(std::time::Duration::from_millis(50));
        Image::open(&root, "web", Some(&lab)).unwrap();
        let cache = lab.rootfs_cache_path("web");
        let text = std::fs::read_to_string(&cache).unwrap();
        let layer = good.rootfs.as_ref().unwrap().layer.clone();
        std::fs::write(&cache, text.replace(&layer, &"ab".repeat(32))).unwrap();
        let lied = Image::open(&root, "web", Some(&lab)).unwrap();
        assert_ne!(lied.id, good.id);
        let e = lied.stream(&mut std::io::sink()).unwrap_err().to_string();
        assert!(e.contains(&root.display().to_string()), "{e}");
        assert!(e.contains("changed while it was shipped"), "{e}");
        assert!(!cache.exists());
        assert_eq!(Image::open(&root, "web", Some(&lab)).unwrap().id, good.id);
    }

    /// Two images whose directories are hard-link copies (`cp -al`: the
    /// same inodes below them) are cached each under its own name: a file
    /// replaced in one changes that one only; a file written in place
    /// (both names see it) changes both.
    #[test]
    fn hard_link_copies_are_not_confused() {
        let d = tempfile::tempdir().unwrap();
        let lab = lab_core::LabDir::at(&d.path().join(".lab"));
        let a = d.path().join("a");
        std::fs::create_dir_all(a.join("www")).unwrap();
        std::fs::write(a.join("www/index.html"), "one\n").unwrap();
        std::fs::write(a.join("www/other"), "other\n").unwrap();
        let b = d.path().join("b");
        assert!(std::process::Command::new("cp")
            .arg("-al")
            .arg(&a)
            .arg(&b)
            .status()
            .unwrap()
            .success());
        std::thread::sleep(std::time::Duration::from_millis(50));
        let open = |dir: &Path, name: &str| Image::open(dir, name, Some(&lab)).unwrap().id;
        let uncached = |dir: &Path| Image::open(dir, "x", None).unwrap().id;
        let (a1, b1) = (open(&a, "a"), open(&b, "b"));
        assert_eq!(a1, b1);
        // replaced in b (a new inode): b changes, a does not
        std::fs::remove_file(b.join("www/index.html")).unwrap();
        std::fs::write(b.join("www/index.html"), "two\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (a2, b2) = (open(&a, "a"), open(&b, "b"));
        assert_eq!(a2, a1);
        assert_ne!(b2, b1);
        assert_eq!(b2, uncached(&b));
        // written in place through the shared inode: both change
        std::fs::write(a.join("www/other"), "OTHER\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(open(&a, "a"), uncached(&a));
        assert_eq!(open(&b, "b"), uncached(&b));
        assert_ne!(open(&a, "a"), a1);
    }

    /// A root directory becomes an OCI archive whose ID is what `open`
    /// said, the same for the same tree, another for any change.
    #[test]
    fn a_root_directory_is_an_image() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("web");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("www/empty")).unwrap();
        std::fs::write(root.join("bin/tool"), "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(
            root.join("bin/tool"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("tool", root.join("bin/sh")).unwrap();
        std::fs::write(root.join("www/index.html"), "hello\n").unwrap();

        let img = Image::open(&root, "web", None).unwrap();
        assert_eq!(img.name, "localhost/web:latest");
        // streamed, it is an archive that reads back as the same image
        let archive = d.path().join("web.tar");
        let mut f = std::fs::File::create(&archive).unwrap();
        img.stream(&mut f).unwrap();
        drop(f);
        assert_eq!(Image::open(&archive, "web", None).unwrap().id, img.id);
        // whose layer holds the tree, the link as a link
        let mut ar = tar::Archive::new(std::fs::File::open(&archive).unwrap());
        let r = img.rootfs.as_ref().unwrap();
        let mut layer = None;
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap().ends_with(&r.layer) {
                let mut buf = Vec::new();
                e.read_to_end(&mut buf).unwrap();
                layer = Some(buf);
            }
        }
        let layer = layer.expect("the layer blob");
        assert_eq!(hex::encode(Sha256::digest(&layer)), r.layer);
        let mut names = Vec::new();
        for e in tar::Archive::new(&layer[..]).entries().unwrap() {
            let e = e.unwrap();
            let kind = e.header().entry_type();
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            names.push((
                e.path().unwrap().display().to_string(),
                kind,
                link,
                e.header().mode().unwrap(),
            ));
        }
        let paths: Vec<&str> = names.iter().map(|n| n.0.trim_end_matches('/')).collect();
        assert_eq!(
            paths,
            [
                "bin",
                "bin/sh",
                "bin/tool",
                "www",
                "www/empty",
                "www/index.html"
            ]
        );
        assert_eq!(names[1].1, tar::EntryType::Symlink);
        assert_eq!(names[1].2.as_deref(), Some("tool"));
        assert_eq!(names[2].3 & 0o7777, 0o755);

        // the same tree: the same ID; a changed file: another
        assert_eq!(Image::open(&root, "web", None).unwrap().id, img.id);
        std::fs::write(root.join("www/index.html"), "hello again\n").unwrap();
        assert_ne!(Image::open(&root, "web", None).unwrap().id, img.id);
    }

    /// The layer's entries, as (path, type) in order.
    fn layer_entries(img: &Image) -> Vec<(String, tar::EntryType)> {
        let mut archive = Vec::new();
        img.stream(&mut archive).unwrap();
        let r = img.rootfs.as_ref().unwrap();
        let mut ar = tar::Archive::new(&archive[..]);
        let mut layer = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            if e.path().unwrap().ends_with(&r.layer) {
                e.read_to_end(&mut layer).unwrap();
            }
        }
        tar::Archive::new(&layer[..])
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let p = e.path().unwrap().display().to_string();
                (p.trim_end_matches('/').to_string(), e.header().entry_type())
            })
            .collect()
    }

    /// A fifo and a device node of a root directory are entries of the
    /// layer at their own path below it (not at the path they have on
    /// this host).
    #[test]
    fn special_files_keep_their_place_in_the_layer() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("web");
        std::fs::create_dir_all(root.join("dev")).unwrap();
        let run = |args: &[&str]| {
            std::process::Command::new(args[0])
                .args(&args[1..])
                .current_dir(&root)
                .status()
                .is_ok_and(|s| s.success())
        };
        assert!(run(&["mkfifo", "dev/fifo"]));
        // (a device node needs root)
        let null = run(&["mknod", "dev/null", "c", "1", "3"]);
        let img = Image::open(&root, "web", None).unwrap();
        let mut want = vec![
            ("dev".to_string(), tar::EntryType::Directory),
            ("dev/fifo".to_string(), tar::EntryType::Fifo),
        ];
        if null {
            want.push(("dev/null".to_string(), tar::EntryType::Char));
        }
        assert_eq!(layer_entries(&img), want);
    }

    /// A sparse file is a plain file of the layer: podman's unpacker
    /// refuses GNU sparse entries ("unhandled tar header type 83").
    #[test]
    fn a_sparse_file_is_a_plain_entry() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("web");
        std::fs::create_dir_all(&root).unwrap();
        let f = std::fs::File::create(root.join("sparse")).unwrap();
        f.set_len(8 << 20).unwrap();
        std::os::unix::fs::FileExt::write_at(&f, b"end\n", 8 << 20).unwrap();
        let img = Image::open(&root, "web", None).unwrap();
        assert_eq!(
            layer_entries(&img),
            [("sparse".to_string(), tar::EntryType::Regular)]
        );
        assert_eq!(
            img.rootfs.as_ref().unwrap().layer_size,
            512 + (8 << 20) + 512 + 1024
        );
    }

    /// What a layer cannot hold (a socket) fails the image with its path.
    #[test]
    fn a_socket_fails_with_its_path() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("web");
        std::fs::create_dir_all(root.join("run")).unwrap();
        let _l = std::os::unix::net::UnixListener::bind(root.join("run/s.sock")).unwrap();
        let e = Image::open(&root, "web", None).unwrap_err().to_string();
        assert!(e.contains("run/s.sock"), "{e}");
    }

    /// Odd names, hard links, loops of symlinks and an empty directory
    /// make an image that streams as what `open` said.
    #[test]
    fn odd_trees_stream_as_opened() {
        use std::os::unix::ffi::OsStrExt;
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("web");
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::write(root.join("a\nb"), "x").unwrap();
        std::fs::write(root.join(std::ffi::OsStr::from_bytes(b"\xff\xfe")), "y").unwrap();
        std::fs::write(root.join("long-".repeat(40)), "z").unwrap();
        std::fs::hard_link(root.join("a\nb"), root.join("hard")).unwrap();
        std::os::unix::fs::symlink("loop2", root.join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", root.join("loop2")).unwrap();
        std::os::unix::fs::symlink("empty", root.join("dirlink")).unwrap();
        let img = Image::open(&root, "web", None).unwrap();
        let entries = layer_entries(&img);
        assert_eq!(entries.len(), 8, "{entries:?}");
        assert!(entries.contains(&("a\nb".to_string(), tar::EntryType::Regular)));
        assert!(entries.contains(&("dirlink".to_string(), tar::EntryType::Symlink)));
        assert!(entries.contains(&("long-".repeat(40), tar::EntryType::Regular)));
        let d2 = tempfile::tempdir().unwrap();
        let empty = d2.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(layer_entries(&Image::open(&empty, "e", None).unwrap()).is_empty());
    }

    #[test]
    fn names() {
        assert_eq!(normalize("web:1"), "localhost/web:1");
        assert_eq!(normalize("localhost/web:1"), "localhost/web:1");
        assert_eq!(normalize("web"), "localhost/web:latest");
        assert_eq!(normalize("quay.io/x/y:2"), "quay.io/x/y:2");
        assert_eq!(normalize("reg:5000/y"), "reg:5000/y:latest");
        assert_eq!(
            unit_of("etc/containers/systemd/users/web.yaml").as_deref(),
            Some("web.service")
        );
    }
}
