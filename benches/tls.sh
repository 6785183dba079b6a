#!/usr/bin/env bash
# What TLS costs, measured side by side in one run (these machines are noisy: compare within
# a run, quote medians and ratios).
#
#   A. ten `storage-server` processes in cleartext against ten with `--tls` (pinned keys),
#      the same file on both, read through a plain-HTTP gateway (its node connections are
#      pooled and TLS sessions resumed) and through the CLI (a fresh process: new handshakes)
#      1. put throughput         2. full GET through the gateway
#      3. random 64 KiB ranges (benches/ttfb.py: fresh and kept-alive client connections)
#      4. `get --range` of 64 KiB by a fresh CLI process
#   B. the gateway serving HTTPS (h2 and HTTP/1.1 by ALPN) against nginx serving HTTPS (TLS
#      1.3, h2 and HTTP/1.1) on the same plaintext, and the gateway in cleartext
#      5. full GET              6. random 64 KiB ranges on one kept-alive connection
#      7. random 64 KiB ranges, one new connection (TCP + TLS handshake) each
#
# Usage: benches/tls.sh [RUNS] [RANGES]   (defaults: 5 runs, 100 ranges; FILE_MIB=256)
# Installs nginx with apt-get if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
ranges=${2:-100}
mib=${FILE_MIB:-256}

if ! command -v nginx > /dev/null; then
  apt-get install -y -q nginx > /dev/null || { apt-get update -q > /dev/null && apt-get install -y -q nginx > /dev/null; }
fi
cargo build --release --quiet
bin=$PWD/target/release/segvault
work=$(mktemp -d "${BENCH_DIR:-/tmp}/segvault-tls.XXXXXX")
chmod 755 "$work"  # nginx's workers run as an unprivileged user
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
  wait 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
pct() { sort -g | awk -v p="$1" '{a[NR]=$1} END {i=int(NR*p/100+0.999); if (i<1) i=1; print a[i]}'; }
ratio() { echo "scale=2; $1 / $2" | bc; }
wait_for_line() { for _ in $(seq 200); do [ -s "$1" ] && return; sleep 0.05; done; echo "no URL in $1" >&2; exit 1; }
seconds() { local start end; start=$(date +%s.%N); "$@" > /dev/null; end=$(date +%s.%N); echo "$end - $start" | bc; }
random_offset() { echo $(( (RANDOM * 32768 + RANDOM) % (size - 65536) )); }

mkdir -p "$work/www"
head -c "${mib}M" /dev/urandom > "$work/www/file.bin"
chmod 755 "$work/www"; chmod 644 "$work/www/file.bin"
size=$(stat -c %s "$work/www/file.bin")

# --- A. storage nodes in cleartext and over TLS ------------------------------------------
declare -A servers node_pids gateway_pid
for kind in plain tls; do
  flag=(); [ "$kind" = tls ] && flag=(--tls)
  list=()
  for i in $(seq 0 9); do
    "$bin" storage-server --dir "$work/$kind-node$i" --listen 127.0.0.1:0 "${flag[@]}" \
      > "$work/$kind-node$i.url" 2> /dev/null &
    pids+=($!); node_pids[$kind]+="$! "
  done
  for i in $(seq 0 9); do
    wait_for_line "$work/$kind-node$i.url"
    list+=(--server "$(head -1 "$work/$kind-node$i.url")")
  done
  servers[$kind]="${list[*]}"
done
grep -q '#spki-sha256=' "$work/tls-node0.url" || { echo "a --tls node printed no pinned URL" >&2; exit 1; }

order() { if (( $1 % 2 )); then echo plain tls; else echo tls plain; fi; }
echo "== A. ten storage nodes, cleartext vs TLS, $mib MiB file, $runs runs each, alternating"
: > "$work/put.plain"; : > "$work/put.tls"
for run in $(seq "$runs"); do
  for kind in $(order "$run"); do
    sync
    # shellcheck disable=SC2086
    s=$(seconds "$bin" --data "$work/$kind-client" ${servers[$kind]} put "$work/www/file.bin")
    echo "$mib / $s" | bc -l >> "$work/put.$kind"
  done
done
put_p=$(median < "$work/put.plain"); put_t=$(median < "$work/put.tls")
printf '1. put               plain %7.1f MiB/s   TLS %7.1f MiB/s   TLS/plain %s\n' "$put_p" "$put_t" "$(ratio "$put_t" "$put_p")"

