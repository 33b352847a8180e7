//! Convergence on real test hosts: every sync checks what is really on the
//! machine, reports drift by path and kind, and repairs it with the units'
//! usual actions; hostile changes are refused, not followed.

mod common_hosts;

use common_hosts::*;
use lab_agent::DriftKind;
use lab_sync::{Outcome, SyncOptions};
use lab_testhosts::TestHosts;

fn drift_of(r: &lab_sync::SyncReport) -> Vec<(String, DriftKind)> {
    r.drift.iter().map(|d| (d.path.clone(), d.kind)).collect()
}

fn units_of(r: &lab_agent::Report) -> Vec<String> {
    r.units
        .iter()
        .map(|u| format!("{} {} {}", u.action, u.unit, u.result))
        .collect()
}

#[test]
fn every_drift_kind_is_found_and_repaired_and_nothing_else_is_touched() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    let lab = project(fleet.hosts());
    lab.file("layers/base/srv/app/content", "content v1\n")
        .file("layers/base/srv/app/deleted", "deleted v1\n")
        .file("layers/base/srv/app/mode", "mode v1\n")
        .file("layers/base/srv/app/owner", "owner v1\n")
        .file("layers/base/srv/app/touched", "touched v1\n")
        .file("layers/base/srv/app/taken", "lab's taken\n")
        .file("layers/base/srv/app/sub/kept", "kept\n")
        .symlink("layers/base/srv/app/link", "/etc/motd");
    // a file that was there before lab: lab takes it over
    run(h, "mkdir -p /srv/app && echo original >/srv/app/taken");

    let first = sync(&lab, "h1");
    assert_eq!(first.report.outcome, Outcome::Applied { gen: 1 });
    assert!(first.report.drift.is_empty());
    let m = manifest(&lab, "h1");
    assert_eq!(remote_state(h, &m), expected_state(&m));

    // nothing changed anywhere: one command, and the check is in it
    let again = sync(&lab, "h1");
    assert_eq!(again.report.outcome, Outcome::Unchanged { gen: 1 });
    assert!(again.report.drift.is_empty());
    assert_eq!((again.commands, again.sent), (1, 0));

    // behind lab's back
    run(
        h,
        "echo 2 >/etc/probe/version; \
         echo changed >/srv/app/content; rm /srv/app/deleted; chmod 600 /srv/app/mode; \
         chown nobody /srv/app/owner; touch /srv/app/touched; \
         echo again >/srv/app/taken; ln -sfn /etc/hostname /srv/app/link; \
         rm -r /srv/app/sub; echo mine >/srv/app/unmanaged; \
         chmod 700 /srv/app",
    );
    let starts = run(h, "cat /run/probe.reloads 2>/dev/null || true");
    let fixed = sync(&lab, "h1");
    assert_eq!(
        drift_of(&fixed.report),
        vec![
            ("etc/probe/version".to_string(), DriftKind::ContentChanged),
            ("srv/app".to_string(), DriftKind::ModeChanged),
            ("srv/app/content".to_string(), DriftKind::ContentChanged),
            ("srv/app/deleted".to_string(), DriftKind::Deleted),
            ("srv/app/link".to_string(), DriftKind::Retargeted),
            ("srv/app/mode".to_string(), DriftKind::ModeChanged),
            ("srv/app/owner".to_string(), DriftKind::OwnerChanged),
            ("srv/app/sub".to_string(), DriftKind::Deleted),
            ("srv/app/sub/kept".to_string(), DriftKind::Deleted),
            ("srv/app/taken".to_string(), DriftKind::TakenOverChanged),
        ]
    );
    assert_eq!(fixed.report.outcome, Outcome::Applied { gen: 2 });
    // only the drifted files travel (the touched one is still lab's)
    let sizes: u64 = [
        "1\n",
        "content v1\n",
        "deleted v1\n",
        "mode v1\n",
        "owner v1\n",
        "kept\n",
        "lab's taken\n",
    ]
    .iter()
    .map(|s| s.len() as u64)
    .sum();
    assert_eq!(fixed.report.content_bytes, sizes);
    assert_eq!(units_of(&fixed.report.apply), ["reload probe.service ok"]);
    assert_eq!(
        run(h, "cat /run/probe.reloads"),
        format!("{starts}1\n"),
        "the rule's reload ran once, after the repair"
    );
    assert_eq!(remote_state(h, &m), expected_state(&m));
    assert_eq!(run(h, "stat -c %U /srv/app/owner"), "root\n");
    // what lab does not manage is neither reported nor touched
    assert_eq!(run(h, "cat /srv/app/unmanaged"), "mine\n");

    let clean = sync(&lab, "h1");
    assert_eq!(clean.report.outcome, Outcome::Unchanged { gen: 2 });
    assert!(clean.report.drift.is_empty());
    assert_eq!(clean.commands, 1);
    // the machine keeps the executor's libraries (lab-agent's `library`):
    // the check names its library instead of carrying its 7 KB
    assert!(clean.command_bytes < 1500, "{}", clean.command_bytes);
    assert_eq!(
        run(h, "ls /var/lib/lab/lib | cut -d. -f1 | sort | tr '\\n' ' '"),
        "check executor "
    );

    // a change and drift at once: one plan does both, after the machine
    // said what it found
    lab.file("layers/base/srv/app/content", "content v2\n");
    run(h, "echo again >/srv/app/mode");
    let both = sync(&lab, "h1");
    assert_eq!(
        drift_of(&both.report),
        vec![("srv/app/mode".to_string(), DriftKind::ContentChanged)]
    );
    assert_eq!(both.report.outcome, Outcome::Applied { gen: 3 });
    assert_eq!(both.commands, 2, "refused with what it found, then applied");
    // (nor the apply the executor's 21 KB)
    assert!(both.command_bytes < 5000, "{}", both.command_bytes);
    let m = manifest(&lab, "h1");
    assert_eq!(remote_state(h, &m), expected_state(&m));
}

