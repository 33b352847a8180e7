//! `lab watch`: a saved file becomes a changed machine.
//!
//! The loop itself (events, rebuilds, syncs over kept connections, retries
//! with backoff) is lab-deploy's [`Watch`]; this shows its events: one
//! line (or one JSON object) per cycle, errors as lab prints them.

use crate::diag::{self, Style};
use crate::Failure;
use lab_config::Diagnose;
use lab_deploy::{Cycle, DeployError, Event, Events, Watch, WatchLog, WatchOptions};
use lab_sync::Outcome;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub struct WatchArgs {
    pub machines: Vec<String>,
    pub no_sync: bool,
    pub json: bool,
    pub quiet: bool,
    pub accept_new: bool,
}

fn error_text(e: &dyn Diagnose) -> String {
    diag::render(Style::plain(), e, None).trim_end().to_string()
}

pub fn watch(engine: lab_engine::Engine, style: Style, args: &WatchArgs) -> Result<(), Failure> {
    let lab_dir = engine.lab_dir().to_path_buf();
    let w = Watch::new(
        engine,
        WatchOptions {
            machines: args.machines.clone(),
            no_sync: args.no_sync,
            accept_new: args.accept_new,
            ..WatchOptions::default()
        },
    )
    .map_err(|e| {
        match &e {
            DeployError::Watch(e) => eprintln!("{} {e}", style.red("error:")),
            e => eprint!("{}", diag::render(style, e, None)),
        }
        Failure::Usage
    })?;

    // Ctrl-C or SIGTERM ends the watch after the cycle under way, with the
    // session's state saved, so the next `lab build` starts from it; a
    // second one ends it at once.
    let stopper = w.stopper();
    match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                let mut seen = 0;
                for _ in signals.forever() {
                    seen += 1;
                    if seen > 1 {
                        std::process::exit(130);
                    }
                    stopper.stop();
                }
            });
        }
        Err(e) => eprintln!("{} cannot handle signals: {e}", style.yellow("warning:")),
    }

    let log_path = lab_core::LabDir::at(&lab_dir).watch_log_path();
    let sink = Sink {
        args,
        style,
        lab_dir,
    };
    // (the web console follows the session in .lab/watch.log)
    let log = match WatchLog::start(&log_path, w.machines(), &sink) {
        Ok(log) => Some(log),
        Err(e) => {
            eprint!(
                "{}",
                diag::warning(
                    style,
                    None,
                    &format!(
                        "`{}`: {e}: the web console will not see this watch",
                        log_path.display()
                    )
                )
            );
            None
        }
    };
    let events: &dyn Events = match &log {
        Some(l) => l,
        None => &sink,
    };
    w.run(events).map_err(|e| {
        eprint!("{}", diag::render(style, &e, None));
        match e {
            DeployError::Persist(_) => Failure::Partial,
            _ => Failure::Usage,
        }
    })
}

/// Shows a watch session's events.
struct Sink<'a> {
    args: &'a WatchArgs,
    style: Style,
    lab_dir: PathBuf,
}

impl Events for Sink<'_> {
    fn event(&self, e: Event<'_>) {
        let (args, style) = (self.args, self.style);
        match e {
            Event::ConnectFailed { machine, error } => {
                print_error(args, style, Some(machine), error)
            }
            Event::CycleError(e) => print_error(args, style, None, e),
            Event::BuildFailed { machine, errors } if !args.json => {
                for e in errors {
                    eprint!(
                        "{}",
                        diag::render(style, e, Some(&format!("machine `{machine}`")))
                    );
                }
            }
            Event::Cycle(c) => self.cycle(c),
            _ => {}
        }
    }
}

fn print_error(args: &WatchArgs, style: Style, machine: Option<&str>, e: &dyn Diagnose) {
    if args.json {
        println!("{}", json!({"error": error_text(e), "machine": machine}));
    } else {
        let ctx = machine.map(|m| format!("machine `{m}`"));
        eprint!("{}", diag::render(style, e, ctx.as_deref()));
    }
}

