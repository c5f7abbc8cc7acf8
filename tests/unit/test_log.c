/* Unit tests for core/log: the JSON line shape (ts format, standard members,
 * typed fields, reserved names), level filtering, redaction through every
 * path a value can take (field name, msg, string/int/uint/double/JSON fields,
 * nested objects and arrays, both formats), line integrity against CR/LF, the
 * text format, stdio stderr capture, the parsers, and the file sink with
 * reopen after rotation. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/scrub.h"
#include "core/xmalloc.h"

#define TS_RE "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z$"

static int setup_json(void **state)
{
	if (!log_open(NULL, LOG_FMT_JSON, LOG_LVL_INFO))
		return -1;
	return 0;
}

static int setup_text(void **state)
{
	if (!log_open(NULL, LOG_FMT_TEXT, LOG_LVL_INFO))
		return -1;
	return 0;
}

static int teardown(void **state)
{
	log_close();
	return 0;
}

static size_t count_char(const char *s, char c)
{
	size_t n = 0;
	for (; *s; s++)
		n += *s == c;
	return n;
}

static bool matches(const char *re, const char *s)
{
	regex_t rx;
	assert_int_equal(regcomp(&rx, re, REG_EXTENDED | REG_NOSUB), 0);
	bool ok = regexec(&rx, s, 0, NULL, 0) == 0;
	regfree(&rx);
	return ok;
}

/* Parses one captured line (the whole text must be exactly one line). */
static json_t *parse_line(const char *text)
{
	size_t len = strlen(text);
	assert_true(len > 0);
	assert_int_equal(text[len - 1], '\n');
	assert_int_equal(count_char(text, '\n'), 1);
	json_error_t err;
	json_t *j = json_loads(text, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &err);
	if (j == NULL)
		print_message("bad JSON line (%s): %s", err.text, text);
	assert_non_null(j);
	assert_true(json_is_object(j));
	return j;
}

/* Takes the capture and checks none of the secrets occur in it; returns it. */
static char *take_checked(const char *const *secrets, size_t n)
{
	char *out = log_capture_take();
	for (size_t i = 0; i < n; i++) {
		if (strstr(out, secrets[i]) != NULL) {
			print_message("LEAK of \"%s\" in: %s", secrets[i], out);
			free(out);
			fail();
		}
	}
	return out;
}

static const char *str_member(const json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));
	if (s == NULL)
		print_message("member %s is not a string\n", k);
	assert_non_null(s);
	return s;
}

static void test_json_shape(void **state)
{
	char before[40], after[40];
	clock_fmt_rfc3339_us(before, sizeof before, clock_now_us());
	log_capture_start();
	log_info("job.started", "job started", LF_STR("job_id", "0189"));
	char *out = log_capture_take();
	clock_fmt_rfc3339_us(after, sizeof after, clock_now_us());

	/* The standard members come first, in this order. */
	assert_true(strncmp(out, "{\"ts\":\"", 7) == 0);
	json_t *j = parse_line(out);
	const char *ts = str_member(j, "ts");
	assert_true(matches(TS_RE, ts));
	assert_true(strcmp(before, ts) <= 0 && strcmp(ts, after) <= 0);
	assert_string_equal(str_member(j, "level"), "info");
	assert_string_equal(str_member(j, "event"), "job.started");
	assert_string_equal(str_member(j, "msg"), "job started");
	assert_string_equal(str_member(j, "job_id"), "0189");
	assert_int_equal(json_object_size(j), 5);
	char *p = strstr(out, "\"level\""), *e = strstr(out, "\"event\""),
	     *m = strstr(out, "\"msg\""), *f = strstr(out, "\"job_id\"");
	assert_true(p < e && e < m && m < f);
	json_decref(j);
	free(out);

	static const struct {
		enum log_level lvl;
		const char *name;
	} lv[] = {{LOG_LVL_INFO, "info"}, {LOG_LVL_WARN, "warn"}, {LOG_LVL_ERROR, "error"}};
	for (size_t i = 0; i < sizeof lv / sizeof lv[0]; i++) {
		log_capture_start();
		log_emit(lv[i].lvl, "e", "m", LF_END);
		out = log_capture_take();
		j = parse_line(out);
		assert_string_equal(str_member(j, "level"), lv[i].name);
		json_decref(j);
		free(out);
	}
	log_capture_start();
	log_warn("w", "warned");
	log_error("x", "failed");
	out = log_capture_take();
	assert_int_equal(count_char(out, '\n'), 2);
	assert_non_null(strstr(out, "\"level\":\"warn\""));
	assert_non_null(strstr(out, "\"level\":\"error\""));
	free(out);
}

