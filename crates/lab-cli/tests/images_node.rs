//! Pods' images shipped as trees to real podman test hosts (Debian trixie,
//! podman 5; see docs/testhosts.md): only the files a node lacks cross the
//! connection (counted on the host side of the node's veth), the node's
//! image equals the source file for file, a corrupt or missing store file
//! is found by hash and sent again, a transfer killed midway leaves the old
//! image running, going back to a version sends no file, and images sharing
//! a base share its files. Needs root.
//!
//! One fleet per test binary; each test has a host of its own.

use lab_testhosts::{Host, TestHosts};
use lab_testkit::TestLab;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Hosts: 1 versions, 2 shared base, 3 corrupt store, 4 killed transfers,
/// 5 `lab rollback`, 6 a broken image.
const HOSTS: usize = 6;
const STORE: &str = "/var/lib/lab/images";

fn host(i: usize) -> Host {
    assert!(lab_testhosts::is_root(), "images_node needs root");
    lab_testhosts::shared_host(i, || TestHosts::up_podman(HOSTS))
}

fn lab(t: &TestLab, args: &[&str]) -> (i32, String, String) {
    lab_testkit::run(t, args)
}

fn sync_ok(t: &TestLab) -> String {
    let (code, out, err) = lab(t, &["sync", "-m", "h1"]);
    assert_eq!(code, 0, "lab sync failed:\n{out}\n{err}");
    out
}

fn project(h: &Host) -> TestLab {
    let t = TestLab::new();
    t.file(
        "lab.toml",
        &format!(
            "[settings]\nknown_hosts = \"{}\"\n\n[machines.h1]\nhost = \"{}\"\nidentity = \"{}\"\n",
            h.known_hosts.display(),
            h.address,
            h.identity.display()
        ),
    );
    t
}

/// A pod `name` serving `/www` of image `image` on `port`.
fn pod(t: &TestLab, name: &str, image: &str, port: u16) {
    t.file(
        &format!("machines/h1/pods/{name}.yaml"),
        &format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  containers:
  - name: httpd
    image: {image}
    command: [\"/bin/sh\", \"-c\", \"trap 'exit 0' TERM; httpd -f -p {port} -h /www & wait\"]
    ports:
    - containerPort: {port}
      hostPort: {port}
"
        ),
    );
}

fn get(h: &Host, port: u16, path: &str) -> String {
    let addr = format!("{}:{port}", h.address);
    let t0 = Instant::now();
    loop {
        let r = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect_timeout(
                &addr.parse().unwrap(),
                Duration::from_secs(2),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        })();
        match r {
            Ok(b) if b.contains("200 OK") => return b,
            r if t0.elapsed() > Duration::from_secs(20) => panic!("{addr}{path}: {r:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A layer entry: (path, kind, mode, data or link target).
type Item = (String, tar::EntryType, u32, Vec<u8>);

fn f(path: &str, data: &[u8], mode: u32) -> Item {
    (path.into(), tar::EntryType::Regular, mode, data.to_vec())
}

fn l(path: &str, target: &str) -> Item {
    (
        path.into(),
        tar::EntryType::Symlink,
        0o777,
        target.as_bytes().to_vec(),
    )
}

fn d(path: &str) -> Item {
    (path.into(), tar::EntryType::Directory, 0o755, Vec::new())
}

/// busybox and its applets, from the host's root.
fn busybox(h: &Host) -> Vec<Item> {
    let bb = std::fs::read(h.root.as_ref().unwrap().join("bin/busybox")).unwrap();
    let mut v = vec![d("bin"), f("bin/busybox", &bb, 0o755), d("tmp")];
    for a in [
        "sh",
        "httpd",
        "sleep",
        "cat",
        "ls",
        "true",
        "find",
        "sha256sum",
        "stat",
    ] {
        v.push(l(&format!("bin/{a}"), "busybox"));
    }
    v
}

fn layer(items: &[Item]) -> Vec<u8> {
    lab_testkit::tar_layer(items.iter().map(|(p, t, m, d)| (p, *t, *m, d)))
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// `images/NAME.tar`: an OCI archive of `layers`, serving /www.
fn image(t: &TestLab, name: &str, layers: &[Vec<u8>]) {
    std::fs::create_dir_all(t.join("images")).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"], "WorkingDir": "/www"},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| format!("sha256:{}", sha(l))).collect::<Vec<_>>()},
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha(&config)), "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{}", sha(l)), "size": l.len()})).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", sha(&manifest)), "size": manifest.len()}]})
        .to_string()
        .into_bytes();
    let dest = t.join(&format!("images/{name}.tar"));
    let tmp = dest.with_extension("tmp");
    let mut b = tar::Builder::new(std::fs::File::create(&tmp).unwrap());
    let mut add = |p: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, p, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &index);
    add(&format!("blobs/sha256/{}", sha(&config)), &config);
    add(&format!("blobs/sha256/{}", sha(&manifest)), &manifest);
    for l in layers {
        add(&format!("blobs/sha256/{}", sha(l)), l);
    }
    b.finish().unwrap();
    drop(b);
    std::fs::rename(&tmp, &dest).unwrap();
}

