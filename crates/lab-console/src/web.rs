//! Requests: session cookie -> route -> role check (refusals audited) ->
//! CSRF check on every POST -> the page or the action. Pages are
//! minijinja templates whose names end in `.html`, so every value is
//! HTML-escaped; machine data is only ever a value. A strict
//! Content-Security-Policy allows no inline script.

use crate::fleet::Fleet;
use crate::jobs::{Jobs, Kind};
use crate::role::{self, Need, Role, ROUTES};
use crate::store::{Login, Session, Store};
use crate::Options;
use minijinja::{context, Environment, Value};
use std::io::{Read, Write};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tiny_http::{Header, Request, Response};

pub struct App {
    pub store: Store,
    pub fleet: Arc<Fleet>,
    pub jobs: Jobs,
    pub opts: Options,
    pub secure: bool,
    pub stopping: Arc<AtomicBool>,
    env: Environment<'static>,
}

const SESSION_COOKIE: &str = "lab_session";
/// The login form's CSRF token (double-submit: cookie and field agree).
const LOGIN_COOKIE: &str = "lab_login";
const MAX_FORM: u64 = 64 * 1024;

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../templates/base.html")),
    ("login.html", include_str!("../templates/login.html")),
    ("fleet.html", include_str!("../templates/fleet.html")),
    (
        "namespace.html",
        include_str!("../templates/namespace.html"),
    ),
    ("machine.html", include_str!("../templates/machine.html")),
    ("job.html", include_str!("../templates/job.html")),
    ("admin.html", include_str!("../templates/admin.html")),
    ("audit.html", include_str!("../templates/audit.html")),
    ("error.html", include_str!("../templates/error.html")),
];

fn ago(now: i64, at: i64) -> String {
    let s = (now - at).max(0);
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        7200..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86400),
    }
}

impl App {
    pub fn new(store: Store, fleet: Arc<Fleet>, opts: Options, secure: bool) -> App {
        let mut env = Environment::new();
        for (name, text) in TEMPLATES {
            env.add_template(name, text).expect("a console template");
        }
        env.add_filter("seg", |s: String| seg(&s));
        env.add_function("ago", |at: i64| ago(crate::store::now(), at));
        App {
            store,
            fleet,
            jobs: Jobs::default(),
            opts,
            secure,
            stopping: Arc::new(AtomicBool::new(false)),
            env,
        }
    }

    fn render(&self, name: &str, ctx: Value) -> String {
        match self.env.get_template(name).and_then(|t| t.render(ctx)) {
            Ok(s) => s,
            Err(e) => format!("template {name}: {e}")
                .replace('&', "&amp;")
                .replace('<', "&lt;"),
        }
    }
}

/// What a handler answers.
enum Answer {
    Page(u16, String),
    Redirect(String),
    Static(&'static str, &'static str),
    /// A page, and a cookie to set.
    WithCookie(Box<Answer>, String),
}

fn header(k: &str, v: &str) -> Header {
    Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("a valid header")
}

fn respond(req: Request, a: Answer) {
    let mut cookies = Vec::new();
    let mut a = a;
    while let Answer::WithCookie(inner, c) = a {
        cookies.push(c);
        a = *inner;
    }
    let mut resp = match a {
        Answer::Page(code, body) => Response::from_string(body)
            .with_status_code(code)
            .with_header(header("Content-Type", "text/html; charset=utf-8")),
        Answer::Redirect(to) => Response::from_string(String::new())
            .with_status_code(303)
            .with_header(header("Location", &to)),
        Answer::Static(ty, body) => {
            Response::from_string(body).with_header(header("Content-Type", ty))
        }
        Answer::WithCookie(..) => unreachable!(),
    };
    for c in cookies {
        resp.add_header(header("Set-Cookie", &c));
    }
    for (k, v) in [
        (
            "Content-Security-Policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'",
        ),
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "same-origin"),
        ("Cache-Control", "no-store"),
    ] {
        resp.add_header(header(k, v));
    }
    let _ = req.respond(resp);
}

