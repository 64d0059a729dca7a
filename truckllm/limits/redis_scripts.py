"""The Lua scripts of the Redis state backend: every check-and-count is one of them, run
atomically by the Redis server on its own clock (TIME), in one round trip.

Data layout (all under the `truckllm:` prefix):
- a rate window is a sorted set scored by admission time in ms; a request window's
  members are grant ids, a token window's are `<grant id>:<tokens>` with the running
  total in a string beside it (`...:sum`). Entries older than the window are dropped
  before every read, so a window holds exactly what was admitted in the last minute.
- concurrency slots are a sorted set of grant ids scored by lease expiry: an instance
  renews the leases of its requests in flight, so those of an instance that died expire.
- an account is a hash: `ps` (period start, ISO), `pr ppt pct psp` (the period's
  requests, prompt and completion tokens, spend), `lr lpt lct lsp` (lifetime).

Pure text; truckllm.limits.redis_clients and redis_upstream run them. Must not import
anything of TruckLLM.
"""

from __future__ import annotations

_PRELUDE = """
local function fields(packed)
  local out, i = {}, 1
  for v in string.gmatch(packed .. '|', '([^|]*)|') do
    out[i] = v
    i = i + 1
  end
  return out
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function amount_of(member)
  return tonumber(string.match(member, ':(%-?%d+)$'))
end
local function expire(z, sum, horizon)
  if sum then
    local old = redis.call('ZRANGEBYSCORE', z, '-inf', horizon)
    if #old == 0 then return end
    local gone = 0
    for i = 1, #old do gone = gone + amount_of(old[i]) end
    redis.call('DECRBY', sum, gone)
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', horizon)
end
local function used(z, sum)
  if sum then return tonumber(redis.call('GET', sum) or '0') end
  return redis.call('ZCARD', z)
end
local function wait_ms(z, sum, amount, limit, now, span)
  if amount > limit then return -1 end
  local excess = used(z, sum) + amount - limit
  if excess <= 0 then return 0 end
  if not sum then
    local e = redis.call('ZRANGE', z, excess - 1, excess - 1, 'WITHSCORES')
    if #e == 0 then return span end
    return math.max(0, tonumber(e[2]) + span - now)
  end
  local entries = redis.call('ZRANGE', z, 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    excess = excess - amount_of(entries[i])
    if excess <= 0 then return math.max(0, tonumber(entries[i + 1]) + span - now) end
  end
  return span
end
local function reset_in(z, now, span)
  local newest = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
  if #newest == 0 then return 0 end
  return math.max(0, tonumber(newest[2]) + span - now)
end
-- `seen` (when given) gets the windows' use before this request: {requests, tokens}.
local function refusal(rz, tz, ts, slots, rpm, tpm, maxc, est, now, span, seen)
  if maxc then
    redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
    if redis.call('ZCARD', slots) >= maxc then
      if maxc == 0 then return {'max_concurrent', maxc, -1} end
      return {'max_concurrent', maxc, 1000}
    end
  end
  if rpm then
    expire(rz, nil, now - span)
    local n = redis.call('ZCARD', rz)
    if seen then seen[1] = n end
    if n + 1 > rpm then
      return {'rpm', rpm, wait_ms(rz, nil, 1, rpm, now, span)}
    end
  end
  if tpm then
    expire(tz, ts, now - span)
    local n = used(tz, ts)
    if seen then seen[2] = n end
    if n + est > tpm then
      return {'tpm', tpm, wait_ms(tz, ts, est, tpm, now, span)}
    end
  end
  return nil
end
local function count(rz, tz, ts, rpm, tpm, est, gid, now, span)
  if rpm then
    redis.call('ZADD', rz, now, gid)
    redis.call('PEXPIRE', rz, span * 2)
  end
  if tpm then
    redis.call('ZADD', tz, now, gid .. ':' .. est)
    redis.call('INCRBY', ts, est)
    redis.call('PEXPIRE', tz, span * 2)
    redis.call('PEXPIRE', ts, span * 2)
  end
end
-- Expired leases are dropped where they are counted: before a cap is checked (refusal)
-- and in CURRENT.
local function take_slot(slots, gid, now, lease)
  redis.call('ZADD', slots, now + lease, gid)
  redis.call('PEXPIRE', slots, lease * 2)
end
local function reconcile(z, s, gid, est, real, now, span)
  if real == est then return end
  expire(z, s, now - span)
  local old = gid .. ':' .. est
  local at = redis.call('ZSCORE', z, old)
  if at then
    redis.call('ZREM', z, old)
    redis.call('ZADD', z, at, gid .. ':' .. real)
    redis.call('INCRBY', s, real - est)
  elseif real > est then
    redis.call('ZADD', z, now, gid .. '+:' .. (real - est))
    redis.call('INCRBY', s, real - est)
    redis.call('PEXPIRE', z, span * 2)
    redis.call('PEXPIRE', s, span * 2)
  end
end
local function enter_period(acct, ps)
  if redis.call('HGET', acct, 'ps') ~= ps then
    redis.call('HSET', acct, 'ps', ps, 'pr', 0, 'ppt', 0, 'pct', 0, 'psp', 0)
  end
end
local function window_state(rz, tz, ts, rpm, tpm, now, span)
  local r = {0, 0, 0, 0}
  if rpm then
    expire(rz, nil, now - span)
    r[1] = redis.call('ZCARD', rz)
    r[2] = reset_in(rz, now, span)
  end
  if tpm then
    expire(tz, ts, now - span)
    r[3] = used(tz, ts)
    r[4] = reset_in(tz, now, span)
  end
  return r
end
"""

