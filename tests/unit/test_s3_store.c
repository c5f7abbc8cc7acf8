/* Unit tests for the pure parts of store/s3_store.c (addressing and key
 * encoding, the ListObjectsV2 and error XML readers with entity decoding,
 * truncated and garbled documents, HTTP dates, Content-Range, the backoff
 * and what is retried), store_new_s3()'s settings and environment fallback,
 * and store_get_range() on the file backend (the s3 one is exercised against
 * s3rver in tests/integration/test_s3_store.py). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "core/buf.h"
#include "core/xmalloc.h"
#include "store/s3_store.h"
#include "store/store.h"

static char *build(const char *endpoint, bool path_style, const char *key, const char *query,
                   char **host)
{
	struct s3_addr a;
	const char *why = NULL;
	assert_true(s3_addr_parse(endpoint, "my-bucket", path_style, &a, &why));
	struct buf h = BUF_INIT, url = BUF_INIT;
	s3_build(&a, key, query, &h, NULL, &url);
	*host = buf_steal(&h);
	return buf_steal(&url);
}

static void test_urls(void **state)
{
	char *host, *url;
	url = build("http://127.0.0.1:4569", true, "a/b c.txt", NULL, &host);
	assert_string_equal(url, "http://127.0.0.1:4569/my-bucket/a/b%20c.txt");
	assert_string_equal(host, "127.0.0.1:4569");
	free(url);
	free(host);

	url = build("https://s3.eu-west-1.amazonaws.com", false, "p/x~y+z", NULL, &host);
	assert_string_equal(url, "https://my-bucket.s3.eu-west-1.amazonaws.com/p/x~y%2Bz");
	assert_string_equal(host, "my-bucket.s3.eu-west-1.amazonaws.com");
	free(url);
	free(host);

	/* UTF-8 bytes are encoded one by one, upper-case hex. */
	url = build("http://localhost:9000", true, "d\xc3\xa9j\xc3\xa0/\xe2\x82\xac", NULL, &host);
	assert_string_equal(url, "http://localhost:9000/my-bucket/d%C3%A9j%C3%A0/%E2%82%AC");
	free(url);
	free(host);

	/* The bucket itself, with a query (a list). */
	url = build("http://127.0.0.1:4569", true, NULL, "list-type=2&prefix=a%2F", &host);
	assert_string_equal(url, "http://127.0.0.1:4569/my-bucket?list-type=2&prefix=a%2F");
	free(url);
	free(host);
	url = build("https://h.example:8443", false, NULL, "list-type=2", &host);
	assert_string_equal(url, "https://my-bucket.h.example:8443/?list-type=2");
	assert_string_equal(host, "my-bucket.h.example:8443");
	free(url);
	free(host);

	/* Default ports are left out of Host. */
	url = build("http://h.example:80", true, "k", NULL, &host);
	assert_string_equal(host, "h.example");
	assert_string_equal(url, "http://h.example/my-bucket/k");
	free(url);
	free(host);

	struct buf b = BUF_INIT;
	s3_uri_encode(&b, "a/b=c&d!'()*", 12, false);
	assert_string_equal(b.data, "a%2Fb%3Dc%26d%21%27%28%29%2A");
	buf_free(&b);

	struct s3_addr a;
	const char *why;
	assert_false(s3_addr_parse("http://h/path", "b", true, &a, &why));
	assert_false(s3_addr_parse("s3://h", "b", true, &a, &why));
	assert_false(s3_addr_parse("http://h", "", true, &a, &why));
	assert_false(s3_addr_parse("http://h", "a/b", true, &a, &why));
}

static char *decode(const char *s)
{
	struct buf b = BUF_INIT;
	if (!s3_xml_decode(s, strlen(s), &b)) {
		buf_free(&b);
		return NULL;
	}
	buf_addc(&b, 0);
	return buf_steal(&b);
}

