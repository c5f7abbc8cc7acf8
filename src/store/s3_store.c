/* The s3 backend of store.h: every operation is one S3 REST call (a list, a
 * ListObjectsV2 page loop) over httpc, signed with SigV4 (sigv4.c) afresh
 * on every try, so a retry after a backoff carries a current x-amz-date.
 * An operation is a small state machine driven by one timer: HASH (put_file:
 * the file's SHA-256, STORE_CHUNK_BYTES per loop pass, since S3 wants
 * x-amz-content-sha256 before the body), SEND (a request in flight), WAIT (a
 * backoff) and DELIVER (the callback runs from the timer, never from inside
 * httpc's own callback, so a callback may free the store). Bodies stream:
 * put_file hands httpc the file's descriptor, get_file lets httpc write into
 * a ".stl-tmp.*" file beside the destination that is renamed on success.
 * S3 error documents are parsed for their Code and Message only (never the
 * StringToSign or anything else a server echoes). The pure parts (addressing,
 * XML, dates, backoff) are in the first section and s3_store.h. */
#include "store/s3_store.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "core/buf.h"
#include "core/clock.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/xmalloc.h"
#include "httpc/httpc.h"
#include "store/sigv4.h"

/* Pure helpers. -------------------------------------------------------------------- */

bool s3_addr_parse(const char *endpoint, const char *bucket, bool path_style, struct s3_addr *out,
                   const char **why)
{
	struct httpc_url u;
	memset(out, 0, sizeof(*out));
	if (!httpc_url_parse(endpoint, &u, why))
		return false;
	if (strcmp(u.path, "/") != 0) {
		*why = "the endpoint must have no path or query";
		return false;
	}
	if (!bucket || !bucket[0] || strpbrk(bucket, "/?#% ")) {
		*why = "empty bucket or one with '/', '?', '#', '%' or a space";
		return false;
	}
	out->https = u.https;
	snprintf(out->host, sizeof(out->host), "%s", u.host);
	out->port = u.port;
	out->default_port = u.port == (u.https ? 443u : 80u);
	out->bucket = bucket;
	out->path_style = path_style;
	return true;
}

void s3_uri_encode(struct buf *out, const char *s, size_t n, bool keep_slash)
{
	static const char hex[] = "0123456789ABCDEF";
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		    c == '-' || c == '.' || c == '_' || c == '~' || (keep_slash && c == '/')) {
			buf_addc(out, (char)c);
		} else {
			char e[3] = {'%', hex[c >> 4], hex[c & 15]};
			buf_add(out, e, 3);
		}
	}
}

void s3_build(const struct s3_addr *a, const char *full_key, const char *query, struct buf *host,
              struct buf *path, struct buf *url)
{
	struct buf h = BUF_INIT, p = BUF_INIT;
	bool v6 = strchr(a->host, ':') != NULL;
	if (!a->path_style)
		buf_printf(&h, "%s.", a->bucket);
	buf_printf(&h, v6 ? "[%s]" : "%s", a->host);
	if (!a->default_port)
		buf_printf(&h, ":%u", a->port);
	if (a->path_style) {
		buf_addc(&p, '/');
		s3_uri_encode(&p, a->bucket, strlen(a->bucket), false);
		if (full_key)
			buf_addc(&p, '/');
	} else {
		buf_addc(&p, '/');
	}
	if (full_key)
		s3_uri_encode(&p, full_key, strlen(full_key), true);
	if (url)
		buf_printf(url, "%s://%s%s%s%s", a->https ? "https" : "http", h.data, p.data,
		           query && query[0] ? "?" : "", query && query[0] ? query : "");
	if (host)
		buf_add(host, h.data, h.len);
	if (path)
		buf_add(path, p.data, p.len);
	buf_free(&h);
	buf_free(&p);
}