static void test_json_field_types(void **state)
{
	json_t *nested =
	        json_pack("{s:i,s:[i,s,b,n],s:{s:f}}", "n", 3, "arr", 1, "two", 1, "o", "x", 0.25);
	log_capture_start();
	log_info("types", "typed fields", LF_STR("s", "text"), LF_STRN("sn", "abcdef", 3),
	         LF_STRN("snul", "a\0b", 3), LF_INT("i", -42), LF_INT("imin", LLONG_MIN),
	         LF_INT("imax", LLONG_MAX), LF_UINT("u", 4000000000u), LF_DBL("d", 1.5),
	         LF_DBL("dneg", -0.001), LF_DBL("nan", NAN), LF_DBL("inf", INFINITY),
	         LF_BOOL("bt", true), LF_BOOL("bf", false), LF_JSON("j", nested),
	         LF_JSON("jnull", NULL), LF_STR("null_str", NULL), LF_STR("empty", ""));
	char *out = log_capture_take();
	json_t *j = parse_line(out);

	assert_string_equal(str_member(j, "s"), "text");
	assert_string_equal(str_member(j, "sn"), "abc");
	json_t *snul = json_object_get(j, "snul");
	assert_int_equal(json_string_length(snul), 3);
	assert_memory_equal(json_string_value(snul), "a\0b", 3);
	assert_true(json_is_integer(json_object_get(j, "i")));
	assert_int_equal(json_integer_value(json_object_get(j, "i")), -42);
	assert_true(json_integer_value(json_object_get(j, "imin")) == LLONG_MIN);
	assert_true(json_integer_value(json_object_get(j, "imax")) == LLONG_MAX);
	assert_true(json_is_integer(json_object_get(j, "u")));
	assert_int_equal(json_integer_value(json_object_get(j, "u")), 4000000000);
	assert_true(json_is_real(json_object_get(j, "d")));
	assert_true(json_real_value(json_object_get(j, "d")) == 1.5);
	assert_true(json_real_value(json_object_get(j, "dneg")) == -0.001);
	/* Non-finite doubles have no JSON form: null keeps the line valid. */
	assert_true(json_is_null(json_object_get(j, "nan")));
	assert_true(json_is_null(json_object_get(j, "inf")));
	assert_true(json_is_true(json_object_get(j, "bt")));
	assert_true(json_is_false(json_object_get(j, "bf")));
	assert_true(json_equal(json_object_get(j, "j"), nested));
	assert_true(json_is_null(json_object_get(j, "jnull")));
	assert_true(json_is_null(json_object_get(j, "null_str")));
	assert_string_equal(str_member(j, "empty"), "");
	json_decref(j);
	json_decref(nested);
	free(out);

	/* The full unsigned range is written as digits (beyond jansson's int). */
	log_capture_start();
	log_info("u", "max", LF_UINT("u", ULLONG_MAX));
	out = log_capture_take();
	assert_non_null(strstr(out, "\"u\":18446744073709551615}"));
	free(out);
}

/* A double must stay a JSON real even when it has no fraction, or typed
 * consumers (Elasticsearch/Loki mappings, jansson) see an integer field. */
static void test_json_double_whole_number(void **state)
{
	log_capture_start();
	log_info("d", "whole", LF_DBL("seconds", 2.0), LF_DBL("big", 1e21));
	char *out = log_capture_take();
	json_t *j = parse_line(out);
	bool real = json_is_real(json_object_get(j, "seconds"));
	if (!real)
		print_message("LF_DBL 2.0 rendered as: %s", out);
	double v = json_number_value(json_object_get(j, "seconds"));
	json_decref(j);
	free(out);
	assert_true(v == 2.0);
	assert_true(real);
}

