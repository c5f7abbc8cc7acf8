/* The API-key check. A request's key is parsed and checksummed before
 * anything else (garbage never reaches the database), its secret hashed, and
 * its row found by prefix: in a small LRU cache when fresh, otherwise with
 * one prepared query through the pool. Requests that miss on the same prefix
 * while a query is in flight wait on that query instead of sending their
 * own, so a hot key costs one query per TTL however many requests it
 * carries. Every refusal is answered here, and every 401 is the same bytes,
 * so a caller learns nothing about which part of its key was wrong; the log
 * line says which, with the public prefix only. A bearer token that is a
 * JWT is verified by jwt.c instead, and its project is checked against the
 * projects table (cached the same way). Every 401 also counts against the
 * client's address in a bounded table; an address past its budget gets 429
 * before anything of its request is read. */
#include "http/auth.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/buf.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/xmalloc.h"
#include "db/pool.h"
#include "http/server.h"

#define STMT_LOOKUP "auth_key_by_prefix"
#define STMT_TOUCH "auth_key_touch"
#define STMT_PROJECT "auth_project_exists"

/* Timestamps come back as integer microseconds since the epoch, so neither
 * the session's DateStyle nor its TimeZone matters; 'infinity' maps to NULL
 * (never) and '-infinity' to 0 (long ago), which the int8 cast couldn't
 * take. The hash comes as hex, so bytea_output doesn't matter either. */
/* clang-format off */
#define EPOCH_US(col)                                                          \
	"CASE WHEN " col " = '-infinity' THEN 0 WHEN isfinite(" col ")"        \
	" THEN (extract(epoch FROM " col ") * 1000000)::int8 END"
static const char sql_lookup[] =
	"SELECT project_id, encode(hash, 'hex'), array_to_string(scopes, ','),"
	" " EPOCH_US("expires_at") ","
	" " EPOCH_US("revoked_at") ","
	" " EPOCH_US("last_used_at")
	" FROM api_keys WHERE prefix = $1";
/* clang-format on */
/* The WHERE clause keeps instances that race on the same key from writing
 * more than once per interval between them. */
static const char sql_touch[] = "UPDATE api_keys SET last_used_at = now()"
                                " WHERE prefix = $1 AND (last_used_at IS NULL"
                                " OR last_used_at < now() - $2::int8 * interval '1 millisecond')";

static const char sql_project[] = "SELECT 1 FROM projects WHERE id = $1";

#define UNAUTHORIZED_DETAIL "a valid API key is required"
#define PROJECT_CACHE_MAX 256
#define PEER_KEY_LEN 17 /* a family tag and 16 address bytes */

/* What a key row says, as the cache keeps it. */
struct key_row {
	char prefix[APIKEY_PREFIX_LEN + 1];
	char project_id[AUTH_PROJECT_MAX + 1];
	uint8_t hash[APIKEY_HASH_LEN];
	unsigned scopes;
	int64_t expires_us; /* INT64_MAX: never */
	int64_t revoked_us; /* INT64_MAX: not revoked */
	int64_t last_used_us; /* the newer of the row's and our last update; 0: never */
};

struct cache_entry {
	struct key_row row;
	int64_t fetched_mono_us;
	struct cache_entry *hnext; /* bucket chain */
	struct cache_entry *newer, *older; /* LRU list */
};

struct auth_lookup;

/* One request waiting for a lookup. */
struct auth_wait {
	struct auth_lookup *l;
	struct http_req *req;
	uint8_t hash[APIKEY_HASH_LEN];
	unsigned need;
	auth_done_fn done;
	void *arg;
	struct auth_wait *prev, *next;
};

/* One query in flight for one prefix, and everyone waiting for it. */
struct auth_lookup {
	struct auth *a;
	char prefix[APIKEY_PREFIX_LEN + 1];
	struct pg_pool_query *q;
	bool no_cache; /* auth_forget() ran meanwhile: the answer may predate it */
	struct auth_wait *head, *tail;
	struct auth_lookup *prev, *next;
};

/* A fire-and-forget last_used_at update, tracked only so auth_free() can
 * cancel it. */
struct auth_touch {
	struct auth *a;
	char prefix[APIKEY_PREFIX_LEN + 1];
	struct pg_pool_query *q;
	struct auth_touch *prev, *next;
};

/* One client address's failed attempts: a fixed window that starts at its
 * first counted failure; reaching max_failures in it blocks the address for
 * a window from that failure. */
struct fail_entry {
	uint8_t key[PEER_KEY_LEN];
	uint32_t count;
	int64_t window_start_us; /* monotonic */
	int64_t blocked_until_us; /* monotonic; 0: not blocked */
	struct fail_entry *hnext;
	struct fail_entry *newer, *older;
};

/* A token's project, known to exist when fetched. */
struct project_entry {
	char id[AUTH_PROJECT_MAX + 1];
	int64_t fetched_mono_us;
};

/* A request with a verified token waiting for its project's row. Not
 * coalesced: tokens are signed, so these are rare and legitimate. */
struct project_wait {
	struct auth *a;
	struct http_req *req;
	struct pg_pool_query *q;
	struct auth_principal p;
	unsigned need;
	auth_done_fn done;
	void *arg;
	struct project_wait *prev, *next;
};

