/* Output helpers shared by the bootstrap commands (stageline.c) and the job
 * commands (jobs.c), so both speak with one voice: every message starts
 * with "stageline: ", tables line up by code points, JSON keeps the
 * server's member order. */
#include "cli/output.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

void output_err(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("stageline: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

int output_usage_error(const char *usage, const char *fmt, ...)
{
	if (fmt) {
		va_list ap;
		va_start(ap, fmt);
		fputs("stageline: ", stderr);
		vfprintf(stderr, fmt, ap);
		fputc('\n', stderr);
		va_end(ap);
	}
	fputs(usage, stderr);
	return EXIT_USAGE;
}

size_t output_text_width(const char *s)
{
	size_t w = 0;
	for (; *s; s++)
		if (((unsigned char)*s & 0xC0) != 0x80)
			w++;
	return w;
}

void output_table(const char *const *head, size_t ncols, char *const *cells, size_t nrows,
                  int indent)
{
	size_t width[16] = {0};
	if (ncols > 16)
		ncols = 16;
	for (size_t j = 0; j < ncols; j++)
		width[j] = output_text_width(head[j]);
	for (size_t i = 0; i < nrows; i++)
		for (size_t j = 0; j < ncols; j++) {
			size_t w = output_text_width(cells[i * ncols + j]);
			if (w > width[j])
				width[j] = w;
		}
	for (size_t i = 0; i <= nrows; i++) {
		const char *const *row =
		        i == 0 ? head : (const char *const *)cells + (i - 1) * ncols;
		size_t n = ncols; /* no padding after the last non-empty cell */
		while (n > 1 && row[n - 1][0] == '\0')
			n--;
		printf("%*s", indent, "");
		for (size_t j = 0; j < n; j++) {
			fputs(row[j], stdout);
			if (j + 1 < n)
				printf("%*s", (int)(width[j] - output_text_width(row[j]) + 2), "");
		}
		putchar('\n');
	}
}

static void json_out(json_t *v, size_t flags)
{
	char *s = json_dumps(v, flags | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
	if (s) {
		puts(s);
		free(s);
	}
	json_decref(v);
}

void output_json(json_t *v)
{
	json_out(v, JSON_INDENT(2));
}

void output_json_line(json_t *v)
{
	json_out(v, JSON_COMPACT);
	fflush(stdout);
}
