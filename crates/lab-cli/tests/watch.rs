//! `lab watch`: every edit pattern converges to what a clean build and sync
//! give, on a local machine and on real test hosts, and the JSON log shows
//! that unrelated nodes were not re-rendered.

mod common_hosts;

use common_hosts::*;
use lab_testkit::{tree_listing, TestLab};
use serde_json::Value;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// A running `lab watch --json`.
struct Watch {
    child: Child,
    lines: Receiver<Value>,
    /// Every object seen so far.
    log: Vec<Value>,
}

/// Held while a watch starts: the test that lowers the kernel's inotify
/// queue for one watch keeps the others from starting meanwhile.
static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Watch {
    fn start(lab: &TestLab, args: &[&str]) -> Watch {
        let _starting = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        Watch::start_unlocked(lab, args)
    }

    fn start_unlocked(lab: &TestLab, args: &[&str]) -> Watch {
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("lab"))
            .current_dir(lab.path())
            .env("NO_COLOR", "1")
            .args(["watch", "--json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        let mut w = Watch {
            child,
            lines: rx,
            log: Vec::new(),
        };
        let first = w.next(Duration::from_secs(60)).expect("the first cycle");
        assert_eq!(first["cycle"], 0, "{first}");
        w
    }

    fn next(&mut self, timeout: Duration) -> Option<Value> {
        let v = self.lines.recv_timeout(timeout).ok()?;
        self.log.push(v.clone());
        Some(v)
    }

    /// Read cycles until `done` holds (checked after each one and on
    /// quiet); the cycles read.
    fn until(&mut self, what: &str, mut done: impl FnMut() -> bool) -> Vec<Value> {
        let start = Instant::now();
        let mut seen = Vec::new();
        while start.elapsed() < Duration::from_secs(30) {
            if let Some(v) = self.next(Duration::from_millis(300)) {
                seen.push(v);
            }
            if done() {
                // let a straggling cycle show up, then check again
                while let Some(v) = self.next(Duration::from_millis(150)) {
                    seen.push(v);
                }
                if done() {
                    return seen;
                }
            }
        }
        panic!("{what}: did not converge; cycles: {seen:#?}");
    }
}

impl Watch {
    /// Read until an object after `from` in the log satisfies `pred`.
    fn until_log(&mut self, what: &str, from: usize, pred: impl Fn(&Value) -> bool) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if self.log[from..].iter().any(&pred) {
                return;
            }
            self.next(Duration::from_millis(300));
        }
        panic!("{what}: not seen; log: {:#?}", &self.log[from..]);
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The output trees of a clean build of a copy of the sources.
fn clean_build(lab: &TestLab) -> TestLab {
    let clean = lab.copy_sources();
    assert_cmd::Command::cargo_bin("lab")
        .unwrap()
        .current_dir(clean.path())
        .args(["build", "-q"])
        .assert()
        .success();
    clean
}

