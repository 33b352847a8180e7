//! Pods in a build: where their files land, what an edit re-runs, how a
//! machine's pod replaces a layer's, and how a bad pod stops its machine.

use lab_engine::{BuildOptions, BuildReport, Engine, Reporter};
use lab_graph::{Key, Reason};
use lab_testkit::TestLab;
use std::sync::Mutex;

#[derive(Default)]
struct Recorder {
    ran: Mutex<Vec<String>>,
    warnings: Mutex<Vec<String>>,
}

impl Reporter for Recorder {
    fn node_ran(&self, machine: &str, key: &Key, _reason: &Reason) {
        self.ran.lock().unwrap().push(format!("{machine}: {key}"));
    }
    fn warning(&self, machine: Option<&str>, message: &str) {
        self.warnings
            .lock()
            .unwrap()
            .push(format!("{}: {message}", machine.unwrap_or("-")));
    }
}

fn build_with(lab: &TestLab) -> (Recorder, BuildReport) {
    let engine = Engine::open(lab.path()).unwrap();
    let rec = Recorder::default();
    let report = engine.build(&BuildOptions::default(), &rec).unwrap();
    (rec, report)
}

/// Build; every machine must succeed. The nodes that ran, sorted.
fn ran(lab: &TestLab) -> Vec<String> {
    let (rec, report) = build_with(lab);
    for m in &report.machines {
        if let Err(e) = &m.result {
            panic!("machine {} failed: {e:?}", m.name);
        }
    }
    let mut v = rec.ran.into_inner().unwrap();
    v.sort();
    v
}

/// Build; the one error of machine `m`, as the CLI's first line says it.
/// (Paths in messages are relative to the project, as the CLI shows them
/// when run there.)
fn error_of(lab: &TestLab, m: &str) -> (String, Option<lab_core::Located>, Option<String>) {
    use lab_core::Diagnose;
    let (_, report) = build_with(lab);
    let o = report.machines.iter().find(|o| o.name == m).unwrap();
    let errs = o.result.as_ref().unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    let e = &errs[0];
    let msg = e
        .to_string()
        .replace(&format!("{}/", lab.path().display()), "");
    (msg, e.location().cloned(), e.hint())
}

const TOML: &str = r#"
[facts]
port = 8080

[machines.a]
layers = ["web"]

[machines.b]
user = "deploy"
layers = ["web"]
"#;

const WEB: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  annotations:
    io.podman.annotations.init/http: "true"
spec:
  containers:
  - name: http
    image: localhost/web
    ports:
    - containerPort: 80
      hostPort: {{ port }}
"#;

const DB: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: pgdb
  annotations:
    lab.dev/rootful: "true"
    io.podman.annotations.init/pg: "true"
spec:
  template:
    spec:
      containers:
      - name: pg
        image: localhost/postgres
"#;

fn lab() -> TestLab {
    let lab = TestLab::new();
    lab.file("lab.toml", TOML)
        .file("layers/web/etc/motd", "hi\n")
        .file("layers/web/pods/web.yaml.j2", WEB)
        .file("layers/web/pods/pgdb.yaml", DB);
    ran(&lab);
    assert!(ran(&lab).is_empty());
    lab
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn pods_become_quadlet_files_not_copies() {
    let lab = lab();
    let manifest = lab.read(".lab/out/a.manifest");
    let paths: Vec<&str> = manifest
        .lines()
        .skip(1)
        .map(|l| l.split('"').nth(3).unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/etc",
            "/etc/containers",
            "/etc/containers/systemd",
            "/etc/containers/systemd/pgdb.kube",
            "/etc/containers/systemd/pgdb.yaml",
            "/etc/containers/systemd/users",
            "/etc/containers/systemd/users/web.kube",
            "/etc/containers/systemd/users/web.yaml",
            "/etc/motd",
            "/etc/nftables.d",
            "/etc/nftables.d/lab-pods.nft",
        ]
    );
    // the template saw the facts; the pod user follows the machine's user
    let kube = lab.read(".lab/out/a/etc/containers/systemd/users/web.kube");
    assert!(kube.contains("ConditionUser=pods\n"), "{kube}");
    assert!(kube.contains("PublishPort=8080:80/tcp\n"), "{kube}");
    let kube = lab.read(".lab/out/b/etc/containers/systemd/users/web.kube");
    assert!(kube.contains("ConditionUser=deploy\n"), "{kube}");
    assert!(lab
        .read(".lab/out/a/etc/nftables.d/lab-pods.nft")
        .ends_with("tcp dport { 8080 } accept\n"));
}

