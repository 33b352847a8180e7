//! The role matrix of the README, cell by cell over HTTP: every route as
//! anonymous, a namespace user, a namespace admin, the admin of another
//! namespace and a superadmin. Refused calls are audited.

mod common;

use common::{two_local, Client, Fixture, PASSWORD, TWO_LOCAL};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJq9OwHCNj+uFCjTTit6BICaoVBciA07qHeKWou66Slm matrix";

const ROLES: [&str; 5] = ["anonymous", "alice", "bob", "carol", "root"];

/// The README's matrix: (method, path, allowed per role of [`ROLES`]).
fn readme_matrix() -> Vec<(String, String, [bool; 5])> {
    let readme = include_str!("../../../README.md");
    let mut lines = readme
        .lines()
        .skip_while(|l| !l.starts_with("| route | anonymous | namespace user | namespace admin | admin of another namespace | superadmin |"));
    lines.next().expect("the role matrix in the README");
    lines.next(); // |---|
    let mut rows = Vec::new();
    for l in lines.take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 6, "a row of six cells: {l}");
        let (method, path) = cells[0]
            .trim_matches('`')
            .split_once(' ')
            .expect("`METHOD /path`");
        let mut allowed = [false; 5];
        for (i, c) in cells[1..].iter().enumerate() {
            allowed[i] = match *c {
                "yes" => true,
                "no" => false,
                other => panic!("a cell is yes or no: {other:?} in {l}"),
            };
        }
        rows.push((method.to_string(), path.to_string(), allowed));
    }
    rows
}

#[test]
fn the_readme_lists_every_route_once() {
    let mut readme: Vec<(String, String)> = readme_matrix()
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .collect();
    let mut code: Vec<(String, String)> = lab_console::role::ROUTES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    readme.sort();
    code.sort();
    assert_eq!(readme, code);
}

#[test]
fn every_route_answers_every_role_as_the_readme_says() {
    let f = Fixture::start(TWO_LOCAL, two_local, |_| {});
    f.people();
    let mut clients: Vec<Client> = ROLES
        .iter()
        .map(|r| {
            if *r == "anonymous" {
                f.client()
            } else {
                f.login(r)
            }
        })
        .collect();
    // a finished job of namespace team
    let (job, events) = clients[4].run_job("/ns/team/machine/dev/sync");
    assert!(events.contains("event: done\ndata: ok"), "{events}");
    let job_id = job.rsplit('/').next().unwrap().to_string();

    let mut n = 0;
    for (method, pattern, allowed) in readme_matrix() {
        let path = pattern
            .replace("{ns}", "team")
            .replace("{machine}", "dev")
            .replace("{job}", &job_id);
        for (i, role) in ROLES.iter().enumerate() {
            n += 1;
            let refused_before = f.audited("refused").len();
            let resp = match (method.as_str(), pattern.as_str()) {
                // (on a session of its own: these end or replace it)
                ("POST", "/login") => {
                    let mut c = f.client();
                    let user = if *role == "anonymous" { "root" } else { role };
                    c.login(user, PASSWORD)
                }
                ("POST", "/logout") => {
                    let mut c = if *role == "anonymous" {
                        f.client()
                    } else {
                        f.login(role)
                    };
                    let csrf = if *role == "anonymous" {
                        "none".to_string()
                    } else {
                        c.csrf()
                    };
                    c.post(&path, &[("csrf", &csrf)])
                }
                ("POST", _) => {
                    let c = &mut clients[i];
                    let csrf = if *role == "anonymous" {
                        "none".to_string()
                    } else {
                        c.csrf()
                    };
                    let name = format!("made{n}");
                    let form: Vec<(&str, &str)> = match pattern.as_str() {
                        "/admin/namespaces" => vec![("name", &name)],
                        "/admin/users" => vec![("name", &name), ("password", "a long password")],
                        "/admin/grants" => {
                            vec![("user", "dave"), ("namespace", "team"), ("role", "user")]
                        }
                        "/admin/revoke" => vec![("user", "dave"), ("namespace", "team")],
                        // (a valid key: a bad one is answered 400)
                        "/ns/{ns}/machine/{machine}/key" => vec![("key", KEY)],
                        _ => vec![],
                    };
                    let mut all = vec![("csrf", csrf.as_str())];
                    all.extend(form);
                    c.post(&path, &all)
                }
                _ => clients[i].get(&path),
            };
            let to_login = resp.status == 303 && resp.header("Location") == Some("/login");
            let refused = resp.status == 403 || (method == "GET" && to_login);
            assert_eq!(
                refused,
                !allowed[i],
                "{method} {pattern} as {role}: {} {:?}\n{}",
                resp.status,
                resp.header("Location"),
                resp.body
            );
            if allowed[i] {
                assert!(
                    (200..400).contains(&resp.status),
                    "{method} {pattern} as {role}: {}\n{}",
                    resp.status,
                    resp.body
                );
            } else if resp.status == 403 {
                let refused_now = f.audited("refused");
                assert_eq!(
                    refused_now.len(),
                    refused_before + 1,
                    "{method} {pattern} as {role}: audited"
                );
                let e = &refused_now[0];
                assert_eq!(e.user, *role);
                assert_eq!(e.action, format!("{method} {pattern}"));
            }
        }
    }
}