#[test]
fn hostile_drift_is_refused_or_replaced_never_followed() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    let lab = project(fleet.hosts());
    lab.file("layers/base/srv/app/planted", "lab's\n")
        .file("layers/base/srv/app/dir", "lab's file\n")
        .file("layers/base/srv/app/d/x", "x\n");
    sync(&lab, "h1");

    // a symlink planted where a managed file was: replaced, and what it
    // pointed at is neither read, nor reported, nor written
    run(
        h,
        "echo secret >/root/secret; chmod 600 /root/secret; \
         ln -sfn /root/secret /srv/app/planted",
    );
    let r = sync(&lab, "h1");
    assert_eq!(
        drift_of(&r.report),
        vec![("srv/app/planted".to_string(), DriftKind::KindChanged)]
    );
    assert_eq!(
        run(h, "test -L /srv/app/planted || cat /srv/app/planted"),
        "lab's\n"
    );
    assert_eq!(run(h, "cat /root/secret"), "secret\n");

    // a directory where a managed file was: lab did not make it, so lab
    // does not delete it: the sync fails, naming the path, and the
    // machine stays as it was
    run(
        h,
        "rm /srv/app/dir && mkdir /srv/app/dir && echo theirs >/srv/app/dir/f",
    );
    let e = sync_with(&lab, "h1", &SyncOptions::default())
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("/srv/app/dir is a directory lab did not create"),
        "{e}"
    );
    assert_eq!(run(h, "cat /srv/app/dir/f"), "theirs\n");

    // a directory lab made, replaced by a symlink to elsewhere: nothing is
    // looked at or written below it
    run(
        h,
        "rm -r /srv/app/dir && rm -r /srv/app/d && mkdir -p /root/elsewhere && \
         echo theirs >/root/elsewhere/x && ln -s /root/elsewhere /srv/app/d",
    );
    let e = sync_with(&lab, "h1", &SyncOptions::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("/srv/app/d"), "{e}");
    assert_eq!(run(h, "cat /root/elsewhere/x"), "theirs\n");

    // once the planted link is gone, the sync repairs the rest
    run(h, "rm /srv/app/d");
    let r = sync_with(&lab, "h1", &SyncOptions::default()).unwrap();
    assert!(matches!(r.report.outcome, Outcome::Applied { .. }));
    let m = manifest(&lab, "h1");
    assert_eq!(remote_state(h, &m), expected_state(&m));
}

/// `lab ARGS` in the project: (exit code, stdout, stderr).
fn lab_run(lab: &lab_testkit::TestLab, args: &[&str]) -> (i32, String, String) {
    lab_testkit::run(lab, args)
}

/// The text with "applied N s ago" as "applied T ago".
fn no_age(s: &str) -> String {
    match (s.find("applied "), s.find(" ago)")) {
        (Some(a), Some(b)) if a < b => format!("{}T{}", &s[..a + 8], &s[b..]),
        _ => s.to_string(),
    }
}

/// `lab status --json` with the time of the apply taken out (it is the
/// machine's clock).
fn status_json(lab: &lab_testkit::TestLab, args: &[&str]) -> (i32, serde_json::Value) {
    let mut a = vec!["status", "--json"];
    a.extend_from_slice(args);
    let (code, out, err) = lab_run(lab, &a);
    let mut v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    for m in v["machines"].as_array_mut().unwrap() {
        if let Some(t) = m.get_mut("applied_at") {
            assert!(t.as_u64().is_some_and(|t| t > 1_600_000_000), "{t}");
            *t = serde_json::Value::Null;
        }
    }
    (code, v)
}

fn machine_status(
    gen: u64,
    changes: &[&str],
    drift: &[(&str, &str, &str)],
    pending: &[(&str, &str)],
) -> serde_json::Value {
    serde_json::json!({
        "name": "h1",
        "ok": true,
        "in_sync": changes.is_empty() && drift.is_empty() && pending.is_empty(),
        "generation": gen,
        "applied_at": null,
        "interrupted": false,
        "changes": changes,
        "drift": drift.iter().map(|(p, k, n)| serde_json::json!({"path": p, "kind": k, "now": n})).collect::<Vec<_>>(),
        "pending": pending.iter().map(|(a, u)| serde_json::json!({"action": a, "unit": u})).collect::<Vec<_>>(),
        "failed_units": [],
        "error": null,
    })
}