fn cookie(req: &Request, name: &str) -> Option<String> {
    req.headers()
        .iter()
        .filter(|h| h.field.equiv("Cookie"))
        .flat_map(|h| h.value.as_str().split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn form(req: &mut Request) -> Vec<(String, String)> {
    let mut body = Vec::new();
    let _ = req.as_reader().take(MAX_FORM).read_to_end(&mut body);
    form_urlencoded::parse(&body).into_owned().collect()
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> &'a str {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

/// Equal, in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

pub fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl App {
    fn cookie_attrs(&self) -> &'static str {
        if self.secure {
            "Path=/; HttpOnly; SameSite=Strict; Secure"
        } else {
            "Path=/; HttpOnly; SameSite=Strict"
        }
    }

    fn error(&self, code: u16, message: &str, session: Option<&Session>) -> Answer {
        Answer::Page(
            code,
            self.render(
                "error.html",
                context! { code, message, user => session.map(|s| &s.user.name), csrf => session.map(|s| &s.csrf) },
            ),
        )
    }

    fn audit(&self, who: &str, action: &str, target: &str, outcome: &str, detail: &str) {
        // (a failure to audit is not the user's error; the action's
        // answer stands)
        let _ = self.store.audit(who, action, target, outcome, detail);
    }
}

pub fn handle(app: &App, mut req: Request) {
    let method = req.method().as_str().to_string();
    let url = req.url().to_string();
    let path = url.split('?').next().unwrap_or("/").to_string();
    let addr = req
        .remote_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let token = cookie(&req, SESSION_COOKIE);
    let session = token
        .as_deref()
        .and_then(|t| app.store.session(t).ok().flatten());
    let who = session
        .as_ref()
        .map(|s| s.user.name.clone())
        .unwrap_or_else(|| "anonymous".into());
    let Some(m) = role::route(&method, &path) else {
        return respond(req, app.error(404, "no such page", session.as_ref()));
    };
    let need = ROUTES[m.index].2;
    let pattern = ROUTES[m.index].1;
    let target = match (&m.ns, &m.machine) {
        (Some(ns), Some(mc)) => format!("{ns}/{mc}"),
        (Some(ns), None) => format!("{ns}/"),
        _ => path.clone(),
    };
    if !need.allows(session.as_ref().map(|s| &s.user), m.ns.as_deref()) {
        if session.is_none() && method == "GET" {
            return respond(req, Answer::Redirect("/login".into()));
        }
        app.audit(
            &who,
            &format!("{method} {pattern}"),
            &target,
            "refused",
            "no right",
        );
        return respond(
            req,
            app.error(
                403,
                "you do not have the right to do this",
                session.as_ref(),
            ),
        );
    }
    let form = if method == "POST" {
        form(&mut req)
    } else {
        Vec::new()
    };
    if method == "POST" && pattern != "/login" {
        let ok = session
            .as_ref()
            .is_some_and(|s| same(field(&form, "csrf"), &s.csrf));
        if !ok {
            app.audit(
                &who,
                &format!("{method} {pattern}"),
                &target,
                "refused",
                "CSRF token missing or wrong",
            );
            return respond(
                req,
                app.error(
                    403,
                    "the form's CSRF token is missing or wrong: reload the page",
                    session.as_ref(),
                ),
            );
        }
    }
    // a namespace route names a namespace that exists, and a machine of it
    if let Some(ns) = &m.ns {
        let known = app.store.namespaces().unwrap_or_default();
        if !known.contains(ns) {
            return respond(req, app.error(404, "no such namespace", session.as_ref()));
        }
        if let Some(mc) = &m.machine {
            if app.fleet.machine(ns, mc).is_none() {
                return respond(
                    req,
                    app.error(404, "no such machine in this namespace", session.as_ref()),
                );
            }
        }
    }
    if pattern == "/ns/{ns}/job/{job}/events" {
        return events(app, req, &m);
    }
    if pattern == "/ns/{ns}/watch/events" {
        return watch_events(app, req, m.ns.as_deref().unwrap_or_default());
    }
    let a = answer(
        app,
        &req,
        pattern,
        &m,
        session.as_ref(),
        &form,
        &addr,
        token.as_deref(),
    );
    respond(req, a);
}

#[allow(clippy::too_many_arguments)]
fn answer(
    app: &App,
    req: &Request,
    pattern: &str,
    m: &role::Matched,
    session: Option<&Session>,
    form: &[(String, String)],
    addr: &str,
    token: Option<&str>,
) -> Answer {
    let now = crate::store::now();
    let user = session.map(|s| &s.user.name);
    let csrf = session.map(|s| &s.csrf);
    let ns = m.ns.clone().unwrap_or_default();
    let machine = m.machine.clone().unwrap_or_default();
    match pattern {
        "/static/console.js" => {
            Answer::Static("text/javascript", include_str!("../static/console.js"))
        }
        "/static/console.css" => Answer::Static("text/css", include_str!("../static/console.css")),
        "/login" if req.method().as_str() == "GET" => {
            let t = crate::store::random_token();
            Answer::WithCookie(
                Box::new(Answer::Page(
                    200,
                    app.render("login.html", context! { csrf => t, user }),
                )),
                format!("{LOGIN_COOKIE}={t}; {}", app.cookie_attrs()),
            )
        }
        "/login" => {
            let expected = cookie(req, LOGIN_COOKIE).unwrap_or_default();
            if expected.is_empty() || !same(field(form, "csrf"), &expected) {
                return app.error(403, "the form's CSRF token is missing or wrong: reload the page", None);
            }
            let name = field(form, "user");
            let ttl = app.opts.session_ttl.as_secs() as i64;
            match app.store.login(name, field(form, "password"), addr, ttl) {
                Ok(Login::Ok { token, .. }) => {
                    app.audit(name, "login", "", "ok", addr);
                    Answer::WithCookie(
                        Box::new(Answer::Redirect("/".into())),
                        format!(
                            "{SESSION_COOKIE}={token}; Max-Age={ttl}; {}",
                            app.cookie_attrs()
                        ),
                    )
                }
                Ok(Login::Refused) => {
                    app.audit(name, "login", "", "refused", addr);
                    let t = crate::store::random_token();
                    Answer::WithCookie(
                        Box::new(Answer::Page(
                            401,
                            app.render(
                                "login.html",
                                context! { csrf => t, error => "wrong user name or password" },
                            ),
                        )),
                        format!("{LOGIN_COOKIE}={t}; {}", app.cookie_attrs()),
                    )
                }
                Ok(Login::Limited) => {
                    app.audit(name, "login", "", "rate-limited", addr);
                    app.error(429, "too many failed logins: wait a few minutes", None)
                }
                Err(e) => app.error(500, &e.to_string(), None),
            }
        }
        "/logout" => {
            if let Some(t) = token {
                let _ = app.store.logout(t);
            }
            Answer::WithCookie(
                Box::new(Answer::Redirect("/login".into())),
                format!("{SESSION_COOKIE}=; Max-Age=0; {}", app.cookie_attrs()),
            )
        }
        "/" => {
            let s = session.expect("a logged-in route");
            let all = app.store.namespaces().unwrap_or_default();
            let mine: Vec<Value> = all
                .iter()
                .filter(|n| Need::Member.allows(Some(&s.user), Some(n)))
                .map(|n| {
                    context! {
                        name => n,
                        seg => seg(n),
                        role => if s.user.superadmin { "superadmin" } else { s.user.role_in(n).map(Role::as_str).unwrap_or("") },
                        machines => app.fleet.namespace(n),
                    }
                })
                .collect();
            Answer::Page(
                200,
                app.render(
                    "fleet.html",
                    context! {
                        user, csrf, superadmin => s.user.superadmin,
                        namespaces => mine,
                        project_error => app.fleet.project_error(),
                        last_refresh => app.fleet.last_refresh().map(|(at, ms)| context! { at, ms }),
                        now,
                    },
                ),
            )
        }
        "/ns/{ns}" => {
            let s = session.expect("a logged-in route");
            Answer::Page(
                200,
                app.render(
                    "namespace.html",
                    context! {
                        user, csrf, ns, ns_seg => seg(&ns),
                        admin => Need::NsAdmin.allows(Some(&s.user), Some(&ns)),
                        machines => app.fleet.namespace(&ns),
                    },
                ),
            )
        }
        "/ns/{ns}/machine/{machine}" => {
            let s = session.expect("a logged-in route");
            let view = app.fleet.machine(&ns, &machine);
            let history: Vec<_> = app
                .store
                .audit_log(Some(&format!("{ns}/{machine}")), 200)
                .unwrap_or_default()
                .into_iter()
                .filter(|e| e.target == format!("{ns}/{machine}") && e.outcome != "refused")
                .collect();
            let generations = generation_rows(view.as_ref(), &history);
            Answer::Page(
                200,
                app.render(
                    "machine.html",
                    context! {
                        user, csrf, ns, ns_seg => seg(&ns), machine, machine_seg => seg(&machine),
                        admin => Need::NsAdmin.allows(Some(&s.user), Some(&ns)),
                        view, history, generations,
                    },
                ),
            )
        }
        "/ns/{ns}/machine/{machine}/sync"
        | "/ns/{ns}/machine/{machine}/diff"
        | "/ns/{ns}/machine/{machine}/rollback"
        | "/ns/{ns}/machine/{machine}/create"
        | "/ns/{ns}/machine/{machine}/start"
        | "/ns/{ns}/machine/{machine}/stop"
        | "/ns/{ns}/machine/{machine}/destroy"
        | "/ns/{ns}/machine/{machine}/key" => {
            let kind = match pattern.rsplit('/').next() {
                Some("sync") => Kind::Sync,
                Some("diff") => Kind::Diff,
                Some("rollback") => Kind::Rollback,
                Some("create") => Kind::Create,
                Some("start") => Kind::Start,
                Some("stop") => Kind::Stop,
                Some("destroy") => Kind::Destroy,
                _ => Kind::Key,
            };
            let who = user.cloned().unwrap_or_default();
            let key = if kind == Kind::Key {
                match lab_machines::PublicKey::parse(field(form, "key")) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        app.audit(
                            &who,
                            kind.as_str(),
                            &format!("{ns}/{machine}"),
                            "failed",
                            &e.to_string(),
                        );
                        return app.error(400, &e.to_string(), session);
                    }
                }
            } else {
                None
            };
            let detail = |id: u64| match &key {
                Some(k) => format!("job {id}: {} {}", k.kind, k.comment),
                None => format!("job {id}"),
            };
            let store = app.store.clone();
            let job = app.jobs.start(
                app.fleet.clone(),
                &ns,
                &machine,
                kind,
                &who,
                key.clone(),
                move |j, ok| {
                    let _ = store.audit(
                        &j.user,
                        j.kind.as_str(),
                        &format!("{}/{}", j.ns, j.machine),
                        if ok { "ok" } else { "failed" },
                        &match j.outcome() {
                            Some(said) => format!("job {}: {said}", j.id),
                            None => format!("job {}", j.id),
                        },
                    );
                },
            );
            app.audit(
                &who,
                kind.as_str(),
                &format!("{ns}/{machine}"),
                "started",
                &detail(job.id),
            );
            Answer::Redirect(format!("/ns/{}/job/{}", seg(&ns), job.id))
        }
        "/ns/{ns}/job/{job}" => {
            let Some(job) = m
                .job
                .as_deref()
                .and_then(|j| j.parse().ok())
                .and_then(|id| app.jobs.get(id))
                .filter(|j| j.ns == ns)
            else {
                return app.error(404, "no such job in this namespace", session);
            };
            let (lines, done) = job.since(0, Duration::ZERO);
            Answer::Page(
                200,
                app.render(
                    "job.html",
                    context! {
                        user, csrf, ns, ns_seg => seg(&ns),
                        machine => &job.machine, machine_seg => seg(&job.machine),
                        id => job.id, kind => job.kind.as_str(), by => &job.user,
                        started => job.started, lines, done,
                    },
                ),
            )
        }
        "/ns/{ns}/audit" => Answer::Page(
            200,
            app.render(
                "audit.html",
                context! {
                    user, csrf, ns,
                    entries => app.store.audit_log(Some(&format!("{ns}/")), 200).unwrap_or_default(),
                },
            ),
        ),
        "/admin" => admin_page(app, session, None),
        "/admin/namespaces" | "/admin/users" | "/admin/grants" | "/admin/revoke" => {
            let who = user.cloned().unwrap_or_default();
            let r = match pattern {
                "/admin/namespaces" => app
                    .store
                    .add_namespace(field(form, "name"))
                    .map(|_| ("add namespace", field(form, "name").to_string())),
                "/admin/users" => app
                    .store
                    .add_user(
                        field(form, "name"),
                        field(form, "password"),
                        field(form, "superadmin") == "on",
                    )
                    .map(|_| ("add user", field(form, "name").to_string())),
                "/admin/grants" => match Role::parse(field(form, "role")) {
                    Some(r) => app
                        .store
                        .grant(field(form, "user"), field(form, "namespace"), r)
                        .map(|_| {
                            (
                                "grant",
                                format!(
                                    "{} {} in {}",
                                    field(form, "user"),
                                    r.as_str(),
                                    field(form, "namespace")
                                ),
                            )
                        }),
                    None => Err(crate::ConsoleError::Invalid(
                        "a role is `admin` or `user`".into(),
                    )),
                },
                _ => app
                    .store
                    .revoke(field(form, "user"), field(form, "namespace"))
                    .map(|_| {
                        (
                            "revoke",
                            format!("{} in {}", field(form, "user"), field(form, "namespace")),
                        )
                    }),
            };
            match r {
                Ok((action, what)) => {
                    app.audit(&who, action, &what, "ok", "");
                    Answer::Redirect("/admin".into())
                }
                Err(e) => {
                    app.audit(&who, pattern, "", "failed", &e.to_string());
                    admin_page(app, session, Some(e.to_string()))
                }
            }
        }
        _ => app.error(404, "no such page", session),
    }
}

