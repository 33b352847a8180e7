//! Turning "the machine has manifest A, it should have manifest B" into the
//! executor program and the tar stream for one apply.

use crate::check::{classify, Seen};
use crate::{executor, STATE_DIR};
use lab_core::Digest;
use lab_manifest::{Entry, EntryKind, Manifest};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::Path;

/// Quote a string for POSIX sh: `'...'`, with `'` written as `'\''`.
pub fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('\'');
    for c in s.chars() {
        if c == '\'' {
            q.push_str("'\\''");
        } else {
            q.push(c);
        }
    }
    q.push('\'');
    q
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UnitOp {
    /// `systemctl stop` (a unit whose file went away), before daemon-reload.
    Stop,
    /// `systemctl daemon-reload`, once.
    DaemonReload,
    Reload,
    ReloadOrRestart,
    /// Restart if running (or failed); a stopped unit stays stopped.
    Restart,
    /// Start (restart if already running): a unit that became wanted.
    Start,
}

impl UnitOp {
    pub fn as_str(&self) -> &'static str {
        match self {
            UnitOp::Stop => "stop",
            UnitOp::DaemonReload => "daemon-reload",
            UnitOp::Reload => "reload",
            UnitOp::ReloadOrRestart => "reload-or-restart",
            UnitOp::Restart => "restart",
            UnitOp::Start => "start",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitAction {
    pub op: UnitOp,
    /// The unit; `USER/UNIT` for a unit of a user's systemd
    /// ([`lab_core::ScopedUnit`]). For `DaemonReload`: empty (the system
    /// manager) or `USER/` (that user's manager).
    pub unit: String,
}

/// The journal of unit actions, `OP UNIT` a line, written to `$G/actions`
/// (with the generation, before its commit): what `run_actions` runs and
/// what a killed run leaves pending.
pub(crate) fn push_journal(s: &mut String, units: &[UnitAction]) {
    let mut body = String::new();
    for u in units {
        match u.op {
            UnitOp::DaemonReload if u.unit.is_empty() => body.push_str("daemon-reload -\n"),
            // (unit names have no white space; a name that did would be
            // refused by systemctl, not split here)
            op => body.push_str(&format!(
                "{} {}\n",
                op.as_str(),
                u.unit.replace(['\n', ' '], "_")
            )),
        }
    }
    s.push_str(&format!(
        "wr >\"$G/actions\" <<'LAB_ACTIONS'\n{body}LAB_ACTIONS\n"
    ));
}

/// Run the journaled actions, then report the units' states.
pub(crate) fn push_run(s: &mut String, units: &[UnitAction], settle_ms: u64) {
    s.push_str("run_actions\n");
    if units.iter().any(|u| u.op != UnitOp::DaemonReload) {
        s.push_str(&format!("settle {settle_ms}\n"));
    }
}

/// How many paths one call gets, so external commands stay far below the
/// kernel's argument size limit.
const CHUNK: usize = 1000;

/// What changes between two manifests.
#[derive(Debug, Default)]
pub struct ApplyPlan<'a> {
    /// Files and symlinks to write (new or changed).
    pub writes: Vec<&'a Entry>,
    /// Directories to create (new, or replacing a file or symlink).
    pub new_dirs: Vec<&'a Entry>,
    /// Existing directories whose mode changes.
    pub chmod_dirs: Vec<&'a Entry>,
    /// Files and symlinks to remove (gone, or replaced by a directory).
    pub removes: Vec<&'a Entry>,
    /// Directories to remove, deepest first; `true` when something else
    /// takes the path (then the removal must succeed).
    pub rmdirs: Vec<(&'a Entry, bool)>,
    /// What the machine must report at the start of the apply (drift and
    /// pending actions, see [`crate::Check::expect`]); otherwise it stops
    /// as stale and says what it found. `None`: no check.
    pub expect: Option<String>,
    old: Option<&'a Manifest>,
    new: Option<&'a Manifest>,
}

fn abs(p: &str) -> String {
    format!("/{p}")
}

/// `chown`'s OWNER[:GROUP] (or `:GROUP`) for an entry with an owner.
fn owner_spec(e: &Entry) -> Option<String> {
    match (&e.owner, &e.group) {
        (None, None) => None,
        (o, g) => Some(format!(
            "{}{}",
            o.as_deref().unwrap_or(""),
            g.as_ref().map(|g| format!(":{g}")).unwrap_or_default()
        )),
    }
}

fn parent(p: &str) -> &str {
    p.rfind('/').map_or("", |i| &p[..i])
}

impl<'a> ApplyPlan<'a> {
    pub fn new(old: &'a Manifest, new: &'a Manifest) -> ApplyPlan<'a> {
        let mut p = ApplyPlan {
            old: Some(old),
            new: Some(new),
            ..Default::default()
        };
        for (path, e) in &new.entries {
            match old.entries.get(path) {
                None if e.is_dir() => p.new_dirs.push(e),
                None => p.writes.push(e),
                Some(o) if o == e => {}
                Some(o) if o.is_dir() && e.is_dir() => p.chmod_dirs.push(e),
                Some(o) if e.is_dir() => {
                    p.removes.push(o);
                    p.new_dirs.push(e);
                }
                Some(o) if o.is_dir() => {
                    p.rmdirs.push((o, true));
                    p.writes.push(e);
                }
                Some(_) => p.writes.push(e),
            }
        }
        for (path, o) in &old.entries {
            if !new.entries.contains_key(path) {
                if o.is_dir() {
                    p.rmdirs.push((o, false));
                } else {
                    p.removes.push(o);
                }
            }
        }
        p.rmdirs.sort_by(|a, b| b.0.path.cmp(&a.0.path));
        p
    }

    /// The change from `old` to `new` on a machine where the paths of
    /// `seen` (from a check) are not what `old` says: each is written
    /// again unless it already is what `new` wants (then not even a
    /// change of `old` to `new` is written there).
    pub fn repairing(
        old: &'a Manifest,
        new: &'a Manifest,
        seen: &BTreeMap<String, Seen>,
    ) -> ApplyPlan<'a> {
        let mut p = ApplyPlan::new(old, new);
        for (path, s) in seen {
            let Some(e) = new.entries.get(path) else {
                continue;
            };
            let in_old = old.get(path);
            if s.matches(e) {
                p.writes.retain(|w| w.path != *path);
                p.chmod_dirs.retain(|w| w.path != *path);
                continue;
            }
            if in_old.is_some_and(|o| classify(o, s).is_none()) {
                // (what old says is there: the plan already has it right)
                continue;
            }
            match in_old {
                // (kind changes between old and new are planned already)
                Some(o) if o.is_dir() != e.is_dir() => {}
                Some(_) if e.is_dir() && !p.chmod_dirs.iter().any(|d| d.path == *path) => {
                    p.chmod_dirs.push(e);
                }
                Some(_) if !e.is_dir() && !p.writes.iter().any(|w| w.path == *path) => {
                    p.writes.push(e);
                }
                _ => {}
            }
        }
        p.writes.sort_by(|a, b| a.path.cmp(&b.path));
        p.chmod_dirs.sort_by(|a, b| a.path.cmp(&b.path));
        p
    }

