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

# The cheap facts of every path of generation directory $1, now. A path
# that cannot be looked at (gone, below a file) has no line; then file $2,
# when given, is created.
stat_all() { # GENDIR [MISSING_FLAG]
  { (cd "${R:-/}" && xargs -0 -r stat --printf "$SFMT" -- <"$1/paths0" 2>/dev/null) ||
    { [ -z "${2:-}" ] || : >"$2"; }; } | tr '\n\0' '\001\n'
}

# Record the facts of generation directory $1 (right after its apply,
# before its commit; or after a rollback to it). Only facts known to be
# lab's are recorded: a line equal to the last record (the apply's check
# found the path as lab left it), or the line of a regular file whose
# content and mode, read after its stat, are what the manifest says. A
# file changed behind lab's back while the apply ran (after its check,
# before this record) is recorded as facts no stat prints: the next check
# looks at it, finds the drift and the next sync repairs it. (Trusting such a line
# would hide the drift for as long as nobody touches the file again.)
record() {
  [ -f "$1/paths0" ] || return 0
  [ ! -e "$1/stat.miss" ] || rm -f -- "$1/stat.miss"
  # (an uncommitted generation's record is nobody's yet: written in place)
  t="$1/stat.tmp"
  [ "$1" != "$S/inflight" ] || t="$1/stat"
  stat_all "$1" "$1/stat.miss" >"$t" || { rm -f -- "$t"; return 0; }
  o="$S/gen/$(current_gen)/stat"
  [ "$1" != "$S/gen/$(current_gen)" ] || o="$1/stat"
  [ -f "$o" ] || o=/dev/null
  unverified "$1" "$o" "$t" >"$1/stat.bad" || :
  # one line per path, in order: a line not to be trusted, or a path
  # missing now, is recorded as facts no stat prints (`0 0 0 0 0 - -`),
  # so that every check sees it differ
  if [ -s "$1/stat.bad" ] || [ -e "$1/stat.miss" ]; then
    { tr '\n\0' '\001\n' <"$1/paths0"; echo /; cat -- "$t"; } | awk -v bad="$1/stat.bad" '
      function nm(l, i) { for (i = 0; i < 7; i++) l = substr(l, index(l, " ") + 1); return l }
      BEGIN { while ((getline l < bad) > 0) b[l] = 1 }
      part == 0 { if ($0 == "/") part = 1; else order[++n] = $0; next }
      { now[nm($0)] = $0 }
      END {
        for (i = 1; i <= n; i++) {
          k = order[i]
          if (!(k in now) || (now[k] in b)) print "0 0 0 0 0 - - " k; else print now[k]
        }
      }' >"$1/stat.ok" && mv -f -- "$1/stat.ok" "$t"
  fi
  rm -f -- "$1/stat.bad" "$1/stat.miss" "$1/stat.new" "$1/stat.sum"
  [ "$t" = "$1/stat" ] || mv -f -- "$t" "$1/stat"
}

