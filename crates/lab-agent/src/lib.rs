//! The remote mini-executor and its protocol.
//!
//! The executor is a POSIX sh program ([`EXECUTOR`], `executor.sh`), sent
//! over the SSH connection for each sync and run by `sh` on the target: it
//! needs nothing beyond a shell, coreutils, tar, flock and systemd, serves
//! any CPU architecture, and is never left running. This crate writes the
//! program for one sync (the library plus a plan of calls), the tar stream of
//! new content that follows it on stdin, and reads the executor's report. It
//! does no I/O itself except reading output files into the tar stream.
//!
//! How one apply works on the target (see `executor.sh`):
//! lock, recover from any interrupted run, check the base generation, back
//! up every path the change touches (so the generation can be undone), write
//! new files and symlinks under temporary names in their own directories
//! (`DIR/.lab-stage/NAME`, from the tar stream), rename them into place,
//! remove what lab no longer manages (restoring files that existed before lab
//! took them over), record the new generation last (one rename of
//! `current`), then run the unit actions and report each unit's state.

use lab_core::Digest;

mod check;
mod library;
mod plan;
mod report;

pub use check::{classify, Check, Drift, DriftKind, Seen};
pub use library::{
    cached_form, installing_form, library_id, library_ids, library_missing, library_stored, LIB_DIR,
};
pub use plan::{quote, ApplyPlan, UnitAction, UnitOp};
pub use report::{Report, UnitResult};

/// The executor's library of functions (`executor.sh`, then `check.sh`).
pub const EXECUTOR: &str = concat!(include_str!("executor.sh"), include_str!("check.sh"));

