/* Uploads (issue "security"; docs/api.md "Uploading an input"):
 *   POST /v1/uploads {size_bytes}     -> a signed PUT link for exactly that
 *       many bytes, valid store.url_ttl: S3's presigned PUT (Content-Length
 *       signed into it) or the file store's HMAC link on this daemon;
 *   PUT /v1/objects/{key+}?exp=&size=&sig=
 *       the file store's upload links: the body must be exactly size bytes.
 * The object lands at <project>/uploads/<id>; POST /v1/jobs {"upload": id}
 * hands it to the job's first stages as the input "upload". The size may not
 * pass the project's max_input_bytes quota nor limits.max_input_bytes (the
 * daemon's body limit, which the file store's PUT goes through). */
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/app.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/xmalloc.h"
#include "engine/quota.h"
#include "http/api.h"
#include "http/server.h"
#include "store/store.h"

struct upload_call {
	struct api_ctx *ctx;
	struct http_req *req;
	struct quota_op *op;
	struct store_op *sop;
	char project[AUTH_PROJECT_MAX + 1];
	uint64_t size;
	char key[STORE_KEY_MAX + 1];
};

static void upload_call_free(struct upload_call *c)
{
	quota_op_cancel(c->op);
	store_op_cancel(c->sop);
	free(c);
}

static void upload_abort_cb(struct http_req *req, void *arg)
{
	(void)req;
	upload_call_free(arg);
}

static void reply_size_limit(struct http_req *req, const char *limit, int64_t value, uint64_t usage)
{
	json_t *extra = json_pack("{s:s, s:I, s:I}", "limit", limit, "value", (json_int_t)value,
	                          "usage", (json_int_t)usage);
	char *detail = xasprintf("an upload may take at most %lld bytes (%s); %llu asked for",
	                         (long long)value, limit, (unsigned long long)usage);
	http_reply_problem(req, 413, "input-too-large", "Input too large", detail, extra);
	free(detail);
	json_decref(extra);
}

static void reply_422(struct http_req *req, const char *field, const char *message)
{
	json_t *extra = json_pack("{s:[{s:s, s:s}]}", "errors", "field", field, "message", message);
	http_reply_problem(req, 422, "validation", "Invalid request", message, extra);
	json_decref(extra);
}

static void upload_quota_cb(const struct quota_result *r, const struct pg_error *err, void *arg)
{
	struct upload_call *c = arg;
	struct http_req *req = c->req;
	struct api_ctx *ctx = c->ctx;
	c->op = NULL;
	http_req_on_abort(req, NULL, NULL);
	if (err) {
		api_reply_db_error(req, err);
		upload_call_free(c);
		return;
	}
	if (r->verdict == QUOTA_INPUT_TOO_LARGE) {
		reply_size_limit(req, "max_input_bytes", r->value, c->size);
		upload_call_free(c);
		return;
	}
	char id[ID_UUID_LEN + 1];
	id_uuid7(id);
	snprintf(c->key, sizeof c->key, "%s/uploads/%s", c->project, id);
	int64_t ttl = ctx->app->cfg->store.url_ttl_ms / 1000;
	if (ttl < 1)
		ttl = 1;
	if (ttl > STORE_PRESIGN_MAX_TTL_S)
		ttl = STORE_PRESIGN_MAX_TTL_S;
	int64_t now = clock_now_us() / 1000000;
	char *url = NULL;
	struct store_error serr;
	if (!store_presign_put_at(ctx->store, c->key, ttl, now, c->size, &url, &serr)) {
		log_warn("http.upload_link", "no upload link could be made",
		         LF_STR("error", serr.message));
		http_reply_problem(req, 503, "uploads-unavailable", "Uploads unavailable",
		                   "this store cannot make upload links (the file store needs "
		                   "store.url_secret)",
		                   NULL);
		upload_call_free(c);
		return;
	}
	char exp[40], len[24];
	clock_fmt_rfc3339_us(exp, sizeof exp, (now + ttl) * 1000000);
	snprintf(len, sizeof len, "%" PRIu64, c->size);
	json_t *body = json_pack("{s:s, s:s, s:s, s:{s:s}, s:I, s:s}", "id", id, "method", "PUT",
	                         "url", url, "headers", "Content-Length", len, "size_bytes",
	                         (json_int_t)c->size, "expires_at", exp);
	free(url);
	log_info("upload.link", "an upload link was handed out", LF_STR("project_id", c->project),
	         LF_STR("upload_id", id), LF_UINT("size_bytes", c->size));
	upload_call_free(c);
	http_reply_json(req, 201, body);
}

