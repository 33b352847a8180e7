//! `lab ls`: the machines with their tags, transport, address, and the
//! generation lab last put on them and when (`.lab/sync/NAME.last`,
//! written by `lab sync`, `lab rollback` and `lab watch` from this project;
//! a machine never synced from here shows `-`).

use crate::Failure;
use lab_config::{Machine, Transport};
use lab_engine::Engine;
use serde_json::{json, Value};
use std::path::PathBuf;

fn record_path(engine: &Engine, machine: &str) -> PathBuf {
    last_path(engine.lab_dir(), machine)
}

fn last_path(lab_dir: &std::path::Path, machine: &str) -> PathBuf {
    lab_core::LabDir::at(lab_dir).last_sync_path(machine)
}

/// Note that `machine` is on generation `gen` now. Best effort: `lab ls`
/// is the only reader, and a sync must not fail over it. Written to a
/// temporary file and renamed, so a reader never sees half of it.
pub fn record(engine: &Engine, machine: &str, gen: u64) {
    record_in(engine.lab_dir(), machine, gen)
}

/// [`record`] in the `.lab/` directory `lab_dir` (a watch session holds
/// its engine).
pub fn record_in(lab_dir: &std::path::Path, machine: &str, gen: u64) {
    let path = last_path(lab_dir, machine);
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let text = json!({ "generation": gen, "at": unix }).to_string();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = path.with_extension("last.tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
}

/// The recorded `(generation, unix time)`, if any.
fn recorded(engine: &Engine, machine: &str) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(record_path(engine, machine)).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    Some((v["generation"].as_u64()?, v["at"].as_u64()?))
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a unix time (UTC; days to civil date after
/// Howard Hinnant's algorithm, to need no date crate for one column).
pub fn utc(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn transport(m: &Machine) -> (&'static str, String) {
    if let Some(c) = &m.container {
        return ("via", format!("root@{}:22 on {}", c.address, c.on));
    }
    match &m.transport {
        Transport::Ssh => ("ssh", format!("{}@{}:{}", m.user, m.host, m.port)),
        Transport::Local { root } => ("local", crate::diag::shown(root)),
    }
}

/// One machine as `lab ls --json` shows it (the schema is in the README).
pub fn machine_json(engine: &Engine, m: &Machine) -> Value {
    let (t, address) = transport(m);
    let rec = recorded(engine, &m.name);
    json!({
        "name": m.name,
        "tags": engine.project.tags.get(&m.name).cloned().unwrap_or_default(),
        "transport": t,
        "address": address,
        "generation": rec.map(|r| r.0),
        "last_sync": rec.map(|r| utc(r.1)),
    })
}

/// `names` empty: every machine.
pub fn ls(engine: &Engine, names: &[String], json: bool) -> Result<(), Failure> {
    let machines: Vec<&Machine> = engine
        .project
        .machines
        .iter()
        .filter(|m| names.is_empty() || names.contains(&m.name))
        .collect();
    if json {
        let v: Vec<Value> = machines.iter().map(|m| machine_json(engine, m)).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "machines": v })).expect("json")
        );
        return Ok(());
    }
    let mut rows = vec![[
        "NAME".to_string(),
        "TAGS".into(),
        "TRANSPORT".into(),
        "ADDRESS".into(),
        "GEN".into(),
        "LAST SYNC".into(),
    ]];
    for m in machines {
        let (t, address) = transport(m);
        let tags = engine
            .project
            .tags
            .get(&m.name)
            .map(|t| t.join(","))
            .unwrap_or_default();
        let rec = recorded(engine, &m.name);
        rows.push([
            m.name.clone(),
            if tags.is_empty() { "-".into() } else { tags },
            t.into(),
            address,
            rec.map_or("-".into(), |r| r.0.to_string()),
            rec.map_or("-".into(), |r| utc(r.1)),
        ]);
    }
    let mut width = [0usize; 6];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    for r in &rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        println!("{}", line.trim_end());
    }
    Ok(())
}
