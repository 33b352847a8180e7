//! `lab adopt -m M PATH...`: a fix made by hand on a machine becomes
//! source. The machine's version of each drifted plain file is copied into
//! `machines/M/` (atomically), so that the next build makes exactly it and
//! the next sync changes nothing. A path rendered from a template is
//! refused, naming the template: the fix belongs there.

use crate::diag::{self, Style};
use crate::Failure;
use lab_agent::{DriftKind, Seen};
use lab_engine::{BuildOptions, Engine};
use lab_sync::MachineSync;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

fn refuse(style: Style, msg: &str, hint: Option<&str>) -> Failure {
    eprintln!("{} {msg}", style.red("error:"));
    if let Some(h) = hint {
        eprintln!("  {} {h}", style.cyan("hint:"));
    }
    Failure::Partial
}

/// Write `data` to `path` with `mode`, atomically; never through a
/// symlink (the file is replaced by rename, and its directories must be
/// real directories under the project).
fn write_atomic(root: &Path, rel: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let mut dir = root.to_path_buf();
    for c in rel.parent().into_iter().flat_map(|p| p.components()) {
        dir.push(c);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() || !m.is_dir() => {
                return Err(std::io::Error::other(format!(
                    "{} is not a directory",
                    dir.display()
                )))
            }
            Ok(_) => {}
            Err(_) => std::fs::create_dir(&dir)?,
        }
    }
    let name = rel.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.lab-adopt"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)?;
    f.write_all(data)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(&*name))
}

pub fn adopt(
    engine: &Engine,
    style: Style,
    machine: &str,
    paths: &[String],
    accept_new: bool,
) -> Result<(), Failure> {
    let m = engine
        .select(&[machine.to_string()])
        .map(|v| v[0])
        .map_err(|e| {
            eprint!("{}", diag::render(style, &e, None));
            Failure::Usage
        })?;
    let mut rels = Vec::new();
    for p in paths {
        let rel = p.trim_start_matches('/').trim_end_matches('/').to_string();
        if !p.starts_with('/')
            || rel.is_empty()
            || Path::new(&rel)
                .components()
                .any(|c| !matches!(c, Component::Normal(_)))
        {
            eprintln!(
                "{} `{p}` is not an absolute path on the machine (like /etc/motd)",
                style.red("error:")
            );
            return Err(Failure::Usage);
        }
        rels.push(rel);
    }
    let report = engine
        .build(
            &BuildOptions {
                machines: vec![m.name.clone()],
                ..Default::default()
            },
            &lab_engine::Silent,
        )
        .map_err(|e| {
            eprint!("{}", diag::render(style, &e, None));
            Failure::Usage
        })?;
    if let Some(Err(errors)) = report.machines.first().map(|r| &r.result) {
        for e in errors {
            eprint!("{}", diag::machine_error(style, engine, &m.name, e).0);
        }
        return Err(Failure::Usage);
    }
    let ctx = format!("machine `{}`", m.name);
    let fail = |e: &dyn lab_config::Diagnose| {
        eprint!("{}", diag::render(style, e, Some(&ctx)));
        Failure::Partial
    };
    let ssh_config = lab_sync::ssh::load_ssh_config().map_err(|e| fail(&e))?;
    let target = lab_deploy::target(&engine.project, m, engine.lab_dir());
    crate::verbose::connecting(m);
    let mut t = lab_deploy::connect(&engine.project, m, ssh_config.as_ref(), accept_new)
        .map_err(|e| fail(&e))?;
    let mut ms = MachineSync {
        target: &target,
        transport: t.as_mut(),
    };
    let probe = ms.check(&[]).map_err(|e| fail(&e))?;
    let applied = match probe.manifest.clone() {
        Some(a) => a,
        None => ms
            .fetch_manifest(probe.gen, probe.digest.as_ref())
            .map_err(|e| fail(&e))?,
    };
    let drift = probe.check.drift(&applied);
    // Every path is checked before anything is written.
    let mut plan: Vec<(String, u32, lab_core::Digest)> = Vec::new();
    for rel in &rels {
        let Some(d) = drift.iter().find(|d| d.path == *rel) else {
            let why = if applied.get(rel).is_some() {
                "it has not drifted: the machine has what lab wrote there"
            } else {
                "lab does not manage it on this machine"
            };
            return Err(refuse(style, &format!("{ctx}: /{rel}: {why}"), None));
        };
        let (
            Seen::Present {
                rawmode,
                sha256: Some(sha),
                ..
            },
            DriftKind::ContentChanged | DriftKind::TakenOverChanged | DriftKind::ModeChanged,
        ) = (&d.seen, d.kind)
        else {
            return Err(refuse(
                style,
                &format!(
                    "{ctx}: /{rel} is {} on the machine ({}): only a plain file can be adopted",
                    d.seen.kind_name(),
                    d.kind.as_str()
                ),
                Some("put it right in the source by hand, or let `lab sync` repair the machine"),
            ));
        };
        if d.seen.kind_name() != "file" {
            return Err(refuse(
                style,
                &format!("{ctx}: /{rel} is not a plain file on the machine"),
                None,
            ));
        }
        match engine.show(&m.name, rel) {
            Ok(s) if s.template => {
                let src = s.sources.last().map(|s| s.display()).unwrap_or_default();
                return Err(refuse(
                    style,
                    &format!("{ctx}: /{rel} is rendered from the template `{src}`"),
                    Some(&format!(
                        "lab adopt copies plain files only: make the change in `{src}` (`lab diff -m {} ` shows it)",
                        m.name
                    )),
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(fail(&e)),
        }
        plan.push((rel.clone(), rawmode & 0o7777, *sha));
    }
    let wanted: Vec<&str> = plan.iter().map(|(p, _, _)| p.as_str()).collect();
    let mut got = ms.fetch_files(&wanted, 1 << 40).map_err(|e| fail(&e))?;
    for (rel, mode, sha) in &plan {
        let Some(data) = got.remove(rel) else {
            return Err(refuse(
                style,
                &format!("{ctx}: /{rel} could not be read from the machine"),
                None,
            ));
        };
        if lab_core::Digest::of(&data) != *sha {
            return Err(refuse(
                style,
                &format!("{ctx}: /{rel} changed again while it was being read"),
                Some("run `lab adopt` again"),
            ));
        }
        let dest: PathBuf = Path::new("machines").join(&m.name).join(rel);
        write_atomic(&engine.project.root, &dest, &data, *mode).map_err(|e| {
            refuse(
                style,
                &format!("cannot write {}: {e}", dest.display()),
                None,
            )
        })?;
        println!("{}: adopted /{rel} into {}", m.name, dest.display());
    }
    Ok(())
}
