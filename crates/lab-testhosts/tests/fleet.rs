//! Real hosts, real sshd, real systemd. These tests need root (CI runs them
//! as root) and fail loudly otherwise; they never skip.

use lab_testhosts::{Host, SshdFixture, TestHosts};
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn require_root(test: &str) {
    assert!(
        lab_testhosts::is_root(),
        "{test} needs root (overlay mounts, network namespaces, systemd-nspawn); \
         run `cargo test -p lab-testhosts` as root"
    );
}

fn probe_unit(version: &str) -> String {
    format!(
        "[Unit]\n\
         Description=lab-testhosts probe\n\
         [Service]\n\
         Type=simple\n\
         ExecStartPre=/bin/sh -c 'echo {version} > /var/lib/probe.marker'\n\
         ExecStart=/bin/sleep infinity\n"
    )
}

/// Write the unit, daemon-reload, (re)start it; returns (MainPID, marker).
fn deploy_probe(host: &Host, version: &str, verb: &str) -> (u32, String) {
    let script = format!(
        "set -e\n\
         cat > /etc/systemd/system/probe.service <<'UNIT'\n{unit}UNIT\n\
         systemctl daemon-reload\n\
         systemctl {verb} probe.service\n\
         systemctl show -p MainPID --value probe.service\n\
         cat /var/lib/probe.marker\n",
        unit = probe_unit(version)
    );
    let out = host
        .run(&script)
        .unwrap_or_else(|e| panic!("{}: deploying probe {version}: {e}", host.name));
    let mut lines = out.lines();
    let pid: u32 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("{}: no MainPID in {out:?}", host.name));
    let marker = lines.next().unwrap_or_default().trim().to_string();
    (pid, marker)
}

#[test]
fn three_hosts_restart_a_changed_unit() {
    require_root("three_hosts_restart_a_changed_unit");
    let fleet = TestHosts::up(3).expect("boot 3 test hosts");
    assert_eq!(fleet.hosts().len(), 3);

    // each host is its own machine
    let mut ids = HashSet::new();
    for host in fleet.hosts() {
        let out = host
            .run("hostname; cat /etc/machine-id; systemctl is-system-running")
            .expect("ssh");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], host.name);
        assert!(ids.insert(lines[1].to_string()), "machine-id shared: {out}");
        assert_eq!(lines[2], "running");
    }
    let addrs: HashSet<&str> = fleet.hosts().iter().map(|h| h.address.as_str()).collect();
    assert_eq!(addrs.len(), 3);

    std::thread::scope(|s| {
        for host in fleet.hosts() {
            s.spawn(move || {
                let (pid1, marker1) = deploy_probe(host, "v1", "start");
                assert!(pid1 > 0, "{}: probe not running", host.name);
                assert_eq!(marker1, "v1", "{}", host.name);

                let (pid2, marker2) = deploy_probe(host, "v2", "restart");
                assert!(pid2 > 0, "{}: probe not running after restart", host.name);
                assert_ne!(pid1, pid2, "{}: MainPID unchanged by restart", host.name);
                assert_eq!(marker2, "v2", "{}: new ExecStartPre did not run", host.name);
                let active = host.run("systemctl is-active probe.service").unwrap();
                assert_eq!(active.trim(), "active");
            });
        }
    });
    fleet.down().expect("down");
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn netns_inode(ns: &str) -> u64 {
    std::fs::metadata(Path::new("/run/netns").join(ns))
        .unwrap_or_else(|e| panic!("/run/netns/{ns}: {e}"))
        .ino()
}

