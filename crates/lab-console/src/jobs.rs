//! Actions (sync, diff, rollback of one machine; create, start, stop,
//! destroy of a container machine and a key added to its
//! `authorized_keys`) run as jobs on their own threads, calling
//! lab-deploy, lab-sync and lab-machines directly. A job keeps the
//! lines of its progress, so that a page opened late sees them all and
//! its event stream (SSE) waits for the next ones.

use crate::fleet::Fleet;
use lab_deploy::{Connector, Event, Events, Step, SyncPlan};
use lab_sync::{MachineSync, Outcome};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Sync,
    Diff,
    Rollback,
    Create,
    Start,
    Stop,
    Destroy,
    Key,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sync => "sync",
            Kind::Diff => "diff",
            Kind::Rollback => "rollback",
            Kind::Create => "create",
            Kind::Start => "start",
            Kind::Stop => "stop",
            Kind::Destroy => "destroy",
            Kind::Key => "add key",
        }
    }
}

#[derive(Default)]
struct Log {
    lines: Vec<String>,
    /// `Some(ok)` once the job ended.
    done: Option<bool>,
}

pub struct Job {
    pub id: u64,
    pub ns: String,
    pub machine: String,
    pub kind: Kind,
    pub user: String,
    pub started: i64,
    /// The key a [`Kind::Key`] job adds.
    pub key: Option<lab_machines::PublicKey>,
    log: Mutex<Log>,
    changed: Condvar,
}

impl Job {
    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, line: impl Into<String>) {
        self.log().lines.push(line.into());
        self.changed.notify_all();
    }

    fn finish(&self, ok: bool) {
        self.log().done = Some(ok);
        self.changed.notify_all();
    }

    /// What the job did to the machine's generations, when it did (its
    /// `generation N applied ...` or `back on generation N` line).
    pub fn outcome(&self) -> Option<String> {
        self.log()
            .lines
            .iter()
            .find(|l| {
                (l.starts_with("generation ") && l.contains(" applied"))
                    || l.starts_with("back on generation ")
                    || l.starts_with("a unit failed: back on generation ")
            })
            .cloned()
    }

    /// The lines from `from` on and whether the job ended, waiting up to
    /// `wait` for something new when there is nothing yet.
    pub fn since(&self, from: usize, wait: Duration) -> (Vec<String>, Option<bool>) {
        let mut log = self.log();
        if log.lines.len() <= from && log.done.is_none() {
            log = self
                .changed
                .wait_timeout(log, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        (log.lines.get(from..).unwrap_or_default().to_vec(), log.done)
    }
}

pub struct Jobs {
    next: AtomicU64,
    all: Mutex<HashMap<u64, Arc<Job>>>,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs {
            next: AtomicU64::new(1),
            all: Mutex::new(HashMap::new()),
        }
    }
}

/// Jobs kept for their pages; the oldest go first.
const KEEP: usize = 500;

impl Jobs {
    pub fn get(&self, id: u64) -> Option<Arc<Job>> {
        self.all
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Start `kind` on `machine` of `ns` for `user` (`key`: what a
    /// [`Kind::Key`] adds); `done` runs on the job's thread at its end.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &self,
        fleet: Arc<Fleet>,
        ns: &str,
        machine: &str,
        kind: Kind,
        user: &str,
        key: Option<lab_machines::PublicKey>,
        done: impl FnOnce(&Job, bool) + Send + 'static,
    ) -> Arc<Job> {
        let job = Arc::new(Job {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            ns: ns.to_string(),
            machine: machine.to_string(),
            kind,
            user: user.to_string(),
            started: crate::store::now(),
            key,
            log: Mutex::default(),
            changed: Condvar::new(),
        });
        {
            let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
            if all.len() >= KEEP {
                if let Some(oldest) = all.keys().min().copied() {
                    all.remove(&oldest);
                }
            }
            all.insert(job.id, job.clone());
        }
        let j = job.clone();
        std::thread::spawn(move || {
            let ok = run(&fleet, &j);
            // (what the machine looks like now, for its page, and its host
            // after a container action; a container just destroyed is not
            // there to be looked at)
            let mut look = vec![j.machine.clone()];
            if matches!(
                j.kind,
                Kind::Create | Kind::Start | Kind::Stop | Kind::Destroy
            ) {
                look.extend(fleet.host_of(&j.machine));
            }
            if j.kind == Kind::Destroy && ok {
                fleet.forget(&j.machine);
                look.retain(|n| *n != j.machine);
            }
            fleet.refresh(&look);
            done(&j, ok);
            j.finish(ok);
        });
        job
    }
}

/// Turns deployment events into the job's lines.
struct JobEvents<'a>(&'a Job);

