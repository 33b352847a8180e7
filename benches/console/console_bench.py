#!/usr/bin/env python3
"""lab console under load: fleet page latency (p50/p95) with N concurrent
users on loopback, the time to refresh the status of every machine, and the
console's resident memory.

    cargo build --release -p lab-cli
    python3 benches/console/console_bench.py --machines 100 --users 20
    python3 benches/console/console_bench.py --machines 200 --users 20
    # with real test hosts among the machines (scripts/testhosts, fleet `cbench`):
    python3 benches/console/console_bench.py --machines 100 --hosts 8

The machines are local ones (a directory each, synced once so they are in
sync) plus, with --hosts, real systemd test hosts. Each simulated user has
its own session and fetches the fleet page (every machine, in 4
namespaces) back to back. Nothing here is a test: no timing is a pass/fail.
"""

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "bench password"
NAMESPACES = ["ns0", "ns1", "ns2", "ns3"]


def sh(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))}: exit {r.returncode}\n{r.stderr}")
    return r


def make_project(d: Path, machines: int, hosts):
    lines = []
    if hosts:
        lines.append(f'[settings]\nknown_hosts = "{hosts[0]["known_hosts"]}"\n')
    for i, h in enumerate(hosts):
        lines.append(f'[machines.h{i + 1}]\nhost = "{h["address"]}"\nport = {h["port"]}\n'
                     f'user = "{h["user"]}"\nidentity = "{h["identity"]}"\n'
                     f'tags = ["{NAMESPACES[i % 4]}"]\n')
    for i in range(machines - len(hosts)):
        (d / f"roots/m{i}").mkdir(parents=True, exist_ok=True)
        lines.append(f'[machines.m{i}]\ntransport = "local"\nroot = "roots/m{i}"\n'
                     f'tags = ["{NAMESPACES[i % 4]}"]\n')
    (d / "lab.toml").write_text("\n".join(lines))
    base = d / "layers/_/etc/bench"
    base.mkdir(parents=True, exist_ok=True)
    for j in range(20):
        (base / f"f{j}.conf").write_text(f"file {j}\n" * 20)
    (base / "who.j2").write_text("{{ machine }}\n")


class Session:
    def __init__(self, port):
        self.port = port
        self.cookies = {}

    def req(self, method, path, form=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        data = r.read().decode()
        for k, v in r.getheaders():
            if k.lower() == "set-cookie":
                name, _, val = v.split(";")[0].partition("=")
                if val:
                    self.cookies[name] = val
                else:
                    self.cookies.pop(name, None)
        c.close()
        return r.status, data

    def login(self, user):
        _, page = self.req("GET", "/login")
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
        st, _ = self.req("POST", "/login", {"csrf": csrf, "user": user, "password": PASSWORD})
        assert st == 303, st

    def csrf(self):
        _, page = self.req("GET", "/")
        return re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)


def rss_kib(pid):
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        fields[k] = v.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--machines", type=int, default=100)
    ap.add_argument("--hosts", type=int, default=0, help="real test hosts among the machines")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--requests", type=int, default=50, help="fleet pages per user")
    ap.add_argument("--lab", default=str(REPO / "target/release/lab"))
    ap.add_argument("--again", action="store_true",
                    help="also wait for the next background look (30 s) and report it alone")
    a = ap.parse_args()

    hosts = []
    env = dict(os.environ, LAB_TESTHOSTS_NAME="cbench")
    if a.hosts:
        sh([str(REPO / "scripts/testhosts"), "up", str(a.hosts)], env=env)
        hosts = json.loads(sh([str(REPO / "scripts/testhosts"), "inventory"], env=env).stdout)
        hosts = hosts["hosts"] if isinstance(hosts, dict) else hosts
    work = Path(tempfile.mkdtemp(prefix="console-bench."))
    make_project(work, a.machines, hosts)
    lab = a.lab
    sh([lab, "-C", str(work), "sync", "--all", "-q", "--accept-new"])
    sh([lab, "-C", str(work), "console", "adduser", "--superadmin", "root"], input=PASSWORD + "\n")
    port = 5600 + os.getpid() % 300
    # the time of a full refresh is the console's own figure, from the
    # fleet page's "took N ms" (the first look, when the console starts)
    proc = subprocess.Popen([lab, "-C", str(work), "console", "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()  # "lab console on http://..."
        root = Session(port)
        root.login("root")
        csrf = root.csrf()
        for ns in NAMESPACES:
            root.req("POST", "/admin/namespaces", {"csrf": csrf, "name": ns})
        for u in range(a.users):
            root.req("POST", "/admin/users", {"csrf": csrf, "name": f"u{u}", "password": PASSWORD})
            for ns in NAMESPACES:
                root.req("POST", "/admin/grants",
                         {"csrf": csrf, "user": f"u{u}", "namespace": ns, "role": "user"})
        # the first full look, as the fleet page reports it
        took = None
        while took is None:
            _, page = root.req("GET", "/")
            m = re.search(r"took (\d+) ms", page)
            took = int(m.group(1)) if m else None
            time.sleep(0.1)
        refresh_ms = took
        sessions = []
        for u in range(a.users):
            s = Session(port)
            s.login(f"u{u}")
            sessions.append(s)
        lat = []
        lock = threading.Lock()

        def user(s):
            mine = []
            for _ in range(a.requests):
                t0 = time.perf_counter()
                st, body = s.req("GET", "/")
                mine.append((time.perf_counter() - t0) * 1000)
                assert st == 200 and "m0" in body, st
            with lock:
                lat.extend(mine)

        rss_before = rss_kib(proc.pid)
        threads = [threading.Thread(target=user, args=(s,)) for s in sessions]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        rss_after = rss_kib(proc.pid)
        # the next background look (every 30 s), alone: its time, and the
        # peak resident memory during it (the peak is reset first)
        again_ms = again_peak = None
        if a.again:
            def looked():
                _, page = root.req("GET", "/")
                m = re.search(r"states looked at (\d+) s ago \(took (\d+) ms\)", page)
                return int(m.group(1)), int(m.group(2))
            Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
            t_reset = time.monotonic()
            ago0, _ = looked()
            while True:
                time.sleep(0.5)
                ago, ms = looked()
                if ago < ago0 + (time.monotonic() - t_reset) - 1.5:
                    again_ms, again_peak = ms, rss_kib(proc.pid)[1]
                    break
                if time.monotonic() - t_reset > 90:
                    break
        lat.sort()
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
        print(json.dumps({
            "machines": a.machines, "test_hosts": len(hosts), "users": a.users,
            "requests": len(lat), "wall_s": round(wall, 2),
            "fleet_page_ms": {"p50": round(p(0.50), 1), "p95": round(p(0.95), 1),
                              "max": round(lat[-1], 1), "mean": round(statistics.mean(lat), 1)},
            "refresh_all_ms": refresh_ms,
            "refresh_again_ms": again_ms,
            "rss_kib": {"idle_after_refresh": rss_before[0], "after_load": rss_after[0],
                        "peak": rss_after[1], "peak_during_next_refresh": again_peak},
        }, indent=1))
    finally:
        proc.terminate()
        proc.wait()
        if a.hosts:
            sh([str(REPO / "scripts/testhosts"), "down"], env=env)


if __name__ == "__main__":
    sys.exit(main())
