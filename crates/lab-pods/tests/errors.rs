//! Every refusal of a pod file, with its exact message, place and hint.

use lab_pods::{compile, Context, PodError};
use std::path::Path;

fn ctx() -> Context {
    Context {
        pod_user: "pods".into(),
        images: ["web".to_string()].into_iter().collect(),
    }
}

/// The error of compiling `text` as `pods/web.yaml`, as the CLI lays it
/// out: place, message, the line, a caret, the hint.
fn refusal(text: &str) -> String {
    let e: PodError = compile(Path::new("pods/web.yaml"), "web", text, &ctx()).unwrap_err();
    let at = &e.at;
    let mut s = format!("{at}: {}\n", e.message);
    if at.line > 0 {
        s.push_str(&format!(
            "{}\n{}{}\n",
            at.line_text,
            " ".repeat(at.col - 1),
            "^".repeat(at.width)
        ));
    }
    if let Some(h) = &e.hint {
        s.push_str(&format!("hint: {h}\n"));
    }
    s
}

/// A pod whose one container has `extra` (lines indented under it).
fn with_container(extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: app\n    image: web\n{extra}"
    )
}

/// A pod with `extra` in its spec.
fn with_spec(extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n{extra}  containers:\n  - name: app\n    image: web\n"
    )
}

const IGNORED: &str = "(podman#18332); lab refuses it so the pod does what the file says";

#[test]
fn probes_and_hooks_podman_ignores() {
    assert_eq!(
        refusal(&with_container("    readinessProbe:\n      exec:\n        command: [\"true\"]\n")),
        format!(
            "pods/web.yaml:9:5: `readinessProbe` is not supported in a container\n    readinessProbe:\n    ^^^^^^^^^^^^^^\nhint: podman kube play ignores `readinessProbe` {IGNORED}\n"
        )
    );
    assert_eq!(
        refusal(&with_container("    startupProbe: {}\n")),
        format!(
            "pods/web.yaml:9:5: `startupProbe` is not supported in a container\n    startupProbe: {{}}\n    ^^^^^^^^^^^^\nhint: podman kube play ignores `startupProbe` {IGNORED}\n"
        )
    );
    assert_eq!(
        refusal(&with_container("    lifecycle:\n      preStop: {}\n")),
        format!(
            "pods/web.yaml:9:5: `lifecycle` is not supported in a container\n    lifecycle:\n    ^^^^^^^^^\nhint: podman kube play ignores lifecycle hooks (`lifecycle`) {IGNORED}\n"
        )
    );
    assert_eq!(
        refusal(&with_container("    livenessProbe: {}\n")),
        "pods/web.yaml:9:5: `livenessProbe` is not supported in a container\n    livenessProbe: {}\n    ^^^^^^^^^^^^^\nhint: lab does not support `livenessProbe` yet; systemd restarts the pod when it exits (see `restartPolicy`)\n"
    );
}

#[test]
fn pod_spec_fields_podman_ignores() {
    assert_eq!(
        refusal(&with_spec("  dnsPolicy: ClusterFirst\n")),
        format!(
            "pods/web.yaml:6:3: `dnsPolicy` is not supported in a pod spec\n  dnsPolicy: ClusterFirst\n  ^^^^^^^^^\nhint: podman kube play ignores `dnsPolicy` {IGNORED}\n"
        )
    );
    assert_eq!(
        refusal(&with_spec("  imagePullSecrets:\n  - name: reg\n")),
        "pods/web.yaml:6:3: `imagePullSecrets` is not supported in a pod spec\n  imagePullSecrets:\n  ^^^^^^^^^^^^^^^^\nhint: lab never pulls from a registry: it ships the images of `images/` in the project, or uses `localhost/` images already on the machine\n"
    );
    assert_eq!(
        refusal(&with_spec("  initContainers: []\n")),
        "pods/web.yaml:6:3: `initContainers` is not supported in a pod spec\n  initContainers: []\n  ^^^^^^^^^^^^^^\nhint: lab supports in a pod spec: `containers`, `restartPolicy`, `volumes`, `hostNetwork`\n"
    );
}

