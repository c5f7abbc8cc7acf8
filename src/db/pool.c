/* The request path's connections. A batch never needs a connection to
 * itself (it is one round trip and one transaction), so the pool only
 * routes: to the ready connection with the fewest batches in flight, below a
 * per-connection cap that keeps one slow pipeline from collecting everything.
 * Past the cap, batches wait in a bounded FIFO with a deadline; the bound
 * and the deadline turn overload into quick 503s instead of memory and
 * latency. The pool wraps every statement callback to learn when a batch has
 * finished (a freed slot pumps the FIFO) and to honour pg_pool_cancel()
 * without losing that signal. Like pg.c, user callbacks run bracketed by
 * enter/leave so pg_pool_free() from inside one is deferred to a safe point. */
#include "db/pool.h"

#include <event2/event.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/xmalloc.h"

#define POOL_DEFAULT_MAX_INFLIGHT 16
#define POOL_DEFAULT_MAX_WAITERS 1024
#define POOL_DEFAULT_WAIT_TIMEOUT_MS 5000
#define POOL_MAX_SIZE 1024
#define POOL_LOCAL_STMTS 8

enum pool_qstate {
	POOL_Q_WAITING, /* in p->waiting, statements copied */
	POOL_Q_SENT, /* in p->sent, on pc's pipeline */
	POOL_Q_REJECTED, /* in p->rejected until the defer event delivers it */
	POOL_Q_FAILING, /* in p->failing, its error being delivered now */
};

struct pg_pool_stmt {
	struct pg_pool_query *q;
	pg_result_cb cb;
	void *arg;
};

struct pg_pool_query {
	TAILQ_ENTRY(pg_pool_query) entry;
	struct pg_pool *pool;
	enum pool_qstate where;
	struct pool_conn *pc; /* POOL_Q_SENT */
	int64_t deadline_us; /* POOL_Q_WAITING */
	struct pg_stmt *copy; /* POOL_Q_WAITING: owned deep copy of the statements */
	enum pg_error_kind fail_kind;
	char *fail_msg;
	bool cancelled;
	size_t delivered; /* statement callbacks seen (sent batches) */
	size_t n;
	struct pg_pool_stmt stmts[];
};

TAILQ_HEAD(pool_qlist, pg_pool_query);

struct pool_conn {
	struct pg_pool *pool;
	struct pg_conn *conn;
	unsigned inflight;
	enum pg_conn_state seen; /* the last state on_state reported */
	/* Its next connect attempt is worth waiting for: the first one, or the
	 * first after a live session ended. Retries while the server stays
	 * unreachable are not, so requests then fail fast. */
	bool hopeful;
};

struct pg_pool {
	struct event_base *base;
	struct pool_conn *conns;
	struct pg_pool_slot *slots; /* routing scratch */
	size_t size;
	size_t next; /* round-robin start for ties */
	unsigned max_inflight;
	unsigned max_waiters;
	unsigned wait_timeout_ms;

	struct pool_qlist waiting;
	size_t nwaiting;
	struct pool_qlist sent;
	struct pool_qlist rejected;
	struct pool_qlist failing;

	struct event *defer_ev; /* delivers rejections, pumps the FIFO */
	struct event *timer_ev; /* the head waiter's deadline */

	char *last_error;
	bool saturated; /* refused a batch since the FIFO was last empty */
	uint64_t refused; /* while saturated, for the recovery log line */

	int depth;
	bool free_pending;
};

static const char *pool_kind_name(enum pg_error_kind kind)
{
	return kind == PG_ERR_POOL_FULL ? "pool_full" : "unavailable";
}

enum pg_pool_route pg_pool_route(const struct pg_pool_slot *slots, size_t n, unsigned max_inflight,
                                 size_t waiting, size_t max_waiters, size_t start, size_t *pick)
{
	bool alive = false;
	size_t best = n;
	for (size_t k = 0; k < n; k++) {
		size_t i = (start % n + k) % n;
		const struct pg_pool_slot *s = &slots[i];
		if (s->ready || s->connecting)
			alive = true;
		if (s->ready && s->inflight < max_inflight &&
		    (best == n || s->inflight < slots[best].inflight))
			best = i;
	}
	if (best < n && waiting == 0) {
		*pick = best;
		return PG_POOL_SEND;
	}
	if (!alive)
		return PG_POOL_DOWN;
	return waiting < max_waiters ? PG_POOL_WAIT : PG_POOL_FULL;
}

