/* Unit tests for core/metrics: update math, bucket edges, label caps, misuse
 * that must be ignored, the no-allocation hot path, both expositions and the
 * catalog's names against promtool's lint rules. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/metrics.h"

/* Under ASan, count every malloc in the process to prove the hot path makes none. */
#if defined(__SANITIZE_ADDRESS__)
#define HAVE_MALLOC_HOOKS 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HAVE_MALLOC_HOOKS 1
#endif
#endif

#ifdef HAVE_MALLOC_HOOKS
int __sanitizer_install_malloc_and_free_hooks(void (*malloc_hook)(const volatile void *, size_t),
                                              void (*free_hook)(const volatile void *));
static size_t malloc_calls;
static void count_malloc(const volatile void *p, size_t n)
{
	malloc_calls++;
}
static void ignore_free(const volatile void *p)
{
}
#endif

static const double small_buckets[] = {1, 2, 5};

static struct metric *declare(struct metrics_registry *reg, const char *name, enum metric_type type,
                              const char *l0, const char *l1)
{
	struct metric_def d = {
	        .name = name, .type = type, .help = "test metric", .labels = {l0, l1}};
	if (type == METRIC_HISTOGRAM) {
		d.buckets = small_buckets;
		d.nbuckets = 3;
	}
	return metrics_declare(reg, &d);
}

static char *prom_text(const struct metrics_registry *reg)
{
	struct buf b = BUF_INIT;
	metrics_format_prometheus(reg, &b);
	return buf_steal(&b);
}

static char *json_text(const struct metrics_registry *reg, const char *ts)
{
	struct buf b = BUF_INIT;
	metrics_format_json(reg, &b, ts);
	return buf_steal(&b);
}

static void assert_has_line(const char *text, const char *line)
{
	size_t n = strlen(line);
	for (const char *p = text; (p = strstr(p, line)); p++) {
		if ((p == text || p[-1] == '\n') && p[n] == '\n')
			return;
	}
	fail_msg("line not found: %s\n--- in ---\n%s", line, text);
}

static uint64_t dropped(const struct metrics_registry *reg)
{
	struct metrics_stats st;
	metrics_registry_stats(reg, &st);
	return st.dropped;
}

static void test_counter_math(void **state)
{
	struct metrics_registry *reg = metrics_registry_new();
	struct metric *c = declare(reg, "t.requests_total", METRIC_COUNTER, "method", NULL);
	assert_non_null(c);
	metric_inc(c, 1, "GET");
	metric_inc(c, 2.5, "GET");
	metric_inc(c, 1, "POST");
	struct metric_series *get = metric_series(c, METRIC_LABELS("GET"));
	assert_non_null(get);
	assert_true(metric_series_value(get) == 3.5);
	assert_true(metric_series_value(metric_series(c, METRIC_LABELS("POST"))) == 1);
	assert_int_equal(metric_nseries(c), 2);

	uint64_t before = dropped(reg);
	metric_series_inc(get, -1); /* counters only go up */
	metric_series_inc(get, NAN);
	metric_series_inc(get, INFINITY);
	metric_series_set(get, 100); /* and are never set */
	metric_series_dec(get, 1);
	metric_series_observe(get, 1);
	assert_true(metric_series_value(get) == 3.5);
	assert_int_equal(dropped(reg) - before, 6);
	metric_series_inc(get, 0);
	assert_true(metric_series_value(get) == 3.5);
	metrics_registry_free(reg);
}

static void test_gauge_math(void **state)
{
	struct metrics_registry *reg = metrics_registry_new();
	struct metric *g = declare(reg, "t.inflight", METRIC_GAUGE, NULL, NULL);
	assert_non_null(g);
	/* An unlabelled metric has its series (at 0) from the start. */
	assert_int_equal(metric_nseries(g), 1);
	struct metric_series *s = metric_series(g, NULL);
	assert_ptr_equal(s, metric_series(g, METRIC_LABELS(NULL)));
	assert_true(metric_series_value(s) == 0);
	metric_inc(g, 1);
	metric_inc(g, 1);
	metric_inc(g, 1);
	metric_dec(g, 1);
	assert_true(metric_series_value(s) == 2);
	metric_set(g, -7.25);
	assert_true(metric_series_value(s) == -7.25);
	metric_series_inc(s, 0.25);
	metric_series_dec(s, -1);
	assert_true(metric_series_value(s) == -6);
	metric_set(g, NAN);
	metric_observe(g, 3);
	assert_true(metric_series_value(s) == -6);
	metrics_registry_free(reg);
}

static void test_histogram_buckets(void **state)
{
	struct metrics_registry *reg = metrics_registry_new();
	struct metric *h = declare(reg, "t.size", METRIC_HISTOGRAM, NULL, NULL);
	assert_non_null(h);
	struct metric_series *s = metric_series(h, NULL);
	/* le semantics: a value equal to a bound falls in that bound's bucket. */
	const double obs[] = {-3, 0.5, 1, 1.0000001, 2, 2.5, 5, 5.0000001, 1e9};
	for (size_t i = 0; i < sizeof obs / sizeof obs[0]; i++)
		metric_observe(h, obs[i]);
	assert_int_equal(metric_series_bucket(s, 0), 3); /* -3, 0.5, 1 */
	assert_int_equal(metric_series_bucket(s, 1), 2); /* 1.0000001, 2 */
	assert_int_equal(metric_series_bucket(s, 2), 2); /* 2.5, 5 */
	assert_int_equal(metric_series_bucket(s, 3), 2); /* +Inf */
	assert_int_equal(metric_series_bucket(s, 4), 0); /* out of range */
	assert_int_equal(metric_series_obs_count(s), 9);
	double sum = 0;
	for (size_t i = 0; i < sizeof obs / sizeof obs[0]; i++)
		sum += obs[i];
	assert_true(metric_series_value(s) == sum);

	metric_observe(h, NAN);
	metric_series_inc(s, 1);
	metric_series_set(s, 1);
	assert_int_equal(metric_series_obs_count(s), 9);
	metrics_registry_free(reg);
}

