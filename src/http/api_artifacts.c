/* What the store holds for a job, over HTTP (ARCHITECTURE.md §6, §7):
 *   GET /v1/jobs/{id}/tasks/{task_id}/artifacts[?attempt=n]
 *       input, output and manifest (inline up to ARTIFACT_INLINE_MAX) and
 *       every file with a signed link that expires;
 *   GET /v1/jobs/{id}/tasks/{task_id}/logs[?attempt=n][&follow=1]
 *       stage.log: the live log on the instance running the stage, else the
 *       stored one (flushed every scheduler.log_flush while it runs);
 *   GET /v1/jobs/{id}/logs[?follow=1]
 *       pipeline.log, rendered from the job's events (the same bytes the
 *       finalizer stores under logs_key once the job has settled);
 *   GET /v1/objects/{key+}?exp=&sig=
 *       the file store's signed links (S3 serves its own).
 * Downloads stream a chunk at a time (store_get_range) as the socket drains,
 * with Range; ?follow=1 keeps the response open and writes what is new every
 * FOLLOW_POLL_MS until the stage or job has ended. */
#include <errno.h>
#include <event2/event.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/app.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/xmalloc.h"
#include "engine/artifacts.h"
#include "engine/job.h"
#include "engine/scheduler.h"
#include "http/api.h"
#include "http/outstream.h"
#include "http/range.h"
#include "http/server.h"
#include "store/store.h"

#define ARTIFACT_INLINE_MAX (256u * 1024) /* input/output inline up to this; above, a link */
#define MANIFEST_MAX (4u << 20)
#define DL_MAX_PENDING (1u << 20) /* queued bytes per download before it is dropped */
#define FOLLOW_POLL_MS 500

void api_reply_store_error(struct http_req *req, const struct store_error *err)
{
	log_warn("http.store_error", "the object store failed a read",
	         LF_STR("error", err->message), LF_STR("request_id", http_req_id(req)));
	http_set_header(req, "Retry-After", "1");
	http_reply_problem(req, 503, "store-unavailable", "Store unavailable",
	                   "the object store is unavailable; retry shortly", NULL);
}

static bool need_store(struct api_ctx *ctx, struct http_req *req)
{
	if (ctx->store)
		return true;
	http_reply_problem(req, 503, "store-unavailable", "Store unavailable",
	                   "this instance has no object store", NULL);
	return false;
}

/* ?attempt=n: 0 when absent; -1 (422 sent) when not a positive integer. */
static int attempt_query(struct http_req *req)
{
	const char *a = http_req_query(req, "attempt");
	if (a == NULL)
		return 0;
	char *end = NULL;
	errno = 0;
	long v = strtol(a, &end, 10);
	if (errno || end == a || *end || v < 1 || v > 1000000) {
		json_t *errs = json_pack("[{s:s, s:s}]", "field", "attempt", "message",
		                         "must be a positive integer");
		json_t *extra = json_pack("{s:o}", "errors", errs);
		http_reply_problem(req, 422, "validation", "Invalid request",
		                   "attempt must be a positive integer", extra);
		json_decref(extra);
		return -1;
	}
	return (int)v;
}

static bool follow_query(struct http_req *req)
{
	const char *f = http_req_query(req, "follow");
	return f && (strcmp(f, "1") == 0 || strcmp(f, "true") == 0);
}

/* The stage entry of job whose task_id is task_id (borrowed), or NULL. */
static json_t *find_stage(json_t *job, const char *task_id)
{
	size_t i;
	json_t *stg;
	json_array_foreach(json_object_get(job, "stages"), i, stg)
	{
		const char *t = json_string_value(json_object_get(stg, "task_id"));
		if (t && strcmp(t, task_id) == 0)
			return stg;
	}
	return NULL;
}

/* "<project>/<job>/NN_<stage>/" plus "attempts/<n>/" for an earlier
 * attempt (attempt 0 or the current one: the stage's own files). */
static char *stage_prefix(const char *project, const char *job_id, const json_t *stage, int attempt)
{
	int current = (int)json_integer_value(json_object_get(stage, "attempt"));
	int number = (int)json_integer_value(json_object_get(stage, "stage_number"));
	const char *name = json_string_value(json_object_get(stage, "stage"));
	if (attempt > 0 && attempt < current)
		return xasprintf("%s/%s/%02d_%s/attempts/%d/", project, job_id, number, name,
		                 attempt);
	return xasprintf("%s/%s/%02d_%s/", project, job_id, number, name);
}

