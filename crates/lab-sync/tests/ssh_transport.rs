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
    stops_reading(&mut t);
}

/// A command that reads 5 bytes of 16 MiB and exits 3 with output on both
/// streams; then one that reads 3 MiB whole.
fn stops_reading(t: &mut dyn Transport) {
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
    early_output(&mut t);
}

fn early_output(t: &mut dyn Transport) {
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

/// The same through a shared OpenSSH master, whose control socket lab
/// speaks to itself (OpenSSH's mux protocol: no `ssh` process per
/// command): exit statuses (255 too: it is the command's), stdout and
/// stderr whole, a command that stops reading its input, output printed
/// before the input is read, a command killed by a signal, a streamed
/// command; and once the master is gone, an error rather than a status.
#[test]
fn commands_through_a_shared_master() {
    use std::os::unix::fs::FileTypeExt;
    let sshd = SshdFixture::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = lab_sync::Endpoint::Ssh(lab_sync::SshSpec {
        host: sshd.address().into(),
        port: Some(sshd.port()),
        user: Some(sshd.user().into()),
        identities: vec![sshd.identity().to_path_buf()],
        known_hosts: Some(sshd.known_hosts().to_path_buf()),
        sudo: false,
        control_dir: Some(dir.path().to_path_buf()),
    });
    let connect = || {
        lab_sync::connect(
            &endpoint,
            None,
            false,
            Duration::from_secs(10),
            Duration::from_secs(60),
        )
        .unwrap()
    };
    // lab's own connection, and beside it a master for the next ones
    drop(connect());
    let socket = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.file_type().unwrap().is_socket())
            .map(|e| e.path())
    };
    let start = std::time::Instant::now();
    while socket().is_none() {
        assert!(start.elapsed() < Duration::from_secs(10), "no master");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut t = connect();
    stops_reading(t.as_mut());
    assert_eq!(t.run("exit 255", &mut |_| Ok(())).unwrap().status, 255);
    // output the master still holds when the command's exit is told
    // arrives whole (several rounds: a loss is a race)
    for _ in 0..5 {
        let out = t
            .run("head -c 20000000 /dev/zero; echo end", &mut |_| Ok(()))
            .unwrap();
        assert_eq!(out.stdout.len(), 20_000_004);
        assert!(out.stdout.ends_with(b"end\n"));
    }
    early_output(t.as_mut());
    // (no exit status: 0, as lab's own connection reports it)
    let out = t.run("echo before; kill -9 $$", &mut |_| Ok(())).unwrap();
    assert_eq!((out.status, out.stdout_text()), (0, "before\n".into()));
    let mut streamed = Vec::new();
    let (status, err) = t
        .run_streaming("seq 1 3; echo e >&2; exit 4", &mut |b| {
            streamed.extend_from_slice(b)
        })
        .unwrap();
    assert_eq!(
        (status, err, streamed),
        (4, b"e\n".to_vec(), b"1\n2\n3\n".to_vec())
    );

    // the master gone: the next command fails (lab's own connection would
    // have run it: these went through the master)
    let master = socket().unwrap();
    let stop = std::process::Command::new("ssh")
        .arg("-S")
        .arg(&master)
        .args(["-O", "exit", "x"])
        .output()
        .unwrap();
    assert!(stop.status.success(), "{stop:?}");
    let err = t.run("true", &mut |_| Ok(())).unwrap_err();
    assert!(err.to_string().contains("the connection was lost"), "{err}");
}