static void test_prometheus_histogram_cumulative(void **state)
{
	static const double b[] = {1, 2.5, 10};
	struct metrics_registry *reg = metrics_registry_new();
	struct metric *h = metrics_declare(reg, &(struct metric_def){.name = "t.latency_ms",
	                                                             .type = METRIC_HISTOGRAM,
	                                                             .help = "Latency.",
	                                                             .labels = {"route"},
	                                                             .buckets = b,
	                                                             .nbuckets = 3});
	assert_non_null(h);
	metric_observe(h, 1, "/a");
	metric_observe(h, 1, "/a");
	metric_observe(h, 2, "/a");
	metric_observe(h, 7, "/a");
	metric_observe(h, 15000, "/a");
	char *t = prom_text(reg);
	assert_has_line(t, "# HELP stageline_t_latency_seconds Latency.");
	assert_has_line(t, "# TYPE stageline_t_latency_seconds histogram");
	assert_has_line(t, "stageline_t_latency_seconds_bucket{route=\"/a\",le=\"0.001\"} 2");
	assert_has_line(t, "stageline_t_latency_seconds_bucket{route=\"/a\",le=\"0.0025\"} 3");
	assert_has_line(t, "stageline_t_latency_seconds_bucket{route=\"/a\",le=\"0.01\"} 4");
	assert_has_line(t, "stageline_t_latency_seconds_bucket{route=\"/a\",le=\"+Inf\"} 5");
	assert_has_line(t, "stageline_t_latency_seconds_sum{route=\"/a\"} 15.011");
	assert_has_line(t, "stageline_t_latency_seconds_count{route=\"/a\"} 5");
	assert_true(t[strlen(t) - 1] == '\n');
	free(t);

	/* Unlabelled: the le label stands alone. */
	struct metric *u = declare(reg, "t.plain", METRIC_HISTOGRAM, NULL, NULL);
	metric_observe(u, 2);
	t = prom_text(reg);
	assert_has_line(t, "stageline_t_plain_bucket{le=\"1\"} 0");
	assert_has_line(t, "stageline_t_plain_bucket{le=\"2\"} 1");
	assert_has_line(t, "stageline_t_plain_bucket{le=\"+Inf\"} 1");
	assert_has_line(t, "stageline_t_plain_sum 2");
	assert_has_line(t, "stageline_t_plain_count 1");
	free(t);
	metrics_registry_free(reg);
}

struct overflow_log {
	int calls;
	char name[64];
	size_t cap;
};

static void on_overflow(const char *name, size_t max_series, void *arg)
{
	struct overflow_log *log = arg;
	log->calls++;
	snprintf(log->name, sizeof log->name, "%s", name);
	log->cap = max_series;
}

static void test_label_cap(void **state)
{
	struct overflow_log log = {0};
	struct metrics_registry *reg = metrics_registry_new();
	metrics_set_overflow_cb(reg, on_overflow, &log);
	struct metric *c = metrics_declare(reg, &(struct metric_def){.name = "t.hits_total",
	                                                             .type = METRIC_COUNTER,
	                                                             .help = "h",
	                                                             .labels = {"k"},
	                                                             .max_series = 3});
	struct metric *g = declare(reg, "t.level", METRIC_GAUGE, "k", NULL);
	assert_non_null(c);
	assert_non_null(g);
	metric_set_max_series(g, 1);

	metric_inc(c, 1, "a");
	metric_inc(c, 1, "b");
	metric_inc(c, 1, "c");
	assert_int_equal(log.calls, 0);
	uint64_t before = dropped(reg);
	metric_inc(c, 1, "d");
	assert_int_equal(log.calls, 1);
	assert_string_equal(log.name, "t.hits_total");
	assert_int_equal(log.cap, 3);
	assert_null(metric_series(c, METRIC_LABELS("e")));
	metric_inc(c, 1, "f");
	assert_int_equal(log.calls, 1); /* once per metric */
	assert_int_equal(dropped(reg) - before, 3);
	assert_int_equal(metric_nseries(c), 3);
	/* Known tuples keep working past the cap. */
	metric_inc(c, 5, "a");
	assert_true(metric_series_value(metric_series(c, METRIC_LABELS("a"))) == 6);

	metric_set(g, 1, "x");
	metric_set(g, 1, "y");
	metric_set(g, 1, "z");
	assert_int_equal(log.calls, 2); /* the other metric logs its own once */
	assert_string_equal(log.name, "t.level");
	assert_int_equal(metric_nseries(g), 1);

	char *t = prom_text(reg);
	assert_null(strstr(t, "k=\"d\""));
	assert_null(strstr(t, "k=\"y\""));
	free(t);
	metrics_registry_free(reg);
}

