#!/usr/bin/env python3
"""Side-by-side sync benchmarks for `lab sync` (issue #4).

On real systemd test hosts (systemd-nspawn containers booted by
benches/sync/benchhosts, a copy of scripts/testhosts whose base also has rsync
and python3), for trees of 1k and 10k small config-like files plus one
systemd service, this measures

  first     full first sync to an empty target (service installed, enabled,
            started)
  nochange  a sync when nothing changed
  change    one file changed, and the service restarted because of it

for

  lab       `lab sync --machine h1` (release binary, a fresh process per run;
            a [[units]] rule maps /etc/bench/** to bench.service, restart)
  rsync     `rsync -a TREE/ root@host:/`, then (first, change)
            `ssh root@host systemctl [daemon-reload &&] restart bench.service`
  pyinfra   files.sync + files.put + files.link, systemd.daemon_reload and
            systemd.service(restarted=True) only when something changed
  ansible   ansible.builtin.copy of the directory + copy of the unit + file
            (link), handlers for daemon-reload and restart
  ansible-sync  the same playbook with ansible.posix.synchronize (rsync) for
            the directory instead of copy

and fan-out of `lab sync -j 8` to 1, 4 and 8 hosts (no change; one file
changed with a restart on every host).

Every tool syncs the same tree (the lab project's `layers/base`, which has no
templates, so lab's build output is byte for byte the same tree) with the same
key and known_hosts. Each tool has a host of its own (identical containers
from one base), and the tools take turns round by round, so a change in
background load hits them all alike. Before every first-sync run the tool's
host is wiped (tree, unit, link, /var/lib/lab; the service stopped). After
every run the target is checked (tree contents and modes, unit, link, service
active, restarted or not); a wrong result is reported as an error.

Timings are only reported, never pass/fail: the exit code is non-zero only
when a tool failed or left a wrong target state.

Needs root (the hosts). Stdlib only; ansible-playbook and pyinfra are run as
commands from a venv (--venv). See benches/sync/README.md.
"""

import argparse
import concurrent.futures
import datetime
import hashlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

TOOLS = ["lab", "rsync", "pyinfra", "ansible-sync", "ansible"]
SCENARIOS = ["first", "nochange", "change"]
CHANGED = "etc/bench/g00/s00/f0000.conf"
UNIT_PATH = "etc/systemd/system/bench.service"
LINK_PATH = "etc/systemd/system/multi-user.target.wants/bench.service"
LINK_TARGET = "/etc/systemd/system/bench.service"

# StartLimitIntervalSec=0: the benchmark restarts the service many times in
# a few seconds, more than systemd's default start limit (5 in 10 s) allows
# for an `ssh systemctl restart` (lab itself resets the counter).
UNIT = """[Unit]
Description=lab sync benchmark service
StartLimitIntervalSec=0

[Service]
Type=simple
ExecStart=/bin/sleep infinity

[Install]
WantedBy=multi-user.target
"""

WORDS = (
    "listen server upstream timeout buffer worker cache proxy path root "
    "log level access error include user group pid socket backend frontend "
    "retry interval weight max min keepalive ssl cert key cipher protocol "
    "compress gzip expires header allow deny location alias index limit "
    "rate zone queue pool thread memory disk sync flush journal"
).split()

RESET = (
    "systemctl stop bench.service 2>/dev/null; "
    "rm -rf /etc/bench /etc/systemd/system/bench.service "
    "/etc/systemd/system/multi-user.target.wants/bench.service /var/lib/lab; "
    "systemctl daemon-reload; systemctl reset-failed bench.service 2>/dev/null; true"
)

VERIFY = r"""
if [ -d /etc/bench ]; then
  cd /etc/bench
  find . -mindepth 1 -printf 'M %y %m %P\n'
  find . -type f -print0 | xargs -0 -r sha256sum | sed 's/^/S /'
fi
echo "U $(sha256sum < /etc/systemd/system/bench.service 2>/dev/null | cut -d' ' -f1)"
echo "L $(readlink /etc/systemd/system/multi-user.target.wants/bench.service)"
echo "A $(systemctl is-active bench.service)"
echo "P $(systemctl show -p MainPID --value bench.service)"
"""

VERIFY_ONE = r"""
echo "S $(sha256sum < /%s | cut -d' ' -f1)"
echo "A $(systemctl is-active bench.service)"
echo "P $(systemctl show -p MainPID --value bench.service)"
""" % CHANGED


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ------------------------------------------------------------------ tree --


