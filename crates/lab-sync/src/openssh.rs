//! A machine's SSH settings exactly as OpenSSH resolves them: `ssh -G`
//! answers `Host` and `Match` blocks, `Include`, first-value-wins and the
//! defaults, the way `ssh` itself would. Values set in lab.toml go in as
//! `-p` and `-l`, which win over the config file, as on ssh's command line.
//! Without the OpenSSH client, lab falls back to parsing the file itself
//! (see [`crate::ssh::SshTarget::resolve`]).
//!
//! Honoured: `HostName`, `User`, `Port`, `IdentityFile`, `IdentitiesOnly`,
//! `IdentityAgent`, `ProxyJump`, `ProxyCommand`, `UserKnownHostsFile`,
//! `GlobalKnownHostsFile`, `StrictHostKeyChecking` (`accept-new`; `no`
//! adds unknown keys with a warning, a changed key is always refused),
//! `HostKeyAlias`, `ConnectTimeout`, `ServerAliveInterval` and
//! `ServerAliveCountMax` (as TCP keepalive probes). Refused (the machine
//! is not reached another way):
//! `CertificateFile`, `PKCS11Provider`, `SecurityKeyProvider` other than
//! the built-in one.

use crate::ssh::{expand, home, SshSpec, SshTarget};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// `ssh -G`'s answer: (keyword in lower case, value), in its order.
pub(crate) type Effective = Vec<(String, String)>;

/// How long an answer of `ssh -G` is reused (a long-running `lab watch`
/// or console sees a file the config includes, edited, after that; the
/// config file itself is part of the question).
const ANSWER_FOR: Duration = Duration::from_secs(5);

/// Ask the OpenSSH client (`None` when there is none, or it refused),
/// once per question within [`ANSWER_FOR`]: the containers of one host
/// each resolve the host, and a fan-out to 50 of them ran `ssh -G` 50
/// times (a process and a read of the config each, all at once).
pub(crate) fn effective(
    host: &str,
    port: Option<u16>,
    user: Option<&str>,
    config: Option<&Path>,
) -> Option<Effective> {
    type Answer = Arc<OnceLock<Option<Effective>>>;
    static ANSWERS: OnceLock<Mutex<HashMap<String, (Instant, Answer)>>> = OnceLock::new();
    // (the config file's bytes are part of the question: an edited file
    // is asked again at once; what it includes is not, for 5 s)
    let file = match config {
        Some(c) => Some(c.to_path_buf()),
        None => Some(home().join(".ssh/config")),
    };
    let text = file.and_then(|f| std::fs::read(f).ok()).unwrap_or_default();
    let key = format!(
        "{host}\0{port:?}\0{user:?}\0{config:?}\0{}",
        lab_core::Digest::of(&text).to_hex()
    );
    let cell = {
        let mut answers = ANSWERS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        answers.retain(|_, (at, _)| now.duration_since(*at) < ANSWER_FOR);
        answers
            .entry(key)
            .or_insert_with(|| (now, Answer::default()))
            .1
            .clone()
    };
    // (asked outside the map's lock: other hosts are asked meanwhile)
    cell.get_or_init(|| ask(host, port, user, config)).clone()
}

fn ask(
    host: &str,
    port: Option<u16>,
    user: Option<&str>,
    config: Option<&Path>,
) -> Option<Effective> {
    let mut c = Command::new("ssh");
    c.arg("-G");
    if let Some(f) = config {
        c.arg("-F").arg(f);
    }
    if let Some(p) = port {
        c.arg("-p").arg(p.to_string());
    }
    if let Some(u) = user {
        c.arg("-l").arg(u);
    }
    let out = c
        .arg("--")
        .arg(host)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(parse(&String::from_utf8_lossy(&out.stdout)))
}

pub(crate) fn parse(text: &str) -> Effective {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_ascii_lowercase(), v.to_string()))
        })
        .collect()
}