static void test_bad_calls_ignored(void **state)
{
	struct metrics_registry *reg = metrics_registry_new();
	struct metric *c = declare(reg, "t.calls_total", METRIC_COUNTER, "a", "b");
	struct metric *h = declare(reg, "t.lat_ms", METRIC_HISTOGRAM, "a", NULL);
	struct metric *g = declare(reg, "t.g", METRIC_GAUGE, NULL, NULL);
	assert_non_null(c);
	assert_non_null(h);
	assert_non_null(g);
	char *before = prom_text(reg);
	char *json_before = json_text(reg, "ts");

	/* NULL metric, NULL series: every entry point. */
	metric_inc(NULL, 1);
	metric_inc(NULL, 1, "x", "y");
	metric_dec(NULL, 1);
	metric_set(NULL, 1);
	metric_observe(NULL, 1, "x");
	assert_null(metric_series(NULL, METRIC_LABELS("x")));
	metric_series_inc(NULL, 1);
	metric_series_dec(NULL, 1);
	metric_series_set(NULL, 1);
	metric_series_observe(NULL, 1);
	assert_true(metric_series_value(NULL) == 0);
	assert_int_equal(metric_series_obs_count(NULL), 0);
	assert_int_equal(metric_series_bucket(NULL, 0), 0);
	assert_null(metric_name(NULL));
	assert_int_equal(metric_nseries(NULL), 0);
	metric_set_max_series(NULL, 3);
	metrics_set_enabled(NULL, false);
	metrics_set_overflow_cb(NULL, on_overflow, NULL);
	assert_false(metrics_enabled(NULL));
	assert_null(metrics_find(NULL, "t.g"));
	assert_null(metrics_find(reg, NULL));
	assert_null(metrics_get(reg, M_HTTP_REQUESTS_TOTAL)); /* no catalog here */
	assert_null(metrics_get(NULL, M_HTTP_REQUESTS_TOTAL));
	assert_null(metrics_declare(reg, NULL));
	assert_null(metrics_declare(NULL, &(struct metric_def){.name = "a.b", .help = "h"}));
	metrics_registry_stats(reg, NULL);
	metrics_format_prometheus(NULL, NULL);
	metrics_format_json(reg, NULL, NULL);

	uint64_t d0 = dropped(reg);
	/* Wrong arity, NULL values, via varargs and arrays. */
	metric_inc(c, 1);
	metric_inc(c, 1, "x");
	metric_inc(c, 1, "x", "y", "z");
	metric_inc(c, 1, (const char *)NULL, "y");
	metric_inc(c, 1, "x", (const char *)NULL);
	assert_null(metric_series(c, NULL));
	assert_null(metric_series(c, METRIC_LABELS("x")));
	assert_null(metric_series(c, METRIC_LABELS("x", "y", "z")));
	assert_null(metric_series(c, ((const char *const[]){NULL, "y", NULL})));
	metric_observe(h, 1);
	metric_observe(h, 1, "x", "y");
	metric_inc(g, 1, "x");
	assert_null(metric_series(g, METRIC_LABELS("x")));
	/* Type mismatches. */
	metric_observe(c, 1, "x", "y");
	metric_set(c, 1, "x", "y");
	metric_inc(h, 1, "x");
	metric_observe(g, 1);
	assert_int_equal(dropped(reg) - d0, 17);
	assert_int_equal(metric_nseries(c), 0);
	assert_int_equal(metric_nseries(h), 0);
	assert_true(metric_series_value(metric_series(g, NULL)) == 0);

	char *after = prom_text(reg);
	char *json_after = json_text(reg, "ts");
	assert_string_equal(before, after);
	assert_string_equal(json_before, json_after);
	free(before);
	free(after);
	free(json_before);
	free(json_after);
	metrics_registry_free(reg);
}

static void test_bad_calls_change_nothing(void **state)
{
	struct metrics_registry *reg = metrics_registry_new();
	struct metric *c = declare(reg, "t.calls_total", METRIC_COUNTER, "a", "b");
	struct metric *h = declare(reg, "t.lat_ms", METRIC_HISTOGRAM, NULL, NULL);
	metric_inc(c, 1, "x", "y");
	metric_observe(h, 3);
	char *before = prom_text(reg);
	char *json_before = json_text(reg, "ts");
	metric_inc(c, 1);
	metric_inc(c, 1, "x");
	metric_inc(c, 1, "x", "y", "z");
	metric_inc(c, 1, "x", (const char *)NULL);
	metric_inc(c, -1, "x", "y");
	metric_inc(c, NAN, "x", "y");
	metric_set(c, 9, "x", "y");
	metric_observe(c, 9, "x", "y");
	metric_observe(h, 1, "x");
	metric_observe(h, INFINITY);
	metric_observe(h, -INFINITY);
	metric_inc(h, 1);
	char *after = prom_text(reg);
	char *json_after = json_text(reg, "ts");
	assert_string_equal(before, after);
	assert_string_equal(json_before, json_after);
	free(before);
	free(after);
	free(json_before);
	free(json_after);
	metrics_registry_free(reg);
}

