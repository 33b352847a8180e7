//! The promise make breaks: after any sequence of edits, an incremental
//! build produces exactly the tree a clean build of the same sources does
//! (paths, kinds, modes, contents, link targets, manifests).
//!
//! Each step applies one random edit to a project, builds it incrementally
//! (a fresh engine each time, like a new process), copies the sources to a
//! new directory, builds that from nothing, and compares the outputs.

use crate::common::{clear, make_parent, outputs, persisted_state_is_trusted};
use lab_engine::{BuildOptions, Silent};
use lab_testkit::TestLab;
use proptest::prelude::*;
use std::path::Path;

const ROOTS: &[&str] = &[
    "layers/_",
    "layers/l1",
    "layers/l2",
    "machines/m1",
    "machines/m2",
    "machines/m3",
];
/// Plain paths; `etc/d` is sometimes a directory (holding `etc/d/x`) and
/// sometimes a file or symlink, which exercises kind changes and shadowing.
const PLAIN: &[&str] = &["etc/a", "etc/b", "etc/d", "etc/d/x", "srv/e"];
const TEMPLATES: &[&str] = &["etc/t.j2", "etc/u.j2", "etc/d/v.j2"];
const BODIES: &[&str] = &["one\n", "two\n", "one\n\n", ""];
const TEMPLATE_BODIES: &[&str] = &[
    "static\n",
    "{{ domain }}\n",
    "{% include '_partials/p.j2' %}{{ machine }}\n",
    "{% for m in machines %}{{ m }}:{{ machines[m].facts.domain | default('-') }} {% endfor %}\n",
    "{% if port is defined %}port {{ port }}{% else %}no port{% endif %}\n",
    "{# same output as static #}static\n",
];
/// Pod sources (`pods/NAME.yaml[.j2]`): `@` is the pod's name, `#` its
/// index (so two pods never publish one port). The first two are plain
/// files, the others templates; one is rootful, so moving between bodies
/// moves the pod's files between Quadlet's directories.
const PODS: &[&str] = &["p0", "p1"];
const POD_BODIES: &[&str] = &[
    "apiVersion: v1\nkind: Pod\nmetadata:\n  name: @\nspec:\n  containers:\n  - name: app\n    image: localhost/app\n    ports:\n    - {containerPort: 80, hostPort: 800#}\n",
    "apiVersion: v1\nkind: Pod\nmetadata:\n  name: @\n  annotations: {lab.dev/rootful: \"true\"}\nspec:\n  restartPolicy: Never\n  containers:\n  - name: app\n    image: localhost/app\n",
    "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: @\nspec:\n  template:\n    spec:\n      containers:\n      - name: app\n        image: localhost/app\n        env:\n        - {name: DOMAIN, value: \"{{ domain }}\"}\n",
    "apiVersion: v1\nkind: Pod\nmetadata:\n  name: @\n{% if port is defined %}  annotations: {lab.dev/rootful: \"true\"}\n{% endif %}spec:\n  containers:\n  - name: app\n    image: localhost/app\n    ports:\n    - containerPort: 80\n{% if port is defined %}      hostPort: {{ 9000 + port * 10 + # }}\n{% endif %}",
];
const TARGETS: &[&str] = &["/usr/share/zoneinfo/UTC", "../b", "a", "/nonexistent/x"];
const MODES: &[u32] = &[0o644, 0o600, 0o755];

