//! One SSH connection per machine (libssh2 through the `ssh2` crate): where
//! to connect (lab.toml, then the OpenSSH client's own resolution, see
//! [`crate::openssh`]), proxies (`ProxyJump`, `ProxyCommand`), host key
//! verification against the known_hosts files, authentication (identity
//! files, then the agent, then the default keys), and running commands
//! over the connection.

use crate::transport::{Counting, Input, Output, Transport};
use crate::SyncError;
use base64::Engine as _;
use ssh2::{CheckResult, HashType, HostKeyType, KnownHostFileKind, Session};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the project says about reaching one machine over SSH, before
/// `~/.ssh/config` is asked (lab-deploy makes it from lab.toml). `None`:
/// not set, so the ssh config or the default decides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SshSpec {
    /// The host as written (also `%n`, and the `Host` that the ssh config
    /// is asked about).
    pub host: String,
    pub port: Option<u16>,
    pub user: Option<String>,
    /// Identity files the project names, tried first, in order (the
    /// machine's own, then the project-wide one).
    pub identities: Vec<PathBuf>,
    /// The known_hosts file to use instead of the user's.
    pub known_hosts: Option<PathBuf>,
    /// Every command runs through `sudo -n`.
    pub sudo: bool,
    /// Where lab keeps the control sockets of connections shared across
    /// its runs (see [`crate::mux`]); `None`: nothing is shared.
    pub control_dir: Option<PathBuf>,
}

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
    /// `ProxyCommand`, tokens not yet expanded (`%h`, `%p`, `%r`, `%n`).
    pub proxy_command: Option<String>,
    /// The known_hosts file new keys are written to (and errors name).
    pub known_hosts: PathBuf,
    /// Further known_hosts files that are read (`UserKnownHostsFile`'s
    /// others, `GlobalKnownHostsFile`).
    pub known_hosts_also: Vec<PathBuf>,
    /// `HostKeyAlias`: the name the host key is looked up and saved under.
    pub host_key_alias: Option<String>,
    /// `StrictHostKeyChecking accept-new` (or `no`): unknown keys are added.
    pub accept_new: bool,
    /// `IdentitiesOnly yes`: only the identity files, never the agent's keys.
    pub identities_only: bool,
    /// `IdentityAgent`: `None` for `$SSH_AUTH_SOCK`, `Some("none")` for no
    /// agent, else the agent's socket.
    pub identity_agent: Option<PathBuf>,
    /// `ConnectTimeout`.
    pub connect_timeout: Option<Duration>,
    /// `ServerAliveInterval` and `ServerAliveCountMax`: a server silent for
    /// interval × (count + 1) is dead (TCP keepalive probes on the socket;
    /// through a proxy, the proxy's ssh applies them).
    pub server_alive: Option<(u32, u32)>,
    /// `StrictHostKeyChecking no` was written: unknown keys are added, and
    /// the user is told (a changed key is still refused).
    pub strict_off: bool,
    /// `Host` alias as written in lab.toml (`%n`).
    pub alias: String,
    /// A directive lab cannot honour (`path:line` or the directive, and
    /// why): the machine is refused rather than reached another way.
    pub refused: Option<(String, String)>,
    /// Every command runs through `sudo -n` (`become = "sudo"`).
    pub sudo: bool,
    /// The user's own `ControlPath` (`~/.ssh/config`, expanded by `ssh
    /// -G`): a shared connection uses it instead of lab's.
    pub control_path: Option<PathBuf>,
}

impl SshTarget {
    /// A target with OpenSSH's defaults for everything but these.
    pub fn new(host: &str, port: u16, user: &str, known_hosts: PathBuf) -> SshTarget {
        SshTarget {
            host: host.to_string(),
            port,
            user: user.to_string(),
            identities: Vec::new(),
            proxy_jump: Vec::new(),
            proxy_command: None,
            known_hosts,
            known_hosts_also: Vec::new(),
            host_key_alias: None,
            accept_new: false,
            identities_only: false,
            identity_agent: None,
            connect_timeout: None,
            server_alive: None,
            strict_off: false,
            alias: host.to_string(),
            refused: None,
            sudo: false,
            control_path: None,
        }
    }
}

