use crate::{Diagnose, Located};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no `lab.toml` in `{}` or any parent directory", dir.display())]
    NotFound { dir: PathBuf },
    #[error("{message}")]
    Toml { at: Located, message: String },
    #[error("{message}")]
    Invalid {
        at: Located,
        message: String,
        hint: Option<String>,
    },
}

impl Diagnose for ConfigError {
    fn location(&self) -> Option<&Located> {
        match self {
            ConfigError::Toml { at, .. } | ConfigError::Invalid { at, .. } => Some(at),
            _ => None,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            ConfigError::Invalid { hint, .. } => hint.clone(),
            ConfigError::NotFound { .. } => {
                Some("run lab inside a project, or pass `--project DIR`".into())
            }
            _ => None,
        }
    }
}
