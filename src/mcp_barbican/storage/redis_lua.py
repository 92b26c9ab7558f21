"""The Lua scripts of the Redis store (`redis.py`): each write is one script, atomic on the server.

Every table script takes ARGV[1] origin, ARGV[2] table name and ARGV[3] the change channel, then its
own arguments; its last key is the change counter. It publishes each change it makes as the JSON
`[origin, table, id, stored value or null, sequence]`, the sequence counting every change under the
prefix, and returns the last sequence it told (so the writer can wait until its listener heard it).
"""

from __future__ import annotations

from typing import Final

__all__ = ["DELETE", "LIST_RULES", "REPLACE", "TAKE", "WRITE", "WRITE_RULE"]

# ARGV[1] origin, ARGV[2] table name, ARGV[3] channel; then the script's own. KEYS[#KEYS]: the change counter.
_PUBLISH: Final = """
local told = 0
local function tell(id, value)
  told = redis.call('INCR', KEYS[#KEYS])
  redis.call('PUBLISH', ARGV[3], cjson.encode({ARGV[1], ARGV[2], id, value or cjson.null, told}))
end
"""
# KEYS[1] hash. ARGV[4] id, ARGV[5] created_at, ARGV[6] body, ARGV[7] mode (put|create).
WRITE: Final = (
    _PUBLISH
    + """
local value = ARGV[5] .. '\\n' .. ARGV[6]
if ARGV[7] == 'create' then
  if redis.call('HSETNX', KEYS[1], ARGV[4], value) == 0 then return 0 end
else
  redis.call('HSET', KEYS[1], ARGV[4], value)
end
tell(ARGV[4], value)
return told
"""
)
# KEYS[1] hash, KEYS[2] expiry set. ARGV[4] id, ARGV[5] body, ARGV[6] now and ARGV[7] expires_at (both '' for
# a table whose records never expire; expires_at '' for a rule that does not).
REPLACE: Final = (
    _PUBLISH
    + """
local function purge()
  if ARGV[6] == '' then return end
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[6])
  for _, id in ipairs(due) do redis.call('HDEL', KEYS[1], id); redis.call('ZREM', KEYS[2], id) end
end
purge()
local old = redis.call('HGET', KEYS[1], ARGV[4])
if not old then return false end
local value = string.sub(old, 1, string.find(old, '\\n', 1, true)) .. ARGV[5]
redis.call('HSET', KEYS[1], ARGV[4], value)
if ARGV[6] ~= '' then
  if ARGV[7] ~= '' then redis.call('ZADD', KEYS[2], ARGV[7], ARGV[4]) else redis.call('ZREM', KEYS[2], ARGV[4]) end
end
tell(ARGV[4], value)
return {told, value}
"""
)
# KEYS[1] hash, KEYS[2] expiry set. ARGV[4] id.
DELETE: Final = (
    _PUBLISH
    + """
redis.call('ZREM', KEYS[2], ARGV[4])
if redis.call('HDEL', KEYS[1], ARGV[4]) == 0 then return 0 end
tell(ARGV[4], nil)
return told
"""
)
# KEYS[1] hash, KEYS[2] expiry set. ARGV[4] now.
LIST_RULES: Final = """
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
for _, id in ipairs(due) do redis.call('HDEL', KEYS[1], id); redis.call('ZREM', KEYS[2], id) end
return redis.call('HGETALL', KEYS[1])
"""
# KEYS[1] hash, KEYS[2] expiry set. ARGV[4] id, ARGV[5] created_at, ARGV[6] body, ARGV[7] expires_at or '',
# ARGV[8] now, ARGV[9] max rules, ARGV[10] mode (put|create). Returns {written, evicted id or false}; -1: full.
WRITE_RULE: Final = (
    _PUBLISH
    + """
local id, value = ARGV[4], ARGV[5] .. '\\n' .. ARGV[6]
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[8])
for _, old in ipairs(due) do redis.call('HDEL', KEYS[1], old); redis.call('ZREM', KEYS[2], old) end
local exists = redis.call('HEXISTS', KEYS[1], id) == 1
if exists and ARGV[10] == 'create' then return {0, false} end
if ARGV[7] ~= '' and tonumber(ARGV[7]) <= tonumber(ARGV[8]) then
  redis.call('HDEL', KEYS[1], id); redis.call('ZREM', KEYS[2], id)
  tell(id, value)
  return {1, false, told}
end
local evicted = false
if not exists and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[9]) then
  local soonest = redis.call('ZRANGE', KEYS[2], 0, 0)
  if #soonest == 0 then return -1 end
  evicted = soonest[1]
  redis.call('HDEL', KEYS[1], evicted); redis.call('ZREM', KEYS[2], evicted)
  tell(evicted, nil)
end
redis.call('HSET', KEYS[1], id, value)
if ARGV[7] ~= '' then redis.call('ZADD', KEYS[2], ARGV[7], id) else redis.call('ZREM', KEYS[2], id) end
tell(id, value)
return {1, evicted, told}
"""
)
# KEYS: the buckets. ARGV[1] now ('' to read Redis TIME); then per bucket its lead, interval and how many
# tokens the caller wants from it (0: none, it holds one already; more than 1: a lease, granted as far as the
# bucket holds, at least 1). All or nothing: every bucket wanted from must hold a token, else none is taken.
# A bucket is its `due` (buckets.Bucket); an absent key is a full bucket.
# Returns {taken, level1, granted1, level2, granted2, ...} as strings.
TAKE: Final = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local dues, grants, taken = {}, {}, 1
for i, key in ipairs(KEYS) do
  local lead, interval, want = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
  local due = tonumber(redis.call('GET', key) or '') or (now - lead)
  dues[i] = due
  grants[i] = 0
  if want > 0 then
    if due > now then
      taken = 0
    else
      local base = math.max(due, now - lead)
      grants[i] = math.min(want, math.floor((now - base) / interval) + 1)
    end
  end
end
local out = {tostring(taken)}
for i, key in ipairs(KEYS) do
  local lead, interval = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
  local due = dues[i]
  local grant = 0
  if taken == 1 and grants[i] > 0 then
    grant = grants[i]
    due = math.max(due, now - lead) + grant * interval
    local ttl = math.ceil((due + lead - now) * 1000)
    redis.call('SET', key, string.format('%.17g', due), 'PX', math.max(ttl, 1))
  end
  out[2 * i] = string.format('%.17g', 1 + (now - due) / interval)
  out[2 * i + 1] = tostring(grant)
end
return out
"""
