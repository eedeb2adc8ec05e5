-- KEYS: counts, replay job, unfinished jobs set. ARGV: key prefix, now, job
-- json (the new step), ids... Saves the job with this step's counts added
-- only over the step before it; returns the saved job, or false.
local raw = redis.call('GET', KEYS[2])
if not raw then return false end
local stored = cjson.decode(raw)
local job = cjson.decode(ARGV[3])
if stored.finished or stored.steps + 1 ~= job.steps then return false end
local only = type(job.filter) == 'table' and job.filter.state or nil
if type(only) ~= 'string' then only = nil end
local r, s, m = replay_ids(KEYS[1], ARGV[1], job.include_delivered, only, tonumber(ARGV[2]), 4)
job.replayed = job.replayed + r
job.skipped = job.skipped + s
job.not_found = job.not_found + m
local enc = cjson.encode(job)
redis.call('SET', KEYS[2], enc)
if job.finished then
  redis.call('SREM', KEYS[3], job.id)
  -- Finished jobs by when they finished, for retention.
  redis.call('ZADD', ARGV[1] .. 'replays-done', job.updated_at, job.id)
else
  redis.call('SADD', KEYS[3], job.id)
end
return enc
