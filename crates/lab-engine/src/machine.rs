//! Building one machine: decide what is dirty, render, write, save.

use crate::output::OutTree;
use crate::scan::{self, SrcKind};
use crate::secret::{self, AgeKeys};
use crate::stack::{output_path, source_digest, Stack, Winner};
use crate::state::{self, MachineState, MachineSummary, StateDir};
use crate::{MachineError, Reporter};
use lab_graph::{Digest, Graph, Hasher, Key, Reason, Trace, Verdict};
use lab_manifest::{Entry, EntryKind, Manifest};
use lab_render::{Included, Includes, Scope};
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
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
    pub stack: Stack<'a>,
    pub scope: Arc<Scope>,
    pub summary: Digest,
    pub out: OutTree,
    pub manifest_path: PathBuf,
    pub state: &'a StateDir,
    /// scan id of the previous scan (what `changed` lists are relative to)
    pub prev_scan_id: u64,
    pub scan_id: u64,
    pub force: bool,
    /// See [`crate::BuildOptions::trust_outputs`].
    pub trust_outputs: bool,
    /// Identities for encrypted sources.
    pub age: &'a AgeKeys,
    /// `[[owners]]`, recorded in the manifest.
    pub owners: &'a [lab_config::OwnerRule],
}

/// Partials looked up directly on disk through the stack, highest root
/// first; the digest is taken of the bytes actually read.
pub(crate) struct DiskIncludes {
    /// (root name, root dir), lowest first
    pub roots: Vec<(String, PathBuf)>,
}

impl Includes for DiskIncludes {
    fn lookup(&self, name: &str) -> Result<Option<Included>, String> {
        for (rname, dir) in self.roots.iter().rev() {
            let p = dir.join(name);
            let meta = match std::fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(format!("{}: {e}", p.display())),
            };
            if !meta.is_file() {
                if meta.is_dir() {
                    return Ok(None);
                }
                return Err(format!(
                    "`{rname}/{name}` is a symlink; partials must be regular files"
                ));
            }
            let bytes = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            let digest = Digest::of(&bytes);
            let text = String::from_utf8(bytes)
                .map_err(|_| format!("`{rname}/{name}` is not valid UTF-8"))?;
            return Ok(Some(Included {
                path: Path::new(rname).join(name),
                text,
                digest,
            }));
        }
        Ok(None)
    }
}

struct Rendered {
    trace: Trace,
    bytes: Vec<u8>,
}

/// What a machine's previous build left, as [`MachineJob::execute`] needs it.
pub(crate) struct Prior {
    pub graph: Graph,
    /// The entries lab wrote (it may remove them, and only them).
    pub entries: BTreeMap<String, Entry>,
    /// Fact and machine digests at that build (`None`: unknown).
    pub inputs: Option<HashMap<Key, Digest>>,
    /// May the roots' `changed` lists be taken as every change since that
    /// build (so only their dependents need checking)?
    pub fast: bool,
    /// Is the manifest on disk the one `entries` describe?
    pub manifest_current: bool,
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
        }
    }
}

/// What a build leaves for the next one.
pub(crate) struct Posterior {
    pub graph: Graph,
    pub entries: BTreeMap<String, Entry>,
    pub inputs: HashMap<Key, Digest>,
}

fn render_value(bytes: &[u8], mode: u32) -> Digest {
    Hasher::new("lab-render-v1")
        .bytes(bytes)
        .u64(mode as u64)
        .finish()
}

/// Every fact and machine digest a template could have read.
fn input_digests(scope: &Scope) -> HashMap<Key, Digest> {
    let mut m = HashMap::new();
    for k in scope.facts.keys() {
        let key = Key::Fact(k.clone());
        m.insert(key.clone(), scope.digest_of(&key).expect("fact"));
    }
    for k in scope.machines.keys() {
        let key = Key::Peer(k.clone());
        m.insert(key.clone(), scope.digest_of(&key).expect("peer"));
    }
    m.insert(Key::Peers, scope.digest_of(&Key::Peers).expect("peers"));
    m
}

