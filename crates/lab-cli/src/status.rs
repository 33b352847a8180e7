//! `lab status` and `lab check`: per machine, without changing anything,
//! whether it is in sync: what the source would ship, what drifted on the
//! machine, unit actions pending, failed units, the applied generation.
//! One connection and one command per machine, machines in parallel. Also
//! the lines a sync prints about the drift it repaired.

use crate::diag::{self, Style};
use crate::Failure;
use lab_agent::{Drift, UnitAction, UnitOp};
use lab_engine::{BuildOptions, Engine};
use serde_json::{json, Value};

pub struct StatusArgs {
    pub machines: Vec<String>,
    pub json: bool,
    pub accept_new: bool,
    pub jobs: usize,
    /// `lab check`: exit 3 when something is not in sync.
    pub check: bool,
}

fn action_text(a: &UnitAction) -> String {
    if a.op == UnitOp::DaemonReload {
        "daemon-reload".to_string()
    } else {
        format!("{} {}", a.op.as_str(), a.unit)
    }
}

/// The lines a sync prints under its summary: what had drifted (and was
/// repaired), and the unit actions journaled on the machine and not run
/// yet (by a run that was stopped, or by an image update).
pub fn repaired_lines(drift: &[Drift], pending: &[UnitAction]) -> String {
    let mut s = String::new();
    for d in drift {
        s.push_str(&format!("  repaired /{}: {}\n", d.path, d.kind.as_str()));
    }
    for a in pending {
        s.push_str(&format!(
            "  pending (journaled on the machine): {}\n",
            action_text(a)
        ));
    }
    s
}

use lab_deploy::MachineState as State;

trait Shown {
    fn json(&self) -> Value;
    fn text(&self, style: Style) -> String;
}

impl Shown for State {
    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "ok": self.failed_units.is_empty(),
            "in_sync": self.in_sync(),
            "generation": self.probe.gen,
            "applied_at": self.probe.applied_at,
            "interrupted": self.probe.interrupted,
            "changes": self.changes.iter().map(|p| format!("/{p}")).collect::<Vec<_>>(),
            "drift": crate::json::drift(&self.drift),
            "pending": crate::json::pending(&self.probe.check.pending),
            "failed_units": self.failed_units,
            "error": null,
        })
    }

    fn text(&self, style: Style) -> String {
        let mut head = Vec::new();
        if self.probe.interrupted {
            head.push("a run was interrupted (the next sync recovers it)".to_string());
        }
        let n =
            |k: usize, one: &str, many: &str| format!("{k} {}", if k == 1 { one } else { many });
        if !self.changes.is_empty() {
            head.push(n(self.changes.len(), "change to ship", "changes to ship"));
        }
        if !self.drift.is_empty() {
            head.push(n(self.drift.len(), "path drifted", "paths drifted"));
        }
        if !self.probe.check.pending.is_empty() {
            head.push(n(
                self.probe.check.pending.len(),
                "unit action pending",
                "unit actions pending",
            ));
        }
        if !self.failed_units.is_empty() {
            head.push(style.red(&n(self.failed_units.len(), "unit failed", "units failed")));
        }
        let when = match self.probe.applied_at {
            Some(t) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(t);
                format!(", applied {} ago", age(now.saturating_sub(t)))
            }
            None => String::new(),
        };
        let mut s = if head.is_empty() {
            format!(
                "{}: in sync (generation {}{when})\n",
                self.name, self.probe.gen
            )
        } else {
            format!(
                "{}: {} (generation {}{when})\n",
                self.name,
                head.join(", "),
                self.probe.gen
            )
        };
        for p in &self.changes {
            s.push_str(&format!("  change /{p}\n"));
        }
        for d in &self.drift {
            s.push_str(&format!(
                "  drifted /{}: {} (now {})\n",
                d.path,
                d.kind.as_str(),
                d.seen.kind_name()
            ));
        }
        for a in &self.probe.check.pending {
            s.push_str(&format!("  pending {}\n", action_text(a)));
        }
        for u in &self.failed_units {
            s.push_str(&format!("  failed {u}\n"));
        }
        s
    }
}

fn age(s: u64) -> String {
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86400),
    }
}

