-- Keeps refused callbacks while they fit under the byte cap
-- (store::quarantine), each with its size added to the total in the same
-- script, so no number of relays can push the quarantine past the cap.
-- KEYS: qtn (ids, lexically ordered), qtn-bytes (the total).
-- ARGV: max bytes, key prefix, then per item: id, size, description
-- (JSON), body. Returns how many were kept.
local max = tonumber(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local kept = 0
for i = 3, #ARGV, 4 do
  local id, size = ARGV[i], tonumber(ARGV[i + 1])
  local key = ARGV[2] .. 'qtn:' .. id
  if used + size <= max and redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'meta', ARGV[i + 2], 'body', ARGV[i + 3], 'size', size)
    redis.call('ZADD', KEYS[1], 0, id)
    used = used + size
    kept = kept + 1
  end
end
if kept > 0 then redis.call('SET', KEYS[2], string.format('%d', used)) end
return kept
