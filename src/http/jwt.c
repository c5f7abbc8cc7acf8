/* JWT verification for the bearer tokens auth.c does not recognise as API
 * keys. The order of the checks is the point of this file: the size and the
 * shape first (cheap, and nothing is decoded from an oversized token), then
 * the header, which picks a configured key by algorithm and kid, then the
 * signature over the first two segments exactly as sent, and only then the
 * payload, so no claim of a token that fails its signature is ever read.
 * Every refusal has its own enum value; auth.c logs its name and answers
 * the same 401 for all of them. */
#include "http/jwt.h"

#include <jansson.h>
#include <math.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/apikey.h"
#include "core/xmalloc.h"

#define MAX_KEYS 8
#define HS256_MIN_SECRET 32
#define RSA_MIN_BITS 2048
#define ES256_SIG_LEN 64
#define HS256_SIG_LEN 32

struct jwt_key {
	enum jwt_alg alg;
	char kid[JWT_KID_MAX + 1];
	uint8_t *secret; /* HS256 */
	size_t secret_len;
	EVP_PKEY *pkey; /* RS256, ES256 */
};

struct jwt_verifier {
	char *issuer;
	char *audience;
	int64_t leeway_ms;
	char *project_claim;
	char *scopes_claim;
	struct jwt_key keys[MAX_KEYS];
	size_t nkeys;
};

/* --- base64url ---------------------------------------------------------- */

static int b64url_val(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	return -1;
}

bool jwt_b64url_decode(const char *s, size_t len, uint8_t *out, size_t *outlen)
{
	if (len % 4 == 1)
		return false;
	uint32_t acc = 0;
	int bits = 0;
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		int v = b64url_val((unsigned char)s[i]);
		if (v < 0)
			return false;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[n++] = (uint8_t)(acc >> bits);
			acc &= (1u << bits) - 1;
		}
	}
	/* The bits left over must be zero: otherwise several strings decode to
	 * the same bytes, and a "tampered" token could still verify. */
	if (acc != 0)
		return false;
	*outlen = n;
	return true;
}

size_t jwt_b64url_encode(const uint8_t *in, size_t len, char *out)
{
	static const char tab[] =
	        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t n = 0;
	size_t i = 0;
	for (; i + 3 <= len; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		out[n++] = tab[v >> 18];
		out[n++] = tab[(v >> 12) & 63];
		out[n++] = tab[(v >> 6) & 63];
		out[n++] = tab[v & 63];
	}
	if (len - i == 1) {
		uint32_t v = (uint32_t)in[i] << 16;
		out[n++] = tab[v >> 18];
		out[n++] = tab[(v >> 12) & 63];
	} else if (len - i == 2) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
		out[n++] = tab[v >> 18];
		out[n++] = tab[(v >> 12) & 63];
		out[n++] = tab[(v >> 6) & 63];
	}
	out[n] = '\0';
	return n;
}

/* --- names -------------------------------------------------------------- */

const char *jwt_result_name(enum jwt_result r)
{
	switch (r) {
	case JWT_OK: return "ok";
	case JWT_TOO_LARGE: return "jwt_too_large";
	case JWT_SEGMENTS: return "jwt_segments";
	case JWT_BASE64: return "jwt_base64";
	case JWT_BAD_HEADER: return "jwt_bad_header";
	case JWT_CRIT: return "jwt_crit";
	case JWT_ALG_NONE: return "jwt_alg_none";
	case JWT_ALG_UNSUPPORTED: return "jwt_alg_unsupported";
	case JWT_ALG_MISMATCH: return "jwt_alg_mismatch";
	case JWT_UNKNOWN_KID: return "jwt_unknown_kid";
	case JWT_BAD_SIGNATURE: return "jwt_bad_signature";
	case JWT_BAD_CLAIMS: return "jwt_bad_claims";
	case JWT_NO_EXP: return "jwt_no_exp";
	case JWT_EXPIRED: return "jwt_expired";
	case JWT_NOT_YET_VALID: return "jwt_not_yet_valid";
	case JWT_BAD_ISSUER: return "jwt_bad_issuer";
	case JWT_BAD_AUDIENCE: return "jwt_bad_audience";
	case JWT_BAD_PROJECT: return "jwt_bad_project";
	case JWT_BAD_SCOPES: return "jwt_bad_scopes";
	}
	return "jwt_unknown";
}

