-- wrk script for benchmarks/engine_api.py: engines calling the engine API, or the same work through
-- the minimal reference views of bench_urls.py.
--
--   wrk ... -s engine.lua URL -- DATA_FILE SCENARIO TARGET
--     SCENARIO  cycle      activate, then release what was activated (one cycle = one of each)
--               heartbeat  heartbeat live sessions, round-robin over all of them
--     TARGET    api        the engine API, with the API keys of DATA_FILE
--               ref        the reference views (no authentication: they measure Django + the SQL)
--
-- done() prints one line, "RESULT {json}", with the request count, latency percentiles and the
-- count of every HTTP status (429s included), for engine_api.py to read.

local threads = {}
local thread_count = 0

function setup(thread)
  thread:set("thread_number", thread_count)
  thread_count = thread_count + 1
  table.insert(threads, thread)
end

function init(args)
  data = dofile(args[1])
  scenario, target = args[2], args[3]
  statuses = {}
  pending = {}  -- sessions this thread activated and has not released yet: {id, key index}
  -- Threads start at different places so they do not walk the same sessions in step.
  n = thread_number * 7919
end

local function json_headers(key)
  local headers = {["Content-Type"] = "application/json"}
  if key then headers["Authorization"] = "Bearer " .. key end
  return headers
end

local function release(item)
  if target == "api" then
    return wrk.format("POST", "/api/v1/engine/sessions/" .. item.id .. "/release", json_headers(data.keys[item.k]), "{}")
  end
  return wrk.format("POST", "/bench/sessions/" .. item.id .. "/release", json_headers(nil), "{}")
end

local function activate()
  n = n + 1
  local t = data.targets[(n % #data.targets) + 1]
  -- A few machines per key, reused: agents with stable machine ids, registered after their first run.
  local machine = "k" .. t.k .. "-" .. (math.floor(n / #data.targets) % 4)
  if target == "api" then
    local body = '{"product": "RE", "machine_id": "' .. machine .. '", "org_id": "' .. t.org .. '"}'
    return wrk.format("POST", "/api/v1/engine/activate", json_headers(data.keys[t.k]), body)
  end
  local path = "/bench/activate/" .. t.pool .. "/" .. t.machine_pk .. "/" .. t.user_pk .. "?m=" .. machine
  return wrk.format("POST", path, json_headers(nil), "{}")
end

local function heartbeat()
  n = n + 1
  local s = data.sessions[(n % #data.sessions) + 1]
  if target == "api" then
    return wrk.format("POST", "/api/v1/engine/sessions/" .. s.id .. "/heartbeat", json_headers(data.keys[s.k]), "{}")
  end
  return wrk.format("POST", "/bench/sessions/" .. s.id .. "/heartbeat", json_headers(nil), "{}")
end

function request()
  if scenario == "heartbeat" then return heartbeat() end
  local item = table.remove(pending)
  if item then return release(item) end
  return activate()
end

function response(status, headers, body)
  local code = tostring(status)
  statuses[code] = (statuses[code] or 0) + 1
  if scenario == "cycle" and status == 201 then
    local id = body:match('"session": *{"id": *"([^"]+)"')
    local k = body:match('"machine_id": *"k(%d+)%-')
    if id and k then table.insert(pending, {id = id, k = tonumber(k)}) end
  end
end

function done(summary, latency, requests)
  local totals = {}
  for _, thread in ipairs(threads) do
    for code, count in pairs(thread:get("statuses")) do totals[code] = (totals[code] or 0) + count end
  end
  local parts = {}
  for code, count in pairs(totals) do table.insert(parts, string.format('"%s": %d', code, count)) end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "statuses": {%s}, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    table.concat(parts, ", "), e.connect + e.read + e.write + e.timeout))
end
