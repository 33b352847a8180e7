//! Building one machine of a make-style lab (`[compat]`, or a project
//! without lab.toml that has the make layout).
//!
//! It shares the scan, the graph, the state files, the output writer and
//! the manifest with native builds; what differs is the source model
//! ([`plan`]), m4 instead of minijinja, and the inputs a node can read:
//!
//! - a copied file or symlink, and a link-list symlink, depend on their
//!   [`Key::Source`] (origin, kind, mode, content or target);
//! - a followed (`!`) symlink also depends on [`Key::File`] of itself,
//!   whose digest is the content and mode of whatever it points to, inside
//!   or outside the project;
//! - an m4 template depends on its source, on all the machine's facts
//!   ([`Key::Facts`]: m4 gets every fact), and on [`Key::File`] of every
//!   file m4 opened (preludes, `m4_include`s, the template itself when it
//!   is a symlink) plus every literal `m4_include`/`m4_sinclude` name that
//!   did not exist (so creating it later re-renders).
//!
//! Each machine's plan is resolved in full whenever the machine is not up
//! to date (a few microseconds per source); the graph then decides which
//! outputs to write. A machine is up to date when its summary (roots,
//! facts, settings, and the digests of the [`Key::File`]s it read) is.

mod files;
mod plan;
mod show;

pub use files::FileCache;
pub use plan::{is_template, output_name};

use crate::output::OutTree;
use crate::scan::{self, RootScan, SrcKind};
use crate::state::{self, MachineState, MachineSummary, StateDir};
use crate::{MachineError, MachineReport, Reporter};
use indexmap::IndexMap;
use lab_graph::{Digest, Fingerprint, Graph, Hasher, Key, Reason, Trace, Verdict};
use lab_manifest::{Entry, EntryKind, Manifest};
use plan::{How, Out};
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Threads that make outputs. An m4 render is mostly a wait for a child
/// process (exec, dynamic loading, locale setup), so renders run with more
/// threads than there are workers: `RENDERS_PER_WORKER` per worker thread
/// (`-j`). Created on first use, so a no-op build starts no threads.
pub struct RenderPool {
    threads: usize,
    pool: std::sync::OnceLock<Option<rayon::ThreadPool>>,
}

const RENDERS_PER_WORKER: usize = 4;

impl RenderPool {
    pub fn new(workers: usize) -> RenderPool {
        RenderPool {
            threads: workers.max(1) * RENDERS_PER_WORKER,
            pool: std::sync::OnceLock::new(),
        }
    }

    fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let pool = self.pool.get_or_init(|| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(self.threads)
                .thread_name(|i| format!("lab-m4-{i}"))
                .build()
                .ok()
        });
        match pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }
}

/// The warning for a listed layer that does not exist. A name that ends in
/// a carriage return comes from a layer list with CRLF line endings: make
/// reads that name as it is (and finds no such layer) and so does lab, but
/// the warning says why.
pub fn missing_layer_warning(name: &str, at: &lab_config::Located) -> String {
    let mut w = format!(
        "layer `{}` (listed at {at}) does not exist; it contributes nothing",
        name.escape_debug()
    );
    if name.ends_with('\r') {
        w.push_str(
            " (the layer list has CRLF line endings; make reads the name with its `\\r` too)",
        );
    }
    w
}

/// The digest of a fact set as m4 gets it.
pub fn facts_digest(facts: &IndexMap<String, String>) -> Digest {
    let mut h = Hasher::new("lab-compat-facts-v1");
    for (k, v) in facts {
        h.str(k).str(v);
    }
    h.finish()
}

pub(crate) struct CompatJob<'a> {
    pub name: &'a str,
    pub project_root: &'a Path,
    pub roots: Vec<&'a RootScan>,
    pub copies: &'a [lab_config::compat::CompatCopy],
    pub facts: IndexMap<String, String>,
    pub preludes: Vec<String>,
    /// The m4 program, or why there is none.
    pub m4: &'a Result<PathBuf, String>,
    /// Digest of everything but the followed files.
    pub base_summary: Digest,
    pub files: &'a FileCache,
    pub scanned_at_ns: i64,
    pub render_pool: &'a RenderPool,
    pub out: OutTree,
    pub manifest_path: PathBuf,
    pub state: &'a StateDir,
    pub scan_id: u64,
    pub force: bool,
    /// See [`crate::BuildOptions::trust_outputs`].
    pub trust_outputs: bool,
    /// `[[owners]]`, recorded in the manifest.
    pub owners: &'a [lab_config::OwnerRule],
}

