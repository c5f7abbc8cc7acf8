/* Unit tests for core/scrub: e-mail addresses and phone numbers masked in
 * text (true positives in many national and international shapes, and the
 * look-alikes logs are full of — timestamps, durations, UUIDs, hashes,
 * versions, IP addresses, ranges, byte counts — which must come back byte
 * for byte), UTF-8 around matches, long and adversarial inputs, configured
 * field names in JSON at any depth, and the list parsers the config uses. */
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
#include "core/scrub.h"
#include "core/xmalloc.h"

static struct scrub *sc_both;

static int setup(void **state)
{
	sc_both = scrub_new("email, phone_number,Address", "email,phone");
	return 0;
}

static int teardown(void **state)
{
	scrub_free(sc_both);
	return 0;
}

static char *scrubbed(const struct scrub *sc, const char *s, bool *masked)
{
	struct buf b = BUF_INIT;
	bool m = scrub_text(sc, &b, s, strlen(s));
	if (masked)
		*masked = m;
	if (b.data == NULL)
		buf_adds(&b, "");
	return buf_steal(&b);
}

static void assert_scrubs_to(const char *s, const char *want)
{
	bool masked;
	char *got = scrubbed(sc_both, s, &masked);
	bool same = strcmp(got, want) == 0;
	if (!same)
		print_message("in:   %s\ngot:  %s\nwant: %s\n", s, got, want);
	free(got);
	assert_true(same);
	assert_true(masked);
}

static void assert_untouched(const char *s)
{
	bool masked;
	char *got = scrubbed(sc_both, s, &masked);
	bool same = strcmp(got, s) == 0;
	if (!same || masked)
		print_message("false positive:\nin:   %s\ngot:  %s\n", s, got);
	free(got);
	assert_true(same);
	assert_false(masked);
}

static bool valid_utf8(const char *s)
{
	size_t n = strlen(s);
	for (size_t i = 0; i < n;) {
		if ((unsigned char)s[i] < 0x80) {
			i++;
			continue;
		}
		size_t k = buf_utf8_seq_len((const unsigned char *)s + i, n - i);
		if (k == 0)
			return false;
		i += k;
	}
	return true;
}

