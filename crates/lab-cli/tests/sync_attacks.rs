//! The executor's promises under attack, on real test hosts: rollback and
//! recovery never write through a symlink lab did not create nor delete a
//! directory that was there before lab; a dropped connection does not stop
//! an apply, and lab reads its outcome; a killed rollback is a failure; a
//! full disk says where and how much; recovery undoes only what was in
//! flight. And a property test mixing all of it.

mod common_hosts;

use assert_cmd::Command;
use common_hosts::*;
use lab_testhosts::{Host, TestHosts};
use lab_testkit::TestLab;
use std::collections::BTreeMap;
use std::time::Duration;

fn lab_cmd(lab: &TestLab) -> Command {
    let mut c = Command::cargo_bin("lab").unwrap();
    c.current_dir(lab.path()).env("NO_COLOR", "1");
    c
}

/// Run `lab ARGS`: (exit code, stdout, stderr).
fn labrun(lab: &TestLab, args: &[&str]) -> (i32, String, String) {
    let out = lab_cmd(lab).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// SIGKILL the executor on the host: its whole process group (the shell,
/// and its tar, cp, mv), i.e. every process holding lab's lock.
const KILL_EXECUTOR: &str = r#"p=$(pgrep -o -f '[l]ab[.][A-Za-z0-9]*/run[.]sh|^sh -c (RUN=|# lab executor)')
if [ -n "$p" ]; then g=$(ps -o pgid= -p "$p" | tr -d ' '); kill -KILL "-$g" && echo killed; fi"#;

/// Drop every ssh connection to the host (lab's included).
const DROP_CONNECTIONS: &str = "pkill -KILL -f 'sshd: root@notty'; echo dropped";

/// On the host: wait until the shell condition `cond` holds, then run
/// `then`. Returns once the watcher is running; [`stop`] ends it (if
/// `cond` never held) and returns what `then` printed.
fn when(h: &Host, cond: &str, then: &str) -> std::thread::JoinHandle<String> {
    let _ = h.run("rm -f /run/lab-watch.ready /run/lab-watch.stop");
    let script = format!(
        ": >/run/lab-watch.ready; until {cond} || [ -e /run/lab-watch.stop ]; do :; done; \
         [ -e /run/lab-watch.stop ] || {{ {then}\n}}"
    );
    let mut c = h.ssh_command();
    c.arg(format!("timeout 300 sh -c {}", lab_agent::quote(&script)));
    let handle = std::thread::spawn(move || {
        let out = c.output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    while h
        .run("test -e /run/lab-watch.ready && echo y")
        .unwrap_or_default()
        != "y\n"
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    handle
}

/// End a watcher started by [`when`]: what it printed.
fn stop(h: &Host, w: std::thread::JoinHandle<String>) -> String {
    let _ = h.run(": >/run/lab-watch.stop");
    w.join().unwrap()
}

/// `N` files of ~1 KiB in 40 directories under /srv/data, of `version`.
fn data(lab: &TestLab, n: usize, version: u32) {
    data_in(lab, n, 40, version)
}

/// `N` files of ~1 KiB in `dirs` directories under /srv/data.
fn data_in(lab: &TestLab, n: usize, dirs: usize, version: u32) {
    for i in 0..n {
        lab.file(
            &format!("layers/base/srv/data/d{:02}/f{i}", i % dirs),
            &format!("version {version} file {i}\n{}", "x".repeat(1000)),
        );
    }
}

fn converged(h: &Host, lab: &TestLab) {
    let m = manifest(lab, "h1");
    assert_eq!(remote_state(h, &m), expected_state(&m));
    assert_eq!(
        run(
            h,
            "find / -xdev -name .lab-stage 2>/dev/null | head -3; test -e /var/lib/lab/inflight && echo inflight; true"
        ),
        ""
    );
}

/// A generation that turned a file into a directory, which then got a file
/// lab did not create: rolling it back keeps that directory (and the file)
/// and says so, instead of stopping half way through the undo (found by
/// the property test below, seed 1796416270570847105).
#[test]
fn rollback_keeps_a_directory_holding_foreign_files_where_a_file_was() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    let lab = project(fleet.hosts());
    lab.file("layers/base/srv/t/k", "a file\n");
    sync(&lab, "h1");
    lab.remove("layers/base/srv/t/k")
        .file("layers/base/srv/t/k/inner", "inner\n");
    sync(&lab, "h1");
    run(h, "echo foreign >/srv/t/k/foreign-1");
    let (code, out, err) = labrun(&lab, &["rollback", "-m", "h1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("back on generation 1"), "{out}");
    assert!(out.contains("kept /srv/t/k"), "{out}");
    assert_eq!(
        run(h, "ls -A /srv/t/k; cat /srv/t/k/foreign-1"),
        "foreign-1\nforeign\n"
    );
    // nothing left half done: a rollback to 0 works and keeps it too
    let (code, out, err) = labrun(&lab, &["rollback", "-m", "h1", "--to", "0"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        run(
            h,
            "ls -A /srv/t/k; test -e /var/lib/lab/undoing && echo undoing; true"
        ),
        "foreign-1\n"
    );
}

/// Item 1: directories that existed (empty) before lab's first sync stay
/// on a rollback to 0, with their own mode; the ones lab created go.
#[test]
fn rollback_to_zero_keeps_directories_that_were_there_before() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    // a stock Debian: /usr/local/bin exists and is empty
    let probe = "for d in /usr /usr/local /usr/local/bin /usr/local/sbin /etc/ssh/sshd_config.d /srv; do \
                 stat -c '%n %a %u:%g %F' $d; ls -A $d | head -20; done; ls -d /srv/lab-new 2>&1; true";
    let before = run(h, probe);
    assert!(before.contains("/usr/local/bin 755 0:0 directory\n"));
    let lab = project(fleet.hosts());
    lab.file("layers/base/usr/local/bin/hello", "#!/bin/sh\necho hi\n")
        .chmod("layers/base/usr/local/bin/hello", 0o755)
        .chmod("layers/base/usr/local/bin", 0o750)
        .file("layers/base/usr/local/sbin/tool", "t\n")
        .file("layers/base/etc/ssh/sshd_config.d/zz-lab.conf", "# lab\n")
        .file("layers/base/srv/lab-new/deep/x", "x\n");
    sync(&lab, "h1");
    assert_eq!(run(h, "stat -c %a /usr/local/bin"), "750\n");
    lab.file("layers/base/usr/local/bin/hello", "#!/bin/sh\necho hello\n");
    sync(&lab, "h1");
    let (code, out, err) = labrun(&lab, &["rollback", "-m", "h1", "--to", "0"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(run(h, probe), before, "the machine as it was before lab");
    // and forward again, then a sync that drops the files keeps the
    // directories too, with their own mode again
    sync(&lab, "h1");
    lab.remove("layers/base/usr");
    sync(&lab, "h1");
    assert_eq!(
        run(h, "stat -c '%a %F' /usr/local/bin; ls -A /usr/local/bin"),
        "755 directory\n"
    );
}

/// Item 2: a managed directory replaced by a symlink to elsewhere: the
/// rollback refuses (before it writes anything), nothing lands there, and
/// once the symlink is gone the rollback finishes.
#[test]
fn rollback_refuses_to_write_through_a_planted_symlink() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    let lab = project(fleet.hosts());
    lab.file("layers/base/srv/app/conf", "1\n")
        .file("layers/base/srv/app/sub/more", "1\n");
    sync(&lab, "h1");
    lab.file("layers/base/srv/app/conf", "2\n")
        .file("layers/base/srv/app/sub/more", "2\n");
    sync(&lab, "h1");
    lab.file("layers/base/srv/app/conf", "3\n");
    sync(&lab, "h1");
    run(
        h,
        "mv /srv/app /srv/app.moved && mkdir -p /srv/evil && ln -s /srv/evil /srv/app",
    );
    let (code, out, err) = labrun(&lab, &["rollback", "-m", "h1"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("unsafe /srv/app is a symlink lab did not create"),
        "{err}"
    );
    assert_eq!(run(h, "ls -A /srv/evil"), "");
    assert_eq!(run(h, "cat /var/lib/lab/current | cut -d' ' -f1"), "3\n");
    // the symlink goes: the rollback (and its interrupted undo) finishes
    run(h, "rm /srv/app && mv /srv/app.moved /srv/app");
    let (code, out, err) = labrun(&lab, &["rollback", "-m", "h1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("h1: back on generation 2"), "{out}");
    assert_eq!(run(h, "cat /srv/app/conf /srv/app/sub/more"), "2\n2\n");
    assert_eq!(run(h, "ls -A /srv/evil"), "");
}

/// Item 3: a sync killed after it replaced files in /srv/data/d00; then
/// d00 becomes a symlink to elsewhere: the recovery refuses and writes
/// nothing there; with the symlink gone, the next sync converges.
#[test]
fn recovery_refuses_to_write_through_a_planted_symlink() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    let lab = project(fleet.hosts());
    // (400 directories: placing them takes long enough to be caught)
    data_in(&lab, 2000, 400, 1);
    sync(&lab, "h1");
    data_in(&lab, 2000, 400, 2);
    build(&lab);
    let mut killed = false;
    for _ in 0..3 {
        // once the first directory has its new files, kill the executor
        let w = when(
            h,
            "read -r l </srv/data/d00/f0 && [ \"$l\" = 'version 2 file 0' ]",
            KILL_EXECUTOR,
        );
        let (code, _, _) = labrun(&lab, &["sync", "-m", "h1", "-q"]);
        let said = stop(h, w);
        let inflight = run(h, "test -d /var/lib/lab/inflight && echo yes; true") == "yes\n";
        if said.contains("killed") && code != 0 && inflight {
            killed = true;
            break;
        }
        data_in(&lab, 2000, 400, 1);
        sync(&lab, "h1");
        data_in(&lab, 2000, 400, 2);
        build(&lab);
    }
    assert!(killed, "the executor was never killed mid-apply");
    run(
        h,
        "mv /srv/data/d00 /srv/d00.moved && mkdir -p /srv/evil && ln -s /srv/evil /srv/data/d00",
    );
    let (code, out, err) = labrun(&lab, &["sync", "-m", "h1"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("unsafe /srv/data/d00 is a symlink lab did not create"),
        "{err}"
    );
    assert_eq!(run(h, "ls -A /srv/evil"), "");
    run(h, "rm /srv/data/d00 && mv /srv/d00.moved /srv/data/d00");
    let (code, out, err) = labrun(&lab, &["sync", "-m", "h1"]);
    assert_eq!(code, 0, "{out}{err}");
    converged(h, &lab);
    assert_eq!(run(h, "ls -A /srv/evil"), "");
}

/// Item 4: the connection drops while the machine runs the unit actions
/// of a committed change (a reload that takes a while): the executor goes
/// on, and lab connects again and reports what the machine did.
#[test]
fn a_dropped_connection_does_not_stop_an_apply_and_lab_reads_the_outcome() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    let lab = TestLab::new();
    lab.file(
        "lab.toml",
        &lab_toml(
            fleet.hosts(),
            "[[units]]\npaths = [\"/etc/slow/**\"]\nunit = \"slow.service\"\naction = \"reload\"\n",
        ),
    )
    .file(
        "layers/base/etc/systemd/system/slow.service",
        "[Service]\nExecStart=/bin/sleep infinity\n\
         ExecReload=/bin/sh -c 'sleep 2; cat /etc/slow/version >> /run/slow.reloads'\n\n\
         [Install]\nWantedBy=multi-user.target\n",
    )
    .symlink(
        "layers/base/etc/systemd/system/multi-user.target.wants/slow.service",
        "../slow.service",
    )
    .file("layers/base/etc/slow/version", "1\n");
    data(&lab, 300, 1);
    sync(&lab, "h1");
    assert_eq!(run(h, "systemctl is-active slow.service"), "active\n");
    lab.file("layers/base/etc/slow/version", "2\n");
    data(&lab, 300, 2);
    build(&lab);
    // committed, reloading: drop the connection
    let w = when(
        h,
        "read -r g _ </var/lib/lab/current && [ \"$g\" = 2 ]",
        DROP_CONNECTIONS,
    );
    let (code, out, err) = labrun(&lab, &["sync", "-m", "h1"]);
    stop(h, w);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("h1: applied generation 2"), "{out}");
    assert!(
        out.contains("reload slow.service: ok, now active/running"),
        "{out}"
    );
    assert_eq!(run(h, "cat /run/slow.reloads"), "2\n");
    converged(h, &lab);

    // dropped while files are being put in place: the apply finishes all
    // the same (no mixed tree, no stage directories), and lab says so
    data(&lab, 300, 3);
    build(&lab);
    let w = when(h, "test -s /var/lib/lab/inflight/placed", DROP_CONNECTIONS);
    let (code, out, err) = labrun(&lab, &["sync", "-m", "h1"]);
    let said = stop(h, w);
    assert_eq!(code, 0, "{said}: {out}{err}");
    assert!(out.contains("h1: applied generation 3"), "{out}");
    converged(h, &lab);
}

/// Item 5: the executor killed in the middle of a rollback: lab says the
/// rollback did not finish and exits non-zero; the next sync recovers.
#[test]
fn a_killed_rollback_is_a_failure() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    let lab = project(fleet.hosts());
    data(&lab, 2000, 1);
    sync(&lab, "h1");
    data(&lab, 2000, 2);
    sync(&lab, "h1");
    let mut tried = 0;
    loop {
        tried += 1;
        let w = when(h, "test -e /var/lib/lab/undoing", KILL_EXECUTOR);
        let (code, out, err) = labrun(&lab, &["rollback", "-m", "h1"]);
        let said = stop(h, w);
        let mid = run(h, "test -e /var/lib/lab/undoing && echo yes; true") == "yes\n";
        if said.contains("killed") && mid {
            assert_ne!(code, 0, "{out}{err}");
            assert!(!out.contains("back on generation"), "{out}");
            assert!(err.contains("did not finish"), "{err}");
            break;
        }
        // the rollback was quicker than the kill: it must have said so
        assert_eq!(code, 0, "{out}{err}");
        assert!(tried < 3, "never killed mid-rollback");
        sync(&lab, "h1");
    }
    // the next sync finishes the undo and applies the build again
    let (code, out, err) = labrun(&lab, &["sync", "-m", "h1"]);
    assert_eq!(code, 0, "{out}{err}");
    converged(h, &lab);
}

/// Item 9: a change that does not fit: lab says the machine ran out of
/// space, where, how much the change needs and how much is free; the
/// machine is back where it was.
#[test]
fn a_full_disk_says_where_and_how_much() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    run(
        h,
        "mkdir -p /srv/small && mount -t tmpfs -o size=1m tmpfs /srv/small",
    );
    let lab = project(fleet.hosts());
    lab.file("layers/base/srv/small/a", "a\n");
    sync(&lab, "h1");
    lab.file("layers/base/srv/small/big", &"y".repeat(2 * 1024 * 1024));
    build(&lab);
    let (code, out, err) = labrun(&lab, &["sync", "-m", "h1"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains(
            "error: machine `h1`: the machine ran out of disk space writing `/srv/small/big`: \
             the change needs 2.0 MiB, "
        ) && err.contains(" free there"),
        "{err}"
    );
    // (what is free: about the 1 MiB of the file system, less `a`)
    let free = err.split("MiB, ").nth(1).unwrap_or_default();
    assert!(
        free.starts_with("1008.0 KiB") || free.starts_with("1012.0 KiB") || free.contains("KiB"),
        "{err}"
    );
    assert!(err.contains("ran out of disk space"), "{err}");
    assert_eq!(run(h, "ls -A /srv/small"), "a\n");
    assert_eq!(run(h, "cut -d' ' -f1 /var/lib/lab/current"), "1\n");
}

/// Item 14: a sync killed before it replaced any file: the recovery puts
/// back nothing it does not have to (no file it never replaced is written
/// again), where it used to copy back every file of the change.
#[test]
fn recovery_undoes_only_what_was_in_flight() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    let lab = project(fleet.hosts());
    data(&lab, 2000, 1);
    sync(&lab, "h1");
    let inodes = |h: &Host| -> BTreeMap<String, String> {
        run(h, "find /srv/data -type f -printf '%p %i\\n'")
            .lines()
            .map(|l| {
                let (p, i) = l.rsplit_once(' ').unwrap();
                (p.to_string(), i.to_string())
            })
            .collect()
    };
    let before = inodes(h);
    assert_eq!(before.len(), 2000);
    data(&lab, 2000, 2);
    build(&lab);
    let mut done = false;
    for _ in 0..3 {
        let w = when(h, "test -e /var/lib/lab/inflight/backed-up", KILL_EXECUTOR);
        let (code, _, _) = labrun(&lab, &["sync", "-m", "h1", "-q"]);
        let said = stop(h, w);
        let at_kill = inodes(h);
        let replaced = before
            .iter()
            .filter(|(p, i)| at_kill.get(*p) != Some(i))
            .count();
        if !said.contains("killed") || code == 0 || replaced > 1000 {
            // too late: start again from generation 1
            data(&lab, 2000, 1);
            sync(&lab, "h1");
            data(&lab, 2000, 2);
            build(&lab);
            continue;
        }
        // recover (the next sync does it first), with a change elsewhere
        data(&lab, 2000, 1);
        lab.file("layers/base/srv/other", "o\n");
        build(&lab);
        let (code, out, err) = labrun(&lab, &["sync", "-m", "h1"]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("recovered interrupted sync"), "{out}");
        let after = inodes(h);
        let rewritten: Vec<&String> = before
            .iter()
            .filter(|(p, i)| after.get(*p) != Some(i))
            .map(|(p, _)| p)
            .collect();
        // only the directories the kill caught (a directory is 50 files)
        assert!(
            rewritten.len() <= replaced + 50,
            "{} files written again, {replaced} had been replaced",
            rewritten.len()
        );
        converged(h, &lab);
        done = true;
        break;
    }
    assert!(done, "the executor was never killed early enough");
}

/// xorshift64*: random enough, and the same sequence for the same seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) % n
    }
}

/// A random build of the machine's /srv: some files of a pool (one of
/// them a file that existed before lab), a path that is absent, a file, a
/// directory or a symlink, and 200 files that always change (so that a
/// kill finds the executor at work).
fn random_build(lab: &TestLab, rng: &mut Rng, v: u32) {
    let base = lab.join("layers/base/srv");
    if base.exists() {
        lab.remove("layers/base/srv");
    }
    let pool = [
        "p/taken",
        "p/empty/x",
        "p/full/y",
        "t/f0",
        "t/f1",
        "t/f2",
        "t/a/g0",
        "t/a/g1",
        "t/a/b/h0",
        "t/a/b/h1",
        "u/only",
    ];
    for f in pool {
        if rng.below(10) < 6 {
            lab.file(&format!("layers/base/srv/{f}"), &format!("v{v} {f}\n"));
        }
    }
    match rng.below(4) {
        0 => {}
        1 => {
            lab.file("layers/base/srv/t/k", &format!("v{v} k\n"));
        }
        2 => {
            lab.file("layers/base/srv/t/k/in", &format!("v{v} k/in\n"));
        }
        _ => {
            lab.symlink("layers/base/srv/t/k", "f0");
        }
    }
    for i in 0..200 {
        lab.file(
            &format!("layers/base/srv/data/d{}/f{i}", i % 10),
            &format!("v{v} {i}\n"),
        );
    }
}

/// Random sequences of syncs, rollbacks, kills of the executor at random
/// points, foreign symlinks planted at managed directories and foreign
/// files planted in them. After every step nothing was written through a
/// foreign symlink, and no file or directory that was not lab's is lost;
/// at the end a sync gives exactly the last build, and a rollback to 0
/// gives the machine back as it was. `LAB_PROPTEST_SEED` replays a run,
/// `LAB_PROPTEST_STEPS` sets its length.
#[test]
fn property_random_syncs_rollbacks_kills_and_plants() {
    let seed: u64 = std::env::var("LAB_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let steps: u32 = std::env::var("LAB_PROPTEST_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    eprintln!("property test: LAB_PROPTEST_SEED={seed} LAB_PROPTEST_STEPS={steps}");
    let mut rng = Rng(seed);
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    // not lab's: a pre-existing empty directory (mode 700), one with a
    // file, a file lab takes over, and where foreign symlinks point
    run(
        h,
        "mkdir -p /srv/p/empty /srv/p/full /srv/evil && chmod 700 /srv/p/empty && \
         echo mine >/srv/p/full/keep && echo orig >/srv/p/taken",
    );
    let snapshot = "cd /srv && find . -path ./evil -prune -o -path './*.away*' -prune -o \
                    -name 'foreign-*' -prune -o -printf '%p %y %m %l\\n' | sort; \
                    cat /srv/p/full/keep /srv/p/taken; ls -A /srv/evil";
    let pristine = run(h, snapshot);
    let lab = project(fleet.hosts());
    // every generation kept: the end rolls back to 0
    let toml = lab
        .read("lab.toml")
        .replacen("[settings]\n", "[settings]\ngenerations = 1000\n", 1);
    lab.file("lab.toml", &toml);
    let mut foreign: Vec<u32> = Vec::new();
    // (the directories they were planted in)
    let mut foreign_dirs: Vec<String> = Vec::new();
    // (managed directory, where it was moved) for each planted symlink
    let mut planted: Vec<(String, String)> = Vec::new();
    // every path a symlink was ever planted at (relative to /srv)
    let mut ever_planted: Vec<String> = Vec::new();
    let check = |what: &str, foreign: &[u32]| {
        assert_eq!(
            run(h, "ls -A /srv/evil"),
            "",
            "{what}: written through a foreign symlink"
        );
        // (where a planted symlink moved it, if one did)
        assert_eq!(
            run(
                h,
                "cat /srv/p/full/keep 2>/dev/null || cat /srv/p/full.away*/keep"
            ),
            "mine\n",
            "{what}"
        );
        let found = run(
            h,
            "find /srv -name 'foreign-*' -type f -exec cat {} + 2>/dev/null | sort",
        );
        let mut want: Vec<String> = foreign.iter().map(|n| format!("foreign {n}")).collect();
        want.sort();
        let mut got: Vec<&str> = found.lines().collect();
        got.sort();
        assert_eq!(got, want, "{what}: a foreign file was lost");
    };
    let unplant = |planted: &mut Vec<(String, String)>| {
        for (d, away) in planted.drain(..) {
            run(
                h,
                &format!(
                    "if [ -L {d} ]; then rm {d}; fi; if [ ! -e {d} ] && [ ! -L {d} ]; then mv {away} {d}; fi; true"
                ),
            );
        }
    };
    let mut v = 0;
    random_build(&lab, &mut rng, v);
    sync(&lab, "h1");
    for step in 0..steps {
        let what;
        match rng.below(10) {
            0..=3 => {
                v += 1;
                random_build(&lab, &mut rng, v);
                build(&lab);
                let (code, out, err) = labrun(&lab, &["sync", "-m", "h1"]);
                what = format!("step {step}: sync v{v} (exit {code})");
                // a foreign file planted in a directory the new build
                // makes a file must stop the sync (lab never deletes what
                // it did not create): as a directory of lab's that holds
                // foreign files, or, once an undo kept such a directory
                // and it is no longer lab's, as a directory lab did not
                // create; anything else must not
                let kept_foreign = err
                    .split("unsafe ")
                    .nth(1)
                    .and_then(|r| r.split(" is a directory lab did not create").next())
                    .is_some_and(|p| {
                        err.contains(" is a directory lab did not create")
                            && foreign_dirs
                                .iter()
                                .any(|d| d == p || d.starts_with(&format!("{p}/")))
                    });
                if planted.is_empty()
                    && !err.contains("holds files lab did not create")
                    && !kept_foreign
                {
                    assert_eq!(code, 0, "{what}: {out}{err}");
                }
            }
            4..=5 => {
                v += 1;
                random_build(&lab, &mut rng, v);
                build(&lab);
                let cond = [
                    "test -e /var/lib/lab/inflight/backed-up",
                    "test -s /var/lib/lab/inflight/placed",
                    "test -e /var/lib/lab/inflight/undo.sh",
                ][rng.below(3) as usize];
                let w = when(h, cond, KILL_EXECUTOR);
                let (code, _, _) = labrun(&lab, &["sync", "-m", "h1", "-q"]);
                let said = stop(h, w);
                what = format!("step {step}: sync v{v} killed at `{cond}` ({said:?}, exit {code})");
            }
            6..=7 => {
                let kill = rng.below(2) == 0;
                let w = kill.then(|| when(h, "test -e /var/lib/lab/undoing", KILL_EXECUTOR));
                let (code, out, err) = labrun(&lab, &["rollback", "-m", "h1"]);
                let said = w.map(|w| stop(h, w)).unwrap_or_default();
                what = format!("step {step}: rollback (kill: {kill} {said:?}, exit {code})");
                if code == 0 {
                    assert!(out.contains("back on generation"), "{what}: {out}");
                }
                let _ = err;
            }
            8 => {
                let dirs = run(
                    h,
                    "for d in /srv/t /srv/t/a /srv/t/a/b /srv/t/k /srv/data/d3 /srv/p/full; do \
                     [ -d $d ] && [ ! -L $d ] && echo $d; done; true",
                );
                let dirs: Vec<&str> = dirs.lines().collect();
                if dirs.is_empty() {
                    continue;
                }
                let d = dirs[rng.below(dirs.len() as u64) as usize].to_string();
                let away = format!("{d}.away{step}");
                run(h, &format!("mv {d} {away} && ln -s /srv/evil {d}"));
                what = format!("step {step}: symlink planted at {d}");
                ever_planted.push(format!(".{}", d.strip_prefix("/srv").unwrap()));
                planted.push((d, away));
            }
            _ => {
                let dirs = run(
                    h,
                    "for d in /srv/t /srv/t/a /srv/t/a/b /srv/t/k /srv/data/d3 /srv/p/empty /srv/u; do \
                     [ -d $d ] && [ ! -L $d ] && echo $d; done; true",
                );
                let dirs: Vec<&str> = dirs.lines().collect();
                if dirs.is_empty() {
                    continue;
                }
                let d = dirs[rng.below(dirs.len() as u64) as usize];
                run(h, &format!("echo 'foreign {step}' >{d}/foreign-{step}"));
                foreign.push(step);
                foreign_dirs.push(d.to_string());
                what = format!("step {step}: foreign file planted in {d}");
            }
        }
        eprintln!("{what}");
        check(&what, &foreign);
        if !planted.is_empty() && rng.below(2) == 0 {
            unplant(&mut planted);
        }
    }
    // the end: plants gone, a sync gives exactly the last build (one
    // that makes /srv/t/k a file or a link can never be synced over the
    // foreign files planted in it: lab never deletes what it did not
    // create; the last build keeps it a directory then)
    unplant(&mut planted);
    if foreign_dirs.iter().any(|d| d == "/srv/t/k")
        && lab
            .join("layers/base/srv/t/k")
            .symlink_metadata()
            .is_ok_and(|m| !m.is_dir())
    {
        lab.remove("layers/base/srv/t/k");
        lab.file("layers/base/srv/t/k/in", "last k/in\n");
    }
    build(&lab);
    let (code, out, err) = labrun(&lab, &["sync", "-m", "h1"]);
    assert_eq!(code, 0, "final sync: {out}{err}");
    converged(h, &lab);
    check("final sync", &foreign);
    // and a rollback to 0 gives back what was not lab's
    let (code, out, err) = labrun(&lab, &["rollback", "-m", "h1", "--to", "0"]);
    assert_eq!(code, 0, "rollback to 0: {out}{err}");
    check("rollback to 0", &foreign);
    let now = run(h, snapshot);
    // Directories lab created that now hold foreign files stay: kept.
    // So does what lab placed under a path a symlink was planted at, and
    // the directories above it: an undo that met the symlink could not
    // remove what had been moved away behind it (and must not follow the
    // link), and once the real directory is moved back lab finds it
    // already there, so it is not lab's to delete.
    let in_planted = |p: &str, is_dir: bool| {
        ever_planted.iter().any(|d| {
            p == d || p.starts_with(&format!("{d}/")) || (is_dir && d.starts_with(&format!("{p}/")))
        })
    };
    let kept: Vec<&str> = now
        .lines()
        .filter(|l| !pristine.lines().any(|p| p == *l))
        .collect();
    for l in &kept {
        let p = l.split_whitespace().next().unwrap();
        let holds_foreign = run(
            h,
            &format!("find /srv/{p} -name 'foreign-*' 2>/dev/null | head -1"),
        );
        assert!(
            (l.contains(" d ") && !holds_foreign.is_empty()) || in_planted(p, l.contains(" d ")),
            "after rollback to 0: `{l}` was not there before lab\nbefore:\n{pristine}\nnow:\n{now}\nlab's records:\n{}",
            run(h, "cd /var/lib/lab && find . -name .lab-preexisting -o -path './gen/*' -prune | sort; ls -A /srv/data /srv/data/* 2>&1 | head -20")
        );
    }
    for l in pristine.lines() {
        assert!(
            now.lines().any(|n| n == l),
            "after rollback to 0: `{l}` is lost\nnow:\n{now}"
        );
    }
}
