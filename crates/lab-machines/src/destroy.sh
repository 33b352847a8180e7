# Destroy container machine $N on this host (run as root; lab sets N
# above): its unit, mount, veth, files and writable layer. Exit 5: no such
# machine.
set -eu
D=/var/lib/lab/machines/$N
[ -f "$D/lab-machine" ] || {
	echo "no container machine $N on this host" >&2
	exit 5
}
rm -f "/etc/systemd/system/multi-user.target.wants/lab-machine@$N.service"
# no clean halt: everything it would write goes with it (the stop then
# cancels the restart the kill would bring)
systemctl kill -s KILL "lab-machine@$N.service" 2>/dev/null || true
systemctl stop "lab-machine@$N.service" 2>/dev/null || true
systemctl reset-failed "lab-machine@$N.service" 2>/dev/null || true
if mountpoint -q "$D/root"; then umount "$D/root"; fi
rm -f "/var/lib/lab/images/used/$N"
# its veth goes with its network namespace, which the kernel tears down
# after the processes are gone: wait for it (bounded), then remove it
i=0
while ip link show "vb-$N" >/dev/null 2>&1 && [ "$i" -lt 50 ]; do
	sleep 0.1
	i=$((i + 1))
done
ip link del "vb-$N" 2>/dev/null || true
forwards=0
[ -s "/etc/lab/machines/$N.ports" ] && forwards=1
rm -f "/etc/systemd/nspawn/$N.nspawn" "/etc/lab/machines/$N.ports"
rm -rf "/etc/systemd/system/lab-machine@$N.service.d"
rm -rf --one-file-system "$D"
rmdir /etc/systemd/nspawn 2>/dev/null || true
left=0
for m in /var/lib/lab/machines/*/lab-machine; do [ -f "$m" ] && left=$((left + 1)); done
if [ "$left" -eq 0 ]; then
	# the last one: the network and the shared files go too
	systemctl stop lab-machines-net.service 2>/dev/null || true
	systemctl reset-failed lab-machines-net.service 2>/dev/null || true
	rm -f /etc/systemd/system/lab-machines-net.service /etc/systemd/system/lab-machine@.service \
		/etc/lab/machines/net.sh /etc/lab/machines/mount.sh /etc/lab/machines/range /etc/sysctl.d/60-lab-machines.conf
	rmdir /etc/lab/machines /etc/lab 2>/dev/null || true
	systemctl daemon-reload
elif [ "$forwards" = 1 ] && systemctl -q is-active lab-machines-net.service; then
	# (no daemon-reload: the stopped instance is unloaded, and the next
	# creation reloads before it starts anything)
	systemctl reload lab-machines-net.service
fi
