/* scrub: masks personal data (privacy.scrub) before it reaches a log, an
 * event or a stage log. Pure: e-mail addresses and phone numbers inside
 * text, the values of configured field names inside JSON, and a job's own
 * values of those fields wherever they reappear in text. */
#ifndef SL_CORE_SCRUB_H
#define SL_CORE_SCRUB_H

#include <stdbool.h>
#include <stddef.h>

#include "core/buf.h"

struct json_t;

#define SCRUB_MASK_EMAIL "[email]"
#define SCRUB_MASK_PHONE "[phone]"
#define SCRUB_MASK_FIELD "[redacted]"

/* privacy.scrub_fields by default: names that hold personal data in job
 * params. Not "name": artifacts, stages and modules have names too. */
#define SCRUB_DEFAULT_FIELDS                                                                \
	"email,phone,phone_number,mobile,address,street,postcode,zip,first_name,last_name," \
	"full_name,birth_date,date_of_birth,ssn,iban"

/* Pattern bits (privacy.scrub_patterns). */
#define SCRUB_EMAIL 0x1u
#define SCRUB_PHONE 0x2u

struct scrub;

/* Parses a comma-separated list of pattern names ("email,phone"; blanks
 * around names and empty entries are ignored). False on an unknown name:
 * *bad (when not NULL) is set to a copy of it, which the caller frees. */
bool scrub_patterns_parse(const char *list, unsigned *out, char **bad)
        __attribute__((warn_unused_result));
/* Checks a comma-separated list of field names: false, with *bad as above,
 * when a name is longer than SCRUB_FIELD_MAX or nothing but '-', '_', '.'
 * and spaces. */
#define SCRUB_FIELD_MAX 64
bool scrub_fields_check(const char *list, char **bad) __attribute__((warn_unused_result));

/* A scrubber for these lists (validated with the two functions above; bad
 * entries are skipped). The caller frees it with scrub_free(). */
struct scrub *scrub_new(const char *fields, const char *patterns);
void scrub_free(struct scrub *sc);

/* Appends s (len bytes) to out with every e-mail address and phone number
 * the scrubber's patterns name replaced by its mask. Returns true when
 * something was masked. sc NULL: a plain copy. Never splits a UTF-8
 * sequence; linear in len. */
bool scrub_text(const struct scrub *sc, struct buf *out, const char *s, size_t len);
/* The same for a NUL-terminated string: a scrubbed copy the caller frees,
 * or NULL when nothing needed masking (s NULL or sc NULL: NULL). */
char *scrub_dup(const struct scrub *sc, const char *s);

/* The job's own personal data: the values (strings and integers, 3 to 4096
 * bytes, at most 64) found under the configured fields of params, at any
 * depth. A module may echo them anywhere, so the functions below mask them
 * verbatim (as whole words) too. NULL when there are none; the caller
 * frees it with scrub_values_free(). */
struct scrub_values;
struct scrub_values *scrub_values_new(const struct scrub *sc, const struct json_t *params);
void scrub_values_free(struct scrub_values *vs);
/* scrub_text, scrub_dup and scrub_json that also mask vs (may be NULL). */
bool scrub_text_values(const struct scrub *sc, const struct scrub_values *vs, struct buf *out,
                       const char *s, size_t len);
char *scrub_dup_values(const struct scrub *sc, const struct scrub_values *vs, const char *s);
bool scrub_json_values(const struct scrub *sc, const struct scrub_values *vs, struct json_t *j);

/* True when name is one of the configured fields: case-insensitive, and
 * '-', '_', '.' and spaces are ignored ("Phone-Number" is "phone_number"). */
bool scrub_field_listed(const struct scrub *sc, const char *name, size_t len);
/* Masks j in place: the value of every listed field at any depth of objects
 * and arrays becomes SCRUB_MASK_FIELD (null stays null), and every other
 * string, and every object key, is scrubbed as text. Subtrees deeper than
 * 64 levels are masked whole. Returns true when something was masked. */
bool scrub_json(const struct scrub *sc, struct json_t *j);

#endif
