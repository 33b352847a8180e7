//! What runs of a machine's pods, against what its build wants: the remote
//! side of `lab ps` and `lab logs`, one command each.
//!
//! A desired pod is a `.kube` Quadlet file in the machine's tree: under
//! `/etc/containers/systemd/users/` it is the pod user's (its unit
//! `NAME.service` in that user's systemd), directly under
//! `/etc/containers/systemd/` root's. Its pod is named by the YAML's
//! `metadata.name` (the file's stem when that cannot be read).

use crate::error::SyncError;
use crate::transport::Transport;
use lab_agent::quote;
use lab_core::ScopedUnit;
use lab_manifest::Manifest;
use std::collections::BTreeMap;
use std::path::Path;

/// A pod the build puts on the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredPod {
    /// The pod's name (`metadata.name`).
    pub name: String,
    /// `None`: root's (rootful).
    pub user: Option<String>,
    /// `NAME.service`
    pub unit: String,
}

impl DesiredPod {
    /// `USER/UNIT` or `UNIT` (see [`ScopedUnit`]).
    pub fn scoped_unit(&self) -> String {
        ScopedUnit::name(self.user.as_deref(), &self.unit)
    }
}

const QUADLET: &str = "etc/containers/systemd/";
const USERS: &str = "etc/containers/systemd/users/";

/// The pods of a built tree (`out_dir` with its `manifest`).
pub fn desired(out_dir: &Path, manifest: &Manifest, pod_user: &str) -> Vec<DesiredPod> {
    let mut out = Vec::new();
    for path in manifest.entries.keys() {
        let (rest, user) = match path.strip_prefix(USERS) {
            Some(r) => (r, Some(pod_user.to_string())),
            None => match path.strip_prefix(QUADLET) {
                Some(r) if !r.starts_with("users/") => (r, None),
                _ => continue,
            },
        };
        let Some(stem) = rest.strip_suffix(".kube").filter(|s| !s.contains('/')) else {
            continue;
        };
        let kube = fs_err::read_to_string(out_dir.join(path)).unwrap_or_default();
        let yaml = kube
            .lines()
            .find_map(|l| l.trim().strip_prefix("Yaml="))
            .map(|y| y.trim().to_string())
            .unwrap_or_else(|| format!("{stem}.yaml"));
        let dir = Path::new(path).parent().unwrap_or(Path::new(""));
        let name = fs_err::read_to_string(out_dir.join(dir).join(&yaml))
            .ok()
            .and_then(|y| pod_name(&y))
            .unwrap_or_else(|| stem.to_string());
        out.push(DesiredPod {
            name,
            user,
            unit: format!("{stem}.service"),
        });
    }
    out
}

/// `metadata.name` of the first document of a pod YAML (line-based: the
/// build writes plain block YAML).
fn pod_name(yaml: &str) -> Option<String> {
    let mut in_meta = false;
    for line in yaml.lines() {
        if line.starts_with("metadata:") {
            in_meta = true;
            continue;
        }
        if in_meta {
            if !line.starts_with(' ') && !line.trim().is_empty() {
                return None;
            }
            let t = line.trim();
            let indent = line.len() - line.trim_start().len();
            if let Some(n) = t.strip_prefix("name:") {
                if indent <= 2 {
                    return Some(n.trim().trim_matches(['"', '\'']).to_string());
                }
            }
        }
    }
    None
}

/// One container of a pod, as podman sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerState {
    pub name: String,
    /// `running`, `exited`, ...
    pub state: String,
    pub restarts: u64,
    /// Unix time it started (0: never).
    pub started_at: i64,
    /// Resident memory of its processes, in bytes (its cgroup's
    /// `memory.current` where there is one).
    pub memory_bytes: u64,
}

/// A desired pod and what runs of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodStatus {
    pub name: String,
    pub user: Option<String>,
    pub unit: String,
    /// The unit's `ActiveState` and `SubState` (`unknown` when its manager
    /// could not be asked).
    pub active: String,
    pub sub: String,
    /// systemd's `NRestarts` of the unit.
    pub unit_restarts: u64,
    /// Containers of the pod (not its infra container).
    pub containers: Vec<ContainerState>,
    /// Host ports the pod publishes (`8080`, `8443/udp`).
    pub ports: Vec<String>,
    /// The tail of the unit's journal when it is not active.
    pub journal: Vec<String>,
    /// Why the pod's state could not be read (no such user, no linger).
    pub error: Option<String>,
}