static void test_declare_rules(void **state)
{
	struct metrics_registry *reg = metrics_registry_new();
	static const double unsorted[] = {1, 5, 2};
	static const double dup[] = {1, 1};
	static const double inf[] = {1, INFINITY};
	double many[METRIC_MAX_BUCKETS + 1];
	for (size_t i = 0; i < METRIC_MAX_BUCKETS + 1; i++)
		many[i] = (double)i;

	assert_null(declare(reg, "t.requests", METRIC_COUNTER, NULL, NULL)); /* no _total */
	assert_null(declare(reg, "t.up_total", METRIC_GAUGE, NULL, NULL)); /* _total on a gauge */
	assert_null(declare(reg, "t.x_count", METRIC_GAUGE, NULL, NULL)); /* reserved suffixes */
	assert_null(declare(reg, "t.x_sum", METRIC_GAUGE, NULL, NULL));
	assert_null(declare(reg, "t.x_bucket", METRIC_GAUGE, NULL, NULL));
	assert_null(declare(reg, "T.upper", METRIC_GAUGE, NULL, NULL));
	assert_null(declare(reg, "t.camelCase", METRIC_GAUGE, NULL, NULL));
	assert_null(declare(reg, "t..x", METRIC_GAUGE, NULL, NULL));
	assert_null(declare(reg, "t.x.", METRIC_GAUGE, NULL, NULL));
	assert_null(declare(reg, "t-x", METRIC_GAUGE, NULL, NULL));
	assert_null(declare(reg, "", METRIC_GAUGE, NULL, NULL));
	assert_null(declare(reg, NULL, METRIC_GAUGE, NULL, NULL));
	assert_null(declare(reg, "t.g", METRIC_GAUGE, "Route", NULL));
	assert_null(declare(reg, "t.g", METRIC_GAUGE, "__x", NULL));
	assert_null(declare(reg, "t.g", METRIC_GAUGE, "1x", NULL));
	assert_null(declare(reg, "t.g", METRIC_GAUGE, "a", "a"));
	assert_null(declare(reg, "t.h", METRIC_HISTOGRAM, "le", NULL));
	assert_null(
	        metrics_declare(reg, &(struct metric_def){.name = "t.g", .type = METRIC_GAUGE}));
	assert_null(
	        metrics_declare(reg, &(struct metric_def){.name = "t.g", .type = 7, .help = "h"}));
	const double *bad[] = {unsorted, dup, inf};
	for (size_t i = 0; i < 3; i++)
		assert_null(metrics_declare(reg, &(struct metric_def){.name = "t.h",
		                                                      .type = METRIC_HISTOGRAM,
		                                                      .help = "h",
		                                                      .buckets = bad[i],
		                                                      .nbuckets = i == 0 ? 3 : 2}));
	assert_null(metrics_declare(reg, &(struct metric_def){.name = "t.h",
	                                                      .type = METRIC_HISTOGRAM,
	                                                      .help = "h",
	                                                      .buckets = many,
	                                                      .nbuckets = METRIC_MAX_BUCKETS + 1}));
	assert_null(metrics_declare(
	        reg, &(struct metric_def){.name = "t.h", .type = METRIC_HISTOGRAM, .help = "h"}));
	struct metrics_stats st;
	metrics_registry_stats(reg, &st);
	assert_int_equal(st.metrics, 0);

	/* Declaring again: same shape returns the same metric, a clash NULL. */
	struct metric *g = declare(reg, "t.g", METRIC_GAUGE, "a", NULL);
	assert_non_null(g);
	assert_ptr_equal(declare(reg, "t.g", METRIC_GAUGE, "a", NULL), g);
	assert_null(declare(reg, "t.g", METRIC_GAUGE, "b", NULL));
	assert_null(declare(reg, "t.g", METRIC_GAUGE, "a", "b"));
	assert_null(declare(reg, "t.g", METRIC_HISTOGRAM, "a", NULL));
	struct metric *h = declare(reg, "t.h", METRIC_HISTOGRAM, NULL, NULL);
	assert_ptr_equal(declare(reg, "t.h", METRIC_HISTOGRAM, NULL, NULL), h);
	static const double other[] = {1, 2, 6};
	assert_null(metrics_declare(reg, &(struct metric_def){.name = "t.h",
	                                                      .type = METRIC_HISTOGRAM,
	                                                      .help = "h",
	                                                      .buckets = other,
	                                                      .nbuckets = 3}));
	assert_ptr_equal(metrics_find(reg, "t.h"), h);
	assert_null(metrics_find(reg, "t.nope"));
	/* Buckets are ignored on non-histograms; four labels is the maximum. */
	assert_non_null(metrics_declare(reg, &(struct metric_def){.name = "t.c_total",
	                                                          .type = METRIC_COUNTER,
	                                                          .help = "h",
	                                                          .labels = {"a", "b", "c", "d"},
	                                                          .buckets = other,
	                                                          .nbuckets = 3}));
	metrics_registry_stats(reg, &st);
	assert_int_equal(st.metrics, 3);
	metrics_registry_free(reg);
	metrics_registry_free(NULL);
}

