//! Syncing one machine over one transport: probe, plan, apply, report,
//! roll back.
//!
//! A sync that changes nothing is one command (`cat` of the machine's
//! `current`: its generation and manifest digest). Otherwise the machine's
//! applied manifest comes from the local cache (`.lab/sync/NAME.applied`)
//! when its digest matches, else from the machine; then one command carries
//! the executor program and the tar stream of what changed.

use crate::transport::Transport;
use crate::transport::{Input, Output};
use crate::units;
use crate::units::UnitRule;
use crate::SyncError;
use lab_agent::{
    bootstrap, check_program, manifest_command, outcome_command, probe_command, resume_program,
    run_id, with_run, ApplyPlan, Check, Drift, Report, UnitAction,
};
use lab_core::ExecutorExit;
use lab_graph::Digest;
use lab_manifest::{Entry, EntryKind, Manifest};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// How long a sync with `--rollback-on-failure`, and a rollback, watch a
/// restarted unit at least: the point of both is to notice a unit that
/// does not come up.
pub const ROLLBACK_SETTLE_MS: u64 = 500;

/// What to sync and where lab keeps things for it.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    /// `.lab/out/NAME/`
    pub out_dir: PathBuf,
    /// `.lab/out/NAME.manifest`
    pub manifest_path: PathBuf,
    /// `.lab/sync/NAME.applied`: the manifest the machine applied last.
    pub cache_path: PathBuf,
    /// The machine's root: `""` for a real machine, a directory for a
    /// local one.
    pub root: String,
    /// Run unit actions (no for local machines).
    pub systemd: bool,
    pub keep: usize,
    /// How long a (re)started unit that does not wait for readiness is
    /// watched before its state is reported (lab.toml's `settle_ms`).
    pub settle_ms: u64,
    pub rules: Vec<UnitRule>,
    /// The user whose systemd runs the machine's rootless pods (the units
    /// of `/etc/containers/systemd/users/`).
    pub pod_user: String,
    /// The project's `images/` (OCI archives the pods may use; see
    /// [`crate::images`]).
    pub images_dir: PathBuf,
    /// `.lab/` (where what was found of root-directory images is kept).
    pub lab_dir: PathBuf,
}

#[derive(Clone, Debug, Default)]
pub struct SyncOptions {
    pub rollback_on_failure: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The machine already had this manifest.
    Unchanged {
        gen: u64,
    },
    Applied {
        gen: u64,
    },
    /// A unit failed, so the machine went back to `gen`.
    RolledBack {
        gen: u64,
    },
}

#[derive(Clone, Debug)]
pub struct SyncReport {
    pub outcome: Outcome,
    /// Files and symlinks written, paths removed.
    pub written: usize,
    pub removed: usize,
    /// Bytes of file content sent.
    pub content_bytes: u64,
    /// The executor's report of the apply (units, notes).
    pub apply: Report,
    /// The report of the rollback after a failed unit.
    pub rollback: Option<Report>,
    /// Units that failed (after the apply; the rollback's are in `rollback`).
    pub failed_units: Vec<String>,
    /// Managed paths that were not what lab had put there (repaired by
    /// this sync unless it failed).
    pub drift: Vec<Drift>,
    /// Unit actions an earlier run had left pending (run by this sync).
    pub pending: Vec<UnitAction>,
}

impl SyncReport {
    pub fn ok(&self) -> bool {
        self.failed_units.is_empty() && !matches!(self.outcome, Outcome::RolledBack { .. })
    }
}

/// Stands for the digest of a machine that a killed run left half way:
/// equal to no build, so that a sync always sends a plan (the executor
/// recovers the machine first, then says where it really is).
fn interrupted_digest() -> Digest {
    Digest::of(b"lab: a run on this machine was interrupted")
}

fn parse_current(text: &str) -> Result<(u64, Option<Digest>), SyncError> {
    if text.lines().any(|l| l == "interrupted") {
        let gen = text.split_whitespace().next().and_then(|g| g.parse().ok());
        return Ok((gen.unwrap_or(0), Some(interrupted_digest())));
    }
    let mut it = text.split_whitespace();
    let gen = it
        .next()
        .and_then(|g| g.parse().ok())
        .ok_or_else(|| SyncError::Protocol {
            status: 0,
            output: text.to_string(),
        })?;
    Ok((gen, it.next().and_then(Digest::from_hex)))
}

