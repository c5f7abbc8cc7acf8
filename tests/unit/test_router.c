/* Unit tests for http/router: literal and parameter templates, literal over
 * parameter precedence in either registration order, percent-decoding and
 * the paths it must refuse (encoded '/' and NUL, bad escapes, empty and dot
 * segments, raw or encoded, anywhere in the path), 404/405 with the Allow
 * mask, HEAD via GET, template validation and duplicates, multi-parameter
 * templates, and the method helpers. Run under ASan to check
 * route_match_clear frees every decoded value. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/router.h"

/* Distinct handler identities. */
static int h_list, h_create, h_get, h_delete, h_search, h_tasks, h_task, h_root, h_health, h_logs;

static int setup(void **state)
{
	struct router *r = router_new();
	bool ok = router_add(r, HTTP_M_GET, "/v1/jobs", &h_list, NULL) &&
	          router_add(r, HTTP_M_POST, "/v1/jobs", &h_create, NULL) &&
	          router_add(r, HTTP_M_GET, "/v1/jobs/{id}", &h_get, (void *)"arg-get") &&
	          router_add(r, HTTP_M_DELETE, "/v1/jobs/{id}", &h_delete, NULL) &&
	          router_add(r, HTTP_M_POST, "/v1/jobs/search", &h_search, NULL) &&
	          router_add(r, HTTP_M_GET, "/v1/jobs/{id}/tasks", &h_tasks, NULL) &&
	          router_add(r, HTTP_M_GET | HTTP_M_PATCH, "/v1/jobs/{id}/tasks/{task_id}", &h_task,
	                     NULL) &&
	          router_add(r, HTTP_M_GET, "/v1/jobs/{id}/tasks/{task_id}/logs", &h_logs, NULL) &&
	          router_add(r, HTTP_M_GET, "/", &h_root, NULL) &&
	          router_add(r, HTTP_M_GET, "/healthz", &h_health, NULL);
	if (!ok) {
		router_free(r);
		return -1;
	}
	*state = r;
	return 0;
}

static int teardown(void **state)
{
	router_free(*state);
	return 0;
}

static enum router_status match(const struct router *r, enum http_method m, const char *path,
                                struct route_match *rm)
{
	router_match(r, m, path, rm);
	return rm->status;
}

static void assert_found(const struct router *r, enum http_method m, const char *path,
                         void *handler, const char *tmpl)
{
	struct route_match rm;
	router_match(r, m, path, &rm);
	if (rm.status != ROUTER_FOUND)
		print_message("%s %s: status %d\n", http_method_name(m), path, rm.status);
	assert_int_equal(rm.status, ROUTER_FOUND);
	assert_ptr_equal(rm.handler, handler);
	assert_string_equal(rm.template_, tmpl);
	route_match_clear(&rm);
}

static void assert_status(const struct router *r, enum http_method m, const char *path,
                          enum router_status want)
{
	struct route_match rm;
	router_match(r, m, path, &rm);
	if (rm.status != want)
		print_message("%s %s: status %d, want %d\n", http_method_name(m), path, rm.status,
		              want);
	enum router_status got = rm.status;
	route_match_clear(&rm);
	assert_int_equal(got, want);
	if (want != ROUTER_FOUND)
		assert_null(rm.handler);
}

static void test_literal_routes(void **state)
{
	const struct router *r = *state;
	assert_found(r, HTTP_M_GET, "/v1/jobs", &h_list, "/v1/jobs");
	assert_found(r, HTTP_M_POST, "/v1/jobs", &h_create, "/v1/jobs");
	assert_found(r, HTTP_M_GET, "/", &h_root, "/");
	assert_found(r, HTTP_M_GET, "/healthz", &h_health, "/healthz");
	struct route_match rm;
	assert_int_equal(match(r, HTTP_M_GET, "/v1/jobs", &rm), ROUTER_FOUND);
	assert_int_equal(rm.nparams, 0);
	assert_null(route_match_param(&rm, "id"));
	route_match_clear(&rm);
	/* Literal comparison is exact and case-sensitive. */
	assert_status(r, HTTP_M_GET, "/V1/jobs", ROUTER_NOT_FOUND);
	assert_status(r, HTTP_M_GET, "/v1/job", ROUTER_NOT_FOUND);
	assert_status(r, HTTP_M_GET, "/v1/jobsx", ROUTER_NOT_FOUND);
	assert_status(r, HTTP_M_GET, "/healthzz", ROUTER_NOT_FOUND);
}

