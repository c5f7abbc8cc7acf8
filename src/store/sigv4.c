/* sigv4: AWS Signature Version 4 signing as plain string work plus two
 * OpenSSL one-shot calls (SHA-256, HMAC-SHA256). The S3 client builds a
 * struct sigv4_request from what it is about to send and puts the result in
 * the Authorization header or the presigned URL; nothing here touches the
 * network, a file or the clock, so it is tested against AWS's published
 * vectors and fuzzed directly. */
#include "store/sigv4.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include "core/xmalloc.h"

static bool sigv4_fail(struct sigv4_error *err, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));

static bool sigv4_fail(struct sigv4_error *err, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL)
		return false;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof err->msg, fmt, ap);
	va_end(ap);
	return false;
}

void sigv4_result_free(struct sigv4_result *r)
{
	if (r == NULL)
		return;
	free(r->canonical_request);
	free(r->string_to_sign);
	free(r->signed_headers);
	free(r->authorization);
	free(r->query);
	memset(r, 0, sizeof *r);
}

static bool is_unreserved(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '_' || c == '.' || c == '~';
}

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static void encode_byte(struct buf *out, unsigned char c)
{
	static const char hex[] = "0123456789ABCDEF";

	if (is_unreserved(c)) {
		buf_addc(out, (char)c);
		return;
	}
	buf_addc(out, '%');
	buf_addc(out, hex[c >> 4]);
	buf_addc(out, hex[c & 15]);
}

static void encode_bytes(struct buf *out, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		encode_byte(out, (unsigned char)s[i]);
}

/* Decodes the %XX at s[i] (s has n bytes) into *c; what names the part. */
static bool decode_pct(const char *s, size_t n, size_t i, unsigned char *c, const char *what,
                       struct sigv4_error *err)
{
	int hi, lo;

	if (i + 2 >= n)
		return sigv4_fail(err, "invalid percent-encoding in %s", what);
	hi = hexval((unsigned char)s[i + 1]);
	lo = hexval((unsigned char)s[i + 2]);
	if (hi < 0 || lo < 0)
		return sigv4_fail(err, "invalid percent-encoding in %s", what);
	*c = (unsigned char)(hi << 4 | lo);
	if (*c == '\0')
		return sigv4_fail(err, "NUL byte (%%00) in %s", what);
	return true;
}

/* Percent-decodes s[0..n) then encodes it with the unreserved set. */
static bool reencode(struct buf *out, const char *s, size_t n, const char *what,
                     struct sigv4_error *err)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '%') {
			if (!decode_pct(s, n, i, &c, what, err))
				return false;
			i += 2;
		}
		encode_byte(out, c);
	}
	return true;
}

static bool check_path(const char *path, struct sigv4_error *err)
{
	if (path == NULL || path[0] != '/')
		return sigv4_fail(err, "path must start with '/'");
	for (const unsigned char *p = (const unsigned char *)path; *p != '\0'; p++) {
		if (*p < 0x20 || *p == 0x7f)
			return sigv4_fail(err, "control character in path");
		if (*p == '?' || *p == '#')
			return sigv4_fail(err, "'%c' in path (pass the query separately)", *p);
	}
	return true;
}

bool sigv4_canonical_uri(const char *path, unsigned flags, struct buf *out, struct sigv4_error *err)
{
	size_t n, start;

	if (!check_path(path, err))
		return false;
	n = strlen(path);
	for (size_t i = 0; i < n; i++) {
		if (path[i] == '%') {
			unsigned char c;

			if (!decode_pct(path, n, i, &c, "path", err))
				return false;
		}
	}

	if (flags & SIGV4_S3) {
		/* Segments as sent: '/' stays, each segment decoded and encoded once. */
		start = out->len;
		for (size_t i = 0; i < n; i++) {
			size_t j = i;

			while (j < n && path[j] != '/')
				j++;
			if (!reencode(out, path + i, j - i, "path", err)) {
				out->len = start;
				if (out->data != NULL)
					out->data[start] = '\0';
				return false;
			}
			if (j < n)
				buf_addc(out, '/');
			i = j;
		}
		return true;
	}

	/* Normalized: drop empty and "." segments, ".." removes the previous
	 * one (never above the root); keep a trailing slash. */
	{
		size_t *seg_off = xcalloc(n + 1, sizeof *seg_off);
		size_t *seg_len = xcalloc(n + 1, sizeof *seg_len);
		size_t nseg = 0;

		for (size_t i = 1; i <= n;) {
			size_t j = i;

			while (j < n && path[j] != '/')
				j++;
			if (j - i == 0 || (j - i == 1 && path[i] == '.')) {
				/* skip */
			} else if (j - i == 2 && path[i] == '.' && path[i + 1] == '.') {
				if (nseg > 0)
					nseg--;
			} else {
				seg_off[nseg] = i;
				seg_len[nseg] = j - i;
				nseg++;
			}
			i = j + 1;
		}
		buf_addc(out, '/');
		for (size_t k = 0; k < nseg; k++) {
			if (k > 0)
				buf_addc(out, '/');
			encode_bytes(out, path + seg_off[k], seg_len[k]);
		}
		if (nseg > 0 && path[n - 1] == '/')
			buf_addc(out, '/');
		free(seg_off);
		free(seg_len);
	}
	return true;
}

