#!/bin/sh
# tests/bench/modules.sh — what the module supervisor (src/exec/module.c)
# costs, measured through tests/harness/modrun (no daemon, no database).
#
# Prints (medians over RUNS runs; per-run figures go to stderr):
#   persistent_tasks_per_s N     100,000 no-op tasks through ONE persistent
#                                contrib/modules/noop (concurrency 256)
#   supervisor_us_per_task X     modrun's own CPU time (getrusage) per task in
#                                that run: supervisor + harness, not the module
#   oneshot_spawns_per_s N       1,000 one-shot tasks, one process each (noop
#                                in one-shot mode: stdin closes after its
#                                answer, so it exits), 16 at once
#   oneshot_supervisor_us_per_spawn X   the same, modrun CPU per spawn
# Floors from the issue, reported and not asserted: >= 50,000 tasks/s
# persistent, >= 500 spawns/s one-shot.
#
# Environment: MODRUN (default build/release/tests/harness/modrun: an -O2
# build without sanitizers, e.g. CFLAGS='-O2 -g' configure && make
# tests/harness/modrun), NOOP_MODULE (default: contrib/modules/noop.c built
# here with cc -O2), BENCH_TASKS (100000), BENCH_SPAWNS (1000),
# BENCH_CONCURRENCY (256), BENCH_ONESHOT_CONCURRENCY (16), RUNS (3),
# TMPDIR (/tmp). Every run is bounded by `timeout`; the temporary directory
# is removed on exit.
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
modrun=${MODRUN:-$top/build/release/tests/harness/modrun}
tasks=${BENCH_TASKS:-100000}
spawns=${BENCH_SPAWNS:-1000}
conc=${BENCH_CONCURRENCY:-256}
oneshot_conc=${BENCH_ONESHOT_CONCURRENCY:-16}
runs=${RUNS:-3}
py=/usr/bin/python3

say() { printf 'modules: %s\n' "$*" >&2; }
die() {
	say "$*"
	exit 1
}

[ -x "$modrun" ] || die "no harness at $modrun (set MODRUN to an -O2 build of tests/harness/modrun)"
[ -x "$py" ] || die "$py not found (used to read modrun's JSON)"
command -v timeout >/dev/null 2>&1 || die "timeout(1) not found"
if ldd "$modrun" 2>/dev/null | grep -q 'libasan\|libubsan'; then
	say "warning: $modrun is a sanitizer build: the figures measure ASan, not the supervisor"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/sl-bench-modules.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

noop=${NOOP_MODULE:-}
if [ -z "$noop" ]; then
	cc=$(command -v cc || command -v gcc || true)
	[ -n "$cc" ] || die "no C compiler to build contrib/modules/noop.c (or set NOOP_MODULE)"
	noop=$work/noop
	"$cc" -O2 -I "$top/contrib/sdk/c" "$top/contrib/modules/noop.c" -o "$noop" -lmsgpackc ||
		die "cannot build contrib/modules/noop.c"
fi
[ -x "$noop" ] || die "no noop module at $noop"
mkdir -p "$work/wd"

# field FILE KEY: one number from modrun's summary line.
field() {
	"$py" -c 'import json, sys
s = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{\"summary\"")]
if not s:
    sys.exit("no summary line")
print(s[-1][sys.argv[2]])' "$1" "$2"
}

# check FILE N: every task completed and nothing was left behind.
check() {
	"$py" -c 'import json, sys
s = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{\"summary\"")][-1]
n = int(sys.argv[2])
ok = (s["outcomes"] == {"complete": n} and s["fds_after"] == s["fds_before"]
      and s["zombies"] == 0 and s["children_left"] == 0)
sys.exit(0 if ok else "bad run: " + json.dumps(s))' "$1" "$2"
}

median() {
	sort -n | awk '{ v[NR] = $1 }
		END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

: >"$work/p_rate"
: >"$work/p_us"
: >"$work/o_rate"
: >"$work/o_us"
i=0
while [ "$i" -lt "$runs" ]; do
	i=$((i + 1))
	out=$work/persistent.$i
	mod="{\"name\":\"noop\",\"argv\":[\"$noop\"],\"persistent\":true,\"concurrency\":$conc}"
	timeout 300 "$modrun" --events none --tasks "$tasks" --parallel 4096 \
		--module-json "$mod" --task-json '{"params":{}}' >"$out" 2>"$out.err" ||
		die "persistent run $i failed: $(tail -3 "$out.err")"
	check "$out" "$tasks" || die "persistent run $i: not every task completed"
	rate=$(field "$out" tasks_per_s)
	us=$(field "$out" supervisor_us_per_task)
	printf '%.0f\n' "$rate" >>"$work/p_rate"
	printf '%.3f\n' "$us" >>"$work/p_us"
	say "run $i persistent: $(printf '%.0f' "$rate") tasks/s, $(printf '%.3f' "$us") us/task"

	out=$work/oneshot.$i
	mod="{\"name\":\"noop-oneshot\",\"argv\":[\"$noop\"],\"concurrency\":$oneshot_conc}"
	timeout 300 "$modrun" --events none --tasks "$spawns" --workdir "$work/wd" \
		--module-json "$mod" --task-json '{}' >"$out" 2>"$out.err" ||
		die "one-shot run $i failed: $(tail -3 "$out.err")"
	check "$out" "$spawns" || die "one-shot run $i: not every task completed"
	rate=$(field "$out" tasks_per_s)
	us=$(field "$out" supervisor_us_per_task)
	printf '%.0f\n' "$rate" >>"$work/o_rate"
	printf '%.3f\n' "$us" >>"$work/o_us"
	say "run $i one-shot: $(printf '%.0f' "$rate") spawns/s, $(printf '%.3f' "$us") us/spawn"
done

echo "persistent_tasks_per_s $(median <"$work/p_rate")"
echo "supervisor_us_per_task $(median <"$work/p_us")"
echo "oneshot_spawns_per_s $(median <"$work/o_rate")"
echo "oneshot_supervisor_us_per_spawn $(median <"$work/o_us")"
