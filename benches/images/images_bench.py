#!/usr/bin/env python3
"""Container images shipped as trees (issue 16): a realistic ~130 MB image
(Debian bookworm minbase's /usr/bin, /usr/sbin, /usr/lib and /etc, plus a
busybox httpd serving /www) as an OCI archive, then the same image rebuilt
with one 4 KB file changed (a new layer digest, as a rebuild gives).

Side by side, on one podman test host (booted here, torn down at the end):

- lab: `lab sync` of the first version, of the rebuilt one, and `lab
  rollback` to the first: bytes that crossed the node's veth (host side,
  everything: SSH, commands, files), time from the start of the command to
  the pod serving the new version over HTTP, and the peak resident memory
  of the processes the apply started on the node (sampled every 20 ms with
  `ps`; the pod's own processes excluded);
- `cat image.tar | ssh podman load` of the rebuilt image (what lab did
  before, and what `podman image scp` does: save, ssh, load);
- rsync of the OCI layouts (first, then rebuilt) when the node has rsync.

Only reports; no figure is a pass/fail. Run as root:

    cargo build --release -p lab-cli
    python3 benches/images/images_bench.py [--json results.json]
"""

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "testhosts")
BASE = "/var/cache/lab-testhosts/base-bookworm"


def fleet(name, verb, n=None):
    env = dict(os.environ, LAB_TESTHOSTS_NAME=name, LAB_TESTHOSTS_FLAVOR="podman")
    args = [SCRIPT, verb] + ([str(n)] if n else [])
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL)
    if verb == "up":
        return json.loads(subprocess.run([SCRIPT, "inventory"], env=env, check=True,
                                         capture_output=True, text=True).stdout)


