#!/usr/bin/env python3
"""Convergence benchmarks (issue #12): `lab sync` with verification vs
`rsync -a --delete` over ssh, on real systemd test hosts.

rsync looks at the size and mtime of every file on the target on every run;
since issue #12, so does lab (one `stat` of the managed set on the target,
hashing only what changed), so the no-change comparison is like for like.

Scenarios, interleaved round by round (lab, then rsync, same host, same
tree; rsync into its own directory so the two never touch each other's
files), at each size N:

  nochange   sync again, nothing changed anywhere
  drift      one managed file changed on the machine behind the tool's back:
             lab sync repairs it (and restarts bench.service through its
             rule); rsync -ai --delete repairs it, then `systemctl restart`
             over ssh when rsync said it changed something
  check      the check alone, timed on the target (the probe program lab
             runs in its one command), and the peak RSS of its largest
             process (RUSAGE_CHILDREN of a python3 wrapper)
  status     `lab status -m h1` vs `lab status --all` (8 hosts)

Timings are reported, never pass/fail. Needs root and a fleet of benchhosts
(they have rsync): LAB_TESTHOSTS_NAME=cvb benches/sync/benchhosts up 8
"""

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "crates/lab-agent/src"

PRELUDE = r'''set -u
R=${LAB_ROOT:-}
case $R in '' | /*) ;; *) R=$PWD/$R ;; esac
S="$R/var/lib/lab"
current_gen() { if [ -f "$S/current" ]; then read -r g _ <"$S/current"; echo "$g"; else echo 0; fi; }
current_digest() { if [ -f "$S/current" ]; then read -r _ d <"$S/current"; echo "$d"; else echo none; fi; }
'''

UNIT = """[Service]
Type=simple
ExecStart=/bin/sleep infinity
StartLimitIntervalSec=0

[Install]
WantedBy=multi-user.target
"""


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=isinstance(cmd, str), check=True,
                          capture_output=True, text=True, **kw)


def inventory(fleet):
    out = sh(["env", f"LAB_TESTHOSTS_NAME={fleet}", str(REPO / "benches/sync/benchhosts"),
              "inventory"]).stdout
    return json.loads(out)


def ssh_args(h):
    return ["ssh", "-i", h["identity"], "-p", str(h["port"]),
            "-o", f"UserKnownHostsFile={h['known_hosts']}", "-o", "BatchMode=yes",
            f"{h['user']}@{h['address']}"]


def remote(h, cmd):
    return sh(ssh_args(h) + [cmd]).stdout


def make_project(d: Path, hosts, n):
    base = d / "layers/base"
    if not (d / "lab.toml").exists():
        lines = [f'[settings]\nknown_hosts = "{hosts[0]["known_hosts"]}"\n',
                 '[[units]]\npaths = ["/etc/bench/**"]\nunit = "bench.service"\naction = "restart"\n']
        for i, h in enumerate(hosts):
            lines.append(f'[machines.h{i + 1}]\nhost = "{h["address"]}"\nport = {h["port"]}\n'
                         f'user = "{h["user"]}"\nidentity = "{h["identity"]}"\nlayers = ["base"]\n')
        (d / "lab.toml").parent.mkdir(parents=True, exist_ok=True)
        (d / "lab.toml").write_text("\n".join(lines))
        (base / "etc/systemd/system/multi-user.target.wants").mkdir(parents=True, exist_ok=True)
        (base / "etc/systemd/system/bench.service").write_text(UNIT)
        os.symlink("../bench.service", base / "etc/systemd/system/multi-user.target.wants/bench.service")
    # 20 files per directory, 10 directories per group, ~1 KiB each
    for i in range(n):
        p = base / f"etc/bench/g{i // 200:03d}/s{(i // 20) % 10:02d}/f{i:06d}.conf"
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(f"[file {i}]\n" + ("key = value\n" * 85))


