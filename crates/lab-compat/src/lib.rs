//! Make-style labs (`[compat]` in lab.toml, or a project without lab.toml
//! that has the make layout) as a project style of the engine
//! ([`CompatStyle`]). Everything make-style is here: the source model
//! ([`plan`]), GNU m4 rendering (through `lab-render`), fact flattening, the
//! files read outside the scanned roots ([`files`]), and `lab show`. The
//! configuration itself (inventory, layer lists, link lists, fact files) is
//! read by `lab_config::compat`. [`open`] picks the style of a project.
//!
//! The engine's pipeline does the rest; what differs from native builds is
//! the inputs a node can read:
//!
//! - a copied file or symlink, and a link-list symlink, depend on their
//!   [`Key::Source`] (origin, kind, mode, content or target);
//! - a followed (`!`) symlink also depends on the [`file_key`] of itself,
//!   whose digest is the content and mode of whatever it points to, inside
//!   or outside the project;
//! - an m4 template depends on its source, on the facts it looked up
//!   ([`FACTS_READ`]: every name whose lookup found a fact or nothing,
//!   so a fact added later that it looked for re-renders it too; all the
//!   facts, [`facts_key`], when GNU m4 rendered it), and on the
//!   [`file_key`] of every
//!   file m4 opened (preludes, `m4_include`s, the template itself when it
//!   is a symlink) plus every literal `m4_include`/`m4_sinclude` name that
//!   did not exist (so creating it later re-renders).
//!
//! Each machine's plan is resolved in full whenever the machine is not up
//! to date (a few microseconds per source); the graph then decides which
//! outputs to write. A machine is up to date when its summary (roots,
//! facts, settings, and the digests of the files it read) is.

pub mod files;
pub mod plan;
mod show;

pub use files::FileCache;
pub use plan::{is_template, output_name};

use indexmap::IndexMap;
use lab_config::compat::{Compat, INVENTORY_FILE, LAYER_LISTS};
use lab_config::{Diagnose, Located, Machine, Project};
use lab_engine::scan::{self, RootScan, SrcKind};
use lab_engine::{
    Engine, EngineError, Gathered, MachineError, MachineModel, Made, Plan, Prepared, Reporter,
    Show, ShowError, Style, ENGINE_VERSION,
};
use lab_graph::{Digest, Fingerprint, Graph, Hasher, Key, Trace};
use lab_manifest::{Entry, EntryKind};
use plan::{How, Out};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Open the project in or above `dir` in its own style: make-style when it
/// is one, native otherwise.
pub fn open(dir: &Path) -> Result<Engine, EngineError> {
    let project = Project::find(dir)?;
    Ok(engine(project))
}

/// An engine for `project` in its style.
pub fn engine(project: Project) -> Engine {
    let style = style_of(&project);
    Engine::with_style(project, style)
}

/// The style of `project`.
pub fn style_of(project: &Project) -> Arc<dyn Style> {
    if project.compat.is_some() {
        Arc::new(CompatStyle)
    } else {
        Arc::new(lab_engine::NativeStyle)
    }
}

/// The input key of a file read following symlinks, wherever it is: an m4
/// prelude or `m4_include`d file, or the target of a `!` source. The path
/// is relative to the project, or absolute when outside it. Its digest
/// covers the followed file's content and permission bits.
pub fn file_key(path: impl Into<String>) -> Key {
    Key::Ext("file".into(), path.into())
}

/// The input key of all the facts of a machine at once (m4 gets every
/// fact, so a render by GNU m4 depends on the whole set).
pub fn facts_key() -> Key {
    Key::Ext("facts".into(), String::new())
}

/// The kind of the input key of the facts a render looked up by name
/// (see [`lab_render::m4::M4Rendered::defines_read`]): `Key::Ext(FACTS_READ,
/// NAMES)`, the names `\n`-separated; its digest is [`facts_read_digest`].
pub const FACTS_READ: &str = "facts-read";

/// The digest of the facts named in a [`FACTS_READ`] key (`\n`-separated
/// names): each name's value, or that it has none.
pub fn facts_read_digest(facts: &IndexMap<String, String>, names: &str) -> Digest {
    let mut h = Hasher::new("lab-compat-facts-read-v1");
    for n in names.split('\n').filter(|n| !n.is_empty()) {
        h.str(n);
        match facts.get(n) {
            Some(v) => h.str("=").str(v),
            None => h.str("-"),
        };
    }
    h.finish()
}