impl PodStatus {
    /// `running`, `failed`, `stopped`, `starting`, ...: the pod's state in
    /// one word.
    pub fn state(&self) -> &str {
        match self.active.as_str() {
            "active"
                if !self.containers.is_empty()
                    && self.containers.iter().all(|c| c.state == "running") =>
            {
                "running"
            }
            "active" => "degraded",
            "failed" => "failed",
            "activating" | "reloading" => "starting",
            "deactivating" => "stopping",
            "inactive" => "stopped",
            _ => "unknown",
        }
    }

    pub fn failed(&self) -> bool {
        matches!(self.state(), "failed" | "degraded" | "unknown")
    }

    /// Restarts of its containers, and of its unit.
    pub fn restarts(&self) -> u64 {
        self.unit_restarts + self.containers.iter().map(|c| c.restarts).sum::<u64>()
    }

    /// Seconds since its oldest running container started, at `now`.
    pub fn uptime_s(&self, now: i64) -> Option<u64> {
        self.containers
            .iter()
            .filter(|c| c.state == "running" && c.started_at > 0)
            .map(|c| (now - c.started_at).max(0) as u64)
            .max()
    }

    pub fn memory_bytes(&self) -> u64 {
        self.containers.iter().map(|c| c.memory_bytes).sum()
    }
}

/// The shell functions both commands use: `pu USER` checks a pod user
/// (sets UID_ or prints why not), `pm USER ARGS` runs podman as USER (`-`:
/// root), `sc USER ARGS` systemctl of USER's manager.
fn prelude() -> String {
    format!(
        r#"pu() {{
  if ! UID_=$(id -u -- "$1" 2>/dev/null); then echo "the pod user $1 does not exist on this machine"; return 1; fi
  if [ ! -e "/var/lib/systemd/linger/$1" ]; then echo "the pod user $1 does not linger (hint: loginctl enable-linger $1)"; return 1; fi
}}
pm() {{
  u=$1; shift
  if [ "$u" = - ]; then podman "$@"; else {run_as}; fi
}}
sc() {{
  u=$1; shift
  if [ "$u" = - ]; then systemctl "$@"; else systemctl --user -M "$u@" "$@"; fi
}}
# uj USER UNIT N: the tail of a unit's journal (a user unit's lines of
# processes that exited before journald read their cgroup carry no unit:
# they are found by the user and the syslog identifier Quadlet gives them)
uj() {{
  if [ "$1" = - ]; then journalctl -u "$2" -n "$3" --no-pager -o short-iso 2>&1
  else i=$(id -u -- "$1"); journalctl -n "$3" --no-pager -o short-iso _UID="$i" _SYSTEMD_USER_UNIT="$2" + _UID="$i" USER_UNIT="$2" + _UID="$i" SYSLOG_IDENTIFIER="${{2%.service}}" 2>&1; fi
}}
"#,
        run_as = r#"(cd / && exec runuser -u "$u" -- env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$(getent passwd "$u" | cut -d: -f6)" XDG_RUNTIME_DIR="/run/user/$(id -u -- "$u")" podman "$@")"#
    )
}

