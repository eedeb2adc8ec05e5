-- Lua: replays the delivery ids ARGV[first..]; counts go to `counts`. With
-- `only` (a state name), only deliveries in that state: a replay job's
-- step leaves alone what left the state it listed. Without, dead and
-- discarded ones, and delivered ones with `include_delivered`. Returns
-- replayed, skipped, not found. Shared by REPLAY and REPLAY_STEP.
local function replay_ids(counts, prefix, include_delivered, only, now, first)
  local replayed, skipped, missing = 0, 0, 0
  local seen = {}
  for i = first, #ARGV do
    local id = ARGV[i]
    if not seen[id] then
      seen[id] = true
      local d = read_record(prefix .. 'dlv:' .. id)
      if d == nil then
        missing = missing + 1
      elseif not d or type(d.endpoint) ~= 'string' then
        skipped = skipped + 1
      elseif (only ~= nil and d.state == only and (only == 'dead' or only == 'discarded' or only == 'delivered'))
          or (only == nil and (d.state == 'dead' or d.state == 'discarded' or d.state == 'skipped'
            or (include_delivered and d.state == 'delivered'))) then
        if d.state ~= 'delivered' then redis.call('ZREM', prefix .. d.state, id) end
        d.discard_reason = nil
        redis.call('HINCRBY', counts, d.state, -1)
        redis.call('HINCRBY', counts, 'pending', 1)
        d.state = 'pending'
        d.budget_start = d.attempts
        d.next_attempt_at = now
        d.updated_at = now
        redis.call('SET', prefix .. 'dlv:' .. id, cjson.encode(d))
        if gate_update(prefix, d, id) then redis.call('ZADD', prefix .. 'due:' .. d.endpoint, now, id) end
        redis.call('ZADD', prefix .. 'open', 0, id)
        replayed = replayed + 1
      else
        skipped = skipped + 1
      end
    end
  end
  return replayed, skipped, missing
end
