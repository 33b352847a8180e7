//! Tiny local container images for tests: no registry is reachable, so a test
//! packs a static busybox (from the podman base, `/bin/busybox`) and a few
//! files into an OCI image archive that `podman load` takes.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// An OCI image archive to build: one layer, a static busybox with its
/// applet links in `/bin`, extra files, a command and a name.
///
/// ```no_run
/// # use lab_testhosts::OciImage;
/// let id = OciImage::new("localhost/web:1")
///     .busybox("/var/cache/lab-testhosts/base-podman/bin/busybox")
///     .file("/www/index.html", b"hello\n", 0o644)
///     .cmd(&["/bin/httpd", "-f", "-p", "8080", "-h", "/www"])
///     .write("images/web.tar".as_ref())?;
/// # Ok::<(), lab_testhosts::Error>(())
/// ```
///
/// The archive is byte for byte the same for the same inputs (fixed times,
/// sorted entries), so its image ID (the config digest, returned by
/// [`OciImage::write`]) is too.
#[derive(Debug, Clone)]
pub struct OciImage {
    name: String,
    busybox: Option<PathBuf>,
    files: Vec<(String, Vec<u8>, u32)>,
    cmd: Vec<String>,
}

/// Applets linked in `/bin` of the image.
const APPLETS: &[&str] = &[
    "sh", "httpd", "sleep", "cat", "echo", "ls", "wget", "true", "false", "date", "env",
];

impl OciImage {
    /// An image named `name` (use `localhost/NAME:TAG`).
    pub fn new(name: &str) -> OciImage {
        OciImage {
            name: name.to_string(),
            busybox: None,
            files: Vec::new(),
            cmd: vec!["/bin/sh".into()],
        }
    }

    /// Put this static busybox binary at `/bin/busybox` with applet links.
    pub fn busybox(mut self, path: impl Into<PathBuf>) -> Self {
        self.busybox = Some(path.into());
        self
    }

    /// Add a regular file at absolute `path`.
    pub fn file(mut self, path: &str, content: &[u8], mode: u32) -> Self {
        self.files.push((
            path.trim_start_matches('/').to_string(),
            content.to_vec(),
            mode,
        ));
        self
    }

    /// The image's command.
    pub fn cmd(mut self, cmd: &[&str]) -> Self {
        self.cmd = cmd.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Write the OCI archive to `dest` (atomically); returns the image ID
    /// podman will give it (hex sha256 of the config, without `sha256:`).
    pub fn write(&self, dest: &Path) -> Result<String> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        let layer = self.layer().map_err(io(dest))?;
        let layer_digest = hex_sha(&layer);
        let config = serde_json::json!({
            "architecture": go_arch(),
            "os": "linux",
            "config": {"Cmd": self.cmd, "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
            "created": "2026-01-01T00:00:00Z",
        })
        .to_string()
        .into_bytes();
        let config_digest = hex_sha(&config);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": format!("sha256:{config_digest}"),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": format!("sha256:{layer_digest}"),
                "size": layer.len(),
            }],
        })
        .to_string()
        .into_bytes();
        let manifest_digest = hex_sha(&manifest);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{manifest_digest}"),
                "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": self.name},
            }],
        })
        .to_string()
        .into_bytes();
        let mut out = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            out.append_data(&mut h, path, data)
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io(dest))?;
        add("index.json", &index).map_err(io(dest))?;
        add(&format!("blobs/sha256/{config_digest}"), &config).map_err(io(dest))?;
        add(&format!("blobs/sha256/{manifest_digest}"), &manifest).map_err(io(dest))?;
        add(&format!("blobs/sha256/{layer_digest}"), &layer).map_err(io(dest))?;
        let bytes = out.into_inner().map_err(io(dest))?;
        let tmp = dest.with_extension("tar.tmp");
        std::fs::write(&tmp, &bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, dest).map_err(io(dest))?;
        Ok(config_digest)
    }

    fn layer(&self) -> std::io::Result<Vec<u8>> {
        let mut t = tar::Builder::new(Vec::new());
        let dir = |t: &mut tar::Builder<Vec<u8>>, path: &str| {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            h.set_mtime(0);
            t.append_data(&mut h, path, std::io::empty())
        };
        let mut dirs: Vec<String> = vec!["bin".into(), "tmp".into()];
        for (path, _, _) in &self.files {
            let mut p = Path::new(path).parent();
            while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                dirs.push(d.display().to_string());
                p = d.parent();
            }
        }
        dirs.sort();
        dirs.dedup();
        for d in &dirs {
            dir(&mut t, d)?;
        }
        if let Some(bb) = &self.busybox {
            let data = std::fs::read(bb)?;
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            t.append_data(&mut h, "bin/busybox", &data[..])?;
            for applet in APPLETS {
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                h.set_mtime(0);
                t.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
            }
        }
        let mut files = self.files.clone();
        files.sort();
        for (path, content, mode) in &files {
            let mut h = tar::Header::new_ustar();
            h.set_size(content.len() as u64);
            h.set_mode(*mode);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            t.append_data(&mut h, path, &content[..])?;
        }
        t.into_inner()
    }
}

fn hex_sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}
