//! Container machines on a host (lab.toml's `on = "HOST"`): creating,
//! listing, starting, stopping and destroying them on the host, over the
//! host's transport, and pinning each one's host key in lab's known_hosts
//! for containers; and adding a user's SSH public key ([`PublicKey`],
//! checked) to a login's `authorized_keys` on a machine ([`authorize`]).
//! Owns what such a machine is on its host (the layout below and the
//! scripts that make and remove it); knows nothing of building or syncing
//! (after creation a container is a machine like any other, reached
//! through its host: see `lab_sync::via`). Returns typed errors; never
//! prints.
//!
//! On the host, with no daemon of lab's (systemd runs everything):
//!
//! ```text
//! /var/lib/lab/machines/NAME/lab-machine     marker: lab made this machine (written first)
//! /var/lib/lab/machines/NAME/created         its creation finished (written last)
//! /var/lib/lab/machines/NAME/{upper,work}    its overlay's writable layer (its data)
//! /var/lib/lab/machines/NAME/root            the overlay (image below, upper above)
//! /var/lib/lab/images/bases/IMAGE            -> roots/ID: a project's image (lab-sync's image store)
//! /var/lib/lab/images/used/NAME              the tree its mounted root is made from
//! /var/lib/lab/machines/NAME/{image,address} as created
//! /var/lib/lab/machines/NAME/lower           the directory (or store link) its image is
//! /etc/systemd/system/lab-machine@.service   systemd-nspawn --boot, mounts the overlay first
//! /etc/systemd/system/lab-machine@NAME.service.d/lab.conf   MemoryMax=, CPUQuota= (when set)
//! /etc/systemd/nspawn/NAME.nspawn            Boot=yes, Bridge=labbr0
//! /etc/systemd/system/lab-machines-net.service   the bridge and nftables (net.sh)
//! /etc/lab/machines/{net.sh,range,NAME.ports}    bridge address, NAT, port forwards
//! /etc/lab/machines/mount.sh                 mounts (and unmounts) a machine's overlay
//! ```
//!
//! The overlay is mounted from the image at every start, so a container
//! moves to an updated image on its next restart with its own changes
//! kept. An image of the project (`image = "NAME"`) is shipped to the
//! host's image store by lab (`lab_sync::image_store::ship_base`) before
//! its containers are created or synced; each start mounts the tree
//! `bases/NAME` points at then, and the store keeps that tree while the
//! root is mounted. Its machine-id, hostname, network file and SSH host key are
//! written into its writable layer at creation; the host key's private
//! half never leaves the host.

mod key;

pub use key::{KeyError, PublicKey, KEY_TYPES};

use lab_config::container::{Container, MachineRange};
use lab_sync::{SyncError, Transport};
use std::io::Write;
use std::path::Path;

const CREATE_SH: &str = include_str!("create.sh");
const DESTROY_SH: &str = include_str!("destroy.sh");
const LIST_SH: &str = include_str!("list.sh");
const STATE_SH: &str = include_str!("state.sh");
const AUTHORIZE_SH: &str = include_str!("authorize.sh");

/// The systemd unit of container machine `name` on its host.
pub fn unit_name(name: &str) -> String {
    format!("lab-machine@{name}.service")
}

/// The directory of container machine `name` on its host.
pub fn host_dir(name: &str) -> String {
    format!("/var/lib/lab/machines/{name}")
}

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("`{name}` cannot name a container machine: it must be a host name (letters, digits and `-`, at most 60)")]
    BadName { name: String },
    #[error("{0}")]
    Sync(#[from] SyncError),
    #[error("on `{host}`: {message}")]
    Host { host: String, message: String },
    #[error("no container machine `{name}` on `{host}`")]
    Missing { name: String, host: String },
    #[error("on `{machine}`: {message}")]
    Key { machine: String, message: String },
    #[error("`{}`: {source}", path.display())]
    Pin {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// What [`create`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// Made now; its host key (`ssh-ed25519 AAAA...`).
    Made { host_key: String },
    /// It was there already (nothing was touched); its host key, as the
    /// host has it.
    Exists { host_key: Option<String> },
}

/// One container machine as its host lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listed {
    pub name: String,
    /// Its unit's state (`active`, `failed`, `inactive`...).
    pub unit: String,
    /// Its own systemd's state (`running`, `degraded`, `starting`...),
    /// `-` when its unit is not active.
    pub system: String,
    pub address: String,
    pub image: String,
}