/* Settled stages write nothing more. */
static bool stage_settled(const char *status)
{
	return status && (strcmp(status, "completed") == 0 || strcmp(status, "failed") == 0 ||
	                  strcmp(status, "skipped") == 0 || strcmp(status, "cancelled") == 0);
}

/* The task routes' start: the job and task ids and ?attempt= (-1 when
 * something was answered already), and a store to read. */
static int task_route_params(struct http_req *req, struct api_ctx *ctx, char id[ID_UUID_LEN + 1],
                             char tid[ID_UUID_LEN + 1])
{
	if (!api_job_id_param(req, id) || !api_task_id_param(req, tid) || !need_store(ctx, req))
		return -1;
	return attempt_query(req);
}

/* The stage of task_id in the job just read, with its latest attempt in
 * *current; NULL after answering 503/404 (no job, no such task, an attempt
 * past the latest). job stays the caller's. */
static json_t *task_stage_or_reply(struct http_req *req, json_t *job, const struct pg_error *err,
                                   const char *task_id, int attempt, int *current)
{
	json_t *stage = job ? find_stage(job, task_id) : NULL;
	*current = stage ? (int)json_integer_value(json_object_get(stage, "attempt")) : 0;
	if (!err && stage && attempt <= (*current > 0 ? *current : 1))
		return stage;
	if (err)
		api_reply_db_error(req, err);
	else if (job == NULL)
		api_reply_no_such_job(req);
	else if (stage == NULL)
		api_reply_no_such_task(req);
	else
		http_reply_problem(req, 404, "not-found", NULL, "no such attempt of this task",
		                   NULL);
	return NULL;
}

/* --- Streamed downloads ------------------------------------------------------- */

struct dl {
	struct api_ctx *ctx;
	struct http_req *req; /* until the head is sent */
	struct store_op *op;
	struct outstream *os;
	char *key;
	char *not_found; /* the 404's detail */
	uint64_t off, end;
	bool head_only;
	char ctype[128];
};

static void dl_free(struct dl *d)
{
	store_op_cancel(d->op);
	outstream_free(d->os);
	free(d->key);
	free(d->not_found);
	free(d);
}

static void dl_next(struct dl *d);

static void dl_chunk_cb(const struct store_error *err, const struct store_object_info *info,
                        const char *data, size_t len, void *arg)
{
	struct dl *d = arg;
	(void)info;
	d->op = NULL;
	if (err || len == 0) {
		/* gone or shrunk under us: end short, so the client sees the cut */
		if (err)
			log_warn("http.download_cut", "a download ended early",
			         LF_STR("error", err->message));
		dl_free(d);
		return;
	}
	d->off += len;
	if (!outstream_write(d->os, data, len))
		return; /* on_closed frees it */
	if (outstream_pending(d->os) == 0)
		dl_next(d);
}

static void dl_next(struct dl *d)
{
	if (d->op)
		return;
	if (d->off >= d->end) {
		outstream_end(d->os);
		d->os = NULL;
		dl_free(d);
		return;
	}
	uint64_t want = d->end - d->off;
	if (want > STORE_CHUNK_BYTES)
		want = STORE_CHUNK_BYTES;
	d->op = store_get_range(d->ctx->store, d->key, d->off, (size_t)want, dl_chunk_cb, d);
}

static void dl_drained(struct outstream *os, void *arg)
{
	(void)os;
	dl_next(arg);
}

static void dl_closed(struct outstream *os, void *arg)
{
	(void)os;
	dl_free(arg);
}

static void dl_abort_cb(struct http_req *req, void *arg)
{
	(void)req;
	dl_free(arg);
}