static void test_json_reserved_names(void **state)
{
	log_capture_start();
	log_info("real.event", "real msg", LF_STR("msg", "fake msg"), LF_STR("level", "debug"),
	         LF_STR("ts", "1970"), LF_STR("event", "fake.event"), LF_INT("n", 1));
	char *out = log_capture_take();
	json_t *j = parse_line(out); /* JSON_REJECT_DUPLICATES: no second "msg" */
	assert_string_equal(str_member(j, "msg"), "real msg");
	assert_string_equal(str_member(j, "level"), "info");
	assert_string_equal(str_member(j, "event"), "real.event");
	assert_true(matches(TS_RE, str_member(j, "ts")));
	/* The caller's values are kept under a prefixed name, not dropped. */
	assert_string_equal(str_member(j, "field_msg"), "fake msg");
	assert_string_equal(str_member(j, "field_level"), "debug");
	assert_string_equal(str_member(j, "field_ts"), "1970");
	assert_string_equal(str_member(j, "field_event"), "fake.event");
	json_decref(j);
	free(out);
}

static void test_json_escaping(void **state)
{
	log_capture_start();
	log_info("esc", "say \"hi\"\\ \x01 caf\xc3\xa9 bad\xff\xc0", LF_STR("k\"ey\n", "v\"al"),
	         LF_STR("utf8", "\xe2\x82\xac"), LF_STR("bad", "\xed\xa0\x80"));
	char *out = log_capture_take();
	json_t *j = parse_line(out);
	const char *m = str_member(j, "msg");
	assert_true(strncmp(m, "say \"hi\"\\ \x01 caf\xc3\xa9 bad", 21) == 0);
	assert_non_null(strstr(m, "\xef\xbf\xbd")); /* U+FFFD */
	assert_string_equal(str_member(j, "k\"ey\n"), "v\"al");
	assert_string_equal(str_member(j, "utf8"), "\xe2\x82\xac");
	assert_null(strstr(str_member(j, "bad"), "\xed"));
	json_decref(j);
	free(out);
}

static void test_level_filtering(void **state)
{
	int evaluated = 0;
	log_capture_start();
	log_debug("dbg", "debug line", LF_INT("n", ++evaluated));
	log_emit(LOG_LVL_DEBUG, "dbg2", "direct debug", LF_END);
	char *out = log_capture_take();
	assert_string_equal(out, "");
	/* log_debug must not evaluate its arguments when debug is off. */
	assert_int_equal(evaluated, 0);
	free(out);
	assert_false(log_enabled(LOG_LVL_DEBUG));
	assert_true(log_enabled(LOG_LVL_INFO));
	assert_true(log_enabled(LOG_LVL_ERROR));

	log_set_level(LOG_LVL_DEBUG);
	assert_true(log_enabled(LOG_LVL_DEBUG));
	log_capture_start();
	log_debug("dbg", "debug line", LF_INT("n", ++evaluated));
	out = log_capture_take();
	assert_int_equal(evaluated, 1);
	json_t *j = parse_line(out);
	assert_string_equal(str_member(j, "level"), "debug");
	assert_int_equal(json_integer_value(json_object_get(j, "n")), 1);
	json_decref(j);
	free(out);

	log_set_level(LOG_LVL_WARN);
	log_capture_start();
	log_info("i", "dropped");
	log_warn("w", "kept");
	log_error("e", "kept");
	out = log_capture_take();
	assert_int_equal(count_char(out, '\n'), 2);
	assert_null(strstr(out, "dropped"));
	free(out);

	log_set_level(LOG_LVL_ERROR);
	log_capture_start();
	log_warn("w", "dropped");
	out = log_capture_take();
	assert_string_equal(out, "");
	free(out);
}

