/* Unit tests for core/buf: growth and NUL termination, printf on both sides
 * of the 256-byte stack buffer, the JSON string escaper (short escapes,
 * \u00XX, UTF-8 pass-through, every class of invalid UTF-8 becoming U+FFFD)
 * checked by parsing the output back with jansson, and steal/reset/free. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"

/* Deterministic PRNG so a failure reproduces. */
static uint64_t rng_state;

static uint32_t rng_next(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (uint32_t)(rng_state >> 11);
}

/* buf_add_json_str(s, n) as a NUL-terminated heap string. */
static char *json_of(const char *s, size_t n)
{
	struct buf b = BUF_INIT;
	buf_add_json_str(&b, s, n);
	assert_int_equal(strlen(b.data), b.len);
	return buf_steal(&b);
}

static void assert_json_of(const char *s, size_t n, const char *want)
{
	char *got = json_of(s, n);
	if (strcmp(got, want) != 0)
		print_message("input len %zu: got %s want %s\n", n, got, want);
	assert_string_equal(got, want);
	free(got);
}

/* Parses out with jansson; returns the decoded string (borrowed from *root). */
static const char *decode(const char *out, json_t **root, size_t *len)
{
	json_error_t err;
	*root = json_loads(out, JSON_DECODE_ANY, &err);
	if (*root == NULL)
		print_message("jansson rejected %s: %s\n", out, err.text);
	assert_non_null(*root);
	assert_true(json_is_string(*root));
	*len = json_string_length(*root);
	return json_string_value(*root);
}

static void test_grow_and_terminate(void **state)
{
	struct buf b = BUF_INIT;
	buf_add(&b, NULL, 0);
	assert_non_null(b.data);
	assert_int_equal(b.len, 0);
	assert_string_equal(b.data, "");

	/* Grow well past the initial capacity one byte at a time. */
	for (int i = 0; i < 5000; i++) {
		buf_addc(&b, (char)('a' + i % 26));
		assert_int_equal(b.len, (size_t)i + 1);
		assert_true(b.cap > b.len);
		assert_int_equal(b.data[b.len], '\0');
	}
	for (int i = 0; i < 5000; i++)
		assert_int_equal(b.data[i], 'a' + i % 26);

	buf_adds(&b, "xyz");
	assert_int_equal(b.len, 5003);
	assert_memory_equal(b.data + 5000, "xyz", 4);

	/* buf_add copies embedded NULs and still terminates. */
	buf_reset(&b);
	buf_add(&b, "a\0b", 3);
	assert_int_equal(b.len, 3);
	assert_memory_equal(b.data, "a\0b\0", 4);
	buf_free(&b);
}

static void test_reserve(void **state)
{
	struct buf b = BUF_INIT;
	buf_reserve(&b, 1000);
	assert_true(b.cap >= 1001);
	char *before = b.data;
	size_t cap = b.cap;
	/* Filling the reserved space must not reallocate. */
	for (int i = 0; i < 1000; i++)
		buf_addc(&b, 'x');
	assert_ptr_equal(b.data, before);
	assert_int_equal(b.cap, cap);
	assert_int_equal(b.data[1000], '\0');
	buf_reserve(&b, 0);
	assert_ptr_equal(b.data, before);
	buf_free(&b);
}

static void test_printf_short(void **state)
{
	struct buf b = BUF_INIT;
	buf_printf(&b, "%s=%d", "n", 42);
	buf_printf(&b, " %05.1f|%x|%c", 3.14159, 255u, 'Z');
	buf_printf(&b, "%s", "");
	assert_string_equal(b.data, "n=42 003.1|ff|Z");
	assert_int_equal(b.len, strlen("n=42 003.1|ff|Z"));
	buf_free(&b);
}

static void test_printf_long(void **state)
{
	/* Lengths around and far beyond the 256-byte stack buffer. */
	static const size_t lens[] = {254, 255, 256, 257, 300, 1000, 70000};
	for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
		size_t n = lens[k];
		char *s = malloc(n + 1);
		for (size_t i = 0; i < n; i++)
			s[i] = (char)('A' + i % 26);
		s[n] = '\0';

		struct buf b = BUF_INIT;
		buf_adds(&b, "pre:");
		buf_printf(&b, "[%s]", s);
		buf_printf(&b, "%d", 7);
		assert_int_equal(b.len, 4 + n + 2 + 1);
		assert_int_equal(strlen(b.data), b.len);
		assert_memory_equal(b.data, "pre:[", 5);
		assert_memory_equal(b.data + 5, s, n);
		assert_string_equal(b.data + 5 + n, "]7");
		buf_free(&b);
		free(s);
	}
}

