/* One PostgreSQL connection as a state machine on the libevent loop. libpq
 * runs non-blocking in pipeline mode: every batch is its statements (each
 * preceded by a Parse the first time a named statement is used on this
 * session) and one sync, so the FIFO of batches here mirrors libpq's command
 * queue exactly and results are matched to batches by position. Results are
 * held until the batch's sync arrives, because only then is it known whether
 * the implicit transaction committed. Everything that reaches user code goes
 * through the loop callbacks below, which bracket their work with enter/leave:
 * a pg_conn_free() from inside a callback only marks the conn, and the memory
 * goes when the outermost callback returns (redis' "close asynchronously"). */
#include "db/pg.h"

#include <ctype.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/time.h>

#include "core/buf.h"
#include "core/clock.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/trace.h"
#include "core/redact.h"
#include "core/xmalloc.h"

#define PG_DEFAULT_RECONNECT_MIN_MS 100
#define PG_DEFAULT_RECONNECT_MAX_MS 5000
#define PG_DEFAULT_CONNECT_TIMEOUT_MS 5000
#define PG_MAX_PARAMS 65535
#define PG_MAX_NAME 63 /* NAMEDATALEN - 1: longer names are truncated by the server */
#define PG_NO_FAILURE ((size_t)-1)

struct pg_prep {
	char *name;
	char *sql;
	int nparams;
	Oid *types;
	uint64_t gen; /* the session it was sent on; 0 = not prepared */
};

struct pg_query_stmt {
	pg_result_cb cb;
	void *arg;
	PGresult *res; /* held until the batch's sync */
	struct pg_prep *prep; /* named statement, or NULL */
	bool prep_sent; /* a Parse went out just before it */
};

struct pg_query {
	TAILQ_ENTRY(pg_query) entry;
	int64_t start_us; /* submission, for db.query_latency_ms */
	struct trace_span *span;
	int64_t deadline_us; /* 0 = no timeout */
	bool cancelled;
	bool timed_out;
	/* Receive cursor: the item the next PQgetResult belongs to. */
	size_t cur; /* statement index; n = the sync */
	bool at_prep; /* cur's Parse, before its execution */
	bool seen; /* a result arrived for the current item (a NULL ends it) */
	/* The first failure: a statement index, n for the commit, or
	 * PG_NO_FAILURE. Never-sent batches carry fail_kind and fail_msg only. */
	size_t fail_at;
	enum pg_error_kind fail_kind;
	char fail_state[6];
	char *fail_msg;
	PGresult *fail_res;
	size_t n;
	struct pg_query_stmt stmts[];
};

TAILQ_HEAD(pg_query_list, pg_query);

struct pg_conn {
	struct event_base *base;
	char *name;
	char *conninfo;
	char *password; /* from conninfo, only to mask it in error text */
	struct pg_conn_opts opts;
	enum pg_conn_state state;
	PGconn *pg;
	uint64_t gen; /* session number: bumps on every successful connect */
	unsigned failures; /* failed connects in a row */
	int64_t connect_start_us;

	struct event *io_ev; /* connect phase: one-shot, re-created after every poll */
	struct event *read_ev; /* connected: persistent */
	struct event *write_ev; /* connected: armed while libpq has unsent output */
	struct event *timer_ev; /* backoff in DISCONNECTED, connect timeout in CONNECTING */
	struct event *qtimer_ev; /* the oldest batch's query timeout */
	struct event *defer_ev; /* delivers never-sent batches and a deferred drop */
	bool write_armed;

	struct pg_query_list queue; /* sent, in pipeline order */
	size_t nqueue;
	struct pg_query_list failed; /* never sent, waiting for defer_ev */
	struct pg_query_list failing; /* never sent, being delivered now */

	struct pg_prep **preps;
	size_t npreps;

	char *last_error;
	char *server_fatal; /* a FATAL the server sent before closing */
	char *broken_msg; /* a send failed inside an API call: drop from the loop */
	bool broken;

	int depth; /* loop callbacks of this conn on the stack */
	bool free_pending;
	bool constructing;
};

#define PG_LF_NAME(c) LF_STR("name", (c)->name)

static const char *const pg_state_names[] = {
        [PG_CONN_DISCONNECTED] = "disconnected",
        [PG_CONN_CONNECTING] = "connecting",
        [PG_CONN_READY] = "ready",
        [PG_CONN_BUSY] = "busy",
        [PG_CONN_CLOSED] = "closed",
};

#define PG_NSTATES (PG_CONN_CLOSED + 1)

static const bool pg_state_edges[PG_NSTATES][PG_NSTATES] = {
        [PG_CONN_DISCONNECTED] = {[PG_CONN_CONNECTING] = true, [PG_CONN_CLOSED] = true},
        [PG_CONN_CONNECTING] =
                {[PG_CONN_READY] = true, [PG_CONN_DISCONNECTED] = true, [PG_CONN_CLOSED] = true},
        [PG_CONN_READY] =
                {[PG_CONN_BUSY] = true, [PG_CONN_DISCONNECTED] = true, [PG_CONN_CLOSED] = true},
        [PG_CONN_BUSY] =
                {[PG_CONN_READY] = true, [PG_CONN_DISCONNECTED] = true, [PG_CONN_CLOSED] = true},
};

const char *pg_conn_state_name(enum pg_conn_state state)
{
	if ((unsigned)state < PG_NSTATES)
		return pg_state_names[state];
	return "unknown";
}