/// The command of `lab ps` for `pods`; `lines`: journal lines of a pod
/// that is not active. Its output is read by [`parse_ps`].
pub fn ps_command(pods: &[DesiredPod], lines: usize) -> String {
    let mut s = prelude();
    s.push_str("echo \"now $(date +%s)\"\n");
    let mut users: Vec<Option<&str>> = pods.iter().map(|p| p.user.as_deref()).collect();
    users.sort();
    users.dedup();
    for u in users {
        let uq = quote(u.unwrap_or("-"));
        let units: Vec<String> = pods
            .iter()
            .filter(|p| p.user.as_deref() == u)
            .map(|p| quote(&p.unit))
            .collect();
        s.push_str(&format!(
            "echo \"user {u}\"\n\
             if [ {uq} != - ] && ! why=$(pu {uq}); then echo \"usererror $why\"; else\n\
             sc {uq} show -p Id -p ActiveState -p SubState -p NRestarts -- {units} 2>/dev/null | sed 's/^/show /'\n\
             echo containers; pm {uq} ps -a --pod --format json 2>/dev/null; echo endcontainers\n\
             pm {uq} ps -q --no-trunc 2>/dev/null | while read -r id; do\n\
               pid=$(pm {uq} inspect --format '{{{{.State.Pid}}}}' \"$id\" 2>/dev/null) || continue\n\
               [ \"${{pid:-0}}\" -gt 0 ] || continue\n\
               cg=$(sed -n 's/^0:://p' /proc/$pid/cgroup 2>/dev/null)\n\
               if [ -n \"$cg\" ] && [ -r \"/sys/fs/cgroup$cg/memory.current\" ]; then m=$(cat \"/sys/fs/cgroup$cg/memory.current\")\n\
               else m=0; for p in $(cat \"/sys/fs/cgroup$cg/cgroup.procs\" 2>/dev/null || echo $pid); do\n\
                 r=$(sed -n 's/^VmRSS:[[:space:]]*\\([0-9]*\\) kB/\\1/p' /proc/$p/status 2>/dev/null); m=$((m + ${{r:-0}} * 1024)); done; fi\n\
               echo \"mem $id $m\"\n\
             done\n\
             fi\n",
            u = u.unwrap_or("-"),
            units = units.join(" ")
        ));
    }
    for p in pods {
        s.push_str(&format!(
            "a=$(sc {u} show -p ActiveState --value -- {unit} 2>/dev/null)\n\
             case $a in active|\"\") ;; *) echo \"journal {scoped}\"; uj {u} {unit} {lines} | sed 's/^/| /'; echo \"endjournal\" ;; esac\n",
            u = quote(p.user.as_deref().unwrap_or("-")),
            unit = quote(&p.unit),
            scoped = p.scoped_unit(),
        ));
    }
    s
}

