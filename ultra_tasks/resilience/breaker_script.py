"""The Lua script behind the shared circuit breaker: every transition happens inside it, atomically, on
Redis' own clock, so the fleet agrees on one state and exactly one caller makes (and publishes) each
transition.

KEYS: 1 state hash, 2 probe leases (zset: lease id -> expiry), 3 metrics hash, 4 failure-rate window hash
      (all share one hash tag, so they live in one cluster slot)
ARGV: 1 op, 2 breaker name, 3 event channel, 4 config JSON, 5 op argument JSON, 6 notice channel (the
      first failure of a closed breaker after a success is published there)

Ops: acquire (may move open -> half-open, takes a probe lease), record (an outcome with the generation it
started in), peek (flush batched successes, read state), force_open, disable, reset.
Reply: JSON {allowed, probe, state, gen, failures, retry_after, last_failure, from, to}.
"""

BREAKER_LUA = r"""
local state_key, lease_key, metrics_key, window_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op, name, channel, notices = ARGV[1], ARGV[2], ARGV[3], ARGV[6]
local cfg = cjson.decode(ARGV[4])
local arg = cjson.decode(ARGV[5])

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

local raw = redis.call('HMGET', state_key, 'state', 'gen', 'failures', 'open_until', 'trips', 'forced',
                       'hs_ok', 'last_failure', 'forced_until')
local s = {
  state = raw[1] or 'closed', gen = tonumber(raw[2]) or 0, failures = tonumber(raw[3]) or 0,
  open_until = tonumber(raw[4]) or 0, trips = tonumber(raw[5]) or 0, forced = raw[6] or '',
  hs_ok = tonumber(raw[7]) or 0, last_failure = tonumber(raw[8]) or 0, forced_until = tonumber(raw[9]) or 0,
}
local reply = {allowed = 0, probe = 0, retry_after = 0, from = '', to = ''}

local function save()
  redis.call('HSET', state_key, 'state', s.state, 'gen', s.gen, 'failures', s.failures,
             'open_until', s.open_until, 'trips', s.trips, 'forced', s.forced, 'hs_ok', s.hs_ok,
             'last_failure', s.last_failure, 'forced_until', s.forced_until)
end

local function transition(to, reason)
  local from = s.state
  s.state = to
  s.gen = s.gen + 1
  if to == 'open' then
    s.trips = s.trips + 1
    local timeout = cfg.reset_timeout * (cfg.reset_backoff ^ (s.trips - 1))
    if timeout > cfg.max_reset_timeout then timeout = cfg.max_reset_timeout end
    s.open_until = now + timeout
    s.hs_ok = 0
    redis.call('DEL', lease_key)
  elseif to == 'half-open' then
    s.hs_ok = 0
    redis.call('DEL', lease_key)
  elseif to == 'closed' then
    s.failures = 0
    s.trips = 0
    s.hs_ok = 0
    s.open_until = 0
    redis.call('DEL', lease_key, window_key)
  end
  redis.call('HINCRBY', metrics_key, 'changes:' .. from .. '->' .. to, 1)
  redis.call('PUBLISH', channel, cjson.encode({name = name, from = from, to = to, gen = s.gen, at = now,
                                               reason = reason, failures = s.failures}))
  reply.from, reply.to = from, to
end

local function window_add(calls, fails, slows)
  if not cfg.rate_threshold then return end
  local width = cfg.window / 10
  local bucket = math.floor(now / width)
  if calls > 0 then redis.call('HINCRBY', window_key, bucket .. ':c', calls) end
  if fails > 0 then redis.call('HINCRBY', window_key, bucket .. ':f', fails) end
  if slows > 0 then redis.call('HINCRBY', window_key, bucket .. ':s', slows) end
  redis.call('PEXPIRE', window_key, math.floor(cfg.window * 2000))
end

local function window_trips()
  if not cfg.rate_threshold then return false end
  local width = cfg.window / 10
  local oldest = math.floor(now / width) - 9
  local calls, fails, slows = 0, 0, 0
  local all = redis.call('HGETALL', window_key)
  for i = 1, #all, 2 do
    local b, kind = string.match(all[i], '^(%-?%d+):(%a)$')
    b = tonumber(b)
    if b and b < oldest then
      redis.call('HDEL', window_key, all[i])
    elseif kind == 'c' then calls = calls + tonumber(all[i + 1])
    elseif kind == 'f' then fails = fails + tonumber(all[i + 1])
    elseif kind == 's' then slows = slows + tonumber(all[i + 1]) end
  end
  if calls < cfg.minimum_calls then return false end
  if fails * 100 >= cfg.rate_threshold * calls then return true end
  if cfg.slow_rate_threshold and slows * 100 >= cfg.slow_rate_threshold * calls then return true end
  return false
end

local function open_due_to_half_open()
  if s.forced == '' and s.state == 'open' and now >= s.open_until then
    transition('half-open', 'reset timeout elapsed')
    return true
  end
  return false
end

local function shown_state()
  if s.forced == 'open' then return 'forced-open' elseif s.forced == 'disabled' then return 'disabled' end
  return s.state
end

local dirty = false
-- an operator state given a duration ends by itself, as an operator's reset would end it
if s.forced ~= '' and s.forced_until > 0 and now >= s.forced_until then
  s.state = shown_state()
  s.forced, s.forced_until = '', 0
  transition('closed', 'operator state expired')
  dirty = true
end
local rejected = tonumber(arg.rejections or 0)
if rejected > 0 then redis.call('HINCRBY', metrics_key, 'rejections', rejected) end
local pending = tonumber(arg.successes or 0)
if pending > 0 then
  redis.call('HINCRBY', metrics_key, 'successes', pending)
  if s.state == 'closed' then window_add(pending, 0, tonumber(arg.slow or 0)) end
end

if op == 'acquire' then
  if open_due_to_half_open() then dirty = true end
  if s.forced == 'disabled' then
    reply.allowed = 1
  elseif s.forced == 'open' then
    -- until the operator clears it: -1, or the seconds left of its duration
    reply.retry_after = s.forced_until > 0 and (s.forced_until - now) or -1
  elseif s.state == 'closed' then
    reply.allowed = 1
  elseif s.state == 'open' then
    reply.retry_after = s.open_until - now
  elseif #redis.call('ZRANGEBYSCORE', lease_key, '-inf', now, 'LIMIT', 0, 1) > 0 then
    -- half-open, and a probe's lease lapsed before it answered (its caller was killed or hung): a failed
    -- probe. Admitting another now could put two probes on the provider at once.
    transition('open', 'a probe lease expired')
    reply.retry_after = s.open_until - now
    dirty = true
  else -- half-open: exactly half_open_max_calls probes at a time, as leases that expire
    local running = redis.call('ZCARD', lease_key)
    if running + s.hs_ok < cfg.half_open_max_calls then
      redis.call('ZADD', lease_key, now + cfg.lease_ttl, arg.lease)
      -- the set outlives its leases, so a lease that lapsed is still seen (as a failed probe)
      redis.call('EXPIRE', lease_key, math.ceil(cfg.lease_ttl) + 86400)
      reply.allowed, reply.probe = 1, 1
    else
      local first = redis.call('ZRANGE', lease_key, 0, 0, 'WITHSCORES')
      reply.retry_after = first[2] and (tonumber(first[2]) - now) or cfg.lease_ttl
    end
  end
  if reply.allowed == 0 then redis.call('HINCRBY', metrics_key, 'rejections', 1) end

elseif op == 'record' then
  local ok = arg.outcome == 'success'
  redis.call('HINCRBY', metrics_key, ok and 'successes' or 'failures', 1)
  if arg.slow then redis.call('HINCRBY', metrics_key, 'slow_calls', 1) end
  if not ok then s.last_failure = now; dirty = true end
  if s.forced == '' and tonumber(arg.gen) == s.gen then
    if s.state == 'closed' then
      window_add(1, ok and 0 or 1, arg.slow and 1 or 0)
      if ok then
        if s.failures > 0 then s.failures = 0; dirty = true end
        if arg.slow and window_trips() then transition('open', 'slow-call rate over threshold') end
      else
        s.failures = s.failures + 1
        dirty = true
        if s.failures == 1 and notices then
          -- processes trusting a "no failures" verdict would batch their successes and leave the count
          -- standing: told, they send the next one, which resets it
          redis.call('PUBLISH', notices, cjson.encode({name = name, gen = s.gen}))
        end
        if s.failures >= cfg.failure_threshold then
          transition('open', s.failures .. ' consecutive failures')
        elseif window_trips() then
          transition('open', 'failure rate over threshold')
        end
      end
    elseif s.state == 'half-open' and arg.lease then
      local lease_until = redis.call('ZSCORE', lease_key, arg.lease)
      if not lease_until or tonumber(lease_until) < now then
        ok = false  -- answered after its lease lapsed: it may have overlapped another probe
      end
      redis.call('ZREM', lease_key, arg.lease)
      if ok then
        s.hs_ok = s.hs_ok + 1
        if s.hs_ok >= cfg.half_open_max_calls then transition('closed', 'probe succeeded') end
      else
        transition('open', 'probe failed')
      end
      dirty = true
    end
  end
  -- a result from an older generation changes nothing: it cannot undo a transition that happened while it
  -- ran (a probe whose lapsed lease reopened the breaker is such a result)

elseif op == 'force_open' or op == 'disable' then
  local from = shown_state()
  s.forced = (op == 'force_open') and 'open' or 'disabled'
  s.forced_until = arg.for_s and (now + tonumber(arg.for_s)) or 0
  local to = shown_state()
  s.gen = s.gen + 1
  redis.call('HINCRBY', metrics_key, 'changes:' .. from .. '->' .. to, 1)
  redis.call('PUBLISH', channel, cjson.encode({name = name, from = from, to = to, gen = s.gen, at = now,
                                               reason = 'operator'}))
  reply.from, reply.to = from, to
  dirty = true

elseif op == 'reset' then
  if s.forced == '' and s.state == 'closed' then
    s.failures = 0  -- nothing to transition: just forget the failures
  else
    s.state = shown_state()
    s.forced, s.forced_until = '', 0
    transition('closed', 'operator reset')
  end
  dirty = true
end

if dirty or reply.to ~= '' then save() end

local shown = shown_state()
reply.state, reply.gen, reply.failures, reply.last_failure = shown, s.gen, s.failures, s.last_failure
if s.state == 'open' and reply.retry_after == 0 then reply.retry_after = s.open_until - now end
if s.forced == 'open' then reply.forced_for = s.forced_until > 0 and (s.forced_until - now) or -1 end
return cjson.encode(reply)
"""
