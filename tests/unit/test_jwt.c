/* Unit tests for http/jwt: tokens are made here with OpenSSL (an RSA 2048
 * and an EC P-256 key generated per run, an HMAC secret), valid ones pass
 * with their project and scopes, and every way a token can be wrong is
 * refused with its own reason: time (exp, nbf, leeway bounds), iss, aud,
 * alg none, algorithm confusion (an HS256 token "signed" with the RSA key's
 * PEM), kid, tampering, a DER ES256 signature, base64url, segments, size,
 * header and payload shape. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/apikey.h"
#include "http/jwt.h"

#define NOW_MS 1700000000000LL
#define NOW_S 1700000000LL
#define EXP_LATER "1700000100" /* NOW_S + 100 */
#define ISS "https://idp.example"
#define AUD "stageline"

static const char hs_secret[] = "0123456789abcdef0123456789abcdef-hs256";

static EVP_PKEY *rsa_key, *ec_key;
static char *rsa_pem, *ec_pem;

static char *pubkey_pem(EVP_PKEY *k)
{
	BIO *b = BIO_new(BIO_s_mem());
	assert_non_null(b);
	assert_int_equal(PEM_write_bio_PUBKEY(b, k), 1);
	char *data;
	long n = BIO_get_mem_data(b, &data);
	char *out = malloc((size_t)n + 1);
	memcpy(out, data, (size_t)n);
	out[n] = '\0';
	BIO_free(b);
	return out;
}

static int group_setup(void **state)
{
	rsa_key = EVP_RSA_gen(2048);
	ec_key = EVP_EC_gen("P-256");
	if (rsa_key == NULL || ec_key == NULL)
		return -1;
	rsa_pem = pubkey_pem(rsa_key);
	ec_pem = pubkey_pem(ec_key);
	return 0;
}

static int group_teardown(void **state)
{
	EVP_PKEY_free(rsa_key);
	EVP_PKEY_free(ec_key);
	free(rsa_pem);
	free(ec_pem);
	return 0;
}

/* --- making tokens ------------------------------------------------------ */

static char *b64(const void *data, size_t len)
{
	char *out = malloc((len + 2) / 3 * 4 + 1);
	jwt_b64url_encode(data, len, out);
	return out;
}

static char *b64s(const char *s)
{
	return b64(s, strlen(s));
}

enum sig_kind { SIG_HS, SIG_RS, SIG_ES, SIG_ES_DER, SIG_HS_WITH_RSA_PEM, SIG_EMPTY };

/* The signature of input (raw bytes in sig, *slen). */
static void sign(enum sig_kind kind, const char *input, uint8_t *sig, size_t *slen)
{
	size_t ilen = strlen(input);
	if (kind == SIG_EMPTY) {
		*slen = 0;
		return;
	}
	if (kind == SIG_HS || kind == SIG_HS_WITH_RSA_PEM) {
		const char *key = kind == SIG_HS ? hs_secret : rsa_pem;
		unsigned n = 0;
		assert_non_null(HMAC(EVP_sha256(), key, (int)strlen(key), (const uint8_t *)input,
		                     ilen, sig, &n));
		*slen = n;
		return;
	}
	EVP_PKEY *k = kind == SIG_RS ? rsa_key : ec_key;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	uint8_t der[512];
	size_t dlen = sizeof der;
	assert_int_equal(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, k), 1);
	assert_int_equal(EVP_DigestSign(ctx, der, &dlen, (const uint8_t *)input, ilen), 1);
	EVP_MD_CTX_free(ctx);
	if (kind == SIG_RS || kind == SIG_ES_DER) {
		memcpy(sig, der, dlen);
		*slen = dlen;
		return;
	}
	const uint8_t *p = der;
	ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)dlen);
	assert_non_null(es);
	assert_int_equal(BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, 32), 32);
	assert_int_equal(BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + 32, 32), 32);
	ECDSA_SIG_free(es);
	*slen = 64;
}

