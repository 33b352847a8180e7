use lab_core::{Diagnose, Located};

/// A pod that lab refuses, with where and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PodError {
    pub at: Located,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnose for PodError {
    fn location(&self) -> Option<&Located> {
        Some(&self.at)
    }

    fn hint(&self) -> Option<String> {
        self.hint.clone()
    }
}
