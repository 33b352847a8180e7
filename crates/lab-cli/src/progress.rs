//! The CLI's [`Reporter`]: a progress bar on a terminal, `--explain` lines,
//! warnings.

use crate::diag::{self, Style};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lab_engine::Reporter;
use lab_graph::{Key, Reason};
use std::io::IsTerminal;
use std::sync::Mutex;

pub struct CliReporter {
    pub explain: bool,
    pub quiet: bool,
    style: Style,
    bar: Option<ProgressBar>,
    /// The nodes that ran and why, for `--explain` (see [`crate::explain`]).
    explained: Mutex<Vec<(String, Key, Reason)>>,
}

impl CliReporter {
    pub fn new(explain: bool, quiet: bool) -> CliReporter {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(10));
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            b.set_message("building");
            b
        });
        CliReporter {
            explain,
            quiet,
            style: Style::stderr(),
            bar,
            explained: Mutex::new(Vec::new()),
        }
    }

    pub fn finish(&self) -> Vec<(String, Key, Reason)> {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        std::mem::take(&mut *self.explained.lock().unwrap())
    }

    pub fn println(&self, s: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprint!("{s}")),
            None => eprint!("{s}"),
        }
    }
}

impl Reporter for CliReporter {
    fn machine_started(&self, _machine: &str, work: usize) {
        if let Some(b) = &self.bar {
            b.inc_length(work as u64);
        }
    }

    fn node_ran(&self, machine: &str, key: &Key, reason: &Reason) {
        if self.explain {
            self.explained
                .lock()
                .unwrap()
                .push((machine.to_string(), key.clone(), reason.clone()));
        }
    }

    fn progress(&self, _machine: &str) {
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }

    fn warning(&self, machine: Option<&str>, message: &str) {
        if !self.quiet {
            let ctx = machine.map(|m| format!("machine `{m}`"));
            self.println(&diag::warning(self.style, ctx.as_deref(), message));
        }
    }
}