/// The summary of a machine: its base summary and the digests of the
/// followed files it read. The tag changes when the rules change (v2: the
/// final mode fix-up, agreeing duplicate sources, only the style's gathered
/// facts), so outputs of an older lab are not taken as up to date.
fn full_summary(base: Digest, files: &[(String, Digest)]) -> Digest {
    let mut h = Hasher::new("lab-compat-summary-v2");
    h.digest(&base);
    for (p, d) in files {
        h.str(p).digest(d);
    }
    h.finish()
}

/// An output entry made in memory, not yet written.
struct Built {
    entry: Entry,
    bytes: Option<Vec<u8>>,
    trace: Trace,
    rendered: bool,
}

impl CompatJob<'_> {
    pub fn run(self, reporter: &dyn Reporter) -> Result<MachineReport, Vec<MachineError>> {
        let manifest_stat = std::fs::symlink_metadata(&self.manifest_path)
            .ok()
            .map(|m| scan::stat_of(&m));
        let summary = self.state.load_summary(self.name);
        let prev_files: HashMap<String, Fingerprint> = summary
            .as_ref()
            .map(|s| s.files.iter().cloned().collect())
            .unwrap_or_default();
        let prev_stamp = summary.as_ref().map_or(i64::MIN, |s| s.files_scanned_at_ns);
        let file_digest = |p: &str| -> Digest {
            self.files
                .digest(p, prev_files.get(p).map(|f| (f, prev_stamp)))
        };
        self.out.remove_leftover_stage();
        // Outputs changed behind lab's back (see `output`) are made again.
        let tampered = match (&summary, manifest_stat) {
            (Some(s), Some(m)) if s.manifest == m && !self.trust_outputs => {
                self.out.changed_since(m.mtime_ns)
            }
            _ => false,
        };

        if !self.force && !tampered {
            if let Some(s) = &summary {
                let now: Vec<(String, Digest)> = s
                    .files
                    .iter()
                    .map(|(p, _)| (p.clone(), file_digest(p)))
                    .collect();
                if s.summary == full_summary(self.base_summary, &now)
                    && Some(s.manifest) == manifest_stat
                {
                    return Ok(MachineReport {
                        up_to_date: true,
                        ..Default::default()
                    });
                }
            }
        }

        let prev = self.state.load_machine(self.name);
        let trusted = !tampered
            && manifest_stat.is_some()
            && summary.is_some_and(|s| Some(s.manifest) == manifest_stat);
        if !trusted {
            // (a build from scratch is the time to sweep what a killed
            // build of an older lab left in the tree)
            self.out.remove_old_temporaries();
        }
        let (mut graph, old_entries) = match prev {
            Some(ms) => {
                let entries: BTreeMap<String, Entry> = ms
                    .entries
                    .iter()
                    .map(|e| (e.path.clone(), e.clone()))
                    .collect();
                if trusted && !self.force {
                    (Graph::from_state(ms.graph), entries)
                } else {
                    (Graph::new(), entries)
                }
            }
            None => {
                let entries = std::fs::read_to_string(&self.manifest_path)
                    .ok()
                    .and_then(|t| Manifest::parse(&t).ok())
                    .map(|m| m.entries)
                    .unwrap_or_default();
                (Graph::new(), entries)
            }
        };

        let plan = plan::resolve(self.name, &self.roots, self.copies).map_err(|e| vec![e])?;
        reporter.machine_started(self.name, plan.outs.len());
        let facts_d = facts_digest(&self.facts);
        let input = |k: &Key| -> Option<Digest> {
            match k {
                Key::Source(out) => plan
                    .outs
                    .get(out)
                    .map(|o| plan::source_digest(o, &self.roots, None)),
                Key::File(p) => Some(file_digest(p)),
                Key::Facts => Some(facts_d),
                _ => None,
            }
        };

        // Which outputs must be (re)built.
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        let mut dirty: Vec<(&String, &Out, Reason)> = Vec::new();
        for (path, out) in &plan.outs {
            match (
                graph.check(&Key::Output(path.clone()), &input),
                old_entries.get(path),
            ) {
                (Verdict::Clean(_), Some(e)) => {
                    entries.insert(path.clone(), e.clone());
                }
                (Verdict::Clean(_), None) => dirty.push((path, out, Reason::NeverBuilt)),
                (Verdict::Dirty(r), _) => dirty.push((path, out, r)),
            }
        }
        for (path, mode) in &plan.dirs {
            entries.insert(
                path.clone(),
                Entry {
                    path: path.clone(),
                    mode: *mode,
                    kind: EntryKind::Dir,
                    owner: None,
                    group: None,
                },
            );
        }

        // Make them in memory, in parallel. A failure leaves the previous
        // outputs untouched.
        for (path, _, reason) in &dirty {
            reporter.node_ran(self.name, &Key::Output((*path).clone()), reason);
        }
        let make = || -> Vec<(String, Result<Built, MachineError>)> {
            dirty
                .par_iter()
                .map(|(path, out, _)| {
                    let r = self.make_one(path, out, &file_digest, facts_d);
                    reporter.progress(self.name);
                    ((*path).clone(), r)
                })
                .collect()
        };
        let renders = dirty
            .iter()
            .filter(|(_, o, _)| o.how == How::Template)
            .count();
        let made = if renders > 1 {
            self.render_pool.install(make)
        } else {
            make()
        };
        let mut errors = Vec::new();
        let mut built = Vec::with_capacity(made.len());
        for (path, r) in made {
            match r {
                Ok(b) => built.push((path, b)),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        // Stage files and symlinks in parallel; then switch (see `output`):
        // removals, then the staged entries.
        let results: Vec<Result<(), MachineError>> = built
            .par_iter()
            .map(|(_, b)| {
                self.out
                    .write(&b.entry, b.bytes.as_deref().unwrap_or_default())
            })
            .collect();
        let errors: Vec<MachineError> = results.into_iter().filter_map(Result::err).collect();
        if !errors.is_empty() {
            self.out.discard();
            return Err(errors);
        }
        std::fs::create_dir_all(&self.out.root)
            .map_err(|e| vec![MachineError::io(&self.out.root)(e)])?;
        let is_dir = |p: &str| -> Option<bool> {
            if plan.dirs.contains_key(p) {
                Some(true)
            } else if plan.outs.contains_key(p) {
                Some(false)
            } else {
                None
            }
        };
        let removed = self
            .out
            .remove_stale(&old_entries, &is_dir)
            .map_err(|e| vec![e])?;
        self.out.commit().map_err(|e| vec![e])?;
        let mut written = Vec::new();
        let mut rendered = 0;
        for (path, b) in built {
            rendered += b.rendered as usize;
            graph.record(Key::Output(path.clone()), b.trace);
            entries.insert(path.clone(), b.entry);
            written.push(path);
        }
        // Directories: new ones and mode changes, deepest last so a parent's
        // mode is set after its children exist.
        for (path, mode) in &plan.dirs {
            let same = old_entries
                .get(path)
                .is_some_and(|e| e.is_dir() && e.mode == *mode);
            if !same || !self.out.path(path).is_dir() {
                self.out.make_dir(&entries[path]).map_err(|e| vec![e])?;
                if !same {
                    written.push(path.clone());
                }
            }
        }
        let gone: Vec<String> = old_entries
            .keys()
            .filter(|p| !entries.contains_key(*p))
            .cloned()
            .collect();
        let stale: Vec<Key> = graph
            .computed()
            .filter_map(|(k, _)| match k {
                Key::Output(p) if !plan.outs.contains_key(p) => Some(k.clone()),
                Key::Render(_) => Some(k.clone()),
                _ => None,
            })
            .collect();
        for k in stale {
            graph.remove(&k);
        }

        // Manifest, graph state, summary (in that order; see `state`).
        let mut manifest = Manifest::new(self.name);
        manifest.entries = entries;
        let owners_changed = crate::output::apply_owners(&mut manifest.entries, self.owners);
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| vec![MachineError::Io { path: p, source: e }]
        };
        let changed = owners_changed
            || !written.is_empty()
            || !removed.is_empty()
            || !gone.is_empty()
            || !trusted
            || manifest_stat.is_none();
        if changed {
            state::write_atomic(&self.manifest_path, manifest.to_text().as_bytes())
                .map_err(io(&self.manifest_path))?;
        }
        let n_entries = manifest.len();
        let file_keys: BTreeSet<String> = graph
            .computed()
            .flat_map(|(_, t)| t.deps.iter())
            .filter_map(|(k, _)| match k {
                Key::File(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        let files: Vec<(String, Option<Fingerprint>)> = file_keys
            .into_iter()
            .map(|p| {
                let fp = self
                    .files
                    .fingerprint(&p, prev_files.get(&p).map(|f| (f, prev_stamp)));
                (p, fp)
            })
            .collect();
        let ms = MachineState {
            scan_id: self.scan_id,
            stack: self.roots.iter().map(|r| r.name.clone()).collect(),
            listings: self.roots.iter().map(|r| r.listing).collect(),
            inputs: HashMap::from([(Key::Facts, facts_d)]),
            graph: graph.to_state(),
            entries: manifest.entries.into_values().collect(),
        };
        let gp = self.state.graph_path(self.name);
        state::write(&gp, &ms).map_err(io(&gp))?;
        let manifest_stat = std::fs::symlink_metadata(&self.manifest_path)
            .map(|m| scan::stat_of(&m))
            .map_err(io(&self.manifest_path))?;
        let digests: Vec<(String, Digest)> = files
            .iter()
            .map(|(p, f)| (p.clone(), f.map_or(Digest::ABSENT, |f| f.digest)))
            .collect();
        let sp = self.state.summary_path(self.name);
        state::write(
            &sp,
            &MachineSummary {
                summary: full_summary(self.base_summary, &digests),
                manifest: manifest_stat,
                // A missing file is recorded with an impossible stat, so it
                // is looked at again next time.
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
            },
        )
        .map_err(io(&sp))?;

        let mut removed_all = removed;
        removed_all.extend(gone);
        removed_all.sort();
        removed_all.dedup();
        written.sort();
        Ok(MachineReport {
            up_to_date: false,
            rendered,
            written,
            removed: removed_all,
            entries: n_entries,
            full: true,
            manifest_changed: changed,
        })
    }

    /// Make one output entry in memory. A path with several sources makes
    /// each of them: they must agree (same kind, mode, bytes or link
    /// target), or the machine fails naming the first two that differ. The
    /// entry then depends on everything any of them read.
    fn make_one(
        &self,
        path: &str,
        out: &Out,
        file_digest: &dyn Fn(&str) -> Digest,
        facts_d: Digest,
    ) -> Result<Built, MachineError> {
        let mut b = self.make_single(path, out, file_digest, facts_d)?;
        if out.also.is_empty() {
            return Ok(b);
        }
        for other in &out.also {
            let o = self.make_single(path, other, file_digest, facts_d)?;
            if o.entry != b.entry {
                return Err(MachineError::CompatConflict {
                    output: path.to_string(),
                    first: out.origin.clone(),
                    second: other.origin.clone(),
                });
            }
            b.rendered |= o.rendered;
            for (k, d) in o.trace.deps {
                if !b.trace.deps.iter().any(|(x, _)| *x == k) {
                    b.trace.deps.push((k, d));
                }
            }
        }
        let all = plan::source_digest(out, &self.roots, None);
        for (k, d) in &mut b.trace.deps {
            if matches!(k, Key::Source(_)) {
                *d = all;
            }
        }
        Ok(b)
    }

    /// Make the entry one source gives for `path`.
    fn make_single(
        &self,
        path: &str,
        out: &Out,
        file_digest: &dyn Fn(&str) -> Digest,
        facts_d: Digest,
    ) -> Result<Built, MachineError> {
        let src_key = out.src_path(&self.roots);
        let abs = self.project_root.join(&src_key);
        let source = Key::Source(path.to_string());
        let (entry, bytes, deps, rendered) = match &out.how {
            How::Copy => {
                let data = std::fs::read(&abs).map_err(MachineError::io(&abs))?;
                let d = plan::source_digest(out, &self.roots, Some(Digest::of(&data)));
                let mode = self.roots[out.root].entries[&out.src].perm() & 0o755;
                (
                    file_entry(path, mode, &data),
                    Some(data),
                    vec![(source, d)],
                    false,
                )
            }
            How::Link => {
                let target = scan::link_target(&abs)?;
                let d = plan::source_digest(out, &self.roots, Some(Digest::of(target.as_bytes())));
                (link_entry(path, target), None, vec![(source, d)], false)
            }
            How::ListLink { target } => {
                let d = plan::source_digest(out, &self.roots, None);
                (
                    link_entry(path, target.clone()),
                    None,
                    vec![(source, d)],
                    false,
                )
            }
            How::Follow | How::Extra { .. } => {
                let d = plan::source_digest(out, &self.roots, None);
                let meta = std::fs::metadata(&abs).map_err(MachineError::io(&abs))?;
                if meta.is_dir() {
                    return Err(MachineError::FollowDir {
                        origin: out.origin.clone(),
                    });
                }
                let data = std::fs::read(&abs).map_err(MachineError::io(&abs))?;
                let perm = scan::stat_of(&meta).mode & 0o7777;
                let fd = files::file_digest(perm, &data);
                (
                    file_entry(path, perm & 0o755, &data),
                    Some(data),
                    vec![(source, d), (Key::File(src_key.clone()), fd)],
                    false,
                )
            }
            How::Template => {
                let m4 = self.m4.as_ref().map_err(|_| {
                    MachineError::Render(Box::new(lab_render::RenderError::M4Missing))
                })?;
                let e = &self.roots[out.root].entries[&out.src];
                let defines: Vec<(String, String)> = self
                    .facts
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let r = lab_render::m4::render(&lab_render::m4::M4Job {
                    program: m4,
                    cwd: self.project_root,
                    defines: &defines,
                    preludes: &self.preludes,
                    src: &src_key,
                })?;
                let mut deps = vec![
                    (source, plan::source_digest(out, &self.roots, None)),
                    (Key::Facts, facts_d),
                ];
                let mut seen: BTreeSet<String> = BTreeSet::new();
                let mut names: Vec<String> = Vec::new();
                for f in &r.read {
                    let k = self.files.key_of(f);
                    if k == src_key && e.kind == SrcKind::File {
                        // its content is part of the source digest
                        seen.insert(k);
                        continue;
                    }
                    if seen.insert(k.clone()) {
                        names.push(k);
                    }
                }
                // Literal includes that m4 did not open (missing, or not
                // reached) are dependencies too: creating one re-renders.
                for f in &r.read {
                    for n in self.files.literal_includes(&self.files.key_of(f)) {
                        let k = self.files.key_of(&n);
                        if seen.insert(k.clone()) {
                            names.push(k);
                        }
                    }
                }
                for n in names {
                    let d = file_digest(&n);
                    deps.push((Key::File(n), d));
                }
                (file_entry(path, 0o644, &r.bytes), Some(r.bytes), deps, true)
            }
        };
        let mut entry = entry;
        if matches!(entry.kind, EntryKind::File { .. }) {
            entry.mode = plan::final_mode(path, entry.mode);
        }
        Ok(Built {
            trace: Trace {
                deps,
                value: entry.digest(),
            },
            entry,
            bytes,
            rendered,
        })
    }
}

fn file_entry(path: &str, mode: u32, data: &[u8]) -> Entry {
    Entry {
        path: path.to_string(),
        mode,
        kind: EntryKind::File {
            size: data.len() as u64,
            sha256: Digest::of(data),
        },
        owner: None,
        group: None,
    }
}

fn link_entry(path: &str, target: String) -> Entry {
    Entry {
        path: path.to_string(),
        mode: 0o777,
        kind: EntryKind::Symlink { target },
        owner: None,
        group: None,
    }
}
