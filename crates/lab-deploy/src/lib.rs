//! Deployment: "connect → facts → build → sync" for one machine or many,
//! above the engine (lab-engine) and the transports (lab-sync). Owns the
//! connections ([`Connector`]: "connect, then gather facts when none are
//! cached" is here and nowhere else), the fan-out over machines, the
//! translation of lab.toml's machines into lab-sync's plain types
//! ([`target`], [`endpoint`]), and the watch loop with its per-machine
//! retry schedule ([`Watch`]).
//!
//! It reports what happens as typed [`Event`]s through [`Events`] and
//! returns typed errors; it never prints nor assumes a terminal, so the
//! CLI and a web console drive it alike.

mod event;
mod machine;
mod pool;
mod status;
mod sync;
mod watch;
mod watch_log;

pub use event::{Built, Cycle, CycleTimes, Event, Events, MachineCycle, Quiet, Step};
pub use machine::{
    connect, connect_with_facts, endpoint, hop, ssh_spec, target, unit_rules, CONNECT_TIMEOUT,
    IO_TIMEOUT,
};
pub use pool::{cached_facts, facts_cached, parallel, Connector};
pub use status::{desired_pods, machine_state, MachineState};
pub use sync::{build, build_with, sync, sync_one, MachineResult, MachineRun, SyncPlan, SyncRun};
pub use watch::{BackoffPolicy, Schedule, Stopper, Watch, WatchOptions};
pub use watch_log::{
    machine_words, read_watch_log, watch_alive, MachineLine, WatchCursor, WatchLog, WatchRead,
    WatchRecord, WatchWhat,
};

use lab_core::Diagnose;
use lab_engine::EngineError;
use lab_sync::SyncError;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The selection names no machine of the project.
    #[error(transparent)]
    Select(EngineError),
    /// The build could not run at all (also reported as
    /// [`Event::BuildError`] when it happened).
    #[error(transparent)]
    Build(EngineError),
    /// The session's state could not be saved.
    #[error(transparent)]
    Persist(EngineError),
    /// The ssh config could not be read.
    #[error(transparent)]
    Sync(SyncError),
    /// The project's files cannot be watched.
    #[error(transparent)]
    Watch(lab_watch::WatchError),
}

impl Diagnose for DeployError {
    fn location(&self) -> Option<&lab_core::Located> {
        match self {
            DeployError::Select(e) | DeployError::Build(e) | DeployError::Persist(e) => {
                e.location()
            }
            DeployError::Sync(e) => e.location(),
            DeployError::Watch(_) => None,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            DeployError::Select(e) | DeployError::Build(e) | DeployError::Persist(e) => e.hint(),
            DeployError::Sync(e) => e.hint(),
            DeployError::Watch(_) => None,
        }
    }
}
