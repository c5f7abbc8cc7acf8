/* /v1/keys: a project's API keys managed over HTTP with an admin key —
 * create, list, read, revoke and rotate. Every route is scoped to the
 * caller's project (another project's key reads as unknown: 404), every
 * write is one statement (one transaction) and every change that can make a
 * key stop working is followed by auth_forget(), so this instance stops
 * accepting the key at once (other instances within their auth cache TTL,
 * auth.h). A new key's secret leaves the process only in the response body:
 * the database gets its SHA-256, the log its public prefix. Like auth.c, the
 * SQL lives here: it is about key rows, which no engine module owns. */
#include <jansson.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/apikey.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/xmalloc.h"
#include "db/pool.h"
#include "http/api.h"
#include "http/auth.h"
#include "http/server.h"

/* GET /v1/keys answers at most this many keys, newest first (has_more says
 * when there are more; `stageline keys list` shows them all). */
#define KEYS_LIST_MAX 1000
#define KEY_NAME_MAX 200
/* A prefix collision (one in 2^47 per existing key) draws a new key. */
#define KEY_INSERT_TRIES 3

#define STMT_CREATE "api_keys_create"
#define STMT_GET "api_keys_get"
#define STMT_LIST "api_keys_list"
#define STMT_REVOKE "api_keys_revoke"
#define STMT_ROTATE "api_keys_rotate"

/* clang-format off */
#define TS(col) "to_char((" col ") AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
#define KEY_STATUS(k)                                                           \
	"CASE WHEN " k ".revoked_at IS NOT NULL AND " k ".revoked_at <= now()" \
	" THEN 'revoked' WHEN " k ".expires_at IS NOT NULL AND "               \
	k ".expires_at <= now() THEN 'expired' ELSE 'active' END"
/* The ApiKey object of proto/openapi.yaml, as text. */
#define KEY_JSON(k)                                                             \
	"json_build_object('id', " k ".id, 'prefix', " k ".prefix,"            \
	" 'name', " k ".name, 'scopes', to_json(" k ".scopes),"                \
	" 'created_at', " TS(k ".created_at") ","                              \
	" 'expires_at', " TS(k ".expires_at") ","                              \
	" 'last_used_at', " TS(k ".last_used_at") ","                          \
	" 'revoked_at', " TS(k ".revoked_at") ","                              \
	" 'status', " KEY_STATUS(k) ")::text"

/* $7: the lifetime in seconds, or NULL; $8: an absolute expiry in epoch
 * microseconds, or NULL; neither: never expires. */
static const char sql_create[] =
	"INSERT INTO api_keys AS k (id, project_id, prefix, hash, scopes, name, expires_at)"
	" VALUES ($1, $2, $3, decode($4, 'hex'), string_to_array($5, ','), $6,"
	" CASE WHEN $7::int8 IS NOT NULL THEN now() + $7::int8 * interval '1 second'"
	" WHEN $8::int8 IS NOT NULL THEN to_timestamp(0) + $8::int8 * interval '1 microsecond'"
	" END)"
	" RETURNING " KEY_JSON("k");
static const char sql_get[] =
	"SELECT " KEY_JSON("k") " FROM api_keys k WHERE k.project_id = $1 AND k.prefix = $2";
static const char sql_list[] =
	"SELECT " KEY_JSON("k") " FROM api_keys k WHERE k.project_id = $1"
	" ORDER BY k.created_at DESC, k.prefix LIMIT $2::int8";
/* One row: (key found, revoked by this statement). */
static const char sql_revoke[] =
	"WITH t AS (SELECT id FROM api_keys WHERE project_id = $1 AND prefix = $2 FOR UPDATE),"
	" u AS (UPDATE api_keys k SET revoked_at = now() FROM t WHERE k.id = t.id"
	" AND (k.revoked_at IS NULL OR k.revoked_at > now()) RETURNING k.id)"
	" SELECT (SELECT count(*) FROM t), (SELECT count(*) FROM u)";
/* The old key ($1 project, $2 prefix) locked; the new one ($3 id, $4
 * prefix, $5 hash) inserted with its name, scopes and expiry when the old
 * one is usable and its scopes are within $7 (the caller's); then the old
 * one revoked ($6 = 0) or set to expire after $6 seconds unless it expires
 * sooner. No row: no such key. Columns: outcome, the old key's scopes, the
 * new key, the old key after the change. */
