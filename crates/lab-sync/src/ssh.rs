//! One SSH connection per machine (libssh2 through the `ssh2` crate): where
//! to connect (lab.toml, then `~/.ssh/config`: `HostName`, `User`, `Port`,
//! `IdentityFile`, `ProxyJump`), host key verification against
//! `known_hosts`, authentication (identity files, then the agent, then the
//! default keys), and running commands over the connection.

use crate::transport::{Counting, Input, Output, Transport};
use crate::SyncError;
use base64::Engine as _;
use lab_config::{Machine, Settings};
use ssh2::{CheckResult, HashType, HostKeyType, KnownHostFileKind, Session};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where and how to reach one machine, after lab.toml and `~/.ssh/config`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshTarget {
    /// The host to connect to (after `HostName`).
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Identity files to try, in order.
    pub identities: Vec<PathBuf>,
    /// `ProxyJump` hosts, `[user@]host[:port]`, outermost first.
    pub proxy_jump: Vec<String>,
    pub known_hosts: PathBuf,
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// The user's ssh config (`$LAB_SSH_CONFIG`, else `~/.ssh/config`), if any.
pub fn load_ssh_config() -> Result<Option<ssh2_config::SshConfig>, SyncError> {
    let path = std::env::var_os("LAB_SSH_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".ssh/config"));
    let Ok(f) = std::fs::File::open(&path) else {
        return Ok(None);
    };
    let mut r = std::io::BufReader::new(f);
    ssh2_config::SshConfig::default()
        .parse(
            &mut r,
            ssh2_config::ParseRule::ALLOW_UNKNOWN_FIELDS
                | ssh2_config::ParseRule::ALLOW_UNSUPPORTED_FIELDS,
        )
        .map(Some)
        .map_err(|e| SyncError::SshConfig {
            path: path.display().to_string(),
            message: e.to_string(),
        })
}

fn expand(p: &Path) -> PathBuf {
    match p.to_str().and_then(|s| s.strip_prefix("~/")) {
        Some(rest) => home().join(rest),
        None => p.to_path_buf(),
    }
}

impl SshTarget {
    /// Values set in lab.toml win; then `~/.ssh/config` for the machine's
    /// host; then the defaults (port 22, user root).
    pub fn resolve(
        m: &Machine,
        settings: &Settings,
        config: Option<&ssh2_config::SshConfig>,
    ) -> SshTarget {
        let params = config.map(|c| c.query(&m.host));
        let p = params.as_ref();
        let host = p
            .and_then(|p| p.host_name.clone())
            .unwrap_or_else(|| m.host.clone());
        let port = m.port_set.or_else(|| p.and_then(|p| p.port)).unwrap_or(22);
        let user = m
            .user_set
            .clone()
            .or_else(|| p.and_then(|p| p.user.clone()))
            .unwrap_or_else(|| "root".into());
        let mut identities = Vec::new();
        identities.extend(m.identity.iter().map(|p| expand(p)));
        identities.extend(settings.identity.iter().map(|p| expand(p)));
        if let Some(files) = p.and_then(|p| p.identity_file.clone()) {
            identities.extend(files.iter().map(|p| expand(p)));
        }
        let proxy_jump = p
            .and_then(|p| p.proxy_jump.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|j| !j.eq_ignore_ascii_case("none"))
            .collect();
        SshTarget {
            host,
            port,
            user,
            identities,
            proxy_jump,
            known_hosts: settings
                .known_hosts
                .clone()
                .unwrap_or_else(|| home().join(".ssh/known_hosts")),
        }
    }

    /// `host` or `[host]:port`, as known_hosts writes it.
    pub fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }
}

/// An authenticated connection to one machine.
pub struct SshTransport {
    session: Session,
    /// The `ssh -W` process carrying the connection through a jump host.
    proxy: Option<Child>,
    /// The connection's socket (for waiting on it without blocking in
    /// libssh2), and how long a command's input may make no progress.
    fd: RawFd,
    io_timeout: Duration,
    commands: u64,
    sent: u64,
    /// How it connected, to connect again after a lost connection (the
    /// host key is known by then: no `accept_new`).
    target: SshTarget,
    timeout: Duration,
}

impl Drop for SshTransport {
    fn drop(&mut self) {
        let _ = self.session.disconnect(None, "lab done", None);
        if let Some(mut p) = self.proxy.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

fn key_type_name(t: HostKeyType) -> &'static str {
    match t {
        HostKeyType::Rsa => "ssh-rsa",
        HostKeyType::Dss => "ssh-dss",
        HostKeyType::Ecdsa256 => "ecdsa-sha2-nistp256",
        HostKeyType::Ecdsa384 => "ecdsa-sha2-nistp384",
        HostKeyType::Ecdsa521 => "ecdsa-sha2-nistp521",
        HostKeyType::Ed25519 => "ssh-ed25519",
        HostKeyType::Unknown => "unknown",
    }
}

fn short_type(t: HostKeyType) -> &'static str {
    match t {
        HostKeyType::Rsa => "RSA",
        HostKeyType::Dss => "DSA",
        HostKeyType::Ecdsa256 | HostKeyType::Ecdsa384 | HostKeyType::Ecdsa521 => "ECDSA",
        HostKeyType::Ed25519 => "ED25519",
        HostKeyType::Unknown => "UNKNOWN",
    }
}

impl SshTransport {
    /// Connect, verify the host key, authenticate.
    pub fn connect(
        t: &SshTarget,
        accept_new: bool,
        timeout: Duration,
        io_timeout: Duration,
    ) -> Result<SshTransport, SyncError> {
        let mut session = Session::new().map_err(|e| SyncError::ssh(t, "cannot start ssh", e))?;
        let fd: RawFd;
        let proxy = if let Some(jump) = t.proxy_jump.first() {
            let (mine, theirs) = UnixStream::pair().map_err(|e| SyncError::Connect {
                host: t.host.clone(),
                port: t.port,
                message: e.to_string(),
            })?;
            let mut ssh = Command::new("ssh");
            if let Some(cfg) = std::env::var_os("LAB_SSH_CONFIG") {
                ssh.arg("-F").arg(cfg);
            }
            let child = ssh
                .args(["-o", "BatchMode=yes", "-W"])
                .arg(format!("{}:{}", t.host, t.port))
                .args(if t.proxy_jump.len() > 1 {
                    vec!["-J".to_string(), t.proxy_jump[1..].join(",")]
                } else {
                    vec![]
                })
                .arg(jump)
                .stdin(Stdio::from(std::os::fd::OwnedFd::from(
                    theirs
                        .try_clone()
                        .map_err(|e| SyncError::Local(e.to_string()))?,
                )))
                .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| SyncError::Connect {
                    host: t.host.clone(),
                    port: t.port,
                    message: format!("cannot run `ssh -W` for ProxyJump {jump}: {e}"),
                })?;
            fd = mine.as_raw_fd();
            session.set_tcp_stream(mine);
            Some(child)
        } else {
            let addr = (t.host.as_str(), t.port)
                .to_socket_addrs()
                .map_err(|e| SyncError::Connect {
                    host: t.host.clone(),
                    port: t.port,
                    message: e.to_string(),
                })?
                .next()
                .ok_or_else(|| SyncError::Connect {
                    host: t.host.clone(),
                    port: t.port,
                    message: "no address".into(),
                })?;
            let tcp =
                TcpStream::connect_timeout(&addr, timeout).map_err(|e| SyncError::Connect {
                    host: t.host.clone(),
                    port: t.port,
                    message: e.to_string(),
                })?;
            let _ = tcp.set_nodelay(true);
            fd = tcp.as_raw_fd();
            session.set_tcp_stream(tcp);
            None
        };
        session.set_timeout(timeout.as_millis() as u32);
        if let Err(e) = session.handshake() {
            let mut msg = e.message().to_string();
            if let Some(mut p) = proxy {
                let _ = p.kill();
                let mut err = String::new();
                if let Some(mut s) = p.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                let _ = p.wait();
                if !err.trim().is_empty() {
                    msg = format!("{msg} (ssh -W: {})", err.trim());
                }
            }
            return Err(SyncError::Connect {
                host: t.host.clone(),
                port: t.port,
                message: msg,
            });
        }
        let me = SshTransport {
            session,
            proxy,
            fd,
            io_timeout,
            commands: 0,
            sent: 0,
            target: t.clone(),
            timeout,
        };
        me.verify_host_key(t, accept_new)?;
        me.authenticate(t)?;
        // After login, a blocking read or write that makes no progress for
        // this long means the connection is dead (a unit restart that takes
        // long still sends nothing back until it is done, hence generous).
        me.session.set_timeout(io_timeout.as_millis() as u32);
        Ok(me)
    }

    fn verify_host_key(&self, t: &SshTarget, accept_new: bool) -> Result<(), SyncError> {
        let (key, ktype) = self
            .session
            .host_key()
            .ok_or_else(|| SyncError::ssh_msg(t, "the server sent no host key"))?;
        let fingerprint = format!(
            "{} SHA256:{}",
            short_type(ktype),
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(
                self.session
                    .host_key_hash(HashType::Sha256)
                    .unwrap_or_default()
            )
        );
        let mut kh = self
            .session
            .known_hosts()
            .map_err(|e| SyncError::ssh(t, "known_hosts", e))?;
        if t.known_hosts.exists() {
            kh.read_file(&t.known_hosts, KnownHostFileKind::OpenSSH)
                .map_err(|e| SyncError::KnownHosts {
                    path: t.known_hosts.display().to_string(),
                    message: e.message().to_string(),
                })?;
        }
        match kh.check_port(&t.host, t.port, key) {
            CheckResult::Match => Ok(()),
            CheckResult::Mismatch => Err(SyncError::HostKeyChanged {
                host: t.known_hosts_name(),
                fingerprint,
                known_hosts: t.known_hosts.display().to_string(),
            }),
            CheckResult::NotFound | CheckResult::Failure if accept_new => {
                let line = format!(
                    "{} {} {}\n",
                    t.known_hosts_name(),
                    key_type_name(ktype),
                    base64::engine::general_purpose::STANDARD.encode(key)
                );
                if let Some(dir) = t.known_hosts.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&t.known_hosts)
                    .map_err(|e| SyncError::KnownHosts {
                        path: t.known_hosts.display().to_string(),
                        message: e.to_string(),
                    })?;
                f.write_all(line.as_bytes())
                    .map_err(|e| SyncError::KnownHosts {
                        path: t.known_hosts.display().to_string(),
                        message: e.to_string(),
                    })?;
                Ok(())
            }
            CheckResult::NotFound | CheckResult::Failure => Err(SyncError::HostKeyUnknown {
                host: t.known_hosts_name(),
                fingerprint,
                known_hosts: t.known_hosts.display().to_string(),
            }),
        }
    }

    fn authenticate(&self, t: &SshTarget) -> Result<(), SyncError> {
        let mut tried = Vec::new();
        for id in &t.identities {
            if id.exists() {
                tried.push(id.display().to_string());
                if self
                    .session
                    .userauth_pubkey_file(&t.user, None, id, None)
                    .is_ok()
                {
                    return Ok(());
                }
            }
        }
        if std::env::var_os("SSH_AUTH_SOCK").is_some() {
            tried.push("ssh-agent".into());
            if self.session.userauth_agent(&t.user).is_ok() && self.session.authenticated() {
                return Ok(());
            }
        }
        for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
            let id = home().join(".ssh").join(name);
            if id.exists() && !t.identities.contains(&id) {
                tried.push(id.display().to_string());
                if self
                    .session
                    .userauth_pubkey_file(&t.user, None, &id, None)
                    .is_ok()
                {
                    return Ok(());
                }
            }
        }
        Err(SyncError::Auth {
            user: t.user.clone(),
            host: t.known_hosts_name(),
            tried,
        })
    }
}

