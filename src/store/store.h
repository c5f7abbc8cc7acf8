/* store: the object store behind every artifact, log and manifest
 * (ARCHITECTURE.md §6). One backend-neutral, asynchronous interface, a
 * vtable (struct store_ops) per backend: file (file_store.c, the embedded
 * default: a directory) and s3 (s3_store.c, any S3 API over httpc).
 * docs/store.md describes the guarantees.
 *
 * Rules every backend keeps:
 * - Keys are validated by store_key_valid() before any I/O; an invalid key
 *   is STORE_ERR_INVALID_KEY, never a path or a request.
 * - Every operation returns a handle (never NULL) and calls its callback
 *   exactly once, from the loop, never from inside the call that started it
 *   (errors found at once — an invalid key — too). There is no ordering
 *   between operations: start a dependent one from the first one's callback.
 * - store_op_cancel() and store_free() guarantee no callback afterwards and
 *   leave nothing half-written visible under a key.
 * - Big objects stream: a copy moves at most STORE_CHUNK_BYTES per loop pass
 *   and never holds the object in memory; only *_buf operations buffer, and
 *   store_get_buf() is bounded by the caller's max_bytes.
 * - Errors are values (struct store_error); I/O failure never aborts.
 * - Each call is counted in external.calls_total{service, op, outcome} and
 *   timed in external.call_latency_ms{service, op}, service = backend name.
 * Ownership: store_new*() return a store the caller frees with store_free(),
 * before the event_base. A handle belongs to the store: it is valid until its
 * callback has returned or until store_op_cancel(). */
#ifndef SL_STORE_STORE_H
#define SL_STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct config;
struct event_base;

#define STORE_KEY_MAX 1024 /* bytes */
#define STORE_SEGMENT_MAX 255 /* bytes of one '/'-separated segment (NAME_MAX) */
/* Segments starting with this are reserved for in-progress writes. */
#define STORE_TMP_PREFIX ".stl-tmp."
#define STORE_CHUNK_BYTES (256u * 1024) /* per operation per loop pass */
#define STORE_PRESIGN_MAX_TTL_S 900 /* S3's presigned-URL bound, kept by every backend */
#define STORE_LIST_MAX 100000 /* entries one store_list() returns, else TOO_LARGE */

enum store_error_kind {
	STORE_ERR_NOT_FOUND, /* no object under the key */
	STORE_ERR_INVALID_KEY, /* store_key_valid() refused the key or prefix */
	STORE_ERR_INVALID_ARG, /* another argument: ttl out of range, no url_secret, ... */
	STORE_ERR_IO, /* the backend failed (disk, network, a key clashing with a "directory") */
	STORE_ERR_TOO_LARGE, /* get_buf past max_bytes, list past STORE_LIST_MAX */
	STORE_ERR_DENIED, /* the backend refused the request for good (s3: a 4xx such as 403
	                   * SignatureDoesNotMatch or AccessDenied): trying again will not help */
	STORE_ERR_CANCELLED, /* the backend gave the operation up itself (s3: shutdown);
	                      * never after store_op_cancel() or store_free() */
};

struct store_error {
	enum store_error_kind kind;
	char message[512]; /* for logs: names the key, never a secret */
};

/* What head and get_buf report. content_type is the backend's: the file
 * store infers it from the key's extension (docs/store.md). */
struct store_object_info {
	const char *key;
	uint64_t size;
	int64_t mtime_ms; /* Unix time of the last write */
	const char *content_type;
};

struct store_list_entry {
	const char *key;
	uint64_t size;
	int64_t mtime_ms;
};

/* Callbacks: err is NULL on success. Everything they are given is valid only
 * until they return. Any store call is allowed from inside one, store_free()
 * included. */
typedef void (*store_done_cb)(const struct store_error *err, void *arg);
typedef void (*store_head_cb)(const struct store_error *err, const struct store_object_info *info,
                              void *arg);