static void test_no_alloc_after_first_use(void **state)
{
	struct metrics_registry *reg = metrics_registry_new();
	struct metric *c = declare(reg, "t.requests_total", METRIC_COUNTER, "method", "route");
	struct metric *g = declare(reg, "t.open", METRIC_GAUGE, NULL, NULL);
	struct metric *h = metrics_declare(reg, &(struct metric_def){.name = "t.latency_ms",
	                                                             .type = METRIC_HISTOGRAM,
	                                                             .help = "h",
	                                                             .labels = {"route"},
	                                                             .buckets = small_buckets,
	                                                             .nbuckets = 3});
	char route[32];
	/* First use of 100 tuples (and table growth) allocates... */
	for (int i = 0; i < 100; i++) {
		snprintf(route, sizeof route, "/r/%d", i);
		metric_inc(c, 1, "GET", route);
		metric_observe(h, i, route);
	}
	struct metric_series *s1 = metric_series(c, METRIC_LABELS("GET", "/r/7"));
	struct metric_series *hs = metric_series(h, METRIC_LABELS("/r/7"));
	struct metrics_stats st0, st1;
	metrics_registry_stats(reg, &st0);
	assert_int_equal(st0.series, 201);
#ifdef HAVE_MALLOC_HOOKS
	static bool hooked;
	if (!hooked)
		hooked = __sanitizer_install_malloc_and_free_hooks(count_malloc, ignore_free) != 0;
	assert_true(hooked);
	malloc_calls = 0;
#endif
	/* ...and nothing after: lookups, handles and one-shot calls alike. */
	for (int n = 0; n < 100; n++) {
		for (int i = 0; i < 100; i++) {
			snprintf(route, sizeof route, "/r/%d", i);
			metric_inc(c, 1, "GET", route);
			metric_observe(h, i, route);
		}
		assert_ptr_equal(metric_series(c, METRIC_LABELS("GET", "/r/7")), s1);
		metric_series_inc(s1, 1);
		metric_series_observe(hs, 3);
		metric_inc(g, 1);
		metric_dec(g, 1);
		metric_set(g, n);
	}
#ifdef HAVE_MALLOC_HOOKS
	size_t calls = malloc_calls;
	assert_int_equal(calls, 0);
#endif
	metrics_registry_stats(reg, &st1);
	assert_int_equal(st1.allocations, st0.allocations);
	assert_int_equal(st1.series, st0.series);
	assert_true(metric_series_value(s1) == 201);
	assert_int_equal(metric_series_obs_count(hs), 201);
	/* Distinct tuples stay distinct even when their joined text is equal. */
	metric_inc(c, 1, "ab", "c");
	metric_inc(c, 1, "a", "bc");
	assert_ptr_not_equal(metric_series(c, METRIC_LABELS("ab", "c")),
	                     metric_series(c, METRIC_LABELS("a", "bc")));
	metrics_registry_free(reg);
}

static void test_prometheus_escaping(void **state)
{
	struct metrics_registry *reg = metrics_registry_new();
	struct metric *c = metrics_declare(
	        reg, &(struct metric_def){.name = "t.hits_total",
	                                  .type = METRIC_COUNTER,
	                                  .help = "Line one\\two\nthree \"quoted\".",
	                                  .labels = {"path"}});
	assert_non_null(c);
	metric_inc(c, 1, "a\"b\\c\nd");
	metric_inc(c, 2, "bad\xff utf8 \xc3\xa9");
	metric_inc(c, 3, "");
	char *t = prom_text(reg);
	assert_has_line(t, "# HELP stageline_t_hits_total Line one\\\\two\\nthree \"quoted\".");
	assert_has_line(t, "stageline_t_hits_total{path=\"a\\\"b\\\\c\\nd\"} 1");
	assert_has_line(t, "stageline_t_hits_total{path=\"bad\xef\xbf\xbd utf8 \xc3\xa9\"} 2");
	assert_has_line(t, "stageline_t_hits_total{path=\"\"} 3");
	free(t);

	/* The JSON key keeps the raw value, escaped as JSON. */
	char *j = json_text(reg, "now");
	json_error_t err;
	json_t *root = json_loads(j, 0, &err);
	assert_non_null(root);
	json_t *v =
	        json_object_get(json_object_get(root, "counters"), "t.hits_total|path=a\"b\\c\nd");
	assert_non_null(v);
	assert_true(json_number_value(v) == 1);
	json_decref(root);
	free(j);
	metrics_registry_free(reg);
}

static void test_name_mapping(void **state)
{
	struct metrics_registry *reg = metrics_registry_new();
	struct metric *ms = declare(reg, "q.oldest_ready_age_ms", METRIC_GAUGE, NULL, NULL);
	struct metric *mb = declare(reg, "proc.memory_rss_mb", METRIC_GAUGE, NULL, NULL);
	struct metric *pct = declare(reg, "scratch.disk_used_pct", METRIC_GAUGE, NULL, NULL);
	struct metric *cnt = declare(reg, "t.busy_ms_total", METRIC_COUNTER, NULL, NULL);
	struct metric *sec = declare(reg, "process.start_time_seconds", METRIC_GAUGE, NULL, NULL);
	struct metric *plain = declare(reg, "http.requests_total", METRIC_COUNTER, NULL, NULL);
	struct metric *mid = declare(reg, "t.ms_thing", METRIC_GAUGE, NULL, NULL);
	char name[128];
	assert_int_equal(metric_prom_name(ms, name, sizeof name),
	                 strlen("stageline_q_oldest_ready_age_seconds"));
	assert_string_equal(name, "stageline_q_oldest_ready_age_seconds");
	metric_prom_name(mb, name, sizeof name);
	assert_string_equal(name, "stageline_proc_memory_rss_bytes");
	metric_prom_name(pct, name, sizeof name);
	assert_string_equal(name, "stageline_scratch_disk_used_ratio");
	metric_prom_name(cnt, name, sizeof name);
	assert_string_equal(name, "stageline_t_busy_seconds_total");
	metric_prom_name(sec, name, sizeof name);
	assert_string_equal(name, "stageline_process_start_time_seconds");
	metric_prom_name(plain, name, sizeof name);
	assert_string_equal(name, "stageline_http_requests_total");
	metric_prom_name(mid, name, sizeof name);
	assert_string_equal(name, "stageline_t_ms_thing");
	assert_int_equal(metric_prom_name(plain, name, 10), 0);
	assert_string_equal(name, "");
	assert_int_equal(metric_prom_name(NULL, name, sizeof name), 0);
	assert_int_equal(metric_unit(ms), METRIC_UNIT_MS);
	assert_int_equal(metric_unit(mb), METRIC_UNIT_MB);
	assert_int_equal(metric_unit(pct), METRIC_UNIT_PCT);
	assert_int_equal(metric_unit(cnt), METRIC_UNIT_MS);
	assert_int_equal(metric_unit(sec), METRIC_UNIT_NONE);
	assert_int_equal(metric_type(cnt), METRIC_COUNTER);
	assert_string_equal(metric_name(mb), "proc.memory_rss_mb");

	metric_set(ms, 1500);
	metric_set(mb, 128.5);
	metric_set(pct, 42);
	metric_inc(cnt, 250);
	metric_set(sec, 1700000000.5);
	char *t = prom_text(reg);
	assert_has_line(t, "stageline_q_oldest_ready_age_seconds 1.5");
	assert_has_line(t, "stageline_proc_memory_rss_bytes 134742016");
	assert_has_line(t, "stageline_scratch_disk_used_ratio 0.42");
	assert_has_line(t, "stageline_t_busy_seconds_total 0.25");
	assert_has_line(t, "stageline_process_start_time_seconds 1700000000.5");
	assert_has_line(t, "stageline_http_requests_total 0");
	free(t);
	/* JSON keeps the reference names and units. */
	char *j = json_text(reg, NULL);
	json_t *root = json_loads(j, 0, NULL);
	assert_non_null(root);
	assert_true(json_is_null(json_object_get(root, "timestamp")));
	json_t *gauges = json_object_get(root, "gauges");
	assert_true(json_number_value(json_object_get(gauges, "q.oldest_ready_age_ms")) == 1500);
	assert_true(json_number_value(json_object_get(gauges, "proc.memory_rss_mb")) == 128.5);
	assert_true(json_number_value(json_object_get(gauges, "scratch.disk_used_pct")) == 42);
	assert_true(json_number_value(json_object_get(json_object_get(root, "counters"),
	                                              "t.busy_ms_total")) == 250);
	json_decref(root);
	free(j);
	metrics_registry_free(reg);
}