def gen_content(rng, name):
    size = rng.randint(1024, 4096)
    lines = [f"# {name}: generated for the lab sync benchmark", ""]
    n = 0
    section = 0
    while sum(len(x) + 1 for x in lines) < size:
        if n % 12 == 0:
            section += 1
            lines.append(f"[{rng.choice(WORDS)}_{section}]")
        k = "_".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
        v = rng.choice(
            [
                str(rng.randint(0, 65535)),
                " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))),
                f"/var/lib/{rng.choice(WORDS)}/{rng.choice(WORDS)}.{rng.choice(['conf', 'sock', 'db'])}",
                rng.choice(["on", "off", "yes", "no", "true", "false"]),
            ]
        )
        lines.append(f"{k} = {v}")
        n += 1
    return ("\n".join(lines) + "\n").encode()


def make_tree(base: Path, nfiles: int, seed: int):
    """layers/base: /etc/bench/gNN/sNN/fNNNN.conf (20 files per leaf
    directory, 10 leaves per group), the unit and its wants link."""
    rng = random.Random(seed)
    for i in range(nfiles):
        leaf = i // 20
        p = base / "etc/bench" / f"g{leaf // 10:02d}" / f"s{leaf % 10:02d}" / f"f{i:04d}.conf"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(gen_content(rng, p.name))
    u = base / UNIT_PATH
    u.parent.mkdir(parents=True, exist_ok=True)
    u.write_text(UNIT)
    link = base / LINK_PATH
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(LINK_TARGET, link)
    for d, dirs, files in os.walk(base):
        os.chmod(d, 0o755)
        for f in files:
            if not os.path.islink(os.path.join(d, f)):
                os.chmod(os.path.join(d, f), 0o644)


def change_file(base: Path, rev: int):
    p = base / CHANGED
    body = p.read_bytes().split(b"\n", 1)[1] if p.read_bytes().startswith(b"# revision") else p.read_bytes()
    p.write_bytes(f"# revision {rev}\n".encode() + body)


def local_state(base: Path):
    """What VERIFY should find: {path: 'kind mode'} and {path: sha256}."""
    modes, shas = {}, {}
    root = base / "etc/bench"
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            full = Path(d) / n
            rel = str(full.relative_to(root))
            st = full.lstat()
            kind = "d" if full.is_dir() else "f"
            modes[rel] = f"{kind} {st.st_mode & 0o7777:o}"
            if kind == "f":
                shas[rel] = hashlib.sha256(full.read_bytes()).hexdigest()
    unit = hashlib.sha256((base / UNIT_PATH).read_bytes()).hexdigest()
    return modes, shas, unit


# ----------------------------------------------------------------- hosts --


class Host:
    def __init__(self, h):
        self.name = h["name"]
        self.address = h["address"]
        self.port = h["port"]
        self.identity = h["identity"]
        self.known_hosts = h["known_hosts"]

    def ssh_opts(self):
        return [
            "-F", "/dev/null", "-i", self.identity, "-p", str(self.port),
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
        ]

    def ssh_cmd(self, cmd):
        return ["ssh", *self.ssh_opts(), f"root@{self.address}", cmd]

    def run(self, cmd, check=True):
        r = subprocess.run(self.ssh_cmd(cmd), stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=600)
        if check and r.returncode != 0:
            raise BenchError(f"{self.name}: `{cmd[:60]}` failed ({r.returncode}): {r.stderr.strip()}")
        return r.stdout

    def reset(self):
        self.run(RESET)


def fleet_up(args):
    env = dict(os.environ, LAB_TESTHOSTS_NAME=args.fleet)
    if args.cache:
        env["LAB_BENCHHOSTS_CACHE"] = args.cache
    n = max([len(TOOLS)] + args.fanout)
    log(f"booting fleet {args.fleet} with {n} hosts")
    r = subprocess.run([str(HERE / "benchhosts"), "up", str(n)], env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stderr)
        raise BenchError("benchhosts up failed")
    inv = json.loads(Path(f"/run/lab-testhosts/{args.fleet}/inventory.json").read_text())
    return [Host(h) for h in inv["hosts"]]


def fleet_down(args):
    env = dict(os.environ, LAB_TESTHOSTS_NAME=args.fleet)
    log(f"tearing fleet {args.fleet} down")
    subprocess.run([str(HERE / "benchhosts"), "down"], env=env)


# ----------------------------------------------------------------- tools --


def lab_toml(hosts, names):
    s = [f'[settings]\nknown_hosts = "{hosts[0].known_hosts}"\n',
         '[[units]]\npaths = ["/etc/bench/**"]\nunit = "bench.service"\naction = "restart"\n']
    for name, h in zip(names, hosts):
        s.append(
            f'[machines.{name}]\nhost = "{h.address}"\nport = {h.port}\nuser = "root"\n'
            f'identity = "{h.identity}"\nlayers = ["base"]\n'
        )
    return "\n".join(s)