struct qparam {
	char *name;
	char *value;
	size_t order;
};

static int qparam_cmp(const void *a, const void *b)
{
	const struct qparam *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	if (c == 0)
		c = strcmp(x->value, y->value);
	if (c == 0)
		c = (x->order > y->order) - (x->order < y->order);
	return c;
}

static void qparams_free(struct qparam *q, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(q[i].name);
		free(q[i].value);
	}
	free(q);
}

/* Splits, decodes, re-encodes and sorts query into *out (*nout entries). */
static bool query_parse(const char *query, struct qparam **out, size_t *nout,
                        struct sigv4_error *err)
{
	struct qparam *q = NULL;
	size_t n = 0, cap = 0, len;

	*out = NULL;
	*nout = 0;
	if (query == NULL)
		return true;
	len = strlen(query);
	for (size_t i = 0; i < len;) {
		size_t j = i, eq;
		struct buf name = BUF_INIT, value = BUF_INIT;

		while (j < len && query[j] != '&')
			j++;
		if (j == i) {
			i = j + 1;
			continue;
		}
		eq = i;
		while (eq < j && query[eq] != '=')
			eq++;
		if (!reencode(&name, query + i, eq - i, "query", err) ||
		    (eq < j && !reencode(&value, query + eq + 1, j - eq - 1, "query", err))) {
			buf_free(&name);
			buf_free(&value);
			qparams_free(q, n);
			return false;
		}
		if (n == cap) {
			cap = cap ? cap * 2 : 8;
			q = xrealloc(q, cap * sizeof *q);
		}
		q[n].name = name.data ? buf_steal(&name) : xstrdup("");
		q[n].value = value.data ? buf_steal(&value) : xstrdup("");
		q[n].order = n;
		n++;
		i = j + 1;
	}
	if (n > 1)
		qsort(q, n, sizeof *q, qparam_cmp);
	*out = q;
	*nout = n;
	return true;
}

static void query_join(const struct qparam *q, size_t n, struct buf *out)
{
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			buf_addc(out, '&');
		buf_adds(out, q[i].name);
		buf_addc(out, '=');
		buf_adds(out, q[i].value);
	}
}

bool sigv4_canonical_query(const char *query, struct buf *out, struct sigv4_error *err)
{
	struct qparam *q;
	size_t n;

	if (!query_parse(query, &q, &n, err))
		return false;
	query_join(q, n, out);
	qparams_free(q, n);
	if (out->data == NULL)
		buf_adds(out, "");
	return true;
}

static bool is_tchar(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

struct hdr {
	char *name; /* lowercased */
	char *value; /* trimmed, runs of whitespace collapsed */
	size_t order;
};

static int hdr_cmp(const void *a, const void *b)
{
	const struct hdr *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	if (c == 0)
		c = (x->order > y->order) - (x->order < y->order);
	return c;
}

static void hdrs_free(struct hdr *h, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(h[i].name);
		free(h[i].value);
	}
	free(h);
}

static bool header_value_clean(const char *v, struct buf *out, struct sigv4_error *err)
{
	bool space = false;

	for (const unsigned char *p = (const unsigned char *)v; *p != '\0'; p++) {
		if (*p == ' ' || *p == '\t') {
			space = true;
			continue;
		}
		if (*p < 0x20 || *p == 0x7f)
			return sigv4_fail(err, "control character in header value");
		if (space && out->len > 0)
			buf_addc(out, ' ');
		space = false;
		buf_addc(out, (char)*p);
	}
	if (out->data == NULL)
		buf_adds(out, "");
	return true;
}

