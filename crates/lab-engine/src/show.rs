//! `lab show`: which source wins a path, what it renders to, and what the
//! render read. Reads sources, writes nothing.

use crate::scan;
use crate::{Engine, EngineError, MachineError};

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
        let mut prev = self.state.load_roots(&names);
        let mut roots = Vec::new();
        for n in &names {
            roots.push(scan::scan_root(
                &self.project.root,
                n,
                prev.remove(n).map(|f| f.root),
                &self.ignore,
            )?);
        }
        self.style.clone().show(self, m, &out, &roots)
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
