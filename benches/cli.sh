#!/usr/bin/env bash
# The command-line targets on one large file, with the release binary, alternating in one run:
#   put throughput (durable, and --no-fsync), sequential `get` to /dev/null, peak RSS of each.
# Usage: benches/cli.sh [SIZE_MIB] [RUNS]      (defaults: 1024 MiB, 3 runs; medians printed)
# The shares of a file just written are in the page cache, so `get` measures the CPU path.
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
  printf '  %-16s %6.2f s  %4d MiB RSS\n' "$name" "$seconds" $((kib / 1024)) >&2
}
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for run in $(seq "$runs"); do
  echo "run $run"
  rm -rf "$work/data"; sync
  measure "put" "$bin" --data "$work/data" put "$work/input" > "$work/cap"
  rm -rf "$work/fast"; sync
  measure "put --no-fsync" "$bin" --data "$work/fast" put --no-fsync "$work/input" > /dev/null
  measure "get" "$bin" --data "$work/data" get "$(tail -1 "$work/cap")" > /dev/null
done
echo "file: ${size_mib} MiB of random bytes, k=3 n=10, 128 KiB segments, embedded grid"
for name in "put" "put --no-fsync" "get"; do
  printf '%-16s median %5s MB/s   peak RSS median %3s MiB\n' "$name" \
    "$(echo "${rate[$name]}" | median)" "$(echo "${rss[$name]}" | median)"
done
