//! Ships built trees to machines. Owns the transports (one SSH connection
//! per machine via `ssh2`, or `sh` for local machines), the decision of what
//! to send (manifest diff against what the machine applied last), which
//! systemd units a change touches, rollback, and `lab diff`. The program
//! that runs on the machine lives in `lab-agent`. Returns typed errors;
//! never prints. It knows nothing of lab.toml: lab-deploy turns the
//! project's machines into the plain [`Endpoint`], [`SshSpec`] and
//! [`Target`] this crate takes.

pub mod bootstrap;
pub mod converge;
pub mod diff;
mod error;
pub mod image_store;
pub mod images;
mod library;
mod machine;
pub mod mux;
mod mux_client;
mod openssh;
pub mod pods;
pub mod secrets;
pub mod ssh;
mod transport;
pub mod units;
pub mod via;

pub use error::SyncError;
pub use machine::{Change, MachineSync, Outcome, Probe, SyncOptions, SyncReport, Target};
pub use ssh::{HostKeyPolicy, Login, SshSpec, SshTarget, SshTransport};
pub use ssh2_config;
pub use transport::{Input, LocalTransport, Output, Transport};
pub use units::{RuleAction, UnitRule};
pub use via::Hop;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a machine is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A directory on this host (absolute): commands run with `sh`.
    Local {
        root: PathBuf,
    },
    Ssh(SshSpec),
    /// A machine reached through another one (a container on its host).
    Via {
        host: SshSpec,
        hop: Hop,
    },
}

/// Gather a machine's facts over its transport (one command) and cache
/// them in `.lab/facts/NAME.json`, where builds read them.
pub fn gather_facts(
    t: &mut dyn Transport,
    lab_dir: &Path,
    machine: &str,
) -> Result<(PathBuf, lab_facts::Facts), SyncError> {
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
/// connection otherwise, with these timeouts (to connect; of silence on
/// an open connection).
pub fn connect(
    endpoint: &Endpoint,
    ssh_config: Option<&ssh2_config::SshConfig>,
    accept_new: bool,
    timeout: Duration,
    io_timeout: Duration,
) -> Result<Box<dyn Transport>, SyncError> {
    match endpoint {
        Endpoint::Local { root } => {
            std::fs::create_dir_all(root)
                .map_err(|e| SyncError::Local(format!("{}: {e}", root.display())))?;
            Ok(Box::new(LocalTransport::new()))
        }
        Endpoint::Ssh(spec) => {
            let t = SshTarget::resolve(spec, ssh_config);
            // a master from an earlier run: through it; else lab's own
            // connection, and a master for the next runs (see `mux`)
            let Some(mux) = mux::Mux::of(spec, &t) else {
                return Ok(Box::new(SshTransport::connect(
                    &t, accept_new, timeout, io_timeout,
                )?));
            };
            if mux.usable(&t) {
                return Ok(Box::new(mux::MuxTransport::new(
                    mux, t, timeout, io_timeout,
                )));
            }
            let direct = SshTransport::connect(&t, accept_new, timeout, io_timeout)?;
            if let Some(key) = direct.host_key_blob() {
                mux.start_master(&key);
            }
            Ok(Box::new(direct))
        }
        Endpoint::Via { host, hop } => via::connect_via(host, ssh_config, hop, timeout, io_timeout),
    }
}
