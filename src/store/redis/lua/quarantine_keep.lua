-- Keeps refused callbacks while they fit under the byte cap
-- (store::quarantine), each with its size added to the total in the same
-- script, so no number of relays can push the quarantine past the cap. A
-- callback whose id or digest is kept already is a duplicate.
-- KEYS: qtn (ids, lexically ordered), qtn-bytes (the total), qtn-digests
-- (digest -> id).
-- ARGV: max bytes, key prefix, then per item: id, size, digest,
-- description (JSON), body. Returns {kept, duplicates}.
local max = tonumber(ARGV[1])
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
local kept, duplicates = 0, 0
for i = 3, #ARGV, 5 do
  local id, size, digest = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local key = ARGV[2] .. 'qtn:' .. id
  local same = digest ~= '' and redis.call('HGET', KEYS[3], digest)
  if redis.call('EXISTS', key) == 1 or (same and redis.call('EXISTS', ARGV[2] .. 'qtn:' .. same) == 1) then
    duplicates = duplicates + 1
  elseif used + size <= max then
    redis.call('HSET', key, 'meta', ARGV[i + 3], 'body', ARGV[i + 4], 'size', size, 'digest', digest)
    redis.call('ZADD', KEYS[1], 0, id)
    if digest ~= '' then redis.call('HSET', KEYS[3], digest, id) end
    used = used + size
    kept = kept + 1
  end
end
if kept > 0 then redis.call('SET', KEYS[2], string.format('%d', used)) end
return {kept, duplicates}
