-- Replaces a kept callback's description, if it is still kept.
-- KEYS: qtn:ID. ARGV: description (JSON). Returns 1 if it was kept.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'meta', ARGV[1])
return 1