static void test_emails(void **state)
{
	static const char *const cases[][2] = {
	        {"bob@example.com", "[email]"},
	        {"mail bob@example.com now", "mail [email] now"},
	        {"Bob.Smith+tag@mail.example.co.uk", "[email]"},
	        {"first_last-99%x@sub-domain.example.org.", "[email]."},
	        {"<alice@example.io>", "<[email]>"},
	        {"\"alice@example.io\",\"bob@example.io\"", "\"[email]\",\"[email]\""},
	        {"mailto:carol@example.net", "mailto:[email]"},
	        {"to=carol@example.net&x=1", "to=[email]&x=1"},
	        {"(dave@example.com)", "([email])"},
	        {"a@b.cd", "[email]"},
	        {"user@xn--bcher-kva.example", "[email]"},
	        {"user@пример.xn--p1ai", "[email]"},
	        {"5551234567@example.com", "[email]"},
	        {"bob@163.com", "[email]"},
	        {"...bob@example.com", "...[email]"},
	        {"x: bob@example.com: failed", "x: [email]: failed"},
	        {"bob@example.com.123", "[email].123"},
	        {"two: a@x.org b@y.org", "two: [email] [email]"},
	        {"UPPER@EXAMPLE.COM", "[email]"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		assert_scrubs_to(cases[i][0], cases[i][1]);
}

static void test_emails_utf8(void **state)
{
	assert_scrubs_to("josé@exämple.com", "[email]");
	assert_scrubs_to("用户@例子.广告", "[email]");
	assert_scrubs_to("courriel : émile@example.fr, merci", "courriel : [email], merci");
	assert_scrubs_to("«bob@example.com»", "«[email]»");
	assert_scrubs_to("邮件：bob@example.com。谢谢", "邮件：[email]。谢谢");
	assert_scrubs_to("→bob@example.com←", "→[email]←");
	assert_scrubs_to("😀bob@example.com😀", "😀[email]😀");
	/* invalid UTF-8 next to an address: the bad byte is not eaten */
	assert_scrubs_to("\xff"
	                 "bob@example.com\xfe",
	                 "\xff[email]\xfe");
}

static void test_email_false_positives(void **state)
{
	static const char *const cases[] = {
	        "postgres@localhost", "root@server1", "echo@1.0.0", "wordcount@1.2.3",
	        "python@3.11",        "@scope/pkg",   "user@",      "@example.com",
	        "a @ b.com",          "git@10.0.0.1", "x@y.c",      "x@-bad.com",
	        "name@host.a1",       "stage@2",
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		assert_untouched(cases[i]);
}

static void test_phones(void **state)
{
	static const char *const cases[][2] = {
	        /* international */
	        {"+1 555 123 4567", "[phone]"},
	        {"+1-555-123-4567", "[phone]"},
	        {"+1 (555) 123-4567", "[phone]"},
	        {"+44 20 7946 0958", "[phone]"},
	        {"+44 (0)20 7946 0958", "[phone]"},
	        {"+44(0)20 7946 0958", "[phone]"},
	        {"+49 30 1234567", "[phone]"},
	        {"+49-30-1234567", "[phone]"},
	        {"+33 1 23 45 67 89", "[phone]"},
	        {"+33.1.23.45.67.89", "[phone]"},
	        {"+8613812345678", "[phone]"},
	        {"+86 138 1234 5678", "[phone]"},
	        {"+7 (495) 123-45-67", "[phone]"},
	        {"+358 40 1234567", "[phone]"},
	        {"tel:+15551234567", "tel:[phone]"},
	        /* national */
	        {"(555) 123-4567", "[phone]"},
	        {"(555)123-4567", "[phone]"},
	        {"555-123-4567", "[phone]"},
	        {"555.123.4567", "[phone]"},
	        {"555 123 4567", "[phone]"},
	        {"1-800-555-0199", "[phone]"},
	        {"020 7946 0958", "[phone]"},
	        {"07700 900123", "[phone]"},
	        {"030 1234567", "[phone]"},
	        {"030-1234567", "[phone]"},
	        {"0171 1234567", "[phone]"},
	        {"06 12 34 56 78", "[phone]"},
	        {"06.12.34.56.78", "[phone]"},
	        {"0612345678", "[phone]"},
	        {"(030) 1234567", "[phone]"},
	        /* in context */
	        {"call 555-123-4567.", "call [phone]."},
	        {"call 555-123-4567, then", "call [phone], then"},
	        {"phone=+44 20 7946 0958;", "phone=[phone];"},
	        {"Phone: (555) 123-4567 ext 9", "Phone: [phone] ext 9"},
	        {"[+1 555 123 4567]", "[[phone]]"},
	        {"\"+49 30 1234567\"", "\"[phone]\""},
	        {"call +1 555 123 4567 2 times", "call [phone] 2 times"},
	        {"a 555-123-4567 b 020 7946 0958 c", "a [phone] b [phone] c"},
	        {"téléphone : +33 6 12 34 56 78 été", "téléphone : [phone] été"},
	        {"电话：+86 138 1234 5678。", "电话：[phone]。"},
	        {"12 030 1234567", "12 [phone]"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		assert_scrubs_to(cases[i][0], cases[i][1]);
}

static void test_phone_false_positives(void **state)
{
	static const char *const cases[] = {
	        /* timestamps and dates */
	        "2026-11-26 01:07:20.870",
	        "[2026-11-26 01:07:20.870] [transcribe] [INFO] Stage transcribe: STARTING",
	        "2026-11-26T01:07:20.870123Z",
	        "2026-11-26",
	        "26.11.2026",
	        "2026.11.26",
	        "11/26/2026 01:07",
	        "2026-11-26 12345 rows",
	        "rows 12 2026-11-26",
	        "20261126-010720",
	        "01:07:20",
	        "T+01:00",
	        "+0100",
	        "+05:30",
	        /* durations and numbers */
	        "Stage a: COMPLETED (4.2s)",
	        "took 1234567ms",
	        "3.14159265",
	        "12.345678",
	        "1,234,567",
	        "1.234.567,89",
	        "12.345.678",
	        "12 345 678",
	        "size 16777216 bytes",
	        "ts 1764118040870",
	        "epoch 1764118040",
	        "bytes=0-1023",
	        "range 1000-2000",
	        "ports 8000-9000",
	        "frames 1024 2048 4096",
	        "1920 1080 3000",
	        "100%",
	        "progress 1234567/9999999",
	        "+1234567 -890",
	        "+12345678",
	        "-5551234567",
	        /* identifiers */
	        "0190f3a2-7c1e-7b3d-9a4e-1f2e3d4c5b6a",
	        "12345678-1234-1234-1234-123456789012",
	        "550e8400-e29b-41d4-a716-446655440000",
	        "d41d8cd98f00b204e9800998ecf8427e",
	        "1234567deadbeef",
	        "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
	        "job_1234567890",
	        "v1.2.3",
	        "1.2.3",
	        "10.15.7",
	        "10.0.19045.2965",
	        "2.31.0",
	        "192.168.100.200",
	        "192.168.1.10:8080",
	        "10.0.0.1",
	        "fe80::1234:5678",
	        "[::1]:5432",
	        "978-3-16-148410-0",
	        "0000012345",
	        "pid 12345",
	        "1234567",
	        "12345678901",
	        "#5551234567",
	        "x5551234567",
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		assert_untouched(cases[i]);
}

static void test_patterns_selected(void **state)
{
	struct scrub *e = scrub_new("", "email");
	struct scrub *p = scrub_new("", " phone ");
	struct scrub *none = scrub_new("email", "");
	const char *s = "bob@example.com 555-123-4567";
	char *a = scrubbed(e, s, NULL);
	char *b = scrubbed(p, s, NULL);
	bool m;
	char *c = scrubbed(none, s, &m);
	char *d = scrubbed(NULL, s, NULL);
	assert_string_equal(a, "[email] 555-123-4567");
	assert_string_equal(b, "bob@example.com [phone]");
	assert_string_equal(c, s);
	assert_false(m);
	assert_string_equal(d, s);
	free(a);
	free(b);
	free(c);
	free(d);
	assert_null(scrub_dup(NULL, s));
	assert_null(scrub_dup(e, "nothing here"));
	char *x = scrub_dup(e, s);
	assert_string_equal(x, "[email] 555-123-4567");
	free(x);
	scrub_free(e);
	scrub_free(p);
	scrub_free(none);
	scrub_free(NULL);
}

/* Random text with planted addresses and numbers: none survives, the text
 * between them does, and the output stays valid UTF-8. */
static void test_random_text(void **state)
{
	static const char *const plants[] = {
	        "bob@example.com", "+44 20 7946 0958", "(555) 123-4567",  "josé@exämple.com",
	        "06 12 34 56 78",  "555.123.4567",     "a.b+c@x.example",
	};
	static const char *const fillers[] = {
	        " ",          " é ", " 2026-11-26 01:07:20.870 ",
	        " (4.2s) ",   " → ", " v1.2.3 ",
	        " 10.0.0.1 ", "\t",  " 用户 ",
	        ", ",
	};
	uint64_t st = 0x9e3779b97f4a7c15ull;
	for (int round = 0; round < 2000; round++) {
		struct buf in = BUF_INIT;
		const char *planted[8];
		int n = 0;
		for (int k = 0; k < 8; k++) {
			st ^= st << 13;
			st ^= st >> 7;
			st ^= st << 17;
			buf_adds(&in, fillers[st % (sizeof fillers / sizeof fillers[0])]);
			if ((st >> 20) % 2) {
				const char *p =
				        plants[(st >> 8) % (sizeof plants / sizeof plants[0])];
				buf_adds(&in, p);
				planted[n++] = p;
			}
		}
		buf_adds(&in, " end");
		char *out = scrubbed(sc_both, in.data, NULL);
		for (int k = 0; k < n; k++) {
			if (strstr(out, planted[k]))
				print_message("leaked %s\nin:  %s\nout: %s\n", planted[k], in.data,
				              out);
			assert_null(strstr(out, planted[k]));
		}
		assert_non_null(strstr(out, " end"));
		assert_true(valid_utf8(out));
		free(out);
		buf_free(&in);
	}
}

/* Long and adversarial lines: bounded work, and the right answer. */
static void test_long_inputs(void **state)
{
	size_t n = 1u << 20;
	char *s = xmalloc(n + 64);
	/* a megabyte of digits with spaces: no phone shape, nothing masked */
	for (size_t i = 0; i < n; i++)
		s[i] = i % 2 ? ' ' : '1';
	s[n] = '\0';
	bool m;
	char *out = scrubbed(sc_both, s, &m);
	assert_false(m);
	assert_int_equal(strlen(out), n);
	free(out);
	/* a megabyte of '@' and local-part characters */
	for (size_t i = 0; i < n; i++)
		s[i] = i % 7 == 0 ? '@' : 'a';
	s[n] = '\0';
	out = scrubbed(sc_both, s, &m);
	assert_false(m);
	free(out);
	/* one long digit run, then a phone number */
	memset(s, '7', n);
	strcpy(s + n, " +44 20 7946 0958");
	out = scrubbed(sc_both, s, &m);
	assert_true(m);
	assert_non_null(strstr(out, " [phone]"));
	assert_null(strstr(out, "7946"));
	free(out);
	/* a long local part and a long domain still end in a mask */
	memset(s, 'x', n);
	strcpy(s + n - 20, "@example.com tail");
	out = scrubbed(sc_both, s, &m);
	assert_true(m);
	assert_non_null(strstr(out, "[email] tail"));
	free(out);
	free(s);
}

static void test_field_names(void **state)
{
	struct scrub *sc = scrub_new("email, Phone_Number ,, date-of-birth", "");
	assert_true(scrub_field_listed(sc, "email", 5));
	assert_true(scrub_field_listed(sc, "EMAIL", 5));
	assert_true(scrub_field_listed(sc, "E-Mail", 6));
	assert_true(scrub_field_listed(sc, "phoneNumber", 11));
	assert_true(scrub_field_listed(sc, "phone-number", 12));
	assert_true(scrub_field_listed(sc, "DATE_OF_BIRTH", 13));
	assert_false(scrub_field_listed(sc, "emails", 6));
	assert_false(scrub_field_listed(sc, "phone", 5));
	assert_false(scrub_field_listed(sc, "", 0));
	assert_false(scrub_field_listed(sc, "--", 2));
	char big[200];
	memset(big, 'e', sizeof big);
	assert_false(scrub_field_listed(sc, big, sizeof big));
	assert_false(scrub_field_listed(NULL, "email", 5));
	scrub_free(sc);
}

static void assert_json_scrubs_to(const struct scrub *sc, const char *in, const char *want,
                                  bool masked)
{
	json_error_t e;
	json_t *j = json_loads(in, JSON_DECODE_ANY, &e);
	assert_non_null(j);
	assert_int_equal(scrub_json(sc, j), masked);
	json_t *w = json_loads(want, JSON_DECODE_ANY, &e);
	assert_non_null(w);
	if (!json_equal(j, w)) {
		char *got = json_dumps(j, JSON_ENCODE_ANY | JSON_SORT_KEYS);
		print_message("in:   %s\ngot:  %s\nwant: %s\n", in, got, want);
		free(got);
	}
	assert_true(json_equal(j, w));
	json_decref(j);
	json_decref(w);
}

static void test_json(void **state)
{
	assert_json_scrubs_to(sc_both, "{\"email\":\"bob@example.com\",\"lang\":\"en\"}",
	                      "{\"email\":\"[redacted]\",\"lang\":\"en\"}", true);
	/* case-insensitive names, any depth, arrays, non-string values */
	assert_json_scrubs_to(
	        sc_both,
	        "{\"customer\":{\"EMAIL\":\"x\",\"Phone-Number\":5551234567,"
	        "\"contacts\":[{\"address\":{\"street\":\"1 Main St\"}},{\"address\":null}]},"
	        "\"n\":3}",
	        "{\"customer\":{\"EMAIL\":\"[redacted]\",\"Phone-Number\":\"[redacted]\","
	        "\"contacts\":[{\"address\":\"[redacted]\"},{\"address\":null}]},\"n\":3}",
	        true);
	/* patterns in other strings, in arrays and in keys */
	assert_json_scrubs_to(
	        sc_both,
	        "{\"note\":\"mail bob@example.com\",\"list\":[\"555-123-4567\",1,true],"
	        "\"bob@example.com\":1}",
	        "{\"note\":\"mail [email]\",\"list\":[\"[phone]\",1,true],\"[email]\":1}", true);
	/* nothing to mask: untouched, false */
	assert_json_scrubs_to(sc_both, "{\"lang\":\"en\",\"n\":[1,2,{\"k\":\"v1.2.3\"}]}",
	                      "{\"lang\":\"en\",\"n\":[1,2,{\"k\":\"v1.2.3\"}]}", false);
	assert_json_scrubs_to(sc_both, "\"bob@example.com\"", "\"[email]\"", true);
	/* idempotent */
	assert_json_scrubs_to(sc_both, "{\"email\":\"[redacted]\"}", "{\"email\":\"[redacted]\"}",
	                      false);
	/* fields only: patterns off leave other strings alone */
	struct scrub *f = scrub_new("name", "");
	assert_json_scrubs_to(f, "{\"name\":\"Bob\",\"note\":\"bob@example.com\"}",
	                      "{\"name\":\"[redacted]\",\"note\":\"bob@example.com\"}", true);
	assert_json_scrubs_to(f, "{\"filename\":\"a.txt\"}", "{\"filename\":\"a.txt\"}", false);
	scrub_free(f);
	assert_false(scrub_json(NULL, NULL));
}

static void test_json_deep(void **state)
{
	/* 100 nested arrays: what lies past the depth bound is masked whole */
	json_t *root = json_object();
	json_t *cur = json_array();
	json_object_set_new(root, "deep", cur);
	for (int i = 0; i < 100; i++) {
		json_t *next = json_array();
		json_array_append_new(cur, next);
		cur = next;
	}
	json_array_append_new(cur, json_string("bob@example.com"));
	assert_true(scrub_json(sc_both, root));
	char *text = json_dumps(root, JSON_COMPACT);
	assert_null(strstr(text, "bob@example.com"));
	assert_non_null(strstr(text, "[redacted]"));
	free(text);
	json_decref(root);
}

/* The job's own values under listed fields are masked verbatim in text,
 * as whole words, longest first; values too short or absent change nothing. */
static void test_values(void **state)
{
	struct scrub *sc = scrub_new("full_name,email,customer,pin", "email,phone");
	json_t *params =
	        json_pack("{s:s, s:{s:s, s:[s, i]}, s:s, s:s, s:i, s:s}", "Full-Name", "Ann Lee",
	                  "customer", "city", "Zürich", "tags", "vip", 123456, "lang", "en",
	                  "email", "x@y.zz", "pin", 12, "other", "Ann Lee's twin");
	struct scrub_values *vs = scrub_values_new(sc, params);
	assert_non_null(vs);
	static const char *const cases[][2] = {
	        {"hello Ann Lee!", "hello [redacted]!"},
	        {"Ann Lee from Zürich", "[redacted] from [redacted]"},
	        {"tier vip, id 123456", "tier [redacted], id [redacted]"},
	        {"Annual vipers 1234567", "Annual vipers 1234567"}, /* whole words only */
	        {"mail x@y.zz", "mail [redacted]"},
	        {"pin 12 stays", "pin 12 stays"}, /* shorter than 3 bytes */
	        {"lang en stays", "lang en stays"}, /* not a listed field */
	        {"call 555-123-4567", "call [phone]"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct buf b = BUF_INIT;
		scrub_text_values(sc, vs, &b, cases[i][0], strlen(cases[i][0]));
		buf_adds(&b, "");
		if (strcmp(b.data, cases[i][1]) != 0)
			print_message("in: %s\ngot: %s\nwant: %s\n", cases[i][0], b.data,
			              cases[i][1]);
		assert_string_equal(b.data, cases[i][1]);
		assert_true(valid_utf8(b.data));
		buf_free(&b);
	}
	char *d = scrub_dup_values(sc, vs, "Ann Lee");
	assert_string_equal(d, "[redacted]");
	free(d);
	json_t *ev = json_pack("{s:s, s:{s:s}}", "message", "for Ann Lee", "fields", "who", "vip");
	assert_true(scrub_json_values(sc, vs, ev));
	assert_string_equal(json_string_value(json_object_get(ev, "message")), "for [redacted]");
	assert_string_equal(
	        json_string_value(json_object_get(json_object_get(ev, "fields"), "who")),
	        "[redacted]");
	json_decref(ev);
	scrub_values_free(vs);
	/* nothing listed in params, no scrubber, no fields: no values */
	json_t *plain = json_pack("{s:s}", "lang", "en");
	assert_null(scrub_values_new(sc, plain));
	assert_null(scrub_values_new(NULL, params));
	struct scrub *nofields = scrub_new("", "email");
	assert_null(scrub_values_new(nofields, params));
	scrub_free(nofields);
	scrub_values_free(NULL);
	json_decref(plain);
	json_decref(params);
	scrub_free(sc);
}

static void test_lists(void **state)
{
	unsigned bits = 99;
	char *bad = NULL;
	assert_true(scrub_patterns_parse("email,phone", &bits, &bad));
	assert_int_equal(bits, SCRUB_EMAIL | SCRUB_PHONE);
	assert_null(bad);
	assert_true(scrub_patterns_parse(" phone , ", &bits, &bad));
	assert_int_equal(bits, SCRUB_PHONE);
	assert_true(scrub_patterns_parse("", &bits, &bad));
	assert_int_equal(bits, 0);
	assert_false(scrub_patterns_parse("email, ssn", &bits, &bad));
	assert_string_equal(bad, "ssn");
	free(bad);
	assert_false(scrub_patterns_parse("Email", &bits, NULL));

	assert_true(scrub_fields_check("email, phone_number,,", &bad));
	assert_null(bad);
	assert_false(scrub_fields_check("email, --", &bad));
	assert_string_equal(bad, "--");
	free(bad);
	char longname[100];
	memset(longname, 'a', 80);
	longname[80] = '\0';
	assert_false(scrub_fields_check(longname, &bad));
	assert_string_equal(bad, longname);
	free(bad);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_emails),
	        cmocka_unit_test(test_emails_utf8),
	        cmocka_unit_test(test_email_false_positives),
	        cmocka_unit_test(test_phones),
	        cmocka_unit_test(test_phone_false_positives),
	        cmocka_unit_test(test_patterns_selected),
	        cmocka_unit_test(test_random_text),
	        cmocka_unit_test(test_long_inputs),
	        cmocka_unit_test(test_field_names),
	        cmocka_unit_test(test_json),
	        cmocka_unit_test(test_json_deep),
	        cmocka_unit_test(test_values),
	        cmocka_unit_test(test_lists),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
