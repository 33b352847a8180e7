//! The pod format: parsing with positions and the strict allow-list.
//!
//! Every field lab accepts is one that lab or `podman kube play` acts on;
//! any other is an error at its key, so a pod never silently does less
//! than its file says (podman ignores many Kubernetes fields: podman#18332).

use crate::pod::{
    Container, HostPort, Pod, Port, Protocol, Restart, SecurityValue, Volume, VolumeMount,
};
use crate::reader::{load_error, Reader, R};
use crate::{Context, INIT_ANNOTATION, ROOTFUL_ANNOTATION};
use lab_core::Located;
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::Node;
use std::path::Path;

const CONTAINER_FIELDS: &[&str] = &[
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "env",
    "ports",
    "resources",
    "volumeMounts",
    "workingDir",
    "securityContext",
];
const POD_SPEC_FIELDS: &[&str] = &["containers", "restartPolicy", "volumes", "hostNetwork"];
const METADATA_FIELDS: &[&str] = &["name", "labels", "annotations"];
const SECURITY_FIELDS: &[&str] = &[
    "runAsUser",
    "runAsGroup",
    "readOnlyRootFilesystem",
    "privileged",
    "allowPrivilegeEscalation",
    "capabilities",
];

/// Why lab refuses a field that Kubernetes has, when there is more to say
/// than "not supported".
pub(crate) fn refused_hint(key: &str) -> Option<String> {
    let ignored = |what: &str| {
        format!(
            "podman kube play ignores {what} (podman#18332); lab refuses it so the pod does what \
             the file says"
        )
    };
    Some(match key {
        "readinessProbe" | "startupProbe" | "dnsPolicy" | "dnsConfig" | "priorityClassName"
        | "serviceAccountName" | "nodeSelector" | "affinity" | "tolerations" => {
            ignored(&format!("`{key}`"))
        }
        "lifecycle" => ignored("lifecycle hooks (`lifecycle`)"),
        "livenessProbe" => {
            "lab does not support `livenessProbe` yet; systemd restarts the pod when it exits (see \
             `restartPolicy`)"
                .into()
        }
        "imagePullSecrets" => "lab never pulls from a registry: it ships the images of `images/` \
                               in the project, or uses `localhost/` images already on the machine"
            .into(),
        "envFrom" | "configMap" => {
            "put the values in the pod's `env`, or the file in a layer and mount it with a \
             `hostPath` volume"
                .into()
        }
        "requests" => "lab applies `limits` only (as each container's cgroup limits)".into(),
        "strategy" => "lab replaces the pod whenever its file or image changes".into(),
        "namespace" => {
            "a pod runs on the machines whose layers hold it; there are no namespaces".into()
        }
        _ => return None,
    })
}