/// What one check of a machine found (one command, see
/// [`lab_agent::check_program`]).
#[derive(Clone, Debug, Default)]
pub struct Probe {
    pub gen: u64,
    /// The applied manifest's digest (`None` before lab's first sync).
    pub digest: Option<Digest>,
    /// A run was killed half way (recovered by the next sync).
    pub interrupted: bool,
    /// When the current generation was applied (seconds since the epoch).
    pub applied_at: Option<u64>,
    /// Drift and pending unit actions.
    pub check: Check,
    /// `ActiveState` of each unit asked about.
    pub units: Vec<(String, String)>,
    /// The applied manifest, when the machine sent it (its digest was not
    /// the one lab had cached), or from the cache.
    pub manifest: Option<Manifest>,
}

/// The applied manifest as a check left it: its text (sent by the
/// machine, or cached here, with the machine's digest), empty (before
/// lab's first sync), or unknown (to be fetched).
enum AppliedText {
    Text(String),
    Empty,
    Unknown,
}

impl AppliedText {
    fn parse(self, gen: u64, machine: &str) -> Result<Option<Manifest>, SyncError> {
        match self {
            AppliedText::Text(t) => {
                Manifest::parse(&t)
                    .map(Some)
                    .map_err(|e| SyncError::Protocol {
                        status: 0,
                        output: format!("manifest of generation {gen}: {e}"),
                    })
            }
            AppliedText::Empty => Ok(Some(Manifest::new(machine))),
            AppliedText::Unknown => Ok(None),
        }
    }
}

pub struct MachineSync<'a> {
    pub target: &'a Target,
    pub transport: &'a mut dyn Transport,
}

