/* range: one byte range of an HTTP Range header (RFC 9110 §14), resolved
 * against a representation of `size` bytes. Pure. */
#ifndef SL_HTTP_RANGE_H
#define SL_HTTP_RANGE_H

#include <stdint.h>

enum http_range_result {
	HTTP_RANGE_NONE, /* no header, another unit, several ranges, or malformed: send it all (200) */
	HTTP_RANGE_OK, /* send [*start, *start + *len) with 206 */
	HTTP_RANGE_UNSATISFIABLE, /* 416 with Content-Range: bytes * / size */
};

/* "bytes=a-b", "bytes=a-" and "bytes=-n". A range reaching past the end is
 * cut at the end; one starting at or past it (or a zero suffix) is
 * unsatisfiable. Several ranges are answered whole (allowed by §14.2). */
enum http_range_result http_range_parse(const char *header, uint64_t size, uint64_t *start,
                                        uint64_t *len);

#endif