/// Parse and validate the pod of file `path` (content `text`), which must
/// be named `name`.
pub(crate) fn parse(path: &Path, name: &str, text: &str, ctx: &Context) -> R<Pod> {
    let r = Reader { path, text, ctx };
    if text.trim().is_empty() {
        return Err(r.err(
            Located::file(path),
            "the pod file is empty",
            Some("a pod file holds one `kind: Pod` (or `kind: Deployment`)".into()),
        ));
    }
    // one document: a second one (`---` after content) would be ignored
    let mut content = false;
    for (i, line) in text.lines().enumerate() {
        let marker = line.starts_with("---") || line.starts_with("...");
        let rest = line.get(3..).unwrap_or("");
        if marker && (rest.is_empty() || rest.starts_with([' ', '\t', '\r'])) {
            if content {
                return Err(r.err(
                    Located::from_line(path, text, i + 1, Some(&line[..3])),
                    "a pod file holds one YAML document",
                    Some("put each pod in its own file: `pods/NAME.yaml`".into()),
                ));
            }
            continue;
        }
        let t = line.trim();
        if !t.is_empty() && !t.starts_with('#') && !line.starts_with('%') {
            content = true;
        }
    }
    let opts = marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true);
    let root = marked_yaml::parse_yaml_with_options(0, text, opts)
        .map_err(|e| load_error(path, text, &e))?;
    let top = r.mapping(&root, "a pod file")?;
    let top_at = r.located(root.span(), 1);
    let kind_node = r.required(top, "kind", "the pod file", &top_at)?;
    let kind = r.string(kind_node, "`kind`")?;
    match kind.as_str() {
        "Pod" => {
            r.only(top, &["apiVersion", "kind", "metadata", "spec"], "a Pod")?;
            api_version(&r, top, "v1", &top_at)?;
            let meta = r.mapping(
                r.required(top, "metadata", "the Pod", &top_at)?,
                "`metadata`",
            )?;
            let spec = r.required(top, "spec", "the Pod", &top_at)?;
            pod(&r, name, meta, None, spec)
        }
        "Deployment" => {
            r.only(
                top,
                &["apiVersion", "kind", "metadata", "spec"],
                "a Deployment",
            )?;
            api_version(&r, top, "apps/v1", &top_at)?;
            let meta = r.mapping(
                r.required(top, "metadata", "the Deployment", &top_at)?,
                "`metadata`",
            )?;
            let spec_node = r.required(top, "spec", "the Deployment", &top_at)?;
            let spec = r.mapping(spec_node, "`spec`")?;
            let spec_at = r.located(spec_node.span(), 1);
            r.only(
                spec,
                &["replicas", "selector", "template"],
                "a Deployment's spec",
            )?;
            if let Some((_, n)) = r.key(spec, "replicas") {
                let s = r.string(n, "`replicas`")?;
                if s.as_str() != "1" {
                    return Err(r.err(
                        r.at_scalar(s),
                        format!("a Deployment must have `replicas: 1`, not `{}`", s.as_str()),
                        Some("lab runs one pod per file on each machine; to run more, give each machine its own pod".into()),
                    ));
                }
            }
            let tpl_node = r.required(spec, "template", "the Deployment's spec", &spec_at)?;
            let tpl = r.mapping(tpl_node, "`template`")?;
            let tpl_at = r.located(tpl_node.span(), 1);
            r.only(tpl, &["metadata", "spec"], "a Deployment's template")?;
            let tmeta = match r.key(tpl, "metadata") {
                Some((_, n)) => {
                    let m = r.mapping(n, "`metadata`")?;
                    r.only(m, &["labels", "annotations"], "a template's metadata")?;
                    Some(m)
                }
                None => None,
            };
            if let Some((_, sel)) = r.key(spec, "selector") {
                let sel = r.mapping(sel, "`selector`")?;
                r.only(sel, &["matchLabels"], "a selector")?;
                if let Some((_, ml)) = r.key(sel, "matchLabels") {
                    r.string_map(ml, "`matchLabels`")?;
                    let wanted = r.mapping(ml, "`matchLabels`")?;
                    let has = match tmeta.and_then(|m| r.key(m, "labels")) {
                        Some((_, l)) => r.string_map(l, "`labels`")?,
                        None => Vec::new(),
                    };
                    for (k, v) in wanted.iter() {
                        let v = r.string(v, "a label")?.as_str();
                        if !has.iter().any(|(hk, hv)| hk == k.as_str() && hv == v) {
                            return Err(r.err(
                                r.at_scalar(k),
                                format!(
                                    "the Deployment selects `{}: {v}`, which its template's labels do not have",
                                    k.as_str()
                                ),
                                Some("give the template's `metadata.labels` the labels the selector names".into()),
                            ));
                        }
                    }
                }
            }
            let pspec = r.required(tpl, "spec", "the Deployment's template", &tpl_at)?;
            pod(&r, name, meta, tmeta, pspec)
        }
        other => Err(r.err(
            r.at_scalar(kind),
            format!("`kind: {other}` is not a pod"),
            Some("a pod file holds one `kind: Pod` or `kind: Deployment`".into()),
        )),
    }
}

fn api_version(r: &Reader, top: &MarkedMappingNode, want: &str, top_at: &Located) -> R<()> {
    let v = r.string(
        r.required(top, "apiVersion", "the pod file", top_at)?,
        "`apiVersion`",
    )?;
    if v.as_str() != want {
        return Err(r.err(
            r.at_scalar(v),
            format!("`apiVersion: {}` does not go with this kind", v.as_str()),
            Some(format!("use `apiVersion: {want}`")),
        ));
    }
    Ok(())
}

