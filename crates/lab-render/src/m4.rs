//! m4 rendering for make-style labs.
//!
//! A template is rendered exactly as the make pipeline does it:
//! `m4 --fatal-warnings --prefix-builtins -DKEY=VALUE... -- PRELUDES... SRC`
//! run from the project root. By default that m4 runs in process
//! ([`lab_m4`], which reproduces GNU m4 1.4.19 for what these labs use):
//! one GNU m4 process per template was most of a cold build. The state
//! after the preludes is kept and cloned for the next template with the
//! same defines and preludes (valid while the files the preludes read are
//! unchanged; never when a prelude ran a command). A template the
//! evaluator declines ([`lab_m4::Error::Unsupported`]) is rendered by GNU
//! m4 instead, and `LAB_M4=gnu` in the environment makes every render use
//! GNU m4.
//!
//! GNU m4 is run with `--debug=i` added: it then reports on stderr every
//! file it opens (`m4debug: input read from FILE`), which is how the files
//! a template `m4_include`s become its dependencies (the in-process
//! evaluator records the same list). Includes of files that do not exist
//! (`m4_sinclude`) are not reported; the callers find those with
//! [`literal_includes`].

use crate::RenderError;
use lab_core::Located;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

/// One m4 run.
pub struct M4Job<'a> {
    /// The m4 program (see [`locate`]).
    pub program: &'a Path,
    /// The project root, m4's working directory.
    pub cwd: &'a Path,
    /// `-DKEY=VALUE`, in order.
    pub defines: &'a [(String, String)],
    /// Prelude files, relative to `cwd`.
    pub preludes: &'a [String],
    /// The template, relative to `cwd`.
    pub src: &'a str,
}

/// What an m4 run produced and read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct M4Rendered {
    pub bytes: Vec<u8>,
    /// Every file m4 opened, in order, each once, as m4 named it (relative
    /// to the project root, or absolute): the preludes, the template and
    /// whatever they included.
    pub read: Vec<String>,
    /// The only `-D` names the output depends on, when m4 ran in process
    /// ([`lab_m4::Outcome::defines_read`]); `None`: any of them (GNU m4).
    pub defines_read: Option<Vec<String>>,
}

/// Find `m4` on `PATH`.
pub fn locate() -> Result<PathBuf, RenderError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join("m4");
        if let Ok(m) = std::fs::metadata(&p) {
            use std::os::unix::fs::PermissionsExt;
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Ok(p);
            }
        }
    }
    Err(RenderError::M4Missing)
}

/// The environment variable that selects GNU m4 for every render
/// (`LAB_M4=gnu`); anything else, or unset, evaluates in process.
pub const ENV_FORCE: &str = "LAB_M4";

/// Whether renders use GNU m4 only (`LAB_M4=gnu`).
pub fn force_gnu() -> bool {
    std::env::var_os(ENV_FORCE).is_some_and(|v| v == "gnu")
}

/// Run m4 for one template: in process, or GNU m4 when forced or when the
/// evaluator declines the template.
pub fn render(job: &M4Job) -> Result<M4Rendered, RenderError> {
    if !force_gnu() {
        if let Some(outcome) = in_process(job) {
            return from_outcome(job, outcome);
        }
    }
    render_gnu(job)
}

/// A run's result as a render: its output, or its first message placed at
/// its file and line.
fn from_outcome(job: &M4Job, o: lab_m4::Outcome) -> Result<M4Rendered, RenderError> {
    if o.status != 0 {
        let stderr = String::from_utf8_lossy(&o.stderr);
        let messages: Vec<&str> = stderr.lines().collect();
        return Err(m4_error(job, &messages));
    }
    Ok(M4Rendered {
        bytes: o.stdout,
        read: o.read,
        defines_read: o.defines_read,
    })
}

type PreludeKey = (PathBuf, Vec<(String, String)>, Vec<String>);

