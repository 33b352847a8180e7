//! Building one machine, whatever the project style: check its summary,
//! take what its last build left, decide what is dirty, make it, switch the
//! output tree, write the manifest, save the state. The style (a
//! [`MachineModel`]) says what the outputs are and how each is made.

use crate::output::OutTree;
use crate::scan;
use crate::state::{MachineDelta, MachineState, MachineSummary, StateDir};
use crate::style::{MachineModel, Made, Plan};
use crate::{MachineError, Reporter};
use lab_graph::{Digest, Fingerprint, Graph, Hasher, Key, Reason, Verdict};
use lab_manifest::{Entry, EntryKind, Manifest};
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

/// What happened to one machine.
#[derive(Clone, Debug, Default)]
pub struct MachineReport {
    /// Nothing to do: the summary matched.
    pub up_to_date: bool,
    /// Templates rendered.
    pub rendered: usize,
    /// Output paths (re)written.
    pub written: Vec<String>,
    /// Output paths removed.
    pub removed: Vec<String>,
    /// Entries in the manifest.
    pub entries: usize,
    /// Was the whole stack resolved (rather than only the changed paths)?
    pub full: bool,
    /// Was the manifest rewritten?
    pub manifest_changed: bool,
}

pub(crate) struct MachineJob<'a> {
    pub name: &'a str,
    pub model: Box<dyn MachineModel + 'a>,
    /// Root names of the stack, lowest first, and their listing digests
    /// and `changed` lists.
    pub roots: Vec<&'a scan::RootScan>,
    pub out: OutTree,
    pub manifest_path: PathBuf,
    pub state: &'a StateDir,
    /// The generation of each root's fingerprints the scan compared with
    /// (what its `changed` list is relative to), and the generation each
    /// root has after this build (see [`crate::state::RootFile::gen`]).
    pub prev_gens: Vec<u64>,
    pub gens: Vec<u64>,
    /// The stamp of this build's scan (see [`Fingerprint::reusable`]).
    pub scanned_at_ns: i64,
    pub force: bool,
    /// Outputs were changed behind lab's back since its last build: make
    /// them again (see [`outputs_changed`]; `false` when trusted).
    pub tampered: bool,
    /// `[[owners]]`, recorded in the manifest.
    pub owners: &'a [lab_config::OwnerRule],
}

/// What a machine's previous build left, as [`MachineJob::execute`] needs it.
pub(crate) struct Prior {
    pub graph: Graph,
    /// The entries lab wrote (it may remove them, and only them).
    pub entries: BTreeMap<String, Entry>,
    /// Input digests at that build (`None`: unknown).
    pub inputs: Option<HashMap<Key, Digest>>,
    /// May the roots' `changed` lists be taken as every change since that
    /// build (so only their dependents need checking)?
    pub fast: bool,
    /// Is the manifest on disk the one `entries` describe?
    pub manifest_current: bool,
    /// The summary the state of that build records (its manifest stat is
    /// taken again when saved); `None`: unknown.
    pub record: Option<MachineSummary>,
    /// The state files it came from, when a record may be appended to them.
    pub disk: Option<OnDisk>,
}

/// A machine's `.graph` and log as loaded (see `state`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct OnDisk {
    pub epoch: u64,
    pub base_len: u64,
    pub log_len: u64,
}

impl Prior {
    /// Nothing to trust but the list of what lab wrote: check every node.
    pub fn rebuild(entries: BTreeMap<String, Entry>) -> Prior {
        Prior {
            graph: Graph::new(),
            entries,
            inputs: None,
            fast: false,
            manifest_current: false,
            record: None,
            disk: None,
        }
    }

    /// What a build left in memory, for the next cycle of a watch session.
    pub fn after(post: Posterior) -> Prior {
        Prior {
            graph: post.graph,
            entries: post.entries,
            inputs: Some(post.inputs),
            fast: true,
            manifest_current: true,
            record: Some(post.record),
            disk: None,
        }
    }
}

