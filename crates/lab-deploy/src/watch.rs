//! `lab watch` as a library: a saved file becomes a changed machine.
//!
//! One loop: wait for a batch of file system events (lab-watch), rebuild
//! what they affect in the in-memory session (lab-engine), sync the
//! machines whose manifest changed over connections kept open between
//! cycles (lab-sync), report one [`Cycle`] per batch. A broken template or
//! lab.toml is reported and watching goes on; a machine that cannot be
//! reached is retried with backoff while the others go on. Stopped
//! through its [`Stopper`], it saves the session's state first.

use crate::event::{Built, Cycle, CycleTimes, Event, Events, MachineCycle};
use crate::pool::{facts_cached, parallel, Connector};
use crate::DeployError;
use lab_config::Machine;
use lab_engine::{BuildReport, Engine, Reporter, Session};
use lab_graph::{Key, Reason};
use lab_sync::{MachineSync, SyncError, SyncOptions, SyncReport, Transport};
pub use lab_watch::Stopper;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When a machine whose sync failed is tried again: `first` after the
/// first failure, doubling with each further one, never more than `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub first: Duration,
    pub max: Duration,
}

impl Default for BackoffPolicy {
    /// 1 s, 2 s, 4 s, 8 s, then 16 s.
    fn default() -> BackoffPolicy {
        BackoffPolicy {
            first: Duration::from_secs(1),
            max: Duration::from_secs(16),
        }
    }
}

impl BackoffPolicy {
    /// The wait after `failures` failures in a row (at least one).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.max(1) - 1;
        // past 2^16 the cap has long been reached
        let factor = 1u32 << doublings.min(16);
        self.first.saturating_mul(factor).min(self.max)
    }
}

/// Whether, and when, a machine is to be synced: the watch's schedule
/// for one machine. Times come from the caller, so the schedule can be
/// followed without waiting for it.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// A sync is wanted (the last one failed, or never ran, or the build
    /// changed): it runs once `due` has come.
    pub pending: bool,
    /// Failed syncs in a row.
    pub failures: u32,
    pub due: Instant,
}

impl Schedule {
    pub fn new(now: Instant) -> Schedule {
        Schedule {
            pending: true,
            failures: 0,
            due: now,
        }
    }

    pub fn is_due(&self, now: Instant) -> bool {
        self.pending && self.due <= now
    }

    /// A sync failed: try again after the policy's wait, which is returned.
    pub fn failed(&mut self, policy: &BackoffPolicy, now: Instant) -> Duration {
        self.pending = true;
        self.failures += 1;
        let wait = policy.delay(self.failures);
        self.due = now + wait;
        wait
    }

    pub fn synced(&mut self) {
        self.pending = false;
        self.failures = 0;
    }

    /// The build changed what the machine should have: sync it, at once
    /// when it is connected (else when its retry comes).
    pub fn changed(&mut self, connected: bool, now: Instant) {
        self.pending = true;
        if connected {
            self.due = now;
        }
    }
}

/// A machine's connection, kept between cycles, and its schedule.
struct Link {
    transport: Option<Box<dyn Transport>>,
    schedule: Schedule,
}

impl Link {
    fn failed(&mut self, policy: &BackoffPolicy) -> Duration {
        self.transport = None;
        self.schedule.failed(policy, Instant::now())
    }
}

#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// Machines (or tags) to watch; empty: all.
    pub machines: Vec<String>,
    /// Only build.
    pub no_sync: bool,
    pub accept_new: bool,
    /// A machine that does not answer within these is retried later, so it
    /// holds up the others' cycle only this long.
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
    pub backoff: BackoffPolicy,
    /// After this long without events the session's state is saved.
    pub idle: Duration,
    /// Machines synced at a time.
    pub jobs: usize,
    /// Also sync (which checks for drift and repairs it) the connected
    /// machines this often when nothing else did; `None`: the project's
    /// `watch_check_s` (0 there: never, so an idle session sends nothing).
    pub check_every: Option<Duration>,
}

