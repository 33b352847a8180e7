//! A machine's page lists every generation it keeps (number, when,
//! digest) and, for those this console made, who made it and what it
//! changed; read from the machine itself, so a sync made elsewhere shows
//! too, marked as not recorded here.

mod common;

use common::{two_local, Fixture, TWO_LOCAL};

/// The rows of the generations table.
fn generations(page: &str) -> Vec<String> {
    common::table_rows(page, "generations")
}

#[test]
fn the_machine_page_lists_its_generations() {
    let f = Fixture::start(TWO_LOCAL, two_local, |_| {});
    f.people();
    let mut bob = f.login("bob");
    let page = bob.get("/ns/team/machine/dev").body;
    assert!(
        page.contains("none yet (lab never synced it)") || page.contains("not looked at yet"),
        "{page}"
    );

    let (_, events) = bob.run_job("/ns/team/machine/dev/sync");
    assert!(events.contains("data: generation 1 applied"), "{events}");
    f.lab
        .file("layers/_/etc/motd.j2", "hello again {{ machine }}\n");
    let (_, events) = bob.run_job("/ns/team/machine/dev/sync");
    assert!(events.contains("data: generation 2 applied"), "{events}");

    let digest = |gen: u64| {
        std::fs::read_to_string(
            f.lab
                .join(&format!("dev-root/var/lib/lab/gen/{gen}/digest")),
        )
        .unwrap()
        .trim()
        .to_string()
    };
    let page = bob.get("/ns/team/machine/dev").body;
    let rows = generations(&page);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[0].starts_with("2 (current) | "), "{rows:?}");
    assert!(rows[0].contains(&digest(2)[..16]), "{rows:?}");
    assert!(rows[0].contains(" s ago"), "{rows:?}");
    assert!(
        rows[0].ends_with(": 1 written, 0 removed (by bob)"),
        "{rows:?}"
    );
    assert!(rows[0].contains("generation 2 applied in "), "{rows:?}");
    assert!(rows[1].starts_with("1 | "), "{rows:?}");
    assert!(rows[1].contains(&digest(1)[..16]), "{rows:?}");
    assert!(rows[1].contains("generation 1 applied in "), "{rows:?}");
    // the full digest is there, as a title
    assert!(page.contains(&format!("title=\"{}\"", digest(2))), "{page}");

    // a generation made without the console: listed, not recorded here
    f.lab.file("layers/_/etc/motd.j2", "third {{ machine }}\n");
    let engine = lab_engine::Engine::open(f.lab.path()).unwrap();
    let plan = lab_deploy::SyncPlan {
        machines: vec!["dev".into()],
        jobs: 1,
        rollback_on_failure: false,
    };
    let connector = lab_deploy::Connector::new(false).unwrap();
    let run = lab_deploy::sync(&engine, &connector, &plan, &lab_deploy::Quiet).unwrap();
    assert!(run.failed().is_empty());
    drop(engine);
    // (a diff looks at the machine again)
    let (_, events) = bob.run_job("/ns/team/machine/dev/diff");
    assert!(events.contains("event: done\ndata: ok"), "{events}");
    let rows = generations(&bob.get("/ns/team/machine/dev").body);
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows[0].starts_with("3 (current) | "), "{rows:?}");
    assert!(rows[0].ends_with("not recorded here"), "{rows:?}");
    assert!(rows[1].starts_with("2 | "), "{rows:?}");

    // a rollback: back on 2, which the page marks current
    let (_, events) = bob.run_job("/ns/team/machine/dev/rollback");
    assert!(events.contains("data: back on generation 2"), "{events}");
    let rows = generations(&bob.get("/ns/team/machine/dev").body);
    assert!(rows[0].starts_with("2 (current) | "), "{rows:?}");
}