struct auth {
	struct pg_pool *pool;
	bool enabled;
	int64_t ttl_us; /* < 0: no cache */
	size_t cache_max;
	int64_t touch_interval_us;

	int64_t max_failures; /* 0: no rate limiting */
	int64_t failure_window_us;
	size_t fail_max;
	struct fail_entry **fail_buckets;
	size_t fail_nbuckets;
	size_t fail_n;
	struct fail_entry *fail_newest, *fail_oldest;

	struct jwt_verifier *jwt; /* NULL: JWT off */
	struct project_entry projects[PROJECT_CACHE_MAX];
	size_t nprojects;
	struct project_wait *project_waits;

	struct cache_entry **buckets;
	size_t nbuckets; /* a power of two */
	size_t nentries;
	struct cache_entry *newest, *oldest;

	struct auth_lookup *lookups;
	size_t nlookups;
	struct auth_touch *touches;

	struct auth_stats stats;
};

/* --- cache -------------------------------------------------------------- */

static size_t prefix_hash(const char *prefix)
{
	uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
	for (size_t i = 0; i < APIKEY_PREFIX_LEN; i++) {
		h ^= (unsigned char)prefix[i];
		h *= 0x100000001b3ull;
	}
	return (size_t)h;
}

static struct cache_entry **cache_slot(struct auth *a, const char *prefix)
{
	struct cache_entry **pp = &a->buckets[prefix_hash(prefix) & (a->nbuckets - 1)];
	while (*pp && memcmp((*pp)->row.prefix, prefix, APIKEY_PREFIX_LEN) != 0)
		pp = &(*pp)->hnext;
	return pp;
}

static void lru_unlink(struct auth *a, struct cache_entry *e)
{
	if (e->newer)
		e->newer->older = e->older;
	else
		a->newest = e->older;
	if (e->older)
		e->older->newer = e->newer;
	else
		a->oldest = e->newer;
	e->newer = e->older = NULL;
}

static void lru_push_newest(struct auth *a, struct cache_entry *e)
{
	e->older = a->newest;
	e->newer = NULL;
	if (a->newest)
		a->newest->newer = e;
	a->newest = e;
	if (a->oldest == NULL)
		a->oldest = e;
}

static void cache_remove(struct auth *a, const char *prefix)
{
	if (a->buckets == NULL)
		return;
	struct cache_entry **pp = cache_slot(a, prefix);
	struct cache_entry *e = *pp;
	if (e == NULL)
		return;
	*pp = e->hnext;
	lru_unlink(a, e);
	a->nentries--;
	free(e);
}

/* The fresh entry for prefix, made the most recently used; NULL when absent
 * or older than the TTL. */
static struct cache_entry *cache_get(struct auth *a, const char *prefix)
{
	if (a->buckets == NULL)
		return NULL;
	struct cache_entry *e = *cache_slot(a, prefix);
	if (e == NULL || clock_mono_us() - e->fetched_mono_us >= a->ttl_us)
		return NULL;
	lru_unlink(a, e);
	lru_push_newest(a, e);
	return e;
}

static void cache_put(struct auth *a, const struct key_row *row)
{
	if (a->buckets == NULL)
		return;
	struct cache_entry **pp = cache_slot(a, row->prefix);
	struct cache_entry *e = *pp;
	if (e == NULL) {
		if (a->nentries >= a->cache_max && a->oldest) {
			cache_remove(a, a->oldest->row.prefix);
			a->stats.evictions++;
			pp = cache_slot(a, row->prefix); /* the chain may have changed */
		}
		e = xcalloc(1, sizeof *e);
		*pp = e;
		a->nentries++;
	} else {
		lru_unlink(a, e);
		/* keep our own newer update time: the row may predate it */
		if (e->row.last_used_us > row->last_used_us) {
			int64_t ours = e->row.last_used_us;
			e->row = *row;
			e->row.last_used_us = ours;
			goto done;
		}
	}
	e->row = *row;
done:
	e->fetched_mono_us = clock_mono_us();
	lru_push_newest(a, e);
}

/* --- failed attempts per address --------------------------------------- */

/* The table key of the request's client: IPv4 (also when IPv4-mapped), the
 * /64 of an IPv6 address (one host usually holds a whole /64, and cycling
 * through it must not buy fresh budgets), or one key for every Unix-socket
 * client. False when the address is unknown (the connection is gone). */
static bool peer_key(const char *peer, uint8_t key[PEER_KEY_LEN])
{
	memset(key, 0, PEER_KEY_LEN);
	struct in6_addr a6;
	if (strcmp(peer, "unix") == 0) {
		key[0] = 'u';
	} else if (inet_pton(AF_INET, peer, key + 1) == 1) {
		key[0] = 4;
	} else if (inet_pton(AF_INET6, peer, &a6) == 1) {
		if (IN6_IS_ADDR_V4MAPPED(&a6)) {
			key[0] = 4;
			memcpy(key + 1, a6.s6_addr + 12, 4);
		} else {
			key[0] = 6;
			memcpy(key + 1, a6.s6_addr, 8);
		}
	} else {
		return false;
	}
	return true;
}

