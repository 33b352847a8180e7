#!/usr/bin/env python3
"""Pods on the node (issue 15): how fast a pod serves after `lab sync`
starts, and what a pod costs the node beyond the application itself; side
by side with doing the same by hand (`cat image | ssh podman load` and
`ssh podman kube play`).

Runs as root on the machine that runs the test hosts; boots its own podman
fleet (`LAB_TESTHOSTS_FLAVOR=podman scripts/testhosts up 1`, name `pb`) and
tears it down at the end. Only reports: no timing is a pass/fail; the exit
code is non-zero only when something did not work.

    python3 benches/pods/pods_bench.py [--lab target/release/lab] [--reps 5]
"""

import argparse
import hashlib
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "testhosts")


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True, **kw).stdout


def fleet(name, verb, n=None):
    env = dict(os.environ, LAB_TESTHOSTS_NAME=name, LAB_TESTHOSTS_FLAVOR="podman")
    args = [SCRIPT, verb] + ([str(n)] if n else [])
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL)
    if verb == "up":
        return json.loads(subprocess.run([SCRIPT, "inventory"], env=env, check=True,
                                         capture_output=True, text=True).stdout)


def oci_archive(path, busybox, ref):
    """A one-layer OCI archive: static busybox with sh, httpd, sleep."""
    def tar_bytes(add):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
            add(t)
        return buf.getvalue()

    def regular(t, name, data, mode=0o644):
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime = len(data), mode, 0
        t.addfile(ti, io.BytesIO(data))

    bb = open(busybox, "rb").read()

    def layer(t):
        for d in ("bin", "tmp"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            t.addfile(ti)
        regular(t, "bin/busybox", bb, 0o755)
        for a in ("sh", "httpd", "sleep", "echo", "mkdir"):
            ti = tarfile.TarInfo("bin/" + a)
            ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, "busybox", 0o777
            t.addfile(ti)

    lay = tar_bytes(layer)
    dig = lambda b: hashlib.sha256(b).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + dig(lay)]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": "sha256:" + dig(config), "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                       "digest": "sha256:" + dig(lay), "size": len(lay)}]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + dig(manifest),
        "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": ref}}]}).encode()

    def archive(t):
        regular(t, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        regular(t, "index.json", index)
        for b in (config, manifest, lay):
            regular(t, "blobs/sha256/" + dig(b), b)

    open(path, "wb").write(tar_bytes(archive))


def pod_yaml(name, port, version, image="localhost/web:latest"):
    serve = (f"trap 'exit 0' TERM; mkdir -p /tmp/w; echo {name} {version} > /tmp/w/index.html; "
             f"httpd -f -p {port} -h /tmp/w & wait")
    side = "trap 'exit 0' TERM; while :; do sleep 1; done & wait"
    return f"""apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  containers:
  - name: httpd
    image: {image}
    command: ["/bin/sh", "-c", {json.dumps(serve)}]
    ports:
    - containerPort: {port}
      hostPort: {port}
  - name: sidecar
    image: {image}
    command: ["/bin/sh", "-c", {json.dumps(side)}]
"""


def kube(name):
    return f"[Unit]\nConditionUser=pods\n\n[Kube]\nYaml={name}.yaml\n"


def wait_http(addr, port, want, t0, timeout=60):
    """Seconds from t0 until GET / answers with `want` in the body."""
    while time.monotonic() - t0 < timeout:
        try:
            with socket.create_connection((addr, port), timeout=1) as s:
                s.settimeout(2)
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                body = b""
                while chunk := s.recv(4096):
                    body += chunk
                if want.encode() in body:
                    return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{addr}:{port} did not answer {want!r} within {timeout} s")


class Node:
    def __init__(self, host):
        self.h = host
        base = ["ssh", "-F", "/dev/null", "-i", host["identity"], "-o",
                f"UserKnownHostsFile={host['known_hosts']}", "-o", "BatchMode=yes"]
        dest = f"root@{host['address']}"
        # (a fresh login per command, as a script doing it by hand would)
        self.plain = base + [dest]
        self.ssh = base + ["-o", "ControlMaster=auto", "-o", f"ControlPath=/tmp/pb-{host['name']}-%C",
                           "-o", "ControlPersist=60", dest]

    def run(self, cmd, data=None):
        return subprocess.run(self.ssh + [cmd], input=data, check=True, capture_output=True).stdout.decode()

    def podman(self, args, data=None):
        return self.run("cd / && runuser -u pods -- env -i PATH=/usr/bin:/bin HOME=/home/pods "
                        f"XDG_RUNTIME_DIR=/run/user/1000 podman {args}", data)

    def rss_by_kind(self):
        """Resident KiB of the node's processes: application (httpd, sh,
        sleep in containers) and everything else."""
        out = self.run("ps -e -o rss=,comm=")
        app = other = 0
        for line in out.splitlines():
            rss, comm = line.split(None, 1)
            if comm.strip() in ("httpd", "sleep", "sh", "busybox"):
                app += int(rss)
            else:
                other += int(rss)
        return app, other


def stats(xs):
    return {"median_ms": round(statistics.median(xs) * 1000), "min_ms": round(min(xs) * 1000),
            "max_ms": round(max(xs) * 1000), "runs": len(xs)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lab", default=os.path.join(REPO, "target", "release", "lab"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--pods", type=int, default=3, help="pods for the memory figure")
    ap.add_argument("--fleet", default="pb")
    ap.add_argument("--json")
    a = ap.parse_args()
    inv = fleet(a.fleet, "up", 1)
    res = {"lab": {}, "by_hand": {}, "memory": {}}
    try:
        host = inv["hosts"][0]
        node = Node(host)
        addr = host["address"]
        work = tempfile.mkdtemp(prefix="pods-bench-")
        proj = os.path.join(work, "lab")
        users = os.path.join(proj, "machines/h1/etc/containers/systemd/users")
        os.makedirs(users)
        os.makedirs(os.path.join(proj, "images"))
        archive = os.path.join(proj, "images", "web.tar")
        oci_archive(archive, os.path.join(host["root"], "bin/busybox"), "localhost/web:built")
        open(os.path.join(proj, "lab.toml"), "w").write(
            f'[settings]\nknown_hosts = "{host["known_hosts"]}"\n\n[machines.h1]\n'
            f'host = "{addr}"\nidentity = "{host["identity"]}"\n')

        def lab_sync():
            subprocess.run([a.lab, "sync", "-m", "h1"], cwd=proj, check=True, capture_output=True)

        def put(name, port, version):
            open(os.path.join(users, f"{name}.kube"), "w").write(kube(name))
            open(os.path.join(users, f"{name}.yaml"), "w").write(pod_yaml(name, port, version))

        # first sync ships the image too
        put("first", 9000, "v1")
        t0 = time.monotonic()
        lab_sync()
        res["lab"]["first_pod_with_image_load_ms"] = round(wait_http(addr, 9000, "first v1", t0) * 1000)
        new, upd = [], []
        for i in range(a.reps):
            name, port = f"new{i}", 9100 + i
            put(name, port, "v1")
            t0 = time.monotonic()
            lab_sync()
            new.append(wait_http(addr, port, f"{name} v1", t0))
        for i in range(a.reps):
            put("new0", 9100, f"v{i + 2}")
            t0 = time.monotonic()
            lab_sync()
            upd.append(wait_http(addr, 9100, f"new0 v{i + 2}", t0))
        # no-op sync (pods there, image there)
        noop = []
        for _ in range(a.reps):
            t0 = time.monotonic()
            lab_sync()
            noop.append(time.monotonic() - t0)
        res["lab"]["new_pod"] = stats(new)
        res["lab"]["updated_pod"] = stats(upd)
        res["lab"]["noop_sync"] = stats(noop)
        # clean slate for the rest: lab removes its pods
        for f in os.listdir(users):
            os.remove(os.path.join(users, f))
        lab_sync()

        # by hand: image over ssh, kube play over ssh (each a fresh ssh
        # login, as a script would do it)
        plain = node.plain

        def hand(cmd, data=None):
            subprocess.run(plain + [cmd], input=data, check=True, capture_output=True)
        pm = ("cd / && runuser -u pods -- env -i PATH=/usr/bin:/bin HOME=/home/pods "
              "XDG_RUNTIME_DIR=/run/user/1000 podman")
        node.podman("rmi -f localhost/web:latest localhost/web:built || true")
        img = open(archive, "rb").read()
        hnew, hupd = [], []
        for i in range(a.reps):
            name, port = f"hand{i}", 9200 + i
            y = pod_yaml(name, port, "v1").encode()
            t0 = time.monotonic()
            hand(f"{pm} load -q && {pm} tag localhost/web:built localhost/web:latest", img)
            hand(f"cat > /tmp/{name}.yaml && chmod 644 /tmp/{name}.yaml && {pm} kube play /tmp/{name}.yaml", y)
            hnew.append(wait_http(addr, port, f"{name} v1", t0))
        for i in range(a.reps):
            y = pod_yaml("hand0", 9200, f"v{i + 2}").encode()
            t0 = time.monotonic()
            hand(f"{pm} load -q", img)
            hand(f"cat > /tmp/hand0.yaml && {pm} kube play --replace /tmp/hand0.yaml", y)
            hupd.append(wait_http(addr, 9200, f"hand0 v{i + 2}", t0))
        res["by_hand"]["new_pod"] = stats(hnew)
        res["by_hand"]["updated_pod"] = stats(hupd)
        for i in range(a.reps):
            node.podman(f"kube down /tmp/hand{i}.yaml || true")

        # memory: N lab pods, resident memory of the node before and after
        time.sleep(2)
        app0, other0 = node.rss_by_kind()
        for i in range(a.pods):
            put(f"mem{i}", 9300 + i, "v1")
        lab_sync()
        for i in range(a.pods):
            wait_http(addr, 9300 + i, f"mem{i} v1", time.monotonic())
        time.sleep(2)
        app1, other1 = node.rss_by_kind()
        res["memory"] = {
            "pods": a.pods,
            "application_kib_per_pod": round((app1 - app0) / a.pods),
            "beyond_application_kib_per_pod": round((other1 - other0) / a.pods),
        }
        res["commit"] = sh(f"git -C {REPO} rev-parse --short HEAD").strip()
        print(json.dumps(res, indent=2))
        if a.json:
            open(a.json, "w").write(json.dumps(res, indent=2) + "\n")
        shutil.rmtree(work, ignore_errors=True)
    finally:
        fleet(a.fleet, "down")


if __name__ == "__main__":
    sys.exit(main())
