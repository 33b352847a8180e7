//! The console in a real headless browser (Debian's chromium, driven by
//! chromedriver over WebDriver): log in, see the fleet of a real test
//! host, open the drifted machine, sync it and watch the live progress
//! finish, roll back. Screenshots of each step are saved under
//! `target/tmp/console-browser/`.

mod common;

use common::{Client, Fixture};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver, ended (by its PID) however the test ends.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Browser {
    _driver: Driver,
    http: Client,
    session: String,
    shots: std::path::PathBuf,
}

impl Browser {
    fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Driver(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver (apt install chromium chromium-driver; scripts/test does)"),
        );
        let mut http = Client {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            cookies: Default::default(),
        };
        // (chromedriver is ready when it accepts a connection)
        for _ in 0..200 {
            if std::net::TcpStream::connect(http.addr).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let r = http.json(
            "POST",
            "/session",
            Some(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1200,900"]
                }
            }}})),
        );
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("a WebDriver session: {r}"))
            .to_string();
        let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-browser");
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            _driver: driver,
            http,
            session,
            shots,
        }
    }

    fn call(&mut self, method: &str, path: &str, body: Option<Value>) -> Value {
        let p = format!("/session/{}{path}", self.session);
        let r = self.http.json(method, &p, body.as_ref());
        if r["value"]["error"].is_string() {
            panic!("WebDriver {method} {path}: {r}");
        }
        r["value"].clone()
    }

    fn go(&mut self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// The element `css` selects, waited for (bounded) while a page that
    /// a click or a form started is still loading (the old page lacks it).
    fn find(&mut self, css: &str) -> String {
        let p = format!("/session/{}/element", self.session);
        let body = json!({"using": "css selector", "value": css});
        for _ in 0..100 {
            let r = self.http.json("POST", &p, Some(&body));
            match r["value"]["error"].as_str() {
                None => return r["value"][ELEMENT].as_str().unwrap().to_string(),
                Some("no such element") => std::thread::sleep(Duration::from_millis(100)),
                Some(_) => panic!("WebDriver POST /element: {r}"),
            }
        }
        self.call("POST", "/element", Some(body))[ELEMENT]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn click(&mut self, css: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/click"), Some(json!({})));
    }

    fn type_in(&mut self, css: &str, text: &str) {
        let e = self.find(css);
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            Some(json!({ "text": text })),
        );
    }

    fn text(&mut self, css: &str) -> String {
        let e = self.find(css);
        self.call("GET", &format!("/element/{e}/text"), None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn source(&mut self) -> String {
        self.call("GET", "/source", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn shot(&mut self, name: &str) {
        use base64::Engine as _;
        let b64 = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// Wait (bounded) until the text of `css` satisfies `done`.
    fn until(&mut self, css: &str, done: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        for _ in 0..600 {
            last = self.text(css);
            if done(&last) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{css} never became what was expected; last: {last:?}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let p = format!("/session/{}", self.session);
        let _ = self.http.json("DELETE", &p, None);
        // (then `driver` ends chromedriver)
    }
}

const UNIT: &str =
    "[Unit]\nDescription=console probe\n\n[Service]\nExecStart=/bin/sleep infinity\n";

#[test]
fn log_in_see_the_fleet_sync_a_drifted_machine_and_roll_back() {
    let fleet = lab_testhosts::TestHosts::up(1).unwrap();
    let h = &fleet.hosts()[0];
    let toml = format!(
        "[settings]\nknown_hosts = \"{kh}\"\n\n\
         [machines.h1]\nhost = \"{addr}\"\nport = {port}\nuser = \"{user}\"\nidentity = \"{id}\"\nlayers = [\"base\"]\ntags = [\"team\"]\n",
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
    // generation 1; then a new file in the source and drift by hand
    let mut bob = f.login("bob");
    let (_, ev) = bob.run_job("/ns/team/machine/h1/sync");
    assert!(ev.contains("generation 1 applied"), "{ev}");
    f.lab.file("layers/base/etc/console-second.conf", "two\n");
    h.run("echo changed by hand > /etc/console-test.conf")
        .unwrap();
    let (_, ev) = bob.run_job("/ns/team/machine/h1/diff");
    assert!(ev.contains("data: -changed by hand"), "{ev}");

    let base = format!("http://{}", f.addr);
    let mut b = Browser::start();
    b.go(&format!("{base}/"));
    b.type_in("#user", "bob");
    b.type_in("#password", common::PASSWORD);
    b.shot("1-login");
    b.click("#login");
    let fleet_page = b.source();
    assert!(fleet_page.contains(">h1</a>"), "{fleet_page}");
    assert!(fleet_page.contains("drifted"), "{fleet_page}");
    b.shot("2-fleet");

    b.click("a[href='/ns/team/machine/h1']");
    assert_eq!(b.text("#state"), "drifted");
    assert!(b.source().contains("console-test.conf"));
    b.shot("3-drifted-machine");

    b.click("#sync");
    let status = b.until("#status", |s| s.starts_with("finished"));
    assert_eq!(status, "finished: ok");
    let log = b.text("#log");
    assert!(log.contains("syncing"), "{log}");
    assert!(log.contains("generation 2 applied"), "{log}");
    assert!(log.contains("repaired /etc/console-test.conf"), "{log}");
    b.shot("4-sync-finished");
    assert_eq!(h.run("cat /etc/console-test.conf").unwrap(), "v1\n");
    assert_eq!(h.run("cat /etc/console-second.conf").unwrap(), "two\n");

    b.click("a[href='/ns/team/machine/h1']");
    assert_eq!(b.text("#state"), "in sync");
    b.click("#rollback");
    let status = b.until("#status", |s| s.starts_with("finished"));
    assert_eq!(status, "finished: ok");
    let log = b.text("#log");
    assert!(log.contains("back on generation 1"), "{log}");
    b.shot("5-rolled-back");
    assert!(
        h.run("test -e /etc/console-second.conf && echo there || echo gone")
            .unwrap()
            == "gone\n"
    );
}
