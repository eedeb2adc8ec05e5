-- KEYS: due, counts, slots, bucket. ARGV: now, limit, visibility, key
-- prefix, token base, shared max_in_flight (0: none), rate per second and
-- burst (0: none), the relay's clock at sending, and the offset of Redis's
-- clock from the relay's, as the relay last measured it; then the leases
-- ("id:token") of this relay's claims whose request is over, to give back
-- before counting the slots taken.
-- Returns Redis's "now" of the claim, then (delivery json, event json) pairs.
-- Claim tokens are the random
-- base plus the claim's place in the batch, not the old token plus one: a
-- Redis that lost its last writes would otherwise hand a second claimer the
-- token the first one holds. The batch's records, schedule entries and
-- counts are written with one command each (in slices, for Lua's stack):
-- every write command costs Redis an append to its log, whatever its size.
--
-- One clock: "now" is the relay's, moved onto Redis's clock by the offset
-- the relay measured (ARGV 10), so a relay whose clock is off never sees a
-- live claim of another relay as expired. Should Redis's TIME say the
-- clocks moved apart by more than a second since that measurement (a clock
-- was stepped), TIME wins: then "now" is off by at most the time this
-- request waited, which errs late, never early.
local shift = tonumber(ARGV[10])
local t = redis.pcall('TIME')
if type(t) == 'table' and t[1] then
  local measured = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[9])
  if math.abs(measured - shift) > 1000 then shift = measured end
end
local now = tonumber(ARGV[1]) + shift
local limit = tonumber(ARGV[2])
-- Shared limits: a lease per delivery in flight ("id:token"), to its
-- claim's deadline; tokens refilled at the rate, up to the burst.
local slots, rate, burst = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
if #ARGV > 10 then
  local returned = {}
  for i = 11, #ARGV do returned[#returned + 1] = ARGV[i] end
  each_slice(returned, function(...) redis.call('ZREM', KEYS[3], ...) end)
end
if slots > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  limit = math.min(limit, slots - redis.call('ZCARD', KEYS[3]))
end
local tokens, refilled = 0, now
if rate > 0 then
  local b = redis.call('HMGET', KEYS[4], 'tokens', 'at')
  tokens, refilled = tonumber(b[1]) or burst, tonumber(b[2]) or now
  if now > refilled then
    tokens = math.min(burst, tokens + (now - refilled) * rate / 1000)
    refilled = now
  end
  limit = math.min(limit, math.floor(tokens))
end
if limit <= 0 then return {tostring(now)} end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
local deadline = now + tonumber(ARGV[3])
local base = tonumber(ARGV[5])
local out, records, schedule, leases, was_pending = {}, {}, {}, {}, 0
for _, id in ipairs(ids) do
  local d = read_record(ARGV[4] .. 'dlv:' .. id)
  if not d or type(d.event_id) ~= 'string' or type(d.claim_token) ~= 'number' or type(d.state) ~= 'string' then
    -- Missing or unreadable: off the schedule and the open index, so claims
    -- never spin on it and gauges do not age it; an unreadable record stays
    -- for inspection.
    redis.call('ZREM', KEYS[1], id)
    if redis.call('ZREM', ARGV[4] .. 'open', id) == 1 then redis.call('HINCRBY', KEYS[2], 'pending', -1) end
  else
    local event = redis.call('GET', ARGV[4] .. 'event:' .. d.event_id)
    local open = d.state == 'pending' or d.state == 'in_flight'
    local why = open and gate_free(ARGV[4], d, id, now) or 'ok'
    if not open then
      redis.call('ZREM', KEYS[1], id)
    elseif why ~= 'ok' then
      -- Ordered, and behind an earlier delivery of its subject or beside
      -- one being sent: off the schedule until its gate moves on. The head
      -- goes back on it, in case it was parked behind this one's expired
      -- claim; and this one, if it heads the gate once stale entries are
      -- dropped.
      redis.call('ZREM', KEYS[1], id)
      if gate_update(ARGV[4], d, id) and why == 'behind' and gate_free(ARGV[4], d, id, now) == 'ok' then
        redis.call('ZADD', KEYS[1], tonumber(d.next_attempt_at) or now, id)
      end
    elseif not event then
      redis.call('HINCRBY', KEYS[2], d.state, -1)
      redis.call('HINCRBY', KEYS[2], 'dead', 1)
      d.state = 'dead'
      d.next_attempt_at = cjson.null
      d.last_error = 'event record missing'
      d.updated_at = now
      redis.call('SET', ARGV[4] .. 'dlv:' .. id, cjson.encode(d))
      redis.call('ZREM', KEYS[1], id)
      redis.call('ZREM', ARGV[4] .. 'open', id)
      redis.call('ZADD', ARGV[4] .. 'dead', 0, id)
      gate_update(ARGV[4], d, id)
    else
      if d.state == 'pending' then was_pending = was_pending + 1 end
      d.state = 'in_flight'
      local token = base + #out
      if token == d.claim_token then token = token + 1 end
      d.claim_token = token
      d.next_attempt_at = deadline
      d.updated_at = tonumber(ARGV[1])
      local enc = cjson.encode(d)
      table.insert(records, ARGV[4] .. 'dlv:' .. id)
      table.insert(records, enc)
      table.insert(schedule, deadline)
      table.insert(schedule, id)
      table.insert(leases, deadline)
      -- The lease names its claim: returning it after a takeover frees
      -- nothing of the new claim's.
      table.insert(leases, id .. ':' .. string.format('%.0f', token))
      table.insert(out, enc)
      table.insert(out, event)
    end
  end
end
each_slice(records, function(...) redis.call('MSET', ...) end)
each_slice(schedule, function(...) redis.call('ZADD', KEYS[1], ...) end)
local claimed = #leases / 2
if slots > 0 and claimed > 0 then
  each_slice(leases, function(...) redis.call('ZADD', KEYS[3], ...) end)
  redis.call('PEXPIRE', KEYS[3], 2 * tonumber(ARGV[3]) + 60000)
end
if rate > 0 and claimed > 0 then
  redis.call('HSET', KEYS[4], 'tokens', tostring(tokens - claimed), 'at', refilled)
  redis.call('PEXPIRE', KEYS[4], 3600000)
end
if was_pending > 0 then
  redis.call('HINCRBY', KEYS[2], 'pending', -was_pending)
  redis.call('HINCRBY', KEYS[2], 'in_flight', was_pending)
end
table.insert(out, 1, tostring(now))
return out
