//! Fleets: `tags = [...]` on machines; `-m` takes names, `@tag` and globs,
//! repeatable, on every command that takes machines; `--all` on each of
//! them; `lab ls`. The machines are local (directories in the project), so
//! every command runs for real without a network.

use lab_testkit::{run, TestLab};
use std::io::{BufRead, BufReader};
use std::process::Stdio;

/// Three local machines: web1 and web2 tagged `web` (web1 also `eu`), db1
/// tagged `db` and `eu`.
fn fleet() -> TestLab {
    let t = TestLab::new();
    let mut toml = String::new();
    for (m, tags) in [
        ("web1", "\"web\", \"eu\""),
        ("web2", "\"web\""),
        ("db1", "\"db\", \"eu\""),
    ] {
        toml.push_str(&format!(
            "[machines.{m}]\ntransport = \"local\"\nroot = \"roots/{m}\"\ntags = [{tags}]\nlayers = [\"base\"]\n\n"
        ));
        t.dir(&format!("roots/{m}"));
    }
    t.file("lab.toml", &toml)
        .file("layers/base/etc/motd.j2", "{{ machine }}\n");
    t
}

/// The machines whose tree `lab build ARGS` wrote, in lab.toml order.
fn built(args: &[&str]) -> Vec<String> {
    let t = fleet();
    let mut a = vec!["build", "-q"];
    a.extend_from_slice(args);
    let (code, _, err) = run(&t, &a);
    assert_eq!(code, 0, "{args:?}: {err}");
    ["web1", "web2", "db1"]
        .into_iter()
        .filter(|m| t.join(&format!(".lab/out/{m}/etc/motd")).exists())
        .map(String::from)
        .collect()
}

#[test]
fn machines_by_name_tag_and_glob() {
    assert_eq!(built(&["-m", "web2"]), ["web2"]);
    assert_eq!(built(&["-m", "@web"]), ["web1", "web2"]);
    assert_eq!(built(&["-m", "@eu"]), ["web1", "db1"]);
    assert_eq!(built(&["-m", "web*"]), ["web1", "web2"]);
    assert_eq!(built(&["-m", "*1"]), ["web1", "db1"]);
    assert_eq!(built(&["-m", "db1", "-m", "@web"]), ["web1", "web2", "db1"]);
    assert_eq!(built(&["--all"]), ["web1", "web2", "db1"]);
    assert_eq!(built(&[]), ["web1", "web2", "db1"]);
}