static void test_param_routes(void **state)
{
	const struct router *r = *state;
	struct route_match rm;
	assert_int_equal(match(r, HTTP_M_GET, "/v1/jobs/01890a5d-ac96", &rm), ROUTER_FOUND);
	assert_ptr_equal(rm.handler, &h_get);
	assert_string_equal((const char *)rm.arg, "arg-get");
	assert_string_equal(rm.template_, "/v1/jobs/{id}");
	assert_int_equal(rm.nparams, 1);
	assert_string_equal(rm.params[0].name, "id");
	assert_string_equal(route_match_param(&rm, "id"), "01890a5d-ac96");
	assert_null(route_match_param(&rm, "ID"));
	assert_null(route_match_param(&rm, "task_id"));
	route_match_clear(&rm);
	assert_int_equal(rm.nparams, 0);

	assert_int_equal(match(r, HTTP_M_DELETE, "/v1/jobs/42", &rm), ROUTER_FOUND);
	assert_ptr_equal(rm.handler, &h_delete);
	assert_string_equal(route_match_param(&rm, "id"), "42");
	route_match_clear(&rm);
}

static void test_multi_param(void **state)
{
	const struct router *r = *state;
	struct route_match rm;
	assert_int_equal(match(r, HTTP_M_PATCH, "/v1/jobs/j-1/tasks/t%20two", &rm), ROUTER_FOUND);
	assert_ptr_equal(rm.handler, &h_task);
	assert_string_equal(rm.template_, "/v1/jobs/{id}/tasks/{task_id}");
	assert_int_equal(rm.nparams, 2);
	assert_string_equal(route_match_param(&rm, "id"), "j-1");
	assert_string_equal(route_match_param(&rm, "task_id"), "t two");
	route_match_clear(&rm);

	assert_int_equal(match(r, HTTP_M_GET, "/v1/jobs/a/tasks/b/logs", &rm), ROUTER_FOUND);
	assert_ptr_equal(rm.handler, &h_logs);
	assert_string_equal(route_match_param(&rm, "id"), "a");
	assert_string_equal(route_match_param(&rm, "task_id"), "b");
	route_match_clear(&rm);

	assert_found(r, HTTP_M_GET, "/v1/jobs/a/tasks", &h_tasks, "/v1/jobs/{id}/tasks");
	/* A literal segment in the middle still has to match. */
	assert_status(r, HTTP_M_GET, "/v1/jobs/a/steps/b", ROUTER_NOT_FOUND);
	assert_status(r, HTTP_M_GET, "/v1/jobs/a/tasks/b/logs/c", ROUTER_NOT_FOUND);
}

static void test_literal_beats_param(void **state)
{
	const struct router *r = *state;
	assert_found(r, HTTP_M_POST, "/v1/jobs/search", &h_search, "/v1/jobs/search");
	/* The literal template owns this path: GET on it is 405, not GET {id}. */
	struct route_match rm;
	assert_int_equal(match(r, HTTP_M_GET, "/v1/jobs/search", &rm), ROUTER_METHOD_NOT_ALLOWED);
	assert_string_equal(rm.template_, "/v1/jobs/search");
	assert_int_equal(rm.allow, HTTP_M_POST);
	route_match_clear(&rm);

	/* Registration order must not matter. */
	struct router *r2 = router_new();
	assert_true(router_add(r2, HTTP_M_POST, "/v1/jobs/search", &h_search, NULL));
	assert_true(router_add(r2, HTTP_M_POST, "/v1/jobs/{id}", &h_get, NULL));
	assert_true(router_add(r2, HTTP_M_GET, "/v1/{a}/{b}", &h_root, NULL));
	assert_true(router_add(r2, HTTP_M_GET, "/v1/{a}/x", &h_health, NULL));
	assert_found(r2, HTTP_M_POST, "/v1/jobs/search", &h_search, "/v1/jobs/search");
	assert_found(r2, HTTP_M_POST, "/v1/jobs/other", &h_get, "/v1/jobs/{id}");
	assert_found(r2, HTTP_M_GET, "/v1/q/x", &h_health, "/v1/{a}/x");
	assert_found(r2, HTTP_M_GET, "/v1/q/y", &h_root, "/v1/{a}/{b}");
	router_free(r2);
}

