#!/usr/bin/env python3
"""Container machines (issue 17): figures, never a pass/fail.

Boots one test host of the `machines` flavor (scripts/testhosts), then with
a release `lab`:

- create -> first sync: `lab sync -m bN` of a container that does not exist
  yet (lab creates it, waits for it to boot, then syncs a layer with a
  unit and starts it), REPS times; also `lab machine create` alone and
  `lab machine destroy` alone;
- 50 containers: `lab machine create --no-wait` of all, until every one
  says `running`; memory per idle container (PSS of its processes); destroy
  of all;
- fan-out: one changed file + unit restart synced to N containers at once
  (`lab sync -j N`), N = 1, 10, 25, 50, interleaved with the same done by
  `rsync` + `ssh systemctl restart` fanned out with `xargs -P N`.

The containers' base is an image of the bench's project (`images/base`:
the test hosts' cached bookworm root with rsync unpacked into it), shipped
to the host by lab's first creation.

Run as root:  python3 benches/machines/machines_bench.py [--reps 20] [--many 50]
"""

import argparse
import contextlib
import json
import shlex
import signal
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB = os.path.join(ROOT, "target/release/lab")
FLEET = "mbench"
# the containers' base: an image of the bench's project (lab ships it to
# the host), the test hosts' cached bookworm root plus rsync (for the
# baseline), unpacked from Debian's packages (dpkg-deb + tar)
CACHED_BASE = os.path.join(os.environ.get("LAB_TESTHOSTS_CACHE") or "/var/cache/lab-testhosts",
                           "base-machines")
IMAGE = "base"
RSYNC_DEBS = ["rsync", "libpopt0", "libxxhash0"]


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True, **kw).stdout


def pct(xs, p):
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))
    return xs[k]


class Host:
    def __init__(self):
        env = dict(os.environ, LAB_TESTHOSTS_NAME=FLEET, LAB_TESTHOSTS_FLAVOR="machines")
        subprocess.run([os.path.join(ROOT, "scripts/testhosts"), "up", "1"], env=env, check=True,
                       capture_output=True)
        inv = json.load(open(f"/run/lab-testhosts/{FLEET}/inventory.json"))
        self.h = inv["hosts"][0]
        self.env = env

    def run(self, cmd):
        return sh(f"ssh -i {self.h['identity']} -o UserKnownHostsFile={self.h['known_hosts']} "
                  f"-o StrictHostKeyChecking=yes -o BatchMode=yes root@{self.h['address']} {shlex.quote(cmd)}")

    def down(self):
        subprocess.run([os.path.join(ROOT, "scripts/testhosts"), "down"], env=self.env,
                       capture_output=True)


def make_image(dir):
    """images/base: the cached base with rsync in it."""
    img = os.path.join(dir, "images", IMAGE)
    if os.path.isdir(img):
        return
    os.makedirs(os.path.dirname(img), exist_ok=True)
    sh(f"cp -a {shlex.quote(CACHED_BASE)} {shlex.quote(img)}")
    with tempfile.TemporaryDirectory() as debs:
        sh("apt-get download -q " + " ".join(RSYNC_DEBS), cwd=debs)
        # (not `dpkg -x`: it replaces the merged-/usr links /lib, /bin...
        # with directories)
        sh(f"for d in {debs}/*.deb; do dpkg-deb --fsys-tarfile $d | "
           f"tar -x --keep-directory-symlink -C {shlex.quote(img)}; done")
    sh(f"chroot {shlex.quote(img)} rsync --version >/dev/null")


def project(dir, h, containers, version="1"):
    s = (f"[settings]\nknown_hosts = \"{h['known_hosts']}\"\nidentity = \"{h['identity']}\"\n\n"
         f"[machines.host1]\nhost = \"{h['address']}\"\n\n")
    for c in containers:
        s += f"[machines.{c}]\non = \"host1\"\nimage = \"{IMAGE}\"\nlayers = [\"app\"]\n\n"
    open(os.path.join(dir, "lab.toml"), "w").write(s)
    d = os.path.join(dir, "layers/app/etc/systemd/system")
    os.makedirs(os.path.join(d, "multi-user.target.wants"), exist_ok=True)
    make_image(dir)
    open(os.path.join(d, "app.service"), "w").write(
        "[Unit]\nDescription=app\n# (both tools restart it many times a minute)\nStartLimitIntervalSec=0\n[Service]\nExecStart=/bin/sleep infinity\n"
        "[Install]\nWantedBy=multi-user.target\n")
    link = os.path.join(d, "multi-user.target.wants/app.service")
    if not os.path.islink(link):
        os.symlink("../app.service", link)
    os.makedirs(os.path.join(dir, "layers/app/etc/app"), exist_ok=True)
    open(os.path.join(dir, "layers/app/etc/app/version"), "w").write(version + "\n")
    open(os.path.join(dir, "lab.toml"), "a").write(
        "[[units]]\npaths = [\"/etc/app/**\"]\nunit = \"app.service\"\naction = \"restart\"\n")


