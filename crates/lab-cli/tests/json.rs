//! `--json` on build, sync, diff, facts and ls: one document on stdout,
//! its schema (README, "JSON output") pinned by these snapshots. The
//! machines are local, so every command runs for real without a network.

use assert_cmd::Command;
use lab_testkit::TestLab;
use serde_json::Value;

fn lab(t: &TestLab, args: &[&str]) -> Command {
    let mut c = Command::cargo_bin("lab").unwrap();
    c.current_dir(t.path()).env("NO_COLOR", "1").args(args);
    c
}

/// Run, expect `code`, and return stdout parsed as JSON (it must be one
/// JSON document and nothing else).
fn json(t: &TestLab, args: &[&str], code: i32) -> Value {
    let out = lab(t, args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: stdout is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap()
}

/// Two local machines, `a` (tags web, eu) and `b` (tag db).
fn two() -> TestLab {
    let t = TestLab::new();
    t.file(
        "lab.toml",
        "[facts]\ndomain = \"example.org\"\n\n\
         [machines.a]\ntransport = \"local\"\nroot = \"roots/a\"\ntags = [\"web\", \"eu\"]\nlayers = [\"base\"]\n\n\
         [machines.b]\ntransport = \"local\"\nroot = \"roots/b\"\ntags = [\"db\"]\nlayers = [\"base\"]\n",
    )
    .file("layers/base/etc/motd.j2", "{{ machine }}.{{ domain }}\n")
    .file("layers/base/etc/plain", "x\n")
    .dir("roots/a")
    .dir("roots/b");
    t
}

#[test]
fn build_json() {
    let t = two();
    insta::assert_snapshot!("build", pretty(&json(&t, &["build", "--json"], 0)));
    t.file("layers/base/etc/motd.j2", "{{ machine }}.{{ domian }}\n");
    // (how many files it reads again depends on the file system's clock:
    // one written within the clock tick of the last scan is read again)
    let mut v = json(&t, &["build", "--json", "-m", "@web"], 1);
    let read = v["read"].as_u64().unwrap();
    assert!((1..=3).contains(&read), "{v}");
    v["read"] = "1..3".into();
    insta::assert_snapshot!("build_failed", pretty(&v));
}

#[test]
fn sync_json() {
    let t = two();
    insta::assert_snapshot!("sync", pretty(&json(&t, &["sync", "--all", "--json"], 0)));
    insta::assert_snapshot!(
        "sync_unchanged",
        pretty(&json(&t, &["sync", "-m", "@db", "--json"], 0))
    );
}

#[test]
fn diff_json() {
    let t = two();
    lab(&t, &["sync", "--all", "-q"]).assert().success();
    t.file("layers/base/etc/motd.j2", "{{ machine }} at {{ domain }}\n")
        .file(
            "layers/base/etc/db.env",
            "DB_PASSWORD=hunter2\nDB_PASSWORD_FILE=/run/pg\n",
        )
        .remove("layers/base/etc/plain");
    let v = json(&t, &["diff", "-m", "a", "--json"], 0);
    assert!(!pretty(&v).contains("hunter2"));
    insta::assert_snapshot!("diff", pretty(&v));
}

#[test]
fn facts_json() {
    let t = two();
    // a cached fact file, so the values are the same on every host
    t.file(
        ".lab/facts/a.json",
        "{\"arch\": \"x86_64\", \"nproc\": 4, \"os_id\": \"debian\"}\n",
    );
    insta::assert_snapshot!(
        "facts",
        pretty(&json(&t, &["facts", "-m", "a", "--json"], 0))
    );
}

#[test]
fn ls_json() {
    let t = two();
    insta::assert_snapshot!("ls", pretty(&json(&t, &["ls", "--json"], 0)));
    lab(&t, &["sync", "-m", "a", "-q"]).assert().success();
    let mut v = json(&t, &["ls", "--json", "-m", "@eu"], 0);
    let at = v["machines"][0]["last_sync"].as_str().unwrap().to_string();
    assert!(at.len() == 20 && at.ends_with('Z'), "{at}");
    v["machines"][0]["last_sync"] = Value::String("[time]".into());
    insta::assert_snapshot!("ls_synced", pretty(&v));
}