ANSIBLE_CFG = """[defaults]
inventory = {dir}/inventory.ini
interpreter_python = /usr/bin/python3
host_key_checking = True
forks = 8
stdout_callback = default
retry_files_enabled = False
local_tmp = {dir}/tmp

[ssh_connection]
pipelining = True
control_path_dir = {dir}/cp
"""

PLAYBOOK = """- hosts: bench
  gather_facts: false
  tasks:
    - name: tree
{tree_task}      notify: restart bench
    - name: unit
      ansible.builtin.copy:
        src: "{tree}/etc/systemd/system/bench.service"
        dest: /etc/systemd/system/bench.service
        mode: preserve
      notify: [daemon reload, restart bench]
    - name: enabled
      ansible.builtin.file:
        src: /etc/systemd/system/bench.service
        dest: /etc/systemd/system/multi-user.target.wants/bench.service
        state: link
      notify: [daemon reload, restart bench]
  handlers:
    - name: daemon reload
      ansible.builtin.systemd_service:
        daemon_reload: true
    - name: restart bench
      ansible.builtin.systemd_service:
        name: bench.service
        state: restarted
"""

SYNCHRONIZE_TASK = """      ansible.posix.synchronize:
        src: "{tree}/etc/bench"
        dest: /etc/
        verify_host: true
        use_ssh_args: true
"""

COPY_TASK = """      ansible.builtin.copy:
        src: "{tree}/etc/bench"
        dest: /etc/
        mode: preserve
"""

PYINFRA_DEPLOY = """import os
from pyinfra.operations import files, systemd
from pyinfra.operations.util import any_changed

T = os.environ["BENCH_TREE"]
tree = files.sync(name="tree", src=T + "/etc/bench", dest="/etc/bench", add_deploy_dir=False)
unit = files.put(name="unit", src=T + "/etc/systemd/system/bench.service",
                 dest="/etc/systemd/system/bench.service", add_deploy_dir=False)
link = files.link(name="enabled", path="/etc/systemd/system/multi-user.target.wants/bench.service",
                  target="/etc/systemd/system/bench.service")
systemd.daemon_reload(name="daemon-reload", _if=any_changed(unit, link))
systemd.service(name="restart", service="bench.service", running=True, restarted=True,
                _if=any_changed(tree, unit, link))
"""


class Tool:
    """One way of syncing the tree to one host."""

    name = ""

    def __init__(self, bench, host):
        self.bench = bench
        self.host = host

    def commands(self, scenario):
        raise NotImplementedError

    def run(self, scenario):
        """Run the sync as a user would; returns (seconds, output)."""
        out = []
        t0 = time.perf_counter()
        for cmd, env in self.commands(scenario):
            r = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL,
                               capture_output=True, text=True)
            out.append(r.stdout + r.stderr)
            if r.returncode != 0:
                raise BenchError(f"{self.name} {scenario}: {' '.join(cmd[:4])}... exit {r.returncode}:\n"
                                 + "".join(out)[-3000:])
        return time.perf_counter() - t0, "".join(out)


class Lab(Tool):
    name = "lab"

    def __init__(self, bench, host, project, machines, all_machines=False):
        super().__init__(bench, host)
        self.project = project
        self.machines = machines
        self.all = all_machines

    def commands(self, scenario):
        sel = ["--all"] if self.all else [a for m in self.machines for a in ("-m", m)]
        return [([self.bench.lab, "-C", str(self.project), "sync", *sel, "-j", "8"],
                 dict(os.environ, NO_COLOR="1"))]


class Rsync(Tool):
    name = "rsync"

    def commands(self, scenario):
        h = self.host
        e = "ssh " + " ".join(h.ssh_opts())
        cmds = [(["rsync", "-a", "-e", e, str(self.bench.tree) + "/", f"root@{h.address}:/"], None)]
        if scenario == "first":
            cmds.append((h.ssh_cmd("systemctl daemon-reload && systemctl restart bench.service"), None))
        elif scenario == "change":
            cmds.append((h.ssh_cmd("systemctl restart bench.service"), None))
        return cmds


