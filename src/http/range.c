/* range (range.h). */
#include "http/range.h"

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

static bool digits(const char **p, uint64_t *out)
{
	const char *s = *p;
	uint64_t v = 0;
	if (*s < '0' || *s > '9')
		return false;
	while (*s >= '0' && *s <= '9') {
		if (v > (UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(*s - '0');
		s++;
	}
	*p = s;
	*out = v;
	return true;
}

static const char *skip_ows(const char *p)
{
	while (*p == ' ' || *p == '\t')
		p++;
	return p;
}

enum http_range_result http_range_parse(const char *header, uint64_t size, uint64_t *start,
                                        uint64_t *len)
{
	if (header == NULL)
		return HTTP_RANGE_NONE;
	const char *p = skip_ows(header);
	if (strncmp(p, "bytes=", 6) != 0)
		return HTTP_RANGE_NONE;
	p = skip_ows(p + 6);
	uint64_t a = 0, b = 0;
	bool have_a = digits(&p, &a);
	if (*p != '-')
		return HTTP_RANGE_NONE;
	p++;
	bool have_b = digits(&p, &b);
	p = skip_ows(p);
	if (*p != '\0' || (!have_a && !have_b))
		return HTTP_RANGE_NONE; /* several ranges, or junk */
	if (!have_a) { /* suffix: the last b bytes */
		if (b == 0 || size == 0)
			return HTTP_RANGE_UNSATISFIABLE;
		*len = b < size ? b : size;
		*start = size - *len;
		return HTTP_RANGE_OK;
	}
	if (have_b && b < a)
		return HTTP_RANGE_NONE; /* invalid: ignored (§14.2) */
	if (a >= size)
		return HTTP_RANGE_UNSATISFIABLE;
	uint64_t last = have_b && b < size - 1 ? b : size - 1;
	*start = a;
	*len = last - a + 1;
	return HTTP_RANGE_OK;
}