/// A command's stdin on an ssh2 channel, with the session in non-blocking
/// mode. libssh2's blocking write waits for window space until the I/O
/// timeout, and a command that exits without reading all of its input (the
/// executor refusing a stale plan, say) grants none: so while it waits for
/// space, this reads what the command prints (kept for the caller) and
/// gives up on the input when the command's output has ended.
struct ChannelInput<'a> {
    ch: &'a mut ssh2::Channel,
    session: &'a Session,
    fd: RawFd,
    timeout: Duration,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl ChannelInput<'_> {
    /// Read what is there of stdout and stderr; `true` when stdout ended.
    fn drain(&mut self) -> std::io::Result<bool> {
        let mut buf = [0u8; 16 * 1024];
        let mut ended = false;
        loop {
            match self.ch.read(&mut buf) {
                Ok(0) => {
                    ended = self.ch.eof();
                    break;
                }
                Ok(n) => self.stdout.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        loop {
            match self.ch.stderr().read(&mut buf) {
                Ok(0) => break,
                Ok(n) => self.stderr.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(ended)
    }

    /// Wait until the socket is ready the way libssh2 needs it, at most `t`.
    fn wait(&self, t: Duration) {
        let dirs = self.session.block_directions();
        let mut events = 0;
        if matches!(
            dirs,
            ssh2::BlockDirections::Inbound | ssh2::BlockDirections::Both
        ) {
            events |= libc::POLLIN;
        }
        if matches!(
            dirs,
            ssh2::BlockDirections::Outbound | ssh2::BlockDirections::Both
        ) {
            events |= libc::POLLOUT;
        }
        if events == 0 {
            events = libc::POLLIN;
        }
        let mut p = libc::pollfd {
            fd: self.fd,
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        unsafe { libc::poll(&mut p, 1, t.as_millis().min(i32::MAX as u128) as i32) };
    }
}

impl ChannelInput<'_> {
    /// One non-blocking write: `None` when the channel has no room.
    fn try_write(&mut self, buf: &[u8]) -> std::io::Result<Option<usize>> {
        match self.ch.write(buf) {
            Ok(n) if n > 0 || buf.is_empty() => Ok(Some(n)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl Write for ChannelInput<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let since = Instant::now();
        loop {
            if let Some(n) = self.try_write(buf)? {
                return Ok(n);
            }
            if self.drain()? {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::BrokenPipe,
                    "the command stopped reading its input",
                ));
            }
            // Reading may have taken in the window adjustment that was
            // awaited: then the socket has nothing more to say until this
            // side sends, and waiting on it would only time out.
            if let Some(n) = self.try_write(buf)? {
                return Ok(n);
            }
            let left = self.timeout.saturating_sub(since.elapsed());
            if left.is_zero() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the connection made no progress",
                ));
            }
            self.wait(left.min(Duration::from_millis(200)));
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Nothing waits on this side: a write hands its bytes to libssh2,
        // which sends them. (`Channel::flush` is libssh2's
        // `channel_flush`, which throws away unread *incoming* data: the
        // command's output.)
        Ok(())
    }
}

impl Transport for SshTransport {
    fn run(&mut self, command: &str, input: Input<'_>) -> Result<Output, SyncError> {
        self.commands += 1;
        let err = |e: ssh2::Error| SyncError::Channel(e.message().to_string());
        let mut ch = self.session.channel_session().map_err(err)?;
        ch.exec(command).map_err(err)?;
        self.session.set_blocking(false);
        let mut stdin = ChannelInput {
            ch: &mut ch,
            session: &self.session,
            fd: self.fd,
            timeout: self.io_timeout,
            stdout: Vec::new(),
            stderr: Vec::new(),
        };
        let written = {
            // Buffered: a tar stream is written a 512-byte header at a time,
            // and every write into a channel is an SSH packet of its own
            // (3,000 packets for 1k files; 0.6 s against 0.3 s buffered).
            let mut w = std::io::BufWriter::with_capacity(
                256 * 1024,
                Counting {
                    inner: &mut stdin,
                    count: &mut self.sent,
                    broken: false,
                },
            );
            input(&mut w).and_then(|()| w.flush())
        };
        let (mut stdout, mut stderr) = (stdin.stdout, stdin.stderr);
        self.session.set_blocking(true);
        written.map_err(|e| SyncError::Channel(e.to_string()))?;
        let _ = ch.send_eof();
        ch.read_to_end(&mut stdout)
            .map_err(|e| SyncError::Channel(e.to_string()))?;
        let _ = ch.stderr().read_to_end(&mut stderr);
        ch.wait_close().map_err(err)?;
        let status = ch.exit_status().map_err(err)?;
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }

    fn commands(&self) -> u64 {
        self.commands
    }

    fn sent(&self) -> u64 {
        self.sent
    }

    fn reconnect(&mut self) -> Result<(), SyncError> {
        let mut fresh = SshTransport::connect(&self.target, false, self.timeout, self.io_timeout)?;
        fresh.commands = self.commands;
        fresh.sent = self.sent;
        // (the old session and its proxy go with the swapped-out value)
        std::mem::swap(self, &mut fresh);
        Ok(())
    }
}
