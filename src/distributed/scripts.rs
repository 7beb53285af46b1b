//! The Lua scripts, each atomic on the Redis server and using only the server's clock
//! (`TIME`), so instances' clocks never matter. Every multi-key script keeps its keys in one
//! hash slot (`{…}` hash tags), so Redis Cluster runs them unchanged; Valkey runs them as is.

use std::sync::LazyLock;

use redis::Script;

/// Lease exchange for one scope's buckets (all `KEYS` share the scope's hash tag). Per key,
/// four `ARGV`: capacity, period in ms, give (returned tokens > 0, debt < 0), want. Refill
/// `tok = min(C, tok + Δt·C/period)`, add `give` (never above C), grant up to `want` whole
/// tokens. Returns per key `{granted, whole tokens left, ms until one more token}`. The same
/// arithmetic as `ratelimit::lease::StoreBucket`, which the property tests exercise.
pub static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i, key in ipairs(KEYS) do
  local base = (i - 1) * 4
  local cap = tonumber(ARGV[base + 1])
  local period = tonumber(ARGV[base + 2])
  local give = tonumber(ARGV[base + 3])
  local want = tonumber(ARGV[base + 4])
  local v = redis.call('HMGET', key, 'tok', 'ts')
  local tok = tonumber(v[1])
  local ts = tonumber(v[2])
  if tok == nil or ts == nil then
    tok = cap
    ts = now
  end
  if now > ts then
    tok = math.min(cap, tok + (now - ts) * cap / period)
    ts = now
  end
  tok = math.min(cap, tok + give)
  local granted = 0
  if want > 0 and tok >= 1 then
    granted = math.min(want, math.floor(tok))
  end
  tok = tok - granted
  redis.call('HSET', key, 'tok', string.format('%.6f', tok), 'ts', ts)
  redis.call('PEXPIRE', key, period * 2)
  local wait = 0
  if tok < 1 then
    wait = math.ceil((1 - tok) * period / cap)
  end
  local left = 0
  if tok > 0 then
    left = math.floor(tok)
  end
  out[i] = {granted, left, wait}
end
return out
"#,
    )
});

/// Registers this instance: `KEYS[1]` the live set (score = last beat, server ms), `KEYS[2]`
/// its info. `ARGV`: id, TTL in ms, info JSON. Drops instances silent for a TTL and returns
/// how many are live.
pub static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('SET', KEYS[2], ARGV[3], 'PX', ttl)
return redis.call('ZCARD', KEYS[1])
"#,
    )
});

/// Writes one key record: `KEYS[1]` the keys hash, `KEYS[2]` the version counter.
/// `ARGV`: name, JSON, mode, channel. Mode `create`: only if absent; `replace:<old JSON>`:
/// only if the stored record is still the old one (compare-and-set); `put`: always; `delete`:
/// remove.
/// Returns the new version, 0 if the condition failed. The version bump and the notification
/// happen in the same atomic step as the write, so no instance can miss a change for good.
pub static KEY_WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local mode = ARGV[3]
local current = redis.call('HGET', KEYS[1], ARGV[1])
if mode == 'create' then
  if current then return 0 end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
elseif mode == 'put' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
elseif mode == 'delete' then
  if not current then return 0 end
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  if current ~= string.sub(mode, 9) then return 0 end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
local v = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[4], v)
return v
"#,
    )
});
