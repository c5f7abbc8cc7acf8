/* auth: the API-key check every protected handler runs first. It owns the
 * in-memory key cache, the lookups in flight (coalesced per key prefix, each
 * cancellable) and the throttled last_used_at updates, and it answers every
 * failure itself (401, 403, 503), so a handler only ever sees a principal.
 *
 * Cache and revocation: a key row is cached by prefix for cache_ttl_ms
 * (10 s by default, at most cache_max entries, least recently used evicted).
 * A revocation or expiry made elsewhere therefore takes effect on this
 * instance within the TTL (expires_at itself is checked on every request
 * against the clock); auth_forget() makes one take effect here at once and
 * is what this instance's own revoke path calls.
 *
 * JWT (optional): a bearer token that is not an API key ("sl_...") and
 * holds a '.' goes to jwt.c when a verifier is configured; a token that
 * verifies acts for its project claim with its scopes claim, once the
 * project is known to exist (the projects row, cached like key rows; a
 * project deleted elsewhere stops working here within the TTL).
 *
 * Failed-auth rate limiting: every 401 but a missing header counts against
 * the client's address (IPv4, the /64 of IPv6, or all Unix-socket clients
 * together). After max_failures of them within failure_window, every
 * request from that address is 429 for a window from the last counted
 * failure, before its header is read: a valid key from that address too,
 * and a success does not reset the count (it would let one valid key shield
 * a brute force). The table of addresses is bounded, least recently failed
 * evicted.
 *
 * Disabled auth (auth.enabled: false): every request is project "default"
 * with every scope, no header is read and nothing is looked up; the project
 * row "default" must exist for anything that writes. */
#ifndef SL_HTTP_AUTH_H
#define SL_HTTP_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/apikey.h"
#include "http/jwt.h"

struct auth;
struct http_req;
struct pg_pool;

#define AUTH_DEFAULT_PROJECT "default"
#define AUTH_PROJECT_MAX 63 /* projects.id is [a-z0-9-]{1,63} */

/* Who is calling. Valid only during the done callback: copy what you keep. */
struct auth_principal {
	char project_id[AUTH_PROJECT_MAX + 1];
	char key_prefix[APIKEY_PREFIX_LEN + 1]; /* "" when auth is disabled, "jwt" for a token */
	unsigned scopes; /* APIKEY_SCOPE_* */
};

/* Called once, and only when the request is authenticated and has every
 * scope asked for. It may run before auth_require() returns (a cache hit,
 * disabled auth) or later from the loop. req is the handler's again: it
 * must answer it (or register its own abort) as usual. */
typedef void (*auth_done_fn)(struct http_req *req, const struct auth_principal *p, void *arg);

struct auth_opts {
	bool enabled;
	int64_t cache_ttl_ms; /* 0 = 10000; < 0 = no cache (every request asks the DB) */
	size_t cache_max; /* 0 = 10000 entries */
	int64_t touch_interval_ms; /* last_used_at at most this often per key; 0 = 60000 */
	/* Failed-auth rate limiting per client address. */
	int64_t max_failures; /* 401s per address per window before 429; 0 = off */
	int64_t failure_window_ms; /* 0 = 60000 */
	size_t failure_table_max; /* addresses tracked at once; 0 = 4096 */
	/* JWT bearer tokens; off unless jwt_enabled. jwt carries the issuer,
	 * audience, leeway and claim names; the keys come from the secret (at
	 * least 32 bytes) and the PEM file (read here, at start), at least one. */
	bool jwt_enabled;
	struct jwt_opts jwt;
	const char *jwt_hs256_secret; /* NULL or "": none */
	const char *jwt_hs256_kid; /* NULL or "": none */
	const char *jwt_public_key_file; /* absolute path; NULL or "": none */
	const char *jwt_public_key_kid;
};

/* Borrows pool (which must outlive the auth) and prepares its statements on
 * it; with auth disabled pool is not used and may be NULL. opts may be NULL
 * (enabled, defaults). Returns NULL (logged) when enabled and pool is NULL
 * or the statements cannot be registered on it. The caller frees the
 * auth with auth_free() AFTER the HTTP server, whose freeing aborts the
 * requests still waiting here. */
struct auth *auth_new(struct pg_pool *pool, const struct auth_opts *opts)
        __attribute__((warn_unused_result));
/* Cancels every lookup and last_used_at update in flight; no callback fires
 * afterwards. Requests still waiting (there should be none, see auth_new)
 * are forgotten without an answer. Not from inside a done callback. NULL is
 * a no-op. */
void auth_free(struct auth *a);

/* Authenticates req and checks that its key holds every scope in
 * scope_mask, then calls done. On failure it answers req itself and done
 * never runs:
 *   401 urn:stageline:problem:unauthorized, byte-for-byte the same body for
 *       a missing header, another scheme, a malformed key, a bad checksum,
 *       an unknown prefix, a wrong secret, a revoked or an expired key
 *       (the log line says which), with WWW-Authenticate: Bearer
 *       realm="stageline";
 *       (and for every refused JWT: bad shape, signature, alg, kid, exp, nbf,
 *       iss, aud, project claim, or a project that does not exist);
 *   403 urn:stageline:problem:forbidden naming the missing scopes;
 *   429 urn:stageline:problem:rate-limited with Retry-After when the
 *       client's address is blocked for failed attempts (nothing else is
 *       read or looked up);
 *   503 urn:stageline:problem:db-unavailable when the key (or a token's
 *       project) can't be looked up.
 * If the client goes away while the lookup is pending, the lookup is
 * cancelled (when no other request waits for the same key) and nothing
 * fires. The token is never logged; only its public prefix is. */
void auth_require(struct auth *a, struct http_req *req, unsigned scope_mask, auth_done_fn done,
                  void *arg);

/* Drops the cached entry for prefix (8 characters, or "sl_<prefix>_..."), so
 * the next request reads the row again: call it after revoking or changing
 * a key through this instance. */
void auth_forget(struct auth *a, const char *prefix);

/* Counters, for tests and /metrics.json wiring. */
struct auth_stats {
	uint64_t cache_hits;
	uint64_t cache_misses;
	uint64_t db_lookups; /* queries sent (coalesced waiters share one) */
	uint64_t coalesced; /* requests that joined a lookup already in flight */
	uint64_t evictions;
	uint64_t touches; /* last_used_at updates sent */
	size_t cache_entries;
	size_t lookups_in_flight;
	uint64_t rate_limited; /* 429s answered */
	size_t failure_entries; /* addresses in the failure table */
	uint64_t jwt_accepted; /* tokens that verified (whatever came after) */
	uint64_t project_lookups; /* projects rows read for tokens */
};
void auth_stats(const struct auth *a, struct auth_stats *out);

#endif