static void dl_head_cb(const struct store_error *err, const struct store_object_info *info,
                       void *arg)
{
	struct dl *d = arg;
	struct http_req *req = d->req;
	d->op = NULL;
	d->req = NULL;
	http_req_on_abort(req, NULL, NULL);
	if (err && err->kind == STORE_ERR_NOT_FOUND) {
		http_reply_problem(req, 404, "not-found", NULL,
		                   d->not_found ? d->not_found : "no such object", NULL);
		dl_free(d);
		return;
	}
	if (err) {
		api_reply_store_error(req, err);
		dl_free(d);
		return;
	}
	uint64_t start = 0, len = info->size;
	char extra[512];
	int status = 200;
	enum http_range_result rr =
	        http_range_parse(http_req_header(req, "Range"), info->size, &start, &len);
	if (rr == HTTP_RANGE_UNSATISFIABLE) {
		char cr[64];
		snprintf(cr, sizeof cr, "bytes */%" PRIu64, info->size);
		http_set_header(req, "Content-Range", cr);
		http_reply_problem(req, 416, "range-not-satisfiable", "Range not satisfiable",
		                   "the range starts past the end of the object", NULL);
		dl_free(d);
		return;
	}
	if (rr == HTTP_RANGE_OK) {
		status = 206;
		snprintf(extra, sizeof extra,
		         "Content-Length: %" PRIu64 "\r\nContent-Range: bytes %" PRIu64 "-%" PRIu64
		         "/%" PRIu64
		         "\r\nAccept-Ranges: bytes\r\nCache-Control: private, no-store\r\n",
		         len, start, start + len - 1, info->size);
	} else {
		start = 0;
		len = info->size;
		snprintf(extra, sizeof extra,
		         "Content-Length: %" PRIu64 "\r\nAccept-Ranges: bytes\r\n"
		         "Cache-Control: private, no-store\r\n",
		         len);
	}
	snprintf(d->ctype, sizeof d->ctype, "%s",
	         info->content_type && info->content_type[0] ? info->content_type
	                                                     : "application/octet-stream");
	if (strncmp(d->ctype, "text/", 5) == 0 && strstr(d->ctype, "charset") == NULL)
		snprintf(d->ctype + strlen(d->ctype), sizeof d->ctype - strlen(d->ctype),
		         "; charset=utf-8");
	int fd = http_req_take_stream_head(req, status, d->ctype, extra);
	if (fd < 0) {
		dl_free(d);
		return;
	}
	d->off = start;
	d->end = d->head_only ? start : start + len;
	d->os = outstream_new(d->ctx->app->base, fd, DL_MAX_PENDING, dl_drained, dl_closed, d);
	dl_next(d);
}

/* Streams key to req, honouring Range; not_found is the 404's detail. */
static void dl_start(struct api_ctx *ctx, struct http_req *req, const char *key,
                     const char *not_found)
{
	struct dl *d = xcalloc(1, sizeof *d);
	d->ctx = ctx;
	d->req = req;
	d->key = xstrdup(key);
	d->not_found = not_found ? xstrdup(not_found) : NULL;
	d->head_only = http_req_method(req) == HTTP_M_HEAD;
	http_req_on_abort(req, dl_abort_cb, d);
	d->op = store_head(ctx->store, key, dl_head_cb, d);
}

/* A text body already in memory, honouring Range. */
static void reply_text_range(struct http_req *req, const char *text, size_t size)
{
	uint64_t start = 0, len = size;
	enum http_range_result rr =
	        http_range_parse(http_req_header(req, "Range"), size, &start, &len);
	http_set_header(req, "Accept-Ranges", "bytes");
	http_set_header(req, "Cache-Control", "no-store");
	char cr[96];
	if (rr == HTTP_RANGE_UNSATISFIABLE) {
		snprintf(cr, sizeof cr, "bytes */%zu", size);
		http_set_header(req, "Content-Range", cr);
		http_reply_problem(req, 416, "range-not-satisfiable", "Range not satisfiable",
		                   "the range starts past the end of the log", NULL);
		return;
	}
	if (rr == HTTP_RANGE_OK) {
		snprintf(cr, sizeof cr, "bytes %" PRIu64 "-%" PRIu64 "/%zu", start, start + len - 1,
		         size);
		http_set_header(req, "Content-Range", cr);
		http_reply(req, 206, "text/plain; charset=utf-8", text + start, (size_t)len);
		return;
	}
	http_reply(req, 200, "text/plain; charset=utf-8", text, size);
}

/* --- GET /v1/objects/{key+}?exp=&sig= -------------------------------------------- */

