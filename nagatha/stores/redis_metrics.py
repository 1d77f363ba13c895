"""Task metrics in Redis: the Lua the status scripts count with.

One hash, ``<prefix>metrics``, holds the fields :mod:`nagatha.metrics` describes; it never
expires (Prometheus counters only grow; losing Redis's data is a counter reset, which
Prometheus handles). The status scripts of :mod:`nagatha.stores.redis` start with
:data:`LUA` and call ``count(key, event, name)`` and ``observe(key, name, microseconds,
bucket)`` where ``name`` is the name to count under, as JSON text (the record's
``task_name`` as stored, or what the writer chose: see ``StatusStore.metric_name``); the run
time comes from the caller (:func:`nagatha.metrics.run_time`; parsing the timestamps in Lua
cost Redis a few microseconds per outcome, more than all the counting).
"""

from __future__ import annotations

import json

from nagatha.metrics import EVENT_OF_STATUS, MAX_FIELDS, OTHER, RUNTIME_BUCKET, RUNTIME_SUM

_EVENTS = ", ".join(
    f"[{json.dumps(json.dumps(status.value))}] = {json.dumps(event)}"
    for status, event in EVENT_OF_STATUS.items()
)

# redis.pcall: counting never fails the status write it follows (a metrics key of another
# type, an ACL without HINCRBY): the record is written already, and a script does not roll back.
LUA = f"""
local EVENT_OF_STATUS = {{{_EVENTS}}}
local function label(key, kind, name)
  local size = redis.pcall('HLEN', key)
  if type(size) ~= 'number' then
    return nil
  end
  if size < {MAX_FIELDS} or redis.pcall('HEXISTS', key, kind .. '\\t' .. name) == 1 then
    return name
  end
  return {json.dumps(json.dumps(OTHER))}
end
local function count(key, event, name)
  name = label(key, event, name)
  if name then
    redis.pcall('HINCRBY', key, event .. '\\t' .. name, 1)
  end
end
local function observe(key, name, micros, bucket)
  name = label(key, '{RUNTIME_SUM}', name)
  if name then
    redis.pcall('HINCRBY', key, '{RUNTIME_SUM}\\t' .. name, micros)
    redis.pcall('HINCRBY', key, '{RUNTIME_BUCKET}' .. bucket .. '\\t' .. name, 1)
  end
end
"""
