//! The native project style: `lab.toml`, layers of files, minijinja
//! templates (`NAME.j2`), age-encrypted sources (`NAME.age`). The layer
//! stack decides which source wins each output path (see `stack`); a
//! template's render is a step of its own, so a render that gives the same
//! bytes stops there (early cutoff).

use crate::pods::{Pods, POD_FILE_MODE};
use crate::scan::{self, RootScan, SrcKind};
use crate::secret::{self, AgeKeys};
use crate::stack::{output_path, source_digest, Stack, Winner};
use crate::style::{Gathered, MachineModel, Made, Plan, Prepared, Style};
use crate::{
    Engine, EngineError, MachineError, Reporter, Show, ShowError, ShowSource, ENGINE_VERSION,
};
use indexmap::IndexMap;
use lab_config::Machine;
use lab_graph::{Digest, Graph, Hasher, Key, Trace};
use lab_manifest::{Entry, EntryKind};
use lab_render::{Included, Includes, Scope};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The native style.
#[derive(Clone, Copy, Debug, Default)]
pub struct NativeStyle;

impl Style for NativeStyle {
    fn ignores(&self) -> globset::GlobSet {
        scan::default_ignores()
    }

    fn prepare<'a>(
        &'a self,
        engine: &'a Engine,
        gathered: &'a Gathered,
        _scanned_at_ns: i64,
    ) -> Result<Box<dyn Prepared + 'a>, EngineError> {
        Ok(Box::new(NativeBuild {
            engine,
            scopes: engine.scopes(gathered)?,
        }))
    }

    fn show(
        &self,
        engine: &Engine,
        machine: &Machine,
        out: &str,
        roots: &[RootScan],
    ) -> Result<Show, ShowError> {
        show_native(engine, machine, out, roots)
    }
}

struct NativeBuild<'a> {
    engine: &'a Engine,
    scopes: IndexMap<String, Arc<Scope>>,
}

impl Prepared for NativeBuild<'_> {
    fn missing_root(
        &self,
        m: &Machine,
        root: &str,
        _reporter: &dyn Reporter,
    ) -> Option<MachineError> {
        let l = m
            .layers
            .iter()
            .find(|l| format!("layers/{}", l.name) == root)?;
        Some(MachineError::UnknownLayer {
            machine: m.name.clone(),
            layer: l.name.clone(),
            at: Box::new(l.at.clone()),
            known: self.engine.known_layers(),
        })
    }

    fn machine<'s>(
        &'s self,
        m: &'s Machine,
        roots: Vec<&'s RootScan>,
        _reporter: &dyn Reporter,
    ) -> Result<Box<dyn MachineModel + 's>, Vec<MachineError>> {
        let scope = self.scopes[&m.name].clone();
        let summary = machine_summary(&m.name, &roots, &scope, &self.engine.project.owners);
        let stack = Stack { roots };
        let mut pods = Pods::find(&stack, m.pod_user(), Default::default()).map_err(|e| vec![e])?;
        if !pods.is_empty() {
            let images =
                crate::pods::project_images(&self.engine.project.root).map_err(|e| vec![e])?;
            pods = Pods::find(&stack, m.pod_user(), images).map_err(|e| vec![e])?;
        }
        let summary = pods.summarize(summary);
        let roots = stack.roots;
        let includes: Arc<dyn Includes> = Arc::new(DiskIncludes {
            roots: roots
                .iter()
                .map(|r| (r.name.clone(), r.dir.clone()))
                .collect(),
        });
        Ok(Box::new(NativeMachine {
            stack: Stack { roots },
            scope,
            summary,
            age: self.engine.age(),
            includes,
            winners: BTreeMap::new(),
            pods,
        }))
    }
}

/// One machine of a native build.
struct NativeMachine<'a> {
    stack: Stack<'a>,
    scope: Arc<Scope>,
    summary: Digest,
    /// Identities for encrypted sources.
    age: &'a AgeKeys,
    includes: Arc<dyn Includes>,
    /// The winners of the planned outputs (see [`MachineModel::plan`]).
    winners: BTreeMap<String, Winner>,
    /// The machine's pods (see `pods`).
    pods: Pods,
}

