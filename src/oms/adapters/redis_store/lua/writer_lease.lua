-- The keyspace's writer lease: one OMS process writes a store at a time. KEYS[1] the lease;
-- ARGV[1] the holder asking; ARGV[2] 'hold' (take it, or keep it, for ARGV[3] ms) or
-- 'release'. A lease another holder has is left alone: answers {that holder, its ms left}.
local holder = redis.call('GET', KEYS[1])
if ARGV[2] == 'release' then
  if holder == ARGV[1] then redis.call('DEL', KEYS[1]) end
  return {}
end
if holder and holder ~= ARGV[1] then
  return {holder, redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return {}