static const char sql_rotate[] =
	"WITH old AS (SELECT * FROM api_keys WHERE project_id = $1 AND prefix = $2 FOR UPDATE),"
	" ok AS (SELECT o.* FROM old o"
	"  WHERE (o.revoked_at IS NULL OR o.revoked_at > now())"
	"  AND (o.expires_at IS NULL OR o.expires_at > now())"
	"  AND o.scopes <@ string_to_array($7, ',')),"
	" ins AS (INSERT INTO api_keys AS k (id, project_id, prefix, hash, scopes, name, expires_at)"
	"  SELECT $3, o.project_id, $4, decode($5, 'hex'), o.scopes, o.name, o.expires_at"
	"  FROM ok o RETURNING " KEY_JSON("k") " AS j),"
	" upd AS (UPDATE api_keys AS k SET"
	"  revoked_at = CASE WHEN $6::int8 = 0 THEN now() ELSE k.revoked_at END,"
	"  expires_at = CASE WHEN $6::int8 = 0 THEN k.expires_at"
	"   ELSE least(k.expires_at, now() + $6::int8 * interval '1 second') END"
	"  FROM ok o WHERE k.id = o.id RETURNING " KEY_JSON("k") " AS j)"
	" SELECT CASE WHEN o.revoked_at IS NOT NULL AND o.revoked_at <= now() THEN 'revoked'"
	"  WHEN o.expires_at IS NOT NULL AND o.expires_at <= now() THEN 'expired'"
	"  WHEN NOT (o.scopes <@ string_to_array($7, ',')) THEN 'forbidden' ELSE 'ok' END,"
	"  array_to_string(o.scopes, ','), (SELECT j FROM ins), (SELECT j FROM upd)"
	" FROM old o";
/* clang-format on */

enum key_op { KEY_OP_CREATE, KEY_OP_GET, KEY_OP_LIST, KEY_OP_REVOKE, KEY_OP_ROTATE };

/* One request waiting for the database. */
struct key_call {
	struct api_ctx *ctx;
	struct http_req *req;
	struct pg_pool_query *q;
	enum key_op op;
	char project[AUTH_PROJECT_MAX + 1];
	char actor[APIKEY_PREFIX_LEN + 1]; /* the caller's key prefix; "" with auth off */
	unsigned actor_scopes;
	char prefix[APIKEY_PREFIX_LEN + 1]; /* the key the path names */
	int tries;
	/* create and rotate: the new key and what the statement needs */
	struct apikey key;
	char id[ID_UUID_LEN + 1];
	char hash_hex[2 * APIKEY_HASH_LEN + 1];
	char scopes[APIKEY_SCOPES_MAX_TEXT];
	char actor_scopes_text[APIKEY_SCOPES_MAX_TEXT];
	char *name;
	char num1[24], num2[24]; /* create: expires_in / expires_at; rotate: grace */
	bool has_num1, has_num2;
	int64_t grace_s;
	json_t *list; /* list: the rows so far */
};

static void key_call_free(struct key_call *c)
{
	if (c == NULL)
		return;
	OPENSSL_cleanse(&c->key, sizeof c->key);
	free(c->name);
	json_decref(c->list);
	free(c);
}

static struct key_call *key_call_new(struct api_ctx *ctx, struct http_req *req,
                                     const struct auth_principal *p, enum key_op op)
{
	struct key_call *c = xcalloc(1, sizeof *c);
	c->ctx = ctx;
	c->req = req;
	c->op = op;
	snprintf(c->project, sizeof c->project, "%s", p->project_id);
	snprintf(c->actor, sizeof c->actor, "%s", p->key_prefix);
	c->actor_scopes = p->scopes;
	apikey_scopes_format(p->scopes, c->actor_scopes_text, sizeof c->actor_scopes_text);
	return c;
}

/* The client went away. A revoke or rotation may still commit: drop the
 * cached row anyway, so this instance reads it again (what it reads then
 * is whatever committed). */