#[test]
fn status_and_check_tell_the_truth_with_their_exit_codes() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    let lab = project(fleet.hosts());
    lab.file("layers/base/srv/app/conf", "v1\n")
        .symlink("layers/base/srv/app/link", "/etc/motd");
    // a machine nobody answers for (a closed port on loopback)
    let toml = lab.read("lab.toml");
    lab.file(
        "lab.toml",
        &format!(
            "{toml}\n[machines.down]\nhost = \"127.0.0.1\"\nport = 9\nuser = \"root\"\nlayers = [\"base\"]\n"
        ),
    );
    sync(&lab, "h1");
    assert_eq!(lab_run(&lab, &["check", "-m", "h1"]).0, 0);
    let (code, v) = status_json(&lab, &["-m", "h1"]);
    assert_eq!(code, 0);
    assert_eq!(
        v,
        serde_json::json!({"machines": [machine_status(1, &[], &[], &[])], "in_sync": true, "failed": []})
    );

    // the source changed: something would change
    lab.file("layers/base/srv/app/conf", "v2\n");
    let (code, out, _) = lab_run(&lab, &["check", "-m", "h1"]);
    assert_eq!(code, 3, "{out}");
    assert_eq!(
        status_json(&lab, &["-m", "h1"]).1["machines"][0],
        machine_status(1, &["/srv/app/conf"], &[], &[])
    );
    lab.file("layers/base/srv/app/conf", "v1\n");

    // drift of every kind the machine can show
    run(
        h,
        "echo 9 >/etc/probe/version; rm /etc/motd; chmod 600 /srv/app/conf; \
         ln -sfn /etc/hostname /srv/app/link; echo mine >/srv/app/unmanaged",
    );
    let (code, out, _) = lab_run(&lab, &["check", "-m", "h1"]);
    assert_eq!(code, 3);
    assert_eq!(
        no_age(&out),
        "h1: 4 paths drifted (generation 1, applied T ago)\n  \
         drifted /etc/motd: deleted (now missing)\n  \
         drifted /etc/probe/version: content-changed (now file)\n  \
         drifted /srv/app/conf: mode-changed (now file)\n  \
         drifted /srv/app/link: symlink-retargeted (now symlink)\n"
    );
    assert_eq!(
        status_json(&lab, &["-m", "h1"]).1["machines"][0],
        machine_status(
            1,
            &[],
            &[
                ("/etc/motd", "deleted", "missing"),
                ("/etc/probe/version", "content-changed", "file"),
                ("/srv/app/conf", "mode-changed", "file"),
                ("/srv/app/link", "symlink-retargeted", "symlink"),
            ],
            &[]
        )
    );
    // a status changes nothing
    assert_eq!(
        run(h, "cat /etc/probe/version; test -e /etc/motd || echo gone"),
        "9\ngone\n"
    );

    // unreachable: 1 (and that beats "out of sync"); a wrong invocation: 2
    assert_eq!(lab_run(&lab, &["check", "-m", "down"]).0, 1);
    assert_eq!(lab_run(&lab, &["check", "--all"]).0, 1);
    assert_eq!(lab_run(&lab, &["check", "-m", "nosuch"]).0, 2);
    lab.file("layers/base/etc/broken.j2", "{{ nosuch }}\n");
    assert_eq!(lab_run(&lab, &["check", "-m", "h1"]).0, 2);
    lab.remove("layers/base/etc/broken.j2");

    // the sync repairs; then all is well again
    let (code, out, err) = lab_run(&lab, &["sync", "-m", "h1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("  repaired /etc/probe/version: content-changed\n"),
        "{out}"
    );
    assert_eq!(lab_run(&lab, &["check", "-m", "h1"]).0, 0);
    assert_eq!(run(h, "cat /srv/app/unmanaged"), "mine\n");
}

