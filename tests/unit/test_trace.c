/* Unit tests for core/trace: the no-op default (NULL spans, attributes not
 * evaluated, no backend calls), a recording backend that sees start, attrs
 * and end with names, parent handles, W3C ids, durations and errors, the
 * traceparent format and id inheritance, backend swaps mid-span, backends
 * with missing functions, and NULL-safety of every call. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "core/trace.h"

enum rec_kind { EV_START, EV_SET, EV_END };

struct rec_attr {
	char key[32];
	enum trace_attr_type type;
	char s[64];
	int64_t i;
	double d;
	bool b;
};

struct rec_event {
	enum rec_kind kind;
	uintptr_t handle;
	char name[64];
	uintptr_t parent;
	struct trace_context tc;
	size_t nattrs;
	struct rec_attr attrs[8];
	bool has_error;
	char error[64];
	int64_t duration_us;
};

struct recorder {
	struct rec_event ev[512];
	size_t n;
	uintptr_t next_handle;
};

static struct recorder rec_a, rec_b;

static void rec_copy_attr(struct rec_attr *dst, const struct trace_attr *a)
{
	snprintf(dst->key, sizeof dst->key, "%s", a->key);
	dst->type = a->type;
	switch (a->type) {
	case TRACE_STR: snprintf(dst->s, sizeof dst->s, "%s", a->v.s); break;
	case TRACE_INT: dst->i = a->v.i; break;
	case TRACE_DBL: dst->d = a->v.d; break;
	case TRACE_BOOL: dst->b = a->v.b; break;
	}
}

static struct rec_event *rec_push(struct recorder *r, enum rec_kind kind)
{
	assert_true(r->n < sizeof r->ev / sizeof r->ev[0]);
	struct rec_event *e = &r->ev[r->n++];
	memset(e, 0, sizeof *e);
	e->kind = kind;
	return e;
}

static void *rec_start(void *ctx, const struct trace_context *tc, const char *name,
                       const void *parent_handle, const struct trace_attr *attrs, size_t nattrs)
{
	struct recorder *r = ctx;
	struct rec_event *e = rec_push(r, EV_START);
	e->handle = ++r->next_handle;
	snprintf(e->name, sizeof e->name, "%s", name);
	e->parent = (uintptr_t)parent_handle;
	e->tc = *tc;
	e->nattrs = nattrs;
	for (size_t i = 0; i < nattrs && i < 8; i++)
		rec_copy_attr(&e->attrs[i], &attrs[i]);
	return (void *)e->handle;
}

static void rec_set_attr(void *ctx, void *handle, const struct trace_attr *attr)
{
	struct rec_event *e = rec_push(ctx, EV_SET);
	e->handle = (uintptr_t)handle;
	e->nattrs = 1;
	rec_copy_attr(&e->attrs[0], attr);
}

static void rec_end(void *ctx, void *handle, const char *error, int64_t duration_us)
{
	struct rec_event *e = rec_push(ctx, EV_END);
	e->handle = (uintptr_t)handle;
	e->has_error = error != NULL;
	if (error != NULL)
		snprintf(e->error, sizeof e->error, "%s", error);
	e->duration_us = duration_us;
}

static void install(struct recorder *r)
{
	/* On the stack on purpose: trace_set_backend copies it. */
	struct trace_backend b = {
	        .start = rec_start, .set_attr = rec_set_attr, .end = rec_end, .ctx = r};
	trace_set_backend(&b);
	memset(&b, 0, sizeof b);
}

static int setup(void **state)
{
	memset(&rec_a, 0, sizeof rec_a);
	memset(&rec_b, 0, sizeof rec_b);
	trace_set_backend(NULL);
	return 0;
}

static int teardown(void **state)
{
	trace_set_backend(NULL);
	return 0;
}

static int evaluated;

static int64_t bump(void)
{
	evaluated++;
	return 1;
}

static bool is_lower_hex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static void hex_of(char *out, const uint8_t *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		snprintf(out + 2 * i, 3, "%02x", b[i]);
}

/* "00-" 32 lowercase hex "-" 16 lowercase hex "-01", neither id all zeros. */
static void assert_traceparent_shape(const char *tp)
{
	assert_int_equal(strlen(tp), TRACE_TRACEPARENT_LEN);
	assert_memory_equal(tp, "00-", 3);
	assert_int_equal(tp[35], '-');
	assert_int_equal(tp[52], '-');
	assert_string_equal(tp + 53, "01");
	bool trace_nonzero = false, span_nonzero = false;
	for (int i = 3; i < 35; i++) {
		assert_true(is_lower_hex(tp[i]));
		trace_nonzero |= tp[i] != '0';
	}
	for (int i = 36; i < 52; i++) {
		assert_true(is_lower_hex(tp[i]));
		span_nonzero |= tp[i] != '0';
	}
	assert_true(trace_nonzero);
	assert_true(span_nonzero);
}

