use crate::error::{tail, Error, Result};
use crate::host::Host;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Environment variable naming a running fleet to reuse instead of booting
/// one (`LAB_TESTHOSTS_REUSE=th`). A reused fleet is never torn down by us.
pub const REUSE_ENV: &str = "LAB_TESTHOSTS_REUSE";

/// The same for podman fleets (`LAB_TESTHOSTS_REUSE_PODMAN=tp`); a fleet
/// with memory caps is never reused.
pub const REUSE_PODMAN_ENV: &str = "LAB_TESTHOSTS_REUSE_PODMAN";

/// The same for fleets of the machines flavor.
pub const REUSE_MACHINES_ENV: &str = "LAB_TESTHOSTS_REUSE_MACHINES";

/// Which base root a fleet boots (`LAB_TESTHOSTS_FLAVOR` of the script).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavor {
    /// Debian bookworm minbase with systemd and sshd.
    #[default]
    Bookworm,
    /// Debian trixie with podman 5 (Quadlet), crun, passt, uidmap, nftables
    /// and a pod user `pods` with linger and subuids; fixed for rootless
    /// podman inside nspawn. `/bin/busybox` (static) is in the base, for
    /// [`crate::OciImage`].
    ///
    /// Unlike a stock Debian VPS, a host's cgroup v2 offers only the
    /// controllers the machine running the tests has bound to cgroup v2: on
    /// a machine with cgroup v1 (or hybrid) controllers that is none, so no
    /// pod can have memory or cpu limits there (crun: `opening file
    /// memory.max for writing`), rootless or rootful. No recipe can change
    /// that from inside; read `/sys/fs/cgroup/cgroup.controllers` of the
    /// host to know.
    Podman,
    /// Debian bookworm with systemd-container and nftables, booted with
    /// `CAP_NET_ADMIN` (in its own network namespace): a host of container
    /// machines (lab.toml's `on = "HOST"`). `/var/lib/lab/machines` is a
    /// plain directory bound from the state dir (an overlay's upper dir
    /// cannot live on the host's overlay root) and the base itself is
    /// bound read-only at `/var/lib/lab/images/bookworm`, as their image.
    Machines,
}

impl Flavor {
    fn as_str(self) -> &'static str {
        match self {
            Flavor::Bookworm => "bookworm",
            Flavor::Podman => "podman",
            Flavor::Machines => "machines",
        }
    }
}

/// How to boot a fleet: `TestHosts::builder().podman().memory_max(3,
/// "512M").up(3)`.
#[derive(Debug, Clone, Default)]
pub struct FleetBuilder {
    flavor: Flavor,
    /// (1-based host index, systemd size like `512M`)
    memory_max: Vec<(usize, String)>,
}

impl FleetBuilder {
    /// Boot the podman flavor.
    pub fn podman(mut self) -> Self {
        self.flavor = Flavor::Podman;
        self
    }

    /// Boot this flavor.
    pub fn flavor(mut self, flavor: Flavor) -> Self {
        self.flavor = flavor;
        self
    }

    /// Cap host `index` (1-based) at `size` of memory (`512M`), like a
    /// small VPS: the container and everything in it share that limit.
    pub fn memory_max(mut self, index: usize, size: &str) -> Self {
        self.memory_max.push((index, size.to_string()));
        self
    }

