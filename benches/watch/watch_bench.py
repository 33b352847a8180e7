#!/usr/bin/env python3
"""Latency of `lab watch`, in two parts, reported as p50/p99 over 50 edits.

1. Edit-to-output on a local build (no sync), for synthetic labs of 10k and
   100k sources (benches/gen_lab.py): from just before the edited source is
   written to the moment its output under .lab/out/ holds the new content.
2. Edit-to-machine on a real systemd test host (scripts/testhosts): from
   just before a file that a `[[units]]` rule maps to `bench.service` is
   written, to the unit's own start timestamp
   (ExecMainStartTimestampMonotonic: the container shares the host's
   monotonic clock), with each cycle's phases from `lab watch --json`.

    sudo benches/watch/watch_bench.py [--quick] [--lab PATH-TO-LAB-BINARY]

Needs root for part 2 (test hosts). Timings are reported, never asserted.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import queue

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WORK = os.path.join(REPO, "benches", "work", "watch")


def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class Watch:
    """A running `lab watch --json` and its cycles."""

    def __init__(self, lab, project, args, env=None):
        self.p = subprocess.Popen(
            [lab, "watch", "--json", *args],
            cwd=project,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.q = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            try:
                self.q.put(json.loads(line))
            except json.JSONDecodeError:
                pass

    def next(self, timeout=120):
        return self.q.get(timeout=timeout)

    def drain(self, quiet=0.3):
        out = []
        while True:
            try:
                out.append(self.q.get(timeout=quiet))
            except queue.Empty:
                return out

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()


def local_part(lab, n, edits):
    proj = os.path.join(WORK, f"local-{n}")
    subprocess.run([sys.executable, os.path.join(REPO, "benches", "gen_lab.py"), proj, "--sources", str(n)],
                   check=True, stdout=subprocess.DEVNULL)
    meta = json.load(open(os.path.join(proj, "bench-meta.json")))
    src = os.path.join(proj, meta["edit"]["source"])
    out = os.path.join(proj, ".lab", "out", meta["edit"]["machine"], meta["edit"]["output"])
    subprocess.run([lab, "build", "-q"], cwd=proj, check=True)
    w = Watch(lab, proj, ["--no-sync"])
    w.next()  # the initial build
    base = open(src, "rb").read()
    lat, phases = [], []
    for i in range(edits):
        want = base + f"# edit {i}\n".encode()
        t0 = time.perf_counter()
        with open(src, "wb") as f:
            f.write(want)
        while True:
            try:
                if open(out, "rb").read() == want:
                    break
            except FileNotFoundError:
                pass
            if time.perf_counter() - t0 > 30:
                raise SystemExit(f"edit {i} never reached {out}")
            time.sleep(0.0002)
        lat.append((time.perf_counter() - t0) * 1000)
        for c in w.drain(0.15):
            if c.get("changed"):
                phases.append(c["ms"])
    w.stop()
    with open(src, "wb") as f:
        f.write(base)
    return {
        "sources": n,
        "p50_ms": round(pct(lat, 50), 1),
        "p99_ms": round(pct(lat, 99), 1),
        "min_ms": round(min(lat), 1),
        "max_ms": round(max(lat), 1),
        "runs_ms": [round(x, 1) for x in lat],
        "build_ms_p50": statistics.median([p["build"] for p in phases]) if phases else None,
        "debounce_ms_p50": statistics.median([p["debounce"] for p in phases]) if phases else None,
    }


BENCH_UNIT = """[Unit]
Description=watch benchmark

[Service]
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
"""


def remote_part(lab, edits):
    env = {**os.environ, "LAB_TESTHOSTS_NAME": "wb"}
    script = os.path.join(REPO, "scripts", "testhosts")
    subprocess.run([script, "up", "1"], check=True, env=env, stdout=subprocess.DEVNULL)
    try:
        inv = json.load(open("/run/lab-testhosts/wb/inventory.json"))
        h = inv["hosts"][0]
        proj = os.path.join(WORK, "remote")
        shutil.rmtree(proj, ignore_errors=True)
        os.makedirs(os.path.join(proj, "layers/base/etc/systemd/system/multi-user.target.wants"))
        os.makedirs(os.path.join(proj, "layers/base/etc/bench"))
        with open(os.path.join(proj, "lab.toml"), "w") as f:
            f.write(f"""[settings]
