/* Tracing front end. It owns the span objects, their W3C ids and their
 * timing; what a span becomes (nothing, a test record, an OTLP export) is the
 * installed backend's business. The daemon has one thread, so the installed
 * backend is a plain static. */
#include "core/trace.h"

#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/ids.h"
#include "core/xmalloc.h"

struct trace_span {
	/* A copy of the backend that started the span, so swapping backends
	 * mid-span still ends it where it began. */
	struct trace_backend backend;
	void *handle;
	struct trace_context tc;
	int64_t start_mono_us;
};

static struct trace_backend trace_backend_current;
static bool trace_backend_set;

void trace_set_backend(const struct trace_backend *b)
{
	if (b == NULL) {
		memset(&trace_backend_current, 0, sizeof trace_backend_current);
		trace_backend_set = false;
		return;
	}
	trace_backend_current = *b;
	trace_backend_set = true;
}

bool trace_enabled(void)
{
	return trace_backend_set;
}

static bool trace_id_is_zero(const uint8_t *id, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (id[i] != 0)
			return false;
	}
	return true;
}

/* W3C forbids all-zero ids; a zero draw is vanishingly rare but cheap to
 * exclude. */
static void trace_random_id(uint8_t *id, size_t n)
{
	do
		id_random(id, n);
	while (trace_id_is_zero(id, n));
}

static bool trace_backend_same(const struct trace_backend *a, const struct trace_backend *b)
{
	return a->start == b->start && a->set_attr == b->set_attr && a->end == b->end &&
	       a->ctx == b->ctx;
}

struct trace_span *trace_span_start(const char *name, const struct trace_span *parent,
                                    const struct trace_attr *attrs, size_t nattrs)
{
	if (!trace_backend_set)
		return NULL;
	if (attrs == NULL)
		nattrs = 0;

	struct trace_span *s = xcalloc(1, sizeof *s);
	s->backend = trace_backend_current;
	if (parent != NULL) {
		memcpy(s->tc.trace_id, parent->tc.trace_id, sizeof s->tc.trace_id);
		memcpy(s->tc.parent_span_id, parent->tc.span_id, sizeof s->tc.parent_span_id);
	} else {
		trace_random_id(s->tc.trace_id, sizeof s->tc.trace_id);
	}
	trace_random_id(s->tc.span_id, sizeof s->tc.span_id);

	/* A handle means something only to the backend that issued it. */
	const void *parent_handle = NULL;
	if (parent != NULL && trace_backend_same(&parent->backend, &s->backend))
		parent_handle = parent->handle;

	s->start_mono_us = clock_mono_us();
	if (s->backend.start != NULL)
		s->handle = s->backend.start(s->backend.ctx, &s->tc, name != NULL ? name : "",
		                             parent_handle, attrs, nattrs);
	return s;
}

void trace_span_set_attr(struct trace_span *s, struct trace_attr a)
{
	if (s == NULL || a.key == NULL || s->backend.set_attr == NULL)
		return;
	s->backend.set_attr(s->backend.ctx, s->handle, &a);
}

void trace_span_end(struct trace_span *s, const char *error)
{
	if (s == NULL)
		return;
	if (s->backend.end != NULL) {
		int64_t d = clock_mono_us() - s->start_mono_us;
		s->backend.end(s->backend.ctx, s->handle, error, d < 0 ? 0 : d);
	}
	free(s);
}

static void trace_hex(char *out, const uint8_t *b, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hex[b[i] >> 4];
		out[2 * i + 1] = hex[b[i] & 15];
	}
}

size_t trace_span_traceparent(const struct trace_span *s, char out[TRACE_TRACEPARENT_SIZE])
{
	if (s == NULL) {
		out[0] = '\0';
		return 0;
	}
	char *p = out;
	memcpy(p, "00-", 3);
	p += 3;
	trace_hex(p, s->tc.trace_id, sizeof s->tc.trace_id);
	p += 2 * sizeof s->tc.trace_id;
	*p++ = '-';
	trace_hex(p, s->tc.span_id, sizeof s->tc.span_id);
	p += 2 * sizeof s->tc.span_id;
	memcpy(p, "-01", 4);
	return TRACE_TRACEPARENT_LEN;
}