/// The local machine's tree (without lab's state) equals the clean build.
fn local_converged(lab: &TestLab, root: &std::path::Path, machine: &str) -> bool {
    let clean = clean_build(lab);
    let want = tree_listing(&clean.join(&format!(".lab/out/{machine}")));
    let have: String = tree_listing(root)
        .lines()
        .filter(|l| {
            !l.starts_with("var/lib/lab") && !l.starts_with("var/ ") && !l.starts_with("var/lib/ ")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    want == have
}

fn rendered(cycles: &[Value], machine: &str) -> Vec<String> {
    let mut v: Vec<String> = cycles
        .iter()
        .flat_map(|c| {
            c["machines"][machine]["rendered"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    v.sort();
    v.dedup();
    v
}

fn local_project(root: &std::path::Path) -> TestLab {
    let lab = TestLab::new();
    lab.file(
        "lab.toml",
        &format!(
            "[facts]\ndomain = \"example.org\"\n\n[machines.box]\ntransport = \"local\"\nroot = \"{}\"\nroot_outside_project = true\nlayers = [\"web\", \"app\"]\n",
            root.display()
        ),
    )
    .file("layers/web/etc/site.conf.j2", "server {{ domain }};\n")
    .file("layers/app/etc/app.conf.j2", "app for {{ machine }}\n")
    .file("layers/app/etc/static", "static\n");
    lab
}

#[test]
fn every_edit_pattern_converges_on_a_local_machine() {
    let root = tempfile::tempdir().unwrap();
    let lab = local_project(root.path());
    let mut w = Watch::start(&lab, &["--machine", "box"]);
    let r = root.path().to_path_buf();
    assert!(local_converged(&lab, &r, "box"));

    // an editor that writes in place; only that template re-renders
    lab.file(
        "layers/web/etc/site.conf.j2",
        "server {{ domain }}; # in place\n",
    );
    let c = w.until("write in place", || local_converged(&lab, &r, "box"));
    assert_eq!(rendered(&c, "box"), ["/etc/site.conf"], "{c:#?}");

    // an editor that writes a temp file and renames it over
    std::fs::write(
        lab.join("layers/app/etc/.app.conf.j2.tmp"),
        "app {{ machine }} renamed\n",
    )
    .unwrap();
    std::fs::rename(
        lab.join("layers/app/etc/.app.conf.j2.tmp"),
        lab.join("layers/app/etc/app.conf.j2"),
    )
    .unwrap();
    let c = w.until("temp and rename", || local_converged(&lab, &r, "box"));
    assert_eq!(rendered(&c, "box"), ["/etc/app.conf"], "{c:#?}");

    // delete and recreate
    lab.remove("layers/app/etc/static");
    lab.file("layers/app/etc/static", "static, recreated\n");
    w.until("delete and recreate", || local_converged(&lab, &r, "box"));

    // a new directory, then its deletion
    lab.file("layers/app/srv/new/a", "a\n")
        .file("layers/app/srv/new/deeper/b", "b\n");
    w.until("new directory", || local_converged(&lab, &r, "box"));
    assert_eq!(
        std::fs::read_to_string(r.join("srv/new/deeper/b")).unwrap(),
        "b\n"
    );
    lab.remove("layers/app/srv");
    w.until("deleted directory", || local_converged(&lab, &r, "box"));
    assert!(!r.join("srv/new").exists());

    // lab.toml: a fact changes, the machine rebuilds
    let toml = lab.read("lab.toml").replace("example.org", "example.net");
    lab.file("lab.toml", &toml);
    w.until("lab.toml edit", || local_converged(&lab, &r, "box"));
    assert_eq!(
        std::fs::read_to_string(r.join("etc/site.conf")).unwrap(),
        "server example.net; # in place\n"
    );

    // a broken template: the error names file:line, watching goes on
    lab.file(
        "layers/web/etc/site.conf.j2",
        "server {{ domain }};\n{% if %}\n",
    );
    let from = w.log.len();
    w.until_log("template error", from, |v| {
        v["errors"].as_array().is_some_and(|a| {
            a.iter().any(|e| {
                e.as_str()
                    .is_some_and(|s| s.contains("--> layers/web/etc/site.conf.j2:2:"))
            })
        })
    });
    assert_eq!(
        std::fs::read_to_string(r.join("etc/site.conf")).unwrap(),
        "server example.net; # in place\n",
        "the machine keeps its last good state"
    );
    // the fix resumes syncing
    lab.file(
        "layers/web/etc/site.conf.j2",
        "server {{ domain }}; # fixed\n",
    );
    w.until("fix", || local_converged(&lab, &r, "box"));

    // events under .lab/ start no cycle
    let n = w.log.len();
    std::fs::write(lab.join(".lab/scratch"), "x").unwrap();
    std::thread::sleep(Duration::from_millis(400));
    while w.next(Duration::from_millis(100)).is_some() {}
    let extra: Vec<&Value> = w.log[n..]
        .iter()
        .filter(|v| v["changed"].as_array().is_some_and(|a| !a.is_empty()))
        .collect();
    assert!(extra.is_empty(), "{extra:#?}");
}

/// Stopped with Ctrl-C or SIGTERM right after an edit (well within the
/// 2 s after which an idle session saves its state), a watch saves its
/// state on the way out: the next `lab build` has nothing to do.
#[test]
fn a_stopped_watch_leaves_state_the_next_build_uses() {
    for signal in [libc_signal::SIGINT, libc_signal::SIGTERM] {
        let root = tempfile::tempdir().unwrap();
        let lab = local_project(root.path());
        lab.file("layers/web/etc/other.j2", "other {{ domain }}\n");
        let mut w = Watch::start(&lab, &["--machine", "box", "--no-sync"]);
        lab.file(
            "layers/web/etc/site.conf.j2",
            "server {{ domain }}; # edited\n",
        );
        w.until_log("the edit's cycle", 0, |v| {
            v["changed"]
                .as_array()
                .is_some_and(|c| c.iter().any(|p| p == "layers/web/etc/site.conf.j2"))
        });
        let pid = w.child.id() as i32;
        assert_eq!(unsafe { libc_signal::kill(pid, signal) }, 0);
        let status = w.child.wait().unwrap();
        assert!(status.success(), "signal {signal}: {status:?}");
        let out = assert_cmd::Command::cargo_bin("lab")
            .unwrap()
            .current_dir(lab.path())
            .args(["build", "--explain"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        assert!(
            stdout.contains("box") && stdout.contains("up to date") && !stdout.contains("because"),
            "signal {signal}: the next build is a no-op:\n{stdout}"
        );
    }
}

/// The two signals and kill(2), without a dependency for a test.
mod libc_signal {
    pub const SIGINT: i32 = 2;
    pub const SIGTERM: i32 = 15;
    extern "C" {
        pub fn kill(pid: i32, sig: i32) -> i32;
    }
}

#[test]
fn a_git_checkout_and_a_burst_are_coalesced() {
    let root = tempfile::tempdir().unwrap();
    let lab = local_project(root.path());
    let git = |args: &[&str]| {
        let ok = Command::new("git")
            .current_dir(lab.path())
            .args(["-c", "user.email=t@t", "-c", "user.name=t"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    };
    std::fs::write(lab.join(".gitignore"), ".lab\n").unwrap();
    for i in 0..300 {
        lab.file(&format!("layers/app/srv/f{:03}", i), &format!("a {i}\n"));
    }
    git(&["init", "-q", "-b", "a"]);
    git(&["add", "-A"]);
    git(&["commit", "-qm", "a"]);
    git(&["checkout", "-qb", "b"]);
    for i in 0..300 {
        lab.file(&format!("layers/app/srv/f{:03}", i), &format!("b {i}\n"));
    }
    git(&["commit", "-qam", "b"]);
    git(&["checkout", "-q", "a"]);

    let mut w = Watch::start(&lab, &["--machine", "box"]);
    let r = root.path().to_path_buf();
    git(&["checkout", "-q", "b"]);
    let c = w.until("git checkout", || local_converged(&lab, &r, "box"));
    let cycles = c
        .iter()
        .filter(|v| v["changed"].as_array().is_some_and(|a| !a.is_empty()))
        .count();
    assert!(
        cycles <= 3,
        "git checkout of 300 files took {cycles} cycles"
    );

    // a burst of 500 writes
    for i in 0..500 {
        lab.file(&format!("layers/app/burst/x{}", i % 250), &format!("{i}\n"));
    }
    let c = w.until("burst", || local_converged(&lab, &r, "box"));
    let cycles = c
        .iter()
        .filter(|v| v["changed"].as_array().is_some_and(|a| !a.is_empty()))
        .count();
    assert!(cycles <= 4, "a burst of 500 changes took {cycles} cycles");
}

/// Sets `fs.inotify.max_queued_events` (read by the kernel when an inotify
/// instance is made) and puts the old value back on drop.
struct QueueLimit(String);

const QUEUE_LIMIT: &str = "/proc/sys/fs/inotify/max_queued_events";

impl QueueLimit {
    fn set(n: u32) -> QueueLimit {
        let old = std::fs::read_to_string(QUEUE_LIMIT).unwrap();
        std::fs::write(QUEUE_LIMIT, n.to_string()).expect("root sets fs.inotify.max_queued_events");
        QueueLimit(old)
    }
}

impl Drop for QueueLimit {
    fn drop(&mut self) {
        let _ = std::fs::write(QUEUE_LIMIT, self.0.trim());
    }
}

#[test]
fn lost_events_are_caught_by_a_rescan() {
    let root = tempfile::tempdir().unwrap();
    let lab = local_project(root.path());
    for i in 0..50 {
        lab.file(&format!("layers/app/srv/d{}/f{i}", i % 10), "0\n");
    }
    // a watch whose event queue holds 16 events overflows at once
    let mut w = {
        let _starting = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        let _limit = QueueLimit::set(16);
        Watch::start_unlocked(&lab, &["--machine", "box"])
    };
    let r = root.path().to_path_buf();
    w.until("first build", || local_converged(&lab, &r, "box"));
    let before = w.log.len();
    // 100 changes, a delete, a new directory and a template edit, in one go
    for i in 0..50 {
        lab.file(&format!("layers/app/srv/d{}/f{i}", i % 10), "1\n");
        lab.file(&format!("layers/app/srv/new/g{i}"), "g\n");
    }
    lab.remove("layers/app/etc/static");
    lab.file("layers/web/etc/site.conf.j2", "server {{ domain }}; # v2\n");
    let c = w.until("lost events", || local_converged(&lab, &r, "box"));
    assert!(
        w.log[before..]
            .iter()
            .any(|v| v["warnings"].as_array().is_some_and(|a| a
                .iter()
                .any(|m| m.as_str().unwrap_or("").contains("events were lost")))),
        "the overflow was noticed and said: {c:?}"
    );
    // a rescan re-renders what changed, nothing else
    assert_eq!(rendered(&c, "box"), ["/etc/site.conf"]);
}

#[test]
fn real_hosts_converge_reconnect_and_survive_an_unreachable_one() {
    let fleet = lab_testhosts::TestHosts::up(2).unwrap();
    let (h1, h2) = (&fleet.hosts()[0], &fleet.hosts()[1]);
    let lab = project(fleet.hosts());
    lab.file(
        "layers/base/etc/web/site.conf.j2",
        "site of {{ machine }}\n",
    );
    let mut w = Watch::start(&lab, &[]);
    let converged = |lab: &TestLab| -> bool {
        let clean = clean_build(lab);
        ["h1", "h2"].iter().zip([h1, h2]).all(|(m, h)| {
            let man = manifest(&clean, m);
            remote_state(h, &man) == expected_state(&man)
        })
    };
    w.until("first sync", || converged(&lab));

    // a rule-mapped file: reload on both, only that file re-rendered
    let pid = main_pid(h1, "probe.service");
    lab.file("layers/base/etc/probe/version", "2\n");
    let c = w.until("rule change", || converged(&lab));
    assert!(
        c.iter()
            .any(|v| v["machines"]["h1"]["sync"]["units"][0]["action"] == "reload"),
        "{c:#?}"
    );
    assert_eq!(main_pid(h1, "probe.service"), pid);

    lab.file(
        "layers/base/etc/web/site.conf.j2",
        "site of {{ machine }}, edited\n",
    );
    let c = w.until("template edit", || converged(&lab));
    assert_eq!(rendered(&c, "h1"), ["/etc/web/site.conf"]);

    // a dropped connection: the next edit reconnects and syncs
    let _ = h1.run("pkill -KILL -f 'sshd: root@notty' || true");
    lab.file(
        "layers/base/etc/motd.j2",
        "{{ machine }} after a dropped connection\n",
    );
    w.until("dropped connection", || converged(&lab));

    // h2 unreachable (its link cut on the host side): h1 goes on, and h2
    // catches up once it is back
    let veth = h2.veth.clone().expect("the fleet records each host's veth");
    let link = |state: &str| {
        assert!(Command::new("ip")
            .args(["link", "set", &veth, state])
            .status()
            .unwrap()
            .success());
    };
    link("down");
    lab.file(
        "layers/base/etc/motd.j2",
        "{{ machine }} while h2 is away\n",
    );
    let clean = clean_build(&lab);
    let man = manifest(&clean, "h1");
    w.until("h1 without h2", || {
        remote_state(h1, &man) == expected_state(&man)
    });
    let from = 0;
    w.until_log("h2's failure reported", from, |v| {
        v["machines"]["h2"]["sync_error"].is_string()
    });
    link("up");
    w.until("h2 back", || converged(&lab));
}
