-- One step of the gates' check (store::Store::heal_gates). ARGV: key prefix,
-- SSCAN cursor ('0' to begin), count. For each gate in this slice of
-- `gates`: drops entries whose record is missing, unreadable or final, and
-- puts an open head that is off its schedule back on it. Returns {next
-- cursor ('0' at the end), heads put back}.
local p = ARGV[1]
local scan = redis.call('SSCAN', p .. 'gates', ARGV[2], 'COUNT', tonumber(ARGV[3]))
local healed = 0
for _, g in ipairs(scan[2]) do
  if redis.call('TYPE', g).ok ~= 'zset' then
    redis.call('SREM', p .. 'gates', g)
  else
    local head, h = gate_head(p, g, nil, nil)
    if head and schedule_head(p, head, h) then healed = healed + 1 end
  end
end
return {scan[1], healed}
