//! Make-style labs build unchanged: the fixture lab in `tests/compat-fixture/`
//! (every rule of DESIGN.md's "Compatibility with make-based labs") renders
//! to exactly the snapshotted trees, and each change make misses is picked
//! up: after it, the incremental build equals a clean build.
//!
//! Git cannot store some of what the fixture needs (modes other than 644
//! and 755, empty directories, names some systems reject, symlinks to
//! absolute paths of the test machine), so [`fixture`] adds those.

use lab_engine::{BuildOptions, Engine, Reporter};
use lab_graph::{Key, Reason};
use lab_testkit::{tree_listing, TestLab};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Records warnings and the nodes that ran.
#[derive(Default)]
struct Recorder {
    warnings: Mutex<Vec<String>>,
    ran: Mutex<Vec<String>>,
}

impl Reporter for Recorder {
    fn node_ran(&self, machine: &str, key: &Key, _reason: &Reason) {
        self.ran.lock().unwrap().push(format!("{machine}: {key}"));
    }
    fn warning(&self, machine: Option<&str>, message: &str) {
        self.warnings
            .lock()
            .unwrap()
            .push(format!("{}: {message}", machine.unwrap_or("-")));
    }
}

/// A copy of the fixture, plus what git cannot hold. `outside` is a
/// directory outside the project that a `!` link points into.
struct Fixture {
    lab: TestLab,
    outside: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let lab = TestLab::new();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(repo().join("tests/compat-fixture/."))
        .arg(lab.path())
        .status()
        .unwrap();
    assert!(status.success());
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("external.conf"), "external v1\n").unwrap();
    lab.file("layers/web/etc/secret.key", "s3cret\n")
        .chmod("layers/web/etc/secret.key", 0o600)
        .file("layers/web/etc/group-writable", "g+w\n")
        .chmod("layers/web/etc/group-writable", 0o664)
        .file("layers/web/usr/local/bin/setuid-tool", "#!/bin/sh\n")
        .chmod("layers/web/usr/local/bin/setuid-tool", 0o4775)
        .dir("layers/web/var/empty")
        .file("layers/web/etc/odd name:*?.txt", "odd\n")
        .symlink(
            "layers/web/etc/!external.conf",
            outside.path().join("external.conf").to_str().unwrap(),
        )
        // gathered facts, under their native names
        .file(
            ".lab/facts/db.json",
            r#"{"arch": "aarch64", "os_id": "debian", "os_version_id": "12", "nproc": 4}"#,
        );
    Fixture { lab, outside }
}

fn build_with(dir: &Path, rec: &Recorder) -> Vec<(String, Result<(), String>)> {
    let engine = Engine::open(dir).unwrap();
    let report = engine.build(&BuildOptions::default(), rec).unwrap();
    report
        .machines
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                m.result.as_ref().map(|_| ()).map_err(|e| {
                    e.iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                }),
            )
        })
        .collect()
}

fn build(dir: &Path) -> Recorder {
    let rec = Recorder::default();
    for (m, r) in build_with(dir, &rec) {
        if let Err(e) = r {
            panic!("machine {m} failed: {e}");
        }
    }
    rec
}