bool pg_conn_state_allowed(enum pg_conn_state from, enum pg_conn_state to)
{
	if ((unsigned)from >= PG_NSTATES || (unsigned)to >= PG_NSTATES)
		return false;
	return pg_state_edges[from][to];
}

unsigned pg_conn_backoff_ms(unsigned min_ms, unsigned max_ms, unsigned attempt, uint32_t rnd)
{
	if (max_ms < min_ms)
		max_ms = min_ms;
	uint64_t ceil = min_ms ? min_ms : 1;
	for (unsigned i = 0; i <= attempt && ceil < max_ms; i++)
		ceil *= 2;
	if (ceil > max_ms)
		ceil = max_ms;
	if (ceil <= min_ms)
		return min_ms;
	return min_ms + (unsigned)(rnd % (ceil - min_ms + 1));
}

/* Masks every copy of the conninfo's password, then folds libpq's
 * multi-line messages ("...failed: ...\n\tIs the server running...") into one
 * line. */
static char *pg_conn_clean_msg(const struct pg_conn *c, const char *msg)
{
	struct buf masked = BUF_INIT;
	const char *p = msg ? msg : "";
	size_t plen = c->password ? strlen(c->password) : 0;
	if (plen > 0) {
		const char *hit;
		while ((hit = strstr(p, c->password)) != NULL) {
			buf_add(&masked, p, (size_t)(hit - p));
			buf_adds(&masked, REDACT_MASK);
			p = hit + plen;
		}
	}
	buf_adds(&masked, p);

	struct buf out = BUF_INIT;
	bool space = false;
	for (const char *s = masked.data; *s; s++) {
		if (isspace((unsigned char)*s)) {
			space = out.len > 0;
			continue;
		}
		if (space)
			buf_addc(&out, ' ');
		space = false;
		buf_addc(&out, *s);
	}
	buf_free(&masked);
	return buf_steal(&out);
}

/* libpq's conninfo parse errors quote pieces of the string, which may be a
 * password: mask everything inside quotes. */
static char *pg_conninfo_clean_msg(const char *msg)
{
	struct buf out = BUF_INIT;
	bool quoted = false;
	for (const char *s = msg; *s; s++) {
		if (*s == '"') {
			buf_addc(&out, '"');
			if (!quoted)
				buf_adds(&out, REDACT_MASK);
			quoted = !quoted;
		} else if (!quoted && *s != '\n') {
			buf_addc(&out, *s);
		}
	}
	return buf_steal(&out);
}

static void pg_conn_set_error(struct pg_conn *c, const char *msg)
{
	char *clean = pg_conn_clean_msg(c, msg);
	free(c->last_error);
	c->last_error = clean;
}

/* Every transition goes through here. on_state hears the up/down ones, not
 * READY <-> BUSY (one per query) and never during pg_conn_new() or free.
 * Returns false when the conn was freed meanwhile: the caller stops. */
static bool pg_conn_set_state(struct pg_conn *c, enum pg_conn_state to)
{
	if (c->free_pending && to != PG_CONN_CLOSED)
		return false;
	enum pg_conn_state from = c->state;
	if (from == to)
		return true;
	if (!pg_conn_state_allowed(from, to))
		log_error("db.conn.state", "invalid state transition", PG_LF_NAME(c),
		          LF_STR("from", pg_conn_state_name(from)),
		          LF_STR("to", pg_conn_state_name(to)));
	c->state = to;
	/* db.connections{state}: up (ready or busy), connecting, down. */
	static const char *const gauge_state[] = {
	        [PG_CONN_DISCONNECTED] = "down", [PG_CONN_CONNECTING] = "connecting",
	        [PG_CONN_READY] = "up",          [PG_CONN_BUSY] = "up",
	        [PG_CONN_CLOSED] = NULL,
	};
	struct metric *gauge = metrics_default_get(M_DB_CONNECTIONS);
	if (gauge_state[from] != gauge_state[to]) {
		if (gauge_state[from])
			metric_dec(gauge, 1, gauge_state[from]);
		if (gauge_state[to])
			metric_inc(gauge, 1, gauge_state[to]);
	}
	log_debug("db.conn.state", "state change", PG_LF_NAME(c),
	          LF_STR("from", pg_conn_state_name(from)), LF_STR("to", pg_conn_state_name(to)));
	bool quiet = c->constructing || to == PG_CONN_CLOSED ||
	             (from == PG_CONN_READY && to == PG_CONN_BUSY) ||
	             (from == PG_CONN_BUSY && to == PG_CONN_READY);
	if (!quiet && c->opts.on_state)
		c->opts.on_state(c, to, c->opts.arg);
	return !c->free_pending;
}

static void pg_query_free(struct pg_query *q)
{
	trace_span_end(q->span, q->fail_at != PG_NO_FAILURE || q->fail_msg ? "failed" : NULL);
	for (size_t i = 0; i < q->n; i++)
		PQclear(q->stmts[i].res);
	PQclear(q->fail_res);
	free(q->fail_msg);
	free(q);
}

static void pg_query_list_free(struct pg_query_list *l)
{
	struct pg_query *q;
	while ((q = TAILQ_FIRST(l)) != NULL) {
		TAILQ_REMOVE(l, q, entry);
		pg_query_free(q);
	}
}

/* Calls statement i's callback unless the batch or the conn went away; res
 * is cleared unless the callback keeps it. False when the conn was freed. */