/// The machine's generations for its page: number, when, digest and,
/// when this console made it, who and what changed (the job's outcome
/// in the audit log: `generation N applied ...`).
fn generation_rows(
    view: Option<&crate::fleet::MachineView>,
    history: &[crate::store::AuditEntry],
) -> Vec<Value> {
    let Some(k) = view.and_then(|v| v.state.as_ref()) else {
        return Vec::new();
    };
    k.generations
        .iter()
        .map(|g| {
            let made = format!("generation {} applied", g.gen);
            let by = history
                .iter()
                .find(|e| e.outcome != "started" && e.detail.contains(&made));
            context! {
                gen => g.gen, at => g.at, digest => &g.digest,
                current => g.gen == k.generation,
                by => by.map(|e| &e.user),
                what => by.and_then(|e| e.detail.split_once(": ").map(|(_, w)| w.to_string())),
            }
        })
        .collect()
}

fn admin_page(app: &App, session: Option<&Session>, error: Option<String>) -> Answer {
    let users: Vec<Value> = app
        .store
        .users()
        .unwrap_or_default()
        .into_iter()
        .map(|u| {
            context! {
                name => u.name, superadmin => u.superadmin,
                roles => u.roles.iter().map(|(n, r)| format!("{} in {n}", r.as_str())).collect::<Vec<_>>(),
            }
        })
        .collect();
    Answer::Page(
        if error.is_some() { 400 } else { 200 },
        app.render(
            "admin.html",
            context! {
                user => session.map(|s| &s.user.name), csrf => session.map(|s| &s.csrf),
                error, users,
                namespaces => app.store.namespaces().unwrap_or_default(),
                entries => app.store.audit_log(None, 100).unwrap_or_default(),
            },
        ),
    )
}

