#!/usr/bin/env python3
"""Wall-clock time of each phase of `lab build`, from uprobes on the engine's
functions (root and `perf` needed).

    benches/profile_phases.py [--lab BIN] [--runs 10] DIR noop
    benches/profile_phases.py [--lab BIN] [--runs 10] DIR edit PATH

DIR is a built lab project (e.g. one made by gen_lab.py and built once).
`noop` runs `lab build -j 2` RUNS times with nothing to do; `edit PATH`
appends a line to PATH (relative to DIR) before each run.

A copy of the binary gets entry and return probes on the functions below
(found by symbol name, so any build with symbols works); `perf record`
collects the probe hits and process exec/exit; the script prints the median
over the runs of each phase's duration. Probes cost a few microseconds per
hit, and the functions are chosen so that there are few hits (not one per
file). The probes are deleted at the end.
"""

import argparse
import collections
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

# probe name -> regexp on the demangled symbol (first match)
FUNCS = {
    "find": r"^lab_config::project::Project::find$",
    "build": r"^lab_engine::Engine::build$",
    "locked": r"^lab_engine::Engine::build_locked$",
    "loadsrc": r"^lab_engine::state::StateDir::load_roots$",
    "stamp": r"^lab_engine::state::StateDir::stamp$",
    "scanroot": r"^lab_engine::scan::scan_root$",
    "scopes": r"^lab_engine::facts::scopes$",
    "mrun": r"^lab_engine::machine::MachineJob::run$",
    "loadm": r"^lab_engine::state::StateDir::load_machine$",
    "fromstate": r"^lab_graph::graph::Graph::from_state$",
    "tostate": r"^lab_graph::graph::Graph::to_state$",
    "resolve": r"^lab_engine::stack::Stack::resolve$",
    "totext": r"^lab_manifest::Manifest::to_text$",
    "tamper": r"^lab_engine::machine::outputs_changed$",
    "prepare": r"^<lab_engine::native::NativeStyle as lab_engine::style::Style>::prepare$",
    "model": r"^<lab_engine::native::NativeBuild as lab_engine::style::Prepared>::machine$",
    "saveroot": r"^lab_engine::state::StateDir::save_root$",
    # generic: one symbol per state type (sources, machine graph, summary)
    "wstate": r"^lab_engine::state::write(<.*>)?$",
}

# (label, start event, end event, which end: first or last occurrence)
SPANS = [
    ("process start -> lab.toml read (exec, loader, clap)", "exec", "find", "first"),
    ("read + parse lab.toml", "find", "find_ret", "first"),
    ("Engine::build -> build_locked (lock, thread pool, orphans)", "build", "locked", "first"),
    ("load .lab/state/roots/*", "loadsrc", "loadsrc_ret", "first"),
    ("stamp", "stamp", "stamp_ret", "first"),
    ("scan all roots (first scan_root -> last return)", "scanroot", "scanroot_ret", "last"),
    ("outputs changed behind lab's back? (beside the scan)", "tamper", "tamper_ret", "last"),
    ("facts and scopes", "scopes", "scopes_ret", "first"),
    ("native style: prepare", "prepare", "prepare_ret", "first"),
    ("machine models (first -> last return)", "model", "model_ret", "last"),
    ("machines (first MachineJob::run -> last return)", "mrun", "mrun_ret", "last"),
    ("state::write calls (first -> last return)", "wstate", "wstate_ret", "last"),
    ("save changed roots' fingerprints", "saveroot", "saveroot_ret", "last"),
    ("build_locked return -> process exit", "locked_ret", "exit", "first"),
    ("TOTAL process", "exec", "exit", "first"),
]


def sh(*a, **kw):
    return subprocess.run(list(a), check=True, capture_output=True, text=True, **kw).stdout


def symbols(binary):
    """[(demangled name, vaddr)] of defined functions (generic instances
    share a name)."""
    out = sh("nm", "--defined-only", "-C", binary)
    res = []
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in "tT":
            res.append((re.sub(r"::h[0-9a-f]{16}$", "", parts[2]), int(parts[0], 16)))
    return res


