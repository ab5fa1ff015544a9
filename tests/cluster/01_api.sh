#!/usr/bin/env bash
# The client API of one node: shapes, byte-exact values, every error status.
source "$(dirname "$0")/lib.sh"

start_node a --max-value-bytes 4096
wait_healthy a

step "PUT returns {uuid, timestamp}"
out=$(curl -s --max-time 5 -X PUT --data-binary '{"name": "John",  "tags": [1, 2]}' "$(url a /kv/users/john/profile)")
echo "$out" | grep -Eq '^\{"uuid":"[0-9a-f-]{36}","timestamp":[0-9]{13}\}$' || fail "PUT reply shape: $out"
ts1=$(json_field "$out" timestamp)

step "GET returns the JSON byte for byte, with ETag and X-Kvs-Timestamp"
curl -s --max-time 5 -D "$WORK/h" -o "$WORK/body" "$(url a /kv/users/john/profile)"
expect_eq "$(cat "$WORK/body")" '{"name": "John",  "tags": [1, 2]}' "stored bytes"
grep -qi "^etag: \"$(json_field "$out" uuid)\"" "$WORK/h" || fail "ETag missing: $(cat "$WORK/h")"
grep -qi "^x-kvs-timestamp: $ts1" "$WORK/h" || fail "X-Kvs-Timestamp missing"
printf '  [1,\n2]  \n' > "$WORK/ws"
curl -sf --max-time 5 -X PUT --data-binary @"$WORK/ws" "$(url a /kv/ws)" >/dev/null
curl -s --max-time 5 -o "$WORK/ws.out" "$(url a /kv/ws)"
cmp -s "$WORK/ws" "$WORK/ws.out" || fail "whitespace around a value was not kept"

step "a later write gets a later timestamp"
out2=$(curl -s --max-time 5 -X PUT --data-binary '2' "$(url a /kv/users/john/profile)")
ts2=$(json_field "$out2" timestamp)
[ "$ts2" -gt "$ts1" ] || fail "timestamp did not grow: $ts1 then $ts2"

step "DELETE: 204, then 404"
expect_status 204 DELETE "$(url a /kv/users/john/profile)"
expect_status 404 GET "$(url a /kv/users/john/profile)"
body=$(curl -s --max-time 5 "$(url a /kv/users/john/profile)")
echo "$body" | grep -q '^{"error":"' || fail "404 body is not a JSON error: $body"

step "/health and /members/ shapes"
h=$(curl -s --max-time 5 "$(url a /health)")
for f in '"status":"ok"' '"mode":"normal"' '"member_count":1' '"node_id":"a"'; do
  echo "$h" | grep -q "$f" || fail "/health lacks $f: $h"
done
m=$(curl -s --max-time 5 "$(url a /members/)")
for f in '"id":"a"' "\"address\":\"$(addr a)\"" '"last_seen":' '"joined_timestamp":'; do
  echo "$m" | grep -q "$f" || fail "/members/ lacks $f: $m"
done

step "400: invalid JSON, empty body, bad keys (each named)"
expect_status 400 PUT "$(url a /kv/x)" --data-binary '{"a":'
expect_status 400 PUT "$(url a /kv/x)" --data-binary ''
for k in 'a/../b' 'a/./b' 'a//b' 'a%00b' 'a%0Ab' '%FF' 'bad%zz'; do
  body=$(curl -s --path-as-is --max-time 5 -X PUT --data-binary 1 "$(url a "/kv/$k")")
  code=$(status PUT "$(url a "/kv/$k")" --data-binary 1)
  expect_eq "$code" 400 "PUT /kv/$k"
  echo "$body" | grep -q '"error":"key' || fail "error for $k does not name the key problem: $body"
done
long=$(head -c 400 /dev/zero | tr '\0' k)
expect_status 200 PUT "$(url a "/kv/$long")" --data-binary 1
expect_eq "$(get a "$long")" 1 "a 400-byte key"
expect_status 400 PUT "$(url a "/kv/$long$long")" --data-binary 1
expect_status 404 GET "$(url a /kv/never/written)"
expect_status 404 GET "$(url a /no/such/endpoint)"

step "405 with Allow"
curl -s --max-time 5 -D "$WORK/h405" -o /dev/null -X POST "$(url a /kv/x)"
head -n1 "$WORK/h405" | grep -q 405 || fail "POST /kv/x is not 405"
grep -qi '^allow: GET, HEAD, PUT, DELETE' "$WORK/h405" || fail "405 without Allow"
expect_status 405 DELETE "$(url a /health)"

step "413 over max_value_bytes, declared or chunked, and nothing stored"
head -c 5000 /dev/zero | tr '\0' 1 > "$WORK/big"
expect_status 413 PUT "$(url a /kv/big)" --data-binary @"$WORK/big"
expect_status 413 PUT "$(url a /kv/big)" -H 'Transfer-Encoding: chunked' --data-binary @"$WORK/big"
expect_status 404 GET "$(url a /kv/big)"
head -c 4096 /dev/zero | tr '\0' 1 > "$WORK/edge"
expect_status 200 PUT "$(url a /kv/edge)" --data-binary @"$WORK/edge"

