//! SSH connections kept open across lab invocations, the way Ansible does
//! by default: OpenSSH's `ControlMaster=auto` with `ControlPersist=60s`.
//!
//! A fresh SSH login costs a key exchange and an sshd process on the
//! machine (0.1-0.3 s, and CPU on both ends: eight at once on two cores
//! take a second). So the first connection to a machine is lab's own
//! (libssh2: host keys checked with lab's rules and messages), and beside
//! it lab starts an OpenSSH master in the background; while that master
//! lives (60 s after its last use), the next `lab` runs its commands
//! through it, a few milliseconds each: lab speaks the master's control
//! protocol itself ([`crate::mux_client`]), as an `ssh -S SOCKET` client
//! would, without starting one per command.
//!
//! The master is started with `StrictHostKeyChecking=yes` against the
//! known_hosts files lab just verified the machine with, `BatchMode=yes`,
//! and the same config file, identities, user and port: it never accepts
//! what lab would not. Its socket (in `.lab/ssh/` or
//! `$XDG_RUNTIME_DIR/lab-ssh/`, see [`lab_core::LabDir::ssh_control_dir`])
//! is named by a digest of everything that makes a connection different
//! (local user, config file, host, port, user, identities, known_hosts,
//! `HostKeyAlias`, `ProxyJump`, `ProxyCommand`), so two machines, users,
//! ports or proxies never share one. A `ControlPath` of the user's own
//! (`~/.ssh/config`, as `ssh -G` expands it) is used as it is instead.
//! A master is used only while the host key lab verified when it started
//! it (kept beside the sockets) is still the known one: a key changed or
//! revoked since goes to lab's own connection and its refusal, and a
//! master lab did not start is never used.
//! `LAB_SSH_MULTIPLEX=0` turns all of this off.

