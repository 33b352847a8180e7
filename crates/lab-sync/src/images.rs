//! Container images for a machine's pods, shipped over the sync's own
//! connection: no registry, no `podman image scp`.
//!
//! An image is an OCI image archive `images/NAME.tar` in the project (what
//! `podman save --format oci-archive` or `skopeo copy ... oci-archive:`
//! write). Its name is the `org.opencontainers.image.ref.name` annotation of
//! its `index.json` (a name without a registry is `localhost/NAME`); its ID
//! is the sha256 of its config, which is podman's image ID after a load.
//!
//! Before the files of a sync are applied, lab reads which images the
//! machine's Quadlet files name (`image:` in a pod's YAML, `Image=` in a
//! `.kube`/`.container`), asks the machine once which image IDs the pod
//! user (for `/etc/containers/systemd/users/`) and root (for the rest)
//! have, and streams each archive they lack into `podman load`, as that
//! user. An image already there (same ID) costs nothing more.

use crate::error::SyncError;
use crate::transport::Transport;
use lab_agent::quote;
use lab_manifest::Manifest;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

/// One image archive of the project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// `localhost/web:1`
    pub name: String,
    /// Hex sha256 of its config (podman's image ID).
    pub id: String,
    pub path: PathBuf,
}

/// What is wrong with an image archive.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not an OCI image archive: {reason}\nhint: write one with `podman save --format oci-archive -o {} IMAGE`", path.display(), path.display())]
    Format { path: PathBuf, reason: String },
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";

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
    /// Read the name and ID of the OCI archive at `path`.
    pub fn open(path: &Path) -> Result<Image, ImageError> {
        let io = |source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bad = |reason: String| ImageError::Format {
            path: path.to_path_buf(),
            reason,
        };
        // Blobs are found by digest; an archive holds few small JSON files
        // and the layers, which are skipped.
        let mut small: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let f = fs_err::File::open(path).map_err(io)?;
        let mut ar = tar::Archive::new(f);
        for entry in ar.entries().map_err(io)? {
            let mut entry = entry.map_err(io)?;
            let p = entry.path().map_err(io)?.display().to_string();
            let p = p.trim_start_matches("./").to_string();
            if entry.size() <= 1 << 20 {
                let mut buf = Vec::new();
                entry.read_to_end(&mut buf).map_err(io)?;
                small.insert(p, buf);
            }
        }
        let json = |p: &str| -> Result<serde_json::Value, ImageError> {
            let bytes = small.get(p).ok_or_else(|| bad(format!("no {p}")))?;
            serde_json::from_slice(bytes).map_err(|e| bad(format!("{p}: {e}")))
        };
        let blob = |digest: &str| format!("blobs/{}", digest.replacen(':', "/", 1));
        let index = json("index.json")?;
        let desc = index["manifests"]
            .as_array()
            .and_then(|m| m.first())
            .ok_or_else(|| bad("index.json lists no manifest".into()))?;
        let name = desc["annotations"][REF_NAME].as_str().ok_or_else(|| {
            bad(format!(
                "index.json gives no `{REF_NAME}` (the image's name)"
            ))
        })?;
        let manifest_digest = desc["digest"]
            .as_str()
            .ok_or_else(|| bad("a manifest without digest".into()))?;
        let manifest = json(&blob(manifest_digest))?;
        let config = manifest["config"]["digest"]
            .as_str()
            .and_then(|d| d.strip_prefix("sha256:"))
            .ok_or_else(|| bad("the manifest has no sha256 config digest".into()))?;
        // (a bare tag as ref name: podman names it after the file)
        let name = if name.contains('/') || name.contains(':') {
            normalize(name)
        } else {
            let stem = path.file_stem().unwrap_or_default().to_string_lossy();
            normalize(&format!("{stem}:{name}"))
        };
        Ok(Image {
            name,
            id: config.to_string(),
            path: path.to_path_buf(),
        })
    }
}

