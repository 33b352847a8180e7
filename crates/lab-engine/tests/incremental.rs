//! After each edit, exactly these nodes re-ran: the test of incrementality.
//! Every build opens the engine afresh, like a new `lab build` process.

use lab_engine::{BuildOptions, BuildReport, Engine, Reporter};
use lab_graph::{Key, Reason};
use lab_testkit::TestLab;
use std::sync::Mutex;

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Reporter for Recorder {
    fn node_ran(&self, machine: &str, key: &Key, _reason: &Reason) {
        self.0.lock().unwrap().push(format!("{machine}: {key}"));
    }
}

fn build(lab: &TestLab) -> (Vec<String>, BuildReport) {
    let engine = Engine::open(lab.path()).unwrap();
    let rec = Recorder::default();
    let report = engine.build(&BuildOptions::default(), &rec).unwrap();
    for m in &report.machines {
        if let Err(e) = &m.result {
            panic!("machine {} failed: {e:?}", m.name);
        }
    }
    let mut ran = rec.0.into_inner().unwrap();
    ran.sort();
    (ran, report)
}

fn ran(lab: &TestLab) -> Vec<String> {
    build(lab).0
}

const TOML: &str = r#"
[facts]
domain = "example.org"
unused = "x"

[machines.a]
layers = ["web"]

[machines.b]
layers = ["web"]
facts = { domain = "b.example.org" }
"#;