static bool headers_prepare(const struct sigv4_header *headers, size_t n, struct hdr **out,
                            struct sigv4_error *err)
{
	struct hdr *h;

	*out = NULL;
	if (n == 0)
		return sigv4_fail(err, "no headers to sign (host is required)");
	if (headers == NULL)
		return sigv4_fail(err, "headers missing");
	h = xcalloc(n, sizeof *h);
	for (size_t i = 0; i < n; i++) {
		const char *name = headers[i].name, *value = headers[i].value;
		struct buf v = BUF_INIT;

		if (name == NULL || name[0] == '\0' || value == NULL) {
			hdrs_free(h, i);
			return sigv4_fail(err, "header %zu has no name or value", i);
		}
		for (const unsigned char *p = (const unsigned char *)name; *p != '\0'; p++) {
			if (!is_tchar(*p)) {
				hdrs_free(h, i);
				return sigv4_fail(err, "invalid character in header name");
			}
		}
		if (!header_value_clean(value, &v, err)) {
			buf_free(&v);
			hdrs_free(h, i);
			return false;
		}
		h[i].name = xstrdup(name);
		for (char *p = h[i].name; *p != '\0'; p++)
			if (*p >= 'A' && *p <= 'Z')
				*p = (char)(*p - 'A' + 'a');
		h[i].value = buf_steal(&v);
		h[i].order = i;
	}
	qsort(h, n, sizeof *h, hdr_cmp);
	*out = h;
	return true;
}

bool sigv4_canonical_headers(const struct sigv4_header *headers, size_t n, struct buf *canon,
                             struct buf *signed_names, struct sigv4_error *err)
{
	struct hdr *h;

	if (!headers_prepare(headers, n, &h, err))
		return false;
	for (size_t i = 0; i < n; i++) {
		bool first = i == 0 || strcmp(h[i].name, h[i - 1].name) != 0;

		if (first) {
			if (canon != NULL) {
				if (i > 0)
					buf_addc(canon, '\n');
				buf_adds(canon, h[i].name);
				buf_addc(canon, ':');
			}
			if (signed_names != NULL) {
				if (i > 0)
					buf_addc(signed_names, ';');
				buf_adds(signed_names, h[i].name);
			}
		} else if (canon != NULL) {
			buf_addc(canon, ',');
		}
		if (canon != NULL)
			buf_adds(canon, h[i].value);
	}
	if (canon != NULL)
		buf_addc(canon, '\n');
	hdrs_free(h, n);
	return true;
}

static bool check_method(const char *m, struct sigv4_error *err)
{
	size_t n = 0;

	if (m == NULL || m[0] == '\0')
		return sigv4_fail(err, "empty method");
	for (; m[n] != '\0'; n++)
		if (!(m[n] >= 'A' && m[n] <= 'Z'))
			return sigv4_fail(err, "method must be uppercase letters");
	if (n > 16)
		return sigv4_fail(err, "method too long");
	return true;
}

static bool check_payload_hash(const char *h, struct sigv4_error *err)
{
	size_t n = 0;

	if (h == NULL)
		return sigv4_fail(err, "payload hash missing");
	if (strcmp(h, SIGV4_UNSIGNED_PAYLOAD) == 0)
		return true;
	for (; h[n] != '\0'; n++)
		if (!((h[n] >= '0' && h[n] <= '9') || (h[n] >= 'a' && h[n] <= 'f')))
			return sigv4_fail(err, "payload hash must be lowercase hex");
	if (n != 64)
		return sigv4_fail(err, "payload hash must be 64 hex digits");
	return true;
}

bool sigv4_canonical_request(const struct sigv4_request *req, unsigned flags, struct buf *out,
                             struct buf *signed_names, struct sigv4_error *err)
{
	struct buf sn = BUF_INIT;
	size_t start = out->len;
	bool ok;