    /// Nothing to change?
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.new_dirs.is_empty()
            && self.chmod_dirs.is_empty()
            && self.removes.is_empty()
            && self.rmdirs.is_empty()
    }

    /// Every path whose entry is created, changed or removed.
    pub fn touched(&self) -> BTreeSet<&'a str> {
        self.writes
            .iter()
            .chain(&self.new_dirs)
            .chain(&self.chmod_dirs)
            .chain(&self.removes)
            .map(|e| e.path.as_str())
            .chain(self.rmdirs.iter().map(|(e, _)| e.path.as_str()))
            .collect()
    }

    /// Bytes of file content the tar stream carries.
    pub fn content_bytes(&self) -> u64 {
        self.writes
            .iter()
            .map(|e| match &e.kind {
                EntryKind::File { size, .. } => *size,
                _ => 0,
            })
            .sum()
    }

    fn old_kind_is_dir(&self, path: &str) -> Option<bool> {
        self.old.and_then(|m| m.get(path)).map(|e| e.is_dir())
    }

    /// The program for this apply: the executor library, then the plan.
    /// `base` is the machine's current digest the plan was made against;
    /// the machine refuses the plan (exit 3, `stale`) when it is elsewhere.
    /// After the unit actions, a started unit whose start does not wait for
    /// readiness is looked at again after `settle_ms` (0: at once).
    pub fn program(
        &self,
        base: Option<&Digest>,
        digest: &Digest,
        keep: usize,
        units: &[UnitAction],
        settle_ms: u64,
    ) -> String {
        let mut s = String::with_capacity(executor().len() + 64 * (self.writes.len() + 16));
        s.push_str(executor());
        s.push('\n');
        let base = base.map_or("none".to_string(), |d| d.to_hex());
        match &self.expect {
            Some(x) => s.push_str(&format!("begin {base} {x}\n")),
            None => s.push_str(&format!("begin {base}\n")),
        }

        // The undo program of this generation, stored before anything changes.
        let undo = self.undo();
        let mut delim = "LAB_UNDO".to_string();
        while undo.lines().any(|l| l == delim) {
            delim.push('_');
        }
        s.push_str(&format!("wr >\"$G/undo.sh\" <<'{delim}'\n{undo}{delim}\n"));
        let stages: Vec<String> = self.stage_dirs().iter().map(|d| abs_dir(d)).collect();
        let mut cleanup = String::new();
        call(&mut cleanup, "u_unstage", &stages);
        let mut delim = "LAB_CLEANUP".to_string();
        while cleanup.lines().any(|l| l == delim) {
            delim.push('_');
        }
        s.push_str(&format!(
            "wr >\"$G/cleanup.sh\" <<'{delim}'\n{cleanup}{delim}\n"
        ));

        // Checks, before anything changes.
        let mut dirs: BTreeSet<&str> = BTreeSet::new();
        // (parents of what goes away too: a removal below a planted
        // symlink would delete someone else's file)
        let rmdirs = self.rmdirs.iter().map(|(e, _)| *e);
        for e in self
            .writes
            .iter()
            .chain(&self.new_dirs)
            .chain(&self.chmod_dirs)
            .chain(&self.removes)
            .copied()
            .chain(rmdirs)
        {
            let mut p = parent(&e.path);
            while !p.is_empty() {
                dirs.insert(p);
                p = parent(p);
            }
            // (a directory the stream re-modes: tar would follow a symlink)
            if e.is_dir()
                && (self.new_dirs.iter().any(|n| n.path == e.path)
                    || self.chmod_dirs.iter().any(|n| n.path == e.path))
            {
                dirs.insert(&e.path);
            }
        }
        let dirs: Vec<String> = dirs
            .into_iter()
            .filter(|d| self.old_kind_is_dir(d) != Some(false))
            .map(abs)
            .collect();
        call(&mut s, "dirok", &dirs);
        let notdirs: Vec<String> = self
            .writes
            .iter()
            .filter(|e| self.old_kind_is_dir(&e.path) != Some(true))
            .map(|e| abs(&e.path))
            .collect();
        call(&mut s, "notdir", &notdirs);

        // Backups of everything touched, originals of what lab takes over.
        // (a directory a file replaces is not backed up: undo recreates it
        // and restores its former children one by one)
        let touched: Vec<String> = self
            .writes
            .iter()
            .filter(|e| self.old_kind_is_dir(&e.path) != Some(true))
            .chain(&self.removes)
            .map(|e| abs(&e.path))
            .collect();
        call(&mut s, "backup", &touched);
        let fresh: Vec<String> = self
            .writes
            .iter()
            .filter(|e| self.old_kind_is_dir(&e.path).is_none())
            .map(|e| abs(&e.path))
            .collect();
        call(&mut s, "takeover", &fresh);
        let fresh_dirs: Vec<String> = self
            .new_dirs
            .iter()
            .filter(|e| self.old_kind_is_dir(&e.path).is_none())
            .map(|e| abs(&e.path))
            .collect();
        call(&mut s, "preexisting", &fresh_dirs);
        s.push_str("backed_up\n");

        // Removals, then new content, then placement.
        let removes: Vec<String> = self.removes.iter().map(|e| abs(&e.path)).collect();
        call(&mut s, "remove", &removes);
        for (e, must) in &self.rmdirs {
            s.push_str(&format!(
                "{} {}\n",
                if *must { "mustrmdir" } else { "rmdirs" },
                quote(&abs(&e.path))
            ));
        }
        s.push_str(&format!(
            "extract {}\ncomplete {}\n",
            self.content_bytes(),
            digest.to_hex()
        ));
        // owners, before anything is placed
        let mut owned: BTreeMap<(String, &str), Vec<String>> = BTreeMap::new();
        for e in &self.writes {
            if let (Some(spec), false) =
                (owner_spec(e), matches!(e.kind, EntryKind::Symlink { .. }))
            {
                owned
                    .entry((spec, parent(&e.path)))
                    .or_default()
                    .push(e.path.rsplit('/').next().unwrap().to_string());
            }
        }
        for ((spec, d), names) in owned {
            for chunk in names.chunks(CHUNK) {
                s.push_str(&format!(
                    "own_staged {} {}",
                    quote(&spec),
                    quote(&abs_dir(d))
                ));
                for n in chunk {
                    s.push(' ');
                    s.push_str(&quote(n));
                }
                s.push('\n');
            }
        }
        for e in self.new_dirs.iter().chain(&self.chmod_dirs) {
            let had_owner = self
                .old
                .and_then(|m| m.get(&e.path))
                .is_some_and(|o| owner_spec(o).is_some());
            let spec = owner_spec(e).or_else(|| had_owner.then(|| "0:0".to_string()));
            if let Some(spec) = spec {
                s.push_str(&format!(
                    "own_dirs {} {}\n",
                    quote(&spec),
                    quote(&abs(&e.path))
                ));
            }
        }
        let mut by_dir: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for e in &self.writes {
            by_dir
                .entry(parent(&e.path))
                .or_default()
                .push(e.path.rsplit('/').next().unwrap().to_string());
        }
        let stages: Vec<String> = by_dir.keys().map(|d| abs_dir(d)).collect();
        for (d, names) in by_dir {
            for chunk in names.chunks(CHUNK) {
                s.push_str("place ");
                s.push_str(&quote(&abs_dir(d)));
                for n in chunk {
                    s.push(' ');
                    s.push_str(&quote(n));
                }
                s.push('\n');
            }
        }
        call(&mut s, "unstage", &stages);
        push_journal(&mut s, units);
        s.push_str(&format!("commit {} {keep}\n", digest.to_hex()));
        push_run(&mut s, units, settle_ms);
        s.push_str("finish\n");
        s
    }

    /// Directories (relative, "" for the root) that get a `.lab-stage`.
    fn stage_dirs(&self) -> BTreeSet<&'a str> {
        self.writes.iter().map(|e| parent(&e.path)).collect()
    }

    /// The undo program: back from this generation to the previous one.
    /// Files are put back a directory at a time (a few programs per
    /// directory, not per file), and only in directories the apply got to:
    /// undoing an apply killed early costs little.
    fn undo(&self) -> String {
        let mut s = String::new();
        // written non-directories where directories were: the undo removes
        // them before it restores anything below them
        let own: Vec<String> = self
            .writes
            .iter()
            .filter(|e| self.old_kind_is_dir(&e.path) == Some(true))
            .map(|e| abs(&e.path))
            .collect();
        call(&mut s, "u_lab", &own);
        files_by_dir(&mut s, "w", &self.writes);
        let mut created: Vec<&Entry> = self.new_dirs.clone();
        created.sort_by(|a, b| b.path.cmp(&a.path));
        let created: Vec<String> = created.iter().map(|e| abs(&e.path)).collect();
        call(&mut s, "u_rmdir", &created);
        let mut back: Vec<&Entry> = self.rmdirs.iter().map(|(e, _)| *e).collect();
        back.extend(
            self.chmod_dirs
                .iter()
                .filter_map(|e| self.old.and_then(|m| m.get(&e.path))),
        );
        back.sort_by(|a, b| a.path.cmp(&b.path));
        for e in back {
            s.push_str(&format!(
                "u_mkdir {:04o} {}\n",
                e.mode,
                quote(&abs(&e.path))
            ));
            // (a directory whose owner this generation changed gets its
            // old one back; root when it had none)
            let new = self.chmod_dirs.iter().find(|n| n.path == e.path);
            if new.is_some_and(|n| (&n.owner, &n.group) != (&e.owner, &e.group)) {
                let spec = owner_spec(e).unwrap_or_else(|| "0:0".to_string());
                s.push_str(&format!(
                    "u_own {} {}\n",
                    quote(&spec),
                    quote(&abs(&e.path))
                ));
            }
        }
        files_by_dir(&mut s, "r", &self.removes);
        s
    }

    /// Write the tar stream: new and re-moded directories, stage
    /// directories, staged files and symlinks (content read from
    /// `out_dir`, checked against the manifest), and the new manifest.
    pub fn write_tar(
        &self,
        out_dir: &Path,
        manifest_text: &str,
        w: impl Write,
    ) -> Result<(), TarError> {
        let mut b = tar::Builder::new(w);
        b.mode(tar::HeaderMode::Deterministic);
        let mut dirs: Vec<&Entry> = self
            .new_dirs
            .iter()
            .chain(&self.chmod_dirs)
            .copied()
            .collect();
        dirs.sort_by(|a, b| a.path.cmp(&b.path));
        for e in dirs {
            let mut h = header(tar::EntryType::Directory, e.mode, 0);
            b.append_data(&mut h, format!("{}/", e.path), std::io::empty())?;
        }
        for d in self.stage_dirs() {
            let mut h = header(tar::EntryType::Directory, 0o700, 0);
            b.append_data(&mut h, stage_path(d, ""), std::io::empty())?;
        }
        for e in &self.writes {
            let name = e.path.rsplit('/').next().unwrap();
            let path = stage_path(parent(&e.path), name);
            match &e.kind {
                EntryKind::File { size, sha256 } => {
                    let src = out_dir.join(&e.path);
                    let f = std::fs::File::open(&src).map_err(|err| TarError::Read {
                        path: src.display().to_string(),
                        source: err,
                    })?;
                    let mut h = header(tar::EntryType::Regular, e.mode, *size);
                    let mut reader = Checked {
                        inner: f.take(*size),
                        sha: <sha2::Sha256 as sha2::Digest>::new(),
                    };
                    b.append_data(&mut h, &path, &mut reader)?;
                    if reader.finish() != *sha256 {
                        return Err(TarError::Changed {
                            path: src.display().to_string(),
                        });
                    }
                }
                EntryKind::Symlink { target } => {
                    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                    b.append_link(&mut h, &path, target)?;
                }
                EntryKind::Dir => unreachable!("directories are not writes"),
            }
        }
        // the managed paths, for the machine's own checks (see check.sh)
        if let Some(new) = self.new {
            let mut list = Vec::with_capacity(new.entries.len() * 32);
            for p in new.entries.keys() {
                list.extend_from_slice(p.as_bytes());
                list.push(0);
            }
            let mut h = header(tar::EntryType::Regular, 0o644, list.len() as u64);
            b.append_data(
                &mut h,
                format!("{}/inflight/paths0", STATE_DIR.trim_start_matches('/')),
                list.as_slice(),
            )?;
        }
        let mut h = header(tar::EntryType::Regular, 0o644, manifest_text.len() as u64);
        b.append_data(
            &mut h,
            format!("{}/inflight/manifest", STATE_DIR.trim_start_matches('/')),
            manifest_text.as_bytes(),
        )?;
        b.finish()?;
        Ok(())
    }
}

