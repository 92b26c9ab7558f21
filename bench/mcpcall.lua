-- wrk script: MCP `tools/call` of server-everything's `echo` over one open Streamable HTTP session.
--
-- Environment (set by bench/run.py):
--   MCP_SESSION   Mcp-Session-Id of the session opened beforehand (required)
--   MCP_PROTOCOL  MCP-Protocol-Version header (default 2025-11-25)
--   MCP_AUTH      full Authorization header value, e.g. "Bearer abc" (optional)
--   MCP_TOOL      the tool's name at this endpoint (default echo; everything__echo on /mcp)
--
-- Every request carries a fresh JSON-RPC id. A reply counts as good only if it is HTTP 200 and
-- holds a JSON-RPC `result`; anything else is counted as bad in response(). done() prints one
-- line "MCPBENCH {json}" for the runner to parse.

local session = os.getenv("MCP_SESSION")
local protocol = os.getenv("MCP_PROTOCOL") or "2025-11-25"
local auth = os.getenv("MCP_AUTH")
local tool = os.getenv("MCP_TOOL") or "echo"

local threads = {}
local thread_counter = 0

function setup(thread)
  thread_counter = thread_counter + 1
  thread:set("tid", thread_counter)
  table.insert(threads, thread)
end

local next_id = 0
local prefix = 0
local headers = {}
bad = 0
good = 0
first_bad = ""

function init(args)
  if session == nil or session == "" then
    error("MCP_SESSION is not set")
  end
  prefix = tid * 100000000
  headers["Content-Type"] = "application/json"
  headers["Accept"] = "application/json, text/event-stream"
  headers["Mcp-Session-Id"] = session
  headers["MCP-Protocol-Version"] = protocol
  if auth ~= nil and auth ~= "" then
    headers["Authorization"] = auth
  end
end

function request()
  next_id = next_id + 1
  local body = '{"jsonrpc":"2.0","id":' .. (prefix + next_id) ..
    ',"method":"tools/call","params":{"name":"' .. tool .. '","arguments":{"message":"hello"}}}'
  return wrk.format("POST", nil, headers, body)
end

function response(status, resp_headers, body)
  if status == 200 and body ~= nil and string.find(body, '"result"%s*:') ~= nil then
    good = good + 1
  else
    bad = bad + 1
    if first_bad == "" then
      first_bad = tostring(status) .. " " .. string.sub(tostring(body), 1, 300)
    end
  end
end

local function json_string(text)
  text = string.gsub(text, '[%c"\\]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. text .. '"'
end

function done(summary, latency, requests)
  local total_bad, total_good, sample = 0, 0, ""
  for _, thread in ipairs(threads) do
    total_bad = total_bad + thread:get("bad")
    total_good = total_good + thread:get("good")
    local fb = thread:get("first_bad")
    if sample == "" and fb ~= nil then sample = fb end
  end
  local e = summary.errors
  io.write(string.format(
    'MCPBENCH {"requests":%d,"duration_us":%d,"good":%d,"bad":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"first_bad":%s}\n',
    summary.requests, summary.duration, total_good, total_bad,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    json_string(sample)))
end
