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
#   gen/GEN/paths0, stat, actions, done: see check.sh (drift, and unit
#                     actions journaled with the commit, marked done one
#                     by one)
#
#   reports/RUN       what the run RUN printed (kept for the last few runs):
#                     a client that lost its connection reads it there
#
# Exit codes: 0 applied (unit results are in the report), 3 stale base (the
# machine's generation is not the one the plan was made for), 10 failed (the
# machine is back where it was). The last line of a run that got to its end
# is `end`: a run killed on the way has none, whatever its exit status says.

set -eu
umask 022
# A lost connection must not stop a run half way: once the executor has the
# whole stream it finishes and commits (as under nohup), and a stream that
# ends early is undone at once. Writes to a dead stdout fail instead of
# killing the shell; `out` ignores that failure.
trap '' HUP PIPE
R=${LAB_ROOT:-}
# the executor changes directory: a relative root is taken from where it starts
case $R in '' | /*) ;; *) R=$PWD/$R ;; esac
S="$R/var/lib/lab"
G=""
RUN=${RUN:-}
RPT=""
# apply: a refused path fails the sync (which is then undone); undo: it
# stops the undo. CHECK=1 while an undo program is only being checked.
MODE=apply
CHECK=0

out() {
  if [ -n "$RPT" ]; then printf '%s\n' "$*" >>"$RPT" || :; fi
  printf '%s\n' "$*" 2>/dev/null || :
}

# Copy stdin to stdout with builtins only: the plan's small files are
# written without starting a program. (Each program started on a small
# machine costs milliseconds; a sync that changes one file starts few.)
wr() { while IFS= read -r l; do printf '%s\n' "$l"; done; }

fail() {
  out "fail $*"
  if [ -d "$S/inflight" ]; then
    G="$S/inflight"
    # (an undo that refuses or breaks keeps inflight/: the next run tries
    # again, and says why it cannot)
    if ! undo_inflight; then
      out "fail undo of the failed sync did not finish; the next sync retries it"
      exit 10
    fi
    rm -rf -- "$S/inflight"
  fi
  exit 10
}

lock() {
  [ -d "$S/gen" ] && [ -d "$S/reports" ] || mkdir -p -- "$S/gen" "$S/reports"
  exec 9>"$S/lock"
  if ! flock -n 9; then
    out "waiting for the lock"
    flock -w "${LAB_LOCK_WAIT:-600}" 9 || { out "fail another sync holds $S/lock"; exit 10; }
  fi
  case $RUN in
    '' | *[!0-9a-z-]*) ;;
    *) RPT="$S/reports/$RUN"; : >"$RPT" ;;
  esac
}

# The last line of every run that got to its end. The reports of the last
# 20 runs at least are kept: past 30, all but the last 20 go, with one
# program (names start with the time: glob order is age order).
finish() {
  out end
  set -- "$S"/reports/*
  [ $# -gt 30 ] || return 0
  n=$(($# - 20))
  for f do
    shift
    if [ "$n" -gt 0 ] && [ "$f" != "$RPT" ]; then set -- "$@" "$f"; fi
    n=$((n - 1))
  done
  # (what is left in "$@": the oldest, to go)
  rm -f -- "$@"
}

# The one gate for every path the executor changes on the machine (apply,
# undo, recovery, rollback): each directory from the root down to the
# parent of PATH must be a real directory, or not exist yet. lab never puts
# a managed path below a symlink, so a symlink there (or a file) is someone
# else's: writing below it would write outside the managed paths. While an
# undo program is only being checked (CHECK=1), the non-directories it
# names in `u_lab` count as directories: the undo replaces them first.
SAFE_LAST=/nonexistent/
LABOWN=""
safe() { # PATH... (absolute, below the machine's root)
  for p do
    d=${p%/*}
    [ "$d" != "$SAFE_LAST" ] || continue
    q=$d
    while [ -n "$q" ]; do
      if [ -L "$R$q" ] || { [ -e "$R$q" ] && [ ! -d "$R$q" ]; }; then
        if [ "$CHECK" = 1 ]; then
          case $LABOWN in *"
$q
"*) q=${q%/*}; continue ;; esac
        fi
        if [ -L "$R$q" ]; then refuse "$q is a symlink lab did not create (writing $p)"; fi
        refuse "$q exists and is not a directory (writing $p)"
      fi
      q=${q%/*}
    done
    SAFE_LAST=$d
  done
}

refuse() {
  if [ "$MODE" = apply ]; then fail "unsafe $*"; fi
  out "fail unsafe $*"
  exit 1
}

# Undo what the generation in $G did, as far as it got: first only check
# every path (nothing is written when a check refuses), then do it.
undo_check() {
  ( MODE=undo CHECK=1 LABOWN="
" SAFE_LAST=/nonexistent/; . "$G/undo.sh" ) </dev/null
}
undo_do() {
  ( MODE=undo CHECK=0 SAFE_LAST=/nonexistent/; . "$G/undo.sh" ) </dev/null
}
undo_gen() { undo_check && undo_do; }

# inflight/: remove the stage directories and undo what was changed,
# everything checked first. (Stage directories go first: the undo puts
# files back through them. Plans of older executors have a cleanup.sh of
# plain `rm -rf` lines: not run as a check.)
undo_inflight() {
  c=0
  [ -f "$G/cleanup.sh" ] && c=1
  b=0
  [ -f "$G/backed-up" ] && b=1
  if [ $c = 1 ] && [ -f "$G/track" ]; then
    ( MODE=undo CHECK=1; . "$G/cleanup.sh" ) </dev/null || return 1
  fi
  if [ $b = 1 ]; then undo_check || return 1; fi
  if [ $c = 1 ]; then ( MODE=undo CHECK=0; . "$G/cleanup.sh" ) </dev/null || return 1; fi
  if [ $b = 1 ]; then undo_do || return 1; fi
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
    G="$S/inflight"
    undo_inflight || { out "fail recovery of an interrupted sync failed"; exit 10; }
    rm -rf -- "$S/inflight"
    out "recovered interrupted sync"
  fi
  cur=$(current_gen)
  if [ -f "$S/undoing" ]; then
    read -r u <"$S/undoing"
    if [ -d "$S/gen/$u" ] && [ "$u" -le "$cur" ]; then
      G="$S/gen/$u"
      undo_gen || { out "fail recovery of an interrupted rollback failed"; exit 10; }
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
      undo_gen || { out "fail recovery of generation $g failed"; exit 10; }
      rm -rf -- "$G"
      out "recovered uncommitted generation $g"
    fi
  done
}

# The plan was made for the machine as lab last saw it: the drift and the
# pending unit actions it found (see check.sh), as the sha256 of those
# lines (`none`: there were none). Anything else: say what there is and
# stop (exit 3, like a stale base), and lab plans again. (An empty EXPECT:
# an older client, no check.)
# `expect EXPECT pending` compares the pending unit actions alone (what a
# rollback carries into its journal).
expect() { # EXPECT [pending]
  [ -n "$1" ] || return 0
  if [ "${2:-}" = pending ]; then c=$(pending); else c=$(drift; pending); fi
  h=none
  if [ -n "$c" ]; then h=$(printf '%s' "$c" | sha256sum) && h=${h%% *}; fi
  if [ "$h" != "$1" ]; then
    out "$c"
    out "stale $(current_gen) $(current_digest)"
    exit 3
  fi
}

begin() { # BASE_DIGEST [EXPECT]
  lock
  recover
  cur=$(current_digest)
  if [ "$cur" != "$1" ]; then out "stale $(current_gen) $cur"; exit 3; fi
  expect "${2:-}"
  mkdir -p "$S/inflight/prev" "$S/orig"
  G="$S/inflight"
  # undo.sh of this generation undoes only what was done (see `place`)
  : >"$G/track"
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
  err=$(cp -a --parents -- "$@" "$G/prev/" 2>&1 </dev/null) || nospace_cp "$err" backup "$@"
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
  err=$(cp -a --parents -- "$@" "$S/orig/" 2>&1 </dev/null) || nospace_cp "$err" takeover "$@"
}

# A copy into the state directory failed (MESSAGE WHAT PATH...): say so,
# and when the disk is full, how much the copies need and how much is free.
nospace_cp() {
  e=$1
  w=$2
  shift 2
  case $e in
    *"No space left on device"* | *"Disk quota exceeded"*)
      need=$(du -skc -- "$@" 2>/dev/null | tail -n 1) || need=0
      need=${need%%[!0-9]*}
      fail "nospace $((${need:-0} * 1024)) $(free_bytes "$S") ${S#"$R"}" ;;
  esac
  fail "$w: $(printf '%s' "$e" | head -n 3)"
}

# Bytes free for root on the file system holding PATH (or its nearest
# existing parent).
free_bytes() {
  q=$1
  while [ -n "$q" ] && [ ! -d "$q" ]; do q=${q%/*}; done
  df -Pk -- "${q:-/}" 2>/dev/null | { read -r _ || :; read -r _ _ _ a _ || :; echo $((${a:-0} * 1024)); }
}

backed_up() { : >"$G/backed-up"; }

# Put the file at $1 (a copy of it) at path $2, atomically.
put_copy() {
  safe "$2"
  d=${2%/*}
  mkdir -p -- "$R$d/.lab-stage"
  rm -rf -- "$R$d/.lab-stage/${2##*/}"
  cp -a -- "$1" "$R$d/.lab-stage/${2##*/}" </dev/null || return 1
  mv -f -T -- "$R$d/.lab-stage/${2##*/}" "$R$2" </dev/null || return 1
  rmdir -- "$R$d/.lab-stage" 2>/dev/null || :
}

