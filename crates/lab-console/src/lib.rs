//! `lab console`: a web console for the fleet. Owns the console's SQLite
//! file ([`store`]: users, namespaces, role bindings, sessions, audit
//! log), the role matrix ([`role`]), the cache of machine states refreshed
//! in the background ([`fleet`]), actions run as jobs through lab-deploy
//! ([`jobs`]) and the HTTP side ([`web`]: server-rendered pages, escaped
//! by minijinja, and server-sent events).
//!
//! It never prints: the CLI starts it ([`Console::start`]), says where it
//! listens, and runs it. It never calls the `lab` binary.
//!
//! Plain HTTP is served on loopback only (reached over `ssh -L`); any
//! other address needs a TLS certificate and key (rustls).

pub mod fleet;
pub mod jobs;
pub mod role;
pub mod store;
mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("`{path}`: {message}")]
    Db { path: PathBuf, message: String },
    #[error("a {what} named `{name}` exists already")]
    Exists { what: &'static str, name: String },
    #[error("there is no {what} named `{name}`")]
    Unknown { what: &'static str, name: String },
    #[error("{0}")]
    Invalid(String),
    #[error("`{addr}` is not a loopback address: serving it needs --tls-cert and --tls-key")]
    NeedsTls { addr: SocketAddr },
    #[error("cannot listen on `{addr}`: {message}")]
    Listen { addr: SocketAddr, message: String },
    #[error("`{path}`: {message}")]
    Tls { path: PathBuf, message: String },
}

impl lab_core::Diagnose for ConsoleError {
    fn location(&self) -> Option<&lab_core::Located> {
        None
    }

    fn hint(&self) -> Option<String> {
        match self {
            ConsoleError::NeedsTls { .. } => Some(
                "listen on 127.0.0.1 and reach it with `ssh -L 5555:127.0.0.1:5555 HOST`".into(),
            ),
            _ => None,
        }
    }
}

/// Where the console serves and what it serves.
#[derive(Clone, Debug)]
pub struct Options {
    /// The project directory (where lab.toml is).
    pub project: PathBuf,
    /// Its `.lab/` directory.
    pub lab_dir: PathBuf,
    pub listen: SocketAddr,
    /// PEM certificate chain and private key files.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub session_ttl: Duration,
    /// How often every machine is looked at again.
    pub refresh_every: Duration,
    /// How long a look at a machine waits to connect.
    pub connect_timeout: Duration,
}

/// The default address: loopback, reached over `ssh -L`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5555";

impl Options {
    pub fn new(project: PathBuf, lab_dir: PathBuf) -> Options {
        Options {
            project,
            lab_dir,
            listen: DEFAULT_LISTEN.parse().expect("a socket address"),
            tls: None,
            session_ttl: Duration::from_secs(12 * 3600),
            refresh_every: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// The console's database file in the `.lab/` directory `lab_dir`.
pub fn db_path(lab_dir: &std::path::Path) -> PathBuf {
    lab_core::LabDir::at(lab_dir).console_db_path()
}

/// A started console: listening, not yet serving until [`Console::run`].
pub struct Console {
    app: Arc<web::App>,
    server: Arc<tiny_http::Server>,
}

impl Console {
    pub fn start(opts: Options) -> Result<Console, ConsoleError> {
        let tls = match &opts.tls {
            None if !opts.listen.ip().is_loopback() => {
                return Err(ConsoleError::NeedsTls { addr: opts.listen })
            }
            None => None,
            Some((cert, key)) => {
                let read = |p: &PathBuf| {
                    std::fs::read(p).map_err(|e| ConsoleError::Tls {
                        path: p.clone(),
                        message: e.to_string(),
                    })
                };
                Some(tiny_http::SslConfig {
                    certificate: read(cert)?,
                    private_key: read(key)?,
                })
            }
        };
        let store = Store::open(&db_path(&opts.lab_dir))?;
        let secure = tls.is_some();
        let server = match tls {
            Some(t) => tiny_http::Server::https(opts.listen, t),
            None => tiny_http::Server::http(opts.listen),
        }
        .map_err(|e| ConsoleError::Listen {
            addr: opts.listen,
            message: e.to_string(),
        })?;
        let fleet = Arc::new(fleet::Fleet::new(
            opts.project.clone(),
            opts.connect_timeout,
        ));
        // (the machine list at once; their states as the refresher finds them)
        let _ = fleet.engine();
        let app = Arc::new(web::App::new(store, fleet, opts, secure));
        Ok(Console {
            app,
            server: Arc::new(server),
        })
    }

    /// Where it listens (the port chosen when it was 0).
    pub fn addr(&self) -> SocketAddr {
        self.server.server_addr().to_ip().expect("an IP listener")
    }

    pub fn https(&self) -> bool {
        self.app.secure
    }

    /// Serve until [`Console::stopper`]'s handle is called: every request
    /// on a thread of its own, the fleet refreshed in the background.
    pub fn run(&self) {
        let fleet = self.app.fleet.clone();
        let every = self.app.opts.refresh_every;
        let stop = self.app.stopping.clone();
        std::thread::spawn(move || loop {
            fleet.refresh(&[]);
            let began = std::time::Instant::now();
            while began.elapsed() < every {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        for req in self.server.incoming_requests() {
            let app = self.app.clone();
            std::thread::spawn(move || web::handle(&app, req));
        }
    }

    /// A handle that stops [`Console::run`].
    pub fn stopper(&self) -> impl Fn() + Send + Sync + 'static {
        let server = self.server.clone();
        let stop = self.app.stopping.clone();
        move || {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            server.unblock();
        }
    }
}
