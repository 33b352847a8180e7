//! A command through an OpenSSH master, spoken to its control socket
//! directly: what `ssh -S SOCKET -T HOST COMMAND` does as a mux client
//! (OpenSSH's `PROTOCOL.mux`: hello, `MUX_C_NEW_SESSION` with the three
//! stdio descriptors passed over the socket, then the exit message),
//! without starting an `ssh` process for it. Each `ssh` client costs
//! ~10 ms of CPU here (loading libcrypto and initialising OpenSSL, reading
//! its configuration) for a command whose own work on the master's side is
//! a channel; with many machines or many commands that was most of lab's
//! own CPU (in a `lab status` of 8 hosts the ssh processes, masters
//! included, were 27 % of the whole machine's).
//!
//! The master does everything else as it does for its own clients (the
//! connection, the channel, the command's environment): a session is only
//! ever opened on a master lab started ([`crate::mux`]).

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

const MUX_MSG_HELLO: u32 = 0x0000_0001;
const MUX_C_NEW_SESSION: u32 = 0x1000_0002;
const MUX_S_PERMISSION_DENIED: u32 = 0x8000_0002;
const MUX_S_FAILURE: u32 = 0x8000_0003;
const MUX_S_EXIT_MESSAGE: u32 = 0x8000_0004;
const MUX_S_SESSION_OPENED: u32 = 0x8000_0006;
const MUX_S_TTY_ALLOC_FAIL: u32 = 0x8000_0008;
const SSHMUX_VER: u32 = 4;
/// A packet longer than this from the master is not one of its replies.
const PACKET_MAX: u32 = 256 * 1024;

/// A command running through the master: the control connection that
/// will carry its exit status.
pub(crate) struct Session {
    control: UnixStream,
    id: u32,
}

/// Its stdin (`None`: it reads `/dev/null`), stdout and stderr.
pub(crate) struct Pipes {
    pub stdin: Option<File>,
    pub stdout: File,
    pub stderr: File,
}

fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_be_bytes());
}

fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
    put_u32(buf, s.len() as u32);
    buf.extend_from_slice(s);
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("ssh master: {what}"))
}

fn write_packet(s: &mut UnixStream, body: &[u8]) -> io::Result<()> {
    let mut p = Vec::with_capacity(4 + body.len());
    put_str(&mut p, body);
    s.write_all(&p)
}

/// The next packet from the master (`None`: it closed the connection).
fn read_packet(s: &mut UnixStream) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len);
    if len > PACKET_MAX {
        return Err(bad("a reply too long"));
    }
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body)?;
    Ok(Some(body))
}

/// Reading a packet's fields in order.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u32(&mut self) -> io::Result<u32> {
        if self.0.len() < 4 {
            return Err(bad("a reply too short"));
        }
        let (v, rest) = self.0.split_at(4);
        self.0 = rest;
        Ok(u32::from_be_bytes(v.try_into().expect("4 bytes")))
    }

    fn string(&mut self) -> io::Result<String> {
        let n = self.u32()? as usize;
        if self.0.len() < n {
            return Err(bad("a reply too short"));
        }
        let (v, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(String::from_utf8_lossy(v).into_owned())
    }
}

/// A pipe (read end, write end), both close-on-exec.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both are open descriptors of ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// One descriptor over the socket, with the one byte OpenSSH's
/// `mm_send_fd` sends beside it.
fn send_fd(s: &UnixStream, fd: &OwnedFd) -> io::Result<()> {
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(&[0u8])];
    loop {
        match sendmsg::<()>(s.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None) {
            Ok(1) => return Ok(()),
            Ok(_) => return Err(bad("a descriptor was not sent whole")),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io::Error::from(e)),
        }
    }
}

impl Session {
    /// Open a session running `command` on the master listening on
    /// `socket`; `stdin`: whether the command reads what is written to
    /// [`Pipes::stdin`] (else `/dev/null`).
    pub(crate) fn open(socket: &Path, command: &str, stdin: bool) -> io::Result<(Session, Pipes)> {
        let mut control = UnixStream::connect(socket)?;
        let mut hello = Vec::new();
        put_u32(&mut hello, MUX_MSG_HELLO);
        put_u32(&mut hello, SSHMUX_VER);
        write_packet(&mut control, &hello)?;
        let reply = read_packet(&mut control)?.ok_or_else(|| bad("it closed at hello"))?;
        let mut f = Fields(&reply);
        if f.u32()? != MUX_MSG_HELLO {
            return Err(bad("no hello"));
        }
        if f.u32()? != SSHMUX_VER {
            return Err(bad("another protocol version"));
        }
        let id = 1;
        let mut m = Vec::new();
        put_u32(&mut m, MUX_C_NEW_SESSION);
        put_u32(&mut m, id);
        put_str(&mut m, b""); // reserved
        put_u32(&mut m, 0); // tty
        put_u32(&mut m, 0); // X11 forwarding
        put_u32(&mut m, 0); // agent forwarding
        put_u32(&mut m, 0); // subsystem
        put_u32(&mut m, 0xffff_ffff); // no escape character
        put_str(&mut m, b""); // terminal type
        put_str(&mut m, command.as_bytes());
        write_packet(&mut control, &m)?;
        let (in_r, in_w) = if stdin {
            let (r, w) = pipe()?;
            (r, Some(w))
        } else {
            (OwnedFd::from(File::open("/dev/null")?), None)
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        for fd in [&in_r, &out_w, &err_w] {
            send_fd(&control, fd)?;
        }
        // (the master holds its own copies now: ours would keep the
        // command's stdin open, and our reads of its output from ending)
        drop((in_r, out_w, err_w));
        let reply = read_packet(&mut control)?.ok_or_else(|| bad("it closed the session"))?;
        let mut f = Fields(&reply);
        match f.u32()? {
            MUX_S_SESSION_OPENED => {
                if f.u32()? != id {
                    return Err(bad("a reply to another request"));
                }
                let id = f.u32()?;
                Ok((
                    Session { control, id },
                    Pipes {
                        stdin: in_w.map(File::from),
                        stdout: File::from(out_r),
                        stderr: File::from(err_r),
                    },
                ))
            }
            t @ (MUX_S_PERMISSION_DENIED | MUX_S_FAILURE) => {
                let _request = f.u32()?;
                let why = f.string()?;
                Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "ssh master {}: {why}",
                        if t == MUX_S_FAILURE {
                            "failed the session"
                        } else {
                            "refused the session"
                        }
                    ),
                ))
            }
            _ => Err(bad("an unexpected reply to a new session")),
        }
    }

    /// Wait for the session's end: the command's exit status, or `None`
    /// when the master ended the session without one (the command was
    /// killed by a signal, or the master's connection is gone).
    ///
    /// The exit message comes before the master has written all of the
    /// command's output into our pipes; the session ends when the master
    /// closes the control connection. Closing it ourselves at the exit
    /// message makes the master drop the output it still holds (OpenSSH's
    /// own client waits for the close too; the rollback test lost the tail
    /// of a manifest that way under load).
    pub(crate) fn wait(&mut self) -> io::Result<Option<i32>> {
        let mut status = None;
        loop {
            let Some(p) = read_packet(&mut self.control)? else {
                return Ok(status);
            };
            let mut f = Fields(&p);
            match f.u32()? {
                MUX_S_EXIT_MESSAGE => {
                    if f.u32()? != self.id {
                        return Err(bad("the exit of another session"));
                    }
                    status = Some(f.u32()? as i32);
                }
                MUX_S_TTY_ALLOC_FAIL => {}
                _ => return Err(bad("an unexpected message during a session")),
            }
        }
    }
}