fn abs_dir(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        abs(d)
    }
}

fn stage_path(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        format!(".lab-stage/{name}")
    } else {
        format!("{dir}/.lab-stage/{name}")
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// `u_files KIND DIR NAME...` for the entries, a directory at a time.
fn files_by_dir(s: &mut String, kind: &str, entries: &[&Entry]) {
    let mut by_dir: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in entries {
        by_dir
            .entry(parent(&e.path))
            .or_default()
            .push(e.path.rsplit('/').next().unwrap());
    }
    for (d, names) in by_dir {
        for chunk in names.chunks(CHUNK) {
            s.push_str(&format!("u_files {kind} {}", quote(&abs_dir(d))));
            for n in chunk {
                s.push(' ');
                s.push_str(&quote(n));
            }
            s.push('\n');
        }
    }
}

fn call(s: &mut String, f: &str, args: &[String]) {
    for chunk in args.chunks(CHUNK) {
        s.push_str(f);
        for a in chunk {
            s.push(' ');
            s.push_str(&quote(a));
        }
        s.push('\n');
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("`{path}` changed after it was built; build and sync again")]
    Changed { path: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Hashes the bytes as the tar builder reads them, so what was sent can be
/// checked against the manifest without reading the file twice.
struct Checked<R> {
    inner: R,
    sha: sha2::Sha256,
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use sha2::Digest as _;
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}

impl<R> Checked<R> {
    fn finish(self) -> Digest {
        use sha2::Digest as _;
        Digest(self.sha.finalize().into())
    }
}