static void test_redact_secret_field_names(void **state)
{
	json_t *obj = json_pack("{s:s}", "inner", "JsonSecretValue1");
	static const char *const secrets[] = {"StrSecret1",   "StrnSecret2",   "987654321",
	                                      "424242424242", "0.123456789",   "JsonSecretValue1",
	                                      "AuthzSecret3", "CookieSecret4", "KeySecret5"};
	log_capture_start();
	log_info("creds", "fields", LF_STR("password", "StrSecret1"),
	         LF_STRN("db_token", "StrnSecret2xx", 11), LF_INT("password", 987654321),
	         LF_UINT("token", 424242424242ull), LF_DBL("secret_ratio", 0.123456789),
	         LF_JSON("api_key", obj), LF_STR("Authorization", "Bearer AuthzSecret3"),
	         LF_STR("Cookie", "sid=CookieSecret4"), LF_STR("X-Api-Key", "KeySecret5"),
	         LF_STR("status", "ok"));
	char *out = take_checked(secrets, sizeof secrets / sizeof secrets[0]);
	/* Two "password" fields: parse without the duplicate check. */
	json_error_t err;
	json_t *j = json_loads(out, 0, &err);
	assert_non_null(j);
	static const char *const keys[] = {"password", "db_token",      "token",  "secret_ratio",
	                                   "api_key",  "Authorization", "Cookie", "X-Api-Key"};
	for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
		assert_string_equal(str_member(j, keys[i]), "[REDACTED]");
	assert_string_equal(str_member(j, "status"), "ok");
	json_decref(j);
	json_decref(obj);
	free(out);
}

static void test_redact_embedded(void **state)
{
	static const char *const secrets[] = {"MsgDsnPw1",    "FieldDsnPw2", "KwDsnPw3",
	                                      "PresignSig4",  "PresignTok5", "BearerTok6",
	                                      "ApiKeySecret7"};
	log_capture_start();
	log_error("db.connect_failed", "cannot connect to postgresql://app:MsgDsnPw1@db/jobs",
	          LF_STR("conninfo", "postgres://app:FieldDsnPw2@db:5432/jobs"),
	          LF_STR("kw", "host=db user=app password=KwDsnPw3 dbname=jobs"),
	          LF_STR("url", "https://b.s3.amazonaws.com/k?X-Amz-Signature=PresignSig4"
	                        "&X-Amz-Security-Token=PresignTok5&X-Amz-Expires=60"),
	          LF_STRN("hdr", "Bearer BearerTok6", 17),
	          LF_STR("key", "sl_AbCdEf12_ApiKeySecret7xxxxxxxxxxxxxxxxxxxxxxxxxxxx"));
	char *out = take_checked(secrets, sizeof secrets / sizeof secrets[0]);
	json_t *j = parse_line(out);
	assert_string_equal(str_member(j, "msg"),
	                    "cannot connect to postgresql://app:[REDACTED]@db/jobs");
	assert_string_equal(str_member(j, "conninfo"), "postgres://app:[REDACTED]@db:5432/jobs");
	assert_non_null(strstr(str_member(j, "url"), "X-Amz-Expires=60"));
	assert_string_equal(str_member(j, "key"), "sl_AbCdEf12_[REDACTED]");
	json_decref(j);
	free(out);
}

