#!/bin/sh
# Make rules for machine $1 with outputs under $2/$1: one rule per source
# (m4 for templates, cp for files and `!` links, ln for symlinks), one per
# link-list line, mkdir for directories, and `local-$1` for all of them,
# which ends with the style's final mode fix-up (`find ... -exec chmod g+r,o+r`).
m=$1; out=$2
layers=$(cat machines/"$m"/usr/local/opt/initd/layers/*.txt 2>/dev/null |
  awk '$1 == "+" && NF >= 2 && !seen[$2]++ { print $2 }')
roots=layers/_
for l in $layers; do
  [ "$l" = _ ] && continue
  if [ -d "layers/$l" ]; then roots="$roots layers/$l"; else echo "\$(warning $m: layer $l does not exist)"; fi
done
roots="$roots machines/$m"
{
  find $roots \( -type f -o -type l \) -printf '%y %p\n' 2>/dev/null
  for r in $roots; do
    for f in "$r"/usr/local/opt/initd/links/*.txt; do
      [ -f "$f" ] && grep -v '^[[:space:]]*#' "$f" | awk 'NF >= 2 { p = $1; sub(/^[^ \t]+[ \t]+/, ""); print "L " p " " $0 }'
    done
  done
} | awk -v m="$m" -v out="$out/$m" '
  function dir_of(p) { sub(/\/[^\/]*$/, "", p); return p }
  function need_dir(d) { if (!(d in dirs)) { dirs[d] = 1; print d ":\n\tmkdir -p -- $@" } }
  $1 == "L" {
    t = out $2; target = substr($0, length($2) + 4)
    d = dir_of(t); need_dir(d)
    print t ": | " d "\n\tln -sfn -- \x27" target "\x27 $@"
    all = all " " t; next
  }
  {
    type = $1; src = substr($0, 3)
    n = split(src, parts, "/")
    rel = (parts[1] == "machines" || parts[1] == "layers") ? substr(src, length(parts[1]) + length(parts[2]) + 3) : src
    name = parts[n]; dir = dir_of(rel); if (dir == rel) dir = ""
    oname = name; gsub(/\.m4\./, ".", oname); sub(/^!/, "", oname)
    stem = name; sub(/\.[^.]*$/, "", stem)
    t = out "/" (dir == "" ? "" : dir "/") oname
    d = dir_of(t); need_dir(d)
    if (stem != name && stem ~ /\.m4$/) {
      print t ": " src " $(PRELUDES) $(FACTS_" m ") | " d "\n\t$(M4) $(DEFS_" m ") -- $(PRELUDES) $< > $@"
    } else if (type == "l" && index(src, "!") == 0) {
      print t ": " src " | " d "\n\tln -sfn -- \"$$(readlink -- $<)\" $@"
    } else if (oname == ".pin") {
      print t ": " src " | " d "\n\tcp -- $< $@ && chmod +t -- $(@D)"
    } else {
      print t ": " src " | " d "\n\tcp -- $< $@"
    }
    all = all " " t
  }
  END {
    # the style'"'"'s final mode fix-up, once the tree is assembled
    print "local-" m ":" all
    print "\t@find " out "/usr/local/lib/systemd " out "/usr/local/opt -type f -exec chmod g+r,o+r {} + 2>/dev/null || :"
  }'
