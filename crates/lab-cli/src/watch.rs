//! `lab watch`: a saved file becomes a changed machine.
//!
//! One loop: wait for a batch of file system events (lab-watch), rebuild
//! what they affect in the in-memory session (lab-engine), sync the
//! machines whose manifest changed over connections kept open between
//! cycles (lab-sync), print one line (or one JSON object) per cycle. A
//! broken template or lab.toml is shown and watching goes on; a machine
//! that cannot be reached is retried with backoff while the others go on.

use crate::diag::{self, Style};
use crate::sync::parallel;
use crate::Failure;
use lab_config::Diagnose;
use lab_engine::{BuildReport, Engine, Reporter, Session};
use lab_graph::{Key, Reason};
use lab_sync::{MachineSync, Outcome, SyncError, SyncOptions, SyncReport, Transport};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A machine that does not answer within these is retried later, so it
/// holds up the others' cycle only this long.
const WATCH_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const WATCH_IO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct WatchArgs {
    pub machines: Vec<String>,
    pub no_sync: bool,
    pub json: bool,
    pub quiet: bool,
    pub accept_new: bool,
}

/// Records what re-rendered, per machine, and the warnings.
#[derive(Default)]
struct CycleLog {
    rendered: Mutex<BTreeMap<String, Vec<String>>>,
    warnings: Mutex<Vec<String>>,
}

impl Reporter for CycleLog {
    fn node_ran(&self, machine: &str, key: &Key, _reason: &Reason) {
        if let Key::Render(p) = key {
            self.rendered
                .lock()
                .unwrap()
                .entry(machine.to_string())
                .or_default()
                .push(format!("/{p}"));
        }
    }

    fn warning(&self, machine: Option<&str>, message: &str) {
        self.warnings.lock().unwrap().push(match machine {
            Some(m) => format!("{m}: {message}"),
            None => message.to_string(),
        });
    }
}

/// A machine's connection, kept between cycles.
struct Link {
    transport: Option<Box<dyn Transport>>,
    /// The last sync failed (or never ran): sync again when `retry_at` comes.
    pending: bool,
    failures: u32,
    retry_at: Instant,
}

impl Link {
    fn new() -> Link {
        Link {
            transport: None,
            pending: true,
            failures: 0,
            retry_at: Instant::now(),
        }
    }

    fn failed(&mut self) {
        self.transport = None;
        self.pending = true;
        self.failures += 1;
        // 1 s, 2 s, 4 s ... 30 s
        let secs = (1u64 << self.failures.min(5).saturating_sub(1)).min(30);
        self.retry_at = Instant::now() + Duration::from_secs(secs);
    }
}

fn error_text(e: &dyn Diagnose) -> String {
    diag::render(Style::plain(), e, None).trim_end().to_string()
}

fn sync_json(r: &SyncReport) -> Value {
    let (outcome, gen) = match r.outcome {
        Outcome::Unchanged { gen } => ("unchanged", gen),
        Outcome::Applied { gen } => ("applied", gen),
        Outcome::RolledBack { gen } => ("rolled-back", gen),
    };
    json!({
        "outcome": outcome,
        "generation": gen,
        "written": r.written,
        "removed": r.removed,
        "bytes": r.content_bytes,
        "units": r.apply.units.iter().map(|u| json!({
            "unit": u.unit, "action": u.action, "result": u.result, "active": u.active,
        })).collect::<Vec<_>>(),
    })
}

