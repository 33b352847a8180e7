//! SSH settings as OpenSSH resolves them, each directive proven against a
//! real sshd on loopback: the connection only works when the directive is
//! honoured. Refused directives give their exact message. The machines
//! come from lab.toml text, through lab-deploy's translation into
//! lab-sync's [`lab_sync::SshSpec`].

use lab_config::Project;
use lab_sync::{SshTarget, SshTransport, SyncError, Transport};
use lab_testhosts::SshdFixture;
use std::path::Path;
use std::time::Duration;

/// A project with one machine `web` (lab.toml text after `[machines.web]`).
fn project(dir: &Path, machine: &str) -> Project {
    let text = format!("[machines.web]\n{machine}");
    Project::parse(dir, &dir.join("lab.toml"), text).unwrap()
}

fn resolve(dir: &Path, config: &str, machine: &str) -> SshTarget {
    let cfg = dir.join("ssh_config");
    std::fs::write(&cfg, config).unwrap();
    let p = project(dir, machine);
    let spec = lab_deploy::ssh_spec(&p, p.machine("web").unwrap());
    SshTarget::resolve_from(&spec, Some(&cfg)).expect("the OpenSSH client is installed")
}

fn connect(t: &SshTarget) -> Result<SshTransport, SyncError> {
    SshTransport::connect(t, false, Duration::from_secs(10), Duration::from_secs(30))
}

fn works(t: &SshTarget) {
    let mut c = connect(t).unwrap_or_else(|e| panic!("{e}: {t:#?}"));
    let out = c.run("echo ok", &mut |_| Ok(())).unwrap();
    assert_eq!(out.stdout_text(), "ok\n");
}

fn err(t: &SshTarget) -> String {
    match connect(t) {
        Ok(_) => panic!("connected: {t:#?}"),
        Err(e) => e.to_string(),
    }
}

/// `Match host`, `Include`, and first-value-wins all decide the route.
#[test]
fn match_include_and_first_value_wins() {
    let sshd = SshdFixture::start().unwrap();
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("extra.conf"),
        format!("Host web\n  IdentityFile {}\n", sshd.identity().display()),
    )
    .unwrap();
    let config = format!(
        "Host web\n  HostName {}\n  Port {}\n  Port 1\n  User {}\n\
         Match host {}\n  UserKnownHostsFile {}\n\
         Include {}/extra.conf\n",
        sshd.address(),
        sshd.port(),
        sshd.user(),
        sshd.address(),
        sshd.known_hosts().display(),
        d.path().display(),
    );
    let t = resolve(d.path(), &config, "");
    assert_eq!((t.host.as_str(), t.port), (sshd.address(), sshd.port()));
    assert_eq!(t.known_hosts, sshd.known_hosts());
    assert!(t.identities.contains(&sshd.identity().to_path_buf()));
    works(&t);
    // lab.toml's port wins over the file's, as ssh's -p would
    let t = resolve(d.path(), &config, "port = 1\n");
    assert_eq!(t.port, 1);
}

/// `ProxyCommand` carries the connection (here through OpenSSH's own
/// `ssh -W` to the same sshd), with its tokens expanded.
#[test]
fn proxy_command() {
    let sshd = SshdFixture::start().unwrap();
    let d = tempfile::tempdir().unwrap();
    let marker = d.path().join("proxy-ran");
    let jump_cfg = d.path().join("jump_config");
    std::fs::write(
        &jump_cfg,
        format!(
            "Host jump\n  HostName {}\n  Port {}\n  User {}\n  IdentityFile {}\n  UserKnownHostsFile {}\n  BatchMode yes\n",
            sshd.address(),
            sshd.port(),
            sshd.user(),
            sshd.identity().display(),
            sshd.known_hosts().display()
        ),
    )
    .unwrap();
    let config = format!(
        "Host web\n  HostName {}\n  Port {}\n  IdentityFile {}\n  UserKnownHostsFile {}\n  \
         ProxyCommand sh -c 'echo %n %r > {}; exec ssh -F {} -W %h:%p jump'\n",
        sshd.address(),
        sshd.port(),
        sshd.identity().display(),
        sshd.known_hosts().display(),
        marker.display(),
        jump_cfg.display(),
    );
    let t = resolve(d.path(), &config, "user = \"root\"\n");
    assert!(t.proxy_command.is_some());
    works(&t);
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "web root\n");
}

