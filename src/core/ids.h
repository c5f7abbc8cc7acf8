/* ids: UUIDv7 job/task ids, random tokens and request-id validation.
 * Randomness comes from getrandom(2). */
#ifndef SL_CORE_IDS_H
#define SL_CORE_IDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ID_UUID_LEN 36

/* Fills out[37] with a new UUIDv7 (RFC 9562) for the given time in ms. */
void id_uuid7_at(char out[ID_UUID_LEN + 1], uint64_t unix_ms);
void id_uuid7(char out[ID_UUID_LEN + 1]);
/* A UUIDv7 whose random bits come from a fast non-cryptographic generator
 * (seeded once from the kernel): for request ids, which must be unique and
 * time-ordered but need not be unpredictable. */
void id_uuid7_fast(char out[ID_UUID_LEN + 1]);
/* True when s is a canonical lowercase or uppercase 8-4-4-4-12 UUID. */
bool id_uuid_valid(const char *s);
/* Version nibble of a valid UUID string (7 for ours). */
int id_uuid_version(const char *s);
/* n random bytes from the kernel; never fails (aborts if the kernel can't). */
void id_random(void *out, size_t n);
/* 2*nbytes lowercase hex characters plus NUL into out. */
void id_random_hex(char *out, size_t nbytes);
/* A client-supplied X-Request-Id is kept when it is 1..128 chars of
 * [A-Za-z0-9._:-]; anything else is replaced by a generated one. */
bool id_request_id_valid(const char *s, size_t len);

#endif