static void test_json_escapes(void **state)
{
	assert_json_of("", 0, "\"\"");
	assert_json_of("plain text", 10, "\"plain text\"");
	assert_json_of("a\"b\\c", 5, "\"a\\\"b\\\\c\"");
	assert_json_of("\n\r\t", 3, "\"\\n\\r\\t\"");
	assert_json_of("\x01\x08\x0c\x1b\x1f", 5, "\"\\u0001\\u0008\\u000c\\u001b\\u001f\"");
	assert_json_of("a\0b", 3, "\"a\\u0000b\"");
	/* '/' and DEL need no escape in JSON. */
	assert_json_of("/\x7f", 2, "\"/\x7f\"");
	/* Only n bytes are read, not up to the NUL. */
	assert_json_of("abcdef", 3, "\"abc\"");
}

static void test_json_utf8_valid(void **state)
{
	static const char *const ok[] = {
	        "\xc2\xa9", /* U+00A9 */
	        "\xdf\xbf", /* U+07FF */
	        "\xe0\xa0\x80", /* U+0800 */
	        "\xe2\x82\xac", /* U+20AC euro */
	        "\xed\x9f\xbf", /* U+D7FF, just below the surrogates */
	        "\xee\x80\x80", /* U+E000, just above */
	        "\xef\xbf\xbf", /* U+FFFF */
	        "\xf0\x90\x80\x80", /* U+10000 */
	        "\xf0\x9f\x98\x80", /* U+1F600 */
	        "\xf4\x8f\xbf\xbf", /* U+10FFFF */
	        "h\xc3\xa9llo w\xc3\xb6rld", /* mixed */
	};
	for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
		size_t n = strlen(ok[i]);
		char *out = json_of(ok[i], n);
		assert_int_equal(strlen(out), n + 2);
		assert_memory_equal(out + 1, ok[i], n);
		json_t *root;
		size_t len;
		const char *v = decode(out, &root, &len);
		assert_int_equal(len, n);
		assert_memory_equal(v, ok[i], n);
		json_decref(root);
		free(out);
	}
}

static void test_json_utf8_invalid(void **state)
{
	static const struct {
		const char *in;
		size_t n;
		const char *want;
	} cases[] = {
	        {"\x80", 1, "\"\\ufffd\""}, /* lone continuation */
	        {"a\277b", 3, "\"a\\ufffdb\""}, /* lone continuation */
	        {"\xc0\x80", 2, "\"\\ufffd\\ufffd\""}, /* overlong NUL */
	        {"\xc1\xbf", 2, "\"\\ufffd\\ufffd\""}, /* overlong */
	        {"\xe0\x80\xaf", 3, "\"\\ufffd\\ufffd\\ufffd\""}, /* overlong 3-byte */
	        {"\xf0\x80\x80\xaf", 4, "\"\\ufffd\\ufffd\\ufffd\\ufffd\""}, /* overlong 4-byte */
	        {"\xed\xa0\x80", 3, "\"\\ufffd\\ufffd\\ufffd\""}, /* U+D800 surrogate */
	        {"\xed\xbf\xbf", 3, "\"\\ufffd\\ufffd\\ufffd\""}, /* U+DFFF surrogate */
	        {"\xf4\x90\x80\x80", 4, "\"\\ufffd\\ufffd\\ufffd\\ufffd\""}, /* U+110000 */
	        {"\xf5\x80\x80\x80", 4, "\"\\ufffd\\ufffd\\ufffd\\ufffd\""}, /* F5 lead */
	        {"\xff", 1, "\"\\ufffd\""},
	        {"\xfe", 1, "\"\\ufffd\""},
	        {"x\xe2\x82", 3, "\"x\\ufffd\\ufffd\""}, /* truncated at end */
	        {"\xf0\x9f\x98", 3, "\"\\ufffd\\ufffd\\ufffd\""}, /* truncated 4-byte */
	        {"\xc3", 1, "\"\\ufffd\""}, /* truncated 2-byte */
	        {"\303A", 2, "\"\\ufffdA\""}, /* bad continuation */
	        {"\xe2\x82\x22", 3, "\"\\ufffd\\ufffd\\\"\""}, /* quote after junk */
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		assert_json_of(cases[i].in, cases[i].n, cases[i].want);
		char *out = json_of(cases[i].in, cases[i].n);
		json_t *root;
		size_t len;
		decode(out, &root, &len);
		json_decref(root);
		free(out);
	}
	/* A sequence cut by n must not be read past n. */
	assert_json_of("\xe2\x82\xac", 2, "\"\\ufffd\\ufffd\"");
}

/* Random byte strings, biased toward the interesting bytes, must always
 * encode to a JSON string that decodes to the same bytes wherever the input
 * was valid UTF-8 with no NUL. */
