-- One atomic transition: guards first, then events (each takes the next per-user sequence
-- and is appended to that user's stream), then writes. Nothing is written unless every guard
-- holds, so a state change and its events are never seen apart.
--
-- ARGV[1] = events kept per user stream. Then a flat list of instructions:
--   I key identity        same store: GET key must equal identity, else {'lost'} (first)
--   L key holder          writer lease: GET key must equal holder, else {'taken'}
--   U key field doc_key   unique: field must be absent from hash key; if present, return
--                         {'exists', guard_no, value, HGET(doc_key, value)}
--   E key field value     equal: HGET key field must equal value (absent reads as '')
--   A key field           absent: field must not exist in hash key
--   X seq_key stream_key payload    event: INCR seq_key, XADD stream_key <seq>-0 d payload
--   H key field value     HSET          D key field   HDEL
--   S key member          SADD          R key member  SREM
--   Z key event_no member ZADD with the sequence of event event_no as score
--   N key event_no member the same with NX: only a new member gets a score
-- Keys are indexes into KEYS. Failed guards return {'conflict', guard_no, current}.
-- Returns {'ok', seq_1, ..., seq_n}.
--
-- KEYS and ARGV end with ScriptPipe's landing marks (script_pipe.py). Every run counts
-- itself in the store's commit count and answers {count, its reply}; one that finds the
-- count at or below the floor it was given (a count Redis had answered before: it restarted
-- from an older state) takes its count back, writes nothing and answers 'rewound'. This
-- command's number becomes its connection's mark, and joins the mark's ':refused' zset if a
-- guard fails; that zset keeps only numbers not answered yet (the rest are never sent
-- again). A re-sent commit whose earlier attempt ran (that connection's mark reached the
-- attempt's number) and was not refused by its guards writes nothing and answers
-- {'landed'}: never applied twice, and its caller told it holds.
local nk, na = #KEYS, #ARGV
local mark, count_key = KEYS[nk], KEYS[nk - 1]
local number, answered = ARGV[na - 3], ARGV[na - 2]
local earlier = tonumber(ARGV[na - 1])
local floor = tonumber(ARGV[na])
local count = redis.call('INCR', count_key)
if count <= floor then
  redis.call('DECR', count_key)
  return {count - 1, {'rewound'}}
end
redis.call('SET', mark, number, 'EX', 3600)
for e = 1, earlier do
  local key, no = KEYS[nk - 1 - earlier + e - 1], ARGV[na - 4 - earlier + e]
  if tonumber(redis.call('GET', key) or '0') >= tonumber(no)
      and not redis.call('ZSCORE', key .. ':refused', no) then
    return {count, {'landed'}}
  end
end
local function refused(reply)
  local key = mark .. ':refused'
  redis.call('ZADD', key, number, number)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', answered)
  redis.call('EXPIRE', key, 3600)
  return {count, reply}
end
local retention = ARGV[1]
local seqs = {}
local guard_no = 0
local i = 2
local n = na - 4 - earlier
while i <= n do
  local op = ARGV[i]
  if op == 'I' then
    if redis.call('GET', KEYS[tonumber(ARGV[i + 1])]) ~= ARGV[i + 2] then
      return refused({'lost'})
    end
    i = i + 3
  elseif op == 'L' then
    if redis.call('GET', KEYS[tonumber(ARGV[i + 1])]) ~= ARGV[i + 2] then
      return refused({'taken'})
    end
    i = i + 3
  elseif op == 'U' then
    guard_no = guard_no + 1
    local cur = redis.call('HGET', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
    if cur then
      return refused(
        {'exists', guard_no, cur, redis.call('HGET', KEYS[tonumber(ARGV[i + 3])], cur)})
    end
    i = i + 4
  elseif op == 'E' then
    guard_no = guard_no + 1
    local cur = redis.call('HGET', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2]) or ''
    if cur ~= ARGV[i + 3] then return refused({'conflict', guard_no, cur}) end
    i = i + 4
  elseif op == 'A' then
    guard_no = guard_no + 1
    local cur = redis.call('HGET', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
    if cur then return refused({'conflict', guard_no, cur}) end
    i = i + 3
  elseif op == 'X' then
    local seq = redis.call('INCR', KEYS[tonumber(ARGV[i + 1])])
    redis.call('XADD', KEYS[tonumber(ARGV[i + 2])], 'MAXLEN', retention,
      string.format('%d-0', seq), 'd', ARGV[i + 3])
    seqs[#seqs + 1] = seq
    i = i + 4
  elseif op == 'H' then
    redis.call('HSET', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  elseif op == 'D' then
    redis.call('HDEL', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
    i = i + 3
  elseif op == 'S' then
    redis.call('SADD', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
    i = i + 3
  elseif op == 'R' then
    redis.call('SREM', KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2])
    i = i + 3
  elseif op == 'Z' then
    redis.call('ZADD', KEYS[tonumber(ARGV[i + 1])], seqs[tonumber(ARGV[i + 2])], ARGV[i + 3])
    i = i + 4
  elseif op == 'N' then
    redis.call('ZADD', KEYS[tonumber(ARGV[i + 1])], 'NX', seqs[tonumber(ARGV[i + 2])], ARGV[i + 3])
    i = i + 4
  else
    return redis.error_reply('commit.lua: unknown instruction ' .. tostring(op))
  end
end
local reply = {'ok'}
for k = 1, #seqs do reply[k + 1] = seqs[k] end
return {count, reply}
