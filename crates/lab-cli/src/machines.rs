//! `lab machine create|destroy|ls` (container machines: lab.toml's `on =
//! "HOST"`), `lab ssh NAME [--config]`, and the part of `lab sync` that
//! creates declared containers that are missing (and, with
//! `--destroy-undeclared`, destroys those no longer declared).

use crate::diag::{self, Style};
use crate::Failure;
use lab_config::Machine;
use lab_engine::Engine;
use lab_machines::Listed;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum MachineCmd {
    /// Create the container machines lab.toml declares (NAMEs, or all of
    /// them, or those on --on HOST) that do not exist yet; each is booted
    /// when this returns.
    Create {
        names: Vec<String>,
        /// Only those on this host.
        #[arg(long, value_name = "HOST")]
        on: Option<String>,
        /// Do not wait for them to boot.
        #[arg(long)]
        no_wait: bool,
    },
    /// Destroy container machines: unit, mount, network, files and their
    /// writable layer (their data). A name no longer in lab.toml needs
    /// --on HOST.
    Destroy {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long, value_name = "HOST")]
        on: Option<String>,
        /// Yes, their data goes too (required).
        #[arg(long)]
        yes: bool,
    },
    /// The container machines on each host (or on --on HOST): unit and
    /// system state, address, image; declared ones missing, and ones there
    /// that lab.toml no longer declares.
    Ls {
        #[arg(long, value_name = "HOST")]
        on: Option<String>,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct SshArgs {
    /// The machine.
    name: String,
    /// Print the `~/.ssh/config` block(s) that reach it instead (with
    /// `ProxyJump` through its host for a container).
    #[arg(long)]
    config: bool,
    /// A command to run instead of a shell.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        conflicts_with = "config"
    )]
    command: Vec<String>,
}

fn usage(style: Style, msg: &str) -> Failure {
    eprintln!("{}: {msg}", style.red("error"));
    Failure::Usage
}

fn known_hosts(engine: &Engine) -> PathBuf {
    lab_core::LabDir::at(engine.lab_dir()).machines_known_hosts()
}

fn host_of<'a>(engine: &'a Engine, style: Style, name: &str) -> Result<&'a Machine, Failure> {
    let Some(h) = engine.project.machine(name) else {
        return Err(usage(style, &format!("no machine `{name}` in lab.toml")));
    };
    if h.container.is_some() {
        return Err(usage(
            style,
            &format!("`{name}` is a container, not a host"),
        ));
    }
    Ok(h)
}

/// Declared containers, by host in file order, filtered.
fn declared<'a>(
    engine: &'a Engine,
    style: Style,
    names: &[String],
    on: Option<&str>,
) -> Result<Vec<(&'a Machine, Vec<&'a Machine>)>, Failure> {
    let p = &engine.project;
    if let Some(h) = on {
        host_of(engine, style, h)?;
    }
    for n in names {
        match p.machine(n) {
            Some(m) if m.container.is_some() => {}
            Some(_) => {
                return Err(usage(
                    style,
                    &format!("`{n}` is not a container machine (no `on = \"HOST\"` in lab.toml)"),
                ))
            }
            None => return Err(usage(style, &format!("no machine `{n}` in lab.toml"))),
        }
    }
    let mut out: Vec<(&Machine, Vec<&Machine>)> = Vec::new();
    for m in &p.machines {
        let Some(c) = &m.container else { continue };
        if !names.is_empty() && !names.contains(&m.name) {
            continue;
        }
        if on.is_some_and(|h| h != c.on) {
            continue;
        }
        let host = p.machine(&c.on).expect("lab-config checked the host");
        match out.iter_mut().find(|(h, _)| h.name == host.name) {
            Some((_, v)) => v.push(m),
            None => out.push((host, vec![m])),
        }
    }
    Ok(out)
}

fn connect_host(
    engine: &Engine,
    style: Style,
    host: &Machine,
) -> Result<Box<dyn lab_sync::Transport>, Failure> {
    let ssh_config = diag::ssh_config(style)?;
    lab_deploy::connect(&engine.project, host, ssh_config.as_ref(), false).map_err(|e| {
        eprint!(
            "{}",
            diag::render(style, &e, Some(&format!("host `{}`", host.name)))
        );
        Failure::Partial
    })
}

fn fail(style: Style, e: &lab_machines::MachineError) -> Failure {
    eprintln!("{}: {e}", style.red("error"));
    Failure::Partial
}

