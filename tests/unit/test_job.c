/* Unit tests for the pure parts of engine/job.c: the state tables (every
 * edge walked), keyset cursors, the idempotency hash, the union of stage
 * waits and the job representation. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "core/ids.h"
#include "engine/job.h"

/* ARCHITECTURE §4, written out independently of job.c's table. */
static bool job_edge_expected(enum job_status f, enum job_status t)
{
	switch (f) {
	case JOB_PENDING: return t == JOB_QUEUED || t == JOB_CANCELLED;
	case JOB_QUEUED: return t == JOB_RUNNING || t == JOB_CANCELLED || t == JOB_FAILED;
	case JOB_RUNNING:
		return t == JOB_COMPLETED || t == JOB_FAILED || t == JOB_CANCELLED ||
		       t == JOB_QUEUED;
	case JOB_COMPLETED:
	case JOB_FAILED:
	case JOB_CANCELLED: return t == JOB_QUEUED;
	default: return false;
	}
}

static void test_job_edges(void **state)
{
	for (int f = 0; f < JOB_NSTATUS; f++) {
		for (int t = 0; t < JOB_NSTATUS; t++) {
			bool ok = job_status_edge_ok((enum job_status)f, (enum job_status)t);
			assert_int_equal(ok,
			                 job_edge_expected((enum job_status)f, (enum job_status)t));
			/* every edge has its lifecycle event, and only edges have one */
			assert_int_equal(ok, job_lifecycle_kind((enum job_status)f,
			                                        (enum job_status)t) != NULL);
		}
	}
	assert_string_equal(job_lifecycle_kind(JOB_PENDING, JOB_QUEUED), "job.lifecycle.enqueue");
	assert_string_equal(job_lifecycle_kind(JOB_FAILED, JOB_QUEUED), "job.lifecycle.retry");
	assert_string_equal(job_lifecycle_kind(JOB_QUEUED, JOB_RUNNING), "job.lifecycle.start");
	assert_string_equal(job_lifecycle_kind(JOB_RUNNING, JOB_COMPLETED),
	                    "job.lifecycle.complete");
	assert_string_equal(job_lifecycle_kind(JOB_RUNNING, JOB_FAILED), "job.lifecycle.fail");
	assert_string_equal(job_lifecycle_kind(JOB_QUEUED, JOB_CANCELLED), "job.lifecycle.cancel");
	/* terminal states are never left except by retry */
	assert_false(job_status_edge_ok(JOB_COMPLETED, JOB_RUNNING));
	assert_false(job_status_edge_ok(JOB_CANCELLED, JOB_COMPLETED));
	assert_false(job_status_edge_ok(JOB_NSTATUS, JOB_QUEUED));
	assert_true(job_status_terminal(JOB_FAILED) && !job_status_terminal(JOB_RUNNING));
}

static bool task_edge_expected(enum task_status f, enum task_status t)
{
	switch (f) {
	case TASK_PENDING: return t == TASK_READY || t == TASK_SKIPPED || t == TASK_CANCELLED;
	case TASK_READY:
		return t == TASK_RUNNING || t == TASK_SKIPPED || t == TASK_CANCELLED ||
		       t == TASK_PENDING;
	case TASK_RUNNING:
		return t == TASK_COMPLETED || t == TASK_FAILED || t == TASK_READY ||
		       t == TASK_CANCELLED;
	case TASK_COMPLETED:
	case TASK_FAILED:
	case TASK_SKIPPED:
	case TASK_CANCELLED: return t == TASK_PENDING;
	default: return false;
	}
}

static void test_task_edges(void **state)
{
	for (int f = 0; f < TASK_NSTATUS; f++)
		for (int t = 0; t < TASK_NSTATUS; t++)
			assert_int_equal(
			        task_status_edge_ok((enum task_status)f, (enum task_status)t),
			        task_edge_expected((enum task_status)f, (enum task_status)t));
	assert_false(task_status_edge_ok(TASK_COMPLETED, TASK_RUNNING));
	assert_false(task_status_edge_ok(TASK_PENDING, TASK_RUNNING));
}