static const char *const pg_error_kind_names[] = {
        [PG_ERR_QUERY] = "query",
        [PG_ERR_ABORTED] = "aborted",
        [PG_ERR_CONN_LOST] = "conn_lost",
        [PG_ERR_TIMEOUT] = "timeout",
        [PG_ERR_UNAVAILABLE] = "unavailable",
        [PG_ERR_USAGE] = "usage",
        [PG_ERR_POOL_FULL] = "pool_full",
};

/* db.* metrics, one observation per statement. op is the prepared
 * statement's name, or the conn's name for ad-hoc SQL: both are bounded. */
static void pg_query_count(struct pg_conn *c, struct pg_query *q, size_t i,
                           const struct pg_error *err)
{
	const struct pg_query_stmt *s = &q->stmts[i];
	const char *op = s->prep ? s->prep->name : c->name;
	const char *outcome = err ? pg_error_kind_names[err->kind] : "ok";
	metric_inc(metrics_default_get(M_DB_QUERIES_TOTAL), 1, op, outcome);
	if (err)
		metric_inc(metrics_default_get(M_DB_ERRORS_TOTAL), 1, outcome);
	if (q->start_us)
		metric_observe(metrics_default_get(M_DB_QUERY_LATENCY_MS),
		               (double)(clock_mono_us() - q->start_us) / 1000.0, op);
}

static bool pg_query_deliver(struct pg_conn *c, struct pg_query *q, size_t i, PGresult *res,
                             const struct pg_error *err)
{
	struct pg_query_stmt *s = &q->stmts[i];
	bool keep = false;
	pg_query_count(c, q, i, err);
	if (!q->cancelled && !c->free_pending && s->cb)
		keep = s->cb(res, err, s->arg);
	if (res && !keep)
		PQclear(res);
	return !c->free_pending;
}

/* The same error to every statement of a batch that never completed. */
static bool pg_query_deliver_all(struct pg_conn *c, struct pg_query *q, const struct pg_error *err)
{
	for (size_t i = 0; i < q->n; i++)
		if (!pg_query_deliver(c, q, i, NULL, err))
			return false;
	return true;
}

static void pg_conn_close_socket(struct pg_conn *c)
{
	if (c->io_ev) {
		event_free(c->io_ev);
		c->io_ev = NULL;
	}
	if (c->read_ev) {
		event_free(c->read_ev);
		c->read_ev = NULL;
	}
	if (c->write_ev) {
		event_free(c->write_ev);
		c->write_ev = NULL;
	}
	c->write_armed = false;
	if (c->pg) {
		PQfinish(c->pg);
		c->pg = NULL;
	}
}

static void pg_conn_destroy(struct pg_conn *c)
{
	pg_query_list_free(&c->queue);
	pg_query_list_free(&c->failed);
	pg_query_list_free(&c->failing);
	pg_conn_close_socket(c);
	event_free(c->timer_ev);
	event_free(c->qtimer_ev);
	event_free(c->defer_ev);
	for (size_t i = 0; i < c->npreps; i++) {
		free(c->preps[i]->name);
		free(c->preps[i]->sql);
		free(c->preps[i]->types);
		free(c->preps[i]);
	}
	free(c->preps);
	explicit_bzero(c->conninfo, strlen(c->conninfo));
	free(c->conninfo);
	if (c->password) {
		explicit_bzero(c->password, strlen(c->password));
		free(c->password);
	}
	free(c->name);
	free(c->last_error);
	free(c->server_fatal);
	free(c->broken_msg);
	free(c);
}

static void pg_conn_enter(struct pg_conn *c)
{
	c->depth++;
}

static void pg_conn_leave(struct pg_conn *c)
{
	if (--c->depth == 0 && c->free_pending)
		pg_conn_destroy(c);
}

static void pg_conn_add_timer(struct event *ev, int64_t us)
{
	if (us < 0)
		us = 0;
	struct timeval tv = {.tv_sec = (time_t)(us / 1000000),
	                     .tv_usec = (suseconds_t)(us % 1000000)};
	evtimer_add(ev, &tv);
}

/* The first retry after a drop comes after backoff(0); each failed connect
 * in a row moves one step up the curve. */
static void pg_conn_schedule_retry(struct pg_conn *c)
{
	uint32_t rnd;
	id_random(&rnd, sizeof rnd);
	unsigned delay = pg_conn_backoff_ms(c->opts.reconnect_min_ms, c->opts.reconnect_max_ms,
	                                    c->failures, rnd);
	pg_conn_add_timer(c->timer_ev, (int64_t)delay * 1000);
	log_debug("db.conn.retry", "reconnect scheduled", PG_LF_NAME(c),
	          LF_UINT("failures", c->failures), LF_UINT("retry_ms", delay));
}

static void pg_conn_connect_failed(struct pg_conn *c, const char *why)
{
	pg_conn_set_error(c, why);
	pg_conn_close_socket(c);
	evtimer_del(c->timer_ev);
	if (c->failures < 64)
		c->failures++;
	pg_conn_schedule_retry(c);
	log_warn("db.conn.failed", "connect failed", PG_LF_NAME(c), LF_STR("error", c->last_error),
	         LF_UINT("attempt", c->failures),
	         LF_INT("ms", (clock_mono_us() - c->connect_start_us) / 1000));
	(void)pg_conn_set_state(c, PG_CONN_DISCONNECTED);
}

