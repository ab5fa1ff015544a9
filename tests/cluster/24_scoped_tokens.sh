#!/usr/bin/env bash
# Scoped client tokens (DESIGN §11): plain tokens keep full access; scoped
# entries read and write only under their prefixes (403 whether the key
# exists or not), listings, watches and the changes feed leave out what
# they may not read, a write or batch with any key outside applies
# nothing, admin endpoints need admin, /health stays open; hashed entries
# from `kvs token new`; refusals counted; SIGHUP swaps the set.
source "$(dirname "$0")/lib.sh"

step "kvs token new prints a token and the entry with its hash"
"$KVS_BIN" token new --read shared/ --write app/ > "$WORK/tok.out" || fail "kvs token new failed"
HASHED=$(sed -n 1p "$WORK/tok.out")
[[ $HASHED =~ ^[0-9a-f]{48}$ ]] || fail "not a token: $HASHED"
hash=$(printf '%s' "$HASHED" | sha256sum | cut -d' ' -f1)
grep -q "token_sha256: \"$hash\"" "$WORK/tok.out" || fail "the entry is not the token's SHA-256: $(cat "$WORK/tok.out")"
grep -q "$HASHED" <(sed 1d "$WORK/tok.out") && fail "the config entry holds the token itself"
rc=0; "$KVS_BIN" token old > /dev/null 2>&1 || rc=$?
expect_eq "$rc" 2 "kvs token with a wrong subcommand"

new_node a
cat > "$WORK/a.yaml" << YAML
node_id: "a"
port: ${NODE_PORT[a]}
data_dir: "${NODE_DIR[a]}"
cluster_secret: "s3cret"
client_tokens:
  - "full-token"
  - token: "app-token"
    read: ["shared/config"]
    write: ["app/"]
  - token: "dash-token"
    admin: true
YAML
(cd "$WORK" && exec "$KVS_BIN" "$WORK/a.yaml" >> "${NODE_LOG[a]}" 2>&1) &
NODE_PID[a]=$!
wait_ready a

as() { local t=$1; shift; curl -s --max-time 10 -H "Authorization: Bearer $t" "$@"; }
code() { local t=$1 m=$2 u=$3; shift 3; status "$m" "$(url a "$u")" -H "Authorization: Bearer $t" "$@"; }

step "a plain token reads, writes and reaches every endpoint"
for k in app/one app/two shared/config shared/other secret/x; do
  expect_eq "$(code full-token PUT "/kv/$k" --data-binary "{\"k\":\"$k\"}")" 200 "full PUT $k"
done
expect_eq "$(code full-token GET /metrics)" 200 "full /metrics"
expect_eq "$(code full-token GET /members/)" 200 "full /members/"

step "a scoped token: reads and writes inside, 403 outside whether the key exists or not"
expect_eq "$(as app-token "$(url a /kv/app/one)")" '{"k":"app/one"}' "scoped read inside"
expect_eq "$(as app-token "$(url a /kv/shared/config)")" '{"k":"shared/config"}' "scoped read of a read prefix"
expect_eq "$(code app-token GET /kv/shared/other)" 403 "read of an existing key outside"
expect_eq "$(code app-token GET /kv/secret/nothing-here)" 403 "read of a missing key outside"
expect_eq "$(code app-token GET /kv/app/missing)" 404 "read of a missing key inside"
expect_eq "$(code app-token PUT /kv/app/three --data-binary '{"n":3}')" 200 "write inside"
expect_eq "$(code app-token PUT /kv/shared/config --data-binary '{"n":0}')" 403 "write to a read-only prefix"
expect_eq "$(code app-token DELETE /kv/secret/x)" 403 "delete outside"
expect_eq "$(as full-token "$(url a /kv/shared/config)")" '{"k":"shared/config"}' "the refused write left the value"
body=$(as app-token "$(url a /kv/secret/x)")
[[ $body == *'"error"'* ]] || fail "a 403 without a JSON error: $body"

step "listings, recursive reads, watches and the changes feed show only readable keys"
expect_eq "$(as app-token "$(url a '/kv/?keys')")" '["app/one","app/three","app/two","shared/config"]' "scoped key listing"
expect_eq "$(as app-token "$(url a '/kv/?keys&separator=/')")" '["app/","shared/"]' "scoped one-level listing"
expect_eq "$(as app-token "$(url a '/kv/shared/?keys')")" '["shared/config"]' "scoped listing under a read prefix"
expect_eq "$(as app-token "$(url a '/kv/secret/?keys')")" '[]' "scoped listing outside"
page=$(as app-token "$(url a '/kv/?keys&limit=2')")
expect_eq "$page" '["app/one","app/three"]' "a scoped page is full"
rec=$(as app-token "$(url a '/kv/?recurse')")
[[ $rec == *'"app/one"'* && $rec != *secret* && $rec != *shared/other* ]] || fail "recursive read: $rec"
idx=$(curl -s -o /dev/null -D - -H "Authorization: Bearer full-token" "$(url a /kv/app/one)" | tr -d '\r' | sed -n 's/^X-Kvs-Index: //Ip')
expect_eq "$(code full-token PUT /kv/secret/x --data-binary '{"v":2}')" 200 "full write outside the scope"
expect_eq "$(code full-token PUT /kv/app/one --data-binary '{"v":2}')" 200 "full write inside the scope"
changes=$(as app-token "$(url a "/kv/?changes&index=$idx")")
[[ $changes == *'"app/one"'* ]] || fail "the changes feed lacks a readable key: $changes"
[[ $changes == *secret* ]] && fail "the changes feed shows an unreadable key: $changes"
watched=$(as app-token "$(url a "/kv/?recurse&index=$idx&wait=5s")")
[[ $watched == *'"v":2'* && $watched != *secret* ]] || fail "watch reply: $watched"
expect_eq "$(code app-token GET "/kv/secret/x?index=$idx&wait=1s")" 403 "a watch on an unreadable key"