/// What a build leaves for the next one.
pub(crate) struct Posterior {
    pub graph: Graph,
    pub entries: BTreeMap<String, Entry>,
    pub inputs: HashMap<Key, Digest>,
    /// The summary of what was built: the style's summary and the external
    /// files as the build saw them (not as they are when the state is
    /// saved, which may be later: a watch session saves when idle).
    pub record: MachineSummary,
    /// When the build looked only at what a change affects (and the
    /// `[[owners]]` left every entry as it was): the nodes it ran and the
    /// entries it wrote, all that changed.
    pub changed: Option<(Vec<Key>, Vec<String>)>,
}

/// A machine's summary as `.sum` records it: the style's summary and the
/// digests of the external files its nodes read.
pub(crate) fn full_summary(base: Digest, files: &[(String, Digest)]) -> Digest {
    let mut h = Hasher::new("lab-machine-summary-v1");
    h.digest(&base);
    for (p, d) in files {
        h.str(p).digest(d);
    }
    h.finish()
}

/// The entries listed in a manifest file (empty when there is none).
pub(crate) fn manifest_entries(path: &std::path::Path) -> BTreeMap<String, Entry> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| Manifest::parse(&t).ok())
        .map(|m| m.entries)
        .unwrap_or_default()
}

/// Were a machine's outputs changed behind lab's back (see `output`)
/// since the build that wrote its manifest? One `lstat` per output entry;
/// `false` when there is no such build (it is made in full anyway). Run
/// by the build beside the sources' scan, so both share the cores.
pub(crate) fn outputs_changed(
    state: &StateDir,
    name: &str,
    out: &std::path::Path,
    manifest: &std::path::Path,
) -> bool {
    let Some(summary) = state.load_summary(name) else {
        return false;
    };
    match std::fs::symlink_metadata(manifest) {
        Ok(m) if summary.manifest == scan::stat_of(&m) => {
            crate::output::changed_since(out, summary.manifest.mtime_ns)
        }
        _ => false,
    }
}