fn lab() -> TestLab {
    let lab = TestLab::new();
    lab.file("lab.toml", TOML)
        .file("layers/_/etc/plain", "plain\n")
        .file("layers/_/_partials/h.j2", "# header\n")
        .file(
            "layers/web/etc/site.j2",
            "{% include '_partials/h.j2' %}server {{ domain }};\n",
        )
        .file(
            "layers/web/etc/peers.j2",
            "{% for m in machines %}{{ m }} {% endfor %}\n",
        );
    let first = ran(&lab);
    assert_eq!(first.len(), 2 * (2 + 3 + 1), "{first:#?}"); // 2 renders, 3 outputs + etc/
    assert_eq!(ran(&lab), Vec::<String>::new());
    lab
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn noop_build_reports_up_to_date_and_reads_nothing() {
    let lab = lab();
    let (ran, report) = build(&lab);
    assert!(ran.is_empty());
    assert_eq!(report.hashed, 0);
    assert!(report
        .machines
        .iter()
        .all(|m| m.result.as_ref().unwrap().up_to_date));
}

#[test]
fn editing_a_plain_file_rewrites_only_its_output() {
    let lab = lab();
    lab.file("layers/_/etc/plain", "plain, edited\n");
    assert_eq!(
        ran(&lab),
        strs(&["a: output `etc/plain`", "b: output `etc/plain`"])
    );
    assert_eq!(lab.read(".lab/out/a/etc/plain"), "plain, edited\n");
}

#[test]
fn a_fact_no_template_read_reruns_nothing() {
    let lab = lab();
    lab.file(
        "lab.toml",
        &TOML.replace("unused = \"x\"", "unused = \"y\""),
    );
    let (ran, report) = build(&lab);
    assert_eq!(ran, Vec::<String>::new());
    // the machines were looked at (their facts changed), but nothing ran
    assert!(report
        .machines
        .iter()
        .all(|m| !m.result.as_ref().unwrap().up_to_date));
}

#[test]
fn a_fact_reruns_only_the_templates_that_read_it() {
    let lab = lab();
    lab.file(
        "lab.toml",
        &TOML.replace("domain = \"example.org\"", "domain = \"example.net\""),
    );
    // b overrides `domain`, so only a changes
    assert_eq!(
        ran(&lab),
        strs(&["a: output `etc/site`", "a: render `etc/site`"])
    );
    assert_eq!(
        lab.read(".lab/out/a/etc/site"),
        "# header\nserver example.net;\n"
    );
    assert_eq!(
        lab.read(".lab/out/b/etc/site"),
        "# header\nserver b.example.org;\n"
    );
}

#[test]
fn defining_a_fact_a_template_tested_for_rerenders_it() {
    let lab = lab();
    lab.file(
        "layers/web/etc/tls.j2",
        "{% if tls is defined %}tls {{ tls }}{% else %}no tls{% endif %}\n",
    );
    build(&lab);
    lab.file(
        "lab.toml",
        &format!("{TOML}\n[machines.a.facts]\ntls = \"on\"\n"),
    );
    let r = ran(&lab);
    assert_eq!(r, strs(&["a: output `etc/tls`", "a: render `etc/tls`"]));
    assert_eq!(lab.read(".lab/out/a/etc/tls"), "tls on");
}

#[test]
fn identical_render_stops_at_the_render() {
    let lab = lab();
    lab.file(
        "layers/web/etc/site.j2",
        "{# a comment #}{% include '_partials/h.j2' %}server {{ domain }};\n",
    );
    assert_eq!(
        ran(&lab),
        strs(&["a: render `etc/site`", "b: render `etc/site`"]),
        "outputs must not be rewritten"
    );
}

#[test]
fn an_included_partial_rerenders_its_includers() {
    let lab = lab();
    lab.file("layers/_/_partials/h.j2", "# new header\n");
    assert_eq!(
        ran(&lab),
        strs(&[
            "a: output `etc/site`",
            "a: render `etc/site`",
            "b: output `etc/site`",
            "b: render `etc/site`"
        ])
    );
}

#[test]
fn a_machine_overriding_a_partial_affects_only_that_machine() {
    let lab = lab();
    lab.file("machines/a/_partials/h.j2", "# a's header\n");
    assert_eq!(
        ran(&lab),
        strs(&["a: output `etc/site`", "a: render `etc/site`"])
    );
    assert_eq!(
        lab.read(".lab/out/a/etc/site"),
        "# a's header\nserver example.org;\n"
    );
    assert!(
        !lab.join(".lab/out/a/_partials").exists(),
        "partials are not outputs"
    );
}

#[test]
fn chmod_rewrites_the_output_with_the_new_mode() {
    use std::os::unix::fs::PermissionsExt;
    let lab = lab();
    lab.chmod("layers/_/etc/plain", 0o600);
    assert_eq!(
        ran(&lab),
        strs(&["a: output `etc/plain`", "b: output `etc/plain`"])
    );
    let mode = std::fs::metadata(lab.join(".lab/out/a/etc/plain"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o600);
}

#[test]
fn deleting_a_source_removes_its_output() {
    let lab = lab();
    lab.remove("layers/_/etc/plain");
    let (ran, report) = build(&lab);
    assert_eq!(ran, Vec::<String>::new());
    let r = report.machines[0].result.as_ref().unwrap();
    assert_eq!(r.removed, strs(&["etc/plain"]));
    assert!(!lab.join(".lab/out/a/etc/plain").exists());
    assert!(!lab.read(".lab/out/a.manifest").contains("/etc/plain"));
}

#[test]
fn a_new_machine_rerenders_peer_lists_only() {
    let lab = lab();
    lab.file(
        "lab.toml",
        &format!("{TOML}\n[machines.c]\nlayers = [\"web\"]\n"),
    );
    let r = ran(&lab);
    let old: Vec<&String> = r.iter().filter(|s| !s.starts_with("c: ")).collect();
    assert_eq!(
        old,
        [
            "a: output `etc/peers`",
            "a: render `etc/peers`",
            "b: output `etc/peers`",
            "b: render `etc/peers`"
        ]
    );
    assert_eq!(r.len() - old.len(), 6, "machine c builds in full");
    assert_eq!(lab.read(".lab/out/a/etc/peers"), "a b c ");
}

#[test]
fn a_template_that_fails_keeps_the_previous_outputs_and_retries() {
    let lab = lab();
    lab.file("layers/web/etc/site.j2", "server {{ domian }};\n");
    let engine = Engine::open(lab.path()).unwrap();
    let report = engine
        .build(&BuildOptions::default(), &lab_engine::Silent)
        .unwrap();
    assert!(report.machines.iter().all(|m| m.result.is_err()));
    assert_eq!(
        lab.read(".lab/out/a/etc/site"),
        "# header\nserver example.org;\n"
    );
    // the failure is not remembered as a success: fixing it builds
    lab.file("layers/web/etc/site.j2", "server {{ domain }}!\n");
    assert_eq!(
        ran(&lab),
        strs(&[
            "a: output `etc/site`",
            "a: render `etc/site`",
            "b: output `etc/site`",
            "b: render `etc/site`"
        ])
    );
}

#[test]
fn lost_state_means_a_full_and_correct_rebuild() {
    let lab = lab();
    std::fs::write(lab.join(".lab/state/machines/a.graph"), b"garbage").unwrap();
    std::fs::remove_dir_all(lab.join(".lab/state/roots")).unwrap();
    lab.file("layers/_/etc/plain", "changed while state was lost\n");
    let r = ran(&lab);
    assert_eq!(r.iter().filter(|s| s.starts_with("a: ")).count(), 6);
    assert_eq!(r.iter().filter(|s| s.starts_with("b: ")).count(), 1);
    assert_eq!(
        lab.read(".lab/out/a/etc/plain"),
        "changed while state was lost\n"
    );
}

#[test]
fn outputs_changed_behind_labs_back_are_rebuilt() {
    let lab = lab();
    std::fs::remove_dir_all(lab.join(".lab/out/b")).unwrap();
    std::fs::remove_file(lab.join(".lab/out/b.manifest")).unwrap();
    let r = ran(&lab);
    assert_eq!(r.iter().filter(|s| s.starts_with("b: ")).count(), 6);
    assert_eq!(lab.read(".lab/out/b/etc/plain"), "plain\n");
}

/// Every file under `.lab/state/`, by path, with what tells a rewrite
/// (state files are replaced by a rename: a new inode).
fn state_files(lab: &TestLab) -> std::collections::BTreeMap<String, (u64, i64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let base = lab.join(".lab/state");
    walkdir::WalkDir::new(&base)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let m = e.metadata().unwrap();
            let rel = e.path().strip_prefix(&base).unwrap();
            (
                rel.to_string_lossy().into_owned(),
                (
                    m.ino(),
                    m.mtime_nsec() + m.mtime() * 1_000_000_000,
                    m.size(),
                ),
            )
        })
        .collect()
}