/// PIDs of all processes whose network namespace has inode `ino`.
fn processes_in_netns(ino: u64) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net")) {
            if m.ino() == ino {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Is `pid` a live (not zombie) systemd-nspawn? A dead nspawn may linger as
/// a zombie until init reaps it, and its PID may be reused by an unrelated
/// process later; neither counts.
fn running_nspawn(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].split_whitespace().next().unwrap_or("");
    comm == "systemd-nspawn" && state != "Z" && state != "X"
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn down_leaves_nothing_behind() {
    require_root("down_leaves_nothing_behind");
    let fleet = TestHosts::up(2).expect("boot 2 test hosts");
    let name = fleet.name().to_string();
    let state_dir = fleet.state_dir().to_path_buf();
    let hosts = fleet.hosts().to_vec();

    let mut netns_inodes = Vec::new();
    for h in &hosts {
        let pid = h.pid.expect("fleet host has a pid");
        assert!(alive(pid));
        assert!(
            running_nspawn(pid),
            "{}: pid {pid} is no running nspawn",
            h.name
        );
        let ns = h.netns.as_deref().expect("netns");
        let ino = netns_inode(ns);
        // the container (systemd, sshd, ...) lives in that netns
        assert!(
            processes_in_netns(ino).len() >= 3,
            "{}: too few processes in netns {ns}",
            h.name
        );
        netns_inodes.push(ino);
        let veth = h.veth.as_deref().expect("veth");
        assert!(ip(&["-o", "link", "show"]).contains(&format!(" {veth}@")));
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(mounts.contains(&format!(" {}/", state_dir.display())));

    // drop tears down (as it would while a failing test unwinds)
    drop(fleet);

    for h in &hosts {
        let pid = h.pid.unwrap();
        assert!(
            !running_nspawn(pid),
            "{}: nspawn {pid} survived down",
            h.name
        );
    }
    for ino in &netns_inodes {
        // (a killed process leaves the namespace when it is reaped, which
        // on a loaded machine can take a moment after `down` returns)
        let mut left = processes_in_netns(*ino);
        for _ in 0..100 {
            if left.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            left = processes_in_netns(*ino);
        }
        let described: Vec<String> = left
            .iter()
            .map(|p| {
                let cmd = std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default();
                format!("{p} {}", cmd.replace('\0', " "))
            })
            .collect();
        assert_eq!(
            described,
            Vec::<String>::new(),
            "processes left in a fleet netns"
        );
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains(&format!(" {}/", state_dir.display())),
        "mounts left under {}:\n{mounts}",
        state_dir.display()
    );
    let links = ip(&["-o", "link", "show"]);
    for h in &hosts {
        let veth = h.veth.as_deref().unwrap();
        assert!(!links.contains(&format!(" {veth}@")), "veth {veth} left");
    }
    assert!(
        !links.contains(&format!(" {name}-")),
        "links of {name} left:\n{links}"
    );
    let netns = ip(&["netns", "list"]);
    assert!(
        !netns.lines().any(|l| l.starts_with(&format!("{name}-"))),
        "netns of {name} left:\n{netns}"
    );
    assert!(!state_dir.exists(), "{} left", state_dir.display());
}

/// `up` on a healthy fleet is a no-op; on a broken one it rebuilds.
#[test]
fn up_is_idempotent_and_repairs() {
    require_root("up_is_idempotent_and_repairs");
    let name = format!("ti{}z", std::process::id() % 100_000);
    let script = TestHosts::script_path();
    let run = |args: &[&str]| {
        let out = Command::new(&script)
            .args(args)
            .env("LAB_TESTHOSTS_NAME", &name)
            .output()
            .expect("run scripts/testhosts");
        assert!(
            out.status.success(),
            "testhosts {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let pid_file = format!("/run/lab-testhosts/{name}/hosts/1/pid");
    let read_pid = || -> u32 {
        std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    // make sure the fleet is gone even when an assertion fails
    struct Down(String);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = Command::new(TestHosts::script_path())
                .arg("down")
                .env("LAB_TESTHOSTS_NAME", &self.0)
                .status();
        }
    }
    run(&["down"]);
    let _down = Down(name.clone());

    run(&["up", "1"]);
    let pid1 = read_pid();
    let t = Instant::now();
    run(&["up", "1"]);
    assert_eq!(read_pid(), pid1, "second `up` rebooted a healthy fleet");
    assert!(t.elapsed() < Duration::from_secs(5), "no-op up was slow");

    // break it: stop the container behind the script's back
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid1 as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while running_nspawn(pid1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!run(&["up", "1"]).is_empty());
    let pid2 = read_pid();
    assert_ne!(pid1, pid2, "broken fleet was not rebuilt");
    let status = run(&["status"]);
    assert!(status.contains("reachable (running)"), "{status}");
}

#[test]
fn sshd_fixture_accepts_the_pinned_key_and_stops_on_drop() {
    let sshd = SshdFixture::start().expect("start sshd fixture");
    assert!(sshd
        .known_hosts_line()
        .starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", sshd.port())));
    let args = sshd.ssh_args();
    assert!(args.contains(&"StrictHostKeyChecking=yes".to_string()));
    let out = sshd.ssh("true").expect("run ssh");
    assert!(
        out.status.success(),
        "ssh true failed: {}\n--- sshd log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(sshd.dir().join("sshd.log")).unwrap_or_default()
    );
    let who = sshd.host().run("id -un").expect("ssh id");
    assert_eq!(who.trim(), sshd.user());

    // a wrong pinned key must be refused: proves StrictHostKeyChecking bites
    let other_key = sshd.dir().join("other_key");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other_key)
        .status()
        .unwrap();
    assert!(st.success());
    let other_pub = std::fs::read_to_string(other_key.with_extension("pub")).unwrap();
    let other_pub: Vec<&str> = other_pub.split_whitespace().take(2).collect();
    let wrong = sshd.dir().join("wrong_known_hosts");
    std::fs::write(
        &wrong,
        format!("[127.0.0.1]:{} {}\n", sshd.port(), other_pub.join(" ")),
    )
    .unwrap();
    let mut bad = sshd.host().clone();
    bad.known_hosts = wrong;
    let out = bad.ssh("true").unwrap();
    assert!(!out.status.success(), "ssh accepted a wrong host key");

    let pid = sshd.pid();
    assert!(alive(pid));
    drop(sshd);
    assert!(!alive(pid), "sshd {pid} still running after drop");
}
