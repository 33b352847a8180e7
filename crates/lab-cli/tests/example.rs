//! The example lab at the repository root renders to exactly these trees
//! (snapshots under `tests/snapshots/`), and `lab show` explains a path.

use assert_cmd::Command;
use lab_testkit::{tree_listing, TestLab};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A copy of the example (lab.toml, layers/, machines/) in a temp dir.
fn example() -> TestLab {
    let t = TestLab::new();
    std::fs::copy(repo().join("lab.toml"), t.join("lab.toml")).unwrap();
    for dir in ["layers", "machines"] {
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(repo().join(dir))
            .arg(t.path())
            .status()
            .unwrap();
        assert!(status.success());
    }
    t
}

fn lab(t: &TestLab) -> Command {
    let mut c = Command::cargo_bin("lab").unwrap();
    c.current_dir(t.path()).env("NO_COLOR", "1");
    c
}

#[test]
fn example_trees() {
    let t = example();
    lab(&t).args(["build", "-q"]).assert().success().stdout("");
    for m in ["web1", "db1", "dev"] {
        let listing = tree_listing(&t.join(".lab/out").join(m));
        assert!(!listing.contains(&format!("{m}.{m}.")), "{m}: {listing}");
        insta::assert_snapshot!(m, listing);
    }
    // and a second build has nothing to do
    lab(&t)
        .arg("build")
        .assert()
        .success()
        .stdout(predicates::str::contains(
            "web1: up to date\ndb1: up to date\ndev: up to date\n",
        ));
}

#[test]
fn show_names_the_winning_source_and_the_facts_read() {
    let t = example();
    let out = lab(&t)
        .args(["show", "--machine", "dev", "/etc/motd"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "/etc/motd on dev (file 0644)\n  \
         overrides: layers/_/etc/motd.j2\n  \
         source: machines/dev/etc/motd.j2 (template)\n  \
         reads: domain = \"example.org\"\n\
         ---\n\
         dev: a local directory playing a machine (dev.example.org).\n"
    );
}

/// `lab -C DIR` with a relative DIR: the local machine's root (relative to
/// the project) is the same directory for lab and for the executor.
#[test]
fn sync_of_the_local_machine_from_another_directory() {
    let t = example();
    let parent = t.path().parent().unwrap().to_path_buf();
    let name = t.path().file_name().unwrap().to_str().unwrap().to_string();
    let sync = || {
        Command::cargo_bin("lab")
            .unwrap()
            .current_dir(&parent)
            .env("NO_COLOR", "1")
            .args(["-C", &name, "sync", "-m", "dev"])
            .assert()
            .success()
    };
    sync();
    let root = t.join("dev-root");
    let built = tree_listing(&t.join(".lab/out/dev"));
    let synced: String = tree_listing(&root)
        .lines()
        // lab's own state on the machine
        .filter(|l| !l.starts_with("var/lib/"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(synced, built);
    // a one-file change goes through the same way
    std::fs::write(
        t.join("machines/dev/etc/motd.j2"),
        "{{ machine }} changed\n",
    )
    .unwrap();
    sync();
    assert_eq!(
        std::fs::read_to_string(root.join("etc/motd")).unwrap(),
        "dev changed\n"
    );
}