pub(crate) fn home() -> PathBuf {
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

pub(crate) fn expand(p: &Path) -> PathBuf {
    match p.to_str().and_then(|s| s.strip_prefix("~/")) {
        Some(rest) => home().join(rest),
        None => p.to_path_buf(),
    }
}

impl SshTarget {
    /// Values set in lab.toml win; then `~/.ssh/config` for the machine's
    /// host; then the defaults (port 22, user root).
    pub fn resolve(spec: &SshSpec, config: Option<&ssh2_config::SshConfig>) -> SshTarget {
        let path = std::env::var_os("LAB_SSH_CONFIG").map(PathBuf::from);
        let t = match SshTarget::resolve_from(spec, path.as_deref()) {
            Some(t) => t,
            None => SshTarget::resolve_parsed(spec, config),
        };
        SshTarget {
            sudo: spec.sudo,
            ..t
        }
    }

    /// As OpenSSH's client resolves it with config file `config` (`None`:
    /// `~/.ssh/config` and `/etc/ssh/ssh_config`); `None` without the
    /// OpenSSH client.
    pub fn resolve_from(spec: &SshSpec, config: Option<&Path>) -> Option<SshTarget> {
        let g = crate::openssh::effective(&spec.host, spec.port, spec.user.as_deref(), config)?;
        Some(crate::openssh::target(spec, &g, config))
    }

    /// Without the OpenSSH client: the settings of `~/.ssh/config` as the
    /// `ssh2_config` parser reads them (`HostName`, `User`, `Port`,
    /// `IdentityFile`, `ProxyJump`).
    fn resolve_parsed(spec: &SshSpec, config: Option<&ssh2_config::SshConfig>) -> SshTarget {
        let params = config.map(|c| c.query(&spec.host));
        let p = params.as_ref();
        let host = p
            .and_then(|p| p.host_name.clone())
            .unwrap_or_else(|| spec.host.clone());
        let port = spec.port.or_else(|| p.and_then(|p| p.port)).unwrap_or(22);
        let user = spec
            .user
            .clone()
            .or_else(|| p.and_then(|p| p.user.clone()))
            .unwrap_or_else(|| "root".into());
        let mut identities = Vec::new();
        identities.extend(spec.identities.iter().map(|p| expand(p)));
        if let Some(files) = p.and_then(|p| p.identity_file.clone()) {
            identities.extend(files.iter().map(|p| expand(p)));
        }
        let proxy_jump = p
            .and_then(|p| p.proxy_jump.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|j| !j.eq_ignore_ascii_case("none"))
            .collect();
        let known_hosts = spec
            .known_hosts
            .clone()
            .unwrap_or_else(|| home().join(".ssh/known_hosts"));
        SshTarget {
            identities,
            proxy_jump,
            alias: spec.host.clone(),
            ..SshTarget::new(&host, port, &user, known_hosts)
        }
    }

    /// `host` or `[host]:port` (or the `HostKeyAlias`), as known_hosts
    /// writes it.
    pub fn known_hosts_name(&self) -> String {
        if let Some(a) = &self.host_key_alias {
            a.clone()
        } else if self.port == 22 {
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
    /// Commands run through `sudo -n` (user and host, for errors).
    sudo: Option<(String, String)>,
    /// The connection's socket (for waiting on it without blocking in
    /// libssh2), and how long a command's input may make no progress.
    fd: RawFd,
    io_timeout: Duration,
    commands: u64,
    command_bytes: u64,
    sent: u64,
    warnings: Vec<String>,
    /// How it connected, to connect again after a lost connection (the
    /// host key is known by then: no `accept_new`).
    target: SshTarget,
    timeout: Duration,
}

impl Drop for SshTransport {
    fn drop(&mut self) {
        let _ = self.session.disconnect(None, "lab done", None);
        if let Some(mut p) = self.proxy.take() {
            end_proxy(&mut p);
        }
    }
}

/// End a proxy command and what it started: it runs in a process group
/// of its own (`sh -c` may leave its `ssh -W` as a child, which would
/// outlive it, holding its stderr open, until its own connect times out).
fn end_proxy(p: &mut Child) {
    // SAFETY: kill(2) of the process group this transport started (its
    // id is the proxy's PID, see `process_group(0)` where it is spawned).
    unsafe {
        libc::kill(-(p.id() as libc::pid_t), libc::SIGKILL);
    }
    let _ = p.kill();
    let _ = p.wait();
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

/// What to do with a host key that no known_hosts file has.
pub enum HostKeyPolicy<'a> {
    /// Refuse it.
    Known,
    /// Add it to the known_hosts file (`--accept-new`).
    AcceptNew,
    /// Add it when this answers yes to its fingerprint (`ED25519 SHA256:…`).
    Confirm(&'a dyn Fn(&str) -> bool),
    /// Add it when its fingerprint is this one (`SHA256:…`).
    Expect(&'a str),
}

/// How to log in.
pub enum Login<'a> {
    /// Identity files, the agent, the default keys.
    Keys,
    /// A password (password or keyboard-interactive authentication).
    Password(&'a str),
}

impl SshTransport {
    /// Connect, verify the host key, authenticate.
    pub fn connect(
        t: &SshTarget,
        accept_new: bool,
        timeout: Duration,
        io_timeout: Duration,
    ) -> Result<SshTransport, SyncError> {
        let policy = if accept_new {
            HostKeyPolicy::AcceptNew
        } else {
            HostKeyPolicy::Known
        };
        SshTransport::connect_as(t, &policy, &Login::Keys, timeout, io_timeout)
    }

    /// [`SshTransport::connect`] with a host key policy and a way to log in.
    pub fn connect_as(
        t: &SshTarget,
        policy: &HostKeyPolicy<'_>,
        login: &Login<'_>,
        timeout: Duration,
        io_timeout: Duration,
    ) -> Result<SshTransport, SyncError> {
        if let Some((place, message)) = &t.refused {
            return Err(SyncError::SshConfig {
                path: place.clone(),
                message: message.clone(),
            });
        }
        let policy = match policy {
            HostKeyPolicy::Known if t.accept_new => &HostKeyPolicy::AcceptNew,
            p => p,
        };
        let timeout = t.connect_timeout.map_or(timeout, |c| c.min(timeout));
        let mut session = Session::new().map_err(|e| SyncError::ssh(t, "cannot start ssh", e))?;
        let fd: RawFd;
        // Values from a config file reach `ssh`'s command line: one that
        // starts with `-` would be taken as an option (`-oProxyCommand=...`).
        for (what, v) in
            std::iter::once(("host", &t.host)).chain(t.proxy_jump.iter().map(|j| ("ProxyJump", j)))
        {
            if v.starts_with('-')
                || v.is_empty()
                || v.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(SyncError::Connect {
                    host: t.host.clone(),
                    port: t.port,
                    message: format!(
                        "refusing {what} `{}`: it is empty, starts with `-` or holds blanks, so ssh would read it as something else",
                        v.escape_debug()
                    ),
                });
            }
        }
        let proxy_command = t.proxy_command.as_ref().map(|c| {
            let mut sh = Command::new("sh");
            sh.arg("-c").arg(proxy_tokens(c, t));
            (sh, format!("ProxyCommand {c}"))
        });
        let proxy_jump = t.proxy_jump.first().map(|jump| {
            let mut ssh = Command::new("ssh");
            if let Some(cfg) = std::env::var_os("LAB_SSH_CONFIG") {
                ssh.arg("-F").arg(cfg);
            }
            ssh.args(["-o", "BatchMode=yes", "-W"])
                .arg(format!("{}:{}", t.host, t.port))
                .args(if t.proxy_jump.len() > 1 {
                    vec!["-J".to_string(), t.proxy_jump[1..].join(",")]
                } else {
                    vec![]
                })
                .arg("--")
                .arg(jump);
            (ssh, format!("ProxyJump {jump}"))
        });
        // OpenSSH: ProxyJump and ProxyCommand exclude each other, the first
        // one given wins; `ssh -G` has resolved that already.
        let proxy = if let Some((mut cmd, what)) = proxy_command.or(proxy_jump) {
            let (mine, theirs) = UnixStream::pair().map_err(|e| SyncError::Connect {
                host: t.host.clone(),
                port: t.port,
                message: e.to_string(),
            })?;
            let child = std::os::unix::process::CommandExt::process_group(&mut cmd, 0)
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
                    message: format!("cannot run {what}: {e}"),
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
            if let Some((interval, count)) = t.server_alive {
                set_tcp_keepalive(&tcp, interval, count);
            }
            fd = tcp.as_raw_fd();
            session.set_tcp_stream(tcp);
            None
        };
        session.set_timeout(timeout.as_millis() as u32);
        if let Err(e) = session.handshake() {
            let mut msg = e.message().to_string();
            if let Some(mut p) = proxy {
                end_proxy(&mut p);
                let mut err = String::new();
                if let Some(mut s) = p.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                if !err.trim().is_empty() {
                    msg = format!("{msg} (proxy: {})", err.trim());
                }
            }
            return Err(SyncError::Connect {
                host: t.host.clone(),
                port: t.port,
                message: msg,
            });
        }
        let me = SshTransport {
            sudo: t.sudo.then(|| (t.user.clone(), t.known_hosts_name())),
            session,
            proxy,
            fd,
            io_timeout,
            commands: 0,
            command_bytes: 0,
            sent: 0,
            warnings: Vec::new(),
            target: t.clone(),
            timeout,
        };
        let mut me = me;
        if me.verify_host_key(t, policy)? && t.strict_off {
            me.warnings.push(format!(
                "`StrictHostKeyChecking no` in the ssh config: the unknown host key of `{}` was \
                 added to `{}` without asking (a changed key is still refused)",
                t.known_hosts_name(),
                t.known_hosts.display()
            ));
        }
        match login {
            Login::Keys => me.authenticate(t)?,
            Login::Password(p) => me.authenticate_password(t, p)?,
        }
        // After login, a blocking read or write that makes no progress for
        // this long means the connection is dead (a unit restart that takes
        // long still sends nothing back until it is done, hence generous).
        me.session.set_timeout(io_timeout.as_millis() as u32);
        Ok(me)
    }

    /// The host key this connection verified.
    pub(crate) fn host_key_blob(&self) -> Option<Vec<u8>> {
        self.session.host_key().map(|(k, _)| k.to_vec())
    }

    /// Check the host key; `true` when it was new and has been recorded.
    fn verify_host_key(
        &self,
        t: &SshTarget,
        policy: &HostKeyPolicy<'_>,
    ) -> Result<bool, SyncError> {
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
        let (found, cert_authority) = known_hosts_check(&self.session, t, key, &fingerprint)?;
        self.decide(t, policy, found, cert_authority, key, ktype, fingerprint)
    }

    /// What to do with a host key that known_hosts says `found` about.
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        t: &SshTarget,
        policy: &HostKeyPolicy<'_>,
        found: CheckResult,
        cert_authority: Option<String>,
        key: &[u8],
        ktype: HostKeyType,
        fingerprint: String,
    ) -> Result<bool, SyncError> {
        match found {
            CheckResult::Match => Ok(false),
            CheckResult::Mismatch => Err(SyncError::HostKeyChanged {
                host: t.known_hosts_name(),
                fingerprint,
                known_hosts: t.known_hosts.display().to_string(),
            }),
            CheckResult::NotFound | CheckResult::Failure
                if matches!(policy, HostKeyPolicy::Expect(_)) =>
            {
                let HostKeyPolicy::Expect(want) = policy else {
                    unreachable!()
                };
                let got = fingerprint.split(' ').next_back().unwrap_or_default();
                let want = want.trim();
                if got == want || got.strip_prefix("SHA256:") == Some(want) {
                    self.record_host_key(t, key, ktype).map(|()| true)
                } else {
                    Err(SyncError::HostKeyUnexpected {
                        host: t.known_hosts_name(),
                        fingerprint,
                        expected: want.to_string(),
                    })
                }
            }
            CheckResult::NotFound | CheckResult::Failure
                if matches!(policy, HostKeyPolicy::Confirm(_)) =>
            {
                let HostKeyPolicy::Confirm(ask) = policy else {
                    unreachable!()
                };
                if ask(&fingerprint) {
                    self.record_host_key(t, key, ktype).map(|()| true)
                } else {
                    Err(SyncError::HostKeyUnknown {
                        host: t.known_hosts_name(),
                        fingerprint,
                        known_hosts: t.known_hosts.display().to_string(),
                    })
                }
            }
            CheckResult::NotFound | CheckResult::Failure
                if matches!(policy, HostKeyPolicy::AcceptNew) =>
            {
                self.record_host_key(t, key, ktype).map(|()| true)
            }
            CheckResult::NotFound | CheckResult::Failure if cert_authority.is_some() => {
                Err(SyncError::SshConfig {
                    path: cert_authority.unwrap_or_default(),
                    message: format!(
                        "`{}` is vouched for by a @cert-authority line; lab cannot check host \
                         certificates, so it does not trust the host ({fingerprint}) another way",
                        t.known_hosts_name()
                    ),
                })
            }
            CheckResult::NotFound | CheckResult::Failure => Err(SyncError::HostKeyUnknown {
                host: t.known_hosts_name(),
                fingerprint,
                known_hosts: t.known_hosts.display().to_string(),
            }),
        }
    }

    /// Append the host key to the known_hosts file lab writes to.
    fn record_host_key(
        &self,
        t: &SshTarget,
        key: &[u8],
        ktype: HostKeyType,
    ) -> Result<(), SyncError> {
        let line = format!(
            "{} {} {}\n",
            t.known_hosts_name(),
            key_type_name(ktype),
            base64::engine::general_purpose::STANDARD.encode(key)
        );
        if let Some(dir) = t.known_hosts.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let kh_err = |e: std::io::Error| SyncError::KnownHosts {
            path: t.known_hosts.display().to_string(),
            message: e.to_string(),
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&t.known_hosts)
            .map_err(kh_err)?;
        f.write_all(line.as_bytes()).map_err(kh_err)
    }

    /// Log in with a password: `password` authentication, else
    /// `keyboard-interactive` answering the password to its prompts.
    fn authenticate_password(&self, t: &SshTarget, password: &str) -> Result<(), SyncError> {
        struct Answer<'a>(&'a str);
        impl ssh2::KeyboardInteractivePrompt for Answer<'_> {
            fn prompt<'b>(
                &mut self,
                _user: &str,
                _instructions: &str,
                prompts: &[ssh2::Prompt<'b>],
            ) -> Vec<String> {
                prompts.iter().map(|_| self.0.to_string()).collect()
            }
        }
        let methods = self
            .session
            .auth_methods(&t.user)
            .unwrap_or_default()
            .to_string();
        if methods.split(',').any(|m| m == "password")
            && self.session.userauth_password(&t.user, password).is_ok()
        {
            return Ok(());
        }
        if methods.split(',').any(|m| m == "keyboard-interactive")
            && self
                .session
                .userauth_keyboard_interactive(&t.user, &mut Answer(password))
                .is_ok()
            && self.session.authenticated()
        {
            return Ok(());
        }
        Err(SyncError::Auth {
            user: t.user.clone(),
            host: t.known_hosts_name(),
            tried: vec![format!("a password (the server offers: {methods})")],
        })
    }

    fn authenticate(&self, t: &SshTarget) -> Result<(), SyncError> {
        let mut tried = Vec::new();
        let mut protected = Vec::new();
        let try_file = |id: &Path, tried: &mut Vec<String>, protected: &mut Vec<PathBuf>| {
            if !id.exists() {
                return false;
            }
            if key_is_encrypted(id) {
                protected.push(id.to_path_buf());
                return false;
            }
            tried.push(id.display().to_string());
            self.session
                .userauth_pubkey_file(&t.user, None, id, None)
                .is_ok()
        };
        for id in &t.identities {
            if try_file(id, &mut tried, &mut protected) {
                return Ok(());
            }
        }
        let agent = match &t.identity_agent {
            _ if t.identities_only => None,
            Some(p) if p.as_os_str() == "none" => None,
            Some(p) => Some(Some(p.clone())),
            None => std::env::var_os("SSH_AUTH_SOCK").map(|_| None),
        };
        if let Some(socket) = agent {
            tried.push("ssh-agent".into());
            if self.agent_auth(&t.user, socket.as_deref()).is_ok() && self.session.authenticated() {
                return Ok(());
            }
        }
        if !t.identities_only {
            for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
                let id = home().join(".ssh").join(name);
                if !t.identities.contains(&id) && try_file(&id, &mut tried, &mut protected) {
                    return Ok(());
                }
            }
        }
        // Keys protected by a passphrase last: the agent may hold them.
        let mut unasked = Vec::new();
        for id in protected {
            match ask_passphrase(&id) {
                Some(pass) => {
                    tried.push(format!("{} (with its passphrase)", id.display()));
                    if self
                        .session
                        .userauth_pubkey_file(&t.user, None, &id, Some(&pass))
                        .is_ok()
                    {
                        return Ok(());
                    }
                }
                None => unasked.push(id.display().to_string()),
            }
        }
        if !unasked.is_empty() {
            return Err(SyncError::Passphrase {
                user: t.user.clone(),
                host: t.known_hosts_name(),
                keys: unasked,
            });
        }
        Err(SyncError::Auth {
            user: t.user.clone(),
            host: t.known_hosts_name(),
            tried,
        })
    }
}

