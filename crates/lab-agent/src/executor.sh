# lab executor: the library part. The generated plan (a list of calls to the
# functions below) follows it, and a tar stream follows the script on stdin.
# Runs only for the duration of one sync; needs a POSIX sh, coreutils, tar,
# flock (util-linux) and, for unit actions, systemd.
#
# State lives in $S (default /var/lib/lab):
#   lock              flock(1) lock: two syncs never interleave
#   current           "GEN DIGEST" of the applied generation (the commit point)
#   gen/GEN/          manifest, undo.sh (back to GEN-1), prev/ (what GEN replaced)
#   inflight/         a generation being applied (undone if interrupted)
#   orig/             files that existed before lab first wrote their path;
#                     restored when lab stops managing the path
#
# Exit codes: 0 applied (unit results are in the report), 3 stale base (the
# machine's generation is not the one the plan was made for), 10 failed (the
# machine is back where it was).

set -eu
umask 022
R=${LAB_ROOT:-}
# the executor changes directory: a relative root is taken from where it starts
case $R in '' | /*) ;; *) R=$PWD/$R ;; esac
S="$R/var/lib/lab"
G=""

out() { printf '%s\n' "$*"; }

# Copy stdin to stdout with builtins only: the plan's small files are
# written without starting a program. (Each program started on a small
# machine costs milliseconds; a sync that changes one file starts few.)
wr() { while IFS= read -r l; do printf '%s\n' "$l"; done; }

fail() {
  out "fail $*"
  if [ -d "$S/inflight" ]; then
    [ -f "$S/inflight/cleanup.sh" ] && ( . "$S/inflight/cleanup.sh" ) </dev/null >/dev/null 2>&1
    if [ -f "$S/inflight/backed-up" ]; then
      G="$S/inflight"
      ( . "$S/inflight/undo.sh" ) </dev/null >/dev/null 2>&1 || out "fail undo of the failed sync did not finish"
    fi
    rm -rf -- "$S/inflight"
  fi
  exit 10
}

lock() {
  [ -d "$S/gen" ] || mkdir -p -- "$S/gen"
  exec 9>"$S/lock"
  if ! flock -n 9; then
    out "waiting for the lock"
    flock -w "${LAB_LOCK_WAIT:-600}" 9 || { out "fail another sync holds $S/lock"; exit 10; }
  fi
}

current_gen() { if [ -f "$S/current" ]; then read -r g _ <"$S/current"; echo "$g"; else echo 0; fi; }
current_digest() { if [ -f "$S/current" ]; then read -r _ d <"$S/current"; echo "$d"; else echo none; fi; }

set_current() { # GEN DIGEST
  printf '%s %s\n' "$1" "$2" >"$S/current.tmp"
  mv -f -- "$S/current.tmp" "$S/current"
}

# Undo whatever an interrupted run left: a half-applied generation, a
# generation moved into gen/ but never made current, an unfinished rollback.
recover() {
  if [ -d "$S/inflight" ]; then
    [ -f "$S/inflight/cleanup.sh" ] && ( . "$S/inflight/cleanup.sh" ) </dev/null
    if [ -f "$S/inflight/backed-up" ]; then
      G="$S/inflight"
      ( . "$S/inflight/undo.sh" ) </dev/null || { out "fail recovery of an interrupted sync failed"; exit 10; }
    fi
    rm -rf -- "$S/inflight"
    out "recovered interrupted sync"
  fi
  cur=$(current_gen)
  if [ -f "$S/undoing" ]; then
    read -r u <"$S/undoing"
    if [ -d "$S/gen/$u" ] && [ "$u" -le "$cur" ]; then
      G="$S/gen/$u"
      ( . "$G/undo.sh" ) </dev/null || { out "fail recovery of an interrupted rollback failed"; exit 10; }
      p=$((u - 1))
      if [ "$p" -gt 0 ] && [ -f "$S/gen/$p/digest" ]; then set_current "$p" "$(cat "$S/gen/$p/digest")"; else rm -f -- "$S/current"; fi
      rm -rf -- "$S/gen/$u"
      cur=$p
    fi
    rm -f -- "$S/undoing"
    out "recovered interrupted rollback"
  fi
  newer=0
  for d in "$S"/gen/*; do
    g=${d##*/}
    case $g in '' | *[!0-9]*) continue ;; esac
    if [ "$g" -gt "$cur" ]; then newer=1; fi
  done
  [ $newer = 1 ] || return 0
  for g in $(ls "$S/gen" 2>/dev/null | sort -n -r); do
    case $g in *[!0-9]*) continue ;; esac
    if [ "$g" -gt "$cur" ]; then
      G="$S/gen/$g"
      ( . "$G/undo.sh" ) </dev/null || { out "fail recovery of generation $g failed"; exit 10; }
      rm -rf -- "$G"
      out "recovered uncommitted generation $g"
    fi
  done
}

