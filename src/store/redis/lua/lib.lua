-- Lua shared by the scripts that read delivery records or write batches.
-- `read_record(key)`: the decoded record; nil if there is none; false if it
-- is not a JSON object. `each_slice(list, f)`: calls `f` with `list` in
-- slices of 200 (Lua's stack limits `unpack`); pairs stay together.
local function read_record(key)
  local raw = redis.call('GET', key)
  if not raw then return nil end
  local ok, d = pcall(cjson.decode, raw)
  if ok and type(d) == 'table' then return d end
  return false
end
local function each_slice(list, f)
  for i = 1, #list, 200 do f(unpack(list, i, math.min(i + 199, #list))) end
end
