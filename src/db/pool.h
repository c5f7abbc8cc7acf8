/* pool: N pg_conns for the request path. It owns the connections, the FIFO
 * of batches waiting for a free one, and the wait timer. Every batch is one
 * round trip and one transaction, so nothing is checked out: each batch goes
 * to the ready connection with the fewest batches in flight, up to a cap. */
#ifndef SL_DB_POOL_H
#define SL_DB_POOL_H

#include <stdbool.h>
#include <stddef.h>

#include "db/pg.h"

struct event_base;
struct pg_pool;
struct pg_pool_query;

struct pg_pool_opts {
	/* For every connection: reconnect, connect and query timeouts. Its
	 * on_state, on_notify and arg are the pool's own and are ignored here
	 * (LISTEN belongs on db/listen.h's dedicated connection). */
	struct pg_conn_opts conn;
	unsigned max_inflight; /* batches in flight per connection; 0 = 16 */
	unsigned max_waiters; /* batches waiting for one of them; 0 = 1024 */
	unsigned wait_timeout_ms; /* how long a batch may wait; 0 = 5000 */
};

/* Opens size connections (at least 1, at most 1024), named "pool-0" ...;
 * conninfo as for pg_conn_new(). opts may be NULL. Returns NULL (logged)
 * when conninfo cannot be parsed. The caller frees it with pg_pool_free(). */
struct pg_pool *pg_pool_new(struct event_base *base, const char *conninfo, size_t size,
                            const struct pg_pool_opts *opts) __attribute__((warn_unused_result));

/* Closes every connection. Batches waiting or in flight are dropped WITHOUT
 * their callbacks, and every handle becomes invalid. Safe from inside one of
 * the pool's callbacks (the memory goes when it returns). NULL is a no-op. */
void pg_pool_free(struct pg_pool *p);

/* pg_conn_prepare() on every connection (each prepares it lazily, again
 * after every reconnect). False when any of them refuses it. */
bool pg_pool_prepare(struct pg_pool *p, const char *name, const char *sql, int nparams,
                     const Oid *param_types) __attribute__((warn_unused_result));

/* Runs stmts as one batch (one transaction) on one connection, with
 * pg_conn_batch()'s contract for the callbacks: each fires exactly once, in
 * order, never from inside this call. When every ready connection has
 * max_inflight batches (or none is up yet but one is connecting), the batch
 * waits in FIFO order, its statements copied. Never-sent batches get:
 *   PG_ERR_POOL_FULL   max_waiters are already waiting, or wait_timeout_ms
 *                      passed (answer 503 "pool saturated");
 *   PG_ERR_UNAVAILABLE no connection is up and none is about to be (answer
 *                      503 "database unavailable"), without waiting.
 * Once sent, a batch is never retried elsewhere: a drop gives
 * PG_ERR_CONN_LOST as on a single conn. The handle stays valid until the
 * last callback has returned or pg_pool_cancel(). n must be at least 1
 * (NULL otherwise). */
struct pg_pool_query *pg_pool_batch(struct pg_pool *p, const struct pg_stmt *stmts, size_t n);
struct pg_pool_query *pg_pool_query(struct pg_pool *p, const char *sql, int nparams,
                                    const char *const *values, pg_result_cb cb, void *arg);
struct pg_pool_query *pg_pool_query_prepared(struct pg_pool *p, const char *name, int nparams,
                                             const char *const *values, pg_result_cb cb, void *arg);

/* No callback of q fires afterwards, whether it was waiting (it is dropped
 * at once) or sent (its statements may still run; the results are thrown
 * away). Callable from inside q's own callbacks. The handle is invalid after
 * this call. NULL is a no-op. */
void pg_pool_cancel(struct pg_pool_query *q);

/* Connections that accept a batch now. */
size_t pg_pool_ready_count(const struct pg_pool *p);
/* At least one connection is ready. */
bool pg_pool_is_up(const struct pg_pool *p);
/* The latest connect or connection failure of any connection, password
 * masked ("" for none yet): the reason /readyz gives with its 503. */
const char *pg_pool_last_error(const struct pg_pool *p);
size_t pg_pool_size(const struct pg_pool *p);
/* Batches waiting for a connection now. */
size_t pg_pool_waiting(const struct pg_pool *p);
/* Batches in flight on connection i (< size): for tests and /metrics.json. */
size_t pg_pool_inflight(const struct pg_pool *p, size_t i);

/* The routing decision, pure. A slot is one connection as the pool sees
 * it: ready (accepts a batch now), connecting (a connect attempt worth
 * waiting for: the first one, or the first after a live session ended;
 * retries while the server stays down are not) and its batches in flight. */
struct pg_pool_slot {
	bool ready;
	bool connecting;
	unsigned inflight;
};

enum pg_pool_route {
	PG_POOL_SEND, /* to *pick */
	PG_POOL_WAIT, /* join the FIFO */
	PG_POOL_FULL, /* the FIFO is full: PG_ERR_POOL_FULL */
	PG_POOL_DOWN, /* nothing up or coming up: PG_ERR_UNAVAILABLE */
};

/* A new batch goes to the ready slot with the fewest in flight below
 * max_inflight (ties: the first at or after start, round robin), unless
 * batches are already waiting (FIFO: it queues behind them). With no such
 * slot it waits if a slot is ready or connecting and fewer than max_waiters
 * wait, else FULL; with no slot ready or connecting it is DOWN. */
enum pg_pool_route pg_pool_route(const struct pg_pool_slot *slots, size_t n, unsigned max_inflight,
                                 size_t waiting, size_t max_waiters, size_t start, size_t *pick);

#endif
