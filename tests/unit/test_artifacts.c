/* Unit tests for engine/artifacts (manifest.json, pipeline.log, the bounded
 * stage log) and http/range (Range headers). The manifest checks are of
 * shape and values; proto/manifest.schema.json itself is checked against
 * real manifests by tests/integration/test_artifacts.py. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "engine/artifacts.h"
#include "http/range.h"

#define T0 1795000000000000LL /* 2026-11-18T11:06:40Z in µs */

static const char *jstr(const json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

static void test_manifest_running(void **state)
{
	(void)state;
	struct manifest_file in[] = {
	        {.name = "input.json",
	         .type = "job-input",
	         .format = "json",
	         .path = "input.json",
	         .size_bytes = 12},
	};
	json_t *cfg = json_pack("{s:i}", "rate", 16000);
	struct manifest_in m = {
	        .job_id = "j",
	        .task_id = "t",
	        .stage = "demux",
	        .module = "ffmpeg",
	        .instance_id = "i1",
	        .stage_number = 1,
	        .attempt = 1,
	        .status = "running",
	        .started_us = T0,
	        .inputs = in,
	        .ninputs = 1,
	        .config = cfg,
	};
	json_t *o = manifest_build(&m);
	assert_string_equal(jstr(o, "status"), "running");
	assert_true(json_is_null(json_object_get(o, "completed_at")));
	assert_true(json_is_null(json_object_get(o, "duration_seconds")));
	assert_string_equal(jstr(o, "timestamp"), "2026-11-18T11:06:40.000000Z");
	assert_int_equal(json_integer_value(json_object_get(o, "stage_number")), 1);
	json_t *i0 = json_array_get(json_object_get(o, "inputs"), 0);
	assert_string_equal(jstr(i0, "path"), "input.json");
	assert_true(json_is_null(json_object_get(i0, "sha256")));
	assert_true(json_is_null(json_object_get(i0, "key")));
	assert_int_equal(json_integer_value(json_object_get(i0, "size_bytes")), 12);
	assert_int_equal(json_object_size(json_object_get(o, "resources")), 0);
	assert_int_equal(json_array_size(json_object_get(o, "errors")), 0);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "config"), "rate")),
	                 16000);
	/* the first keys in the reference's order */
	const char *first[] = {"manifest_version", "stage", "stage_number"};
	void *it = json_object_iter(o);
	for (size_t k = 0; k < 3; k++, it = json_object_iter_next(o, it))
		assert_string_equal(json_object_iter_key(it), first[k]);
	json_decref(o);
	json_decref(cfg);
}

