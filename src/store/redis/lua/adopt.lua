-- Takes back up to ARGV[3] orphaned deliveries of one endpoint. KEYS:
-- orphaned by endpoint, orphaned, open, counts, due. ARGV: key prefix, now,
-- max. Returns {adopted, examined}.
local now = tonumber(ARGV[2])
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[3]) - 1)
local adopted = 0
for _, id in ipairs(ids) do
  local d = read_record(ARGV[1] .. 'dlv:' .. id)
  redis.call('ZREM', KEYS[1], id)
  if d and d.state == 'orphaned' then
    redis.call('HINCRBY', KEYS[4], 'orphaned', -1)
    redis.call('HINCRBY', KEYS[4], 'pending', 1)
    local due = math.max(tonumber(d.next_attempt_at) or now, now)
    d.state = 'pending'
    d.next_attempt_at = due
    d.updated_at = now
    redis.call('SET', ARGV[1] .. 'dlv:' .. id, cjson.encode(d))
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZADD', KEYS[3], 0, id)
    if gate_update(ARGV[1], d, id) then redis.call('ZADD', KEYS[5], due, id) end
    adopted = adopted + 1
  end
end
return {adopted, #ids}
