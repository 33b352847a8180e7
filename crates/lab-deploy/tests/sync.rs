//! "Connect → facts → build → sync" as a library, on a real test host and
//! a machine that cannot be reached: each machine's result and the events
//! in their order, facts gathered over the connection when none are
//! cached, and a second run that finds the host up to date.

use lab_deploy::{Connector, Event, Events, MachineResult, SyncPlan};
use lab_engine::Engine;
use lab_sync::{Outcome, SyncError};
use lab_testkit::TestLab;
use std::sync::Mutex;

/// The events, as words (progress steps left out: they come from worker
/// threads in any order).
#[derive(Default)]
struct Log(Mutex<Vec<String>>);

impl Events for Log {
    fn event(&self, e: Event<'_>) {
        let line = match e {
            Event::BuildStarted => "build".to_string(),
            Event::BuildFailed { machine, .. } => format!("build-failed {machine}"),
            Event::Connected { machine, .. } => format!("connected {machine}"),
            Event::ConnectFailed { machine, .. } => format!("connect-failed {machine}"),
            Event::Synced {
                machine, report, ..
            } => format!("synced {machine} {:?}", report.outcome),
            Event::SyncFailed { machine, .. } => format!("sync-failed {machine}"),
            _ => return,
        };
        self.0.lock().unwrap().push(line);
    }
}

impl Log {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[test]
fn a_real_host_is_synced_and_an_unreachable_machine_reported() {
    let fleet = lab_testhosts::TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    // a loopback port nothing listens on
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let lab = TestLab::new();
    lab.file(
        "lab.toml",
        &format!(
            "[settings]\nknown_hosts = \"{kh}\"\n\n\
             [machines.h1]\nhost = \"{addr}\"\nport = {port}\nuser = \"{user}\"\nidentity = \"{id}\"\nlayers = [\"base\"]\n\n\
             [machines.gone]\nhost = \"127.0.0.1\"\nport = {closed}\nidentity = \"{id}\"\nlayers = [\"base\"]\n",
            kh = h.known_hosts.display(),
            addr = h.address,
            port = h.port,
            user = h.user,
            id = h.identity.display(),
        ),
    )
    .file(
        "layers/base/etc/lab-deploy-test.j2",
        "{{ machine }} has {{ nproc }} cpus\n",
    );
    let engine = Engine::open(lab.path()).unwrap();
    let connector = Connector::new(false).unwrap();
    let plan = SyncPlan {
        machines: Vec::new(),
        jobs: 4,
        rollback_on_failure: false,
    };
    let log = Log::default();
    let run = lab_deploy::sync(&engine, &connector, &plan, &log).unwrap();

    // no facts were cached: connect first (gathering them), then build
    // what is reachable, then sync it
    assert_eq!(
        log.take(),
        [
            "connected h1",
            "connect-failed gone",
            "build",
            "synced h1 Applied { gen: 1 }"
        ]
    );
    let names: Vec<&str> = run.machines.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["h1", "gone"], "in lab.toml's order");
    assert!(matches!(
        run.machines[1].result,
        MachineResult::Unreached(SyncError::Connect { .. })
    ));
    assert_eq!(run.failed(), ["gone"]);
    assert!(lab_deploy::facts_cached(engine.lab_dir(), "h1"));
    assert!(!lab_deploy::facts_cached(engine.lab_dir(), "gone"));
    let nproc = h.run("nproc").unwrap();
    assert_eq!(
        h.run("cat /etc/lab-deploy-test").unwrap().trim(),
        format!("h1 has {} cpus", nproc.trim())
    );

    // facts cached: the build runs while connecting; nothing to send
    let plan = SyncPlan {
        machines: vec!["h1".into()],
        ..plan
    };
    let run = lab_deploy::sync(&engine, &connector, &plan, &log).unwrap();
    let mut events = log.take();
    // (the build and the connection run at the same time)
    events[..2].sort();
    assert_eq!(
        events,
        ["build", "connected h1", "synced h1 Unchanged { gen: 1 }"]
    );
    assert!(run.failed().is_empty());
    assert!(matches!(
        &run.machines[0].result,
        MachineResult::Synced { report, .. } if report.outcome == Outcome::Unchanged { gen: 1 }
    ));
}
