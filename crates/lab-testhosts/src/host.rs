use crate::error::{tail, Error, Result};
use serde::Deserialize;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// One reachable ssh host: a fleet container or the loopback sshd fixture.
///
/// `known_hosts` is a file that pins this host's key (it may pin the other
/// hosts of the fleet too); `known_hosts_line` is this host's line of it,
/// e.g. `10.200.3.2 ssh-ed25519 AAAA...` or
/// `[127.0.0.1]:40123 ssh-ed25519 AAAA...`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Host {
    /// Host name, also the container's hostname (`th1`, ...).
    pub name: String,
    /// IPv4 address to connect to.
    pub address: String,
    /// TCP port of sshd.
    pub port: u16,
    /// User to log in as (`root` in fleets).
    pub user: String,
    /// Private key that logs in as `user`.
    pub identity: PathBuf,
    /// known_hosts file with this host's key.
    pub known_hosts: PathBuf,
    /// This host's known_hosts line.
    pub known_hosts_line: String,
    /// PID of the `systemd-nspawn` (fleet) or `sshd` (fixture) process.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Network namespace of the container (fleet only), e.g. `th-1`.
    #[serde(default)]
    pub netns: Option<String>,
    /// Host side of the container's veth pair (fleet only), e.g. `th-1h`.
    #[serde(default)]
    pub veth: Option<String>,
    /// The machine's own address on the container's link (fleet only).
    #[serde(default)]
    pub host_address: Option<String>,
    /// The container's root directory as seen from the machine running the
    /// tests (fleet only): lets a test look at the container's files
    /// without ssh.
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Console log of the container (fleet only).
    #[serde(default)]
    pub log: Option<PathBuf>,
    /// The pod user (podman fleets only): `pods`, lingering, with subuids.
    #[serde(default)]
    pub pod_user: Option<String>,
    /// The memory cap of this host in bytes, when one was asked for.
    #[serde(default)]
    pub memory_max: Option<u64>,
}

impl Host {
    /// `user@address`, the destination argument for `ssh`.
    pub fn destination(&self) -> String {
        format!("{}@{}", self.user, self.address)
    }

    /// Options for the system `ssh` client (without the destination):
    /// `-F /dev/null -i IDENTITY -p PORT -o UserKnownHostsFile=KNOWN_HOSTS
    /// -o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes
    /// -o ConnectTimeout=10 -o LogLevel=ERROR`.
    ///
    /// `-F /dev/null` keeps the caller's `~/.ssh/config` out; append your own
    /// `-o` options (e.g. `ControlMaster`) after these.
    pub fn ssh_args(&self) -> Vec<String> {
        vec![
            "-F".into(),
            "/dev/null".into(),
            "-i".into(),
            self.identity.display().to_string(),
            "-p".into(),
            self.port.to_string(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "ConnectTimeout=10".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
        ]
    }

    /// A `ssh` command with [`Host::ssh_args`] and the destination, ready
    /// for a remote command to be appended; stdin is not redirected.
    pub fn ssh_command(&self) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(self.ssh_args()).arg(self.destination());
        cmd
    }

    /// Run `cmd` on the host through the system `ssh` (stdin is null).
    /// Errors only when `ssh` cannot be started; the remote exit status is
    /// in the returned [`Output`].
    pub fn ssh(&self, cmd: &str) -> Result<Output> {
        let mut c = self.ssh_command();
        c.arg(cmd).stdin(Stdio::null());
        c.output().map_err(|source| Error::Spawn {
            command: format!("ssh {} {cmd}", self.destination()),
            source,
        })
    }

    /// `podman ARGS` as the host's pod user (podman fleets), with the
    /// environment rootless podman needs; stdout on success.
    pub fn podman(&self, args: &str) -> Result<String> {
        let user = self.pod_user.as_deref().unwrap_or("pods");
        self.run(&format!(
            "cd / && uid=$(id -u {user}) && runuser -u {user} -- env -i PATH=/usr/bin:/bin \
             HOME=/home/{user} XDG_RUNTIME_DIR=/run/user/$uid podman {args}"
        ))
    }

    /// `systemctl --user ARGS` in the pod user's systemd; stdout, whatever
    /// the exit status (`is-active` of a stopped unit exits 3).
    pub fn user_systemctl(&self, args: &str) -> Result<String> {
        let user = self.pod_user.as_deref().unwrap_or("pods");
        let out = self.ssh(&format!("systemctl --user -M {user}@ {args}"))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Like [`Host::ssh`] but a non-zero exit is an [`Error::Command`];
    /// returns stdout as text.
    pub fn run(&self, cmd: &str) -> Result<String> {
        let out = self.ssh(cmd)?;
        if !out.status.success() {
            let mut output = tail(&out.stderr, 40);
            if output.trim().is_empty() {
                output = tail(&out.stdout, 40);
            }
            return Err(Error::Command {
                command: format!("ssh {} {cmd}", self.destination()),
                status: out.status,
                output,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
