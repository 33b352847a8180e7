//! The build engine: scans the sources a build needs, works out per machine
//! which graph nodes are dirty (through `lab-graph`), makes them in
//! parallel, writes the output trees and manifests atomically under
//! `.lab/out/`, and persists state under `.lab/state/` (its format is
//! documented in [`state`]). What the sources of a project mean is a
//! [`Style`]'s business: the native style (`lab.toml`, minijinja through
//! `lab-render`) is here; others plug in from crates above this one. One
//! pipeline ([`machine`]) builds a machine of any style. It reports progress
//! through the [`Reporter`] trait and returns typed errors; it never prints.
//!
//! A no-op build in a fresh process costs one `lstat` per source plus a few
//! small reads: sources whose stat is unchanged are not read, and a machine
//! whose input summary is unchanged is not even loaded.

mod error;
mod export;
pub mod facts;
pub mod machine;
mod native;
mod output;
mod pods;
mod reporter;
pub mod scan;
mod secret;
mod session;
mod show;
mod stack;
pub mod state;
pub mod style;

pub use error::{EngineError, MachineError, StyleError};
pub use lab_facts;
pub use lab_pods;
pub use machine::MachineReport;
pub use native::NativeStyle;
pub use reporter::{Reporter, Silent};
pub use session::{CycleReport, Session};
pub use show::{Show, ShowError, ShowSource};
pub use stack::PARTIALS_DIR;
pub use style::{Gathered, MachineModel, Made, Plan, Prepared, Style};

use indexmap::IndexMap;
use lab_config::{Machine, Project};
use lab_core::LabDir;
use lab_graph::Hasher;
use rayon::prelude::*;
use scan::RootScan;
use state::StateDir;
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Changes whenever the meaning of outputs changes, so that state written
/// by an older lab is not trusted.
pub const ENGINE_VERSION: &str = "lab-engine-1";

#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Machines to build; empty means all.
    pub machines: Vec<String>,
    /// Worker threads; `None` means one per core.
    pub jobs: Option<usize>,
    /// Ignore all state and rebuild every node.
    pub force: bool,
    /// Do not look for outputs changed behind lab's back (one `lstat` per
    /// output): for a sync, whose stream checks every file it sends
    /// against the manifest anyway.
    pub trust_outputs: bool,
    /// When another lab holds the project's lock, fail at once
    /// ([`EngineError::Locked`]) instead of waiting for it: the web
    /// console's background look, which a running `lab watch` (holding
    /// the lock for its whole session) would stop.
    pub no_wait: bool,
}

#[derive(Debug)]
pub struct MachineOutcome {
    pub name: String,
    pub result: Result<MachineReport, Vec<MachineError>>,
}

#[derive(Debug, Default)]
pub struct BuildReport {
    /// Source entries seen, and how many of them were read and hashed.
    pub files: usize,
    pub hashed: usize,
    /// In the order of lab.toml.
    pub machines: Vec<MachineOutcome>,
}

impl BuildReport {
    pub fn failed(&self) -> impl Iterator<Item = &MachineOutcome> {
        self.machines.iter().filter(|m| m.result.is_err())
    }
}

pub struct Engine {
    pub project: Project,
    style: Arc<dyn Style>,
    lab_dir: PathBuf,
    state: StateDir,
    ignore: globset::GlobSet,
    age: secret::AgeKeys,
    secret_facts: std::sync::OnceLock<Result<secret::SecretFacts, (PathBuf, String)>>,
}

