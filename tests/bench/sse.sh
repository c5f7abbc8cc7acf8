#!/bin/sh
# tests/bench/sse.sh: live job events over SSE at scale. Many streams follow
# one job (GET /v1/jobs/{id}/events) while the job produces ~190 durable
# events; the script reports deliveries per second, server memory per idle
# stream and the delay from a transition's commit-time timestamp to the
# client, and, when nginx with nchan is there, the same fan-out through
# nchan. A benchmark, not a test: it prints figures, one `name value` per
# line, and fails only when it cannot measure.
#
#   STAGELINED=/tmp/bb-rel/stagelined sh tests/bench/sse.sh
#
# How a job makes events while thousands watch. The pipeline `sse` is a
# chain: stage 1 runs tests/bench/sse_gate.py, which waits until a file
# exists and sends nothing meanwhile; stages 2..SSE_STAGES (64 by default,
# limits.max_stages) run the persistent noop module, each after the one
# before. Each stage makes 3 durable events (job.stage.ready,
# job.module.spawn, job.module.complete), so once the gate opens the job
# makes 3 x 63 + 2 = 191 events (the gate's completion, the 63 noop
# stages, job.lifecycle.complete) and every stream then gets `end`.
#
# Each round ("fanout": SSE_STREAMS streams, 10,000; "latency":
# SSE_LATENCY_STREAMS, 100) submits a job, waits until its gate stage is
# running, and starts tests/bench/sse_client.c (built here with cc -O2),
# which opens the streams (at most 256 connecting at once), reads each
# stream's replay and snapshot, and says when all are live. The streams
# are then idle (the gate sends nothing): the script reads the daemon's
# VmRSS, which minus the VmRSS before the clients connected, over the
# streams, is the memory per idle stream. Then it creates the gate file and
# the client counts the events until every stream has had `end`.
#
# nchan (when nginx and /usr/lib/nginx/modules/ngx_nchan_module.so are
# there; as root, when they are not, `apt-get install nginx-light
# libnginx-mod-nchan` is tried unless SSE_NCHAN_INSTALL=0): nginx, 1
# worker, SSE_STREAMS eventsource subscribers on one channel, then the
# client publishes as many messages as the fanout round's streams got, of
# the same size, one POST at a time (TOOLCHAIN.md section 9's method).
#
# All on one machine: client, daemon, PostgreSQL (private, initdb in a temp
# dir, unix socket, fsync and synchronous_commit on) and nginx share the
# cores. Bounded: each round gives up after SSE_TIMEOUT (240) s; about a
# minute in all when nothing is stuck. Stops everything it started (trap
# EXIT). Runs as root (the cluster then runs as postgres) or as an ordinary
# user. See tests/bench/README.md for the output.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
STAGELINED=${STAGELINED:-build/release/stagelined}
STREAMS=${SSE_STREAMS:-10000}
LAT_STREAMS=${SSE_LATENCY_STREAMS:-100}
STAGES=${SSE_STAGES:-64}
TIMEOUT=${SSE_TIMEOUT:-240}
POOL=${SSE_POOL:-8}
CONC=${SSE_CONNECT_CONCURRENCY:-256}
LOG_LEVEL=${SSE_LOG_LEVEL:-warn}
NCHAN=${SSE_NCHAN:-auto}
NCHAN_INSTALL=${SSE_NCHAN_INSTALL:-1}
ROUNDS=${SSE_ROUNDS:-fanout latency}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
NCHAN_SO=/usr/lib/nginx/modules/ngx_nchan_module.so

die() {
	echo "sse.sh: $*" >&2
	exit 1
}
# as_pg, wait_for, free_port, pg_start/pg_stop, psql_q, pg_ticks
. "$here/lib.sh"
say() { echo "sse.sh: $*" >&2; }

for v in "$STREAMS" "$LAT_STREAMS" "$STAGES" "$TIMEOUT" "$POOL" "$CONC"; do
	case $v in '' | *[!0-9]*) die "SSE_STREAMS, SSE_LATENCY_STREAMS, SSE_STAGES, SSE_TIMEOUT, SSE_POOL and SSE_CONNECT_CONCURRENCY are numbers" ;; esac
