//! `lab show`: which source wins a path, what it renders to, and what the
//! render read. Reads sources, writes nothing.

use crate::scan::{self, SrcKind};
use crate::stack::{output_path, Stack};
use crate::{Engine, EngineError, MachineError};
use lab_graph::Key;
use std::path::PathBuf;
use std::sync::Arc;

/// A source that provides an output path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShowSource {
    /// `layers/nginx`
    pub root: String,
    /// Path inside the root (`etc/nginx/site.conf.j2`).
    pub src: String,
}

impl ShowSource {
    pub fn display(&self) -> String {
        format!("{}/{}", self.root, self.src)
    }
}

#[derive(Clone, Debug)]
pub struct Show {
    pub machine: String,
    /// Output path without the leading slash.
    pub output: String,
    /// Every root that has a source for the path, lowest first; the last
    /// one wins.
    pub sources: Vec<ShowSource>,
    pub kind: &'static str,
    pub mode: u32,
    pub template: bool,
    /// File content (rendered for templates), or the link target.
    pub content: Vec<u8>,
    /// Facts and machines the template read, with their values (`None`:
    /// looked up, not defined).
    pub reads: Vec<(String, Option<serde_json::Value>)>,
    /// Partials included: name and the file that was used.
    pub includes: Vec<String>,
}

impl Engine {
    pub fn show(&self, machine: &str, path: &str) -> Result<Show, ShowError> {
        let m = self.select(&[machine.to_string()])?[0];
        let out = path
            .trim_start_matches('/')
            .trim_end_matches('/')
            .to_string();
        let names = Engine::stack_names(m);
        let prev = self.state.load_sources();
        let mut roots = Vec::new();
        for n in &names {
            roots.push(scan::scan_root(
                &self.project.root,
                n,
                prev.roots.get(n),
                &self.ignore,
            )?);
        }
        self.style.clone().show(self, m, &out, &roots)
    }

    /// [`Engine::show`] in the native style.
    pub(crate) fn show_native(
        &self,
        machine: &str,
        out: &str,
        roots: &[scan::RootScan],
    ) -> Result<Show, ShowError> {
        let out = out.to_string();
        let stack = Stack {
            roots: roots.iter().collect(),
        };
        let resolved = stack.resolve()?;
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
                let (gathered, _) = self.gathered();
                let scopes = self.scopes(&gathered)?;
                let scope = &scopes[machine];
                let text = std::fs::read_to_string(&src_path).map_err(io(&src_path))?;
                let includes: Arc<dyn lab_render::Includes> =
                    Arc::new(crate::native::DiskIncludes {
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
}

#[derive(Debug, thiserror::Error)]
pub enum ShowError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Machine(#[from] MachineError),
    #[error("machine `{machine}` has no `{path}`")]
    NotProduced {
        machine: String,
        path: String,
        shadowed: bool,
    },
}

impl lab_config::Diagnose for ShowError {
    fn location(&self) -> Option<&lab_config::Located> {
        match self {
            ShowError::Engine(e) => e.location(),
            ShowError::Machine(e) => e.location(),
            ShowError::NotProduced { .. } => None,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            ShowError::Engine(e) => e.hint(),
            ShowError::Machine(e) => e.hint(),
            ShowError::NotProduced { shadowed: true, .. } => Some(
                "a source exists, but a higher layer replaces one of its parent directories".into(),
            ),
            ShowError::NotProduced { .. } => None,
        }
    }
}