declare -A cap gateway
for kind in plain tls; do
  # shellcheck disable=SC2086
  cap[$kind]=$("$bin" --data "$work/$kind-client" ${servers[$kind]} put "$work/www/file.bin" | tail -1)
  # shellcheck disable=SC2086
  "$bin" --data "$work/$kind-client" ${servers[$kind]} serve --listen 127.0.0.1:0 \
    > "$work/$kind-gateway.url" 2> /dev/null &
  pids+=($!); gateway_pid[$kind]=$!
  wait_for_line "$work/$kind-gateway.url"
  gateway[$kind]="$(head -1 "$work/$kind-gateway.url" | sed 's#/$##')/uri/${cap[$kind]}"
done
sync
full() { curl -s -o /dev/null -w '%{speed_download}\n' "$@" | awk '{print $1/1e6}'; }
# CPU time (clock ticks, user + system) the given processes have used so far.
cpu_ticks() { local t=0 pid; for pid in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo "$t"; }
: > "$work/full.plain"; : > "$work/full.tls"
full "${gateway[plain]}" > /dev/null; full "${gateway[tls]}" > /dev/null   # warm both
declare -A gateway_cpu node_cpu
for kind in plain tls; do gateway_cpu[$kind]=0; node_cpu[$kind]=0; done
for run in $(seq "$runs"); do
  for kind in $(order "$run"); do
    # shellcheck disable=SC2086
    g0=$(cpu_ticks "${gateway_pid[$kind]}"); n0=$(cpu_ticks ${node_pids[$kind]})
    full "${gateway[$kind]}" >> "$work/full.$kind"
    # shellcheck disable=SC2086
    g1=$(cpu_ticks "${gateway_pid[$kind]}"); n1=$(cpu_ticks ${node_pids[$kind]})
    gateway_cpu[$kind]=$((gateway_cpu[$kind] + g1 - g0)); node_cpu[$kind]=$((node_cpu[$kind] + n1 - n0))
  done
done
full_p=$(median < "$work/full.plain"); full_t=$(median < "$work/full.tls")
printf '2. gateway full GET  plain %7.0f MB/s    TLS %7.0f MB/s    TLS/plain %s (target >= 0.85)\n' "$full_p" "$full_t" "$(ratio "$full_t" "$full_p")"
# On one machine the nodes' encryption and the gateway's decryption share its cores; on a
# real grid each pays its own, so the CPU each side spends per GB is the figure to carry over.
per_gb() { echo "scale=3; $1 * 1000 / $(getconf CLK_TCK) / ($runs * $size / 1000000000)" | bc; }
printf '   CPU ms per GB served: gateway plain %s TLS %s (TLS/plain %s); ten nodes plain %s TLS %s (TLS/plain %s)\n' \
  "$(per_gb "${gateway_cpu[plain]}")" "$(per_gb "${gateway_cpu[tls]}")" "$(ratio "${gateway_cpu[tls]}" "${gateway_cpu[plain]}")" \
  "$(per_gb "${node_cpu[plain]}")" "$(per_gb "${node_cpu[tls]}")" "$(ratio "${node_cpu[tls]}" "${node_cpu[plain]}")"
echo "3. random 64 KiB ranges through the gateway (A = plain nodes, B = TLS nodes), ms"
python3 benches/ttfb.py 200 65536 "$size" "${gateway[plain]}" "${gateway[tls]}" | sed 's/^/   /'

: > "$work/cli.plain"; : > "$work/cli.tls"
for run in $(seq "$ranges"); do
  offset=$(random_offset)
  for kind in $(order "$run"); do
    # shellcheck disable=SC2086
    s=$(seconds "$bin" --data "$work/$kind-client" ${servers[$kind]} get --range "$offset-$((offset + 65535))" -o /dev/null "${cap[$kind]}")
    echo "$s * 1000" | bc -l >> "$work/cli.$kind"
  done
done
cli_p=$(pct 50 < "$work/cli.plain"); cli_t=$(pct 50 < "$work/cli.tls")
printf '4. CLI get --range 64 KiB, fresh process: p50 plain %.1f ms  TLS %.1f ms  TLS/plain %s\n' "$cli_p" "$cli_t" "$(ratio "$cli_t" "$cli_p")"

# --- B. the gateway as an HTTPS server, beside nginx --------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2> /dev/null
chmod 644 "$work/key.pem"  # nginx's master reads it as root; the file is a throwaway
local_cap=$("$bin" --data "$work/embedded" put --no-fsync "$work/www/file.bin" | tail -1)
"$bin" --data "$work/embedded" serve --listen 127.0.0.1:0 --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" \
  > "$work/https.url" 2> "$work/https.log" &