/// Bytes that went from this host to the node so far (its veth).
fn wire(h: &Host) -> u64 {
    let v = h.veth.as_ref().unwrap();
    std::fs::read_to_string(format!("/sys/class/net/{v}/statistics/tx_bytes"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Deterministic incompressible bytes.
fn noise(n: usize, seed: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 32);
    let mut block = Sha256::digest([seed]).to_vec();
    while out.len() < n {
        block = Sha256::digest(&block).to_vec();
        out.extend_from_slice(&block);
    }
    out.truncate(n);
    out
}

/// The tree's full ID on the node from a note `(0123456789ab)`.
fn tree_id(h: &Host, out: &str, name: &str) -> String {
    let at = out
        .find(&format!("image localhost/{name}:latest ("))
        .unwrap_or_else(|| panic!("no note for {name}: {out}"));
    let short = &out[at..].split_once('(').unwrap().1[..12];
    let ls = h.run(&format!("ls {STORE}/roots")).unwrap();
    ls.lines()
        .find(|l| l.starts_with(short))
        .unwrap_or_else(|| panic!("{short} not in {ls}"))
        .to_string()
}

/// The node's assembled tree `id` and the image podman made of it, as
/// (path -> kind mode uid gid target sha256): what `lab` unpacked.
/// What a tree listing below the current directory prints (see
/// [`listing`]).
const LIST: &str = "find . -mindepth 1 -printf '%P\\t%y\\t%m\\t%U\\t%G\\t%l\\n' && \
                    find . -type f -exec sha256sum {} + | sed 's/^/sha /'";

/// A tree as [`LIST`] printed it: path -> kind, mode, owner, link, sha256.
fn listing(list: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut shas = BTreeMap::new();
    for line in list.lines() {
        if let Some(rest) = line.strip_prefix("sha ") {
            let (s, p) = rest.split_once("  ./").unwrap();
            shas.insert(p.to_string(), s.to_string());
        } else {
            let (p, rest) = line.split_once('\t').unwrap();
            m.insert(p.to_string(), rest.to_string());
        }
    }
    for (p, v) in m.iter_mut() {
        v.push('\t');
        v.push_str(shas.get(p).map_or("", String::as_str));
    }
    m
}

/// The tree `id` as the node's store assembled it.
fn node_tree(h: &Host, id: &str) -> BTreeMap<String, String> {
    listing(&h.run(&format!("cd {STORE}/roots/{id} && {LIST}")).unwrap())
}

/// The files of the pod user's podman image `name` (read in the user's
/// namespace: owners as the image has them).
fn image_tree(h: &Host, name: &str) -> BTreeMap<String, String> {
    let script = format!(
        "m=$(podman image mount {name}) && cd \"$m\" && {LIST}; r=$?; \
         podman image unmount {name} >/dev/null; exit $r"
    );
    listing(
        &h.podman(&format!(
            "unshare sh -c '{}'",
            script.replace('\'', "'\\''")
        ))
        .unwrap(),
    )
}

/// The pod user's podman image `name`: its config without labels, and
/// its number of layers.
fn image_config(h: &Host, name: &str) -> (serde_json::Value, usize) {
    let out = h
        .podman(&format!("image inspect {name} --format '{{{{json .}}}}'"))
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let mut config = v["Config"].clone();
    config.as_object_mut().unwrap().remove("Labels");
    let layers = v["RootFS"]["Layers"].as_array().map_or(0, Vec::len);
    (config, layers)
}

fn local_tree(t: &TestLab, id: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(t.join(&format!(".lab/images/trees/{id}.tree"))).unwrap();
    let tree = lab_images::Tree::parse(&text).unwrap();
    tree.entries
        .values()
        .map(|e| {
            let kind = match e.kind {
                lab_images::Kind::File => "f",
                lab_images::Kind::Dir => "d",
                lab_images::Kind::Symlink => "l",
                lab_images::Kind::Char => "c",
                lab_images::Kind::Block => "b",
                lab_images::Kind::Fifo => "p",
            };
            let mode = if e.kind == lab_images::Kind::Symlink {
                0o777
            } else {
                e.mode
            };
            (
                e.path.clone(),
                format!(
                    "{kind}\t{mode:o}\t{}\t{}\t{}\t{}",
                    e.uid,
                    e.gid,
                    e.target.as_deref().unwrap_or(""),
                    e.sha256.as_deref().unwrap_or("")
                ),
            )
        })
        .collect()
}

/// The version-1 image's layer of `www`: index, a file to delete, one to
/// re-mode, a link to retarget, one a later layer whites out, and 2 MB
/// that never change.
fn base_v1(h: &Host) -> Vec<Item> {
    let mut v = busybox(h);
    v.extend([
        d("www"),
        f("www/index.html", b"version 1\n", 0o644),
        f("www/gone.txt", b"deleted in v2\n", 0o644),
        f("www/mode.txt", b"mode\n", 0o644),
        f("www/whited.txt", b"whited out in v2\n", 0o644),
        f("www/other.txt", b"other\n", 0o644),
        l("www/link.txt", "index.html"),
        d("data"),
        f("data/big", &noise(2 << 20, 1), 0o644),
    ]);
    v
}

#[test]
fn versions_ship_only_changed_files_and_the_pod_runs_them_and_going_back_sends_none() {
    let h = host(1);
    let t = project(&h);
    image(&t, "web", &[layer(&base_v1(&h))]);
    pod(&t, "web", "web", 8080);
    let w0 = wire(&h);
    let out = sync_ok(&t);
    let first = wire(&h) - w0;
    assert!(out.contains("loaded image localhost/web:latest"), "{out}");
    assert!(get(&h, 8080, "/").contains("version 1"));
    let v1 = tree_id(&h, &out, "web");
    assert_eq!(node_tree(&h, &v1), local_tree(&t, &v1));
    assert_eq!(image_tree(&h, "localhost/web:latest"), local_tree(&t, &v1));
    let (config1, layers1) = image_config(&h, "localhost/web:latest");
    assert!(first > 2 << 20, "the first image crossed in {first} bytes");
    // what a sync of one small file costs on the wire (the executor, SSH):
    // the yardstick for the image changes below
    t.file("machines/h1/etc/marker", "1\n");
    let w0 = wire(&h);
    sync_ok(&t);
    let plain = wire(&h) - w0;

    // v2: one file changed, one added, one deleted, one mode change, a
    // link retargeted (in a rebuilt base layer), one whited out by a
    // second layer
    let mut base2: Vec<Item> = base_v1(&h)
        .into_iter()
        .filter(|i| i.0 != "www/gone.txt")
        .map(|mut i| {
            match i.0.as_str() {
                "www/index.html" => i.3 = b"version 2\n".to_vec(),
                "www/mode.txt" => i.2 = 0o600,
                "www/link.txt" => i.3 = b"other.txt".to_vec(),
                _ => {}
            }
            i
        })
        .collect();
    base2.push(f("www/new.txt", b"new in v2\n", 0o644));
    let top = vec![f("www/.wh.whited.txt", b"", 0o644)];
    image(&t, "web", &[layer(&base2), layer(&top)]);
    let w0 = wire(&h);
    let out = sync_ok(&t);
    let second = wire(&h) - w0;
    assert!(
        out.contains("restart web.service") || out.contains("restart of pods/web.service"),
        "{out}"
    );
    let v2 = tree_id(&h, &out, "web");
    let node = node_tree(&h, &v2);
    assert_eq!(node, local_tree(&t, &v2));
    // podman's image of v2 is v1's plus a layer of what changed, and
    // equals v2 file for file, its config as v1's
    assert!(
        out.contains("sent, a layer over the previous version"),
        "{out}"
    );
    assert_eq!(image_tree(&h, "localhost/web:latest"), node);
    assert_eq!(
        image_config(&h, "localhost/web:latest"),
        (config1, layers1 + 1),
        "{out}\n{}",
        h.podman("history localhost/web:latest").unwrap_or_default()
    );
    assert!(!node.contains_key("www/gone.txt") && !node.contains_key("www/whited.txt"));
    assert!(
        node["www/mode.txt"].starts_with("f\t600"),
        "{}",
        node["www/mode.txt"]
    );
    assert!(node["www/link.txt"].contains("other.txt"));
    // only the changed files' bytes: index, new and the re-moded file (its
    // store key has its mode); not busybox, not the 2 MB
    assert!(out.contains(": 3 of "), "{out}");
    assert!(
        second < 64 << 10,
        "{second} bytes crossed for a 3-file change"
    );
    assert!(get(&h, 8080, "/").contains("version 2"));
    assert!(get(&h, 8080, "/new.txt").contains("new in v2"));
    eprintln!("wire: first image {first} bytes, plain sync {plain}, 3-file change {second}");

    // back to v1: the node still has it; no file is sent
    image(&t, "web", &[layer(&base_v1(&h))]);
    let w0 = wire(&h);
    let out = sync_ok(&t);
    let back = wire(&h) - w0;
    assert!(out.contains("no file sent"), "{out}");
    assert!(
        back < plain + (24 << 10),
        "{back} bytes to go back (a plain sync: {plain})"
    );
    assert!(get(&h, 8080, "/").contains("version 1"));
}

#[test]
fn two_images_sharing_a_base_share_its_files_on_the_node() {
    let h = host(2);
    let t = project(&h);
    let mut a = base_v1(&h);
    a.push(f("www/who", b"a\n", 0o644));
    let mut b = base_v1(&h);
    b.push(f("www/who", b"b\n", 0o644));
    image(&t, "aa-img", &[layer(&a)]);
    image(&t, "bb-img", &[layer(&b)]);
    pod(&t, "apod", "aa-img", 8081);
    pod(&t, "bpod", "bb-img", 8082);
    let out = sync_ok(&t);
    assert!(get(&h, 8081, "/who").contains('a'));
    assert!(get(&h, 8082, "/who").contains('b'));
    // the second image sent only its own file
    assert!(
        out.contains("bb-img:latest") && out.contains(": 1 of "),
        "{out}"
    );
    let big = sha(&noise(2 << 20, 1));
    let links = h
        .run(&format!("stat -c %h {STORE}/store/{big}.0644.0.0"))
        .unwrap();
    // the store's file and both trees' are one inode
    assert_eq!(links.trim(), "3", "{out}");

    // `lab images` says so: two names, one version each, the base shared
    let (code, out, err) = lab(&t, &["images", "-m", "h1", "--json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let images = v["machines"]["h1"]["images"].as_array().unwrap();
    assert_eq!(images.len(), 2, "{out}");
    for i in images {
        assert_eq!(i["user"], "pods", "{out}");
        let versions = i["versions"].as_array().unwrap();
        assert_eq!(versions.len(), 1, "{out}");
        assert_eq!(versions[0]["current"], true);
        let (bytes, shared) = (
            versions[0]["bytes"].as_u64().unwrap(),
            versions[0]["shared_bytes"].as_u64().unwrap(),
        );
        assert!(shared >= 2 << 20 && bytes - shared == 2, "{out}");
    }
    let (code, text, _) = lab(&t, &["images", "-m", "h1"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("localhost/aa-img:latest") && text.contains("localhost/bb-img:latest"),
        "{text}"
    );
}

#[test]
fn a_corrupt_or_missing_store_file_is_found_and_sent_again() {
    let h = host(3);
    let t = project(&h);
    image(&t, "web", &[layer(&base_v1(&h))]);
    pod(&t, "web", "web", 8080);
    sync_ok(&t);
    let big = sha(&noise(2 << 20, 1));
    let other = sha(b"other\n");
    // one file corrupted in place, one gone
    h.run(&format!(
        "printf X | dd of={STORE}/store/{big}.0644.0.0 bs=1 seek=100 conv=notrunc 2>/dev/null && \
         rm {STORE}/store/{other}.0644.0.0"
    ))
    .unwrap();
    let mut v2 = base_v1(&h);
    v2.push(f("www/v2", b"two\n", 0o644));
    image(&t, "web", &[layer(&v2)]);
    let out = sync_ok(&t);
    assert!(get(&h, 8080, "/v2").contains("two"));
    // both were sent again, and the node holds them whole
    let sums = h
        .run(&format!(
            "cd {STORE}/store && sha256sum {big}.0644.0.0 {other}.0644.0.0"
        ))
        .unwrap();
    assert!(
        sums.contains(&format!("{big} ")) && sums.contains(&format!("{other} ")),
        "{sums}\n{out}"
    );
    // and what the container serves is whole
    let served = get(&h, 8080, "/other.txt");
    assert!(served.ends_with("other\n"), "{served}");
}

/// `lab sync` killed while the node receives a new version's 2 MB file
/// (the link slowed to 4 Mbit/s), at several points: the node serves the
/// old version and can start it again; the next sync completes.
#[test]
fn a_transfer_killed_midway_keeps_the_old_image_and_the_next_sync_completes() {
    let h = host(4);
    let t = project(&h);
    image(&t, "web", &[layer(&base_v1(&h))]);
    pod(&t, "web", "web", 8080);
    sync_ok(&t);
    let mut v2 = base_v1(&h);
    v2.push(f("www/big2", &noise(2 << 20, 2), 0o644));
    v2.push(f("www/v2", b"two\n", 0o644));
    image(&t, "web", &[layer(&v2)]);
    let veth = h.veth.clone().unwrap();
    let tc = |args: &str| {
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("tc qdisc {args}"))
            .status()
            .unwrap()
            .success();
        assert!(ok, "tc qdisc {args}");
    };
    tc(&format!(
        "add dev {veth} root tbf rate 4mbit burst 32kbit latency 400ms"
    ));
    // (how much of the file has arrived: the largest file received)
    let received = || -> u64 {
        h.run(&format!(
            "find {STORE}/incoming -type f -printf '%s\\n' 2>/dev/null | sort -n | tail -1"
        ))
        .map(|s| s.trim().parse().unwrap_or(0))
        .unwrap_or(0)
    };
    for at in [1u64, 1 << 20] {
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("lab"))
            .current_dir(t.path())
            .env("NO_COLOR", "1")
            .env("LAB_SSH_MULTIPLEX", "0")
            .args(["sync", "-m", "h1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while received() < at {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the transfer never reached {at} bytes"
            );
            assert!(child.try_wait().unwrap().is_none(), "the sync ended first");
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // the old version serves, and starts again
        assert!(get(&h, 8080, "/").contains("version 1"));
        h.user_systemctl("restart web.service").unwrap();
        assert!(get(&h, 8080, "/").contains("version 1"));
    }
    tc(&format!("del dev {veth} root"));
    let out = sync_ok(&t);
    assert!(out.contains("loaded image localhost/web:latest"), "{out}");
    assert!(get(&h, 8080, "/v2").contains("two"));
}

/// `lab rollback` takes the pods' images back with the generation: the
/// pod runs the old version again, and no file crosses the connection.
#[test]
fn lab_rollback_runs_the_old_version_and_sends_no_file() {
    let h = host(5);
    let t = project(&h);
    image(&t, "web", &[layer(&base_v1(&h))]);
    pod(&t, "web", "web", 8080);
    t.file("machines/h1/etc/marker", "1\n");
    sync_ok(&t);
    assert!(get(&h, 8080, "/").contains("version 1"));
    // a plain sync's cost, for scale
    t.file("machines/h1/etc/marker", "2\n");
    let w0 = wire(&h);
    sync_ok(&t);
    let plain = wire(&h) - w0;

    let mut v2 = base_v1(&h);
    v2.retain(|i| i.0 != "www/index.html");
    v2.push(f("www/index.html", b"version 2\n", 0o644));
    image(&t, "web", &[layer(&v2)]);
    t.file("machines/h1/etc/marker", "3\n");
    sync_ok(&t);
    assert!(get(&h, 8080, "/").contains("version 2"));

    let w0 = wire(&h);
    let (code, out, err) = lab(&t, &["rollback", "-m", "h1"]);
    let back = wire(&h) - w0;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("back on version") && out.contains("no file sent"),
        "{out}"
    );
    assert!(out.contains("restarted pods/web.service"), "{out}");
    assert!(get(&h, 8080, "/").contains("version 1"));
    assert!(
        back < plain + (24 << 10),
        "{back} bytes for the rollback (a plain sync: {plain})"
    );
    // and forward again: the node has v2 still
    let out = sync_ok(&t);
    assert!(out.contains("no file sent"), "{out}");
    assert!(get(&h, 8080, "/").contains("version 2"));
}

/// An image with an entry leaving its root fails the sync naming the
/// archive, its layer and the entry; nothing reaches the node's store.
#[test]
fn a_broken_image_fails_the_sync_naming_it() {
    let h = host(6);
    let t = project(&h);
    let mut b = tar::Builder::new(Vec::new());
    let mut hd = tar::Header::new_gnu();
    hd.set_entry_type(tar::EntryType::Regular);
    hd.set_size(1);
    hd.set_mode(0o644);
    hd.set_uid(0);
    hd.set_gid(0);
    // (the tar crate refuses to write `..`: put it in the header by hand)
    hd.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"../etc/passwd");
    hd.set_cksum();
    b.append(&hd, &b"x"[..]).unwrap();
    image(&t, "web", &[b.into_inner().unwrap()]);
    pod(&t, "web", "web", 8080);
    let (code, out, err) = lab(&t, &["sync", "-m", "h1"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("images/web.tar") && err.contains("../etc/passwd") && err.contains("layer"),
        "{err}"
    );
    assert_eq!(
        h.run(&format!("ls {STORE}/store 2>/dev/null | wc -l"))
            .unwrap()
            .trim(),
        "0"
    );
}