impl MachineJob<'_> {
    fn root_names(&self) -> Vec<String> {
        self.roots.iter().map(|r| r.name.clone()).collect()
    }

    fn listings(&self) -> Vec<Digest> {
        self.roots.iter().map(|r| r.listing).collect()
    }

    /// Build the machine against the state on disk, and save the new state.
    pub fn run(mut self, reporter: &dyn Reporter) -> Result<MachineReport, Vec<MachineError>> {
        let manifest_stat = std::fs::symlink_metadata(&self.manifest_path)
            .ok()
            .map(|m| scan::stat_of(&m));
        let summary = self.state.load_summary(self.name);
        let prior_files: Arc<HashMap<String, Fingerprint>> = Arc::new(
            summary
                .as_ref()
                .map(|s| s.files.iter().cloned().collect())
                .unwrap_or_default(),
        );
        let stamp = summary.as_ref().map_or(i64::MIN, |s| s.files_scanned_at_ns);
        self.model.set_external_prior(prior_files, stamp);
        self.out.remove_leftover_stage();
        let tampered = self.tampered;

        if !self.force && !tampered {
            if let Some(s) = &summary {
                if Some(s.manifest) == manifest_stat {
                    let now: Vec<(String, Digest)> = s
                        .files
                        .iter()
                        .map(|(p, _)| {
                            let d = self.model.external(p).map_or(Digest::ABSENT, |f| f.digest);
                            (p.clone(), d)
                        })
                        .collect();
                    if s.summary == full_summary(self.model.summary(), &now) {
                        return Ok(MachineReport {
                            up_to_date: true,
                            ..Default::default()
                        });
                    }
                }
            }
        }

        // What was built before. Outputs behind lab's back (manifest missing
        // or changed, or entries changed after it) mean the graph cannot be
        // trusted; the old entries still say what lab created and may remove.
        let prev = self.state.load_machine_log(self.name);
        let trusted = !tampered
            && manifest_stat.is_some()
            && summary.is_some_and(|s| Some(s.manifest) == manifest_stat);
        if !trusted {
            // (a build from scratch is the time to sweep what a killed
            // build of an older lab left in the tree)
            self.out.remove_old_temporaries();
        }
        let names = self.root_names();
        let listings = self.listings();
        let prior = match prev {
            Some(loaded) => {
                let disk = loaded.log_intact.then_some(OnDisk {
                    epoch: loaded.state.epoch,
                    base_len: loaded.base_len,
                    log_len: loaded.log_len,
                });
                let ms = loaded.state;
                let entries: BTreeMap<String, Entry> = ms
                    .entries
                    .into_iter()
                    .map(|e| (e.path.clone(), e))
                    .collect();
                if trusted && !self.force {
                    Prior {
                        fast: !ms.gens.is_empty()
                            && ms.gens == self.prev_gens
                            && ms.stack == names
                            && ms.listings == listings,
                        graph: Graph::from_state(ms.graph),
                        entries,
                        inputs: Some(ms.inputs),
                        manifest_current: true,
                        record: None,
                        disk,
                    }
                } else {
                    // What lab wrote is in the state and, if a watch session
                    // wrote more after the state was saved, in the manifest.
                    let mut entries = entries;
                    entries.extend(manifest_entries(&self.manifest_path));
                    Prior::rebuild(entries)
                }
            }
            None => Prior::rebuild(manifest_entries(&self.manifest_path)),
        };
        let disk = prior.disk;
        let (report, post) = self.execute(prior, reporter).map_err(|(e, _)| e)?;
        match (disk, &post.changed) {
            // a log no larger than the `.graph` it extends: append
            (Some(disk), Some((nodes, entries))) if disk.log_len < disk.base_len => {
                let delta = MachineDelta {
                    gens: self.gens.clone(),
                    listings: self.listings(),
                    inputs: post.inputs.clone(),
                    nodes: nodes
                        .iter()
                        .filter_map(|k| post.graph.trace(k).map(|t| (k.clone(), t.clone())))
                        .collect(),
                    entries: entries
                        .iter()
                        .filter_map(|p| post.entries.get(p).cloned())
                        .collect(),
                };
                self.state
                    .append_machine(
                        self.name,
                        disk.epoch,
                        &delta,
                        &post.record,
                        &self.manifest_path,
                    )
                    .map_err(|e| vec![e])?;
            }
            _ => self
                .save(&post.graph, &post.entries, &post.inputs, &post.record)
                .map_err(|e| vec![e])?,
        }
        Ok(report)
    }

    /// Save what a build left (see [`StateDir::save_machine`]): by a build,
    /// and by a watch session for what it built in memory.
    pub fn save(
        &self,
        graph: &Graph,
        entries: &BTreeMap<String, Entry>,
        inputs: &HashMap<Key, Digest>,
        record: &MachineSummary,
    ) -> Result<(), MachineError> {
        let ms = MachineState {
            epoch: crate::state::new_gen(),
            gens: self.gens.clone(),
            stack: self.root_names(),
            listings: self.listings(),
            inputs: inputs.clone(),
            graph: graph.to_state(),
            entries: entries.values().cloned().collect(),
        };
        self.state
            .save_machine(self.name, &ms, record, &self.manifest_path)
    }

    /// The summary record of a build whose graph is `graph`.
    fn record(&self, graph: &Graph) -> MachineSummary {
        let files: Vec<(String, Option<Fingerprint>)> = self
            .model
            .external_names(graph)
            .into_iter()
            .map(|p| {
                let fp = self.model.external(&p);
                (p, fp)
            })
            .collect();
        let digests: Vec<(String, Digest)> = files
            .iter()
            .map(|(p, f)| (p.clone(), f.map_or(Digest::ABSENT, |f| f.digest)))
            .collect();
        MachineSummary {
            summary: full_summary(self.model.summary(), &digests),
            manifest: lab_graph::Stat {
                mtime_ns: 0,
                size: 0,
                ino: 0,
                mode: 0,
            },
            // A missing file is recorded with an impossible stat, so it is
            // looked at again next time.
            files: files
                .into_iter()
                .map(|(p, f)| {
                    (
                        p,
                        f.unwrap_or(Fingerprint {
                            stat: lab_graph::Stat {
                                mtime_ns: i64::MAX,
                                size: u64::MAX,
                                ino: 0,
                                mode: 0,
                            },
                            digest: Digest::ABSENT,
                        }),
                    )
                })
                .collect(),
            files_scanned_at_ns: self.scanned_at_ns,
        }
    }

    /// The core of a build: check the nodes a change may affect, make what
    /// is dirty, write the manifest when it changed. Works from `prior`
    /// (from disk, or kept in memory by a watch session) and returns what
    /// the next build needs.
    ///
    /// On failure the graph comes back too (it records only what really
    /// ran), so a watch session keeps it; the entries do not: the manifest
    /// on disk still lists every path lab created.
    #[allow(clippy::type_complexity, clippy::result_large_err)]
    pub fn execute(
        &mut self,
        prior: Prior,
        reporter: &dyn Reporter,
    ) -> Result<(MachineReport, Posterior), (Vec<MachineError>, Graph)> {
        let Prior {
            mut graph,
            entries,
            inputs,
            fast,
            manifest_current,
            record: _,
            disk: _,
        } = prior;
        match self.execute_inner(
            &mut graph,
            entries,
            inputs,
            fast,
            manifest_current,
            reporter,
        ) {
            Ok((report, entries, changed)) => {
                let record = self.record(&graph);
                Ok((
                    report,
                    Posterior {
                        graph,
                        entries,
                        inputs: self.model.inputs(),
                        record,
                        changed,
                    },
                ))
            }
            Err(e) => Err((e, graph)),
        }
    }

    /// The keys whose change a fast build follows: each changed path of a
    /// root, and each input whose digest differs from `prev`.
    fn changed_keys(&self, prev: &HashMap<Key, Digest>) -> Vec<Key> {
        let mut changed: Vec<Key> = Vec::new();
        for (ri, root) in self.roots.iter().enumerate() {
            for rel in &root.changed {
                changed.extend(self.model.source_keys(ri, rel));
            }
        }
        let now = self.model.inputs();
        for (k, d) in &now {
            if prev.get(k) != Some(d) {
                changed.push(k.clone());
            }
        }
        for k in prev.keys() {
            if !now.contains_key(k) {
                changed.push(k.clone());
            }
        }
        changed
    }

    fn execute_inner(
        &mut self,
        graph: &mut Graph,
        mut old_entries: BTreeMap<String, Entry>,
        prev_inputs: Option<HashMap<Key, Digest>>,
        fast: bool,
        manifest_current: bool,
        reporter: &dyn Reporter,
    ) -> Result<Executed, Vec<MachineError>> {
        let fast = fast && prev_inputs.is_some() && self.model.incremental();
        // the nodes recorded (what a fast build changed in the graph)
        let mut recorded: Vec<Key> = Vec::new();
        let plan: Plan = if fast {
            let prev = prev_inputs.as_ref().expect("fast needs inputs");
            let changed = self.changed_keys(prev);
            let outs: BTreeSet<String> = graph
                .affected(changed.iter())
                .into_iter()
                .filter_map(|k| match k {
                    Key::Output(p) => Some(p),
                    _ => None,
                })
                .collect();
            // a step's output is an output too
            self.model.plan(Some(outs)).map_err(|e| vec![e])?
        } else {
            self.model.plan(None).map_err(|e| vec![e])?
        };
        let model: &dyn MachineModel = &*self.model;
        let name = self.name;
        reporter.machine_started(name, plan.outs.len());
        let input = |k: &Key| model.input(k);

        // Steps (renders), in parallel.
        let to_step: Vec<(&String, Key, Reason)> = plan
            .outs
            .keys()
            .filter_map(|out| {
                let k = model.step(out)?;
                match graph.check(&k, &input) {
                    Verdict::Clean(_) => None,
                    Verdict::Dirty(r) => Some((out, k, r)),
                }
            })
            .collect();
        let stepped: Vec<(String, Key, Result<Made, MachineError>)> = to_step
            .into_par_iter()
            .map(|(out, k, reason)| {
                reporter.node_ran(name, &k, &reason);
                let r = model.run_step(out);
                reporter.progress(name);
                (out.clone(), k, r)
            })
            .collect();
        let mut errors = Vec::new();
        let mut bytes_of: HashMap<String, Vec<u8>> = HashMap::new();
        let mut n_rendered = stepped.len();
        for (out, k, r) in stepped {
            match r {
                Ok(m) => {
                    recorded.push(k.clone());
                    graph.record(k, m.trace);
                    bytes_of.insert(out, m.bytes.unwrap_or_default());
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        // Outputs to (re)make.
        let mut dirty: Vec<(&String, Reason)> = Vec::new();
        // Fast: the old entries are the new ones but for what changes.
        let mut entries = if fast {
            std::mem::take(&mut old_entries)
        } else {
            BTreeMap::new()
        };
        for out in plan.outs.keys() {
            let verdict = graph.check(&Key::Output(out.clone()), &input);
            let known = if fast {
                entries.contains_key(out)
            } else {
                old_entries.contains_key(out)
            };
            match (verdict, known) {
                (Verdict::Clean(_), true) => {
                    if !fast {
                        entries.insert(out.clone(), old_entries[out].clone());
                    }
                }
                (Verdict::Clean(_), false) => dirty.push((out, Reason::NeverBuilt)),
                (Verdict::Dirty(r), _) => dirty.push((out, r)),
            }
        }
        for (path, mode) in &plan.dirs {
            entries.insert(path.clone(), dir_entry(path, *mode));
        }
        // An output whose step is clean but which must be made again (lost
        // output) needs the step's bytes.
        for (out, _) in &dirty {
            if let Some(k) = model.step(out) {
                if !bytes_of.contains_key(*out) {
                    match model.run_step(out) {
                        Ok(m) => {
                            recorded.push(k.clone());
                            graph.record(k, m.trace);
                            bytes_of.insert((*out).clone(), m.bytes.unwrap_or_default());
                        }
                        Err(e) => errors.push(e),
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        for w in model.warnings() {
            reporter.warning(Some(name), &w);
        }

        // Paths no longer produced, and the nodes that made them.
        let gone: Vec<String> = if fast {
            Vec::new()
        } else {
            old_entries
                .keys()
                .filter(|p| !plan.outs.contains_key(*p) && !plan.dirs.contains_key(*p))
                .cloned()
                .collect()
        };
        if !fast {
            let live_steps: BTreeSet<Key> =
                plan.outs.keys().filter_map(|o| model.step(o)).collect();
            let stale: Vec<Key> = graph
                .computed()
                .filter_map(|(k, _)| match k {
                    Key::Output(p) if !plan.outs.contains_key(p) => Some(k.clone()),
                    Key::Output(_) => None,
                    other if !live_steps.contains(other) => Some(k.clone()),
                    _ => None,
                })
                .collect();
            for k in stale {
                graph.remove(&k);
            }
        }

        // Make and stage them, in parallel. A failure leaves the previous
        // outputs untouched.
        for (out, reason) in &dirty {
            reporter.node_ran(name, &Key::Output((*out).clone()), reason);
        }
        let out_tree = &self.out;
        let mut made: Vec<(String, Result<Made, MachineError>)> = Vec::new();
        {
            let graph: &Graph = graph;
            let dirty = &dirty;
            let bytes_of = &bytes_of;
            let made = &mut made;
            let heavy: Vec<&str> = dirty.iter().map(|(o, _)| o.as_str()).collect();
            model.run_makes(&heavy, &mut || {
                *made = dirty
                    .par_iter()
                    .map(|(out, _)| {
                        let r = model
                            .make(out, graph, bytes_of.get(*out).map(Vec::as_slice))
                            .and_then(|mut m| {
                                let entry = m.entry.as_ref().expect("outputs make entries");
                                out_tree.write(entry, m.bytes.as_deref().unwrap_or_default())?;
                                // staged: the bytes are not needed any more
                                m.bytes = None;
                                Ok(m)
                            });
                        reporter.progress(name);
                        ((*out).clone(), r)
                    })
                    .collect();
            });
        }
        let mut written_paths = Vec::new();
        let mut dir_nodes = Vec::new();
        for (out, r) in made {
            match r {
                Ok(m) => {
                    n_rendered += m.rendered as usize;
                    recorded.push(Key::Output(out.clone()));
                    graph.record(Key::Output(out.clone()), m.trace);
                    let entry = m.entry.expect("outputs make entries");
                    if entry.is_dir() {
                        dir_nodes.push(out.clone());
                    }
                    entries.insert(out.clone(), entry);
                    written_paths.push(out);
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            self.out.discard();
            return Err(errors);
        }

        // Everything new is staged: switch. Removals, directories, then the
        // staged files and symlinks. The tree's root exists even when the
        // tree is empty.
        std::fs::create_dir_all(&self.out.root)
            .map_err(|e| vec![MachineError::io(&self.out.root)(e)])?;
        let is_dir = |p: &str| -> Option<bool> {
            if plan.dirs.contains_key(p) {
                Some(true)
            } else if let Some(d) = plan.outs.get(p) {
                Some(*d)
            } else {
                entries.get(p).map(|e| e.is_dir())
            }
        };
        // (a fast build changes no path's existence or kind)
        let removed = if fast {
            Vec::new()
        } else {
            self.out
                .remove_stale(&old_entries, &is_dir)
                .map_err(|e| vec![e])?
        };
        self.out.commit().map_err(|e| vec![e])?;
        for p in &gone {
            entries.remove(p);
        }
        // Directory modes last, so a read-only directory can still be
        // filled first: the directory nodes made now, then the plan's
        // directories that are new or changed mode.
        for out in &dir_nodes {
            self.out.make_dir(&entries[out]).map_err(|e| vec![e])?;
        }
        for (path, mode) in &plan.dirs {
            let same = old_entries
                .get(path)
                .is_some_and(|e| e.is_dir() && e.mode == *mode);
            if !same || !self.out.path(path).is_dir() {
                self.out.make_dir(&entries[path]).map_err(|e| vec![e])?;
                if !same {
                    written_paths.push(path.clone());
                }
            }
        }

        // The manifest, when it changed.
        let mut manifest = Manifest::new(name);
        manifest.entries = entries;
        let owners_changed = crate::output::apply_owners(&mut manifest.entries, self.owners);
        let manifest_changed = owners_changed
            || !written_paths.is_empty()
            || !removed.is_empty()
            || !gone.is_empty()
            || !manifest_current
            || !self.manifest_path.exists();
        // A fast build changes no path's existence or kind: the lines of
        // what it wrote are rewritten where they are, when they keep their
        // length (see `output::patch_manifest`).
        let patched = manifest_changed
            && fast
            && manifest_current
            && !owners_changed
            && removed.is_empty()
            && gone.is_empty()
            && {
                let changed: Option<Vec<&Entry>> = written_paths
                    .iter()
                    .map(|p| manifest.entries.get(p))
                    .collect();
                changed.is_some_and(|c| {
                    crate::output::patch_manifest(&self.manifest_path, &c).unwrap_or(false)
                })
            };
        if manifest_changed && !patched {
            crate::state::write_atomic(&self.manifest_path, manifest.to_text().as_bytes())
                .map_err(|e| {
                    vec![MachineError::Io {
                        path: self.manifest_path.clone(),
                        source: e,
                    }]
                })?;
        }
        let n_entries = manifest.len();
        let mut removed_all = removed;
        removed_all.extend(gone);
        removed_all.sort();
        removed_all.dedup();
        written_paths.sort();
        let changed = (fast && !owners_changed).then(|| (recorded, written_paths.clone()));
        Ok((
            MachineReport {
                up_to_date: false,
                rendered: n_rendered,
                written: written_paths,
                removed: removed_all,
                entries: n_entries,
                full: !fast,
                manifest_changed,
            },
            manifest.entries,
            changed,
        ))
    }
}

/// The nodes a fast build recorded and the entries it wrote.
type Changed = (Vec<Key>, Vec<String>);

/// What [`MachineJob::execute_inner`] gives back: the report, the entries
/// of the new manifest, and what a fast build changed.
type Executed = (MachineReport, BTreeMap<String, Entry>, Option<Changed>);

fn dir_entry(path: &str, mode: u32) -> Entry {
    Entry {
        path: path.to_string(),
        mode,
        kind: EntryKind::Dir,
        owner: None,
        group: None,
    }
}
