//! `lab show` for make-style machines: the source that produces a path
//! (and any others that make exactly the same entry), how it is made, and
//! for a template the rendered content and the files m4 read.

use crate::plan::{self, How};
use lab_engine::scan::{self, RootScan};
use lab_engine::{facts, Engine, MachineError, Show, ShowError, ShowSource};

/// `lab show` of output `out` of `machine`, whose stack is `roots`.
pub(crate) fn show(
    engine: &Engine,
    machine: &str,
    out: &str,
    roots: &[RootScan],
) -> Result<Show, ShowError> {
    {
        let defaults;
        let compat = match engine.project.compat.as_ref() {
            Some(c) => c,
            None => {
                defaults = lab_config::compat::Compat::defaults(&engine.project.root);
                &defaults
            }
        };
        let root = &engine.project.root;
        let refs: Vec<&RootScan> = roots.iter().collect();
        let p = plan::resolve(machine, &refs, &compat.copies)?;
        let mut show = Show {
            machine: machine.to_string(),
            output: out.to_string(),
            sources: Vec::new(),
            kind: "dir",
            mode: 0o755,
            template: false,
            content: Vec::new(),
            reads: Vec::new(),
            includes: Vec::new(),
        };
        if let Some(mode) = p.dirs.get(out) {
            show.mode = *mode;
            return Ok(show);
        }
        let Some(o) = p.outs.get(out) else {
            return Err(ShowError::NotProduced {
                machine: machine.to_string(),
                path: format!("/{out}"),
                shadowed: false,
            });
        };
        for o in std::iter::once(o).chain(&o.also) {
            show.sources.push(match &o.how {
                How::Extra { from } => ShowSource {
                    root: ".".into(),
                    src: from.clone(),
                },
                How::ListLink { .. } => ShowSource {
                    root: refs[o.root].name.clone(),
                    src: o.origin[refs[o.root].name.len() + 1..].to_string(),
                },
                _ => ShowSource {
                    root: refs[o.root].name.clone(),
                    src: o.src.clone(),
                },
            });
        }
        let src = root.join(o.src_path(&refs));
        let io = |e| ShowError::Machine(MachineError::io(&src)(e));
        match &o.how {
            How::Link => {
                show.kind = "symlink";
                show.mode = 0o777;
                show.content = scan::link_target(&src)?.into_bytes();
            }
            How::ListLink { target } => {
                show.kind = "symlink";
                show.mode = 0o777;
                show.content = target.clone().into_bytes();
            }
            How::Copy => {
                show.kind = "file";
                show.mode = plan::final_mode(out, refs[o.root].entries[&o.src].perm() & 0o755);
                show.content = std::fs::read(&src).map_err(io)?;
            }
            How::Follow | How::Extra { .. } => {
                show.kind = "file";
                let meta = std::fs::metadata(&src).map_err(io)?;
                show.mode = plan::final_mode(out, scan::stat_of(&meta).mode & 0o755);
                show.content = std::fs::read(&src).map_err(io)?;
            }
            How::Template => {
                show.kind = "file";
                show.mode = 0o644;
                show.template = true;
                let gathered = facts::load_gathered(engine.lab_dir(), machine).map_err(|e| {
                    MachineError::Io {
                        path: facts::gathered_path(engine.lab_dir(), machine),
                        source: std::io::Error::other(e),
                    }
                })?;
                let mut facts = lab_config::compat::load_facts(root, compat, machine)
                    .map_err(|e| MachineError::Config(Box::new(e)))?;
                facts.extend(lab_facts::to_compat(&gathered));
                let m4 = lab_render::m4::locate().map_err(MachineError::from)?;
                let defines: Vec<(String, String)> =
                    facts.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                let preludes = lab_config::compat::expand_globs(root, &compat.preludes);
                let src_key = o.src_path(&refs);
                let r = lab_render::m4::render(&lab_render::m4::M4Job {
                    program: &m4,
                    cwd: root,
                    defines: &defines,
                    preludes: &preludes,
                    src: &src_key,
                })
                .map_err(MachineError::from)?;
                show.content = r.bytes;
                show.includes = r.read.into_iter().filter(|f| *f != src_key).collect();
                show.reads = facts
                    .into_iter()
                    .map(|(k, v)| (k, Some(serde_json::Value::String(v))))
                    .collect();
            }
        }
        Ok(show)
    }
}