static void test_noop_default(void **state)
{
	assert_false(trace_enabled());
	struct trace_attr a[] = {TA_STR("job_id", "j1"), TA_INT("n", 3)};
	assert_null(trace_span_start("job.submit", NULL, a, 2));
	assert_null(trace_span_start(NULL, NULL, NULL, 0));

	evaluated = 0;
	struct trace_span *s = trace_start("job.submit", NULL, TA_INT("n", bump()));
	assert_null(s);
	assert_int_equal(evaluated, 0); /* attributes cost nothing when off */
	assert_null(trace_start("bare", NULL));

	/* Every call on the NULL span is a no-op. */
	trace_span_set_attr(s, TA_STR("k", "v"));
	trace_span_set_attr(NULL, TA_BOOL("k", true));
	trace_span_end(s, NULL);
	trace_span_end(NULL, "error");
	char out[TRACE_TRACEPARENT_SIZE];
	memset(out, 'x', sizeof out);
	assert_int_equal(trace_span_traceparent(NULL, out), 0);
	assert_string_equal(out, "");

	assert_int_equal(rec_a.n, 0);
}

static void test_backend_sees_start_attrs_end(void **state)
{
	install(&rec_a);
	assert_true(trace_enabled());

	evaluated = 0;
	struct trace_span *s = trace_start(
	        "job.submit", NULL, TA_STR("job_id", "0190-abc"), TA_STR("pipeline", "ingest"),
	        TA_INT("project_id", bump() + 41), TA_DBL("ratio", 0.25), TA_BOOL("dry_run", true));
	assert_non_null(s);
	assert_int_equal(evaluated, 1); /* evaluated exactly once */
	assert_int_equal(rec_a.n, 1);

	const struct rec_event *e = &rec_a.ev[0];
	assert_int_equal(e->kind, EV_START);
	assert_string_equal(e->name, "job.submit");
	assert_int_equal(e->parent, 0);
	assert_int_equal(e->nattrs, 5);
	assert_string_equal(e->attrs[0].key, "job_id");
	assert_int_equal(e->attrs[0].type, TRACE_STR);
	assert_string_equal(e->attrs[0].s, "0190-abc");
	assert_string_equal(e->attrs[1].key, "pipeline");
	assert_string_equal(e->attrs[1].s, "ingest");
	assert_string_equal(e->attrs[2].key, "project_id");
	assert_int_equal(e->attrs[2].type, TRACE_INT);
	assert_int_equal(e->attrs[2].i, 42);
	assert_int_equal(e->attrs[3].type, TRACE_DBL);
	assert_true(e->attrs[3].d == 0.25);
	assert_int_equal(e->attrs[4].type, TRACE_BOOL);
	assert_true(e->attrs[4].b);
	uint8_t zero[TRACE_SPAN_ID_SIZE] = {0};
	assert_memory_equal(e->tc.parent_span_id, zero, sizeof zero); /* a root */
	uintptr_t h = e->handle;

	trace_span_set_attr(s, TA_INT("rows", 7));
	trace_span_set_attr(s, (struct trace_attr){.key = NULL}); /* keyless: dropped */
	assert_int_equal(rec_a.n, 2);
	assert_int_equal(rec_a.ev[1].kind, EV_SET);
	assert_int_equal(rec_a.ev[1].handle, h);
	assert_string_equal(rec_a.ev[1].attrs[0].key, "rows");
	assert_int_equal(rec_a.ev[1].attrs[0].i, 7);

	trace_span_end(s, NULL);
	assert_int_equal(rec_a.n, 3);
	assert_int_equal(rec_a.ev[2].kind, EV_END);
	assert_int_equal(rec_a.ev[2].handle, h);
	assert_false(rec_a.ev[2].has_error);
	assert_true(rec_a.ev[2].duration_us >= 0);
}

static void test_empty_and_null_arguments(void **state)
{
	install(&rec_a);
	struct trace_span *s = trace_start("bare", NULL);
	assert_non_null(s);
	assert_int_equal(rec_a.ev[0].nattrs, 0);
	trace_span_end(s, NULL);

	/* A NULL name becomes "", a NULL attribute array means none. */
	s = trace_span_start(NULL, NULL, NULL, 3);
	assert_non_null(s);
	assert_string_equal(rec_a.ev[2].name, "");
	assert_int_equal(rec_a.ev[2].nattrs, 0);
	trace_span_end(s, NULL);
	assert_int_equal(rec_a.n, 4);
}

