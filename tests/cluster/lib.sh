# shellcheck shell=bash
# Helpers for the shell cluster tests: real nodes on free 127.0.0.1 ports,
# every wait polled against a deadline, every started process stopped by PID
# on exit (trap), and the node logs printed when a test fails.
#
# A test sources this file, then uses start_node / wait_healthy / wait_until
# / expect_* and ends with `pass`.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KVS_BIN=${KVS_BIN:-$ROOT/target/release/kvs}
TEST_NAME=$(basename "$0" .sh)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/kvs-$TEST_NAME.XXXXXX")
: > "$WORK/ports"

declare -A NODE_PID=() NODE_PORT=() NODE_DIR=() NODE_LOG=()

# Intervals for fast clusters (seconds).
FAST=(--gossip-interval-min 0.2 --gossip-interval-max 0.4 --sync-interval 1
      --catchup-interval 0.5 --failure-timeout 2 --removal-timeout 4
      --antientropy-interval 2 --throttle-delay-ms 5 --fetch-delay-ms 2)

[ -x "$KVS_BIN" ] || { echo "FAIL: $KVS_BIN is missing (cargo build --release)" >&2; exit 1; }

# KVS_TLS=1 runs the same test over TLS: every node speaks HTTPS with a
# certificate from a CA made for the test, peers authenticate with theirs
# (tls_client_auth: peers), and every helper below talks HTTPS.
SCHEME=http
TLS_ARGS=()
if [ "${KVS_TLS:-0}" = 1 ]; then
  mkdir -p "$WORK/tls"
  "$KVS_BIN" tls ca --dir "$WORK/tls" > /dev/null
  "$KVS_BIN" tls cert node --dir "$WORK/tls" > /dev/null
  TLS_ARGS=(--tls-cert-file "$WORK/tls/node.pem" --tls-key-file "$WORK/tls/node-key.pem"
            --tls-ca-file "$WORK/tls/ca.pem" --tls-client-auth peers)
  SCHEME=https
  curl() { command curl --cacert "$WORK/tls/ca.pem" "$@"; }
  export KVS_CACERT=$WORK/tls/ca.pem
fi

# Commands a test adds to run first at exit (e.g. unmounting what it mounted).
CLEANUP_FIRST=()

_cleanup() {
  local rc=$?
  local name pid
  for name in "${!NODE_PID[@]}"; do
    pid=${NODE_PID[$name]}
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
  done
  for name in "${!NODE_PID[@]}"; do
    pid=${NODE_PID[$name]}
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  for cmd in "${CLEANUP_FIRST[@]}"; do eval "$cmd" || true; done
  if [ "$rc" -ne 0 ]; then
    for name in "${!NODE_LOG[@]}"; do
      echo "----- log of $name (last 40 lines) -----" >&2
      tail -n 40 "${NODE_LOG[$name]}" >&2 2>/dev/null || true
    done
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap _cleanup EXIT
trap 'exit 130' INT TERM
# A command that fails outside a condition ends the test (set -e): say which
# (top-level commands only, so that failures inside conditions stay quiet).
trap 'echo "FAIL [$TEST_NAME]: line $LINENO: \"$BASH_COMMAND\" exited with $?" >&2' ERR

fail() { echo "FAIL [$TEST_NAME]: $*" >&2; exit 1; }
step() { echo "  - $*"; }
pass() { echo "ok: $TEST_NAME"; }

# A free TCP port on 127.0.0.1, below the ephemeral range, not handed out
# before in this test.
free_port() {
  local p
  for _ in $(seq 1 500); do
    p=$((10000 + RANDOM % 22000))
    grep -qx "$p" "$WORK/ports" && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p" >> "$WORK/ports"
      echo "$p"
      return 0
    fi
  done
  fail "no free port found"
}

# new_node NAME: give NAME a port and a data directory (not started).
new_node() {
  local name=$1
  NODE_PORT[$name]=$(free_port)
  NODE_DIR[$name]=$WORK/$name
  NODE_LOG[$name]=$WORK/$name.log
}

# start_node NAME [ARGS...]: start (or restart) NAME in the background.
start_node() {
  local name=$1; shift
  [ -n "${NODE_PORT[$name]:-}" ] || new_node "$name"
  (cd "$WORK" && exec "$KVS_BIN" --node-id "$name" --port "${NODE_PORT[$name]}" \
      --data-dir "${NODE_DIR[$name]}" "${TLS_ARGS[@]}" "$@" >> "${NODE_LOG[$name]}" 2>&1) &
  NODE_PID[$name]=$!
}

addr() { echo "127.0.0.1:${NODE_PORT[$1]}"; }
url() { echo "$SCHEME://127.0.0.1:${NODE_PORT[$1]}$2"; }
pid_of() { echo "${NODE_PID[$1]}"; }

# seeds NAME...: --seed flags for those nodes.
seeds() {
  local n
  for n in "$@"; do printf -- '--seed 127.0.0.1:%s ' "${NODE_PORT[$n]}"; done
}

# now_ms: the wall clock in milliseconds. Deadlines use it, not $SECONDS,
# which counts whole seconds (a "1 s" wait on $SECONDS lasts 0 to 1 s).
now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $((t / 1000)); }

