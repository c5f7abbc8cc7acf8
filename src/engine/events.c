/* The event bus. Subscriptions live on a list; a cancel inside a delivery
 * only marks the subscription, and the publish that is running sweeps it
 * afterwards, so no callback ever runs on freed state. */
#include "engine/events.h"

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
	return strncmp(kind, "job.lifecycle.", 14) == 0 ? "lifecycle" : "stage";
}
