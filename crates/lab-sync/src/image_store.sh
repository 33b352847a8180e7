# lab's image store on a node (see crates/lab-sync/src/image_store.rs).
# $I/store/SHA256.MODE.UID.GID  a file of an image, by content, mode and owner
# $I/trees/ID                   the store keys an image tree uses, sorted
# $I/roots/ID/                  the tree assembled: hard links into store/
# $I/names/USER/HEXNAME         `TREE TIME`: the trees a name was given, oldest first
# $I/incoming/                  what a ship receives before it is checked
# $I/bases/NAME                 -> roots/ID: the tree container machines based
#                               on the project's image NAME mount at start
# $I/used/MACHINE               the tree (ID) container machine MACHINE's
#                               mounted root is made from (never removed here)
# Set by the caller: I, T (tree), B (base tree or empty), KSHA (sha256 of
# trees/T), KEEP (trees kept per name), M (ship | import | tag), D (1: the
# new version becomes a layer over podman's image of B: the paths it
# places and removes stay as incoming/T.place0 and incoming/T.remove0), NF
# (the name's history file below names/), BL (a base name: bases/BL is
# pointed at the tree; may be empty).
set -eu
umask 022
mkdir -p "$I/store" "$I/trees" "$I/roots" "$I/incoming" "$I/names"
exec 8>"$I/lock"
flock 8
in="$I/incoming/$T"
rm -rf "$I/incoming/"* "$I/roots/.new."*
if [ "$M" != tag ]; then
if [ "$M" = ship ]; then
  mkdir "$in"
  # a stream cut short fails here: nothing of it is used
  tar -x -z -p --same-owner --numeric-owner -C "$in" -f - || {
    echo "lab-images: the stream of tree $T ended early" >&2; exit 3; }
  if [ -d "$in/blobs" ]; then
    # every blob checked against its name before it joins the store
    bad=$(cd "$in/blobs" && ls | sed -n 's/^\([0-9a-f]\{64\}\)\(\.[0-7]\{4\}\.[0-9]*\.[0-9]*\)$/\1  \1\2/p' |
      LC_ALL=C sha256sum -c --quiet 2>/dev/null | sed -n 's/^\(.*\): FAILED.*$/\1/p') || :
    if [ -n "$bad" ]; then
      echo "lab-images: blobs arrived corrupt: $bad" >&2; exit 3
    fi
    find "$in/blobs" -maxdepth 1 -type f -name '[0-9a-f]*.[0-7][0-7][0-7][0-7].*.*' \
      -exec mv -f -t "$I/store" -- {} +
  fi
  if [ -f "$in/keys" ]; then :; else
    [ -n "$B" ] && [ -f "$I/trees/$B" ] && [ -d "$I/roots/$B" ] || {
      echo "lab-images: base tree $B is gone" >&2; exit 5; }
    grep -vxF -f "$in/keys.del" "$I/trees/$B" | cat - "$in/keys.add" | LC_ALL=C sort -u >"$in/keys"
  fi
  got=$(sha256sum <"$in/keys" | cut -d' ' -f1)
  [ "$got" = "$KSHA" ] || { echo "lab-images: the file list of tree $T did not come out as sent" >&2; exit 5; }
else
  mkdir "$in"
  cp "$I/trees/$T" "$in/keys"
fi
# every file the tree uses, checked by hash right before use: a corrupt or
# missing one is named (`bad KEY`), dropped, and never served
bad=$(cd "$I/store" && sed 's/^\([0-9a-f]\{64\}\)\(.*\)$/\1  \1\2/' "$in/keys" |
  LC_ALL=C sha256sum -c --quiet 2>/dev/null | sed -n 's/^\(.*\): FAILED.*$/\1/p') || :
if [ -n "$bad" ]; then
  for k in $bad; do echo "bad $k"; rm -f "$I/store/$k"; done
  # (an assembled root may share a corrupt inode: they are only a cache;
  # but not one a container machine's root is mounted from: used/*)
  for r in "$I/roots/"*; do
    [ -d "$r" ] || continue
    if grep -qxF "${r##*/}" "$I"/used/* 2>/dev/null; then continue; fi
    rm -rf "$r"
  done
  rm -f "$I/trees/$T"
  exit 4
fi
if [ "$M" = ship ]; then
  new="$I/roots/.new.$T"
  if [ -n "$B" ]; then
    cp -a -l "$I/roots/$B" "$new"
    (cd "$new" && xargs -0 -r rm -rf -- <"$in/remove")
  else
    mkdir -m 0755 "$new"
  fi
  tar -x -p --same-owner --numeric-owner -C "$I" -f "$in/place.tar"
  mv "$in/keys" "$I/trees/$T"
  rm -rf "$I/roots/$T"
  mv "$new" "$I/roots/$T"
  if [ "${D:-0}" = 1 ] && [ -f "$in/place0" ] && [ -f "$in/remove" ]; then
    mv "$in/place0" "$I/incoming/$T.place0"
    mv "$in/remove" "$I/incoming/$T.remove0"
  fi
fi
rm -rf "$in"
fi
if [ -n "${BL:-}" ]; then
  [ -d "$I/roots/$T" ] || { echo "lab-images: tree $T is not assembled here" >&2; exit 5; }
  mkdir -p "$I/bases"
  ln -sfn "../roots/$T" "$I/bases/.$BL.new"
  mv -T -f "$I/bases/.$BL.new" "$I/bases/$BL"
fi
# the name's history (`TREE TIME` lines, appended: a rollback picks the
# tree a name had when a generation was made); the last KEEP distinct
# trees of each name stay, with the store's files they use; the rest go
if [ -n "${NF:-}" ]; then
  h="$I/names/$NF"
  mkdir -p "$(dirname "$h")"
  { cat "$h" 2>/dev/null || :; echo "$T $(date +%s.%N)"; } | tail -n 1000 >"$h.new"
  mv "$h.new" "$h"
  {
    for f in "$I"/names/*/*; do
      [ -f "$f" ] || continue
      tac "$f" | cut -d' ' -f1 | cat -n | LC_ALL=C sort -s -k2,2 -u | sort -n | head -n "$KEEP" | cut -f2
    done
    # the trees bases point at, and those mounted container roots use
    for l in "$I"/bases/*; do if [ -L "$l" ]; then basename "$(readlink "$l")"; fi; done
    cat "$I"/used/* 2>/dev/null || :
  } | LC_ALL=C sort -u >"$I/keep.tmp"
  for t in $(ls "$I/trees"); do
    grep -qxF "$t" "$I/keep.tmp" || { rm -f "$I/trees/$t"; rm -rf "$I/roots/$t"; }
  done
  cat "$I"/trees/* 2>/dev/null | LC_ALL=C sort -u >"$I/keep.tmp"
  ls "$I/store" | LC_ALL=C sort | LC_ALL=C comm -23 - "$I/keep.tmp" | (cd "$I/store" && xargs -r rm -f --)
  rm -f "$I/keep.tmp"
fi