static void test_redact_nested_json(void **state)
{
	json_t *v = json_pack("{s:{s:s,s:s},s:[{s:s},{s:i},s],s:s,s:{s:{s:s}},s:i,s:n}", "auth",
	                      "api_key", "NestedApiKey1", "user", "alice", "list", "password",
	                      "NestedPw2", "token", 55667788, "postgresql://u:NestedDsnPw3@h/d",
	                      "url", "https://h/p?X-Amz-Signature=NestedSig4&a=1", "deep", "x",
	                      "client_secret", "NestedSecret5", "count", 7, "secret");
	static const char *const secrets[] = {"NestedApiKey1", "NestedPw2",  "55667788",
	                                      "NestedDsnPw3",  "NestedSig4", "NestedSecret5"};
	log_capture_start();
	log_info("job.params", "params", LF_JSON("params", v));
	char *out = take_checked(secrets, sizeof secrets / sizeof secrets[0]);
	json_t *j = parse_line(out);
	json_t *p = json_object_get(j, "params");
	assert_true(json_is_object(p));
	/* Structure and ordinary values survive; only secrets are masked. */
	json_t *auth = json_object_get(p, "auth");
	assert_true(json_is_object(auth));
	assert_string_equal(str_member(auth, "api_key"), "[REDACTED]");
	assert_string_equal(str_member(auth, "user"), "alice");
	json_t *list = json_object_get(p, "list");
	assert_int_equal(json_array_size(list), 3);
	assert_string_equal(str_member(json_array_get(list, 0), "password"), "[REDACTED]");
	assert_string_equal(str_member(json_array_get(list, 1), "token"), "[REDACTED]");
	assert_string_equal(json_string_value(json_array_get(list, 2)),
	                    "postgresql://u:[REDACTED]@h/d");
	assert_string_equal(str_member(p, "url"), "https://h/p?X-Amz-Signature=[REDACTED]&a=1");
	json_t *x = json_object_get(json_object_get(p, "deep"), "x");
	assert_string_equal(str_member(x, "client_secret"), "[REDACTED]");
	assert_int_equal(json_integer_value(json_object_get(p, "count")), 7);
	/* A null under a secret name carries nothing and stays null. */
	assert_true(json_is_null(json_object_get(p, "secret")));
	json_decref(j);
	free(out);
	json_decref(v);

	/* A secret buried deeper than the writer recurses is dropped, not leaked. */
	json_t *deep = json_pack("{s:s}", "leaf", "postgresql://u:DeepPw6@h/d");
	for (int i = 0; i < 40; i++)
		deep = json_pack("{s:o}", "k", deep);
	static const char *const deep_secret[] = {"DeepPw6"};
	log_capture_start();
	log_info("deep", "deep", LF_JSON("v", deep));
	out = take_checked(deep_secret, 1);
	j = parse_line(out);
	json_decref(j);
	free(out);
	json_decref(deep);
}

/* privacy.scrub: LF_PII text is scrubbed, configured fields inside LF_JSON
 * are masked; with no scrubber both are written as they are, and LF_STR is
 * never scrubbed (daemon text, not a module's). */
static void test_scrub_pii_fields(void **state)
{
	json_t *params = json_pack("{s:s, s:{s:s}, s:s}", "Email", "bob@example.com", "who",
	                           "phone_number", "+44 20 7946 0958", "lang", "en");
	const char *line = "mail bob@example.com or call +44 20 7946 0958";
	log_capture_start();
	log_info("module.stderr", "x", LF_PII("line", line), LF_PIIN("part", line, 4),
	         LF_JSON("params", params), LF_PII("none", NULL));
	char *out = log_capture_take();
	json_t *j = parse_line(out);
	assert_string_equal(str_member(j, "line"), line);
	assert_string_equal(str_member(j, "part"), "mail");
	assert_string_equal(str_member(json_object_get(j, "params"), "Email"), "bob@example.com");
	json_decref(j);
	free(out);

	struct scrub *sc = scrub_new("email,phone_number", "email,phone");
	log_set_scrub(sc);
	log_capture_start();
	log_info("module.stderr", "x", LF_PII("line", line), LF_STR("daemon", "bob@example.com"),
	         LF_JSON("params", params), LF_PII("none", NULL));
	out = log_capture_take();
	assert_null(strstr(out, "7946"));
	j = parse_line(out);
	assert_string_equal(str_member(j, "line"), "mail [email] or call [phone]");
	assert_string_equal(str_member(j, "daemon"), "bob@example.com");
	json_t *p = json_object_get(j, "params");
	assert_string_equal(str_member(p, "Email"), "[redacted]");
	assert_string_equal(str_member(json_object_get(p, "who"), "phone_number"), "[redacted]");
	assert_string_equal(str_member(p, "lang"), "en");
	assert_true(json_is_null(json_object_get(j, "none")));
	json_decref(j);
	free(out);
	log_set_scrub(NULL);
	scrub_free(sc);
	json_decref(params);
}

