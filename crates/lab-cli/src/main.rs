//! The `lab` binary: parses arguments (clap), calls the engine and the
//! syncer, draws progress and renders errors. The only crate that prints.
//!
//! Exit codes: 0 success; 1 some machine failed (its error was shown, the
//! other machines were done); 2 the invocation or the project is wrong
//! (usage, `lab.toml`, unknown machine, lock held).

mod adopt;
mod bootstrap;
mod console;
mod diag;
mod explain;
mod facts;
mod images;
mod init;
mod json;
mod logs;
mod ls;
mod machines;
mod progress;
mod prompt;
mod ps;
mod select;
mod status;
mod sync;
mod verbose;
mod watch;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use diag::Style;
use lab_engine::{BuildOptions, Engine};
use progress::CliReporter;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "lab",
    version,
    about = "Build and deploy the file trees of your machines"
)]
struct Cli {
    /// Project directory (default: the current directory or the nearest
    /// parent with a lab.toml).
    #[arg(short = 'C', long, global = true, value_name = "DIR")]
    project: Option<PathBuf>,
    /// Print only errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Say what lab does: what it connects to and why, how long things
    /// take (-vv: the executor's steps, every path written).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Colour: auto (on a terminal, unless NO_COLOR is set), always, never.
    #[arg(long, global = true, value_enum, default_value_t = ColorWhen::Auto, value_name = "WHEN")]
    color: ColorWhen,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Select {
    /// Machines to work on: NAME, @TAG (every machine with that tag) or a
    /// glob like 'web*'; repeatable (default: all).
    #[arg(
        short,
        long = "machine",
        value_name = "NAME|@TAG|GLOB",
        allow_hyphen_values = true
    )]
    machines: Vec<String>,
    /// Every machine in lab.toml.
    #[arg(long, conflicts_with = "machines")]
    all: bool,
}

impl Select {
    fn selection(&self) -> select::Selection<'_> {
        select::Selection {
            patterns: &self.machines,
            all: self.all,
        }
    }
}

/// The help of `-m` for a command that needs machines named.
const NAMED: &str = "Machines to work on: NAME, @TAG (every machine with that tag) or a glob like 'web*'; repeatable; -m or --all is required";

/// How a command that talks to many machines reaches them.
#[derive(clap::Args, Debug, Clone, Copy)]
struct Fanout {
    /// Machines worked on in parallel.
    #[arg(short, long, value_name = "N", default_value_t = 8)]
    jobs: usize,
    /// Trust and record host keys that known_hosts does not have yet.
    #[arg(long)]
    accept_new: bool,
}