static void objects_get(struct http_req *req, void *arg)
{
	struct api_ctx *ctx = arg;
	const char *key = http_req_param(req, "key");
	const char *exp = http_req_query(req, "exp");
	const char *sig = http_req_query(req, "sig");
	char *end = NULL;
	long long e = exp ? strtoll(exp, &end, 10) : 0;
	bool ok = ctx->store && key && exp && sig && end && *end == '\0' && end != exp &&
	          store_presign_verify(ctx->store, key, e, sig, clock_now_us() / 1000000);
	if (!ok) {
		http_reply_problem(req, 403, "forbidden", "Forbidden",
		                   "the link is invalid or has expired", NULL);
		return;
	}
	dl_start(ctx, req, key, "the object is gone");
}

/* --- GET /v1/jobs/{id}/tasks/{task_id}/artifacts ------------------------------------ */

enum { ART_MANIFEST, ART_INPUT, ART_OUTPUT, ART_LOG, ART_N };
static const char *const art_file[ART_N] = {"manifest.json", "input.json", "output.json",
                                            "stage.log"};
static const char *const art_name[ART_N] = {"manifest", "input", "output", "stage_log"};

struct art_call {
	struct api_ctx *ctx;
	struct http_req *req;
	struct job_op *op;
	struct store_op *sop[ART_N];
	int left;
	char project[AUTH_PROJECT_MAX + 1];
	char job_id[ID_UUID_LEN + 1], task_id[ID_UUID_LEN + 1];
	int attempt; /* asked for; 0 = the latest */
	bool earlier; /* an archived attempt */
	char *prefix;
	json_t *out;
	json_t *links;
	json_t *truncated;
	struct store_error err; /* the first store failure */
	bool failed;
};

static void art_free(struct art_call *c)
{
	job_op_cancel(c->op);
	for (int i = 0; i < ART_N; i++)
		store_op_cancel(c->sop[i]);
	free(c->prefix);
	json_decref(c->out);
	json_decref(c->links);
	json_decref(c->truncated);
	free(c);
}

static void art_abort_cb(struct http_req *req, void *arg)
{
	(void)req;
	art_free(arg);
}

/* {url, expires_at} for key, or null when links are off. */
static json_t *signed_link(struct api_ctx *ctx, const char *key)
{
	int64_t ttl = ctx->app->cfg->store.url_ttl_ms / 1000;
	if (ttl < 1)
		ttl = 1;
	if (ttl > STORE_PRESIGN_MAX_TTL_S)
		ttl = STORE_PRESIGN_MAX_TTL_S;
	char *url = NULL;
	struct store_error err;
	int64_t now = clock_now_us() / 1000000;
	if (!store_presign_get_at(ctx->store, key, ttl, now, &url, &err))
		return json_null();
	char exp[40];
	clock_fmt_rfc3339_us(exp, sizeof exp, (now + ttl) * 1000000);
	json_t *o = json_pack("{s:s, s:s}", "url", url, "expires_at", exp);
	free(url);
	return o;
}

static void art_finish(struct art_call *c)
{
	struct http_req *req = c->req;
	http_req_on_abort(req, NULL, NULL);
	if (c->failed) {
		api_reply_store_error(req, &c->err);
		art_free(c);
		return;
	}
	json_t *manifest = json_object_get(c->out, "manifest");
	json_t *files = json_array();
	const char *groups[2] = {"outputs", "intermediate_files"};
	for (int g = 0; g < 2; g++) {
		size_t i;
		json_t *f;
		json_array_foreach(json_object_get(manifest, groups[g]), i, f)
		{
			const char *key = json_string_value(json_object_get(f, "key"));
			const char *type = json_string_value(json_object_get(f, "type"));
			if (key == NULL || (type && strcmp(type, "stage-output") == 0))
				continue; /* not kept, or output.json (above) */
			json_t *o = json_pack("{s:O, s:O, s:s, s:O, s:O, s:O, s:O}", "name",
			                      json_object_get(f, "name"), "type",
			                      g == 1 ? json_object_get(f, "content_type")
			                             : json_object_get(f, "type"),
			                      "role", g == 0 ? "output" : "intermediate", "format",
			                      json_object_get(f, "format"), "path",
			                      json_object_get(f, "path"), "size_bytes",
			                      json_object_get(f, "size_bytes"), "sha256",
			                      json_object_get(f, "sha256"));
			if (json_is_null(json_object_get(o, "type")) ||
			    json_object_get(o, "type") == NULL)
				json_object_set_new(o, "type", json_string("file"));
			/* an earlier attempt's files were replaced by the later one's:
			 * its manifest records them, no link can fetch them */
			json_t *link = c->earlier ? json_null() : signed_link(c->ctx, key);
			json_object_set_new(o, "url",
			                    json_is_null(link)
			                            ? json_null()
			                            : json_incref(json_object_get(link, "url")));
			json_object_set_new(o, "expires_at",
			                    json_is_null(link) ? json_null()
			                                       : json_incref(json_object_get(
			                                                 link, "expires_at")));
			json_decref(link);
			json_array_append_new(files, o);
		}
	}
	json_object_set_new(c->out, "files", files);
	json_object_set(c->out, "links", c->links);
	json_object_set(c->out, "truncated", c->truncated);
	json_t *body = c->out;
	c->out = NULL;
	art_free(c);
	http_reply_json(req, 200, body);
}

