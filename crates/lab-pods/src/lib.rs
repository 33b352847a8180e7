//! Pods: a Kubernetes-style `Pod` (or a `Deployment` with `replicas: 1`)
//! written in YAML, validated strictly with every error at its file, line
//! and column, and compiled into podman Quadlet files: `NAME.kube` (the
//! unit) beside `NAME.yaml` (the pod as lab validated it, normalised), plus
//! the nftables drop-in opening the machine's declared host ports.
//!
//! This crate owns the pod format (which fields lab and podman honour, what
//! a local image is) and the text of the files it becomes, including where
//! they go in a machine's tree. It does no I/O and knows nothing of layers,
//! templates or the build graph: the engine hands it a file's text and
//! places what comes back. It depends only on `lab-core` (for [`Located`]
//! errors) and a YAML parser that keeps positions.

mod emit;
mod error;
mod limits;
mod pod;
mod reader;
mod spec;

pub use error::PodError;
pub use pod::{
    Container, HostPort, Pod, Port, Protocol, Restart, SecurityValue, Volume, VolumeMount,
};

use std::collections::BTreeSet;
use std::path::Path;

/// Where pod sources live inside a layer or machine directory:
/// `pods/NAME.yaml` or `pods/NAME.yaml.j2`.
pub const SOURCE_DIR: &str = "pods";

/// Where a project keeps the images it ships, relative to the project:
/// `images/NAME.tar` (an OCI archive) or `images/NAME/` (an OCI layout,
/// or a root directory), which pods name `NAME` or `localhost/NAME:latest`.
pub const IMAGES_DIR: &str = "images";

/// The image name an entry of [`IMAGES_DIR`] ships, if it is one.
pub fn image_name(file_name: &str, is_dir: bool) -> Option<&str> {
    let name = if is_dir {
        file_name
    } else {
        file_name.strip_suffix(".tar")?
    };
    let ok = !name.is_empty()
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    ok.then_some(name)
}

/// Quadlet's directory for units of every non-root user's systemd.
pub const ROOTLESS_DIR: &str = "etc/containers/systemd/users";
/// Quadlet's directory for units of the system manager.
pub const ROOTFUL_DIR: &str = "etc/containers/systemd";
/// The nftables drop-in opening the host ports of a machine's pods.
pub const FIREWALL_PATH: &str = "etc/nftables.d/lab-pods.nft";
/// The annotation that makes a pod rootful.
pub const ROOTFUL_ANNOTATION: &str = "lab.dev/rootful";
/// The annotation prefix podman reads to run an init as a container's PID 1.
pub const INIT_ANNOTATION: &str = "io.podman.annotations.init/";

/// What a pod is compiled against: the machine's pod user and the images
/// the project ships (`images/NAME.tar` gives `NAME`).
#[derive(Clone, Debug, Default)]
pub struct Context {
    pub pod_user: String,
    pub images: BTreeSet<String>,
}

/// The pod name a source path under [`SOURCE_DIR`] stands for, with
/// whether it is a template: `pods/web.yaml` → `("web", false)`,
/// `pods/web.yaml.j2` → `("web", true)`. `None` for anything else.
pub fn source_name(rel: &str) -> Option<(&str, bool)> {
    let file = rel.strip_prefix(SOURCE_DIR)?.strip_prefix('/')?;
    if file.contains('/') {
        return None;
    }
    if let Some(n) = file.strip_suffix(".yaml.j2") {
        return (!n.is_empty()).then_some((n, true));
    }
    file.strip_suffix(".yaml")
        .filter(|n| !n.is_empty())
        .map(|n| (n, false))
}

/// A pod compiled into the files it becomes in the machine's tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compiled {
    pub pod: Pod,
    /// The `.kube` unit.
    pub kube: String,
    /// The pod YAML the unit plays: what lab validated, normalised.
    pub yaml: String,
    /// Things the user should know that do not stop the build.
    pub warnings: Vec<String>,
}

impl Compiled {
    /// The directory (no leading `/`) holding the pod's two files.
    pub fn dir(&self) -> &'static str {
        unit_dir(self.pod.rootful)
    }

    /// `etc/containers/systemd/users/NAME.kube` (or without `users/` when
    /// rootful).
    pub fn kube_path(&self) -> String {
        format!("{}/{}.kube", self.dir(), self.pod.name)
    }

    pub fn yaml_path(&self) -> String {
        format!("{}/{}.yaml", self.dir(), self.pod.name)
    }
}

/// The directory of a pod's files, rootful or not.
pub fn unit_dir(rootful: bool) -> &'static str {
    if rootful {
        ROOTFUL_DIR
    } else {
        ROOTLESS_DIR
    }
}

/// Validate the pod in `text` (the content of `path`, shown in errors; its
/// file name gives the pod's name) and compile it.
pub fn compile(path: &Path, name: &str, text: &str, ctx: &Context) -> Result<Compiled, PodError> {
    let pod = spec::parse(path, name, text, ctx)?;
    let warnings = emit::warnings(path, &pod);
    Ok(Compiled {
        kube: emit::kube(&pod, &ctx.pod_user),
        yaml: emit::yaml(&pod),
        pod,
        warnings,
    })
}

/// The nftables drop-in for a machine's pods: it opens exactly their
/// declared host ports, or is `None` when they declare none. Two pods
/// publishing one port is an error naming both files.
pub fn firewall(pods: &[(&Path, &Pod)]) -> Result<Option<String>, PodError> {
    emit::firewall(pods)
}
