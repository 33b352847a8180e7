//! `lab build --explain`: why each node ran, cause first. A node runs
//! because one input changed (or it was never built); the nodes it dirtied
//! follow it, indented. A changed source is named by its file in the
//! project (`layers/nginx/etc/nginx/nginx.conf.j2`), not by the output path
//! it wins, since that file is what the user edited.

use crate::diag::Style;
use crate::Failure;
use lab_engine::Engine;
use lab_graph::{Digest, Key, Reason};
use std::collections::BTreeMap;

/// The file behind `Key::Source(out)` on `machine`: the first of the
/// machine's own directory, then its layers from the last, that has
/// `out.j2` or `out`. `None` when it is gone (a removed source).
pub fn source_file(engine: &Engine, machine: &str, out: &str) -> Option<String> {
    let m = engine.project.machine(machine)?;
    if engine.project.compat.is_some() {
        return None;
    }
    let mut roots = vec![format!("machines/{machine}")];
    roots.extend(m.layers.iter().rev().map(|l| format!("layers/{}", l.name)));
    roots.push("layers/_".into());
    for r in roots {
        for cand in [format!("{r}/{out}.j2"), format!("{r}/{out}")] {
            if engine.project.root.join(&cand).symlink_metadata().is_ok() {
                return Some(cand);
            }
        }
    }
    None
}

fn cause_name(engine: &Engine, machine: &str, key: &Key) -> String {
    match key {
        Key::Source(out) => match source_file(engine, machine, out) {
            Some(f) => format!("source `{f}`"),
            None => key.to_string(),
        },
        _ => key.to_string(),
    }
}

fn cause_text(name: &str, reason: &Reason) -> String {
    match reason {
        Reason::NeverBuilt => format!("{name}: no previous build"),
        Reason::Changed { now: None, .. } => format!("{name} is gone"),
        Reason::Changed { was, .. } if *was == Digest::ABSENT => format!("{name} appeared"),
        Reason::Changed { now: Some(now), .. } if *now == Digest::ABSENT => {
            format!("{name} was removed")
        }
        Reason::Changed {
            was,
            now: Some(now),
            ..
        } => format!("{name} changed ({was:?} -> {now:?})"),
    }
}

/// The `--explain` lines, machines in lab.toml order, causes sorted.
pub fn lines(engine: &Engine, ran: Vec<(String, Key, Reason)>) -> Vec<String> {
    let mut by_machine: BTreeMap<usize, (String, Vec<(Key, Reason)>)> = BTreeMap::new();
    for (m, k, r) in ran {
        let pos = engine
            .project
            .machines
            .iter()
            .position(|x| x.name == m)
            .unwrap_or(usize::MAX);
        by_machine
            .entry(pos)
            .or_insert_with(|| (m.clone(), Vec::new()))
            .1
            .push((k, r));
    }
    let mut out = Vec::new();
    for (_, (machine, nodes)) in by_machine {
        let ran: std::collections::HashSet<&Key> = nodes.iter().map(|(k, _)| k).collect();
        // children[dep] = nodes that ran because `dep` changed
        let mut children: BTreeMap<&Key, Vec<&Key>> = BTreeMap::new();
        // causes: their text, and the nodes they dirtied directly (for a
        // never-built node: itself, whose line is the cause's)
        let mut causes: BTreeMap<String, Vec<&Key>> = BTreeMap::new();
        let mut never: Vec<(String, &Key)> = Vec::new();
        for (k, r) in &nodes {
            match r {
                Reason::Changed { dep, .. } if ran.contains(dep) => {
                    children.entry(dep).or_default().push(k)
                }
                Reason::Changed { dep, .. } => causes
                    .entry(cause_text(&cause_name(engine, &machine, dep), r))
                    .or_default()
                    .push(k),
                Reason::NeverBuilt => never.push((cause_text(&k.to_string(), r), k)),
            }
        }
        for (text, k) in never {
            causes
                .entry(text)
                .or_default()
                .extend(children.get(k).cloned().unwrap_or_default());
        }
        for (text, direct) in &causes {
            out.push(format!("{machine}: {text}"));
            let mut queue: Vec<&Key> = direct.clone();
            queue.sort();
            let mut seen = std::collections::HashSet::new();
            let mut i = 0;
            while i < queue.len() {
                let k = queue[i];
                i += 1;
                if !seen.insert(k) {
                    continue;
                }
                out.push(format!("{machine}:   -> {k}"));
                if let Some(c) = children.get(k) {
                    let mut c = c.clone();
                    c.sort();
                    queue.extend(c);
                }
            }
        }
    }
    out
}