use crate::mux_client::{Pipes, Session};
use crate::ssh::{SshSpec, SshTarget, SshTransport};
use crate::transport::{Counting, Input, Output, Transport};
use crate::SyncError;
use base64::Engine as _;
use lab_core::Digest;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long an idle master stays (OpenSSH's `ControlPersist`).
pub const CONTROL_PERSIST: &str = "60s";

/// A Unix socket's path must fit in `sun_path` (108 bytes on Linux,
/// less elsewhere): longer ones are not multiplexed.
const SOCKET_PATH_MAX: usize = 100;

/// How to reach one machine through a shared master.
#[derive(Clone, Debug)]
pub(crate) struct Mux {
    /// The control socket.
    socket: PathBuf,
    /// `ssh`'s options and destination, for the master and the clients.
    args: Vec<String>,
    /// The socket is in lab's own directory (not the user's `ControlPath`).
    own: bool,
    /// The host key lab verified when it started the master (base64).
    key_file: PathBuf,
}

impl Mux {
    /// The shared connection of `t` (resolved from `spec`), or `None` when
    /// it is not to be shared: no control directory, turned off, a
    /// directive lab refuses, or a socket path too long.
    pub(crate) fn of(spec: &SshSpec, t: &SshTarget) -> Option<Mux> {
        let dir = spec.control_dir.as_ref()?;
        if std::env::var("LAB_SSH_MULTIPLEX").is_ok_and(|v| v == "0") || t.refused.is_some() {
            return None;
        }
        let config = std::env::var_os("LAB_SSH_CONFIG").map(PathBuf::from);
        let mut args: Vec<String> = Vec::new();
        if let Some(f) = &config {
            args.extend(["-F".into(), f.display().to_string()]);
        }
        args.extend(["-p".into(), t.port.to_string(), "-l".into(), t.user.clone()]);
        for i in &spec.identities {
            args.extend(["-i".into(), crate::ssh::expand(i).display().to_string()]);
        }
        let mut known = vec![t.known_hosts.display().to_string()];
        known.extend(t.known_hosts_also.iter().map(|p| p.display().to_string()));
        for o in [
            "BatchMode=yes".to_string(),
            "StrictHostKeyChecking=yes".to_string(),
            format!("UserKnownHostsFile={}", known.join(" ")),
            "LogLevel=ERROR".to_string(),
        ] {
            args.extend(["-o".into(), o]);
        }
        let socket = match &t.control_path {
            Some(p) => p.clone(),
            None => {
                let uid = unsafe { libc::getuid() };
                let mut key = format!(
                    "{uid}\0{}\0{}\0{}\0{}\0{:?}\0{:?}\0{:?}\0",
                    spec.host,
                    t.host,
                    t.port,
                    t.user,
                    t.host_key_alias,
                    t.proxy_jump,
                    t.proxy_command
                );
                for a in &args {
                    key.push_str(a);
                    key.push('\0');
                }
                let name = Digest::of(key.as_bytes()).to_hex()[..20].to_string();
                dir.join(name)
            }
        };
        if socket.as_os_str().len() > SOCKET_PATH_MAX {
            return None;
        }
        args.extend(["-o".into(), format!("ControlPath={}", socket.display())]);
        // (`--` would end the options: the destination comes last)
        if spec.host.starts_with('-') {
            return None;
        }
        args.push(spec.host.clone());
        let own = t.control_path.is_none();
        let key_name = Digest::of(socket.as_os_str().as_encoded_bytes()).to_hex();
        let key_file = dir.join(format!("{}.key", &key_name[..20]));
        Some(Mux {
            socket,
            args,
            own,
            key_file,
        })
    }

    /// Whether a master listens on the socket (a connection to it is
    /// accepted: a master that is gone leaves a socket that refuses; no
    /// `ssh -O check` process, which costs as much as the command).
    pub(crate) fn alive(&self) -> bool {
        is_master(&self.socket) && std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
    }

    /// Whether the master can be used for `t`: it listens, lab started
    /// it (a master of the user's own, or one whose key lab did not
    /// record, is not used), and the host key lab verified then is still
    /// the one known_hosts names. A master of lab's whose key is no
    /// longer known is told to exit: lab's own connection says why.
    pub(crate) fn usable(&self, t: &SshTarget) -> bool {
        if !self.alive() {
            return false;
        }
        let key = std::fs::read_to_string(&self.key_file).ok().and_then(|k| {
            base64::engine::general_purpose::STANDARD
                .decode(k.trim())
                .ok()
        });
        if key.is_some_and(|k| crate::ssh::still_known(t, &k)) {
            return true;
        }
        if self.own {
            let _ = Command::new("ssh")
                .args(["-O", "exit"])
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        false
    }

    /// Start a master in the background for the next runs (its own
    /// process group: a Ctrl-C of this run does not end it). Nothing is
    /// waited for; a master that cannot start leaves nothing behind, and
    /// the next run connects as this one did.
    /// `key`: the host key lab's own connection just verified.
    pub(crate) fn start_master(&self, key: &[u8]) {
        if let Some(mut child) = self.spawn_master(key) {
            // (reaped when it goes to the background or gives up)
            std::thread::spawn(move || child.wait());
        }
    }

    /// Start a master as [`Mux::start_master`] does and wait, up to
    /// `limit`, until it listens (`true`) or gives up (`false`: lab's own
    /// connection then says why). For a machine whose key lab pinned
    /// itself (a container it created), where lab's own connection beside
    /// the master would cost a second key exchange and login.
    pub(crate) fn start_master_wait(&self, key: &[u8], limit: Duration) -> bool {
        let Some(mut child) = self.spawn_master(key) else {
            return false;
        };
        let start = std::time::Instant::now();
        // (the foreground ssh ends once the master went to the
        // background, or when it could not connect)
        while !self.alive() && matches!(child.try_wait(), Ok(None)) && start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::spawn(move || child.wait());
        self.alive()
    }

    fn spawn_master(&self, key: &[u8]) -> Option<std::process::Child> {
        use std::os::unix::fs::PermissionsExt;
        // (lab's own directory; a ControlPath of the user's is theirs)
        if let Some(dir) = self.key_file.parent() {
            if std::fs::create_dir_all(dir).is_err() {
                return None;
            }
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let tmp = self.key_file.with_extension("tmp");
        let text = base64::engine::general_purpose::STANDARD.encode(key);
        if std::fs::write(&tmp, text).is_err() || std::fs::rename(&tmp, &self.key_file).is_err() {
            return None;
        }
        // (a master that died left its socket: ssh would not replace it;
        // only lab's own, in its own directory, is removed)
        if self.own && is_master(&self.socket) && !self.alive() {
            let _ = std::fs::remove_file(&self.socket);
        }
        // (a command that ends at once, not `-N`: when another run's
        // master took the socket first, this ssh is no master, runs `true`
        // and ends, rather than staying connected for ever)
        let mut c = Command::new("ssh");
        c.args([
            "-T",
            "-o",
            "ControlMaster=yes",
            "-o",
            &format!("ControlPersist={CONTROL_PERSIST}"),
            // (a machine gone silent ends the master, and its clients
            // with it, within a minute)
            "-o",
            "ServerAliveInterval=15",
        ])
        .args(&self.args)
        .arg("true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        c.spawn().ok()
    }

    /// The same connection with more `-o` options for `ssh` (before the
    /// destination): what a target has that no config file says (a
    /// container's proxy and host key alias). The socket's name already
    /// covers them (it digests the target's proxy and alias).
    pub(crate) fn with_options(mut self, options: &[String]) -> Mux {
        let dest = self.args.pop().expect("the destination is last");
        for o in options {
            self.args.extend(["-o".to_string(), o.clone()]);
        }
        self.args.push(dest);
        self
    }

    /// `ssh`'s options and destination for a client of this connection
    /// (through the master while it listens).
    pub(crate) fn client_args(&self) -> &[String] {
        &self.args
    }

    /// Wait up to `limit` for a master just started to listen (a client
    /// that comes sooner makes a connection of its own).
    pub(crate) fn wait_alive(&self, limit: Duration) {
        let start = std::time::Instant::now();
        while !self.alive() && start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `command` running through the master (its stdin piped, or
    /// `/dev/null`).
    fn session(&self, command: &str, stdin: bool) -> Result<(Session, Pipes), SyncError> {
        Session::open(&self.socket, command, stdin).map_err(|e| {
            SyncError::Channel(if self.alive() {
                e.to_string()
            } else {
                "the connection was lost".into()
            })
        })
    }
}

/// Commands through a shared master; if it is gone (the connection was
/// lost, or it timed out in a long session), lab's own connection takes
/// over.
pub struct MuxTransport {
    mux: Mux,
    direct: Option<SshTransport>,
    target: SshTarget,
    timeout: Duration,
    io_timeout: Duration,
    commands: u64,
    command_bytes: u64,
    sent: u64,
}

impl MuxTransport {
    pub(crate) fn new(
        mux: Mux,
        target: SshTarget,
        timeout: Duration,
        io_timeout: Duration,
    ) -> MuxTransport {
        MuxTransport {
            mux,
            direct: None,
            target,
            timeout,
            io_timeout,
            commands: 0,
            command_bytes: 0,
            sent: 0,
        }
    }
}

impl MuxTransport {
    /// A command's exit status through the master. None: the command
    /// ended by a signal (no exit status: 0, as lab's own connection
    /// reports it; the command's report says whether it finished), or the
    /// master is gone with a lost connection.
    fn exit_status(&self, status: Option<i32>, stderr: &[u8]) -> Result<i32, SyncError> {
        let status = match status {
            None if self.mux.alive() => 0,
            None => return Err(SyncError::Channel("the connection was lost".into())),
            Some(s) => s,
        };
        crate::ssh::sudo_refusal(&self.target, status, stderr)?;
        Ok(status)
    }
}

impl Transport for MuxTransport {
    fn run(&mut self, command: &str, input: Input<'_>) -> Result<Output, SyncError> {
        if let Some(d) = &mut self.direct {
            return d.run(command, input);
        }
        self.commands += 1;
        self.command_bytes += command.len() as u64;
        let cmd = crate::ssh::with_sudo(&self.target, command);
        let (mut session, pipes) = self.mux.session(&cmd, true)?;
        let read = |mut r: std::fs::File| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                buf
            })
        };
        let out = read(pipes.stdout);
        let err = read(pipes.stderr);
        let written = match pipes.stdin {
            Some(stdin) => {
                let mut w = std::io::BufWriter::with_capacity(
                    256 * 1024,
                    Counting {
                        inner: stdin,
                        count: &mut self.sent,
                        broken: false,
                    },
                );
                input(&mut w).and_then(|()| w.flush())
            }
            None => Ok(()),
        };
        let status = session
            .wait()
            .map_err(|e| SyncError::Channel(format!("ssh master: {e}")))?;
        drop(session);
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        written.map_err(|e| SyncError::Channel(e.to_string()))?;
        let status = self.exit_status(status, &stderr)?;
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }

    /// `lab logs -f` through the master: stdout handed on as it comes.
    fn run_streaming(
        &mut self,
        command: &str,
        out: &mut dyn FnMut(&[u8]),
    ) -> Result<(i32, Vec<u8>), SyncError> {
        if let Some(d) = &mut self.direct {
            return d.run_streaming(command, out);
        }
        self.commands += 1;
        self.command_bytes += command.len() as u64;
        let cmd = crate::ssh::with_sudo(&self.target, command);
        let (mut session, mut pipes) = self.mux.session(&cmd, false)?;
        let mut r = pipes.stderr;
        let err = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        });
        let mut buf = [0u8; 16 * 1024];
        loop {
            match pipes.stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out(&buf[..n]),
            }
        }
        let status = session
            .wait()
            .map_err(|e| SyncError::Channel(format!("ssh master: {e}")))?;
        drop(session);
        let stderr = err.join().unwrap_or_default();
        let status = self.exit_status(status, &stderr)?;
        Ok((status, stderr))
    }

    fn commands(&self) -> u64 {
        self.commands + self.direct.as_ref().map_or(0, |d| d.commands())
    }

    fn command_bytes(&self) -> u64 {
        self.command_bytes + self.direct.as_ref().map_or(0, |d| d.command_bytes())
    }

    fn sent(&self) -> u64 {
        self.sent + self.direct.as_ref().map_or(0, |d| d.sent())
    }

    fn reconnect(&mut self) -> Result<(), SyncError> {
        if self.direct.is_none() && self.mux.alive() {
            return Ok(());
        }
        self.direct = Some(SshTransport::connect(
            &self.target,
            false,
            self.timeout,
            self.io_timeout,
        )?);
        Ok(())
    }
}

