//! `lab bootstrap` on a real test host made to look like a fresh VPS: root
//! logs in with a password, password and root logins are on.

mod common_hosts;

use common_hosts::*;
use lab_sync::{HostKeyPolicy, Login, SshTarget, SshTransport, Transport};
use lab_testhosts::{Host, TestHosts};
use lab_testkit::TestLab;
use std::time::Duration;

const ROOT_PASSWORD: &str = "fresh vps 123";

fn lab(lab: &TestLab, args: &[&str], password: &str) -> (i32, String, String) {
    let out = assert_cmd::Command::cargo_bin("lab")
        .unwrap()
        .current_dir(lab.path())
        .env("NO_COLOR", "1")
        .env("ROOT_PW", password)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn login(h: &Host, user: &str, how: Login<'_>) -> Result<SshTransport, lab_sync::SyncError> {
    let t = SshTarget {
        identities: vec![h.identity.clone()],
        identities_only: true,
        ..SshTarget::new(&h.address, h.port, user, h.known_hosts.clone())
    };
    SshTransport::connect_as(
        &t,
        &HostKeyPolicy::Known,
        &how,
        Duration::from_secs(10),
        Duration::from_secs(60),
    )
}

fn as_root_by_password(h: &Host, cmd: &str) -> String {
    let mut c = login(h, "root", Login::Password(ROOT_PASSWORD)).unwrap();
    c.run(cmd, &mut |_| Ok(())).unwrap().stdout_text()
}

fn fingerprint(h: &Host) -> String {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("kh");
    std::fs::write(&f, format!("{}\n", h.known_hosts_line)).unwrap();
    let out = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&f)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

#[test]
fn bootstrap_a_fresh_machine() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    // a fresh VPS: root has a password and may log in with it
    run(
        h,
        &format!(
            "echo 'root:{ROOT_PASSWORD}' | chpasswd; \
             printf 'PermitRootLogin yes\\nPasswordAuthentication yes\\nKbdInteractiveAuthentication yes\\n' \
               > /etc/ssh/sshd_config.d/10-fresh-vps.conf; systemctl reload ssh"
        ),
    );
    let t = TestLab::new();
    t.file(
        "lab.toml",
        "# my lab\n[settings]\nknown_hosts = \"known_hosts\"\n",
    );
    let pubkey = format!("{}.pub", h.identity.display());
    let dest = format!("root@{}", h.address);
    let fp = fingerprint(h);
    let args = |fp: &str| -> Vec<String> {
        vec![
            "bootstrap".into(),
            dest.clone(),
            "--port".into(),
            h.port.to_string(),
            "--as".into(),
            "deploy".into(),
            "--machine".into(),
            "vps1".into(),
            "--key".into(),
            pubkey.clone(),
            "--password-env".into(),
            "ROOT_PW".into(),
            "--expect-fingerprint".into(),
            fp.into(),
        ]
    };
    let argv = |fp: &str| args(fp);

    // a host key that is not the expected one: nothing is sent
    let a = argv("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let (code, _, err) = lab(
        &t,
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
        ROOT_PASSWORD,
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("is not the expected") || err.contains("not the expected SHA256:AAAA"),
        "{err}"
    );
    assert_eq!(
        as_root_by_password(h, "id deploy >/dev/null 2>&1 || echo none"),
        "none\n"
    );

    // a wrong password: a clear error, the machine unchanged
    let a = argv(&fp);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, _, err) = lab(&t, &a, "wrong");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("authentication as `root`") && err.contains("a password"),
        "{err}"
    );
    assert!(
        !err.contains("wrong"),
        "the password is never printed: {err}"
    );
    assert_eq!(
        as_root_by_password(h, "id deploy >/dev/null 2>&1 || echo none"),
        "none\n"
    );

    // the real thing
    let (code, out, err) = lab(&t, &a, ROOT_PASSWORD);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("vps1: created user deploy"), "{out}");
    assert!(
        out.contains("vps1: password and root logins turned off"),
        "{out}"
    );
    assert!(out.contains("vps1: added to lab.toml"), "{out}");
    assert!(!out.contains(ROOT_PASSWORD) && !err.contains(ROOT_PASSWORD));
    let toml = t.read("lab.toml");
    assert!(toml.starts_with("# my lab\n"), "{toml}");
    assert!(toml.contains("[machines.vps1]\nhost = "), "{toml}");
    assert!(
        toml.contains("user = \"deploy\"\n") && toml.contains("become = \"sudo\"\n"),
        "{toml}"
    );
    assert!(t
        .read("machines/vps1/etc/sudoers.d/lab-deploy")
        .contains("NOPASSWD"));
    assert!(t.path().join(".lab/facts/vps1.json").exists());

    // the user logs in with the key and has sudo; root and passwords are out
    let mut c = login(h, "deploy", Login::Keys).unwrap();
    assert_eq!(
        c.run("sudo -n id -u", &mut |_| Ok(()))
            .unwrap()
            .stdout_text(),
        "0\n"
    );
    assert!(
        login(h, "root", Login::Password(ROOT_PASSWORD)).is_err(),
        "root password login"
    );
    assert!(login(h, "root", Login::Keys).is_err(), "root key login");
    assert!(
        login(h, "deploy", Login::Password(ROOT_PASSWORD)).is_err(),
        "password login"
    );
    // linger and subordinate ids for rootless containers
    let out = c
        .run(
            "ls /var/lib/systemd/linger; grep ^deploy: /etc/subuid /etc/subgid | wc -l",
            &mut |_| Ok(()),
        )
        .unwrap()
        .stdout_text();
    assert_eq!(out, "deploy\n2\n");

    // the machine is an ordinary lab machine: its drop-ins are sources
    let (code, out, err) = lab(&t, &["sync", "-m", "vps1"], "");
    assert_eq!(code, 0, "{out}{err}");

    // a second run changes nothing and says so
    let before = c
        .run("sudo -n sh -c 'cat /etc/ssh/sshd_config.d/* /etc/sudoers.d/* /etc/subuid; stat -c %Y /etc/passwd'", &mut |_| Ok(()))
        .unwrap()
        .stdout_text();
    let toml_before = t.read("lab.toml");
    let (code, out, err) = lab(&t, &a, ROOT_PASSWORD);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("vps1: already bootstrapped; nothing changed on the machine"),
        "{out}"
    );
    assert_eq!(t.read("lab.toml"), toml_before);
    let after = c
        .run("sudo -n sh -c 'cat /etc/ssh/sshd_config.d/* /etc/sudoers.d/* /etc/subuid; stat -c %Y /etc/passwd'", &mut |_| Ok(()))
        .unwrap()
        .stdout_text();
    assert_eq!(before, after);
}
