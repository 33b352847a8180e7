//! `lab logs -m M NAME [-f] [-n N]`: the journal of a pod (its unit and its
//! containers), a container or a unit on a machine, over one connection and
//! one command (`-f` keeps it open and prints as the journal grows).

use crate::diag::{self, Style};
use crate::Failure;
use lab_engine::Engine;
use std::io::Write;

pub struct LogsArgs<'a> {
    pub machine: &'a str,
    pub name: &'a str,
    pub lines: usize,
    pub follow: bool,
    pub accept_new: bool,
}

pub fn logs(engine: &Engine, style: Style, args: &LogsArgs) -> Result<(), Failure> {
    let usage = |e: &dyn lab_config::Diagnose| {
        eprint!("{}", diag::render(style, e, None));
        Failure::Usage
    };
    let m = match engine.select(&[args.machine.to_string()]) {
        Ok(v) if v.len() == 1 => v[0],
        Ok(v) => {
            eprintln!(
                "{}: `lab logs` reads one machine; `{}` selects {}",
                style.red("error"),
                args.machine,
                v.len()
            );
            return Err(Failure::Usage);
        }
        Err(e) => return Err(usage(&e)),
    };
    let ssh_config = lab_sync::ssh::load_ssh_config().map_err(|e| usage(&e))?;
    let ctx = format!("machine `{}`", m.name);
    let failed = |e: &dyn lab_config::Diagnose| {
        eprint!("{}", diag::render(style, e, Some(&ctx)));
        Failure::Partial
    };
    // (the pods of the last build, if any, tell a pod's name from a
    // container's; no build is needed to read a unit's journal)
    let pods = crate::ps::desired(engine, m).unwrap_or_default();
    let target = lab_deploy::target(&engine.project, m, engine.lab_dir());
    let mut t = lab_deploy::connect(&engine.project, m, ssh_config.as_ref(), args.accept_new)
        .map_err(|e| failed(&e))?;
    let cmd =
        lab_sync::pods::logs_command(args.name, &pods, &target.pod_user, args.lines, args.follow);
    let mut stdout = std::io::stdout().lock();
    let (status, stderr) = t
        .run_streaming(&cmd, &mut |chunk| {
            let _ = stdout.write_all(chunk);
            let _ = stdout.flush();
        })
        .map_err(|e| failed(&e))?;
    let said = String::from_utf8_lossy(&stderr);
    if status == lab_sync::pods::LOGS_UNKNOWN {
        eprintln!(
            "{}: {}: {}",
            style.red("error"),
            m.name,
            said.trim().lines().last().unwrap_or("not found")
        );
        return Err(Failure::Partial);
    }
    if status != 0 {
        eprintln!(
            "{}: {}: journalctl failed ({status}): {}",
            style.red("error"),
            m.name,
            said.trim()
        );
        return Err(Failure::Partial);
    }
    Ok(())
}