const char *jwt_alg_name(enum jwt_alg alg)
{
	switch (alg) {
	case JWT_HS256: return "HS256";
	case JWT_RS256: return "RS256";
	case JWT_ES256: return "ES256";
	}
	return "?";
}

bool jwt_project_id_ok(const char *s, size_t len)
{
	if (len == 0 || len > JWT_PROJECT_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
			return false;
	}
	return true;
}

/* --- the verifier ------------------------------------------------------- */

static char *dup_or_empty(const char *s)
{
	return xstrdup(s ? s : "");
}

struct jwt_verifier *jwt_verifier_new(const struct jwt_opts *opts, char **err)
{
	*err = NULL;
	if (opts->leeway_ms < 0 || opts->leeway_ms > JWT_MAX_LEEWAY_MS) {
		*err = xasprintf("the leeway must be from 0 to %d ms, got %lld", JWT_MAX_LEEWAY_MS,
		                 (long long)opts->leeway_ms);
		return NULL;
	}
	const char *pc = opts->project_claim ? opts->project_claim : "project";
	const char *sc = opts->scopes_claim ? opts->scopes_claim : "scope";
	if (pc[0] == '\0' || sc[0] == '\0') {
		*err = xstrdup("the project and scopes claim names must not be empty");
		return NULL;
	}
	struct jwt_verifier *v = xcalloc(1, sizeof *v);
	v->issuer = dup_or_empty(opts->issuer);
	v->audience = dup_or_empty(opts->audience);
	v->leeway_ms = opts->leeway_ms;
	v->project_claim = xstrdup(pc);
	v->scopes_claim = xstrdup(sc);
	return v;
}

void jwt_verifier_free(struct jwt_verifier *v)
{
	if (v == NULL)
		return;
	for (size_t i = 0; i < v->nkeys; i++) {
		if (v->keys[i].secret) {
			OPENSSL_cleanse(v->keys[i].secret, v->keys[i].secret_len);
			free(v->keys[i].secret);
		}
		EVP_PKEY_free(v->keys[i].pkey);
	}
	free(v->issuer);
	free(v->audience);
	free(v->project_claim);
	free(v->scopes_claim);
	free(v);
}

size_t jwt_verifier_nkeys(const struct jwt_verifier *v)
{
	return v->nkeys;
}

/* The next free slot, after checking the kid. */
static struct jwt_key *key_slot(struct jwt_verifier *v, const char *kid, char **err)
{
	*err = NULL;
	if (v->nkeys >= MAX_KEYS) {
		*err = xasprintf("at most %d keys", MAX_KEYS);
		return NULL;
	}
	size_t klen = kid ? strlen(kid) : 0;
	if (klen > JWT_KID_MAX) {
		*err = xasprintf("a kid is at most %d bytes", JWT_KID_MAX);
		return NULL;
	}
	for (size_t i = 0; klen && i < v->nkeys; i++) {
		if (strcmp(v->keys[i].kid, kid) == 0) {
			*err = xasprintf("two keys with the kid '%s'", kid);
			return NULL;
		}
	}
	struct jwt_key *k = &v->keys[v->nkeys];
	memset(k, 0, sizeof *k);
	if (klen)
		memcpy(k->kid, kid, klen + 1);
	return k;
}

bool jwt_verifier_add_hmac(struct jwt_verifier *v, const void *secret, size_t len, const char *kid,
                           char **err)
{
	if (len < HS256_MIN_SECRET) {
		*err = xasprintf("an HS256 secret needs at least %d bytes, got %zu",
		                 HS256_MIN_SECRET, len);
		return false;
	}
	struct jwt_key *k = key_slot(v, kid, err);
	if (k == NULL)
		return false;
	k->alg = JWT_HS256;
	k->secret = xmalloc(len);
	memcpy(k->secret, secret, len);
	k->secret_len = len;
	v->nkeys++;
	return true;
}

