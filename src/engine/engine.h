/* engine: the jobs-and-tasks core. It owns the event bus, the job revision
 * cache behind cheap ETags, and the submission batcher; it talks to
 * PostgreSQL only through db/pool.h and never sees an HTTP type. */
#ifndef SL_ENGINE_ENGINE_H
#define SL_ENGINE_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct app;
struct pg_pool;
struct pipeline_set;
struct event_bus;
struct engine;

struct engine_opts {
	size_t submit_batch_max; /* jobs in one submit transaction; 0 = 256 */
	size_t submit_inflight_max; /* submit transactions in flight; 0 = pool size */
	size_t rev_cache_max; /* jobs whose revision is remembered; 0 = 100000 */
};

/* pool and pipelines are borrowed and must outlive the engine. */
struct engine *engine_new(struct app *app, struct pg_pool *pool,
                          const struct pipeline_set *pipelines, const struct engine_opts *opts);
/* Drops pending work without callbacks. NULL is a no-op. */
void engine_free(struct engine *e);
/* Registers the engine's prepared statements on the pool. */
bool engine_prepare(struct engine *e) __attribute__((warn_unused_result));

/* Cross-instance news. Every committed status change NOTIFYs this channel
 * with "<job id> <rev>"; the daemon LISTENs on a dedicated connection and
 * passes the payloads here, which keeps the revision cache behind cheap
 * ETags true for changes made by other instances. The cache answers only
 * while that listener is live (engine_set_listener); a resync (first
 * LISTEN, or after a reconnect, when notifications may have been lost)
 * empties it. */
#define ENGINE_JOBS_CHANNEL "stageline_jobs"
struct pg_listener;
void engine_set_listener(struct engine *e, struct pg_listener *l);
void engine_on_jobs_notify(struct engine *e, const char *payload);
void engine_resync(struct engine *e);

struct event_bus *engine_bus(struct engine *e);
const struct pipeline_set *engine_pipelines(const struct engine *e);
struct app *engine_app(const struct engine *e);

#endif
