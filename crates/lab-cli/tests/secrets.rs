//! Sources encrypted with age: decrypted at build, written 0600, correct on
//! a real test host after a sync, and never in anything lab prints.

mod common_hosts;

use assert_cmd::Command;
use common_hosts::*;
use lab_testhosts::TestHosts;
use lab_testkit::TestLab;

const PLAIN: &str = "hunter2-plaintext-secret\n";

fn encrypt(recipient: &age::x25519::Recipient, text: &str) -> Vec<u8> {
    age::encrypt(recipient, text.as_bytes()).unwrap()
}

fn lab(t: &TestLab, args: &[&str], identity: Option<&std::path::Path>) -> (i32, String) {
    let mut c = Command::cargo_bin("lab").unwrap();
    c.current_dir(t.path()).env("NO_COLOR", "1").args(args);
    match identity {
        Some(i) => c.env("LAB_AGE_IDENTITY", i),
        None => c.env_remove("LAB_AGE_IDENTITY"),
    };
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn age_sources_round_trip_and_never_print() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    let t = project(fleet.hosts());
    let key = age::x25519::Identity::generate();
    let keydir = tempfile::tempdir().unwrap();
    let idfile = keydir.path().join("age.key");
    std::fs::write(&idfile, format!("{}\n", secrecy_str(&key))).unwrap();
    let r = key.to_public();
    t.bytes("layers/base/etc/app/password.age", &encrypt(&r, PLAIN))
        .bytes(
            "layers/base/etc/app/db.conf.j2.age",
            &encrypt(
                &r,
                "user = app\nsecret_sauce = s3cr3t-{{ machine }}-sauce\n",
            ),
        );
    let secrets = [
        "hunter2-plaintext-secret",
        "s3cr3t-h1-sauce",
        "facts-secret-4711",
        "tok-h1-0815",
    ];
    let clean = |what: &str, out: &str| {
        for s in secrets {
            assert!(!out.contains(s), "{what} printed a secret:\n{out}");
        }
    };

    // without an identity: a clear error naming the file, nothing built
    let (code, out) = lab(&t, &["build"], None);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "`layers/base/etc/app/db.conf.j2.age` cannot be decrypted: no age identity is set"
        ) || out.contains(
            "`layers/base/etc/app/password.age` cannot be decrypted: no age identity is set"
        ),
        "{out}"
    );
    assert!(
        out.contains("hint: name an age identity file in `LAB_AGE_IDENTITY`"),
        "{out}"
    );

    // facts from an encrypted file, read by an ordinary template
    t.bytes(
        "secrets.toml.age",
        &encrypt(
            &r,
            "db_password = \"facts-secret-4711\"\n[machines.h1]\napi_token = \"tok-h1-0815\"\n",
        ),
    )
    .file(
        "layers/base/etc/app/env.j2",
        "DB_URL=postgres://app:{{ db_password }}@db/app\nX={{ api_token }}\n",
    );
    let toml = t.read("lab.toml").replacen(
        "[settings]\n",
        "[settings]\nsecret_facts = [\"secrets.toml.age\"]\n",
        1,
    );
    t.file("lab.toml", &toml);
    let (code, out) = lab(&t, &["build"], None);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("`secrets.toml.age` (secret facts) cannot be read: no age identity is set"),
        "{out}"
    );

    let id = Some(idfile.as_path());
    let (code, out) = lab(&t, &["build", "--explain"], id);
    assert_eq!(code, 0, "{out}");
    clean("build --explain", &out);
    use std::os::unix::fs::PermissionsExt;
    let o = t.join(".lab/out/h1/etc/app/password");
    assert_eq!(std::fs::read_to_string(&o).unwrap(), PLAIN);
    assert_eq!(
        std::fs::metadata(&o).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        t.read(".lab/out/h1/etc/app/db.conf"),
        "user = app\nsecret_sauce = s3cr3t-h1-sauce\n"
    );
    for args in [
        &["show", "-m", "h1", "/etc/app/password"][..],
        &["show", "-m", "h1", "/etc/app/db.conf"],
        &["show", "-m", "h1", "/etc/app/env"],
        &["diff", "-m", "h1"],
        &["diff", "-m", "h1", "--json"],
        &["build", "--json", "--force"],
    ] {
        let (code, out) = lab(&t, args, id);
        assert_eq!(code, 0, "{args:?}: {out}");
        clean(&format!("{args:?}"), &out);
    }
    let (code, out) = lab(&t, &["sync", "-m", "h1", "-v"], id);
    assert_eq!(code, 0, "{out}");
    clean("sync -v", &out);
    assert_eq!(run(h, "cat /etc/app/password"), PLAIN);
    assert_eq!(
        run(h, "stat -c %a /etc/app/password /etc/app/db.conf"),
        "600\n600\n"
    );
    assert_eq!(
        run(h, "cat /etc/app/db.conf"),
        "user = app\nsecret_sauce = s3cr3t-h1-sauce\n"
    );

    // a changed secret: the diff says the file changes, not what is in it
    t.bytes(
        "layers/base/etc/app/password.age",
        &encrypt(&r, "another-secret-value\n"),
    );
    let (code, out) = lab(&t, &["diff", "-m", "h1"], id);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("/etc/app/password") || out.contains("etc/app/password"),
        "{out}"
    );
    assert!(
        !out.contains("another-secret-value") && !out.contains("hunter2"),
        "{out}"
    );
}

/// The identity's text (age keeps it behind `secrecy`).
fn secrecy_str(k: &age::x25519::Identity) -> String {
    use age::secrecy::ExposeSecret;
    k.to_string().expose_secret().to_string()
}