# The lines of file NOW (facts now) of regular files whose facts
# differ from record OLD and whose content or mode is not the manifest's
# (or cannot be told: a name that needs escaping in JSON). The stat came
# first: a change after it moves the ctime, so the next check sees it.
# (A few programs whatever the size: `diff` hands on the lines that
# differ, one awk keeps those of regular files and names them for
# sha256sum, one awk reads the manifest's lines of those paths alone.)
unverified() { # DIR OLD NOW
  : >"$1/stat.new"
  d=0
  if command -v diff >/dev/null 2>&1; then d=1; fi
  if [ $d = 1 ]; then diff -- "$2" "$3"; else cat -- "$3"; fi | awk -v d=$d -v new="$1/stat.new" '
    { l = $0
      if (d) { if (substr(l, 1, 2) != "> ") next; l = substr(l, 3) }
      if (l !~ /^[0-9]* [0-9]* [0-9]* [0-9.]* 8/) next
      print l > new
      for (i = 0; i < 7; i++) l = substr(l, index(l, " ") + 1)
      print l }' | (cd "${R:-/}" && xargs -d '\n' -r sha256sum -- 2>/dev/null) >"$1/stat.sum" || :
  [ -s "$1/stat.new" ] || return 0
  awk -v new="$1/stat.new" -v sum="$1/stat.sum" '
    function hex(h, i, v) { v = 0; for (i = 1; i <= length(h); i++) v = v * 16 + index("0123456789abcdef", substr(h, i, 1)) - 1; return v }
    function oct(o, i, v) { v = 0; for (i = 1; i <= length(o); i++) v = v * 8 + substr(o, i, 1); return v }
    function nm(l, i) { for (i = 0; i < 7; i++) l = substr(l, index(l, " ") + 1); return l }
    BEGIN {
      while ((getline l < new) > 0) { line[++k] = l; want[nm(l)] = 1 }
      while ((getline l < sum) > 0) {
        if (substr(l, 1, 1) == "\\") continue
        got[substr(l, 67)] = substr(l, 1, 64)
      }
    }
    # the manifest: only the lines of those paths are parsed (a path
    # with a quote or a backslash, escaped in JSON, cannot be told)
    substr($0, 1, 10) == "{\"path\":\"/" {
      p = substr($0, 11)
      e = index(p, "\"")
      if (e == 0) next
      p = substr(p, 1, e - 1)
      if (index(p, "\\") || !(p in want)) next
      if (match($0, /"mode":"[0-7]*"/)) mode[p] = oct(substr($0, RSTART + 8, RLENGTH - 9))
      if (match($0, /"sha256":"[0-9a-f]*"/)) sha[p] = substr($0, RSTART + 10, RLENGTH - 11)
    }
    END {
      for (i = 1; i <= k; i++) {
        n = nm(line[i])
        split(line[i], f, " ")
        if (!(n in sha) || got[n] != sha[n] || mode[n] != hex(f[5]) % 4096) print line[i]
      }
    }' "$1/manifest"
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
  # (the common case, every path as the apply left it, costs one program
  # besides the stat: `cmp`; only a difference stats again for `diff`)
  if [ -f "$D/stat" ] && command -v cmp >/dev/null 2>&1 &&
    stat_all "$D" 2>/dev/null | cmp -s -- "$D/stat" -; then
    return 0
  fi
  # (the facts now against the record, one line per path in the same
  # order, as the same command wrote them: `diff` hands on only the lines
  # that differ, nothing in the common case; each path once, in order)
  if [ -f "$D/stat" ] && command -v diff >/dev/null 2>&1; then
    stat_all "$D" | diff -- "$D/stat" - | sed -n 's/^\([<>]\) /\1/p' | awk '
    function nm(l, i) { for (i = 0; i < 7; i++) l = substr(l, index(l, " ") + 1); return l }
    { t = substr($0, 1, 1); l = substr($0, 2); k = nm(l)
      if (!(k in seen)) { seen[k] = 1; order[++n] = k }
      if (t == "<") rec[k] = l; else now[k] = l }
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
    }'
  else
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
    }'
  fi | while read -r t m u g ru rg; do
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

# Journal unit actions (OP UNIT pairs) for the current generation, under
# the executor's lock, before the change they answer is made outside a
# generation (an image that a pod's name now points at): the next sync
# finds them pending and runs them, whenever the link drops. The lock
# stays held (fd 9) for the caller, which makes the change and exits: a
# sync that ran them in between would restart the pod on the old image
# and mark the restart done. Before the first generation there is
# nothing of lab's to act on.
enqueue() { # OP UNIT [OP UNIT]...
  [ -d "$S/gen" ] || return 0
  exec 9>"$S/lock"
  flock -w "${LAB_LOCK_WAIT:-600}" 9 || return 1
  g=$(current_gen)
  if [ "$g" -gt 0 ] && [ -d "$S/gen/$g" ]; then
    while [ $# -ge 2 ]; do
      printf '%s %s\n' "$1" "$2" >>"$S/gen/$g/actions"
      shift 2
    done
  fi
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
  if [ -f "$S/current" ] && read -r g d <"$S/current"; then echo "$g $d"; else echo '0 none'; fi
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
