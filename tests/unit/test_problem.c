/* Unit tests for http/problem: every rendering parsed back with jansson --
 * the type URN or about:blank, the title defaulting to the reason phrase,
 * status as an integer, optional detail and instance, extension members
 * that cannot override the standard five, invalid UTF-8 still producing
 * valid JSON, and the reason phrase table. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/problem.h"

/* Renders and parses; the caller json_decref()s. */
static json_t *render(int status, const char *slug, const char *title, const char *detail,
                      const char *instance, const json_t *extra)
{
	char *s = problem_render(status, slug, title, detail, instance, extra);
	assert_non_null(s);
	json_error_t err;
	json_t *j = json_loads(s, JSON_REJECT_DUPLICATES, &err);
	if (j == NULL)
		print_message("invalid JSON (%s): %s\n", err.text, s);
	free(s);
	assert_non_null(j);
	assert_true(json_is_object(j));
	return j;
}

static const char *str_member(const json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

static void test_full_problem(void **state)
{
	char *s = problem_render(404, "job-not-found", "Job not found",
	                         "no job with id 0189 exists", "/v1/jobs/0189", NULL);
	/* The standard members come first, in RFC 9457 order. */
	assert_true(strncmp(s, "{\"type\":", 8) == 0);
	char *t = strstr(s, "\"title\""), *st = strstr(s, "\"status\""),
	     *d = strstr(s, "\"detail\""), *in = strstr(s, "\"instance\"");
	assert_true(t && st && d && in && t < st && st < d && d < in);
	free(s);

	json_t *j = render(404, "job-not-found", "Job not found", "no job with id 0189 exists",
	                   "/v1/jobs/0189", NULL);
	assert_string_equal(str_member(j, "type"), "urn:stageline:problem:job-not-found");
	assert_string_equal(str_member(j, "title"), "Job not found");
	assert_true(json_is_integer(json_object_get(j, "status")));
	assert_int_equal(json_integer_value(json_object_get(j, "status")), 404);
	assert_string_equal(str_member(j, "detail"), "no job with id 0189 exists");
	assert_string_equal(str_member(j, "instance"), "/v1/jobs/0189");
	assert_int_equal(json_object_size(j), 5);
	json_decref(j);
}

static void test_defaults(void **state)
{
	/* No slug: about:blank. No title: the reason phrase. */
	json_t *j = render(405, NULL, NULL, NULL, NULL, NULL);
	assert_string_equal(str_member(j, "type"), "about:blank");
	assert_string_equal(str_member(j, "title"), "Method Not Allowed");
	assert_int_equal(json_integer_value(json_object_get(j, "status")), 405);
	/* Optional members are absent rather than null or empty. */
	assert_null(json_object_get(j, "detail"));
	assert_null(json_object_get(j, "instance"));
	assert_int_equal(json_object_size(j), 3);
	json_decref(j);

	j = render(429, "rate-limited", NULL, "slow down", NULL, NULL);
	assert_string_equal(str_member(j, "type"), "urn:stageline:problem:rate-limited");
	assert_string_equal(str_member(j, "title"), "Too Many Requests");
	assert_string_equal(str_member(j, "detail"), "slow down");
	assert_null(json_object_get(j, "instance"));
	json_decref(j);

	/* An unknown status still renders, with the "Unknown" title. */
	j = render(599, NULL, NULL, NULL, "/x", NULL);
	assert_string_equal(str_member(j, "title"), "Unknown");
	assert_int_equal(json_integer_value(json_object_get(j, "status")), 599);
	assert_string_equal(str_member(j, "instance"), "/x");
	json_decref(j);

	/* Empty strings are kept as given. */
	j = render(400, "", "", "", "", NULL);
	assert_string_equal(str_member(j, "type"), "urn:stageline:problem:");
	assert_string_equal(str_member(j, "title"), "");
	assert_string_equal(str_member(j, "detail"), "");
	assert_string_equal(str_member(j, "instance"), "");
	json_decref(j);
}

static void test_extra_members(void **state)
{
	json_t *extra =
	        json_pack("{s:s,s:i,s:[{s:s,s:s}],s:s,s:s,s:i,s:s,s:s,s:n}", "request_id", "req-1",
	                  "retry_after", 30, "errors", "field", "name", "reason", "required",
	                  "type", "https://evil.example/", "title", "Fake", "status", 200, "detail",
	                  "fake detail", "instance", "/fake", "extra_null");
	json_t *j =
	        render(422, "invalid-job", "Invalid job", "name is required", "/v1/jobs", extra);
	/* The standard five are the renderer's, not the extension's. */
	assert_string_equal(str_member(j, "type"), "urn:stageline:problem:invalid-job");
	assert_string_equal(str_member(j, "title"), "Invalid job");
	assert_int_equal(json_integer_value(json_object_get(j, "status")), 422);
	assert_string_equal(str_member(j, "detail"), "name is required");
	assert_string_equal(str_member(j, "instance"), "/v1/jobs");
	/* Extensions are added as they are. */
	assert_string_equal(str_member(j, "request_id"), "req-1");
	assert_int_equal(json_integer_value(json_object_get(j, "retry_after")), 30);
	assert_true(json_equal(json_object_get(j, "errors"), json_object_get(extra, "errors")));
	assert_true(json_is_null(json_object_get(j, "extra_null")));
	assert_int_equal(json_object_size(j), 5 + 4);
	json_decref(j);

	/* The standard members can't be injected even when the renderer omits them. */
	j = render(500, NULL, NULL, NULL, NULL, extra);
	assert_string_equal(str_member(j, "type"), "about:blank");
	assert_string_equal(str_member(j, "title"), "Internal Server Error");
	assert_int_equal(json_integer_value(json_object_get(j, "status")), 500);
	assert_null(json_object_get(j, "detail"));
	assert_null(json_object_get(j, "instance"));
	json_decref(j);

	/* extra is borrowed: still intact and singly owned afterwards. */
	assert_int_equal(extra->refcount, 1);
	assert_string_equal(str_member(extra, "type"), "https://evil.example/");
	assert_int_equal(json_object_size(extra), 9);
	json_decref(extra);

	/* A non-object extra is ignored. */
	json_t *arr = json_pack("[s,i]", "x", 1);
	j = render(400, NULL, NULL, NULL, NULL, arr);
	assert_int_equal(json_object_size(j), 3);
	json_decref(j);
	json_decref(arr);
	json_t *empty = json_object();
	j = render(400, NULL, NULL, NULL, NULL, empty);
	assert_int_equal(json_object_size(j), 3);
	json_decref(j);
	json_decref(empty);
}

static void test_detail_escaping(void **state)
{
	const char *tricky = "quote \" backslash \\ newline \n tab \t ctl \x01 caf\xc3\xa9 "
	                     "</script> {\"status\":200}";
	json_t *j = render(400, "bad-request", NULL, tricky, "/a?b=\"c\"", NULL);
	assert_string_equal(str_member(j, "detail"), tricky);
	assert_string_equal(str_member(j, "instance"), "/a?b=\"c\"");
	assert_int_equal(json_integer_value(json_object_get(j, "status")), 400);
	json_decref(j);
}

static void test_detail_invalid_utf8(void **state)
{
	static const char *const bad[] = {"bad \xff byte",      "lone \x80 continuation",
	                                  "overlong \xc0\x80",  "surrogate \xed\xa0\x80",
	                                  "truncated \xe2\x82", "too big \xf4\x90\x80\x80",
	                                  "\xfe\xfe\xfe"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		json_t *j = render(400, "bad-request", NULL, bad[i], NULL, NULL);
		const char *d = str_member(j, "detail");
		if (d == NULL)
			print_message("detail dropped for case %zu\n", i);
		assert_non_null(d);
		/* The invalid bytes became U+FFFD and the valid prefix is intact. */
		assert_non_null(strstr(d, "\xef\xbf\xbd"));
		size_t pre = strcspn(bad[i], "\x80\xc0\xed\xe2\xf4\xfe\xff");
		assert_memory_equal(d, bad[i], pre);
		assert_string_equal(str_member(j, "title"), "Bad Request");
		json_decref(j);
	}
}

/* A caller-supplied title or instance with invalid UTF-8 must not make a
 * standard member vanish: the title in particular is always present. */
static void test_title_instance_invalid_utf8(void **state)
{
	json_t *j = render(409, "conflict", "Conflict on caf\xe9", NULL, "/v1/jobs/\xff", NULL);
	const char *title = str_member(j, "title");
	const json_t *in = json_object_get(j, "instance");
	bool instance_ok = in == NULL || json_is_string(in);
	bool title_ok = title != NULL && strncmp(title, "Conflict on caf", 15) == 0;
	if (!title_ok)
		print_message("title missing or wrong for invalid UTF-8 input\n");
	json_decref(j);
	assert_true(instance_ok);
	assert_true(title_ok);
}

static void test_status_reasons(void **state)
{
	static const struct {
		int status;
		const char *reason;
	} want[] = {
	        {200, "OK"},
	        {201, "Created"},
	        {202, "Accepted"},
	        {204, "No Content"},
	        {400, "Bad Request"},
	        {401, "Unauthorized"},
	        {403, "Forbidden"},
	        {404, "Not Found"},
	        {405, "Method Not Allowed"},
	        {408, "Request Timeout"},
	        {409, "Conflict"},
	        {413, "Content Too Large"},
	        {414, "URI Too Long"},
	        {415, "Unsupported Media Type"},
	        {422, "Unprocessable Content"},
	        {429, "Too Many Requests"},
	        {431, "Request Header Fields Too Large"},
	        {500, "Internal Server Error"},
	        {501, "Not Implemented"},
	        {503, "Service Unavailable"},
	        {504, "Gateway Timeout"},
	};
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
		assert_string_equal(http_status_reason(want[i].status), want[i].reason);
	static const int unknown[] = {0, -1, 99, 299, 418, 451, 600, 999, 1000000};
	for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++)
		assert_string_equal(http_status_reason(unknown[i]), "Unknown");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_full_problem),
	        cmocka_unit_test(test_defaults),
	        cmocka_unit_test(test_extra_members),
	        cmocka_unit_test(test_detail_escaping),
	        cmocka_unit_test(test_detail_invalid_utf8),
	        cmocka_unit_test(test_title_instance_invalid_utf8),
	        cmocka_unit_test(test_status_reasons),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
