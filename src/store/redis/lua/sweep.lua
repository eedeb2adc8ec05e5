-- KEYS: dedupe-exp. ARGV: key prefix, now, max. Clears dedupe keys that
-- expired by `now` (if not renewed since) and returns how many.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local key = ARGV[1] .. 'dedupe:' .. id
  local v = redis.call('GET', key)
  if v and tonumber(v) <= tonumber(ARGV[2]) then redis.call('DEL', key) end
end
return #ids
