#!/bin/sh
# tests/bench/submit.sh: job submission and job reads against a durable
# PostgreSQL. A benchmark, not a test: it prints figures, one per line, and
# fails only when it cannot measure.
#
#   STAGELINED=build/release/stagelined tests/bench/submit.sh
#
# Output (after "pool N", "log_level warn"):
#   submit_jobs_per_s N        201 responses per second, POST /v1/jobs
#   submit_p50_ms X / submit_p99_ms X
#   submit_non_201 N           other answers (should be 0)
#   submit_pg_cpu_s X          PostgreSQL CPU seconds during the submit run
#   submit_pg_cpu_s_per_1k X   the same per 1,000 jobs (TOOLCHAIN.md §10)
#   submit_daemon_cpu_s X      stagelined CPU seconds during the submit run
#   submit_jobs_per_batch X    jobs per submit statement (from /metrics)
#   submit_rows N              jobs in the database afterwards (psql)
#   submit_rows_minus_201 N    submit_rows - 201 responses: requests wrk had
#                              in flight when it stopped may still commit
#                              (at most one per connection); more is a bug
#   get_200_per_s N, get_200_p50_ms X, get_200_p99_ms X
#                              GET /v1/jobs/{id}, no If-None-Match
#   get_200_pg_cpu_s X         PostgreSQL CPU seconds during that run
#   get_304_per_s N, get_304_p50_ms X, get_304_p99_ms X
#                              the same with If-None-Match: <its ETag>
#   get_*_unexpected N         answers with another status (should be 0)
#
# What runs. A private PostgreSQL 15 cluster (initdb into a temp dir, unix
# socket only, the server's defaults: fsync and synchronous_commit on), and
# stagelined built -O2 ($STAGELINED, default build/release/stagelined) with
# auth disabled, log.level warn (no per-job info lines: the figure is the
# job path, not the log writer), database.pool $BENCH_POOL (default 8) and
# a 3-stage linear pipeline; --migrate-only runs first. wrk runs -t2 -c64
# for $BENCH_DURATION (default 10s) per phase: submit, GET 200, GET 304.
# On a 2-core machine wrk, stagelined and PostgreSQL share the cores, so
# compare runs made back to back on the same machine.
#
# Targets from the issue (reported, not asserted): submit >= 5,000 jobs/s,
# GET >= 15,000/s, 304 >= 30,000/s.
#
# Bounded: about 3 x BENCH_DURATION + 15 s. Stops everything it started
# (trap EXIT). The daemon binds a free port; PostgreSQL binds no TCP port
# (the port number only names its socket). Run as root (the cluster then
# runs as the postgres user) or as an ordinary user.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
STAGELINED=${STAGELINED:-build/release/stagelined}
DURATION=${BENCH_DURATION:-10s}
POOL=${BENCH_POOL:-8}
CONNS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-2}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

die() {
	echo "submit.sh: $*" >&2
	exit 1
}
# as_pg, wait_for, free_port, pg_start/pg_stop, psql_q, pg_ticks
. "$here/lib.sh"

command -v wrk >/dev/null 2>&1 || die "wrk not found (apt-get install wrk)"
command -v psql >/dev/null 2>&1 || die "psql not found"
command -v curl >/dev/null 2>&1 || die "curl not found"
[ -x "$PG_BIN/initdb" ] || die "$PG_BIN/initdb not found (PostgreSQL 15)"
[ -x "$STAGELINED" ] || die "$STAGELINED is not an executable (set STAGELINED)"
STAGELINED=$(cd "$(dirname "$STAGELINED")" && pwd)/$(basename "$STAGELINED")

tmp=$(mktemp -d /tmp/stageline-submit.XXXXXX)
chmod 755 "$tmp"
pgdir=$tmp/pg
mkdir -p "$pgdir"
daemon_pid=""
pg_started=""