/* header and payload are JSON text, encoded as given. */
static char *token(const char *header, const char *payload, enum sig_kind kind)
{
	char *h = b64s(header), *p = b64s(payload);
	char *input = NULL;
	assert_true(asprintf(&input, "%s.%s", h, p) > 0);
	uint8_t sig[512];
	size_t slen = 0;
	sign(kind, input, sig, &slen);
	char *s = b64(sig, slen);
	char *out = NULL;
	assert_true(asprintf(&out, "%s.%s", input, s) > 0);
	free(h);
	free(p);
	free(input);
	free(s);
	return out;
}

/* A payload valid at NOW for ISS/AUD, with extra members (",..." or ""). */
static char *claims(const char *extra)
{
	char *out = NULL;
	assert_true(asprintf(&out,
	                     "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"sub\":\"svc-1\","
	                     "\"exp\":%lld,\"iat\":%lld,\"project\":\"acme\","
	                     "\"scope\":\"jobs:read jobs:write\"%s}",
	                     NOW_S + 300, NOW_S, extra) > 0);
	return out;
}

static struct jwt_verifier *verifier_leeway(int64_t leeway_ms)
{
	struct jwt_opts o = {.issuer = ISS, .audience = AUD, .leeway_ms = leeway_ms};
	char *err = NULL;
	struct jwt_verifier *v = jwt_verifier_new(&o, &err);
	assert_non_null(v);
	assert_true(jwt_verifier_add_hmac(v, hs_secret, strlen(hs_secret), NULL, &err));
	enum jwt_alg alg;
	assert_true(jwt_verifier_add_pem(v, rsa_pem, strlen(rsa_pem), NULL, &alg, &err));
	assert_int_equal(alg, JWT_RS256);
	assert_true(jwt_verifier_add_pem(v, ec_pem, strlen(ec_pem), NULL, &alg, &err));
	assert_int_equal(alg, JWT_ES256);
	assert_int_equal(jwt_verifier_nkeys(v), 3);
	return v;
}

static struct jwt_verifier *verifier(void)
{
	return verifier_leeway(60000);
}

static enum jwt_result check(const struct jwt_verifier *v, const char *tok, struct jwt_claims *c)
{
	struct jwt_claims dummy;
	return jwt_verify(v, tok, strlen(tok), NOW_MS, c ? c : &dummy);
}

/* Signs payload with kind under header {"alg":alg} and checks the result. */
static void expect(const struct jwt_verifier *v, const char *header, const char *payload,
                   enum sig_kind kind, enum jwt_result want)
{
	char *t = token(header, payload, kind);
	enum jwt_result got = check(v, t, NULL);
	if (got != want)
		print_message("header %s payload %s: got %s, want %s\n", header, payload,
		              jwt_result_name(got), jwt_result_name(want));
	assert_int_equal(got, want);
	free(t);
}

#define HS "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"
#define RS "{\"alg\":\"RS256\",\"typ\":\"JWT\"}"
#define ES "{\"alg\":\"ES256\",\"typ\":\"JWT\"}"

/* --- tests -------------------------------------------------------------- */

static void test_b64url(void **state)
{
	uint8_t out[64];
	size_t n;
	const uint8_t bytes[] = {0xfb, 0xff, 0x00, 0x41, 0x42};
	char enc[16];
	assert_int_equal(jwt_b64url_encode(bytes, 5, enc), 7);
	assert_string_equal(enc, "-_8AQUI");
	assert_true(jwt_b64url_decode(enc, 7, out, &n));
	assert_int_equal(n, 5);
	assert_memory_equal(out, bytes, 5);
	assert_true(jwt_b64url_decode("", 0, out, &n));
	assert_int_equal(n, 0);
	assert_true(jwt_b64url_decode("QQ", 2, out, &n));
	assert_int_equal(out[0], 'A');
	/* padding, the standard alphabet, a lone character, stray bits */
	assert_false(jwt_b64url_decode("QQ==", 4, out, &n));
	assert_false(jwt_b64url_decode("+/8A", 4, out, &n));
	assert_false(jwt_b64url_decode("QUJDR", 5, out, &n));
	assert_false(jwt_b64url_decode("QR", 2, out, &n));
	assert_false(jwt_b64url_decode("QU I", 4, out, &n));
}

