//! What a pod's `resources.limits` become on the node.
//!
//! The limits stay in the pod's YAML: `podman kube play` puts each
//! container in a cgroup of its own (`libpod-ID.scope`, below the pod's
//! `*-libpod_pod_ID.slice`, not below the pod's unit) and sets its
//! `memory.max` and `cpu.max` there, as Kubernetes does per container. The
//! unit gets no `MemoryMax=`/`CPUQuota=`: its cgroup holds `podman kube
//! play` itself (about 50 MB at its peak), conmon and rootlessport, not
//! the containers, so a cap there limits podman instead of the pod.
//!
//! To set those limits, crun needs the memory and cpu controllers in the
//! containers' cgroups. A node can lack them: its cgroup v2 root may offer
//! none (some containers and VPSes, and lab's own nspawn test hosts on a
//! cgroup v1 machine), or the pod user's systemd may not be given them
//! (`Delegate=` of `user@.service`). Then crun fails with `opening file
//! memory.max for writing: No such file or directory` and the pod never
//! runs. So a pod with limits checks, before podman starts, that the
//! controllers it needs are there, and otherwise fails its unit with a
//! message saying which controller is missing where and what to do; `lab
//! sync` and `lab ps` show it in the unit's journal.

use crate::pod::Pod;

/// The check, in POSIX sh. Arguments: the cgroup mount, the unit's own
/// `/proc/PID/cgroup`, the pod's name, `rootless` or `rootful`, then the
/// controllers the limits need. Rootless containers run below the pod
/// user's `user@UID.service` cgroup, rootful ones below the root's
/// `machine.slice`: the controllers must be offered there. No `'` and no
/// `\` in it: it is one single-quoted word of a unit's command line.
const CHECK: &str = r#"r=$1 f=$2 pod=$3 mode=$4; shift 4;
miss= lacks= root= have= at=$r p=;
if [ -f "$r/cgroup.controllers" ]; then
 read -r root < "$r/cgroup.controllers" || :;
 have=$root;
 if [ "$mode" = rootless ]; then
  while read -r l; do case $l in 0::*) p=${l#0::};; esac; done < "$f";
  case $p in */user@*.service/*) at=$r${p%%.service/*}.service; have=; read -r have < "$at/cgroup.controllers" || :;; esac;
 fi;
 for c; do case " $have " in *" $c "*) ;; *) miss="$miss $c";; esac; done;
elif [ "$mode" = rootful ]; then
 for c; do [ -d "$r/$c" ] || miss="$miss $c"; done;
else
 echo "lab: pod $pod has resources.limits, but this node runs cgroup v1, where rootless podman ignores limits: boot it with the unified cgroup hierarchy, make the pod rootful, or remove the limits" >&2;
 exit 1;
fi;
[ -z "$miss" ] && exit 0;
echo "lab: pod $pod has resources.limits, which need the$miss cgroup controller where its containers run; $at/cgroup.controllers offers: ${have:-none}" >&2;
for c in $miss; do case " $root " in *" $c "*) ;; *) lacks="$lacks $c";; esac; done;
if [ -n "$lacks" ]; then
 echo "lab: this node offers no$lacks controller at all (a container or VPS without cgroup v2 controllers cannot limit pods): remove resources.limits" >&2;
else
 echo "lab: the pod user systemd is not given them: a drop-in /etc/systemd/system/user@.service.d/delegate.conf saying [Service] Delegate=cpu memory pids, then a restart of ${at##*/}, does that (or remove resources.limits)" >&2;
fi;
exit 1"#;

/// The cgroup controllers `pod`'s limits need, in the order the check
/// names them.
fn needed(pod: &Pod) -> Vec<&'static str> {
    let mut c = Vec::new();
    if pod.containers.iter().any(|c| c.memory.is_some()) {
        c.push("memory");
    }
    if pod.containers.iter().any(|c| c.cpu.is_some()) {
        c.push("cpu");
    }
    c
}

/// `text` as systemd reads it back from a command line: `$` and `%` (its
/// variables and specifiers) doubled.
fn unit_escape(text: &str) -> String {
    text.replace('$', "$$").replace('%', "%%")
}

/// The `ExecStartPre=` value that checks the node can apply `pod`'s
/// limits, or `None` when the pod has none.
pub(crate) fn exec_start_pre(pod: &Pod) -> Option<String> {
    let controllers = needed(pod);
    if controllers.is_empty() {
        return None;
    }
    let script: Vec<&str> = CHECK.lines().map(str::trim_start).collect();
    Some(format!(
        "/bin/sh -c '{}' lab-limits /sys/fs/cgroup /proc/self/cgroup {} {} {}",
        unit_escape(&script.join(" ")),
        pod.name,
        if pod.rootful { "rootful" } else { "rootless" },
        controllers.join(" ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_is_one_single_quoted_word() {
        assert!(!CHECK.contains('\''));
        assert!(!CHECK.contains('\\'));
        assert!(!CHECK.contains('`'));
    }
}