done
[ "$STAGES" -ge 2 ] || die "SSE_STAGES must be >= 2 (the gate and at least one noop stage)"
command -v cc >/dev/null 2>&1 || die "cc not found"
command -v psql >/dev/null 2>&1 || die "psql not found"
command -v curl >/dev/null 2>&1 || die "curl not found"
command -v python3 >/dev/null 2>&1 || die "python3 not found (the gate module)"
[ -x "$PG_BIN/initdb" ] || die "$PG_BIN/initdb not found (PostgreSQL 15)"
[ -x "$STAGELINED" ] || die "$STAGELINED is not an executable (set STAGELINED)"
STAGELINED=$(cd "$(dirname "$STAGELINED")" && pwd)/$(basename "$STAGELINED")
NOOP=${NOOP_MODULE:-$(dirname "$STAGELINED")/contrib/modules/noop}
[ -x "$NOOP" ] || die "no noop module at $NOOP (make contrib/modules/noop, or set NOOP_MODULE)"
NOOP=$(cd "$(dirname "$NOOP")" && pwd)/$(basename "$NOOP")
[ -f "$here/../../contrib/sdk/python/stageline_module.py" ] ||
	die "contrib/sdk/python/stageline_module.py not found next to tests/ (the gate module needs it)"
if ldd "$STAGELINED" 2>/dev/null | grep -q 'libasan\|libubsan'; then
	say "warning: $STAGELINED is a sanitizer build: the figures measure ASan, not the daemon"
fi

# File descriptors: RLIMIT_NOFILE is per process, so the client and the
# daemon (and nginx) each need one per stream plus their own few. Raise the
# soft limit to the hard one (only root with CAP_SYS_RESOURCE could go past
# it); if even that is too small, run fewer streams and say so.
# shellcheck disable=SC3045 # -H and -n: dash, bash and busybox sh have them
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ]; then
	# shellcheck disable=SC3045
	ulimit -n "$hard" 2>/dev/null || true
	max=$((hard - 200))
	if [ "$STREAMS" -gt "$max" ]; then
		say "RLIMIT_NOFILE hard limit is $hard: $max streams instead of $STREAMS"
		STREAMS=$max
	fi
	[ "$LAT_STREAMS" -le "$max" ] || LAT_STREAMS=$max
fi

tmp=$(mktemp -d /tmp/stageline-sse.XXXXXX)
chmod 755 "$tmp"
pgdir=$tmp/pg
mkdir -p "$pgdir"
daemon_pid=""
client_pid=""
nginx_pid=""
pg_started=""

