/* pg: one asynchronous PostgreSQL connection on the event loop. It owns the
 * libpq connection, its socket events, its reconnect and timeout timers, the
 * FIFO of queries in flight and the results until their callbacks return. */
#ifndef SL_DB_PG_H
#define SL_DB_PG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

struct event_base;
struct pg_conn;
struct pg_query;

/* READY and BUSY both accept queries (BUSY has some in flight). CLOSED is
 * only seen between pg_conn_free() and the moment the memory goes, when the
 * free was called from inside one of the conn's own callbacks. */
enum pg_conn_state {
	PG_CONN_DISCONNECTED, /* no connection; a backoff timer will retry */
	PG_CONN_CONNECTING,
	PG_CONN_READY,
	PG_CONN_BUSY,
	PG_CONN_CLOSED,
};

enum pg_error_kind {
	PG_ERR_QUERY, /* the server rejected it: sqlstate and message are the server's */
	PG_ERR_ABORTED, /* rolled back or not run: another statement of its batch failed */
	PG_ERR_CONN_LOST, /* the connection dropped: it may or may not have committed */
	PG_ERR_TIMEOUT, /* query_timeout_ms passed; the connection was reset; outcome unknown */
	PG_ERR_UNAVAILABLE, /* never sent: there was no connection (callers answer 503) */
	PG_ERR_USAGE, /* never sent: bad arguments (unknown statement, parameter count) */
	PG_ERR_POOL_FULL, /* never sent: db/pool.h had no free connection (callers answer 503) */
};

struct pg_error {
	enum pg_error_kind kind;
	const char *sqlstate; /* the 5-character SQLSTATE for PG_ERR_QUERY, else "" */
	const char *message; /* never NULL */
	/* PG_ERR_QUERY: the server's error result, for PQresultErrorField (constraint,
	 * detail, ...); valid during the callback. NULL for the other kinds. */
	const PGresult *detail;
};

/* Exactly one of res and err is non-NULL. res is a PGRES_TUPLES_OK, _COMMAND_OK
 * or _EMPTY_QUERY result. Return true to keep res (the callback then owns it
 * and PQclear()s it later); return false and the conn clears it when the
 * callback returns. The callback may submit and cancel queries and may call
 * pg_conn_free() on this conn. */
typedef bool (*pg_result_cb)(PGresult *res, const struct pg_error *err, void *arg);

struct pg_conn_opts {
	unsigned reconnect_min_ms; /* 0 = 100 */
	unsigned reconnect_max_ms; /* 0 = 5000 */
	unsigned connect_timeout_ms; /* 0 = 5000 */
	unsigned query_timeout_ms; /* 0 = none; see pg_conn_batch() for what a timeout does */
	/* Up/down news: every transition except READY <-> BUSY (those are only
	 * logged), never from inside pg_conn_new() or pg_conn_free(). On READY
	 * after a reconnect the owner re-issues its LISTENs: they die with the
	 * session. */
	void (*on_state)(struct pg_conn *c, enum pg_conn_state state, void *arg);
	/* NOTIFY on a channel this session LISTENs to. be_pid is the sender's
	 * backend (equal to pg_conn_backend_pid() for our own). */
	void (*on_notify)(struct pg_conn *c, const char *channel, const char *payload, int be_pid,
	                  void *arg);
	void *arg; /* for on_state and on_notify */
};

/* One statement of a batch: sql, or name for a statement registered with
 * pg_conn_prepare(). values are text unless formats says otherwise; lengths
 * and formats may be NULL (all text); result_format 0 is text, 1 binary. */
struct pg_stmt {
	const char *sql;
	const char *name;
	int nparams;
	const char *const *values;
	const int *lengths;
	const int *formats;
	int result_format;
	pg_result_cb cb;
	void *arg;
};

/* Starts connecting at once and keeps the connection up (reconnecting with
 * backoff) until pg_conn_free(). conninfo is a libpq keyword string or URI;
 * it is kept for reconnects and never logged. host= should be a socket
 * directory or an IP address (or give hostaddr=): libpq resolves a host name
 * with a blocking lookup. opts may be NULL. Returns NULL (and logs why, with
 * any secret masked) only when conninfo cannot be parsed. The caller frees the
 * conn with pg_conn_free(). */