bool jwt_verifier_add_pem(struct jwt_verifier *v, const char *pem, size_t len, const char *kid,
                          enum jwt_alg *alg, char **err)
{
	*err = NULL;
	if (len > INT32_MAX) {
		*err = xstrdup("the PEM text is too large");
		return false;
	}
	BIO *bio = BIO_new_mem_buf(pem, (int)len);
	EVP_PKEY *pkey = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
	BIO_free(bio);
	ERR_clear_error(); /* a failed read leaves its reasons on the queue */
	if (pkey == NULL) {
		*err = xstrdup("not a PEM public key (expected -----BEGIN PUBLIC KEY-----)");
		return false;
	}
	enum jwt_alg a;
	if (EVP_PKEY_is_a(pkey, "RSA")) {
		int bits = EVP_PKEY_get_bits(pkey);
		if (bits < RSA_MIN_BITS) {
			*err = xasprintf("an RSA key needs at least %d bits, got %d", RSA_MIN_BITS,
			                 bits);
			EVP_PKEY_free(pkey);
			return false;
		}
		a = JWT_RS256;
	} else if (EVP_PKEY_is_a(pkey, "EC")) {
		char group[64] = "";
		size_t glen = 0;
		if (!EVP_PKEY_get_group_name(pkey, group, sizeof group, &glen) ||
		    (strcmp(group, "prime256v1") != 0 && strcmp(group, "P-256") != 0)) {
			*err = xasprintf("an EC key must be on P-256 (ES256), got '%s'", group);
			EVP_PKEY_free(pkey);
			return false;
		}
		a = JWT_ES256;
	} else {
		*err = xstrdup("the public key is neither RSA nor EC P-256");
		EVP_PKEY_free(pkey);
		return false;
	}
	struct jwt_key *k = key_slot(v, kid, err);
	if (k == NULL) {
		EVP_PKEY_free(pkey);
		return false;
	}
	k->alg = a;
	k->pkey = pkey;
	v->nkeys++;
	if (alg)
		*alg = a;
	return true;
}

/* --- verification ------------------------------------------------------- */

/* Decodes segment s (len bytes) into a fresh buffer (caller frees). */
static uint8_t *segment_decode(const char *s, size_t len, size_t *outlen)
{
	uint8_t *buf = xmalloc(len * 3 / 4 + 1);
	if (!jwt_b64url_decode(s, len, buf, outlen)) {
		free(buf);
		return NULL;
	}
	return buf;
}

static json_t *object_from(const uint8_t *data, size_t len)
{
	json_error_t jerr;
	json_t *j = json_loadb((const char *)data, len, JSON_REJECT_DUPLICATES, &jerr);
	if (j && !json_is_object(j)) {
		json_decref(j);
		return NULL;
	}
	return j;
}

static enum jwt_result parse_alg(const char *s, enum jwt_alg *alg)
{
	if (strcasecmp(s, "none") == 0)
		return JWT_ALG_NONE;
	if (strcmp(s, "HS256") == 0)
		*alg = JWT_HS256;
	else if (strcmp(s, "RS256") == 0)
		*alg = JWT_RS256;
	else if (strcmp(s, "ES256") == 0)
		*alg = JWT_ES256;
	else
		return JWT_ALG_UNSUPPORTED;
	return JWT_OK;
}

/* The key for the token: by kid when it names one; else (no kid, or a kid
 * no key carries) a key of the algorithm that carries no kid, or, for a
 * token without a kid, any key of the algorithm. */
static enum jwt_result pick_key(const struct jwt_verifier *v, enum jwt_alg alg, const char *kid,
                                const struct jwt_key **out)
{
	if (kid[0]) {
		for (size_t i = 0; i < v->nkeys; i++) {
			if (strcmp(v->keys[i].kid, kid) == 0) {
				if (v->keys[i].alg != alg)
					return JWT_ALG_MISMATCH;
				*out = &v->keys[i];
				return JWT_OK;
			}
		}
	}
	bool any_alg = false;
	for (size_t i = 0; i < v->nkeys; i++) {
		if (v->keys[i].alg != alg)
			continue;
		any_alg = true;
		if (kid[0] == '\0' || v->keys[i].kid[0] == '\0') {
			*out = &v->keys[i];
			return JWT_OK;
		}
	}
	return any_alg ? JWT_UNKNOWN_KID : JWT_ALG_MISMATCH;
}

static bool verify_hs256(const struct jwt_key *k, const char *input, size_t ilen,
                         const uint8_t *sig, size_t slen)
{
	if (slen != HS256_SIG_LEN)
		return false;
	uint8_t mac[EVP_MAX_MD_SIZE];
	unsigned mlen = 0;
	if (HMAC(EVP_sha256(), k->secret, (int)k->secret_len, (const unsigned char *)input, ilen,
	         mac, &mlen) == NULL ||
	    mlen != HS256_SIG_LEN)
		return false;
	return CRYPTO_memcmp(mac, sig, HS256_SIG_LEN) == 0;
}