# KEYS: the key's rpm, tpm, tpm sum, slots, account; the gateway's rpm, tpm, tpm sum, slots
# ARGV[1]: these fields joined by '|' (one argument: fewer to encode and send, and these
#       scripts run for every request): grant id, estimate, period start, span ms,
#       lease ms, has key, key rpm, tpm, max_concurrent, budget, gateway rpm, tpm,
#       max_concurrent  ('' = not set; from span on, the same for every request of a key)
# Returns {status, rpm used, rpm reset ms, tpm used, tpm reset ms, period spend
#          [, limit, configured, retry ms]}: 0 admitted, 1 budget, 2 key, 3 gateway.
ADMIT = _PRELUDE + """
local A = fields(ARGV[1])
local gid, est, ps = A[1], tonumber(A[2]), A[3]
local span, lease = tonumber(A[4]), tonumber(A[5])
local has_key = A[6] == '1'
local k_rpm, k_tpm, k_maxc = tonumber(A[7]), tonumber(A[8]), tonumber(A[9])
local budget = tonumber(A[10])
local g_rpm, g_tpm, g_maxc = tonumber(A[11]), tonumber(A[12]), tonumber(A[13])
local now = now_ms()
local spend = '0'
local function answer(status, refused)
  local h = window_state(KEYS[1], KEYS[2], KEYS[3], k_rpm, k_tpm, now, span)
  local out = {status, h[1], h[2], h[3], h[4], spend}
  if refused then
    out[7] = refused[1]
    out[8] = refused[2]
    out[9] = refused[3]
  end
  return out
end
local seen = {0, 0}
local acct_ps
if has_key then
  local acct = redis.call('HMGET', KEYS[5], 'ps', 'psp')
  acct_ps = acct[1]
  if acct_ps == ps then spend = acct[2] or '0' end
  if budget and tonumber(spend) >= budget then return answer(1) end
  local r = refusal(KEYS[1], KEYS[2], KEYS[3], KEYS[4], k_rpm, k_tpm, k_maxc, est, now, span,
                    seen)
  if r then return answer(2, r) end
end
local r = refusal(KEYS[6], KEYS[7], KEYS[8], KEYS[9], g_rpm, g_tpm, g_maxc, est, now, span)
if r then return answer(3, r) end
take_slot(KEYS[9], gid, now, lease)
count(KEYS[6], KEYS[7], KEYS[8], g_rpm, g_tpm, est, gid, now, span)
if not has_key then return {0, 0, 0, 0, 0, spend} end
take_slot(KEYS[4], gid, now, lease)
count(KEYS[1], KEYS[2], KEYS[3], k_rpm, k_tpm, est, gid, now, span)
if acct_ps ~= ps then
  redis.call('HSET', KEYS[5], 'ps', ps, 'pr', 0, 'ppt', 0, 'pct', 0, 'psp', 0)
end
redis.call('HINCRBY', KEYS[5], 'pr', 1)
redis.call('HINCRBY', KEYS[5], 'lr', 1)
-- The windows as they are now: what was read, this request added, its entry the newest.
local out = {0, 0, 0, 0, 0, spend}
if k_rpm then out[2], out[3] = seen[1] + 1, span end
if k_tpm then out[4], out[5] = seen[2] + est, span end
return out
"""

