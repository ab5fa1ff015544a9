#!/usr/bin/env bash
# A local cluster in one command, for trying kvs and for tests.
#
#   scripts/cluster.sh start N [--port BASE] [--tls] [-- EXTRA KVS OPTIONS]
#   scripts/cluster.sh status
#   scripts/cluster.sh stop
#
# Nodes listen on 127.0.0.1 (free ports, or BASE, BASE+1, ...), keep their
# data under $KVS_CLUSTER_DIR (default ./cluster) and use fast intervals.
# Node 1 is the seed of the others. The binary is $KVS_BIN, or a release
# build of this repository (built if missing). With --tls, the nodes speak
# HTTPS with mutual TLS between them: a CA (made once, in $DIR/tls) signs a
# certificate per node, and clients use $DIR/tls/ca.pem.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${KVS_CLUSTER_DIR:-$PWD/cluster}
STATE=$DIR/nodes
FAST=(--gossip-interval-min 0.5 --gossip-interval-max 1 --sync-interval 5 --catchup-interval 2
      --failure-timeout 5 --removal-timeout 15 --antientropy-interval 10 --throttle-delay-ms 20 --fetch-delay-ms 5)

die() { echo "cluster.sh: $*" >&2; exit 1; }

binary() {
  if [ -n "${KVS_BIN:-}" ]; then echo "$KVS_BIN"; return; fi
  if [ ! -x "$ROOT/target/release/kvs" ]; then
    (cd "$ROOT" && cargo build --release >&2) || die "cargo build --release failed"
  fi
  echo "$ROOT/target/release/kvs"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_port() { # pick_port ALREADY-TAKEN...
  local p
  for _ in $(seq 1 500); do
    p=$((10000 + RANDOM % 22000))
    case " $* " in *" $p "*) continue ;; esac
    port_free "$p" && { echo "$p"; return; }
  done
  die "no free port found"
}

TLS_DIR=$DIR/tls
# http or https, as the running cluster was started.
scheme() { if [ -f "$DIR/scheme" ]; then cat "$DIR/scheme"; else echo http; fi; }
curl_node() { # curl_node PORT PATH [CURL ARGS...]
  local port=$1 path=$2; shift 2
  if [ "$(scheme)" = https ]; then
    curl --cacert "$TLS_DIR/ca.pem" "$@" "https://127.0.0.1:$port$path"
  else
    curl "$@" "http://127.0.0.1:$port$path"
  fi
}
healthy() { curl_node "$1" /health -sf --max-time 2 >/dev/null 2>&1; }

start() {
  local n=${1:-}; shift || true
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] || die "usage: cluster.sh start N [--port BASE] [--tls] [-- OPTIONS]"
  local base="" extra=() tls=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --port) base=$2; shift 2 ;;
      --tls) tls=1; shift ;;
      --) shift; extra=("$@"); break ;;
      *) die "unknown option $1" ;;
    esac
  done
  [ ! -s "$STATE" ] || die "a cluster is already running from $DIR (cluster.sh stop first)"
  command -v curl >/dev/null || die "curl is needed"
  local bin; bin=$(binary)
  mkdir -p "$DIR"
  : > "$STATE"
  if [ "$tls" -eq 1 ]; then
    echo https > "$DIR/scheme"
    mkdir -p "$TLS_DIR"
    [ -f "$TLS_DIR/ca-key.pem" ] || "$bin" tls ca --dir "$TLS_DIR" > /dev/null || die "kvs tls ca failed"
    for i in $(seq 1 "$n"); do
      [ -f "$TLS_DIR/node$i-key.pem" ] ||
        "$bin" tls cert "node$i" --dir "$TLS_DIR" --ip 127.0.0.1 --dns localhost > /dev/null ||
        die "kvs tls cert node$i failed"
    done
  else
    echo http > "$DIR/scheme"
  fi
  local ports=() i port seed=""
  for i in $(seq 1 "$n"); do
    if [ -n "$base" ]; then port=$((base + i - 1)); port_free "$port" || die "port $port is in use"
    else port=$(pick_port "${ports[@]}"); fi
    ports+=("$port")
  done
  for i in $(seq 1 "$n"); do
    port=${ports[$((i - 1))]}
    local args=(--node-id "node$i" --port "$port" --data-dir "$DIR/node$i" "${FAST[@]}")
    [ "$i" -gt 1 ] && args+=(--seed "127.0.0.1:${ports[0]}")
    [ "$tls" -eq 1 ] && args+=(--tls-cert-file "$TLS_DIR/node$i.pem" --tls-key-file "$TLS_DIR/node$i-key.pem"
                               --tls-ca-file "$TLS_DIR/ca.pem" --tls-client-auth peers)
    (cd "$DIR" && exec "$bin" "${args[@]}" "${extra[@]}" >> "$DIR/node$i.log" 2>&1) &
    echo "node$i $! $port" >> "$STATE"
  done
  for i in $(seq 1 "$n"); do
    port=${ports[$((i - 1))]}
    local deadline=$((SECONDS + 30))
    until healthy "$port"; do
      [ "$SECONDS" -lt "$deadline" ] || { stop; die "node$i did not come up (see $DIR/node$i.log)"; }
      sleep 0.1
    done
  done
  echo "started $n nodes (data and logs in $DIR):"
  for i in $(seq 1 "$n"); do echo "  node$i  $(scheme)://127.0.0.1:${ports[$((i - 1))]}"; done
  if [ "$tls" -eq 1 ]; then
    echo "clients: curl --cacert $TLS_DIR/ca.pem https://127.0.0.1:${ports[0]}/health"
    echo "         KVS_CACERT=$TLS_DIR/ca.pem kvs get KEY --addr https://127.0.0.1:${ports[0]}"
  fi
}

status() {
  [ -s "$STATE" ] || { echo "no cluster running from $DIR"; return 3; }
  local name pid port rc=0
  while read -r name pid port; do
    if ! kill -0 "$pid" 2>/dev/null; then echo "$name  $(scheme)://127.0.0.1:$port  not running"; rc=1
    else echo "$name  $(scheme)://127.0.0.1:$port  pid $pid  $(curl_node "$port" /health -s --max-time 2 || echo 'no answer')"; fi
  done < "$STATE"
  return $rc
}

stop() {
  [ -s "$STATE" ] || { echo "no cluster running from $DIR"; return 0; }
  local name pid port
  while read -r name pid port; do kill -TERM "$pid" 2>/dev/null || true; done < "$STATE"
  while read -r name pid port; do
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
      if [ "$SECONDS" -ge "$deadline" ]; then kill -KILL "$pid" 2>/dev/null || true; break; fi
      sleep 0.1
    done
    echo "stopped $name"
  done < "$STATE"
  : > "$STATE"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  status) status ;;
  stop) stop ;;
  *) echo "usage: cluster.sh start N [--port BASE] [--tls] [-- OPTIONS] | status | stop" >&2; exit 2 ;;
esac
