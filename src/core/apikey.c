/* The API key format: base62, the CRC-32 checksum, generation, parsing, the
 * secret's hash and scopes. The checksum lets a client or a server reject a
 * mistyped or truncated key without a database round trip; it is not a
 * security measure (anyone can compute it), the 190-bit secret is. */
#include "core/apikey.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <string.h>

#include "core/ids.h"

static const char base62_digits[] =
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/* --- CRC-32 (zlib) ------------------------------------------------------ */

static uint32_t crc_table[256];
static bool crc_table_ready;

static void crc_table_init(void)
{
	for (uint32_t n = 0; n < 256; n++) {
		uint32_t c = n;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
		crc_table[n] = c;
	}
	crc_table_ready = true;
}

uint32_t apikey_crc32(uint32_t crc, const void *data, size_t len)
{
	if (!crc_table_ready)
		crc_table_init();
	const unsigned char *p = data;
	crc = ~crc;
	for (size_t i = 0; i < len; i++)
		crc = crc_table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
	return ~crc;
}

/* --- base62 ------------------------------------------------------------- */

bool apikey_is_base62(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

static int base62_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'Z')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 36;
	return -1;
}

static bool base62_encode(uint64_t v, char *out, size_t width)
{
	char tmp[16];
	if (width > sizeof tmp)
		return false;
	for (size_t i = width; i > 0; i--) {
		tmp[i - 1] = base62_digits[v % 62];
		v /= 62;
	}
	if (v != 0)
		return false;
	memcpy(out, tmp, width);
	out[width] = '\0';
	return true;
}

bool apikey_base62_encode(uint64_t v, char *out, size_t width)
{
	return base62_encode(v, out, width);
}

bool apikey_base62_decode(const char *s, size_t len, uint64_t *out)
{
	if (len == 0)
		return false;
	uint64_t v = 0;
	for (size_t i = 0; i < len; i++) {
		int d = base62_value(s[i]);
		if (d < 0 || v > (UINT64_MAX - (uint64_t)d) / 62)
			return false;
		v = v * 62 + (uint64_t)d;
	}
	*out = v;
	return true;
}

void apikey_checksum(const char *s, size_t len, char out[APIKEY_CHECK_LEN + 1])
{
	/* 62^6 > 2^32: every CRC fits in six digits, so this cannot fail. */
	bool fits = base62_encode(apikey_crc32(0, s, len), out, APIKEY_CHECK_LEN);
	(void)fits;
}

/* --- keys --------------------------------------------------------------- */

/* n uniformly random base62 characters: bytes >= 248 (= 4 * 62) are thrown
 * away so that the modulo has no bias. */
static void random_base62(char *out, size_t n)
{
	unsigned char pool[64];
	size_t avail = 0, used = 0;
	for (size_t i = 0; i < n;) {
		if (used == avail) {
			id_random(pool, sizeof pool);
			avail = sizeof pool;
			used = 0;
		}
		unsigned char b = pool[used++];
		if (b < 248)
			out[i++] = base62_digits[b % 62];
	}
	OPENSSL_cleanse(pool, sizeof pool);
}

void apikey_generate(struct apikey *out)
{
	memset(out, 0, sizeof *out);
	random_base62(out->prefix, APIKEY_PREFIX_LEN);
	random_base62(out->secret, APIKEY_SECRET_LEN);
	char *t = out->text;
	memcpy(t, APIKEY_TAG, APIKEY_TAG_LEN);
	memcpy(t + APIKEY_TAG_LEN, out->prefix, APIKEY_PREFIX_LEN);
	t[APIKEY_TAG_LEN + APIKEY_PREFIX_LEN] = '_';
	memcpy(t + APIKEY_TAG_LEN + APIKEY_PREFIX_LEN + 1, out->secret, APIKEY_SECRET_LEN);
	apikey_checksum(t, APIKEY_LEN - APIKEY_CHECK_LEN, t + APIKEY_LEN - APIKEY_CHECK_LEN);
}

static bool all_base62(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!apikey_is_base62(s[i]))
			return false;
	return true;
}