static void test_json_random_roundtrip(void **state)
{
	static const unsigned char special[] = {0x00, 0x01, 0x0a, 0x0d, 0x09, 0x1f, '"',
	                                        '\\', 0x7f, 0x80, 0xbf, 0xc0, 0xc2, 0xdf,
	                                        0xe0, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xff};
	rng_state = 0x9e3779b97f4a7c15ull;
	unsigned char in[64];
	for (int iter = 0; iter < 20000; iter++) {
		size_t n = rng_next() % sizeof in;
		for (size_t i = 0; i < n; i++) {
			uint32_t r = rng_next();
			in[i] = (r & 3) == 0 ? special[(r >> 2) % sizeof special]
			                     : (unsigned char)(r >> 8);
		}
		struct buf b = BUF_INIT;
		buf_adds(&b, "junk before:");
		size_t start = b.len;
		buf_add_json_str(&b, (const char *)in, n);
		json_error_t err;
		json_t *root = json_loads(b.data + start, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
		if (root == NULL) {
			print_message("iter %d: jansson rejected %s: %s\n", iter, b.data + start,
			              err.text);
			fail();
		}
		assert_true(json_is_string(root));
		/* Valid input (per jansson's own UTF-8 check) must round-trip exactly. */
		json_t *direct = json_stringn((const char *)in, n);
		if (direct != NULL) {
			assert_int_equal(json_string_length(root), n);
			assert_memory_equal(json_string_value(root), in, n);
			json_decref(direct);
		} else {
			assert_non_null(strstr(b.data + start, "\\ufffd"));
		}
		json_decref(root);
		buf_free(&b);
	}
}

static void test_steal_reset_free(void **state)
{
	struct buf b = BUF_INIT;

	/* Stealing an untouched buffer still yields an owned empty string. */
	char *s = buf_steal(&b);
	assert_non_null(s);
	assert_string_equal(s, "");
	free(s);

	buf_adds(&b, "hello");
	s = buf_steal(&b);
	assert_string_equal(s, "hello");
	assert_null(b.data);
	assert_int_equal(b.len, 0);
	assert_int_equal(b.cap, 0);
	/* b is usable again after a steal, and s is independent of it. */
	buf_adds(&b, "again");
	assert_string_equal(b.data, "again");
	assert_string_equal(s, "hello");
	free(s);

	/* Reset keeps the allocation and empties the string. */
	char *mem = b.data;
	size_t cap = b.cap;
	buf_reset(&b);
	assert_int_equal(b.len, 0);
	assert_ptr_equal(b.data, mem);
	assert_int_equal(b.cap, cap);
	assert_string_equal(b.data, "");
	buf_adds(&b, "x");
	assert_string_equal(b.data, "x");

	buf_free(&b);
	assert_null(b.data);
	assert_int_equal(b.len, 0);
	assert_int_equal(b.cap, 0);
	/* Freeing twice, and resetting a freed buffer, are harmless. */
	buf_free(&b);
	buf_reset(&b);
	assert_int_equal(b.len, 0);
}

static void test_utf8_clean(void **state)
{
	(void)state;
	struct buf b = BUF_INIT;
	/* valid text (ASCII, 2-, 3-, 4-byte sequences, tab) passes as is */
	const char ok[] = "a\tb \xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 z";
	buf_add_utf8_clean(&b, ok, sizeof ok - 1);
	assert_int_equal(b.len, sizeof ok - 1);
	assert_memory_equal(b.data, ok, sizeof ok - 1);
	buf_reset(&b);
	/* NUL, controls, DEL, a lone continuation, an overlong, a surrogate, a
	 * truncated sequence: each bad byte becomes U+FFFD */
	const char bad[] = "x\0y\x01\x7f\x80\xc0\xaf\xed\xa0\x80\xe2\x82";
	buf_add_utf8_clean(&b, bad, sizeof bad - 1);
	const char *want = "x\xef\xbf\xbdy\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
	                   "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
	                   "\xef\xbf\xbd\xef\xbf\xbd";
	assert_int_equal(b.len, strlen(want));
	assert_memory_equal(b.data, want, b.len);
	/* the output is always valid UTF-8 without NUL */
	for (size_t i = 0; i < b.len;) {
		size_t n = buf_utf8_seq_len((const unsigned char *)b.data + i, b.len - i);
		assert_true(n > 0);
		assert_true(b.data[i] != 0);
		i += n;
	}
	buf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_utf8_clean),
	        cmocka_unit_test(test_grow_and_terminate),
	        cmocka_unit_test(test_reserve),
	        cmocka_unit_test(test_printf_short),
	        cmocka_unit_test(test_printf_long),
	        cmocka_unit_test(test_json_escapes),
	        cmocka_unit_test(test_json_utf8_valid),
	        cmocka_unit_test(test_json_utf8_invalid),
	        cmocka_unit_test(test_json_random_roundtrip),
	        cmocka_unit_test(test_steal_reset_free),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
