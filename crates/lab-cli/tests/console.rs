//! `lab console` at the command line: accounts from stdin, plain HTTP
//! only on loopback, and a console that serves once started.

use lab_testkit::{lab, TestLab};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;

fn project() -> TestLab {
    let t = TestLab::new();
    t.file(
        "lab.toml",
        "[machines.dev]\ntransport = \"local\"\nroot = \"dev-root\"\ntags = [\"team\"]\n",
    );
    t.dir("dev-root");
    t
}

#[test]
fn adduser_and_passwd_read_the_password_from_stdin() {
    let t = project();
    lab(&t, &["console", "adduser", "--superadmin", "root"])
        .write_stdin("a good password\n")
        .assert()
        .success()
        .stdout("added superadmin user `root`\n");
    assert!(t.join(".lab/console.sqlite").is_file());
    lab(&t, &["console", "adduser", "root"])
        .write_stdin("a good password\n")
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "a user named `root` exists already",
        ));
    lab(&t, &["console", "adduser", "short"])
        .write_stdin("short\n")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("at least 8 characters"));
    lab(&t, &["console", "adduser", "<b>"])
        .write_stdin("a good password\n")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("a user name is"));
    lab(&t, &["console", "passwd", "root"])
        .write_stdin("another password\n")
        .assert()
        .success();
    lab(&t, &["console", "passwd", "nobody"])
        .write_stdin("another password\n")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("there is no user named `nobody`"));
}

#[test]
fn plain_http_only_on_loopback() {
    let t = project();
    lab(&t, &["console", "--listen", "0.0.0.0:0"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "`0.0.0.0:0` is not a loopback address: serving it needs --tls-cert and --tls-key",
        ))
        .stderr(predicates::str::contains("ssh -L"));
    lab(&t, &["console", "--tls-cert", "cert.pem"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("--tls-key"));
    lab(
        &t,
        &[
            "console",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "no.pem",
            "--tls-key",
            "no.key",
        ],
    )
    .assert()
    .code(2)
    .stderr(predicates::str::contains("no.pem"));
}

#[test]
fn a_started_console_serves_its_login_page() {
    let t = project();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("lab"))
        .current_dir(t.path())
        .args(["console", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .strip_prefix("lab console on http://")
        .and_then(|r| r.trim_end().strip_suffix('/'))
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "GET /login HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("<form method=\"post\" action=\"/login\">"));
}