impl SshTransport {
    /// Try each key of the agent at `socket` (`$SSH_AUTH_SOCK` when `None`).
    fn agent_auth(&self, user: &str, socket: Option<&Path>) -> Result<(), ssh2::Error> {
        let mut agent = self.session.agent()?;
        if let Some(s) = socket {
            agent.set_identity_path(s)?;
        }
        agent.connect()?;
        agent.list_identities()?;
        for id in agent.identities()? {
            if agent.userauth(user, &id).is_ok() {
                let _ = agent.disconnect();
                return Ok(());
            }
        }
        let _ = agent.disconnect();
        Err(ssh2::Error::from_errno(ssh2::ErrorCode::Session(-18)))
    }
}

/// Asks for the passphrase of a protected private key (the CLI asks on the
/// terminal, without echo); `None` when it cannot ask.
pub trait PassphrasePrompt: Send + Sync {
    fn passphrase(&self, key: &Path) -> Option<String>;
}

static PROMPT: std::sync::OnceLock<Box<dyn PassphrasePrompt>> = std::sync::OnceLock::new();
/// Passphrases given in this run, by key (one question per key, however
/// many machines use it); asked one at a time.
static GIVEN: std::sync::Mutex<Vec<(PathBuf, String)>> = std::sync::Mutex::new(Vec::new());