	if (req == NULL)
		return sigv4_fail(err, "no request");
	if (!check_method(req->method, err) || !check_payload_hash(req->payload_sha256_hex, err))
		return false;
	buf_adds(out, req->method);
	buf_addc(out, '\n');
	ok = sigv4_canonical_uri(req->path, flags, out, err);
	if (ok)
		buf_addc(out, '\n');
	ok = ok && sigv4_canonical_query(req->query, out, err);
	if (ok)
		buf_addc(out, '\n');
	ok = ok && sigv4_canonical_headers(req->headers, req->nheaders, out, &sn, err);
	if (!ok) {
		buf_free(&sn);
		out->len = start;
		if (out->data != NULL)
			out->data[start] = '\0';
		return false;
	}
	buf_addc(out, '\n');
	buf_add(out, sn.data, sn.len);
	buf_addc(out, '\n');
	buf_adds(out, req->payload_sha256_hex);
	if (signed_names != NULL)
		buf_add(signed_names, sn.data, sn.len);
	buf_free(&sn);
	return true;
}

bool sigv4_format_time(time_t when, char amz_date[17], char date[9])
{
	struct tm tm;
	char tmp[80];

	if (when < 0 || gmtime_r(&when, &tm) == NULL || tm.tm_year + 1900 > 9999)
		return false;
	snprintf(tmp, sizeof tmp, "%04d%02d%02dT%02d%02d%02dZ", tm.tm_year + 1900, tm.tm_mon + 1,
	         tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
	if (amz_date != NULL)
		memcpy(amz_date, tmp, 17);
	if (date != NULL) {
		memcpy(date, tmp, 8);
		date[8] = '\0';
	}
	return true;
}

/* Region and service end up in the credential scope, '/'-separated. */
static bool check_scope_part(const char *s, const char *what, struct sigv4_error *err)
{
	if (s == NULL || s[0] == '\0')
		return sigv4_fail(err, "empty %s", what);
	if (strlen(s) > 64)
		return sigv4_fail(err, "%s too long", what);
	for (; *s != '\0'; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		      (*s >= '0' && *s <= '9') || *s == '-' || *s == '_'))
			return sigv4_fail(err, "invalid character in %s", what);
	return true;
}

static bool check_scope(const struct sigv4_scope *scope, char amz_date[17], char date[9],
                        struct sigv4_error *err)
{
	if (scope == NULL)
		return sigv4_fail(err, "no scope");
	if (!check_scope_part(scope->region, "region", err) ||
	    !check_scope_part(scope->service, "service", err))
		return false;
	if (!sigv4_format_time(scope->when, amz_date, date))
		return sigv4_fail(err, "signing time out of range");
	return true;
}

bool sigv4_string_to_sign(const struct sigv4_scope *scope, const char *canonical_request,
                          struct buf *out, struct sigv4_error *err)
{
	char amz_date[17], date[9], hex[65];
	unsigned char md[SHA256_DIGEST_LENGTH];

	if (!check_scope(scope, amz_date, date, err))
		return false;
	if (canonical_request == NULL)
		return sigv4_fail(err, "no canonical request");
	SHA256((const unsigned char *)canonical_request, strlen(canonical_request), md);
	buf_hex(hex, md, sizeof md);
	buf_printf(out, SIGV4_ALGORITHM "\n%s\n%s/%s/%s/aws4_request\n%s", amz_date, date,
	           scope->region, scope->service, hex);
	return true;
}

static void hmac256(const unsigned char *key, size_t keylen, const char *msg, unsigned char out[32])
{
	unsigned int len = 32;

	if (HMAC(EVP_sha256(), key, (int)keylen, (const unsigned char *)msg, strlen(msg), out,
	         &len) == NULL)
		abort(); /* only on allocation failure inside OpenSSL, as xmalloc does */
}

void sigv4_signing_key(const char *secret, const char *date, const char *region,
                       const char *service, unsigned char key[32])
{
	size_t n = strlen(secret);
	unsigned char *k = xmalloc(n + 4);
	unsigned char a[32], b[32];

	memcpy(k, "AWS4", 4);
	memcpy(k + 4, secret, n);
	hmac256(k, n + 4, date, a);
	hmac256(a, 32, region, b);
	hmac256(b, 32, service, a);
	hmac256(a, 32, "aws4_request", key);
	OPENSSL_cleanse(k, n + 4);
	OPENSSL_cleanse(a, sizeof a);
	OPENSSL_cleanse(b, sizeof b);
	free(k);
}

void sigv4_signature(const unsigned char key[32], const char *string_to_sign, char hex[65])
{
	unsigned char mac[32];

	hmac256(key, 32, string_to_sign, mac);
	buf_hex(hex, mac, sizeof mac);
}

