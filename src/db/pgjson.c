/* pgjson (pgjson.h). */
#include "db/pgjson.h"

#include <stdbool.h>
#include <string.h>

#include "core/buf.h"

/* An integer literal out of int64's range: its digits without the sign. */
static bool int_too_big(const char *digits, size_t n)
{
	static const char max[] = "9223372036854775807";
	if (n != sizeof max - 1)
		return n > sizeof max - 1;
	return memcmp(digits, max, n) > 0;
}

/* text with ".0" after every integer literal beyond int64, outside strings:
 * jansson then reads it as a double. False when there is none. */
static bool widen(const char *text, struct buf *out)
{
	bool changed = false, in_str = false;
	const char *p = text, *copied = text;
	while (*p) {
		char c = *p;
		if (in_str) {
			if (c == '\\' && p[1])
				p++;
			else if (c == '"')
				in_str = false;
			p++;
			continue;
		}
		if (c == '"') {
			in_str = true;
			p++;
			continue;
		}
		if ((c >= '0' && c <= '9') || c == '-') {
			/* one whole number: -?digits(.digits)?([eE][+-]?digits)? */
			const char *s = p + (c == '-'), *digits = s;
			while (*s >= '0' && *s <= '9')
				s++;
			size_t ndigits = (size_t)(s - digits);
			bool integer = true;
			if (*s == '.') {
				integer = false;
				for (s++; *s >= '0' && *s <= '9'; s++)
					;
			}
			if (*s == 'e' || *s == 'E') {
				integer = false;
				s++;
				if (*s == '+' || *s == '-')
					s++;
				while (*s >= '0' && *s <= '9')
					s++;
			}
			if (integer && int_too_big(digits, ndigits)) {
				buf_add(out, copied, (size_t)(s - copied));
				buf_adds(out, ".0");
				copied = s;
				changed = true;
			}
			p = s > p ? s : p + 1;
			continue;
		}
		p++;
	}
	if (changed)
		buf_adds(out, copied);
	return changed;
}

json_t *pg_json_parse(const char *text)
{
	json_t *v = json_loads(text, JSON_DECODE_ANY, NULL);
	if (v)
		return v;
	struct buf b = BUF_INIT;
	if (widen(text, &b))
		v = json_loads(b.data, JSON_DECODE_ANY, NULL);
	buf_free(&b);
	return v;
}

json_t *pg_json(const PGresult *r, int row, int col)
{
	return PQgetisnull(r, row, col) ? NULL : pg_json_parse(PQgetvalue(r, row, col));
}