static void test_percent_decoding(void **state)
{
	const struct router *r = *state;
	static const struct {
		const char *path, *want;
	} ok[] = {
	        {"/v1/jobs/a%20b", "a b"},
	        {"/v1/jobs/%41%62%63", "Abc"},
	        {"/v1/jobs/%e2%82%ac", "\xe2\x82\xac"},
	        {"/v1/jobs/%E2%82%AC", "\xe2\x82\xac"},
	        {"/v1/jobs/100%25", "100%"},
	        {"/v1/jobs/%3F%23%26", "?#&"},
	        {"/v1/jobs/a+b", "a+b"}, /* '+' is not a space in a path */
	        {"/v1/jobs/%2e%2e%2e", "..."}, /* three dots are not a dot segment */
	        {"/v1/jobs/a%2e", "a."},
	};
	for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
		struct route_match rm;
		router_match(r, HTTP_M_GET, ok[i].path, &rm);
		if (rm.status != ROUTER_FOUND)
			print_message("%s: status %d\n", ok[i].path, rm.status);
		assert_int_equal(rm.status, ROUTER_FOUND);
		assert_string_equal(route_match_param(&rm, "id"), ok[i].want);
		route_match_clear(&rm);
	}
}

static void test_bad_paths(void **state)
{
	const struct router *r = *state;
	static const char *const bad[] = {
	        "/v1/jobs/a%2Fb", /* encoded slash */
	        "/v1/jobs/a%2fb",
	        "/v1/jobs/a%00b", /* encoded NUL */
	        "/v1/jobs/%00",
	        "/v1/jobs/%", /* truncated escapes */
	        "/v1/jobs/a%",
	        "/v1/jobs/a%4",
	        "/v1/jobs/%zz", /* not hex */
	        "/v1/jobs/%4g",
	        "/v1/jobs/%g4",
	        "/v1/jobs/%%41",
	        "/v1/jobs/ok/tasks/%2F", /* second param bad, first decoded */
	        "//v1/jobs", /* empty segments */
	        "/v1//jobs",
	        "/v1/jobs//",
	        "/v1/./jobs", /* dot segments */
	        "/v1/../v1/jobs",
	        "/v1/jobs/.",
	        "/v1/jobs/..",
	        "/v1/jobs/%2e", /* encoded dot segments */
	        "/v1/jobs/%2E%2e",
	        "/v1/jobs/.%2e",
	        "/v1/%2e%2e/jobs",
	        "/v1/%zz/jobs", /* bad escape in a literal position */
	        "/nope/%2F", /* refused even where no route matches */
	        "/nope/%00/x",
	        "/..",
	        "//",
	        "", /* not absolute */
	        "v1/jobs"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		struct route_match rm;
		router_match(r, HTTP_M_GET, bad[i], &rm);
		if (rm.status != ROUTER_BAD_PATH)
			print_message("\"%s\": status %d\n", bad[i], rm.status);
		assert_int_equal(rm.status, ROUTER_BAD_PATH);
		assert_null(rm.handler);
		/* Nothing decoded is handed out (and nothing leaks under ASan). */
		assert_int_equal(rm.nparams, 0);
		assert_null(route_match_param(&rm, "id"));
		route_match_clear(&rm);
	}
	/* A dot inside a segment is an ordinary character. */
	struct route_match rm;
	assert_int_equal(match(r, HTTP_M_GET, "/v1/jobs/a.b..c", &rm), ROUTER_FOUND);
	assert_string_equal(route_match_param(&rm, "id"), "a.b..c");
	route_match_clear(&rm);
	assert_int_equal(match(r, HTTP_M_GET, "/v1/jobs/...", &rm), ROUTER_FOUND);
	route_match_clear(&rm);
}

