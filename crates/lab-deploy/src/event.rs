//! What a deployment reports while it runs. The CLI turns these into text
//! or JSON; a web console into its own messages. Nothing here prints.

use lab_config::Machine;
use lab_engine::{EngineError, MachineError, Reporter};
use lab_sync::{SyncError, SyncReport};
use std::time::Duration;

/// Where one machine is in "connect → facts → build → sync".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Connecting,
    GatheringFacts,
    Syncing,
    /// The machine's connect or sync step ended (either way).
    Done,
}

/// One thing that happened. `Step` events come from worker threads, in any
/// order; the others in a deterministic order (the machines' order in the
/// selection, or by name within a watch cycle).
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    Step {
        machine: &'a Machine,
        step: Step,
    },
    /// A build begins; [`Events::reporter`] gets its progress until
    /// [`Event::BuildFinished`].
    BuildStarted,
    BuildFinished,
    /// The build could not run at all (no machine was built).
    BuildError(&'a EngineError),
    /// A machine's build failed: it is not synced.
    BuildFailed {
        machine: &'a str,
        errors: &'a [MachineError],
    },
    /// A connection is open (`warnings`: what the user should know about
    /// how it was made).
    Connected {
        machine: &'a str,
        warnings: &'a [String],
    },
    /// A machine could not be reached (or its facts not gathered).
    ConnectFailed {
        machine: &'a str,
        error: &'a SyncError,
    },
    Synced {
        machine: &'a str,
        report: &'a SyncReport,
        ms: u128,
    },
    SyncFailed {
        machine: &'a str,
        error: &'a SyncError,
    },
    /// A watch cycle ended.
    Cycle(&'a Cycle),
    /// A watch cycle could not build (lab.toml is broken, say): the last
    /// good state is kept and watching goes on.
    CycleError(&'a EngineError),
}

/// Receives a deployment's events (from several threads).
pub trait Events: Sync {
    fn event(&self, e: Event<'_>);

    /// Where a build reports its progress, between
    /// [`Event::BuildStarted`] and [`Event::BuildFinished`].
    fn reporter(&self) -> &dyn Reporter {
        &lab_engine::Silent
    }
}

/// Ignores everything.
pub struct Quiet;

impl Events for Quiet {
    fn event(&self, _: Event<'_>) {}
}

/// One cycle of a watch session: what changed, what each affected
/// machine built and synced, how long it took.
#[derive(Debug, Default)]
pub struct Cycle {
    /// 0 for the first build; a cycle with nothing to do takes a number
    /// too, so numbers may skip.
    pub number: u64,
    /// Source paths (relative to the project) whose change started it;
    /// empty for the first build and for a retry.
    pub changed: Vec<String>,
    /// The machines built (in lab.toml's order), then the ones only
    /// synced (by name).
    pub machines: Vec<MachineCycle>,
    /// Warnings of the build (`MACHINE: message` for a machine's own).
    pub warnings: Vec<String>,
    pub times: CycleTimes,
}

impl Cycle {
    pub fn machine(&self, name: &str) -> Option<&MachineCycle> {
        self.machines.iter().find(|m| m.name == name)
    }

    /// Did any machine fail to build or to sync (or have a unit fail)?
    pub fn failed(&self) -> bool {
        self.machines.iter().any(|m| !m.ok())
    }
}

#[derive(Debug, Default)]
pub struct CycleTimes {
    /// From the first event of the batch to the start of the build.
    pub debounce_ms: u128,
    pub build_ms: u128,
    pub sync_ms: u128,
    /// From the first event (or the start of the cycle) to its end.
    pub total_ms: u128,
}

/// One machine in a watch cycle.
#[derive(Debug)]
pub struct MachineCycle {
    pub name: String,
    /// Templates re-rendered, as machine paths (`/etc/x`).
    pub rendered: Vec<String>,
    /// The build (`None`: not built this cycle).
    pub build: Option<Result<Built, Vec<MachineError>>>,
    /// The sync (`None`: not synced this cycle).
    pub sync: Option<Result<SyncReport, SyncError>>,
    /// After a failed sync: how long until the next try.
    pub retry_in: Option<Duration>,
}

impl MachineCycle {
    pub fn ok(&self) -> bool {
        !matches!(self.build, Some(Err(_)))
            && match &self.sync {
                Some(Ok(r)) => r.ok(),
                Some(Err(_)) => false,
                None => true,
            }
    }
}

/// What a successful build of a machine changed in its output tree.
#[derive(Debug, Default)]
pub struct Built {
    /// Output paths (re)written and removed, as machine paths (`/etc/x`).
    pub written: Vec<String>,
    pub removed: Vec<String>,
}