# ms_of SECONDS: "1.5" -> 1500 (whole or decimal seconds).
ms_of() {
  local whole=${1%%.*} frac=000
  [[ $1 == *.* ]] && frac="${1#*.}000"
  echo $(( 10#${whole:-0} * 1000 + 10#${frac:0:3} ))
}

# wait_until SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds;
# SECONDS may have a fraction.
wait_until() {
  local limit=$1 desc=$2; shift 2
  local deadline=$(( $(now_ms) + $(ms_of "$limit") ))
  while ! "$@" >/dev/null 2>&1; do
    if [ "$(now_ms)" -ge "$deadline" ]; then fail "timed out after ${limit}s waiting for: $desc"; fi
    sleep 0.05
  done
}

# is_healthy NAME: the node answers /health (200: it takes writes; 503:
# it is up but does not, while syncing or after leaving).
is_healthy() {
  case "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$(url "$1" /health)")" in
    200|503) return 0 ;;
  esac
  return 1
}

# wait_healthy NAME [SECONDS]: the node answers /health.
wait_healthy() {
  local name=$1 limit=${2:-20}
  local deadline=$(( $(now_ms) + $(ms_of "$limit") ))
  while ! is_healthy "$name"; do
    kill -0 "${NODE_PID[$name]}" 2>/dev/null || fail "node $name exited during start"
    [ "$(now_ms)" -lt "$deadline" ] || fail "node $name not healthy within ${limit}s"
    sleep 0.05
  done
}

# stop_node NAME: SIGTERM, wait for exit (bounded), require exit code 0.
stop_node() {
  local name=$1 pid=${NODE_PID[$1]} rc=0
  kill -TERM "$pid"
  local deadline=$(( $(now_ms) + 15000 ))
  while kill -0 "$pid" 2>/dev/null; do
    [ "$(now_ms)" -lt "$deadline" ] || fail "node $name did not exit within 15s of SIGTERM"
    sleep 0.05
  done
  wait "$pid" || rc=$?
  [ "$rc" -eq 0 ] || fail "node $name exited with $rc after SIGTERM"
  unset "NODE_PID[$name]"
}

# kill9_node NAME: SIGKILL and reap.
kill9_node() {
  local pid=${NODE_PID[$1]}
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset "NODE_PID[$1]"
}

# json_field JSON FIELD: a top-level scalar field of a JSON object.
json_field() {
  printf '%s' "$1" | grep -o "\"$2\":[^,}]*" | head -n1 | cut -d: -f2- | tr -d '"'
}

health_field() { json_field "$(curl -s --max-time 2 "$(url "$1" /health)")" "$2"; }

# member_count NAME: healthy members as NAME's /health reports them.
member_count() { health_field "$1" member_count; }

# status METHOD URL [CURL ARGS...]: the HTTP status code only.
status() {
  local method=$1 u=$2; shift 2
  curl -s --path-as-is --max-time 10 -o /dev/null -w '%{http_code}' -X "$method" "$@" "$u"
}

expect_eq() {
  [ "$1" = "$2" ] || fail "$3: expected [$2], got [$1]"
}

# expect_status CODE METHOD URL [CURL ARGS...]
expect_status() {
  local want=$1; shift
  local got
  got=$(status "$@")
  [ "$got" = "$want" ] || fail "$1 $2: expected status $want, got $got"
}

# get NAME KEY: the stored value (empty on 404).
get() { curl -sf --max-time 5 "$(url "$1" "/kv/$2")" || true; }

# put NAME KEY JSON
put() { curl -sf --max-time 10 -X PUT --data-binary "$3" "$(url "$1" "/kv/$2")" >/dev/null; }

has_value() { [ "$(get "$1" "$2")" = "$3" ]; }
lacks_key() { [ "$(status GET "$(url "$1" "/kv/$2")")" = "404" ]; }

