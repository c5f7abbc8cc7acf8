-- tests/bench/burndown.lua: wrk script that enqueues jobs for burndown.sh.
-- Every request is POST /v1/jobs {"pipeline": BENCH_PIPELINE} (default
-- "burn"), a new job each (no Idempotency-Key). A thread stops itself once
-- it has had BURN_QUOTA 201 answers (default: no limit), so a run creates
-- about threads x quota jobs plus at most the requests still in flight
-- (one per connection). wrk itself only stops at -d or SIGINT: burndown.sh
-- watches the database and interrupts it. done() prints, one per line:
--   wrk_201 N     responses 201 Created
--   wrk_other N   any other status (they are not jobs)

local pipeline = os.getenv("BENCH_PIPELINE") or "burn"
local quota = tonumber(os.getenv("BURN_QUOTA") or "0") or 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = string.format('{"pipeline":"%s"}', pipeline)

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
		if quota > 0 and created >= quota then
			wrk.thread:stop()
		end
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
end