static void test_number_format(void **state)
{
	static const double values[] = {
	        0.1, 1.0 / 3, 1e20, 123456789, -2.5, 1e-7, 4503599627370497.0, 0.30000000000000004,
	        -0.0};
	struct metrics_registry *reg = metrics_registry_new();
	struct metric *g = declare(reg, "t.v", METRIC_GAUGE, NULL, NULL);
	for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
		metric_set(g, values[i]);
		char *t = prom_text(reg);
		const char *line = strstr(t, "\nstageline_t_v ");
		assert_non_null(line);
		line += strlen("\nstageline_t_v ");
		char *end;
		assert_true(strtod(line, &end) == values[i]);
		assert_true(*end == '\n');
		/* Integers print without a fraction; nothing prints as "x.0". */
		assert_null(strstr(line, ".0\n"));
		if (values[i] == 123456789)
			assert_true(strncmp(line, "123456789\n", 10) == 0);
		if (values[i] == 0)
			assert_true(strncmp(line, "0\n", 2) == 0);
		free(t);
		char *j = json_text(reg, "x");
		json_t *root = json_loads(j, JSON_DECODE_ANY, NULL);
		assert_non_null(root);
		assert_true(json_number_value(json_object_get(json_object_get(root, "gauges"),
		                                              "t.v")) == values[i]);
		json_decref(root);
		free(j);
	}
	metrics_registry_free(reg);
}