# KEYS: the key's rpm, tpm, tpm sum, slots, account; the gateway's tpm, tpm sum, slots
# ARGV[1]: these fields joined by '|', as for ADMIT: grant id, span ms, settle, release,
#       key estimate, gateway estimate ('' = none reserved), real tokens ('' = never
#       reported), prompt, completion, cost, period start, has key
# Returns 1 (the next admission returns the windows for the headers).
FINISH = _PRELUDE + """
local A = fields(ARGV[1])
local gid, span = A[1], tonumber(A[2])
local settle, release = A[3] == '1', A[4] == '1'
local k_est, g_est, real = tonumber(A[5]), tonumber(A[6]), tonumber(A[7])
local has_key = A[12] == '1'
local now = now_ms()
if settle then
  if real and k_est then reconcile(KEYS[2], KEYS[3], gid, k_est, real, now, span) end
  if real and g_est then reconcile(KEYS[6], KEYS[7], gid, g_est, real, now, span) end
  if has_key then
    enter_period(KEYS[5], A[11])
    local prompt, completion = tonumber(A[8]), tonumber(A[9])
    if prompt ~= 0 then
      redis.call('HINCRBY', KEYS[5], 'ppt', prompt)
      redis.call('HINCRBY', KEYS[5], 'lpt', prompt)
    end
    if completion ~= 0 then
      redis.call('HINCRBY', KEYS[5], 'pct', completion)
      redis.call('HINCRBY', KEYS[5], 'lct', completion)
    end
    if tonumber(A[10]) ~= 0 then
      redis.call('HINCRBYFLOAT', KEYS[5], 'psp', A[10])
      redis.call('HINCRBYFLOAT', KEYS[5], 'lsp', A[10])
    end
  end
end
if release then
  if has_key then redis.call('ZREM', KEYS[4], gid) end
  redis.call('ZREM', KEYS[8], gid)
end
return 1
"""

# KEYS: rpm, tpm, tpm sum, slots.  ARGV: span ms.
# Returns {requests, tokens, slots in use} now.
CURRENT = _PRELUDE + """
local span, now = tonumber(ARGV[1]), now_ms()
expire(KEYS[1], nil, now - span)
expire(KEYS[2], KEYS[3], now - span)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
return {redis.call('ZCARD', KEYS[1]), used(KEYS[2], KEYS[3]), redis.call('ZCARD', KEYS[4])}
"""

# KEYS: rpm, tpm, tpm sum, account.  ARGV: period start.
RESET = """
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HSET', KEYS[4], 'ps', ARGV[1], 'pr', 0, 'ppt', 0, 'pct', 0, 'psp', 0)
return 1
"""

# Adds usage made elsewhere (while Redis was unreachable, or a state file imported) to an
# account. KEYS: account.  ARGV: period start, the period's requests, prompt, completion,
# spend, then the lifetime's.
MERGE = """
local cur = redis.call('HGET', KEYS[1], 'ps')
if cur == ARGV[1] then
  redis.call('HINCRBY', KEYS[1], 'pr', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'ppt', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'pct', ARGV[4])
  redis.call('HINCRBYFLOAT', KEYS[1], 'psp', ARGV[5])
elseif (not cur) or cur < ARGV[1] then
  redis.call('HSET', KEYS[1], 'ps', ARGV[1], 'pr', ARGV[2], 'ppt', ARGV[3], 'pct', ARGV[4],
             'psp', ARGV[5])
end
redis.call('HINCRBY', KEYS[1], 'lr', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'lpt', ARGV[7])
redis.call('HINCRBY', KEYS[1], 'lct', ARGV[8])
redis.call('HINCRBYFLOAT', KEYS[1], 'lsp', ARGV[9])
return 1
"""

