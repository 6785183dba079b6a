#!/usr/bin/env bash
# The gateway side by side with nginx serving the same plaintext, both on 127.0.0.1, measured
# alternately in one run (these machines are noisy: compare within a run, quote medians).
# rclone crypt (`rclone serve http` over a crypt remote of a local directory) is the peer a
# user would pick instead for encrypted files with ranges; it appears in rows 1 and 2a.
#
#   1. full-file GET throughput of a 512 MiB file, and the gateway's share mix (blocks
#      decoded from primary or parity shares, from /metrics: parity here is wasted work)
#   2. time to first byte of 100 random 64 KiB ranges (p50, p99)
#   3. a 1-byte range at EOF of a file not opened yet (fresh caps for segvault)
#   4. peak RSS of the server with 16 clients reading a 256 MiB file at 1 MB/s
#   5. peak RSS with STALLED clients (default 1,000) that read a response head and stop, and
#      how many connections each server closed within its 20 s send timeout
#
# Usage: benches/gateway.sh [FULL_RUNS] [SLOW_SECONDS] [STALLED]   (defaults: 5, 20 s, 1000)
# Installs nginx and rclone with apt-get if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
full_runs=${1:-5}
slow_seconds=${2:-20}
stalled=${3:-1000}

for tool in nginx rclone; do
  if ! command -v "$tool" > /dev/null; then
    apt-get install -y -q "$tool" > /dev/null || { apt-get update -q > /dev/null && apt-get install -y -q "$tool" > /dev/null; }
  fi
done
cargo build --release --quiet
bin=$PWD/target/release/segvault
work=$(mktemp -d "${BENCH_DIR:-/tmp}/segvault-gateway.XXXXXX")
chmod 755 "$work"  # nginx's workers run as an unprivileged user
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
  wait 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/www"
head -c 512M /dev/urandom > "$work/www/big.bin"
head -c 256M /dev/urandom > "$work/www/slow.bin"
chmod 755 "$work/www"; chmod 644 "$work/www/"*.bin
big_cap=$("$bin" --data "$work/data" put --no-fsync "$work/www/big.bin" | tail -1)
slow_cap=$("$bin" --data "$work/data" put --no-fsync "$work/www/slow.bin" | tail -1)
big_len=$(stat -c %s "$work/www/big.bin")
sync

nginx_port=$((20000 + RANDOM % 20000))
cat > "$work/nginx.conf" << EOF
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
worker_rlimit_nofile 8192;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  send_timeout 20s;
  server {
    listen 127.0.0.1:$nginx_port;
    root $work/www;
  }
}
EOF
nginx -p "$work" -c "$work/nginx.conf" -g 'daemon off;' &
pids+=($!)

start_gateway() {
  "$bin" --data "$work/data" serve --listen 127.0.0.1:0 --send-timeout 20 --max-connections 4096 > "$work/url" 2> "$work/gateway.log" &
  gateway_pid=$!
  pids+=("$gateway_pid")
  for _ in $(seq 100); do [ -s "$work/url" ] && break; sleep 0.05; done
  gateway=$(head -1 "$work/url" | sed 's#/$##')
}
start_gateway
nginx="http://127.0.0.1:$nginx_port"

# rclone crypt over a local directory holding the same file, encrypted.
printf '[plain]\ntype = local\n[secret]\ntype = crypt\nremote = plain:%s\npassword = %s\n' \
  "$work/crypt" "$(rclone obscure segvault-bench-password)" > "$work/rclone.conf"
rclone --config "$work/rclone.conf" copyto "$work/www/big.bin" secret:big.bin
rclone_port=$((20000 + RANDOM % 20000))
rclone --config "$work/rclone.conf" serve http secret: --addr "127.0.0.1:$rclone_port" 2> "$work/rclone.log" &
pids+=($!)
rclone="http://127.0.0.1:$rclone_port"
for _ in $(seq 100); do curl -s -o /dev/null "$rclone/" && break; sleep 0.1; done
sleep 0.5
for url in "$nginx/big.bin" "$gateway/uri/$big_cap" "$rclone/big.bin"; do
  code=$(curl -s -o /dev/null -r 0-0 -w '%{http_code}' "$url")
  [ "$code" = 206 ] || { echo "GET $url answered $code" >&2; exit 1; }
