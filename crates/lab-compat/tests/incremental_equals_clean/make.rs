//! The promise make breaks, for make-style labs: after any sequence of
//! edits, an incremental build produces exactly the tree a clean build of
//! the same sources does (paths, kinds, modes, contents, link targets,
//! manifests). The edits include every change make misses: deleted and
//! renamed sources, changed link targets and link lists, mode-only changes,
//! changed `m4_include`d files and preludes, changed targets of `!` links,
//! layers added and removed through `+ NAME` lines, fact files.
//!
//! And what real labs of this style contain (issue 11): a machine `-` that
//! only a `null` inventory entry names, a layer named `-`, layer lists with
//! CRLF line endings, comments after entries and duplicate `+` lines, empty
//! fact files, names with a leading dash and a space, files under the
//! directories of make's final mode fix-up, a gathered `kernel` fact that
//! must not reach m4, and two sources of one path that agree (a `!` link to
//! the very file another layer provides there).
//!
//! Each root writes below its own directory (`r0/`, `r1/`, ...): two
//! sources for one path that differ are an error in this style, tested
//! elsewhere; `dup/d` is the one path two layers share, always agreeing.

use crate::common::{clear, make_parent, outputs, persisted_state_is_trusted};
use lab_engine::{BuildOptions, Silent};
use lab_testkit::TestLab;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const ROOTS: &[&str] = &[
    "layers/_",
    "layers/l1",
    "layers/l2",
    "machines/m1",
    "machines/m2",
    "layers/-",
];
/// Machines: two with directories, and `-`, named by the inventory only
/// until a layer list gives it a directory.
const MACHINES: &[&str] = &["m1", "m2", "-"];
/// Paths inside a root's own directory. Templates: `*.m4.*`; followed: `!`.
/// `opt:` paths lie under `usr/local/opt/` (make's final mode fix-up).
const PATHS: &[&str] = &[
    "a",
    "b.m4.conf",
    "!c",
    "d/x",
    "!e/f",
    "d/.pin",
    ".m4.rc",
    "-x y",
    "opt:k",
    "opt:!s",
];
const BODIES: &[&str] = &[
    "one\n",
    "ENV_ROLE on ENV_MACHINE\n",
    "m4_include(`shared/inc.m4')m4_dnl\n",
    "m4_sinclude(`shared/maybe.m4')x\n",
    "HDR ENV_MACHINE\n",
    "",
    "--kernel ENV_HOSTTYPE\n",
];
const MODES: &[u32] = &[0o644, 0o600, 0o755, 0o664];
const SHARED: &[&str] = &["shared/t1", "shared/t2", "shared/inc.m4", "shared/maybe.m4"];