/// A make-style rule that a machine's sources break.
#[derive(Debug, thiserror::Error)]
pub enum CompatError {
    #[error("`{first}` and `{second}` both produce `/{output}`")]
    Conflict {
        output: String,
        first: String,
        second: String,
    },
    #[error("`{file}` makes `/{output}` a file, but `{below}` puts something below it")]
    Shape {
        output: String,
        file: String,
        below: String,
    },
    #[error("`{origin}` has an empty output name")]
    Name { origin: String },
    #[error("`{origin}` has `!` in its path, so it is copied following symlinks, but it points to a directory")]
    FollowDir { origin: String },
}

impl Diagnose for CompatError {
    fn location(&self) -> Option<&Located> {
        None
    }

    fn hint(&self) -> Option<String> {
        match self {
            CompatError::Conflict { .. } => Some(
                "make's result would depend on the order it copied them in; remove or rename one"
                    .into(),
            ),
            _ => None,
        }
    }
}

impl From<CompatError> for MachineError {
    fn from(e: CompatError) -> Self {
        MachineError::Style(Box::new(e))
    }
}

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

    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
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

/// The make style.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompatStyle;

impl Style for CompatStyle {
    fn ignores(&self) -> globset::GlobSet {
        // make copies every file it finds, editor droppings included.
        globset::GlobSet::empty()
    }

    fn prepare<'a>(
        &'a self,
        engine: &'a Engine,
        gathered: &'a Gathered,
        scanned_at_ns: i64,
    ) -> Result<Box<dyn Prepared + 'a>, EngineError> {
        let root = &engine.project.root;
        let compat = engine
            .project
            .compat
            .clone()
            .unwrap_or_else(|| Compat::defaults(root));
        Ok(Box::new(CompatBuild {
            engine,
            gathered,
            m4: lab_render::m4::locate().map_err(|e| e.to_string()),
            files: FileCache::new(root),
            preludes: lab_config::compat::expand_globs(root, &compat.preludes),
            compat,
            scanned_at_ns,
            render_pool: RenderPool::new(rayon::current_num_threads()),
        }))
    }

    fn show(
        &self,
        engine: &Engine,
        machine: &Machine,
        out: &str,
        roots: &[RootScan],
    ) -> Result<Show, ShowError> {
        show::show(engine, &machine.name, out, roots)
    }

    fn reads_whole_project(&self) -> bool {
        // fact files, the inventory, layer lists, and files that templates
        // include or `!` links point to
        true
    }

    /// The inventory and the layer lists say which machines there are and
    /// what their stacks are.
    fn reloads_on(&self, project: &Project, path: &str) -> bool {
        let inventory = project.compat.as_ref().map_or_else(
            || project.root.join(INVENTORY_FILE),
            |c| c.inventory.clone(),
        );
        if project.root.join(path) == inventory {
            return true;
        }
        // a layer list, or a directory on the way to one (created, removed
        // or renamed with what it holds)
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["machines", _, rest @ ..] => {
                let rest = rest.join("/");
                rest.is_empty()
                    || rest == LAYER_LISTS
                    || rest.starts_with(&format!("{LAYER_LISTS}/"))
                    || LAYER_LISTS.starts_with(&format!("{rest}/"))
            }
            _ => false,
        }
    }

    /// A path outside the machine's roots affects it when it is no source
    /// at all (a fact file, a prelude elsewhere), when the machine read it,
    /// or when the machine read any file by following a `!` link or from
    /// outside its roots (such a file may be anywhere).
    fn affects(&self, graph: &Graph, stack: &[String], path: &str) -> bool {
        if !(path.starts_with("layers/") || path.starts_with("machines/")) {
            return true;
        }
        if !graph.dependents(&file_key(path)).is_empty() {
            return true;
        }
        graph.computed().any(|(_, t)| {
            t.deps.iter().any(|(k, _)| match k {
                Key::Ext(kind, p) if kind == "file" => {
                    p.contains('!') || !stack.iter().any(|n| p.starts_with(&format!("{n}/")))
                }
                _ => false,
            })
        })
    }
}

/// What every machine of a make-style build shares.
struct CompatBuild<'a> {
    engine: &'a Engine,
    gathered: &'a Gathered,
    compat: Compat,
    /// The m4 program, or why there is none.
    m4: Result<PathBuf, String>,
    files: FileCache,
    preludes: Vec<String>,
    #[allow(dead_code)]
    scanned_at_ns: i64,
    render_pool: RenderPool,
}

