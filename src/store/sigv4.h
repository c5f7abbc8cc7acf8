/* sigv4: AWS Signature Version 4 (AWS4-HMAC-SHA256) as a pure module — the
 * canonical request, string to sign, signing key, Authorization value and
 * presigned-URL query. No I/O and no clock: the signing time is an argument.
 * Every string the caller hands in is validated; failures come back as false
 * plus a message in struct sigv4_error. */
#ifndef SL_STORE_SIGV4_H
#define SL_STORE_SIGV4_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "core/buf.h"

#define SIGV4_ALGORITHM "AWS4-HMAC-SHA256"
#define SIGV4_UNSIGNED_PAYLOAD "UNSIGNED-PAYLOAD"
#define SIGV4_EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define SIGV4_PRESIGN_MAX_EXPIRES 604800u

/* Flags for the canonical URI.
 * SIGV4_S3: the path is signed as sent — no dot-segment or slash
 *   normalization — and each segment is percent-decoded then encoded once
 *   with the RFC 3986 unreserved set (so "%2F" inside a key stays "%2F").
 * Without it (other services, and AWS's generic test suite) the path is
 *   normalized ("//", "/./", "/../" removed) and every byte outside the
 *   unreserved set and '/' is encoded, so an already-encoded "%20" becomes
 *   "%2520" (the double encoding those services expect). */
enum sigv4_flags {
	SIGV4_S3 = 1u << 0,
};

struct sigv4_header {
	const char *name;
	const char *value;
};

struct sigv4_request {
	const char *method;
	const char *path; /* raw, as sent: starts with '/', no '?' or '#' */
	const char *query; /* raw, without the '?'; may be NULL */
	const struct sigv4_header *headers; /* all of them are signed; host required */
	size_t nheaders;
	const char *payload_sha256_hex; /* 64 lowercase hex, or "UNSIGNED-PAYLOAD" */
};

struct sigv4_creds {
	const char *access_key_id;
	const char *secret_access_key;
	const char *session_token; /* may be NULL */
};

struct sigv4_scope {
	const char *region;
	const char *service; /* "s3" */
	time_t when;
};

struct sigv4_error {
	char msg[160];
};

/* Everything a signing produces; the intermediate strings are kept so tests
 * and debug logs can compare them. The caller frees with sigv4_result_free()
 * (which also wipes nothing secret: none of these is a secret). */
struct sigv4_result {
	char *canonical_request;
	char *string_to_sign;
	char *signed_headers;
	char *authorization; /* sigv4_sign(): the Authorization header value */
	char *query; /* sigv4_presign_url(): the whole query string to send */
	char signature[65];
};

void sigv4_result_free(struct sigv4_result *r);

/* The canonical forms. Each appends to out (which the caller owns). */
bool sigv4_canonical_uri(const char *path, unsigned flags, struct buf *out, struct sigv4_error *err)
        __attribute__((warn_unused_result));
/* Names and values are percent-decoded ('+' is a literal plus), then encoded
 * with A-Za-z0-9-_.~ and sorted by name, then value; "a" becomes "a=". */
bool sigv4_canonical_query(const char *query, struct buf *out, struct sigv4_error *err)
        __attribute__((warn_unused_result));
/* canon gets "name:value\n" lines (lowercased names, trimmed values with
 * whitespace runs collapsed, repeated names joined with ","), signed gets
 * "a;b;c". Either may be NULL. */
bool sigv4_canonical_headers(const struct sigv4_header *headers, size_t n, struct buf *canon,
                             struct buf *signed_names, struct sigv4_error *err)
        __attribute__((warn_unused_result));
bool sigv4_canonical_request(const struct sigv4_request *req, unsigned flags, struct buf *out,
                             struct buf *signed_names, struct sigv4_error *err)
        __attribute__((warn_unused_result));

/* "20130524T000000Z" and "20130524" for when (UTC). Either may be NULL. */
bool sigv4_format_time(time_t when, char amz_date[17], char date[9])
        __attribute__((warn_unused_result));
bool sigv4_string_to_sign(const struct sigv4_scope *scope, const char *canonical_request,
                          struct buf *out, struct sigv4_error *err)
        __attribute__((warn_unused_result));
/* kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service),
 * "aws4_request"). The caller should wipe key when done. */
void sigv4_signing_key(const char *secret, const char *date, const char *region,
                       const char *service, unsigned char key[32]);
/* hex = lowercase hex of HMAC-SHA256(key, string_to_sign). */
void sigv4_signature(const unsigned char key[32], const char *string_to_sign, char hex[65]);

/* Signs req for an Authorization header. With a session token, the request
 * must carry an X-Amz-Security-Token header equal to it (so it is signed). */
bool sigv4_sign(const struct sigv4_request *req, const struct sigv4_creds *creds,
                const struct sigv4_scope *scope, unsigned flags, struct sigv4_result *out,
                struct sigv4_error *err) __attribute__((warn_unused_result));
/* The Authorization value alone; *out is malloc'd, the caller frees it. */
bool sigv4_authorization_header(const struct sigv4_request *req, const struct sigv4_creds *creds,
                                const struct sigv4_scope *scope, unsigned flags, char **out,
                                struct sigv4_error *err) __attribute__((warn_unused_result));

/* A presigned GET: out->query is the query string to put after '?' — the
 * caller's own parameters (query, may be NULL) and X-Amz-Algorithm,
 * X-Amz-Credential, X-Amz-Date, X-Amz-Expires, X-Amz-SignedHeaders=host and
 * X-Amz-Security-Token (with a session token) in canonical order, then
 * X-Amz-Signature. The payload is UNSIGNED-PAYLOAD. expires is 1..604800;
 * callers enforce their own lower cap (stageline uses 900). */
bool sigv4_presign_url(const char *host, const char *path, const char *query, unsigned expires,
                       const struct sigv4_creds *creds, const struct sigv4_scope *scope,
                       unsigned flags, struct sigv4_result *out, struct sigv4_error *err)
        __attribute__((warn_unused_result));

/* The same for any method, with extra headers signed beside host (e.g.
 * content-length, so a presigned PUT must carry exactly that size): the
 * client must send each of them with that value. At most 8. */
bool sigv4_presign(const char *method, const char *host, const char *path, const char *query,
                   const struct sigv4_header *extra, size_t nextra, unsigned expires,
                   const struct sigv4_creds *creds, const struct sigv4_scope *scope, unsigned flags,
                   struct sigv4_result *out, struct sigv4_error *err)
        __attribute__((warn_unused_result));

#endif
