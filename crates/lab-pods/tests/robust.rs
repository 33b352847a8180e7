//! No input crashes the pod compiler: every prefix of a good pod, and the
//! good pod with any one character replaced, gives a pod or an error.

use lab_pods::{compile, Context};
use std::path::Path;

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
  annotations:
    io.podman.annotations.init/app: \"true\"
    lab.dev/rootful: \"false\"
spec:
  restartPolicy: OnFailure
  volumes:
  - name: d
    emptyDir: {}
  - name: h
    hostPath: {path: /srv, type: Directory}
  containers:
  - name: app
    image: localhost/app:1
    command: [tini, --, app]
    args: ['-v']
    env:
    - {name: A, value: \"b\"}
    ports:
    - {containerPort: 80, hostPort: 8080, protocol: TCP}
    - {containerPort: 81, hostPort: 8081, hostIP: 127.0.0.1}
    resources: {limits: {memory: 64Mi, cpu: 500m}}
    volumeMounts:
    - {name: d, mountPath: /d, readOnly: true}
    workingDir: /w
    securityContext:
      runAsUser: 1000
      capabilities: {add: [NET_ADMIN], drop: [ALL]}
";

fn try_compile(text: &str) {
    let ctx = Context {
        pod_user: "pods".into(),
        images: Default::default(),
    };
    match compile(Path::new("pods/web.yaml"), "web", text, &ctx) {
        Ok(c) => assert!(c.kube.contains("Yaml=web.yaml")),
        Err(e) => {
            // an error always names the file, and a line it can show
            assert_eq!(e.at.path, Path::new("pods/web.yaml"));
            assert!(e.at.line <= text.lines().count() + 1, "{e:?}");
        }
    }
}

#[test]
fn the_good_pod_compiles() {
    let ctx = Context {
        pod_user: "pods".into(),
        images: Default::default(),
    };
    compile(Path::new("pods/web.yaml"), "web", POD, &ctx).unwrap();
}

#[test]
fn every_prefix() {
    for (i, _) in POD.char_indices() {
        try_compile(&POD[..i]);
    }
}

#[test]
fn every_one_character_change() {
    let chars: Vec<char> = POD.chars().collect();
    for i in 0..chars.len() {
        for c in [
            ' ', ':', '-', '"', '\'', '{', '[', '\t', '#', '&', '*', '!', '|', '>', 'x', '0', '\n',
            'é',
        ] {
            let mut v = chars.clone();
            v[i] = c;
            try_compile(&v.iter().collect::<String>());
        }
    }
}

#[test]
fn odd_documents() {
    for text in [
        "---\n",
        "~\n",
        "kind: Pod\n---\nkind: Pod\n",
        "a: &x 1\nb: *x\n",
        "!!map {}\n",
        "? [a]\n: b\n",
        "kind: Pod\r\napiVersion: v1\r\n",
        "\u{feff}kind: Pod\n",
        "kind: [Pod]\n",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: a, image: localhost/a, ports: [{containerPort: 99999999999999999999}]}]}\n",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: a, image: localhost/a, resources: {limits: {memory: 99999999999999999999Ti, cpu: 99999999999999999999}}}]}\n",
    ] {
        try_compile(text);
    }
}
