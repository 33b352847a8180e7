//! Which systemd units a change touches, and what to do with each.
//!
//! Unit files and drop-ins are recognised by their paths (`/etc/systemd/system`,
//! `/run/systemd/system`, `/usr/lib/systemd/system`, `/lib/systemd/system`),
//! Quadlet files by `/etc/containers/systemd` and
//! `/usr/share/containers/systemd`; any other file maps to a unit through a
//! `[[units]]` rule of lab.toml.
//!
//! Quadlet files under `/etc/containers/systemd/users/` are the machine's
//! pod user's (Quadlet generates them for every non-root user; the pod
//! user's `.kube` says `ConditionUser=`): their units live in that user's
//! systemd and are named `USER/UNIT` ([`lab_core::ScopedUnit`]); the same
//! rules apply there, with that manager's own `daemon-reload`. A changed
//! `/etc/nftables.d/*.nft` (the pods' firewall drop-in) reloads
//! `nftables.service` (when it runs).
//!
//! - a unit file, drop-in or Quadlet file added, changed or removed:
//!   `daemon-reload`, once;
//! - a unit file removed: stop the unit (before the daemon-reload);
//! - a unit file or drop-in changed: restart the unit if it is running;
//! - a `*.wants/` or `*.requires/` link added, or a Quadlet file added:
//!   start the unit;
//! - a file a rule covers changed: the rule's action (if the unit runs).
//!
//! Each unit gets one action, the strongest asked for (start > restart >
//! reload-or-restart > reload); stops come first, then the daemon-reload,
//! then reloads, restarts and starts.

use lab_agent::{UnitAction, UnitOp};
use lab_core::ScopedUnit;
use lab_manifest::Manifest;
use std::collections::{BTreeMap, BTreeSet};

/// What a rule asks of its unit when a file it covers changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleAction {
    Reload,
    Restart,
    ReloadOrRestart,
}

/// A `[[units]]` rule: files whose machine path (with a leading `/`)
/// `matcher` matches belong to `unit`. lab-deploy makes these from
/// lab.toml; lab-sync only matches paths against them.
#[derive(Clone, Debug)]
pub struct UnitRule {
    pub matcher: globset::GlobSet,
    pub unit: String,
    pub action: RuleAction,
}

impl UnitRule {
    /// Does the rule cover this output path (relative, no leading slash)?
    pub fn matches(&self, path: &str) -> bool {
        self.matcher.is_match(format!("/{path}"))
    }
}

const UNIT_DIRS: &[&str] = &[
    "etc/systemd/system/",
    "run/systemd/system/",
    "usr/lib/systemd/system/",
    "lib/systemd/system/",
];
const QUADLET_DIRS: &[&str] = &["etc/containers/systemd/", "usr/share/containers/systemd/"];
/// Quadlet files of every non-root user (lab's: the pod user's).
const USER_QUADLET_DIR: &str = "etc/containers/systemd/users/";
/// nftables drop-ins (`*.nft`): `nftables.service` reloads them.
const NFTABLES_DIR: &str = "etc/nftables.d/";
const NFTABLES_UNIT: &str = "nftables.service";
const UNIT_TYPES: &[&str] = &[
    "service",
    "socket",
    "timer",
    "path",
    "mount",
    "automount",
    "swap",
    "target",
    "slice",
    "scope",
    "device",
];

/// What a path is to systemd.
#[derive(Debug, PartialEq, Eq)]
pub enum UnitFile {
    /// `.../NAME.TYPE`
    Unit(String),
    /// `.../NAME.TYPE.d/X.conf`
    DropIn(String),
    /// `.../X.wants/NAME.TYPE` (or `.requires`)
    Wants(String),
    /// A Quadlet file and the unit systemd generates from it.
    Quadlet(String),
    /// A Quadlet file of the pod user, and its unit in that user's systemd.
    UserQuadlet(String),
    /// A drop-in of a pod user's Quadlet file.
    UserDropIn(String),
}

