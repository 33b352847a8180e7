//! Convergence: the drift and pending unit actions a check of a machine
//! found, folded into what a sync does. (The check itself runs on the
//! machine, see `lab_agent::check_program`.)

use lab_agent::{UnitAction, UnitOp};
use std::collections::BTreeMap;

fn rank(op: UnitOp) -> u8 {
    match op {
        UnitOp::DaemonReload => 0,
        UnitOp::Reload => 1,
        UnitOp::ReloadOrRestart => 2,
        UnitOp::Restart => 3,
        UnitOp::Start => 4,
        UnitOp::Stop => 5,
    }
}

/// The actions of a sync that also runs the actions an earlier run left
/// pending: each unit once, the strongest action asked for; stops first,
/// then one daemon-reload, then reloads, restarts and starts (the order
/// of [`crate::units::actions`]).
pub fn merge_actions(pending: &[UnitAction], fresh: &[UnitAction]) -> Vec<UnitAction> {
    if pending.is_empty() {
        return fresh.to_vec();
    }
    // (the system manager's daemon-reload is unit `""`, a pod user's
    // `USER/`: each one once)
    let mut reloads: std::collections::BTreeSet<&str> = Default::default();
    let mut per_unit: BTreeMap<&str, UnitOp> = BTreeMap::new();
    for a in pending.iter().chain(fresh) {
        if a.op == UnitOp::DaemonReload {
            reloads.insert(a.unit.as_str());
            continue;
        }
        let e = per_unit.entry(a.unit.as_str()).or_insert(a.op);
        if rank(a.op) > rank(*e) {
            *e = a.op;
        }
    }
    let of = |want: UnitOp| {
        per_unit
            .iter()
            .filter(move |(_, op)| **op == want)
            .map(|(u, op)| UnitAction {
                op: *op,
                unit: u.to_string(),
            })
    };
    let mut out: Vec<UnitAction> = of(UnitOp::Stop).collect();
    out.extend(reloads.into_iter().map(|u| UnitAction {
        op: UnitOp::DaemonReload,
        unit: u.to_string(),
    }));
    for want in [
        UnitOp::Reload,
        UnitOp::ReloadOrRestart,
        UnitOp::Restart,
        UnitOp::Start,
    ] {
        out.extend(of(want));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(op: UnitOp, u: &str) -> UnitAction {
        UnitAction { op, unit: u.into() }
    }

    #[test]
    fn pending_actions_join_the_new_ones_once() {
        let pending = [a(UnitOp::DaemonReload, ""), a(UnitOp::Restart, "x.service")];
        let fresh = [
            a(UnitOp::Reload, "x.service"),
            a(UnitOp::Reload, "y.service"),
        ];
        assert_eq!(
            merge_actions(&pending, &fresh),
            vec![
                a(UnitOp::DaemonReload, ""),
                a(UnitOp::Reload, "y.service"),
                a(UnitOp::Restart, "x.service"),
            ]
        );
        assert_eq!(merge_actions(&[], &fresh), fresh.to_vec());
        // a pod user's daemon-reload is its own
        let pending = [
            a(UnitOp::DaemonReload, "pods/"),
            a(UnitOp::Start, "pods/w.service"),
        ];
        assert_eq!(
            merge_actions(&pending, &[a(UnitOp::DaemonReload, "")]),
            vec![
                a(UnitOp::DaemonReload, ""),
                a(UnitOp::DaemonReload, "pods/"),
                a(UnitOp::Start, "pods/w.service"),
            ]
        );
    }
}