fn outputs(dir: &Path) -> String {
    let mut s = tree_listing(&dir.join(".lab/out"));
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(dir.join(".lab/out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "manifest"))
        .collect();
    manifests.sort();
    for m in manifests {
        s.push_str(&std::fs::read_to_string(m).unwrap());
    }
    s
}

/// Build incrementally, then clean from a copy, and compare.
fn assert_incremental_equals_clean(f: &Fixture) -> Recorder {
    let rec = build(f.lab.path());
    let clean = f.lab.copy_sources();
    std::fs::create_dir_all(clean.join(".lab/facts")).unwrap();
    std::fs::copy(
        f.lab.join(".lab/facts/db.json"),
        clean.join(".lab/facts/db.json"),
    )
    .unwrap();
    build(clean.path());
    let (a, b) = (outputs(f.lab.path()), outputs(clean.path()));
    assert!(a == b, "--- incremental\n{a}\n--- clean\n{b}");
    rec
}

fn ran(rec: &Recorder) -> Vec<String> {
    let mut v = rec.ran.lock().unwrap().clone();
    v.sort();
    v
}

#[test]
fn the_fixture_is_detected_as_a_make_style_lab() {
    let f = fixture();
    let engine = Engine::open(f.lab.path()).unwrap();
    let p = &engine.project;
    assert!(p.compat.is_some());
    let m: Vec<(&str, &str, &str, u16)> = p
        .machines
        .iter()
        .map(|m| (m.name.as_str(), m.host.as_str(), m.user.as_str(), m.port))
        .collect();
    assert_eq!(
        m,
        [
            ("web", "203.0.113.5", "admin", 2222),
            ("db", "db.example.org", "root", 22)
        ]
    );
    let layers: Vec<&str> = p.machines[0]
        .layers
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(layers, ["web", "monitoring"]);
}

#[test]
fn fixture_trees() {
    let f = fixture();
    let rec = build(f.lab.path());
    assert_eq!(
        *rec.warnings.lock().unwrap(),
        ["web: layer `monitoring` (listed at machines/web/usr/local/opt/initd/layers/web.txt:3:3) \
          does not exist; it contributes nothing"]
    );
    for m in ["web", "db"] {
        insta::assert_snapshot!(
            format!("compat_{m}"),
            tree_listing(&f.lab.join(".lab/out").join(m))
        );
    }
    insta::assert_snapshot!(
        "compat_web_manifest",
        std::fs::read_to_string(f.lab.join(".lab/out/web.manifest")).unwrap()
    );
    // A second build has nothing to do and reads nothing.
    let rec = build(f.lab.path());
    assert_eq!(ran(&rec), Vec::<String>::new());
    // `--out`: the same tree somewhere else, to compare with make's.
    let engine = Engine::open(f.lab.path()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let p = engine.export("web", out.path()).unwrap();
    assert_eq!(tree_listing(&p), tree_listing(&f.lab.join(".lab/out/web")));
    // again: lab replaces its own export, but never a tree it did not write
    engine.export("web", out.path()).unwrap();
    std::fs::create_dir(out.path().join("db")).unwrap();
    let e = engine.export("db", out.path()).unwrap_err();
    assert!(
        e.to_string()
            .contains("was not written by `lab build --out`"),
        "{e}"
    );
}

#[test]
fn two_sources_for_one_path_is_an_error_naming_both() {
    let f = fixture();
    f.lab.file("layers/web/etc/hostname", "from the layer\n");
    let r = build_with(f.lab.path(), &Recorder::default());
    assert_eq!(
        r[0],
        (
            "web".to_string(),
            Err("`layers/web/etc/hostname` and `machines/web/etc/hostname` both produce `/etc/hostname`".to_string())
        )
    );
    assert_eq!(r[1], ("db".to_string(), Ok(())));
    // a template and a link-list line, too
    f.lab.remove("layers/web/etc/hostname").file(
        "machines/web/usr/local/opt/initd/links/more.txt",
        "/etc/greeting.txt /dev/null\n",
    );
    let r = build_with(f.lab.path(), &Recorder::default());
    assert_eq!(
        r[0].1,
        Err("`machines/web/etc/greeting.m4.txt` and `machines/web/usr/local/opt/initd/links/more.txt:1` both produce `/etc/greeting.txt`".to_string())
    );
    // and a file where another source needs a directory
    f.lab
        .remove("machines/web/usr/local/opt/initd/links/more.txt")
        .file("machines/web/etc/nginx", "not a directory\n");
    let r = build_with(f.lab.path(), &Recorder::default());
    let e = r[0].1.as_ref().unwrap_err();
    assert!(
        e.starts_with(
            "`machines/web/etc/nginx` makes `/etc/nginx` a file, but `layers/web/etc/nginx/"
        ),
        "{e}"
    );
}

// Each change GNU make misses (DESIGN.md: "Known make defects lab must
// not copy"), one test each.

#[test]
fn a_deleted_source_disappears() {
    let f = fixture();
    build(f.lab.path());
    f.lab.remove("layers/web/etc/nginx/conf.d/plain.conf");
    assert_incremental_equals_clean(&f);
    assert!(!f.lab.join(".lab/out/web/etc/nginx/conf.d").exists());
}

#[test]
fn a_renamed_source_moves() {
    let f = fixture();
    build(f.lab.path());
    std::fs::rename(
        f.lab.join("layers/web/etc/ssl/README"),
        f.lab.join("layers/web/etc/ssl/README.md"),
    )
    .unwrap();
    // and a template renamed into a plain file
    std::fs::rename(
        f.lab.join("machines/web/etc/greeting.m4.txt"),
        f.lab.join("machines/web/etc/greeting.txt"),
    )
    .unwrap();
    assert_incremental_equals_clean(&f);
    assert_eq!(
        f.lab.read(".lab/out/web/etc/greeting.txt"),
        "ENV_GREETING (ENV_ROLE)\n"
    );
}

#[test]
fn a_changed_link_target_is_picked_up() {
    let f = fixture();
    build(f.lab.path());
    f.lab.file(
        "layers/_/usr/local/opt/initd/links/base.txt",
        "/etc/localtime /usr/share/zoneinfo/Europe/Paris\n",
    );
    f.lab.symlink(
        "layers/web/etc/plain-link.conf",
        "nginx/sites-available/default",
    );
    let rec = assert_incremental_equals_clean(&f);
    assert_eq!(
        std::fs::read_link(f.lab.join(".lab/out/db/etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/Europe/Paris")
    );
    assert!(ran(&rec).contains(&"web: output `etc/plain-link.conf`".to_string()));
    // a removed link-list line removes the link
    f.lab
        .file("layers/_/usr/local/opt/initd/links/base.txt", "# none\n");
    assert_incremental_equals_clean(&f);
    assert!(!f.lab.join(".lab/out/db/etc/localtime").exists());
}

#[test]
fn a_mode_only_change_is_picked_up() {
    let f = fixture();
    build(f.lab.path());
    f.lab.chmod("layers/web/etc/nginx/conf.d/plain.conf", 0o755);
    let rec = assert_incremental_equals_clean(&f);
    assert_eq!(ran(&rec), ["web: output `etc/nginx/conf.d/plain.conf`"]);
    let listing = tree_listing(&f.lab.join(".lab/out/web/etc/nginx/conf.d"));
    assert_eq!(listing, "plain.conf 0755 \"gzip on;\\n\"\n");
}

#[test]
fn a_changed_m4_include_rerenders_its_template() {
    let f = fixture();
    build(f.lab.path());
    f.lab.file(
        "layers/web/etc/nginx/upstream.inc",
        "upstream app { server app2.ENV_DOMAIN; }\n",
    );
    let rec = assert_incremental_equals_clean(&f);
    assert_eq!(
        ran(&rec),
        [
            "web: output `etc/nginx/nginx.conf`",
            "web: output `etc/nginx/upstream.inc`",
            "web: output `srv/!data/current`",
        ]
    );
    // an `m4_sinclude` of a file that did not exist: creating it counts
    f.lab
        .file("layers/web/etc/nginx/local.inc", "local ENV_ROLE\n");
    assert_incremental_equals_clean(&f);
    assert!(f
        .lab
        .read(".lab/out/web/etc/nginx/nginx.conf")
        .ends_with("local frontend\n"));
    // a prelude
    f.lab.file(
        "layers/_/usr/local/include/m4/prelude.m4",
        "m4_define(`HEADER', `;; new header')m4_dnl\n",
    );
    assert_incremental_equals_clean(&f);
    assert!(f
        .lab
        .read(".lab/out/db/root/.iftoprc")
        .starts_with(";; new header\n"));
}

#[test]
fn a_changed_bang_link_target_is_picked_up() {
    let f = fixture();
    build(f.lab.path());
    // inside the project, outside the layers
    f.lab.file("shared/resolv.conf", "nameserver 192.0.2.1\n");
    // outside the project
    std::fs::write(f.outside.path().join("external.conf"), "external v2\n").unwrap();
    let rec = assert_incremental_equals_clean(&f);
    assert_eq!(
        ran(&rec),
        [
            "web: output `etc/external.conf`",
            "web: output `etc/resolv.conf`"
        ]
    );
    assert_eq!(
        f.lab.read(".lab/out/web/etc/external.conf"),
        "external v2\n"
    );
    // a mode change of the target alone
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        f.outside.path().join("external.conf"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let rec = build(f.lab.path());
    assert_eq!(ran(&rec), ["web: output `etc/external.conf`"]);
}

#[test]
fn a_layer_added_or_removed_by_a_plus_line() {
    let f = fixture();
    build(f.lab.path());
    f.lab.file(
        "machines/db/usr/local/opt/initd/layers/db.txt",
        "+ db\n+ web\n",
    );
    assert_incremental_equals_clean(&f);
    assert!(f.lab.join(".lab/out/db/etc/nginx/nginx.conf").exists());
    f.lab.file(
        "machines/db/usr/local/opt/initd/layers/db.txt",
        "+ db\n# + web\n",
    );
    assert_incremental_equals_clean(&f);
    assert!(!f.lab.join(".lab/out/db/etc/nginx").exists());
    // the missing layer appears
    f.lab
        .file("layers/monitoring/etc/monit.conf", "check ENV_MACHINE\n");
    let rec = assert_incremental_equals_clean(&f);
    assert!(rec.warnings.lock().unwrap().is_empty());
    assert!(f.lab.join(".lab/out/web/etc/monit.conf").exists());
}

#[test]
fn fact_changes_rerender_templates_only() {
    let f = fixture();
    build(f.lab.path());
    f.lab.file(
        ".facts/db.json",
        r#"{"ENV_ROLE": "replica", "ENV_PGVERSION": 17}"#,
    );
    let rec = assert_incremental_equals_clean(&f);
    assert_eq!(
        ran(&rec),
        ["db: output `etc/db/db.conf`", "db: output `root/.iftoprc`"]
    );
    assert!(f
        .lab
        .read(".lab/out/db/etc/db/db.conf")
        .contains("version 17"));
    // gathered facts, too
    f.lab.file(".lab/facts/db.json", r#"{"arch": "riscv64"}"#);
    assert_incremental_equals_clean(&f);
    assert!(f
        .lab
        .read(".lab/out/db/etc/db/db.conf")
        .contains("on riscv64 (ENV_ID"));
}

#[test]
fn a_watch_session_sees_fact_files_layer_lists_and_followed_files() {
    let f = fixture();
    let engine = Engine::open(f.lab.path()).unwrap();
    let (mut session, _) = lab_engine::Session::start(engine, &[], &Recorder::default()).unwrap();
    // paths outside layers/ and machines/ only
    f.lab
        .file(".facts/web.env", "ENV_ROLE='backend'\n")
        .file("shared/resolv.conf", "nameserver 192.0.2.99\n");
    let paths = [
        f.lab.join(".facts/web.env"),
        f.lab.join("shared/resolv.conf"),
    ];
    session.cycle(&paths, &Recorder::default()).unwrap();
    assert_eq!(
        f.lab.read(".lab/out/web/etc/greeting.txt"),
        "hello from web (backend)\n"
    );
    // a layer list: the machine's layers are read again
    f.lab.file(
        "machines/db/usr/local/opt/initd/layers/db.txt",
        "+ db\n+ web\n",
    );
    let paths = [f.lab.join("machines/db/usr/local/opt/initd/layers/db.txt")];
    session.cycle(&paths, &Recorder::default()).unwrap();
    session.persist().unwrap();
    drop(session);
    assert_eq!(
        f.lab.read(".lab/out/web/etc/greeting.txt"),
        "hello from web (backend)\n"
    );
    assert!(f.lab.join(".lab/out/db/etc/nginx/nginx.conf").exists());
    assert_eq!(
        f.lab.read(".lab/out/web/etc/resolv.conf"),
        "nameserver 192.0.2.99\n"
    );
    assert_incremental_equals_clean(&f);
}