static void test_manifest_final(void **state)
{
	(void)state;
	json_t *meta = json_pack("{s:i, s:s}", "sample_rate", 16000, "name", "not-replaced");
	struct manifest_file out[] = {
	        {.name = "audio",
	         .type = "audio",
	         .format = "wav",
	         .path = "01_demux/audio.wav",
	         .key = "p/j/01_demux/audio.wav",
	         .size_bytes = 100,
	         .sha256 = "ab",
	         .meta = meta},
	};
	struct manifest_file mid[] = {
	        {.name = "frames",
	         .type = "video",
	         .path = "01_demux/f.tmp",
	         .size_bytes = 5,
	         .retained = false},
	        {.name = "raw",
	         .type = "audio",
	         .path = "01_demux/raw",
	         .key = "k",
	         .retained = true,
	         .reason = "debugging"},
	};
	json_t *err = json_pack("{s:s, s:s, s:s, s:{s:i}}", "code", "EBAD", "category", "module",
	                        "message", "bad", "detail", "n", 3);
	json_t *warns = json_pack("[{s:s, s:s}]", "timestamp", "x", "message", "careful");
	struct manifest_in m = {
	        .job_id = "j",
	        .task_id = "t",
	        .stage = "demux",
	        .stage_number = 1,
	        .attempt = 2,
	        .status = "failed",
	        .started_us = T0,
	        .completed_us = T0 + 4200000,
	        .outputs = out,
	        .noutputs = 1,
	        .intermediates = mid,
	        .nintermediates = 2,
	        .have_resources = true,
	        .cpu_seconds = 2.1,
	        .max_rss_bytes = 50 * 1048576,
	        .error = err,
	        .warnings = warns,
	};
	json_t *o = manifest_build(&m);
	assert_true(json_real_value(json_object_get(o, "duration_seconds")) > 4.19);
	assert_string_equal(jstr(o, "completed_at"), "2026-11-18T11:06:44.200000Z");
	json_t *a = json_array_get(json_object_get(o, "outputs"), 0);
	assert_int_equal(json_integer_value(json_object_get(a, "sample_rate")), 16000);
	assert_string_equal(jstr(a, "name"), "audio"); /* meta never replaces a field */
	assert_string_equal(jstr(a, "sha256"), "ab");
	json_t *f = json_array_get(json_object_get(o, "intermediate_files"), 0);
	assert_string_equal(jstr(f, "type"), "intermediate");
	assert_string_equal(jstr(f, "content_type"), "video");
	assert_false(json_is_true(json_object_get(f, "retained")));
	assert_string_equal(jstr(f, "reason"), "intermediate file, not kept");
	f = json_array_get(json_object_get(o, "intermediate_files"), 1);
	assert_string_equal(jstr(f, "reason"), "debugging");
	json_t *res = json_object_get(o, "resources");
	assert_true(json_real_value(json_object_get(res, "cpu_percent")) == 50.0);
	assert_true(json_real_value(json_object_get(res, "memory_mb")) == 50.0);
	assert_int_equal(json_integer_value(json_object_get(res, "max_rss_bytes")), 50 * 1048576);
	json_t *e = json_array_get(json_object_get(o, "errors"), 0);
	assert_string_equal(jstr(e, "exception_type"), "EBAD");
	assert_string_equal(jstr(e, "code"), "EBAD");
	assert_string_equal(jstr(e, "category"), "module");
	assert_string_equal(jstr(e, "exception_detail"), "{\"n\":3}");
	assert_string_equal(jstr(e, "timestamp"), "2026-11-18T11:06:44.200000Z");
	assert_string_equal(jstr(json_array_get(json_object_get(o, "warnings"), 0), "message"),
	                    "careful");
	json_decref(o);
	json_decref(err);
	json_decref(warns);
	json_decref(meta);
}

static void test_manifest_status_and_skipped(void **state)
{
	(void)state;
	assert_string_equal(manifest_status("completed"), "success");
	assert_string_equal(manifest_status("failed"), "failed");
	assert_string_equal(manifest_status("skipped"), "skipped");
	assert_string_equal(manifest_status("cancelled"), "cancelled");
	assert_null(manifest_status("running"));
	assert_null(manifest_status(NULL));
	json_t *task = json_pack("{s:s, s:s, s:i, s:s, s:s, s:{}}", "id", "t1", "stage", "b",
	                         "stage_number", 2, "skip_reason", "dependency_failed", "module",
	                         "echo", "params");
	json_t *o = manifest_skipped("j", task, T0);
	assert_string_equal(jstr(o, "status"), "skipped");
	assert_string_equal(jstr(o, "skip_reason"), "dependency_failed");
	assert_int_equal(json_integer_value(json_object_get(o, "attempt")), 0);
	assert_true(json_real_value(json_object_get(o, "duration_seconds")) == 0.0);
	json_decref(o);
	json_object_del(task, "id");
	assert_null(manifest_skipped("j", task, T0));
	json_decref(task);
}

static json_t *ev(int64_t ts, const char *kind, const char *stage, const char *reason, json_t *data)
{
	return json_pack("{s:I, s:s, s:s?, s:s?, s:o}", "ts_us", (json_int_t)ts, "kind", kind,
	                 "stage", stage, "reason", reason, "data", data ? data : json_object());
}

