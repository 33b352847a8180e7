//! Which machines a command works on: `-m NAME`, `-m @TAG`, `-m 'web*'`
//! (repeatable, in any mix) or `--all`. The result is in lab.toml order,
//! each machine once. A pattern that selects nothing is an error (exit 2),
//! never a silent no-op: `lab sync -m @wbe` must not "succeed".

use crate::diag::{self, Style};
use crate::Failure;
use lab_engine::Engine;

/// What the user asked for.
pub struct Selection<'a> {
    pub patterns: &'a [String],
    pub all: bool,
}

fn is_glob(p: &str) -> bool {
    p.contains(['*', '?', '['])
}

fn fail(style: Style, message: String, hint: Option<String>) -> Failure {
    eprintln!("{} {message}", style.red("error:"));
    if let Some(h) = hint {
        eprintln!("  {} {h}", style.cyan("hint:"));
    }
    Failure::Usage
}

fn quoted(v: &[String]) -> String {
    v.iter()
        .map(|x| format!("`{x}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The machine names selected, in lab.toml order; empty when nothing was
/// asked for (each command decides what that means).
pub fn resolve(engine: &Engine, style: Style, sel: &Selection) -> Result<Vec<String>, Failure> {
    let project = &engine.project;
    let names: Vec<String> = project.machines.iter().map(|m| m.name.clone()).collect();
    if sel.all {
        return Ok(names);
    }
    let mut chosen = vec![false; names.len()];
    for p in sel.patterns {
        if let Some(tag) = p.strip_prefix('@') {
            let mut any = false;
            for (i, n) in names.iter().enumerate() {
                if project
                    .tags
                    .get(n)
                    .is_some_and(|t| t.iter().any(|t| t == tag))
                {
                    chosen[i] = true;
                    any = true;
                }
            }
            if !any {
                let mut known: Vec<String> = project.tags.values().flatten().cloned().collect();
                known.sort();
                known.dedup();
                let hint = match diag::closest(tag, &known) {
                    Some(k) => Some(format!("did you mean `@{k}`?")),
                    None if known.is_empty() => Some(
                        "no machine has tags; add `tags = [\"web\"]` to a machine in lab.toml"
                            .into(),
                    ),
                    None => Some(format!("tags in lab.toml: {}", quoted(&known))),
                };
                return Err(fail(style, format!("no machine has the tag `{tag}`"), hint));
            }
        } else if is_glob(p) {
            let glob = globset::Glob::new(p).map_err(|e| {
                fail(
                    style,
                    format!("bad machine pattern `{p}`: {}", e.kind()),
                    None,
                )
            })?;
            let m = glob.compile_matcher();
            let mut any = false;
            for (i, n) in names.iter().enumerate() {
                if m.is_match(n) {
                    chosen[i] = true;
                    any = true;
                }
            }
            if !any {
                return Err(fail(
                    style,
                    format!("no machine matches `{p}`"),
                    Some(format!("machines in lab.toml: {}", quoted(&names))),
                ));
            }
        } else {
            match names.iter().position(|n| n == p) {
                Some(i) => chosen[i] = true,
                None => {
                    // the engine's own message, with its hint
                    let e = engine
                        .select(std::slice::from_ref(p))
                        .expect_err("an unknown machine");
                    eprint!("{}", diag::render(style, &e, None));
                    return Err(Failure::Usage);
                }
            }
        }
    }
    let picked: Vec<String> = names
        .into_iter()
        .zip(chosen)
        .filter(|(_, c)| *c)
        .map(|(n, _)| n)
        .collect();
    if !sel.patterns.is_empty() {
        tracing::info!(
            "-m {} selects {}",
            sel.patterns.join(" -m "),
            picked.join(", ")
        );
    }
    Ok(picked)
}
