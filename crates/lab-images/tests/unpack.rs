//! Images unpacked into trees: layers applied in order with their
//! whiteouts, the config kept, files in the blob store by content, and a
//! source read again only when it changed.

use lab_images::{open, Kind};
use sha2::{Digest, Sha256};
use std::path::Path;

/// One layer entry: (path, type, mode, data or link target).
type Item<'a> = (&'a str, tar::EntryType, u32, &'a [u8]);

fn layer(items: &[Item]) -> Vec<u8> {
    lab_testkit::tar_layer(items.iter().copied())
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// An OCI archive of `layers` (the second one gzipped) at `dest`.
fn archive(dest: &Path, layers: &[Vec<u8>], config: serde_json::Value) {
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut descs = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let (data, media) = if i == 1 {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            std::io::Write::write_all(&mut e, l).unwrap();
            (
                e.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        } else {
            (l.clone(), "application/vnd.oci.image.layer.v1.tar")
        };
        descs.push(serde_json::json!({"mediaType": media, "digest": format!("sha256:{}", sha(&data)), "size": data.len()}));
        blobs.push((sha(&data), data));
    }
    let config = config.to_string().into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha(&config)), "size": config.len()},
        "layers": descs,
    })
    .to_string()
    .into_bytes();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"digest": format!("sha256:{}", sha(&manifest)), "size": manifest.len()}]})
        .to_string()
        .into_bytes();
    blobs.push((sha(&config), config));
    blobs.push((sha(&manifest), manifest));
    let mut b = tar::Builder::new(std::fs::File::create(dest).unwrap());
    let mut add = |p: &str, d: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(d.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, p, d).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json", &index);
    for (s, d) in &blobs {
        add(&format!("blobs/sha256/{s}"), d);
    }
    b.finish().unwrap();
}

use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as L};

#[test]
fn layers_apply_in_order_with_whiteouts_and_the_config_is_kept() {
    let d = tempfile::tempdir().unwrap();
    let lab = lab_core::LabDir::at(&d.path().join(".lab"));
    let base = layer(&[
        ("etc/", D, 0o755, b""),
        ("etc/motd", F, 0o644, b"base\n"),
        ("etc/gone", F, 0o644, b"gone\n"),
        ("opq/", D, 0o755, b""),
        ("opq/old", F, 0o644, b"old\n"),
        ("bin/", D, 0o755, b""),
        ("bin/tool", F, 0o755, b"tool\n"),
        ("bin/link", L, 0o777, b"tool"),
        ("dir-then-file/", D, 0o755, b""),
        ("dir-then-file/child", F, 0o644, b"c\n"),
    ]);
    let top = layer(&[
        ("etc/.wh.gone", F, 0o644, b""),
        ("etc/motd", F, 0o600, b"top\n"),
        ("opq/.wh..wh..opq", F, 0o644, b""),
        ("opq/new", F, 0o644, b"new\n"),
        ("bin/link", L, 0o777, b"other"),
        ("bin/hard", H, 0o755, b"bin/tool"),
        ("dir-then-file", F, 0o644, b"now a file\n"),
        ("implied/deep/file", F, 0o4755, b"suid\n"),
    ]);
    let src = d.path().join("img.tar");
    archive(
        &src,
        &[base, top],
        serde_json::json!({"config": {"Cmd": ["/bin/tool"], "Env": ["PATH=/bin"], "WorkingDir": "/etc", "ExposedPorts": {"80/tcp": {}}}, "rootfs": {}}),
    );
    let o = open(&src, "img", &lab).unwrap();
    let t = &o.tree;
    let paths: Vec<&str> = t.entries.keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        [
            "bin",
            "bin/hard",
            "bin/link",
            "bin/tool",
            "dir-then-file",
            "etc",
            "etc/motd",
            "implied",
            "implied/deep",
            "implied/deep/file",
            "opq",
            "opq/new"
        ]
    );
    let motd = &t.entries["etc/motd"];
    assert_eq!(
        (motd.mode, motd.sha256.clone()),
        (0o600, Some(sha(b"top\n")))
    );
    assert_eq!(t.entries["bin/link"].target.as_deref(), Some("other"));
    assert_eq!(t.entries["bin/hard"].sha256, Some(sha(b"tool\n")));
    assert_eq!(t.entries["dir-then-file"].kind, Kind::File);
    assert_eq!(t.entries["implied/deep/file"].mode, 0o4755);
    assert_eq!(t.config.cmd, Some(vec!["/bin/tool".to_string()]));
    assert_eq!(t.config.working_dir.as_deref(), Some("/etc"));
    assert_eq!(t.config.exposed_ports, ["80/tcp"]);
    // each file's content is in the blob store under its hash
    for e in t.entries.values().filter(|e| e.kind == Kind::File) {
        let s = e.sha256.as_ref().unwrap();
        let b = std::fs::read(lab.image_blobs_dir().join(s)).unwrap();
        assert_eq!(&sha(&b), s);
    }
    // and the tree is cached under its ID
    assert!(lab.image_tree_path(&o.id).exists());
}

#[test]
fn a_source_is_read_again_only_when_it_changed() {
    let d = tempfile::tempdir().unwrap();
    let lab = lab_core::LabDir::at(&d.path().join(".lab"));
    let root = d.path().join("web");
    std::fs::create_dir_all(root.join("www")).unwrap();
    std::fs::write(root.join("www/index.html"), "one\n").unwrap();
    let a = open(&root, "web", &lab).unwrap();
    // the cached tree: no blob is written again
    std::fs::remove_dir_all(lab.image_blobs_dir()).unwrap();
    std::fs::create_dir_all(lab.image_blobs_dir()).unwrap();
    // (a missing blob means the cache is not whole: read again)
    let again = open(&root, "web", &lab).unwrap();
    assert_eq!(again.id, a.id);
    assert!(lab.image_blobs_dir().join(sha(b"one\n")).exists());
    std::fs::write(root.join("www/index.html"), "two\n").unwrap();
    let b = open(&root, "web", &lab).unwrap();
    assert_ne!(b.id, a.id);
    assert_eq!(b.tree.entries["www/index.html"].sha256, Some(sha(b"two\n")));
}

#[test]
fn a_name_leaving_the_image_is_refused_with_its_place() {
    let d = tempfile::tempdir().unwrap();
    let lab = lab_core::LabDir::at(&d.path().join(".lab"));
    let src = d.path().join("bad.tar");
    let mut l = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(F);
    h.set_size(1);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    // (the tar crate refuses to write `..`: put it in the header by hand)
    h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
    h.set_cksum();
    l.append(&h, &b"x"[..]).unwrap();
    archive(
        &src,
        &[l.into_inner().unwrap()],
        serde_json::json!({"config": {}}),
    );
    let e = open(&src, "bad", &lab).unwrap_err().to_string();
    assert!(
        e.contains("bad.tar") && e.contains("../escape") && e.contains("`..`"),
        "{e}"
    );
}
