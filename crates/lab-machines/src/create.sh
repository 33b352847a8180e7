# Create container machine $N on this host (run as root; lab sets N, IMAGE
# (as lab.toml says), LOWER (its directory here), ADDR, GW, NET, MEMORY,
# CPUQUOTA, PORTS, NO_BLOCK, SHARED (a digest of this script and the range:
# the files every machine of this host shares are written again and systemd
# reloaded only when one of them was not written with it) above). Exit 10: it exists (its host key is printed again).
set -eu
D=/var/lib/lab/machines/$N
command -v systemd-nspawn >/dev/null 2>&1 || {
	echo "systemd-nspawn is not installed on this host (apt-get install systemd-container)" >&2
	exit 3
}
command -v nft >/dev/null 2>&1 || {
	echo "nft is not installed on this host (apt-get install nftables)" >&2
	exit 3
}
if [ -e "$D" ]; then
	if [ -f "$D/lab-machine" ]; then
		if [ ! -f "$D/created" ]; then
			echo "an earlier creation of $N did not finish; lab machine destroy $N --yes removes what it left" >&2
			exit 7
		fi
		# there: its key again, for a known_hosts that lost it
		k=$D/upper/etc/ssh/ssh_host_ed25519_key.pub
		[ -f "$k" ] && printf 'hostkey %s\n' "$(cut -d' ' -f1,2 "$k")"
		exit 10
	fi
	echo "$D exists and lab did not create it" >&2
	exit 4