static void uploads_create_authed(struct http_req *req, const struct auth_principal *p, void *arg)
{
	struct api_ctx *ctx = arg;
	if (ctx->store == NULL) {
		http_reply_problem(req, 503, "store-unavailable", "Store unavailable",
		                   "this instance has no object store", NULL);
		return;
	}
	size_t len = 0;
	const char *body = http_req_body(req, &len);
	json_error_t jerr;
	json_t *doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
	if (doc == NULL || !json_is_object(doc)) {
		http_reply_problem(req, 400, "invalid-json", "Invalid JSON",
		                   "the body must be a JSON object: {\"size_bytes\": n}", NULL);
		json_decref(doc);
		return;
	}
	const char *k;
	json_t *v;
	json_object_foreach(doc, k, v)
	{
		if (strcmp(k, "size_bytes") != 0) {
			reply_422(req, k, "unknown field");
			json_decref(doc);
			return;
		}
	}
	json_t *sz = json_object_get(doc, "size_bytes");
	if (!json_is_integer(sz) || json_integer_value(sz) < 1) {
		reply_422(req, "size_bytes", "must be an integer of at least 1");
		json_decref(doc);
		return;
	}
	uint64_t size = (uint64_t)json_integer_value(sz);
	json_decref(doc);
	int64_t cap = ctx->app->cfg->limits.max_input_bytes;
	if ((int64_t)size > cap) {
		reply_size_limit(req, "limits.max_input_bytes", cap, size);
		return;
	}
	struct upload_call *c = xcalloc(1, sizeof *c);
	c->ctx = ctx;
	c->req = req;
	c->size = size;
	snprintf(c->project, sizeof c->project, "%s", p->project_id);
	http_req_on_abort(req, upload_abort_cb, c);
	c->op = quota_check(ctx->quota, p->project_id, (size_t)size, upload_quota_cb, c);
}

/* --- PUT /v1/objects/{key+}?exp=&size=&sig= ---------------------------------------- */

static void upload_put_cb(const struct store_error *err, void *arg)
{
	struct upload_call *c = arg;
	struct http_req *req = c->req;
	c->sop = NULL;
	http_req_on_abort(req, NULL, NULL);
	if (err) {
		api_reply_store_error(req, err);
	} else {
		http_reply_json(
		        req, 201,
		        json_pack("{s:s, s:I}", "key", c->key, "size_bytes", (json_int_t)c->size));
	}
	upload_call_free(c);
}

static void objects_put(struct http_req *req, void *arg)
{
	struct api_ctx *ctx = arg;
	const char *key = http_req_param(req, "key");
	const char *exp = http_req_query(req, "exp");
	const char *size = http_req_query(req, "size");
	const char *sig = http_req_query(req, "sig");
	char *e1 = NULL, *e2 = NULL;
	long long e = exp ? strtoll(exp, &e1, 10) : 0;
	unsigned long long n = size ? strtoull(size, &e2, 10) : 0;
	bool ok = ctx->store && key && exp && size && sig && e1 && *e1 == '\0' && e1 != exp && e2 &&
	          *e2 == '\0' && e2 != size && size[0] != '-' &&
	          store_presign_verify_put(ctx->store, key, e, n, sig, clock_now_us() / 1000000);
	if (!ok) {
		http_reply_problem(req, 403, "forbidden", "Forbidden",
		                   "the link is invalid or has expired", NULL);
		return;
	}
	size_t len = 0;
	const char *body = http_req_body(req, &len);
	if ((unsigned long long)len != n) {
		char *detail =
		        xasprintf("this link takes exactly %llu bytes; the body has %zu", n, len);
		http_reply_problem(req, 400, "size-mismatch", "Size mismatch", detail, NULL);
		free(detail);
		return;
	}
	struct upload_call *c = xcalloc(1, sizeof *c);
	c->ctx = ctx;
	c->req = req;
	c->size = n;
	snprintf(c->key, sizeof c->key, "%s", key);
	http_req_on_abort(req, upload_abort_cb, c);
	c->sop = store_put_buf(ctx->store, key, body, len, "application/octet-stream",
	                       upload_put_cb, c);
}

bool api_uploads_register(struct router *r, struct api_ctx *ctx)
{
	bool ok = api_route_guarded(r, HTTP_M_POST, "/v1/uploads", ctx, APIKEY_SCOPE_JOBS_WRITE,
	                            uploads_create_authed);
	if (ok && ctx->store && ctx->store->ops->presign_verify_put)
		ok = http_route(r, HTTP_M_PUT, "/v1/objects/{key+}", objects_put, ctx);
	return ok;
}
