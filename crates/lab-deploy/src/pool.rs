//! Connections: how to open one ([`Connector`]: ssh config, host key
//! policy, timeouts), "connect, then gather facts when none are cached"
//! (written once, here), and running work on many machines at a time.

use crate::event::{Event, Events, Step};
use lab_config::{Machine, Project};
use lab_sync::ssh2_config::SshConfig;
use lab_sync::{SyncError, Transport};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// Are facts gathered from `machine` cached in `.lab/facts/` (a build
/// needs them)? An unreadable or empty cache counts as none.
pub fn facts_cached(lab_dir: &Path, machine: &str) -> bool {
    cached_facts(lab_dir, machine).is_some()
}

/// The facts cached for `machine`, if there are any.
pub fn cached_facts(lab_dir: &Path, machine: &str) -> Option<lab_engine::lab_facts::Facts> {
    lab_engine::lab_facts::load(lab_dir, machine)
        .ok()
        .filter(|f| !f.is_empty())
}

/// Opens connections to a project's machines, all the same way.
pub struct Connector {
    ssh_config: Option<SshConfig>,
    pub accept_new: bool,
    pub timeout: Duration,
    pub io_timeout: Duration,
}

impl Connector {
    /// With the user's ssh config (`$LAB_SSH_CONFIG`, else
    /// `~/.ssh/config`) and the one-off timeouts of [`crate::connect`].
    pub fn new(accept_new: bool) -> Result<Connector, SyncError> {
        Ok(Connector {
            ssh_config: lab_sync::ssh::load_ssh_config()?,
            accept_new,
            timeout: crate::machine::CONNECT_TIMEOUT,
            io_timeout: crate::machine::IO_TIMEOUT,
        })
    }

    pub fn with_timeouts(self, timeout: Duration, io_timeout: Duration) -> Connector {
        Connector {
            timeout,
            io_timeout,
            ..self
        }
    }

    pub fn ssh_config(&self) -> Option<&SshConfig> {
        self.ssh_config.as_ref()
    }

    pub fn connect(&self, project: &Project, m: &Machine) -> Result<Box<dyn Transport>, SyncError> {
        lab_sync::connect(
            &crate::machine::endpoint(project, m),
            self.ssh_config.as_ref(),
            self.accept_new,
            self.timeout,
            self.io_timeout,
        )
    }

    /// Connect, then gather the machine's facts over the new connection if
    /// `gather` (none are cached, and the build needs them).
    pub fn open(
        &self,
        project: &Project,
        lab_dir: &Path,
        m: &Machine,
        gather: bool,
        events: &dyn Events,
    ) -> Result<Box<dyn Transport>, SyncError> {
        events.event(Event::Step {
            machine: m,
            step: Step::Connecting,
        });
        let mut t = self.connect(project, m)?;
        if gather {
            events.event(Event::Step {
                machine: m,
                step: Step::GatheringFacts,
            });
            lab_sync::gather_facts(t.as_mut(), lab_dir, &m.name)?;
        }
        Ok(t)
    }
}

/// Run `f` on every item with up to `jobs` threads; results in item order.
pub fn parallel<T: Send, R: Send>(items: Vec<T>, jobs: usize, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let n = items.len();
    let queue = Mutex::new(items.into_iter().enumerate());
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1).min(n.max(1)) {
            s.spawn(|| loop {
                let Some((i, item)) = queue.lock().unwrap().next() else {
                    break;
                };
                let r = f(item);
                results.lock().unwrap()[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}