static void test_entities(void **state)
{
	char *d = decode("a &amp; b &lt;c&gt; &quot;q&quot; &apos;s&apos;");
	assert_string_equal(d, "a & b <c> \"q\" 's'");
	free(d);
	d = decode("&#65;&#x42;&#x20AC;&#128512;");
	assert_string_equal(d, "AB\xe2\x82\xac\xf0\x9f\x98\x80");
	free(d);
	assert_null(decode("&nbsp;"));
	assert_null(decode("a & b"));
	assert_null(decode("&#;"));
	assert_null(decode("&#x;"));
	assert_null(decode("&#0;"));
	assert_null(decode("&#xD800;"));
	assert_null(decode("&#x110000;"));
	assert_null(decode("&#99999999999;"));
	assert_null(decode("&amp"));
}

static const char list_xml[] =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
        "<Name>b</Name><Prefix>p/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys>"
        "<IsTruncated>true</IsTruncated>"
        "<!-- a comment -->"
        "<Contents><Key>p/a &amp; b.txt</Key><LastModified>2026-01-02T03:04:05.678Z</LastModified>"
        "<ETag>&quot;abc&quot;</ETag><Size>12</Size><StorageClass>STANDARD</StorageClass>"
        "</Contents>\n"
        "<Contents><Key>p/&#x20AC;</Key><Size>0</Size><Owner><ID>x</ID></Owner></Contents>"
        "<NextContinuationToken>tok+/=&amp;</NextContinuationToken>"
        "</ListBucketResult>";

static void test_list_parse(void **state)
{
	struct s3_list_page pg;
	const char *why = NULL;
	assert_true(s3_xml_parse_list(list_xml, strlen(list_xml), &pg, &why));
	assert_int_equal(pg.n, 2);
	assert_string_equal(pg.items[0].key, "p/a & b.txt");
	assert_int_equal(pg.items[0].size, 12);
	assert_int_equal(pg.items[0].mtime_ms, 1767323045678LL);
	assert_string_equal(pg.items[1].key, "p/\xe2\x82\xac");
	assert_int_equal(pg.items[1].size, 0);
	assert_true(pg.truncated);
	assert_string_equal(pg.next_token, "tok+/=&");
	s3_list_page_free(&pg);

	const char *empty = "<ListBucketResult><IsTruncated>false</IsTruncated>"
	                    "<KeyCount>0</KeyCount></ListBucketResult>";
	assert_true(s3_xml_parse_list(empty, strlen(empty), &pg, &why));
	assert_int_equal(pg.n, 0);
	assert_false(pg.truncated);
	assert_null(pg.next_token);
	s3_list_page_free(&pg);

	const char *cdata = "<ListBucketResult><Contents><Key><![CDATA[a&b<c]]></Key>"
	                    "<Size>1</Size></Contents></ListBucketResult>";
	assert_true(s3_xml_parse_list(cdata, strlen(cdata), &pg, &why));
	assert_string_equal(pg.items[0].key, "a&b<c");
	s3_list_page_free(&pg);
}