struct art_slot {
	struct art_call *c;
	int i;
};

static void art_got_cb(const struct store_error *err, const struct store_object_info *info,
                       const char *data, size_t len, void *arg)
{
	struct art_slot *sl = arg;
	struct art_call *c = sl->c;
	int i = sl->i;
	free(sl);
	c->sop[i] = NULL;
	char *key = xasprintf("%s%s", c->prefix, art_file[i]);
	if (err && err->kind == STORE_ERR_TOO_LARGE) {
		/* too big to inline: a link, never the whole object in memory */
		json_array_append_new(c->truncated, json_string(art_name[i]));
		json_object_set_new(c->links, art_name[i], signed_link(c->ctx, key));
	} else if (err && err->kind != STORE_ERR_NOT_FOUND) {
		if (!c->failed)
			c->err = *err;
		c->failed = true;
	} else if (!err) {
		json_object_set_new(c->links, art_name[i], signed_link(c->ctx, key));
		if (i != ART_LOG) {
			json_t *v = json_loadb(data, len, JSON_DECODE_ANY, NULL);
			json_object_set_new(c->out, art_name[i], v ? v : json_null());
		}
		(void)info;
	}
	free(key);
	if (--c->left == 0)
		art_finish(c);
}

static void art_job_cb(json_t *job, int64_t rev, const struct pg_error *err, void *arg)
{
	struct art_call *c = arg;
	struct http_req *req = c->req;
	c->op = NULL;
	(void)rev;
	int current = 0;
	json_t *stage = task_stage_or_reply(req, job, err, c->task_id, c->attempt, &current);
	if (stage == NULL) {
		http_req_on_abort(req, NULL, NULL);
		art_free(c);
		json_decref(job);
		return;
	}
	c->earlier = c->attempt > 0 && c->attempt < current;
	c->prefix = stage_prefix(c->project, c->job_id, stage, c->attempt);
	c->out = json_pack("{s:s, s:O, s:O, s:O, s:i, s:i, s:n, s:n, s:n}", "task_id", c->task_id,
	                   "stage", json_object_get(stage, "stage"), "stage_number",
	                   json_object_get(stage, "stage_number"), "status",
	                   json_object_get(stage, "status"), "attempt",
	                   c->attempt ? c->attempt : current, "attempts", current, "input",
	                   "output", "manifest");
	if (c->earlier) /* that attempt's status is in its manifest */
		json_object_set_new(c->out, "status", json_null());
	json_decref(job);
	c->links = json_pack("{s:n, s:n, s:n, s:n}", "input", "output", "stage_log", "manifest");
	c->truncated = json_array();
	c->left = ART_N;
	for (int i = 0; i < ART_N; i++) {
		struct art_slot *sl = xcalloc(1, sizeof *sl);
		sl->c = c;
		sl->i = i;
		char *key = xasprintf("%s%s", c->prefix, art_file[i]);
		size_t max = i == ART_MANIFEST ? MANIFEST_MAX
		             : i == ART_LOG    ? 1
		                               : ARTIFACT_INLINE_MAX;
		if (i == ART_LOG) /* a link only: read one byte to see it is there */
			c->sop[i] = store_get_range(c->ctx->store, key, 0, max, art_got_cb, sl);
		else
			c->sop[i] = store_get_buf(c->ctx->store, key, max, art_got_cb, sl);
		free(key);
	}
}