/// `lab status` and `lab check` (the same question; check answers with
/// its exit code).
#[derive(clap::Args)]
struct StatusCmd {
    #[command(flatten)]
    select: Select,
    #[command(flatten)]
    fanout: Fanout,
    /// Print JSON on stdout (schema in the README).
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Render every machine's tree into .lab/out/NAME/ (only what changed).
    Build {
        #[command(flatten)]
        select: Select,
        /// Worker threads (default: one per core).
        #[arg(short, long, value_name = "N")]
        jobs: Option<usize>,
        /// Say why each node was rebuilt.
        #[arg(long)]
        explain: bool,
        /// Ignore lab's state and rebuild everything.
        #[arg(long)]
        force: bool,
        /// Also copy each built machine's tree to DIR/NAME/, e.g. to compare
        /// it with the tree make produced.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Print JSON on stdout (schema in the README).
        #[arg(long)]
        json: bool,
    },
    /// Show which source wins a path on a machine, what it renders to, and
    /// which facts it read; or, given a source file, which machines use it
    /// and where it lands.
    #[command(mut_arg("machines", |a| a.help(
        "Machines to work on: NAME, @TAG (every machine with that tag) or a glob like 'web*'; repeatable; required (or --all) with a path on the machine; with a source file, default: all"
    )))]
    Show {
        #[command(flatten)]
        select: Select,
        /// A path on the machine, like /etc/nginx/nginx.conf, or a source
        /// file in the project, like layers/nginx/etc/nginx/nginx.conf.j2.
        path: String,
    },
    /// Remove lab's outputs and build state (.lab/out, .lab/state).
    Clean,
    /// Start a new project in DIR (default: here): lab.toml with one local
    /// machine, a base layer with one template, a .gitignore. Never
    /// overwrites.
    Init {
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print a shell completion script: `lab completions bash >
    /// /etc/bash_completion.d/lab`.
    Completions {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
    /// Print lab's man page (roff): `lab man > lab.1`.
    Man,
    /// Serve the web console (default on 127.0.0.1:5555, for `ssh -L`);
    /// `lab console adduser --superadmin NAME` makes the first account.
    Console(console::ConsoleCmd),
    /// List the machines: tags, transport, address, the generation lab last
    /// applied and when.
    Ls {
        #[command(flatten)]
        select: Select,
        /// Print JSON on stdout (schema in the README).
        #[arg(long)]
        json: bool,
    },
    /// The pods each machine's build wants against what runs there: state,
    /// restarts, uptime, memory, ports; a pod not running with the tail of
    /// its journal (exit 1 then).
    Ps {
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        fanout: Fanout,
        /// Journal lines shown for a pod that is not running.
        #[arg(short = 'n', long, value_name = "N", default_value_t = 20)]
        lines: usize,
        /// Print JSON on stdout (schema in the README).
        #[arg(long)]
        json: bool,
    },
    /// The images lab's store holds on each machine: versions, files,
    /// size on disk and bytes shared with other kept versions (`*`: the
    /// version the name has now).
    Images {
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        fanout: Fanout,
        /// Print JSON on stdout (schema in the README).
        #[arg(long)]
        json: bool,
    },
    /// The journal of a pod (its unit and its containers), a container or
    /// a unit on a machine.
    Logs {
        /// The machine.
        #[arg(short, long = "machine", value_name = "NAME")]
        machine: String,
        /// A pod, a container or a unit of that machine.
        name: String,
        /// Keep printing as the journal grows.
        #[arg(short, long)]
        follow: bool,
        /// Lines of the past to show.
        #[arg(short = 'n', long, value_name = "N", default_value_t = 50)]
        lines: usize,
        /// Trust and record a host key that known_hosts does not have yet.
        #[arg(long)]
        accept_new: bool,
    },
    /// Gather a machine's facts (arch, OS release, CPUs, memory, ...), cache
    /// them in .lab/facts/NAME.json and print them.
    #[command(mut_arg("machines", |a| a.help(NAMED)))]
    #[command(group(clap::ArgGroup::new("target").required(true).args(["machines", "all"])))]
    Facts {
        #[command(flatten)]
        select: Select,
        /// Gather them from this host instead of over SSH.
        #[arg(long)]
        local: bool,
        /// Gather them again even when they are cached.
        #[arg(long)]
        refresh: bool,
        /// Trust and record a host key that known_hosts does not have yet.
        #[arg(long)]
        accept_new: bool,
        /// Print JSON on stdout (schema in the README).
        #[arg(long)]
        json: bool,
    },
    /// Build, then ship what changed to the machines and reload the units
    /// it touched.
    #[command(mut_arg("machines", |a| a.help(
        "Machines to sync: NAME, @TAG or a glob like 'web*'; repeatable; a bare `lab sync` does nothing: name the machines or say --all"
    )))]
    Sync {
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        fanout: Fanout,
        /// When a unit fails after the sync, put the machine back on the
        /// previous generation.
        #[arg(long)]
        rollback_on_failure: bool,
        /// Destroy the container machines on the synced hosts that lab.toml
        /// no longer declares, with their data (else: a warning).
        #[arg(long)]
        destroy_undeclared: bool,
        /// Print JSON on stdout (schema in the README).
        #[arg(long)]
        json: bool,
    },
    /// Rebuild on every saved file and sync the machines it changes, over
    /// connections kept open.
    Watch {
        #[command(flatten)]
        select: Select,
        /// Only build; do not sync.
        #[arg(long)]
        no_sync: bool,
        /// One JSON object per cycle on stdout.
        #[arg(long)]
        json: bool,
        /// Trust and record host keys that known_hosts does not have yet.
        #[arg(long)]
        accept_new: bool,
    },
    /// Show what a sync would change on a machine (secrets masked).
    #[command(mut_arg("machines", |a| a.help(NAMED)))]
    #[command(group(clap::ArgGroup::new("target").required(true).args(["machines", "all"])))]
    Diff {
        #[command(flatten)]
        select: Select,
        /// Trust and record a host key that known_hosts does not have yet.
        #[arg(long)]
        accept_new: bool,
        /// Print JSON on stdout (schema in the README).
        #[arg(long)]
        json: bool,
    },
    /// Whether each machine is in sync, changing nothing: changes the
    /// source would ship, paths that drifted on the machine, unit actions
    /// pending, failed units, the applied generation.
    Status(StatusCmd),
    /// `lab status` for CI: exit 0 everything in sync, 3 something would
    /// change or drifted, 1 a machine failed or was unreachable, 2 usage
    /// or project error.
    Check(StatusCmd),
    /// Make a hand fix on a machine source: copy the machine's version of
    /// each drifted plain file into machines/NAME/ (templates are refused).
    Adopt {
        /// The machine.
        #[arg(short, long = "machine", value_name = "NAME")]
        machine: String,
        /// Paths on the machine (absolute).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
        /// Trust and record a host key that known_hosts does not have yet.
        #[arg(long)]
        accept_new: bool,
    },
    /// Put a machine back on an earlier generation.
    #[command(mut_arg("machines", |a| a.help(NAMED)))]
    #[command(group(clap::ArgGroup::new("target").required(true).args(["machines", "all"])))]
    Rollback {
        #[command(flatten)]
        select: Select,
        /// Generation to go back to (default: the previous one; 0 = before
        /// lab's first sync).
        #[arg(long, value_name = "GEN")]
        to: Option<u64>,
        /// Trust and record a host key that known_hosts does not have yet.
        #[arg(long)]
        accept_new: bool,
    },
    /// Make a fresh machine (its address and root password) a machine of
    /// this project: a user of your own with your key and passwordless
    /// sudo, password and root logins off, added to lab.toml.
    Bootstrap(bootstrap::BootstrapArgs),
    /// Container machines (lab.toml's `on = "HOST"`): create, destroy, ls.
    #[command(subcommand)]
    Machine(machines::MachineCmd),
    /// Open a shell on a machine (a container through its host), or print
    /// the `~/.ssh/config` block(s) that reach it.
    Ssh(machines::SshArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ColorWhen {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// How a command ended.
pub(crate) enum Failure {
    /// The invocation or project is wrong; nothing was done.
    Usage,
    /// Some machines failed; the rest was done.
    Partial,
    /// `lab check`: something is not in sync (exit 3).
    OutOfSync,
}

fn main() -> ExitCode {
    quiet_on_closed_pipe();
    let cli = Cli::parse();
    // every Style made from here on follows it
    match cli.color {
        ColorWhen::Auto => {}
        ColorWhen::Always => anstream::ColorChoice::Always.write_global(),
        ColorWhen::Never => anstream::ColorChoice::Never.write_global(),
    }
    let style = Style::stderr();
    lab_sync::ssh::set_passphrase_prompt(Box::new(prompt::TtyPassphrase));
    verbose::init(cli.verbose, style.colored());
    match run(cli, style) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Partial) => ExitCode::from(1),
        Err(Failure::Usage) => ExitCode::from(2),
        Err(Failure::OutOfSync) => ExitCode::from(3),
    }
}