#[derive(Clone, Debug)]
enum Op {
    Write {
        root: usize,
        path: usize,
        body: usize,
    },
    Delete {
        root: usize,
        path: usize,
    },
    Rename {
        root: usize,
        from: usize,
        to: usize,
    },
    Chmod {
        root: usize,
        path: usize,
        mode: usize,
    },
    Symlink {
        root: usize,
        path: usize,
        target: usize,
    },
    Shared {
        file: usize,
        body: Option<usize>,
    },
    ChmodShared {
        mode: usize,
    },
    Prelude {
        body: usize,
    },
    LinkList {
        root: usize,
        lines: Vec<(u8, u8)>,
    },
    Layers {
        machine: usize,
        layers: Vec<bool>,
        crlf: bool,
        comments: bool,
        twice: bool,
    },
    Facts {
        machine: usize,
        role: usize,
        json: bool,
        empty: bool,
    },
    /// `layers/l1/dup/d` changes (content, mode); `layers/l2/dup/!d`
    /// follows it, so the two sources of `dup/d` agree.
    Dup {
        body: usize,
        mode: usize,
    },
    Gathered {
        machine: usize,
        arch: Option<usize>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let r = 0..ROOTS.len();
    let p = 0..PATHS.len();
    prop_oneof![
        5 => (r.clone(), p.clone(), 0..BODIES.len()).prop_map(|(root, path, body)| Op::Write { root, path, body }),
        2 => (r.clone(), p.clone()).prop_map(|(root, path)| Op::Delete { root, path }),
        2 => (r.clone(), p.clone(), p.clone()).prop_map(|(root, from, to)| Op::Rename { root, from, to }),
        2 => (r.clone(), p.clone(), 0..MODES.len()).prop_map(|(root, path, mode)| Op::Chmod { root, path, mode }),
        2 => (r.clone(), p, 0..3usize).prop_map(|(root, path, target)| Op::Symlink { root, path, target }),
        3 => (0..SHARED.len(), proptest::option::of(0..BODIES.len())).prop_map(|(file, body)| Op::Shared { file, body }),
        1 => (0..MODES.len()).prop_map(|mode| Op::ChmodShared { mode }),
        1 => (0..3usize).prop_map(|body| Op::Prelude { body }),
        2 => (r, proptest::collection::vec((0..3u8, 0..3u8), 0..3)).prop_map(|(root, lines)| Op::LinkList { root, lines }),
        2 => (0..MACHINES.len(), proptest::collection::vec(any::<bool>(), 4), any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(machine, layers, crlf, comments, twice)| Op::Layers { machine, layers, crlf, comments, twice }),
        2 => (0..MACHINES.len(), 0..3usize, any::<bool>(), proptest::bool::weighted(0.25))
            .prop_map(|(machine, role, json, empty)| Op::Facts { machine, role, json, empty }),
        1 => (0..BODIES.len(), 0..MODES.len()).prop_map(|(body, mode)| Op::Dup { body, mode }),
        1 => (0..MACHINES.len(), proptest::option::of(0..2usize)).prop_map(|(machine, arch)| Op::Gathered { machine, arch }),
    ]
}

/// A path m4 or a `!` copy follows: its symlinks must point at a file.
fn followed(path: &str) -> bool {
    path.contains('!') || path.contains(".m4.")
}

fn write(p: &Path, body: &str) {
    clear(p);
    std::fs::write(p, body).unwrap();
}

fn apply(lab: &TestLab, op: &Op) {
    let base = lab.path();
    let at = |root: usize, i: usize| match PATHS[i].strip_prefix("opt:") {
        Some(p) => base
            .join(ROOTS[root])
            .join(format!("usr/local/opt/r{root}"))
            .join(p),
        None => base
            .join(ROOTS[root])
            .join(format!("r{root}"))
            .join(PATHS[i]),
    };
    match op {
        Op::Write { root, path, body } => {
            let p = at(*root, *path);
            make_parent(base, &p);
            write(&p, BODIES[*body]);
        }
        Op::Delete { root, path } => clear(&at(*root, *path)),
        Op::Rename { root, from, to } => {
            let (f, t) = (at(*root, *from), at(*root, *to));
            if f != t && std::fs::symlink_metadata(&f).is_ok() && !t.starts_with(&f) {
                // a dangling link must not become followed
                let dangling = std::fs::metadata(&f).is_err();
                if !(dangling && followed(PATHS[*to])) {
                    make_parent(base, &t);
                    clear(&t);
                    if std::fs::symlink_metadata(&f).is_ok() {
                        std::fs::rename(&f, &t).unwrap();
                    }
                }
            }
        }
        Op::Chmod { root, path, mode } => {
            let p = at(*root, *path);
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(MODES[*mode]))
                    .unwrap();
            }
        }
        Op::Symlink { root, path, target } => {
            let p = at(*root, *path);
            make_parent(base, &p);
            clear(&p);
            let t = match target {
                0 => base.join("shared/t1").display().to_string(),
                1 => base.join("shared/t2").display().to_string(),
                _ if followed(PATHS[*path]) => base.join("shared/t1").display().to_string(),
                _ => "../dangling".to_string(),
            };
            std::os::unix::fs::symlink(t, &p).unwrap();
        }
        Op::Shared { file, body } => {
            let p = base.join(SHARED[*file]);
            match body {
                Some(b) if *file < 2 => write(&p, &BODIES[*b].replace("m4_", "")),
                Some(b) if *b < 2 => write(&p, BODIES[*b]),
                Some(_) => write(&p, "included ENV_MACHINE\n"),
                // t1, t2 and inc.m4 always exist (links point at them)
                None if *file < 3 => write(&p, "reset\n"),
                None => clear(&p),
            }
        }
        Op::ChmodShared { mode } => {
            std::fs::set_permissions(
                base.join("shared/t1"),
                std::fs::Permissions::from_mode(MODES[*mode]),
            )
            .unwrap();
        }
        Op::Prelude { body } => {
            let p = base.join("layers/_/usr/local/include/m4/p.m4");
            make_parent(base, &p);
            let text = match body {
                0 => "m4_define(`HDR', `header one')m4_dnl\n",
                1 => "m4_define(`HDR', `header two for ENV_ROLE')m4_dnl\n",
                _ => "m4_define(`HDR', `m4_include(`shared/inc.m4')')m4_dnl\n",
            };
            write(&p, text);
        }
        Op::LinkList { root, lines } => {
            let p = base
                .join(ROOTS[*root])
                .join(format!("usr/local/opt/initd/links/r{root}.txt"));
            make_parent(base, &p);
            let mut text = String::from("# links\n");
            let mut seen = Vec::new();
            for (n, t) in lines {
                if seen.contains(n) {
                    continue;
                }
                seen.push(*n);
                text.push_str(&format!("/lnk/r{root}/{n}   /target/{t}\n"));
            }
            write(&p, &text);
        }
        Op::Layers {
            machine,
            layers,
            crlf,
            comments,
            twice,
        } => {
            let p = base.join(format!(
                "machines/{}/usr/local/opt/initd/layers/a.txt",
                MACHINES[*machine]
            ));
            make_parent(base, &p);
            // with CRLF, a name at the end of its line keeps the `\r` (and
            // names no layer), one followed by a comment does not
            let eol = if *crlf { "\r\n" } else { "\n" };
            let mut text = format!("# layers{eol}");
            for (i, on) in layers.iter().enumerate() {
                let name = ["l1", "l2", "l3", "-"][i];
                let sign = if *on { "+" } else { "-" };
                let comment = if *comments && i % 2 == 0 {
                    " # why"
                } else {
                    ""
                };
                text.push_str(&format!("{sign} {name}{comment}{eol}"));
                if *twice {
                    text.push_str(&format!("{sign}\t{name}{eol}"));
                }
            }
            write(&p, &text);
        }
        Op::Facts {
            machine,
            role,
            json,
            empty,
        } => {
            let m = MACHINES[*machine];
            let (keep, drop) = if *json {
                ("json", "env")
            } else {
                ("env", "json")
            };
            clear(&base.join(format!(".facts/{m}.{drop}")));
            let p = base.join(format!(".facts/{m}.{keep}"));
            let role = ["web", "db", "ENV_MACHINE-ish"][*role];
            let text = if *empty {
                String::new()
            } else if *json {
                format!("{{\"ENV_ROLE\": \"{role}\", \"ENV_N\": [1, null]}}\n")
            } else {
                format!("ENV_ROLE='{role}'\n")
            };
            write(&p, &text);
        }
        Op::Dup { body, mode } => {
            let p = base.join("layers/l1/dup/d");
            write(&p, BODIES[*body]);
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(MODES[*mode])).unwrap();
        }
        Op::Gathered { machine, arch } => {
            let p = base.join(format!(".lab/facts/{}.json", MACHINES[*machine]));
            match arch {
                Some(a) => {
                    make_parent(base, &p);
                    write(
                        &p,
                        &format!(
                            "{{\"arch\": \"{}\", \"kernel\": \"6.1.0-{a}\"}}\n",
                            ["x86_64", "aarch64"][*a]
                        ),
                    );
                }
                None => clear(&p),
            }
        }
    }
}