impl MachineSync<'_> {
    /// Before the pods' units act: the images they use that the machine
    /// lacks, loaded into the right user's podman storage.
    fn ship_images(&mut self, new: &Manifest) -> Result<crate::image_store::Shipped, SyncError> {
        if !self.target.systemd {
            return Ok(Default::default());
        }
        let uses = crate::images::wanted(&self.target.out_dir, new, &self.target.pod_user);
        if uses.is_empty() {
            return Ok(Default::default());
        }
        let lab = lab_core::LabDir::at(&self.target.lab_dir);
        // (what lab last applied there: paths it changes restart their
        // pods anyway; unknown: every path counts as changed)
        let old = self
            .cached_text()
            .and_then(|(t, _)| Manifest::parse(&t).ok());
        let changed = |p: &str| match &old {
            Some(o) => o.get(p) != new.get(p),
            None => true,
        };
        crate::image_store::ship(
            self.transport,
            &self.target.name,
            &self.target.root,
            &self.target.images_dir,
            &lab,
            self.target.keep,
            &uses,
            &changed,
        )
    }

    /// Check the machine, changing nothing: one command (see [`Probe`]).
    /// `units`: whose state to report. A sync holding the machine's lock
    /// is waited for (see [`MachineSync::check_now`]).
    pub fn check(&mut self, units: &[String]) -> Result<Probe, SyncError> {
        self.check_with(units, true)
    }

    /// [`MachineSync::check`] without waiting for a sync that holds the
    /// lock (what a sync itself does: its apply checks again under the
    /// lock).
    pub fn check_now(&mut self, units: &[String]) -> Result<Probe, SyncError> {
        self.check_with(units, false)
    }

    /// [`MachineSync::check`] by a caller that has the build whose
    /// manifest has digest `built`: when the machine is on it and no stat
    /// changed there, nothing is to be compared, and the applied manifest
    /// is left out (`None`: unparsed, as for an interrupted run).
    pub fn check_against(&mut self, units: &[String], built: &Digest) -> Result<Probe, SyncError> {
        let (mut p, applied) = self.check_raw(units, true)?;
        if p.digest != Some(*built) || !p.check.seen.is_empty() {
            p.manifest = applied.parse(p.gen, &self.target.name)?;
        }
        Ok(p)
    }

    fn check_with(&mut self, units: &[String], wait: bool) -> Result<Probe, SyncError> {
        let (mut p, applied) = self.check_raw(units, wait)?;
        p.manifest = applied.parse(p.gen, &self.target.name)?;
        Ok(p)
    }

    /// [`MachineSync::check`], the applied manifest left unparsed (a
    /// no-change sync never needs it: parsing two manifests of 10k entries
    /// was a third of its time).
    fn check_raw(
        &mut self,
        units: &[String],
        wait: bool,
    ) -> Result<(Probe, AppliedText), SyncError> {
        let cached = self.cached_text();
        let known = cached.as_ref().map(|(_, d)| *d);
        let out = self.run_program(
            &check_program(known.as_ref(), units, wait),
            self.target.systemd,
            &mut |_| Ok(()),
        )?;
        if out.status != 0 {
            return Err(SyncError::Protocol {
                status: out.status,
                output: format!("{}{}", out.stdout_text(), out.stderr_text()),
            });
        }
        let text = out.stdout_text();
        let (head, manifest_text) = match text.split_once("\nmanifest\n") {
            Some((h, m)) => (h.to_string(), Some(m.to_string())),
            None => (text.clone(), None),
        };
        let (gen, digest) = parse_current(&head)?;
        let mut p = Probe {
            gen,
            digest,
            interrupted: head.lines().any(|l| l == "interrupted"),
            check: Check::parse(&head),
            ..Default::default()
        };
        for l in head.lines() {
            if let Some(t) = l.strip_prefix("at ") {
                p.applied_at = t.trim().parse().ok();
            } else if let Some(u) = l.strip_prefix("unit ") {
                if let Some((u, st)) = u.split_once(' ') {
                    p.units.push((u.to_string(), st.to_string()));
                }
            }
        }
        let applied = match (manifest_text, cached) {
            (Some(t), _) if Some(Digest::of(t.as_bytes())) == digest => {
                self.remember(&t);
                AppliedText::Text(t)
            }
            (None, Some((t, d))) if Some(d) == digest => AppliedText::Text(t),
            _ if gen == 0 => AppliedText::Empty,
            _ => AppliedText::Unknown,
        };
        Ok((p, applied))
    }

    /// The machine's generation and manifest digest (`None` before lab's
    /// first sync).
    pub fn probe(&mut self) -> Result<(u64, Option<Digest>), SyncError> {
        let out = self
            .transport
            .run(&probe_command(&self.target.root), &mut |_| Ok(()))?;
        if out.status != 0 {
            return Err(SyncError::Protocol {
                status: out.status,
                output: out.stderr_text(),
            });
        }
        parse_current(&out.stdout_text())
    }

    /// The manifest of generation `gen` on the machine (empty for 0).
    pub fn fetch_manifest(
        &mut self,
        gen: u64,
        digest: Option<&Digest>,
    ) -> Result<Manifest, SyncError> {
        if gen == 0 || digest == Some(&interrupted_digest()) && !self.gen_exists(gen)? {
            return Ok(Manifest::new(&self.target.name));
        }
        if let (Some(d), Ok(text)) = (digest, std::fs::read_to_string(&self.target.cache_path)) {
            if Digest::of(text.as_bytes()) == *d {
                if let Ok(m) = Manifest::parse(&text) {
                    return Ok(m);
                }
            }
        }
        let out = self
            .transport
            .run(&manifest_command(&self.target.root, gen), &mut |_| Ok(()))?;
        if out.status != 0 {
            return Err(SyncError::Protocol {
                status: out.status,
                output: out.stderr_text(),
            });
        }
        Manifest::parse(&out.stdout_text()).map_err(|e| SyncError::Protocol {
            status: 0,
            output: format!("manifest of generation {gen}: {e}"),
        })
    }

    /// Whether generation `gen` is still on the machine.
    fn gen_exists(&mut self, gen: u64) -> Result<bool, SyncError> {
        let cmd = format!(
            "test -f {} && echo yes; true",
            lab_agent::quote(&format!(
                "{}{}/gen/{gen}/manifest",
                self.target.root,
                lab_agent::STATE_DIR
            ))
        );
        let out = self.transport.run(&cmd, &mut |_| Ok(()))?;
        Ok(out.stdout_text().trim() == "yes")
    }

    fn new_manifest(&self) -> Result<(Manifest, String), SyncError> {
        let text = self.new_text()?;
        let m = self.parse_new(&text)?;
        Ok((m, text))
    }

    /// The built manifest's text.
    fn new_text(&self) -> Result<String, SyncError> {
        std::fs::read_to_string(&self.target.manifest_path).map_err(|e| SyncError::Build {
            machine: self.target.name.clone(),
            message: format!("{}: {e}", self.target.manifest_path.display()),
        })
    }

    fn parse_new(&self, text: &str) -> Result<Manifest, SyncError> {
        Manifest::parse(text).map_err(|e| SyncError::Build {
            machine: self.target.name.clone(),
            message: e.to_string(),
        })
    }

    fn remember(&self, text: &str) {
        if let Some(dir) = self.target.cache_path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let tmp = self.target.cache_path.with_extension("tmp");
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, &self.target.cache_path);
        }
    }

    /// The manifest this machine applied last, as cached here, and its
    /// digest.
    fn cached_text(&self) -> Option<(String, Digest)> {
        let text = std::fs::read_to_string(&self.target.cache_path).ok()?;
        let d = Digest::of(text.as_bytes());
        Some((text, d))
    }

    /// Ship the built manifest to the machine.
    ///
    /// When the cache says where the machine is, the change goes out at
    /// once (one command); the machine refuses it if it is elsewhere, and
    /// says where it is, and lab plans again from there.
    pub fn sync(&mut self, opts: &SyncOptions) -> Result<SyncReport, SyncError> {
        let new_text = self.new_text()?;
        let digest = Digest::of(new_text.as_bytes());
        // (parsed only when something is to be done)
        let mut new: Option<Manifest> = None;
        let mut attempts = 0;
        // (what runs that stopped as stale had to say: a recovery, say;
        // and first, the images of the machine's pods: only a manifest
        // with Quadlet files can name one, others are not parsed here)
        let mut notes: Vec<String> = Vec::new();
        let mut journaled = false;
        if new_text.contains("containers/systemd/") {
            let m = self.parse_new(&new_text)?;
            let shipped = self.ship_images(&m)?;
            (notes, journaled) = (shipped.notes, shipped.journaled);
            new = Some(m);
        }
        // What lab knows of the machine: its generation, digest, applied
        // manifest, and what the last check of it found.
        let cached = self.cached_text();
        let cached_digest = cached.as_ref().map(|(_, d)| *d);
        let from_cache = match cached {
            // (restarts the images journaled make a change planned from
            // the cache stale: the machine is checked first then)
            Some((t, d)) if d != digest && !journaled => Manifest::parse(&t).ok().map(|m| (m, d)),
            _ => None,
        };
        let (mut gen, mut base, mut known, mut check) = match from_cache {
            // (a change goes out at once; the machine refuses it, saying
            // what it found, when it is not as the cache says)
            Some((m, d)) => (None, Some(d), Some(m), Check::default()),
            None => {
                let (p, applied) = self.check_raw(&[], false)?;
                // (nothing to ship and no stat changed: the applied
                // manifest is not looked at, so not parsed)
                let m = if p.digest == Some(digest) && p.check.seen.is_empty() {
                    None
                } else {
                    applied.parse(p.gen, &self.target.name)?
                };
                (Some(p.gen), p.digest, m, p.check)
            }
        };
        loop {
            let old = if base == Some(digest) && check.seen.is_empty() {
                None
            } else {
                Some(match known.take() {
                    Some(m) => m,
                    None => self.fetch_manifest(gen.unwrap_or_default(), base.as_ref())?,
                })
            };
            let drift: Vec<Drift> = old.as_ref().map(|o| check.drift(o)).unwrap_or_default();
            if base == Some(digest) && drift.is_empty() {
                if cached_digest != Some(digest) {
                    self.remember(&new_text);
                }
                let mut report = SyncReport {
                    outcome: Outcome::Unchanged {
                        gen: gen.unwrap_or_default(),
                    },
                    written: 0,
                    removed: 0,
                    content_bytes: 0,
                    apply: Report::default(),
                    rollback: None,
                    failed_units: vec![],
                    drift: vec![],
                    pending: check.pending.clone(),
                };
                if check.pending.is_empty() {
                    report.apply.notes = notes;
                    return Ok(report);
                }
                // unit actions a killed run left: run them, nothing else
                let run = run_id();
                let program = with_run(
                    &run,
                    &resume_program(&digest, &check.expect(), self.target.settle_ms),
                );
                let out = self.run_program(&program, self.target.systemd, &mut |_| Ok(()));
                let out = self.outcome(out, &run)?;
                let r = Report::parse(&out.stdout_text());
                attempts += 1;
                if out.status == ExecutorExit::Stale.code() {
                    let Some((g, b)) = r.stale else {
                        return Err(SyncError::Protocol {
                            status: out.status,
                            output: out.stdout_text(),
                        });
                    };
                    if attempts >= 5 {
                        return Err(SyncError::Contended(attempts));
                    }
                    notes.extend(r.notes.iter().cloned());
                    (gen, base, known, check) = self.after_stale(g, b, Some(digest), &out)?;
                    continue;
                }
                if out.status != 0 || !r.finished {
                    return Err(SyncError::Interrupted(format!(
                        "the pending unit actions of generation {} did not finish: {}",
                        gen.unwrap_or_default(),
                        r.failures.join("; ")
                    )));
                }
                report.failed_units = r.failed_units().map(|u| u.unit.clone()).collect();
                report.apply = r;
                notes.append(&mut report.apply.notes);
                report.apply.notes = notes;
                return Ok(report);
            }
            attempts += 1;
            let old = old.expect("looked at: the machine is not on the build, or drifted");
            if new.is_none() {
                new = Some(self.parse_new(&new_text)?);
            }
            let new = new.as_ref().expect("parsed");
            let mut plan = ApplyPlan::repairing(&old, new, &check.seen);
            plan.expect = Some(check.expect());
            let fresh = units::actions(
                &old,
                new,
                &plan.touched(),
                &self.target.rules,
                &self.target.pod_user,
            );
            let actions = crate::converge::merge_actions(&check.pending, &fresh);
            let settle = if opts.rollback_on_failure {
                self.target.settle_ms.max(ROLLBACK_SETTLE_MS)
            } else {
                self.target.settle_ms
            };
            let run = run_id();
            let program = with_run(
                &run,
                &plan.program(base.as_ref(), &digest, self.target.keep, &actions, settle),
            );
            let mut tar_error = None;
            let out_dir = self.target.out_dir.clone();
            let out = self.run_program(&program, self.target.systemd, &mut |w| {
                if let Err(e) = plan.write_tar(&out_dir, &new_text, &mut *w) {
                    tar_error = Some(e.to_string());
                }
                Ok(())
            });
            if let Some(e) = tar_error {
                return Err(SyncError::Build {
                    machine: self.target.name.clone(),
                    message: e,
                });
            }
            let out = self.outcome(out, &run)?;
            let mut report = Report::parse(&out.stdout_text());
            if out.status == ExecutorExit::Applied.code() {
                notes.append(&mut report.notes);
                report.notes = std::mem::take(&mut notes);
            }
            if out.status == 0 && !report.finished {
                return Err(SyncError::Interrupted(match report.now {
                    Some((g, _)) => {
                        format!("generation {g} was applied, but its unit actions may not have run")
                    }
                    None => "nothing was committed; the next sync undoes what it had done".into(),
                }));
            }
            match ExecutorExit::from_code(out.status) {
                Some(ExecutorExit::Applied) => {}
                Some(ExecutorExit::Stale) => {
                    // The machine is not where we thought (another sync, a
                    // rollback, a lost cache): plan again from where it is.
                    let Some((g, b)) = report.stale else {
                        return Err(SyncError::Protocol {
                            status: ExecutorExit::Stale.code(),
                            output: out.stdout_text(),
                        });
                    };
                    notes.extend(report.notes.iter().cloned());
                    if attempts >= 5 {
                        return Err(SyncError::Contended(attempts));
                    }
                    let sent = base;
                    (gen, base, known, check) = self.after_stale(g, b, sent, &out)?;
                    continue;
                }
                Some(ExecutorExit::Failed) => {
                    if let Some((path, needed, free)) = report.no_space() {
                        return Err(SyncError::NoSpace { path, needed, free });
                    }
                    return Err(SyncError::Remote(if report.failures.is_empty() {
                        out.stderr_text()
                    } else {
                        report.failures.join("; ")
                    }));
                }
                // (a library still missing after it was sent inline)
                Some(ExecutorExit::LibraryMissing) | None => {
                    return Err(SyncError::Protocol {
                        status: out.status,
                        output: format!("{}{}", out.stdout_text(), out.stderr_text()),
                    })
                }
            }
            let Some((now, _)) = report.now else {
                return Err(SyncError::Protocol {
                    status: 0,
                    output: out.stdout_text(),
                });
            };
            self.remember(&new_text);
            let failed: Vec<String> = report.failed_units().map(|u| u.unit.clone()).collect();
            let mut result = SyncReport {
                outcome: Outcome::Applied { gen: now },
                written: plan.writes.len() + plan.new_dirs.len() + plan.chmod_dirs.len(),
                removed: plan.removes.len() + plan.rmdirs.len(),
                content_bytes: plan.content_bytes(),
                apply: report,
                rollback: None,
                failed_units: failed,
                drift,
                pending: check.pending.clone(),
            };
            if opts.rollback_on_failure && !result.failed_units.is_empty() {
                let prev = now - 1;
                let rb = self.rollback_to(Some(prev), Some((now, digest, new)))?;
                result.outcome = Outcome::RolledBack { gen: prev };
                result.rollback = Some(rb);
            }
            return Ok(result);
        }
    }

    /// Where the machine is after it refused a run as stale (`g`, `b`):
    /// when it was on the base the run named (`sent`), its answer holds
    /// what its check found (drift, pending actions: the run expected
    /// others); when it was elsewhere (another sync, a rollback, a run
    /// of lab killed before it could remember), it answered before its
    /// check, so ask for one.
    #[allow(clippy::type_complexity)]
    fn after_stale(
        &mut self,
        g: u64,
        b: Option<Digest>,
        sent: Option<Digest>,
        out: &Output,
    ) -> Result<(Option<u64>, Option<Digest>, Option<Manifest>, Check), SyncError> {
        if b == sent {
            return Ok((Some(g), b, None, Check::parse(&out.stdout_text())));
        }
        let p = self.check_now(&[])?;
        Ok((Some(p.gen), p.digest, p.manifest, p.check))
    }

    /// Put the machine back on generation `to` (default: the one before the
    /// current), and run the unit actions that change implies, and those
    /// the generation it leaves still had pending (a killed run's): the
    /// rollback's journal replaces that generation's, so they run now or
    /// would be lost. `current` is what the caller already knows of the
    /// machine (a sync that has just run its actions: none are pending).
    pub fn rollback_to(
        &mut self,
        to: Option<u64>,
        current: Option<(u64, Digest, &Manifest)>,
    ) -> Result<Report, SyncError> {
        let mut current = current.map(|(g, d, m)| (g, d, m.clone()));
        // (a machine whose pending actions changed since they were read,
        // an image update's journaled restart say, refuses the plan as
        // stale: read them again and plan again)
        for _ in 0..5 {
            if let Some(report) = self.rollback_once(to, current.take())? {
                return Ok(report);
            }
        }
        Err(SyncError::Contended(5))
    }

    /// One try of [`MachineSync::rollback_to`]; `None`: the machine said
    /// the plan was stale.
    fn rollback_once(
        &mut self,
        to: Option<u64>,
        current: Option<(u64, Digest, Manifest)>,
    ) -> Result<Option<Report>, SyncError> {
        let (gen, cur_manifest, pending, expect) = match current {
            Some((g, _, m)) => (g, m, Vec::new(), None),
            None => {
                let p = self.check(&[])?;
                let m = match p.manifest {
                    Some(m) => m,
                    None => self.fetch_manifest(p.gen, p.digest.as_ref())?,
                };
                let expect = p.check.expect_pending();
                (p.gen, m, p.check.pending, Some(expect))
            }
        };
        let to = match to {
            Some(t) => t,
            None if gen > 0 => gen - 1,
            None => {
                return Err(SyncError::Rollback(
                    "the machine has no generation to go back from".into(),
                ))
            }
        };
        if to >= gen {
            return Err(SyncError::Rollback(format!(
                "generation {to} is not older than the current generation {gen}"
            )));
        }
        let target = if to == 0 {
            Manifest::new(&self.target.name)
        } else {
            self.fetch_manifest(to, None)?
        };
        let plan = ApplyPlan::new(&cur_manifest, &target);
        let fresh = units::actions(
            &cur_manifest,
            &target,
            &plan.touched(),
            &self.target.rules,
            &self.target.pod_user,
        );
        let actions: Vec<UnitAction> = crate::converge::merge_actions(&pending, &fresh);
        let program = lab_agent::rollback_program(
            to,
            expect.as_deref(),
            &actions,
            self.target.settle_ms.max(ROLLBACK_SETTLE_MS),
        );
        let run = run_id();
        let program = with_run(&run, &program);
        let out = self.run_program(&program, self.target.systemd, &mut |_| Ok(()));
        let out = self.outcome(out, &run)?;
        let report = Report::parse(&out.stdout_text());
        if out.status == ExecutorExit::Stale.code() && report.stale.is_some() {
            return Ok(None);
        }
        if !report.failures.is_empty() {
            return Err(SyncError::Rollback(report.failures.join("; ")));
        }
        // Success only from the executor's own last word: a run killed on
        // the way may leave an exit status of 0 behind it.
        if out.status != 0 || !report.finished || report.now.is_none() {
            return Err(SyncError::Interrupted(format!(
                "the rollback to generation {to} did not finish (exit {}); the machine is \
                 between generations until the next sync or rollback finishes the undo{}",
                out.status,
                if out.stderr.is_empty() {
                    String::new()
                } else {
                    format!(": {}", out.stderr_text().trim())
                }
            )));
        }
        self.remember(&target.to_text());
        let mut report = report;
        if self.target.systemd {
            // (the pods' images go back with the generation: no file sent)
            let lab = lab_core::LabDir::at(&self.target.lab_dir);
            let notes = crate::image_store::restore(
                self.transport,
                &self.target.root,
                to,
                self.target.keep,
                &lab,
            )?;
            report.notes.extend(notes);
        }
        Ok(Some(report))
    }

    /// `program` run on the machine, its library named when the machine
    /// keeps it (see [`crate::library::run_program`]).
    fn run_program(
        &mut self,
        program: &str,
        systemd: bool,
        input: Input<'_>,
    ) -> Result<Output, SyncError> {
        let lab = lab_core::LabDir::at(&self.target.lab_dir);
        let on = crate::library::On {
            lab: &lab,
            machine: &self.target.name,
            root: &self.target.root,
            systemd,
        };
        crate::library::run_program(&mut *self.transport, &on, program, input)
    }
    /// The output of executor run `run`; when the connection was lost on
    /// the way, connect again and read what the run reported on the
    /// machine (waiting for it to end: it finishes without us).
    fn outcome(&mut self, out: Result<Output, SyncError>, run: &str) -> Result<Output, SyncError> {
        let lost = match out {
            Ok(o) => return Ok(o),
            Err(SyncError::Channel(m)) => m,
            Err(e) => return Err(e),
        };
        let lost_err = |extra: &str| SyncError::Channel(format!("{lost}{extra}"));
        self.transport
            .reconnect()
            .map_err(|e| lost_err(&format!("; connecting again to read the outcome: {e}")))?;
        let o = self
            .transport
            .run(&outcome_command(&self.target.root, run), &mut |_| Ok(()))
            .map_err(|e| lost_err(&format!("; reading the outcome: {e}")))?;
        let r = Report::parse(&o.stdout_text());
        let status = if r.stale.is_some() {
            ExecutorExit::Stale
        } else if !r.failures.is_empty() {
            ExecutorExit::Failed
        } else if r.now.is_some() || r.finished {
            ExecutorExit::Applied
        } else {
            return Err(lost_err(
                "; the machine has no report of the run (it did not start, or was killed \
                 before it changed anything)",
            ));
        };
        Ok(Output {
            status: status.code(),
            stdout: o.stdout,
            stderr: Vec::new(),
        })
    }

    /// The contents of the regular files among `paths` (relative) of at
    /// most `max` bytes, in one command. Nothing is read through a
    /// symlink, nor a directory whole; what is not such a file is left out.
    pub fn fetch_files(
        &mut self,
        paths: &[&str],
        max: u64,
    ) -> Result<BTreeMap<String, Vec<u8>>, SyncError> {
        let mut remote: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        if paths.is_empty() {
            return Ok(remote);
        }
        let mut prog = format!(
            "set -u\ncd \"${{LAB_ROOT:-/}}\" || exit 0\nok() {{\n  q=${{1%/*}}\n  [ \"$q\" != \"$1\" ] || q=\"\"\n  while [ -n \"$q\" ]; do\n    if [ -L \"$q\" ] || [ ! -d \"$q\" ]; then return 1; fi\n    case $q in */*) q=${{q%/*}} ;; *) q=\"\" ;; esac\n  done\n  [ -f \"$1\" ] && [ ! -L \"$1\" ] && [ \"$(stat -c %s -- \"$1\")\" -le {max} ]\n}}\nset --\nfor p in"
        );
        for p in paths {
            prog.push(' ');
            prog.push_str(&lab_agent::quote(p));
        }
        prog.push_str(
            "; do if ok \"$p\"; then set -- \"$@\" \"$p\"; fi; done\n\
             [ $# -gt 0 ] || exit 0\n\
             exec tar -c -f - --no-recursion --ignore-failed-read -- \"$@\" 2>/dev/null\n",
        );
        let (cmd, first) = bootstrap(&self.target.root, &prog, false);
        let out = self.transport.run(&cmd, &mut |w| w.write_all(first))?;
        let mut ar = tar::Archive::new(out.stdout.as_slice());
        if let Ok(entries) = ar.entries() {
            for e in entries.flatten() {
                let mut e = e;
                let path = e
                    .path()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let mut data = Vec::new();
                use std::io::Read;
                if e.read_to_end(&mut data).is_ok() {
                    remote.insert(path, data);
                }
            }
        }
        Ok(remote)
    }

    /// What a sync would change: for each path it would write or remove,
    /// lab's entry before and after, what is really on the machine (drift
    /// included), and the contents (files up to 1 MiB): the machine's own
    /// file, also where lab takes a file over for the first time.
    pub fn diff(&mut self) -> Result<Vec<Change>, SyncError> {
        let (new, _) = self.new_manifest()?;
        let probe = self.check(&[])?;
        let old = match probe.manifest {
            Some(m) => m,
            None => self.fetch_manifest(probe.gen, probe.digest.as_ref())?,
        };
        let drift: BTreeMap<String, Drift> = probe
            .check
            .drift(&old)
            .into_iter()
            .map(|d| (d.path.clone(), d))
            .collect();
        let plan = ApplyPlan::repairing(&old, &new, &probe.check.seen);
        let touched = plan.touched();
        // What is there now, for each touched path: the check says for
        // drifted ones; the applied manifest for the others; a path lab
        // does not manage yet may hold a file of the machine's own.
        let on_machine = |p: &str| -> Option<&'static str> {
            match (drift.get(p), old.get(p)) {
                (Some(d), _) => match d.seen {
                    lab_agent::Seen::Gone => None,
                    ref s => Some(s.kind_name()),
                },
                (None, Some(e)) => Some(e.kind_name()),
                (None, None) => Some("unknown"),
            }
        };
        let wanted: Vec<&str> = touched
            .iter()
            .filter(|p| matches!(on_machine(p), Some("file" | "unknown")))
            .copied()
            .collect();
        let mut remote = self.fetch_files(&wanted, 1 << 20)?;
        let mut changes = Vec::new();
        for p in touched {
            let before = old.get(p).cloned();
            let after = new.get(p).cloned();
            let old_content = remote.remove(p);
            let new_content = match &after {
                Some(Entry {
                    kind: EntryKind::File { size, .. },
                    ..
                }) if *size <= 1 << 20 => std::fs::read(self.target.out_dir.join(p)).ok(),
                _ => None,
            };
            let now = match on_machine(p) {
                Some("unknown") if old_content.is_some() => Some("file"),
                Some("unknown") => None,
                k => k,
            };
            changes.push(Change {
                path: p.to_string(),
                before,
                after,
                old_content,
                new_content,
                drift: drift.get(p).map(|d| d.kind),
                on_machine: now.map(str::to_string),
            });
        }
        Ok(changes)
    }
}

/// One path a sync would change.
#[derive(Clone, Debug)]
pub struct Change {
    pub path: String,
    pub before: Option<Entry>,
    pub after: Option<Entry>,
    /// Content on the machine now (files up to 1 MiB).
    pub old_content: Option<Vec<u8>>,
    pub new_content: Option<Vec<u8>>,
    /// The path is not what lab put there.
    pub drift: Option<lab_agent::DriftKind>,
    /// What is on the machine at the path now (`file`, `dir`, `symlink`,
    /// ...; `None`: nothing).
    pub on_machine: Option<String>,
}
