//! Pods on the node, for real: rootless podman Quadlet `.kube` pods of the
//! pod user in podman test hosts (Debian trixie, podman 5; see
//! docs/testhosts.md), driven by `lab sync`, `lab rollback`, `lab ps` and
//! `lab logs`. Images are local OCI archives (`images/NAME.tar`) that lab
//! ships over its own connection. Needs root.
//!
//! One fleet per test binary (booted by the first test that needs it,
//! torn down at exit); each test has a host of its own, so they run in
//! parallel without sharing a machine's generations.

use lab_testhosts::{Host, OciImage, TestHosts};
use lab_testkit::TestLab;
use std::io::{Read, Write};
use std::process::Command as Process;
use std::time::{Duration, Instant};

/// Hosts: 1 lifecycle, 2 restart policies, 3 ps/logs, 4 pod user errors,
/// 5 a 512 MB node, 6 a rootful pod, 7 resources.limits, 8 an image
/// restart across a dropped link, 9 an image from a root directory, 10 a
/// sparse root directory whose cached layer lies.
const HOSTS: usize = 10;
const SMALL_NODE: usize = 5;
const LIMITS_NODE: usize = 7;

/// Host `i` (1-based) of the shared fleet.
fn host(i: usize) -> Host {
    assert!(
        lab_testhosts::is_root(),
        "pods_node needs root (overlay mounts, network namespaces, systemd-nspawn)"
    );
    lab_testhosts::shared_host(i, || {
        TestHosts::builder()
            .podman()
            .memory_max(SMALL_NODE, "512M")
            .up(HOSTS)
    })
}

/// `lab ARGS`: (exit code, stdout, stderr).
fn lab(lab: &TestLab, args: &[&str]) -> (i32, String, String) {
    lab_testkit::run(lab, args)
}

fn sync_ok(t: &TestLab) -> String {
    let (code, out, err) = lab(t, &["sync", "-m", "h1"]);
    assert_eq!(code, 0, "lab sync failed:\n{out}\n{err}");
    out
}

/// A project with one machine `h1` on `h`.
fn project(h: &Host, extra: &str) -> TestLab {
    let t = TestLab::new();
    t.file(
        "lab.toml",
        &format!(
            "[settings]\nknown_hosts = \"{}\"\n\n[machines.h1]\nhost = \"{}\"\nidentity = \"{}\"\n{extra}",
            h.known_hosts.display(),
            h.address,
            h.identity.display()
        ),
    );
    t
}

/// `images/NAME.tar`: busybox (from the host's root) with a web root whose
/// index says `body`; its command serves it on `port`. Returns the ID.
fn web_image(t: &TestLab, h: &Host, name: &str, body: &str) -> String {
    std::fs::create_dir_all(t.join("images")).unwrap();
    // (lab names it after its file: `localhost/NAME:latest`)
    OciImage::new(&format!("localhost/{name}:built"))
        .busybox(h.root.as_ref().unwrap().join("bin/busybox"))
        .file("/www/index.html", body.as_bytes(), 0o644)
        .write(&t.join(&format!("images/{name}.tar")))
        .unwrap()
}

/// What a user writes: the machine's pod sources, compiled by lab-pods.
const PODS: &str = "machines/h1/pods";

/// A pod NAME of the pod user: an HTTP server on `port` (hostPort too) and
/// a sidecar, both handling SIGTERM (so a restart takes no 10 s).
fn web_pod(t: &TestLab, name: &str, image: &str, port: u16, version: &str) {
    web_pod_with(t, name, image, port, version, "");
}

