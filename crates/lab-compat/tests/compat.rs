//! Make-style labs build unchanged: the fixture lab in `tests/compat-fixture/`
//! (every rule of docs/compat.md) renders
//! to exactly the snapshotted trees, and each change make misses is picked
//! up: after it, the incremental build equals a clean build.
//!
//! Git cannot store some of what the fixture needs (modes other than 644
//! and 755, empty directories, names some systems reject, symlinks to
//! absolute paths of the test machine), so [`fixture`] adds those.

use lab_engine::{BuildOptions, Reporter};
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
        // a secret `!` links point at: 0600 under /etc, 0644 under
        // /usr/local/opt after make's final mode fix-up
        .chmod("shared/secret", 0o600)
        .file("layers/web/etc/odd name:*?.txt", "odd\n")
        .symlink(
            "layers/web/etc/!external.conf",
            outside.path().join("external.conf").to_str().unwrap(),
        )
        // gathered facts, under their native names
        .file(
            ".lab/facts/db.json",
            r#"{"arch": "aarch64", "kernel": "6.1.0-18-amd64", "os_id": "debian", "os_version_id": "12", "nproc": 4}"#,
        );
    Fixture { lab, outside }
}

fn build_with(dir: &Path, rec: &Recorder) -> Vec<(String, Result<(), String>)> {
    let engine = lab_compat::open(dir).unwrap();
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
    let engine = lab_compat::open(f.lab.path()).unwrap();
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
            ("-", "-", "root", 22),
            ("web", "203.0.113.5", "admin", 2222),
            ("db", "db.example.org", "root", 22)
        ]
    );
    let layers: Vec<&str> = p.machines[1]
        .layers
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(layers, ["web", "monitoring"]);
    // CRLF line endings: the name keeps its `\r` (as in awk and make)
    let layers: Vec<&str> = p.machines[0]
        .layers
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(layers, ["-", "db\r", "db"]);
}

