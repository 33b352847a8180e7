//! How the executor (lab-agent's `executor.sh`) ends, as its exit status.

/// The executor's exit status: the script and the Rust side that reads
/// it agree on these numbers through this type only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutorExit {
    /// Applied (or rolled back); unit results are in the report.
    Applied,
    /// The machine is not on the generation the plan was made for.
    Stale,
    /// Failed; the machine is back where it was.
    Failed,
    /// The machine lacks the library the command named (lab-agent's
    /// `library`): nothing ran; the command goes again with it inline.
    LibraryMissing,
}

impl ExecutorExit {
    pub const fn code(self) -> i32 {
        match self {
            ExecutorExit::Applied => 0,
            ExecutorExit::Stale => 3,
            ExecutorExit::Failed => 10,
            ExecutorExit::LibraryMissing => 97,
        }
    }

    pub fn from_code(code: i32) -> Option<ExecutorExit> {
        [
            ExecutorExit::Applied,
            ExecutorExit::Stale,
            ExecutorExit::Failed,
            ExecutorExit::LibraryMissing,
        ]
        .into_iter()
        .find(|e| e.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for e in [
            ExecutorExit::Applied,
            ExecutorExit::Stale,
            ExecutorExit::Failed,
            ExecutorExit::LibraryMissing,
        ] {
            assert_eq!(ExecutorExit::from_code(e.code()), Some(e));
        }
        assert_eq!(ExecutorExit::from_code(1), None);
    }
}
