//! The build engine: scans the sources a build needs, works out per machine
//! which graph nodes are dirty (through `lab-graph`), renders them in
//! parallel (through `lab-render`), writes the output trees and manifests
//! atomically under `.lab/out/`, and persists state under `.lab/state/` (its
//! format is documented in [`state`]). It reports progress through the
//! [`Reporter`] trait and returns typed errors; it never prints.
//!
//! A no-op build in a fresh process costs one `lstat` per source plus a few
//! small reads: sources whose stat is unchanged are not read, and a machine
//! whose input summary is unchanged is not even loaded.

mod compat;
mod error;
mod export;
pub mod facts;
mod machine;
mod output;
mod reporter;
mod scan;
mod secret;
mod session;
mod show;
mod stack;
pub mod state;

pub use compat::{is_template as compat_is_template, output_name as compat_output_name};
pub use error::{EngineError, MachineError};
pub use lab_facts;
pub use machine::MachineReport;
pub use reporter::{Reporter, Silent};
pub use session::{CycleReport, Session};
pub use show::{Show, ShowError, ShowSource};
pub use stack::PARTIALS_DIR;

use indexmap::IndexMap;
use lab_config::{Machine, Project};
use lab_core::LabDir;
use lab_graph::{Digest, Hasher};
use rayon::prelude::*;
use scan::RootScan;
use stack::Stack;
use state::StateDir;
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Changes whenever the meaning of outputs changes, so that state written
/// by an older lab is not trusted.
const ENGINE_VERSION: &str = "lab-engine-1";

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
    lab_dir: PathBuf,
    state: StateDir,
    ignore: globset::GlobSet,
    age: secret::AgeKeys,
    secret_facts: std::sync::OnceLock<Result<secret::SecretFacts, (PathBuf, String)>>,
}

