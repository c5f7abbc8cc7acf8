/* jwt: verification of JSON Web Tokens (RFC 7519) in JWS compact form
 * (RFC 7515) signed with HS256, RS256 or ES256, against keys given at start.
 * Pure: no I/O, no clock (the caller passes the time), no event loop. It
 * owns the verifier (its keys as OpenSSL objects) and the claims it reads.
 *
 * Keys decide algorithms, never tokens: every key has one fixed algorithm
 * (an HMAC secret is HS256, an RSA public key RS256, an EC P-256 key ES256)
 * and a token is verified only with a key of the algorithm its header names.
 * So an "HS256" token signed with an RSA public key's PEM bytes finds no
 * HMAC key and fails (JWT_ALG_MISMATCH), and "alg": "none" always fails.
 * Keys embedded in or referenced from a token (jwk, jku, x5u, x5c) are
 * ignored: nothing is ever fetched. */
#ifndef SL_HTTP_JWT_H
#define SL_HTTP_JWT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The longest token accepted, in bytes. */
#define JWT_MAX_TOKEN 8192
/* The most clock skew a verifier tolerates. */
#define JWT_MAX_LEEWAY_MS (5 * 60 * 1000)
#define JWT_PROJECT_MAX 63 /* projects.id is [a-z0-9-]{1,63} */
#define JWT_KID_MAX 128

enum jwt_alg { JWT_HS256, JWT_RS256, JWT_ES256 };

/* Why a token was refused; jwt_result_name() gives the log's word. */
enum jwt_result {
	JWT_OK,
	JWT_TOO_LARGE, /* more than JWT_MAX_TOKEN bytes */
	JWT_SEGMENTS, /* not exactly three non-empty dot-separated segments */
	JWT_BASE64, /* a segment that is not canonical unpadded base64url */
	JWT_BAD_HEADER, /* not a JSON object, duplicate keys, alg/kid not strings */
	JWT_CRIT, /* a "crit" header: no extension is understood here */
	JWT_ALG_NONE, /* "none", in any case */
	JWT_ALG_UNSUPPORTED, /* any other algorithm than HS256, RS256, ES256 */
	JWT_ALG_MISMATCH, /* no configured key of the token's algorithm, or its kid's key has another */
	JWT_UNKNOWN_KID, /* a kid that names no configured key */
	JWT_BAD_SIGNATURE, /* wrong length, or it does not verify */
	JWT_BAD_CLAIMS, /* payload not a JSON object, duplicate keys, a claim of the wrong type */
	JWT_NO_EXP, /* every token must expire */
	JWT_EXPIRED, /* now >= exp + leeway */
	JWT_NOT_YET_VALID, /* now + leeway < nbf */
	JWT_BAD_ISSUER,
	JWT_BAD_AUDIENCE,
	JWT_BAD_PROJECT, /* the project claim is missing or not a project id */
	JWT_BAD_SCOPES, /* the scopes claim is neither a string nor an array of strings */
};

struct jwt_opts {
	const char *issuer; /* "iss" must equal it; NULL or "": not checked */
	const char
	        *audience; /* "aud" (a string or an array) must hold it; NULL or "": not checked */
	int64_t leeway_ms; /* 0..JWT_MAX_LEEWAY_MS, for exp and nbf */
	const char *project_claim; /* NULL: "project" */
	const char *scopes_claim; /* NULL: "scope" */
};

/* What a verified token says. */
struct jwt_claims {
	enum jwt_alg alg;
	char kid[JWT_KID_MAX + 1]; /* "" when the header has none */
	char subject[JWT_KID_MAX + 1]; /* "sub", cut to fit; "" when absent */
	char project[JWT_PROJECT_MAX + 1];
	unsigned scopes; /* APIKEY_SCOPE_*; names that are not scopes grant nothing */
	int64_t exp_ms; /* epoch milliseconds */
};

struct jwt_verifier;

/* A verifier with no keys yet. Returns NULL (and a heap message in *err)
 * when the leeway is out of range or a claim name is empty. Freed with
 * jwt_verifier_free(). */
struct jwt_verifier *jwt_verifier_new(const struct jwt_opts *opts, char **err)
        __attribute__((warn_unused_result));
void jwt_verifier_free(struct jwt_verifier *v);

/* Adds an HS256 key: at least 32 bytes of secret (RFC 7518 §3.2), copied.
 * kid may be NULL or "" (the key then also serves tokens without a kid). */
bool jwt_verifier_add_hmac(struct jwt_verifier *v, const void *secret, size_t len, const char *kid,
                           char **err) __attribute__((warn_unused_result));
/* Adds a public key from PEM text ("-----BEGIN PUBLIC KEY-----"): an RSA
 * key of at least 2048 bits becomes RS256, an EC key on P-256 ES256;
 * anything else fails. *alg (may be NULL) gets the algorithm. */
bool jwt_verifier_add_pem(struct jwt_verifier *v, const char *pem, size_t len, const char *kid,
                          enum jwt_alg *alg, char **err) __attribute__((warn_unused_result));
size_t jwt_verifier_nkeys(const struct jwt_verifier *v);

/* Verifies token (len bytes, need not be NUL-terminated) at now_ms (epoch
 * milliseconds): shape, header, signature, then claims, in that order, so
 * nothing of an unsigned payload is believed. Fills out only on JWT_OK. */
enum jwt_result jwt_verify(const struct jwt_verifier *v, const char *token, size_t len,
                           int64_t now_ms, struct jwt_claims *out)
        __attribute__((warn_unused_result));
const char *jwt_result_name(enum jwt_result r);
const char *jwt_alg_name(enum jwt_alg alg);

/* Canonical unpadded base64url (RFC 7515 §2): only [A-Za-z0-9_-], no '=',
 * unused trailing bits zero. Decodes into out (at least len * 3 / 4 + 1
 * bytes); returns false on anything else. Exposed for tests. */
bool jwt_b64url_decode(const char *s, size_t len, uint8_t *out, size_t *outlen)
        __attribute__((warn_unused_result));
/* Encodes without padding into out (at least (len + 2) / 3 * 4 + 1 bytes,
 * NUL-terminated); returns the length. */
size_t jwt_b64url_encode(const uint8_t *in, size_t len, char *out);

/* True for a string of the projects.id shape: [a-z0-9-]{1,63}. */
bool jwt_project_id_ok(const char *s, size_t len);

#endif
