-- Finishes a batch of attempts. KEYS: counts. ARGV: key prefix, then seven
-- per finish: delivery id, claim token, attempt json, next ('delivered' |
-- 'retry' | 'dead'), retry time, last error ('' for none), updated at.
-- Returns one result per finish: 1 recorded, 0 the claim is no longer held,
-- -1 its record, its attempt or one of its keys is unreadable (that finish
-- alone is refused). Every check, key types included, comes before the
-- first write: Redis does not undo a script's writes when it fails half way.
-- The batch's records, schedule changes and counts are written with one
-- command each, its attempts with one `RPUSH` each. Schedule keys come from
-- the records' endpoints, and so do the keys of their shared slots.
local p = ARGV[1]
local function has_type(key, want)
  local t = redis.call('TYPE', key).ok
  return t == 'none' or t == want
end
local schedules = {}
local function schedule_ok(due)
  if schedules[due] == nil then schedules[due] = has_type(due, 'zset') end
  return schedules[due]
end
if not has_type(KEYS[1], 'hash') or not has_type(p .. 'open', 'zset') or not has_type(p .. 'dead', 'zset') then
  return redis.error_reply('relay keys of the wrong type: ' .. KEYS[1] .. ', ' .. p .. 'open or ' .. p .. 'dead')
end
local results, seen, attempts, records, settled, dead, notes = {}, {}, {}, {}, {}, {}, {}
local unschedule, reschedule, ordered, leases = {}, {}, {}, {}
local added = {delivered = 0, dead = 0, pending = 0}
local kinds = {delivered = true, dead = true, retry = true}
local finished = 0
for i = 0, (#ARGV - 1) / 7 - 1 do
  local b = 1 + i * 7
  local id, kind = ARGV[b + 1], ARGV[b + 4]
  local d = read_record(p .. 'dlv:' .. id)
  local aok, a = pcall(cjson.decode, ARGV[b + 3])
  local result = 1
  if d == nil or seen[id] then
    result = 0
  elseif not d then
    result = -1
  elseif d.state ~= 'in_flight' or d.claim_token ~= tonumber(ARGV[b + 2]) then
    result = 0
  elseif type(d.attempts) ~= 'number' or type(d.endpoint) ~= 'string' or not kinds[kind]
      or not aok or type(a) ~= 'table' or not has_type(p .. 'attempts:' .. id, 'list')
      or not schedule_ok(p .. 'due:' .. d.endpoint) or not schedule_ok(p .. 'slots:' .. d.endpoint) then
    result = -1
  end
  if result == 1 then
    seen[id] = true
    local due = p .. 'due:' .. d.endpoint
    -- The lease on one of the endpoint's shared slots goes back.
    local slots = p .. 'slots:' .. d.endpoint
    leases[slots] = leases[slots] or {}
    table.insert(leases[slots], id .. ':' .. ARGV[b + 2])
    d.attempts = d.attempts + 1
    a.number = d.attempts
    table.insert(attempts, p .. 'attempts:' .. id)
    table.insert(attempts, cjson.encode(a))
    if ARGV[b + 6] == '' then d.last_error = cjson.null else d.last_error = ARGV[b + 6] end
    d.updated_at = tonumber(ARGV[b + 7])
    if kind == 'retry' then
      d.state = 'pending'
      d.next_attempt_at = tonumber(ARGV[b + 5])
      reschedule[due] = reschedule[due] or {}
      table.insert(reschedule[due], d.next_attempt_at)
      table.insert(reschedule[due], id)
    else
      d.state = kind
      d.next_attempt_at = cjson.null
      unschedule[due] = unschedule[due] or {}
      table.insert(unschedule[due], id)
      table.insert(settled, id)
      if kind == 'dead' then
        table.insert(dead, 0)
        table.insert(dead, id)
      end
      if type(d.event_id) == 'string' then
        local q = p .. 'settled:' .. kind
        notes[q] = notes[q] or {}
        table.insert(notes[q], d.updated_at)
        table.insert(notes[q], d.event_id)
      end
    end
    added[d.state] = added[d.state] + 1
    finished = finished + 1
    table.insert(records, p .. 'dlv:' .. id)
    table.insert(records, cjson.encode(d))
  end
  if result == 1 and type(d.order) == 'table' then table.insert(ordered, {id, d}) end
  table.insert(results, result)
end
for i = 1, #attempts, 2 do redis.call('RPUSH', attempts[i], attempts[i + 1]) end
each_slice(records, function(...) redis.call('MSET', ...) end)
for slots, ids in pairs(leases) do each_slice(ids, function(...) redis.call('ZREM', slots, ...) end) end
for due, ids in pairs(unschedule) do each_slice(ids, function(...) redis.call('ZREM', due, ...) end) end
for due, entries in pairs(reschedule) do each_slice(entries, function(...) redis.call('ZADD', due, ...) end) end
each_slice(settled, function(...) redis.call('ZREM', p .. 'open', ...) end)
each_slice(dead, function(...) redis.call('ZADD', p .. 'dead', ...) end)
-- Settled events, for retention (`settled:delivered`, `settled:dead`).
for q, entries in pairs(notes) do each_slice(entries, function(...) redis.call('ZADD', q, ...) end) end
-- Ordered deliveries: the next of each subject goes on the schedule.
for _, o in ipairs(ordered) do gate_update(p, o[2], o[1]) end
if #attempts > 0 then redis.call('HINCRBY', KEYS[1], 'attempts', #attempts / 2) end
if finished > 0 then redis.call('HINCRBY', KEYS[1], 'in_flight', -finished) end
for state, n in pairs(added) do
  if n > 0 then redis.call('HINCRBY', KEYS[1], state, n) end
end
return results
