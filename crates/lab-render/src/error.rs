use lab_config::{Diagnose, Located};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Syntax errors, undefined variables, failing filters: anything
    /// minijinja reports, placed in the template where it happened.
    #[error("{message}")]
    Template {
        at: Located,
        message: String,
        hint: Option<String>,
    },
    #[error("include cycle: {}", chain.join(" -> "))]
    IncludeCycle { at: Located, chain: Vec<String> },
}

impl Diagnose for RenderError {
    fn location(&self) -> Option<&Located> {
        match self {
            RenderError::Template { at, .. } | RenderError::IncludeCycle { at, .. } => Some(at),
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            RenderError::Template { hint, .. } => hint.clone(),
            RenderError::IncludeCycle { .. } => {
                Some("a template may not include itself, directly or through others".into())
            }
        }
    }
}