fn pod(
    r: &Reader,
    file_name: &str,
    meta: &MarkedMappingNode,
    tmeta: Option<&MarkedMappingNode>,
    spec_node: &Node,
) -> R<Pod> {
    r.only(meta, METADATA_FIELDS, "metadata")?;
    let meta_at = r.located(meta.span(), 1);
    let name_node = r.string(
        r.required(meta, "name", "`metadata`", &meta_at)?,
        "`metadata.name`",
    )?;
    let name = r.dns_label(name_node, "the pod name")?;
    if name != file_name {
        return Err(r.err(
            r.at_scalar(name_node),
            format!("the pod is named `{name}` but its file is `{file_name}.yaml`"),
            Some(format!(
                "lab names the pod and its unit after the file (`{file_name}.service`): rename one \
                 so they agree"
            )),
        ));
    }
    // `podman kube play --replace` reads an all-hex name as a pod ID prefix
    // and replaced another pod on a node
    if name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(r.err(
            r.at_scalar(name_node),
            format!("the pod name `{name}` is made only of hex digits"),
            Some(format!(
                "podman takes `{name}` for a pod ID prefix and would replace another pod: add a \
                 letter after `f` or a `-` (`{name}-pod`), to the file name too"
            )),
        ));
    }
    let mut labels = Vec::new();
    let mut annotations: Vec<(String, String)> = Vec::new();
    let mut ann_nodes: Vec<(&MarkedScalarNode, &Node)> = Vec::new();
    for m in std::iter::once(meta).chain(tmeta) {
        if let Some((_, n)) = r.key(m, "labels") {
            for (k, v) in r.string_map(n, "`labels`")? {
                labels.retain(|(k2, _)| *k2 != k);
                labels.push((k, v));
            }
        }
        if let Some((_, n)) = r.key(m, "annotations") {
            let am = r.mapping(n, "`annotations`")?;
            for (k, v) in am.iter() {
                ann_nodes.push((k, v));
            }
            for (k, v) in r.string_map(n, "`annotations`")? {
                annotations.retain(|(k2, _)| *k2 != k);
                annotations.push((k, v));
            }
        }
    }
    let mut rootful = false;
    for (k, v) in &ann_nodes {
        if k.as_str() == ROOTFUL_ANNOTATION {
            rootful = r.boolean(v, &format!("`{ROOTFUL_ANNOTATION}`"))?;
        } else if k.as_str().starts_with("lab.dev/") {
            return Err(r.err(
                r.at_scalar(k),
                format!("unknown lab annotation `{}`", k.as_str()),
                Some(format!("lab understands `{ROOTFUL_ANNOTATION}`")),
            ));
        }
    }
    let spec = r.mapping(spec_node, "`spec`")?;
    let spec_at = r.located(spec_node.span(), 1);
    r.only(spec, POD_SPEC_FIELDS, "a pod spec")?;
    let restart = match r.key(spec, "restartPolicy") {
        None => Restart::Always,
        Some((_, n)) => {
            let s = r.string(n, "`restartPolicy`")?;
            match s.as_str() {
                "Always" => Restart::Always,
                "OnFailure" => Restart::OnFailure,
                "Never" => Restart::Never,
                other => {
                    return Err(r.err(
                        r.at_scalar(s),
                        format!("`restartPolicy: {other}` is not a restart policy"),
                        Some("use `Always`, `OnFailure` or `Never`".into()),
                    ))
                }
            }
        }
    };
    let host_network = match r.key(spec, "hostNetwork") {
        Some((_, n)) => r.boolean(n, "`hostNetwork`")?,
        None => false,
    };
    let mut volumes: Vec<Volume> = Vec::new();
    if let Some((_, n)) = r.key(spec, "volumes") {
        for v in r.sequence(n, "`volumes`")?.iter() {
            let vol = volume(r, v)?;
            if volumes.iter().any(|o| o.name() == vol.name()) {
                return Err(r.err(
                    r.at_node(v),
                    format!("two volumes are named `{}`", vol.name()),
                    None,
                ));
            }
            volumes.push(vol);
        }
    }
    let cs_node = r.required(spec, "containers", "the pod spec", &spec_at)?;
    let cs = r.sequence(cs_node, "`containers`")?;
    if cs.is_empty() {
        return Err(r.err(
            r.at_node(cs_node),
            "a pod needs at least one container",
            None,
        ));
    }
    let mut containers: Vec<Container> = Vec::new();
    let mut seen_ports: Vec<HostPort> = Vec::new();
    for c in cs.iter() {
        let c = container(r, c, &volumes, host_network, &mut seen_ports)?;
        if containers.iter().any(|o| o.name == c.name) {
            return Err(r.err(
                r.at_node(cs_node),
                format!("two containers are named `{}`", c.name),
                None,
            ));
        }
        containers.push(c);
    }
    // an init annotation must name a container of the pod
    for (k, _) in &ann_nodes {
        if let Some(c) = k.as_str().strip_prefix(INIT_ANNOTATION) {
            if !containers.iter().any(|x| x.name == c) {
                return Err(r.err(
                    r.at_scalar(k),
                    format!("`{}` names no container of the pod", k.as_str()),
                    None,
                ));
            }
        }
    }
    Ok(Pod {
        name,
        labels,
        annotations,
        rootful,
        restart,
        host_network,
        containers,
        volumes,
    })
}

