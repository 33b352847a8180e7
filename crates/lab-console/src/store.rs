//! The console's SQLite file (`.lab/console.sqlite`, path from lab-core's
//! layout): users (argon2 hashes), namespaces, role bindings, sessions,
//! failed logins (the rate limit) and the audit log.
//!
//! Schema versions are `PRAGMA user_version`; [`MIGRATIONS`] holds each
//! step, applied in order in one transaction each, so an older file is
//! brought up to date on open and a newer one is refused.
//!
//! Session tokens and CSRF tokens are 32 random bytes (hex); only the
//! SHA-256 of a session token is stored, so the file does not hold a
//! usable session.

use crate::role::Role;
use crate::ConsoleError;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rusqlite::{params, Connection, OptionalExtension};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Each step brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1
    "CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        hash TEXT NOT NULL,
        superadmin INTEGER NOT NULL DEFAULT 0,
        created INTEGER NOT NULL
    );
    CREATE TABLE namespaces (
        name TEXT PRIMARY KEY,
        created INTEGER NOT NULL
    );
    CREATE TABLE grants (
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        namespace TEXT NOT NULL REFERENCES namespaces(name) ON DELETE CASCADE,
        role TEXT NOT NULL CHECK (role IN ('admin', 'user')),
        PRIMARY KEY (user_id, namespace)
    );
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        csrf TEXT NOT NULL,
        expires INTEGER NOT NULL
    );
    CREATE TABLE login_failures (
        key TEXT NOT NULL,
        at INTEGER NOT NULL
    );
    CREATE INDEX login_failures_key ON login_failures(key, at);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at INTEGER NOT NULL,
        user TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );",
];

/// A logged-in user as a request sees it.
#[derive(Clone, Debug)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub superadmin: bool,
    /// Role per namespace.
    pub roles: Vec<(String, Role)>,
}

impl User {
    pub fn role_in(&self, ns: &str) -> Option<Role> {
        self.roles.iter().find(|(n, _)| n == ns).map(|(_, r)| *r)
    }
}

#[derive(Clone, Debug)]
pub struct Session {
    pub user: User,
    pub csrf: String,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct AuditEntry {
    pub at: i64,
    pub user: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub detail: String,
}

/// How a login attempt ended.
#[derive(Debug)]
pub enum Login {
    /// A new session: the cookie's token.
    Ok {
        token: String,
        user: User,
    },
    Refused,
    /// Too many failures lately: not even checked.
    Limited,
}

#[derive(Clone)]
pub struct Store {
    path: PathBuf,
    db: std::sync::Arc<Mutex<Connection>>,
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn random_token() -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn token_hash(token: &str) -> String {
    lab_core::Digest::of(token.as_bytes()).to_string()
}

/// Failed logins allowed per user name, and per client address, within
/// [`LIMIT_WINDOW`] seconds.
pub const LIMIT_PER_USER: i64 = 5;
pub const LIMIT_PER_ADDR: i64 = 20;
pub const LIMIT_WINDOW: i64 = 300;

impl Store {
    /// Open (creating, mode 0600) and migrate the file at `path`. A
    /// symlink there is refused: lab never writes through one it did not
    /// make.
    pub fn open(path: &Path) -> Result<Store, ConsoleError> {
        let err = |e: String| ConsoleError::Db {
            path: path.to_path_buf(),
            message: e,
        };
        if path.is_symlink() {
            return Err(err("is a symlink; lab does not write through it".into()));
        }
        if let Some(dir) = path.parent() {
            fs_err::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| err(e.to_string()))?;
        let db = Connection::open(path).map_err(|e| err(e.to_string()))?;
        db.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| err(e.to_string()))?;
        db.execute_batch("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON;")
            .map_err(|e| err(e.to_string()))?;
        let store = Store {
            path: path.to_path_buf(),
            db: std::sync::Arc::new(Mutex::new(db)),
        };
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl std::fmt::Display) -> ConsoleError {
        ConsoleError::Db {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn migrate(&self) -> Result<(), ConsoleError> {
        let mut db = self.conn();
        let version: i64 = db
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if version as usize > MIGRATIONS.len() {
            return Err(self.err(format!(
                "schema version {version} is newer than this lab knows ({})",
                MIGRATIONS.len()
            )));
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = db.transaction().map_err(|e| self.err(e))?;
            tx.execute_batch(step).map_err(|e| self.err(e))?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))
                .map_err(|e| self.err(e))?;
            tx.commit().map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    fn hash(&self, password: &str) -> Result<String, ConsoleError> {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| self.err(e))
    }

    /// Add a user; `superadmin` grants every right.
    pub fn add_user(
        &self,
        name: &str,
        password: &str,
        superadmin: bool,
    ) -> Result<(), ConsoleError> {
        crate::role::check_name("user", name)?;
        check_password(password)?;
        let hash = self.hash(password)?;
        let n = self
            .conn()
            .execute(
                "INSERT INTO users (name, hash, superadmin, created) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(name) DO NOTHING",
                params![name, hash, superadmin, now()],
            )
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(ConsoleError::Exists {
                what: "user",
                name: name.to_string(),
            });
        }
        Ok(())
    }