pub fn watch(engine: Engine, style: Style, args: &WatchArgs) -> Result<(), Failure> {
    let root = engine.project.root.clone();
    // Watch before the first build, so no edit falls between the two.
    let watcher = lab_watch::ProjectWatcher::new(&root, &["layers", "machines"]).map_err(|e| {
        eprintln!("{} {e}", style.red("error:"));
        Failure::Usage
    })?;
    let selected: Vec<lab_config::Machine> = engine
        .select(&args.machines)
        .map_err(|e| {
            eprint!("{}", diag::render(style, &e, None));
            Failure::Usage
        })?
        .into_iter()
        .cloned()
        .collect();
    let ssh_config = lab_sync::ssh::load_ssh_config().map_err(|e| {
        eprint!("{}", diag::render(style, &e, None));
        Failure::Usage
    })?;
    let mut links: HashMap<String, Link> = selected
        .iter()
        .map(|m| (m.name.clone(), Link::new()))
        .collect();

    // Connect first: a machine without cached facts gets them gathered over
    // its connection before anything is built.
    if !args.no_sync {
        let lab_dir = engine.lab_dir().to_path_buf();
        let conns = parallel(selected.clone(), 8, |m| {
            let r = lab_sync::connect_with(
                &engine.project,
                &m,
                ssh_config.as_ref(),
                args.accept_new,
                WATCH_CONNECT_TIMEOUT,
                WATCH_IO_TIMEOUT,
            )
            .and_then(|mut t| {
                if lab_engine::lab_facts::load(&lab_dir, &m.name).map_or(true, |f| f.is_empty()) {
                    lab_sync::gather_facts(t.as_mut(), &lab_dir, &m.name)?;
                }
                Ok(t)
            });
            (m.name.clone(), r)
        });
        for (name, r) in conns {
            let link = links.get_mut(&name).unwrap();
            match r {
                Ok(t) => link.transport = Some(t),
                Err(e) => {
                    print_error(args, style, Some(&name), &e);
                    link.failed();
                }
            }
        }
    }

    let log = CycleLog::default();
    let started = Instant::now();
    // The first build scans everything: what the events so far were about
    // is in it (and they would crowd the kernel's event queue).
    watcher.discard_pending();
    let (mut session, first) = Session::start(engine, &args.machines, &log).map_err(|e| {
        eprint!("{}", diag::render(style, &e, None));
        Failure::Usage
    })?;
    let mut cycle_no = 0u64;
    let build_ms = started.elapsed().as_millis();
    emit(
        args,
        style,
        &mut links,
        &mut session,
        &log,
        cycle_no,
        &[],
        &first,
        started,
        build_ms,
        0,
        ssh_config.as_ref(),
    );

    // Ctrl-C or SIGTERM ends the watch after the cycle under way, with the
    // session's state saved, so the next `lab build` starts from it; a
    // second one ends it at once.
    let stopper = watcher.stopper();
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

    // What changed while the first build ran.
    let mut carried = watcher.pending();
    loop {
        // Wake up for a retry that is due, or to save state once idle.
        let now = Instant::now();
        let retry = links
            .values()
            .filter(|l| l.pending && !args.no_sync)
            .map(|l| l.retry_at.saturating_duration_since(now))
            .min();
        let timeout = retry
            .map(|r| r.min(Duration::from_secs(2)))
            .or(Some(Duration::from_secs(2)));
        let Some(batch) = carried.take().or_else(|| watcher.next_batch(timeout)) else {
            let _ = session.persist();
            if links
                .values()
                .any(|l| l.pending && l.retry_at <= Instant::now())
                && !args.no_sync
            {
                cycle_no += 1;
                let empty = BuildReport::default();
                emit(
                    args,
                    style,
                    &mut links,
                    &mut session,
                    &log,
                    cycle_no,
                    &[],
                    &empty,
                    Instant::now(),
                    0,
                    0,
                    ssh_config.as_ref(),
                );
            }
            continue;
        };
        if batch.stop {
            return session.persist().map_err(|e| {
                eprint!("{}", diag::render(style, &e, None));
                Failure::Partial
            });
        }
        cycle_no += 1;
        let debounce = batch.first_event.elapsed().as_millis();
        let t = Instant::now();
        let result = if batch.overflow {
            // events were lost: look at everything (one lstat per entry)
            log.warnings.lock().unwrap().push(
                "file system events were lost (the kernel's inotify queue overflowed, \
                 see fs.inotify.max_queued_events): every source was looked at again"
                    .to_string(),
            );
            session.rescan(&log)
        } else {
            session.cycle(&batch.paths, &log)
        };
        match result {
            Ok(c) => {
                let ms = t.elapsed().as_millis();
                let changed: Vec<String> = c.changed.clone();
                if changed.is_empty() && c.build.machines.is_empty() {
                    continue;
                }
                emit(
                    args,
                    style,
                    &mut links,
                    &mut session,
                    &log,
                    cycle_no,
                    &changed,
                    &c.build,
                    batch.first_event,
                    ms,
                    debounce,
                    ssh_config.as_ref(),
                );
            }
            Err(e) => {
                // a broken lab.toml: say so, keep the last good state, watch on
                print_error(args, style, None, &e);
            }
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

#[allow(clippy::too_many_arguments)]
fn emit(
    args: &WatchArgs,
    style: Style,
    links: &mut HashMap<String, Link>,
    session: &mut Session,
    log: &CycleLog,
    cycle: u64,
    changed: &[String],
    build: &BuildReport,
    since: Instant,
    build_ms: u128,
    debounce_ms: u128,
    ssh_config: Option<&lab_sync::ssh2_config::SshConfig>,
) {
    let rendered = std::mem::take(&mut *log.rendered.lock().unwrap());
    let warnings = std::mem::take(&mut *log.warnings.lock().unwrap());
    let mut machines: BTreeMap<String, Value> = BTreeMap::new();
    let mut errors: Vec<String> = Vec::new();
    for m in &build.machines {
        let mut v = json!({
            "rendered": rendered.get(&m.name).cloned().unwrap_or_default(),
        });
        match &m.result {
            Ok(r) => {
                v["written"] = json!(r
                    .written
                    .iter()
                    .map(|p| format!("/{p}"))
                    .collect::<Vec<_>>());
                v["removed"] = json!(r
                    .removed
                    .iter()
                    .map(|p| format!("/{p}"))
                    .collect::<Vec<_>>());
                if r.manifest_changed || r.up_to_date {
                    if let Some(l) = links.get_mut(&m.name) {
                        l.pending = true;
                        if l.transport.is_some() {
                            l.retry_at = Instant::now();
                        }
                    }
                }
            }
            Err(errs) => {
                let texts: Vec<String> = errs.iter().map(|e| error_text(e)).collect();
                if !args.json {
                    for e in errs {
                        eprint!(
                            "{}",
                            diag::render(style, e, Some(&format!("machine `{}`", m.name)))
                        );
                    }
                }
                v["errors"] = json!(texts);
                errors.extend(texts);
            }
        }
        machines.insert(m.name.clone(), v);
    }

    // Sync the machines that wait for it and whose time has come.
    let t = Instant::now();
    if !args.no_sync {
        let engine = session.engine();
        let due: Vec<(String, Link)> = links
            .iter()
            .filter(|(_, l)| l.pending && l.retry_at <= Instant::now())
            .map(|(n, _)| n.clone())
            .collect::<Vec<_>>()
            .into_iter()
            .filter(|n| {
                !build
                    .machines
                    .iter()
                    .any(|m| &m.name == n && m.result.is_err())
            })
            .map(|n| {
                let l = links.remove(&n).unwrap();
                (n, l)
            })
            .collect();
        let results = parallel(due, 8, |(name, mut link)| {
            let Some(m) = engine.project.machine(&name).cloned() else {
                return (name, link, None);
            };
            let target = lab_sync::target(&engine.project, &m, engine.lab_dir());
            let r = (|| -> Result<SyncReport, SyncError> {
                if link.transport.is_none() {
                    link.transport = Some(lab_sync::connect_with(
                        &engine.project,
                        &m,
                        ssh_config,
                        args.accept_new,
                        WATCH_CONNECT_TIMEOUT,
                        WATCH_IO_TIMEOUT,
                    )?);
                }
                MachineSync {
                    target: &target,
                    transport: link.transport.as_mut().unwrap().as_mut(),
                }
                .sync(&SyncOptions::default())
            })();
            (name, link, Some(r))
        });
        for (name, mut link, r) in results {
            match r {
                Some(Ok(rep)) => {
                    link.pending = false;
                    link.failures = 0;
                    let (Outcome::Unchanged { gen }
                    | Outcome::Applied { gen }
                    | Outcome::RolledBack { gen }) = rep.outcome;
                    crate::ls::record(engine, &name, gen);
                    let e = machines
                        .entry(name.clone())
                        .or_insert_with(|| json!({"rendered": []}));
                    e["sync"] = sync_json(&rep);
                    if !rep.ok() {
                        errors.push(format!(
                            "{name}: units failed: {}",
                            rep.failed_units.join(", ")
                        ));
                    }
                }
                Some(Err(err)) => {
                    link.failed();
                    let text = error_text(&err);
                    let e = machines
                        .entry(name.clone())
                        .or_insert_with(|| json!({"rendered": []}));
                    e["sync_error"] = json!(text);
                    errors.push(format!("{name}: {text}"));
                    if !args.json {
                        eprint!(
                            "{}",
                            diag::render(style, &err, Some(&format!("machine `{name}`")))
                        );
                    }
                }
                None => {}
            }
            links.insert(name, link);
        }
    }
    let sync_ms = t.elapsed().as_millis();
    let total = since.elapsed().as_millis();
    if args.json {
        println!(
            "{}",
            json!({
                "cycle": cycle,
                "changed": changed,
                "machines": machines,
                "warnings": warnings,
                "errors": errors,
                "ms": {"debounce": debounce_ms, "build": build_ms, "sync": sync_ms, "total": total},
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
                    Some("applied") => p.push(format!("sent {} ({} B)", s["written"], s["bytes"])),
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
            eprint!("{}", diag::warning(style, None, &w));
        }
    }
}