#[derive(Clone, Debug)]
enum Op {
    Write {
        root: usize,
        path: usize,
        body: usize,
    },
    Template {
        root: usize,
        path: usize,
        body: usize,
    },
    Delete {
        root: usize,
        path: usize,
        template: bool,
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
    EmptyDir {
        root: usize,
    },
    Partial {
        root: usize,
        body: usize,
    },
    Fact {
        domain: usize,
        port: Option<u16>,
    },
    Layers {
        machine: usize,
        layers: Vec<bool>,
    },
    ToggleMachine3,
    Pod {
        root: usize,
        pod: usize,
        body: usize,
    },
    DeletePod {
        root: usize,
        pod: usize,
    },
    TogglePodUser,
}

fn op() -> impl Strategy<Value = Op> {
    let r = 0..ROOTS.len();
    let r2 = r.clone();
    prop_oneof![
        4 => (r.clone(), 0..PLAIN.len(), 0..BODIES.len()).prop_map(|(root, path, body)| Op::Write { root, path, body }),
        3 => (r.clone(), 0..TEMPLATES.len(), 0..TEMPLATE_BODIES.len()).prop_map(|(root, path, body)| Op::Template { root, path, body }),
        2 => (r.clone(), 0..PLAIN.len().max(TEMPLATES.len()), any::<bool>()).prop_map(|(root, path, template)| Op::Delete { root, path, template }),
        1 => (r.clone(), 0..PLAIN.len(), 0..PLAIN.len()).prop_map(|(root, from, to)| Op::Rename { root, from, to }),
        2 => (r.clone(), 0..PLAIN.len(), 0..MODES.len()).prop_map(|(root, path, mode)| Op::Chmod { root, path, mode }),
        2 => (r.clone(), 0..PLAIN.len(), 0..TARGETS.len()).prop_map(|(root, path, target)| Op::Symlink { root, path, target }),
        1 => r.clone().prop_map(|root| Op::EmptyDir { root }),
        2 => (r, 0..3usize).prop_map(|(root, body)| Op::Partial { root, body }),
        2 => (0..3usize, proptest::option::of(1u16..3)).prop_map(|(domain, port)| Op::Fact { domain, port }),
        2 => (0..3usize, proptest::collection::vec(any::<bool>(), 2)).prop_map(|(machine, layers)| Op::Layers { machine, layers }),
        1 => Just(Op::ToggleMachine3),
        3 => (r2.clone(), 0..PODS.len(), 0..POD_BODIES.len()).prop_map(|(root, pod, body)| Op::Pod { root, pod, body }),
        1 => (r2, 0..PODS.len()).prop_map(|(root, pod)| Op::DeletePod { root, pod }),
        1 => Just(Op::TogglePodUser),
    ]
}

/// The lab.toml side of the model.
#[derive(Clone, Debug)]
struct Inventory {
    domain: usize,
    port: Option<u16>,
    layers: [Vec<bool>; 3],
    m3: bool,
    pod_user: bool,
}

impl Inventory {
    fn toml(&self) -> String {
        let mut s = String::new();
        if self.pod_user {
            s.push_str("[settings]\npod_user = \"svc\"\n\n");
        }
        s.push_str(&format!("[facts]\ndomain = \"d{}.example\"\n", self.domain));
        if let Some(p) = self.port {
            s.push_str(&format!("port = {p}\n"));
        }
        for (i, l) in self.layers.iter().enumerate() {
            if i == 2 && !self.m3 {
                continue;
            }
            let names: Vec<String> = l
                .iter()
                .enumerate()
                .filter(|(_, on)| **on)
                .map(|(j, _)| format!("\"l{}\"", j + 1))
                .collect();
            // machines list their layers in different orders
            let names = if i == 1 {
                names.into_iter().rev().collect()
            } else {
                names
            };
            s.push_str(&format!(
                "\n[machines.m{}]\nlayers = [{}]\n",
                i + 1,
                names.join(", ")
            ));
            if i == 1 {
                s.push_str("facts = { domain = \"m2.example\" }\n");
            }
        }
        s
    }
}

/// Apply an edit; returns the paths it touched (what a file watcher would
/// report).
fn apply(lab: &TestLab, inv: &mut Inventory, op: &Op) -> Vec<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let base = lab.path();
    let at = |root: usize, rel: &str| base.join(ROOTS[root]).join(rel);
    let mut touched = vec![base.join("lab.toml")];
    match op {
        Op::Write { root, path, body } => {
            let p = at(*root, PLAIN[*path]);
            let fresh = missing_ancestors(base, &p);
            make_parent(base, &p);
            clear(&p);
            std::fs::write(&p, BODIES[*body]).unwrap();
            touched.push(p.clone());
            touched.extend(fresh);
        }
        Op::Template { root, path, body } => {
            let p = at(*root, TEMPLATES[*path]);
            let fresh = missing_ancestors(base, &p);
            make_parent(base, &p);
            clear(&p);
            std::fs::write(&p, TEMPLATE_BODIES[*body]).unwrap();
            touched.push(p.clone());
            touched.extend(fresh);
        }
        Op::Delete {
            root,
            path,
            template,
        } => {
            let rel = if *template {
                TEMPLATES[*path % TEMPLATES.len()]
            } else {
                PLAIN[*path % PLAIN.len()]
            };
            clear(&at(*root, rel));
            touched.push(at(*root, rel));
        }
        Op::Rename { root, from, to } => {
            let (f, t) = (at(*root, PLAIN[*from]), at(*root, PLAIN[*to]));
            if f != t && std::fs::symlink_metadata(&f).is_ok() && !t.starts_with(&f) {
                let fresh = missing_ancestors(base, &t);
                make_parent(base, &t);
                clear(&t);
                if std::fs::symlink_metadata(&f).is_ok() {
                    std::fs::rename(&f, &t).unwrap();
                }
                touched.push(f);
                touched.push(t.clone());
                touched.extend(fresh);
            }
        }
        Op::Chmod { root, path, mode } => {
            let p = at(*root, PLAIN[*path]);
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(MODES[*mode]))
                    .unwrap();
            }
            touched.push(p);
        }
        Op::Symlink { root, path, target } => {
            let p = at(*root, PLAIN[*path]);
            let fresh = missing_ancestors(base, &p);
            make_parent(base, &p);
            clear(&p);
            std::os::unix::fs::symlink(TARGETS[*target], &p).unwrap();
            touched.push(p.clone());
            touched.extend(fresh);
        }
        Op::EmptyDir { root } => {
            let p = at(*root, "var/empty");
            let fresh = missing_ancestors(base, &p);
            make_parent(base, &p);
            clear(&p);
            std::fs::create_dir_all(&p).unwrap();
            touched.push(p.clone());
            touched.extend(fresh);
        }
        Op::Partial { root, body } => {
            let p = at(*root, "_partials/p.j2");
            let fresh = missing_ancestors(base, &p);
            make_parent(base, &p);
            std::fs::write(&p, format!("partial {body} from {} -- ", ROOTS[*root])).unwrap();
            touched.push(p.clone());
            touched.extend(fresh);
        }
        Op::Fact { domain, port } => {
            inv.domain = *domain;
            inv.port = *port;
        }
        Op::Layers { machine, layers } => inv.layers[*machine] = layers.clone(),
        Op::ToggleMachine3 => inv.m3 = !inv.m3,
        Op::Pod { root, pod, body } => {
            let name = PODS[*pod];
            let suffix = if *body >= 2 { ".yaml.j2" } else { ".yaml" };
            let other = if *body >= 2 { ".yaml" } else { ".yaml.j2" };
            let p = at(*root, &format!("pods/{name}{suffix}"));
            let o = at(*root, &format!("pods/{name}{other}"));
            let fresh = missing_ancestors(base, &p);
            make_parent(base, &p);
            clear(&o);
            std::fs::write(
                &p,
                POD_BODIES[*body]
                    .replace('@', name)
                    .replace('#', &pod.to_string()),
            )
            .unwrap();
            touched.push(o);
            touched.push(p);
            touched.extend(fresh);
        }
        Op::DeletePod { root, pod } => {
            for suffix in [".yaml", ".yaml.j2"] {
                let p = at(*root, &format!("pods/{}{suffix}", PODS[*pod]));
                clear(&p);
                touched.push(p);
            }
        }
        Op::TogglePodUser => inv.pod_user = !inv.pod_user,
    }
    let toml = inv.toml();
    if std::fs::read_to_string(base.join("lab.toml"))
        .ok()
        .as_deref()
        != Some(toml.as_str())
    {
        std::fs::write(base.join("lab.toml"), toml).unwrap();
    } else {
        touched.remove(0);
    }
    touched
}

