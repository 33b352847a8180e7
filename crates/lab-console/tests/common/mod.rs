//! A console serving a throwaway project on loopback, and a small HTTP
//! client that keeps cookies (each request on a connection of its own).
#![allow(dead_code)]

use lab_console::{Console, Options, Store};
use lab_testkit::TestLab;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub const PASSWORD: &str = "correct horse";

pub struct Fixture {
    pub lab: TestLab,
    pub addr: SocketAddr,
    pub store: Store,
    stop: Box<dyn Fn() + Send + Sync>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Fixture {
    /// Serve a project whose lab.toml is `toml`, after `setup` filled
    /// the project and `tweak` the options.
    pub fn start(
        toml: &str,
        setup: impl FnOnce(&TestLab),
        tweak: impl FnOnce(&mut Options),
    ) -> Fixture {
        let lab = TestLab::new();
        lab.file("lab.toml", toml);
        setup(&lab);
        let mut opts = Options::new(lab.path().to_path_buf(), lab.join(".lab"));
        opts.listen = "127.0.0.1:0".parse().unwrap();
        opts.refresh_every = Duration::from_secs(3600);
        tweak(&mut opts);
        let console = Console::start(opts).unwrap();
        let addr = console.addr();
        let stop = Box::new(console.stopper());
        let thread = std::thread::spawn(move || console.run());
        let store = Store::open(&lab_console::db_path(&lab.join(".lab"))).unwrap();
        Fixture {
            lab,
            addr,
            store,
            stop,
            thread: Some(thread),
        }
    }

    pub fn client(&self) -> Client {
        Client {
            addr: self.addr,
            cookies: BTreeMap::new(),
        }
    }

    /// A client logged in as `user` (password [`PASSWORD`]).
    pub fn login(&self, user: &str) -> Client {
        let mut c = self.client();
        let r = c.login(user, PASSWORD);
        assert_eq!(r.status, 303, "login of {user}: {}", r.body);
        c
    }

    /// Users: root (superadmin), alice (user in team), bob (admin in
    /// team), carol (admin in other); namespaces team and other.
    pub fn people(&self) {
        let s = &self.store;
        s.add_user("root", PASSWORD, true).unwrap();
        for u in ["alice", "bob", "carol", "dave"] {
            s.add_user(u, PASSWORD, false).unwrap();
        }
        s.add_namespace("team").unwrap();
        s.add_namespace("other").unwrap();
        use lab_console::role::Role;
        s.grant("alice", "team", Role::User).unwrap();
        s.grant("bob", "team", Role::Admin).unwrap();
        s.grant("carol", "other", Role::Admin).unwrap();
    }

    /// The audit entries whose outcome is `outcome`.
    pub fn audited(&self, outcome: &str) -> Vec<lab_console::store::AuditEntry> {
        self.store
            .audit_log(None, 100_000)
            .unwrap()
            .into_iter()
            .filter(|e| e.outcome == outcome)
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        (self.stop)();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Two local machines: `dev` (tag team) and `dev2` (tag other).
pub const TWO_LOCAL: &str =
    "[machines.dev]\ntransport = \"local\"\nroot = \"dev-root\"\ntags = [\"team\"]\n\n\
    [machines.dev2]\ntransport = \"local\"\nroot = \"dev2-root\"\ntags = [\"other\"]\n";

pub fn two_local(lab: &TestLab) {
    lab.file("layers/_/etc/motd.j2", "hello {{ machine }}\n");
    std::fs::create_dir_all(lab.join("dev-root")).unwrap();
    std::fs::create_dir_all(lab.join("dev2-root")).unwrap();
}

/// The rows of the table with `id` in `page` after its header row, each
/// as its cells' text (tags dropped) joined by ` | `.
pub fn table_rows(page: &str, id: &str) -> Vec<String> {
    let table = page
        .split(&format!("<table id=\"{id}\">"))
        .nth(1)
        .unwrap_or_else(|| panic!("a table `{id}` in {page}"));
    let table = table.split("</table>").next().unwrap_or_default();
    table
        .split("<tr>")
        .skip(2)
        .map(|row| {
            let mut text = String::new();
            let mut in_tag = false;
            for c in row.chars() {
                match c {
                    '<' => {
                        in_tag = true;
                        text.push('|');
                    }
                    '>' => in_tag = false,
                    c if !in_tag => text.push(c),
                    _ => {}
                }
            }
            text.split('|')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" | ")
        })
        .collect()
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn headers(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of the first hidden `csrf` field.
    pub fn csrf(&self) -> Option<String> {
        let i = self.body.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
        let rest = &self.body[i..];
        Some(rest[..rest.find('"')?].to_string())
    }
}

pub struct Client {
    pub addr: SocketAddr,
    pub cookies: BTreeMap<String, String>,
}

impl Client {
    pub fn request(&mut self, method: &str, path: &str, form: &[(&str, &str)]) -> Resp {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let cookies: Vec<String> = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        if !cookies.is_empty() {
            head.push_str(&format!("Cookie: {}\r\n", cookies.join("; ")));
        }
        if method == "POST" {
            head.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        if method == "POST" {
            s.write_all(body.as_bytes()).unwrap();
        }
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let chunked = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("Transfer-Encoding") && v.eq_ignore_ascii_case("chunked")
        });
        let body = if chunked {
            dechunk(rest)
        } else {
            rest.to_string()
        };
        let resp = Resp {
            status,
            headers,
            body,
        };
        for c in resp.headers("Set-Cookie") {
            if let Some((k, v)) = c.split(';').next().and_then(|kv| kv.split_once('=')) {
                if v.is_empty() {
                    self.cookies.remove(k);
                } else {
                    self.cookies.insert(k.to_string(), v.to_string());
                }
            }
        }
        resp
    }

    pub fn get(&mut self, path: &str) -> Resp {
        self.request("GET", path, &[])
    }

    pub fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Resp {
        self.request("POST", path, form)
    }

    pub fn login(&mut self, user: &str, password: &str) -> Resp {
        let csrf = self.get("/login").csrf().expect("the login form's token");
        self.post(
            "/login",
            &[("csrf", &csrf), ("user", user), ("password", password)],
        )
    }

    /// This session's CSRF token (from the fleet page's forms).
    pub fn csrf(&mut self) -> String {
        self.get("/").csrf().expect("a form on the fleet page")
    }

    /// Post `form` with this session's token to `path`.
    pub fn act(&mut self, path: &str, form: &[(&str, &str)]) -> Resp {
        let csrf = self.csrf();
        let mut f = vec![("csrf", csrf.as_str())];
        f.extend_from_slice(form);
        self.post(path, &f)
    }

    /// Start an action (sync, diff, rollback) and read its events to the
    /// end: the job's path and its whole event stream.
    pub fn run_job(&mut self, path: &str) -> (String, String) {
        let r = self.act(path, &[]);
        assert_eq!(r.status, 303, "{path}: {}", r.body);
        let job = r.header("Location").unwrap().to_string();
        let events = self.get(&format!("{job}/events"));
        assert_eq!(events.status, 200);
        (job, events.body)
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

impl Client {
    /// A JSON request (WebDriver's protocol); the answer's JSON.
    pub fn json(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> serde_json::Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body.as_bytes()).unwrap();
        // (chromedriver keeps the connection open: read what
        // Content-Length says)
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        let (head, mut rest) = loop {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "the connection closed before the headers ended");
            raw.extend_from_slice(&buf[..n]);
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break (
                    String::from_utf8_lossy(&raw[..i]).into_owned(),
                    raw[i + 4..].to_vec(),
                );
            }
        };
        let len: Option<usize> = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok());
        match len {
            Some(len) => {
                while rest.len() < len {
                    let n = s.read(&mut buf).unwrap();
                    assert!(n > 0, "the connection closed mid-answer");
                    rest.extend_from_slice(&buf[..n]);
                }
            }
            None => {
                s.read_to_end(&mut rest).unwrap();
            }
        }
        let rest = String::from_utf8_lossy(&rest).into_owned();
        let rest = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(&rest)
        } else {
            rest
        };
        serde_json::from_str(&rest).unwrap_or(serde_json::Value::Null)
    }
}
