/* Unit tests for http/auth, with the HTTP request and the pool faked (the
 * h2o way: the .c under test is included, the functions it calls from
 * server.c and pool.c are defined here). They cover what an integration
 * test can't pin down: byte-identical 401s with no query for a bad shape,
 * the cache (hits, TTL, LRU eviction, auth_forget), coalescing of lookups,
 * cancellation when waiting clients leave, 503 on every kind of database
 * failure, the once-per-interval last_used_at update, and auth_free with
 * work in flight. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http/auth.c"
#include "http/problem.h"

#include <openssl/hmac.h>

/* --- the fake request --------------------------------------------------- */

struct http_req {
	const char *authorization; /* NULL: no header */
	const char *peer; /* NULL: unknown (the connection is gone) */
	int status; /* 0 until answered */
	char *body;
	char *www_authenticate;
	char *retry_after;
	http_abort_fn on_abort;
	void *abort_arg;
	/* what done saw */
	int done_calls;
	struct auth_principal p;
};

const char *http_req_header(const struct http_req *req, const char *name)
{
	return strcasecmp(name, "Authorization") == 0 ? req->authorization : NULL;
}

const char *http_req_peer(const struct http_req *req)
{
	return req->peer ? req->peer : "";
}

const char *http_req_id(const struct http_req *req)
{
	return "test-request";
}

void http_req_on_abort(struct http_req *req, http_abort_fn fn, void *arg)
{
	req->on_abort = fn;
	req->abort_arg = arg;
}

void http_set_header(struct http_req *req, const char *name, const char *value)
{
	if (strcmp(name, "WWW-Authenticate") == 0) {
		free(req->www_authenticate);
		req->www_authenticate = strdup(value);
	} else if (strcmp(name, "Retry-After") == 0) {
		free(req->retry_after);
		req->retry_after = strdup(value);
	}
}

void http_reply_problem(struct http_req *req, int status, const char *slug, const char *title,
                        const char *detail, const json_t *extra)
{
	assert_int_equal(req->status, 0); /* one answer per request */
	assert_int_equal(req->done_calls, 0);
	req->status = status;
	req->body = problem_render(status, slug, title, detail, "/v1/jobs", extra);
	req->on_abort = NULL;
}

/* The client leaves. */
static void req_abort(struct http_req *req)
{
	assert_non_null(req->on_abort);
	http_abort_fn fn = req->on_abort;
	req->on_abort = NULL;
	fn(req, req->abort_arg);
}

static void req_reset(struct http_req *req, const char *authorization)
{
	free(req->body);
	free(req->www_authenticate);
	free(req->retry_after);
	memset(req, 0, sizeof *req);
	req->authorization = authorization;
}

static void done_cb(struct http_req *req, const struct auth_principal *p, void *arg)
{
	assert_int_equal(req->status, 0);
	req->done_calls++;
	req->p = *p;
	req->status = 200;
	req->on_abort = NULL;
}

/* --- the fake pool ------------------------------------------------------ */

struct pg_pool {
	int prepared;
	bool refuse_prepare;
	bool refuse_queries; /* query_prepared returns NULL */
};

struct pg_pool_query {
	char name[64];
	char values[2][64];
	pg_result_cb cb;
	void *arg;
	bool cancelled;
	bool done;
};

#define MAX_QUERIES 64
static struct pg_pool_query queries[MAX_QUERIES];
static size_t nqueries;

bool pg_pool_prepare(struct pg_pool *p, const char *name, const char *sql, int nparams,
                     const Oid *param_types)
{
	p->prepared++;
	return !p->refuse_prepare;
}

struct pg_pool_query *pg_pool_query_prepared(struct pg_pool *p, const char *name, int nparams,
                                             const char *const *values, pg_result_cb cb, void *arg)
{
	if (p->refuse_queries)
		return NULL;
	assert_true(nqueries < MAX_QUERIES);
	struct pg_pool_query *q = &queries[nqueries++];
	memset(q, 0, sizeof *q);
	snprintf(q->name, sizeof q->name, "%s", name);
	for (int i = 0; i < nparams && i < 2; i++)
		snprintf(q->values[i], sizeof q->values[i], "%s", values[i]);
	q->cb = cb;
	q->arg = arg;
	return q;
}

void pg_pool_cancel(struct pg_pool_query *q)
{
	if (q == NULL)
		return;
	assert_false(q->done);
	q->cancelled = true;
}

static size_t count_queries(const char *name, bool pending_only)
{
	size_t n = 0;
	for (size_t i = 0; i < nqueries; i++)
		if (strcmp(queries[i].name, name) == 0 &&
		    (!pending_only || (!queries[i].cancelled && !queries[i].done)))
			n++;
	return n;
}

static struct pg_pool_query *last_query(const char *name)
{
	for (size_t i = nqueries; i > 0; i--)
		if (strcmp(queries[i - 1].name, name) == 0)
			return &queries[i - 1];
	return NULL;
}

/* A key row as the lookup returns it; NULL strings are SQL NULLs. */
struct fake_row {
	const char *project, *scopes;
	const struct apikey *key;
	const char *expires_us, *revoked_us, *last_used_us;
};