    /// Set a user's password; their sessions end.
    pub fn set_password(&self, name: &str, password: &str) -> Result<(), ConsoleError> {
        check_password(password)?;
        let hash = self.hash(password)?;
        let db = self.conn();
        let n = db
            .execute(
                "UPDATE users SET hash = ?1 WHERE name = ?2",
                params![hash, name],
            )
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(ConsoleError::Unknown {
                what: "user",
                name: name.to_string(),
            });
        }
        db.execute(
            "DELETE FROM sessions WHERE user_id = (SELECT id FROM users WHERE name = ?1)",
            params![name],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn users(&self) -> Result<Vec<User>, ConsoleError> {
        let ids: Vec<i64> = {
            let db = self.conn();
            let mut st = db
                .prepare("SELECT id FROM users ORDER BY name")
                .map_err(|e| self.err(e))?;
            let rows = st
                .query_map([], |r| r.get(0))
                .map_err(|e| self.err(e))?
                .collect::<Result<_, _>>()
                .map_err(|e| self.err(e));
            rows?
        };
        ids.into_iter()
            .filter_map(|id| self.user(id).transpose())
            .collect()
    }

    fn user(&self, id: i64) -> Result<Option<User>, ConsoleError> {
        let db = self.conn();
        let head: Option<(String, bool)> = db
            .query_row(
                "SELECT name, superadmin FROM users WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((name, superadmin)) = head else {
            return Ok(None);
        };
        let mut st = db
            .prepare("SELECT namespace, role FROM grants WHERE user_id = ?1 ORDER BY namespace")
            .map_err(|e| self.err(e))?;
        let roles = st
            .query_map(params![id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(|e| self.err(e))?
            .filter_map(Result::ok)
            .filter_map(|(n, r)| Role::parse(&r).map(|r| (n, r)))
            .collect();
        Ok(Some(User {
            id,
            name,
            superadmin,
            roles,
        }))
    }

    /// Check a password and open a session of `ttl` seconds. Failures
    /// count against the user name and the client address `addr`.
    pub fn login(
        &self,
        name: &str,
        password: &str,
        addr: &str,
        ttl: i64,
    ) -> Result<Login, ConsoleError> {
        let t = now();
        let user_key = format!("user:{name}");
        let addr_key = format!("addr:{addr}");
        {
            let db = self.conn();
            db.execute(
                "DELETE FROM login_failures WHERE at < ?1",
                params![t - LIMIT_WINDOW],
            )
            .map_err(|e| self.err(e))?;
            let count = |k: &str| -> Result<i64, ConsoleError> {
                db.query_row(
                    "SELECT count(*) FROM login_failures WHERE key = ?1",
                    params![k],
                    |r| r.get(0),
                )
                .map_err(|e| self.err(e))
            };
            if count(&user_key)? >= LIMIT_PER_USER || count(&addr_key)? >= LIMIT_PER_ADDR {
                return Ok(Login::Limited);
            }
        }
        let row: Option<(i64, String)> = self
            .conn()
            .query_row(
                "SELECT id, hash FROM users WHERE name = ?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let ok = match &row {
            Some((_, hash)) => PasswordHash::new(hash)
                .map(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false),
            None => {
                // (as slow as a real check, so a name's existence does not show)
                let _ = self.hash(password);
                false
            }
        };
        let Some((id, _)) = row.filter(|_| ok) else {
            let db = self.conn();
            for k in [&user_key, &addr_key] {
                db.execute(
                    "INSERT INTO login_failures (key, at) VALUES (?1, ?2)",
                    params![k, t],
                )
                .map_err(|e| self.err(e))?;
            }
            return Ok(Login::Refused);
        };
        let token = random_token();
        self.conn()
            .execute(
                "INSERT INTO sessions (token_hash, user_id, csrf, expires) VALUES (?1, ?2, ?3, ?4)",
                params![token_hash(&token), id, random_token(), t + ttl],
            )
            .map_err(|e| self.err(e))?;
        let user = self.user(id)?.ok_or_else(|| self.err("user vanished"))?;
        Ok(Login::Ok { token, user })
    }

    /// The live session of a cookie token (expired ones are deleted).
    pub fn session(&self, token: &str) -> Result<Option<Session>, ConsoleError> {
        let row: Option<(i64, String, i64)> = self
            .conn()
            .query_row(
                "SELECT user_id, csrf, expires FROM sessions WHERE token_hash = ?1",
                params![token_hash(token)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some((id, csrf, expires)) = row else {
            return Ok(None);
        };
        if expires <= now() {
            self.logout(token)?;
            return Ok(None);
        }
        Ok(self.user(id)?.map(|user| Session { user, csrf }))
    }

    pub fn logout(&self, token: &str) -> Result<(), ConsoleError> {
        self.conn()
            .execute(
                "DELETE FROM sessions WHERE token_hash = ?1",
                params![token_hash(token)],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn namespaces(&self) -> Result<Vec<String>, ConsoleError> {
        let db = self.conn();
        let mut st = db
            .prepare("SELECT name FROM namespaces ORDER BY name")
            .map_err(|e| self.err(e))?;
        let v = st
            .query_map([], |r| r.get(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| self.err(e));
        v
    }

    pub fn add_namespace(&self, name: &str) -> Result<(), ConsoleError> {
        crate::role::check_name("namespace", name)?;
        let n = self
            .conn()
            .execute(
                "INSERT INTO namespaces (name, created) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![name, now()],
            )
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(ConsoleError::Exists {
                what: "namespace",
                name: name.to_string(),
            });
        }
        Ok(())
    }

    /// Give `user` `role` in `ns` (replacing the role they had there).
    pub fn grant(&self, user: &str, ns: &str, role: Role) -> Result<(), ConsoleError> {
        let db = self.conn();
        let id: Option<i64> = db
            .query_row("SELECT id FROM users WHERE name = ?1", params![user], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        let id = id.ok_or_else(|| ConsoleError::Unknown {
            what: "user",
            name: user.to_string(),
        })?;
        let known: Option<String> = db
            .query_row(
                "SELECT name FROM namespaces WHERE name = ?1",
                params![ns],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        if known.is_none() {
            return Err(ConsoleError::Unknown {
                what: "namespace",
                name: ns.to_string(),
            });
        }
        db.execute(
            "INSERT INTO grants (user_id, namespace, role) VALUES (?1, ?2, ?3)
             ON CONFLICT(user_id, namespace) DO UPDATE SET role = excluded.role",
            params![id, ns, role.as_str()],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Take away whatever role `user` had in `ns`.
    pub fn revoke(&self, user: &str, ns: &str) -> Result<(), ConsoleError> {
        self.conn()
            .execute(
                "DELETE FROM grants WHERE namespace = ?2
                 AND user_id = (SELECT id FROM users WHERE name = ?1)",
                params![user, ns],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn audit(
        &self,
        user: &str,
        action: &str,
        target: &str,
        outcome: &str,
        detail: &str,
    ) -> Result<(), ConsoleError> {
        self.conn()
            .execute(
                "INSERT INTO audit (at, user, action, target, outcome, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![now(), user, action, target, outcome, detail],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The latest `limit` audit entries, newest first; only those whose
    /// target starts with `prefix` when one is given.
    pub fn audit_log(
        &self,
        prefix: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, ConsoleError> {
        let db = self.conn();
        let mut st = db
            .prepare(
                "SELECT at, user, action, target, outcome, detail FROM audit
                 WHERE ?1 IS NULL OR substr(target, 1, length(?1)) = ?1
                 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let v = st
            .query_map(params![prefix, limit as i64], |r| {
                Ok(AuditEntry {
                    at: r.get(0)?,
                    user: r.get(1)?,
                    action: r.get(2)?,
                    target: r.get(3)?,
                    outcome: r.get(4)?,
                    detail: r.get(5)?,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e));
        v
    }
}

fn check_password(p: &str) -> Result<(), ConsoleError> {
    if p.chars().count() < 8 {
        return Err(ConsoleError::Invalid(
            "a password needs at least 8 characters".into(),
        ));
    }
    Ok(())
}
