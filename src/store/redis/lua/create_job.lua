-- KEYS: replay job, unfinished jobs set, finished jobs by time. ARGV: job id,
-- job json, finished ('1' | '0'), updated at.
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
else
  redis.call('SADD', KEYS[2], ARGV[1])
end
return 1
