/* metrics: the registry of counters, gauges and fixed-bucket histograms, and
 * its two expositions (Prometheus text 0.0.4 and the reference JSON shape).
 * Pure: no I/O, no clock, no event loop; the HTTP side and the sampler wrap it.
 *
 * Names. Every metric is declared once with its reference name, dotted, in the
 * reference's unit ("http.request_latency_ms"). Updates and the JSON
 * exposition use that name and unit. The Prometheus exposition renames it to
 * "stageline_" + the name with '.' -> '_' and converts to base units by the
 * name's suffix (before "_total" on counters):
 *   _ms  -> _seconds (value / 1000)     _mb -> _bytes (value * 1048576)
 *   _pct -> _ratio   (value / 100)      anything else is passed through.
 * Counters must end in "_total"; no other type may.
 *
 * Labels. A metric has 0..METRIC_MAX_LABELS label names. A call passes exactly
 * that many values, in declaration order, as a NULL-terminated array (which
 * the macros below build). Each distinct value tuple is a
 * series; a metric holds at most max_series of them (default 256). Past the
 * cap, a call for a new tuple is dropped, and the registry's overflow callback
 * runs once for that metric (never again until the registry is freed).
 *
 * Failure. No call here can fail or abort its caller: a NULL metric or series,
 * the wrong number of label values, a NULL value, a type mismatch (observe on
 * a counter), a negative counter increment or a non-finite value is ignored.
 * Ignored calls on a real metric are counted (metrics_registry_stats().dropped);
 * calls while the registry is disabled are not.
 *
 * Cost. The first use of a label tuple allocates its series; later calls hash
 * the values (FNV-1a), probe an open-addressed table and compare strings, and
 * never allocate. A series handle (metric_series()) skips even that; handles
 * stay valid until the registry is freed. Metrics without labels have their
 * single series from declaration, so they are exposed as 0 before any update.
 *
 * Ownership. metrics_registry_new() returns a registry the caller frees with
 * metrics_registry_free(), which frees every metric and series (handles die
 * with it). Declarations copy their strings and buckets. The default registry
 * is created on first use and freed by metrics_default_free(). Single-threaded
 * like the rest of the daemon: no locking. */
#ifndef SL_CORE_METRICS_H
#define SL_CORE_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct buf;
struct metrics_registry;
struct metric;
struct metric_series;

#define METRIC_MAX_LABELS 4
#define METRIC_DEFAULT_MAX_SERIES 256
#define METRIC_MAX_BUCKETS 32

enum metric_type { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM };

/* The unit convention, read from the name's suffix at declaration. */
enum metric_unit {
	METRIC_UNIT_NONE, /* counts, or already a base unit (…_seconds, …_bytes) */
	METRIC_UNIT_MS, /* milliseconds; Prometheus: seconds */
	METRIC_UNIT_MB, /* mebibytes;    Prometheus: bytes */
	METRIC_UNIT_PCT, /* percent 0..100; Prometheus: ratio 0..1 */
};

struct metric_def {
	const char *name; /* dotted reference name: [a-z][a-z0-9_.]* */
	enum metric_type type;
	const char *help; /* one line for people; newlines and backslashes are escaped */
	/* Label names ([a-z_][a-z0-9_]*, not "__*", not "le" on a histogram, no
	 * duplicates), NULL after the last. */
	const char *labels[METRIC_MAX_LABELS];
	/* Histograms: upper bounds in the name's unit, finite and strictly
	 * increasing, 1..METRIC_MAX_BUCKETS of them; +Inf is implicit. */
	const double *buckets;
	size_t nbuckets;
	size_t max_series; /* 0: METRIC_DEFAULT_MAX_SERIES */
};

/* Called once per metric, the first time a new label tuple is refused because
 * the metric holds max_series series. name is the reference name. */
typedef void (*metrics_overflow_cb)(const char *name, size_t max_series, void *arg);

struct metrics_stats {
	size_t metrics; /* declared families */
	size_t series; /* live series, all metrics */
	size_t allocations; /* allocations made since the registry was created */
	uint64_t dropped; /* ignored update calls (cap, bad labels, bad values) */
};

/* Registry. ----------------------------------------------------------------- */

/* An empty registry (no catalog), enabled. Freed with metrics_registry_free(). */
struct metrics_registry *metrics_registry_new(void);
void metrics_registry_free(struct metrics_registry *reg);
/* Disabled, every update is a no-op (declarations and expositions still work);
 * for measuring the overhead of instrumentation. */
void metrics_set_enabled(struct metrics_registry *reg, bool enabled);
bool metrics_enabled(const struct metrics_registry *reg);
void metrics_set_overflow_cb(struct metrics_registry *reg, metrics_overflow_cb fn, void *arg);
void metrics_registry_stats(const struct metrics_registry *reg, struct metrics_stats *out);

