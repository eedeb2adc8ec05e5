-- Ends orphaned deliveries as dead. KEYS: counts, orphaned, dead. ARGV: key
-- prefix, now, reason, ids... Returns {discarded, skipped, not_found}.
local now = tonumber(ARGV[2])
local discarded, skipped, missing, seen = 0, 0, 0, {}
for i = 4, #ARGV do
  local id = ARGV[i]
  if not seen[id] then
    seen[id] = true
    local d = read_record(ARGV[1] .. 'dlv:' .. id)
    if d == nil then
      missing = missing + 1
    elseif not d or d.state ~= 'orphaned' or type(d.endpoint) ~= 'string' then
      skipped = skipped + 1
    else
      redis.call('HINCRBY', KEYS[1], 'orphaned', -1)
      redis.call('HINCRBY', KEYS[1], 'dead', 1)
      d.state = 'dead'
      d.last_error = ARGV[3]
      d.next_attempt_at = cjson.null
      d.updated_at = now
      redis.call('SET', ARGV[1] .. 'dlv:' .. id, cjson.encode(d))
      redis.call('ZREM', KEYS[2], id)
      redis.call('ZREM', ARGV[1] .. 'orphaned:' .. d.endpoint, id)
      redis.call('ZADD', KEYS[3], 0, id)
      discarded = discarded + 1
    end
  end
end
return {discarded, skipped, missing}
