/* redact: masks secrets before any log sink sees them. Pure functions: by
 * field name (password, secret, token, authorization, api_key, ...) and by
 * pattern inside values (DSN/URL passwords, presigned query parameters,
 * bearer tokens and stageline API keys). */
#ifndef SL_CORE_REDACT_H
#define SL_CORE_REDACT_H

#include <stdbool.h>
#include <stddef.h>

#include "core/buf.h"

#define REDACT_MASK "[REDACTED]"

/* True when a field with this name holds a secret and its value must be
 * masked whole (case-insensitive; "db_password", "X-Api-Key" count too). */
bool redact_key_is_secret(const char *key, size_t len);
/* Appends s with every embedded secret masked. Returns true if anything was
 * masked. */
bool redact_value(struct buf *out, const char *s, size_t len);

#endif
