/* GET /metrics (Prometheus text 0.0.4) and GET /metrics.json (the reference
 * JSON shape). Both render the process registry per scrape; label values
 * are already bounded and free of raw paths and secrets by construction
 * (routes are templates, see router.h). */
#include <stdlib.h>

#include "core/buf.h"
#include "core/clock.h"
#include "core/metrics.h"
#include "core/apikey.h"
#include "core/app.h"
#include "core/config.h"
#include "http/api.h"
#include "http/auth.h"
#include "http/server.h"

static void metrics_prometheus(struct http_req *req, void *arg)
{
	struct buf b = BUF_INIT;
	metrics_format_prometheus(metrics_default(), &b);
	http_set_header(req, "Cache-Control", "no-store");
	http_reply(req, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
	buf_free(&b);
}

static void metrics_json(struct http_req *req, void *arg)
{
	struct buf b = BUF_INIT;
	char ts[40];
	clock_fmt_rfc3339_us(ts, sizeof ts, clock_now_us());
	metrics_format_json(metrics_default(), &b, ts);
	http_set_header(req, "Cache-Control", "no-store");
	http_reply(req, 200, "application/json", b.data, b.len);
	buf_free(&b);
}

/* On the main listener, with auth on, the metrics need the admin scope: they
 * describe every project's traffic. */
static void metrics_prometheus_authed(struct http_req *req, const struct auth_principal *p,
                                      void *arg)
{
	metrics_prometheus(req, arg);
}

static void metrics_json_authed(struct http_req *req, const struct auth_principal *p, void *arg)
{
	metrics_json(req, arg);
}

static void metrics_prometheus_guarded(struct http_req *req, void *arg)
{
	struct api_ctx *ctx = arg;
	auth_require(ctx->auth, req, APIKEY_SCOPE_ADMIN, metrics_prometheus_authed, ctx);
}

static void metrics_json_guarded(struct http_req *req, void *arg)
{
	struct api_ctx *ctx = arg;
	auth_require(ctx->auth, req, APIKEY_SCOPE_ADMIN, metrics_json_authed, ctx);
}

bool api_metrics_register(struct router *r, struct api_ctx *ctx, bool guarded)
{
	if (guarded)
		return http_route(r, HTTP_M_GET, "/metrics", metrics_prometheus_guarded, ctx) &&
		       http_route(r, HTTP_M_GET, "/metrics.json", metrics_json_guarded, ctx);
	return http_route(r, HTTP_M_GET, "/metrics", metrics_prometheus, ctx) &&
	       http_route(r, HTTP_M_GET, "/metrics.json", metrics_json, ctx);
}
