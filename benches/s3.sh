#!/usr/bin/env bash
# The gateway over three kinds of grid, side by side in one run on loopback, the same file in
# each: the embedded grid (ten directories), ten `segvault storage-server` nodes, ten
# buckets on a three-node Garage cluster (replication factor 3, each bucket reached through
# one of the nodes), and ten buckets on one s3s-fs (a thin S3 server over a directory: what
# the S3 path costs when the server is not the bottleneck). Measured alternately (these
# machines are noisy: quote ratios and medians).
#
#   1. full-file GET throughput
#   2. random 64 KiB ranges, whole response time (p50, p99)
#   3. cold open: a 1-byte range at EOF on a gateway just started (median of 3)
#   4. Garage with --cache-dir: the same random ranges again, once cached
#
# Usage: benches/s3.sh [FULL_RUNS] [RANGES]   (defaults: 5 runs, 100 ranges; FILE_MIB=128)
# Needs garage on the PATH (cargo install garage --locked).
#
# LO_MTU=1500 (as root) runs with loopback's MTU set to a real network's, restored at exit.
# Garage and s3s-fs do not set TCP_NODELAY: with loopback's 64 KiB MTU a response body under
# 64 KiB is one sub-MSS segment that Nagle holds until the client's delayed ACK (40 ms) for
# the headers, so every small GET costs 40+ ms on loopback and ~2 ms on a 1500-byte MTU.
# Our storage nodes set TCP_NODELAY and are unaffected either way.
set -euo pipefail
cd "$(dirname "$0")/.."
full_runs=${1:-5}
ranges=${2:-100}
file_mib=${FILE_MIB:-128}
export PATH="$HOME/.cargo/bin:$PATH"
command -v garage > /dev/null || { echo "garage is not installed: cargo install garage --locked" >&2; exit 1; }
command -v s3s-fs > /dev/null || { echo "s3s-fs is not installed: cargo install s3s-fs --version 0.14.1 --features binary --locked" >&2; exit 1; }
for v in $(env | sed -n 's/^\(AWS_[A-Z_]*\)=.*/\1/p'); do unset "$v"; done

