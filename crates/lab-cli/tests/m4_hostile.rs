//! `lab build` of make-style templates that misuse GNU m4 (`LAB_M4=gnu`):
//! what `m4_syscmd` leaves running is stopped and the build fails at the
//! template, at once; an endless `m4_errprint` is stopped at its template.

use lab_testkit::{lab, TestLab};

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// `lab build` with every template rendered by GNU m4: it fails (exit
/// 1); what it said.
fn failed_build_with_gnu_m4(t: &TestLab) -> String {
    let out = lab(t, &["build", "-q"])
        .env("LAB_M4", "gnu")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    err
}

#[test]
fn a_daemon_started_by_m4_syscmd_fails_its_template_and_is_stopped() {
    let t = TestLab::new();
    t.file("layers/_/etc/ok.m4.txt", "fine\n")
        .file(
            "layers/_/etc/bg.m4.txt",
            "m4_syscmd(`sleep 300 & echo $! >bg.pid')x\n",
        )
        .file("machines/a/usr/local/opt/initd/layers/l.txt", "# none\n");
    let err = failed_build_with_gnu_m4(&t);
    assert!(err.contains("layers/_/etc/bg.m4.txt"), "{err}");
    assert!(err.contains("left running"), "{err}");
    assert!(!err.contains("did not end"), "{err}");
    let pid: i32 = t.read("bg.pid").trim().parse().unwrap();
    // (killed before lab exited; the kernel may take a moment to reap)
    let start = std::time::Instant::now();
    while alive(pid) && start.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!alive(pid), "`sleep 300` (pid {pid}) outlived the build");
}

#[test]
fn an_endless_m4_errprint_fails_its_template() {
    let t = TestLab::new();
    t.file(
        "layers/_/etc/loud.m4.txt",
        "m4_define(`f', `m4_errprint(`0123456789abcdef0123456789abcdef')f')f\n",
    )
    .file("machines/a/usr/local/opt/initd/layers/l.txt", "# none\n");
    let err = failed_build_with_gnu_m4(&t);
    assert!(err.contains("layers/_/etc/loud.m4.txt"), "{err}");
    assert!(err.contains("wrote more than"), "{err}");
}
