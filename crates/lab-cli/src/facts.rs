//! `lab facts`: gather a machine's facts, cache them, print them.

use crate::diag::{self, Style};
use crate::Failure;
use lab_engine::{lab_facts, Engine};

pub fn facts(
    engine: &Engine,
    style: Style,
    machine: &str,
    local: bool,
    quiet: bool,
) -> Result<(), Failure> {
    let usage = |e: &dyn lab_config::Diagnose| {
        eprint!("{}", diag::render(style, e, None));
        Failure::Usage
    };
    if let Err(e) = engine.select(&[machine.to_string()]) {
        return Err(usage(&e));
    }
    if !local {
        eprintln!(
            "{} gathering facts over SSH is not available yet\n  {} `lab facts --machine {machine} --local` gathers them from this host",
            style.red("error:"),
            style.cyan("hint:")
        );
        return Err(Failure::Usage);
    }
    let (path, facts) = engine.gather_local(machine).map_err(|e| {
        eprint!("{}", diag::render(style, &e, None));
        Failure::Partial
    })?;
    // A make-style lab's templates see them under their ENV_* names.
    let shown = if engine.project.compat.is_some() {
        lab_facts::to_compat(&facts)
    } else {
        facts
            .iter()
            .map(|(k, v)| (k.clone(), lab_facts::value_text(v)))
            .collect()
    };
    for (k, v) in &shown {
        println!("{k}={v}");
    }
    if !quiet {
        eprintln!("saved in {}", diag::shown(&path));
    }
    Ok(())
}
