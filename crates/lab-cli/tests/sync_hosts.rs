//! `lab sync` against real machines: systemd-nspawn test hosts with a real
//! sshd and a real systemd (see docs/testhosts.md). Needs root.

mod common_hosts;

use assert_cmd::Command;
use common_hosts::*;
use lab_sync::{Outcome, SyncOptions};
use lab_testhosts::TestHosts;
use lab_testkit::TestLab;

fn lab_cmd(lab: &TestLab) -> Command {
    let mut c = Command::cargo_bin("lab").unwrap();
    c.current_dir(lab.path()).env("NO_COLOR", "1");
    c
}

/// `ACTION UNIT RESULT` of each unit the sync acted on (and its state
/// after, with `active`).
fn actions_of(r: &Synced, active: bool) -> Vec<String> {
    r.report
        .apply
        .units
        .iter()
        .map(|u| match active {
            true => format!("{} {} {} {}", u.action, u.unit, u.result, u.active),
            false => format!("{} {} {}", u.action, u.unit, u.result),
        })
        .collect()
}

#[test]
fn sends_only_what_changed() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    let lab = project(fleet.hosts());

    let first = sync(&lab, "h1");
    assert_eq!(first.report.outcome, Outcome::Applied { gen: 1 });
    assert_eq!(run(h, "cat /etc/motd"), "h1: managed by lab\n");
    assert_eq!(
        remote_state(h, &manifest(&lab, "h1")),
        expected_state(&manifest(&lab, "h1"))
    );

    // nothing changed: one command, no content
    let again = sync(&lab, "h1");
    assert_eq!(again.report.outcome, Outcome::Unchanged { gen: 1 });
    assert_eq!((again.commands, again.sent), (1, 0));

    // one file changed: only that file travels
    lab.file("layers/base/etc/motd.j2", "{{ machine }}: changed\n");
    let one = sync(&lab, "h1");
    assert_eq!(one.report.outcome, Outcome::Applied { gen: 2 });
    assert_eq!(one.report.written, 1);
    assert_eq!(one.report.content_bytes, "h1: changed\n".len() as u64);
    assert_eq!(
        one.commands, 1,
        "the change goes out at once: the cache says where the machine is"
    );
    assert_eq!(run(h, "cat /etc/motd"), "h1: changed\n");

    // a deleted source disappears; kind changes in every direction
    lab.file("layers/base/srv/a/file-to-dir", "f\n")
        .file("layers/base/srv/a/dir-to-link/x", "x\n")
        .symlink("layers/base/srv/a/link-to-file", "/etc/motd")
        .file("layers/base/srv/a/doomed", "d\n");
    sync(&lab, "h1");
    assert_eq!(run(h, "cat /srv/a/doomed"), "d\n");
    lab.remove("layers/base/srv/a/doomed")
        .remove("layers/base/srv/a/file-to-dir")
        .file("layers/base/srv/a/file-to-dir/now", "n\n")
        .remove("layers/base/srv/a/dir-to-link")
        .symlink("layers/base/srv/a/dir-to-link", "/tmp")
        .remove("layers/base/srv/a/link-to-file")
        .file("layers/base/srv/a/link-to-file", "plain\n");
    let r = sync(&lab, "h1");
    assert!(matches!(r.report.outcome, Outcome::Applied { .. }));
    assert_eq!(run(h, "test -e /srv/a/doomed || echo gone"), "gone\n");
    assert_eq!(
        remote_state(h, &manifest(&lab, "h1")),
        expected_state(&manifest(&lab, "h1"))
    );
}

