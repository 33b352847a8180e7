# The container machines on this host, one a line:
# NAME TAB UNIT-STATE TAB SYSTEM-STATE TAB ADDRESS TAB IMAGE
for m in /var/lib/lab/machines/*/lab-machine; do
	[ -f "$m" ] || continue
	d=${m%/lab-machine}
	n=${d##*/}
	st=$(systemctl is-active "lab-machine@$n.service" 2>/dev/null || true)
	sys=-
	if [ "$st" = active ]; then
		sys=$(systemctl -M "$n" is-system-running 2>/dev/null || true)
		[ -n "$sys" ] || sys=unknown
	fi
	printf '%s\t%s\t%s\t%s\t%s\n' "$n" "$st" "$sys" "$(cat "$d/address" 2>/dev/null)" "$(cat "$d/image" 2>/dev/null)"
done