static void jobs_artifacts_authed(struct http_req *req, const struct auth_principal *p, void *arg)
{
	struct api_ctx *ctx = arg;
	char id[ID_UUID_LEN + 1], tid[ID_UUID_LEN + 1];
	int attempt = task_route_params(req, ctx, id, tid);
	if (attempt < 0)
		return;
	struct art_call *c = xcalloc(1, sizeof *c);
	c->ctx = ctx;
	c->req = req;
	c->attempt = attempt;
	snprintf(c->project, sizeof c->project, "%s", p->project_id);
	memcpy(c->job_id, id, sizeof c->job_id);
	memcpy(c->task_id, tid, sizeof c->task_id);
	http_req_on_abort(req, art_abort_cb, c);
	c->op = job_get(ctx->engine, c->project, c->job_id, art_job_cb, c);
}

/* --- Following a log ------------------------------------------------------------ *
 * One struct follow per ?follow=1 response: every FOLLOW_POLL_MS it reads the
 * job (or the stage), writes what is new past `off`, and ends once nothing
 * more can come. */
struct follow {
	struct api_ctx *ctx;
	struct outstream *os;
	struct event *timer;
	struct job_op *op;
	struct store_op *sop;
	char project[AUTH_PROJECT_MAX + 1];
	char job_id[ID_UUID_LEN + 1], task_id[ID_UUID_LEN + 1];
	bool task; /* a stage's log; else the job's pipeline.log */
	uint64_t off;
	int attempt; /* the stage attempt being followed */
	bool last; /* the stage settled: one more read, then the end */
	char *key;
};

static void follow_free(struct follow *f)
{
	job_op_cancel(f->op);
	store_op_cancel(f->sop);
	if (f->timer)
		event_free(f->timer);
	outstream_free(f->os);
	free(f->key);
	free(f);
}

static void follow_end(struct follow *f)
{
	outstream_end(f->os);
	f->os = NULL;
	follow_free(f);
}

static void follow_arm(struct follow *f)
{
	struct timeval tv = {0, FOLLOW_POLL_MS * 1000};
	evtimer_add(f->timer, &tv);
}

static void follow_closed(struct outstream *os, void *arg)
{
	(void)os;
	follow_free(arg);
}

static bool follow_write(struct follow *f, const char *data, size_t len)
{
	return len == 0 || outstream_write(f->os, data, len);
}

static void job_follow_cb(json_t *src, const struct pg_error *err, void *arg)
{
	struct follow *f = arg;
	f->op = NULL;
	if (err || src == NULL) {
		follow_end(f);
		return;
	}
	struct buf text = BUF_INIT;
	pipelog_render_tasks(f->job_id, json_string_value(json_object_get(src, "pipeline")),
	                     json_object_get(src, "events"), json_object_get(src, "tasks"), &text);
	bool ok = text.len <= f->off ||
	          follow_write(f, text.data + f->off, text.len - (size_t)f->off);
	if (text.len > f->off)
		f->off = text.len;
	buf_free(&text);
	const char *status = json_string_value(json_object_get(src, "status"));
	bool done = stage_settled(status) && strcmp(status, "skipped") != 0 &&
	            json_integer_value(json_object_get(src, "tasks_running")) == 0;
	json_decref(src);
	if (!ok)
		return; /* closed: on_closed frees */
	if (done)
		follow_end(f);
	else
		follow_arm(f);
}

static void task_follow_read(struct follow *f);

static void task_follow_got(const struct store_error *err, const struct store_object_info *info,
                            const char *data, size_t len, void *arg)
{
	struct follow *f = arg;
	f->sop = NULL;
	(void)info;
	if (err && err->kind != STORE_ERR_NOT_FOUND) {
		follow_arm(f); /* the store is away: try again */
		return;
	}
	if (!err && !follow_write(f, data, len))
		return;
	if (!err)
		f->off += len;
	if (!err && len == STORE_CHUNK_BYTES) { /* more is there already */
		task_follow_read(f);
		return;
	}
	if (f->last)
		follow_end(f);
	else
		follow_arm(f);
}

static void task_follow_read(struct follow *f)
{
	f->sop = store_get_range(f->ctx->store, f->key, f->off, STORE_CHUNK_BYTES, task_follow_got,
	                         f);
}