stop_pid() { # pid: SIGTERM, SIGKILL after 10 s
	[ -n "$1" ] || return 0
	kill "$1" 2>/dev/null || true
	sp_n=100
	while kill -0 "$1" 2>/dev/null && [ "$sp_n" -gt 0 ]; do
		sleep 0.1
		sp_n=$((sp_n - 1))
	done
	kill -KILL "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

cleanup() {
	if [ -n "$client_pid" ]; then
		kill -KILL "$client_pid" 2>/dev/null || true
		wait "$client_pid" 2>/dev/null || true
	fi
	stop_pid "$daemon_pid"
	if [ -n "$nginx_pid" ]; then
		kill -QUIT "$nginx_pid" 2>/dev/null || true
		stop_pid "$nginx_pid"
	fi
	pg_stop
	if [ "${SSE_KEEP:-0}" = 1 ]; then
		say "kept $tmp (SSE_KEEP=1)"
	else
		rm -rf "$tmp"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rss_kb() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
hz=$(getconf CLK_TCK)
# a figure from the client's output file
fig() { awk -v k="$2" '$1 == k { print $2 }' "$1"; }

read -r la1 la5 la15 _ </proc/loadavg
echo "nproc $(nproc)"
echo "loadavg_1m $la1"
echo "loadavg_5m $la5"
echo "loadavg_15m $la15"
echo "nofile_hard $hard"

# --- the client ---------------------------------------------------------------
cc -O2 -o "$tmp/sse_client" "$here/sse_client.c" || die "cannot build sse_client.c"

# --- PostgreSQL -----------------------------------------------------------------
pg_start 55031 "-c max_connections=100 -c fsync=on -c synchronous_commit=on"
# --- stagelined ---------------------------------------------------------------------
write_config() { # port
	max_stages=64
	[ "$STAGES" -le 64 ] || max_stages=$STAGES
	{
		cat <<EOF
server:
  listen: "127.0.0.1:$1"
  shutdown_grace: 1s
database:
  url: "postgresql://postgres@/stageline?host=$pgdir&port=$pgport"
  pool: $POOL
log:
  format: json
  level: $LOG_LEVEL
  file: "$tmp/daemon.log"
auth:
  enabled: false
store:
  path: "$tmp/objects"
  url_secret: "sse-bench"
scheduler:
  scratch_dir: "$tmp/scratch"
limits:
  max_stages: $max_stages
modules:
  gate:
    command: ["python3", "$here/sse_gate.py"]
    timeout: $((TIMEOUT + 120))s
  noop:
    command: ["$NOOP"]
    persistent: true
    concurrency: 16
pipelines:
  sse:
    stages:
      - { name: s01, module: gate }
EOF
		i=2
		while [ "$i" -le "$STAGES" ]; do
			printf '      - { name: s%02d, module: noop, needs: [s%02d] }\n' "$i" $((i - 1))
			i=$((i + 1))
		done
	} >"$tmp/daemon.yaml"
}

port=$(free_port 61031) || die "no free TCP port"
write_config "$port"
base="http://127.0.0.1:$port"
"$STAGELINED" -c "$tmp/daemon.yaml" --migrate-only >"$tmp/migrate.out" 2>&1 || {
	cat "$tmp/migrate.out" "$tmp/daemon.log" >&2 2>/dev/null || true
	die "stagelined --migrate-only failed"
}
"$STAGELINED" -c "$tmp/daemon.yaml" >"$tmp/daemon.stderr" 2>&1 &
daemon_pid=$!
has_default_project() { [ "$(psql_q "SELECT count(*) FROM projects WHERE id = 'default'")" = 1 ]; }
ready() { curl -fs "$base/readyz" >/dev/null && has_default_project; }
show_logs() {
	for f in "$tmp/daemon.stderr" "$tmp/daemon.log"; do
		[ -s "$f" ] && { echo "--- $f" && tail -n 20 "$f"; } >&2
	done
	return 0
}
wait_for 100 ready || {
	show_logs
	die "stagelined did not become ready"
}
echo "daemon_nofile_soft $(awk '$1 == "Max" && $2 == "open" { print $4 }' "/proc/$daemon_pid/limits")"
echo "job_stages $STAGES"

daemon_alive() {
	kill -0 "$daemon_pid" 2>/dev/null || {
		rc=0
		wait "$daemon_pid" || rc=$?
		daemon_pid=""
		show_logs
		die "stagelined exited, status $rc"
	}
}

# job_events_after queries (the SSE replay and catch-up fetches): "ok other"
event_fetches() {
	curl -fs "$base/metrics" | awk '/^stageline_db_queries_total[{]/ && /op="job_events_after"/ {
		if ($0 ~ /outcome="ok"/) ok += $NF; else bad += $NF } END { print ok + 0, bad + 0 }'
}

# Waits for the client (at most SSE_TIMEOUT + 30 s: it bounds itself).
wait_client() {
	wc_n=$(((TIMEOUT + 30) * 10))
	while kill -0 "$client_pid" 2>/dev/null && [ "$wc_n" -gt 0 ]; do
		sleep 0.1
		wc_n=$((wc_n - 1))
	done
	kill -KILL "$client_pid" 2>/dev/null || true
	rc=0
	wait "$client_pid" || rc=$?
	client_pid=""
	return "$rc"
}

# One round: a job, N streams on it. Prints <name>_* lines.
round() { # name streams
	name=$1
	nstreams=$2
	gate=$tmp/gate-$name
	rm -f "$gate" "$tmp/ready-$name"
	curl -fsS -H 'Content-Type: application/json' \
		-d "{\"pipeline\":\"sse\",\"params\":{\"gate\":\"$gate\",\"gate_timeout\":$((TIMEOUT + 60))}}" \
		"$base/v1/jobs" >"$tmp/submit-$name.json" || die "POST /v1/jobs failed"
	job=$(sed -n 's/^{"id":"\([0-9a-f-]*\)".*/\1/p' "$tmp/submit-$name.json")
	[ -n "$job" ] || {
		cat "$tmp/submit-$name.json" >&2
		die "no job id in the answer"
	}
	gate_running() {
		[ "$(psql_q "SELECT status FROM tasks WHERE job_id = '$job' AND stage_number = 1")" = running ]
	}
	wait_for 300 gate_running || {
		show_logs
		die "the job's gate stage did not start"
	}
	sleep 0.3 # the stage's spawn event is out
	# every delivery to a file for a look afterwards, when it is small
	dump=""
	[ "$nstreams" -gt 1000 ] || dump="-D $tmp/deliveries-$name.txt"
	rss0=$(rss_kb "$daemon_pid")
	# shellcheck disable=SC2046 # two numbers
	set -- $(event_fetches)
	fc_ok=$1 fc_bad=$2
	c0=$(cpu_ticks "$daemon_pid")
	p0=$(pg_ticks)
	# shellcheck disable=SC2086 # $dump: an option and a path without blanks, or nothing
	"$tmp/sse_client" -a "127.0.0.1:$port" -u "/v1/jobs/$job/events" -n "$nstreams" -c "$CONC" \
		-R snapshot -r "$tmp/ready-$name" -T "$TIMEOUT" -x "${name}_" $dump \
		>"$tmp/client-$name.out" 2>"$tmp/client-$name.err" &
	client_pid=$!
	while [ ! -f "$tmp/ready-$name" ] && kill -0 "$client_pid" 2>/dev/null; do
		sleep 0.1
	done
	c1=$(cpu_ticks "$daemon_pid")
	p1=$(pg_ticks)
	daemon_alive
	sleep 0.5 # let the last streams settle
	rss1=$(rss_kb "$daemon_pid")
	open=$(curl -fs "$base/metrics" | awk '$1 == "stageline_sse_streams_open" { print $2 }')
	seq0=$(psql_q "SELECT event_seq FROM jobs WHERE id = '$job'")
	# shellcheck disable=SC2046
	set -- $(event_fetches)
	f0_ok=$1 f0_bad=$2
	d0=$(cpu_ticks "$daemon_pid")
	p2=$(pg_ticks)
	touch "$gate"
	rc=0
	wait_client || rc=$?
	d1=$(cpu_ticks "$daemon_pid")
	p3=$(pg_ticks)
	daemon_alive
	# shellcheck disable=SC2046
	set -- $(event_fetches)
	f1_ok=$1 f1_bad=$2
	[ "$rc" = 0 ] || {
		cat "$tmp/client-$name.err" >&2
		die "sse_client failed (status $rc)"
	}
	[ -s "$tmp/client-$name.err" ] && sed 's/^/sse.sh: client: /' "$tmp/client-$name.err" >&2
	cat "$tmp/client-$name.out"
	ready_n=$(fig "$tmp/client-$name.out" "${name}_streams_ready")
	dl=$(fig "$tmp/client-$name.out" "${name}_deliveries")
	ddl=$(fig "$tmp/client-$name.out" "${name}_durable_deliveries")
	echo "${name}_daemon_streams_open_when_idle ${open:-nan}"
	ccpu=$(awk -v a="$c0" -v b="$c1" -v hz="$hz" 'BEGIN { printf "%.2f", (b - a) / hz }')
	echo "${name}_connect_daemon_cpu_s $ccpu"
	awk -v c="$ccpu" -v n="$ready_n" \
		'BEGIN { if (n > 0) printf "'"$name"'_connect_daemon_cpu_ms_per_stream %.3f\n", c * 1000 / n; else print "'"$name"'_connect_daemon_cpu_ms_per_stream nan" }'
	echo "${name}_connect_pg_cpu_s $(awk -v a="$p0" -v b="$p1" -v hz="$hz" 'BEGIN { printf "%.2f", (b - a) / hz }')"
	echo "${name}_connect_event_fetches $((f0_ok - fc_ok))"
	echo "${name}_connect_event_fetch_failures $((f0_bad - fc_bad))"
	echo "${name}_live_event_fetches $((f1_ok - f0_ok))"
	echo "${name}_live_event_fetch_failures $((f1_bad - f0_bad))"
	echo "${name}_rss_before_kb $rss0"
	echo "${name}_rss_idle_kb $rss1"
	awk -v a="$rss0" -v b="$rss1" -v n="$ready_n" \
		'BEGIN { if (n > 0) printf "'"$name"'_rss_per_idle_stream_kb %.2f\n", (b - a) / n; else print "'"$name"'_rss_per_idle_stream_kb nan" }'
	echo "${name}_rss_after_kb $(rss_kb "$daemon_pid")"
	cpu=$(awk -v a="$d0" -v b="$d1" -v hz="$hz" 'BEGIN { printf "%.2f", (b - a) / hz }')
	echo "${name}_daemon_cpu_s $cpu"
	echo "${name}_pg_cpu_s $(awk -v a="$p2" -v b="$p3" -v hz="$hz" 'BEGIN { printf "%.2f", (b - a) / hz }')"
	awk -v c="$cpu" -v d="$dl" \
		'BEGIN { if (d > 0) printf "'"$name"'_daemon_cpu_us_per_delivery %.2f\n", c * 1e6 / d; else print "'"$name"'_daemon_cpu_us_per_delivery nan" }'
	# what the job did (database clock): its events after the gate opened
	psql_q "SELECT j.status, count(e.*), count(e.*) FILTER (WHERE e.seq > $seq0),
		coalesce(extract(epoch FROM max(e.ts) FILTER (WHERE e.seq > $seq0)
		                 - min(e.ts) FILTER (WHERE e.seq > $seq0)), 0)
		FROM jobs j LEFT JOIN job_events e ON e.job_id = j.id WHERE j.id = '$job'
		GROUP BY j.status" >"$tmp/job-$name.txt"
	IFS='|' read -r jstatus jevents jlive jlive_s <"$tmp/job-$name.txt"
	# the job's events, for a look afterwards (SSE_KEEP=1)
	psql_q "SELECT seq, kind, stage, txid, (extract(epoch FROM ts) * 1000000)::bigint
		FROM job_events WHERE job_id = '$job' ORDER BY seq" >"$tmp/events-$name.txt"
	echo "${name}_job_status $jstatus"
	echo "${name}_job_events $jevents"
	echo "${name}_job_live_events $jlive"
	awk -v s="$jlive_s" -v e="$jlive" 'BEGIN {
		printf "'"$name"'_job_live_s %.3f\n", s
		if (s > 0) printf "'"$name"'_job_events_per_s %.0f\n", (e - 1) / s }'
	awk -v n="$ready_n" -v e="$jlive" -v d="$ddl" \
		'BEGIN { printf "'"$name"'_deliveries_missing %d\n", n * e - d }'
	if [ -n "$dump" ] && [ -s "$tmp/deliveries-$name.txt" ]; then
		# per event: the first stream's latency (commit time -> the first
		# client) and the spread (the last stream's receive - the first's)
		awk '{ s = $2; if (!(s in mn) || $4 < mn[s]) mn[s] = $4
			if (!(s in r0) || $3 < r0[s]) r0[s] = $3
			if (!(s in r1) || $3 > r1[s]) r1[s] = $3 }
			END { for (s in mn) print mn[s], r1[s] - r0[s] }' "$tmp/deliveries-$name.txt" >"$tmp/per-event-$name.txt"
		for col in 1 2; do
			sort -n -k "$col,$col" "$tmp/per-event-$name.txt" | awk -v c="$col" '{ v[NR] = $c }
				END { if (NR == 0) exit
				      i50 = int(0.50 * (NR - 1) + 0.5) + 1; i99 = int(0.99 * (NR - 1) + 0.5) + 1
				      printf "%.3f %.3f\n", v[i50] / 1000, v[i99] / 1000 }'
		done >"$tmp/per-event-$name.fig"
		{
			read -r a b && echo "${name}_first_stream_latency_p50_ms $a" && echo "${name}_first_stream_latency_p99_ms $b"
			read -r a b && echo "${name}_spread_p50_ms $a" && echo "${name}_spread_p99_ms $b"
		} <"$tmp/per-event-$name.fig" || true
	fi
	live_events=$jlive
	live_bytes=$(fig "$tmp/client-$name.out" "${name}_live_bytes")
}

