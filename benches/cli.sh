#!/usr/bin/env bash
# The command-line targets on one large file, with the release binary:
#   put throughput, sequential `get` to /dev/null, and the peak RSS of both (/usr/bin/time).
# Usage: benches/cli.sh [SIZE_MIB] [RUNS]      (defaults: 1024 MiB, 3 runs; medians printed)
# The shares of a file just written are in the page cache, so `get` measures the CPU path;
# put includes fsyncing every share.
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

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
put_rate=(); get_rate=(); put_rss=(); get_rss=()
for run in $(seq "$runs"); do
  rm -rf "$work/data"
  /usr/bin/time -f "%e %M" -o "$work/put.time" "$bin" --data "$work/data" put "$work/input" > "$work/cap"
  cap=$(tail -1 "$work/cap")
  /usr/bin/time -f "%e %M" -o "$work/get.time" "$bin" --data "$work/data" get "$cap" > /dev/null
  read -r put_s put_kb < "$work/put.time"
  read -r get_s get_kb < "$work/get.time"
  put_rate+=("$(echo "$bytes / $put_s / 1000000" | bc)"); put_rss+=("$((put_kb / 1024))")
  get_rate+=("$(echo "$bytes / $get_s / 1000000" | bc)"); get_rss+=("$((get_kb / 1024))")
  echo "run $run: put ${put_s}s ($((put_kb / 1024)) MiB RSS), get ${get_s}s ($((get_kb / 1024)) MiB RSS)"
done
echo "file: ${size_mib} MiB, k=3 n=10, embedded grid in $work"
echo "put:  median $(printf '%s\n' "${put_rate[@]}" | median) MB/s, peak RSS median $(printf '%s\n' "${put_rss[@]}" | median) MiB"
echo "get:  median $(printf '%s\n' "${get_rate[@]}" | median) MB/s, peak RSS median $(printf '%s\n' "${get_rss[@]}" | median) MiB"