/* data holds len bytes plus a NUL (so text can be used as a string). */
typedef void (*store_get_buf_cb)(const struct store_error *err,
                                 const struct store_object_info *info, const char *data, size_t len,
                                 void *arg);
/* entries sorted by key, bytewise (S3's order). */
typedef void (*store_list_cb)(const struct store_error *err, const struct store_list_entry *entries,
                              size_t n, void *arg);

/* Keys. ----------------------------------------------------------------------
 * A key is 1..STORE_KEY_MAX bytes of valid UTF-8 (no overlong forms, no
 * surrogates), with no NUL, no other C0 control character or DEL, no
 * backslash; '/'-separated segments that are non-empty (so no leading,
 * trailing or doubled '/'), not "." or "..", at most STORE_SEGMENT_MAX bytes
 * and not starting with STORE_TMP_PREFIX. Pure; why (may be NULL) gets a
 * static reason on false. */
bool store_key_valid(const char *key, size_t len, const char **why);
/* A list prefix: "" (everything), a valid key, or a valid key plus '/'. */
bool store_prefix_valid(const char *prefix, size_t len, const char **why);
const char *store_error_kind_name(enum store_error_kind kind);

/* Construction. --------------------------------------------------------------- */

/* The backend cfg->store.backend names: "file" (root cfg->store.path resolved
 * with config_resolve_path(), cfg->store.url_secret) or "s3" (store.s3.*,
 * with the AWS_* environment variables for what the config leaves empty, see
 * store_new_s3()). NULL and *err (caller frees) on failure. */
struct store *store_new(struct event_base *base, const struct config *cfg, char **err)
        __attribute__((warn_unused_result));
/* The file store over root_dir (made absolute against the cwd and created,
 * mode 0750, with its parents when missing). url_secret "" (or NULL) turns
 * presigned links off. NULL and *err (caller frees) when the root cannot be
 * created or opened. */
struct store *store_new_file(struct event_base *base, const char *root_dir, const char *url_secret,
                             char **err) __attribute__((warn_unused_result));

/* The s3 backend's settings; strings are copied. An empty (or NULL) endpoint,
 * region or credential falls back to the environment: AWS_ENDPOINT_URL_S3,
 * then AWS_ENDPOINT_URL (else https://s3.<region>.amazonaws.com); AWS_REGION,
 * then AWS_DEFAULT_REGION (else us-east-1); AWS_ACCESS_KEY_ID,
 * AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN (the token only when the key
 * pair came from the environment too, or session_token is given). */
struct store_s3_options {
	const char *endpoint; /* http[s]://host[:port], no path */
	const char *bucket;
	const char *region;
	const char *prefix; /* prepended to every key as is ("" = none) */
	const char *access_key_id;
	const char *secret_access_key;
	const char *session_token; /* sent as X-Amz-Security-Token */
	bool path_style; /* host/bucket/key instead of bucket.host/key */
	/* Retries of connection errors, timeouts, 5xx, 429, SlowDown,
	 * RequestTimeout, InternalError: full-jitter exponential backoff, the
	 * n-th wait uniform in [0, min(cap, base * 2^n)]. */
	unsigned max_tries; /* 0: 5 (the first try included) */
	unsigned backoff_base_ms; /* 0: 100 */
	unsigned backoff_cap_ms; /* 0: 5000 */
	int64_t connect_timeout_ms; /* 0: 10 s */
	int64_t io_timeout_ms; /* 0: 60 s without progress */
	unsigned max_conns; /* 0: 8 connections to the endpoint */
	const char *ca_file; /* NULL: the system's CA store */
};

/* NULL and *err (caller frees) on a missing bucket or credentials, or a bad
 * endpoint. */
struct store *store_new_s3(struct event_base *base, const struct store_s3_options *opts, char **err)
        __attribute__((warn_unused_result));

