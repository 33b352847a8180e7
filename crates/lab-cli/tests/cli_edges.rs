//! The rough edges a new user hit (issue 14), each pinned: a closed pipe,
//! help texts that say what the command does, a host that must be quoted,
//! `--explain` cause first, a second `lab build` that waits, secrets in
//! `lab diff` at the command line.

use assert_cmd::Command;
use lab_testkit::{lab, run, TestLab};
use std::io::{BufRead, BufReader};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;

/// A local machine `dev` (a directory in the project) with many files, so
/// that every command has output to write.
fn local_lab() -> TestLab {
    let t = TestLab::new();
    t.file(
        "lab.toml",
        "[facts]\ndomain = \"example.org\"\n\n[machines.dev]\ntransport = \"local\"\nroot = \"dev-root\"\nlayers = [\"web\"]\n",
    );
    for i in 0..200 {
        t.file(
            &format!("layers/web/etc/site{i}.conf.j2"),
            &format!("server {i}.{{{{ domain }}}};\n"),
        );
    }
    t.dir("dev-root");
    t
}

/// Run lab with stdout a pipe whose reading end is already closed.
fn run_into_closed_pipe(t: &TestLab, args: &[&str]) -> (i32, String) {
    let mut fds = [0; 2];
    // SAFETY: pipe() fills two descriptors that we then own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors are fresh and owned by us alone.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("lab"))
        .current_dir(t.path())
        .env("NO_COLOR", "1")
        .args(args)
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn a_closed_pipe_ends_every_command_quietly() {
    let t = local_lab();
    let (code, err) = run_into_closed_pipe(&t, &["build", "--explain"]);
    assert_eq!((code, err.as_str()), (0, ""), "build --explain");
    let (code, err) = run_into_closed_pipe(&t, &["diff", "-m", "dev"]);
    assert_eq!((code, err.as_str()), (0, ""), "diff");
    let (code, err) = run_into_closed_pipe(&t, &["show", "-m", "dev", "/etc/site1.conf"]);
    assert_eq!((code, err.as_str()), (0, ""), "show");
    let (code, err) = run_into_closed_pipe(&t, &["facts", "-m", "dev", "--local"]);
    assert!(!err.contains("panicked"), "facts: {err}");
    assert_eq!(code, 0, "facts: {err}");
}

/// The help line of `option` in `lab CMD --help`, after the option itself.
fn help_of(cmd: &str, option: &str) -> String {
    let t = TestLab::new();
    let (code, out, _) = run(&t, &[cmd, "--help"]);
    assert_eq!(code, 0);
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with(option))
        .unwrap_or_else(|| panic!("`lab {cmd} --help` has no {option}:\n{out}"));
    line.trim_start()
        .split_once("  ")
        .map(|(_, h)| h.trim().to_string())
        .unwrap_or_default()
}

#[test]
fn every_option_has_a_help_text() {
    for cmd in ["show", "facts", "diff", "rollback"] {
        assert!(!help_of(cmd, "-m, --machine").is_empty(), "lab {cmd} -m");
    }
    for cmd in ["watch", "diff", "rollback"] {
        assert!(
            !help_of(cmd, "--accept-new").is_empty(),
            "lab {cmd} --accept-new"
        );
    }
}