fn check_name(name: &str) -> Result<(), MachineError> {
    let ok = !name.is_empty()
        && name.len() <= 60
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(MachineError::BadName { name: name.into() })
    }
}

fn assign(out: &mut String, var: &str, value: &str) {
    out.push_str(var);
    out.push('=');
    out.push_str(&lab_agent::quote(value));
    out.push('\n');
}

/// The script that creates `name` on its host (`no_block`: do not wait
/// for it to finish booting).
pub fn create_script(
    name: &str,
    c: &Container,
    range: &MachineRange,
    no_block: bool,
) -> Result<String, MachineError> {
    check_name(name)?;
    let mut s = String::new();
    assign(&mut s, "N", name);
    assign(&mut s, "IMAGE", &c.image);
    let lower = match c.lab_image() {
        Some(n) => lab_sync::image_store::base_path(n),
        None => c.image.clone(),
    };
    assign(&mut s, "LOWER", &lower);
    assign(&mut s, "ADDR", &c.address.to_string());
    assign(&mut s, "GW", &range.gateway().to_string());
    assign(&mut s, "NET", &range.to_string());
    assign(&mut s, "MEMORY", c.memory.as_deref().unwrap_or(""));
    let quota = c
        .cpus
        .map(|n| format!("{}%", (n * 100.0).round() as u64))
        .unwrap_or_default();
    assign(&mut s, "CPUQUOTA", &quota);
    let ports = c
        .ports
        .iter()
        .map(|p| format!("{}:{}", p.host, p.container))
        .collect::<Vec<_>>()
        .join(" ");
    assign(&mut s, "PORTS", &ports);
    assign(&mut s, "NO_BLOCK", if no_block { "1" } else { "" });
    let shared = format!("{CREATE_SH}\0{}", range);
    assign(
        &mut s,
        "SHARED",
        &lab_core::Digest::of(shared.as_bytes()).to_hex(),
    );
    s.push_str(CREATE_SH);
    Ok(s)
}

/// The script that destroys `names` on their host.
pub fn destroy_script(names: &[&str]) -> Result<String, MachineError> {
    for n in names {
        check_name(n)?;
    }
    let mut s = String::new();
    assign(&mut s, "NAMES", &names.join(" "));
    s.push_str(DESTROY_SH);
    Ok(s)
}

fn run(t: &mut dyn Transport, script: &str) -> Result<lab_sync::Output, MachineError> {
    let bytes = script.as_bytes();
    Ok(t.run("sh -s", &mut |w: &mut dyn Write| w.write_all(bytes))?)
}

/// Create container machine `name` on `host` (reached by `t`): files,
/// overlay, network, started by the host's systemd (and, unless
/// `no_block`, booted when this returns).
pub fn create(
    t: &mut dyn Transport,
    host: &str,
    name: &str,
    c: &Container,
    range: &MachineRange,
    no_block: bool,
) -> Result<Created, MachineError> {
    let out = run(t, &create_script(name, c, range, no_block)?)?;
    let text = out.stdout_text();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("hostkey "))
        .map(str::trim)
        .filter(|k| k.starts_with("ssh-ed25519 "))
        .map(str::to_string);
    match out.status {
        0 => Ok(Created::Made {
            host_key: key.ok_or_else(|| MachineError::Host {
                host: host.into(),
                message: format!("creating `{name}` gave no host key"),
            })?,
        }),
        10 => Ok(Created::Exists { host_key: key }),
        s => Err(MachineError::Host {
            host: host.into(),
            message: format!(
                "creating `{name}` failed (exit {s}): {}",
                out.stderr_text().trim()
            ),
        }),
    }
}

/// Destroy container machine `name` on `host`: its unit, mount, veth,
/// files and writable layer (its data).
pub fn destroy(t: &mut dyn Transport, host: &str, name: &str) -> Result<(), MachineError> {
    destroy_many(t, host, &[name]).pop().expect("one result").1
}