/// The parent directories of `p` that do not exist yet (a watcher reports
/// them when they are created).
fn missing_ancestors(base: &Path, p: &Path) -> Vec<std::path::PathBuf> {
    p.ancestors()
        .skip(1)
        .take_while(|a| *a != base)
        .filter(|a| std::fs::symlink_metadata(a).map_or(true, |m| !m.is_dir()))
        .map(|a| a.to_path_buf())
        .collect()
}

fn build(dir: &Path) -> Vec<(String, bool)> {
    let engine = lab_compat::open(dir).unwrap();
    let report = engine.build(&BuildOptions::default(), &Silent).unwrap();
    report
        .machines
        .iter()
        .map(|m| (m.name.clone(), m.result.is_ok()))
        .collect()
}

fn check(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let lab = TestLab::new();
    lab.file("layers/_/_partials/p.j2", "base partial -- ")
        .file("layers/l1/etc/a", "l1\n")
        .file("layers/l2/etc/t.j2", "{{ domain }} on {{ machine }}\n");
    let mut inv = Inventory {
        domain: 0,
        port: None,
        layers: [vec![true, false], vec![true, true], vec![false, true]],
        m3: true,
        pod_user: false,
    };
    lab.file("lab.toml", &inv.toml());
    build(lab.path());
    for (i, op) in ops.iter().enumerate() {
        apply(&lab, &mut inv, op);
        let inc = build(lab.path());
        let clean_lab = lab.copy_sources();
        let clean = build(clean_lab.path());
        prop_assert_eq!(&inc, &clean, "step {}: {:?}: results differ", i, op);
        prop_assert!(
            inc.iter().all(|(_, ok)| *ok),
            "step {}: {:?}: a build failed",
            i,
            op
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

/// The same edits through a watch session: every cycle sees only the paths
/// an edit touched, and the outputs still equal a clean build. An edit
/// marked `lost` reaches the session as lost events (the kernel's event
/// queue overflowed): it rescans instead.
fn check_session(ops: Vec<(Op, bool)>) -> Result<(), TestCaseError> {
    let lab = TestLab::new();
    lab.file("layers/_/_partials/p.j2", "base partial -- ")
        .file("layers/l1/etc/a", "l1\n")
        .file("layers/l2/etc/t.j2", "{{ domain }} on {{ machine }}\n");
    let mut inv = Inventory {
        domain: 0,
        port: None,
        layers: [vec![true, false], vec![true, true], vec![false, true]],
        m3: true,
        pod_user: false,
    };
    lab.file("lab.toml", &inv.toml());
    let engine = lab_compat::open(lab.path()).unwrap();
    let (mut session, _) = lab_engine::Session::start(engine, &[], &Silent).unwrap();
    for (i, (op, lost)) in ops.iter().enumerate() {
        let paths = apply(&lab, &mut inv, op);
        let r = if *lost {
            session.rescan(&Silent).unwrap()
        } else {
            session.cycle(&paths, &Silent).unwrap()
        };
        prop_assert!(
            r.build.machines.iter().all(|m| m.result.is_ok()),
            "step {}: {:?}: {:?}",
            i,
            op,
            r.build.machines
        );
        let clean_lab = lab.copy_sources();
        build(clean_lab.path());
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
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(40),
        max_shrink_iters: 200,
        // NAME.proptest-regressions beside this file
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn incremental_build_equals_clean_build(ops in proptest::collection::vec(op(), 1..14)) {
        check(ops)?;
    }

    #[test]
    fn watch_session_equals_clean_build(ops in proptest::collection::vec((op(), any::<bool>()), 1..14)) {
        check_session(ops)?;
    }
}

#[test]
fn session_regression_write_then_chmod() {
    for lost in [false, true] {
        check_session(vec![
            (
                Op::Write {
                    root: 0,
                    path: 2,
                    body: 0,
                },
                lost,
            ),
            (
                Op::Chmod {
                    root: 0,
                    path: 2,
                    mode: 1,
                },
                lost,
            ),
        ])
        .unwrap();
    }
}