impl Default for WatchOptions {
    fn default() -> WatchOptions {
        WatchOptions {
            machines: Vec::new(),
            no_sync: false,
            accept_new: false,
            connect_timeout: Duration::from_secs(3),
            io_timeout: Duration::from_secs(10),
            backoff: BackoffPolicy::default(),
            idle: Duration::from_secs(2),
            jobs: 8,
            check_every: None,
        }
    }
}

/// Records what re-rendered, per machine, and the warnings.
#[derive(Default)]
struct CycleLog {
    rendered: Mutex<BTreeMap<String, Vec<String>>>,
    warnings: Mutex<Vec<String>>,
}

impl Reporter for CycleLog {
    fn node_ran(&self, machine: &str, key: &Key, _reason: &Reason) {
        if let Key::Render(p) = key {
            self.rendered
                .lock()
                .unwrap()
                .entry(machine.to_string())
                .or_default()
                .push(format!("/{p}"));
        }
    }

    fn warning(&self, machine: Option<&str>, message: &str) {
        self.warnings.lock().unwrap().push(match machine {
            Some(m) => format!("{m}: {message}"),
            None => message.to_string(),
        });
    }
}

/// A watch session, ready to run.
pub struct Watch {
    engine: Engine,
    watcher: lab_watch::ProjectWatcher,
    selected: Vec<Machine>,
    connector: Connector,
    opts: WatchOptions,
}

impl Watch {
    /// Start watching `engine`'s project (before the first build, so no
    /// edit falls between the two).
    pub fn new(engine: Engine, opts: WatchOptions) -> Result<Watch, DeployError> {
        let watcher = lab_watch::ProjectWatcher::new(&engine.project.root, &["layers", "machines"])
            .map_err(DeployError::Watch)?;
        let selected: Vec<Machine> = engine
            .select(&opts.machines)
            .map_err(DeployError::Select)?
            .into_iter()
            .cloned()
            .collect();
        let mut opts = opts;
        let every = engine.project.settings.watch_check_s;
        opts.check_every = opts
            .check_every
            .or((every > 0).then(|| Duration::from_secs(every)));
        let connector = Connector::new(opts.accept_new)
            .map_err(DeployError::Sync)?
            .with_timeouts(opts.connect_timeout, opts.io_timeout);
        Ok(Watch {
            engine,
            watcher,
            selected,
            connector,
            opts,
        })
    }

    /// The machines it watches, in lab.toml's order.
    pub fn machines(&self) -> Vec<String> {
        self.selected.iter().map(|m| m.name.clone()).collect()
    }

    /// Ends [`Watch::run`] after the cycle under way, with state saved.
    pub fn stopper(&self) -> Stopper {
        self.watcher.stopper()
    }

