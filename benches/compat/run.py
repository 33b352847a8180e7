#!/usr/bin/env python3
"""lab (release) against GNU make driving the same make + m4 style lab.

Generates the synthetic lab of gen.py, checks that make (compat.mk) and
`lab build --out` produce identical trees (paths, kinds, modes, link
targets, contents), then times five scenarios for each tool in one
interleaved run (alternating which tool goes first), and prints the
medians and ratios as a Markdown table, beside the goals:

  cold           no outputs, no state (make: rm -rf build; lab: rm -rf .lab)
  no-op          nothing changed since the last build
  plain edit     one plain file of a layer used by several machines changed
  template edit  one m4 template of that layer changed
  fact change    one machine's .facts/NAME.env gained a line

usage: run.py [--lab PATH] [--runs N] [--work DIR] [--jobs N] [--facts-every-run] [--no-gnu-m4]

lab is timed twice, interleaved with make: evaluating m4 in process (its
default) and with LAB_M4=gnu (every template rendered by a GNU m4
process, as before lab-m4); --no-gnu-m4 leaves the second out.

--facts-every-run makes the Makefile flatten the facts with jq on every
invocation (as many such Makefiles do) instead of only when they change.
"""
import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def sh(cmd, cwd, check=True, env=None):
    r = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if check and r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def timed(cmd, cwd, env=None):
    t = time.perf_counter()
    sh(cmd, cwd, env=env)
    return time.perf_counter() - t