static void pg_conn_io_cb(evutil_socket_t fd, short what, void *arg);
static void pg_conn_read_cb(evutil_socket_t fd, short what, void *arg);
static void pg_conn_write_cb(evutil_socket_t fd, short what, void *arg);

/* The socket can change during connect (another host, a retry without SSL),
 * so the event is made anew after every poll. */
static bool pg_conn_arm_io(struct pg_conn *c, short what)
{
	if (c->io_ev)
		event_free(c->io_ev);
	c->io_ev = NULL;
	int fd = PQsocket(c->pg);
	if (fd < 0)
		return false;
	c->io_ev = event_new(c->base, fd, what, pg_conn_io_cb, c);
	return c->io_ev && event_add(c->io_ev, NULL) == 0;
}

static void pg_conn_connected(struct pg_conn *c)
{
	event_free(c->io_ev);
	c->io_ev = NULL;
	evtimer_del(c->timer_ev);
	if (PQsetnonblocking(c->pg, 1) != 0 || !PQenterPipelineMode(c->pg)) {
		pg_conn_connect_failed(c, PQerrorMessage(c->pg));
		return;
	}
	int fd = PQsocket(c->pg);
	c->read_ev = event_new(c->base, fd, EV_READ | EV_PERSIST, pg_conn_read_cb, c);
	c->write_ev = event_new(c->base, fd, EV_WRITE | EV_PERSIST, pg_conn_write_cb, c);
	if (!c->read_ev || !c->write_ev || event_add(c->read_ev, NULL) != 0) {
		pg_conn_connect_failed(c, "cannot watch the connection's socket");
		return;
	}
	c->gen++;
	c->failures = 0;
	free(c->server_fatal);
	c->server_fatal = NULL;
	log_info("db.conn.connected", "connected", PG_LF_NAME(c),
	         LF_INT("ms", (clock_mono_us() - c->connect_start_us) / 1000),
	         LF_STR("host", PQhost(c->pg)), LF_STR("port", PQport(c->pg)),
	         LF_STR("dbname", PQdb(c->pg)), LF_INT("server_version", PQserverVersion(c->pg)),
	         LF_INT("backend_pid", PQbackendPID(c->pg)));
	(void)pg_conn_set_state(c, PG_CONN_READY);
}

static void pg_conn_poll(struct pg_conn *c)
{
	switch (PQconnectPoll(c->pg)) {
	case PGRES_POLLING_READING:
		if (!pg_conn_arm_io(c, EV_READ))
			pg_conn_connect_failed(c, "cannot watch the connection's socket");
		return;
	case PGRES_POLLING_WRITING:
		if (!pg_conn_arm_io(c, EV_WRITE))
			pg_conn_connect_failed(c, "cannot watch the connection's socket");
		return;
	case PGRES_POLLING_OK: pg_conn_connected(c); return;
	default: pg_conn_connect_failed(c, PQerrorMessage(c->pg)); return;
	}
}

static void pg_conn_io_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct pg_conn *c = arg;
	pg_conn_enter(c);
	pg_conn_poll(c);
	pg_conn_leave(c);
}

/* Notices go to the debug log instead of libpq's stderr printer. A FATAL is
 * the server saying why it is about to close: keep it for the drop message. */
static void pg_conn_notice_cb(void *arg, const PGresult *res)
{
	struct pg_conn *c = arg;
	const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	if (!msg)
		msg = PQresultErrorMessage(res);
	if (sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0)) {
		free(c->server_fatal);
		c->server_fatal = pg_conn_clean_msg(c, msg);
	}
	log_debug("db.conn.notice", msg, PG_LF_NAME(c), LF_STR("severity", sev ? sev : ""),
	          LF_STR("sqlstate", state ? state : ""));
}

static void pg_conn_connect(struct pg_conn *c)
{
	c->connect_start_us = clock_mono_us();
	c->pg = PQconnectStart(c->conninfo);
	if (!c->pg)
		abort(); /* libpq only returns NULL when it cannot allocate the PGconn */
	PQsetNoticeReceiver(c->pg, pg_conn_notice_cb, c);
	if (!pg_conn_set_state(c, PG_CONN_CONNECTING))
		return;
	if (PQstatus(c->pg) == CONNECTION_BAD) {
		pg_conn_connect_failed(c, PQerrorMessage(c->pg));
		return;
	}
	pg_conn_add_timer(c->timer_ev, (int64_t)c->opts.connect_timeout_ms * 1000);
	if (!pg_conn_arm_io(c, EV_WRITE))
		pg_conn_connect_failed(c, "cannot watch the connection's socket");
}

/* Backoff expired (DISCONNECTED) or the connect attempt took too long. */
static void pg_conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct pg_conn *c = arg;
	pg_conn_enter(c);
	if (c->state == PG_CONN_DISCONNECTED) {
		pg_conn_connect(c);
	} else if (c->state == PG_CONN_CONNECTING) {
		char msg[64];
		snprintf(msg, sizeof msg, "connect timeout after %u ms",
		         c->opts.connect_timeout_ms);
		pg_conn_connect_failed(c, msg);
	}
	pg_conn_leave(c);
}

static void pg_conn_arm_qtimer(struct pg_conn *c)
{
	if (!c->opts.query_timeout_ms)
		return;
	struct pg_query *q = TAILQ_FIRST(&c->queue);
	if (!q)
		evtimer_del(c->qtimer_ev);
	else
		pg_conn_add_timer(c->qtimer_ev, q->deadline_us - clock_mono_us());
}

