#!/usr/bin/env bash
# POST /batch: puts and deletes in one commit, one {"uuid","timestamp"} per
# op, values byte for byte, replicated; one bad op is a 400 naming it and
# nothing is applied; more than 1000 ops, a GET, or invalid UTF-8 refused.
source "$(dirname "$0")/lib.sh"

start_pair a b
put a c '"to delete"'

step "a batch of two puts and a delete"
reply=$(curl -s --max-time 10 -X POST "$(url a /batch)" \
  --data-binary '[{"op":"put","key":"k/one","value":1},{"op":"put","key":"k/two","value":{"x": [1, 2]}},{"op":"delete","key":"c"}]')
expect_eq "$(echo "$reply" | grep -o '"uuid"' | wc -l | tr -d ' ')" 3 "answers in $reply"
expect_eq "$(get a k/one)" 1 "k/one"
expect_eq "$(get a k/two)" '{"x": [1, 2]}' "k/two, byte for byte"
expect_status 404 GET "$(url a /kv/c)"
wait_until 10 "the batch reaches b" has_value b k/two '{"x": [1, 2]}'
wait_until 10 "the delete reaches b" lacks_key b c

step "one bad op: 400 naming it, nothing applied"
code=$(curl -s -o "$WORK/bad" -w '%{http_code}' --max-time 10 -X POST "$(url a /batch)" \
  --data-binary '[{"op":"put","key":"k/one","value":2},{"op":"put","key":"a/../b","value":3}]')
expect_eq "$code" 400 "status of a batch with a bad key"
grep -q 'op 1' "$WORK/bad" || fail "the error does not name the op: $(cat "$WORK/bad")"
expect_eq "$(get a k/one)" 1 "k/one after the refused batch"
expect_status 400 POST "$(url a /batch)" --data-binary '[{"op":"put","key":"x"}]'
expect_status 400 POST "$(url a /batch)" --data-binary '[{"op":"rename","key":"x"}]'
expect_status 400 POST "$(url a /batch)" --data-binary '[]'
printf '[{"op":"put","key":"x","value":"\xff"}]' > "$WORK/badutf8"
expect_status 400 POST "$(url a /batch)" --data-binary @"$WORK/badutf8"
python3 -c 'import json; print(json.dumps([{"op":"put","key":"m/%d" % i,"value":i} for i in range(1001)]))' > "$WORK/big"
expect_status 400 POST "$(url a /batch)" --data-binary @"$WORK/big"
expect_status 405 GET "$(url a /batch)"
expect_status 404 GET "$(url a /kv/m/0)"

pass