/// Give `rel` (a file or directory) the modification time `secs` after an
/// hour ago: far enough before any build that no fingerprint of it is
/// "racy" (see `Fingerprint::reusable`), so what a build rewrites does not
/// depend on the clock.
fn age(lab: &TestLab, rel: &std::path::Path, secs: u64) {
    let t = std::time::SystemTime::now() - std::time::Duration::from_secs(3600 - secs);
    std::fs::File::open(lab.join(&rel.to_string_lossy()))
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_modified(t))
        .unwrap();
}

#[test]
fn a_one_file_edit_rewrites_only_the_state_it_touched() {
    let lab = lab();
    lab.file("machines/a/etc/own", "v1\n")
        .file("machines/b/etc/own", "v1\n");
    for top in ["layers", "machines"] {
        for e in walkdir::WalkDir::new(lab.join(top)) {
            let e = e.unwrap();
            age(&lab, e.path().strip_prefix(lab.path()).unwrap(), 0);
        }
    }
    ran(&lab);
    let before = state_files(&lab);
    lab.file("machines/a/etc/own", "v2\n");
    age(&lab, std::path::Path::new("machines/a/etc/own"), 1);
    assert_eq!(ran(&lab), strs(&["a: output `etc/own`"]));
    let after = state_files(&lab);
    let rewritten: Vec<&String> = after
        .iter()
        .filter(|(p, f)| before.get(*p) != Some(*f))
        .map(|(p, _)| p)
        .collect();
    // the edited root's fingerprints, and for the machine it reaches a
    // record appended to its log and its summary; not its graph, not the
    // fingerprints of the other roots, not the other machine's state
    assert_eq!(
        rewritten,
        [
            "machines/a.log",
            "machines/a.sum",
            "roots/machines/a",
            "stamp"
        ],
        "{after:#?}"
    );
    let log_len = after["machines/a.log"].2;
    assert!(log_len < after["machines/a.graph"].2, "{after:#?}");
    assert!(before.keys().all(|p| after.contains_key(p)));

    // a no-op writes nothing but the stamp
    let before = after;
    assert_eq!(ran(&lab), Vec::<String>::new());
    let after = state_files(&lab);
    let rewritten: Vec<&String> = after
        .iter()
        .filter(|(p, f)| before.get(*p) != Some(*f))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(rewritten, ["stamp"]);
}

