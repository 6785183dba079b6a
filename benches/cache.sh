#!/usr/bin/env bash
# The disk cache (issue 5): a gateway over a real grid (ten `segvault storage-server`
# processes on 127.0.0.1) with and without `--cache-dir`, side by side with the gateway over
# the embedded grid, the same 256 MiB file in both, measured alternately in one run (these
# machines are noisy: quote ratios and medians).
#
#   1. random 64 KiB ranges: embedded; remote without a cache; remote with a cold cache
#      (first time each range is read), then the same ranges again with the cache warm
#   2. "video scrubbing": sequential 1 MiB reads, jumping back 2-16 MiB every 8 reads, on
#      each gateway (a fresh cache for the cached one), per-read time and cache hit ratio
#
# Usage: benches/cache.sh [RANGES] [SCRUB_READS]   (defaults: 200 ranges, 240 reads)
set -euo pipefail
cd "$(dirname "$0")/.."
ranges=${1:-200}
scrub_reads=${2:-240}

cargo build --release --quiet
bin=$PWD/target/release/segvault
work=$(mktemp -d "${BENCH_DIR:-/tmp}/segvault-cache.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
  wait 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_for_line() { for _ in $(seq 200); do [ -s "$1" ] && return; sleep 0.05; done; echo "no URL in $1" >&2; exit 1; }

servers=()
for i in $(seq 0 9); do
  "$bin" storage-server --dir "$work/node$i" --listen 127.0.0.1:0 > "$work/node$i.url" 2> /dev/null &
  pids+=($!)
done
for i in $(seq 0 9); do
  wait_for_line "$work/node$i.url"
  servers+=(--server "$(head -1 "$work/node$i.url")")
done

head -c 256M /dev/urandom > "$work/big.bin"
size=$(stat -c %s "$work/big.bin")
remote_cap=$("$bin" --data "$work/client" "${servers[@]}" put "$work/big.bin" | tail -1)
local_cap=$("$bin" --data "$work/embedded" put --no-fsync "$work/big.bin" | tail -1)
sync

start_gateway() { # name, then extra arguments; sets $url
  local name=$1; shift
  "$bin" serve --listen 127.0.0.1:0 "$@" > "$work/$name.url" 2> "$work/$name.log" &
  pids+=($!)
  wait_for_line "$work/$name.url"
  url=$(head -1 "$work/$name.url" | sed 's#/$##')
}
start_gateway embedded --data "$work/embedded"; embedded="$url/uri/$local_cap"
start_gateway remote --data "$work/client" "${servers[@]}"; remote="$url/uri/$remote_cap"
start_gateway cached --data "$work/client" "${servers[@]}" --cache-dir "$work/cache" --cache-size 2GiB
cached_base=$url; cached="$url/uri/$remote_cap"
# Open each file node first (a file's first request lists shares and reads headers); the
# last byte is in a segment the ranges below rarely touch.
for u in "$embedded" "$remote" "$cached"; do
  code=$(curl -s -o /dev/null -r "$((size - 1))-" -w '%{http_code}' "$u")
  [ "$code" = 206 ] || { echo "GET $u answered $code" >&2; exit 1; }
done

pct() { sort -g | awk -v p="$1" '{a[NR]=$1} END {i=int(NR*p/100+0.999); if (i<1) i=1; print a[i]}'; }
ratio() { echo "scale=2; $1 / $2" | bc; }
range_ms() { # url, first byte, length
  curl -s -o /dev/null -r "$2-$(($2 + $3 - 1))" -w '%{http_code} %{time_total}\n' "$1" |
    awk '$1 == 206 {print $2*1000} $1 != 206 {print "status " $1 > "/dev/stderr"; exit 1}'
}
metric() { # gateway base URL, metric name: the sum of its samples
  curl -s "$1/metrics" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 {s += $2} END {print s + 0}'
}
random_offset() { echo $(( (RANDOM * 32768 + RANDOM) % (size - 65536) )); }

for _ in $(seq "$ranges"); do random_offset; done > "$work/offsets"

echo "== 1. $ranges random 64 KiB ranges (ms, one curl each), alternating"
: > "$work/r.embedded"; : > "$work/r.remote"; : > "$work/r.cold"; : > "$work/r.warm"
while read -r offset; do
  range_ms "$embedded" "$offset" 65536 >> "$work/r.embedded"
  range_ms "$remote" "$offset" 65536 >> "$work/r.remote"
  range_ms "$cached" "$offset" 65536 >> "$work/r.cold"
done < "$work/offsets"
sleep 1 # background cache writes
requests_before=$(metric "$cached_base" segvault_share_request_seconds_count)
: > "$work/r.embedded2"
while read -r offset; do
  range_ms "$embedded" "$offset" 65536 >> "$work/r.embedded2"
  range_ms "$cached" "$offset" 65536 >> "$work/r.warm"
done < "$work/offsets"
requests_after=$(metric "$cached_base" segvault_share_request_seconds_count)
show() { printf '   %-28s p50 %6.2f  p99 %6.2f ms\n' "$1" "$(pct 50 < "$2")" "$(pct 99 < "$2")"; }
show "embedded grid" "$work/r.embedded"
show "embedded grid (2nd pass)" "$work/r.embedded2"
show "remote grid, no cache" "$work/r.remote"
show "remote grid, cold cache" "$work/r.cold"
show "remote grid, warm cache" "$work/r.warm"
p50_e=$(cat "$work/r.embedded" "$work/r.embedded2" | pct 50)
printf '   warm-cache p50 / embedded p50 (both passes): %s (target <= 1.5)\n' "$(ratio "$(pct 50 < "$work/r.warm")" "$p50_e")"
printf '   storage requests during the warm pass: %s\n' "$((requests_after - requests_before))"

echo "== 2. video scrubbing: $scrub_reads sequential 1 MiB reads, jumping back 2-16 MiB every 8 (ms per read)"
start_gateway scrub --data "$work/client" "${servers[@]}" --cache-dir "$work/scrub-cache" --cache-size 2GiB
scrub_base=$url; scrub="$url/uri/$remote_cap"
curl -s -o /dev/null -r "$((size - 1))-" "$scrub"
# One schedule, replayed on each gateway.
position=$((8 << 20))
for i in $(seq "$scrub_reads"); do
  if [ $((i % 8)) -eq 0 ]; then
    back=$(( (2 + RANDOM % 15) << 20 ))
    position=$(( position > back ? position - back : 0 ))
  fi
  [ $((position + (1 << 20))) -gt "$size" ] && position=0
  echo "$position"
  position=$((position + (1 << 20)))
done > "$work/scrub"
for name in embedded remote scrub; do
  case $name in embedded) u=$embedded ;; remote) u=$remote ;; scrub) u=$scrub ;; esac
  : > "$work/s.$name"
  started=$(date +%s.%N)
  while read -r offset; do range_ms "$u" "$offset" 1048576 >> "$work/s.$name"; done < "$work/scrub"
  ended=$(date +%s.%N)
  printf '   %-24s p50 %6.2f  p99 %6.2f ms   total %5.2f s\n' "$name" \
    "$(pct 50 < "$work/s.$name")" "$(pct 99 < "$work/s.$name")" "$(echo "$ended - $started" | bc)"
done
hits=$(metric "$scrub_base" segvault_cache_hits_total); misses=$(metric "$scrub_base" segvault_cache_misses_total)
printf '   (scrub = remote grid with a fresh cache) block hits %s, misses %s: hit ratio %s\n' \
  "$hits" "$misses" "$(echo "scale=2; $hits / ($hits + $misses)" | bc)"
