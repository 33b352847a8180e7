//! The text a validated pod becomes: its Quadlet `.kube` unit, its
//! normalised YAML, the nftables rules for its host ports, and the
//! warnings about it.

use crate::pod::{Pod, SecurityValue, Volume};
use crate::{HostPort, PodError, Protocol, INIT_ANNOTATION, ROOTFUL_ANNOTATION};
use lab_core::Located;
use std::fmt::Write;
use std::path::Path;

/// The Quadlet `.kube` unit of `pod`, run by `pod_user`'s systemd (or the
/// system manager when the pod is rootful).
pub(crate) fn kube(pod: &Pod, pod_user: &str) -> String {
    let mut s = String::new();
    s.push_str("# Made by lab from a pod file; edits here are replaced by the next sync.\n");
    s.push_str("[Unit]\n");
    let _ = writeln!(s, "Description=Pod {}", pod.name);
    if !pod.rootful {
        // Quadlet makes units of `users/` for every non-root user's
        // manager: only the pod user's may run it.
        let _ = writeln!(s, "ConditionUser={pod_user}");
    }
    s.push_str("\n[Kube]\n");
    let _ = writeln!(s, "Yaml={}.yaml", pod.name);
    s.push_str("LogDriver=journald\n");
    // a failed container fails the unit, so systemd's Restart= sees it
    s.push_str("ExitCodePropagation=any\n");
    if !pod.host_network {
        for c in &pod.containers {
            for p in &c.ports {
                if let Some(h) = p.host_port {
                    let ip = match p.host_ip {
                        Some(std::net::IpAddr::V4(a)) => format!("{a}:"),
                        Some(std::net::IpAddr::V6(a)) => format!("[{a}]:"),
                        None => String::new(),
                    };
                    let _ = writeln!(
                        s,
                        "PublishPort={ip}{h}:{}/{}",
                        p.container_port,
                        p.protocol.lower()
                    );
                }
            }
        }
    }
    s.push_str("\n[Service]\n");
    let _ = writeln!(s, "Restart={}", pod.restart.systemd());
    // resources.limits stay in the YAML: podman sets them on each
    // container's own cgroup; the unit only checks the node can (see
    // limits.rs)
    if let Some(check) = crate::limits::exec_start_pre(pod) {
        let _ = writeln!(s, "ExecStartPre={check}");
    }
    s.push_str("\n[Install]\n");
    let _ = writeln!(
        s,
        "WantedBy={}",
        if pod.rootful {
            "multi-user.target"
        } else {
            "default.target"
        }
    );
    s
}

