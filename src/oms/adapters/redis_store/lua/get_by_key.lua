-- The document a caller's own key names, in one round trip: KEYS[1] the hash from keys to
-- ids, KEYS[2] the hash of documents by id; ARGV[1] the key. Nil when the key names nothing.
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return false end
return redis.call('HGET', KEYS[2], id)