static void test_valid_tokens(void **state)
{
	struct jwt_verifier *v = verifier();
	char *p = claims("");
	const char *headers[] = {HS, RS, ES};
	enum sig_kind kinds[] = {SIG_HS, SIG_RS, SIG_ES};
	enum jwt_alg algs[] = {JWT_HS256, JWT_RS256, JWT_ES256};
	for (int i = 0; i < 3; i++) {
		char *t = token(headers[i], p, kinds[i]);
		struct jwt_claims c;
		assert_int_equal(check(v, t, &c), JWT_OK);
		assert_int_equal(c.alg, algs[i]);
		assert_string_equal(c.project, "acme");
		assert_string_equal(c.subject, "svc-1");
		assert_string_equal(c.kid, "");
		assert_int_equal(c.scopes, APIKEY_SCOPE_JOBS_READ | APIKEY_SCOPE_JOBS_WRITE);
		assert_int_equal(c.exp_ms, (NOW_S + 300) * 1000);
		free(t);
	}
	free(p);
	/* scopes as an array; names that are not scopes grant nothing */
	char *pa = NULL;
	assert_true(asprintf(&pa,
	                     "{\"iss\":\"" ISS "\",\"aud\":[\"other\",\"" AUD "\"],"
	                     "\"exp\":%lld.5,\"project\":\"a-1\",\"scope\":[\"admin\",\"openid\"]}",
	                     NOW_S + 10) > 0);
	char *t = token(ES, pa, SIG_ES);
	struct jwt_claims c;
	assert_int_equal(check(v, t, &c), JWT_OK);
	assert_int_equal(c.scopes, APIKEY_SCOPE_ADMIN);
	assert_string_equal(c.project, "a-1");
	assert_int_equal(c.exp_ms, (NOW_S + 10) * 1000 + 500);
	free(t);
	free(pa);
	/* no scope claim: a token with no scope at all (every route is 403) */
	char *pn = NULL;
	assert_true(asprintf(&pn,
	                     "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":%lld,"
	                     "\"project\":\"acme\",\"scope\":\"  jobs:read  \"}",
	                     NOW_S + 10) > 0);
	t = token(HS, pn, SIG_HS);
	assert_int_equal(check(v, t, &c), JWT_OK);
	assert_int_equal(c.scopes, APIKEY_SCOPE_JOBS_READ);
	free(t);
	free(pn);
	jwt_verifier_free(v);
}

static char *timed(long long exp_off, const char *nbf)
{
	char *p = NULL;
	assert_true(asprintf(&p,
	                     "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":%lld,"
	                     "\"project\":\"acme\"%s}",
	                     NOW_S + exp_off, nbf ? nbf : "") > 0);
	return p;
}

static void test_time_and_leeway(void **state)
{
	struct jwt_verifier *v = verifier(); /* 60 s */
	struct {
		long long exp_off;
		long long nbf_off; /* 0: none */
		enum jwt_result want;
	} cases[] = {
	        {-61, 0, JWT_EXPIRED},   {-60, 0, JWT_EXPIRED},          {-59, 0, JWT_OK},
	        {-3600, 0, JWT_EXPIRED}, {300, 61, JWT_NOT_YET_VALID},   {300, 60, JWT_OK},
	        {300, -10, JWT_OK},      {300, 3600, JWT_NOT_YET_VALID},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char nbf[64] = "";
		if (cases[i].nbf_off)
			snprintf(nbf, sizeof nbf, ",\"nbf\":%lld", NOW_S + cases[i].nbf_off);
		char *p = timed(cases[i].exp_off, nbf);
		expect(v, HS, p, SIG_HS, cases[i].want);
		free(p);
	}
	jwt_verifier_free(v);

	/* no leeway: exp is exclusive, nbf inclusive */
	v = verifier_leeway(0);
	char *p = timed(0, NULL);
	expect(v, RS, p, SIG_RS, JWT_EXPIRED);
	free(p);
	p = timed(1, ",\"nbf\":1700000000");
	expect(v, RS, p, SIG_RS, JWT_OK);
	free(p);
	p = timed(1, ",\"nbf\":1700000001");
	expect(v, RS, p, SIG_RS, JWT_NOT_YET_VALID);
	free(p);
	jwt_verifier_free(v);

	/* the longest leeway allowed */
	v = verifier_leeway(JWT_MAX_LEEWAY_MS);
	p = timed(-299, NULL);
	expect(v, ES, p, SIG_ES, JWT_OK);
	free(p);
	p = timed(-300, NULL);
	expect(v, ES, p, SIG_ES, JWT_EXPIRED);
	free(p);
	jwt_verifier_free(v);

	/* leeway out of bounds: no verifier */
	char *err = NULL;
	struct jwt_opts o = {.issuer = ISS, .audience = AUD, .leeway_ms = JWT_MAX_LEEWAY_MS + 1};
	assert_null(jwt_verifier_new(&o, &err));
	assert_non_null(err);
	free(err);
	o.leeway_ms = -1;
	assert_null(jwt_verifier_new(&o, &err));
	free(err);

	/* exp is required, and must be a number */
	v = verifier();
	expect(v, HS, "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"project\":\"acme\"}", SIG_HS,
	       JWT_NO_EXP);
	expect(v, HS,
	       "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"project\":\"acme\","
	       "\"exp\":\"1800000000\"}",
	       SIG_HS, JWT_BAD_CLAIMS);
	expect(v, HS,
	       "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"project\":\"acme\","
	       "\"exp\":1800000000,\"nbf\":null}",
	       SIG_HS, JWT_BAD_CLAIMS);
	jwt_verifier_free(v);
}

