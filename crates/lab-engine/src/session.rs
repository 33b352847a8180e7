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
//! Make-style (compat) projects, and edits of `lab.toml`, take the ordinary
//! path: a build of every selected machine, then a fresh session state.

use crate::machine::{MachineJob, Prior};
use crate::scan::{self, RootScan};
use crate::stack::Stack;
use crate::state::{self, MachineState, MachineSummary};
use crate::{
    facts, machine_summary, now_ns, output, BuildOptions, BuildReport, Engine, EngineError, Lock,
    MachineError, MachineOutcome, Reporter,
};
use lab_config::Project;
use lab_manifest::Manifest;
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
        let sources = self.engine.state.load_sources();
        self.roots.clear();
        self.scanned_at.clear();
        self.machines.clear();
        for m in &machines {
            for name in Engine::stack_names(m) {
                if let Some(st) = sources.roots.get(&name) {
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
        std::fs::read_to_string(self.engine.manifest_path(machine))
            .ok()
            .and_then(|t| Manifest::parse(&t).ok())
            .map(|m| m.entries)
            .unwrap_or_default()
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
        for p in paths {
            let rel = p.strip_prefix(&project_root).unwrap_or(p);
            let Some(rel) = rel.to_str() else { continue };
            let parts: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
            match parts.as_slice() {
                [".lab", ..] | [".git", ..] => continue,
                ["lab.toml"] => reload = true,
                [top @ ("layers" | "machines"), name, rest @ ..] => {
                    by_root
                        .entry(format!("{top}/{name}"))
                        .or_default()
                        .push(rest.join("/"));
                }
                ["layers" | "machines"] => reload = true,
                // A make-style build also reads fact files, the inventory,
                // and files that templates include or `!` links point to.
                _ if self.engine.project.compat.is_some() => {}
                _ => continue,
            }
            changed.push(rel.to_string());
        }
        changed.sort();
        changed.dedup();
        if reload || self.engine.project.compat.is_some() {
            // What the session built must be on disk before an ordinary
            // build takes over.
            self.persist()?;
            // A make-style project's machines and layers come from its
            // files (inventory, layer lists), so it is read again each time.
            if reload || self.engine.project.compat.is_some() {
                let project = Project::reload(&project_root)?;
                self.engine = Engine::new(project);
            }
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
                scan::scan_root(&project_root, &name, Some(&prev), &self.engine.ignore).map(|s| {
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
        self.build_touched(changed, touched, listing, root_errors, reporter)
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
                let r = scan::scan_root(&project_root, name, Some(&prev), ignore);
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
        self.build_touched(changed, touched, listing, root_errors, reporter)
    }

    /// Build the selected machines whose stack has a touched root.
    fn build_touched(
        &mut self,
        changed: Vec<String>,
        touched: HashSet<String>,
        listing: HashSet<String>,
        root_errors: HashMap<String, MachineError>,
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
        let affected: Vec<lab_config::Machine> = machines
            .into_iter()
            .filter(|m| Engine::stack_names(m).iter().any(|n| touched.contains(n)))
            .cloned()
            .collect();
        let (gathered, bad) = self.engine.gathered();
        let scopes = self.engine.scopes(&gathered)?;
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
                let mut errs: Vec<MachineError> = names
                    .iter()
                    .filter_map(|n| root_errors.get(n).map(crate::clone_error))
                    .collect();
                if let Some(e) = bad.get(&m.name) {
                    errs.push(MachineError::Io {
                        path: facts::gathered_path(engine.lab_dir(), &m.name),
                        source: std::io::Error::other(e.clone()),
                    });
                }
                for l in &m.layers {
                    let n = format!("layers/{}", l.name);
                    if l.name != "_" && roots.get(&n).is_none_or(|r| !r.exists) {
                        errs.push(MachineError::UnknownLayer {
                            machine: m.name.clone(),
                            layer: l.name.clone(),
                            at: Box::new(l.at.clone()),
                            known: engine.known_layers(),
                        });
                    }
                }
                if !errs.is_empty() {
                    return (m.name.clone(), Err(errs), prior);
                }
                let stack_roots: Vec<&RootScan> = names.iter().map(|n| &roots[n]).collect();
                prior.fast = prior.fast && !names.iter().any(|n| listing.contains(n));
                let job = MachineJob {
                    name: &m.name,
                    stack: Stack { roots: stack_roots },
                    scope: scopes[&m.name].clone(),
                    summary: lab_graph::Digest::ABSENT,
                    out: output::OutTree::new(engine.out_dir(&m.name), engine.stage_dir(&m.name)),
                    manifest_path: engine.manifest_path(&m.name),
                    state: &engine.state,
                    prev_scan_id: 0,
                    scan_id: 0,
                    force: false,
                    trust_outputs: true,
                    age: &self.engine.age,
                    owners: &self.engine.project.owners,
                };
                reporter.machine_started(&m.name, 0);
                match job.execute(prior, reporter) {
                    Ok((report, post)) => (
                        m.name.clone(),
                        Ok(report),
                        Prior {
                            graph: post.graph,
                            entries: post.entries,
                            inputs: Some(post.inputs),
                            fast: true,
                            manifest_current: true,
                        },
                    ),
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
        let scan_id = now_ns() as u64 ^ ((std::process::id() as u64) << 32);
        let mut sources = self.engine.state.load_sources();
        for (name, r) in self.roots.iter_mut() {
            r.refresh_digests();
            r.changed.clear();
            // Files written within the last clock tick are hashed again next
            // time: record this moment as the scan time.
            sources
                .roots
                .insert(name.clone(), r.to_state(scanned_at_ns));
        }
        sources.scan_id = scan_id;
        let (gathered, _) = self.engine.gathered();
        let scopes = self.engine.scopes(&gathered)?;
        for m in self.engine.select(&self.selection)? {
            let Some(prior) = self.machines.get(&m.name) else {
                continue;
            };
            let names = Engine::stack_names(m);
            let roots: Vec<&RootScan> = names.iter().filter_map(|n| self.roots.get(n)).collect();
            let (Some(inputs), true) = (&prior.inputs, roots.len() == names.len()) else {
                // never built successfully in this session: leave the old
                // state, which does not vouch for these outputs
                self.engine
                    .state
                    .forget_machine(&m.name)
                    .map_err(io(&self.engine.state.dir))?;
                continue;
            };
            let ms = MachineState {
                scan_id,
                stack: names.clone(),
                listings: roots.iter().map(|r| r.listing).collect(),
                inputs: inputs.clone(),
                graph: prior.graph.to_state(),
                entries: prior.entries.values().cloned().collect(),
            };
            let gp = self.engine.state.graph_path(&m.name);
            state::write(&gp, &ms).map_err(io(&gp))?;
            let mp = self.engine.manifest_path(&m.name);
            let manifest = std::fs::symlink_metadata(&mp).map_err(io(&mp))?;
            let sp = self.engine.state.summary_path(&m.name);
            state::write(
                &sp,
                &MachineSummary {
                    summary: machine_summary(
                        &m.name,
                        &roots,
                        &scopes[&m.name],
                        &self.engine.project.owners,
                    ),
                    manifest: scan::stat_of(&manifest),
                    files: Vec::new(),
                    files_scanned_at_ns: 0,
                },
            )
            .map_err(io(&sp))?;
        }
        let sp = self.engine.state.sources_path();
        state::write(&sp, &sources).map_err(io(&sp))?;
        self.dirty = false;
        Ok(())
    }
}