static void test_trailing_slash(void **state)
{
	const struct router *r = *state;
	assert_found(r, HTTP_M_GET, "/v1/jobs/", &h_list, "/v1/jobs");
	assert_found(r, HTTP_M_GET, "/healthz/", &h_health, "/healthz");
	struct route_match rm;
	assert_int_equal(match(r, HTTP_M_GET, "/v1/jobs/abc/", &rm), ROUTER_FOUND);
	assert_ptr_equal(rm.handler, &h_get);
	assert_string_equal(route_match_param(&rm, "id"), "abc");
	route_match_clear(&rm);
	assert_status(r, HTTP_M_GET, "/v1/jobs//", ROUTER_BAD_PATH);
}

static void test_not_found(void **state)
{
	const struct router *r = *state;
	static const char *const paths[] = {"/nope", "/v1", "/v2/jobs", "/v1/jobs/a/b",
	                                    "/v1/jobs/a/tasks/b/c/d"};
	for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
		struct route_match rm;
		router_match(r, HTTP_M_GET, paths[i], &rm);
		assert_int_equal(rm.status, ROUTER_NOT_FOUND);
		assert_string_equal(rm.template_, ROUTER_UNMATCHED);
		assert_null(rm.handler);
		assert_int_equal(rm.allow, 0);
		assert_int_equal(rm.nparams, 0);
		route_match_clear(&rm);
	}
	/* An empty router finds nothing, not even "/". */
	struct router *empty = router_new();
	assert_status(empty, HTTP_M_GET, "/", ROUTER_NOT_FOUND);
	router_free(empty);
}

static void test_method_not_allowed(void **state)
{
	const struct router *r = *state;
	struct route_match rm;
	char allow[64];

	assert_int_equal(match(r, HTTP_M_PUT, "/v1/jobs", &rm), ROUTER_METHOD_NOT_ALLOWED);
	assert_string_equal(rm.template_, "/v1/jobs");
	assert_null(rm.handler);
	assert_int_equal(rm.allow, HTTP_M_GET | HTTP_M_HEAD | HTTP_M_POST);
	http_methods_format(rm.allow, allow, sizeof allow);
	assert_string_equal(allow, "GET, HEAD, POST");
	route_match_clear(&rm);

	assert_int_equal(match(r, HTTP_M_POST, "/v1/jobs/x", &rm), ROUTER_METHOD_NOT_ALLOWED);
	assert_string_equal(rm.template_, "/v1/jobs/{id}");
	assert_int_equal(rm.allow, HTTP_M_GET | HTTP_M_HEAD | HTTP_M_DELETE);
	assert_int_equal(rm.nparams, 0);
	http_methods_format(rm.allow, allow, sizeof allow);
	assert_string_equal(allow, "GET, HEAD, DELETE");
	route_match_clear(&rm);

	assert_int_equal(match(r, HTTP_M_DELETE, "/v1/jobs/x/tasks/y", &rm),
	                 ROUTER_METHOD_NOT_ALLOWED);
	http_methods_format(rm.allow, allow, sizeof allow);
	assert_string_equal(allow, "GET, HEAD, PATCH");
	route_match_clear(&rm);

	assert_status(r, HTTP_M_OTHER, "/v1/jobs", ROUTER_METHOD_NOT_ALLOWED);
	assert_status(r, HTTP_M_OPTIONS, "/healthz", ROUTER_METHOD_NOT_ALLOWED);

	/* A POST-only resource does not gain HEAD. */
	assert_int_equal(match(r, HTTP_M_HEAD, "/v1/jobs/search", &rm), ROUTER_METHOD_NOT_ALLOWED);
	assert_int_equal(rm.allow, HTTP_M_POST);
	route_match_clear(&rm);
}

static void test_head_via_get(void **state)
{
	const struct router *r = *state;
	assert_found(r, HTTP_M_HEAD, "/v1/jobs", &h_list, "/v1/jobs");
	assert_found(r, HTTP_M_HEAD, "/", &h_root, "/");
	struct route_match rm;
	assert_int_equal(match(r, HTTP_M_HEAD, "/v1/jobs/a/tasks/b", &rm), ROUTER_FOUND);
	assert_ptr_equal(rm.handler, &h_task);
	assert_string_equal(route_match_param(&rm, "task_id"), "b");
	route_match_clear(&rm);

	/* An explicit HEAD route is used for HEAD. */
	struct router *r2 = router_new();
	assert_true(router_add(r2, HTTP_M_HEAD, "/x", &h_root, NULL));
	assert_true(router_add(r2, HTTP_M_GET, "/y", &h_list, NULL));
	assert_found(r2, HTTP_M_HEAD, "/x", &h_root, "/x");
	assert_status(r2, HTTP_M_GET, "/x", ROUTER_METHOD_NOT_ALLOWED);
	assert_found(r2, HTTP_M_HEAD, "/y", &h_list, "/y");
	router_free(r2);
}

