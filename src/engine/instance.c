/* The instance row. Registration is an upsert so a restarted process with
 * a new id simply adds its row; the heartbeat is one fenced UPDATE, and if
 * the row is gone (an operator or a rescuer deleted it) the next beat puts
 * it back. Failures are logged at warn and retried on the next beat. */
#include "engine/instance.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/app.h"
#include "core/log.h"
#include "core/xmalloc.h"
#include "db/pool.h"

#define SQL_INSTANCE_BEAT                                                              \
	"INSERT INTO instances (id, host, pid, version) VALUES ($1, $2, $3::int, $4) " \
	"ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()"
#define SQL_INSTANCE_GONE "DELETE FROM instances WHERE id = $1"

struct instance {
	struct app *app;
	struct pg_pool *pool;
	struct event *timer;
	int64_t heartbeat_ms;
	struct pg_pool_query *q;
	char host[256];
	char pid[16];
	bool registered;
	bool stopping;
	void (*done)(void *arg);
	void *done_arg;
};

static void instance_arm(struct instance *in, int64_t ms)
{
	struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
	evtimer_add(in->timer, &tv);
}

static bool instance_beat_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct instance *in = arg;
	in->q = NULL;
	if (err) {
		log_warn("instance.heartbeat", "cannot write this instance's heartbeat",
		         LF_STR("instance_id", in->app->instance_id),
		         LF_STR("error", err->message));
	} else if (!in->registered) {
		in->registered = true;
		log_info("instance.register", "instance registered",
		         LF_STR("instance_id", in->app->instance_id), LF_STR("host", in->host),
		         LF_INT("heartbeat_ms", in->heartbeat_ms));
	}
	instance_arm(in, in->registered ? in->heartbeat_ms : 1000);
	return false;
}

static void instance_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct instance *in = arg;
	if (in->q)
		return; /* the previous beat is still out: skip this one */
	const char *v[4] = {in->app->instance_id, in->host, in->pid, app_version};
	in->q = pg_pool_query(in->pool, SQL_INSTANCE_BEAT, 4, v, instance_beat_cb, in);
}

struct instance *instance_start(struct app *app, struct pg_pool *pool, int64_t heartbeat_ms)
{
	struct instance *in = xcalloc(1, sizeof *in);
	in->app = app;
	in->pool = pool;
	in->heartbeat_ms = heartbeat_ms > 0 ? heartbeat_ms : 10000;
	if (gethostname(in->host, sizeof in->host - 1) != 0)
		snprintf(in->host, sizeof in->host, "unknown");
	snprintf(in->pid, sizeof in->pid, "%d", (int)getpid());
	in->timer = evtimer_new(app->base, instance_timer_cb, in);
	instance_arm(in, 0);
	return in;
}

void instance_free(struct instance *in)
{
	if (in == NULL)
		return;
	pg_pool_cancel(in->q);
	event_free(in->timer);
	free(in);
}

static bool instance_gone_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct instance *in = arg;
	in->q = NULL;
	if (err)
		log_warn("instance.unregister", "cannot remove this instance's row",
		         LF_STR("instance_id", in->app->instance_id),
		         LF_STR("error", err->message));
	void (*done)(void *) = in->done;
	void *darg = in->done_arg;
	instance_free(in);
	if (done)
		done(darg);
	return false;
}

void instance_stop(struct instance *in, void (*done)(void *arg), void *arg)
{
	evtimer_del(in->timer);
	pg_pool_cancel(in->q);
	in->q = NULL;
	in->done = done;
	in->done_arg = arg;
	const char *v[1] = {in->app->instance_id};
	in->q = pg_pool_query(in->pool, SQL_INSTANCE_GONE, 1, v, instance_gone_cb, in);
}