begin() { # BASE_DIGEST
  lock
  recover
  cur=$(current_digest)
  if [ "$cur" != "$1" ]; then out "stale $(current_gen) $cur"; exit 3; fi
  mkdir -p "$S/inflight/prev" "$S/orig"
  G="$S/inflight"
}

# Each path must be a real directory or not exist: never write through a
# symlink.
dirok() {
  for p do
    if [ -L "$R$p" ]; then fail "unsafe $p is a symlink lab did not create"; fi
    if [ -e "$R$p" ] && [ ! -d "$R$p" ]; then fail "unsafe $p exists and is not a directory"; fi
  done
}

# Each path is about to become a file or symlink: it must not be a directory.
notdir() {
  for p do
    if [ -d "$R$p" ] && [ ! -L "$R$p" ]; then fail "unsafe $p is a directory lab did not create"; fi
  done
}

# Copy the file or symlink at each path (if any) into $G/prev, keeping the
# structure.
backup() {
  for p do
    shift
    if [ -L "$R$p" ] || { [ -e "$R$p" ] && [ ! -d "$R$p" ]; }; then set -- "$@" "${p#/}"; fi
  done
  [ $# -eq 0 ] && return 0
  # (every other path is absolute: the working directory is free to use)
  cd "${R:-/}" || fail "backup"
  cp -a --parents -- "$@" "$G/prev/" </dev/null || fail "backup"
}

# Paths lab writes for the first time: keep what was there before.
takeover() {
  for p do
    shift
    if { [ -e "$R$p" ] || [ -L "$R$p" ]; } && [ ! -e "$S/orig$p" ] && [ ! -L "$S/orig$p" ]; then
      set -- "$@" "${p#/}"
    fi
  done
  [ $# -eq 0 ] && return 0
  cd "${R:-/}" || fail "takeover"
  cp -a --parents -- "$@" "$S/orig/" </dev/null || fail "takeover"
}

backed_up() { : >"$G/backed-up"; }

# Put the file at $1 (a copy of it) at path $2, atomically.
put_copy() {
  d=${2%/*}
  mkdir -p -- "$R$d/.lab-stage"
  rm -rf -- "$R$d/.lab-stage/${2##*/}"
  cp -a -- "$1" "$R$d/.lab-stage/${2##*/}" </dev/null || return 1
  mv -f -T -- "$R$d/.lab-stage/${2##*/}" "$R$2" </dev/null || return 1
  rmdir -- "$R$d/.lab-stage" 2>/dev/null || :
}

# Remove files and symlinks lab no longer manages; restore a path's original
# when lab took it over.
remove() {
  for p do
    shift
    if [ -e "$S/orig$p" ] || [ -L "$S/orig$p" ]; then
      put_copy "$S/orig$p" "$p" || fail "restore $p"
      rm -rf -- "$S/orig$p"
      out "restored $p"
    elif [ -e "$R$p" ] || [ -L "$R$p" ]; then
      set -- "$@" "$R$p"
    fi
  done
  [ $# -eq 0 ] && return 0
  rm -f -- "$@" </dev/null || fail "remove"
}

# Remove directories lab no longer manages, deepest first; a directory that
# holds files lab did not create stays. With `must`, it has to go (a file
# takes its place).
rmdirs() {
  for p do
    if [ -d "$R$p" ] && [ ! -L "$R$p" ]; then
      if [ -e "$S/orig$p/.lab-preexisting" ]; then
        rm -rf -- "$S/orig$p"
      elif ! rmdir -- "$R$p" 2>/dev/null; then
        out "kept $p"
      fi
    fi
  done
}

mustrmdir() {
  for p do
    if [ -d "$R$p" ] && [ ! -L "$R$p" ]; then
      rmdir -- "$R$p" 2>/dev/null || fail "cannot replace directory $p: it holds files lab did not create"
    elif [ -e "$R$p" ] || [ -L "$R$p" ]; then
      rm -f -- "$R$p"
    fi
  done
}

# Directories lab now manages that existed before: never remove them later.
preexisting() {
  for p do
    if [ -d "$R$p" ] && [ ! -L "$R$p" ] && [ ! -e "$S/orig$p/.lab-preexisting" ]; then
      mkdir -p -- "$S/orig$p" && : >"$S/orig$p/.lab-preexisting"
    fi
  done
}

extract() {
  cd "${R:-/}" || fail "extract"
  tar -x -p -m --no-same-owner -f - || fail "extract"
}

# Move DIR/.lab-stage/NAME over DIR/NAME for each name (rename(2): atomic).
place() {
  d=$1
  shift
  cd "$R$d/.lab-stage" || fail "place in $d"
  mv -f -- "$@" .. </dev/null || fail "place in $d"
  cd /
}

# Remove the emptied DIR/.lab-stage directories (one program for all).
unstage() {
  for d do
    shift
    set -- "$@" "$R$d/.lab-stage"
  done
  rmdir -- "$@" 2>/dev/null || :
}

# The new generation is the current one plus one (`begin` checked that the
# machine is where the plan expects it).
commit() { # DIGEST KEEP
  [ -f "$S/inflight/manifest" ] || fail "incomplete stream: no manifest"
  set -- "$(($(current_gen) + 1))" "$1" "$2" "$(sha256sum <"$S/inflight/manifest")"
  [ "${4%% *}" = "$2" ] || fail "incomplete stream: manifest digest mismatch"
  printf '%s\n' "$2" >"$S/inflight/digest"
  # (inflight/backed-up goes along: until `current` names it, a generation
  # in gen/ is undone by recover() anyway)
  mv -- "$S/inflight" "$S/gen/$1"
  set_current "$1" "$2"
  G="$S/gen/$1"
  n=0
  for d in "$S"/gen/*; do
    case ${d##*/} in '' | *[!0-9]*) ;; *) n=$((n + 1)) ;; esac
  done
  if [ "$n" -gt "$3" ]; then
    for g in $(ls "$S/gen" | sort -n -r | tail -n +$(($3 + 1))); do
      case $g in *[!0-9]*) continue ;; esac
      rm -rf -- "$S/gen/$g"
    done
  fi
  out "applied $1 $2"
}

