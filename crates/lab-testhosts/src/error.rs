use std::path::PathBuf;
use std::process::ExitStatus;

/// Everything that can go wrong while providing test hosts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The fleet needs root: overlay mounts, network namespaces, veths and
    /// systemd-nspawn.
    #[error(
        "{what} needs root (euid is {euid}): it mounts overlays, creates network \
         namespaces and veths and runs systemd-nspawn; run the tests as root"
    )]
    NotRoot { what: &'static str, euid: u32 },

    /// A program could not be started at all.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },

    /// A program ran and failed.
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        command: String,
        status: ExitStatus,
        /// stderr (and stdout when useful), trimmed to the last lines
        output: String,
    },

    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// `scripts/testhosts inventory` printed something we cannot parse.
    #[error("inventory of fleet `{fleet}` is not valid: {source}")]
    Inventory {
        fleet: String,
        source: serde_json::Error,
    },

    /// A fleet came up with fewer hosts than asked for.
    #[error("fleet `{fleet}` has {have} hosts, {want} wanted")]
    TooFewHosts {
        fleet: String,
        have: usize,
        want: usize,
    },

    /// A running fleet named for reuse does not fit what was asked for.
    #[error("fleet `{fleet}` cannot be reused: {reason}")]
    Reuse { fleet: String, reason: String },

    /// The loopback sshd did not come up.
    #[error("sshd fixture did not start: {reason}\n--- sshd log ---\n{log}")]
    Sshd { reason: String, log: String },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Keep the last `max` lines of a program's output for an error message.
pub(crate) fn tail(text: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max);
    lines[start..].join("\n")
}
