#!/bin/sh
# tests/bench/s3.sh — the s3 store backend (src/store/s3_store.c over
# src/httpc) moving one big object through a local s3rver
# (tests/integration/s3rver.mjs), measured through tests/harness/storecli.
#
# Prints, one line each:
#   s3_put_mb_per_s X        store_put_file() of a BENCH_MB file (SHA-256 pass
#                            plus the streamed PUT), MB = 10^6 bytes
#   s3_get_mb_per_s X        store_get_file() of it back (streamed to a file)
#   s3_put_peak_rss_mb X     VmHWM of the harness after the put
#   s3_get_peak_rss_mb X     VmHWM of the harness after the get
#   s3_baseline_rss_mb X     VmHWM once the store was made, before the op
#   s3_rss_bound ok|EXCEEDED peak <= baseline + 64 MiB for both directions
#   s3_round_trip ok|MISMATCH the bytes came back identical (sha256)
# Not a test: it fails only when it cannot measure.
#
# Environment: STORECLI (default build/release/tests/harness/storecli: an -O2
# build without sanitizers, e.g. CFLAGS='-O2 -g' configure && make
# tests/harness/storecli), BENCH_MB (200), TMPDIR (/tmp). s3rver needs node
# and node_modules (contrib/npm-tools). Everything started is stopped on exit.
set -eu

top=$(cd "$(dirname "$0")/../.." && pwd)
storecli=${STORECLI:-$top/build/release/tests/harness/storecli}
mb=${BENCH_MB:-200}
py=/usr/bin/python3

say() { printf 's3: %s\n' "$*" >&2; }
die() {
	say "$*"
	exit 1
}

[ -x "$storecli" ] || die "no storecli at $storecli (set STORECLI)"
command -v node >/dev/null || die "node is missing"
if nm -an "$storecli" 2>/dev/null | grep -q __asan_init; then
	say "warning: $storecli is an ASan build: its RSS includes ASan's quarantine"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/s3bench.XXXXXX")
pid=
cleanup() {
	if [ -n "$pid" ]; then
		kill "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

# s3rver 5.0.0's continuation tokens use DES: Node 20 has it only in
# OpenSSL's legacy provider (lists, not this benchmark, need it).
mkfifo "$work/ready"
NODE_OPTIONS="${NODE_OPTIONS:-} --openssl-legacy-provider" \
	node "$top/tests/integration/s3rver.mjs" --port 0 --directory "$work/s3" \
	--bucket bench --access-key AKIDBENCH --secret bench-secret \
	>"$work/ready" 2>"$work/s3rver.log" &
pid=$!
port=$(timeout 20 head -n1 "$work/ready" | awk '$1 == "ready" { print $2 }')
[ -n "$port" ] || die "s3rver did not start: $(tail -5 "$work/s3rver.log")"

say "making a ${mb} MB file"
head -c "$((mb * 1000000))" /dev/urandom >"$work/src.bin"
want=$(sha256sum "$work/src.bin" | cut -d' ' -f1)

cli() {
	timeout 600 "$storecli" --endpoint "http://127.0.0.1:$port" --bucket bench \
		--access-key AKIDBENCH --secret bench-secret "$@"
}
cli put big.bin "$work/src.bin" >"$work/put.json" || die "put failed: $(cat "$work/put.json")"
cli get big.bin "$work/dst.bin" >"$work/get.json" || die "get failed: $(cat "$work/get.json")"
got=$(sha256sum "$work/dst.bin" | cut -d' ' -f1)

"$py" - "$work/put.json" "$work/get.json" "$mb" "$want" "$got" <<'EOF'
import json, sys
put, get = (json.load(open(p)) for p in sys.argv[1:3])
mb = float(sys.argv[3])
print(f"s3_put_mb_per_s {mb / (put['elapsed_ms'] / 1000):.1f}")
print(f"s3_get_mb_per_s {mb / (get['elapsed_ms'] / 1000):.1f}")
print(f"s3_put_peak_rss_mb {put['hwm_kb'] / 1024:.1f}")
print(f"s3_get_peak_rss_mb {get['hwm_kb'] / 1024:.1f}")
base = max(put['baseline_hwm_kb'], get['baseline_hwm_kb'])
print(f"s3_baseline_rss_mb {base / 1024:.1f}")
ok = all(r['hwm_kb'] <= r['baseline_hwm_kb'] + 64 * 1024 for r in (put, get))
print(f"s3_rss_bound {'ok' if ok else 'EXCEEDED'}")
print(f"s3_round_trip {'ok' if sys.argv[4] == sys.argv[5] else 'MISMATCH'}")
EOF