static void task_follow_cb(json_t *job, int64_t rev, const struct pg_error *err, void *arg)
{
	struct follow *f = arg;
	f->op = NULL;
	(void)rev;
	json_t *stage = job ? find_stage(job, f->task_id) : NULL;
	if (err || stage == NULL) {
		json_decref(job);
		follow_end(f);
		return;
	}
	const char *status = json_string_value(json_object_get(stage, "status"));
	int attempt = (int)json_integer_value(json_object_get(stage, "attempt"));
	if (attempt != f->attempt && f->attempt != 0 && attempt > 0) {
		/* a new attempt starts its own stage.log */
		char sep[64];
		int n = snprintf(sep, sizeof sep, "--- attempt %d ---\n", attempt);
		if (!follow_write(f, sep, (size_t)n)) {
			json_decref(job);
			return;
		}
		f->off = 0;
	}
	if (attempt > 0)
		f->attempt = attempt;
	if (f->key == NULL) {
		char *prefix = stage_prefix(f->project, f->job_id, stage, 0);
		f->key = xasprintf("%sstage.log", prefix);
		free(prefix);
	}
	bool settled = stage_settled(status);
	bool not_started = strcmp(status, "pending") == 0 || strcmp(status, "ready") == 0;
	json_decref(job);
	/* running here: the live log, not the last flush */
	size_t len = 0;
	uint64_t skipped = 0, total = 0;
	const char *live = !settled ? scheduler_task_log(f->ctx->sched, f->task_id, f->off, &len,
	                                                 &skipped, &total)
	                            : NULL;
	if (live) {
		if (!follow_write(f, live, len))
			return;
		f->off = total;
		follow_arm(f);
		return;
	}
	if (not_started) {
		follow_arm(f); /* nothing written yet */
		return;
	}
	f->last = settled;
	task_follow_read(f);
}

static void follow_tick(evutil_socket_t fd, short what, void *arg)
{
	struct follow *f = arg;
	(void)fd;
	(void)what;
	if (outstream_pending(f->os) > 0) { /* a slow reader: wait */
		follow_arm(f);
		return;
	}
	if (f->task)
		f->op = job_get(f->ctx->engine, f->project, f->job_id, task_follow_cb, f);
	else
		f->op = job_log_source(f->ctx->engine, f->project, f->job_id, job_follow_cb, f);
}

/* Hands req's socket to a new follower that starts at once. */
static void follow_start(struct api_ctx *ctx, struct http_req *req, const char *project,
                         const char *job_id, const char *task_id)
{
	int fd = http_req_take_stream(req, "text/plain; charset=utf-8");
	if (fd < 0)
		return;
	struct follow *f = xcalloc(1, sizeof *f);
	f->ctx = ctx;
	f->task = task_id != NULL;
	snprintf(f->project, sizeof f->project, "%s", project);
	snprintf(f->job_id, sizeof f->job_id, "%s", job_id);
	if (task_id)
		snprintf(f->task_id, sizeof f->task_id, "%s", task_id);
	f->os = outstream_new(ctx->app->base, fd, DL_MAX_PENDING, NULL, follow_closed, f);
	f->timer = evtimer_new(ctx->app->base, follow_tick, f);
	event_active(f->timer, EV_TIMEOUT, 0);
}

/* --- GET /v1/jobs/{id}/tasks/{task_id}/logs ------------------------------------------ */

struct log_call {
	struct api_ctx *ctx;
	struct http_req *req;
	struct job_op *op;
	char project[AUTH_PROJECT_MAX + 1];
	char job_id[ID_UUID_LEN + 1], task_id[ID_UUID_LEN + 1];
	int attempt;
	bool follow;
};

static void log_abort_cb(struct http_req *req, void *arg)
{
	struct log_call *c = arg;
	(void)req;
	job_op_cancel(c->op);
	free(c);
}