fanout_rate=""
for r in $ROUNDS; do
	case $r in
	fanout)
		round fanout "$STREAMS"
		fanout_rate=$(fig "$tmp/client-fanout.out" fanout_deliveries_per_s)
		fanout_msgs=$live_events
		# nchan gets messages as large as these events (its framing, "id:
		# <time>:<n>\ndata: ", is about as long as "id: N\nevent: stage\ndata: ")
		fanout_msg_bytes=$(awk -v b="$live_bytes" -v d="$(fig "$tmp/client-fanout.out" fanout_deliveries)" \
			'BEGIN { if (d > 0) printf "%d", b / d - 28; else print 300 }')
		;;
	latency) round latency "$LAT_STREAMS" ;;
	*) die "SSE_ROUNDS: fanout and/or latency, not $r" ;;
	esac
done
metrics=$(curl -fs "$base/metrics" || true)
echo "daemon_sse_clients_dropped $(echo "$metrics" | awk '$1 ~ /^stageline_sse_clients_dropped_total/ { s += $NF } END { print s + 0 }')"
echo "daemon_sse_end_events_sent $(echo "$metrics" | awk '$1 ~ /^stageline_sse_events_sent_total[{].*type="end"/ { s += $NF } END { print s + 0 }')"
errs=$(grep -c '"level":"error"' "$tmp/daemon.log" 2>/dev/null || true)
warns=$(grep -c '"level":"warn"' "$tmp/daemon.log" 2>/dev/null || true)
echo "daemon_log_errors ${errs:-0}"
echo "daemon_log_warnings ${warns:-0}"
if [ "${errs:-0}" != 0 ] || [ "${warns:-0}" != 0 ]; then
	say "the daemon logged errors or warnings (count, level, event; then the first three):"
	grep '"level":"\(error\|warn\)"' "$tmp/daemon.log" |
		sed 's/.*"level":"\([a-z]*\)","event":"\([^"]*\)".*/\1 \2/' | sort | uniq -c >&2 || true
	grep -m 3 '"level":"\(error\|warn\)"' "$tmp/daemon.log" >&2 || true
