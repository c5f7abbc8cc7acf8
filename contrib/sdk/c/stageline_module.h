/* stageline_module.h: a single-header C SDK for stageline worker modules.
 *
 * A module is a program the daemon runs to execute a pipeline stage; it
 * speaks the worker protocol (proto/worker-protocol.md) on its stdin and
 * stdout. This header implements the protocol on msgpack-c, so a module is a
 * handler function. In exactly one file:
 *
 *     #define STAGELINE_MODULE_IMPLEMENTATION
 *     #include "stageline_module.h"
 *
 *     static void handle(struct sl_task *t, void *arg)
 *     {
 *             int64_t n = sl_param_int(t, "n", 1);
 *             sl_progress(t, 0.5, "halfway");
 *             if (n < 0) {
 *                     sl_error(t, "n must be >= 0", "BAD_PARAM", "input", SL_RETRY_DEFAULT);
 *                     return;
 *             }
 *             sl_result_json(t, "{\"ok\": true}");
 *     }
 *
 *     int main(void)
 *     {
 *             struct sl_module_config cfg = {.name = "example", .version = "1.0"};
 *             if (sl_module_hello(&cfg) != 0)
 *                     return 1;
 *             return sl_module_run(handle, NULL);
 *     }
 *
 * and link with -lmsgpackc. The handler answers its task exactly once, with
 * sl_result_json()/sl_result_object() or sl_error(); if it returns without
 * answering, the SDK answers with a module error (code NO_ANSWER).
 *
 * sl_module_hello() claims the standard streams: the protocol moves to
 * private close-on-exec descriptors, fd 1 (and printf) goes to stderr (the
 * stage log), fd 0 reads /dev/null, so neither a stray printf nor a child
 * process can corrupt or steal frames. Call it first thing in main().
 *
 * Tasks run one at a time on the calling thread, persistent or not; a
 * persistent module may still declare concurrency > 1 so the daemon queues
 * tasks in the pipe. With .batch set, results of the tasks read together go
 * out in one write (for modules whose tasks are instant). The SDK keeps its
 * state in globals: one module per process, not thread-safe. Out of memory
 * aborts. All strings a task holds (and the ones the sl_param and sl_input
 * helpers return) live until the handler returns. */
#ifndef STAGELINE_MODULE_H
#define STAGELINE_MODULE_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SL_PROTOCOL 1
#define SL_MAX_FRAME_BYTES (16u * 1024 * 1024)
#define SL_MAX_DEPTH 32 /* of a frame's map, the frame itself being depth 1 */
#define SL_MAX_ITEMS 65536 /* entries of one array or map */
#define SL_MAX_VALUES (1024u * 1024) /* values in one frame (the daemon's decoder caps them) */

/* retryable arguments of sl_error(): DEFAULT is the category's default
 * (true for module and infra, false for input and cancelled). */
#define SL_RETRY_DEFAULT (-1)
#define SL_RETRY_NO 0
#define SL_RETRY_YES 1

struct sl_module_config {
	const char *name; /* required; copied */
	const char *version; /* required; copied: module@version is the engine id */
	bool persistent; /* one process serves many tasks */
	int concurrency; /* persistent: tasks the daemon may send at once; 0 means 1 */
	bool batch; /* write the results of tasks read together in one write */
	int progress_interval_ms; /* least time between progress frames: 0 means 100, < 0 none */
	size_t max_frame_bytes; /* 0 means 16 MiB: match the daemon's limits.max_frame_bytes */
};

struct sl_input {
	const char *name, *type, *path; /* path is absolute, inside the workdir */
	const char *format; /* NULL when absent */
	int64_t size_bytes;
};

struct sl_task_priv;

/* A task. Strings are never NULL ("" when the daemon sent none). */
struct sl_task {
	const char *task_id, *job_id, *stage, *workdir, *request_id;
	int attempt; /* 1, 2, ... */
	int64_t deadline_ms; /* Unix time in ms; 0 when absent */
	const msgpack_object *params; /* always a map */
	const struct sl_input *inputs;
	size_t ninputs;
	struct sl_task_priv *priv;
};

typedef void (*sl_task_fn)(struct sl_task *t, void *arg);

/* Claims the standard streams and sends the hello frame. 0, or -1 (the
 * reason on stderr). */
int sl_module_hello(const struct sl_module_config *cfg);

/* Serves tasks until the module should exit: after its task (one-shot), at
 * EOF or a shutdown frame (persistent). Returns the exit status for main():
 * 0, 1 on an I/O error, 2 when the daemon's frames were malformed. */
int sl_module_run(sl_task_fn handler, void *arg);

/* Reading params and JSON values (msgpack objects). */
const msgpack_object *sl_get(const msgpack_object *map, const char *key);
const char *sl_obj_str(struct sl_task *t, const msgpack_object *o); /* NULL unless a str */
const char *sl_param_str(struct sl_task *t, const char *key, const char *def);
int64_t sl_param_int(const struct sl_task *t, const char *key, int64_t def);
double sl_param_double(const struct sl_task *t, const char *key, double def);
bool sl_param_bool(const struct sl_task *t, const char *key, bool def);
const struct sl_input *sl_input_find(const struct sl_task *t, const char *name);
/* The input's file parsed as JSON (e.g. "input.json", "<stage>.output");
 * NULL if there is no such input or it is not JSON (the reason on stderr). */
const msgpack_object *sl_input_json(struct sl_task *t, const char *name);
/* Parses JSON text into the task's memory; NULL on error (on stderr). */
const msgpack_object *sl_json_parse(struct sl_task *t, const char *text, size_t len);

/* Frames about the task. 0 when sent; -1 when refused (the reason on
 * stderr): an invalid argument, or the task was already answered. */
int sl_progress(struct sl_task *t, double fraction, const char *message);
int sl_progress_n(struct sl_task *t, int64_t current, int64_t total, const char *message);
int sl_log(struct sl_task *t, const char *level, const char *message);
int sl_logf(struct sl_task *t, const char *level, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
int sl_log_json(struct sl_task *t, const char *level, const char *message, const char *fields_json);
int sl_warning(struct sl_task *t, const char *message, const char *detail_json);

struct sl_artifact_desc {
	const char *name; /* its name in the manifest */
	const char *path; /* relative to the workdir (absolute inside it is accepted) */
	const char *type; /* audio, transcript, subtitle, metadata, ... */
	const char *format; /* optional: wav, json, srt, ... */
	const char *role; /* "output" (NULL) or "intermediate" */
	bool discard; /* intermediate only: don't keep it in the store */
	const char *reason; /* optional: why an intermediate file exists */
	const char *meta_json; /* optional: a JSON object of anything else */
};
int sl_artifact(struct sl_task *t, const char *name, const char *path, const char *type,
                const char *format, const char *role);
int sl_artifact_ex(struct sl_task *t, const struct sl_artifact_desc *a);

/* Answers. sl_result_json takes the output as a JSON object's text; if it
 * is invalid the task is answered with a module error (BAD_OUTPUT) instead
 * and -1 returned. resources, if set before, go with the result. */
int sl_result_json(struct sl_task *t, const char *output_json);
int sl_result_object(struct sl_task *t, const msgpack_object *output);
int sl_set_resources_json(struct sl_task *t, const char *resources_json);
/* category: "input" (never retried), "module" (NULL), "infra", "cancelled";
 * retryable: SL_RETRY_DEFAULT, SL_RETRY_NO or SL_RETRY_YES. */
int sl_error(struct sl_task *t, const char *message, const char *code, const char *category,
             int retryable);
int sl_error_detail(struct sl_task *t, const char *message, const char *code, const char *category,
                    int retryable, const char *detail_json);
bool sl_answered(const struct sl_task *t);

/* Cancel and deadline. sl_cancelled() reads whatever frames wait on stdin
 * without blocking: call it between steps, then answer with
 * sl_error(t, ..., "cancelled", SL_RETRY_DEFAULT) (or a result). */
bool sl_cancelled(struct sl_task *t);
const char *sl_cancel_reason(const struct sl_task *t); /* NULL until cancelled */
int64_t sl_remaining_ms(const struct sl_task *t); /* INT64_MAX without a deadline */

#ifdef __cplusplus
}
#endif