fn volume(r: &Reader, n: &Node) -> R<Volume> {
    let m = r.mapping(n, "a volume")?;
    let at = r.located(n.span(), 1);
    r.only(m, &["name", "hostPath", "emptyDir"], "a volume")?;
    let name = r.dns_label(
        r.string(r.required(m, "name", "a volume", &at)?, "a volume's `name`")?,
        "the volume name",
    )?;
    match (r.key(m, "hostPath"), r.key(m, "emptyDir")) {
        (Some((_, hp)), None) => {
            let hpm = r.mapping(hp, "`hostPath`")?;
            r.only(hpm, &["path", "type"], "a hostPath")?;
            let hp_at = r.located(hp.span(), 1);
            let p = r.string(r.required(hpm, "path", "`hostPath`", &hp_at)?, "`path`")?;
            if !p.as_str().starts_with('/') {
                return Err(r.err(
                    r.at_scalar(p),
                    format!("`hostPath.path` must be absolute, not `{}`", p.as_str()),
                    Some("podman takes a path without `/` as the name of a podman volume; lab supports host paths only".into()),
                ));
            }
            let kind = match r.key(hpm, "type") {
                Some((_, t)) => {
                    let t = r.string(t, "`type`")?;
                    const KINDS: &[&str] = &[
                        "",
                        "DirectoryOrCreate",
                        "Directory",
                        "FileOrCreate",
                        "File",
                        "Socket",
                        "CharDevice",
                        "BlockDevice",
                    ];
                    if !KINDS.contains(&t.as_str()) {
                        return Err(r.err(
                            r.at_scalar(t),
                            format!("`type: {}` is not a hostPath type podman supports", t.as_str()),
                            Some("use `Directory`, `DirectoryOrCreate`, `File`, `FileOrCreate`, `Socket`, `CharDevice` or `BlockDevice`".into()),
                        ));
                    }
                    Some(t.as_str().to_string())
                }
                None => None,
            };
            Ok(Volume::HostPath {
                name,
                path: p.as_str().to_string(),
                kind,
            })
        }
        (None, Some((_, ed))) => {
            let medium = match ed {
                Node::Scalar(s) if s.as_str().is_empty() || s.as_str() == "{}" => None,
                other => {
                    let edm = r.mapping(other, "`emptyDir`")?;
                    r.only(edm, &["medium"], "an emptyDir")?;
                    match r.key(edm, "medium") {
                        Some((_, md)) => {
                            let md = r.string(md, "`medium`")?;
                            if !["", "Memory"].contains(&md.as_str()) {
                                return Err(r.err(
                                    r.at_scalar(md),
                                    format!("`medium: {}` is not supported", md.as_str()),
                                    Some("use `Memory` (a tmpfs) or leave it out".into()),
                                ));
                            }
                            Some(md.as_str().to_string())
                        }
                        None => None,
                    }
                }
            };
            Ok(Volume::EmptyDir { name, medium })
        }
        _ => Err(r.err(
            at,
            format!("volume `{name}` must have exactly one of `hostPath` or `emptyDir`"),
            Some("podman's configMap, secret and persistentVolumeClaim volumes are not supported: put files in a layer and mount them with `hostPath`".into()),
        )),
    }
}

