#!/bin/sh
# Builds the (gitignored) seed corpora under fuzz/corpus/<target>/ from the
# repository's own inputs and from fuzz/regressions/. Run from anywhere.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
corpus="$here/corpus"

mkdir -p "$corpus/config_loader" "$corpus/scenario_loader" \
    "$corpus/page_decoder" "$corpus/session_decoder"

# Config files.
cp "$root/skyrules.toml" "$corpus/config_loader/skyrules.toml"
cp "$root/examples/skyrules.toml" "$corpus/config_loader/examples-skyrules.toml"

# Scenario files.
for f in "$root"/rules/tests/*.toml; do
    cp "$f" "$corpus/scenario_loader/$(basename "$f")"
done

# Session-list bodies, in every shape parse_page accepts.
p="$corpus/page_decoder"
cat > "$p/resource.json" <<'JSON'
{"success":true,"data":[{"session_id":"sess_a1b2c3d4e5f6","status":"active","handled_by":"ai","visitor_name":"Ahmad","visitor_email":null,"visitor_phone":null,"visitor_ip":"203.0.113.7","visitor_page_url":"https://example.com/pricing","visitor_referrer":null,"has_visitor_messages":true,"human_requested_at":null,"human_took_over_at":null,"last_activity_at":"2026-03-08T14:22:00.000000Z","created_at":"2026-03-08T14:15:00.000000Z"}],"meta":{"current_page":1,"from":1,"last_page":3,"path":"http://127.0.0.1:8080/api/v1/web-chat/sessions","per_page":1,"to":1,"total":3},"links":{"first":"http://127.0.0.1:8080/api/v1/web-chat/sessions?page=1","last":"http://127.0.0.1:8080/api/v1/web-chat/sessions?page=3","prev":null,"next":"http://127.0.0.1:8080/api/v1/web-chat/sessions?page=2"}}
JSON
cat > "$p/resource-strings.json" <<'JSON'
{"data":[{"session_id":"a","status":"ended","handled_by":"human","has_visitor_messages":1,"created_at":"2025-01-02 03:04:05","visitor_name":null}],"meta":{"current_page":"2","last_page":"3"},"links":{"next":null}}
JSON
cat > "$p/top-level-paging.json" <<'JSON'
{"data":[{"session_id":"a"}],"meta":[],"links":[],"current_page":2,"last_page":2,"next_page_url":""}
JSON
cat > "$p/paginator.json" <<'JSON'
{"success":true,"data":{"data":[{"session_id":"a","handled_by":"pending","human_requested_at":"2026-03-08T14:20:00+01:00"},{"session_id":"b","status":"archived"}],"current_page":2,"last_page":2,"next_page_url":null,"links":[{"url":null}],"total":3}}
JSON
cat > "$p/bare.json" <<'JSON'
  [{"session_id":"a"},{"bogus":1},{"session_id":""},{"session_id":7},"text",null,{"session_id":"b","status":5,"has_visitor_messages":"true"}]
JSON
printf '[]' > "$p/empty.json"
printf '{"success":false,"message":"Unauthenticated."}' > "$p/refused.json"
printf '{"d\\u0061ta":[{"session_id":"\\u00e9"}],"m\\u0065ta":{"last_page":2},"meta":{"last_page":9}}' > "$p/escapes.json"

# Session-detail bodies, enveloped and bare.
s="$corpus/session_decoder"
cat > "$s/enveloped.json" <<'JSON'
{"success":true,"data":{"session_id":"sess_a1b2c3d4e5f6","status":"active","handled_by":"human","visitor_name":"Ahmad","has_visitor_messages":true,"human_requested_at":"2026-03-08T14:20:00.000000Z","human_took_over_at":"2026-03-08T14:21:00.000000Z","last_activity_at":"2026-03-08T14:22:00.000000Z","created_at":"2026-03-08T14:15:00.000000Z","messages":[{"id":1,"sender_type":"visitor","message_text":"Hello","message_type":"text","media_url":null,"is_read":true,"created_at":"2026-03-08T14:15:10.000000Z"},{"id":2,"sender_type":"bot","message_text":"Hi! How can I help?","message_type":"text","media_url":null,"is_read":false,"created_at":"2026-03-08T14:15:12.000000Z"}]}}
JSON
cat > "$s/bare-odd.json" <<'JSON'
{"session_id":"a","messages":[{"id":2,"sender_type":"bot","message_text":"hi"},{"no_id":true},{"id":"1","sender_type":"visitor","message_text":null,"message_type":"image","media_url":"https://example.com/a.png","is_read":1,"created_at":"2025-01-02 03:04:05.5"}],"brand_new_field":{"x":1}}
JSON
printf '{"session_id":"s","messages":null,"status":null,"handled_by":"queue"}' > "$s/nulls.json"
printf '{"success":true,"data":{"session_id":"s","data":5}}' > "$s/data-in-session.json"

# Every input that once found a bug, and the committed examples.
for t in page_decoder session_decoder config_loader scenario_loader; do
    if [ -d "$here/regressions/$t" ]; then
        for f in "$here/regressions/$t"/*; do
            [ -f "$f" ] && cp "$f" "$corpus/$t/regression-$(basename "$f")"
        done
    fi
done
echo "seeded $(find "$corpus" -type f | wc -l) files under $corpus"
