//! Real machines for lab's tests; this crate owns the test fleet, nothing else.
//!
//! Two fixtures, both real, no mocks:
//!
//! * [`TestHosts`]: a fleet of systemd-nspawn containers, each booting real
//!   systemd and a real sshd in its own network namespace, reachable at
//!   `10.200.X.2:22` as `root`. It drives `scripts/testhosts` (located
//!   relative to this crate's manifest dir) and tears the fleet down on drop.
//!   Needs root. See `docs/testhosts.md`.
//! * [`SshdFixture`]: one `/usr/sbin/sshd` on `127.0.0.1` with a random port,
//!   generated host and client keys, for pure transport tests. Cheap (tens of
//!   milliseconds); killed by PID on drop.
//!
//! Both hand out [`Host`]s: address, port, user, identity file and a
//! known_hosts file that pins the host key, so callers can use
//! `StrictHostKeyChecking=yes` (system `ssh`) or check the key themselves
//! (`ssh2`).
//!
//! ```no_run
//! let fleet = lab_testhosts::TestHosts::up(3)?;
//! for host in fleet.hosts() {
//!     let out = host.run("systemctl is-system-running")?;
//!     assert_eq!(out.trim(), "running");
//! }
//! # Ok::<(), lab_testhosts::Error>(())
//! ```

mod error;
mod fleet;
mod host;
mod oci;
mod sshd;

pub use error::{Error, Result};
pub use fleet::{Flavor, FleetBuilder, TestHosts, REUSE_ENV, REUSE_MACHINES_ENV, REUSE_PODMAN_ENV};
pub use host::Host;
pub use oci::OciImage;
pub use sshd::SshdFixture;

/// Whether the current process runs as root (euid 0).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The fleet a test binary shares among its tests: booted by the first
/// call (with `boot`), torn down when the process exits.
static SHARED: std::sync::OnceLock<std::sync::Mutex<Option<TestHosts>>> =
    std::sync::OnceLock::new();

extern "C" fn shared_teardown() {
    if let Some(m) = SHARED.get() {
        if let Ok(mut f) = m.lock() {
            drop(f.take());
        }
    }
}

/// Host `i` (1-based) of this process's shared fleet, booting it with
/// `boot` on the first call (later calls' `boot` is not run): one fleet
/// per test binary, however many tests use it.
pub fn shared_host(i: usize, boot: impl FnOnce() -> Result<TestHosts>) -> Host {
    let m = SHARED.get_or_init(|| {
        let fleet = boot().expect("boot the test hosts");
        // SAFETY: registers a plain extern "C" fn with no captured state.
        unsafe { libc::atexit(shared_teardown) };
        std::sync::Mutex::new(Some(fleet))
    });
    m.lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .expect("the fleet is up until the process exits")
        .hosts()[i - 1]
        .clone()
}