fn is_unit_name(name: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(stem, ty)| !stem.is_empty() && UNIT_TYPES.contains(&ty))
}

/// A template (`foo@.service`) cannot be restarted itself.
fn is_template(name: &str) -> bool {
    name.rsplit_once('.')
        .is_some_and(|(stem, _)| stem.ends_with('@'))
}

fn quadlet_unit(name: &str) -> Option<String> {
    let (stem, ext) = name.rsplit_once('.')?;
    let unit = match ext {
        "container" | "kube" => format!("{stem}.service"),
        "volume" => format!("{stem}-volume.service"),
        "network" => format!("{stem}-network.service"),
        "pod" => format!("{stem}-pod.service"),
        "image" => format!("{stem}-image.service"),
        "build" => format!("{stem}-build.service"),
        _ => return None,
    };
    Some(unit)
}

/// Classify a machine path (relative, like `etc/systemd/system/x.service`).
pub fn classify(path: &str) -> Option<UnitFile> {
    if let Some(rest) = path.strip_prefix(USER_QUADLET_DIR) {
        let parts: Vec<&str> = rest.split('/').collect();
        return match parts.as_slice() {
            [name] => quadlet_unit(name).map(UnitFile::UserQuadlet),
            [dir, conf] if conf.ends_with(".conf") => dir
                .strip_suffix(".d")
                .and_then(quadlet_unit)
                .map(UnitFile::UserDropIn),
            // (users/UID/: one user's own Quadlet files; not lab's pods)
            _ => None,
        };
    }
    for d in UNIT_DIRS {
        let Some(rest) = path.strip_prefix(d) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        return match parts.as_slice() {
            [name] if is_unit_name(name) => Some(UnitFile::Unit(name.to_string())),
            [dir, conf] if conf.ends_with(".conf") => dir
                .strip_suffix(".d")
                .filter(|u| is_unit_name(u))
                .map(|u| UnitFile::DropIn(u.to_string())),
            [dir, name]
                if (dir.ends_with(".wants") || dir.ends_with(".requires"))
                    && is_unit_name(name) =>
            {
                Some(UnitFile::Wants(name.to_string()))
            }
            _ => None,
        };
    }
    for d in QUADLET_DIRS {
        let Some(rest) = path.strip_prefix(d) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        return match parts.as_slice() {
            [name] => quadlet_unit(name).map(UnitFile::Quadlet),
            [dir, conf] if conf.ends_with(".conf") => dir
                .strip_suffix(".d")
                .and_then(quadlet_unit)
                .map(UnitFile::DropIn),
            _ => None,
        };
    }
    None
}

/// The units lab manages on a machine with manifest `m`: unit and Quadlet
/// files it writes (the pod user's as `USER/UNIT`), and the units of its
/// `[[units]]` rules that cover a path of it.
pub fn managed_units<'a>(
    paths: impl IntoIterator<Item = &'a str>,
    rules: &[UnitRule],
    pod_user: &str,
) -> Vec<String> {
    let mut out = BTreeSet::new();
    for p in paths {
        match classify(p) {
            Some(UnitFile::Unit(u) | UnitFile::DropIn(u) | UnitFile::Quadlet(u))
                if !u.contains("@.") =>
            {
                out.insert(u);
            }
            Some(UnitFile::UserQuadlet(u) | UnitFile::UserDropIn(u)) if !u.contains("@.") => {
                out.insert(ScopedUnit::name(Some(pod_user), &u));
            }
            _ => {}
        }
        for r in rules.iter().filter(|r| r.matches(p)) {
            out.insert(r.unit.clone());
        }
    }
    out.into_iter().collect()
}

