/* The structured process log. Each call renders one line into a reused
 * buffer and hands it to the sink with a single write(2), so lines from one
 * process never interleave. Redaction runs here, before any sink: a value is
 * masked whole when its field name is secret, and scanned for embedded
 * secrets otherwise (see redact.c). */
#include "core/log.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/clock.h"
#include "core/redact.h"
#include "core/xmalloc.h"

static struct {
	int fd;
	char *path;
	enum log_format format;
	enum log_level level;
	bool capturing;
	struct buf capture;
	struct buf line;
	struct buf foreign; /* a partial line written to the stdio stderr stream */
} logger = {
        .fd = STDERR_FILENO,
        .format = LOG_FMT_JSON,
        .level = LOG_LVL_INFO,
};

static const char *const level_names[] = {"debug", "info", "warn", "error"};

const char *log_level_name(enum log_level level)
{
	return level <= LOG_LVL_ERROR ? level_names[level] : "info";
}

bool log_level_parse(const char *s, enum log_level *out)
{
	for (int i = 0; i <= LOG_LVL_ERROR; i++) {
		if (strcmp(s, level_names[i]) == 0) {
			*out = (enum log_level)i;
			return true;
		}
	}
	if (strcmp(s, "warning") == 0) {
		*out = LOG_LVL_WARN;
		return true;
	}
	return false;
}

bool log_format_parse(const char *s, enum log_format *out)
{
	if (strcmp(s, "json") == 0)
		*out = LOG_FMT_JSON;
	else if (strcmp(s, "text") == 0)
		*out = LOG_FMT_TEXT;
	else
		return false;
	return true;
}

static int log_open_file(const char *path)
{
	return open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
}

bool log_open(const char *path, enum log_format format, enum log_level level)
{
	int fd = STDERR_FILENO;
	if (path != NULL && *path != '\0') {
		fd = log_open_file(path);
		if (fd < 0)
			return false;
	}
	log_close();
	logger.fd = fd;
	logger.path = (path && *path) ? xstrdup(path) : NULL;
	logger.format = format;
	logger.level = level;
	return true;
}

bool log_reopen(void)
{
	if (logger.path == NULL)
		return true;
	int fd = log_open_file(logger.path);
	if (fd < 0)
		return false;
	close(logger.fd);
	logger.fd = fd;
	return true;
}

void log_close(void)
{
	if (logger.fd != STDERR_FILENO && logger.fd >= 0)
		close(logger.fd);
	logger.fd = STDERR_FILENO;
	free(logger.path);
	logger.path = NULL;
	buf_free(&logger.line);
	buf_free(&logger.foreign);
}

void log_set_level(enum log_level level)
{
	logger.level = level;
}

bool log_enabled(enum log_level level)
{
	return level >= logger.level;
}

void log_capture_start(void)
{
	buf_reset(&logger.capture);
	logger.capturing = true;
}

char *log_capture_take(void)
{
	logger.capturing = false;
	return buf_steal(&logger.capture);
}

static void sink_write(const char *p, size_t n)
{
	if (logger.capturing) {
		buf_add(&logger.capture, p, n);
		return;
	}
	while (n > 0) {
		ssize_t w = write(logger.fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return; /* a log sink failure must not stop the daemon */
		}
		p += w;
		n -= (size_t)w;
	}
}

/* The redacted form of a string value, as JSON or as text. */
static void put_str(struct buf *b, const char *key, const char *s, size_t n, bool json)
{
	struct buf tmp = BUF_INIT;
	const char *v = s;
	size_t vn = n;
	if (key && redact_key_is_secret(key, strlen(key))) {
		v = REDACT_MASK;
		vn = strlen(REDACT_MASK);
	} else if (s != NULL) {
		redact_value(&tmp, s, n);
		v = tmp.data;
		vn = tmp.len;
	}
	if (v == NULL) {
		buf_adds(b, json ? "null" : "-");
	} else if (json) {
		buf_add_json_str(b, v, vn);
	} else {
		bool quote = vn == 0;
		for (size_t i = 0; i < vn && !quote; i++)
			quote = v[i] == ' ' || v[i] == '"' || v[i] == '=' ||
			        (unsigned char)v[i] < 0x20;
		if (quote)
			buf_add_json_str(b, v, vn);
		else
			buf_add(b, v, vn);
	}
	buf_free(&tmp);
}

