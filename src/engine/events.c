/* The event bus. Subscriptions live on a list; a cancel inside a delivery
 * only marks the subscription, and the publish that is running sweeps it
 * afterwards, so no callback ever runs on freed state. */
#include "engine/events.h"

#include "core/clock.h"

#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "core/xmalloc.h"

struct event_sub {
	struct event_bus *bus;
	event_bus_fn fn;
	void *arg;
	bool dead;
	TAILQ_ENTRY(event_sub) link;
};

struct event_bus {
	TAILQ_HEAD(, event_sub) subs;
	int publishing; /* nesting depth */
};

struct event_bus *event_bus_new(void)
{
	struct event_bus *bus = xcalloc(1, sizeof *bus);
	TAILQ_INIT(&bus->subs);
	return bus;
}

void event_bus_free(struct event_bus *bus)
{
	if (bus == NULL)
		return;
	struct event_sub *s;
	while ((s = TAILQ_FIRST(&bus->subs)) != NULL) {
		TAILQ_REMOVE(&bus->subs, s, link);
		free(s);
	}
	free(bus);
}

struct event_sub *event_bus_subscribe(struct event_bus *bus, event_bus_fn fn, void *arg)
{
	struct event_sub *s = xcalloc(1, sizeof *s);
	s->bus = bus;
	s->fn = fn;
	s->arg = arg;
	TAILQ_INSERT_TAIL(&bus->subs, s, link);
	return s;
}

void event_sub_cancel(struct event_sub *s)
{
	if (s == NULL)
		return;
	if (s->bus->publishing) {
		s->dead = true;
		return;
	}
	TAILQ_REMOVE(&s->bus->subs, s, link);
	free(s);
}

void event_bus_publish(struct event_bus *bus, const struct sl_event *ev)
{
	bus->publishing++;
	struct event_sub *s;
	/* Subscriptions added during delivery are appended and see this event
	 * too; that is harmless and keeps the walk simple. */
	TAILQ_FOREACH(s, &bus->subs, link)
	{
		if (!s->dead)
			s->fn(ev, s->arg);
	}
	if (--bus->publishing == 0) {
		struct event_sub *next;
		for (s = TAILQ_FIRST(&bus->subs); s; s = next) {
			next = TAILQ_NEXT(s, link);
			if (s->dead) {
				TAILQ_REMOVE(&bus->subs, s, link);
				free(s);
			}
		}
	}
}

const char *event_sse_type(const char *kind)
{
	if (strcmp(kind, "progress") == 0 || strcmp(kind, "log") == 0)
		return kind;
	return strncmp(kind, "job.lifecycle.", 14) == 0 ? "lifecycle" : "stage";
}

static json_t *str_or_null(const char *s)
{
	return s ? json_string(s) : json_null();
}

json_t *event_to_json(const struct sl_event *ev)
{
	json_t *o = json_object();
	if (ev->seq > 0) {
		json_object_set_new(o, "id", json_integer(ev->id));
		json_object_set_new(o, "seq", json_integer(ev->seq));
	}
	char ts[40];
	clock_fmt_rfc3339_us(ts, sizeof ts, ev->ts_us);
	json_object_set_new(o, "ts", json_string(ts));
	json_object_set_new(o, "kind", json_string(ev->kind));
	json_object_set_new(o, "job_id", json_string(ev->job_id));
	json_object_set_new(o, "task_id", str_or_null(ev->task_id));
	json_object_set_new(o, "stage", str_or_null(ev->stage));
	if (ev->seq > 0) {
		json_object_set_new(o, "status_from", str_or_null(ev->status_from));
		json_object_set_new(o, "status_to", str_or_null(ev->status_to));
		json_object_set_new(o, "reason", str_or_null(ev->reason));
		json_object_set_new(o, "request_id", str_or_null(ev->request_id));
	}
	json_object_set_new(o, "data", ev->data ? json_deep_copy(ev->data) : json_object());
	return o;
}