/* Copies. ------------------------------------------------------------------ */

/* A waiting batch outlives the caller's arrays: copy what libpq will read. */
static void pool_stmt_copy(struct pg_stmt *dst, const struct pg_stmt *src)
{
	*dst = *src;
	dst->sql = src->sql ? xstrdup(src->sql) : NULL;
	dst->name = src->name ? xstrdup(src->name) : NULL;
	dst->values = NULL;
	dst->lengths = NULL;
	dst->formats = NULL;
	if (src->nparams <= 0 || !src->values)
		return;
	size_t np = (size_t)src->nparams;
	char **values = xcalloc(np, sizeof *values);
	for (size_t i = 0; i < np; i++) {
		const char *v = src->values[i];
		if (!v)
			continue;
		if (src->formats && src->formats[i]) {
			size_t len =
			        src->lengths && src->lengths[i] > 0 ? (size_t)src->lengths[i] : 0;
			values[i] = xmalloc(len ? len : 1);
			memcpy(values[i], v, len);
		} else {
			values[i] = xstrdup(v);
		}
	}
	dst->values = (const char *const *)values;
	if (src->lengths) {
		int *lengths = xmalloc(np * sizeof *lengths);
		memcpy(lengths, src->lengths, np * sizeof *lengths);
		dst->lengths = lengths;
	}
	if (src->formats) {
		int *formats = xmalloc(np * sizeof *formats);
		memcpy(formats, src->formats, np * sizeof *formats);
		dst->formats = formats;
	}
}

static void pool_copy_free(struct pg_stmt *copy, size_t n)
{
	if (!copy)
		return;
	for (size_t i = 0; i < n; i++) {
		struct pg_stmt *s = &copy[i];
		free((void *)s->sql);
		free((void *)s->name);
		if (s->values)
			for (int k = 0; k < s->nparams; k++)
				free((void *)s->values[k]);
		free((void *)s->values);
		free((void *)s->lengths);
		free((void *)s->formats);
	}
	free(copy);
}

static void pool_query_free(struct pg_pool_query *q)
{
	pool_copy_free(q->copy, q->n);
	free(q->fail_msg);
	free(q);
}

static void pool_qlist_free(struct pool_qlist *l)
{
	struct pg_pool_query *q;
	while ((q = TAILQ_FIRST(l)) != NULL) {
		TAILQ_REMOVE(l, q, entry);
		pool_query_free(q);
	}
}

/* Lifetime. ----------------------------------------------------------------- */

static void pool_destroy(struct pg_pool *p)
{
	for (size_t i = 0; i < p->size; i++)
		pg_conn_free(p->conns[i].conn);
	if (p->nwaiting)
		metric_dec(metrics_default_get(M_DB_POOL_WAITERS), (double)p->nwaiting);
	pool_qlist_free(&p->waiting);
	pool_qlist_free(&p->sent);
	pool_qlist_free(&p->rejected);
	pool_qlist_free(&p->failing);
	event_free(p->defer_ev);
	event_free(p->timer_ev);
	free(p->conns);
	free(p->slots);
	free(p->last_error);
	free(p);
}

static void pool_enter(struct pg_pool *p)
{
	p->depth++;
}

static void pool_leave(struct pg_pool *p)
{
	if (--p->depth == 0 && p->free_pending)
		pool_destroy(p);
}

static void pool_kick(struct pg_pool *p)
{
	event_active(p->defer_ev, EV_TIMEOUT, 1);
}

/* Routing. ------------------------------------------------------------------ */