/// Install the prompt for protected keys (once per process).
pub fn set_passphrase_prompt(p: Box<dyn PassphrasePrompt>) {
    let _ = PROMPT.set(p);
}

fn ask_passphrase(key: &Path) -> Option<String> {
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = given.iter().find(|(k, _)| k == key) {
        return Some(p.clone());
    }
    let p = PROMPT.get()?.passphrase(key)?;
    given.push((key.to_path_buf(), p.clone()));
    Some(p)
}

/// Is the private key at `path` protected by a passphrase? (OpenSSH's own
/// format names its cipher; PEM keys say `ENCRYPTED`.)
pub fn key_is_encrypted(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    if text.contains("ENCRYPTED") {
        return true;
    }
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(body.trim()) else {
        return false;
    };
    let magic = b"openssh-key-v1\0";
    if !bytes.starts_with(magic) || bytes.len() < magic.len() + 4 {
        return false;
    }
    let at = magic.len();
    let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
    bytes
        .get(at + 4..at + 4 + len)
        .is_some_and(|cipher| cipher != b"none")
}

/// Probe a silent peer every `interval` seconds; after `count` probes
/// without an answer the socket fails (as `ServerAliveInterval` and
/// `ServerAliveCountMax` end an OpenSSH connection).
fn set_tcp_keepalive(tcp: &TcpStream, interval: u32, count: u32) {
    let fd = tcp.as_raw_fd();
    let set = |level, name, value: libc::c_int| {
        // SAFETY: a valid socket and an int-sized option value.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    let interval = interval.clamp(1, i32::MAX as u32) as libc::c_int;
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, interval);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, interval);
    set(
        libc::IPPROTO_TCP,
        libc::TCP_KEEPCNT,
        count.clamp(1, 127) as libc::c_int,
    );
}