pids+=($!)
"$bin" --data "$work/embedded" serve --listen 127.0.0.1:0 > "$work/http.url" 2> /dev/null &
pids+=($!)
wait_for_line "$work/https.url"; wait_for_line "$work/http.url"
segvault_https="$(head -1 "$work/https.url" | sed 's#/$##')/uri/$local_cap"
segvault_http="$(head -1 "$work/http.url" | sed 's#/$##')/uri/$local_cap"
nginx_port=$((20000 + RANDOM % 10000))
cat > "$work/nginx.conf" << EOF
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  server {
    listen 127.0.0.1:$nginx_port ssl http2;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    ssl_protocols TLSv1.3;
    root $work/www;
  }
}
EOF
nginx -p "$work" -c "$work/nginx.conf" -g 'daemon off;' &
pids+=($!)
nginx_https="https://127.0.0.1:$nginx_port/file.bin"
sleep 0.5
sync

# label, then curl arguments (protocol and URL)
declare -A target=(
  [nginx-h2]="--http2 $nginx_https"
  [nginx-h1]="--http1.1 $nginx_https"
  [segvault-h2]="--http2 $segvault_https"
  [segvault-h1]="--http1.1 $segvault_https"
  [segvault-cleartext]="--http1.1 $segvault_http"
)
labels=(nginx-h2 nginx-h1 segvault-h2 segvault-h1 segvault-cleartext)
tls=(--cacert "$work/cert.pem")
for label in "${labels[@]}"; do
  # shellcheck disable=SC2086
  got=$(curl -s "${tls[@]}" -o /dev/null -r 0-0 -w '%{http_code} %{http_version}' ${target[$label]})
  case "$label:$got" in
    *-h2:"206 2" | *-h1:"206 1.1" | *-cleartext:"206 1.1") ;;
    *) echo "$label answered '$got'" >&2; exit 1 ;;
  esac
done

echo "== B. HTTPS: the gateway (embedded grid) beside nginx on the same $mib MiB plaintext"
echo "5. full GET (MB/s), median of $runs, alternating"
for label in "${labels[@]}"; do : > "$work/full.$label"; done
for _ in $(seq "$runs"); do
  for label in "${labels[@]}"; do
    # shellcheck disable=SC2086
    full "${tls[@]}" ${target[$label]} >> "$work/full.$label"
  done
done
for label in "${labels[@]}"; do
  printf '   %-20s %7.0f MB/s\n' "$label" "$(median < "$work/full.$label")"
done
printf '   segvault-h2 / nginx-h2 %s   segvault-h1 / nginx-h1 %s   segvault-h2 / segvault-cleartext %s\n' \
  "$(ratio "$(median < "$work/full.segvault-h2")" "$(median < "$work/full.nginx-h2")")" \
  "$(ratio "$(median < "$work/full.segvault-h1")" "$(median < "$work/full.nginx-h1")")" \
  "$(ratio "$(median < "$work/full.segvault-h2")" "$(median < "$work/full.segvault-cleartext")")"

# The same random offsets for every server.
offsets=(); for _ in $(seq "$ranges"); do offsets+=("$(random_offset)"); done
echo "6. $ranges random 64 KiB ranges on one kept-alive connection (ms, request to last byte)"
for label in "${labels[@]}"; do
  args=()
  for offset in "${offsets[@]}"; do
    # shellcheck disable=SC2206
    args+=(-s "${tls[@]}" -o /dev/null -w '%{http_code} %{time_total}\n' -r "$offset-$((offset + 65535))" ${target[$label]} --next)
  done
  unset 'args[${#args[@]}-1]'
  curl "${args[@]}" | awk '$1 != 206 {print "status " $1 > "/dev/stderr"; exit 1} {print $2 * 1000}' > "$work/kept.$label"
  printf '   %-20s p50 %6.3f  p99 %6.3f\n' "$label" "$(pct 50 < "$work/kept.$label")" "$(pct 99 < "$work/kept.$label")"
done
echo "7. $ranges random 64 KiB ranges, a new connection each (ms, connect + handshake + response)"
for label in "${labels[@]}"; do : > "$work/fresh.$label"; done
for offset in "${offsets[@]}"; do
  for label in "${labels[@]}"; do
    # shellcheck disable=SC2086
    curl -s "${tls[@]}" -o /dev/null -w '%{time_total}\n' -r "$offset-$((offset + 65535))" ${target[$label]} |
      awk '{print $1 * 1000}' >> "$work/fresh.$label"
  done
done
for label in "${labels[@]}"; do
  printf '   %-20s p50 %6.3f  p99 %6.3f\n' "$label" "$(pct 50 < "$work/fresh.$label")" "$(pct 99 < "$work/fresh.$label")"
done
