//! `lab bootstrap`: a fresh machine (its address and root password) made a
//! lab machine reached as a user of its own with a key and passwordless
//! sudo, with password and root logins turned off, in an order that never
//! locks anyone out:
//!
//! 1. the host key is accepted only when it is the expected one (or
//!    confirmed), and recorded in the known_hosts file lab uses;
//! 2. as root, by password: the user (with the public keys), a sudoers
//!    drop-in, lingering (user services), subordinate uid/gid ranges
//!    (rootless containers); sudo is installed when missing;
//! 3. a second login as the user with the key runs `sudo -n true`;
//! 4. only then, through that user, an sshd drop-in turns password and root
//!    logins off (checked with `sshd -t`, and `sshd -T` after a reload); a
//!    third login with the key must work, else the drop-in is taken back
//!    over the root connection that was kept open.
//!
//! A machine where the user's key login and sudo already work and the
//! drop-in is in place is left as it is (a re-run changes nothing).
//! The password is never logged, printed or written anywhere.

use crate::ssh::{HostKeyPolicy, Login, SshTarget, SshTransport};
use crate::transport::Transport;
use crate::SyncError;
use std::path::PathBuf;
use std::time::Duration;

/// The sshd drop-in bootstrap writes (first in `sshd_config.d`, so its
/// values win: sshd takes the first value it reads).
pub const SSHD_DROP_IN: &str = "/etc/ssh/sshd_config.d/00-lab-bootstrap.conf";
pub const SSHD_DROP_IN_TEXT: &str = "# written by lab bootstrap: keys only, no root login\n\
PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin no\n";

/// The sudoers drop-in for `user`.
pub fn sudoers_path(user: &str) -> String {
    format!("/etc/sudoers.d/lab-{user}")
}

pub fn sudoers_text(user: &str) -> String {
    format!("# written by lab bootstrap\n{user} ALL=(ALL) NOPASSWD: ALL\n")
}

pub struct Spec<'a> {
    pub host: String,
    pub port: u16,
    /// The account that logs in with the password (root).
    pub admin: String,
    pub password: &'a str,
    pub user: String,
    /// Lines of `authorized_keys` for the user.
    pub public_keys: Vec<String>,
    /// The private key the user logs in with afterwards.
    pub identity: PathBuf,
    pub known_hosts: PathBuf,
    pub host_key: HostKeyPolicy<'a>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The machine was made a lab machine; the steps taken.
    Bootstrapped(Vec<String>),
    /// Key login, sudo and the sshd drop-in were all there already.
    AlreadyDone,
}

const TIMEOUT: Duration = Duration::from_secs(15);
const IO_TIMEOUT: Duration = Duration::from_secs(300);

fn target(spec: &Spec, user: &str, sudo: bool) -> SshTarget {
    SshTarget {
        identities: vec![spec.identity.clone()],
        identities_only: true,
        sudo,
        ..SshTarget::new(&spec.host, spec.port, user, spec.known_hosts.clone())
    }
}

fn check(out: crate::Output, what: &str) -> Result<String, SyncError> {
    if out.status == 0 {
        Ok(out.stdout_text())
    } else {
        Err(SyncError::Bootstrap {
            step: what.to_string(),
            message: format!(
                "exit {}: {}",
                out.status,
                out.stderr_text().trim().lines().last().unwrap_or_default()
            ),
        })
    }
}

/// The root part: user, keys, sudo, linger, subordinate ids.
fn setup_script(user: &str, keys: &[String]) -> String {
    let q = lab_agent::quote;
    let mut s = String::from("set -eu\numask 022\n");
    s.push_str(&format!("U={}\n", q(user)));
    s.push_str(
        r#"if ! command -v sudo >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then DEBIAN_FRONTEND=noninteractive apt-get install -y -q sudo >/dev/null
  elif command -v dnf >/dev/null 2>&1; then dnf install -y -q sudo >/dev/null
  else yum install -y -q sudo >/dev/null; fi
fi
command -v sudo >/dev/null 2>&1 || { echo "sudo is not installed and could not be installed" >&2; exit 1; }
if ! id "$U" >/dev/null 2>&1; then
  sh=/bin/sh; [ -x /bin/bash ] && sh=/bin/bash
  useradd -m -s "$sh" -- "$U"
  echo "created user $U"
fi
H=$(getent passwd "$U" | cut -d: -f6)
G=$(id -gn -- "$U")
install -d -m 700 -o "$U" -g "$G" "$H/.ssh"
touch "$H/.ssh/authorized_keys"
"#,
    );
    for k in keys {
        s.push_str(&format!(
            "grep -qxF -- {k} \"$H/.ssh/authorized_keys\" || {{ printf '%s\\n' {k} >>\"$H/.ssh/authorized_keys\"; echo \"added a key for $U\"; }}\n",
            k = q(k)
        ));
    }
    s.push_str(&format!(
        r#"chown "$U:$G" "$H/.ssh/authorized_keys"; chmod 600 "$H/.ssh/authorized_keys"
S={sudoers}
if [ "$(cat "$S" 2>/dev/null)" != {text} ]; then
  printf '%s\n' {text} >"$S.lab-tmp"; chmod 440 "$S.lab-tmp"
  if command -v visudo >/dev/null 2>&1; then visudo -cqf "$S.lab-tmp" || {{ rm -f "$S.lab-tmp"; echo "visudo refused the sudoers drop-in" >&2; exit 1; }}; fi
  mv -f "$S.lab-tmp" "$S"; echo "passwordless sudo for $U"
fi
if command -v loginctl >/dev/null 2>&1 && [ ! -e "/var/lib/systemd/linger/$U" ]; then
  loginctl enable-linger "$U" 2>/dev/null && echo "lingering for $U" || :
fi
for f in /etc/subuid /etc/subgid; do
  touch "$f"
  if ! grep -q "^$U:" "$f"; then
    start=$(awk -F: 'BEGIN {{ m = 100000 }} {{ e = $2 + $3; if (e > m) m = e }} END {{ print m }}' "$f")
    echo "$U:$start:65536" >>"$f"; echo "subordinate ids for $U in $f"
  fi
done
"#,
        sudoers = q(&sudoers_path(user)),
        text = q(sudoers_text(user).trim_end()),
    ));
    s
}