done

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
pct() { sort -g | awk -v p="$1" '{a[NR]=$1} END {i=int(NR*p/100+0.999); if (i<1) i=1; print a[i]}'; }
ratio() { echo "scale=2; $1 / $2" | bc; }

echo "== 1. full-file GET of 512 MiB (MB/s), alternating, $full_runs runs each"
for url in "$nginx/big.bin" "$gateway/uri/$big_cap" "$rclone/big.bin"; do curl -s -o /dev/null "$url"; done   # warm all
blocks() { curl -s "$gateway/metrics" | awk -v k="$1" '$1 == "segvault_blocks_used_total{kind=\"" k "\"}" {n = $2} END {print n + 0}'; }
primary_before=$(blocks primary); parity_before=$(blocks parity)
: > "$work/full.nginx"; : > "$work/full.segvault"; : > "$work/full.rclone"
for _ in $(seq "$full_runs"); do
  curl -s -o /dev/null -w '%{speed_download}\n' "$nginx/big.bin" | awk '{print $1/1e6}' >> "$work/full.nginx"
  curl -s -o /dev/null -w '%{speed_download}\n' "$gateway/uri/$big_cap" | awk '{print $1/1e6}' >> "$work/full.segvault"
  curl -s -o /dev/null -w '%{speed_download}\n' "$rclone/big.bin" | awk '{print $1/1e6}' >> "$work/full.rclone"
done
full_n=$(median < "$work/full.nginx"); full_s=$(median < "$work/full.segvault"); full_r=$(median < "$work/full.rclone")
printf '   nginx %8.0f MB/s   segvault %8.0f MB/s   ratio %s   rclone crypt %8.0f MB/s (segvault / rclone %s)\n' \
  "$full_n" "$full_s" "$(ratio "$full_s" "$full_n")" "$full_r" "$(ratio "$full_s" "$full_r")"
primary=$(( $(blocks primary) - primary_before )); parity=$(( $(blocks parity) - parity_before ))
printf '   share mix of those GETs: %d primary blocks, %d parity (%.1f %% parity)\n' \
  "$primary" "$parity" "$(echo "100 * $parity / ($primary + $parity + 0.0001)" | bc -l)"

echo "== 2. time to first byte of 100 random 64 KiB ranges (ms)"
echo "   a) one curl per request, alternating (what the design notes quote for nginx)"
: > "$work/ttfb.nginx"; : > "$work/ttfb.segvault"; : > "$work/ttfb.rclone"
for i in $(seq 100); do
  first=$(( (RANDOM * 32768 + RANDOM) % (big_len - 65536) ))
  last=$((first + 65535))
  curl -s -o /dev/null -r "$first-$last" -w '%{time_starttransfer}\n' "$nginx/big.bin" | awk '{print $1*1000}' >> "$work/ttfb.nginx"
  curl -s -o /dev/null -r "$first-$last" -w '%{time_starttransfer}\n' "$gateway/uri/$big_cap" | awk '{print $1*1000}' >> "$work/ttfb.segvault"
  curl -s -o /dev/null -r "$first-$last" -w '%{time_starttransfer}\n' "$rclone/big.bin" | awk '{print $1*1000}' >> "$work/ttfb.rclone"
done
p50_n=$(pct 50 < "$work/ttfb.nginx"); p99_n=$(pct 99 < "$work/ttfb.nginx")
p50_s=$(pct 50 < "$work/ttfb.segvault"); p99_s=$(pct 99 < "$work/ttfb.segvault")
printf '   nginx p50 %.3f p99 %.3f   segvault p50 %.3f p99 %.3f   ratio p50 %s p99 %s\n' \
  "$p50_n" "$p99_n" "$p50_s" "$p99_s" "$(ratio "$p50_s" "$p50_n")" "$(ratio "$p99_s" "$p99_n")"
p50_r=$(pct 50 < "$work/ttfb.rclone"); p99_r=$(pct 99 < "$work/ttfb.rclone")
printf '   rclone crypt p50 %.3f p99 %.3f   segvault / rclone p50 %s\n' "$p50_r" "$p99_r" "$(ratio "$p50_s" "$p50_r")"
echo "   b) raw sockets, request sent to first byte, interleaved (A = nginx, B = segvault)"
python3 benches/ttfb.py 100 65536 "$big_len" "$nginx/big.bin" "$gateway/uri/$big_cap"