/// Ship the project's images that `wanted` are based on to `host` (only
/// what its store lacks; a base that moved takes effect at each
/// container's next start). Returns the images that could not be shipped.
fn ship_bases(
    engine: &Engine,
    style: Style,
    t: &mut dyn lab_sync::Transport,
    host: &Machine,
    wanted: &[&Machine],
    quiet: bool,
) -> Vec<String> {
    let mut names: Vec<&str> = wanted
        .iter()
        .filter_map(|m| m.container.as_ref()?.lab_image())
        .collect();
    names.sort_unstable();
    names.dedup();
    let lab = lab_core::LabDir::at(engine.lab_dir());
    let images_dir = engine.project.root.join(lab_pods::IMAGES_DIR);
    let mut failed = Vec::new();
    for n in names {
        match lab_sync::image_store::ship_base(
            t,
            &host.name,
            &images_dir,
            &lab,
            engine.project.settings.generations,
            n,
        ) {
            Ok(Some(note)) if !quiet => eprintln!("{}: {note}", host.name),
            Ok(_) => {}
            Err(e) => {
                eprint!(
                    "{}",
                    diag::render(style, &e, Some(&format!("host `{}`", host.name)))
                );
                failed.push(n.to_string());
            }
        }
    }
    failed
}

/// Create the containers of `host` among `wanted` that its list lacks
/// (the project's images they are based on shipped first). Returns the
/// names created.
pub fn create_missing(
    engine: &Engine,
    style: Style,
    t: &mut dyn lab_sync::Transport,
    host: &Machine,
    wanted: &[&Machine],
    no_wait: bool,
    quiet: bool,
) -> Result<Vec<String>, Failure> {
    let unshipped = ship_bases(engine, style, t, host, wanted, quiet);
    let there = lab_machines::list_names(t, &host.name).map_err(|e| fail(style, &e))?;
    let range = host.machines_range.expect("a host has a range");
    let mut made = Vec::new();
    let mut failed = !unshipped.is_empty();
    for m in wanted {
        if m.container
            .as_ref()
            .and_then(|c| c.lab_image())
            .is_some_and(|i| unshipped.iter().any(|u| u == i))
        {
            continue;
        }
        let c = m.container.as_ref().expect("a container");
        let listed = there.contains(&m.name);
        match lab_machines::ensure(
            t,
            &host.name,
            &m.name,
            c,
            &range,
            no_wait,
            listed,
            &known_hosts(engine),
        ) {
            Ok(true) => made.push(m.name.clone()),
            Ok(false) => {}
            Err(e) => {
                fail(style, &e);
                failed = true;
            }
        }
    }
    if failed {
        return Err(Failure::Partial);
    }
    Ok(made)
}