/* Backend interface. -------------------------------------------------------------
 * A backend embeds struct store (and struct store_op in its operations) as
 * the first member. The wrappers below are the whole public surface; callers
 * never use ops directly. */
struct store_op;

struct store_ops {
	const char *name; /* "file", "s3": the service label of the metrics */
	struct store_op *(*put_file)(struct store *s, const char *key, const char *local_path,
	                             const char *content_type, store_done_cb cb, void *arg);
	struct store_op *(*put_buf)(struct store *s, const char *key, const void *data, size_t len,
	                            const char *content_type, store_done_cb cb, void *arg);
	struct store_op *(*get_file)(struct store *s, const char *key, const char *local_path,
	                             store_done_cb cb, void *arg);
	struct store_op *(*get_buf)(struct store *s, const char *key, size_t max_bytes,
	                            store_get_buf_cb cb, void *arg);
	struct store_op *(*get_range)(struct store *s, const char *key, uint64_t offset,
	                              size_t max_bytes, store_get_buf_cb cb, void *arg);
	struct store_op *(*head)(struct store *s, const char *key, store_head_cb cb, void *arg);
	struct store_op *(*list)(struct store *s, const char *prefix, store_list_cb cb, void *arg);
	struct store_op *(*del)(struct store *s, const char *key, store_done_cb cb, void *arg);
	void (*cancel)(struct store_op *op);
	bool (*presign_get)(struct store *s, const char *key, int64_t ttl_s, int64_t now_s,
	                    char **out_url, struct store_error *err);
	/* NULL when the backend's links are checked elsewhere (S3 checks its own). */
	bool (*presign_verify)(struct store *s, const char *key, int64_t exp, const char *sig,
	                       int64_t now_s);
	/* A PUT link for exactly size bytes (uploads). */
	bool (*presign_put)(struct store *s, const char *key, int64_t ttl_s, int64_t now_s,
	                    uint64_t size, char **out_url, struct store_error *err);
	bool (*presign_verify_put)(struct store *s, const char *key, int64_t exp, uint64_t size,
	                           const char *sig, int64_t now_s);
	void (*free)(struct store *s);
};

struct store {
	const struct store_ops *ops;
};

struct store_op {
	struct store *store;
};

/* Operations. ---------------------------------------------------------------- */

/* Streams the local file at local_path into key, replacing any object there.
 * The object appears whole or not at all. content_type is a hint the file
 * store does not keep (it infers one from the extension). */
static inline struct store_op *store_put_file(struct store *s, const char *key,
                                              const char *local_path, const char *content_type,
                                              store_done_cb cb, void *arg)
{
	return s->ops->put_file(s, key, local_path, content_type, cb, arg);
}

/* As store_put_file() from memory; data is copied before the call returns. For
 * small objects (JSON, logs). */
static inline struct store_op *store_put_buf(struct store *s, const char *key, const void *data,
                                             size_t len, const char *content_type, store_done_cb cb,
                                             void *arg)
{
	return s->ops->put_buf(s, key, data, len, content_type, cb, arg);
}

/* Streams key into local_path (its directory must exist), replacing the file
 * whole: a partial copy is never visible under local_path. */
static inline struct store_op *store_get_file(struct store *s, const char *key,
                                              const char *local_path, store_done_cb cb, void *arg)
{
	return s->ops->get_file(s, key, local_path, cb, arg);
}

/* Reads key into memory: STORE_ERR_TOO_LARGE past max_bytes. */
static inline struct store_op *store_get_buf(struct store *s, const char *key, size_t max_bytes,
                                             store_get_buf_cb cb, void *arg)
{
	return s->ops->get_buf(s, key, max_bytes, cb, arg);
}

/* Reads bytes [offset, offset + max_bytes) of key into memory: fewer at the
 * end of the object, none when offset >= its size (not an error). info->size
 * is the size of the whole object. For log tails and HTTP Range requests;
 * counted as op "get_range". */