static void key_call_abort_cb(struct http_req *req, void *arg)
{
	struct key_call *c = arg;
	if (c->op == KEY_OP_REVOKE || c->op == KEY_OP_ROTATE) {
		auth_forget(c->ctx->auth, c->prefix);
		log_warn("key.abandoned", "the client went away; the key change may have happened",
		         LF_STR("project_id", c->project), LF_STR("key_prefix", c->prefix),
		         LF_STR("actor_key_prefix", c->actor),
		         LF_STR("op", c->op == KEY_OP_REVOKE ? "revoke" : "rotate"),
		         LF_STR("request_id", http_req_id(req)));
	}
	pg_pool_cancel(c->q);
	key_call_free(c);
}

/* --- answers ------------------------------------------------------------ */

static void reply_validation(struct http_req *req, const char *detail, json_t *errors)
{
	json_t *extra = json_pack("{s:o}", "errors", errors);
	http_reply_problem(req, 422, "validation", "Invalid request", detail, extra);
	json_decref(extra);
}

static void add_error(json_t *errors, const char *field, const char *message)
{
	json_array_append_new(errors, json_pack("{s:s, s:s}", "field", field, "message", message));
}

static void reply_no_such_key(struct http_req *req)
{
	http_reply_problem(req, 404, "not-found", NULL, "no such API key in this project", NULL);
}

/* 403 naming the scopes the caller would have to hold itself. */
static void reply_scopes_beyond(struct http_req *req, unsigned missing, const char *detail)
{
	json_t *list = json_array();
	for (unsigned bit = 1; bit <= APIKEY_SCOPE_ALL; bit <<= 1)
		if ((missing & bit) && apikey_scope_name(bit))
			json_array_append_new(list, json_string(apikey_scope_name(bit)));
	json_t *extra = json_pack("{s:o}", "missing_scopes", list);
	http_reply_problem(req, 403, "forbidden", "Forbidden", detail, extra);
	json_decref(extra);
}

/* A row's KEY_JSON column as an object; NULL when it can't be read. */
static json_t *key_json(const PGresult *res, int row, int col)
{
	if (PQgetisnull(res, row, col))
		return NULL;
	return json_loads(PQgetvalue(res, row, col), 0, NULL);
}

static void reply_row_unreadable(struct http_req *req)
{
	log_error("key.bad_row", "an api_keys row could not be turned into JSON",
	          LF_STR("request_id", http_req_id(req)));
	http_reply_problem(req, 500, "internal", NULL, "the request could not be completed", NULL);
}

/* --- request bodies ----------------------------------------------------- */

static json_t *read_object_body(struct http_req *req, bool empty_ok)
{
	json_t *doc = api_read_json_body(req, empty_ok);
	if (doc == NULL)
		return NULL;
	if (!json_is_object(doc)) {
		json_t *errors = json_array();
		add_error(errors, "(body)", "must be a JSON object");
		reply_validation(req, "the body must be a JSON object", errors);
		json_decref(doc);
		return NULL;
	}
	return doc;
}

/* Every member not in allowed (NULL-terminated) is an error. */
static void unknown_fields(const json_t *doc, const char *const *allowed, json_t *errors)
{
	const char *key;
	json_t *v;
	json_object_foreach((json_t *)doc, key, v)
	{
		bool known = false;
		for (size_t i = 0; allowed[i] && !known; i++)
			known = strcmp(key, allowed[i]) == 0;
		if (!known)
			add_error(errors, key, "unknown field");
	}
}

/* --- POST /v1/keys ------------------------------------------------------ */

static void create_send(struct key_call *c);

/* Draws the call's new key: id, key, hash. False when hashing fails. */
static bool new_key(struct key_call *c)
{
	apikey_generate(&c->key);
	uint8_t hash[APIKEY_HASH_LEN];
	if (!apikey_hash_secret(c->key.secret, hash))
		return false;
	buf_hex(c->hash_hex, hash, sizeof hash);
	OPENSSL_cleanse(hash, sizeof hash);
	id_uuid7(c->id);
	return true;
}

static void reply_hash_failed(struct http_req *req)
{
	log_error("key.hash_failed", "SHA-256 failed", LF_STR("request_id", http_req_id(req)));
	http_reply_problem(req, 500, "internal", NULL, "the key could not be created", NULL);
}

/* The new key's prefix is taken (a unique violation; rare: 62^8 prefixes):
 * a fresh key and the same statement again, KEY_INSERT_TRIES in all. True
 * when it was handled here (sent again, or answered). */
