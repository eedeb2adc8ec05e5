-- KEYS: dedupe, event, event-dlv, counts, index, dedupe-exp, open, events,
-- settled:delivered, then a (dlv, due) pair per delivery. ARGV: ttl, event
-- json, now, event id, then an (id, json) pair per delivery.
local now = tonumber(ARGV[3])
local prev = redis.call('GET', KEYS[1])
if prev and tonumber(prev) > now then return 0 end
local expires = now + tonumber(ARGV[1])
redis.call('SET', KEYS[1], expires, 'PX', ARGV[1])
redis.call('ZADD', KEYS[6], expires, ARGV[4])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[8], now, ARGV[4])
local n = (#KEYS - 9) / 2
-- Matched no endpoint: settled at once (retention).
if n == 0 then redis.call('ZADD', KEYS[9], now, ARGV[4]) end
for i = 1, n do
  local id = ARGV[4 + 2 * i - 1]
  redis.call('SET', KEYS[9 + 2 * i - 1], ARGV[4 + 2 * i])
  redis.call('ZADD', KEYS[9 + 2 * i], now, id)
  redis.call('ZADD', KEYS[5], 0, id)
  redis.call('ZADD', KEYS[7], 0, id)
  redis.call('RPUSH', KEYS[3], id)
end
if n > 0 then redis.call('HINCRBY', KEYS[4], 'pending', n) end
return 1
