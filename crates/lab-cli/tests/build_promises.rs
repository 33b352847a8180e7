//! The local build's own promises, under a full disk, kills and tampering:
//! a machine whose build fails keeps its previous outputs untouched; a
//! killed build leaves nothing behind that a later build does not remove;
//! an output changed behind lab's back is made again by the next build.
//! (Mounting a small tmpfs needs root, as the rest of the suite does.)

use lab_testkit::{run, tree_listing, TestLab};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A small tmpfs mounted at a path for the life of the value.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(at: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs at {} (needs root)", at.display());
        SmallFs(at.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Every file under `dir` with its content, for comparing whole trees.
fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            (
                e.path().strip_prefix(dir).unwrap().display().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_full_disk_leaves_the_previous_outputs_untouched() {
    let t = TestLab::new();
    t.file(
        "lab.toml",
        "[machines.m]\nlayers = [\"web\"]\n\n[machines.small]\n",
    )
    .file("layers/web/etc/a.j2", "a {{ n | default(1) }}\n")
    .file("layers/web/etc/b.j2", "b {{ n | default(1) }}\n")
    .file("layers/web/etc/c.j2", "c {{ n | default(1) }}\n")
    .file("machines/small/etc/x", "x\n");
    let _fs = SmallFs::mount(&t.join(".lab"), "512k");
    let (code, _, err) = run(&t, &["build", "-q"]);
    assert_eq!(code, 0, "{err}");
    let before = (contents(&t.join(".lab/out")), t.read(".lab/out/m.manifest"));

    // Each output now needs 200 KB: the second or third cannot be written.
    for f in ["a", "b", "c"] {
        t.file(
            &format!("layers/web/etc/{f}.j2"),
            &format!("{f} {{% for i in range(20000) %}}0123456789{{% endfor %}}\n"),
        );
    }
    t.file("machines/small/etc/x", "y\n");
    let (code, _, err) = run(&t, &["build", "-q"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("machine `m`"), "{err}");
    let after_small = t.read(".lab/out/small/etc/x");
    assert_eq!(after_small, "y\n", "the other machine still builds");
    let mut now = (contents(&t.join(".lab/out")), t.read(".lab/out/m.manifest"));
    now.0.retain(|(p, _)| !p.starts_with("small"));
    let mut was = before.clone();
    was.0.retain(|(p, _)| !p.starts_with("small"));
    assert_eq!(now, was, "m's outputs and manifest are as before");
    assert!(
        std::fs::read_dir(t.join(".lab/stage/m")).map_or(true, |mut d| d.next().is_none()),
        "nothing staged is left"
    );
    // Room again: the same build goes through.
    for f in ["a", "b"] {
        t.file(&format!("layers/web/etc/{f}.j2"), &format!("{f} small\n"));
    }
    let (code, _, err) = run(&t, &["build", "-q"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(t.read(".lab/out/m/etc/a"), "a small\n");
    // ("c " and 20,000 times ten digits; trim_blocks drops the newline)
    assert_eq!(t.read(".lab/out/m/etc/c").len(), 200_002);
}

#[test]
fn killed_builds_leave_nothing_a_later_build_keeps() {
    let t = TestLab::new();
    t.file("lab.toml", "[machines.m]\nlayers = [\"many\"]\n");
    for i in 0..1500 {
        t.file(
            &format!("layers/many/etc/d{}/f{i}.j2", i % 30),
            &format!("{i} {{{{ machine }}}} {{{{ v | default(0) }}}}\n"),
        );
    }
    let reference = |t: &TestLab| {
        let (code, _, err) = run(t, &["build", "-q", "--force"]);
        assert_eq!(code, 0, "{err}");
        contents(&t.join(".lab/out"))
    };
    for (round, delay_ms) in [5u64, 15, 30, 60, 120, 250].into_iter().enumerate() {
        // an edit so that the killed build has something to write
        t.file(
            "lab.toml",
            &format!("[facts]\nv = {round}\n\n[machines.m]\nlayers = [\"many\"]\n"),
        );
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("lab"))
            .current_dir(t.path())
            .args(["build", "-q"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let (code, _, err) = run(&t, &["build", "-q"]);
        assert_eq!(code, 0, "round {round}: {err}");
        let listing = tree_listing(&t.join(".lab/out"));
        assert!(
            !listing.contains(".lab~"),
            "round {round}: temporary files left:\n{listing}"
        );
        assert!(
            !t.join(".lab/stage/m").exists(),
            "round {round}: stage left"
        );
        let incremental = contents(&t.join(".lab/out"));
        assert_eq!(
            incremental,
            reference(&t),
            "round {round}: incremental == clean"
        );
    }
}

#[test]
fn leftovers_of_older_builds_are_removed() {
    let t = TestLab::new();
    t.file("lab.toml", "[machines.m]\n")
        .file("machines/m/etc/a", "a\n");
    let (code, _, err) = run(&t, &["build", "-q"]);
    assert_eq!(code, 0, "{err}");
    // what a kill left: a temporary file in the tree (older versions) and
    // a stage (this version)
    std::fs::write(t.join(".lab/out/m/etc/.lab~1234.5"), "half").unwrap();
    std::fs::create_dir_all(t.join(".lab/stage/m")).unwrap();
    std::fs::write(t.join(".lab/stage/m/7"), "half").unwrap();
    let (code, _, err) = run(&t, &["build", "-q"]);
    assert_eq!(code, 0, "{err}");
    assert!(!t.join(".lab/out/m/etc/.lab~1234.5").exists());
    assert!(!t.join(".lab/stage/m").exists());
    let (_, out, _) = run(&t, &["build"]);
    assert!(out.contains("up to date"), "{out}");
}

/// The coarse file-system clock: a change in the very tick the manifest was
/// written cannot be told apart (see `lab_engine::output`), so the tests
/// change outputs a tick later.
fn next_tick() {
    std::thread::sleep(Duration::from_millis(30));
}

#[test]
fn a_tampered_output_is_made_again() {
    let root = tempfile::tempdir().unwrap();
    let t = TestLab::new();
    t.file(
        "lab.toml",
        &format!(
            "[machines.m]\ntransport = \"local\"\nroot = \"{}\"\nroot_outside_project = true\n",
            root.path().display()
        ),
    )
    .file("machines/m/etc/a", "a\n")
    .file("machines/m/etc/b.j2", "b {{ machine }}\n")
    .symlink("machines/m/etc/l", "/etc/a");
    let (code, _, err) = run(&t, &["build", "-q"]);
    assert_eq!(code, 0, "{err}");
    let clean = (
        contents(&t.join(".lab/out")),
        tree_listing(&t.join(".lab/out")),
    );
    let out = |p: &str| t.join(".lab/out/m").join(p);
    type Tamper = Box<dyn Fn(&dyn Fn(&str) -> PathBuf)>;
    let tampers: Vec<(&str, Tamper)> = vec![
        (
            "same-size edit",
            Box::new(|o| std::fs::write(o("etc/a"), "A\n").unwrap()),
        ),
        (
            "template output edit",
            Box::new(|o| std::fs::write(o("etc/b"), "evil\n").unwrap()),
        ),
        (
            "chmod",
            Box::new(|o| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(o("etc/a"), std::fs::Permissions::from_mode(0o600))
                    .unwrap()
            }),
        ),
        (
            "delete",
            Box::new(|o| std::fs::remove_file(o("etc/b")).unwrap()),
        ),
        (
            "retarget",
            Box::new(|o| {
                std::fs::remove_file(o("etc/l")).unwrap();
                std::os::unix::fs::symlink("/elsewhere", o("etc/l")).unwrap();
            }),
        ),
        (
            "foreign file",
            Box::new(|o| std::fs::write(o("etc/new"), "x").unwrap()),
        ),
    ];
    for (what, tamper) in &tampers {
        next_tick();
        tamper(&out);
        let (code, stdout, err) = run(&t, &["build"]);
        assert_eq!(code, 0, "{what}: {err}");
        assert!(!stdout.contains("up to date"), "{what}: noticed: {stdout}");
        let foreign = out("etc/new");
        let mut now = (
            contents(&t.join(".lab/out")),
            tree_listing(&t.join(".lab/out")),
        );
        if foreign.exists() {
            // not lab's: kept, and left out of the comparison
            now.0.retain(|(p, _)| p != "m/etc/new");
            now.1 = now
                .1
                .lines()
                .filter(|l| !l.starts_with("m/etc/new "))
                .map(|l| format!("{l}\n"))
                .collect();
        }
        assert_eq!(now, clean, "{what}: repaired");
        let (_, stdout, _) = run(&t, &["build"]);
        assert!(
            stdout.contains("up to date"),
            "{what}: then up to date: {stdout}"
        );
        let _ = std::fs::remove_file(foreign);
    }
    // a sync right after a tamper ships the right content (no "changed
    // after it was built" loop)
    next_tick();
    std::fs::write(out("etc/a"), "tampered\n").unwrap();
    let (code, _, err) = run(&t, &["sync", "-m", "m"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/a")).unwrap(),
        "a\n"
    );
}