static bool prefix_clash_retry(struct key_call *c, const struct pg_error *err,
                               void (*send)(struct key_call *c))
{
	if (!err || err->kind != PG_ERR_QUERY || strcmp(err->sqlstate, "23505") != 0 ||
	    ++c->tries >= KEY_INSERT_TRIES)
		return false;
	if (!new_key(c)) {
		http_req_on_abort(c->req, NULL, NULL);
		reply_hash_failed(c->req);
		key_call_free(c);
		return true;
	}
	send(c);
	return true;
}

/* The created key: the row plus the whole key, shown this once. */
static json_t *created_json(struct key_call *c, json_t *row)
{
	json_object_set_new(row, "key", json_string(c->key.text));
	return row;
}

/* 201 with the new key (shown this once: no-store) and its Location. */
static void reply_created(struct http_req *req, struct key_call *c, json_t *row)
{
	char *loc = xasprintf("/v1/keys/%s", c->key.prefix);
	http_set_header(req, "Location", loc);
	free(loc);
	http_set_header(req, "Cache-Control", "no-store");
	http_reply_json(req, 201, created_json(c, row));
}

static bool create_result_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct key_call *c = arg;
	struct http_req *req = c->req;
	c->q = NULL;
	if (prefix_clash_retry(c, err, create_send))
		return false;
	http_req_on_abort(req, NULL, NULL);
	json_t *row = err ? NULL : key_json(res, 0, 0);
	if (err) {
		api_reply_db_error(req, err);
	} else if (row == NULL) {
		reply_row_unreadable(req);
	} else {
		log_info("key.create", "API key created", LF_STR("project_id", c->project),
		         LF_STR("key_prefix", c->key.prefix), LF_STR("actor_key_prefix", c->actor),
		         LF_STR("scopes", c->scopes),
		         LF_JSON("expires_at", json_object_get(row, "expires_at")),
		         LF_STR("request_id", http_req_id(req)));
		reply_created(req, c, row);
	}
	key_call_free(c);
	return false;
}

static void create_send(struct key_call *c)
{
	const char *values[8] = {c->id,
	                         c->project,
	                         c->key.prefix,
	                         c->hash_hex,
	                         c->scopes,
	                         c->name ? c->name : "",
	                         c->has_num1 ? c->num1 : NULL,
	                         c->has_num2 ? c->num2 : NULL};
	c->q = pg_pool_query_prepared(c->ctx->pool, STMT_CREATE, 8, values, create_result_cb, c);
}

/* scopes: a non-empty array of known names. */
static unsigned parse_scopes(const json_t *v, json_t *errors)
{
	if (v == NULL) {
		add_error(errors, "scopes", "is required");
		return 0;
	}
	if (!json_is_array(v) || json_array_size(v) == 0) {
		add_error(errors, "scopes",
		          "must be a non-empty array of jobs:read, jobs:write, admin");
		return 0;
	}
	unsigned mask = 0;
	size_t i;
	json_t *s;
	bool ok = true;
	json_array_foreach((json_t *)v, i, s)
	{
		unsigned bit = json_is_string(s) ? apikey_scope_from_name(json_string_value(s),
		                                                          json_string_length(s))
		                                 : 0;
		if (bit == 0) {
			char field[32];
			snprintf(field, sizeof field, "scopes[%zu]", i);
			add_error(errors, field, "not a scope (jobs:read, jobs:write, admin)");
			ok = false;
		}
		mask |= bit;
	}
	return ok ? mask : 0;
}

