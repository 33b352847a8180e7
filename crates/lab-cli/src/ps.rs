//! `lab ps`: the pods each machine's build wants against what runs there
//! (state, restarts, uptime, memory, ports; a pod that is not running with
//! the tail of its journal). One connection and one command per machine,
//! machines in parallel.

use crate::diag::{self, Style};
use crate::Failure;
use lab_engine::{BuildOptions, Engine};
use lab_sync::pods::{DesiredPod, PodStatus};
use serde_json::{json, Value};

pub struct PsArgs {
    pub machines: Vec<String>,
    pub json: bool,
    pub accept_new: bool,
    pub jobs: usize,
    /// Journal lines shown for a pod that is not running.
    pub lines: usize,
}

fn mib(bytes: u64) -> String {
    if bytes == 0 {
        "-".into()
    } else {
        format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
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

fn text(style: Style, machine: &str, pods: &[PodStatus], now: i64) -> String {
    let mut s = format!("{}:\n", style.bold(machine));
    if pods.is_empty() {
        s.push_str("  no pods\n");
        return s;
    }
    let rows: Vec<[String; 7]> = pods
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.user.clone().unwrap_or_else(|| "root".into()),
                p.state().to_string(),
                p.restarts().to_string(),
                p.uptime_s(now).map_or("-".into(), age),
                mib(p.memory_bytes()),
                if p.ports.is_empty() {
                    "-".into()
                } else {
                    p.ports.join(",")
                },
            ]
        })
        .collect();
    let head = [
        "POD", "USER", "STATE", "RESTARTS", "UPTIME", "MEMORY", "PORTS",
    ];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::from(" ");
        for (i, c) in cells.iter().enumerate() {
            l.push(' ');
            l.push_str(&format!("{c:<width$}", width = w[i]));
        }
        format!("{}\n", l.trim_end())
    };
    s.push_str(&line(&head.map(String::from)));
    for (r, p) in rows.iter().zip(pods) {
        let l = line(r);
        s.push_str(&if p.failed() { style.red(&l) } else { l });
        if let Some(e) = &p.error {
            s.push_str(&format!("    {e}\n"));
        }
        for j in &p.journal {
            s.push_str(&format!("    | {j}\n"));
        }
    }
    s
}

fn json_pods(pods: &[PodStatus], now: i64) -> Vec<Value> {
    pods.iter()
        .map(|p| {
            json!({
                "name": p.name,
                "user": p.user,
                "unit": p.unit,
                "state": p.state(),
                "active": p.active,
                "sub": p.sub,
                "restarts": p.restarts(),
                "uptime_s": p.uptime_s(now),
                "memory_bytes": p.memory_bytes(),
                "ports": p.ports,
                "containers": p.containers.iter().map(|c| json!({
                    "name": c.name,
                    "state": c.state,
                    "restarts": c.restarts,
                    "started_at": c.started_at,
                    "memory_bytes": c.memory_bytes,
                })).collect::<Vec<_>>(),
                "journal": p.journal,
                "error": p.error,
            })
        })
        .collect()
}

/// The pods of machine `m`'s last build.
pub fn desired(engine: &Engine, m: &lab_config::Machine) -> Result<Vec<DesiredPod>, String> {
    lab_deploy::desired_pods(engine, m)
}

pub fn ps(engine: &Engine, style: Style, args: &PsArgs) -> Result<(), Failure> {
    let machines = engine.select(&args.machines).map_err(|e| {
        eprint!("{}", diag::render(style, &e, None));
        Failure::Usage
    })?;
    let project = &engine.project;
    let ssh_config = diag::ssh_config(style)?;
    let mut failed: Vec<String> = Vec::new();
    let mut doc = serde_json::Map::new();
    let fail =
        |name: &str, e: &dyn lab_config::Diagnose, doc: &mut serde_json::Map<String, Value>| {
            let ctx = format!("machine `{name}`");
            eprint!("{}", diag::render(style, e, Some(&ctx)));
            doc.insert(
                name.to_string(),
                json!({ "errors": [crate::json::error_text(e, Some(&ctx))] }),
            );
            name.to_string()
        };
    // connect (facts gathered when none are cached: the build needs them)
    let connected = lab_deploy::parallel(machines.clone(), args.jobs, |m| {
        crate::verbose::connecting(m);
        let r = lab_deploy::connect_with_facts(
            project,
            engine.lab_dir(),
            m,
            ssh_config.as_ref(),
            args.accept_new,
        );
        (m, r)
    });
    let mut open = Vec::new();
    for (m, r) in connected {
        match r {
            Ok(t) => open.push((m, t)),
            Err(e) => failed.push(fail(&m.name, &e, &mut doc)),
        }
    }
    // the desired pods come from an up-to-date build
    let names: Vec<String> = open.iter().map(|(m, _)| m.name.clone()).collect();
    let mut build_failed = false;
    if !names.is_empty() {
        let reporter = crate::progress::CliReporter::new(false, true);
        let report = engine
            .build(
                &BuildOptions {
                    machines: names,
                    ..Default::default()
                },
                &reporter,
            )
            .map_err(|e| {
                reporter.finish();
                eprint!("{}", diag::render(style, &e, None));
                Failure::Usage
            })?;
        reporter.finish();
        for m in &report.machines {
            if let Err(errors) = &m.result {
                for e in errors {
                    eprint!("{}", diag::machine_error(style, engine, &m.name, e).0);
                }
                build_failed = true;
                open.retain(|(o, _)| o.name != m.name);
            }
        }
    }
    let results = lab_deploy::parallel(open, args.jobs, |(m, mut t)| {
        let r = desired(engine, m)
            .map_err(|message| lab_sync::SyncError::Build {
                machine: m.name.clone(),
                message,
            })
            .and_then(|pods| lab_sync::pods::ps(t.as_mut(), &pods, args.lines));
        (m.name.clone(), r)
    });
    for (name, r) in results {
        match r {
            Ok((pods, now)) => {
                if pods.iter().any(PodStatus::failed) {
                    failed.push(name.clone());
                }
                if args.json {
                    doc.insert(name, json!({ "pods": json_pods(&pods, now) }));
                } else {
                    print!("{}", text(Style::stdout(), &name, &pods, now));
                }
            }
            Err(e) => failed.push(fail(&name, &e, &mut doc)),
        }
    }
    if args.json {
        crate::json::print(&json!({ "machines": doc, "failed": failed }));
    }
    if build_failed {
        return Err(Failure::Usage);
    }
    if !failed.is_empty() {
        return Err(Failure::Partial);
    }
    Ok(())
}
