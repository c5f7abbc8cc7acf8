/* xmalloc: allocation that cannot fail. Out of memory aborts the process with
 * a message (as tmux does), so no caller checks for NULL. */
#ifndef SL_CORE_XMALLOC_H
#define SL_CORE_XMALLOC_H

#include <stdarg.h>
#include <stddef.h>

void *xmalloc(size_t size) __attribute__((malloc, returns_nonnull));
void *xcalloc(size_t n, size_t size) __attribute__((malloc, returns_nonnull));
void *xrealloc(void *p, size_t size) __attribute__((returns_nonnull));
char *xstrdup(const char *s) __attribute__((malloc, returns_nonnull));
char *xstrndup(const char *s, size_t n) __attribute__((malloc, returns_nonnull));
char *xasprintf(const char *fmt, ...)
        __attribute__((format(printf, 1, 2), malloc, returns_nonnull));
char *xvasprintf(const char *fmt, va_list ap)
        __attribute__((format(printf, 1, 0), returns_nonnull));

#endif