class Pyinfra(Tool):
    name = "pyinfra"

    def __init__(self, bench, host):
        super().__init__(bench, host)
        d = bench.work / "pyinfra"
        d.mkdir(exist_ok=True)
        (d / "deploy.py").write_text(PYINFRA_DEPLOY)
        (d / "inventory.py").write_text(
            "hosts = [(%r, %r)]\n" % (host.address, {
                "ssh_user": "root", "ssh_port": host.port, "ssh_key": host.identity,
                "ssh_known_hosts_file": host.known_hosts,
                "ssh_strict_host_key_checking": "yes",
                "ssh_allow_agent": False, "ssh_look_for_keys": False,
            }))
        self.dir = d

    def commands(self, scenario):
        env = dict(os.environ, BENCH_TREE=str(self.bench.tree), NO_COLOR="1")
        return [([str(self.bench.venv / "bin/pyinfra"), "-y", str(self.dir / "inventory.py"),
                  str(self.dir / "deploy.py")], env)]


class Ansible(Tool):
    name = "ansible"

    def __init__(self, bench, host, synchronize=False):
        super().__init__(bench, host)
        if synchronize:
            self.name = "ansible-sync"
        d = bench.work / self.name
        (d / "cp").mkdir(parents=True, exist_ok=True)
        (d / "tmp").mkdir(parents=True, exist_ok=True)
        (d / "ansible.cfg").write_text(ANSIBLE_CFG.format(dir=d))
        (d / "inventory.ini").write_text(
            "[bench]\n%s ansible_host=%s ansible_port=%d ansible_user=root "
            "ansible_ssh_private_key_file=%s "
            "ansible_ssh_common_args='-F /dev/null -o UserKnownHostsFile=%s "
            "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes'\n"
            % (host.name, host.address, host.port, host.identity, host.known_hosts))
        task = (SYNCHRONIZE_TASK if synchronize else COPY_TASK).format(tree=bench.tree)
        (d / "playbook.yml").write_text(PLAYBOOK.format(tree=bench.tree, tree_task=task))
        self.dir = d

    def commands(self, scenario):
        env = dict(os.environ, ANSIBLE_CONFIG=str(self.dir / "ansible.cfg"),
                   ANSIBLE_NOCOLOR="1", ANSIBLE_HOME=str(self.dir / "home"))
        return [([str(self.bench.venv / "bin/ansible-playbook"), str(self.dir / "playbook.yml")], env)]

    def close(self):
        # Ansible's ControlPersist master (its default): stop it.
        for sock in (self.dir / "cp").glob("*"):
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"],
                           capture_output=True)


# ----------------------------------------------------------------- bench --


def median(xs):
    return statistics.median(xs) if xs else None


def fmt(x):
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


