use crate::error::{tail, Error, Result};
use crate::host::Host;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SSHD: &str = "/usr/sbin/sshd";
const START_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A real `sshd` on `127.0.0.1` for pure transport tests.
///
/// `start()` generates, in a fresh temp dir, an ed25519 host key, an
/// ed25519 client key, an `authorized_keys` with the client key, a
/// known_hosts file (`[127.0.0.1]:PORT ssh-ed25519 ...`) and an
/// `sshd_config` (`StrictModes no`, `PidFile none`, `UsePAM no`, key login
/// only, `Subsystem sftp internal-sftp`), then runs
/// `/usr/sbin/sshd -D -e -f CONFIG` on a random free port.
///
/// The login user is the user running the tests: `root` when the tests run
/// as root (as in CI; sshd then needs its privilege separation dir
/// `/run/sshd`, which is created). Dropping the fixture sends SIGTERM to the
/// sshd PID (SIGKILL after 5 s) and reaps it; sessions still open keep their
/// own per-connection sshd process until they close.
#[derive(Debug)]
pub struct SshdFixture {
    dir: tempfile::TempDir,
    child: Child,
    host: Host,
    host_public_key: String,
}

impl SshdFixture {
    /// Start sshd; ready to accept connections when this returns.
    pub fn start() -> Result<SshdFixture> {
        if !Path::new(SSHD).is_file() {
            return Err(Error::Sshd {
                reason: format!("{SSHD} not found (apt-get install openssh-server)"),
                log: String::new(),
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("lab-sshd-")
            .tempdir()
            .map_err(|source| Error::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        if crate::is_root() {
            let run_sshd = Path::new("/run/sshd");
            fs::create_dir_all(run_sshd).map_err(|source| Error::Io {
                path: run_sshd.into(),
                source,
            })?;
        }
        let d = dir.path();
        let host_key = d.join("ssh_host_ed25519_key");
        let identity = d.join("id_ed25519");
        keygen(&host_key, "lab-sshd-fixture-host")?;
        keygen(&identity, "lab-sshd-fixture-client")?;
        let authorized_keys = d.join("authorized_keys");
        let client_pub = read(&identity.with_extension("pub"))?;
        write(&authorized_keys, &client_pub)?;
        let host_public_key = public_key(&read(&host_key.with_extension("pub"))?);
        let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| "root".into());

        // The port is picked by binding :0 and released before sshd binds
        // it; another process may grab it in between, so retry.
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            let config = d.join("sshd_config");
            write(
                &config,
                &sshd_config(port, &host_key, &authorized_keys, &user),
            )?;
            let log_path = d.join("sshd.log");
            match spawn_and_wait(&config, &log_path, port) {
                Ok(child) => {
                    let known_hosts = d.join("known_hosts");
                    let known_hosts_line = format!("[127.0.0.1]:{port} {host_public_key}");
                    write(&known_hosts, &format!("{known_hosts_line}\n"))?;
                    let host = Host {
                        name: "localhost".into(),
                        address: "127.0.0.1".into(),
                        port,
                        user,
                        identity,
                        known_hosts,
                        known_hosts_line,
                        pid: Some(child.id()),
                        netns: None,
                        veth: None,
                        host_address: None,
                        root: None,
                        log: Some(log_path),
                        pod_user: None,
                        memory_max: None,
                    };
                    return Ok(SshdFixture {
                        dir,
                        child,
                        host,
                        host_public_key,
                    });
                }
                Err(e @ Error::Sshd { .. }) if e.to_string().contains("Address already in use") => {
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.expect("loop ran"))
    }

    /// The fixture as a [`Host`] (address `127.0.0.1`, the random port, ...).
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// TCP port sshd listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.host.port
    }

    /// `127.0.0.1`.
    pub fn address(&self) -> &str {
        &self.host.address
    }

    /// Login user: the user running the tests.
    pub fn user(&self) -> &str {
        &self.host.user
    }

    /// Client private key accepted by this sshd.
    pub fn identity(&self) -> &Path {
        &self.host.identity
    }

    /// known_hosts file with the single line [`SshdFixture::known_hosts_line`].
    pub fn known_hosts(&self) -> &Path {
        &self.host.known_hosts
    }

    /// `[127.0.0.1]:PORT ssh-ed25519 AAAA...`
    pub fn known_hosts_line(&self) -> &str {
        &self.host.known_hosts_line
    }

    /// The host public key, `ssh-ed25519 AAAA...` (no comment).
    pub fn host_public_key(&self) -> &str {
        &self.host_public_key
    }

    /// PID of the listening sshd.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Temp dir with keys, config and `sshd.log`; removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// See [`Host::ssh_args`].
    pub fn ssh_args(&self) -> Vec<String> {
        self.host.ssh_args()
    }

    /// See [`Host::ssh`].
    pub fn ssh(&self, cmd: &str) -> Result<Output> {
        self.host.ssh(cmd)
    }
}

impl Drop for SshdFixture {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn sshd_config(port: u16, host_key: &Path, authorized_keys: &Path, user: &str) -> String {
    format!(
        "# generated by lab-testhosts SshdFixture\n\
         ListenAddress 127.0.0.1:{port}\n\
         HostKey {host_key}\n\
         AuthorizedKeysFile {authorized_keys}\n\
         PidFile none\n\
         StrictModes no\n\
         UsePAM no\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\n\
         AllowUsers {user}\n\
         UseDNS no\n\
         MaxStartups 100:30:200\n\
         MaxSessions 100\n\
         Subsystem sftp internal-sftp\n\
         LogLevel INFO\n",
        host_key = host_key.display(),
        authorized_keys = authorized_keys.display(),
    )
}

fn spawn_and_wait(config: &Path, log_path: &Path, port: u16) -> Result<Child> {
    let log = fs::File::create(log_path).map_err(|source| Error::Io {
        path: log_path.into(),
        source,
    })?;
    let log2 = log.try_clone().map_err(|source| Error::Io {
        path: log_path.into(),
        source,
    })?;
    let mut child = Command::new(SSHD)
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|source| Error::Spawn {
            command: format!("{SSHD} -D -e -f {}", config.display()),
            source,
        })?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::Sshd {
                reason: format!("sshd exited with {status}"),
                log: fs::read(log_path).map(|l| tail(&l, 40)).unwrap_or_default(),
            });
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(child);
        }
        if Instant::now() > deadline {
            stop(&mut child);
            return Err(Error::Sshd {
                reason: format!("nothing listens on {addr} after {START_TIMEOUT:?}"),
                log: fs::read(log_path).map(|l| tail(&l, 40)).unwrap_or_default(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| Error::Io {
        path: "127.0.0.1:0".into(),
        source,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| Error::Io {
            path: "127.0.0.1:0".into(),
            source,
        })
}

fn keygen(path: &Path, comment: &str) -> Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            command: "ssh-keygen".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("ssh-keygen -t ed25519 -f {}", path.display()),
            status: out.status,
            output: tail(&out.stderr, 20),
        });
    }
    Ok(())
}

/// `ssh-ed25519 AAAA... comment` -> `ssh-ed25519 AAAA...`
fn public_key(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| Error::Io {
        path: PathBuf::from(path),
        source,
    })
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|source| Error::Io {
        path: PathBuf::from(path),
        source,
    })
}
