//! Roles and what each route needs: the console's one statement of the
//! role matrix (the README shows it as a table, and a test checks the two
//! agree over HTTP).
//!
//! A superadmin may do everything. In a namespace, a user holds at most
//! one role: `admin` (may also roll back, create, start, stop and destroy
//! container machines and add an SSH key to one) or `user` (may look,
//! diff and sync: a sync only brings a machine to what lab.toml already
//! says, it changes no resource). A namespace is the set of machines of lab.toml
//! tagged with its name.

use crate::store::User;
use crate::ConsoleError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }
}

/// What a route asks of whoever calls it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Anyone, logged in or not.
    Anyone,
    /// Any logged-in user.
    LoggedIn,
    /// A role (any) in the route's namespace.
    Member,
    /// The admin role in the route's namespace.
    NsAdmin,
    Superadmin,
}

impl Need {
    /// May `user` (None: anonymous) call a route needing this, in `ns`?
    pub fn allows(self, user: Option<&User>, ns: Option<&str>) -> bool {
        let Some(u) = user else {
            return self == Need::Anyone;
        };
        if u.superadmin {
            return true;
        }
        let role = ns.and_then(|n| u.role_in(n));
        match self {
            Need::Anyone | Need::LoggedIn => true,
            Need::Member => role.is_some(),
            Need::NsAdmin => role == Some(Role::Admin),
            Need::Superadmin => false,
        }
    }
}

/// Every route: method, path pattern (`{ns}`, `{machine}`, `{job}` stand
/// for a segment) and what it needs.
pub const ROUTES: &[(&str, &str, Need)] = &[
    ("GET", "/login", Need::Anyone),
    ("POST", "/login", Need::Anyone),
    ("GET", "/static/console.js", Need::Anyone),
    ("GET", "/static/console.css", Need::Anyone),
    ("POST", "/logout", Need::LoggedIn),
    ("GET", "/", Need::LoggedIn),
    ("GET", "/ns/{ns}", Need::Member),
    ("GET", "/ns/{ns}/machine/{machine}", Need::Member),
    ("POST", "/ns/{ns}/machine/{machine}/diff", Need::Member),
    ("POST", "/ns/{ns}/machine/{machine}/sync", Need::Member),
    ("POST", "/ns/{ns}/machine/{machine}/rollback", Need::NsAdmin),
    ("POST", "/ns/{ns}/machine/{machine}/create", Need::NsAdmin),
    ("POST", "/ns/{ns}/machine/{machine}/start", Need::NsAdmin),
    ("POST", "/ns/{ns}/machine/{machine}/stop", Need::NsAdmin),
    ("POST", "/ns/{ns}/machine/{machine}/destroy", Need::NsAdmin),
    ("POST", "/ns/{ns}/machine/{machine}/key", Need::NsAdmin),
    ("GET", "/ns/{ns}/job/{job}", Need::Member),
    ("GET", "/ns/{ns}/job/{job}/events", Need::Member),
    ("GET", "/ns/{ns}/watch/events", Need::Member),
    ("GET", "/ns/{ns}/audit", Need::NsAdmin),
    ("GET", "/admin", Need::Superadmin),
    ("POST", "/admin/namespaces", Need::Superadmin),
    ("POST", "/admin/users", Need::Superadmin),
    ("POST", "/admin/grants", Need::Superadmin),
    ("POST", "/admin/revoke", Need::Superadmin),
];

/// A route matched against a request path: its index in [`ROUTES`] and
/// the segments that stood for `{ns}`, `{machine}`, `{job}`.
#[derive(Debug, Default)]
pub struct Matched {
    pub index: usize,
    pub ns: Option<String>,
    pub machine: Option<String>,
    pub job: Option<String>,
}

/// Find the route of `method` `path` (segments percent-decoded).
pub fn route(method: &str, path: &str) -> Option<Matched> {
    let segs: Vec<String> = path
        .split('/')
        .skip(1)
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    'routes: for (i, (m, pat, _)) in ROUTES.iter().enumerate() {
        if *m != method {
            continue;
        }
        let pats: Vec<&str> = pat.split('/').skip(1).collect();
        if pats.len() != segs.len() {
            continue;
        }
        let mut found = Matched {
            index: i,
            ..Default::default()
        };
        for (p, s) in pats.iter().zip(&segs) {
            match *p {
                "{ns}" => found.ns = Some(s.clone()),
                "{machine}" => found.machine = Some(s.clone()),
                "{job}" => found.job = Some(s.clone()),
                lit if lit == s => {}
                _ => continue 'routes,
            }
        }
        return Some(found);
    }
    None
}

/// Names of users and namespaces: a letter or digit, then letters,
/// digits, `-`, `_`, `.`; at most 64.
pub fn check_name(what: &str, name: &str) -> Result<(), ConsoleError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ConsoleError::Invalid(format!(
            "a {what} name is 1 to 64 letters, digits, '-', '_' or '.', starting with a letter or digit: `{name}`"
        )))
    }
}