static void test_issuer_and_audience(void **state)
{
	struct jwt_verifier *v = verifier();
	struct {
		const char *payload;
		enum jwt_result want;
	} cases[] = {
	        {"{\"iss\":\"https://evil.example\",\"aud\":\"" AUD "\",\"exp\":" EXP_LATER ","
	         "\"project\":\"acme\"}",
	         JWT_BAD_ISSUER},
	        {"{\"aud\":\"" AUD "\",\"exp\":" EXP_LATER ",\"project\":\"acme\"}",
	         JWT_BAD_ISSUER},
	        {"{\"iss\":[\"" ISS "\"],\"aud\":\"" AUD "\",\"exp\":" EXP_LATER
	         ",\"project\":\"acme\"}",
	         JWT_BAD_ISSUER},
	        {"{\"iss\":\"" ISS "\",\"aud\":\"other\",\"exp\":" EXP_LATER
	         ",\"project\":\"acme\"}",
	         JWT_BAD_AUDIENCE},
	        {"{\"iss\":\"" ISS "\",\"aud\":\"STAGELINE\",\"exp\":" EXP_LATER
	         ",\"project\":\"acme\"}",
	         JWT_BAD_AUDIENCE},
	        {"{\"iss\":\"" ISS "\",\"exp\":" EXP_LATER ",\"project\":\"acme\"}",
	         JWT_BAD_AUDIENCE},
	        {"{\"iss\":\"" ISS "\",\"aud\":[\"a\",\"b\"],\"exp\":" EXP_LATER
	         ",\"project\":\"acme\"}",
	         JWT_BAD_AUDIENCE},
	        {"{\"iss\":\"" ISS "\",\"aud\":[],\"exp\":" EXP_LATER ",\"project\":\"acme\"}",
	         JWT_BAD_AUDIENCE},
	        {"{\"iss\":\"" ISS "\",\"aud\":[\"" AUD "\",7],\"exp\":" EXP_LATER
	         ",\"project\":\"acme\"}",
	         JWT_BAD_AUDIENCE},
	        {"{\"iss\":\"" ISS "\",\"aud\":[\"x\",\"" AUD "\"],\"exp\":" EXP_LATER ","
	         "\"project\":\"acme\"}",
	         JWT_OK},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		expect(v, RS, cases[i].payload, SIG_RS, cases[i].want);
	}
	jwt_verifier_free(v);
}