/// `path` as a source file of the project (`layers/NAME/...` or
/// `machines/NAME/...`, relative to the project), when it names one that
/// exists; relative paths are taken from the working directory first,
/// then from the project.
pub fn project_source(engine: &Engine, path: &str) -> Option<String> {
    let root = std::fs::canonicalize(&engine.project.root).ok()?;
    let p = std::path::Path::new(path);
    let candidates = [
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_default(),
        engine.project.root.join(p),
    ];
    for c in candidates {
        // the file itself need not resolve (a dangling symlink is a source)
        let (Some(parent), Some(name)) = (c.parent(), c.file_name()) else {
            continue;
        };
        let Ok(dir) = std::fs::canonicalize(parent) else {
            continue;
        };
        let full = dir.join(name);
        if full.symlink_metadata().is_err() {
            continue;
        }
        let Ok(rel) = full.strip_prefix(&root) else {
            continue;
        };
        let rel = rel.to_string_lossy().into_owned();
        let mut parts = rel.splitn(3, '/');
        if matches!(parts.next(), Some("layers" | "machines")) && parts.nth(1).is_some() {
            return Some(rel);
        }
    }
    None
}

/// `lab show layers/app/pods/web.yaml`: for each machine whose stack holds
/// it, the Quadlet files pod `pod` becomes there, or the file that wins.
fn show_pod_source(
    engine: &Engine,
    rel: &str,
    kind: &str,
    name: &str,
    pod: &str,
    names: &[String],
) -> Result<(), Failure> {
    use lab_engine::lab_pods::unit_dir;
    let mut used = false;
    for m in &engine.project.machines {
        let in_stack = match kind {
            "machines" => m.name == name,
            _ => name == "_" || m.layers.iter().any(|l| l.name == name),
        };
        if (!names.is_empty() && !names.contains(&m.name)) || !in_stack {
            continue;
        }
        used = true;
        let made = [false, true].into_iter().find_map(|rootful| {
            let kube = format!("{}/{pod}.kube", unit_dir(rootful));
            engine.show(&m.name, &kube).ok()
        });
        match made {
            None => println!(
                "  {}: pod `{pod}` does not build (see `lab build -m {}`)",
                m.name, m.name
            ),
            Some(s) => {
                let src = s.sources.last().map(|s| s.display()).unwrap_or_default();
                let dir = s.output.rsplit_once('/').map_or("", |(d, _)| d);
                if src != rel {
                    println!("  {}: pod `{pod}`, overridden by {src}", m.name);
                } else {
                    println!("  {}: /{dir}/{pod}.kube, /{dir}/{pod}.yaml", m.name);
                }
            }
        }
    }
    if !used {
        println!("  used by no machine (no machine lists `{kind}/{name}`)");
    }
    Ok(())
}

/// `lab show layers/nginx/etc/nginx/nginx.conf.j2`: for each machine
/// (of `names`; all when empty) whose stack holds the file's root, where
/// the file lands, or which file wins that path instead.
pub fn show_source(
    engine: &Engine,
    style: Style,
    rel: &str,
    names: &[String],
) -> Result<(), Failure> {
    if engine.project.compat.is_some() {
        eprintln!(
            "{} `lab show SOURCE` is for labs with a lab.toml; name a path on a machine instead",
            style.red("error:")
        );
        return Err(Failure::Usage);
    }
    let mut parts = rel.splitn(3, '/');
    let (kind, name, inner) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let root = format!("{kind}/{name}");
    let is_dir = engine.project.root.join(rel).is_dir();
    let template = !is_dir && inner.ends_with(".j2");
    println!(
        "{rel} ({})",
        if is_dir {
            "directory"
        } else if template {
            "template"
        } else {
            "file"
        }
    );
    let partial = inner == lab_engine::PARTIALS_DIR
        || inner.starts_with(&format!("{}/", lab_engine::PARTIALS_DIR));
    if partial {
        println!("  a partial: templates include it; it lands nowhere itself");
        return Ok(());
    }
    if let Some((pod, _)) = lab_engine::lab_pods::source_name(inner) {
        return show_pod_source(engine, rel, kind, name, pod, names);
    }
    let pods_dir = lab_engine::lab_pods::SOURCE_DIR;
    if inner == pods_dir || inner.starts_with(&format!("{pods_dir}/")) {
        println!(
            "  `{pods_dir}/` holds pods (`NAME.yaml`, `NAME.yaml.j2`), which become Quadlet files; \
             it lands nowhere itself"
        );
        return Ok(());
    }
    let out = if template {
        inner.strip_suffix(".j2").unwrap_or(inner)
    } else {
        inner
    };
    let mut used = false;
    for m in &engine.project.machines {
        if !names.is_empty() && !names.contains(&m.name) {
            continue;
        }
        let in_stack = match kind {
            "machines" => m.name == name,
            _ => name == "_" || m.layers.iter().any(|l| l.name == name),
        };
        if !in_stack {
            continue;
        }
        used = true;
        match source_file(engine, &m.name, out) {
            Some(w) if w != rel && !is_dir => {
                println!("  {}: /{out}, overridden by {w}", m.name)
            }
            _ => println!("  {}: /{out}", m.name),
        }
    }
    if !used {
        println!("  used by no machine (no machine lists `{root}`)");
    }
    Ok(())
}
