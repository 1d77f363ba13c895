"""Task metrics in Redis: the Lua the status scripts count with, and reading the counts back.

One hash, ``<prefix>metrics``, holds the fields :mod:`nagatha.metrics` describes; it never
expires (Prometheus counters only grow; losing Redis's data is a counter reset, which
Prometheus handles). The status scripts of :mod:`nagatha.stores.redis` start with
:data:`LUA` and call ``count(key, event, name)`` and ``observe(key, name, started, completed)``
where ``name`` is the record's ``task_name`` field as stored (JSON text).
"""

from __future__ import annotations

import json

from nagatha.metrics import EVENT_OF_STATUS, MAX_FIELDS, OTHER, RUNTIME_BUCKETS, RUNTIME_SUM

_EVENTS = ", ".join(
    f"[{json.dumps(json.dumps(status.value))}] = {json.dumps(event)}"
    for status, event in EVENT_OF_STATUS.items()
)

# epoch(): (day number, second of the day) of a record's timestamp, UTC ISO 8601 as JSON
# (`"2026-11-29T03:03:45.995980Z"`). Redis's Lua has no date functions: days are counted from
# the civil date (H. Hinnant's days_from_civil).
LUA = f"""
local EVENT_OF_STATUS = {{{_EVENTS}}}
local BUCKETS = {{{", ".join(repr(bound) for bound in RUNTIME_BUCKETS)}}}
local function label(key, kind, name)
  if redis.call('HLEN', key) < {MAX_FIELDS}
      or redis.call('HEXISTS', key, kind .. '\\t' .. name) == 1 then
    return name
  end
  return {json.dumps(json.dumps(OTHER))}
end
local function count(key, event, name)
  redis.call('HINCRBY', key, event .. '\\t' .. label(key, event, name), 1)
end
local function epoch(text)
  if type(text) ~= 'string' then
    return nil
  end
  local y, m, d, hh, mm, ss = string.match(
    text, '^"(%d%d%d%d)%-(%d%d)%-(%d%d)T(%d%d):(%d%d):(%d%d%.?%d*)Z?"$')
  if not y then
    return nil
  end
  y, m = tonumber(y), tonumber(m)
  if m <= 2 then
    y = y - 1
  end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((m + 9) % 12) + 2) / 5) + tonumber(d) - 1
  local days = era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return days - 719468, tonumber(hh) * 3600 + tonumber(mm) * 60 + tonumber(ss)
end
local function observe(key, name, started, completed)
  local from_day, from_second = epoch(started)
  local to_day, to_second = epoch(completed)
  if not from_day or not to_day then
    return
  end
  -- days and seconds apart: epoch seconds with microseconds would exceed a double's digits
  local seconds = (to_day - from_day) * 86400 + (to_second - from_second)
  if seconds < 0 then
    return
  end
  local bucket = #BUCKETS
  for index, bound in ipairs(BUCKETS) do
    if seconds <= bound then
      bucket = index - 1
      break
    end
  end
  name = label(key, '{RUNTIME_SUM}', name)
  redis.call('HINCRBYFLOAT', key, '{RUNTIME_SUM}\\t' .. name, tostring(seconds))
  redis.call('HINCRBY', key, 'runtime:' .. bucket .. '\\t' .. name, 1)
end
"""