/// Evaluator states after the preludes, by (cwd, defines, preludes).
fn prelude_states() -> &'static Mutex<HashMap<PreludeKey, Arc<lab_m4::M4>>> {
    static S: OnceLock<Mutex<HashMap<PreludeKey, Arc<lab_m4::M4>>>> = OnceLock::new();
    S.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Whether every file a state read still reads the same (and every file
/// it looked for and did not find is still missing).
fn still_valid(m: &lab_m4::M4) -> bool {
    m.looked()
        .iter()
        .all(|l| std::fs::read(&l.path).ok().as_deref() == l.content.as_deref())
}

/// The template evaluated in process; `None` when the evaluator declines
/// it (GNU m4 then renders it).
fn in_process(job: &M4Job) -> Option<lab_m4::Outcome> {
    let key: PreludeKey = (
        job.cwd.to_path_buf(),
        job.defines.to_vec(),
        job.preludes.to_vec(),
    );
    let cached = prelude_states()
        .lock()
        .ok()
        .and_then(|c| c.get(&key).cloned());
    let mut m = match cached {
        Some(state) if still_valid(&state) => (*state).clone(),
        _ => {
            let mut m = lab_m4::M4::new(lab_m4::Config::make_style(job.cwd));
            m.track_defines();
            for (k, v) in job.defines {
                m.define(k, v);
            }
            for p in job.preludes {
                m.process_file(p).ok()?;
            }
            if !m.ran_commands() && !m.ended() {
                if let Ok(mut c) = prelude_states().lock() {
                    if c.len() >= 256 {
                        c.clear();
                    }
                    c.insert(key, Arc::new(m.clone()));
                }
            }
            m
        }
    };
    m.process_file(job.src).ok()?;
    Some(m.finish())
}

/// Run GNU m4 for one template.
pub fn render_gnu(job: &M4Job) -> Result<M4Rendered, RenderError> {
    render_gnu_within(job, GNU_LIMITS)
}

/// How long a GNU m4 run may take and how much it may print. GNU m4 runs
/// `m4_define(`x', `x')x` for ever, and an expansion that prints as it
/// recurses fills memory; lab stops such a run with an error at its
/// template instead of hanging or exhausting the build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GnuLimits {
    pub time: std::time::Duration,
    /// Bytes, on stdout and on stderr each.
    pub output: u64,
}

/// The limits of every GNU m4 run: a minute (real templates take
/// milliseconds) and as many bytes as the in-process evaluator's work
/// budget.
pub const GNU_LIMITS: GnuLimits = GnuLimits {
    time: std::time::Duration::from_secs(60),
    output: lab_m4::DEFAULT_MAX_WORK,
};

