//! Pods in the native style. `pods/NAME.yaml` and `pods/NAME.yaml.j2` at
//! the top of a layer or machine directory are pod sources, never copied
//! as files: `lab-pods` compiles each into its Quadlet `.kube` and YAML,
//! and the machine's pods together into one nftables drop-in for their
//! host ports. A higher root's pod replaces a lower one's of the same
//! name, whatever its suffix.
//!
//! Where a pod's files go depends on its content (a rootful pod's live in
//! the system manager's directory), so a machine's pods are compiled
//! whenever its outputs are planned, and a machine with pods always plans
//! them all (never only the paths a change touched: an edit may move a
//! pod's files). Each output is still a graph node like any other: its
//! step (the compile) records what it read, the pod's source, the facts
//! and partials a `.j2` read, the pod user and the project's image names,
//! so an edit re-runs only the nodes of the pods it touched.

use crate::scan::SrcKind;
use crate::stack::{source_digest, Stack, Winner};
use crate::MachineError;
use lab_graph::{Digest, Hasher, Key, Trace};
use lab_pods::{Compiled, Context, PodError};
use lab_render::{Includes, Scope};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// `Key::Ext(POD, NAME)`: the winning source of pod NAME.
const POD: &str = "pod";
/// `Key::Ext(POD_USER, "")`: the machine's pod user.
const POD_USER: &str = "pod user";
/// `Key::Ext(IMAGES, "")`: the names of the images the project ships.
const IMAGES: &str = "project images";
/// `Key::Ext(POD_LIST, "")`: the names of the machine's pods (the firewall
/// reads every pod, including one that did not exist when it last ran).
const POD_LIST: &str = "pod list";

/// The names of the images a project ships (see [`lab_pods::IMAGES_DIR`]).
pub(crate) fn project_images(project: &Path) -> Result<BTreeSet<String>, MachineError> {
    let dir = project.join(lab_pods::IMAGES_DIR);
    let mut names = BTreeSet::new();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(MachineError::io(&dir)(e)),
    };
    for e in rd {
        let e = e.map_err(MachineError::io(&dir))?;
        let is_dir = e.file_type().map_err(MachineError::io(e.path()))?.is_dir();
        if let Some(n) = e
            .file_name()
            .to_str()
            .and_then(|f| lab_pods::image_name(f, is_dir))
        {
            names.insert(n.to_string());
        }
    }
    Ok(names)
}

/// The source of one pod: the highest root's.
#[derive(Clone, Debug)]
struct PodSource {
    root: usize,
    src: String,
    template: bool,
}

/// What an output of the pods is.
#[derive(Clone, Debug)]
enum PodOut {
    Kube(String),
    Yaml(String),
    Firewall,
}

/// A pod compiled, with what its compile read.
struct CompiledPod {
    compiled: Compiled,
    /// The source as errors name it: relative to the project.
    shown: PathBuf,
    /// The source's full path (conflicts name both sources by it).
    path: PathBuf,
    deps: Vec<(Key, Digest)>,
}

/// The pods of one machine.
pub(crate) struct Pods {
    sources: BTreeMap<String, PodSource>,
    ctx: Context,
    compiled: BTreeMap<String, CompiledPod>,
    outs: BTreeMap<String, PodOut>,
    firewall: Option<(String, Vec<(Key, Digest)>)>,
    /// Each pod's warnings, told when its unit is compiled again.
    warnings: BTreeMap<String, Vec<String>>,
    /// The pods whose unit's step ran in this build.
    stepped: Mutex<BTreeSet<String>>,
}

fn not_a_pod(path: PathBuf) -> MachineError {
    MachineError::Style(Box::new(PodError {
        at: lab_core::Located::file(&path),
        message: format!("`{}` is not a pod source", path.display()),
        hint: Some(format!(
            "`{}/` at the top of a layer or machine directory holds pods only: `NAME.yaml` or \
             `NAME.yaml.j2`",
            lab_pods::SOURCE_DIR
        )),
    }))
}

