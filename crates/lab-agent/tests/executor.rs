//! The executor, run for real by `sh` on this host against a directory that
//! plays a machine's root (the same program runs over SSH on real machines).

use lab_agent::{bootstrap, bootstrap_command, quote, ApplyPlan, Report, EXECUTOR};
use lab_core::Digest;
use lab_manifest::{Entry, EntryKind, Manifest};
use lab_testkit::{tree_listing, TestLab};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// The manifest of a directory tree, as `lab build` would write it.
fn manifest_of(dir: &Path) -> Manifest {
    let mut m = Manifest::new("t");
    for e in walkdir::WalkDir::new(dir).min_depth(1) {
        let e = e.unwrap();
        let path = e
            .path()
            .strip_prefix(dir)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        let kind = if meta.is_dir() {
            EntryKind::Dir
        } else if meta.file_type().is_symlink() {
            EntryKind::Symlink {
                target: std::fs::read_link(e.path())
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .into(),
            }
        } else {
            let data = std::fs::read(e.path()).unwrap();
            EntryKind::File {
                size: data.len() as u64,
                sha256: Digest::of(&data),
            }
        };
        m.insert(Entry {
            path,
            mode,
            kind,
            owner: None,
            group: None,
        });
    }
    m
}

struct Machine {
    root: TestLab,
}

struct Outcome {
    code: i32,
    report: Report,
    stdout: String,
}

impl Machine {
    fn new() -> Machine {
        Machine {
            root: TestLab::new(),
        }
    }

    fn current(&self) -> (u64, Option<Digest>) {
        let t = std::fs::read_to_string(self.root.join("var/lib/lab/current"))
            .unwrap_or("0 none".into());
        let mut it = t.split_whitespace();
        (
            it.next().unwrap().parse().unwrap(),
            it.next().and_then(Digest::from_hex),
        )
    }

    fn applied(&self) -> Manifest {
        let (gen, _) = self.current();
        if gen == 0 {
            return Manifest::new("t");
        }
        Manifest::parse(
            &std::fs::read_to_string(self.root.join(&format!("var/lib/lab/gen/{gen}/manifest")))
                .unwrap(),
        )
        .unwrap()
    }

    fn run(&self, program: &str, tar: &[u8]) -> Outcome {
        self.run_named(program, tar, "")
    }