/// Read what [`ps_command`] printed: the status of each of `pods`, and the
/// machine's clock (for uptimes).
pub fn parse_ps(pods: &[DesiredPod], text: &str) -> (Vec<PodStatus>, i64) {
    let mut now = 0;
    let mut user = String::new();
    let mut user_error: BTreeMap<String, String> = BTreeMap::new();
    // (user, unit) -> (active, sub, nrestarts)
    let mut units: BTreeMap<(String, String), (String, String, u64)> = BTreeMap::new();
    let mut block: Vec<(String, String)> = Vec::new();
    let flush = |block: &mut Vec<(String, String)>,
                 user: &str,
                 units: &mut BTreeMap<(String, String), (String, String, u64)>| {
        let get = |k: &str| {
            block
                .iter()
                .find(|(bk, _)| bk == k)
                .map(|(_, v)| v.as_str())
        };
        if let Some(id) = get("Id") {
            units.insert(
                (user.to_string(), id.to_string()),
                (
                    get("ActiveState").unwrap_or("unknown").to_string(),
                    get("SubState").unwrap_or("unknown").to_string(),
                    get("NRestarts").and_then(|n| n.parse().ok()).unwrap_or(0),
                ),
            );
        }
        block.clear();
    };
    let mut containers: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    let mut mem: BTreeMap<String, u64> = BTreeMap::new();
    let mut journals: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut json_buf: Option<String> = None;
    let mut journal: Option<String> = None;
    // (a last line that is not `show` ends the last block)
    for line in text.lines().chain(std::iter::once("end")) {
        if let Some(j) = &journal {
            if line == "endjournal" {
                journal = None;
            } else {
                journals
                    .entry(j.clone())
                    .or_default()
                    .push(line.strip_prefix("| ").unwrap_or(line).to_string());
            }
            continue;
        }
        if let Some(buf) = &mut json_buf {
            if line == "endcontainers" {
                let v: Vec<serde_json::Value> = serde_json::from_str(buf).unwrap_or_default();
                containers.insert(user.clone(), v);
                json_buf = None;
            } else {
                buf.push_str(line);
                buf.push('\n');
            }
            continue;
        }
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        if word != "show" && !block.is_empty() {
            flush(&mut block, &user, &mut units);
        }
        match word {
            "now" => now = rest.trim().parse().unwrap_or(0),
            "user" => user = rest.to_string(),
            "usererror" => {
                user_error.insert(user.clone(), rest.to_string());
            }
            // `systemctl show` prints a unit's properties in its own order
            // (`NRestarts`, of the service, before `Id`), units apart by
            // a blank line: a block is read whole, then filed under its Id
            "show" if rest.is_empty() => flush(&mut block, &user, &mut units),
            "show" => {
                let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
                block.push((k.to_string(), v.to_string()));
            }
            "containers" => json_buf = Some(String::new()),
            "mem" => {
                if let Some((id, m)) = rest.split_once(' ') {
                    mem.insert(id.to_string(), m.trim().parse().unwrap_or(0));
                }
            }
            "journal" => journal = Some(rest.to_string()),
            _ => {}
        }
    }
    let out = pods
        .iter()
        .map(|p| {
            let u = p.user.clone().unwrap_or_else(|| "-".into());
            let (active, sub, unit_restarts) = units
                .get(&(u.clone(), p.unit.clone()))
                .cloned()
                .unwrap_or_else(|| ("unknown".into(), "unknown".into(), 0));
            let mut st = PodStatus {
                name: p.name.clone(),
                user: p.user.clone(),
                unit: p.unit.clone(),
                active,
                sub,
                unit_restarts,
                error: user_error.get(&u).cloned(),
                journal: journals.remove(&p.scoped_unit()).unwrap_or_default(),
                ..Default::default()
            };
            for c in containers.get(&u).into_iter().flatten() {
                if c["PodName"].as_str() != Some(p.name.as_str()) || c["IsInfra"] == true {
                    continue;
                }
                let id = c["Id"].as_str().unwrap_or_default();
                st.containers.push(ContainerState {
                    name: c["Names"][0].as_str().unwrap_or_default().to_string(),
                    state: c["State"].as_str().unwrap_or_default().to_string(),
                    restarts: c["Restarts"].as_u64().unwrap_or(0),
                    started_at: c["StartedAt"].as_i64().unwrap_or(0),
                    memory_bytes: mem.get(id).copied().unwrap_or(0),
                });
                for port in c["Ports"].as_array().into_iter().flatten() {
                    if let Some(hp) = port["host_port"].as_u64() {
                        let proto = port["protocol"].as_str().unwrap_or("tcp");
                        let range = port["range"].as_u64().unwrap_or(1);
                        let text = match (range > 1, proto) {
                            (false, "tcp") => hp.to_string(),
                            (false, p) => format!("{hp}/{p}"),
                            (true, p) => format!("{hp}-{}/{p}", hp + range - 1),
                        };
                        if !st.ports.contains(&text) {
                            st.ports.push(text);
                        }
                    }
                }
            }
            st.containers.sort_by(|a, b| a.name.cmp(&b.name));
            st
        })
        .collect();
    (out, now)
}

/// Run `lab ps`'s one command on a machine.
pub fn ps(
    transport: &mut dyn Transport,
    pods: &[DesiredPod],
    lines: usize,
) -> Result<(Vec<PodStatus>, i64), SyncError> {
    let out = transport.run(&ps_command(pods, lines), &mut |_| Ok(()))?;
    Ok(parse_ps(pods, &out.stdout_text()))
}