/* Pushes libpq's output and keeps EV_WRITE armed while some is left.
 * Returns PQflush's answer: 0 all sent, 1 more to send, -1 failure. */
static int pg_conn_flush(struct pg_conn *c)
{
	int r = PQflush(c->pg);
	if (r == 1 && !c->write_armed) {
		event_add(c->write_ev, NULL);
		c->write_armed = true;
	} else if (r != 1 && c->write_armed) {
		event_del(c->write_ev);
		c->write_armed = false;
	}
	return r;
}

/* The connection is gone (or is being reset): close it, fail every batch in
 * flight, and schedule the reconnect. */
static void pg_conn_lost(struct pg_conn *c, const char *why)
{
	pg_conn_set_error(c, c->server_fatal ? c->server_fatal : why);
	log_warn("db.conn.lost", "connection lost", PG_LF_NAME(c), LF_STR("error", c->last_error),
	         LF_UINT("pending", c->nqueue));
	pg_conn_close_socket(c);
	c->broken = false;
	free(c->broken_msg);
	c->broken_msg = NULL;
	evtimer_del(c->qtimer_ev);
	pg_conn_schedule_retry(c);
	if (!pg_conn_set_state(c, PG_CONN_DISCONNECTED))
		return;

	char *lost = xasprintf("connection lost: %s", c->last_error);
	char *timeout =
	        xasprintf("query timeout after %u ms (connection reset)", c->opts.query_timeout_ms);
	struct pg_query *q;
	while ((q = TAILQ_FIRST(&c->queue)) != NULL) {
		struct pg_error err = {
		        .kind = q->timed_out ? PG_ERR_TIMEOUT : PG_ERR_CONN_LOST,
		        .sqlstate = "",
		        .message = q->timed_out ? timeout : lost,
		};
		if (!pg_query_deliver_all(c, q, &err))
			break;
		TAILQ_REMOVE(&c->queue, q, entry);
		c->nqueue--;
		pg_query_free(q);
	}
	free(lost);
	free(timeout);
}

/* Records a failed item of q; the first failure is the one reported. */
static void pg_query_fail(struct pg_conn *c, struct pg_query *q, size_t at, PGresult *res)
{
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
	const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
	if (!msg)
		msg = PQresultErrorMessage(res);
	if (sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0)) {
		free(c->server_fatal);
		c->server_fatal = pg_conn_clean_msg(c, msg);
	}
	/* A statement that is not (or no longer) prepared on this session is
	 * prepared again the next time it is used. */
	if (at < q->n && q->stmts[at].prep &&
	    (q->at_prep || (state && strcmp(state, "26000") == 0)))
		q->stmts[at].prep->gen = 0;
	log_debug("db.query.error", msg, PG_LF_NAME(c), LF_STR("sqlstate", state ? state : ""),
	          LF_UINT("statement", at + 1), LF_UINT("statements", q->n));
	if (q->fail_at != PG_NO_FAILURE) {
		PQclear(res);
		return;
	}
	q->fail_at = at;
	q->fail_res = res;
	snprintf(q->fail_state, sizeof q->fail_state, "%s", state ? state : "");
	q->fail_msg = pg_conn_clean_msg(c, msg);
}

enum pg_take { PG_TAKE_MORE, PG_TAKE_DONE, PG_TAKE_DESYNC };

/* Files one PQgetResult answer under the head batch q. In pipeline mode each
 * statement (and each Parse) gives its result and then a NULL; the sync gives
 * PGRES_PIPELINE_SYNC and no NULL, unless the commit failed, in which case a
 * PGRES_FATAL_ERROR and a NULL come first. */
static enum pg_take pg_query_take(struct pg_conn *c, struct pg_query *q, PGresult *res)
{
	if (q->cur == q->n) {
		if (!res) {
			if (!q->seen)
				return PG_TAKE_DESYNC;
			q->seen = false;
			return PG_TAKE_MORE;
		}
		q->seen = true;
		switch (PQresultStatus(res)) {
		case PGRES_PIPELINE_SYNC: PQclear(res); return PG_TAKE_DONE;
		case PGRES_FATAL_ERROR: pg_query_fail(c, q, q->n, res); return PG_TAKE_MORE;
		default: PQclear(res); return PG_TAKE_DESYNC;
		}
	}
	if (!res) {
		q->seen = false;
		if (q->at_prep) {
			q->at_prep = false;
		} else {
			q->cur++;
			q->at_prep = q->cur < q->n && q->stmts[q->cur].prep_sent;
		}
		return PG_TAKE_MORE;
	}
	q->seen = true;
	switch (PQresultStatus(res)) {
	case PGRES_TUPLES_OK:
	case PGRES_COMMAND_OK:
	case PGRES_EMPTY_QUERY:
		if (!q->at_prep && !q->stmts[q->cur].res)
			q->stmts[q->cur].res = res;
		else
			PQclear(res);
		return PG_TAKE_MORE;
	case PGRES_PIPELINE_ABORTED: PQclear(res); return PG_TAKE_MORE;
	case PGRES_FATAL_ERROR:
	case PGRES_NONFATAL_ERROR:
	case PGRES_BAD_RESPONSE: pg_query_fail(c, q, q->cur, res); return PG_TAKE_MORE;
	default: /* a sync too early, COPY (not possible in a pipeline), single-row */
		PQclear(res);
		return PG_TAKE_DESYNC;
	}
}