pub fn status(engine: &Engine, style: Style, args: &StatusArgs) -> Result<(), Failure> {
    let machines = engine.select(&args.machines).map_err(|e| {
        eprint!("{}", diag::render(style, &e, None));
        Failure::Usage
    })?;
    let ssh_config = diag::ssh_config(style)?;
    let project = &engine.project;
    // connect (facts gathered over the connection when none are cached:
    // the build needs them), then build, then one check per machine; with
    // every machine's facts cached, the build runs while lab connects
    let all_cached = machines.iter().all(|m| {
        lab_engine::lab_facts::load(engine.lab_dir(), &m.name).is_ok_and(|f| !f.is_empty())
    });
    let reporter = crate::progress::CliReporter::new(false, true);
    // (outputs are trusted: a status compares manifests, and never reads
    // or sends an output file; a sync's stream checks what it sends)
    let build = |names: Vec<String>| {
        engine.build(
            &BuildOptions {
                machines: names,
                trust_outputs: true,
                ..Default::default()
            },
            &reporter,
        )
    };
    let connect = || {
        lab_deploy::parallel(machines.clone(), args.jobs, |m| {
            crate::verbose::connecting(m);
            let r = lab_deploy::connect_with_facts(
                project,
                engine.lab_dir(),
                m,
                ssh_config.as_ref(),
                args.accept_new,
            );
            (m, r)
        })
    };
    let (connected, early) = if all_cached {
        let all: Vec<String> = machines.iter().map(|m| m.name.clone()).collect();
        std::thread::scope(|s| {
            let b = s.spawn(|| build(all));
            let c = connect();
            (c, Some(b.join().expect("the build thread")))
        })
    } else {
        (connect(), None)
    };
    let mut failed: Vec<String> = Vec::new();
    let mut doc: Vec<Value> = Vec::new();
    let mut open = Vec::new();
    for (m, r) in connected {
        match r {
            Ok(t) => open.push((m, t)),
            Err(e) => {
                let ctx = format!("machine `{}`", m.name);
                eprint!("{}", diag::render(style, &e, Some(&ctx)));
                doc.push(crate::json::failed_machine(
                    &m.name,
                    vec![crate::json::error_text(&e, Some(&ctx))],
                ));
                failed.push(m.name.clone());
            }
        }
    }
    let names: Vec<String> = open.iter().map(|(m, _)| m.name.clone()).collect();
    let mut build_failed = false;
    if !names.is_empty() || early.is_some() {
        let report = match early {
            Some(r) => r,
            None => build(names.clone()),
        }
        .map_err(|e| {
            reporter.finish();
            eprint!("{}", diag::render(style, &e, None));
            Failure::Usage
        })?;
        reporter.finish();
        // (a machine that could not be reached is reported as such, built
        // or not)
        for m in report.machines.iter().filter(|m| names.contains(&m.name)) {
            if let Err(errors) = &m.result {
                for e in errors {
                    eprint!("{}", diag::machine_error(style, engine, &m.name, e).0);
                }
                build_failed = true;
                open.retain(|(o, _)| o.name != m.name);
                doc.push(crate::json::failed_machine(
                    &m.name,
                    vec!["the build failed (its errors are on stderr)".into()],
                ));
            }
        }
    }
    let results = lab_deploy::parallel(open, args.jobs, |(m, mut t)| {
        (
            m.name.clone(),
            lab_deploy::machine_state(engine, m, t.as_mut()),
        )
    });
    let mut out_of_sync = false;
    for (name, r) in results {
        match r {
            Ok(st) => {
                out_of_sync |= !st.in_sync();
                if !st.failed_units.is_empty() {
                    failed.push(name.clone());
                }
                if args.json {
                    doc.push(st.json());
                } else {
                    print!("{}", st.text(Style::stdout()));
                }
            }
            Err(e) => {
                let ctx = format!("machine `{name}`");
                eprint!("{}", diag::render(style, &e, Some(&ctx)));
                doc.push(crate::json::failed_machine(
                    &name,
                    vec![crate::json::error_text(&e, Some(&ctx))],
                ));
                failed.push(name);
            }
        }
    }
    let order: Vec<&str> = machines.iter().map(|m| m.name.as_str()).collect();
    failed.sort_by_key(|n| order.iter().position(|o| o == n));
    if args.json {
        doc.sort_by_key(|v| {
            let n = v["name"].as_str().unwrap_or_default().to_string();
            order.iter().position(|o| *o == n)
        });
        crate::json::print(&json!({
            "machines": doc,
            "in_sync": !out_of_sync && failed.is_empty() && !build_failed,
            "failed": failed,
        }));
    }
    if build_failed {
        return Err(Failure::Usage);
    }
    if !failed.is_empty() {
        return Err(Failure::Partial);
    }
    if args.check && out_of_sync {
        return Err(Failure::OutOfSync);
    }
    Ok(())
}
