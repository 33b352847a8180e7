//! A make-style project in a watch session is built incrementally, through
//! the same pipeline as a native one: an edit re-runs exactly the nodes that
//! depend on it, only the machines it reaches are built, and the project is
//! read again only when its machines or their stacks may have changed.

use lab_engine::{Reporter, Session};
use lab_graph::{Key, Reason};
use lab_testkit::TestLab;
use std::sync::Mutex;

#[derive(Default)]
struct Recorder {
    ran: Mutex<Vec<String>>,
}

impl Reporter for Recorder {
    fn node_ran(&self, machine: &str, key: &Key, _reason: &Reason) {
        self.ran.lock().unwrap().push(format!("{machine}: {key}"));
    }
}

impl Recorder {
    fn ran(&self) -> Vec<String> {
        let mut v = self.ran.lock().unwrap().clone();
        v.sort();
        v
    }
}

/// Machines `a` (layers `base`, `web`) and `b` (layer `base`), m4
/// templates reading facts and a prelude, plain files.
fn lab() -> TestLab {
    let t = TestLab::new();
    t.file(
        "layers/_/usr/local/include/m4/p.m4",
        "m4_define(`HI', `hi $1')m4_dnl\n",
    )
    .file("layers/base/etc/motd.m4.txt", "HI(ENV_MACHINE)\n")
    .file("layers/base/etc/plain.conf", "plain\n")
    .file("layers/web/etc/site.conf", "site v1\n")
    .file("layers/web/etc/role.m4.env", "ROLE=ENV_ROLE\n")
    .file(".facts/a.env", "ENV_ROLE='front'\n")
    .file(
        "machines/a/usr/local/opt/initd/layers/l.txt",
        "+ base\n+ web\n",
    )
    .file("machines/b/usr/local/opt/initd/layers/l.txt", "+ base\n");
    t
}

fn built(report: &lab_engine::CycleReport) -> Vec<String> {
    report
        .build
        .machines
        .iter()
        .map(|m| {
            assert!(m.result.is_ok(), "{}: {:?}", m.name, m.result);
            m.name.clone()
        })
        .collect()
}

#[test]
fn an_edit_during_a_watch_session_reruns_exactly_what_depends_on_it() {
    let t = lab();
    let engine = lab_compat::open(t.path()).unwrap();
    let (mut session, first) = Session::start(engine, &[], &Recorder::default()).unwrap();
    assert_eq!(first.failed().count(), 0);

    // a plain file of a layer only `a` has
    t.file("layers/web/etc/site.conf", "site v2\n");
    let rec = Recorder::default();
    let r = session
        .cycle(&[t.join("layers/web/etc/site.conf")], &rec)
        .unwrap();
    assert!(!r.reloaded);
    assert_eq!(built(&r), ["a"], "only the machine the edit reaches");
    assert_eq!(rec.ran(), ["a: output `etc/site.conf`"]);
    assert_eq!(t.read(".lab/out/a/etc/site.conf"), "site v2\n");

    // a template of a layer both have
    t.file("layers/base/etc/motd.m4.txt", "HI(ENV_MACHINE)!\n");
    let rec = Recorder::default();
    let r = session
        .cycle(&[t.join("layers/base/etc/motd.m4.txt")], &rec)
        .unwrap();
    assert!(!r.reloaded);
    assert_eq!(built(&r), ["a", "b"]);
    assert_eq!(
        rec.ran(),
        ["a: output `etc/motd.txt`", "b: output `etc/motd.txt`"]
    );
    assert_eq!(t.read(".lab/out/b/etc/motd.txt"), "hi b!\n");

    // a fact file: the templates of that machine that read the changed
    // fact re-render (motd.txt reads ENV_MACHINE only), nothing else
    t.file(".facts/a.env", "ENV_ROLE='back'\n");
    let rec = Recorder::default();
    let r = session.cycle(&[t.join(".facts/a.env")], &rec).unwrap();
    assert!(!r.reloaded);
    assert_eq!(rec.ran(), ["a: output `etc/role.env`"]);
    assert_eq!(t.read(".lab/out/a/etc/role.env"), "ROLE=back\n");

    // the prelude every template reads (a file of `layers/_`, so an
    // output too)
    t.file(
        "layers/_/usr/local/include/m4/p.m4",
        "m4_define(`HI', `hello $1')m4_dnl\n",
    );
    let rec = Recorder::default();
    session
        .cycle(&[t.join("layers/_/usr/local/include/m4/p.m4")], &rec)
        .unwrap();
    assert_eq!(
        rec.ran(),
        [
            "a: output `etc/motd.txt`",
            "a: output `etc/role.env`",
            "a: output `usr/local/include/m4/p.m4`",
            "b: output `etc/motd.txt`",
            "b: output `usr/local/include/m4/p.m4`"
        ]
    );
    assert_eq!(t.read(".lab/out/b/etc/motd.txt"), "hello b!\n");

    // a layer list changes a machine's stack: the project is read again
    t.file(
        "machines/b/usr/local/opt/initd/layers/l.txt",
        "+ base\n+ web\n",
    );
    let rec = Recorder::default();
    let r = session
        .cycle(
            &[t.join("machines/b/usr/local/opt/initd/layers/l.txt")],
            &rec,
        )
        .unwrap();
    assert_eq!(t.read(".lab/out/b/etc/site.conf"), "site v2\n");
    assert!(rec.ran().contains(&"b: output `etc/site.conf`".to_string()));
    assert!(!rec.ran().iter().any(|r| r.starts_with("a:")), "{r:?}");

    // what the session leaves is what a fresh build expects: a no-op
    session.persist().unwrap();
    drop(session);
    let engine = lab_compat::open(t.path()).unwrap();
    let rec = Recorder::default();
    let report = engine
        .build(&lab_engine::BuildOptions::default(), &rec)
        .unwrap();
    assert!(
        report
            .machines
            .iter()
            .all(|m| m.result.as_ref().is_ok_and(|r| r.up_to_date)),
        "{report:?}"
    );
    assert_eq!(rec.ran(), Vec::<String>::new());
}