static void keys_create_authed(struct http_req *req, const struct auth_principal *p, void *arg)
{
	struct api_ctx *ctx = arg;
	json_t *doc = read_object_body(req, false);
	if (doc == NULL)
		return;
	static const char *const allowed[] = {"name", "scopes", "expires_in", "expires_at", NULL};
	json_t *errors = json_array();
	unknown_fields(doc, allowed, errors);
	unsigned mask = parse_scopes(json_object_get(doc, "scopes"), errors);
	const json_t *name = json_object_get(doc, "name");
	if (name && (!json_is_string(name) || json_string_length(name) > KEY_NAME_MAX ||
	             strlen(json_string_value(name)) != json_string_length(name)))
		add_error(errors, "name", "must be a string of at most 200 bytes, without NUL");
	const json_t *ein = json_object_get(doc, "expires_in");
	const json_t *eat = json_object_get(doc, "expires_at");
	int64_t at_us = 0;
	if (ein && (!json_is_integer(ein) || json_integer_value(ein) < 1 ||
	            json_integer_value(ein) > APIKEY_LIFETIME_MAX_S))
		add_error(errors, "expires_in", "must be an integer number of seconds, at least 1");
	if (eat) {
		int64_t now = clock_now_us();
		if (!json_is_string(eat) || !clock_parse_rfc3339(json_string_value(eat), &at_us))
			add_error(errors, "expires_at", "must be an RFC 3339 timestamp");
		else if (at_us <= now)
			add_error(errors, "expires_at", "must be in the future");
		else if ((at_us - now) / 1000000 > APIKEY_LIFETIME_MAX_S)
			add_error(errors, "expires_at", "is too far in the future");
	}
	if (ein && eat)
		add_error(errors, "expires_at", "give expires_in or expires_at, not both");
	if (json_array_size(errors) > 0) {
		reply_validation(req, "invalid key request", errors);
		json_decref(doc);
		return;
	}
	json_decref(errors);
	/* A key never mints a key with more power than it has itself. */
	unsigned beyond = mask & ~p->scopes;
	if (beyond) {
		json_decref(doc);
		reply_scopes_beyond(req, beyond,
		                    "a key can only create keys with scopes it holds itself");
		return;
	}
	struct key_call *c = key_call_new(ctx, req, p, KEY_OP_CREATE);
	apikey_scopes_format(mask, c->scopes, sizeof c->scopes);
	if (name)
		c->name = xstrdup(json_string_value(name));
	if (ein) {
		snprintf(c->num1, sizeof c->num1, "%lld", (long long)json_integer_value(ein));
		c->has_num1 = true;
	}
	if (eat) {
		snprintf(c->num2, sizeof c->num2, "%lld", (long long)at_us);
		c->has_num2 = true;
	}
	json_decref(doc);
	if (!new_key(c)) {
		reply_hash_failed(req);
		key_call_free(c);
		return;
	}
	http_req_on_abort(req, key_call_abort_cb, c);
	create_send(c);
}

/* --- GET /v1/keys ------------------------------------------------------- */

static bool list_result_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct key_call *c = arg;
	struct http_req *req = c->req;
	c->q = NULL;
	http_req_on_abort(req, NULL, NULL);
	if (err) {
		api_reply_db_error(req, err);
		key_call_free(c);
		return false;
	}
	int n = PQntuples(res);
	json_t *data = json_array();
	for (int i = 0; i < n && i < KEYS_LIST_MAX; i++) {
		json_t *row = key_json(res, i, 0);
		if (row == NULL) {
			json_decref(data);
			reply_row_unreadable(req);
			key_call_free(c);
			return false;
		}
		json_array_append_new(data, row);
	}
	http_reply_json(req, 200,
	                json_pack("{s:o, s:b}", "data", data, "has_more", n > KEYS_LIST_MAX));
	key_call_free(c);
	return false;
}

static void keys_list_authed(struct http_req *req, const struct auth_principal *p, void *arg)
{
	struct key_call *c = key_call_new(arg, req, p, KEY_OP_LIST);
	snprintf(c->num1, sizeof c->num1, "%d", KEYS_LIST_MAX + 1);
	const char *values[2] = {c->project, c->num1};
	http_req_on_abort(req, key_call_abort_cb, c);
	c->q = pg_pool_query_prepared(c->ctx->pool, STMT_LIST, 2, values, list_result_cb, c);
}

/* --- GET /v1/keys/{prefix} ---------------------------------------------- */

/* The {prefix} path parameter: the 8 base62 characters of a key's public
 * part; false (404 sent) for anything else, which can name no key. */
static bool prefix_param(struct http_req *req, char out[APIKEY_PREFIX_LEN + 1])
{
	const char *s = http_req_param(req, "prefix");
	bool ok = s && strlen(s) == APIKEY_PREFIX_LEN;
	for (size_t i = 0; ok && i < APIKEY_PREFIX_LEN; i++)
		ok = apikey_is_base62(s[i]);
	if (!ok) {
		reply_no_such_key(req);
		return false;
	}
	memcpy(out, s, APIKEY_PREFIX_LEN + 1);
	return true;
}

