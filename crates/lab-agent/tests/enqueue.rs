//! Unit actions journaled beside a change made outside a generation (an
//! image whose name moves, see `enqueue` in check.sh): the change is made
//! while the executor's lock is still held, so no other sync can run
//! (and mark done) the journaled actions before the change they answer.

use lab_agent::enqueue_command;
use lab_testkit::TestLab;
use std::process::Command;

/// A machine root at generation 1.
fn machine() -> TestLab {
    let t = TestLab::new();
    t.file("var/lib/lab/gen/1/digest", &"0".repeat(64))
        .file("var/lib/lab/current", &format!("1 {}\n", "0".repeat(64)));
    t
}

fn sh(cmd: &str) -> (i32, String) {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn the_change_is_made_under_the_lock_its_actions_were_journaled_under() {
    let t = machine();
    let lock = t.join("var/lib/lab/lock");
    // what the change sees: whether another process could take the lock
    // (and whether it holds the lock's fd itself: it must not, or what it
    // starts keeps the lock for ever)
    let change = format!(
        "if flock -n {l} true; then echo free; else echo held; fi; \
         if [ -e /proc/self/fd/9 ]; then echo fd9; fi",
        l = lab_agent::quote(lock.to_str().unwrap())
    );
    let cmd = enqueue_command(
        t.path().to_str().unwrap(),
        &[("restart", "pod/web.service"), ("restart", "db.service")],
        &change,
    );
    let (code, out) = sh(&cmd);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "held\n");
    assert_eq!(
        t.read("var/lib/lab/gen/1/actions"),
        "restart pod/web.service\nrestart db.service\n"
    );
    // and released after it
    assert_eq!(sh(&format!("flock -n {} true", lock.display())).0, 0);
}

#[test]
fn a_failed_change_fails_the_command() {
    let t = machine();
    let cmd = enqueue_command(
        t.path().to_str().unwrap(),
        &[("restart", "web.service")],
        "echo no >&2; exit 7",
    );
    assert_eq!(sh(&cmd).0, 7);
}

#[test]
fn before_the_first_generation_the_change_is_made_and_nothing_journaled() {
    let t = TestLab::new();
    let cmd = enqueue_command(
        t.path().to_str().unwrap(),
        &[("restart", "web.service")],
        "echo changed",
    );
    assert_eq!(sh(&cmd), (0, "changed\n".to_string()));
    assert!(!t.join("var/lib/lab/gen").exists());
}

/// A rollback planned before a restart was journaled (an image update
/// made beside it) is refused as stale: it would have deleted the
/// generation with the restart in it. Planned knowing it, it goes on.
#[test]
fn a_rollback_planned_before_a_journaled_restart_is_stale() {
    let t = machine();
    let root = t.path().to_str().unwrap();
    // the rollback's plan: nothing pending
    let stale_plan = lab_agent::rollback_program(0, Some("none"), &[], 0);
    // meanwhile an image update journals a restart
    let (code, _) = sh(&enqueue_command(
        root,
        &[("restart", "web.service")],
        "true",
    ));
    assert_eq!(code, 0);
    let program = t.join("rollback.sh");
    std::fs::write(&program, &stale_plan).unwrap();
    let run = |p: &std::path::Path| {
        sh(&format!(
            "LAB_ROOT={} LAB_SYSTEMD=0 sh {} </dev/null",
            lab_agent::quote(root),
            p.display()
        ))
    };
    let (code, out) = run(&program);
    assert_eq!(code, lab_core::ExecutorExit::Stale.code(), "{out}");
    assert!(out.contains("pending restart web.service"), "{out}");
    assert_eq!(
        t.read("var/lib/lab/current"),
        format!("1 {}\n", "0".repeat(64))
    );
    assert_eq!(t.read("var/lib/lab/gen/1/actions"), "restart web.service\n");
    // planned from a check that saw it: not stale
    let check = lab_agent::Check::parse("pending restart web.service\n");
    let plan = lab_agent::rollback_program(0, Some(&check.expect_pending()), &[], 0);
    std::fs::write(&program, &plan).unwrap();
    let (code, out) = run(&program);
    assert_ne!(code, lab_core::ExecutorExit::Stale.code(), "{out}");
    assert!(!out.contains("stale"), "{out}");
}