/// A job's progress as server-sent events: every line so far, then each
/// new one as it comes, then `event: done` with `ok` or `failed`.
fn events(app: &App, req: Request, m: &role::Matched) {
    let job = m
        .job
        .as_deref()
        .and_then(|j| j.parse().ok())
        .and_then(|id| app.jobs.get(id))
        .filter(|j| Some(&j.ns) == m.ns.as_ref());
    let Some(job) = job else {
        return respond(req, app.error(404, "no such job in this namespace", None));
    };
    let mut w = req.into_writer();
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n";
    if w.write_all(head.as_bytes())
        .and_then(|_| w.flush())
        .is_err()
    {
        return;
    }
    let mut from = 0;
    loop {
        let (lines, done) = job.since(from, Duration::from_secs(15));
        from += lines.len();
        let mut out = String::new();
        for l in &lines {
            for part in l.split(['\n', '\r']) {
                out.push_str("data: ");
                out.push_str(part);
                out.push('\n');
            }
            out.push('\n');
        }
        if let Some(ok) = done {
            out.push_str(&format!(
                "event: done\ndata: {}\n\n",
                if ok { "ok" } else { "failed" }
            ));
        } else if lines.is_empty() {
            out.push_str(": still running\n\n");
        }
        if w.write_all(out.as_bytes()).and_then(|_| w.flush()).is_err()
            || done.is_some()
            || app.stopping.load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
    }
}