# KEYS: pairs of (slots, ...) sorted sets.  ARGV: lease ms, then one grant id per key.
RENEW = _PRELUDE + """
local lease, now = tonumber(ARGV[1]), now_ms()
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + lease, ARGV[i + 1])
end
return #KEYS
"""

# An upstream key's own rpm/tpm: check and count. KEYS: rpm, tpm, tpm sum, account.
# ARGV: grant id, estimate, span ms, rpm, tpm ('' = not set).
# Returns {0} when counted, {1, limit, configured, retry ms} when refused.
UPSTREAM_ACQUIRE = _PRELUDE + """
local gid, est, span = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local rpm, tpm = tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_ms()
local r = refusal(KEYS[1], KEYS[2], KEYS[3], nil, rpm, tpm, nil, est, now, span)
if r then return {1, r[1], r[2], r[3]} end
count(KEYS[1], KEYS[2], KEYS[3], rpm, tpm, est, gid, now, span)
redis.call('HINCRBY', KEYS[4], 'r', 1)
return {0}
"""

# KEYS: tpm, tpm sum, account.  ARGV: grant id, span ms, estimate ('' = none), real
# tokens ('' = never reported), prompt, completion, cost.
UPSTREAM_SETTLE = _PRELUDE + """
local gid, span = ARGV[1], tonumber(ARGV[2])
local est, real = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
if est and real then reconcile(KEYS[1], KEYS[2], gid, est, real, now, span) end
redis.call('HINCRBY', KEYS[3], 'pt', ARGV[5])
redis.call('HINCRBY', KEYS[3], 'ct', ARGV[6])
if tonumber(ARGV[7]) ~= 0 then redis.call('HINCRBYFLOAT', KEYS[3], 'sp', ARGV[7]) end
return 1
"""

# Health of upstream keys and targets, shared: one hash, a field per subject, values on
# the Redis clock (ms):
#   c|<key ref>   cooled until
#   d|<key ref>   disabled (upstream rejected it) until a reload clears it
#   k|<key ref>, t|<provider>\x1f<model>   a breaker: "<open until>|<openings>|<trial
#       lease until>|<trial owner>|<window ms>|<failure,failure,...>" (open until '' =
#       closed; failures: the times of those in the window, which the last failure set)
# Each transition is one script: atomic, on Redis's clock, returning {now, state after} so
# that the instance's local copy follows.
_HEALTH_PRELUDE = _PRELUDE + """
local function num(x) return string.format('%d', x) end
local function load(raw)
  local b = {u = false, n = 0, t = 0, o = '', w = 0, f = {}}
  if raw then
    local p = fields(raw)
    b.u = tonumber(p[1]) or false
    b.n = tonumber(p[2]) or 0
    b.t = tonumber(p[3]) or 0
    b.o = p[4] or ''
    b.w = tonumber(p[5]) or 0
    for v in string.gmatch(p[6] or '', '[^,]+') do b.f[#b.f + 1] = tonumber(v) end
  end
  return b
end
local function pack(b)
  if not b.u and #b.f == 0 then return '' end
  local f = {}
  for i = 1, #b.f do f[i] = num(b.f[i]) end
  return (b.u and num(b.u) or '') .. '|' .. num(b.n) .. '|' .. num(b.t) .. '|' .. b.o .. '|'
    .. num(b.w) .. '|' .. table.concat(f, ',')
end
local function save(h, field, b)
  local packed = pack(b)
  if packed == '' then
    redis.call('HDEL', h, field)
  else
    redis.call('HSET', h, field, packed)
  end
  return packed
end
"""