impl Pods {
    /// Find the pods of the stack (no I/O: the scan listed them).
    pub fn find(
        stack: &Stack,
        pod_user: &str,
        images: BTreeSet<String>,
    ) -> Result<Pods, MachineError> {
        let mut sources: BTreeMap<String, PodSource> = BTreeMap::new();
        for (ri, root) in stack.roots.iter().enumerate() {
            // (a root without `pods` has no pod: no walk over its entries)
            if !root.entries.contains_key(lab_pods::SOURCE_DIR) {
                continue;
            }
            let mut here: BTreeMap<&str, &str> = BTreeMap::new();
            let mut rels: Vec<(&String, SrcKind)> = root
                .entries
                .iter()
                .filter(|(rel, _)| {
                    rel.as_str() == lab_pods::SOURCE_DIR
                        || rel
                            .strip_prefix(lab_pods::SOURCE_DIR)
                            .is_some_and(|r| r.starts_with('/'))
                })
                .map(|(rel, e)| (rel, e.kind))
                .collect();
            rels.sort_by(|a, b| a.0.cmp(b.0));
            for (rel, kind) in rels {
                if rel == lab_pods::SOURCE_DIR {
                    if kind != SrcKind::Dir {
                        return Err(not_a_pod(root.path_of(rel)));
                    }
                    continue;
                }
                let Some((name, template)) = lab_pods::source_name(rel) else {
                    return Err(not_a_pod(root.path_of(rel)));
                };
                if kind != SrcKind::File {
                    return Err(not_a_pod(root.path_of(rel)));
                }
                if let Some(other) = here.insert(name, rel) {
                    return Err(MachineError::Conflict {
                        output: format!("{}/{name}", lab_pods::SOURCE_DIR),
                        first: root.path_of(other),
                        second: root.path_of(rel),
                    });
                }
                sources.insert(
                    name.to_string(),
                    PodSource {
                        root: ri,
                        src: rel.clone(),
                        template,
                    },
                );
            }
        }
        Ok(Pods {
            sources,
            ctx: Context {
                pod_user: pod_user.to_string(),
                images,
            },
            compiled: BTreeMap::new(),
            outs: BTreeMap::new(),
            firewall: None,
            warnings: BTreeMap::new(),
            stepped: Mutex::default(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    fn user_digest(&self) -> Digest {
        Hasher::new("lab-pod-user-v1")
            .str(&self.ctx.pod_user)
            .finish()
    }

    fn list_digest(&self) -> Digest {
        let mut h = Hasher::new("lab-pod-list-v1");
        for n in self.sources.keys() {
            h.str(n);
        }
        h.finish()
    }

    fn images_digest(&self) -> Digest {
        let mut h = Hasher::new("lab-images-v1");
        for i in &self.ctx.images {
            h.str(i);
        }
        h.finish()
    }

    /// What the machine's summary must add for its pods: the pod user and
    /// the project's images are read outside the roots.
    pub fn summarize(&self, summary: Digest) -> Digest {
        if self.is_empty() {
            return summary;
        }
        Hasher::new("lab-pods-summary-v1")
            .digest(&summary)
            .digest(&self.user_digest())
            .digest(&self.images_digest())
            .finish()
    }

    /// The inputs of the pods that are not source paths.
    pub fn inputs(&self) -> Vec<(Key, Digest)> {
        if self.is_empty() {
            return Vec::new();
        }
        vec![
            (Key::Ext(POD_USER.into(), String::new()), self.user_digest()),
            (Key::Ext(IMAGES.into(), String::new()), self.images_digest()),
            (Key::Ext(POD_LIST.into(), String::new()), self.list_digest()),
        ]
    }

    /// The input key a changed path of root `ri` stands for.
    pub fn source_key(&self, ri: usize, rel: &str) -> Option<Key> {
        let (name, _) = lab_pods::source_name(rel)?;
        let s = self.sources.get(name)?;
        (s.root == ri && s.src == rel).then(|| Key::Ext(POD.into(), name.to_string()))
    }

    pub fn input(&self, stack: &Stack, k: &Key) -> Option<Option<Digest>> {
        let Key::Ext(kind, name) = k else {
            return None;
        };
        Some(match kind.as_str() {
            POD => self.sources.get(name).map(|s| {
                let e = &stack.roots[s.root].entries[&s.src];
                source_digest(&s.src, e, e.digest)
            }),
            POD_USER => Some(self.user_digest()),
            IMAGES => Some(self.images_digest()),
            POD_LIST => Some(self.list_digest()),
            _ => return None,
        })
    }

    /// Compile every pod and place its files among the `winners` of the
    /// layers: returns the pods' outputs and the directories they need
    /// that no layer provides.
    pub fn plan(
        &mut self,
        stack: &Stack,
        winners: &BTreeMap<String, Winner>,
        scope: &Arc<Scope>,
        includes: &Arc<dyn Includes>,
    ) -> Result<(Vec<String>, BTreeMap<String, u32>), MachineError> {
        self.compiled.clear();
        self.outs.clear();
        self.firewall = None;
        self.warnings.clear();
        for (name, s) in &self.sources {
            let c = self.compile(stack, name, s, scope, includes)?;
            self.warnings
                .insert(name.clone(), c.compiled.warnings.clone());
            for (out, what) in [
                (c.compiled.kube_path(), PodOut::Kube(name.clone())),
                (c.compiled.yaml_path(), PodOut::Yaml(name.clone())),
            ] {
                self.outs.insert(out, what);
            }
            self.compiled.insert(name.clone(), c);
        }
        let pods: Vec<(&Path, &lab_pods::Pod)> = self
            .compiled
            .values()
            .map(|c| (c.shown.as_path(), &c.compiled.pod))
            .collect();
        let fw = lab_pods::firewall(&pods).map_err(|e| MachineError::Style(Box::new(e)))?;
        if let Some(text) = fw {
            let mut deps: Vec<(Key, Digest)> = self
                .compiled
                .values()
                .flat_map(|c| c.deps.iter().cloned())
                .collect();
            deps.push((Key::Ext(POD_LIST.into(), String::new()), self.list_digest()));
            deps.sort_by(|a, b| a.0.cmp(&b.0));
            deps.dedup_by(|a, b| a.0 == b.0);
            self.firewall = Some((text, deps));
            self.outs
                .insert(lab_pods::FIREWALL_PATH.to_string(), PodOut::Firewall);
        }
        // A pod's unit is `NAME.service` of its manager: no other file of
        // the tree may make that unit.
        for (name, c) in &self.compiled {
            let same_unit = if c.compiled.pod.rootful {
                [
                    format!("{}/{name}.container", lab_pods::ROOTFUL_DIR),
                    format!("etc/systemd/system/{name}.service"),
                ]
            } else {
                [
                    format!("{}/{name}.container", lab_pods::ROOTLESS_DIR),
                    format!("etc/systemd/user/{name}.service"),
                ]
            };
            for other in same_unit {
                if let Some(w) = winners.get(&other) {
                    return Err(MachineError::Style(Box::new(PodError {
                        at: lab_core::Located::file(&c.shown),
                        message: format!(
                            "pod `{name}` and `{}` both make the unit `{name}.service`",
                            stack.roots[w.root].path_of(&w.src).display()
                        ),
                        hint: Some("rename the pod (its file) or remove the other unit".into()),
                    })));
                }
            }
        }
        let mut dirs = BTreeMap::new();
        for (out, what) in &self.outs {
            let from = match what {
                PodOut::Kube(n) | PodOut::Yaml(n) => self.compiled[n].path.clone(),
                PodOut::Firewall => PathBuf::from("the pods' ports"),
            };
            if let Some(w) = winners.get(out) {
                return Err(MachineError::Conflict {
                    output: out.clone(),
                    first: stack.roots[w.root].path_of(&w.src),
                    second: from,
                });
            }
            let mut at = out.as_str();
            while let Some((parent, _)) = at.rsplit_once('/') {
                match winners.get(parent) {
                    Some(w) if stack.entry(w).kind == SrcKind::Dir => {}
                    Some(w) => {
                        return Err(MachineError::Conflict {
                            output: parent.to_string(),
                            first: stack.roots[w.root].path_of(&w.src),
                            second: from,
                        })
                    }
                    None => {
                        dirs.insert(parent.to_string(), 0o755);
                    }
                }
                at = parent;
            }
        }
        Ok((self.outs.keys().cloned().collect(), dirs))
    }

    fn compile(
        &self,
        stack: &Stack,
        name: &str,
        s: &PodSource,
        scope: &Arc<Scope>,
        includes: &Arc<dyn Includes>,
    ) -> Result<CompiledPod, MachineError> {
        let root = stack.roots[s.root];
        let path = root.path_of(&s.src);
        let shown = Path::new(&root.name).join(&s.src);
        let bytes = std::fs::read(&path).map_err(MachineError::io(&shown))?;
        let entry = &root.entries[&s.src];
        let mut deps = vec![
            (
                Key::Ext(POD.into(), name.to_string()),
                source_digest(&s.src, entry, Digest::of(&bytes)),
            ),
            (Key::Ext(POD_USER.into(), String::new()), self.user_digest()),
            (Key::Ext(IMAGES.into(), String::new()), self.images_digest()),
        ];
        let utf8 = |b: Vec<u8>| {
            String::from_utf8(b).map_err(|_| {
                MachineError::Style(Box::new(PodError {
                    at: lab_core::Located::file(&shown),
                    message: format!("`{}` is not valid UTF-8", shown.display()),
                    hint: None,
                }))
            })
        };
        let mut text = utf8(bytes)?;
        if s.template {
            let out = lab_render::render(scope, &s.src, &shown, &text, includes.clone())?;
            deps.extend(out.includes.into_iter().map(|(n, d)| (Key::Include(n), d)));
            for k in out.reads {
                let d = scope.digest_of(&k).expect("render reads are scope keys");
                deps.push((k, d));
            }
            text = utf8(out.bytes)?;
        }
        let compiled = lab_pods::compile(&shown, name, &text, &self.ctx)
            .map_err(|e| MachineError::Style(Box::new(e)))?;
        Ok(CompiledPod {
            compiled,
            shown,
            path,
            deps,
        })
    }

    /// The warnings of the pods whose unit was compiled again (a pod that
    /// did not change is not warned about again).
    pub fn warnings(&self) -> Vec<String> {
        let stepped = self.stepped.lock().unwrap();
        stepped
            .iter()
            .flat_map(|n| self.warnings.get(n).into_iter().flatten().cloned())
            .collect()
    }

    pub fn is_output(&self, out: &str) -> bool {
        self.outs.contains_key(out)
    }

    /// For `lab show` (after [`Pods::plan`]): the sources of output `out`,
    /// whether one is a template, its text and what its compile read.
    #[allow(clippy::type_complexity)]
    pub fn show(
        &self,
        stack: &Stack,
        out: &str,
    ) -> Option<(Vec<crate::ShowSource>, bool, Vec<u8>, Vec<(Key, Digest)>)> {
        let source = |n: &str| {
            let s = &self.sources[n];
            crate::ShowSource {
                root: stack.roots[s.root].name.clone(),
                src: s.src.clone(),
            }
        };
        let (names, text): (Vec<&String>, &String) = match self.outs.get(out)? {
            PodOut::Kube(n) => (vec![n], &self.compiled[n].compiled.kube),
            PodOut::Yaml(n) => (vec![n], &self.compiled[n].compiled.yaml),
            PodOut::Firewall => (self.sources.keys().collect(), &self.firewall.as_ref()?.0),
        };
        let deps = names
            .iter()
            .flat_map(|n| self.compiled[*n].deps.iter().cloned())
            .collect();
        Some((
            names.iter().map(|n| source(n)).collect(),
            names.iter().any(|n| self.sources[*n].template),
            text.as_bytes().to_vec(),
            deps,
        ))
    }

    /// The step of a pod output: its text, compiled at planning.
    pub fn run_step(&self, out: &str) -> (Trace, Vec<u8>) {
        let (text, deps) = match &self.outs[out] {
            PodOut::Kube(n) => {
                self.stepped.lock().unwrap().insert(n.clone());
                (&self.compiled[n].compiled.kube, &self.compiled[n].deps)
            }
            PodOut::Yaml(n) => (&self.compiled[n].compiled.yaml, &self.compiled[n].deps),
            PodOut::Firewall => {
                let (t, d) = self.firewall.as_ref().expect("planned");
                (t, d)
            }
        };
        let bytes = text.as_bytes().to_vec();
        (
            Trace {
                deps: deps.clone(),
                value: crate::native::render_value(&bytes, POD_FILE_MODE),
            },
            bytes,
        )
    }
}

/// The mode of every file a pod becomes.
pub(crate) const POD_FILE_MODE: u32 = 0o644;