/// A watch record as a line for namespace `ns` (whose machines are
/// `mine`): only what concerns its machines (a cycle error, which is the
/// project's, concerns all).
fn watch_line(r: &lab_deploy::WatchRecord, mine: &[String]) -> Option<String> {
    use lab_deploy::WatchWhat;
    let ours = |m: &str| mine.iter().any(|n| n == m);
    match &r.what {
        WatchWhat::Start { machines } => {
            let ms: Vec<&str> = machines
                .iter()
                .filter(|m| ours(m))
                .map(String::as_str)
                .collect();
            (!ms.is_empty())
                .then(|| format!("lab watch started (pid {}) for {}", r.pid, ms.join(", ")))
        }
        WatchWhat::Cycle {
            number,
            changed,
            machines,
            ms,
        } => {
            let parts: Vec<String> = machines
                .iter()
                .filter(|m| ours(&m.name))
                .map(|m| format!("{}: {}", m.name, m.what))
                .collect();
            if parts.is_empty() {
                return None;
            }
            let what = match changed.len() {
                0 if *number == 0 => "start".to_string(),
                0 => "retry".to_string(),
                1..=3 => changed.join(", "),
                n => format!("{} and {} more", changed[..2].join(", "), n - 2),
            };
            Some(format!(
                "cycle {number} ({what}) -> {} [{ms} ms]",
                parts.join("; ")
            ))
        }
        WatchWhat::Error {
            machine: Some(m),
            text,
        } => ours(m).then(|| format!("{m}: {text}")),
        WatchWhat::Error {
            machine: None,
            text,
        } => Some(format!("the cycle could not build: {text}")),
        WatchWhat::Stop {} => Some("lab watch stopped".into()),
    }
}