static bool check_creds(const struct sigv4_creds *c, struct sigv4_error *err)
{
	if (c == NULL || c->access_key_id == NULL || c->access_key_id[0] == '\0')
		return sigv4_fail(err, "empty access key id");
	if (strlen(c->access_key_id) > 128)
		return sigv4_fail(err, "access key id too long");
	for (const unsigned char *p = (const unsigned char *)c->access_key_id; *p != '\0'; p++)
		if (*p <= 0x20 || *p >= 0x7f || *p == '/' || *p == ',' || *p == '=')
			return sigv4_fail(err, "invalid character in access key id");
	if (c->secret_access_key == NULL || c->secret_access_key[0] == '\0')
		return sigv4_fail(err, "empty secret access key");
	if (c->session_token != NULL) {
		if (c->session_token[0] == '\0')
			return sigv4_fail(err, "empty session token (pass NULL for none)");
		for (const unsigned char *p = (const unsigned char *)c->session_token; *p != '\0';
		     p++)
			if (*p < 0x20 || *p == 0x7f)
				return sigv4_fail(err, "control character in session token");
	}
	return true;
}

/* From the string to sign on: the key, the signature, the scope string. */
static void finish(const struct sigv4_creds *creds, const struct sigv4_scope *scope,
                   const char *date, const char *sts, char sig[65])
{
	unsigned char key[32];

	sigv4_signing_key(creds->secret_access_key, date, scope->region, scope->service, key);
	sigv4_signature(key, sts, sig);
	OPENSSL_cleanse(key, sizeof key);
}

static bool has_token_header(const struct sigv4_request *req, const char *token)
{
	for (size_t i = 0; i < req->nheaders; i++)
		if (req->headers[i].name != NULL &&
		    strcasecmp(req->headers[i].name, "x-amz-security-token") == 0 &&
		    req->headers[i].value != NULL && strcmp(req->headers[i].value, token) == 0)
			return true;
	return false;
}

bool sigv4_sign(const struct sigv4_request *req, const struct sigv4_creds *creds,
                const struct sigv4_scope *scope, unsigned flags, struct sigv4_result *out,
                struct sigv4_error *err)
{
	struct buf creq = BUF_INIT, sn = BUF_INIT, sts = BUF_INIT;
	char amz_date[17], date[9];
	bool host = false;

	memset(out, 0, sizeof *out);
	if (!check_creds(creds, err) || !check_scope(scope, amz_date, date, err))
		return false;
	if (req == NULL)
		return sigv4_fail(err, "no request");
	for (size_t i = 0; req->headers != NULL && i < req->nheaders; i++)
		if (req->headers[i].name != NULL && strcasecmp(req->headers[i].name, "host") == 0)
			host = true;
	if (!host)
		return sigv4_fail(err, "host header is required");
	if (creds->session_token != NULL && !has_token_header(req, creds->session_token))
		return sigv4_fail(err,
		                  "session token set but no matching X-Amz-Security-Token header");
	if (!sigv4_canonical_request(req, flags, &creq, &sn, err) ||
	    !sigv4_string_to_sign(scope, creq.data, &sts, err)) {
		buf_free(&creq);
		buf_free(&sn);
		return false;
	}
	finish(creds, scope, date, sts.data, out->signature);
	out->authorization = xasprintf(SIGV4_ALGORITHM " Credential=%s/%s/%s/%s/aws4_request, "
	                                               "SignedHeaders=%s, Signature=%s",
	                               creds->access_key_id, date, scope->region, scope->service,
	                               sn.data, out->signature);
	out->canonical_request = buf_steal(&creq);
	out->signed_headers = buf_steal(&sn);
	out->string_to_sign = buf_steal(&sts);
	return true;
}

bool sigv4_authorization_header(const struct sigv4_request *req, const struct sigv4_creds *creds,
                                const struct sigv4_scope *scope, unsigned flags, char **out,
                                struct sigv4_error *err)
{
	struct sigv4_result r;

	*out = NULL;
	if (!sigv4_sign(req, creds, scope, flags, &r, err))
		return false;
	*out = r.authorization;
	r.authorization = NULL;
	sigv4_result_free(&r);
	return true;
}

static const char *const presign_names[] = {
        "X-Amz-Algorithm",     "X-Amz-Credential",     "X-Amz-Date",      "X-Amz-Expires",
        "X-Amz-SignedHeaders", "X-Amz-Security-Token", "X-Amz-Signature",
};

