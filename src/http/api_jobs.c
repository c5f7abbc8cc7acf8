/* /v1/jobs and /v1/pipelines: submission, the job with its per-stage
 * breakdown, keyset listing. Handlers authenticate, validate (every field
 * problem is a 422 naming its path), hand the work to engine/job.c and map
 * its outcome to HTTP. The engine never sees a request; a request that
 * goes away cancels its engine operation. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/apikey.h"
#include "core/app.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/xmalloc.h"
#include "db/pg.h"
#include "engine/dag.h"
#include "engine/job.h"
#include "engine/quota.h"
#include "engine/pipeline.h"
#include "engine/scheduler.h"
#include "http/api.h"
#include "http/auth.h"
#include "http/server.h"
#include "store/store.h"

#define LIST_LIMIT_DEFAULT 50
#define LIST_LIMIT_MAX 200
#define IDEMPOTENCY_KEY_MAX 255

/* One request waiting for the engine. */
struct job_call {
	struct api_ctx *ctx;
	struct http_req *req;
	struct job_op *op;
	char project[AUTH_PROJECT_MAX + 1];
};

static struct job_call *job_call_new(struct api_ctx *ctx, struct http_req *req,
                                     const struct auth_principal *p)
{
	struct job_call *c = xcalloc(1, sizeof *c);
	c->ctx = ctx;
	c->req = req;
	snprintf(c->project, sizeof c->project, "%s", p->project_id);
	return c;
}

static void job_call_abort_cb(struct http_req *req, void *arg)
{
	struct job_call *c = arg;
	job_op_cancel(c->op);
	free(c);
}

/* Database trouble is the server's, not the client's: 503 with a hint. */
void api_reply_db_error(struct http_req *req, const struct pg_error *err)
{
	if (err && err->kind == PG_ERR_QUERY) {
		log_error("http.db_error", "query failed", LF_STR("route", http_req_route(req)),
		          LF_STR("sqlstate", err->sqlstate), LF_STR("error", err->message),
		          LF_STR("request_id", http_req_id(req)));
		http_reply_problem(req, 500, "internal", NULL, "the request could not be completed",
		                   NULL);
		return;
	}
	http_set_header(req, "Retry-After", "1");
	if (err && err->kind == PG_ERR_POOL_FULL)
		http_reply_problem(req, 503, "overloaded", "Overloaded",
		                   "too many requests are waiting for the database", NULL);
	else
		/* libpq's text names sockets, hosts and ports: keep it in the
		 * server's logs (pg.c), out of responses. */
		http_reply_problem(req, 503, "db-unavailable", "Database unavailable",
		                   "the database is unavailable; retry shortly", NULL);
}

static void reply_422(struct http_req *req, const char *detail, json_t *errors)
{
	json_t *extra = json_pack("{s:o}", "errors", errors);
	http_reply_problem(req, 422, "validation", "Invalid request", detail, extra);
	json_decref(extra);
}

static void reply_field_422(struct http_req *req, const char *field, const char *message)
{
	reply_422(req, message, json_pack("[{s:s, s:s}]", "field", field, "message", message));
}

/* Unknown ids, malformed ids and other projects' jobs all read the same. */
void api_reply_no_such_job(struct http_req *req)
{
	http_reply_problem(req, 404, "not-found", NULL, "no such job", NULL);
}

void api_reply_no_job(struct http_req *req, const struct pg_error *err)
{
	if (err)
		api_reply_db_error(req, err);
	else
		api_reply_no_such_job(req);
}

/* A path parameter as a lowercase UUID; false when it is not one. */
static bool uuid_param(struct http_req *req, const char *name, char out[ID_UUID_LEN + 1])
{
	const char *id = http_req_param(req, name);
	if (!id_uuid_valid(id))
		return false;
	for (int i = 0; i <= ID_UUID_LEN; i++)
		out[i] = (char)((id[i] >= 'A' && id[i] <= 'F') ? id[i] + 32 : id[i]);
	return true;
}

/* The {id} path parameter as a lowercase UUID; false (404 sent) otherwise. */
bool api_job_id_param(struct http_req *req, char out[ID_UUID_LEN + 1])
{
	if (uuid_param(req, "id", out))
		return true;
	api_reply_no_such_job(req);
	return false;
}

/* The {task_id} path parameter, the same way. */
bool api_task_id_param(struct http_req *req, char out[ID_UUID_LEN + 1])
{
	if (uuid_param(req, "task_id", out))
		return true;
	api_reply_no_such_task(req);
	return false;
}

static void set_etag(struct http_req *req, int64_t rev)
{
	char etag[32];
	snprintf(etag, sizeof etag, "\"%lld\"", (long long)rev);
	http_set_header(req, "ETag", etag);
}

/* True when If-None-Match names rev (or is "*"). */
static bool etag_matches(struct http_req *req, int64_t rev)
{
	const char *inm = http_req_header(req, "If-None-Match");
	if (inm == NULL)
		return false;
	char want[32];
	int n = snprintf(want, sizeof want, "\"%lld\"", (long long)rev);
	for (const char *p = inm; *p;) {
		while (*p == ' ' || *p == ',')
			p++;
		if (*p == '*')
			return true;
		if (strncmp(p, "W/", 2) == 0)
			p += 2;
		if (strncmp(p, want, (size_t)n) == 0 &&
		    (p[n] == '\0' || p[n] == ',' || p[n] == ' '))
			return true;
		while (*p && *p != ',')
			p++;
	}
	return false;
}

/* --- POST /v1/jobs ------------------------------------------------------- */

static void submit_done_cb(enum job_submit_result r, json_t *job, int64_t rev,
                           const struct pg_error *err, void *arg)
{
	struct job_call *c = arg;
	struct http_req *req = c->req;
	free(c);
	switch (r) {
	case JOB_SUBMIT_CREATED:
	case JOB_SUBMIT_EXISTING: {
		char *loc = xasprintf("/v1/jobs/%s", json_string_value(json_object_get(job, "id")));
		http_set_header(req, "Location", loc);
		free(loc);
		set_etag(req, rev);
		http_reply_json(req, r == JOB_SUBMIT_CREATED ? 201 : 200, job);
		break;
	}
	case JOB_SUBMIT_CONFLICT:
		http_reply_problem(req, 409, "idempotency-conflict", "Idempotency key reused",
		                   "this Idempotency-Key was used for a different request", NULL);
		break;
	case JOB_SUBMIT_ERROR: api_reply_db_error(req, err); break;
	}
}

