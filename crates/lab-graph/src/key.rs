use serde::{Deserialize, Serialize};
use std::fmt;

/// A node of one machine's build graph. Paths are relative to the machine's
/// root (`etc/nginx/nginx.conf`), without a leading slash.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Key {
    /// Input: the source that wins the output path in the machine's layer
    /// stack. Its digest covers the source's name, kind, mode and content,
    /// but not which layer it came from.
    Source(String),
    /// Input: the file found when a template includes or imports this exact
    /// name through the layer stack (a machine can override a partial).
    Include(String),
    /// Input: one fact as the machine's templates see it.
    Fact(String),
    /// Input: the names of all machines, in inventory order.
    Peers,
    /// Input: one machine as other machines' templates see it.
    Peer(String),
    /// Input of a kind a project style defines for itself: `(kind, name)`.
    /// The graph treats it like any other input; its digest comes from the
    /// style. It is shown as "KIND `NAME`", or "KIND" when the name is empty.
    Ext(String, String),
    /// Computed: a template rendered in memory.
    Render(String),
    /// Computed: an entry of the output tree, written to disk.
    Output(String),
}

impl Key {
    pub fn is_input(&self) -> bool {
        !matches!(self, Key::Render(_) | Key::Output(_))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Source(p) => write!(f, "source `{p}`"),
            Key::Include(p) => write!(f, "include `{p}`"),
            Key::Fact(k) => write!(f, "fact `{k}`"),
            Key::Peers => write!(f, "machine list"),
            Key::Peer(m) => write!(f, "machine `{m}`"),
            Key::Ext(kind, name) if name.is_empty() => write!(f, "{kind}"),
            Key::Ext(kind, name) => write!(f, "{kind} `{name}`"),
            Key::Render(p) => write!(f, "render `{p}`"),
            Key::Output(p) => write!(f, "output `{p}`"),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
