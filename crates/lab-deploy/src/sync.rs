//! "Connect → facts → build → sync" for the selected machines, fanned out.
//!
//! 1. One connection per machine; facts gathered over it when none are
//!    cached yet, since the build needs them. 2. Build what is reachable
//!    (while connecting, when every machine's facts are cached). 3. Sync
//!    over the open connections.

use crate::event::{Event, Events, Step};
use crate::pool::{facts_cached, parallel, Connector};
use crate::DeployError;
use lab_config::Machine;
use lab_engine::{BuildOptions, Engine, EngineError};
use lab_sync::{MachineSync, SyncError, SyncOptions, SyncReport, Transport};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct SyncPlan {
    /// Machines (or tags) to sync; empty: all.
    pub machines: Vec<String>,
    /// Machines connected to and synced at a time.
    pub jobs: usize,
    pub rollback_on_failure: bool,
}

/// How one machine's sync ended.
#[derive(Debug)]
pub enum MachineResult {
    /// It could not be reached (or its facts not gathered).
    Unreached(SyncError),
    /// Its build failed (reported as [`Event::BuildFailed`]).
    BuildFailed,
    /// The sync failed.
    Failed(SyncError),
    /// Synced (units may still have failed: see [`SyncReport::ok`]).
    Synced { report: Box<SyncReport>, ms: u128 },
}

#[derive(Debug)]
pub struct MachineRun {
    pub name: String,
    pub result: MachineResult,
}

impl MachineRun {
    pub fn ok(&self) -> bool {
        matches!(&self.result, MachineResult::Synced { report, .. } if report.ok())
    }
}

/// Every selected machine's result, in the selection's order.
#[derive(Debug, Default)]
pub struct SyncRun {
    pub machines: Vec<MachineRun>,
}

impl SyncRun {
    /// The machines that did not end in sync, in order.
    pub fn failed(&self) -> Vec<String> {
        self.machines
            .iter()
            .filter(|m| !m.ok())
            .map(|m| m.name.clone())
            .collect()
    }
}

/// Build `names`, reporting through `events`; the machines that failed.
/// `trust`: see [`BuildOptions::trust_outputs`] (a sync's own stream
/// checks what it sends).
pub fn build(
    engine: &Engine,
    names: &[String],
    trust: bool,
    events: &dyn Events,
) -> Result<Vec<String>, EngineError> {
    build_with(
        engine,
        &BuildOptions {
            machines: names.to_vec(),
            trust_outputs: trust,
            ..Default::default()
        },
        events,
    )
}

/// [`build`] with any [`BuildOptions`].
pub fn build_with(
    engine: &Engine,
    opts: &BuildOptions,
    events: &dyn Events,
) -> Result<Vec<String>, EngineError> {
    events.event(Event::BuildStarted);
    let report = engine.build(opts, events.reporter());
    events.event(Event::BuildFinished);
    let report = report.inspect_err(|e| events.event(Event::BuildError(e)))?;
    let mut failed = Vec::new();
    for m in &report.machines {
        if let Err(errors) = &m.result {
            events.event(Event::BuildFailed {
                machine: &m.name,
                errors,
            });
            failed.push(m.name.clone());
        }
    }
    Ok(failed)
}