static bool verify_digest(EVP_PKEY *pkey, const char *input, size_t ilen, const uint8_t *sig,
                          size_t slen)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	bool ok = ctx && EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pkey) == 1 &&
	          EVP_DigestVerify(ctx, sig, slen, (const unsigned char *)input, ilen) == 1;
	EVP_MD_CTX_free(ctx);
	return ok;
}

static bool verify_rs256(const struct jwt_key *k, const char *input, size_t ilen,
                         const uint8_t *sig, size_t slen)
{
	if (slen != (size_t)EVP_PKEY_get_size(k->pkey))
		return false;
	return verify_digest(k->pkey, input, ilen, sig, slen);
}

/* JWS carries ECDSA as r || s, 32 bytes each (RFC 7518 §3.4); EVP wants
 * the DER SEQUENCE of two INTEGERs. A DER signature in the token is refused
 * by its length alone. */
static bool verify_es256(const struct jwt_key *k, const char *input, size_t ilen,
                         const uint8_t *sig, size_t slen)
{
	if (slen != ES256_SIG_LEN)
		return false;
	ECDSA_SIG *es = ECDSA_SIG_new();
	BIGNUM *r = BN_bin2bn(sig, 32, NULL);
	BIGNUM *s = BN_bin2bn(sig + 32, 32, NULL);
	if (es == NULL || r == NULL || s == NULL || !ECDSA_SIG_set0(es, r, s)) {
		BN_free(r);
		BN_free(s);
		ECDSA_SIG_free(es);
		return false;
	}
	unsigned char *der = NULL;
	int dlen = i2d_ECDSA_SIG(es, &der);
	ECDSA_SIG_free(es);
	bool ok = dlen > 0 && verify_digest(k->pkey, input, ilen, der, (size_t)dlen);
	OPENSSL_free(der);
	return ok;
}

/* A NumericDate (seconds, maybe fractional) as epoch milliseconds. */
static bool numeric_date_ms(const json_t *j, int64_t *out)
{
	if (!json_is_number(j))
		return false;
	double d = json_number_value(j);
	if (!isfinite(d) || d < 0 || d > 1e13)
		return false;
	*out = (int64_t)floor(d * 1000.0);
	return true;
}

static enum jwt_result check_audience(const struct jwt_verifier *v, const json_t *aud)
{
	if (v->audience[0] == '\0')
		return JWT_OK;
	if (json_is_string(aud))
		return strcmp(json_string_value(aud), v->audience) == 0 ? JWT_OK : JWT_BAD_AUDIENCE;
	if (!json_is_array(aud))
		return JWT_BAD_AUDIENCE;
	size_t i;
	json_t *e;
	bool found = false;
	json_array_foreach(aud, i, e)
	{
		if (!json_is_string(e))
			return JWT_BAD_AUDIENCE;
		if (strcmp(json_string_value(e), v->audience) == 0)
			found = true;
	}
	return found ? JWT_OK : JWT_BAD_AUDIENCE;
}

static enum jwt_result read_scopes(const json_t *j, unsigned *mask)
{
	*mask = 0;
	if (j == NULL)
		return JWT_OK;
	if (json_is_string(j)) {
		const char *s = json_string_value(j);
		while (*s) {
			while (*s == ' ')
				s++;
			size_t n = strcspn(s, " ");
			if (n)
				*mask |= apikey_scope_from_name(s, n);
			s += n;
		}
		return JWT_OK;
	}
	if (!json_is_array(j))
		return JWT_BAD_SCOPES;
	size_t i;
	json_t *e;
	json_array_foreach(j, i, e)
	{
		if (!json_is_string(e))
			return JWT_BAD_SCOPES;
		*mask |= apikey_scope_from_name(json_string_value(e), json_string_length(e));
	}
	return JWT_OK;
}