/// Comment lines out (all but the first, which names the program): the
/// program travels with every sync, and fits in the command itself (one
/// SSH packet) only without them.
fn strip(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, l) in text.lines().enumerate() {
        if i > 0 && l.trim_start().starts_with('#') {
            continue;
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// [`EXECUTOR`] as it is sent: without its comments.
pub fn executor() -> &'static str {
    static E: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    E.get_or_init(|| strip(EXECUTOR))
}

/// What the check needs of the executor: the state's location and the
/// current generation.
const CHECK_PRELUDE: &str = r#"set -u
R=${LAB_ROOT:-}
case $R in '' | /*) ;; *) R=$PWD/$R ;; esac
S="$R/var/lib/lab"
current_gen() { if [ -f "$S/current" ]; then read -r g _ <"$S/current"; echo "$g"; else echo 0; fi; }
current_digest() { if [ -f "$S/current" ]; then read -r _ d <"$S/current"; echo "$d"; else echo none; fi; }
"#;

/// The prelude and check.sh: the library of the check's commands.
fn check_library_text() -> &'static str {
    static C: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    C.get_or_init(|| format!("{CHECK_PRELUDE}{}", strip(include_str!("check.sh"))))
}

/// [`check_library_text`], as the start of a program of its own.
fn check_library() -> String {
    let lib = check_library_text();
    let mut p = String::with_capacity(lib.len() + 512);
    p.push_str(lib);
    p
}

/// The program that tells what lab needs to know of the machine, changing
/// nothing (`probe` in check.sh; run it with `LAB_ROOT` set): its
/// generation and manifest digest, when that generation was applied, the
/// drift of the managed paths, unit actions not run yet, the state of
/// `units`, and the applied manifest unless its digest is `known`. One
/// command: the whole of a no-change sync and of `lab status`.
/// `wait`: first wait (up to a minute) for a sync that holds the
/// machine's lock, to see the machine as it leaves it.
pub fn check_program(known: Option<&Digest>, units: &[String], wait: bool) -> String {
    let mut p = check_library();
    p.push_str("probe ");
    p.push_str(&known.map_or("none".to_string(), |d| d.to_hex()));
    p.push_str(if wait { " 1" } else { " 0" });
    for u in units {
        p.push(' ');
        p.push_str(&quote(u));
    }
    p.push('\n');
    p
}

/// The command that journals `actions` (`(OP, UNIT)`) as pending unit
/// actions of the machine's current generation (see `enqueue` in
/// check.sh), then runs `change` (shell) while it still holds the
/// machine's lock (its processes without the lock's fd): the next sync
/// runs them, and none can run them before the change is made. Exits with
/// `change`'s status.
pub fn enqueue_command(root: &str, actions: &[(&str, &str)], change: &str) -> String {
    format!(
        "LAB_ROOT={} sh -c {}",
        quote(root),
        quote(&enqueue_program("", actions, change))
    )
}

/// The program of [`enqueue_command`] (run it with `LAB_ROOT` set), which
/// first runs `before` (shell, outside the lock; the program exits with
/// its status if it fails).
pub fn enqueue_program(before: &str, actions: &[(&str, &str)], change: &str) -> String {
    let mut p = check_library();
    if !before.is_empty() {
        p.push_str("{\n");
        p.push_str(before);
        p.push_str("\n} || exit $?\n");
    }
    p.push_str("enqueue");
    for (op, unit) in actions {
        p.push(' ');
        p.push_str(&quote(op));
        p.push(' ');
        p.push_str(&quote(unit));
    }
    p.push_str(" || exit 1\n{\n");
    p.push_str(change);
    p.push_str("\n} 9>&-\n");
    p
}

/// The program that runs the pending unit actions of the machine's
/// current generation (`base`), as found by a check whose lines hash to
/// `expect`.
pub fn resume_program(base: &Digest, expect: &str, settle_ms: u64) -> String {
    let mut s = String::with_capacity(executor().len() + 128);
    s.push_str(executor());
    s.push_str(&format!(
        "\nresume {} {expect} {settle_ms}\n",
        base.to_hex()
    ));
    s
}

/// Where lab keeps its state on a machine, relative to the machine's root.
pub const STATE_DIR: &str = "/var/lib/lab";

/// Commands up to this size carry the program themselves (no temporary
/// file, no `mktemp` and `head` on the machine); longer programs arrive
/// first on stdin. An SSH packet holds at most 35,000 bytes in libssh2.
const INLINE_MAX: usize = 32 * 1000;

/// The command that runs `program` on the machine, and the bytes to write
/// to its stdin before the rest of the input (the tar stream): none when
/// the program fits in the command.
pub fn bootstrap<'a>(root: &str, program: &'a str, systemd: bool) -> (String, &'a [u8]) {
    let cmd = format!(
        "LAB_ROOT={} LAB_SYSTEMD={} sh -c {}",
        quote(root),
        if systemd { 1 } else { 0 },
        quote(program)
    );
    if cmd.len() <= INLINE_MAX {
        (cmd, b"")
    } else {
        (
            bootstrap_command(root, program.len(), systemd),
            program.as_bytes(),
        )
    }
}

/// The command that runs a program of `len` bytes arriving first on stdin;
/// the rest of stdin (the tar stream) is left for the program. `root` is the
/// machine's root (`""` on a real machine, a directory for local machines).
pub fn bootstrap_command(root: &str, len: usize, systemd: bool) -> String {
    // (a program cut short by a lost connection is never run: the check
    // of its length; and a lost connection does not stop this shell)
    let body = format!(
        "set -eu; trap '' HUP PIPE; d=$(mktemp -d \"${{TMPDIR:-/tmp}}/lab.XXXXXX\"); \
         trap 'rm -rf \"$d\"' EXIT; head -c {len} >\"$d/run.sh\"; \
         [ $(($(wc -c <\"$d/run.sh\"))) -eq {len} ] || exit 10; sh \"$d/run.sh\""
    );
    format!(
        "LAB_ROOT={} LAB_SYSTEMD={} sh -c {}",
        quote(root),
        if systemd { 1 } else { 0 },
        quote(&body)
    )
}

/// The command that prints `GEN DIGEST` of the machine's applied generation
/// (`0 none` before the first sync): the whole of a no-change sync. A
/// second line `interrupted` says that a run was killed half way: the
/// machine is not what `current` says until an executor recovers it.
pub fn probe_command(root: &str) -> String {
    let s = format!("{root}{STATE_DIR}");
    format!(
        "cat {} 2>/dev/null || echo '0 none'; \
         if [ -e {} ] || [ -e {} ]; then echo interrupted; fi",
        quote(&format!("{s}/current")),
        quote(&format!("{s}/inflight")),
        quote(&format!("{s}/undoing"))
    )
}

/// An id for one run of the executor (`[0-9a-z-]`, starting with the
/// time, so that the machine can keep the last few reports by name).
pub fn run_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{:011}-{:x}-{:x}",
        t.as_secs(),
        t.subsec_nanos(),
        std::process::id()
    )
}

/// `program` run as `run` (see [`run_id`]): it keeps its report on the
/// machine, where [`outcome_command`] finds it.
pub fn with_run(run: &str, program: &str) -> String {
    format!("RUN={run}\n{program}")
}

/// The command that prints the report of run `run` once the run is over
/// (it waits for lab's lock): after a lost connection, what the machine
/// did. Prints nothing when the run left no report.
pub fn outcome_command(root: &str, run: &str) -> String {
    let s = format!("{root}{STATE_DIR}");
    let lock = quote(&format!("{s}/lock"));
    format!(
        "if [ -e {lock} ]; then flock -w 600 {lock} cat {} 2>/dev/null; fi; true",
        quote(&format!("{s}/reports/{run}"))
    )
}

/// The command that lists the generations the machine keeps, one a line:
/// `GEN EPOCH DIGEST` (EPOCH: when it was committed, the time of its
/// digest file), in no particular order; nothing before lab's first sync.
pub fn generations_command(root: &str) -> String {
    format!(
        "for d in {}/*; do g=${{d##*/}}; case $g in '' | *[!0-9]*) continue ;; esac; \
         [ -f \"$d/digest\" ] || continue; \
         printf '%s %s %s\\n' \"$g\" \"$(stat -c %Y \"$d/digest\")\" \"$(cat \"$d/digest\")\"; done; true",
        quote(&format!("{root}{STATE_DIR}/gen"))
    )
}

