//! Container machines (lab.toml's `on = "HOST"`) on a real host: a test
//! host of the `machines` flavor, in which systemd-nspawn boots the
//! containers (nested), reached by lab through the host's connection.
//! One host for the whole binary: the phases run in order in one test.
//! Needs root.

use lab_testhosts::{Flavor, Host, TestHosts};
use lab_testkit::{run, TestLab};

const IMAGE: &str = "/var/lib/lab/images/bookworm";

fn lab_toml(h: &Host, extra: &str) -> String {
    format!(
        "[settings]\nknown_hosts = \"{}\"\nidentity = \"{}\"\n\n\
         [machines.host1]\nhost = \"{}\"\n\n\
         [machines.c1]\non = \"host1\"\nimage = \"{IMAGE}\"\nports = [\"2201:22\"]\nmemory = \"256M\"\ncpus = 0.5\nlayers = [\"hello\"]\n\n\
         [machines.c2]\non = \"host1\"\nimage = \"{IMAGE}\"\nlayers = [\"hello\"]\n\n{extra}",
        h.known_hosts.display(),
        h.identity.display(),
        h.address
    )
}

fn sh(h: &Host, cmd: &str) -> String {
    h.run(cmd)
        .unwrap_or_else(|e| panic!("`{cmd}` on the host: {e}"))
}

fn ok(lab: &TestLab, args: &[&str]) -> String {
    let (code, out, err) = run(lab, args);
    assert_eq!(code, 0, "lab {args:?}:\n{out}\n{err}");
    out
}

/// What a container machine leaves on its host, one line per kind.
fn traces(h: &Host) -> String {
    sh(
        h,
        "echo dirs: $(ls -A /var/lib/lab/machines); \
         echo files: $(ls -d /etc/lab /etc/systemd/nspawn /etc/systemd/system/lab-machine* /etc/sysctl.d/60-lab-machines.conf 2>/dev/null); \
         echo mounts: $(findmnt -rn -o TARGET | grep -c '^/var/lib/lab/machines/'); \
         echo links: $(ip -o link | grep -c -e vb- -e labbr0); \
         echo nft: $(nft list tables | grep -c lab_machines); \
         echo units: $(systemctl list-units --all --plain --no-legend 'lab-machine*' | wc -l); \
         echo machines: $(machinectl list --no-legend | wc -l); \
         echo nspawn: $(pgrep -c systemd-nspawn || true)",
    )
}

const CLEAN: &str =
    "dirs:\nfiles:\nmounts: 0\nlinks: 0\nnft: 0\nunits: 0\nmachines: 0\nnspawn: 0\n";

/// What the host says of container `name` (for a failure's message): its
/// unit, journal, addresses and listening sockets, and the host's
/// neighbours.
fn container_state(h: &lab_testhosts::Host, name: &str) -> String {
    h.run(&format!(
        "systemctl status lab-machine@{name} --no-pager 2>&1 | tail -5; \
         journalctl -u lab-machine@{name} --no-pager | tail -15; \
         l=$(machinectl show {name} -p Leader --value); nsenter -t $l -n ip -br a; \
         nsenter -t $l -n ss -ltn; ip neigh"
    ))
    .unwrap_or_else(|e| e.to_string())
}

