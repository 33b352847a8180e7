//! `lab console`: start the web console (lab-console) and say where it
//! listens; `lab console adduser|passwd` for accounts from the command
//! line (the first superadmin). A password is read from the terminal
//! without echo, or as one line of stdin when stdin is not a terminal.

use crate::diag::{self, Style};
use crate::Failure;
use lab_console::{Console, Options, Store};
use lab_engine::Engine;
use std::io::{BufRead, IsTerminal};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ConsoleCmd {
    #[command(subcommand)]
    action: Option<ConsoleAction>,
    /// Address to serve on; anything but loopback needs --tls-cert and
    /// --tls-key.
    #[arg(long, value_name = "ADDR", default_value = lab_console::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// PEM certificate chain for HTTPS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum ConsoleAction {
    /// Add a console user (with --superadmin: every right).
    Adduser {
        name: String,
        #[arg(long)]
        superadmin: bool,
    },
    /// Set a console user's password (their sessions end).
    Passwd { name: String },
}

fn password(style: Style) -> Result<String, Failure> {
    let fail = |e: std::io::Error| {
        eprintln!(
            "{}",
            style.red(&format!("error: reading the password: {e}"))
        );
        Failure::Usage
    };
    if std::io::stdin().is_terminal() {
        let a = rpassword::prompt_password("Password: ").map_err(fail)?;
        let b = rpassword::prompt_password("Again: ").map_err(fail)?;
        if a != b {
            eprintln!("{}", style.red("error: the two passwords differ"));
            return Err(Failure::Usage);
        }
        Ok(a)
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map_err(fail)?;
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    }
}

/// A long-running server that hashes passwords (argon2: 19 MiB a login)
/// on a thread per request: glibc would raise its mmap threshold after the
/// first such block is freed, then serve the next ones from per-thread
/// arenas that it never gives back (200 MB resident after 20 logins).
/// A fixed threshold keeps big blocks mmapped (returned when freed), and
/// two arenas bound what threads keep.
fn memory_policy() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before the
    // console starts its threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

pub fn console(engine: Engine, style: Style, cmd: &ConsoleCmd, quiet: bool) -> Result<(), Failure> {
    let lab_dir = engine.lab_dir().to_path_buf();
    let fail = |e: &lab_console::ConsoleError| {
        eprint!("{}", diag::render(style, e, None));
        Failure::Usage
    };
    match &cmd.action {
        Some(ConsoleAction::Adduser { name, superadmin }) => {
            let store = Store::open(&lab_console::db_path(&lab_dir)).map_err(|e| fail(&e))?;
            let p = password(style)?;
            store
                .add_user(name, &p, *superadmin)
                .map_err(|e| fail(&e))?;
            if !quiet {
                println!(
                    "added {}user `{name}`",
                    if *superadmin { "superadmin " } else { "" }
                );
            }
            Ok(())
        }
        Some(ConsoleAction::Passwd { name }) => {
            let store = Store::open(&lab_console::db_path(&lab_dir)).map_err(|e| fail(&e))?;
            let p = password(style)?;
            store.set_password(name, &p).map_err(|e| fail(&e))?;
            if !quiet {
                println!("password of `{name}` set; its sessions ended");
            }
            Ok(())
        }
        None => {
            let mut opts = Options::new(engine.project.root.clone(), lab_dir);
            opts.listen = cmd.listen;
            opts.tls = cmd.tls_cert.clone().zip(cmd.tls_key.clone());
            drop(engine);
            memory_policy();
            let console = Console::start(opts).map_err(|e| fail(&e))?;
            if !quiet {
                println!(
                    "lab console on {}://{}/",
                    if console.https() { "https" } else { "http" },
                    console.addr()
                );
            }
            console.run();
            Ok(())
        }
    }
}
