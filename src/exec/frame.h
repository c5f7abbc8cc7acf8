/* frame: the worker protocol's codec (proto/worker-protocol.md). Pure: no
 * I/O, no loop. Decoding checks the limits (frame size, nesting depth,
 * string and container sizes) and the shape of every known frame type, and
 * converts the JSON-carrying maps (params, output, detail, fields, meta,
 * resources) to jansson values. Encoding writes one length-prefixed frame
 * into a struct buf. Errors are values with a precise message. */
#ifndef SL_EXEC_FRAME_H
#define SL_EXEC_FRAME_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

#define FRAME_PROTOCOL 1
#define FRAME_HEADER_LEN 4
#define FRAME_DEFAULT_MAX_BYTES (16u * 1024 * 1024)
#define FRAME_DEFAULT_MAX_DEPTH 32
#define FRAME_DEFAULT_MAX_ITEMS 65536

struct frame_limits {
	size_t max_bytes; /* payload (after the 4-byte length); 0 = default */
	int max_depth; /* 0 = default */
	size_t max_items; /* entries of one array or map; 0 = default */
};

enum frame_type {
	/* daemon → module */
	FRAME_TASK,
	FRAME_CANCEL,
	FRAME_SHUTDOWN,
	/* module → daemon */
	FRAME_HELLO,
	FRAME_PROGRESS,
	FRAME_LOG,
	FRAME_ARTIFACT,
	FRAME_WARNING,
	FRAME_RESULT,
	FRAME_ERROR,
	FRAME_NTYPES
};

const char *frame_type_name(enum frame_type t);

enum frame_category { FRAME_CAT_MODULE, FRAME_CAT_INPUT, FRAME_CAT_INFRA, FRAME_CAT_CANCELLED };
const char *frame_category_name(enum frame_category c);

struct frame_input {
	char *name, *type, *path, *format; /* format may be NULL */
	int64_t size_bytes;
};

/* A decoded frame. Strings are owned (NUL-terminated, valid UTF-8); JSON
 * values are owned references; fields not in the frame are NULL/0/false.
 * frame_clear() releases everything. */
struct frame {
	enum frame_type type;
	char *task_id; /* NULL when absent */
	union {
		struct {
			int protocol;
			char *module, *version;
			bool persistent;
			int concurrency; /* 1 when absent */
		} hello;
		struct {
			char *job_id, *stage, *workdir, *request_id;
			int attempt;
			json_t *params; /* object */
			struct frame_input *inputs;
			size_t ninputs;
			int64_t deadline_ms;
		} task;
		struct {
			char *reason;
		} cancel;
		struct {
			double fraction; /* clamped to 0..1 */
			char *message;
			int64_t current, total;
			bool has_current, has_total;
		} progress;
		struct {
			char *level; /* debug | info | warn | error */
			char *message;
			json_t *fields; /* object or NULL */
		} log;
		struct {
			char *name, *path, *type, *format, *role, *reason;
			bool retained;
			json_t *meta; /* object or NULL */
		} artifact;
		struct {
			char *message;
			json_t *detail;
		} warning;
		struct {
			json_t *output; /* object */
			json_t *resources; /* object or NULL */
		} result;
		struct {
			char *message, *code;
			enum frame_category category;
			bool retryable; /* the default for the category when absent */
			json_t *detail;
		} error;
	} u;
};

void frame_clear(struct frame *f);

enum frame_status {
	FRAME_OK, /* *f holds a frame; *used bytes were consumed */
	FRAME_NEED_MORE, /* buf holds a partial frame: feed more */
	FRAME_BAD, /* a protocol error: err says which; the stream can't continue */
};

struct frame_error {
	char msg[256];
};

/* Decodes the first frame in buf[0..len). Which direction is accepted is the
 * caller's: from_module true accepts hello/progress/log/artifact/warning/
 * result/error, false accepts task/cancel/shutdown. */
enum frame_status frame_decode(const void *buf, size_t len, const struct frame_limits *lim,
                               bool from_module, struct frame *f, size_t *used,
                               struct frame_error *err) __attribute__((warn_unused_result));

/* Encoders: append one complete frame (length prefix included) to out. */
void frame_encode_task(struct buf *out, const char *task_id, const char *job_id, const char *stage,
                       int attempt, const json_t *params, const struct frame_input *inputs,
                       size_t ninputs, const char *workdir, int64_t deadline_ms,
                       const char *request_id);
void frame_encode_cancel(struct buf *out, const char *task_id, const char *reason);
void frame_encode_shutdown(struct buf *out);
/* Encodes any frame (either direction) from its struct: for tests, the
 * fuzz corpus and module-side tooling. */
void frame_encode(struct buf *out, const struct frame *f);

#endif
