use crate::error::{tail, Error, Result};
use crate::host::Host;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Environment variable naming a running fleet to reuse instead of booting
/// one (`LAB_TESTHOSTS_REUSE=th`). A reused fleet is never torn down by us.
pub const REUSE_ENV: &str = "LAB_TESTHOSTS_REUSE";

/// A fleet of real hosts (systemd-nspawn containers with systemd and sshd),
/// booted by `scripts/testhosts up N` under a fleet name unique to this
/// call, and torn down (`scripts/testhosts down`) when dropped, also while
/// a panicking test unwinds.
///
/// Needs root. Booting is fast (about 1 s for a few hosts once the base root
/// is cached; the very first call builds the base with mmdebstrap, ~30 s).
#[derive(Debug)]
pub struct TestHosts {
    name: String,
    state_dir: PathBuf,
    identity: PathBuf,
    known_hosts: PathBuf,
    hosts: Vec<Host>,
    /// we booted it, so we tear it down
    owned: bool,
}

#[derive(Deserialize)]
struct Inventory {
    state_dir: PathBuf,
    identity: PathBuf,
    known_hosts: PathBuf,
    hosts: Vec<Host>,
}

impl TestHosts {
    /// Boot a fresh fleet of `n` hosts, or reuse the fleet named by
    /// `LAB_TESTHOSTS_REUSE` when that one is running with at least `n`
    /// reachable hosts (then only its first `n` hosts are handed out).
    pub fn up(n: usize) -> Result<TestHosts> {
        if !crate::is_root() {
            return Err(Error::NotRoot {
                what: "TestHosts::up",
                euid: nix::unistd::geteuid().as_raw(),
            });
        }
        if let Ok(reuse) = std::env::var(REUSE_ENV) {
            if !reuse.is_empty() {
                match Self::reuse(&reuse, n) {
                    Ok(fleet) => return Ok(fleet),
                    Err(e) => {
                        eprintln!(
                            "lab-testhosts: not reusing fleet `{reuse}`: {e}; booting a fresh one"
                        )
                    }
                }
            }
        }
        let name = unique_fleet_name();
        // A stale fleet of that name (from a dead process whose PID got
        // reused) must not be taken for ours: start from nothing.
        script(&name, &["down"])?;
        let mut fleet = TestHosts {
            name: name.clone(),
            state_dir: PathBuf::new(),
            identity: PathBuf::new(),
            known_hosts: PathBuf::new(),
            hosts: Vec::new(),
            owned: true,
        };
        // from here on, Drop tears down whatever got started
        script(&name, &["up", &n.to_string()])?;
        fleet.load_inventory(n)?;
        Ok(fleet)
    }

    fn reuse(name: &str, n: usize) -> Result<TestHosts> {
        // exit status 0 only when every host answers over ssh
        script(name, &["status"])?;
        let mut fleet = TestHosts {
            name: name.to_string(),
            state_dir: PathBuf::new(),
            identity: PathBuf::new(),
            known_hosts: PathBuf::new(),
            hosts: Vec::new(),
            owned: false,
        };
        fleet.load_inventory(n)?;
        Ok(fleet)
    }

    fn load_inventory(&mut self, n: usize) -> Result<()> {
        let json = script(&self.name, &["inventory"])?;
        let inv: Inventory = serde_json::from_str(&json).map_err(|source| Error::Inventory {
            fleet: self.name.clone(),
            source,
        })?;
        if inv.hosts.len() < n {
            return Err(Error::TooFewHosts {
                fleet: self.name.clone(),
                have: inv.hosts.len(),
                want: n,
            });
        }
        self.state_dir = inv.state_dir;
        self.identity = inv.identity;
        self.known_hosts = inv.known_hosts;
        self.hosts = inv.hosts;
        self.hosts.truncate(n);
        Ok(())
    }

    /// The hosts, in order `<name>1`, `<name>2`, ...
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The fleet name (prefix of host names, netns and veth names).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/lab-testhosts/<name>`: keys, inventory, overlays, logs.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The client private key that logs in as root on every host.
    pub fn identity(&self) -> &Path {
        &self.identity
    }

    /// The known_hosts file pinning every host's key.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// Whether this fleet was reused via `LAB_TESTHOSTS_REUSE` (and so will
    /// not be torn down).
    pub fn is_reused(&self) -> bool {
        !self.owned
    }

    /// Tear the fleet down now and report failure (Drop can only print it).
    /// A reused fleet is left running.
    pub fn down(mut self) -> Result<()> {
        let owned = std::mem::replace(&mut self.owned, false);
        if owned {
            script(&self.name, &["down"])?;
        }
        Ok(())
    }

    /// Path of `scripts/testhosts` in this workspace.
    pub fn script_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/testhosts")
    }
}

impl Drop for TestHosts {
    fn drop(&mut self) {
        if self.owned {
            if let Err(e) = script(&self.name, &["down"]) {
                eprintln!(
                    "lab-testhosts: tearing down fleet `{}` failed: {e}",
                    self.name
                );
            }
        }
    }
}

/// `t` + PID in base 36 + a per-process counter in letters: short enough for
/// interface names (`<name>-<i>h` <= 15 chars), ends in a letter as the
/// script demands, and unique among live processes.
fn unique_fleet_name() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let mut n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut pid = std::process::id();
    let mut digits = Vec::new();
    loop {
        digits.push(char::from_digit(pid % 36, 36).expect("digit < 36"));
        pid /= 36;
        if pid == 0 {
            break;
        }
    }
    let mut name: String = std::iter::once('t')
        .chain(digits.into_iter().rev())
        .collect();
    // bijective base 26: a..z, aa..zz, ...
    let mut letters = Vec::new();
    loop {
        letters.push((b'a' + (n % 26) as u8) as char);
        n /= 26;
        if n == 0 {
            break;
        }
        n -= 1;
    }
    name.extend(letters.into_iter().rev());
    name
}

/// Run `scripts/testhosts ARGS` for fleet `name`; stdout on success.
fn script(name: &str, args: &[&str]) -> Result<String> {
    let path = TestHosts::script_path();
    let command = format!(
        "LAB_TESTHOSTS_NAME={name} {} {}",
        path.display(),
        args.join(" ")
    );
    let out = Command::new(&path)
        .args(args)
        .env("LAB_TESTHOSTS_NAME", name)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        let mut output = tail(&out.stderr, 60);
        let stdout = tail(&out.stdout, 20);
        if !stdout.trim().is_empty() {
            output = format!("{stdout}\n{output}");
        }
        return Err(Error::Command {
            command,
            status: out.status,
            output,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_names_fit_interface_limits_and_script_rules() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..800 {
            let name = unique_fleet_name();
            assert!(name.len() <= 10, "{name}");
            assert!(name.starts_with('t'));
            assert!(name.ends_with(|c: char| c.is_ascii_lowercase()), "{name}");
            assert!(name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
            // `<name>-<i>h` for i up to 254 must fit IFNAMSIZ-1
            assert!(format!("{name}-254h").len() <= 15, "{name}");
            assert!(seen.insert(name));
        }
    }

    #[test]
    fn script_is_found_next_to_the_crate() {
        assert!(TestHosts::script_path().is_file());
    }
}
