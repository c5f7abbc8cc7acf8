/* quota: the per-project limits a submission must pass (issue "security";
 * docs/security/quotas.md):
 *   - submissions_per_second: a token bucket per project on this instance
 *     (burst = max(1, rate)); past it, 429 with Retry-After;
 *   - max_input_bytes: the request body's size (413);
 *   - max_queued_jobs: jobs queued (or pending) for the project (429);
 *   - max_concurrent_jobs is not checked here: the scheduler's claim keeps a
 *     project's running jobs at or under it and the rest wait in queued.
 * Each limit comes from the project's row (projects.max_*: NULL = the
 * configured default, 0 = off) or the configuration (quota.*; 0 = off). A
 * project's row is cached for QUOTA_CACHE_MS, so a changed override takes
 * effect within that; the queued count is read fresh whenever that limit
 * applies. The check happens before the job is inserted: submissions in
 * flight at the same moment (on all instances) can pass a queued limit by
 * at most their number. */
#ifndef SL_ENGINE_QUOTA_H
#define SL_ENGINE_QUOTA_H

#include <stddef.h>
#include <stdint.h>

struct pg_pool;
struct pg_error;
struct event_base;
struct quota;
struct quota_op;

#define QUOTA_CACHE_MS 10000
#define QUOTA_PROJECTS_MAX 4096 /* rate buckets and cached rows, oldest evicted */

struct quota_limits {
	int64_t max_concurrent_jobs, max_queued_jobs, max_input_bytes; /* 0 = off */
	double submissions_per_second; /* 0 = off */
};

enum quota_verdict {
	QUOTA_OK,
	QUOTA_RATE, /* submissions_per_second: 429 + Retry-After */
	QUOTA_INPUT_TOO_LARGE, /* max_input_bytes: 413 */
	QUOTA_QUEUED_FULL, /* max_queued_jobs: 429 */
	QUOTA_NO_PROJECT, /* the project row is gone */
};

struct quota_result {
	enum quota_verdict verdict;
	const char *limit; /* "max_queued_jobs", ...; NULL when OK */
	int64_t value, usage; /* the limit's value and the current usage */
	double rate; /* QUOTA_RATE: the limit (value is its whole part) */
	int64_t retry_after_s; /* QUOTA_RATE: when a token is back; else 0 */
};

/* Prepares its statement on pool (borrowed). defaults are copied. */
struct quota *quota_new(struct event_base *base, struct pg_pool *pool,
                        const struct quota_limits *defaults) __attribute__((warn_unused_result));
void quota_free(struct quota *q);

/* The rate limit alone (no I/O): takes a token from the project's bucket.
 * QUOTA_OK or QUOTA_RATE; now_us is the monotonic clock. Pure apart from the
 * bucket; exposed for tests. */
void quota_take(struct quota *q, const char *project, int64_t now_us, struct quota_result *out);

/* input size and queued jobs for one submission of body_bytes. cb runs once,
 * from the loop (err set when the database failed), unless cancelled. */
typedef void (*quota_cb)(const struct quota_result *r, const struct pg_error *err, void *arg);
struct quota_op *quota_check(struct quota *q, const char *project, size_t body_bytes, quota_cb cb,
                             void *arg);
void quota_op_cancel(struct quota_op *op);

#endif
