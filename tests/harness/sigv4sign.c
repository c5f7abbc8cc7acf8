/* sigv4sign: runs store/sigv4 on requests read as JSON lines from stdin and
 * writes one JSON line per request on stdout, for the integration tests
 * (tests/integration/sigv4_crosscheck.mjs compares it with
 * @smithy/signature-v4; test_sigv4_s3rver.py sends what it signs to a
 * signature-checking S3).
 *
 * Input, one object per line:
 *   {"method": "PUT", "path": "/bucket/a%20b", "query": "x=1&y",
 *    "headers": [["Host", "127.0.0.1:9000"], ["x-amz-date", "..."], ...],
 *    "payload_sha256": "<64 hex>" | "UNSIGNED-PAYLOAD",
 *    "region": "us-east-1", "service": "s3",
 *    "access_key": "AK", "secret": "SK", "session_token": "..." (optional),
 *    "time": 1369353600, "s3": true (default; false = generic path rules),
 *    "id": anything (echoed back)}
 * path and query are the raw wire forms (already percent-encoded), exactly
 * as sigv4_sign() takes them. All headers are signed; the caller includes
 * Host, X-Amz-Date and X-Amz-Content-Sha256 (and X-Amz-Security-Token with a
 * session token) itself.
 *
 * Presign mode: a line with "expires" (seconds) is passed to
 * sigv4_presign_url() instead: "host" (or the Host header) names the host,
 * query holds the caller's own parameters, method/headers/payload are not
 * used (a presigned URL is a GET with UNSIGNED-PAYLOAD, host signed).
 *
 * Output: {"id": ..., "ok": true, "canonical_request", "string_to_sign",
 * "signed_headers", "signature", and "authorization" (sign) or "query"
 * (presign: the whole query string to send)}, or {"id", "ok": false,
 * "error": "..."} when sigv4 refuses the input. Exit status 0 at EOF, 2 on
 * a line that is not a JSON object. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>

#include <jansson.h>

#include "store/sigv4.h"

static const char *str_field(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);

	return json_is_string(v) ? json_string_value(v) : NULL;
}

static json_t *fail(json_t *out, const char *msg)
{
	json_object_set_new(out, "ok", json_false());
	json_object_set_new(out, "error", json_string(msg));
	return out;
}

static json_t *process(json_t *in)
{
	json_t *out = json_object(), *jh = json_object_get(in, "headers"), *v;
	struct sigv4_header *headers = NULL;
	size_t nh = 0;
	struct sigv4_request req;
	struct sigv4_creds creds;
	struct sigv4_scope scope;
	struct sigv4_result r;
	struct sigv4_error err = {{0}};
	unsigned flags = SIGV4_S3;
	bool ok;

	if ((v = json_object_get(in, "id")) != NULL)
		json_object_set(out, "id", v);
	if (json_is_false(json_object_get(in, "s3")))
		flags = 0;
	if (jh != NULL && !json_is_array(jh))
		return fail(out, "headers must be an array of [name, value]");
	nh = jh ? json_array_size(jh) : 0;
	headers = calloc(nh ? nh : 1, sizeof *headers);
	if (headers == NULL)
		abort();
	for (size_t i = 0; i < nh; i++) {
		json_t *p = json_array_get(jh, i);

		if (!json_is_array(p) || json_array_size(p) != 2 ||
		    !json_is_string(json_array_get(p, 0)) ||
		    !json_is_string(json_array_get(p, 1))) {
			free(headers);
			return fail(out, "each header must be [name, value] strings");
		}
		headers[i].name = json_string_value(json_array_get(p, 0));
		headers[i].value = json_string_value(json_array_get(p, 1));
	}

	memset(&req, 0, sizeof req);
	req.method = str_field(in, "method");
	req.path = str_field(in, "path");
	req.query = str_field(in, "query");
	req.headers = headers;
	req.nheaders = nh;
	req.payload_sha256_hex = str_field(in, "payload_sha256");
	creds.access_key_id = str_field(in, "access_key");
	creds.secret_access_key = str_field(in, "secret");
	creds.session_token = str_field(in, "session_token");
	scope.region = str_field(in, "region");
	scope.service = str_field(in, "service");
	v = json_object_get(in, "time");
	if (!json_is_integer(v)) {
		free(headers);
		return fail(out, "time must be an integer (unix seconds)");
	}
	scope.when = (time_t)json_integer_value(v);

	v = json_object_get(in, "expires");
	if (v != NULL) {
		const char *host = str_field(in, "host");

		if (!json_is_integer(v) || json_integer_value(v) < 0 ||
		    json_integer_value(v) > 0xffffffffLL) {
			free(headers);
			return fail(out, "expires must be a non-negative integer");
		}
		for (size_t i = 0; host == NULL && i < nh; i++)
			if (strcasecmp(headers[i].name, "host") == 0)
				host = headers[i].value;
		ok = sigv4_presign_url(host, req.path, req.query, (unsigned)json_integer_value(v),
		                       &creds, &scope, flags, &r, &err);
	} else {
		ok = sigv4_sign(&req, &creds, &scope, flags, &r, &err);
	}
	free(headers);
	if (!ok)
		return fail(out, err.msg[0] ? err.msg : "sigv4 failed without a message");
	json_object_set_new(out, "ok", json_true());
	json_object_set_new(out, "canonical_request", json_string(r.canonical_request));
	json_object_set_new(out, "string_to_sign", json_string(r.string_to_sign));
	json_object_set_new(out, "signed_headers", json_string(r.signed_headers));
	json_object_set_new(out, "signature", json_string(r.signature));
	if (r.authorization != NULL)
		json_object_set_new(out, "authorization", json_string(r.authorization));
	if (r.query != NULL)
		json_object_set_new(out, "query", json_string(r.query));
	sigv4_result_free(&r);
	return out;
}

int main(void)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	unsigned long lineno = 0;

	while ((n = getline(&line, &cap, stdin)) != -1) {
		json_error_t jerr;
		json_t *in, *out;
		char *s;

		lineno++;
		if (n == 0 || (n == 1 && line[0] == '\n'))
			continue;
		in = json_loadb(line, (size_t)n, 0, &jerr);
		if (!json_is_object(in)) {
			fprintf(stderr, "sigv4sign: line %lu: not a JSON object: %s\n", lineno,
			        in ? "wrong type" : jerr.text);
			json_decref(in);
			free(line);
			return 2;
		}
		out = process(in);
		s = json_dumps(out, JSON_COMPACT | JSON_ENSURE_ASCII);
		if (s == NULL)
			abort();
		fputs(s, stdout);
		fputc('\n', stdout);
		fflush(stdout);
		free(s);
		json_decref(out);
		json_decref(in);
	}
	free(line);
	return 0;
}