    /// Boot `n` hosts (or reuse a running fleet, see [`REUSE_ENV`]).
    pub fn up(self, n: usize) -> Result<TestHosts> {
        TestHosts::boot(n, self)
    }
}

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
    flavor: Flavor,
    memory_max: String,
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
        Self::builder().up(n)
    }

    /// Boot `n` podman hosts (see [`Flavor::Podman`]).
    pub fn up_podman(n: usize) -> Result<TestHosts> {
        Self::builder().podman().up(n)
    }

    /// A fleet with options (flavor, memory caps).
    pub fn builder() -> FleetBuilder {
        FleetBuilder::default()
    }

    fn boot(n: usize, opts: FleetBuilder) -> Result<TestHosts> {
        if !crate::is_root() {
            return Err(Error::NotRoot {
                what: "TestHosts::up",
                euid: nix::unistd::geteuid().as_raw(),
            });
        }
        let memory_max = opts
            .memory_max
            .iter()
            .map(|(i, size)| format!("{i}={size}"))
            .collect::<Vec<_>>()
            .join(",");
        let reuse_env = match opts.flavor {
            Flavor::Bookworm => REUSE_ENV,
            Flavor::Podman => REUSE_PODMAN_ENV,
            Flavor::Machines => REUSE_MACHINES_ENV,
        };
        if let Ok(reuse) = std::env::var(reuse_env) {
            if !reuse.is_empty() {
                match Self::reuse(&reuse, n, &opts) {
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
        let mut fleet = TestHosts {
            name: name.clone(),
            flavor: opts.flavor,
            memory_max,
            state_dir: PathBuf::new(),
            identity: PathBuf::new(),
            known_hosts: PathBuf::new(),
            hosts: Vec::new(),
            owned: false,
        };
        // A stale fleet of that name (from a dead process whose PID got
        // reused) must not be taken for ours: start from nothing.
        fleet.script(&["down"])?;
        // from here on, Drop tears down whatever got started
        fleet.owned = true;
        fleet.script(&["up", &n.to_string()])?;
        fleet.load_inventory(n)?;
        Ok(fleet)
    }

    fn reuse(name: &str, n: usize, opts: &FleetBuilder) -> Result<TestHosts> {
        let mut fleet = TestHosts {
            name: name.to_string(),
            flavor: opts.flavor,
            memory_max: String::new(),
            state_dir: PathBuf::new(),
            identity: PathBuf::new(),
            known_hosts: PathBuf::new(),
            hosts: Vec::new(),
            owned: false,
        };
        // exit status 0 only when every host answers over ssh
        fleet.script(&["status"])?;
        fleet.load_inventory(n)?;
        for (i, host) in fleet.hosts.iter().enumerate() {
            let want = opts
                .memory_max
                .iter()
                .find(|(index, _)| *index == i + 1)
                .map(|(_, size)| size_bytes(size));
            if host.memory_max != want || host.pod_user.is_some() != (opts.flavor == Flavor::Podman)
            {
                return Err(Error::Reuse {
                    fleet: name.to_string(),
                    reason: format!(
                        "host {} is not of the flavor or memory cap asked for",
                        host.name
                    ),
                });
            }
        }
        Ok(fleet)
    }

    /// Run `scripts/testhosts ARGS` for this fleet; stdout on success.
    fn script(&self, args: &[&str]) -> Result<String> {
        script(&self.name, self.flavor, &self.memory_max, args)
    }

    fn load_inventory(&mut self, n: usize) -> Result<()> {
        let json = self.script(&["inventory"])?;
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

    /// The base this fleet booted.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// The fleet name (prefix of host names, netns and veth names).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cached base root the hosts boot (read-only for everyone: a
    /// test copies it, with `cp -al` and new files only, to use it as a
    /// root of its own): `$LAB_TESTHOSTS_CACHE/base-<flavor>`, the cache
    /// being `/var/cache/lab-testhosts` by default, as in the script.
    pub fn base_root(&self) -> PathBuf {
        let cache = std::env::var_os("LAB_TESTHOSTS_CACHE")
            .filter(|c| !c.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/lab-testhosts"));
        cache.join(format!("base-{}", self.flavor.as_str()))
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
            self.script(&["down"])?;
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
            if let Err(e) = self.script(&["down"]) {
                eprintln!(
                    "lab-testhosts: tearing down fleet `{}` failed: {e}",
                    self.name
                );
            }
        }
    }
}

/// `512M` -> bytes, as the script reads a size.
fn size_bytes(size: &str) -> u64 {
    let (digits, unit) = match size.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&size[..i], c),
        _ => (size, 'B'),
    };
    let n: u64 = digits.parse().unwrap_or(0);
    match unit {
        'K' => n << 10,
        'M' => n << 20,
        'G' => n << 30,
        _ => n,
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
fn script(name: &str, flavor: Flavor, memory_max: &str, args: &[&str]) -> Result<String> {
    let path = TestHosts::script_path();
    let command = format!(
        "LAB_TESTHOSTS_NAME={name} LAB_TESTHOSTS_FLAVOR={} LAB_TESTHOSTS_MEMORY_MAX={memory_max} {} {}",
        flavor.as_str(),
        path.display(),
        args.join(" ")
    );
    let out = Command::new(&path)
        .args(args)
        .env("LAB_TESTHOSTS_NAME", name)
        .env("LAB_TESTHOSTS_FLAVOR", flavor.as_str())
        .env("LAB_TESTHOSTS_MEMORY_MAX", memory_max)
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