#[test]
fn containers_on_one_host() {
    let fleet = TestHosts::builder()
        .flavor(Flavor::Machines)
        .up(1)
        .expect("boot a machines test host");
    let h = &fleet.hosts()[0];
    let lab = TestLab::new();
    lab.file("lab.toml", &lab_toml(h, ""))
        .file(
            "layers/hello/etc/systemd/system/hello.service",
            "[Unit]\nDescription=hello\n[Service]\nExecStart=/bin/sh -c 'hostname > /run/hello; exec sleep infinity'\n[Install]\nWantedBy=multi-user.target\n",
        )
        .symlink(
            "layers/hello/etc/systemd/system/multi-user.target.wants/hello.service",
            "../hello.service",
        );
    assert_eq!(traces(h), CLEAN, "a fresh host");

    // two containers; each boots to `running`
    let out = ok(&lab, &["machine", "create"]);
    assert_eq!(out, "created c1 on host1\ncreated c2 on host1\n");
    let ls: serde_json::Value =
        serde_json::from_str(&ok(&lab, &["machine", "ls", "--json"])).unwrap();
    let states: Vec<String> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{} {} {} {}",
                m["name"], m["unit"], m["system"], m["address"]
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            r#""c1" "active" "running" "10.231.0.2""#,
            r#""c2" "active" "running" "10.231.0.3""#
        ]
    );
    // a second create touches nothing, but pins again the keys that
    // .lab/ lost (from the host, over its checked connection)
    let pinned = lab.read(".lab/machines/known_hosts");
    lab.remove(".lab/machines/known_hosts");
    assert_eq!(
        ok(&lab, &["machine", "create"]),
        "c1 exists on host1\nc2 exists on host1\n"
    );
    assert_eq!(lab.read(".lab/machines/known_hosts"), pinned);

    // their host keys were pinned at creation, under their names
    let pinned = lab.read(".lab/machines/known_hosts");
    for c in ["c1", "c2"] {
        let key = sh(
            h,
            &format!(
                "cut -d' ' -f1,2 /var/lib/lab/machines/{c}/upper/etc/ssh/ssh_host_ed25519_key.pub"
            ),
        );
        assert!(
            pinned.contains(&format!("{c} {}", key.trim())),
            "{c}'s key in {pinned}"
        );
    }
    // limits as cgroup settings
    assert_eq!(
        sh(
            h,
            "systemctl show -p MemoryMax -p CPUQuotaPerSecUSec lab-machine@c1.service"
        ),
        "CPUQuotaPerSecUSec=500ms\nMemoryMax=268435456\n"
    );

    // lab syncs a layer with a unit into each, through the host; it runs
    ok(&lab, &["sync", "-m", "c1", "-m", "c2"]);
    for c in ["c1", "c2"] {
        assert_eq!(
            sh(h, &format!("systemctl -M {c} is-active hello.service")),
            "active\n"
        );
        assert_eq!(ok(&lab, &["ssh", c, "cat", "/run/hello"]), format!("{c}\n"));
    }

    // then they are machines like any other: status, facts
    let (code, out, err) = run(&lab, &["status", "-m", "c1", "-m", "c2"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let facts = ok(&lab, &["facts", "-m", "c2", "--refresh", "--json"]);
    assert!(facts.contains("\"hostname\": \"c2\""), "{facts}");

    // a container that does not show the key pinned for it is refused
    // (its shared connection, up from the last runs, is not used either)
    let pins = lab.read(".lab/machines/known_hosts");
    let c1_key = pins
        .lines()
        .find_map(|l| l.strip_prefix("c1 "))
        .expect("c1 pinned")
        .to_string();
    let forged: String = pins
        .lines()
        .map(|l| match l.strip_prefix("c2 ") {
            Some(_) => format!("c2 {c1_key}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    lab.file(".lab/machines/known_hosts", &forged);
    let (code, _, err) = run(&lab, &["sync", "-m", "c2"]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("host key for `c2` has CHANGED"), "{err}");
    lab.file(".lab/machines/known_hosts", &pins);
    ok(&lab, &["sync", "-m", "c2"]);

    // the port forward reaches c1's sshd (its pinned key proves it is c1)
    let out = std::process::Command::new("ssh")
        .arg("-i")
        .arg(&h.identity)
        .args(["-o", "BatchMode=yes", "-o", "HostKeyAlias=c1", "-o"])
        .arg(format!(
            "UserKnownHostsFile={}",
            lab.join(".lab/machines/known_hosts").display()
        ))
        .args(["-o", "StrictHostKeyChecking=yes", "-p", "2201"])
        .arg(format!("root@{}", h.address))
        .arg("hostname")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "c1\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `lab ssh --config` gives the blocks for the user's own ssh
    let config = ok(&lab, &["ssh", "--config", "c2"]);
    assert!(
        config.contains("Host c2\n    HostName 10.231.0.3\n    User root\n    ProxyJump host1\n    HostKeyAlias c2\n"),
        "{config}"
    );

    // one container's failure leaves the other untouched (and the host's
    // systemd brings the failed one back)
    let c1_pid = sh(
        h,
        "systemctl show -p MainPID --value lab-machine@c1.service",
    );
    let hello_pid = sh(h, "systemctl -M c1 show -p MainPID --value hello.service");
    let c2_pid = sh(
        h,
        "systemctl show -p MainPID --value lab-machine@c2.service",
    );
    sh(
        h,
        "systemctl kill -s KILL --kill-whom=main lab-machine@c2.service",
    );
    // a container that cannot be made fails alone, naming why
    lab.file(
        "lab.toml",
        &lab_toml(
            h,
            "[machines.c3]\non = \"host1\"\nimage = \"/nonexistent\"\n",
        ),
    );
    let (code, _, err) = run(&lab, &["machine", "create", "c3"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "creating `c3` failed (exit 4): image /nonexistent is not a directory on this host"
        ),
        "{err}"
    );
    sh(
        h,
        "for i in $(seq 100); do systemctl -q is-active lab-machine@c2.service && break; sleep 0.1; done",
    );
    assert_ne!(
        sh(
            h,
            "systemctl show -p MainPID --value lab-machine@c2.service"
        ),
        c2_pid,
        "c2 was restarted"
    );
    assert_eq!(
        sh(
            h,
            "systemctl show -p MainPID --value lab-machine@c1.service"
        ),
        c1_pid
    );
    assert_eq!(
        sh(h, "systemctl -M c1 show -p MainPID --value hello.service"),
        hello_pid
    );
    assert_eq!(ok(&lab, &["ssh", "c1", "cat", "/run/hello"]), "c1\n");

    // a container lab.toml no longer declares: a sync of its host warns
    // about it, and its address is not given to another
    let without_c2 = lab_toml(h, "").replace(
        &format!("[machines.c2]\non = \"host1\"\nimage = \"{IMAGE}\"\nlayers = [\"hello\"]\n"),
        &format!("[machines.c5]\non = \"host1\"\nimage = \"{IMAGE}\"\naddress = \"10.231.0.3\"\n"),
    );
    lab.file("lab.toml", &without_c2);
    let (code, _, err) = run(&lab, &["sync", "-m", "host1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("container machine `c2` is not in lab.toml; `lab sync --destroy-undeclared` destroys it and its data"),
        "{err}"
    );
    let (code, _, err) = run(&lab, &["machine", "create", "c5"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("address 10.231.0.3 is taken by container machine c2 on this host"),
        "{err}"
    );
    assert_eq!(sh(h, "ls /var/lib/lab/machines"), "c1\nc2\n");

    // an updated image takes effect on the container's next restart, its
    // own changes kept
    sh(
        h,
        &format!("cp -a {IMAGE} /srv/img && echo 1 > /srv/img/etc/base-version"),
    );
    lab.file(
        "lab.toml",
        &lab_toml(h, "[machines.c4]\non = \"host1\"\nimage = \"/srv/img\"\n"),
    );
    // (a file all containers share, as another lab wrote it: here a
    // mount.sh that fails; this creation writes it again)
    sh(
        h,
        "printf '#!/bin/sh\\nexit 1\\n' >/etc/lab/machines/mount.sh",
    );
    assert_eq!(
        ok(&lab, &["machine", "create", "c4"]),
        "created c4 on host1\n"
    );
    assert!(sh(h, "sed -n 2p /etc/lab/machines/mount.sh").starts_with("# lab "));
    ok(&lab, &["ssh", "c4", "echo mine > /root/mine"]);
    assert_eq!(
        ok(
            &lab,
            &["ssh", "c4", "cat", "/etc/base-version", "/root/mine"]
        ),
        "1\nmine\n"
    );
    sh(
        h,
        "echo 2 > /srv/img/etc/base-version.new && mv /srv/img/etc/base-version.new /srv/img/etc/base-version",
    );
    sh(h, "systemctl restart lab-machine@c4.service");
    assert_eq!(
        ok(
            &lab,
            &["ssh", "c4", "cat", "/etc/base-version", "/root/mine"]
        ),
        "2\nmine\n"
    );
    assert_eq!(
        ok(&lab, &["machine", "destroy", "c4", "--yes"]),
        "destroyed c4 on host1\n"
    );
    sh(h, "rm -rf /srv/img");
    lab.file("lab.toml", &lab_toml(h, ""));

    // a container based on an image of the project: `lab sync` ships the
    // image's tree to the host's store, creates the container on it, and
    // syncs it; its root is mounted from the tree the base points at
    let deb = lab.join("images/deb");
    std::fs::create_dir_all(deb.parent().unwrap()).unwrap();
    let cp = std::process::Command::new("cp")
        .arg("-al")
        .arg(fleet.base_root())
        .arg(&deb)
        .status()
        .unwrap();
    assert!(cp.success(), "cp -al of the base");
    // (new files only: the copy shares the cached base's inodes; a file
    // of this run's own makes its trees new to a reused host's store)
    lab.file("images/deb/etc/base-version", "1\n");
    lab.file(
        "images/deb/etc/lab-test-run",
        &format!("{}\n", lab.join("").display()),
    );
    lab.file(
        "lab.toml",
        &lab_toml(
            h,
            "[machines.c6]\non = \"host1\"\nimage = \"deb\"\nlayers = [\"hello\"]\n\n\
             [machines.c7]\non = \"host1\"\nimage = \"nope\"\n",
        ),
    );
    let (code, _, err) = run(&lab, &["sync", "-m", "c6"]);
    assert_eq!(code, 0, "{err}\n{}", container_state(h, "c6"));
    assert!(err.contains("host1: base deb ("), "{err}");
    assert!(err.contains("created c6 on host1"), "{err}");
    assert_eq!(sh(h, "systemctl -M c6 is-active hello.service"), "active\n");
    assert_eq!(ok(&lab, &["ssh", "c6", "cat", "/run/hello"]), "c6\n");
    let tree = sh(h, "readlink /var/lib/lab/images/bases/deb");
    let tree = tree
        .trim()
        .strip_prefix("../roots/")
        .expect("a tree")
        .to_string();
    assert_eq!(
        sh(h, "cat /var/lib/lab/images/used/c6"),
        format!("{tree}\n")
    );
    let options = sh(h, "findmnt -n -o OPTIONS /var/lib/lab/machines/c6/root");
    assert!(
        options.contains(&format!("lowerdir=/var/lib/lab/images/roots/{tree}")),
        "c6's root is mounted from the tree: {options}"
    );
    // an image the project lacks: said, nothing made
    let (code, _, err) = run(&lab, &["machine", "create", "c7"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("image `nope` is not in the project"), "{err}");
    assert_eq!(sh(h, "ls /var/lib/lab/machines"), "c1\nc2\nc6\n");

    // a new version of the image: the next sync ships what changed and
    // points the base at it; the container moves to it on its next
    // restart, its own changes (and what lab synced) kept
    ok(&lab, &["ssh", "c6", "echo mine > /root/mine"]);
    lab.file("images/deb/etc/base-version.new", "2\n");
    std::fs::rename(
        deb.join("etc/base-version.new"),
        deb.join("etc/base-version"),
    )
    .unwrap();
    let (code, _, err) = run(&lab, &["sync", "-m", "c6"]);
    assert_eq!(code, 0, "{err}\n{}", container_state(h, "c6"));
    assert!(err.contains("host1: base deb ("), "{err}");
    assert!(
        err.contains(": 1 of "),
        "only the changed file is sent: {err}"
    );
    let tree2 = sh(h, "readlink /var/lib/lab/images/bases/deb");
    let tree2 = tree2.trim().strip_prefix("../roots/").unwrap().to_string();
    assert_ne!(tree2, tree);
    assert_eq!(
        ok(
            &lab,
            &["ssh", "c6", "cat", "/etc/base-version", "/root/mine"]
        ),
        "1\nmine\n"
    );
    sh(h, "systemctl restart lab-machine@c6.service");
    assert_eq!(
        ok(
            &lab,
            &["ssh", "c6", "cat", "/etc/base-version", "/root/mine"]
        ),
        "2\nmine\n"
    );
    assert_eq!(
        sh(h, "cat /var/lib/lab/images/used/c6"),
        format!("{tree2}\n")
    );
    assert_eq!(sh(h, "systemctl -M c6 is-active hello.service"), "active\n");
    // a sync with nothing new sends nothing and says nothing of the base
    let (code, _, err) = run(&lab, &["sync", "-m", "c6"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("base deb"), "{err}");
    assert_eq!(
        ok(&lab, &["machine", "destroy", "c6", "--yes"]),
        "destroyed c6 on host1\n"
    );
    assert_eq!(sh(h, "ls /var/lib/lab/images/used"), "");
    lab.file("lab.toml", &lab_toml(h, ""));

    // a machine made again under the name of one that had limits and a
    // port forward has neither (the host's systemd still has the first
    // one's unit loaded, with its drop-in)
    assert_eq!(
        ok(&lab, &["machine", "destroy", "c1", "--yes"]),
        "destroyed c1 on host1\n"
    );
    lab.file(
        "lab.toml",
        &lab_toml(h, "").replace("ports = [\"2201:22\"]\nmemory = \"256M\"\ncpus = 0.5\n", ""),
    );
    assert_eq!(
        ok(&lab, &["machine", "create", "c1"]),
        "created c1 on host1\n"
    );
    assert_eq!(
        sh(
            h,
            "systemctl show -p MemoryMax -p CPUQuotaPerSecUSec lab-machine@c1.service; \
             nft list table ip lab_machines | grep -c 2201 || :"
        ),
        "CPUQuotaPerSecUSec=infinity\nMemoryMax=infinity\n0\n"
    );
    assert_eq!(ok(&lab, &["ssh", "c1", "hostname"]), "c1\n");
    lab.file("lab.toml", &lab_toml(h, ""));

    // destroy asks for --yes, then leaves nothing behind
    let (code, _, err) = run(&lab, &["machine", "destroy", "c1", "c2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("add --yes"), "{err}");
    assert_eq!(
        ok(&lab, &["machine", "destroy", "c1", "c2", "--yes"]),
        "destroyed c1 on host1\ndestroyed c2 on host1\n"
    );
    assert_eq!(traces(h), CLEAN);
    assert_eq!(lab.read(".lab/machines/known_hosts"), "");
}