/// On the host: wait until the shell condition `cond` holds, then run
/// `then`. Returns once the watcher is running; [`stop`] ends it and
/// returns what `then` printed.
fn when(h: &lab_testhosts::Host, cond: &str, then: &str) -> std::thread::JoinHandle<String> {
    let _ = h.run("rm -f /run/lab-when.ready /run/lab-when.stop");
    let script = format!(
        ": >/run/lab-when.ready; until {cond} || [ -e /run/lab-when.stop ]; do :; done; \
         [ -e /run/lab-when.stop ] || {{ {then}\n}}"
    );
    let mut c = h.ssh_command();
    c.arg(format!("timeout 300 sh -c {}", lab_agent::quote(&script)));
    let handle = std::thread::spawn(move || {
        let out = c.output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    while h
        .run("test -e /run/lab-when.ready && echo y")
        .unwrap_or_default()
        != "y\n"
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    handle
}

fn stop(h: &lab_testhosts::Host, w: std::thread::JoinHandle<String>) -> String {
    let _ = h.run(": >/run/lab-when.stop");
    w.join().unwrap()
}

/// SIGKILL the executor on the host (its process group: the shell and the
/// systemctl it waits for), found by its command line.
const KILL_EXECUTOR: &str = r#"p=$(pgrep -o -f '[l]ab[.][A-Za-z0-9]*/run[.]sh|^sh -c (RUN=|# lab executor)')
if [ -n "$p" ]; then g=$(ps -o pgid= -p "$p" | tr -d ' '); kill -KILL "-$g" && echo killed; fi"#;

/// Starts of slow.service, reloads of rl.service and of probe.service.
fn counts(h: &lab_testhosts::Host) -> (usize, usize, usize) {
    let n = |f: &str| {
        run(h, &format!("cat {f} 2>/dev/null || true"))
            .lines()
            .count()
    };
    (
        n("/run/slow.starts"),
        n("/run/rl.reloads"),
        n("/run/probe.reloads"),
    )
}

/// Wait until systemd has no job left (a killed systemctl leaves its job
/// running).
fn settled(h: &lab_testhosts::Host) {
    run(
        h,
        "for i in $(seq 300); do [ -z \"$(systemctl list-jobs --no-legend)\" ] && exit 0; sleep 0.1; done; exit 1",
    );
}

fn units_project(fleet: &TestHosts) -> lab_testkit::TestLab {
    let lab = project(fleet.hosts());
    with_units(&lab);
    lab
}

/// The slow.service and rl.service units of [`units_project`] and their
/// rules, added to `lab`.
fn with_units(lab: &lab_testkit::TestLab) {
    let toml = lab.read("lab.toml");
    lab.file(
        "lab.toml",
        &format!(
            "{toml}\n[[units]]\npaths = [\"/etc/slow/**\"]\nunit = \"slow.service\"\naction = \"restart\"\n\n\
             [[units]]\npaths = [\"/etc/rl/**\"]\nunit = \"rl.service\"\naction = \"reload\"\n"
        ),
    )
    .file(
        "layers/base/etc/systemd/system/slow.service",
        "[Service]\nExecStartPre=/bin/sh -c 'echo s >>/run/slow.starts'\nExecStart=/bin/sleep infinity\n\
         ExecStop=/bin/sleep 3\n\n[Install]\nWantedBy=multi-user.target\n",
    )
    .symlink(
        "layers/base/etc/systemd/system/multi-user.target.wants/slow.service",
        "../slow.service",
    )
    .file(
        "layers/base/etc/systemd/system/rl.service",
        "[Service]\nExecStart=/bin/sleep infinity\n\
         ExecReload=/bin/sh -c 'sleep 3; echo r >>/run/rl.reloads'\n\n[Install]\nWantedBy=multi-user.target\n",
    )
    .symlink(
        "layers/base/etc/systemd/system/multi-user.target.wants/rl.service",
        "../rl.service",
    )
    .file("layers/base/etc/slow/conf", "1\n")
    .file("layers/base/etc/rl/conf", "1\n");
}

/// Change what the three rules cover (probe reload, rl reload, slow
/// restart), run `lab sync` and, once `cond` holds on the machine, `then`
/// there or (`then` empty) SIGKILL lab itself. Returns lab's exit code.
fn sync_killed(
    lab: &lab_testkit::TestLab,
    h: &lab_testhosts::Host,
    v: u32,
    cond: &str,
    then: &str,
) -> i32 {
    let v = format!("{v}\n");
    let files = ["probe/version", "slow/conf", "rl/conf"].map(|f| (f, v.as_str()));
    sync_killed_with(lab, h, "h1", &files, cond, then)
}

/// [`sync_killed`] of `machine`, with `files` (under `layers/base/etc/`)
/// given these contents.
fn sync_killed_with(
    lab: &lab_testkit::TestLab,
    h: &lab_testhosts::Host,
    machine: &str,
    files: &[(&str, &str)],
    cond: &str,
    then: &str,
) -> i32 {
    for (f, text) in files {
        lab.file(&format!("layers/base/etc/{f}"), text);
    }
    build(lab);
    let w = when(h, cond, if then.is_empty() { "echo ready" } else { then });
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("lab"))
        .current_dir(lab.path())
        .env("NO_COLOR", "1")
        .args(["sync", "-m", machine])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    if then.is_empty() {
        // (lab's own process, by its PID)
        let said = w.join().unwrap();
        assert_eq!(said, "ready\n");
        child.kill().unwrap();
        child.wait().unwrap().code().unwrap_or(-9)
    } else {
        let status = child.wait().unwrap();
        assert_eq!(stop(h, w), "killed\n");
        status.code().unwrap_or(-9)
    }
}

#[test]
fn unit_actions_are_never_lost() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    let lab = units_project(&fleet);
    let first = sync(&lab, "h1");
    assert!(first.report.ok(), "{:?}", first.report.apply);
    let reloading = "[ \"$(systemctl show -p ActiveState --value rl.service)\" = reloading ]";
    let stopping = "[ \"$(systemctl show -p ActiveState --value slow.service)\" = deactivating ]";

    // lab killed (its connection gone with it) while the slow ExecStop
    // runs: the machine finishes the actions on its own; the next sync
    // finds nothing pending and runs nothing again
    let before = counts(h);
    assert_ne!(sync_killed(&lab, h, 2, stopping, ""), 0);
    settled(h);
    let r = sync_with(&lab, "h1", &SyncOptions::default()).unwrap();
    assert_eq!(r.report.outcome, Outcome::Unchanged { gen: 2 });
    assert!(r.report.pending.is_empty(), "{:?}", r.report.pending);
    assert!(r.report.apply.units.is_empty());
    assert_eq!(
        counts(h),
        (before.0 + 1, before.1 + 1, before.2 + 1),
        "each action ran once"
    );

    // the executor itself killed after the commit, at two points: in the
    // slow reload (rl), and in the slow stop of the restart (slow)
    for (v, cond, pending) in [
        (
            3,
            reloading,
            vec![("reload", "rl.service"), ("restart", "slow.service")],
        ),
        (4, stopping, vec![("restart", "slow.service")]),
    ] {
        let code = sync_killed(&lab, h, v, cond, KILL_EXECUTOR);
        assert_eq!(code, 1, "lab reports the interrupted run");
        settled(h);
        let gen = 1 + v as u64 - 1;
        let (code, st) = status_json(&lab, &["-m", "h1"]);
        assert_eq!(code, 0);
        assert_eq!(st["machines"][0], machine_status(gen, &[], &[], &pending));
        assert_eq!(lab_run(&lab, &["check", "-m", "h1"]).0, 3);
        let before = counts(h);
        let r = sync_with(&lab, "h1", &SyncOptions::default()).unwrap();
        assert_eq!(r.report.outcome, Outcome::Unchanged { gen });
        let ran: Vec<(String, String)> = r
            .report
            .apply
            .units
            .iter()
            .map(|u| (u.action.clone(), u.unit.clone()))
            .collect();
        let want: Vec<(String, String)> = pending
            .iter()
            .map(|(a, u)| (a.to_string(), u.to_string()))
            .collect();
        assert_eq!(ran, want, "exactly the pending actions");
        assert!(r.report.ok(), "{:?}", r.report.apply);
        let slow = pending.iter().any(|p| p.1 == "slow.service") as usize;
        let rl = pending.iter().any(|p| p.1 == "rl.service") as usize;
        assert_eq!(counts(h), (before.0 + slow, before.1 + rl, before.2));
        // and once
        let again = sync_with(&lab, "h1", &SyncOptions::default()).unwrap();
        assert!(again.report.pending.is_empty());
        assert!(again.report.apply.units.is_empty());
        assert_eq!(counts(h), (before.0 + slow, before.1 + rl, before.2));
        assert_eq!(lab_run(&lab, &["check", "-m", "h1"]).0, 0);
    }
}

