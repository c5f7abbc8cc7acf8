/* /healthz and /readyz. Liveness does no I/O: if the loop answers, the
 * process is alive. Readiness asks PostgreSQL on a dedicated connection, so
 * a saturated pool can't make a healthy instance look dead, and gives the
 * reason with its 503. */
#include <event2/event.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/app.h"
#include "core/clock.h"
#include "core/xmalloc.h"
#include "db/pg.h"
#include "http/api.h"
#include "http/server.h"

#define READYZ_TIMEOUT_MS 2000

struct readyz {
	struct http_req *req;
	struct pg_query *q;
	struct event *timer;
};

/* Liveness is polled hard (load balancers, the benchmarks): the body only
 * changes once a second, so it is rendered once a second. */
static void healthz(struct http_req *req, void *arg)
{
	struct api_ctx *ctx = arg;
	static char body[256];
	static size_t len;
	static int64_t rendered_for = -1;
	int64_t uptime = (clock_now_us() - ctx->app->started_us) / 1000000;
	if (uptime != rendered_for) {
		int n = snprintf(body, sizeof body,
		                 "{\"status\":\"ok\",\"version\":\"%s\",\"instance_id\":\"%s\","
		                 "\"uptime_seconds\":%lld}",
		                 app_version, ctx->app->instance_id, (long long)uptime);
		len = n > 0 && (size_t)n < sizeof body ? (size_t)n : 0;
		rendered_for = uptime;
	}
	http_set_header(req, "Cache-Control", "no-store");
	http_reply(req, 200, "application/json", body, len);
}

static void readyz_free(struct readyz *rz)
{
	pg_query_cancel(rz->q);
	event_free(rz->timer);
	free(rz);
}

static void readyz_unavailable(struct http_req *req, const char *detail)
{
	http_set_header(req, "Retry-After", "1");
	http_reply_problem(req, 503, "db-unavailable", "Database unavailable", detail, NULL);
}

static bool readyz_result_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct readyz *rz = arg;
	struct http_req *req = rz->req;
	rz->q = NULL;
	readyz_free(rz);
	if (err) {
		readyz_unavailable(req, err->message);
	} else {
		http_reply_json(req, 200,
		                json_pack("{s:s, s:s}", "status", "ready", "database", "ok"));
	}
	return false;
}

static void readyz_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct readyz *rz = arg;
	struct http_req *req = rz->req;
	readyz_free(rz);
	readyz_unavailable(req, "PostgreSQL did not answer within 2 s");
}

static void readyz_abort_cb(struct http_req *req, void *arg)
{
	readyz_free(arg);
}

static void readyz(struct http_req *req, void *arg)
{
	struct api_ctx *ctx = arg;
	if (ctx->app->stopping) {
		http_reply_problem(req, 503, "shutting-down", "Shutting down",
		                   "this instance is draining and takes no new work", NULL);
		return;
	}
	if (!ctx->migrated) {
		http_set_header(req, "Retry-After", "1");
		http_reply_problem(req, 503, "starting", "Starting",
		                   "the database schema is being checked or migrated", NULL);
		return;
	}
	if (!pg_conn_is_ready(ctx->db_health)) {
		const char *why = pg_conn_last_error(ctx->db_health);
		readyz_unavailable(req, why && *why ? why : "connecting to PostgreSQL");
		return;
	}
	struct readyz *rz = xcalloc(1, sizeof *rz);
	rz->req = req;
	rz->timer = evtimer_new(ctx->app->base, readyz_timeout_cb, rz);
	struct timeval tv = {.tv_sec = READYZ_TIMEOUT_MS / 1000};
	evtimer_add(rz->timer, &tv);
	http_req_on_abort(req, readyz_abort_cb, rz);
	rz->q = pg_conn_query(ctx->db_health, "SELECT 1", 0, NULL, readyz_result_cb, rz);
}

bool api_health_register(struct router *r, struct api_ctx *ctx)
{
	return http_route(r, HTTP_M_GET, "/healthz", healthz, ctx) &&
	       http_route(r, HTTP_M_GET, "/readyz", readyz, ctx);
}
