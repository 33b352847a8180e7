//! The dependency graph of one machine's build, and the rules that decide
//! when something is out of date. This crate does no I/O: callers hand it
//! digests and stat records, it answers questions about them.
//!
//! # When is a node out of date?
//!
//! Every computed node (a template [`Key::Render`], an output entry
//! [`Key::Output`]) keeps a [`Trace`] from the last time it ran: the list of
//! the nodes it actually read, each with the [`Digest`] it had then, and the
//! digest of what it produced. A node is **up to date** exactly when it has a
//! trace and every dependency in that trace still has the recorded digest.
//! Otherwise it is dirty, and [`Graph::check`] says why (a [`Reason`]).
//!
//! The dependencies are the ones observed while running, not declared ones:
//! a template depends on the facts it looked up (not on all facts), on the
//! partials it included, and on its own source. Looking up a fact that does
//! not exist is recorded too (with [`Digest::ABSENT`]), so defining it later
//! re-renders the template.
//!
//! **Early cutoff**: an output depends on the *digest* of its render, not on
//! the render having run. A template that re-renders to identical bytes keeps
//! its digest, so its output is not rewritten and nothing downstream changes.
//!
//! Inputs ([`Key::Source`], [`Key::Include`], [`Key::Fact`], [`Key::Peers`],
//! [`Key::Peer`], [`Key::Ext`]) have no trace; their current digests come
//! from the caller (the engine and the project style derive them from the
//! file system and the project's configuration).
//!
//! # Source fingerprints
//!
//! Source files are identified by a [`Stat`] (mtime, size, inode, mode). A
//! file whose stat did not change keeps its recorded content digest without
//! being read; see [`Fingerprint::reusable`] for the one exception (a file
//! modified within the clock granularity of the previous scan).

mod fingerprint;
mod graph;
mod key;

pub use fingerprint::{Fingerprint, Stat};
pub use graph::{Graph, GraphState, Reason, Trace, Verdict};
pub use key::Key;
pub use lab_core::{Digest, Hasher};
