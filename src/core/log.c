/* The structured process log. Each call renders one line into a reused
 * buffer and hands it to the sink with a single write(2), so lines from one
 * process never interleave. Redaction runs here, before any sink: a value is
 * masked whole when its field name is secret, and scanned for embedded
 * secrets otherwise (see redact.c). */
#include "core/log.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/clock.h"
#include "core/redact.h"
#include "core/scrub.h"
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
	struct buf scratch; /* a value after redaction, reused line after line */
	struct buf pending; /* info/debug lines not yet written (log_batch_on) */
	struct event *flush_ev;
	const struct scrub *scrub; /* privacy.scrub, NULL when off */
	struct buf pii; /* an LF_PII value after scrubbing */
	int64_t ts_sec; /* the second ts_prefix was formatted for */
	char ts_prefix[32]; /* "2026-11-25T22:38:23." */
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
	log_flush();
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
	log_batch_off();
	if (logger.fd != STDERR_FILENO && logger.fd >= 0)
		close(logger.fd);
	logger.fd = STDERR_FILENO;
	free(logger.path);
	logger.path = NULL;
	buf_free(&logger.line);
	buf_free(&logger.foreign);
	buf_free(&logger.scratch);
	buf_free(&logger.pii);
}

void log_set_scrub(const struct scrub *sc)
{
	logger.scrub = sc;
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

static void fd_write(const char *p, size_t n)
{
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

void log_flush(void)
{
	if (logger.pending.len == 0)
		return;
	fd_write(logger.pending.data, logger.pending.len);
	buf_reset(&logger.pending);
}

static void log_flush_cb(evutil_socket_t fd, short what, void *arg)
{
	log_flush();
}

#define LOG_BATCH_MAX (64 * 1024)

/* With batching on, info and debug lines wait for the end of the loop pass
 * (the flush event has the lowest priority) and go out in one write(2):
 * a busy server writes one access-log syscall per pass, not per request.
 * Warnings and errors flush at once, with everything before them. */
static void sink_write(enum log_level level, const char *p, size_t n)
{
	if (logger.capturing) {
		buf_add(&logger.capture, p, n);
		return;
	}
	if (logger.flush_ev == NULL) {
		fd_write(p, n);
		return;
	}
	buf_add(&logger.pending, p, n);
	if (level >= LOG_LVL_WARN || logger.pending.len >= LOG_BATCH_MAX)
		log_flush();
	else if (!event_pending(logger.flush_ev, EV_TIMEOUT, NULL))
		event_active(logger.flush_ev, EV_TIMEOUT, 0);
}

bool log_batch_on(struct event_base *base)
{
	if (logger.flush_ev)
		return true;
	int n = event_base_get_npriorities(base);
	if (n < 2)
		return false;
	logger.flush_ev = event_new(base, -1, 0, log_flush_cb, NULL);
	event_priority_set(logger.flush_ev, n - 1);
	return true;
}

void log_batch_off(void)
{
	log_flush();
	if (logger.flush_ev)
		event_free(logger.flush_ev);
	logger.flush_ev = NULL;
}

/* The redacted form of a string value, as JSON or as text. secret: the
 * field's name says the whole value is a secret. */
static void put_str(struct buf *b, bool secret, const char *s, size_t n, bool json)
{
	const char *v = s;
	size_t vn = n;
	if (secret) {
		v = REDACT_MASK;
		vn = sizeof REDACT_MASK - 1;
	} else if (s != NULL) {
		buf_reset(&logger.scratch);
		if (redact_value(&logger.scratch, s, n)) {
			v = logger.scratch.data;
			vn = logger.scratch.len;
		}
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
}

/* Integers without printf: the access log writes several per line. */
static void put_i64(struct buf *b, long long v)
{
	char tmp[24];
	size_t i = sizeof tmp;
	unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
	do {
		tmp[--i] = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		tmp[--i] = '-';
	buf_add(b, tmp + i, sizeof tmp - i);
}

static void put_u64(struct buf *b, unsigned long long u)
{
	char tmp[24];
	size_t i = sizeof tmp;
	do {
		tmp[--i] = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	buf_add(b, tmp + i, sizeof tmp - i);
}

/* The timestamp, with the date-and-seconds part formatted once a second. */
static void put_ts(struct buf *b, int64_t us)
{
	int64_t sec = us / 1000000;
	if (sec != logger.ts_sec || logger.ts_prefix[0] == '\0') {
		char full[40];
		clock_fmt_rfc3339_us(full, sizeof full, us);
		char *dot = strchr(full, '.');
		size_t n = dot ? (size_t)(dot - full) + 1 : 0;
		memcpy(logger.ts_prefix, full, n);
		logger.ts_prefix[n] = '\0';
		logger.ts_sec = sec;
	}
	buf_adds(b, logger.ts_prefix);
	long frac = (long)(us % 1000000);
	char f[7];
	for (int i = 5; i >= 0; i--) {
		f[i] = (char)('0' + frac % 10);
		frac /= 10;
	}
	buf_add(b, f, 6);
	buf_addc(b, 'Z');
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
			else if (scrub_field_listed(logger.scrub, k, strlen(k)) && !json_is_null(v))
				buf_adds(b, "\"" SCRUB_MASK_FIELD "\"");
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
		put_str(b, false, json_string_value(j), json_string_length(j), true);
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

/* Field names are almost always string literals: remember the verdict per
 * name, keyed by its address but confirmed by its text, so a reused address
 * can never borrow another name's verdict. */
static bool key_is_secret(const char *key)
{
	static struct {
		const char *ptr;
		char text[32];
		bool secret;
	} cache[256];
	size_t len = strlen(key);
	uintptr_t a = (uintptr_t)key;
	size_t i = (size_t)((a >> 3) ^ (a >> 11)) & 255;
	if (cache[i].ptr == key && len < sizeof cache[i].text && strcmp(cache[i].text, key) == 0)
		return cache[i].secret;
	bool secret = redact_key_is_secret(key, len);
	if (len < sizeof cache[i].text) {
		cache[i].ptr = key;
		memcpy(cache[i].text, key, len + 1);
		cache[i].secret = secret;
	}
	return secret;
}

static void put_field(struct buf *b, const struct log_field *f, bool json)
{
	bool secret = key_is_secret(f->key);
	switch (f->type) {
	case LF_T_STR: put_str(b, secret, f->v.s, f->v.s ? strlen(f->v.s) : 0, json); break;
	case LF_T_STRN: put_str(b, secret, f->v.s, f->n, json); break;
	case LF_T_PII: {
		size_t n = f->n == SIZE_MAX && f->v.s ? strlen(f->v.s) : f->n;
		if (logger.scrub && f->v.s && !secret) {
			buf_reset(&logger.pii);
			scrub_text(logger.scrub, &logger.pii, f->v.s, n);
			put_str(b, false, logger.pii.data ? logger.pii.data : "", logger.pii.len,
			        json);
		} else {
			put_str(b, secret, f->v.s, n, json);
		}
		break;
	}
	case LF_T_INT:
		if (secret)
			put_str(b, true, "", 0, json);
		else
			put_i64(b, f->v.i);
		break;
	case LF_T_UINT:
		if (secret)
			put_str(b, true, "", 0, json);
		else
			put_u64(b, f->v.u);
		break;
	case LF_T_DBL:
		if (secret)
			put_str(b, true, "", 0, json);
		else
			put_double(b, f->v.d);
		break;
	case LF_T_BOOL: buf_adds(b, f->v.b ? "true" : "false"); break;
	case LF_T_JSON:
		if (secret && f->v.j && !json_is_null(f->v.j)) {
			put_str(b, true, "", 0, json);
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
	buf_reset(b);
	if (json) {
		buf_adds(b, "{\"ts\":\"");
		put_ts(b, clock_now_us());
		buf_adds(b, "\",\"level\":\"");
		buf_adds(b, log_level_name(level));
		buf_adds(b, "\",\"event\":");
		buf_add_json_str(b, event, strlen(event));
		buf_adds(b, ",\"msg\":");
		put_str(b, false, msg, strlen(msg), true);
	} else {
		char ts[40];
		clock_fmt_rfc3339_us(ts, sizeof ts, clock_now_us());
		buf_printf(b, "%s %-5s %s: ", ts, log_level_name(level), event);
		buf_reset(&logger.scratch);
		const char *m = msg;
		size_t mn = strlen(msg);
		if (redact_value(&logger.scratch, msg, mn)) {
			m = logger.scratch.data;
			mn = logger.scratch.len;
		}
		for (size_t i = 0; i < mn; i++)
			buf_addc(b, (unsigned char)m[i] < 0x20 ? ' ' : m[i]);
	}
	va_list ap;
	va_start(ap, msg);
	for (;;) {
		struct log_field f = va_arg(ap, struct log_field);
		if (f.type == LF_T_END || f.key == NULL)
			break;
		if (json) {
			if (reserved_key(f.key)) {
				buf_adds(b, ",\"field_");
				buf_adds(b, f.key);
				buf_adds(b, "\":");
			} else {
				buf_addc(b, ',');
				buf_add_json_str(b, f.key, strlen(f.key));
				buf_addc(b, ':');
			}
		} else {
			buf_printf(b, " %s=", f.key);
		}
		put_field(b, &f, json);
	}
	va_end(ap);
	buf_adds(b, json ? "}\n" : "\n");
	sink_write(level, b->data, b->len);
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