static void test_list_garbage(void **state)
{
	static const char *bad[] = {
	        "",
	        "   ",
	        "not xml at all",
	        "<ListBucketResult>",
	        "<ListBucketResult><Contents><Key>a</Key>",
	        "<ListBucketResult><Contents><Key>a</Key></Contents>",
	        "<ListBucketResult><Contents><Key>a</Contents></Key></ListBucketResult>",
	        "<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>",
	        "<ListBucketResult><Contents><Key>a</Key><Size>x</Size></Contents>"
	        "</ListBucketResult>",
	        "<ListBucketResult><Contents><Key>a</Key><Key>b</Key></Contents></"
	        "ListBucketResult>",
	        "<ListBucketResult><IsTruncated>maybe</IsTruncated></ListBucketResult>",
	        "<ListBucketResult><Contents><Key>a &bogus; b</Key></Contents></ListBucketResult>",
	        "<Error><Code>AccessDenied</Code></Error>",
	        "<ListBucketResult></ListBucketResult><ListBucketResult></ListBucketResult>",
	        "<!DOCTYPE x [<!ENTITY a \"b\">]><ListBucketResult></ListBucketResult>",
	        "<ListBucketResult><Contents><Key>a</Key></Contents></ListBucketResult>junk",
	        "<ListBucketResult><!-- unterminated",
	        "<ListBucketResult><Contents",
	        "<><ListBucketResult></ListBucketResult>",
	        "<a><a><a><a><a><a><a><a><a><a><a><a><a><a><a><a><a></a></a></a></a></a></a></a>"
	        "</a></a></a></a></a></a></a></a></a></a>",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct s3_list_page pg;
		const char *why = NULL;
		if (s3_xml_parse_list(bad[i], strlen(bad[i]), &pg, &why))
			fail_msg("accepted bad document %zu: %s", i, bad[i]);
		assert_non_null(why);
		assert_int_equal(pg.n, 0);
	}
	/* Every prefix of a good document is refused, never a crash. */
	for (size_t n = 0; n < sizeof(list_xml) - 1; n++) {
		struct s3_list_page pg;
		const char *why;
		assert_false(s3_xml_parse_list(list_xml, n, &pg, &why));
	}
}

static void test_error_parse(void **state)
{
	const char *x = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>"
	                "<Code>SignatureDoesNotMatch</Code>"
	                "<Message>The request signature we calculated does not match &amp; "
	                "so on</Message>"
	                "<StringToSign>AWS4-HMAC-SHA256\nsecret-ish</StringToSign>"
	                "<RequestId>1</RequestId></Error>";
	struct s3_error_doc d;
	assert_true(s3_xml_parse_error(x, strlen(x), &d));
	assert_string_equal(d.code, "SignatureDoesNotMatch");
	assert_string_equal(d.message,
	                    "The request signature we calculated does not match & so on");
	assert_false(d.have_size);

	x = "<Error><Code>InvalidRange</Code><Message>m</Message>"
	    "<ActualObjectSize>1234</ActualObjectSize></Error>";
	assert_true(s3_xml_parse_error(x, strlen(x), &d));
	assert_true(d.have_size);
	assert_int_equal(d.actual_size, 1234);

	assert_false(s3_xml_parse_error("", 0, &d));
	x = "<Error><Message>no code</Message></Error>";
	assert_false(s3_xml_parse_error(x, strlen(x), &d));
	x = "<Error><Code>Slow";
	assert_false(s3_xml_parse_error(x, strlen(x), &d));
	x = "<html><body>502 Bad Gateway</body></html>";
	assert_false(s3_xml_parse_error(x, strlen(x), &d));
	assert_string_equal(d.code, "");
}

