-- KEYS: dlv, counts. ARGV: token, due, key prefix.
local d = read_record(KEYS[1])
if d == nil then return 0 end
if not d then return redis.error_reply('unreadable delivery record') end
if d.state ~= 'in_flight' or d.claim_token ~= tonumber(ARGV[1]) then return 0 end
if type(d.id) ~= 'string' or type(d.endpoint) ~= 'string' then return redis.error_reply('unreadable delivery record') end
d.state = 'pending'
d.next_attempt_at = tonumber(ARGV[2])
redis.call('ZADD', ARGV[3] .. 'due:' .. d.endpoint, tonumber(ARGV[2]), d.id)
redis.call('ZREM', ARGV[3] .. 'slots:' .. d.endpoint, d.id .. ':' .. ARGV[1])
redis.call('HINCRBY', KEYS[2], 'in_flight', -1)
redis.call('HINCRBY', KEYS[2], 'pending', 1)
redis.call('SET', KEYS[1], cjson.encode(d))
-- Deliveries of its subject parked behind this claim go on.
gate_update(ARGV[3], d, d.id)
return 1
