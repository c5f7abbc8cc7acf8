/* instance: this daemon's row in `instances` (ARCHITECTURE §3): registered
 * once the schema is current, its heartbeat_at renewed every
 * scheduler.heartbeat, removed on a clean stop. Other instances read it to
 * tell a live lease owner from a dead one. It owns its timer and queries. */
#ifndef SL_ENGINE_INSTANCE_H
#define SL_ENGINE_INSTANCE_H

#include <stdint.h>

struct app;
struct pg_pool;
struct instance;

/* Starts registering (retrying while the database is away). */
struct instance *instance_start(struct app *app, struct pg_pool *pool, int64_t heartbeat_ms);
/* Removes the row (best effort, bounded) and calls done; NULL done is fine.
 * The instance frees itself after done. */
void instance_stop(struct instance *in, void (*done)(void *arg), void *arg);
/* Frees at once, without touching the row. NULL is a no-op. */
void instance_free(struct instance *in);

#endif