    /// Watch until stopped. Errors: the first build could not run, or the
    /// state could not be saved on the way out.
    pub fn run(self, events: &dyn Events) -> Result<(), DeployError> {
        let Watch {
            engine,
            watcher,
            selected,
            connector,
            opts,
        } = self;
        let mut links: BTreeMap<String, Link> = selected
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    Link {
                        transport: None,
                        schedule: Schedule::new(Instant::now()),
                    },
                )
            })
            .collect();

        // Connect first: a machine without cached facts gets them gathered
        // over its connection before anything is built.
        if !opts.no_sync {
            let lab_dir = engine.lab_dir();
            let conns = parallel(selected.clone(), opts.jobs, |m| {
                let gather = !facts_cached(lab_dir, &m.name);
                let r = connector.open(&engine.project, lab_dir, &m, gather, events);
                (m.name.clone(), r)
            });
            for (name, r) in conns {
                let link = links.get_mut(&name).expect("a link per machine");
                match r {
                    Ok(t) => link.transport = Some(t),
                    Err(e) => {
                        events.event(Event::ConnectFailed {
                            machine: &name,
                            error: &e,
                        });
                        link.failed(&opts.backoff);
                    }
                }
            }
        }

        let log = CycleLog::default();
        let started = Instant::now();
        // The first build scans everything: what the events so far were
        // about is in it (and they would crowd the kernel's event queue).
        watcher.discard_pending();
        let (mut session, first) =
            Session::start(engine, &opts.machines, &log).map_err(DeployError::Build)?;
        let mut w = Cycler {
            opts: &opts,
            connector: &connector,
            links: &mut links,
            log: &log,
            events,
        };
        let build_ms = started.elapsed().as_millis();
        w.cycle(&mut session, 0, Vec::new(), first, started, build_ms, 0);

        let mut cycle_no = 0u64;
        // When the machines are next checked for drift.
        let every = opts.check_every.filter(|_| !opts.no_sync);
        let mut next_check = every.map(|d| Instant::now() + d);
        // What changed while the first build ran.
        let mut carried = watcher.pending();
        loop {
            // Wake up for a retry or a check that is due, or to save state
            // once idle.
            let now = Instant::now();
            if let (Some(d), Some(at)) = (every, next_check) {
                if now >= at {
                    // a sync checks every managed path and repairs drift;
                    // a machine that is not connected waits for its retry
                    for l in w.links.values_mut() {
                        l.schedule.changed(l.transport.is_some(), now);
                    }
                    next_check = Some(now + d);
                }
            }
            let timeout = w
                .links
                .values()
                .filter(|l| l.schedule.pending && !opts.no_sync)
                .map(|l| l.schedule.due)
                .chain(next_check)
                .map(|due| due.saturating_duration_since(now))
                .fold(opts.idle, Duration::min);
            let Some(batch) = carried.take().or_else(|| watcher.next_batch(Some(timeout))) else {
                let _ = session.persist();
                if !opts.no_sync && w.links.values().any(|l| l.schedule.is_due(Instant::now())) {
                    cycle_no += 1;
                    w.cycle(
                        &mut session,
                        cycle_no,
                        Vec::new(),
                        BuildReport::default(),
                        Instant::now(),
                        0,
                        0,
                    );
                }
                continue;
            };
            if batch.stop {
                return session.persist().map_err(DeployError::Persist);
            }
            cycle_no += 1;
            let debounce = batch.first_event.elapsed().as_millis();
            let t = Instant::now();
            let result = if batch.overflow {
                // events were lost: look at everything (one lstat per entry)
                log.warnings.lock().unwrap().push(
                    "file system events were lost (the kernel's inotify queue overflowed, \
                     see fs.inotify.max_queued_events): every source was looked at again"
                        .to_string(),
                );
                session.rescan(&log)
            } else {
                session.cycle(&batch.paths, &log)
            };
            match result {
                Ok(c) => {
                    let ms = t.elapsed().as_millis();
                    if c.changed.is_empty() && c.build.machines.is_empty() {
                        continue;
                    }
                    w.cycle(
                        &mut session,
                        cycle_no,
                        c.changed,
                        c.build,
                        batch.first_event,
                        ms,
                        debounce,
                    );
                }
                // a broken lab.toml: say so, keep the last good state, watch on
                Err(e) => events.event(Event::CycleError(&e)),
            }
        }
    }
}

/// What a cycle needs besides the session.
struct Cycler<'a> {
    opts: &'a WatchOptions,
    connector: &'a Connector,
    links: &'a mut BTreeMap<String, Link>,
    log: &'a CycleLog,
    events: &'a dyn Events,
}