/* Declares a metric. Declaring a name again with the same type, labels and
 * buckets returns the existing metric; an invalid definition or a clash with
 * an existing one returns NULL (which every other call accepts and ignores). */
struct metric *metrics_declare(struct metrics_registry *reg, const struct metric_def *def);
/* The metric with this reference name, or NULL. Linear: for setup, not hot paths. */
struct metric *metrics_find(const struct metrics_registry *reg, const char *name);

/* Changes a metric's series cap; existing series stay even above it. */
void metric_set_max_series(struct metric *m, size_t max_series);
/* Getters; for NULL: NULL, METRIC_COUNTER, METRIC_UNIT_NONE. */
const char *metric_name(const struct metric *m);
enum metric_type metric_type(const struct metric *m);
enum metric_unit metric_unit(const struct metric *m);
/* Writes the Prometheus family name ("stageline_http_request_latency_seconds")
 * into out; returns its length, or 0 (out = "") when m is NULL or out too small. */
size_t metric_prom_name(const struct metric *m, char *out, size_t size);
/* Live series of m (label tuples seen so far). */
size_t metric_nseries(const struct metric *m);

/* Updates. -------------------------------------------------------------------- */

/* The series for a NULL-terminated array of label values (NULL or {NULL} for a
 * metric without labels). Allocates only on a tuple's first use. Returns NULL
 * on a NULL metric, a bad tuple or past the cap (the last two count a drop).
 * Works while the registry is disabled, so handles can be taken at startup. */
struct metric_series *metric_series(struct metric *m, const char *const *label_values);
/* Counter: v >= 0. Gauge: any finite v. */
void metric_series_inc(struct metric_series *s, double v);
void metric_series_dec(struct metric_series *s, double v); /* gauges only */
void metric_series_set(struct metric_series *s, double v); /* gauges only */
void metric_series_observe(struct metric_series *s, double v); /* histograms only */
/* Current value (counter, gauge) or sum (histogram); 0 for NULL. */
double metric_series_value(const struct metric_series *s);
/* Histogram observation count; 0 for anything else. */
uint64_t metric_series_obs_count(const struct metric_series *s);
/* Histogram: observations in bucket i alone (not cumulative); i == nbuckets is
 * the +Inf bucket. 0 when out of range. */
uint64_t metric_series_bucket(const struct metric_series *s, size_t i);

/* Builds a NULL-terminated label array:
 * metric_series(m, METRIC_LABELS("GET", "/v1/jobs", "2xx")); METRIC_LABELS() for none. */
#define METRIC_LABELS(...) ((const char *const[]){__VA_ARGS__ __VA_OPT__(, ) NULL})

/* One-shot updates: lookup (or first-use creation) of the series, then the
 * update. The label values follow v, in declaration order:
 *   metric_inc(m, 1, "GET", "/v1/jobs", "2xx");   metric_inc(m, 1);
 * The macros build a NULL-terminated array, so each value is type-checked as a
 * const char * (an int is a compile error, not a crash) and a wrong count or a
 * NULL value is seen, and ignored, at run time. gauges: inc, dec, set;
 * counters: inc; histograms: observe. */
#define metric_inc(m, v, ...) metric_inc_labels((m), (v), METRIC_LABELS(__VA_ARGS__))
#define metric_dec(m, v, ...) metric_dec_labels((m), (v), METRIC_LABELS(__VA_ARGS__))
#define metric_set(m, v, ...) metric_set_labels((m), (v), METRIC_LABELS(__VA_ARGS__))
#define metric_observe(m, v, ...) metric_observe_labels((m), (v), METRIC_LABELS(__VA_ARGS__))
/* What the macros call; labels as for metric_series(). */
void metric_inc_labels(struct metric *m, double v, const char *const *labels);
void metric_dec_labels(struct metric *m, double v, const char *const *labels);
void metric_set_labels(struct metric *m, double v, const char *const *labels);
void metric_observe_labels(struct metric *m, double v, const char *const *labels);

/* Exposition. ----------------------------------------------------------------- */

/* Appends the Prometheus text format 0.0.4 (Content-Type
 * "text/plain; version=0.0.4; charset=utf-8"): HELP and TYPE for every family,
 * even one with no series yet, in declaration order; ends with a newline. */
void metrics_format_prometheus(const struct metrics_registry *reg, struct buf *out);
/* Appends {"timestamp": ts, "counters": {...}, "gauges": {...}, "histograms":
 * {...}} with reference names and units; series keys are "name" or
 * "name|k=v,k=v"; histogram buckets are cumulative, keyed by bound and "+Inf".
 * ts is the caller's string (RFC 3339); NULL writes null. */