# --- undo helpers: run with G set to the generation being undone ---

# Restore each path from $G/prev, or remove it when nothing was there.
# (Directories in prev only hold backed-up children.)
u_path() {
  for p do
    if [ -L "$G/prev$p" ] || { [ -e "$G/prev$p" ] && [ ! -d "$G/prev$p" ]; }; then
      put_copy "$G/prev$p" "$p" || return 1
    elif [ -L "$R$p" ] || { [ -e "$R$p" ] && [ ! -d "$R$p" ]; }; then
      rm -f -- "$R$p"
    fi
  done
}

u_mkdir() { # MODE PATH...
  m=$1
  shift
  for p do
    if [ -L "$R$p" ] || { [ -e "$R$p" ] && [ ! -d "$R$p" ]; }; then rm -f -- "$R$p"; fi
    mkdir -p -- "$R$p" && chmod "$m" -- "$R$p"
  done
}

u_rmdir() {
  for p do
    if [ -d "$R$p" ] && [ ! -L "$R$p" ]; then rmdir -- "$R$p" 2>/dev/null || :; fi
  done
}

# --- rollback ---

rollback() { # TARGET_GEN
  lock
  recover
  cur=$(current_gen)
  if [ "$1" -ge "$cur" ]; then out "fail generation $1 is not older than the current $cur"; exit 10; fi
  g=$cur
  while [ "$g" -gt "$1" ]; do
    [ -d "$S/gen/$g" ] || { out "fail generation $g is gone (only the last few are kept)"; exit 10; }
    g=$((g - 1))
  done
  if [ "$1" -gt 0 ] && [ ! -f "$S/gen/$1/digest" ]; then out "fail generation $1 is gone"; exit 10; fi
  g=$cur
  while [ "$g" -gt "$1" ]; do
    printf '%s\n' "$g" >"$S/undoing"
    G="$S/gen/$g"
    ( . "$G/undo.sh" ) </dev/null || { out "fail undo of generation $g"; exit 10; }
    p=$((g - 1))
    if [ "$p" -gt 0 ]; then set_current "$p" "$(cat "$S/gen/$p/digest")"; else rm -f -- "$S/current"; fi
    rm -rf -- "$G"
    rm -f -- "$S/undoing"
    g=$p
  done
  out "rolledback $1 $(current_digest)"
}

# --- systemd ---

