# lab executor: convergence. What is really on the machine, compared with
# what the current generation put there; and its unit actions not yet run.
# Part of the executor (appended to executor.sh), and alone the whole of
# `lab status` and of the first command of every sync (after a prelude
# that sets R and S and defines current_gen and current_digest).
#
#   gen/GEN/paths0   the generation's managed paths, relative to the root,
#                    NUL-separated (sent by lab beside the manifest)
#   gen/GEN/stat     their cheap facts right after the apply, one line each:
#                    `INODE SIZE MTIME CTIME RAWMODE UID GID NAME` (stat(1)
#                    formats; a newline in a name is written as \001).
#                    The ctime to the nanosecond: nothing can set it, and
#                    every write, chmod, chown or rename moves it; mtime
#                    in seconds only (formatting a fraction costs time)
#   gen/GEN/actions  the generation's unit actions, `OP UNIT` a line
#   gen/GEN/done     numbers of the actions that have run, one a line
#
# Nothing but the managed paths is looked at: stat(1) does not follow a
# symlink, and nothing is read below a path whose parent is not a real
# directory.

SFMT='%i %s %Y %.9Z %f %u %g %n\0'

# The cheap facts of every path of generation directory $1, now.
stat_all() {
  (cd "${R:-/}" && xargs -0 -r stat --printf "$SFMT" -- <"$1/paths0" 2>/dev/null) | tr '\n\0' '\001\n'
}

# Record the facts of generation directory $1 (right after its apply).
record() {
  [ -f "$1/paths0" ] || return 0
  stat_all "$1" >"$1/stat.tmp" && mv -f -- "$1/stat.tmp" "$1/stat"
}

# Each directory above relative path $1 is a real directory.
under_dirs() {
  q=${1%/*}
  [ "$q" != "$1" ] || return 0
  while [ -n "$q" ]; do
    if [ -L "$R/$q" ] || [ ! -d "$R/$q" ]; then return 1; fi
    case $q in */*) q=${q%/*} ;; *) q="" ;; esac
  done
}

# Print the drift of the current generation, one path per line, in the
# generation's path order (names with \001 for newlines):
#   drift gone NAME
#   drift now RAWMODE UID GID WASUID WASGID ORIG SHA|- NAME
#   drift link TARGET            (after a `now` line of a symlink)
# ORIG: 1 when the path existed before lab took it over. Only paths whose
# stat changed since the apply are looked at further (a file is hashed,
# a symlink read). Nothing when the generation has no list of paths.
drift() {
  D="$S/gen/$(current_gen)"
  [ -f "$D/paths0" ] || return 0
  # (the common case, nothing changed: the facts now are the recorded
  # ones, line for line, as the same command wrote them in the same order)
  if [ -f "$D/stat" ] && stat_all "$D" | cmp -s - "$D/stat"; then return 0; fi
  { tr '\n\0' '\001\n' <"$D/paths0"; echo /; stat_all "$D"; } | awk -v rf="$D/stat" '
    function nm(l, i) { for (i = 0; i < 7; i++) l = substr(l, index(l, " ") + 1); return l }
    BEGIN { while ((getline l < rf) > 0) rec[nm(l)] = l }
    part == 0 { if ($0 == "/") part = 1; else order[++n] = $0; next }
    { now[nm($0)] = $0 }
    END {
      for (i = 1; i <= n; i++) {
        k = order[i]
        if (!(k in now)) { print "G"; print k; continue }
        if ((k in rec) && rec[k] == now[k]) continue
        ru = "-"; rg = "-"
        if (k in rec) { split(rec[k], r, " "); ru = r[6]; rg = r[7] }
        split(now[k], f, " ")
        print "C " f[5] " " f[6] " " f[7] " " ru " " rg
        print k
      }
    }' | while read -r t m u g ru rg; do
    IFS= read -r n
    p=$n
    case $n in *"$(printf '\001')"*) p=$(printf '%s' "$n" | tr '\001' '\n') ;; esac
    if [ "$t" = G ] || ! under_dirs "$p"; then
      printf 'drift gone %s\n' "$n"
      continue
    fi
    o=0
    if [ -e "$S/orig/$p" ] || [ -L "$S/orig/$p" ]; then o=1; fi
    h=-
    case $m in
      8???) h=$(sha256sum <"$R/$p") && h=${h%% *} || h=unreadable ;;
    esac
    printf 'drift now %s %s %s %s %s %s %s %s\n' "$m" "$u" "$g" "$ru" "$rg" "$o" "$h" "$n"
    case $m in
      a???) printf 'drift link %s\n' "$(readlink -- "$R/$p" | tr '\n' '\001')" ;;
    esac
  done
}

# Print the unit actions of the current generation that have not run:
#   pending OP UNIT
pending() {
  D="$S/gen/$(current_gen)"
  [ -f "$D/actions" ] || return 0
  dn=" "
  if [ -f "$D/done" ]; then
    while read -r x; do dn="$dn$x "; done <"$D/done"
  fi
  i=0
  while read -r a u; do
    i=$((i + 1))
    case $dn in *" $i "*) ;; *) printf 'pending %s %s\n' "$a" "$u" ;; esac
  done <"$D/actions"
}

# What lab needs to know of the machine, in one command (changes nothing):
#   GEN DIGEST            (`0 none` before lab's first sync)
#   interrupted           (a run was killed half way: recovered by the next)
#   at EPOCH              when the current generation was applied
#   drift ... / pending ...
#   unit UNIT ACTIVESTATE (for each UNIT argument)
#   manifest              then the applied manifest, when its digest is
#                         not KNOWN (what lab has cached)
# WAIT=1: first wait for a sync that holds the lock.
probe() { # KNOWN WAIT UNIT...
  # (WAIT=1: a sync holds the lock while it changes things: wait for it,
  # to see where it leaves the machine; a sync does not wait here: its
  # apply checks again under the lock)
  if [ "$2" = 1 ] && [ -e "$S/lock" ]; then exec 8<"$S/lock" && flock -s -w 60 8 || :; fi
  if [ -f "$S/current" ]; then cat "$S/current"; else echo '0 none'; fi
  if [ -e "$S/inflight" ] || [ -e "$S/undoing" ]; then echo interrupted; return 0; fi
  k=$1
  shift 2
  g=$(current_gen)
  [ "$g" -gt 0 ] || return 0
  echo "at $(stat -c %Y "$S/current")"
  drift
  pending
  if [ $# -gt 0 ] && command -v systemctl >/dev/null 2>&1; then
    for u do
      # (USER/UNIT: a unit of that user's systemd, a rootless pod)
      case $u in
        */*) a=$(systemctl --user -M "${u%%/*}@" show -p ActiveState --value -- "${u#*/}" 2>/dev/null </dev/null) || a=unknown ;;
        *) a=$(systemctl show -p ActiveState --value -- "$u" 2>/dev/null </dev/null) || a=unknown ;;
      esac
      printf 'unit %s %s\n' "$u" "${a:-unknown}"
    done
  fi
  if [ "$(current_digest)" != "$k" ] && [ -f "$S/gen/$g/manifest" ]; then
    echo manifest
    cat "$S/gen/$g/manifest"
  fi
}
