/* engine_int: the engine's private state, shared by engine.c and job.c. */
#ifndef SL_ENGINE_ENGINE_INT_H
#define SL_ENGINE_ENGINE_INT_H

#include <sys/queue.h>

#include "engine/engine.h"

struct event;
struct event_sub;
struct job_op;
struct rev_cache;

struct engine {
	struct app *app;
	struct pg_pool *pool;
	const struct pipeline_set *pipelines;
	struct event_bus *bus;
	struct engine_opts opts;
	struct rev_cache *revs;
	struct pg_listener *listener; /* NULL: the revision cache is not trusted */
	struct event_sub *rev_sub;
	/* the submission batcher */
	TAILQ_HEAD(, job_op) submits; /* waiting for a batch */
	size_t nsubmits;
	size_t submit_inflight;
	struct event *flush_ev;
};

/* job.c's share of engine_new()/engine_free(). */
void job_engine_init(struct engine *e);
void job_engine_fini(struct engine *e);
bool job_engine_prepare(struct engine *e);

#endif
