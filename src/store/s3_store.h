/* s3_store: the pure pieces of the s3 backend (s3_store.c), exposed for the
 * unit tests: addressing (URLs, Host, key encoding), the XML readers of
 * ListObjectsV2 and error documents, HTTP dates and the backoff. No I/O. */
#ifndef SL_STORE_S3_STORE_H
#define SL_STORE_S3_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "store/store.h"

/* Where requests go, from the endpoint URL and the addressing style. */
struct s3_addr {
	bool https;
	char host[256]; /* the endpoint's host, no port */
	unsigned port;
	bool default_port; /* 443 for https, 80 for http: left out of Host */
	const char *bucket;
	bool path_style;
};

bool s3_addr_parse(const char *endpoint, const char *bucket, bool path_style, struct s3_addr *out,
                   const char **why) __attribute__((warn_unused_result));

/* Appends s with every byte outside A-Za-z0-9-._~ as %XX (upper case); '/'
 * is kept when keep_slash. */
void s3_uri_encode(struct buf *out, const char *s, size_t n, bool keep_slash);

/* For the object full_key (prefix included), or the bucket when full_key is
 * NULL: host gets the Host header value, path the encoded path (no query),
 * url the whole URL with "?" query appended when query is non-empty. Any of
 * the three may be NULL. */
void s3_build(const struct s3_addr *a, const char *full_key, const char *query, struct buf *host,
              struct buf *path, struct buf *url);

/* XML. -------------------------------------------------------------------------- */

/* Appends the text s[0..n) with the five named entities and &#N; / &#xH;
 * references decoded (as UTF-8). False on an unknown or malformed entity or
 * a reference to NUL, a surrogate or past U+10FFFF. */
bool s3_xml_decode(const char *s, size_t n, struct buf *out) __attribute__((warn_unused_result));

struct s3_list_item {
	char *key;
	uint64_t size;
	int64_t mtime_ms;
};

struct s3_list_page {
	struct s3_list_item *items;
	size_t n, cap;
	bool truncated;
	char *next_token; /* NULL when absent */
};

/* A ListObjectsV2 result (<ListBucketResult>): Contents' Key, Size,
 * LastModified, IsTruncated and NextContinuationToken. False (why set) on
 * anything that is not a whole, well-nested document of that root, or a
 * Contents without Key. */
bool s3_xml_parse_list(const char *xml, size_t len, struct s3_list_page *out, const char **why)
        __attribute__((warn_unused_result));
void s3_list_page_free(struct s3_list_page *p);

struct s3_error_doc {
	char code[64];
	char message[320]; /* cut to fit */
	bool have_size;
	uint64_t actual_size; /* <ActualObjectSize> of an InvalidRange */
};

/* <Error><Code>..</Code><Message>..</Message>...</Error>: true when the
 * document is well-formed and has a Code. */
bool s3_xml_parse_error(const char *xml, size_t len, struct s3_error_doc *out)
        __attribute__((warn_unused_result));

/* Misc. ---------------------------------------------------------------------------- */

/* "Sun, 06 Nov 1994 08:49:37 GMT" (IMF-fixdate) to Unix ms; false otherwise. */
bool s3_parse_http_date(const char *s, int64_t *out_ms);
/* "bytes 0-99/1234" or "bytes * /1234" (no space) -> 1234. */
bool s3_parse_content_range_total(const char *s, uint64_t *total);
/* The wait before try number attempt+1 (attempt 0 = after the first try):
 * rnd mod (min(cap, base * 2^attempt) + 1). */
uint64_t s3_backoff_ms(unsigned attempt, unsigned base_ms, unsigned cap_ms, uint64_t rnd);
/* Does an S3 answer deserve another try? Status 5xx or 429, or one of the
 * codes SlowDown, RequestTimeout, InternalError, ServiceUnavailable. */
bool s3_retryable(int status, const char *code);

#endif