pub fn machine(
    engine: &Engine,
    style: Style,
    cmd: &MachineCmd,
    quiet: bool,
) -> Result<(), Failure> {
    match cmd {
        MachineCmd::Create { names, on, no_wait } => {
            let mut failed = false;
            for (host, wanted) in declared(engine, style, names, on.as_deref())? {
                let mut t = match connect_host(engine, style, host) {
                    Ok(t) => t,
                    Err(_) => {
                        failed = true;
                        continue;
                    }
                };
                match create_missing(engine, style, t.as_mut(), host, &wanted, *no_wait, quiet) {
                    Ok(made) => {
                        if !quiet {
                            for n in &made {
                                println!("created {n} on {}", host.name);
                            }
                            for m in wanted.iter().filter(|m| !made.contains(&m.name)) {
                                println!("{} exists on {}", m.name, host.name);
                            }
                        }
                    }
                    Err(_) => failed = true,
                }
            }
            if failed {
                Err(Failure::Partial)
            } else {
                Ok(())
            }
        }
        MachineCmd::Destroy { names, on, yes } => {
            if !yes {
                return Err(usage(
                    style,
                    "destroying a container machine deletes its writable layer (its data): add --yes",
                ));
            }
            // (every name resolved first; then one command per host)
            let mut by_host: Vec<(&Machine, Vec<&str>)> = Vec::new();
            for n in names {
                let host = match (engine.project.machine(n), on) {
                    (Some(m), _) if m.container.is_some() => {
                        let h = &m.container.as_ref().unwrap().on;
                        if on.as_ref().is_some_and(|o| o != h) {
                            return Err(usage(
                                style,
                                &format!("`{n}` is on `{h}`, not `{}`", on.as_ref().unwrap()),
                            ));
                        }
                        host_of(engine, style, h)?
                    }
                    (Some(_), _) => {
                        return Err(usage(style, &format!("`{n}` is not a container machine")))
                    }
                    (None, Some(h)) => host_of(engine, style, h)?,
                    (None, None) => {
                        return Err(usage(
                            style,
                            &format!(
                                "`{n}` is not in lab.toml: say which host it is on with --on HOST"
                            ),
                        ))
                    }
                };
                match by_host.iter_mut().find(|(h, _)| h.name == host.name) {
                    Some((_, v)) => v.push(n),
                    None => by_host.push((host, vec![n])),
                }
            }
            let mut failed = false;
            for (host, names) in by_host {
                let mut t = connect_host(engine, style, host)?;
                for (n, r) in lab_machines::destroy_many(t.as_mut(), &host.name, &names) {
                    match r {
                        Ok(()) => {
                            lab_machines::unpin(&known_hosts(engine), n)
                                .map_err(|e| fail(style, &e))?;
                            if !quiet {
                                println!("destroyed {n} on {}", host.name);
                            }
                        }
                        Err(e) => {
                            fail(style, &e);
                            failed = true;
                        }
                    }
                }
            }
            if failed {
                Err(Failure::Partial)
            } else {
                Ok(())
            }
        }
        MachineCmd::Ls { on, json } => {
            let p = &engine.project;
            let hosts: Vec<&Machine> = match on {
                Some(h) => vec![host_of(engine, style, h)?],
                None => p
                    .machines
                    .iter()
                    .filter(|h| {
                        p.machines
                            .iter()
                            .any(|m| m.container.as_ref().is_some_and(|c| c.on == h.name))
                    })
                    .collect(),
            };
            let mut rows: Vec<serde_json::Value> = Vec::new();
            let mut failed = false;
            for host in hosts {
                let mut t = match connect_host(engine, style, host) {
                    Ok(t) => t,
                    Err(_) => {
                        failed = true;
                        continue;
                    }
                };
                let there = match lab_machines::list(t.as_mut(), &host.name) {
                    Ok(l) => l,
                    Err(e) => {
                        fail(style, &e);
                        failed = true;
                        continue;
                    }
                };
                let row = |l: &Listed, declared: bool| {
                    serde_json::json!({
                        "name": l.name, "on": host.name, "unit": l.unit, "system": l.system,
                        "address": l.address, "image": l.image, "declared": declared,
                    })
                };
                for l in &there {
                    let declared = p
                        .machine(&l.name)
                        .and_then(|m| m.container.as_ref())
                        .is_some_and(|c| c.on == host.name);
                    rows.push(row(l, declared));
                }
                for m in &p.machines {
                    let Some(c) = &m.container else { continue };
                    if c.on == host.name && !there.iter().any(|l| l.name == m.name) {
                        rows.push(serde_json::json!({
                            "name": m.name, "on": host.name, "unit": "missing", "system": "-",
                            "address": c.address.to_string(), "image": c.image, "declared": true,
                        }));
                    }
                }
            }
            if *json {
                println!("{}", serde_json::Value::Array(rows));
            } else {
                println!(
                    "{:<16} {:<12} {:<9} {:<10} {:<15} IMAGE",
                    "NAME", "ON", "UNIT", "SYSTEM", "ADDRESS"
                );
                for r in &rows {
                    let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
                    let mut image = s("image");
                    if r["declared"] == false {
                        image.push_str("  (not in lab.toml)");
                    }
                    println!(
                        "{:<16} {:<12} {:<9} {:<10} {:<15} {}",
                        s("name"),
                        s("on"),
                        s("unit"),
                        s("system"),
                        s("address"),
                        image
                    );
                }
            }
            if failed {
                Err(Failure::Partial)
            } else {
                Ok(())
            }
        }
    }
}

/// The `Host` block of a machine reached directly.
fn direct_block(engine: &Engine, m: &Machine) -> String {
    let mut s = format!("Host {}\n    HostName {}\n", m.name, m.host);
    s.push_str(&format!("    User {}\n", m.user));
    if m.port != 22 {
        s.push_str(&format!("    Port {}\n", m.port));
    }
    for i in m
        .identity
        .iter()
        .chain(engine.project.settings.identity.iter())
    {
        s.push_str(&format!("    IdentityFile {}\n", i.display()));
    }
    if let Some(k) = &engine.project.settings.known_hosts {
        s.push_str(&format!("    UserKnownHostsFile {}\n", k.display()));
    }
    s
}

