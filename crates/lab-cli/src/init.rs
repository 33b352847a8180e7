//! `lab init [DIR]`: a new project that builds and syncs at once: a
//! lab.toml with one local machine, a base layer with one template, and a
//! `.gitignore` for lab's state. It never overwrites: when any of its files
//! exists, nothing is written.

use crate::diag::{self, Style};
use crate::Failure;
use std::io::Write;
use std::path::Path;

const LAB_TOML: &str = r#"# A lab: machines, the layers they are built from, and facts the
# templates read. `lab build` renders each machine into .lab/out/NAME/,
# `lab sync -m local` ships it (here: into the directory local-root/).

[facts]
domain = "example.org"

[machines.local]
transport = "local"   # a directory on this host; an SSH machine has `host = "..."`
root = "local-root"
tags = ["local"]
layers = ["base"]
"#;

const MOTD: &str = "{{ machine }}.{{ domain }}: managed by lab; local edits are overwritten.\n";

const GITIGNORE: &str = ".lab/\nlocal-root/\n";

pub fn init(style: Style, dir: &Path, quiet: bool) -> Result<(), Failure> {
    let files: [(&str, &str); 3] = [
        ("lab.toml", LAB_TOML),
        ("layers/base/etc/motd.j2", MOTD),
        (".gitignore", GITIGNORE),
    ];
    let fail = |what: String| {
        eprintln!("{} {what}", style.red("error:"));
        Failure::Usage
    };
    for (rel, _) in &files {
        let p = dir.join(rel);
        if p.symlink_metadata().is_ok() {
            eprintln!(
                "{} `{}` exists; lab init writes only into a directory without lab.toml, layers/base/etc/motd.j2 and .gitignore",
                style.red("error:"),
                diag::shown(&p)
            );
            return Err(Failure::Usage);
        }
    }
    for (rel, text) in &files {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| fail(format!("{}: {e}", diag::shown(parent))))?;
        }
        // create_new: another process's file (or a symlink) that appeared
        // since the check is not overwritten either
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .map_err(|e| fail(format!("{}: {e}", diag::shown(&p))))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| fail(format!("{}: {e}", diag::shown(&p))))?;
    }
    let root = dir.join("local-root");
    std::fs::create_dir_all(&root).map_err(|e| fail(format!("{}: {e}", diag::shown(&root))))?;
    if !quiet {
        println!(
            "created a lab in {}: lab.toml, layers/base/, .gitignore\nnext: `lab build`, then `lab sync -m local`",
            diag::shown(dir)
        );
    }
    Ok(())
}
