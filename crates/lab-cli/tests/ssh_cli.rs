//! The `lab` binary's side of SSH against a real sshd on loopback: what it
//! asks and says when a key is protected by a passphrase and there is no
//! terminal (as under CI, cron, or a pipe).

use assert_cmd::Command;
use lab_testhosts::SshdFixture;
use lab_testkit::TestLab;

#[test]
fn a_protected_key_without_a_terminal_is_a_clear_error() {
    let sshd = SshdFixture::start().unwrap();
    let lab = TestLab::new();
    let key = lab.join("id_protected");
    assert!(std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "secret words", "-f"])
        .arg(&key)
        .status()
        .unwrap()
        .success());
    let public = std::fs::read_to_string(lab.join("id_protected.pub")).unwrap();
    let mut auth = std::fs::OpenOptions::new()
        .append(true)
        .open(sshd.dir().join("authorized_keys"))
        .unwrap();
    std::io::Write::write_all(&mut auth, public.as_bytes()).unwrap();
    lab.file(
        "ssh_config",
        &format!(
            "Host web\n  HostName {}\n  Port {}\n  User {}\n  UserKnownHostsFile {}\n  IdentityFile {}\n  IdentitiesOnly yes\n",
            sshd.address(),
            sshd.port(),
            sshd.user(),
            sshd.known_hosts().display(),
            key.display()
        ),
    )
    .file("lab.toml", "[machines.web]\n");
    let out = Command::cargo_bin("lab")
        .unwrap()
        .current_dir(lab.path())
        .env("NO_COLOR", "1")
        .env("LAB_SSH_CONFIG", lab.join("ssh_config"))
        .env_remove("SSH_AUTH_SOCK")
        .args(["facts", "-m", "web", "--refresh"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("error: machine `web`: authentication as `root` on `[127.0.0.1]:")
            && err.contains(
                "needs the passphrase of `id_protected`, and there is no terminal to ask for it on"
            ),
        "{err}"
    );
    assert!(
        err.contains(
            "hint: add the key to ssh-agent (`ssh-add id_protected`), or run lab on a terminal"
        ),
        "{err}"
    );
    assert!(!err.contains("secret words"));
}
