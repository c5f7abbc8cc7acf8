/* libFuzzer target for the worker protocol codec (exec/frame). The input is
 * a byte stream as a peer would write it, decoded frame after frame while
 * frames come out whole; every frame decoded is encoded again and the
 * encoding decoded.
 *
 * Input layout: byte 0 is control, the rest is the stream.
 *   bit 0     set: frames from a module (hello, result, ...); clear: from
 *             the daemon (task, cancel, shutdown)
 *   bits 1-3  limits: 0 defaults, 1 max_bytes 256, 2 max_depth 4,
 *             3 max_items 4, 4 max_depth 100 (held at 32), 5 all three
 *             small, 6-7 defaults
 *
 * Invariants (a violation traps):
 *  - FRAME_OK consumes at least a header and at most the input; anything
 *    else consumes nothing;
 *  - a frame decoded under any limits, encoded with frame_encode, decodes
 *    again under the defaults, with the same type and task_id, and encoding
 *    that gives the very same bytes (encode . decode is a fixpoint);
 *  - everything is freed (LeakSanitizer). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "exec/frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                            \
	do {                                                                                   \
		if (!(cond)) {                                                                 \
			fprintf(stderr, "fuzz_frame: invariant failed: %s (line %d)\n", #cond, \
			        __LINE__);                                                     \
			__builtin_trap();                                                      \
		}                                                                              \
	} while (0)

static void limits_for(unsigned mode, struct frame_limits *lim)
{
	memset(lim, 0, sizeof *lim);
	switch (mode) {
	case 1: lim->max_bytes = 256; break;
	case 2: lim->max_depth = 4; break;
	case 3: lim->max_items = 4; break;
	case 4: lim->max_depth = 100; break;
	case 5:
		lim->max_bytes = 256;
		lim->max_depth = 4;
		lim->max_items = 4;
		break;
	default: break;
	}
}

static bool same_str(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return strcmp(a, b) == 0;
}

static void check_roundtrip(const struct frame *f, bool from_module)
{
	struct buf enc = BUF_INIT, again = BUF_INIT;
	frame_encode(&enc, f);

	struct frame g;
	struct frame_error err;
	size_t used = 0;
	enum frame_status st = frame_decode(enc.data, enc.len, NULL, from_module, &g, &used, &err);
	if (st != FRAME_OK)
		fprintf(stderr, "fuzz_frame: re-decode failed: %s\n", err.msg);
	CHECK(st == FRAME_OK);
	CHECK(used == enc.len);
	CHECK(g.type == f->type);
	CHECK(same_str(g.task_id, f->task_id));

	frame_encode(&again, &g);
	CHECK(again.len == enc.len);
	CHECK(memcmp(again.data, enc.data, enc.len) == 0);

	frame_clear(&g);
	buf_free(&enc);
	buf_free(&again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	bool from_module = data[0] & 1;
	struct frame_limits lim;
	limits_for((data[0] >> 1) & 7, &lim);
	data++;
	size--;

	size_t off = 0;
	for (;;) {
		struct frame f;
		struct frame_error err;
		size_t used = 12345;
		enum frame_status st =
		        frame_decode(data + off, size - off, &lim, from_module, &f, &used, &err);
		if (st != FRAME_OK) {
			CHECK(used == 0);
			CHECK(f.task_id == NULL);
			if (st == FRAME_BAD)
				CHECK(err.msg[0] != '\0');
			break;
		}
		CHECK(used > FRAME_HEADER_LEN && used <= size - off);
		CHECK(from_module == (f.type >= FRAME_HELLO));
		check_roundtrip(&f, from_module);
		frame_clear(&f);
		off += used;
	}
	return 0;
}