#[test]
fn diff_shows_what_is_really_there_and_adopt_makes_a_hand_fix_source() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    let lab = project(fleet.hosts());
    lab.file("layers/base/srv/app/conf", "v1\n");
    sync(&lab, "h1");

    // drift, a new file, and a file lab takes over for the first time
    run(
        h,
        "echo 'hand fix' >/srv/app/conf; echo \"machine's\" >/srv/app/taken",
    );
    lab.file("layers/base/srv/app/new", "new\n")
        .file("layers/base/srv/app/taken", "lab's\n");
    let (code, out, err) = lab_run(&lab, &["diff", "-m", "h1"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "! /srv/app/conf (file 0644, 3 B): drifted on the machine (content-changed; there now: file)\n\
         --- a/srv/app/conf\n\
         +++ b/srv/app/conf\n\
         @@ -1,1 +1,1 @@\n\
         -hand fix\n\
         +v1\n\
         + /srv/app/new (file 0644, 4 B)\n\
         --- /dev/null\n\
         +++ b/srv/app/new\n\
         @@ -0,0 +1,1 @@\n\
         +new\n\
         + /srv/app/taken (file 0644, 6 B) (takes over the machine's file)\n\
         --- a/srv/app/taken\n\
         +++ b/srv/app/taken\n\
         @@ -1,1 +1,1 @@\n\
         -machine's\n\
         +lab's\n"
    );
    lab.remove("layers/base/srv/app/new")
        .remove("layers/base/srv/app/taken");

    // a template is refused, naming it
    run(h, "echo 'by hand' >/etc/motd");
    let (code, _, err) = lab_run(&lab, &["adopt", "-m", "h1", "/etc/motd"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("/etc/motd is rendered from the template `layers/base/etc/motd.j2`"),
        "{err}"
    );
    assert!(!lab.join("machines/h1/etc/motd").exists());
    // (put back by hand: the same bytes lab wrote are no drift)
    run(h, "echo 'h1: managed by lab' >/etc/motd");
    // a path that did not drift: nothing to adopt
    let (code, _, err) = lab_run(&lab, &["adopt", "-m", "h1", "/etc/probe/version"]);
    assert_eq!(code, 1);
    assert!(err.contains("has not drifted"), "{err}");

    // the hand fix becomes source; the next build and sync change nothing
    let inode = run(h, "stat -c %i /srv/app/conf");
    let (code, out, err) = lab_run(&lab, &["adopt", "-m", "h1", "/srv/app/conf"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "h1: adopted /srv/app/conf into machines/h1/srv/app/conf\n"
    );
    assert_eq!(lab.read("machines/h1/srv/app/conf"), "hand fix\n");
    let r = sync(&lab, "h1");
    assert!(matches!(r.report.outcome, Outcome::Applied { .. }));
    assert_eq!((r.report.written, r.report.content_bytes), (0, 0));
    assert!(r.report.apply.units.is_empty());
    assert_eq!(run(h, "cat /srv/app/conf"), "hand fix\n");
    assert_eq!(
        run(h, "stat -c %i /srv/app/conf"),
        inode,
        "not even rewritten"
    );
    assert_eq!(lab_run(&lab, &["check", "-m", "h1"]).0, 0);
}

#[test]
fn drift_on_a_full_or_read_only_disk_fails_cleanly_and_is_repaired_later() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    run(
        h,
        "mkdir -p /srv/small && mount -t tmpfs -o size=1m tmpfs /srv/small",
    );
    let lab = project(fleet.hosts());
    lab.file("layers/base/srv/small/a", &"a".repeat(64 * 1024));
    sync(&lab, "h1");

    // the managed file deleted, then the disk filled by someone else
    run(
        h,
        "rm /srv/small/a; head -c 2M /dev/zero >/srv/small/fill 2>/dev/null || true",
    );
    let (code, out, err) = lab_run(&lab, &["sync", "-m", "h1"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("ran out of disk space writing `/srv/small/a`"),
        "{err}"
    );
    assert_eq!(
        run(h, "ls -A /srv/small"),
        "fill\n",
        "nothing lab did not make is touched"
    );
    assert_eq!(run(h, "cut -d' ' -f1 /var/lib/lab/current"), "1\n");
    // status still tells (it writes nothing)
    let (code, st) = status_json(&lab, &["-m", "h1"]);
    assert_eq!(code, 0);
    assert_eq!(
        st["machines"][0]["drift"],
        serde_json::json!([{"path": "/srv/small/a", "kind": "deleted", "now": "missing"}])
    );

    // read-only: refused with the system's reason, the machine unchanged
    run(h, "rm /srv/small/fill && mount -o remount,ro /srv/small");
    let (code, out, err) = lab_run(&lab, &["sync", "-m", "h1"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("Read-only file system"), "{err}");
    assert_eq!(run(h, "cut -d' ' -f1 /var/lib/lab/current"), "1\n");

    // space and writes back: the next sync repairs
    run(h, "mount -o remount,rw /srv/small");
    let (code, out, err) = lab_run(&lab, &["sync", "-m", "h1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("  repaired /srv/small/a: deleted\n"), "{out}");
    assert_eq!(lab_run(&lab, &["check", "-m", "h1"]).0, 0);
    run(h, "umount /srv/small");
}

/// A connection that, when the sync's apply has checked the machine under
/// its lock and waits for the stream (its `inflight` directory is there),
/// first runs `meddle` on the machine over a connection of its own: a
/// change made after the check and before the commit.
struct Meddling<'a> {
    inner: Box<dyn lab_sync::Transport>,
    host: &'a lab_testhosts::Host,
    meddle: Option<String>,
}

impl lab_sync::Transport for Meddling<'_> {
    fn run(
        &mut self,
        command: &str,
        input: lab_sync::Input<'_>,
    ) -> Result<lab_sync::Output, lab_sync::SyncError> {
        // (the executor's command: a run's; the check is none)
        if !command.contains("RUN=") {
            return self.inner.run(command, input);
        }
        let (host, meddle) = (self.host, self.meddle.take());
        self.inner.run(command, &mut |w| {
            if let Some(m) = &meddle {
                let mut waited = 0;
                while run(host, "test -d /var/lib/lab/inflight && echo y || true") != "y\n" {
                    waited += 1;
                    assert!(waited < 600, "the apply never got past its check");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                run(host, m);
            }
            input(w)
        })
    }

    fn commands(&self) -> u64 {
        self.inner.commands()
    }

    fn sent(&self) -> u64 {
        self.inner.sent()
    }

    fn command_bytes(&self) -> u64 {
        self.inner.command_bytes()
    }
}

/// `lab sync --json` and `lab watch --json` say what drift they repaired
/// and which pending unit actions they ran, in the shapes of `lab status
/// --json`.
fn sync_and_watch_json_tell_drift_and_pending(lab: &lab_testkit::TestLab, h: &lab_testhosts::Host) {
    assert!(sync(lab, "h1").report.ok());
    let reloading = "[ \"$(systemctl show -p ActiveState --value rl.service)\" = reloading ]";
    let v2 = ["probe/version", "slow/conf", "rl/conf"].map(|f| (f, "2\n"));
    assert_eq!(
        sync_killed_with(lab, h, "h1", &v2, reloading, KILL_EXECUTOR),
        1
    );
    settled(h);
    run(h, "echo theirs >>/etc/slow/conf");
    // (lab was killed before it could remember where the machine is: its
    // first try is refused as stale, and the machine is checked again)
    let (code, out, err) = lab_run(lab, &["sync", "-m", "h1", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let m = &v["machines"][0];
    assert_eq!(m["outcome"], "applied", "{m}");
    assert_eq!(
        m["drift"],
        serde_json::json!([{"path": "/etc/slow/conf", "kind": "content-changed", "now": "file"}])
    );
    assert_eq!(
        m["pending"],
        serde_json::json!([
            {"action": "reload", "unit": "rl.service"},
            {"action": "restart", "unit": "slow.service"},
        ])
    );
    let ran: Vec<String> = m["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            format!(
                "{} {}",
                u["action"].as_str().unwrap(),
                u["unit"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(ran, ["reload rl.service", "restart slow.service"]);

    // a watch session's first cycle repairs drift found at its start
    run(h, "chmod 600 /etc/probe/version");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("lab"))
        .current_dir(lab.path())
        .env("NO_COLOR", "1")
        .args(["watch", "-m", "h1", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let first = lines.next().expect("a cycle").unwrap();
    // (lab's own process, by its PID)
    child.kill().unwrap();
    child.wait().unwrap();
    let c: serde_json::Value = serde_json::from_str(&first).unwrap();
    let s = &c["machines"]["h1"]["sync"];
    assert_eq!(s["outcome"], "applied", "{c}");
    assert_eq!(
        s["drift"],
        serde_json::json!([{"path": "/etc/probe/version", "kind": "mode-changed", "now": "file"}])
    );
    assert_eq!(s["pending"], serde_json::json!([]));
    assert_eq!(run(h, "stat -c %a /etc/probe/version"), "644\n");
}

/// `lab rollback` from a generation with unit actions still pending runs
/// them too: the rollback's own journal replaces that generation's, so
/// they would be lost otherwise.
fn rollback_runs_the_pending_actions_of_the_generation_it_leaves(
    lab: &lab_testkit::TestLab,
    h: &lab_testhosts::Host,
) {
    // generation 1: rl 1; 2: rl 2; 3: rl 1 again and probe 3, killed in
    // the reload of rl (probe's had run): back to 1, the rollback itself
    // changes only probe's file, and rl's reload is still owed
    for f in ["probe/version", "slow/conf", "rl/conf"] {
        lab.file(&format!("layers/base/etc/{f}"), "1\n");
    }
    let first = sync(lab, "h2");
    assert!(first.report.ok(), "{:?}", first.report.apply);
    lab.file("layers/base/etc/rl/conf", "2\n");
    let second = sync(lab, "h2");
    assert_eq!(second.report.outcome, Outcome::Applied { gen: 2 });
    let reloading = "[ \"$(systemctl show -p ActiveState --value rl.service)\" = reloading ]";
    let third = [("rl/conf", "1\n"), ("probe/version", "3\n")];
    assert_eq!(
        sync_killed_with(lab, h, "h2", &third, reloading, KILL_EXECUTOR),
        1
    );
    settled(h);
    let (_, st) = status_json(lab, &["-m", "h2"]);
    assert_eq!(st["machines"][0]["generation"], 3);
    assert_eq!(
        st["machines"][0]["pending"],
        serde_json::json!([{"action": "reload", "unit": "rl.service"}])
    );

    let before = counts(h);
    let (code, out, err) = lab_run(lab, &["rollback", "-m", "h2", "--to", "1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("h2: back on generation 1\n"), "{out}");
    assert!(out.contains("  reload rl.service: ok"), "{out}");
    assert!(out.contains("  reload probe.service: ok"), "{out}");
    assert_eq!(
        counts(h),
        (before.0, before.1 + 1, before.2 + 1),
        "rl's owed reload ran, once, with probe's"
    );
    let (_, st) = status_json(lab, &["-m", "h2"]);
    assert_eq!(st["machines"][0]["generation"], 1);
    assert_eq!(st["machines"][0]["pending"], serde_json::json!([]));
    assert_eq!(st["machines"][0]["drift"], serde_json::json!([]));
    assert_eq!(run(h, "cat /etc/rl/conf /etc/probe/version"), "1\n1\n");
}

/// A managed file changed on the machine after a sync's check and before
/// its commit: the sync goes on (it does not own that moment), but never
/// records the file's new facts as lab's: the next check reports the
/// drift, the next sync repairs it.
fn a_change_during_the_apply_is_drift_for_the_next_check(
    lab: &lab_testkit::TestLab,
    h: &lab_testhosts::Host,
) {
    lab.file("layers/base/srv/race/a", "a v1\n")
        .file("layers/base/srv/race/b", "b v1\n")
        .file("layers/base/srv/race/c", "c v1\n");
    sync(lab, "h3");
    lab.file("layers/base/srv/race/b", "b v2\n");
    build(lab);
    let project = lab_config::Project::load(lab.path()).unwrap();
    let m = project.machine("h3").unwrap().clone();
    let target = lab_deploy::target(&project, &m, &lab.join(".lab"));
    let mut t = Meddling {
        inner: lab_deploy::connect(&project, &m, None, false).unwrap(),
        host: h,
        meddle: Some("echo theirs >/srv/race/a; chmod 600 /srv/race/c".into()),
    };
    let r = lab_sync::MachineSync {
        target: &target,
        transport: &mut t,
    }
    .sync(&SyncOptions::default())
    .unwrap();
    assert!(t.meddle.is_none(), "the change was made during the apply");
    let Outcome::Applied { gen } = r.outcome else {
        panic!("{:?}", r.outcome)
    };
    assert!(r.drift.is_empty(), "{:?}", r.drift);
    assert_eq!(run(h, "cat /srv/race/a /srv/race/b"), "theirs\nb v2\n");

    let (code, st) = status_json(lab, &["-m", "h3"]);
    assert_eq!(code, 0);
    assert_eq!(st["machines"][0]["generation"], gen);
    assert_eq!(
        st["machines"][0]["drift"],
        serde_json::json!([
            {"path": "/srv/race/a", "kind": "content-changed", "now": "file"},
            {"path": "/srv/race/c", "kind": "mode-changed", "now": "file"},
        ])
    );
    let fixed = sync(lab, "h3");
    assert_eq!(
        drift_of(&fixed.report),
        vec![
            ("srv/race/a".to_string(), DriftKind::ContentChanged),
            ("srv/race/c".to_string(), DriftKind::ModeChanged),
        ]
    );
    assert_eq!(
        run(h, "cat /srv/race/a; stat -c %a /srv/race/c"),
        "a v1\n644\n"
    );
    assert_eq!(lab_run(lab, &["check", "-m", "h3"]).0, 0);
}

/// `lab` with its SSH control sockets in `runtime/lab-ssh`.
fn lab_in(lab: &lab_testkit::TestLab, runtime: &std::path::Path, args: &[&str]) -> (i32, String) {
    let mut c = lab_testkit::lab(lab, args);
    c.env("XDG_RUNTIME_DIR", runtime)
        .env_remove("LAB_SSH_MULTIPLEX");
    let out = c.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The one control socket in `runtime/lab-ssh` (beside it: the host key
/// lab verified), once its master answers; and the master's PID.
fn master(runtime: &std::path::Path) -> (std::path::PathBuf, u32) {
    for _ in 0..200 {
        let socks: Vec<_> = std::fs::read_dir(runtime.join("lab-ssh"))
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        e.file_type()
                            .is_ok_and(|t| std::os::unix::fs::FileTypeExt::is_socket(&t))
                    })
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        if let [sock] = socks.as_slice() {
            let out = std::process::Command::new("ssh")
                .args(["-O", "check", "-S"])
                .arg(sock)
                .arg("x")
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stderr).to_string();
            if let Some(pid) = said
                .split("pid=")
                .nth(1)
                .and_then(|t| t.split(')').next())
                .and_then(|p| p.parse().ok())
            {
                return (sock.clone(), pid);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("no master in {}", runtime.display());
}

/// A connection is kept open across runs: with the machine's sshd
/// refusing new logins, the next runs still reach it through the master;
/// a master killed (its socket left behind) is noticed, and lab's own
/// connection takes over and starts a new one.
fn connections_are_kept_open_across_runs(lab: &lab_testkit::TestLab, h: &lab_testhosts::Host) {
    let runtime = tempfile::tempdir().unwrap();
    let rt = runtime.path();
    let (code, out) = lab_in(lab, rt, &["sync", "-m", "h1"]);
    assert_eq!(code, 0, "{out}");
    let (sock, pid) = master(rt);
    let mode = std::fs::metadata(rt.join("lab-ssh")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o700
    );

    // no new logins (sessions live on; a timer starts sshd again in any case)
    run(
        h,
        "systemd-run --on-active=120 systemctl start ssh.service >/dev/null 2>&1;          systemctl stop ssh.service",
    );
    assert!(h.run("true").is_err(), "sshd still takes logins");
    let (code, out) = lab_in(lab, rt, &["check", "-m", "h1"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = lab_in(lab, rt, &["sync", "-m", "h1"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("h1: up to date"), "{out}");
    let back = std::process::Command::new("ssh")
        .args(["-o", "ControlMaster=no", "-S"])
        .arg(&sock)
        .args(["x", "systemctl start ssh.service"])
        .status()
        .unwrap();
    assert!(back.success());
    run(h, "true");

    // the master killed (by its PID: a process this test's lab started)
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sock.exists(), "a killed master leaves its socket");
    let (code, out) = lab_in(lab, rt, &["check", "-m", "h1"]);
    assert_eq!(code, 0, "{out}");
    let (_, fresh) = master(rt);
    assert_ne!(fresh, pid);
    let _ = std::process::Command::new("ssh")
        .args(["-O", "exit", "-S"])
        .arg(&sock)
        .arg("x")
        .output();
}

/// The loose ends of convergence, on one fleet (a machine each).
#[test]
fn json_rollback_a_change_during_the_apply_and_kept_connections() {
    let fleet = TestHosts::up(3).unwrap();
    let lab = units_project(&fleet);
    let h = fleet.hosts();
    sync_and_watch_json_tell_drift_and_pending(&lab, &h[0]);
    rollback_runs_the_pending_actions_of_the_generation_it_leaves(&lab, &h[1]);
    a_change_during_the_apply_is_drift_for_the_next_check(&lab, &h[2]);
    connections_are_kept_open_across_runs(&lab, &h[0]);
}
