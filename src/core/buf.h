/* buf: a growable byte buffer with helpers for building text and JSON.
 * The owner frees it with buf_free(); data is always NUL-terminated. */
#ifndef SL_CORE_BUF_H
#define SL_CORE_BUF_H

#include <stdarg.h>
#include <stddef.h>

struct buf {
	char *data;
	size_t len;
	size_t cap;
};

#define BUF_INIT           \
	{                  \
		NULL, 0, 0 \
	}

void buf_reserve(struct buf *b, size_t extra);
void buf_add(struct buf *b, const void *p, size_t n);
void buf_addc(struct buf *b, char c);
void buf_adds(struct buf *b, const char *s);
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_vprintf(struct buf *b, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
/* Appends s (n bytes) as a quoted JSON string. Invalid UTF-8 becomes U+FFFD,
 * control characters are escaped, so the output is always valid JSON. */
void buf_add_json_str(struct buf *b, const char *s, size_t n);
/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0 when the
 * bytes there are not one (overlong, surrogate, past U+10FFFF, truncated). */
size_t buf_utf8_seq_len(const unsigned char *s, size_t n);
/* Appends s (n bytes) as clean UTF-8 text: every invalid sequence, NUL and
 * other C0 control (but tab) and DEL becomes U+FFFD. For text from outside
 * (a module's stderr) before it is stored, logged or sent. */
void buf_add_utf8_clean(struct buf *b, const char *s, size_t n);
/* Writes the n bytes at data as 2n lowercase hex digits and a NUL into out
 * (2n + 1 bytes). */
void buf_hex(char *out, const void *data, size_t n);
void buf_reset(struct buf *b);
/* Hands the data to the caller (who frees it) and resets b. */
char *buf_steal(struct buf *b);
void buf_free(struct buf *b);

#endif
