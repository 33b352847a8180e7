//! The executor's libraries kept on the machine, so that a command carries
//! only its own few lines.
//!
//! Every program lab runs on a machine starts with a library of shell
//! functions (the executor's 21 KB, the check's 7 KB) and ends with a few
//! calls. Sending the library with every command made it most of what a
//! sync puts on the wire. So a machine keeps the libraries it was sent,
//! `/var/lib/lab/lib/KIND.SHA256` ([`LIB_DIR`]), and lab remembers which
//! (`.lab/sync/NAME.libs`). A command to a machine that has its library
//! names it by digest ([`cached_form`]): the machine checks the file's
//! hash and sources it, or, when it lacks it after all (a file that no
//! longer hashes right, another machine under that name), exits
//! [`ExecutorExit::LibraryMissing`] before doing anything, saying so on
//! stderr. Otherwise the command goes in [`installing_form`]: the library
//! inline, run from memory, and stored for the next commands (atomically,
//! never through a symlink, only where lab's state directory already is;
//! a store that fails is ignored), which the machine says on stderr
//! ([`library_stored`]). Storing a library removes the other versions of
//! its kind, so the directory holds one of each kind in use.

use crate::plan::quote;
use lab_core::{Digest, ExecutorExit};
use std::sync::OnceLock;

/// Where a machine keeps the libraries, relative to its root.
pub const LIB_DIR: &str = "/var/lib/lab/lib";

/// What the machine says on stderr when it lacks a library.
const MISSING: &str = "lab: library missing";

/// What the machine says on stderr when it stored the library it was sent.
const STORED: &str = "lab: library stored";

/// A library a program starts with.
struct Library {
    /// What it is: its file on the machine is `KIND.ID`, and storing one
    /// removes the other versions of its kind.
    kind: &'static str,
    /// Its text, ending in exactly one newline.
    text: String,
    /// sha256 of `text`, in hex.
    id: String,
}

impl Library {
    fn new(kind: &'static str, text: &str) -> Library {
        let text = format!("{}\n", text.trim_end_matches('\n'));
        assert!(!text.lines().any(|l| l == END));
        let id = Digest::of(text.as_bytes()).to_hex();
        Library { kind, text, id }
    }
}

/// The heredoc's end line (never a line of a library).
const END: &str = "LAB_LIBRARY_END";

/// The libraries programs start with (the executor, the check's).
fn libraries() -> &'static [Library; 2] {
    static L: OnceLock<[Library; 2]> = OnceLock::new();
    L.get_or_init(|| {
        [
            Library::new("executor", crate::executor()),
            Library::new("check", crate::check_library_text()),
        ]
    })
}

/// The library `program` holds (from the start of a line: a program may
/// set a variable or two first), what comes before it and after it.
fn split(program: &str) -> Option<(&str, &'static Library, &str)> {
    libraries().iter().find_map(|l| {
        let at = program.find(l.text.as_str())?;
        if at > 0 && !program[..at].ends_with('\n') {
            return None;
        }
        Some((&program[..at], l, &program[at + l.text.len()..]))
    })
}

/// The shell words that set `L` to the library's path on the machine.
fn path_line(lib: &Library) -> String {
    format!("L=\"${{LAB_ROOT:-}}{LIB_DIR}/{}.{}\"\n", lib.kind, lib.id)
}

/// `program` with its library named instead of carried, when it starts
/// with one of the executor's libraries: the machine sources its own
/// copy, checked by hash, or exits [`ExecutorExit::LibraryMissing`]
/// (see [`library_missing`]) having done nothing.
pub fn cached_form(program: &str) -> Option<String> {
    let (head, lib, body) = split(program)?;
    Some(format!(
        "{head}{}if [ -f \"$L\" ] && [ ! -L \"$L\" ] && echo '{}  '\"$L\" | sha256sum -c --status 2>/dev/null; \
         then . \"$L\"; else echo {} >&2; exit {}; fi\n{body}",
        path_line(lib),
        lib.id,
        quote(MISSING),
        ExecutorExit::LibraryMissing.code()
    ))
}

