#!/usr/bin/env python3
"""lab bootstrap and the cost of sudo, on a real test host.

Boots one test host (scripts/testhosts, its own fleet name), makes it look
like a fresh VPS (root password, password and root logins on), then times,
with the release `lab` binary:

- `lab bootstrap` end to end (no package downloads: the test host's base
  has sudo), and its re-run (median of 5);
- a no-change `lab sync` as root and as a sudo user (`become = "sudo"`) of
  the same host, interleaved, 20 each: the difference is what sudo costs.

Nothing here is a test. Run as root:
    cargo build --release -p lab-cli && python3 benches/ssh/bench.py
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB = os.path.join(ROOT, "target", "release", "lab")
FLEET = "bsh"
PASSWORD = "bench vps pw"


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


def timed(args, cwd, env=None):
    t = time.perf_counter()
    p = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{args}: {p.stdout}{p.stderr}")
    return dt


def main():
    env = dict(os.environ, LAB_TESTHOSTS_NAME=FLEET)
    testhosts = os.path.join(ROOT, "scripts", "testhosts")
    sh(testhosts, "up", "1", env=env)
    try:
        inv = json.loads(sh(testhosts, "inventory", env=env).stdout)
        h = inv["hosts"][0]
        key = inv["identity"]
        ssh = ["ssh", "-i", key, "-o", f"UserKnownHostsFile={inv['known_hosts']}",
               "-o", "BatchMode=yes", f"root@{h['address']}"]
        sh(*ssh, f"echo 'root:{PASSWORD}' | chpasswd; "
           "printf 'PermitRootLogin yes\\nPasswordAuthentication yes\\n' "
           "> /etc/ssh/sshd_config.d/10-fresh-vps.conf; systemctl reload ssh")
        fp = sh("ssh-keygen", "-lf", inv["known_hosts"]).stdout.split()[1]
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "lab.toml"), "w") as f:
                f.write('[settings]\nknown_hosts = "known_hosts"\n')
            os.makedirs(os.path.join(d, "layers/base/etc"))
            with open(os.path.join(d, "layers/base/etc/motd"), "w") as f:
                f.write("bench\n")
            benv = dict(os.environ, ROOT_PW=PASSWORD)
            boot = [LAB, "bootstrap", f"root@{h['address']}", "--as", "deploy",
                    "--machine", "assudo", "--key", key + ".pub",
                    "--password-env", "ROOT_PW", "--expect-fingerprint", fp]
            first = timed(boot, d, benv)
            reruns = [timed(boot, d, benv) for _ in range(5)]
            with open(os.path.join(d, "lab.toml")) as f:
                toml = f.read()
            toml = toml.replace("[machines.assudo]", "[machines.assudo]\nlayers = [\"base\"]", 1)
            with open(os.path.join(d, "lab.toml"), "w") as f:
                f.write(toml)
            timed([LAB, "sync", "-m", "assudo", "-q"], d)
            sync_sudo = [timed([LAB, "sync", "-m", "assudo", "-q"], d) for _ in range(20)]
            # what sudo adds to a command: the no-change probe, over one
            # OpenSSH connection each, with and without sudo, interleaved
            base = ["ssh", "-i", key, "-o", f"UserKnownHostsFile={d}/known_hosts",
                    "-o", "BatchMode=yes", f"deploy@{h['address']}"]
            plain, sudo = [], []
            for _ in range(20):
                for cmd, out in (("cat /var/lib/lab/current", plain),
                                 ("sudo -n cat /var/lib/lab/current", sudo)):
                    t = time.perf_counter()
                    sh(*base, cmd)
                    out.append(time.perf_counter() - t)
        med = statistics.median
        print(f"bootstrap, end to end:        {first * 1000:7.0f} ms (goal <= 5000)")
        print(f"bootstrap re-run (median/5):  {med(reruns) * 1000:7.0f} ms (goal <= 500)")
        print(f"no-change sync as sudo user:  {med(sync_sudo) * 1000:7.1f} ms (median of 20)")
        print(f"probe command, plain:         {med(plain) * 1000:7.1f} ms; through sudo -n: "
              f"{med(sudo) * 1000:.1f} ms; sudo adds {(med(sudo) - med(plain)) * 1000:.1f} ms (goal <= 20)")
    finally:
        sh(testhosts, "down", env=env)


if __name__ == "__main__":
    main()
