-- wrk scenarios for loadtests/bench.py. The scenario and its data come from the
-- environment:
--   SCENARIO      product_get | product_list | profile_get | order_create | order_pay
--   DATA_DIR      folder with products.txt (ids), tokens.txt, pay_orders.txt ("id<TAB>token")
--   RESULT_FILE   where done() writes a JSON summary
--   THREADS       wrk's -t (to split the pay orders between threads)

local scenario = os.getenv("SCENARIO")
local data_dir = os.getenv("DATA_DIR")

local function lines(name)
  local out = {}
  local f = io.open(data_dir .. "/" .. name, "r")
  if f == nil then return out end
  for line in f:lines() do
    if line ~= "" then out[#out + 1] = line end
  end
  f:close()
  return out
end

local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  threads[#threads + 1] = thread
end

local products, tokens, orders, next_order
statuses = {}  -- a global: done() collects it from every thread
function init(args)
  math.randomseed(4242 + 7 * (tid or 0))
  products = lines("products.txt")
  tokens = lines("tokens.txt")
  orders = {}
  local nthreads = tonumber(os.getenv("THREADS") or "1")
  for i, line in ipairs(lines("pay_orders.txt")) do
    if (i - 1) % nthreads == tid then orders[#orders + 1] = line end
  end
  next_order = 0
  statuses = {}
end

local json = { ["Content-Type"] = "application/json" }

local function bearer(token)
  return { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token }
end

function request()
  if scenario == "product_get" then
    return wrk.format("GET", "/api/products/" .. products[math.random(#products)])
  elseif scenario == "product_list" then
    return wrk.format("GET", "/api/products?limit=20")
  elseif scenario == "profile_get" then
    return wrk.format("GET", "/api/users/profile", bearer(tokens[math.random(#tokens)]))
  elseif scenario == "order_create" then
    local body = '{"items":[{"product_id":' .. products[math.random(#products)] .. ',"quantity":1}]}'
    return wrk.format("POST", "/api/orders", bearer(tokens[math.random(#tokens)]), body)
  elseif scenario == "order_pay" then
    next_order = next_order + 1
    local entry = orders[next_order]
    if entry == nil then
      wrk.thread:stop()
      return wrk.format("GET", "/healthz")
    end
    local id, token = entry:match("^(%d+)\t(.+)$")
    local body = '{"order_id":' .. id .. ',"payment_method":{"type":"card","token":"tok_visa"}}'
    return wrk.format("POST", "/api/payments", bearer(token), body)
  end
  error("unknown SCENARIO " .. tostring(scenario))
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses") or {}) do
      merged[status] = (merged[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(merged) do parts[#parts + 1] = string.format('"%d":%d', status, count) end
  local f = assert(io.open(os.getenv("RESULT_FILE"), "w"))
  f:write(string.format(
    '{"requests":%d,"duration_us":%d,"socket_errors":%d,"statuses":{%s},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    table.concat(parts, ","),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
  f:close()
end