impl SshTransport {
    /// The socket's TCP keepalive (idle, interval, count), when it has one.
    pub fn tcp_keepalive(&self) -> Option<(i32, i32, i32)> {
        let get = |level, name| {
            let mut v: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: a valid socket and an int-sized buffer.
            let r = unsafe {
                libc::getsockopt(
                    self.fd,
                    level,
                    name,
                    (&mut v as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            (r == 0).then_some(v)
        };
        if get(libc::SOL_SOCKET, libc::SO_KEEPALIVE)? == 0 {
            return None;
        }
        Some((
            get(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE)?,
            get(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL)?,
            get(libc::IPPROTO_TCP, libc::TCP_KEEPCNT)?,
        ))
    }
}

/// `ProxyCommand`'s tokens: `%h` host, `%p` port, `%r` user, `%n` the
/// alias as written, `%%`.
fn proxy_tokens(cmd: &str, t: &SshTarget) -> String {
    let port = t.port.to_string();
    crate::openssh::percent_tokens(
        cmd,
        &[
            ('h', &t.host),
            ('p', &port),
            ('r', &t.user),
            ('n', &t.alias),
        ],
    )
}

/// Does a known_hosts host field (`a,b,[c]:2222,*.example.org,!x`) name
/// this host? (Hashed names are not matched here; libssh2 reads those.)
fn host_pattern_matches(field: &str, host: &str, port: u16) -> bool {
    let name = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    let mut hit = false;
    for p in field.split(',') {
        let (neg, p) = match p.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, p),
        };
        if glob_match(p, &name) {
            if neg {
                return false;
            }
            hit = true;
        }
    }
    hit
}

fn glob_match(p: &str, s: &str) -> bool {
    match (p.chars().next(), s.chars().next()) {
        (None, None) => true,
        (Some('*'), _) => {
            glob_match(&p[1..], s)
                || (!s.is_empty() && glob_match(p, &s[s.chars().next().unwrap().len_utf8()..]))
        }
        (Some('?'), Some(c)) => glob_match(&p[1..], &s[c.len_utf8()..]),
        (Some(a), Some(b)) if a.eq_ignore_ascii_case(&b) => {
            glob_match(&p[a.len_utf8()..], &s[b.len_utf8()..])
        }
        _ => false,
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

/// The known_hosts files' answer about `key` for `t` (and the
/// `@cert-authority` line that vouches for the host, if any); a key
/// marked `@revoked` is an error.
fn known_hosts_check(
    session: &Session,
    t: &SshTarget,
    key: &[u8],
    fingerprint: &str,
) -> Result<(CheckResult, Option<String>), SyncError> {
    let mut kh = session
        .known_hosts()
        .map_err(|e| SyncError::ssh(t, "known_hosts", e))?;
    let (lookup, lookup_port) = match &t.host_key_alias {
        Some(a) => (a.as_str(), 22),
        None => (t.host.as_str(), t.port),
    };
    let mut cert_authority = None;
    for file in std::iter::once(&t.known_hosts).chain(&t.known_hosts_also) {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for (i, line) in text.lines().enumerate() {
            let l = line.trim_start();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            if let Some(rest) = l.strip_prefix('@') {
                let mut f = rest.split_whitespace();
                let (marker, hosts, blob) = (f.next(), f.next(), f.nth(1));
                let names = hosts.unwrap_or_default();
                if !host_pattern_matches(names, lookup, lookup_port) {
                    continue;
                }
                match marker {
                    Some("revoked")
                        if blob.is_some_and(|b| {
                            base64::engine::general_purpose::STANDARD
                                .decode(b)
                                .is_ok_and(|b| b == key)
                        }) =>
                    {
                        return Err(SyncError::HostKeyChanged {
                            host: t.known_hosts_name(),
                            fingerprint: format!("{fingerprint}, marked @revoked"),
                            known_hosts: format!("{}:{}", file.display(), i + 1),
                        });
                    }
                    Some("cert-authority") => {
                        cert_authority = Some(format!("{}:{}", file.display(), i + 1));
                    }
                    _ => {}
                }
                continue;
            }
            // a line libssh2 cannot read is skipped, as OpenSSH does
            let _ = kh.read_str(line, KnownHostFileKind::OpenSSH);
        }
    }
    Ok((kh.check_port(lookup, lookup_port, key), cert_authority))
}

/// Whether host key `key` (as a connection of lab's verified it) is still
/// the known key of `t`: a connection kept open across runs is used only
/// then (a key changed or revoked since is refused by lab's own
/// connection, with its message).
pub(crate) fn still_known(t: &SshTarget, key: &[u8]) -> bool {
    let Ok(session) = Session::new() else {
        return false;
    };
    matches!(
        known_hosts_check(&session, t, key, ""),
        Ok((CheckResult::Match, _))
    )
}

/// `command` as it runs on the machine: through `sudo -n` with
/// `become = "sudo"` (`-n` never asks: no one could answer).
pub(crate) fn with_sudo(t: &SshTarget, command: &str) -> String {
    if t.sudo {
        format!("exec sudo -n -- sh -c {}", lab_agent::quote(command))
    } else {
        command.to_string()
    }
}

/// sudo's own refusal, told from the command's failure by its words.
pub(crate) fn sudo_refusal(t: &SshTarget, status: i32, stderr: &[u8]) -> Result<(), SyncError> {
    if !t.sudo {
        return Ok(());
    }
    let said = String::from_utf8_lossy(stderr);
    let refused = status == 1
        && said.starts_with("sudo: ")
        && [
            "password is required",
            "not in the sudoers",
            "not allowed",
            "a terminal is required",
        ]
        .iter()
        .any(|w| said.contains(w));
    let missing = status == 127 && said.contains("sudo") && said.contains("not found");
    if refused || missing {
        return Err(SyncError::Sudo {
            user: t.user.clone(),
            host: t.known_hosts_name(),
            message: said.lines().next().unwrap_or_default().to_string(),
            missing,
        });
    }
    Ok(())
}

impl Transport for SshTransport {
    fn run(&mut self, command: &str, input: Input<'_>) -> Result<Output, SyncError> {
        self.commands += 1;
        self.command_bytes += command.len() as u64;
        let err = |e: ssh2::Error| SyncError::Channel(e.message().to_string());
        let mut ch = self.session.channel_session().map_err(err)?;
        // `become = "sudo"`: `-n` never asks (no one could answer); sudo's
        // own refusal is told from the command's failure by its words
        let command = with_sudo(&self.target, command);
        ch.exec(&command).map_err(err)?;
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
        if self.sudo.is_some() {
            sudo_refusal(&self.target, status, &stderr)?;
        }
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }

    fn run_streaming(
        &mut self,
        command: &str,
        out: &mut dyn FnMut(&[u8]),
    ) -> Result<(i32, Vec<u8>), SyncError> {
        self.commands += 1;
        self.command_bytes += command.len() as u64;
        let err = |e: ssh2::Error| SyncError::Channel(e.message().to_string());
        let mut ch = self.session.channel_session().map_err(err)?;
        let command = match &self.sudo {
            Some(_) => format!("exec sudo -n -- sh -c {}", lab_agent::quote(command)),
            None => command.to_string(),
        };
        ch.exec(&command).map_err(err)?;
        let _ = ch.send_eof();
        // (a follow may be silent for long: no I/O timeout while it runs)
        self.session.set_timeout(0);
        let mut buf = [0u8; 16 * 1024];
        let read = loop {
            match ch.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => out(&buf[..n]),
                Err(e) => break Err(e),
            }
        };
        self.session.set_timeout(self.io_timeout.as_millis() as u32);
        read.map_err(|e| SyncError::Channel(e.to_string()))?;
        let mut stderr = Vec::new();
        let _ = ch.stderr().read_to_end(&mut stderr);
        ch.wait_close().map_err(err)?;
        Ok((ch.exit_status().map_err(err)?, stderr))
    }

    fn commands(&self) -> u64 {
        self.commands
    }

    fn command_bytes(&self) -> u64 {
        self.command_bytes
    }

    fn sent(&self) -> u64 {
        self.sent
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
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