static void test_parent_linkage(void **state)
{
	install(&rec_a);
	struct trace_span *root = trace_start("job.submit", NULL, TA_STR("job_id", "j"));
	struct trace_span *child =
	        trace_start("db.batch", root, TA_STR("op", "insert_job"), TA_INT("statements", 3));
	struct trace_span *grandchild = trace_start("db.exec", child);
	assert_int_equal(rec_a.n, 3);
	const struct rec_event *r = &rec_a.ev[0], *c = &rec_a.ev[1], *g = &rec_a.ev[2];

	assert_int_equal(r->parent, 0);
	assert_int_equal(c->parent, r->handle);
	assert_int_equal(g->parent, c->handle);
	assert_int_equal(c->nattrs, 2);
	assert_string_equal(c->attrs[0].s, "insert_job");
	assert_int_equal(c->attrs[1].i, 3);

	/* One trace; each span's parent id is its parent's span id. */
	assert_memory_equal(c->tc.trace_id, r->tc.trace_id, TRACE_TRACE_ID_SIZE);
	assert_memory_equal(g->tc.trace_id, r->tc.trace_id, TRACE_TRACE_ID_SIZE);
	assert_memory_equal(c->tc.parent_span_id, r->tc.span_id, TRACE_SPAN_ID_SIZE);
	assert_memory_equal(g->tc.parent_span_id, c->tc.span_id, TRACE_SPAN_ID_SIZE);
	assert_memory_not_equal(c->tc.span_id, r->tc.span_id, TRACE_SPAN_ID_SIZE);
	assert_memory_not_equal(g->tc.span_id, c->tc.span_id, TRACE_SPAN_ID_SIZE);

	uintptr_t gh = g->handle, ch = c->handle, rh = r->handle;
	trace_span_end(grandchild, NULL);
	trace_span_end(child, "deadlock detected");
	trace_span_end(root, "db.batch failed");
	assert_int_equal(rec_a.n, 6);
	assert_int_equal(rec_a.ev[3].handle, gh);
	assert_false(rec_a.ev[3].has_error);
	assert_int_equal(rec_a.ev[4].handle, ch);
	assert_true(rec_a.ev[4].has_error);
	assert_string_equal(rec_a.ev[4].error, "deadlock detected");
	assert_int_equal(rec_a.ev[5].handle, rh);
	assert_string_equal(rec_a.ev[5].error, "db.batch failed");
	for (size_t i = 3; i < 6; i++)
		assert_true(rec_a.ev[i].duration_us >= 0);
	/* The root started first and ended last, so it lasted longest. */
	assert_true(rec_a.ev[5].duration_us >= rec_a.ev[3].duration_us);
}

static void test_duration_measured(void **state)
{
	install(&rec_a);
	int64_t before = clock_mono_us();
	struct trace_span *s = trace_start("stage.run", NULL);
	struct timespec ts = {.tv_sec = 0, .tv_nsec = 3 * 1000 * 1000};
	while (nanosleep(&ts, &ts) != 0)
		;
	trace_span_end(s, NULL);
	int64_t outer = clock_mono_us() - before;
	assert_int_equal(rec_a.ev[1].kind, EV_END);
	assert_true(rec_a.ev[1].duration_us >= 3000);
	assert_true(rec_a.ev[1].duration_us <= outer);
}

static void test_traceparent_format(void **state)
{
	install(&rec_a);
	struct trace_span *root = trace_start("job.submit", NULL);
	struct trace_span *child = trace_start("db.batch", root);
	struct trace_span *other = trace_start("job.submit", NULL);
	char tr[TRACE_TRACEPARENT_SIZE], tc[TRACE_TRACEPARENT_SIZE], to[TRACE_TRACEPARENT_SIZE];
	assert_int_equal(trace_span_traceparent(root, tr), TRACE_TRACEPARENT_LEN);
	assert_int_equal(trace_span_traceparent(child, tc), TRACE_TRACEPARENT_LEN);
	assert_int_equal(trace_span_traceparent(other, to), TRACE_TRACEPARENT_LEN);
	assert_traceparent_shape(tr);
	assert_traceparent_shape(tc);
	assert_traceparent_shape(to);

	/* The child shares the trace id and has its own span id; a second
	 * root starts a new trace. */
	assert_memory_equal(tr + 3, tc + 3, 32);
	assert_memory_not_equal(tr + 36, tc + 36, 16);
	assert_memory_not_equal(tr + 3, to + 3, 32);

	/* The header carries the very ids the backend was given. */
	char hex[33];
	hex_of(hex, rec_a.ev[1].tc.trace_id, TRACE_TRACE_ID_SIZE);
	assert_memory_equal(tc + 3, hex, 32);
	hex_of(hex, rec_a.ev[1].tc.span_id, TRACE_SPAN_ID_SIZE);
	assert_memory_equal(tc + 36, hex, 16);

	trace_span_end(child, NULL);
	trace_span_end(root, NULL);
	trace_span_end(other, NULL);
}

