//! Pages never wait on a machine: while the background look is stuck on
//! a machine that accepts connections and never speaks SSH, the fleet
//! page answers from what is known, and an action on another machine
//! runs to its end.

mod common;

use common::Fixture;
use std::time::Duration;

#[test]
fn a_stuck_machine_blocks_no_page_and_no_action() {
    // accepts (the kernel completes the handshake) and never answers
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let toml = format!(
        "{}\n[machines.stuck]\nhost = \"127.0.0.1\"\nport = {port}\ntags = [\"team\"]\n",
        common::TWO_LOCAL
    );
    let f = Fixture::start(&toml, common::two_local, |o| {
        o.connect_timeout = Duration::from_secs(120);
    });
    f.people();
    let mut bob = f.login("bob");
    let page = bob.get("/");
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("the first look at the machines is running"),
        "{}",
        page.body
    );
    let stuck_row = page.body.split(">stuck</a>").nth(1).unwrap();
    assert!(stuck_row
        .split("</tr>")
        .next()
        .unwrap()
        .contains("not looked at yet"));
    // an action on another machine is not held up by the look
    let (_, events) = bob.run_job("/ns/team/machine/dev/sync");
    assert!(events.contains("event: done\ndata: ok"), "{events}");
    let page = bob.get("/").body;
    let dev_row = page.split(">dev</a>").nth(1).unwrap();
    assert!(
        dev_row.split("</tr>").next().unwrap().contains("in sync"),
        "{page}"
    );
    assert!(
        page.contains("the first look at the machines is running"),
        "{page}"
    );
    drop(silent);
}
