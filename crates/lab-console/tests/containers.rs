//! Container machines through the console, on a real host of the
//! `machines` flavor (nested systemd-nspawn): a namespace admin creates,
//! stops, starts and destroys one, and adds an SSH key with which a real
//! `ssh` (through the host, as `lab ssh --config` prints) gets a shell; a
//! namespace user may do none of it. Phases in order, one host. Needs root.

mod common;

use common::Fixture;
use lab_testhosts::{Flavor, Host, TestHosts};
use std::path::Path;
use std::process::Command;

const IMAGE: &str = "/var/lib/lab/images/bookworm";

fn sh(h: &Host, cmd: &str) -> String {
    h.run(cmd)
        .unwrap_or_else(|e| panic!("`{cmd}` on the host: {e}"))
}

fn ok(events: &str) -> bool {
    events.contains("event: done\ndata: ok")
}

/// The unit state of container machine `c1` on its host.
fn unit(h: &Host) -> String {
    sh(h, "systemctl is-active lab-machine@c1.service || true")
}

/// `ssh -F config c1 hostname`: stdout, or stderr when it failed.
fn ssh_hostname(config: &Path) -> Result<String, String> {
    let out = Command::new("ssh")
        .arg("-F")
        .arg(config)
        .args(["c1", "hostname"])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `s` as the page shows it (minijinja escapes `/` too).
fn escaped(s: &str) -> String {
    s.replace('/', "&#x2f;")
}

/// The first row of the container machines table of a host's page.
fn container_row(page: &str) -> String {
    common::table_rows(page, "containers")
        .into_iter()
        .next()
        .expect("a row")
}

#[test]
fn container_machines_through_the_console() {
    let fleet = TestHosts::builder()
        .flavor(Flavor::Machines)
        .up(1)
        .expect("boot a machines test host");
    let h = &fleet.hosts()[0];
    let toml = format!(
        "[settings]\nknown_hosts = \"{kh}\"\nidentity = \"{id}\"\n\n\
         [machines.host1]\nhost = \"{addr}\"\nport = {port}\ntags = [\"team\"]\n\n\
         [machines.c1]\non = \"host1\"\nimage = \"{IMAGE}\"\ntags = [\"team\"]\n",
        kh = h.known_hosts.display(),
        id = h.identity.display(),
        addr = h.address,
        port = h.port,
    );
    let f = Fixture::start(&toml, |_| {}, |_| {});
    f.people();
    let mut bob = f.login("bob");
    let mut alice = f.login("alice");

    // a namespace user may not create it (refused, audited); its page
    // offers her no such button
    assert_eq!(alice.act("/ns/team/machine/c1/create", &[]).status, 403);
    assert!(!alice
        .get("/ns/team/machine/c1")
        .body
        .contains("id=\"create\""));
    assert_eq!(unit(h), "inactive\n");
    assert!(f
        .audited("refused")
        .iter()
        .any(|e| e.user == "alice" && e.action == "POST /ns/{ns}/machine/{machine}/create"));

    // the admin creates it: booted, its key pinned
    assert!(bob
        .get("/ns/team/machine/c1")
        .body
        .contains("id=\"create\""));
    let (_, events) = bob.run_job("/ns/team/machine/c1/create");
    assert!(ok(&events), "{events}");
    assert!(events.contains("data: created c1 on host1"), "{events}");
    assert_eq!(unit(h), "active\n");
    assert_eq!(sh(h, "systemctl -M c1 is-system-running"), "running\n");
    let pinned = f.lab.read(".lab/machines/known_hosts");
    assert!(pinned.starts_with("c1 ssh-ed25519 "), "{pinned}");
    // its host's page lists it, as the host has it
    assert_eq!(
        container_row(&bob.get("/ns/team/machine/host1").body),
        format!("c1 | active | running | 10.231.0.2 | {}", escaped(IMAGE))
    );
    // a second create touches nothing
    let boot = sh(
        h,
        "systemctl show -p MainPID --value lab-machine@c1.service",
    );
    let (_, events) = bob.run_job("/ns/team/machine/c1/create");
    assert!(
        ok(&events) && events.contains("data: c1 exists on host1"),
        "{events}"
    );
    assert_eq!(
        sh(
            h,
            "systemctl show -p MainPID --value lab-machine@c1.service"
        ),
        boot
    );

    // stop, then start: its unit on the host
    assert_eq!(alice.act("/ns/team/machine/c1/stop", &[]).status, 403);
    assert_eq!(unit(h), "active\n");
    let (_, events) = bob.run_job("/ns/team/machine/c1/stop");
    assert!(
        ok(&events) && events.contains("data: its unit is inactive"),
        "{events}"
    );
    assert_eq!(unit(h), "inactive\n");
    assert_eq!(
        container_row(&bob.get("/ns/team/machine/host1").body),
        format!("c1 | inactive | - | 10.231.0.2 | {}", escaped(IMAGE))
    );
    let (_, events) = bob.run_job("/ns/team/machine/c1/start");
    assert!(
        ok(&events) && events.contains("data: its unit is active"),
        "{events}"
    );
    assert_eq!(unit(h), "active\n");
    assert_eq!(
        sh(h, "systemctl -M c1 is-system-running --wait"),
        "running\n"
    );

    // an SSH key of the user's own: before it is added, ssh (through
    // the host, the blocks `lab ssh --config c1` prints, with only that
    // key for c1) is refused
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("id_c1");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "bob@desk", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let config = keys.path().join("config");
    std::fs::write(
        &config,
        format!(
            "Host host1\n    HostName {addr}\n    Port {port}\n    User root\n    IdentityFile {id}\n    \
             UserKnownHostsFile {kh}\n    IdentitiesOnly yes\n    BatchMode yes\n\n\
             Host c1\n    HostName 10.231.0.2\n    User root\n    ProxyJump host1\n    HostKeyAlias c1\n    \
             UserKnownHostsFile {pins}\n    StrictHostKeyChecking yes\n    IdentityFile {key}\n    \
             IdentitiesOnly yes\n    BatchMode yes\n",
            addr = h.address,
            port = h.port,
            id = h.identity.display(),
            kh = h.known_hosts.display(),
            pins = f.lab.join(".lab/machines/known_hosts").display(),
            key = key.display(),
        ),
    )
    .unwrap();
    let refused = ssh_hostname(&config).unwrap_err();
    assert!(refused.contains("Permission denied"), "{refused}");

    // anything but one public key line is refused, saying why
    for (bad, why) in [
        ("", "the key is empty"),
        ("hello", "`hello` is not a key type"),
        (
            &format!("{}\n{}", public.trim(), public.trim()),
            "more than one line",
        ),
        (
            &format!("command=\"/bin/sh\" {public}"),
            "is not a key type",
        ),
    ] {
        let r = bob.act("/ns/team/machine/c1/key", &[("key", bad)]);
        assert_eq!(r.status, 400, "{bad:?}: {}", r.body);
        assert!(r.body.contains("not an OpenSSH public key"), "{}", r.body);
        assert!(r.body.contains(why), "{why}: {}", r.body);
    }
    assert_eq!(
        alice
            .act("/ns/team/machine/c1/key", &[("key", &public)])
            .status,
        403
    );

    // added: ssh with that key gets a shell in c1
    let r = bob.act("/ns/team/machine/c1/key", &[("key", &public)]);
    assert_eq!(r.status, 303, "{}", r.body);
    let job = r.header("Location").unwrap().to_string();
    let events = bob.get(&format!("{job}/events")).body;
    assert!(ok(&events), "{events}");
    assert!(
        events.contains("data: the ssh-ed25519 key (bob@desk) was added to root's authorized_keys"),
        "{events}"
    );
    assert_eq!(ssh_hostname(&config), Ok("c1\n".to_string()));
    // once: a second upload adds nothing; the keys lab put there at
    // creation are kept
    let r = bob.act("/ns/team/machine/c1/key", &[("key", &public)]);
    let events = bob
        .get(&format!("{}/events", r.header("Location").unwrap()))
        .body;
    assert!(
        events.contains("is already in root's authorized_keys"),
        "{events}"
    );
    let blob = public.split_whitespace().nth(1).unwrap();
    let authorized = "/var/lib/lab/machines/c1/root/root/.ssh/authorized_keys";
    assert_eq!(sh(h, &format!("grep -c {blob} {authorized}")), "1\n");
    assert_eq!(
        sh(h, &format!("grep -c -v {blob} {authorized}")),
        sh(h, "wc -l < /root/.ssh/authorized_keys"),
    );
    assert_eq!(
        sh(h, &format!("stat -c '%a %U' {authorized}")),
        "600 root\n"
    );
    // audited, with the key's type and comment (never more of it)
    let added: Vec<_> = f
        .audited("started")
        .into_iter()
        .filter(|e| e.action == "add key")
        .collect();
    assert_eq!(added.len(), 2);
    assert!(added
        .iter()
        .all(|e| e.user == "bob" && e.target == "team/c1"));
    assert!(
        added[0].detail.ends_with(": ssh-ed25519 bob@desk"),
        "{:?}",
        added[0]
    );

    // never through a symlink: authorized_keys pointing elsewhere is left
    // alone, and so is what it points to
    sh(
        h,
        "mv /var/lib/lab/machines/c1/root/root/.ssh/authorized_keys /var/lib/lab/machines/c1/root/root/.ssh/keys && \
         ln -s keys /var/lib/lab/machines/c1/root/root/.ssh/authorized_keys",
    );
    let other =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJq9OwHCNj+uFCjTTit6BICaoVBciA07qHeKWou66Slm other";
    let r = bob.act("/ns/team/machine/c1/key", &[("key", other)]);
    let events = bob
        .get(&format!("{}/events", r.header("Location").unwrap()))
        .body;
    assert!(!ok(&events), "{events}");
    assert!(
        events.contains("/root/.ssh/authorized_keys is a symlink: lab does not write through it"),
        "{events}"
    );
    assert_eq!(
        sh(h, "grep -c AAAAC3NzaC1lZDI1NTE5AAAAIJq9Ow /var/lib/lab/machines/c1/root/root/.ssh/keys || true"),
        "0\n"
    );
    assert_eq!(
        sh(
            h,
            "readlink /var/lib/lab/machines/c1/root/root/.ssh/authorized_keys"
        ),
        "keys\n"
    );

    // destroyed: nothing of it left on the host, its pin gone
    assert_eq!(alice.act("/ns/team/machine/c1/destroy", &[]).status, 403);
    let (_, events) = bob.run_job("/ns/team/machine/c1/destroy");
    assert!(
        ok(&events) && events.contains("data: destroyed c1 on host1"),
        "{events}"
    );
    assert_eq!(unit(h), "inactive\n");
    assert_eq!(sh(h, "ls -A /var/lib/lab/machines"), "");
    assert_eq!(sh(h, "machinectl list --no-legend | wc -l"), "0\n");
    assert!(!f.lab.read(".lab/machines/known_hosts").contains("c1 "));
    // declared, not there: the host's page says it is missing
    assert_eq!(
        container_row(&bob.get("/ns/team/machine/host1").body),
        "c1 | missing | -"
    );
    // an action on it now fails, saying why
    let (_, events) = bob.run_job("/ns/team/machine/c1/stop");
    assert!(
        !ok(&events) && events.contains("no container machine `c1` on `host1`"),
        "{events}"
    );
    // the machine page lists who did what
    let page = bob.get("/ns/team/machine/c1").body;
    assert!(
        page.contains("<td>bob</td><td>destroy</td><td>ok</td>"),
        "{page}"
    );
}