/// The project's images: every `*.tar` in `dir` (none when it does not
/// exist), by name.
pub fn project_images(dir: &Path) -> Result<Vec<Image>, ImageError> {
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
        if p.extension().is_some_and(|x| x == "tar") && p.is_file() {
            out.push(Image::open(&p)?);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

const QUADLET_ROOT: &str = "etc/containers/systemd/";
const USERS: &str = "etc/containers/systemd/users/";

/// The image names the Quadlet files of a built tree use, per user
/// (`None`: root's storage, `Some(pod_user)`: the pod user's).
pub fn wanted(
    out_dir: &Path,
    manifest: &Manifest,
    pod_user: &str,
) -> BTreeMap<Option<String>, BTreeSet<String>> {
    let mut out: BTreeMap<Option<String>, BTreeSet<String>> = BTreeMap::new();
    for (path, e) in &manifest.entries {
        if e.is_dir() || !path.starts_with(QUADLET_ROOT) {
            continue;
        }
        let user = path
            .strip_prefix(USERS)
            .filter(|rest| !rest.contains('/'))
            .map(|_| pod_user.to_string());
        if path.starts_with(USERS) && user.is_none() {
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
                    out.entry(user.clone()).or_default().insert(normalize(v));
                }
            }
        }
    }
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

/// Ship the images the machine's pods use and it lacks; returns notes
/// (`loaded localhost/web:1 for pods`).
pub fn ship(
    transport: &mut dyn Transport,
    images: &[Image],
    want: &BTreeMap<Option<String>, BTreeSet<String>>,
) -> Result<Vec<String>, SyncError> {
    let mut todo: Vec<(Option<&str>, &Image)> = Vec::new();
    for (user, names) in want {
        for n in names {
            if let Some(img) = images.iter().find(|i| &i.name == n) {
                todo.push((user.as_deref(), img));
            }
        }
    }
    if todo.is_empty() {
        return Ok(Vec::new());
    }
    // one command: the image IDs each user has
    let users: BTreeSet<Option<&str>> = todo.iter().map(|(u, _)| *u).collect();
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
            podman_as(*u, "images -q --no-trunc")
        ));
    }
    let out = transport.run(&cmd, &mut |_| Ok(()))?;
    let mut have: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut cur = String::new();
    for line in out.stdout_text().lines() {
        if let Some(u) = line.strip_prefix("user ") {
            cur = u.to_string();
            have.entry(cur.clone()).or_default();
        } else if !line.trim().is_empty() {
            let id = line.trim().trim_start_matches("sha256:").to_string();
            have.entry(cur.clone()).or_default().insert(id);
        }
    }
    let mut notes = Vec::new();
    for (user, img) in todo {
        let key = user.unwrap_or("-").to_string();
        let Some(ids) = have.get(&key) else {
            continue;
        };
        if ids.contains(&img.id) {
            continue;
        }
        let path = img.path.clone();
        let mut open_error = None;
        // (whatever podman leaves unread is drained, so the stream always
        // ends)
        let load = format!(
            "{}; rc=$?; cat >/dev/null; exit $rc",
            podman_as(user, "load -q")
        );
        let out = transport.run(&load, &mut |w| {
            match fs_err::File::open(&path) {
                Ok(mut f) => {
                    std::io::copy(&mut f, w)?;
                }
                Err(e) => open_error = Some(e),
            }
            Ok(())
        })?;
        if let Some(e) = open_error {
            return Err(SyncError::Build {
                machine: String::new(),
                message: e.to_string(),
            });
        }
        if out.status != 0 {
            return Err(SyncError::Image {
                image: img.name.clone(),
                user: key,
                output: format!("{}{}", out.stdout_text(), out.stderr_text()),
            });
        }
        have.entry(key.clone()).or_default().insert(img.id.clone());
        notes.push(format!(
            "loaded image {} ({}) for {}",
            img.name,
            &img.id[..12.min(img.id.len())],
            user.unwrap_or("root")
        ));
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(normalize("web:1"), "localhost/web:1");
        assert_eq!(normalize("localhost/web:1"), "localhost/web:1");
        assert_eq!(normalize("web"), "localhost/web:latest");
        assert_eq!(normalize("quay.io/x/y:2"), "quay.io/x/y:2");
        assert_eq!(normalize("reg:5000/y"), "reg:5000/y:latest");
    }
}