static void test_span_ids_distinct(void **state)
{
	install(&rec_a);
	enum { N = 200 };
	struct trace_span *root = trace_start("job.submit", NULL);
	struct trace_span *kids[N];
	for (int i = 0; i < N; i++)
		kids[i] = trace_start("db.batch", root);
	for (int i = 0; i <= N; i++) {
		for (int j = i + 1; j <= N; j++)
			assert_memory_not_equal(rec_a.ev[i].tc.span_id, rec_a.ev[j].tc.span_id,
			                        TRACE_SPAN_ID_SIZE);
	}
	for (int i = 0; i < N; i++)
		trace_span_end(kids[i], NULL);
	trace_span_end(root, NULL);
	assert_int_equal(rec_a.n, 2 * (N + 1));
}

static void test_swap_backend(void **state)
{
	install(&rec_a);
	struct trace_span *s1 = trace_start("job.submit", NULL);
	install(&rec_b);
	struct trace_span *s2 = trace_start("db.batch", s1);
	assert_int_equal(rec_a.n, 1);
	assert_int_equal(rec_b.n, 1);
	/* A's handle means nothing to B, but the trace continues. */
	assert_int_equal(rec_b.ev[0].parent, 0);
	assert_memory_equal(rec_b.ev[0].tc.trace_id, rec_a.ev[0].tc.trace_id, TRACE_TRACE_ID_SIZE);
	assert_memory_equal(rec_b.ev[0].tc.parent_span_id, rec_a.ev[0].tc.span_id,
	                    TRACE_SPAN_ID_SIZE);

	/* Each span ends on the backend that started it. */
	trace_span_set_attr(s1, TA_INT("late", 1));
	trace_span_end(s1, "cancelled");
	assert_int_equal(rec_a.n, 3);
	assert_int_equal(rec_a.ev[2].kind, EV_END);
	assert_string_equal(rec_a.ev[2].error, "cancelled");
	assert_int_equal(rec_b.n, 1);
	trace_span_end(s2, NULL);
	assert_int_equal(rec_b.n, 2);
	assert_int_equal(rec_a.n, 3);

	/* Back to the no-op: nothing reaches either recorder. */
	trace_set_backend(NULL);
	assert_false(trace_enabled());
	struct trace_span *s3 = trace_start("job.submit", NULL, TA_STR("job_id", "j"));
	assert_null(s3);
	trace_span_set_attr(s3, TA_INT("x", 1));
	trace_span_end(s3, "x");
	assert_int_equal(rec_a.n, 3);
	assert_int_equal(rec_b.n, 2);
}

static void test_backend_without_functions(void **state)
{
	/* An id-only backend: spans exist (so traceparent propagates) but
	 * nothing is called. */
	struct trace_backend empty = {0};
	trace_set_backend(&empty);
	assert_true(trace_enabled());
	struct trace_span *s = trace_start("job.submit", NULL, TA_STR("job_id", "j"));
	assert_non_null(s);
	struct trace_span *c = trace_start("db.batch", s);
	char a[TRACE_TRACEPARENT_SIZE], b[TRACE_TRACEPARENT_SIZE];
	assert_int_equal(trace_span_traceparent(s, a), TRACE_TRACEPARENT_LEN);
	assert_int_equal(trace_span_traceparent(c, b), TRACE_TRACEPARENT_LEN);
	assert_traceparent_shape(a);
	assert_memory_equal(a + 3, b + 3, 32);
	trace_span_set_attr(c, TA_BOOL("ok", true));
	trace_span_end(c, NULL);
	trace_span_end(s, "x");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_noop_default, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_backend_sees_start_attrs_end, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_empty_and_null_arguments, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_parent_linkage, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_duration_measured, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_traceparent_format, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_span_ids_distinct, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_swap_backend, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_backend_without_functions, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