/// Connect to, build and sync the machines of `plan`.
pub fn sync(
    engine: &Engine,
    connector: &Connector,
    plan: &SyncPlan,
    events: &dyn Events,
) -> Result<SyncRun, DeployError> {
    let machines = engine.select(&plan.machines).map_err(DeployError::Select)?;
    let project = &engine.project;
    let lab_dir = engine.lab_dir();
    let uncached: Vec<&str> = machines
        .iter()
        .filter(|m| !facts_cached(lab_dir, &m.name))
        .map(|m| m.name.as_str())
        .collect();
    let connect = || {
        parallel(machines.clone(), plan.jobs, |m| {
            let gather = uncached.contains(&m.name.as_str());
            let r = connector.open(project, lab_dir, m, gather, events);
            events.event(Event::Step {
                machine: m,
                step: Step::Done,
            });
            (m, r)
        })
    };
    let (connected, early_build) = if uncached.is_empty() {
        let all: Vec<String> = machines.iter().map(|m| m.name.clone()).collect();
        std::thread::scope(|s| {
            let b = s.spawn(|| build(engine, &all, true, events));
            let c = connect();
            (c, Some(b.join().expect("the build thread")))
        })
    } else {
        (connect(), None)
    };
    let mut results: Vec<(String, MachineResult)> = Vec::new();
    let mut open: Vec<(&Machine, Box<dyn Transport>)> = Vec::new();
    for (m, r) in connected {
        match r {
            Ok(t) => {
                events.event(Event::Connected {
                    machine: &m.name,
                    warnings: &t.warnings(),
                });
                open.push((m, t));
            }
            Err(e) => {
                events.event(Event::ConnectFailed {
                    machine: &m.name,
                    error: &e,
                });
                results.push((m.name.clone(), MachineResult::Unreached(e)));
            }
        }
    }
    let names: Vec<String> = open.iter().map(|(m, _)| m.name.clone()).collect();
    let build_failed = match early_build {
        Some(r) => r.map_err(DeployError::Build)?,
        None if names.is_empty() => Vec::new(),
        None => build(engine, &names, true, events).map_err(DeployError::Build)?,
    };
    open.retain(|(m, _)| !build_failed.contains(&m.name));
    for b in build_failed {
        if !results.iter().any(|(n, _)| *n == b) {
            results.push((b, MachineResult::BuildFailed));
        }
    }

    let opts = SyncOptions {
        rollback_on_failure: plan.rollback_on_failure,
    };
    let synced = parallel(open, plan.jobs, |(m, mut t)| {
        events.event(Event::Step {
            machine: m,
            step: Step::Syncing,
        });
        let began = Instant::now();
        let r = sync_one(engine, m, t.as_mut(), &opts);
        events.event(Event::Step {
            machine: m,
            step: Step::Done,
        });
        (m.name.clone(), r, began.elapsed().as_millis())
    });
    for (name, r, ms) in synced {
        match r {
            Ok(report) => {
                events.event(Event::Synced {
                    machine: &name,
                    report: &report,
                    ms,
                });
                results.push((
                    name,
                    MachineResult::Synced {
                        report: Box::new(report),
                        ms,
                    },
                ));
            }
            Err(error) => {
                events.event(Event::SyncFailed {
                    machine: &name,
                    error: &error,
                });
                results.push((name, MachineResult::Failed(error)));
            }
        }
    }
    let mut run = SyncRun::default();
    for m in &machines {
        if let Some(i) = results.iter().position(|(n, _)| *n == m.name) {
            let (name, result) = results.swap_remove(i);
            run.machines.push(MachineRun { name, result });
        }
    }
    Ok(run)
}

/// Sync one built machine over its open transport.
pub fn sync_one(
    engine: &Engine,
    m: &Machine,
    t: &mut dyn Transport,
    opts: &SyncOptions,
) -> Result<SyncReport, SyncError> {
    let target = crate::machine::target(&engine.project, m, engine.lab_dir());
    let r = MachineSync {
        target: &target,
        transport: &mut *t,
    }
    .sync(opts);
    // An output changed behind lab's back (the stream found it): a build
    // that looks at the outputs makes it again, then one more try.
    if matches!(r, Err(SyncError::Build { .. })) {
        let rebuilt = engine.build(
            &BuildOptions {
                machines: vec![m.name.clone()],
                ..Default::default()
            },
            &lab_engine::Silent,
        );
        if rebuilt.is_ok_and(|b| b.failed().next().is_none()) {
            return MachineSync {
                target: &target,
                transport: t,
            }
            .sync(opts);
        }
    }
    r
}