static void complete_rows(struct pg_pool_query *q, const struct fake_row *row)
{
	assert_false(q->cancelled);
	assert_false(q->done);
	PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
	PGresAttDesc attrs[6];
	memset(attrs, 0, sizeof attrs);
	static char *const names[6] = {"project_id", "hash", "scopes", "e", "r", "l"};
	for (int i = 0; i < 6; i++) {
		attrs[i].name = names[i];
		attrs[i].typlen = -1;
	}
	assert_true(PQsetResultAttrs(res, 6, attrs));
	if (row) {
		uint8_t h[APIKEY_HASH_LEN];
		char hex[2 * APIKEY_HASH_LEN + 1];
		assert_true(apikey_hash_secret(row->key->secret, h));
		for (int i = 0; i < APIKEY_HASH_LEN; i++)
			snprintf(hex + 2 * i, 3, "%02x", h[i]);
		const char *vals[6] = {row->project,    hex,
		                       row->scopes,     row->expires_us,
		                       row->revoked_us, row->last_used_us};
		for (int i = 0; i < 6; i++)
			assert_true(PQsetvalue(res, 0, i, (char *)vals[i],
			                       vals[i] ? (int)strlen(vals[i]) : -1));
	}
	q->done = true;
	if (!q->cb(res, NULL, q->arg))
		PQclear(res);
}

static void complete_error(struct pg_pool_query *q, enum pg_error_kind kind)
{
	assert_false(q->cancelled);
	q->done = true;
	struct pg_error e = {.kind = kind, .sqlstate = "", .message = "fake failure"};
	q->cb(NULL, &e, q->arg);
}

/* --- helpers ------------------------------------------------------------ */

static struct pg_pool pool;

static int setup(void **state)
{
	memset(&pool, 0, sizeof pool);
	memset(queries, 0, sizeof queries);
	nqueries = 0;
	return 0;
}

static char *bearer(const struct apikey *k)
{
	char *s = NULL;
	assert_true(asprintf(&s, "Bearer %s", k->text) > 0);
	return s;
}

static struct auth *new_auth(int64_t ttl_ms, size_t cache_max)
{
	struct auth_opts o = {.enabled = true, .cache_ttl_ms = ttl_ms, .cache_max = cache_max};
	struct auth *a = auth_new(&pool, &o);
	assert_non_null(a);
	return a;
}

static const char *const unauthorized_body =
        "{\"type\":\"urn:stageline:problem:unauthorized\",\"title\":\"Unauthorized\","
        "\"status\":401,\"detail\":\"a valid API key is required\",\"instance\":\"/v1/jobs\"}";

static void assert_401(struct http_req *req)
{
	assert_int_equal(req->status, 401);
	assert_int_equal(req->done_calls, 0);
	assert_string_equal(req->body, unauthorized_body);
	assert_string_equal(req->www_authenticate, "Bearer realm=\"stageline\"");
}

/* --- tests -------------------------------------------------------------- */

static void test_disabled_is_default_project(void **state)
{
	struct auth_opts o = {.enabled = false};
	struct auth *a = auth_new(&pool, &o);
	assert_non_null(a);
	assert_int_equal(pool.prepared, 0);
	struct http_req req = {0};
	req_reset(&req, "Bearer nonsense");
	auth_require(a, &req, APIKEY_SCOPE_ALL, done_cb, NULL);
	assert_int_equal(req.done_calls, 1);
	assert_string_equal(req.p.project_id, "default");
	assert_string_equal(req.p.key_prefix, "");
	assert_int_equal(req.p.scopes, APIKEY_SCOPE_ALL);
	assert_int_equal(nqueries, 0);
	req_reset(&req, NULL);
	auth_free(a);
}

static void test_bad_shapes_are_401_without_a_query(void **state)
{
	struct auth *a = new_auth(0, 0);
	struct apikey k;
	apikey_generate(&k);
	char flipped[APIKEY_LEN + 1];
	memcpy(flipped, k.text, sizeof flipped);
	flipped[20] = flipped[20] == 'A' ? 'B' : 'A';
	char *h_flipped = NULL, *h_basic = NULL, *h_long = NULL;
	assert_true(asprintf(&h_flipped, "Bearer %s", flipped) > 0);
	assert_true(asprintf(&h_basic, "Basic %s", k.text) > 0);
	assert_true(asprintf(&h_long, "Bearer %sA", k.text) > 0);
	const char *const headers[] = {
	        NULL,      "",        "Bearer",          "Bearer ", "Bearer  \t ", h_basic,
	        "Bearerx", h_flipped, "Bearer sl_short", h_long,    "Token abc=",  "bearer",
	};
	for (size_t i = 0; i < sizeof headers / sizeof headers[0]; i++) {
		struct http_req req = {0};
		req_reset(&req, headers[i]);
		auth_require(a, &req, APIKEY_SCOPE_JOBS_READ, done_cb, NULL);
		assert_401(&req);
		req_reset(&req, NULL);
	}
	assert_int_equal(nqueries, 0);
	free(h_flipped);
	free(h_basic);
	free(h_long);
	auth_free(a);
}