/* The head batch's sync arrived: hand out its results, then drop it. False
 * when the conn was freed by a callback. */
static bool pg_conn_complete(struct pg_conn *c, struct pg_query *q)
{
	for (size_t i = 0; i < q->n; i++) {
		PGresult *res = q->stmts[i].res;
		q->stmts[i].res = NULL;
		bool alive;
		if (q->fail_at == PG_NO_FAILURE) {
			struct pg_error none = {
			        .kind = PG_ERR_QUERY, .sqlstate = "", .message = "no result"};
			alive = pg_query_deliver(c, q, i, res, res ? NULL : &none);
		} else {
			PQclear(res);
			struct pg_error err = {.kind = PG_ERR_QUERY,
			                       .sqlstate = q->fail_state,
			                       .message = q->fail_msg,
			                       .detail = q->fail_res};
			char *msg = NULL;
			if (i != q->fail_at && q->fail_at != q->n) {
				msg = xasprintf("%s: statement %zu of the batch failed: %s",
				                i < q->fail_at ? "rolled back" : "not run",
				                q->fail_at + 1, q->fail_msg);
				err = (struct pg_error){
				        .kind = PG_ERR_ABORTED, .sqlstate = "", .message = msg};
			}
			alive = pg_query_deliver(c, q, i, NULL, &err);
			free(msg);
		}
		if (!alive)
			return false;
	}
	TAILQ_REMOVE(&c->queue, q, entry);
	c->nqueue--;
	pg_query_free(q);
	return true;
}

/* Reads every complete result and notification. False when the conn was
 * freed or dropped meanwhile. */
static bool pg_conn_drain(struct pg_conn *c)
{
	bool completed = false;
	struct pg_query *q;
	while ((q = TAILQ_FIRST(&c->queue)) != NULL) {
		if (c->broken) {
			pg_conn_lost(c, c->broken_msg);
			return false;
		}
		if (PQstatus(c->pg) == CONNECTION_BAD) {
			pg_conn_lost(c, PQerrorMessage(c->pg));
			return false;
		}
		if (PQisBusy(c->pg))
			break;
		switch (pg_query_take(c, q, PQgetResult(c->pg))) {
		case PG_TAKE_MORE: break;
		case PG_TAKE_DONE:
			completed = true;
			if (!pg_conn_complete(c, q))
				return false;
			break;
		case PG_TAKE_DESYNC:
			pg_conn_lost(c, "unexpected result order (pipeline out of sync)");
			return false;
		}
	}
	if (TAILQ_EMPTY(&c->queue) && c->state == PG_CONN_BUSY)
		(void)pg_conn_set_state(c, PG_CONN_READY);
	if (completed)
		pg_conn_arm_qtimer(c);

	PGnotify *n;
	while ((n = PQnotifies(c->pg)) != NULL) {
		if (c->opts.on_notify)
			c->opts.on_notify(c, n->relname, n->extra, n->be_pid, c->opts.arg);
		PQfreemem(n);
		if (c->free_pending)
			return false;
	}
	if (c->broken || PQstatus(c->pg) == CONNECTION_BAD) {
		pg_conn_lost(c, c->broken ? c->broken_msg : PQerrorMessage(c->pg));
		return false;
	}
	return true;
}

static void pg_conn_read_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct pg_conn *c = arg;
	pg_conn_enter(c);
	if (!PQconsumeInput(c->pg))
		pg_conn_lost(c, PQerrorMessage(c->pg));
	else if (pg_conn_drain(c) && c->write_armed && pg_conn_flush(c) < 0)
		pg_conn_lost(c, PQerrorMessage(c->pg));
	pg_conn_leave(c);
}

static void pg_conn_write_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct pg_conn *c = arg;
	pg_conn_enter(c);
	if (c->broken)
		pg_conn_lost(c, c->broken_msg);
	else if (pg_conn_flush(c) < 0)
		pg_conn_lost(c, PQerrorMessage(c->pg));
	pg_conn_leave(c);
}

/* Never-sent batches get their error here, on the next loop pass, so no
 * callback fires from inside a pg_conn_* call. A batch submitted by one of
 * these callbacks waits for the next pass. */
static void pg_conn_defer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct pg_conn *c = arg;
	pg_conn_enter(c);
	if (c->broken && c->pg)
		pg_conn_lost(c, c->broken_msg);
	TAILQ_CONCAT(&c->failing, &c->failed, entry);
	struct pg_query *q;
	while (!c->free_pending && (q = TAILQ_FIRST(&c->failing)) != NULL) {
		struct pg_error err = {
		        .kind = q->fail_kind, .sqlstate = "", .message = q->fail_msg};
		if (!pg_query_deliver_all(c, q, &err))
			break;
		TAILQ_REMOVE(&c->failing, q, entry);
		pg_query_free(q);
	}
	pg_conn_leave(c);
}

/* A send failed inside an API call: drop the connection from the loop. */
static void pg_conn_break(struct pg_conn *c, const char *why)
{
	if (!c->broken) {
		c->broken = true;
		c->broken_msg = pg_conn_clean_msg(c, why);
	}
	event_active(c->defer_ev, EV_TIMEOUT, 1);
}

static struct pg_query *pg_conn_reject(struct pg_conn *c, struct pg_query *q,
                                       enum pg_error_kind kind, char *msg)
{
	q->fail_kind = kind;
	q->fail_msg = msg;
	TAILQ_INSERT_TAIL(&c->failed, q, entry);
	event_active(c->defer_ev, EV_TIMEOUT, 1);
	return q;
}