# batch FILE: run the requests in FILE, one per line as "METHOD URL [BODY]",
# in one curl process (curl's own start-up dominates one request); prints
# one HTTP status code per request, in order (000 when it failed).
batch() {
  local cfg=$WORK/batch.$BASHPID.$RANDOM first=1 method u body
  : > "$cfg"
  while read -r method u body; do
    [ "$first" -eq 1 ] || echo next >> "$cfg"
    first=0
    printf 'url = "%s"\nrequest = "%s"\noutput = "/dev/null"\nwrite-out = "%%{http_code}\\n"\nmax-time = 10\nsilent\n' \
      "$u" "$method" >> "$cfg"
    # Options do not carry over `next`: each request names the CA.
    [ "$SCHEME" = https ] && printf 'cacert = "%s"\n' "$WORK/tls/ca.pem" >> "$cfg"
    if [ -n "$body" ]; then
      printf 'data-binary = "%s"\n' "$(printf '%s' "$body" | sed 's/\\/\\\\/g; s/"/\\"/g')" >> "$cfg"
    fi
  done < "$1"
  curl -K "$cfg" || true
  rm -f "$cfg"
}

# put_many NODE PREFIX N: PUT PREFIX1..PREFIXN with values 1..N; fails
# unless every request got 200.
put_many() {
  local f=$WORK/many.$BASHPID.$RANDOM i base
  base=$(url "$1" "/kv/$2")
  for i in $(seq 1 "$3"); do echo "PUT $base$i $i"; done > "$f"
  local bad
  bad=$(batch "$f" | grep -vc '^200$' || true)
  rm -f "$f"
  [ "$bad" -eq 0 ] || fail "put_many $1 $2: $bad of $3 writes failed"
}

# count_keys NODE PREFIX: keys under PREFIX (up to 10000).
count_keys() {
  curl -s --max-time 10 "$(url "$1" "/kv/$2?keys&limit=10000")" | grep -o "\"$2[^\"]*\"" | wc -l | tr -d ' '
}

# wait_ready NAME [SECONDS]: healthy and past bootstrap (mode not syncing),
# so that client writes are accepted.
wait_ready() {
  local name=$1 limit=${2:-20}
  wait_healthy "$name" "$limit"
  _not_syncing() { [ "$(health_field "$1" mode)" != syncing ]; }
  wait_until "$limit" "$name finishes bootstrapping" _not_syncing "$name"
}

# metric NAME METRIC: a counter or gauge from NAME's /metrics (0 if absent).
metric() {
  curl -s --max-time 2 "$(url "$1" /metrics)" | awk -v m="$2" '$1 == m {v = $2} END {print v + 0}'
}

# wait_rounds NAME METRIC N [SECONDS]: wait until the counter METRIC of
# NAME has grown by N, i.e. N more rounds of that background task ran.
wait_rounds() {
  local name=$1 m=$2 n=$3 limit=${4:-30}
  local start; start=$(metric "$name" "$m")
  _grown() { [ "$(metric "$1" "$2")" -ge "$3" ]; }
  wait_until "$limit" "$n more $m on $name" _grown "$name" "$m" $((start + n))
}

# flip_bits FILE MARKER...: flips one bit (the third byte's lowest) in every
# copy of each MARKER in FILE (LMDB keeps old copies of pages, so every copy
# is damaged to be sure the live one is); fails if a marker is not found.
flip_bits() {
  python3 - "$@" << 'PY'
import sys
path = sys.argv[1]
data = bytearray(open(path, "rb").read())
for marker in sys.argv[2:]:
    marker, n = marker.encode(), 0
    at = data.find(marker)
    while at >= 0:
        data[at + 2] ^= 0x01
        n += 1
        at = data.find(marker, at + 1)
    if n == 0:
        sys.exit(f"flip_bits: {marker!r} not found in {path}")
open(path, "wb").write(data)
PY
}

# start_pair A B: a 2-node cluster with fast intervals (B seeded with A),
# both ready for client writes and each listing the other.
start_pair() {
  start_node "$1" "${FAST[@]}"
  wait_healthy "$1"
  start_node "$2" $(seeds "$1") "${FAST[@]}"
  wait_ready "$2"
  _two_members() { [ "$(member_count "$1")" = 2 ]; }
  wait_until 10 "$1 sees 2 members" _two_members "$1"
  wait_until 10 "$2 sees 2 members" _two_members "$2"
}
