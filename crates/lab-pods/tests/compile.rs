//! Good pods and exactly what they become.

use lab_pods::{compile, firewall, Compiled, Context};
use std::path::Path;

fn ctx() -> Context {
    Context {
        pod_user: "apps".into(),
        images: ["web".to_string(), "sidecar".to_string()]
            .into_iter()
            .collect(),
    }
}

fn ok(name: &str, text: &str) -> Compiled {
    compile(Path::new(&format!("pods/{name}.yaml")), name, text, &ctx()).unwrap()
}

const TWO_CONTAINERS: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  labels:
    app: web
  annotations:
    io.podman.annotations.init/http: "true"
    io.podman.annotations.init/tail: "true"
spec:
  restartPolicy: OnFailure
  volumes:
  - name: logs
    emptyDir: {}
  - name: site
    hostPath:
      path: /srv/site
      type: Directory
  containers:
  - name: http
    image: web
    command: [httpd, -f, -p, "80"]
    env:
    - name: GREETING
      value: "hello \"you\""
    ports:
    - containerPort: 80
      hostPort: 8080
    - containerPort: 53
      hostPort: 5353
      protocol: UDP
    resources:
      limits:
        memory: 64Mi
        cpu: 500m
    volumeMounts:
    - name: site
      mountPath: /www
      readOnly: true
    - name: logs
      mountPath: /var/log/httpd
  - name: tail
    image: localhost/sidecar:latest
    imagePullPolicy: Never
    args: ["-F", /logs/access.log]
    workingDir: /logs
    resources:
      limits:
        memory: 16Mi
        cpu: "0.1"
    securityContext:
      readOnlyRootFilesystem: true
      capabilities:
        drop: [ALL]
"#;