#endif /* STAGELINE_MODULE_H */

#ifdef STAGELINE_MODULE_IMPLEMENTATION
#ifndef STAGELINE_MODULE_IMPLEMENTED
#define STAGELINE_MODULE_IMPLEMENTED

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct sl_task_priv {
	msgpack_zone zone; /* everything the task holds */
	char *frame; /* the task frame's bytes: the zone's objects point into them */
	const msgpack_object *resources;
	const char *cancel_reason;
	int64_t last_progress_ms;
	bool answered, cancelled, noted_late;
};

struct sl__task_alloc {
	struct sl_task task;
	struct sl_task_priv priv;
};

static struct {
	char *name, *version;
	bool persistent, batch, hello_sent, eof, shutdown;
	int concurrency, progress_interval_ms;
	size_t max_frame_bytes;
	int in_fd, out_fd;
	int status; /* 0, 1 I/O error, 2 protocol error */
	char *in; /* frames from the daemon: [in_pos, in_len) not yet processed */
	size_t in_len, in_cap, in_pos;
	size_t scan_pos; /* sl_cancelled() looked at complete frames up to here */
	char **cancels; /* task ids of cancels seen ahead of the main loop */
	size_t ncancels, cap_cancels;
	msgpack_sbuffer out; /* frames to the daemon, not yet written */
	msgpack_packer pk;
	msgpack_zone scratch;
} sl__g = {.in_fd = -1, .out_fd = -1};

static const msgpack_object sl__empty_map = {.type = MSGPACK_OBJECT_MAP};

static void sl__note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sl__note(const char *fmt, ...)
{
	va_list ap;
	fputs("stageline_module: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void *sl__xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (p == NULL) {
		fputs("stageline_module: out of memory\n", stderr);
		abort();
	}
	return p;
}

static void *sl__xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (p == NULL) {
		fputs("stageline_module: out of memory\n", stderr);
		abort();
	}
	return p;
}

static char *sl__xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;
	return memcpy(sl__xmalloc(n), s, n);
}

static void *sl__zalloc(struct sl_task *t, size_t n)
{
	void *p = msgpack_zone_malloc(&t->priv->zone, n ? n : 1);
	if (p == NULL) {
		fputs("stageline_module: out of memory\n", stderr);
		abort();
	}
	return p;
}