static void test_lookup_ok_then_cache_hit(void **state)
{
	struct auth *a = new_auth(60000, 0);
	struct apikey k;
	apikey_generate(&k);
	char *h = bearer(&k);
	/* scheme case-insensitive, extra blanks tolerated */
	char *h2 = NULL;
	assert_true(asprintf(&h2, "bEaReR   %s \t", k.text) > 0);

	struct http_req req = {0};
	req_reset(&req, h);
	auth_require(a, &req, APIKEY_SCOPE_JOBS_READ, done_cb, NULL);
	assert_int_equal(req.status, 0); /* waiting */
	assert_non_null(req.on_abort);
	struct pg_pool_query *q = last_query(STMT_LOOKUP);
	assert_non_null(q);
	assert_string_equal(q->values[0], k.prefix); /* the prefix only, never the secret */
	struct fake_row row = {.project = "acme", .scopes = "jobs:read,jobs:write", .key = &k};
	complete_rows(q, &row);
	assert_int_equal(req.done_calls, 1);
	assert_null(req.on_abort);
	assert_string_equal(req.p.project_id, "acme");
	assert_string_equal(req.p.key_prefix, k.prefix);
	assert_int_equal(req.p.scopes, APIKEY_SCOPE_JOBS_READ | APIKEY_SCOPE_JOBS_WRITE);
	/* a key never used: last_used_at is written once */
	assert_int_equal(count_queries(STMT_TOUCH, false), 1);
	assert_string_equal(last_query(STMT_TOUCH)->values[0], k.prefix);
	assert_string_equal(last_query(STMT_TOUCH)->values[1], "60000");

	for (int i = 0; i < 5; i++) {
		req_reset(&req, i % 2 ? h : h2);
		auth_require(a, &req, APIKEY_SCOPE_JOBS_WRITE, done_cb, NULL);
		assert_int_equal(req.done_calls, 1); /* at once: a cache hit */
	}
	assert_int_equal(count_queries(STMT_LOOKUP, false), 1);
	assert_int_equal(count_queries(STMT_TOUCH, false), 1); /* not again within a minute */
	struct auth_stats st;
	auth_stats(a, &st);
	assert_int_equal(st.cache_hits, 5);
	assert_int_equal(st.cache_misses, 1);
	assert_int_equal(st.cache_entries, 1);

	/* a touch that fails is only logged */
	complete_error(last_query(STMT_TOUCH), PG_ERR_CONN_LOST);

	/* 403 names what is missing, and the key still counts as used */
	req_reset(&req, h);
	auth_require(a, &req, APIKEY_SCOPE_ADMIN | APIKEY_SCOPE_JOBS_READ, done_cb, NULL);
	assert_int_equal(req.status, 403);
	assert_non_null(strstr(req.body, "\"type\":\"urn:stageline:problem:forbidden\""));
	assert_non_null(strstr(req.body, "\"missing_scopes\":[\"admin\"]"));
	assert_non_null(strstr(req.body, "lacks the scope admin"));
	assert_null(req.www_authenticate);

	/* a wrong secret with the right prefix, from the cache: 401 */
	struct apikey wrong = k;
	wrong.secret[0] = wrong.secret[0] == 'a' ? 'b' : 'a';
	memcpy(wrong.text + 12, wrong.secret, APIKEY_SECRET_LEN);
	apikey_checksum(wrong.text, 44, wrong.text + 44);
	char *hw = bearer(&wrong);
	req_reset(&req, hw);
	auth_require(a, &req, APIKEY_SCOPE_JOBS_READ, done_cb, NULL);
	assert_401(&req);
	assert_int_equal(count_queries(STMT_LOOKUP, false), 1);

	req_reset(&req, NULL);
	free(h);
	free(h2);
	free(hw);
	auth_free(a);
}

