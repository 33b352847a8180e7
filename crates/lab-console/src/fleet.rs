//! The last known state of every machine, refreshed in the background so
//! that no page waits on a slow or dead machine: pages read this cache
//! and show each state's age. A refresh connects to every machine with a
//! short timeout (facts gathered when none are cached), builds what it
//! reached, then checks each one (lab-deploy's `machine_state`) and reads
//! the journal tail of its failed units.

use lab_deploy::{Connector, Quiet};
use lab_engine::Engine;
use lab_sync::Transport;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Journal lines kept per failed unit.
pub const JOURNAL_LINES: usize = 20;

/// What the last look at a machine found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Known {
    /// When (seconds since the epoch).
    pub at: i64,
    pub reachable: bool,
    /// Why it could not be reached, built or checked.
    pub error: Option<String>,
    pub in_sync: bool,
    pub generation: u64,
    pub applied_at: Option<u64>,
    pub interrupted: bool,
    /// Paths a sync would change (source changed), as `/path`.
    pub changes: Vec<String>,
    /// `/path: what drifted`
    pub drift: Vec<String>,
    pub pending: Vec<String>,
    pub failed_units: Vec<String>,
    /// The journal tail of each failed unit.
    pub journal: Vec<(String, Vec<String>)>,
    /// The pods of its build and what runs of them.
    pub pods: Vec<Pod>,
    /// The generations it keeps, newest first.
    pub generations: Vec<Generation>,
    /// The container machines on it (when lab.toml puts some there), as
    /// it lists them.
    pub containers: Vec<ContainerState>,
    /// Why its container machines could not be listed.
    pub containers_error: Option<String>,
}

/// A generation a machine keeps.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Generation {
    pub gen: u64,
    /// When it was committed (seconds since the epoch).
    pub at: i64,
    pub digest: String,
}

/// A container machine as its host lists it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ContainerState {
    pub name: String,
    /// Its unit's state (`active`, `inactive`, `failed`...).
    pub unit: String,
    /// Its own systemd's state, `-` when its unit is not active.
    pub system: String,
    pub address: String,
    pub image: String,
}

/// A pod of a machine's build, as `lab ps` sees it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Pod {
    pub name: String,
    /// `running`, `failed`, `stopped`, ...
    pub state: String,
    pub failed: bool,
    pub restarts: u64,
    pub ports: Vec<String>,
    pub memory_bytes: u64,
    /// The journal tail when it is not running.
    pub journal: Vec<String>,
    pub error: Option<String>,
}

/// What lab.toml says of a container machine.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ContainerOf {
    /// Its host.
    pub on: String,
    pub address: String,
    pub image: String,
}

/// A machine of lab.toml as the console shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MachineView {
    pub name: String,
    pub tags: Vec<String>,
    /// When it is a container machine.
    pub container: Option<ContainerOf>,
    /// The container machines lab.toml puts on it.
    pub containers: Vec<String>,
    pub state: Option<Known>,
}

/// A machine as lab.toml declares it (what the pages need of it).
#[derive(Clone, Debug)]
struct Declared {
    name: String,
    tags: Vec<String>,
    container: Option<ContainerOf>,
}

#[derive(Default)]
struct Inner {
    /// In lab.toml's order.
    machines: Vec<Declared>,
    /// lab.toml could not be read at the last refresh.
    project_error: Option<String>,
    states: HashMap<String, Known>,
    /// The last full refresh: when, and how long it took (ms).
    last: Option<(i64, u128)>,
}

pub struct Fleet {
    root: PathBuf,
    connect_timeout: Duration,
    inner: Mutex<Inner>,
    /// Held by whatever builds (a refresh, an action): one at a time.
    pub build_lock: Mutex<()>,
}