#[test]
fn other_unsupported_fields_list_what_is_supported() {
    assert_eq!(
        refusal(&with_container("    tty: true\n")),
        "pods/web.yaml:9:5: `tty` is not supported in a container\n    tty: true\n    ^^^\nhint: lab supports in a container: `name`, `image`, `imagePullPolicy`, `command`, `args`, `env`, `ports`, `resources`, `volumeMounts`, `workingDir`, `securityContext`\n"
    );
    assert_eq!(
        refusal(&with_container("    envFrom:\n    - configMapRef: {name: x}\n")),
        "pods/web.yaml:9:5: `envFrom` is not supported in a container\n    envFrom:\n    ^^^^^^^\nhint: put the values in the pod's `env`, or the file in a layer and mount it with a `hostPath` volume\n"
    );
    assert_eq!(
        refusal(&with_container("    resources:\n      requests:\n        memory: 1Gi\n")),
        "pods/web.yaml:10:7: `requests` is not supported in resources\n      requests:\n      ^^^^^^^^\nhint: lab applies `limits` only (as each container's cgroup limits)\n"
    );
    assert_eq!(
        refusal(&with_container("    ports:\n    - containerPort: 80\n      appProtocol: http\n")),
        "pods/web.yaml:11:7: `appProtocol` is not supported in a port\n      appProtocol: http\n      ^^^^^^^^^^^\nhint: lab supports in a port: `name`, `containerPort`, `hostPort`, `hostIP`, `protocol`\n"
    );
    assert_eq!(
        refusal(&with_container("    ports:\n    - containerPort: 80\n      hostPort: 80\n      hostIP: 203.0.113.1\n")),
        "pods/web.yaml:12:15: `hostIP: 203.0.113.1` is not a loopback address\n      hostIP: 203.0.113.1\n              ^^^^^^^^^^^\nhint: lab opens a pod's host ports on every address of the machine; `hostIP` may only keep one to the machine itself (`127.0.0.1` or `::1`)\n"
    );
    assert_eq!(
        refusal(&with_container("    securityContext:\n      seccompProfile: {}\n")),
        "pods/web.yaml:10:7: `seccompProfile` is not supported in a container's securityContext\n      seccompProfile: {}\n      ^^^^^^^^^^^^^^\nhint: lab supports in a container's securityContext: `runAsUser`, `runAsGroup`, `readOnlyRootFilesystem`, `privileged`, `allowPrivilegeEscalation`, `capabilities`\n"
    );
    assert_eq!(
        refusal("apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: prod\nspec:\n  containers: []\n"),
        "pods/web.yaml:5:3: `namespace` is not supported in metadata\n  namespace: prod\n  ^^^^^^^^^\nhint: a pod runs on the machines whose layers hold it; there are no namespaces\n"
    );
    assert_eq!(
        refusal("apiVersion: v1\nkind: Pod\nstatus: {}\nmetadata:\n  name: web\n"),
        "pods/web.yaml:3:1: `status` is not supported in a Pod\nstatus: {}\n^^^^^^\nhint: lab supports in a Pod: `apiVersion`, `kind`, `metadata`, `spec`\n"
    );
}

#[test]
fn volumes_are_host_paths_or_empty_dirs() {
    let t = with_spec("  volumes:\n  - name: conf\n    configMap:\n      name: x\n");
    assert_eq!(
        refusal(&t),
        "pods/web.yaml:8:5: `configMap` is not supported in a volume\n    configMap:\n    ^^^^^^^^^\nhint: put the values in the pod's `env`, or the file in a layer and mount it with a `hostPath` volume\n"
    );
    let t = with_spec("  volumes:\n  - name: data\n    hostPath:\n      path: data\n");
    assert_eq!(
        refusal(&t),
        "pods/web.yaml:9:13: `hostPath.path` must be absolute, not `data`\n      path: data\n            ^^^^\nhint: podman takes a path without `/` as the name of a podman volume; lab supports host paths only\n"
    );
    let t = with_container("    volumeMounts:\n    - name: nope\n      mountPath: /x\n");
    assert_eq!(
        refusal(&t),
        "pods/web.yaml:10:13: no volume of the pod is named `nope`\n    - name: nope\n            ^^^^\nhint: declare it under the pod's `volumes`\n"
    );
}