class RsyncFleet:
    """The baseline: `rsync -a` of the changed tree, then `ssh systemctl
    restart app`, per container, fanned out with `xargs -P N`, through the
    host (ProxyCommand `ssh -W`), host keys as lab pinned them."""

    def __init__(self, dir, h, names):
        self.dir = dir
        self.ctl = tempfile.mkdtemp(prefix="rsb-")
        ident, kh = h["identity"], h["known_hosts"]
        host_ssh = (f"ssh -i {ident} -o UserKnownHostsFile={kh} -o StrictHostKeyChecking=yes "
                    f"-o BatchMode=yes -o ControlMaster=auto -o ControlPath={self.ctl}/host "
                    f"-o ControlPersist=120 root@{h['address']}")
        self.ssh = (f"ssh -i {ident} -o UserKnownHostsFile={dir}/.lab/machines/known_hosts "
                    f"-o StrictHostKeyChecking=yes -o BatchMode=yes -o ControlMaster=auto "
                    f"-o ControlPath={self.ctl}/%n -o ControlPersist=120 "
                    f"-o 'ProxyCommand={host_ssh} -W %h:22'")
        inv = json.loads(subprocess.run([LAB, "-C", dir, "machine", "ls", "--json"], check=True,
                                        capture_output=True, text=True).stdout)
        self.addr = {m["name"]: m["address"] for m in inv}
        self.tree = os.path.join(dir, "rsync-tree")
        os.makedirs(os.path.join(self.tree, "etc/app"), exist_ok=True)
        script = os.path.join(dir, "rsync-one.sh")
        open(script, "w").write(
            "#!/bin/sh\nset -e\n"
            f"rsync -a -e \"$SSH -o HostKeyAlias=$1\" {self.tree}/ root@$2:/\n"
            "eval \"$SSH -o HostKeyAlias=$1 root@$2 systemctl restart app.service\"\n")
        os.chmod(script, 0o755)
        self.script = script

    def run(self, names, version):
        open(os.path.join(self.tree, "etc/app/version"), "w").write(version + "\n")
        lines = "".join(f"{n} {self.addr[n]}\n" for n in names)
        t = time.monotonic()
        r = subprocess.run(["xargs", "-P", str(len(names)), "-L", "1", self.script],
                           input=lines, text=True, capture_output=True,
                           env=dict(os.environ, SSH=self.ssh))
        dt = time.monotonic() - t
        if r.returncode != 0:
            sys.exit(f"rsync fan-out failed:\n{r.stdout}\n{r.stderr}")
        return dt