static enum jwt_result check_claims(const struct jwt_verifier *v, const json_t *c, int64_t now_ms,
                                    struct jwt_claims *out)
{
	const json_t *exp = json_object_get(c, "exp");
	const json_t *nbf = json_object_get(c, "nbf");
	int64_t exp_ms = 0, nbf_ms = 0;
	if (exp == NULL)
		return JWT_NO_EXP;
	if (!numeric_date_ms(exp, &exp_ms) || (nbf && !numeric_date_ms(nbf, &nbf_ms)))
		return JWT_BAD_CLAIMS;
	if (now_ms >= exp_ms + v->leeway_ms)
		return JWT_EXPIRED;
	if (nbf && now_ms + v->leeway_ms < nbf_ms)
		return JWT_NOT_YET_VALID;
	if (v->issuer[0]) {
		const json_t *iss = json_object_get(c, "iss");
		if (!json_is_string(iss) || strcmp(json_string_value(iss), v->issuer) != 0)
			return JWT_BAD_ISSUER;
	}
	enum jwt_result r = check_audience(v, json_object_get(c, "aud"));
	if (r != JWT_OK)
		return r;
	const json_t *proj = json_object_get(c, v->project_claim);
	if (!json_is_string(proj) ||
	    !jwt_project_id_ok(json_string_value(proj), json_string_length(proj)))
		return JWT_BAD_PROJECT;
	unsigned scopes;
	r = read_scopes(json_object_get(c, v->scopes_claim), &scopes);
	if (r != JWT_OK)
		return r;
	memcpy(out->project, json_string_value(proj), json_string_length(proj) + 1);
	out->scopes = scopes;
	out->exp_ms = exp_ms;
	const json_t *sub = json_object_get(c, "sub");
	if (json_is_string(sub))
		snprintf(out->subject, sizeof out->subject, "%s", json_string_value(sub));
	return JWT_OK;
}

enum jwt_result jwt_verify(const struct jwt_verifier *v, const char *token, size_t len,
                           int64_t now_ms, struct jwt_claims *out)
{
	if (len > JWT_MAX_TOKEN)
		return JWT_TOO_LARGE;
	const char *d1 = memchr(token, '.', len);
	const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
	if (d1 == NULL || d2 == NULL || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)) ||
	    d1 == token || d2 == d1 + 1)
		return JWT_SEGMENTS;
	size_t hlen = (size_t)(d1 - token), plen = (size_t)(d2 - d1 - 1);
	size_t slen = len - (size_t)(d2 + 1 - token);

	struct jwt_claims claims;
	memset(&claims, 0, sizeof claims);
	enum jwt_result r = JWT_OK;
	size_t hbytes = 0, pbytes = 0, sbytes = 0;
	uint8_t *hdr = NULL, *payload = NULL, *sig = NULL;
	json_t *hj = NULL, *pj = NULL;

	hdr = segment_decode(token, hlen, &hbytes);
	payload = segment_decode(d1 + 1, plen, &pbytes);
	sig = segment_decode(d2 + 1, slen, &sbytes);
	if (hdr == NULL || payload == NULL || sig == NULL) {
		r = JWT_BASE64;
		goto out;
	}
	hj = object_from(hdr, hbytes);
	if (hj == NULL) {
		r = JWT_BAD_HEADER;
		goto out;
	}
	const json_t *alg = json_object_get(hj, "alg");
	const json_t *kid = json_object_get(hj, "kid");
	if (!json_is_string(alg) || (kid && !json_is_string(kid))) {
		r = JWT_BAD_HEADER;
		goto out;
	}
	if ((r = parse_alg(json_string_value(alg), &claims.alg)) != JWT_OK)
		goto out;
	if (json_object_get(hj, "crit") != NULL) {
		r = JWT_CRIT;
		goto out;
	}
	if (kid) {
		if (json_string_length(kid) > JWT_KID_MAX ||
		    strlen(json_string_value(kid)) != json_string_length(kid)) {
			r = JWT_UNKNOWN_KID;
			goto out;
		}
		memcpy(claims.kid, json_string_value(kid), json_string_length(kid) + 1);
	}
	const struct jwt_key *k = NULL;
	if ((r = pick_key(v, claims.alg, claims.kid, &k)) != JWT_OK)
		goto out;
	size_t ilen = (size_t)(d2 - token);
	bool good = false;
	switch (k->alg) {
	case JWT_HS256: good = verify_hs256(k, token, ilen, sig, sbytes); break;
	case JWT_RS256: good = verify_rs256(k, token, ilen, sig, sbytes); break;
	case JWT_ES256: good = verify_es256(k, token, ilen, sig, sbytes); break;
	}
	if (!good) {
		r = JWT_BAD_SIGNATURE;
		goto out;
	}
	pj = object_from(payload, pbytes);
	if (pj == NULL) {
		r = JWT_BAD_CLAIMS;
		goto out;
	}
	if ((r = check_claims(v, pj, now_ms, &claims)) == JWT_OK)
		*out = claims;
out:
	json_decref(hj);
	json_decref(pj);
	free(hdr);
	free(payload);
	free(sig);
	return r;
}
