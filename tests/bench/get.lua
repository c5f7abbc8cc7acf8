-- tests/bench/get.lua: wrk script for GET /v1/jobs/{id} (see submit.sh).
-- With BENCH_INM set, every request carries If-None-Match: $BENCH_INM (the
-- 304 path); without it, none (the 200 path). Responses are counted by
-- status; done() prints, one per line:
--   wrk_status_<code> N   for every status seen
--   wrk_p50_us N / wrk_p99_us N

local inm = os.getenv("BENCH_INM")
if inm and inm ~= "" then
	wrk.headers["If-None-Match"] = inm
end

local threads = {}

function setup(thread)
	table.insert(threads, thread)
end

function init(args)
	counts = {}
end

function response(status, headers, body)
	counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
	local total = {}
	for _, t in ipairs(threads) do
		for code, n in pairs(t:get("counts")) do
			total[code] = (total[code] or 0) + n
		end
	end
	for code, n in pairs(total) do
		io.write(string.format("wrk_status_%d %d\n", code, n))
	end
	io.write(string.format("wrk_p50_us %d\n", latency:percentile(50)))
	io.write(string.format("wrk_p99_us %d\n", latency:percentile(99)))
end
