//! Reaching a machine through another one: a container machine on a host
//! (lab.toml's `on = "HOST"`). The container's SSH connection runs over a
//! `ssh -W ADDRESS:PORT` of the host's shared connection ([`crate::mux`]):
//! one connection to the host serves all its containers, each `-W` a
//! direct-tcpip channel of it; beside lab's own connection a master of the
//! container's is started too (through the host's), for the next runs.
//! The container's host key is checked
//! against the file it was pinned in at creation, under the machine's
//! name (never accepted new).

use crate::mux::Mux;
use crate::ssh::{SshSpec, SshTarget, SshTransport};
use crate::{SyncError, Transport};
use std::path::PathBuf;
use std::time::Duration;

/// The key exchanges of a connection carried inside the host's: OpenSSH's
/// defaults without the post-quantum hybrids (`sntrup761x25519`,
/// `mlkem768x25519`), whose key generation costs ~100 ms of each login
/// on a small CPU (measured: 190-220 ms a login through the host's
/// connection, 92-97 ms without). What they protect against
/// (traffic recorded now, decrypted later) is covered by the host's own
/// connection, which carries this one over the network with the user's
/// key exchange; this one's own leg is the host's bridge.
const INNER_KEX: &str = "curve25519-sha256,curve25519-sha256@libssh.org,\
ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521,\
diffie-hellman-group-exchange-sha256,diffie-hellman-group16-sha512,\
diffie-hellman-group18-sha512,diffie-hellman-group14-sha256";

/// The last step to a machine reached through its host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    /// The machine's name: the name its host key is pinned under.
    pub name: String,
    /// Its address as the host sees it.
    pub address: String,
    pub port: u16,
    pub user: String,
    /// Where its host key is pinned.
    pub known_hosts: PathBuf,
}

/// The `ProxyCommand` that carries a connection to `hop` through the host
/// (`ssh ... -W ADDRESS:PORT HOST` over the host's shared connection when
/// it is up, else a connection of its own with the same options), and the
/// host's resolved target.
pub fn proxy_command(
    host: &SshSpec,
    ssh_config: Option<&ssh2_config::SshConfig>,
    hop: &Hop,
) -> Result<(String, SshTarget), SyncError> {
    let ht = SshTarget::resolve(host, ssh_config);
    let Some(mux) = Mux::of(host, &ht) else {
        return Err(SyncError::Connect {
            host: hop.address.clone(),
            port: hop.port,
            message: format!(
                "machine `{}` is reached through `{}`'s shared connection, which is off here (LAB_SSH_MULTIPLEX=0, or its control socket path is too long)",
                hop.name, host.host
            ),
        });
    };
    let mut words = vec![
        "ssh".to_string(),
        "-o".into(),
        "ControlMaster=no".into(),
        "-W".into(),
        format!("{}:{}", hop.address, hop.port),
    ];
    words.extend(mux.client_args().iter().cloned());
    let cmd = words
        .iter()
        .map(|w| lab_agent::quote(w).replace('%', "%%"))
        .collect::<Vec<_>>()
        .join(" ");
    Ok((cmd, ht))
}

/// Connect to `hop` through `host`. A shared connection to the host is
/// started first when none is up (and the host's key checked by lab's own
/// connection on the way).
pub fn connect_via(
    host: &SshSpec,
    ssh_config: Option<&ssh2_config::SshConfig>,
    hop: &Hop,
    timeout: Duration,
    io_timeout: Duration,
) -> Result<Box<dyn Transport>, SyncError> {
    let (cmd, ht) = proxy_command(host, ssh_config, hop)?;
    if let Some(mux) = Mux::of(host, &ht) {
        if !mux.usable(&ht) {
            // lab's own connection checks the host's key and starts the
            // master; the proxy uses the master once it listens
            let direct = SshTransport::connect(&ht, false, timeout, io_timeout)?;
            if let Some(key) = direct.host_key_blob() {
                mux.start_master(&key);
                mux.wait_alive(Duration::from_secs(2));
            }
        }
    }
    let mut t = SshTarget::new(&hop.address, hop.port, &hop.user, hop.known_hosts.clone());
    t.identities = ht.identities.clone();
    t.identities_only = ht.identities_only;
    t.identity_agent = ht.identity_agent.clone();
    t.host_key_alias = Some(hop.name.clone());
    t.alias = hop.name.clone();
    t.proxy_command = Some(cmd.clone());
    t.connect_timeout = ht.connect_timeout;
    // the container's own shared connection, as for any machine: a master
    // (through the host's) that the next runs use within its persist time
    let spec = SshSpec {
        host: hop.address.clone(),
        port: Some(hop.port),
        user: Some(hop.user.clone()),
        identities: host.identities.clone(),
        known_hosts: Some(hop.known_hosts.clone()),
        sudo: false,
        control_dir: host.control_dir.clone(),
    };
    if let Some(mux) = Mux::of(&spec, &t).map(|m| {
        m.with_options(&[
            format!("ProxyCommand={cmd}"),
            format!("HostKeyAlias={}", hop.name),
            format!("KexAlgorithms={INNER_KEX}"),
        ])
    }) {
        // (a key lab pinned when it created the machine: the master,
        // which checks it with StrictHostKeyChecking=yes, is the only
        // connection; lab's own beside it would cost a second key
        // exchange and login on a machine that has just booted)
        let up = mux.usable(&t)
            || pinned_key(&hop.known_hosts, &hop.name)
                .is_some_and(|key| mux.start_master_wait(&key, timeout));
        if up {
            return Ok(Box::new(crate::mux::MuxTransport::new(
                mux, t, timeout, io_timeout,
            )));
        }
        let direct = SshTransport::connect(&t, false, timeout, io_timeout)?;
        if let Some(key) = direct.host_key_blob() {
            mux.start_master(&key);
        }
        return Ok(Box::new(direct));
    }
    Ok(Box::new(SshTransport::connect(
        &t, false, timeout, io_timeout,
    )?))
}

/// The key pinned for `name` in `known_hosts` (an OpenSSH file), raw.
fn pinned_key(known_hosts: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let session = ssh2::Session::new().ok()?;
    let mut known = session.known_hosts().ok()?;
    known
        .read_file(known_hosts, ssh2::KnownHostFileKind::OpenSSH)
        .ok()?;
    let host = known
        .iter()
        .ok()?
        .into_iter()
        .find(|h| h.name() == Some(name))?;
    base64::engine::general_purpose::STANDARD
        .decode(host.key())
        .ok()
}