def lab(dir, *args):
    t = time.monotonic()
    r = subprocess.run([LAB, "-C", dir, *args], capture_output=True, text=True)
    dt = time.monotonic() - t
    if r.returncode != 0:
        sys.exit(f"lab {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--many", type=int, default=50)
    ap.add_argument("--json")
    ap.add_argument("--keep", metavar="DIR",
                    help="use DIR as the project and leave it, the host and the containers up at the end (for profiling)")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    host = Host()
    h = host.h
    res = {}
    try:
        with (contextlib.nullcontext(a.keep) if a.keep else tempfile.TemporaryDirectory()) as dir:
            # (the first creation ships the image to the host: not timed)
            project(dir, h, ["b1"])
            t = time.monotonic()
            lab(dir, "machine", "create", "b1")
            res["first_create_with_image_shipped_s"] = round(time.monotonic() - t, 2)
            lab(dir, "machine", "destroy", "b1", "--yes")
            print(res, flush=True)
            # create -> first sync done, and create / destroy alone
            first, create, destroy = [], [], []
            for i in range(a.reps):
                project(dir, h, ["b1"])
                first.append(lab(dir, "sync", "-m", "b1"))
                lab(dir, "machine", "destroy", "b1", "--yes")
                create.append(lab(dir, "machine", "create", "b1"))
                destroy.append(lab(dir, "machine", "destroy", "b1", "--yes"))
            for k, xs in [("create_to_first_sync", first), ("create", create), ("destroy", destroy)]:
                if not xs:
                    continue
                res[k] = {"p50_ms": round(statistics.median(xs) * 1000), "p99_ms": round(pct(xs, 99) * 1000),
                          "min_ms": round(min(xs) * 1000), "n": len(xs)}
                print(k, res[k], flush=True)

            # many containers
            names = [f"m{i}" for i in range(1, a.many + 1)]
            project(dir, h, names)
            t = time.monotonic()
            lab(dir, "machine", "create", "--no-wait")
            while True:
                st = host.run("for n in " + " ".join(names) + "; do systemctl -M $n is-system-running 2>/dev/null || echo x; done")
                if st.split() == ["running"] * len(names):
                    break
                failed = host.run("systemctl list-units --state=failed --no-legend --plain 'lab-machine@*' || true")
                if failed.strip() or time.monotonic() - t > 300:
                    sys.exit("containers failed or did not boot:\n" + failed +
                             host.run("journalctl -u 'lab-machine@*' --no-pager | grep -v ' systemd-nspawn' | tail -5 || true"))
                time.sleep(0.2)
            res["many_create_all_running_s"] = round(time.monotonic() - t, 2)
            time.sleep(5)
            # PSS of each container's processes (shared pages split among
            # their users: every container maps the same image files);
            # MemoryCurrent needs cgroup2's memory controller, which a
            # nested host on a hybrid machine does not have
            mem = host.run(
                "for n in " + " ".join(names) + "; do cg=$(systemctl show -p ControlGroup --value "
                "lab-machine@$n.service); d=/sys/fs/cgroup/unified$cg; [ -d $d ] || d=/sys/fs/cgroup$cg; "
                "t=0; for p in $(find $d -name cgroup.procs -exec cat {} +); do "
                "k=$(awk '/^Pss:/{print $2}' /proc/$p/smaps_rollup 2>/dev/null); t=$((t+${k:-0})); done; "
                "echo $t; done").split()
            mem = [int(x) for x in mem if x.isdigit()]
            if mem:
                res["idle_pss_per_container_mib"] = round(statistics.median(mem) / 1024, 1)
            print("many", res, flush=True)

            # fan-out: one changed file + restart to N at once, lab against
            # rsync + ssh systemctl restart fanned out with xargs -P N (both
            # through the host, both with warm shared connections: lab's
            # masters from its previous run, rsync's ssh with
            # ControlMaster=auto for the host and each container)
            rs = RsyncFleet(dir, h, names)
            lab(dir, "sync", "-j", str(a.many), *sum([["-m", n] for n in names], []))
            rs.run(names, "warm")
            fan, fan_rsync = {}, {}
            for n in [1, 10, 25, a.many]:
                sel = sum([["-m", x] for x in names[:n]], [])
                project(dir, h, names, version=f"lab{n}")
                fan[n] = round(lab(dir, "sync", "-j", str(n), *sel), 2)
                fan_rsync[n] = round(rs.run(names[:n], f"rsync{n}"), 2)
                print("fanout", n, fan[n], fan_rsync[n], flush=True)
            # every container runs the last version, restarted
            st = host.run("for n in " + " ".join(names[:a.many]) +
                          "; do systemctl -M $n is-active app.service; cat /var/lib/lab/machines/$n/root/etc/app/version; done")
            assert st.split() == ["active", f"rsync{a.many}"] * a.many, st
            res["fanout_change_restart_s"] = {"lab": fan, "rsync_xargs": fan_rsync}
            for k, f in [("lab", fan), ("rsync_xargs", fan_rsync)]:
                slope = (f[a.many] - f[1]) / (a.many - 1)
                res.setdefault("fanout_per_machine_ms", {})[k] = {
                    n: round(f[n] / n * 1000) for n in f}
                res.setdefault("fanout_marginal_ms", {})[k] = round(slope * 1000)
                res.setdefault("fanout_500_extrapolated_s", {})[k] = round(f[1] + slope * 499, 1)
            print("fanout", res["fanout_change_restart_s"], res["fanout_500_extrapolated_s"], flush=True)

            if a.keep:
                return
            t = time.monotonic()
            lab(dir, "machine", "destroy", "--yes", *names)
            res["many_destroy_per_container_ms"] = round((time.monotonic() - t) / len(names) * 1000)
            print("destroy", res["many_destroy_per_container_ms"], flush=True)
    finally:
        if not a.keep:
            host.down()
    print(json.dumps(res, indent=2))
    if a.json:
        json.dump(res, open(a.json, "w"), indent=2)


if __name__ == "__main__":
    main()