static enum pg_pool_route pool_route(struct pg_pool *p, size_t waiting, size_t *pick)
{
	for (size_t i = 0; i < p->size; i++) {
		const struct pool_conn *pc = &p->conns[i];
		p->slots[i] = (struct pg_pool_slot){
		        .ready = pg_conn_is_ready(pc->conn),
		        .connecting = pc->hopeful && pg_conn_state(pc->conn) == PG_CONN_CONNECTING,
		        .inflight = pc->inflight,
		};
	}
	return pg_pool_route(p->slots, p->size, p->max_inflight, waiting, p->max_waiters, p->next,
	                     pick);
}

static bool pool_stmt_cb(PGresult *res, const struct pg_error *err, void *arg);

static void pool_send(struct pg_pool *p, struct pg_pool_query *q, size_t i,
                      const struct pg_stmt *stmts)
{
	struct pool_conn *pc = &p->conns[i];
	struct pg_stmt local[POOL_LOCAL_STMTS];
	struct pg_stmt *w = q->n <= POOL_LOCAL_STMTS ? local : xmalloc(q->n * sizeof *w);
	for (size_t k = 0; k < q->n; k++) {
		w[k] = stmts[k];
		w[k].cb = pool_stmt_cb;
		w[k].arg = &q->stmts[k];
	}
	q->where = POOL_Q_SENT;
	q->pc = pc;
	pc->inflight++;
	TAILQ_INSERT_TAIL(&p->sent, q, entry);
	p->next = i + 1;
	/* Never NULL for n >= 1; its failures come back through pool_stmt_cb. */
	(void)pg_conn_batch(pc->conn, w, q->n);
	if (w != local)
		free(w);
}

static void pool_wait(struct pg_pool *p, struct pg_pool_query *q)
{
	q->where = POOL_Q_WAITING;
	q->deadline_us = clock_mono_us() + (int64_t)p->wait_timeout_ms * 1000;
	TAILQ_INSERT_TAIL(&p->waiting, q, entry);
	p->nwaiting++;
	metric_inc(metrics_default_get(M_DB_POOL_WAITERS), 1);
}

static void pool_unwait(struct pg_pool *p, struct pg_pool_query *q)
{
	TAILQ_REMOVE(&p->waiting, q, entry);
	p->nwaiting--;
	metric_dec(metrics_default_get(M_DB_POOL_WAITERS), 1);
	if (p->nwaiting == 0 && p->saturated) {
		p->saturated = false;
		log_info("db.pool.recovered", "database pool no longer saturated",
		         LF_UINT("refused", p->refused));
		p->refused = 0;
	}
}

static void pool_arm_timer(struct pg_pool *p)
{
	struct pg_pool_query *q = TAILQ_FIRST(&p->waiting);
	if (!q) {
		evtimer_del(p->timer_ev);
		return;
	}
	int64_t us = q->deadline_us - clock_mono_us();
	if (us < 0)
		us = 0;
	struct timeval tv = {.tv_sec = (time_t)(us / 1000000),
	                     .tv_usec = (suseconds_t)(us % 1000000)};
	evtimer_add(p->timer_ev, &tv);
}

static char *pool_unavailable_msg(const struct pg_pool *p)
{
	const char *why = pg_pool_last_error(p);
	return *why ? xasprintf("database unavailable: %s", why)
	            : xstrdup("database unavailable: no connection is up");
}

/* Never-sent batches get their error from the loop, never inside a call. */
static void pool_reject(struct pg_pool *p, struct pg_pool_query *q, enum pg_error_kind kind,
                        char *msg)
{
	q->where = POOL_Q_REJECTED;
	q->fail_kind = kind;
	q->fail_msg = msg;
	TAILQ_INSERT_TAIL(&p->rejected, q, entry);
	pool_kick(p);
}

static void pool_count_refusal(struct pg_pool *p, enum pg_error_kind kind)
{
	if (kind != PG_ERR_POOL_FULL)
		return;
	p->refused++;
	if (!p->saturated) {
		p->saturated = true;
		log_warn("db.pool.saturated", "database pool saturated: refusing batches",
		         LF_UINT("waiting", p->nwaiting), LF_UINT("max_waiters", p->max_waiters),
		         LF_UINT("connections", p->size), LF_UINT("max_inflight", p->max_inflight));
	}
}