echo "== 3. 1-byte range at EOF of a file not opened yet (ms), 5 fresh files each"
: > "$work/eof.nginx"; : > "$work/eof.segvault"
for i in $(seq 5); do
  head -c 16M /dev/urandom > "$work/www/fresh$i.bin"
  chmod 644 "$work/www/fresh$i.bin"
  cap=$("$bin" --data "$work/data" put --no-fsync "$work/www/fresh$i.bin" | tail -1)
  curl -s -o /dev/null -r -1 -w '%{time_starttransfer}\n' "$nginx/fresh$i.bin" | awk '{print $1*1000}' >> "$work/eof.nginx"
  curl -s -o /dev/null -r -1 -w '%{time_starttransfer}\n' "$gateway/uri/$cap" | awk '{print $1*1000}' >> "$work/eof.segvault"
done
eof_n=$(median < "$work/eof.nginx"); eof_s=$(median < "$work/eof.segvault")
printf '   nginx %.3f   segvault %.3f   ratio %s\n' "$eof_n" "$eof_s" "$(ratio "$eof_s" "$eof_n")"

echo "== 4. peak RSS with 16 clients at 1 MB/s on a 256 MiB file, ${slow_seconds}s each"
rss_of() { # total VmRSS (KiB) of the given pids
  local total=0
  for pid in "$@"; do
    total=$((total + $(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2> /dev/null || echo 0)))
  done
  echo "$total"
}
slow_run() { # url, then server pids
  local url=$1; shift
  local clients=() peak=0
  for _ in $(seq 16); do
    curl -s -o /dev/null --limit-rate 1M "$url" &
    clients+=($!)
  done
  for _ in $(seq $((slow_seconds * 4))); do
    sleep 0.25
    local now; now=$(rss_of "$@")
    [ "$now" -gt "$peak" ] && peak=$now
  done
  kill "${clients[@]}" 2> /dev/null || true
  wait "${clients[@]}" 2> /dev/null || true
  echo "$peak"
}
# A fresh gateway, so its RSS is its baseline plus what the clients cost.
kill "$gateway_pid"; wait "$gateway_pid" 2> /dev/null || true
start_gateway
sleep 0.5
idle_s=$(rss_of "$gateway_pid")
nginx_pids=$(pgrep -f "nginx.*$work" | tr '\n' ' ')
idle_n=$(rss_of $nginx_pids)
peak_n=$(slow_run "$nginx/slow.bin" $nginx_pids)
peak_s=$(slow_run "$gateway/uri/$slow_cap" "$gateway_pid")
printf '   nginx idle %d KiB peak %d KiB   segvault idle %d KiB peak %d KiB (%.1f MiB)\n' \
  "$idle_n" "$peak_n" "$idle_s" "$peak_s" "$(echo "$peak_s / 1024" | bc -l)"

echo "== 5. peak RSS with $stalled clients that read a response head and stop, held 30 s"
stalled_run() { # url, then server pids
  local url=$1; shift
  local peak=0
  python3 benches/stalled.py "$url" 268435456 "$stalled" 30 > "$work/stalled.out" &
  local client=$!
  while kill -0 "$client" 2> /dev/null; do
    sleep 0.25
    local now; now=$(rss_of "$@")
    [ "$now" -gt "$peak" ] && peak=$now
  done
  wait "$client"
  echo "$peak $(awk '/closed by the server/ {print $5}' "$work/stalled.out")"
}
kill "$gateway_pid"; wait "$gateway_pid" 2> /dev/null || true
start_gateway
sleep 0.5
idle_s=$(rss_of "$gateway_pid")
read -r peak_n closed_n <<< "$(stalled_run "$nginx/slow.bin" $nginx_pids)"
read -r peak_s closed_s <<< "$(stalled_run "$gateway/uri/$slow_cap" "$gateway_pid")"
printf '   nginx peak %d KiB, closed %s   segvault idle %d KiB peak %d KiB (%.1f MiB, %.0f KiB per client), closed %s of %d\n' \
  "$peak_n" "$closed_n" "$idle_s" "$peak_s" "$(echo "$peak_s / 1024" | bc -l)" \
  "$(echo "($peak_s - $idle_s) / $stalled" | bc -l)" "$closed_s" "$stalled"
