//! Every class of bad input gets one clear message: what is wrong, where
//! (`path:line:col`, the line, a caret), a hint when the fix is known, and a
//! non-zero exit. The exact wording is pinned here. A failing machine keeps
//! its previous outputs; the other machines still build.

use lab_testkit::{run, tree_listing, TestLab};

/// Two machines sharing layer `web`; `a` also has layer `extra`.
fn two_machines() -> TestLab {
    let t = TestLab::new();
    t.file(
        "lab.toml",
        "[facts]\ndomain = \"example.org\"\n\n[machines.a]\nlayers = [\"web\", \"extra\"]\n\n[machines.b]\nlayers = [\"web\"]\n",
    )
    .file("layers/web/etc/site.j2", "server {{ domain }};\n")
    .file("layers/extra/etc/extra.j2", "fine\n");
    let (code, _, err) = run(&t, &["build", "-q"]);
    assert_eq!(code, 0, "{err}");
    t
}

#[test]
fn bad_toml() {
    let t = TestLab::new();
    t.file("lab.toml", "[machines.a]\nlayers = [\"web\"\nport = 22\n");
    let (code, out, err) = run(&t, &["build"]);
    assert_eq!(code, 2);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "error: missing comma between array elements, expected `,`\n \
         --> lab.toml:3:1\n  \
         |\n\
         3 | port = 22\n  \
         | ^\n"
    );
}

#[test]
fn unknown_field_in_lab_toml() {
    let t = TestLab::new();
    t.file("lab.toml", "[machines.a]\nhots = \"10.0.0.1\"\n");
    let (code, _, err) = run(&t, &["build"]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("error: unknown field `hots`, expected one of `host`, "),
        "{err}"
    );
    assert!(err.contains(" --> lab.toml:2:1\n"), "{err}");
}

#[test]
fn template_syntax_error() {
    let t = two_machines();
    let before = tree_listing(&t.join(".lab/out/a"));
    t.file(
        "layers/extra/etc/extra.j2",
        "line one\n{% if domain %}\nno endif\n",
    );
    let (code, out, err) = run(&t, &["build"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: machine `a`: syntax error: unexpected end of input, expected end of block\n \
         --> layers/extra/etc/extra.j2:3:1\n  \
         |\n\
         3 | no endif\n  \
         | ^^^^^^^^\n\
         error: 1 machine failed: `a`\n"
    );
    assert!(out.contains("b: up to date\n"), "{out}");
    assert_eq!(
        tree_listing(&t.join(".lab/out/a")),
        before,
        "a's outputs untouched"
    );
}

#[test]
fn undefined_fact() {
    let t = two_machines();
    let before = tree_listing(&t.join(".lab/out/a"));
    t.file("layers/web/etc/site.j2", "server {{ domian }};\n");
    t.file("layers/web/etc/other", "b still builds\n");
    let (code, out, err) = run(&t, &["build"]);
    assert_eq!(code, 1);
    let expected = |m: &str| {
        format!(
            "error: machine `{m}`: undefined variable `domian`\n \
             --> layers/web/etc/site.j2:1:11\n  \
             |\n\
             1 | server {{{{ domian }}}};\n  \
             |           ^^^^^^\n  \
             hint: did you mean `domain`? or define `domian` under `[facts]` or the machine's `facts` in lab.toml, \
             or test it with `{{% if domian is defined %}}`\n"
        )
    };
    assert_eq!(
        err,
        format!(
            "{}{}error: 2 machines failed: `a`, `b`\n",
            expected("a"),
            expected("b")
        )
    );
    assert!(out.contains("built 0 machines"), "{out}");
    assert_eq!(tree_listing(&t.join(".lab/out/a")), before);
    assert!(
        !t.join(".lab/out/b/etc/other").exists(),
        "a failing machine writes nothing"
    );
}

#[test]
fn unknown_layer() {
    let t = two_machines();
    t.file(
        "lab.toml",
        "[facts]\ndomain = \"example.org\"\n\n[machines.a]\nlayers = [\"web\", \"extar\"]\n\n[machines.b]\nlayers = [\"web\"]\n",
    );
    t.file("layers/web/etc/new", "new\n");
    let (code, _, err) = run(&t, &["build"]);
    // lab.toml is wrong: exit 2, as the README says of project errors
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "error: unknown layer `extar` for machine `a`\n \
         --> lab.toml:5:18\n  \
         |\n\
         5 | layers = [\"web\", \"extar\"]\n  \
         |                  ^^^^^^^\n  \
         hint: did you mean `extra`? (or create `layers/extar/`)\n\
         error: 1 machine failed: `a`\n"
    );
    assert_eq!(t.read(".lab/out/b/etc/new"), "new\n", "b still builds");
}