/// A machine's input summary: its stack (each root's tree digest), its
/// facts and the inventory. Equal summaries, equal outputs.
pub(crate) fn machine_summary(
    name: &str,
    roots: &[&RootScan],
    scope: &Scope,
    owners: &[lab_config::OwnerRule],
) -> Digest {
    let mut h = Hasher::new(ENGINE_VERSION);
    h.str(name);
    crate::owners_digest(&mut h, owners);
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

/// `(name, digest)` of every fact and machine view a scope holds, for the
/// machine's summary.
fn machine_inputs(scope: &Scope) -> Vec<(String, Digest)> {
    let mut v = Vec::new();
    for (k, val) in &scope.facts {
        v.push((format!("f:{k}"), lab_render::fact_digest(Some(val))));
    }
    for (k, val) in scope.machines.iter() {
        v.push((format!("m:{k}"), lab_render::fact_digest(Some(val))));
    }
    let peers = scope.digest_of(&Key::Peers).expect("peers digest");
    v.push(("peers".to_string(), peers));
    v
}

impl MachineModel for NativeMachine<'_> {
    fn summary(&self) -> Digest {
        self.summary
    }

    fn inputs(&self) -> HashMap<Key, Digest> {
        let mut m = input_digests(&self.scope);
        m.extend(self.pods.inputs());
        m
    }

    fn incremental(&self) -> bool {
        // an edit may move a pod's files (see `pods`)
        self.pods.is_empty()
    }

    fn warnings(&self) -> Vec<String> {
        self.pods.warnings()
    }

    fn source_keys(&self, ri: usize, rel: &str) -> Vec<Key> {
        let mut keys = Vec::new();
        let Some(e) = self.stack.roots[ri].entries.get(rel) else {
            return keys;
        };
        if let Some((out, _)) = output_path(rel, e.kind) {
            if self.stack.winner_of(out).is_some_and(|w| w.root == ri) {
                keys.push(Key::Source(out.to_string()));
            }
        }
        if self.stack.include(rel).is_some_and(|(r, _)| r == ri) {
            keys.push(Key::Include(rel.to_string()));
        }
        keys.extend(self.pods.source_key(ri, rel));
        keys
    }

    fn plan(&mut self, only: Option<BTreeSet<String>>) -> Result<Plan, MachineError> {
        self.winners = match only {
            // (a machine with pods is never planned in part: see `pods`)
            Some(outs) if self.pods.is_empty() => outs
                .into_iter()
                .filter_map(|o| self.stack.winner_of(&o).map(|w| (o, w)))
                .collect(),
            _ => self.stack.resolve()?,
        };
        let mut outs: BTreeMap<String, bool> = self
            .winners
            .iter()
            .map(|(o, w)| (o.clone(), self.stack.entry(w).kind == SrcKind::Dir))
            .collect();
        let mut dirs = BTreeMap::new();
        if !self.pods.is_empty() {
            let (pod_outs, pod_dirs) =
                self.pods
                    .plan(&self.stack, &self.winners, &self.scope, &self.includes)?;
            outs.extend(pod_outs.into_iter().map(|o| (o, false)));
            dirs = pod_dirs;
        }
        Ok(Plan { outs, dirs })
    }

    fn input(&self, k: &Key) -> Option<Digest> {
        if let Some(d) = self.pods.input(&self.stack, k) {
            return d;
        }
        match k {
            Key::Source(out) => self.winners.get(out).map(|w| self.stack.source_digest(w)),
            Key::Include(name) => Some(self.include_digest(name)),
            other => self.scope.digest_of(other),
        }
    }

    fn step(&self, out: &str) -> Option<Key> {
        if self.pods.is_output(out) {
            return Some(Key::Render(out.to_string()));
        }
        self.winners
            .get(out)
            .filter(|w| w.template)
            .map(|_| Key::Render(out.to_string()))
    }

    fn run_step(&self, out: &str) -> Result<Made, MachineError> {
        if self.pods.is_output(out) {
            let (trace, bytes) = self.pods.run_step(out);
            return Ok(Made {
                trace,
                bytes: Some(bytes),
                entry: None,
                rendered: true,
            });
        }
        self.render(&self.winners[out])
    }

    fn make(&self, out: &str, graph: &Graph, step: Option<&[u8]>) -> Result<Made, MachineError> {
        if self.pods.is_output(out) {
            let bytes = step.expect("a pod output's step runs first");
            return Ok(made_from_step(out, POD_FILE_MODE, bytes, graph));
        }
        self.write_output(out, &self.winners[out], graph, step)
    }
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

/// The manifest entry of an output file holding `bytes`.
fn file_entry(out: &str, mode: u32, bytes: &[u8]) -> Entry {
    Entry {
        path: out.to_string(),
        mode,
        kind: EntryKind::File {
            size: bytes.len() as u64,
            sha256: Digest::of(bytes),
        },
        owner: None,
        group: None,
    }
}

/// An output file made of its step's bytes (a render, a pod's compile).
fn made_from_step(out: &str, mode: u32, bytes: &[u8], graph: &Graph) -> Made {
    let render_key = Key::Render(out.to_string());
    let value = graph.trace(&render_key).expect("stepped").value;
    let entry = file_entry(out, mode, bytes);
    Made {
        trace: Trace {
            deps: vec![(render_key, value)],
            value: entry.digest(),
        },
        bytes: Some(bytes.to_vec()),
        entry: Some(entry),
        rendered: false,
    }
}

pub(crate) fn render_value(bytes: &[u8], mode: u32) -> Digest {
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

impl NativeMachine<'_> {
    fn include_digest(&self, name: &str) -> Digest {
        match self.stack.include(name) {
            Some((_, e)) if e.kind == SrcKind::File => e.digest,
            _ => Digest::ABSENT,
        }
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

    fn render(&self, w: &Winner) -> Result<Made, MachineError> {
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
        let out = lab_render::render(&self.scope, &w.src, &shown, &text, self.includes.clone())?;
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
        Ok(Made {
            trace: Trace {
                deps,
                value: render_value(&out.bytes, self.mode_of(w)),
            },
            bytes: Some(out.bytes),
            entry: None,
            rendered: true,
        })
    }

    fn write_output(
        &self,
        out: &str,
        w: &Winner,
        graph: &Graph,
        rendered: Option<&[u8]>,
    ) -> Result<Made, MachineError> {
        let root = self.stack.roots[w.root];
        let src_entry = self.stack.entry(w);
        let src_path = root.path_of(&w.src);
        let mode = self.mode_of(w);
        let (entry, bytes, dep) = if w.template {
            let bytes = rendered.expect("a template's render runs first");
            let render_key = Key::Render(out.to_string());
            let value = graph.trace(&render_key).expect("rendered").value;
            let entry = file_entry(out, mode, bytes);
            (entry, Some(bytes), (render_key, value))
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
                    let value = entry.digest();
                    return Ok(Made {
                        trace: Trace {
                            deps: vec![(
                                Key::Source(out.to_string()),
                                source_digest(&w.src, src_entry, sha),
                            )],
                            value,
                        },
                        bytes: Some(data),
                        entry: Some(entry),
                        rendered: false,
                    });
                }
            }
        };
        let value = entry.digest();
        Ok(Made {
            trace: Trace {
                deps: vec![dep],
                value,
            },
            bytes: bytes.map(<[u8]>::to_vec),
            entry: Some(entry),
            rendered: false,
        })
    }
}

