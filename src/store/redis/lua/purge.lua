-- One bounded step of retention (store::retention). KEYS: counts, index,
-- dead, discarded, events, replays-done. ARGV: key prefix, cutoff for the
-- delivered class, cutoff for the dead class, cutoff for finished replay
-- jobs, limit. Returns {events, deliveries, attempts, replay jobs, entries
-- examined}. Each queue entry is taken off its queue here, so two relays
-- never look at the same one; the whole step is one script, so a crash
-- never leaves an event half removed. Dedupe keys are left to expire.
local p = ARGV[1]
local cutoff = {delivered = tonumber(ARGV[2]), dead = tonumber(ARGV[3])}
local cutoff_arg = {delivered = ARGV[2], dead = ARGV[3]}
local limit = tonumber(ARGV[5])
local class_of = {delivered = 'delivered', skipped = 'delivered', dead = 'dead', discarded = 'dead'}
local out = {0, 0, 0, 0, 0}
-- Not before the index of older data is complete (connect.rs builds it).
if redis.call('EXISTS', p .. 'retention-index') == 0 then return out end
local function key_is(key, want)
  local t = redis.call('TYPE', key).ok
  return t == 'none' or t == want
end
if not key_is(KEYS[1], 'hash') or not key_is(KEYS[2], 'zset') or not key_is(KEYS[3], 'zset')
    or not key_is(KEYS[4], 'zset') or not key_is(KEYS[5], 'zset') or not key_is(KEYS[6], 'zset') then
  return redis.error_reply('relay keys of the wrong type under ' .. p)
end
for _, class in ipairs({'delivered', 'dead'}) do
  local queue = p .. 'settled:' .. class
  local room = limit - out[5]
  if room <= 0 then break end
  local due = redis.call('ZRANGEBYSCORE', queue, '-inf', '(' .. cutoff_arg[class], 'LIMIT', 0, room)
  for i = 1, #due do
    local id = due[i]
    redis.call('ZREM', queue, id)
    out[5] = out[5] + 1
    -- The copy in the store now: its receipt counts as a finish, so a copy
    -- received again after its dedupe key expired starts afresh.
    local received = tonumber(redis.call('ZSCORE', KEYS[5], id))
    if redis.call('EXISTS', p .. 'event:' .. id) == 1 and received ~= nil
        and key_is(p .. 'event-dlv:' .. id, 'list') then
      local ids = redis.call('LRANGE', p .. 'event-dlv:' .. id, 0, -1)
      local found, settled, class_now, last = {}, true, 'delivered', received
      for _, did in ipairs(ids) do
        local d = read_record(p .. 'dlv:' .. did)
        -- Missing or unreadable: its state is unknown, so the event stays.
        -- Every check comes before the first write: Redis does not undo a
        -- script's writes when it fails half way.
        if not d or not key_is(p .. 'attempts:' .. did, 'list') then
          settled = false
        else
          local c = class_of[d.state]
          if c == nil or type(d.updated_at) ~= 'number' then
            settled = false
          else
            if c == 'dead' then class_now = 'dead' end
            if d.updated_at > last then last = d.updated_at end
            table.insert(found, {did, d.state})
          end
        end
        if not settled then break end
      end
      if settled then
        if last < cutoff[class_now] then
          for _, f in ipairs(found) do
            local did, state = f[1], f[2]
            local n = redis.call('LLEN', p .. 'attempts:' .. did)
            redis.call('DEL', p .. 'dlv:' .. did, p .. 'attempts:' .. did)
            redis.call('ZREM', KEYS[2], did)
            if state == 'dead' then redis.call('ZREM', KEYS[3], did) end
            if state == 'discarded' then redis.call('ZREM', KEYS[4], did) end
            if state == 'skipped' then redis.call('ZREM', p .. 'skipped', did) end
            redis.call('HINCRBY', KEYS[1], state, -1)
            if n > 0 then redis.call('HINCRBY', KEYS[1], 'attempts', -n) end
            out[2] = out[2] + 1
            out[3] = out[3] + n
          end
          redis.call('DEL', p .. 'event:' .. id, p .. 'event-dlv:' .. id)
          redis.call('ZREM', KEYS[5], id)
          -- Off its subject's timeline; the subject goes with its last event.
          local numbered = redis.call('HGET', p .. 'numbered', id)
          if numbered then
            redis.call('HDEL', p .. 'numbered', id)
            local subject = string.match(numbered, '^(.*)|%d+$')
            if subject then
              redis.call('ZREM', p .. 'timeline:' .. subject, id)
              if redis.call('ZCARD', p .. 'timeline:' .. subject) == 0 then
                redis.call('DEL', p .. 'subject:' .. subject)
              end
            end
          end
          out[1] = out[1] + 1
        else
          -- Finished again later, or in the other class: wait.
          redis.call('ZADD', p .. 'settled:' .. class_now, last, id)
        end
      end
    end
  end
end
local room = limit - out[5]
if room > 0 then
  local jobs = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', '(' .. ARGV[4], 'LIMIT', 0, room)
  for _, job in ipairs(jobs) do
    redis.call('DEL', p .. 'replay:' .. job)
    redis.call('ZREM', KEYS[6], job)
    out[4] = out[4] + 1
  end
end
return out