#[test]
fn editing_one_pod_reruns_only_its_nodes() {
    let lab = lab();
    lab.file(
        "layers/web/pods/pgdb.yaml",
        &DB.replace("localhost/postgres", "localhost/pg16"),
    );
    let mut want = Vec::new();
    for m in ["a", "b"] {
        for k in [
            // (the unit's text did not change: it stops there)
            "output `etc/containers/systemd/pgdb.yaml`",
            "render `etc/containers/systemd/pgdb.kube`",
            "render `etc/containers/systemd/pgdb.yaml`",
            // the firewall reads every pod, and stops there (same ports)
            "render `etc/nftables.d/lab-pods.nft`",
        ] {
            want.push(format!("{m}: {k}"));
        }
    }
    want.sort();
    assert_eq!(ran(&lab), want);
    assert!(lab
        .read(".lab/out/a/etc/containers/systemd/pgdb.yaml")
        .contains("image: \"localhost/pg16\""));
}

#[test]
fn a_fact_reruns_the_pods_that_read_it() {
    let lab = lab();
    lab.file("lab.toml", &TOML.replace("port = 8080", "port = 8081"));
    let got = ran(&lab);
    assert!(got.contains(&"a: output `etc/nftables.d/lab-pods.nft`".to_string()));
    assert!(!got.iter().any(|k| k.contains("pgdb.")), "{got:#?}");
    assert!(lab
        .read(".lab/out/b/etc/nftables.d/lab-pods.nft")
        .ends_with("tcp dport { 8081 } accept\n"));
}

#[test]
fn a_machine_pod_replaces_the_layer_pod_of_its_name() {
    let lab = lab();
    lab.file(
        "machines/a/pods/web.yaml",
        &WEB.replace("{{ port }}", "9090"),
    );
    ran(&lab);
    assert!(lab
        .read(".lab/out/a/etc/containers/systemd/users/web.kube")
        .contains("PublishPort=9090:80/tcp\n"));
    assert!(lab
        .read(".lab/out/b/etc/containers/systemd/users/web.kube")
        .contains("PublishPort=8080:80/tcp\n"));
    // and a pod removed from the machine falls back to the layer's
    lab.remove("machines/a/pods/web.yaml");
    ran(&lab);
    assert!(lab
        .read(".lab/out/a/etc/containers/systemd/users/web.kube")
        .contains("PublishPort=8080:80/tcp\n"));
}

#[test]
fn becoming_rootful_moves_the_pod_files() {
    let lab = lab();
    lab.file(
        "layers/web/pods/web.yaml.j2",
        &WEB.replace(
            "  annotations:\n",
            "  annotations:\n    lab.dev/rootful: \"true\"\n",
        ),
    );
    ran(&lab);
    assert!(lab
        .join(".lab/out/a/etc/containers/systemd/web.kube")
        .is_file());
    assert!(!lab
        .join(".lab/out/a/etc/containers/systemd/users/web.kube")
        .exists());
    assert!(!lab.read(".lab/out/a.manifest").contains("users/web"));
}

#[test]
fn a_second_pod_opens_its_port_and_removing_pods_closes_them() {
    let lab = lab();
    lab.file(
        "layers/web/pods/api.yaml",
        &WEB.replace("name: web", "name: api")
            .replace("{{ port }}", "9000"),
    );
    ran(&lab);
    assert!(lab
        .read(".lab/out/a/etc/nftables.d/lab-pods.nft")
        .ends_with("tcp dport { 8080, 9000 } accept\n"));
    lab.remove("layers/web/pods/api.yaml")
        .remove("layers/web/pods/web.yaml.j2");
    ran(&lab);
    assert!(!lab.join(".lab/out/a/etc/nftables.d").exists());
    assert!(!lab.read(".lab/out/a.manifest").contains("nftables"));
}

#[test]
fn the_pod_user_and_shipped_images_are_inputs() {
    let lab = lab();
    lab.file(
        "lab.toml",
        &TOML.replace("[facts]", "[settings]\npod_user = \"apps\"\n\n[facts]"),
    );
    assert_eq!(
        ran(&lab),
        strs(&[
            "a: output `etc/containers/systemd/users/web.kube`",
            "a: render `etc/containers/systemd/pgdb.kube`",
            "a: render `etc/containers/systemd/pgdb.yaml`",
            "a: render `etc/containers/systemd/users/web.kube`",
            "a: render `etc/containers/systemd/users/web.yaml`",
            "a: render `etc/nftables.d/lab-pods.nft`",
            "b: output `etc/containers/systemd/users/web.kube`",
            "b: render `etc/containers/systemd/pgdb.kube`",
            "b: render `etc/containers/systemd/pgdb.yaml`",
            "b: render `etc/containers/systemd/users/web.kube`",
            "b: render `etc/containers/systemd/users/web.yaml`",
            "b: render `etc/nftables.d/lab-pods.nft`",
        ])
    );
    // a short name needs the image shipped: once shipped it builds, and
    // taking it away is noticed by the next build (not "up to date")
    lab.file("images/web.tar", "");
    lab.file(
        "layers/web/pods/web.yaml.j2",
        &WEB.replace("localhost/web", "web"),
    );
    ran(&lab);
    assert!(lab
        .read(".lab/out/a/etc/containers/systemd/users/web.yaml")
        .contains("image: \"localhost/web:latest\""));
    lab.remove("images/web.tar");
    let (msg, at, _) = error_of(&lab, "a");
    assert_eq!(
        msg,
        "image `web` is not shipped by the project and would be pulled from a registry"
    );
    assert_eq!(at.unwrap().to_string(), "layers/web/pods/web.yaml.j2:10:12");
}