/// The running `lab watch` of the project as server-sent events, for
/// namespace `ns`: `event: session` (its pid), every line of the session
/// so far, then each new one, then `event: done` when it stops. With no
/// watch running: `event: idle` at once, and the browser asks again
/// (`retry`).
fn watch_events(app: &App, req: Request, ns: &str) {
    let path = lab_core::LabDir::at(&app.opts.lab_dir).watch_log_path();
    let mine: Vec<String> = app
        .fleet
        .namespace(ns)
        .into_iter()
        .map(|m| m.name)
        .collect();
    let mut cursor = None;
    let first = lab_deploy::read_watch_log(&path, &mut cursor);
    let mut pid = first.records.first().map(|r| r.pid);
    let running = pid.is_some_and(lab_deploy::watch_alive)
        && !first
            .records
            .iter()
            .any(|r| r.what == lab_deploy::WatchWhat::Stop {});
    let mut w = req.into_writer();
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n";
    let mut send = |out: &str| w.write_all(out.as_bytes()).and_then(|_| w.flush()).is_ok();
    if !send(head) {
        return;
    }
    if !running {
        send("retry: 5000\nevent: idle\ndata: no lab watch is running\n\n");
        return;
    }
    let data = |line: &str| {
        let mut out = String::new();
        for part in line.split(['\n', '\r']) {
            out.push_str("data: ");
            out.push_str(part);
            out.push('\n');
        }
        out.push('\n');
        out
    };
    let mut out = format!(
        "retry: 5000\nevent: session\ndata: {}\n\n",
        pid.unwrap_or(0)
    );
    let mut records = first.records;
    let mut quiet = std::time::Instant::now();
    loop {
        let mut stopped = false;
        for r in &records {
            pid = Some(r.pid);
            if let Some(l) = watch_line(r, &mine) {
                out.push_str(&data(&l));
            }
            stopped |= r.what == lab_deploy::WatchWhat::Stop {};
        }
        if !stopped && pid.is_some_and(|p| !lab_deploy::watch_alive(p)) {
            out.push_str(&data(&format!(
                "lab watch (pid {}) ended without a word",
                pid.unwrap_or(0)
            )));
            stopped = true;
        }
        if stopped {
            out.push_str("event: done\ndata: stopped\n\n");
        } else if out.is_empty() && quiet.elapsed() > Duration::from_secs(15) {
            out.push_str(": still watching\n\n");
        }
        if !out.is_empty() {
            quiet = std::time::Instant::now();
            if !send(&out) {
                return;
            }
            out.clear();
        }
        if stopped || app.stopping.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
        let next = lab_deploy::read_watch_log(&path, &mut cursor);
        if next.new_session {
            out.push_str(&format!(
                "event: session\ndata: {}\n\n",
                next.records.first().map_or(0, |r| r.pid)
            ));
        }
        records = next.records;
    }
}