static size_t peer_hash(const uint8_t key[PEER_KEY_LEN])
{
	uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
	for (size_t i = 0; i < PEER_KEY_LEN; i++) {
		h ^= key[i];
		h *= 0x100000001b3ull;
	}
	return (size_t)h;
}

static struct fail_entry **fail_slot(struct auth *a, const uint8_t key[PEER_KEY_LEN])
{
	struct fail_entry **pp = &a->fail_buckets[peer_hash(key) & (a->fail_nbuckets - 1)];
	while (*pp && memcmp((*pp)->key, key, PEER_KEY_LEN) != 0)
		pp = &(*pp)->hnext;
	return pp;
}

static void fail_lru_unlink(struct auth *a, struct fail_entry *e)
{
	if (e->newer)
		e->newer->older = e->older;
	else
		a->fail_newest = e->older;
	if (e->older)
		e->older->newer = e->newer;
	else
		a->fail_oldest = e->newer;
	e->newer = e->older = NULL;
}

static void fail_lru_push_newest(struct auth *a, struct fail_entry *e)
{
	e->older = a->fail_newest;
	e->newer = NULL;
	if (a->fail_newest)
		a->fail_newest->newer = e;
	a->fail_newest = e;
	if (a->fail_oldest == NULL)
		a->fail_oldest = e;
}

static void fail_remove(struct auth *a, struct fail_entry *e)
{
	struct fail_entry **pp = fail_slot(a, e->key);
	*pp = e->hnext;
	fail_lru_unlink(a, e);
	a->fail_n--;
	free(e);
}

/* How long the address stays blocked (microseconds), 0 when it is not. A
 * blocked address that keeps trying stays the most recently used, so
 * addresses an attacker cycles through evict each other, not it. */
static int64_t fail_blocked_us(struct auth *a, const uint8_t key[PEER_KEY_LEN])
{
	if (a->fail_buckets == NULL)
		return 0;
	struct fail_entry *e = *fail_slot(a, key);
	if (e == NULL || e->blocked_until_us == 0)
		return 0;
	int64_t now = clock_mono_us();
	if (now >= e->blocked_until_us) {
		fail_remove(a, e); /* served its time: a fresh budget */
		return 0;
	}
	fail_lru_unlink(a, e);
	fail_lru_push_newest(a, e);
	return e->blocked_until_us - now;
}

static void fail_record(struct auth *a, const uint8_t key[PEER_KEY_LEN], const char *peer)
{
	struct fail_entry **pp = fail_slot(a, key);
	struct fail_entry *e = *pp;
	int64_t now = clock_mono_us();
	if (e == NULL) {
		if (a->fail_n >= a->fail_max && a->fail_oldest)
			fail_remove(a, a->fail_oldest);
		e = xcalloc(1, sizeof *e);
		memcpy(e->key, key, PEER_KEY_LEN);
		e->window_start_us = now;
		pp = fail_slot(a, key); /* the chain may have changed */
		*pp = e;
		a->fail_n++;
	} else {
		fail_lru_unlink(a, e);
		if ((e->blocked_until_us && now >= e->blocked_until_us) ||
		    (!e->blocked_until_us && now - e->window_start_us >= a->failure_window_us)) {
			e->count = 0;
			e->window_start_us = now;
			e->blocked_until_us = 0;
		}
	}
	fail_lru_push_newest(a, e);
	if (e->count < UINT32_MAX)
		e->count++;
	if (e->count >= (uint64_t)a->max_failures && e->blocked_until_us == 0) {
		e->blocked_until_us = now + a->failure_window_us;
		log_warn("auth.blocked", "too many failed authentications from one address",
		         LF_STR("peer", peer), LF_UINT("failures", e->count),
		         LF_INT("window_ms", a->failure_window_us / 1000));
	}
}

/* --- answers ------------------------------------------------------------ */

static void reply_unauthorized(struct auth *a, struct http_req *req, const char *reason,
                               const char *prefix)
{
	bool missing = strcmp(reason, "missing") == 0;
	if (missing)
		log_debug("auth.denied", "request not authenticated", LF_STR("reason", reason),
		          LF_STR("request_id", http_req_id(req)));
	else
		log_info("auth.denied", "request not authenticated", LF_STR("reason", reason),
		         LF_STR("key_prefix", prefix ? prefix : ""),
		         LF_STR("request_id", http_req_id(req)));
	metric_inc(metrics_default_get(M_AUTH_FAILURES_TOTAL), 1, reason);
	/* No header is no guess: only presented credentials use up the budget. */
	uint8_t key[PEER_KEY_LEN];
	const char *peer = http_req_peer(req);
	if (!missing && a->fail_buckets && peer_key(peer, key))
		fail_record(a, key, peer);
	http_set_header(req, "WWW-Authenticate", "Bearer realm=\"stageline\"");
	http_reply_problem(req, 401, "unauthorized", "Unauthorized", UNAUTHORIZED_DETAIL, NULL);
}

