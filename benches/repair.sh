#!/usr/bin/env bash
# Repair beside put on one large file, with the release binary, alternating in one run:
# put (durable), verify, and repair of the file with 4 of its 10 shares lost; throughput as
# MB/s of file, bytes read and written by the repair, peak RSS of each.
# Usage: benches/repair.sh [SIZE_MIB] [RUNS]      (defaults: 1024 MiB, 3 runs; medians printed)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
runs=${2:-3}
cargo build --release --quiet
bin=$PWD/target/release/segvault
work=$(mktemp -d "${BENCH_DIR:-/tmp}/segvault-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
head -c "${size_mib}M" /dev/urandom > "$work/input"
bytes=$((size_mib * 1024 * 1024))

declare -A rate rss
measure() { # name, command...
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$work/time" "$@"
  read -r seconds kib < "$work/time"
  rate[$name]+="$(echo "$bytes / $seconds / 1000000" | bc) "
  rss[$name]+="$((kib / 1024)) "
  printf '  %-18s %6.2f s  %4d MiB RSS\n' "$name" "$seconds" $((kib / 1024)) >&2
}
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for run in $(seq "$runs"); do
  echo "run $run"
  rm -rf "$work/data"; sync
  measure "put" "$bin" --data "$work/data" put "$work/input" > "$work/cap"
  cap=$(tail -1 "$work/cap")
  measure "verify" "$bin" --data "$work/data" verify - <<< "$cap" > /dev/null
  find "$work/data" -path '*/shares/*' -type f | sort | head -4 | xargs rm
  sync
  measure "repair (4 lost)" "$bin" --data "$work/data" repair --json - <<< "$cap" > "$work/report"
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("  repair:", r["outcome"], "read", r["bytes_read"] >> 20, "MiB, wrote", r["bytes_written"] >> 20, "MiB")' "$work/report"
  "$bin" --data "$work/data" verify - <<< "$cap" > /dev/null || { echo "verify after repair failed" >&2; exit 1; }
done
echo "file: ${size_mib} MiB of random bytes, k=3 n=10, 128 KiB segments, embedded grid; 4 shares removed before repair"
for name in "put" "verify" "repair (4 lost)"; do
  printf '%-18s median %5s MB/s   peak RSS median %3s MiB\n' "$name" \
    "$(echo "${rate[$name]}" | median)" "$(echo "${rss[$name]}" | median)"
done