impl Cycler<'_> {
    /// Take in a build, sync the machines whose time has come, report.
    #[allow(clippy::too_many_arguments)]
    fn cycle(
        &mut self,
        session: &mut Session,
        number: u64,
        changed: Vec<String>,
        build: BuildReport,
        since: Instant,
        build_ms: u128,
        debounce_ms: u128,
    ) {
        let mut rendered = std::mem::take(&mut *self.log.rendered.lock().unwrap());
        let warnings = std::mem::take(&mut *self.log.warnings.lock().unwrap());
        let mut machines: Vec<MachineCycle> = Vec::new();
        for m in build.machines {
            let result = match m.result {
                Ok(r) => {
                    if r.manifest_changed || r.up_to_date {
                        if let Some(l) = self.links.get_mut(&m.name) {
                            l.schedule.changed(l.transport.is_some(), Instant::now());
                        }
                    }
                    let slash = |v: Vec<String>| v.into_iter().map(|p| format!("/{p}")).collect();
                    Ok(Built {
                        written: slash(r.written),
                        removed: slash(r.removed),
                    })
                }
                Err(errors) => {
                    self.events.event(Event::BuildFailed {
                        machine: &m.name,
                        errors: &errors,
                    });
                    Err(errors)
                }
            };
            machines.push(MachineCycle {
                rendered: rendered.remove(&m.name).unwrap_or_default(),
                name: m.name,
                build: Some(result),
                sync: None,
                retry_in: None,
            });
        }

        // Sync the machines that wait for it and whose time has come.
        let t = Instant::now();
        if !self.opts.no_sync {
            let now = Instant::now();
            let due: Vec<String> = self
                .links
                .iter()
                .filter(|(n, l)| {
                    l.schedule.is_due(now)
                        && !machines
                            .iter()
                            .any(|m| &m.name == *n && matches!(m.build, Some(Err(_))))
                })
                .map(|(n, _)| n.clone())
                .collect();
            let due: Vec<(String, Link)> = due
                .into_iter()
                .map(|n| {
                    let l = self.links.remove(&n).expect("a due link");
                    (n, l)
                })
                .collect();
            let engine = session.engine();
            let connector = self.connector;
            let results = parallel(due, self.opts.jobs, |(name, mut link)| {
                let Some(m) = engine.project.machine(&name).cloned() else {
                    return (name, link, None);
                };
                let r = sync_link(engine, connector, &m, &mut link);
                (name, link, Some(r))
            });
            for (name, mut link, r) in results {
                if let Some(r) = r {
                    let retry_in = match &r {
                        Ok(_) => {
                            link.schedule.synced();
                            None
                        }
                        Err(_) => Some(link.failed(&self.opts.backoff)),
                    };
                    let i = match machines.iter().position(|m| m.name == name) {
                        Some(i) => i,
                        None => {
                            machines.push(MachineCycle {
                                name: name.clone(),
                                rendered: Vec::new(),
                                build: None,
                                sync: None,
                                retry_in: None,
                            });
                            machines.len() - 1
                        }
                    };
                    machines[i].sync = Some(r);
                    machines[i].retry_in = retry_in;
                }
                self.links.insert(name, link);
            }
        }
        let sync_ms = t.elapsed().as_millis();
        let cycle = Cycle {
            number,
            changed,
            machines,
            warnings,
            times: CycleTimes {
                debounce_ms,
                build_ms,
                sync_ms,
                total_ms: since.elapsed().as_millis(),
            },
        };
        self.events.event(Event::Cycle(&cycle));
    }
}

/// Sync one machine over its kept connection, connecting first when it
/// has none.
fn sync_link(
    engine: &Engine,
    connector: &Connector,
    m: &Machine,
    link: &mut Link,
) -> Result<SyncReport, SyncError> {
    let target = crate::machine::target(&engine.project, m, engine.lab_dir());
    let transport = match &mut link.transport {
        Some(t) => t,
        None => link
            .transport
            .insert(connector.connect(&engine.project, m)?),
    };
    MachineSync {
        target: &target,
        transport: transport.as_mut(),
    }
    .sync(&SyncOptions::default())
}
