-- What bench/load.lua and bench/one_click.lua share: the clock, the numbering of wrk's
-- threads, the count of outcomes, and done(), which writes the results to BENCH_RESULT_FILE
-- for the Python driver (bench/preference_page.py reads them). Each script loads it with
-- dofile, from the folder the script itself was loaded from.

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local CLOCK_MONOTONIC = 1
local clock = ffi.new("bench_timespec")

function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
  return tonumber(clock.tv_sec) * 1000000 + tonumber(clock.tv_nsec) / 1000
end

-- Main thread: number the threads and keep them, to collect their results in done().
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

-- Worker threads. Only flat tables can be read back by done() (wrk copies nested ones badly).
latencies = {} -- microseconds of each request that counted
counts = {}    -- outcome -> number of responses

function count(outcome)
  counts[outcome] = (counts[outcome] or 0) + 1
end

function done(summary, latency, requests)
  local out = assert(io.open(os.getenv("BENCH_RESULT_FILE"), "w"))
  out:write(string.format("duration_us %d\n", summary.duration))
  out:write(string.format("wrk_requests %d\n", summary.requests))
  for _, name in ipairs({ "connect", "read", "write", "status", "timeout" }) do
    out:write(string.format("socket_%s %d\n", name, summary.errors[name]))
  end
  for _, thread in ipairs(threads) do
    for outcome, n in pairs(thread:get("counts")) do
      out:write(string.format("count %s %d\n", outcome, n))
    end
    for _, value in ipairs(thread:get("latencies")) do
      out:write(string.format("latency %.1f\n", value))
    end
  end
  out:close()
end
