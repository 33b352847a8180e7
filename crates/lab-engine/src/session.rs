//! A long-lived build for `lab watch`: the scans, graphs and entries of the
//! selected machines stay in memory, so a change re-examines only what it
//! touches (the paths the file system reported, then the graph nodes that
//! depend on them), with no rescan of the tree and no state file read.
//!
//! The session holds the engine's lock while it lives. State is written to
//! `.lab/state/` by [`Session::persist`] (the watcher calls it when it is
//! idle); if the process dies before that, the next `lab build` sees that
//! its state does not vouch for the outputs and rebuilds correctly.
//!
//! Projects whose style reads the whole project (see
//! [`crate::Style::reads_whole_project`]), and edits of `lab.toml`, take the
//! ordinary path: a build of every selected machine, then a fresh session
//! state.

use crate::machine::{manifest_entries, MachineJob, Prior};
use crate::scan::{self, RootScan};
use crate::state;
use crate::{
    facts, output, BuildOptions, BuildReport, Engine, EngineError, Lock, MachineError,
    MachineOutcome, Reporter,
};
use lab_config::Project;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

pub struct Session {
    engine: Engine,
    /// The machines asked for (empty: all).
    selection: Vec<String>,
    roots: HashMap<String, RootScan>,
    /// When each root was last listed in full: its entries' stats were
    /// taken after this moment (see [`Session::rescan`]).
    scanned_at: HashMap<String, i64>,
    machines: HashMap<String, Prior>,
    /// Something changed since the last [`Session::persist`].
    dirty: bool,
    _lock: Lock,
}

/// Machines a cycle builds besides those with a touched root (styles that
/// read the whole project).
enum Also {
    None,
    /// Those the style says these changed paths affect.
    Paths(Vec<String>),
    All,
}

/// What one cycle did.
#[derive(Debug, Default)]
pub struct CycleReport {
    /// Source paths (relative to the project) that changed.
    pub changed: Vec<String>,
    /// lab.toml changed: the inventory was read again and every selected
    /// machine was built.
    pub reloaded: bool,
    /// The machines that were built (the others were not affected).
    pub build: BuildReport,
}

