/* libFuzzer target for the SigV4 canonicalizer (store/sigv4). Arbitrary
 * bytes become a method, a path, a query and headers, and go through the
 * canonical URI, query, headers and request, a full signing and a presign.
 *
 * Input layout: byte 0 is control, the rest is NUL-separated fields
 * (a C string cannot hold a NUL, so NUL is the natural cut):
 *   bit 0     set: S3 path rules (SIGV4_S3); clear: normalized paths
 *   bit 1     set: sign with a session token (and send it as a header)
 *   fields    method, path, query, then header name/value pairs (at most 8)
 *
 * Invariants (a violation traps):
 *  - the canonical query is idempotent: canonicalizing its own output
 *    succeeds and gives the same string; it holds only unreserved bytes,
 *    '=', '&' and %XX with uppercase hex;
 *  - the S3 canonical URI is idempotent the same way; a normalized one
 *    starts with '/' and has no empty, "." or ".." segment;
 *  - a canonical request has no control byte other than '\n' and as many
 *    signed header names as header lines; a signature is 64 lowercase hex;
 *  - a presigned query ends with "&X-Amz-Signature=" and that signature;
 *  - a failed call leaves its output buffer as it was;
 *  - everything is freed (LeakSanitizer). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/buf.h"
#include "core/xmalloc.h"
#include "store/sigv4.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_FIELDS 19

static bool is_unreserved(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '_' || c == '.' || c == '~';
}

static bool is_upper_hex(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F');
}

/* Only unreserved bytes, %XX (uppercase) and the bytes in extra. */
static bool encoded_only(const char *s, const char *extra)
{
	for (size_t i = 0; s[i] != '\0'; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '%') {
			if (!is_upper_hex((unsigned char)s[i + 1]) ||
			    !is_upper_hex((unsigned char)s[i + 2]))
				return false;
			i += 2;
		} else if (!is_unreserved(c) && strchr(extra, c) == NULL) {
			return false;
		}
	}
	return true;
}

static void check_query(const char *query)
{
	struct buf a = BUF_INIT, b = BUF_INIT;
	struct sigv4_error err;

	buf_adds(&a, "pre");
	if (!sigv4_canonical_query(query, &a, &err)) {
		if (strcmp(a.data, "pre") != 0)
			__builtin_trap();
		buf_free(&a);
		return;
	}
	if (!encoded_only(a.data + 3, "=&"))
		__builtin_trap();
	if (!sigv4_canonical_query(a.data + 3, &b, &err))
		__builtin_trap();
	if (strcmp(a.data + 3, b.data) != 0)
		__builtin_trap();
	buf_free(&a);
	buf_free(&b);
}

static void check_uri(const char *path)
{
	struct buf a = BUF_INIT, b = BUF_INIT, n = BUF_INIT;
	struct sigv4_error err;
	bool ok_s3, ok_norm;

	buf_adds(&a, "pre");
	ok_s3 = sigv4_canonical_uri(path, SIGV4_S3, &a, &err);
	if (!ok_s3 && strcmp(a.data, "pre") != 0)
		__builtin_trap();
	if (ok_s3) {
		if (a.data[3] != '/' || !encoded_only(a.data + 3, "/"))
			__builtin_trap();
		if (!sigv4_canonical_uri(a.data + 3, SIGV4_S3, &b, &err) ||
		    strcmp(a.data + 3, b.data) != 0)
			__builtin_trap();
	}
	ok_norm = sigv4_canonical_uri(path, 0, &n, &err);
	if (ok_norm != ok_s3)
		__builtin_trap(); /* both modes validate the same way */
	if (ok_norm) {
		const char *s = n.data;

		if (s[0] != '/' || !encoded_only(s, "/"))
			__builtin_trap();
		if (strstr(s, "//") != NULL || strstr(s, "/./") != NULL ||
		    strstr(s, "/../") != NULL)
			__builtin_trap();
		size_t len = strlen(s);
		if ((len >= 2 && strcmp(s + len - 2, "/.") == 0) ||
		    (len >= 3 && strcmp(s + len - 3, "/..") == 0))
			__builtin_trap();
	}
	buf_free(&a);
	buf_free(&b);
	buf_free(&n);
}

static bool is_sig(const char *s)
{
	size_t i = 0;

	for (; s[i] != '\0'; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return i == 64;
}

static void check_request(const char *method, const char *path, const char *query,
                          const struct sigv4_header *h, size_t nh, unsigned flags,
                          const char *token)
{
	struct sigv4_request req = {method, path, query, h, nh, SIGV4_EMPTY_SHA256};
	struct sigv4_creds creds = {"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
	                            token};
	struct sigv4_scope scope = {"us-east-1", "s3", (time_t)1369353600};
	struct sigv4_result res;
	struct sigv4_error err;
	struct buf creq = BUF_INIT, sn = BUF_INIT;

	if (sigv4_canonical_request(&req, flags, &creq, &sn, &err)) {
		size_t lines = 0, names = 1;

		for (const unsigned char *p = (const unsigned char *)creq.data; *p != '\0'; p++) {
			if (*p == '\n')
				lines++;
			else if (*p < 0x20 || *p == 0x7f)
				__builtin_trap();
		}
		for (const char *p = sn.data; *p != '\0'; p++)
			if (*p == ';')
				names++;
		/* method, uri, query, one line per name, blank, signed, payload */
		if (lines != 3 + names + 2)
			__builtin_trap();
	} else if (creq.len != 0) {
		__builtin_trap();
	}
	buf_free(&creq);
	buf_free(&sn);

	if (sigv4_sign(&req, &creds, &scope, flags, &res, &err)) {
		if (!is_sig(res.signature) || strstr(res.authorization, res.signature) == NULL)
			__builtin_trap();
		sigv4_result_free(&res);
	} else if (res.authorization != NULL || res.canonical_request != NULL) {
		__builtin_trap();
	}

	if (sigv4_presign_url("example.com", path, query, 900, &creds, &scope, flags, &res, &err)) {
		const char *sig = strstr(res.query, "&X-Amz-Signature=");

		if (sig == NULL || !is_sig(sig + 17) || strcmp(sig + 17, res.signature) != 0)
			__builtin_trap();
		sigv4_result_free(&res);
	} else if (res.query != NULL) {
		__builtin_trap();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *copy, *fields[MAX_FIELDS];
	size_t nf = 0, nh;
	struct sigv4_header h[8];
	unsigned flags;
	const char *token = NULL;

	if (size < 1)
		return 0;
	flags = (data[0] & 1) ? SIGV4_S3 : 0;
	copy = xmalloc(size);
	memcpy(copy, data + 1, size - 1);
	copy[size - 1] = '\0';
	fields[nf++] = copy;
	for (size_t i = 0; i + 1 < size && nf < MAX_FIELDS; i++) {
		if (copy[i] == '\0')
			fields[nf++] = copy + i + 1;
	}
	while (nf < 3)
		fields[nf++] = "";

	check_query(fields[2]);
	check_uri(fields[1]);

	nh = 0;
	for (size_t i = 3; i + 1 < nf && nh < 7; i += 2) {
		h[nh].name = fields[i];
		h[nh].value = fields[i + 1];
		nh++;
	}
	if (data[0] & 2) {
		token = "FQoGZXIvYXdzEXAMPLE/token+==";
		h[nh].name = "X-Amz-Security-Token";
		h[nh].value = token;
		nh++;
	}
	check_request(fields[0], fields[1], fields[2], h, nh, flags, token);
	free(copy);
	return 0;
}
