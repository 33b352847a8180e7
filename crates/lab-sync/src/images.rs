//! Container images for a machine's pods, shipped over the sync's own
//! connection: no registry, no `podman image scp`.
//!
//! An image is an OCI image archive `images/NAME.tar` or an OCI layout
//! directory `images/NAME/` in the project, and its name is
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
    /// The archive, or the layout directory.
    pub path: PathBuf,
}

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
    /// Read the ID of the OCI archive or layout directory at `path`, named
    /// `name`.
    pub fn open(path: &Path, name: &str) -> Result<Image, ImageError> {
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
        })
    }

    /// Write the image as an OCI archive (a layout directory is tarred on
    /// the way).
    fn stream(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
        if self.path.is_dir() {
            let mut b = tar::Builder::new(w);
            b.follow_symlinks(false);
            b.append_dir_all(".", &self.path)?;
            b.finish()
        } else {
            let mut f = fs_err::File::open(&self.path)?;
            std::io::copy(&mut f, w).map(|_| ())
        }
    }
}

/// The project's images: every `NAME.tar` and `NAME/` in `dir` (none when
/// it does not exist), named `localhost/NAME:latest`.
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
        let file = e.file_name().to_string_lossy().into_owned();
        let name = if p.is_dir() {
            Some(file.as_str())
        } else {
            file.strip_suffix(".tar")
        };
        if let Some(name) = name.filter(|n| !n.is_empty() && !n.starts_with('.')) {
            out.push(Image::open(&p, name)?);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

const QUADLET_ROOT: &str = "etc/containers/systemd/";
const USERS: &str = "etc/containers/systemd/users/";

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
            tag = format!("{} && {tag}", lab_agent::enqueue_command(root, &actions));
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
            let out = transport.run(&load, &mut |w| img.stream(w))?;
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