def timed(cmd, cwd=None):
    t = time.monotonic()
    r = subprocess.run(cmd, shell=isinstance(cmd, str), cwd=cwd, capture_output=True, text=True)
    dt = time.monotonic() - t
    if r.returncode != 0:
        raise SystemExit(f"failed: {cmd}\n{r.stdout}{r.stderr}")
    return dt, r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lab", default=str(REPO / "target/release/lab"))
    ap.add_argument("--fleet", default="cvb")
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--status-sizes", default="1000,10000",
                    help="sizes at which all 8 hosts are synced for `lab status --all`")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--workdir", default="/var/tmp/lab-convbench")
    ap.add_argument("--json")
    a = ap.parse_args()
    inv = inventory(a.fleet)
    hosts = inv["hosts"]
    h1 = hosts[0]
    work = Path(a.workdir)
    sh(f"rm -rf {shlex.quote(str(work))}")
    proj = work / "proj"
    check_prog = PRELUDE + (AGENT / "check.sh").read_text() + "probe none 1\n"
    remote(h1, f"cat >/root/check.sh <<'LABCHECK'\n{check_prog}LABCHECK\n")
    rsync_e = " ".join(shlex.quote(x) for x in ssh_args(h1)[:-1])
    dest = f"{h1['user']}@{h1['address']}"
    # rsync over a kept-open connection too (what lab does since it keeps
    # its own): a master that lives for the whole run
    cm = work / "rsync-cm.sock"
    work.mkdir(parents=True, exist_ok=True)
    sh(ssh_args(h1)[:-1] + ["-o", "ControlMaster=yes", "-o", f"ControlPath={cm}",
                            "-o", "ControlPersist=yes", "-f", "-N", dest])
    rsync_e_cm = f"{rsync_e} -o ControlMaster=no -o ControlPath={shlex.quote(str(cm))}"
    results = []
    for n in [int(x) for x in a.sizes.split(",")]:
        make_project(proj, hosts, n)
        lab = [a.lab, "-C", str(proj), "-q"]
        multi = n in [int(x) for x in a.status_sizes.split(",") if x]
        timed(lab + ["sync", "--all" if multi else "-m", *([] if multi else ["h1"])])
        remote(h1, "mkdir -p /srv/rsync/etc")
        rs = (f"rsync -a --delete -e {shlex.quote(rsync_e)} {proj}/layers/base/etc/bench/ "
              f"{dest}:/srv/rsync/etc/bench/")
        timed(rs)
        rs_cm = rs.replace(shlex.quote(rsync_e), shlex.quote(rsync_e_cm))
        r = {"n": n, "nochange": {"lab": [], "rsync": [], "rsync_cm": []},
             "drift": {"lab": [], "rsync": []},
             "check_ms": [], "check_peak_kib": None, "status": {"1": [], "8": []}}
        for rep in range(a.reps):
            r["nochange"]["lab"].append(timed(lab + ["sync", "-m", "h1"])[0])
            r["nochange"]["rsync"].append(timed(rs)[0])
            r["nochange"]["rsync_cm"].append(timed(rs_cm)[0])
            f = f"etc/bench/g000/s00/f{rep % 20:06d}.conf"
            remote(h1, f"echo drift{rep} >>/{f}")
            dt, out = timed(lab[:-1] + ["sync", "-m", "h1"])
            assert "repaired /" in out and "restart bench.service" in out, out
            r["drift"]["lab"].append(dt)
            remote(h1, f"echo drift{rep} >>/srv/rsync/{f}")
            rsr = (f"c=$({rs.replace('rsync -a ', 'rsync -ai ')}) && "
                   f"if [ -n \"$c\" ]; then {rsync_e} {dest} systemctl restart bench.service; fi")
            r["drift"]["rsync"].append(timed(rsr)[0])
            ms = remote(h1, "s=$(date +%s%N); sh /root/check.sh >/dev/null; e=$(date +%s%N); "
                            "echo $(( (e - s) / 1000000 ))")
            r["check_ms"].append(int(ms))
            r["status"]["1"].append(timed(lab + ["status", "-m", "h1"])[0])
            if multi:
                r["status"]["8"].append(timed(lab + ["status", "--all"])[0])
        peak = remote(h1, "python3 -c 'import resource,subprocess; "
                          "subprocess.run([\"sh\",\"/root/check.sh\"],stdout=subprocess.DEVNULL); "
                          "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)'")
        r["check_peak_kib"] = int(peak)
        results.append(r)
        med = lambda xs: statistics.median(xs) * 1000 if xs else float("nan")
        print(f"N={n}: nochange lab {med(r['nochange']['lab']):.0f} ms, rsync "
              f"{med(r['nochange']['rsync']):.0f} ms, lab/rsync "
              f"{med(r['nochange']['lab']) / med(r['nochange']['rsync']):.2f} "
              f"(rsync over a kept-open connection {med(r['nochange']['rsync_cm']):.0f} ms); "
              f"drift lab {med(r['drift']['lab']):.0f} ms, rsync {med(r['drift']['rsync']):.0f} ms, "
              f"lab/rsync {med(r['drift']['lab']) / med(r['drift']['rsync']):.2f}; "
              f"check on target {statistics.median(r['check_ms'])} ms, peak {r['check_peak_kib']} KiB; "
              f"status 1 host {med(r['status']['1']):.0f} ms, 8 hosts {med(r['status']['8']):.0f} ms",
              flush=True)
    subprocess.run(["ssh", "-O", "exit", "-o", f"ControlPath={cm}", dest], capture_output=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
