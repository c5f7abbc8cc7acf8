/* GET /metrics (Prometheus text 0.0.4) and GET /metrics.json (the reference
 * JSON shape). Both render the process registry per scrape; label values
 * are already bounded and free of raw paths and secrets by construction
 * (routes are templates, see router.h). */
#include <stdlib.h>

#include "core/buf.h"
#include "core/clock.h"
#include "core/metrics.h"
#include "http/api.h"
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

bool api_metrics_register(struct router *r, struct api_ctx *ctx)
{
	return http_route(r, HTTP_M_GET, "/metrics", metrics_prometheus, ctx) &&
	       http_route(r, HTTP_M_GET, "/metrics.json", metrics_json, ctx);
}