fn container(
    r: &Reader,
    n: &Node,
    volumes: &[Volume],
    host_network: bool,
    seen_ports: &mut Vec<HostPort>,
) -> R<Container> {
    let m = r.mapping(n, "a container")?;
    let at = r.located(n.span(), 1);
    r.only(m, CONTAINER_FIELDS, "a container")?;
    let name = r.dns_label(
        r.string(
            r.required(m, "name", "a container", &at)?,
            "a container's `name`",
        )?,
        "the container name",
    )?;
    if let Some((_, p)) = r.key(m, "imagePullPolicy") {
        let p = r.string(p, "`imagePullPolicy`")?;
        if p.as_str() != "Never" {
            return Err(r.err(
                r.at_scalar(p),
                format!(
                    "`imagePullPolicy: {}` would pull from a registry",
                    p.as_str()
                ),
                Some("lab never pulls images: use `imagePullPolicy: Never` or leave it out".into()),
            ));
        }
    }
    let image_node = r.string(
        r.required(m, "image", &format!("container `{name}`"), &at)?,
        "`image`",
    )?;
    let image = image(r, image_node)?;
    let command = match r.key(m, "command") {
        Some((_, n)) => Some(r.strings(n, "`command`")?),
        None => None,
    };
    let args = match r.key(m, "args") {
        Some((_, n)) => Some(r.strings(n, "`args`")?),
        None => None,
    };
    let mut env: Vec<(String, String)> = Vec::new();
    if let Some((_, n)) = r.key(m, "env") {
        for e in r.sequence(n, "`env`")?.iter() {
            let em = r.mapping(e, "an `env` item")?;
            r.only(em, &["name", "value"], "an env item")?;
            let e_at = r.located(e.span(), 1);
            let k = r.string(r.required(em, "name", "an `env` item", &e_at)?, "`name`")?;
            let v = match r.key(em, "value") {
                Some((_, v)) => r.string(v, "`value`")?.as_str().to_string(),
                None => String::new(),
            };
            if env.iter().any(|(k2, _)| k2 == k.as_str()) {
                return Err(r.err(
                    r.at_scalar(k),
                    format!("`{}` is set twice in `env`", k.as_str()),
                    None,
                ));
            }
            env.push((k.as_str().to_string(), v));
        }
    }
    let mut ports = Vec::new();
    if let Some((_, n)) = r.key(m, "ports") {
        for p in r.sequence(n, "`ports`")?.iter() {
            let pm = r.mapping(p, "a port")?;
            r.only(
                pm,
                &["name", "containerPort", "hostPort", "hostIP", "protocol"],
                "a port",
            )?;
            let p_at = r.located(p.span(), 1);
            let container_port = r.port(
                r.required(pm, "containerPort", "a port", &p_at)?,
                "`containerPort`",
            )?;
            let protocol = match r.key(pm, "protocol") {
                None => Protocol::Tcp,
                Some((_, s)) => {
                    let s = r.string(s, "`protocol`")?;
                    match s.as_str() {
                        "TCP" => Protocol::Tcp,
                        "UDP" => Protocol::Udp,
                        other => {
                            return Err(r.err(
                                r.at_scalar(s),
                                format!("`protocol: {other}` is not supported"),
                                Some("use `TCP` or `UDP`".into()),
                            ))
                        }
                    }
                }
            };
            let host_port = match r.key(pm, "hostPort") {
                Some((k, h)) => {
                    if host_network {
                        return Err(r.err(
                            r.at_scalar(k),
                            "`hostPort` has no meaning with `hostNetwork: true`",
                            Some(
                                "the container's ports are the machine's: remove `hostPort`".into(),
                            ),
                        ));
                    }
                    Some((r.port(h, "`hostPort`")?, h))
                }
                None => None,
            };
            let host_ip = match r.key(pm, "hostIP") {
                Some((k, v)) => {
                    if host_port.is_none() {
                        return Err(r.err(r.at_scalar(k), "`hostIP` needs a `hostPort`", None));
                    }
                    let v = r.string(v, "`hostIP`")?;
                    match v.as_str().parse::<std::net::IpAddr>() {
                        Ok(ip) if ip.is_loopback() => Some(ip),
                        _ => {
                            return Err(r.err(
                                r.at_scalar(v),
                                format!("`hostIP: {}` is not a loopback address", v.as_str()),
                                Some("lab opens a pod's host ports on every address of the machine; `hostIP` may only keep one to the machine itself (`127.0.0.1` or `::1`)".into()),
                            ))
                        }
                    }
                }
                None => None,
            };
            let port_name = match r.key(pm, "name") {
                Some((_, s)) => Some(r.string(s, "a port's `name`")?.as_str().to_string()),
                None => None,
            };
            let on_host = if host_network {
                Some((container_port, p))
            } else {
                host_port
            };
            if let Some((port, node)) = on_host {
                let hp = HostPort { port, protocol };
                if seen_ports.contains(&hp) {
                    return Err(r.err(
                        r.at_node(node),
                        format!(
                            "port {port}/{} is published twice in this pod",
                            protocol.lower()
                        ),
                        None,
                    ));
                }
                seen_ports.push(hp);
            }
            ports.push(Port {
                name: port_name,
                container_port,
                host_port: host_port.map(|(p, _)| p),
                host_ip,
                protocol,
            });
        }
    }
    let (mut memory, mut cpu) = (None, None);
    if let Some((_, n)) = r.key(m, "resources") {
        let rm = r.mapping(n, "`resources`")?;
        r.only(rm, &["limits"], "resources")?;
        if let Some((_, l)) = r.key(rm, "limits") {
            let lm = r.mapping(l, "`limits`")?;
            r.only(lm, &["memory", "cpu"], "limits")?;
            if let Some((_, v)) = r.key(lm, "memory") {
                let s = r.string(v, "`memory`")?;
                let bytes = memory_bytes(s.as_str()).ok_or_else(|| {
                    r.err(
                        r.at_scalar(s),
                        format!("`memory: {}` is not a quantity of memory", s.as_str()),
                        Some("write bytes, or a number with `Ki`, `Mi`, `Gi` (or `k`, `M`, `G`): `256Mi`".into()),
                    )
                })?;
                memory = Some((s.as_str().to_string(), bytes));
            }
            if let Some((_, v)) = r.key(lm, "cpu") {
                let s = r.string(v, "`cpu`")?;
                let milli = cpu_millis(s.as_str()).ok_or_else(|| {
                    r.err(
                        r.at_scalar(s),
                        format!("`cpu: {}` is not a quantity of CPU", s.as_str()),
                        Some("write CPUs (`1`, `0.5`) or thousandths (`500m`)".into()),
                    )
                })?;
                cpu = Some((s.as_str().to_string(), milli));
            }
        }
    }
    let mut volume_mounts = Vec::new();
    if let Some((_, n)) = r.key(m, "volumeMounts") {
        for v in r.sequence(n, "`volumeMounts`")?.iter() {
            let vm = r.mapping(v, "a volume mount")?;
            r.only(vm, &["name", "mountPath", "readOnly"], "a volume mount")?;
            let v_at = r.located(v.span(), 1);
            let vname = r.string(r.required(vm, "name", "a volume mount", &v_at)?, "`name`")?;
            if !volumes.iter().any(|x| x.name() == vname.as_str()) {
                return Err(r.err(
                    r.at_scalar(vname),
                    format!("no volume of the pod is named `{}`", vname.as_str()),
                    Some("declare it under the pod's `volumes`".into()),
                ));
            }
            let mp = r.string(
                r.required(vm, "mountPath", "a volume mount", &v_at)?,
                "`mountPath`",
            )?;
            if !mp.as_str().starts_with('/') {
                return Err(r.err(r.at_scalar(mp), "`mountPath` must be absolute", None));
            }
            let read_only = match r.key(vm, "readOnly") {
                Some((_, b)) => r.boolean(b, "`readOnly`")?,
                None => false,
            };
            volume_mounts.push(VolumeMount {
                name: vname.as_str().to_string(),
                mount_path: mp.as_str().to_string(),
                read_only,
            });
        }
    }
    let working_dir = match r.key(m, "workingDir") {
        Some((_, n)) => Some(r.string(n, "`workingDir`")?.as_str().to_string()),
        None => None,
    };
    let mut security = Vec::new();
    if let Some((_, n)) = r.key(m, "securityContext") {
        let sm = r.mapping(n, "`securityContext`")?;
        r.only(sm, SECURITY_FIELDS, "a container's securityContext")?;
        for (k, v) in sm.iter() {
            let key = k.as_str();
            let value = match key {
                "runAsUser" | "runAsGroup" => SecurityValue::Int(r.int(v, &format!("`{key}`"))?),
                "capabilities" => {
                    let cm = r.mapping(v, "`capabilities`")?;
                    r.only(cm, &["add", "drop"], "capabilities")?;
                    let list = |k: &str| -> R<Vec<String>> {
                        match r.key(cm, k) {
                            Some((_, n)) => r.strings(n, &format!("`{k}`")),
                            None => Ok(Vec::new()),
                        }
                    };
                    SecurityValue::Capabilities {
                        add: list("add")?,
                        drop: list("drop")?,
                    }
                }
                _ => SecurityValue::Bool(r.boolean(v, &format!("`{key}`"))?),
            };
            security.push((key.to_string(), value));
        }
    }
    Ok(Container {
        name,
        image,
        command,
        args,
        env,
        ports,
        memory,
        cpu,
        volume_mounts,
        working_dir,
        security,
    })
}