#[test]
fn a_two_container_rootless_pod() {
    let c = ok("web", TWO_CONTAINERS);
    assert_eq!(c.kube_path(), "etc/containers/systemd/users/web.kube");
    assert_eq!(c.yaml_path(), "etc/containers/systemd/users/web.yaml");
    // the limits stay with each container (in the YAML, below); the unit
    // only checks, before podman, that the node can apply them (the check
    // itself: tests/limits.rs)
    let (check, rest) = c
        .kube
        .split_once("ExecStartPre=/bin/sh -c '")
        .expect("a pod with limits checks the node can apply them");
    assert_eq!(
        check,
        "# Made by lab from a pod file; edits here are replaced by the next sync.
[Unit]
Description=Pod web
ConditionUser=apps

[Kube]
Yaml=web.yaml
LogDriver=journald
ExitCodePropagation=any
PublishPort=8080:80/tcp
PublishPort=5353:53/udp

[Service]
Restart=on-failure
"
    );
    let (_, after) = rest.split_once('\'').unwrap();
    assert_eq!(
        after,
        " lab-limits /sys/fs/cgroup /proc/self/cgroup web rootless memory cpu

[Install]
WantedBy=default.target
"
    );
    assert!(!c.kube.contains("MemoryMax") && !c.kube.contains("CPUQuota"));
    assert_eq!(
        c.yaml,
        r#"# Made by lab from a pod file; edits here are replaced by the next sync.
apiVersion: v1
kind: Pod
metadata:
  name: "web"
  labels:
    "app": "web"
  annotations:
    "io.podman.annotations.init/http": "true"
    "io.podman.annotations.init/tail": "true"
spec:
  restartPolicy: OnFailure
  containers:
  - name: "http"
    image: "localhost/web:latest"
    imagePullPolicy: Never
    command:
    - "httpd"
    - "-f"
    - "-p"
    - "80"
    env:
    - name: "GREETING"
      value: "hello \"you\""
    ports:
    - containerPort: 80
      hostPort: 8080
      protocol: TCP
    - containerPort: 53
      hostPort: 5353
      protocol: UDP
    resources:
      limits:
        memory: "64Mi"
        cpu: "500m"
    volumeMounts:
    - name: "site"
      mountPath: "/www"
      readOnly: true
    - name: "logs"
      mountPath: "/var/log/httpd"
  - name: "tail"
    image: "localhost/sidecar:latest"
    imagePullPolicy: Never
    args:
    - "-F"
    - "/logs/access.log"
    workingDir: "/logs"
    resources:
      limits:
        memory: "16Mi"
        cpu: "0.1"
    securityContext:
      readOnlyRootFilesystem: true
      capabilities:
        add: []
        drop:
        - "ALL"
  volumes:
  - name: "logs"
    emptyDir: {}
  - name: "site"
    hostPath:
      path: "/srv/site"
      type: "Directory"
"#
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // the normalised YAML is a pod lab accepts, and compiles to itself
    let again = ok("web", &c.yaml);
    assert_eq!(again.yaml, c.yaml);
    assert_eq!(again.kube, c.kube);
}

#[test]
fn a_rootful_deployment_becomes_a_system_pod() {
    let c = ok(
        "pgdb",
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: pgdb
  labels: {app: pgdb}
  annotations:
    lab.dev/rootful: "true"
spec:
  selector:
    matchLabels: {app: pgdb}
  template:
    metadata:
      labels: {app: pgdb, tier: data}
    spec:
      hostNetwork: true
      restartPolicy: Never
      containers:
      - name: pg
        image: localhost/postgres:16
        command: [/usr/bin/tini, --, postgres]
        ports:
        - containerPort: 5432
"#,
    );
    assert_eq!(c.kube_path(), "etc/containers/systemd/pgdb.kube");
    assert_eq!(
        c.kube,
        "# Made by lab from a pod file; edits here are replaced by the next sync.
[Unit]
Description=Pod pgdb

[Kube]
Yaml=pgdb.yaml
LogDriver=journald
ExitCodePropagation=any

[Service]
Restart=no

[Install]
WantedBy=multi-user.target
"
    );
    assert_eq!(
        c.yaml,
        r#"# Made by lab from a pod file; edits here are replaced by the next sync.
apiVersion: v1
kind: Pod
metadata:
  name: "pgdb"
  labels:
    "app": "pgdb"
    "tier": "data"
  annotations:
    "lab.dev/rootful": "true"
spec:
  restartPolicy: Never
  hostNetwork: true
  containers:
  - name: "pg"
    image: "localhost/postgres:16"
    imagePullPolicy: Never
    command:
    - "/usr/bin/tini"
    - "--"
    - "postgres"
    ports:
    - containerPort: 5432
      protocol: TCP
"#
    );
    // tini is an init: no warning
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // with hostNetwork the container's ports are the machine's
    assert_eq!(c.pod.host_ports().len(), 1);
}

#[test]
fn a_pid_1_that_is_no_init_is_warned_about() {
    let c = ok(
        "web",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: app\n    image: web\n    command: [sleep, infinity]\n    ports:\n    - {containerPort: 80, hostPort: 80}\n",
    );
    assert_eq!(
        c.warnings,
        [
            "`pods/web.yaml`: container `app` runs `sleep` as PID 1 with no init: a PID 1 that \
             ignores SIGTERM makes every restart of pod `web` wait 10 s to be killed (0.4 s with \
             an init); add the annotation `io.podman.annotations.init/app: \"true\"` to the pod's \
             metadata",
            "`pods/web.yaml`: rootless pod `web` publishes port 80/tcp: a user may bind ports \
             below 1024 only when the machine's `net.ipv4.ip_unprivileged_port_start` allows it \
             (or make the pod rootful: `lab.dev/rootful: \"true\"`)"
        ]
    );
    // no limits: no check of the node's cgroup controllers either
    assert!(!c.kube.contains("ExecStartPre"));
}

#[test]
fn the_firewall_opens_exactly_the_host_ports() {
    let web = ok("web", TWO_CONTAINERS);
    let other = ok(
        "other",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: other\nspec:\n  containers:\n  - name: x\n    image: web\n    ports:\n    - {containerPort: 1, hostPort: 9000}\n    - {containerPort: 2}\n    - {containerPort: 3, hostPort: 9001, hostIP: 127.0.0.1}\n    - {containerPort: 4, hostPort: 9002, hostIP: \"::1\"}\n",
    );
    assert!(other.kube.contains(
        "PublishPort=9000:1/tcp\nPublishPort=127.0.0.1:9001:3/tcp\nPublishPort=[::1]:9002:4/tcp\n"
    ));
    assert!(other
        .yaml
        .contains("      hostPort: 9001\n      hostIP: \"127.0.0.1\"\n"));
    let text = firewall(&[
        (Path::new("pods/web.yaml"), &web.pod),
        (Path::new("pods/other.yaml"), &other.pod),
    ])
    .unwrap()
    .unwrap();
    assert_eq!(
        text,
        "# Made by lab: the host ports this machine's pods publish, and no others.
# Include it inside the input chain of the machine's nftables ruleset:
#   include \"/etc/nftables.d/*.nft\"
tcp dport { 8080, 9000 } accept
udp dport { 5353 } accept
"
    );
    let none = ok(
        "n",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: n\nspec:\n  containers:\n  - {name: x, image: web, ports: [{containerPort: 80}]}\n",
    );
    assert_eq!(
        firewall(&[(Path::new("pods/n.yaml"), &none.pod)]).unwrap(),
        None
    );
    let e = firewall(&[
        (Path::new("pods/web.yaml"), &web.pod),
        (Path::new("pods/web2.yaml"), &web.pod),
    ])
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "pods `web` (`pods/web.yaml`) and `web` both publish port 5353/udp"
    );
}

#[test]
fn source_names() {
    assert_eq!(lab_pods::source_name("pods/web.yaml"), Some(("web", false)));
    assert_eq!(
        lab_pods::source_name("pods/web.yaml.j2"),
        Some(("web", true))
    );
    assert_eq!(lab_pods::source_name("pods/.yaml"), None);
    assert_eq!(lab_pods::source_name("pods/a/web.yaml"), None);
    assert_eq!(lab_pods::source_name("etc/pods/web.yaml"), None);
    assert_eq!(lab_pods::source_name("pods/web.yml"), None);
}