/// Held while building; released on drop.
pub(crate) struct Lock(#[allow(dead_code)] std::fs::File);

impl Engine {
    /// Open the project whose `lab.toml` is in `dir` or a parent of it.
    pub fn open(dir: &Path) -> Result<Engine, EngineError> {
        Ok(Engine::new(Project::find(dir)?))
    }

    pub fn new(project: Project) -> Engine {
        let lab_dir = project.state_dir();
        // make copies every file it finds, editor droppings included.
        let ignore = if project.compat.is_some() {
            globset::GlobSet::empty()
        } else {
            scan::default_ignores()
        };
        Engine {
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
        let _lock = self.lock_waiting(reporter)?;
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

        let mut sources = self.state.load_sources();
        let scanned_at_ns = self.state.stamp().map_err(|e| EngineError::Io {
            path: self.state.dir.clone(),
            source: e,
        })?;
        let scans: HashMap<String, Result<RootScan, MachineError>> = root_names
            .par_iter()
            .map(|name| {
                let prev = sources.roots.get(name);
                (
                    name.clone(),
                    scan::scan_root(root, name, prev, &self.ignore),
                )
            })
            .collect();
        let (files, hashed) = scans
            .values()
            .filter_map(|s| s.as_ref().ok())
            .fold((0, 0), |(f, h), s| (f + s.entries.len(), h + s.hashed));
        reporter.scanned(files, hashed);

        let prev_scan_id = sources.scan_id;
        let scan_id = now_ns() as u64 ^ ((std::process::id() as u64) << 32);
        let (gathered, bad_gathered) = self.gathered();
        let scopes = self.scopes(&gathered)?;
        let compat_ctx = self.project.compat.as_ref().map(|c| CompatCtx {
            m4: lab_render::m4::locate().map_err(|e| e.to_string()),
            files: compat::FileCache::new(root),
            preludes: lab_config::compat::expand_globs(root, &c.preludes),
            scanned_at_ns,
            render_pool: compat::RenderPool::new(rayon::current_num_threads()),
        });

        let outcomes: Vec<MachineOutcome> = machines
            .par_iter()
            .map(|m| MachineOutcome {
                name: m.name.clone(),
                result: if let Some(ctx) = &compat_ctx {
                    self.build_compat_machine(
                        m,
                        &scans,
                        ctx,
                        gathered.get(&m.name),
                        bad_gathered.get(&m.name),
                        scan_id,
                        opts.force,
                        opts.trust_outputs,
                        reporter,
                    )
                } else {
                    self.build_machine(
                        m,
                        &scans,
                        &scopes[&m.name],
                        bad_gathered.get(&m.name),
                        prev_scan_id,
                        scan_id,
                        opts.force,
                        opts.trust_outputs,
                        reporter,
                    )
                },
            })
            .collect();

        // Nothing read, nothing changed, nothing built: the stored
        // fingerprints and scan id are still exact, so a no-op build writes
        // nothing.
        let unchanged = hashed == 0
            && outcomes
                .iter()
                .all(|o| matches!(&o.result, Ok(r) if r.up_to_date))
            && scans.iter().all(|(name, s)| {
                s.as_ref().is_ok_and(|s| {
                    s.changed.is_empty()
                        && sources.roots.get(name).is_some_and(|p| {
                            p.exists == s.exists && p.tree == s.tree && p.listing == s.listing
                        })
                })
            });
        if unchanged {
            return Ok(BuildReport {
                files,
                hashed,
                machines: outcomes,
            });
        }
        // The fingerprint cache: every root scanned now, and the ones this
        // run did not look at as they were.
        for (name, s) in &scans {
            if let Ok(s) = s {
                sources
                    .roots
                    .insert(name.clone(), s.to_state(scanned_at_ns));
            }
        }
        sources.scan_id = scan_id;
        let sp = self.state.sources_path();
        state::write(&sp, &sources).map_err(|e| EngineError::Io {
            path: sp,
            source: e,
        })?;

        Ok(BuildReport {
            files,
            hashed,
            machines: outcomes,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn build_machine(
        &self,
        m: &Machine,
        scans: &HashMap<String, Result<RootScan, MachineError>>,
        scope: &Arc<lab_render::Scope>,
        bad_gathered: Option<&String>,
        prev_scan_id: u64,
        scan_id: u64,
        force: bool,
        trust_outputs: bool,
        reporter: &dyn Reporter,
    ) -> Result<MachineReport, Vec<MachineError>> {
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
                        if let Some(l) = m
                            .layers
                            .iter()
                            .find(|l| format!("layers/{}", l.name) == name)
                        {
                            errors.push(MachineError::UnknownLayer {
                                machine: m.name.clone(),
                                layer: l.name.clone(),
                                at: Box::new(l.at.clone()),
                                known: self.known_layers(),
                            });
                        }
                    }
                    roots.push(s);
                }
                Err(e) => errors.push(clone_error(e)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let summary = machine_summary(&m.name, &roots, scope, &self.project.owners);
        machine::MachineJob {
            name: &m.name,
            stack: Stack { roots },
            scope: scope.clone(),
            summary,
            out: output::OutTree::new(self.out_dir(&m.name), self.stage_dir(&m.name)),
            manifest_path: self.manifest_path(&m.name),
            state: &self.state,
            prev_scan_id,
            scan_id,
            force,
            trust_outputs,
            age: &self.age,
            owners: &self.project.owners,
        }
        .run(reporter)
    }

    /// One machine of a make-style project: facts from its fact files, a
    /// warning for each listed layer that does not exist, then the job.
    #[allow(clippy::too_many_arguments)]
    fn build_compat_machine(
        &self,
        m: &Machine,
        scans: &HashMap<String, Result<RootScan, MachineError>>,
        ctx: &CompatCtx,
        gathered: Option<&IndexMap<String, serde_json::Value>>,
        bad_gathered: Option<&String>,
        scan_id: u64,
        force: bool,
        trust_outputs: bool,
        reporter: &dyn Reporter,
    ) -> Result<MachineReport, Vec<MachineError>> {
        let compat = self.project.compat.as_ref().expect("compat project");
        let root = &self.project.root;
        // Its layer lists or inventory entry could not be read: this
        // machine fails, the others build.
        if let Some(e) = compat.problems.get(&m.name) {
            return Err(vec![MachineError::Config(Box::new(
                lab_config::compat::copy_error(e),
            ))]);
        }
        if let Some(e) = bad_gathered {
            return Err(vec![MachineError::Io {
                path: facts::gathered_path(&self.lab_dir, &m.name),
                source: std::io::Error::other(e.clone()),
            }]);
        }
        let mut facts = lab_config::compat::load_facts(root, compat, &m.name)
            .map_err(|e| vec![MachineError::Config(Box::new(e))])?;
        if let Some(g) = gathered {
            for (k, v) in lab_facts::to_compat(g) {
                facts.insert(k, v);
            }
        }
        let mut roots = Vec::new();
        let mut errors = Vec::new();
        for name in Engine::stack_names(m) {
            match &scans[&name] {
                Ok(s) => {
                    if !s.exists && name.starts_with("layers/") && name != "layers/_" {
                        if let Some(l) = m
                            .layers
                            .iter()
                            .find(|l| name == format!("layers/{}", l.name))
                        {
                            let mut at = l.at.clone();
                            if let Ok(rel) = at.path.strip_prefix(root) {
                                at.path = rel.to_path_buf();
                            }
                            reporter.warning(
                                Some(&m.name),
                                &compat::missing_layer_warning(&l.name, &at),
                            );
                        }
                    }
                    roots.push(s);
                }
                Err(e) => errors.push(clone_error(e)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let facts_d = compat::facts_digest(&facts);
        let base_summary = {
            let mut h = Hasher::new(ENGINE_VERSION);
            h.str("compat").str(&m.name);
            owners_digest(&mut h, &self.project.owners);
            for r in &roots {
                h.str(&r.name).digest(&r.tree);
            }
            h.digest(&facts_d);
            for p in &ctx.preludes {
                h.str(p);
            }
            for c in &compat.copies {
                h.str(&c.from).str(&c.to).u64(c.machines.len() as u64);
                for cm in &c.machines {
                    h.str(cm);
                }
            }
            h.str(&format!("{:?}", ctx.m4));
            h.finish()
        };
        compat::CompatJob {
            name: &m.name,
            project_root: root,
            roots,
            copies: &compat.copies,
            facts,
            preludes: ctx.preludes.clone(),
            m4: &ctx.m4,
            base_summary,
            files: &ctx.files,
            scanned_at_ns: ctx.scanned_at_ns,
            render_pool: &ctx.render_pool,
            out: output::OutTree::new(self.out_dir(&m.name), self.stage_dir(&m.name)),
            manifest_path: self.manifest_path(&m.name),
            state: &self.state,
            scan_id,
            force,
            trust_outputs,
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

/// What every machine of a make-style build shares.
struct CompatCtx {
    m4: Result<PathBuf, String>,
    files: compat::FileCache,
    preludes: Vec<String>,
    scanned_at_ns: i64,
    render_pool: compat::RenderPool,
}

/// A machine's input summary: its stack (each root's tree digest), its
/// facts and the inventory. Equal summaries, equal outputs.
fn machine_summary(
    name: &str,
    roots: &[&RootScan],
    scope: &lab_render::Scope,
    owners: &[lab_config::OwnerRule],
) -> Digest {
    let mut h = Hasher::new(ENGINE_VERSION);
    h.str(name);
    owners_digest(&mut h, owners);
    for r in roots {
        h.str(&r.name).digest(&r.tree);
    }
    let mut keys: Vec<_> = machine_inputs(scope);
    keys.sort();
    for (k, d) in keys {
        h.str(&k).digest(&d);
    }
    h.finish()
}

/// The `[[owners]]` rules, into a machine's summary: a changed rule makes
/// the machine's manifest be written again.
fn owners_digest(h: &mut Hasher, owners: &[lab_config::OwnerRule]) {
    for o in owners {
        h.str("owners");
        for p in &o.paths {
            h.str(p);
        }
        h.str(o.owner.as_deref().unwrap_or("-"))
            .str(o.group.as_deref().unwrap_or("-"));
    }
}

/// `(name, digest)` of every fact and machine view a scope holds, for the
/// machine's summary.
fn machine_inputs(scope: &lab_render::Scope) -> Vec<(String, Digest)> {
    let mut v = Vec::new();
    for (k, val) in &scope.facts {
        v.push((format!("f:{k}"), lab_render::fact_digest(Some(val))));
    }
    for (k, val) in &scope.machines {
        v.push((format!("m:{k}"), lab_render::fact_digest(Some(val))));
    }
    let peers = scope
        .digest_of(&lab_graph::Key::Peers)
        .expect("peers digest");
    v.push(("peers".to_string(), peers));
    v
}

fn clone_error(e: &MachineError) -> MachineError {
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

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
