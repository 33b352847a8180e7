//! Programs run on a machine with their library named, not carried, when
//! the machine keeps it (lab-agent's `library`); what each machine keeps
//! is remembered in `.lab/sync/NAME.libs`.

use crate::transport::{Input, Output, Transport};
use crate::SyncError;
use lab_agent::bootstrap;
use lab_core::LabDir;

/// The machine a program runs on.
pub(crate) struct On<'a> {
    pub lab: &'a LabDir,
    /// Its name (whose libraries lab remembers).
    pub machine: &'a str,
    /// Its root (`""` on a real machine).
    pub root: &'a str,
    /// Whether it runs systemd (`LAB_SYSTEMD`).
    pub systemd: bool,
}

/// Run `program` on the machine, `input` its stdin. When it holds one of
/// the executor's libraries: named instead of carried if lab knows the
/// machine keeps it (and sent again inline if it turns out not to: the
/// machine ran nothing), else inline, which the machine stores for the
/// next commands.
pub(crate) fn run_program(
    transport: &mut dyn Transport,
    on: &On<'_>,
    program: &str,
    input: Input<'_>,
) -> Result<Output, SyncError> {
    let mut send = |t: &mut dyn Transport, program: &str| {
        let (cmd, first) = bootstrap(on.root, program, on.systemd);
        t.run(&cmd, &mut |w| {
            w.write_all(first)?;
            input(w)
        })
    };
    let Some(id) = lab_agent::library_id(program) else {
        return send(transport, program);
    };
    let libs = on.lab.libraries_path(on.machine);
    let mut known: Vec<String> = std::fs::read_to_string(&libs)
        .unwrap_or_default()
        .lines()
        .filter(|k| lab_agent::library_ids().any(|i| i == *k))
        .map(str::to_string)
        .collect();
    if known.iter().any(|k| k == id) {
        let short = lab_agent::cached_form(program).expect("it holds a library");
        let out = send(transport, &short)?;
        if !lab_agent::library_missing(out.status, &out.stderr_text()) {
            return Ok(out);
        }
        known.retain(|k| k != id);
    }
    let mut out = send(transport, &lab_agent::installing_form(program))?;
    let (stored, stderr) = lab_agent::library_stored(&out.stderr);
    out.stderr = stderr;
    if stored {
        known.push(id.to_string());
    }
    // (a file lost costs one library sent again)
    let text: String = known.iter().map(|k| format!("{k}\n")).collect();
    if let Some(dir) = libs.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = libs.with_extension("libs.tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, &libs);
    }
    Ok(out)
}