static void test_router_add_validation(void **state)
{
	struct router *r = router_new();
	static const char *const bad[] = {
	        "no-slash", "",      "v1/jobs", "/a/{", "/a/{}", "/a/x{y}",
	        "/a/{y}x",  "/a/{y", "/a//b",   "//",   "/a/",   "/a/b/",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		bool ok = router_add(r, HTTP_M_GET, bad[i], &h_root, NULL);
		if (ok)
			print_message("accepted template \"%s\"\n", bad[i]);
		assert_false(ok);
	}
	/* more than 64 segments */
	char deep[512] = "";
	for (int i = 1; i <= 65; i++)
		snprintf(deep + strlen(deep), sizeof deep - strlen(deep), "/%d", i);
	assert_false(router_add(r, HTTP_M_GET, deep, &h_root, NULL));
	/* Nothing from a rejected template was registered. */
	assert_status(r, HTTP_M_GET, "/a/x", ROUTER_NOT_FOUND);
	assert_status(r, HTTP_M_GET, "/no-slash", ROUTER_NOT_FOUND);

	assert_true(router_add(r, HTTP_M_GET, "/1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16", &h_list,
	                       NULL));
	assert_found(r, HTTP_M_GET, "/1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16", &h_list,
	             "/1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16");

	/* Duplicates: same method on the same shape, whatever the param names. */
	assert_true(router_add(r, HTTP_M_GET | HTTP_M_PUT, "/j/{id}", &h_get, NULL));
	assert_false(router_add(r, HTTP_M_GET, "/j/{id}", &h_get, NULL));
	assert_false(router_add(r, HTTP_M_PUT, "/j/{job}", &h_get, NULL));
	assert_false(router_add(r, HTTP_M_DELETE | HTTP_M_GET, "/j/{x}", &h_get, NULL));
	/* Another method on the same shape, or a different shape, is fine. */
	assert_true(router_add(r, HTTP_M_DELETE, "/j/{job}", &h_delete, NULL));
	assert_true(router_add(r, HTTP_M_GET, "/j/literal", &h_search, NULL));
	assert_true(router_add(r, HTTP_M_GET, "/j/{id}/x", &h_tasks, NULL));
	assert_found(r, HTTP_M_GET, "/j/7", &h_get, "/j/{id}");
	assert_found(r, HTTP_M_DELETE, "/j/7", &h_delete, "/j/{job}");
	struct route_match rm;
	router_match(r, HTTP_M_DELETE, "/j/7", &rm);
	assert_string_equal(route_match_param(&rm, "job"), "7");
	assert_null(route_match_param(&rm, "id"));
	route_match_clear(&rm);
	router_free(r);
	router_free(NULL);
}

static void test_match_clear_frees(void **state)
{
	const struct router *r = *state;
	/* Many matches with decoded params; ASan's leak check proves each is freed. */
	char path[128];
	for (int i = 0; i < 1000; i++) {
		snprintf(path, sizeof path, "/v1/jobs/job%%20%d/tasks/task%%2D%d/logs", i, i);
		struct route_match rm;
		router_match(r, HTTP_M_GET, path, &rm);
		assert_int_equal(rm.status, ROUTER_FOUND);
		assert_int_equal(rm.nparams, 2);
		char want[32];
		snprintf(want, sizeof want, "task-%d", i);
		assert_string_equal(route_match_param(&rm, "task_id"), want);
		route_match_clear(&rm);
		route_match_clear(&rm); /* idempotent */
	}
}

