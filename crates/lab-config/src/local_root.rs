//! Where a local machine's `root` may be.
//!
//! A local machine is a directory on this host that plays the machine's
//! `/`: a sync writes and deletes there as it would on a machine. A typo in
//! `root` must not point that at lab's own files or at this host's file
//! system, so a root is refused when it is the project itself, lies inside
//! the project's sources (`layers/`, `machines/`) or lab's state (`.lab/`),
//! or contains the project; and a root outside the project (this host's
//! `/` included) is taken only with `root_outside_project = true`.
//! Symlinks on the way are followed, so a link cannot smuggle a root in.

use crate::project::expand_home;
use std::path::{Component, Path, PathBuf};

/// The checked, absolute root for `root = "<text>"` in the project at
/// `project`, or the message and hint of why not.
pub(crate) fn check(
    project: &Path,
    text: &str,
    outside_ok: bool,
) -> Result<PathBuf, (String, Option<String>)> {
    if text.trim().is_empty() {
        return Err((
            "`root` is empty".into(),
            Some(
                "name the directory that plays the machine's `/`, e.g. `root = \"dev-root\"`"
                    .into(),
            ),
        ));
    }
    let given = project.join(expand_home(text));
    kind_check(&given, text)?;
    let root = resolve(&given);
    let project = resolve(project);
    let shown = || format!("`root = \"{text}\"` ({})", root.display());
    let inside = |dir: &str| root.starts_with(project.join(dir));
    if root == project {
        return Err((
            format!("{} is the project directory itself", shown()),
            Some("a sync would write the machine's files into the project".into()),
        ));
    }
    for (dir, what) in [
        (".lab", "lab's own state and outputs"),
        ("layers", "the project's sources"),
        ("machines", "the project's sources"),
    ] {
        if inside(dir) {
            return Err((
                format!("{} is inside `{dir}/`, {what}", shown()),
                Some("use a directory of its own, e.g. `root = \"dev-root\"`".into()),
            ));
        }
    }
    if root.starts_with(&project) {
        return Ok(root);
    }
    let host = root == Path::new("/");
    if project.starts_with(&root) && !host {
        return Err((
            format!("{} contains the project", shown()),
            Some("a sync would write over the project's own files".into()),
        ));
    }
    if !outside_ok {
        return Err((
            format!(
                "{} is outside the project{}",
                shown(),
                if host {
                    " (it is this host's own `/`)"
                } else {
                    ""
                }
            ),
            Some(
                "a sync writes and deletes there; if that is meant, add \
                 `root_outside_project = true` to this machine"
                    .into(),
            ),
        ));
    }
    Ok(root)
}

/// A root that exists must be a directory (or a symlink to one).
fn kind_check(path: &Path, text: &str) -> Result<(), (String, Option<String>)> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(()); // created by the first sync
    };
    if meta.file_type().is_symlink() {
        return match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err((
                format!("`root = \"{text}\"` is a symlink to something that is not a directory"),
                None,
            )),
            Err(_) => Err((
                format!(
                    "`root = \"{text}\"` is a symlink to `{}`, which does not exist",
                    std::fs::read_link(path).unwrap_or_default().display()
                ),
                Some("create the directory it points to, or name another root".into()),
            )),
        };
    }
    if !meta.is_dir() {
        return Err((
            format!("`root = \"{text}\"` is a file, not a directory"),
            Some("the root is the directory that plays the machine's `/`".into()),
        ));
    }
    Ok(())
}

/// `path` made absolute and free of `.`, `..` and symlinks as far as it
/// exists; the part that does not exist yet is taken as written.
fn resolve(path: &Path) -> PathBuf {
    let mut lexical = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    let mut existing = lexical.clone();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&existing) {
            let mut out = real;
            out.extend(rest.iter().rev());
            return out;
        }
        match (
            existing.file_name().map(|n| n.to_owned()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return lexical,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(project: &Path, text: &str, outside: bool) -> String {
        check(project, text, outside).unwrap_err().0
    }

    #[test]
    fn refused_and_accepted_roots() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("proj");
        std::fs::create_dir_all(p.join(".lab/out")).unwrap();
        std::fs::create_dir_all(p.join("layers/x")).unwrap();
        assert!(err(&p, "", false).contains("is empty"));
        assert!(err(&p, "  ", true).contains("is empty"));
        assert!(err(&p, ".", false).contains("is the project directory itself"));
        assert!(err(&p, "sub/..", true).contains("is the project directory itself"));
        assert!(err(&p, ".lab/out/dev", false).contains("is inside `.lab/`"));
        assert!(err(&p, ".lab", true).contains("is inside `.lab/`"));
        assert!(err(&p, "layers/x", true).contains("inside `layers/`"));
        assert!(err(&p, "machines/m", true).contains("inside `machines/`"));
        assert!(err(&p, "..", true).contains("contains the project"));
        let e = err(&p, "/", false);
        assert!(
            e.contains("outside the project") && e.contains("this host's own `/`"),
            "{e}"
        );
        assert_eq!(check(&p, "/", true).unwrap(), PathBuf::from("/"));
        let outside = d.path().join("elsewhere");
        let text = outside.to_str().unwrap();
        assert!(err(&p, text, false).contains("outside the project"));
        assert_eq!(check(&p, text, true).unwrap(), resolve(&outside));
        assert_eq!(
            check(&p, "dev-root", false).unwrap(),
            resolve(&p).join("dev-root")
        );
        // A symlink inside the project that points into .lab is followed.
        std::os::unix::fs::symlink(p.join(".lab/out"), p.join("sneaky")).unwrap();
        assert!(err(&p, "sneaky/dev", true).contains("is inside `.lab/`"));
    }

    #[test]
    fn a_root_that_is_no_directory() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::write(p.join("file"), "x").unwrap();
        std::os::unix::fs::symlink(p.join("nowhere"), p.join("dangling")).unwrap();
        std::os::unix::fs::symlink(p.join("file"), p.join("tofile")).unwrap();
        assert!(err(p, "file", false).contains("is a file, not a directory"));
        assert!(err(p, "dangling", false).contains("which does not exist"));
        assert!(err(p, "tofile", false).contains("not a directory"));
    }
}
