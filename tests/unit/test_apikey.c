/* Unit tests for core/apikey: CRC-32 against the zlib vectors, base62 round
 * trips and limits, generate -> parse round trips, every malformed shape
 * (length, tag, separator, charset, any single changed byte), the secret's
 * SHA-256 and its constant-time comparison, and scope parsing/formatting.
 * Reference values were computed with Python's zlib and hashlib. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/apikey.h"

/* A fixed, valid key: its check is base62(crc32(first 44 bytes)). */
static const char known_key[] = "sl_AbCd1234_0123456789abcdefghijklmnopqrstuv1uo2AO";

static void test_crc32_vectors(void **state)
{
	assert_int_equal(apikey_crc32(0, "123456789", 9), 0xCBF43926u);
	assert_int_equal(apikey_crc32(0, "", 0), 0u);
	assert_int_equal(apikey_crc32(0, "a", 1), 0xE8B7BE43u);
	assert_int_equal(apikey_crc32(0, "abc", 3), 0x352441C2u);
	const char *fox = "The quick brown fox jumps over the lazy dog";
	assert_int_equal(apikey_crc32(0, fox, strlen(fox)), 0x414FA339u);
	/* continuing over a second piece equals one pass over both */
	assert_int_equal(apikey_crc32(apikey_crc32(0, "1234", 4), "56789", 5), 0xCBF43926u);
}

static void test_base62_encode(void **state)
{
	char out[16];
	assert_true(apikey_base62_encode(0, out, 6));
	assert_string_equal(out, "000000");
	assert_true(apikey_base62_encode(61, out, 6));
	assert_string_equal(out, "00000z");
	assert_true(apikey_base62_encode(62, out, 6));
	assert_string_equal(out, "000010");
	assert_true(apikey_base62_encode(0xFFFFFFFFu, out, 6));
	assert_string_equal(out, "4gfFC3");
	assert_true(apikey_base62_encode(0xCBF43926u, out, 6));
	assert_string_equal(out, "3jZRME");
	assert_true(apikey_base62_encode(UINT64_MAX, out, 11));
	assert_string_equal(out, "LygHa16AHYF");
	/* too wide for the width: false and out untouched */
	strcpy(out, "keep");
	assert_false(apikey_base62_encode(62ull * 62 * 62 * 62 * 62 * 62, out, 6));
	assert_false(apikey_base62_encode(1, out, 0));
	assert_string_equal(out, "keep");
	assert_true(apikey_base62_encode(0, out, 0));
	assert_string_equal(out, "");
}

static void test_base62_decode(void **state)
{
	uint64_t v = 1;
	assert_true(apikey_base62_decode("000000", 6, &v));
	assert_int_equal(v, 0);
	assert_true(apikey_base62_decode("4gfFC3", 6, &v));
	assert_int_equal(v, 0xFFFFFFFFu);
	assert_true(apikey_base62_decode("LygHa16AHYF", 11, &v));
	assert_true(v == UINT64_MAX);
	assert_false(apikey_base62_decode("LygHa16AHYG", 11, &v)); /* UINT64_MAX + 1 */
	assert_false(apikey_base62_decode("zzzzzzzzzzz", 11, &v));
	assert_false(apikey_base62_decode("", 0, &v));
	assert_false(apikey_base62_decode("12-4", 4, &v));
	assert_false(apikey_base62_decode("12_4", 4, &v));
	assert_false(apikey_base62_decode("12\0"
	                                  "4",
	                                  4, &v));
}