fn build(dir: &Path) -> Vec<(String, Result<(), String>)> {
    let engine = lab_compat::open(dir).unwrap();
    let report = engine.build(&BuildOptions::default(), &Silent).unwrap();
    report
        .machines
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                m.result.as_ref().map(|_| ()).map_err(|e| format!("{e:?}")),
            )
        })
        .collect()
}

/// The project every run starts from.
fn start() -> TestLab {
    let lab = TestLab::new();
    lab.file("shared/t1", "t1\n")
        .file("shared/t2", "t2\n")
        .file("shared/inc.m4", "inc for ENV_MACHINE\n")
        .file(".facts/example.env", "ENV_ROLE=generic\n")
        .file(
            "layers/_/usr/local/include/m4/p.m4",
            "m4_define(`HDR', `header')m4_dnl\n",
        )
        .file("layers/l1/r1/a", "l1\n")
        .file("layers/l2/r2/b.m4.conf", "ENV_ROLE HDR\n")
        .file("machines/m1/usr/local/opt/initd/layers/a.txt", "+ l1\n")
        .file(
            "machines/m2/usr/local/opt/initd/layers/a.txt",
            "+ l2\n+ l1\n+ l3\n+ -\n",
        )
        .file("layers/-/r5/a", "dash\n")
        .file("layers/l1/dup/d", "shared\n")
        .symlink("layers/l2/dup/!d", "../../l1/dup/d")
        .file("inventory.json", r#"{"-": null, "m1": null}"#)
        .file(".facts/m2.json", "");
    lab
}

fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let lab = start();
    build(lab.path());
    for (i, op) in ops.iter().enumerate() {
        apply(&lab, op);
        let inc = build(lab.path());
        let clean_lab = lab.copy_sources();
        if lab.join(".lab/facts").exists() {
            std::fs::create_dir_all(clean_lab.join(".lab/facts")).unwrap();
            for e in std::fs::read_dir(lab.join(".lab/facts")).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), clean_lab.join(".lab/facts").join(e.file_name())).unwrap();
            }
        }
        let clean = build(clean_lab.path());
        prop_assert_eq!(&inc, &clean, "step {}: {:?}: results differ", i, op);
        prop_assert!(
            inc.iter().all(|(_, r)| r.is_ok()),
            "step {}: {:?}: a build failed: {:?}",
            i,
            op,
            inc
        );
        let (a, b) = (outputs(lab.path()), outputs(clean_lab.path()));
        prop_assert!(
            a == b,
            "step {}: {:?}\n--- incremental\n{}\n--- clean\n{}",
            i,
            op,
            a,
            b
        );
    }
    Ok(())
}