static void test_json_shape(void **state)
{
	struct metrics_registry *reg = metrics_registry_new();
	assert_true(metrics_declare_catalog(reg));
	metric_inc(metrics_get(reg, M_HTTP_REQUESTS_TOTAL), 123, "GET", "/v1/jobs", "2xx");
	metric_inc(metrics_get(reg, M_JOBS_CREATED_TOTAL), 4);
	metric_set(metrics_get(reg, M_PROC_MEMORY_RSS_MB), 128.5);
	struct metric *lat = metrics_get(reg, M_HTTP_REQUEST_LATENCY_MS);
	metric_observe(lat, 0.5, "/healthz");
	metric_observe(lat, 2, "/healthz");
	metric_observe(lat, 3, "/healthz");
	metric_observe(lat, 99999, "/healthz");
	metric_observe(metrics_get(reg, M_EVENT_LOOP_LAG_MS), 1.5);

	char *j = json_text(reg, "2026-01-02T03:04:05.000006Z");
	json_error_t err;
	json_t *root = json_loads(j, JSON_REJECT_DUPLICATES, &err);
	if (!root)
		fail_msg("bad JSON (%s): %s", err.text, j);
	assert_int_equal(json_object_size(root), 4);
	assert_string_equal(json_string_value(json_object_get(root, "timestamp")),
	                    "2026-01-02T03:04:05.000006Z");
	json_t *counters = json_object_get(root, "counters");
	json_t *gauges = json_object_get(root, "gauges");
	json_t *hists = json_object_get(root, "histograms");
	assert_true(json_is_object(counters) && json_is_object(gauges) && json_is_object(hists));

	json_t *v = json_object_get(counters,
	                            "http.requests_total|method=GET,route=/v1/jobs,code_class=2xx");
	assert_true(json_is_integer(v));
	assert_int_equal(json_integer_value(v), 123);
	assert_int_equal(json_integer_value(json_object_get(counters, "jobs.created_total")), 4);
	assert_true(json_number_value(json_object_get(gauges, "proc.memory_rss_mb")) == 128.5);
	/* Unlabelled metrics are there at 0 before any update; labelled ones only once used. */
	assert_int_equal(json_integer_value(json_object_get(gauges, "worker.inflight_jobs")), 0);
	assert_null(json_object_get(counters, "http.errors_total"));
	/* Only the right types in each section. */
	assert_null(json_object_get(counters, "proc.memory_rss_mb"));
	assert_null(json_object_get(gauges, "jobs.created_total"));

	json_t *h = json_object_get(hists, "http.request_latency_ms|route=/healthz");
	assert_true(json_is_object(h));
	assert_int_equal(json_integer_value(json_object_get(h, "count")), 4);
	assert_true(json_number_value(json_object_get(h, "sum")) == 100004.5);
	json_t *b = json_object_get(h, "buckets");
	assert_int_equal(json_object_size(b), 19); /* 18 bounds + "+Inf" */
	assert_int_equal(json_integer_value(json_object_get(b, "1")), 1);
	assert_int_equal(json_integer_value(json_object_get(b, "2")), 2);
	assert_int_equal(json_integer_value(json_object_get(b, "5")), 3);
	assert_int_equal(json_integer_value(json_object_get(b, "60000")), 3);
	assert_int_equal(json_integer_value(json_object_get(b, "+Inf")), 4);
	/* Keys are bounds in the reference unit, in order, and counts are cumulative. */
	const char *prev_key = NULL;
	json_int_t prev = -1;
	const char *key;
	json_t *val;
	json_object_foreach(b, key, val)
	{
		if (prev_key && strcmp(key, "+Inf") != 0)
			assert_true(strtod(key, NULL) > strtod(prev_key, NULL));
		assert_true(json_integer_value(val) >= prev);
		prev = json_integer_value(val);
		prev_key = key;
	}
	assert_string_equal(prev_key, "+Inf");
	json_t *lag = json_object_get(hists, "event_loop.lag_ms");
	assert_non_null(lag);
	assert_true(json_number_value(json_object_get(json_object_get(lag, "buckets"), "0.5")) ==
	            0);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(lag, "buckets"), "2")),
	                 1);
	/* An unused unlabelled histogram has zero counts. */
	json_t *jobs = json_object_get(hists, "jobs.total_latency_ms");
	assert_int_equal(json_integer_value(json_object_get(jobs, "count")), 0);
	json_decref(root);
	free(j);

	/* No registry: the empty shape. */
	j = json_text(NULL, "t");
	assert_string_equal(
	        j, "{\"timestamp\":\"t\",\"counters\":{},\"gauges\":{},\"histograms\":{}}");
	free(j);
	metrics_registry_free(reg);
}

static void test_disabled(void **state)
{
	struct metrics_registry *reg = metrics_registry_new();
	struct metric *c = declare(reg, "t.n_total", METRIC_COUNTER, "k", NULL);
	struct metric *g = declare(reg, "t.g", METRIC_GAUGE, NULL, NULL);
	struct metric *h = declare(reg, "t.h", METRIC_HISTOGRAM, NULL, NULL);
	struct metric_series *s = metric_series(c, METRIC_LABELS("a"));
	metric_series_inc(s, 1);
	assert_true(metrics_enabled(reg));
	metrics_set_enabled(reg, false);
	assert_false(metrics_enabled(reg));
	char *before = prom_text(reg);
	metric_inc(c, 1, "a");
	metric_inc(c, 1, "new");
	metric_series_inc(s, 5);
	metric_set(g, 3);
	metric_inc(g, 3);
	metric_observe(h, 1);
	metric_series_observe(metric_series(h, NULL), 1);
	char *after = prom_text(reg);
	assert_string_equal(before, after);
	assert_int_equal(dropped(reg), 0); /* disabled is not a drop */
	metrics_set_enabled(reg, true);
	metric_series_inc(s, 5);
	metric_inc(c, 1, "a");
	assert_true(metric_series_value(s) == 7);
	metric_observe(h, 1);
	assert_int_equal(metric_series_obs_count(metric_series(h, NULL)), 1);
	free(before);
	free(after);
	metrics_registry_free(reg);
}

static void test_many_series(void **state)
{
	struct metrics_registry *reg = metrics_registry_new();
	struct metric *c = metrics_declare(reg, &(struct metric_def){.name = "t.n_total",
	                                                             .type = METRIC_COUNTER,
	                                                             .help = "h",
	                                                             .labels = {"a", "b"},
	                                                             .max_series = 5000});
	static struct metric_series *handles[4000];
	char a[16], b[16];
	for (int i = 0; i < 4000; i++) {
		snprintf(a, sizeof a, "%d", i % 97);
		snprintf(b, sizeof b, "%d", i);
		handles[i] = metric_series(c, METRIC_LABELS(a, b));
		assert_non_null(handles[i]);
	}
	assert_int_equal(metric_nseries(c), 4000);
	for (int i = 0; i < 4000; i++) {
		snprintf(a, sizeof a, "%d", i % 97);
		snprintf(b, sizeof b, "%d", i);
		metric_inc(c, i, a, b);
		assert_ptr_equal(metric_series(c, METRIC_LABELS(a, b)), handles[i]);
	}
	assert_true(metric_series_value(handles[3999]) == 3999);
	assert_int_equal(metric_nseries(c), 4000);
	metrics_registry_free(reg);
}