/// [`web_pod`] with `annotations` (lines indented under `annotations:`).
fn web_pod_with(t: &TestLab, name: &str, image: &str, port: u16, version: &str, annotations: &str) {
    let annotations = match annotations {
        "" => String::new(),
        a => format!("  annotations:\n{a}"),
    };
    t.file(
        &format!("{PODS}/{name}.yaml"),
        &format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels:
    version: \"{version}\"
{annotations}spec:
  restartPolicy: Always
  containers:
  - name: httpd
    image: {image}
    command: [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; httpd -f -p {port} -h /www & wait\"]
    ports:
    - containerPort: {port}
      hostPort: {port}
  - name: sidecar
    image: {image}
    command: [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; echo sidecar {version} up; while :; do sleep 1; done & wait\"]
"
        ),
    );
}

fn http_get(addr: &str) -> std::io::Result<String> {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// The pod answers (a started Quadlet unit of Type=notify is up when
/// `systemctl start` returns; a few tries cover pasta's port forwarder).
fn answers(h: &Host, port: u16) -> String {
    let addr = format!("{}:{port}", h.address);
    let t0 = Instant::now();
    loop {
        match http_get(&addr) {
            Ok(body) if body.contains("200 OK") => return body,
            r if t0.elapsed() > Duration::from_secs(20) => panic!("{addr} does not answer: {r:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn user_active(h: &Host, unit: &str) -> String {
    h.user_systemctl(&format!("is-active {unit}"))
        .unwrap()
        .trim()
        .to_string()
}

/// PIDs of the pod's containers' main processes (as the pod user sees
/// them), sorted.
fn pod_pids(h: &Host, pod: &str) -> String {
    h.podman(&format!(
        "ps --filter pod={pod} --format '{{{{.Names}}}} {{{{.Pid}}}}' --sort names"
    ))
    .unwrap()
}

#[test]
fn a_pod_serves_restarts_alone_stops_and_comes_back_on_rollback() {
    let h = host(1);
    let t = project(&h, "");
    let id = web_image(&t, &h, "web", "hello from web\n");
    web_image(&t, &h, "other", "hello from other\n");
    web_pod(&t, "web", "web", 8080, "1");
    web_pod(&t, "other", "other", 8081, "1");

    let out = sync_ok(&t);
    assert!(out.contains("pods/web.service"), "{out}");
    assert!(answers(&h, 8080).contains("hello from web"));
    assert!(answers(&h, 8081).contains("hello from other"));
    // the image went into the pod user's storage, under its name, made
    // from the image's tree (lab-images; the ID is podman's own)
    let images = h
        .podman("images --format '{{.Repository}}:{{.Tag}} {{index .Labels \"lab.tree\"}}'")
        .unwrap();
    assert!(
        images
            .lines()
            .any(|l| l.starts_with("localhost/web:latest ") && l.len() > 60),
        "{images}"
    );
    // a second sync ships nothing again and changes nothing
    let again = sync_ok(&t);
    assert!(!again.contains("loaded image"), "{again}");

    // the YAML of web changes: web restarts, other keeps its processes
    let web_before = pod_pids(&h, "web");
    let other_before = pod_pids(&h, "other");
    web_pod(&t, "web", "web", 8080, "2");
    let out = sync_ok(&t);
    assert!(out.contains("pods/web.service"), "{out}");
    assert!(!out.contains("pods/other.service"), "{out}");
    answers(&h, 8080);
    assert_ne!(pod_pids(&h, "web"), web_before);
    assert_eq!(pod_pids(&h, "other"), other_before);
    let labels = h.podman("pod inspect web --format '{{.Labels}}'").unwrap();
    assert!(labels.contains("version:2"), "{labels}");
    // the old containers are gone: one pod web, its infra and two containers
    let names = h
        .podman("ps -a --filter pod=web --format '{{.Names}}'")
        .unwrap();
    assert_eq!(names.lines().count(), 3, "{names}");

    // a new image of web (same name, same YAML): web restarts on it, other
    // keeps its processes
    let web_before = pod_pids(&h, "web");
    let id2 = web_image(&t, &h, "web", "hello from web, image 2\n");
    assert_ne!(id2, id);
    let out = sync_ok(&t);
    assert!(out.contains("localhost/web:latest"), "{out}");
    assert!(answers(&h, 8080).contains("image 2"));
    assert_ne!(pod_pids(&h, "web"), web_before);
    assert_eq!(pod_pids(&h, "other"), other_before);

    // removed: stopped, its unit gone, the other pod untouched
    t.remove(&format!("{PODS}/web.yaml"));
    sync_ok(&t);
    assert_eq!(user_active(&h, "web.service"), "inactive");
    assert!(http_get(&format!("{}:8080", h.address)).is_err());
    assert!(!h
        .user_systemctl("list-unit-files web.service")
        .unwrap()
        .contains("web.service"));
    assert!(h.podman("pod exists web").is_err());
    assert_eq!(pod_pids(&h, "other"), other_before);

    // rollback: web is back, serving its second version
    let (code, out, err) = lab(&t, &["rollback", "-m", "h1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(answers(&h, 8080).contains("hello from web"));
    assert_eq!(user_active(&h, "web.service"), "active");
    let labels = h.podman("pod inspect web --format '{{.Labels}}'").unwrap();
    assert!(labels.contains("version:2"), "{labels}");
}

/// A pod of one container that exits at once, with `policy`.
/// A pod of the base layer, a template that reads a fact (`nproc`).
fn exiting_pod(t: &TestLab, name: &str, policy: &str) {
    t.file(
        &format!("layers/_/pods/{name}.yaml.j2"),
        &format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  restartPolicy: {policy}
  containers:
  - name: job
    image: web
    command: [\"/bin/sh\", \"-c\", \"echo {name} ran on {{{{ nproc }}}} cpus; sleep 1; exit 3\"]
"
        ),
    );
}

fn restarts(h: &Host, container: &str) -> u64 {
    h.podman(&format!(
        "inspect --format '{{{{.RestartCount}}}}' {container}"
    ))
    .unwrap()
    .trim()
    .parse()
    .unwrap()
}

#[test]
fn restart_policy_always_restarts_a_container_and_never_does_not() {
    let h = host(2);
    let t = project(&h, "");
    web_image(&t, &h, "web", "x\n");
    exiting_pod(&t, "always", "Always");
    exiting_pod(&t, "never", "Never");
    sync_ok(&t);
    // (no timing decides: wait for the event, with a generous bound)
    let t0 = Instant::now();
    while restarts(&h, "always-job") < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "restartPolicy Always: the container was not restarted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // `never`: its container ran once; the pod's unit ended with it (and
    // `podman kube down` removed the pod), nothing started it again
    let t0 = Instant::now();
    while user_active(&h, "never.service") == "active" {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "never.service still active"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let uid = h.run("id -u pods").unwrap();
    let runs = h
        .run(&format!(
            "journalctl --no-pager -o cat _UID={} CONTAINER_NAME=never-job | grep -c 'never ran' || true",
            uid.trim()
        ))
        .unwrap();
    assert_eq!(runs.trim(), "1", "never-job ran once");
    assert!(restarts(&h, "always-job") >= 2);
}

#[test]
fn ps_shows_pods_and_a_failed_one_with_its_journal_and_logs_reads_it() {
    let h = host(3);
    let t = project(&h, "");
    web_image(&t, &h, "web", "ps\n");
    web_pod(&t, "web", "web", 8080, "1");
    // a pod whose image is nowhere: its unit fails
    t.file(
        &format!("{PODS}/broken.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: broken\nspec:\n  restartPolicy: Never\n  containers:\n  - name: app\n    image: localhost/missing:1\n",
    );
    let (code, out, err) = lab(&t, &["sync", "-m", "h1"]);
    assert_eq!(code, 1, "the broken pod fails the sync:\n{out}\n{err}");
    assert!(out.contains("pods/broken.service"), "{out}");
    answers(&h, 8080);

    let (code, out, err) = lab(&t, &["ps", "-m", "h1"]);
    assert_eq!(code, 1, "a failed pod: exit 1\n{out}\n{err}");
    let web = out
        .lines()
        .find(|l| l.contains(" web "))
        .unwrap_or_else(|| panic!("no web line: {out}"));
    assert!(web.contains("running"), "{out}");
    assert!(web.contains("8080"), "{out}");
    let broken = out
        .lines()
        .find(|l| l.contains(" broken "))
        .unwrap_or_else(|| panic!("no broken line: {out}"));
    assert!(broken.contains("failed"), "{out}");
    assert!(out.contains("| "), "journal tail of the failed pod: {out}");
    assert!(out.contains("missing"), "the tail says why: {out}");

    // `lab status` names the pod user's failed unit too
    let (code, out, err) = lab(&t, &["status", "-m", "h1"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("failed pods/broken.service"), "{out}");

    let (_, json, _) = lab(&t, &["ps", "-m", "h1", "--json"]);
    let v: serde_json::Value =
        serde_json::from_str(json.trim()).unwrap_or_else(|e| panic!("{e}: {json}"));
    let pods = v["machines"]["h1"]["pods"].as_array().unwrap();
    let web = pods.iter().find(|p| p["name"] == "web").unwrap();
    assert_eq!(web["state"], "running");
    assert_eq!(web["containers"].as_array().unwrap().len(), 2);
    assert!(web["memory_bytes"].as_u64().unwrap() > 0, "{web}");
    assert_eq!(web["ports"][0], "8080");
    let broken = pods.iter().find(|p| p["name"] == "broken").unwrap();
    assert_eq!(broken["state"], "failed");
    assert!(!broken["journal"].as_array().unwrap().is_empty());

    // logs of a pod (its unit and containers), and of one container
    let (code, out, err) = lab(&t, &["logs", "-m", "h1", "web", "-n", "50"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sidecar 1 up"), "{out}");
    let (code, out, _) = lab(&t, &["logs", "-m", "h1", "web-sidecar"]);
    assert_eq!(code, 0);
    assert!(out.contains("sidecar 1 up"), "{out}");
    // -f: a line the pod writes later shows up while lab follows
    let mut child = Process::new(assert_cmd::cargo::cargo_bin("lab"))
        .current_dir(t.path())
        .args(["logs", "-m", "h1", "web", "-f", "-n", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // (the first line says lab is following)
    rx.recv_timeout(Duration::from_secs(30))
        .expect("lab logs -f printed nothing");
    h.podman("exec web-sidecar sh -c 'echo followed-line > /proc/1/fd/1'")
        .unwrap();
    let seen = loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.contains("followed-line") => break true,
            Ok(_) => continue,
            Err(_) => break false,
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(seen, "lab logs -f did not show the new line");

    let (code, out, err) = lab(&t, &["logs", "-m", "h1", "nothing-here"]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("nothing-here"), "{err}");
}

#[test]
fn a_missing_or_non_lingering_pod_user_fails_clearly() {
    let h = host(4);
    let t = project(&h, "pod_user = \"nobody-here\"\n");
    web_image(&t, &h, "web", "x\n");
    web_pod(&t, "web", "web", 8080, "1");
    let (code, out, err) = lab(&t, &["sync", "-m", "h1"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        format!("{out}{err}").contains("nobody-here"),
        "names the user: {out}\n{err}"
    );

    h.run("useradd --create-home lazy").unwrap();
    let t = project(&h, "pod_user = \"lazy\"\n");
    web_image(&t, &h, "web", "x\n");
    web_pod(&t, "lazyweb", "web", 8080, "1");
    let (code, out, err) = lab(&t, &["sync", "-m", "h1"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("lazy/lazyweb.service"), "{out}");
    assert!(out.contains("does not linger"), "{out}");
    assert!(out.contains("loginctl enable-linger lazy"), "{out}");
}

#[test]
fn three_pods_on_a_512_mb_node_stay_under_its_limit() {
    let h = host(SMALL_NODE);
    assert_eq!(h.memory_max, Some(512 << 20));
    let t = project(&h, "");
    web_image(&t, &h, "web", "small\n");
    // (no all-hex names like `a`: `podman kube play --replace` looks a pod
    // up by name or ID prefix, and pod `c` would replace pod `c0fb...`)
    for (i, name) in ["small1", "small2", "small3"].iter().enumerate() {
        web_pod(&t, name, "web", 8090 + i as u16, "1");
    }
    sync_ok(&t);
    for i in 0..3 {
        answers(&h, 8090 + i);
    }
    // the node's own cgroup, seen from outside: its limit is 512 MiB and it
    // never ran into it (no allocation failed at the limit, no OOM kill),
    // with three pods and all of the node's own processes
    let m = node_memory(&h);
    assert_eq!(m.limit, 512 << 20);
    assert_eq!(m.hit_limit, 0, "the node ran into its limit: {m:?}");
    assert!(m.peak < m.limit, "{m:?}");
    eprintln!("512 MiB node with three pods: {m:?}");
}

#[derive(Debug)]
#[allow(dead_code)]
struct NodeMemory {
    used: u64,
    peak: u64,
    limit: u64,
    /// times an allocation met the limit (v1 `memory.failcnt`) or OOM
    /// kills (v2 `memory.events` `oom_kill`)
    hit_limit: u64,
}

/// The memory of a capped host's cgroup, seen from outside.
fn node_memory(h: &Host) -> NodeMemory {
    let state = h.root.as_ref().unwrap().parent().unwrap();
    // the host's own cgroups, or (when nspawn runs in a systemd scope,
    // capped by MemoryMax=) its scope's
    let mut cgroups = std::fs::read_to_string(state.join("cgroups")).unwrap_or_default();
    for base in [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/unified",
    ] {
        cgroups.push_str(&format!(
            "\n{base}/system.slice/lab-testhosts-{}.scope",
            h.name
        ));
    }
    for d in cgroups.lines().filter(|l| !l.is_empty()) {
        let d = std::path::Path::new(d);
        let read = |f: &str| {
            std::fs::read_to_string(d.join(f))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        };
        if let (Some(used), Some(limit)) =
            (read("memory.usage_in_bytes"), read("memory.limit_in_bytes"))
        {
            return NodeMemory {
                used,
                peak: read("memory.max_usage_in_bytes").unwrap_or(used),
                limit,
                hit_limit: read("memory.failcnt").unwrap_or(0),
            };
        }
        if let (Some(used), Some(limit)) = (read("memory.current"), read("memory.max")) {
            let events = std::fs::read_to_string(d.join("memory.events")).unwrap_or_default();
            let oom = events
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            return NodeMemory {
                used,
                peak: read("memory.peak").unwrap_or(used),
                limit,
                hit_limit: oom,
            };
        }
    }
    panic!("no memory cgroup of {} in {cgroups}", h.name)
}

const ROOTFUL: &str = "    lab.dev/rootful: \"true\"\n";

#[test]
fn a_rootful_pod_runs_in_the_system_manager_from_roots_storage() {
    let h = host(6);
    let t = project(&h, "");
    // the machine's firewall, as Debian ships it (`flush ruleset` first),
    // with lab's drop-in in its input chain, loaded before any pod runs
    t.file(
        "machines/h1/etc/nftables.conf",
        "#!/usr/sbin/nft -f\nflush ruleset\ntable inet filter {\n  chain input {\n    \
         type filter hook input priority filter; policy accept;\n    \
         include \"/etc/nftables.d/*.nft\"\n  }\n}\n",
    );
    sync_ok(&t);
    h.run("systemctl enable --now nftables.service").unwrap();
    web_image(&t, &h, "web", "rootful\n");
    web_pod_with(&t, "web", "web", 8080, "1", ROOTFUL);
    let out = sync_ok(&t);
    assert!(out.contains("start web.service"), "{out}");
    assert!(!out.contains("pods/"), "{out}");
    assert!(answers(&h, 8080).contains("rootful"));
    assert_eq!(
        h.run("systemctl is-active web.service").unwrap().trim(),
        "active"
    );
    assert!(h
        .run("podman images --format '{{.Repository}}:{{.Tag}}'")
        .unwrap()
        .contains("localhost/web:latest"));
    let before = h
        .run("podman ps --filter pod=web --format '{{.Pid}}'")
        .unwrap();
    // a rootless pod publishing another port: the drop-in changes and
    // nftables.service reloads its ruleset (flushing netavark's rules);
    // the rootful pod, not restarted, still answers
    web_pod(&t, "other", "web", 8081, "1");
    let out = sync_ok(&t);
    assert!(out.contains("reload nftables.service"), "{out}");
    assert!(!out.contains("restart web.service"), "{out}");
    assert_eq!(
        h.run("podman ps --filter pod=web --format '{{.Pid}}'")
            .unwrap(),
        before
    );
    assert!(answers(&h, 8080).contains("rootful"));
    answers(&h, 8081);
    web_pod_with(&t, "web", "web", 8080, "2", ROOTFUL);
    let out = sync_ok(&t);
    assert!(out.contains("restart web.service"), "{out}");
    answers(&h, 8080);
    assert_ne!(
        h.run("podman ps --filter pod=web --format '{{.Pid}}'")
            .unwrap(),
        before
    );
}

/// An updated image whose sync loses its link right after the pod's
/// restart was journaled (before the image's name moved): the restart is
/// not lost. The machine lists it as pending, and the next sync runs it.
#[test]
fn an_image_restart_is_not_lost_when_the_link_drops() {
    let h = host(8);
    let t = project(&h, "");
    web_image(&t, &h, "web", "image one\n");
    web_pod(&t, "web", "web", 8080, "1");
    sync_ok(&t);
    assert!(answers(&h, 8080).contains("image one"));
    let before = pod_pids(&h, "web");
    // (the tree podman's image of that name was made from)
    let tree = || {
        h.podman("image inspect localhost/web:latest --format '{{index .Labels \"lab.tree\"}}'")
            .unwrap_or_default()
    };
    let tree1 = tree();
    assert_eq!(tree1.trim().len(), 64, "{tree1}");
    web_image(&t, &h, "web", "image two\n");

    // on the host: as soon as the current generation's journal grows,
    // drop every ssh connection (lab's included)
    let journal = "/var/lib/lab/gen/$(cut -d' ' -f1 /var/lib/lab/current)/actions";
    let lines: usize = h
        .run(&format!("cat {journal} 2>/dev/null | wc -l"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let watcher = format!(
        ": >/run/lab-watching; \
         until [ \"$(cat {journal} 2>/dev/null | wc -l)\" -gt {lines} ]; do :; done; \
         : >/run/lab-dropped; pkill -KILL -f 'sshd: root@notty'"
    );
    let mut c = h.ssh_command();
    c.arg(format!("timeout 120 sh -c {}", lab_agent::quote(&watcher)));
    let w = std::thread::spawn(move || c.output().unwrap());
    while h
        .run("test -e /run/lab-watching && echo y")
        .unwrap_or_default()
        != "y\n"
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, out, err) = lab(&t, &["sync", "-m", "h1"]);
    let _ = w.join();
    assert_eq!(
        h.run("test -e /run/lab-dropped && echo y")
            .unwrap_or_default(),
        "y\n",
        "the journal never grew from {lines} lines: {out}\n{err}"
    );
    // The name moves anyway (the command ignores the hang-up). Either
    // this sync got its link back and ran the journaled restart, or it
    // failed and the restart is pending: the machine says so, and the
    // next sync runs it.
    let t0 = Instant::now();
    while tree() == tree1 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "web:latest never moved"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    if code == 0 {
        assert!(out.contains("restart pods/web.service: ok"), "{out}");
    } else {
        let (_, status, _) = lab(&t, &["status", "-m", "h1"]);
        assert!(status.contains("restart pods/web.service"), "{status}");
        let out = sync_ok(&t);
        assert!(out.contains("restart pods/web.service: ok"), "{out}\n{err}");
    }
    assert!(answers(&h, 8080).contains("image two"));
    assert_ne!(pod_pids(&h, "web"), before);
    // and once only
    let again = sync_ok(&t);
    assert!(!again.contains("restart"), "{again}");
}

/// A pod NAME like [`web_pod`] whose `httpd` has `resources.limits` (64 MiB,
/// a quarter CPU) and whose sidecar has a memory limit only (16 MiB).
fn limited_pod(t: &TestLab, name: &str, port: u16, annotations: &str) {
    let annotations = match annotations {
        "" => String::new(),
        a => format!("  annotations:\n{a}"),
    };
    t.file(
        &format!("{PODS}/{name}.yaml"),
        &format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: {name}
{annotations}spec:
  containers:
  - name: httpd
    image: web
    command: [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; httpd -f -p {port} -h /www & wait\"]
    ports:
    - containerPort: {port}
      hostPort: {port}
    resources:
      limits:
        memory: 64Mi
        cpu: 250m
  - name: sidecar
    image: web
    command: [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while :; do sleep 1; done & wait\"]
    resources:
      limits:
        memory: 16Mi
"
        ),
    );
}

/// The cgroup controllers the host offers at `dir` (below its cgroup2
/// mount; `` for the root), read from inside.
fn controllers(h: &Host, dir: &str) -> Vec<String> {
    h.run(&format!("cat /sys/fs/cgroup/{dir}/cgroup.controllers"))
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Every `FILE` (`memory.max`, `cpu.max`) from the cgroup2 cgroup of
/// process `pid` up to the root: what really limits it, wherever set.
fn cgroup_chain(h: &Host, pid: &str, file: &str) -> Vec<String> {
    let out = h
        .run(&format!(
            "p=$(sed -n 's/^0:://p' /proc/{}/cgroup); while [ -n \"$p\" ] && [ \"$p\" != / ]; do cat /sys/fs/cgroup$p/{file} 2>/dev/null; p=${{p%/*}}; done",
            pid.trim()
        ))
        .unwrap();
    out.lines().map(|l| l.trim().to_string()).collect()
}

/// The memory limit in force for process `pid`: the least `memory.max`
/// of its cgroup chain.
fn memory_limit(h: &Host, pid: &str) -> Option<u64> {
    cgroup_chain(h, pid, "memory.max")
        .iter()
        .filter_map(|l| l.parse().ok())
        .min()
}

/// `lab ps` until pod `name`'s line says `failed` (systemd restarts a pod
/// whose start fails until its start limit); the whole output.
fn ps_until_failed(t: &TestLab, name: &str) -> String {
    let t0 = Instant::now();
    loop {
        let (_, out, _) = lab(t, &["ps", "-m", "h1"]);
        let line = out
            .lines()
            .find(|l| l.contains(&format!(" {name} ")))
            .unwrap_or_else(|| panic!("no {name} line: {out}"));
        if line.contains("failed") {
            return out;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "pod {name} never shown failed: {out}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `resources.limits` are each container's own cgroup limits (podman sets
/// them from the YAML), rootless and rootful. A node that cannot apply
/// them (its cgroup v2 offers no memory or cpu controller there: these
/// nspawn test hosts on a cgroup v1 machine offer none at all) fails the
/// pod before podman, saying which controller is missing and what to do,
/// in `lab sync` and `lab ps`; a pod without limits runs there all the
/// same. Which of the two the node is, is read from the node itself.
#[test]
fn resources_limits_hold_in_each_containers_cgroup_or_the_pod_fails_saying_why() {
    let h = host(LIMITS_NODE);
    let t = project(&h, "");
    web_image(&t, &h, "web", "limited\n");
    limited_pod(&t, "lim", 8080, "");
    limited_pod(&t, "rootlim", 8082, ROOTFUL);
    web_pod(&t, "free", "web", 8081, "1");

    let uid = h.run("id -u pods").unwrap();
    let uid = uid.trim();
    let need = |have: &[String]| {
        ["memory", "cpu"]
            .iter()
            .all(|c| have.iter().any(|h| h == c))
    };
    let root = controllers(&h, "");
    let manager = controllers(
        &h,
        &format!("user.slice/user-{uid}.slice/user@{uid}.service"),
    );
    let rootless_can = need(&manager);
    let rootful_can = need(&root);
    eprintln!("node cgroup controllers: root {root:?}, user@{uid}.service {manager:?}");

    let (code, out, err) = lab(&t, &["sync", "-m", "h1"]);
    assert_eq!(
        code,
        if rootless_can && rootful_can { 0 } else { 1 },
        "{out}\n{err}"
    );
    // limits or not, a pod without them serves
    assert!(answers(&h, 8081).contains("limited"));

    // (pod, port, its podman, whether the node can limit it)
    let rootful_podman = |args: &str| h.run(&format!("podman {args}"));
    let rootless_podman = |args: &str| h.podman(args);
    type Podman<'a> = &'a dyn Fn(&str) -> lab_testhosts::Result<String>;
    let pods: [(&str, u16, Podman, bool); 2] = [
        ("lim", 8080, &rootless_podman, rootless_can),
        ("rootlim", 8082, &rootful_podman, rootful_can),
    ];
    for (pod, port, podman, can) in pods {
        if can {
            assert!(answers(&h, port).contains("limited"));
            let pid = podman(&format!(
                "inspect {pod}-httpd --format '{{{{.State.Pid}}}}'"
            ))
            .unwrap();
            assert_eq!(memory_limit(&h, &pid), Some(64 << 20), "{pod}-httpd");
            let cpu = cgroup_chain(&h, &pid, "cpu.max");
            assert!(
                cpu.iter().any(|l| l == "25000 100000"),
                "{pod}-httpd: {cpu:?}"
            );
            let pid = podman(&format!(
                "inspect {pod}-sidecar --format '{{{{.State.Pid}}}}'"
            ))
            .unwrap();
            assert_eq!(memory_limit(&h, &pid), Some(16 << 20), "{pod}-sidecar");
            continue;
        }
        // the sync names the pod, the missing controllers and the remedy
        let said = format!(
            "lab: pod {pod} has resources.limits, which need the memory cpu cgroup controller"
        );
        assert!(out.contains(&said), "{pod}: {out}");
        let remedy = if need(&root) {
            "Delegate=cpu memory pids"
        } else {
            "this node offers no memory cpu controller at all"
        };
        assert!(out.contains(remedy), "{pod}: {out}");
        // nothing half-runs: no container of the pod, and `lab ps` shows it
        // failed, with the reason in its journal tail
        assert!(podman(&format!("ps -q --filter pod={pod}"))
            .unwrap()
            .trim()
            .is_empty());
        // (the journal of a user unit can reach `journalctl` a moment
        // after the unit failed: look again until it is there)
        let t0 = Instant::now();
        loop {
            let ps = ps_until_failed(&t, pod);
            if ps.lines().any(|l| l.contains(&said)) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "{pod}: {ps}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// `images/NAME/`, a root directory: busybox from the host's root (`sh`,
/// `httpd`, `sleep`) and `/www/index.html` saying `body`.
fn web_root_dir(t: &TestLab, h: &Host, name: &str, body: &str) -> std::path::PathBuf {
    let root = t.join(&format!("images/{name}"));
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("www")).unwrap();
    std::fs::copy(
        h.root.as_ref().unwrap().join("bin/busybox"),
        root.join("bin/busybox"),
    )
    .unwrap();
    for applet in ["sh", "httpd", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("www/index.html"), body).unwrap();
    root
}

/// An image given as a root directory (`images/NAME/` without an
/// `index.json`): lab makes it an OCI archive on the way, the pod runs it,
/// and a changed file makes a new image that the pod restarts on.
#[test]
fn an_image_from_a_root_directory_runs_and_updates() {
    let h = host(9);
    let t = project(&h, "");
    let root = web_root_dir(&t, &h, "rootweb", "from a root directory\n");
    web_pod(&t, "rw", "rootweb", 8090, "1");
    let out = sync_ok(&t);
    assert!(
        out.contains("loaded image localhost/rootweb:latest"),
        "{out}"
    );
    assert!(answers(&h, 8090).contains("from a root directory"));
    let before = pod_pids(&h, "rw");

    // nothing changed: nothing shipped
    let out = sync_ok(&t);
    assert!(!out.contains("loaded image"), "{out}");

    std::fs::write(root.join("www/index.html"), "changed root directory\n").unwrap();
    let out = sync_ok(&t);
    assert!(
        out.contains("loaded image localhost/rootweb:latest"),
        "{out}"
    );
    assert!(out.contains("restart pods/rw.service: ok"), "{out}");
    assert!(answers(&h, 8090).contains("changed root directory"));
    assert_ne!(pod_pids(&h, "rw"), before);
}

/// A root directory with a sparse file, a device node, a fifo and a name
/// that is not UTF-8 loads (the sparse file goes whole) and reads back in
/// the container; the next sync finds the machine already has it.
#[test]
fn a_sparse_root_directory_loads() {
    let h = host(10);
    let t = project(&h, "");
    let root = web_root_dir(&t, &h, "lie", "the true tree\n");
    // a sparse file (a hole, then text): a GNU sparse entry of the layer
    let sparse = std::fs::File::create(root.join("www/sparse.bin")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&sparse, b"sparse end\n", 64 << 20).unwrap();
    drop(sparse);
    // what a root file system made as root holds: a device node, a fifo,
    // a name that is not UTF-8
    std::fs::create_dir_all(root.join("dev")).unwrap();
    let made = |args: &[&str]| {
        Process::new(args[0])
            .args(&args[1..])
            .current_dir(&root)
            .status()
            .unwrap()
            .success()
    };
    assert!(made(&["mknod", "dev/null", "c", "1", "3"]));
    assert!(made(&["mkfifo", "dev/fifo"]));
    std::fs::write(
        root.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"www/\xff")),
        "x",
    )
    .unwrap();
    web_pod(&t, "lw", "lie", 8091, "1");
    // (a tree changed in the clock tick it is read in is not cached)
    std::thread::sleep(Duration::from_millis(50));
    let out = sync_ok(&t);
    assert!(out.contains("loaded image localhost/lie:latest"), "{out}");
    let tail = h
        .podman(
            "exec lw-httpd /bin/busybox sh -c 'wc -c </www/sparse.bin; tail -c 11 /www/sparse.bin'",
        )
        .unwrap();
    assert_eq!(tail, format!("{}\nsparse end\n", (64 << 20) + 11));
    sync_ok(&t);
    let images = || {
        h.podman("images --no-trunc --format '{{.ID}} {{.Repository}}:{{.Tag}}'")
            .unwrap()
    };
    let before = images();
    let out = sync_ok(&t);
    assert!(!out.contains("loaded image"), "{out}");
    assert_eq!(images(), before);
}