/// A string as a YAML double-quoted scalar (JSON's escaping is YAML's).
fn q(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            '\r' => o.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn string_map(s: &mut String, indent: &str, key: &str, map: &[(String, String)]) {
    if map.is_empty() {
        return;
    }
    let _ = writeln!(s, "{indent}{key}:");
    for (k, v) in map {
        let _ = writeln!(s, "{indent}  {}: {}", q(k), q(v));
    }
}

fn list(s: &mut String, indent: &str, key: &str, items: &[String]) {
    if items.is_empty() {
        let _ = writeln!(s, "{indent}{key}: []");
        return;
    }
    let _ = writeln!(s, "{indent}{key}:");
    for i in items {
        let _ = writeln!(s, "{indent}- {}", q(i));
    }
}

/// The pod as lab validated it, in one stable form: fixed key order, every
/// string quoted, images resolved to local names, `imagePullPolicy: Never`.
pub(crate) fn yaml(pod: &Pod) -> String {
    let mut s = String::new();
    s.push_str("# Made by lab from a pod file; edits here are replaced by the next sync.\n");
    s.push_str("apiVersion: v1\nkind: Pod\nmetadata:\n");
    let _ = writeln!(s, "  name: {}", q(&pod.name));
    string_map(&mut s, "  ", "labels", &pod.labels);
    string_map(&mut s, "  ", "annotations", &pod.annotations);
    s.push_str("spec:\n");
    let _ = writeln!(s, "  restartPolicy: {}", pod.restart.kube_name());
    if pod.host_network {
        s.push_str("  hostNetwork: true\n");
    }
    s.push_str("  containers:\n");
    for c in &pod.containers {
        let _ = writeln!(s, "  - name: {}", q(&c.name));
        let i = "    ";
        let _ = writeln!(s, "{i}image: {}", q(&c.image));
        let _ = writeln!(s, "{i}imagePullPolicy: Never");
        if let Some(cmd) = &c.command {
            list(&mut s, i, "command", cmd);
        }
        if let Some(args) = &c.args {
            list(&mut s, i, "args", args);
        }
        if let Some(w) = &c.working_dir {
            let _ = writeln!(s, "{i}workingDir: {}", q(w));
        }
        if !c.env.is_empty() {
            let _ = writeln!(s, "{i}env:");
            for (k, v) in &c.env {
                let _ = writeln!(s, "{i}- name: {}", q(k));
                let _ = writeln!(s, "{i}  value: {}", q(v));
            }
        }
        if !c.ports.is_empty() {
            let _ = writeln!(s, "{i}ports:");
            for p in &c.ports {
                let _ = writeln!(s, "{i}- containerPort: {}", p.container_port);
                if let Some(h) = p.host_port {
                    let _ = writeln!(s, "{i}  hostPort: {h}");
                }
                if let Some(ip) = p.host_ip {
                    let _ = writeln!(s, "{i}  hostIP: {}", q(&ip.to_string()));
                }
                let _ = writeln!(s, "{i}  protocol: {}", p.protocol.kube_name());
                if let Some(n) = &p.name {
                    let _ = writeln!(s, "{i}  name: {}", q(n));
                }
            }
        }
        if c.memory.is_some() || c.cpu.is_some() {
            let _ = writeln!(s, "{i}resources:\n{i}  limits:");
            if let Some((m, _)) = &c.memory {
                let _ = writeln!(s, "{i}    memory: {}", q(m));
            }
            if let Some((m, _)) = &c.cpu {
                let _ = writeln!(s, "{i}    cpu: {}", q(m));
            }
        }
        if !c.volume_mounts.is_empty() {
            let _ = writeln!(s, "{i}volumeMounts:");
            for v in &c.volume_mounts {
                let _ = writeln!(s, "{i}- name: {}", q(&v.name));
                let _ = writeln!(s, "{i}  mountPath: {}", q(&v.mount_path));
                if v.read_only {
                    let _ = writeln!(s, "{i}  readOnly: true");
                }
            }
        }
        if !c.security.is_empty() {
            let _ = writeln!(s, "{i}securityContext:");
            for (k, v) in &c.security {
                match v {
                    SecurityValue::Bool(b) => {
                        let _ = writeln!(s, "{i}  {k}: {b}");
                    }
                    SecurityValue::Int(n) => {
                        let _ = writeln!(s, "{i}  {k}: {n}");
                    }
                    SecurityValue::Capabilities { add, drop } => {
                        let _ = writeln!(s, "{i}  {k}:");
                        list(&mut s, &format!("{i}    "), "add", add);
                        list(&mut s, &format!("{i}    "), "drop", drop);
                    }
                }
            }
        }
    }
    if !pod.volumes.is_empty() {
        s.push_str("  volumes:\n");
        for v in &pod.volumes {
            let _ = writeln!(s, "  - name: {}", q(v.name()));
            match v {
                Volume::HostPath { path, kind, .. } => {
                    s.push_str("    hostPath:\n");
                    let _ = writeln!(s, "      path: {}", q(path));
                    if let Some(k) = kind {
                        let _ = writeln!(s, "      type: {}", q(k));
                    }
                }
                Volume::EmptyDir { medium: None, .. } => s.push_str("    emptyDir: {}\n"),
                Volume::EmptyDir {
                    medium: Some(m), ..
                } => {
                    let _ = writeln!(s, "    emptyDir:\n      medium: {}", q(m));
                }
            }
        }
    }
    s
}

/// Programs that are an init: they reap children and stop on SIGTERM.
const INITS: &[&str] = &[
    "tini",
    "tini-static",
    "dumb-init",
    "catatonit",
    "s6-svscan",
    "init",
    "systemd",
    "runsvdir",
];

/// What the user should know about `pod` (from file `path`).
pub(crate) fn warnings(path: &Path, pod: &Pod) -> Vec<String> {
    let mut w = Vec::new();
    let shown = path.display();
    for c in &pod.containers {
        if pod.has_init(&c.name) {
            continue;
        }
        let first = c.command.as_ref().and_then(|v| v.first());
        let prog = first.map(|p| p.rsplit('/').next().unwrap_or(p));
        if prog.is_some_and(|p| INITS.contains(&p)) {
            continue;
        }
        let what = match first {
            Some(p) => format!("runs `{p}` as PID 1"),
            None => "runs its image's entrypoint as PID 1".to_string(),
        };
        w.push(format!(
            "`{shown}`: container `{}` {what} with no init: a PID 1 that ignores SIGTERM makes \
             every restart of pod `{}` wait 10 s to be killed (0.4 s with an init); add the \
             annotation `{INIT_ANNOTATION}{}: \"true\"` to the pod's metadata",
            c.name, pod.name, c.name
        ));
    }
    if !pod.rootful {
        for hp in pod.host_ports() {
            if hp.port < 1024 {
                w.push(format!(
                    "`{shown}`: rootless pod `{}` publishes port {}/{}: a user may bind ports \
                     below 1024 only when the machine's `net.ipv4.ip_unprivileged_port_start` \
                     allows it (or make the pod rootful: `{ROOTFUL_ANNOTATION}: \"true\"`)",
                    pod.name,
                    hp.port,
                    hp.protocol.lower()
                ));
            }
        }
    }
    w
}

/// See [`crate::firewall`].
pub(crate) fn firewall(pods: &[(&Path, &Pod)]) -> Result<Option<String>, PodError> {
    let mut all: Vec<(HostPort, &Path, &str)> = Vec::new();
    for (path, pod) in pods {
        for hp in pod.host_ports() {
            if let Some((_, other, name)) = all.iter().find(|(h, _, _)| *h == hp) {
                return Err(PodError {
                    at: Located::file(path),
                    message: format!(
                        "pods `{name}` (`{}`) and `{}` both publish port {}/{}",
                        other.display(),
                        pod.name,
                        hp.port,
                        hp.protocol.lower()
                    ),
                    hint: Some("give one of them another `hostPort`".into()),
                });
            }
            all.push((hp, path, &pod.name));
        }
    }
    if all.is_empty() {
        return Ok(None);
    }
    let mut s = String::new();
    s.push_str(
        "# Made by lab: the host ports this machine's pods publish, and no others.\n\
         # Include it inside the input chain of the machine's nftables ruleset:\n\
         #   include \"/etc/nftables.d/*.nft\"\n",
    );
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let mut ports: Vec<u16> = all
            .iter()
            .filter(|(h, _, _)| h.protocol == proto)
            .map(|(h, _, _)| h.port)
            .collect();
        if ports.is_empty() {
            continue;
        }
        ports.sort_unstable();
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        let _ = writeln!(
            s,
            "{} dport {{ {} }} accept",
            proto.lower(),
            list.join(", ")
        );
    }
    Ok(Some(s))
}
