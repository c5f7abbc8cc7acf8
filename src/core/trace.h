/* trace: spans around units of work (job submission, database batches, stage
 * runs, external calls), recorded through a pluggable backend. The default
 * backend is a no-op: no span is created, nothing is allocated and no clock
 * is read, until an OpenTelemetry exporter installs itself with
 * trace_set_backend(). Spans carry W3C trace context ids either way a backend
 * is installed, so propagation (traceparent) needs no change at call sites. */
#ifndef SL_CORE_TRACE_H
#define SL_CORE_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct trace_span;

enum trace_attr_type { TRACE_STR, TRACE_INT, TRACE_DBL, TRACE_BOOL };

/* An attribute's key and string value are borrowed: they must stay valid for
 * the call that receives them, and a backend copies what it keeps. */
struct trace_attr {
	const char *key;
	enum trace_attr_type type;
	union {
		const char *s;
		int64_t i;
		double d;
		bool b;
	} v;
};

#define TA_STR(k, x) ((struct trace_attr){.key = (k), .type = TRACE_STR, .v.s = (x)})
#define TA_INT(k, x) ((struct trace_attr){.key = (k), .type = TRACE_INT, .v.i = (int64_t)(x)})
#define TA_DBL(k, x) ((struct trace_attr){.key = (k), .type = TRACE_DBL, .v.d = (double)(x)})
#define TA_BOOL(k, x) ((struct trace_attr){.key = (k), .type = TRACE_BOOL, .v.b = (x)})

#define TRACE_TRACE_ID_SIZE 16
#define TRACE_SPAN_ID_SIZE 8
/* "00-" 32 hex "-" 16 hex "-01": 55 characters, plus the NUL. */
#define TRACE_TRACEPARENT_LEN 55
#define TRACE_TRACEPARENT_SIZE (TRACE_TRACEPARENT_LEN + 1)

/* The W3C trace context of a span, handed to the backend at start so an
 * exporter can emit the same ids that are propagated. A root span's
 * parent_span_id is all zeros (an id W3C never assigns). */
struct trace_context {
	uint8_t trace_id[TRACE_TRACE_ID_SIZE];
	uint8_t span_id[TRACE_SPAN_ID_SIZE];
	uint8_t parent_span_id[TRACE_SPAN_ID_SIZE];
};

/* A recorder of spans. `start` returns the backend's handle for the span
 * (any value, NULL included), which it gets back in `set_attr` and `end`;
 * parent_handle is the parent span's handle from this same backend, or NULL
 * for a root span or a parent started under another backend. Strings are
 * borrowed for the duration of each call. Any function may be NULL. `ctx`
 * must stay valid until every span started under this backend has ended. */
struct trace_backend {
	void *(*start)(void *ctx, const struct trace_context *tc, const char *name,
	               const void *parent_handle, const struct trace_attr *attrs, size_t nattrs);
	void (*set_attr)(void *ctx, void *handle, const struct trace_attr *attr);
	void (*end)(void *ctx, void *handle, const char *error, int64_t duration_us);
	void *ctx;
};

/* Installs a backend (copied; b itself need not outlive the call). NULL
 * restores the no-op default. A span ends on the backend that started it,
 * even if another has been installed since. */
void trace_set_backend(const struct trace_backend *b);
/* True when a backend is installed, i.e. when spans are recorded. */
bool trace_enabled(void);

/* Starts a span; parent NULL makes it a root with a fresh trace id, otherwise
 * it joins the parent's trace. Returns NULL under the no-op backend. The span
 * is owned by the caller and freed by trace_span_end(). */
struct trace_span *trace_span_start(const char *name, const struct trace_span *parent,
                                    const struct trace_attr *attrs, size_t nattrs);
/* Adds an attribute after the start (a result count, a status). */
void trace_span_set_attr(struct trace_span *s, struct trace_attr a);
/* Ends and frees the span; error NULL means success. */
void trace_span_end(struct trace_span *s, const char *error);
/* Writes the span's W3C traceparent ("00-<trace id>-<span id>-01", lowercase
 * hex) into out and returns 55; for a NULL span writes "" and returns 0. */
size_t trace_span_traceparent(const struct trace_span *s, char out[TRACE_TRACEPARENT_SIZE]);

/* trace_start(name, parent, TA_...(...), ...): the attributes become an
 * array on the stack. Under the no-op backend they are not even evaluated.
 * The extra empty argument and the leading placeholder element let the
 * attribute list be empty in standard C. */
#define trace_start(name, ...) TRACE_START_(name, __VA_ARGS__, )
#define TRACE_START_(name, parent, ...)                                                     \
	(trace_enabled()                                                                    \
	         ? trace_span_start((name), (parent),                                       \
	                            (const struct trace_attr[]){{0}, __VA_ARGS__} + 1,      \
	                            sizeof((const struct trace_attr[]){{0}, __VA_ARGS__}) / \
	                                            sizeof(struct trace_attr) -             \
	                                    1)                                              \
	         : (struct trace_span *)NULL)

#endif
