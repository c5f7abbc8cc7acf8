-- tests/bench/submit.lua: wrk script for POST /v1/jobs (see submit.sh).
-- Every request submits the same small job of the bench pipeline (no
-- Idempotency-Key, so each one is a new job). The status of every response
-- is counted per thread; done() prints, one per line:
--   wrk_201 N        responses 201 Created
--   wrk_other N      any other status (they are not jobs)
--   wrk_p50_us N / wrk_p99_us N   latency percentiles, microseconds
-- BENCH_PIPELINE names the pipeline (default "bench").

local pipeline = os.getenv("BENCH_PIPELINE") or "bench"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = string.format('{"pipeline":"%s","params":{"n":1},"input":{"text":"hello"}}', pipeline)

local threads = {}

function setup(thread)
	table.insert(threads, thread)
end

function init(args)
	created = 0
	other = 0
end

function response(status, headers, body)
	if status == 201 then
		created = created + 1
	else
		other = other + 1
	end
end

function done(summary, latency, requests)
	local c, o = 0, 0
	for _, t in ipairs(threads) do
		c = c + t:get("created")
		o = o + t:get("other")
	end
	io.write(string.format("wrk_201 %d\n", c))
	io.write(string.format("wrk_other %d\n", o))
	io.write(string.format("wrk_p50_us %d\n", latency:percentile(50)))
	io.write(string.format("wrk_p99_us %d\n", latency:percentile(99)))
end