/* A double stays a JSON real even when whole ("2.0", not "2"), so log
 * stores that infer field types see one type per field. */
static void put_double(struct buf *b, double d)
{
	if (!isfinite(d)) {
		buf_adds(b, "null");
		return;
	}
	char tmp[40];
	snprintf(tmp, sizeof tmp, "%.17g", d);
	buf_adds(b, tmp);
	if (strpbrk(tmp, ".eE") == NULL)
		buf_adds(b, ".0");
}

/* Writes a jansson value as JSON, masking secret keys and embedded secrets. */
static void put_json(struct buf *b, const json_t *j, int depth)
{
	if (j == NULL || depth > 32) {
		buf_adds(b, "null");
		return;
	}
	switch (json_typeof(j)) {
	case JSON_OBJECT: {
		const char *k;
		json_t *v;
		bool first = true;
		buf_addc(b, '{');
		json_object_foreach((json_t *)j, k, v)
		{
			if (!first)
				buf_addc(b, ',');
			first = false;
			buf_add_json_str(b, k, strlen(k));
			buf_addc(b, ':');
			if (redact_key_is_secret(k, strlen(k)) && !json_is_null(v))
				buf_adds(b, "\"" REDACT_MASK "\"");
			else
				put_json(b, v, depth + 1);
		}
		buf_addc(b, '}');
		break;
	}
	case JSON_ARRAY: {
		size_t i;
		json_t *v;
		buf_addc(b, '[');
		json_array_foreach((json_t *)j, i, v)
		{
			if (i)
				buf_addc(b, ',');
			put_json(b, v, depth + 1);
		}
		buf_addc(b, ']');
		break;
	}
	case JSON_STRING:
		put_str(b, NULL, json_string_value(j), json_string_length(j), true);
		break;
	case JSON_INTEGER: buf_printf(b, "%" JSON_INTEGER_FORMAT, json_integer_value(j)); break;
	case JSON_REAL: put_double(b, json_real_value(j)); break;
	case JSON_TRUE: buf_adds(b, "true"); break;
	case JSON_FALSE: buf_adds(b, "false"); break;
	case JSON_NULL: buf_adds(b, "null"); break;
	}
}

static bool reserved_key(const char *k)
{
	return strcmp(k, "ts") == 0 || strcmp(k, "level") == 0 || strcmp(k, "event") == 0 ||
	       strcmp(k, "msg") == 0;
}

static void put_field(struct buf *b, const struct log_field *f, bool json)
{
	bool secret = redact_key_is_secret(f->key, strlen(f->key));
	switch (f->type) {
	case LF_T_STR: put_str(b, f->key, f->v.s, f->v.s ? strlen(f->v.s) : 0, json); break;
	case LF_T_STRN: put_str(b, f->key, f->v.s, f->n, json); break;
	case LF_T_INT:
		if (secret)
			put_str(b, f->key, "", 0, json);
		else
			buf_printf(b, "%lld", f->v.i);
		break;
	case LF_T_UINT:
		if (secret)
			put_str(b, f->key, "", 0, json);
		else
			buf_printf(b, "%llu", f->v.u);
		break;
	case LF_T_DBL:
		if (secret)
			put_str(b, f->key, "", 0, json);
		else
			put_double(b, f->v.d);
		break;
	case LF_T_BOOL: buf_adds(b, f->v.b ? "true" : "false"); break;
	case LF_T_JSON:
		if (secret && f->v.j && !json_is_null(f->v.j)) {
			put_str(b, f->key, "", 0, json);
		} else if (json) {
			put_json(b, f->v.j, 0);
		} else {
			struct buf tmp = BUF_INIT;
			put_json(&tmp, f->v.j, 0);
			buf_add(b, tmp.data, tmp.len);
			buf_free(&tmp);
		}
		break;
	case LF_T_END: break;
	}
}

