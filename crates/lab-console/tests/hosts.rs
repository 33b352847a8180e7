//! The console against a real systemd test host (and a machine nobody
//! answers for), over HTTP: the fleet page, a sync with its live progress,
//! a failed unit whose journal says `<script>` shown as text, drift seen
//! and diffed, a rollback by the namespace admin.

mod common;

use common::Fixture;

const UNIT: &str = "[Unit]\nDescription=console probe\n\n[Service]\nExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n";

fn ok(events: &str) -> bool {
    events.contains("event: done\ndata: ok")
}

#[test]
fn a_real_host_through_the_console() {
    let fleet = lab_testhosts::TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let toml = format!(
        "[settings]\nknown_hosts = \"{kh}\"\nsettle_ms = 300\n\n\
         [machines.h1]\nhost = \"{addr}\"\nport = {port}\nuser = \"{user}\"\nidentity = \"{id}\"\nlayers = [\"base\"]\ntags = [\"team\"]\n\n\
         [machines.gone]\nhost = \"127.0.0.1\"\nport = {closed}\nidentity = \"{id}\"\nlayers = [\"base\"]\ntags = [\"team\"]\n",
        kh = h.known_hosts.display(),
        addr = h.address,
        port = h.port,
        user = h.user,
        id = h.identity.display(),
    );
    let f = Fixture::start(
        &toml,
        |lab| {
            lab.file("layers/base/etc/console-test.conf", "v1\n")
                .file("layers/base/etc/systemd/system/probe.service", UNIT);
        },
        |_| {},
    );
    f.people();
    let mut bob = f.login("bob");

    // a sync, its progress streamed line by line, to its end
    let (job, events) = bob.run_job("/ns/team/machine/h1/sync");
    assert!(ok(&events), "{events}");
    let lines: Vec<&str> = events
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    let at = |s: &str| {
        lines
            .iter()
            .position(|l| l.contains(s))
            .unwrap_or_else(|| panic!("{s:?} in {lines:?}"))
    };
    assert!(at("connecting") < at("syncing"));
    assert!(at("syncing") < at("generation 1 applied"));
    assert_eq!(run(h, "cat /etc/console-test.conf"), "v1\n");
    // (lab restarts a unit that runs; it does not start one)
    run(h, "systemctl start probe.service");
    let page = bob.get(&job).body;
    assert!(page.contains("finished: ok"), "{page}");

    // the fleet page: h1 in sync (looked at again after the sync), gone
    // unreachable once the background look has been at it
    let fleet_page = wait_for(&mut bob, "/", |b| {
        !b.contains("not looked at yet") && !b.contains("the first look")
    });
    assert!(fleet_page.contains(">h1</a>"), "{fleet_page}");
    let h1_row = fleet_page.split(">h1</a>").nth(1).unwrap();
    assert!(
        h1_row.split("</tr>").next().unwrap().contains("in sync"),
        "{fleet_page}"
    );
    let gone_row = fleet_page.split(">gone</a>").nth(1).unwrap();
    assert!(
        gone_row
            .split("</tr>")
            .next()
            .unwrap()
            .contains("<span class=\"bad\">no</span>"),
        "{fleet_page}"
    );

    // a unit that fails, saying <script> in its journal
    f.lab.file(
        "layers/base/etc/systemd/system/probe.service",
        &UNIT.replace(
            "ExecStart=/bin/sleep infinity",
            "ExecStart=/bin/sh -c 'echo \"<script>alert(1)</script>\" >&2; exit 3'",
        ),
    );
    let (_, events) = bob.run_job("/ns/team/machine/h1/sync");
    assert!(
        !ok(&events) && events.contains("failed unit: probe.service"),
        "{events}"
    );
    let page = bob.get("/ns/team/machine/h1").body;
    assert!(page.contains("Failed units"), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
        "{page}"
    );
    assert!(!page.contains("<script>alert"), "{page}");

    // drift on the machine: seen, and shown by a diff
    run(h, "echo changed by hand > /etc/console-test.conf");
    let (_, events) = bob.run_job("/ns/team/machine/h1/diff");
    assert!(ok(&events), "{events}");
    assert!(events.contains("data: -changed by hand"), "{events}");
    assert!(events.contains("data: +v1"), "{events}");
    let page = bob.get("/ns/team/machine/h1").body;
    assert!(
        page.contains("<span class=\"warn\">drifted</span>"),
        "{page}"
    );
    assert!(page.contains("console-test.conf"), "{page}");

    // alice (namespace user) may not roll back; bob may
    let mut alice = f.login("alice");
    assert_eq!(alice.act("/ns/team/machine/h1/rollback", &[]).status, 403);
    let (_, events) = bob.run_job("/ns/team/machine/h1/rollback");
    assert!(ok(&events), "{events}");
    assert!(events.contains("back on generation 1"), "{events}");
    assert_eq!(run(h, "systemctl is-active probe.service"), "active\n");
    let page = bob.get("/ns/team/machine/h1").body;
    assert!(!page.contains("Failed units"), "{page}");
    // the machine page lists who did what
    assert!(
        page.contains("<td>bob</td><td>rollback</td><td>ok</td>"),
        "{page}"
    );
    let refused = f.audited("refused");
    assert!(refused
        .iter()
        .any(|e| e.user == "alice" && e.target == "team/h1"));
}

fn run(h: &lab_testhosts::Host, cmd: &str) -> String {
    h.run(cmd).unwrap()
}

/// The page at `path` once `done` holds for it (the background look at
/// the machines runs when the console starts).
fn wait_for(c: &mut common::Client, path: &str, done: impl Fn(&str) -> bool) -> String {
    for _ in 0..600 {
        let b = c.get(path).body;
        if done(&b) {
            return b;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{path} never showed what was expected");
}
