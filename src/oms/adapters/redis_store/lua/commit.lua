-- One atomic transition: guards first, then events (each takes the next per-user sequence
-- and is appended to that user's stream), then writes. Nothing is written unless every guard
-- holds, so a state change and its events are never seen apart.
--
-- ARGV[1] = events kept per user stream. Then a flat list of instructions:
--   I key identity        same store: GET key must equal identity, else {'lost'} (first)
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
-- KEYS and ARGV end with ScriptPipe's landing marks (script_pipe.py). This command's
-- number becomes its connection's mark, and joins the mark's ':refused' zset if a guard
-- fails; that zset keeps only numbers not answered yet (the rest are never sent again).
-- A re-sent commit whose earlier attempt ran (that connection's mark reached the attempt's
-- number) and was not refused by its guards writes nothing and answers {'landed'}: never
-- applied twice, and its caller told it holds. After a reconnect, commands also carry the
-- previous connection's mark and the number it had reached when last answered: a mark now
-- below it means Redis lost acknowledged commits (restarted from an older state), and
-- nothing is written: {'rewound', mark now, number answered}.
local nk, na = #KEYS, #ARGV
local mark, number, answered = KEYS[nk], ARGV[na - 3], ARGV[na - 2]
local earlier = tonumber(ARGV[na - 1])
local first_mark, first_no = nk - earlier, na - 4 - earlier
if ARGV[na] == '1' then
  -- An expired mark (its connection idle for an hour) proves nothing either way.
  local reached = redis.call('GET', KEYS[first_mark - 1])
  if reached and tonumber(reached) < tonumber(ARGV[first_no]) then
    return {'rewound', reached, ARGV[first_no]}
  end
end
-- Set before any other answer: each one but 'rewound' (or an error) shows Redis holds the
-- mark (ScriptPipe's `marked`), 'landed' included.
redis.call('SET', mark, number, 'EX', 3600)
for e = 1, earlier do
  local key, no = KEYS[first_mark + e - 1], ARGV[first_no + e]
  if tonumber(redis.call('GET', key) or '0') >= tonumber(no)
      and not redis.call('ZSCORE', key .. ':refused', no) then
    return {'landed'}
  end
end
local function refused(reply)
  local key = mark .. ':refused'
  redis.call('ZADD', key, number, number)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', answered)
  redis.call('EXPIRE', key, 3600)
  return reply
end
local retention = ARGV[1]
local seqs = {}
local guard_no = 0
local i = 2
local n = first_no - (ARGV[na] == '1' and 1 or 0)
while i <= n do
  local op = ARGV[i]
  if op == 'I' then
    if redis.call('GET', KEYS[tonumber(ARGV[i + 1])]) ~= ARGV[i + 2] then
      return refused({'lost'})
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
return reply