static void test_project_and_scopes_claims(void **state)
{
	struct jwt_verifier *v = verifier();
	char long_id[80];
	memset(long_id, 'a', 64);
	long_id[64] = '\0';
	const char *bad_projects[] = {"\"Acme\"", "\"\"",       "\"a_b\"", "7",
	                              "null",     "[\"acme\"]", "\"a/b\""};
	for (size_t i = 0; i < sizeof bad_projects / sizeof bad_projects[0] + 1; i++) {
		char *p = NULL;
		char proj[100];
		if (i == sizeof bad_projects / sizeof bad_projects[0])
			snprintf(proj, sizeof proj, "\"%s\"", long_id);
		else
			snprintf(proj, sizeof proj, "%s", bad_projects[i]);
		assert_true(asprintf(&p,
		                     "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":%lld,"
		                     "\"project\":%s}",
		                     NOW_S + 10, proj) > 0);
		expect(v, HS, p, SIG_HS, JWT_BAD_PROJECT);
		free(p);
	}
	long_id[63] = '\0';
	char *p = NULL;
	assert_true(asprintf(&p,
	                     "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":%lld,"
	                     "\"project\":\"%s\"}",
	                     NOW_S + 10, long_id) > 0);
	expect(v, HS, p, SIG_HS, JWT_OK);
	free(p);
	const char *bad_scopes[] = {"7", "{\"jobs:read\":true}", "[\"jobs:read\",1]", "true"};
	for (size_t i = 0; i < sizeof bad_scopes / sizeof bad_scopes[0]; i++) {
		char extra[64];
		snprintf(extra, sizeof extra, ",\"scope\":%s", bad_scopes[i]);
		char *q = timed(10, extra);
		expect(v, HS, q, SIG_HS, JWT_BAD_SCOPES);
		free(q);
	}
	jwt_verifier_free(v);

	/* configured claim names */
	struct jwt_opts o = {.issuer = ISS,
	                     .audience = AUD,
	                     .leeway_ms = 0,
	                     .project_claim = "https://stageline/project",
	                     .scopes_claim = "scp"};
	char *err = NULL;
	v = jwt_verifier_new(&o, &err);
	assert_non_null(v);
	assert_true(jwt_verifier_add_hmac(v, hs_secret, strlen(hs_secret), NULL, &err));
	assert_true(asprintf(&p,
	                     "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":%lld,"
	                     "\"https://stageline/project\":\"p2\",\"scp\":[\"jobs:write\"],"
	                     "\"scope\":\"admin\",\"project\":\"acme\"}",
	                     NOW_S + 10) > 0);
	char *t = token(HS, p, SIG_HS);
	struct jwt_claims c;
	assert_int_equal(check(v, t, &c), JWT_OK);
	assert_string_equal(c.project, "p2");
	assert_int_equal(c.scopes, APIKEY_SCOPE_JOBS_WRITE);
	free(t);
	free(p);
	jwt_verifier_free(v);
	o.project_claim = "";
	assert_null(jwt_verifier_new(&o, &err));
	free(err);
}

static void test_alg_none_and_confusion(void **state)
{
	struct jwt_verifier *v = verifier();
	char *p = claims("");
	expect(v, "{\"alg\":\"none\"}", p, SIG_EMPTY, JWT_ALG_NONE);
	expect(v, "{\"alg\":\"None\",\"typ\":\"JWT\"}", p, SIG_EMPTY, JWT_ALG_NONE);
	expect(v, "{\"alg\":\"NONE\"}", p, SIG_HS, JWT_ALG_NONE);
	expect(v, "{\"alg\":\"HS512\"}", p, SIG_HS, JWT_ALG_UNSUPPORTED);
	expect(v, "{\"alg\":\"PS256\"}", p, SIG_RS, JWT_ALG_UNSUPPORTED);
	expect(v, "{\"alg\":\"hs256\"}", p, SIG_HS, JWT_ALG_UNSUPPORTED);
	expect(v, "{\"typ\":\"JWT\"}", p, SIG_HS, JWT_BAD_HEADER);
	expect(v, "{\"alg\":256}", p, SIG_HS, JWT_BAD_HEADER);
	/* a header naming a signature the token doesn't have */
	expect(v, RS, p, SIG_HS, JWT_BAD_SIGNATURE);
	expect(v, ES, p, SIG_RS, JWT_BAD_SIGNATURE);
	expect(v, HS, p, SIG_RS, JWT_BAD_SIGNATURE);
	jwt_verifier_free(v);

	/* Only the RSA key is configured: an HS256 token HMAC'd with the public
	 * key's PEM (the classic confusion) finds no HMAC key. */
	struct jwt_opts o = {.issuer = ISS, .audience = AUD, .leeway_ms = 0};
	char *err = NULL;
	v = jwt_verifier_new(&o, &err);
	assert_true(jwt_verifier_add_pem(v, rsa_pem, strlen(rsa_pem), "rsa-1", NULL, &err));
	expect(v, HS, p, SIG_HS_WITH_RSA_PEM, JWT_ALG_MISMATCH);
	expect(v, "{\"alg\":\"HS256\",\"kid\":\"rsa-1\"}", p, SIG_HS_WITH_RSA_PEM,
	       JWT_ALG_MISMATCH);
	expect(v, ES, p, SIG_ES, JWT_ALG_MISMATCH);
	expect(v, RS, p, SIG_RS, JWT_OK);
	expect(v, "{\"alg\":\"RS256\",\"kid\":\"rsa-1\"}", p, SIG_RS, JWT_OK);
	jwt_verifier_free(v);

	/* crit: no extension is understood */
	v = verifier();
	expect(v, "{\"alg\":\"HS256\",\"crit\":[\"exp\"],\"exp\":1}", p, SIG_HS, JWT_CRIT);
	expect(v, "{\"alg\":\"HS256\",\"crit\":[]}", p, SIG_HS, JWT_CRIT);
	/* embedded keys are ignored, never trusted */
	expect(v, "{\"alg\":\"HS256\",\"jku\":\"http://127.0.0.1:1/k\",\"jwk\":{\"kty\":\"oct\"}}",
	       p, SIG_HS, JWT_OK);
	jwt_verifier_free(v);
	free(p);
}