static bool idempotency_key_ok(const char *k)
{
	size_t n = strlen(k);
	if (n == 0 || n > IDEMPOTENCY_KEY_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)k[i] < 0x21 || (unsigned char)k[i] > 0x7e)
			return false;
	return true;
}

/* "application/json", any case, optionally followed by parameters
 * ("; charset=utf-8"); not application/json-patch+json and the like. */
static bool media_type_is_json(const char *ct)
{
	while (*ct == ' ' || *ct == '\t')
		ct++;
	if (strncasecmp(ct, "application/json", 16) != 0)
		return false;
	ct += 16;
	while (*ct == ' ' || *ct == '\t')
		ct++;
	return *ct == '\0' || *ct == ';';
}

/* The task_ref of one entry of a job's `stages` (as job_get returns it). */
static struct task_ref stage_task_ref(const json_t *stage, const char *job_id, const char *project,
                                      const char *pipeline, struct http_req *req)
{
	struct task_ref tr = {json_string_value(json_object_get(stage, "task_id")),
	                      job_id,
	                      project,
	                      pipeline,
	                      json_string_value(json_object_get(stage, "stage")),
	                      http_req_id(req)};
	return tr;
}

json_t *api_read_json_body(struct http_req *req, bool empty_is_object)
{
	const char *ctype = http_req_header(req, "Content-Type");
	if (ctype && !media_type_is_json(ctype)) {
		http_reply_problem(req, 415, "unsupported-media-type", NULL,
		                   "the body must be application/json", NULL);
		return NULL;
	}
	size_t len;
	const char *body = http_req_body(req, &len);
	if (len == 0 && empty_is_object)
		return json_object();
	json_error_t jerr;
	json_t *doc =
	        json_loadb(body ? body : "", len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
	if (doc == NULL) {
		char *detail = xasprintf("invalid JSON at line %d, column %d: %s", jerr.line,
		                         jerr.column, jerr.text);
		http_reply_problem(req, 400, "invalid-json", "Invalid JSON", detail, NULL);
		free(detail);
	}
	return doc;
}

/* resume_from: {job_id, stage}; problems go to errors. */
static void resume_check(const json_t *r, const struct pipeline *pipe, json_t *errors,
                         size_t *stage_idx)
{
	if (!json_is_object(r)) {
		json_array_append_new(errors, json_pack("{s:s, s:s}", "field", "resume_from",
		                                        "message", "must be an object"));
		return;
	}
	const char *key;
	json_t *v;
	json_object_foreach((json_t *)r, key, v)
	{
		if (strcmp(key, "job_id") != 0 && strcmp(key, "stage") != 0) {
			char *f = xasprintf("resume_from.%s", key);
			json_array_append_new(errors, json_pack("{s:s, s:s}", "field", f, "message",
			                                        "unknown field"));
			free(f);
		}
	}
	const json_t *jid = json_object_get(r, "job_id");
	if (!json_is_string(jid) || !id_uuid_valid(json_string_value(jid)))
		json_array_append_new(errors, json_pack("{s:s, s:s}", "field", "resume_from.job_id",
		                                        "message",
		                                        jid ? "must be a job id" : "is required"));
	const json_t *st = json_object_get(r, "stage");
	const struct stage_def *sd = NULL;
	if (!json_is_string(st))
		json_array_append_new(errors, json_pack("{s:s, s:s}", "field", "resume_from.stage",
		                                        "message",
		                                        st ? "must be a string" : "is required"));
	else if (pipe && (sd = pipeline_stage_find(pipe, json_string_value(st))) == NULL)
		json_array_append_new(errors,
		                      json_pack("{s:s, s:s}", "field", "resume_from.stage",
		                                "message", "no such stage in the pipeline"));
	if (sd)
		*stage_idx = (size_t)(sd - pipe->stages);
}

struct resume_call {
	struct api_ctx *ctx;
	struct http_req *req;
	struct job_op *op;
	char project[AUTH_PROJECT_MAX + 1];
	json_t *doc, *effective;
	char *idem, *upload_key;
	const struct pipeline *pipe;
	size_t stage_idx;
	unsigned char hash[32];
	bool *reused;
};

static void resume_call_free(struct resume_call *rc)
{
	json_decref(rc->doc);
	json_decref(rc->effective);
	free(rc->idem);
	free(rc->upload_key);
	free(rc->reused);
	free(rc);
}

static void resume_abort_cb(struct http_req *req, void *arg)
{
	struct resume_call *rc = arg;
	job_op_cancel(rc->op);
	resume_call_free(rc);
}

static void resume_submit_done_cb(enum job_submit_result r, json_t *job, int64_t rev,
                                  const struct pg_error *err, void *arg)
{
	struct resume_call *rc = arg;
	struct job_call *c = xcalloc(1, sizeof *c);
	c->ctx = rc->ctx;
	c->req = rc->req;
	resume_call_free(rc);
	submit_done_cb(r, job, rev, err, c);
}

static void resume_got_cb(json_t *earlier, int64_t rev, const struct pg_error *err, void *arg)
{
	struct resume_call *rc = arg;
	struct http_req *req = rc->req;
	rc->op = NULL;
	(void)rev;
	if (err || earlier == NULL) {
		if (err)
			api_reply_db_error(req, err);
		else
			http_reply_problem(req, 404, "not-found", NULL,
			                   "resume_from.job_id: no such job in this project", NULL);
		resume_call_free(rc);
		return;
	}
	const char *ep = json_string_value(json_object_get(earlier, "pipeline"));
	if (ep == NULL || strcmp(ep, rc->pipe->name) != 0) {
		json_decref(earlier);
		reply_field_422(req, "resume_from.job_id", "the earlier job ran another pipeline");
		resume_call_free(rc);
		return;
	}
	/* The stage and its dependents run again; every other stage is taken
	 * over, and must have completed in the earlier job. */
	size_t n = rc->pipe->nstages;
	bool *rerun = xcalloc(n, sizeof *rerun);
	dag_descendants(rc->pipe->dag, rc->stage_idx, true, rerun);
	rc->reused = xcalloc(n, sizeof *rc->reused);
	json_t *missing = json_array();
	for (size_t i = 0; i < n; i++) {
		if (rerun[i])
			continue;
		rc->reused[i] = true;
		const char *status = NULL;
		size_t k;
		json_t *st;
		json_array_foreach(json_object_get(earlier, "stages"), k, st)
		{
			if (strcmp(json_string_value(json_object_get(st, "stage")),
			           rc->pipe->stages[i].name) == 0)
				status = json_string_value(json_object_get(st, "status"));
		}
		if (status == NULL || strcmp(status, "completed") != 0)
			json_array_append_new(missing, json_string(rc->pipe->stages[i].name));
	}
	free(rerun);
	json_decref(earlier);
	if (json_array_size(missing) > 0) {
		json_t *extra = json_pack("{s:o}", "stages", missing);
		http_reply_problem(req, 409, "resume-not-possible", "Cannot resume",
		                   "stages to take over did not complete in the earlier job",
		                   extra);
		json_decref(extra);
		resume_call_free(rc);
		return;
	}
	json_decref(missing);
	struct job_submit s = {
	        .project_id = rc->project,
	        .pipeline = rc->pipe,
	        .params = rc->effective,
	        .input = json_object_get(rc->doc, "input"),
	        .idempotency_key = rc->idem,
	        .input_upload = rc->upload_key,
	        .request_id = http_req_id(req),
	        .resume_from = json_object_get(rc->doc, "resume_from"),
	        .reused = rc->reused,
	};
	memcpy(s.request_hash, rc->hash, sizeof s.request_hash);
	rc->op = job_submit(rc->ctx->engine, &s, resume_submit_done_cb, rc);
}

/* JSON a client sends is nested at most this deep (params, input). */
#define JSON_DEPTH_MAX 64

/* True when v nests deeper than max (arrays and objects count). */
static bool json_too_deep(const json_t *v, int max)
{
	if (max < 0)
		return true;
	size_t i;
	const char *k;
	json_t *x;
	if (json_is_array(v)) {
		json_array_foreach((json_t *)v, i, x) if (json_too_deep(x, max - 1)) return true;
	} else if (json_is_object(v)) {
		json_object_foreach((json_t *)v, k, x) if (json_too_deep(x, max - 1)) return true;
	}
	return false;
}

/* Every quota refusal names the limit, its value and the current usage. */
static void reply_quota(struct http_req *req, const struct quota_result *r)
{
	json_t *extra = json_pack("{s:s, s:I, s:I}", "limit", r->limit, "value",
	                          (json_int_t)r->value, "usage", (json_int_t)r->usage);
	char *detail = NULL;
	int status = 429;
	const char *slug = "quota-exceeded", *title = "Quota exceeded";
	switch (r->verdict) {
	case QUOTA_RATE: {
		json_object_set_new(extra, "value", json_real(r->rate));
		char ra[24];
		snprintf(ra, sizeof ra, "%lld", (long long)r->retry_after_s);
		http_set_header(req, "Retry-After", ra);
		detail = xasprintf("the project may submit %g jobs per second; retry in %llds",
		                   r->rate, (long long)r->retry_after_s);
		break;
	}
	case QUOTA_INPUT_TOO_LARGE:
		status = 413;
		slug = "input-too-large";
		title = "Input too large";
		detail = xasprintf("the request takes %lld bytes; the project's max_input_bytes is "
		                   "%lld",
		                   (long long)r->usage, (long long)r->value);
		break;
	default:
		detail = xasprintf("the project has %lld jobs waiting; its max_queued_jobs is %lld",
		                   (long long)r->usage, (long long)r->value);
		break;
	}
	http_reply_problem(req, status, slug, title, detail, extra);
	free(detail);
	json_decref(extra);
}

static void jobs_create_checked(struct http_req *req, const struct auth_principal *p,
                                struct api_ctx *ctx, const char *upload_key);

struct quota_call {
	struct api_ctx *ctx;
	struct http_req *req;
	struct quota_op *op;
	struct store_op *sop;
	char *upload_key;
	struct auth_principal p;
};

static void quota_call_free(struct quota_call *c)
{
	quota_op_cancel(c->op);
	store_op_cancel(c->sop);
	free(c->upload_key);
	free(c);
}

static void quota_abort_cb(struct http_req *req, void *arg)
{
	(void)req;
	quota_call_free(arg);
}

static void upload_head_cb(const struct store_error *err, const struct store_object_info *info,
                           void *arg)
{
	struct quota_call *c = arg;
	struct http_req *req = c->req;
	c->sop = NULL;
	(void)info;
	http_req_on_abort(req, NULL, NULL);
	if (err && err->kind == STORE_ERR_NOT_FOUND)
		reply_field_422(req, "upload",
		                "no such upload in this project (not uploaded yet, or another "
		                "project's)");
	else if (err)
		api_reply_store_error(req, err);
	else
		jobs_create_checked(req, &c->p, c->ctx, c->upload_key);
	quota_call_free(c);
}

/* "upload": the id of a finished upload of this project: its object must be
 * there. Anything else about the body is checked later. */
static bool upload_check_start(struct quota_call *c)
{
	size_t len = 0;
	const char *body = http_req_body(c->req, &len);
	json_t *doc = json_loadb(body, len, JSON_DECODE_ANY, NULL);
	const char *id = json_string_value(json_object_get(doc, "upload"));
	if (id == NULL || !c->ctx->store || !id_uuid_valid(id)) {
		json_decref(doc);
		return false; /* nothing to look up (a bad value is a 422 later) */
	}
	char low[ID_UUID_LEN + 1];
	for (int i = 0; i <= ID_UUID_LEN; i++)
		low[i] = (char)((id[i] >= 'A' && id[i] <= 'F') ? id[i] + 32 : id[i]);
	json_decref(doc);
	c->upload_key = xasprintf("%s/uploads/%s", c->p.project_id, low);
	http_req_on_abort(c->req, quota_abort_cb, c);
	c->sop = store_head(c->ctx->store, c->upload_key, upload_head_cb, c);
	return true;
}

static void quota_done_cb(const struct quota_result *r, const struct pg_error *err, void *arg)
{
	struct quota_call *c = arg;
	struct http_req *req = c->req;
	http_req_on_abort(req, NULL, NULL);
	c->op = NULL;
	if (err)
		api_reply_db_error(req, err);
	else if (r->verdict == QUOTA_NO_PROJECT)
		http_reply_problem(req, 403, "forbidden", NULL,
		                   "the key's project no longer exists", NULL);
	else if (r->verdict != QUOTA_OK)
		reply_quota(req, r);
	else if (upload_check_start(c))
		return;
	else
		jobs_create_checked(req, &c->p, c->ctx, NULL);
	quota_call_free(c);
}

/* The project's rate first (no I/O), then its input size and queue. */
static void jobs_create_authed(struct http_req *req, const struct auth_principal *p, void *arg)
{
	struct api_ctx *ctx = arg;
	if (ctx->quota) {
		struct quota_result r;
		quota_take(ctx->quota, p->project_id, clock_mono_us(), &r);
		if (r.verdict != QUOTA_OK) {
			reply_quota(req, &r);
			return;
		}
		size_t len = 0;
		(void)http_req_body(req, &len);
		struct quota_call *c = xcalloc(1, sizeof *c);
		c->ctx = ctx;
		c->req = req;
		c->p = *p;
		http_req_on_abort(req, quota_abort_cb, c);
		c->op = quota_check(ctx->quota, p->project_id, len, quota_done_cb, c);
		return;
	}
	jobs_create_checked(req, p, ctx, NULL);
}

static void jobs_create_checked(struct http_req *req, const struct auth_principal *p,
                                struct api_ctx *ctx, const char *upload_key)
{
	json_t *doc = api_read_json_body(req, false);
	if (doc == NULL)
		return;
	if (!json_is_object(doc)) {
		reply_field_422(req, "", "the body must be a JSON object");
		json_decref(doc);
		return;
	}
	json_t *errors = json_array();
	const char *key;
	json_t *val;
	json_object_foreach(doc, key, val)
	{
		if (strcmp(key, "pipeline") != 0 && strcmp(key, "params") != 0 &&
		    strcmp(key, "input") != 0 && strcmp(key, "resume_from") != 0 &&
		    strcmp(key, "upload") != 0)
			json_array_append_new(errors, json_pack("{s:s, s:s}", "field", key,
			                                        "message", "unknown field"));
	}
	const json_t *jp = json_object_get(doc, "pipeline");
	const struct pipeline *pipe = NULL;
	if (!json_is_string(jp))
		json_array_append_new(errors,
		                      json_pack("{s:s, s:s}", "field", "pipeline", "message",
		                                jp ? "must be a string" : "is required"));
	else if ((pipe = pipeline_set_find(ctx->pipelines, json_string_value(jp))) == NULL)
		json_array_append_new(errors, json_pack("{s:s, s:s}", "field", "pipeline",
		                                        "message", "no such pipeline"));
	const json_t *params = json_object_get(doc, "params");
	if (params && !json_is_object(params)) {
		json_array_append_new(errors, json_pack("{s:s, s:s}", "field", "params", "message",
		                                        "must be an object"));
		params = NULL;
	}
	if (params) {
		char *ps = json_dumps(params, JSON_COMPACT);
		if (ps && (int64_t)strlen(ps) > ctx->app->cfg->limits.max_params_bytes) {
			char *detail =
			        xasprintf("params take %zu bytes; the limit is %lld", strlen(ps),
			                  (long long)ctx->app->cfg->limits.max_params_bytes);
			free(ps);
			json_decref(errors);
			json_decref(doc);
			http_reply_problem(req, 413, "params-too-large", "Params too large", detail,
			                   NULL);
			free(detail);
			return;
		}
		free(ps);
	}
	static const char *const deep_fields[] = {"params", "input"};
	for (size_t i = 0; i < 2; i++) {
		const json_t *f = json_object_get(doc, deep_fields[i]);
		if (f && json_too_deep(f, JSON_DEPTH_MAX))
			json_array_append_new(errors,
			                      json_pack("{s:s, s:s}", "field", deep_fields[i],
			                                "message", "nested deeper than 64 levels"));
	}
	const json_t *up = json_object_get(doc, "upload");
	if (up && (!json_is_string(up) || !id_uuid_valid(json_string_value(up))))
		json_array_append_new(errors, json_pack("{s:s, s:s}", "field", "upload", "message",
		                                        "must be an upload id (a UUID)"));
	else if (up && upload_key == NULL)
		json_array_append_new(errors, json_pack("{s:s, s:s}", "field", "upload", "message",
		                                        "uploads need an object store"));
	const json_t *resume = json_object_get(doc, "resume_from");
	size_t resume_stage = 0;
	if (resume)
		resume_check(resume, pipe, errors, &resume_stage);
	json_t *effective = NULL;
	if (pipe && json_array_size(errors) == 0) {
		json_t *perr = pipeline_check_params(pipe, params, &effective);
		if (perr) {
			json_array_extend(errors, perr);
			json_decref(perr);
		}
	}
	if (json_array_size(errors) > 0) {
		reply_422(req, "the request has invalid fields", errors);
		json_decref(effective);
		json_decref(doc);
		return;
	}
	json_decref(errors);
	const char *idem = http_req_header(req, "Idempotency-Key");
	if (idem && !idempotency_key_ok(idem)) {
		http_reply_problem(req, 400, "bad-idempotency-key", "Bad Idempotency-Key",
		                   "Idempotency-Key must be 1-255 visible ASCII characters", NULL);
		json_decref(effective);
		json_decref(doc);
		return;
	}
	struct job_submit s = {
	        .project_id = p->project_id,
	        .pipeline = pipe,
	        .params = effective,
	        .input = json_object_get(doc, "input"),
	        .idempotency_key = idem,
	        .request_id = http_req_id(req),
	        .input_upload = upload_key,
	};
	job_request_hash(doc, s.request_hash);
	if (resume) {
		/* The earlier job decides which stages are taken over. */
		struct resume_call *rc = xcalloc(1, sizeof *rc);
		rc->ctx = ctx;
		rc->req = req;
		snprintf(rc->project, sizeof rc->project, "%s", p->project_id);
		rc->doc = doc;
		rc->effective = effective;
		rc->idem = idem ? xstrdup(idem) : NULL;
		rc->upload_key = upload_key ? xstrdup(upload_key) : NULL;
		rc->pipe = pipe;
		rc->stage_idx = resume_stage;
		memcpy(rc->hash, s.request_hash, sizeof rc->hash);
		http_req_on_abort(req, resume_abort_cb, rc);
		rc->op = job_get(ctx->engine, rc->project,
		                 json_string_value(json_object_get(resume, "job_id")),
		                 resume_got_cb, rc);
		return;
	}
	struct job_call *c = job_call_new(ctx, req, p);
	http_req_on_abort(req, job_call_abort_cb, c);
	c->op = job_submit(ctx->engine, &s, submit_done_cb, c);
	json_decref(effective);
	json_decref(doc);
}

/* Until the schema is known to be current nothing may touch the tables. */
static bool api_ready(struct api_ctx *ctx, struct http_req *req)
{
	if (ctx->migrated)
		return true;
	http_set_header(req, "Retry-After", "1");
	http_reply_problem(req, 503, "starting", "Starting",
	                   "the database schema is being checked or migrated", NULL);
	return false;
}

/* --- GET /v1/jobs/{id} --------------------------------------------------- */

static void get_done_cb(json_t *job, int64_t rev, const struct pg_error *err, void *arg)
{
	struct job_call *c = arg;
	struct http_req *req = c->req;
	free(c);
	if (err) {
		api_reply_db_error(req, err);
	} else if (job == NULL) {
		api_reply_no_such_job(req);
	} else if (etag_matches(req, rev)) {
		json_decref(job);
		set_etag(req, rev);
		http_reply(req, 304, NULL, NULL, 0);
	} else {
		set_etag(req, rev);
		http_reply_json(req, 200, job);
	}
}

static void jobs_get_authed(struct http_req *req, const struct auth_principal *p, void *arg)
{
	struct api_ctx *ctx = arg;
	char lower[ID_UUID_LEN + 1];
	if (!api_job_id_param(req, lower))
		return;
	/* The cheap path: the revision this instance last saw still matches. */
	int64_t rev;
	if (job_rev_cached(ctx->engine, p->project_id, lower, &rev) && etag_matches(req, rev)) {
		set_etag(req, rev);
		http_reply(req, 304, NULL, NULL, 0);
		return;
	}
	struct job_call *c = job_call_new(ctx, req, p);
	http_req_on_abort(req, job_call_abort_cb, c);
	c->op = job_get(ctx->engine, p->project_id, lower, get_done_cb, c);
}

/* --- GET /v1/jobs -------------------------------------------------------- */

static void list_done_cb(json_t *page, const struct pg_error *err, void *arg)
{
	struct job_call *c = arg;
	struct http_req *req = c->req;
	free(c);
	if (err)
		api_reply_db_error(req, err);
	else
		http_reply_json(req, 200, page);
}

static bool parse_limit(const char *s, size_t *out)
{
	char *end;
	long v = strtol(s, &end, 10);
	if (*s == '\0' || *end || v < 1 || v > LIST_LIMIT_MAX)
		return false;
	*out = (size_t)v;
	return true;
}

static void jobs_list_authed(struct http_req *req, const struct auth_principal *p, void *arg)
{
	struct api_ctx *ctx = arg;
	struct job_list_query q = {.project_id = p->project_id, .limit = LIST_LIMIT_DEFAULT};
	char cursor[ID_UUID_LEN + 1];
	json_t *errors = json_array();
	const char *v;
	enum job_status st;
	if ((v = http_req_query(req, "status")) != NULL) {
		if (job_status_parse(v, &st))
			q.status = v;
		else
			json_array_append_new(
			        errors, json_pack("{s:s, s:s}", "field", "status", "message",
			                          "one of pending, queued, running, completed, "
			                          "failed, cancelled"));
	}
	if ((v = http_req_query(req, "pipeline")) != NULL)
		q.pipeline = v;
	if ((v = http_req_query(req, "created_after")) != NULL &&
	    !clock_parse_rfc3339(v, &q.created_after_us))
		json_array_append_new(errors, json_pack("{s:s, s:s}", "field", "created_after",
		                                        "message", "an RFC 3339 timestamp"));
	if ((v = http_req_query(req, "limit")) != NULL && !parse_limit(v, &q.limit))
		json_array_append_new(errors, json_pack("{s:s, s:s}", "field", "limit", "message",
		                                        "an integer from 1 to 200"));
	if ((v = http_req_query(req, "cursor")) != NULL) {
		if (job_cursor_decode(v, cursor))
			q.cursor_id = cursor;
		else
			json_array_append_new(errors,
			                      json_pack("{s:s, s:s}", "field", "cursor", "message",
			                                "not a cursor this API returned"));
	}
	if (json_array_size(errors) > 0) {
		reply_422(req, "invalid query parameters", errors);
		return;
	}
	json_decref(errors);
	struct job_call *c = job_call_new(ctx, req, p);
	http_req_on_abort(req, job_call_abort_cb, c);
	c->op = job_list(ctx->engine, &q, list_done_cb, c);
}

/* --- DELETE /v1/jobs/{id} ------------------------------------------------ */

/* Cancel: read the job, then move it and its unstarted tasks to cancelled in
 * one transaction fenced by the statuses just read. If something else moved
 * first, the fence refuses the change and the job is read again. */
struct cancel_call {
	struct api_ctx *ctx;
	struct http_req *req;
	struct job_op *op;
	struct job_txn *txn;
	char project[AUTH_PROJECT_MAX + 1];
	char job_id[ID_UUID_LEN + 1];
	int tries;
};

#define CANCEL_TRIES 3

static void cancel_read(struct cancel_call *c);

static void cancel_abort_cb(struct http_req *req, void *arg)
{
	struct cancel_call *c = arg;
	job_op_cancel(c->op);
	job_txn_detach(c->txn);
	free(c);
}

static void cancel_reply_cb(json_t *job, int64_t rev, const struct pg_error *err, void *arg)
{
	struct cancel_call *c = arg;
	struct http_req *req = c->req;
	free(c);
	if (err) {
		api_reply_db_error(req, err);
	} else if (job == NULL) {
		api_reply_no_such_job(req);
	} else {
		set_etag(req, rev);
		http_reply_json(req, 202, job);
	}
}

static void cancel_done_cb(size_t applied, size_t total, const bool *which,
                           const struct pg_error *err, void *arg)
{
	struct cancel_call *c = arg;
	c->txn = NULL;
	if (err) {
		http_req_on_abort(c->req, NULL, NULL);
		struct http_req *req = c->req;
		free(c);
		api_reply_db_error(req, err);
		return;
	}
	/* The job change is the first of the batch; if it didn't apply, the job
	 * moved under us: look again. */
	if (applied == 0 && ++c->tries < CANCEL_TRIES) {
		cancel_read(c);
		return;
	}
	c->op = job_get(c->ctx->engine, c->project, c->job_id, cancel_reply_cb, c);
}

static void cancel_got_cb(json_t *job, int64_t rev, const struct pg_error *err, void *arg)
{
	struct cancel_call *c = arg;
	c->op = NULL;
	struct http_req *req = c->req;
	if (err || job == NULL) {
		free(c);
		api_reply_no_job(req, err);
		json_decref(job);
		return;
	}
	enum job_status st = JOB_PENDING;
	(void)job_status_parse(json_string_value(json_object_get(job, "status")), &st);
	if (st == JOB_CANCELLED) { /* idempotent */
		free(c);
		set_etag(req, rev);
		http_reply_json(req, 202, job);
		return;
	}
	if (job_status_terminal(st)) {
		free(c);
		json_t *extra = json_pack("{s:s}", "job_status", job_status_name(st));
		http_reply_problem(
		        req, 409, "job-finished", "Job already finished",
		        "a completed or failed job cannot be cancelled; retry it instead", extra);
		json_decref(extra);
		json_decref(job);
		return;
	}
	const char *pipeline = json_string_value(json_object_get(job, "pipeline"));
	struct job_ref jr = {c->job_id, c->project, pipeline, http_req_id(req)};
	c->txn = job_txn_new(c->ctx->engine);
	bool ok = job_set_status(c->txn, &jr, st, JOB_CANCELLED, "cancelled_by_client", NULL);
	size_t i;
	json_t *stage;
	json_array_foreach(json_object_get(job, "stages"), i, stage)
	{
		enum task_status ts;
		if (!task_status_parse(json_string_value(json_object_get(stage, "status")), &ts) ||
		    (ts != TASK_PENDING && ts != TASK_READY))
			continue; /* settled, or running: its module is told by the engine */
		struct task_ref tr = stage_task_ref(stage, c->job_id, c->project, pipeline, req);
		struct task_set_opts o = {.with_job = true};
		ok = task_set_status(c->txn, &tr, ts, TASK_CANCELLED, "job_cancelled", &o) && ok;
	}
	json_decref(job);
	if (!ok) {
		job_txn_free(c->txn);
		free(c);
		http_reply_problem(req, 500, "internal", NULL, "the job could not be cancelled",
		                   NULL);
		return;
	}
	job_txn_commit(c->txn, cancel_done_cb, c);
}

static void cancel_read(struct cancel_call *c)
{
	c->op = job_get(c->ctx->engine, c->project, c->job_id, cancel_got_cb, c);
}

static void jobs_cancel_authed(struct http_req *req, const struct auth_principal *p, void *arg)
{
	struct api_ctx *ctx = arg;
	char id[ID_UUID_LEN + 1];
	if (!api_job_id_param(req, id))
		return;
	struct cancel_call *c = xcalloc(1, sizeof *c);
	c->ctx = ctx;
	c->req = req;
	snprintf(c->project, sizeof c->project, "%s", p->project_id);
	memcpy(c->job_id, id, sizeof c->job_id);
	http_req_on_abort(req, cancel_abort_cb, c);
	cancel_read(c);
}

/* --- POST /v1/jobs/{id}/retry ------------------------------------------- */

struct retry_call {
	struct api_ctx *ctx;
	struct http_req *req;
	struct job_op *op;
	struct job_txn *txn;
	char project[AUTH_PROJECT_MAX + 1];
	char job_id[ID_UUID_LEN + 1];
	char *from_stage; /* NULL: the first failed stage */
};

static void retry_call_free(struct retry_call *c)
{
	free(c->from_stage);
	free(c);
}

static void retry_abort_cb(struct http_req *req, void *arg)
{
	struct retry_call *c = arg;
	job_op_cancel(c->op);
	if (c->txn)
		job_txn_detach(c->txn);
	retry_call_free(c);
}

static void retry_reply_cb(json_t *job, int64_t rev, const struct pg_error *err, void *arg)
{
	struct retry_call *c = arg;
	struct http_req *req = c->req;
	retry_call_free(c);
	if (err || job == NULL) {
		api_reply_no_job(req, err);
		return;
	}
	set_etag(req, rev);
	http_reply_json(req, 202, job);
}

static void retry_done_cb(size_t applied, size_t total, const bool *which,
                          const struct pg_error *err, void *arg)
{
	struct retry_call *c = arg;
	c->txn = NULL;
	(void)applied;
	(void)total;
	if (err) {
		struct http_req *req = c->req;
		retry_call_free(c);
		api_reply_db_error(req, err);
		return;
	}
	if (!which[0]) { /* the job moved on between the read and the write */
		struct http_req *req = c->req;
		retry_call_free(c);
		http_reply_problem(
		        req, 409, "conflict", "Conflict",
		        "the job changed while it was being retried; read it and try again", NULL);
		return;
	}
	scheduler_advance(c->ctx->sched, c->job_id);
	c->op = job_get(c->ctx->engine, c->project, c->job_id, retry_reply_cb, c);
}

static void retry_got_cb(json_t *job, int64_t rev, const struct pg_error *err, void *arg)
{
	struct retry_call *c = arg;
	struct http_req *req = c->req;
	c->op = NULL;
	(void)rev;
	if (err || job == NULL) {
		retry_call_free(c);
		api_reply_no_job(req, err);
		return;
	}
	enum job_status st = JOB_PENDING;
	(void)job_status_parse(json_string_value(json_object_get(job, "status")), &st);
	const char *pname = json_string_value(json_object_get(job, "pipeline"));
	const struct pipeline *pipe = pipeline_set_find(c->ctx->pipelines, pname);
	json_t *stages = json_object_get(job, "stages");
	const char *problem = NULL;
	bool running = false;
	size_t i;
	json_t *stg;
	json_array_foreach(stages, i, stg)
	{
		if (strcmp(json_string_value(json_object_get(stg, "status")), "running") == 0)
			running = true;
	}
	if (!job_status_terminal(st))
		problem = "the job has not finished; cancel it first or wait";
	else if (running)
		problem = "a stage of the job is still stopping; retry in a moment";
	else if (pipe == NULL || pipe->nstages != json_array_size(stages))
		problem = "the job's pipeline is no longer configured as it ran";
	if (problem) {
		json_t *extra = json_pack("{s:s}", "job_status", job_status_name(st));
		http_reply_problem(req, 409, "job-not-finished", "Job not retryable", problem,
		                   extra);
		json_decref(extra);
		json_decref(job);
		retry_call_free(c);
		return;
	}
	/* stages come in stage_number order, as pipe->stages */
	ssize_t from = -1;
	if (c->from_stage) {
		const struct stage_def *sd = pipeline_stage_find(pipe, c->from_stage);
		if (sd == NULL) {
			json_decref(job);
			retry_call_free(c);
			reply_field_422(req, "from_stage", "no such stage in the job's pipeline");
			return;
		}
		from = sd - pipe->stages;
	} else {
		const char *want[] = {"failed", "cancelled"};
		for (size_t w = 0; w < 2 && from < 0; w++) {
			json_array_foreach(stages, i, stg)
			{
				if (strcmp(json_string_value(json_object_get(stg, "status")),
				           want[w]) == 0) {
					from = (ssize_t)i;
					break;
				}
			}
		}
	}
	if (from < 0) {
		json_decref(job);
		retry_call_free(c);
		http_reply_problem(req, 409, "nothing-to-retry", "Nothing to retry",
		                   "every stage completed; name one with from_stage", NULL);
		return;
	}
	/* The stage and its dependents run again, and so does every stage that
	 * failed or was cancelled (a fail-fast stops parallel branches), with
	 * theirs: a retried job can only complete with every stage done. */
	bool *reset = xcalloc(pipe->nstages, sizeof *reset);
	bool *more = xcalloc(pipe->nstages, sizeof *more);
	dag_descendants(pipe->dag, (size_t)from, true, reset);
	json_array_foreach(stages, i, stg)
	{
		const char *ss = json_string_value(json_object_get(stg, "status"));
		if (strcmp(ss, "failed") != 0 && strcmp(ss, "cancelled") != 0)
			continue;
		dag_descendants(pipe->dag, i, true, more);
		for (size_t k = 0; k < pipe->nstages; k++)
			reset[k] = reset[k] || more[k];
	}
	free(more);
	struct job_ref jr = {c->job_id, c->project, pname, http_req_id(req)};
	c->txn = job_txn_new(c->ctx->engine);
	int attempt = (int)json_integer_value(json_object_get(job, "attempt"));
	json_t *data = json_pack("{s:i, s:s}", "attempt", attempt + 1, "from_stage",
	                         pipe->stages[from].name);
	bool ok = job_set_status_data(c->txn, &jr, st, JOB_QUEUED, "requested", NULL, data);
	json_decref(data);
	json_array_foreach(stages, i, stg)
	{
		enum task_status ts;
		if (!reset[i] ||
		    !task_status_parse(json_string_value(json_object_get(stg, "status")), &ts) ||
		    ts == TASK_PENDING)
			continue;
		struct task_ref tr = stage_task_ref(stg, c->job_id, c->project, pname, req);
		struct task_set_opts o = {.with_job = true};
		ok = task_set_status(c->txn, &tr, ts, TASK_PENDING, "retry", &o) && ok;
	}
	free(reset);
	json_decref(job);
	if (!ok) {
		job_txn_free(c->txn);
		retry_call_free(c);
		http_reply_problem(req, 500, "internal", NULL, "the job could not be retried",
		                   NULL);
		return;
	}
	job_txn_commit(c->txn, retry_done_cb, c);
}

static void jobs_retry_authed(struct http_req *req, const struct auth_principal *p, void *arg)
{
	struct api_ctx *ctx = arg;
	char id[ID_UUID_LEN + 1];
	if (!api_job_id_param(req, id))
		return;
	size_t len;
	(void)http_req_body(req, &len);
	char *from = NULL;
	if (len > 0) {
		json_t *doc = api_read_json_body(req, false);
		if (doc == NULL)
			return;
		json_t *errors = json_array();
		if (!json_is_object(doc)) {
			json_array_append_new(errors,
			                      json_pack("{s:s, s:s}", "field", "", "message",
			                                "the body must be a JSON object"));
		} else {
			const char *key;
			json_t *v;
			json_object_foreach(doc, key, v)
			{
				if (strcmp(key, "from_stage") != 0)
					json_array_append_new(
					        errors, json_pack("{s:s, s:s}", "field", key,
					                          "message", "unknown field"));
			}
			json_t *fs = json_object_get(doc, "from_stage");
			if (fs && !json_is_string(fs) && !json_is_null(fs))
				json_array_append_new(errors,
				                      json_pack("{s:s, s:s}", "field", "from_stage",
				                                "message", "must be a string"));
			else if (json_is_string(fs))
				from = xstrdup(json_string_value(fs));
		}
		json_decref(doc);
		if (json_array_size(errors) > 0) {
			free(from);
			reply_422(req, "the request has invalid fields", errors);
			return;
		}
		json_decref(errors);
	}
	struct retry_call *c = xcalloc(1, sizeof *c);
	c->ctx = ctx;
	c->req = req;
	c->from_stage = from;
	snprintf(c->project, sizeof c->project, "%s", p->project_id);
	memcpy(c->job_id, id, sizeof c->job_id);
	http_req_on_abort(req, retry_abort_cb, c);
	c->op = job_get(ctx->engine, c->project, c->job_id, retry_got_cb, c);
}

/* --- GET /v1/jobs/{id}/tasks/{task_id} ------------------------------------ */

struct task_call {
	struct api_ctx *ctx;
	struct http_req *req;
	struct job_op *op;
	char project[AUTH_PROJECT_MAX + 1];
	char job_id[ID_UUID_LEN + 1], task_id[ID_UUID_LEN + 1];
	json_t *task;
};

static void task_call_free(struct task_call *c)
{
	json_decref(c->task);
	free(c);
}

static void task_abort_cb(struct http_req *req, void *arg)
{
	struct task_call *c = arg;
	job_op_cancel(c->op);
	task_call_free(c);
}

void api_reply_no_such_task(struct http_req *req)
{
	http_reply_problem(req, 404, "not-found", NULL, "no such task in this job", NULL);
}

static void task_attempts_cb(json_t *detail, const struct pg_error *err, void *arg)
{
	struct task_call *c = arg;
	struct http_req *req = c->req;
	c->op = NULL;
	if (err || detail == NULL) {
		task_call_free(c);
		if (err)
			api_reply_db_error(req, err);
		else
			api_reply_no_such_task(req);
		return;
	}
	json_t *t = c->task;
	c->task = NULL;
	task_call_free(c);
	json_object_update(t, detail); /* attempts, files */
	json_decref(detail);
	http_reply_json(req, 200, t);
}

static void task_got_cb(json_t *job, int64_t rev, const struct pg_error *err, void *arg)
{
	struct task_call *c = arg;
	struct http_req *req = c->req;
	c->op = NULL;
	(void)rev;
	if (err || job == NULL) {
		task_call_free(c);
		api_reply_no_job(req, err);
		return;
	}
	size_t i;
	json_t *stg;
	json_array_foreach(json_object_get(job, "stages"), i, stg)
	{
		if (strcmp(json_string_value(json_object_get(stg, "task_id")), c->task_id) == 0) {
			c->task = json_deep_copy(stg);
			break;
		}
	}
	json_decref(job);
	if (c->task == NULL) {
		task_call_free(c);
		api_reply_no_such_task(req);
		return;
	}
	json_object_set_new(c->task, "job_id", json_string(c->job_id));
	c->op = job_task_attempts(c->ctx->engine, c->project, c->job_id, c->task_id,
	                          task_attempts_cb, c);
}

static void jobs_task_authed(struct http_req *req, const struct auth_principal *p, void *arg)
{
	struct api_ctx *ctx = arg;
	char id[ID_UUID_LEN + 1];
	if (!api_job_id_param(req, id))
		return;
	char tid[ID_UUID_LEN + 1];
	if (!api_task_id_param(req, tid))
		return;
	struct task_call *c = xcalloc(1, sizeof *c);
	c->ctx = ctx;
	c->req = req;
	snprintf(c->project, sizeof c->project, "%s", p->project_id);
	memcpy(c->job_id, id, sizeof c->job_id);
	memcpy(c->task_id, tid, sizeof c->task_id);
	http_req_on_abort(req, task_abort_cb, c);
	c->op = job_get(ctx->engine, c->project, c->job_id, task_got_cb, c);
}

/* --- GET /v1/jobs/{id}/input ----------------------------------------------- */

static void input_done_cb(json_t *doc, const struct pg_error *err, void *arg)
{
	struct job_call *c = arg;
	struct http_req *req = c->req;
	free(c);
	if (err || doc == NULL)
		api_reply_no_job(req, err);
	else
		http_reply_json(req, 200, doc);
}

static void jobs_input_authed(struct http_req *req, const struct auth_principal *p, void *arg)
{
	struct api_ctx *ctx = arg;
	char id[ID_UUID_LEN + 1];
	if (!api_job_id_param(req, id))
		return;
	struct job_call *c = job_call_new(ctx, req, p);
	http_req_on_abort(req, job_call_abort_cb, c);
	c->op = job_input(ctx->engine, p->project_id, id, input_done_cb, c);
}

/* --- GET /v1/pipelines --------------------------------------------------- */

static void pipelines_list_authed(struct http_req *req, const struct auth_principal *p, void *arg)
{
	struct api_ctx *ctx = arg;
	json_t *data = json_array();
	for (size_t i = 0; ctx->pipelines && i < ctx->pipelines->npipelines; i++)
		json_array_append_new(data, pipeline_to_json(&ctx->pipelines->pipelines[i]));
	http_reply_json(req, 200, json_pack("{s:o}", "data", data));
}

/* Every route here: the schema must be current (503 starting), then the
 * key must have the scope (401/403), then the handler runs. */
static void guarded(struct http_req *req, void *arg)
{
	struct api_guard *g = arg;
	if (!api_ready(g->ctx, req))
		return;
	auth_require(g->ctx->auth, req, g->scope, g->authed, g->ctx);
}

static struct api_guard *guard(struct api_ctx *ctx, unsigned scope, auth_done_fn authed)
{
	if (ctx->nguards == API_GUARDS_MAX)
		abort(); /* a routing table bigger than the array: a build-time mistake */
	struct api_guard *g = &ctx->guards[ctx->nguards++];
	*g = (struct api_guard){ctx, scope, authed};
	return g;
}

bool api_route_guarded(struct router *r, unsigned methods, const char *template_,
                       struct api_ctx *ctx, unsigned scope, auth_done_fn authed)
{
	return http_route(r, methods, template_, guarded, guard(ctx, scope, authed));
}

bool api_jobs_register(struct router *r, struct api_ctx *ctx)
{
	const unsigned rd = APIKEY_SCOPE_JOBS_READ, wr = APIKEY_SCOPE_JOBS_WRITE;
	return http_route(r, HTTP_M_POST, "/v1/jobs", guarded,
	                  guard(ctx, wr, jobs_create_authed)) &&
	       http_route(r, HTTP_M_GET, "/v1/jobs", guarded, guard(ctx, rd, jobs_list_authed)) &&
	       http_route(r, HTTP_M_GET, "/v1/jobs/{id}", guarded,
	                  guard(ctx, rd, jobs_get_authed)) &&
	       http_route(r, HTTP_M_DELETE, "/v1/jobs/{id}", guarded,
	                  guard(ctx, wr, jobs_cancel_authed)) &&
	       http_route(r, HTTP_M_POST, "/v1/jobs/{id}/retry", guarded,
	                  guard(ctx, wr, jobs_retry_authed)) &&
	       http_route(r, HTTP_M_GET, "/v1/jobs/{id}/tasks/{task_id}", guarded,
	                  guard(ctx, rd, jobs_task_authed)) &&
	       http_route(r, HTTP_M_GET, "/v1/jobs/{id}/input", guarded,
	                  guard(ctx, rd, jobs_input_authed)) &&
	       http_route(r, HTTP_M_GET, "/v1/pipelines", guarded,
	                  guard(ctx, rd, pipelines_list_authed));
}
