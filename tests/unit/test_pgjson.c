/* pgjson: JSON as jsonb writes it back, big numbers included. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "db/pgjson.h"

static char *dump(const json_t *v)
{
	return json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
}

static void expect(const char *text, const char *want)
{
	json_t *v = pg_json_parse(text);
	if (want == NULL) {
		assert_null(v);
		return;
	}
	assert_non_null(v);
	char *got = dump(v);
	assert_string_equal(got, want);
	free(got);
	json_decref(v);
}

static void test_plain_values_unchanged(void **state)
{
	(void)state;
	expect("{\"a\": 1, \"b\": [true, null, \"x\"], \"c\": 1.5}",
	       "{\"a\":1,\"b\":[true,null,\"x\"],\"c\":1.5}");
	expect("\"just text\"", "\"just text\"");
	expect("0", "0");
	expect("-9223372036854775808", "-9223372036854775808");
	expect("9223372036854775807", "9223372036854775807");
}

/* jsonb's rendering of 1e300, as PostgreSQL 15 writes it */
static void test_huge_integer_is_the_double_it_was(void **state)
{
	(void)state;
	char text[400] = "{\"big\": 1";
	for (int i = 0; i < 300; i++)
		strcat(text, "0");
	strcat(text, ", \"small\": 3, \"neg\": -92233720368547758080}");
	json_t *v = pg_json_parse(text);
	assert_non_null(v);
	assert_true(json_is_real(json_object_get(v, "big")));
	assert_true(json_real_value(json_object_get(v, "big")) == 1e300);
	/* the others stay integers */
	assert_true(json_is_integer(json_object_get(v, "small")));
	assert_int_equal(json_integer_value(json_object_get(v, "small")), 3);
	assert_true(json_real_value(json_object_get(v, "neg")) == -92233720368547758080.0);
	json_decref(v);
	expect("9223372036854775808", "9.2233720368547758e18");
}

/* digits inside strings, fractions and exponents are left alone */
static void test_only_integer_literals_outside_strings(void **state)
{
	(void)state;
	expect("{\"s\": \"123456789012345678901234\\\" 99999999999999999999\", \"n\": "
	       "99999999999999999999}",
	       "{\"n\":1e20,\"s\":\"123456789012345678901234\\\" 99999999999999999999\"}");
	expect("[0.123456789012345678901234567, 1e+300, 2E-5, 99999999999999999999]",
	       "[0.12345678901234568,1.0000000000000001e300,2.0000000000000002e-5,1e20]");
}

static void test_not_json_stays_an_error(void **state)
{
	(void)state;
	expect("", NULL);
	expect("{\"a\": }", NULL);
	expect("{\"a\": 99999999999999999999", NULL);
	expect("\"unterminated", NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_plain_values_unchanged),
	        cmocka_unit_test(test_huge_integer_is_the_double_it_was),
	        cmocka_unit_test(test_only_integer_literals_outside_strings),
	        cmocka_unit_test(test_not_json_stays_an_error),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