static bool get_result_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct key_call *c = arg;
	struct http_req *req = c->req;
	c->q = NULL;
	http_req_on_abort(req, NULL, NULL);
	json_t *row = NULL;
	if (err)
		api_reply_db_error(req, err);
	else if (PQntuples(res) == 0)
		reply_no_such_key(req);
	else if ((row = key_json(res, 0, 0)) == NULL)
		reply_row_unreadable(req);
	else
		http_reply_json(req, 200, row);
	key_call_free(c);
	return false;
}

/* The {prefix} of the path, then stmt with (project, prefix). */
static void prefix_statement(struct http_req *req, const struct auth_principal *p, void *ctx,
                             enum key_op op, const char *stmt, pg_result_cb cb)
{
	char prefix[APIKEY_PREFIX_LEN + 1];
	if (!prefix_param(req, prefix))
		return;
	struct key_call *c = key_call_new(ctx, req, p, op);
	memcpy(c->prefix, prefix, sizeof c->prefix);
	const char *values[2] = {c->project, c->prefix};
	http_req_on_abort(req, key_call_abort_cb, c);
	c->q = pg_pool_query_prepared(c->ctx->pool, stmt, 2, values, cb, c);
}

static void keys_get_authed(struct http_req *req, const struct auth_principal *p, void *arg)
{
	prefix_statement(req, p, arg, KEY_OP_GET, STMT_GET, get_result_cb);
}

/* --- DELETE /v1/keys/{prefix} ------------------------------------------- */

static bool revoke_result_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct key_call *c = arg;
	struct http_req *req = c->req;
	c->q = NULL;
	http_req_on_abort(req, NULL, NULL);
	if (err) {
		/* it may have committed before the connection went */
		auth_forget(c->ctx->auth, c->prefix);
		api_reply_db_error(req, err);
	} else if (strcmp(PQgetvalue(res, 0, 0), "0") == 0) {
		reply_no_such_key(req);
	} else {
		bool changed = strcmp(PQgetvalue(res, 0, 1), "0") != 0;
		auth_forget(c->ctx->auth, c->prefix);
		if (changed)
			log_info("key.revoke", "API key revoked", LF_STR("project_id", c->project),
			         LF_STR("key_prefix", c->prefix),
			         LF_STR("actor_key_prefix", c->actor),
			         LF_BOOL("own_key", strcmp(c->actor, c->prefix) == 0),
			         LF_STR("request_id", http_req_id(req)));
		else
			log_debug("key.revoke", "API key was already revoked",
			          LF_STR("project_id", c->project), LF_STR("key_prefix", c->prefix),
			          LF_STR("actor_key_prefix", c->actor),
			          LF_STR("request_id", http_req_id(req)));
		http_reply(req, 204, NULL, NULL, 0);
	}
	key_call_free(c);
	return false;
}

static void keys_revoke_authed(struct http_req *req, const struct auth_principal *p, void *arg)
{
	prefix_statement(req, p, arg, KEY_OP_REVOKE, STMT_REVOKE, revoke_result_cb);
}

/* --- POST /v1/keys/{prefix}/rotate -------------------------------------- */

static void rotate_send(struct key_call *c);

static bool rotate_result_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct key_call *c = arg;
	struct http_req *req = c->req;
	c->q = NULL;
	if (prefix_clash_retry(c, err, rotate_send))
		return false;
	http_req_on_abort(req, NULL, NULL);
	if (err) {
		auth_forget(c->ctx->auth, c->prefix);
		api_reply_db_error(req, err);
		key_call_free(c);
		return false;
	}
	if (PQntuples(res) == 0) {
		reply_no_such_key(req);
		key_call_free(c);
		return false;
	}
	const char *outcome = PQgetvalue(res, 0, 0);
	if (strcmp(outcome, "revoked") == 0 || strcmp(outcome, "expired") == 0) {
		char *detail =
		        xasprintf("the key is %s: only a usable key can be rotated", outcome);
		http_reply_problem(req, 409, "key-not-active", "Key not active", detail, NULL);
		free(detail);
		key_call_free(c);
		return false;
	}
	if (strcmp(outcome, "forbidden") == 0) {
		unsigned old_mask = 0;
		if (!apikey_scopes_parse(PQgetvalue(res, 0, 1), &old_mask, NULL, 0))
			old_mask = APIKEY_SCOPE_ALL;
		reply_scopes_beyond(req, old_mask & ~c->actor_scopes,
		                    "the key has scopes the caller lacks: its replacement would "
		                    "give them to the caller");
		key_call_free(c);
		return false;
	}
	auth_forget(c->ctx->auth, c->prefix);
	json_t *row = key_json(res, 0, 2), *old = key_json(res, 0, 3);
	if (row == NULL || old == NULL) {
		json_decref(row);
		json_decref(old);
		reply_row_unreadable(req);
		key_call_free(c);
		return false;
	}
	log_info("key.rotate", "API key rotated", LF_STR("project_id", c->project),
	         LF_STR("key_prefix", c->prefix), LF_STR("new_key_prefix", c->key.prefix),
	         LF_STR("actor_key_prefix", c->actor),
	         LF_BOOL("own_key", strcmp(c->actor, c->prefix) == 0),
	         LF_INT("grace_s", c->grace_s), LF_STR("request_id", http_req_id(req)));
	json_object_set_new(row, "replaces", old);
	reply_created(req, c, row);
	key_call_free(c);
	return false;
}

