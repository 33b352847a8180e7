#!/usr/bin/env bash
# trace_sync.sh: where does the time of one `lab sync` go on the target?
#
#   benches/sync/trace_sync.sh FLEET HOST_INDEX LAB PROJECT MACHINE [LAB ARGS...]
#
# Runs `LAB -C PROJECT sync -m MACHINE` while `strace -f -e trace=execve`
# follows the sshd of test host HOST_INDEX (1-based) of the running fleet
# FLEET (benches/sync/benchhosts or scripts/testhosts), from this machine:
# every program the sync starts on the target (the session's shell, the
# executor's mkdir/flock/cp/tar/mv/sha256sum, systemctl, sleep) is printed
# with its time in ms since lab started. strace slows the target's forks
# down a little; compare the total with an untraced run.
#
# Needs root and strace. Stops only the strace it started.
set -euo pipefail
(($# >= 5)) || { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
fleet=$1 idx=$2 lab=$3 project=$4 machine=$5
shift 5
inv=/run/lab-testhosts/$fleet/inventory.json
nspawn=$(python3 -c "import json,sys; print(json.load(open('$inv'))['hosts'][$idx - 1]['pid'])")
init=$(ps -o pid= --ppid "$nspawn" | head -1 | tr -d ' ')
sshd=$(ps -o pid=,args= --ppid "$init" | awk '/sshd: .*listener/ {print $1; exit}')
[[ -n $sshd ]] || { echo "no sshd listener below nspawn $nspawn" >&2; exit 1; }
out=$(mktemp -d)
strace -f -tt -e trace=execve -e signal=none -o "$out/remote" -p "$sshd" 2>/dev/null &
st=$!
sleep 0.5
t0=$(date +%s.%N)
"$lab" -C "$project" sync -m "$machine" "$@" || true
t1=$(date +%s.%N)
sleep 0.3
kill "$st"
wait "$st" 2>/dev/null || true
python3 - "$out/remote" "$t0" "$t1" <<'EOF'
import re, sys, datetime
path, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
day = datetime.datetime.fromtimestamp(t0).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
print(f"{'ms':>8}  target program (lab started at 0, ended at {1000 * (t1 - t0):.0f} ms)")
for line in open(path):
    m = re.match(r"\d+\s+(\d+):(\d+):([\d.]+) execve\(\"([^\"]+)\", \[(.*?)\]", line)
    if not m:
        continue
    t = day + int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    args = re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(5))
    print(f"{1000 * (t - t0):8.1f}  {' '.join(a[:40] for a in args[:4])}")
EOF
rm -rf "$out"