#[test]
fn a_torn_log_record_is_ignored_and_the_graph_written_afresh() {
    let lab = lab();
    lab.file("machines/a/etc/own", "v1\n");
    ran(&lab);
    lab.file("machines/a/etc/own", "v2\n");
    assert_eq!(ran(&lab), strs(&["a: output `etc/own`"]));
    // a build killed while appending: half a record
    let log = lab.join(".lab/state/machines/a.log");
    let mut bytes = std::fs::read(&log).unwrap();
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3]);
    std::fs::write(&log, &bytes).unwrap();
    lab.file("machines/a/etc/own", "v3\n");
    assert_eq!(ran(&lab), strs(&["a: output `etc/own`"]));
    assert_eq!(lab.read(".lab/out/a/etc/own"), "v3\n");
    assert!(
        !log.exists(),
        "the graph is written afresh, without the log"
    );
    assert_eq!(ran(&lab), Vec::<String>::new());
    lab.file("machines/a/etc/own", "v4\n");
    assert_eq!(ran(&lab), strs(&["a: output `etc/own`"]));
    assert!(log.exists());
}

/// The manifest after each edit, built by a fresh process or by a watch
/// session, is byte for byte the one a clean build writes, whether the
/// edit keeps every line's length (the manifest is patched in place) or
/// not (it is written whole).
#[test]
fn manifests_patched_in_place_equal_clean_ones() {
    let lab = lab();
    let engine = Engine::open(lab.path()).unwrap();
    let (mut session, _) = lab_engine::Session::start(engine, &[], &lab_engine::Silent).unwrap();
    let clean_manifests = |lab: &TestLab| {
        let clean = lab.copy_sources();
        build(&clean);
        (
            clean.read(".lab/out/a.manifest"),
            clean.read(".lab/out/b.manifest"),
        )
    };
    type Edit = Box<dyn Fn(&TestLab)>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            "same size",
            Box::new(|l: &TestLab| {
                l.file("layers/_/etc/plain", "PLAIN\n");
            }),
        ),
        (
            "same size width",
            Box::new(|l: &TestLab| {
                l.file("layers/_/etc/plain", "plain!!\n");
            }),
        ),
        (
            "new size width",
            Box::new(|l: &TestLab| {
                l.file("layers/_/etc/plain", &"p".repeat(120));
            }),
        ),
        (
            "mode",
            Box::new(|l: &TestLab| {
                l.chmod("layers/_/etc/plain", 0o600);
            }),
        ),
        (
            "template, same length",
            Box::new(|l: &TestLab| {
                l.file(
                    "layers/web/etc/site.j2",
                    "{% include '_partials/h.j2' %}SERVER {{ domain }};\n",
                );
            }),
        ),
        (
            "new file",
            Box::new(|l: &TestLab| {
                l.file("layers/web/etc/new", "new\n");
            }),
        ),
        (
            "same size again",
            Box::new(|l: &TestLab| {
                l.file("layers/web/etc/new", "NEW\n");
            }),
        ),
        (
            "deleted",
            Box::new(|l: &TestLab| {
                l.remove("layers/web/etc/new");
            }),
        ),
    ];
    for (what, edit) in &edits {
        // a session's cycle
        edit(&lab);
        let changed: Vec<std::path::PathBuf> = [
            "layers/_/etc/plain",
            "layers/web/etc/site.j2",
            "layers/web/etc/new",
        ]
        .iter()
        .map(|p| lab.join(p))
        .collect();
        session.cycle(&changed, &lab_engine::Silent).unwrap();
        let want = clean_manifests(&lab);
        let have = (
            lab.read(".lab/out/a.manifest"),
            lab.read(".lab/out/b.manifest"),
        );
        assert_eq!(have, want, "{what}: session");
    }
    session.persist().unwrap();
    drop(session);
    // and fresh processes (the state the session left, then each edit)
    for (what, edit) in &edits {
        edit(&lab);
        build(&lab);
        let want = clean_manifests(&lab);
        let have = (
            lab.read(".lab/out/a.manifest"),
            lab.read(".lab/out/b.manifest"),
        );
        assert_eq!(have, want, "{what}: fresh build");
    }
}
