//! The watch loop as a library: its retry schedule, a machine that cannot
//! be reached and then can, and a stop that saves the session's state.
//! Builds and syncs are real (a `transport = "local"` machine runs the
//! real executor with `sh`); only the backoff's durations are shortened.

use lab_deploy::{BackoffPolicy, Cycle, Event, Events, Schedule, Stopper, Watch, WatchOptions};
use lab_engine::{BuildOptions, Engine, Reporter};
use lab_graph::{Key, Reason};
use lab_sync::Outcome;
use lab_testkit::TestLab;
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[test]
fn the_backoff_doubles_up_to_its_cap_and_a_sync_resets_it() {
    let policy = BackoffPolicy::default();
    let t0 = Instant::now();
    let mut s = Schedule::new(t0);
    assert!(s.is_due(t0), "a new machine is synced at once");
    let secs = |n: u64| Duration::from_secs(n);
    let mut now = t0;
    let mut waits = Vec::new();
    for _ in 0..7 {
        let w = s.failed(&policy, now);
        assert!(!s.is_due(now + w - Duration::from_millis(1)));
        assert!(s.is_due(now + w));
        waits.push(w);
        now += w;
    }
    assert_eq!(
        waits,
        [
            secs(1),
            secs(2),
            secs(4),
            secs(8),
            secs(16),
            secs(16),
            secs(16)
        ]
    );
    s.synced();
    assert!(!s.is_due(now + secs(60)), "nothing pending after a sync");
    assert_eq!(s.failed(&policy, now), secs(1), "a sync starts it over");
    // a changed build waits for the retry when the machine is not
    // connected, and goes at once when it is
    s.changed(false, now);
    assert!(!s.is_due(now));
    s.changed(true, now);
    assert!(s.is_due(now));
}

/// What the tests look at, sent from the loop's threads.
#[derive(Debug)]
enum Seen {
    ConnectFailed(String),
    Cycle(CycleSeen),
}

/// (machine, rendered, sync outcome or error, retry_in, drift repaired)
type MachineSeen = (
    String,
    Vec<String>,
    Option<Result<Outcome, String>>,
    Option<Duration>,
    Vec<String>,
);

#[derive(Debug)]
struct CycleSeen {
    number: u64,
    changed: Vec<String>,
    machines: Vec<MachineSeen>,
}

struct Collect(Mutex<Sender<Seen>>);

impl Events for Collect {
    fn event(&self, e: Event<'_>) {
        let seen = match e {
            Event::ConnectFailed { machine, .. } => Seen::ConnectFailed(machine.to_string()),
            Event::Cycle(c) => Seen::Cycle(seen(c)),
            _ => return,
        };
        let _ = self.0.lock().unwrap().send(seen);
    }
}

fn seen(c: &Cycle) -> CycleSeen {
    CycleSeen {
        number: c.number,
        changed: c.changed.clone(),
        machines: c
            .machines
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    m.rendered.clone(),
                    m.sync.as_ref().map(|r| match r {
                        Ok(rep) => Ok(rep.outcome.clone()),
                        Err(e) => Err(e.to_string()),
                    }),
                    m.retry_in,
                    m.sync
                        .iter()
                        .flatten()
                        .flat_map(|r| &r.drift)
                        .map(|d| format!("{} {}", d.path, d.kind.as_str()))
                        .collect(),
                )
            })
            .collect(),
    }
}

fn local_project(root: &Path) -> TestLab {
    let lab = TestLab::new();
    lab.file(
        "lab.toml",
        &format!(
            "[facts]\ndomain = \"example.org\"\n\n[machines.box]\ntransport = \"local\"\nroot = \"{}\"\nroot_outside_project = true\nlayers = [\"web\"]\n",
            root.display()
        ),
    )
    .file("layers/web/etc/site.conf.j2", "server {{ domain }};\n")
    .file("layers/web/etc/other.j2", "other {{ domain }}\n");
    lab
}