static struct pg_prep *pg_conn_find_prep(const struct pg_conn *c, const char *name)
{
	for (size_t i = 0; i < c->npreps; i++)
		if (strcmp(c->preps[i]->name, name) == 0)
			return c->preps[i];
	return NULL;
}

/* Resolves named statements; returns why the batch can't be sent, or NULL. */
static char *pg_query_check(const struct pg_conn *c, struct pg_query *q, const struct pg_stmt *st)
{
	for (size_t i = 0; i < q->n; i++) {
		if (st[i].nparams < 0 || st[i].nparams > PG_MAX_PARAMS ||
		    (st[i].nparams > 0 && !st[i].values))
			return xasprintf("statement %zu: bad parameter count %d", i + 1,
			                 st[i].nparams);
		if (st[i].name) {
			q->stmts[i].prep = pg_conn_find_prep(c, st[i].name);
			if (!q->stmts[i].prep)
				return xasprintf("statement %zu: no prepared statement \"%s\"",
				                 i + 1, st[i].name);
		} else if (!st[i].sql) {
			return xasprintf("statement %zu: no SQL", i + 1);
		}
	}
	return NULL;
}

static bool pg_conn_send_stmt(struct pg_conn *c, struct pg_query_stmt *s, const struct pg_stmt *st)
{
	struct pg_prep *p = s->prep;
	if (!p)
		return PQsendQueryParams(c->pg, st->sql, st->nparams, NULL, st->values, st->lengths,
		                         st->formats, st->result_format) == 1;
	if (p->gen != c->gen) {
		if (PQsendPrepare(c->pg, p->name, p->sql, p->nparams, p->types) != 1)
			return false;
		p->gen = c->gen;
		s->prep_sent = true;
	}
	return PQsendQueryPrepared(c->pg, p->name, st->nparams, st->values, st->lengths,
	                           st->formats, st->result_format) == 1;
}

struct pg_query *pg_conn_batch(struct pg_conn *c, const struct pg_stmt *stmts, size_t n)
{
	if (n == 0)
		return NULL;
	if (n > (SIZE_MAX - sizeof(struct pg_query)) / sizeof(struct pg_query_stmt))
		abort();
	struct pg_query *q = xcalloc(1, sizeof *q + n * sizeof q->stmts[0]);
	q->n = n;
	q->start_us = clock_mono_us();
	q->span = trace_start("db.batch", NULL, TA_STR("db.conn", c->name),
	                      TA_STR("op", stmts[0].name ? stmts[0].name : "sql"),
	                      TA_INT("statements", (int64_t)n));
	q->fail_at = PG_NO_FAILURE;
	for (size_t i = 0; i < n; i++) {
		q->stmts[i].cb = stmts[i].cb;
		q->stmts[i].arg = stmts[i].arg;
	}
	char *usage = pg_query_check(c, q, stmts);
	if (usage)
		return pg_conn_reject(c, q, PG_ERR_USAGE, usage);
	if (!pg_conn_is_ready(c))
		return pg_conn_reject(c, q, PG_ERR_UNAVAILABLE,
		                      *pg_conn_last_error(c)
		                              ? xasprintf("database unavailable: %s", c->last_error)
		                              : xstrdup("database unavailable"));

	bool sent = true;
	for (size_t i = 0; i < n && sent; i++)
		sent = pg_conn_send_stmt(c, &q->stmts[i], &stmts[i]);
	sent = sent && PQpipelineSync(c->pg) == 1;
	q->at_prep = q->stmts[0].prep_sent;
	if (c->opts.query_timeout_ms)
		q->deadline_us = clock_mono_us() + (int64_t)c->opts.query_timeout_ms * 1000;
	/* Even a half-sent batch joins the queue: the drop fails it with the rest. */
	TAILQ_INSERT_TAIL(&c->queue, q, entry);
	if (++c->nqueue == 1)
		pg_conn_arm_qtimer(c);
	if (c->state == PG_CONN_READY)
		(void)pg_conn_set_state(c, PG_CONN_BUSY);
	if (!sent || pg_conn_flush(c) < 0)
		pg_conn_break(c, PQerrorMessage(c->pg));
	return q;
}

struct pg_query *pg_conn_query(struct pg_conn *c, const char *sql, int nparams,
                               const char *const *values, pg_result_cb cb, void *arg)
{
	struct pg_stmt st = {
	        .sql = sql, .nparams = nparams, .values = values, .cb = cb, .arg = arg};
	return pg_conn_batch(c, &st, 1);
}

struct pg_query *pg_conn_query_prepared(struct pg_conn *c, const char *name, int nparams,
                                        const char *const *values, pg_result_cb cb, void *arg)
{
	struct pg_stmt st = {
	        .name = name, .nparams = nparams, .values = values, .cb = cb, .arg = arg};
	return pg_conn_batch(c, &st, 1);
}

void pg_query_cancel(struct pg_query *q)
{
	if (q)
		q->cancelled = true;
}

