//! `lab facts`: gather a machine's facts, cache them, print them.

use crate::diag::{self, Style};
use crate::Failure;
use lab_engine::{lab_facts, Engine};

#[allow(clippy::too_many_arguments)]
pub fn facts(
    engine: &Engine,
    style: Style,
    machine: &str,
    local: bool,
    refresh: bool,
    accept_new: bool,
    quiet: bool,
    several: bool,
) -> Result<(), Failure> {
    let usage = |e: &dyn lab_config::Diagnose| {
        eprint!("{}", diag::render(style, e, None));
        Failure::Usage
    };
    let m = match engine.select(&[machine.to_string()]) {
        Ok(v) => v[0],
        Err(e) => return Err(usage(&e)),
    };
    let failed = |e: &dyn lab_config::Diagnose| {
        eprint!(
            "{}",
            diag::render(style, e, Some(&format!("machine `{machine}`")))
        );
        Failure::Partial
    };
    let cached = lab_facts::load(engine.lab_dir(), machine).unwrap_or_default();
    let (path, facts) = if local {
        engine.gather_local(machine).map_err(|e| failed(&e))?
    } else if !refresh && !cached.is_empty() {
        (lab_facts::cache_path(engine.lab_dir(), machine), cached)
    } else {
        let ssh_config = lab_sync::ssh::load_ssh_config().map_err(|e| failed(&e))?;
        let mut t = lab_sync::connect(&engine.project, m, ssh_config.as_ref(), accept_new)
            .map_err(|e| failed(&e))?;
        lab_sync::gather_facts(t.as_mut(), engine.lab_dir(), machine).map_err(|e| failed(&e))?
    };
    // A make-style lab's templates see them under their ENV_* names.
    let shown = if engine.project.compat.is_some() {
        lab_facts::to_compat(&facts)
    } else {
        facts
            .iter()
            .map(|(k, v)| (k.clone(), lab_facts::value_text(v)))
            .collect()
    };
    // with several machines, each line says whose it is
    let prefix = if several {
        format!("{machine}: ")
    } else {
        String::new()
    };
    for (k, v) in &shown {
        println!("{prefix}{k}={v}");
    }
    if !quiet {
        eprintln!("saved in {}", diag::shown(&path));
    }
    Ok(())
}