void metrics_format_json(const struct metrics_registry *reg, struct buf *out, const char *ts);

/* The catalog. ------------------------------------------------------------------
 * Every metric stageline emits, in one place. Columns: enum id, type, reference
 * name, label names (parenthesised, maybe empty), bucket set (defined in
 * metrics.c; "none" for non-histograms), series cap (0: default), help.
 * docs/metrics.md describes each one and who updates it. */
/* clang-format off */
#define METRICS_CATALOG(X) \
	X(M_HTTP_REQUESTS_TOTAL, METRIC_COUNTER, "http.requests_total", \
	  ("method", "route", "code_class"), none, 1024, \
	  "HTTP responses sent, by method, route template and status class.") \
	X(M_HTTP_ERRORS_TOTAL, METRIC_COUNTER, "http.errors_total", \
	  ("route", "code"), none, 512, \
	  "HTTP error responses (4xx and 5xx), by route template and status code.") \
	X(M_HTTP_REQUEST_LATENCY_MS, METRIC_HISTOGRAM, "http.request_latency_ms", \
	  ("route"), http, 0, \
	  "End-to-end HTTP request latency, by route template.") \
	X(M_HTTP_CONNECTIONS_OPEN, METRIC_GAUGE, "http.connections_open", \
	  (), none, 0, \
	  "HTTP connections currently open.") \
	X(M_HTTP_LIMIT_REJECTIONS_TOTAL, METRIC_COUNTER, "http.limit_rejections_total", \
	  ("limit"), none, 0, \
	  "Requests refused by the HTTP server's input limits (408, 413, 431, 400), by limit.") \
	X(M_AUTH_FAILURES_TOTAL, METRIC_COUNTER, "auth.failures_total", \
	  ("reason"), none, 0, \
	  "Requests refused with 401, by reason (API key or JWT check that failed).") \
	X(M_AUTH_RATE_LIMITED_TOTAL, METRIC_COUNTER, "auth.rate_limited_total", \
	  (), none, 0, \
	  "Requests refused with 429 because their address failed authentication too often.") \
	X(M_JOBS_CREATED_TOTAL, METRIC_COUNTER, "jobs.created_total", \
	  (), none, 0, \
	  "Jobs created.") \
	X(M_JOBS_STATUS_TRANSITION_TOTAL, METRIC_COUNTER, "jobs.status_transition_total", \
	  ("from", "to"), none, 0, \
	  "Job status transitions, by previous and new status.") \
	X(M_JOBS_TOTAL_LATENCY_MS, METRIC_HISTOGRAM, "jobs.total_latency_ms", \
	  (), long, 0, \
	  "Time from job creation to a terminal status.") \
	X(M_WORKER_STAGE_LATENCY_MS, METRIC_HISTOGRAM, "worker.stage_latency_ms", \
	  ("stage"), long, 0, \
	  "Stage run durations, by stage.") \
	X(M_WORKER_STAGE_FAILURES_TOTAL, METRIC_COUNTER, "worker.stage_failures_total", \
	  ("stage", "code"), none, 0, \
	  "Stage failures, by stage and error code.") \
	X(M_WORKER_INFLIGHT_JOBS, METRIC_GAUGE, "worker.inflight_jobs", \
	  (), none, 0, \
	  "Jobs with a task running on this instance.") \
	X(M_WORKER_RECOVERED_JOBS_TOTAL, METRIC_COUNTER, "worker.recovered_jobs_total", \
	  ("reason"), none, 0, \
	  "Tasks returned to ready after their lease expired, by reason.") \
	X(M_QUEUE_DEPTH, METRIC_GAUGE, "queue.depth", \
	  ("pipeline"), none, 0, \
	  "Tasks ready and not yet claimed, by pipeline.") \
	X(M_QUEUE_OLDEST_READY_AGE_MS, METRIC_GAUGE, "queue.oldest_ready_age_ms", \
	  ("pipeline"), none, 0, \
	  "Age of the oldest ready, unclaimed task, by pipeline.") \
	X(M_EVENTS_PERSIST_FAILURES_TOTAL, METRIC_COUNTER, "events.persist_failures_total", \
	  (), none, 0, \
	  "Job event writes to the database that failed.") \
	X(M_EXTERNAL_CALLS_TOTAL, METRIC_COUNTER, "external.calls_total", \
	  ("service", "op", "outcome"), none, 0, \
	  "Calls to external dependencies, by service, operation and outcome.") \
	X(M_EXTERNAL_CALL_LATENCY_MS, METRIC_HISTOGRAM, "external.call_latency_ms", \
	  ("service", "op"), external, 0, \
	  "Duration of calls to external dependencies, by service and operation.") \
	X(M_STORE_TRANSFER_RETRIES_TOTAL, METRIC_COUNTER, "store.transfer_retries_total", \
	  ("op"), none, 0, \
	  "Task store transfers tried again after a failure, by operation.") \
	X(M_JOBS_LOGS_STORED_TOTAL, METRIC_COUNTER, "jobs.logs_stored_total", \
	  ("outcome"), none, 0, \
	  "Settled jobs whose pipeline.log (and input.json) the finalizer stored, by outcome.") \
	X(M_MODULES_SPAWNS_TOTAL, METRIC_COUNTER, "modules.spawns_total", \
	  ("module"), none, 0, \
	  "Module processes started, by module.") \
	X(M_MODULES_PANICS_TOTAL, METRIC_COUNTER, "modules.panics_total", \
	  ("module"), none, 0, \
	  "Module processes that died without a result or error frame, by module.") \
	X(M_MODULES_RESTARTS_TOTAL, METRIC_COUNTER, "modules.restarts_total", \
	  ("module"), none, 0, \
	  "Persistent module processes restarted, by module.") \
	X(M_SSE_STREAMS_OPEN, METRIC_GAUGE, "sse.streams_open", \
	  (), none, 0, \
	  "SSE streams currently open.") \
	X(M_SSE_EVENTS_SENT_TOTAL, METRIC_COUNTER, "sse.events_sent_total", \
	  ("type"), none, 0, \
	  "SSE events written to clients, by event type.") \
	X(M_SSE_CLIENTS_DROPPED_TOTAL, METRIC_COUNTER, "sse.clients_dropped_total", \
	  ("reason"), none, 0, \
	  "SSE clients disconnected by the server, by reason.") \
	X(M_DB_QUERIES_TOTAL, METRIC_COUNTER, "db.queries_total", \
	  ("op", "outcome"), none, 0, \
	  "Database queries, by operation and outcome.") \
	X(M_DB_ERRORS_TOTAL, METRIC_COUNTER, "db.errors_total", \
	  ("kind"), none, 0, \
	  "Database errors, by kind.") \
	X(M_DB_QUERY_LATENCY_MS, METRIC_HISTOGRAM, "db.query_latency_ms", \
	  ("op"), db, 0, \
	  "Database query latency, by operation.") \
	X(M_DB_POOL_WAITERS, METRIC_GAUGE, "db.pool_waiters", \
	  (), none, 0, \
	  "Requests waiting for a free database connection.") \
	X(M_DB_CONNECTIONS, METRIC_GAUGE, "db.connections", \
	  ("state"), none, 0, \
	  "Database connections, by state.") \
	X(M_PROC_MEMORY_RSS_MB, METRIC_GAUGE, "proc.memory_rss_mb", \
	  (), none, 0, \
	  "Resident memory of the daemon.") \
	X(M_PROC_OPEN_FDS, METRIC_GAUGE, "proc.open_fds", \
	  (), none, 0, \
	  "Open file descriptors of the daemon (best effort).") \
	X(M_SCRATCH_DISK_USED_PCT, METRIC_GAUGE, "scratch.disk_used_pct", \
	  (), none, 0, \
	  "Used share of the file system holding the scratch directory.") \
	X(M_EVENT_LOOP_LAG_MS, METRIC_HISTOGRAM, "event_loop.lag_ms", \
	  (), loop, 0, \
	  "Event loop lag: how late the sampler's periodic timer fired.") \
	X(M_PROCESS_START_TIME_SECONDS, METRIC_GAUGE, "process.start_time_seconds", \
	  (), none, 0, \
	  "Start time of the daemon, in seconds since the Unix epoch.")
/* clang-format on */

enum metric_id {
#define METRIC_ID_(id, type, name, labels, buckets, max_series, help) id,
	METRICS_CATALOG(METRIC_ID_)
#undef METRIC_ID_
	        METRIC_ID_COUNT
};

/* Declares the whole catalog into reg; false if any entry was refused (a bug
 * the unit test catches). */
bool metrics_declare_catalog(struct metrics_registry *reg) __attribute__((warn_unused_result));
/* A catalog metric of reg, or NULL when reg lacks the catalog or id is out of range. */
struct metric *metrics_get(const struct metrics_registry *reg, enum metric_id id);
const char *metrics_catalog_name(enum metric_id id);

/* The process-wide registry, with the catalog declared, created on first use. */
struct metrics_registry *metrics_default(void);
/* metrics_get(metrics_default(), id). */
struct metric *metrics_default_get(enum metric_id id);
/* Frees the default registry (at exit); handles into it die. A later
 * metrics_default() makes a fresh one. */
void metrics_default_free(void);

#endif