impl Events for JobEvents<'_> {
    fn event(&self, e: Event<'_>) {
        let j = self.0;
        match e {
            Event::Step { step, .. } => match step {
                Step::Connecting => j.push("connecting"),
                Step::GatheringFacts => j.push("gathering facts"),
                Step::Syncing => j.push("syncing"),
                Step::Done => {}
            },
            Event::BuildStarted => j.push("building"),
            Event::BuildFinished => j.push("built"),
            Event::BuildError(e) => j.push(format!("the build could not run: {e}")),
            Event::BuildFailed { errors, .. } => {
                for e in errors {
                    j.push(format!("build error: {e}"));
                }
            }
            Event::Connected { warnings, .. } => {
                j.push("connected");
                for w in warnings {
                    j.push(format!("warning: {w}"));
                }
            }
            Event::ConnectFailed { error, .. } => j.push(format!("cannot reach it: {error}")),
            Event::Synced { report, ms, .. } => {
                let what = match report.outcome {
                    Outcome::Unchanged { gen } => {
                        format!("already on this build (generation {gen})")
                    }
                    Outcome::Applied { gen } => format!("generation {gen} applied"),
                    Outcome::RolledBack { gen } => {
                        format!("a unit failed: back on generation {gen}")
                    }
                };
                j.push(format!(
                    "{what} in {ms} ms: {} written, {} removed",
                    report.written, report.removed
                ));
                for d in &report.drift {
                    j.push(format!("repaired /{}: {}", d.path, d.kind.as_str()));
                }
                for u in &report.apply.units {
                    j.push(format!("{} {}: {}", u.action, u.unit, u.result));
                }
                for u in &report.failed_units {
                    j.push(format!("failed unit: {u}"));
                }
            }
            Event::SyncFailed { error, .. } => j.push(format!("the sync failed: {error}")),
            _ => {}
        }
    }

    fn reporter(&self) -> &dyn lab_engine::Reporter {
        self
    }
}

/// The build's warnings go to the job's lines too (the one that says the
/// build waits for another lab, a `lab watch` say, among them).
impl lab_engine::Reporter for JobEvents<'_> {
    fn warning(&self, machine: Option<&str>, message: &str) {
        match machine {
            Some(m) => self.0.push(format!("warning: {m}: {message}")),
            None => self.0.push(format!("warning: {message}")),
        }
    }
}

/// Connect to the job's machine, saying so in its log: the transport and
/// the machine as lab-sync sees it (`None`: not in lab.toml, or not
/// reached, which the log says).
fn connect(
    engine: &lab_engine::Engine,
    connector: &Connector,
    j: &Job,
) -> Option<(Box<dyn lab_sync::Transport>, lab_sync::Target)> {
    let m = engine.project.machine(&j.machine)?;
    j.push("connecting");
    let t = match connector.connect(&engine.project, m) {
        Ok(t) => t,
        Err(e) => {
            j.push(format!("cannot reach it: {e}"));
            return None;
        }
    };
    Some((t, lab_deploy::target(&engine.project, m, engine.lab_dir())))
}

fn run(fleet: &Fleet, j: &Job) -> bool {
    let engine = match fleet.engine() {
        Ok(e) => e,
        Err(e) => {
            j.push(format!("the project cannot be read: {e}"));
            return false;
        }
    };
    let events = JobEvents(j);
    let connector = match Connector::new(false) {
        Ok(c) => c,
        Err(e) => {
            j.push(e.to_string());
            return false;
        }
    };
    if matches!(
        j.kind,
        Kind::Create | Kind::Start | Kind::Stop | Kind::Destroy | Kind::Key
    ) {
        return container(&engine, &connector, j);
    }
    let _g = fleet.build_guard();
    match j.kind {
        Kind::Sync => {
            let plan = SyncPlan {
                machines: vec![j.machine.clone()],
                jobs: 1,
                rollback_on_failure: false,
            };
            match lab_deploy::sync(&engine, &connector, &plan, &events) {
                Ok(run) => run.failed().is_empty(),
                Err(e) => {
                    j.push(e.to_string());
                    false
                }
            }
        }
        Kind::Diff => {
            let names = vec![j.machine.clone()];
            match lab_deploy::build(&engine, &names, true, &events) {
                Ok(failed) if failed.is_empty() => {}
                Ok(_) => return false,
                Err(_) => return false,
            }
            let Some((mut t, target)) = connect(&engine, &connector, j) else {
                return false;
            };
            let changes = MachineSync {
                target: &target,
                transport: t.as_mut(),
            }
            .diff();
            match changes {
                Ok(changes) => {
                    if changes.is_empty() {
                        j.push("nothing to change");
                    }
                    for c in &changes {
                        for l in lab_sync::diff::render(c) {
                            j.push(match l {
                                lab_sync::diff::DiffLine::Header(h) => h,
                                lab_sync::diff::DiffLine::Removed(s) => format!("-{s}"),
                                lab_sync::diff::DiffLine::Added(s) => format!("+{s}"),
                                lab_sync::diff::DiffLine::Context(s) => format!(" {s}"),
                            });
                        }
                    }
                    true
                }
                Err(e) => {
                    j.push(format!("the diff failed: {e}"));
                    false
                }
            }
        }
        Kind::Rollback => {
            let Some((mut t, target)) = connect(&engine, &connector, j) else {
                return false;
            };
            j.push("rolling back");
            let r = MachineSync {
                target: &target,
                transport: t.as_mut(),
            }
            .rollback_to(None, None);
            match r {
                Ok(report) => {
                    let gen = report.now.map(|(g, _)| g).unwrap_or(0);
                    j.push(format!("back on generation {gen}"));
                    for u in &report.units {
                        j.push(format!("{} {}: {}", u.action, u.unit, u.result));
                    }
                    report.failed_units().next().is_none()
                }
                Err(e) => {
                    j.push(format!("the rollback failed: {e}"));
                    false
                }
            }
        }
        _ => unreachable!("container actions returned above"),
    }
}