static void utf8_put(struct buf *out, uint32_t cp)
{
	char b[4];
	if (cp < 0x80) {
		buf_addc(out, (char)cp);
	} else if (cp < 0x800) {
		b[0] = (char)(0xc0 | cp >> 6);
		b[1] = (char)(0x80 | (cp & 0x3f));
		buf_add(out, b, 2);
	} else if (cp < 0x10000) {
		b[0] = (char)(0xe0 | cp >> 12);
		b[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		b[2] = (char)(0x80 | (cp & 0x3f));
		buf_add(out, b, 3);
	} else {
		b[0] = (char)(0xf0 | cp >> 18);
		b[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
		b[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
		b[3] = (char)(0x80 | (cp & 0x3f));
		buf_add(out, b, 4);
	}
}

bool s3_xml_decode(const char *s, size_t n, struct buf *out)
{
	static const struct {
		const char *name;
		char c;
	} named[] = {{"amp", '&'}, {"lt", '<'}, {"gt", '>'}, {"quot", '"'}, {"apos", '\''}};
	size_t i = 0;
	while (i < n) {
		const char *amp = memchr(s + i, '&', n - i);
		size_t upto = amp ? (size_t)(amp - s) : n;
		buf_add(out, s + i, upto - i);
		if (!amp)
			break;
		const char *semi = memchr(amp, ';', n - upto);
		if (!semi || semi - amp > 12)
			return false;
		const char *name = amp + 1;
		size_t nl = (size_t)(semi - name);
		bool ok = false;
		if (nl >= 2 && name[0] == '#') {
			bool hexa = name[1] == 'x';
			const char *d = name + (hexa ? 2 : 1);
			uint32_t cp = 0;
			ok = d < semi;
			for (; ok && d < semi; d++) {
				int v = *d >= '0' && *d <= '9'           ? *d - '0'
				        : hexa && *d >= 'a' && *d <= 'f' ? *d - 'a' + 10
				        : hexa && *d >= 'A' && *d <= 'F' ? *d - 'A' + 10
				                                         : -1;
				if (v < 0 || cp > 0x10ffff) {
					ok = false;
					break;
				}
				cp = cp * (hexa ? 16 : 10) + (uint32_t)v;
			}
			if (ok && (cp == 0 || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)))
				ok = false;
			if (ok)
				utf8_put(out, cp);
		} else {
			for (size_t k = 0; k < sizeof(named) / sizeof(named[0]); k++) {
				if (strlen(named[k].name) == nl &&
				    memcmp(named[k].name, name, nl) == 0) {
					buf_addc(out, named[k].c);
					ok = true;
					break;
				}
			}
		}
		if (!ok)
			return false;
		i = (size_t)(semi - s) + 1;
	}
	return true;
}

/* A minimal XML walker for S3's documents: elements, text, comments, the
 * declaration and CDATA; no DTD. on_elem runs at each start tag (text NULL)
 * and each end tag (text = the decoded text directly inside the element). */
#define XML_DEPTH_MAX 16

struct xml_name {
	const char *p;
	size_t n;
};

typedef bool (*xml_elem_fn)(void *ctx, const struct xml_name *stack, size_t depth, const char *text,
                            size_t tlen, const char **why);

static bool xml_is(const struct xml_name *n, const char *s)
{
	return strlen(s) == n->n && memcmp(n->p, s, n->n) == 0;
}

static bool xml_walk(const char *x, size_t len, xml_elem_fn fn, void *ctx, const char **why)
{
	struct xml_name stack[XML_DEPTH_MAX];
	size_t depth = 0;
	bool root_seen = false;
	struct buf raw = BUF_INIT, text = BUF_INIT;
	bool ok = false;
	size_t i = 0;
#define XML_FAIL(msg)         \
	do {                  \
		*why = (msg); \
		goto out;     \
	} while (0)
	while (i < len) {
		if (x[i] != '<') {
			size_t j = i;
			while (j < len && x[j] != '<')
				j++;
			if (depth == 0) {
				for (size_t k = i; k < j; k++)
					if (x[k] != ' ' && x[k] != '\t' && x[k] != '\r' &&
					    x[k] != '\n')
						XML_FAIL("text outside the root element");
			} else {
				buf_add(&raw, x + i, j - i);
			}
			i = j;
			continue;
		}
		const char *rest = x + i;
		size_t left = len - i;
		if (left >= 2 && rest[1] == '?') {
			const char *e = memmem(rest, left, "?>", 2);
			if (!e)
				XML_FAIL("unterminated declaration");
			i = (size_t)(e - x) + 2;
			continue;
		}
		if (left >= 4 && memcmp(rest, "<!--", 4) == 0) {
			const char *e = memmem(rest + 4, left - 4, "-->", 3);
			if (!e)
				XML_FAIL("unterminated comment");
			i = (size_t)(e - x) + 3;
			continue;
		}
		if (left >= 9 && memcmp(rest, "<![CDATA[", 9) == 0) {
			const char *e = memmem(rest + 9, left - 9, "]]>", 3);
			if (!e || depth == 0)
				XML_FAIL("bad CDATA section");
			/* Kept literally: escape '&' so the decode leaves it. */
			for (const char *c = rest + 9; c < e; c++) {
				if (*c == '&')
					buf_adds(&raw, "&amp;");
				else
					buf_addc(&raw, *c);
			}
			i = (size_t)(e - x) + 3;
			continue;
		}
		if (left >= 2 && rest[1] == '!')
			XML_FAIL("DTDs are not accepted");
		const char *gt = memchr(rest, '>', left);
		if (!gt)
			XML_FAIL("truncated document (unterminated tag)");
		bool closing = rest[1] == '/';
		const char *np = rest + (closing ? 2 : 1);
		size_t nn = 0;
		while (np + nn < gt && np[nn] != ' ' && np[nn] != '\t' && np[nn] != '\r' &&
		       np[nn] != '\n' && np[nn] != '/')
			nn++;
		if (nn == 0)
			XML_FAIL("empty tag name");
		bool self_close = !closing && gt > rest && gt[-1] == '/';
		i = (size_t)(gt - x) + 1;
		if (closing) {
			for (const char *c = np + nn; c < gt; c++)
				if (*c != ' ' && *c != '\t' && *c != '\r' && *c != '\n')
					XML_FAIL("junk in an end tag");
			if (depth == 0 || stack[depth - 1].n != nn ||
			    memcmp(stack[depth - 1].p, np, nn) != 0)
				XML_FAIL("mismatched end tag");
			buf_reset(&text);
			if (!s3_xml_decode(raw.data ? raw.data : "", raw.len, &text))
				XML_FAIL("bad entity or character reference");
			if (!fn(ctx, stack, depth, text.data ? text.data : "", text.len, why))
				goto out;
			depth--;
			buf_reset(&raw);
			continue;
		}
		if (depth == 0 && root_seen)
			XML_FAIL("a second root element");
		if (depth == XML_DEPTH_MAX)
			XML_FAIL("elements nested too deep");
		stack[depth++] = (struct xml_name){np, nn};
		root_seen = true;
		buf_reset(&raw);
		if (!fn(ctx, stack, depth, NULL, 0, why))
			goto out;
		if (self_close) {
			if (!fn(ctx, stack, depth, "", 0, why))
				goto out;
			depth--;
		}
	}
	if (depth != 0 || !root_seen)
		XML_FAIL(root_seen ? "truncated document (unclosed elements)" : "no root element");
	ok = true;
out:
#undef XML_FAIL
	buf_free(&raw);
	buf_free(&text);
	return ok;
}

static bool parse_u64(const char *s, size_t n, uint64_t *out)
{
	uint64_t v = 0;
	if (n == 0 || n > 20)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		uint64_t d = (uint64_t)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*out = v;
	return true;
}

struct list_ctx {
	struct s3_list_page *page;
	struct s3_list_item cur;
	bool in_item, have_key;
};

static bool list_elem(void *arg, const struct xml_name *st, size_t depth, const char *text,
                      size_t tlen, const char **why)
{
	struct list_ctx *lc = arg;
	struct s3_list_page *pg = lc->page;
	if (depth == 1 && !xml_is(&st[0], "ListBucketResult")) {
		*why = "the root element is not ListBucketResult";
		return false;
	}
	if (depth == 2 && xml_is(&st[1], "Contents")) {
		if (!text) {
			memset(&lc->cur, 0, sizeof(lc->cur));
			lc->in_item = true;
			lc->have_key = false;
			return true;
		}
		if (!lc->have_key) {
			*why = "a Contents element without a Key";
			return false;
		}
		if (pg->n == pg->cap) {
			pg->cap = pg->cap ? pg->cap * 2 : 64;
			pg->items = xrealloc(pg->items, pg->cap * sizeof(*pg->items));
		}
		pg->items[pg->n++] = lc->cur;
		memset(&lc->cur, 0, sizeof(lc->cur));
		lc->in_item = false;
		return true;
	}
	if (!text)
		return true;
	if (depth == 3 && lc->in_item && xml_is(&st[1], "Contents")) {
		if (xml_is(&st[2], "Key")) {
			if (lc->have_key || memchr(text, '\0', tlen)) {
				*why = "a Contents element with two Keys or a NUL";
				return false;
			}
			lc->cur.key = xstrndup(text, tlen);
			lc->have_key = true;
		} else if (xml_is(&st[2], "Size")) {
			if (!parse_u64(text, tlen, &lc->cur.size)) {
				*why = "a Size that is not a number";
				return false;
			}
		} else if (xml_is(&st[2], "LastModified")) {
			int64_t us;
			lc->cur.mtime_ms = clock_parse_rfc3339(text, &us) ? us / 1000 : 0;
		}
		return true;
	}
	if (depth == 2 && xml_is(&st[1], "IsTruncated")) {
		if (tlen == 4 && memcmp(text, "true", 4) == 0)
			pg->truncated = true;
		else if (tlen == 5 && memcmp(text, "false", 5) == 0)
			pg->truncated = false;
		else {
			*why = "IsTruncated is neither true nor false";
			return false;
		}
	} else if (depth == 2 && xml_is(&st[1], "NextContinuationToken")) {
		free(pg->next_token);
		pg->next_token = xstrndup(text, tlen);
	}
	return true;
}

void s3_list_page_free(struct s3_list_page *p)
{
	for (size_t i = 0; i < p->n; i++)
		free(p->items[i].key);
	free(p->items);
	free(p->next_token);
	memset(p, 0, sizeof(*p));
}

bool s3_xml_parse_list(const char *xml, size_t len, struct s3_list_page *out, const char **why)
{
	const char *dummy;
	if (!why)
		why = &dummy;
	memset(out, 0, sizeof(*out));
	struct list_ctx lc = {.page = out};
	if (!xml_walk(xml, len, list_elem, &lc, why)) {
		free(lc.cur.key);
		s3_list_page_free(out);
		return false;
	}
	return true;
}

static bool error_elem(void *arg, const struct xml_name *st, size_t depth, const char *text,
                       size_t tlen, const char **why)
{
	struct s3_error_doc *d = arg;
	if (depth == 1 && !xml_is(&st[0], "Error")) {
		*why = "the root element is not Error";
		return false;
	}
	if (!text || depth != 2)
		return true;
	if (xml_is(&st[1], "Code"))
		snprintf(d->code, sizeof(d->code), "%.*s", (int)tlen, text);
	else if (xml_is(&st[1], "Message"))
		snprintf(d->message, sizeof(d->message), "%.*s", (int)tlen, text);
	else if (xml_is(&st[1], "ActualObjectSize"))
		d->have_size = parse_u64(text, tlen, &d->actual_size);
	return true;
}

bool s3_xml_parse_error(const char *xml, size_t len, struct s3_error_doc *out)
{
	const char *why;
	memset(out, 0, sizeof(*out));
	if (!xml_walk(xml, len, error_elem, out, &why) || !out->code[0]) {
		memset(out, 0, sizeof(*out));
		return false;
	}
	/* Keep the message printable on one line. */
	for (char *p = out->message; *p; p++)
		if ((unsigned char)*p < 0x20)
			*p = ' ';
	return true;
}

bool s3_parse_http_date(const char *s, int64_t *out_ms)
{
	struct tm tm;
	memset(&tm, 0, sizeof(tm));
	const char *e = s ? strptime(s, "%a, %d %b %Y %H:%M:%S GMT", &tm) : NULL;
	if (!e || *e)
		return false;
	time_t t = timegm(&tm);
	if (t == (time_t)-1)
		return false;
	*out_ms = (int64_t)t * 1000;
	return true;
}

bool s3_parse_content_range_total(const char *s, uint64_t *total)
{
	if (!s || strncasecmp(s, "bytes ", 6) != 0)
		return false;
	const char *slash = strchr(s, '/');
	if (!slash)
		return false;
	return parse_u64(slash + 1, strlen(slash + 1), total);
}

uint64_t s3_backoff_ms(unsigned attempt, unsigned base_ms, unsigned cap_ms, uint64_t rnd)
{
	uint64_t ceil = base_ms;
	for (unsigned i = 0; i < attempt && ceil < cap_ms; i++)
		ceil *= 2;
	if (ceil > cap_ms)
		ceil = cap_ms;
	return rnd % (ceil + 1);
}

bool s3_retryable(int status, const char *code)
{
	if (status >= 500 || status == 429)
		return true;
	return code &&
	       (strcmp(code, "SlowDown") == 0 || strcmp(code, "RequestTimeout") == 0 ||
	        strcmp(code, "InternalError") == 0 || strcmp(code, "ServiceUnavailable") == 0);
}

/* The backend. -------------------------------------------------------------------- */

#define S3_SERVICE "s3"
#define S3_DEFAULT_TRIES 5
#define S3_DEFAULT_BASE_MS 100
#define S3_DEFAULT_CAP_MS 5000
#define S3_LIST_PAGE_MAX (16u * 1024 * 1024) /* bytes of one ListObjectsV2 answer */
#define S3_FILE_MODE 0640

TAILQ_HEAD(s3_op_list, s3_op);

struct s3_store {
	struct store base;
	struct event_base *evbase;
	struct httpc *http;
	struct s3_addr addr;
	char *bucket, *region, *prefix;
	char *access_key_id, *secret_access_key, *session_token;
	char *endpoint; /* for logs */
	unsigned max_tries, base_ms, cap_ms;
	struct s3_op_list ops;
	unsigned depth; /* callbacks running */
	bool dead;
};

enum s3_kind {
	S3_PUT_FILE,
	S3_PUT_BUF,
	S3_GET_FILE,
	S3_GET_BUF,
	S3_GET_RANGE,
	S3_HEAD,
	S3_LIST,
	S3_DELETE
};

enum s3_phase { S3_START, S3_HASH, S3_SEND, S3_WAIT, S3_DELIVER };

struct s3_op {
	struct store_op base;
	struct s3_store *s3;
	TAILQ_ENTRY(s3_op) link;
	enum s3_kind kind;
	enum s3_phase phase;
	const char *opname;
	char *key; /* the caller's key (the prefix for a list) */
	char *full_key; /* with the store's prefix */
	char *content_type;
	char *local_path;
	union {
		store_done_cb done;
		store_head_cb head;
		store_get_buf_cb get_buf;
		store_list_cb list;
	} cb;
	void *arg;
	struct event *ev;
	int64_t start_us;
	unsigned tries;
	struct httpc_req *hreq;
	bool delivering, ok;
	struct store_error err;

	/* put */
	int src_fd;
	uint64_t src_size, hashed;
	EVP_MD_CTX *md;
	char *chunk;
	char sha_hex[65];
	char *data;
	size_t len;
	/* get_file */
	int dst_fd;
	char *tmp_path;
	/* get_buf, get_range, head */
	size_t max_bytes;
	uint64_t range_off, range_pos;
	bool range_head; /* get_range's HEAD after a 416 without a size */
	struct buf mem;
	uint64_t obj_size;
	int64_t mtime_ms;
	char *resp_type;
	/* list */
	struct store_list_entry *entries;
	size_t nentries, capentries;
	char *token;
};

static const struct store_ops s3_store_ops;

static void s3_set_error(struct s3_op *op, enum store_error_kind kind, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static void s3_set_error(struct s3_op *op, enum store_error_kind kind, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	op->err.kind = kind;
	vsnprintf(op->err.message, sizeof(op->err.message), fmt, ap);
	va_end(ap);
}

static void s3_count(const char *op, const char *outcome, int64_t start_us)
{
	metric_inc(metrics_default_get(M_EXTERNAL_CALLS_TOTAL), 1, S3_SERVICE, op, outcome);
	if (start_us)
		metric_observe(metrics_default_get(M_EXTERNAL_CALL_LATENCY_MS),
		               (double)(clock_mono_us() - start_us) / 1000.0, S3_SERVICE, op);
}

static void s3_schedule(struct s3_op *op, int64_t ms)
{
	struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
	evtimer_add(op->ev, &tv);
}

/* Releases op's files and request; a temporary download is removed. */
static void s3_op_release(struct s3_op *op)
{
	if (op->hreq) {
		httpc_req_cancel(op->hreq);
		op->hreq = NULL;
	}
	if (op->ev) {
		event_free(op->ev);
		op->ev = NULL;
	}
	if (op->src_fd >= 0)
		close(op->src_fd);
	op->src_fd = -1;
	if (op->dst_fd >= 0)
		close(op->dst_fd);
	op->dst_fd = -1;
	if (op->tmp_path) {
		if (unlink(op->tmp_path) < 0 && errno != ENOENT)
			log_warn("store.tmp_cleanup", "cannot remove a temporary file",
			         LF_STR("tmp", op->tmp_path), LF_STR("error", strerror(errno)));
		free(op->tmp_path);
		op->tmp_path = NULL;
	}
	if (op->md)
		EVP_MD_CTX_free(op->md);
	op->md = NULL;
	free(op->chunk);
	op->chunk = NULL;
}

static void s3_op_free(struct s3_op *op)
{
	s3_op_release(op);
	for (size_t i = 0; i < op->nentries; i++)
		free((char *)op->entries[i].key);
	free(op->entries);
	buf_free(&op->mem);
	free(op->token);
	free(op->resp_type);
	free(op->data);
	free(op->local_path);
	free(op->content_type);
	free(op->full_key);
	free(op->key);
	free(op);
}

static void s3_destroy(struct s3_store *s3)
{
	struct s3_op *op;
	while ((op = TAILQ_FIRST(&s3->ops))) {
		TAILQ_REMOVE(&s3->ops, op, link);
		s3_count(op->opname, "cancelled", 0);
		s3_op_free(op);
	}
	httpc_free(s3->http);
	if (s3->secret_access_key)
		OPENSSL_cleanse(s3->secret_access_key, strlen(s3->secret_access_key));
	free(s3->secret_access_key);
	free(s3->access_key_id);
	free(s3->session_token);
	free(s3->bucket);
	free(s3->region);
	free(s3->prefix);
	free(s3->endpoint);
	free(s3);
}

static int entry_cmp(const void *a, const void *b)
{
	return strcmp(((const struct store_list_entry *)a)->key,
	              ((const struct store_list_entry *)b)->key);
}

/* The callback, from op's timer; then op (and a store freed inside it) go. */
static void s3_op_deliver(struct s3_op *op)
{
	struct s3_store *s3 = op->s3;
	const struct store_error *err = op->ok ? NULL : &op->err;
	s3_op_release(op);
	s3_count(op->opname,
	         !err                               ? "success"
	         : err->kind == STORE_ERR_NOT_FOUND ? "not_found"
	                                            : "error",
	         op->start_us);
	if (err)
		log_debug("store.op_failed", err->message, LF_STR("op", op->opname),
		          LF_STR("key", op->key), LF_STR("kind", store_error_kind_name(err->kind)));
	struct store_object_info info = {
	        .key = op->key,
	        .size = op->obj_size,
	        .mtime_ms = op->mtime_ms,
	        .content_type = op->resp_type ? op->resp_type : "application/octet-stream"};
	op->delivering = true;
	s3->depth++;
	switch (op->kind) {
	case S3_PUT_FILE:
	case S3_PUT_BUF:
	case S3_GET_FILE:
	case S3_DELETE: op->cb.done(err, op->arg); break;
	case S3_HEAD: op->cb.head(err, err ? NULL : &info, op->arg); break;
	case S3_GET_BUF:
	case S3_GET_RANGE:
		if (op->kind == S3_GET_BUF)
			info.size = op->mem.len;
		if (err)
			op->cb.get_buf(err, NULL, NULL, 0, op->arg);
		else
			op->cb.get_buf(NULL, &info, op->mem.data ? op->mem.data : "", op->mem.len,
			               op->arg);
		break;
	case S3_LIST:
		if (!err && op->nentries > 1)
			qsort(op->entries, op->nentries, sizeof(*op->entries), entry_cmp);
		op->cb.list(err, err ? NULL : op->entries, err ? 0 : op->nentries, op->arg);
		break;
	}
	s3->depth--;
	TAILQ_REMOVE(&s3->ops, op, link);
	s3_op_free(op);
	if (s3->dead && s3->depth == 0)
		s3_destroy(s3);
}

static void s3_finish(struct s3_op *op, bool ok)
{
	op->ok = ok;
	op->phase = S3_DELIVER;
	s3_schedule(op, 0);
}

/* Requests. ---------------------------------------------------------------------- */

static void s3_http_done(struct httpc_req *req, const struct httpc_error *herr,
                         const struct httpc_response *resp, void *arg);
static bool s3_range_head(struct httpc_req *req, const struct httpc_response *resp, void *arg);
static bool s3_range_body(struct httpc_req *req, const char *data, size_t len, void *arg);

/* Signs and sends op's request (one try). False when it could not be built
 * (op->err set). */
static bool s3_send(struct s3_op *op)
{
	struct s3_store *s3 = op->s3;
	const char *method = "GET";
	struct buf query = BUF_INIT, host = BUF_INIT, path = BUF_INIT, url = BUF_INIT;
	const char *payload = SIGV4_EMPTY_SHA256;
	char range[64] = "";
	struct httpc_request rq = HTTPC_REQUEST_INIT;
	rq.sink = HTTPC_SINK_DISCARD;
	switch (op->kind) {
	case S3_PUT_FILE:
		method = "PUT";
		payload = op->sha_hex;
		rq.body_fd = op->src_fd;
		rq.body_offset = 0;
		rq.body_fd_len = op->src_size;
		break;
	case S3_PUT_BUF:
		method = "PUT";
		payload = op->sha_hex;
		rq.body = op->data;
		rq.body_len = op->len;
		break;
	case S3_GET_FILE:
		rq.sink = HTTPC_SINK_FD;
		rq.sink_fd = op->dst_fd;
		break;
	case S3_GET_BUF:
		rq.sink = HTTPC_SINK_BUF;
		rq.max_body = op->max_bytes;
		break;
	case S3_GET_RANGE:
		if (op->range_head || op->max_bytes == 0) {
			method = "HEAD";
			break;
		}
		snprintf(range, sizeof(range), "bytes=%" PRIu64 "-%" PRIu64, op->range_off,
		         op->range_off + op->max_bytes - 1);
		rq.sink = HTTPC_SINK_CB;
		rq.on_head = s3_range_head;
		rq.on_body = s3_range_body;
		break;
	case S3_HEAD: method = "HEAD"; break;
	case S3_DELETE: method = "DELETE"; break;
	case S3_LIST:
		/* Parameters in canonical (sorted) order, RFC 3986-encoded. */
		if (op->token) {
			buf_adds(&query, "continuation-token=");
			s3_uri_encode(&query, op->token, strlen(op->token), false);
			buf_addc(&query, '&');
		}
		buf_adds(&query, "list-type=2&prefix=");
		s3_uri_encode(&query, op->full_key, strlen(op->full_key), false);
		rq.sink = HTTPC_SINK_BUF;
		rq.max_body = S3_LIST_PAGE_MAX;
		break;
	}
	s3_build(&s3->addr, op->kind == S3_LIST ? NULL : op->full_key, query.data, &host, &path,
	         &url);

	char amz_date[17];
	time_t now = (time_t)(clock_now_us() / 1000000);
	bool ok = sigv4_format_time(now, amz_date, NULL);
	struct sigv4_header sh[8];
	size_t n = 0;
	sh[n++] = (struct sigv4_header){"host", host.data};
	sh[n++] = (struct sigv4_header){"x-amz-content-sha256", payload};
	sh[n++] = (struct sigv4_header){"x-amz-date", amz_date};
	if (s3->session_token)
		sh[n++] = (struct sigv4_header){"x-amz-security-token", s3->session_token};
	if (range[0])
		sh[n++] = (struct sigv4_header){"range", range};
	if (op->kind == S3_PUT_FILE || op->kind == S3_PUT_BUF)
		sh[n++] = (struct sigv4_header){"content-type", op->content_type};
	struct sigv4_request sreq = {.method = method,
	                             .path = path.data,
	                             .query = query.data,
	                             .headers = sh,
	                             .nheaders = n,
	                             .payload_sha256_hex = payload};
	struct sigv4_creds creds = {.access_key_id = s3->access_key_id,
	                            .secret_access_key = s3->secret_access_key,
	                            .session_token = s3->session_token};
	struct sigv4_scope scope = {.region = s3->region, .service = "s3", .when = now};
	struct sigv4_result res;
	struct sigv4_error serr = {{0}};
	ok = ok && sigv4_sign(&sreq, &creds, &scope, SIGV4_S3, &res, &serr);
	if (ok) {
		struct httpc_header hh[9];
		for (size_t i = 0; i < n; i++)
			hh[i] = (struct httpc_header){sh[i].name, sh[i].value};
		hh[n] = (struct httpc_header){"authorization", res.authorization};
		rq.method = method;
		rq.url = url.data;
		rq.headers = hh;
		rq.nheaders = n + 1;
		op->tries++;
		op->phase = S3_SEND;
		op->hreq = httpc_request(s3->http, &rq, s3_http_done, op);
		sigv4_result_free(&res);
	} else {
		s3_set_error(op, STORE_ERR_IO, "%s '%s': cannot sign the request: %s", op->opname,
		             op->key, serr.msg[0] ? serr.msg : "bad time");
	}
	buf_free(&query);
	buf_free(&host);
	buf_free(&path);
	buf_free(&url);
	return ok;
}

/* Before another try: put the destination back to empty. */
static bool s3_reset_for_retry(struct s3_op *op)
{
	buf_reset(&op->mem);
	op->range_pos = 0;
	op->obj_size = 0;
	free(op->resp_type);
	op->resp_type = NULL;
	if (op->dst_fd >= 0 &&
	    (ftruncate(op->dst_fd, 0) < 0 || lseek(op->dst_fd, 0, SEEK_SET) < 0)) {
		s3_set_error(op, STORE_ERR_IO, "get '%s': cannot reset '%s': %s", op->key,
		             op->tmp_path, strerror(errno));
		return false;
	}
	return true;
}

/* Another try after a backoff when tries are left; else the error stands. */
static void s3_retry_or_fail(struct s3_op *op, const char *reason)
{
	struct s3_store *s3 = op->s3;
	if (op->tries < s3->max_tries) {
		uint64_t rnd;
		id_random(&rnd, sizeof(rnd));
		uint64_t ms = s3_backoff_ms(op->tries - 1, s3->base_ms, s3->cap_ms, rnd);
		log_info("store.s3_retry", "S3 request failed; retrying", LF_STR("op", op->opname),
		         LF_STR("key", op->key), LF_UINT("try", op->tries), LF_UINT("delay_ms", ms),
		         LF_STR("reason", reason));
		op->phase = S3_WAIT;
		s3_schedule(op, (int64_t)ms);
		return;
	}
	size_t l = strlen(op->err.message);
	if (op->tries > 1 && l + 40 < sizeof(op->err.message))
		snprintf(op->err.message + l, sizeof(op->err.message) - l, " (after %u tries)",
		         op->tries);
	s3_finish(op, false);
}

static void s3_take_info(struct s3_op *op, const struct httpc_response *resp)
{
	const char *cl = httpc_response_header(resp, "Content-Length");
	const char *lm = httpc_response_header(resp, "Last-Modified");
	const char *ct = httpc_response_header(resp, "Content-Type");
	uint64_t size;
	if (cl && parse_u64(cl, strlen(cl), &size))
		op->obj_size = size;
	int64_t ms;
	if (lm && s3_parse_http_date(lm, &ms))
		op->mtime_ms = ms;
	free(op->resp_type);
	op->resp_type = ct ? xstrdup(ct) : NULL;
}

static bool s3_range_head(struct httpc_req *req, const struct httpc_response *resp, void *arg)
{
	struct s3_op *op = arg;
	if (resp->status == 206) {
		const char *cr = httpc_response_header(resp, "Content-Range");
		uint64_t total = 0;
		unsigned long long a = 0;
		bool have_total = cr && sscanf(cr, "bytes %llu-", &a) == 1 &&
		                  s3_parse_content_range_total(cr, &total);
		if (!have_total)
			a = op->range_off;
		op->range_pos = a;
		s3_take_info(op, resp);
		op->obj_size = total;
		if (have_total && a >= total) {
			/* "bytes 0-0/0" for an empty object (s3rver; S3 says 416):
			 * nothing to read, whatever Content-Length claims. Ending
			 * here cancels the request, so no done callback follows. */
			buf_reset(&op->mem);
			op->hreq = NULL;
			s3_finish(op, true);
			return false;
		}
	} else if (resp->status == 200) {
		op->range_pos = 0; /* the server ignored Range: the window is cut below */
		s3_take_info(op, resp);
	}
	return true;
}

static bool s3_range_body(struct httpc_req *req, const char *data, size_t len, void *arg)
{
	struct s3_op *op = arg;
	uint64_t lo = op->range_off, hi = op->range_off + op->max_bytes;
	uint64_t a = op->range_pos, b = op->range_pos + len;
	if (b > lo && a < hi) {
		uint64_t from = a > lo ? a : lo, to = b < hi ? b : hi;
		buf_add(&op->mem, data + (from - a), (size_t)(to - from));
	}
	op->range_pos = b;
	return true;
}

static void s3_http_done(struct httpc_req *req, const struct httpc_error *herr,
                         const struct httpc_response *resp, void *arg)
{
	struct s3_op *op = arg;
	op->hreq = NULL;
	if (herr) {
		enum store_error_kind kind =
		        herr->kind == HTTPC_ERR_TOO_LARGE ? STORE_ERR_TOO_LARGE : STORE_ERR_IO;
		if (kind == STORE_ERR_TOO_LARGE && op->kind == S3_GET_BUF)
			s3_set_error(op, kind, "object '%s' is more than the %zu allowed", op->key,
			             op->max_bytes);
		else
			s3_set_error(op, kind, "%s '%s': %s: %s", op->opname, op->key,
			             httpc_error_kind_name(herr->kind), herr->message);
		if (httpc_error_transient(herr) && s3_reset_for_retry(op))
			s3_retry_or_fail(op, herr->message);
		else
			s3_finish(op, false);
		return;
	}
	int st = resp->status;
	if (st >= 200 && st <= 299) {
		switch (op->kind) {
		case S3_GET_BUF:
			s3_take_info(op, resp);
			buf_add(&op->mem, resp->body, resp->body_len);
			op->obj_size = op->mem.len;
			break;
		case S3_HEAD: s3_take_info(op, resp); break;
		case S3_GET_RANGE:
			if (op->range_head || op->max_bytes == 0) {
				s3_take_info(op, resp);
				buf_reset(&op->mem);
			} else if (st == 200) {
				op->obj_size = resp->body_bytes;
			} else if (op->obj_size == 0) {
				s3_set_error(op, STORE_ERR_IO,
				             "get_range '%s': a 206 without a Content-Range total",
				             op->key);
				s3_finish(op, false);
				return;
			}
			break;
		case S3_GET_FILE:
			/* No fsync: a download is scratch, as in the file store. */
			if (close(op->dst_fd) < 0) {
				op->dst_fd = -1;
				s3_set_error(op, STORE_ERR_IO, "get '%s': cannot write '%s': %s",
				             op->key, op->local_path, strerror(errno));
				s3_finish(op, false);
				return;
			}
			op->dst_fd = -1;
			if (rename(op->tmp_path, op->local_path) < 0) {
				s3_set_error(op, STORE_ERR_IO,
				             "get '%s': cannot rename to '%s': %s", op->key,
				             op->local_path, strerror(errno));
				s3_finish(op, false);
				return;
			}
			free(op->tmp_path);
			op->tmp_path = NULL;
			break;
		case S3_LIST: {
			struct s3_list_page pg;
			const char *why = "";
			if (!s3_xml_parse_list(resp->body, resp->body_len, &pg, &why)) {
				s3_set_error(op, STORE_ERR_IO,
				             "list '%s': unreadable ListObjectsV2 answer: %s",
				             op->key, why);
				s3_finish(op, false);
				return;
			}
			size_t plen = strlen(op->s3->prefix);
			for (size_t i = 0; i < pg.n; i++) {
				const char *k = pg.items[i].key;
				if (strncmp(k, op->s3->prefix, plen) != 0 ||
				    !store_key_valid(k + plen, strlen(k + plen), NULL) ||
				    strncmp(k + plen, op->key, strlen(op->key)) != 0)
					continue;
				if (op->nentries == STORE_LIST_MAX) {
					s3_list_page_free(&pg);
					s3_set_error(op, STORE_ERR_TOO_LARGE,
					             "list '%s': more than %d objects", op->key,
					             STORE_LIST_MAX);
					s3_finish(op, false);
					return;
				}
				if (op->nentries == op->capentries) {
					op->capentries = op->capentries ? op->capentries * 2 : 64;
					op->entries = xrealloc(
					        op->entries, op->capentries * sizeof(*op->entries));
				}
				op->entries[op->nentries++] =
				        (struct store_list_entry){.key = xstrdup(k + plen),
				                                  .size = pg.items[i].size,
				                                  .mtime_ms = pg.items[i].mtime_ms};
			}
			bool more = pg.truncated;
			free(op->token);
			op->token = pg.next_token ? xstrdup(pg.next_token) : NULL;
			s3_list_page_free(&pg);
			if (more && !op->token) {
				s3_set_error(op, STORE_ERR_IO,
				             "list '%s': a truncated page without a continuation "
				             "token",
				             op->key);
				s3_finish(op, false);
				return;
			}
			if (more) {
				op->tries = 0; /* each page has its own tries */
				if (!s3_send(op))
					s3_finish(op, false);
				return;
			}
			break;
		}
		default: break;
		}
		s3_finish(op, true);
		return;
	}

	struct s3_error_doc doc;
	bool have_doc = s3_xml_parse_error(resp->body, resp->body_len, &doc);
	if (op->kind == S3_GET_RANGE && st == 416 && !op->range_head) {
		/* Past the end: no bytes, and the size from wherever it shows. */
		uint64_t total = 0;
		buf_reset(&op->mem);
		if (s3_parse_content_range_total(httpc_response_header(resp, "Content-Range"),
		                                 &total) ||
		    (have_doc && doc.have_size && ((total = doc.actual_size), true))) {
			op->obj_size = total;
			s3_finish(op, true);
			return;
		}
		op->range_head = true;
		op->tries = 0;
		if (!s3_send(op))
			s3_finish(op, false);
		return;
	}
	if (st == 404 && (!have_doc || strcmp(doc.code, "NoSuchKey") == 0 || op->kind == S3_HEAD ||
	                  op->range_head)) {
		s3_set_error(op, STORE_ERR_NOT_FOUND, "no object '%s'", op->key);
		s3_finish(op, false);
		return;
	}
	/* a 4xx that no retry changes (a bad signature, no access, no bucket) */
	enum store_error_kind kind =
	        st >= 400 && st < 500 && !s3_retryable(st, have_doc ? doc.code : NULL)
	                ? STORE_ERR_DENIED
	                : STORE_ERR_IO;
	if (have_doc)
		s3_set_error(op, kind, "%s '%s': S3 %d %s: %s", op->opname, op->key, st, doc.code,
		             doc.message);
	else
		s3_set_error(op, kind, "%s '%s': S3 answered %d", op->opname, op->key, st);
	if (s3_retryable(st, have_doc ? doc.code : NULL) && s3_reset_for_retry(op))
		s3_retry_or_fail(op, op->err.message);
	else
		s3_finish(op, false);
}

/* Starting. ------------------------------------------------------------------------ */

static bool s3_start_put_file(struct s3_op *op)
{
	op->src_fd = open(op->local_path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (op->src_fd < 0) {
		s3_set_error(op, STORE_ERR_IO, "put '%s': cannot open '%s': %s", op->key,
		             op->local_path, strerror(errno));
		return false;
	}
	if (fstat(op->src_fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		s3_set_error(op, STORE_ERR_IO, "put '%s': '%s' is not a regular file", op->key,
		             op->local_path);
		return false;
	}
	op->src_size = (uint64_t)st.st_size;
	op->md = EVP_MD_CTX_new();
	op->chunk = xmalloc(STORE_CHUNK_BYTES);
	if (!op->md || EVP_DigestInit_ex(op->md, EVP_sha256(), NULL) != 1) {
		s3_set_error(op, STORE_ERR_IO, "put '%s': SHA-256 unavailable", op->key);
		return false;
	}
	op->phase = S3_HASH;
	return true;
}

/* One STORE_CHUNK_BYTES piece of the file's hash. *eof when it is whole. */
static bool s3_hash_step(struct s3_op *op, bool *eof)
{
	*eof = false;
	uint64_t left = op->src_size - op->hashed;
	size_t n = left < STORE_CHUNK_BYTES ? (size_t)left : STORE_CHUNK_BYTES;
	ssize_t r = 0;
	if (n > 0) {
		do
			r = pread(op->src_fd, op->chunk, n, (off_t)op->hashed);
		while (r < 0 && errno == EINTR);
		if (r < 0) {
			s3_set_error(op, STORE_ERR_IO, "put '%s': read of '%s' failed: %s", op->key,
			             op->local_path, strerror(errno));
			return false;
		}
		EVP_DigestUpdate(op->md, op->chunk, (size_t)r);
		op->hashed += (uint64_t)r;
	}
	if (r == 0 || op->hashed == op->src_size) {
		unsigned char d[32];
		unsigned int dl = 0;
		EVP_DigestFinal_ex(op->md, d, &dl);
		buf_hex(op->sha_hex, d, 32);
		op->src_size = op->hashed; /* a file that shrank is sent as hashed */
		free(op->chunk);
		op->chunk = NULL;
		*eof = true;
	}
	return true;
}

static bool s3_start_get_file(struct s3_op *op)
{
	const char *lp = op->local_path;
	const char *slash = strrchr(lp, '/');
	const char *base = slash ? slash + 1 : lp;
	if (base[0] == '\0' || strcmp(base, ".") == 0 || strcmp(base, "..") == 0) {
		s3_set_error(op, STORE_ERR_INVALID_ARG, "get '%s': local path '%s' names no file",
		             op->key, lp);
		return false;
	}
	char hex[17];
	id_random_hex(hex, 8);
	op->tmp_path =
	        xasprintf("%.*s%s%s", slash ? (int)(slash - lp + 1) : 0, lp, STORE_TMP_PREFIX, hex);
	op->dst_fd = open(op->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, S3_FILE_MODE);
	if (op->dst_fd < 0) {
		s3_set_error(op, STORE_ERR_IO, "get '%s': cannot create a file beside '%s': %s",
		             op->key, lp, strerror(errno));
		free(op->tmp_path);
		op->tmp_path = NULL;
		return false;
	}
	return true;
}

static void s3_op_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct s3_op *op = arg;
	bool eof;
	switch (op->phase) {
	case S3_START:
		if (op->kind == S3_PUT_FILE) {
			if (!s3_start_put_file(op))
				break;
			s3_schedule(op, 0);
			return;
		}
		if (op->kind == S3_GET_FILE && !s3_start_get_file(op))
			break;
		if (!s3_send(op))
			break;
		return;
	case S3_HASH:
		if (!s3_hash_step(op, &eof))
			break;
		if (!eof) {
			s3_schedule(op, 0);
			return;
		}
		if (!s3_send(op))
			break;
		return;
	case S3_WAIT:
		if (!s3_send(op))
			break;
		return;
	case S3_SEND: return;
	case S3_DELIVER: s3_op_deliver(op); return;
	}
	op->ok = false;
	s3_op_deliver(op);
}

static struct s3_op *s3_op_start(struct store *s, enum s3_kind kind, const char *opname,
                                 const char *key, void *arg)
{
	struct s3_store *s3 = (struct s3_store *)s;
	struct s3_op *op = xcalloc(1, sizeof(*op));
	op->base.store = s;
	op->s3 = s3;
	op->kind = kind;
	op->opname = opname;
	op->key = xstrdup(key ? key : "");
	op->full_key = xasprintf("%s%s", s3->prefix, op->key);
	op->arg = arg;
	op->src_fd = op->dst_fd = -1;
	op->start_us = clock_mono_us();
	op->ev = evtimer_new(s3->evbase, s3_op_timer_cb, op);
	if (!op->ev) {
		fprintf(stderr, "stagelined: out of memory (evtimer_new)\n");
		abort();
	}
	TAILQ_INSERT_TAIL(&s3->ops, op, link);
	const char *why = NULL;
	bool valid = kind == S3_LIST ? key && store_prefix_valid(key, strlen(key), &why)
	                             : key && store_key_valid(key, strlen(key), &why);
	if (!valid) {
		s3_set_error(op, STORE_ERR_INVALID_KEY, "%s: invalid %s: %s", opname,
		             kind == S3_LIST ? "prefix" : "key", why ? why : "NULL");
		s3_finish(op, false);
	} else {
		s3_schedule(op, 0);
	}
	return op;
}

static struct store_op *s3_put_file(struct store *s, const char *key, const char *local_path,
                                    const char *content_type, store_done_cb cb, void *arg)
{
	struct s3_op *op = s3_op_start(s, S3_PUT_FILE, "put", key, arg);
	op->cb.done = cb;
	op->local_path = xstrdup(local_path ? local_path : "");
	op->content_type = xstrdup(content_type && content_type[0] ? content_type
	                                                           : "application/octet-stream");
	if (op->phase == S3_START && !local_path) {
		s3_set_error(op, STORE_ERR_INVALID_ARG, "put '%s': no local path", op->key);
		s3_finish(op, false);
	}
	return &op->base;
}

static struct store_op *s3_put_buf(struct store *s, const char *key, const void *data, size_t len,
                                   const char *content_type, store_done_cb cb, void *arg)
{
	struct s3_op *op = s3_op_start(s, S3_PUT_BUF, "put", key, arg);
	op->cb.done = cb;
	op->content_type = xstrdup(content_type && content_type[0] ? content_type
	                                                           : "application/octet-stream");
	op->data = xmalloc(len ? len : 1);
	if (len)
		memcpy(op->data, data, len);
	op->len = len;
	unsigned char d[32];
	unsigned int dl = 0;
	EVP_Digest(op->data, len, d, &dl, EVP_sha256(), NULL);
	buf_hex(op->sha_hex, d, 32);
	return &op->base;
}

static struct store_op *s3_get_file(struct store *s, const char *key, const char *local_path,
                                    store_done_cb cb, void *arg)
{
	struct s3_op *op = s3_op_start(s, S3_GET_FILE, "get", key, arg);
	op->cb.done = cb;
	op->local_path = xstrdup(local_path ? local_path : "");
	return &op->base;
}

static struct store_op *s3_get_buf(struct store *s, const char *key, size_t max_bytes,
                                   store_get_buf_cb cb, void *arg)
{
	struct s3_op *op = s3_op_start(s, S3_GET_BUF, "get", key, arg);
	op->cb.get_buf = cb;
	op->max_bytes = max_bytes;
	return &op->base;
}

static struct store_op *s3_get_range(struct store *s, const char *key, uint64_t offset,
                                     size_t max_bytes, store_get_buf_cb cb, void *arg)
{
	struct s3_op *op = s3_op_start(s, S3_GET_RANGE, "get_range", key, arg);
	op->cb.get_buf = cb;
	op->range_off = offset;
	op->max_bytes = max_bytes;
	if (op->phase == S3_START && offset > UINT64_MAX - max_bytes) {
		s3_set_error(op, STORE_ERR_INVALID_ARG, "get_range '%s': offset too large",
		             op->key);
		s3_finish(op, false);
	}
	return &op->base;
}

static struct store_op *s3_head(struct store *s, const char *key, store_head_cb cb, void *arg)
{
	struct s3_op *op = s3_op_start(s, S3_HEAD, "head", key, arg);
	op->cb.head = cb;
	return &op->base;
}

static struct store_op *s3_list(struct store *s, const char *prefix, store_list_cb cb, void *arg)
{
	struct s3_op *op = s3_op_start(s, S3_LIST, "list", prefix, arg);
	op->cb.list = cb;
	return &op->base;
}

static struct store_op *s3_del(struct store *s, const char *key, store_done_cb cb, void *arg)
{
	struct s3_op *op = s3_op_start(s, S3_DELETE, "delete", key, arg);
	op->cb.done = cb;
	return &op->base;
}

static void s3_cancel(struct store_op *sop)
{
	struct s3_op *op = (struct s3_op *)sop;
	if (op->delivering)
		return;
	TAILQ_REMOVE(&op->s3->ops, op, link);
	s3_count(op->opname, "cancelled", 0);
	s3_op_free(op);
}

static void s3_free(struct store *s)
{
	struct s3_store *s3 = (struct s3_store *)s;
	if (s3->depth == 0) {
		s3_destroy(s3);
		return;
	}
	struct s3_op *op, *next;
	for (op = TAILQ_FIRST(&s3->ops); op; op = next) {
		next = TAILQ_NEXT(op, link);
		if (!op->delivering)
			s3_cancel(&op->base);
	}
	s3->dead = true;
}

static bool s3_presign(struct store *s, const char *method, const char *key, int64_t ttl_s,
                       int64_t now_s, uint64_t size, char **out_url, struct store_error *err);

static bool s3_presign_get(struct store *s, const char *key, int64_t ttl_s, int64_t now_s,
                           char **out_url, struct store_error *err)
{
	return s3_presign(s, "GET", key, ttl_s, now_s, 0, out_url, err);
}

/* The link signs content-length: S3 takes the PUT only with exactly size. */
static bool s3_presign_put(struct store *s, const char *key, int64_t ttl_s, int64_t now_s,
                           uint64_t size, char **out_url, struct store_error *err)
{
	return s3_presign(s, "PUT", key, ttl_s, now_s, size, out_url, err);
}

static bool s3_presign(struct store *s, const char *method, const char *key, int64_t ttl_s,
                       int64_t now_s, uint64_t size, char **out_url, struct store_error *err)
{
	struct s3_store *s3 = (struct s3_store *)s;
	int64_t start = clock_mono_us();
	struct store_error dummy;
	if (!err)
		err = &dummy;
	const char *why = NULL;
	*out_url = NULL;
	if (!key || !store_key_valid(key, strlen(key), &why)) {
		err->kind = STORE_ERR_INVALID_KEY;
		snprintf(err->message, sizeof(err->message), "presign: invalid key: %s",
		         why ? why : "NULL");
	} else if (ttl_s < 1 || ttl_s > STORE_PRESIGN_MAX_TTL_S) {
		err->kind = STORE_ERR_INVALID_ARG;
		snprintf(err->message, sizeof(err->message),
		         "presign '%s': ttl %" PRId64 "s is not within 1..%ds", key, ttl_s,
		         STORE_PRESIGN_MAX_TTL_S);
	} else {
		char *full = xasprintf("%s%s", s3->prefix, key);
		struct buf host = BUF_INIT, path = BUF_INIT;
		s3_build(&s3->addr, full, NULL, &host, &path, NULL);
		struct sigv4_creds creds = {.access_key_id = s3->access_key_id,
		                            .secret_access_key = s3->secret_access_key,
		                            .session_token = s3->session_token};
		struct sigv4_scope scope = {
		        .region = s3->region, .service = "s3", .when = (time_t)now_s};
		struct sigv4_result res;
		struct sigv4_error serr = {{0}};
		char len[24];
		snprintf(len, sizeof len, "%" PRIu64, size);
		struct sigv4_header cl = {"content-length", len};
		bool put = strcmp(method, "PUT") == 0;
		bool ok = sigv4_presign(method, host.data, path.data, NULL, put ? &cl : NULL,
		                        put ? 1 : 0, (unsigned)ttl_s, &creds, &scope, SIGV4_S3,
		                        &res, &serr);
		if (ok) {
			*out_url = xasprintf("%s://%s%s?%s", s3->addr.https ? "https" : "http",
			                     host.data, path.data, res.query);
			sigv4_result_free(&res);
		}
		free(full);
		buf_free(&host);
		buf_free(&path);
		if (ok) {
			s3_count("presign", "success", start);
			return true;
		}
		err->kind = STORE_ERR_INVALID_ARG;
		snprintf(err->message, sizeof(err->message), "presign '%s': %s", key, serr.msg);
	}
	s3_count("presign", "error", start);
	return false;
}

static const struct store_ops s3_store_ops = {
        .name = S3_SERVICE,
        .put_file = s3_put_file,
        .put_buf = s3_put_buf,
        .get_file = s3_get_file,
        .get_buf = s3_get_buf,
        .get_range = s3_get_range,
        .head = s3_head,
        .list = s3_list,
        .del = s3_del,
        .cancel = s3_cancel,
        .presign_get = s3_presign_get,
        .presign_verify = NULL,
        .presign_put = s3_presign_put,
        .presign_verify_put = NULL,
        .free = s3_free,
};

/* The value, else the first non-empty environment variable, else NULL. */
static const char *s3_pick(const char *v, const char *env1, const char *env2)
{
	if (v && v[0])
		return v;
	const char *e = env1 ? getenv(env1) : NULL;
	if (e && e[0])
		return e;
	e = env2 ? getenv(env2) : NULL;
	return e && e[0] ? e : NULL;
}

struct store *store_new_s3(struct event_base *base, const struct store_s3_options *o, char **err)
{
	const char *region = s3_pick(o->region, "AWS_REGION", "AWS_DEFAULT_REGION");
	if (!region)
		region = "us-east-1";
	const char *ak = o->access_key_id, *sk = o->secret_access_key, *token = o->session_token;
	if (!(ak && ak[0]) && !(sk && sk[0])) {
		ak = s3_pick(NULL, "AWS_ACCESS_KEY_ID", NULL);
		sk = s3_pick(NULL, "AWS_SECRET_ACCESS_KEY", NULL);
		if (!(token && token[0]))
			token = s3_pick(NULL, "AWS_SESSION_TOKEN", NULL);
	}
	if (!ak || !ak[0] || !sk || !sk[0]) {
		*err = xstrdup(
		        "s3 store: no credentials (store.s3.access_key_id and "
		        "secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)");
		return NULL;
	}
	char *endpoint;
	const char *ep = s3_pick(o->endpoint, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL");
	if (ep) {
		endpoint = xstrdup(ep);
		size_t l = strlen(endpoint);
		while (l > 0 && endpoint[l - 1] == '/' &&
		       strstr(endpoint, "://") + 3 < endpoint + l)
			endpoint[--l] = '\0'; /* "http://h:1/" is the same endpoint */
	} else {
		endpoint = xasprintf("https://s3.%s.amazonaws.com", region);
	}
	struct s3_store *s3 = xcalloc(1, sizeof(*s3));
	s3->bucket = xstrdup(o->bucket ? o->bucket : "");
	const char *why = NULL;
	if (!s3_addr_parse(endpoint, s3->bucket, o->path_style, &s3->addr, &why)) {
		*err = xasprintf("s3 store: endpoint '%s', bucket '%s': %s", endpoint, s3->bucket,
		                 why);
		free(endpoint);
		free(s3->bucket);
		free(s3);
		return NULL;
	}
	struct httpc_options ho = {.max_conns_per_host = o->max_conns,
	                           .connect_timeout_ms = o->connect_timeout_ms,
	                           .io_timeout_ms = o->io_timeout_ms,
	                           .ca_file = o->ca_file};
	s3->http = httpc_new(base, &ho, err);
	if (!s3->http) {
		free(endpoint);
		free(s3->bucket);
		free(s3);
		return NULL;
	}
	s3->base.ops = &s3_store_ops;
	s3->evbase = base;
	s3->endpoint = endpoint;
	s3->region = xstrdup(region);
	s3->prefix = xstrdup(o->prefix ? o->prefix : "");
	s3->access_key_id = xstrdup(ak);
	s3->secret_access_key = xstrdup(sk);
	s3->session_token = token && token[0] ? xstrdup(token) : NULL;
	s3->max_tries = o->max_tries ? o->max_tries : S3_DEFAULT_TRIES;
	s3->base_ms = o->backoff_base_ms ? o->backoff_base_ms : S3_DEFAULT_BASE_MS;
	s3->cap_ms = o->backoff_cap_ms ? o->backoff_cap_ms : S3_DEFAULT_CAP_MS;
	TAILQ_INIT(&s3->ops);
	log_info("store.open", "s3 store ready", LF_STR("endpoint", s3->endpoint),
	         LF_STR("bucket", s3->bucket), LF_STR("region", s3->region),
	         LF_STR("prefix", s3->prefix), LF_BOOL("path_style", o->path_style));
	return &s3->base;
}
