#!/usr/bin/env bash
# TLS (DESIGN §11): `kvs tls ca` / `kvs tls cert` (never overwriting a key,
# keys 0600); a 3-node cluster over HTTPS with mutual TLS for the internal
# endpoints and no cluster secret; plain HTTP on the port gets a 400 and a
# close; the CLI over https; bad files stop the start naming the file; a
# peer with a certificate from another CA is named in /health; SIGHUP
# reloads the certificate (a bad one keeps the old set); attacks on the
# handshake never stop a fresh client; tls_client_auth all refuses clients
# without a certificate.
source "$(dirname "$0")/lib.sh"

CA=$WORK/tls
mkdir -p "$CA"
# Every helper of lib.sh speaks HTTPS to these nodes, checking the CA.
curl() { command curl --cacert "$CA/ca.pem" "$@"; }
url() { echo "https://127.0.0.1:${NODE_PORT[$1]}$2"; }

step "kvs tls ca and kvs tls cert write a CA and a node certificate, never overwriting"
"$KVS_BIN" tls ca --dir "$CA" > /dev/null || fail "kvs tls ca failed"
"$KVS_BIN" tls cert node --dir "$CA" --ip 127.0.0.1 --dns localhost > /dev/null || fail "kvs tls cert failed"
for f in ca-key.pem node-key.pem; do
  expect_eq "$(stat -c %a "$CA/$f")" 600 "mode of $f"
done
before=$(sha256sum "$CA/ca-key.pem")
rc=0; "$KVS_BIN" tls ca --dir "$CA" > "$WORK/again.out" 2>&1 || rc=$?
expect_eq "$rc" 1 "kvs tls ca over an existing CA"
grep -q "never overwritten" "$WORK/again.out" || fail "no reason given: $(cat "$WORK/again.out")"
expect_eq "$(sha256sum "$CA/ca-key.pem")" "$before" "the CA key after a refused kvs tls ca"
rc=0; "$KVS_BIN" tls cert node --dir "$CA" > /dev/null 2>&1 || rc=$?
expect_eq "$rc" 1 "kvs tls cert over an existing certificate"

TLS=(--tls-cert-file "$CA/node.pem" --tls-key-file "$CA/node-key.pem" --tls-ca-file "$CA/ca.pem"
     --tls-client-auth peers --client-tokens '[tok]')
H=(-H "Authorization: Bearer tok")

step "three nodes over HTTPS with mutual TLS between them and no cluster secret"
start_node a "${FAST[@]}" "${TLS[@]}"
wait_ready a
start_node b "${FAST[@]}" "${TLS[@]}" $(seeds a)
start_node c "${FAST[@]}" "${TLS[@]}" $(seeds a)
wait_ready b; wait_ready c
_three() { [ "$(member_count "$1")" = 3 ]; }
for n in a b c; do wait_until 10 "$n sees 3 members" _three "$n"; done
expect_eq "$(curl -s "${H[@]}" -X PUT --data-binary '{"tls":1}' -o /dev/null -w '%{http_code}' "$(url a /kv/secure/one)")" 200 "PUT over HTTPS"
_replicated() { [ "$(curl -s "${H[@]}" "$(url "$1" /kv/secure/one)")" = '{"tls":1}' ]; }
wait_until 5 "the write on b" _replicated b
wait_until 5 "the write on c" _replicated c
grep -q "TLS: the port speaks HTTPS only" "${NODE_LOG[a]}" || fail "the start does not say TLS is on"
grep -q "does not name" "${NODE_LOG[a]}" && fail "the certificate names 127.0.0.1 but a warning says otherwise"

step "keep-alive: several requests on one TLS connection"
out=$(curl -s "${H[@]}" -w '\n%{num_connects}\n' "$(url a /kv/secure/one)" "$(url a /kv/secure/one)" "$(url a /kv/secure/one)")
expect_eq "$(grep -c '{"tls":1}' <<< "$out")" 3 "three answers"
expect_eq "$(grep -c '^0$' <<< "$out")" 2 "two requests reusing the connection"

step "plain HTTP on the TLS port: 400 saying so, then close"
plain=$(command curl -s --max-time 5 -i "http://127.0.0.1:${NODE_PORT[a]}/kv/secure/one" || true)
[[ $plain == *"400 Bad Request"* && $plain == *"HTTPS"* ]] || fail "plain HTTP got: $plain"

step "internal endpoints need a client certificate from the CA"
expect_eq "$(curl -s -o /dev/null -w '%{http_code}' -X POST --data-binary '[]' "$(url a /internal/push)")" 401 "push without a certificate"
body=$(curl -s -X POST --data-binary '[]' "$(url a /internal/push)")
[[ $body == *"client certificate required"* ]] || fail "the refusal does not say why: $body"
code=$(curl -s -o /dev/null -w '%{http_code}' --cert "$CA/node.pem" --key "$CA/node-key.pem" \
  "$(url a '/internal/tree/root')")