static char *sl__zstrndup(struct sl_task *t, const char *s, size_t n)
{
	char *p = sl__zalloc(t, n + 1);
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

static int64_t sl__now_ms(void)
{
	struct timespec ts;
	if (timespec_get(&ts, TIME_UTC) != TIME_UTC)
		return 0;
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool sl__str_is(const msgpack_object *o, const char *s)
{
	size_t n = strlen(s);
	return o != NULL && o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
	       memcmp(o->via.str.ptr, s, n) == 0;
}

/* ---- UTF-8 ---- */

/* Length of the valid UTF-8 sequence at s[0..n), or 0 if it is invalid. */
static size_t sl__utf8_seq(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	size_t len, i;
	uint32_t cp;
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2;
		cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		cp = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4;
		cp = c & 0x07;
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
	    (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
		return 0;
	return len;
}

static bool sl__utf8_valid(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, k;
	while (i < n) {
		if (p[i] < 0x80) {
			i++;
			continue;
		}
		if ((k = sl__utf8_seq(p + i, n - i)) == 0)
			return false;
		i += k;
	}
	return true;
}

/* Packs free text as a str, each invalid UTF-8 byte replaced by U+FFFD. */
static void sl__pack_text(const char *s)
{
	size_t n = strlen(s), i = 0, k, o = 0;
	const unsigned char *p = (const unsigned char *)s;
	char *fixed;
	if (sl__utf8_valid(s, n)) {
		msgpack_pack_str(&sl__g.pk, n);
		msgpack_pack_str_body(&sl__g.pk, s, n);
		return;
	}
	fixed = sl__xmalloc(n * 3);
	while (i < n) {
		if ((k = sl__utf8_seq(p + i, n - i)) == 0) {
			memcpy(fixed + o, "\xef\xbf\xbd", 3);
			o += 3;
			i++;
		} else {
			memcpy(fixed + o, p + i, k);
			o += k;
			i += k;
		}
	}
	msgpack_pack_str(&sl__g.pk, o);
	msgpack_pack_str_body(&sl__g.pk, fixed, o);
	free(fixed);
}

/* ---- JSON values as msgpack objects ---- */

/* Whether o may travel in a JSON-carrying map at nesting depth `depth` of
 * its frame: no bin, no ext, string keys, valid UTF-8 without NUL, finite
 * floats, 64-bit integers, within the depth and size limits. *count adds up
 * the values seen. */
static bool sl__check_obj(const msgpack_object *o, int depth, const char *what, size_t *count)
{
	uint32_t i;
	if (++*count > SL_MAX_VALUES - 64) { /* leaves room for the frame's own keys */
		sl__note("%s: more than %u values in one frame", what, SL_MAX_VALUES - 64);
		return false;
	}
	switch (o->type) {
	case MSGPACK_OBJECT_NIL:
	case MSGPACK_OBJECT_BOOLEAN:
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: return true;
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		if (o->via.u64 > (uint64_t)INT64_MAX) {
			sl__note("%s: integer %llu does not fit in 64 bits", what,
			         (unsigned long long)o->via.u64);
			return false;
		}
		return true;
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		if (!isfinite(o->via.f64)) {
			sl__note("%s: a float that is not finite has no JSON form", what);
			return false;
		}
		return true;
	case MSGPACK_OBJECT_STR:
		if (!sl__utf8_valid(o->via.str.ptr, o->via.str.size) ||
		    (o->via.str.size > 0 &&
		     memchr(o->via.str.ptr, '\0', o->via.str.size) != NULL)) {
			sl__note("%s: a string is not valid UTF-8 or holds a NUL byte", what);
			return false;
		}
		return true;
	case MSGPACK_OBJECT_ARRAY:
	case MSGPACK_OBJECT_MAP:
		if (depth > SL_MAX_DEPTH) {
			sl__note("%s: nested deeper than %d levels", what, SL_MAX_DEPTH);
			return false;
		}
		if ((o->type == MSGPACK_OBJECT_ARRAY ? o->via.array.size : o->via.map.size) >
		    SL_MAX_ITEMS) {
			sl__note("%s: more than %d entries", what, SL_MAX_ITEMS);
			return false;
		}
		if (o->type == MSGPACK_OBJECT_ARRAY) {
			for (i = 0; i < o->via.array.size; i++)
				if (!sl__check_obj(&o->via.array.ptr[i], depth + 1, what, count))
					return false;
			return true;
		}
		for (i = 0; i < o->via.map.size; i++) {
			if (o->via.map.ptr[i].key.type != MSGPACK_OBJECT_STR) {
				sl__note("%s: a map key is not a string", what);
				return false;
			}
			if (!sl__check_obj(&o->via.map.ptr[i].key, depth + 1, what, count) ||
			    !sl__check_obj(&o->via.map.ptr[i].val, depth + 1, what, count))
				return false;
		}
		return true;
	default: sl__note("%s: bin and ext data have no JSON form", what); return false;
	}
}

struct sl__json {
	struct sl_task *t;
	const char *s, *p, *end;
	int max_depth;
	const char *err;
};

static bool sl__json_fail(struct sl__json *j, const char *err)
{
	if (j->err == NULL)
		j->err = err;
	return false;
}

static void sl__json_ws(struct sl__json *j)
{
	while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
		j->p++;
}

static int sl__hex4(const char *p)
{
	int v = 0, i;
	for (i = 0; i < 4; i++) {
		char c = p[i];
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			return -1;
	}
	return v;
}

static size_t sl__put_utf8(char *o, uint32_t cp)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xc0 | cp >> 6);
		o[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xe0 | cp >> 12);
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		o[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	o[0] = (char)(0xf0 | cp >> 18);
	o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
	o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
	o[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

static bool sl__json_string(struct sl__json *j, msgpack_object *o)
{
	const char *q = ++j->p; /* after the opening quote */
	size_t n = 0, k;
	char *out;
	/* First pass: find the end and validate; the decoded text is never
	 * longer than its JSON form. */
	while (q < j->end && *q != '"') {
		unsigned char c = (unsigned char)*q;
		if (c < 0x20)
			return sl__json_fail(j, "control character in a string");
		if (c == '\\') {
			if (j->end - q < 2)
				return sl__json_fail(j, "unterminated string");
			q += 2;
			continue;
		}
		if (c >= 0x80) {
			if ((k = sl__utf8_seq((const unsigned char *)q, (size_t)(j->end - q))) == 0)
				return sl__json_fail(j, "invalid UTF-8 in a string");
			q += k;
			continue;
		}
		q++;
	}
	if (q >= j->end)
		return sl__json_fail(j, "unterminated string");
	out = sl__zalloc(j->t, (size_t)(q - j->p));
	while (j->p < q) {
		char c = *j->p;
		if (c != '\\') {
			out[n++] = c;
			j->p++;
			continue;
		}
		c = j->p[1];
		j->p += 2;
		switch (c) {
		case '"':
		case '\\':
		case '/': out[n++] = c; break;
		case 'b': out[n++] = '\b'; break;
		case 'f': out[n++] = '\f'; break;
		case 'n': out[n++] = '\n'; break;
		case 'r': out[n++] = '\r'; break;
		case 't': out[n++] = '\t'; break;
		case 'u': {
			int hi, lo;
			uint32_t cp;
			if (q - j->p < 4 || (hi = sl__hex4(j->p)) < 0)
				return sl__json_fail(j, "bad \\u escape");
			j->p += 4;
			cp = (uint32_t)hi;
			if (hi >= 0xd800 && hi <= 0xdbff) {
				if (q - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u' ||
				    (lo = sl__hex4(j->p + 2)) < 0xdc00 || lo > 0xdfff)
					return sl__json_fail(j,
					                     "unpaired surrogate in a \\u escape");
				j->p += 6;
				cp = 0x10000 + (((uint32_t)hi - 0xd800) << 10) +
				     ((uint32_t)lo - 0xdc00);
			} else if (hi >= 0xdc00 && hi <= 0xdfff) {
				return sl__json_fail(j, "unpaired surrogate in a \\u escape");
			} else if (hi == 0) {
				return sl__json_fail(j, "\\u0000: strings can't hold NUL");
			}
			n += sl__put_utf8(out + n, cp);
			break;
		}
		default: return sl__json_fail(j, "bad escape in a string");
		}
	}
	j->p = q + 1;
	o->type = MSGPACK_OBJECT_STR;
	o->via.str.ptr = out;
	o->via.str.size = (uint32_t)n;
	return true;
}

static bool sl__json_number(struct sl__json *j, msgpack_object *o)
{
	const char *start = j->p, *q = j->p;
	bool neg = false, integral = true;
	char buf[64], *copy;
	size_t len;
	double d;
	if (q < j->end && *q == '-') {
		neg = true;
		q++;
	}
	if (q >= j->end || *q < '0' || *q > '9')
		return sl__json_fail(j, "bad number");
	if (*q == '0')
		q++;
	else
		while (q < j->end && *q >= '0' && *q <= '9')
			q++;
	if (q < j->end && *q == '.') {
		integral = false;
		if (++q >= j->end || *q < '0' || *q > '9')
			return sl__json_fail(j, "bad number");
		while (q < j->end && *q >= '0' && *q <= '9')
			q++;
	}
	if (q < j->end && (*q == 'e' || *q == 'E')) {
		integral = false;
		q++;
		if (q < j->end && (*q == '+' || *q == '-'))
			q++;
		if (q >= j->end || *q < '0' || *q > '9')
			return sl__json_fail(j, "bad number");
		while (q < j->end && *q >= '0' && *q <= '9')
			q++;
	}
	j->p = q;
	if (integral) {
		const char *r = start + neg;
		uint64_t u = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
		for (; r < q; r++) {
			unsigned digit = (unsigned)(*r - '0');
			if (u > (limit - digit) / 10)
				break;
			u = u * 10 + digit;
		}
		if (r == q) { /* it fits: an integer; else a float as below */
			if (neg && u != 0) {
				o->type = MSGPACK_OBJECT_NEGATIVE_INTEGER;
				o->via.i64 = u == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)u;
			} else {
				o->type = MSGPACK_OBJECT_POSITIVE_INTEGER;
				o->via.u64 = u;
			}
			return true;
		}
	}
	len = (size_t)(q - start);
	copy = len < sizeof buf ? buf : sl__xmalloc(len + 1);
	memcpy(copy, start, len);
	copy[len] = '\0';
	d = strtod(copy, NULL);
	if (copy != buf)
		free(copy);
	if (!isfinite(d))
		return sl__json_fail(j, "number out of range");
	o->type = MSGPACK_OBJECT_FLOAT64;
	o->via.f64 = d;
	return true;
}

static bool sl__json_value(struct sl__json *j, msgpack_object *o, int depth);

static bool sl__json_container(struct sl__json *j, msgpack_object *o, int depth, bool is_map)
{
	char close = is_map ? '}' : ']';
	size_t n = 0, cap = 0, esize = is_map ? sizeof(msgpack_object_kv) : sizeof(msgpack_object);
	char *items = NULL;
	void *dst;
	if (depth > j->max_depth)
		return sl__json_fail(j, "nested too deep");
	j->p++;
	sl__json_ws(j);
	if (j->p < j->end && *j->p == close) {
		j->p++;
	} else {
		for (;;) {
			msgpack_object_kv kv;
			if (n == SL_MAX_ITEMS) {
				free(items);
				return sl__json_fail(j, "too many entries in an array or object");
			}
			sl__json_ws(j);
			if (is_map) {
				if (j->p >= j->end || *j->p != '"' ||
				    !sl__json_string(j, &kv.key)) {
					free(items);
					return sl__json_fail(j, "expected a string key");
				}
				sl__json_ws(j);
				if (j->p >= j->end || *j->p != ':') {
					free(items);
					return sl__json_fail(j, "expected ':'");
				}
				j->p++;
			}
			if (!sl__json_value(j, &kv.val, depth + 1)) {
				free(items);
				return false;
			}
			if (n == cap) {
				cap = cap ? cap * 2 : 8;
				items = sl__xrealloc(items, cap * esize);
			}
			memcpy(items + n * esize, is_map ? (void *)&kv : (void *)&kv.val, esize);
			n++;
			sl__json_ws(j);
			if (j->p < j->end && *j->p == ',') {
				j->p++;
				continue;
			}
			if (j->p < j->end && *j->p == close) {
				j->p++;
				break;
			}
			free(items);
			return sl__json_fail(j, is_map ? "expected ',' or '}'"
			                               : "expected ',' or ']'");
		}
	}
	dst = n ? sl__zalloc(j->t, n * esize) : NULL;
	if (n)
		memcpy(dst, items, n * esize);
	free(items);
	if (is_map) {
		o->type = MSGPACK_OBJECT_MAP;
		o->via.map.ptr = dst;
		o->via.map.size = (uint32_t)n;
	} else {
		o->type = MSGPACK_OBJECT_ARRAY;
		o->via.array.ptr = dst;
		o->via.array.size = (uint32_t)n;
	}
	return true;
}

static bool sl__json_lit(struct sl__json *j, const char *lit)
{
	size_t n = strlen(lit);
	if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0)
		return sl__json_fail(j, "unexpected character");
	j->p += n;
	return true;
}

static bool sl__json_value(struct sl__json *j, msgpack_object *o, int depth)
{
	sl__json_ws(j);
	if (j->p >= j->end)
		return sl__json_fail(j, "unexpected end");
	switch (*j->p) {
	case '{': return sl__json_container(j, o, depth, true);
	case '[': return sl__json_container(j, o, depth, false);
	case '"': return sl__json_string(j, o);
	case 't':
		o->type = MSGPACK_OBJECT_BOOLEAN;
		o->via.boolean = true;
		return sl__json_lit(j, "true");
	case 'f':
		o->type = MSGPACK_OBJECT_BOOLEAN;
		o->via.boolean = false;
		return sl__json_lit(j, "false");
	case 'n': o->type = MSGPACK_OBJECT_NIL; return sl__json_lit(j, "null");
	default: return sl__json_number(j, o);
	}
}

/* Parses text into the task's zone. depth: the value's nesting level in
 * its frame (2 for a frame's own keys); max_depth: the deepest container. */
static msgpack_object *sl__json_parse(struct sl_task *t, const char *text, size_t len, int depth,
                                      int max_depth, const char *what)
{
	struct sl__json j = {
	        .t = t, .s = text, .p = text, .end = text + len, .max_depth = max_depth};
	msgpack_object *o = sl__zalloc(t, sizeof *o);
	if (sl__json_value(&j, o, depth)) {
		sl__json_ws(&j);
		if (j.p == j.end)
			return o;
		sl__json_fail(&j, "trailing characters");
	}
	sl__note("%s: invalid JSON at byte %zu: %s", what, (size_t)(j.p - j.s), j.err);
	return NULL;
}

/* A JSON object's text for a frame's JSON-carrying key; NULL on error. */
static const msgpack_object *sl__json_map(struct sl_task *t, const char *text, const char *what)
{
	const msgpack_object *o = sl__json_parse(t, text, strlen(text), 2, SL_MAX_DEPTH, what);
	size_t count = 0;
	if (o != NULL && o->type != MSGPACK_OBJECT_MAP) {
		sl__note("%s: JSON is not an object", what);
		return NULL;
	}
	return o != NULL && sl__check_obj(o, 2, what, &count) ? o : NULL;
}

const msgpack_object *sl_json_parse(struct sl_task *t, const char *text, size_t len)
{
	return sl__json_parse(t, text, len, 1, 512, "sl_json_parse");
}

/* ---- reading params and inputs ---- */

const msgpack_object *sl_get(const msgpack_object *map, const char *key)
{
	uint32_t i;
	if (map == NULL || map->type != MSGPACK_OBJECT_MAP)
		return NULL;
	for (i = 0; i < map->via.map.size; i++)
		if (sl__str_is(&map->via.map.ptr[i].key, key))
			return &map->via.map.ptr[i].val;
	return NULL;
}

const char *sl_obj_str(struct sl_task *t, const msgpack_object *o)
{
	if (o == NULL || o->type != MSGPACK_OBJECT_STR)
		return NULL;
	return sl__zstrndup(t, o->via.str.ptr, o->via.str.size);
}

const char *sl_param_str(struct sl_task *t, const char *key, const char *def)
{
	const char *s = sl_obj_str(t, sl_get(t->params, key));
	return s ? s : def;
}

int64_t sl_param_int(const struct sl_task *t, const char *key, int64_t def)
{
	const msgpack_object *o = sl_get(t->params, key);
	if (o == NULL)
		return def;
	switch (o->type) {
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		return o->via.u64 <= (uint64_t)INT64_MAX ? (int64_t)o->via.u64 : def;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: return o->via.i64;
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		if (o->via.f64 > -9.2e18 && o->via.f64 < 9.2e18 &&
		    (double)(int64_t)o->via.f64 == o->via.f64)
			return (int64_t)o->via.f64;
		return def;
	default: return def;
	}
}

double sl_param_double(const struct sl_task *t, const char *key, double def)
{
	const msgpack_object *o = sl_get(t->params, key);
	if (o == NULL)
		return def;
	switch (o->type) {
	case MSGPACK_OBJECT_POSITIVE_INTEGER: return (double)o->via.u64;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: return (double)o->via.i64;
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64: return o->via.f64;
	default: return def;
	}
}

bool sl_param_bool(const struct sl_task *t, const char *key, bool def)
{
	const msgpack_object *o = sl_get(t->params, key);
	return o != NULL && o->type == MSGPACK_OBJECT_BOOLEAN ? o->via.boolean : def;
}

const struct sl_input *sl_input_find(const struct sl_task *t, const char *name)
{
	size_t i;
	for (i = 0; i < t->ninputs; i++)
		if (strcmp(t->inputs[i].name, name) == 0)
			return &t->inputs[i];
	return NULL;
}

const msgpack_object *sl_input_json(struct sl_task *t, const char *name)
{
	const struct sl_input *in = sl_input_find(t, name);
	FILE *f;
	char *text = NULL;
	size_t len = 0, cap = 0, n;
	const msgpack_object *o;
	if (in == NULL) {
		sl__note("task %s: no input named '%s'", t->task_id, name);
		return NULL;
	}
	if ((f = fopen(in->path, "rb")) == NULL) {
		sl__note("task %s: %s: %s", t->task_id, in->path, strerror(errno));
		return NULL;
	}
	do {
		if (cap - len < 65536) {
			cap = cap ? cap * 2 : 65536;
			text = sl__xrealloc(text, cap);
		}
		n = fread(text + len, 1, cap - len, f);
		len += n;
	} while (n > 0);
	if (ferror(f)) {
		sl__note("task %s: reading %s failed", t->task_id, in->path);
		fclose(f);
		free(text);
		return NULL;
	}
	fclose(f);
	o = sl__json_parse(t, text, len, 1, 512, in->path);
	free(text);
	return o;
}

/* ---- writing frames ---- */

static int sl__flush(void)
{
	size_t off = 0;
	while (off < sl__g.out.size) {
		ssize_t n = write(sl__g.out_fd, sl__g.out.data + off, sl__g.out.size - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (sl__g.status == 0)
				sl__note("writing frames failed: %s", strerror(errno));
			sl__g.status = 1;
			break;
		}
		off += (size_t)n;
	}
	msgpack_sbuffer_clear(&sl__g.out);
	return sl__g.status == 0 ? 0 : -1;
}

/* A frame under construction in sl__g.out: a length prefix and a map32
 * header, both patched when it ends (map32 is a valid, if not minimal,
 * encoding for any count). */
struct sl__fw {
	size_t start;
	uint32_t nkeys;
};

static void sl__put_be32(char *p, uint32_t v)
{
	p[0] = (char)(v >> 24);
	p[1] = (char)(v >> 16);
	p[2] = (char)(v >> 8);
	p[3] = (char)v;
}

static void sl__key(struct sl__fw *w, const char *key)
{
	w->nkeys++;
	msgpack_pack_str(&sl__g.pk, strlen(key));
	msgpack_pack_str_body(&sl__g.pk, key, strlen(key));
}

static void sl__kv_text(struct sl__fw *w, const char *key, const char *v)
{
	sl__key(w, key);
	sl__pack_text(v);
}

static void sl__begin(struct sl__fw *w, const char *type, const struct sl_task *t)
{
	static const char header[9] = {0, 0, 0, 0, (char)0xdf, 0, 0, 0, 0};
	w->start = sl__g.out.size;
	w->nkeys = 0;
	msgpack_sbuffer_write(&sl__g.out, header, sizeof header);
	sl__kv_text(w, "t", type);
	if (t != NULL)
		sl__kv_text(w, "task_id", t->task_id);
}

/* Ends the frame: -1 (and the frame dropped) if it is too big. */
static int sl__end(struct sl__fw *w)
{
	size_t len = sl__g.out.size - w->start - 4;
	if (len > sl__g.max_frame_bytes) {
		sl__note("a frame of %zu bytes exceeds the limit of %zu; not sent", len,
		         sl__g.max_frame_bytes);
		sl__g.out.size = w->start;
		return -1;
	}
	sl__put_be32(sl__g.out.data + w->start, (uint32_t)len);
	sl__put_be32(sl__g.out.data + w->start + 5, w->nkeys);
	return 0;
}

/* May a frame about t be sent? Not once it is answered: for a persistent
 * module, a frame about a finished task is a protocol error. */
static bool sl__may_send(struct sl_task *t, const char *what)
{
	if (!t->priv->answered)
		return true;
	if (!t->priv->noted_late) {
		t->priv->noted_late = true;
		sl__note("task %s: %s after the task was answered; dropped (and so will be any "
		         "later frame)",
		         t->task_id, what);
	}
	return false;
}

/* Non-final frames go out at once; answers may wait for the batch. */
static int sl__sent(struct sl_task *t, bool final)
{
	if (final) {
		t->priv->answered = true;
		if (sl__g.batch && sl__g.out.size < 256 * 1024)
			return 0;
	}
	return sl__flush();
}

static int sl__progress(struct sl_task *t, double fraction, const char *message, int64_t current,
                        int64_t total, bool counts)
{
	struct sl__fw w;
	int64_t now;
	if (!sl__may_send(t, "progress"))
		return -1;
	if (isnan(fraction)) {
		sl__note("task %s: progress fraction is NaN", t->task_id);
		return -1;
	}
	fraction = fraction < 0 ? 0 : fraction > 1 ? 1 : fraction;
	now = sl__now_ms();
	if (sl__g.progress_interval_ms > 0 && fraction < 1 && t->priv->last_progress_ms != 0 &&
	    now - t->priv->last_progress_ms < sl__g.progress_interval_ms &&
	    now >= t->priv->last_progress_ms)
		return 0;
	t->priv->last_progress_ms = now ? now : 1;
	sl__begin(&w, "progress", t);
	sl__key(&w, "fraction");
	msgpack_pack_double(&sl__g.pk, fraction);
	if (message != NULL)
		sl__kv_text(&w, "message", message);
	if (counts) {
		sl__key(&w, "current");
		msgpack_pack_int64(&sl__g.pk, current);
		sl__key(&w, "total");
		msgpack_pack_int64(&sl__g.pk, total);
	}
	if (sl__end(&w) != 0)
		return -1;
	return sl__sent(t, false);
}

int sl_progress(struct sl_task *t, double fraction, const char *message)
{
	return sl__progress(t, fraction, message, 0, 0, false);
}

int sl_progress_n(struct sl_task *t, int64_t current, int64_t total, const char *message)
{
	double fraction = total > 0 ? (double)current / (double)total : 0;
	return sl__progress(t, fraction, message, current, total, true);
}

static const char *sl__level(const char *level)
{
	static const char *const levels[] = {"debug", "info", "warn", "error"};
	size_t i;
	if (level != NULL && strcmp(level, "warning") == 0)
		return "warn";
	for (i = 0; level != NULL && i < sizeof levels / sizeof levels[0]; i++)
		if (strcmp(level, levels[i]) == 0)
			return levels[i];
	return NULL;
}

int sl_log_json(struct sl_task *t, const char *level, const char *message, const char *fields_json)
{
	struct sl__fw w;
	const char *lv = sl__level(level);
	const msgpack_object *fields = NULL;
	if (!sl__may_send(t, "log"))
		return -1;
	if (lv == NULL || message == NULL) {
		sl__note("task %s: log level '%s' is not debug, info, warn or error, or no message",
		         t->task_id, level ? level : "(null)");
		return -1;
	}
	if (fields_json != NULL && (fields = sl__json_map(t, fields_json, "log fields")) == NULL)
		return -1;
	sl__begin(&w, "log", t);
	sl__kv_text(&w, "level", lv);
	sl__kv_text(&w, "message", message);
	if (fields != NULL) {
		sl__key(&w, "fields");
		msgpack_pack_object(&sl__g.pk, *fields);
	}
	if (sl__end(&w) != 0)
		return -1;
	return sl__sent(t, false);
}

int sl_log(struct sl_task *t, const char *level, const char *message)
{
	return sl_log_json(t, level, message, NULL);
}

int sl_logf(struct sl_task *t, const char *level, const char *fmt, ...)
{
	char buf[1024], *msg = buf;
	va_list ap;
	int n, r;
	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n < 0)
		return -1;
	if ((size_t)n >= sizeof buf) {
		msg = sl__xmalloc((size_t)n + 1);
		va_start(ap, fmt);
		vsnprintf(msg, (size_t)n + 1, fmt, ap);
		va_end(ap);
	}
	r = sl_log(t, level, msg);
	if (msg != buf)
		free(msg);
	return r;
}

int sl_warning(struct sl_task *t, const char *message, const char *detail_json)
{
	struct sl__fw w;
	const msgpack_object *detail = NULL;
	if (!sl__may_send(t, "warning"))
		return -1;
	if (message == NULL)
		return -1;
	if (detail_json != NULL &&
	    (detail = sl__json_map(t, detail_json, "warning detail")) == NULL)
		return -1;
	sl__begin(&w, "warning", t);
	sl__kv_text(&w, "message", message);
	if (detail != NULL) {
		sl__key(&w, "detail");
		msgpack_pack_object(&sl__g.pk, *detail);
	}
	if (sl__end(&w) != 0)
		return -1;
	return sl__sent(t, false);
}

/* The artifact path relative to the workdir, or NULL. */
static const char *sl__artifact_path(struct sl_task *t, const char *path)
{
	size_t wl = strlen(t->workdir);
	const char *p = path, *seg;
	if (p == NULL || *p == '\0')
		return NULL;
	while (wl > 1 && t->workdir[wl - 1] == '/')
		wl--;
	if (*p == '/') { /* absolute: accepted inside the workdir, made relative */
		if (wl == 0 || strncmp(p, t->workdir, wl) != 0 || p[wl] != '/')
			return NULL;
		p += wl;
		while (*p == '/')
			p++;
	}
	while (p[0] == '.' && p[1] == '/')
		p += 2;
	if (*p == '\0' || strcmp(p, ".") == 0)
		return NULL;
	for (seg = p;;) {
		if (seg[0] == '.' && seg[1] == '.' && (seg[2] == '/' || seg[2] == '\0'))
			return NULL;
		if ((seg = strchr(seg, '/')) == NULL)
			break;
		seg++;
	}
	return p;
}

int sl_artifact_ex(struct sl_task *t, const struct sl_artifact_desc *a)
{
	struct sl__fw w;
	const char *role = a->role ? a->role : "output", *path;
	const msgpack_object *meta = NULL;
	bool intermediate = strcmp(role, "intermediate") == 0;
	if (!sl__may_send(t, "artifact"))
		return -1;
	if (a->name == NULL || *a->name == '\0' || a->type == NULL || *a->type == '\0') {
		sl__note("task %s: an artifact needs a name and a type", t->task_id);
		return -1;
	}
	if (!intermediate && strcmp(role, "output") != 0) {
		sl__note("task %s: artifact role '%s' is not output or intermediate", t->task_id,
		         role);
		return -1;
	}
	if (!intermediate && a->discard) {
		sl__note("task %s: an output artifact is always retained", t->task_id);
		return -1;
	}
	if ((path = sl__artifact_path(t, a->path)) == NULL) {
		sl__note("task %s: artifact path '%s' is not a file inside the workdir (give it "
		         "relative to the workdir, without '..')",
		         t->task_id, a->path ? a->path : "(null)");
		return -1;
	}
	if (a->meta_json != NULL && (meta = sl__json_map(t, a->meta_json, "artifact meta")) == NULL)
		return -1;
	sl__begin(&w, "artifact", t);
	sl__kv_text(&w, "name", a->name);
	sl__kv_text(&w, "path", path);
	sl__kv_text(&w, "type", a->type);
	if (a->format != NULL)
		sl__kv_text(&w, "format", a->format);
	sl__kv_text(&w, "role", role);
	sl__key(&w, "retained");
	if (a->discard)
		msgpack_pack_false(&sl__g.pk);
	else
		msgpack_pack_true(&sl__g.pk);
	if (a->reason != NULL)
		sl__kv_text(&w, "reason", a->reason);
	if (meta != NULL) {
		sl__key(&w, "meta");
		msgpack_pack_object(&sl__g.pk, *meta);
	}
	if (sl__end(&w) != 0)
		return -1;
	return sl__sent(t, false);
}

int sl_artifact(struct sl_task *t, const char *name, const char *path, const char *type,
                const char *format, const char *role)
{
	struct sl_artifact_desc a = {
	        .name = name, .path = path, .type = type, .format = format, .role = role};
	return sl_artifact_ex(t, &a);
}

int sl_error_detail(struct sl_task *t, const char *message, const char *code, const char *category,
                    int retryable, const char *detail_json)
{
	static const char *const categories[] = {"input", "module", "infra", "cancelled"};
	const char *cat = NULL;
	const msgpack_object *detail = NULL;
	struct sl__fw w;
	size_t i;
	if (!sl__may_send(t, "error"))
		return -1;
	for (i = 0; i < sizeof categories / sizeof categories[0]; i++)
		if (strcmp(category ? category : "module", categories[i]) == 0)
			cat = categories[i];
	if (cat == NULL) {
		sl__note("task %s: error category '%s' is not input, module, infra or cancelled; "
		         "sending module",
		         t->task_id, category);
		cat = "module";
	}
	if (retryable == SL_RETRY_DEFAULT)
		retryable = strcmp(cat, "module") == 0 || strcmp(cat, "infra") == 0;
	/* The answer must go out: bad detail is dropped, not the error. */
	if (detail_json != NULL)
		detail = sl__json_map(t, detail_json, "error detail");
	sl__begin(&w, "error", t);
	sl__kv_text(&w, "message", message ? message : "(no message)");
	if (code != NULL)
		sl__kv_text(&w, "code", code);
	sl__kv_text(&w, "category", cat);
	sl__key(&w, "retryable");
	if (retryable)
		msgpack_pack_true(&sl__g.pk);
	else
		msgpack_pack_false(&sl__g.pk);
	if (detail != NULL) {
		sl__key(&w, "detail");
		msgpack_pack_object(&sl__g.pk, *detail);
	}
	if (sl__end(&w) != 0) {
		sl__begin(&w, "error", t);
		sl__kv_text(&w, "message", "the error frame was too big to send");
		sl__kv_text(&w, "code", "ERROR_TOO_BIG");
		sl__kv_text(&w, "category", cat);
		if (sl__end(&w) != 0)
			return -1;
	}
	return sl__sent(t, true);
}

int sl_error(struct sl_task *t, const char *message, const char *code, const char *category,
             int retryable)
{
	return sl_error_detail(t, message, code, category, retryable, NULL);
}

int sl_set_resources_json(struct sl_task *t, const char *resources_json)
{
	const msgpack_object *r = sl__json_map(t, resources_json, "resources");
	if (r == NULL)
		return -1;
	t->priv->resources = r;
	return 0;
}

int sl_result_object(struct sl_task *t, const msgpack_object *output)
{
	struct sl__fw w;
	size_t count = 0;
	if (!sl__may_send(t, "result"))
		return -1;
	if (output == NULL || output->type != MSGPACK_OBJECT_MAP ||
	    !sl__check_obj(output, 2, "result output", &count)) {
		sl__note("task %s: the result output is not a JSON object", t->task_id);
		sl_error(t, "invalid result: the output is not a JSON object", "BAD_OUTPUT",
		         "module", SL_RETRY_NO);
		return -1;
	}
	sl__begin(&w, "result", t);
	sl__key(&w, "output");
	msgpack_pack_object(&sl__g.pk, *output);
	if (t->priv->resources != NULL) {
		sl__key(&w, "resources");
		msgpack_pack_object(&sl__g.pk, *t->priv->resources);
	}
	if (sl__end(&w) != 0) {
		sl_error(t, "invalid result: the output is bigger than the frame limit",
		         "OUTPUT_TOO_LARGE", "module", SL_RETRY_NO);
		return -1;
	}
	return sl__sent(t, true);
}

int sl_result_json(struct sl_task *t, const char *output_json)
{
	const msgpack_object *o;
	if (!sl__may_send(t, "result"))
		return -1;
	o = output_json ? sl__json_map(t, output_json, "result output") : NULL;
	if (o == NULL) {
		sl_error(t, "invalid result: the output is not a JSON object's text", "BAD_OUTPUT",
		         "module", SL_RETRY_NO);
		return -1;
	}
	return sl_result_object(t, o);
}

bool sl_answered(const struct sl_task *t)
{
	return t->priv->answered;
}

/* ---- reading frames ---- */

/* 1 and the payload length if a complete frame starts at off, 0 if more
 * bytes are needed, -1 if its header announces too big a frame. */
static int sl__frame_at(size_t off, size_t *plen)
{
	const unsigned char *h = (const unsigned char *)sl__g.in + off;
	uint32_t n;
	if (sl__g.in_len - off < 4)
		return 0;
	n = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | (uint32_t)h[3];
	if (n > sl__g.max_frame_bytes)
		return -1;
	*plen = n;
	return sl__g.in_len - off - 4 >= n ? 1 : 0;
}

/* Reads what the fd has (at least one byte, blocking). >0 bytes read, 0 at
 * EOF, -1 on error. */
static long sl__read_more(void)
{
	size_t want = 65536, plen;
	ssize_t n;
	if (sl__frame_at(sl__g.in_pos, &plen) == 0 && sl__g.in_len - sl__g.in_pos >= 4 &&
	    4 + plen - (sl__g.in_len - sl__g.in_pos) > want)
		want = 4 + plen - (sl__g.in_len - sl__g.in_pos);
	if (sl__g.in_cap - sl__g.in_len < want) {
		sl__g.in_cap = sl__g.in_len + want;
		sl__g.in = sl__xrealloc(sl__g.in, sl__g.in_cap);
	}
	do
		n = read(sl__g.in_fd, sl__g.in + sl__g.in_len, sl__g.in_cap - sl__g.in_len);
	while (n < 0 && errno == EINTR);
	if (n == 0)
		sl__g.eof = true;
	if (n < 0) {
		sl__note("reading frames failed: %s", strerror(errno));
		sl__g.status = 1;
		sl__g.eof = true;
		return -1;
	}
	sl__g.in_len += (size_t)n;
	return (long)n;
}

/* Decodes the frame at off (payload length n) into the scratch zone,
 * strings pointing into sl__g.in. false if it is not a map with a str t. */
static bool sl__peek(size_t off, size_t n, msgpack_object *o, const msgpack_object **type)
{
	size_t used = 0;
	msgpack_zone_clear(&sl__g.scratch);
	if (msgpack_unpack(sl__g.in + off + 4, n, &used, &sl__g.scratch, o) !=
	            MSGPACK_UNPACK_SUCCESS ||
	    o->type != MSGPACK_OBJECT_MAP)
		return false;
	*type = sl_get(o, "t");
	return *type != NULL && (*type)->type == MSGPACK_OBJECT_STR;
}

static ssize_t sl__cancel_index(const msgpack_object *id)
{
	size_t i;
	for (i = 0; id != NULL && id->type == MSGPACK_OBJECT_STR && i < sl__g.ncancels; i++)
		if (strlen(sl__g.cancels[i]) == id->via.str.size &&
		    memcmp(sl__g.cancels[i], id->via.str.ptr, id->via.str.size) == 0)
			return (ssize_t)i;
	return -1;
}

static void sl__cancel_forget(size_t i)
{
	free(sl__g.cancels[i]);
	sl__g.cancels[i] = sl__g.cancels[--sl__g.ncancels];
}

static void sl__set_cancelled(struct sl_task *t, const msgpack_object *reason)
{
	t->priv->cancelled = true;
	t->priv->cancel_reason =
	        reason && reason->type == MSGPACK_OBJECT_STR
	                ? sl__zstrndup(t, reason->via.str.ptr, reason->via.str.size)
	                : "unknown";
}

/* Looks at the complete frames the main loop hasn't reached for cancels:
 * the current task's set its flag; others are remembered for the loop. */
static void sl__scan(struct sl_task *cur)
{
	size_t off = sl__g.scan_pos > sl__g.in_pos ? sl__g.scan_pos : sl__g.in_pos, n;
	msgpack_object o;
	const msgpack_object *type, *id;
	while (sl__frame_at(off, &n) == 1) {
		if (sl__peek(off, n, &o, &type) && sl__str_is(type, "cancel")) {
			id = sl_get(&o, "task_id");
			if (cur != NULL && sl__str_is(id, cur->task_id)) {
				if (!cur->priv->cancelled)
					sl__set_cancelled(cur, sl_get(&o, "reason"));
			} else if (id != NULL && id->type == MSGPACK_OBJECT_STR &&
			           sl__cancel_index(id) < 0) {
				if (sl__g.ncancels == sl__g.cap_cancels) {
					sl__g.cap_cancels =
					        sl__g.cap_cancels ? 2 * sl__g.cap_cancels : 8;
					sl__g.cancels = sl__xrealloc(
					        sl__g.cancels, sl__g.cap_cancels * sizeof(char *));
				}
				sl__g.cancels[sl__g.ncancels] = sl__xmalloc(id->via.str.size + 1);
				memcpy(sl__g.cancels[sl__g.ncancels], id->via.str.ptr,
				       id->via.str.size);
				sl__g.cancels[sl__g.ncancels++][id->via.str.size] = '\0';
			}
		}
		off += 4 + n;
	}
	sl__g.scan_pos = off;
}

bool sl_cancelled(struct sl_task *t)
{
	int i;
	if (t->priv->cancelled)
		return true;
	for (i = 0; i < 16 && !sl__g.eof; i++) {
		struct pollfd p = {.fd = sl__g.in_fd, .events = POLLIN};
		if (poll(&p, 1, 0) <= 0 || sl__read_more() <= 0)
			break;
	}
	sl__scan(t);
	return t->priv->cancelled;
}

const char *sl_cancel_reason(const struct sl_task *t)
{
	return t->priv->cancelled ? t->priv->cancel_reason : NULL;
}

int64_t sl_remaining_ms(const struct sl_task *t)
{
	return t->deadline_ms ? t->deadline_ms - sl__now_ms() : INT64_MAX;
}

/* ---- tasks ---- */

static const char *sl__field_str(struct sl_task *t, const msgpack_object *map, const char *key)
{
	const char *s = sl_obj_str(t, sl_get(map, key));
	return s ? s : "";
}

/* A task from the frame's bytes (copied); NULL if it has no task_id. */
static struct sl_task *sl__task_new(const char *bytes, size_t n)
{
	struct sl__task_alloc *a = sl__xmalloc(sizeof *a);
	struct sl_task *t = &a->task;
	msgpack_object *o;
	const msgpack_object *v, *id;
	size_t used = 0;
	uint32_t i;
	memset(a, 0, sizeof *a);
	t->priv = &a->priv;
	if (!msgpack_zone_init(&t->priv->zone, 4096)) {
		fputs("stageline_module: out of memory\n", stderr);
		abort();
	}
	t->priv->frame = memcpy(sl__xmalloc(n), bytes, n);
	o = sl__zalloc(t, sizeof *o);
	if (msgpack_unpack(t->priv->frame, n, &used, &t->priv->zone, o) != MSGPACK_UNPACK_SUCCESS ||
	    (id = sl_get(o, "task_id")) == NULL || id->type != MSGPACK_OBJECT_STR) {
		msgpack_zone_destroy(&t->priv->zone);
		free(t->priv->frame);
		free(a);
		return NULL;
	}
	t->task_id = sl__field_str(t, o, "task_id");
	t->job_id = sl__field_str(t, o, "job_id");
	t->stage = sl__field_str(t, o, "stage");
	t->workdir = sl__field_str(t, o, "workdir");
	t->request_id = sl__field_str(t, o, "request_id");
	v = sl_get(o, "attempt");
	t->attempt = v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= INT32_MAX
	                     ? (int)v->via.u64
	                     : 1;
	v = sl_get(o, "deadline");
	if (v && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER && v->via.u64 <= (uint64_t)INT64_MAX)
		t->deadline_ms = (int64_t)v->via.u64;
	v = sl_get(o, "params");
	t->params = v && v->type == MSGPACK_OBJECT_MAP ? v : &sl__empty_map;
	v = sl_get(o, "inputs");
	if (v && v->type == MSGPACK_OBJECT_ARRAY && v->via.array.size > 0) {
		struct sl_input *ins = sl__zalloc(t, v->via.array.size * sizeof *ins);
		for (i = 0; i < v->via.array.size; i++) {
			const msgpack_object *in = &v->via.array.ptr[i], *sz;
			struct sl_input *d = &ins[t->ninputs];
			if (in->type != MSGPACK_OBJECT_MAP)
				continue;
			d->name = sl__field_str(t, in, "name");
			d->type = sl__field_str(t, in, "type");
			d->path = sl__field_str(t, in, "path");
			d->format = sl_obj_str(t, sl_get(in, "format"));
			sz = sl_get(in, "size_bytes");
			d->size_bytes = sz && sz->type == MSGPACK_OBJECT_POSITIVE_INTEGER
			                        ? (int64_t)sz->via.u64
			                        : -1;
			t->ninputs++;
		}
		t->inputs = ins;
	}
	return t;
}

static void sl__task_free(struct sl_task *t)
{
	if (t == NULL)
		return;
	msgpack_zone_destroy(&t->priv->zone);
	free(t->priv->frame);
	free((struct sl__task_alloc *)(void *)t);
}

static void sl__run_task(struct sl_task *t, sl_task_fn handler, void *arg)
{
	ssize_t i = -1;
	size_t k;
	/* A cancel for it may already be buffered: seen ahead while an earlier
	 * task polled, or read with it (each frame is scanned once). */
	for (k = 0; k < sl__g.ncancels; k++)
		if (strcmp(sl__g.cancels[k], t->task_id) == 0)
			i = (ssize_t)k;
	if (i >= 0) {
		sl__cancel_forget((size_t)i);
		t->priv->cancelled = true;
		t->priv->cancel_reason = "unknown";
	} else {
		sl__scan(t);
	}
	if (t->priv->cancelled) {
		char msg[128];
		snprintf(msg, sizeof msg, "cancelled (%s) before it started",
		         t->priv->cancel_reason);
		sl_error(t, msg, "CANCELLED", "cancelled", SL_RETRY_DEFAULT);
	} else if (sl__g.shutdown) {
		sl_error(t, "the module is shutting down", "SHUTTING_DOWN", "infra", SL_RETRY_YES);
	} else {
		handler(t, arg);
		if (!t->priv->answered)
			sl_error(t, "the handler returned without answering the task", "NO_ANSWER",
			         "module", SL_RETRY_NO);
	}
	sl__task_free(t);
}

int sl_module_hello(const struct sl_module_config *cfg)
{
	struct sl__fw w;
	int null_fd;
	if (sl__g.hello_sent) {
		sl__note("sl_module_hello called twice");
		return -1;
	}
	if (cfg == NULL || cfg->name == NULL || *cfg->name == '\0' || cfg->version == NULL ||
	    *cfg->version == '\0' || cfg->concurrency < 0 ||
	    (!cfg->persistent && cfg->concurrency > 1)) {
		sl__note("sl_module_hello: a name and a version are required, and concurrency must "
		         "be 1 (or 0) unless persistent");
		return -1;
	}
	fflush(stdout);
	sl__g.in_fd = dup(0);
	sl__g.out_fd = dup(1);
	if (sl__g.in_fd < 0 || sl__g.out_fd < 0) {
		sl__note("sl_module_hello: dup: %s", strerror(errno));
		return -1;
	}
	fcntl(sl__g.in_fd, F_SETFD, FD_CLOEXEC);
	fcntl(sl__g.out_fd, F_SETFD, FD_CLOEXEC);
	if ((null_fd = open("/dev/null", O_RDONLY)) >= 0) {
		dup2(null_fd, 0);
		close(null_fd);
	}
	dup2(2, 1);
	setvbuf(stdout, NULL, _IOLBF, 0);

	sl__g.name = sl__xstrdup(cfg->name);
	sl__g.version = sl__xstrdup(cfg->version);
	sl__g.persistent = cfg->persistent;
	sl__g.concurrency = cfg->concurrency ? cfg->concurrency : 1;
	sl__g.batch = cfg->batch;
	sl__g.progress_interval_ms =
	        cfg->progress_interval_ms == 0 ? 100 : cfg->progress_interval_ms;
	sl__g.max_frame_bytes = cfg->max_frame_bytes ? cfg->max_frame_bytes : SL_MAX_FRAME_BYTES;
	msgpack_sbuffer_init(&sl__g.out);
	msgpack_packer_init(&sl__g.pk, &sl__g.out, msgpack_sbuffer_write);
	if (!msgpack_zone_init(&sl__g.scratch, 4096)) {
		fputs("stageline_module: out of memory\n", stderr);
		abort();
	}
	sl__begin(&w, "hello", NULL);
	sl__key(&w, "protocol");
	msgpack_pack_int(&sl__g.pk, SL_PROTOCOL);
	sl__kv_text(&w, "module", sl__g.name);
	sl__kv_text(&w, "version", sl__g.version);
	sl__key(&w, "persistent");
	if (sl__g.persistent) {
		msgpack_pack_true(&sl__g.pk);
		sl__key(&w, "concurrency");
		msgpack_pack_int(&sl__g.pk, sl__g.concurrency);
	} else {
		msgpack_pack_false(&sl__g.pk);
	}
	if (sl__end(&w) != 0)
		return -1;
	sl__g.hello_sent = true;
	return sl__flush();
}

int sl_module_run(sl_task_fn handler, void *arg)
{
	size_t n;
	int r;
	if (!sl__g.hello_sent) {
		sl__note("sl_module_run: call sl_module_hello first");
		return 2;
	}
	for (;;) {
		while ((r = sl__frame_at(sl__g.in_pos, &n)) == 1 && sl__g.status == 0) {
			size_t off = sl__g.in_pos;
			msgpack_object o;
			const msgpack_object *type;
			sl__g.in_pos += 4 + n;
			if (!sl__peek(off, n, &o, &type)) {
				sl__note("bad frame from the daemon: not a msgpack map with a "
				         "string t");
				sl__g.status = 2;
				break;
			}
			if (sl__str_is(type, "task")) {
				struct sl_task *t = sl__task_new(sl__g.in + off + 4, n);
				if (t == NULL) {
					sl__note("bad frame from the daemon: a task without a "
					         "task_id");
					sl__g.status = 2;
					break;
				}
				sl__run_task(t, handler, arg);
				if (!sl__g.persistent) {
					sl__flush();
					return sl__g.status;
				}
			} else if (sl__str_is(type, "cancel")) {
				ssize_t i = sl__cancel_index(sl_get(&o, "task_id"));
				if (i >= 0)
					sl__cancel_forget((size_t)i);
			} else if (sl__str_is(type, "shutdown")) {
				sl__g.shutdown = true;
			} else {
				sl__note("ignoring an unknown '%.*s' frame",
				         (int)type->via.str.size, type->via.str.ptr);
			}
		}
		if (r < 0 && sl__g.status == 0) {
			sl__note("bad frame from the daemon: bigger than %zu bytes",
			         sl__g.max_frame_bytes);
			sl__g.status = 2;
		}
		sl__flush();
		if (sl__g.status != 0)
			return sl__g.status;
		if (sl__g.shutdown)
			return 0;
		if (sl__g.in_pos > 0) { /* keep the unprocessed bytes at the start */
			memmove(sl__g.in, sl__g.in + sl__g.in_pos, sl__g.in_len - sl__g.in_pos);
			sl__g.in_len -= sl__g.in_pos;
			sl__g.scan_pos =
			        sl__g.scan_pos > sl__g.in_pos ? sl__g.scan_pos - sl__g.in_pos : 0;
			sl__g.in_pos = 0;
		}
		if (sl__g.eof) {
			if (sl__g.in_len > 0) {
				sl__note("bad frame from the daemon: the stream ended inside a "
				         "frame");
				return 2;
			}
			return 0;
		}
		if (sl__read_more() < 0)
			return sl__g.status;
	}
}

#endif /* STAGELINE_MODULE_IMPLEMENTED */
#endif /* STAGELINE_MODULE_IMPLEMENTATION */
