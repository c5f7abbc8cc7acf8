/* events: the in-process event bus, the one fan-out point for job and task
 * transitions after they commit. The engine publishes; the ETag cache and
 * the SSE streams subscribe. Single-threaded; subscribers may unsubscribe
 * (themselves or others) from inside a delivery. */
#ifndef SL_ENGINE_EVENTS_H
#define SL_ENGINE_EVENTS_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

/* One committed event: a job_events row (ARCHITECTURE §3, proto/events.md).
 * Strings are borrowed for the duration of the delivery. */
struct sl_event {
	int64_t id; /* global job_events.id */
	int64_t seq; /* the job's gapless event number */
	int64_t rev; /* the job's rev after this event (its ETag) */
	int64_t ts_us;
	const char *kind; /* "job.lifecycle.enqueue", "job.stage.ready", ... */
	const char *job_id;
	const char *project_id;
	const char *pipeline;
	const char *task_id; /* NULL for job events */
	const char *stage;
	const char *status_from;
	const char *status_to;
	const char *reason;
	const char *request_id;
	const json_t *data; /* aggregate counts and kind-specific fields */
};

typedef void (*event_bus_fn)(const struct sl_event *ev, void *arg);

struct event_bus;
struct event_sub;

struct event_bus *event_bus_new(void);
/* Frees the bus and every subscription; no callback fires afterwards. */
void event_bus_free(struct event_bus *bus);
/* fn runs for every event published after this call. The subscription is
 * the caller's: event_sub_cancel() ends it (safe inside a delivery). */
struct event_sub *event_bus_subscribe(struct event_bus *bus, event_bus_fn fn, void *arg);
void event_sub_cancel(struct event_sub *sub);
void event_bus_publish(struct event_bus *bus, const struct sl_event *ev);
/* The SSE event type of a kind: lifecycle for job.lifecycle.*, stage for
 * job.stage.* and job.module.*. */
const char *event_sse_type(const char *kind);
/* The event as SSE data and the replay render it (proto/events.md): {id,
 * seq, ts, kind, job_id, task_id, stage, status_from, status_to, reason,
 * request_id, data}; ephemeral kinds ("progress", "log": seq 0) carry only
 * ts, kind, job_id, task_id, stage and data. New reference. */
json_t *event_to_json(const struct sl_event *ev);

#endif