static void test_line_integrity_json(void **state)
{
	json_t *v = json_pack("{s:s}", "a\nb", "c\r\nd");
	log_capture_start();
	log_info("crlf", "line1\nline2\r\n{\"level\":\"error\"}", LF_STR("f", "x\ny\rz"),
	         LF_STRN("g", "p\nq", 3), LF_JSON("j", v), LF_STR("k\n", "v"));
	log_info("second", "ok");
	log_warn("third", "\n\n\n");
	char *out = log_capture_take();
	assert_int_equal(count_char(out, '\n'), 3);
	assert_null(strchr(out, '\r'));
	char *nl1 = strchr(out, '\n');
	*nl1 = '\0';
	json_t *j = json_loads(out, 0, NULL);
	assert_non_null(j);
	assert_string_equal(str_member(j, "msg"), "line1\nline2\r\n{\"level\":\"error\"}");
	assert_string_equal(str_member(j, "level"), "info");
	json_decref(j);
	free(out);
	json_decref(v);
}

static void test_text_format(void **state)
{
	log_capture_start();
	log_info("job.done", "job finished ok", LF_STR("job_id", "0189"), LF_INT("n", -5),
	         LF_UINT("u", 7), LF_BOOL("ok", true), LF_DBL("d", 0.5), LF_STR("sp", "a b"),
	         LF_STR("eq", "k=v"), LF_STR("q", "say \"x\""), LF_STR("nul", NULL),
	         LF_STR("empty", ""));
	char *out = log_capture_take();
	assert_int_equal(count_char(out, '\n'), 1);
	assert_int_equal(out[strlen(out) - 1], '\n');
	char ts[40];
	memcpy(ts, out, 27);
	ts[27] = '\0';
	assert_true(matches(TS_RE, ts));
	static const char *const want =
	        " info  job.done: job finished ok job_id=0189 n=-5 u=7 ok=true d=0.5 sp=\"a b\" "
	        "eq=\"k=v\" q=\"say \\\"x\\\"\" nul=- empty=\"\"\n";
	if (strcmp(out + 27, want) != 0)
		print_message("got:  %s\nwant: %s", out + 27, want);
	assert_string_equal(out + 27, want);
	free(out);

	log_capture_start();
	log_warn("w", "m");
	out = log_capture_take();
	assert_string_equal(out + 27, " warn  w: m\n");
	free(out);
}

static void test_text_line_integrity_and_redaction(void **state)
{
	json_t *v = json_pack("{s:s,s:s}", "password", "TextJsonPw1", "x", "line\nbreak");
	static const char *const secrets[] = {"TextMsgPw2", "TextFieldPw3", "TextTok4",
	                                      "TextJsonPw1", "TextSig5"};
	log_capture_start();
	log_error("db", "connect postgresql://u:TextMsgPw2@h/d\nFAKE error line\r\n",
	          LF_STR("kw", "host=h password=TextFieldPw3"), LF_STR("token", "TextTok4"),
	          LF_JSON("j", v), LF_STR("url", "https://h/?sig=TextSig5"),
	          LF_STR("multi", "a\nb\r\nc"));
	char *out = take_checked(secrets, sizeof secrets / sizeof secrets[0]);
	assert_int_equal(count_char(out, '\n'), 1);
	assert_null(strchr(out, '\r'));
	assert_non_null(strstr(out, "db: connect postgresql://u:[REDACTED]@h/d FAKE error line"));
	assert_non_null(strstr(out, " token=[REDACTED]"));
	assert_non_null(strstr(out, "\"password\":\"[REDACTED]\""));
	assert_non_null(strstr(out, " multi=\"a\\nb\\r\\nc\""));
	free(out);
	json_decref(v);
}

/* Library writes to the stdio stderr stream become lib.stderr lines: whole
 * lines only, colour codes stripped, secrets redacted, libevhtp's pipelining
 * chatter demoted to debug, and an endless line flushed past 4 KiB. */
