-- wrk script: POST /auth/login for one known account, as fast as the API answers (the login
-- flood that runs while bench/api.sh measures GET latency). Every attempt costs the API one
-- bcrypt verification at the configured cost.
--
-- BENCH_LOGIN_EMAIL and BENCH_LOGIN_PASSWORD name the account. At the end the script prints one
-- line, "login-statuses: 200=N 503=M ...", the responses by status over all threads.

local threads = {}

function setup(thread)
   threads[#threads + 1] = thread
end

local req
statuses = {}

local function json_string(s)
   return '"' .. s:gsub('[%c"\\]', function(c)
      return string.format("\\u%04x", c:byte())
   end) .. '"'
end

function init(args)
   local email = os.getenv("BENCH_LOGIN_EMAIL")
   local password = os.getenv("BENCH_LOGIN_PASSWORD")
   if not email or not password then
      error("BENCH_LOGIN_EMAIL and BENCH_LOGIN_PASSWORD must be set")
   end
   local body = '{"email":' .. json_string(email) .. ',"password":' .. json_string(password) .. "}"
   req = wrk.format("POST", "/auth/login", { ["Content-Type"] = "application/json" }, body)
end

function request()
   return req
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local total = {}
   for _, thread in ipairs(threads) do
      for status, n in pairs(thread:get("statuses") or {}) do
         total[status] = (total[status] or 0) + n
      end
   end
   local keys = {}
   for status in pairs(total) do
      keys[#keys + 1] = status
   end
   table.sort(keys)
   local parts = {}
   for _, status in ipairs(keys) do
      parts[#parts + 1] = status .. "=" .. total[status]
   end
   io.write("login-statuses: " .. table.concat(parts, " ") .. "\n")
end
