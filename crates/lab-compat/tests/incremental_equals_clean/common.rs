//! What both styles' models of edits share: file-system edits, the outputs
//! compared, and the last check of a watch session.

use lab_engine::{BuildOptions, Silent};
use lab_testkit::{tree_listing, TestLab};
use proptest::prelude::*;
use std::path::Path;

/// Remove whatever is at `p` (file, symlink or directory tree).
pub fn clear(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).unwrap(),
        Ok(_) => std::fs::remove_file(p).unwrap(),
        Err(_) => {}
    }
}

/// Make `p`'s parent a directory, replacing a file or symlink in the way.
pub fn make_parent(root: &Path, p: &Path) {
    let parent = p.parent().unwrap();
    let mut cur = root.to_path_buf();
    for c in parent.strip_prefix(root).unwrap().components() {
        cur.push(c);
        if let Ok(m) = std::fs::symlink_metadata(&cur) {
            if !m.is_dir() {
                std::fs::remove_file(&cur).unwrap();
            }
        }
    }
    std::fs::create_dir_all(parent).unwrap();
}

/// Every machine's output tree and manifest, as one comparable text.
pub fn outputs(dir: &Path) -> String {
    let mut s = tree_listing(&dir.join(".lab/out"));
    let mut ms: Vec<_> = std::fs::read_dir(dir.join(".lab/out"))
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "manifest"))
        .collect();
    ms.sort();
    for m in ms {
        s.push_str(&std::fs::read_to_string(m).unwrap());
    }
    s
}

/// The end of a watch session: what it persists is a state the next
/// build (a fresh process) trusts, and that build changes nothing.
pub fn persisted_state_is_trusted(
    lab: &TestLab,
    mut session: lab_engine::Session,
) -> Result<(), TestCaseError> {
    session.persist().unwrap();
    drop(session);
    let before = outputs(lab.path());
    let engine = lab_compat::open(lab.path()).unwrap();
    let report = engine.build(&BuildOptions::default(), &Silent).unwrap();
    prop_assert!(
        report
            .machines
            .iter()
            .all(|m| m.result.as_ref().is_ok_and(|r| r.up_to_date)),
        "{:?}",
        report.machines
    );
    prop_assert_eq!(outputs(lab.path()), before);
    Ok(())
}
