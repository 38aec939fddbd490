-- Removes closed sides from an exchange's set of open sides (members written before a close
-- took its side out of the set). A side is removed only while its current record is still
-- the closed one the caller read: a side that opened again since then keeps its member.
--
-- KEYS[1] the exchange's set; KEYS[i + 1] the current_positions hash of side i.
-- ARGV[3i - 2], ARGV[3i - 1], ARGV[3i]: side i's member, its field in that hash, and the id
-- of its closed record.
for i = 1, #KEYS - 1 do
  if redis.call('HGET', KEYS[i + 1], ARGV[3 * i - 1]) == ARGV[3 * i] then
    redis.call('SREM', KEYS[1], ARGV[3 * i - 2])
  end
end