static void test_every_refusal_has_the_same_body(void **state)
{
	struct auth *a = new_auth(-1, 0); /* no cache: every request asks */
	struct apikey k;
	apikey_generate(&k);
	char *h = bearer(&k);
	char past[32], future[32];
	snprintf(past, sizeof past, "%lld", (long long)(clock_now_us() - 1000000));
	snprintf(future, sizeof future, "%lld", (long long)(clock_now_us() + 3600000000LL));
	struct fake_row rows[] = {
	        {.project = "acme", .scopes = "jobs:read", .key = &k, .revoked_us = past},
	        {.project = "acme", .scopes = "jobs:read", .key = &k, .expires_us = past},
	        {.project = "acme",
	         .scopes = "jobs:read",
	         .key = &k,
	         .expires_us = past,
	         .revoked_us = past},
	};
	struct http_req req = {0};
	for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
		req_reset(&req, h);
		auth_require(a, &req, APIKEY_SCOPE_JOBS_READ, done_cb, NULL);
		complete_rows(last_query(STMT_LOOKUP), &rows[i]);
		assert_401(&req);
	}
	/* unknown prefix: no row */
	req_reset(&req, h);
	auth_require(a, &req, APIKEY_SCOPE_JOBS_READ, done_cb, NULL);
	complete_rows(last_query(STMT_LOOKUP), NULL);
	assert_401(&req);
	/* a wrong secret from the database */
	struct apikey other;
	apikey_generate(&other);
	struct fake_row wrong = {.project = "acme", .scopes = "jobs:read", .key = &other};
	req_reset(&req, h);
	auth_require(a, &req, APIKEY_SCOPE_JOBS_READ, done_cb, NULL);
	complete_rows(last_query(STMT_LOOKUP), &wrong);
	assert_401(&req);
	/* a future revocation or expiry does not refuse yet; a recent
	 * last_used_at means no update */
	char recent[32];
	snprintf(recent, sizeof recent, "%lld", (long long)(clock_now_us() - 1000000));
	struct fake_row later = {.project = "acme",
	                         .scopes = "jobs:read,nonsense",
	                         .key = &k,
	                         .expires_us = future,
	                         .revoked_us = future,
	                         .last_used_us = recent};
	req_reset(&req, h);
	auth_require(a, &req, APIKEY_SCOPE_JOBS_READ, done_cb, NULL);
	complete_rows(last_query(STMT_LOOKUP), &later);
	assert_int_equal(req.done_calls, 1);
	assert_int_equal(req.p.scopes, APIKEY_SCOPE_JOBS_READ); /* unknown names grant nothing */
	assert_int_equal(count_queries(STMT_TOUCH, false), 0);
	req_reset(&req, NULL);
	free(h);
	auth_free(a);
}

static void test_database_failures_are_503(void **state)
{
	struct auth *a = new_auth(0, 0);
	struct apikey k;
	apikey_generate(&k);
	char *h = bearer(&k);
	static const enum pg_error_kind kinds[] = {PG_ERR_UNAVAILABLE, PG_ERR_POOL_FULL,
	                                           PG_ERR_CONN_LOST, PG_ERR_TIMEOUT, PG_ERR_QUERY};
	struct http_req req = {0};
	for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
		req_reset(&req, h);
		auth_require(a, &req, APIKEY_SCOPE_JOBS_READ, done_cb, NULL);
		complete_error(last_query(STMT_LOOKUP), kinds[i]);
		assert_int_equal(req.status, 503);
		assert_non_null(strstr(req.body, "urn:stageline:problem:db-unavailable"));
		assert_string_equal(req.retry_after, "1");
	}
	/* a pool that refuses at once */
	pool.refuse_queries = true;
	req_reset(&req, h);
	auth_require(a, &req, APIKEY_SCOPE_JOBS_READ, done_cb, NULL);
	assert_int_equal(req.status, 503);
	assert_null(req.on_abort);
	/* an unreadable row (a broken hash) is a 503 too, never a 200 */
	pool.refuse_queries = false;
	req_reset(&req, h);
	auth_require(a, &req, APIKEY_SCOPE_JOBS_READ, done_cb, NULL);
	struct pg_pool_query *q = last_query(STMT_LOOKUP);
	PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
	PGresAttDesc attrs[6];
	memset(attrs, 0, sizeof attrs);
	for (int i = 0; i < 6; i++)
		attrs[i].name = (char *)"c";
	assert_true(PQsetResultAttrs(res, 6, attrs));
	const char *vals[6] = {"acme", "zz", "jobs:read", NULL, NULL, NULL};
	for (int i = 0; i < 6; i++)
		assert_true(PQsetvalue(res, 0, i, (char *)vals[i],
		                       vals[i] ? (int)strlen(vals[i]) : -1));
	q->done = true;
	assert_false(q->cb(res, NULL, q->arg));
	PQclear(res);
	assert_int_equal(req.status, 503);
	struct auth_stats st;
	auth_stats(a, &st);
	assert_int_equal(st.cache_entries, 0);
	req_reset(&req, NULL);
	free(h);
	auth_free(a);
}

static void test_coalescing_and_abort(void **state)
{
	struct auth *a = new_auth(0, 0);
	struct apikey k;
	apikey_generate(&k);
	char *h = bearer(&k);
	struct http_req r[4];
	memset(r, 0, sizeof r);
	for (int i = 0; i < 4; i++) {
		req_reset(&r[i], h);
		auth_require(a, &r[i], APIKEY_SCOPE_JOBS_READ, done_cb, NULL);
	}
	assert_int_equal(count_queries(STMT_LOOKUP, false), 1);
	struct auth_stats st;
	auth_stats(a, &st);
	assert_int_equal(st.coalesced, 3);
	assert_int_equal(st.lookups_in_flight, 1);
	/* two leave: the query stays for the others */
	req_abort(&r[0]);
	req_abort(&r[2]);
	struct pg_pool_query *q = last_query(STMT_LOOKUP);
	assert_false(q->cancelled);
	struct fake_row row = {.project = "acme", .scopes = "jobs:read", .key = &k};
	complete_rows(q, &row);
	assert_int_equal(r[0].done_calls + r[2].done_calls, 0);
	assert_int_equal(r[0].status + r[2].status, 0);
	assert_int_equal(r[1].done_calls, 1);
	assert_int_equal(r[3].done_calls, 1);

	/* every waiter leaves: the query is cancelled and nothing fires */
	struct apikey k2;
	apikey_generate(&k2);
	char *h2 = bearer(&k2);
	for (int i = 0; i < 2; i++) {
		req_reset(&r[i], h2);
		auth_require(a, &r[i], APIKEY_SCOPE_JOBS_READ, done_cb, NULL);
	}
	q = last_query(STMT_LOOKUP);
	req_abort(&r[1]);
	assert_false(q->cancelled);
	req_abort(&r[0]);
	assert_true(q->cancelled);
	auth_stats(a, &st);
	assert_int_equal(st.lookups_in_flight, 0);
	/* the next request starts a new lookup */
	req_reset(&r[0], h2);
	auth_require(a, &r[0], APIKEY_SCOPE_JOBS_READ, done_cb, NULL);
	assert_true(last_query(STMT_LOOKUP) != q);
	assert_int_equal(count_queries(STMT_LOOKUP, true), 1);

	/* freeing with a waiter and a touch pending cancels both */
	auth_free(a);
	assert_true(last_query(STMT_LOOKUP)->cancelled);
	assert_true(last_query(STMT_TOUCH)->cancelled);
	assert_null(r[0].on_abort);
	assert_int_equal(r[0].status, 0);
	for (int i = 0; i < 4; i++)
		req_reset(&r[i], NULL);
	free(h);
	free(h2);
}