static void task_log_job_cb(json_t *job, int64_t rev, const struct pg_error *err, void *arg)
{
	struct log_call *c = arg;
	struct http_req *req = c->req;
	(void)rev;
	http_req_on_abort(req, NULL, NULL);
	int current = 0;
	json_t *stage = task_stage_or_reply(req, job, err, c->task_id, c->attempt, &current);
	if (stage == NULL) {
		json_decref(job);
		free(c);
		return;
	}
	bool earlier = c->attempt > 0 && c->attempt < current;
	const char *status = json_string_value(json_object_get(stage, "status"));
	bool running = strcmp(status, "running") == 0;
	if (c->follow && !earlier) {
		follow_start(c->ctx, req, c->project, c->job_id, c->task_id);
		json_decref(job);
		free(c);
		return;
	}
	size_t len = 0;
	uint64_t skipped = 0, total = 0;
	const char *live = running && !earlier ? scheduler_task_log(c->ctx->sched, c->task_id, 0,
	                                                            &len, &skipped, &total)
	                                       : NULL;
	if (live) { /* it runs here: the log so far */
		reply_text_range(req, live, len);
		json_decref(job);
		free(c);
		return;
	}
	char *prefix = stage_prefix(c->project, c->job_id, stage, c->attempt);
	char *key = xasprintf("%sstage.log", prefix);
	dl_start(c->ctx, req, key,
	         running ? "the stage runs on another instance and has not stored its log yet; "
	                   "follow it with ?follow=1"
	                 : "no log is stored for this stage (it has not run yet)");
	free(key);
	free(prefix);
	json_decref(job);
	free(c);
}

static void jobs_task_log_authed(struct http_req *req, const struct auth_principal *p, void *arg)
{
	struct api_ctx *ctx = arg;
	char id[ID_UUID_LEN + 1], tid[ID_UUID_LEN + 1];
	int attempt = task_route_params(req, ctx, id, tid);
	if (attempt < 0)
		return;
	struct log_call *c = xcalloc(1, sizeof *c);
	c->ctx = ctx;
	c->req = req;
	c->attempt = attempt;
	c->follow = follow_query(req);
	snprintf(c->project, sizeof c->project, "%s", p->project_id);
	memcpy(c->job_id, id, sizeof c->job_id);
	memcpy(c->task_id, tid, sizeof c->task_id);
	http_req_on_abort(req, log_abort_cb, c);
	c->op = job_get(ctx->engine, c->project, c->job_id, task_log_job_cb, c);
}

/* --- GET /v1/jobs/{id}/logs ---------------------------------------------------------- */

static void job_log_cb(json_t *src, const struct pg_error *err, void *arg)
{
	struct log_call *c = arg;
	struct http_req *req = c->req;
	http_req_on_abort(req, NULL, NULL);
	if (err || src == NULL) {
		api_reply_no_job(req, err);
		free(c);
		return;
	}
	if (c->follow) {
		follow_start(c->ctx, req, c->project, c->job_id, NULL);
	} else {
		struct buf text = BUF_INIT;
		pipelog_render_tasks(c->job_id, json_string_value(json_object_get(src, "pipeline")),
		                     json_object_get(src, "events"), json_object_get(src, "tasks"),
		                     &text);
		reply_text_range(req, text.data ? text.data : "", text.len);
		buf_free(&text);
	}
	json_decref(src);
	free(c);
}

static void jobs_log_authed(struct http_req *req, const struct auth_principal *p, void *arg)
{
	struct api_ctx *ctx = arg;
	char id[ID_UUID_LEN + 1];
	if (!api_job_id_param(req, id))
		return;
	struct log_call *c = xcalloc(1, sizeof *c);
	c->ctx = ctx;
	c->req = req;
	c->follow = follow_query(req);
	snprintf(c->project, sizeof c->project, "%s", p->project_id);
	memcpy(c->job_id, id, sizeof c->job_id);
	http_req_on_abort(req, log_abort_cb, c);
	c->op = job_log_source(ctx->engine, c->project, c->job_id, job_log_cb, c);
}

bool api_artifacts_register(struct router *r, struct api_ctx *ctx)
{
	const unsigned rd = APIKEY_SCOPE_JOBS_READ;
	bool ok = api_route_guarded(r, HTTP_M_GET, "/v1/jobs/{id}/tasks/{task_id}/artifacts", ctx,
	                            rd, jobs_artifacts_authed) &&
	          api_route_guarded(r, HTTP_M_GET, "/v1/jobs/{id}/tasks/{task_id}/logs", ctx, rd,
	                            jobs_task_log_authed) &&
	          api_route_guarded(r, HTTP_M_GET, "/v1/jobs/{id}/logs", ctx, rd, jobs_log_authed);
	/* the file store's links; S3's point at S3 */
	if (ok && ctx->store && ctx->store->ops->presign_verify)
		ok = http_route(r, HTTP_M_GET, "/v1/objects/{key+}", objects_get, ctx);
	return ok;
}
