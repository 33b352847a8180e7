//! Renders templates for one machine and records what each render read: the
//! facts it looked up (found or not), the machines it looked at, and the
//! partials it included, each with the digest it had. Those reads become the
//! render's dependencies in the build graph.
//!
//! Jinja templates never touch the disk here: partials come through the
//! [`Includes`] trait, which the engine implements over the machine's layer
//! stack. Make-style templates are rendered by running GNU m4 ([`m4`]),
//! which reads its files itself and reports which ones it opened. This
//! crate does not know about layers, state or outputs.

mod error;
mod jinja;
pub mod m4;
mod scope;

pub use error::RenderError;
pub use jinja::render;
pub use scope::{fact_digest, Scope};

use lab_graph::{Digest, Key};
use std::path::PathBuf;

/// A file found for an `{% include %}` / `{% import %}` name.
#[derive(Clone, Debug)]
pub struct Included {
    /// Where it is on disk, for error messages.
    pub path: PathBuf,
    pub text: String,
    /// Digest of the bytes `text` was read from.
    pub digest: Digest,
}

/// Finds partials by name through the machine's layer stack.
pub trait Includes: Send + Sync {
    /// `Ok(None)` when no layer has the name; `Err` with a message when the
    /// file exists but cannot be used (unreadable, not UTF-8).
    fn lookup(&self, name: &str) -> Result<Option<Included>, String>;
}

/// The result of one render.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub bytes: Vec<u8>,
    /// Facts and machines read, in first-read order, without duplicates.
    /// Their digests come from the [`Scope`] (see [`Scope::digest_of`]).
    pub reads: Vec<Key>,
    /// Partials included, with the digest of what was read.
    pub includes: Vec<(String, Digest)>,
}