fn first<'a>(g: &'a Effective, key: &str) -> Option<&'a str> {
    g.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn all<'a>(g: &'a Effective, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    g.iter()
        .filter(move |(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// OpenSSH's `%` tokens in `v`: each `%c` of `tokens` becomes its value,
/// `%%` a `%`; any other `%c` stays as it is.
pub(crate) fn percent_tokens(v: &str, tokens: &[(char, &str)]) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(t) => match tokens.iter().find(|(k, _)| *k == t) {
                Some((_, value)) => out.push_str(value),
                None => {
                    out.push('%');
                    out.push(t);
                }
            },
            None => out.push('%'),
        }
    }
    out
}

/// `%d`, `%u`, `%h`, `%r`, `%n`, `%%` and a leading `~` in a file name.
fn expand_tokens(v: &str, host: &str, user: &str, alias: &str) -> PathBuf {
    let local_user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let home = home().display().to_string();
    let out = percent_tokens(
        v,
        &[
            ('d', &home),
            ('u', &local_user),
            ('h', host),
            ('r', user),
            ('n', alias),
        ],
    );
    expand(Path::new(&out))
}

/// A `ProxyJump` hop as `ssh -G` prints it (`user@[10.0.0.1]`,
/// `[::1]:2222`) as a destination `ssh` takes on its command line.
fn jump_destination(hop: &str) -> String {
    if hop.starts_with("ssh://") {
        return hop.to_string();
    }
    let (user, rest) = match hop.rsplit_once('@') {
        Some((u, r)) => (Some(u), r),
        None => (None, hop),
    };
    let (host, port) = match rest.strip_prefix('[').and_then(|r| r.split_once(']')) {
        Some((h, tail)) => (h, tail.strip_prefix(':')),
        None => match rest.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            _ => (rest, None),
        },
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    match (user, port) {
        (None, None) => host,
        (u, p) => format!(
            "ssh://{}{host}{}",
            u.map(|u| format!("{u}@")).unwrap_or_default(),
            p.map(|p| format!(":{p}")).unwrap_or_default()
        ),
    }
}

/// The target for machine `m` from `ssh -G`'s answer `g`.
pub(crate) fn target(m: &SshSpec, g: &Effective, config: Option<&Path>) -> SshTarget {
    let host = first(g, "hostname").unwrap_or(&m.host).to_string();
    let port = first(g, "port").and_then(|p| p.parse().ok()).unwrap_or(22);
    let user = first(g, "user").unwrap_or("root").to_string();
    // lab.toml's user wins; without one lab's default is root, not the
    // local user that ssh would take
    let user = match (&m.user, config_sets(config, "user")) {
        (Some(u), _) => u.clone(),
        (None, true) => user,
        (None, false) => "root".into(),
    };
    let exp = |v: &str| expand_tokens(v, &host, &user, &m.host);
    let mut identities: Vec<PathBuf> = Vec::new();
    identities.extend(m.identities.iter().map(|p| expand(p)));
    identities.extend(all(g, "identityfile").map(exp));
    let mut user_files: Vec<PathBuf> = match &m.known_hosts {
        Some(k) => vec![k.clone()],
        None => first(g, "userknownhostsfile")
            .map(|v| v.split_whitespace().map(exp).collect())
            .unwrap_or_else(|| vec![home().join(".ssh/known_hosts")]),
    };
    if user_files.is_empty() {
        user_files.push(home().join(".ssh/known_hosts"));
    }
    let known_hosts = user_files.remove(0);
    let mut also = user_files;
    also.extend(
        first(g, "globalknownhostsfile")
            .map(|v| v.split_whitespace().map(exp).collect::<Vec<_>>())
            .unwrap_or_default(),
    );
    let none = |v: &str| v.eq_ignore_ascii_case("none");
    let proxy_jump = first(g, "proxyjump")
        .filter(|v| !none(v))
        .map(|v| v.split(',').map(jump_destination).collect())
        .unwrap_or_default();
    let proxy_command = first(g, "proxycommand")
        .filter(|v| !none(v))
        .map(str::to_string);
    let strict = first(g, "stricthostkeychecking").unwrap_or("ask");
    let identity_agent = first(g, "identityagent").and_then(|v| {
        if v == "SSH_AUTH_SOCK" {
            None
        } else if none(v) {
            Some(PathBuf::from("none"))
        } else if let Some(var) = v.strip_prefix('$') {
            std::env::var_os(var).map(PathBuf::from)
        } else {
            Some(exp(v))
        }
    });
    let refused = ["certificatefile", "pkcs11provider"]
        .iter()
        .find_map(|d| first(g, d).filter(|v| !none(v)).map(|v| (*d, v)))
        .or_else(|| {
            first(g, "securitykeyprovider")
                .filter(|v| *v != "internal")
                .map(|v| ("securitykeyprovider", v))
        })
        .map(|(d, v)| refusal(d, v, config));
    SshTarget {
        identities,
        proxy_jump,
        proxy_command,
        known_hosts_also: also,
        host_key_alias: first(g, "hostkeyalias").map(str::to_string),
        accept_new: matches!(strict, "accept-new" | "no" | "off" | "false"),
        identities_only: first(g, "identitiesonly") == Some("yes"),
        identity_agent,
        server_alive: first(g, "serveraliveinterval")
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|i| *i > 0)
            .map(|i| {
                let count = first(g, "serveralivecountmax")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(3);
                (i, count)
            }),
        strict_off: matches!(strict, "no" | "off" | "false"),
        connect_timeout: first(g, "connecttimeout")
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs),
        alias: m.host.clone(),
        refused,
        control_path: first(g, "controlpath").filter(|v| !none(v)).map(exp),
        ..SshTarget::new(&host, port, &user, known_hosts)
    }
}