#[test]
fn fixture_trees() {
    let f = fixture();
    let rec = build(f.lab.path());
    let mut warnings = rec.warnings.lock().unwrap().clone();
    warnings.sort();
    assert_eq!(
        warnings,
        [
            "-: layer `db\\r` (listed at machines/-/usr/local/opt/initd/layers/-.txt:3:3) \
             does not exist; it contributes nothing (the layer list has CRLF line endings; \
             make reads the name with its `\\r` too)",
            "web: layer `monitoring` (listed at machines/web/usr/local/opt/initd/layers/web.txt:3:3) \
             does not exist; it contributes nothing"
        ]
    );
    for m in ["web", "db", "-"] {
        insta::assert_snapshot!(
            format!("compat_{}", if m == "-" { "dash" } else { m }),
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
    let engine = lab_compat::open(f.lab.path()).unwrap();
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
        r[1],
        (
            "web".to_string(),
            Err("`layers/web/etc/hostname` and `machines/web/etc/hostname` both produce `/etc/hostname`".to_string())
        )
    );
    assert_eq!(r[2], ("db".to_string(), Ok(())));
    assert_eq!(r[0], ("-".to_string(), Ok(())));
    // a template and a link-list line, too
    f.lab.remove("layers/web/etc/hostname").file(
        "machines/web/usr/local/opt/initd/links/more.txt",
        "/etc/greeting.txt /dev/null\n",
    );
    let r = build_with(f.lab.path(), &Recorder::default());
    assert_eq!(
        r[1].1,
        Err("`machines/web/etc/greeting.m4.txt` and `machines/web/usr/local/opt/initd/links/more.txt:1` both produce `/etc/greeting.txt`".to_string())
    );
    // and a file where another source needs a directory
    f.lab
        .remove("machines/web/usr/local/opt/initd/links/more.txt")
        .file("machines/web/etc/nginx", "not a directory\n");
    let r = build_with(f.lab.path(), &Recorder::default());
    let e = r[1].1.as_ref().unwrap_err();
    assert!(
        e.starts_with(
            "`machines/web/etc/nginx` makes `/etc/nginx` a file, but `layers/web/etc/nginx/"
        ),
        "{e}"
    );
}

// Each change GNU make misses (docs/compat.md, "What lab tracks that make
// misses"), one test each.

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
    let w = rec.warnings.lock().unwrap().clone();
    assert!(w.iter().all(|w| !w.starts_with("web:")), "{w:?}");
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
    // only the template that looked those facts up (`.iftoprc` reads
    // ENV_MACHINE alone)
    assert_eq!(ran(&rec), ["db: output `etc/db/db.conf`"]);
    // a fact that a template looked for and did not find is read too
    f.lab.file(
        "layers/_/root/.m4.iftoprc",
        "HEADER\nm4_ifdef(`ENV_IFTOP', `ENV_IFTOP', `dns-resolution: no')\n",
    );
    assert_incremental_equals_clean(&f);
    f.lab.file(
        ".facts/db.json",
        r#"{"ENV_ROLE": "replica", "ENV_PGVERSION": 17, "ENV_IFTOP": "dns-resolution: yes"}"#,
    );
    let rec = assert_incremental_equals_clean(&f);
    assert_eq!(ran(&rec), ["db: output `root/.iftoprc`"]);
    assert!(f
        .lab
        .read(".lab/out/db/root/.iftoprc")
        .ends_with("dns-resolution: yes\n"));
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
    let engine = lab_compat::open(f.lab.path()).unwrap();
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

// Issue 11: what real make-style labs contain. One test per class.

/// A make-style lab with one healthy machine `ok` (layer `base`, a
/// template) and nothing else.
fn messy() -> TestLab {
    let t = TestLab::new();
    t.file(
        "layers/_/usr/local/include/m4/p.m4",
        "m4_define(`HI', `hi $1')m4_dnl\n",
    )
    .file("layers/base/etc/motd.m4.txt", "HI(ENV_MACHINE)\n")
    .file("machines/ok/usr/local/opt/initd/layers/l.txt", "+ base\n");
    t
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn null_inventory_entries_read_as_empty() {
    let t = messy();
    t.file(
        "inventory.json",
        r#"{"-": null, "ok": {"host": "10.0.0.1", "user": "admin"}, "gone": null}"#,
    );
    let engine = lab_compat::open(t.path()).unwrap();
    let m: Vec<(&str, &str, &str)> = engine
        .project
        .machines
        .iter()
        .map(|m| (m.name.as_str(), m.host.as_str(), m.user.as_str()))
        .collect();
    assert_eq!(
        m,
        [
            ("-", "-", "root"),
            ("ok", "10.0.0.1", "admin"),
            ("gone", "gone", "root")
        ]
    );
    t.file("layers/_/etc/name.m4.txt", "ENV_MACHINE\n");
    build(t.path());
    // machines of the inventory without a directory get `layers/_`
    assert_eq!(t.read(".lab/out/-/etc/name.txt"), "-\n");
    assert_eq!(t.read(".lab/out/gone/etc/name.txt"), "gone\n");
}

#[test]
fn a_machine_and_a_layer_named_dash_and_other_odd_names() {
    let t = messy();
    t.file(
        "machines/-/usr/local/opt/initd/layers/l.txt",
        "+ -\n+ -x\n+ base\n",
    )
    .file("layers/-/etc/dash.m4.conf", "machine ENV_MACHINE\n")
    .file("layers/-x/etc/--help", "not an option\n")
    .file(
        "machines/with space/usr/local/opt/initd/layers/l.txt",
        "+ -\n",
    );
    let engine = lab_compat::open(t.path()).unwrap();
    let names: Vec<&str> = engine
        .project
        .machines
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(names, ["-", "ok", "with space"]);
    build(t.path());
    assert_eq!(t.read(".lab/out/-/etc/dash.conf"), "machine -\n");
    assert_eq!(t.read(".lab/out/-/etc/--help"), "not an option\n");
    assert_eq!(t.read(".lab/out/-/etc/motd.txt"), "hi -\n");
    assert_eq!(
        t.read(".lab/out/with space/etc/dash.conf"),
        "machine with space\n"
    );
    // `--machine -` selects it
    let engine = lab_compat::open(t.path()).unwrap();
    let r = engine
        .build(
            &BuildOptions {
                machines: vec!["-".into()],
                ..Default::default()
            },
            &Recorder::default(),
        )
        .unwrap();
    assert_eq!(r.machines.len(), 1);
    // what cannot be a directory name is still refused, at its line
    t.file(
        "machines/-/usr/local/opt/initd/layers/l.txt",
        "+ -\n+ ../x\n",
    );
    let r = build_with(t.path(), &Recorder::default());
    assert_eq!(r[0].1, Err("invalid layer name `../x`".to_string()));
}

#[test]
fn an_empty_fact_file_is_skipped() {
    let t = messy();
    t.file(".facts/ok.json", "").file(".facts/ok.env", "");
    build(t.path());
    assert_eq!(t.read(".lab/out/ok/etc/motd.txt"), "hi ok\n");
    // a fact file that is not empty is still checked
    t.file(".facts/ok.json", "{\"A\": }\n");
    let r = build_with(t.path(), &Recorder::default());
    assert!(
        r[0].1.as_ref().unwrap_err().starts_with("invalid JSON"),
        "{r:?}"
    );
}

#[test]
fn identical_sources_for_one_path_are_not_a_conflict() {
    let t = messy();
    t.file(
        "machines/ok/usr/local/opt/initd/layers/l.txt",
        "+ base\n+ more\n",
    )
    .file("layers/base/etc/shared.conf", "same\n")
    .chmod("layers/base/etc/shared.conf", 0o640)
    // a `!` link to that very file, at the same path
    .symlink("layers/more/etc/!shared.conf", "../../base/etc/shared.conf")
    // a plain symlink and a link-list line with the same target
    .symlink("layers/base/etc/l", "/dev/null")
    .file(
        "layers/more/usr/local/opt/initd/links/l.txt",
        "/etc/l /dev/null\n",
    );
    build(t.path());
    let out = t.join(".lab/out/ok/etc/shared.conf");
    assert_eq!(t.read(".lab/out/ok/etc/shared.conf"), "same\n");
    assert_eq!(mode_of(&out), 0o640);
    // sources that really differ are still an error naming both, also
    // when only the second one changed since the last build
    t.remove("layers/more/etc/!shared.conf")
        .file("layers/more/etc/other", "other\n")
        .symlink("layers/more/etc/!shared.conf", "other");
    let r = build_with(t.path(), &Recorder::default());
    assert_eq!(
        r[0].1,
        Err("`layers/base/etc/shared.conf` and `layers/more/etc/!shared.conf` both produce `/etc/shared.conf`".to_string())
    );
    // same bytes, other mode: differ
    t.file("layers/more/etc/other", "same\n");
    let r = build_with(t.path(), &Recorder::default());
    assert!(r[0].1.is_err(), "{r:?}");
    t.chmod("layers/more/etc/other", 0o640);
    build(t.path());
    t.file(
        "layers/more/usr/local/opt/initd/links/l.txt",
        "/etc/l /dev/zero\n",
    );
    let r = build_with(t.path(), &Recorder::default());
    assert_eq!(
        r[0].1,
        Err("`layers/base/etc/l` and `layers/more/usr/local/opt/initd/links/l.txt:1` both produce `/etc/l`".to_string())
    );
}

#[test]
fn make_s_final_mode_fix_up() {
    let t = messy();
    t.file("secrets/key", "k\n")
        .chmod("secrets/key", 0o600)
        .symlink(
            "layers/base/usr/local/opt/app/!key",
            "../../../../../../secrets/key",
        )
        .symlink("layers/base/etc/!key", "../../../secrets/key")
        .file(
            "layers/base/usr/local/lib/systemd/system/x.service",
            "[Unit]\n",
        )
        .chmod("layers/base/usr/local/lib/systemd/system/x.service", 0o700)
        .file("layers/base/usr/local/optional/key", "k\n")
        .chmod("layers/base/usr/local/optional/key", 0o600);
    build(t.path());
    let m = |p: &str| mode_of(&t.join(&format!(".lab/out/ok/{p}")));
    assert_eq!(m("usr/local/opt/app/key"), 0o644);
    assert_eq!(m("usr/local/lib/systemd/system/x.service"), 0o744);
    assert_eq!(m("etc/key"), 0o600);
    assert_eq!(m("usr/local/optional/key"), 0o600);
    let manifest = t.read(".lab/out/ok.manifest");
    assert!(manifest.contains("usr/local/opt/app/key"), "{manifest}");
}

#[test]
fn only_the_style_s_gathered_facts_reach_m4() {
    let t = messy();
    t.file(
        "layers/base/etc/cmdline.m4.txt",
        "--kernel ${KERNEL} on ENV_HOSTTYPE ENV_RACK\n",
    )
    .file(
        ".lab/facts/ok.json",
        r#"{"arch": "x86_64", "kernel": "6.1.0-18-amd64", "ENV_RACK": "b2"}"#,
    );
    build(t.path());
    assert_eq!(
        t.read(".lab/out/ok/etc/cmdline.txt"),
        "--kernel ${KERNEL} on x86_64 ENV_RACK\n"
    );
}

#[test]
fn one_bad_machine_does_not_stop_the_others() {
    let t = messy();
    t.file(
        "machines/badlist/usr/local/opt/initd/layers/l.txt",
        "+ base\n+ a/b\n",
    )
    .file(
        "machines/badfacts/usr/local/opt/initd/layers/l.txt",
        "+ base\n",
    )
    .file(".facts/badfacts.json", "{\"A\": 1,,}\n")
    .file(
        "machines/conflict/usr/local/opt/initd/layers/l.txt",
        "+ base\n",
    )
    .file("machines/conflict/etc/motd.txt", "mine\n")
    .file(
        "machines/badinv/usr/local/opt/initd/layers/l.txt",
        "+ base\n",
    )
    .file("inventory.json", r#"{"badinv": {"host": 5}, "ok": null}"#);
    let r = build_with(t.path(), &Recorder::default());
    let by: std::collections::HashMap<&str, &Result<(), String>> =
        r.iter().map(|(m, r)| (m.as_str(), r)).collect();
    assert_eq!(*by["ok"], Ok(()));
    assert_eq!(t.read(".lab/out/ok/etc/motd.txt"), "hi ok\n");
    assert_eq!(*by["badlist"], Err("invalid layer name `a/b`".to_string()));
    assert!(by["badinv"]
        .as_ref()
        .unwrap_err()
        .contains("invalid inventory entry for `badinv`"));
    assert!(by["badfacts"]
        .as_ref()
        .unwrap_err()
        .starts_with("invalid JSON"));
    assert!(by["conflict"]
        .as_ref()
        .unwrap_err()
        .contains("both produce `/etc/motd.txt`"));
    assert_eq!(r.len(), 5);
    // `--machine ok` builds it though others are broken
    std::fs::remove_dir_all(t.join(".lab")).unwrap();
    let engine = lab_compat::open(t.path()).unwrap();
    let rep = engine
        .build(
            &BuildOptions {
                machines: vec!["ok".into()],
                ..Default::default()
            },
            &Recorder::default(),
        )
        .unwrap();
    assert!(rep.machines[0].result.is_ok());
    assert_eq!(t.read(".lab/out/ok/etc/motd.txt"), "hi ok\n");
}

#[test]
fn a_crlf_layer_list_reads_as_make_reads_it() {
    let t = messy();
    // awk and make split fields at blanks only: the name keeps its `\r`
    t.file(
        "machines/ok/usr/local/opt/initd/layers/l.txt",
        "+ base # a comment after the entry\r\n+ extra\r\n+ base\n",
    )
    .file("layers/extra/etc/extra", "x\n");
    let rec = build(t.path());
    assert!(!t.join(".lab/out/ok/etc/extra").exists());
    assert_eq!(t.read(".lab/out/ok/etc/motd.txt"), "hi ok\n");
    let w = rec.warnings.lock().unwrap().clone();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("ok: layer `extra\\r` (listed at ") && w[0].contains("CRLF"),
        "{w:?}"
    );
}
