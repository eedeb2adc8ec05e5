-- Ends deliveries as discarded: pending, dead and orphaned ones, and in-flight
-- ones whose claim expired by `now` (their worker's late finish then finds
-- the claim lost). A live claim is left to finish; delivered and discarded
-- ones are skipped. With `only` (a state name; '' for any), only those in
-- that state now (an expired claim counts as pending). KEYS: counts, open,
-- dead, orphaned, discarded. ARGV: key prefix, now, reason, only, ids...
-- Returns {discarded, skipped, in_flight, not_found}.
local prefix, now = ARGV[1], tonumber(ARGV[2])
local discarded, skipped, in_flight, missing, seen = 0, 0, 0, 0, {}
local only = ARGV[4]
for i = 5, #ARGV do
  local id = ARGV[i]
  if not seen[id] then
    seen[id] = true
    local d = read_record(prefix .. 'dlv:' .. id)
    if d == nil then
      missing = missing + 1
    elseif not d or type(d.endpoint) ~= 'string' then
      skipped = skipped + 1
    elseif d.state == 'in_flight' and tonumber(d.next_attempt_at) and tonumber(d.next_attempt_at) > now then
      in_flight = in_flight + 1
    elseif (d.state == 'pending' or d.state == 'in_flight' or d.state == 'dead' or d.state == 'orphaned')
        and (only == '' or only == d.state or (only == 'pending' and d.state == 'in_flight')) then
      if d.state == 'pending' or d.state == 'in_flight' then
        redis.call('ZREM', prefix .. 'due:' .. d.endpoint, id)
        redis.call('ZREM', KEYS[2], id)
      elseif d.state == 'dead' then
        redis.call('ZREM', KEYS[3], id)
      else
        redis.call('ZREM', KEYS[4], id)
        redis.call('ZREM', prefix .. 'orphaned:' .. d.endpoint, id)
      end
      redis.call('HINCRBY', KEYS[1], d.state, -1)
      redis.call('HINCRBY', KEYS[1], 'discarded', 1)
      d.state = 'discarded'
      d.discard_reason = ARGV[3]
      d.next_attempt_at = cjson.null
      d.updated_at = now
      redis.call('SET', prefix .. 'dlv:' .. id, cjson.encode(d))
      redis.call('ZADD', KEYS[5], 0, id)
      gate_update(prefix, d, id)
      if type(d.event_id) == 'string' then redis.call('ZADD', prefix .. 'settled:dead', now, d.event_id) end
      discarded = discarded + 1
    else
      skipped = skipped + 1
    end
  end
end
return {discarded, skipped, in_flight, missing}
