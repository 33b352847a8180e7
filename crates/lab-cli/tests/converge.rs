//! Convergence on real test hosts: every sync checks what is really on the
//! machine, reports drift by path and kind, and repairs it with the units'
//! usual actions; hostile changes are refused, not followed.

mod common_hosts;

use common_hosts::*;
use lab_agent::DriftKind;
use lab_sync::{Outcome, SyncOptions};
use lab_testhosts::TestHosts;

fn drift_of(r: &lab_sync::SyncReport) -> Vec<(String, DriftKind)> {
    r.drift.iter().map(|d| (d.path.clone(), d.kind)).collect()
}

fn units_of(r: &lab_agent::Report) -> Vec<String> {
    r.units
        .iter()
        .map(|u| format!("{} {} {}", u.action, u.unit, u.result))
        .collect()
}

#[test]
fn every_drift_kind_is_found_and_repaired_and_nothing_else_is_touched() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    let lab = project(fleet.hosts());
    lab.file("layers/base/srv/app/content", "content v1\n")
        .file("layers/base/srv/app/deleted", "deleted v1\n")
        .file("layers/base/srv/app/mode", "mode v1\n")
        .file("layers/base/srv/app/owner", "owner v1\n")
        .file("layers/base/srv/app/touched", "touched v1\n")
        .file("layers/base/srv/app/taken", "lab's taken\n")
        .file("layers/base/srv/app/sub/kept", "kept\n")
        .symlink("layers/base/srv/app/link", "/etc/motd");
    // a file that was there before lab: lab takes it over
    run(h, "mkdir -p /srv/app && echo original >/srv/app/taken");

    let first = sync(&lab, "h1");
    assert_eq!(first.report.outcome, Outcome::Applied { gen: 1 });
    assert!(first.report.drift.is_empty());
    let m = manifest(&lab, "h1");
    assert_eq!(remote_state(h, &m), expected_state(&m));

    // nothing changed anywhere: one command, and the check is in it
    let again = sync(&lab, "h1");
    assert_eq!(again.report.outcome, Outcome::Unchanged { gen: 1 });
    assert!(again.report.drift.is_empty());
    assert_eq!((again.commands, again.sent), (1, 0));

    // behind lab's back
    run(
        h,
        "echo 2 >/etc/probe/version; \
         echo changed >/srv/app/content; rm /srv/app/deleted; chmod 600 /srv/app/mode; \
         chown nobody /srv/app/owner; touch /srv/app/touched; \
         echo again >/srv/app/taken; ln -sfn /etc/hostname /srv/app/link; \
         rm -r /srv/app/sub; echo mine >/srv/app/unmanaged; \
         chmod 700 /srv/app",
    );
    let starts = run(h, "cat /run/probe.reloads 2>/dev/null || true");
    let fixed = sync(&lab, "h1");
    assert_eq!(
        drift_of(&fixed.report),
        vec![
            ("etc/probe/version".to_string(), DriftKind::ContentChanged),
            ("srv/app".to_string(), DriftKind::ModeChanged),
            ("srv/app/content".to_string(), DriftKind::ContentChanged),
            ("srv/app/deleted".to_string(), DriftKind::Deleted),
            ("srv/app/link".to_string(), DriftKind::Retargeted),
            ("srv/app/mode".to_string(), DriftKind::ModeChanged),
            ("srv/app/owner".to_string(), DriftKind::OwnerChanged),
            ("srv/app/sub".to_string(), DriftKind::Deleted),
            ("srv/app/sub/kept".to_string(), DriftKind::Deleted),
            ("srv/app/taken".to_string(), DriftKind::TakenOverChanged),
        ]
    );
    assert_eq!(fixed.report.outcome, Outcome::Applied { gen: 2 });
    // only the drifted files travel (the touched one is still lab's)
    let sizes: u64 = [
        "1\n",
        "content v1\n",
        "deleted v1\n",
        "mode v1\n",
        "owner v1\n",
        "kept\n",
        "lab's taken\n",
    ]
    .iter()
    .map(|s| s.len() as u64)
    .sum();
    assert_eq!(fixed.report.content_bytes, sizes);
    assert_eq!(units_of(&fixed.report.apply), ["reload probe.service ok"]);
    assert_eq!(
        run(h, "cat /run/probe.reloads"),
        format!("{starts}1\n"),
        "the rule's reload ran once, after the repair"
    );
    assert_eq!(remote_state(h, &m), expected_state(&m));
    assert_eq!(run(h, "stat -c %U /srv/app/owner"), "root\n");
    // what lab does not manage is neither reported nor touched
    assert_eq!(run(h, "cat /srv/app/unmanaged"), "mine\n");

    let clean = sync(&lab, "h1");
    assert_eq!(clean.report.outcome, Outcome::Unchanged { gen: 2 });
    assert!(clean.report.drift.is_empty());
    assert_eq!(clean.commands, 1);

    // a change and drift at once: one plan does both, after the machine
    // said what it found
    lab.file("layers/base/srv/app/content", "content v2\n");
    run(h, "echo again >/srv/app/mode");
    let both = sync(&lab, "h1");
    assert_eq!(
        drift_of(&both.report),
        vec![("srv/app/mode".to_string(), DriftKind::ContentChanged)]
    );
    assert_eq!(both.report.outcome, Outcome::Applied { gen: 3 });
    assert_eq!(both.commands, 2, "refused with what it found, then applied");
    let m = manifest(&lab, "h1");
    assert_eq!(remote_state(h, &m), expected_state(&m));
}

