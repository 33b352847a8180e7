#!/usr/bin/env bash
# The figures of the test-host fleet (scripts/testhosts), one run:
#   - time to build the base root cold (empty cache; apt downloads included)
#     and cached, each followed by booting one host;
#   - time to boot 1 and 8 hosts (cached base) until every one answers
#     `systemctl is-system-running` with `running` over ssh;
#   - memory per host (PSS and RSS of every process in the host's cgroups;
#     PSS counts pages shared between hosts once, split between them);
#   - ssh round trip of one command on a reused connection (OpenSSH
#     connection sharing, so client start-up is included) and of a fresh
#     login.
# Needs root. Uses its own cache and fleet name; tears down what it starts.
#
#   sudo benches/testhosts/measure.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export LAB_TESTHOSTS_NAME=${LAB_TESTHOSTS_NAME:-measure}
cold_cache=$(mktemp -d /var/tmp/lab-testhosts-cold.XXXXXX)
ctl=$(mktemp -u /tmp/lab-measure-ctl.XXXXXX)
cleanup() {
	[ -S "$ctl" ] && ssh -S "$ctl" -O exit x 2>/dev/null || true
	scripts/testhosts down >/dev/null 2>&1 || true
	rm -rf --one-file-system "$cold_cache"
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc; }
up() { scripts/testhosts up "$1" >/dev/null 2>"$work/up.err" || { cat "$work/up.err" >&2; exit 1; }; }
work=$(mktemp -d)
echo "memory in use (free), no hosts: $(free -m | awk '/^Mem:/{print $3}') MiB"

t=$(now); LAB_TESTHOSTS_CACHE=$cold_cache up 1; echo "base build cold + boot 1 host: $(since "$t") s"
LAB_TESTHOSTS_CACHE=$cold_cache scripts/testhosts down >/dev/null 2>&1
t=$(now); LAB_TESTHOSTS_CACHE=$cold_cache up 1; echo "base cached + boot 1 host:     $(since "$t") s"
LAB_TESTHOSTS_CACHE=$cold_cache scripts/testhosts down >/dev/null 2>&1
export LAB_TESTHOSTS_CACHE=$cold_cache

for n in 1 8; do
	for rep in 1 2 3; do
		t=$(now); up $n; echo "boot $n host(s), run $rep:          $(since "$t") s"
		[ $rep = 3 ] || scripts/testhosts down >/dev/null 2>&1
	done
	[ $n = 8 ] || scripts/testhosts down >/dev/null 2>&1
done

state=/run/lab-testhosts/$LAB_TESTHOSTS_NAME
sleep 5 # let the hosts go idle
for d in "$state"/hosts/*/; do
	pss=0 rss=0 n=0
	# a process is in one cgroup of each hierarchy the host has: count it once
	for p in $(for cg in $(cat "$d/cgroups"); do find "$cg" -name cgroup.procs -exec cat {} +; done | sort -u); do
		read -r v r < <(awk '/^Pss:/{p=$2} /^Rss:/{r=$2} END{print p+0, r+0}' "/proc/$p/smaps_rollup" 2>/dev/null || echo "0 0")
		pss=$((pss + v)) rss=$((rss + r)) n=$((n + 1))
	done
	echo "host $(cat "$d/name"): $n processes, PSS $((pss / 1024)) MiB, RSS $((rss / 1024)) MiB"
done
echo "memory in use (free), 8 hosts up: $(free -m | awk '/^Mem:/{print $3}') MiB"

inv=$state/inventory.json
addr=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["hosts"][0]["address"])' "$inv")
id=$state/id_ed25519 kh=$state/known_hosts
opts=(-F /dev/null -i "$id" -o UserKnownHostsFile="$kh" -o StrictHostKeyChecking=yes -o BatchMode=yes)
t=$(now); for i in $(seq 10); do ssh "${opts[@]}" "root@$addr" true; done
echo "fresh ssh login + one command: $(echo "($(now) - $t) * 100" | bc) ms (mean of 10)"
ssh "${opts[@]}" -o ControlMaster=yes -o ControlPath="$ctl" -fN "root@$addr"
ssh "${opts[@]}" -o ControlPath="$ctl" "root@$addr" true
t=$(now); for i in $(seq 50); do ssh "${opts[@]}" -o ControlPath="$ctl" "root@$addr" true; done
echo "one command on a reused connection: $(echo "($(now) - $t) * 20" | bc) ms (mean of 50)"