/// `GlobalKnownHostsFile` is read; `HostKeyAlias` names the key; a key
/// marked `@revoked` and a host vouched for by `@cert-authority` are refused.
#[test]
fn known_hosts_files_alias_revoked_and_cert_authority() {
    let sshd = SshdFixture::start().unwrap();
    let d = tempfile::tempdir().unwrap();
    let empty = d.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let global = d.path().join("global");
    std::fs::write(&global, format!("# comment\n{}\n", sshd.known_hosts_line())).unwrap();
    let base = format!(
        "Host web\n  HostName {}\n  Port {}\n  IdentityFile {}\n  UserKnownHostsFile {}\n",
        sshd.address(),
        sshd.port(),
        sshd.identity().display(),
        empty.display()
    );
    let e = err(&resolve(d.path(), &base, ""));
    assert!(e.starts_with("host key for"), "{e}");
    works(&resolve(
        d.path(),
        &format!("{base}  GlobalKnownHostsFile {}\n", global.display()),
        "",
    ));

    let aliased = d.path().join("aliased");
    std::fs::write(&aliased, format!("webkey {}\n", sshd.host_public_key())).unwrap();
    let t = resolve(
        d.path(),
        &format!(
            "{base}  HostKeyAlias webkey\n  GlobalKnownHostsFile {}\n",
            aliased.display()
        ),
        "",
    );
    assert_eq!(t.known_hosts_name(), "webkey");
    works(&t);

    let revoked = d.path().join("revoked");
    std::fs::write(
        &revoked,
        format!(
            "{}\n@revoked * {}\n",
            sshd.known_hosts_line(),
            sshd.host_public_key()
        ),
    )
    .unwrap();
    let e = err(&resolve(
        d.path(),
        &format!("{base}  GlobalKnownHostsFile {}\n", revoked.display()),
        "",
    ));
    assert!(e.contains("marked @revoked"), "{e}");
    assert!(e.contains(&format!("{}:2", revoked.display())), "{e}");

    let ca = d.path().join("ca");
    std::fs::write(
        &ca,
        format!(
            "@cert-authority [{}]:{} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDWg1ZkUlSj8nUqN2LBgG+BRgi1BSpnKYFUfKOM8qfZw\n",
            sshd.address(),
            sshd.port()
        ),
    )
    .unwrap();
    let e = err(&resolve(
        d.path(),
        &format!("{base}  GlobalKnownHostsFile {}\n", ca.display()),
        "",
    ));
    assert_eq!(
        e,
        format!(
            "`{}:1`: `[{}]:{}` is vouched for by a @cert-authority line; lab cannot check host \
             certificates, so it does not trust the host ({}) another way",
            ca.display(),
            sshd.address(),
            sshd.port(),
            e.split(" another way")
                .next()
                .unwrap()
                .rsplit('(')
                .next()
                .unwrap()
                .trim_end_matches(')')
        )
    );
}

/// `IdentitiesOnly yes` keeps the agent's keys out; `IdentityAgent` names
/// the agent.
#[test]
fn identities_only_and_identity_agent() {
    let sshd = SshdFixture::start().unwrap();
    let d = tempfile::tempdir().unwrap();
    let sock = d.path().join("agent.sock");
    let mut agent = std::process::Command::new("ssh-agent")
        .args(["-D", "-a"])
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let added = std::process::Command::new("ssh-add")
        .arg(sshd.identity())
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    assert!(added.status.success(), "{added:?}");
    let base = format!(
        "Host web\n  HostName {}\n  Port {}\n  UserKnownHostsFile {}\n  IdentityFile {}\n  IdentityAgent {}\n",
        sshd.address(),
        sshd.port(),
        sshd.known_hosts().display(),
        d.path().join("no-such-key").display(),
        sock.display()
    );
    let t = resolve(d.path(), &base, "");
    assert_eq!(t.identity_agent.as_deref(), Some(sock.as_path()));
    works(&t);
    let e = err(&resolve(
        d.path(),
        &format!("{base}  IdentitiesOnly yes\n"),
        "",
    ));
    assert!(e.starts_with("authentication as"), "{e}");
    assert!(!e.contains("ssh-agent"), "{e}");
    let _ = agent.kill();
    let _ = agent.wait();
}

/// A directive that changes authentication and that lab cannot honour
/// refuses the machine, naming the directive and its line.
#[test]
fn certificate_file_is_refused_with_its_line() {
    let sshd = SshdFixture::start().unwrap();
    let d = tempfile::tempdir().unwrap();
    let config = format!(
        "Host web\n  HostName {}\n  Port {}\n  UserKnownHostsFile {}\n  IdentityFile {}\n  CertificateFile ~/.ssh/id-cert.pub\n",
        sshd.address(),
        sshd.port(),
        sshd.known_hosts().display(),
        sshd.identity().display(),
    );
    let e = err(&resolve(d.path(), &config, ""));
    assert_eq!(
        e,
        format!(
            "`{}:6`: `CertificateFile ~/.ssh/id-cert.pub`: lab cannot authenticate this way, \
             so it does not reach this machine at all rather than another way",
            d.path().join("ssh_config").display()
        )
    );
}