# Remove files and symlinks lab no longer manages; restore a path's original
# when lab took it over (the original moves into $G/origs, so that undoing
# this generation can make it lab's original again).
remove() {
  safe "$@"
  : >"$G/removed"
  for p do
    shift
    if [ -e "$S/orig$p" ] || [ -L "$S/orig$p" ]; then
      put_copy "$S/orig$p" "$p" || fail "restore $p"
      mkdir -p -- "$G/origs${p%/*}" && mv -f -- "$S/orig$p" "$G/origs$p" || fail "restore $p"
      out "restored $p"
    elif [ -e "$R$p" ] || [ -L "$R$p" ]; then
      set -- "$@" "$R$p"
    fi
  done
  [ $# -eq 0 ] && return 0
  rm -f -- "$@" </dev/null || fail "remove"
}

# Directories lab now manages that existed before (mode and owner kept in
# orig/DIR/.lab-preexisting): never removed by lab, and given back their
# mode and owner when lab lets go of them.
preexisting() {
  for p do
    shift
    if [ -d "$R$p" ] && [ ! -L "$R$p" ] && [ ! -e "$S/orig$p/.lab-preexisting" ]; then
      set -- "$@" "$R$p"
    fi
  done
  [ $# -eq 0 ] && return 0
  stat -c '%a %u:%g %n' -- "$@" </dev/null | while IFS= read -r l; do
    q=${l#* }
    q=${q#* }
    q=${q#"$R"}
    mkdir -p -- "$S/orig$q" && printf '%s\n' "${l%% /*}" >"$S/orig$q/.lab-preexisting"
  done || fail "preexisting"
}

# A pre-existing directory leaves lab's management: its own mode and owner
# again (records of older executors are empty: then nothing to do).
give_back() { # PATH
  read -r m o <"$S/orig$1/.lab-preexisting" 2>/dev/null || return 0
  [ -n "${o:-}" ] || return 0
  chown -- "$o" "$R$1" 2>/dev/null || :
  chmod -- "$m" "$R$1" 2>/dev/null || :
}

# Remove directories lab no longer manages, deepest first; a directory that
# holds files lab did not create stays, and so does one that existed before
# lab (the record stays with it: the directory is still not lab's).
rmdirs() {
  safe "$@"
  for p do
    if [ -d "$R$p" ] && [ ! -L "$R$p" ]; then
      if [ -e "$S/orig$p/.lab-preexisting" ]; then
        give_back "$p"
      elif ! rmdir -- "$R$p" 2>/dev/null; then
        out "kept $p"
      fi
    fi
  done
}

mustrmdir() {
  safe "$@"
  for p do
    if [ -d "$R$p" ] && [ ! -L "$R$p" ]; then
      rmdir -- "$R$p" 2>/dev/null || fail "cannot replace directory $p: it holds files lab did not create"
    elif [ -e "$R$p" ] || [ -L "$R$p" ]; then
      rm -f -- "$R$p"
    fi
  done
}

# Unpack the stream (BYTES of file content): new directories, and new
# files and symlinks under DIR/.lab-stage/. A full disk is reported as such:
# where, how much the change needs, how much is free there.
extract() { # BYTES
  cd "${R:-/}" || fail "extract"
  # (tar's messages through a pipe: a file would need the space that is
  # missing)
  if err=$(tar -x -p -m --no-same-owner -f - 2>&1 >/dev/null); then return 0; fi
  # (a short write is a full disk too: tar says "Wrote only N of M bytes")
  case $err in
    *"No space left on device"* | *"Disk quota exceeded"* | *": Wrote only "*)
      l=$(printf '%s\n' "$err" | grep -m 1 -e 'No space left' -e 'quota exceeded' -e ': Wrote only ')
      l=${l#tar: }
      l=/${l%%: *}
      case $l in */.lab-stage/*) l=${l%%/.lab-stage/*}/${l##*/.lab-stage/} ;; esac
      case $l in /var/lib/lab/*) l=/var/lib/lab ;; esac
      # (free space counted without the stage directories this run filled)
      ( MODE=undo CHECK=0; . "$G/cleanup.sh" ) </dev/null >/dev/null 2>&1 || :
      fail "nospace ${1:-0} $(free_bytes "$R${l%/*}") $l" ;;
  esac
  fail "extract: $(printf '%s' "$err" | head -n 3)"
}

# Owners ([[owners]] in lab.toml), given before anything is placed. A user
# or group the machine does not have fails the sync (the machine is put
# back). OWNER[:GROUP] or :GROUP.
own_staged() { # SPEC DIR NAME...: staged files of DIR
  o=$1 d=$2
  shift 2
  safe "$d/"
  cd "$R$d/.lab-stage" || fail "owner in $d"
  chown -h -- "$o" "$@" </dev/null 2>/dev/null || fail "owner $o: no such user or group on the machine (for files in $d)"
  cd /
}

own_dirs() { # SPEC PATH...: directories the stream created or re-moded
  o=$1
  shift
  safe "$@"
  for p do
    if [ -L "$R$p" ] || [ ! -d "$R$p" ]; then fail "unsafe $p is not a directory"; fi
    chown -- "$o" "$R$p" </dev/null 2>/dev/null || fail "owner $o: no such user or group on the machine (for $p)"
  done
}

# Move DIR/.lab-stage/NAME over DIR/NAME for each name (rename(2): atomic).
# DIR goes on $G/placed first: an undo restores only directories there.
place() {
  d=$1
  shift
  safe "$d/"
  printf '%s\n' "$d" >>"$G/placed"
  cd "$R$d/.lab-stage" || fail "place in $d"
  mv -f -- "$@" .. </dev/null || fail "place in $d"
  cd /
}

# Remove the emptied DIR/.lab-stage directories (one program for all).
unstage() {
  for d do
    shift
    safe "$d/"
    set -- "$@" "$R$d/.lab-stage"
  done
  rmdir -- "$@" 2>/dev/null || :
}

# The stream is whole when its last member, the manifest, is there and
# has the digest the plan names: checked before anything is placed.
complete() { # DIGEST
  [ -f "$S/inflight/manifest" ] || fail "incomplete stream: no manifest"
  set -- "$1" "$(sha256sum <"$S/inflight/manifest")"
  [ "${2%% *}" = "$1" ] || fail "incomplete stream: manifest digest mismatch"
}

# The new generation is the current one plus one (`begin` checked that the
# machine is where the plan expects it).
# (`complete` checked the manifest before anything was placed)
commit() { # DIGEST KEEP
  set -- "$(($(current_gen) + 1))" "$1" "$2"
  printf '%s\n' "$2" >"$S/inflight/digest"
  # what every managed path looks like now, for the next check (before
  # the commit point: a committed generation always has it)
  record "$S/inflight"
  # (inflight/backed-up goes along: until `current` names it, a generation
  # in gen/ is undone by recover() anyway)
  mv -- "$S/inflight" "$S/gen/$1"
  set_current "$1" "$2"
  G="$S/gen/$1"
  n=0
  for d in "$S"/gen/*; do
    case ${d##*/} in '' | *[!0-9]*) ;; *) n=$((n + 1)) ;; esac
  done
  out "applied $1 $2"
  # the last KEEP generations stay (they are numbered without gaps up to
  # this one: older ones go first), the rest go with one program
  if [ "$n" -gt "$3" ]; then
    k=$(($1 - $3))
    for d in "$S"/gen/*; do
      g=${d##*/}
      case $g in '' | *[!0-9]*) continue ;; esac
      [ "$g" -gt "$k" ] || set -- "$@" "$d"
    done
    shift 3
    [ $# -eq 0 ] || rm -rf -- "$@"
  fi
}

