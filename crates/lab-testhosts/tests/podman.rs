//! The podman flavor: a rootless Quadlet `.kube` pod of the pod user runs
//! in a real nspawn host, from a local OCI archive, and answers HTTP from the
//! machine's side; a memory cap is a real cgroup limit. Needs root.

use lab_testhosts::{Host, OciImage, TestHosts};
use std::io::{Read, Write};
use std::process::Stdio;

fn require_root(test: &str) {
    assert!(
        lab_testhosts::is_root(),
        "{test} needs root (overlay mounts, network namespaces, systemd-nspawn)"
    );
}

/// Send `data` to `cmd` on the host as its stdin; stdout on success.
fn run_with_input(host: &Host, cmd: &str, data: &[u8]) -> String {
    let mut child = host
        .ssh_command()
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ssh");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn http_get(addr: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

#[test]
fn a_rootless_kube_pod_serves_http_and_a_capped_host_is_capped() {
    require_root("a_rootless_kube_pod_serves_http_and_a_capped_host_is_capped");
    let fleet = TestHosts::builder()
        .podman()
        .memory_max(2, "512M")
        .up(2)
        .expect("boot 2 podman hosts");
    let host = &fleet.hosts()[0];
    assert_eq!(host.pod_user.as_deref(), Some("pods"));
    assert_eq!(fleet.hosts()[1].memory_max, Some(512 << 20));
    assert_eq!(fleet.hosts()[0].memory_max, None);

    let root = host.root.as_ref().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("web.tar");
    let id = OciImage::new("localhost/web:1")
        .busybox(root.join("bin/busybox"))
        .file("/www/index.html", b"hello from a pod\n", 0o644)
        .cmd(&["/bin/httpd", "-f", "-p", "8080", "-h", "/www"])
        .write(&archive)
        .unwrap();
    let loaded = run_with_input(
        host,
        "cd / && P='runuser -u pods -- env -i PATH=/usr/bin:/bin XDG_RUNTIME_DIR=/run/user/1000 HOME=/home/pods podman' && $P load -q && $P image inspect --format '{{.Id}}' localhost/web:1",
        &std::fs::read(&archive).unwrap(),
    );
    assert!(loaded.contains(&id), "image id {id} not in {loaded}");

    host.run(
        "set -e; mkdir -p /etc/containers/systemd/users
cat > /etc/containers/systemd/users/web.yaml <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  containers:
  - name: httpd
    image: localhost/web:1
    ports:
    - containerPort: 8080
      hostPort: 8080
EOF
cat > /etc/containers/systemd/users/web.kube <<'EOF'
[Unit]
ConditionUser=pods
[Kube]
Yaml=web.yaml
EOF
systemctl --user -M pods@ daemon-reload
systemctl --user -M pods@ start web.service",
    )
    .expect("start the pod");
    let body = http_get(&format!("{}:8080", host.address)).expect("HTTP to the pod");
    assert!(body.contains("hello from a pod"), "{body}");

    // the capped host: its cgroup says 512 MiB
    let capped = &fleet.hosts()[1];
    let cg = std::fs::read_to_string(fleet.state_dir().join("hosts/2/cgroups")).unwrap();
    let limits: Vec<u64> = cg
        .lines()
        .filter_map(|d| {
            std::fs::read_to_string(format!("{d}/memory.limit_in_bytes"))
                .or_else(|_| std::fs::read_to_string(format!("{d}/memory.max")))
                .ok()
        })
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    assert_eq!(limits, vec![512 << 20], "{} cgroups: {cg}", capped.name);
}
