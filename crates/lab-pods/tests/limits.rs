//! The check a pod with `resources.limits` runs before podman, exactly as
//! its unit runs it (the `ExecStartPre=` line, read back the way systemd
//! reads it), by `/bin/sh` against cgroup trees laid out like the nodes it
//! meets: a stock Debian VPS (cgroup v2, `user@.service` delegating `cpu
//! memory pids`), a user manager given no cpu, a node whose cgroup v2 has
//! no controllers (lab's nspawn test hosts on a cgroup v1 machine: the
//! real run of that case is in lab-cli's `pods_node`), and cgroup v1.

use lab_pods::{compile, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

fn unit(name: &str, limits: &str, rootful: bool) -> String {
    let ctx = Context {
        pod_user: "pods".into(),
        images: ["web".to_string()].into_iter().collect(),
    };
    let annotations = if rootful {
        "  annotations:\n    lab.dev/rootful: \"true\"\n"
    } else {
        ""
    };
    let text = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n{annotations}spec:\n  containers:\n  - name: a\n    image: web\n    resources:\n      limits:\n{limits}  - name: b\n    image: web\n"
    );
    compile(Path::new(&format!("pods/{name}.yaml")), name, &text, &ctx)
        .unwrap()
        .kube
}

/// The `ExecStartPre=` of `kube` as systemd hands it to exec: the script
/// (the single-quoted word, `$$` and `%%` undoubled) and the arguments.
fn check_of(kube: &str) -> (String, Vec<String>) {
    let line = kube
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPre=/bin/sh -c '"))
        .expect("an ExecStartPre check");
    let (script, args) = line.split_once('\'').unwrap();
    // (no other `$` or `%` use in it: each is doubled or a specifier)
    assert!(!script.replace("$$", "").contains('$'), "{script}");
    assert!(!script.replace("%%", "").contains('%'), "{script}");
    let script = script.replace("$$", "$").replace("%%", "%");
    (
        script,
        args.split_whitespace().map(str::to_string).collect(),
    )
}

/// A node's cgroups: `root` the cgroup mount, `proc` the unit's
/// `/proc/self/cgroup`.
struct Node {
    _dir: tempfile::TempDir,
    root: PathBuf,
    proc: PathBuf,
}

const USER_UNIT: &str = "/user.slice/user-1000.slice/user@1000.service/app.slice/web.service";

/// A cgroup v2 node: the root's controllers, the pod user's manager's
/// (`user@1000.service`), and the unit's cgroup line.
fn v2(root_ctrl: &str, manager_ctrl: &str, unit_cgroup: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cgroup");
    let manager = root.join("user.slice/user-1000.slice/user@1000.service");
    std::fs::create_dir_all(manager.join("app.slice/web.service")).unwrap();
    std::fs::write(root.join("cgroup.controllers"), format!("{root_ctrl}\n")).unwrap();
    std::fs::write(
        manager.join("cgroup.controllers"),
        format!("{manager_ctrl}\n"),
    )
    .unwrap();
    let proc = dir.path().join("proc-self-cgroup");
    // (a hybrid machine shows v1 lines too, as the test hosts do)
    std::fs::write(&proc, format!("1:cpu:/\n4:memory:/\n0::{unit_cgroup}\n")).unwrap();
    Node {
        _dir: dir,
        root,
        proc,
    }
}

/// A cgroup v1 node with these controller hierarchies mounted.
fn v1(hierarchies: &[&str]) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cgroup");
    for h in hierarchies {
        std::fs::create_dir_all(root.join(h)).unwrap();
    }
    let proc = dir.path().join("proc-self-cgroup");
    std::fs::write(&proc, "4:memory:/system.slice/web.service\n").unwrap();
    Node {
        _dir: dir,
        root,
        proc,
    }
}