/// A generation a machine keeps, as [`generations_command`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    pub gen: u64,
    /// When it was committed (seconds since the epoch).
    pub at: u64,
    pub digest: String,
}

/// [`generations_command`]'s output, newest first (lines that are not
/// `GEN EPOCH DIGEST` are skipped).
pub fn parse_generations(text: &str) -> Vec<Generation> {
    let mut gens: Vec<Generation> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let gen = f.next()?.parse().ok()?;
            let at = f.next()?.parse().ok()?;
            let digest = f.next()?.to_string();
            f.next().is_none().then_some(Generation { gen, at, digest })
        })
        .collect();
    gens.sort_by_key(|g| std::cmp::Reverse(g.gen));
    gens
}

/// The command that prints the manifest of generation `gen`.
pub fn manifest_command(root: &str, gen: u64) -> String {
    format!(
        "cat {}",
        quote(&format!("{root}{STATE_DIR}/gen/{gen}/manifest"))
    )
}

/// The program that rolls the machine back to generation `target` (0 =
/// before lab's first sync) and then runs `units` (see
/// [`ApplyPlan::program`] for `settle_ms`).
///
/// `expect_pending`: what [`Check::expect_pending`] said of the check the
/// rollback was planned from (`None`: the caller knows nothing is
/// pending); the machine refuses (stale) if its pending actions are others.
pub fn rollback_program(
    target: u64,
    expect_pending: Option<&str>,
    units: &[UnitAction],
    settle_ms: u64,
) -> String {
    let mut s = String::with_capacity(executor().len() + 256);
    s.push_str(executor());
    s.push_str(&format!(
        "\nrollback {target} {}\njournal\n",
        expect_pending.unwrap_or("none")
    ));
    plan::push_journal(&mut s, units);
    plan::push_run(&mut s, units, settle_ms);
    s.push_str("finish\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_are_listed_newest_first() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().to_str().unwrap();
        let gen = |g: &str, digest: Option<&str>| {
            let p = d.path().join(format!("var/lib/lab/gen/{g}"));
            std::fs::create_dir_all(&p).unwrap();
            if let Some(x) = digest {
                std::fs::write(p.join("digest"), format!("{x}\n")).unwrap();
            }
        };
        let none = std::process::Command::new("sh")
            .args(["-c", &generations_command(root)])
            .output()
            .unwrap();
        assert!(none.status.success());
        assert_eq!(
            parse_generations(&String::from_utf8_lossy(&none.stdout)),
            []
        );
        gen("1", Some("aaa"));
        gen("12", Some("ccc"));
        gen("2", Some("bbb"));
        gen("3", None); // (not committed)
        gen("x", Some("zzz"));
        let out = std::process::Command::new("sh")
            .args(["-c", &generations_command(root)])
            .output()
            .unwrap();
        let gens = parse_generations(&String::from_utf8_lossy(&out.stdout));
        let listed: Vec<(u64, &str)> = gens.iter().map(|g| (g.gen, g.digest.as_str())).collect();
        assert_eq!(listed, [(12, "ccc"), (2, "bbb"), (1, "aaa")]);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(gens.iter().all(|g| g.at <= now && g.at + 600 > now));
    }

    /// The script's exit statuses are the ones lab-core names.
    #[test]
    fn the_script_exits_with_lab_core_s_codes() {
        use lab_core::ExecutorExit;
        let stale = format!(
            "out \"stale $(current_gen) $cur\"; exit {}",
            ExecutorExit::Stale.code()
        );
        assert!(EXECUTOR.contains(&stale), "{stale}");
        let failed = format!("exit {}", ExecutorExit::Failed.code());
        assert!(EXECUTOR.matches(&failed).count() >= 5);
        for code in EXECUTOR.split("exit ").skip(1).filter_map(|t| {
            t.split(|c: char| !c.is_ascii_digit())
                .next()
                .filter(|n| !n.is_empty())
        }) {
            let code: i32 = code.parse().unwrap();
            assert!(
                ExecutorExit::from_code(code).is_some() || code == 1,
                "exit {code} is not an ExecutorExit (1: an undo refused, reported by its line)"
            );
        }
    }

    #[test]
    fn small_programs_travel_in_the_command_large_ones_on_stdin() {
        let (cmd, first) = bootstrap("/r", "echo it's me", true);
        assert_eq!(cmd, "LAB_ROOT='/r' LAB_SYSTEMD=1 sh -c 'echo it'\\''s me'");
        assert!(first.is_empty());
        // the executor and a plan for a few files fit in one SSH packet
        assert!(bootstrap("", executor(), true).1.is_empty());
        let big = "x".repeat(INLINE_MAX);
        let (cmd, first) = bootstrap("", &big, false);
        assert_eq!(first, big.as_bytes());
        assert_eq!(cmd, bootstrap_command("", big.len(), false));
    }
}
