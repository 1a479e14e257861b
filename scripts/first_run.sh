#!/usr/bin/env bash
# What a newcomer waits for: a fresh clone of this repository, `make run`, then the README's first
# curl with a real photo. Prints the seconds at which each step ended and the first answer; the
# timestamped log goes to OUT (default reports/first-run.log). Ports 3100/3101/3105, so that a
# stack already running on the defaults is left alone. Usage: scripts/first_run.sh [OUT]
set -euo pipefail
repo=$(git rev-parse --show-toplevel)
out=$(realpath -m "${1:-$repo/reports/first-run.log}")
work=$(mktemp -d /tmp/imgclf-first-run-XXXX)
mkdir -p "$(dirname "$out")"
git clone -q "$repo" "$work/clone"
cd "$work/clone"
export START=$(date +%s.%N)
elapsed() { echo "$(date +%s.%N) - $START" | bc; }
export -f elapsed
setsid bash -c 'make run PORT=3100 S3_PORT=3105 STATIC_PORT=3101 2>&1 |
  while IFS= read -r line; do printf "%6.1f %s\n" "$(elapsed)" "$line"; done' >"$out" &
stack=$!
trap 'kill -- -$stack 2>/dev/null || true; rm -rf "$work"' EXIT
until curl -sf -o "$work/answer.json" -F file=@docs/examples/cat.jpg http://127.0.0.1:3100/predict; do
  sleep 0.5
  if (($(echo "$(elapsed) > 600" | bc))); then echo "no answer within 600 s; see $out" >&2; exit 1; fi
done
first=$(elapsed)
grep -E "Successfully installed|^ *[0-9.]+ wrote|registry: .* live|Listening at" "$out" | cut -c1-110
printf "first answer after %.1f s (load average %s)\n" "$first" "$(cut -d' ' -f1-3 /proc/loadavg)"
cut -c1-200 "$work/answer.json"; echo
