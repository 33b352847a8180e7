//! `lab sync`, `lab diff`, `lab rollback`: build, then talk to machines.

use crate::diag::{self, Style};
use crate::Failure;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use lab_config::{Diagnose, Machine};
use lab_engine::{BuildOptions, Engine};
use lab_sync::diff::DiffLine;
use lab_sync::{MachineSync, Outcome, SyncOptions, SyncReport};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

pub struct SyncArgs {
    pub machines: Vec<String>,
    pub all: bool,
    pub jobs: usize,
    pub accept_new: bool,
    pub rollback_on_failure: bool,
    pub quiet: bool,
    /// `--json`: one document on stdout instead of the summaries.
    pub json: bool,
}

/// Build the named machines; report and return the ones that failed.
/// `trust`: see [`BuildOptions::trust_outputs`] (a sync's own stream
/// checks what it sends).
fn build(
    engine: &Engine,
    style: Style,
    names: &[String],
    quiet: bool,
    trust: bool,
) -> Result<Vec<String>, Failure> {
    let reporter = crate::progress::CliReporter::new(false, quiet);
    let report = engine
        .build(
            &BuildOptions {
                machines: names.to_vec(),
                trust_outputs: trust,
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
    let mut failed = Vec::new();
    for m in &report.machines {
        if let Err(errors) = &m.result {
            for e in errors {
                eprint!("{}", diag::machine_error(style, engine, &m.name, e).0);
            }
            failed.push(m.name.clone());
        }
    }
    Ok(failed)
}

/// Build the machines; report the ones that failed and return the rest.
fn build_first<'a>(
    engine: &'a Engine,
    style: Style,
    names: &[String],
    quiet: bool,
) -> Result<Vec<&'a Machine>, Failure> {
    let machines = engine.select(names).map_err(|e| {
        eprint!("{}", diag::render(style, &e, None));
        Failure::Usage
    })?;
    let all: Vec<String> = machines.iter().map(|m| m.name.clone()).collect();
    let failed = build(engine, style, &all, quiet, false)?;
    Ok(machines
        .into_iter()
        .filter(|m| !failed.contains(&m.name))
        .collect())
}

fn bytes(n: u64) -> String {
    if n < 1024 {
        format!("{n} B")
    } else if n < 1024 * 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", n as f64 / 1024.0 / 1024.0)
    }
}

fn unit_lines(style: Style, r: &lab_agent::Report, out: &mut String) {
    for u in &r.units {
        let state = if u.active == "-" {
            u.result.clone()
        } else if u.active == "no-systemd" {
            "skipped (no systemd on this machine)".to_string()
        } else {
            format!("{}, now {}/{}", u.result, u.active, u.sub)
        };
        let line = format!("  {} {}: {state}", u.action, u.unit);
        out.push_str(&if u.failed() { style.red(&line) } else { line });
        out.push('\n');
        if u.result == "start-limit" {
            out.push_str(&format!(
                "  {} systemd refused to start `{}` again so soon (StartLimitBurst); \
                 wait, or raise StartLimitBurst= / StartLimitIntervalSec= for it\n",
                style.cyan("hint:"),
                u.unit
            ));
        }
        for j in &u.journal {
            out.push_str(&format!("    | {j}\n"));
        }
    }
    for n in &r.notes {
        out.push_str(&format!("  {n}\n"));
    }
}

fn summary(style: Style, name: &str, r: &SyncReport, elapsed_ms: u128) -> String {
    let mut s = match &r.outcome {
        Outcome::Unchanged { gen } => {
            format!("{name}: up to date (generation {gen}, {elapsed_ms} ms)\n")
        }
        Outcome::Applied { gen } => format!(
            "{name}: applied generation {gen}: {} written, {} removed, {} sent ({elapsed_ms} ms)\n",
            r.written,
            r.removed,
            bytes(r.content_bytes)
        ),
        Outcome::RolledBack { gen } => format!(
            "{name}: {} back on generation {gen} ({elapsed_ms} ms)\n",
            style.red(&format!(
                "unit failure ({}), rolled",
                r.failed_units.join(", ")
            ))
        ),
    };
    s.push_str(&crate::status::repaired_lines(&r.drift, &r.pending));
    unit_lines(style, &r.apply, &mut s);
    if let Some(rb) = &r.rollback {
        s.push_str("  after the rollback:\n");
        unit_lines(style, rb, &mut s);
    }
    s
}

