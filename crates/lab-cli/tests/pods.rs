//! `lab build` of a project with pods: the Quadlet files they become, and
//! a bad pod's error with its place, caret and hint, and a non-zero exit.

use lab_testkit::{run, TestLab};

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web
  annotations:
    io.podman.annotations.init/http: \"true\"
spec:
  containers:
  - name: http
    image: web
    ports:
    - containerPort: 80
      hostPort: {{ port }}
";

fn project() -> TestLab {
    let t = TestLab::new();
    t.file(
        "lab.toml",
        "[facts]\nport = 8080\n\n[machines.a]\nuser = \"deploy\"\nlayers = [\"web\"]\n",
    )
    .file("images/web.tar", "")
    .file("layers/web/pods/web.yaml.j2", POD);
    t
}

#[test]
fn build_makes_the_quadlet_files() {
    let t = project();
    let (code, out, err) = run(&t, &["build"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err, "");
    assert!(
        out.starts_with("a: 3 rendered, 8 written, 0 removed (8 entries)\n"),
        "{out}"
    );
    assert_eq!(
        t.read(".lab/out/a/etc/containers/systemd/users/web.kube"),
        "# Made by lab from a pod file; edits here are replaced by the next sync.
[Unit]
Description=Pod web
ConditionUser=deploy

[Kube]
Yaml=web.yaml
LogDriver=journald
ExitCodePropagation=any
PublishPort=8080:80/tcp

[Service]
Restart=always

[Install]
WantedBy=default.target
"
    );
    assert!(t
        .read(".lab/out/a/etc/containers/systemd/users/web.yaml")
        .contains("    image: \"localhost/web:latest\"\n    imagePullPolicy: Never\n"));
    assert_eq!(
        t.read(".lab/out/a/etc/nftables.d/lab-pods.nft")
            .lines()
            .last(),
        Some("tcp dport { 8080 } accept")
    );
    assert!(!t.join(".lab/out/a/pods").exists());
}

#[test]
fn a_bad_pod_is_shown_at_its_place() {
    let t = project();
    t.file(
        "layers/web/pods/web.yaml.j2",
        &POD.replace(
            "    image: web\n",
            "    image: web\n    lifecycle:\n      preStop: {}\n",
        ),
    );
    let (code, out, err) = run(&t, &["build"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        err,
        "error: machine `a`: `lifecycle` is not supported in a container
  --> layers/web/pods/web.yaml.j2:11:5
   |
11 |     lifecycle:
   |     ^^^^^^^^^
  hint: podman kube play ignores lifecycle hooks (`lifecycle`) (podman#18332); lab refuses it so the pod does what the file says
error: 1 machine failed: `a`
"
    );
    t.file(
        "layers/web/pods/web.yaml.j2",
        &POD.replace("image: web", "image: nginx:1.25"),
    );
    let (code, _, err) = run(&t, &["build"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with(
            "error: machine `a`: image `nginx:1.25` is not shipped by the project and would be \
             pulled from a registry\n  --> layers/web/pods/web.yaml.j2:10:12\n"
        ),
        "{err}"
    );
}

#[test]
fn warnings_are_printed_and_do_not_fail_the_build() {
    let t = project();
    t.file(
        "layers/web/pods/web.yaml.j2",
        &POD.replace(
            "  annotations:\n    io.podman.annotations.init/http: \"true\"\n",
            "",
        ),
    );
    let (code, _, err) = run(&t, &["build"]);
    assert_eq!(code, 0);
    assert_eq!(
        err,
        "warning: machine `a`: `layers/web/pods/web.yaml.j2`: container `http` runs its image's \
         entrypoint as PID 1 with no init: a PID 1 that ignores SIGTERM makes every restart of \
         pod `web` wait 10 s to be killed (0.4 s with an init); add the annotation \
         `io.podman.annotations.init/http: \"true\"` to the pod's metadata\n"
    );
}

#[test]
fn show_explains_pod_files_and_pod_sources() {
    let t = project();
    let (code, out, err) = run(
        &t,
        &["show", "-m", "a", "/etc/containers/systemd/users/web.kube"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(
            "/etc/containers/systemd/users/web.kube on a (file 0644)\n  \
             source: layers/web/pods/web.yaml.j2 (template)\n  \
             reads: port = 8080\n---\n# Made by lab from a pod file"
        ),
        "{out}"
    );
    let (code, out, _) = run(&t, &["show", "layers/web/pods/web.yaml.j2"]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "layers/web/pods/web.yaml.j2 (template)\n  \
         a: /etc/containers/systemd/users/web.kube, /etc/containers/systemd/users/web.yaml\n"
    );
    let (_, out, _) = run(&t, &["show", "layers/web/pods"]);
    assert_eq!(
        out,
        "layers/web/pods (directory)\n  `pods/` holds pods (`NAME.yaml`, `NAME.yaml.j2`), which become Quadlet files; it lands nowhere itself\n"
    );
    t.file(
        "machines/a/pods/web.yaml",
        &POD.replace("{{ port }}", "9000"),
    );
    let (_, out, _) = run(&t, &["show", "layers/web/pods/web.yaml.j2"]);
    assert_eq!(
        out,
        "layers/web/pods/web.yaml.j2 (template)\n  a: pod `web`, overridden by machines/a/pods/web.yaml\n"
    );
}