impl MachineJob<'_> {
    fn root_names(&self) -> Vec<String> {
        self.stack.roots.iter().map(|r| r.name.clone()).collect()
    }

    fn include_digest(&self, name: &str) -> Digest {
        match self.stack.include(name) {
            Some((_, e)) if e.kind == SrcKind::File => e.digest,
            _ => Digest::ABSENT,
        }
    }

    /// Build the machine against the state on disk, and save the new state.
    pub fn run(self, reporter: &dyn Reporter) -> Result<MachineReport, Vec<MachineError>> {
        let manifest_stat = std::fs::symlink_metadata(&self.manifest_path)
            .ok()
            .map(|m| scan::stat_of(&m));
        let summary = self.state.load_summary(self.name);
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
                if s.summary == self.summary && Some(s.manifest) == manifest_stat {
                    return Ok(MachineReport {
                        up_to_date: true,
                        ..Default::default()
                    });
                }
            }
        }

        // What was built before. Outputs behind lab's back (manifest missing
        // or changed, or entries changed after it) mean the graph cannot be
        // trusted; the old entries still say what lab created and may remove.
        let prev = self.state.load_machine(self.name);
        let trusted = !tampered
            && manifest_stat.is_some()
            && summary.is_some_and(|s| Some(s.manifest) == manifest_stat);
        if !trusted {
            // (a build from scratch is the time to sweep what a killed
            // build of an older lab left in the tree)
            self.out.remove_old_temporaries();
        }
        let names = self.root_names();
        let listings: Vec<Digest> = self.stack.roots.iter().map(|r| r.listing).collect();
        let prior = match prev {
            Some(ms) => {
                let entries: BTreeMap<String, Entry> = ms
                    .entries
                    .into_iter()
                    .map(|e| (e.path.clone(), e))
                    .collect();
                if trusted && !self.force {
                    Prior {
                        fast: ms.scan_id == self.prev_scan_id
                            && ms.stack == names
                            && ms.listings == listings,
                        graph: Graph::from_state(ms.graph),
                        entries,
                        inputs: Some(ms.inputs),
                        manifest_current: true,
                    }
                } else {
                    // What lab wrote is in the state and, if a watch session
                    // wrote more after the state was saved, in the manifest.
                    let mut entries = entries;
                    if let Some(m) = std::fs::read_to_string(&self.manifest_path)
                        .ok()
                        .and_then(|t| Manifest::parse(&t).ok())
                    {
                        entries.extend(m.entries);
                    }
                    Prior::rebuild(entries)
                }
            }
            None => Prior::rebuild(
                std::fs::read_to_string(&self.manifest_path)
                    .ok()
                    .and_then(|t| Manifest::parse(&t).ok())
                    .map(|m| m.entries)
                    .unwrap_or_default(),
            ),
        };
        let (report, post) = self.execute(prior, reporter).map_err(|(e, _)| e)?;

        // Graph state, then summary (the manifest is written already).
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |e| vec![MachineError::Io { path: p, source: e }]
        };
        let ms = MachineState {
            scan_id: self.scan_id,
            stack: names,
            listings,
            inputs: post.inputs,
            graph: post.graph.to_state(),
            entries: post.entries.into_values().collect(),
        };
        let gp = self.state.graph_path(self.name);
        state::write(&gp, &ms).map_err(io(&gp))?;
        let manifest_stat = std::fs::symlink_metadata(&self.manifest_path)
            .map(|m| scan::stat_of(&m))
            .map_err(io(&self.manifest_path))?;
        let sp = self.state.summary_path(self.name);
        state::write(
            &sp,
            &MachineSummary {
                summary: self.summary,
                manifest: manifest_stat,
                files: Vec::new(),
                files_scanned_at_ns: 0,
            },
        )
        .map_err(io(&sp))?;
        Ok(report)
    }

    /// The core of a build: check the nodes a change may affect, render
    /// and write what is dirty, write the manifest when it changed. Works
    /// from `prior` (from disk, or kept in memory by a watch session) and
    /// returns what the next build needs.
    ///
    /// On failure the graph comes back too (it records only what really
    /// ran), so a watch session keeps it; the entries do not: the manifest
    /// on disk still lists every path lab created.
    #[allow(clippy::type_complexity, clippy::result_large_err)]
    pub fn execute(
        &self,
        prior: Prior,
        reporter: &dyn Reporter,
    ) -> Result<(MachineReport, Posterior), (Vec<MachineError>, Graph)> {
        let Prior {
            mut graph,
            entries,
            inputs,
            fast,
            manifest_current,
        } = prior;
        match self.execute_inner(
            &mut graph,
            entries,
            inputs,
            fast,
            manifest_current,
            reporter,
        ) {
            Ok((report, entries, inputs)) => Ok((
                report,
                Posterior {
                    graph,
                    entries,
                    inputs,
                },
            )),
            Err(e) => Err((e, graph)),
        }
    }

    #[allow(clippy::type_complexity)]
    fn execute_inner(
        &self,
        graph: &mut Graph,
        mut old_entries: BTreeMap<String, Entry>,
        prev_inputs: Option<HashMap<Key, Digest>>,
        fast: bool,
        manifest_current: bool,
        reporter: &dyn Reporter,
    ) -> Result<(MachineReport, BTreeMap<String, Entry>, HashMap<Key, Digest>), Vec<MachineError>>
    {
        let fast = fast && prev_inputs.is_some();
        // Candidates: the output paths whose nodes must be checked.
        let (winners, candidates): (BTreeMap<String, Winner>, Vec<String>) = if fast {
            let prev_inputs = prev_inputs.as_ref().expect("fast needs inputs");
            let mut changed: Vec<Key> = Vec::new();
            for (ri, root) in self.stack.roots.iter().enumerate() {
                for rel in &root.changed {
                    let Some(e) = root.entries.get(rel) else {
                        continue;
                    };
                    if let Some((out, _)) = output_path(rel, e.kind) {
                        if self.stack.winner_of(out).is_some_and(|w| w.root == ri) {
                            changed.push(Key::Source(out.to_string()));
                        }
                    }
                    if self.stack.include(rel).is_some_and(|(r, _)| r == ri) {
                        changed.push(Key::Include(rel.clone()));
                    }
                }
            }
            let now = input_digests(&self.scope);
            for (k, d) in &now {
                if prev_inputs.get(k) != Some(d) {
                    changed.push(k.clone());
                }
            }
            for k in prev_inputs.keys() {
                if !now.contains_key(k) {
                    changed.push(k.clone());
                }
            }
            let outs: BTreeSet<String> = graph
                .affected(changed.iter())
                .into_iter()
                .filter_map(|k| match k {
                    Key::Render(p) | Key::Output(p) => Some(p),
                    _ => None,
                })
                .collect();
            let winners: BTreeMap<String, Winner> = outs
                .iter()
                .filter_map(|o| self.stack.winner_of(o).map(|w| (o.clone(), w)))
                .collect();
            (winners, outs.into_iter().collect())
        } else {
            let w = self.stack.resolve().map_err(|e| vec![e])?;
            let c = w.keys().cloned().collect();
            (w, c)
        };
        reporter.machine_started(self.name, candidates.len());

        let input = |k: &Key| -> Option<Digest> {
            match k {
                Key::Source(out) => winners.get(out).map(|w| self.stack.source_digest(w)),
                Key::Include(name) => Some(self.include_digest(name)),
                other => self.scope.digest_of(other),
            }
        };

        // Renders, in parallel.
        let includes: Arc<dyn Includes> = Arc::new(DiskIncludes {
            roots: self
                .stack
                .roots
                .iter()
                .map(|r| (r.name.clone(), r.dir.clone()))
                .collect(),
        });
        let to_render: Vec<(&String, &Winner, Reason)> = candidates
            .iter()
            .filter_map(|out| {
                let w = winners.get(out)?;
                if !w.template {
                    return None;
                }
                match graph.check(&Key::Render(out.clone()), &input) {
                    Verdict::Clean(_) => None,
                    Verdict::Dirty(r) => Some((out, w, r)),
                }
            })
            .collect();
        let rendered: Vec<(String, Result<Rendered, MachineError>)> = to_render
            .into_par_iter()
            .map(|(out, w, reason)| {
                reporter.node_ran(self.name, &Key::Render(out.clone()), &reason);
                let r = self.render(w, &includes);
                reporter.progress(self.name);
                (out.clone(), r)
            })
            .collect();
        let mut errors = Vec::new();
        let mut bytes_of: HashMap<String, Vec<u8>> = HashMap::new();
        let n_rendered = rendered.len();
        for (out, r) in rendered {
            match r {
                Ok(r) => {
                    graph.record(Key::Render(out.clone()), r.trace);
                    bytes_of.insert(out, r.bytes);
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        // Outputs to (re)write.
        let mut dirty: Vec<(&String, &Winner, Reason)> = Vec::new();
        // Fast: the old entries are the new ones but for what changes.
        let mut entries = if fast {
            std::mem::take(&mut old_entries)
        } else {
            BTreeMap::new()
        };
        for out in &candidates {
            let Some(w) = winners.get(out) else {
                continue;
            };
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
                (Verdict::Clean(_), false) => dirty.push((out, w, Reason::NeverBuilt)),
                (Verdict::Dirty(r), _) => dirty.push((out, w, r)),
            }
        }
        // A template whose render is clean but whose output must be written
        // again (lost output) needs its bytes.
        for (out, w, _) in &dirty {
            if w.template && !bytes_of.contains_key(*out) {
                match self.render(w, &includes) {
                    Ok(r) => {
                        graph.record(Key::Render((*out).clone()), r.trace);
                        bytes_of.insert((*out).clone(), r.bytes);
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        // Paths no longer produced.
        let gone: Vec<String> = if fast {
            Vec::new()
        } else {
            old_entries
                .keys()
                .filter(|p| !winners.contains_key(*p))
                .cloned()
                .collect()
        };
        if !fast {
            let stale: Vec<Key> = graph
                .computed()
                .filter_map(|(k, _)| match k {
                    Key::Output(p) if !winners.contains_key(p) => Some(k.clone()),
                    Key::Render(p) if !winners.get(p).is_some_and(|w| w.template) => {
                        Some(k.clone())
                    }
                    _ => None,
                })
                .collect();
            for k in stale {
                graph.remove(&k);
            }
        }

        for (out, _, reason) in &dirty {
            reporter.node_ran(self.name, &Key::Output((*out).clone()), reason);
        }
        let written: Vec<Result<(String, Entry, Trace), MachineError>> = dirty
            .par_iter()
            .filter(|(_, w, _)| self.stack.entry(w).kind == SrcKind::Dir)
            .map(|(out, w, _)| self.write_output(out, w, graph, &bytes_of))
            .collect::<Vec<_>>()
            .into_iter()
            .chain(
                dirty
                    .par_iter()
                    .filter(|(_, w, _)| self.stack.entry(w).kind != SrcKind::Dir)
                    .map(|(out, w, _)| {
                        let r = self.write_output(out, w, graph, &bytes_of);
                        reporter.progress(self.name);
                        r
                    })
                    .collect::<Vec<_>>(),
            )
            .collect();
        let mut written_paths = Vec::new();
        for r in written {
            match r {
                Ok((out, entry, trace)) => {
                    graph.record(Key::Output(out.clone()), trace);
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
            winners
                .get(p)
                .map(|w| self.stack.entry(w).kind == SrcKind::Dir)
                .or_else(|| entries.get(p).map(|e| e.is_dir()))
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
        // filled first.
        for (out, w, _) in &dirty {
            if self.stack.entry(w).kind == SrcKind::Dir {
                self.out.make_dir(&entries[*out]).map_err(|e| vec![e])?;
            }
        }

        // The manifest, when it changed.
        let mut manifest = Manifest::new(self.name);
        manifest.entries = entries;
        let owners_changed = crate::output::apply_owners(&mut manifest.entries, self.owners);
        let manifest_changed = owners_changed
            || !written_paths.is_empty()
            || !removed.is_empty()
            || !gone.is_empty()
            || !manifest_current
            || !self.manifest_path.exists();
        if manifest_changed {
            state::write_atomic(&self.manifest_path, manifest.to_text().as_bytes()).map_err(
                |e| {
                    vec![MachineError::Io {
                        path: self.manifest_path.clone(),
                        source: e,
                    }]
                },
            )?;
        }
        let n_entries = manifest.len();
        let mut removed_all = removed;
        removed_all.extend(gone);
        removed_all.sort();
        removed_all.dedup();
        written_paths.sort();
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
            input_digests(&self.scope),
        ))
    }

    /// The mode of the output of `w`: the source's, or 0600 when the
    /// source is encrypted (see `secret`).
    fn mode_of(&self, w: &Winner) -> u32 {
        if secret::encrypted(&w.src) {
            secret::SECRET_MODE
        } else {
            self.stack.entry(w).perm()
        }
    }

    fn render(&self, w: &Winner, includes: &Arc<dyn Includes>) -> Result<Rendered, MachineError> {
        let root = self.stack.roots[w.root];
        let path = root.path_of(&w.src);
        let shown = Path::new(&root.name).join(&w.src);
        let bytes = std::fs::read(&path).map_err(MachineError::io(&shown))?;
        let content = Digest::of(&bytes);
        let bytes = if secret::encrypted(&w.src) {
            self.age.decrypt(&shown, &bytes)?
        } else {
            bytes
        };
        let text = String::from_utf8(bytes).map_err(|_| MachineError::TemplateNotUtf8 {
            path: shown.clone(),
        })?;
        let entry = self.stack.entry(w);
        let out = lab_render::render(&self.scope, &w.src, &shown, &text, includes.clone())?;
        let out_path = output_path(&w.src, SrcKind::File).expect("template").0;
        let mut deps = vec![(
            Key::Source(out_path.to_string()),
            source_digest(&w.src, entry, content),
        )];
        deps.extend(out.includes.into_iter().map(|(n, d)| (Key::Include(n), d)));
        for k in out.reads {
            let d = self
                .scope
                .digest_of(&k)
                .expect("render reads are scope keys");
            deps.push((k, d));
        }
        Ok(Rendered {
            trace: Trace {
                deps,
                value: render_value(&out.bytes, self.mode_of(w)),
            },
            bytes: out.bytes,
        })
    }

    fn write_output(
        &self,
        out: &str,
        w: &Winner,
        graph: &Graph,
        rendered: &HashMap<String, Vec<u8>>,
    ) -> Result<(String, Entry, Trace), MachineError> {
        let root = self.stack.roots[w.root];
        let src_entry = self.stack.entry(w);
        let src_path = root.path_of(&w.src);
        let mode = self.mode_of(w);
        let (entry, bytes, dep) = if w.template {
            let bytes = &rendered[out];
            let render_key = Key::Render(out.to_string());
            let value = graph.trace(&render_key).expect("rendered").value;
            let entry = Entry {
                path: out.to_string(),
                mode,
                kind: EntryKind::File {
                    size: bytes.len() as u64,
                    sha256: Digest::of(bytes),
                },
                owner: None,
                group: None,
            };
            (entry, Some(bytes.as_slice()), (render_key, value))
        } else {
            match src_entry.kind {
                SrcKind::Dir => (
                    Entry {
                        path: out.to_string(),
                        mode,
                        kind: EntryKind::Dir,
                        owner: None,
                        group: None,
                    },
                    None,
                    (Key::Source(out.to_string()), self.stack.source_digest(w)),
                ),
                SrcKind::Symlink => {
                    let target = scan::link_target(&src_path)?;
                    let content = Digest::of(target.as_bytes());
                    (
                        Entry {
                            path: out.to_string(),
                            mode: 0o777,
                            kind: EntryKind::Symlink { target },
                            owner: None,
                            group: None,
                        },
                        None,
                        (
                            Key::Source(out.to_string()),
                            source_digest(&w.src, src_entry, content),
                        ),
                    )
                }
                SrcKind::File => {
                    let data = std::fs::read(&src_path).map_err(MachineError::io(&src_path))?;
                    let sha = Digest::of(&data);
                    let data = if secret::encrypted(&w.src) {
                        let shown = Path::new(&root.name).join(&w.src);
                        self.age.decrypt(&shown, &data)?
                    } else {
                        data
                    };
                    let entry = Entry {
                        path: out.to_string(),
                        mode,
                        kind: EntryKind::File {
                            size: data.len() as u64,
                            sha256: Digest::of(&data),
                        },
                        owner: None,
                        group: None,
                    };
                    self.out.write(&entry, &data)?;
                    let value = entry.digest();
                    return Ok((
                        out.to_string(),
                        entry,
                        Trace {
                            deps: vec![(
                                Key::Source(out.to_string()),
                                source_digest(&w.src, src_entry, sha),
                            )],
                            value,
                        },
                    ));
                }
            }
        };
        self.out.write(&entry, bytes.unwrap_or_default())?;
        let value = entry.digest();
        Ok((
            out.to_string(),
            entry,
            Trace {
                deps: vec![dep],
                value,
            },
        ))
    }
}
