//! `lab bootstrap [USER@]HOST`: a fresh machine from its address and root
//! password becomes a machine of this project (see `lab_sync::bootstrap`).

use crate::diag::{self, Style};
use crate::Failure;
use lab_engine::Engine;
use lab_sync::bootstrap::{self, Outcome, Spec};
use lab_sync::HostKeyPolicy;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct BootstrapArgs {
    /// The fresh machine: `root@203.0.113.5` or `203.0.113.5`.
    destination: String,
    /// SSH port.
    #[arg(short, long, default_value_t = 22)]
    port: u16,
    /// The user to create (default: your own user name).
    #[arg(long = "as", value_name = "USER")]
    user: Option<String>,
    /// The machine's name in lab.toml (default: the host).
    #[arg(short, long, value_name = "NAME")]
    machine: Option<String>,
    /// Public key the user logs in with (default: ~/.ssh/id_ed25519.pub,
    /// id_ecdsa.pub or id_rsa.pub); its private key must be beside it.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Read the root password from this file (first line).
    #[arg(long, value_name = "FILE", conflicts_with = "password_env")]
    password_file: Option<PathBuf>,
    /// Read the root password from this environment variable.
    #[arg(long, value_name = "VAR")]
    password_env: Option<String>,
    /// Accept the host key only if its fingerprint is this one
    /// (`SHA256:...`); otherwise it is shown and you are asked.
    #[arg(long, value_name = "FINGERPRINT")]
    expect_fingerprint: Option<String>,
}

fn fail(style: Style, e: &dyn lab_config::Diagnose) -> Failure {
    eprint!("{}", diag::render(style, e, None));
    Failure::Partial
}

fn usage(style: Style, msg: &str) -> Failure {
    eprintln!("{} {msg}", style.red("error:"));
    Failure::Usage
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

pub fn run(engine: &Engine, style: Style, a: &BootstrapArgs, quiet: bool) -> Result<(), Failure> {
    let (admin, host) = match a.destination.split_once('@') {
        Some((u, h)) => (u.to_string(), h.to_string()),
        None => ("root".to_string(), a.destination.clone()),
    };
    if host.is_empty() || host.starts_with('-') {
        return Err(usage(style, &format!("`{}` is not a host", a.destination)));
    }
    let user = match &a.user {
        Some(u) => u.clone(),
        None => match std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty() && u != "root")
        {
            Some(u) => u,
            None => {
                return Err(usage(
                    style,
                    "say which user to create: `--as NAME` (you are root here)",
                ))
            }
        },
    };
    if user == "root" || !lab_config::valid_name(&user) {
        return Err(usage(
            style,
            &format!("`{user}` cannot be the user lab creates"),
        ));
    }
    let name = a.machine.clone().unwrap_or_else(|| host.clone());
    let public = match &a.key {
        Some(k) => k.clone(),
        None => ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"]
            .iter()
            .map(|n| home().join(".ssh").join(n))
            .find(|p| p.exists())
            .ok_or_else(|| usage(style, "no public key in ~/.ssh; name one with `--key FILE`"))?,
    };
    let identity = public.with_extension("");
    let keys: Vec<String> = std::fs::read_to_string(&public)
        .map_err(|e| usage(style, &format!("`{}`: {e}", public.display())))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    if !identity.exists() {
        return Err(usage(
            style,
            &format!("`{}` has no private key beside it", public.display()),
        ));
    }
    // The password: never from argv, never written, never printed.
    let password = if let Some(f) = &a.password_file {
        std::fs::read_to_string(f)
            .map_err(|e| usage(style, &format!("`{}`: {e}", f.display())))?
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    } else if let Some(v) = &a.password_env {
        std::env::var(v).map_err(|_| usage(style, &format!("`{v}` is not set")))?
    } else {
        rpassword::prompt_password(format!("{admin}@{host}'s password: ")).map_err(|_| {
            usage(
                style,
                "no terminal to ask for the password on: use --password-file or --password-env",
            )
        })?
    };
    let known_hosts = engine
        .project
        .settings
        .known_hosts
        .clone()
        .unwrap_or_else(|| home().join(".ssh/known_hosts"));
    let confirm = |fp: &str| -> bool {
        if !std::io::stdin().is_terminal() {
            eprintln!("The host key of {host} is {fp}; there is no terminal to confirm it: use --expect-fingerprint");
            return false;
        }
        eprint!("The host key of {host} is {fp}.\nAccept it and continue? [y/N] ");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).is_ok() && line.trim().eq_ignore_ascii_case("y")
    };
    let host_key = match &a.expect_fingerprint {
        Some(fp) => HostKeyPolicy::Expect(fp),
        None => HostKeyPolicy::Confirm(&confirm),
    };
    let spec = Spec {
        host: host.clone(),
        port: a.port,
        admin,
        password: &password,
        user: user.clone(),
        public_keys: keys,
        identity: identity.clone(),
        known_hosts,
        host_key,
    };
    let outcome = bootstrap::bootstrap(&spec).map_err(|e| fail(style, &e))?;

    // The machine in the project: its drop-ins as sources (so drift on
    // them is seen), lab.toml, its facts.
    let mdir = engine.project.machines_dir().join(&name);
    let write = |rel: &str, text: &str, mode: u32| -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let p = mdir.join(rel.trim_start_matches('/'));
        if std::fs::read_to_string(&p).ok().as_deref() == Some(text) {
            return Ok(());
        }
        std::fs::create_dir_all(p.parent().expect("below the machine dir"))?;
        std::fs::write(&p, text)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
    };
    write(
        &bootstrap::sudoers_path(&user),
        &bootstrap::sudoers_text(&user),
        0o440,
    )
    .and_then(|()| write(bootstrap::SSHD_DROP_IN, bootstrap::SSHD_DROP_IN_TEXT, 0o644))
    .map_err(|e| usage(style, &format!("`{}`: {e}", mdir.display())))?;
    let added = lab_config::edit::add_machine(
        &engine.project.file,
        &lab_config::edit::NewMachine {
            name: &name,
            host: &host,
            port: a.port,
            user: &user,
            become_sudo: true,
            identity: a.key.as_ref().and(identity.to_str()),
        },
    )
    .map_err(|e| fail(style, &e))?;
    let project = lab_config::Project::load(&engine.project.root).map_err(|e| fail(style, &e))?;
    if let Some(m) = project.machine(&name) {
        let mut t = lab_deploy::connect(&project, m, None, false).map_err(|e| fail(style, &e))?;
        lab_sync::gather_facts(t.as_mut(), engine.lab_dir(), &name).map_err(|e| fail(style, &e))?;
    }
    if !quiet {
        match outcome {
            Outcome::AlreadyDone => {
                println!("{name}: already bootstrapped; nothing changed on the machine")
            }
            Outcome::Bootstrapped(steps) => {
                for s in steps {
                    println!("{name}: {s}");
                }
                println!(
                    "{name}: bootstrapped: {user}@{host} with {} and passwordless sudo",
                    identity.display()
                );
            }
        }
        if added {
            println!("{name}: added to {}", diag::shown(&engine.project.file));
        }
    }
    Ok(())
}