/* promtool's lint (client_golang promlint) on a family name. */
static void assert_promlint_clean(const char *name, enum metric_type type)
{
	static const char *const abbrev[] = {"s",  "ms", "us", "ns", "sec", "b", "kb", "mb",
	                                     "gb", "tb", "pb", "m",  "h",   "d", "pct"};
	static const char *const nonbase[] = {
	        "milliseconds", "microseconds", "nanoseconds", "minutes",   "hours",
	        "days",         "kilobytes",    "megabytes",   "gigabytes", "bits"};
	size_t len = strlen(name);
	bool total = len > 6 && strcmp(name + len - 6, "_total") == 0;
	assert_true(total == (type == METRIC_COUNTER));
	char tmp[160];
	snprintf(tmp, sizeof tmp, "%s", name);
	for (char *part = strtok(tmp, "_"); part; part = strtok(NULL, "_")) {
		for (size_t i = 0; i < sizeof abbrev / sizeof abbrev[0]; i++)
			if (strcmp(part, abbrev[i]) == 0)
				fail_msg("%s: abbreviated unit %s", name, part);
		for (size_t i = 0; i < sizeof nonbase / sizeof nonbase[0]; i++)
			if (strcmp(part, nonbase[i]) == 0)
				fail_msg("%s: not a base unit: %s", name, part);
		for (const char *p = part; *p; p++)
			assert_true((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9'));
	}
}

static void test_catalog(void **state)
{
	static const char *const types[] = {"counter", "gauge", "histogram"};
	struct metrics_registry *reg = metrics_registry_new();
	assert_true(metrics_declare_catalog(reg));
	struct metrics_stats st;
	metrics_registry_stats(reg, &st);
	assert_int_equal(st.metrics, METRIC_ID_COUNT);
	assert_int_equal(METRIC_ID_COUNT, 37);

	/* HELP and TYPE for every family, before any sample. */
	char *t = prom_text(reg);
	char line[256], name[160];
	for (int id = 0; id < METRIC_ID_COUNT; id++) {
		struct metric *m = metrics_get(reg, id);
		assert_non_null(m);
		assert_string_equal(metric_name(m), metrics_catalog_name(id));
		assert_true(metric_prom_name(m, name, sizeof name) > 0);
		assert_promlint_clean(name, metric_type(m));
		snprintf(line, sizeof line, "# TYPE %s %s", name, types[metric_type(m)]);
		assert_has_line(t, line);
		snprintf(line, sizeof line, "# HELP %s ", name);
		assert_non_null(strstr(t, line));
		for (int other = 0; other < id; other++)
			assert_ptr_not_equal(metrics_get(reg, other), m);
	}
	assert_null(metrics_get(reg, METRIC_ID_COUNT));
	assert_null(metrics_catalog_name(METRIC_ID_COUNT));
	free(t);

	/* A few spot checks of the reference's names and label order. */
	assert_string_equal(metric_name(metrics_get(reg, M_HTTP_REQUESTS_TOTAL)),
	                    "http.requests_total");
	metric_prom_name(metrics_get(reg, M_HTTP_REQUEST_LATENCY_MS), name, sizeof name);
	assert_string_equal(name, "stageline_http_request_latency_seconds");
	metric_prom_name(metrics_get(reg, M_QUEUE_OLDEST_READY_AGE_MS), name, sizeof name);
	assert_string_equal(name, "stageline_queue_oldest_ready_age_seconds");
	metric_prom_name(metrics_get(reg, M_EVENT_LOOP_LAG_MS), name, sizeof name);
	assert_string_equal(name, "stageline_event_loop_lag_seconds");
	assert_non_null(metric_series(metrics_get(reg, M_JOBS_STATUS_TRANSITION_TOTAL),
	                              METRIC_LABELS("queued", "running")));
	assert_non_null(metric_series(metrics_get(reg, M_EXTERNAL_CALLS_TOTAL),
	                              METRIC_LABELS("s3", "put", "success")));
	/* Redeclaring the catalog is harmless. */
	assert_true(metrics_declare_catalog(reg));
	metrics_registry_stats(reg, &st);
	assert_int_equal(st.metrics, METRIC_ID_COUNT);
	metrics_registry_free(reg);
}

static void test_default_registry(void **state)
{
	struct metrics_registry *d = metrics_default();
	assert_non_null(d);
	assert_ptr_equal(metrics_default(), d);
	struct metric *m = metrics_default_get(M_HTTP_REQUESTS_TOTAL);
	assert_non_null(m);
	assert_ptr_equal(m, metrics_get(d, M_HTTP_REQUESTS_TOTAL));
	assert_ptr_equal(m, metrics_find(d, "http.requests_total"));
	metric_inc(m, 1, "GET", "/healthz", "2xx");
	assert_int_equal(metric_nseries(m), 1);
	metrics_default_free();
	metrics_default_free();
	m = metrics_default_get(M_HTTP_REQUESTS_TOTAL);
	assert_non_null(m);
	assert_int_equal(metric_nseries(m), 0);
	metrics_default_free();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_counter_math),
	        cmocka_unit_test(test_gauge_math),
	        cmocka_unit_test(test_histogram_buckets),
	        cmocka_unit_test(test_prometheus_histogram_cumulative),
	        cmocka_unit_test(test_label_cap),
	        cmocka_unit_test(test_bad_calls_ignored),
	        cmocka_unit_test(test_bad_calls_change_nothing),
	        cmocka_unit_test(test_declare_rules),
	        cmocka_unit_test(test_no_alloc_after_first_use),
	        cmocka_unit_test(test_prometheus_escaping),
	        cmocka_unit_test(test_name_mapping),
	        cmocka_unit_test(test_number_format),
	        cmocka_unit_test(test_json_shape),
	        cmocka_unit_test(test_disabled),
	        cmocka_unit_test(test_many_series),
	        cmocka_unit_test(test_catalog),
	        cmocka_unit_test(test_default_registry),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
