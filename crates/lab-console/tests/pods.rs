//! A machine's page shows its pods with their state, on a real podman
//! test host (Debian trixie, rootless Quadlet `.kube` pods of the pod
//! user): running after a sync from the console, then stopped once the
//! pod is stopped on the node. Needs root.

mod common;

use common::Fixture;
use lab_testhosts::{OciImage, TestHosts};

/// The row of pod `name` in the page's pods table.
fn pod_row<'a>(page: &'a str, name: &str) -> &'a str {
    let table = page
        .split("<table id=\"pods\">")
        .nth(1)
        .unwrap_or_else(|| panic!("a pods table in {page}"));
    table
        .split("<tr>")
        .find(|r| r.starts_with(&format!("<td>{name}</td>")))
        .unwrap_or_else(|| panic!("a row of {name} in {table}"))
}

#[test]
fn the_machine_page_shows_its_pods_and_their_state() {
    assert!(lab_testhosts::is_root(), "this test needs root");
    let fleet = TestHosts::up_podman(1).expect("boot a podman test host");
    let h = &fleet.hosts()[0];
    let toml = format!(
        "[settings]\nknown_hosts = \"{kh}\"\n\n\
         [machines.h1]\nhost = \"{addr}\"\nport = {port}\nidentity = \"{id}\"\ntags = [\"team\"]\n",
        kh = h.known_hosts.display(),
        addr = h.address,
        port = h.port,
        id = h.identity.display(),
    );
    let f = Fixture::start(
        &toml,
        |lab| {
            std::fs::create_dir_all(lab.join("images")).unwrap();
            OciImage::new("localhost/idle:built")
                .busybox(h.root.as_ref().unwrap().join("bin/busybox"))
                .write(&lab.join("images/idle.tar"))
                .unwrap();
            lab.file(
                "machines/h1/pods/idle.yaml",
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: idle\nspec:\n  containers:\n  - name: main\n    image: idle\n    command: [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; while :; do sleep 1; done & wait\"]\n",
            );
        },
        |_| {},
    );
    f.people();
    let mut bob = f.login("bob");

    let (_, events) = bob.run_job("/ns/team/machine/h1/sync");
    assert!(events.contains("event: done\ndata: ok"), "{events}");
    assert_eq!(
        h.user_systemctl("is-active idle.service").unwrap(),
        "active\n"
    );
    let page = bob.get("/ns/team/machine/h1").body;
    let row = pod_row(&page, "idle");
    assert!(row.contains("<span class=\"ok\">running</span>"), "{row}");

    // stopped on the node: the next look at the machine says so
    h.user_systemctl("stop idle.service").unwrap();
    assert_eq!(
        h.user_systemctl("is-active idle.service").unwrap(),
        "inactive\n"
    );
    let (_, events) = bob.run_job("/ns/team/machine/h1/diff");
    assert!(events.contains("event: done\ndata: ok"), "{events}");
    let page = bob.get("/ns/team/machine/h1").body;
    let row = pod_row(&page, "idle");
    assert!(row.contains("<span class=\"warn\">stopped</span>"), "{row}");
}