fi
# another container here (one lab.toml no longer declares, say) holds
# the address or a host port: refuse rather than answer in its place
for a in /var/lib/lab/machines/*/address; do
	[ -f "$a" ] || continue
	read -r taken <"$a" || :
	if [ "$taken" = "$ADDR" ]; then
		o=${a%/address}
		echo "address $ADDR is taken by container machine ${o##*/} on this host (lab machine destroy ${o##*/} --on HOST --yes removes it)" >&2
		exit 6
	fi
done
for p in $PORTS; do
	for f in /etc/lab/machines/*.ports; do
		[ -f "$f" ] || continue
		if grep -q "^${p%%:*} " "$f"; then
			o=${f%.ports}
			echo "host port ${p%%:*} is forwarded to container machine ${o##*/} on this host" >&2
			exit 6
		fi
	done
done
[ -d "$LOWER" ] || {
	if [ "$LOWER" = "$IMAGE" ]; then
		echo "image $IMAGE is not a directory on this host" >&2
	else
		echo "image $IMAGE was not shipped to this host ($LOWER is missing)" >&2
	fi
	exit 4
}
[ -x "$LOWER/sbin/init" ] || [ -x "$LOWER/lib/systemd/systemd" ] || [ -x "$LOWER/usr/lib/systemd/systemd" ] || {
	echo "image $IMAGE has no systemd to boot" >&2
	exit 4
}
# put a file in place atomically: put PATH MODE (content on stdin)
put() {
	[ -d "${1%/*}" ] || mkdir -p "${1%/*}"
	cat >"$1.lab-tmp"
	chmod "$2" "$1.lab-tmp"
	mv -f "$1.lab-tmp" "$1"
}
mkdir -p "$D"
# the marker first: whatever a failed creation leaves, destroy may remove
: >"$D/lab-machine"
mkdir -p "$D/upper" "$D/work" "$D/root"
printf '%s\n' "$IMAGE" >"$D/image"
printf '%s\n' "$ADDR" >"$D/address"
printf '%s\n' "$LOWER" >"$D/lower"
U=$D/upper
mkdir -p "$U/etc/ssh" "$U/etc/systemd/network" "$U/etc/systemd/system/multi-user.target.wants" \
	"$U/etc/systemd/system/sockets.target.wants"
printf '%s\n' "$N" >"$U/etc/hostname"
tr -d '-' </proc/sys/kernel/random/uuid >"$U/etc/machine-id"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n' "$N" >"$U/etc/hosts"
ssh-keygen -q -t ed25519 -N '' -C "$N" -f "$U/etc/ssh/ssh_host_ed25519_key"
# the keys that reach the host's root reach its containers' root
install -d -m 700 "$U/root" "$U/root/.ssh"
if [ -f /root/.ssh/authorized_keys ]; then
	install -m 600 /root/.ssh/authorized_keys "$U/root/.ssh/authorized_keys"
fi
put "$U/etc/systemd/network/80-container-host0.network" 644 <<NET
[Match]
Name=host0

[Network]
Address=$ADDR/${NET#*/}
Gateway=$GW
LinkLocalAddressing=no
IPv6AcceptRA=no
NET
ln -sf /lib/systemd/system/systemd-networkd.service "$U/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
ln -sf /lib/systemd/system/systemd-networkd.socket "$U/etc/systemd/system/sockets.target.wants/systemd-networkd.socket"

# the host's side: the files all its machines share (the bridge and
# nftables, the unit template, mount.sh), when this lab's differ; then this
# machine's settings, drop-in (limits) and port forwards
# (each carries `# lab SHARED` as its second line: a file of another lab's,
# older or newer, or one missing, and all are written again)
SHARED_FILES="/etc/lab/machines/range /etc/lab/machines/net.sh /etc/lab/machines/mount.sh
/etc/systemd/system/lab-machines-net.service /etc/systemd/system/lab-machine@.service
/etc/sysctl.d/60-lab-machines.conf"
stamped() {
	[ -f "$1" ] || return 1
	{ read -r _ && read -r _stamp; } <"$1" || return 1
	[ "$_stamp" = "# lab $SHARED" ]
}
# put_shared PATH MODE: put, the stamp after the first line
put_shared() {
	{
		IFS= read -r _first
		printf '%s\n# lab %s\n' "$_first" "$SHARED"
		cat
	} | put "$1" "$2"
}
shared_changed=
for f in $SHARED_FILES; do
	stamped "$f" || shared_changed=1
done
if [ -n "$shared_changed" ]; then
	# (the shared files, up to the `fi` after the sysctl settings)
put_shared /etc/lab/machines/range 644 <<RANGE
$GW ${NET#*/} $NET
RANGE
put_shared /etc/lab/machines/net.sh 755 <<'NETSH'
#!/bin/sh
# lab: the bridge of this host's container machines, their outbound NAT and
# port forwards (/etc/lab/machines/*.ports: HOSTPORT ADDRESS PORT)
set -eu
read -r gw prefix net </etc/lab/machines/range
if [ "${1:-}" = stop ]; then
	ip link del labbr0 2>/dev/null || true
	nft delete table ip lab_machines 2>/dev/null || true
	exit 0
fi
ip link show labbr0 >/dev/null 2>&1 || ip link add labbr0 type bridge
ip addr replace "$gw/$prefix" dev labbr0
ip link set labbr0 up
[ "$(cat /proc/sys/net/ipv4/ip_forward)" = 1 ] || echo 1 >/proc/sys/net/ipv4/ip_forward
forwards() {
	for f in /etc/lab/machines/*.ports; do
		[ -f "$f" ] || continue
		while read -r hp addr cp; do
			[ -n "$hp" ] && echo "		fib daddr type local tcp dport $hp dnat to $addr:$cp"
		done <"$f"
	done
}
{
	echo "table ip lab_machines"
	echo "delete table ip lab_machines"
	echo "table ip lab_machines {"
	echo "	chain prerouting {"
	echo "		type nat hook prerouting priority dstnat; policy accept;"
	forwards
	echo "	}"
	echo "	chain output {"
	echo "		type nat hook output priority -100; policy accept;"
	forwards
	echo "	}"
	echo "	chain postrouting {"
	echo "		type nat hook postrouting priority srcnat; policy accept;"
	echo "		ip saddr $net ip daddr != $net masquerade"
	echo "	}"
	echo "}"
} | nft -f -
NETSH
put_shared /etc/lab/machines/mount.sh 755 <<'MOUNTSH'
#!/bin/sh
# lab: mount container machine $1's root (its image below, read-only, its
# writable layer above) or, with `stop`, unmount it. An image of the
# project (its lower is a link in lab's image store) is the tree the link
# points at now, recorded in the store's used/ while mounted (the store
# keeps it); the link is read under the store's lock. The lower is in
# $D/lower ($LAB_IMAGE of the unit's drop-in for machines made before).
set -eu
D=/var/lib/lab/machines/$1
I=/var/lib/lab/images
if [ "${2:-}" = stop ]; then
	if mountpoint -q "$D/root"; then umount "$D/root"; fi
	rm -f "$I/used/$1"
	exit 0
fi
mountpoint -q "$D/root" && exit 0
image=${LAB_IMAGE:-}
[ -n "$image" ] || read -r image <"$D/lower"
lower=$image
case $image in
"$I"/bases/*)
	exec 8>>"$I/lock"
	flock 8
	lower=$(readlink -f "$image")
	[ -d "$lower" ] || {
		echo "image $image of $1 is missing" >&2
		exit 1
	}
	mkdir -p "$I/used"
	echo "${lower##*/}" >"$I/used/$1.new"
	mv -f "$I/used/$1.new" "$I/used/$1"
	;;
esac
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$D/upper,workdir=$D/work" "$D/root"
MOUNTSH
put_shared /etc/systemd/system/lab-machines-net.service 644 <<'UNIT'
# lab: network of this host's container machines
[Unit]
Description=lab: network of container machines

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/etc/lab/machines/net.sh
ExecReload=/etc/lab/machines/net.sh
ExecStop=/etc/lab/machines/net.sh stop
UNIT
put_shared /etc/systemd/system/lab-machine@.service 644 <<'UNIT'
# lab: a container machine (/var/lib/lab/machines/%i, settings in
# /etc/systemd/nspawn/%i.nspawn, limits in a drop-in)
[Unit]
Description=lab container machine %i
Wants=lab-machines-net.service
After=lab-machines-net.service

[Service]
Type=notify
ExecStartPre=/etc/lab/machines/mount.sh %i
ExecStart=/usr/bin/systemd-nspawn --quiet --keep-unit --boot --notify-ready=yes --machine=%i --directory=/var/lib/lab/machines/%i/root
ExecStopPost=/etc/lab/machines/mount.sh %i stop
KillMode=mixed
Delegate=yes
Restart=on-failure
RestartSec=1
TimeoutStopSec=20

[Install]
WantedBy=multi-user.target
UNIT
# every container's systemd takes inotify instances from root's, and
# the kernel's default (128) ends around 20 containers ("Too many open
# files"): raise it as LXD's production setup does (where this host may)
put_shared /etc/sysctl.d/60-lab-machines.conf 644 <<'SYSCTL'
# lab: room for the inotify instances of many container machines
fs.inotify.max_user_instances = 8192
fs.inotify.max_user_watches = 1048576
SYSCTL
fi
put "/etc/systemd/nspawn/$N.nspawn" 644 <<NSPAWN
# lab: container machine $N
[Exec]
Boot=yes
LinkJournal=no

[Network]
Bridge=labbr0
NSPAWN
if [ -n "$MEMORY$CPUQUOTA" ]; then
	{
		printf '[Service]\n'
		[ -n "$MEMORY" ] && printf 'MemoryMax=%s\n' "$MEMORY"
		[ -n "$CPUQUOTA" ] && printf 'CPUQuota=%s\n' "$CPUQUOTA"
		:
	} | put "/etc/systemd/system/lab-machine@$N.service.d/lab.conf" 644
fi
net_changed=$shared_changed$PORTS
if [ -n "$PORTS" ]; then
	for p in $PORTS; do
		printf '%s %s %s\n' "${p%%:*}" "$ADDR" "${p#*:}"
	done | put "/etc/lab/machines/$N.ports" 644
elif [ -e "/etc/lab/machines/$N.ports" ]; then
	rm -f "/etc/lab/machines/$N.ports"
	net_changed=1
fi
read -r inst </proc/sys/fs/inotify/max_user_instances || inst=0
if [ "$inst" -lt 8192 ]; then
	sysctl -q -p /etc/sysctl.d/60-lab-machines.conf 2>/dev/null || true
fi
# enabled (what `systemctl enable` does, without its reload: the host's
# systemd reads the link at its next boot)
[ -d /etc/systemd/system/multi-user.target.wants ] || mkdir -p /etc/systemd/system/multi-user.target.wants
ln -sf /etc/systemd/system/lab-machine@.service "/etc/systemd/system/multi-user.target.wants/lab-machine@$N.service"
# systemd reloads only for what it would otherwise not see: shared files
# written now, this machine's limits, or a drop-in it still has loaded
# for an earlier machine of this name (the instance of a new name is
# read from disk when it starts)
if [ -n "$shared_changed$MEMORY$CPUQUOTA" ] ||
	[ -n "$(systemctl show -p DropInPaths --value "lab-machine@$N.service" 2>/dev/null)" ]; then
	systemctl daemon-reload
fi
# the network: written again, or port forwards to add (each machine's
# unit wants it, so its start brings it up otherwise)
if [ -n "$net_changed" ]; then
	if systemctl -q is-active lab-machines-net.service; then
		systemctl reload lab-machines-net.service
	else
		systemctl start lab-machines-net.service
	fi
fi
# the host may still have a neighbour entry for this address from a
# container destroyed a moment ago: it would send to that one's MAC for up
# to a minute (the new container unreachable, its sshd up)
ip neigh flush to "$ADDR" 2>/dev/null || :
systemctl start ${NO_BLOCK:+--no-block} "lab-machine@$N.service"
: >"$D/created"
read -r kt kk _ <"$U/etc/ssh/ssh_host_ed25519_key.pub"
printf 'hostkey %s %s\n' "$kt" "$kk"
