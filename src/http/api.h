/* api: registration of the public HTTP resources, one api_<resource>.c each.
 * Handlers get the api_ctx with what they need from the layers below. */
#ifndef SL_HTTP_API_H
#define SL_HTTP_API_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "http/auth.h"

struct app;
struct auth;
struct engine;
struct pg_conn;
struct pg_pool;
struct pipeline_set;
struct router;

struct quota;
struct scheduler;
struct store;

/* A route that needs the schema and an API key with scope before its
 * handler (authed) runs: api_jobs.c registers them (api_guarded). */
struct api_guard {
	struct api_ctx *ctx;
	unsigned scope;
	auth_done_fn authed;
};
#define API_GUARDS_MAX 32

struct api_ctx {
	struct app *app;
	struct pg_conn *db_health; /* a dedicated connection for /readyz */
	struct engine *engine;
	struct pg_pool *pool; /* the request path's pool (api_keys.c's own SQL) */
	struct scheduler *sched; /* NULL until the schema is current */
	struct store *store;
	struct auth *auth;
	struct quota *quota; /* per-project limits of submissions */
	const struct pipeline_set *pipelines;
	bool migrated; /* the schema is current: DB-backed routes may serve */
	struct api_guard guards[API_GUARDS_MAX];
	size_t nguards;
};

/* GET /healthz (liveness, no I/O) and GET /readyz (PostgreSQL answers). */
bool api_health_register(struct router *r, struct api_ctx *ctx) __attribute__((warn_unused_result));

/* POST/GET /v1/jobs, GET /v1/jobs/{id}, GET /v1/pipelines. */
bool api_jobs_register(struct router *r, struct api_ctx *ctx) __attribute__((warn_unused_result));

/* GET /v1/jobs/{id}/tasks/{task_id}/artifacts, .../logs, GET
 * /v1/jobs/{id}/logs, and the file store's GET /v1/objects/{key+}. */
bool api_artifacts_register(struct router *r, struct api_ctx *ctx)
        __attribute__((warn_unused_result));

/* GET /console, /console/ and /console/{path+}: the web console's static
 * files from server.console_dir (404 everywhere when it is empty). */
bool api_console_register(struct router *r, struct api_ctx *ctx)
        __attribute__((warn_unused_result));

/* POST/GET /v1/keys, GET/DELETE /v1/keys/{prefix}, POST
 * /v1/keys/{prefix}/rotate: a project's API keys (admin scope). Prepares its
 * statements on ctx->pool, which must be set. */
bool api_keys_register(struct router *r, struct api_ctx *ctx) __attribute__((warn_unused_result));

/* POST /v1/uploads and the file store's PUT /v1/objects/{key+}. */
bool api_uploads_register(struct router *r, struct api_ctx *ctx)
        __attribute__((warn_unused_result));

/* Shared by the api_*.c handlers. ------------------------------------------ */
struct http_req;
struct pg_error;
/* A route behind the schema check and scope (api_jobs.c's guard). */
bool api_route_guarded(struct router *r, unsigned methods, const char *template_,
                       struct api_ctx *ctx, unsigned scope, auth_done_fn authed)
        __attribute__((warn_unused_result));
/* 503 (or 500 for a failed query) for database trouble. */
void api_reply_db_error(struct http_req *req, const struct pg_error *err);
/* 404: unknown, malformed and other projects' jobs all read the same. */
void api_reply_no_such_job(struct http_req *req);
/* A job lookup that found nothing: err ? api_reply_db_error : 404. */
void api_reply_no_job(struct http_req *req, const struct pg_error *err);
/* The request's JSON body, any value (an empty one is {} when
 * empty_is_object): NULL after answering 415 (a Content-Type other than
 * application/json) or 400 (not JSON). */
json_t *api_read_json_body(struct http_req *req, bool empty_is_object);
void api_reply_no_such_task(struct http_req *req);
struct store_error;
/* 503 store-unavailable with Retry-After (the store's message is logged). */
void api_reply_store_error(struct http_req *req, const struct store_error *err);
/* The {id} / {task_id} path parameter as a lowercase UUID; false (404 sent)
 * when it is not one. */
bool api_job_id_param(struct http_req *req, char out[37]);
bool api_task_id_param(struct http_req *req, char out[37]);

/* GET /metrics and GET /metrics.json; guarded: they need the admin scope
 * (the main listener with auth on), else they are open (the metrics
 * listener, or auth off). */
bool api_metrics_register(struct router *r, struct api_ctx *ctx, bool guarded)
        __attribute__((warn_unused_result));

#endif
