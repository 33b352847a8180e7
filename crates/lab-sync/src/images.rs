//! Which images a machine's pods use, and how lab runs podman as their
//! user. An image is `images/NAME.tar` (an OCI or docker archive),
//! `images/NAME/` (an OCI layout or a root directory) in the project, named
//! `localhost/NAME:latest` (as lab-pods names it in the pods it compiles).
//! lab reads which images the machine's Quadlet files name (`image:` in a
//! pod's YAML, `Image=` in a `.kube`/`.container`); [`crate::image_store`]
//! ships them as trees.

use lab_agent::quote;
use lab_manifest::Manifest;
use std::path::Path;

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
