# Start or stop ($ACTION) container machine $N on this host (run as root;
# lab sets N and ACTION above): its unit, which mounts its overlay and
# boots it (a start returns once it booted). Prints the unit's state
# after. Exit 5: no such machine.
set -eu
[ -f "/var/lib/lab/machines/$N/lab-machine" ] || {
	echo "no container machine $N on this host" >&2
	exit 5
}
systemctl "$ACTION" "lab-machine@$N.service"
systemctl is-active "lab-machine@$N.service" || true