/// A container machine's action: on its host (create, start, stop,
/// destroy), or inside it (a key added to its login's authorized_keys).
fn container(engine: &lab_engine::Engine, connector: &Connector, j: &Job) -> bool {
    let p = &engine.project;
    let Some(m) = p.machine(&j.machine) else {
        return false;
    };
    let Some(c) = &m.container else {
        j.push(format!(
            "`{}` is not a container machine (no `on = \"HOST\"` in lab.toml)",
            m.name
        ));
        return false;
    };
    let Some(host) = p.machine(&c.on) else {
        return false;
    };
    if j.kind == Kind::Key {
        let Some(key) = &j.key else { return false };
        let Some((mut t, _)) = connect(engine, connector, j) else {
            return false;
        };
        let login = lab_deploy::hop(p, m, c).user;
        return match lab_machines::authorize(t.as_mut(), &m.name, &login, key) {
            Ok(added) => {
                let comment = if key.comment.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", key.comment)
                };
                j.push(format!(
                    "the {} key{comment} {} {login}'s authorized_keys",
                    key.kind,
                    if added {
                        "was added to"
                    } else {
                        "is already in"
                    }
                ));
                true
            }
            Err(e) => {
                j.push(e.to_string());
                false
            }
        };
    }
    j.push(format!("connecting to its host {}", host.name));
    let mut t = match connector.connect(p, host) {
        Ok(t) => t,
        Err(e) => {
            j.push(format!("cannot reach {}: {e}", host.name));
            return false;
        }
    };
    let t = t.as_mut();
    let known_hosts = lab_core::LabDir::at(engine.lab_dir()).machines_known_hosts();
    let r = match j.kind {
        Kind::Create => {
            let range = host.machines_range.expect("a host has a range");
            lab_machines::list(t, &host.name).and_then(|there| {
                let listed = there.iter().any(|l| l.name == m.name);
                j.push(format!(
                    "creating {} on {} (and booting it)",
                    m.name, host.name
                ));
                lab_machines::ensure(
                    t,
                    &host.name,
                    &m.name,
                    c,
                    &range,
                    false,
                    listed,
                    &known_hosts,
                )
                .map(|made| {
                    if made {
                        format!("created {} on {}", m.name, host.name)
                    } else {
                        format!("{} exists on {}", m.name, host.name)
                    }
                })
            })
        }
        Kind::Start => {
            j.push(format!("starting {} (and booting it)", m.name));
            lab_machines::start(t, &host.name, &m.name).map(|s| format!("its unit is {s}"))
        }
        Kind::Stop => {
            j.push(format!("stopping {}", m.name));
            lab_machines::stop(t, &host.name, &m.name).map(|s| format!("its unit is {s}"))
        }
        _ => {
            j.push(format!("destroying {} and its data", m.name));
            lab_machines::destroy(t, &host.name, &m.name)
                .and_then(|()| lab_machines::unpin(&known_hosts, &m.name))
                .map(|()| format!("destroyed {} on {}", m.name, host.name))
        }
    };
    match r {
        Ok(said) => {
            j.push(said);
            true
        }
        Err(e) => {
            j.push(e.to_string());
            false
        }
    }
}