/// Run a watch on the calling thread while `drive` runs on another with
/// the events; the watch stops when `drive` returns (or panics).
fn watch_with<T: Send>(
    lab: &TestLab,
    opts: WatchOptions,
    drive: impl FnOnce(&Receiver<Seen>) -> T + Send,
) -> T {
    let (tx, rx) = channel();
    let events = Collect(Mutex::new(tx));
    let w = Watch::new(Engine::open(lab.path()).unwrap(), opts).unwrap();
    let stopper: Stopper = w.stopper();
    std::thread::scope(|s| {
        let driver = s.spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drive(&rx)));
            stopper.stop();
            r
        });
        let ended = w.run(&events);
        match driver.join().expect("the driver") {
            Ok(t) => {
                ended.expect("the watch ends cleanly");
                t
            }
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// The next cycle that `pred` accepts (panics after a minute without one).
fn next_cycle(rx: &Receiver<Seen>, what: &str, pred: impl Fn(&CycleSeen) -> bool) -> CycleSeen {
    let start = Instant::now();
    let mut log = Vec::new();
    while start.elapsed() < Duration::from_secs(60) {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Seen::Cycle(c)) if pred(&c) => return c,
            Ok(other) => log.push(other),
            Err(_) => {}
        }
    }
    panic!("{what}: not seen; events: {log:#?}");
}

/// Counts the nodes a build ran.
#[derive(Default)]
struct Ran(Mutex<Vec<String>>);

impl Reporter for Ran {
    fn node_ran(&self, machine: &str, key: &Key, reason: &Reason) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{machine} {key:?} {reason:?}"));
    }
}

/// Stopped right after an edit (long before an idle session would save
/// its state), the loop saves it on the way out: the next build of a
/// fresh engine has nothing to do.
#[test]
fn a_stopped_watch_saves_its_state_for_the_next_build() {
    let root = tempfile::tempdir().unwrap();
    let lab = local_project(root.path());
    let opts = WatchOptions {
        no_sync: true,
        idle: Duration::from_secs(3600),
        ..WatchOptions::default()
    };
    watch_with(&lab, opts, |rx| {
        next_cycle(rx, "the first build", |c| c.number == 0);
        lab.file(
            "layers/web/etc/site.conf.j2",
            "server {{ domain }}; # edited\n",
        );
        let c = next_cycle(rx, "the edit's cycle", |c| !c.changed.is_empty());
        assert_eq!(c.changed, ["layers/web/etc/site.conf.j2"]);
        assert_eq!(
            c.machines[0].1,
            ["/etc/site.conf"],
            "only the edited template"
        );
    });
    let ran = Ran::default();
    let report = Engine::open(lab.path())
        .unwrap()
        .build(&BuildOptions::default(), &ran)
        .unwrap();
    assert_eq!(*ran.0.lock().unwrap(), Vec::<String>::new());
    let m = report.machines[0].result.as_ref().unwrap();
    assert!(m.up_to_date, "{m:?}");
    assert_eq!(
        std::fs::read_to_string(lab.join(".lab/out/box/etc/site.conf")).unwrap(),
        "server example.org; # edited\n"
    );
}

