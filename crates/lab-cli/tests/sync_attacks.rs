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
const KILL_EXECUTOR: &str = r#"p=$(pgrep -o -f '[l]ab[.][A-Za-z0-9]*/run[.]sh|^sh -c RUN=')
if [ -n "$p" ]; then g=$(ps -o pgid= -p "$p" | tr -d ' '); kill -KILL -- "-$g"; echo killed; fi"#;

/// Drop every ssh connection to the host (lab's included).
const DROP_CONNECTIONS: &str = "pkill -KILL -f 'sshd: root@notty'; echo dropped";

/// On the host: wait (up to 120 s) until the shell condition `cond` holds,
/// then run `then`. Returns once the watcher is running; join the handle
/// for what `then` printed.
fn when(h: &Host, cond: &str, then: &str) -> std::thread::JoinHandle<String> {
    let _ = h.run("rm -f /run/lab-watch.ready");
    let script = format!(
        ": >/run/lab-watch.ready; n=0; until {cond}; do n=$((n + 1)); [ $n -lt 50000000 ] || exit 0; done; {then}"
    );
    let mut c = h.ssh_command();
    c.arg(format!("timeout 120 sh -c {}", lab_agent::quote(&script)));
    let handle = std::thread::spawn(move || {
        let out = c.output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    while h.run("test -e /run/lab-watch.ready && echo y").unwrap_or_default() != "y\n" {
        std::thread::sleep(Duration::from_millis(50));
    }
    handle
}

/// `N` files of ~1 KiB in 40 directories under /srv/data, of `version`.
fn data(lab: &TestLab, n: usize, version: u32) {
    for i in 0..n {
        lab.file(
            &format!("layers/base/srv/data/d{:02}/f{i}", i % 40),
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
    data(&lab, 2000, 1);
    sync(&lab, "h1");
    data(&lab, 2000, 2);
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
        let said = w.join().unwrap();
        if said.contains("killed") && code != 0 {
            killed = true;
            break;
        }
        data(&lab, 2000, 1);
        sync(&lab, "h1");
        data(&lab, 2000, 2);
        build(&lab);
    }
    assert!(killed, "the executor was never killed mid-apply");
    assert_eq!(run(h, "test -d /var/lib/lab/inflight && echo yes"), "yes\n");
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
    let _ = w.join();
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
    let said = w.join().unwrap();
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
        let said = w.join().unwrap();
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
    assert!(free.starts_with("1008.0 KiB") || free.starts_with("1012.0 KiB") || free.contains("KiB"), "{err}");
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
        let said = w.join().unwrap();
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
