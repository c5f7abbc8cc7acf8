/* libFuzzer target for core/scrub: the e-mail and phone matchers over
 * arbitrary bytes, and the JSON walk over whatever of the input parses.
 *
 * Input layout: byte 0 is control, the rest is the text.
 *   bit 0  pattern email
 *   bit 1  pattern phone
 *   bit 2  fields "email,phone_number,name" and, when the text parses as
 *          JSON, per-job values taken from it
 *
 * Invariants (a violation traps):
 *  - nothing masked: the output is the input, byte for byte;
 *  - valid UTF-8 in, valid UTF-8 out (masks never split a sequence);
 *  - the output holds no more bytes than the input plus the longest mask
 *    per input byte (a mask replaces at least one byte);
 *  - scrub_json keeps a JSON value a JSON value of the same type at the top;
 *  - everything is freed (LeakSanitizer). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/buf.h"
#include "core/scrub.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                            \
	do {                                                                                   \
		if (!(cond)) {                                                                 \
			fprintf(stderr, "fuzz_scrub: invariant failed: %s (line %d)\n", #cond, \
			        __LINE__);                                                     \
			__builtin_trap();                                                      \
		}                                                                              \
	} while (0)

static bool utf8_valid(const char *s, size_t n)
{
	for (size_t i = 0; i < n;) {
		if ((unsigned char)s[i] < 0x80) {
			i++;
			continue;
		}
		size_t k = buf_utf8_seq_len((const unsigned char *)s + i, n - i);
		if (k == 0)
			return false;
		i += k;
	}
	return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	unsigned ctl = data[0];
	const char *s = (const char *)data + 1;
	size_t n = size - 1;
	char pats[16] = "";
	if (ctl & 1)
		strcat(pats, "email,");
	if (ctl & 2)
		strcat(pats, "phone");
	struct scrub *sc = scrub_new((ctl & 4) ? "email,phone_number,name" : "", pats);

	json_t *j = json_loadb(s, n, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
	struct scrub_values *vs = (ctl & 4) && j ? scrub_values_new(sc, j) : NULL;

	struct buf out = BUF_INIT;
	bool masked = scrub_text_values(sc, vs, &out, s, n);
	if (!masked)
		CHECK(out.len == n && (n == 0 || memcmp(out.data, s, n) == 0));
	CHECK(out.len <= n + n * (sizeof SCRUB_MASK_FIELD - 1));
	if (utf8_valid(s, n))
		CHECK(utf8_valid(out.data ? out.data : "", out.len));
	buf_free(&out);

	if (j) {
		json_type type = json_typeof(j);
		(void)scrub_json_values(sc, vs, j);
		CHECK(json_typeof(j) == type);
		char *dump = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT);
		CHECK(dump != NULL);
		free(dump);
		json_decref(j);
	}
	scrub_values_free(vs);
	scrub_free(sc);
	return 0;
}
