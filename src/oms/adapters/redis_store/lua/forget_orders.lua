-- Forgets finished orders of one user and their fills (retention): each only while its
-- version is still the one the caller judged, so that an order changed since (a late fill)
-- is kept. Not a state transition: no event, and the sequence does not move.
--
-- KEYS: orders, order_versions, client_order_ids, order_index, fills, fill_index (one user),
-- then the writer lease. ARGV[1]: this server's lease holder ('' when it holds none: nothing
-- is forgotten by a server whose lease another has taken). Then per order, its id, version,
-- client order id, fill count, then its fill ids. Returns how many orders were forgotten.
if ARGV[1] ~= '' and redis.call('GET', KEYS[7]) ~= ARGV[1] then
  return 0
end
local forgotten = 0
local i = 2
while i <= #ARGV do
  local id, version, client_id = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local fills = tonumber(ARGV[i + 3])
  if redis.call('HGET', KEYS[2], id) == version then
    redis.call('HDEL', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    if redis.call('HGET', KEYS[3], client_id) == id then
      redis.call('HDEL', KEYS[3], client_id)
    end
    redis.call('ZREM', KEYS[4], id)
    for f = 1, fills do
      redis.call('HDEL', KEYS[5], ARGV[i + 3 + f])
      redis.call('ZREM', KEYS[6], ARGV[i + 3 + f])
    end
    forgotten = forgotten + 1
  end
  i = i + 4 + fills
end
return forgotten