[ "$code" != 401 ] || fail "a certified call was refused"
metrics=$(curl -s "${H[@]}" "$(url a /metrics)")
grep -q '^kvs_auth_failures_total{reason="client_certificate"} [1-9]' <<< "$metrics" || fail "the refusal is not counted"
grep -q '^kvs_tls_cert_expiry_timestamp_seconds [0-9]' <<< "$metrics" || fail "no certificate expiry in /metrics"

step "the CLI speaks HTTPS with --cacert or \$KVS_CACERT (a backup included)"
KVS_TOKEN=tok "$KVS_BIN" put cli/x '{"c":1}' --addr "https://127.0.0.1:${NODE_PORT[b]}" --cacert "$CA/ca.pem" > /dev/null \
  || fail "kvs put over https failed"
got=$(KVS_TOKEN=tok KVS_CACERT=$CA/ca.pem KVS_ADDR=https://127.0.0.1:${NODE_PORT[b]} "$KVS_BIN" get cli/x)
expect_eq "$got" '{"c":1}' "kvs get over https"
rc=0; KVS_TOKEN=tok "$KVS_BIN" get cli/x --addr "https://127.0.0.1:${NODE_PORT[b]}" --cacert "$CA/node-key.pem" > /dev/null 2>&1 || rc=$?
expect_eq "$rc" 2 "a --cacert without a certificate"
KVS_TOKEN=tok KVS_CACERT=$CA/ca.pem "$KVS_BIN" backup "$WORK/b.mdb" --addr "https://127.0.0.1:${NODE_PORT[b]}" > /dev/null 2>&1 \
  || fail "kvs backup over https failed"
"$KVS_BIN" restore "$WORK/b.mdb" "$WORK/restored" > /dev/null || fail "the backup taken over https does not restore"
"$KVS_BIN" verify "$WORK/restored" > /dev/null || fail "the backup taken over https does not verify"

step "a peer with a certificate from another CA is named in /health"
OTHER=$WORK/other
mkdir -p "$OTHER"
"$KVS_BIN" tls ca --dir "$OTHER" > /dev/null
"$KVS_BIN" tls cert node --dir "$OTHER" > /dev/null
start_node d "${FAST[@]}" --join-timeout 30 --tls-cert-file "$OTHER/node.pem" --tls-key-file "$OTHER/node-key.pem" \
  --tls-ca-file "$OTHER/ca.pem" --tls-client-auth peers $(seeds a)
_d_health() { command curl -s --max-time 2 --cacert "$OTHER/ca.pem" "https://127.0.0.1:${NODE_PORT[d]}/health"; }
_named() { _d_health | grep -qi 'certificate'; }
wait_until 10 "d's /health names the certificate problem" _named
expect_eq "$(member_count a)" 3 "a's members with d refused"

step "SIGHUP reloads the certificate; a bad file keeps the old one"
old_expiry=$(curl -s "${H[@]}" "$(url a /metrics)" | awk '$1 == "kvs_tls_cert_expiry_timestamp_seconds" {print $2}')
mv "$CA/node.pem" "$CA/node-old.pem"; mv "$CA/node-key.pem" "$CA/node-old-key.pem"
"$KVS_BIN" tls cert node --dir "$CA" --ip 127.0.0.1 --days 10 > /dev/null
kill -HUP "$(pid_of a)"
wait_until 5 "the reload is logged" grep -q "SIGHUP: TLS certificate, key and CA reloaded" "${NODE_LOG[a]}"
wait_until 5 "the expiry warning" grep -q "expires in [0-9]* days" "${NODE_LOG[a]}"
new_expiry=$(curl -s "${H[@]}" "$(url a /metrics)" | awk '$1 == "kvs_tls_cert_expiry_timestamp_seconds" {print $2}')
[ "$new_expiry" != "$old_expiry" ] || fail "the expiry did not change after SIGHUP ($old_expiry)"
served=$(echo | openssl s_client -connect "127.0.0.1:${NODE_PORT[a]}" -CAfile "$CA/ca.pem" 2>/dev/null | openssl x509 -noout -fingerprint -sha256)
expect_eq "$served" "$(openssl x509 -in "$CA/node.pem" -noout -fingerprint -sha256)" "the certificate a new handshake gets"
echo "garbage" > "$CA/node.pem"
kill -HUP "$(pid_of a)"
wait_until 5 "the refusal is logged" grep -q "SIGHUP: the TLS files were not reloaded (tls_cert_file" "${NODE_LOG[a]}"
expect_eq "$(curl -s "${H[@]}" "$(url a /kv/secure/one)")" '{"tls":1}' "served with the old set"

step "bad files stop the start with one line naming the file"
check_start() { # check_start WANT ARGS...
  local want=$1 rc=0; shift
  (cd "$WORK" && timeout 10 "$KVS_BIN" --data-dir "$WORK/bad" --port "$(free_port)" "$@" > "$WORK/bad.out" 2>&1) || rc=$?
  [ "$rc" -ne 0 ] || fail "started with $*"
  grep -q "$want" "$WORK/bad.out" || fail "$* did not name $want: $(cat "$WORK/bad.out")"
}
check_start "tls_cert_file $CA/node.pem" --tls-cert-file "$CA/node.pem" --tls-key-file "$CA/node-old-key.pem"
cp "$CA/node-key.pem" "$WORK/mismatch-key.pem"
check_start "tls_key_file $WORK/mismatch-key.pem: does not go with" --tls-cert-file "$CA/node-old.pem" --tls-key-file "$WORK/mismatch-key.pem"
check_start "tls_key_file $WORK/none.pem" --tls-cert-file "$CA/node-old.pem" --tls-key-file "$WORK/none.pem"

step "handshake attacks: stalled, garbage, SSLv2 and SSLv3 hellos, all slots half-open"
start_node e --max-connections 8 --header-timeout 2 --tls-cert-file "$CA/node-old.pem" --tls-key-file "$CA/node-old-key.pem"
wait_healthy e
port=${NODE_PORT[e]}
attack() { # attack BYTES: a connection that sends BYTES and then nothing
  exec {fd}<>"/dev/tcp/127.0.0.1/$port"
  printf "$1" >&"$fd"
  FDS+=("$fd")
}
FDS=()
attack ''                                     # connects, never speaks
attack '\x16\x03\x01\x02\x00\x01\x00\x01\xfc'  # a ClientHello cut short
attack '\x80\x2e\x01\x00\x02\x00\x15'          # SSLv2 hello
attack '\x16\x03\x00\x00\x05\x01\x00\x00\x01\x00' # SSLv3 record
attack '\x00\xff\xfe\xfdgarbage'               # garbage
for _ in $(seq 1 8); do attack '\x16\x03\x01'; done   # every slot half-open
started=$(now_ms)
expect_eq "$(curl -s --max-time 5 "$(url e /health)" | grep -c '"status"')" 1 "a fresh client during the attack"
[ $(( $(now_ms) - started )) -lt 4000 ] || fail "the fresh client waited $(( $(now_ms) - started )) ms"
for fd in "${FDS[@]}"; do exec {fd}>&-; done
kill -0 "$(pid_of e)" || fail "node e died under the handshake attacks"
grep -qi "panic" "${NODE_LOG[e]}" && fail "a panic in e's log"
stop_node e

step "a certificate that does not name advertise_address is warned about"
"$KVS_BIN" tls cert elsewhere --dir "$CA" --dns elsewhere.example > /dev/null
start_node g --tls-cert-file "$CA/elsewhere.pem" --tls-key-file "$CA/elsewhere-key.pem"
wait_until 10 "the warning" grep -q "does not name 127.0.0.1 (advertise_address)" "${NODE_LOG[g]}"
step "a peer whose certificate does not name the address dialled is refused"
start_node h --join-timeout 30 --tls-cert-file "$CA/node-old.pem" --tls-key-file "$CA/node-old-key.pem" \
  --tls-ca-file "$CA/ca.pem" $(seeds g)
_h_named() { curl -s --max-time 2 "$(url h /health)" | grep -q 'not valid for name'; }
wait_until 10 "h's /health names the name mismatch" _h_named
grep -q "cannot join the cluster: .*not valid for name" "${NODE_LOG[h]}" || fail "the refusal is not in h's log"
stop_node h
stop_node g

step "tls_client_auth all: a client without a certificate is refused at the handshake"
start_node f --tls-cert-file "$CA/node-old.pem" --tls-key-file "$CA/node-old-key.pem" --tls-ca-file "$CA/ca.pem" --tls-client-auth all
_f_up() { curl -s --max-time 2 --cert "$CA/node-old.pem" --key "$CA/node-old-key.pem" "$(url f /health)" | grep -q status; }
wait_until 10 "f answers a certified client" _f_up
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$(url f /health)" || true)
expect_eq "$code" 000 "a client without a certificate"
stop_node f

step "a member back with a certificate that does not name its address: the others warn, naming it"
# Open connections keep the certificate they began with; a restart makes
# every peer connect again.
cp "$CA/elsewhere.pem" "$CA/node.pem"; cp "$CA/elsewhere-key.pem" "$CA/node-key.pem"
stop_node a
start_node a "${FAST[@]}" "${TLS[@]}"
wait_until 10 "b warns about a's certificate" grep -q "gossip with a (.*): TLS refused: .*not valid for name" "${NODE_LOG[b]}"

stop_node d
stop_node c; stop_node b; stop_node a
pass