static void test_status_names(void **state)
{
	for (int i = 0; i < JOB_NSTATUS; i++) {
		enum job_status s;
		assert_true(job_status_parse(job_status_name((enum job_status)i), &s));
		assert_int_equal(s, i);
	}
	for (int i = 0; i < TASK_NSTATUS; i++) {
		enum task_status s;
		assert_true(task_status_parse(task_status_name((enum task_status)i), &s));
		assert_int_equal(s, i);
	}
	enum job_status js;
	assert_false(job_status_parse("Queued", &js));
	assert_false(job_status_parse("", &js));
}

static void test_cursor_round_trip(void **state)
{
	for (int i = 0; i < 1000; i++) {
		char id[ID_UUID_LEN + 1], back[ID_UUID_LEN + 1];
		id_uuid7(id);
		char *c = job_cursor_encode(id);
		assert_int_equal(strncmp(c, "c1", 2), 0);
		/* opaque: the id itself does not show */
		assert_null(strstr(c, id));
		assert_true(job_cursor_decode(c, back));
		assert_string_equal(back, id);
		free(c);
	}
}

static void test_cursor_rejects(void **state)
{
	char id[ID_UUID_LEN + 1], out[ID_UUID_LEN + 1];
	id_uuid7(id);
	char *c = job_cursor_encode(id);
	static const char *const bad[] = {NULL, "", "c1", "c2AAAA", "garbage", "c1!!!!"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		assert_false(job_cursor_decode(bad[i], out));
	/* truncated, extended, a flipped character that breaks the uuid */
	char *t = strdup(c);
	t[strlen(t) - 1] = '\0';
	assert_false(job_cursor_decode(t, out));
	char *x = malloc(strlen(c) + 2);
	strcpy(x, c);
	strcat(x, "A");
	assert_false(job_cursor_decode(x, out));
	char *f = strdup(c);
	f[2] = f[2] == 'A' ? '_' : 'A'; /* the first id bytes are hex digits: not any more */
	assert_false(job_cursor_decode(f, out));
	/* a valid base64url text that is not a uuid */
	char *nz = job_cursor_encode("not-a-uuid-but-36-characters-long!!");
	assert_false(job_cursor_decode(nz, out));
	free(c);
	free(t);
	free(x);
	free(f);
	free(nz);
}

static void test_request_hash(void **state)
{
	unsigned char a[32], b[32], c[32];
	json_t *x = json_loads("{\"pipeline\":\"demo\",\"params\":{\"a\":1,\"b\":[1,2]}}", 0, NULL);
	json_t *y = json_loads("{ \"params\" : {\"b\":[1,2], \"a\":1}, \"pipeline\":\"demo\" }", 0,
	                       NULL);
	json_t *z = json_loads("{\"pipeline\":\"demo\",\"params\":{\"a\":1,\"b\":[2,1]}}", 0, NULL);
	job_request_hash(x, a);
	job_request_hash(y, b);
	job_request_hash(z, c);
	/* key order and spacing don't matter; values (and array order) do */
	assert_memory_equal(a, b, 32);
	assert_memory_not_equal(a, c, 32);
	json_decref(x);
	json_decref(y);
	json_decref(z);
}

static void test_total_wait_union(void **state)
{
	const int64_t S = 1000000; /* one second in µs */
	/* two parallel waits [0,10) and [5,12) and a later one [20,21): 12 + 1 */
	int64_t ready[] = {1 * S, 6 * S, 21 * S, 0};
	int64_t started[] = {11 * S, 13 * S, 22 * S, 0};
	assert_int_equal(job_total_wait_ms(ready, started, 4, 100 * S), 13000);
	/* a wait still open runs to now */
	int64_t r2[] = {10 * S};
	int64_t s2[] = {0};
	assert_int_equal(job_total_wait_ms(r2, s2, 1, 15 * S), 5000);
	/* nested intervals count once */
	int64_t r3[] = {0 + S, 2 * S};
	int64_t s3[] = {10 * S, 3 * S};
	assert_int_equal(job_total_wait_ms(r3, s3, 2, 50 * S), 9000);
	assert_int_equal(job_total_wait_ms(NULL, NULL, 0, 50 * S), 0);
}

static void test_job_to_json(void **state)
{
	json_t *tasks = json_loads(
	        "[{\"id\":\"t1\",\"stage\":\"a\",\"stage_number\":1,\"module\":\"m\","
	        "\"engine_id\":null,\"status\":\"completed\",\"required\":true,\"retries\":0,"
	        "\"attempt\":1,\"depends_on\":[],\"progress\":1,\"duration_ms\":null,"
	        "\"ready_us\":1000000,\"started_us\":3000000,\"completed_us\":4000000},"
	        "{\"id\":\"t2\",\"stage\":\"b\",\"stage_number\":2,\"module\":\"m\","
	        "\"status\":\"ready\",\"required\":false,\"retries\":1,\"attempt\":1,"
	        "\"depends_on\":[\"a\"],\"progress\":0,\"ready_us\":4000000}]",
	        0, NULL);
	assert_non_null(tasks);
	json_t *params = json_pack("{s:s}", "lang", "en");
	struct job_row j = {.id = "j1",
	                    .project_id = "p",
	                    .pipeline = "demo",
	                    .status = "running",
	                    .params = params,
	                    .attempt = 1,
	                    .progress = 0.5,
	                    .created_us = 1000000,
	                    .queued_us = 1000000,
	                    .started_us = 3000000,
	                    .event_seq = 5,
	                    .rev = 3};
	json_t *o = job_to_json(&j, tasks, 10000000);
	assert_string_equal(json_string_value(json_object_get(o, "status")), "running");
	assert_int_equal(json_integer_value(json_object_get(o, "duration_ms")), 7000);
	assert_true(json_is_null(json_object_get(o, "completed_at")));
	assert_string_equal(json_string_value(json_object_get(o, "started_at")),
	                    "1970-01-01T00:00:03.000000Z");
	/* waits: [1,3) and [4,now=10) → 2 + 6 s */
	assert_int_equal(json_integer_value(json_object_get(o, "total_wait_ms")), 8000);
	json_t *st = json_object_get(o, "stages");
	assert_int_equal(json_array_size(st), 2);
	json_t *a = json_array_get(st, 0), *b = json_array_get(st, 1);
	assert_string_equal(json_string_value(json_object_get(a, "task_id")), "t1");
	assert_int_equal(json_integer_value(json_object_get(a, "duration_ms")), 1000);
	assert_int_equal(json_integer_value(json_object_get(a, "wait_ms")), 2000);
	assert_true(json_is_null(json_object_get(b, "started_at")));
	assert_int_equal(json_integer_value(json_object_get(b, "wait_ms")), 6000);
	assert_true(json_is_false(json_object_get(b, "required")));
	assert_string_equal(json_string_value(json_array_get(json_object_get(b, "depends_on"), 0)),
	                    "a");
	static const char *const stage_keys[] = {
	        "stage",   "stage_number", "task_id",      "module",      "engine_id",
	        "status",  "started_at",   "completed_at", "duration_ms", "required",
	        "retries", "attempt",      "error",        "skip_reason", "ready_at",
	        "wait_ms", "progress",     "depends_on",   "timing"};
	assert_int_equal(json_object_size(a), sizeof stage_keys / sizeof stage_keys[0]);
	for (size_t i = 0; i < sizeof stage_keys / sizeof stage_keys[0]; i++)
		assert_non_null(json_object_get(a, stage_keys[i]));
	json_decref(o);
	json_decref(tasks);
	json_decref(params);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_job_edges),        cmocka_unit_test(test_task_edges),
	        cmocka_unit_test(test_status_names),     cmocka_unit_test(test_cursor_round_trip),
	        cmocka_unit_test(test_cursor_rejects),   cmocka_unit_test(test_request_hash),
	        cmocka_unit_test(test_total_wait_union), cmocka_unit_test(test_job_to_json),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