bool pg_conn_prepare(struct pg_conn *c, const char *name, const char *sql, int nparams,
                     const Oid *param_types)
{
	if (!name || !*name || strlen(name) > PG_MAX_NAME || !sql || nparams < 0 ||
	    nparams > PG_MAX_PARAMS)
		return false;
	size_t tsize = (size_t)nparams * sizeof(Oid);
	struct pg_prep *p = pg_conn_find_prep(c, name);
	if (p)
		return strcmp(p->sql, sql) == 0 && p->nparams == nparams &&
		       (param_types ? p->types && memcmp(p->types, param_types, tsize) == 0
		                    : !p->types);
	p = xcalloc(1, sizeof *p);
	p->name = xstrdup(name);
	p->sql = xstrdup(sql);
	p->nparams = nparams;
	if (param_types) {
		p->types = xmalloc(tsize);
		memcpy(p->types, param_types, tsize);
	}
	c->preps = xrealloc(c->preps, (c->npreps + 1) * sizeof *c->preps);
	c->preps[c->npreps++] = p;
	return true;
}

static void pg_conn_qtimer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct pg_conn *c = arg;
	pg_conn_enter(c);
	struct pg_query *q = TAILQ_FIRST(&c->queue);
	if (q && clock_mono_us() >= q->deadline_us) {
		q->timed_out = true;
		log_warn("db.query.timeout", "query timeout, resetting the connection",
		         PG_LF_NAME(c), LF_UINT("timeout_ms", c->opts.query_timeout_ms),
		         LF_UINT("pending", c->nqueue));
		pg_conn_lost(c, "connection reset after a query timeout");
	} else {
		pg_conn_arm_qtimer(c);
	}
	pg_conn_leave(c);
}

/* Finds the password in conninfo (keyword form or URI) so error text can be
 * masked; false when libpq can't parse it. */
static bool pg_conninfo_password(const char *conninfo, char **password, char **err)
{
	char *perr = NULL;
	PQconninfoOption *opts = PQconninfoParse(conninfo, &perr);
	if (!opts) {
		*err = pg_conninfo_clean_msg(perr ? perr : "out of memory");
		PQfreemem(perr);
		return false;
	}
	*password = NULL;
	for (PQconninfoOption *o = opts; o->keyword; o++)
		if (strcmp(o->keyword, "password") == 0 && o->val && *o->val)
			*password = xstrdup(o->val);
	PQconninfoFree(opts);
	return true;
}

struct pg_conn *pg_conn_new(struct event_base *base, const char *conninfo, const char *name,
                            const struct pg_conn_opts *opts)
{
	char *password = NULL, *err = NULL;
	name = name && *name ? name : "db";
	if (!pg_conninfo_password(conninfo ? conninfo : "", &password, &err)) {
		log_error("db.conn.config", "invalid connection string", LF_STR("name", name),
		          LF_STR("error", err));
		free(err);
		return NULL;
	}
	struct pg_conn *c = xcalloc(1, sizeof *c);
	c->base = base;
	c->name = xstrdup(name);
	c->conninfo = xstrdup(conninfo);
	c->password = password;
	if (opts)
		c->opts = *opts;
	if (!c->opts.reconnect_min_ms)
		c->opts.reconnect_min_ms = PG_DEFAULT_RECONNECT_MIN_MS;
	if (!c->opts.reconnect_max_ms)
		c->opts.reconnect_max_ms = PG_DEFAULT_RECONNECT_MAX_MS;
	if (c->opts.reconnect_max_ms < c->opts.reconnect_min_ms)
		c->opts.reconnect_max_ms = c->opts.reconnect_min_ms;
	if (!c->opts.connect_timeout_ms)
		c->opts.connect_timeout_ms = PG_DEFAULT_CONNECT_TIMEOUT_MS;
	c->state = PG_CONN_DISCONNECTED;
	metric_inc(metrics_default_get(M_DB_CONNECTIONS), 1, "down");
	TAILQ_INIT(&c->queue);
	TAILQ_INIT(&c->failed);
	TAILQ_INIT(&c->failing);
	c->timer_ev = evtimer_new(base, pg_conn_timer_cb, c);
	c->qtimer_ev = evtimer_new(base, pg_conn_qtimer_cb, c);
	c->defer_ev = event_new(base, -1, 0, pg_conn_defer_cb, c);
	if (!c->timer_ev || !c->qtimer_ev || !c->defer_ev)
		abort(); /* libevent only fails here when out of memory */
	c->constructing = true;
	pg_conn_connect(c);
	c->constructing = false;
	return c;
}

void pg_conn_free(struct pg_conn *c)
{
	if (!c || c->free_pending)
		return;
	(void)pg_conn_set_state(c, PG_CONN_CLOSED);
	c->free_pending = true;
	log_debug("db.conn.closed", "connection closed", PG_LF_NAME(c),
	          LF_UINT("dropped", c->nqueue));
	if (c->depth == 0)
		pg_conn_destroy(c);
}

enum pg_conn_state pg_conn_state(const struct pg_conn *c)
{
	return c->state;
}

bool pg_conn_is_ready(const struct pg_conn *c)
{
	return (c->state == PG_CONN_READY || c->state == PG_CONN_BUSY) && !c->broken &&
	       !c->free_pending;
}

const char *pg_conn_last_error(const struct pg_conn *c)
{
	return c->last_error ? c->last_error : "";
}

const char *pg_conn_name(const struct pg_conn *c)
{
	return c->name;
}

size_t pg_conn_pending(const struct pg_conn *c)
{
	return c->nqueue;
}

int pg_conn_backend_pid(const struct pg_conn *c)
{
	return c->pg && pg_conn_is_ready(c) ? PQbackendPID(c->pg) : 0;
}
