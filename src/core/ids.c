/* Identifier generation. UUIDv7 keeps ids time-ordered so keyset pagination
 * and b-tree inserts stay cheap. */
#include "core/ids.h"

#include <errno.h>
#include <limits.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "core/clock.h"

void id_random(void *out, size_t n)
{
	/* OpenSSL's DRBG (seeded from the kernel) costs no system call per id;
	 * getrandom(2) is the fallback if it ever refuses. */
	if (n <= INT_MAX && RAND_bytes(out, (int)n) == 1)
		return;
	unsigned char *p = out;
	while (n > 0) {
		ssize_t r = getrandom(p, n, 0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, "stageline: getrandom failed\n");
			abort();
		}
		p += r;
		n -= (size_t)r;
	}
}

void id_random_hex(char *out, size_t nbytes)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char raw[64];
	size_t done = 0;
	while (done < nbytes) {
		size_t k = nbytes - done < sizeof raw ? nbytes - done : sizeof raw;
		id_random(raw, k);
		for (size_t i = 0; i < k; i++) {
			out[2 * (done + i)] = hex[raw[i] >> 4];
			out[2 * (done + i) + 1] = hex[raw[i] & 15];
		}
		done += k;
	}
	out[2 * nbytes] = '\0';
}

static void uuid7_format(char out[ID_UUID_LEN + 1], unsigned char b[16], uint64_t ms)
{
	static const char hex[] = "0123456789abcdef";
	b[0] = (unsigned char)(ms >> 40);
	b[1] = (unsigned char)(ms >> 32);
	b[2] = (unsigned char)(ms >> 24);
	b[3] = (unsigned char)(ms >> 16);
	b[4] = (unsigned char)(ms >> 8);
	b[5] = (unsigned char)ms;
	b[6] = (unsigned char)(0x70 | (b[6] & 0x0f));
	b[8] = (unsigned char)(0x80 | (b[8] & 0x3f));
	size_t o = 0;
	for (int i = 0; i < 16; i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			out[o++] = '-';
		out[o++] = hex[b[i] >> 4];
		out[o++] = hex[b[i] & 15];
	}
	out[o] = '\0';
}

void id_uuid7_at(char out[ID_UUID_LEN + 1], uint64_t ms)
{
	unsigned char b[16];
	id_random(b + 6, 10);
	uuid7_format(out, b, ms);
}

/* xoshiro256** (Blackman and Vigna), seeded from the kernel on first use. */
static uint64_t rotl64(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static uint64_t fast_next(void)
{
	static uint64_t s[4];
	static bool seeded;
	if (!seeded) {
		do
			id_random(s, sizeof s);
		while ((s[0] | s[1] | s[2] | s[3]) == 0);
		seeded = true;
	}
	uint64_t r = rotl64(s[1] * 5, 7) * 9;
	uint64_t t = s[1] << 17;
	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl64(s[3], 45);
	return r;
}

void id_uuid7_fast(char out[ID_UUID_LEN + 1])
{
	unsigned char b[16];
	uint64_t r1 = fast_next(), r2 = fast_next();
	memcpy(b + 6, &r1, 8);
	memcpy(b + 14, &r2, 2);
	uuid7_format(out, b, (uint64_t)(clock_now_us() / 1000));
}

void id_uuid7(char out[ID_UUID_LEN + 1])
{
	id_uuid7_at(out, (uint64_t)(clock_now_us() / 1000));
}

bool id_uuid_valid(const char *s)
{
	if (s == NULL || strlen(s) != ID_UUID_LEN)
		return false;
	for (int i = 0; i < ID_UUID_LEN; i++) {
		char c = s[i];
		if (i == 8 || i == 13 || i == 18 || i == 23) {
			if (c != '-')
				return false;
		} else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
		             (c >= 'A' && c <= 'F'))) {
			return false;
		}
	}
	return true;
}

int id_uuid_version(const char *s)
{
	if (!id_uuid_valid(s))
		return -1;
	char c = s[14];
	return c >= '0' && c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

bool id_request_id_valid(const char *s, size_t len)
{
	if (s == NULL || len == 0 || len > 128)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == ':' || c == '-'))
			return false;
	}
	return true;
}
