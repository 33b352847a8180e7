use crate::ssh::SshTarget;
use lab_core::Diagnose;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cannot connect to `{host}:{port}`: {message}")]
    Connect {
        host: String,
        port: u16,
        message: String,
    },
    #[error("host key for `{host}` is not known ({fingerprint})")]
    HostKeyUnknown {
        host: String,
        fingerprint: String,
        known_hosts: String,
    },
    #[error("host key for `{host}` has CHANGED ({fingerprint} is not the key in `{known_hosts}`)")]
    HostKeyChanged {
        host: String,
        fingerprint: String,
        known_hosts: String,
    },
    #[error("host key for `{host}` is {fingerprint}, not the expected {expected}")]
    HostKeyUnexpected {
        host: String,
        fingerprint: String,
        expected: String,
    },
    #[error("loading image `{image}` into the podman storage of `{user}` failed: {output}")]
    Image {
        image: String,
        user: String,
        output: String,
    },
    #[error("bootstrap stopped while {step}: {message}")]
    Bootstrap { step: String, message: String },
    #[error("cannot read `{path}`: {message}")]
    KnownHosts { path: String, message: String },
    #[error("`{path}`: {message}")]
    SshConfig { path: String, message: String },
    #[error("`sudo -n` as `{user}` on `{host}` did not run lab's command: {message}")]
    Sudo {
        user: String,
        host: String,
        message: String,
        missing: bool,
    },
    #[error("authentication as `{user}` on `{host}` needs the passphrase of {}, and there is no terminal to ask for it on", keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "))]
    Passphrase {
        user: String,
        host: String,
        keys: Vec<String>,
    },
    #[error("authentication as `{user}` on `{host}` failed (tried: {})", if tried.is_empty() { "nothing".to_string() } else { tried.join(", ") })]
    Auth {
        user: String,
        host: String,
        tried: Vec<String>,
    },
    #[error("ssh `{host}`: {message}")]
    Ssh { host: String, message: String },
    #[error("connection lost: {0}")]
    Channel(String),
    #[error("{0}")]
    Local(String),
    #[error("cannot read the build of `{machine}`: {message}")]
    Build { machine: String, message: String },
    #[error("the machine refused the change: {0}")]
    Remote(String),
    #[error("the machine ran out of disk space writing `{path}`: the change needs {}, {} {} free there", human(*needed), human(*free), if *free == 1 { "is" } else { "are" })]
    NoSpace {
        path: String,
        needed: u64,
        free: u64,
    },
    #[error("the run on the machine stopped before it finished: {0}")]
    Interrupted(String),
    #[error("the machine answered unexpectedly (exit {status}): {output}")]
    Protocol { status: i32, output: String },
    #[error("another sync changed the machine at the same time; tried {0} times")]
    Contended(u32),
    #[error("{0}")]
    Rollback(String),
}

/// Bytes for people: `512 B`, `1.5 KiB`, `2.0 MiB`, `3.1 GiB`.
fn human(n: u64) -> String {
    const K: f64 = 1024.0;
    let f = n as f64;
    if f < K {
        format!("{n} B")
    } else if f < K * K {
        format!("{:.1} KiB", f / K)
    } else if f < K * K * K {
        format!("{:.1} MiB", f / K / K)
    } else {
        format!("{:.1} GiB", f / K / K / K)
    }
}

impl SyncError {
    pub(crate) fn ssh(t: &SshTarget, what: &str, e: ssh2::Error) -> SyncError {
        SyncError::Ssh {
            host: t.known_hosts_name(),
            message: format!("{what}: {}", e.message()),
        }
    }

    pub(crate) fn ssh_msg(t: &SshTarget, what: &str) -> SyncError {
        SyncError::Ssh {
            host: t.known_hosts_name(),
            message: what.to_string(),
        }
    }
}

impl Diagnose for SyncError {
    fn hint(&self) -> Option<String> {
        match self {
            SyncError::HostKeyUnknown { known_hosts, .. } => Some(format!(
                "check the fingerprint, then run again with `--accept-new` to add it to `{known_hosts}`"
            )),
            SyncError::HostKeyChanged { .. } => Some(
                "if the machine was reinstalled, remove its old key from known_hosts \
                 (`ssh-keygen -R HOST`); otherwise someone may be intercepting the connection"
                    .into(),
            ),
            SyncError::Sudo { missing: true, .. } => Some(
                "install sudo on the machine (`apt-get install sudo`, `dnf install sudo`), \
                 or log in as root"
                    .into(),
            ),
            SyncError::Sudo { user, .. } => Some(format!(
                "lab cannot type a password: give `{user}` passwordless sudo, e.g. \
                 `{user} ALL=(ALL) NOPASSWD: ALL` in /etc/sudoers.d/{user}"
            )),
            SyncError::Passphrase { keys, .. } => Some(format!(
                "add the key to ssh-agent (`ssh-add {}`), or run lab on a terminal",
                keys[0]
            )),
            SyncError::Auth { .. } => Some(
                "set `identity` for the machine in lab.toml, `IdentityFile` in ~/.ssh/config, \
                 or load the key into ssh-agent"
                    .into(),
            ),
            SyncError::Contended(_) => Some("run the sync again".into()),
            SyncError::Interrupted(_) => Some(
                "sync again: the machine first finishes or undoes what the stopped run began"
                    .into(),
            ),
            SyncError::NoSpace { .. } => Some(
                "free space on the machine (or make the change smaller) and sync again; \
                 the machine is back where it was"
                    .into(),
            ),
            _ => None,
        }
    }
}
