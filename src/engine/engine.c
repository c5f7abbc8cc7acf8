/* The engine context: owns the bus and wires job.c into it. */
#include "engine/engine.h"

#include <stdlib.h>

#include "core/xmalloc.h"
#include "db/pool.h"
#include "engine/engine_int.h"
#include "engine/events.h"

struct engine *engine_new(struct app *app, struct pg_pool *pool,
                          const struct pipeline_set *pipelines, const struct engine_opts *opts)
{
	struct engine *e = xcalloc(1, sizeof *e);
	e->app = app;
	e->pool = pool;
	e->pipelines = pipelines;
	if (opts)
		e->opts = *opts;
	if (e->opts.submit_batch_max == 0)
		e->opts.submit_batch_max = 256;
	if (e->opts.submit_inflight_max == 0)
		e->opts.submit_inflight_max = pg_pool_size(pool) ? pg_pool_size(pool) : 1;
	if (e->opts.rev_cache_max == 0)
		e->opts.rev_cache_max = 100000;
	e->bus = event_bus_new();
	job_engine_init(e);
	return e;
}

void engine_free(struct engine *e)
{
	if (e == NULL)
		return;
	job_engine_fini(e);
	event_bus_free(e->bus);
	free(e);
}

bool engine_prepare(struct engine *e)
{
	return job_engine_prepare(e) && scheduler_prepare(e);
}

struct event_bus *engine_bus(struct engine *e)
{
	return e->bus;
}

const struct pipeline_set *engine_pipelines(const struct engine *e)
{
	return e->pipelines;
}

struct app *engine_app(const struct engine *e)
{
	return e->app;
}