static void test_misc(void **state)
{
	int64_t ms;
	assert_true(s3_parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT", &ms));
	assert_int_equal(ms, 784111777000LL);
	assert_false(s3_parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT", &ms));
	assert_false(s3_parse_http_date("", &ms));

	uint64_t t;
	assert_true(s3_parse_content_range_total("bytes 0-99/1234", &t));
	assert_int_equal(t, 1234);
	assert_true(s3_parse_content_range_total("bytes */77", &t));
	assert_int_equal(t, 77);
	assert_false(s3_parse_content_range_total("bytes 0-99/*", &t));
	assert_false(s3_parse_content_range_total(NULL, &t));

	/* Full jitter: within [0, min(cap, base * 2^n)]. */
	assert_int_equal(s3_backoff_ms(0, 100, 2000, 0), 0);
	assert_int_equal(s3_backoff_ms(0, 100, 2000, 100), 100);
	assert_int_equal(s3_backoff_ms(0, 100, 2000, 101), 0);
	assert_int_equal(s3_backoff_ms(3, 100, 2000, 800), 800);
	assert_int_equal(s3_backoff_ms(3, 100, 2000, 801), 0);
	assert_int_equal(s3_backoff_ms(10, 100, 2000, 2000), 2000);
	assert_int_equal(s3_backoff_ms(60, 100, 2000, UINT64_MAX) <= 2000, 1);
	for (uint64_t r = 0; r < 5000; r += 7)
		assert_true(s3_backoff_ms(2, 100, 5000, r * 7919) <= 400);

	assert_true(s3_retryable(500, NULL));
	assert_true(s3_retryable(503, "SlowDown"));
	assert_true(s3_retryable(429, NULL));
	assert_true(s3_retryable(400, "RequestTimeout"));
	assert_true(s3_retryable(200, "InternalError"));
	assert_false(s3_retryable(403, "SignatureDoesNotMatch"));
	assert_false(s3_retryable(404, "NoSuchKey"));
	assert_false(s3_retryable(400, "InvalidArgument"));
}

static void test_new_s3_settings(void **state)
{
	struct event_base *base = event_base_new();
	char *err = NULL;
	unsetenv("AWS_ACCESS_KEY_ID");
	unsetenv("AWS_SECRET_ACCESS_KEY");
	struct store_s3_options o = {.endpoint = "http://127.0.0.1:1", .bucket = "b"};
	assert_null(store_new_s3(base, &o, &err));
	assert_non_null(strstr(err, "credentials"));
	free(err);
	err = NULL;

	setenv("AWS_ACCESS_KEY_ID", "AKIDENV", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "envsecret", 1);
	setenv("AWS_SESSION_TOKEN", "tok", 1);
	setenv("AWS_REGION", "eu-central-1", 1);
	setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9/", 1);
	o.endpoint = NULL;
	struct store *s = store_new_s3(base, &o, &err);
	assert_non_null(s);
	assert_string_equal(s->ops->name, "s3");
	char *url = NULL;
	struct store_error e;
	assert_true(store_presign_get_at(s, "a b", 60, 1700000000, &url, &e));
	assert_non_null(strstr(url, "http://b.127.0.0.1:9/a%20b?"));
	assert_non_null(strstr(url, "X-Amz-Credential=AKIDENV%2F20231114%2Feu-central-1%2Fs3"));
	assert_non_null(strstr(url, "X-Amz-Security-Token=tok"));
	assert_non_null(strstr(url, "X-Amz-Expires=60"));
	assert_null(strstr(url, "envsecret"));
	free(url);
	assert_false(store_presign_get_at(s, "a", 901, 1700000000, &url, &e));
	assert_int_equal(e.kind, STORE_ERR_INVALID_ARG);
	assert_false(store_presign_get_at(s, "../a", 60, 1700000000, &url, &e));
	assert_int_equal(e.kind, STORE_ERR_INVALID_KEY);
	assert_false(store_presign_verify(s, "a", 1, "x", 0));
	store_free(s);

	/* Config wins over the environment; an empty endpoint is AWS's. */
	o.access_key_id = "AKIDCFG";
	o.secret_access_key = "cfgsecret";
	o.region = "us-west-2";
	o.prefix = "pre/";
	o.path_style = false;
	unsetenv("AWS_ENDPOINT_URL");
	s = store_new_s3(base, &o, &err);
	assert_non_null(s);
	assert_true(store_presign_get_at(s, "k", 5, 1700000000, &url, &e));
	assert_non_null(strstr(url, "https://b.s3.us-west-2.amazonaws.com/pre/k?"));
	assert_non_null(strstr(url, "AKIDCFG"));
	assert_null(strstr(url, "X-Amz-Security-Token"));
	free(url);
	store_free(s);

	o.endpoint = "http://h/with/path";
	assert_null(store_new_s3(base, &o, &err));
	free(err);
	unsetenv("AWS_ACCESS_KEY_ID");
	unsetenv("AWS_SECRET_ACCESS_KEY");
	unsetenv("AWS_SESSION_TOKEN");
	unsetenv("AWS_REGION");
	event_base_free(base);
}

/* store_get_range() on the file backend. -------------------------------------------- */

struct rres {
	int calls;
	bool failed;
	struct store_error err;
	char *data;
	size_t len;
	uint64_t size;
};

static void range_cb(const struct store_error *err, const struct store_object_info *info,
                     const char *data, size_t len, void *arg)
{
	struct rres *r = arg;
	r->calls++;
	r->failed = err != NULL;
	if (err) {
		r->err = *err;
		return;
	}
	assert_int_equal(data[len], '\0');
	r->data = xstrndup(data, len);
	r->len = len;
	r->size = info->size;
}

static void put_cb(const struct store_error *err, void *arg)
{
	if (err)
		fail_msg("put: %s", err->message);
	(*(int *)arg)++;
}

static void range(struct event_base *base, struct store *s, const char *key, uint64_t off,
                  size_t max, struct rres *r)
{
	memset(r, 0, sizeof(*r));
	store_get_range(s, key, off, max, range_cb, r);
	assert_int_equal(r->calls, 0);
	while (r->calls == 0)
		event_base_loop(base, EVLOOP_ONCE);
}

static void test_file_store_range(void **state)
{
	char dir[] = "/tmp/sl-range-XXXXXX";
	assert_non_null(mkdtemp(dir));
	struct event_base *base = event_base_new();
	char *err = NULL;
	struct store *s = store_new_file(base, dir, "", &err);
	assert_non_null(s);
	const size_t n = 700000; /* several STORE_CHUNK_BYTES passes */
	char *data = xmalloc(n);
	for (size_t i = 0; i < n; i++)
		data[i] = (char)('A' + i % 23);
	int done = 0;
	store_put_buf(s, "logs/x.log", data, n, NULL, put_cb, &done);
	while (!done)
		event_base_loop(base, EVLOOP_ONCE);

	struct rres r;
	range(base, s, "logs/x.log", 0, 10, &r);
	assert_false(r.failed);
	assert_int_equal(r.len, 10);
	assert_memory_equal(r.data, data, 10);
	assert_int_equal(r.size, n);
	free(r.data);
	range(base, s, "logs/x.log", 1234, 600000, &r);
	assert_int_equal(r.len, 600000);
	assert_memory_equal(r.data, data + 1234, 600000);
	free(r.data);
	range(base, s, "logs/x.log", n - 5, 100, &r); /* the tail: fewer */
	assert_int_equal(r.len, 5);
	assert_memory_equal(r.data, data + n - 5, 5);
	assert_int_equal(r.size, n);
	free(r.data);
	range(base, s, "logs/x.log", n, 100, &r); /* at the end: empty */
	assert_false(r.failed);
	assert_int_equal(r.len, 0);
	assert_int_equal(r.size, n);
	free(r.data);
	range(base, s, "logs/x.log", n + 1000, 100, &r);
	assert_int_equal(r.len, 0);
	free(r.data);
	range(base, s, "logs/x.log", 3, 0, &r);
	assert_false(r.failed);
	assert_int_equal(r.len, 0);
	assert_int_equal(r.size, n);
	free(r.data);
	range(base, s, "logs/missing", 0, 10, &r);
	assert_true(r.failed);
	assert_int_equal(r.err.kind, STORE_ERR_NOT_FOUND);
	range(base, s, "../x", 0, 10, &r);
	assert_int_equal(r.err.kind, STORE_ERR_INVALID_KEY);

	store_free(s);
	event_base_free(base);
	free(data);
	char cmd[64];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_urls),
	        cmocka_unit_test(test_entities),
	        cmocka_unit_test(test_list_parse),
	        cmocka_unit_test(test_list_garbage),
	        cmocka_unit_test(test_error_parse),
	        cmocka_unit_test(test_misc),
	        cmocka_unit_test(test_new_s3_settings),
	        cmocka_unit_test(test_file_store_range),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