static void test_pipelog(void **state)
{
	(void)state;
	json_t *evs = json_array();
	json_array_append_new(evs, ev(T0, "job.lifecycle.enqueue", NULL, "submitted", NULL));
	json_array_append_new(evs,
	                      ev(T0 + 1000, "job.lifecycle.start", NULL, "task_claimed", NULL));
	json_array_append_new(evs, ev(T0 + 1000, "job.module.spawn", "a", "claimed",
	                              json_pack("{s:i}", "attempt", 1)));
	json_array_append_new(evs, ev(T0 + 4201000, "job.module.complete", "a", "result",
	                              json_pack("{s:i}", "duration_ms", 4200)));
	json_array_append_new(evs, ev(T0 + 4300000, "job.module.spawn", "b", "claimed",
	                              json_pack("{s:i}", "attempt", 1)));
	json_array_append_new(evs, ev(T0 + 4400000, "job.module.retry", "b", "error_frame",
	                              json_pack("{s:{s:s}}", "error", "message", "flaky")));
	json_array_append_new(evs, ev(T0 + 4500000, "job.module.error", "b", "error_frame",
	                              json_pack("{s:{s:s}}", "error", "code", "EX")));
	json_array_append_new(
	        evs, ev(T0 + 4500000, "job.stage.skipped", "c", "dependency_failed", NULL));
	json_array_append_new(evs, ev(T0 + 4500000, "job.unknown.kind", "c", NULL, NULL));
	json_array_append_new(evs,
	                      ev(T0 + 4501000, "job.lifecycle.fail", NULL, "stage_failed", NULL));
	json_t *tasks =
	        json_pack("[{s:s, s:i, s:[], s:[{s:s}]}, {s:s, s:i, s:[s], s:n}]", "stage", "a",
	                  "stage_number", 1, "depends_on", "artifacts", "key", "p/j/01_a/x.wav",
	                  "stage", "b", "stage_number", 2, "depends_on", "a", "artifacts");
	struct buf out = BUF_INIT;
	pipelog_render_tasks("j", "speech", evs, tasks, &out);
	const char *want =
	        "[2026-11-18 11:06:40.000] [pipeline] [INFO] Job j (pipeline speech): QUEUED\n"
	        "[2026-11-18 11:06:40.001] [pipeline] [INFO] Job j: RUNNING\n"
	        "[2026-11-18 11:06:40.001] [pipeline] [INFO] Stage a: STARTING (attempt 1)\n"
	        "[2026-11-18 11:06:40.001] [pipeline] [INFO] Input: input.json\n"
	        "[2026-11-18 11:06:44.201] [pipeline] [INFO] Output: 01_a/output.json\n"
	        "[2026-11-18 11:06:44.201] [pipeline] [INFO] Output: 01_a/x.wav\n"
	        "[2026-11-18 11:06:44.201] [pipeline] [INFO] Stage a: COMPLETED (4.2s)\n"
	        "[2026-11-18 11:06:44.300] [pipeline] [INFO] Stage b: STARTING (attempt 1)\n"
	        "[2026-11-18 11:06:44.300] [pipeline] [INFO] Input: input.json\n"
	        "[2026-11-18 11:06:44.300] [pipeline] [INFO] Input: 01_a/output.json\n"
	        "[2026-11-18 11:06:44.400] [pipeline] [WARNING] Stage b: RETRY (error_frame): "
	        "flaky\n"
	        "[2026-11-18 11:06:44.500] [pipeline] [ERROR] Stage b: FAILED: EX\n"
	        "[2026-11-18 11:06:44.500] [pipeline] [INFO] Stage c: SKIPPED (dependency_failed)\n"
	        "[2026-11-18 11:06:44.501] [pipeline] [ERROR] Job j: FAILED: stage_failed\n";
	assert_string_equal(out.data, want);
	buf_free(&out);
	json_decref(evs);
	json_decref(tasks);
}