cargo build --release --quiet
bin=$PWD/target/release/segvault
work=$(mktemp -d "${BENCH_DIR:-/tmp}/segvault-s3.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
  wait 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
if [ -n "${LO_MTU:-}" ]; then
  old_mtu=$(cat /sys/class/net/lo/mtu)
  ip link set lo mtu "$LO_MTU"
  trap 'cleanup; ip link set lo mtu "$old_mtu"' EXIT
  echo "loopback MTU $LO_MTU (was $old_mtu)"
fi
wait_for_line() { for _ in $(seq 200); do [ -s "$1" ] && return; sleep 0.05; done; echo "no URL in $1" >&2; cat "${1%.url}.log" >&2 2> /dev/null; exit 1; }
wait_port() { for _ in $(seq 300); do (echo > "/dev/tcp/127.0.0.1/$1") 2> /dev/null && return; sleep 0.1; done; echo "nothing on port $1" >&2; exit 1; }

# Ten storage nodes.
servers=()
for i in $(seq 0 9); do
  "$bin" storage-server --dir "$work/node$i" --listen 127.0.0.1:0 > "$work/node$i.url" 2> /dev/null &
  pids+=($!)
done
for i in $(seq 0 9); do wait_for_line "$work/node$i.url"; servers+=(--server "$(head -1 "$work/node$i.url")"); done

# Garage: three nodes, ports below the ephemeral range.
base=$((20000 + RANDOM % 10000))
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/rpc_secret"; chmod 600 "$work/rpc_secret"
for i in 0 1 2; do
  mkdir -p "$work/garage$i"
  cat > "$work/garage$i/garage.toml" << EOF
metadata_dir = "$work/garage$i/meta"
data_dir = "$work/garage$i/data"
db_engine = "sqlite"
replication_factor = 3
rpc_bind_addr = "127.0.0.1:$((base + 2 * i))"
rpc_public_addr = "127.0.0.1:$((base + 2 * i))"
rpc_secret_file = "$work/rpc_secret"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$((base + 2 * i + 1))"
root_domain = ".s3.garage.localhost"
EOF
  RUST_LOG=warn garage -c "$work/garage$i/garage.toml" server > /dev/null 2>&1 &
  pids+=($!)
  wait_port $((base + 2 * i + 1))
done
g() { for _ in $(seq 50); do garage -c "$work/garage0/garage.toml" "$@" 2> /dev/null && return; sleep 0.2; done; garage -c "$work/garage0/garage.toml" "$@"; }
for i in 1 2; do g node connect "$(garage -c "$work/garage$i/garage.toml" node id -q 2> /dev/null)" > /dev/null; done
for i in 0 1 2; do
  id=$(garage -c "$work/garage$i/garage.toml" node id -q 2> /dev/null)
  g layout assign -z dc1 -c 1G "${id:0:16}" > /dev/null
done
g layout apply --version 1 > /dev/null
key_id=GK0123456789abcdef01234567
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
g key import --yes -n bench "$key_id" "$secret" > /dev/null
printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$key_id" "$secret" > "$work/credentials"
entries=()
for i in $(seq 0 9); do
  g bucket create "media-$i" > /dev/null
  g bucket allow --read --write --owner "media-$i" --key bench > /dev/null
  entries+=("{ url = \"s3://media-$i\", endpoint = \"http://127.0.0.1:$((base + 2 * (i % 3) + 1))\", region = \"garage\", credentials_file = \"$work/credentials\", path_style = true, allow_http = true }")
done
{ echo "servers = ["; for e in "${entries[@]}"; do echo "  $e,"; done; echo "]"; } > "$work/garage.toml"

# s3s-fs: one process, ten buckets (directories).
s3s_port=$((base + 10))
mkdir -p "$work/s3s"
entries=()
for i in $(seq 0 9); do
  mkdir -p "$work/s3s/fast-$i"
  entries+=("{ url = \"s3://fast-$i\", endpoint = \"http://127.0.0.1:$s3s_port\", region = \"us-east-1\", credentials_file = \"$work/credentials\", path_style = true, allow_http = true }")
done
s3s-fs --host 127.0.0.1 --port "$s3s_port" --access-key "$key_id" --secret-key "$secret" "$work/s3s" > /dev/null 2>&1 &
pids+=($!)
wait_port "$s3s_port"
{ echo "servers = ["; for e in "${entries[@]}"; do echo "  $e,"; done; echo "]"; } > "$work/s3s.toml"

head -c "${file_mib}M" /dev/urandom > "$work/big.bin"
size=$(stat -c %s "$work/big.bin")
local_cap=$("$bin" --data "$work/embedded" put --no-fsync "$work/big.bin" | tail -1)
nodes_cap=$("$bin" --data "$work/client" "${servers[@]}" put "$work/big.bin" | tail -1)
garage_cap=$("$bin" --data "$work/client" --grid "$work/garage.toml" put "$work/big.bin" | tail -1)
s3s_cap=$("$bin" --data "$work/client" --grid "$work/s3s.toml" put "$work/big.bin" | tail -1)
sync

start_gateway() { # name, global arguments, then optionally -- and serve's; sets $url
  local name=$1; shift
  local global=() serve=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do global+=("$1"); shift; done
  [ $# -gt 0 ] && { shift; serve=("$@"); }
  "$bin" "${global[@]}" serve --listen 127.0.0.1:0 "${serve[@]}" > "$work/$name.url" 2> "$work/$name.log" &
  pids+=($!)
  wait_for_line "$work/$name.url"
  url=$(head -1 "$work/$name.url" | sed 's#/$##')
}
embedded_args=(--data "$work/embedded")
nodes_args=(--data "$work/client" "${servers[@]}")
garage_args=(--data "$work/client" --grid "$work/garage.toml")
s3s_args=(--data "$work/client" --grid "$work/s3s.toml")
start_gateway embedded "${embedded_args[@]}"; embedded="$url/uri/$local_cap"
start_gateway nodes "${nodes_args[@]}"; nodes="$url/uri/$nodes_cap"
start_gateway garage "${garage_args[@]}"; garage_url="$url/uri/$garage_cap"
start_gateway s3s "${s3s_args[@]}"; s3s="$url/uri/$s3s_cap"
start_gateway cached "${garage_args[@]}" -- --cache-dir "$work/cache" --cache-size 1GiB; cached="$url/uri/$garage_cap"
for u in "$embedded" "$nodes" "$garage_url" "$s3s" "$cached"; do
  code=$(curl -s -o /dev/null -r 0-0 -w '%{http_code}' "$u")
  [ "$code" = 206 ] || { echo "GET $u answered $code" >&2; exit 1; }
done
cmp <(curl -s "$garage_url") "$work/big.bin" || { echo "the Garage grid served other bytes" >&2; exit 1; }

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
pct() { sort -g | awk -v p="$1" '{a[NR]=$1} END {i=int(NR*p/100+0.999); if (i<1) i=1; print a[i]}'; }
ratio() { echo "scale=2; $1 / $2" | bc; }
full() { curl -s -o /dev/null -w '%{speed_download}\n' "$1" | awk '{print $1/1e6}'; }
range_ms() { # url, first byte, last byte
  curl -s -o /dev/null -r "$2-$3" -w '%{http_code} %{time_total}\n' "$1" |
    awk '$1 == 206 {print $2*1000} $1 != 206 {print "status " $1 > "/dev/stderr"; exit 1}'
}

echo "== 1. full-file GET of $file_mib MiB (MB/s), alternating, $full_runs runs each"
for name in embedded nodes garage s3s; do : > "$work/full.$name"; done
for _ in $(seq "$full_runs"); do
  full "$embedded" >> "$work/full.embedded"
  full "$nodes" >> "$work/full.nodes"
  full "$garage_url" >> "$work/full.garage"
  full "$s3s" >> "$work/full.s3s"
done
fe=$(median < "$work/full.embedded"); fn=$(median < "$work/full.nodes")
fg=$(median < "$work/full.garage"); fs=$(median < "$work/full.s3s")
printf '   embedded %5.0f   10 nodes %5.0f   10 Garage buckets %5.0f   10 s3s-fs buckets %5.0f MB/s\n' "$fe" "$fn" "$fg" "$fs"
printf '   Garage/nodes %s, s3s-fs/nodes %s (target >= 0.5)\n' "$(ratio "$fg" "$fn")" "$(ratio "$fs" "$fn")"

echo "== 2. $ranges random 64 KiB ranges (ms, one curl each), alternating"
offsets=()
for _ in $(seq "$ranges"); do offsets+=($(( (RANDOM * 32768 + RANDOM) % (size - 65536) ))); done
for name in embedded nodes garage s3s cached; do : > "$work/range.$name"; done
for o in "${offsets[@]}"; do
  range_ms "$embedded" "$o" $((o + 65535)) >> "$work/range.embedded"
  range_ms "$nodes" "$o" $((o + 65535)) >> "$work/range.nodes"
  range_ms "$garage_url" "$o" $((o + 65535)) >> "$work/range.garage"
  range_ms "$s3s" "$o" $((o + 65535)) >> "$work/range.s3s"
  range_ms "$cached" "$o" $((o + 65535)) > /dev/null   # fills the cache
done
for n in embedded nodes garage s3s; do
  printf '   %-9s p50 %6.2f  p99 %6.2f\n' "$n" "$(pct 50 < "$work/range.$n")" "$(pct 99 < "$work/range.$n")"
done
printf '   Garage/nodes p50 %s, s3s-fs/nodes p50 %s (target <= 3)\n' \
  "$(ratio "$(pct 50 < "$work/range.garage")" "$(pct 50 < "$work/range.nodes")")" \
  "$(ratio "$(pct 50 < "$work/range.s3s")" "$(pct 50 < "$work/range.nodes")")"

echo "== 3. cold open: a 1-byte range at EOF on a gateway just started (ms, median of 3)"
for name in embedded nodes garage s3s; do
  : > "$work/cold.$name"
  for run in 1 2 3; do
    case $name in
      embedded) args=("${embedded_args[@]}"); cap=$local_cap ;;
      nodes) args=("${nodes_args[@]}"); cap=$nodes_cap ;;
      garage) args=("${garage_args[@]}"); cap=$garage_cap ;;
      s3s) args=("${s3s_args[@]}"); cap=$s3s_cap ;;
    esac
    start_gateway "cold-$name-$run" "${args[@]}"
    range_ms "$url/uri/$cap" $((size - 1)) $((size - 1)) >> "$work/cold.$name"
    kill "${pids[-1]}"
  done
  printf '   %-9s %6.1f ms\n' "$name" "$(median < "$work/cold.$name")"
done

echo "== 4. Garage with --cache-dir: the same $ranges ranges again, cached"
for o in "${offsets[@]}"; do range_ms "$cached" "$o" $((o + 65535)) >> "$work/range.cached"; done
printf '   cached    p50 %6.2f  p99 %6.2f   cached/embedded p50 %s\n' "$(pct 50 < "$work/range.cached")" \
  "$(pct 99 < "$work/range.cached")" "$(ratio "$(pct 50 < "$work/range.cached")" "$(pct 50 < "$work/range.embedded")")"