#[test]
fn units_react_to_exactly_what_changed() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    let lab = project(fleet.hosts());
    let other = PROBE_UNIT.replace("probe", "other");
    lab.file("layers/base/etc/systemd/system/other.service", &other)
        .file("layers/base/etc/other/version", "1\n")
        .symlink(
            "layers/base/etc/systemd/system/multi-user.target.wants/other.service",
            "../other.service",
        );

    // the *.wants links appear: both units start
    let r = sync(&lab, "h1");
    let actions = actions_of(&r, false);
    assert_eq!(
        actions,
        ["start other.service ok", "start probe.service ok"]
    );
    assert_eq!(r.report.apply.daemon_reload.as_deref(), Some("ok"));
    assert_eq!(
        run(h, "systemctl is-active probe.service other.service"),
        "active\nactive\n"
    );
    let (probe_pid, other_pid) = (main_pid(h, "probe.service"), main_pid(h, "other.service"));

    // the unit file changes: daemon-reload, restart; the other unit is untouched
    lab.file(
        "layers/base/etc/systemd/system/probe.service",
        &PROBE_UNIT.replace(
            "Description=lab test probe",
            "Description=lab test probe v2",
        ),
    );
    let r = sync(&lab, "h1");
    assert_eq!(r.report.apply.daemon_reload.as_deref(), Some("ok"));
    assert_eq!(r.report.apply.units.len(), 1);
    assert_eq!(r.report.apply.units[0].action, "restart");
    let new_pid = main_pid(h, "probe.service");
    assert_ne!(new_pid, probe_pid, "restarted");
    assert_eq!(
        main_pid(h, "other.service"),
        other_pid,
        "untouched unit not restarted"
    );
    assert_eq!(
        run(h, "systemctl show -p Description --value probe.service"),
        "lab test probe v2\n"
    );

    // a drop-in likewise
    lab.file(
        "layers/base/etc/systemd/system/probe.service.d/10-env.conf",
        "[Service]\nEnvironment=PROBE=1\n",
    );
    sync(&lab, "h1");
    let pid3 = main_pid(h, "probe.service");
    assert_ne!(pid3, new_pid);
    assert_eq!(
        run(h, "systemctl show -p Environment --value probe.service"),
        "PROBE=1\n"
    );

    // a file a [[units]] rule maps to the unit: reload, same MainPID
    lab.file("layers/base/etc/probe/version", "2\n");
    let r = sync(&lab, "h1");
    let actions = actions_of(&r, false);
    assert_eq!(actions, ["reload probe.service ok"]);
    assert_eq!(r.report.apply.daemon_reload, None, "no unit file changed");
    assert_eq!(
        main_pid(h, "probe.service"),
        pid3,
        "reloaded, not restarted"
    );
    assert_eq!(run(h, "cat /run/probe.reloads"), "2\n", "ExecReload ran");
    assert_eq!(main_pid(h, "other.service"), other_pid);
}

#[test]
fn restarts_past_a_units_start_limit_all_happen() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    let lab = project(fleet.hosts());
    let toml = std::fs::read_to_string(lab.join("lab.toml"))
        .unwrap()
        .replace("action = \"reload\"", "action = \"restart\"");
    // (systemd's default, 5 starts in 10 s, made small enough that every
    // run of this test goes past it, whatever the machine's speed)
    let unit = PROBE_UNIT.replace(
        "[Service]\n",
        "StartLimitBurst=3\nStartLimitIntervalSec=300\n\n[Service]\n",
    );
    lab.file("lab.toml", &toml)
        .file("layers/base/etc/systemd/system/probe.service", &unit);
    let r = sync(&lab, "h1");
    assert!(matches!(r.report.outcome, Outcome::Applied { .. }));
    for i in 2..=7 {
        lab.file("layers/base/etc/probe/version", &format!("{i}\n"));
        let r = sync(&lab, "h1");
        let actions = actions_of(&r, true);
        assert_eq!(
            actions,
            ["restart probe.service ok active"],
            "change {i}: every change restarts the unit, its start limit notwithstanding"
        );
    }
    assert_eq!(run(h, "tail -n 1 /run/probe.starts"), "7\n");
    assert_eq!(run(h, "wc -l </run/probe.starts").trim(), "7");
}

