# Destroy container machines $NAMES on this host (run as root; lab sets
# NAMES above, space-separated): their units, mounts, veths, files and
# writable layers, all at once (one stop of all their units: systemd stops
# them in parallel). Prints `destroyed NAME` or `missing NAME` for each
# (no such machine); exits non-zero only when something failed.
set -eu
units=
found=
for N in $NAMES; do
	if [ -f "/var/lib/lab/machines/$N/lab-machine" ]; then
		found="$found $N"
		units="$units lab-machine@$N.service"
		rm -f "/etc/systemd/system/multi-user.target.wants/lab-machine@$N.service"
	else
		echo "missing $N"
	fi
done
if [ -n "$units" ]; then
	# no clean halt: everything they would write goes with them (the stop
	# then cancels the restart the kill would bring)
	systemctl kill -s KILL $units 2>/dev/null || true
	systemctl stop $units 2>/dev/null || true
	systemctl reset-failed $units 2>/dev/null || true
fi
# their veths go with their network namespaces, which the kernel tears
# down after the processes are gone (a while, for many at once): each is
# removed now, and then all are waited for together (bounded), removed
# again if one is still there
veths() { ip -o link show 2>/dev/null | sed -n 's/^[0-9]*: \(vb-[^:@]*\).*/\1/p'; }
for N in $found; do ip link del "vb-$N" 2>/dev/null || true; done
forwards=0
for N in $found; do
	D=/var/lib/lab/machines/$N
	# (the host forgets its MAC: a container made with this address
	# next must not be sent to it)
	if [ -f "$D/address" ]; then ip neigh flush to "$(cat "$D/address")" 2>/dev/null || true; fi
	if mountpoint -q "$D/root"; then umount "$D/root"; fi
	rm -f "/var/lib/lab/images/used/$N"
	[ -s "/etc/lab/machines/$N.ports" ] && forwards=1
	rm -f "/etc/systemd/nspawn/$N.nspawn" "/etc/lab/machines/$N.ports"
	rm -rf "/etc/systemd/system/lab-machine@$N.service.d"
	# (together: one removal waits on the disk mostly, 50-100 ms here)
	rm -rf --one-file-system "$D" &
done
wait
i=0
while [ "$i" -lt 50 ]; do
	left=
	for v in $(veths); do
		for N in $found; do
			if [ "$v" = "vb-$N" ]; then left="$left $v"; fi
		done
	done
	[ -n "$left" ] || break
	if [ "$i" -eq 49 ]; then
		for v in $left; do ip link del "$v" 2>/dev/null || true; done
	fi
	sleep 0.1
	i=$((i + 1))
done
for N in $found; do echo "destroyed $N"; done
[ -n "$found" ] || exit 0
rmdir /etc/systemd/nspawn 2>/dev/null || true
left=0
for m in /var/lib/lab/machines/*/lab-machine; do [ -f "$m" ] && left=$((left + 1)); done
if [ "$left" -eq 0 ]; then
	# the last ones: the network and the shared files go too
	systemctl stop lab-machines-net.service 2>/dev/null || true
	systemctl reset-failed lab-machines-net.service 2>/dev/null || true
	rm -f /etc/systemd/system/lab-machines-net.service /etc/systemd/system/lab-machine@.service \
		/etc/lab/machines/net.sh /etc/lab/machines/mount.sh /etc/lab/machines/range \
		/etc/sysctl.d/60-lab-machines.conf
	rmdir /etc/lab/machines /etc/lab 2>/dev/null || true
	systemctl daemon-reload
elif [ "$forwards" = 1 ] && systemctl -q is-active lab-machines-net.service; then
	# (no daemon-reload: the stopped instances are unloaded, and the next
	# creation reloads before it starts anything)
	systemctl reload lab-machines-net.service
fi
