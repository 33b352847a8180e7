//! The SSH transport against a real sshd on loopback.

use lab_sync::{SshTarget, SshTransport, Transport};
use lab_testhosts::SshdFixture;
use std::time::Duration;

fn connect(sshd: &SshdFixture, io_timeout: Duration) -> SshTransport {
    let t = SshTarget {
        identities: vec![sshd.identity().to_path_buf()],
        ..SshTarget::new(
            sshd.address(),
            sshd.port(),
            sshd.user(),
            sshd.known_hosts().to_path_buf(),
        )
    };
    SshTransport::connect(&t, false, Duration::from_secs(10), io_timeout).unwrap()
}

/// A command that reads only part of its input and exits: the rest of the
/// input is dropped at once (no wait for window space that never comes),
/// and what the command printed arrives whole. With a writer that waits
/// for window space, this test hangs for the I/O timeout of an hour.
#[test]
fn a_command_that_stops_reading_does_not_stall_the_writer() {
    let sshd = SshdFixture::start().unwrap();
    let mut t = connect(&sshd, Duration::from_secs(3600));
    let out = t
        .run(
            "head -c 5 >/dev/null; seq 1 20000; echo oops >&2; exit 3",
            &mut |w| {
                // far more than an SSH channel's window (2 MiB)
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..256 {
                    w.write_all(&chunk)?;
                }
                Ok(())
            },
        )
        .unwrap();
    assert_eq!(out.status, 3);
    let expected: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert_eq!(out.stdout_text(), expected);
    assert_eq!(out.stderr_text(), "oops\n");
    assert!(
        t.sent() < 64 * 1024 * 256,
        "the rest of the input was dropped"
    );

    // the connection is still good for the next command, with all input read
    let out = t
        .run("wc -c", &mut |w| w.write_all(&vec![b'y'; 3 * 1024 * 1024]))
        .unwrap();
    assert_eq!(out.stdout_text().trim(), (3 * 1024 * 1024).to_string());
}

/// What a command prints before it has read its input arrives whole (lab
/// must never discard output it has not read yet, such as the executor's
/// "waiting for the lock").
#[test]
fn output_printed_before_the_input_is_read_is_kept() {
    let sshd = SshdFixture::start().unwrap();
    let mut t = connect(&sshd, Duration::from_secs(60));
    let out = t
        .run("echo early; cat >/dev/null; echo late", &mut |w| {
            w.write_all(b"first part\n")?;
            w.flush()?;
            // the command's first line arrives meanwhile
            std::thread::sleep(Duration::from_millis(300));
            w.write_all(b"second part\n")?;
            w.flush()
        })
        .unwrap();
    assert_eq!(out.status, 0);
    assert_eq!(out.stdout_text(), "early\nlate\n");
}