def listing(root):
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in sorted(dirnames + filenames):
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            mode = oct(st.st_mode & 0o7777)
            if os.path.islink(p):
                out.append(f"{rel} l {os.readlink(p)}")
            elif os.path.isdir(p):
                out.append(f"{rel} d {mode}")
            else:
                with open(p, "rb") as f:
                    out.append(f"{rel} f {mode} {hashlib.sha256(f.read()).hexdigest()}")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lab", default=os.path.join(REPO, "target/release/lab"))
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--work", default="/tmp/lab-compat-bench")
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    ap.add_argument("--facts-every-run", action="store_true")
    ap.add_argument("--no-gnu-m4", action="store_true")
    a = ap.parse_args()
    lab_bin = os.path.abspath(a.lab)
    mk = os.path.join(HERE, "compat.mk")
    make = ["make", "-s", "-f", mk, f"-j{a.jobs}"] + (["FACTS_EVERY_RUN=1"] if a.facts_every_run else [])
    lab = [lab_bin, "build", "-q"]
    gnu_env = dict(os.environ, LAB_M4="gnu")
    inproc_env = {k: v for k, v in os.environ.items() if k != "LAB_M4"}
    tools = ["make", "lab"] + ([] if a.no_gnu_m4 else ["lab-gnu-m4"])

    def run_tool(tool, cwd):
        if tool == "make":
            return timed(make, cwd)
        return timed(lab, cwd, gnu_env if tool == "lab-gnu-m4" else inproc_env)

    shutil.rmtree(a.work, ignore_errors=True)
    d = os.path.join(a.work, "lab")
    print(sh([sys.executable, os.path.join(HERE, "gen.py"), d], REPO).stdout.strip())

    # 1. Same trees, byte for byte.
    sh(make, d)
    for tool in tools[1:]:
        out = os.path.join(a.work, f"{tool}-out")
        sh(lab + ["--out", out], d, env=gnu_env if tool == "lab-gnu-m4" else inproc_env)
        shutil.rmtree(os.path.join(d, ".lab"), ignore_errors=True)
        for m in sorted(os.listdir(os.path.join(d, "machines"))):
            x = listing(os.path.join(d, "build", m))
            y = listing(os.path.join(out, m))
            if x != y:
                diff = [l for l in x if l not in y][:5] + ["---"] + [l for l in y if l not in x][:5]
                sys.exit(f"{m}: make and {tool} trees differ:\n" + "\n".join(diff))
    n_entries = sum(len(listing(os.path.join(d, "build", m))) for m in os.listdir(os.path.join(d, "machines")))
    n_files = sum(
        1 for m in os.listdir(os.path.join(d, "machines"))
        for l in listing(os.path.join(d, "build", m)) if " d " not in l
    )
    print(f"make and {' and '.join(tools[1:])} produce identical trees ({n_entries} entries in 8 machines, "
          f"{n_files} of them files and links)")

    # The edited files: in the second layer of m1 (L02, on half the machines).
    with open(os.path.join(d, "machines/m1/usr/local/opt/initd/layers/main.txt")) as f:
        layer = [l.split()[1] for l in f if l.startswith("+ ")][1]
    plain = os.path.join(d, f"layers/{layer}/etc/{layer}/conf03.conf")
    tmpl = os.path.join(d, f"layers/{layer}/etc/{layer}/t1.m4.conf")
    users = sum(
        1
        for m in os.listdir(os.path.join(d, "machines"))
        for t in os.listdir(os.path.join(d, "machines", m, "usr/local/opt/initd/layers"))
        if f"+ {layer}\n" in open(os.path.join(d, "machines", m, "usr/local/opt/initd/layers", t)).read()
    )

    def cold(tool):
        shutil.rmtree(os.path.join(d, "build" if tool == "make" else ".lab"), ignore_errors=True)
        os.sync()
        return run_tool(tool, d)

    def noop(tool):
        return run_tool(tool, d)

    counter = [0]

    def edit(path):
        def run(tool):
            counter[0] += 1
            with open(path, "a") as f:
                f.write(f"edit {counter[0]}\n")
            return run_tool(tool, d)
        return run

    def fact(tool):
        counter[0] += 1
        with open(os.path.join(d, ".facts/m1.env"), "a") as f:
            f.write(f"ENV_EDIT{counter[0]}={counter[0]}\n")
        return run_tool(tool, d)

    scenarios = [
        ("cold", cold, max(3, a.runs // 2), 40),
        ("no-op", noop, a.runs * 2, 50),
        (f"plain edit (1 file, {users} machines)", edit(plain), a.runs * 2, 100),
        (f"template edit (1 template, {users} machines)", edit(tmpl), a.runs * 2, 50),
        ("fact change (1 machine's .env)", fact, a.runs * 2, 20),
    ]
    rows = []
    for name, fn, n, goal in scenarios:
        times = {t: [] for t in tools}
        for tool in tools:  # warm up: all up to date
            noop(tool)
        for i in range(n):
            # every order in turn, so no tool always follows the same one
            k = i % len(tools)
            order = tools[k:] + tools[:k]
            if (i // len(tools)) % 2:
                order.reverse()
            for tool in order:
                times[tool].append(fn(tool))
        med = {t: statistics.median(v) for t, v in times.items()}
        rows.append((name, med, n, goal))
        print(f"{name}: " + ", ".join(f"{t} {v*1000:.1f} ms" for t, v in med.items()), flush=True)

    # Where lab's cold build goes: m4 processes, and everything else (the
    # same lab with its templates renamed to plain files).
    preludes = sorted(
        os.path.join("layers/_/usr/local/include/m4", f)
        for f in os.listdir(os.path.join(d, "layers/_/usr/local/include/m4"))
        if f.endswith(".m4")
    )
    one = ["m4", "--fatal-warnings", "--prefix-builtins", "-DENV_MACHINE=m1", "--"] + preludes + [
        os.path.relpath(tmpl, d)
    ]
    m4_ms = statistics.median(timed(one, d) for _ in range(30)) * 1000
    r = sh(lab[:-1] + ["--force"], d, env=gnu_env)
    renders = sum(int(l.split(": ")[1].split(" rendered")[0]) for l in r.stdout.splitlines() if " rendered" in l)
    plain = os.path.join(a.work, "plain")
    shutil.copytree(d, plain, symlinks=True)
    shutil.rmtree(os.path.join(plain, ".lab"), ignore_errors=True)
    for dirpath, _, files in os.walk(plain):
        for f in files:
            if ".m4." in f:
                os.rename(os.path.join(dirpath, f), os.path.join(dirpath, f.replace(".m4.", ".x.")))
    no_m4 = []
    for _ in range(3):
        shutil.rmtree(os.path.join(plain, ".lab"), ignore_errors=True)
        os.sync()
        no_m4.append(timed(lab, plain, inproc_env))
    print()
    print(
        f"lab cold: {renders} m4 renders; one m4 process takes {m4_ms:.1f} ms here "
        f"({renders * m4_ms / a.jobs:.0f} ms of m4 per build on {a.jobs} cores); "
        f"the same lab without templates builds cold in {statistics.median(no_m4) * 1000:.0f} ms"
    )

    print()
    variant = ", facts flattened every run" if a.facts_every_run else ""
    gnu_cols = "" if a.no_gnu_m4 else " lab, GNU m4 (before) | lab is |"
    print(f"| scenario | GNU make -j{a.jobs}{variant} |{gnu_cols} lab, m4 in process | lab is | goal | runs |")
    print("|---|---:|" + ("" if a.no_gnu_m4 else "---:|---:|") + "---:|---:|---:|---:|")
    for name, med, n, goal in rows:
        mm = med["make"]
        g = "" if a.no_gnu_m4 else f" {med['lab-gnu-m4']*1000:.1f} ms | {mm/med['lab-gnu-m4']:.1f}x |"
        print(f"| {name} | {mm*1000:.0f} ms |{g} {med['lab']*1000:.1f} ms | **{mm/med['lab']:.1f}x** | {goal}x | {n} |")


main()
