//! Unified diffs of what a sync would change, with secrets masked.

use crate::machine::Change;
use crate::secrets::mask_secrets;
use lab_manifest::{describe, EntryKind};

/// Paths whose whole content is secret.
fn secret_path(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.ends_with(".key")
        || name.ends_with(".pem")
        || name.starts_with("ssh_host_") && !name.ends_with(".pub")
        || name == "shadow"
        || name == "gshadow"
        || path.contains("/secrets/")
}

/// One line of a rendered diff, tagged for colouring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiffLine {
    /// `--- a/...`, `+++ b/...`, `@@ ... @@`, and summary lines.
    Header(String),
    Removed(String),
    Added(String),
    Context(String),
}

fn text(b: &Option<Vec<u8>>) -> Option<String> {
    b.as_ref().and_then(|b| String::from_utf8(b.clone()).ok())
}

/// Render one change as unified-diff lines (secrets masked).
pub fn render(c: &Change) -> Vec<DiffLine> {
    let mut out = Vec::new();
    let p = &c.path;
    let now = c.on_machine.as_deref().unwrap_or("nothing");
    let machine_file = c.on_machine.as_deref() == Some("file");
    let head = match (&c.before, &c.after) {
        (_, Some(a)) if c.drift.is_some() => format!(
            "! {}: drifted on the machine ({}; there now: {now})",
            describe(a),
            c.drift.map(|d| d.as_str()).unwrap_or_default()
        ),
        (None, Some(a)) if machine_file => {
            format!("+ {} (takes over the machine's file)", describe(a))
        }
        (None, Some(a)) => format!("+ {}", describe(a)),
        (Some(b), None) => format!("- {}", describe(b)),
        (Some(b), Some(a))
            if b.kind_name() != a.kind_name()
                || b.mode != a.mode
                || (&b.owner, &b.group) != (&a.owner, &a.group) =>
        {
            format!("~ {} -> {}", describe(b), describe(a))
        }
        (Some(_), Some(a)) => format!("~ {}", describe(a)),
        (None, None) => return out,
    };
    out.push(DiffLine::Header(head));
    let is_file = |e: &Option<lab_manifest::Entry>| {
        matches!(e.as_ref().map(|e| &e.kind), Some(EntryKind::File { .. }))
    };
    if !machine_file && !is_file(&c.after) {
        return out;
    }
    // a file only its owner may read (a decrypted age source is 0600)
    let private = |e: &Option<lab_manifest::Entry>| {
        e.as_ref()
            .is_some_and(|e| matches!(e.kind, EntryKind::File { .. }) && e.mode & 0o077 == 0)
    };
    if secret_path(p) || private(&c.before) || private(&c.after) {
        out.push(DiffLine::Header(
            "  (secret file: content not shown)".into(),
        ));
        return out;
    }
    // (the machine's own file, not what lab wrote there last)
    let old = if machine_file {
        text(&c.old_content)
    } else {
        Some(String::new())
    };
    let new = if is_file(&c.after) {
        text(&c.new_content)
    } else {
        Some(String::new())
    };
    let (Some(old), Some(new)) = (old, new) else {
        out.push(DiffLine::Header(
            "  (binary or large file: content not shown)".into(),
        ));
        return out;
    };
    let (old, new) = (mask_secrets(&old), mask_secrets(&new));
    if old == new {
        return out;
    }
    let diff = similar::TextDiff::from_lines(&old, &new);
    out.push(DiffLine::Header(if machine_file {
        format!("--- a/{p}")
    } else {
        "--- /dev/null".to_string()
    }));
    out.push(DiffLine::Header(if is_file(&c.after) {
        format!("+++ b/{p}")
    } else {
        "+++ /dev/null".to_string()
    }));
    for group in diff.grouped_ops(3) {
        let (first, last) = (&group[0], &group[group.len() - 1]);
        let (o, n) = (first.old_range().start, first.new_range().start);
        let (ol, nl) = (last.old_range().end - o, last.new_range().end - n);
        // (an empty side starts at line 0, as diff(1) writes it)
        let at = |start: usize, len: usize| if len == 0 { start } else { start + 1 };
        out.push(DiffLine::Header(format!(
            "@@ -{},{ol} +{},{nl} @@",
            at(o, ol),
            at(n, nl)
        )));
        for op in group {
            for change in diff.iter_changes(&op) {
                let s = change.value().trim_end_matches('\n').to_string();
                out.push(match change.tag() {
                    similar::ChangeTag::Delete => DiffLine::Removed(s),
                    similar::ChangeTag::Insert => DiffLine::Added(s),
                    similar::ChangeTag::Equal => DiffLine::Context(s),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_paths() {
        assert!(secret_path("etc/ssl/private/site.key"));
        assert!(secret_path("etc/ssh/ssh_host_ed25519_key"));
        assert!(!secret_path("etc/ssh/ssh_host_ed25519_key.pub"));
        assert!(!secret_path("etc/motd"));
    }
}