/// Whether `p` is a socket (a master's, alive or not).
pub fn is_master(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mux(spec: &SshSpec, f: impl FnOnce(&mut SshTarget)) -> Mux {
        let mut t = SshTarget::new("10.0.0.1", 22, "root", "/k".into());
        f(&mut t);
        Mux::of(spec, &t).unwrap()
    }

    /// A reader slower than the command, on a real master: the command's
    /// whole output arrives, and its status.
    #[test]
    fn output_the_master_holds_at_the_exit_arrives_whole() {
        let sshd = lab_testhosts::SshdFixture::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spec = SshSpec {
            host: sshd.address().into(),
            port: Some(sshd.port()),
            user: Some(sshd.user().into()),
            identities: vec![sshd.identity().to_path_buf()],
            known_hosts: Some(sshd.known_hosts().to_path_buf()),
            sudo: false,
            control_dir: Some(dir.path().to_path_buf()),
        };
        let t = SshTarget::resolve(&spec, None);
        let mux = Mux::of(&spec, &t).unwrap();
        let key = base64::engine::general_purpose::STANDARD
            .decode(sshd.host_public_key().split(' ').nth(1).unwrap())
            .unwrap();
        assert!(mux.start_master_wait(&key, Duration::from_secs(10)));
        let (mut s, pipes) =
            Session::open(&mux.socket, "head -c 1000000 /dev/zero", false).unwrap();
        let mut out = pipes.stdout;
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            let mut b = Vec::new();
            out.read_to_end(&mut b).unwrap();
            b.len()
        });
        assert_eq!(s.wait().unwrap(), Some(0));
        drop(s);
        assert_eq!(reader.join().unwrap(), 1_000_000);
        let _ = Command::new("ssh")
            .arg("-S")
            .arg(&mux.socket)
            .args(["-O", "exit", "x"])
            .output();
    }

    /// Different users, ports, proxies, keys or known_hosts never share a
    /// master; the same settings always do.
    #[test]
    fn a_socket_per_way_of_connecting() {
        std::env::remove_var("LAB_SSH_MULTIPLEX");
        let spec = SshSpec {
            host: "web".into(),
            control_dir: Some("/run/x".into()),
            ..Default::default()
        };
        let base = mux(&spec, |_| {}).socket;
        assert_eq!(mux(&spec, |_| {}).socket, base);
        assert!(base.starts_with("/run/x"));
        let others = [
            mux(&spec, |t| t.user = "deploy".into()).socket,
            mux(&spec, |t| t.port = 2222).socket,
            mux(&spec, |t| t.host = "10.0.0.2".into()).socket,
            mux(&spec, |t| t.proxy_command = Some("nc %h %p".into())).socket,
            mux(&spec, |t| t.proxy_jump = vec!["bastion".into()]).socket,
            mux(&spec, |t| t.known_hosts = "/other".into()).socket,
            mux(&spec, |t| t.host_key_alias = Some("a".into())).socket,
            mux(
                &SshSpec {
                    identities: vec!["/id".into()],
                    ..spec.clone()
                },
                |_| {},
            )
            .socket,
        ];
        for (i, o) in others.iter().enumerate() {
            assert_ne!(*o, base, "{i}");
            assert!(others[i + 1..].iter().all(|x| x != o), "{i}");
        }
        // the user's own ControlPath wins; nothing shared without a
        // directory, nor for a machine lab refuses
        let theirs = mux(&spec, |t| t.control_path = Some("/home/u/.ssh/cm".into()));
        assert_eq!(theirs.socket, PathBuf::from("/home/u/.ssh/cm"));
        let none = SshSpec {
            control_dir: None,
            ..spec.clone()
        };
        assert!(Mux::of(&none, &SshTarget::new("h", 22, "root", "/k".into())).is_none());
        let mut refused = SshTarget::new("h", 22, "root", "/k".into());
        refused.refused = Some(("f:1".into(), "no".into()));
        assert!(Mux::of(&spec, &refused).is_none());
    }
}