fi
stop_pid "$daemon_pid"
daemon_pid=""

# --- nginx + nchan ------------------------------------------------------------------
have_nchan() { command -v nginx >/dev/null 2>&1 && [ -f "$NCHAN_SO" ]; }
if [ "$NCHAN" != 0 ] && ! have_nchan && [ "$NCHAN_INSTALL" = 1 ] && [ "$(id -u)" = 0 ] &&
	command -v apt-get >/dev/null 2>&1; then
	cand=$(apt-cache policy libnginx-mod-nchan 2>/dev/null | awk '$1 == "Candidate:" { print $2 }')
	if [ -n "$cand" ] && [ "$cand" != "(none)" ]; then
		say "installing nginx-light and libnginx-mod-nchan ($cand) to compare"
		DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
			nginx-light libnginx-mod-nchan >"$tmp/apt.log" 2>&1 || say "apt-get install failed (see SSE_KEEP=1 $tmp/apt.log)"
	fi
fi
if [ "$NCHAN" = 0 ]; then
	echo "nchan skipped"
elif ! have_nchan; then
	echo "nchan not_installed"
elif [ -z "$fanout_rate" ]; then
	echo "nchan skipped_no_fanout_round"
else
	nport=$(free_port 61097) || die "no free TCP port for nginx"
	mkdir -p "$tmp/nginx/logs"
	# nginx counts more than the subscribers against worker_connections
	# (with STREAMS + 200 it warned "not enough, reusing connections" and
	# closed ~4 % of the subscribers): give it all the process may have
	wnofile=$((STREAMS * 2 + 200))
	[ "$hard" = unlimited ] || [ "$wnofile" -le "$hard" ] || wnofile=$hard
	cat >"$tmp/nginx/nginx.conf" <<EOF
