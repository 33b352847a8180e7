use lab_core::{Diagnose, Located};

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
    /// m4 failed (an error, or a warning: warnings are fatal).
    #[error("{message}")]
    M4 { at: Located, message: String },
    #[error("GNU m4 is not installed (no `m4` on PATH); make-style templates need it")]
    M4Missing,
}

impl Diagnose for RenderError {
    fn location(&self) -> Option<&Located> {
        match self {
            RenderError::Template { at, .. }
            | RenderError::IncludeCycle { at, .. }
            | RenderError::M4 { at, .. } => Some(at),
            RenderError::M4Missing => None,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            RenderError::Template { hint, .. } => hint.clone(),
            RenderError::IncludeCycle { .. } => {
                Some("a template may not include itself, directly or through others".into())
            }
            RenderError::M4 { .. } => None,
            RenderError::M4Missing => {
                Some("install it: `apt-get install m4` (or `dnf install m4`)".into())
            }
        }
    }
}
