/* engine_int: the engine's private state, shared by engine.c and job.c. */
#ifndef SL_ENGINE_ENGINE_INT_H
#define SL_ENGINE_ENGINE_INT_H

#include <sys/queue.h>

#include "engine/engine.h"

struct event;
struct event_sub;
struct job_op;
struct rev_cache;
struct job_txn;

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
	TAILQ_HEAD(, job_txn) txns; /* commits in flight */
};

/* After a commit: the event's log line (fields from ev->data for task
 * events), metrics for job edges, the revision cache and the bus. */
struct sl_event;
#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
void job_announce(struct engine *e, const struct sl_event *ev, bool is_task, int64_t dur_ms,
                  const json_t *error, int64_t created_us);

/* The revision this instance last saw for a job (any project), and a way
 * to record one (added when absent). */
bool job_rev_known(struct engine *e, const char *job_id, int64_t *rev);
void job_rev_note(struct engine *e, const char *job_id, const char *project_id, int64_t rev);
/* scheduler.c's prepared statements. */
bool scheduler_prepare(struct engine *e);

/* job.c's share of engine_new()/engine_free(). */
void job_engine_init(struct engine *e);
void job_engine_fini(struct engine *e);
bool job_engine_prepare(struct engine *e);

#endif