load_module $NCHAN_SO;
worker_processes 1;
worker_rlimit_nofile $wnofile;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/logs/error.log warn;
events { worker_connections $wnofile; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx/body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    server {
        listen 127.0.0.1:$nport backlog=4096;
        location = /sub {
            nchan_subscriber eventsource;
            nchan_channel_id bench;
            nchan_subscriber_first_message newest;
        }
        location = /pub {
            nchan_publisher;
            nchan_channel_id bench;
            nchan_message_buffer_length 1000;
        }
    }
}
EOF
	nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/logs/error.log" \
		2>"$tmp/nginx/stderr" &
	nginx_pid=$!
	nginx_up() { port_in_use "$nport"; }
	wait_for 50 nginx_up || {
		cat "$tmp/nginx/stderr" "$tmp/nginx/logs/error.log" >&2 2>/dev/null || true
		die "nginx did not start"
	}
	worker=$(ps -o pid= --ppid "$nginx_pid" | head -n 1 | tr -d ' ')
	[ -n "$worker" ] || die "no nginx worker"
	msgs=${fanout_msgs:-200}
	[ "$msgs" -gt 0 ] 2>/dev/null || msgs=200
	size=${fanout_msg_bytes:-300}
	[ "$size" -ge 40 ] 2>/dev/null || size=300
	echo "nchan_messages $msgs"
	echo "nchan_message_bytes $size"
	rss0=$(rss_kb "$worker")
	"$tmp/sse_client" -a "127.0.0.1:$nport" -u /sub -n "$STREAMS" -c "$CONC" -K "$msgs" \
		-r "$tmp/ready-nchan" -g "$tmp/go-nchan" -P /pub -M "$msgs" -S "$size" -T "$TIMEOUT" \
		-x nchan_ >"$tmp/client-nchan.out" 2>"$tmp/client-nchan.err" &
	client_pid=$!
	while [ ! -f "$tmp/ready-nchan" ] && kill -0 "$client_pid" 2>/dev/null; do
		sleep 0.1
	done
	sleep 0.5
	rss1=$(rss_kb "$worker")
	w0=$(cpu_ticks "$worker")
	touch "$tmp/go-nchan"
	rc=0
	wait_client || rc=$?
	w1=$(cpu_ticks "$worker")
	[ "$rc" = 0 ] || {
		cat "$tmp/client-nchan.err" >&2
		die "sse_client failed against nchan (status $rc)"
	}
	[ -s "$tmp/client-nchan.err" ] && sed 's/^/sse.sh: client (nchan): /' "$tmp/client-nchan.err" >&2
	cat "$tmp/client-nchan.out"
	ready_n=$(fig "$tmp/client-nchan.out" nchan_streams_ready)
	awk -v a="$rss0" -v b="$rss1" -v n="$ready_n" \
		'BEGIN { if (n > 0) printf "nchan_rss_per_idle_stream_kb %.2f\n", (b - a) / n; else print "nchan_rss_per_idle_stream_kb nan" }'
	cpu=$(awk -v a="$w0" -v b="$w1" -v hz="$hz" 'BEGIN { printf "%.2f", (b - a) / hz }')
	echo "nchan_worker_cpu_s $cpu"
	dl=$(fig "$tmp/client-nchan.out" nchan_deliveries)
	awk -v c="$cpu" -v d="$dl" \
		'BEGIN { if (d > 0) printf "nchan_worker_cpu_us_per_delivery %.2f\n", c * 1e6 / d; else print "nchan_worker_cpu_us_per_delivery nan" }'
	nrate=$(fig "$tmp/client-nchan.out" nchan_deliveries_per_s)
	awk -v a="$fanout_rate" -v b="$nrate" \
		'BEGIN { if (b > 0) printf "ratio_vs_nchan %.2f\n", a / b; else print "ratio_vs_nchan nan" }'
	kill -QUIT "$nginx_pid" 2>/dev/null || true
	stop_pid "$nginx_pid"
	nginx_pid=""
fi
exit 0
