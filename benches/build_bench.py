#!/usr/bin/env python3
"""`lab build` side by side with the GNU make + m4 pipeline it replaces.

    benches/build_bench.py [--quick] [--sizes 1000,10000,100000] [--lab PATH]

For each size N it generates a synthetic lab with benches/gen_lab.py (the lab
project and the equivalent Makefile in one directory) and measures, for lab
and for make, each in a fresh process and both with 2 jobs (`lab build -j 2`,
`make -r -j2`):

  cold     empty .lab/ vs empty make-out/           (median of --cold-reps)
  no-op    build again with nothing to do           (median of --reps)
  edit     append a line to one plain source used by one machine, build
  fact     change a fact that 4 templates read (lab.toml for lab, the
           included facts.mk, on which every m4 rule depends, for make)
  floor    lstat every entry of layers/ and machines/ and nothing else
           (benches/lstat_walk.c: getdents64 + fstatat; the faster of its
           1-thread and 2-thread medians)

plus lab's peak RSS in each scenario. Every timed command runs under a tiny
C launcher (benches/measure.c): wall time from CLOCK_MONOTONIC around
fork + exec + wait4 (so it includes the command's start-up; the cost of
running /bin/true the same way is reported beside it) and peak RSS from
ru_maxrss, which is what GNU time's %M prints (--time-check confirms it
against /usr/bin/time -f %M once per size). Before each timed run the page cache is
warm, `sync` has flushed earlier writes and the CPUs have been idle for a
moment (other people's builds share this machine: a run during which other
processes used more than a quarter of a core is discarded and repeated);
each scenario starts from a settled tree (an untimed build first). Output
trees are never deleted right before a timed run (see Trash).

The script never fails on timings; it fails when a build fails or when the
make and lab trees differ (full listing with kinds, modes and link targets,
file contents for a sample plus every file a scenario touched).

--quick: N=1000 only, one repetition of everything (about a minute).

--versus OLD_LAB: two lab binaries instead of lab and make, one interleaved
run: each size is generated twice (the binaries' state formats may differ),
each binary builds its own copy, and every repetition of no-op, one-file
edit and the lstat floor runs once for each, alternating. The report gives
both medians and their ratios (new / old, no-op / floor).
"""

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import gen_lab  # noqa: E402

GOAL_NOOP_VS_FLOOR = 2.0      # no-op within 2x of the lstat floor
GOAL_EDIT_10K_MS = 30.0       # one-file edit at 10k sources, fresh process
GOAL_COLD_VS_MAKE = 20.0      # cold build at least 20x faster than make


# -- running things --------------------------------------------------------

class Run:
    def __init__(self, wall, rss_kb, rc, out, cpu=0.0, other=0.0):
        self.wall = wall      # seconds
        self.rss_kb = rss_kb  # peak RSS
        self.rc = rc
        self.out = out        # stdout
        self.cpu = cpu        # CPU seconds of the command and its children
        self.other = other    # CPU seconds used by everything else meanwhile

    @property
    def noisy(self):
        """Did something else use a sizeable share of the CPUs meanwhile?
        /proc/stat counts in 10 ms ticks, so short runs are judged only
        by the quiet check before them."""
        return self.wall >= 0.2 and self.other > 0.25 * self.wall


TICK = os.sysconf("SC_CLK_TCK")