impl Prepared for CompatBuild<'_> {
    fn check(&self, m: &Machine) -> Result<(), Vec<MachineError>> {
        // Its layer lists or inventory entry could not be read: this
        // machine fails, the others build.
        match self.compat.problems.get(&m.name) {
            Some(e) => Err(vec![MachineError::Config(Box::new(
                lab_config::compat::copy_error(e),
            ))]),
            None => Ok(()),
        }
    }

    fn machine<'s>(
        &'s self,
        m: &'s Machine,
        roots: Vec<&'s RootScan>,
        reporter: &dyn Reporter,
    ) -> Result<Box<dyn MachineModel + 's>, Vec<MachineError>> {
        let root = &self.engine.project.root;
        let mut facts = lab_config::compat::load_facts(root, &self.compat, &m.name)
            .map_err(|e| vec![MachineError::Config(Box::new(e))])?;
        if let Some(g) = self.gathered.get(&m.name) {
            for (k, v) in lab_facts::to_compat(g) {
                facts.insert(k, v);
            }
        }
        // A listed layer that does not exist is a warning, as make has it.
        for r in &roots {
            let name = &r.name;
            if !r.exists && name.starts_with("layers/") && name != "layers/_" {
                if let Some(l) = m
                    .layers
                    .iter()
                    .find(|l| *name == format!("layers/{}", l.name))
                {
                    let mut at = l.at.clone();
                    if let Ok(rel) = at.path.strip_prefix(root) {
                        at.path = rel.to_path_buf();
                    }
                    reporter.warning(Some(&m.name), &missing_layer_warning(&l.name, &at));
                }
            }
        }
        let facts_d = facts_digest(&facts);
        let base_summary = {
            let mut h = Hasher::new(ENGINE_VERSION);
            h.str("compat-v2").str(&m.name);
            lab_engine::owners_digest(&mut h, &self.engine.project.owners);
            for r in &roots {
                h.str(&r.name).digest(&r.tree);
            }
            h.digest(&facts_d);
            for p in &self.preludes {
                h.str(p);
            }
            for c in &self.compat.copies {
                h.str(&c.from).str(&c.to).u64(c.machines.len() as u64);
                for cm in &c.machines {
                    h.str(cm);
                }
            }
            h.str(&format!("{:?}", self.m4));
            h.finish()
        };
        Ok(Box::new(CompatMachine {
            name: &m.name,
            build: self,
            project_root: root,
            roots,
            facts,
            facts_d,
            base_summary,
            plan: plan::Plan::default(),
            prior_files: Arc::new(HashMap::new()),
            prior_stamp: i64::MIN,
        }))
    }
}

/// One machine of a make-style build.
struct CompatMachine<'a> {
    name: &'a str,
    build: &'a CompatBuild<'a>,
    project_root: &'a Path,
    roots: Vec<&'a RootScan>,
    facts: IndexMap<String, String>,
    facts_d: Digest,
    /// Digest of everything but the followed files (the tag changes when
    /// the rules change, so outputs of an older lab are not taken as up to
    /// date).
    base_summary: Digest,
    plan: plan::Plan,
    /// The last build's record of the files it read, and its stamp.
    prior_files: Arc<HashMap<String, Fingerprint>>,
    prior_stamp: i64,
}