#[test]
fn registry_images_are_refused() {
    let hint = |n: &str| {
        format!(
            "hint: lab never pulls from a registry: put an OCI archive at `images/{n}.tar` in the project (the pod then says `image: {n}`, which is `localhost/{n}:latest`), or name a `localhost/` image already in the pod user's storage\n"
        )
    };
    let t = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: app\n    image: nginx:1.25\n";
    assert_eq!(
        refusal(t),
        format!(
            "pods/web.yaml:8:12: image `nginx:1.25` is not shipped by the project and would be pulled from a registry\n    image: nginx:1.25\n           ^^^^^^^^^^\n{}",
            hint("nginx")
        )
    );
    let t = t.replace("nginx:1.25", "docker.io/library/nginx:1.25");
    assert_eq!(
        refusal(&t),
        format!(
            "pods/web.yaml:8:12: image `docker.io/library/nginx:1.25` would be pulled from the registry `docker.io`\n    image: docker.io/library/nginx:1.25\n           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n{}",
            hint("nginx")
        )
    );
    let t = t.replace(
        "docker.io/library/nginx:1.25",
        "\"quay.io/app/api@sha256:00\"",
    );
    assert_eq!(
        refusal(&t),
        format!(
            "pods/web.yaml:8:12: image `quay.io/app/api@sha256:00` would be pulled from the registry `quay.io`\n    image: \"quay.io/app/api@sha256:00\"\n           ^^^^^^^^^^^^^^^^^^^^^^^^^^^\n{}",
            hint("api")
        )
    );
    // a shipped image under another tag is not the shipped one
    let t = t.replace("\"quay.io/app/api@sha256:00\"", "web:2");
    assert_eq!(
        refusal(&t),
        "pods/web.yaml:8:12: image `web:2` is not the one the project ships\n    image: web:2\n           ^^^^^\nhint: `images/web.tar` is `localhost/web:latest`: write `image: web`\n"
    );
    let t = with_container("    imagePullPolicy: IfNotPresent\n");
    assert_eq!(
        refusal(&t),
        "pods/web.yaml:9:22: `imagePullPolicy: IfNotPresent` would pull from a registry\n    imagePullPolicy: IfNotPresent\n                     ^^^^^^^^^^^^\nhint: lab never pulls images: use `imagePullPolicy: Never` or leave it out\n"
    );
}

#[test]
fn deployments_run_one_replica() {
    let d = |replicas: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: {replicas}\n  template:\n    spec:\n      containers:\n      - name: app\n        image: web\n"
        )
    };
    assert_eq!(
        refusal(&d("2")),
        "pods/web.yaml:6:13: a Deployment must have `replicas: 1`, not `2`\n  replicas: 2\n            ^\nhint: lab runs one pod per file on each machine; to run more, give each machine its own pod\n"
    );
    assert_eq!(
        refusal(&d("0")),
        "pods/web.yaml:6:13: a Deployment must have `replicas: 1`, not `0`\n  replicas: 0\n            ^\nhint: lab runs one pod per file on each machine; to run more, give each machine its own pod\n"
    );
    let t = d("1").replace(
        "  template:",
        "  selector:\n    matchLabels: {app: web}\n  template:",
    );
    assert_eq!(
        refusal(&t),
        "pods/web.yaml:8:19: the Deployment selects `app: web`, which its template's labels do not have\n    matchLabels: {app: web}\n                  ^^^\nhint: give the template's `metadata.labels` the labels the selector names\n"
    );
    let t = d("1").replace(
        "  template:",
        "  strategy:\n    type: Recreate\n  template:",
    );
    assert_eq!(
        refusal(&t),
        "pods/web.yaml:7:3: `strategy` is not supported in a Deployment's spec\n  strategy:\n  ^^^^^^^^\nhint: lab replaces the pod whenever its file or image changes\n"
    );
}

