//! What a project style is to the engine: the source model of a lab.
//!
//! The engine owns one pipeline (scan the roots, check a machine's summary,
//! load what its last build left, decide what is dirty, make it, switch the
//! output tree, write the manifest and the state). A [`Style`] says what
//! that pipeline works on: which files are sources, the plan of a machine's
//! outputs and directories, the inputs a node may read and their digests,
//! and how an output is made. The native style (`lab.toml`, minijinja) is
//! [`crate::NativeStyle`]; other styles live in crates of their own and
//! plug in through [`crate::Engine::with_style`].

use crate::scan::RootScan;
use crate::{Engine, EngineError, MachineError, Reporter, Show, ShowError};
use indexmap::IndexMap;
use lab_config::Machine;
use lab_graph::{Digest, Fingerprint, Graph, Key, Trace};
use lab_manifest::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// Facts gathered from each machine (`.lab/facts/NAME.json`), by machine.
pub type Gathered = IndexMap<String, IndexMap<String, serde_json::Value>>;

/// A project style. One value serves every build of an engine and stays
/// the same when the project is read again (a watch session reloads it).
pub trait Style: Send + Sync {
    /// File names that are never sources.
    fn ignores(&self) -> globset::GlobSet;

    /// What the machines of one build share (caches, located programs).
    /// `scanned_at_ns` is the stamp of this build's scan (see
    /// [`Fingerprint::reusable`]).
    fn prepare<'a>(
        &'a self,
        engine: &'a Engine,
        gathered: &'a Gathered,
        scanned_at_ns: i64,
    ) -> Result<Box<dyn Prepared + 'a>, EngineError>;

    /// `lab show`: where an output path of `machine` comes from and what it
    /// holds; `roots` is the machine's stack, scanned now, lowest first.
    fn show(
        &self,
        engine: &Engine,
        machine: &Machine,
        out: &str,
        roots: &[RootScan],
    ) -> Result<Show, ShowError>;

    /// Do builds read project files outside `layers/` and `machines/`, and
    /// does the machine list come from files other than `lab.toml`? Then a
    /// watch session takes any changed path as a change, and reads the
    /// project again before each cycle.
    fn reads_whole_project(&self) -> bool {
        false
    }

    /// Does a change of `path` (relative to the project) mean the project
    /// must be read again, because the machines or their stacks may have
    /// changed? (`lab.toml` always does.)
    fn reloads_on(&self, _project: &lab_config::Project, _path: &str) -> bool {
        false
    }

    /// (Styles that read the whole project.) Does a change of `path`
    /// (relative to the project, outside the roots `stack` of the machine)
    /// affect a machine whose last build is `graph`?
    fn affects(&self, _graph: &Graph, _stack: &[String], _path: &str) -> bool {
        false
    }
}

/// One build's view of a style: makes the model of each machine.
pub trait Prepared: Sync {
    /// Root `root` of machine `m`'s stack does not exist: the error that
    /// stops the machine, if it is one (the rest of the stack is still
    /// looked at, so every problem is reported at once).
    fn missing_root(
        &self,
        _m: &Machine,
        _root: &str,
        _reporter: &dyn Reporter,
    ) -> Option<MachineError> {
        None
    }

    /// Problems that stop machine `m` before anything of it is looked at
    /// (its part of the configuration could not be read).
    fn check(&self, _m: &Machine) -> Result<(), Vec<MachineError>> {
        Ok(())
    }

    /// The model of machine `m`, whose stack is `roots` (lowest first), or
    /// the errors that stop it. The machine's gathered facts could be read.
    fn machine<'s>(
        &'s self,
        m: &'s Machine,
        roots: Vec<&'s RootScan>,
        reporter: &dyn Reporter,
    ) -> Result<Box<dyn MachineModel + 's>, Vec<MachineError>>;
}

/// The outputs of a machine as its style resolved them.
#[derive(Debug, Default)]
pub struct Plan {
    /// Output paths that are graph nodes ([`Key::Output`]), with whether
    /// the entry is a directory.
    pub outs: BTreeMap<String, bool>,
    /// Directories that are not nodes but follow from the outputs (their
    /// parents), with their modes.
    pub dirs: BTreeMap<String, u32>,
}

/// A node made in memory: its trace, its bytes, and for an output the
/// entry it makes.
pub struct Made {
    pub trace: Trace,
    pub bytes: Option<Vec<u8>>,
    /// `None` for a step (see [`MachineModel::step`]).
    pub entry: Option<Entry>,
    /// A template was rendered to make it (for the report).
    pub rendered: bool,
}

/// One machine's sources as a style sees them, for one build.
pub trait MachineModel: Sync {
    /// Digest of everything the machine's outputs depend on but the files
    /// of [`MachineModel::external`]: equal summaries, equal outputs.
    fn summary(&self) -> Digest;

    /// Inputs that are not source paths (facts, other machines), with their
    /// digests now. A build compares them with the last build's to find
    /// what changed.
    fn inputs(&self) -> HashMap<Key, Digest>;

    /// Can the changes of a root (its `changed` list) be mapped to input
    /// keys ([`MachineModel::source_keys`]), so that a build checks only
    /// what depends on them? Otherwise every output is checked.
    fn incremental(&self) -> bool {
        false
    }

    /// The input keys that a changed path `rel` of root `root` stands for.
    fn source_keys(&self, _root: usize, _rel: &str) -> Vec<Key> {
        Vec::new()
    }

    /// Things the user should know that do not stop the build, about what
    /// the steps that ran made (the engine reports them after the steps).
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }

    /// Resolve the outputs: all of them, or (`only`) just these paths,
    /// which a previous full resolution produced and whose roots' listings
    /// are unchanged.
    fn plan(&mut self, only: Option<BTreeSet<String>>) -> Result<Plan, MachineError>;

    /// The current digest of an input node (`None`: it does not exist).
    fn input(&self, key: &Key) -> Option<Digest>;

    /// The node an output reads that is made before outputs are checked
    /// (a template's render), if any. Steps run in parallel; an output
    /// whose step gives the same digest is not made again (early cutoff).
    fn step(&self, _out: &str) -> Option<Key> {
        None
    }

    /// Run the step of `out`.
    fn run_step(&self, out: &str) -> Result<Made, MachineError> {
        unreachable!("no step for `{out}`")
    }

    /// Make output `out`. `step` is the bytes of its step when it has one
    /// (run now, or again when only the output was lost); `graph` holds the
    /// step's trace.
    fn make(&self, out: &str, graph: &Graph, step: Option<&[u8]>) -> Result<Made, MachineError>;

    /// Run `f`, which makes the outputs `outs` in parallel (a style whose
    /// renders wait on child processes runs them with more threads than
    /// there are workers).
    fn run_makes(&self, _outs: &[&str], f: &mut (dyn FnMut() + Send)) {
        f()
    }

    /// Files outside the scanned roots that nodes read (keys the style
    /// knows), as a build records them for the next one's summary check.
    /// `prior` is the last build's record of them, with its stamp.
    fn set_external_prior(&mut self, _prior: Arc<HashMap<String, Fingerprint>>, _stamp: i64) {}

    /// The fingerprint of external file `name` now (`None`: missing).
    fn external(&self, _name: &str) -> Option<Fingerprint> {
        None
    }

    /// The external files the nodes of `graph` read.
    fn external_names(&self, _graph: &Graph) -> BTreeSet<String> {
        BTreeSet::new()
    }
}