/// A key protected by a passphrase: without a way to ask, a clear error
/// naming the key; with the passphrase given (the CLI asks on the
/// terminal), the login works, and the key is asked for once.
#[test]
fn a_passphrase_protected_key() {
    let sshd = SshdFixture::start().unwrap();
    let d = tempfile::tempdir().unwrap();
    let key = d.path().join("id_protected");
    let ok = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "correct horse", "-f"])
        .arg(&key)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    assert!(lab_sync::ssh::key_is_encrypted(&key));
    assert!(!lab_sync::ssh::key_is_encrypted(sshd.identity()));
    let public = std::fs::read_to_string(d.path().join("id_protected.pub")).unwrap();
    let mut auth = std::fs::OpenOptions::new()
        .append(true)
        .open(sshd.dir().join("authorized_keys"))
        .unwrap();
    std::io::Write::write_all(&mut auth, public.as_bytes()).unwrap();
    let config = format!(
        "Host web\n  HostName {}\n  Port {}\n  UserKnownHostsFile {}\n  IdentityFile {}\n  IdentitiesOnly yes\n",
        sshd.address(),
        sshd.port(),
        sshd.known_hosts().display(),
        key.display(),
    );
    let t = resolve(d.path(), &config, "");
    let e = err(&t);
    assert_eq!(
        e,
        format!(
            "authentication as `{}` on `[{}]:{}` needs the passphrase of `{}`, and there is no terminal to ask for it on",
            sshd.user(),
            sshd.address(),
            sshd.port(),
            key.display()
        )
    );

    struct Given(std::sync::atomic::AtomicUsize);
    impl lab_sync::ssh::PassphrasePrompt for Given {
        fn passphrase(&self, _: &Path) -> Option<String> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Some("correct horse".into())
        }
    }
    static ASKED: std::sync::OnceLock<&'static Given> = std::sync::OnceLock::new();
    let given: &'static Given = Box::leak(Box::new(Given(0.into())));
    ASKED.set(given).ok();
    struct Shared;
    impl lab_sync::ssh::PassphrasePrompt for Shared {
        fn passphrase(&self, key: &Path) -> Option<String> {
            ASKED.get().unwrap().passphrase(key)
        }
    }
    lab_sync::ssh::set_passphrase_prompt(Box::new(Shared));
    works(&t);
    works(&t);
    assert_eq!(
        given.0.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "asked once"
    );
}

/// `ServerAliveInterval`/`ServerAliveCountMax` reach the socket as TCP
/// keepalive probes; `StrictHostKeyChecking no` adds an unknown key and
/// says so (a changed key is still refused).
#[test]
fn server_alive_and_strict_host_key_checking_no() {
    let sshd = SshdFixture::start().unwrap();
    let d = tempfile::tempdir().unwrap();
    let kh = d.path().join("kh");
    let base = format!(
        "Host web\n  HostName {}\n  Port {}\n  IdentityFile {}\n  UserKnownHostsFile {}\n",
        sshd.address(),
        sshd.port(),
        sshd.identity().display(),
        kh.display()
    );
    std::fs::write(&kh, sshd.known_hosts_line().to_string() + "\n").unwrap();
    let t = resolve(
        d.path(),
        &format!("{base}  ServerAliveInterval 7\n  ServerAliveCountMax 2\n"),
        "",
    );
    assert_eq!(t.server_alive, Some((7, 2)));
    let c = connect(&t).unwrap();
    assert_eq!(c.tcp_keepalive(), Some((7, 7, 2)));
    let plain = connect(&resolve(d.path(), &base, "")).unwrap();
    assert_eq!(plain.tcp_keepalive(), None);

    std::fs::write(&kh, "").unwrap();
    let t = resolve(d.path(), &format!("{base}  StrictHostKeyChecking no\n"), "");
    let c = connect(&t).unwrap();
    assert_eq!(c.warnings().len(), 1, "{:?}", c.warnings());
    assert!(
        c.warnings()[0].contains("`StrictHostKeyChecking no`"),
        "{:?}",
        c.warnings()
    );
    assert!(std::fs::read_to_string(&kh)
        .unwrap()
        .contains(sshd.host_public_key().split(' ').nth(1).unwrap()));
    // known now: no warning the second time
    assert!(connect(&t).unwrap().warnings().is_empty());
    // a changed key is refused all the same
    std::fs::write(
        &kh,
        format!(
            "[{}]:{} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDWg1ZkUlSj8nUqN2LBgG+BRgi1BSpnKYFUfKOM8qfZw\n",
            sshd.address(),
            sshd.port()
        ),
    )
    .unwrap();
    let e = err(&t);
    assert!(e.contains("has CHANGED"), "{e}");
}
