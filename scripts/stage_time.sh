#!/bin/sh
# usage: stage_time.sh LOG NAME COMMAND [ARG ...]
# Runs COMMAND and appends one tab-separated line to LOG: NAME, start and end (UTC, ISO
# 8601), wall seconds and exit status; exits with COMMAND's status. `make models` times
# each of its steps with it, so a rebuild reports its own stage times (build/logs/).
set -u
log=$1; name=$2; shift 2
mkdir -p "$(dirname "$log")"
start=$(date -u +%s)
"$@"
rc=$?
end=$(date -u +%s)
printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$(date -u -d "@$start" +%Y-%m-%dT%H:%M:%SZ)" \
    "$(date -u -d "@$end" +%Y-%m-%dT%H:%M:%SZ)" "$((end - start))" "$rc" >> "$log"
exit "$rc"