/* A done callback that makes its own request and forgets the key: the
 * other waiters must still be answered from intact state. */
static struct auth *reentrant_auth;
static const char *reentrant_header;
static struct http_req reentrant_inner;

static void forget_done_cb(struct http_req *req, const struct auth_principal *p, void *arg)
{
	done_cb(req, p, arg);
	auth_forget(reentrant_auth, p->key_prefix);
	req_reset(&reentrant_inner, reentrant_header);
	auth_require(reentrant_auth, &reentrant_inner, APIKEY_SCOPE_JOBS_READ, done_cb, NULL);
}

static void test_reentrant_done_and_forget(void **state)
{
	struct auth *a = new_auth(0, 0);
	reentrant_auth = a;
	struct apikey k;
	apikey_generate(&k);
	char *h = bearer(&k);
	reentrant_header = h;
	struct http_req r[3];
	memset(r, 0, sizeof r);
	for (int i = 0; i < 3; i++) {
		req_reset(&r[i], h);
		auth_require(a, &r[i], APIKEY_SCOPE_JOBS_READ, i == 0 ? forget_done_cb : done_cb,
		             NULL);
	}
	struct fake_row row = {.project = "acme", .scopes = "jobs:read", .key = &k};
	complete_rows(last_query(STMT_LOOKUP), &row);
	for (int i = 0; i < 3; i++)
		assert_int_equal(r[i].done_calls, 1);
	/* the inner request missed (forgotten) and waits on a fresh lookup */
	assert_int_equal(reentrant_inner.status, 0);
	assert_int_equal(count_queries(STMT_LOOKUP, true), 1);

	/* auth_forget while a lookup is in flight: its answer is not cached */
	auth_forget(a, k.prefix);
	complete_rows(last_query(STMT_LOOKUP), &row);
	assert_int_equal(reentrant_inner.done_calls, 1);
	struct auth_stats st;
	auth_stats(a, &st);
	assert_int_equal(st.cache_entries, 0);
	/* "sl_<prefix>_" and junk are accepted by auth_forget */
	auth_forget(a, "sl_");
	auth_forget(a, "");
	for (int i = 0; i < 3; i++)
		req_reset(&r[i], NULL);
	req_reset(&reentrant_inner, NULL);
	free(h);
	auth_free(a);
}

static void test_ttl_and_eviction(void **state)
{
	struct auth *a = new_auth(30, 2);
	struct apikey k[3];
	char *h[3];
	struct http_req req = {0};
	for (int i = 0; i < 3; i++) {
		apikey_generate(&k[i]);
		h[i] = bearer(&k[i]);
		req_reset(&req, h[i]);
		auth_require(a, &req, APIKEY_SCOPE_JOBS_READ, done_cb, NULL);
		struct fake_row row = {.project = "acme", .scopes = "jobs:read", .key = &k[i]};
		complete_rows(last_query(STMT_LOOKUP), &row);
		assert_int_equal(req.done_calls, 1);
	}
	struct auth_stats st;
	auth_stats(a, &st);
	assert_int_equal(st.cache_entries, 2);
	assert_int_equal(st.evictions, 1);
	/* k[0] was the least recently used: it is gone, k[2] is there */
	size_t before = count_queries(STMT_LOOKUP, false);
	req_reset(&req, h[2]);
	auth_require(a, &req, APIKEY_SCOPE_JOBS_READ, done_cb, NULL);
	assert_int_equal(req.done_calls, 1);
	req_reset(&req, h[0]);
	auth_require(a, &req, APIKEY_SCOPE_JOBS_READ, done_cb, NULL);
	assert_int_equal(req.status, 0);
	assert_int_equal(count_queries(STMT_LOOKUP, false), before + 1);
	struct fake_row row0 = {.project = "acme", .scopes = "jobs:read", .key = &k[0]};
	complete_rows(last_query(STMT_LOOKUP), &row0);
	assert_int_equal(req.done_calls, 1);
	/* past the TTL the row is read again */
	usleep(40 * 1000);
	req_reset(&req, h[0]);
	auth_require(a, &req, APIKEY_SCOPE_JOBS_READ, done_cb, NULL);
	assert_int_equal(req.status, 0);
	/* ... and a row gone from the database drops the stale entry */
	complete_rows(last_query(STMT_LOOKUP), NULL);
	assert_401(&req);
	auth_stats(a, &st);
	assert_int_equal(st.cache_entries, 1);
	req_reset(&req, NULL);
	for (int i = 0; i < 3; i++)
		free(h[i]);
	auth_free(a);
}