enum apikey_result apikey_parse(const char *s, size_t len, struct apikey *out)
{
	enum {
		PFX = APIKEY_TAG_LEN,
		SEP = PFX + APIKEY_PREFIX_LEN,
		SEC = SEP + 1,
		CHK = SEC + APIKEY_SECRET_LEN
	};
	if (s == NULL || len != APIKEY_LEN || memcmp(s, APIKEY_TAG, APIKEY_TAG_LEN) != 0 ||
	    s[SEP] != '_' || !all_base62(s + PFX, APIKEY_PREFIX_LEN) ||
	    !all_base62(s + SEC, APIKEY_SECRET_LEN) || !all_base62(s + CHK, APIKEY_CHECK_LEN))
		return APIKEY_MALFORMED;
	char check[APIKEY_CHECK_LEN + 1];
	apikey_checksum(s, CHK, check);
	if (memcmp(check, s + CHK, APIKEY_CHECK_LEN) != 0)
		return APIKEY_BAD_CHECKSUM;
	memcpy(out->prefix, s + PFX, APIKEY_PREFIX_LEN);
	out->prefix[APIKEY_PREFIX_LEN] = '\0';
	memcpy(out->secret, s + SEC, APIKEY_SECRET_LEN);
	out->secret[APIKEY_SECRET_LEN] = '\0';
	memcpy(out->text, s, APIKEY_LEN);
	out->text[APIKEY_LEN] = '\0';
	return APIKEY_OK;
}

const char *apikey_result_name(enum apikey_result r)
{
	switch (r) {
	case APIKEY_OK: return "ok";
	case APIKEY_MALFORMED: return "malformed";
	case APIKEY_BAD_CHECKSUM: return "bad_checksum";
	}
	return "unknown";
}

bool apikey_hash_secret(const char *secret, uint8_t out[APIKEY_HASH_LEN])
{
	unsigned int n = 0;
	return EVP_Digest(secret, APIKEY_SECRET_LEN, out, &n, EVP_sha256(), NULL) == 1 &&
	       n == APIKEY_HASH_LEN;
}

bool apikey_hash_equal(const uint8_t a[APIKEY_HASH_LEN], const uint8_t b[APIKEY_HASH_LEN])
{
	return CRYPTO_memcmp(a, b, APIKEY_HASH_LEN) == 0;
}

/* --- scopes ------------------------------------------------------------- */

static const struct {
	unsigned bit;
	const char *name;
} scopes[] = {
        {APIKEY_SCOPE_JOBS_READ, "jobs:read"},
        {APIKEY_SCOPE_JOBS_WRITE, "jobs:write"},
        {APIKEY_SCOPE_ADMIN, "admin"},
};
#define N_SCOPES (sizeof scopes / sizeof scopes[0])

unsigned apikey_scope_from_name(const char *s, size_t len)
{
	for (size_t i = 0; i < N_SCOPES; i++)
		if (strlen(scopes[i].name) == len && memcmp(scopes[i].name, s, len) == 0)
			return scopes[i].bit;
	return 0;
}

const char *apikey_scope_name(unsigned bit)
{
	for (size_t i = 0; i < N_SCOPES; i++)
		if (scopes[i].bit == bit)
			return scopes[i].name;
	return NULL;
}

static void copy_bad(char *bad, size_t badsize, const char *s, size_t len)
{
	if (bad == NULL || badsize == 0)
		return;
	if (len >= badsize)
		len = badsize - 1;
	memcpy(bad, s, len);
	bad[len] = '\0';
}

static bool is_blank(char c)
{
	return c == ' ' || c == '\t';
}

bool apikey_scopes_parse(const char *s, unsigned *mask, char *bad, size_t badsize)
{
	unsigned m = 0;
	const char *p = s;
	for (;;) {
		const char *end = strchr(p, ',');
		if (end == NULL)
			end = p + strlen(p);
		const char *a = p, *b = end;
		while (a < b && is_blank(*a))
			a++;
		while (b > a && is_blank(b[-1]))
			b--;
		unsigned bit = apikey_scope_from_name(a, (size_t)(b - a));
		if (bit == 0) {
			copy_bad(bad, badsize, a, (size_t)(b - a));
			return false;
		}
		m |= bit;
		if (*end == '\0')
			break;
		p = end + 1;
	}
	*mask = m;
	return true;
}

size_t apikey_scopes_format(unsigned mask, char *out, size_t size)
{
	size_t n = 0;
	if (size)
		out[0] = '\0';
	for (size_t i = 0; i < N_SCOPES; i++) {
		if (!(mask & scopes[i].bit))
			continue;
		size_t l = strlen(scopes[i].name);
		if (n + (n > 0) + l + 1 > size)
			break;
		if (n > 0)
			out[n++] = ',';
		memcpy(out + n, scopes[i].name, l);
		n += l;
		out[n] = '\0';
	}
	return n;
}
