# Add the public key line $KEY (checked by lab: one line, TYPE BASE64
# [COMMENT]) to $LOGIN's ~/.ssh/authorized_keys on this machine (lab sets
# LOGIN, KEY, KTYPE, KBLOB above): once (a line holding the same type and
# key stays as it is), atomically (a temporary file in ~/.ssh renamed
# over it), never through a symlink. Prints `added` or `present`.
# Exit 5: no such user; exit 6: a symlink or odd file in the way.
set -eu
H=$(getent passwd "$LOGIN" | cut -d: -f6) || true
[ -n "$H" ] || {
	echo "no user $LOGIN on this machine" >&2
	exit 5
}
O="$(id -u "$LOGIN"):$(id -g "$LOGIN")"
D=$H/.ssh
F=$D/authorized_keys
for p in "$H" "$D" "$F"; do
	if [ -L "$p" ]; then
		echo "$p is a symlink: lab does not write through it" >&2
		exit 6
	fi
done
[ -d "$H" ] || {
	echo "$LOGIN's home $H is not a directory" >&2
	exit 6
}
if [ ! -e "$D" ]; then
	mkdir -m 700 "$D"
	chown "$O" "$D"
fi
[ -d "$D" ] || {
	echo "$D is not a directory" >&2
	exit 6
}
if [ -e "$F" ] && [ ! -f "$F" ]; then
	echo "$F is not a regular file" >&2
	exit 6
fi
if [ -f "$F" ] && awk -v t="$KTYPE" -v k="$KBLOB" '{ for (i = 1; i < NF; i++) if ($i == t && $(i + 1) == k) f = 1 } END { exit !f }' "$F"; then
	echo present
	exit 0
fi
T=$(mktemp "$D/.authorized_keys.lab-XXXXXX")
trap 'rm -f "$T"' EXIT
if [ -f "$F" ]; then
	cat "$F" >"$T"
	# (a last line without its newline gets one)
	if [ -s "$F" ] && [ "$(tail -c 1 "$F" | wc -l)" -eq 0 ]; then echo >>"$T"; fi
fi
printf '%s\n' "$KEY" >>"$T"
chmod 600 "$T"
chown "$O" "$T"
sync "$T" 2>/dev/null || true
mv -f "$T" "$F"
trap - EXIT
echo added
