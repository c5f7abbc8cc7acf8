#!/bin/sh
# tests/bench/metrics_overhead.sh — what the metrics cost on the hottest path.
#
# Runs `wrk -t1 -c64 -d5s` against GET /healthz of a fresh stagelined with
# server.metrics true, then false, alternating 3 times each in the same run
# (on, off, on, off, on, off), and prints the medians:
#   metrics_on_rps N
#   metrics_off_rps N
#   metrics_overhead_pct X      ((off - on) / off * 100; negative = noise)
# and, steadier on a shared machine because it doesn't depend on the CPU
# share the daemon gets, the daemon's CPU time per request (/proc/PID/stat):
#   metrics_on_cpu_us_per_req N
#   metrics_off_cpu_us_per_req N
#   metrics_cpu_overhead_pct X  ((on - off) / off * 100)
# Per-run figures go to stderr.
#
# No database is needed: /healthz does no I/O (readyz would say 503).
# Environment: STAGELINED (default build/release/stagelined; use an
# optimised build without sanitizers), DURATION (wrk seconds, default 5),
# RUNS (pairs, default 3), PORT (default: a free port above 60999, outside
# the ephemeral range), PIN=1 (pin daemon and wrk to separate CPUs).
# Bounded: every wrk and daemon start has a deadline, and everything started
# here is stopped on exit.
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
bin=${STAGELINED:-$top/build/release/stagelined}
duration=${DURATION:-5}
runs=${RUNS:-3}

say() { printf 'metrics_overhead: %s\n' "$*" >&2; }
die() {
	say "$*"
	exit 1
}

[ -x "$bin" ] || die "no daemon at $bin (set STAGELINED, e.g. a CFLAGS=-O2 build)"
command -v wrk >/dev/null 2>&1 || die "wrk not found (apt-get install wrk; contrib/deps installs it)"
command -v curl >/dev/null 2>&1 || die "curl not found"
if ldd "$bin" 2>/dev/null | grep -q 'libasan\|libubsan'; then
	say "warning: $bin is built with sanitizers; the figures say little about production"
fi

free_port() {
	python3 - <<'EOF'
import socket
for p in range(61000, 65536):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
EOF
}

# PIN=1 (two cores or more): the daemon on CPU 0 and wrk on CPU 1, so they
# don't trade places between runs; only useful on an otherwise idle machine.
pin_daemon="" pin_wrk=""
if [ "${PIN:-0}" = 1 ] && command -v taskset >/dev/null 2>&1 &&
	[ "$(nproc 2>/dev/null || echo 1)" -ge 2 ]; then
	pin_daemon="taskset -c 0"
	pin_wrk="taskset -c 1"
fi

port=${PORT:-$(free_port)}
[ -n "$port" ] || die "no free port above 60999"

work=$(mktemp -d "${TMPDIR:-/tmp}/sl-bench-metrics.XXXXXX")
pid=""

stop_daemon() {
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || true
	i=0
	while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	pid=""
}

cleanup() {
	stop_daemon
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

start_daemon() { # $1: true | false
	cat >"$work/stageline.yaml" <<EOF
server:
  listen: "127.0.0.1:$port"
  metrics: $1
  shutdown_grace: "1s"
database:
  url: "postgresql://bench@/stageline?host=$work/no-such-dir&port=1"
log:
  level: "error"
scheduler:
  scratch_dir: "$work"
EOF
	# shellcheck disable=SC2086 # $pin_daemon is empty or a command prefix
	(cd "$work" && exec $pin_daemon "$bin" -c "$work/stageline.yaml") >"$work/daemon.log" 2>&1 &
	pid=$!
	i=0
	until curl -fs -o /dev/null --max-time 1 "http://127.0.0.1:$port/healthz"; do
		kill -0 "$pid" 2>/dev/null || {
			cat "$work/daemon.log" >&2
			die "stagelined exited during startup"
		}
		i=$((i + 1))
		[ $i -lt 100 ] || die "stagelined did not answer /healthz on port $port within 10 s"
		sleep 0.1
	done
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
clk_tck=$(getconf CLK_TCK 2>/dev/null || echo 100)

rps() { # one wrk run; prints "Requests/sec requests"
	# shellcheck disable=SC2086
	out=$(timeout $((duration + 15)) $pin_wrk wrk -t1 -c64 -d"${1}s" --latency \
		"http://127.0.0.1:$port/healthz" 2>&1) || {
		printf '%s\n' "$out" >&2
		die "wrk failed"
	}
	if printf '%s\n' "$out" | grep -q 'Non-2xx or 3xx responses\|Socket errors'; then
		printf '%s\n' "$out" >&2
		die "wrk saw errors"
	fi
	printf '%s\n' "$out" | awk '/^Requests\/sec:/ { r = $2 } / requests in / { n = $1 } END { print r, n }'
}

median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

on="" off="" on_cpu="" off_cpu=""
n=1
while [ $n -le "$runs" ]; do
	for mode in on off; do
		[ $mode = on ] && flag=true || flag=false
		start_daemon "$flag"
		rps 1 >/dev/null # warm up: connections, page cache, CPU frequency
		t0=$(cpu_ticks)
		res=$(rps "$duration")
		t1=$(cpu_ticks)
		r=${res% *}
		nreq=${res#* }
		if [ -z "$r" ] || [ -z "$nreq" ] || [ "$nreq" -le 0 ]; then
			die "could not read Requests/sec from wrk"
		fi
		cpu=$(awk -v t="$((t1 - t0))" -v hz="$clk_tck" -v n="$nreq" \
			'BEGIN { printf "%.3f", t / hz * 1e6 / n }')
		if [ $mode = off ]; then
			# the switch really was off: nothing counted
			curl -fs --max-time 2 "http://127.0.0.1:$port/metrics.json" |
				grep -q '"http.requests_total|' && die "server.metrics: false still counted requests"
		fi
		stop_daemon
		say "run $n metrics=$mode rps=$r cpu_us_per_req=$cpu"
		if [ $mode = on ]; then
			on="$on $r" on_cpu="$on_cpu $cpu"
		else
			off="$off $r" off_cpu="$off_cpu $cpu"
		fi
	done
	n=$((n + 1))
done

on_med=$(printf '%s\n' "$on" | median)
off_med=$(printf '%s\n' "$off" | median)
echo "metrics_on_rps $on_med"
echo "metrics_off_rps $off_med"
awk -v on="$on_med" -v off="$off_med" 'BEGIN { printf "metrics_overhead_pct %.2f\n", (off - on) / off * 100 }'
on_cpu_med=$(printf '%s\n' "$on_cpu" | median)
off_cpu_med=$(printf '%s\n' "$off_cpu" | median)
echo "metrics_on_cpu_us_per_req $on_cpu_med"
echo "metrics_off_cpu_us_per_req $off_cpu_med"
awk -v on="$on_cpu_med" -v off="$off_cpu_med" \
	'BEGIN { printf "metrics_cpu_overhead_pct %.2f\n", (on - off) / off * 100 }'
