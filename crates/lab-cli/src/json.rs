//! `--json`: one JSON document per command on stdout, its schema in the
//! README and pinned by snapshot tests (`tests/json.rs`). Shapes follow
//! `lab watch --json` (paths with a leading `/`, errors as the text lab
//! would print, without colour). Human diagnostics still go to stderr.

use crate::diag::{self, Style};
use lab_agent::{Drift, UnitAction};
use lab_config::Diagnose;
use lab_sync::diff::DiffLine;
use lab_sync::{Outcome, SyncReport};
use serde_json::{json, Value};

/// An error as the text lab prints for it (message, location, hint).
pub fn error_text(e: &dyn Diagnose, context: Option<&str>) -> String {
    diag::render(Style::plain(), e, context)
        .trim_end()
        .to_string()
}

fn paths(v: &[String]) -> Vec<String> {
    v.iter().map(|p| format!("/{p}")).collect()
}

/// Drift found on a machine (`lab status`, and repaired by `lab sync` and
/// `lab watch`): `[{"path", "kind", "now"}]`.
pub fn drift(d: &[Drift]) -> Value {
    d.iter()
        .map(|d| {
            json!({
                "path": format!("/{}", d.path),
                "kind": d.kind.as_str(),
                "now": d.seen.kind_name(),
            })
        })
        .collect()
}

/// Unit actions an earlier run left pending (found by `lab status`, run
/// by `lab sync` and `lab watch`): `[{"action", "unit"}]`.
pub fn pending(p: &[UnitAction]) -> Value {
    p.iter()
        .map(|a| json!({ "action": a.op.as_str(), "unit": a.unit }))
        .collect()
}

/// A sync's outcome and generation.
fn outcome(r: &SyncReport) -> (&'static str, u64) {
    match r.outcome {
        Outcome::Unchanged { gen } => ("unchanged", gen),
        Outcome::Applied { gen } => ("applied", gen),
        Outcome::RolledBack { gen } => ("rolled-back", gen),
    }
}

/// The one sync of a machine in a `lab watch --json` cycle.
pub fn watch_sync(r: &SyncReport) -> Value {
    let (outcome, gen) = outcome(r);
    json!({
        "outcome": outcome,
        "generation": gen,
        "written": r.written,
        "removed": r.removed,
        "bytes": r.content_bytes,
        "units": r.apply.units.iter().map(|u| json!({
            "unit": u.unit, "action": u.action, "result": u.result, "active": u.active,
        })).collect::<Vec<_>>(),
        "drift": drift(&r.drift),
        "pending": pending(&r.pending),
    })
}

/// `lab build --json`, one machine.
pub fn build_machine(name: &str, result: &Result<lab_engine::MachineReport, Vec<String>>) -> Value {
    match result {
        Ok(r) => json!({
            "name": name,
            "ok": true,
            "up_to_date": r.up_to_date,
            "rendered": r.rendered,
            "written": paths(&r.written),
            "removed": paths(&r.removed),
            "entries": r.entries,
            "errors": [],
        }),
        Err(errors) => json!({
            "name": name,
            "ok": false,
            "errors": errors,
        }),
    }
}

/// `lab sync --json`, one machine that was synced.
pub fn sync_machine(name: &str, r: &SyncReport) -> Value {
    let (outcome, gen) = outcome(r);
    let units = |rep: &lab_agent::Report| {
        rep.units
            .iter()
            .map(|u| {
                json!({
                    "unit": u.unit,
                    "action": u.action,
                    "result": u.result,
                    "active": u.active,
                    "sub": u.sub,
                    "failed": u.failed(),
                    "journal": u.journal,
                })
            })
            .collect::<Vec<_>>()
    };
    json!({
        "name": name,
        "ok": r.ok(),
        "outcome": outcome,
        "generation": gen,
        "written": r.written,
        "removed": r.removed,
        "bytes": r.content_bytes,
        "units": units(&r.apply),
        "rollback_units": r.rollback.as_ref().map(units),
        "drift": drift(&r.drift),
        "pending": pending(&r.pending),
        "errors": if r.ok() { vec![] } else {
            vec![format!("unit failure: {}", r.failed_units.join(", "))]
        },
    })
}

/// `lab sync --json`, one machine that did not get as far as a sync.
pub fn failed_machine(name: &str, errors: Vec<String>) -> Value {
    json!({ "name": name, "ok": false, "errors": errors })
}

/// `lab diff --json`, one machine's changes (secrets masked as in the
/// text diff: the lines are the same).
pub fn diff_machine(name: &str, changes: &[lab_sync::Change]) -> Value {
    let changes: Vec<Value> = changes
        .iter()
        .map(|c| {
            let change = match (&c.before, &c.after) {
                (None, Some(_)) => "added",
                (Some(_), None) => "removed",
                _ => "changed",
            };
            let lines: Vec<String> = lab_sync::diff::render(c)
                .into_iter()
                .skip(1)
                .map(|l| match l {
                    DiffLine::Header(h) => h,
                    DiffLine::Removed(s) => format!("-{s}"),
                    DiffLine::Added(s) => format!("+{s}"),
                    DiffLine::Context(s) => format!(" {s}"),
                })
                .collect();
            json!({
                "path": format!("/{}", c.path.trim_start_matches('/')),
                "change": change,
                "before": c.before.as_ref().map(lab_manifest::describe),
                "after": c.after.as_ref().map(lab_manifest::describe),
                "diff": lines,
            })
        })
        .collect();
    json!({ "name": name, "changes": changes })
}

/// Print a command's document.
pub fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).expect("JSON"));
}