#[test]
fn a_failing_unit_is_reported_and_can_be_rolled_back() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    let lab = project(fleet.hosts());
    // the broken unit below dies a moment after it started: watch it
    lab.file(
        "lab.toml",
        &lab_toml(fleet.hosts(), "").replacen("[settings]\n", "[settings]\nsettle_ms = 300\n", 1),
    );
    sync(&lab, "h1");
    let good = remote_state(h, &manifest(&lab, "h1"));
    let good_manifest = manifest(&lab, "h1");

    let broken = PROBE_UNIT.replace(
        "ExecStart=/bin/sleep infinity",
        "ExecStart=/bin/sh -c 'echo probe is broken >&2; exit 3'",
    );
    lab.file("layers/base/etc/systemd/system/probe.service", &broken);
    let r = sync(&lab, "h1");
    assert_eq!(r.report.failed_units, ["probe.service"]);
    let u = &r.report.apply.units[0];
    assert_eq!(
        (u.action.as_str(), u.result.as_str()),
        ("restart", "failed")
    );
    assert!(
        u.journal.iter().any(|l| l.contains("probe is broken")),
        "journal tail: {:?}",
        u.journal
    );

    // `lab rollback`: byte for byte back, and the unit runs again
    lab_cmd(&lab)
        .args(["rollback", "--machine", "h1"])
        .assert()
        .success()
        .stdout(predicates::str::contains("h1: back on generation 1\n"));
    assert_eq!(remote_state(h, &good_manifest), good);
    assert_eq!(run(h, "systemctl is-active probe.service"), "active\n");

    // --rollback-on-failure does the same by itself
    build(&lab);
    let r = sync_with(
        &lab,
        "h1",
        &SyncOptions {
            rollback_on_failure: true,
        },
    )
    .unwrap();
    assert_eq!(r.report.outcome, Outcome::RolledBack { gen: 1 });
    assert_eq!(r.report.failed_units, ["probe.service"]);
    let rb = r.report.rollback.as_ref().unwrap();
    assert!(
        rb.units
            .iter()
            .any(|u| u.unit == "probe.service" && u.result == "ok"),
        "{rb:?}"
    );
    assert_eq!(remote_state(h, &good_manifest), good);
    assert_eq!(run(h, "systemctl is-active probe.service"), "active\n");

    // through the CLI: exit code 1, the failure and the rollback are named
    let out = lab_cmd(&lab)
        .args(["sync", "--machine", "h1", "--rollback-on-failure"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("h1: unit failure (probe.service), rolled back on generation 1"),
        "{stdout}"
    );
    assert!(stdout.contains("| "), "journal tail shown: {stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("error: 1 machine failed: `h1`"));
}

#[test]
fn concurrent_syncs_to_one_machine_are_serialized() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    // A's unit takes two seconds to start, holding the machine's lock
    let a = project(fleet.hosts());
    a.file(
        "layers/base/etc/systemd/system/probe.service",
        &PROBE_UNIT.replace("ExecStartPre=", "ExecStartPre=/bin/sleep 2\nExecStartPre="),
    );
    let b = project(fleet.hosts());
    b.file("layers/base/etc/motd.j2", "B was here\n");
    for l in [&a, &b] {
        build(l);
    }
    let mut first = std::process::Command::new(assert_cmd::cargo::cargo_bin("lab"));
    first
        .current_dir(a.path())
        .args(["sync", "-m", "h1"])
        .stdout(std::process::Stdio::piped());
    let first = first.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let second = lab_cmd(&b).args(["sync", "-m", "h1"]).output().unwrap();
    let first = first.wait_with_output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stdout)
    );
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stdout)
    );
    let second_out = String::from_utf8_lossy(&second.stdout);
    assert!(second_out.contains("waiting for the lock"), "{second_out}");
    assert!(second_out.contains("applied generation 2"), "{second_out}");
    assert_eq!(run(h, "cat /etc/motd"), "B was here\n");
    assert_eq!(
        remote_state(h, &manifest(&b, "h1")),
        expected_state(&manifest(&b, "h1"))
    );
}