struct pg_conn *pg_conn_new(struct event_base *base, const char *conninfo, const char *name,
                            const struct pg_conn_opts *opts) __attribute__((warn_unused_result));

/* Closes the connection and frees the conn. Queries still pending are dropped
 * WITHOUT their callbacks (the owner is going away; they may still run on the
 * server) and every pg_query handle of this conn becomes invalid. Safe from
 * inside any of the conn's callbacks: the memory goes when the callback has
 * returned. NULL is a no-op. */
void pg_conn_free(struct pg_conn *c);

/* Registers a named statement. It is prepared lazily, in the same pipeline
 * just before its first use on each connection (so again after a reconnect).
 * param_types may be NULL (the server infers them). Returns false when the
 * name is empty or longer than 63 bytes, or is already registered with other
 * SQL; registering the same statement again is true. */
bool pg_conn_prepare(struct pg_conn *c, const char *name, const char *sql, int nparams,
                     const Oid *param_types) __attribute__((warn_unused_result));

/* Submits n statements followed by one pipeline sync, so they run as ONE
 * implicit transaction; a single query is a batch of one, its own
 * transaction. Each statement's callback fires exactly once, in submission
 * order, after the whole batch has committed or failed: if one statement
 * fails, it gets PG_ERR_QUERY and all the others PG_ERR_ABORTED (those before
 * it were rolled back, those after it never ran); a failed commit (a deferred
 * constraint) gives every statement PG_ERR_QUERY. Nothing is queued while
 * the connection is down: the callbacks then get PG_ERR_UNAVAILABLE. Callbacks
 * never fire from inside this call (failures are delivered from the loop).
 * With query_timeout_ms, a batch that has not finished in time gets
 * PG_ERR_TIMEOUT and the connection is reset (a pipeline can't skip a stuck
 * statement, and libpq 15 has no non-blocking cancel), so the batches behind
 * it get PG_ERR_CONN_LOST; prefer statement_timeout on the server
 * (options=-cstatement_timeout=...), which fails only that statement.
 * Returns a handle that stays valid until its last callback returns or
 * pg_query_cancel(). n must be at least 1. */
struct pg_query *pg_conn_batch(struct pg_conn *c, const struct pg_stmt *stmts, size_t n);
/* A batch of one, text parameters and text results. */
struct pg_query *pg_conn_query(struct pg_conn *c, const char *sql, int nparams,
                               const char *const *values, pg_result_cb cb, void *arg);
/* A batch of one running the statement registered under name. */
struct pg_query *pg_conn_query_prepared(struct pg_conn *c, const char *name, int nparams,
                                        const char *const *values, pg_result_cb cb, void *arg);

/* Guarantees that none of the query's callbacks fires afterwards. The
 * statements may still run on the server; their results are discarded when
 * they arrive. The handle is invalid after this call. NULL is a no-op. */
void pg_query_cancel(struct pg_query *q);

enum pg_conn_state pg_conn_state(const struct pg_conn *c);
/* True in READY and BUSY: a query submitted now is sent at once. */
bool pg_conn_is_ready(const struct pg_conn *c);
/* The latest connect or connection failure ("" for none yet), with the
 * password masked: the reason /readyz gives with its 503. */
const char *pg_conn_last_error(const struct pg_conn *c);
const char *pg_conn_name(const struct pg_conn *c);
/* Batches sent and not yet finished (cancelled ones included until their
 * results have arrived). */
size_t pg_conn_pending(const struct pg_conn *c);
/* The server process of the current session, 0 when not connected. */
int pg_conn_backend_pid(const struct pg_conn *c);
const char *pg_conn_state_name(enum pg_conn_state state);
/* The transition table set_state enforces (for tests). */
bool pg_conn_state_allowed(enum pg_conn_state from, enum pg_conn_state to);
/* Reconnect delay after `attempt` failures in a row (0 = the first retry):
 * uniform in [min, min(max, min * 2^(attempt+1))], picked by rnd. Pure. */
unsigned pg_conn_backoff_ms(unsigned min_ms, unsigned max_ms, unsigned attempt, uint32_t rnd);

#endif
