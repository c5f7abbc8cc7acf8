#!/bin/sh
# tests/bench/http.sh: requests per second and p99 latency of GET /healthz,
# stagelined against nginx doing the same job. A benchmark, not a test: it
# prints figures, one per line, and fails only when it cannot measure.
#
#   STAGELINED=./stagelined tests/bench/http.sh
#
# Output:
#   stageline_healthz_rps N       requests/s over the run (wrk)
#   stageline_healthz_p99_ms X    99th percentile latency, milliseconds
#   nginx_healthz_rps N           the same for nginx, when it is installed
#   nginx_healthz_p99_ms X
#   ratio_vs_nginx R              stageline rps / nginx rps
#
# What is compared. /healthz does no I/O, so this measures the HTTP path:
# parsing, our limit hooks, routing, JSON, the access log line and metrics.
# Both servers run one event loop in one process (nginx: 1 worker), both
# write an access log line per request to a file, as in production, and
# nginx returns a body of the same size. wrk runs 1 thread and 64
# keep-alive connections for 5 s per server. On a 2-core machine wrk and
# the server each get one core; on a busy machine the figures are noisy,
# so compare runs made on the same machine, back to back.
#
# stagelined needs no database here: database.url points at a socket
# directory that does not exist, so /readyz would say 503 and nothing else
# cares. It listens on port 0 and the script reads the bound port from its
# server.start log line; nginx gets a free port above 60999.
# Bounded: about 15 s in all. Needs wrk (Debian package wrk); nginx is
# optional (apt-get install nginx-light). Runs as any user.
set -eu

STAGELINED=${STAGELINED:-./stagelined}
DURATION=${BENCH_DURATION:-5s}
CONNS=${BENCH_CONNECTIONS:-64}

command -v wrk >/dev/null 2>&1 || {
	echo "http.sh: wrk not found (apt-get install wrk)" >&2
	exit 1
}
[ -x "$STAGELINED" ] || {
	echo "http.sh: $STAGELINED is not an executable (set STAGELINED)" >&2
	exit 1
}

tmp=$(mktemp -d /tmp/stageline-bench.XXXXXX)
pids=""
cleanup() {
	for p in $pids; do
		kill "$p" 2>/dev/null || true
	done
	for p in $pids; do
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

here=$(cd "$(dirname "$0")" && pwd)
# wait_for, port_in_use, free_port
. "$here/lib.sh"

# wrk --latency output -> "rps p99_ms" (p99 converted from us/ms/s/m).
wrk_figures() {
	awk '
	/Requests\/sec:/ { rps = $2 }
	$1 == "99%" {
		v = $2
		if (v ~ /us$/) { sub(/us$/, "", v); ms = v / 1000 }
		else if (v ~ /ms$/) { sub(/ms$/, "", v); ms = v }
		else if (v ~ /m$/) { sub(/m$/, "", v); ms = v * 60000 }
		else if (v ~ /s$/) { sub(/s$/, "", v); ms = v * 1000 }
	}
	/Non-2xx or 3xx responses:/ { bad = $NF }
	/Socket errors:/ { errs = $0 }
	END {
		if (bad) print "http.sh: " bad " responses were not 2xx/3xx" > "/dev/stderr"
		if (errs) print "http.sh: " errs > "/dev/stderr"
		if (rps == "" || ms == "") exit 1
		printf "%.0f %.3f\n", rps, ms
	}' "$1"
}

run_wrk() { # url out
	timeout 20 wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$1" >"$2" 2>&1
}

# --- stagelined -----------------------------------------------------------
cat >"$tmp/stageline.yaml" <<EOF
server:
  listen: "127.0.0.1:0"
  shutdown_grace: 1s
database:
  url: "postgresql:///stageline?host=$tmp/no-postgres"
log:
  format: json
  level: info
  file: "$tmp/stagelined.log"
store:
  path: "$tmp/objects"
scheduler:
  scratch_dir: "$tmp/scratch"
EOF
"$STAGELINED" -c "$tmp/stageline.yaml" 2>"$tmp/stagelined.stderr" &
pids="$pids $!"

listen_addr() {
	sed -n 's/.*"event":"server.start".*"listen":"\([^"]*\)".*/\1/p' "$tmp/stagelined.log" |
		head -n 1
}
has_listen() { [ -n "$(listen_addr)" ]; }
if ! wait_for 50 has_listen; then
	echo "http.sh: stagelined did not start; its output:" >&2
	cat "$tmp/stagelined.stderr" "$tmp/stagelined.log" >&2 2>/dev/null || true
	exit 1
fi
addr=$(listen_addr)

run_wrk "http://$addr/healthz" "$tmp/wrk-stageline.txt"
figs=$(wrk_figures "$tmp/wrk-stageline.txt") || {
	cat "$tmp/wrk-stageline.txt" >&2
	exit 1
}
# shellcheck disable=SC2086 # "rps p99": split on purpose
set -- $figs
sl_rps=$1
echo "stageline_healthz_rps $1"
echo "stageline_healthz_p99_ms $2"

# --- nginx ------------------------------------------------------------------
if ! command -v nginx >/dev/null 2>&1; then
	echo "nginx: not installed (apt-get install nginx-light to compare)"
	exit 0
fi
nport=$(free_port 61000) || {
	echo "http.sh: no free port above 60999 for nginx" >&2
	exit 1
}
mkdir -p "$tmp/nginx/logs"
# The body has the size of stagelined's (85 bytes). The access log is on,
# to a file, because stagelined writes one line per request too.
cat >"$tmp/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log $tmp/nginx/logs/access.log;
    client_body_temp_path $tmp/nginx/body;
    proxy_temp_path $tmp/nginx/proxy;
    fastcgi_temp_path $tmp/nginx/fastcgi;
    uwsgi_temp_path $tmp/nginx/uwsgi;
    scgi_temp_path $tmp/nginx/scgi;
    server {
        listen 127.0.0.1:$nport;
        location /healthz {
            default_type application/json;
            return 200 '{"status":"ok","version":"0.1.0","instance_id":"0123456789abcdef","uptime_seconds":1}';
        }
    }
}
EOF
nginx -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" -e "$tmp/nginx/logs/error.log" \
	2>"$tmp/nginx/stderr" &
pids="$pids $!"
nginx_up() { port_in_use "$nport"; }
if ! wait_for 50 nginx_up; then
	echo "http.sh: nginx did not start:" >&2
	cat "$tmp/nginx/stderr" "$tmp/nginx/logs/error.log" >&2 2>/dev/null || true
	exit 1
fi

run_wrk "http://127.0.0.1:$nport/healthz" "$tmp/wrk-nginx.txt"
figs=$(wrk_figures "$tmp/wrk-nginx.txt") || {
	cat "$tmp/wrk-nginx.txt" >&2
	exit 1
}
# shellcheck disable=SC2086 # "rps p99": split on purpose
set -- $figs
echo "nginx_healthz_rps $1"
echo "nginx_healthz_p99_ms $2"
awk -v a="$sl_rps" -v b="$1" 'BEGIN { printf "ratio_vs_nginx %.2f\n", (b > 0 ? a / b : 0) }'