/* --- failed-auth rate limiting ------------------------------------------ */

static struct auth *new_limited_auth(int64_t max, int64_t window_ms, size_t table_max)
{
	struct auth_opts o = {.enabled = true,
	                      .max_failures = max,
	                      .failure_window_ms = window_ms,
	                      .failure_table_max = table_max};
	struct auth *a = auth_new(&pool, &o);
	assert_non_null(a);
	return a;
}

static void request_from(struct auth *a, struct http_req *req, const char *peer,
                         const char *authorization)
{
	req_reset(req, authorization);
	req->peer = peer;
	auth_require(a, req, APIKEY_SCOPE_JOBS_READ, done_cb, NULL);
}

static void assert_429(struct http_req *req)
{
	assert_int_equal(req->status, 429);
	assert_int_equal(req->done_calls, 0);
	assert_non_null(strstr(req->body, "\"type\":\"urn:stageline:problem:rate-limited\""));
	assert_non_null(req->retry_after);
	assert_null(req->www_authenticate);
}

static void test_rate_limit_per_address(void **state)
{
	struct auth *a = new_limited_auth(3, 300, 0);
	struct apikey k;
	apikey_generate(&k);
	char *good = bearer(&k);
	struct http_req req = {0};
	/* three failures of any kind but a missing header ... */
	request_from(a, &req, "10.0.0.1", "Bearer sl_short");
	assert_401(&req);
	request_from(a, &req, "10.0.0.1", "Basic abc");
	assert_401(&req);
	for (int i = 0; i < 5; i++) { /* no header: no guess, not counted */
		request_from(a, &req, "10.0.0.1", NULL);
		assert_401(&req);
	}
	request_from(a, &req, "10.0.0.1", "Bearer nonsense");
	assert_401(&req);
	/* ... and the address is refused before anything is read: a good key
	 * too, and without a query */
	request_from(a, &req, "10.0.0.1", good);
	assert_429(&req);
	assert_string_equal(req.retry_after, "1");
	assert_non_null(strstr(req.body, "\"detail\":\"too many failed authentication attempts"
	                                 " from this address; retry after 1 s\""));
	request_from(a, &req, "10.0.0.1", NULL);
	assert_429(&req);
	request_from(a, &req, "::ffff:10.0.0.1", "Bearer x");
	assert_429(&req); /* the same address, IPv4-mapped */
	assert_int_equal(nqueries, 0);
	/* another address is not affected; an unknown one is never limited */
	request_from(a, &req, "10.0.0.2", good);
	assert_int_equal(req.status, 0); /* waiting for its lookup */
	struct fake_row row = {.project = "acme", .scopes = "jobs:read", .key = &k};
	complete_rows(last_query(STMT_LOOKUP), &row);
	assert_int_equal(req.done_calls, 1);
	for (int i = 0; i < 5; i++) {
		request_from(a, &req, NULL, "Bearer nonsense");
		assert_401(&req);
	}
	/* IPv6 counts per /64 */
	request_from(a, &req, "2001:db8:0:1::1", "Bearer x");
	request_from(a, &req, "2001:db8:0:1::2", "Bearer x");
	request_from(a, &req, "2001:db8:0:1:ffff::3", "Bearer x");
	assert_401(&req);
	request_from(a, &req, "2001:db8:0:1::1", good);
	assert_429(&req);
	request_from(a, &req, "2001:db8:0:2::1", "Bearer x");
	assert_401(&req);
	/* Unix-socket clients share one budget */
	for (int i = 0; i < 3; i++)
		request_from(a, &req, "unix", "Bearer x");
	request_from(a, &req, "unix", good);
	assert_429(&req);
	struct auth_stats st;
	auth_stats(a, &st);
	assert_int_equal(st.rate_limited, 5);
	/* after the window the address starts over; a success does not reset
	 * the count */
	usleep(350 * 1000);
	request_from(a, &req, "10.0.0.1", "Bearer x");
	assert_401(&req);
	request_from(a, &req, "10.0.0.1", "Bearer x");
	assert_401(&req);
	request_from(a, &req, "10.0.0.1", good);
	assert_int_equal(req.done_calls, 1); /* from the cache */
	request_from(a, &req, "10.0.0.1", "Bearer x");
	assert_401(&req);
	request_from(a, &req, "10.0.0.1", good);
	assert_429(&req);
	req_reset(&req, NULL);
	free(good);
	auth_free(a);
}