/// Destroy container machines `names` on `host` at once (one command:
/// their units stop together), each as [`destroy`]. Returns each name's
/// outcome, in order.
pub fn destroy_many<'n>(
    t: &mut dyn Transport,
    host: &str,
    names: &[&'n str],
) -> Vec<(&'n str, Result<(), MachineError>)> {
    let out = match destroy_script(names).and_then(|s| run(t, &s)) {
        Ok(o) => o,
        Err(e) => {
            let text = e.to_string();
            return names
                .iter()
                .map(|n| {
                    (
                        *n,
                        Err(MachineError::Host {
                            host: host.into(),
                            message: format!("destroying `{n}` failed: {text}"),
                        }),
                    )
                })
                .collect();
        }
    };
    let text = out.stdout_text();
    let said = |what: &str, n: &str| text.lines().any(|l| l == format!("{what} {n}"));
    names
        .iter()
        .map(|n| {
            let r = if said("destroyed", n) {
                Ok(())
            } else if said("missing", n) {
                Err(MachineError::Missing {
                    name: n.to_string(),
                    host: host.into(),
                })
            } else {
                Err(MachineError::Host {
                    host: host.into(),
                    message: format!(
                        "destroying `{n}` failed (exit {}): {}",
                        out.status,
                        out.stderr_text().trim()
                    ),
                })
            };
            (*n, r)
        })
        .collect()
}

/// What a script on the host about container machine `name` said: exit
/// 0 is its output, 5 that there is no such machine, anything else that
/// `doing` it failed.
fn on_machine(
    out: lab_sync::Output,
    host: &str,
    name: &str,
    doing: &str,
) -> Result<lab_sync::Output, MachineError> {
    match out.status {
        0 => Ok(out),
        5 => Err(MachineError::Missing {
            name: name.into(),
            host: host.into(),
        }),
        s => Err(MachineError::Host {
            host: host.into(),
            message: format!(
                "{doing} `{name}` failed (exit {s}): {}",
                out.stderr_text().trim()
            ),
        }),
    }
}

/// Create `name` on `host` unless the host lists it already (`listed`)
/// and its key is pinned in `known_hosts`; pin the key the host gives (of
/// one made now, or of one there whose pin was lost: the host, reached
/// over its checked connection, has it). Returns whether it was made now.
#[allow(clippy::too_many_arguments)]
pub fn ensure(
    t: &mut dyn Transport,
    host: &str,
    name: &str,
    c: &Container,
    range: &MachineRange,
    no_block: bool,
    listed: bool,
    known_hosts: &Path,
) -> Result<bool, MachineError> {
    if listed && pinned(known_hosts, name) {
        return Ok(false);
    }
    match create(t, host, name, c, range, no_block)? {
        Created::Made { host_key } => {
            pin(known_hosts, name, &host_key)?;
            Ok(true)
        }
        Created::Exists { host_key } => {
            if let Some(k) = host_key {
                if !pinned(known_hosts, name) {
                    pin(known_hosts, name, &k)?;
                }
            }
            Ok(false)
        }
    }
}

fn set_state(
    t: &mut dyn Transport,
    host: &str,
    name: &str,
    action: &str,
) -> Result<String, MachineError> {
    check_name(name)?;
    let mut s = String::new();
    assign(&mut s, "N", name);
    assign(&mut s, "ACTION", action);
    s.push_str(STATE_SH);
    let doing = if action == "start" {
        "starting"
    } else {
        "stopping"
    };
    let out = on_machine(run(t, &s)?, host, name, doing)?;
    Ok(out.stdout_text().trim().to_string())
}

/// Start container machine `name` on `host` (its unit; returns once it
/// booted): its unit's state after (`active`).
pub fn start(t: &mut dyn Transport, host: &str, name: &str) -> Result<String, MachineError> {
    set_state(t, host, name, "start")
}

/// Stop container machine `name` on `host` (its unit: a clean shutdown;
/// its files and data stay): its unit's state after (`inactive`).
pub fn stop(t: &mut dyn Transport, host: &str, name: &str) -> Result<String, MachineError> {
    set_state(t, host, name, "stop")
}

