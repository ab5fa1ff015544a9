#!/usr/bin/env bash
# Logs and honest health. log_file with log_format json: one JSON object
# per line; after the file is moved away (logrotate), SIGHUP makes a new
# one and the node keeps logging there. /health answers 503 while the node
# does not take writes: a new node whose seed refuses connections says so
# (join_error), and after join_timeout serves as a cluster of one (200),
# then merges when the seed comes up; a wrong cluster_secret shows as a
# 401 in join_error; a node that left answers 503.
source "$(dirname "$0")/lib.sh"

step "log_file and log_format json"
new_node j
cat > "$WORK/j.yaml" << YAML
node_id: "j"
port: ${NODE_PORT[j]}
data_dir: "${NODE_DIR[j]}"
log_file: "$WORK/j-file.log"
log_format: "json"
YAML
(cd "$WORK" && exec "$KVS_BIN" "$WORK/j.yaml" >> "${NODE_LOG[j]}" 2>&1) &
NODE_PID[j]=$!
wait_healthy j
wait_until 5 "the start is logged in the file" grep -q "listening on" "$WORK/j-file.log"
while read -r line; do
  [[ "$line" =~ ^\{\"level\":\"(debug|info|warn|error)\",\"message\":\".*\",\"time\":\"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z\"\}$ ]] \
    || fail "not a JSON log line: $line"
done < "$WORK/j-file.log"
[ ! -s "${NODE_LOG[j]}" ] || fail "the node wrote to stderr although log_file is set: $(head -3 "${NODE_LOG[j]}")"

step "rename the file, SIGHUP: a new file, and the node logs there"
mv "$WORK/j-file.log" "$WORK/j-file.log.1"
kill -HUP "$(pid_of j)"
wait_until 5 "a new log file" test -s "$WORK/j-file.log"
grep -q "SIGHUP: configuration reloaded" "$WORK/j-file.log" || fail "the reload went elsewhere: $(cat "$WORK/j-file.log")"
curl -s -X PUT --data-binary 1 "$(url j /kv/x)" > /dev/null
expect_eq "$(health_field j mode)" normal "mode after SIGHUP"

step "a seed that refuses connections: 503 and the reason, then a cluster of one"
new_node seed
start_node n --seed "$(addr seed)" --join-timeout 3 "${FAST[@]}"
wait_healthy n
t0=$(now_ms)
expect_status 503 GET "$(url n /health)"
has_reason() { curl -s --max-time 2 "$(url n /health)" | grep -q '"join_error":"[^"]*connection refused'; }
wait_until 5 "/health names the refused connection" has_reason
grep -q "cannot join the cluster: .*connection refused" "${NODE_LOG[n]}" || fail "no warning with the reason"
expect_status 503 PUT "$(url n /kv/early)" --data-binary 1
serving() { [ "$(status GET "$(url n /health)")" = 200 ]; }
wait_until 10 "serving alone after join_timeout" serving
[ $(( $(now_ms) - t0 )) -ge 2000 ] || fail "served before join_timeout ($(( $(now_ms) - t0 )) ms)"
grep -q "no seed answered within join_timeout" "${NODE_LOG[n]}" || fail "the switch is not logged"
put n alone/1 '{"v":1}' || fail "a write after join_timeout failed"

step "the seed comes up: they merge"
start_node seed "${FAST[@]}"
wait_ready seed
count_is() { [ "$(member_count "$1")" = "$2" ]; }
wait_until 40 "n and the seed see each other" count_is n 2
wait_until 20 "n's write reaches the seed" has_value seed alone/1 '{"v":1}'
no_reason() { ! curl -s --max-time 2 "$(url n /health)" | grep -q join_error; }
wait_until 5 "join_error cleared" no_reason

step "a wrong cluster_secret shows as a 401"
start_node guarded --cluster-secret right "${FAST[@]}"
wait_ready guarded
start_node w --seed "$(addr guarded)" --cluster-secret wrong --join-timeout 60 "${FAST[@]}"
wait_healthy w
said_401() { curl -s --max-time 2 "$(url w /health)" | grep -q '"join_error":"[^"]*401'; }
wait_until 10 "/health names the 401" said_401
expect_status 503 GET "$(url w /health)"

step "a node that left answers 503"
expect_status 200 POST "$(url n /members/leave)"
expect_status 503 GET "$(url n /health)"
expect_eq "$(health_field n mode)" left "mode after leaving"
expect_status 503 PUT "$(url n /kv/after)" --data-binary 1
pass