/// For `DIR/NAME.yaml` in a Quadlet directory with a `DIR/NAME.kube` in
/// either manifest: `NAME.kube`, and whether it is the pod user's.
fn kube_of_yaml(path: &str, old: &Manifest, new: &Manifest) -> Option<(String, bool)> {
    let stem = path
        .strip_suffix(".yaml")
        .or_else(|| path.strip_suffix(".yml"))?;
    let (dir, name) = stem.rsplit_once('/')?;
    let user = format!("{dir}/") == USER_QUADLET_DIR;
    if !user && !QUADLET_DIRS.iter().any(|d| format!("{dir}/") == *d) {
        return None;
    }
    let kube = format!("{stem}.kube");
    (old.get(&kube).is_some() || new.get(&kube).is_some()).then(|| (format!("{name}.kube"), user))
}

/// A Quadlet file appeared: start; changed: restart; removed: stop.
fn quadlet_op(before: bool, after: bool) -> UnitOp {
    match (before, after) {
        (_, false) => UnitOp::Stop,
        (false, true) => UnitOp::Start,
        _ => UnitOp::Restart,
    }
}

fn rank(op: UnitOp) -> u8 {
    match op {
        UnitOp::Reload => 1,
        UnitOp::ReloadOrRestart => 2,
        UnitOp::Restart => 3,
        UnitOp::Start => 4,
        UnitOp::Stop => 5,
        UnitOp::DaemonReload => 0,
    }
}

