-- wrk script for bench/feedback_load.py: POST feedback, each request a distinct (user, message) pair.
--
-- Arguments (after `--`): DATA_FILE PATH NTHREADS START
--   DATA_FILE  one line per user: "<token> <message uuid> <message uuid> ..."
--   PATH       the URL path to POST to
--   NTHREADS   wrk's -t (users are dealt to threads round robin: user i goes to thread i % NTHREADS)
--   START      1-based index into each user's message list where this run begins
-- Each thread cycles through its users; each request takes that user's next unused message. Past
-- the end of a user's list the ids wrap around (counted in "wrapped": those requests update a row).
-- done() prints one line "BENCH_JSON {...}" that feedback_load.py parses.

local threads = {}
local nsetup = 0

function setup(thread)
  thread:set("tid", nsetup)
  nsetup = nsetup + 1
  table.insert(threads, thread)
end

-- Per-thread state (globals, so done() can read them with thread:get).
sent = 0
wrapped = 0
max_used = 0
statuses = {}

local users = {}
local nusers = 0
local cur = 0
local path
local start

function init(args)
  local data_file = args[1]
  path = args[2]
  local nthreads = tonumber(args[3])
  start = tonumber(args[4])
  local i = 0
  for line in io.lines(data_file) do
    if i % nthreads == tid then
      local token = nil
      local ids = {}
      for word in line:gmatch("%S+") do
        if token == nil then
          token = word
        else
          ids[#ids + 1] = word
        end
      end
      users[#users + 1] = {
        headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Token " .. token },
        ids = ids,
        used = 0,
      }
    end
    i = i + 1
  end
  nusers = #users
  if nusers == 0 then
    error("thread " .. tid .. " got no users: use at least as many users as wrk threads")
  end
end

function request()
  cur = cur % nusers + 1
  local user = users[cur]
  user.used = user.used + 1
  if user.used > max_used then
    max_used = user.used
  end
  local nids = #user.ids
  local k = start + user.used - 1
  if k > nids then
    wrapped = wrapped + 1
    k = (k - 1) % nids + 1
  end
  sent = sent + 1
  local body = '{"message_id":"' .. user.ids[k] .. '","thumbs":"up","rating":4}'
  return wrk.format("POST", path, user.headers, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total_sent, total_wrapped, total_max_used = 0, 0, 0
  local by_status = {}
  for _, thread in ipairs(threads) do
    total_sent = total_sent + thread:get("sent")
    total_wrapped = total_wrapped + thread:get("wrapped")
    total_max_used = math.max(total_max_used, thread:get("max_used"))
    for status, count in pairs(thread:get("statuses")) do
      by_status[status] = (by_status[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(by_status) do
    parts[#parts + 1] = string.format('"%d":%d', status, count)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"completed":%d,"duration_us":%d,"bytes":%d,"sent":%d,"wrapped":%d,"max_used":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"statuses":{%s}}\n',
    summary.requests, summary.duration, summary.bytes, total_sent, total_wrapped, total_max_used,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout, table.concat(parts, ",")
  ))
end