def sha_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def layer(path, busybox, index):
    """The image's one layer, written to `path` (streamed)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for top in ("etc", "usr/bin", "usr/sbin", "usr/lib"):
            t.add(os.path.join(BASE, top), arcname=top)
        for link, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"),
                             ("lib64", "usr/lib64")):
            if os.path.lexists(os.path.join(BASE, link)):
                ti = tarfile.TarInfo(link)
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, target, 0o777
                t.addfile(ti)
        if os.path.isdir(os.path.join(BASE, "usr/lib64")):
            t.add(os.path.join(BASE, "usr/lib64"), arcname="usr/lib64")
        for d in ("app", "www", "tmp"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            t.addfile(ti)
        t.add(busybox, arcname="app/busybox")
        ti = tarfile.TarInfo("www/index.html")
        ti.size, ti.mode = len(index), 0o644
        import io
        t.addfile(ti, io.BytesIO(index))


def oci(dest_tar, layout_dir, busybox, index):
    """The image as an OCI archive `dest_tar` and an OCI layout directory."""
    os.makedirs(os.path.join(layout_dir, "blobs", "sha256"), exist_ok=True)
    tmp = os.path.join(layout_dir, "layer.tmp")
    layer(tmp, busybox, index)
    ld = sha_file(tmp)
    size = os.path.getsize(tmp)
    os.replace(tmp, os.path.join(layout_dir, "blobs", "sha256", ld))
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Env": ["PATH=/usr/bin:/bin:/app"], "Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + ld]}}).encode()
    cd = hashlib.sha256(config).hexdigest()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": "sha256:" + cd, "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                       "digest": "sha256:" + ld, "size": size}]}).encode()
    md = hashlib.sha256(manifest).hexdigest()
    index_json = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + md,
        "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "localhost/web:built"}}]}).encode()
    for name, data in ((cd, config), (md, manifest)):
        open(os.path.join(layout_dir, "blobs", "sha256", name), "wb").write(data)
    open(os.path.join(layout_dir, "index.json"), "wb").write(index_json)
    open(os.path.join(layout_dir, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
    with tarfile.open(dest_tar + ".tmp", "w", format=tarfile.PAX_FORMAT) as t:
        for n in ("oci-layout", "index.json"):
            t.add(os.path.join(layout_dir, n), arcname=n)
        for b in (cd, md, ld):
            t.add(os.path.join(layout_dir, "blobs", "sha256", b), arcname="blobs/sha256/" + b)
    os.replace(dest_tar + ".tmp", dest_tar)
    return size


def tx(veth):
    return int(open(f"/sys/class/net/{veth}/statistics/tx_bytes").read())


def wait_http(addr, port, want, t0, timeout=120):
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
        time.sleep(0.01)
    raise RuntimeError(f"{addr}:{port} did not answer {want!r}")


class Sampler:
    """Peak RSS (KiB) on the node of processes that were not there when
    it started: one ssh running a `ps` loop, which writes its samples to a
    file on the node (read when it stops: its traffic is not the sync's)."""

    def __init__(self, ssh):
        prog = ("rm -f /run/ib-samples; base=$(ps -e -o pid= | tr -d ' ' | sort); "
                "while [ ! -e /run/ib-stop ]; do ps -e -o pid=,rss=,comm= | "
                "while read -r p r c; do echo \"$p $r $c\"; done; echo ---; sleep 0.02; done "
                ">>/run/ib-samples; "
                "rm -f /run/ib-stop; echo \"base $base\" | tr '\\n' ' ' >>/run/ib-samples")
        self.p = subprocess.Popen(ssh + [prog], stdout=subprocess.DEVNULL)
        self.ssh = ssh
        time.sleep(0.5)

    def stop(self):
        subprocess.run(self.ssh + ["touch /run/ib-stop"], check=True)
        self.p.wait()
        out = subprocess.run(self.ssh + ["cat /run/ib-samples"], check=True,
                             capture_output=True, text=True).stdout
        base_line = out[out.rfind("base "):]
        base = set(base_line.split()[1:])
        tools = {"tar", "sha256sum", "cp", "xargs", "find", "sort", "grep", "sed", "mv", "rm",
                 "flock", "cat", "cut", "tac", "comm", "runuser", "env", "dash"}
        peak_sum, peak_one, who, peak_tools = 0, 0, "", 0
        for snap in out[:out.rfind("base ")].split("---"):
            s = t = 0
            for line in snap.strip().splitlines():
                f = line.split(None, 2)
                if len(f) < 3 or f[0] in base or f[2] in ("ps", "sleep", "sshd", "sshd-session", "sh", "bash"):
                    continue
                s += int(f[1])
                if f[2] in tools:
                    t += int(f[1])
                if int(f[1]) > peak_one:
                    peak_one, who = int(f[1]), f[2]
            peak_sum = max(peak_sum, s)
            peak_tools = max(peak_tools, t)
        # (sum: everything the apply started, the new pod's processes and
        # podman included; tools: lab's own sh/tar/sha256sum/cp/...)
        return {"peak_sum_kib": peak_sum, "peak_process_kib": peak_one, "peak_process": who,
                "peak_lab_tools_kib": peak_tools}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lab", default=os.path.join(REPO, "target", "release", "lab"))
    ap.add_argument("--random-page", action="store_true",
                    help="the changed 4 KB file is random bytes (incompressible)")
    ap.add_argument("--fleet", default="ib")
    ap.add_argument("--json")
    a = ap.parse_args()
    inv = fleet(a.fleet, "up", 1)
    res = {}
    work = tempfile.mkdtemp(prefix="images-bench-")
    try:
        host = inv["hosts"][0]
        addr, veth = host["address"], host["veth"]
        ssh = ["ssh", "-F", "/dev/null", "-i", host["identity"], "-o",
               f"UserKnownHostsFile={host['known_hosts']}", "-o", "BatchMode=yes", f"root@{addr}"]
        busybox = os.path.join(host["root"], "bin/busybox")
        proj = os.path.join(work, "lab")
        os.makedirs(os.path.join(proj, "images"))
        os.makedirs(os.path.join(proj, "machines/h1/pods"))
        open(os.path.join(proj, "lab.toml"), "w").write(
            f'[settings]\nknown_hosts = "{host["known_hosts"]}"\n\n[machines.h1]\n'
            f'host = "{addr}"\nidentity = "{host["identity"]}"\n')
        open(os.path.join(proj, "machines/h1/pods/web.yaml"), "w").write(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  annotations:\n"
            "    io.podman.annotations.init/httpd: \"true\"\nspec:\n  containers:\n  - name: httpd\n"
            "    image: web\n    command: [\"/app/busybox\", \"httpd\", \"-f\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
            "    ports:\n    - containerPort: 8080\n      hostPort: 8080\n")
        # (the changed file: `x` padding, or with --random-page bytes that
        # do not compress, the worst case for the gzip'd stream)
        fill = (lambda: os.urandom(4096 - 10)) if a.random_page else (lambda: b"x" * (4096 - 10))
        pages = [(b"version %d\n" % v) + fill() for v in (1, 2)]
        tars, layouts, sizes = [], [], []
        for i, page in enumerate(pages):
            tars.append(os.path.join(work, f"v{i + 1}.tar"))
            layouts.append(os.path.join(work, f"layout-v{i + 1}"))
            sizes.append(oci(tars[-1], layouts[-1], busybox, page))
        res["image"] = {"layer_bytes": sizes[0], "archive_bytes": os.path.getsize(tars[0])}
        dest = os.path.join(proj, "images", "web.tar")

        def step(name, args, want):
            s = Sampler(ssh)
            w0, t0 = tx(veth), time.monotonic()
            out = subprocess.run([a.lab] + args, cwd=proj, capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"{name}: {out.stdout}{out.stderr}")
            # (what lab's command put on the link; the HTTP polls that
            # follow are the bench's own)
            sent = tx(veth) - w0
            command_ms = round((time.monotonic() - t0) * 1000)
            serving = wait_http(addr, 8080, want, t0)
            mem = s.stop()
            res[name] = {"wire_bytes": sent, "serving_ms": round(serving * 1000),
                         "command_ms": command_ms, "node_memory": mem,
                         "notes": [l for l in out.stdout.splitlines() if "image" in l]}
            print(name, json.dumps(res[name]), flush=True)

        # (a file of the machine says the version, so each sync makes a
        # generation: an image-only change makes none, and `lab rollback`
        # goes back by generations)
        os.makedirs(os.path.join(proj, "machines/h1/etc"))
        marker = os.path.join(proj, "machines/h1/etc/web-version")
        shutil.copy(tars[0], dest)
        open(marker, "w").write("1\n")
        step("lab_first", ["sync", "-m", "h1"], "version 1")
        shutil.copy(tars[1], dest)
        open(marker, "w").write("2\n")
        step("lab_one_file_changed", ["sync", "-m", "h1"], "version 2")
        step("lab_rollback", ["rollback", "-m", "h1"], "version 1")

        # by hand: the whole archive into podman load (podman image scp's way)
        pm = ("cd / && runuser -u pods -- env -i PATH=/usr/bin:/bin HOME=/home/pods "
              "XDG_RUNTIME_DIR=/run/user/$(id -u pods) podman")
        w0, t0 = tx(veth), time.monotonic()
        with open(tars[1], "rb") as f:
            subprocess.run(ssh + [f"{pm} load -q"], stdin=f, check=True, capture_output=True)
        res["ssh_podman_load_rebuilt"] = {"wire_bytes": tx(veth) - w0,
                                          "load_ms": round((time.monotonic() - t0) * 1000)}
        print("ssh_podman_load_rebuilt", res["ssh_podman_load_rebuilt"], flush=True)

        has = subprocess.run(ssh + ["command -v rsync"], capture_output=True).returncode == 0
        if has:
            rs = ["rsync", "-a", "-e", " ".join(ssh[:-1])]
            subprocess.run(rs + [layouts[0] + "/", f"root@{addr}:/tmp/layout/"], check=True)
            w0 = tx(veth)
            subprocess.run(rs + ["--delete", layouts[1] + "/", f"root@{addr}:/tmp/layout/"], check=True)
            res["rsync_layout_rebuilt"] = {"wire_bytes": tx(veth) - w0}
        else:
            res["rsync_layout_rebuilt"] = "the node has no rsync"
        res["podman_image_scp"] = "not run: no podman on this host (it is save | ssh | load, as above)"
        res["commit"] = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                                       capture_output=True, text=True).stdout.strip()
        print(json.dumps(res, indent=2))
        if a.json:
            open(a.json, "w").write(json.dumps(res, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        fleet(a.fleet, "down")


if __name__ == "__main__":
    sys.exit(main())