/// Whether a config file could set `key` for some host: `ssh -G` always
/// answers a `User` (the local user when nothing says otherwise), and lab's
/// own default is root.
fn config_sets(config: Option<&Path>, key: &str) -> bool {
    let user_file = config
        .map(Path::to_path_buf)
        .unwrap_or_else(|| home().join(".ssh/config"));
    let mut files = vec![user_file];
    if config.is_none() {
        files.push(PathBuf::from("/etc/ssh/ssh_config"));
    }
    files.iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().any(|l| {
                l.split(|c: char| c.is_whitespace() || c == '=')
                    .find(|w| !w.is_empty())
                    .is_some_and(|w| {
                        w.eq_ignore_ascii_case(key) || w.eq_ignore_ascii_case("include")
                    })
            })
        })
    })
}

/// Where the config says `directive` (its first line), for the refusal.
fn refusal(directive: &str, value: &str, config: Option<&Path>) -> (String, String) {
    let path = config
        .map(Path::to_path_buf)
        .unwrap_or_else(|| home().join(".ssh/config"));
    let place = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| {
            t.lines().position(|l| {
                l.trim_start()
                    .split(|c: char| c.is_whitespace() || c == '=')
                    .next()
                    .is_some_and(|w| w.eq_ignore_ascii_case(directive))
            })
        })
        .map(|i| format!("{}:{}", path.display(), i + 1))
        .unwrap_or_else(|| format!("{} (or a file it includes)", path.display()));
    let name = match directive {
        "certificatefile" => "CertificateFile",
        "pkcs11provider" => "PKCS11Provider",
        _ => "SecurityKeyProvider",
    };
    (
        place,
        format!(
            "`{name} {value}`: lab cannot authenticate this way, so it does not reach this machine \
             at all rather than another way"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        std::env::set_var("USER", "me");
        let p = expand_tokens("/k/%h-%r-%n-%u-%%", "10.0.0.1", "root", "web");
        assert_eq!(p, PathBuf::from("/k/10.0.0.1-root-web-me-%"));
    }

    #[test]
    fn jump_destinations() {
        assert_eq!(jump_destination("root@[10.0.0.1]"), "ssh://root@10.0.0.1");
        assert_eq!(jump_destination("[::1]:2222"), "ssh://[::1]:2222");
        assert_eq!(jump_destination("h1:2222"), "ssh://h1:2222");
        assert_eq!(jump_destination("h2"), "h2");
        assert_eq!(jump_destination("ssh://a@b:1"), "ssh://a@b:1");
    }

    #[test]
    fn parsing() {
        let g = parse("hostname 10.0.0.1\nidentityfile ~/.ssh/a\nidentityfile ~/.ssh/b\n");
        assert_eq!(first(&g, "hostname"), Some("10.0.0.1"));
        assert_eq!(all(&g, "identityfile").count(), 2);
    }
}