/// [`render_gnu`] within `limits`.
pub fn render_gnu_within(job: &M4Job, limits: GnuLimits) -> Result<M4Rendered, RenderError> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(job.program);
    // m4 names itself by argv[0] in messages; keep them `m4:FILE:LINE:`.
    cmd.arg0("m4")
        .current_dir(job.cwd)
        .arg("--fatal-warnings")
        .arg("--prefix-builtins")
        .arg("--debug=i");
    for (k, v) in job.defines {
        cmd.arg(format!("-D{k}={v}"));
    }
    cmd.arg("--").args(job.preludes).arg(job.src);
    // its own process group, so that a stopped run takes what it
    // started (`m4_syscmd`) with it
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let at = || Located::file(&job.cwd.join(job.src));
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            RenderError::M4Missing
        } else {
            RenderError::M4 {
                at: at(),
                message: format!("cannot run `{}`: {e}", job.program.display()),
            }
        }
    })?;
    // Each stream read to its end (or one byte past the limit) by a
    // thread of its own, and m4's end seen by another (left a zombie, so
    // that its process group cannot be another's yet); all arrive here,
    // or the time runs out.
    let (tx, rx) = std::sync::mpsc::channel();
    let pipes: Vec<u64> = {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let fds = [
            child.stdout.as_ref().map(|s| s.as_raw_fd()),
            child.stderr.as_ref().map(|s| s.as_raw_fd()),
        ];
        fds.into_iter()
            .flatten()
            .filter_map(|fd| std::fs::metadata(format!("/proc/self/fd/{fd}")).ok())
            .map(|m| m.ino())
            .collect()
    };
    let streams: [Box<dyn Read + Send>; 2] = [
        Box::new(child.stdout.take().expect("piped")),
        Box::new(child.stderr.take().expect("piped")),
    ];
    for (i, stream) in streams.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let r = stream.take(limits.output + 1).read_to_end(&mut buf);
            let _ = tx.send(Some((i, r.map(|_| buf))));
        });
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    std::thread::spawn(move || {
        use nix::sys::wait::{waitid, Id, WaitPidFlag};
        let _ = waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT);
        let _ = tx.send(None);
    });
    let deadline = std::time::Instant::now() + limits.time;
    // (once m4 ended, its output closes at once unless what it started
    // holds it: looked for after this grace)
    let grace = std::time::Duration::from_millis(100);
    let mut ended: Option<std::time::Instant> = None;
    let mut left_behind: Vec<i32> = Vec::new();
    let mut got: [Option<Vec<u8>>; 2] = [None, None];
    let mut stop = None;
    while got.iter().any(Option::is_none) {
        let now = std::time::Instant::now();
        let until = ended.map_or(deadline, |t| deadline.min(t + grace));
        match rx.recv_timeout(until.saturating_duration_since(now)) {
            Ok(Some((_, Ok(buf)))) if buf.len() as u64 > limits.output => {
                stop = Some(format!(
                    "GNU m4 wrote more than {} MiB; stopped (an expansion that does not end?)",
                    limits.output >> 20
                ));
                break;
            }
            Ok(Some((i, Ok(buf)))) => got[i] = Some(buf),
            Ok(Some((_, Err(e)))) => {
                stop = Some(format!("reading GNU m4's output: {e}"));
                break;
            }
            Ok(None) => ended = Some(std::time::Instant::now()),
            // m4 ended and its output is still open: what it started
            // and left (in its process group, or holding its output from
            // a session of its own) would outlive the build
            Err(_) if ended.is_some() && std::time::Instant::now() < deadline => {
                ended = None;
                let found = left_running(pid, &pipes);
                if !found.is_empty() {
                    stop = Some(format!(
                        "GNU m4 ended but left running what it started (`m4_syscmd`?): {}; stopped (a template must not start processes that outlive it)",
                        found.iter().map(|(_, d)| d.as_str()).collect::<Vec<_>>().join(", ")
                    ));
                    left_behind = found.into_iter().map(|(p, _)| p).collect();
                    break;
                }
            }
            Err(_) => {
                stop = Some(format!(
                    "GNU m4 did not end within {} s; stopped (an expansion that does not end?)",
                    limits.time.as_secs_f64()
                ));
                break;
            }
        }
    }
    if let Some(message) = stop {
        let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
        for p in left_behind {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.wait();
        return Err(RenderError::M4 { at: at(), message });
    }
    let status = child.wait().map_err(|e| RenderError::M4 {
        at: at(),
        message: format!("waiting for GNU m4: {e}"),
    })?;
    // (both arrived without a stop)
    let [stdout, stderr] = got.map(Option::unwrap_or_default);
    let out = std::process::Output {
        status,
        stdout,
        stderr,
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut read: Vec<String> = Vec::new();
    let mut messages: Vec<&str> = Vec::new();
    for line in stderr.lines() {
        if let Some(f) = line.strip_prefix("m4debug: input read from ") {
            if !read.iter().any(|r| r == f) {
                read.push(f.to_string());
            }
        } else if !line.starts_with("m4debug: ") {
            messages.push(line);
        }
    }
    if !out.status.success() {
        return Err(m4_error(job, &messages));
    }
    Ok(M4Rendered {
        bytes: out.stdout,
        read,
        defines_read: None,
    })
}

/// What GNU m4 (`group`, ended but not yet reaped) left running: the
/// live processes of its process group other than itself, and those
/// that hold one of its output `pipes` (inode numbers) from elsewhere
/// (`setsid`), but never lab or a child of lab's own; as (PID,
/// `PID (COMMAND)`).
fn left_running(group: nix::unistd::Pid, pipes: &[u64]) -> Vec<(i32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let links: Vec<String> = pipes.iter().map(|i| format!("pipe:[{i}]")).collect();
    let mut out = Vec::new();
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid == group.as_raw() || pid == me {
            continue;
        }
        // `PID (COMM) STATE PPID PGRP ...`; COMM may hold `)`
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split(' ');
        if fields.next() == Some("Z") {
            continue;
        }
        let ppid = fields.next().and_then(|f| f.parse::<i32>().ok());
        let pgrp = fields.next().and_then(|f| f.parse::<i32>().ok());
        let holds = || {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.flatten().any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|l| links.iter().any(|p| l.as_os_str() == p.as_str()))
                })
            })
        };
        if pgrp == Some(group.as_raw()) || (ppid != Some(me) && holds()) {
            let comm = head.split_once(" (").map_or("", |(_, c)| c);
            out.push((pid, format!("{pid} ({comm})")));
        }
    }
    out.sort();
    out
}

