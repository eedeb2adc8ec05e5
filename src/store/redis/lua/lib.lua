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
-- waits in `gate:<endpoint>:<subject>`, by sequence, while it is pending or
-- in flight, and only the gate's head is on the schedule. `gate_update(p,
-- d, id)`, after `d` took its new state: keeps its membership, puts the
-- head on the schedule if it is another open delivery, and returns whether
-- `d` itself may be scheduled (it is not ordered, or it heads its gate).
local function gate_update(p, d, id)
  if type(d.order) ~= 'table' or type(d.order.subject) ~= 'string' or type(d.endpoint) ~= 'string' then
    return true
  end
  local g = p .. 'gate:' .. d.endpoint .. ':' .. d.order.subject
  if d.state == 'pending' or d.state == 'in_flight' then
    redis.call('ZADD', g, tonumber(d.order.sequence) or 0, id)
  else
    redis.call('ZREM', g, id)
  end
  local head = redis.call('ZRANGE', g, 0, 0)[1]
  if head and head ~= id then
    local h = read_record(p .. 'dlv:' .. head)
    if h and (h.state == 'pending' or h.state == 'in_flight') and tonumber(h.next_attempt_at) then
      redis.call('ZADD', p .. 'due:' .. d.endpoint, tonumber(h.next_attempt_at), head)
    end
  end
  return head == id
end
-- Whether a claim at `now` may take the ordered delivery `d`: it heads its
-- gate and no other delivery of the gate holds a live claim.
local function gate_free(p, d, id, now)
  if type(d.order) ~= 'table' or type(d.order.subject) ~= 'string' then return true end
  local members = redis.call('ZRANGE', p .. 'gate:' .. d.endpoint .. ':' .. d.order.subject, 0, -1)
  if members[1] ~= id then return false end
  for i = 2, #members do
    local m = read_record(p .. 'dlv:' .. members[i])
    if m and m.state == 'in_flight' and (tonumber(m.next_attempt_at) or 0) > now then return false end
  end
  return true
end