/// `lab show` of a file a pod becomes (`None`: no pod makes `out`).
fn show_pod_output(
    engine: &Engine,
    m: &Machine,
    out: &str,
    stack: &Stack,
    resolved: &BTreeMap<String, Winner>,
) -> Result<Option<Show>, ShowError> {
    let mut pods = Pods::find(stack, m.pod_user(), Default::default())?;
    if pods.is_empty() {
        return Ok(None);
    }
    let images = crate::pods::project_images(&engine.project.root)?;
    pods = Pods::find(stack, m.pod_user(), images)?;
    let (gathered, _) = engine.gathered();
    let scopes = engine.scopes(&gathered)?;
    let scope = scopes[&m.name].clone();
    let includes: Arc<dyn Includes> = Arc::new(DiskIncludes {
        roots: stack
            .roots
            .iter()
            .map(|r| (r.name.clone(), r.dir.clone()))
            .collect(),
    });
    pods.plan(stack, resolved, &scope, &includes)?;
    let Some((mut sources, template, content, deps)) = pods.show(stack, out) else {
        return Ok(None);
    };
    // the firewall is made of every pod: none of them overrides another
    let mut includes = Vec::new();
    if out == lab_pods::FIREWALL_PATH {
        includes = sources.drain(..).map(|s| s.display()).collect();
    }
    let mut reads = Vec::new();
    for (k, _) in deps {
        match k {
            Key::Fact(f) => reads.push((f.clone(), scope.facts.get(&f).cloned())),
            Key::Peer(p) => reads.push((format!("machines.{p}"), scope.machines.get(&p).cloned())),
            _ => {}
        }
    }
    Ok(Some(Show {
        machine: m.name.clone(),
        output: out.to_string(),
        sources,
        kind: "file",
        mode: POD_FILE_MODE,
        template,
        content,
        reads,
        includes,
    }))
}