#[test]
fn unknown_machine() {
    let t = two_machines();
    let (code, out, err) = run(&t, &["build", "--machine", "c"]);
    assert_eq!(code, 2);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "error: unknown machine `c`\n  hint: machines in lab.toml: `a`, `b`\n"
    );
}

#[test]
fn include_cycle() {
    let t = two_machines();
    t.file(
        "layers/web/_partials/x.j2",
        "{% include '_partials/y.j2' %}\n",
    )
    .file(
        "layers/web/_partials/y.j2",
        "y\n{% include \"_partials/x.j2\" %}\n",
    )
    .file("layers/web/etc/site.j2", "{% include '_partials/x.j2' %}\n");
    let (code, _, err) = run(&t, &["build", "-m", "b"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: machine `b`: include cycle: _partials/x.j2 -> _partials/y.j2 -> _partials/x.j2\n \
         --> layers/web/_partials/y.j2:2:13\n  \
         |\n\
         2 | {% include \"_partials/x.j2\" %}\n  \
         |             ^^^^^^^^^^^^^^\n  \
         hint: a template may not include itself, directly or through others\n\
         error: 1 machine failed: `b`\n"
    );
}

#[test]
fn unreadable_file() {
    // Root reads anything, so run lab as `nobody` when we are root.
    let t = two_machines();
    t.file("layers/web/etc/secret", "s3cret\n")
        .chmod("layers/web/etc/secret", 0o000);
    let (code, _, err) = if unsafe { libc_geteuid() } == 0 {
        make_world_writable(t.path());
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(assert_cmd::cargo::cargo_bin("lab"))
            .args(["build", "-m", "b"])
            .current_dir(t.path())
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    } else {
        run(&t, &["build", "-m", "b"])
    };
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err,
        "error: machine `b`: layers/web/etc/secret: Permission denied (os error 13)\n\
         error: 1 machine failed: `b`\n"
    );
}

#[test]
fn two_sources_for_one_path_in_one_layer() {
    let t = two_machines();
    t.file("layers/web/etc/site", "plain\n");
    let (code, _, err) = run(&t, &["build", "-m", "b"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: machine `b`: `layers/web/etc/site` and `layers/web/etc/site.j2` both produce `/etc/site`\n  \
         hint: a layer may hold one of `NAME`, `NAME.j2`, `NAME.age`, `NAME.j2.age`; remove the others\n\
         error: 1 machine failed: `b`\n"
    );
}

#[test]
fn no_lab_toml() {
    let t = TestLab::new();
    let (code, _, err) = run(&t, &["build"]);
    assert_eq!(code, 2);
    assert!(err.starts_with("error: no `lab.toml` in `"), "{err}");
    assert!(err.ends_with("` or any parent directory\n  hint: run lab inside a project, or pass `--project DIR`\n"), "{err}");
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn make_world_writable(root: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for e in walkdir::WalkDir::new(root) {
        let e = e.unwrap();
        if e.file_type().is_dir() {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        } else if e.file_type().is_file() && e.path().file_name().unwrap() != "secret" {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o666)).unwrap();
        }
    }
}

/// A local machine's root that would make a sync write into the project,
/// into lab's own outputs or into this host is refused where it is written,
/// and nothing is synced. (`root = ""` once synced into the project, `/`
/// into this host's own file system.)
#[test]
fn dangerous_local_roots_are_refused_where_they_are_written() {
    for (root, message) in [
        ("", "`root` is empty"),
        (".", "is the project directory itself"),
        (
            ".lab/out/dev",
            "is inside `.lab/`, lab's own state and outputs",
        ),
        ("/", "is outside the project (it is this host's own `/`)"),
        ("..", "contains the project"),
        ("afile", "`root = \"afile\"` is a file, not a directory"),
        ("dangling", "which does not exist"),
    ] {
        let t = TestLab::new();
        t.file(
            "lab.toml",
            &format!("[machines.dev]\ntransport = \"local\"\nroot = \"{root}\"\n"),
        )
        .file("machines/dev/etc/x", "x\n")
        .file("afile", "not a directory\n");
        std::os::unix::fs::symlink(t.path().join("nowhere"), t.path().join("dangling")).unwrap();
        let before = tree_listing(t.path());
        for cmd in [&["build"][..], &["sync", "-m", "dev"]] {
            let (code, _, err) = run(&t, cmd);
            assert_eq!(code, 2, "root {root:?}, {cmd:?}: {err}");
            assert!(err.contains(message), "root {root:?}: {err}");
            assert!(err.contains("--> lab.toml:3:8"), "root {root:?}: {err}");
        }
        assert_eq!(
            tree_listing(t.path()),
            before,
            "root {root:?}: nothing written"
        );
    }
}

/// Outside the project is fine when lab.toml says so.
#[test]
fn a_root_outside_the_project_needs_saying_so() {
    let outside = tempfile::tempdir().unwrap();
    let t = TestLab::new();
    let toml = |extra: &str| {
        format!(
            "[machines.dev]\ntransport = \"local\"\nroot = \"{}\"\n{extra}",
            outside.path().join("m").display()
        )
    };
    t.file("lab.toml", &toml(""))
        .file("machines/dev/etc/x", "x\n");
    let (code, _, err) = run(&t, &["sync", "-m", "dev"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("hint: a sync writes and deletes there; if that is meant, add `root_outside_project = true`"), "{err}");
    assert!(!outside.path().join("m").exists());
    t.file("lab.toml", &toml("root_outside_project = true\n"));
    let (code, _, err) = run(&t, &["sync", "-m", "dev"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(outside.path().join("m/etc/x")).unwrap(),
        "x\n"
    );
}

/// A source tree 1,500 directories deep once overflowed the stack (exit
/// 134). It builds, and syncs to a local machine.
#[test]
fn a_very_deep_source_tree_builds_and_syncs() {
    let root = tempfile::tempdir().unwrap();
    let t = TestLab::new();
    t.file(
        "lab.toml",
        &format!(
            "[machines.dev]\ntransport = \"local\"\nroot = \"{}\"\nroot_outside_project = true\n",
            root.path().display()
        ),
    );
    let deep = "d/".repeat(1500);
    t.file(&format!("machines/dev/{deep}leaf"), "bottom\n");
    let (code, _, err) = run(&t, &["build", "-q"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(t.path().join(format!(".lab/out/dev/{deep}leaf"))).unwrap(),
        "bottom\n"
    );
    let (code, _, err) = run(&t, &["sync", "-m", "dev"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(root.path().join(format!("{deep}leaf"))).unwrap(),
        "bottom\n"
    );
}

/// `..j2` and `...j2` would produce `.` and `..`: refused, naming the
/// source; the other machine still builds.
#[test]
fn templates_whose_output_would_be_dot_or_dotdot() {
    for (name, out) in [("..j2", "."), ("...j2", ".."), ("etc/..j2", "etc/.")] {
        let t = TestLab::new();
        t.file("lab.toml", "[machines.a]\n[machines.b]\n")
            .file(&format!("machines/a/{name}"), "x\n")
            .file("machines/b/etc/ok", "ok\n");
        let (code, _, err) = run(&t, &["build"]);
        assert_eq!(code, 1, "{name}: {err}");
        assert!(
            err.contains(&format!(
                "`machines/a/{name}` would produce `/{out}`, which names a directory itself, not a file"
            )),
            "{name}: {err}"
        );
        assert!(err.contains("hint: rename the template"), "{err}");
        assert!(
            t.path().join(".lab/out/b/etc/ok").exists(),
            "{name}: b builds"
        );
    }
}
