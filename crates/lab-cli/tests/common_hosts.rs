//! Shared set-up for the sync tests: a lab project whose machines are real
//! test hosts, built with the real engine and synced with the real
//! transport.

#![allow(dead_code)]

use lab_config::Project;
use lab_engine::{BuildOptions, Engine, Silent};
use lab_sync::{MachineSync, SyncError, SyncOptions, SyncReport, Transport};
use lab_testhosts::Host;
use lab_testkit::TestLab;
use std::fmt::Write as _;

/// lab.toml for `hosts`, named h1, h2, ...; every machine gets layer
/// `base`, plus `extra` layers per machine.
pub fn lab_toml(hosts: &[Host], extra: &str) -> String {
    let mut s = String::new();
    let kh = hosts[0].known_hosts.display();
    writeln!(s, "[settings]\nknown_hosts = \"{kh}\"\n").unwrap();
    writeln!(
        s,
        "[[units]]\npaths = [\"/etc/probe/**\"]\nunit = \"probe.service\"\naction = \"reload\"\n"
    )
    .unwrap();
    for (i, h) in hosts.iter().enumerate() {
        writeln!(
            s,
            "[machines.h{}]\nhost = \"{}\"\nport = {}\nuser = \"{}\"\nidentity = \"{}\"\nlayers = [\"base\"]\n",
            i + 1,
            h.address,
            h.port,
            h.user,
            h.identity.display()
        )
        .unwrap();
    }
    s.push_str(extra);
    s
}

/// A service whose start, restart and reload leave traces on the machine:
/// each start appends to /run/probe.starts (ExecStartPre), each reload to
/// /run/probe.reloads.
pub const PROBE_UNIT: &str = "[Unit]\nDescription=lab test probe\n\n[Service]\n\
ExecStartPre=/bin/sh -c 'cat /etc/probe/version >> /run/probe.starts'\n\
ExecStart=/bin/sleep infinity\n\
ExecReload=/bin/sh -c 'cat /etc/probe/version >> /run/probe.reloads'\n\n\
[Install]\nWantedBy=multi-user.target\n";

pub fn project(hosts: &[Host]) -> TestLab {
    let lab = TestLab::new();
    lab.file("lab.toml", &lab_toml(hosts, ""))
        .file("layers/base/etc/motd.j2", "{{ machine }}: managed by lab\n")
        .file("layers/base/etc/probe/version", "1\n")
        .file("layers/base/etc/systemd/system/probe.service", PROBE_UNIT)
        .symlink(
            "layers/base/etc/systemd/system/multi-user.target.wants/probe.service",
            "../probe.service",
        );
    lab
}

pub fn build(lab: &TestLab) {
    let engine = Engine::open(lab.path()).unwrap();
    let r = engine.build(&BuildOptions::default(), &Silent).unwrap();
    for m in &r.machines {
        if let Err(e) = &m.result {
            panic!("build of {} failed: {e:?}", m.name);
        }
    }
}

/// What a sync did, with the connection's counters.
pub struct Synced {
    pub report: SyncReport,
    /// Commands run over the connection after connecting.
    pub commands: u64,
    /// Bytes sent on stdin (program + tar).
    pub sent: u64,
    /// Bytes of the commands themselves.
    pub command_bytes: u64,
}

pub fn sync_with(lab: &TestLab, machine: &str, opts: &SyncOptions) -> Result<Synced, SyncError> {
    let project = Project::load(lab.path()).unwrap();
    let m = project.machine(machine).unwrap().clone();
    let target = lab_deploy::target(&project, &m, &lab.join(".lab"));
    let mut t: Box<dyn Transport> = lab_deploy::connect(&project, &m, None, false)?;
    let report = MachineSync {
        target: &target,
        transport: t.as_mut(),
    }
    .sync(opts)?;
    Ok(Synced {
        report,
        commands: t.commands(),
        sent: t.sent(),
        command_bytes: t.command_bytes(),
    })
}

/// Build and sync; panics on failure.
pub fn sync(lab: &TestLab, machine: &str) -> Synced {
    build(lab);
    sync_with(lab, machine, &SyncOptions::default()).unwrap()
}

pub fn run(h: &Host, cmd: &str) -> String {
    h.run(cmd).unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

pub fn main_pid(h: &Host, unit: &str) -> String {
    run(h, &format!("systemctl show -p MainPID --value {unit}"))
        .trim()
        .to_string()
}

/// How each manifest entry looks on the host: `path kind mode sha|target`,
/// or `path missing`. One ssh command.
pub fn remote_state(h: &Host, m: &lab_manifest::Manifest) -> Vec<String> {
    let script = r#"while IFS= read -r p; do
  if [ -L "$p" ]; then echo "$p symlink $(readlink "$p")";
  elif [ -d "$p" ]; then echo "$p dir $(stat -c %a "$p")";
  elif [ -f "$p" ]; then echo "$p file $(stat -c %a "$p") $(sha256sum < "$p" | cut -d' ' -f1)";
  else echo "$p missing"; fi
done"#;
    let mut c = h.ssh_command();
    c.arg(script);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for p in m.entries.keys() {
            writeln!(stdin, "/{p}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// What `remote_state` should print for a manifest.
pub fn expected_state(m: &lab_manifest::Manifest) -> Vec<String> {
    use lab_manifest::EntryKind;
    m.entries
        .values()
        .map(|e| match &e.kind {
            EntryKind::Dir => format!("/{} dir {:o}", e.path, e.mode),
            EntryKind::File { sha256, .. } => format!("/{} file {:o} {sha256}", e.path, e.mode),
            EntryKind::Symlink { target } => format!("/{} symlink {target}", e.path),
        })
        .collect()
}

pub fn manifest(lab: &TestLab, machine: &str) -> lab_manifest::Manifest {
    lab_manifest::Manifest::parse(&lab.read(&format!(".lab/out/{machine}.manifest"))).unwrap()
}