static void test_kid(void **state)
{
	struct jwt_opts o = {.issuer = ISS, .audience = AUD, .leeway_ms = 0};
	char *err = NULL;
	struct jwt_verifier *v = jwt_verifier_new(&o, &err);
	assert_true(jwt_verifier_add_hmac(v, hs_secret, strlen(hs_secret), "hs-1", &err));
	assert_true(jwt_verifier_add_pem(v, ec_pem, strlen(ec_pem), "ec-1", NULL, &err));
	/* a kid used twice is refused */
	assert_false(jwt_verifier_add_pem(v, rsa_pem, strlen(rsa_pem), "ec-1", NULL, &err));
	assert_non_null(strstr(err, "ec-1"));
	free(err);
	char *p = claims("");
	expect(v, "{\"alg\":\"HS256\",\"kid\":\"hs-1\"}", p, SIG_HS, JWT_OK);
	expect(v, "{\"alg\":\"ES256\",\"kid\":\"ec-1\"}", p, SIG_ES, JWT_OK);
	expect(v, HS, p, SIG_HS, JWT_OK); /* no kid: the key of the algorithm */
	expect(v, "{\"alg\":\"HS256\",\"kid\":\"hs-2\"}", p, SIG_HS, JWT_UNKNOWN_KID);
	expect(v, "{\"alg\":\"ES256\",\"kid\":\"\"}", p, SIG_ES, JWT_OK);
	expect(v, "{\"alg\":\"ES256\",\"kid\":\"hs-1\"}", p, SIG_ES, JWT_ALG_MISMATCH);
	expect(v, "{\"alg\":\"HS256\",\"kid\":7}", p, SIG_HS, JWT_BAD_HEADER);
	jwt_verifier_free(v);
	free(p);
}

