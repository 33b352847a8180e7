#!/bin/sh
# The facts of machine $1 as shell-quoted m4 -D arguments on one line (read
# by compat.mk with $(file <), so not expanded by make): ENV_MACHINE, .facts/example*.env,
# .facts/$1.json (flattened with jq), .facts/$1.env; later wins in m4.
m=$1
env_lines() { grep -v '^[[:space:]]*#' "$1" | grep -v '^[[:space:]]*$' | sed "s/^\([^=]*\)='\(.*\)'\$/\1=\2/"; }
{
  echo "ENV_MACHINE=$m"
  for f in .facts/example*.env; do [ -f "$f" ] && env_lines "$f"; done
  [ -f ".facts/$m.json" ] && jq -r 'to_entries[] | "\(.key)=\(.value
      | if type == "array" then map(if . == null then "" elif type == "string" then . else tojson end) | join(",")
        elif type == "string" then . else tojson end)"' ".facts/$m.json"
  [ -f ".facts/$m.env" ] && env_lines ".facts/$m.env"
} | awk -v q="'" '{ gsub(q, q "\\" q q); printf "%s-D%s%s ", q, $0, q }'