/// `program` with its library inline (as [`cached_form`] would have
/// sourced it), which the machine also stores for the next commands.
/// Programs without a library are returned as they are.
pub fn installing_form(program: &str) -> String {
    let Some((head, lib, body)) = split(program) else {
        return program.to_string();
    };
    // The library is read into a variable (a heredoc: no quoting), run,
    // then stored: a temporary file in the directory, renamed over. Only
    // where lab's state directory is already a real directory (a check
    // of a machine lab never synced changes nothing), never through a
    // symlink; the other libraries go.
    format!(
        "{head}lab_lib=$(cat <<'{END}'\n{text}{END}\n)\n\
         eval \"$lab_lib\"\n\
         {path}if ( d=${{L%/*}}; s=${{d%/lib}}\n\
         [ -d \"$s\" ] && [ ! -L \"$s\" ] || exit 1\n\
         [ -d \"$d\" ] || mkdir -m 700 \"$d\" || exit 1\n\
         [ ! -L \"$d\" ] || exit 1\n\
         t=\"$d/.new.$$\"\n\
         if printf '%s\\n' \"$lab_lib\" >\"$t\" && mv -f \"$t\" \"$L\"; then\n\
         for f in \"$d\"/{kind}.* \"$d\"/.new.*; do [ \"$f\" = \"$L\" ] || [ ! -f \"$f\" ] || rm -f \"$f\"; done\n\
         else rm -f \"$t\"; exit 1; fi ) </dev/null >/dev/null 2>&1; then echo {stored} >&2; fi\n\
         unset lab_lib\n{body}",
        stored = quote(STORED),
        kind = lib.kind,
        text = lib.text,
        path = path_line(lib),
    )
}

/// The digests of the libraries of this lab.
pub fn library_ids() -> impl Iterator<Item = &'static str> {
    libraries().iter().map(|l| l.id.as_str())
}

/// The digest of the library `program` holds, if any: what
/// [`library_stored`] says the machine now keeps.
pub fn library_id(program: &str) -> Option<&'static str> {
    split(program).map(|(_, l, _)| l.id.as_str())
}

/// Whether the stderr of a command sent in [`installing_form`] says the
/// machine stored its library; and that stderr without the line saying so.
pub fn library_stored(stderr: &[u8]) -> (bool, Vec<u8>) {
    let line = format!("{STORED}\n");
    match stderr
        .windows(line.len())
        .position(|w| w == line.as_bytes())
        .filter(|&i| i == 0 || stderr[i - 1] == b'\n')
    {
        Some(i) => {
            let mut rest = stderr[..i].to_vec();
            rest.extend_from_slice(&stderr[i + line.len()..]);
            (true, rest)
        }
        None => (false, stderr.to_vec()),
    }
}