#[test]
fn hostile_drift_is_refused_or_replaced_never_followed() {
    let fleet = TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    let lab = project(fleet.hosts());
    lab.file("layers/base/srv/app/planted", "lab's\n")
        .file("layers/base/srv/app/dir", "lab's file\n")
        .file("layers/base/srv/app/d/x", "x\n");
    sync(&lab, "h1");

    // a symlink planted where a managed file was: replaced, and what it
    // pointed at is neither read, nor reported, nor written
    run(
        h,
        "echo secret >/root/secret; chmod 600 /root/secret; \
         ln -sfn /root/secret /srv/app/planted",
    );
    let r = sync(&lab, "h1");
    assert_eq!(
        drift_of(&r.report),
        vec![("srv/app/planted".to_string(), DriftKind::KindChanged)]
    );
    assert_eq!(
        run(h, "test -L /srv/app/planted || cat /srv/app/planted"),
        "lab's\n"
    );
    assert_eq!(run(h, "cat /root/secret"), "secret\n");

    // a directory where a managed file was: lab did not make it, so lab
    // does not delete it: the sync fails, naming the path, and the
    // machine stays as it was
    run(
        h,
        "rm /srv/app/dir && mkdir /srv/app/dir && echo theirs >/srv/app/dir/f",
    );
    let e = sync_with(&lab, "h1", &SyncOptions::default())
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("/srv/app/dir is a directory lab did not create"),
        "{e}"
    );
    assert_eq!(run(h, "cat /srv/app/dir/f"), "theirs\n");

    // a directory lab made, replaced by a symlink to elsewhere: nothing is
    // looked at or written below it
    run(
        h,
        "rm -r /srv/app/dir && rm -r /srv/app/d && mkdir -p /root/elsewhere && \
         echo theirs >/root/elsewhere/x && ln -s /root/elsewhere /srv/app/d",
    );
    let e = sync_with(&lab, "h1", &SyncOptions::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("/srv/app/d"), "{e}");
    assert_eq!(run(h, "cat /root/elsewhere/x"), "theirs\n");

    // once the planted link is gone, the sync repairs the rest
    run(h, "rm /srv/app/d");
    let r = sync_with(&lab, "h1", &SyncOptions::default()).unwrap();
    assert!(matches!(r.report.outcome, Outcome::Applied { .. }));
    let m = manifest(&lab, "h1");
    assert_eq!(remote_state(h, &m), expected_state(&m));
}