/// Every entry under the project but `.lab/`: kind, mode, and content or
/// link target.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut m = BTreeMap::new();
    for e in walkdir::WalkDir::new(root).min_depth(1) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root).unwrap();
        if rel.starts_with(".lab") {
            continue;
        }
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        let body = if meta.file_type().is_symlink() {
            std::fs::read_link(e.path())
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else if meta.is_file() {
            std::fs::read(e.path()).unwrap()
        } else {
            Vec::new()
        };
        m.insert(e.path().to_path_buf(), (meta.permissions().mode(), body));
    }
    m
}

/// The paths whose entry differs between two snapshots: what a file
/// system watcher reports.
fn changed(
    a: &BTreeMap<PathBuf, (u32, Vec<u8>)>,
    b: &BTreeMap<PathBuf, (u32, Vec<u8>)>,
) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = a
        .iter()
        .filter(|(p, x)| b.get(*p) != Some(*x))
        .map(|(p, _)| p.clone())
        .collect();
    v.extend(b.keys().filter(|p| !a.contains_key(*p)).cloned());
    v
}

/// The same edits in a watch session: after each, the session's cycle for
/// the changed paths (or, when `lost`, a rescan) leaves the tree a clean
/// build makes, and what the session persists is a state the next build
/// trusts. (Gathered facts change when lab gathers them, not through file
/// events of the project: those edits are left out.)
fn check_session(ops: Vec<(Op, bool)>) -> Result<(), TestCaseError> {
    let lab = start();
    let engine = lab_compat::open(lab.path()).unwrap();
    let (mut session, _) = lab_engine::Session::start(engine, &[], &Silent).unwrap();
    for (i, (op, lost)) in ops.iter().enumerate() {
        if matches!(op, Op::Gathered { .. }) {
            continue;
        }
        let before = snapshot(lab.path());
        apply(&lab, op);
        let paths = changed(&before, &snapshot(lab.path()));
        let r = if *lost {
            session.rescan(&Silent).unwrap()
        } else {
            session.cycle(&paths, &Silent).unwrap()
        };
        let clean_lab = lab.copy_sources();
        let clean = build(clean_lab.path());
        for m in &r.build.machines {
            let c = clean.iter().find(|(n, _)| *n == m.name);
            prop_assert!(
                m.result.is_ok() == c.is_some_and(|(_, r)| r.is_ok()),
                "step {}: {:?}: {}: {:?} (clean: {:?})",
                i,
                op,
                m.name,
                m.result,
                c
            );
        }
        let (a, b) = (outputs(lab.path()), outputs(clean_lab.path()));
        prop_assert!(
            a == b,
            "step {}: {:?} (lost events: {})\n--- session\n{}\n--- clean\n{}",
            i,
            op,
            lost,
            a,
            b
        );
    }
    persisted_state_is_trusted(&lab, session)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        max_shrink_iters: 200,
        // NAME.proptest-regressions beside this file
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn compat_incremental_build_equals_clean_build(ops in proptest::collection::vec(op(), 1..14)) {
        check(ops)?;
    }

    #[test]
    fn compat_watch_session_equals_clean_build(ops in proptest::collection::vec((op(), any::<bool>()), 1..14)) {
        check_session(ops)?;
    }
}