/// The image as podman finds it locally, or the refusal: lab never pulls.
fn image(r: &Reader, s: &MarkedScalarNode) -> R<String> {
    let v = s.as_str();
    let refuse = |why: String, name: &str| {
        r.err(
            r.at_scalar(s),
            why,
            Some(format!(
                "lab never pulls from a registry: put an OCI archive at `images/{name}.tar` in the \
                 project (the pod then says `image: {name}`, which is `localhost/{name}:latest`), \
                 or name a `localhost/` image already in the pod user's storage"
            )),
        )
    };
    if let Some(rest) = v.strip_prefix("localhost/") {
        if rest.is_empty() {
            return Err(refuse(format!("`{v}` names no image"), "NAME"));
        }
        return Ok(v.to_string());
    }
    let (first, _) = v.split_once('/').unwrap_or((v, ""));
    let bare = v.rsplit('/').next().unwrap_or(v);
    let repo = bare.split(['@', ':']).next().unwrap_or(bare);
    let short = if repo.is_empty() { "NAME" } else { repo };
    if v.contains('/') {
        let registry = if first.contains('.') || first.contains(':') {
            first.to_string()
        } else {
            "docker.io".to_string()
        };
        return Err(refuse(
            format!("image `{v}` would be pulled from the registry `{registry}`"),
            short,
        ));
    }
    let tag = v.split_once(':').map(|(_, t)| t);
    if r.ctx.images.contains(repo) && !v.contains('@') && matches!(tag, None | Some("latest")) {
        return Ok(format!("localhost/{repo}:latest"));
    }
    if r.ctx.images.contains(repo) {
        return Err(r.err(
            r.at_scalar(s),
            format!("image `{v}` is not the one the project ships"),
            Some(format!(
                "`images/{repo}.tar` is `localhost/{repo}:latest`: write `image: {repo}`"
            )),
        ));
    }
    Err(refuse(
        format!("image `{v}` is not shipped by the project and would be pulled from a registry"),
        short,
    ))
}