/// Run `kube`'s check on `node`: (passed, stderr).
fn run(kube: &str, node: &Node) -> (bool, String) {
    let (script, args) = check_of(kube);
    assert_eq!(args[0], "lab-limits");
    assert_eq!(args[1], "/sys/fs/cgroup");
    assert_eq!(args[2], "/proc/self/cgroup");
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(&script)
        .arg(&args[0])
        .arg(&node.root)
        .arg(&node.proc)
        .args(&args[3..])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const BOTH: &str = "        memory: 64Mi\n        cpu: 250m\n";

#[test]
fn the_unit_names_the_pod_its_manager_and_the_controllers_its_limits_need() {
    let (_, args) = check_of(&unit("web", BOTH, false));
    assert_eq!(args[3..], ["web", "rootless", "memory", "cpu"]);
    let (_, args) = check_of(&unit("web", "        cpu: 100m\n", true));
    assert_eq!(args[3..], ["web", "rootful", "cpu"]);
    let (_, args) = check_of(&unit("web", "        memory: 1Gi\n", false));
    assert_eq!(args[3..], ["web", "rootless", "memory"]);
}

#[test]
fn a_stock_debian_node_passes_rootless_and_rootful() {
    let node = v2(
        "cpuset cpu io memory hugetlb pids rdma misc",
        "cpu memory pids",
        USER_UNIT,
    );
    assert_eq!(run(&unit("web", BOTH, false), &node), (true, String::new()));
    let node = v2(
        "cpuset cpu io memory hugetlb pids rdma misc",
        "",
        "/system.slice/web.service",
    );
    assert_eq!(run(&unit("web", BOTH, true), &node), (true, String::new()));
}

#[test]
fn a_user_manager_not_given_cpu_fails_and_says_how_to_delegate_it() {
    let node = v2(
        "cpuset cpu io memory hugetlb pids",
        "memory pids",
        USER_UNIT,
    );
    let (ok, err) = run(&unit("web", BOTH, false), &node);
    assert!(!ok);
    let manager = node
        .root
        .join("user.slice/user-1000.slice/user@1000.service/cgroup.controllers");
    assert_eq!(
        err,
        format!(
            "lab: pod web has resources.limits, which need the cpu cgroup controller where its \
             containers run; {} offers: memory pids\n\
             lab: the pod user systemd is not given them: a drop-in \
             /etc/systemd/system/user@.service.d/delegate.conf saying [Service] \
             Delegate=cpu memory pids, then a restart of user@1000.service, does that (or \
             remove resources.limits)\n",
            manager.display()
        )
    );
    // a memory limit alone is fine there
    let (ok, _) = run(&unit("web", "        memory: 64Mi\n", false), &node);
    assert!(ok);
}

#[test]
fn a_node_whose_cgroup_v2_has_no_controllers_fails_rootless_and_rootful() {
    // what lab's podman test hosts are: nspawn on a cgroup v1 machine
    let node = v2("", "", USER_UNIT);
    let (ok, err) = run(&unit("web", BOTH, false), &node);
    assert!(!ok);
    assert!(
        err.contains("need the memory cpu cgroup controller where its containers run"),
        "{err}"
    );
    assert!(err.contains("offers: none"), "{err}");
    assert!(
        err.contains("this node offers no memory cpu controller at all"),
        "{err}"
    );
    assert!(err.contains("remove resources.limits"), "{err}");
    let (ok, err) = run(&unit("web", "        cpu: 1\n", true), &node);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "{}/cgroup.controllers offers: none",
            node.root.display()
        )),
        "{err}"
    );
    assert!(err.contains("no cpu controller at all"), "{err}");
}

#[test]
fn cgroup_v1_serves_rootful_limits_and_refuses_rootless_ones() {
    let node = v1(&["memory", "cpu", "cpuacct", "pids"]);
    assert_eq!(run(&unit("web", BOTH, true), &node), (true, String::new()));
    let (ok, err) = run(&unit("web", BOTH, false), &node);
    assert!(!ok);
    assert!(
        err.contains("cgroup v1, where rootless podman ignores limits"),
        "{err}"
    );
    let (ok, err) = run(&unit("web", BOTH, true), &v1(&["memory"]));
    assert!(!ok);
    assert!(err.contains("need the cpu cgroup controller"), "{err}");
}
