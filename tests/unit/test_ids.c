/* Unit tests for core/ids: UUIDv7 layout (version, variant, case, length),
 * the embedded timestamp and time ordering, uniqueness, the UUID validator
 * and version reader, random hex, and the X-Request-Id rule. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/ids.h"

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* The 48-bit unix_ts_ms field: hex digits 0-7 and 9-12. */
static uint64_t uuid_ms(const char *u)
{
	uint64_t ms = 0;
	for (int i = 0; i < 13; i++) {
		if (i == 8)
			continue;
		ms = ms << 4 | (uint64_t)hexval(u[i]);
	}
	return ms;
}

static void assert_uuid7_shape(const char *u)
{
	assert_int_equal(strlen(u), ID_UUID_LEN);
	for (int i = 0; i < ID_UUID_LEN; i++) {
		if (i == 8 || i == 13 || i == 18 || i == 23)
			assert_int_equal(u[i], '-');
		else
			assert_non_null(strchr("0123456789abcdef", u[i]));
	}
	assert_int_equal(u[14], '7');
	/* RFC 9562 variant: the top two bits of octet 8 are 10. */
	assert_non_null(strchr("89ab", u[19]));
	assert_true(id_uuid_valid(u));
	assert_int_equal(id_uuid_version(u), 7);
}

static void test_uuid7_format(void **state)
{
	static const uint64_t times[] = {0, 1, 1700000000000ull, 1767225600123ull,
	                                 0xffffffffffffull};
	for (size_t t = 0; t < sizeof times / sizeof times[0]; t++) {
		for (int k = 0; k < 200; k++) {
			char u[ID_UUID_LEN + 1];
			memset(u, 'Z', sizeof u);
			id_uuid7_at(u, times[t]);
			assert_int_equal(u[ID_UUID_LEN], '\0');
			assert_uuid7_shape(u);
			assert_true(uuid_ms(u) == times[t]);
		}
	}
}

static void test_uuid7_now(void **state)
{
	uint64_t before = (uint64_t)(clock_now_us() / 1000);
	char u[ID_UUID_LEN + 1];
	id_uuid7(u);
	uint64_t after = (uint64_t)(clock_now_us() / 1000);
	assert_uuid7_shape(u);
	uint64_t ms = uuid_ms(u);
	assert_true(ms >= before && ms <= after);
}

static void test_uuid7_time_ordering(void **state)
{
	char prev[ID_UUID_LEN + 1], cur[ID_UUID_LEN + 1];
	uint64_t ms = 1700000000000ull;
	id_uuid7_at(prev, ms);
	/* Steps of 1 ms and steps that carry across hex digits and bytes. */
	static const uint64_t steps[] = {1, 1, 15, 16, 255, 256, 4095, 65536, 1ull << 32};
	for (int round = 0; round < 50; round++) {
		for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
			ms += steps[s];
			id_uuid7_at(cur, ms);
			if (strcmp(prev, cur) >= 0)
				print_message("%s !< %s\n", prev, cur);
			assert_true(strcmp(prev, cur) < 0);
			memcpy(prev, cur, sizeof cur);
		}
	}
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp((const char *)a, (const char *)b);
}

static void test_uuid7_unique(void **state)
{
	enum { N = 10000 };
	char(*ids)[ID_UUID_LEN + 1] = malloc(N * sizeof *ids);
	/* All in the same millisecond, so only the random bits differ. */
	for (int i = 0; i < N; i++)
		id_uuid7_at(ids[i], 1767225600000ull);
	qsort(ids, N, sizeof *ids, cmp_str);
	for (int i = 1; i < N; i++)
		assert_string_not_equal(ids[i - 1], ids[i]);
	/* And with the real clock. */
	for (int i = 0; i < N; i++)
		id_uuid7(ids[i]);
	qsort(ids, N, sizeof *ids, cmp_str);
	for (int i = 1; i < N; i++)
		assert_string_not_equal(ids[i - 1], ids[i]);
	free(ids);
}

/* Request ids: the fast generator keeps the UUIDv7 shape, the clock and
 * uniqueness. */
static void test_uuid7_fast(void **state)
{
	enum { N = 10000 };
	char(*ids)[ID_UUID_LEN + 1] = malloc(N * sizeof *ids);
	uint64_t before = (uint64_t)(clock_now_us() / 1000);
	for (int i = 0; i < N; i++) {
		id_uuid7_fast(ids[i]);
		assert_uuid7_shape(ids[i]);
	}
	uint64_t after = (uint64_t)(clock_now_us() / 1000);
	assert_true(uuid_ms(ids[0]) >= before && uuid_ms(ids[N - 1]) <= after);
	qsort(ids, N, sizeof *ids, cmp_str);
	for (int i = 1; i < N; i++)
		assert_string_not_equal(ids[i - 1], ids[i]);
	free(ids);
}

