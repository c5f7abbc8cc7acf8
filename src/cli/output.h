/* cli/output: what every `stageline` command prints with — error and usage
 * messages on stderr, tables and JSON on stdout — and the exit codes. */
#ifndef SL_CLI_OUTPUT_H
#define SL_CLI_OUTPUT_H

#include <jansson.h>
#include <stddef.h>

#define EXIT_FAIL 1
#define EXIT_USAGE 2

/* "stageline: <message>\n" on stderr. */
void output_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The message (when fmt is not NULL), then usage, on stderr; returns
 * EXIT_USAGE. */
int output_usage_error(const char *usage, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));
/* Display width of UTF-8 text: code points, not bytes. */
size_t output_text_width(const char *s);
/* A table for people on stdout: a header row, then nrows rows of ncols
 * (at most 16) strings each, every line indented by indent spaces. */
void output_table(const char *const *head, size_t ncols, char *const *cells, size_t nrows,
                  int indent);
/* Prints v indented (or compact on one line) on stdout and drops the
 * caller's reference. */
void output_json(json_t *v);
void output_json_line(json_t *v);

#endif