/// Whether a command's output says the machine lacked the library its
/// [`cached_form`] named (nothing ran: send it again in
/// [`installing_form`]).
pub fn library_missing(status: i32, stderr: &str) -> bool {
    status == ExecutorExit::LibraryMissing.code() && stderr.lines().any(|l| l == MISSING)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sh(root: &std::path::Path, program: &str) -> (i32, String, String) {
        let o = Command::new("sh")
            .arg("-c")
            .arg(program)
            .env("LAB_ROOT", root)
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// A program with the check's library: prints the machine's
    /// generation through one of its functions.
    fn program() -> String {
        format!("{}current_gen\n", crate::check_library_text())
    }

    #[test]
    fn a_machine_without_the_library_runs_nothing_then_gets_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let short = cached_form(&program()).unwrap();
        assert!(short.len() < 600, "{short}");
        // no state directory: missing, and nothing is written
        let (code, out, err) = sh(root, &short);
        assert!(library_missing(code, &err), "{code} {out} {err}");
        assert_eq!(out, "");
        let (code, out, err) = sh(root, &installing_form(&program()));
        assert_eq!((code, out.as_str()), (0, "0\n"));
        assert!(
            !root.join("var").exists(),
            "a machine lab never synced is not written"
        );
        assert_eq!(library_stored(err.as_bytes()), (false, vec![]));
        // with lab's state directory: stored, then sourced
        std::fs::create_dir_all(root.join("var/lib/lab")).unwrap();
        std::fs::write(root.join("var/lib/lab/current"), "7 x\n").unwrap();
        let (code, out, err) = sh(root, &installing_form(&program()));
        assert_eq!((code, out.as_str()), (0, "7\n"));
        assert_eq!(library_stored(err.as_bytes()), (true, vec![]));
        assert_eq!(library_id(&program()), Some(libraries()[1].id.as_str()));
        let (code, out, err) = sh(root, &short);
        assert_eq!((code, out.as_str()), (0, "7\n"), "{err}");
        let files = || -> Vec<_> {
            let mut f: Vec<_> = std::fs::read_dir(root.join("var/lib/lab/lib"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            f.sort();
            f
        };
        assert_eq!(files().len(), 1, "{:?}", files());
        // the executor's library beside it (another kind stays); an older
        // version of a kind goes
        std::fs::write(root.join("var/lib/lab/lib/executor.old"), "x").unwrap();
        let (code, _, err) = sh(
            root,
            &installing_form(&format!("{}true\n", crate::executor())),
        );
        assert_eq!(code, 0, "{err}");
        let f = files();
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(
            f[0].starts_with("check.") && f[1].starts_with("executor."),
            "{f:?}"
        );
        assert_ne!(f[1], "executor.old");
    }

    #[test]
    fn a_library_that_no_longer_hashes_right_or_is_a_symlink_is_not_sourced() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("var/lib/lab")).unwrap();
        let (code, _, _) = sh(root, &installing_form(&program()));
        assert_eq!(code, 0);
        let lib = std::fs::read_dir(root.join("var/lib/lab/lib"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let short = cached_form(&program()).unwrap();
        // cut short (a crash after the rename, before the data)
        let text = std::fs::read_to_string(&lib).unwrap();
        std::fs::write(&lib, &text[..text.len() / 2]).unwrap();
        let (code, out, err) = sh(root, &short);
        assert!(library_missing(code, &err), "{code} {out} {err}");
        // installed again over it
        let (code, _, _) = sh(root, &installing_form(&program()));
        assert_eq!(code, 0);
        assert_eq!(std::fs::read_to_string(&lib).unwrap(), text);
        // a symlink planted in its place (to a right copy elsewhere) is
        // neither sourced nor written through
        let elsewhere = root.join("elsewhere");
        std::fs::write(&elsewhere, &text).unwrap();
        std::fs::remove_file(&lib).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &lib).unwrap();
        let (code, _, err) = sh(root, &short);
        assert!(library_missing(code, &err), "{err}");
        // a planted lib directory symlink is not written through either
        let d = root.join("var/lib/lab/lib");
        std::fs::remove_dir_all(&d).unwrap();
        let target = root.join("target");
        std::fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&target, &d).unwrap();
        let (code, _, _) = sh(root, &installing_form(&program()));
        assert_eq!(code, 0);
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
    }

    #[test]
    fn programs_without_a_library_are_sent_as_they_are() {
        assert_eq!(cached_form("echo hi\n"), None);
        assert_eq!(installing_form("echo hi\n"), "echo hi\n");
        let p = format!("RUN=x\n{}resume x y 0\n", crate::executor());
        let short = cached_form(&p).unwrap();
        assert!(short.starts_with("RUN=x\nL="), "{short}");
        assert!(short.ends_with("\nresume x y 0\n"), "{short}");
    }
}