bool sigv4_presign_url(const char *host, const char *path, const char *query, unsigned expires,
                       const struct sigv4_creds *creds, const struct sigv4_scope *scope,
                       unsigned flags, struct sigv4_result *out, struct sigv4_error *err)
{
	return sigv4_presign("GET", host, path, query, NULL, 0, expires, creds, scope, flags, out,
	                     err);
}

bool sigv4_presign(const char *method, const char *host, const char *path, const char *query,
                   const struct sigv4_header *extra, size_t nextra, unsigned expires,
                   const struct sigv4_creds *creds, const struct sigv4_scope *scope, unsigned flags,
                   struct sigv4_result *out, struct sigv4_error *err)
{
	struct buf raw = BUF_INIT, cq = BUF_INIT, creq = BUF_INIT, sts = BUF_INIT;
	struct buf names = BUF_INIT;
	struct qparam *q;
	size_t nq;
	char amz_date[17], date[9];
	struct sigv4_header h[9];
	struct sigv4_request req;
	struct buf cred = BUF_INIT;

	memset(out, 0, sizeof *out);
	if (!check_creds(creds, err) || !check_scope(scope, amz_date, date, err))
		return false;
	if (expires < 1 || expires > SIGV4_PRESIGN_MAX_EXPIRES)
		return sigv4_fail(err, "expires must be 1..%u seconds", SIGV4_PRESIGN_MAX_EXPIRES);
	if (host == NULL || host[0] == '\0')
		return sigv4_fail(err, "empty host");
	if (method == NULL || method[0] == '\0')
		return sigv4_fail(err, "empty method");
	if (nextra > 8)
		return sigv4_fail(err, "at most 8 extra signed headers");

	/* The caller's own parameters must not collide with ours. */
	if (!query_parse(query, &q, &nq, err))
		return false;
	for (size_t i = 0; i < nq; i++) {
		for (size_t k = 0; k < sizeof presign_names / sizeof presign_names[0]; k++) {
			if (strcmp(q[i].name, presign_names[k]) == 0) {
				qparams_free(q, nq);
				return sigv4_fail(err, "query already has %s", presign_names[k]);
			}
		}
	}
	qparams_free(q, nq);

	h[0].name = "host";
	h[0].value = host;
	for (size_t i = 0; i < nextra; i++)
		h[i + 1] = extra[i];
	if (!sigv4_canonical_headers(h, nextra + 1, NULL, &names, err)) {
		buf_free(&names);
		return false;
	}

	if (query != NULL && query[0] != '\0') {
		buf_adds(&raw, query);
		buf_addc(&raw, '&');
	}
	buf_printf(&cred, "%s/%s/%s/%s/aws4_request", creds->access_key_id, date, scope->region,
	           scope->service);
	buf_adds(&raw, "X-Amz-Algorithm=" SIGV4_ALGORITHM "&X-Amz-Credential=");
	encode_bytes(&raw, cred.data, cred.len);
	buf_printf(&raw, "&X-Amz-Date=%s&X-Amz-Expires=%u&X-Amz-SignedHeaders=", amz_date, expires);
	encode_bytes(&raw, names.data, names.len);
	if (creds->session_token != NULL) {
		buf_adds(&raw, "&X-Amz-Security-Token=");
		encode_bytes(&raw, creds->session_token, strlen(creds->session_token));
	}
	buf_free(&cred);

	req.method = method;
	req.path = path;
	req.query = raw.data;
	req.headers = h;
	req.nheaders = nextra + 1;
	req.payload_sha256_hex = SIGV4_UNSIGNED_PAYLOAD;
	if (!sigv4_canonical_request(&req, flags, &creq, NULL, err) ||
	    !sigv4_canonical_query(raw.data, &cq, err) ||
	    !sigv4_string_to_sign(scope, creq.data, &sts, err)) {
		buf_free(&raw);
		buf_free(&cq);
		buf_free(&creq);
		buf_free(&sts);
		buf_free(&names);
		return false;
	}
	buf_free(&raw);
	finish(creds, scope, date, sts.data, out->signature);
	buf_printf(&cq, "&X-Amz-Signature=%s", out->signature);
	out->query = buf_steal(&cq);
	out->canonical_request = buf_steal(&creq);
	out->string_to_sign = buf_steal(&sts);
	out->signed_headers = buf_steal(&names);
	return true;
}