/// `lab diff | head`: when the reader of stdout goes away, `println!`
/// panics with "failed printing to stdout: Broken pipe". The reader has
/// what it wanted, so lab ends quietly (exit 0) instead of with a panic
/// (exit 101). SIGPIPE stays ignored, as Rust sets it, so that a write to
/// a dead ssh still comes back as an error the sync can report.
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to std") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

fn open(cli: &Cli, style: Style) -> Result<Engine, Failure> {
    let dir = match &cli.project {
        // absolute, so that paths derived from it (a local machine's root)
        // mean the same in every process lab starts
        Some(p) => std::path::absolute(p).unwrap_or_else(|_| p.clone()),
        None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
    };
    let engine = lab_compat::open(&dir).map_err(|e| {
        eprint!("{}", diag::render(style, &e, None));
        Failure::Usage
    })?;
    tracing::info!(
        "project {} ({} machines)",
        diag::shown(&engine.project.file),
        engine.project.machines.len()
    );
    Ok(engine)
}

/// Run `f` on each machine, all of them even when one fails; the summary
/// line names the failed ones when there were several machines.
fn each(
    style: Style,
    names: &[String],
    mut f: impl FnMut(&str) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut failed = Vec::new();
    let mut usage = false;
    for n in names {
        match f(n) {
            Ok(()) => {}
            Err(Failure::Usage) => usage = true,
            Err(Failure::Partial | Failure::OutOfSync) => failed.push(n.clone()),
        }
    }
    if usage {
        return Err(Failure::Usage);
    }
    if names.len() > 1 {
        return outcome(style, &failed);
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Partial)
    }
}