static void reply_rate_limited(struct auth *a, struct http_req *req, int64_t remaining_us)
{
	long long secs = (long long)((remaining_us + 999999) / 1000000);
	if (secs < 1)
		secs = 1;
	char ra[24];
	snprintf(ra, sizeof ra, "%lld", secs);
	a->stats.rate_limited++;
	metric_inc(metrics_default_get(M_AUTH_RATE_LIMITED_TOTAL), 1);
	log_debug("auth.rate_limited", "request refused: too many failed authentications",
	          LF_STR("peer", http_req_peer(req)), LF_STR("request_id", http_req_id(req)));
	char *detail = xasprintf("too many failed authentication attempts from this address;"
	                         " retry after %lld s",
	                         secs);
	/* No limit/value members: the Problem schema keeps those for quotas, and
	 * Retry-After says all a client needs. */
	http_set_header(req, "Retry-After", ra);
	http_reply_problem(req, 429, "rate-limited", "Too Many Requests", detail, NULL);
	free(detail);
}

static void reply_forbidden(struct http_req *req, const char *prefix, unsigned missing)
{
	json_t *list = json_array();
	struct buf names = BUF_INIT;
	for (unsigned bit = 1; bit <= APIKEY_SCOPE_ALL; bit <<= 1) {
		const char *name = apikey_scope_name(bit);
		if (!(missing & bit) || name == NULL)
			continue;
		json_array_append_new(list, json_string(name));
		buf_printf(&names, "%s%s", names.len ? ", " : "", name);
	}
	bool jwt = strcmp(prefix, "jwt") == 0;
	char *detail =
	        xasprintf("this %s lacks the scope%s %s", jwt ? "token" : "API key",
	                  json_array_size(list) > 1 ? "s" : "", names.data ? names.data : "");
	json_t *extra = json_pack("{s:o}", "missing_scopes", list);
	log_info("auth.forbidden", jwt ? "token lacks a scope" : "API key lacks a scope",
	         LF_STR("key_prefix", prefix),
	         LF_STR("missing_scopes", names.data ? names.data : ""),
	         LF_STR("request_id", http_req_id(req)));
	http_reply_problem(req, 403, "forbidden", "Forbidden", detail, extra);
	json_decref(extra);
	free(detail);
	buf_free(&names);
}

static void reply_unavailable(struct http_req *req, const char *what)
{
	char *detail = xasprintf("the %s could not be checked: the database is unavailable", what);
	http_set_header(req, "Retry-After", "1");
	http_reply_problem(req, 503, "db-unavailable", "Database unavailable", detail, NULL);
	free(detail);
}

/* --- last_used_at ------------------------------------------------------- */

static void touch_unlink(struct auth *a, struct auth_touch *t)
{
	if (t->prev)
		t->prev->next = t->next;
	else
		a->touches = t->next;
	if (t->next)
		t->next->prev = t->prev;
}

static bool touch_result_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct auth_touch *t = arg;
	touch_unlink(t->a, t);
	if (err)
		log_warn("auth.touch_failed", "could not update the key's last_used_at",
		         LF_STR("key_prefix", t->prefix), LF_STR("error", err->message));
	free(t);
	return false;
}

/* Sends the update when the key hasn't been marked used for an interval;
 * records the time first, so a failure is not retried on every request. */
static void maybe_touch(struct auth *a, struct key_row *row, int64_t now_us)
{
	if (row->last_used_us != 0 && now_us - row->last_used_us < a->touch_interval_us)
		return;
	row->last_used_us = now_us;
	if (a->buckets) {
		struct cache_entry *e = *cache_slot(a, row->prefix);
		if (e && e->row.last_used_us < now_us)
			e->row.last_used_us = now_us;
	}
	struct auth_touch *t = xcalloc(1, sizeof *t);
	t->a = a;
	memcpy(t->prefix, row->prefix, sizeof t->prefix);
	char interval_ms[24];
	snprintf(interval_ms, sizeof interval_ms, "%" PRId64, a->touch_interval_us / 1000);
	const char *values[2] = {t->prefix, interval_ms};
	t->q = pg_pool_query_prepared(a->pool, STMT_TOUCH, 2, values, touch_result_cb, t);
	if (t->q == NULL) {
		log_warn("auth.touch_failed", "could not update the key's last_used_at",
		         LF_STR("key_prefix", t->prefix),
		         LF_STR("error", "no database connection"));
		free(t);
		return;
	}
	t->next = a->touches;
	if (t->next)
		t->next->prev = t;
	a->touches = t;
	a->stats.touches++;
}

/* --- the decision ------------------------------------------------------- */

/* Answers req (401/403) or calls done. row may be updated (last_used_us);
 * it must not be a cache entry when done can reach auth_forget(), so the
 * lookup path passes a copy. */
static void decide(struct auth *a, struct http_req *req, struct key_row *row,
                   const uint8_t hash[APIKEY_HASH_LEN], unsigned need, auth_done_fn done, void *arg)
{
	if (!apikey_hash_equal(row->hash, hash)) {
		reply_unauthorized(a, req, "wrong_secret", row->prefix);
		return;
	}
	int64_t now = clock_now_us();
	if (row->revoked_us <= now) {
		reply_unauthorized(a, req, "revoked", row->prefix);
		return;
	}
	if (row->expires_us <= now) {
		reply_unauthorized(a, req, "expired", row->prefix);
		return;
	}
	/* a correct key was presented: it was used, whatever its scopes */
	maybe_touch(a, row, now);
	unsigned missing = need & ~row->scopes;
	if (missing) {
		reply_forbidden(req, row->prefix, missing);
		return;
	}
	struct auth_principal p;
	memcpy(p.project_id, row->project_id, sizeof p.project_id);
	memcpy(p.key_prefix, row->prefix, sizeof p.key_prefix);
	p.scopes = row->scopes;
	done(req, &p, arg);
}

