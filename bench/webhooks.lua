-- wrk script: cycles through pre-signed fal webhooks (one per line: path, 4 header values, body, tab-separated).
-- BENCH_RATE (requests/s over all connections) paces each connection; unset = as fast as possible.
local requests = {}
local index = 0
local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local connections = tonumber(os.getenv("BENCH_CONNECTIONS") or "64")

function setup(thread)
  thread:set("offset", tonumber(os.getenv("BENCH_OFFSET") or "0"))
end

function init(args)
  local file = assert(io.open(os.getenv("BENCH_REQUESTS"), "r"))
  for line in file:lines() do
    local path, rid, uid, ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    requests[#requests + 1] = wrk.format("POST", path, {
      ["Content-Type"] = "application/json",
      ["X-Fal-Webhook-Request-Id"] = rid,
      ["X-Fal-Webhook-User-Id"] = uid,
      ["X-Fal-Webhook-Timestamp"] = ts,
      ["X-Fal-Webhook-Signature"] = sig,
    }, body)
  end
  file:close()
  index = offset or 0
end

function request()
  index = index + 1
  if index > #requests then index = 1 end
  return requests[index]
end

function delay()
  if rate > 0 then return 1000 * connections / rate end
  return 0
end

function done(summary, latency, requests_)
  local out = io.open(os.getenv("BENCH_OUT"), "w")
  local codes = 0
  for k, v in pairs(summary.errors) do codes = codes + v end
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "non2xx": %d, "socket_errors": %d, "p50_ms": %.3f, "p99_ms": %.3f, "p999_ms": %.3f, "max_ms": %.3f, "mean_ms": %.3f}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
    latency.max / 1000, latency.mean / 1000))
  out:close()
end
