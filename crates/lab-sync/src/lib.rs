//! Ships built trees to machines. Owns the transports (one SSH connection
//! per machine via `ssh2`, or `sh` for local machines), the decision of what
//! to send (manifest diff against what the machine applied last), which
//! systemd units a change touches, rollback, and `lab diff`. The program
//! that runs on the machine lives in `lab-agent`. Returns typed errors;
//! never prints.

pub mod bootstrap;
pub mod converge;
pub mod diff;
mod error;
mod machine;
mod openssh;
pub mod secrets;
pub mod ssh;
mod transport;
pub mod units;

pub use error::SyncError;
pub use machine::{Change, MachineSync, Outcome, Probe, SyncOptions, SyncReport, Target};
pub use ssh::{HostKeyPolicy, Login, SshTarget, SshTransport};
pub use ssh2_config;
pub use transport::{LocalTransport, Output, Transport};

use lab_config::{Machine, Project, Transport as Kind};
use std::path::Path;
use std::time::Duration;

/// Where lab keeps a machine's build and sync state, and how to apply it.
pub fn target(project: &Project, m: &Machine, lab_dir: &Path) -> Target {
    let (root, systemd) = match &m.transport {
        Kind::Local { root } => (root.display().to_string(), false),
        Kind::Ssh => (String::new(), true),
    };
    Target {
        name: m.name.clone(),
        out_dir: lab_core::LabDir::at(lab_dir).out_dir(&m.name),
        manifest_path: lab_core::LabDir::at(lab_dir).manifest_path(&m.name),
        cache_path: lab_core::LabDir::at(lab_dir).applied_path(&m.name),
        root,
        systemd,
        keep: project.settings.generations,
        settle_ms: project.settings.settle_ms,
        rules: project.units.clone(),
    }
}

/// Gather a machine's facts over its transport (one command) and cache
/// them in `.lab/facts/NAME.json`, where builds read them.
pub fn gather_facts(
    t: &mut dyn Transport,
    lab_dir: &Path,
    machine: &str,
) -> Result<(std::path::PathBuf, lab_facts::Facts), SyncError> {
    let cmd = format!("sh -c {}", lab_agent::quote(lab_facts::GATHER_SCRIPT));
    let out = t.run(&cmd, &mut |_| Ok(()))?;
    if out.status != 0 {
        return Err(SyncError::Protocol {
            status: out.status,
            output: out.stderr_text(),
        });
    }
    let facts = lab_facts::parse(&out.stdout_text()).map_err(|e| SyncError::Protocol {
        status: 0,
        output: format!("gathered facts: {e}"),
    })?;
    let path =
        lab_facts::store(lab_dir, machine, &facts).map_err(|e| SyncError::Local(e.to_string()))?;
    Ok((path, facts))
}

/// Open the transport for a machine: `sh` for a local one, an SSH
/// connection otherwise (15 s to connect, 5 minutes of silence on an open
/// connection means it is dead).
pub fn connect(
    project: &Project,
    m: &Machine,
    ssh_config: Option<&ssh2_config::SshConfig>,
    accept_new: bool,
) -> Result<Box<dyn Transport>, SyncError> {
    connect_with(
        project,
        m,
        ssh_config,
        accept_new,
        Duration::from_secs(15),
        Duration::from_secs(300),
    )
}

/// [`connect`] with explicit timeouts (`lab watch` wants short ones).
pub fn connect_with(
    project: &Project,
    m: &Machine,
    ssh_config: Option<&ssh2_config::SshConfig>,
    accept_new: bool,
    timeout: Duration,
    io_timeout: Duration,
) -> Result<Box<dyn Transport>, SyncError> {
    match &m.transport {
        Kind::Local { root } => {
            std::fs::create_dir_all(root)
                .map_err(|e| SyncError::Local(format!("{}: {e}", root.display())))?;
            Ok(Box::new(LocalTransport::new()))
        }
        Kind::Ssh => {
            let t = SshTarget::resolve(m, &project.settings, ssh_config);
            Ok(Box::new(SshTransport::connect(
                &t, accept_new, timeout, io_timeout,
            )?))
        }
    }
}