/* --- lookups ------------------------------------------------------------ */

static struct auth_lookup *lookup_find(struct auth *a, const char *prefix)
{
	for (struct auth_lookup *l = a->lookups; l; l = l->next)
		if (memcmp(l->prefix, prefix, APIKEY_PREFIX_LEN) == 0)
			return l;
	return NULL;
}

static void lookup_unlink(struct auth *a, struct auth_lookup *l)
{
	if (l->prev)
		l->prev->next = l->next;
	else
		a->lookups = l->next;
	if (l->next)
		l->next->prev = l->prev;
	l->prev = l->next = NULL;
	a->nlookups--;
}

static void wait_unlink(struct auth_lookup *l, struct auth_wait *w)
{
	if (w->prev)
		w->prev->next = w->next;
	else
		l->head = w->next;
	if (w->next)
		w->next->prev = w->prev;
	else
		l->tail = w->prev;
	w->prev = w->next = NULL;
}

static int64_t parse_us(const PGresult *res, int col, int64_t if_null)
{
	if (PQgetisnull(res, 0, col))
		return if_null;
	char *end;
	long long v = strtoll(PQgetvalue(res, 0, col), &end, 10);
	return *end == '\0' ? (int64_t)v : if_null;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Reads the one row of the lookup. Unknown scope names (a newer schema)
 * grant nothing. */
static bool row_from_result(const PGresult *res, const char *prefix, struct key_row *row)
{
	if (PQnfields(res) != 6)
		return false;
	memset(row, 0, sizeof *row);
	memcpy(row->prefix, prefix, sizeof row->prefix);
	const char *project = PQgetvalue(res, 0, 0);
	size_t plen = strlen(project);
	if (plen == 0 || plen > AUTH_PROJECT_MAX)
		return false;
	memcpy(row->project_id, project, plen + 1);
	const char *hex = PQgetvalue(res, 0, 1);
	if (strlen(hex) != 2 * APIKEY_HASH_LEN)
		return false;
	for (size_t i = 0; i < APIKEY_HASH_LEN; i++) {
		int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return false;
		row->hash[i] = (uint8_t)(hi << 4 | lo);
	}
	const char *s = PQgetvalue(res, 0, 2);
	while (*s) {
		const char *e = strchr(s, ',');
		size_t n = e ? (size_t)(e - s) : strlen(s);
		row->scopes |= apikey_scope_from_name(s, n);
		s += n + (e != NULL);
	}
	row->expires_us = parse_us(res, 3, INT64_MAX);
	row->revoked_us = parse_us(res, 4, INT64_MAX);
	row->last_used_us = parse_us(res, 5, 0);
	return true;
}

static bool lookup_result_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct auth_lookup *l = arg;
	struct auth *a = l->a;
	l->q = NULL;
	lookup_unlink(a, l); /* nobody joins it from here on */

	enum { FOUND, NOT_FOUND, FAILED } outcome;
	struct key_row row = {0};
	if (err) {
		outcome = FAILED;
		if (err->kind == PG_ERR_QUERY || err->kind == PG_ERR_USAGE)
			log_error("auth.lookup_failed", "the API key lookup failed",
			          LF_STR("key_prefix", l->prefix), LF_STR("error", err->message),
			          LF_STR("sqlstate", err->sqlstate));
		else
			log_warn("auth.lookup_failed", "the API key lookup failed",
			         LF_STR("key_prefix", l->prefix), LF_STR("error", err->message));
	} else if (PQntuples(res) == 0) {
		outcome = NOT_FOUND;
		cache_remove(a, l->prefix);
	} else if (!row_from_result(res, l->prefix, &row)) {
		outcome = FAILED;
		log_error("auth.lookup_failed", "the api_keys row cannot be read",
		          LF_STR("key_prefix", l->prefix));
	} else {
		outcome = FOUND;
		if (!l->no_cache)
			cache_put(a, &row);
	}

	/* A done callback may end other waiters' requests (their abort then
	 * unlinks them from l), so take them one at a time from the list. */
	struct auth_wait *w;
	while ((w = l->head) != NULL) {
		wait_unlink(l, w);
		struct auth_wait mine = *w;
		free(w);
		http_req_on_abort(mine.req, NULL, NULL);
		switch (outcome) {
		case FAILED: reply_unavailable(mine.req, "API key"); break;
		case NOT_FOUND: reply_unauthorized(a, mine.req, "unknown_key", l->prefix); break;
		case FOUND:
			decide(a, mine.req, &row, mine.hash, mine.need, mine.done, mine.arg);
			break;
		}
	}
	free(l);
	return false;
}

static void wait_abort_cb(struct http_req *req, void *arg)
{
	struct auth_wait *w = arg;
	struct auth_lookup *l = w->l;
	wait_unlink(l, w);
	free(w);
	if (l->head == NULL && l->q != NULL) {
		/* the last one waiting left: nobody needs the answer */
		pg_pool_cancel(l->q);
		lookup_unlink(l->a, l);
		free(l);
	}
}