static void test_stdio_stderr_capture(void **state)
{
	FILE *saved = stderr;
	log_capture_stdio_stderr();
	bool swapped = stderr != saved;
	log_capture_start();
	fprintf(stderr, "[ERROR] evhtp: \033[1;31mbad\033[0m thing postgresql://u:StdPw1@h/d\n");
	fputs("partial ", stderr);
	fputs("line\nsecond ", stderr);
	fputs("line\n", stderr);
	fputs("[WARN] resuming when not paused\n", stderr);
	fputs("no newline yet", stderr);
	char *out = log_capture_take();
	log_capture_start();
	for (int i = 0; i < 100; i++)
		fputs("0123456789012345678901234567890123456789012345678", stderr);
	char *flood = log_capture_take();
	FILE *cookie = stderr;
	stderr = saved;
	if (swapped)
		fclose(cookie);

	assert_true(swapped);
	bool leaked = strstr(out, "StdPw1") != NULL;
	size_t lines = count_char(out, '\n');
	bool esc = strchr(out, '\033') != NULL;
	char *nl = strchr(out, '\n');
	if (nl)
		*nl = '\0';
	json_t *j = json_loads(out, 0, NULL);
	json_t *j2 = nl ? json_loads(nl + 1, JSON_DISABLE_EOF_CHECK, NULL) : NULL;
	bool resumed = nl && strstr(nl + 1, "resuming") != NULL;
	bool pending = nl && strstr(nl + 1, "no newline") != NULL;
	size_t flood_lines = count_char(flood, '\n');
	json_t *jf = json_loads(flood, JSON_DISABLE_EOF_CHECK, NULL);
	free(out);
	free(flood);

	assert_false(leaked);
	assert_false(esc);
	assert_false(resumed);
	assert_false(pending);
	assert_int_equal(lines, 3);
	assert_non_null(j);
	assert_string_equal(str_member(j, "level"), "warn");
	assert_string_equal(str_member(j, "event"), "lib.stderr");
	assert_string_equal(str_member(j, "msg"),
	                    "[ERROR] evhtp: bad thing postgresql://u:[REDACTED]@h/d");
	assert_non_null(j2);
	assert_string_equal(str_member(j2, "msg"), "partial line");
	assert_int_equal(flood_lines, 1);
	assert_non_null(jf);
	assert_true(strlen(str_member(jf, "msg")) > 4096);
	json_decref(j);
	json_decref(j2);
	json_decref(jf);
}

static void test_parsers(void **state)
{
	enum log_level l = LOG_LVL_ERROR;
	assert_true(log_level_parse("debug", &l));
	assert_int_equal(l, LOG_LVL_DEBUG);
	assert_true(log_level_parse("info", &l));
	assert_int_equal(l, LOG_LVL_INFO);
	assert_true(log_level_parse("warn", &l));
	assert_int_equal(l, LOG_LVL_WARN);
	assert_true(log_level_parse("warning", &l));
	assert_int_equal(l, LOG_LVL_WARN);
	assert_true(log_level_parse("error", &l));
	assert_int_equal(l, LOG_LVL_ERROR);
	static const char *const bad[] = {"", "fatal", "trace", "inf", "errors", "debug "};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		assert_false(log_level_parse(bad[i], &l));

	assert_string_equal(log_level_name(LOG_LVL_DEBUG), "debug");
	assert_string_equal(log_level_name(LOG_LVL_INFO), "info");
	assert_string_equal(log_level_name(LOG_LVL_WARN), "warn");
	assert_string_equal(log_level_name(LOG_LVL_ERROR), "error");
	/* Every name round-trips through the parser. */
	for (int i = LOG_LVL_DEBUG; i <= LOG_LVL_ERROR; i++) {
		assert_true(log_level_parse(log_level_name((enum log_level)i), &l));
		assert_int_equal(l, i);
	}

	enum log_format f = LOG_FMT_TEXT;
	assert_true(log_format_parse("json", &f));
	assert_int_equal(f, LOG_FMT_JSON);
	assert_true(log_format_parse("text", &f));
	assert_int_equal(f, LOG_FMT_TEXT);
	assert_false(log_format_parse("yaml", &f));
	assert_false(log_format_parse("", &f));
	assert_false(log_format_parse("JSONL", &f));
}