/// [`Engine::show`] in the native style.
fn show_native(
    engine: &Engine,
    m: &Machine,
    out: &str,
    roots: &[scan::RootScan],
) -> Result<Show, ShowError> {
    let machine = m.name.as_str();
    let out = out.to_string();
    let stack = Stack {
        roots: roots.iter().collect(),
    };
    let resolved = stack.resolve()?;
    if !resolved.contains_key(&out) {
        if let Some(show) = show_pod_output(engine, m, &out, &stack, &resolved)? {
            return Ok(show);
        }
    }
    let mut sources = Vec::new();
    for r in roots {
        for cand in [format!("{out}.j2"), out.clone()] {
            if let Some(e) = r.entries.get(&cand) {
                if output_path(&cand, e.kind).is_some_and(|(o, _)| o == out) {
                    sources.push(ShowSource {
                        root: r.name.clone(),
                        src: cand,
                    });
                }
            }
        }
    }
    let Some(w) = resolved.get(&out) else {
        return Err(ShowError::NotProduced {
            machine: machine.to_string(),
            path: format!("/{out}"),
            shadowed: !sources.is_empty(),
        });
    };
    let root = stack.roots[w.root];
    let entry = stack.entry(w);
    let src_path = root.path_of(&w.src);
    let mut show = Show {
        machine: machine.to_string(),
        output: out.clone(),
        sources,
        kind: match entry.kind {
            SrcKind::Dir => "dir",
            SrcKind::File => "file",
            SrcKind::Symlink => "symlink",
        },
        mode: entry.perm(),
        template: w.template,
        content: Vec::new(),
        reads: Vec::new(),
        includes: Vec::new(),
    };
    let io = |p: &PathBuf| {
        let p = p.clone();
        move |e| ShowError::Machine(MachineError::Io { path: p, source: e })
    };
    match entry.kind {
        SrcKind::Dir => {}
        // an encrypted source's plaintext is never shown
        SrcKind::File if crate::secret::encrypted(&w.src) => {
            show.mode = crate::secret::SECRET_MODE;
            show.content = b"(decrypted from an age-encrypted source: not shown)\n".to_vec();
        }
        SrcKind::Symlink => show.content = scan::link_target(&src_path)?.into_bytes(),
        SrcKind::File if !w.template => {
            show.content = std::fs::read(&src_path).map_err(io(&src_path))?
        }
        SrcKind::File => {
            let (gathered, _) = engine.gathered();
            let scopes = engine.scopes(&gathered)?;
            let scope = &scopes[machine];
            let text = std::fs::read_to_string(&src_path).map_err(io(&src_path))?;
            let includes: Arc<dyn lab_render::Includes> = Arc::new(DiskIncludes {
                roots: roots
                    .iter()
                    .map(|r| (r.name.clone(), r.dir.clone()))
                    .collect(),
            });
            let shown = std::path::Path::new(&root.name).join(&w.src);
            let r = lab_render::render(scope, &w.src, &shown, &text, includes)
                .map_err(MachineError::from)?;
            show.content = r.bytes;
            show.includes = r.includes.into_iter().map(|(n, _)| n).collect();
            for k in r.reads {
                let (label, value) = match &k {
                    Key::Fact(f) => (f.clone(), scope.facts.get(f).cloned()),
                    Key::Peer(p) => (format!("machines.{p}"), scope.machines.get(p).cloned()),
                    Key::Peers => (
                        "machines".to_string(),
                        Some(serde_json::Value::from(
                            scope.machines.keys().cloned().collect::<Vec<_>>(),
                        )),
                    ),
                    other => (other.to_string(), None),
                };
                show.reads.push((label, value));
            }
        }
    }
    Ok(show)
}