static void lookup_join(struct auth *a, struct http_req *req, const char *prefix,
                        const uint8_t hash[APIKEY_HASH_LEN], unsigned need, auth_done_fn done,
                        void *arg)
{
	struct auth_lookup *l = lookup_find(a, prefix);
	if (l) {
		a->stats.coalesced++;
	} else {
		l = xcalloc(1, sizeof *l);
		l->a = a;
		memcpy(l->prefix, prefix, sizeof l->prefix);
		const char *values[1] = {l->prefix};
		l->q = pg_pool_query_prepared(a->pool, STMT_LOOKUP, 1, values, lookup_result_cb, l);
		if (l->q == NULL) {
			free(l);
			log_warn("auth.lookup_failed", "the API key lookup could not be sent",
			         LF_STR("key_prefix", prefix),
			         LF_STR("error", "no database connection"));
			reply_unavailable(req, "API key");
			return;
		}
		l->next = a->lookups;
		if (l->next)
			l->next->prev = l;
		a->lookups = l;
		a->nlookups++;
		a->stats.db_lookups++;
	}
	struct auth_wait *w = xcalloc(1, sizeof *w);
	w->l = l;
	w->req = req;
	memcpy(w->hash, hash, APIKEY_HASH_LEN);
	w->need = need;
	w->done = done;
	w->arg = arg;
	w->prev = l->tail;
	if (l->tail)
		l->tail->next = w;
	else
		l->head = w;
	l->tail = w;
	http_req_on_abort(req, wait_abort_cb, w);
}

/* --- tokens ------------------------------------------------------------- */

static bool project_cached(struct auth *a, const char *id)
{
	if (a->ttl_us < 0)
		return false;
	int64_t now = clock_mono_us();
	for (size_t i = 0; i < a->nprojects; i++) {
		if (strcmp(a->projects[i].id, id) == 0)
			return now - a->projects[i].fetched_mono_us < a->ttl_us;
	}
	return false;
}

/* Replaces the entry of id, else the oldest when full. */
static void project_put(struct auth *a, const char *id)
{
	if (a->ttl_us < 0)
		return;
	size_t slot = a->nprojects;
	for (size_t i = 0; i < a->nprojects; i++) {
		if (strcmp(a->projects[i].id, id) == 0) {
			slot = i;
			break;
		}
	}
	if (slot == PROJECT_CACHE_MAX) {
		slot = 0;
		for (size_t i = 1; i < a->nprojects; i++)
			if (a->projects[i].fetched_mono_us < a->projects[slot].fetched_mono_us)
				slot = i;
	} else if (slot == a->nprojects) {
		a->nprojects++;
	}
	snprintf(a->projects[slot].id, sizeof a->projects[slot].id, "%s", id);
	a->projects[slot].fetched_mono_us = clock_mono_us();
}

static void jwt_decide(struct http_req *req, const struct auth_principal *p, unsigned need,
                       auth_done_fn done, void *arg)
{
	unsigned missing = need & ~p->scopes;
	if (missing) {
		reply_forbidden(req, p->key_prefix, missing);
		return;
	}
	done(req, p, arg);
}

static void project_wait_unlink(struct auth *a, struct project_wait *w)
{
	if (w->prev)
		w->prev->next = w->next;
	else
		a->project_waits = w->next;
	if (w->next)
		w->next->prev = w->prev;
	w->prev = w->next = NULL;
}

static bool project_result_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct project_wait *w = arg;
	struct auth *a = w->a;
	project_wait_unlink(a, w);
	struct project_wait mine = *w;
	free(w);
	http_req_on_abort(mine.req, NULL, NULL);
	if (err) {
		log_warn("auth.lookup_failed", "the token's project could not be looked up",
		         LF_STR("project", mine.p.project_id), LF_STR("error", err->message));
		reply_unavailable(mine.req, "token's project");
	} else if (PQntuples(res) == 0) {
		reply_unauthorized(a, mine.req, "jwt_unknown_project", "jwt");
	} else {
		project_put(a, mine.p.project_id);
		jwt_decide(mine.req, &mine.p, mine.need, mine.done, mine.arg);
	}
	return false;
}

static void project_abort_cb(struct http_req *req, void *arg)
{
	struct project_wait *w = arg;
	pg_pool_cancel(w->q);
	project_wait_unlink(w->a, w);
	free(w);
}

static void jwt_require(struct auth *a, struct http_req *req, const char *tok, size_t len,
                        unsigned need, auth_done_fn done, void *arg)
{
	struct jwt_claims c;
	enum jwt_result r = jwt_verify(a->jwt, tok, len, clock_now_us() / 1000, &c);
	if (r != JWT_OK) {
		reply_unauthorized(a, req, jwt_result_name(r), "jwt");
		return;
	}
	a->stats.jwt_accepted++;
	struct auth_principal p = {.key_prefix = "jwt", .scopes = c.scopes};
	memcpy(p.project_id, c.project, sizeof p.project_id);
	if (project_cached(a, p.project_id)) {
		jwt_decide(req, &p, need, done, arg);
		return;
	}
	struct project_wait *w = xcalloc(1, sizeof *w);
	w->a = a;
	w->req = req;
	w->p = p;
	w->need = need;
	w->done = done;
	w->arg = arg;
	const char *values[1] = {w->p.project_id};
	w->q = pg_pool_query_prepared(a->pool, STMT_PROJECT, 1, values, project_result_cb, w);
	if (w->q == NULL) {
		free(w);
		log_warn("auth.lookup_failed", "the token's project lookup could not be sent",
		         LF_STR("project", p.project_id),
		         LF_STR("error", "no database connection"));
		reply_unavailable(req, "token's project");
		return;
	}
	a->stats.project_lookups++;
	w->next = a->project_waits;
	if (w->next)
		w->next->prev = w;
	a->project_waits = w;
	http_req_on_abort(req, project_abort_cb, w);
}

