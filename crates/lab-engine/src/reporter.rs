use lab_graph::{Key, Reason};

/// How the engine tells the outside world what it is doing. The engine never
/// prints; the CLI implements this with progress bars and `--explain`
/// output, tests implement it to record which nodes ran. Calls come from
/// several threads at once.
pub trait Reporter: Sync {
    /// Sources were scanned: `files` entries, `hashed` of them read.
    fn scanned(&self, _files: usize, _hashed: usize) {}
    /// A machine is being built with up to `work` nodes to check.
    fn machine_started(&self, _machine: &str, _work: usize) {}
    /// A node ran, and why.
    fn node_ran(&self, _machine: &str, _key: &Key, _reason: &Reason) {}
    /// One unit of `work` is done (for progress bars).
    fn progress(&self, _machine: &str) {}
    /// Something the user should know that does not stop the build.
    fn warning(&self, _machine: Option<&str>, _message: &str) {}
}

/// A reporter that ignores everything.
pub struct Silent;

impl Reporter for Silent {}