static void test_rate_table_is_bounded(void **state)
{
	struct auth *a = new_limited_auth(2, 60000, 8);
	struct http_req req = {0};
	/* one address blocked, then many others each failing once */
	request_from(a, &req, "192.0.2.1", "Bearer x");
	request_from(a, &req, "192.0.2.1", "Bearer x");
	request_from(a, &req, "192.0.2.1", "Bearer x");
	assert_429(&req);
	char peer[32];
	for (int i = 0; i < 1000; i++) {
		snprintf(peer, sizeof peer, "198.51.%d.%d", i / 250, i % 250);
		request_from(a, &req, peer, "Bearer x");
		assert_401(&req);
		if (i % 4 == 0) { /* the blocked one keeps trying: it stays */
			request_from(a, &req, "192.0.2.1", "Bearer x");
			assert_429(&req);
		}
		struct auth_stats st;
		auth_stats(a, &st);
		assert_true(st.failure_entries <= 8);
	}
	req_reset(&req, NULL);
	auth_free(a);
	/* max_failures 0: no table, never 429 */
	a = new_limited_auth(0, 0, 0);
	for (int i = 0; i < 50; i++) {
		request_from(a, &req, "192.0.2.1", "Bearer x");
		assert_401(&req);
	}
	req_reset(&req, NULL);
	auth_free(a);
}

/* --- JWT ------------------------------------------------------------------ */

static const char jwt_secret[] = "a-test-secret-of-more-than-32-bytes!";

static char *hs256_token(const char *project, const char *scope, long long exp)
{
	char payload[512], input[1024], hb[128], pb[768], sb[64];
	snprintf(payload, sizeof payload,
	         "{\"iss\":\"idp\",\"aud\":\"sl\",\"exp\":%lld,\"project\":\"%s\","
	         "\"scope\":\"%s\"}",
	         exp, project, scope);
	const char *header = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
	jwt_b64url_encode((const uint8_t *)header, strlen(header), hb);
	jwt_b64url_encode((const uint8_t *)payload, strlen(payload), pb);
	snprintf(input, sizeof input, "%s.%s", hb, pb);
	uint8_t mac[32];
	unsigned n = 0;
	assert_non_null(HMAC(EVP_sha256(), jwt_secret, (int)strlen(jwt_secret),
	                     (const uint8_t *)input, strlen(input), mac, &n));
	jwt_b64url_encode(mac, n, sb);
	char *out = NULL;
	assert_true(asprintf(&out, "Bearer %s.%s", input, sb) > 0);
	return out;
}

static struct auth *new_jwt_auth(int64_t ttl_ms)
{
	struct auth_opts o = {.enabled = true,
	                      .cache_ttl_ms = ttl_ms,
	                      .max_failures = 2,
	                      .jwt_enabled = true,
	                      .jwt = {.issuer = "idp", .audience = "sl", .leeway_ms = 0},
	                      .jwt_hs256_secret = jwt_secret};
	struct auth *a = auth_new(&pool, &o);
	assert_non_null(a);
	return a;
}

static void complete_project(struct pg_pool_query *q, bool found)
{
	assert_false(q->cancelled);
	assert_false(q->done);
	PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
	PGresAttDesc attr;
	memset(&attr, 0, sizeof attr);
	attr.name = (char *)"one";
	attr.typlen = -1;
	assert_true(PQsetResultAttrs(res, 1, &attr));
	if (found)
		assert_true(PQsetvalue(res, 0, 0, (char *)"1", 1));
	q->done = true;
	if (!q->cb(res, NULL, q->arg))
		PQclear(res);
}