/* --- the public surface ------------------------------------------------- */

/* The token of "Bearer <token>": the scheme is case-insensitive (RFC 9110
 * §11.1), one or more spaces follow it, trailing blanks are dropped. */
static bool bearer_token(const char *h, const char **tok, size_t *len)
{
	if (h == NULL || strncasecmp(h, "Bearer", 6) != 0 || (h[6] != ' ' && h[6] != '\t'))
		return false;
	const char *s = h + 6;
	while (*s == ' ' || *s == '\t')
		s++;
	size_t n = strlen(s);
	while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
		n--;
	*tok = s;
	*len = n;
	return n > 0;
}

void auth_require(struct auth *a, struct http_req *req, unsigned scope_mask, auth_done_fn done,
                  void *arg)
{
	if (!a->enabled) {
		struct auth_principal p = {.project_id = AUTH_DEFAULT_PROJECT,
		                           .key_prefix = "",
		                           .scopes = APIKEY_SCOPE_ALL};
		done(req, &p, arg);
		return;
	}
	/* A blocked address learns nothing more, and costs no query. */
	uint8_t peer[PEER_KEY_LEN];
	if (a->fail_buckets && peer_key(http_req_peer(req), peer)) {
		int64_t blocked = fail_blocked_us(a, peer);
		if (blocked > 0) {
			reply_rate_limited(a, req, blocked);
			return;
		}
	}
	const char *h = http_req_header(req, "Authorization");
	if (h == NULL) {
		reply_unauthorized(a, req, "missing", NULL);
		return;
	}
	const char *tok;
	size_t len;
	if (!bearer_token(h, &tok, &len)) {
		reply_unauthorized(a, req, "scheme", NULL);
		return;
	}
	/* API keys never hold a '.'; a JWT always does. */
	if (a->jwt && memchr(tok, '.', len) != NULL &&
	    !(len >= APIKEY_TAG_LEN && memcmp(tok, APIKEY_TAG, APIKEY_TAG_LEN) == 0)) {
		jwt_require(a, req, tok, len, scope_mask, done, arg);
		return;
	}
	struct apikey key;
	enum apikey_result r = apikey_parse(tok, len, &key);
	if (r != APIKEY_OK) {
		reply_unauthorized(a, req, apikey_result_name(r), NULL);
		return;
	}
	char prefix[APIKEY_PREFIX_LEN + 1];
	memcpy(prefix, key.prefix, sizeof prefix);
	uint8_t hash[APIKEY_HASH_LEN];
	bool hashed = apikey_hash_secret(key.secret, hash);
	OPENSSL_cleanse(&key, sizeof key);
	if (!hashed) {
		log_error("auth.hash_failed", "SHA-256 failed", LF_STR("key_prefix", prefix));
		http_reply_problem(req, 500, "internal", NULL, "the API key could not be checked",
		                   NULL);
		return;
	}
	struct cache_entry *e = cache_get(a, prefix);
	if (e) {
		a->stats.cache_hits++;
		/* decide() runs done last, after its last use of the entry */
		decide(a, req, &e->row, hash, scope_mask, done, arg);
		return;
	}
	a->stats.cache_misses++;
	lookup_join(a, req, prefix, hash, scope_mask, done, arg);
}

void auth_forget(struct auth *a, const char *prefix)
{
	if (strncmp(prefix, APIKEY_TAG, APIKEY_TAG_LEN) == 0)
		prefix += APIKEY_TAG_LEN;
	if (strnlen(prefix, APIKEY_PREFIX_LEN) < APIKEY_PREFIX_LEN)
		return;
	cache_remove(a, prefix);
	struct auth_lookup *l = lookup_find(a, prefix);
	if (l)
		l->no_cache = true;
}

/* The PEM file, read once at start (at most 64 KiB); caller frees. */
static char *read_pem(const char *path, size_t *len)
{
	FILE *f = fopen(path, "re");
	if (f == NULL) {
		log_error("auth.start", "cannot open auth.jwt.public_key_file",
		          LF_STR("path", path), LF_STR("error", strerror(errno)));
		return NULL;
	}
	size_t cap = 64 * 1024;
	char *buf = xmalloc(cap + 1);
	size_t n = fread(buf, 1, cap + 1, f);
	bool bad = ferror(f) || n > cap;
	fclose(f);
	if (bad) {
		log_error("auth.start",
		          "cannot read auth.jwt.public_key_file (or it is over 64 KiB)",
		          LF_STR("path", path));
		free(buf);
		return NULL;
	}
	buf[n] = '\0';
	*len = n;
	return buf;
}