known_hosts = "{h['known_hosts']}"

[machines.h1]
host = "{h['address']}"
identity = "{h['identity']}"
layers = ["base"]

[[units]]
paths = ["/etc/bench/**"]
unit = "bench.service"
action = "restart"
""")
        open(os.path.join(proj, "layers/base/etc/systemd/system/bench.service"), "w").write(BENCH_UNIT)
        os.symlink("../bench.service", os.path.join(proj, "layers/base/etc/systemd/system/multi-user.target.wants/bench.service"))
        conf = os.path.join(proj, "layers/base/etc/bench/bench.conf")
        open(conf, "w").write("version 0\n")
        sock = os.path.join(WORK, "wb.sock")
        ssh = ["ssh", "-i", h["identity"], "-o", f"UserKnownHostsFile={h['known_hosts']}",
               "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-S", sock]
        subprocess.run([*ssh, "-M", "-f", "-N", f"root@{h['address']}"], check=True)

        def started():
            out = subprocess.run([*ssh, f"root@{h['address']}",
                                  "systemctl show -p ExecMainStartTimestampMonotonic --value bench.service"],
                                 capture_output=True, text=True).stdout.strip()
            return int(out or 0)

        w = Watch(lab, proj, [])
        first = w.next(300)
        assert "h1" in first["machines"], first
        prev = started()
        lat, phases = [], []
        for i in range(edits):
            t0 = time.monotonic()
            with open(conf, "w") as f:
                f.write(f"version {i + 1}\n")
            while True:
                ts = started()
                if ts != prev:
                    break
                if time.monotonic() - t0 > 30:
                    raise SystemExit(f"edit {i}: bench.service never restarted")
                time.sleep(0.02)
            prev = ts
            lat.append((ts / 1e6 - t0) * 1000)
            for c in w.drain(0.6):
                if c.get("changed"):
                    phases.append(c["ms"])
            time.sleep(0.1)
        w.stop()
        subprocess.run([*ssh, "-O", "exit", f"root@{h['address']}"], capture_output=True)
        med = lambda k: statistics.median([p[k] for p in phases]) if phases else None
        return {
            "p50_ms": round(pct(lat, 50), 1),
            "p99_ms": round(pct(lat, 99), 1),
            "min_ms": round(min(lat), 1),
            "max_ms": round(max(lat), 1),
            "runs_ms": [round(x, 1) for x in lat],
            "phases_p50_ms": {k: med(k) for k in ["debounce", "build", "sync", "total"]},
        }
    finally:
        subprocess.run([script, "down"], env=env, stdout=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="10k only, 10 edits each")
    ap.add_argument("--sizes", default=None, help="local part sizes (default 10000,100000; --quick: 10000)")
    ap.add_argument("--no-remote", action="store_true", help="skip the test-host part")
    ap.add_argument("--lab", default=None, help="lab binary (default: build it in release mode)")
    a = ap.parse_args()
    lab = a.lab
    if lab is None:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "lab-cli"], cwd=REPO, check=True)
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
        lab = os.path.join(target, "release", "lab")
    os.makedirs(WORK, exist_ok=True)
    edits = 10 if a.quick else 50
    results = {"local": [], "remote": None, "load_before": os.getloadavg()}
    sizes = [int(x) for x in a.sizes.split(",")] if a.sizes else ([10_000] if a.quick else [10_000, 100_000])
    for n in sizes:
        r = local_part(lab, n, edits)
        print(json.dumps({"local": r}), flush=True)
        results["local"].append(r)
    if os.geteuid() == 0 and not a.no_remote:
        results["remote"] = remote_part(lab, edits)
        print(json.dumps({"remote": results["remote"]}), flush=True)
    results["load_after"] = os.getloadavg()
    json.dump(results, open(os.path.join(WORK, "results.json"), "w"), indent=2)


if __name__ == "__main__":
    main()
