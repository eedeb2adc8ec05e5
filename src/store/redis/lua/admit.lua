-- KEYS: dedupe, event, event-dlv, counts, index, dedupe-exp, open, events,
-- settled:delivered, then a (dlv, due) pair per delivery. ARGV: ttl, event
-- json, now, event id, key prefix, subject key ('' for none), its status
-- as JSON text, its rank ('' for none), the byte after which the lifecycle
-- fields go, then an (id, json, ordered '1'|'0', skips regressions
-- '1'|'0') quadruple per delivery. The subject's record, timeline and
-- gates are under the prefix (`subject:`, `timeline:`, `gate:`). Returns
-- 0 for a duplicate, 1 accepted, 2 accepted as a regression.
local now = tonumber(ARGV[3])
local prev = redis.call('GET', KEYS[1])
if prev and tonumber(prev) > now then return 0 end
local p, id = ARGV[5], ARGV[4]
local json, seq, regression = ARGV[2], nil, false
if ARGV[6] ~= '' then
  -- Numbered as lifecycle::Sequenced::next does.
  local subject = p .. 'subject:' .. ARGV[6]
  local last = redis.call('HMGET', subject, 'seq', 'rank', 'status')
  seq = (tonumber(last[1]) or 0) + 1
  local previous = 'null'
  if seq > 1 and last[3] then previous = last[3] end
  local max_rank, rank = tonumber(last[2]) or 0, tonumber(ARGV[8])
  if rank and max_rank > 0 and rank < max_rank then regression = true end
  if rank and rank > max_rank then max_rank = rank end
  redis.call('HSET', subject, 'seq', seq, 'rank', max_rank, 'status', ARGV[7])
  redis.call('ZADD', p .. 'timeline:' .. ARGV[6], seq, id)
  redis.call('HSET', p .. 'numbered', id, ARGV[6] .. '|' .. seq)
  local at = tonumber(ARGV[9])
  json = string.sub(json, 1, at) .. ',"sequence":' .. seq .. ',"previous_status":' .. previous
    .. ',"regression":' .. tostring(regression) .. string.sub(json, at + 1)
end
local expires = now + tonumber(ARGV[1])
redis.call('SET', KEYS[1], expires, 'PX', ARGV[1])
redis.call('ZADD', KEYS[6], expires, id)
redis.call('SET', KEYS[2], json)
redis.call('ZADD', KEYS[8], now, id)
local n = (#KEYS - 9) / 2
local pending, skipped = 0, 0
for i = 1, n do
  local b = 9 + 4 * (i - 1)
  local did, record = ARGV[b + 1], ARGV[b + 2]
  local d = nil
  if seq and (ARGV[b + 3] == '1' or (regression and ARGV[b + 4] == '1')) then
    d = cjson.decode(record)
    if ARGV[b + 3] == '1' then d.order = {subject = ARGV[6], sequence = seq} end
    if regression and ARGV[b + 4] == '1' then
      d.state = 'skipped'
      d.next_attempt_at = cjson.null
    end
    record = cjson.encode(d)
  end
  redis.call('SET', KEYS[9 + 2 * i - 1], record)
  redis.call('ZADD', KEYS[5], 0, did)
  redis.call('RPUSH', KEYS[3], did)
  if d and d.state == 'skipped' then
    redis.call('ZADD', p .. 'skipped', 0, did)
    skipped = skipped + 1
  else
    if not d or gate_update(p, d, did) then redis.call('ZADD', KEYS[9 + 2 * i], now, did) end
    redis.call('ZADD', KEYS[7], 0, did)
    pending = pending + 1
  end
end
-- Matched no endpoint, or all skipped: settled at once (retention).
if pending == 0 then redis.call('ZADD', KEYS[9], now, id) end
if pending > 0 then redis.call('HINCRBY', KEYS[4], 'pending', pending) end
if skipped > 0 then redis.call('HINCRBY', KEYS[4], 'skipped', skipped) end
if regression then return 2 end
return 1
