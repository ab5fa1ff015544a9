#!/usr/bin/env bash
# Measures kvs, never asserts. Prints one table and the commands it ran.
#
#   scripts/bench.sh [--peers] [SECTION...]
#
# --peers: the http section also measures, in the same run, nginx serving a
# fixed 200-byte body (1 worker), redis-server with appendfsync always and
# a 1-member etcd, and prints each kvs figure beside the peer's, as a ratio
# (the peers are installed with apt-get when missing).
#
# Sections (default: all but scale): http tls acks membership replication
# antientropy storage watch ops size
#   http          GET and durable PUT throughput and p50/p99 latency at
#                 1, 16 and 64 connections (wrk), idle and peak RSS
#   tls           GET at 16 and durable PUT at 1 and 64 connections over HTTPS and
#                 plain HTTP in turn (two rounds), the node's CPU per request,
#                 full TLS handshakes per second
#   acks          durable PUT at 1 and 64 connections with ?w=1, 2 and 3 on a
#                 local 3-node cluster
#   membership    time for 5 nodes to agree; kill -9 to "unhealthy" everywhere
#   replication   lag p50/p99 on 3 nodes; PUT throughput while replicating vs
#                 standalone; bootstrap time for 100 000 keys
#   antientropy   bytes and time to converge for 1, 100 and 10 000
#                 differences in 1 000 000 keys; cost of an exchange with no
#                 difference
#   storage       scrub speed over 200 000 values at the default throttle and
#                 unthrottled; durable PUT at 64 connections while a scrub
#                 runs without pause vs with no scrub
#   watch         GET at 16 and PUT at 64 connections with 0 and 400 parked
#                 blocking queries; wake-up latency from a PUT to its
#                 watcher; POST /batch of 100 puts at 64 connections; how
#                 late the last of 100 000 keys with a ttl expires
#   ops           GET /backup of 1 000 000 keys; PUT at 64 connections with
#                 and without backups running; kvs export and import of
#                 100 000 keys
#   size          binary sizes (release, static)
#   scale         (only when named) N = $SCALE_NODES nodes (default "5 20 50")
#                 with the default intervals scaled down 20x: time until every
#                 /members/ is complete, false "unhealthy" events while idle
#                 for $SCALE_IDLE s (default 180), gossip bytes/s per node,
#                 threads and RSS after 1 000 writes, time until a write is on
#                 all N, detection time after kill -9 of 10 % of the nodes
#
# Everything runs on 127.0.0.1 with the load generator on the same cores.
# BENCH_SECONDS (default 5) sets the length of each wrk run.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SECS=${BENCH_SECONDS:-5}
PEERS=0
if [ "${1:-}" = --peers ]; then PEERS=1; shift; fi
SECTIONS=("$@")
[ ${#SECTIONS[@]} -gt 0 ] || SECTIONS=(http tls acks membership replication antientropy storage watch ops size)
want() { local s; for s in "${SECTIONS[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

for tool in curl python3; do command -v "$tool" > /dev/null || { echo "bench.sh needs $tool" >&2; exit 1; }; done
if ! command -v wrk > /dev/null; then
  echo "installing wrk (Debian package)" >&2
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq wrk > /dev/null
fi
cargo build --release --locked 2>&1 | tail -n 1 >&2
BIN=${KVS_BIN:-$ROOT/target/release/kvs}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kvs-bench.XXXXXX")
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -CONT "$p" 2> /dev/null || true; kill -TERM "$p" 2> /dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2> /dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

ROWS=()
COMMANDS=()
row() { ROWS+=("$(printf '%-58s | %-22s | %s' "$1" "$2" "${3:-}")"); echo "  $1: $2" >&2; }
cmd() { COMMANDS+=("$*"); }

port_free() { ! (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null; }
free_port() {
  local p
  while :; do p=$((10000 + RANDOM % 22000)); port_free "$p" && { echo "$p"; return; }; done
}
FAST=(--gossip-interval-min 0.2 --gossip-interval-max 0.4 --sync-interval 1 --catchup-interval 0.5
      --failure-timeout 2 --removal-timeout 4 --antientropy-interval 2 --throttle-delay-ms 5 --fetch-delay-ms 2)
declare -A PORT PID KVS_FIG
# node NAME [ARGS...]: start a node with its data in $WORK/NAME.
node() {
  local name=$1; shift
  PORT[$name]=${PORT[$name]:-$(free_port)}
  (cd "$WORK" && exec "$BIN" --node-id "$name" --port "${PORT[$name]}" --data-dir "$WORK/$name" "$@" \
      >> "$WORK/$name.log" 2>&1) &
  PID[$name]=$!
  PIDS+=($!)
}
up() { local d=$((SECONDS + 60)); until curl -sf --max-time 1 "http://127.0.0.1:${PORT[$1]}/health" > /dev/null; do
  [ "$SECONDS" -lt "$d" ] || { echo "node $1 did not start" >&2; tail "$WORK/$1.log" >&2; exit 1; }; sleep 0.05; done; }
stop() { kill -TERM "${PID[$1]}" 2> /dev/null || true; wait "${PID[$1]}" 2> /dev/null || true; }
health() { curl -s --max-time 2 "http://127.0.0.1:${PORT[$1]}/health"; }
members_is() { health "$1" | grep -q "\"member_count\":$2"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
now_ms() { date +%s%3N; }

# wrk_run LABEL CONNS SCRIPT URL: prints "req/s p50_ms p99_ms".
wrk_run() {
  local conns=$2 script=$3 url=$4 threads=2
  [ "$conns" -lt 2 ] && threads=1
  local out
  out=$(wrk -t"$threads" -c"$conns" -d"${SECS}s" --latency -s "$script" "$url" 2>&1)
  echo "$out" > "$WORK/wrk.$1.$conns.txt"
  python3 - "$WORK/wrk.$1.$conns.txt" << 'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(v):
    n, unit = re.match(r"([\d.]+)(\w+)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"\s50%\s+(\S+)", text).group(1))
p99 = ms(re.search(r"\s99%\s+(\S+)", text).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
print(f"{rps:.0f} {p50:.2f} {p99:.2f} {errors.group(1) if errors else 0}")
PY
}

cat > "$WORK/put.lua" << 'LUA'
-- Durable PUTs of a ~200-byte JSON document to fresh keys.
local counter = 0
local threads = 0
function setup(thread) thread:set("tid", threads); threads = threads + 1 end
function init(args)
  body = '{"user":"bench","tags":["a","b","c"],"payload":"' .. string.rep("x", 140) .. '"}'
  headers = { ["Content-Type"] = "application/json" }
end
function request()
  counter = counter + 1
  return wrk.format("PUT", "/kv/bench/" .. tid .. "/" .. counter, headers, body)
end
LUA
cat > "$WORK/get.lua" << 'LUA'
-- GETs of random keys among 10 000 loaded ones.
function init(args) math.randomseed(os.time() + (tonumber(tostring({}):sub(8), 16) or 0)) end
function request()
  return wrk.format("GET", string.format("/kv/load/%09d", math.random(0, 9999)))
end
LUA

# ---------------------------------------------------------------- http
if want http; then
  echo "== http: GET and PUT at 1, 16, 64 connections (${SECS}s each)" >&2
  mkdir -p "$WORK"
  "$BIN" load "$WORK/h" --count 10000 --prefix load/ --size 200 > /dev/null
  cmd "$BIN load DIR --count 10000 --prefix load/ --size 200"
  node h
  up h
  sleep 1
  row "idle RSS, 10 000 keys loaded" "$(( $(rss_kb "${PID[h]}") / 1024 )) MB" "< 20 MB"
  for c in 1 16 64; do
    read -r rps p50 p99 err < <(wrk_run get "$c" "$WORK/get.lua" "http://127.0.0.1:${PORT[h]}")
    KVS_FIG[get$c]=$rps
    row "GET, $c connection(s)" "$rps req/s" "p50 $p50 ms, p99 $p99 ms, non-2xx $err$([ "$c" = 16 ] && echo ', target >= 30000 req/s')"
  done
  commits() { curl -s "http://127.0.0.1:${PORT[h]}/metrics" | awk '/^kvs_commits_total/ {c=$2} /^kvs_committed_ops_total/ {o=$2} END {print c, o}'; }
  for c in 1 16 64; do
    [ "$c" = 64 ] && read -r c0 o0 < <(commits)
    read -r rps p50 p99 err < <(wrk_run put "$c" "$WORK/put.lua" "http://127.0.0.1:${PORT[h]}")
    KVS_FIG[put$c]=$rps; KVS_FIG[put${c}p99]=$p99
    target=""; [ "$c" = 64 ] && target=", target >= 15000 req/s"; [ "$c" = 1 ] && target=", target p99 < 5 ms"
    row "durable PUT, $c connection(s)" "$rps req/s" "p50 $p50 ms, p99 $p99 ms, non-2xx $err$target"
  done
  row "peak RSS after the runs (VmHWM)" "$(( $(hwm_kb "${PID[h]}") / 1024 )) MB"
  read -r c1 o1 < <(commits)
  row "writes per commit (group commit), PUT at 64 connections" "$(awk -v c=$((c1 - c0)) -v o=$((o1 - o0)) 'BEGIN {printf "%.1f", o / c}')"
  stop h
  cmd "wrk -t2 -c{1,16,64} -d${SECS}s --latency -s get.lua|put.lua http://127.0.0.1:PORT  (scripts in scripts/bench.sh)"
fi

# --------------------------------------------------------------- peers
if [ "$PEERS" = 1 ] && want http; then
  echo "== peers: nginx (fixed 200-byte body, 1 worker), redis-server (appendfsync always), etcd (1 member)" >&2
  missing=()
  command -v nginx > /dev/null || missing+=(nginx-light)
  command -v redis-server > /dev/null || missing+=(redis-server)
  command -v etcd > /dev/null || missing+=(etcd-server)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (Debian packages; their own services are not started)" >&2
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
    policy=/usr/sbin/policy-rc.d; made_policy=0
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" > /dev/null; $sudo chmod +x "$policy"; made_policy=1; fi
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" > /dev/null || true
    [ "$made_policy" = 1 ] && $sudo rm -f "$policy"
  fi
  wait_port() { local d=$((SECONDS + 20)); until ! port_free "$1"; do [ "$SECONDS" -lt "$d" ] || return 1; sleep 0.05; done; }
  ratio() { python3 -c "r = $1 / $2; print(f'{r:.2f}x' if r >= 0.1 else f'{r:.3f}x')"; }
  if command -v nginx > /dev/null; then
    np=$(free_port); mkdir -p "$WORK/nginx"
    body=$(printf 'x%.0s' $(seq 1 200))
    cat > "$WORK/nginx/nginx.conf" << NGINX
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  server { listen 127.0.0.1:$np; location / { default_type text/plain; return 200 '$body'; } }
}
NGINX
    nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" 2> /dev/null & PIDS+=($!); ngpid=$!
    if wait_port "$np"; then
      for c in 16 64; do
        read -r rps p50 p99 _ < <(wrk_run nginx "$c" "$WORK/get.lua" "http://127.0.0.1:$np")
        row "peer: nginx, fixed 200-byte body, 1 worker, GET $c conn" "$rps req/s" "kvs GET $c conn: ${KVS_FIG[get$c]} req/s = $(ratio "${KVS_FIG[get$c]}" "$rps") (target >= 0.6x at 16)"
      done
    else row "peer: nginx" "did not start" "$(tail -n 2 "$WORK/nginx/error.log" 2> /dev/null)"; fi
    kill -TERM "$ngpid" 2> /dev/null || true; wait "$ngpid" 2> /dev/null || true
    cmd "nginx -c nginx.conf (worker_processes 1; return 200 with a 200-byte body); wrk -t2 -c{16,64} -d${SECS}s get.lua"
  fi
  if command -v redis-server > /dev/null && command -v redis-benchmark > /dev/null; then
    rp=$(free_port); mkdir -p "$WORK/redis"
    redis-server --bind 127.0.0.1 --port "$rp" --dir "$WORK/redis" --appendonly yes --appendfsync always \
      --save '' --daemonize no --logfile "$WORK/redis/log" & PIDS+=($!); rpid=$!
    if wait_port "$rp"; then
      # redis-benchmark --csv: "test","rps","avg","min","p50","p95","p99","max"
      bench_redis() { redis-benchmark -h 127.0.0.1 -p "$rp" -t set -c "$1" -d 200 -r 1000000 -n "$2" --csv | awk -F'"' '/^"SET"/ {print $4, $14}'; }
      read -r rps _ < <(bench_redis 64 $((SECS * 60000)))
      row "peer: redis SET 200 B, appendfsync always, 64 conn" "$rps req/s" "kvs durable PUT 64 conn: ${KVS_FIG[put64]} req/s = $(ratio "${KVS_FIG[put64]}" "$rps") (target >= 0.75x)"
      read -r rps p99 < <(bench_redis 1 $((SECS * 2000)))
      row "peer: redis SET 200 B, appendfsync always, 1 conn" "$rps req/s" "p99 $p99 ms; kvs PUT 1 conn p99 ${KVS_FIG[put1p99]} ms"
    else row "peer: redis-server" "did not start" "$(tail -n 2 "$WORK/redis/log" 2> /dev/null)"; fi
    kill -TERM "$rpid" 2> /dev/null || true; wait "$rpid" 2> /dev/null || true
    cmd "redis-server --appendonly yes --appendfsync always --save ''; redis-benchmark -t set -d 200 -r 1000000 -c {64,1} --csv"
  fi
  if command -v etcd > /dev/null; then
    ep=$(free_port); epp=$(free_port)
    etcd --name bench --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$ep" \
      --advertise-client-urls "http://127.0.0.1:$ep" --listen-peer-urls "http://127.0.0.1:$epp" \
      --initial-advertise-peer-urls "http://127.0.0.1:$epp" --initial-cluster "bench=http://127.0.0.1:$epp" \
      > "$WORK/etcd.log" 2>&1 & PIDS+=($!); epid=$!
    cat > "$WORK/etcd-put.lua" << 'LUA'
-- etcd v3 JSON gateway: PUT of the same ~200-byte document to fresh keys.
local counter = 0
local threads = 0
local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local idx = { math.floor(n / 262144) % 64, math.floor(n / 4096) % 64, math.floor(n / 64) % 64, n % 64 }
    out[#out + 1] = b64chars:sub(idx[1] + 1, idx[1] + 1) .. b64chars:sub(idx[2] + 1, idx[2] + 1)
      .. (b and b64chars:sub(idx[3] + 1, idx[3] + 1) or "=") .. (c and b64chars:sub(idx[4] + 1, idx[4] + 1) or "=")
  end
  return table.concat(out)
end
function setup(thread) thread:set("tid", threads); threads = threads + 1 end
function init(args)
  value = b64('{"user":"bench","tags":["a","b","c"],"payload":"' .. string.rep("x", 140) .. '"}')
  headers = { ["Content-Type"] = "application/json" }
end
function request()
  counter = counter + 1
  local body = '{"key":"' .. b64("bench/" .. tid .. "/" .. counter) .. '","value":"' .. value .. '"}'
  return wrk.format("POST", "/v3/kv/put", headers, body)
end
LUA
    if wait_port "$ep"; then
      # A first run, not counted: etcd's first writes pay for creating and
      # preallocating its WAL files (stalls of hundreds of ms).
      wrk -t1 -c1 -d2s -s "$WORK/etcd-put.lua" "http://127.0.0.1:$ep" > /dev/null 2>&1 || true
      for c in 1 64; do
        read -r rps p50 p99 err < <(wrk_run etcd "$c" "$WORK/etcd-put.lua" "http://127.0.0.1:$ep")
        if [ "$c" = 1 ]; then note="kvs PUT 1 conn p99 ${KVS_FIG[put1p99]} ms = $(ratio "${KVS_FIG[put1p99]}" "$p99") of etcd's (target <= 1x)"
        else note="kvs PUT 64 conn: ${KVS_FIG[put64]} req/s = $(ratio "${KVS_FIG[put64]}" "$rps")"; fi
        row "peer: etcd 1 member, PUT (JSON gateway), $c conn" "$rps req/s" "p50 $p50 ms, p99 $p99 ms, non-2xx $err; $note"
      done
    else row "peer: etcd" "did not start" "$(tail -n 2 "$WORK/etcd.log")"; fi
    kill -TERM "$epid" 2> /dev/null || true; wait "$epid" 2> /dev/null || true
    cmd "etcd (1 member, data in a temp dir); wrk -c{1,64} -d${SECS}s POST /v3/kv/put (etcd-put.lua in scripts/bench.sh)"
  fi
fi


# ----------------------------------------------------------------- tls
if want tls; then
  echo "== tls: HTTPS vs plain HTTP, same data, alternating (${SECS}s each)" >&2
  mkdir -p "$WORK/tls"
  "$BIN" tls ca --dir "$WORK/tls" > /dev/null
  "$BIN" tls cert node --dir "$WORK/tls" > /dev/null
  "$BIN" load "$WORK/tp" --count 10000 --prefix load/ --size 200 > /dev/null
  cp -r "$WORK/tp" "$WORK/ts"
  node tp
  node ts --tls-cert-file "$WORK/tls/node.pem" --tls-key-file "$WORK/tls/node-key.pem"
  up tp
  d=$((SECONDS + 60)); until curl -sf --max-time 1 --cacert "$WORK/tls/ca.pem" "https://127.0.0.1:${PORT[ts]}/health" > /dev/null; do
    [ "$SECONDS" -lt "$d" ] || { echo "node ts did not start" >&2; exit 1; }; sleep 0.05; done
  cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
  for kind in get put1 put; do
    c=16; script=$WORK/get.lua
    [ "$kind" = put ] && { c=64; script=$WORK/put.lua; }
    [ "$kind" = put1 ] && { c=1; script=$WORK/put.lua; }
    for round in 1 2; do
      t0=$(cpu_ticks "${PID[tp]}")
      read -r prps _ pp99 perr < <(wrk_run "tls-plain-$kind$round" "$c" "$script" "http://127.0.0.1:${PORT[tp]}")
      pcpu=$(( $(cpu_ticks "${PID[tp]}") - t0 ))
      t0=$(cpu_ticks "${PID[ts]}")
      read -r srps _ sp99 serr < <(wrk_run "tls-https-$kind$round" "$c" "$script" "https://127.0.0.1:${PORT[ts]}")
      scpu=$(( $(cpu_ticks "${PID[ts]}") - t0 ))
      per_req() { awk -v t="$1" -v r="$2" -v s="$SECS" 'BEGIN {printf "%.1f", t * 10000 / (r * s)}'; }
      row "$(echo "${kind%1}" | tr a-z A-Z) c=$c HTTPS vs plain, round $round" "$srps vs $prps req/s" \
        "$(awk -v a="$srps" -v b="$prps" 'BEGIN {printf "%.2fx", a / b}'), p99 $sp99 vs $pp99 ms, node CPU $(per_req "$scpu" "$srps") vs $(per_req "$pcpu" "$prps") us/req, non-2xx $serr/$perr, target >= 0.80x"
    done
  done
  cat > "$WORK/close.lua" << 'LUA'
-- One request per connection: every request pays a full TLS handshake.
function request() return wrk.format("GET", "/health", { ["Connection"] = "close" }) end
LUA
  read -r hrps _ hp99 _ < <(wrk_run tls-handshakes 16 "$WORK/close.lua" "https://127.0.0.1:${PORT[ts]}")
  read -r crps _ _ _ < <(wrk_run tls-plain-close 16 "$WORK/close.lua" "http://127.0.0.1:${PORT[tp]}")
  row "full TLS handshakes per second (new connection per request, c=16)" "$hrps /s" "p99 $hp99 ms; plain HTTP, new connection per request: $crps /s"
  row "RSS after the TLS runs (VmHWM)" "$(( $(hwm_kb "${PID[ts]}") / 1024 )) MB" "plain node: $(( $(hwm_kb "${PID[tp]}") / 1024 )) MB"
  stop tp; stop ts
  cmd "kvs tls ca/cert; two nodes on copies of 10 000 loaded keys, one with tls_cert_file; wrk -c16 get.lua and -c64 put.lua against http:// and https:// in turn, twice; wrk -c16 close.lua (Connection: close) for handshakes"
fi

# ---------------------------------------------------------- membership
if want membership; then
  echo "== membership: 5 nodes through one seed; kill -9 detection" >&2
  t0=$(now_ms)
  node m1 "${FAST[@]}"
  up m1
  for n in m2 m3 m4 m5; do node "$n" --seed "127.0.0.1:${PORT[m1]}" "${FAST[@]}"; done
  for n in m2 m3 m4 m5; do up "$n"; done
  t_up=$(now_ms)
  until members_is m1 5 && members_is m2 5 && members_is m3 5 && members_is m4 5 && members_is m5 5; do sleep 0.02; done
  t_agree=$(now_ms)
  rounds=$(python3 -c "print(f'{($t_agree - $t_up) / 300:.1f}')")
  row "5 nodes agree on membership, after all answer /health" "$((t_agree - t_up)) ms" "= $rounds gossip rounds (mean 0.3 s); target <= 3"
  row "5 nodes agree on membership, from the first start" "$((t_agree - t0)) ms"
  unhealthy_on() { curl -s --max-time 1 "http://127.0.0.1:${PORT[$1]}/members/" | grep -q '"id":"m5"[^}]*"state":"unhealthy"'; }
  kill -KILL "${PID[m5]}"; t_kill=$(now_ms)
  until unhealthy_on m1 && unhealthy_on m2 && unhealthy_on m3 && unhealthy_on m4; do sleep 0.02; done
  t_unh=$(now_ms)
  row "kill -9 to unhealthy on all 4 others (failure_timeout 2 s)" "$((t_unh - t_kill)) ms" "failure_timeout + < 1 gossip round"
  for n in m1 m2 m3 m4; do stop "$n"; done
  cmd "$BIN --node-id mN --port P --data-dir D --seed 127.0.0.1:P1 ${FAST[*]}"
fi


# ---------------------------------------------------------------- acks
if want acks; then
  echo "== acks: PUT at 1 and 64 connections with w=1, 2, 3 on a 3-node cluster (${SECS}s each)" >&2
  node k1 "${FAST[@]}"
  up k1
  node k2 --seed "127.0.0.1:${PORT[k1]}" "${FAST[@]}"
  node k3 --seed "127.0.0.1:${PORT[k1]}" "${FAST[@]}"
  up k2; up k3
  until members_is k1 3 && members_is k2 3 && members_is k3 3; do sleep 0.05; done
  for w in 1 2 3; do
    sed "s|\"/kv/bench/\" .. tid .. \"/\" .. counter|\"/kv/bench/w$w/\" .. tid .. \"/\" .. counter .. \"?w=$w\"|" \
      "$WORK/put.lua" > "$WORK/put-w$w.lua"
    grep -q "?w=$w" "$WORK/put-w$w.lua" || { echo "bench: could not make put-w$w.lua" >&2; exit 1; }
  done
  for c in 1 64; do
    for w in 1 2 3; do
      read -r rps p50 p99 err < <(wrk_run "acks-w$w" "$c" "$WORK/put-w$w.lua" "http://127.0.0.1:${PORT[k1]}")
      KVS_FIG[ackw${w}c$c]=$rps; KVS_FIG[ackw${w}c${c}p50]=$p50
      note="p50 $p50 ms, p99 $p99 ms, non-2xx $err"
      if [ "$w" != 1 ]; then
        note="$note; $(awk -v a="$rps" -v b="${KVS_FIG[ackw1c$c]}" 'BEGIN {printf "%.2fx", a / b}') of w=1"
        [ "$c" = 64 ] && note="$note, target >= 0.70x"
        [ "$c" = 1 ] && note="$note, p50 +$(awk -v a="$p50" -v b="${KVS_FIG[ackw1c${c}p50]}" 'BEGIN {printf "%.2f", a - b}') ms, target <= +1 ms"
      fi
      row "PUT w=$w, $c connection(s), 3 nodes" "$rps req/s" "$note"
    done
  done
  stop k1; stop k2; stop k3
  cmd "3 nodes (fast intervals); wrk -c{1,64} -d${SECS}s put.lua with ?w=1|2|3 against node 1"
fi

# --------------------------------------------------------- replication
if want replication; then
  echo "== replication: lag on 3 nodes; PUT throughput replicating vs standalone; bootstrap" >&2
  node s1
  up s1
  read -r solo _ _ _ < <(wrk_run solo 64 "$WORK/put.lua" "http://127.0.0.1:${PORT[s1]}")
  stop s1
  node r1 "${FAST[@]}"
  up r1
  node r2 --seed "127.0.0.1:${PORT[r1]}" "${FAST[@]}"
  node r3 --seed "127.0.0.1:${PORT[r1]}" "${FAST[@]}"
  up r2; up r3
  until members_is r1 3 && members_is r2 3 && members_is r3 3; do sleep 0.05; done
  python3 - "${PORT[r1]}" "${PORT[r2]}" "${PORT[r3]}" > "$WORK/lag.txt" << 'PY'
# Writes 500 keys on node 1, one at a time; for each, polls nodes 2 and 3
# over keep-alive connections until both return it. Lag = time from the
# PUT's 200 to the value being readable on the slower of the two.
import http.client, sys, time
w = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
readers = [http.client.HTTPConnection("127.0.0.1", int(p)) for p in sys.argv[2:]]
lags = []
for i in range(500):
    key = f"/kv/lag/{i}"
    w.request("PUT", key, body=b'{"i":%d}' % i)
    r = w.getresponse(); r.read()
    assert r.status == 200
    t0 = time.perf_counter()
    pending = list(readers)
    while pending:
        for c in list(pending):
            c.request("GET", key)
            r = c.getresponse(); r.read()
            if r.status == 200:
                pending.remove(c)
    lags.append((time.perf_counter() - t0) * 1000)
    time.sleep(0.002)
lags.sort()
print(f"{lags[len(lags)//2]:.2f} {lags[int(len(lags)*0.99)]:.2f} {lags[-1]:.2f}")
PY
  read -r p50 p99 pmax < "$WORK/lag.txt"
  row "replication lag, 3 nodes, write on 1, read on both others" "p50 $p50 ms" "p99 $p99 ms, max $pmax ms; target p99 < 50 ms"
  read -r repl _ _ _ < <(wrk_run repl 64 "$WORK/put.lua" "http://127.0.0.1:${PORT[r1]}")
  cost=$(python3 -c "print(f'{(1 - $repl / $solo) * 100:.0f}')")
  row "durable PUT, 64 connections, standalone" "$solo req/s"
  row "durable PUT, 64 connections, replicating to 2 peers" "$repl req/s" "cost $cost % (peers on the same 2 cores); target <= 30 %"
  for n in r1 r2 r3; do stop "$n"; done

  "$BIN" load "$WORK/b1" --count 100000 --prefix boot/ --size 200 > /dev/null
  node b1 "${FAST[@]}"
  up b1
  t0=$(now_ms)
  node b2 --seed "127.0.0.1:${PORT[b1]}" "${FAST[@]}" --throttle-delay-ms 10
  up b2
  until health b2 | grep -q '"mode":"normal"'; do sleep 0.02; done
  t1=$(now_ms)
  n=$(curl -s "http://127.0.0.1:${PORT[b2]}/metrics" | awk '/^kvs_keys / {print $2}')
  row "bootstrap of 100 000 keys (200 B), throttle_delay_ms 10" "$((t1 - t0)) ms" "$n keys on the new node; 100 pages of 1000"
  stop b1; stop b2
  cmd "python3 (lag probe, inline in scripts/bench.sh) against 3 nodes started with ${FAST[*]}"
fi

# --------------------------------------------------------- antientropy
if want antientropy; then
  echo "== anti-entropy: 1, 100, 10 000 differences in 1 000 000 keys" >&2
  old=$(( $(date +%s) * 1000 - 7200 * 1000 ))
  "$BIN" load "$WORK/base" --count 1000000 --prefix k/ --timestamp "$old" --size 60 > /dev/null
  # One fresh key on both sides, so that the catch-up each node runs at
  # start (from its newest version back one minute) sees none of the old
  # keys: only anti-entropy can find the differences.
  "$BIN" load "$WORK/base" --count 1 --prefix fresh/ > /dev/null
  cmd "$BIN load DIR --count 1000000 --prefix k/ --timestamp (2 h ago) --size 60; $BIN load DIR --count 1 --prefix fresh/; cp -r DIR DIR2; $BIN load DIR2 --count N --prefix diff/ --timestamp (2 h ago)"
  SLOW=(--sync-interval 3600 --catchup-interval 3600 --gossip-interval-min 0.2 --gossip-interval-max 0.4
        --failure-timeout 5 --removal-timeout 10 --throttle-delay-ms 0 --fetch-delay-ms 0)
  metric() { curl -s "http://127.0.0.1:${PORT[$1]}/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
  for diffs in 0 1 100 10000; do
    rm -rf "$WORK/ae1" "$WORK/ae2"
    cp -r "$WORK/base" "$WORK/ae1"; cp -r "$WORK/base" "$WORK/ae2"
    [ "$diffs" -gt 0 ] && "$BIN" load "$WORK/ae2" --count "$diffs" --prefix diff/ --timestamp "$old" --size 60 > /dev/null
    unset 'PORT[ae1]' 'PORT[ae2]'
    node ae1 "${SLOW[@]}" --antientropy-interval 3600
    node ae2 "${SLOW[@]}" --antientropy-interval 3600 --seed "127.0.0.1:${PORT[ae1]}"
    up ae1; up ae2
    until members_is ae1 2 && members_is ae2 2; do sleep 0.05; done
    # Only ae1 runs exchanges: restart it with a 1 s interval.
    stop ae1
    node ae1 "${SLOW[@]}" --antientropy-interval 1 --seed "127.0.0.1:${PORT[ae2]}"
    up ae1
    t0=$(now_ms)
    root() { curl -s "http://127.0.0.1:${PORT[$1]}/internal/tree/root"; }
    if [ "$diffs" -eq 0 ]; then
      until [ "$(metric ae1 kvs_antientropy_rounds_total)" -ge 4 ] 2> /dev/null; do sleep 0.1; done
      rounds=$(metric ae1 kvs_antientropy_rounds_total); bytes=$(metric ae1 kvs_antientropy_bytes_total)
      reqs=$(metric ae1 kvs_antientropy_requests_total)
      row "anti-entropy exchange, no difference, 1 M keys" "$((bytes / rounds)) bytes" "$((reqs / rounds)) request(s) per exchange (HTTP bodies); target < 10 KB"
    else
      until [ "$(root ae1)" = "$(root ae2)" ]; do sleep 0.05; done
      t1=$(now_ms)
      bytes=$(metric ae1 kvs_antientropy_bytes_total); reqs=$(metric ae1 kvs_antientropy_requests_total)
      target=""; [ "$diffs" = 100 ] && target="; target < 1 MB"
      row "anti-entropy, $diffs difference(s) in 1 M keys" "$bytes bytes" "$reqs requests, converged $((t1 - t0)) ms after start (interval 1 s)$target"
    fi
    stop ae1; stop ae2
  done
fi

# --------------------------------------------------------------- scale
if want scale; then
  SCALED=(--gossip-interval-min 3 --gossip-interval-max 6 --failure-timeout 15 --removal-timeout 30
          --sync-interval 15 --catchup-interval 6 --antientropy-interval 30)
  IDLE=${SCALE_IDLE:-180}
  cat > "$WORK/scale.py" << 'PY'
# Measurements over many nodes, polled with keep-alive connections.
#   agree P1 P2 ...          waits until every node counts all; prints ms
#   spread P1 P2 ...         20 writes on random nodes; prints p50 and max ms
#                            until each is readable on every node
#   detect DEAD_IDS -- P...  waits until every listed node shows each dead id
#                            as unhealthy or gone; prints ms
#   writes P N               N PUTs on one node
import http.client, json, random, sys, time

def conn(p):
    return http.client.HTTPConnection("127.0.0.1", int(p), timeout=5)

def get(c, path):
    c.request("GET", path)
    r = c.getresponse()
    return r.status, r.read()

DEADLINE_S = 300

def check(t0):
    if time.time() - t0 > DEADLINE_S:
        print("timeout")
        sys.exit(0)

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "agree":
    conns = {p: conn(p) for p in args}
    t0 = time.time()
    pending = set(args)
    while pending:
        check(t0)
        for p in list(pending):
            try:
                _, body = get(conns[p], "/health")
                if json.loads(body)["member_count"] == len(args):
                    pending.discard(p)
            except Exception:
                conns[p] = conn(p)
        time.sleep(0.05)
    print(int((time.time() - t0) * 1000))
elif cmd == "spread":
    conns = {p: conn(p) for p in args}
    lags = []
    for i in range(20):
        key = f"spread/{random.random()}"
        w = random.choice(args)
        conns[w].request("PUT", "/kv/" + key, body=b'{"v":1}')
        r = conns[w].getresponse()
        r.read()
        if r.status != 200:
            print(f"PUT on {w} answered {r.status}")
            sys.exit(0)
        t0 = time.time()
        pending = set(args) - {w}
        while pending:
            check(t0)
            for p in list(pending):
                try:
                    if get(conns[p], "/kv/" + key)[0] == 200:
                        pending.discard(p)
                except Exception:
                    conns[p] = conn(p)
        lags.append((time.time() - t0) * 1000)
    lags.sort()
    print(f"{lags[len(lags) // 2]:.0f} {lags[-1]:.0f}")
elif cmd == "detect":
    sep = args.index("--")
    dead, ports = args[:sep], args[sep + 1:]
    conns = {p: conn(p) for p in ports}
    t0 = time.time()
    pending = set(ports)
    while pending:
        check(t0)
        for p in list(pending):
            try:
                _, body = get(conns[p], "/members/")
                states = {m["id"]: m["state"] for m in json.loads(body)}
                if all(states.get(d, "gone") != "alive" for d in dead):
                    pending.discard(p)
            except Exception:
                conns[p] = conn(p)
        time.sleep(0.05)
    print(int((time.time() - t0) * 1000))
elif cmd == "writes":
    c = conn(args[0])
    for i in range(int(args[1])):
        c.request("PUT", f"/kv/scale/{i}", body=b'{"payload":"' + b"x" * 180 + b'"}')
        c.getresponse().read()
PY
  # lo_counters: bytes and packets sent on the loopback interface so far.
  lo_counters() { awk -F'[: ]+' '$2 == "lo" {print $3, $4}' /proc/net/dev; }
  for n in ${SCALE_NODES:-5 20 50}; do
    echo "== scale: $n nodes, intervals scaled down 20x, idle ${IDLE}s" >&2
    names=(); for i in $(seq 1 "$n"); do names+=("z$n-$i"); done
    node "${names[0]}" "${SCALED[@]}"
    up "${names[0]}"
    seed="127.0.0.1:${PORT[${names[0]}]}"
    for name in "${names[@]:1}"; do node "$name" --seed "$seed" "${SCALED[@]}"; done
    for name in "${names[@]:1}"; do up "$name"; done
    ports=(); for name in "${names[@]}"; do ports+=("${PORT[$name]}"); done
    agree=$(python3 "$WORK/scale.py" agree "${ports[@]}")
    row "$n nodes: every /members/ complete, after all answer" "$agree ms"
    unhealthy() { cat "$WORK"/z"$n"-*.log | grep -c "is unhealthy" || true; }
    gossip_bytes() { local t=0 name; for name in "${names[@]}"; do t=$((t + $(metric_of "$name" kvs_gossip_bytes_total))); done; echo "$t"; }
    metric_of() { curl -s --max-time 2 "http://127.0.0.1:${PORT[$1]}/metrics" | awk -v m="$2" '$1 == m {v = $2} END {print v + 0}'; }
    u0=$(unhealthy); b0=$(gossip_bytes); t0=$(now_ms)
    # The joins' news spreads during the first part of the window; the
    # last 60 s show what an idle cluster costs.
    tail_s=$(( IDLE > 120 ? 60 : IDLE / 2 ))
    sleep $((IDLE - tail_s))
    bm=$(gossip_bytes); tm=$(now_ms)
    # Everything on the wire meanwhile, from the loopback counters (only
    # these nodes talk on it during the window; the polls are outside it).
    read -r lo_b0 lo_p0 < <(lo_counters); lo_t0=$(now_ms)
    sleep "$tail_s"
    read -r lo_b1 lo_p1 < <(lo_counters); lo_t1=$(now_ms)
    u1=$(unhealthy); b1=$(gossip_bytes); t1=$(now_ms)
    row "$n nodes: false \"unhealthy\" events, ${IDLE}s idle" "$((u1 - u0))" "target 0"
    row "$n nodes: gossip bytes/s per node, ${IDLE}s after the joins" "$(( (b1 - b0) * 1000 / (t1 - t0) / n ))" "request + reply bodies of the node's own calls, news of the joins included"
    row "$n nodes: gossip bytes/s per node, idle (last ${tail_s}s)" "$(( (b1 - bm) * 1000 / (t1 - tm) / n ))" "the same, once the news has spread; target flat in N"
    # Each byte on the wire is written by one node and read by another: a
    # node's share, read + written, is 2 x total / N. Payload = what the
    # sockets carry (HTTP heads and bodies): each packet on lo also carries
    # 66 bytes of Ethernet, IP and TCP (with timestamps) headers.
    lo_ms=$((lo_t1 - lo_t0)); lo_bytes=$((lo_b1 - lo_b0)); lo_packets=$((lo_p1 - lo_p0))
    row "$n nodes: socket bytes/s per node, idle, read + written" "$(( 2 * (lo_bytes - 66 * lo_packets) * 1000 / lo_ms / n ))" "HTTP heads and bodies, both directions, every call and answer"
    row "$n nodes: wire bytes/s per node, idle, read + written" "$(( 2 * lo_bytes * 1000 / lo_ms / n ))" "the same with TCP/IP headers, handshakes and acks ($(( lo_packets * 1000 / lo_ms / n )) packets/s per node)"
    python3 "$WORK/scale.py" writes "${ports[0]}" 1000
    pid=${PID[${names[0]}]}
    row "$n nodes: threads and RSS of the writer after 1000 writes" "$(awk '/^Threads/ {print $2}' "/proc/$pid/status") threads, $(( $(rss_kb "$pid") / 1024 )) MB RSS"
    read -r p50 max < <(python3 "$WORK/scale.py" spread "${ports[@]}")
    row "$n nodes: a write readable on all nodes" "p50 $p50 ms, max $max ms" "20 writes on random nodes"
    kill_n=$(( (n + 9) / 10 )); dead=(); alive_ports=()
    for i in $(seq 0 $((n - 1))); do
      if [ "$i" -ge $((n - kill_n)) ]; then kill -KILL "${PID[${names[$i]}]}"; dead+=("${names[$i]}"); else alive_ports+=("${PORT[${names[$i]}]}"); fi
    done
    det=$(python3 "$WORK/scale.py" detect "${dead[@]}" -- "${alive_ports[@]}")
    row "$n nodes: kill -9 of $kill_n, unhealthy on all others" "$det ms" "failure_timeout 15 s"
    for name in "${names[@]}"; do kill -TERM "${PID[$name]}" 2> /dev/null || true; done
    for name in "${names[@]}"; do wait "${PID[$name]}" 2> /dev/null || true; done
  done
  cmd "SCALE_NODES='${SCALE_NODES:-5 20 50}' SCALE_IDLE=$IDLE scripts/bench.sh scale   # nodes: $BIN --seed FIRST ${SCALED[*]}"
fi

# ------------------------------------------------------------- storage
if want storage; then
  echo "== storage: scrub speed; PUT at 64 connections while a scrub runs" >&2
  "$BIN" load "$WORK/sc" --count 200000 --prefix scrub/ --size 200 > /dev/null
  cmd "$BIN load DIR --count 200000 --prefix scrub/ --size 200"
  scrub_metric() { curl -s --max-time 2 "http://127.0.0.1:${PORT[sc]}/metrics" | awk -v m="$1" '$1 == m {v = $2} END {print v + 0}'; }
  for throttle in 100 0; do
    node sc --scrub-interval 0.5 --throttle-delay-ms "$throttle"
    up sc
    # The node logs each pass with its duration.
    until grep -q "scrub: [0-9]* versions checked in" "$WORK/sc.log"; do sleep 0.05; done
    read -r checked ms < <(grep -o "scrub: [0-9]* versions checked in [0-9]* ms" "$WORK/sc.log" | head -n 1 | awk '{print $2, $6}')
    row "scrub of 200 000 values, throttle_delay_ms $throttle" "$((checked * 1000 / (ms > 0 ? ms : 1))) values/s" "$ms ms for the pass of $checked (from the node's log)"
    : > "$WORK/sc.log"
    stop sc
  done
  for scrub in 100000 0.05; do
    node sc --scrub-interval "$scrub" --throttle-delay-ms 0
    up sc
    read -r rps p50 p99 _ < <(wrk_run "scrub$scrub" 64 "$WORK/put.lua" "http://127.0.0.1:${PORT[sc]}")
    label="no scrub"; [ "$scrub" = 0.05 ] && label="a scrub pass every 0.05 s, unthrottled ($(scrub_metric kvs_scrub_runs_total) passes in the run)"
    row "durable PUT, 64 connections, $(echo "$label" | cut -c1-30)" "$rps req/s" "p50 $p50 ms, p99 $p99 ms; $label"
    stop sc
  done
  cmd "$BIN --scrub-interval S --throttle-delay-ms T   # on the loaded directory"
fi

# --------------------------------------------------------------- watch
if want watch; then
  echo "== watch: 400 parked watchers; wake-up latency; /batch; expiry of 100 000 keys" >&2
  "$BIN" load "$WORK/wt" --count 10000 --prefix load/ --size 200 > /dev/null
  node wt
  up wt
  base="http://127.0.0.1:${PORT[wt]}"
  cat > "$WORK/watchers.py" << 'PY'
# Opens N blocking GETs (wait 10m) on keys nobody writes, keeps them open
# until stdin closes.
import socket, sys, urllib.request
port, n = int(sys.argv[1]), int(sys.argv[2])
index = urllib.request.urlopen(f"http://127.0.0.1:{port}/kv/w/?keys").headers["X-Kvs-Index"]
socks = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET /kv/w/{i}?index={index}&wait=10m HTTP/1.1\r\nHost: b\r\n\r\n".encode())
    socks.append(s)
print("open", flush=True)
sys.stdin.read()
PY
  parked() { curl -s "$base/metrics" | awk '/^kvs_parked_requests/ {print $2}'; }
  for watchers in 0 400; do
    if [ "$watchers" -gt 0 ]; then
      mkfifo "$WORK/hold"
      python3 "$WORK/watchers.py" "${PORT[wt]}" "$watchers" < "$WORK/hold" > "$WORK/watchers.out" &
      WPID=$!; PIDS+=("$WPID")
      exec 7> "$WORK/hold"
      d=$((SECONDS + 30)); until [ "$(parked)" = "$watchers" ] || [ "$SECONDS" -ge "$d" ]; do sleep 0.1; done
    fi
    read -r grps gp50 gp99 _ < <(wrk_run "get$watchers" 16 "$WORK/get.lua" "$base")
    read -r prps pp50 pp99 _ < <(wrk_run "put$watchers" 64 "$WORK/put.lua" "$base")
    row "GET, 16 connections, $watchers parked watchers" "$grps req/s" "p50 $gp50 ms, p99 $gp99 ms ($(parked) parked during the run)"
    row "durable PUT, 64 connections, $watchers parked watchers" "$prps req/s" "p50 $pp50 ms, p99 $pp99 ms"
  done
  exec 7>&-; wait "$WPID" 2> /dev/null || true
  cat > "$WORK/wake.py" << 'PY'
# For 200 keys: park a blocking GET on the key, PUT the key on another
# connection, and time from sending the PUT to the watcher's answer, and
# from the PUT's 200 (committed) to the watcher's answer.
import http.client, socket, sys, time, urllib.request
port = int(sys.argv[1])
put = http.client.HTTPConnection("127.0.0.1", port)
sent, after = [], []
for i in range(200):
    put.request("GET", f"/kv/wake/{i}")
    r = put.getresponse(); r.read()
    index = r.getheader("X-Kvs-Index")
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET /kv/wake/{i}?index={index}&wait=60s HTTP/1.1\r\nHost: b\r\n\r\n".encode())
    time.sleep(0.005)
    t0 = time.perf_counter()
    put.request("PUT", f"/kv/wake/{i}", body=b'{"n":1}')
    r = put.getresponse(); r.read()
    t1 = time.perf_counter()
    s.recv(65536)
    t2 = time.perf_counter()
    s.close()
    sent.append((t2 - t0) * 1000)
    after.append(max(0.0, (t2 - t1) * 1000))
def pct(v, p):
    v = sorted(v); return v[min(len(v) - 1, int(len(v) * p))]
print(f"{pct(sent, .5):.2f} {pct(sent, .99):.2f} {pct(after, .5):.2f} {pct(after, .99):.2f}")
PY
  read -r s50 s99 a50 a99 < <(python3 "$WORK/wake.py" "${PORT[wt]}")
  row "wake-up: PUT sent -> watcher answered" "p50 $s50 ms" "p99 $s99 ms (includes the commit's fsync)"
  row "wake-up: PUT answered (committed) -> watcher answered" "p50 $a50 ms" "p99 $a99 ms"
  cat > "$WORK/batch.lua" << 'LUA'
-- POST /batch of 100 puts of ~200-byte documents to fresh keys.
local counter = 0
local threads = 0
function setup(thread) thread:set("tid", threads); threads = threads + 1 end
function init(args)
  doc = '{"user":"bench","tags":["a","b","c"],"payload":"' .. string.rep("x", 140) .. '"}'
  headers = { ["Content-Type"] = "application/json" }
end
function request()
  local ops = {}
  for i = 1, 100 do
    counter = counter + 1
    ops[i] = '{"op":"put","key":"batch/' .. tid .. '/' .. counter .. '","value":' .. doc .. '}'
  end
  return wrk.format("POST", "/batch", headers, "[" .. table.concat(ops, ",") .. "]")
end
LUA
  read -r brps bp50 bp99 _ < <(wrk_run batch 64 "$WORK/batch.lua" "$base")
  row "POST /batch of 100 puts, 64 connections" "$((brps * 100)) keys/s" "$brps batches/s, p50 $bp50 ms, p99 $bp99 ms (single PUTs: $prps keys/s above)"
  cat > "$WORK/ttl.py" << 'PY'
# Writes N keys with ?ttl=T from 8 threads, then waits until the node has
# expired all of them; prints the time from the last key's expiry to the
# moment kvs_expired_total counts them all, and the write rate.
import http.client, json, sys, threading, time
port, n, ttl = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def metric(name):
    c = http.client.HTTPConnection("127.0.0.1", port); c.request("GET", "/metrics")
    for line in c.getresponse().read().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0
before = metric("kvs_expired_total")
latest = [0]
def writer(t):
    c = http.client.HTTPConnection("127.0.0.1", port)
    last = 0
    for i in range(t, n, 8):
        c.request("PUT", f"/kv/ttl/{i}?ttl={ttl}", body=b'{"s":1}')
        last = max(last, json.loads(c.getresponse().read())["timestamp"])
    latest.append(last)
t0 = time.time()
ts = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
for t in ts: t.start()
for t in ts: t.join()
wrote = time.time() - t0
deadline = (max(latest) + ttl * 1000) / 1000.0
while metric("kvs_expired_total") - before < n:
    time.sleep(0.02)
print(f"{(time.time() - deadline) * 1000:.0f} {n / wrote:.0f}")
PY
  read -r late wrate < <(python3 "$WORK/ttl.py" "${PORT[wt]}" 100000 20)
  row "expiry of 100 000 keys (ttl 20 s): last one gone after its deadline" "$late ms" "written at $wrate keys/s from 8 threads"
  stop wt
  cmd "python3 watchers.py PORT 400 (400 blocking GETs), wrk as in http; wake.py, batch.lua, ttl.py in scripts/bench.sh"
fi

# ----------------------------------------------------------------- ops
if want ops; then
  echo "== ops: backup of 1 000 000 keys under write load; export and import of 100 000 keys" >&2
  t0=$(now_ms)
  "$BIN" load "$WORK/op" --count 1000000 --prefix load/ --size 200 > /dev/null
  row "kvs load of 1 000 000 keys (200 B values, offline)" "$(( $(now_ms) - t0 )) ms"
  node op
  up op
  base="http://127.0.0.1:${PORT[op]}"
  t0=$(now_ms)
  curl -s -o "$WORK/op.mdb" "$base/backup"
  t1=$(now_ms)
  row "GET /backup of 1 000 000 keys, idle node" "$((t1 - t0)) ms" "$(stat -c %s "$WORK/op.mdb") bytes; data.mdb is $(stat -c %s "$WORK/op/data.mdb") bytes"
  read -r rps0 p50a p99a _ < <(wrk_run opput0 64 "$WORK/put.lua" "$base")
  # Back-to-back backups for the whole wrk run.
  # To /dev/null: the cost on the node, not of writing the copy to this disk.
  ( while :; do curl -s -o /dev/null "$base/backup" || true; echo x >> "$WORK/backups"; done ) &
  BPID=$!; PIDS+=("$BPID")
  read -r rps1 p50b p99b _ < <(wrk_run opput1 64 "$WORK/put.lua" "$base")
  kill "$BPID" 2> /dev/null || true; wait "$BPID" 2> /dev/null || true
  row "durable PUT, 64 connections, no backup" "$rps0 req/s" "p50 $p50a ms, p99 $p99a ms"
  row "durable PUT, 64 connections, backups back to back" "$rps1 req/s" "p50 $p50b ms, p99 $p99b ms; $(wc -l < "$WORK/backups") backups finished in ${SECS} s"
  stop op
  "$BIN" load "$WORK/ex" --count 100000 --prefix load/ --size 200 > /dev/null
  node ex
  node im
  up ex
  up im
  t0=$(now_ms)
  KVS_ADDR="127.0.0.1:${PORT[ex]}" "$BIN" export > "$WORK/ex.jsonl" 2> /dev/null
  t1=$(now_ms)
  KVS_ADDR="127.0.0.1:${PORT[im]}" "$BIN" import "$WORK/ex.jsonl" 2> /dev/null
  t2=$(now_ms)
  row "kvs export of 100 000 keys" "$((100000 * 1000 / (t1 - t0))) keys/s" "$((t1 - t0)) ms, $(wc -l < "$WORK/ex.jsonl") lines"
  row "kvs import of 100 000 keys (POST /batch of 1 000)" "$((100000 * 1000 / (t2 - t1))) keys/s" "$((t2 - t1)) ms"
  stop ex
  stop im
  cmd "$BIN load DIR --count 1000000 --size 200; curl -o F /backup; wrk PUT c=64 with and without back-to-back backups; kvs export | kvs import"
fi

# ---------------------------------------------------------------- size
if want size; then
  row "release binary (dynamic glibc), stripped" "$(stat -c %s "$ROOT/target/release/kvs") bytes"
  static=$ROOT/target/x86_64-unknown-linux-gnu/release/kvs
  if [ -x "$static" ]; then row "static binary (scripts/build-static.sh)" "$(stat -c %s "$static") bytes" "target < 6 MB (with TLS)"; fi
fi

echo
echo "kvs $("$BIN" --version | cut -d' ' -f2), $(nproc) cores, $(date -u +%Y-%m-%d)"
printf '%-58s | %-22s | %s\n' "measure" "value" "notes"
printf '%s\n' "-----------------------------------------------------------+------------------------+------------------------------"
printf '%s\n' "${ROWS[@]}"
echo
echo "commands:"
printf '  %s\n' "scripts/bench.sh $([ "$PEERS" = 1 ] && echo '--peers ')${SECTIONS[*]}" "${COMMANDS[@]}"