static void test_rest_param(void **state)
{
	(void)state;
	struct router *r = router_new();
	int h1 = 1, h2 = 2;
	assert_true(router_add(r, HTTP_M_GET, "/v1/objects/{key+}", &h1, NULL));
	assert_true(router_add(r, HTTP_M_GET, "/v1/objects/{id}", &h2, NULL));
	/* {name+} only as the last segment, with a name */
	assert_false(router_add(r, HTTP_M_GET, "/v1/{x+}/y", &h1, NULL));
	assert_false(router_add(r, HTTP_M_GET, "/v2/{+}", &h1, NULL));
	assert_false(router_add(r, HTTP_M_POST | HTTP_M_GET, "/v1/objects/{other+}", &h1, NULL));
	struct route_match m;
	router_match(r, HTTP_M_GET, "/v1/objects/p/j/01_a/sub%20dir/f%7E.wav", &m);
	assert_int_equal(m.status, ROUTER_FOUND);
	assert_ptr_equal(m.handler, &h1);
	assert_string_equal(m.template_, "/v1/objects/{key+}");
	assert_string_equal(route_match_param(&m, "key"), "p/j/01_a/sub dir/f~.wav");
	route_match_clear(&m);
	/* one segment: the fixed-shape template wins */
	router_match(r, HTTP_M_GET, "/v1/objects/one", &m);
	assert_int_equal(m.status, ROUTER_FOUND);
	assert_ptr_equal(m.handler, &h2);
	route_match_clear(&m);
	/* at least one segment */
	router_match(r, HTTP_M_GET, "/v1/objects", &m);
	assert_int_equal(m.status, ROUTER_NOT_FOUND);
	route_match_clear(&m);
	/* an encoded slash or a dot segment anywhere is still refused */
	router_match(r, HTTP_M_GET, "/v1/objects/a/b%2Fc", &m);
	assert_int_equal(m.status, ROUTER_BAD_PATH);
	route_match_clear(&m);
	router_match(r, HTTP_M_GET, "/v1/objects/a/../b", &m);
	assert_int_equal(m.status, ROUTER_BAD_PATH);
	route_match_clear(&m);
	router_match(r, HTTP_M_DELETE, "/v1/objects/a/b", &m);
	assert_int_equal(m.status, ROUTER_METHOD_NOT_ALLOWED);
	route_match_clear(&m);
	router_free(r);
}

static void test_method_helpers(void **state)
{
	static const struct {
		const char *name;
		enum http_method m;
	} ms[] = {{"GET", HTTP_M_GET},        {"HEAD", HTTP_M_HEAD},     {"POST", HTTP_M_POST},
	          {"PUT", HTTP_M_PUT},        {"DELETE", HTTP_M_DELETE}, {"PATCH", HTTP_M_PATCH},
	          {"OPTIONS", HTTP_M_OPTIONS}};
	for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
		assert_int_equal(http_method_parse(ms[i].name), ms[i].m);
		assert_string_equal(http_method_name(ms[i].m), ms[i].name);
	}
	/* Methods are case-sensitive (RFC 9110 9.1). */
	assert_int_equal(http_method_parse("get"), HTTP_M_OTHER);
	assert_int_equal(http_method_parse("TRACE"), HTTP_M_OTHER);
	assert_int_equal(http_method_parse("CONNECT"), HTTP_M_OTHER);
	assert_int_equal(http_method_parse(""), HTTP_M_OTHER);
	assert_int_equal(http_method_parse("GET "), HTTP_M_OTHER);
	assert_string_equal(http_method_name(HTTP_M_OTHER), "OTHER");

	char out[64];
	http_methods_format(HTTP_M_POST | HTTP_M_GET | HTTP_M_HEAD, out, sizeof out);
	assert_string_equal(out, "GET, HEAD, POST");
	http_methods_format(0, out, sizeof out);
	assert_string_equal(out, "");
	http_methods_format(HTTP_M_OTHER, out, sizeof out);
	assert_string_equal(out, "");
	http_methods_format(0xff, out, sizeof out);
	assert_string_equal(out, "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS");
	http_methods_format(HTTP_M_DELETE, out, sizeof out);
	assert_string_equal(out, "DELETE");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_literal_routes, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_param_routes, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_multi_param, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_literal_beats_param, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_percent_decoding, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_bad_paths, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_trailing_slash, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_not_found, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_method_not_allowed, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_head_via_get, setup, teardown),
	        cmocka_unit_test(test_router_add_validation),
	        cmocka_unit_test_setup_teardown(test_match_clear_frees, setup, teardown),
	        cmocka_unit_test(test_rest_param),
	        cmocka_unit_test(test_method_helpers),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