#[test]
fn fan_out_to_eight_hosts_with_one_down() {
    let fleet = TestHosts::up(8).unwrap();
    let hosts = fleet.hosts();
    let lab = project(hosts);
    // h5 is down: its sshd does not answer
    run(
        &hosts[4],
        "systemctl stop ssh.socket ssh.service 2>/dev/null; systemctl stop ssh 2>/dev/null; true",
    );
    let out = lab_cmd(&lab)
        .args(["sync", "--all", "-j", "8"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    for i in [1, 2, 3, 4, 6, 7, 8] {
        assert!(
            stdout.contains(&format!("h{i}: applied generation 1:")),
            "{stdout}"
        );
        assert_eq!(
            run(&hosts[i - 1], "cat /etc/motd"),
            format!("h{i}: managed by lab\n")
        );
    }
    assert!(
        stderr.contains("error: machine `h5`: cannot connect to"),
        "{stderr}"
    );
    assert!(
        stderr.ends_with("error: 1 machine failed: `h5`\n"),
        "{stderr}"
    );
}

#[test]
fn ssh_config_host_aliases_and_proxy_jump() {
    let fleet = TestHosts::up(2).unwrap();
    let (h1, h2) = (&fleet.hosts()[0], &fleet.hosts()[1]);
    let lab = TestLab::new();
    // `behind` is only reachable through h2: its HostName is h2's own
    // localhost, which from here has no sshd at all.
    let h2_key = h2.known_hosts_line.split_once(' ').unwrap().1;
    lab.file(
        "known_hosts",
        &format!("{}\nlocalhost {h2_key}\n", h1.known_hosts_line),
    );
    let config = format!(
        "Host web\n  HostName {}\n  User root\n  IdentityFile {id}\n\n\
         Host behind\n  HostName localhost\n  ProxyJump root@{}\n  IdentityFile {id}\n\n\
         Host {}\n  IdentityFile {id}\n  UserKnownHostsFile {kh}\n  StrictHostKeyChecking yes\n",
        h1.address,
        h2.address,
        h2.address,
        id = h1.identity.display(),
        kh = h2.known_hosts.display(),
    );
    lab.file("ssh_config", &config);
    lab.file(
        "lab.toml",
        "[settings]\nknown_hosts = \"known_hosts\"\n\n[machines.web]\nlayers = [\"base\"]\n\n[machines.behind]\nlayers = [\"base\"]\n",
    )
    .file("layers/base/etc/motd.j2", "{{ machine }} via ssh config\n");
    let out = lab_cmd(&lab)
        .env("LAB_SSH_CONFIG", lab.join("ssh_config"))
        .args(["sync", "--all"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(run(h1, "cat /etc/motd"), "web via ssh config\n");
    assert_eq!(run(h2, "cat /etc/motd"), "behind via ssh config\n");

    // A config value never reaches ssh's command line as an option.
    let marker = lab.join("pwned");
    for jump in [
        format!("-oProxyCommand=touch${{IFS}}{}", marker.display()),
        format!(
            "root@{},-oProxyCommand=touch${{IFS}}{}",
            h2.address,
            marker.display()
        ),
    ] {
        lab.file(
            "ssh_config",
            &format!("Host behind\n  HostName localhost\n  ProxyJump {jump}\n  IdentityFile {}\n\n{config}", h1.identity.display()),
        );
        let out = lab_cmd(&lab)
            .env("LAB_SSH_CONFIG", lab.join("ssh_config"))
            .args(["sync", "-m", "behind"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("refusing ProxyJump `-oProxyCommand=touch${IFS}"),
            "{err}"
        );
        assert!(!marker.exists());
    }
}

#[test]
fn facts_are_gathered_over_ssh_and_feed_templates() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    let lab = project(fleet.hosts());
    lab.file(
        "layers/base/etc/issue.j2",
        "{{ os_id }} {{ os_version_codename }} on {{ arch }}, {{ nproc }} cpus, host {{ hostname }}\n",
    );
    // the first sync gathers the facts it needs over its own connection
    lab_cmd(&lab).args(["sync", "-m", "h1"]).assert().success();
    let hostname = run(h, "uname -n");
    let arch = run(h, "uname -m");
    let nproc = run(h, "nproc");
    assert_eq!(
        run(h, "cat /etc/issue"),
        format!(
            "debian bookworm on {}, {} cpus, host {}\n",
            arch.trim(),
            nproc.trim(),
            hostname.trim()
        )
    );
    // cached in a readable file, printed by `lab facts`
    let cached: serde_json::Value = serde_json::from_str(&lab.read(".lab/facts/h1.json")).unwrap();
    assert_eq!(cached["os_version_id"], "12");
    assert_eq!(cached["hostname"], hostname.trim());
    let out = lab_cmd(&lab).args(["facts", "-m", "h1"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("os_version_codename=bookworm\n"));
    // --refresh asks the machine again
    run(h, "hostname renamed-by-test");
    lab_cmd(&lab)
        .args(["facts", "-m", "h1", "--refresh"])
        .assert()
        .success();
    let cached: serde_json::Value = serde_json::from_str(&lab.read(".lab/facts/h1.json")).unwrap();
    assert_eq!(cached["hostname"], "renamed-by-test");
}

/// A machine reached as a non-root user with passwordless sudo
/// (`become = "sudo"`): sync, unit actions and rollback work as for root,
/// the files belong to root. A sudo that wants a password is a clear error
/// and changes nothing.
#[test]
fn a_non_root_user_with_sudo() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    run(
        h,
        "id deploy >/dev/null 2>&1 || useradd -m -s /bin/sh deploy; \
         install -d -m 700 -o deploy -g deploy /home/deploy/.ssh; \
         install -m 600 -o deploy -g deploy /root/.ssh/authorized_keys /home/deploy/.ssh/authorized_keys; \
         echo 'deploy ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/deploy; chmod 440 /etc/sudoers.d/deploy",
    );
    let lab = project(fleet.hosts());
    let toml = lab
        .read("lab.toml")
        .replace("user = \"root\"", "user = \"deploy\"\nbecome = \"sudo\"");
    assert!(toml.contains("become"), "{toml}");
    lab.file("lab.toml", &toml);
    let sync = |lab: &TestLab| lab_cmd(lab).args(["sync", "-m", "h1"]).output().unwrap();
    let out = sync(&lab);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(run(h, "stat -c '%U %a' /etc/motd"), "root 644\n");
    assert_eq!(run(h, "systemctl is-active probe.service"), "active\n");
    assert_eq!(run(h, "cat /etc/probe/version"), "1\n");
    lab.file("layers/base/etc/probe/version", "2\n");
    let out = sync(&lab);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        run(h, "cat /run/probe.reloads"),
        "2\n",
        "the unit action ran as root"
    );
    let out = lab_cmd(&lab)
        .args(["rollback", "-m", "h1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(run(h, "cat /etc/probe/version"), "1\n");

    // owners: files and directories under /srv/app belong to deploy; an
    // owner-only change ships, a rollback gives the old owner back, an
    // owner the machine does not have fails the sync and changes nothing
    lab.file("layers/base/srv/app/config", "c\n")
        .file("layers/base/srv/app/data/x", "x\n");
    let with_owners = |owner: &str| {
        format!(
            "{toml}\n[[owners]]\npaths = [\"/srv/app/**\"]\nowner = \"{owner}\"\ngroup = \"deploy\"\n"
        )
    };
    lab.file("lab.toml", &with_owners("deploy"));
    let out = sync(&lab);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let owners = "stat -c '%n %U:%G %a' /srv/app/config /srv/app/data /srv/app/data/x /etc/motd";
    assert_eq!(
        run(h, owners),
        "/srv/app/config deploy:deploy 644\n/srv/app/data deploy:deploy 755\n/srv/app/data/x deploy:deploy 644\n/etc/motd root:root 644\n"
    );
    assert!(lab.read(".lab/out/h1.manifest").contains(
        "\"path\":\"/srv/app/config\",\"kind\":\"file\",\"mode\":\"0644\",\"size\":2,\"sha256\""
    ));
    lab.file("lab.toml", &with_owners("nobody"));
    let diff = lab_cmd(&lab).args(["diff", "-m", "h1"]).output().unwrap();
    let diff = String::from_utf8_lossy(&diff.stdout);
    assert!(
        diff.contains("/srv/app/config (file 0644, 2 B, deploy:deploy) -> /srv/app/config (file 0644, 2 B, nobody:deploy)"),
        "the diff shows the owner change:\n{diff}"
    );
    let out = sync(&lab);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        run(h, owners),
        "/srv/app/config nobody:deploy 644\n/srv/app/data nobody:deploy 755\n/srv/app/data/x nobody:deploy 644\n/etc/motd root:root 644\n"
    );
    let out = lab_cmd(&lab)
        .args(["rollback", "-m", "h1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        run(h, owners),
        "/srv/app/config deploy:deploy 644\n/srv/app/data deploy:deploy 755\n/srv/app/data/x deploy:deploy 644\n/etc/motd root:root 644\n"
    );
    lab.file("lab.toml", &with_owners("no-such-user"));
    let out = sync(&lab);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("owner no-such-user:deploy: no such user or group on the machine"),
        "{err}"
    );
    assert_eq!(
        run(h, owners),
        "/srv/app/config deploy:deploy 644\n/srv/app/data deploy:deploy 755\n/srv/app/data/x deploy:deploy 644\n/etc/motd root:root 644\n"
    );
    lab.file("lab.toml", &toml);

    // sudo that asks for a password
    let before = run(h, "cat /etc/probe/version");
    run(h, "echo 'deploy ALL=(ALL) ALL' > /etc/sudoers.d/deploy");
    lab.file("layers/base/etc/probe/version", "3\n");
    let out = sync(&lab);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "error: machine `h1`: `sudo -n` as `deploy` on `{}` did not run lab's command: sudo: a password is required",
            if h.port == 22 { h.address.clone() } else { format!("[{}]:{}", h.address, h.port) }
        )),
        "{err}"
    );
    assert!(
        err.contains("hint: lab cannot type a password: give `deploy` passwordless sudo"),
        "{err}"
    );
    assert_eq!(run(h, "cat /etc/probe/version"), before, "nothing changed");
}
