-- Removes kept callbacks (admitted by a reverify, or expired), taking each
-- one's size off the total and its digest out of the index. Harmless to
-- run twice; a hash without a size (damaged) still goes.
-- KEYS: qtn, qtn-bytes, qtn-digests. ARGV: key prefix, then ids. Returns
-- how many were kept.
local removed, freed = 0, 0
for i = 2, #ARGV do
  local key = ARGV[1] .. 'qtn:' .. ARGV[i]
  local found = redis.call('HMGET', key, 'size', 'digest')
  if found[2] and found[2] ~= '' and redis.call('HGET', KEYS[3], found[2]) == ARGV[i] then
    redis.call('HDEL', KEYS[3], found[2])
  end
  if redis.call('DEL', key) == 1 then
    freed = freed + (tonumber(found[1]) or 0)
    removed = removed + 1
  end
  redis.call('ZREM', KEYS[1], ARGV[i])
end
if freed > 0 then
  local left = tonumber(redis.call('GET', KEYS[2]) or '0') - freed
  redis.call('SET', KEYS[2], string.format('%d', math.max(left, 0)))
end
return removed