step "a batch or recursive delete with any key outside is 403 and applies nothing"
expect_eq "$(code app-token POST /batch --data-binary '[{"op":"put","key":"app/b1","value":1},{"op":"put","key":"secret/b2","value":2}]')" 403 "mixed batch"
expect_eq "$(code app-token GET /kv/app/b1)" 404 "the refused batch wrote nothing"
expect_eq "$(code app-token POST /batch --data-binary '[{"op":"put","key":"app/b1","value":1}]')" 200 "batch inside"
expect_eq "$(code app-token DELETE '/kv/?recurse')" 403 "recursive delete of everything"
expect_eq "$(as full-token "$(url a /kv/secret/x)")" '{"v":2}' "the refused delete left other keys"
expect_eq "$(code app-token DELETE '/kv/app/?recurse')" 200 "recursive delete inside"
expect_eq "$(code app-token GET /kv/app/one)" 404 "deleted inside"

step "admin endpoints need admin; /health is open"
for u in /metrics /members/ /backup; do
  expect_eq "$(code app-token GET "$u")" 403 "scoped token on $u"
done
expect_eq "$(code app-token POST /members/leave)" 403 "scoped token leaving the node"
expect_eq "$(code dash-token GET /metrics)" 200 "admin token on /metrics"
expect_eq "$(code dash-token GET /members/)" 200 "admin token on /members/"
expect_eq "$(code dash-token GET /backup -o /dev/null)" 403 "admin token without read on every key: /backup"
expect_eq "$(code dash-token GET /kv/app/b1)" 403 "an admin-only token reads no key"
expect_eq "$(status GET "$(url a /health)")" 200 "/health without a token"
expect_eq "$(status GET "$(url a /kv/app/b1)")" 401 "no token"
expect_eq "$(code wrong-token GET /kv/app/b1)" 401 "unknown token"

step "refusals are counted by reason"
metrics=$(as full-token "$(url a /metrics)")
grep -q '^kvs_auth_failures_total{reason="out_of_scope"} [1-9]' <<< "$metrics" || fail "no out_of_scope count: $(grep auth_fail <<< "$metrics")"
grep -q '^kvs_auth_failures_total{reason="missing_token"} [1-9]' <<< "$metrics" || fail "no missing_token count"
grep -q '^kvs_auth_failures_total{reason="unknown_token"} [1-9]' <<< "$metrics" || fail "no unknown_token count"
grep -q 'app-token\|full-token' "${NODE_LOG[a]}" && fail "a token reached the log"

step "SIGHUP swaps the tokens: the hashed one works, the removed one is refused"
hashed_entry=$(sed -n '/token_sha256/,$p' "$WORK/tok.out")
cat > "$WORK/a.yaml" << YAML
node_id: "a"
port: ${NODE_PORT[a]}
data_dir: "${NODE_DIR[a]}"
cluster_secret: "s3cret"
client_tokens:
  - "full-token"
$hashed_entry
YAML
kill -HUP "$(pid_of a)"
wait_until 5 "the tokens are reloaded" grep -q "SIGHUP: client_tokens reloaded" "${NODE_LOG[a]}"
grep -q "client_tokens changed; taking effect" "${NODE_LOG[a]}" && fail "client_tokens said to wait for a restart"
expect_eq "$(code app-token GET /kv/shared/config)" 401 "a removed token"
expect_eq "$(code "$HASHED" PUT /kv/app/h --data-binary '{"h":1}')" 200 "the hashed token writes inside"
expect_eq "$(code "$HASHED" GET /kv/shared/config)" 200 "the hashed token reads its read prefix"
expect_eq "$(code "$HASHED" GET /kv/secret/x)" 403 "the hashed token outside"

step "a bad entry on SIGHUP keeps the old set"
echo '  - {token: "x", reed: ["a/"]}' >> "$WORK/a.yaml"
kill -HUP "$(pid_of a)"
wait_until 5 "the refusal is logged" grep -q "SIGHUP: the configuration was not reloaded.*client_tokens entry 3: unknown field reed" "${NODE_LOG[a]}"
expect_eq "$(code "$HASHED" GET /kv/app/h)" 200 "the old set still works"

step "a bad entry at start stops the start, naming the entry"
rc=0
(cd "$WORK" && timeout 10 "$KVS_BIN" --data-dir "$WORK/bad" --port "$(free_port)" --cluster-secret s \
  --client-tokens '[ok, {token_sha256: "12ab"}]' > "$WORK/bad.out" 2>&1) || rc=$?
expect_eq "$rc" 2 "exit status for a bad token entry"
grep -q "client_tokens entry 2: token_sha256 must be 64 hexadecimal digits" "$WORK/bad.out" \
  || fail "the bad entry is not named: $(cat "$WORK/bad.out")"

stop_node a
pass
