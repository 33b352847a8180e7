//! The `lab` command on make-style labs: detection without lab.toml, the
//! missing-layer warning, the messages of the errors only this style has
//! (two sources for one path, no m4), `--out`, `lab facts --local`, and
//! `[compat]` in lab.toml.

use lab_testkit::{lab, run, tree_listing, TestLab};

/// A small make-style lab: no lab.toml, two machines.
fn small() -> TestLab {
    let t = TestLab::new();
    t.file(
        "layers/_/usr/local/include/m4/p.m4",
        "m4_define(`HI', `hi $1')m4_dnl\n",
    )
    .file("layers/_/etc/motd.m4.txt", "HI(ENV_MACHINE) ENV_ROLE\n")
    .file("layers/web/etc/web.conf", "web\n")
    .file(".facts/example.env", "ENV_ROLE=none\n")
    .file(
        "machines/a/usr/local/opt/initd/layers/l.txt",
        "+ web\n+ nope\n",
    )
    .file("machines/b/usr/local/opt/initd/layers/l.txt", "# nothing\n");
    t
}

#[test]
fn builds_without_lab_toml_and_warns_about_a_missing_layer() {
    let t = small();
    let (code, out, err) = run(&t, &["build"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        err,
        "warning: machine `a`: layer `nope` (listed at machines/a/usr/local/opt/initd/layers/l.txt:2:3) \
         does not exist; it contributes nothing\n"
    );
    assert!(out.starts_with("a: 1 rendered, "), "{out}");
    assert_eq!(t.read(".lab/out/a/etc/motd.txt"), "hi a none\n");
    assert_eq!(t.read(".lab/out/b/etc/motd.txt"), "hi b none\n");
    let (code, out, _) = run(&t, &["build"]);
    assert_eq!(code, 0);
    assert!(out.contains("a: up to date\nb: up to date\n"), "{out}");
}

#[test]
fn two_sources_for_one_path() {
    let t = small();
    t.file("machines/a/etc/web.conf", "mine\n");
    let (code, _, err) = run(&t, &["build", "-q"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: machine `a`: `layers/web/etc/web.conf` and `machines/a/etc/web.conf` both produce `/etc/web.conf`\n  \
         hint: make's result would depend on the order it copied them in; remove or rename one\n\
         error: 1 machine failed: `a`\n"
    );
}

#[test]
fn m4_missing_is_a_clear_error() {
    let t = small();
    let out = lab(&t, &["build", "-q", "-m", "b"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "error: machine `b`: GNU m4 is not installed (no `m4` on PATH); make-style templates need it\n  \
         hint: install it: `apt-get install m4` (or `dnf install m4`)\n\
         error: 1 machine failed: `b`\n"
    );
}

#[test]
fn m4_errors_point_at_the_template_line() {
    let t = small();
    t.file(
        "layers/_/etc/bad.m4.conf",
        "fine\nm4_include(`nowhere.m4')\n",
    );
    let (code, _, err) = run(&t, &["build", "-q", "-m", "b"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: machine `b`: m4: cannot open `nowhere.m4': No such file or directory\n \
         --> layers/_/etc/bad.m4.conf:2:1\n  \
         |\n\
         2 | m4_include(`nowhere.m4')\n  \
         | ^^^^^^^^^^^^^^^^^^^^^^^^\n\
         error: 1 machine failed: `b`\n"
    );
}

#[test]
fn out_copies_the_trees() {
    let t = small();
    let (code, out, err) = run(&t, &["build", "--out", "cmp"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("a: copied to cmp/a\n"), "{out}");
    assert_eq!(
        tree_listing(&t.join("cmp/a")),
        tree_listing(&t.join(".lab/out/a"))
    );
    assert_eq!(
        tree_listing(&t.join("cmp/b")),
        tree_listing(&t.join(".lab/out/b"))
    );
}

#[test]
fn facts_local_caches_and_prints_make_names() {
    let t = small();
    let (code, out, err) = run(&t, &["facts", "--machine", "a", "--local"]);
    assert_eq!(code, 0, "{err}");
    let keys: Vec<&str> = out.lines().map(|l| l.split('=').next().unwrap()).collect();
    for k in [
        "ENV_HOSTTYPE",
        "ENV_OSTYPE",
        "ENV_NPROC",
        "ENV_MEMBYTES",
        "ENV_HOSTNAME",
        "ENV_HOME",
        "ENV_ID",
        "ENV_VERSION_ID",
        "ENV_VERSION_CODENAME",
    ] {
        assert!(keys.contains(&k), "{k} missing in {out}");
    }
    assert_eq!(err, "saved in .lab/facts/a.json\n");
    let cached: serde_json::Value = serde_json::from_str(&t.read(".lab/facts/a.json")).unwrap();
    assert!(cached["arch"].is_string());
    // the templates see them
    t.file("layers/_/etc/arch.m4.txt", "ENV_HOSTTYPE\n");
    let (code, _, err) = run(&t, &["build", "-q", "-m", "a"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        t.read(".lab/out/a/etc/arch.txt"),
        format!("{}\n", cached["arch"].as_str().unwrap())
    );
}

#[test]
fn lab_toml_opts_in_and_overrides_the_defaults() {
    let t = TestLab::new();
    t.file(
        "lab.toml",
        r#"
[compat]
style = "make"
preludes = ["m4/*.m4"]
shared_facts = ["facts/common.env"]

[[compat.copy]]
from = "keys/admin.pub"
to = "/root/.ssh/authorized_keys"
machines = ["a"]

[machines.a]
host = "10.0.0.1"
"#,
    )
    .file("m4/x.m4", "m4_define(`X', `ex')m4_dnl\n")
    .file("facts/common.env", "ENV_K='v'\n")
    .file("keys/admin.pub", "ssh-ed25519 AAAA admin\n")
    .file("layers/_/etc/t.m4.conf", "X ENV_K\n")
    .dir("machines/a");
    let (code, _, err) = run(&t, &["build", "-q"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        tree_listing(&t.join(".lab/out/a")),
        "etc/ 0755\n\
         etc/t.conf 0644 \"ex v\\n\"\n\
         root/ 0755\n\
         root/.ssh/ 0755\n\
         root/.ssh/authorized_keys 0644 \"ssh-ed25519 AAAA admin\\n\"\n"
    );
    // layers belong in layer lists in this style
    t.file(
        "lab.toml",
        "[compat]\nstyle = \"make\"\n\n[machines.a]\nlayers = [\"web\"]\n",
    );
    let (code, _, err) = run(&t, &["build"]);
    assert_eq!(code, 2);
    assert!(
        err.starts_with("error: a make-style project lists layers in `machines/NAME/usr/local/opt/initd/layers/*.txt`\n"),
        "{err}"
    );
}

#[test]
fn show_names_the_source_and_the_files_m4_read() {
    let t = small();
    let (code, out, err) = run(&t, &["show", "-m", "a", "/etc/motd.txt"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "/etc/motd.txt on a (file 0644)\n  \
         source: layers/_/etc/motd.m4.txt (template)\n  \
         includes: layers/_/usr/local/include/m4/p.m4\n  \
         reads: ENV_MACHINE = \"a\"\n  \
         reads: ENV_ROLE = \"none\"\n\
         ---\n\
         hi a none\n"
    );
    let (code, out, _) = run(&t, &["show", "-m", "a", "/etc"]);
    assert_eq!((code, out.as_str()), (0, "/etc on a (dir 0755)\n"));
}

#[test]
fn one_broken_machine_fails_alone_and_odd_names_are_arguments() {
    let t = small();
    t.file("inventory.json", r#"{"-": null}"#)
        .file("machines/-/usr/local/opt/initd/layers/l.txt", "+ web\n")
        .file("machines/bad/usr/local/opt/initd/layers/l.txt", "+ ..\n")
        .file("machines/-x/usr/local/opt/initd/layers/l.txt", "+ web\n");
    let (code, _, err) = run(&t, &["build", "-q"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error: machine `bad`: invalid layer name `..`")
            && err.contains("machines/bad/usr/local/opt/initd/layers/l.txt:1:3")
            && err.ends_with("error: 1 machine failed: `bad`\n"),
        "{err}"
    );
    assert_eq!(t.read(".lab/out/-/etc/motd.txt"), "hi - none\n");
    assert_eq!(t.read(".lab/out/a/etc/motd.txt"), "hi a none\n");
    // a machine named `-` is selected like any other, as is a healthy
    // machine while another one is broken
    std::fs::remove_dir_all(t.join(".lab")).unwrap();
    for args in [
        &["build", "-q", "-m", "-"][..],
        &["build", "-q", "--machine=-"],
        &["build", "-q", "-m", "b"],
        &["build", "-q", "-m", "-x", "-m", "-"],
    ] {
        let (code, _, err) = run(&t, args);
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    assert!(t.join(".lab/out/-/etc/web.conf").exists());
    assert!(t.join(".lab/out/-x/etc/web.conf").exists());
    assert!(!t.join(".lab/out/bad.manifest").exists());
}
