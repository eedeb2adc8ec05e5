-- Lua shared by the scripts that read delivery records or write batches.
-- `read_record(key)`: the decoded record; nil if there is none; false if it
-- is not a JSON object. `each_slice(list, f)`: calls `f` with `list` in
-- slices of 200 (Lua's stack limits `unpack`); pairs stay together.
local function read_record(key)
  local raw = redis.call('GET', key)
  if not raw then return nil end
  local ok, d = pcall(cjson.decode, raw)
  if ok and type(d) == 'table' then return d end
  return false
end
local function each_slice(list, f)
  for i = 1, #list, 200 do f(unpack(list, i, math.min(i + 199, #list))) end
end
-- Gates (`ordering = "subject"`): an ordered delivery (one with `order`)
-- waits in `gate:<endpoint>:<subject>`, by sequence, while it is pending, in
-- flight or orphaned (an orphaned one still holds its subject's later ones
-- back), and only the gate's head, when open, is on the schedule. Every
-- gate's key is in the set `gates`, for the housekeeping check.
local function is_member(d)
  return d.state == 'pending' or d.state == 'in_flight' or d.state == 'orphaned'
end
-- The id and record of a gate's head. Entries whose record is missing,
-- unreadable or no longer a member are dropped on the way: a damaged record
-- must not hold its subject back for ever. `id`, `d`: a delivery being
-- written now (its stored record may be older).
local function gate_head(p, g, id, d)
  while true do
    local head = redis.call('ZRANGE', g, 0, 0)[1]
    if not head then
      redis.call('SREM', p .. 'gates', g)
      return nil, nil
    end
    if head == id then return head, d end
    local h = read_record(p .. 'dlv:' .. head)
    if h and is_member(h) then return head, h end
    redis.call('ZREM', g, head)
  end
end
-- Puts an open head on its schedule; returns whether it was off it.
local function schedule_head(p, head, h)
  if (h.state == 'pending' or h.state == 'in_flight') and tonumber(h.next_attempt_at)
      and type(h.endpoint) == 'string' then
    return redis.call('ZADD', p .. 'due:' .. h.endpoint, tonumber(h.next_attempt_at), head) == 1
  end
  return false
end
-- `gate_update(p, d, id)`, after `d` took its new state: keeps its
-- membership, puts the head on the schedule if it is another open delivery,
-- and returns whether `d` itself may be scheduled (it is not ordered, or it
-- is open and heads its gate).
local function gate_update(p, d, id)
  if type(d.order) ~= 'table' or type(d.order.subject) ~= 'string' or type(d.endpoint) ~= 'string' then
    return true
  end
  local g = p .. 'gate:' .. d.endpoint .. ':' .. d.order.subject
  if is_member(d) then
    redis.call('ZADD', g, tonumber(d.order.sequence) or 0, id)
    redis.call('SADD', p .. 'gates', g)
  else
    redis.call('ZREM', g, id)
  end
  local head, h = gate_head(p, g, id, d)
  if head and head ~= id then schedule_head(p, head, h) end
  return head == id and (d.state == 'pending' or d.state == 'in_flight')
end
-- Whether a claim at `now` may take the ordered delivery `d`: 'ok'; 'behind'
-- (another delivery heads its gate); 'busy' (another delivery of the gate
-- holds a live claim).
local function gate_free(p, d, id, now)
  if type(d.order) ~= 'table' or type(d.order.subject) ~= 'string' then return 'ok' end
  local members = redis.call('ZRANGE', p .. 'gate:' .. d.endpoint .. ':' .. d.order.subject, 0, -1)
  if members[1] ~= id then return 'behind' end
  for i = 2, #members do
    local m = read_record(p .. 'dlv:' .. members[i])
    if m and m.state == 'in_flight' and (tonumber(m.next_attempt_at) or 0) > now then return 'busy' end
  end
  return 'ok'
end