#[test]
fn sync_help_says_what_a_bare_sync_does() {
    let h = help_of("sync", "-m, --machine");
    assert!(!h.contains("default: all"), "{h}");
    assert!(h.contains("--all"), "{h}");
    let t = local_lab();
    let (code, out, err) = run(&t, &["sync"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(out, "");
    assert!(err.contains("--all"), "{err}");
    assert!(
        !t.join("dev-root/etc").exists(),
        "a bare sync syncs nothing"
    );
}

#[test]
fn an_unquoted_host_says_it_must_be_quoted() {
    let t = TestLab::new();
    t.file("lab.toml", "[machines.db1]\nhost = 203.0.113.20\n");
    let (code, out, err) = run(&t, &["build"]);
    assert_eq!(code, 2);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "error: the value of `host` must be a quoted string\n \
         --> lab.toml:2:13\n  \
         |\n\
         2 | host = 203.0.113.20\n  \
         |             ^^^^^^^\n  \
         hint: write `host = \"203.0.113.20\"`\n"
    );
}

#[test]
fn explain_names_the_changed_source_file_then_what_it_dirtied() {
    let t = TestLab::new();
    t.file(
        "lab.toml",
        "[facts]\ndomain = \"example.org\"\n\n[machines.a]\nlayers = [\"web\"]\n",
    )
    .file("layers/web/etc/site.conf.j2", "server {{ domain }};\n")
    .file("layers/web/etc/plain", "x\n");
    let (code, _, err) = run(&t, &["build"]);
    assert_eq!(code, 0, "{err}");
    t.file("layers/web/etc/site.conf.j2", "server www.{{ domain }};\n");
    let (code, out, err) = run(&t, &["build", "--explain"]);
    assert_eq!(code, 0, "{err}");
    let explained: Vec<&str> = out
        .lines()
        .take_while(|l| !l.ends_with("entries)"))
        .collect();
    assert_eq!(explained.len(), 3, "{out}");
    assert!(
        explained[0].starts_with("a: source `layers/web/etc/site.conf.j2` changed ("),
        "{out}"
    );
    assert_eq!(explained[1], "a:   -> render `etc/site.conf`", "{out}");
    assert_eq!(explained[2], "a:   -> output `etc/site.conf`", "{out}");
}

#[test]
fn a_second_build_waits_for_the_first_and_says_so() {
    let t = local_lab();
    std::fs::create_dir_all(t.join(".lab")).unwrap();
    // `flock FILE cat` holds lab's lock until its stdin closes, as a
    // running `lab build` would.
    let mut holder = std::process::Command::new("flock")
        .arg(t.join(".lab/lock"))
        .arg("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // flock prints nothing; `cat` echoes this line once the lock is held
    let mut holder_in = holder.stdin.take().unwrap();
    std::io::Write::write_all(&mut holder_in, b"held\n").unwrap();
    let mut held = String::new();
    BufReader::new(holder.stdout.as_mut().unwrap())
        .read_line(&mut held)
        .unwrap();
    assert_eq!(held, "held\n");

    let mut build = std::process::Command::new(assert_cmd::cargo::cargo_bin("lab"))
        .current_dir(t.path())
        .env("NO_COLOR", "1")
        .arg("build")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(build.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    assert_eq!(
        first,
        "warning: another lab process holds `.lab/lock`; waiting for it to finish\n"
    );
    drop(holder_in);
    holder.wait().unwrap();
    let out = build.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    assert_eq!(out.status.code(), Some(0), "{rest}");
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("built 1 machine"),
        "{rest}"
    );
}

#[test]
fn diff_masks_secrets_but_shows_file_references() {
    let t = TestLab::new();
    t.file(
        "lab.toml",
        "[machines.dev]\ntransport = \"local\"\nroot = \"dev-root\"\nlayers = [\"db\"]\n",
    )
    .file(
        "layers/db/etc/db.env",
        "POSTGRES_PASSWORD_FILE=/run/secrets/pg\nPOSTGRES_PASSWORD=hunter2\n",
    )
    .dir("dev-root");
    let (code, out, err) = run(&t, &["diff", "-m", "dev"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("+POSTGRES_PASSWORD_FILE=/run/secrets/pg\n"),
        "{out}"
    );
    assert!(!out.contains("hunter2"), "{out}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn init_then_build_and_sync() {
    let t = TestLab::new();
    let (code, out, err) = run(&t, &["init", "new"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("created a lab in new"), "{out}");
    assert_eq!(t.read("new/.gitignore"), ".lab/\nlocal-root/\n");
    let (code, _, err) = run(&t, &["-C", "new", "build", "-q"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&t, &["-C", "new", "sync", "-m", "@local", "-q"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        t.read("new/local-root/etc/motd"),
        "local.example.org: managed by lab; local edits are overwritten.\n"
    );
}

#[test]
fn init_never_overwrites() {
    let t = TestLab::new();
    t.file("p/.gitignore", "mine\n");
    let (code, out, err) = run(&t, &["init", "p"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.starts_with("error: `p/.gitignore` exists;"), "{err}");
    assert_eq!(t.read("p/.gitignore"), "mine\n");
    assert!(!t.join("p/lab.toml").exists(), "nothing is written");
}

#[test]
fn completions_for_three_shells_and_a_man_page() {
    let t = TestLab::new();
    for (shell, marker) in [
        ("bash", "complete -F _lab"),
        ("zsh", "#compdef lab"),
        ("fish", "complete -c lab"),
    ] {
        let (code, out, err) = run(&t, &["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains(marker), "{shell}: {out}");
        // the subcommands and the new options are in it
        assert!(out.contains("rollback") && out.contains("--all"), "{shell}");
    }
    // bash can load it
    let (_, bash, _) = run(&t, &["completions", "bash"]);
    t.file("lab.bash", &bash);
    let ok = std::process::Command::new("bash")
        .arg("-n")
        .arg(t.join("lab.bash"))
        .status()
        .unwrap();
    assert!(ok.success());
    let (code, man, err) = run(&t, &["man"]);
    assert_eq!(code, 0, "{err}");
    assert!(man.contains(".TH lab 1"), "{man}");
    assert!(man.contains("completions"), "{man}");
    let (code, err) = run_into_closed_pipe(&t, &["completions", "zsh"]);
    assert_eq!((code, err.as_str()), (0, ""));
}

/// Two machines over layers `_` and `web`; `b` overrides the motd.
fn two_with_override() -> TestLab {
    let t = TestLab::new();
    t.file(
        "lab.toml",
        "[machines.a]\nlayers = [\"web\"]\n\n[machines.b]\nlayers = [\"web\"]\n\n[machines.c]\n",
    )
    .file("layers/_/etc/motd.j2", "{{ machine }}\n")
    .file("layers/web/etc/site.conf", "x\n")
    .file("layers/_/_partials/h.j2", "h\n")
    .file("machines/b/etc/motd", "b's own\n");
    t
}

#[test]
fn show_a_source_file_names_the_machines_and_where_it_lands() {
    let t = two_with_override();
    let (code, out, err) = run(&t, &["show", "layers/_/etc/motd.j2"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "layers/_/etc/motd.j2 (template)\n  \
         a: /etc/motd\n  \
         b: /etc/motd, overridden by machines/b/etc/motd\n  \
         c: /etc/motd\n"
    );
    let (code, out, _) = run(&t, &["show", "layers/web/etc/site.conf", "-m", "b*"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "layers/web/etc/site.conf (file)\n  b: /etc/site.conf\n"
    );
    // from inside the layer, relative to the working directory
    let out = lab(&t, &["show", "etc/site.conf"])
        .current_dir(t.join("layers/web"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "layers/web/etc/site.conf (file)\n  a: /etc/site.conf\n  b: /etc/site.conf\n"
    );
    let (code, out, _) = run(&t, &["show", "layers/_/_partials/h.j2"]);
    assert_eq!(code, 0);
    assert!(out.contains("a partial"), "{out}");
    // a path on a machine still needs the machine
    let (code, _, err) = run(&t, &["show", "/etc/motd"]);
    assert_eq!(code, 2);
    assert!(err.contains("-m NAME"), "{err}");
}

#[test]
fn color_always_never_and_auto() {
    let t = TestLab::new();
    t.file("lab.toml", "[machines.a]\n");
    let err = |args: &[&str], env: (&str, &str)| {
        let out = lab(&t, args).env(env.0, env.1).output().unwrap();
        String::from_utf8(out.stderr).unwrap()
    };
    // --color always wins over NO_COLOR and a pipe
    let e = err(
        &["build", "-m", "x", "--color", "always"],
        ("NO_COLOR", "1"),
    );
    assert!(e.contains("\u{1b}["), "{e:?}");
    assert!(e.contains("unknown machine"), "{e:?}");
    let e = err(
        &["build", "-m", "x", "--color", "never"],
        ("CLICOLOR_FORCE", "1"),
    );
    assert!(!e.contains('\u{1b}'), "{e:?}");
    let e = err(&["build", "-m", "x"], ("NO_COLOR", "1"));
    assert!(!e.contains('\u{1b}'), "{e:?}");
    // auto: not a terminal, so no colour (unless CLICOLOR_FORCE says so)
    let mut c = Command::cargo_bin("lab").unwrap();
    let out = c
        .current_dir(t.path())
        .env_remove("NO_COLOR")
        .args(["build", "-m", "x"])
        .output()
        .unwrap();
    assert!(!String::from_utf8(out.stderr).unwrap().contains('\u{1b}'));
}

#[test]
fn verbose_says_what_lab_connects_to_and_why() {
    let t = TestLab::new();
    t.file(
        "lab.toml",
        "# a comment\n[machines.a]\ntransport = \"local\"\nroot = \"roots/a\"\ntags = [\"web\"]\n",
    )
    .file("layers/_/etc/motd", "hi\n")
    .file("layers/_/etc/issue", "hi\n")
    .dir("roots/a");
    let (code, _, err) = run(&t, &["sync", "-m", "@web"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err, "", "quiet without -v");
    t.file("layers/_/etc/motd", "hello\n");
    let (code, _, err) = run(&t, &["-v", "sync", "-m", "@web"]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "INFO project lab.toml (1 machines)",
        "INFO -m @web selects a",
        "INFO a: local machine, root roots/a (lab.toml:2)",
        "INFO a: sync done in ",
    ] {
        assert!(err.contains(want), "{want}: {err}");
    }
    assert!(!err.contains("DEBUG"), "{err}");
    t.file("layers/_/etc/motd", "hello again\n");
    let (code, _, err) = run(&t, &["-vv", "build"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("DEBUG a: wrote /etc/motd"), "{err}");
    assert!(!err.contains("/etc/issue"), "only what was written: {err}");
}