static char *read_all(const char *path)
{
	FILE *fp = fopen(path, "r");
	assert_non_null(fp);
	struct stat st;
	assert_int_equal(fstat(fileno(fp), &st), 0);
	char *s = xmalloc((size_t)st.st_size + 1);
	size_t n = fread(s, 1, (size_t)st.st_size, fp);
	s[n] = '\0';
	fclose(fp);
	return s;
}

static void test_file_sink_and_reopen(void **state)
{
	char dir[] = "/tmp/test_log_XXXXXX";
	assert_non_null(mkdtemp(dir));
	char *path = xasprintf("%s/stagelined.log", dir);
	char *rotated = xasprintf("%s/stagelined.log.1", dir);
	char *missing = xasprintf("%s/no/such/dir/x.log", dir);

	/* Appends to an existing file rather than truncating it. */
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	fputs("previous\n", fp);
	fclose(fp);

	mode_t old = umask(022);
	assert_true(log_open(path, LOG_FMT_JSON, LOG_LVL_INFO));
	umask(old);
	log_info("one", "first");
	char *s = read_all(path);
	assert_true(strncmp(s, "previous\n{\"ts\":", 15) == 0);
	assert_int_equal(count_char(s, '\n'), 2);
	assert_non_null(strstr(s, "\"msg\":\"first\""));
	free(s);

	/* A failed open leaves the current sink in place. */
	errno = 0;
	assert_false(log_open(missing, LOG_FMT_TEXT, LOG_LVL_DEBUG));
	assert_int_equal(errno, ENOENT);
	log_debug("dbg", "must stay filtered");
	log_info("two", "second");

	/* Rotation: rename, the old fd keeps writing until reopen. */
	assert_int_equal(rename(path, rotated), 0);
	log_info("three", "third");
	assert_true(log_reopen());
	log_info("four", "fourth");
	log_close();

	s = read_all(rotated);
	assert_int_equal(count_char(s, '\n'), 4);
	assert_non_null(strstr(s, "\"msg\":\"second\""));
	assert_non_null(strstr(s, "\"msg\":\"third\""));
	assert_null(strstr(s, "fourth"));
	assert_null(strstr(s, "must stay filtered"));
	free(s);
	s = read_all(path);
	json_t *j = parse_line(s);
	assert_string_equal(str_member(j, "msg"), "fourth");
	json_decref(j);
	free(s);

	/* Log files are not world-readable. */
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0007, 0);

	/* Reopen with no file sink is a harmless no-op. */
	assert_true(log_open(NULL, LOG_FMT_JSON, LOG_LVL_INFO));
	assert_true(log_reopen());

	unlink(path);
	unlink(rotated);
	rmdir(dir);
	free(path);
	free(rotated);
	free(missing);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_json_shape, setup_json, teardown),
	        cmocka_unit_test_setup_teardown(test_json_field_types, setup_json, teardown),
	        cmocka_unit_test_setup_teardown(test_json_double_whole_number, setup_json,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_json_reserved_names, setup_json, teardown),
	        cmocka_unit_test_setup_teardown(test_json_escaping, setup_json, teardown),
	        cmocka_unit_test_setup_teardown(test_level_filtering, setup_json, teardown),
	        cmocka_unit_test_setup_teardown(test_redact_secret_field_names, setup_json,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_redact_embedded, setup_json, teardown),
	        cmocka_unit_test_setup_teardown(test_redact_nested_json, setup_json, teardown),
	        cmocka_unit_test_setup_teardown(test_scrub_pii_fields, setup_json, teardown),
	        cmocka_unit_test_setup_teardown(test_line_integrity_json, setup_json, teardown),
	        cmocka_unit_test_setup_teardown(test_text_format, setup_text, teardown),
	        cmocka_unit_test_setup_teardown(test_text_line_integrity_and_redaction, setup_text,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_stdio_stderr_capture, setup_json, teardown),
	        cmocka_unit_test(test_parsers),
	        cmocka_unit_test_setup_teardown(test_file_sink_and_reopen, setup_json, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