static void test_base62_round_trip(void **state)
{
	uint64_t x = 0x9E3779B97F4A7C15ull;
	char out[16];
	for (int i = 0; i < 10000; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		uint32_t v32 = (uint32_t)x;
		uint64_t back = 0;
		assert_true(apikey_base62_encode(v32, out, 6));
		assert_int_equal(strlen(out), 6);
		assert_true(apikey_base62_decode(out, 6, &back));
		assert_true(back == v32);
		assert_true(apikey_base62_encode(x, out, 11));
		assert_true(apikey_base62_decode(out, 11, &back));
		assert_true(back == x);
	}
	for (int c = 0; c < 256; c++) {
		bool want =
		        (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
		assert_int_equal(apikey_is_base62((char)c), want);
	}
}

static void test_checksum_known_key(void **state)
{
	char check[APIKEY_CHECK_LEN + 1];
	apikey_checksum(known_key, 44, check);
	assert_string_equal(check, "1uo2AO");
	struct apikey k;
	assert_int_equal(apikey_parse(known_key, strlen(known_key), &k), APIKEY_OK);
	assert_string_equal(k.prefix, "AbCd1234");
	assert_string_equal(k.secret, "0123456789abcdefghijklmnopqrstuv");
	assert_string_equal(k.text, known_key);
}

static void test_generate_parse_round_trip(void **state)
{
	enum { N = 1000 };
	char(*prefixes)[APIKEY_PREFIX_LEN + 1] = calloc(N, sizeof *prefixes);
	unsigned char seen[256] = {0};
	for (int i = 0; i < N; i++) {
		struct apikey k, p;
		apikey_generate(&k);
		assert_int_equal(strlen(k.text), APIKEY_LEN);
		assert_int_equal(strlen(k.prefix), APIKEY_PREFIX_LEN);
		assert_int_equal(strlen(k.secret), APIKEY_SECRET_LEN);
		assert_memory_equal(k.text, "sl_", 3);
		assert_int_equal(k.text[11], '_');
		assert_memory_equal(k.text + 3, k.prefix, APIKEY_PREFIX_LEN);
		assert_memory_equal(k.text + 12, k.secret, APIKEY_SECRET_LEN);
		memset(&p, 0x55, sizeof p);
		assert_int_equal(apikey_parse(k.text, APIKEY_LEN, &p), APIKEY_OK);
		assert_string_equal(p.prefix, k.prefix);
		assert_string_equal(p.secret, k.secret);
		assert_string_equal(p.text, k.text);
		for (int j = 3; j < APIKEY_LEN; j++)
			seen[(unsigned char)k.text[j]] = 1;
		memcpy(prefixes[i], k.prefix, sizeof prefixes[i]);
	}
	/* 1000 keys are 38,000 random characters: every base62 digit shows up,
	 * nothing else does (bar the separator) */
	for (int c = 0; c < 256; c++)
		assert_int_equal(seen[c], apikey_is_base62((char)c) || c == '_');
	/* 47.6 bits per prefix: a repeat among 1000 would mean a broken RNG */
	for (int i = 0; i < N; i++)
		for (int j = i + 1; j < N; j++)
			assert_true(strcmp(prefixes[i], prefixes[j]) != 0);
	free(prefixes);
}

static enum apikey_result parse_str(const char *s)
{
	struct apikey k;
	return apikey_parse(s, strlen(s), &k);
}

static void test_parse_malformed_shapes(void **state)
{
	char buf[128];
	struct apikey k;
	/* length: one short, one long, empty, NULL */
	assert_int_equal(apikey_parse(known_key, APIKEY_LEN - 1, &k), APIKEY_MALFORMED);
	snprintf(buf, sizeof buf, "%sA", known_key);
	assert_int_equal(parse_str(buf), APIKEY_MALFORMED);
	snprintf(buf, sizeof buf, "%s ", known_key);
	assert_int_equal(parse_str(buf), APIKEY_MALFORMED);
	snprintf(buf, sizeof buf, " %s", known_key);
	assert_int_equal(parse_str(buf), APIKEY_MALFORMED);
	assert_int_equal(parse_str(""), APIKEY_MALFORMED);
	assert_int_equal(apikey_parse(NULL, 0, &k), APIKEY_MALFORMED);
	/* the length check uses len, not the NUL: a key with a NUL appended */
	memcpy(buf, known_key, APIKEY_LEN + 1);
	assert_int_equal(apikey_parse(buf, APIKEY_LEN + 1, &k), APIKEY_MALFORMED);
	/* the tag */
	static const char *const tags[] = {"SL_", "Sl_", "sL_", "sl-", "sl.", "ls_", "s1_"};
	for (size_t i = 0; i < sizeof tags / sizeof tags[0]; i++) {
		strcpy(buf, known_key);
		memcpy(buf, tags[i], 3);
		assert_int_equal(parse_str(buf), APIKEY_MALFORMED);
	}
	/* the separator after the prefix */
	static const char seps[] = {'-', '.', ':', ' ', 'A', '0'};
	for (size_t i = 0; i < sizeof seps; i++) {
		strcpy(buf, known_key);
		buf[11] = seps[i];
		enum apikey_result r = parse_str(buf);
		/* a base62 character there shifts the shape: never OK */
		assert_int_equal(r, APIKEY_MALFORMED);
	}
	/* a missing separator, shifted one: 50 chars but the '_' is at 10 */
	snprintf(buf, sizeof buf, "sl_AbCd123_0123456789abcdefghijklmnopqrstuvw1uo2AO");
	assert_int_equal(strlen(buf), APIKEY_LEN);
	assert_int_equal(parse_str(buf), APIKEY_MALFORMED);
	/* the checksum's separator-less tail with a '_' (the redactor's shape) */
	strcpy(buf, known_key);
	buf[44] = '_';
	assert_int_equal(parse_str(buf), APIKEY_MALFORMED);
	/* a Bearer prefix left on */
	snprintf(buf, sizeof buf, "Bearer %s", known_key);
	assert_int_equal(parse_str(buf), APIKEY_MALFORMED);
}

static void test_parse_non_base62_everywhere(void **state)
{
	static const unsigned char bad[] = {'-',  '_', '+', '/',  '=',  ' ',  '\t',
	                                    '\0', '.', '%', 0x7f, 0x80, 0xc3, 0xff};
	for (size_t pos = 3; pos < APIKEY_LEN; pos++) {
		if (pos == 11)
			continue;
		for (size_t i = 0; i < sizeof bad; i++) {
			char buf[APIKEY_LEN + 1];
			memcpy(buf, known_key, sizeof buf);
			buf[pos] = (char)bad[i];
			struct apikey k;
			assert_int_equal(apikey_parse(buf, APIKEY_LEN, &k), APIKEY_MALFORMED);
		}
	}
}

/* Any single changed byte, anywhere, to any of the 255 other values: never
 * OK. A base62 replacement inside the body or the check is caught by the
 * CRC (CRC-32 catches every burst up to 32 bits) or by the canonical check;
 * everything else is MALFORMED. */
static void test_parse_single_change_never_ok(void **state)
{
	struct apikey gen;
	const char *keys[2] = {known_key, NULL};
	apikey_generate(&gen);
	keys[1] = gen.text;
	for (int n = 0; n < 2; n++) {
		for (size_t pos = 0; pos < APIKEY_LEN; pos++) {
			for (int c = 0; c < 256; c++) {
				char buf[APIKEY_LEN + 1];
				memcpy(buf, keys[n], sizeof buf);
				if ((unsigned char)buf[pos] == c)
					continue;
				buf[pos] = (char)c;
				struct apikey k;
				enum apikey_result r = apikey_parse(buf, APIKEY_LEN, &k);
				assert_int_not_equal(r, APIKEY_OK);
				if (pos >= 3 && pos != 11 && apikey_is_base62((char)c))
					assert_int_equal(r, APIKEY_BAD_CHECKSUM);
				else
					assert_int_equal(r, APIKEY_MALFORMED);
			}
		}
	}
	/* two swapped neighbours are caught too (a common typo) */
	for (size_t pos = 12; pos + 1 < APIKEY_LEN - APIKEY_CHECK_LEN; pos++) {
		char buf[APIKEY_LEN + 1];
		memcpy(buf, known_key, sizeof buf);
		if (buf[pos] == buf[pos + 1])
			continue;
		char t = buf[pos];
		buf[pos] = buf[pos + 1];
		buf[pos + 1] = t;
		assert_int_equal(parse_str(buf), APIKEY_BAD_CHECKSUM);
	}
	assert_string_equal(apikey_result_name(APIKEY_OK), "ok");
	assert_string_equal(apikey_result_name(APIKEY_MALFORMED), "malformed");
	assert_string_equal(apikey_result_name(APIKEY_BAD_CHECKSUM), "bad_checksum");
}

static void test_hash_secret(void **state)
{
	static const uint8_t want[APIKEY_HASH_LEN] = {
	        0x73, 0x33, 0x7f, 0x47, 0x9f, 0xe1, 0x70, 0xd7, 0x3e, 0x53, 0xe2,
	        0x47, 0xf3, 0x05, 0x2e, 0x42, 0x43, 0xcc, 0x9c, 0x2a, 0x0f, 0xfa,
	        0x62, 0x18, 0x53, 0xd9, 0x38, 0x5c, 0x61, 0x9e, 0xfb, 0x77};
	uint8_t h[APIKEY_HASH_LEN];
	/* only the 32 secret characters count, not what follows them */
	assert_true(apikey_hash_secret("0123456789abcdefghijklmnopqrstuv1uo2AO", h));
	assert_memory_equal(h, want, sizeof want);

	struct apikey k;
	assert_int_equal(apikey_parse(known_key, APIKEY_LEN, &k), APIKEY_OK);
	uint8_t h2[APIKEY_HASH_LEN];
	assert_true(apikey_hash_secret(k.secret, h2));
	assert_true(apikey_hash_equal(h, h2));
	assert_true(apikey_hash_equal(want, h2));
	for (size_t i = 0; i < APIKEY_HASH_LEN; i++) {
		for (int bit = 0; bit < 8; bit++) {
			uint8_t x[APIKEY_HASH_LEN];
			memcpy(x, h, sizeof x);
			x[i] ^= (uint8_t)(1u << bit);
			assert_false(apikey_hash_equal(h, x));
			assert_false(apikey_hash_equal(x, h));
		}
	}
	struct apikey other;
	apikey_generate(&other);
	assert_true(apikey_hash_secret(other.secret, h2));
	assert_false(apikey_hash_equal(h, h2));
}

static void test_scopes_parse(void **state)
{
	unsigned m = 99;
	char bad[32];
	assert_true(apikey_scopes_parse("jobs:read", &m, bad, sizeof bad));
	assert_int_equal(m, APIKEY_SCOPE_JOBS_READ);
	assert_true(apikey_scopes_parse("jobs:read,jobs:write,admin", &m, bad, sizeof bad));
	assert_int_equal(m, APIKEY_SCOPE_ALL);
	assert_true(apikey_scopes_parse(" jobs:read ,\tadmin ", &m, bad, sizeof bad));
	assert_int_equal(m, APIKEY_SCOPE_JOBS_READ | APIKEY_SCOPE_ADMIN);
	assert_true(apikey_scopes_parse("jobs:write,jobs:write", &m, NULL, 0));
	assert_int_equal(m, APIKEY_SCOPE_JOBS_WRITE);

	static const struct {
		const char *in, *bad;
	} fails[] = {
	        {"", ""},
	        {"jobs:delete", "jobs:delete"},
	        {"jobs:read,jobs:delete", "jobs:delete"},
	        {"JOBS:READ", "JOBS:READ"},
	        {"jobs:read,", ""},
	        {",jobs:read", ""},
	        {"jobs:read,,admin", ""},
	        {"jobs", "jobs"},
	        {"jobs:read;admin", "jobs:read;admin"},
	        {"admin ,  nope ", "nope"},
	};
	for (size_t i = 0; i < sizeof fails / sizeof fails[0]; i++) {
		m = 77;
		strcpy(bad, "x");
		assert_false(apikey_scopes_parse(fails[i].in, &m, bad, sizeof bad));
		assert_string_equal(bad, fails[i].bad);
		assert_int_equal(m, 77); /* untouched on failure */
	}
	/* the offending name is cut to fit */
	char tiny[5];
	assert_false(apikey_scopes_parse("jobs:deletion", &m, tiny, sizeof tiny));
	assert_string_equal(tiny, "jobs");

	assert_int_equal(apikey_scope_from_name("admin", 5), APIKEY_SCOPE_ADMIN);
	assert_int_equal(apikey_scope_from_name("adminx", 5), APIKEY_SCOPE_ADMIN);
	assert_int_equal(apikey_scope_from_name("admin", 4), 0);
	assert_string_equal(apikey_scope_name(APIKEY_SCOPE_JOBS_WRITE), "jobs:write");
	assert_null(apikey_scope_name(APIKEY_SCOPE_JOBS_READ | APIKEY_SCOPE_ADMIN));
	assert_null(apikey_scope_name(0));
}

static void test_scopes_format(void **state)
{
	char out[APIKEY_SCOPES_MAX_TEXT];
	assert_int_equal(apikey_scopes_format(APIKEY_SCOPE_ALL, out, sizeof out), 26);
	assert_string_equal(out, "jobs:read,jobs:write,admin");
	assert_int_equal(apikey_scopes_format(0, out, sizeof out), 0);
	assert_string_equal(out, "");
	apikey_scopes_format(APIKEY_SCOPE_ADMIN | APIKEY_SCOPE_JOBS_READ, out, sizeof out);
	assert_string_equal(out, "jobs:read,admin");
	apikey_scopes_format(0x100u | APIKEY_SCOPE_JOBS_WRITE, out, sizeof out);
	assert_string_equal(out, "jobs:write");
	/* every mask round-trips */
	for (unsigned mask = 1; mask <= APIKEY_SCOPE_ALL; mask++) {
		unsigned back = 0;
		apikey_scopes_format(mask, out, sizeof out);
		assert_true(apikey_scopes_parse(out, &back, NULL, 0));
		assert_int_equal(back, mask);
	}
	/* a short buffer keeps whole names only */
	char small[16];
	apikey_scopes_format(APIKEY_SCOPE_ALL, small, sizeof small);
	assert_string_equal(small, "jobs:read");
	char one[1];
	assert_int_equal(apikey_scopes_format(APIKEY_SCOPE_ALL, one, sizeof one), 0);
	assert_string_equal(one, "");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_crc32_vectors),
	        cmocka_unit_test(test_base62_encode),
	        cmocka_unit_test(test_base62_decode),
	        cmocka_unit_test(test_base62_round_trip),
	        cmocka_unit_test(test_checksum_known_key),
	        cmocka_unit_test(test_generate_parse_round_trip),
	        cmocka_unit_test(test_parse_malformed_shapes),
	        cmocka_unit_test(test_parse_non_base62_everywhere),
	        cmocka_unit_test(test_parse_single_change_never_ok),
	        cmocka_unit_test(test_hash_secret),
	        cmocka_unit_test(test_scopes_parse),
	        cmocka_unit_test(test_scopes_format),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