#[test]
fn a_bad_pod_stops_its_machine_with_its_place() {
    let lab = lab();
    lab.file(
        "machines/a/pods/pgdb.yaml",
        &DB.replace(
            "        image: localhost/postgres\n",
            "        image: localhost/postgres\n        startupProbe: {}\n",
        ),
    );
    let (msg, at, hint) = error_of(&lab, "a");
    assert_eq!(msg, "`startupProbe` is not supported in a container");
    let at = at.unwrap();
    assert_eq!(at.to_string(), "machines/a/pods/pgdb.yaml:14:9");
    assert_eq!(at.line_text, "        startupProbe: {}");
    assert!(hint.unwrap().contains("podman#18332"));
    // the other machine still builds, and a's outputs stay as they were
    let (_, report) = build_with(&lab);
    assert!(report
        .machines
        .iter()
        .find(|m| m.name == "b")
        .unwrap()
        .result
        .is_ok());
    assert!(lab
        .join(".lab/out/a/etc/containers/systemd/pgdb.kube")
        .is_file());
}

#[test]
fn what_is_not_a_pod_under_pods_is_refused() {
    let lab = lab();
    lab.file("layers/web/pods/README", "notes\n");
    let (msg, _, hint) = error_of(&lab, "a");
    assert_eq!(msg, "`layers/web/pods/README` is not a pod source");
    assert_eq!(
        hint.unwrap(),
        "`pods/` at the top of a layer or machine directory holds pods only: `NAME.yaml` or `NAME.yaml.j2`"
    );
    lab.remove("layers/web/pods/README");
    lab.file("layers/web/pods/web.yaml", "x");
    let (msg, _, _) = error_of(&lab, "a");
    assert!(
        msg.ends_with(
            "`layers/web/pods/web.yaml` and `layers/web/pods/web.yaml.j2` both produce `/pods/web`"
        ),
        "{msg}"
    );
}

#[test]
fn a_layer_file_where_a_pod_writes_is_a_conflict() {
    let lab = lab();
    lab.file(
        "layers/web/etc/containers/systemd/users/web.kube",
        "[Kube]\n",
    );
    let (msg, _, _) = error_of(&lab, "a");
    assert!(msg.contains("`layers/web/etc/containers/systemd/users/web.kube` and `layers/web/pods/web.yaml.j2` both produce `/etc/containers/systemd/users/web.kube`"), "{msg}");
}

#[test]
fn another_unit_of_the_pods_name_is_a_conflict() {
    let lab = lab();
    lab.file("layers/web/etc/systemd/system/pgdb.service", "[Service]\n");
    let (msg, at, _) = error_of(&lab, "a");
    assert_eq!(
        msg,
        "pod `pgdb` and `layers/web/etc/systemd/system/pgdb.service` both make the unit `pgdb.service`"
    );
    assert_eq!(at.unwrap().to_string(), "layers/web/pods/pgdb.yaml");
    lab.remove("layers/web/etc/systemd/system/pgdb.service");
    lab.file(
        "machines/a/etc/containers/systemd/users/web.container",
        "[Container]\n",
    );
    let (msg, _, _) = error_of(&lab, "a");
    assert_eq!(
        msg,
        "pod `web` and `machines/a/etc/containers/systemd/users/web.container` both make the unit `web.service`"
    );
}

#[test]
fn warnings_go_through_the_reporter() {
    let lab = lab();
    lab.file(
        "layers/web/pods/pgdb.yaml",
        &DB.replace("    io.podman.annotations.init/pg: \"true\"\n", ""),
    );
    let (rec, _) = build_with(&lab);
    let w = rec.warnings.into_inner().unwrap();
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(w[0].contains("container `pg` runs its image's entrypoint as PID 1 with no init"));
    // told again when that pod is compiled again, not for another pod's edit
    lab.file("layers/web/pods/web.yaml.j2", &WEB.replace("http", "httpd"));
    let (rec, _) = build_with(&lab);
    assert_eq!(rec.warnings.into_inner().unwrap(), Vec::<String>::new());
    lab.file(
        "layers/web/pods/pgdb.yaml",
        &DB.replace("    io.podman.annotations.init/pg: \"true\"\n", "")
            .replace("localhost/postgres", "localhost/pg"),
    );
    let (rec, _) = build_with(&lab);
    assert_eq!(rec.warnings.into_inner().unwrap().len(), 2);
}