/// A machine that cannot be reached is tried again on the backoff's
/// schedule (each failure doubles the wait, up to the cap), and synced
/// as soon as it can be reached.
#[test]
fn an_unreachable_machine_is_retried_on_schedule_then_synced() {
    let dir = tempfile::tempdir().unwrap();
    // the machine's root cannot be made while `blocked` is a file
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, "not a directory\n").unwrap();
    let root = blocked.join("root");
    let lab = local_project(&root);
    let ms = Duration::from_millis;
    let opts = WatchOptions {
        backoff: BackoffPolicy {
            first: ms(50),
            max: ms(200),
        },
        idle: Duration::from_secs(3600),
        ..WatchOptions::default()
    };
    let (failed_first, waits) = watch_with(&lab, opts, |rx| {
        // the connection before the first build failed (first wait: 50 ms)
        let failed_first = matches!(
            rx.recv_timeout(Duration::from_secs(60)),
            Ok(Seen::ConnectFailed(m)) if m == "box"
        );
        let mut waits = Vec::new();
        while waits.len() < 4 {
            let c = next_cycle(rx, "a failed retry", |c| {
                c.machines.iter().any(|m| matches!(m.2, Some(Err(_))))
            });
            waits.push(
                c.machines[0]
                    .3
                    .expect("a failed sync says when it is tried again"),
            );
        }
        std::fs::remove_file(&blocked).unwrap();
        let c = next_cycle(rx, "the sync once reachable", |c| {
            c.machines.iter().any(|m| matches!(m.2, Some(Ok(_))))
        });
        assert!(
            matches!(c.machines[0].2, Some(Ok(Outcome::Applied { gen: 1 }))),
            "{c:#?}"
        );
        assert_eq!(c.machines[0].3, None);
        (failed_first, waits)
    });
    assert!(failed_first);
    assert_eq!(waits, [ms(100), ms(200), ms(200), ms(200)]);
    assert_eq!(
        std::fs::read_to_string(root.join("etc/site.conf")).unwrap(),
        "server example.org;\n"
    );
}

/// A file changed behind lab's back is repaired by the next sync of its
/// machine that a watch session makes for any reason: here, an edit of
/// another file of the machine.
#[test]
fn a_watch_repairs_drift_when_it_next_syncs_the_machine() {
    let root = tempfile::tempdir().unwrap();
    let lab = local_project(root.path());
    let opts = WatchOptions {
        idle: Duration::from_secs(3600),
        ..WatchOptions::default()
    };
    let c = watch_with(&lab, opts, |rx| {
        next_cycle(rx, "the first sync", |c| {
            c.machines.iter().any(|m| matches!(m.2, Some(Ok(_))))
        });
        std::fs::write(root.path().join("etc/other"), "changed by hand\n").unwrap();
        lab.file(
            "layers/web/etc/site.conf.j2",
            "server {{ domain }}; # edited\n",
        );
        next_cycle(rx, "the edit's sync", |c| !c.changed.is_empty())
    });
    assert!(
        matches!(c.machines[0].2, Some(Ok(Outcome::Applied { gen: 2 }))),
        "{c:#?}"
    );
    assert_eq!(c.machines[0].4, ["etc/other content-changed"], "{c:#?}");
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/other")).unwrap(),
        "other example.org\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/site.conf")).unwrap(),
        "server example.org; # edited\n"
    );
}

/// With a check interval, an idle watch session looks at its machines
/// that often and repairs what drifted, though no source changed.
#[test]
fn a_watch_with_a_check_interval_repairs_drift_while_idle() {
    let root = tempfile::tempdir().unwrap();
    let lab = local_project(root.path());
    let opts = WatchOptions {
        idle: Duration::from_secs(3600),
        check_every: Some(Duration::from_millis(300)),
        ..WatchOptions::default()
    };
    let c = watch_with(&lab, opts, |rx| {
        next_cycle(rx, "the first sync", |c| {
            c.machines.iter().any(|m| matches!(m.2, Some(Ok(_))))
        });
        std::fs::write(root.path().join("etc/other"), "changed by hand\n").unwrap();
        std::fs::remove_file(root.path().join("etc/site.conf")).unwrap();
        next_cycle(rx, "a check that repairs", |c| {
            c.machines.iter().any(|m| !m.4.is_empty())
        })
    });
    assert!(c.changed.is_empty(), "no source changed: {c:#?}");
    assert!(
        matches!(c.machines[0].2, Some(Ok(Outcome::Applied { .. }))),
        "{c:#?}"
    );
    let mut drift = c.machines[0].4.clone();
    drift.sort();
    assert_eq!(
        drift,
        ["etc/other content-changed", "etc/site.conf deleted"],
        "{c:#?}"
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/other")).unwrap(),
        "other example.org\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/site.conf")).unwrap(),
        "server example.org;\n"
    );
}