static inline struct store_op *store_get_range(struct store *s, const char *key, uint64_t offset,
                                               size_t max_bytes, store_get_buf_cb cb, void *arg)
{
	return s->ops->get_range(s, key, offset, max_bytes, cb, arg);
}

static inline struct store_op *store_head(struct store *s, const char *key, store_head_cb cb,
                                          void *arg)
{
	return s->ops->head(s, key, cb, arg);
}

/* Every object whose key starts with prefix (a string prefix, as S3's). A
 * prefix with nothing under it is an empty list, not NOT_FOUND. */
static inline struct store_op *store_list(struct store *s, const char *prefix, store_list_cb cb,
                                          void *arg)
{
	return s->ops->list(s, prefix, cb, arg);
}

/* Removes key. NOT_FOUND when the backend can tell it was absent (the file
 * store always can, S3 never can): callers that only want it gone treat
 * NOT_FOUND as success. */
static inline struct store_op *store_delete(struct store *s, const char *key, store_done_cb cb,
                                            void *arg)
{
	return s->ops->del(s, key, cb, arg);
}

/* No callback of op fires afterwards; anything it half-wrote is removed. A
 * no-op from inside op's own callback. The handle is invalid afterwards. NULL
 * is a no-op. */
static inline void store_op_cancel(struct store_op *op)
{
	if (op)
		op->store->ops->cancel(op);
}

/* Cancels every pending operation (no callback fires) and frees the store.
 * Safe from inside a callback. NULL is a no-op. */
static inline void store_free(struct store *s)
{
	if (s)
		s->ops->free(s);
}

/* Presigned GET links. -----------------------------------------------------------
 * Synchronous and pure (no I/O). *out_url (caller frees) is valid for ttl_s
 * seconds (1..STORE_PRESIGN_MAX_TTL_S) from now_s. The file store returns
 * "/v1/objects/<key, percent-encoded>?exp=<unix>&sig=<hex>", a path on the
 * daemon; S3 returns an absolute URL. STORE_ERR_INVALID_ARG when links are off
 * (no url_secret) or ttl_s is out of range. The URL is a credential: never
 * log it. */
static inline bool store_presign_get_at(struct store *s, const char *key, int64_t ttl_s,
                                        int64_t now_s, char **out_url, struct store_error *err)
{
	return s->ops->presign_get(s, key, ttl_s, now_s, out_url, err);
}

bool store_presign_get(struct store *s, const char *key, int64_t ttl_s, char **out_url,
                       struct store_error *err) __attribute__((warn_unused_result));

/* For the daemon's handler of the file store's links: true when sig (64
 * lowercase hex) is the link's signature for key and exp and now_s <= exp
 * (and exp is no further than STORE_PRESIGN_MAX_TTL_S ahead). Constant-time
 * in the signature. False for a backend without verify. */
static inline bool store_presign_verify(struct store *s, const char *key, int64_t exp,
                                        const char *sig, int64_t now_s)
{
	return s->ops->presign_verify && s->ops->presign_verify(s, key, exp, sig, now_s);
}

/* Presigned PUT links (uploads): as presign_get, for a PUT of exactly size
 * bytes (S3 signs Content-Length into the link; the file store's link is
 * "/v1/objects/<key>?exp=<unix>&size=<n>&sig=<hex>", a PUT on the daemon,
 * checked with store_presign_verify_put()). */
static inline bool store_presign_put_at(struct store *s, const char *key, int64_t ttl_s,
                                        int64_t now_s, uint64_t size, char **out_url,
                                        struct store_error *err)
{
	return s->ops->presign_put(s, key, ttl_s, now_s, size, out_url, err);
}

static inline bool store_presign_verify_put(struct store *s, const char *key, int64_t exp,
                                            uint64_t size, const char *sig, int64_t now_s)
{
	return s->ops->presign_verify_put &&
	       s->ops->presign_verify_put(s, key, exp, size, sig, now_s);
}

#endif