    /// `run`, as the run named `run` (its report kept on the machine).
    fn run_named(&self, program: &str, tar: &[u8], run: &str) -> Outcome {
        // the program in the command (as for every plan up to 96 KiB)
        let (cmd, first) = bootstrap(self.root.path().to_str().unwrap(), program, false);
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .env("RUN", run)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        {
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(first).unwrap();
            let _ = stdin.write_all(tar);
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        Outcome {
            code: out.status.code().unwrap_or(-1),
            report: Report::parse(&stdout),
            stdout,
        }
    }

    /// Apply the tree in `out` (an output directory) as the next generation.
    fn apply(&self, out: &Path) -> Outcome {
        let (program, tar) = self.prepare(out);
        self.run(&program, &tar)
    }

    fn prepare(&self, out: &Path) -> (String, Vec<u8>) {
        let old = self.applied();
        let new = manifest_of(out);
        let (_, base) = self.current();
        let plan = ApplyPlan::new(&old, &new);
        let program = plan.program(base.as_ref(), &new.digest(), 5, &[], 0);
        let mut tar = Vec::new();
        plan.write_tar(out, &new.to_text(), &mut tar).unwrap();
        (program, tar)
    }

    fn rollback(&self, to: u64) -> Outcome {
        self.run(&lab_agent::rollback_program(to, None, &[], 0), b"")
    }

    /// The machine's tree without lab's own state.
    fn tree(&self) -> String {
        tree_listing(self.root.path())
            .lines()
            .filter(|l| {
                !l.starts_with("var/lib/lab")
                    && !l.starts_with("var/ ")
                    && !l.starts_with("var/lib/ ")
            })
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

/// An output tree with a few kinds of entries.
fn tree_v1() -> TestLab {
    let t = TestLab::new();
    t.file("etc/motd", "hello\n")
        .file("etc/app/app.conf", "port = 1\n")
        .file("etc/kind", "a file that becomes a directory\n")
        .dir("etc/dir-to-link")
        .file("etc/dir-to-link/inner", "x\n")
        .symlink("etc/link-to-file", "/nonexistent")
        .file("usr/local/bin/tool", "#!/bin/sh\n")
        .chmod("usr/local/bin/tool", 0o755)
        .file("etc/name with 'quotes' and spaces", "q\n");
    t
}

fn tree_v2() -> TestLab {
    let t = TestLab::new();
    t.file("etc/motd", "hello again\n")
        .file("etc/app/app.conf", "port = 1\n")
        .file("etc/kind/now-a-dir", "y\n")
        .symlink("etc/dir-to-link", "/tmp")
        .file("etc/link-to-file", "now a file\n")
        .file("usr/local/bin/tool", "#!/bin/sh\n")
        .chmod("usr/local/bin/tool", 0o700)
        .dir("srv/empty");
    t
}

fn expect_tree(m: &Machine, out: &TestLab) {
    assert_eq!(m.tree(), tree_listing(out.path()));
}

#[test]
fn first_apply_then_changes_then_nothing() {
    let m = Machine::new();
    let v1 = tree_v1();
    let r = m.apply(v1.path());
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(r.report.now.unwrap().0, 1);
    expect_tree(&m, &v1);

    let v2 = tree_v2();
    let r = m.apply(v2.path());
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(m.current().0, 2);
    expect_tree(&m, &v2);

    // an empty plan still commits a generation only when asked; here the
    // manifests are equal, so the plan is empty
    let old = m.applied();
    assert!(ApplyPlan::new(&old, &manifest_of(v2.path())).is_empty());
}

/// Names in a directory of the machine's state, sorted.
fn state_names(m: &Machine, dir: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(m.root.join(&format!("var/lib/lab/{dir}")))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn the_last_generations_and_reports_are_kept_and_no_more() {
    let m = Machine::new();
    let (v1, v2) = (tree_v1(), tree_v2());
    for i in 1..=37u64 {
        let (program, tar) = m.prepare(if i % 2 == 1 { v1.path() } else { v2.path() });
        // (report names start with the time: here a counter)
        let r = m.run_named(&program, &tar, &format!("t{i:04}"));
        assert_eq!(r.code, 0, "{}", r.stdout);
        let mut gens: Vec<u64> = state_names(&m, "gen")
            .iter()
            .map(|g| g.parse().unwrap())
            .collect();
        gens.sort();
        let want: Vec<u64> = (i.saturating_sub(4).max(1)..=i).collect();
        assert_eq!(gens, want, "after generation {i}: the last 5 (keep = 5)");
        let reports = state_names(&m, "reports");
        assert!(
            reports.len() >= (i as usize).min(20) && reports.len() <= 30,
            "after run {i}: {reports:?}"
        );
        let newest: Vec<String> = (i.saturating_sub(19).max(1)..=i)
            .map(|n| format!("t{n:04}"))
            .collect();
        assert!(
            newest.iter().all(|n| reports.contains(n)),
            "after run {i}: the last 20 runs' reports are kept: {reports:?}"
        );
    }
    // the oldest kept generation is still one to go back to
    let r = m.rollback(33);
    assert_eq!(r.code, 0, "{}", r.stdout);
    expect_tree(&m, &v1);
    assert_ne!(m.rollback(31).code, 0, "generation 32 is gone");
}

#[test]
fn stale_base_is_refused_without_changes() {
    let m = Machine::new();
    let v1 = tree_v1();
    let (program, tar) = m.prepare(v1.path());
    assert_eq!(m.apply(tree_v2().path()).code, 0);
    let before = m.tree();
    let r = m.run(&program, &tar);
    assert_eq!(r.code, 3, "{}", r.stdout);
    assert_eq!(r.report.stale.unwrap().0, 1);
    assert_eq!(m.tree(), before);
}

#[test]
fn rollback_restores_each_generation_exactly() {
    let m = Machine::new();
    m.root.file("etc/motd", "the distribution's motd\n");
    let pristine = m.tree();
    let (v1, v2) = (tree_v1(), tree_v2());
    assert_eq!(m.apply(v1.path()).code, 0);
    let after_v1 = m.tree();
    assert_eq!(m.apply(v2.path()).code, 0);
    let r = m.rollback(1);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(m.tree(), after_v1);
    assert_eq!(m.current().0, 1);
    let r = m.rollback(0);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(m.tree(), pristine, "before lab: the original motd is back");
    // and forward again
    assert_eq!(m.apply(v2.path()).code, 0);
    expect_tree(&m, &v2);
}

#[test]
fn a_file_lab_took_over_is_restored_when_lab_lets_go() {
    let m = Machine::new();
    m.root
        .file("etc/motd", "original\n")
        .file("etc/app/foreign.conf", "not lab's\n");
    let v1 = tree_v1();
    assert_eq!(m.apply(v1.path()).code, 0);
    assert_eq!(m.root.read("etc/motd"), "hello\n");
    // a file someone drops into a directory lab created
    m.root.file("usr/local/bin/foreign", "someone's\n");
    let v0 = TestLab::new();
    v0.file("etc/other", "x\n");
    let r = m.apply(v0.path());
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(
        m.root.read("etc/motd"),
        "original\n",
        "restored, not deleted"
    );
    assert!(
        r.report.notes.iter().any(|n| n == "restored /etc/motd"),
        "{:?}",
        r.report.notes
    );
    // etc/app existed before lab: it stays, with what lab did not put there
    assert_eq!(m.root.read("etc/app/foreign.conf"), "not lab's\n");
    assert!(!m.root.join("etc/app/app.conf").exists());
    // usr/local/bin was lab's, but holds a foreign file now: kept
    assert_eq!(m.root.read("usr/local/bin/foreign"), "someone's\n");
    assert!(!m.root.join("usr/local/bin/tool").exists());
    assert_eq!(
        r.report.notes,
        vec![
            "restored /etc/motd",
            "kept /usr/local/bin",
            "kept /usr/local",
            "kept /usr"
        ]
    );
}

#[test]
fn never_writes_through_a_symlink_it_did_not_create() {
    let m = Machine::new();
    let elsewhere = TestLab::new();
    m.root.symlink("etc", elsewhere.path().to_str().unwrap());
    let before = tree_listing(elsewhere.path());
    let r = m.apply(tree_v1().path());
    assert_eq!(r.code, 10, "{}", r.stdout);
    assert_eq!(
        r.report.failures,
        vec!["unsafe /etc is a symlink lab did not create"]
    );
    assert_eq!(tree_listing(elsewhere.path()), before);
    assert_eq!(m.current().0, 0);
}

#[test]
fn a_failure_midway_puts_everything_back() {
    let m = Machine::new();
    let v1 = tree_v1();
    assert_eq!(m.apply(v1.path()).code, 0);
    let after_v1 = m.tree();
    // a directory that must become a file but holds a foreign file
    let v2 = tree_v2();
    m.root.file("etc/dir-to-link/foreign", "f\n");
    let r = m.apply(v2.path());
    assert_eq!(r.code, 10, "{}", r.stdout);
    assert_eq!(
        r.report.failures,
        vec!["cannot replace directory /etc/dir-to-link: it holds files lab did not create"]
    );
    let mut expected = after_v1.clone();
    expected = expected.replace(
        "etc/dir-to-link/inner",
        "etc/dir-to-link/foreign 0644 \"f\\n\"\netc/dir-to-link/inner",
    );
    assert_eq!(m.tree(), expected);
    assert_eq!(m.current().0, 1);
}

#[test]
fn a_dropped_stream_leaves_the_old_generation() {
    let m = Machine::new();
    let v1 = tree_v1();
    assert_eq!(m.apply(v1.path()).code, 0);
    let after_v1 = m.tree();
    let (program, tar) = m.prepare(tree_v2().path());
    for cut in [0, 100, 512, 1500, tar.len() / 2, tar.len() - 1600] {
        let r = m.run(&program, &tar[..cut]);
        assert_ne!(r.code, 0, "cut at {cut}: {}", r.stdout);
        assert_eq!(m.tree(), after_v1, "cut at {cut}");
        assert_eq!(m.current().0, 1);
    }
    let r = m.run(&program, &tar);
    assert_eq!(r.code, 0, "{}", r.stdout);
    expect_tree(&m, &tree_v2());
}

/// SIGKILL the executor at many moments: every file is always whole (old or
/// new content), and the next apply converges.
#[test]
fn killed_at_any_moment_then_converges() {
    let (v1, v2) = (tree_v1(), tree_v2());
    let m1 = manifest_of(v1.path());
    let m2 = manifest_of(v2.path());
    for i in 0..20u64 {
        let m = Machine::new();
        assert_eq!(m.apply(v1.path()).code, 0);
        let (program, tar) = m.prepare(v2.path());
        // slow the executor down a little so kills land in different phases
        let program = program
            .replace("\nextract ", "\nsleep 0.05; extract ")
            .replace("\nplace ", "\nsleep 0.02; place ");
        // the program first on stdin (as for plans over 96 KiB)
        let cmd = bootstrap_command(m.root.path().to_str().unwrap(), program.len(), false);
        let mut child = Command::new("setsid")
            .args(["sh", "-c", &cmd])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(program.as_bytes()).unwrap();
        let _ = stdin.write_all(&tar);
        drop(stdin);
        std::thread::sleep(std::time::Duration::from_millis(5 + i * 7));
        // kill the whole process group (sh, tar, mv ...)
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
        // every managed file is whole: old or new
        for (path, e) in m1.entries.iter().chain(m2.entries.iter()) {
            if let EntryKind::File { .. } = e.kind {
                let p = m.root.join(path);
                if let Ok(data) = std::fs::read(&p) {
                    let d = Digest::of(&data);
                    let ok = [m1.get(path), m2.get(path)]
                        .iter()
                        .flatten()
                        .any(|x| matches!(&x.kind, EntryKind::File { sha256, .. } if *sha256 == d));
                    assert!(ok, "kill {i}: {path} is neither old nor new");
                }
            }
        }
        let r = m.apply(v2.path());
        assert_eq!(r.code, 0, "kill {i}: {}", r.stdout);
        expect_tree(&m, &v2);
    }
}

#[test]
fn quoting_survives_hostile_names() {
    for s in [
        "plain",
        "with space",
        "it's",
        "$(rm -rf /)",
        "`x`",
        "a\nb",
        "\\",
        "\"",
        "*",
    ] {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", quote(s)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), s);
    }
    assert!(EXECUTOR.starts_with("# lab executor"));
}

/// An undo (here: a rollback) checks every path before it writes any: one
/// planted symlink, and nothing at all is written, nor anything through
/// the symlink; the rollback says why and can be retried.
#[test]
fn an_undo_that_meets_a_planted_symlink_writes_nothing() {
    let m = Machine::new();
    let elsewhere = TestLab::new();
    let v1 = TestLab::new();
    v1.file("etc/a/x", "1\n").file("srv/b/y", "1\n");
    let v2 = TestLab::new();
    v2.file("etc/a/x", "2\n").file("srv/b/y", "2\n");
    assert_eq!(m.apply(v1.path()).code, 0);
    assert_eq!(m.apply(v2.path()).code, 0);
    std::fs::rename(m.root.join("srv/b"), m.root.join("srv/b.moved")).unwrap();
    m.root.symlink("srv/b", elsewhere.path().to_str().unwrap());
    let before = m.tree();
    let r = m.rollback(1);
    assert_eq!(r.code, 10, "{}", r.stdout);
    assert_eq!(
        r.report.failures[0],
        "unsafe /srv/b is a symlink lab did not create (writing /srv/b/)"
    );
    assert_eq!(m.tree(), before, "nothing written");
    assert_eq!(tree_listing(elsewhere.path()), "");
    assert_eq!(m.current().0, 2);
    std::fs::remove_file(m.root.join("srv/b")).unwrap();
    std::fs::rename(m.root.join("srv/b.moved"), m.root.join("srv/b")).unwrap();
    let r = m.rollback(1);
    assert_eq!(r.code, 0, "{}", r.stdout);
    expect_tree(&m, &v1);
}

/// A directory whose mode changes, replaced by a symlink to elsewhere: the
/// sync refuses, and the mode of what the symlink points to stays.
#[test]
fn a_re_moded_directory_that_became_a_symlink_is_refused() {
    let m = Machine::new();
    let elsewhere = TestLab::new();
    elsewhere.file("keep", "k\n").chmod(".", 0o755);
    let v1 = TestLab::new();
    v1.file("srv/d/x", "1\n").chmod("srv/d", 0o755);
    let v2 = TestLab::new();
    v2.file("srv/d/x", "1\n").chmod("srv/d", 0o700);
    assert_eq!(m.apply(v1.path()).code, 0);
    std::fs::remove_dir_all(m.root.join("srv/d")).unwrap();
    m.root.symlink("srv/d", elsewhere.path().to_str().unwrap());
    let r = m.apply(v2.path());
    assert_eq!(r.code, 10, "{}", r.stdout);
    assert_eq!(
        r.report.failures,
        vec!["unsafe /srv/d is a symlink lab did not create"]
    );
    let mode = std::fs::metadata(elsewhere.path())
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o755);
}
