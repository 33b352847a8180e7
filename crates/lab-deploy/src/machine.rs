//! From lab.toml's machines to what lab-sync takes: how a machine is
//! reached ([`Endpoint`]), where its build is and how to apply it
//! ([`Target`]), and the `[[units]]` rules. lab-sync knows nothing of
//! lab-config; this is the one place that translates.

use lab_config::{Become, Machine, Project, Transport as Kind, UnitAction};
use lab_sync::{Endpoint, RuleAction, SshSpec, SyncError, Target, Transport, UnitRule};
use std::path::Path;
use std::time::Duration;

/// What lab.toml says about reaching `m` over SSH.
pub fn ssh_spec(project: &Project, m: &Machine) -> SshSpec {
    SshSpec {
        host: m.host.clone(),
        port: m.port_set,
        user: m.user_set.clone(),
        // the machine's own identity first, then the project-wide one
        identities: m
            .identity
            .iter()
            .chain(project.settings.identity.iter())
            .cloned()
            .collect(),
        known_hosts: project.settings.known_hosts.clone(),
        sudo: m.become_method == Some(Become::Sudo),
        control_dir: Some(
            lab_core::LabDir::of_project(&project.root).ssh_control_dir(
                std::env::var_os("XDG_RUNTIME_DIR")
                    .map(std::path::PathBuf::from)
                    .as_deref(),
            ),
        ),
    }
}

/// How `m` is reached: a directory on this host, SSH, or SSH through its
/// host (a container machine).
pub fn endpoint(project: &Project, m: &Machine) -> Endpoint {
    if let Some(c) = &m.container {
        if let Some(host) = project.machine(&c.on) {
            return Endpoint::Via {
                host: ssh_spec(project, host),
                hop: hop(project, m, c),
            };
        }
    }
    match &m.transport {
        Kind::Local { root } => Endpoint::Local { root: root.clone() },
        Kind::Ssh => Endpoint::Ssh(ssh_spec(project, m)),
    }
}

/// The last step to container machine `m`: its address on its host's
/// bridge, its key pinned in `.lab/machines/known_hosts`.
pub fn hop(project: &Project, m: &Machine, c: &lab_config::container::Container) -> lab_sync::Hop {
    lab_sync::Hop {
        name: m.name.clone(),
        address: c.address.to_string(),
        port: 22,
        user: "root".into(),
        known_hosts: lab_core::LabDir::of_project(&project.root).machines_known_hosts(),
    }
}

/// The project's `[[units]]` rules, as lab-sync matches them.
pub fn unit_rules(project: &Project) -> Vec<UnitRule> {
    project
        .units
        .iter()
        .map(|r| UnitRule {
            matcher: r.matcher.clone(),
            unit: r.unit.clone(),
            action: match r.action {
                UnitAction::Reload => RuleAction::Reload,
                UnitAction::Restart => RuleAction::Restart,
                UnitAction::ReloadOrRestart => RuleAction::ReloadOrRestart,
            },
        })
        .collect()
}

/// Where lab keeps a machine's build and sync state, and how to apply it.
pub fn target(project: &Project, m: &Machine, lab_dir: &Path) -> Target {
    let (root, systemd) = match &m.transport {
        Kind::Local { root } => (root.display().to_string(), false),
        Kind::Ssh => (String::new(), true),
    };
    let layout = lab_core::LabDir::at(lab_dir);
    Target {
        name: m.name.clone(),
        out_dir: layout.out_dir(&m.name),
        manifest_path: layout.manifest_path(&m.name),
        cache_path: layout.applied_path(&m.name),
        root,
        systemd,
        keep: project.settings.generations,
        settle_ms: project.settings.settle_ms,
        rules: unit_rules(project),
        pod_user: m.pod_user().to_string(),
        images_dir: project.root.join(lab_pods::IMAGES_DIR),
        lab_dir: lab_dir.to_path_buf(),
    }
}

/// How long a one-off command (`lab sync`, `lab diff`, `lab facts`) waits
/// to connect, and how long an open connection may stay silent before it
/// counts as dead.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
pub const IO_TIMEOUT: Duration = Duration::from_secs(300);

/// Open the transport for `m` with [`CONNECT_TIMEOUT`] and [`IO_TIMEOUT`].
pub fn connect(
    project: &Project,
    m: &Machine,
    ssh_config: Option<&lab_sync::ssh2_config::SshConfig>,
    accept_new: bool,
) -> Result<Box<dyn Transport>, SyncError> {
    lab_sync::connect(
        &endpoint(project, m),
        ssh_config,
        accept_new,
        CONNECT_TIMEOUT,
        IO_TIMEOUT,
    )
}

/// [`connect`], then, when no facts of `m` are cached in `lab_dir`, gather
/// them over the new connection (a build needs them).
pub fn connect_with_facts(
    project: &Project,
    lab_dir: &Path,
    m: &Machine,
    ssh_config: Option<&lab_sync::ssh2_config::SshConfig>,
    accept_new: bool,
) -> Result<Box<dyn Transport>, SyncError> {
    let mut t = connect(project, m, ssh_config, accept_new)?;
    let cached = lab_engine::lab_facts::load(lab_dir, &m.name).is_ok_and(|f| !f.is_empty());
    if !cached {
        lab_sync::gather_facts(t.as_mut(), lab_dir, &m.name)?;
    }
    Ok(t)
}