/// Held while building; released on drop.
pub(crate) struct Lock(#[allow(dead_code)] std::fs::File);

impl Engine {
    /// Open the project whose `lab.toml` is in `dir` or a parent of it,
    /// in the native style.
    pub fn open(dir: &Path) -> Result<Engine, EngineError> {
        Ok(Engine::new(Project::find(dir)?))
    }

    /// A native-style engine for `project`.
    pub fn new(project: Project) -> Engine {
        Engine::with_style(project, Arc::new(NativeStyle))
    }

    /// An engine that builds `project` in `style`.
    pub fn with_style(project: Project, style: Arc<dyn Style>) -> Engine {
        let lab_dir = project.state_dir();
        let ignore = style.ignores();
        Engine {
            style,
            state: StateDir::new(&LabDir::at(&lab_dir)),
            age: secret::AgeKeys::new(&project.settings.age_identities),
            secret_facts: std::sync::OnceLock::new(),
            lab_dir,
            project,
            ignore,
        }
    }

    pub fn lab_dir(&self) -> &Path {
        &self.lab_dir
    }

    /// The project style this engine builds with.
    pub fn style(&self) -> &Arc<dyn Style> {
        &self.style
    }

    pub(crate) fn age(&self) -> &secret::AgeKeys {
        &self.age
    }

    /// The layout of `.lab/`.
    pub fn layout(&self) -> LabDir {
        LabDir::at(&self.lab_dir)
    }

    /// `.lab/out/NAME/`
    pub fn out_dir(&self, machine: &str) -> PathBuf {
        self.layout().out_dir(machine)
    }

    /// `.lab/stage/NAME/`: a build's new outputs before they switch in.
    pub fn stage_dir(&self, machine: &str) -> PathBuf {
        self.layout().stage_dir(machine)
    }

    /// `.lab/out/NAME.manifest`
    pub fn manifest_path(&self, machine: &str) -> PathBuf {
        self.layout().manifest_path(machine)
    }

    /// Take lab's lock, or fail with [`EngineError::Locked`] when another
    /// lab holds it (a `lab watch` session: it would never let go).
    pub(crate) fn lock(&self) -> Result<Lock, EngineError> {
        self.take_lock(None)
    }

    /// Take lab's lock, waiting for another lab that holds it (a second
    /// `lab build` waits for the first, as users expect). The reporter is
    /// told once, so a wait never looks like a hang.
    pub(crate) fn lock_waiting(&self, reporter: &dyn Reporter) -> Result<Lock, EngineError> {
        self.take_lock(Some(reporter))
    }

    fn take_lock(&self, waiting: Option<&dyn Reporter>) -> Result<Lock, EngineError> {
        let io = |e| EngineError::Io {
            path: self.lab_dir.clone(),
            source: e,
        };
        std::fs::create_dir_all(&self.lab_dir).map_err(io)?;
        let path = self.layout().lock_path();
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        // A child process forked by this process (m4, ssh) holds a copy of
        // every descriptor until it execs, and with it a lock that was just
        // released; so a held lock is tried again for a moment before it
        // counts as another lab's.
        for attempt in 0.. {
            // SAFETY: flock on a file descriptor we own.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            if attempt == 20 {
                let Some(reporter) = waiting else {
                    return Err(EngineError::Locked { path });
                };
                reporter.warning(
                    None,
                    &format!(
                        "another lab process holds `{}`; waiting for it to finish",
                        path.display()
                    ),
                );
                loop {
                    // SAFETY: flock on a file descriptor we own.
                    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
                    if rc == 0 {
                        break;
                    }
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(EngineError::Io { path, source: e });
                    }
                }
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(Lock(f))
    }

    /// The machines named (all when `names` is empty), in lab.toml order.
    pub fn select(&self, names: &[String]) -> Result<Vec<&Machine>, EngineError> {
        for n in names {
            if self.project.machine(n).is_none() {
                return Err(EngineError::UnknownMachine {
                    name: n.clone(),
                    known: self
                        .project
                        .machines
                        .iter()
                        .map(|m| m.name.clone())
                        .collect(),
                });
            }
        }
        Ok(self
            .project
            .machines
            .iter()
            .filter(|m| names.is_empty() || names.contains(&m.name))
            .collect())
    }

    /// Root names of a machine's stack, lowest first.
    pub(crate) fn stack_names(m: &Machine) -> Vec<String> {
        let mut v = vec!["layers/_".to_string()];
        for l in &m.layers {
            if l.name != "_" {
                v.push(format!("layers/{}", l.name));
            }
        }
        v.push(format!("machines/{}", m.name));
        v
    }

    /// Every machine's template scope (facts, secret facts, gathered).
    pub(crate) fn scopes(
        &self,
        gathered: &IndexMap<String, IndexMap<String, serde_json::Value>>,
    ) -> Result<IndexMap<String, Arc<lab_render::Scope>>, EngineError> {
        let secret = self
            .secret_facts
            .get_or_init(|| {
                self.age
                    .secret_facts(&self.project.root, &self.project.settings.secret_facts)
            })
            .as_ref()
            .map_err(|(path, message)| EngineError::Secret {
                path: path.clone(),
                message: message.clone(),
            })?;
        Ok(facts::scopes(&self.project, secret, gathered))
    }

    pub(crate) fn gathered(
        &self,
    ) -> (
        IndexMap<String, IndexMap<String, serde_json::Value>>,
        HashMap<String, String>,
    ) {
        let mut ok = IndexMap::new();
        let mut bad = HashMap::new();
        for m in &self.project.machines {
            match facts::load_gathered(&self.lab_dir, &m.name) {
                Ok(f) => {
                    ok.insert(m.name.clone(), f);
                }
                Err(e) => {
                    bad.insert(m.name.clone(), e);
                }
            }
        }
        (ok, bad)
    }

    /// Build the selected machines.
    pub fn build(
        &self,
        opts: &BuildOptions,
        reporter: &dyn Reporter,
    ) -> Result<BuildReport, EngineError> {
        let machines = self.select(&opts.machines)?;
        let _lock = if opts.no_wait {
            self.lock()?
        } else {
            self.lock_waiting(reporter)?
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.jobs.unwrap_or(0))
            .build()
            .expect("thread pool");
        if opts.machines.is_empty() {
            self.remove_orphans(reporter)?;
        }
        pool.install(|| self.build_locked(&machines, opts, reporter))
    }

    /// Outputs and state of machines that are no longer in lab.toml: a
    /// clean build would not have them, so neither does an incremental one.
    pub(crate) fn remove_orphans(&self, reporter: &dyn Reporter) -> Result<(), EngineError> {
        let out = self.layout().out_root();
        let Ok(rd) = std::fs::read_dir(&out) else {
            return Ok(());
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(machine) = LabDir::manifest_machine(&name) else {
                continue;
            };
            if self.project.machine(machine).is_some() {
                continue;
            }
            let io = |p: PathBuf| move |e| EngineError::Io { path: p, source: e };
            let dir = self.out_dir(machine);
            for dir in [dir, self.stage_dir(machine)] {
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(io(dir.clone()))?;
                }
            }
            self.state
                .forget_machine(machine)
                .map_err(io(self.state.dir.clone()))?;
            std::fs::remove_file(e.path()).map_err(io(e.path()))?;
            reporter.warning(
                None,
                &format!("removed the outputs of `{machine}`, which is no longer in lab.toml"),
            );
        }
        Ok(())
    }

    pub(crate) fn build_locked(
        &self,
        machines: &[&Machine],
        opts: &BuildOptions,
        reporter: &dyn Reporter,
    ) -> Result<BuildReport, EngineError> {
        let root = &self.project.root;
        let mut root_names: Vec<String> = machines
            .iter()
            .flat_map(|m| Engine::stack_names(m))
            .collect();
        root_names.sort();
        root_names.dedup();

        // Each root's previous fingerprints go to its scan (which lets go
        // of them as it goes); what the build needs of them after is kept.
        let mut loaded = self.state.load_roots(&root_names);
        let prev: HashMap<String, PrevRoot> = loaded
            .iter()
            .map(|(name, f)| {
                let p = PrevRoot {
                    gen: f.gen,
                    exists: f.root.exists,
                    tree: f.root.tree,
                    listing: f.root.listing,
                };
                (name.clone(), p)
            })
            .collect();
        let jobs: Vec<(&String, Option<scan::RootState>)> = root_names
            .iter()
            .map(|n| (n, loaded.remove(n).map(|f| f.root)))
            .collect();
        drop(loaded);
        let scanned_at_ns = self.state.stamp().map_err(|e| EngineError::Io {
            path: self.state.dir.clone(),
            source: e,
        })?;
        // The sources' scan, and beside it (sharing the cores) the look
        // for outputs changed behind lab's back.
        let (scans, tampered): (HashMap<String, Result<RootScan, MachineError>>, _) = rayon::join(
            || {
                jobs.into_par_iter()
                    .map(|(name, prev)| {
                        (
                            name.clone(),
                            scan::scan_root(root, name, prev, &self.ignore),
                        )
                    })
                    .collect()
            },
            || -> HashMap<String, bool> {
                if opts.trust_outputs || opts.force {
                    return HashMap::new();
                }
                machines
                    .par_iter()
                    .map(|m| {
                        let changed = machine::outputs_changed(
                            &self.state,
                            &m.name,
                            &self.out_dir(&m.name),
                            &self.manifest_path(&m.name),
                        );
                        (m.name.clone(), changed)
                    })
                    .collect()
            },
        );
        let (files, hashed) = scans
            .values()
            .filter_map(|s| s.as_ref().ok())
            .fold((0, 0), |(f, h), s| (f + s.entries.len(), h + s.hashed));
        reporter.scanned(files, hashed);

        // Each root's generation before and after this build: a root whose
        // scan found nothing changed keeps its generation, and its file too
        // when the scan read nothing (a no-op build writes no fingerprints,
        // an edit those of one root). A file hashed again only because it
        // was written within the previous scan's clock tick changes its
        // fingerprint's stat, not what machines were built from, so the
        // machines' states still name the right generation.
        let mut gens: Gens = HashMap::new();
        for (name, s) in &scans {
            let Ok(s) = s else { continue };
            let p = prev.get(name);
            let keep = p.filter(|p| {
                s.changed.is_empty()
                    && p.exists == s.exists
                    && p.tree == s.tree
                    && p.listing == s.listing
            });
            let before = p.map_or(0, |p| p.gen);
            let after = keep.map_or_else(state::new_gen, |p| p.gen);
            gens.insert(name.clone(), (before, after));
        }
        let (gathered, bad_gathered) = self.gathered();
        let prepared = self.style.prepare(self, &gathered, scanned_at_ns)?;
        let outcomes: Vec<MachineOutcome> = machines
            .par_iter()
            .map(|m| MachineOutcome {
                name: m.name.clone(),
                result: self.build_machine(
                    m,
                    &scans,
                    &*prepared,
                    bad_gathered.get(&m.name),
                    Ids {
                        gens: &gens,
                        tampered: &tampered,
                        scanned_at_ns,
                    },
                    opts,
                    reporter,
                ),
            })
            .collect();

        // The fingerprints of the roots that changed (after the machines'
        // state: see `state`).
        for (name, s) in &scans {
            let Ok(s) = s else { continue };
            let (before, after) = gens[name];
            if before != after || !prev.contains_key(name) || s.hashed > 0 {
                self.state
                    .save_root(name, after, s.to_state(scanned_at_ns))
                    .map_err(|e| EngineError::Io {
                        path: self.state.root_path(name),
                        source: e,
                    })?;
            }
        }

        Ok(BuildReport {
            files,
            hashed,
            machines: outcomes,
        })
    }

    /// One machine: the style's own checks, its stack (a scan error or a
    /// missing root the style does not allow stops it), its model, then
    /// the pipeline.
    #[allow(clippy::too_many_arguments)]
    fn build_machine(
        &self,
        m: &Machine,
        scans: &HashMap<String, Result<RootScan, MachineError>>,
        prepared: &dyn Prepared,
        bad_gathered: Option<&String>,
        ids: Ids<'_>,
        opts: &BuildOptions,
        reporter: &dyn Reporter,
    ) -> Result<MachineReport, Vec<MachineError>> {
        prepared.check(m)?;
        if let Some(e) = bad_gathered {
            return Err(vec![MachineError::Io {
                path: facts::gathered_path(&self.lab_dir, &m.name),
                source: std::io::Error::other(e.clone()),
            }]);
        }
        let mut errors = Vec::new();
        let mut roots = Vec::new();
        for name in Engine::stack_names(m) {
            match &scans[&name] {
                Ok(s) => {
                    if !s.exists {
                        errors.extend(prepared.missing_root(m, &name, reporter));
                    }
                    roots.push(s);
                }
                Err(e) => errors.push(clone_error(e)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let model = prepared.machine(m, roots.clone(), reporter)?;
        let gen = |r: &&RootScan| ids.gens.get(&r.name).copied().unwrap_or_default();
        let prev_gens = roots.iter().map(|r| gen(r).0).collect();
        let gens = roots.iter().map(|r| gen(r).1).collect();
        machine::MachineJob {
            name: &m.name,
            model,
            roots,
            out: output::OutTree::new(self.out_dir(&m.name), self.stage_dir(&m.name)),
            manifest_path: self.manifest_path(&m.name),
            state: &self.state,
            prev_gens,
            gens,
            scanned_at_ns: ids.scanned_at_ns,
            force: opts.force,
            tampered: ids.tampered.get(&m.name).copied().unwrap_or(false),
            owners: &self.project.owners,
        }
        .run(reporter)
    }

    /// Gather `machine`'s facts on this host (`sh` runs
    /// [`lab_facts::GATHER_SCRIPT`]) and cache them as that machine's
    /// gathered facts. Returns the cache file and the facts.
    pub fn gather_local(&self, machine: &str) -> Result<(PathBuf, lab_facts::Facts), EngineError> {
        self.select(&[machine.to_string()])?;
        let facts = lab_facts::gather_local()?;
        let path = lab_facts::store(&self.lab_dir, machine, &facts)?;
        Ok((path, facts))
    }

    /// Names of the directories under `layers/`.
    pub fn known_layers(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.project.layers_dir())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Remove outputs and state (not gathered facts).
    pub fn clean(&self) -> Result<(), EngineError> {
        let _lock = self.lock()?;
        for d in [
            self.layout().out_root(),
            self.layout().stage_root(),
            self.layout().state_dir(),
        ] {
            match std::fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(EngineError::Io { path: d, source: e }),
            }
        }
        Ok(())
    }
}

/// What a build keeps of a root's previous fingerprints once its scan
/// has them.
struct PrevRoot {
    gen: u64,
    exists: bool,
    tree: lab_core::Digest,
    listing: lab_core::Digest,
}

/// Each root's generation before and after a build, by root name.
type Gens = HashMap<String, (u64, u64)>;

/// The scans a build works against.
#[derive(Clone, Copy)]
struct Ids<'a> {
    gens: &'a Gens,
    /// Machines whose outputs changed behind lab's back.
    tampered: &'a HashMap<String, bool>,
    scanned_at_ns: i64,
}

/// The `[[owners]]` rules, into a machine's summary: a changed rule makes
/// the machine's manifest be written again.
pub fn owners_digest(h: &mut Hasher, owners: &[lab_config::OwnerRule]) {
    for o in owners {
        h.str("owners");
        for p in &o.paths {
            h.str(p);
        }
        h.str(o.owner.as_deref().unwrap_or("-"))
            .str(o.group.as_deref().unwrap_or("-"));
    }
}

/// A copy of a root's scan error, for each machine that has the root.
pub(crate) fn clone_error(e: &MachineError) -> MachineError {
    match e {
        MachineError::NotUtf8 { path } => MachineError::NotUtf8 { path: path.clone() },
        MachineError::SpecialFile { path } => MachineError::SpecialFile { path: path.clone() },
        MachineError::Io { path, source } => MachineError::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        other => MachineError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(other.to_string()),
        },
    }
}