/// The command of `lab logs NAME`: the journal of a pod (its unit and its
/// containers), else of a container, else of a unit, on a machine whose
/// desired pods are `pods`. Exit 4 (with a line on stderr) when NAME is
/// none of them.
pub fn logs_command(
    name: &str,
    pods: &[DesiredPod],
    pod_user: &str,
    lines: usize,
    follow: bool,
) -> String {
    let mut s = prelude();
    let f = if follow { " -f" } else { "" };
    let q = quote(name);
    let pod = pods
        .iter()
        .find(|p| p.name == name || p.unit == name || p.unit == format!("{name}.service"));
    let users = [quote(pod_user), "-".to_string()];
    s.push_str(&format!("n={lines}\nm=\"\"\n"));
    match pod {
        Some(p) => {
            let u = quote(p.user.as_deref().unwrap_or("-"));
            s.push_str(&format!(
                "if [ {u} = - ]; then m=\"_SYSTEMD_UNIT={unit_raw} + UNIT={unit_raw}\"\n\
                 else uid=$(id -u -- {u}) || exit 4; m=\"_UID=$uid _SYSTEMD_USER_UNIT={unit_raw} + _UID=$uid USER_UNIT={unit_raw} + _UID=$uid SYSLOG_IDENTIFIER={ident_raw}\"; fi\n\
                 for c in $(pm {u} ps -a --filter pod={pod} --format '{{{{.Names}}}}' 2>/dev/null); do m=\"$m + CONTAINER_NAME=$c\"; done\n",
                unit_raw = p.unit.replace(['\'', '"', ' ', '$', '`', '\\'], "_"),
                ident_raw = p
                    .unit
                    .trim_end_matches(".service")
                    .replace(['\'', '"', ' ', '$', '`', '\\'], "_"),
                pod = quote(&p.name),
            ));
        }
        None => {
            s.push_str(&format!(
                "for u in {users}; do\n\
                   if [ \"$u\" != - ] && ! pu \"$u\" >/dev/null; then continue; fi\n\
                   if pm \"$u\" container exists {q} 2>/dev/null; then m=\"CONTAINER_NAME=\"{q}; break; fi\n\
                 done\n\
                 if [ -z \"$m\" ]; then\n\
                   unit={q}; case $unit in *.*) ;; *) unit=$unit.service ;; esac\n\
                   if [ \"$(systemctl show -p LoadState --value -- \"$unit\" 2>/dev/null)\" = loaded ]; then m=\"_SYSTEMD_UNIT=$unit + UNIT=$unit\"; fi\n\
                 fi\n",
                users = users.join(" "),
            ));
        }
    }
    s.push_str(&format!(
        "if [ -z \"$m\" ]; then echo \"no pod, container or unit named \"{q}\" on this machine\" >&2; exit 4; fi\n\
         exec journalctl --no-pager -o short-iso -n \"$n\"{f} $m\n"
    ));
    s
}

/// The exit status of [`logs_command`] when the name is unknown there.
pub const LOGS_UNKNOWN: i32 = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_names_from_yaml() {
        assert_eq!(
            pod_name("apiVersion: v1\nkind: Pod\nmetadata:\n  labels:\n    name: x\n  name: web\nspec:\n"),
            Some("web".into())
        );
        assert_eq!(pod_name("kind: Pod\nspec:\n  name: x\n"), None);
    }

    #[test]
    fn reads_a_ps_report() {
        // (systemctl's own order: the service's NRestarts before the
        // unit's Id, as a real node prints it)
        let pods = vec![
            DesiredPod {
                name: "web".into(),
                user: Some("pods".into()),
                unit: "web.service".into(),
            },
            DesiredPod {
                name: "lim".into(),
                user: Some("pods".into()),
                unit: "lim.service".into(),
            },
        ];
        let text = r#"now 1000
user pods
show NRestarts=5
show Id=lim.service
show ActiveState=failed
show SubState=failed
show 
show NRestarts=0
show Id=web.service
show ActiveState=active
show SubState=running
containers
[{"Id":"aa","Names":["web-httpd"],"PodName":"web","IsInfra":false,"State":"running","Restarts":1,"StartedAt":900,
  "Ports":[{"host_ip":"","container_port":8080,"host_port":8080,"range":1,"protocol":"tcp"}]},
 {"Id":"bb","Names":["web-infra"],"PodName":"web","IsInfra":true,"State":"running"}]
endcontainers
mem aa 4096
"#;
        let (st, now) = parse_ps(&pods, text);
        assert_eq!(now, 1000);
        assert_eq!(st[0].state(), "running");
        assert_eq!(st[0].containers.len(), 1);
        assert_eq!(st[0].ports, ["8080"]);
        assert_eq!(st[0].memory_bytes(), 4096);
        assert_eq!(st[0].uptime_s(now), Some(100));
        assert_eq!(st[0].restarts(), 1);
        assert_eq!(st[1].state(), "failed");
        assert_eq!(st[1].restarts(), 5);
    }
}
