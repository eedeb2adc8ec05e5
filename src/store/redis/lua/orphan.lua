-- Orphans the first ARGV[4] schedule entries of one endpoint from the
-- ARGV[3]-th on. KEYS: due, counts, open, orphaned, orphaned by endpoint.
-- ARGV: key prefix, now, offset, max. Pending deliveries, and in-flight
-- ones whose claim expired, become orphaned; a live claim is left to end
-- (it stays at the front of the schedule: the caller adds it to `offset`).
-- Returns {orphaned, left, examined}.
local now = tonumber(ARGV[2])
local ids = redis.call('ZRANGE', KEYS[1], tonumber(ARGV[3]), tonumber(ARGV[3]) + tonumber(ARGV[4]) - 1)
local orphaned, left = 0, 0
for _, id in ipairs(ids) do
  local d = read_record(ARGV[1] .. 'dlv:' .. id)
  if not d or type(d.state) ~= 'string' then
    left = left + 1
  elseif d.state == 'pending' or (d.state == 'in_flight' and (tonumber(d.next_attempt_at) or 0) <= now) then
    redis.call('HINCRBY', KEYS[2], d.state, -1)
    redis.call('HINCRBY', KEYS[2], 'orphaned', 1)
    -- It keeps the time it was due: taken back, it waits out its backoff.
    d.state = 'orphaned'
    d.updated_at = now
    redis.call('SET', ARGV[1] .. 'dlv:' .. id, cjson.encode(d))
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[3], id)
    redis.call('ZADD', KEYS[4], 0, id)
    redis.call('ZADD', KEYS[5], 0, id)
    gate_update(ARGV[1], d, id)
    orphaned = orphaned + 1
  elseif d.state == 'in_flight' then
    left = left + 1
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return {orphaned, left, #ids}