static struct jwt_verifier *jwt_setup(const struct auth_opts *o)
{
	char *err = NULL;
	struct jwt_verifier *v = jwt_verifier_new(&o->jwt, &err);
	if (v == NULL) {
		log_error("auth.start", "bad JWT settings", LF_STR("error", err));
		free(err);
		return NULL;
	}
	const char *secret = o->jwt_hs256_secret;
	if (secret && secret[0] &&
	    !jwt_verifier_add_hmac(v, secret, strlen(secret), o->jwt_hs256_kid, &err)) {
		log_error("auth.start", "bad auth.jwt.hs256_secret", LF_STR("error", err));
		goto fail;
	}
	const char *path = o->jwt_public_key_file;
	if (path && path[0]) {
		size_t len = 0;
		char *pem = read_pem(path, &len);
		if (pem == NULL)
			goto fail;
		enum jwt_alg alg = JWT_RS256;
		bool ok = jwt_verifier_add_pem(v, pem, len, o->jwt_public_key_kid, &alg, &err);
		free(pem);
		if (!ok) {
			log_error("auth.start", "bad auth.jwt.public_key_file",
			          LF_STR("path", path), LF_STR("error", err));
			goto fail;
		}
		log_info("auth.jwt_key", "JWT public key loaded", LF_STR("path", path),
		         LF_STR("alg", jwt_alg_name(alg)));
	}
	if (jwt_verifier_nkeys(v) == 0) {
		log_error("auth.start", "JWT is enabled but no key is configured");
		goto fail;
	}
	return v;
fail:
	free(err);
	jwt_verifier_free(v);
	return NULL;
}

struct auth *auth_new(struct pg_pool *pool, const struct auth_opts *opts)
{
	struct auth_opts o = opts ? *opts : (struct auth_opts){.enabled = true};
	struct auth *a = xcalloc(1, sizeof *a);
	a->pool = pool;
	a->enabled = o.enabled;
	a->ttl_us = (o.cache_ttl_ms == 0 ? 10000 : o.cache_ttl_ms) * 1000;
	a->cache_max = o.cache_max ? o.cache_max : 10000;
	a->touch_interval_us = (o.touch_interval_ms > 0 ? o.touch_interval_ms : 60000) * 1000;
	if (!a->enabled)
		return a;
	if (pool == NULL) {
		log_error("auth.start", "API keys need a database pool");
		free(a);
		return NULL;
	}
	if (a->ttl_us > 0) {
		a->nbuckets = 16;
		while (a->nbuckets < a->cache_max && a->nbuckets < (1u << 20))
			a->nbuckets <<= 1;
		a->buckets = xcalloc(a->nbuckets, sizeof *a->buckets);
	}
	if (o.max_failures > 0) {
		a->max_failures = o.max_failures;
		a->failure_window_us =
		        (o.failure_window_ms > 0 ? o.failure_window_ms : 60000) * (int64_t)1000;
		a->fail_max = o.failure_table_max ? o.failure_table_max : 4096;
		a->fail_nbuckets = 16;
		while (a->fail_nbuckets < a->fail_max && a->fail_nbuckets < (1u << 20))
			a->fail_nbuckets <<= 1;
		a->fail_buckets = xcalloc(a->fail_nbuckets, sizeof *a->fail_buckets);
	}
	if (o.jwt_enabled && (a->jwt = jwt_setup(&o)) == NULL) {
		auth_free(a);
		return NULL;
	}
	if (!pg_pool_prepare(pool, STMT_LOOKUP, sql_lookup, 1, NULL) ||
	    !pg_pool_prepare(pool, STMT_TOUCH, sql_touch, 2, NULL) ||
	    (a->jwt && !pg_pool_prepare(pool, STMT_PROJECT, sql_project, 1, NULL))) {
		log_error("auth.start", "cannot register the API key statements on the pool");
		auth_free(a);
		return NULL;
	}
	return a;
}

void auth_free(struct auth *a)
{
	if (a == NULL)
		return;
	while (a->lookups) {
		struct auth_lookup *l = a->lookups;
		lookup_unlink(a, l);
		pg_pool_cancel(l->q);
		struct auth_wait *w;
		while ((w = l->head) != NULL) {
			wait_unlink(l, w);
			http_req_on_abort(w->req, NULL, NULL);
			free(w);
		}
		free(l);
	}
	while (a->touches) {
		struct auth_touch *t = a->touches;
		touch_unlink(a, t);
		pg_pool_cancel(t->q);
		free(t);
	}
	while (a->project_waits) {
		struct project_wait *w = a->project_waits;
		project_wait_unlink(a, w);
		pg_pool_cancel(w->q);
		http_req_on_abort(w->req, NULL, NULL);
		free(w);
	}
	while (a->oldest)
		cache_remove(a, a->oldest->row.prefix);
	free(a->buckets);
	while (a->fail_oldest)
		fail_remove(a, a->fail_oldest);
	free(a->fail_buckets);
	jwt_verifier_free(a->jwt);
	free(a);
}

void auth_stats(const struct auth *a, struct auth_stats *out)
{
	*out = a->stats;
	out->cache_entries = a->nentries;
	out->lookups_in_flight = a->nlookups;
	out->failure_entries = a->fail_n;
}
