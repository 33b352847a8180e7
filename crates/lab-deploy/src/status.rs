//! What `lab status` and the console ask of one machine: whether it is in
//! sync with its build (what the source would ship, what drifted on the
//! machine, unit actions pending, failed units, the applied generation),
//! in one check over an open connection. Changes nothing.

use lab_agent::{ApplyPlan, Drift};
use lab_config::Machine;
use lab_engine::Engine;
use lab_manifest::Manifest;
use lab_sync::{MachineSync, Probe, SyncError, Transport};

/// One machine's state against its last build.
#[derive(Debug)]
pub struct MachineState {
    pub name: String,
    pub probe: Probe,
    /// Paths a sync would change because the source changed.
    pub changes: Vec<String>,
    pub drift: Vec<Drift>,
    /// Managed units whose `ActiveState` is `failed`.
    pub failed_units: Vec<String>,
}

impl MachineState {
    pub fn in_sync(&self) -> bool {
        !self.probe.interrupted
            && self.changes.is_empty()
            && self.drift.is_empty()
            && self.probe.check.pending.is_empty()
    }
}

/// Check `m` (built: its manifest is in `.lab/out/`) over `t`.
pub fn machine_state(
    engine: &Engine,
    m: &Machine,
    t: &mut dyn Transport,
) -> Result<MachineState, SyncError> {
    let target = crate::machine::target(&engine.project, m, engine.lab_dir());
    let no_build = || SyncError::Build {
        machine: m.name.clone(),
        message: format!("{}: no build", target.manifest_path.display()),
    };
    let text = std::fs::read_to_string(&target.manifest_path).map_err(|_| no_build())?;
    let digest = lab_core::Digest::of(text.as_bytes());
    let parse = || Manifest::parse(&text).map_err(|_| no_build());
    // (the build is parsed only when it is to be compared: the units need
    // only its paths)
    let mut built = None;
    let units = match (target.systemd, Manifest::paths(&text)) {
        (false, _) => Vec::new(),
        (true, Some(paths)) => {
            lab_sync::units::managed_units(paths, &target.rules, &target.pod_user)
        }
        (true, None) => {
            let b = parse()?;
            let u = lab_sync::units::managed_units(
                b.entries.keys().map(String::as_str),
                &target.rules,
                &target.pod_user,
            );
            built = Some(b);
            u
        }
    };
    let probe = MachineSync {
        target: &target,
        transport: t,
    }
    .check_against(&units, &digest)?;
    let (changes, drift) = match &probe.manifest {
        Some(applied) => {
            let built = match built {
                Some(b) => b,
                None => parse()?,
            };
            let plan = ApplyPlan::new(applied, &built);
            (
                plan.touched().into_iter().map(str::to_string).collect(),
                probe.check.drift(applied),
            )
        }
        // (an interrupted run: the next sync recovers, then looks again;
        // or the machine is on this build and nothing drifted)
        None => (Vec::new(), Vec::new()),
    };
    let failed_units = probe
        .units
        .iter()
        .filter(|(_, st)| st == "failed")
        .map(|(u, _)| u.clone())
        .collect();
    Ok(MachineState {
        name: m.name.clone(),
        probe,
        changes,
        drift,
        failed_units,
    })
}

/// The pods of machine `m`'s last build (`Err`: it has no build).
pub fn desired_pods(
    engine: &Engine,
    m: &Machine,
) -> Result<Vec<lab_sync::pods::DesiredPod>, String> {
    let target = crate::machine::target(&engine.project, m, engine.lab_dir());
    let built = std::fs::read_to_string(&target.manifest_path)
        .ok()
        .and_then(|t| Manifest::parse(&t).ok())
        .ok_or_else(|| format!("`{}`: no build", target.manifest_path.display()))?;
    Ok(lab_sync::pods::desired(
        &target.out_dir,
        &built,
        &target.pod_user,
    ))
}
