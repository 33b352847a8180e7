//! `lab sync`, `lab diff`, `lab rollback`: build, then talk to machines.

use crate::diag::{self, Style};
use crate::Failure;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use lab_config::{Diagnose, Machine};
use lab_core::{UnitResultCode, UnitState};
use lab_deploy::{Connector, DeployError, Event, Events, MachineResult, Step, SyncPlan};
use lab_engine::{Engine, Reporter};
use lab_sync::diff::DiffLine;
use lab_sync::{MachineSync, Outcome, SyncReport};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

pub struct SyncArgs {
    pub machines: Vec<String>,
    pub all: bool,
    pub jobs: usize,
    pub accept_new: bool,
    pub rollback_on_failure: bool,
    /// Destroy container machines on the synced hosts that lab.toml no
    /// longer declares (their data goes with them).
    pub destroy_undeclared: bool,
    pub quiet: bool,
    /// `--json`: one document on stdout instead of the summaries.
    pub json: bool,
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
    let sink = Sink::new(engine, style, quiet, false);
    let failed = lab_deploy::build(engine, &all, false, &sink).map_err(|_| Failure::Usage)?;
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
        let state = match UnitState::from_words(&u.active, &u.sub) {
            UnitState::Unknown => u.result.clone(),
            UnitState::NoSystemd => "skipped (no systemd on this machine)".to_string(),
            UnitState::Known { active, sub } => format!("{}, now {active}/{sub}", u.result),
        };
        let line = format!("  {} {}: {state}", u.action, u.unit);
        out.push_str(&if u.failed() { style.red(&line) } else { line });
        out.push('\n');
        if UnitResultCode::parse(&u.result) == Some(UnitResultCode::StartLimit) {
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

fn spinner(multi: &MultiProgress, name: &str, msg: &'static str) -> ProgressBar {
    let bar = multi.add(ProgressBar::new_spinner());
    bar.set_style(ProgressStyle::with_template("{spinner} {prefix}: {msg}").expect("template"));
    bar.set_prefix(name.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    bar.set_message(msg);
    bar
}

/// Shows a deployment's events: spinners and the build's progress bar on
/// a terminal, errors on stderr, a summary per synced machine on stdout
/// (or nothing there with `--json`: the document is made at the end).
struct Sink<'e> {
    engine: &'e Engine,
    style: Style,
    quiet: bool,
    json: bool,
    multi: MultiProgress,
    spinners: Mutex<HashMap<String, ProgressBar>>,
    /// The progress bar of the build under way.
    build: Mutex<Option<crate::progress::CliReporter>>,
}

impl<'e> Sink<'e> {
    fn new(engine: &'e Engine, style: Style, quiet: bool, json: bool) -> Sink<'e> {
        Sink {
            engine,
            style,
            quiet,
            json,
            multi: MultiProgress::with_draw_target(if !quiet && std::io::stderr().is_terminal() {
                ProgressDrawTarget::stderr_with_hz(10)
            } else {
                ProgressDrawTarget::hidden()
            }),
            spinners: Mutex::new(HashMap::new()),
            build: Mutex::new(None),
        }
    }

    fn with_build(&self, f: impl FnOnce(&crate::progress::CliReporter)) {
        if let Some(r) = self.build.lock().unwrap().as_ref() {
            f(r)
        }
    }
}

impl Reporter for Sink<'_> {
    fn scanned(&self, files: usize, hashed: usize) {
        self.with_build(|r| r.scanned(files, hashed))
    }
    fn machine_started(&self, machine: &str, work: usize) {
        self.with_build(|r| r.machine_started(machine, work))
    }
    fn node_ran(&self, machine: &str, key: &lab_graph::Key, reason: &lab_graph::Reason) {
        self.with_build(|r| r.node_ran(machine, key, reason))
    }
    fn progress(&self, machine: &str) {
        self.with_build(|r| r.progress(machine))
    }
    fn warning(&self, machine: Option<&str>, message: &str) {
        self.with_build(|r| r.warning(machine, message))
    }
}

impl Events for Sink<'_> {
    fn reporter(&self) -> &dyn Reporter {
        self
    }

    fn event(&self, e: Event<'_>) {
        let style = self.style;
        match e {
            Event::Step { machine, step } => {
                let mut spinners = self.spinners.lock().unwrap();
                match step {
                    Step::Connecting => {
                        spinners.insert(
                            machine.name.clone(),
                            spinner(&self.multi, &machine.name, "connecting"),
                        );
                        crate::verbose::connecting(machine);
                    }
                    Step::GatheringFacts => {
                        if let Some(b) = spinners.get(&machine.name) {
                            b.set_message("gathering facts");
                        }
                    }
                    Step::Syncing => {
                        spinners.insert(
                            machine.name.clone(),
                            spinner(&self.multi, &machine.name, "syncing"),
                        );
                    }
                    Step::Done => {
                        if let Some(b) = spinners.remove(&machine.name) {
                            b.finish_and_clear();
                        }
                    }
                }
            }
            Event::BuildStarted => {
                *self.build.lock().unwrap() =
                    Some(crate::progress::CliReporter::new(false, self.quiet));
            }
            Event::BuildFinished => {
                if let Some(r) = self.build.lock().unwrap().take() {
                    r.finish();
                }
            }
            Event::BuildError(e) => eprint!("{}", diag::render(style, e, None)),
            Event::BuildFailed { machine, errors } => {
                for e in errors {
                    eprint!("{}", diag::machine_error(style, self.engine, machine, e).0);
                }
            }
            Event::Connected { machine, warnings } => {
                for w in warnings {
                    eprintln!("{} machine `{machine}`: {w}", style.yellow("warning:"));
                }
            }
            Event::ConnectFailed { machine, error } | Event::SyncFailed { machine, error } => {
                let ctx = format!("machine `{machine}`");
                eprint!("{}", diag::render(style, error, Some(&ctx)));
            }
            Event::Synced {
                machine,
                report,
                ms,
            } => {
                let (Outcome::Unchanged { gen }
                | Outcome::Applied { gen }
                | Outcome::RolledBack { gen }) = report.outcome;
                crate::ls::record(self.engine, machine, gen);
                crate::verbose::synced(machine, report, ms);
                if !self.json && (!self.quiet || !report.ok()) {
                    print!("{}", summary(style, machine, report, ms));
                }
            }
            _ => {}
        }
    }
}

pub fn sync(engine: &Engine, style: Style, args: &SyncArgs) -> Result<(), Failure> {
    if args.machines.is_empty() && !args.all {
        eprintln!(
            "{} choose what to sync: `--machine NAME` (repeatable) or `--all`",
            style.red("error:")
        );
        return Err(Failure::Usage);
    }
    let usage = |e: &dyn Diagnose| {
        eprint!("{}", diag::render(style, e, None));
        Failure::Usage
    };
    // (a selection that names no machine is refused before the ssh config
    // is read)
    engine.select(&args.machines).map_err(|e| usage(&e))?;
    crate::machines::before_sync(
        engine,
        style,
        &args.machines,
        args.destroy_undeclared,
        args.quiet || args.json,
    );
    let connector = Connector::new(args.accept_new).map_err(|e| usage(&e))?;
    let sink = Sink::new(engine, style, args.quiet, args.json);
    let run = lab_deploy::sync(
        engine,
        &connector,
        &SyncPlan {
            machines: args.machines.clone(),
            jobs: args.jobs,
            rollback_on_failure: args.rollback_on_failure,
        },
        &sink,
    )
    .map_err(|e| match e {
        // (the build's error was shown when it happened)
        DeployError::Build(_) => Failure::Usage,
        e => usage(&e),
    })?;
    if args.json {
        let doc: Vec<serde_json::Value> = run
            .machines
            .iter()
            .map(|m| {
                let ctx = format!("machine `{}`", m.name);
                match &m.result {
                    MachineResult::Synced { report, .. } => {
                        crate::json::sync_machine(&m.name, report)
                    }
                    MachineResult::Unreached(e) | MachineResult::Failed(e) => {
                        crate::json::failed_machine(
                            &m.name,
                            vec![crate::json::error_text(e, Some(&ctx))],
                        )
                    }
                    MachineResult::BuildFailed => crate::json::failed_machine(
                        &m.name,
                        vec!["the build failed (its errors are on stderr)".to_string()],
                    ),
                }
            })
            .collect();
        crate::json::print(&serde_json::json!({
            "machines": doc,
            "failed": run.failed(),
        }));
    }
    crate::outcome(style, &run.failed())
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
    let connector = Connector::new(accept_new).map_err(|e| fail_machine(style, name, &e))?;
    let target = lab_deploy::target(&engine.project, m, engine.lab_dir());
    crate::verbose::connecting(m);
    let mut t = connector
        .connect(&engine.project, m)
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
    let connector = Connector::new(accept_new).map_err(|e| fail_machine(style, name, &e))?;
    let target = lab_deploy::target(&engine.project, m, engine.lab_dir());
    crate::verbose::connecting(m);
    let mut t = connector
        .connect(&engine.project, m)
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