class Bench:
    def __init__(self, args, hosts):
        self.args = args
        self.hosts = hosts
        self.lab = str(Path(args.lab).resolve())
        self.venv = Path(args.venv)
        self.results = {}  # size -> tool -> scenario -> [seconds]
        self.lab_inner = {}  # size -> scenario -> [lab's own per-machine ms]
        self.errors = []
        self.loads = []
        self.notes = []
        self.fan = {}  # n -> scenario -> [seconds]

    def load(self, what):
        la = os.getloadavg()
        self.loads.append((what, la))
        log(f"load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} ({what})")

    # Target checks (not timed).
    def verify_full(self, tool, host, expect_pid_change=None, before_pid=None):
        modes, shas, unit = self.expected
        out = host.run(VERIFY, check=False)
        rmodes, rshas, vals = {}, {}, {}
        for line in out.splitlines():
            if line.startswith("M "):
                _, k, m, p = line.split(" ", 3)
                rmodes[p] = f"{k} {m}"
            elif line.startswith("S "):
                sha, p = line[2:].split("  ", 1)
                rshas[p[2:] if p.startswith("./") else p] = sha
            elif line[:2] in ("U ", "L ", "A ", "P "):
                vals[line[0]] = line[2:].strip()
        problems = []
        if rmodes != modes:
            diff = set(rmodes.items()) ^ set(modes.items())
            problems.append(f"tree entries/modes differ ({len(diff)} differences, e.g. {sorted(diff)[:3]})")
        if rshas != shas:
            diff = [p for p in set(rshas) | set(shas) if rshas.get(p) != shas.get(p)]
            problems.append(f"file contents differ ({len(diff)} files, e.g. {sorted(diff)[:3]})")
        if vals.get("U") != unit:
            problems.append("unit file differs")
        if vals.get("L") != LINK_TARGET:
            problems.append(f"wants link is {vals.get('L')!r}")
        if vals.get("A") != "active":
            problems.append(f"bench.service is {vals.get('A')!r}")
        self._pid_check(problems, vals.get("P"), expect_pid_change, before_pid)
        self._report(tool, problems)
        return vals.get("P")

    def verify_one(self, tool, host, expect_pid_change, before_pid):
        out = host.run(VERIFY_ONE, check=False)
        vals = {l[0]: l[2:].strip() for l in out.splitlines() if l[1:2] == " "}
        problems = []
        want = self.expected[1][CHANGED[len("etc/bench/"):]]
        if vals.get("S") != want:
            problems.append("changed file not on target")
        if vals.get("A") != "active":
            problems.append(f"bench.service is {vals.get('A')!r}")
        self._pid_check(problems, vals.get("P"), expect_pid_change, before_pid)
        self._report(tool, problems)
        return vals.get("P")

    def _pid_check(self, problems, pid, expect_change, before):
        if expect_change is None or before is None:
            return
        if expect_change and pid == before:
            problems.append(f"bench.service was not restarted (MainPID still {pid})")
        if not expect_change and pid != before:
            problems.append(f"bench.service was restarted (MainPID {before} -> {pid})")

    def _report(self, tool, problems):
        for p in problems:
            msg = f"{tool}: {p}"
            log("ERROR " + msg)
            self.errors.append(msg)

    def pid(self, host):
        return host.run("systemctl show -p MainPID --value bench.service").strip()

    def record(self, size, tool, scenario, secs, output):
        self.results.setdefault(size, {}).setdefault(tool, {}).setdefault(scenario, []).append(secs)
        if tool == "lab":
            m = re.search(r"(\d+) ms\)", output)
            if m:
                self.lab_inner.setdefault(size, {}).setdefault(scenario, []).append(int(m.group(1)) / 1000)
        log(f"  {size} {tool:8} {scenario:8} {secs:8.3f} s")

    def reps(self, tool, size, scenario):
        a = self.args
        n = a.reps_first if scenario == "first" else a.reps_warm
        for t, from_size, cap in a.caps:
            if t == tool and size >= from_size:
                n = min(n, cap)
        return n

    def run_size(self, size):
        a = self.args
        proj = Path(a.workdir) / f"t{size}"
        if proj.exists():
            shutil.rmtree(proj)
        self.tree = proj / "layers/base"
        self.work = proj / "tools"
        self.work.mkdir(parents=True)
        log(f"== {size} files: generating {self.tree}")
        make_tree(self.tree, size, seed=size)
        (proj / "lab.toml").write_text(lab_toml(self.hosts[:1], ["h1"]))
        self.expected = local_state(self.tree)
        tools = {}
        for i, name in enumerate(a.tools):
            h = self.hosts[i]
            if self.reps(name, size, "first") == 0 and self.reps(name, size, "change") == 0:
                self.notes.append(f"{size} files: {name} not run (capped to 0 runs)")
                continue
            if name == "lab":
                (proj / "lab.toml").write_text(lab_toml([h], ["h1"]))
                tools[name] = Lab(self, h, proj, ["h1"])
            elif name == "rsync":
                tools[name] = Rsync(self, h)
            elif name == "pyinfra":
                tools[name] = Pyinfra(self, h)
            elif name == "ansible":
                tools[name] = Ansible(self, h)
            elif name == "ansible-sync":
                tools[name] = Ansible(self, h, synchronize=True)
        # lab builds before its first sync, as a user would have done: the
        # first sync measures shipping, not rendering (and `lab sync` still
        # checks the build, which is then a no-op).
        if "lab" in tools:
            t0 = time.perf_counter()
            r = subprocess.run([self.lab, "-C", str(proj), "build"], capture_output=True, text=True)
            if r.returncode != 0:
                raise BenchError("lab build failed: " + r.stdout + r.stderr)
            self.notes.append(f"{size} files: `lab build` (clean, before the runs) took {time.perf_counter() - t0:.2f} s")
        try:
            self.load(f"{size} files, start")
            for t in tools.values():
                t.host.reset()
            # warm-up (not timed): page cache, Python bytecode, lab's facts
            for name, t in tools.items():
                if self.reps(name, size, "first") >= a.reps_first:
                    log(f"  warm-up {name}")
                    t.run("first")
                    t.host.reset()
            # first sync: rounds, every tool once per round, on a wiped host
            for r in range(a.reps_first):
                for name, t in tools.items():
                    if r >= self.reps(name, size, "first"):
                        continue
                    t.host.reset()
                    secs, out = t.run("first")
                    self.record(size, name, "first", secs, out)
                    self.verify_full(name, t.host)
            # tools whose first-sync runs were capped still need a synced
            # host for the warm cases
            pids = {}
            for name, t in tools.items():
                if self.reps(name, size, "first") == 0:
                    t.host.reset()
                    t.run("first")
                pids[name] = self.pid(t.host)
                if self.reps(name, size, "nochange") < a.reps_warm or self.reps(name, size, "first") < a.reps_first:
                    self.notes.append(f"{size} files: {name} capped to {self.reps(name, size, 'first')} first, "
                                      f"{self.reps(name, size, 'nochange')} no-change, {self.reps(name, size, 'change')} change runs")
            self.load(f"{size} files, after first syncs")
            # no change
            for r in range(a.reps_warm):
                for name, t in tools.items():
                    if r >= self.reps(name, size, "nochange"):
                        continue
                    secs, out = t.run("nochange")
                    self.record(size, name, "nochange", secs, out)
            for name, t in tools.items():
                self.verify_full(name, t.host, expect_pid_change=False, before_pid=pids[name])
            self.load(f"{size} files, after no-change syncs")
            # one file changed, the service restarted
            nrounds = max(self.reps(n, size, "change") for n in tools)
            for r in range(nrounds):
                change_file(self.tree, r + 1)
                self.expected = local_state(self.tree)
                for name, t in tools.items():
                    before = self.pid(t.host)
                    if r >= self.reps(name, size, "change"):
                        continue
                    secs, out = t.run("change")
                    self.record(size, name, "change", secs, out)
                    self.verify_one(name, t.host, expect_pid_change=True, before_pid=before)
            for name, t in tools.items():
                if self.reps(name, size, "change") == nrounds:
                    self.verify_full(name, t.host)
            self.load(f"{size} files, end")
        finally:
            for t in tools.values():
                if hasattr(t, "close"):
                    t.close()

    def run_fanout(self):
        a = self.args
        n_max = max(a.fanout)
        hosts = self.hosts[:n_max]
        size = a.fanout_size
        proj = Path(a.workdir) / "fanout"
        if proj.exists():
            shutil.rmtree(proj)
        self.tree = proj / "layers/base"
        log(f"== fan-out: {size} files to {a.fanout} hosts")
        make_tree(self.tree, size, seed=size)
        names = [f"h{i + 1}" for i in range(n_max)]
        (proj / "lab.toml").write_text(lab_toml(hosts, names))
        self.expected = local_state(self.tree)
        with concurrent.futures.ThreadPoolExecutor(n_max) as ex:
            list(ex.map(lambda h: h.reset(), hosts))
        r = subprocess.run([self.lab, "-C", str(proj), "build"], capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError("lab build failed: " + r.stdout + r.stderr)
        all_lab = Lab(self, hosts[0], proj, names, all_machines=True)
        secs, _ = all_lab.run("first")
        self.fan.setdefault(n_max, {}).setdefault("first (once)", []).append(secs)
        log(f"  fan-out first sync to {n_max} hosts: {secs:.3f} s")
        for h in hosts:
            self.verify_full("lab fan-out", h)
        self.load("fan-out, after first sync")
        tools = {n: Lab(self, hosts[0], proj, names[:n], all_machines=(n == n_max)) for n in a.fanout}
        for r in range(a.reps_warm):
            for n, t in tools.items():
                secs, _ = t.run("nochange")
                self.fan.setdefault(n, {}).setdefault("nochange", []).append(secs)
                log(f"  fan-out {n} hosts nochange {secs:.3f} s")
        rev = 0
        for r in range(a.reps_warm):
            for n, t in tools.items():
                rev += 1
                change_file(self.tree, rev)
                self.expected = local_state(self.tree)
                before = {h.name: self.pid(h) for h in hosts[:n]}
                secs, _ = t.run("change")
                self.fan.setdefault(n, {}).setdefault("change", []).append(secs)
                log(f"  fan-out {n} hosts change   {secs:.3f} s")
                for h in hosts[:n]:
                    self.verify_one(f"lab fan-out {h.name}", h, True, before[h.name])
        self.load("fan-out, end")


def lab_version(args, cmd):
    """The commit the lab binary was built from: LAB.commit beside the
    binary when present (a build from a `git archive` snapshot), else this
    checkout's HEAD (and whether its tree has uncommitted changes)."""
    stamp = Path(args.lab + ".commit")
    if stamp.exists():
        return f"{args.lab} (built from a clean snapshot of commit {stamp.read_text().strip()[:12]})"
    dirty = cmd(f"git -C {REPO} status --porcelain --untracked-files=no")
    return (f"{args.lab} (checkout at commit {cmd(f'git -C {REPO} rev-parse --short HEAD')}"
            f"{', with uncommitted changes' if dirty else ''})")


def environment(args):
    def cmd(c):
        try:
            return subprocess.run(c, capture_output=True, text=True, shell=True).stdout.strip()
        except Exception as e:  # noqa
            return str(e)

    cpu = cmd("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": cmd("free -m | awk '/Mem:/ {print $2 \" MB\"}'"),
        "kernel": cmd("uname -r"),
        "lab": lab_version(args, cmd),
        "rsync": cmd("rsync --version | head -1"),
        "openssh": cmd("ssh -V 2>&1"),
        "ansible": cmd(f"{args.venv}/bin/ansible-playbook --version | head -1"),
        "pyinfra": cmd(f"{args.venv}/bin/pyinfra --version"),
        "python": sys.version.split()[0],
        "targets": "Debian bookworm systemd-nspawn containers (benches/sync/benchhosts), "
                   "each in its own network namespace on a veth pair",
    }


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def report(bench, env, args):
    out = []
    w = out.append
    w("## Environment\n")
    for k, v in env.items():
        w(f"- {k}: {v}")
    w("- load average (1, 5, 15 min): " + "; ".join(
        f"{what}: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}" for what, la in bench.loads))
    for n in bench.notes:
        w(f"- {n}")
    w("")
    goals = []
    for size, per_tool in bench.results.items():
        w(f"## {size} files (median seconds, wall clock of the whole command; runs in brackets)\n")
        # A tool not run at this size but at a smaller one: linear
        # extrapolation (Ansible's copy and pyinfra cost a fixed time per file).
        extra = {}
        for t in args.tools:
            if t in per_tool:
                continue
            smaller = [s for s in bench.results if s < size and t in bench.results[s]]
            if smaller:
                s0 = max(smaller)
                extra[t] = {sc: median(bench.results[s0][t].get(sc, [])) * size / s0
                            for sc in SCENARIOS if bench.results[s0][t].get(sc)}
                extra[t]["from"] = s0
        tools = [t for t in args.tools if t in per_tool or t in extra]
        w("| scenario | " + " | ".join(tools) + " |")
        w("|---|" + "---|" * len(tools))
        for sc in SCENARIOS:
            cells = []
            for t in tools:
                if t in extra:
                    x = extra[t].get(sc)
                    cells.append(f"~{fmt(x)} (extrapolated)" if x is not None else "-")
                    continue
                xs = per_tool[t].get(sc, [])
                cells.append(f"{fmt(median(xs))} ({len(xs)})" if xs else "-")
            w(f"| {sc} | " + " | ".join(cells) + " |")
        for t, e in extra.items():
            w(f"\n{t} was not run at {size} files: its column is its {e['from']}-file median "
              f"times {size // e['from']} (linear extrapolation, not a measurement).")
        inner = bench.lab_inner.get(size, {})
        if inner:
            w("")
            w("lab's own sync phase (the `(N ms)` lab prints per machine: probe, plan, "
              "send, apply, units; not connect and build), median: " +
              ", ".join(f"{sc} {fmt(median(inner[sc]))} s" for sc in SCENARIOS if sc in inner))
        w("")
        m = {t: {sc: median(per_tool[t].get(sc, [])) for sc in SCENARIOS} for t in tools if t in per_tool}
        for t, e in extra.items():
            m[t] = {sc: e.get(sc) for sc in SCENARIOS}
        lab = m.get("lab", {})
        rows = []
        if "rsync" in m:
            rows.append(("lab / rsync, no change", ratio(lab.get("nochange"), m["rsync"]["nochange"]), "<= 0.5", lambda r: r <= 0.5))
            rows.append(("lab / (rsync + ssh restart), one change", ratio(lab.get("change"), m["rsync"]["change"]), "<= 0.3", lambda r: r <= 0.3))
            rows.append(("lab / (rsync + ssh restart), first sync", ratio(lab.get("first"), m["rsync"]["first"]), "(no goal)", None))
        for other, goal in (("ansible", 20), ("ansible-sync", 20), ("pyinfra", 5)):
            if other in m:
                for sc in SCENARIOS:
                    label = f"{other} / lab, {sc}" + (" (extrapolated)" if other in extra else "")
                    rows.append((label, ratio(m[other][sc], lab.get(sc)), f">= {goal}", (lambda g: lambda r: r >= g)(goal)))
        w("| ratio | value | goal | |")
        w("|---|---|---|---|")
        for name, r, goal, ok in rows:
            verdict = "" if ok is None or r is None else ("met" if ok(r) else "**missed**")
            w(f"| {name} | {fmt(r) if r is not None else '-'}x | {goal} | {verdict} |")
            if ok is not None and r is not None:
                goals.append((f"{size} files: {name}", r, goal, verdict))
        w("")
    if bench.fan:
        w(f"## Fan-out: `lab sync -j 8` to 1, 4, 8 hosts ({args.fanout_size} files each; median seconds)\n")
        ns = sorted(n for n in bench.fan if "nochange" in bench.fan[n])
        w("| scenario | " + " | ".join(f"{n} host{'s' if n > 1 else ''}" for n in ns) + f" | {ns[-1]} / {ns[0]} |")
        w("|---|" + "---|" * (len(ns) + 1))
        for sc in ("nochange", "change"):
            meds = [median(bench.fan[n].get(sc, [])) for n in ns]
            r = ratio(meds[-1], meds[0])
            w(f"| {sc} | " + " | ".join(fmt(x) for x in meds) + f" | {fmt(r)}x |")
            if r is not None:
                goals.append((f"fan-out {ns[-1]} vs {ns[0]} hosts, {sc}", r, "<= 2",
                              "met" if r <= 2 else "**missed**"))
        for n, d in bench.fan.items():
            if "first (once)" in d:
                w(f"\nFirst sync of {n} hosts at once (one run): {fmt(d['first (once)'][0])} s")
        w("")
    w("## Goals\n")
    w("| goal | value | target | |")
    w("|---|---|---|---|")
    for name, r, goal, verdict in goals:
        w(f"| {name} | {fmt(r)}x | {goal} | {verdict} |")
    w("")
    if bench.errors:
        w("## Errors\n")
        for e in bench.errors:
            w(f"- {e}")
        w("")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lab", default="/work/target-syncbench/release/lab", help="the lab binary (release)")
    p.add_argument("--venv", default="/work/venv-bench", help="venv with ansible-core and pyinfra")
    p.add_argument("--workdir", default="/var/tmp/lab-syncbench")
    p.add_argument("--fleet", default="sb", help="test host fleet name (LAB_TESTHOSTS_NAME)")
    p.add_argument("--cache", help="LAB_BENCHHOSTS_CACHE for benchhosts")
    p.add_argument("--keep-fleet", action="store_true", help="leave the fleet running at the end")
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--reps-first", type=int, default=3)
    p.add_argument("--reps-warm", type=int, default=5)
    p.add_argument("--cap", action="append", metavar="TOOL:FROM_SIZE:RUNS",
                   help="at most RUNS runs per scenario of TOOL for trees of FROM_SIZE files or more "
                        "(0: not run); default: ansible:1000:1 ansible:10000:0 pyinfra:1000:3 pyinfra:10000:1")
    p.add_argument("--fanout", default="1,4,8", help="host counts for the fan-out ('' to skip)")
    p.add_argument("--fanout-size", type=int, default=1000)
    p.add_argument("--json", help="write raw results here")
    p.add_argument("--markdown", help="write the report here too")
    args = p.parse_args()
    args.sizes = [int(x) for x in args.sizes.split(",") if x]
    args.tools = [t for t in args.tools.split(",") if t]
    args.fanout = [int(x) for x in args.fanout.split(",") if x]
    caps = args.cap if args.cap is not None else \
        ["ansible:1000:1", "ansible:10000:0", "pyinfra:1000:3", "pyinfra:10000:1"]
    args.caps = []
    for c in caps:
        t, f, n = c.split(":")
        args.caps.append((t, int(f), int(n)))
    for t in args.tools:
        if t not in TOOLS:
            p.error(f"unknown tool {t}")
    if os.geteuid() != 0:
        p.error("must run as root (the test hosts need it)")
    if not Path(args.lab).exists():
        p.error(f"no lab binary at {args.lab}: CARGO_TARGET_DIR=... cargo build --release -p lab-cli")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    env = environment(args)
    hosts = fleet_up(args)
    bench = Bench(args, hosts)
    failed = None
    try:
        for size in args.sizes:
            bench.run_size(size)
        if args.fanout and "lab" in args.tools:
            bench.run_fanout()
    except BenchError as e:
        failed = str(e)
        log("FAILED: " + failed)
    finally:
        if not args.keep_fleet:
            fleet_down(args)
    text = report(bench, env, args)
    if failed:
        text += f"\n## Aborted\n\n{failed}\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "environment": env, "loads": bench.loads, "results": bench.results,
            "lab_sync_phase": bench.lab_inner, "fanout": bench.fan,
            "errors": bench.errors, "notes": bench.notes, "aborted": failed,
        }, indent=1))
    return 1 if failed or bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