#[test]
fn names_kinds_and_values() {
    let t = with_container("").replace("name: web", "name: api");
    assert_eq!(
        refusal(&t),
        "pods/web.yaml:4:9: the pod is named `api` but its file is `web.yaml`\n  name: api\n        ^^^\nhint: lab names the pod and its unit after the file (`web.service`): rename one so they agree\n"
    );
    let t = with_container("").replace("kind: Pod", "kind: Service");
    assert_eq!(
        refusal(&t),
        "pods/web.yaml:2:7: `kind: Service` is not a pod\nkind: Service\n      ^^^^^^^\nhint: a pod file holds one `kind: Pod` or `kind: Deployment`\n"
    );
    let t = with_spec("  restartPolicy: Sometimes\n");
    assert_eq!(
        refusal(&t),
        "pods/web.yaml:6:18: `restartPolicy: Sometimes` is not a restart policy\n  restartPolicy: Sometimes\n                 ^^^^^^^^^\nhint: use `Always`, `OnFailure` or `Never`\n"
    );
    let t = with_container("    resources:\n      limits:\n        memory: lots\n");
    assert_eq!(
        refusal(&t),
        "pods/web.yaml:11:17: `memory: lots` is not a quantity of memory\n        memory: lots\n                ^^^^\nhint: write bytes, or a number with `Ki`, `Mi`, `Gi` (or `k`, `M`, `G`): `256Mi`\n"
    );
    let t = with_container("    ports:\n    - containerPort: 80\n      hostPort: 70000\n");
    assert_eq!(
        refusal(&t),
        "pods/web.yaml:11:17: `hostPort` must be a port number (1 to 65535)\n      hostPort: 70000\n                ^^^^^\n"
    );
    let t = with_container("")
        .replace("  annotations: {}\n", "")
        .replace(
            "  name: web\n",
            "  name: web\n  annotations:\n    lab.dev/rootfull: \"true\"\n",
        );
    assert_eq!(
        refusal(&t),
        "pods/web.yaml:6:5: unknown lab annotation `lab.dev/rootfull`\n    lab.dev/rootfull: \"true\"\n    ^^^^^^^^^^^^^^^^\nhint: lab understands `lab.dev/rootful`\n"
    );
    assert_eq!(
        refusal("kind: Pod\nkind: Pod\n"),
        "pods/web.yaml:2:1: `kind` is given twice\nkind: Pod\n^\n"
    );
    assert_eq!(
        refusal("[1, 2]\n"),
        "pods/web.yaml:1:1: a pod file must be a YAML mapping\n[1, 2]\n^\n"
    );
    assert_eq!(
        refusal("---\napiVersion: v1\nkind: Pod\n---\nkind: ConfigMap\n"),
        "pods/web.yaml:4:1: a pod file holds one YAML document\n---\n^^^\nhint: put each pod in its own file: `pods/NAME.yaml`\n"
    );
    assert_eq!(
        refusal(""),
        "pods/web.yaml: the pod file is empty\nhint: a pod file holds one `kind: Pod` (or `kind: Deployment`)\n"
    );
}

#[test]
fn two_containers_may_not_share_a_host_port() {
    let t = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: a\n    image: web\n    ports:\n    - {containerPort: 80, hostPort: 8080}\n  - name: b\n    image: web\n    ports:\n    - {containerPort: 81, hostPort: 8080}\n";
    assert_eq!(
        refusal(t),
        "pods/web.yaml:14:37: port 8080/tcp is published twice in this pod\n    - {containerPort: 81, hostPort: 8080}\n                                    ^^^^\n"
    );
}

#[test]
fn hex_only_pod_name() {
    for name in ["a", "cafe", "c0ffee"] {
        let text = format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: app\n    image: web\n");
        let path = format!("pods/{name}.yaml");
        let e = compile(Path::new(&path), name, &text, &ctx()).unwrap_err();
        assert_eq!(
            format!("{}: {}\nhint: {}", e.at, e.message, e.hint.unwrap()),
            format!(
                "pods/{name}.yaml:4:9: the pod name `{name}` is made only of hex digits\nhint: podman takes `{name}` for a pod ID prefix and would replace another pod: add a letter after `f` or a `-` (`{name}-pod`), to the file name too"
            )
        );
    }
    // a letter past `f` makes it a name
    compile(
        Path::new("pods/cafez.yaml"),
        "cafez",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: cafez\nspec:\n  containers:\n  - name: app\n    image: web\n",
        &ctx(),
    )
    .unwrap();
}