/// Run `f` on every item with up to `jobs` threads; results in item order.
pub(crate) fn parallel<T: Send, R: Send>(
    items: Vec<T>,
    jobs: usize,
    f: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    let n = items.len();
    let queue = Mutex::new(items.into_iter().enumerate());
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1).min(n.max(1)) {
            s.spawn(|| loop {
                let Some((i, item)) = queue.lock().unwrap().next() else {
                    break;
                };
                let r = f(item);
                results.lock().unwrap()[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}

fn spinner(multi: &MultiProgress, name: &str, msg: &'static str) -> ProgressBar {
    let bar = multi.add(ProgressBar::new_spinner());
    bar.set_style(ProgressStyle::with_template("{spinner} {prefix}: {msg}").expect("template"));
    bar.set_prefix(name.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    bar.set_message(msg);
    bar
}

pub fn sync(engine: &Engine, style: Style, args: &SyncArgs) -> Result<(), Failure> {
    if args.machines.is_empty() && !args.all {
        eprintln!(
            "{} choose what to sync: `--machine NAME` (repeatable) or `--all`",
            style.red("error:")
        );
        return Err(Failure::Usage);
    }
    let machines = engine.select(&args.machines).map_err(|e| {
        eprint!("{}", diag::render(style, &e, None));
        Failure::Usage
    })?;
    let ssh_config = lab_sync::ssh::load_ssh_config().map_err(|e| {
        eprint!("{}", diag::render(style, &e, None));
        Failure::Usage
    })?;
    let project = &engine.project;
    let multi =
        MultiProgress::with_draw_target(if !args.quiet && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr_with_hz(10)
        } else {
            ProgressDrawTarget::hidden()
        });

    // 1. One connection per machine; facts gathered over it when none are
    //    cached yet, since the build needs them. 2. Build what is
    //    reachable: while connecting, when every machine's facts are cached.
    let uncached: Vec<&str> = machines
        .iter()
        .filter(|m| {
            !lab_engine::lab_facts::load(engine.lab_dir(), &m.name).is_ok_and(|f| !f.is_empty())
        })
        .map(|m| m.name.as_str())
        .collect();
    let connect = || {
        parallel(machines.clone(), args.jobs, |m| {
            let bar = spinner(&multi, &m.name, "connecting");
            crate::verbose::connecting(m);
            let r = lab_sync::connect(project, m, ssh_config.as_ref(), args.accept_new).and_then(
                |mut t| {
                    if uncached.contains(&m.name.as_str()) {
                        bar.set_message("gathering facts");
                        lab_sync::gather_facts(t.as_mut(), engine.lab_dir(), &m.name)?;
                    }
                    Ok(t)
                },
            );
            bar.finish_and_clear();
            (m, r)
        })
    };
    let (connected, early_build) = if uncached.is_empty() {
        let all: Vec<String> = machines.iter().map(|m| m.name.clone()).collect();
        std::thread::scope(|s| {
            let b = s.spawn(|| build(engine, style, &all, args.quiet, true));
            let c = connect();
            (c, Some(b.join().expect("the build thread")))
        })
    } else {
        (connect(), None)
    };
    let mut failed = Vec::new();
    let mut open = Vec::new();
    let mut doc: Vec<(String, serde_json::Value)> = Vec::new();
    for (m, r) in connected {
        match r {
            Ok(t) => {
                for w in t.warnings() {
                    eprintln!("{} machine `{}`: {w}", style.yellow("warning:"), m.name);
                }
                open.push((m, t))
            }
            Err(e) => {
                let ctx = format!("machine `{}`", m.name);
                eprint!("{}", diag::render(style, &e, Some(&ctx)));
                let text = crate::json::error_text(&e, Some(&ctx));
                doc.push((
                    m.name.clone(),
                    crate::json::failed_machine(&m.name, vec![text]),
                ));
                failed.push(m.name.clone());
            }
        }
    }
    let names: Vec<String> = open.iter().map(|(m, _)| m.name.clone()).collect();
    let build_failed = match early_build {
        Some(r) => r?,
        None if names.is_empty() => Vec::new(),
        None => build(engine, style, &names, args.quiet, true)?,
    };
    open.retain(|(m, _)| !build_failed.contains(&m.name));
    for b in build_failed {
        if !failed.contains(&b) {
            let e = "the build failed (its errors are on stderr)".to_string();
            doc.push((b.clone(), crate::json::failed_machine(&b, vec![e])));
            failed.push(b);
        }
    }

    // 3. Sync over the open connections.
    let results = parallel(open, args.jobs, |(m, mut t)| {
        let bar = spinner(&multi, &m.name, "syncing");
        let began = Instant::now();
        let target = lab_sync::target(project, m, engine.lab_dir());
        let opts = SyncOptions {
            rollback_on_failure: args.rollback_on_failure,
        };
        let mut r = MachineSync {
            target: &target,
            transport: t.as_mut(),
        }
        .sync(&opts);
        // An output changed behind lab's back (the stream found it): a build
        // that looks at the outputs makes it again, then one more try.
        if matches!(r, Err(lab_sync::SyncError::Build { .. })) {
            let rebuilt = engine.build(
                &BuildOptions {
                    machines: vec![m.name.clone()],
                    ..Default::default()
                },
                &lab_engine::Silent,
            );
            if rebuilt.is_ok_and(|b| b.failed().next().is_none()) {
                r = MachineSync {
                    target: &target,
                    transport: t.as_mut(),
                }
                .sync(&opts);
            }
        }
        bar.finish_and_clear();
        (m.name.clone(), r, began.elapsed().as_millis())
    });
    for (name, r, ms) in results {
        match r {
            Ok(rep) => {
                let (Outcome::Unchanged { gen }
                | Outcome::Applied { gen }
                | Outcome::RolledBack { gen }) = rep.outcome;
                crate::ls::record(engine, &name, gen);
                crate::verbose::synced(&name, &rep, ms);
                if args.json {
                    doc.push((name.clone(), crate::json::sync_machine(&name, &rep)));
                } else if !args.quiet || !rep.ok() {
                    print!("{}", summary(style, &name, &rep, ms));
                }
                if !rep.ok() {
                    failed.push(name);
                }
            }
            Err(e) => {
                let ctx = format!("machine `{name}`");
                eprint!("{}", diag::render(style, &e, Some(&ctx)));
                let text = crate::json::error_text(&e, Some(&ctx));
                doc.push((name.clone(), crate::json::failed_machine(&name, vec![text])));
                failed.push(name);
            }
        }
    }
    let order: Vec<&str> = machines.iter().map(|m| m.name.as_str()).collect();
    failed.sort_by_key(|n| order.iter().position(|o| o == n));
    if args.json {
        doc.sort_by_key(|(n, _)| order.iter().position(|o| o == n));
        crate::json::print(&serde_json::json!({
            "machines": doc.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
            "failed": failed,
        }));
    }
    crate::outcome(style, &failed)
}

fn one<'a>(engine: &'a Engine, style: Style, name: &str) -> Result<&'a Machine, Failure> {
    engine
        .select(&[name.to_string()])
        .map(|v| v[0])
        .map_err(|e| {
            eprint!("{}", diag::render(style, &e, None));
            Failure::Usage
        })
}

fn fail_machine(style: Style, name: &str, e: &dyn Diagnose) -> Failure {
    eprint!(
        "{}",
        diag::render(style, e, Some(&format!("machine `{name}`")))
    );
    Failure::Partial
}

/// `json`: push the machine's changes there instead of printing them.
pub fn diff(
    engine: &Engine,
    style: Style,
    name: &str,
    accept_new: bool,
    json: Option<&mut Vec<serde_json::Value>>,
) -> Result<(), Failure> {
    let built = build_first(engine, style, &[name.to_string()], true)?;
    let Some(m) = built.first() else {
        return Err(Failure::Partial);
    };
    let ssh_config = lab_sync::ssh::load_ssh_config().map_err(|e| fail_machine(style, name, &e))?;
    let target = lab_sync::target(&engine.project, m, engine.lab_dir());
    crate::verbose::connecting(m);
    let mut t = lab_sync::connect(&engine.project, m, ssh_config.as_ref(), accept_new)
        .map_err(|e| fail_machine(style, name, &e))?;
    let changes = MachineSync {
        target: &target,
        transport: t.as_mut(),
    }
    .diff()
    .map_err(|e| fail_machine(style, name, &e))?;
    if let Some(doc) = json {
        doc.push(crate::json::diff_machine(name, &changes));
        return Ok(());
    }
    let out_style = crate::diag::Style::stdout();
    if changes.is_empty() {
        println!("{name}: nothing to change");
    }
    for c in &changes {
        for l in lab_sync::diff::render(c) {
            match l {
                DiffLine::Header(h) => println!("{}", out_style.bold(&h)),
                DiffLine::Removed(s) => println!("{}", out_style.red(&format!("-{s}"))),
                DiffLine::Added(s) => println!("{}", out_style.green(&format!("+{s}"))),
                DiffLine::Context(s) => println!(" {s}"),
            }
        }
    }
    Ok(())
}

pub fn rollback(
    engine: &Engine,
    style: Style,
    name: &str,
    to: Option<u64>,
    accept_new: bool,
) -> Result<(), Failure> {
    let m = one(engine, style, name)?;
    let ssh_config = lab_sync::ssh::load_ssh_config().map_err(|e| fail_machine(style, name, &e))?;
    let target = lab_sync::target(&engine.project, m, engine.lab_dir());
    crate::verbose::connecting(m);
    let mut t = lab_sync::connect(&engine.project, m, ssh_config.as_ref(), accept_new)
        .map_err(|e| fail_machine(style, name, &e))?;
    let report = MachineSync {
        target: &target,
        transport: t.as_mut(),
    }
    .rollback_to(to, None)
    .map_err(|e| fail_machine(style, name, &e))?;
    let gen = report.now.map(|(g, _)| g).unwrap_or(0);
    crate::ls::record(engine, name, gen);
    let mut s = format!("{name}: back on generation {gen}\n");
    unit_lines(style, &report, &mut s);
    print!("{s}");
    if report.failed_units().next().is_some() {
        return Err(Failure::Partial);
    }
    Ok(())
}