/// The unit actions for a change from `old` to `new` that touched `paths`;
/// the units of `/etc/containers/systemd/users/` are `pod_user`'s.
pub fn actions(
    old: &Manifest,
    new: &Manifest,
    paths: &BTreeSet<&str>,
    rules: &[UnitRule],
    pod_user: &str,
) -> Vec<UnitAction> {
    let mut reload = false;
    let mut user_reload = false;
    let user_unit = |u: &str| ScopedUnit::name(Some(pod_user), u);
    let mut per_unit: BTreeMap<String, UnitOp> = BTreeMap::new();
    let mut ask = |unit: &str, op: UnitOp| {
        if is_template(unit) {
            return;
        }
        let e = per_unit.entry(unit.to_string()).or_insert(op);
        if rank(op) > rank(*e) {
            *e = op;
        }
    };
    for p in paths {
        let (before, after) = (old.get(p), new.get(p));
        if after.is_some_and(|e| e.is_dir())
            || (after.is_none() && before.is_some_and(|e| e.is_dir()))
        {
            continue;
        }
        match classify(p) {
            Some(UnitFile::Unit(u)) => {
                reload = true;
                ask(
                    &u,
                    if after.is_none() {
                        UnitOp::Stop
                    } else {
                        UnitOp::Restart
                    },
                );
            }
            Some(UnitFile::DropIn(u)) => {
                reload = true;
                ask(&u, UnitOp::Restart);
            }
            Some(UnitFile::Wants(u)) => {
                reload = true;
                if after.is_some() && before.is_none() {
                    ask(&u, UnitOp::Start);
                }
            }
            Some(UnitFile::Quadlet(u)) => {
                reload = true;
                ask(&u, quadlet_op(before.is_some(), after.is_some()));
            }
            Some(UnitFile::UserQuadlet(u)) => {
                user_reload = true;
                ask(
                    &user_unit(&u),
                    quadlet_op(before.is_some(), after.is_some()),
                );
            }
            Some(UnitFile::UserDropIn(u)) => {
                user_reload = true;
                ask(&user_unit(&u), UnitOp::Restart);
            }
            None => {}
        }
        // a pod's YAML (`Yaml=NAME.yaml` of `NAME.kube` beside it)
        if let Some((kube, user)) = kube_of_yaml(p, old, new) {
            let unit = quadlet_unit(&kube).expect("a .kube names a unit");
            // (the generated unit is the same: no daemon-reload for this)
            if user {
                ask(&user_unit(&unit), UnitOp::Restart);
            } else {
                ask(&unit, UnitOp::Restart);
            }
        }
        if p.strip_prefix(NFTABLES_DIR)
            .is_some_and(|n| !n.contains('/') && n.ends_with(".nft"))
        {
            ask(NFTABLES_UNIT, UnitOp::Reload);
        }
        for r in rules.iter().filter(|r| r.matches(p)) {
            ask(
                &r.unit,
                match r.action {
                    RuleAction::Reload => UnitOp::Reload,
                    RuleAction::Restart => UnitOp::Restart,
                    RuleAction::ReloadOrRestart => UnitOp::ReloadOrRestart,
                },
            );
        }
    }
    let mut out: Vec<UnitAction> = per_unit
        .iter()
        .filter(|(_, op)| **op == UnitOp::Stop)
        .map(|(u, op)| UnitAction {
            op: *op,
            unit: u.clone(),
        })
        .collect();
    if reload {
        out.push(UnitAction {
            op: UnitOp::DaemonReload,
            unit: String::new(),
        });
    }
    if user_reload {
        out.push(UnitAction {
            op: UnitOp::DaemonReload,
            unit: user_unit(""),
        });
    }
    for want in [
        UnitOp::Reload,
        UnitOp::ReloadOrRestart,
        UnitOp::Restart,
        UnitOp::Start,
    ] {
        out.extend(
            per_unit
                .iter()
                .filter(|(_, op)| **op == want)
                .map(|(u, op)| UnitAction {
                    op: *op,
                    unit: u.clone(),
                }),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lab_graph::Digest;
    use lab_manifest::{Entry, EntryKind};

    #[test]
    fn classification() {
        use UnitFile::*;
        assert_eq!(
            classify("etc/systemd/system/app.service"),
            Some(Unit("app.service".into()))
        );
        assert_eq!(
            classify("etc/systemd/system/app.service.d/10-env.conf"),
            Some(DropIn("app.service".into()))
        );
        assert_eq!(
            classify("etc/systemd/system/multi-user.target.wants/app.service"),
            Some(Wants("app.service".into()))
        );
        assert_eq!(
            classify("etc/containers/systemd/pg.container"),
            Some(Quadlet("pg.service".into()))
        );
        assert_eq!(
            classify("etc/containers/systemd/pg.volume"),
            Some(Quadlet("pg-volume.service".into()))
        );
        assert_eq!(
            classify("etc/containers/systemd/pg.container.d/x.conf"),
            Some(DropIn("pg.service".into()))
        );
        assert_eq!(classify("etc/systemd/system/readme.txt"), None);
        assert_eq!(classify("etc/nginx/nginx.conf"), None);
        assert_eq!(classify("etc/systemd/system.conf"), None);
    }

    fn file(p: &str, content: &str) -> Entry {
        Entry {
            path: p.into(),
            mode: 0o644,
            kind: EntryKind::File {
                size: content.len() as u64,
                sha256: Digest::of(content.as_bytes()),
            },
            owner: None,
            group: None,
        }
    }

    fn manifest(entries: &[Entry]) -> Manifest {
        let mut m = Manifest::new("m");
        for e in entries {
            m.insert(e.clone());
        }
        m
    }

    fn rule(glob: &str, unit: &str, action: RuleAction) -> UnitRule {
        // as lab.toml's globs are built: `*` stops at `/`
        let g = globset::GlobBuilder::new(glob)
            .literal_separator(true)
            .build()
            .unwrap();
        UnitRule {
            matcher: globset::GlobSetBuilder::new().add(g).build().unwrap(),
            unit: unit.into(),
            action,
        }
    }

    fn plan(old: &Manifest, new: &Manifest, rules: &[UnitRule]) -> Vec<String> {
        let plan = lab_agent::ApplyPlan::new(old, new);
        actions(old, new, &plan.touched(), rules, "pods")
            .iter()
            .map(|a| format!("{} {}", a.op.as_str(), a.unit).trim().to_string())
            .collect()
    }

    #[test]
    fn each_kind_of_change() {
        let nginx = rule("/etc/nginx/**", "nginx.service", RuleAction::Reload);
        let old = manifest(&[
            file("etc/systemd/system/app.service", "v1"),
            file("etc/systemd/system/old.service", "x"),
            file("etc/nginx/nginx.conf", "a"),
            file("etc/motd", "m"),
        ]);
        let new = manifest(&[
            file("etc/systemd/system/app.service", "v2"),
            file("etc/systemd/system/app.service.d/x.conf", "d"),
            file("etc/systemd/system/new.service", "n"),
            Entry {
                path: "etc/systemd/system/multi-user.target.wants/new.service".into(),
                mode: 0o777,
                kind: EntryKind::Symlink {
                    target: "../new.service".into(),
                },
                owner: None,
                group: None,
            },
            file("etc/nginx/nginx.conf", "b"),
            file("etc/motd", "m2"),
        ]);
        assert_eq!(
            plan(&old, &new, &[nginx]),
            [
                "stop old.service",
                "daemon-reload",
                "reload nginx.service",
                "restart app.service",
                "start new.service"
            ]
        );
    }

    #[test]
    fn untouched_units_are_left_alone_and_strongest_action_wins() {
        let r1 = rule("/etc/app/**", "app.service", RuleAction::Reload);
        let r2 = rule("/etc/app/hard/*", "app.service", RuleAction::Restart);
        let old = manifest(&[
            file("etc/app/a", "1"),
            file("etc/app/hard/b", "1"),
            file("etc/x.service", ""),
        ]);
        let new = manifest(&[
            file("etc/app/a", "2"),
            file("etc/app/hard/b", "2"),
            file("etc/x.service", ""),
        ]);
        assert_eq!(plan(&old, &new, &[r1.clone(), r2]), ["restart app.service"]);
        let new2 = manifest(&[
            file("etc/app/a", "2"),
            file("etc/app/hard/b", "1"),
            file("etc/x.service", ""),
        ]);
        assert_eq!(plan(&old, &new2, &[r1]), ["reload app.service"]);
        assert!(plan(&old, &old, &[]).is_empty());
    }

    #[test]
    fn pod_user_quadlets_act_in_that_users_systemd() {
        let old = manifest(&[
            file("etc/containers/systemd/users/web.kube", "k"),
            file("etc/containers/systemd/users/web.yaml", "y1"),
            file("etc/containers/systemd/users/gone.kube", "g"),
            file("etc/containers/systemd/db.container", "d"),
            file("etc/nftables.d/lab-pods.nft", "a"),
        ]);
        let new = manifest(&[
            file("etc/containers/systemd/users/web.kube", "k2"),
            file("etc/containers/systemd/users/web.yaml", "y2"),
            file("etc/containers/systemd/users/new.kube", "n"),
            file("etc/containers/systemd/users/new.kube.d/x.conf", "x"),
            file("etc/containers/systemd/db.container", "d"),
            file("etc/nftables.d/lab-pods.nft", "b"),
        ]);
        // only the YAML of a pod changed: that pod restarts
        let yaml_only = manifest(&[
            file("etc/containers/systemd/users/web.kube", "k"),
            file("etc/containers/systemd/users/web.yaml", "y2"),
            file("etc/containers/systemd/users/gone.kube", "g"),
            file("etc/containers/systemd/db.container", "d"),
            file("etc/nftables.d/lab-pods.nft", "a"),
        ]);
        assert_eq!(plan(&old, &yaml_only, &[]), ["restart pods/web.service"]);
        assert_eq!(
            plan(&old, &new, &[]),
            [
                "stop pods/gone.service",
                "daemon-reload pods/",
                "reload nftables.service",
                "restart pods/web.service",
                "start pods/new.service",
            ]
        );
        assert_eq!(
            classify("etc/containers/systemd/users/1000/x.kube"),
            None,
            "a uid's own directory is not lab's pod user's"
        );
    }

    #[test]
    fn templates_only_reload_the_daemon() {
        let old = manifest(&[]);
        let new = manifest(&[file("etc/systemd/system/getty@.service", "t")]);
        assert_eq!(plan(&old, &new, &[]), ["daemon-reload"]);
    }
}