impl Session {
    /// Build the selected machines and keep their state in memory.
    pub fn start(
        engine: Engine,
        machines: &[String],
        reporter: &dyn Reporter,
    ) -> Result<(Session, BuildReport), EngineError> {
        let lock = engine.lock()?;
        let mut s = Session {
            engine,
            selection: machines.to_vec(),
            roots: HashMap::new(),
            scanned_at: HashMap::new(),
            machines: HashMap::new(),
            dirty: false,
            _lock: lock,
        };
        let report = s.rebuild(reporter)?;
        Ok((s, report))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The ordinary build of every selected machine, then load its state.
    fn rebuild(&mut self, reporter: &dyn Reporter) -> Result<BuildReport, EngineError> {
        let machines = self.engine.select(&self.selection)?;
        if self.selection.is_empty() {
            self.engine.remove_orphans(reporter)?;
        }
        let report = self
            .engine
            .build_locked(&machines, &BuildOptions::default(), reporter)?;
        let mut names: Vec<String> = machines
            .iter()
            .flat_map(|m| Engine::stack_names(m))
            .collect();
        names.sort();
        names.dedup();
        let sources = self.engine.state.load_roots(&names);
        self.roots.clear();
        self.scanned_at.clear();
        self.machines.clear();
        for m in &machines {
            for name in Engine::stack_names(m) {
                if let Some(st) = sources.get(&name).map(|f| &f.root) {
                    self.scanned_at.insert(name.clone(), st.scanned_at_ns);
                    self.roots.entry(name.clone()).or_insert_with(|| {
                        RootScan::from_state(&self.engine.project.root, &name, st)
                    });
                }
            }
            let prior = match self.engine.state.load_machine(&m.name) {
                Some(ms)
                    if report
                        .machines
                        .iter()
                        .any(|o| o.name == m.name && o.result.is_ok()) =>
                {
                    Prior {
                        graph: lab_graph::Graph::from_state(ms.graph),
                        entries: ms
                            .entries
                            .into_iter()
                            .map(|e| (e.path.clone(), e))
                            .collect(),
                        inputs: Some(ms.inputs),
                        fast: true,
                        manifest_current: true,
                        record: self.engine.state.load_summary(&m.name),
                        disk: None,
                    }
                }
                _ => Prior::rebuild(self.manifest_entries(&m.name)),
            };
            self.machines.insert(m.name.clone(), prior);
        }
        self.dirty = false;
        Ok(report)
    }

    fn manifest_entries(&self, machine: &str) -> BTreeMap<String, lab_manifest::Entry> {
        manifest_entries(&self.engine.manifest_path(machine))
    }

    /// Take in changed paths (absolute or relative to the project, as the
    /// file system reported them) and rebuild what they affect.
    pub fn cycle(
        &mut self,
        paths: &[PathBuf],
        reporter: &dyn Reporter,
    ) -> Result<CycleReport, EngineError> {
        let project_root = self.engine.project.root.clone();
        let mut by_root: HashMap<String, Vec<String>> = HashMap::new();
        let mut reload = false;
        let mut changed = Vec::new();
        let style = self.engine.style().clone();
        let whole = style.reads_whole_project();
        // (whole-project styles) paths outside every root of the session
        let mut elsewhere: Vec<String> = Vec::new();
        for p in paths {
            let rel = p.strip_prefix(&project_root).unwrap_or(p);
            let Some(rel) = rel.to_str() else { continue };
            let parts: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
            match parts.as_slice() {
                [".lab", ..] | [".git", ..] => continue,
                ["lab.toml"] => reload = true,
                _ if style.reloads_on(&self.engine.project, &parts.join("/")) => reload = true,
                [top @ ("layers" | "machines"), name, rest @ ..] => {
                    by_root
                        .entry(format!("{top}/{name}"))
                        .or_default()
                        .push(rest.join("/"));
                }
                ["layers" | "machines"] => reload = true,
                // A style may read files anywhere in the project.
                _ if whole => elsewhere.push(parts.join("/")),
                _ => continue,
            }
            changed.push(rel.to_string());
        }
        changed.sort();
        changed.dedup();
        if reload {
            // What the session built must be on disk before an ordinary
            // build takes over.
            self.persist()?;
            let project = Project::reload(&project_root)?;
            self.engine = Engine::with_style(project, self.engine.style().clone());
            let build = self.rebuild(reporter)?;
            return Ok(CycleReport {
                changed,
                reloaded: reload,
                build,
            });
        }

        // Bring the affected roots up to date.
        let mut touched: HashSet<String> = HashSet::new();
        let mut listing: HashSet<String> = HashSet::new();
        let mut root_errors: HashMap<String, MachineError> = HashMap::new();
        for (name, rels) in by_root {
            let Some(root) = self.roots.get_mut(&name) else {
                // a layer no selected machine uses, or a new root
                if whole && !self.uses_root(&name) {
                    // (whole-project styles may read it all the same)
                    elsewhere.extend(rels.iter().map(|r| format!("{name}/{r}")));
                    continue;
                }
                if self.uses_root(&name) {
                    self.persist()?;
                    let build = self.rebuild(reporter)?;
                    return Ok(CycleReport {
                        changed,
                        reloaded: false,
                        build,
                    });
                }
                continue;
            };
            let result = if rels.iter().any(|r| r.is_empty()) {
                // the root directory itself: look at all of it again
                let prev = root.to_state(i64::MIN);
                scan::scan_root(&project_root, &name, Some(prev), &self.engine.ignore).map(|s| {
                    let changed_listing = s.listing != root.listing;
                    *root = s;
                    changed_listing
                })
            } else {
                root.update(&rels, &self.engine.ignore)
            };
            match result {
                Ok(l) => {
                    if l {
                        listing.insert(name.clone());
                    }
                    if !root.changed.is_empty() || l {
                        touched.insert(name.clone());
                    }
                }
                Err(e) => {
                    root_errors.insert(name.clone(), e);
                    touched.insert(name.clone());
                }
            }
        }
        let also = if whole {
            let mut v = elsewhere;
            v.extend(changed.iter().cloned());
            Also::Paths(v)
        } else {
            Also::None
        };
        self.build_touched(changed, touched, listing, root_errors, also, reporter)
    }

    /// Look at every root of the session again, as a fresh process would
    /// (one `lstat` per entry; files whose stat changed are read), and
    /// rebuild what changed. For when file system events were lost (the
    /// kernel's event queue overflowed): cheaper than [`Session::cycle`] on
    /// the project's directories, which reads every file again.
    pub fn rescan(&mut self, reporter: &dyn Reporter) -> Result<CycleReport, EngineError> {
        let project_root = self.engine.project.root.clone();
        let lab_toml = std::fs::read_to_string(&self.engine.project.file).ok();
        if lab_toml.as_deref() != Some(self.engine.project.text.as_str()) {
            return self.cycle(&[project_root.join("lab.toml")], reporter);
        }
        let unknown_root = self.engine.select(&self.selection)?.iter().any(|m| {
            Engine::stack_names(m)
                .iter()
                .any(|n| !self.roots.contains_key(n))
        });
        if unknown_root {
            // a root the last build could not scan: the ordinary path
            self.persist()?;
            let build = self.rebuild(reporter)?;
            return Ok(CycleReport {
                changed: Vec::new(),
                reloaded: false,
                build,
            });
        }
        let stamp = self.engine.state.stamp().map_err(|e| EngineError::Io {
            path: self.engine.state.dir.clone(),
            source: e,
        })?;
        let ignore = &self.engine.ignore;
        let scanned_at = &self.scanned_at;
        let rescanned: Vec<(String, Result<RootScan, MachineError>)> = self
            .roots
            .par_iter()
            .map(|(name, root)| {
                let prev = root.to_state(scanned_at.get(name).copied().unwrap_or(i64::MIN));
                let r = scan::scan_root(&project_root, name, Some(prev), ignore);
                (name.clone(), r)
            })
            .collect();
        let mut touched = HashSet::new();
        let mut listing = HashSet::new();
        let mut root_errors = HashMap::new();
        let mut changed = Vec::new();
        for (name, r) in rescanned {
            match r {
                Ok(new) => {
                    let root = self.roots.get_mut(&name).expect("rescanned a known root");
                    root.refresh_digests();
                    if new.listing != root.listing {
                        listing.insert(name.clone());
                    }
                    if !new.changed.is_empty() || new.listing != root.listing {
                        touched.insert(name.clone());
                    }
                    changed.extend(new.changed.iter().map(|c| format!("{name}/{c}")));
                    *root = new;
                    self.scanned_at.insert(name, stamp);
                }
                Err(e) => {
                    root_errors.insert(name.clone(), e);
                    touched.insert(name);
                }
            }
        }
        changed.sort();
        // (a whole-project style also reads files outside the roots, which
        // no rescan looks at: every machine is checked)
        let also = if self.engine.style().reads_whole_project() {
            Also::All
        } else {
            Also::None
        };
        self.build_touched(changed, touched, listing, root_errors, also, reporter)
    }

    /// Build the selected machines whose stack has a touched root.
    fn build_touched(
        &mut self,
        changed: Vec<String>,
        touched: HashSet<String>,
        listing: HashSet<String>,
        root_errors: HashMap<String, MachineError>,
        also: Also,
        reporter: &dyn Reporter,
    ) -> Result<CycleReport, EngineError> {
        // Roots not touched this cycle have nothing new to say.
        for (name, r) in self.roots.iter_mut() {
            if !touched.contains(name) {
                r.changed.clear();
            }
        }
        let hashed = self
            .roots
            .values()
            .map(|r| {
                if touched.contains(&r.name) {
                    r.hashed
                } else {
                    0
                }
            })
            .sum();
        let files = self.roots.values().map(|r| r.entries.len()).sum();
        reporter.scanned(files, hashed);

        // Build the affected machines, in parallel.
        let machines = self.engine.select(&self.selection)?;
        let style = self.engine.style();
        let affected: Vec<lab_config::Machine> = machines
            .into_iter()
            .filter(|m| {
                let names = Engine::stack_names(m);
                if names.iter().any(|n| touched.contains(n)) {
                    return true;
                }
                match &also {
                    Also::None => false,
                    Also::All => true,
                    Also::Paths(paths) => {
                        let Some(prior) = self.machines.get(&m.name) else {
                            return true;
                        };
                        paths.iter().any(|p| {
                            !names.iter().any(|n| p.starts_with(&format!("{n}/")))
                                && style.affects(&prior.graph, &names, p)
                        })
                    }
                }
            })
            .cloned()
            .collect();
        let (gathered, bad) = self.engine.gathered();
        let stamp = self.engine.state.stamp().map_err(|e| EngineError::Io {
            path: self.engine.state.dir.clone(),
            source: e,
        })?;
        let mut priors: Vec<(String, Prior)> = affected
            .iter()
            .map(|m| {
                let p = self
                    .machines
                    .remove(&m.name)
                    .unwrap_or_else(|| Prior::rebuild(self.manifest_entries(&m.name)));
                (m.name.clone(), p)
            })
            .collect();
        let engine = &self.engine;
        let prepared = engine.style().prepare(engine, &gathered, stamp)?;
        let prepared = &*prepared;
        let roots = &self.roots;
        let results: Vec<(
            String,
            Result<crate::MachineReport, Vec<MachineError>>,
            Prior,
        )> = affected
            .par_iter()
            .zip(priors.par_drain(..))
            .map(|(m, (_, mut prior))| {
                let names = Engine::stack_names(m);
                let mut errs: Vec<MachineError> = Vec::new();
                if let Err(e) = prepared.check(m) {
                    errs.extend(e);
                }
                if let Some(e) = bad.get(&m.name) {
                    errs.push(MachineError::Io {
                        path: facts::gathered_path(engine.lab_dir(), &m.name),
                        source: std::io::Error::other(e.clone()),
                    });
                }
                for n in &names {
                    if let Some(e) = root_errors.get(n) {
                        errs.push(crate::clone_error(e));
                    } else if roots.get(n).is_none_or(|r| !r.exists) {
                        errs.extend(prepared.missing_root(m, n, reporter));
                    }
                }
                if !errs.is_empty() {
                    return (m.name.clone(), Err(errs), prior);
                }
                let stack_roots: Vec<&RootScan> = names.iter().map(|n| &roots[n]).collect();
                prior.fast = prior.fast && !names.iter().any(|n| listing.contains(n));
                let model = match prepared.machine(m, stack_roots.clone(), reporter) {
                    Ok(model) => model,
                    Err(e) => return (m.name.clone(), Err(e), prior),
                };
                let mut job = MachineJob {
                    name: &m.name,
                    model,
                    roots: stack_roots,
                    out: output::OutTree::new(engine.out_dir(&m.name), engine.stage_dir(&m.name)),
                    manifest_path: engine.manifest_path(&m.name),
                    state: &engine.state,
                    prev_gens: Vec::new(),
                    gens: Vec::new(),
                    scanned_at_ns: stamp,
                    force: false,
                    tampered: false,
                    owners: &engine.project.owners,
                };
                reporter.machine_started(&m.name, 0);
                match job.execute(prior, reporter) {
                    Ok((report, post)) => (m.name.clone(), Ok(report), Prior::after(post)),
                    Err((errors, graph)) => {
                        let mut p = Prior::rebuild(BTreeMap::new());
                        p.graph = graph;
                        (m.name.clone(), Err(errors), p)
                    }
                }
            })
            .collect();
        let mut outcomes = Vec::new();
        for (name, result, mut prior) in results {
            if result.is_err() {
                // the manifest on disk still lists what lab created
                prior.entries = self.manifest_entries(&name);
            }
            self.machines.insert(name.clone(), prior);
            outcomes.push(MachineOutcome { name, result });
        }
        self.dirty |= !outcomes.is_empty() || !touched.is_empty();
        Ok(CycleReport {
            changed,
            reloaded: false,
            build: BuildReport {
                files,
                hashed,
                machines: outcomes,
            },
        })
    }

    fn uses_root(&self, name: &str) -> bool {
        self.engine
            .select(&self.selection)
            .map(|ms| {
                ms.iter()
                    .any(|m| Engine::stack_names(m).iter().any(|n| n == name))
            })
            .unwrap_or(false)
    }

    /// Write the session's state to `.lab/state/`, so the next `lab build`
    /// starts from it. Does nothing when nothing changed.
    pub fn persist(&mut self) -> Result<(), EngineError> {
        if !self.dirty {
            return Ok(());
        }
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| EngineError::Io { path: p, source: e }
        };
        let scanned_at_ns = self
            .engine
            .state
            .stamp()
            .map_err(io(&self.engine.state.dir))?;
        // every root of the session gets a new generation
        let gens: HashMap<String, u64> = self
            .roots
            .iter_mut()
            .map(|(name, r)| {
                r.refresh_digests();
                r.changed.clear();
                (name.clone(), state::new_gen())
            })
            .collect();
        let engine = &self.engine;
        let (gathered, _) = engine.gathered();
        let prepared = engine.style().prepare(engine, &gathered, scanned_at_ns)?;
        for m in engine.select(&self.selection)? {
            let Some(prior) = self.machines.get(&m.name) else {
                continue;
            };
            let names = Engine::stack_names(m);
            let roots: Vec<&RootScan> = names.iter().filter_map(|n| self.roots.get(n)).collect();
            // The summary of what was built: the roots as the session has
            // them (their digests are brought up to date only now), the
            // external files as the build read them, and the facts, which
            // must still be those the build used.
            let record = match (&prior.inputs, &prior.record, roots.len() == names.len()) {
                (Some(inputs), Some(record), true) => prepared
                    .machine(m, roots.clone(), &crate::Silent)
                    .ok()
                    .filter(|model| model.inputs() == *inputs)
                    .map(|model| {
                        let files: Vec<(String, lab_graph::Digest)> = record
                            .files
                            .iter()
                            .map(|(p, f)| (p.clone(), f.digest))
                            .collect();
                        state::MachineSummary {
                            summary: crate::machine::full_summary(model.summary(), &files),
                            ..record.clone()
                        }
                    }),
                _ => None,
            };
            let (Some(inputs), Some(record)) = (&prior.inputs, record) else {
                // never built successfully in this session, or its facts
                // changed since: leave no state that vouches for these
                // outputs
                engine
                    .state
                    .forget_machine(&m.name)
                    .map_err(io(&engine.state.dir))?;
                continue;
            };
            let ms = state::MachineState {
                epoch: state::new_gen(),
                gens: names.iter().map(|n| gens[n]).collect(),
                stack: names.clone(),
                listings: roots.iter().map(|r| r.listing).collect(),
                inputs: inputs.clone(),
                graph: prior.graph.to_state(),
                entries: prior.entries.values().cloned().collect(),
            };
            engine
                .state
                .save_machine(&m.name, &ms, &record, &engine.manifest_path(&m.name))
                .map_err(|e| match e {
                    MachineError::Io { path, source } => EngineError::Io { path, source },
                    other => EngineError::Io {
                        path: engine.state.dir.clone(),
                        source: std::io::Error::other(other.to_string()),
                    },
                })?;
        }
        // Files written within the last clock tick are hashed again next
        // time: this moment is the roots' scan time.
        for (name, r) in &self.roots {
            engine
                .state
                .save_root(name, gens[name], r.to_state(scanned_at_ns))
                .map_err(io(&engine.state.root_path(name)))?;
        }
        self.dirty = false;
        Ok(())
    }
}