/// The first message of a failed run, placed at its `m4:FILE:LINE:`.
fn m4_error(job: &M4Job, messages: &[&str]) -> RenderError {
    let first = messages
        .iter()
        .find(|m| m.starts_with("m4:") && !m.ends_with("warnings are fatal"))
        .or(messages.first())
        .copied()
        .unwrap_or("m4 failed without a message");
    if let Some((file, line, msg)) = parse_location(first) {
        let path = job.cwd.join(file);
        let text = std::fs::read(&path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        return RenderError::M4 {
            at: Located::from_line(&path, &text, line, None),
            message: format!("m4: {msg}"),
        };
    }
    RenderError::M4 {
        at: Located::file(&job.cwd.join(job.src)),
        message: first
            .strip_prefix("m4: ")
            .map_or(first.to_string(), |m| format!("m4: {m}")),
    }
}

/// `m4:FILE:LINE: MESSAGE` -> (FILE, LINE, MESSAGE).
fn parse_location(s: &str) -> Option<(&str, usize, &str)> {
    let rest = s.strip_prefix("m4:")?;
    let mut from = 0;
    while let Some(i) = rest[from..].find(':') {
        let colon = from + i;
        let after = &rest[colon + 1..];
        let digits = after.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits > 0 && after[digits..].starts_with(": ") {
            let line = after[..digits].parse().ok()?;
            return Some((&rest[..colon], line, &after[digits + 2..]));
        }
        from = colon + 1;
    }
    None
}

/// The literal file names of `m4_include(`NAME')` and `m4_sinclude(`NAME')`
/// in a text (quoted with m4's default quotes, or unquoted).
pub fn literal_includes(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for kw in ["m4_include(", "m4_sinclude("] {
        let mut rest = text;
        while let Some(i) = rest.find(kw) {
            rest = &rest[i + kw.len()..];
            let arg = rest.trim_start();
            let name = if let Some(q) = arg.strip_prefix('`') {
                q.find('\'').map(|e| &q[..e])
            } else {
                arg.find([')', ',']).map(|e| arg[..e].trim())
            };
            if let Some(n) = name {
                if !n.is_empty()
                    && !n.contains(['`', '\'', '$', '(', '\n'])
                    && !out.iter().any(|o| o == n)
                {
                    out.push(n.to_string());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lab_core::Diagnose;

    fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, t) in files {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, t).unwrap();
        }
        d
    }

    fn run(d: &Path, src: &str, preludes: &[&str]) -> Result<M4Rendered, RenderError> {
        let program = locate().unwrap();
        let defines = vec![
            ("ENV_MACHINE".to_string(), "web1".to_string()),
            ("GREETING".to_string(), "hello ENV_MACHINE".to_string()),
        ];
        let preludes: Vec<String> = preludes.iter().map(|s| s.to_string()).collect();
        render(&M4Job {
            program: &program,
            cwd: d,
            defines: &defines,
            preludes: &preludes,
            src,
        })
    }

    fn run_gnu(d: &Path, src: &str, limits: GnuLimits) -> Result<M4Rendered, RenderError> {
        let program = locate().unwrap();
        render_gnu_within(
            &M4Job {
                program: &program,
                cwd: d,
                defines: &[],
                preludes: &[],
                src,
            },
            limits,
        )
    }

    fn stopped(r: Result<M4Rendered, RenderError>) -> String {
        match r {
            Err(e @ RenderError::M4 { .. }) => {
                assert!(e.location().unwrap().path.ends_with("t.m4"), "{e:?}");
                e.to_string()
            }
            other => panic!("not stopped: {other:?}"),
        }
    }

    /// GNU m4's limits for a test: `secs` of time, 1 MiB of output.
    fn limits_of(secs: u64) -> GnuLimits {
        GnuLimits {
            time: std::time::Duration::from_secs(secs),
            output: 1 << 20,
        }
    }

    #[test]
    fn a_gnu_m4_run_that_does_not_end_is_stopped_with_what_it_started() {
        let d = project(&[(
            "t.m4",
            "m4_syscmd(`echo $$ >pid; exec sleep 300')m4_define(`x', `x')x\n",
        )]);
        let limits = limits_of(2);
        let e = stopped(run_gnu(d.path(), "t.m4", limits));
        assert!(e.contains("did not end within 2 s"), "{e}");
        // the command it ran is gone too (killed with its process group)
        assert_gone(d.path());
        // and a run that ends within the limits is rendered
        let d = project(&[("t.m4", "m4_define(`x', `y')x\n")]);
        assert_eq!(run_gnu(d.path(), "t.m4", limits).unwrap().bytes, b"y\n");
    }

    /// Whether `pid` runs (a zombie does not).
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
    }

    /// The process whose PID the run wrote to `pid` in `d` is gone (it
    /// was sent SIGKILL; the kernel takes a moment to tear it down).
    fn assert_gone(d: &Path) {
        let pid: i32 = std::fs::read_to_string(d.join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let t = std::time::Instant::now();
        while alive(pid) && t.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!alive(pid), "pid {pid} still runs");
    }

    /// A template whose `m4_syscmd` leaves a process behind that holds
    /// m4's output open: m4 ends, the run fails at once at its template
    /// (not when the time runs out), and what it left is stopped.
    #[test]
    fn a_process_left_behind_by_m4_syscmd_is_stopped_and_reported() {
        let d = project(&[("t.m4", "m4_syscmd(`sleep 300 & echo $! >pid')done\n")]);
        let limits = limits_of(30);
        let e = stopped(run_gnu(d.path(), "t.m4", limits));
        assert!(e.contains("left running"), "{e}");
        assert_gone(d.path());
    }

    /// The same with a process that left m4's process group (`setsid`):
    /// found by the output it holds, stopped, and reported.
    #[test]
    fn a_process_left_behind_in_a_session_of_its_own_is_stopped_too() {
        let d = project(&[
            ("d.sh", "echo $$ >pid; exec sleep 300\n"),
            // (m4 ends once the daemon has left its group)
            (
                "t.m4",
                "m4_syscmd(`setsid sh d.sh & while [ ! -s pid ]; do sleep 0.01; done')done\n",
            ),
        ]);
        let limits = limits_of(30);
        let e = stopped(run_gnu(d.path(), "t.m4", limits));
        assert!(e.contains("left running"), "{e}");
        assert_gone(d.path());
    }

    /// Endless `m4_errprint`: stderr has the same limit as stdout.
    #[test]
    fn a_gnu_m4_run_that_floods_stderr_is_stopped() {
        let d = project(&[(
            "t.m4",
            "m4_define(`f', `m4_errprint(`0123456789abcdef')f')f\n",
        )]);
        let limits = limits_of(60);
        let e = stopped(run_gnu(d.path(), "t.m4", limits));
        assert!(e.contains("wrote more than 1 MiB"), "{e}");
    }

    #[test]
    fn a_gnu_m4_run_that_prints_without_end_is_stopped() {
        let d = project(&[("t.m4", "m4_define(`f', `0123456789abcdef`'f')f\n")]);
        let limits = limits_of(60);
        let e = stopped(run_gnu(d.path(), "t.m4", limits));
        assert!(e.contains("wrote more than 1 MiB"), "{e}");
    }

    #[test]
    fn renders_with_defines_preludes_and_reports_includes() {
        let d = project(&[
            ("p/a.m4", "m4_define(`SHOUT', `$1!')m4_dnl\n"),
            ("inc/part", "part of ENV_MACHINE\n"),
            (
                "t.m4.conf",
                "SHOUT(GREETING)\nm4_include(`inc/part')m4_sinclude(`inc/none')",
            ),
        ]);
        let r = run(d.path(), "t.m4.conf", &["p/a.m4"]).unwrap();
        assert_eq!(
            String::from_utf8(r.bytes).unwrap(),
            "hello web1!\npart of web1\n"
        );
        assert_eq!(r.read, ["p/a.m4", "t.m4.conf", "inc/part"]);
    }

    #[test]
    fn errors_point_at_the_line() {
        let d = project(&[("t.m4.conf", "ok\nm4_include(`missing')\n")]);
        let e = run(d.path(), "t.m4.conf", &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "m4: cannot open `missing': No such file or directory"
        );
        let at = e.location().unwrap();
        assert_eq!(
            (at.line, at.line_text.as_str()),
            (2, "m4_include(`missing')")
        );

        let d = project(&[("w.m4.conf", "m4_define(`x', 1, 2)x\n")]);
        let e = run(d.path(), "w.m4.conf", &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "m4: Warning: excess arguments to builtin `m4_define' ignored"
        );
    }

    fn job_render(
        d: &Path,
        program: &Path,
        src: &str,
        preludes: &[&str],
    ) -> Result<M4Rendered, RenderError> {
        let defines = vec![("ENV_MACHINE".to_string(), "web1".to_string())];
        let preludes: Vec<String> = preludes.iter().map(|s| s.to_string()).collect();
        render(&M4Job {
            program,
            cwd: d,
            defines: &defines,
            preludes: &preludes,
            src,
        })
    }

    /// No m4 process: a program that does not exist is never started.
    #[test]
    fn renders_in_process_without_starting_m4() {
        let d = project(&[
            (
                "p/a.m4",
                "m4_define(`SHOUT', `m4_translit(`$1', `a-z', `A-Z')!')m4_dnl\n",
            ),
            ("t.m4.conf", "SHOUT(ENV_MACHINE) m4_eval(6*7)\n"),
        ]);
        let nowhere = d.path().join("no-such-m4");
        let r = job_render(d.path(), &nowhere, "t.m4.conf", &["p/a.m4"]).unwrap();
        assert_eq!(String::from_utf8(r.bytes).unwrap(), "WEB1! 42\n");
        assert_eq!(r.read, ["p/a.m4", "t.m4.conf"]);
    }

    /// A prelude edited between two renders is read again (the cached
    /// state after the preludes is only reused while they are unchanged).
    #[test]
    fn an_edited_prelude_is_evaluated_again() {
        let d = project(&[
            ("p/a.m4", "m4_define(`HDR', `one')m4_dnl\n"),
            ("p/inc", "m4_define(`INC', `first')m4_dnl\n"),
            (
                "p/b.m4",
                "m4_include(`p/inc')m4_sinclude(`p/maybe')m4_dnl\n",
            ),
            ("t.m4.conf", "HDR INC ifdef MAYBE\n"),
        ]);
        let nowhere = d.path().join("no-such-m4");
        let go = || {
            let r = job_render(d.path(), &nowhere, "t.m4.conf", &["p/a.m4", "p/b.m4"]).unwrap();
            String::from_utf8(r.bytes).unwrap()
        };
        assert_eq!(go(), "one first ifdef MAYBE\n");
        assert_eq!(go(), "one first ifdef MAYBE\n");
        std::fs::write(d.path().join("p/a.m4"), "m4_define(`HDR', `two')m4_dnl\n").unwrap();
        assert_eq!(go(), "two first ifdef MAYBE\n");
        // a file a prelude includes
        std::fs::write(d.path().join("p/inc"), "m4_define(`INC', `second')m4_dnl\n").unwrap();
        assert_eq!(go(), "two second ifdef MAYBE\n");
        // a file a prelude looked for and did not find
        std::fs::write(
            d.path().join("p/maybe"),
            "m4_define(`MAYBE', `now')m4_dnl\n",
        )
        .unwrap();
        assert_eq!(go(), "two second ifdef now\n");
    }

    /// What the evaluator declines is rendered by GNU m4, with GNU m4's bytes.
    #[test]
    fn declined_templates_fall_back_to_gnu_m4() {
        // `\|` in a regex: GNU regex takes the longest alternative
        let d = project(&[("t.m4.conf", "m4_patsubst(`abc', `a\\|ab', `X')\n")]);
        let r = job_render(d.path(), &locate().unwrap(), "t.m4.conf", &[]).unwrap();
        assert_eq!(String::from_utf8(r.bytes).unwrap(), "Xc\n");
        assert_eq!(r.read, ["t.m4.conf"]);
        // and that really went to the program given
        let nowhere = d.path().join("no-such-m4");
        let e = job_render(d.path(), &nowhere, "t.m4.conf", &[]).unwrap_err();
        assert!(matches!(e, RenderError::M4Missing), "{e:?}");
    }

    #[test]
    fn literal_include_names() {
        assert_eq!(
            literal_includes(
                "m4_include(`a/b')x m4_sinclude( `c' ) m4_include(d.m4) m4_include(DYN`'x)"
            ),
            ["a/b", "d.m4", "c"]
        );
    }

    #[test]
    fn location_parsing() {
        assert_eq!(
            parse_location("m4:a:b.m4:12: boom: x"),
            Some(("a:b.m4", 12, "boom: x"))
        );
        assert_eq!(parse_location("m4: warnings are fatal"), None);
    }
}
