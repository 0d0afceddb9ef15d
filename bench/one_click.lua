-- wrk script for bench/one_click.py. Run with one connection per thread (wrk -t N -c N).
--
--   BENCH_RESULT_FILE=... wrk ... -s bench/one_click.lua http://127.0.0.1:PORT -- MODE DATA_DIR POOL
--
-- MODE hello:     GET /; 200 with "Hello, World!" expected.
-- MODE one-click: what a mail client's unsubscribe button sends (RFC 8058): POST /o/<token>,
--                 no cookie, no CSRF token, body List-Unsubscribe=One-Click, alternately
--                 urlencoded and multipart/form-data. Each token is used once, from this
--                 thread's own file (DATA_DIR/POOL-<thread>.txt), so every POST is a real
--                 change. 200 with "You are unsubscribed", no Location and no Set-Cookie
--                 expected.
--
-- Latencies are timed per request and written with the counts by done() to
-- BENCH_RESULT_FILE (bench/common.lua).

-- The clock, setup(), count() and done(): bench/common.lua, beside this script.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "common.lua")

local mode, started, tokens, index, exhausted

local BOUNDARY = "bench-one-click"
local URLENCODED = "List-Unsubscribe=One-Click"
local MULTIPART = "--" .. BOUNDARY .. "\r\n"
  .. 'Content-Disposition: form-data; name="List-Unsubscribe"\r\n\r\n'
  .. "One-Click\r\n--" .. BOUNDARY .. "--\r\n"

function init(args)
  mode = args[1]
  if mode == "one-click" then
    tokens = {}
    local file = assert(io.open(args[2] .. "/" .. args[3] .. "-" .. thread_id .. ".txt", "r"))
    for line in file:lines() do
      if line ~= "" then table.insert(tokens, line) end
    end
    file:close()
    index, exhausted = 1, false
  elseif mode ~= "hello" then
    error("unknown mode " .. tostring(mode))
  end
end

function request()
  started = now_us()
  if mode == "hello" or exhausted then
    return wrk.format("GET", "/")
  end
  local headers, body = {}, URLENCODED
  if index % 2 == 0 then
    headers["Content-Type"] = "multipart/form-data; boundary=" .. BOUNDARY
    body = MULTIPART
  else
    headers["Content-Type"] = "application/x-www-form-urlencoded"
  end
  return wrk.format("POST", "/o/" .. tokens[index], headers, body)
end

local function classify(status, headers, body)
  if status ~= 200 then return "status-" .. status end
  if headers["Set-Cookie"] or headers["set-cookie"] then return "200-set-cookie" end
  if headers["Location"] or headers["location"] then return "200-location" end
  if not body:find("You are unsubscribed", 1, true) then return "200-unexpected-body" end
  return "ok"
end

function response(status, headers, body)
  local elapsed = now_us() - started
  if mode == "hello" then
    if status == 200 and body == "Hello, World!" then
      count("ok"); table.insert(latencies, elapsed)
    else
      count("status-" .. status)
    end
    return
  end
  if exhausted then return end
  local outcome = classify(status, headers, body)
  count(outcome)
  if outcome == "ok" then table.insert(latencies, elapsed) end
  index = index + 1
  if index > #tokens then
    -- Out of fresh tokens: a further POST would change nothing, so this connection stops.
    exhausted = true
    count("out-of-contacts")
    wrk.thread:stop()
  end
end