/* Delivers p->failing, one statement callback at a time; stops when a
 * callback freed the pool (the destroy frees what is left). */
static void pool_deliver_failing(struct pg_pool *p)
{
	struct pg_pool_query *q;
	while (!p->free_pending && (q = TAILQ_FIRST(&p->failing)) != NULL) {
		struct pg_error err = {
		        .kind = q->fail_kind, .sqlstate = "", .message = q->fail_msg};
		const char *kind = pool_kind_name(q->fail_kind);
		for (size_t i = 0; i < q->n && !p->free_pending; i++) {
			/* op "pool": like pg.c's conn name for ad-hoc SQL, bounded. */
			metric_inc(metrics_default_get(M_DB_QUERIES_TOTAL), 1, "pool", kind);
			metric_inc(metrics_default_get(M_DB_ERRORS_TOTAL), 1, kind);
			if (!q->cancelled && q->stmts[i].cb)
				(void)q->stmts[i].cb(NULL, &err, q->stmts[i].arg);
		}
		if (p->free_pending)
			break;
		TAILQ_REMOVE(&p->failing, q, entry);
		pool_query_free(q);
	}
}

static void pool_fail_waiting(struct pg_pool *p, struct pg_pool_query *q, enum pg_error_kind kind,
                              char *msg)
{
	pool_unwait(p, q);
	q->where = POOL_Q_FAILING;
	q->fail_kind = kind;
	q->fail_msg = msg;
	TAILQ_INSERT_TAIL(&p->failing, q, entry);
}

/* Sends waiting batches while a connection has room; fails them all when
 * nothing is up or coming up. */
static void pool_pump(struct pg_pool *p)
{
	struct pg_pool_query *q;
	while ((q = TAILQ_FIRST(&p->waiting)) != NULL) {
		size_t pick = 0;
		enum pg_pool_route r = pool_route(p, 0, &pick);
		if (r == PG_POOL_SEND) {
			pool_unwait(p, q);
			pool_send(p, q, pick, q->copy);
			pool_copy_free(q->copy, q->n);
			q->copy = NULL;
			continue;
		}
		if (r == PG_POOL_DOWN) {
			log_debug("db.pool.down", "no connection up: failing the waiting batches",
			          LF_UINT("waiting", p->nwaiting));
			while ((q = TAILQ_FIRST(&p->waiting)) != NULL)
				pool_fail_waiting(p, q, PG_ERR_UNAVAILABLE,
				                  pool_unavailable_msg(p));
			pool_deliver_failing(p);
		}
		break;
	}
	if (!p->free_pending)
		pool_arm_timer(p);
}

static void pool_defer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pg_pool *p = arg;
	pool_enter(p);
	TAILQ_CONCAT(&p->failing, &p->rejected, entry);
	pool_deliver_failing(p);
	if (!p->free_pending)
		pool_pump(p);
	pool_leave(p);
}

static void pool_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pg_pool *p = arg;
	pool_enter(p);
	int64_t now = clock_mono_us();
	struct pg_pool_query *q;
	while ((q = TAILQ_FIRST(&p->waiting)) != NULL && q->deadline_us <= now) {
		if (pg_pool_is_up(p)) {
			pool_count_refusal(p, PG_ERR_POOL_FULL);
			pool_fail_waiting(p, q, PG_ERR_POOL_FULL,
			                  xasprintf("database pool saturated: no connection free "
			                            "within %u ms",
			                            p->wait_timeout_ms));
		} else {
			pool_fail_waiting(p, q, PG_ERR_UNAVAILABLE, pool_unavailable_msg(p));
		}
	}
	pool_deliver_failing(p);
	if (!p->free_pending)
		pool_arm_timer(p);
	pool_leave(p);
}