impl Sink<'_> {
    fn cycle(&self, c: &Cycle) {
        let (args, style) = (self.args, self.style);
        let mut machines: BTreeMap<String, Value> = BTreeMap::new();
        let mut errors: Vec<String> = Vec::new();
        for m in &c.machines {
            let mut v = json!({ "rendered": m.rendered });
            match &m.build {
                Some(Ok(b)) => {
                    v["written"] = json!(b.written);
                    v["removed"] = json!(b.removed);
                }
                Some(Err(errs)) => {
                    let texts: Vec<String> = errs.iter().map(|e| error_text(e)).collect();
                    v["errors"] = json!(texts);
                    errors.extend(texts);
                }
                None => {}
            }
            machines.insert(m.name.clone(), v);
        }
        for m in &c.machines {
            let name = &m.name;
            match &m.sync {
                Some(Ok(rep)) => {
                    let (Outcome::Unchanged { gen }
                    | Outcome::Applied { gen }
                    | Outcome::RolledBack { gen }) = rep.outcome;
                    crate::ls::record_in(&self.lab_dir, name, gen);
                    machines.get_mut(name).expect("every machine")["sync"] =
                        crate::json::watch_sync(rep);
                    if !rep.ok() {
                        errors.push(format!(
                            "{name}: units failed: {}",
                            rep.failed_units.join(", ")
                        ));
                    }
                }
                Some(Err(err)) => {
                    let text = error_text(err);
                    machines.get_mut(name).expect("every machine")["sync_error"] = json!(text);
                    errors.push(format!("{name}: {text}"));
                    if !args.json {
                        eprint!(
                            "{}",
                            diag::render(style, err, Some(&format!("machine `{name}`")))
                        );
                    }
                }
                None => {}
            }
        }
        let t = &c.times;
        let (changed, warnings, cycle) = (&c.changed, &c.warnings, c.number);
        let (debounce_ms, build_ms, sync_ms) = (t.debounce_ms, t.build_ms, t.sync_ms);
        if args.json {
            println!(
                "{}",
                json!({
                    "cycle": cycle,
                    "changed": changed,
                    "machines": machines,
                    "warnings": warnings,
                    "errors": errors,
                    "ms": {"debounce": debounce_ms, "build": build_ms, "sync": sync_ms, "total": t.total_ms},
                })
            );
        } else if !args.quiet || !errors.is_empty() {
            let what = if changed.is_empty() {
                if cycle == 0 {
                    "start".to_string()
                } else {
                    "retry".to_string()
                }
            } else if changed.len() <= 3 {
                changed.join(", ")
            } else {
                format!("{} and {} more", changed[..2].join(", "), changed.len() - 2)
            };
            let mut parts = Vec::new();
            for (name, v) in &machines {
                let mut p = Vec::new();
                let r = v["rendered"].as_array().map_or(0, |a| a.len());
                if r > 0 {
                    p.push(format!("{r} rendered"));
                }
                if let Some(s) = v.get("sync") {
                    match s["outcome"].as_str() {
                        Some("applied") => {
                            p.push(format!("sent {} ({} B)", s["written"], s["bytes"]))
                        }
                        Some("rolled-back") => p.push("rolled back".into()),
                        _ => {}
                    }
                    for u in s["units"].as_array().into_iter().flatten() {
                        p.push(format!(
                            "{} {} {}",
                            u["action"].as_str().unwrap_or(""),
                            u["unit"].as_str().unwrap_or(""),
                            u["result"].as_str().unwrap_or("")
                        ));
                    }
                }
                if v.get("errors").is_some() || v.get("sync_error").is_some() {
                    p.push(style.red("failed"));
                }
                if !p.is_empty() {
                    parts.push(format!("{name}: {}", p.join(", ")));
                }
            }
            println!(
                "{what} -> {} [debounce {debounce_ms} ms, build {build_ms} ms, sync {sync_ms} ms]",
                if parts.is_empty() {
                    "nothing to do".to_string()
                } else {
                    parts.join("; ")
                }
            );
            for w in warnings {
                eprint!("{}", diag::warning(style, None, w));
            }
        }
    }
}