/// A Kubernetes memory quantity in bytes.
fn memory_bytes(s: &str) -> Option<u64> {
    const UNITS: &[(&str, u64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (num, mul) = UNITS
        .iter()
        .find_map(|(u, m)| s.strip_suffix(u).map(|n| (n, *m)))
        .unwrap_or((s, 1));
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    n.checked_mul(mul).filter(|b| *b > 0)
}

/// A Kubernetes CPU quantity in thousandths of a CPU.
fn cpu_millis(s: &str) -> Option<u64> {
    if let Some(m) = s.strip_suffix('m') {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        return m.parse().ok().filter(|v| *v > 0);
    }
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 3
    {
        return None;
    }
    let i: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let f: u64 = format!("{frac:0<3}").parse().ok()?;
    i.checked_mul(1000)?.checked_add(f).filter(|v| *v > 0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn quantities() {
        assert_eq!(super::memory_bytes("256Mi"), Some(256 << 20));
        assert_eq!(super::memory_bytes("500M"), Some(500_000_000));
        assert_eq!(super::memory_bytes("1024"), Some(1024));
        assert_eq!(super::memory_bytes("1.5Gi"), None);
        assert_eq!(super::cpu_millis("500m"), Some(500));
        assert_eq!(super::cpu_millis("0.25"), Some(250));
        assert_eq!(super::cpu_millis("2"), Some(2000));
        assert_eq!(super::cpu_millis("x"), None);
    }
}