static void test_tampering(void **state)
{
	struct jwt_verifier *v = verifier();
	char *p = claims("");
	const char *headers[] = {HS, RS, ES};
	enum sig_kind kinds[] = {SIG_HS, SIG_RS, SIG_ES};
	for (int i = 0; i < 3; i++) {
		char *t = token(headers[i], p, kinds[i]);
		/* another payload under the same signature */
		char *other = token(headers[i], "{\"project\":\"evil\"}", kinds[i]);
		char *d1 = strchr(t, '.'), *d2 = strrchr(t, '.');
		char *o1 = strchr(other, '.'), *o2 = strrchr(other, '.');
		char *swapped = NULL;
		assert_true(asprintf(&swapped, "%.*s%.*s%s", (int)(d1 - t), t, (int)(o2 - o1), o1,
		                     d2) > 0);
		assert_int_equal(check(v, swapped, NULL), JWT_BAD_SIGNATURE);
		/* one signature bit flipped (in a character whose bits all count) */
		char *flip = strdup(t);
		char *sc = strrchr(flip, '.') + 3;
		*sc = *sc == 'A' ? 'B' : 'A';
		assert_int_equal(check(v, flip, NULL), JWT_BAD_SIGNATURE);
		/* the signature empty */
		char *empty = strndup(t, (size_t)(d2 - t) + 1);
		assert_int_equal(check(v, empty, NULL), JWT_BAD_SIGNATURE);
		/* the header changed */
		char *h2 = token("{\"alg\":\"HS256\",\"typ\":\"jwt\"}", p, kinds[i]);
		char *hsw = NULL;
		assert_true(asprintf(&hsw, "%.*s%s", (int)(strchr(h2, '.') - h2), h2, d1) > 0);
		assert_int_equal(check(v, hsw, NULL), JWT_BAD_SIGNATURE);
		free(h2);
		free(hsw);
		free(t);
		free(other);
		free(swapped);
		free(flip);
		free(empty);
	}
	/* ES256 with the DER signature OpenSSL makes, instead of raw r || s */
	expect(v, ES, p, SIG_ES_DER, JWT_BAD_SIGNATURE);
	free(p);
	jwt_verifier_free(v);
}

static void test_shapes(void **state)
{
	struct jwt_verifier *v = verifier();
	char *p = claims("");
	char *t = token(HS, p, SIG_HS);
	assert_int_equal(check(v, t, NULL), JWT_OK);
	char *buf = NULL;
	/* 2 and 4 segments, empty header or payload */
	char *d2 = strrchr(t, '.');
	buf = strndup(t, (size_t)(d2 - t));
	assert_int_equal(check(v, buf, NULL), JWT_SEGMENTS);
	free(buf);
	assert_true(asprintf(&buf, "%s.AAAA", t) > 0);
	assert_int_equal(check(v, buf, NULL), JWT_SEGMENTS);
	free(buf);
	assert_true(asprintf(&buf, "%s", strchr(t, '.')) > 0); /* ".payload.sig" */
	assert_int_equal(check(v, buf, NULL), JWT_SEGMENTS);
	free(buf);
	assert_int_equal(check(v, "a..b", NULL), JWT_SEGMENTS);
	assert_int_equal(check(v, "abc", NULL), JWT_SEGMENTS);
	assert_int_equal(check(v, "..", NULL), JWT_SEGMENTS);
	/* bad base64url in each segment */
	const char *subst[] = {"=", "+", "/", "*"};
	for (size_t i = 0; i < 4; i++) {
		for (int seg = 0; seg < 3; seg++) {
			char *m = strdup(t);
			char *at = m;
			for (int k = 0; k < seg; k++)
				at = strchr(at, '.') + 1;
			at[1] = subst[i][0];
			assert_int_equal(check(v, m, NULL), JWT_BASE64);
			free(m);
		}
	}
	/* oversized, even if otherwise fine */
	char *big = malloc(JWT_MAX_TOKEN + 2);
	memset(big, 'A', JWT_MAX_TOKEN + 1);
	big[10] = '.';
	big[20] = '.';
	big[JWT_MAX_TOKEN + 1] = '\0';
	struct jwt_claims c;
	assert_int_equal(jwt_verify(v, big, JWT_MAX_TOKEN + 1, NOW_MS, &c), JWT_TOO_LARGE);
	free(big);
	char *pad = NULL;
	char filler[JWT_MAX_TOKEN];
	memset(filler, 'x', sizeof filler - 1);
	filler[sizeof filler - 1] = '\0';
	char extra[JWT_MAX_TOKEN + 32];
	snprintf(extra, sizeof extra, ",\"pad\":\"%s\"", filler);
	pad = claims(extra);
	char *tb = token(HS, pad, SIG_HS);
	assert_true(strlen(tb) > JWT_MAX_TOKEN);
	assert_int_equal(check(v, tb, NULL), JWT_TOO_LARGE);
	free(tb);
	free(pad);
	/* header: not JSON, not an object, duplicate keys */
	expect(v, "[\"HS256\"]", p, SIG_HS, JWT_BAD_HEADER);
	expect(v, "\"HS256\"", p, SIG_HS, JWT_BAD_HEADER);
	expect(v, "{\"alg\":\"HS256\"", p, SIG_HS, JWT_BAD_HEADER);
	expect(v, "{\"alg\":\"none\",\"alg\":\"HS256\"}", p, SIG_HS, JWT_BAD_HEADER);
	/* payload: signed, but not an object or with duplicate claims */
	expect(v, HS, "[1,2]", SIG_HS, JWT_BAD_CLAIMS);
	expect(v, HS, "42", SIG_HS, JWT_BAD_CLAIMS);
	expect(v, HS, "not json", SIG_HS, JWT_BAD_CLAIMS);
	char *dup = claims(",\"project\":\"other\"");
	expect(v, HS, dup, SIG_HS, JWT_BAD_CLAIMS);
	free(dup);
	free(t);
	free(p);
	jwt_verifier_free(v);
}

