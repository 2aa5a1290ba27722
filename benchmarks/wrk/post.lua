-- wrk script for benchmarks/overhead.py: POST one fixed body and print a JSON summary line.
--
--   WRK_BODY=/path/to/body.json [WRK_CONTENT_TYPE=application/json] wrk -s benchmarks/wrk/post.lua URL
--
-- The body is read once per wrk thread at start-up, so the request is pre-formatted and the load
-- generator spends no Lua time per request (no request()/response() callbacks). Non-2xx/3xx answers
-- are counted by wrk itself in errors.status.

local path = assert(os.getenv("WRK_BODY"), "set WRK_BODY to the file holding the request body")
local file = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = os.getenv("WRK_CONTENT_TYPE") or "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"stdev":%.1f,"min":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.min,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max))
end
