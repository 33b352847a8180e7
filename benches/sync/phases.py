#!/usr/bin/env python3
"""Where `lab sync`'s time goes: the measurements behind the README's
"Where lab's time goes" section, on a running bench fleet of >= 2 hosts.

    LAB_TESTHOSTS_NAME=sbi benches/sync/benchhosts up 2
    (cd benches/sync/ssh2probe && CARGO_TARGET_DIR=/work/target-syncbench \\
        cargo build --release --offline)
    python3 benches/sync/phases.py --fleet sbi
    LAB_TESTHOSTS_NAME=sbi benches/sync/benchhosts down

1. ssh2 connection and command latency (ssh2probe, the libssh2 lab uses);
2. `lab build` with nothing to do (1k files);
3. lab no-change and one-change-with-restart syncs (1k files), as they are
   and with LAB_SETTLE=0 on the target (the executor's wait after a
   restart; set through /etc/environment, which sshd's PAM session reads),
   next to rsync + ssh restart on the other host;
4. first syncs of 1k and 10k files, lab vs rsync + ssh, on an idle machine;
5. a tar stream of the same trees through an ssh2 channel in 512-byte writes
   (what lab does today) and through a BufWriter.

Only reports; changes nothing outside its workdir and the fleet's hosts.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import sync_bench as sb  # noqa: E402


def med(xs):
    return statistics.median(xs)


def timed(cmds, env=None):
    t0 = time.perf_counter()
    for c in cmds:
        subprocess.run(c, env=env, check=True, stdin=subprocess.DEVNULL, capture_output=True)
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--fleet", default="sbi")
    p.add_argument("--lab", default="/work/target-syncbench/release/lab")
    p.add_argument("--probe", default="/work/target-syncbench/release/ssh2probe")
    p.add_argument("--workdir", default="/var/tmp/lab-syncphases")
    p.add_argument("--reps", type=int, default=7)
    a = p.parse_args()
    inv = json.loads(Path(f"/run/lab-testhosts/{a.fleet}/inventory.json").read_text())
    h1, h2 = [sb.Host(h) for h in inv["hosts"][:2]]
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    out = []

    def say(s):
        print(s, flush=True)
        out.append(s)

    say(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    # 1. ssh2 latency
    for _ in range(5):
        r = subprocess.run([a.probe, h1.address, h1.identity, "-"], capture_output=True, text=True)
        say("ssh2: " + r.stdout.strip())

    projects = {}
    for n in (1000, 10000):
        proj = work / f"t{n}"
        if not proj.exists():
            sb.make_tree(proj / "layers/base", n, seed=n)
        (proj / "lab.toml").write_text(sb.lab_toml([h1], ["h1"]))
        subprocess.run([a.lab, "-C", str(proj), "build"], check=True, capture_output=True)
        projects[n] = proj

    # 2. no-op build
    xs = [timed([[a.lab, "-C", str(projects[1000]), "build"]]) for _ in range(a.reps)]
    say(f"lab build, nothing to do, 1k files: median {med(xs) * 1000:.0f} ms")
    xs = [timed([[a.lab, "-C", str(projects[10000]), "build"]]) for _ in range(a.reps)]
    say(f"lab build, nothing to do, 10k files: median {med(xs) * 1000:.0f} ms")

    # 3. warm syncs, 1k
    lab = [a.lab, "-C", str(projects[1000]), "sync", "-m", "h1"]
    tree = projects[1000] / "layers/base"
    rsync = ["rsync", "-a", "-e", "ssh " + " ".join(h2.ssh_opts()), f"{tree}/", f"root@{h2.address}:/"]
    for h in (h1, h2):
        h.reset()
    subprocess.run(lab, check=True, capture_output=True)
    subprocess.run(rsync, check=True, capture_output=True)
    h2.run("systemctl daemon-reload && systemctl restart bench.service")
    rev = [100]

    def change():
        rev[0] += 1
        sb.change_file(tree, rev[0])

    for settle in ("default", "0"):
        if settle == "0":
            h1.run("echo LAB_SETTLE=0 >> /etc/environment")
        try:
            nc = [timed([lab]) for _ in range(a.reps)]
            ch = []
            for _ in range(a.reps):
                change()
                ch.append(timed([lab]))
        finally:
            if settle == "0":
                h1.run("sed -i '/^LAB_SETTLE=/d' /etc/environment")
        say(f"lab 1k, LAB_SETTLE {settle}: no change median {med(nc):.3f} s, "
            f"one change + restart median {med(ch):.3f} s ({', '.join(f'{x:.3f}' for x in ch)})")
    rnc = [timed([rsync]) for _ in range(a.reps)]
    rch = []
    for _ in range(a.reps):
        change()
        rch.append(timed([rsync, h2.ssh_cmd("systemctl restart bench.service")]))
    say(f"rsync 1k: no change median {med(rnc):.3f} s, one change + ssh restart median {med(rch):.3f} s")
    xs = [timed([h2.ssh_cmd("true")]) for _ in range(a.reps)]
    say(f"ssh host true (OpenSSH, fresh login): median {med(xs):.3f} s")

    # 4. first syncs on an idle machine
    for n, proj in projects.items():
        lab = [a.lab, "-C", str(proj), "sync", "-m", "h1"]
        tree = proj / "layers/base"
        rsync = ["rsync", "-a", "-e", "ssh " + " ".join(h2.ssh_opts()), f"{tree}/", f"root@{h2.address}:/"]
        lx, rx, phase = [], [], []
        for _ in range(3):
            h1.reset()
            t0 = time.perf_counter()
            r = subprocess.run(lab, check=True, capture_output=True, text=True)
            lx.append(time.perf_counter() - t0)
            phase.append(r.stdout.strip().splitlines()[0])
            h2.reset()
            rx.append(timed([rsync, h2.ssh_cmd("systemctl daemon-reload && systemctl restart bench.service")]))
        say(f"first sync {n} files: lab median {med(lx):.3f} s ({', '.join(f'{x:.2f}' for x in lx)}), "
            f"rsync + ssh median {med(rx):.3f} s ({', '.join(f'{x:.2f}' for x in rx)}); lab said: {phase[-1]}")

    # 5. tar stream through ssh2: 512-byte writes vs buffered
    for n, proj in projects.items():
        tarf = work / f"t{n}.tar"
        subprocess.run(["tar", "-C", str(proj / "layers/base"), "-cf", str(tarf), "."], check=True)
        r = subprocess.run([a.probe, h1.address, h1.identity, str(tarf)], capture_output=True, text=True)
        say(f"tar of {n} files ({tarf.stat().st_size / 1e6:.1f} MB) through an ssh2 channel:")
        for line in r.stdout.strip().splitlines()[1:]:
            say("    " + line)
    h1.run("rm -rf /tmp/x")
    say(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    (work / "phases.txt").write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