static void test_ring_bounded(void **state)
{
	(void)state;
	struct stage_log_ring r;
	stage_log_ring_init(&r, 1000, 100);
	char line[64];
	size_t len = 0;
	uint64_t skipped = 0;
	for (int i = 0; i < 10; i++) {
		int n = snprintf(line, sizeof line, "line %02d\n", i);
		stage_log_ring_add(&r, line, (size_t)n);
	}
	stage_log_ring_add(&r, "no newline", 10); /* one is added */
	assert_int_equal(r.total, 10 * 8 + 11);
	const char *p = stage_log_ring_since(&r, 0, &len, &skipped);
	assert_int_equal(len, r.total);
	assert_int_equal(skipped, 0);
	assert_memory_equal(p, "line 00\n", 8);
	p = stage_log_ring_since(&r, 80, &len, &skipped);
	assert_int_equal(len, 11);
	assert_memory_equal(p, "no newline\n", 11);
	/* past the cap: the head stays, the middle goes, the tail is the latest */
	for (int i = 10; i < 500; i++) {
		int n = snprintf(line, sizeof line, "line %03d\n", i);
		stage_log_ring_add(&r, line, (size_t)n);
		assert_true(r.b.len <= 1000);
	}
	assert_true(r.dropped > 0);
	assert_memory_equal(r.b.data, "line 00\n", 8);
	assert_non_null(strstr(r.b.data, "bytes of the stage log dropped"));
	assert_non_null(strstr(r.b.data, "line 499\n"));
	assert_null(strstr(r.b.data, "line 200\n"));
	/* whole lines only: every line after the marker is intact */
	const char *m = strstr(r.b.data, "dropped to stay in memory bounds ...]\n");
	assert_non_null(m);
	m = strchr(m, '\n') + 1;
	assert_memory_equal(m, "line ", 5);
	/* a reader in the dropped middle skips to the tail and is told how much */
	p = stage_log_ring_since(&r, 2000, &len, &skipped);
	assert_true(skipped > 0);
	assert_memory_equal(p, "[... ", 5);
	/* a reader caught up gets nothing; one at the tail gets the rest */
	p = stage_log_ring_since(&r, r.total, &len, &skipped);
	assert_int_equal(len, 0);
	p = stage_log_ring_since(&r, r.total - 9, &len, &skipped);
	assert_int_equal(len, 9);
	assert_memory_equal(p, "line 499\n", 9);
	assert_int_equal(skipped, 0);
	stage_log_ring_free(&r);
}

static void test_range(void **state)
{
	(void)state;
	uint64_t s = 0, l = 0;
	assert_int_equal(http_range_parse(NULL, 100, &s, &l), HTTP_RANGE_NONE);
	assert_int_equal(http_range_parse("bytes=0-9", 100, &s, &l), HTTP_RANGE_OK);
	assert_true(s == 0 && l == 10);
	assert_int_equal(http_range_parse("bytes=90-", 100, &s, &l), HTTP_RANGE_OK);
	assert_true(s == 90 && l == 10);
	assert_int_equal(http_range_parse("bytes=90-1000", 100, &s, &l), HTTP_RANGE_OK);
	assert_true(s == 90 && l == 10);
	assert_int_equal(http_range_parse("bytes=-30", 100, &s, &l), HTTP_RANGE_OK);
	assert_true(s == 70 && l == 30);
	assert_int_equal(http_range_parse("bytes=-300", 100, &s, &l), HTTP_RANGE_OK);
	assert_true(s == 0 && l == 100);
	assert_int_equal(http_range_parse(" bytes= 5-5 ", 100, &s, &l), HTTP_RANGE_OK);
	assert_true(s == 5 && l == 1);
	assert_int_equal(http_range_parse("bytes=100-", 100, &s, &l), HTTP_RANGE_UNSATISFIABLE);
	assert_int_equal(http_range_parse("bytes=-0", 100, &s, &l), HTTP_RANGE_UNSATISFIABLE);
	assert_int_equal(http_range_parse("bytes=0-", 0, &s, &l), HTTP_RANGE_UNSATISFIABLE);
	/* ignored: other units, several ranges, reversed, junk, overflow */
	const char *none[] = {"items=0-1",
	                      "bytes=0-1,5-6",
	                      "bytes=9-1",
	                      "bytes=-",
	                      "bytes=a-b",
	                      "bytes=1-2x",
	                      "bytes=99999999999999999999999-",
	                      ""};
	for (size_t i = 0; i < sizeof none / sizeof none[0]; i++)
		assert_int_equal(http_range_parse(none[i], 100, &s, &l), HTTP_RANGE_NONE);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_manifest_running),
	        cmocka_unit_test(test_manifest_final),
	        cmocka_unit_test(test_manifest_status_and_skipped),
	        cmocka_unit_test(test_pipelog),
	        cmocka_unit_test(test_ring_bounded),
	        cmocka_unit_test(test_range),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
