//! Sessions, CSRF, the login rate limit, the password hashes in the
//! database, TLS and loopback, and machine data shown as text.

mod common;

use common::{two_local, Fixture, PASSWORD, TWO_LOCAL};

#[test]
fn a_form_without_its_csrf_token_is_refused_and_audited() {
    let f = Fixture::start(TWO_LOCAL, two_local, |_| {});
    f.people();
    let mut root = f.login("root");
    for form in [
        vec![("name", "sneaky")],
        vec![("csrf", "0000"), ("name", "sneaky")],
    ] {
        let r = root.post("/admin/namespaces", &form);
        assert_eq!(r.status, 403, "{}", r.body);
        assert!(
            r.body.contains("CSRF token is missing or wrong"),
            "{}",
            r.body
        );
    }
    assert!(!f.store.namespaces().unwrap().contains(&"sneaky".into()));
    let refused = f.audited("refused");
    assert_eq!(refused.len(), 2);
    assert!(refused
        .iter()
        .all(|e| e.user == "root" && e.detail == "CSRF token missing or wrong"));
    // a sync without the token starts nothing
    let r = root.post("/ns/team/machine/dev/sync", &[]);
    assert_eq!(r.status, 403);
    assert!(f.audited("started").is_empty());
    // the login form has its own token (cookie and field must agree)
    let mut anon = f.client();
    let r = anon.post(
        "/login",
        &[("csrf", "x"), ("user", "root"), ("password", PASSWORD)],
    );
    assert_eq!(r.status, 403);
    assert!(!anon.cookies.contains_key("lab_session"));
    // with it, the same post works
    let r = root.act("/admin/namespaces", &[("name", "fine")]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(f.store.namespaces().unwrap().contains(&"fine".into()));
}

#[test]
fn a_session_expires_and_logout_ends_it() {
    let f = Fixture::start(TWO_LOCAL, two_local, |_| {});
    f.people();
    let mut alice = f.login("alice");
    let cookie = alice.get("/login").headers("Set-Cookie").join("\n");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    assert!(!cookie.contains("Secure"), "plain HTTP on loopback");
    assert_eq!(alice.get("/").status, 200);
    // the session's time is up
    let db = rusqlite::Connection::open(lab_console::db_path(&f.lab.join(".lab"))).unwrap();
    db.execute("UPDATE sessions SET expires = 1", []).unwrap();
    let r = alice.get("/");
    assert_eq!((r.status, r.header("Location")), (303, Some("/login")));
    let n: i64 = db
        .query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0, "the expired session is deleted");

    // logout: the server forgets the token, not only the browser
    let mut bob = f.login("bob");
    let token = bob.cookies["lab_session"].clone();
    let r = bob.act("/logout", &[]);
    assert_eq!((r.status, r.header("Location")), (303, Some("/login")));
    assert!(!bob.cookies.contains_key("lab_session"));
    bob.cookies.insert("lab_session".into(), token);
    let r = bob.get("/");
    assert_eq!((r.status, r.header("Location")), (303, Some("/login")));
}

#[test]
fn logins_are_rate_limited_per_user() {
    let f = Fixture::start(TWO_LOCAL, two_local, |_| {});
    f.people();
    let mut c = f.client();
    for _ in 0..lab_console::store::LIMIT_PER_USER {
        let r = c.login("alice", "not her password");
        assert_eq!(r.status, 401, "{}", r.body);
        assert!(r.body.contains("wrong user name or password"));
    }
    // now even the right password is not looked at
    let r = c.login("alice", PASSWORD);
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(!c.cookies.contains_key("lab_session"));
    assert_eq!(f.audited("rate-limited").len(), 1);
    assert_eq!(f.audited("refused").len(), 5);
    // another user from the same address still gets in
    assert_eq!(c.login("bob", PASSWORD).status, 303);
}

#[test]
fn passwords_are_argon2_hashes_and_sessions_are_stored_hashed() {
    let f = Fixture::start(TWO_LOCAL, two_local, |_| {});
    f.people();
    let c = f.login("root");
    let token = &c.cookies["lab_session"];
    let db = rusqlite::Connection::open(lab_console::db_path(&f.lab.join(".lab"))).unwrap();
    let hashes: Vec<String> = db
        .prepare("SELECT hash FROM users")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(hashes.len(), 5);
    for h in &hashes {
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(!h.contains(PASSWORD));
    }
    // one salt each: the same password hashes differently
    let mut uniq = hashes.clone();
    uniq.dedup();
    assert_eq!(uniq.len(), hashes.len());
    let stored: String = db
        .query_row("SELECT token_hash FROM sessions", [], |r| r.get(0))
        .unwrap();
    assert_ne!(&stored, token);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(lab_console::db_path(&f.lab.join(".lab")))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // a new password ends the sessions
    f.store.set_password("root", "another password").unwrap();
    let mut c = c;
    assert_eq!(c.get("/").status, 303);
    assert_eq!(f.client().login("root", "another password").status, 303);
}

#[test]
fn machine_data_is_shown_as_text() {
    let f = Fixture::start(
        TWO_LOCAL,
        |lab| {
            two_local(lab);
            lab.file("layers/_/etc/<script>alert(1)<", "x\n");
        },
        |_| {},
    );
    f.people();
    let mut bob = f.login("bob");
    // a diff of the machine (its path comes from the machine's build)
    let (job, events) = bob.run_job("/ns/team/machine/dev/diff");
    assert!(events.contains("event: done\ndata: ok"), "{events}");
    let page = bob.get(&job);
    assert!(
        page.body.contains("&lt;script&gt;alert(1)&lt;"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("<script>alert"));
    let page = bob.get("/ns/team/machine/dev");
    assert!(
        page.body.contains("&lt;script&gt;alert(1)&lt;"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("<script>alert"));
    assert!(page
        .header("Content-Security-Policy")
        .unwrap()
        .contains("script-src 'self'"));
}

#[test]
fn only_loopback_is_served_without_tls() {
    let lab = lab_testkit::TestLab::new();
    lab.file("lab.toml", TWO_LOCAL);
    let mut opts = lab_console::Options::new(lab.path().into(), lab.join(".lab"));
    opts.listen = "0.0.0.0:0".parse().unwrap();
    let e = lab_console::Console::start(opts).err().expect("refused");
    assert!(
        e.to_string().contains("needs --tls-cert and --tls-key"),
        "{e}"
    );
}

/// Under TLS (a self-signed certificate made by openssl), the session
/// cookie is `Secure`; curl is the client.
#[test]
fn tls_cookies_are_secure() {
    let lab = lab_testkit::TestLab::new();
    let (cert, key) = (lab.join("cert.pem"), lab.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let f = Fixture::start(TWO_LOCAL, two_local, |o| {
        o.tls = Some((cert.clone(), key.clone()));
    });
    let out = std::process::Command::new("curl")
        .args(["-s", "-k", "-i"])
        .arg(format!("https://{}/login", f.addr))
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let cookie = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_default();
    assert!(cookie.contains("; Secure"), "{text}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
}
