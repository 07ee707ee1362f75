-- wrk script for the tail-latency table: one non-stream chat completion per request, and at
-- the end the latency percentiles wrk's own --latency output does not print (99.9).
--
--   wrk -t2 -c8 -d60s --timeout 30s -s bench/tail.lua http://127.0.0.1:PORT/v1/chat/completions -- MODEL TOKEN
--
-- wrk records latencies in microseconds. --timeout must exceed the slowest answer: wrk
-- counts a request past its timeout (2 s by default) as an error and leaves it out of the
-- latency histogram, which would hide exactly the stalls this table is about.

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function init(args)
  local model, token = args[1], args[2]
  wrk.body = '{"model":"' .. model .. '","stream":false,'
    .. '"messages":[{"role":"user","content":"Hello, how are you today?"}]}'
  wrk.headers["Authorization"] = "Bearer " .. token
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    "tail p50_us=%d p99_us=%d p999_us=%d max_us=%d requests=%d errors=%d\n",
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
    summary.requests,
    errors.connect + errors.read + errors.write + errors.status + errors.timeout
  ))
end