static void test_uuid_valid(void **state)
{
	assert_true(id_uuid_valid("01890a5d-ac96-774b-bcce-b302099a8057"));
	assert_true(id_uuid_valid("01890A5D-AC96-774B-BCCE-B302099A8057"));
	assert_true(id_uuid_valid("00000000-0000-0000-0000-000000000000"));

	static const char *const bad[] = {
	        NULL,
	        "",
	        "01890a5d-ac96-774b-bcce-b302099a805", /* 35 chars */
	        "01890a5d-ac96-774b-bcce-b302099a80577", /* 37 chars */
	        "01890a5dac96774bbccab302099a8057", /* no dashes */
	        "01890a5da-c96-774b-bcce-b302099a8057", /* dash moved right */
	        "01890a5-dac96-774b-bcce-b302099a8057", /* dash moved left */
	        "01890a5d-ac96-774b-bcceb-302099a8057", /* fourth dash misplaced */
	        "01890a5d-ac96-774b-bcce-b302099a805g", /* non-hex */
	        "01890a5d-ac96-774b-bcce-b302099a805 ", /* space */
	        "01890a5d_ac96_774b_bcce_b302099a8057", /* underscores */
	        "{1890a5d-ac96-774b-bcce-b302099a805}", /* braces */
	        "01890a5d-ac96-774b-bcce-b30209\xc3\xa9"
	        "a805", /* non-ASCII, 36 bytes */
	        "01890a5d-ac96-774b-bcce-b302099a8057\n",
	        "-1890a5d-ac96-774b-bcce-b302099a8057"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (id_uuid_valid(bad[i]))
			print_message("accepted: %s\n", bad[i] ? bad[i] : "(null)");
		assert_false(id_uuid_valid(bad[i]));
		assert_int_equal(id_uuid_version(bad[i]), -1);
	}
}

static void test_uuid_version(void **state)
{
	assert_int_equal(id_uuid_version("01890a5d-ac96-474b-bcce-b302099a8057"), 4);
	assert_int_equal(id_uuid_version("01890a5d-ac96-174b-bcce-b302099a8057"), 1);
	assert_int_equal(id_uuid_version("01890a5d-ac96-774b-bcce-b302099a8057"), 7);
	assert_int_equal(id_uuid_version("01890a5d-ac96-874b-bcce-b302099a8057"), 8);
	assert_int_equal(id_uuid_version("01890a5d-ac96-074b-bcce-b302099a8057"), 0);
	assert_int_equal(id_uuid_version("01890a5d-ac96-a74b-bcce-b302099a8057"), 10);
	assert_int_equal(id_uuid_version("01890A5D-AC96-F74B-BCCE-B302099A8057"), 15);
	assert_int_equal(id_uuid_version("01890a5d-ac96-f74b-bcce-b302099a8057"), 15);
}

static void test_random_hex(void **state)
{
	char out[2 * 200 + 2];
	/* Sizes below, at and above the internal 64-byte chunk. */
	static const size_t sizes[] = {0, 1, 16, 32, 63, 64, 65, 128, 200};
	for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
		size_t n = sizes[s];
		memset(out, 'Z', sizeof out);
		id_random_hex(out, n);
		assert_int_equal(strlen(out), 2 * n);
		for (size_t i = 0; i < 2 * n; i++)
			assert_non_null(strchr("0123456789abcdef", out[i]));
		assert_int_equal(out[2 * n + 1], 'Z');
	}
	/* Two 16-byte tokens colliding would mean the randomness is broken. */
	char a[33], b[33];
	id_random_hex(a, 16);
	id_random_hex(b, 16);
	assert_string_not_equal(a, b);
	/* Every hex digit shows up in 200 random bytes (p(miss) ~ 16 * (15/16)^400). */
	id_random_hex(out, 200);
	for (const char *d = "0123456789abcdef"; *d; d++)
		assert_non_null(strchr(out, *d));
}

static void test_random_bytes(void **state)
{
	unsigned char a[1024], b[1024];
	memset(a, 0, sizeof a);
	memset(b, 0, sizeof b);
	id_random(a, sizeof a);
	id_random(b, sizeof b);
	assert_memory_not_equal(a, b, sizeof a);
	size_t zeros = 0;
	for (size_t i = 0; i < sizeof a; i++)
		zeros += a[i] == 0;
	assert_true(zeros < 64);
	id_random(a, 0);
}

static void test_request_id_valid(void **state)
{
	static const char *const good[] = {"a",
	                                   "Z",
	                                   "0",
	                                   ".",
	                                   "_",
	                                   ":",
	                                   "-",
	                                   "req-123",
	                                   "01890a5d-ac96-774b-bcce-b302099a8057",
	                                   "trace:span.v1_x",
	                                   "ABCxyz0189._:-"};
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
		assert_true(id_request_id_valid(good[i], strlen(good[i])));

	char max[130];
	memset(max, 'a', sizeof max);
	assert_true(id_request_id_valid(max, 128));
	assert_false(id_request_id_valid(max, 129));
	assert_false(id_request_id_valid(max, 0));
	assert_false(id_request_id_valid("", 0));
	assert_false(id_request_id_valid(NULL, 0));
	assert_false(id_request_id_valid(NULL, 5));

	static const char *const bad[] = {
	        "a b",         " a",    "a ",  "a\r", "a\n", "a\r\nX-Evil: 1", "a\"b", "a'b",
	        "a\tb",        "a/b",   "a;b", "a,b", "a=b", "a\\b",           "<a>",  "a%0d",
	        "caf\xc3\xa9", "a\x7f", "a+b", "a@b"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (id_request_id_valid(bad[i], strlen(bad[i])))
			print_message("accepted: %s\n", bad[i]);
		assert_false(id_request_id_valid(bad[i], strlen(bad[i])));
	}
	/* The length, not a NUL, bounds the check: an embedded NUL is rejected. */
	assert_false(id_request_id_valid("ab\0cd", 5));
	assert_false(id_request_id_valid("abc\0", 4));
	/* And bytes past len are not looked at. */
	assert_true(id_request_id_valid("abc def", 3));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_uuid7_format),        cmocka_unit_test(test_uuid7_now),
	        cmocka_unit_test(test_uuid7_time_ordering), cmocka_unit_test(test_uuid7_unique),
	        cmocka_unit_test(test_uuid7_fast),          cmocka_unit_test(test_uuid_valid),
	        cmocka_unit_test(test_uuid_version),        cmocka_unit_test(test_random_hex),
	        cmocka_unit_test(test_random_bytes),        cmocka_unit_test(test_request_id_valid),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