static void test_jwt_bearer(void **state)
{
	struct auth *a = new_jwt_auth(60000);
	long long later = clock_now_us() / 1000000 + 300;
	char *ok = hs256_token("acme", "jobs:read openid", later);
	struct http_req req = {0};
	request_from(a, &req, "10.1.1.1", ok);
	assert_int_equal(req.status, 0); /* the project is looked up */
	assert_int_equal(count_queries(STMT_LOOKUP, false), 0);
	struct pg_pool_query *q = last_query(STMT_PROJECT);
	assert_non_null(q);
	assert_string_equal(q->values[0], "acme");
	complete_project(q, true);
	assert_int_equal(req.done_calls, 1);
	assert_string_equal(req.p.project_id, "acme");
	assert_string_equal(req.p.key_prefix, "jwt");
	assert_int_equal(req.p.scopes, APIKEY_SCOPE_JOBS_READ);
	/* the project is cached now */
	request_from(a, &req, "10.1.1.1", ok);
	assert_int_equal(req.done_calls, 1);
	assert_int_equal(count_queries(STMT_PROJECT, false), 1);
	/* a scope the token lacks: 403 naming it */
	req_reset(&req, ok);
	req.peer = "10.1.1.1";
	auth_require(a, &req, APIKEY_SCOPE_JOBS_WRITE, done_cb, NULL);
	assert_int_equal(req.status, 403);
	assert_non_null(strstr(req.body, "this token lacks the scope jobs:write"));

	/* expired, tampered and alg-none tokens: the same 401, no query */
	char *expired = hs256_token("acme", "jobs:read", later - 600);
	request_from(a, &req, "10.1.1.2", expired);
	assert_401(&req);
	char *tampered = strdup(ok);
	tampered[strlen(tampered) - 5] ^= 1;
	request_from(a, &req, "10.1.1.3", tampered);
	assert_401(&req);
	request_from(a, &req, "10.1.1.4", "Bearer eyJhbGciOiJub25lIn0.eyJwcm9qZWN0IjoiYWNtZSJ9.");
	assert_401(&req);
	assert_int_equal(count_queries(STMT_PROJECT, false), 1);
	/* a project that does not exist is a 401 too; a failed lookup is 503 */
	char *ghost = hs256_token("ghost", "jobs:read", later);
	request_from(a, &req, "10.1.1.5", ghost);
	complete_project(last_query(STMT_PROJECT), false);
	assert_401(&req);
	request_from(a, &req, "10.1.1.5", ghost);
	complete_error(last_query(STMT_PROJECT), PG_ERR_CONN_LOST);
	assert_int_equal(req.status, 503);
	/* a 503 is no failure; a second 401 from 10.1.1.5 (max 2) blocks it */
	request_from(a, &req, "10.1.1.5", ok);
	assert_int_equal(req.done_calls, 1);
	request_from(a, &req, "10.1.1.5", expired);
	assert_401(&req);
	request_from(a, &req, "10.1.1.5", ok);
	assert_429(&req);
	/* the client leaves during the lookup: cancelled, nothing fires */
	request_from(a, &req, "10.1.1.6", ghost);
	q = last_query(STMT_PROJECT);
	req_abort(&req);
	assert_true(q->cancelled);
	assert_int_equal(req.status, 0);
	/* freeing with a lookup pending cancels it */
	struct http_req r2 = {0};
	request_from(a, &r2, "10.1.1.7", ghost);
	q = last_query(STMT_PROJECT);
	auth_free(a);
	assert_true(q->cancelled);
	assert_null(r2.on_abort);
	assert_int_equal(r2.status, 0);
	req_reset(&req, NULL);
	req_reset(&r2, NULL);
	free(ok);
	free(expired);
	free(tampered);
	free(ghost);

	/* API keys still work beside tokens */
	a = new_jwt_auth(60000);
	struct apikey k;
	apikey_generate(&k);
	char *h = bearer(&k);
	request_from(a, &req, "10.1.1.8", h);
	struct fake_row row = {.project = "acme", .scopes = "jobs:read", .key = &k};
	complete_rows(last_query(STMT_LOOKUP), &row);
	assert_int_equal(req.done_calls, 1);
	assert_string_equal(req.p.key_prefix, k.prefix);
	req_reset(&req, NULL);
	free(h);
	auth_free(a);
}

static void test_jwt_setup_failures(void **state)
{
	struct auth_opts o = {
	        .enabled = true, .jwt_enabled = true, .jwt = {.issuer = "idp", .audience = "sl"}};
	assert_null(auth_new(&pool, &o)); /* no key */
	o.jwt_hs256_secret = "short";
	assert_null(auth_new(&pool, &o));
	o.jwt_hs256_secret = NULL;
	o.jwt_public_key_file = "/nonexistent/key.pem";
	assert_null(auth_new(&pool, &o));
	o.jwt_public_key_file = "/dev/null";
	assert_null(auth_new(&pool, &o));
	o.jwt_public_key_file = NULL;
	o.jwt_hs256_secret = jwt_secret;
	o.jwt.leeway_ms = 301 * 1000;
	assert_null(auth_new(&pool, &o));
}

static void test_new_fails_when_pool_refuses(void **state)
{
	pool.refuse_prepare = true;
	struct auth_opts o = {.enabled = true};
	assert_null(auth_new(&pool, &o));
	assert_null(auth_new(NULL, &o));
	o.enabled = false;
	struct auth *a = auth_new(NULL, &o);
	assert_non_null(a);
	auth_free(a);
	auth_free(NULL);
}

int main(void)
{
	log_capture_start(); /* keep the expected warnings off the test output */
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup(test_disabled_is_default_project, setup),
	        cmocka_unit_test_setup(test_bad_shapes_are_401_without_a_query, setup),
	        cmocka_unit_test_setup(test_lookup_ok_then_cache_hit, setup),
	        cmocka_unit_test_setup(test_every_refusal_has_the_same_body, setup),
	        cmocka_unit_test_setup(test_database_failures_are_503, setup),
	        cmocka_unit_test_setup(test_coalescing_and_abort, setup),
	        cmocka_unit_test_setup(test_reentrant_done_and_forget, setup),
	        cmocka_unit_test_setup(test_ttl_and_eviction, setup),
	        cmocka_unit_test_setup(test_rate_limit_per_address, setup),
	        cmocka_unit_test_setup(test_rate_table_is_bounded, setup),
	        cmocka_unit_test_setup(test_jwt_bearer, setup),
	        cmocka_unit_test_setup(test_jwt_setup_failures, setup),
	        cmocka_unit_test_setup(test_new_fails_when_pool_refuses, setup),
	};
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	free(log_capture_take());
	return rc;
}
