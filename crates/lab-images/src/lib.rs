//! Container images as trees: an OCI image archive, an OCI layout
//! directory, a `podman save` (docker-archive) tar or a root directory is
//! unpacked into a per-file, content-addressed [`Tree`]: every file, directory,
//! symlink and device node of the image's root with its kind, mode, owner,
//! sha256, size and link target, the layers' whiteouts applied, and what the
//! OCI config says the image runs ([`Config`]: Entrypoint, Cmd, Env,
//! WorkingDir, User, ExposedPorts). File contents go to a local blob store
//! keyed by sha256 (`.lab/images/blobs/`, see lab-core's layout), written as
//! they stream out of the layers: an image is never held in memory.
//!
//! This crate owns the tree's on-disk format ([`Tree::to_text`]), the key a
//! file has in a node's store ([`Entry::key`]) and what a tree becomes on
//! the node: the delta between two trees as a tar of the entries to place
//! ([`Tree::structure_tar`]) and the paths to remove ([`Tree::delta`]). It
//! never touches the network; lab-sync ships what it makes.

mod error;
mod tree;
mod unpack;

pub use error::ImageError;
pub use tree::{decode, encode, Config, Delta, Entry, Kind, Tree};
pub use unpack::{open, Opened};
