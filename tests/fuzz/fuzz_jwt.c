/* libFuzzer target for http/jwt: arbitrary bytes as a bearer token, through
 * the whole verification (segments, base64url, the header's and payload's
 * JSON, algorithm and key choice, signature, claims).
 *
 * Input layout: byte 0 is control, the rest is the token.
 *   bit 0  sign the rest as HS256 with the verifier's key first, so the
 *          fuzzer reaches the claims: the input is then "header.payload"
 *          (each base64url-encoded here) and the signature is made here
 *   bit 1  the verifier also has an issuer and an audience to check
 *
 * Invariants (a violation traps):
 *  - a result is one of enum jwt_result, and its name is not NULL;
 *  - JWT_OK only for a token signed with the verifier's key (bit 0), with a
 *    project of the projects.id shape and an exp;
 *  - base64url decoding and encoding round-trip;
 *  - everything is freed (LeakSanitizer). */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/jwt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                          \
	do {                                                                                 \
		if (!(cond)) {                                                               \
			fprintf(stderr, "fuzz_jwt: invariant failed: %s (line %d)\n", #cond, \
			        __LINE__);                                                   \
			__builtin_trap();                                                    \
		}                                                                            \
	} while (0)

static const char key[] = "fuzz-jwt-hs256-secret-of-32-bytes-or-more";

static struct jwt_verifier *verifier(bool claims)
{
	struct jwt_opts o = {
	        .issuer = claims ? "https://issuer.example" : NULL,
	        .audience = claims ? "stageline" : NULL,
	        .leeway_ms = 60000,
	};
	char *err = NULL;
	struct jwt_verifier *v = jwt_verifier_new(&o, &err);
	CHECK(v != NULL);
	CHECK(jwt_verifier_add_hmac(v, key, sizeof key - 1, NULL, &err));
	return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1 || size > JWT_MAX_TOKEN + 1)
		return 0;
	unsigned ctl = data[0];
	const uint8_t *in = data + 1;
	size_t n = size - 1;
	struct jwt_verifier *v = verifier(ctl & 2);
	char *tok = NULL;
	size_t toklen = 0;
	bool signed_here = false;
	if (ctl & 1) {
		/* "header.payload" raw -> b64(header).b64(payload).b64(hmac) */
		const uint8_t *dot = memchr(in, '.', n);
		size_t hl = dot ? (size_t)(dot - in) : n;
		size_t pl = dot ? n - hl - 1 : 0;
		tok = malloc((n + 2) / 3 * 4 + 4 + 64);
		CHECK(tok != NULL);
		toklen = jwt_b64url_encode(in, hl, tok);
		tok[toklen++] = '.';
		toklen += jwt_b64url_encode(dot ? dot + 1 : in + n, pl, tok + toklen);
		unsigned char mac[32];
		unsigned int maclen = 0;
		CHECK(HMAC(EVP_sha256(), key, sizeof key - 1, (const unsigned char *)tok, toklen,
		           mac, &maclen) != NULL);
		tok[toklen++] = '.';
		toklen += jwt_b64url_encode(mac, maclen, tok + toklen);
		signed_here = true;
	} else {
		tok = malloc(n ? n : 1);
		CHECK(tok != NULL);
		memcpy(tok, in, n);
		toklen = n;
	}
	struct jwt_claims c;
	enum jwt_result r = jwt_verify(v, tok, toklen, 1795000000000LL, &c);
	CHECK(r <= JWT_BAD_SCOPES);
	CHECK(jwt_result_name(r) != NULL);
	if (r == JWT_OK) {
		CHECK(signed_here);
		CHECK(jwt_project_id_ok(c.project, strlen(c.project)));
		CHECK(c.exp_ms > 0);
	}
	/* base64url round trip on the raw input */
	char *enc = malloc((n + 2) / 3 * 4 + 1);
	uint8_t *dec = malloc(n + 3);
	CHECK(enc != NULL && dec != NULL);
	size_t el = jwt_b64url_encode(in, n, enc);
	size_t dl = 0;
	CHECK(jwt_b64url_decode(enc, el, dec, &dl));
	CHECK(dl == n && memcmp(dec, in, n) == 0);
	free(enc);
	free(dec);
	free(tok);
	jwt_verifier_free(v);
	return 0;
}