/* Every statement result of a sent batch passes here. */
static bool pool_stmt_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct pg_pool_stmt *s = arg;
	struct pg_pool_query *q = s->q;
	struct pg_pool *p = q->pool;
	bool keep = false;
	pool_enter(p);
	if (!q->cancelled && !p->free_pending && s->cb)
		keep = s->cb(res, err, s->arg);
	if (!p->free_pending && ++q->delivered == q->n) {
		q->pc->inflight--;
		TAILQ_REMOVE(&p->sent, q, entry);
		pool_query_free(q);
		if (p->nwaiting)
			pool_kick(p);
	}
	pool_leave(p);
	return keep;
}

static void pool_conn_state_cb(struct pg_conn *c, enum pg_conn_state state, void *arg)
{
	struct pool_conn *pc = arg;
	struct pg_pool *p = pc->pool;
	if (state == PG_CONN_READY) {
		pc->hopeful = true;
	} else if (state == PG_CONN_DISCONNECTED) {
		pc->hopeful = pc->seen != PG_CONN_CONNECTING;
		free(p->last_error);
		p->last_error = xstrdup(pg_conn_last_error(c));
	}
	pc->seen = state;
	if (p->nwaiting)
		pool_kick(p);
}

/* API. ---------------------------------------------------------------------- */

struct pg_pool *pg_pool_new(struct event_base *base, const char *conninfo, size_t size,
                            const struct pg_pool_opts *opts)
{
	if (size < 1)
		size = 1;
	if (size > POOL_MAX_SIZE)
		size = POOL_MAX_SIZE;
	struct pg_pool *p = xcalloc(1, sizeof *p);
	p->base = base;
	p->size = size;
	p->max_inflight =
	        opts && opts->max_inflight ? opts->max_inflight : POOL_DEFAULT_MAX_INFLIGHT;
	p->max_waiters = opts && opts->max_waiters ? opts->max_waiters : POOL_DEFAULT_MAX_WAITERS;
	p->wait_timeout_ms = opts && opts->wait_timeout_ms ? opts->wait_timeout_ms
	                                                   : POOL_DEFAULT_WAIT_TIMEOUT_MS;
	TAILQ_INIT(&p->waiting);
	TAILQ_INIT(&p->sent);
	TAILQ_INIT(&p->rejected);
	TAILQ_INIT(&p->failing);
	p->defer_ev = event_new(base, -1, 0, pool_defer_cb, p);
	p->timer_ev = evtimer_new(base, pool_timer_cb, p);
	if (!p->defer_ev || !p->timer_ev)
		abort(); /* libevent only fails here when out of memory */
	p->conns = xcalloc(size, sizeof *p->conns);
	p->slots = xcalloc(size, sizeof *p->slots);
	for (size_t i = 0; i < size; i++) {
		struct pool_conn *pc = &p->conns[i];
		struct pg_conn_opts co = {0};
		if (opts)
			co = opts->conn;
		co.on_state = pool_conn_state_cb;
		co.on_notify = NULL;
		co.arg = pc;
		char name[32];
		snprintf(name, sizeof name, "pool-%zu", i);
		pc->pool = p;
		pc->conn = pg_conn_new(base, conninfo, name, &co);
		if (!pc->conn) {
			p->size = i;
			pool_destroy(p);
			return NULL;
		}
		pc->seen = pg_conn_state(pc->conn);
		pc->hopeful = pc->seen == PG_CONN_CONNECTING;
	}
	log_info("db.pool.start", "database pool started", LF_UINT("connections", size),
	         LF_UINT("max_inflight", p->max_inflight), LF_UINT("max_waiters", p->max_waiters),
	         LF_UINT("wait_timeout_ms", p->wait_timeout_ms));
	return p;
}

void pg_pool_free(struct pg_pool *p)
{
	if (!p || p->free_pending)
		return;
	p->free_pending = true;
	if (p->depth == 0)
		pool_destroy(p);
}

bool pg_pool_prepare(struct pg_pool *p, const char *name, const char *sql, int nparams,
                     const Oid *param_types)
{
	bool ok = true;
	for (size_t i = 0; i < p->size; i++)
		ok = pg_conn_prepare(p->conns[i].conn, name, sql, nparams, param_types) && ok;
	return ok;
}

