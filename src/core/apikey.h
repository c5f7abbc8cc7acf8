/* apikey: the stageline API key format and everything about it that needs no
 * I/O — generation, parsing, the CRC-32 checksum, base62, the secret's hash,
 * constant-time comparison and scopes. A key reads
 *   sl_<prefix:8 base62>_<secret:32 base62><check:6 base62>
 * where check is the CRC-32 (zlib) of every byte before it. The prefix is
 * public (it names the key in lists and logs); the secret is never stored,
 * only its SHA-256. Pure except apikey_generate, which reads the kernel RNG. */
#ifndef SL_CORE_APIKEY_H
#define SL_CORE_APIKEY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define APIKEY_TAG "sl_"
#define APIKEY_TAG_LEN 3
#define APIKEY_PREFIX_LEN 8
#define APIKEY_SECRET_LEN 32
#define APIKEY_CHECK_LEN 6
/* 3 + 8 + 1 + 32 + 6 */
#define APIKEY_LEN (APIKEY_TAG_LEN + APIKEY_PREFIX_LEN + 1 + APIKEY_SECRET_LEN + APIKEY_CHECK_LEN)
#define APIKEY_HASH_LEN 32

/* Scopes, as a bitmask. The names are those of the api_keys.scopes column. */
#define APIKEY_SCOPE_JOBS_READ 0x1u
#define APIKEY_SCOPE_JOBS_WRITE 0x2u
#define APIKEY_SCOPE_ADMIN 0x4u
#define APIKEY_SCOPE_ALL 0x7u
/* "jobs:read,jobs:write,admin" plus NUL. */
#define APIKEY_SCOPES_MAX_TEXT 32

/* Key lifecycle limits, the same for the CLI and the /v1/keys API: a
 * lifetime is at most about 100 years; a rotation's grace period (how long
 * the replaced key keeps working) is 0 to 1 day. */
#define APIKEY_LIFETIME_MAX_S (100LL * 366 * 86400)
#define APIKEY_ROTATE_GRACE_MAX_S 86400

struct apikey {
	char prefix[APIKEY_PREFIX_LEN + 1];
	char secret[APIKEY_SECRET_LEN + 1];
	char text[APIKEY_LEN + 1]; /* the whole key */
};

enum apikey_result {
	APIKEY_OK,
	APIKEY_MALFORMED, /* length, tag, separator or charset */
	APIKEY_BAD_CHECKSUM, /* well-formed, but the last 6 characters don't match */
};

/* CRC-32 as zlib computes it (reflected polynomial 0xEDB88320, init and final
 * xor 0xFFFFFFFF): "123456789" -> 0xCBF43926. Pass 0 as crc to start;
 * feed the previous result to continue over more data. */
uint32_t apikey_crc32(uint32_t crc, const void *data, size_t len);

/* True for [0-9A-Za-z]. */
bool apikey_is_base62(char c);
/* Writes v in base62 ("0-9A-Z a-z" digit order) as exactly width characters,
 * left-padded with '0', plus a NUL (out holds width + 1). Returns false (out
 * untouched) when v needs more than width digits. */
bool apikey_base62_encode(uint64_t v, char *out, size_t width) __attribute__((warn_unused_result));
/* Reads len base62 characters. Returns false on a non-base62 character, an
 * empty string or overflow of 64 bits. */
bool apikey_base62_decode(const char *s, size_t len, uint64_t *out)
        __attribute__((warn_unused_result));
/* The 6-character check of the first len bytes of a key (out holds 7). */
void apikey_checksum(const char *s, size_t len, char out[APIKEY_CHECK_LEN + 1]);

/* A new key: prefix and secret uniformly random over base62. */
void apikey_generate(struct apikey *out);
/* Checks exact length, the "sl_" tag (case-sensitive), the separator, the
 * charset and then the checksum, in that order, and fills out only on
 * APIKEY_OK. Meant to run before any database query: a typo never reaches
 * the database. */
enum apikey_result apikey_parse(const char *s, size_t len, struct apikey *out)
        __attribute__((warn_unused_result));
const char *apikey_result_name(enum apikey_result r);

/* SHA-256 of the 32 secret characters (what api_keys.hash holds). Returns
 * false only when OpenSSL fails (out of memory, a broken provider). */
bool apikey_hash_secret(const char *secret, uint8_t out[APIKEY_HASH_LEN])
        __attribute__((warn_unused_result));
/* Compares two hashes in time independent of their contents. */
bool apikey_hash_equal(const uint8_t a[APIKEY_HASH_LEN], const uint8_t b[APIKEY_HASH_LEN]);

/* The bit for one scope name (len bytes), 0 when the name is unknown. */
unsigned apikey_scope_from_name(const char *s, size_t len);
/* The name of a single-bit mask, NULL for anything else. */
const char *apikey_scope_name(unsigned bit);
/* Parses a comma-separated list ("jobs:read,jobs:write"; blanks around names
 * are allowed, repeats are harmless). An unknown or empty name fails: the
 * offending text (cut to fit) is copied into bad when bad is not NULL. An
 * empty list fails too ("" in bad). */
bool apikey_scopes_parse(const char *s, unsigned *mask, char *bad, size_t badsize)
        __attribute__((warn_unused_result));
/* Formats mask as "jobs:read,jobs:write,admin" (canonical order, unknown bits
 * ignored, "" for none) into out (size >= APIKEY_SCOPES_MAX_TEXT is always
 * enough). Returns the length. */
size_t apikey_scopes_format(unsigned mask, char *out, size_t size);

#endif
