# tests/bench/lib.sh — what the benchmark scripts share; sourced, not run.
# The caller sets -eu, defines die(), and sets PG_BIN, tmp and pgdir (an
# empty directory for the cluster) before calling pg_start.

# Runs a command as the postgres user when we are root.
as_pg() {
	if [ "$(id -u)" = 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

# Polls cmd until it succeeds, for at most $1 tenths of a second.
wait_for() {
	wf_n=$1
	shift
	while ! "$@" 2>/dev/null; do
		wf_n=$((wf_n - 1))
		[ "$wf_n" -gt 0 ] || return 1
		sleep 0.1
	done
}

port_in_use() {
	hex=$(printf '%04X' "$1")
	grep -q ":$hex " /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

free_port() { # start
	p=$1
	while [ "$p" -lt 65000 ]; do
		port_in_use "$p" || {
			echo "$p"
			return 0
		}
		p=$((p + 7))
	done
	return 1
}

# pg_start FIRST_PORT "OPTIONS": a private PostgreSQL 15 cluster in $pgdir
# (unix socket only, extra server OPTIONS like "-c fsync=on") with a
# database "stageline". Sets pgport, pg_started and pm_pid (the postmaster).
pg_start() {
	if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$pgdir"; fi
	pgport=$(free_port "$1") || die "no free port number for the PostgreSQL socket"
	as_pg "$PG_BIN/initdb" -D "$pgdir/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 \
		>"$tmp/initdb.log" 2>&1 || {
		cat "$tmp/initdb.log" >&2
		die "initdb failed"
	}
	as_pg "$PG_BIN/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w -t 30 \
		-o "-k $pgdir -p $pgport -c listen_addresses='' $2" start >/dev/null || {
		cat "$pgdir/log" >&2
		die "PostgreSQL did not start"
	}
	pg_started=1
	psql -h "$pgdir" -p "$pgport" -U postgres -d postgres -XAtqc "CREATE DATABASE stageline" ||
		die "CREATE DATABASE failed"
	pm_pid=$(head -n 1 "$pgdir/data/postmaster.pid")
}

pg_stop() {
	if [ -n "${pg_started:-}" ]; then
		as_pg "$PG_BIN/pg_ctl" -D "$pgdir/data" -m immediate -w stop >/dev/null 2>&1 || true
	fi
}

psql_q() {
	psql -h "$pgdir" -p "$pgport" -U postgres -d stageline -XAtqc "$1"
}

# CPU ticks of the postmaster and its children, reaped ones included (the
# comm field of postgres processes has no blanks, so fields can be counted).
pg_ticks() {
	cat /proc/[0-9]*/stat 2>/dev/null |
		awk -v pm="$pm_pid" '$1 == pm || $4 == pm { s += $14 + $15 + $16 + $17 } END { print s + 0 }'
}