static void test_key_loading(void **state)
{
	struct jwt_opts o = {.issuer = ISS, .audience = AUD};
	char *err = NULL;
	struct jwt_verifier *v = jwt_verifier_new(&o, &err);
	assert_non_null(v);
	/* short secrets */
	assert_false(jwt_verifier_add_hmac(v, "0123456789abcdef0123456789abcde", 31, NULL, &err));
	assert_non_null(strstr(err, "32"));
	free(err);
	/* not PEM; a private key; a small RSA key; an EC key off P-256 */
	assert_false(jwt_verifier_add_pem(v, "hello", 5, NULL, NULL, &err));
	free(err);
	EVP_PKEY *small = EVP_RSA_gen(1024);
	char *small_pem = pubkey_pem(small);
	assert_false(jwt_verifier_add_pem(v, small_pem, strlen(small_pem), NULL, NULL, &err));
	assert_non_null(strstr(err, "2048"));
	free(err);
	BIO *b = BIO_new(BIO_s_mem());
	assert_int_equal(PEM_write_bio_PrivateKey(b, small, NULL, NULL, 0, NULL, NULL), 1);
	char *data;
	long n = BIO_get_mem_data(b, &data);
	assert_false(jwt_verifier_add_pem(v, data, (size_t)n, NULL, NULL, &err));
	free(err);
	BIO_free(b);
	EVP_PKEY *p384 = EVP_EC_gen("P-384");
	char *p384_pem = pubkey_pem(p384);
	assert_false(jwt_verifier_add_pem(v, p384_pem, strlen(p384_pem), NULL, NULL, &err));
	assert_non_null(strstr(err, "P-256"));
	free(err);
	EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	char *ed_pem = pubkey_pem(ed);
	assert_false(jwt_verifier_add_pem(v, ed_pem, strlen(ed_pem), NULL, NULL, &err));
	free(err);
	assert_int_equal(jwt_verifier_nkeys(v), 0);
	EVP_PKEY_free(small);
	EVP_PKEY_free(p384);
	EVP_PKEY_free(ed);
	free(small_pem);
	free(p384_pem);
	free(ed_pem);
	jwt_verifier_free(v);
	jwt_verifier_free(NULL);
}

static void test_reasons_are_distinct(void **state)
{
	for (int i = JWT_OK; i <= JWT_BAD_SCOPES; i++) {
		assert_non_null(jwt_result_name(i));
		for (int j = i + 1; j <= JWT_BAD_SCOPES; j++)
			assert_string_not_equal(jwt_result_name(i), jwt_result_name(j));
	}
	assert_true(jwt_project_id_ok("default", 7));
	assert_false(jwt_project_id_ok("", 0));
	assert_false(jwt_project_id_ok("UPPER", 5));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_b64url),
	        cmocka_unit_test(test_valid_tokens),
	        cmocka_unit_test(test_time_and_leeway),
	        cmocka_unit_test(test_issuer_and_audience),
	        cmocka_unit_test(test_project_and_scopes_claims),
	        cmocka_unit_test(test_alg_none_and_confusion),
	        cmocka_unit_test(test_kid),
	        cmocka_unit_test(test_tampering),
	        cmocka_unit_test(test_shapes),
	        cmocka_unit_test(test_key_loading),
	        cmocka_unit_test(test_reasons_are_distinct),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