def cpu_ticks():
    """(busy, total) ticks of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    total = sum(v[:8])
    idle = v[3] + v[4]
    return total - idle, total


def wait_quiet(log, max_wait):
    """Wait until the CPUs are idle (>= 85% over a 0.3 s window, twice in a
    row; a few percent of background noise never goes away here): other
    people's builds must not share our 2 cores. Gives up after max_wait
    seconds. Returns the seconds waited."""
    t0 = time.monotonic()
    calm = 0
    warned = False
    while True:
        b0, t0_ = cpu_ticks()
        time.sleep(0.3)
        b1, t1_ = cpu_ticks()
        idle = 1 - (b1 - b0) / max(1, t1_ - t0_)
        calm = calm + 1 if idle >= 0.85 else 0
        if calm >= 2:
            return time.monotonic() - t0
        waited = time.monotonic() - t0
        if waited > 10 and not warned:
            log(f"   (waiting for the CPUs to be idle: {100 * (1 - idle):.0f}% busy)")
            warned = True
        if waited > max_wait:
            log(f"   (gave up waiting for idle CPUs after {waited:.0f} s; measuring anyway)")
            return waited


def run(argv, log_dir, check=True):
    """Run argv through the `measure` helper (benches/measure.c), stdout and
    stderr to files: wall seconds, peak RSS in KiB, exit code, stdout."""
    exe = shutil.which(argv[0])
    if exe is None:
        sys.exit(f"not found: {argv[0]}")
    out_p = os.path.join(log_dir, "stdout")
    err_p = os.path.join(log_dir, "stderr")
    res_p = os.path.join(log_dir, "measure")
    fa = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, out_p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
        (os.POSIX_SPAWN_OPEN, 2, err_p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644),
    ]
    measure = os.path.join(log_dir, "measure-bin")
    b0, _ = cpu_ticks()
    pid = os.posix_spawn(measure, [measure, res_p, exe] + argv[1:], os.environ, file_actions=fa)
    _, status = os.waitpid(pid, 0)
    b1, _ = cpu_ticks()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"measure failed on {' '.join(argv)}")
    with open(res_p) as f:
        ns, rss, rc, cpu_ns = (int(x) for x in f.read().split())
    with open(out_p, errors="replace") as f:
        out = f.read()
    if check and rc != 0:
        with open(err_p, errors="replace") as f:
            err = f.read()
        sys.exit(f"command failed ({rc}): {' '.join(argv)}\n{out[-3000:]}\n{err[-3000:]}")
    other = max(0.0, (b1 - b0) / TICK - cpu_ns / 1e9)
    return Run(ns / 1e9, rss, rc, out, cpu_ns / 1e9, other)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


class Tool:
    def __init__(self, lab_bin, jobs, log_dir):
        self.lab_bin = lab_bin
        self.jobs = jobs
        self.log_dir = log_dir

    def lab(self, d, check=True):
        return run([self.lab_bin, "-C", d, "build", "-j", str(self.jobs)], self.log_dir, check)

    def make(self, d, check=True):
        return run(["make", "-r", "-C", d, f"-j{self.jobs}"], self.log_dir, check)

    def floor(self, d, threads):
        return run([os.path.join(self.log_dir, "lstat_walk"), "-j", str(threads),
                    os.path.join(d, "layers"), os.path.join(d, "machines")], self.log_dir)


def settle():
    """Let earlier writes reach the disk and the clock move on, so that a
    timed run neither pays for earlier writeback nor shares a timestamp
    tick with the previous build."""
    os.sync()
    time.sleep(0.05)


def rm_rf(p):
    if os.path.lexists(p):
        shutil.rmtree(p)


# ext4 without a journal (as here) skips free inodes that were deleted in
# the last 60 s, or 300 s while their inode table block is dirty (and a new
# inode next to them dirties it), when it allocates new ones, scanning past
# each of them (recently_deleted() in fs/ext4/ialloc.c). Creating 30k files
# right after deleting 300k cost 10x more CPU, all in the kernel under
# ext4_create (seen with perf). So no output tree is deleted during a run:
# old trees are renamed into the trash, which is emptied before the first
# size (followed by a sync and a pause longer than 300 s) and at the end.
TRASH_PAUSE = 330


class Trash:
    def __init__(self, work):
        self.dir = os.path.join(work, "trash")
        self.n = 0

    def put(self, p):
        if os.path.lexists(p):
            os.makedirs(self.dir, exist_ok=True)
            self.n += 1
            os.rename(p, os.path.join(self.dir, f"{os.getpid()}-{self.n}"))

    def empty(self, log, pause=True):
        if os.path.lexists(self.dir):
            t0 = time.monotonic()
            shutil.rmtree(self.dir)
            os.sync()
            log(f"   (deleted old trees in {time.monotonic() - t0:.0f} s"
                + (f"; pausing {TRASH_PAUSE} s so ext4 forgets them)" if pause else ")"))
            if pause:
                time.sleep(TRASH_PAUSE)


# -- comparing the two trees -------------------------------------------------

def listing(root):
    """{rel: (kind, mode, target)} of everything below root."""
    res = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if os.path.islink(p):
                res[rel] = ("link", None, os.readlink(p))
            elif os.path.isdir(p):
                res[rel] = ("dir", st.st_mode & 0o7777, None)
            else:
                res[rel] = ("file", st.st_mode & 0o7777, None)
        # os.walk does not descend into symlinked dirs by default
    return res


def compare_trees(d, meta, sample=300, must=()):
    """Assert make-out/<m> equals .lab/out/<m>: listing, kinds, modes, link
    targets for everything; content for a random sample and for `must`
    ((machine, path) pairs)."""
    rng = random.Random(7)
    checked = 0
    for m in meta["machines"]:
        a = listing(os.path.join(d, ".lab", "out", m))
        b = listing(os.path.join(d, "make-out", m))
        if a != b:
            only_a = sorted(set(a) - set(b))[:5]
            only_b = sorted(set(b) - set(a))[:5]
            diff = sorted(k for k in set(a) & set(b) if a[k] != b[k])[:5]
            raise AssertionError(f"{m}: lab and make trees differ: only lab {only_a}, "
                                 f"only make {only_b}, different {[(k, a[k], b[k]) for k in diff]}")
        files = sorted(k for k, v in a.items() if v[0] == "file")
        picks = set(rng.sample(files, min(sample // len(meta["machines"]) + 1, len(files))))
        picks |= {p for mm, p in must if mm == m}
        for p in sorted(picks):
            with open(os.path.join(d, ".lab", "out", m, p), "rb") as f:
                x = f.read()
            with open(os.path.join(d, "make-out", m, p), "rb") as f:
                y = f.read()
            assert x == y, f"{m}/{p}: lab and make contents differ"
            checked += 1
    return checked


# -- edits -----------------------------------------------------------------

def append_line(path, text):
    with open(path, "a") as f:
        f.write(text + "\n")
    now = time.time()
    os.utime(path, (now, now))  # `touch`, as one would for make


def set_fact_lab(d, name, value):
    p = os.path.join(d, "lab.toml")
    with open(p) as f:
        lines = f.read().split("\n")
    hit = False
    for i, ln in enumerate(lines):
        if ln.startswith(f"{name} = "):
            lines[i] = f"{name} = {json.dumps(value)}"
            hit = True
            break
    assert hit, f"{name} not in lab.toml [facts]"
    with open(p, "w") as f:
        f.write("\n".join(lines))


def set_fact_make(d, m4name, value):
    p = os.path.join(d, "facts.mk")
    with open(p) as f:
        lines = f.read().split("\n")
    hit = False
    for i, ln in enumerate(lines):
        if ln.startswith(f"{m4name} := "):
            lines[i] = f"{m4name} := {value}"
            hit = True
    assert hit, f"{m4name} not in facts.mk"
    with open(p, "w") as f:
        f.write("\n".join(lines))


# -- one size ----------------------------------------------------------------

class Bench:
    """Repetitions of one size, with the bookkeeping."""

    def __init__(self, d, args, tool, log):
        self.d, self.args, self.tool, self.log = d, args, tool, log
        self.res = {"lab": {}, "make": {}, "lab_rss_kb": {}, "make_rss_kb": {},
                    "lab_said": {}, "runs": {}, "discarded": 0}
        self.all = {}

    def reps(self, scn, who, n, prepare, action):
        """n timed runs of action(), each after prepare() (untimed), a sync
        and idle CPUs. A run during which something else used the CPUs is
        discarded and done again (at most 2n extra attempts)."""
        runs, extra = [], 2 * n
        while len(runs) < n:
            prepare()
            settle()
            wait_quiet(self.log, self.args.max_wait)
            r = action()
            if r.noisy and extra > 0:
                extra -= 1
                self.res["discarded"] += 1
                self.log(f"   ({scn} {who}: discarded a {r.wall * 1000:.0f} ms run: other processes "
                         f"used {r.other:.2f} CPU-s meanwhile)")
                continue
            runs.append(r)
        key = f"{scn}.{who}"
        runs = self.all.setdefault(key, []) + runs  # cold: one call per repetition
        self.all[key] = runs
        self.res["runs"][key] = [{"wall": r.wall, "rss_kb": r.rss_kb, "cpu": r.cpu, "other": r.other}
                                 for r in runs]
        med = median([r.wall for r in runs])
        if who.startswith("floor"):
            self.res[who] = med
            self.res["floor_entries"] = int(runs[-1].out.strip())
        else:
            self.res[who][scn] = med
            self.res[f"{who}_rss_kb"][scn] = max(r.rss_kb for r in runs)
            if who == "lab":
                self.res["lab_said"][scn] = runs[-1].out.strip().split("\n")[-1]
        self.log(f"   {scn:6} {who:5} median {med * 1000:9.1f} ms  "
                 f"(runs: {', '.join(f'{r.wall * 1000:.1f}' for r in runs)}; "
                 f"peak RSS {max(r.rss_kb for r in runs) / 1024:.1f} MiB; "
                 f"CPU {median([r.cpu for r in runs]) * 1000:.0f} ms)")
        return runs


def nothing():
    pass


def bench_size(n, args, tool, log, trash):
    d = os.path.join(args.work, f"lab-{n}")
    log(f"\n== N = {n}: generating {d}")
    trash.put(d)
    t0 = time.perf_counter()
    meta = gen_lab.generate(d, n)
    log(f"   {meta['sources']} sources ({meta['plain_files']} plain, {meta['templates']} templates, "
        f"{meta['symlinks']} symlinks), {meta['layers']} layers + _, {len(meta['machines'])} machines, "
        f"{meta['outputs_total']} output files; {time.perf_counter() - t0:.1f} s")
    b = Bench(d, args, tool, log)
    res = b.res
    res["n"] = n
    res["meta"] = {k: meta[k] for k in ("sources", "layers", "plain_files", "templates",
                                        "symlinks", "outputs_total")}
    lab_dir, make_out = os.path.join(d, ".lab"), os.path.join(d, "make-out")

    # cold: lab and make alternate, each from an empty output directory
    for i in range(args.cold_reps):
        b.reps("cold", "lab", 1, lambda: trash.put(lab_dir), lambda: tool.lab(d))
        b.reps("cold", "make", 1, lambda: trash.put(make_out), lambda: tool.make(d))
    checked = compare_trees(d, meta)
    log(f"   trees equal (all {meta['outputs_total']} files' kinds, modes, targets; {checked} contents)")

    # no-op
    if run(["make", "-r", "-q", "-C", d], tool.log_dir, check=False).rc != 0:
        sys.exit("make -q says make-out is not up to date after a build")
    tool.lab(d)
    noop = b.reps("noop", "lab", args.reps, nothing, lambda: tool.lab(d))
    if not all(" 0 read)" in r.out for r in noop):
        log("   note: a no-op lab build read sources: " + noop[-1].out.strip().splitlines()[-1])
    b.reps("noop", "make", args.reps, nothing, lambda: tool.make(d))

    # floor: the faster of one and two threads
    b.reps("floor", "floor1", args.reps, nothing, lambda: tool.floor(d, 1))
    b.reps("floor", "floor2", args.reps, nothing, lambda: tool.floor(d, 2))
    res["floor"] = min(res["floor1"], res["floor2"])

    # one-file edit
    src = os.path.join(d, meta["edit"]["source"])
    em = meta["edit"]["machine"]
    log(f"   edit: {meta['edit']['source']} (used by {em} only)")
    k = iter(range(1000))
    tool.lab(d)
    b.reps("edit", "lab", args.reps, lambda: append_line(src, f"lab_edit_{next(k)} = yes"),
           lambda: tool.lab(d))
    tool.make(d)
    b.reps("edit", "make", args.reps, lambda: append_line(src, f"make_edit_{next(k)} = yes"),
           lambda: tool.make(d))

    # fact change
    cf = meta["changed_fact"]
    log(f"   fact: {cf['name']} (read by {len(cf['templates'])} templates, "
        f"{len(cf['outputs'])} outputs)")
    tool.lab(d)
    b.reps("fact", "lab", args.reps,
           lambda: set_fact_lab(d, cf["name"], f"backup-{next(k)}.example.org"), lambda: tool.lab(d))
    tool.make(d)
    b.reps("fact", "make", args.reps,
           lambda: set_fact_make(d, cf["m4_name"], f"backup-{next(k)}.example.org"), lambda: tool.make(d))

    # both trees at the same state again, then compare
    set_fact_lab(d, cf["name"], "backup-final.example.org")
    set_fact_make(d, cf["m4_name"], "backup-final.example.org")
    settle()
    tool.lab(d)
    tool.make(d)
    must = [(m, p) for m, p in cf["outputs"]] + [(em, meta["edit"]["output"])]
    checked = compare_trees(d, meta, must=must)
    log(f"   trees equal after the edits ({checked} contents, including the edited file "
        f"and the {len(cf['outputs'])} outputs of the changed fact)")

    if args.time_check:
        run(["/usr/bin/time", "-f", "%M", tool.lab_bin, "-C", d, "build", "-j", str(tool.jobs)],
            tool.log_dir)
        with open(os.path.join(tool.log_dir, "stderr")) as f:
            res["time_M_noop_kb"] = int(f.read().strip().splitlines()[-1])
        log(f"   /usr/bin/time -f %M on a no-op: {res['time_M_noop_kb'] / 1024:.1f} MiB "
            f"(measure: {res['lab_rss_kb']['noop'] / 1024:.1f} MiB)")

    if not args.keep:
        trash.put(d)
    return res


def versus_size(n, args, old, new, log, trash):
    """--versus: the old and the new binary, interleaved (see the module
    note). Make is not run."""
    d_old = os.path.join(args.work, f"lab-{n}-old")
    d_new = os.path.join(args.work, f"lab-{n}-new")
    log(f"\n== N = {n}: generating {d_old} and {d_new}")
    for d in (d_old, d_new):
        trash.put(d)
        meta = gen_lab.generate(d, n)
    b = Bench(d_new, args, new, log)
    b.res.update({"old": {}, "new": {}, "old_rss_kb": {}, "new_rss_kb": {}})
    res = b.res
    res["n"] = n
    res["meta"] = {k: meta[k] for k in ("sources", "layers", "plain_files", "templates",
                                        "symlinks", "outputs_total")}
    pairs = [("old", old, d_old), ("new", new, d_new)]
    for _, tool, d in pairs:  # cold, then a settled no-op (untimed)
        tool.lab(d)
        settle()
        tool.lab(d)
    for i in range(args.reps):
        for who, tool, d in pairs:
            b.reps("noop", who, 1, nothing, lambda: tool.lab(d))
        for threads in (1, 2):
            b.reps("floor", f"floor{threads}", 1, nothing, lambda: new.floor(d_new, threads))
    res["floor"] = min(res["floor1"], res["floor2"])
    k = iter(range(10000))
    edit = meta["edit"]["source"]
    log(f"   edit: {edit} (used by {meta['edit']['machine']} only)")
    for i in range(args.reps):
        for who, tool, d in pairs:
            src = os.path.join(d, edit)
            b.reps("edit", who, 1, lambda: append_line(src, f"edit_{next(k)} = yes"),
                   lambda: tool.lab(d))
    # both trees the same
    for _, tool, d in pairs:
        tool.lab(d)
    a, c = listing(os.path.join(d_old, ".lab", "out")), listing(os.path.join(d_new, ".lab", "out"))
    if a != c:
        sys.exit("the old and the new binary built different trees")
    log("   old and new trees equal")
    if not args.keep:
        trash.put(d_old)
        trash.put(d_new)
    return res


def versus_report(results, info):
    lines = [f"lab {info.get('versus_old', 'old')} (old) vs {info.get('lab', 'new')} (new), "
             "one interleaved run", "",
             "| N | scenario | old | new | new / old | new peak RSS |",
             "|---|---|---:|---:|---:|---:|"]
    for r in results:
        for scn, label in (("noop", "no-op"), ("edit", "one-file edit")):
            o, w = r["old"][scn], r["new"][scn]
            lines.append(f"| {fmt_size(r['n'])} | {label} | {fmt_ms(o)} | {fmt_ms(w)} | "
                         f"{w / o:.2f} | {r['new_rss_kb'][scn] / 1024:.0f} MiB |")
        f = r["floor"]
        lines.append(f"| {fmt_size(r['n'])} | lstat floor | {fmt_ms(f)} | | "
                     f"no-op / floor: old {r['old']['noop'] / f:.2f}x, new {r['new']['noop'] / f:.2f}x | |")
    return "\n".join(lines)


# -- report ------------------------------------------------------------------

def fmt_ms(s):
    ms = s * 1000
    if ms >= 10000:
        return f"{ms / 1000:.1f} s"
    if ms >= 100:
        return f"{ms:.0f} ms"
    return f"{ms:.1f} ms"


def fmt_size(n):
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def report(results, info):
    L = []
    L.append("| N | scenario | lab | make | make / lab | lab peak RSS |")
    L.append("|---|---|---:|---:|---:|---:|")
    for r in results:
        for scn, name in [("cold", "cold build"), ("noop", "no-op"), ("edit", "one-file edit"),
                          ("fact", "one fact change")]:
            lab, make = r["lab"][scn], r["make"][scn]
            L.append(f"| {fmt_size(r['n'])} | {name} | {fmt_ms(lab)} | {fmt_ms(make)} | "
                     f"{make / lab:.1f}x | {r['lab_rss_kb'][scn] / 1024:.0f} MiB |")
        L.append(f"| {fmt_size(r['n'])} | lstat floor | {fmt_ms(r['floor'])} | | "
                 f"lab no-op / floor: **{r['lab']['noop'] / r['floor']:.2f}x** | |")
        L.append(f"| | (floor: 1 thread {fmt_ms(r['floor1'])}, 2 threads {fmt_ms(r['floor2'])}) | | | | |")
    L.append("")
    L.append("| N | sources | layers | output files (all machines) | entries lstat'ed |")
    L.append("|---|---:|---:|---:|---:|")
    for r in results:
        m = r["meta"]
        L.append(f"| {fmt_size(r['n'])} | {m['sources']} ({m['templates']} templates, {m['symlinks']} symlinks) "
                 f"| {m['layers']} + `_` | {m['outputs_total']} | {r['floor_entries']} |")
    L.append("")
    L.append("Goals:")
    for r in results:
        ratio = r["lab"]["noop"] / r["floor"]
        L.append(f"- N={fmt_size(r['n'])}: no-op {fmt_ms(r['lab']['noop'])} = {ratio:.3f}x the lstat floor "
                 f"(goal <= {GOAL_NOOP_VS_FLOOR:g}x): {'met' if ratio <= GOAL_NOOP_VS_FLOOR else 'MISSED'}")
    for r in results:
        if r["n"] == 10000:
            e = r["lab"]["edit"] * 1000
            L.append(f"- N=10k: one-file edit {e:.1f} ms (goal <= {GOAL_EDIT_10K_MS:g} ms): "
                     f"{'met' if e <= GOAL_EDIT_10K_MS else 'MISSED'}")
    for r in results:
        ratio = r["make"]["cold"] / r["lab"]["cold"]
        L.append(f"- N={fmt_size(r['n'])}: cold {ratio:.2f}x faster than make (goal >= {GOAL_COLD_VS_MAKE:g}x): "
                 f"{'met' if ratio >= GOAL_COLD_VS_MAKE else 'MISSED'}")
    L.append("")
    L.append("Machine: " + info["machine"])
    L.append(f"lab: {info['lab']}; {info['make']}; {info['m4']}; "
             f"spawning /bin/true costs {info['spawn_ms']:.2f} ms (included in every figure)")
    return "\n".join(L)


def system_info(lab_bin, jobs, log_dir):
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    mem = sh("free -g | awk '/Mem:/{print $2}'")
    fs = sh(f"df -T {log_dir} | awk 'NR==2{{print $2}}'")
    commit = sh(f"git -C {REPO} rev-parse --short HEAD")
    dirty = sh(f"git -C {REPO} status --porcelain -- crates Cargo.toml Cargo.lock")
    spawn = median([run(["true"], log_dir).wall for _ in range(20)]) * 1000
    return {
        "machine": f"{os.cpu_count()} cores ({cpu}), {mem} GiB RAM, {platform.system()} "
                   f"{platform.release()}, work dir on {fs}; both tools run with {jobs} jobs",
        "lab": f"{lab_bin} at commit {commit}{' (+ uncommitted changes)' if dirty else ''}",
        "make": sh("make --version | head -1"),
        "m4": sh("m4 --version | head -1"),
        "spawn_ms": spawn,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--quick", action="store_true", help="N=1000, one repetition")
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of warm scenarios (median)")
    ap.add_argument("--cold-reps", type=int, default=3, help="repetitions of the cold build (median)")
    ap.add_argument("--jobs", type=int, default=2)
    default_lab = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")),
                               "release", "lab")
    ap.add_argument("--lab", default=os.environ.get("LAB_BIN", default_lab),
                    help=f"lab binary (default $LAB_BIN or {default_lab})")
    ap.add_argument("--work", default=os.path.join(HERE, "work"), help="scratch directory")
    ap.add_argument("--keep", action="store_true", help="keep the generated labs")
    ap.add_argument("--max-wait", type=float, default=300,
                    help="seconds to wait for idle CPUs before a run (default 300)")
    ap.add_argument("--no-time-check", dest="time_check", action="store_false",
                    help="skip the /usr/bin/time -f %%M cross-check")
    ap.add_argument("--report", metavar="JSON", help="only print the report of an earlier run's results-*.json")
    ap.add_argument("--versus", metavar="OLD_LAB",
                    help="compare with another lab binary, interleaved, instead of make")
    args = ap.parse_args()
    if args.report:
        with open(args.report) as f:
            saved = json.load(f)
        print(report(saved["results"], saved["info"]))
        return
    if args.quick:
        args.sizes, args.reps, args.cold_reps = "1000", 1, 1
    sizes = [int(s) for s in args.sizes.split(",")]
    args.lab = os.path.abspath(args.lab)
    if not os.access(args.lab, os.X_OK):
        sys.exit(f"no lab binary at {args.lab}: cargo build --release -p lab-cli (or --lab PATH)")
    for t in ["make", "m4", "cc"] + (["/usr/bin/time"] if args.time_check else []):
        if shutil.which(t) is None:
            sys.exit(f"{t} is missing (apt-get install make m4 gcc time)")
    os.makedirs(args.work, exist_ok=True)
    log_dir = os.path.join(args.work, "run")
    os.makedirs(log_dir, exist_ok=True)
    for src, exe in [("lstat_walk.c", "lstat_walk"), ("measure.c", "measure-bin")]:
        subprocess.run(["cc", "-O2", "-pthread", "-o", os.path.join(log_dir, exe),
                        os.path.join(HERE, src)], check=True)
    tool = Tool(args.lab, args.jobs, log_dir)
    info = system_info(args.lab, args.jobs, log_dir)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_path = os.path.join(args.work, f"results-{stamp}.log")
    logf = open(log_path, "w")

    def log(s):
        print(s, flush=True)
        logf.write(s + "\n")
        logf.flush()

    log(f"lab build vs make -j{args.jobs}; sizes {sizes}; {args.reps} reps (cold {args.cold_reps})")
    log(info["machine"])
    trash = Trash(args.work)
    for n in sizes:  # leftovers of earlier runs
        for suffix in ("", "-old", "-new"):
            trash.put(os.path.join(args.work, f"lab-{n}{suffix}"))
    trash.empty(log, pause=not args.quick)
    if args.versus:
        old = Tool(os.path.abspath(args.versus), args.jobs, log_dir)
        info["versus_old"] = os.path.abspath(args.versus)
        info["lab"] = args.lab
        results = [versus_size(n, args, old, tool, log, trash) for n in sizes]
        trash.empty(log, pause=False)
        text = versus_report(results, info)
    else:
        results = [bench_size(n, args, tool, log, trash) for n in sizes]
        trash.empty(log, pause=False)
        text = report(results, info)
    log("\n" + text)
    with open(os.path.join(args.work, f"results-{stamp}.json"), "w") as f:
        json.dump({"info": info, "args": vars(args), "results": results}, f, indent=1)
    with open(os.path.join(args.work, f"results-{stamp}.md"), "w") as f:
        f.write(text + "\n")
    log(f"\nwritten: {args.work}/results-{stamp}.{{log,md,json}}")


if __name__ == "__main__":
    main()