cleanup() {
	if [ -n "$daemon_pid" ]; then
		kill "$daemon_pid" 2>/dev/null || true
		wait "$daemon_pid" 2>/dev/null || true
	fi
	pg_stop
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- PostgreSQL -------------------------------------------------------------
pg_start 55001 ""
fsync=$(psql_q "SHOW fsync")
sync_commit=$(psql_q "SHOW synchronous_commit")
[ "$fsync" = on ] && [ "$sync_commit" = on ] || die "PostgreSQL is not durable (fsync=$fsync, synchronous_commit=$sync_commit)"

# --- stagelined -------------------------------------------------------------
port=$(free_port 61003) || die "no free TCP port"
cat >"$tmp/stageline.yaml" <<EOF
server:
  listen: "127.0.0.1:$port"
  shutdown_grace: 1s
database:
  url: "postgresql://postgres@/stageline?host=$pgdir&port=$pgport"
  pool: $POOL
log:
  format: json
  level: warn
  file: "$tmp/stagelined.log"
auth:
  enabled: false
store:
  path: "$tmp/objects"
scheduler:
  # API-only: this measures submitting and reading; nothing runs the jobs
  enabled: false
  scratch_dir: "$tmp/scratch"
modules:
  noop:
    command: ["/bin/true"]
pipelines:
  bench:
    params:
      n: { type: integer, default: 0 }
    stages:
      - { name: fetch, module: noop }
      - { name: work, module: noop, needs: [fetch] }
      - { name: report, module: noop, needs: [work] }
EOF
"$STAGELINED" -c "$tmp/stageline.yaml" --migrate-only >"$tmp/migrate.out" 2>&1 || {
	cat "$tmp/migrate.out" "$tmp/stagelined.log" >&2 2>/dev/null || true
	die "stagelined --migrate-only failed"
}
"$STAGELINED" -c "$tmp/stageline.yaml" >"$tmp/stagelined.stderr" 2>&1 &
daemon_pid=$!
base="http://127.0.0.1:$port"
has_default_project() { [ "$(psql_q "SELECT count(*) FROM projects WHERE id = 'default'")" = 1 ]; }
ready() { curl -fs "$base/readyz" >/dev/null && has_default_project; }
wait_for 100 ready || {
	cat "$tmp/stagelined.stderr" "$tmp/stagelined.log" >&2 2>/dev/null || true
	die "stagelined did not become ready"
}
echo "pool $POOL"
echo "log_level warn"

# --- CPU accounting ---------------------------------------------------------
hz=$(getconf CLK_TCK)
daemon_ticks() {
	awk '{ print $14 + $15 }' "/proc/$daemon_pid/stat"
}
secs() { # ticks_before ticks_after
	awk -v a="$1" -v b="$2" -v hz="$hz" 'BEGIN { printf "%.2f", (b - a) / hz }'
}

field() { # name file
	awk -v k="$1" '$1 == k { print $2; found = 1 } END { if (!found) print "" }' "$2"
}
ms() { awk -v us="$1" 'BEGIN { printf "%.2f", us / 1000 }'; }
per_s() { # count wrk_output
	awk -v n="$1" '/^ +[0-9]+ requests in / {
		d = $4; sub(/,$/, "", d)
		if (d ~ /ms$/) { sub(/ms$/, "", d); d /= 1000 }
		else if (d ~ /m$/) { sub(/m$/, "", d); d *= 60 }
		else sub(/s$/, "", d)
		printf "%.0f\n", n / d }' "$2"
}

run_wrk() { # script url out [env...]
	script=$1 url=$2 out=$3
	shift 3
	env "$@" timeout 60 wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -s "$here/$script" "$url" \
		>"$out" 2>&1 || {
		cat "$out" >&2
		die "wrk failed ($script)"
	}
}

