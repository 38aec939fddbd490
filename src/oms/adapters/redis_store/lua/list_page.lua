-- One page of a user's orders or fills, newest first, read atomically with the user's
-- sequence so the page is a snapshot "as of" that sequence.
--
-- KEYS[1] sequence key, KEYS[2] index zset (score = sequence of the record's creation),
-- KEYS[3] documents hash, KEYS[4] optional set of ids to draw candidates from (open orders).
-- ARGV[1] cursor: '+inf' or the exclusive upper score; ARGV[2] page size;
-- ARGV[3] most index entries to examine; ARGV[4] JSON filters {field: [allowed values]}
-- (values compared as strings); ARGV[5] '1' when KEYS[4] is the candidate source.
-- Returns {as_of_sequence, next_cursor ('' at the end), doc_1, score_1, doc_2, score_2, ...}.
local as_of = redis.call('GET', KEYS[1]) or '0'
local cursor = ARGV[1]
local want = tonumber(ARGV[2])
local budget = tonumber(ARGV[3])
local filters = cjson.decode(ARGV[4])
local allowed = {}
local any_filter = false
for field, values in pairs(filters) do
  local set = {}
  for _, v in ipairs(values) do set[v] = true end
  allowed[field] = set
  any_filter = true
end

local function matches(doc)
  if not any_filter then return true end
  local record = cjson.decode(doc)
  for field, set in pairs(allowed) do
    local value = record[field]
    if value == nil or value == cjson.null or not set[tostring(value)] then return false end
  end
  return true
end

local upper = cursor == '+inf' and math.huge or tonumber(cursor)
local candidates = {}
if ARGV[5] == '1' then
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[4])) do
    local score = redis.call('ZSCORE', KEYS[2], id)
    if score and tonumber(score) < upper then
      candidates[#candidates + 1] = {tonumber(score), id}
    end
  end
  table.sort(candidates, function(a, b) return a[1] > b[1] end)
else
  local max = cursor == '+inf' and '+inf' or ('(' .. cursor)
  local rows = redis.call('ZREVRANGEBYSCORE', KEYS[2], max, '-inf', 'WITHSCORES', 'LIMIT', 0, budget + 1)
  for k = 1, #rows, 2 do candidates[#candidates + 1] = {tonumber(rows[k + 1]), rows[k]} end
end

local reply = {as_of, ''}
local found = 0
local examined = 0
for k = 1, #candidates do
  if found == want or examined == budget then
    reply[2] = string.format('%d', candidates[k - 1][1])
    return reply
  end
  examined = examined + 1
  local score, id = candidates[k][1], candidates[k][2]
  local doc = redis.call('HGET', KEYS[3], id)
  if doc and matches(doc) then
    found = found + 1
    reply[#reply + 1] = doc
    reply[#reply + 1] = string.format('%d', score)
  end
end
return reply