/// Add `key` to `login`'s `~/.ssh/authorized_keys` on the machine `t`
/// reaches (`machine` names it in errors): once, atomically, never through
/// a symlink. Returns whether it was added (false: it was there).
pub fn authorize(
    t: &mut dyn Transport,
    machine: &str,
    login: &str,
    key: &PublicKey,
) -> Result<bool, MachineError> {
    let mut s = String::new();
    assign(&mut s, "LOGIN", login);
    assign(&mut s, "KEY", &key.line());
    assign(&mut s, "KTYPE", &key.kind);
    assign(&mut s, "KBLOB", &key.blob);
    s.push_str(AUTHORIZE_SH);
    let out = run(t, &s)?;
    match (out.status, out.stdout_text().trim()) {
        (0, "added") => Ok(true),
        (0, "present") => Ok(false),
        (s, _) => Err(MachineError::Key {
            machine: machine.into(),
            message: format!(
                "adding the key to {login}'s authorized_keys failed (exit {s}): {}",
                out.stderr_text().trim()
            ),
        }),
    }
}

/// The container machines on the host `t` reaches.
pub fn list(t: &mut dyn Transport, host: &str) -> Result<Vec<Listed>, MachineError> {
    let out = run(t, LIST_SH)?;
    if out.status != 0 {
        return Err(MachineError::Host {
            host: host.into(),
            message: format!("listing machines failed: {}", out.stderr_text().trim()),
        });
    }
    Ok(out
        .stdout_text()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 5).then(|| Listed {
                name: f[0].into(),
                unit: f[1].into(),
                system: f[2].into(),
                address: f[3].into(),
                image: f[4].into(),
            })
        })
        .collect())
}

/// The names of the container machines on the host `t` reaches (what
/// [`list`] gives without asking each one's state: one quick command).
pub fn list_names(t: &mut dyn Transport, host: &str) -> Result<Vec<String>, MachineError> {
    let out = run(
        t,
        "for m in /var/lib/lab/machines/*/lab-machine; do [ -f \"$m\" ] || continue; \
         d=${m%/lab-machine}; echo \"${d##*/}\"; done",
    )?;
    if out.status != 0 {
        return Err(MachineError::Host {
            host: host.into(),
            message: format!("listing machines failed: {}", out.stderr_text().trim()),
        });
    }
    Ok(out.stdout_text().lines().map(str::to_string).collect())
}

/// Pin `name`'s host key in `known_hosts` (lab's file for container
/// machines, one `NAME KEYTYPE KEY` line each): any line of `name` before
/// is replaced. Written atomically.
pub fn pin(known_hosts: &Path, name: &str, key: &str) -> Result<(), MachineError> {
    rewrite(known_hosts, name, Some(key))
}

/// Whether `name` has a pinned key in `known_hosts`.
pub fn pinned(known_hosts: &Path, name: &str) -> bool {
    std::fs::read_to_string(known_hosts)
        .is_ok_and(|t| t.lines().any(|l| l.split_whitespace().next() == Some(name)))
}

/// Forget `name`'s pinned host key.
pub fn unpin(known_hosts: &Path, name: &str) -> Result<(), MachineError> {
    rewrite(known_hosts, name, None)
}

fn rewrite(path: &Path, name: &str, key: Option<&str>) -> Result<(), MachineError> {
    let err = |source| MachineError::Pin {
        path: path.to_path_buf(),
        source,
    };
    let old = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(err(e)),
    };
    let mut text: String = old
        .lines()
        .filter(|l| l.split_whitespace().next() != Some(name))
        .map(|l| format!("{l}\n"))
        .collect();
    if let Some(k) = key {
        text.push_str(&format!("{name} {k}\n"));
    }
    if let Some(dir) = path.parent() {
        fs_err::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("tmp");
    fs_err::write(&tmp, text).map_err(err)?;
    fs_err::rename(&tmp, path).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_host_names() {
        for bad in ["", "a.b", "A", "-a", "a_b", "a@b", &"x".repeat(61)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        check_name("c1-web").unwrap();
    }

    #[test]
    fn pins_replace_a_machine_s_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m/known_hosts");
        pin(&p, "c1", "ssh-ed25519 AAA1").unwrap();
        pin(&p, "c2", "ssh-ed25519 AAA2").unwrap();
        pin(&p, "c1", "ssh-ed25519 AAA3").unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "c2 ssh-ed25519 AAA2\nc1 ssh-ed25519 AAA3\n"
        );
        unpin(&p, "c2").unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "c1 ssh-ed25519 AAA3\n"
        );
    }
}