impl MachineModel for CompatMachine<'_> {
    fn summary(&self) -> Digest {
        self.base_summary
    }

    fn inputs(&self) -> HashMap<Key, Digest> {
        HashMap::from([(facts_key(), self.facts_d)])
    }

    fn plan(&mut self, _only: Option<BTreeSet<String>>) -> Result<Plan, MachineError> {
        self.plan = plan::resolve(self.name, &self.roots, &self.build.compat.copies)?;
        Ok(Plan {
            outs: self.plan.outs.keys().map(|p| (p.clone(), false)).collect(),
            dirs: self.plan.dirs.clone(),
        })
    }

    fn input(&self, k: &Key) -> Option<Digest> {
        match k {
            Key::Source(out) => self
                .plan
                .outs
                .get(out)
                .map(|o| plan::source_digest(o, &self.roots, None)),
            Key::Ext(kind, p) if kind == "file" => Some(self.file_digest(p)),
            Key::Ext(kind, _) if kind == "facts" => Some(self.facts_d),
            Key::Ext(kind, names) if kind == FACTS_READ => {
                Some(facts_read_digest(&self.facts, names))
            }
            _ => None,
        }
    }

    fn make(&self, out: &str, _graph: &Graph, _step: Option<&[u8]>) -> Result<Made, MachineError> {
        let o = &self.plan.outs[out];
        let b = self.make_one(out, o)?;
        Ok(Made {
            trace: b.trace,
            bytes: b.bytes,
            entry: Some(b.entry),
            rendered: b.rendered,
        })
    }

    fn run_makes(&self, outs: &[&str], f: &mut (dyn FnMut() + Send)) {
        let renders = outs
            .iter()
            .filter(|o| {
                self.plan
                    .outs
                    .get(**o)
                    .is_some_and(|o| o.how == How::Template)
            })
            .count();
        if renders > 1 {
            self.build.render_pool.install(f)
        } else {
            f()
        }
    }

    fn set_external_prior(&mut self, prior: Arc<HashMap<String, Fingerprint>>, stamp: i64) {
        self.prior_files = prior;
        self.prior_stamp = stamp;
    }

    fn external(&self, name: &str) -> Option<Fingerprint> {
        self.build.files.fingerprint(
            name,
            self.prior_files.get(name).map(|f| (f, self.prior_stamp)),
        )
    }

    fn external_names(&self, graph: &Graph) -> BTreeSet<String> {
        graph
            .computed()
            .flat_map(|(_, t)| t.deps.iter())
            .filter_map(|(k, _)| match k {
                Key::Ext(kind, p) if kind == "file" => Some(p.clone()),
                _ => None,
            })
            .collect()
    }
}

/// An output entry made in memory, not yet written.
struct Built {
    entry: Entry,
    bytes: Option<Vec<u8>>,
    trace: Trace,
    rendered: bool,
}

impl CompatMachine<'_> {
    fn file_digest(&self, p: &str) -> Digest {
        self.external(p).map_or(Digest::ABSENT, |f| f.digest)
    }

    /// Make one output entry in memory. A path with several sources makes
    /// each of them: they must agree (same kind, mode, bytes or link
    /// target), or the machine fails naming the first two that differ. The
    /// entry then depends on everything any of them read.
    fn make_one(&self, path: &str, out: &Out) -> Result<Built, MachineError> {
        let mut b = self.make_single(path, out)?;
        if out.also.is_empty() {
            return Ok(b);
        }
        for other in &out.also {
            let o = self.make_single(path, other)?;
            if o.entry != b.entry {
                return Err(CompatError::Conflict {
                    output: path.to_string(),
                    first: out.origin.clone(),
                    second: other.origin.clone(),
                }
                .into());
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
    fn make_single(&self, path: &str, out: &Out) -> Result<Built, MachineError> {
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
                    return Err(CompatError::FollowDir {
                        origin: out.origin.clone(),
                    }
                    .into());
                }
                let data = std::fs::read(&abs).map_err(MachineError::io(&abs))?;
                let perm = scan::stat_of(&meta).mode & 0o7777;
                let fd = files::file_digest(perm, &data);
                (
                    file_entry(path, perm & 0o755, &data),
                    Some(data),
                    vec![(source, d), (file_key(src_key.clone()), fd)],
                    false,
                )
            }
            How::Template => {
                let m4 = self.build.m4.as_ref().map_err(|_| {
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
                    preludes: &self.build.preludes,
                    src: &src_key,
                })?;
                let facts = match &r.defines_read {
                    Some(names) => {
                        let joined = names.join("\n");
                        let d = facts_read_digest(&self.facts, &joined);
                        (Key::Ext(FACTS_READ.into(), joined), d)
                    }
                    None => (facts_key(), self.facts_d),
                };
                let mut deps = vec![(source, plan::source_digest(out, &self.roots, None)), facts];
                let mut seen: BTreeSet<String> = BTreeSet::new();
                let mut names: Vec<String> = Vec::new();
                for f in &r.read {
                    let k = self.build.files.key_of(f);
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
                    for n in self
                        .build
                        .files
                        .literal_includes(&self.build.files.key_of(f))
                    {
                        let k = self.build.files.key_of(&n);
                        if seen.insert(k.clone()) {
                            names.push(k);
                        }
                    }
                }
                for n in names {
                    let d = self.file_digest(&n);
                    deps.push((file_key(n), d));
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
