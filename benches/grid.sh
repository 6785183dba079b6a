#!/usr/bin/env bash
# The gateway over a real grid (ten `segvault storage-server` processes on 127.0.0.1) side by
# side with the gateway over the embedded grid (ten directories, same machine), the same file
# in both, measured alternately in one run (these machines are noisy: quote ratios and medians).
#
#   1. full-file GET throughput of a 256 MiB file
#   2. 100 random 64 KiB ranges, whole response time (p50, p99)
#   3. the same two with the 2 servers holding primary shares stopped (SIGSTOP), on the
#      warm remote gateway, and a first range on a gateway started while they are stopped
#
# Usage: benches/grid.sh [FULL_RUNS] [RANGES]   (defaults: 5 runs, 100 ranges)
set -euo pipefail
cd "$(dirname "$0")/.."
full_runs=${1:-5}
ranges=${2:-100}

cargo build --release --quiet
bin=$PWD/target/release/segvault
work=$(mktemp -d "${BENCH_DIR:-/tmp}/segvault-grid.XXXXXX")
pids=()
node_pids=()
cleanup() {
  for pid in "${node_pids[@]}"; do kill -CONT "$pid" 2> /dev/null || true; done
  for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
  wait 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_for_line() { for _ in $(seq 200); do [ -s "$1" ] && return; sleep 0.05; done; echo "no URL in $1" >&2; exit 1; }

servers=()
for i in $(seq 0 9); do
  "$bin" storage-server --dir "$work/node$i" --listen 127.0.0.1:0 > "$work/node$i.url" 2> /dev/null &
  pids+=($!); node_pids+=($!)
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
  "$bin" "$@" serve --listen 127.0.0.1:0 > "$work/$name.url" 2> "$work/$name.log" &
  pids+=($!)
  wait_for_line "$work/$name.url"
  url=$(head -1 "$work/$name.url" | sed 's#/$##')
}
start_gateway embedded --data "$work/embedded"; embedded="$url/uri/$local_cap"
start_gateway remote --data "$work/client" "${servers[@]}"; remote="$url/uri/$remote_cap"
for u in "$embedded" "$remote"; do
  code=$(curl -s -o /dev/null -r 0-0 -w '%{http_code}' "$u")
  [ "$code" = 206 ] || { echo "GET $u answered $code" >&2; exit 1; }
done

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
pct() { sort -g | awk -v p="$1" '{a[NR]=$1} END {i=int(NR*p/100+0.999); if (i<1) i=1; print a[i]}'; }
ratio() { echo "scale=2; $1 / $2" | bc; }
full() { curl -s -o /dev/null -w '%{speed_download}\n' "$1" | awk '{print $1/1e6}'; }
range_ms() { # url, first byte
  curl -s -o /dev/null -r "$2-$(($2 + 65535))" -w '%{http_code} %{time_total}\n' "$1" |
    awk '$1 == 206 {print $2*1000} $1 != 206 {print "status " $1 > "/dev/stderr"; exit 1}'
}
random_offset() { echo $(( (RANDOM * 32768 + RANDOM) % (size - 65536) )); }

echo "== 1. full-file GET of 256 MiB (MB/s), alternating, $full_runs runs each"
full "$embedded" > /dev/null; full "$remote" > /dev/null   # warm both
: > "$work/full.embedded"; : > "$work/full.remote"
for _ in $(seq "$full_runs"); do
  full "$embedded" >> "$work/full.embedded"
  full "$remote" >> "$work/full.remote"
done
full_e=$(median < "$work/full.embedded"); full_r=$(median < "$work/full.remote")
printf '   embedded %6.0f MB/s   remote grid %6.0f MB/s   ratio %s (target >= 0.6)\n' "$full_e" "$full_r" "$(ratio "$full_r" "$full_e")"

echo "== 2. $ranges random 64 KiB ranges (ms, one curl each), alternating"
: > "$work/range.embedded"; : > "$work/range.remote"
for _ in $(seq "$ranges"); do
  offset=$(random_offset)
  range_ms "$embedded" "$offset" >> "$work/range.embedded"
  range_ms "$remote" "$offset" >> "$work/range.remote"
done
p50_e=$(pct 50 < "$work/range.embedded"); p99_e=$(pct 99 < "$work/range.embedded")
p50_r=$(pct 50 < "$work/range.remote"); p99_r=$(pct 99 < "$work/range.remote")
printf '   embedded p50 %.2f p99 %.2f   remote grid p50 %.2f p99 %.2f\n' "$p50_e" "$p99_e" "$p50_r" "$p99_r"

# The servers holding shares 0 and 1 (primaries: the ones a healthy reader uses).
si=$("$bin" --data "$work/client" "${servers[@]}" info "$remote_cap" | awk '/^storage index:/ {print $3}')
stopped=()
for i in $(seq 0 9); do
  node=$(head -1 "$work/node$i.url")
  if curl -s "$node/v1/shares/$si" | grep -Eq '"shares":\[(0|1)\]'; then
    kill -STOP "${node_pids[$i]}"; stopped+=("${node_pids[$i]}")
  fi
done
echo "== 3. two servers stopped (SIGSTOP), holding shares 0 and 1 (${#stopped[@]} stopped)"
: > "$work/range.stalled"
for _ in $(seq "$ranges"); do
  range_ms "$remote" "$(random_offset)" >> "$work/range.stalled"
done
p50_x=$(pct 50 < "$work/range.stalled"); p99_x=$(pct 99 < "$work/range.stalled")
printf '   random 64 KiB ranges: p50 %.2f p99 %.2f ms   p50 ratio to healthy %s (target <= 2)\n' \
  "$p50_x" "$p99_x" "$(ratio "$p50_x" "$p50_r")"
: > "$work/full.stalled"
for _ in $(seq "$full_runs"); do full "$remote" >> "$work/full.stalled"; done
full_x=$(median < "$work/full.stalled")
printf '   full-file GET %6.0f MB/s   ratio to healthy remote %s\n' "$full_x" "$(ratio "$full_x" "$full_r")"
start_gateway fresh --data "$work/client" "${servers[@]}"
first=$(range_ms "$url/uri/$remote_cap" "$(random_offset)")
printf '   first 64 KiB range on a gateway started while they are stopped: %.1f ms\n' "$first"
for pid in "${stopped[@]}"; do kill -CONT "$pid"; done