#[test]
fn a_selection_that_matches_nothing_is_an_error() {
    let t = fleet();
    let (code, out, err) = run(&t, &["build", "-m", "@wbe"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert_eq!(
        err,
        "error: no machine has the tag `wbe`\n  hint: did you mean `@web`?\n"
    );
    let (code, _, err) = run(&t, &["sync", "-m", "app*"]);
    assert_eq!(code, 2);
    assert_eq!(
        err,
        "error: no machine matches `app*`\n  hint: machines in lab.toml: `web1`, `web2`, `db1`\n"
    );
    let (code, _, err) = run(&t, &["build", "-m", "web3"]);
    assert_eq!(code, 2);
    assert!(err.starts_with("error: unknown machine `web3`\n"), "{err}");
    let (code, _, err) = run(&t, &["build", "-m", "web1", "--all"]);
    assert_eq!(code, 2, "{err}");
    assert!(!t.join(".lab/out").exists());
}

#[test]
fn tags_must_be_names() {
    let t = TestLab::new();
    t.file("lab.toml", "[machines.a]\ntags = [\"ok\", \"no good\"]\n");
    let (code, _, err) = run(&t, &["build"]);
    assert_eq!(code, 2);
    assert!(err.starts_with("error: invalid tag `no good`\n"), "{err}");
    assert!(err.contains(" --> lab.toml:2:15\n"), "{err}");
}

#[test]
fn sync_diff_rollback_show_facts_by_tag() {
    let t = fleet();
    let (code, _, err) = run(&t, &["sync", "-m", "@eu"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(t.read("roots/web1/etc/motd"), "web1\n");
    assert_eq!(t.read("roots/db1/etc/motd"), "db1\n");
    assert!(
        !t.join("roots/web2/etc/motd").exists(),
        "web2 is not in @eu"
    );

    t.file("layers/base/etc/motd.j2", "{{ machine }} v2\n");
    let (code, out, err) = run(&t, &["diff", "-m", "@eu"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("+web1 v2\n") && out.contains("+db1 v2\n"),
        "{out}"
    );
    assert!(!out.contains("web2"), "{out}");

    let (code, out, err) = run(&t, &["show", "-m", "@eu", "/etc/motd"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("/etc/motd on web1 "), "{out}");
    assert!(out.contains("/etc/motd on db1 "), "{out}");

    let (code, out, err) = run(&t, &["facts", "-m", "@eu", "--local"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("web1: arch=") && out.contains("db1: arch="),
        "{out}"
    );
    assert!(!out.contains("web2"), "{out}");

    let (code, _, err) = run(&t, &["sync", "-m", "@eu"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&t, &["rollback", "-m", "@eu"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("web1: back on generation 1"), "{out}");
    assert!(out.contains("db1: back on generation 1"), "{out}");
    assert_eq!(t.read("roots/web1/etc/motd"), "web1\n");
}

#[test]
fn all_on_every_command() {
    let t = fleet();
    let (code, _, err) = run(&t, &["build", "--all", "-q"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(&t, &["sync", "--all", "-q"]);
    assert_eq!(code, 0, "{err}");
    for m in ["web1", "web2", "db1"] {
        assert_eq!(t.read(&format!("roots/{m}/etc/motd")), format!("{m}\n"));
    }
    t.file("layers/base/etc/motd.j2", "{{ machine }} v2\n");
    let (code, out, err) = run(&t, &["diff", "--all"]);
    assert_eq!(code, 0, "{err}");
    for m in ["web1", "web2", "db1"] {
        assert!(out.contains(&format!("+{m} v2\n")), "{out}");
    }
    let (code, out, err) = run(&t, &["show", "--all", "/etc/motd"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("/etc/motd on ").count(), 3, "{out}");
    let (code, out, err) = run(&t, &["facts", "--all", "--local"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches(": arch=").count(), 3, "{out}");
    let (code, _, err) = run(&t, &["sync", "--all", "-q"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&t, &["rollback", "--all"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("back on generation 1").count(), 3, "{out}");
    let (code, out, err) = run(&t, &["ls", "--all"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 4, "{out}");

    // watch: the first cycle's JSON names every machine; then SIGTERM
    let mut w = std::process::Command::new(assert_cmd::cargo::cargo_bin("lab"))
        .current_dir(t.path())
        .env("NO_COLOR", "1")
        .args(["watch", "--all", "--no-sync", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(w.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    // SAFETY: signalling the child we spawned, by its PID.
    unsafe { libc::kill(w.id() as i32, libc::SIGTERM) };
    w.wait().unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let names: Vec<&String> = v["machines"].as_object().unwrap().keys().collect();
    assert_eq!(names.len(), 3, "{line}");
}

#[test]
fn ls_lists_tags_transport_address_and_the_last_sync() {
    let t = fleet();
    let (code, out, err) = run(&t, &["ls"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "NAME  TAGS    TRANSPORT  ADDRESS     GEN  LAST SYNC\n\
         web1  web,eu  local      roots/web1  -    -\n\
         web2  web     local      roots/web2  -    -\n\
         db1   db,eu   local      roots/db1   -    -\n"
    );
    let (code, _, err) = run(&t, &["sync", "-m", "web1", "-q"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = run(&t, &["ls", "-m", "@web"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[1].starts_with("web1  web,eu  local      roots/web1  1    20"),
        "{out}"
    );
    assert!(lines[1].ends_with('Z'), "{out}");
    assert!(lines[2].ends_with("roots/web2  -    -"), "{out}");
}

#[test]
fn ls_shows_what_a_watch_synced() {
    let t = fleet();
    let mut w = std::process::Command::new(assert_cmd::cargo::cargo_bin("lab"))
        .current_dir(t.path())
        .env("NO_COLOR", "1")
        .args(["watch", "-m", "@eu", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(w.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    // SAFETY: signalling the child we spawned, by its PID.
    unsafe { libc::kill(w.id() as i32, libc::SIGTERM) };
    w.wait().unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["machines"]["web1"]["sync"]["generation"], 1, "{line}");
    let (code, out, err) = run(&t, &["ls"]);
    assert_eq!(code, 0, "{err}");
    let gen = |m: &str| {
        let l = out.lines().find(|l| l.starts_with(m)).unwrap();
        l.split_whitespace().nth(4).unwrap().to_string()
    };
    assert_eq!(
        (gen("web1"), gen("web2"), gen("db1")),
        ("1".into(), "-".into(), "1".into()),
        "{out}"
    );
}