void log_emit(enum log_level level, const char *event, const char *msg, ...)
{
	if (!log_enabled(level))
		return;
	struct buf *b = &logger.line;
	bool json = logger.format == LOG_FMT_JSON;
	char ts[40];
	clock_fmt_rfc3339_us(ts, sizeof ts, clock_now_us());
	buf_reset(b);
	if (json) {
		buf_printf(b, "{\"ts\":\"%s\",\"level\":\"%s\",\"event\":", ts,
		           log_level_name(level));
		buf_add_json_str(b, event, strlen(event));
		buf_adds(b, ",\"msg\":");
		put_str(b, NULL, msg, strlen(msg), true);
	} else {
		buf_printf(b, "%s %-5s %s: ", ts, log_level_name(level), event);
		struct buf tmp = BUF_INIT;
		redact_value(&tmp, msg, strlen(msg));
		for (size_t i = 0; i < tmp.len; i++)
			buf_addc(b, (unsigned char)tmp.data[i] < 0x20 ? ' ' : tmp.data[i]);
		buf_free(&tmp);
	}
	va_list ap;
	va_start(ap, msg);
	for (;;) {
		struct log_field f = va_arg(ap, struct log_field);
		if (f.type == LF_T_END || f.key == NULL)
			break;
		if (json) {
			buf_addc(b, ',');
			if (reserved_key(f.key))
				buf_adds(b, "\"field_");
			else
				buf_addc(b, '"');
			struct buf k = BUF_INIT;
			buf_add_json_str(&k, f.key, strlen(f.key));
			buf_add(b, k.data + 1, k.len - 1);
			buf_free(&k);
			buf_addc(b, ':');
		} else {
			buf_printf(b, " %s=", f.key);
		}
		put_field(b, &f, json);
	}
	va_end(ap);
	buf_adds(b, json ? "}\n" : "\n");
	sink_write(b->data, b->len);
}

/* Strips terminal colour sequences (ESC [ ... letter) from a foreign line. */
static void strip_ansi(struct buf *out, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '\033' && i + 1 < n && s[i + 1] == '[') {
			i += 2;
			while (i < n &&
			       !((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z')))
				i++;
			continue;
		}
		buf_addc(out, s[i]);
	}
}

static void foreign_line(const char *s, size_t n)
{
	struct buf clean = BUF_INIT;
	strip_ansi(&clean, s, n);
	if (clean.len == 0) {
		buf_free(&clean);
		return;
	}
	/* libevhtp reports every pipelined request this way; the requests are
	 * served correctly (server.c re-triggers the read), so it is not news. */
	enum log_level lvl =
	        strstr(clean.data, "resuming when not paused") ? LOG_LVL_DEBUG : LOG_LVL_WARN;
	log_emit(lvl, "lib.stderr", clean.data, LF_END);
	buf_free(&clean);
}

static ssize_t stderr_cookie_write(void *cookie, const char *p, size_t n)
{
	buf_add(&logger.foreign, p, n);
	for (;;) {
		char *nl = memchr(logger.foreign.data, '\n', logger.foreign.len);
		if (nl == NULL)
			break;
		size_t len = (size_t)(nl - logger.foreign.data);
		foreign_line(logger.foreign.data, len);
		memmove(logger.foreign.data, nl + 1, logger.foreign.len - len - 1);
		logger.foreign.len -= len + 1;
		logger.foreign.data[logger.foreign.len] = '\0';
	}
	if (logger.foreign.len > 4096) { /* no newline coming: flush what we have */
		foreign_line(logger.foreign.data, logger.foreign.len);
		buf_reset(&logger.foreign);
	}
	return (ssize_t)n;
}

void log_capture_stdio_stderr(void)
{
	static cookie_io_functions_t fns = {.write = stderr_cookie_write};
	FILE *f = fopencookie(NULL, "w", fns);
	if (f == NULL)
		return;
	setvbuf(f, NULL, _IONBF, 0);
	stderr = f;
}
