use lab_config::{ConfigError, Diagnose, Located};
use lab_render::RenderError;
use std::path::PathBuf;

/// An error that stops the whole run (no machine is built).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("unknown machine `{name}`")]
    UnknownMachine { name: String, known: Vec<String> },
    #[error("another lab process is building in `{}`", path.display())]
    Locked { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Facts(#[from] lab_facts::FactsError),
    #[error("`{}` (secret facts) cannot be read: {message}", path.display())]
    Secret { path: PathBuf, message: String },
}

impl Diagnose for EngineError {
    fn location(&self) -> Option<&Located> {
        match self {
            EngineError::Config(e) => e.location(),
            _ => None,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            EngineError::Config(e) => e.hint(),
            EngineError::UnknownMachine { known, .. } if known.is_empty() => {
                Some("lab.toml defines no machines; add a `[machines.NAME]` table".into())
            }
            EngineError::UnknownMachine { known, .. } => Some(format!(
                "machines in lab.toml: {}",
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            EngineError::Secret { .. } => Some(
                "name an age identity file in `LAB_AGE_IDENTITY` or in `age_identities` under \
                 [settings] in lab.toml"
                    .into(),
            ),
            EngineError::Locked { .. } => {
                Some("wait for it to finish (`lab watch` holds the lock while it runs)".into())
            }
            _ => None,
        }
    }
}

/// An error that stops one machine. Its previous outputs stay as they were;
/// other machines still build.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("unknown layer `{layer}` for machine `{machine}`")]
    UnknownLayer {
        machine: String,
        layer: String,
        at: Box<Located>,
        known: Vec<String>,
    },
    #[error(transparent)]
    Render(Box<RenderError>),
    #[error("`{first}` and `{second}` both produce `/{output}`")]
    Conflict {
        output: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("`{}` would produce `/{output}`, which names a directory itself, not a file", source_path.display())]
    DotOutput {
        source_path: PathBuf,
        output: String,
    },
    #[error("`{}` cannot be decrypted: {message}", path.display())]
    Age { path: PathBuf, message: String },
    #[error("`{}` has a name that is not UTF-8", path.display())]
    NotUtf8 { path: PathBuf },
    #[error("`{}` is not a regular file, directory or symlink", path.display())]
    SpecialFile { path: PathBuf },
    #[error("`{}` is not valid UTF-8, so it cannot be a template", path.display())]
    TemplateNotUtf8 { path: PathBuf },
    #[error("`{}` contains files lab did not create, so it cannot become a {kind}", path.display())]
    Foreign { path: PathBuf, kind: &'static str },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A configuration file a style reads while building (a fact file, a
    /// list) is wrong.
    #[error(transparent)]
    Config(Box<ConfigError>),
    /// A rule of the project's style is broken (see [`StyleError`]).
    #[error("{0}")]
    Style(Box<dyn StyleError>),
}

/// An error of a project style's own making, with its location and hint.
pub trait StyleError: Diagnose + Send + Sync + 'static {}

impl<T: Diagnose + Send + Sync + 'static> StyleError for T {}

impl From<RenderError> for MachineError {
    fn from(e: RenderError) -> Self {
        MachineError::Render(Box::new(e))
    }
}

impl MachineError {
    /// An I/O error on `path`, for `map_err`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> MachineError {
        let path = path.into();
        move |source| MachineError::Io { path, source }
    }
}

impl Diagnose for MachineError {
    fn location(&self) -> Option<&Located> {
        match self {
            MachineError::UnknownLayer { at, .. } => Some(at),
            MachineError::Render(e) => e.location(),
            MachineError::Config(e) => e.location(),
            MachineError::Style(e) => e.location(),
            _ => None,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            MachineError::UnknownLayer { layer, known, .. } => {
                let close: Vec<&String> = known.iter().filter(|k| similar(k, layer)).collect();
                Some(match close.first() {
                    Some(k) => format!("did you mean `{k}`? (or create `layers/{layer}/`)"),
                    None if known.is_empty() => format!("create `layers/{layer}/`"),
                    None => format!(
                        "create `layers/{layer}/`, or use one of: {}",
                        known
                            .iter()
                            .map(|k| format!("`{k}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })
            }
            MachineError::Render(e) => e.hint(),
            MachineError::Config(e) => e.hint(),
            MachineError::Style(e) => e.hint(),
            MachineError::Age { .. } => Some(
                "name an age identity file in `LAB_AGE_IDENTITY` or in `age_identities` under \
                 [settings] in lab.toml"
                    .into(),
            ),
            MachineError::DotOutput { .. } => {
                Some("rename the template: the name without `.j2` must not be `.` or `..`".into())
            }
            MachineError::Conflict { .. } => {
                Some("a layer may hold one of `NAME`, `NAME.j2`, `NAME.age`, `NAME.j2.age`; remove the others".into())
            }
            _ => None,
        }
    }
}

/// Names within edit distance 2 (a typo), case-insensitively.
fn similar(a: &str, b: &str) -> bool {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
        }
        prev = cur;
    }
    prev[b.len()] <= 2
}

#[cfg(test)]
mod tests {
    #[test]
    fn similar_names() {
        assert!(super::similar("nginx", "ngnix"));
        assert!(super::similar("base", "Base"));
        assert!(!super::similar("nginx", "postgres"));
    }
}