step "a lying Content-Length does not hurt the node"
printf 'PUT /kv/liar HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999999\r\n\r\n{}' \
  | timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/${NODE_PORT[a]}; cat >&3; head -n1 <&3" > "$WORK/liar" || true
grep -q 413 "$WORK/liar" || fail "huge Content-Length not refused with 413: $(cat "$WORK/liar")"
printf 'GARBAGE\r\n\r\n' | timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/${NODE_PORT[a]}; cat >&3; head -n1 <&3" > "$WORK/garbage" || true
grep -q 400 "$WORK/garbage" || fail "malformed request not answered 400: $(cat "$WORK/garbage")"
is_healthy a || fail "node unhealthy after bad requests"

step "conditional writes: If-None-Match: * and If-Match"
expect_status 200 PUT "$(url a /kv/cond)" -H 'If-None-Match: *' --data-binary 1
expect_status 412 PUT "$(url a /kv/cond)" -H 'If-None-Match: *' --data-binary 2
etag=$(curl -s --max-time 5 -D - -o /dev/null "$(url a /kv/cond)" | tr -d '\r' | sed -n 's/^[Ee][Tt]ag: //p')
expect_status 200 PUT "$(url a /kv/cond)" -H "If-Match: $etag" --data-binary 3
expect_status 412 PUT "$(url a /kv/cond)" -H "If-Match: $etag" --data-binary 4
expect_eq "$(get a cond)" 3 "value after a failed If-Match"

step "conditional requests as RFC 9110 says: 304, weak tags, lists, 412 not 400"
etag=$(curl -s --max-time 5 -D - -o /dev/null "$(url a /kv/cond)" | tr -d '\r' | sed -n 's/^[Ee][Tt]ag: //p')
other='"0b6f8a52-1d7e-4c1e-9a53-2f1d3c4b5a69"'
expect_status 304 GET "$(url a /kv/cond)" -H "If-None-Match: $etag"
expect_status 304 GET "$(url a /kv/cond)" -H "If-None-Match: W/$etag"
expect_status 304 GET "$(url a /kv/cond)" -H "If-None-Match: $other, $etag"
expect_status 304 GET "$(url a /kv/cond)" -H "If-None-Match: *"
expect_status 200 GET "$(url a /kv/cond)" -H "If-None-Match: $other"
curl -s --max-time 5 -D - -o /dev/null -H "If-None-Match: $etag" "$(url a /kv/cond)" | tr -d '\r' \
  | grep -qi "^etag: $etag" || fail "a 304 without the ETag"
expect_status 412 GET "$(url a /kv/cond)" -H "If-Match: $other"
expect_status 412 GET "$(url a /kv/absent)" -H "If-Match: *"
expect_status 412 PUT "$(url a /kv/cond)" -H "If-Match: W/$etag" --data-binary 5
expect_status 412 PUT "$(url a /kv/cond)" -H 'If-Match: "not a tag"' --data-binary 5
expect_status 412 PUT "$(url a /kv/cond)" -H "If-None-Match: $etag" --data-binary 5
expect_eq "$(get a cond)" 3 "value after failed conditions"
expect_status 200 PUT "$(url a /kv/cond)" -H "If-Match: $other, $etag" --data-binary 6
expect_status 200 PUT "$(url a /kv/cond)" -H "If-None-Match: $etag" --data-binary 7
expect_eq "$(get a cond)" 7 "value after conditions that held"

step "prefix listing"
for k in users/ann users/bob/x users/bob/y other; do put a "$k" '"v"'; done
curl -sf --max-time 5 -X DELETE "$(url a /kv/users/bob/y)" >/dev/null
expect_eq "$(curl -s --max-time 5 "$(url a '/kv/users/?keys')")" '["users/ann","users/bob/x"]' "?keys"
expect_eq "$(curl -s --max-time 5 "$(url a '/kv/users/?keys&separator=/')")" '["users/ann","users/bob/"]' "?keys&separator=/"
r=$(curl -s --max-time 5 "$(url a '/kv/users/?recurse')")
echo "$r" | grep -q '^\[{"key":"users/ann","value":"v","timestamp":[0-9]*,"uuid":"[0-9a-f-]*"},{"key":"users/bob/x"' || fail "?recurse shape: $r"
expect_eq "$(curl -s --max-time 5 "$(url a '/kv/users/?keys&limit=1')")" '["users/ann"]' "?keys&limit=1"
expect_eq "$(curl -s --max-time 5 "$(url a '/kv/users/?keys&after=users/ann')")" '["users/bob/x"]' "?keys&after"

pass
