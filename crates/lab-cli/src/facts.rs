//! `lab facts`: gather a machine's facts, cache them, print them.

use crate::diag::{self, Style};
use crate::Failure;
use lab_engine::{lab_facts, Engine};

pub struct FactsArgs {
    pub local: bool,
    pub refresh: bool,
    pub accept_new: bool,
    pub quiet: bool,
    /// Several machines: each line says whose it is.
    pub several: bool,
}

/// `json`: push the machine's facts there instead of printing them.
pub fn facts(
    engine: &Engine,
    style: Style,
    machine: &str,
    args: &FactsArgs,
    json: Option<&mut Vec<serde_json::Value>>,
) -> Result<(), Failure> {
    let FactsArgs {
        local,
        refresh,
        accept_new,
        quiet,
        several,
    } = *args;
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
    let cached = lab_deploy::cached_facts(engine.lab_dir(), machine).filter(|_| !refresh);
    let (path, facts) = if local {
        engine.gather_local(machine).map_err(|e| failed(&e))?
    } else if let Some(cached) = cached {
        (lab_facts::cache_path(engine.lab_dir(), machine), cached)
    } else {
        let connector = lab_deploy::Connector::new(accept_new).map_err(|e| failed(&e))?;
        crate::verbose::connecting(m);
        let mut t = connector
            .connect(&engine.project, m)
            .map_err(|e| failed(&e))?;
        lab_sync::gather_facts(t.as_mut(), engine.lab_dir(), machine).map_err(|e| failed(&e))?
    };
    // JSON keeps a native lab's values as they are (numbers stay numbers)
    let native: serde_json::Map<String, serde_json::Value> = if engine.project.compat.is_some() {
        serde_json::Map::new()
    } else {
        facts.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
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
    if let Some(doc) = json {
        let facts: serde_json::Map<String, serde_json::Value> = if native.is_empty() {
            shown
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect()
        } else {
            native
        };
        doc.push(serde_json::json!({
            "name": machine,
            "facts": facts,
            "cache": diag::shown(&path),
        }));
        return Ok(());
    }
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
