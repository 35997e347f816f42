-- wrk script: GET /api/users/{id}/tasks?limit=20 as the seeded users, round-robin.
--
-- BENCH_USERS_FILE names a file with one "<user uuid> <access token>" pair per line (bench/api.sh
-- writes it). Each wrk thread walks the whole list from its own starting point, one user per
-- request, so every request carries a different user's bearer token in turn.
--
-- BENCH_DELAY_MS > 0 paces each connection: it waits a random 0.5x..1.5x that many milliseconds
-- after every response before sending the next request (a fixed offered rate below the knee,
-- for latency); unset or 0 sends as fast as the server answers (peak throughput).

local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0") or 0
local thread_count = 0

function setup(thread)
   thread:set("thread_index", thread_count)
   thread_count = thread_count + 1
end

local requests = {}
local next_index = 1

function init(args)
   local path = os.getenv("BENCH_USERS_FILE")
   if not path or path == "" then
      error("BENCH_USERS_FILE is not set")
   end
   local f = assert(io.open(path, "r"))
   for line in f:lines() do
      local id, token = line:match("^(%S+)%s+(%S+)$")
      if id then
         requests[#requests + 1] = wrk.format(
            "GET",
            "/api/users/" .. id .. "/tasks?limit=20",
            { ["Authorization"] = "Bearer " .. token }
         )
      end
   end
   f:close()
   if #requests == 0 then
      error("no \"<id> <token>\" lines in " .. path)
   end
   -- Spread the threads over the list instead of walking it in lockstep.
   local index = thread_index or 0
   next_index = (index * 7919) % #requests + 1
   math.randomseed(1000 + index)
end

function request()
   local r = requests[next_index]
   next_index = next_index % #requests + 1
   return r
end

if delay_ms > 0 then
   local low = math.max(0, math.floor(delay_ms / 2))
   local high = math.max(low, math.floor(delay_ms * 3 / 2))
   function delay()
      return math.random(low, high)
   end
end
