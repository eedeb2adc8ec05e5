-- KEYS: counts. ARGV: key prefix, include delivered ('1' | '0'), now, ids...
-- Returns {replayed, skipped, not_found}.
local r, s, m = replay_ids(KEYS[1], ARGV[1], ARGV[2] == '1', nil, tonumber(ARGV[3]), 4)
return {r, s, m}
