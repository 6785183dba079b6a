#!/usr/bin/env bash
# Two builds of segvault side by side on this machine, alternating run by run (these machines
# are noisy: only within-run comparisons mean anything; medians are quoted).
#
#   1. put of a 256 MiB file to the embedded grid (--no-fsync) and to ten storage nodes
#   2. get of it to /dev/null through the CLI (the library's read path, no HTTP)
#   3. full GET through the gateway, embedded grid and ten nodes
#   4. time to first byte of random 64 KiB ranges (benches/ttfb.py), both grids
#
# Usage: [FILE_MIB=256] [BENCH_DIR=/tmp] benches/compare.sh OLD_BINARY NEW_BINARY [RUNS]
# (default 5 runs; BENCH_DIR=/dev/shm takes the disk out of the comparison)
# e.g. git worktree add /tmp/old <commit> && (cd /tmp/old && cargo build --release)
#      benches/compare.sh /tmp/old/target/release/segvault target/release/segvault
set -euo pipefail
cd "$(dirname "$0")/.."
old=$(realpath "$1"); new=$(realpath "$2"); runs=${3:-5}
work=$(mktemp -d "${BENCH_DIR:-/tmp}/segvault-compare.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
  wait 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { echo "scale=2; $2 / $1" | bc; }
wait_for_line() { for _ in $(seq 200); do [ -s "$1" ] && return; sleep 0.05; done; echo "no URL in $1" >&2; exit 1; }
seconds() { local start end; start=$(date +%s.%N); "$@" > /dev/null; end=$(date +%s.%N); echo "$end - $start" | bc; }
row() { # label, unit, old values file, new values file
  local a b; a=$(median < "$3"); b=$(median < "$4")
  printf '| %s | %.3f %s | %.3f %s | %s |\n' "$1" "$a" "$2" "$b" "$2" "$(ratio "$a" "$b")"
}

head -c "${FILE_MIB:-256}M" /dev/urandom > "$work/file"
size=$(stat -c %s "$work/file")
mib=$((size >> 20))

declare -A servers
for which in old new; do
  bin=${!which}
  list=()
  for i in $(seq 0 9); do
    "$bin" storage-server --dir "$work/$which-node$i" --listen 127.0.0.1:0 > "$work/$which-node$i.url" 2> /dev/null &
    pids+=($!)
  done
  for i in $(seq 0 9); do
    wait_for_line "$work/$which-node$i.url"
    list+=(--server "$(head -1 "$work/$which-node$i.url")")
  done
  servers[$which]="${list[*]}"
done

echo "| measure | old | new | new/old |"
echo "|---|---|---|---|"
for which in old new; do : > "$work/put-embedded.$which"; : > "$work/put-remote.$which"; done
# Who goes first alternates run by run, and the disk is synced before each put: a put leaves
# its dirty pages to the next one's writeback otherwise.
order() { if (( $1 % 2 )); then echo old new; else echo new old; fi; }
for run in $(seq "$runs"); do
  for which in $(order "$run"); do
    bin=${!which}
    rm -rf "$work/$which-embedded"
    sync
    s=$(seconds "$bin" --data "$work/$which-embedded" put --no-fsync "$work/file")
    echo "$mib / $s" | bc -l >> "$work/put-embedded.$which"
    sync
    # shellcheck disable=SC2086
    s=$(seconds "$bin" --data "$work/$which-client" ${servers[$which]} put "$work/file")
    echo "$mib / $s" | bc -l >> "$work/put-remote.$which"
  done
done
row "put $mib MiB, embedded grid, --no-fsync ($runs runs)" MiB/s "$work/put-embedded.old" "$work/put-embedded.new"
row "put $mib MiB, ten storage nodes ($runs runs)" MiB/s "$work/put-remote.old" "$work/put-remote.new"

declare -A local_cap remote_cap
for which in old new; do
  bin=${!which}
  local_cap[$which]=$("$bin" --data "$work/$which-embedded" put --no-fsync "$work/file" | tail -1)
  # shellcheck disable=SC2086
  remote_cap[$which]=$("$bin" --data "$work/$which-client" ${servers[$which]} put "$work/file" | tail -1)
done
sync

for which in old new; do : > "$work/get.$which"; done
for run in $(seq "$runs"); do
  for which in $(order "$run"); do
    bin=${!which}
    s=$(seconds "$bin" --data "$work/$which-embedded" get "${local_cap[$which]}" -o /dev/null)
    echo "$size / $s / 1000000" | bc -l >> "$work/get.$which"
  done
done
row "get $mib MiB to /dev/null, embedded grid ($runs runs)" MB/s "$work/get.old" "$work/get.new"

declare -A embedded remote
for which in old new; do
  bin=${!which}
  "$bin" --data "$work/$which-embedded" serve --listen 127.0.0.1:0 > "$work/$which-e.url" 2> /dev/null &
  pids+=($!)
  # shellcheck disable=SC2086
  "$bin" --data "$work/$which-client" ${servers[$which]} serve --listen 127.0.0.1:0 > "$work/$which-r.url" 2> /dev/null &
  pids+=($!)
  wait_for_line "$work/$which-e.url"; wait_for_line "$work/$which-r.url"
  embedded[$which]="$(head -1 "$work/$which-e.url" | sed 's#/$##')/uri/${local_cap[$which]}"
  remote[$which]="$(head -1 "$work/$which-r.url" | sed 's#/$##')/uri/${remote_cap[$which]}"
done
full() { curl -s -o /dev/null -w '%{speed_download}\n' "$1" | awk '{print $1/1e6}'; }
for grid in embedded remote; do
  declare -n urls=$grid
  for which in old new; do full "${urls[$which]}" > /dev/null; : > "$work/full-$grid.$which"; done
  for run in $(seq "$runs"); do
    for which in $(order "$run"); do full "${urls[$which]}" >> "$work/full-$grid.$which"; done
  done
  row "gateway full GET of $mib MiB, $grid grid ($runs runs)" MB/s "$work/full-$grid.old" "$work/full-$grid.new"
done
for grid in embedded remote; do
  declare -n urls=$grid
  python3 benches/ttfb.py 200 65536 "$size" "${urls[old]}" "${urls[new]}" > "$work/ttfb-$grid"
  sed "s/^/   $grid grid TTFB (A = old, B = new): /" "$work/ttfb-$grid"
done