has_systemd() { [ "${LAB_SYSTEMD:-1}" = 1 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

# unit_state UNIT: one `systemctl show` for what lab needs to know of a
# unit (each systemctl run is a fork, an exec and a D-Bus connection).
unit_state() {
  U_ACTIVE=unknown U_SUB=unknown U_TYPE=- U_RESULT=-
  props=$(systemctl show -p ActiveState -p SubState -p Type -p Result -- "$1" 2>/dev/null) || :
  while IFS='=' read -r k v; do
    case $k in
      ActiveState) U_ACTIVE=${v:-unknown} ;;
      SubState) U_SUB=${v:-unknown} ;;
      Type) U_TYPE=${v:--} ;;
      Result) U_RESULT=${v:--} ;;
    esac
  done <<EOF
$props
EOF
}

unit_report() { # ACTION UNIT RESULT, after unit_state of UNIT
  res=$3
  if [ "$res" = failed ] && [ "$U_RESULT" = start-limit-hit ]; then
    res=start-limit
  fi
  out "unit $2 $1 $res $U_ACTIVE $U_SUB"
  if [ "$res" != ok ] && [ "$res" != skipped ]; then
    out "journal $2"
    journalctl -u "$2" -n "${LAB_JOURNAL_LINES:-20}" --no-pager -o short-iso 2>&1 </dev/null | sed 's/^/| /'
    out "endjournal $2"
  fi
}

daemon_reload() {
  has_systemd || { out "daemon-reload skipped"; return 0; }
  if systemctl daemon-reload </dev/null; then out "daemon-reload ok"; else out "daemon-reload failed"; fi
}

# act ACTION UNIT: restart | start | stop | reload | reload-or-restart.
# Results are reported by `settle`, after all actions.
DONE=""
act() {
  a=$1
  u=$2
  if ! has_systemd; then out "unit $u $a skipped no-systemd -"; return 0; fi
  unit_state "$u"
  active=0
  case $U_ACTIVE in active | reloading) active=1 ;; esac
  case $a in
    stop)
      if [ $active = 1 ]; then systemctl stop -- "$u" </dev/null && r=ok || r=failed; else r=skipped; fi ;;
    start)
      # reset-failed also resets the start limit counter: fast deploys and
      # watch cycles start a unit more often than 5 times in 10 s
      systemctl reset-failed -- "$u" 2>/dev/null || :
      if [ $active = 1 ]; then a=restart; fi
      systemctl "$a" -- "$u" </dev/null && r=ok || r=failed ;;
    restart)
      if [ $active = 1 ] || [ "$U_ACTIVE" = failed ]; then
        systemctl reset-failed -- "$u" 2>/dev/null || :
        systemctl restart -- "$u" </dev/null && r=ok || r=failed
      else
        r=skipped
      fi ;;
    reload | reload-or-restart)
      if [ $active = 1 ]; then systemctl "$a" -- "$u" </dev/null && r=ok || r=failed; else r=skipped; fi ;;
    *) r=failed ;;
  esac
  DONE="$DONE$a $u $r
"
}

# settle MS: report each unit acted on, with its state. A unit that dies
# right after (re)starting is a failure too: when the start of a started
# unit does not wait for readiness (Type=simple, exec, idle) and MS > 0,
# look again after MS milliseconds.
settle() {
  [ -n "$DONE" ] || return 0
  again=0
  STATES=""
  while read -r a u r; do
    [ -n "$u" ] || continue
    unit_state "$u"
    STATES="$STATES$a $u $r $U_ACTIVE $U_SUB $U_TYPE $U_RESULT
"
    case "$a $r" in
      "start ok" | "restart ok")
        case $U_TYPE in simple | exec | idle) again=1 ;; esac ;;
    esac
  done <<EOF
$DONE
EOF
  look=0
  if [ $again = 1 ] && [ "${1:-0}" -gt 0 ]; then
    sleep "$(($1 / 1000)).$(printf '%03d' $(($1 % 1000)))"
    look=1
  fi
  while read -r a u r U_ACTIVE U_SUB U_TYPE U_RESULT; do
    [ -n "$u" ] || continue
    if [ $look = 1 ]; then unit_state "$u"; fi
    if [ "$r" = ok ] && [ "$a" != stop ]; then
      case $U_ACTIVE in
        active | reloading) ;;
        *) if [ "$U_TYPE" != oneshot ] || [ "$U_RESULT" != success ]; then r=failed; fi ;;
      esac
    fi
    unit_report "$a" "$u" "$r"
  done <<EOF
$STATES
EOF
}