/// A build of every machine peaks far above what the console keeps
/// between looks (150 MB for 200 machines); glibc keeps the freed heap
/// unless asked to give it back.
fn give_back_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Fleet {
    pub fn new(root: PathBuf, connect_timeout: Duration) -> Fleet {
        Fleet {
            root,
            connect_timeout,
            inner: Mutex::new(Inner::default()),
            build_lock: Mutex::new(()),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn build_guard(&self) -> MutexGuard<'_, ()> {
        self.build_lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The machines tagged `ns`, with what is known of them.
    pub fn namespace(&self, ns: &str) -> Vec<MachineView> {
        let inner = self.inner();
        inner
            .machines
            .iter()
            .filter(|d| d.tags.iter().any(|t| t == ns))
            .map(|d| MachineView {
                name: d.name.clone(),
                tags: d.tags.clone(),
                container: d.container.clone(),
                containers: inner
                    .machines
                    .iter()
                    .filter(|c| c.container.as_ref().is_some_and(|c| c.on == d.name))
                    .map(|c| c.name.clone())
                    .collect(),
                state: inner.states.get(&d.name).cloned(),
            })
            .collect()
    }

    pub fn machine(&self, ns: &str, name: &str) -> Option<MachineView> {
        self.namespace(ns).into_iter().find(|m| m.name == name)
    }

    pub fn project_error(&self) -> Option<String> {
        self.inner().project_error.clone()
    }

    /// The last full refresh: when, and how long it took (ms).
    pub fn last_refresh(&self) -> Option<(i64, u128)> {
        self.inner().last
    }

    /// Open the project, or note why it cannot be opened.
    pub fn engine(&self) -> Result<Engine, String> {
        let r = Engine::open(&self.root).map_err(|e| e.to_string());
        let mut inner = self.inner();
        match &r {
            Ok(engine) => {
                inner.project_error = None;
                inner.machines = engine
                    .project
                    .machines
                    .iter()
                    .map(|m| Declared {
                        name: m.name.clone(),
                        tags: engine
                            .project
                            .tags
                            .get(&m.name)
                            .cloned()
                            .unwrap_or_default(),
                        container: m.container.as_ref().map(|c| ContainerOf {
                            on: c.on.clone(),
                            address: c.address.to_string(),
                            image: c.image.clone(),
                        }),
                    })
                    .collect();
            }
            Err(e) => inner.project_error = Some(e.clone()),
        }
        r
    }

    /// The host of container machine `name` (None: not a container).
    pub fn host_of(&self, name: &str) -> Option<String> {
        let inner = self.inner();
        let d = inner.machines.iter().find(|d| d.name == name)?;
        d.container.as_ref().map(|c| c.on.clone())
    }

    /// Forget what was known of `name` (a container machine destroyed):
    /// its page says it was not looked at until the next look.
    pub fn forget(&self, name: &str) {
        self.inner().states.remove(name);
    }

    /// Look at `names` (all when empty) again. Returns when done; pages
    /// meanwhile show the previous states (and each batch's new ones as
    /// it ends).
    pub fn refresh(&self, names: &[String]) {
        let began = Instant::now();
        let Ok(engine) = self.engine() else {
            return;
        };
        let machines: Vec<&lab_config::Machine> = engine
            .project
            .machines
            .iter()
            .filter(|m| names.is_empty() || names.contains(&m.name))
            .collect();
        self.look(&engine, &machines);
        if names.is_empty() {
            self.inner().last = Some((crate::store::now(), began.elapsed().as_millis()));
        }
        drop(engine);
        give_back_memory();
    }

    fn keep(&self, found: Vec<(String, Known)>) {
        let mut inner = self.inner();
        for (name, k) in found {
            inner.states.insert(name, k);
        }
    }

    /// Connect to `machines` (all at once: a connection is small, and the
    /// slow ones wait side by side), then build and check them
    /// [`BATCH`] at a time, their connections closed batch by batch.
    fn look(&self, engine: &Engine, machines: &[&lab_config::Machine]) {
        let at = crate::store::now();
        let failed = |name: &str, reachable: bool, e: String| {
            (
                name.to_string(),
                Known {
                    at,
                    reachable,
                    error: Some(e),
                    ..Default::default()
                },
            )
        };
        let connector = match Connector::new(false) {
            Ok(c) => c.with_timeouts(self.connect_timeout, self.connect_timeout * 6),
            Err(e) => {
                return self.keep(
                    machines
                        .iter()
                        .map(|m| failed(&m.name, false, e.to_string()))
                        .collect(),
                )
            }
        };
        let lab_dir = engine.lab_dir();
        let connected = lab_deploy::parallel(machines.to_vec(), 16, |m| {
            let gather = !lab_deploy::facts_cached(lab_dir, &m.name);
            (
                m,
                connector.open(&engine.project, lab_dir, m, gather, &Quiet),
            )
        });
        let mut unreachable = Vec::new();
        let mut open = Vec::new();
        for (m, r) in connected {
            match r {
                Ok(t) => open.push((m, t)),
                Err(e) => unreachable.push(failed(&m.name, false, e.to_string())),
            }
        }
        self.keep(unreachable);
        while !open.is_empty() {
            let rest = open.split_off(open.len().min(BATCH));
            let mut batch = std::mem::replace(&mut open, rest);
            let mut out = Vec::new();
            let names: Vec<String> = batch.iter().map(|(m, _)| m.name.clone()).collect();
            let built = {
                let _g = self.build_guard();
                let opts = lab_engine::BuildOptions {
                    machines: names,
                    trust_outputs: true,
                    no_wait: true,
                    ..Default::default()
                };
                lab_deploy::build_with(engine, &opts, &Quiet)
            };
            match built {
                // (another lab holds the lock: a running `lab watch`, which
                // keeps the outputs current; they are checked as they are)
                Err(lab_engine::EngineError::Locked { .. }) => {}
                Ok(bad) => batch.retain(|(m, _)| {
                    if bad.contains(&m.name) {
                        out.push(failed(&m.name, true, "its build failed".into()));
                        false
                    } else {
                        true
                    }
                }),
                Err(e) => {
                    for (m, _) in batch.drain(..) {
                        out.push(failed(&m.name, true, e.to_string()));
                    }
                }
            }
            let prev: HashMap<String, Known> = {
                let inner = self.inner();
                batch
                    .iter()
                    .filter_map(|(m, _)| Some((m.name.clone(), inner.states.get(&m.name)?.clone())))
                    .collect()
            };
            let checked = lab_deploy::parallel(batch, 16, |(m, mut t)| {
                let r = check(engine, m, at, prev.get(&m.name), t.as_mut());
                (m.name.clone(), r)
            });
            for (name, r) in checked {
                match r {
                    Ok(k) => out.push((name, k)),
                    Err(e) => out.push(failed(&name, true, e)),
                }
            }
            self.keep(out);
        }
    }
}

/// Machines built and checked together in a refresh: a build's memory
/// grows with the machines in it (a no-op build of 200 at once peaks at
/// 150 MB), a batch's is given back before the next.
pub const BATCH: usize = 20;

/// Check machine `m` (built) over `t`: its state, pods, generations and,
/// on a host of container machines, those (`prev`: the last look's).
fn check(
    engine: &Engine,
    m: &lab_config::Machine,
    at: i64,
    prev: Option<&Known>,
    t: &mut dyn Transport,
) -> Result<Known, String> {
    let st = lab_deploy::machine_state(engine, m, t).map_err(|e| e.to_string())?;
    let pods = lab_deploy::desired_pods(engine, m).unwrap_or_default();
    let mut k = known(at, &st, &pods, t);
    let root = match &m.transport {
        lab_config::Transport::Local { root } => root.display().to_string(),
        lab_config::Transport::Ssh => String::new(),
    };
    // (the list changes only with the applied generation: listed again
    // then, kept from the last look otherwise)
    k.generations = match prev {
        Some(p)
            if p.reachable
                && p.error.is_none()
                && p.generation == k.generation
                && p.applied_at == k.applied_at =>
        {
            p.generations.clone()
        }
        _ => generations(t, &root),
    };
    let host = engine
        .project
        .machines
        .iter()
        .any(|c| c.container.as_ref().is_some_and(|c| c.on == m.name));
    if host {
        match lab_machines::list(t, &m.name) {
            Ok(l) => k.containers = l.into_iter().map(container_state).collect(),
            Err(e) => k.containers_error = Some(e.to_string()),
        }
    }
    Ok(k)
}

fn container_state(l: lab_machines::Listed) -> ContainerState {
    ContainerState {
        name: l.name,
        unit: l.unit,
        system: l.system,
        address: l.address,
        image: l.image,
    }
}

/// The generations the machine `t` reaches keeps (none when they cannot
/// be read: the page then shows none).
fn generations(t: &mut dyn Transport, root: &str) -> Vec<Generation> {
    match t.run(&lab_agent::generations_command(root), &mut |_| Ok(())) {
        Ok(o) => lab_agent::parse_generations(&o.stdout_text())
            .into_iter()
            .map(|g| Generation {
                gen: g.gen,
                at: g.at as i64,
                digest: g.digest,
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn known(
    at: i64,
    st: &lab_deploy::MachineState,
    desired: &[lab_sync::pods::DesiredPod],
    t: &mut dyn Transport,
) -> Known {
    let pods = if desired.is_empty() {
        Vec::new()
    } else {
        match lab_sync::pods::ps(t, desired, JOURNAL_LINES) {
            Ok((pods, _)) => pods
                .iter()
                .map(|p| Pod {
                    name: p.name.clone(),
                    state: p.state().to_string(),
                    failed: p.failed(),
                    restarts: p.restarts(),
                    ports: p.ports.clone(),
                    memory_bytes: p.memory_bytes(),
                    journal: p.journal.clone(),
                    error: p.error.clone(),
                })
                .collect(),
            Err(e) => vec![Pod {
                name: "(pods)".into(),
                state: "unknown".into(),
                failed: true,
                error: Some(e.to_string()),
                ..Default::default()
            }],
        }
    };
    let journal = st
        .failed_units
        .iter()
        .map(|u| {
            let cmd = format!(
                "journalctl -u {} -n {JOURNAL_LINES} --no-pager -o short-iso 2>&1",
                lab_agent::quote(u)
            );
            let lines = match t.run(&cmd, &mut |_| Ok(())) {
                Ok(o) => o.stdout_text().lines().map(str::to_string).collect(),
                Err(e) => vec![format!("(the journal could not be read: {e})")],
            };
            (u.clone(), lines)
        })
        .collect();
    Known {
        at,
        reachable: true,
        error: None,
        in_sync: st.in_sync(),
        generation: st.probe.gen,
        applied_at: st.probe.applied_at,
        interrupted: st.probe.interrupted,
        changes: st.changes.iter().map(|p| format!("/{p}")).collect(),
        drift: st
            .drift
            .iter()
            .map(|d| format!("/{}: {}", d.path, d.kind.as_str()))
            .collect(),
        pending: st
            .probe
            .check
            .pending
            .iter()
            .map(|a| format!("{} {}", a.op.as_str(), a.unit))
            .collect(),
        failed_units: st.failed_units.clone(),
        journal,
        pods,
        ..Default::default()
    }
}