static void rotate_send(struct key_call *c)
{
	const char *values[7] = {c->project, c->prefix,           c->id, c->key.prefix, c->hash_hex,
	                         c->num1,    c->actor_scopes_text};
	c->q = pg_pool_query_prepared(c->ctx->pool, STMT_ROTATE, 7, values, rotate_result_cb, c);
}

static void keys_rotate_authed(struct http_req *req, const struct auth_principal *p, void *arg)
{
	char prefix[APIKEY_PREFIX_LEN + 1];
	if (!prefix_param(req, prefix))
		return;
	json_t *doc = read_object_body(req, true);
	if (doc == NULL)
		return;
	static const char *const allowed[] = {"grace", NULL};
	json_t *errors = json_array();
	unknown_fields(doc, allowed, errors);
	const json_t *g = json_object_get(doc, "grace");
	if (g && (!json_is_integer(g) || json_integer_value(g) < 0 ||
	          json_integer_value(g) > APIKEY_ROTATE_GRACE_MAX_S))
		add_error(errors, "grace", "must be an integer number of seconds from 0 to 86400");
	if (json_array_size(errors) > 0) {
		reply_validation(req, "invalid rotation request", errors);
		json_decref(doc);
		return;
	}
	json_decref(errors);
	struct key_call *c = key_call_new(arg, req, p, KEY_OP_ROTATE);
	memcpy(c->prefix, prefix, sizeof c->prefix);
	c->grace_s = g ? (int64_t)json_integer_value(g) : 0;
	snprintf(c->num1, sizeof c->num1, "%lld", (long long)c->grace_s);
	json_decref(doc);
	if (!new_key(c)) {
		reply_hash_failed(req);
		key_call_free(c);
		return;
	}
	http_req_on_abort(req, key_call_abort_cb, c);
	rotate_send(c);
}

/* --- registration ------------------------------------------------------- */

bool api_keys_register(struct router *r, struct api_ctx *ctx)
{
	if (ctx->pool == NULL) {
		log_error("server.start", "the key routes need a database pool");
		return false;
	}
	const unsigned adm = APIKEY_SCOPE_ADMIN;
	return pg_pool_prepare(ctx->pool, STMT_CREATE, sql_create, 8, NULL) &&
	       pg_pool_prepare(ctx->pool, STMT_GET, sql_get, 2, NULL) &&
	       pg_pool_prepare(ctx->pool, STMT_LIST, sql_list, 2, NULL) &&
	       pg_pool_prepare(ctx->pool, STMT_REVOKE, sql_revoke, 2, NULL) &&
	       pg_pool_prepare(ctx->pool, STMT_ROTATE, sql_rotate, 7, NULL) &&
	       api_route_guarded(r, HTTP_M_POST, "/v1/keys", ctx, adm, keys_create_authed) &&
	       api_route_guarded(r, HTTP_M_GET, "/v1/keys", ctx, adm, keys_list_authed) &&
	       api_route_guarded(r, HTTP_M_GET, "/v1/keys/{prefix}", ctx, adm, keys_get_authed) &&
	       api_route_guarded(r, HTTP_M_DELETE, "/v1/keys/{prefix}", ctx, adm,
	                         keys_revoke_authed) &&
	       api_route_guarded(r, HTTP_M_POST, "/v1/keys/{prefix}/rotate", ctx, adm,
	                         keys_rotate_authed);
}
