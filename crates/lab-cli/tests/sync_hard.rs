//! The hard cases of `lab sync`: host keys (against a real sshd on
//! loopback), and syncs killed at 20 moments (on a real test host).

mod common_hosts;

use assert_cmd::Command;
use common_hosts::*;
use lab_manifest::{EntryKind, Manifest};
use lab_testhosts::{SshdFixture, TestHosts};
use lab_testkit::TestLab;
use std::collections::BTreeMap;
use std::time::Duration;

fn lab_cmd(lab: &TestLab) -> Command {
    let mut c = Command::cargo_bin("lab").unwrap();
    c.current_dir(lab.path()).env("NO_COLOR", "1");
    c
}

/// `ssh-keygen -lf`-style fingerprint of a public key line's key.
fn fingerprint(pubkey_line: &str) -> String {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), pubkey_line).unwrap();
    let out = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(f.path())
        .output()
        .unwrap();
    let s = String::from_utf8(out.stdout).unwrap();
    // "256 SHA256:xxx comment (ED25519)"
    let fp = s.split_whitespace().nth(1).unwrap().to_string();
    let ty = s
        .trim_end()
        .rsplit('(')
        .next()
        .unwrap()
        .trim_end_matches(')')
        .to_string();
    format!("{ty} {fp}")
}

/// `lab diff` only reads from the machine, so it can safely point at the
/// loopback sshd (which is this very host).
#[test]
fn host_keys_unknown_accepted_changed() {
    let sshd = SshdFixture::start().unwrap();
    let lab = TestLab::new();
    lab.file("known_hosts", "")
        .file(
            "lab.toml",
            &format!(
                "[settings]\nknown_hosts = \"known_hosts\"\n\n[machines.m]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"{}\"\nidentity = \"{}\"\n",
                sshd.port(),
                sshd.user(),
                sshd.identity().display()
            ),
        )
        .file("machines/m/etc/x", "x\n");
    let fp = fingerprint(sshd.host_public_key());
    let name = format!("[127.0.0.1]:{}", sshd.port());

    // unknown: refused, with the fingerprint and the way out
    let out = lab_cmd(&lab).args(["diff", "-m", "m"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: machine `m`: host key for `{name}` is not known ({fp})\n  \
             hint: check the fingerprint, then run again with `--accept-new` to add it to `known_hosts`\n"
        )
    );
    assert_eq!(lab.read("known_hosts"), "");

    // --accept-new stores it; afterwards no flag is needed
    lab_cmd(&lab)
        .args(["diff", "-m", "m", "--accept-new"])
        .assert()
        .success();
    let stored = lab.read("known_hosts");
    let key = sshd
        .host_public_key()
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(stored, format!("{name} {key}\n"));
    lab_cmd(&lab).args(["diff", "-m", "m"]).assert().success();

    // a changed key is refused, --accept-new or not
    let other = tempfile::tempdir().unwrap();
    let k = other.path().join("k");
    assert!(std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&k)
        .status()
        .unwrap()
        .success());
    let other_key = std::fs::read_to_string(k.with_extension("pub")).unwrap();
    let other_key: Vec<&str> = other_key.split_whitespace().take(2).collect();
    lab.file("known_hosts", &format!("{name} {}\n", other_key.join(" ")));
    for extra in [&[][..], &["--accept-new"][..]] {
        let out = lab_cmd(&lab)
            .args(["diff", "-m", "m"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!(
                "error: machine `m`: host key for `{name}` has CHANGED ({fp} is not the key in `known_hosts`)\n  \
                 hint: if the machine was reinstalled, remove its old key from known_hosts (`ssh-keygen -R HOST`); \
                 otherwise someone may be intercepting the connection\n"
            )
        );
    }
}

/// Digests of each file version the two manifests allow at each path.
fn allowed(a: &Manifest, b: &Manifest) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for man in [a, b] {
        for e in man.entries.values() {
            if let EntryKind::File { sha256, .. } = &e.kind {
                m.entry(format!("/{}", e.path))
                    .or_default()
                    .push(sha256.to_hex());
            }
        }
    }
    m
}

/// Kill `lab sync` (SIGKILL) or cut its connection (kill the sshd process
/// serving it on the machine) at 20 moments of the transfer and apply.
/// After each: every file on the machine is whole, old or new; at the end
/// a plain sync converges.
#[test]
fn killed_at_twenty_points_then_converges() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    let lab = project(fleet.hosts());
    // a tree big enough that a sync takes a while: 800 files of 4 KiB
    let write_tree = |version: u32| {
        for i in 0..800 {
            lab.file(
                &format!("layers/base/srv/data/d{}/f{i}", i % 40),
                &format!("version {version} file {i}\n{}", "x".repeat(4000)),
            );
        }
        lab.file("layers/base/etc/probe/version", &format!("{version}\n"));
    };
    write_tree(0);
    sync(&lab, "h1");
    // every version built so far: after a kill the machine is on one of them
    let mut seen = manifest(&lab, "h1");
    let mut ok = allowed(&seen, &seen);
    for i in 0..20u32 {
        write_tree(i + 1);
        build(&lab);
        let next = manifest(&lab, "h1");
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("lab"))
            .current_dir(lab.path())
            .args(["sync", "-m", "h1", "-q"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(40 + 45 * u64::from(i)));
        if i % 2 == 0 {
            let _ = child.kill();
        } else {
            // drop the connection from the machine's side
            let _ = h.run("pkill -KILL -f 'sshd: root@notty' || true");
        }
        let _ = child.wait();
        // every managed file is whole: one of the versions (or absent)
        for (k, v) in allowed(&next, &next) {
            ok.entry(k).or_default().extend(v);
        }
        for (k, v) in &next.entries {
            seen.entries.insert(k.clone(), v.clone());
        }
        for line in remote_state(h, &seen) {
            let mut f = line.split_whitespace();
            let path = f.next().unwrap().to_string();
            if f.next() == Some("file") {
                let sha = f.nth(1).unwrap();
                assert!(
                    ok.get(&path).is_some_and(|v| v.iter().any(|s| s == sha)),
                    "kill {i}: {path} is neither old nor new"
                );
            }
        }
    }
    // converge
    let out = lab_cmd(&lab).args(["sync", "-m", "h1"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        remote_state(h, &manifest(&lab, "h1")),
        expected_state(&manifest(&lab, "h1"))
    );
    assert_eq!(run(h, "cat /etc/probe/version"), "20\n");
}