/// Is the machine bootstrapped already? (key login as the user works,
/// sudo needs no password, the sshd drop-in is in place)
fn already_done(spec: &Spec) -> bool {
    let Ok(mut c) = SshTransport::connect_as(
        &target(spec, &spec.user, true),
        &HostKeyPolicy::Known,
        &Login::Keys,
        TIMEOUT,
        IO_TIMEOUT,
    ) else {
        return false;
    };
    let cmd = format!("cmp -s {} - ", lab_agent::quote(SSHD_DROP_IN));
    c.run(&cmd, &mut |w| w.write_all(SSHD_DROP_IN_TEXT.as_bytes()))
        .is_ok_and(|o| o.status == 0)
}

pub fn bootstrap(spec: &Spec) -> Result<Outcome, SyncError> {
    let mut steps = Vec::new();
    // A re-run: the user's key login and sudo work, the drop-in is there.
    if already_done(spec) {
        return Ok(Outcome::AlreadyDone);
    }
    // The host key is checked (known, expected or confirmed) before the
    // password is sent.
    let mut admin = SshTransport::connect_as(
        &target(spec, &spec.admin, false),
        &spec.host_key,
        &Login::Password(spec.password),
        TIMEOUT,
        IO_TIMEOUT,
    )?;
    let out = admin.run(
        &format!(
            "sh -c {}",
            lab_agent::quote(&setup_script(&spec.user, &spec.public_keys))
        ),
        &mut |_| Ok(()),
    )?;
    steps.extend(check(out, "creating the user")?.lines().map(str::to_string));

    // The user with the key, and sudo without a password.
    let mut user = SshTransport::connect_as(
        &target(spec, &spec.user, true),
        &HostKeyPolicy::Known,
        &Login::Keys,
        TIMEOUT,
        IO_TIMEOUT,
    )
    .map_err(|e| SyncError::Bootstrap {
        step: format!("logging in as `{}` with the key", spec.user),
        message: e.to_string(),
    })?;
    check(user.run("true", &mut |_| Ok(()))?, "sudo -n true")?;

    // Only now: keys only, no root login.
    let q = lab_agent::quote;
    let install = format!(
        "set -eu; d={d}; cat >\"$d.lab-tmp\"; chmod 644 \"$d.lab-tmp\"; \
         if cmp -s \"$d.lab-tmp\" \"$d\"; then rm -f \"$d.lab-tmp\"; exit 0; fi; \
         mkdir -p \"${{d%/*}}\"; mv -f \"$d.lab-tmp\" \"$d\"; \
         if ! sshd -t 2>&1; then rm -f \"$d\"; exit 1; fi; \
         systemctl reload ssh 2>/dev/null || systemctl reload sshd; echo changed",
        d = q(SSHD_DROP_IN)
    );
    let out = user.run(&install, &mut |w| w.write_all(SSHD_DROP_IN_TEXT.as_bytes()))?;
    let changed = check(out, "turning password and root logins off")?;
    if changed.contains("changed") {
        steps.push("password and root logins turned off".into());
    }
    let effective = check(user.run("sshd -T", &mut |_| Ok(()))?, "sshd -T")?;
    let off = |k: &str, v: &str| effective.lines().any(|l| l == format!("{k} {v}"));
    let verified = off("passwordauthentication", "no") && off("permitrootlogin", "no");
    let relogin = SshTransport::connect_as(
        &target(spec, &spec.user, true),
        &HostKeyPolicy::Known,
        &Login::Keys,
        TIMEOUT,
        IO_TIMEOUT,
    );
    if relogin.is_err() || !verified {
        // take it back over the root connection kept open meanwhile
        let _ = admin.run(
            &format!(
                "rm -f {}; systemctl reload ssh 2>/dev/null || systemctl reload sshd",
                q(SSHD_DROP_IN)
            ),
            &mut |_| Ok(()),
        );
        return Err(SyncError::Bootstrap {
            step: "checking the new sshd settings".into(),
            message: match relogin {
                Err(e) => format!("a key login failed afterwards ({e}); the drop-in was taken back"),
                Ok(_) => format!(
                    "sshd does not apply {SSHD_DROP_IN} (does sshd_config include sshd_config.d/*.conf?); \
                     the drop-in was taken back"
                ),
            },
        });
    }
    drop(admin);
    Ok(Outcome::Bootstrapped(steps))
}