# A failure counted against a breaker (Breaker.on_failure). KEYS: the hash.
# ARGV: field, cooldown ms, failures that open it, window ms, longest cooldown ms.
HEALTH_FAIL = _HEALTH_PRELUDE + """
local now = now_ms()
local cool, threshold = tonumber(ARGV[2]), tonumber(ARGV[3])
local window, longest = tonumber(ARGV[4]), tonumber(ARGV[5])
local b = load(redis.call('HGET', KEYS[1], ARGV[1]))
b.w = window
local function open()
  b.n = b.n + 1
  b.u = now + math.floor(math.min(cool * 2 ^ (b.n - 1), longest))
  b.f = {}
  b.t, b.o = 0, ''
end
if b.u and now >= b.u then
  open()                                  -- the half-open trial failed
else
  local kept = {}
  for i = 1, #b.f do
    if now - b.f[i] <= window then kept[#kept + 1] = b.f[i] end
  end
  kept[#kept + 1] = now
  b.f = kept
  if #b.f >= threshold then open() end
end
return {num(now), save(KEYS[1], ARGV[1], b)}
"""

# A success: the breaker closes. KEYS: the hash.  ARGV: field.
HEALTH_CLOSE = _PRELUDE + """
redis.call('HDEL', KEYS[1], ARGV[1])
return {string.format('%d', now_ms()), ''}
"""

# Take the trial of a half-open breaker. KEYS: the hash.  ARGV: field, lease ms, owner.
# Returns {now, answer, state}: answer 1 taken by this call, 0 closed (nothing to take),
# -1 not this caller's (still open, or another holds the trial).
HEALTH_CLAIM = _HEALTH_PRELUDE + """
local now = now_ms()
local b = load(redis.call('HGET', KEYS[1], ARGV[1]))
if not b.u then return {num(now), '0', pack(b)} end
if now < b.u or b.t > now then return {num(now), '-1', pack(b)} end
b.t, b.o = now + tonumber(ARGV[2]), ARGV[3]
return {num(now), '1', save(KEYS[1], ARGV[1], b)}
"""

# Give a trial back, if the caller still holds it. KEYS: the hash.  ARGV: field, owner.
HEALTH_RELEASE = _HEALTH_PRELUDE + """
local now = now_ms()
local b = load(redis.call('HGET', KEYS[1], ARGV[1]))
if b.o == ARGV[2] then
  b.t, b.o = 0, ''
  return {num(now), save(KEYS[1], ARGV[1], b)}
end
return {num(now), pack(b)}
"""

# Cool a key: until max(what it is, now + ms). KEYS: the hash.  ARGV: field, ms.
# Returns {now, until}.
HEALTH_COOL = _HEALTH_PRELUDE + """
local now = now_ms()
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local new = now + tonumber(ARGV[2])
if new > old then
  redis.call('HSET', KEYS[1], ARGV[1], num(new))
  old = new
end
return {num(now), num(old)}
"""

# Disable keys (ARGV[1] '1') or enable them again ('0'). KEYS: the hash.
# ARGV: that, then the fields.
HEALTH_FLAG = """
for i = 2, #ARGV do
  if ARGV[1] == '1' then
    redis.call('HSET', KEYS[1], ARGV[i], '1')
  else
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return 1
"""

# Everything shared, for the once-a-second refresh of the local copies; drops what has
# expired (cooldowns, trial leases, failures older than their window). KEYS: the hash.
# Returns {now, field, value, field, value, ...}.
HEALTH_READ = _HEALTH_PRELUDE + """
local now = now_ms()
local out = {num(now)}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local field, value = all[i], all[i + 1]
  local kind = string.sub(field, 1, 1)
  if kind == 'c' then
    if tonumber(value) <= now then
      redis.call('HDEL', KEYS[1], field)
      value = nil
    end
  elseif kind == 'k' or kind == 't' then
    local b = load(value)
    local kept = {}
    for j = 1, #b.f do
      if now - b.f[j] <= b.w then kept[#kept + 1] = b.f[j] end
    end
    b.f = kept
    if b.t <= now then b.t, b.o = 0, '' end
    local packed = pack(b)
    if packed ~= value then save(KEYS[1], field, b) end
    value = packed ~= '' and packed or nil
  end
  if value then
    out[#out + 1] = field
    out[#out + 1] = value
  end
end
return out
"""