def file_offset(binary, vaddr):
    """vaddr -> file offset, through the PT_LOAD segments."""
    out = sh("readelf", "-lW", binary)
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == "LOAD":
            off, va, filesz = int(f[1], 16), int(f[2], 16), int(f[4], 16)
            if va <= vaddr < va + filesz:
                return vaddr - va + off
    raise SystemExit(f"no segment holds {vaddr:#x}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("dir")
    ap.add_argument("scenario", choices=["noop", "edit"])
    ap.add_argument("path", nargs="?")
    ap.add_argument("--lab", default=os.environ.get("LAB_BIN", "target/release/lab"))
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    if a.scenario == "edit" and not a.path:
        sys.exit("edit needs PATH")

    tmp = tempfile.mkdtemp(prefix="lab-probe.")
    binary = os.path.join(tmp, "lab")
    shutil.copy2(a.lab, binary)
    syms = symbols(binary)
    added = []
    try:
        for name, rx in FUNCS.items():
            r = re.compile(rx)
            hits = sorted({v for k, v in syms if r.search(k)})
            if not hits:
                print(f"(no symbol for {name}: {rx})", file=sys.stderr)
                continue
            for i, hit in enumerate(hits):
                off = file_offset(binary, hit)
                # several symbols (generic instances) share a name: x, x1, x2
                pn = name + (str(i) if i else "")
                for ev, suffix in [(f"labp_{pn}", ""), (f"labp_{pn}_ret", "%return")]:
                    subprocess.run(["perf", "probe", "-q", "-x", binary, "-a", f"{ev}={off:#x}{suffix}"],
                                   check=True, capture_output=True)
            added.append(name)
        script = os.path.join(tmp, "run.sh")
        with open(script, "w") as f:
            f.write("set -e\ncd " + a.dir + "\n")
            for i in range(a.runs):
                if a.scenario == "edit":
                    f.write(f"echo 'profile_edit_{i} = {time.time()}' >> {a.path}\nsleep 0.05\n")
                f.write(f"{binary} build -j {a.jobs} >/dev/null\n")
        data = os.path.join(tmp, "perf.data")
        subprocess.run(["perf", "record", "-q", "-o", data, "-e", "probe_lab:labp_*",
                        "-e", "sched:sched_process_exec", "-e", "sched:sched_process_exit",
                        "--", "sh", script], check=True)
        out = sh("perf", "script", "-i", data, "-F", "comm,pid,tid,time,event")
    finally:
        subprocess.run(["perf", "probe", "-q", "-d", "probe_lab:labp_*"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)

    runs = collections.defaultdict(list)
    for line in out.splitlines():
        m = re.match(r"\s*(\S+)\s+(\d+)/(\d+)\s+([\d.]+):\s+(\S+):", line)
        if not m or m.group(1) != "lab":
            continue
        ev = m.group(5).split(":", 1)[1]
        ev = {"sched_process_exec": "exec", "sched_process_exit": "exit"}.get(ev, ev)
        ev = ev.removeprefix("labp_").replace("_ret__return", "_ret")
        ev = re.sub(r"\d+(_ret)?$", lambda m: m.group(1) or "", ev)
        runs[int(m.group(2))].append((float(m.group(4)), ev, int(m.group(3))))
    spans = collections.defaultdict(list)
    calls = collections.defaultdict(list)
    for evs in runs.values():
        first, last = {}, {}
        for t, e, _ in evs:
            first.setdefault(e, t)
            last[e] = t
        for label, s, e, which in SPANS:
            end = (last if which == "last" else first).get(e)
            if s in first and end is not None:
                spans[label].append((end - first[s]) * 1000)
        # summed durations of every call of each probed function
        open_ = {}
        total = collections.Counter()
        for t, e, tid in evs:
            if e.endswith("_ret"):
                b = e[:-4]
                if open_.get((tid, b)):
                    total[b] += t - open_[(tid, b)].pop()
            elif e not in ("exec", "exit"):
                open_.setdefault((tid, e), []).append(t)
        for k, v in total.items():
            calls[k].append(v * 1000)
    n = len(runs)
    print(f"{n} runs of `lab build -j {a.jobs}` ({a.scenario}) in {a.dir}; medians in ms")
    for label, *_ in SPANS:
        v = spans.get(label)
        if v:
            print(f"  {label:60} {statistics.median(v):8.2f}")
    print("  time inside each probed function, summed over its calls (threads overlap):")
    for k in FUNCS:
        if k in calls:
            print(f"    {k:10} {statistics.median(calls[k]):8.2f}   ({FUNCS[k].strip('^$')})")


if __name__ == "__main__":
    main()