struct pg_pool_query *pg_pool_batch(struct pg_pool *p, const struct pg_stmt *stmts, size_t n)
{
	if (n == 0)
		return NULL;
	if (n > (SIZE_MAX - sizeof(struct pg_pool_query)) / sizeof(struct pg_pool_stmt))
		abort();
	struct pg_pool_query *q = xcalloc(1, sizeof *q + n * sizeof q->stmts[0]);
	q->pool = p;
	q->n = n;
	for (size_t i = 0; i < n; i++)
		q->stmts[i] = (struct pg_pool_stmt){.q = q, .cb = stmts[i].cb, .arg = stmts[i].arg};
	if (p->free_pending) {
		/* Submitted from a callback after pg_pool_free(): never delivered. */
		pool_reject(p, q, PG_ERR_UNAVAILABLE, xstrdup("database pool closed"));
		return q;
	}
	size_t pick = 0;
	switch (pool_route(p, p->nwaiting, &pick)) {
	case PG_POOL_SEND: pool_send(p, q, pick, stmts); break;
	case PG_POOL_WAIT:
		q->copy = xcalloc(n, sizeof *q->copy);
		for (size_t i = 0; i < n; i++)
			pool_stmt_copy(&q->copy[i], &stmts[i]);
		pool_wait(p, q);
		if (p->nwaiting == 1)
			pool_arm_timer(p);
		/* A connection may have room that the pump has not used yet. */
		pool_kick(p);
		break;
	case PG_POOL_FULL:
		pool_count_refusal(p, PG_ERR_POOL_FULL);
		pool_reject(p, q, PG_ERR_POOL_FULL,
		            xasprintf("database pool saturated: %zu batches already waiting",
		                      p->nwaiting));
		break;
	case PG_POOL_DOWN: pool_reject(p, q, PG_ERR_UNAVAILABLE, pool_unavailable_msg(p)); break;
	}
	return q;
}

struct pg_pool_query *pg_pool_query(struct pg_pool *p, const char *sql, int nparams,
                                    const char *const *values, pg_result_cb cb, void *arg)
{
	struct pg_stmt st = {
	        .sql = sql, .nparams = nparams, .values = values, .cb = cb, .arg = arg};
	return pg_pool_batch(p, &st, 1);
}

struct pg_pool_query *pg_pool_query_prepared(struct pg_pool *p, const char *name, int nparams,
                                             const char *const *values, pg_result_cb cb, void *arg)
{
	struct pg_stmt st = {
	        .name = name, .nparams = nparams, .values = values, .cb = cb, .arg = arg};
	return pg_pool_batch(p, &st, 1);
}

void pg_pool_cancel(struct pg_pool_query *q)
{
	if (!q)
		return;
	if (q->where == POOL_Q_WAITING) {
		pool_unwait(q->pool, q);
		pool_query_free(q);
		return;
	}
	/* Sent: pool_stmt_cb still needs to see the results to free the slot;
	 * rejected or failing: the delivery loop frees it. */
	q->cancelled = true;
}

size_t pg_pool_ready_count(const struct pg_pool *p)
{
	size_t n = 0;
	for (size_t i = 0; i < p->size; i++)
		n += pg_conn_is_ready(p->conns[i].conn);
	return n;
}

bool pg_pool_is_up(const struct pg_pool *p)
{
	for (size_t i = 0; i < p->size; i++)
		if (pg_conn_is_ready(p->conns[i].conn))
			return true;
	return false;
}

const char *pg_pool_last_error(const struct pg_pool *p)
{
	if (p->last_error && *p->last_error)
		return p->last_error;
	/* A failure inside pg_conn_new() reaches no on_state. */
	for (size_t i = 0; i < p->size; i++)
		if (*pg_conn_last_error(p->conns[i].conn))
			return pg_conn_last_error(p->conns[i].conn);
	return "";
}

size_t pg_pool_size(const struct pg_pool *p)
{
	return p->size;
}

size_t pg_pool_waiting(const struct pg_pool *p)
{
	return p->nwaiting;
}

size_t pg_pool_inflight(const struct pg_pool *p, size_t i)
{
	return i < p->size ? p->conns[i].inflight : 0;
}
