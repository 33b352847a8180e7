//! A real `lab watch` seen on the web console: its cycles, as it runs
//! them, in the event stream of a namespace (only that namespace's
//! machines), through `.lab/watch.log`; idle when none runs.

#[path = "../../lab-console/tests/common/mod.rs"]
mod common;

use common::{two_local, Fixture, TWO_LOCAL};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `lab watch` this test started, killed (by its PID) if the test
/// ends before it does.
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// When the fleet page says the last look at the machines was (seconds
/// since the epoch, to the second).
fn looked_at(page: &str) -> Option<i64> {
    let ago = page.split("states looked at ").nth(1)?;
    let s: i64 = ago.split(" s ago").next()?.parse().ok()?;
    Some(now() - s)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < Duration::from_secs(60), "{what}: not seen");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_running_watch_shows_its_cycles_on_the_console() {
    // (the console looks at the machines every second)
    let f = Fixture::start(TWO_LOCAL, two_local, |o| {
        o.refresh_every = Duration::from_secs(1)
    });
    f.people();
    let mut alice = f.login("alice");
    let page = alice.get("/ns/team").body;
    assert!(
        page.contains("data-watch=\"/ns/team/watch/events\""),
        "{page}"
    );
    // none runs: said at once
    let idle = alice.get("/ns/team/watch/events");
    assert_eq!(idle.status, 200);
    assert!(
        idle.body
            .contains("event: idle\ndata: no lab watch is running\n"),
        "{}",
        idle.body
    );

    let mut watch = Stopped(
        Command::new(assert_cmd::cargo::cargo_bin("lab"))
            .current_dir(f.lab.path())
            .env("NO_COLOR", "1")
            .arg("watch")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = watch.0.id();
    let log = f.lab.join(".lab/watch.log");
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("the first cycle", || {
        read().contains("\"cycle\":{\"number\":0")
    });
    let started = now();

    // the watch holds lab's lock for its whole session: the console's
    // look goes on (it checks the watch's outputs as they are), and an
    // action waits for the lock, saying so
    let mut bob = f.login("bob");
    wait_for("a look at the machines during the watch", || {
        looked_at(&bob.get("/").body).is_some_and(|at| at > started)
    });
    let r = bob.act("/ns/team/machine/dev/diff", &[]);
    assert_eq!(r.status, 303, "{}", r.body);
    let job = r.header("Location").unwrap().to_string();
    wait_for("the diff says it waits", || {
        bob.get(&job).body.contains("waiting for it to finish")
    });

    // alice follows it; carol (another namespace) follows hers
    let follow = |mut c: common::Client, ns: &'static str| {
        std::thread::spawn(move || c.get(&format!("/ns/{ns}/watch/events")).body)
    };
    let team = follow(alice, "team");
    let other = follow(f.login("carol"), "other");
    let mut carol = f.login("carol");
    assert_eq!(carol.get("/ns/team/watch/events").status, 403);

    f.lab.file("layers/_/etc/motd.j2", "edited {{ machine }}\n");
    wait_for("the edit synced", || {
        std::fs::read_to_string(f.lab.join("dev-root/etc/motd")).ok() == Some("edited dev\n".into())
            && std::fs::read_to_string(f.lab.join("dev2-root/etc/motd")).ok()
                == Some("edited dev2\n".into())
            && read().contains("layers/_/etc/motd.j2")
    });
    // SAFETY: kill(2) on the child this test started, by its PID.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    assert!(watch.0.wait().unwrap().success());
    // the lock is free: the diff goes on to its end
    let events = bob.get(&format!("{job}/events")).body;
    assert!(events.contains("event: done\ndata: ok"), "{events}");

    let team = team.join().unwrap();
    assert!(
        team.contains(&format!("event: session\ndata: {pid}\n")),
        "{team}"
    );
    assert!(
        team.contains(&format!("data: lab watch started (pid {pid}) for dev\n")),
        "{team}"
    );
    assert!(team.contains("data: cycle 0 (start) -> dev: "), "{team}");
    assert!(
        team.contains(
            "(layers/_/etc/motd.j2) -> dev: 1 rendered, generation 2 applied: 1 written, 0 removed ["
        ),
        "{team}"
    );
    assert!(!team.contains("dev2"), "{team}");
    assert!(
        team.ends_with("data: lab watch stopped\n\nevent: done\ndata: stopped\n\n"),
        "{team}"
    );
    let other = other.join().unwrap();
    assert!(
        other.contains("(layers/_/etc/motd.j2) -> dev2: 1 rendered, generation 2 applied"),
        "{other}"
    );
    assert!(!other.contains("dev:"), "{other}");

    // over: idle again
    let mut alice = f.login("alice");
    let idle = alice.get("/ns/team/watch/events").body;
    assert!(idle.contains("event: idle"), "{idle}");
}
