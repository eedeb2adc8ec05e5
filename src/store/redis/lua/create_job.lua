-- KEYS: replay job, unfinished jobs set. ARGV: job id, job json.
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
