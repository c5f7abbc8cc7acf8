/* log: the structured process log. One JSON object per line (or a text line
 * for people) with ts, level, event, msg and typed fields, written to stderr
 * or a file with a single write(2). Every value passes through redact before
 * it reaches a sink. */
#ifndef SL_CORE_LOG_H
#define SL_CORE_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct json_t;

enum log_level { LOG_LVL_DEBUG, LOG_LVL_INFO, LOG_LVL_WARN, LOG_LVL_ERROR };
enum log_format { LOG_FMT_JSON, LOG_FMT_TEXT };

enum log_field_type {
	LF_T_END,
	LF_T_STR,
	LF_T_STRN,
	LF_T_INT,
	LF_T_UINT,
	LF_T_DBL,
	LF_T_BOOL,
	LF_T_JSON,
	LF_T_PII /* a string that may hold personal data: scrubbed (log_set_scrub) */
};

struct log_field {
	const char *key;
	enum log_field_type type;
	union {
		const char *s;
		long long i;
		unsigned long long u;
		double d;
		bool b;
		const struct json_t *j;
	} v;
	size_t n; /* LF_T_STRN length */
};

#define LF_STR(k, x) ((struct log_field){.key = (k), .type = LF_T_STR, .v.s = (x)})
#define LF_STRN(k, x, len) \
	((struct log_field){.key = (k), .type = LF_T_STRN, .v.s = (x), .n = (len)})
#define LF_INT(k, x) ((struct log_field){.key = (k), .type = LF_T_INT, .v.i = (long long)(x)})
#define LF_UINT(k, x) \
	((struct log_field){.key = (k), .type = LF_T_UINT, .v.u = (unsigned long long)(x)})
#define LF_DBL(k, x) ((struct log_field){.key = (k), .type = LF_T_DBL, .v.d = (double)(x)})
#define LF_BOOL(k, x) ((struct log_field){.key = (k), .type = LF_T_BOOL, .v.b = (x)})
/* A jansson value, written as nested JSON; keys inside it are redacted too. */
#define LF_JSON(k, x) ((struct log_field){.key = (k), .type = LF_T_JSON, .v.j = (x)})
/* Text from outside the daemon (a module's stderr or error message) that may
 * hold personal data: e-mail addresses and phone numbers in it are masked
 * when a scrubber is set (privacy.scrub). */
#define LF_PII(k, x) ((struct log_field){.key = (k), .type = LF_T_PII, .v.s = (x), .n = SIZE_MAX})
#define LF_PIIN(k, x, len) \
	((struct log_field){.key = (k), .type = LF_T_PII, .v.s = (x), .n = (len)})
#define LF_END ((struct log_field){.key = NULL, .type = LF_T_END})

/* privacy.scrub: LF_PII values are scrubbed, and inside LF_JSON values the
 * configured personal-data fields are masked. sc is borrowed until the next
 * call; NULL turns it off. */
struct scrub;
void log_set_scrub(const struct scrub *sc);

/* Open the sink: path NULL or "" means stderr. Returns false (errno set) when
 * the file cannot be opened; the previous sink stays. */
bool log_open(const char *path, enum log_format format, enum log_level level)
        __attribute__((warn_unused_result));
/* Reopen the file sink (SIGHUP, after rotation). */
bool log_reopen(void);
void log_close(void);
void log_set_level(enum log_level level);
bool log_enabled(enum log_level level);
/* Redirect output into a memory buffer (tests): returns the captured text. */
void log_capture_start(void);
char *log_capture_take(void);

bool log_level_parse(const char *s, enum log_level *out);
bool log_format_parse(const char *s, enum log_format *out);
const char *log_level_name(enum log_level level);

/* Batching: info and debug lines are written once per loop pass instead of
 * one write(2) each (warn and error flush at once). base must have been
 * given two or more priorities (event_base_priority_init) before any event
 * was added; the flush runs at the lowest. False when it has fewer. */
struct event_base;
bool log_batch_on(struct event_base *base) __attribute__((warn_unused_result));
/* Writes what is pending and stops batching (before the loop goes away). */
void log_batch_off(void);
void log_flush(void);

/* Routes the stdio `stderr` stream (not file descriptor 2) into this log:
 * libraries that fprintf(stderr, ...) — libevhtp does — then produce
 * structured `lib.stderr` lines instead of raw text beside the JSON.
 * Sanitizer reports write to descriptor 2 directly and are unaffected. */
void log_capture_stdio_stderr(void);

/* Fields end with LF_END; use the macros below, which add it. */
void log_emit(enum log_level level, const char *event, const char *msg, ...);

#define log_debug(...)                                                \
	do {                                                          \
		if (log_enabled(LOG_LVL_DEBUG))                       \
			log_emit(LOG_LVL_DEBUG, __VA_ARGS__, LF_END); \
	} while (0)
#define log_info(...) log_emit(LOG_LVL_INFO, __VA_ARGS__, LF_END)
#define log_warn(...) log_emit(LOG_LVL_WARN, __VA_ARGS__, LF_END)
#define log_error(...) log_emit(LOG_LVL_ERROR, __VA_ARGS__, LF_END)

#endif