pub fn ssh(engine: &Engine, style: Style, args: &SshArgs) -> Result<(), Failure> {
    let p = &engine.project;
    let Some(m) = p.machine(&args.name) else {
        return Err(usage(
            style,
            &format!("no machine `{}` in lab.toml", args.name),
        ));
    };
    if args.config {
        match &m.container {
            None => print!("{}", direct_block(engine, m)),
            Some(c) => {
                let host = p.machine(&c.on).expect("checked");
                print!("{}", direct_block(engine, host));
                println!();
                println!("Host {}", m.name);
                println!("    HostName {}", c.address);
                println!("    User root");
                println!("    ProxyJump {}", host.name);
                println!("    HostKeyAlias {}", m.name);
                println!("    UserKnownHostsFile {}", known_hosts(engine).display());
                println!("    StrictHostKeyChecking yes");
                for i in host.identity.iter().chain(p.settings.identity.iter()) {
                    println!("    IdentityFile {}", i.display());
                }
            }
        }
        return Ok(());
    }
    let mut cmd = std::process::Command::new("ssh");
    match &m.container {
        None => {
            cmd.args(["-p", &m.port.to_string(), "-l", &m.user]);
            for i in m.identity.iter().chain(p.settings.identity.iter()) {
                cmd.arg("-i").arg(i);
            }
            if let Some(k) = &p.settings.known_hosts {
                cmd.arg("-o")
                    .arg(format!("UserKnownHostsFile={}", k.display()));
            }
            cmd.arg("--").arg(&m.host);
        }
        Some(c) => {
            let host = p.machine(&c.on).expect("checked");
            let ssh_config = diag::ssh_config(style)?;
            let hop = lab_deploy::hop(p, m, c);
            let (proxy, ht) = lab_sync::via::proxy_command(
                &lab_deploy::ssh_spec(p, host),
                ssh_config.as_ref(),
                &hop,
            )
            .map_err(|e| {
                eprint!("{}", diag::render(style, &e, None));
                Failure::Partial
            })?;
            for i in ht.identities.iter().filter(|i| i.exists()) {
                cmd.arg("-i").arg(i);
            }
            cmd.arg("-o")
                .arg(format!("ProxyCommand={proxy}"))
                .arg("-o")
                .arg(format!("HostKeyAlias={}", m.name))
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", hop.known_hosts.display()))
                .args(["-o", "StrictHostKeyChecking=yes", "-l", "root", "--"])
                .arg(&hop.address);
        }
    }
    cmd.args(&args.command);
    let err = std::os::unix::process::CommandExt::exec(&mut cmd);
    eprintln!("{}: cannot run ssh: {err}", style.red("error"));
    Err(Failure::Partial)
}

/// Before `lab sync`: create the selected container machines that are
/// missing on their hosts; on the selected hosts, destroy the containers
/// lab.toml no longer declares when `destroy_undeclared`, else warn about
/// them. Problems are shown; the sync goes on (a container that could not
/// be made fails there).
pub fn before_sync(
    engine: &Engine,
    style: Style,
    names: &[String],
    destroy_undeclared: bool,
    quiet: bool,
) {
    let p = &engine.project;
    let selected: Vec<&Machine> = names.iter().filter_map(|n| p.machine(n)).collect();
    let mut hosts: Vec<&Machine> = Vec::new();
    for m in &selected {
        let h = match &m.container {
            Some(c) => p.machine(&c.on).expect("checked"),
            None => *m,
        };
        if !hosts.iter().any(|x| x.name == h.name) {
            hosts.push(h);
        }
    }
    for host in hosts {
        let wanted: Vec<&Machine> = selected
            .iter()
            .copied()
            .filter(|m| m.container.as_ref().is_some_and(|c| c.on == host.name))
            .collect();
        let host_selected = selected.iter().any(|m| m.name == host.name);
        let has_declared = p
            .machines
            .iter()
            .any(|m| m.container.as_ref().is_some_and(|c| c.on == host.name));
        let check_undeclared = host_selected && (destroy_undeclared || has_declared);
        if wanted.is_empty() && !check_undeclared {
            continue;
        }
        let Ok(mut t) = connect_host(engine, style, host) else {
            continue;
        };
        if !wanted.is_empty() {
            if let Ok(made) = create_missing(engine, style, t.as_mut(), host, &wanted, false, quiet)
            {
                if !quiet {
                    for n in made {
                        eprintln!("created {n} on {}", host.name);
                    }
                }
            }
        }
        if !check_undeclared {
            continue;
        }
        let Ok(there) =
            lab_machines::list_names(t.as_mut(), &host.name).map_err(|e| fail(style, &e))
        else {
            continue;
        };
        for l in &there {
            let declared = p
                .machine(l)
                .and_then(|m| m.container.as_ref())
                .is_some_and(|c| c.on == host.name);
            if declared {
                continue;
            }
            if destroy_undeclared {
                match lab_machines::destroy(t.as_mut(), &host.name, l) {
                    Ok(()) => {
                        let _ = lab_machines::unpin(&known_hosts(engine), l);
                        if !quiet {
                            eprintln!("destroyed {} on {} (not in lab.toml)", l, host.name);
                        }
                    }
                    Err(e) => {
                        fail(style, &e);
                    }
                }
            } else {
                eprint!(
                    "{}",
                    diag::warning(
                        style,
                        Some(&format!("host `{}`", host.name)),
                        &format!(
                            "container machine `{}` is not in lab.toml; `lab sync --destroy-undeclared` destroys it and its data",
                            l
                        ),
                    )
                );
            }
        }
    }
}