# --- undo helpers: run with G set to the generation being undone ---
# (each is run twice: with CHECK=1 it only checks its paths)

# Non-directories of this generation that the undo turns back into
# directories before it writes below them.
u_lab() {
  for p do LABOWN="$LABOWN$p
"; done
}

# Remove the stage directories of an interrupted apply.
u_unstage() {
  for d do
    shift
    # (none can be below a file: the apply had not got there)
    if [ -e "$R$d/.lab-stage" ] || [ -L "$R$d/.lab-stage" ]; then
      safe "$d/"
      set -- "$@" "$R$d/.lab-stage"
    fi
  done
  [ "$CHECK" = 0 ] && [ $# -gt 0 ] || return 0
  rm -rf -- "$@" || { out "fail undo: cannot remove $*"; exit 1; }
}

# u_files w|r DIR NAME...: put back each DIR/NAME from $G/prev (or remove
# it when nothing was there). `w`: the generation wrote them (undone only
# when DIR was placed, in generations that track it); `r`: it removed
# them (undone only when removals began); then originals lab had restored
# become lab's originals again.
u_files() {
  k=$1
  d=$2
  shift 2
  if [ -f "$G/track" ]; then
    if [ "$k" = w ]; then
      if [ -z "${PLACED+x}" ]; then
        PLACED="
"
        if [ -f "$G/placed" ]; then PLACED="$PLACED$(cat "$G/placed")
"; fi
      fi
      case $PLACED in *"
$d
"*) ;; *) return 0 ;; esac
    elif [ ! -f "$G/removed" ]; then
      return 0
    fi
  fi
  safe "$d/"
  [ "$CHECK" = 0 ] || return 0
  u_gone "$d" "$@"
  if [ "$k" = r ]; then u_origs "$d" "$@"; fi
  u_back "$d" "$@"
}

# DIR NAME...: remove, with one program, what the generation wrote where
# nothing was before.
u_gone() {
  d=$1
  shift
  for f do
    shift
    if [ -L "$G/prev$d/$f" ] || { [ -e "$G/prev$d/$f" ] && [ ! -d "$G/prev$d/$f" ]; }; then
      :
    elif [ -L "$R$d/$f" ] || { [ -e "$R$d/$f" ] && [ ! -d "$R$d/$f" ]; }; then
      set -- "$@" "$R$d/$f"
    fi
  done
  [ $# -gt 0 ] || return 0
  rm -f -- "$@" </dev/null || { out "fail undo: cannot remove files in ${d:-/}"; exit 1; }
}

# DIR NAME...: originals that the generation had restored are lab's
# originals again.
u_origs() {
  d=$1
  shift
  for f do
    if [ -e "$G/origs$d/$f" ] || [ -L "$G/origs$d/$f" ]; then
      mkdir -p -- "$S/orig$d" && mv -f -- "$G/origs$d/$f" "$S/orig$d/$f" ||
        { out "fail undo: cannot keep the original of $d/$f"; exit 1; }
    fi
  done
}

# DIR NAME...: put back what $G/prev holds, through DIR/.lab-stage, a few
# programs for the whole directory. A directory now where a file was (the
# generation's own directories are gone by now, so it holds files lab did
# not create) stays, and the file is not put back.
u_back() {
  d=$1
  shift
  for f do
    shift
    if [ -L "$G/prev$d/$f" ] || { [ -e "$G/prev$d/$f" ] && [ ! -d "$G/prev$d/$f" ]; }; then
      if [ -d "$R$d/$f" ] && [ ! -L "$R$d/$f" ]; then
        out "kept $d/$f"
      else
        set -- "$@" "$G/prev$d/$f"
      fi
    fi
  done
  [ $# -gt 0 ] || return 0
  { mkdir -p -- "$R$d/.lab-stage" &&
    cp -a -- "$@" "$R$d/.lab-stage/" </dev/null &&
    cd "$R$d/.lab-stage" &&
    for f do shift; set -- "$@" "${f##*/}"; done &&
    mv -f -- "$@" .. </dev/null &&
    cd / &&
    rmdir -- "$R$d/.lab-stage"; } || { out "fail undo: cannot restore files in ${d:-/}"; exit 1; }
}

# Restore each path from $G/prev, or remove it when nothing was there.
# (Directories in prev only hold backed-up children.) Undo programs of
# older executors use it.
u_path() {
  safe "$@"
  [ "$CHECK" = 0 ] || return 0
  for p do
    if [ -L "$G/prev$p" ] || { [ -e "$G/prev$p" ] && [ ! -d "$G/prev$p" ]; }; then
      put_copy "$G/prev$p" "$p" || { out "fail undo: cannot restore $p"; exit 1; }
    elif [ -L "$R$p" ] || { [ -e "$R$p" ] && [ ! -d "$R$p" ]; }; then
      rm -f -- "$R$p" || { out "fail undo: cannot remove $p"; exit 1; }
    fi
  done
}

u_mkdir() { # MODE PATH...
  m=$1
  shift
  safe "$@"
  [ "$CHECK" = 0 ] || return 0
  for p do
    if [ -L "$R$p" ] || { [ -e "$R$p" ] && [ ! -d "$R$p" ]; }; then rm -f -- "$R$p"; fi
    mkdir -p -- "$R$p" && chmod "$m" -- "$R$p" || { out "fail undo: cannot make directory $p"; exit 1; }
  done
}

# Undo: the owner a re-owned directory had.
u_own() { # SPEC PATH...
  o=$1
  shift
  safe "$@"
  [ "$CHECK" = 0 ] || return 0
  for p do
    if [ -d "$R$p" ] && [ ! -L "$R$p" ]; then chown -- "$o" "$R$p" 2>/dev/null || :; fi
  done
}

# Remove directories the generation created; one that existed before lab
# took it over stays (with its own mode and owner again).
u_rmdir() {
  safe "$@"
  [ "$CHECK" = 0 ] || return 0
  for p do
    if [ -d "$R$p" ] && [ ! -L "$R$p" ]; then
      if [ -e "$S/orig$p/.lab-preexisting" ]; then
        give_back "$p"
      else
        rmdir -- "$R$p" 2>/dev/null || :
      fi
    fi
  done
}

# --- rollback ---

# A rollback was planned knowing the current generation's pending unit
# actions (EXPECT_PENDING, see `expect`): it carries them into its own
# journal. Any others (an image update journaled one since) would be lost
# with the generation: stale, and lab plans again.
rollback() { # TARGET_GEN [EXPECT_PENDING]
  lock
  recover
  expect "${2:-}" pending
  cur=$(current_gen)
  # (the recovery of an interrupted rollback may have got there already)
  if [ "$1" -eq "$cur" ]; then out "rolledback $1 $(current_digest)"; return 0; fi
  if [ "$1" -gt "$cur" ]; then out "fail generation $1 is not older than the current $cur"; exit 10; fi
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
    undo_gen || { out "fail undo of generation $g did not finish; the next sync or rollback retries it"; exit 10; }
    p=$((g - 1))
    if [ "$p" -gt 0 ]; then set_current "$p" "$(cat "$S/gen/$p/digest")"; else rm -f -- "$S/current"; fi
    rm -rf -- "$G"
    rm -f -- "$S/undoing"
    g=$p
  done
  out "rolledback $1 $(current_digest)"
  # the restored files are new files: their facts, for the next check
  [ "$1" -eq 0 ] || record "$S/gen/$1"
}

# Pending unit actions of the current generation (BASE EXPECT SETTLE_MS):
# run them, as a sync does after its commit.
resume() {
  lock
  recover
  cur=$(current_digest)
  if [ "$cur" != "$1" ]; then out "stale $(current_gen) $cur"; exit 3; fi
  expect "$2"
  G="$S/gen/$(current_gen)"
  out "resumed $(current_gen) $cur"
  run_actions
  settle "$3"
  finish
}

# After a rollback: its unit actions become the journal of the generation
# it went back to (none is kept for generation 0, which has no directory).
journal() {
  G="$S/gen/$(current_gen)"
  mkdir -p -- "$G"
  : >"$G/done"
}

# Run the unit actions in $G/actions that $G/done does not list, each
# marked done as soon as it ran: an executor killed on the way leaves the
# rest pending for the next sync (see `pending` in check.sh).
run_actions() {
  [ -f "$G/actions" ] || return 0
  dn=" "
  if [ -f "$G/done" ]; then
    while read -r x; do dn="$dn$x "; done <"$G/done"
  fi
  i=0
  while read -r a u <&3; do
    i=$((i + 1))
    case $dn in *" $i "*) continue ;; esac
    if [ "$a" = daemon-reload ]; then daemon_reload "$u"; else act "$a" "$u"; fi
    echo "$i" >>"$G/done"
  done 3<"$G/actions"
}

# --- systemd ---

has_systemd() { [ "${LAB_SYSTEMD:-1}" = 1 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

# A unit named USER/UNIT is a unit of USER's systemd (a rootless pod of the
# pod user): scope NAME sets SC_USER (empty: the system manager), SC_UNIT,
# SC_UID and SC_ERR (why that user's manager cannot be reached; empty when
# it can).
scope() {
  SC_ERR=""
  case $1 in
    */*)
      SC_USER=${1%%/*} SC_UNIT=${1#*/}
      if ! SC_UID=$(id -u -- "$SC_USER" 2>/dev/null); then
        SC_ERR="the pod user $SC_USER does not exist on this machine (hint: create it, or set pod_user in lab.toml)"
      elif [ ! -e "/var/lib/systemd/linger/$SC_USER" ]; then
        SC_ERR="the pod user $SC_USER does not linger, so its systemd does not run without a login (hint: loginctl enable-linger $SC_USER)"
      elif ! systemctl is-active --quiet "user@$SC_UID.service" 2>/dev/null &&
        ! systemctl start "user@$SC_UID.service" </dev/null 2>/dev/null; then
        SC_ERR="the systemd of the pod user $SC_USER (user@$SC_UID.service) does not run"
      fi ;;
    *) SC_USER="" SC_UNIT=$1 ;;
  esac
}

# sc ARGS: systemctl of the current scope (see `scope`).
sc() {
  if [ -n "$SC_USER" ]; then systemctl --user -M "$SC_USER@" "$@"; else systemctl "$@"; fi
}

# pmx ARGS: podman of the current scope (see `scope`), as that user.
# (never with the executor's lock on fd 9: rootless podman may start its
# pause process, a daemon that would hold the lock for ever)
pmx() {
  if [ -n "$SC_USER" ]; then
    (cd / && exec runuser -u "$SC_USER" -- env -i PATH=/usr/local/bin:/usr/bin:/bin \
      HOME="$(getent passwd "$SC_USER" | cut -d: -f6)" XDG_RUNTIME_DIR="/run/user/$SC_UID" podman "$@" 9>&-)
  else
    podman "$@" 9>&-
  fi
}

# podman_leftovers UNIT: after a Quadlet unit whose file is gone stopped,
# remove the pods and containers it made (labelled with it by Quadlet):
# the `podman kube down` of its ExecStopPost needed the YAML that this
# generation removed.
podman_leftovers() {
  command -v podman >/dev/null 2>&1 || return 0
  f="label=PODMAN_SYSTEMD_UNIT=$1"
  [ -n "$(pmx ps -a -q --filter "$f" 2>/dev/null </dev/null)" ] || return 0
  # (twice: a pod whose containers are still being cleaned up after the
  # stop refuses the first removal)
  for _ in 1 2; do
    for p in $(pmx ps -a --pod --filter "$f" --format '{{.Pod}}' 2>/dev/null </dev/null | sort -u); do
      pmx pod rm -f -- "$p" >/dev/null 2>&1 </dev/null || :
    done
    for c in $(pmx ps -a -q --filter "$f" 2>/dev/null </dev/null); do
      pmx rm -f -- "$c" >/dev/null 2>&1 </dev/null || :
    done
  done
  if [ -n "$(pmx ps -a -q --filter "$f" 2>/dev/null </dev/null)" ]; then
    out "note: containers of $1 are left: $(pmx ps -a --filter "$f" --format '{{.Names}}' 2>&1 </dev/null | tr '\n' ' ')"
  fi
}

# unit_state NAME: one `systemctl show` for what lab needs to know of a
# unit (each systemctl run is a fork, an exec and a D-Bus connection).
unit_state() {
  U_ACTIVE=unknown U_SUB=unknown U_TYPE=- U_RESULT=-
  scope "$1"
  [ -z "$SC_ERR" ] || return 0
  props=$(sc show -p ActiveState -p SubState -p Type -p Result -- "$SC_UNIT" 2>/dev/null) || :
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

# unit_journal NAME LINES: the tail of a unit's journal (a user unit's:
# its own lines, its manager's about it, and the lines of its processes
# that exited before journald read their cgroup, which carry no unit at
# all: those of the user with the unit's syslog identifier, which Quadlet
# sets to the unit's name).
unit_journal() {
  scope "$1"
  if [ -n "$SC_ERR" ]; then
    echo "lab: $SC_ERR"
  elif [ -n "$SC_USER" ]; then
    journalctl -n "$2" --no-pager -o short-iso _UID="$SC_UID" _SYSTEMD_USER_UNIT="$SC_UNIT" + \
      _UID="$SC_UID" USER_UNIT="$SC_UNIT" + _UID="$SC_UID" SYSLOG_IDENTIFIER="${SC_UNIT%.service}" 2>&1 </dev/null
  else
    journalctl -u "$SC_UNIT" -n "$2" --no-pager -o short-iso 2>&1 </dev/null
  fi
}

unit_report() { # ACTION UNIT RESULT, after unit_state of UNIT
  res=$3
  if [ "$res" = failed ] && [ "$U_RESULT" = start-limit-hit ]; then
    res=start-limit
  fi
  out "unit $2 $1 $res $U_ACTIVE $U_SUB"
  if [ "$res" != ok ] && [ "$res" != skipped ]; then
    out "journal $2"
    j=$(unit_journal "$2" "${LAB_JOURNAL_LINES:-20}" | sed 's/^/| /') || :
    [ -z "$j" ] || out "$j"
    out "endjournal $2"
  fi
}

# daemon_reload [USER/]: the system manager's (`-` or empty), or USER's.
daemon_reload() {
  has_systemd || { out "daemon-reload skipped"; return 0; }
  case ${1:--} in
    -)
      if systemctl daemon-reload </dev/null; then out "daemon-reload ok"; else out "daemon-reload failed"; fi ;;
    *)
      # (a failure shows again in the results of that user's units, with
      # the reason)
      scope "$1"
      if [ -n "$SC_ERR" ]; then
        out "note: daemon-reload of the systemd of $SC_USER skipped: $SC_ERR"
      elif ! sc daemon-reload </dev/null; then
        out "note: daemon-reload of the systemd of $SC_USER failed"
      fi ;;
  esac
}

# sc_start start|restart UNIT, after unit_state of UNIT: its (re)start,
# past its start limit: fast deploys and watch cycles start a unit more
# often than systemd allows by default (5 times in 10 s). reset-failed
# resets the limit's counter (and a failed state); it runs first for a
# failed unit, else only when the start hit the limit, which is then
# tried once more (each systemctl costs the machine a few milliseconds).
sc_start() {
  if [ "$U_ACTIVE" = failed ]; then
    sc reset-failed -- "$2" 2>/dev/null || :
    sc "$1" -- "$2" </dev/null
    return
  fi
  e=$(sc "$1" -- "$2" 2>&1 </dev/null >/dev/null) && return 0
  if [ "$(sc show -p Result --value -- "$2" 2>/dev/null </dev/null)" = start-limit-hit ]; then
    sc reset-failed -- "$2" 2>/dev/null || :
    sc "$1" -- "$2" </dev/null
    return
  fi
  [ -z "$e" ] || printf '%s\n' "$e" >&2
  return 1
}

# act ACTION UNIT: restart | start | stop | reload | reload-or-restart.
# Results are reported by `settle`, after all actions.
DONE=""
act() {
  a=$1
  u=$2
  if ! has_systemd; then out "unit $u $a skipped no-systemd -"; return 0; fi
  unit_state "$u"
  if [ -n "$SC_ERR" ]; then
    DONE="$DONE$a $u failed
"
    return 0
  fi
  v=$SC_UNIT
  active=0
  case $U_ACTIVE in active | reloading) active=1 ;; esac
  case $a in
    stop)
      if [ $active = 1 ]; then sc stop -- "$v" </dev/null && r=ok || r=failed; else r=skipped; fi
      # (its file is gone: a unit that failed on its way down would stay
      # listed as failed for good; a Quadlet pod's `kube down` often does)
      sc reset-failed -- "$v" 2>/dev/null || :
      podman_leftovers "$v" ;;
    start)
      if [ $active = 1 ]; then a=restart; fi
      sc_start "$a" "$v" && r=ok || r=failed ;;
    restart)
      if [ $active = 1 ] || [ "$U_ACTIVE" = failed ]; then
        sc_start restart "$v" && r=ok || r=failed
      else
        r=skipped
      fi ;;
    reload | reload-or-restart)
      if [ $active = 1 ]; then sc "$a" -- "$v" </dev/null && r=ok || r=failed; else r=skipped; fi ;;
    *) r=failed ;;
  esac
  DONE="$DONE$a $u $r
"
  if [ "$u" = nftables.service ] && [ "$r" = ok ]; then netavark_reload; fi
}

# nftables.service (re)loads /etc/nftables.conf, which on Debian starts
# with `flush ruleset`: that also drops the rules netavark made for the
# published ports of rootful containers (rootless ones forward in user
# space). `podman network reload` makes them again, as podman advises
# after a firewall reload.
netavark_reload() {
  command -v podman >/dev/null 2>&1 || return 0
  # (without the executor's lock on fd 9: the reload may start
  # aardvark-dns, a daemon that would hold the lock for ever)
  [ -n "$(podman ps -q 2>/dev/null </dev/null 9>&-)" ] || return 0
  if ! e=$(podman network reload --all 2>&1 </dev/null 9>&-); then
    out "note: podman network reload --all after the firewall reload failed: $(printf '%s' "$e" | tail -n 1)"
  fi
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
