//! Running a command on a machine with a stream on its stdin: over one SSH
//! connection (reused for every command of a run), or with `sh` on this
//! host for `transport = "local"` machines.

use crate::SyncError;
use std::io::{Read, Write};
use std::process::{Command, Stdio};

/// What a command returned.
#[derive(Debug, Default)]
pub struct Output {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Feeds a command's stdin.
pub type Input<'a> = &'a mut dyn FnMut(&mut dyn Write) -> std::io::Result<()>;

/// A way to run commands on one machine.
pub trait Transport: Send {
    /// Run `command` with `sh` semantics; `input` writes its stdin, which is
    /// then closed. If the command stops reading early, the rest of the
    /// input is dropped and the exit status tells what happened.
    fn run(&mut self, command: &str, input: Input<'_>) -> Result<Output, SyncError>;

    /// Commands run so far (each is one request and one response).
    fn commands(&self) -> u64;

    /// Bytes written to commands' stdin so far.
    fn sent(&self) -> u64;

    /// Bytes of the commands themselves so far (as lab wrote them).
    fn command_bytes(&self) -> u64;

    /// Connect again after the connection was lost (to read the outcome of
    /// a command whose output was lost with it).
    /// What the user should be told about how the connection was made.
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }

    fn reconnect(&mut self) -> Result<(), SyncError> {
        Ok(())
    }

    /// Run `command` (no stdin) and hand its stdout to `out` as it comes
    /// (`lab logs -f`); stderr is returned with the exit status. The
    /// default runs it to its end first.
    fn run_streaming(
        &mut self,
        command: &str,
        out: &mut dyn FnMut(&[u8]),
    ) -> Result<(i32, Vec<u8>), SyncError> {
        let o = self.run(command, &mut |_| Ok(()))?;
        out(&o.stdout);
        Ok((o.status, o.stderr))
    }
}

/// Counts bytes on their way to a command's stdin, and swallows the error
/// of a command that stopped reading.
pub(crate) struct Counting<'a, W: Write> {
    pub inner: W,
    pub count: &'a mut u64,
    pub broken: bool,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.broken {
            return Ok(buf.len());
        }
        match self.inner.write(buf) {
            Ok(n) => {
                *self.count += n as u64;
                Ok(n)
            }
            // The command stopped reading (it exited early, or the
            // connection died): drop the rest; the exit status, or the
            // failure to get one, tells what happened.
            Err(_) => {
                self.broken = true;
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.broken {
            return Ok(());
        }
        self.inner.flush()
    }
}

/// A machine that is a directory on this host: commands run with `sh`.
#[derive(Default)]
pub struct LocalTransport {
    commands: u64,
    command_bytes: u64,
    sent: u64,
}

impl LocalTransport {
    pub fn new() -> LocalTransport {
        LocalTransport::default()
    }
}

impl Transport for LocalTransport {
    fn run(&mut self, command: &str, input: Input<'_>) -> Result<Output, SyncError> {
        self.commands += 1;
        self.command_bytes += command.len() as u64;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| SyncError::Local(format!("cannot run sh: {e}")))?;
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let readers = std::thread::spawn(move || {
            let mut o = Vec::new();
            let mut e = Vec::new();
            let t = std::thread::spawn(move || {
                let _ = err.read_to_end(&mut e);
                e
            });
            let _ = out.read_to_end(&mut o);
            (o, t.join().unwrap_or_default())
        });
        let written = {
            let stdin = child.stdin.take().unwrap();
            let mut w = Counting {
                inner: stdin,
                count: &mut self.sent,
                broken: false,
            };
            input(&mut w)
        };
        // (sh is waited for even when the input failed: its stdin is
        // closed now, so it ends, and leaves no zombie behind)
        let status = child
            .wait()
            .map_err(|e| SyncError::Local(format!("waiting for sh: {e}")))?;
        let (stdout, stderr) = readers.join().unwrap_or_default();
        written.map_err(|e| SyncError::Local(format!("writing to sh: {e}")))?;
        Ok(Output {
            status: status.code().unwrap_or(-1),
            stdout,
            stderr,
        })
    }

    fn commands(&self) -> u64 {
        self.commands
    }

    fn command_bytes(&self) -> u64 {
        self.command_bytes
    }

    fn sent(&self) -> u64 {
        self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's `sh` children, running or ended and not waited for.
    fn sh_children() -> Vec<String> {
        let me = std::process::id().to_string();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // `PID (COMM) STATE PPID ...`
            let Some((head, rest)) = stat.rsplit_once(") ") else {
                continue;
            };
            let f: Vec<&str> = rest.split(' ').collect();
            if head.ends_with("(sh") && f.len() > 1 && f[1] == me {
                out.push(stat);
            }
        }
        out
    }

    #[test]
    fn a_failed_input_leaves_no_zombie() {
        let mut t = LocalTransport::new();
        let r = t.run("cat >/dev/null; echo done", &mut |_| {
            Err(std::io::Error::other("the input broke"))
        });
        match r {
            Err(SyncError::Local(m)) => assert!(m.contains("the input broke"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(sh_children(), Vec::<String>::new());
    }
}