fn run(cli: Cli, style: Style) -> Result<(), Failure> {
    match &cli.command {
        Command::Machine(cmd) => {
            let engine = open(&cli, style)?;
            machines::machine(&engine, style, cmd, cli.quiet)
        }
        Command::Ssh(args) => {
            let engine = open(&cli, style)?;
            machines::ssh(&engine, style, args)
        }
        Command::Bootstrap(args) => {
            let engine = open(&cli, style)?;
            bootstrap::run(&engine, style, args, cli.quiet)
        }
        Command::Build {
            select,
            jobs,
            explain,
            force,
            out,
            json,
        } => {
            let engine = open(&cli, style)?;
            // all machines are asked for as none, so that the build also
            // removes the outputs of machines no longer in lab.toml
            let names = if select.all {
                Vec::new()
            } else {
                select::resolve(&engine, style, &select.selection())?
            };
            build(
                &engine,
                style,
                &names,
                *jobs,
                *explain,
                *force,
                out.as_deref(),
                cli.quiet,
                *json,
            )
        }
        Command::Facts {
            select,
            local,
            refresh,
            accept_new,
            json,
        } => {
            let engine = open(&cli, style)?;
            let names = select::resolve(&engine, style, &select.selection())?;
            let several = names.len() > 1;
            let mut doc = Vec::new();
            let r = each(style, &names, |m| {
                facts::facts(
                    &engine,
                    style,
                    m,
                    &facts::FactsArgs {
                        local: *local,
                        refresh: *refresh,
                        accept_new: *accept_new,
                        quiet: cli.quiet,
                        several,
                    },
                    json.then_some(&mut doc),
                )
            });
            if *json {
                json::print(&serde_json::json!({ "machines": doc }));
            }
            r
        }
        Command::Show { select, path } => {
            let engine = open(&cli, style)?;
            let names = select::resolve(&engine, style, &select.selection())?;
            if let Some(rel) = explain::project_source(&engine, path) {
                return explain::show_source(&engine, style, &rel, &names);
            }
            if names.is_empty() {
                eprintln!(
                    "{} `{path}` is not a source file of the project; for a path on a machine, say which machine: `-m NAME` or `--all`",
                    style.red("error:")
                );
                return Err(Failure::Usage);
            }
            each(style, &names, |m| show(&engine, style, m, path))
        }
        Command::Sync {
            select,
            fanout: Fanout { jobs, accept_new },
            rollback_on_failure,
            destroy_undeclared,
            json,
        } => {
            let engine = open(&cli, style)?;
            let names = select::resolve(&engine, style, &select.selection())?;
            sync::sync(
                &engine,
                style,
                &sync::SyncArgs {
                    machines: names,
                    all: select.all,
                    jobs: *jobs,
                    accept_new: *accept_new,
                    rollback_on_failure: *rollback_on_failure,
                    destroy_undeclared: *destroy_undeclared,
                    quiet: cli.quiet,
                    json: *json,
                },
            )
        }
        Command::Watch {
            select,
            no_sync,
            json,
            accept_new,
        } => {
            let engine = open(&cli, style)?;
            let names = if select.all {
                Vec::new()
            } else {
                select::resolve(&engine, style, &select.selection())?
            };
            watch::watch(
                engine,
                style,
                &watch::WatchArgs {
                    machines: names,
                    no_sync: *no_sync,
                    json: *json,
                    quiet: cli.quiet,
                    accept_new: *accept_new,
                },
            )
        }
        Command::Diff {
            select,
            accept_new,
            json,
        } => {
            let engine = open(&cli, style)?;
            let names = select::resolve(&engine, style, &select.selection())?;
            let mut doc = Vec::new();
            let r = each(style, &names, |m| {
                sync::diff(&engine, style, m, *accept_new, json.then_some(&mut doc))
            });
            if *json {
                json::print(&serde_json::json!({ "machines": doc }));
            }
            r
        }
        Command::Status(StatusCmd {
            select,
            fanout: Fanout { jobs, accept_new },
            json,
        })
        | Command::Check(StatusCmd {
            select,
            fanout: Fanout { jobs, accept_new },
            json,
        }) => {
            let engine = open(&cli, style)?;
            let names = select::resolve(&engine, style, &select.selection())?;
            status::status(
                &engine,
                style,
                &status::StatusArgs {
                    machines: names,
                    json: *json,
                    accept_new: *accept_new,
                    jobs: *jobs,
                    check: matches!(cli.command, Command::Check(_)),
                },
            )
        }
        Command::Adopt {
            machine,
            paths,
            accept_new,
        } => {
            let engine = open(&cli, style)?;
            adopt::adopt(&engine, style, machine, paths, *accept_new)
        }
        Command::Rollback {
            select,
            to,
            accept_new,
        } => {
            let engine = open(&cli, style)?;
            let names = select::resolve(&engine, style, &select.selection())?;
            each(style, &names, |m| {
                sync::rollback(&engine, style, m, *to, *accept_new)
            })
        }
        Command::Ps {
            select,
            fanout: Fanout { jobs, accept_new },
            lines,
            json,
        } => {
            let engine = open(&cli, style)?;
            let names = select::resolve(&engine, style, &select.selection())?;
            ps::ps(
                &engine,
                style,
                &ps::PsArgs {
                    machines: names,
                    json: *json,
                    accept_new: *accept_new,
                    jobs: *jobs,
                    lines: *lines,
                },
            )
        }
        Command::Images {
            select,
            fanout: Fanout { jobs, accept_new },
            json,
        } => {
            let engine = open(&cli, style)?;
            let names = select::resolve(&engine, style, &select.selection())?;
            images::images(
                &engine,
                style,
                &images::ImagesArgs {
                    machines: names,
                    json: *json,
                    accept_new: *accept_new,
                    jobs: *jobs,
                },
            )
        }
        Command::Logs {
            machine,
            name,
            follow,
            lines,
            accept_new,
        } => {
            let engine = open(&cli, style)?;
            logs::logs(
                &engine,
                style,
                &logs::LogsArgs {
                    machine,
                    name,
                    lines: *lines,
                    follow: *follow,
                    accept_new: *accept_new,
                },
            )
        }
        Command::Ls { select, json } => {
            let engine = open(&cli, style)?;
            let names = select::resolve(&engine, style, &select.selection())?;
            ls::ls(&engine, &names, *json)
        }
        Command::Init { dir } => {
            let dir = dir.clone().unwrap_or_else(|| PathBuf::from("."));
            init::init(style, &dir, cli.quiet)
        }
        Command::Completions { shell } => {
            let shell = match shell {
                CompletionShell::Bash => clap_complete::Shell::Bash,
                CompletionShell::Zsh => clap_complete::Shell::Zsh,
                CompletionShell::Fish => clap_complete::Shell::Fish,
            };
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "lab", &mut out);
            // through print!, so that a closed pipe ends lab quietly
            print!("{}", String::from_utf8_lossy(&out));
            Ok(())
        }
        Command::Console(cmd) => {
            let engine = open(&cli, style)?;
            console::console(engine, style, cmd, cli.quiet)
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut out)
                .expect("rendering into memory");
            // through print!, so that a closed pipe ends lab quietly
            print!("{}", String::from_utf8_lossy(&out));
            Ok(())
        }
        Command::Clean => {
            let engine = open(&cli, style)?;
            engine.clean().map_err(|e| {
                eprint!("{}", diag::render(style, &e, None));
                Failure::Usage
            })?;
            if !cli.quiet {
                println!("removed {}", diag::shown(&engine.lab_dir().join("out")));
            }
            Ok(())
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn build(
    engine: &Engine,
    style: Style,
    machines: &[String],
    jobs: Option<usize>,
    explain: bool,
    force: bool,
    out: Option<&std::path::Path>,
    quiet: bool,
    json: bool,
) -> Result<(), Failure> {
    let started = Instant::now();
    let reporter = CliReporter::new(explain, quiet);
    // with --json, stdout holds the document only
    let quiet = quiet || json;
    let mut doc = Vec::new();
    let opts = BuildOptions {
        machines: machines.to_vec(),
        jobs,
        force,
        trust_outputs: false,
        no_wait: false,
    };
    let report = engine.build(&opts, &reporter).map_err(|e| {
        reporter.finish();
        eprint!("{}", diag::render(style, &e, None));
        Failure::Usage
    })?;
    tracing::info!(
        "build done in {} ms ({} sources, {} read)",
        started.elapsed().as_millis(),
        report.files,
        report.hashed
    );
    for m in &report.machines {
        if let Ok(r) = &m.result {
            for p in &r.written {
                tracing::debug!("{}: wrote /{p}", m.name);
            }
            for p in &r.removed {
                tracing::debug!("{}: removed /{p}", m.name);
            }
        }
    }
    let explained = explain::lines(engine, reporter.finish());
    if !json {
        for line in &explained {
            println!("{line}");
        }
    }
    let mut failed = Vec::new();
    let mut project_wrong = false;
    for m in &report.machines {
        if json {
            let r = match &m.result {
                Ok(r) => Ok(r.clone()),
                Err(errors) => Err(errors
                    .iter()
                    .map(|e| {
                        let text = diag::machine_error(Style::plain(), engine, &m.name, e).0;
                        text.trim_end().to_string()
                    })
                    .collect()),
            };
            doc.push(json::build_machine(&m.name, &r));
        }
        match &m.result {
            Ok(r) if !quiet => {
                if r.up_to_date {
                    println!("{}: up to date", m.name);
                } else {
                    println!(
                        "{}: {} rendered, {} written, {} removed ({} entries)",
                        m.name,
                        r.rendered,
                        r.written.len(),
                        r.removed.len(),
                        r.entries
                    );
                }
            }
            Ok(_) => {}
            Err(errors) => {
                for e in errors {
                    let (text, project) = diag::machine_error(style, engine, &m.name, e);
                    eprint!("{text}");
                    project_wrong |= project;
                }
                failed.push(m.name.clone());
            }
        }
    }
    if let Some(dir) = out {
        for m in report.machines.iter().filter(|m| m.result.is_ok()) {
            match engine.export(&m.name, dir) {
                Ok(p) if !quiet => println!("{}: copied to {}", m.name, diag::shown(&p)),
                Ok(_) => {}
                Err(e) => {
                    let ctx = format!("machine `{}`", m.name);
                    eprint!("{}", diag::render(style, &e, Some(&ctx)));
                    failed.push(m.name.clone());
                }
            }
        }
    }
    if !quiet {
        println!(
            "built {} machine{} in {} ms ({} sources, {} read)",
            report.machines.len() - failed.len(),
            if report.machines.len() - failed.len() == 1 {
                ""
            } else {
                "s"
            },
            started.elapsed().as_millis(),
            report.files,
            report.hashed
        );
    }
    if json {
        json::print(&serde_json::json!({
            "machines": doc,
            "failed": failed,
            "sources": report.files,
            "read": report.hashed,
            "explain": if explain { Some(explained) } else { None },
        }));
    }
    let r = outcome(style, &failed);
    if project_wrong {
        // lab.toml is wrong (an unknown layer): exit 2 like every other
        // lab.toml error, though the other machines were built
        return Err(Failure::Usage);
    }
    r
}

/// The last line of a command that worked on several machines: which of
/// them failed, if any.
pub(crate) fn outcome(style: Style, failed: &[String]) -> Result<(), Failure> {
    if failed.is_empty() {
        return Ok(());
    }
    eprintln!(
        "{} {} machine{} failed: {}",
        style.red("error:"),
        failed.len(),
        if failed.len() == 1 { "" } else { "s" },
        failed
            .iter()
            .map(|f| format!("`{f}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Err(Failure::Partial)
}

fn show(engine: &Engine, style: Style, machine: &str, path: &str) -> Result<(), Failure> {
    let s = engine.show(machine, path).map_err(|e| {
        eprint!("{}", diag::render(style, &e, None));
        match e {
            lab_engine::ShowError::Engine(_) => Failure::Usage,
            _ => Failure::Partial,
        }
    })?;
    println!("/{} on {} ({} {:04o})", s.output, s.machine, s.kind, s.mode);
    let n = s.sources.len();
    for (i, src) in s.sources.iter().enumerate() {
        if i + 1 == n {
            println!(
                "  source: {}{}",
                src.display(),
                if s.template { " (template)" } else { "" }
            );
        } else {
            println!("  overrides: {}", src.display());
        }
    }
    if !s.includes.is_empty() {
        println!("  includes: {}", s.includes.join(", "));
    }
    // (facts decrypted from secret_facts files are never shown)
    let masked = |t: &str| lab_core::secrets::mask(t, "********");
    for (k, v) in &s.reads {
        match v {
            Some(v) => println!("  reads: {k} = {}", masked(&v.to_string())),
            None => println!("  reads: {k} (undefined)"),
        }
    }
    match s.kind {
        "symlink" => println!("  -> {}", String::from_utf8_lossy(&s.content)),
        "file" => {
            println!("---");
            print!("{}", masked(&String::from_utf8_lossy(&s.content)));
            if !s.content.ends_with(b"\n") && !s.content.is_empty() {
                println!();
            }
        }
        _ => {}
    }
    Ok(())
}