# --- submit -----------------------------------------------------------------
rows0=$(psql_q "SELECT count(*) FROM jobs")
pg0=$(pg_ticks)
d0=$(daemon_ticks)
run_wrk submit.lua "$base/v1/jobs" "$tmp/wrk-submit.txt"
pg1=$(pg_ticks)
d1=$(daemon_ticks)
created=$(field wrk_201 "$tmp/wrk-submit.txt")
[ -n "$created" ] || {
	cat "$tmp/wrk-submit.txt" >&2
	die "no figures from wrk (submit)"
}
echo "submit_jobs_per_s $(per_s "$created" "$tmp/wrk-submit.txt")"
echo "submit_p50_ms $(ms "$(field wrk_p50_us "$tmp/wrk-submit.txt")")"
echo "submit_p99_ms $(ms "$(field wrk_p99_us "$tmp/wrk-submit.txt")")"
echo "submit_non_201 $(field wrk_other "$tmp/wrk-submit.txt")"
pg_cpu=$(secs "$pg0" "$pg1")
echo "submit_pg_cpu_s $pg_cpu"
awk -v c="$pg_cpu" -v n="$created" 'BEGIN { if (n > 0) printf "submit_pg_cpu_s_per_1k %.3f\n", c * 1000 / n }'
echo "submit_daemon_cpu_s $(secs "$d0" "$d1")"
# Jobs per submit statement (the batcher's batch size), from /metrics.
curl -fs "$base/metrics" >"$tmp/metrics.txt" 2>/dev/null &&
	awk '/^stageline_db_queries_total\{/ && /op="job_submit"/ { q += $NF }
	/^stageline_jobs_created_total / { j = $NF }
	END { if (q > 0) printf "submit_jobs_per_batch %.1f\n", j / q }' "$tmp/metrics.txt"
# Requests wrk abandoned at the end may still commit: wait until the count
# holds still before comparing.
last=-1
rows=$(psql_q "SELECT count(*) FROM jobs")
n=50
while [ "$rows" != "$last" ] && [ "$n" -gt 0 ]; do
	last=$rows
	sleep 0.1
	rows=$(psql_q "SELECT count(*) FROM jobs")
	n=$((n - 1))
done
rows=$((rows - rows0))
echo "submit_rows $rows"
echo "submit_rows_minus_201 $((rows - created))"
[ "$rows" -ge "$created" ] || echo "submit.sh: fewer rows ($rows) than 201 answers ($created)!" >&2

# --- reads ------------------------------------------------------------------
curl -fs -D "$tmp/one.headers" -o "$tmp/one.json" -H 'Content-Type: application/json' \
	-d '{"pipeline":"bench","params":{"n":2}}' "$base/v1/jobs" || die "could not create a job"
job_id=$(sed -n 's/^{"id":"\([0-9a-f-]*\)".*/\1/p' "$tmp/one.json")
etag=$(tr -d '\r' <"$tmp/one.headers" | sed -n 's/^[Ee][Tt][Aa][Gg]: *//p')
[ -n "$job_id" ] && [ -n "$etag" ] || die "no id or ETag in the 201: $(cat "$tmp/one.headers" "$tmp/one.json")"

get_phase() { # name expected_status [env...]
	name=$1 want=$2
	shift 2
	run_wrk get.lua "$base/v1/jobs/$job_id" "$tmp/wrk-$name.txt" "$@"
	ok=$(field "wrk_status_$want" "$tmp/wrk-$name.txt")
	all=$(awk '$1 ~ /^wrk_status_/ { s += $2 } END { print s + 0 }' "$tmp/wrk-$name.txt")
	echo "${name}_per_s $(per_s "${ok:-0}" "$tmp/wrk-$name.txt")"
	echo "${name}_p50_ms $(ms "$(field wrk_p50_us "$tmp/wrk-$name.txt")")"
	echo "${name}_p99_ms $(ms "$(field wrk_p99_us "$tmp/wrk-$name.txt")")"
	echo "${name}_unexpected $((all - ${ok:-0}))"
}
pg0=$(pg_ticks)
get_phase get_200 200
pg1=$(pg_ticks)
echo "get_200_pg_cpu_s $(secs "$pg0" "$pg1")"
get_phase get_304 304 "BENCH_INM=$etag"

grep -q '"level":"error"' "$tmp/stagelined.log" 2>/dev/null &&
	echo "submit.sh: the daemon logged errors: $(grep -m3 '"level":"error"' "$tmp/stagelined.log")" >&2
exit 0
