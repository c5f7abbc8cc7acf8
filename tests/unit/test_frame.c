/* Unit tests for exec/frame, the worker protocol codec: every frame type
 * encoded with frame_encode and decoded back field by field; partial input
 * byte by byte and frames back to back; and every way a peer can get a
 * frame wrong (length, shape, keys, types, UTF-8, JSON data, limits,
 * trailing bytes, artifact paths), each checked against the exact message,
 * which names the key. Malformed frames are packed by hand with msgpack-c
 * so the encoder under test can't hide a decoder bug. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "exec/frame.h"

/* ---- helpers ---- */

static int buf_write_cb(void *data, const char *p, size_t n)
{
	buf_add(data, p, n);
	return 0;
}

/* A hand-packed payload, wrapped with its length prefix by raw_frame(). */
struct raw {
	struct buf body;
	msgpack_packer pk;
};

static void raw_init(struct raw *r)
{
	struct buf init = BUF_INIT;
	r->body = init;
	msgpack_packer_init(&r->pk, &r->body, buf_write_cb);
}

static void raw_frame(struct raw *r, struct buf *out)
{
	size_t n = r->body.len;
	uint8_t len[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
	buf_add(out, len, 4);
	buf_add(out, r->body.data, r->body.len);
	buf_free(&r->body);
}

static void pstr(msgpack_packer *pk, const char *s)
{
	msgpack_pack_str(pk, strlen(s));
	msgpack_pack_str_body(pk, s, strlen(s));
}

static void pstrn(msgpack_packer *pk, const char *s, size_t n)
{
	msgpack_pack_str(pk, n);
	msgpack_pack_str_body(pk, s, n);
}

static enum frame_status decode(const struct buf *b, bool from_module,
                                const struct frame_limits *lim, struct frame *f, size_t *used,
                                struct frame_error *err)
{
	return frame_decode(b->data, b->len, lim, from_module, f, used, err);
}

static void decode_ok_lim(const struct buf *b, bool from_module, const struct frame_limits *lim,
                          struct frame *f)
{
	struct frame_error err;
	size_t used = 99;
	enum frame_status st = decode(b, from_module, lim, f, &used, &err);
	if (st != FRAME_OK)
		fail_msg("expected FRAME_OK, got %d: %s", st, err.msg);
	assert_int_equal(used, b->len);
}

static void decode_ok(const struct buf *b, bool from_module, struct frame *f)
{
	decode_ok_lim(b, from_module, NULL, f);
}

/* Decodes b expecting FRAME_BAD with exactly the message want, and a
 * cleared frame. */
static void expect_bad_lim(const struct buf *b, bool from_module, const struct frame_limits *lim,
                           const char *want)
{
	struct frame f;
	struct frame_error err;
	size_t used = 99;
	enum frame_status st = decode(b, from_module, lim, &f, &used, &err);
	if (st != FRAME_BAD) {
		if (st == FRAME_OK)
			frame_clear(&f);
		fail_msg("expected FRAME_BAD (%s), got %d", want, st);
	}
	assert_string_equal(err.msg, want);
	assert_int_equal(used, 0);
	assert_null(f.task_id);
	assert_int_equal(f.type, 0);
}

static void expect_bad(const struct buf *b, bool from_module, const char *want)
{
	expect_bad_lim(b, from_module, NULL, want);
}

static void assert_str_or_null(const char *got, const char *want)
{
	if (want == NULL)
		assert_null(got);
	else
		assert_string_equal(got, want);
}

static void assert_json(const json_t *got, const json_t *want)
{
	if (want == NULL) {
		assert_null(got);
		return;
	}
	assert_non_null(got);
	if (!json_equal((json_t *)got, (json_t *)want)) {
		char *g = json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS);
		char *w = json_dumps(want, JSON_COMPACT | JSON_SORT_KEYS);
		fail_msg("json differs: got %s, want %s", g, w);
	}
}

static json_t *js(const char *text)
{
	json_error_t e;
	json_t *v = json_loads(text, JSON_DECODE_ANY, &e);
	if (v == NULL)
		fail_msg("bad test JSON %s: %s", text, e.text);
	return v;
}

/* A JSON value with every kind in it, nested. */
static const char *rich_json =
        "{\"s\":\"h\\u00e9llo "
        "\\ud83d\\ude00\",\"i\":-9223372036854775808,\"big\":9223372036854775807,"
        "\"r\":0.5,\"neg\":-1.25e300,\"t\":true,\"f\":false,\"n\":null,\"a\":[1,\"x\",[],{},[[2]]],"
        "\"o\":{\"k\":{\"k2\":[null]}},\"empty\":\"\"}";

/* Encodes in with frame_encode, decodes it (in the direction its type
 * travels) into out. */
static void roundtrip(const struct frame *in, struct frame *out)
{
	struct buf b = BUF_INIT;
	frame_encode(&b, in);
	decode_ok(&b, in->type >= FRAME_HELLO, out);
	assert_int_equal(out->type, in->type);
	assert_str_or_null(out->task_id, in->task_id);
	buf_free(&b);
}

/* ---- round trips, one per type ---- */

static void test_roundtrip_task(void **state)
{
	struct frame_input inputs[2] = {
	        {"input.json", "job-input", "/w/t/input.json", "json", 123},
	        {"asr.output", "stage-output", "/w/t/asr.output.json", NULL, 0},
	};
	struct frame in = {.type = FRAME_TASK, .task_id = "0b4e-task"};
	in.u.task.job_id = "job-1";
	in.u.task.stage = "align";
	in.u.task.workdir = "/var/lib/stageline/work/t";
	in.u.task.request_id = "req-42";
	in.u.task.attempt = 3;
	in.u.task.params = js(rich_json);
	in.u.task.inputs = inputs;
	in.u.task.ninputs = 2;
	in.u.task.deadline_ms = 1700000000123;

	struct frame out;
	roundtrip(&in, &out);
	assert_string_equal(out.u.task.job_id, "job-1");
	assert_string_equal(out.u.task.stage, "align");
	assert_string_equal(out.u.task.workdir, "/var/lib/stageline/work/t");
	assert_string_equal(out.u.task.request_id, "req-42");
	assert_int_equal(out.u.task.attempt, 3);
	assert_json(out.u.task.params, in.u.task.params);
	assert_int_equal(out.u.task.ninputs, 2);
	for (size_t i = 0; i < 2; i++) {
		assert_string_equal(out.u.task.inputs[i].name, inputs[i].name);
		assert_string_equal(out.u.task.inputs[i].type, inputs[i].type);
		assert_string_equal(out.u.task.inputs[i].path, inputs[i].path);
		assert_str_or_null(out.u.task.inputs[i].format, inputs[i].format);
		assert_int_equal(out.u.task.inputs[i].size_bytes, inputs[i].size_bytes);
	}
	assert_true(out.u.task.deadline_ms == 1700000000123);
	frame_clear(&out);
	assert_null(out.u.task.params);

	/* The direct encoder, with no request id and no inputs. */
	struct buf b = BUF_INIT;
	frame_encode_task(&b, "t2", "j2", "s2", 1, in.u.task.params, NULL, 0, "/w2", -5, NULL);
	decode_ok(&b, false, &out);
	assert_int_equal(out.type, FRAME_TASK);
	assert_string_equal(out.task_id, "t2");
	assert_string_equal(out.u.task.job_id, "j2");
	assert_string_equal(out.u.task.stage, "s2");
	assert_string_equal(out.u.task.workdir, "/w2");
	assert_null(out.u.task.request_id);
	assert_int_equal(out.u.task.attempt, 1);
	assert_int_equal(out.u.task.ninputs, 0);
	assert_null(out.u.task.inputs);
	assert_true(out.u.task.deadline_ms == -5);
	assert_json(out.u.task.params, in.u.task.params);
	frame_clear(&out);
	buf_free(&b);

	/* NULL params go out as {}. */
	frame_encode_task(&b, "t3", "j3", "s3", 2, NULL, inputs, 1, "/w3", 0, "r");
	decode_ok(&b, false, &out);
	assert_int_equal(json_object_size(out.u.task.params), 0);
	assert_true(json_is_object(out.u.task.params));
	assert_int_equal(out.u.task.ninputs, 1);
	assert_string_equal(out.u.task.inputs[0].format, "json");
	frame_clear(&out);
	buf_free(&b);
	json_decref(in.u.task.params);
}

static void test_roundtrip_cancel_shutdown(void **state)
{
	struct frame in = {.type = FRAME_CANCEL, .task_id = "t-9"};
	in.u.cancel.reason = "job_cancelled";
	struct frame out;
	roundtrip(&in, &out);
	assert_string_equal(out.u.cancel.reason, "job_cancelled");
	frame_clear(&out);

	struct buf b = BUF_INIT;
	frame_encode_cancel(&b, "t-10", "deadline");
	decode_ok(&b, false, &out);
	assert_int_equal(out.type, FRAME_CANCEL);
	assert_string_equal(out.task_id, "t-10");
	assert_string_equal(out.u.cancel.reason, "deadline");
	frame_clear(&out);
	buf_reset(&b);

	frame_encode_shutdown(&b);
	decode_ok(&b, false, &out);
	assert_int_equal(out.type, FRAME_SHUTDOWN);
	assert_null(out.task_id);
	frame_clear(&out);
	buf_free(&b);

	struct frame sd = {.type = FRAME_SHUTDOWN};
	roundtrip(&sd, &out);
	frame_clear(&out);
}

static void test_roundtrip_hello(void **state)
{
	struct frame in = {.type = FRAME_HELLO};
	in.u.hello.protocol = 1;
	in.u.hello.module = "whisper";
	in.u.hello.version = "2.1.0-\xc3\xa9";
	in.u.hello.persistent = true;
	in.u.hello.concurrency = 7;
	struct frame out;
	roundtrip(&in, &out);
	assert_int_equal(out.u.hello.protocol, 1);
	assert_string_equal(out.u.hello.module, "whisper");
	assert_string_equal(out.u.hello.version, "2.1.0-\xc3\xa9");
	assert_true(out.u.hello.persistent);
	assert_int_equal(out.u.hello.concurrency, 7);
	frame_clear(&out);

	in.u.hello.persistent = false;
	in.u.hello.concurrency = 1;
	roundtrip(&in, &out);
	assert_false(out.u.hello.persistent);
	assert_int_equal(out.u.hello.concurrency, 1);
	frame_clear(&out);
}

static void test_roundtrip_progress(void **state)
{
	struct frame in = {.type = FRAME_PROGRESS, .task_id = "t-1"};
	in.u.progress.fraction = 0.375;
	in.u.progress.message = "decoding";
	in.u.progress.current = 3;
	in.u.progress.total = -8; /* any integer */
	in.u.progress.has_current = true;
	in.u.progress.has_total = true;
	struct frame out;
	roundtrip(&in, &out);
	assert_true(out.u.progress.fraction == 0.375);
	assert_string_equal(out.u.progress.message, "decoding");
	assert_true(out.u.progress.has_current);
	assert_true(out.u.progress.has_total);
	assert_int_equal(out.u.progress.current, 3);
	assert_true(out.u.progress.total == -8);
	frame_clear(&out);

	/* Optional fields absent: no task_id (one-shot), no message, no counts. */
	struct frame bare = {.type = FRAME_PROGRESS};
	bare.u.progress.fraction = 1;
	roundtrip(&bare, &out);
	assert_null(out.task_id);
	assert_true(out.u.progress.fraction == 1.0);
	assert_null(out.u.progress.message);
	assert_false(out.u.progress.has_current);
	assert_false(out.u.progress.has_total);
	frame_clear(&out);
}

static void test_roundtrip_log(void **state)
{
	struct frame in = {.type = FRAME_LOG, .task_id = "t-1"};
	in.u.log.level = "warn";
	in.u.log.message = "slow disk";
	in.u.log.fields = js(rich_json);
	struct frame out;
	roundtrip(&in, &out);
	assert_string_equal(out.u.log.level, "warn");
	assert_string_equal(out.u.log.message, "slow disk");
	assert_json(out.u.log.fields, in.u.log.fields);
	frame_clear(&out);
	json_decref(in.u.log.fields);

	in.u.log.fields = NULL;
	in.u.log.level = "debug";
	roundtrip(&in, &out);
	assert_string_equal(out.u.log.level, "debug");
	assert_null(out.u.log.fields);
	frame_clear(&out);
}

static void test_roundtrip_artifact(void **state)
{
	struct frame in = {.type = FRAME_ARTIFACT, .task_id = "t-1"};
	in.u.artifact.name = "audio";
	in.u.artifact.path = "out/audio.wav";
	in.u.artifact.type = "audio";
	in.u.artifact.format = "wav";
	in.u.artifact.role = "intermediate";
	in.u.artifact.retained = true;
	in.u.artifact.reason = "resampled";
	in.u.artifact.meta = js("{\"sample_rate\":16000,\"channels\":1}");
	struct frame out;
	roundtrip(&in, &out);
	assert_string_equal(out.u.artifact.name, "audio");
	assert_string_equal(out.u.artifact.path, "out/audio.wav");
	assert_string_equal(out.u.artifact.type, "audio");
	assert_string_equal(out.u.artifact.format, "wav");
	assert_string_equal(out.u.artifact.role, "intermediate");
	assert_true(out.u.artifact.retained);
	assert_string_equal(out.u.artifact.reason, "resampled");
	assert_json(out.u.artifact.meta, in.u.artifact.meta);
	frame_clear(&out);
	json_decref(in.u.artifact.meta);

	struct frame min = {.type = FRAME_ARTIFACT};
	min.u.artifact.name = "s";
	min.u.artifact.path = "s.srt";
	min.u.artifact.type = "subtitle";
	min.u.artifact.role = "output";
	roundtrip(&min, &out);
	assert_string_equal(out.u.artifact.role, "output");
	assert_null(out.u.artifact.format);
	assert_null(out.u.artifact.reason);
	assert_null(out.u.artifact.meta);
	assert_false(out.u.artifact.retained);
	frame_clear(&out);
}

static void test_roundtrip_warning(void **state)
{
	struct frame in = {.type = FRAME_WARNING, .task_id = "t-1"};
	in.u.warning.message = "3 words dropped";
	in.u.warning.detail = js("{\"dropped\":[\"a\",\"b\",\"c\"]}");
	struct frame out;
	roundtrip(&in, &out);
	assert_string_equal(out.u.warning.message, "3 words dropped");
	assert_json(out.u.warning.detail, in.u.warning.detail);
	frame_clear(&out);
	json_decref(in.u.warning.detail);
}

static void test_roundtrip_result(void **state)
{
	struct frame in = {.type = FRAME_RESULT, .task_id = "t-1"};
	in.u.result.output = js(rich_json);
	in.u.result.resources = js("{\"gpu_used\":true,\"gpu_seconds\":1.5}");
	struct frame out;
	roundtrip(&in, &out);
	assert_json(out.u.result.output, in.u.result.output);
	assert_json(out.u.result.resources, in.u.result.resources);
	/* Integers stay integers, reals stay reals. */
	assert_true(json_is_integer(json_object_get(out.u.result.output, "i")));
	assert_true(json_is_real(json_object_get(out.u.result.output, "r")));
	frame_clear(&out);
	json_decref(in.u.result.output);
	json_decref(in.u.result.resources);

	struct frame empty = {.type = FRAME_RESULT};
	roundtrip(&empty, &out);
	assert_true(json_is_object(out.u.result.output));
	assert_int_equal(json_object_size(out.u.result.output), 0);
	assert_null(out.u.result.resources);
	frame_clear(&out);
}

static void test_roundtrip_error(void **state)
{
	struct frame in = {.type = FRAME_ERROR, .task_id = "t-1"};
	in.u.error.message = "unsupported language";
	in.u.error.code = "UNSUPPORTED_LANGUAGE";
	in.u.error.category = FRAME_CAT_INFRA;
	in.u.error.retryable = false;
	in.u.error.detail = js("{\"language\":\"tlh\"}");
	struct frame out;
	roundtrip(&in, &out);
	assert_string_equal(out.u.error.message, "unsupported language");
	assert_string_equal(out.u.error.code, "UNSUPPORTED_LANGUAGE");
	assert_int_equal(out.u.error.category, FRAME_CAT_INFRA);
	assert_false(out.u.error.retryable);
	assert_json(out.u.error.detail, in.u.error.detail);
	frame_clear(&out);
	json_decref(in.u.error.detail);

	for (int c = FRAME_CAT_MODULE; c <= FRAME_CAT_CANCELLED; c++) {
		struct frame e = {.type = FRAME_ERROR};
		e.u.error.message = "m";
		e.u.error.category = (enum frame_category)c;
		e.u.error.retryable = c != FRAME_CAT_INPUT;
		roundtrip(&e, &out);
		assert_int_equal(out.u.error.category, c);
		assert_int_equal(out.u.error.retryable, c != FRAME_CAT_INPUT);
		assert_null(out.u.error.code);
		assert_null(out.u.error.detail);
		frame_clear(&out);
	}
}

static void test_names(void **state)
{
	assert_string_equal(frame_type_name(FRAME_TASK), "task");
	assert_string_equal(frame_type_name(FRAME_ERROR), "error");
	assert_string_equal(frame_type_name(FRAME_NTYPES), "unknown");
	assert_string_equal(frame_category_name(FRAME_CAT_MODULE), "module");
	assert_string_equal(frame_category_name(FRAME_CAT_INPUT), "input");
	assert_string_equal(frame_category_name(FRAME_CAT_INFRA), "infra");
	assert_string_equal(frame_category_name(FRAME_CAT_CANCELLED), "cancelled");
	frame_clear(NULL);
}

/* ---- streaming ---- */

static void test_partial_byte_by_byte(void **state)
{
	struct frame_input in1 = {"input.json", "job-input", "/w/input.json", NULL, 5};
	json_t *params = js(rich_json);
	struct buf b = BUF_INIT;
	frame_encode_task(&b, "t", "j", "s", 1, params, &in1, 1, "/w", 9, "r");
	json_decref(params);

	struct frame f;
	struct frame_error err;
	size_t used;
	for (size_t n = 0; n < b.len; n++) {
		used = 77;
		enum frame_status st = frame_decode(b.data, n, NULL, false, &f, &used, &err);
		if (st != FRAME_NEED_MORE)
			fail_msg("prefix of %zu/%zu bytes: status %d (%s)", n, b.len, st, err.msg);
		assert_int_equal(used, 0);
	}
	assert_int_equal(frame_decode(b.data, b.len, NULL, false, &f, &used, &err), FRAME_OK);
	assert_int_equal(used, b.len);
	assert_string_equal(f.u.task.inputs[0].path, "/w/input.json");
	frame_clear(&f);
	buf_free(&b);
}

static void test_back_to_back(void **state)
{
	struct buf b = BUF_INIT;
	struct frame h = {.type = FRAME_HELLO};
	h.u.hello.protocol = 1;
	h.u.hello.module = "m";
	h.u.hello.version = "1";
	h.u.hello.concurrency = 1;
	frame_encode(&b, &h);
	size_t len1 = b.len;
	struct frame p = {.type = FRAME_PROGRESS, .task_id = "t"};
	p.u.progress.fraction = 0.5;
	frame_encode(&b, &p);
	size_t len2 = b.len - len1;
	/* And half of a third frame. */
	frame_encode(&b, &p);
	size_t partial = b.len - (len2 / 2);

	struct frame f;
	struct frame_error err;
	size_t used;
	assert_int_equal(frame_decode(b.data, partial, NULL, true, &f, &used, &err), FRAME_OK);
	assert_int_equal(used, len1);
	assert_int_equal(f.type, FRAME_HELLO);
	frame_clear(&f);
	size_t off = used;
	assert_int_equal(frame_decode(b.data + off, partial - off, NULL, true, &f, &used, &err),
	                 FRAME_OK);
	assert_int_equal(used, len2);
	assert_int_equal(f.type, FRAME_PROGRESS);
	assert_true(f.u.progress.fraction == 0.5);
	frame_clear(&f);
	off += used;
	assert_int_equal(frame_decode(b.data + off, partial - off, NULL, true, &f, &used, &err),
	                 FRAME_NEED_MORE);
	assert_int_equal(frame_decode(b.data + off, b.len - off, NULL, true, &f, &used, &err),
	                 FRAME_OK);
	assert_int_equal(off + used, b.len);
	frame_clear(&f);
	buf_free(&b);
}

/* ---- the length prefix ---- */

static void test_length_limits(void **state)
{
	struct buf b = BUF_INIT;
	buf_add(&b, "\0\0\0\0", 4);
	expect_bad(&b, true, "empty frame (length 0)");
	buf_reset(&b);

	/* Refused from the header alone: the payload never has to arrive. */
	buf_add(&b, "\x01\x00\x00\x01", 4);
	expect_bad(&b, true, "frame of 16777217 bytes exceeds the 16777216-byte limit");
	buf_reset(&b);
	buf_add(&b, "\xff\xff\xff\xff", 4);
	expect_bad(&b, false, "frame of 4294967295 bytes exceeds the 16777216-byte limit");
	buf_reset(&b);

	/* Exactly at a configured limit passes, one byte over does not. */
	struct frame p = {.type = FRAME_PROGRESS, .task_id = "t"};
	p.u.progress.fraction = 0.5;
	frame_encode(&b, &p);
	struct frame_limits lim = {.max_bytes = b.len - 4};
	struct frame f;
	decode_ok_lim(&b, true, &lim, &f);
	frame_clear(&f);
	lim.max_bytes--;
	char want[100];
	snprintf(want, sizeof want, "frame of %zu bytes exceeds the %zu-byte limit", b.len - 4,
	         b.len - 5);
	expect_bad_lim(&b, true, &lim, want);
	/* ...even with only the header there. */
	struct buf hdr = BUF_INIT;
	buf_add(&hdr, b.data, 4);
	expect_bad_lim(&hdr, true, &lim, want);
	buf_free(&hdr);
	buf_free(&b);
}

/* ---- the shape of the top map ---- */

static void test_not_a_map(void **state)
{
	struct raw r;
	struct buf b = BUF_INIT;
	raw_init(&r);
	msgpack_pack_array(&r.pk, 2);
	pstr(&r.pk, "t");
	pstr(&r.pk, "hello");
	raw_frame(&r, &b);
	expect_bad(&b, true, "frame is not a map (got array)");
	buf_reset(&b);

	raw_init(&r);
	pstr(&r.pk, "hello");
	raw_frame(&r, &b);
	expect_bad(&b, true, "frame is not a map (got str)");
	buf_reset(&b);

	raw_init(&r);
	msgpack_pack_int(&r.pk, 1);
	raw_frame(&r, &b);
	expect_bad(&b, false, "frame is not a map (got int)");
	buf_reset(&b);

	buf_add(&b, "\0\0\0\1\xc1", 5);
	expect_bad(&b, false, "frame is not a map (got an invalid byte)");
	buf_free(&b);
}

static void test_top_keys(void **state)
{
	struct raw r;
	struct buf b = BUF_INIT;

	raw_init(&r); /* a non-string key */
	msgpack_pack_map(&r.pk, 2);
	pstr(&r.pk, "t");
	pstr(&r.pk, "shutdown");
	msgpack_pack_int(&r.pk, 1);
	pstr(&r.pk, "x");
	raw_frame(&r, &b);
	expect_bad(&b, false, "frame: map key is not a string (got int)");
	buf_reset(&b);

	raw_init(&r); /* no t */
	msgpack_pack_map(&r.pk, 1);
	pstr(&r.pk, "module");
	pstr(&r.pk, "x");
	raw_frame(&r, &b);
	expect_bad(&b, true, "frame has no 't' key");
	buf_reset(&b);

	raw_init(&r); /* an empty map */
	msgpack_pack_map(&r.pk, 0);
	raw_frame(&r, &b);
	expect_bad(&b, true, "frame has no 't' key");
	buf_reset(&b);

	raw_init(&r); /* t not a string */
	msgpack_pack_map(&r.pk, 1);
	pstr(&r.pk, "t");
	msgpack_pack_int(&r.pk, 5);
	raw_frame(&r, &b);
	expect_bad(&b, true, "t: expected a string, got int");
	buf_reset(&b);

	raw_init(&r); /* t twice */
	msgpack_pack_map(&r.pk, 2);
	pstr(&r.pk, "t");
	pstr(&r.pk, "shutdown");
	pstr(&r.pk, "t");
	pstr(&r.pk, "shutdown");
	raw_frame(&r, &b);
	expect_bad(&b, false, "t: duplicate key");
	buf_reset(&b);

	raw_init(&r); /* unknown type, shown safely */
	msgpack_pack_map(&r.pk, 1);
	pstr(&r.pk, "t");
	pstr(&r.pk, "bogus\n");
	raw_frame(&r, &b);
	expect_bad(&b, true, "unknown frame type 'bogus?'");
	expect_bad(&b, false, "unknown frame type 'bogus?'");
	buf_reset(&b);

	raw_init(&r); /* t with invalid UTF-8 */
	msgpack_pack_map(&r.pk, 1);
	pstr(&r.pk, "t");
	pstr(&r.pk, "hel\xfflo");
	raw_frame(&r, &b);
	expect_bad(&b, true, "t: is not valid UTF-8");
	buf_reset(&b);

	raw_init(&r); /* a key with invalid UTF-8 */
	msgpack_pack_map(&r.pk, 2);
	pstr(&r.pk, "t");
	pstr(&r.pk, "shutdown");
	pstr(&r.pk, "\xc0\xaf");
	msgpack_pack_nil(&r.pk);
	raw_frame(&r, &b);
	expect_bad(&b, false, "shutdown: map key is not valid UTF-8");
	buf_free(&b);
}

static void test_wrong_direction(void **state)
{
	struct buf b = BUF_INIT;
	frame_encode_cancel(&b, "t", "shutdown");
	expect_bad(&b, true, "frame type 'cancel' is not allowed from a module");
	buf_reset(&b);
	frame_encode_shutdown(&b);
	expect_bad(&b, true, "frame type 'shutdown' is not allowed from a module");
	buf_reset(&b);
	frame_encode_task(&b, "t", "j", "s", 1, NULL, NULL, 0, "/w", 0, NULL);
	expect_bad(&b, true, "frame type 'task' is not allowed from a module");
	buf_reset(&b);

	const enum frame_type mod[] = {FRAME_HELLO,   FRAME_PROGRESS, FRAME_LOG,  FRAME_ARTIFACT,
	                               FRAME_WARNING, FRAME_RESULT,   FRAME_ERROR};
	for (size_t i = 0; i < sizeof mod / sizeof mod[0]; i++) {
		struct frame f = {.type = mod[i]};
		char want[80];
		snprintf(want, sizeof want, "frame type '%s' is not allowed from the daemon",
		         frame_type_name(mod[i]));
		frame_encode(&b, &f);
		expect_bad(&b, false, want);
		buf_reset(&b);
	}
	buf_free(&b);
}

/* ---- every known key, table-driven ---- */

enum vk { V_STR, V_INT, V_BOOL, V_NUM, V_MAP, V_INPUTS };

struct key_case {
	enum frame_type type;
	const char *key;
	enum vk kind;
	bool required;
	const char *sval; /* V_STR */
	int64_t ival; /* V_INT */
};

/* From proto/worker-protocol.md, independently of the codec's tables. */
static const struct key_case keys[] = {
        {FRAME_TASK, "task_id", V_STR, true, "t-1", 0},
        {FRAME_TASK, "job_id", V_STR, true, "j-1", 0},
        {FRAME_TASK, "stage", V_STR, true, "asr", 0},
        {FRAME_TASK, "attempt", V_INT, true, NULL, 1},
        {FRAME_TASK, "params", V_MAP, true, NULL, 0},
        {FRAME_TASK, "inputs", V_INPUTS, true, NULL, 0},
        {FRAME_TASK, "workdir", V_STR, true, "/w", 0},
        {FRAME_TASK, "deadline", V_INT, true, NULL, 1700000000000},
        {FRAME_TASK, "request_id", V_STR, false, "r-1", 0},
        {FRAME_CANCEL, "task_id", V_STR, true, "t-1", 0},
        {FRAME_CANCEL, "reason", V_STR, true, "deadline", 0},
        {FRAME_HELLO, "protocol", V_INT, true, NULL, 1},
        {FRAME_HELLO, "module", V_STR, true, "whisper", 0},
        {FRAME_HELLO, "version", V_STR, true, "1.0", 0},
        {FRAME_HELLO, "persistent", V_BOOL, false, NULL, 0},
        {FRAME_HELLO, "concurrency", V_INT, false, NULL, 4},
        {FRAME_PROGRESS, "task_id", V_STR, false, "t-1", 0},
        {FRAME_PROGRESS, "fraction", V_NUM, true, NULL, 0},
        {FRAME_PROGRESS, "message", V_STR, false, "m", 0},
        {FRAME_PROGRESS, "current", V_INT, false, NULL, 5},
        {FRAME_PROGRESS, "total", V_INT, false, NULL, 10},
        {FRAME_LOG, "task_id", V_STR, false, "t-1", 0},
        {FRAME_LOG, "level", V_STR, true, "info", 0},
        {FRAME_LOG, "message", V_STR, true, "hi", 0},
        {FRAME_LOG, "fields", V_MAP, false, NULL, 0},
        {FRAME_ARTIFACT, "task_id", V_STR, false, "t-1", 0},
        {FRAME_ARTIFACT, "name", V_STR, true, "a", 0},
        {FRAME_ARTIFACT, "path", V_STR, true, "out/a.wav", 0},
        {FRAME_ARTIFACT, "type", V_STR, true, "audio", 0},
        {FRAME_ARTIFACT, "format", V_STR, false, "wav", 0},
        {FRAME_ARTIFACT, "role", V_STR, true, "output", 0},
        {FRAME_ARTIFACT, "retained", V_BOOL, false, NULL, 0},
        {FRAME_ARTIFACT, "reason", V_STR, false, "why", 0},
        {FRAME_ARTIFACT, "meta", V_MAP, false, NULL, 0},
        {FRAME_WARNING, "task_id", V_STR, false, "t-1", 0},
        {FRAME_WARNING, "message", V_STR, true, "careful", 0},
        {FRAME_WARNING, "detail", V_MAP, false, NULL, 0},
        {FRAME_RESULT, "task_id", V_STR, false, "t-1", 0},
        {FRAME_RESULT, "output", V_MAP, true, NULL, 0},
        {FRAME_RESULT, "resources", V_MAP, false, NULL, 0},
        {FRAME_ERROR, "task_id", V_STR, false, "t-1", 0},
        {FRAME_ERROR, "message", V_STR, true, "broke", 0},
        {FRAME_ERROR, "code", V_STR, false, "E_X", 0},
        {FRAME_ERROR, "category", V_STR, false, "infra", 0},
        {FRAME_ERROR, "retryable", V_BOOL, false, NULL, 0},
        {FRAME_ERROR, "detail", V_MAP, false, NULL, 0},
};
#define NKEYS (sizeof keys / sizeof keys[0])

static void pack_good(msgpack_packer *pk, const struct key_case *k)
{
	switch (k->kind) {
	case V_STR: pstr(pk, k->sval); break;
	case V_INT: msgpack_pack_int64(pk, k->ival); break;
	case V_BOOL: msgpack_pack_true(pk); break;
	case V_NUM: msgpack_pack_double(pk, 0.5); break;
	case V_MAP:
		msgpack_pack_map(pk, 1);
		pstr(pk, "k");
		msgpack_pack_int(pk, 1);
		break;
	case V_INPUTS:
		msgpack_pack_array(pk, 1);
		msgpack_pack_map(pk, 5);
		pstr(pk, "name");
		pstr(pk, "input.json");
		pstr(pk, "type");
		pstr(pk, "job-input");
		pstr(pk, "path");
		pstr(pk, "/w/input.json");
		pstr(pk, "size_bytes");
		msgpack_pack_int(pk, 10);
		pstr(pk, "format");
		pstr(pk, "json");
		break;
	}
}

/* A wrong type for each kind, and what the decoder calls it. */
static const char *pack_wrong(msgpack_packer *pk, enum vk kind)
{
	switch (kind) {
	case V_STR: msgpack_pack_int(pk, 7); return "expected a string, got int";
	case V_INT: pstr(pk, "1"); return "expected an integer, got str";
	case V_BOOL: msgpack_pack_int(pk, 1); return "expected a boolean, got int";
	case V_NUM: pstr(pk, "0.5"); return "expected a number, got str";
	case V_MAP: msgpack_pack_array(pk, 0); return "expected a map, got array";
	case V_INPUTS: msgpack_pack_map(pk, 0); return "expected an array of maps, got map";
	}
	return NULL;
}

/* The full frame of type t from the table, without omit, with wrong's value
 * of the wrong type (its message in *wrong_msg), then extra_key: extra_val
 * when given. */
static void build(struct buf *out, enum frame_type t, const char *omit, const char *wrong,
                  const char **wrong_msg)
{
	struct raw r;
	raw_init(&r);
	size_t n = 1;
	for (size_t i = 0; i < NKEYS; i++)
		if (keys[i].type == t && !(omit && strcmp(omit, keys[i].key) == 0))
			n++;
	msgpack_pack_map(&r.pk, n);
	pstr(&r.pk, "t");
	pstr(&r.pk, frame_type_name(t));
	for (size_t i = 0; i < NKEYS; i++) {
		if (keys[i].type != t || (omit && strcmp(omit, keys[i].key) == 0))
			continue;
		pstr(&r.pk, keys[i].key);
		if (wrong && strcmp(wrong, keys[i].key) == 0)
			*wrong_msg = pack_wrong(&r.pk, keys[i].kind);
		else
			pack_good(&r.pk, &keys[i]);
	}
	raw_frame(&r, out);
}

static void test_table_frames_are_good(void **state)
{
	for (int t = 0; t < FRAME_NTYPES; t++) {
		struct buf b = BUF_INIT;
		struct frame f;
		build(&b, (enum frame_type)t, NULL, NULL, NULL);
		decode_ok(&b, t >= FRAME_HELLO, &f);
		assert_int_equal(f.type, t);
		frame_clear(&f);
		buf_free(&b);
	}
}

static void test_missing_required_key(void **state)
{
	int n = 0;
	for (size_t i = 0; i < NKEYS; i++) {
		struct buf b = BUF_INIT;
		build(&b, keys[i].type, keys[i].key, NULL, NULL);
		if (keys[i].required) {
			char want[80];
			snprintf(want, sizeof want, "%s.%s: required key missing",
			         frame_type_name(keys[i].type), keys[i].key);
			expect_bad(&b, keys[i].type >= FRAME_HELLO, want);
			n++;
		} else {
			struct frame f;
			decode_ok(&b, keys[i].type >= FRAME_HELLO, &f);
			frame_clear(&f);
		}
		buf_free(&b);
	}
	assert_int_equal(n, 23);
}

static void test_wrong_typed_key(void **state)
{
	for (size_t i = 0; i < NKEYS; i++) {
		struct buf b = BUF_INIT;
		const char *msg = NULL;
		build(&b, keys[i].type, NULL, keys[i].key, &msg);
		char want[120];
		snprintf(want, sizeof want, "%s.%s: %s", frame_type_name(keys[i].type), keys[i].key,
		         msg);
		expect_bad(&b, keys[i].type >= FRAME_HELLO, want);
		buf_free(&b);
	}
}

static void test_duplicate_known_key(void **state)
{
	struct raw r;
	struct buf b = BUF_INIT;
	raw_init(&r);
	msgpack_pack_map(&r.pk, 3);
	pstr(&r.pk, "t");
	pstr(&r.pk, "progress");
	pstr(&r.pk, "fraction");
	msgpack_pack_double(&r.pk, 0.1);
	pstr(&r.pk, "fraction");
	msgpack_pack_double(&r.pk, 0.9);
	raw_frame(&r, &b);
	expect_bad(&b, true, "progress.fraction: duplicate key");
	buf_free(&b);
}

/* Unknown keys are ignored, whatever they hold (bin, ext, deep maps). */
static void test_unknown_keys_ignored(void **state)
{
	struct raw r;
	struct buf b = BUF_INIT;
	raw_init(&r);
	msgpack_pack_map(&r.pk, 7);
	pstr(&r.pk, "future_bin");
	msgpack_pack_bin(&r.pk, 3);
	msgpack_pack_bin_body(&r.pk, "\0\1\2", 3);
	pstr(&r.pk, "t");
	pstr(&r.pk, "hello");
	pstr(&r.pk, "future_ext");
	msgpack_pack_ext(&r.pk, 5, 1);
	msgpack_pack_ext_body(&r.pk, "abcde", 5);
	pstr(&r.pk, "protocol");
	msgpack_pack_int(&r.pk, 1);
	pstr(&r.pk, "module");
	pstr(&r.pk, "m");
	pstr(&r.pk, "version");
	pstr(&r.pk, "v");
	pstr(&r.pk, "task_id"); /* not a hello key */
	msgpack_pack_int(&r.pk, 3);
	raw_frame(&r, &b);
	struct frame f;
	decode_ok(&b, true, &f);
	assert_int_equal(f.type, FRAME_HELLO);
	assert_string_equal(f.u.hello.module, "m");
	assert_int_equal(f.u.hello.concurrency, 1); /* the default */
	assert_false(f.u.hello.persistent);
	assert_null(f.task_id);
	frame_clear(&f);
	buf_free(&b);
}

/* ---- values of known keys ---- */

/* {t: log, level: info, message: <msg>} */
static void log_frame(struct buf *b, const char *msg, size_t n)
{
	struct raw r;
	raw_init(&r);
	msgpack_pack_map(&r.pk, 3);
	pstr(&r.pk, "t");
	pstr(&r.pk, "log");
	pstr(&r.pk, "level");
	pstr(&r.pk, "info");
	pstr(&r.pk, "message");
	pstrn(&r.pk, msg, n);
	raw_frame(&r, b);
}

static void test_utf8(void **state)
{
	static const char *bad[] = {
	        "\xff", /* never valid */
	        "\xc0\x80", /* overlong NUL */
	        "\xe0\x80\xaf", /* overlong '/' */
	        "\xed\xa0\x80", /* a surrogate */
	        "\xf4\x90\x80\x80", /* past U+10FFFF */
	        "ok\xe2\x82", /* cut short */
	        "\x80", /* a lone continuation byte */
	        "\xc3\x28", /* a bad continuation byte */
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		struct buf b = BUF_INIT;
		log_frame(&b, bad[i], strlen(bad[i]));
		expect_bad(&b, true, "log.message: is not valid UTF-8");
		buf_free(&b);
	}
	static const char *good[] = {"",
	                             "plain",
	                             "\xc3\xa9",
	                             "\xe2\x82\xac",
	                             "\xef\xbf\xbf",
	                             "\xf0\x9f\x98\x80",
	                             "\xf4\x8f\xbf\xbf",
	                             "\xed\x9f\xbf"};
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
		struct buf b = BUF_INIT;
		struct frame f;
		log_frame(&b, good[i], strlen(good[i]));
		decode_ok(&b, true, &f);
		assert_string_equal(f.u.log.message, good[i]);
		frame_clear(&f);
		buf_free(&b);
	}
	struct buf b = BUF_INIT;
	log_frame(&b, "a\0b", 3);
	expect_bad(&b, true, "log.message: contains a NUL byte");
	buf_free(&b);
}

static void test_log_level(void **state)
{
	static const char *ok[] = {"debug", "info", "warn", "error"};
	for (size_t i = 0; i < 4; i++) {
		struct raw r;
		struct buf b = BUF_INIT;
		struct frame f;
		raw_init(&r);
		msgpack_pack_map(&r.pk, 3);
		pstr(&r.pk, "t");
		pstr(&r.pk, "log");
		pstr(&r.pk, "level");
		pstr(&r.pk, ok[i]);
		pstr(&r.pk, "message");
		pstr(&r.pk, "m");
		raw_frame(&r, &b);
		decode_ok(&b, true, &f);
		assert_string_equal(f.u.log.level, ok[i]);
		frame_clear(&f);
		buf_free(&b);
	}
	struct raw r;
	struct buf b = BUF_INIT;
	raw_init(&r);
	msgpack_pack_map(&r.pk, 3);
	pstr(&r.pk, "t");
	pstr(&r.pk, "log");
	pstr(&r.pk, "level");
	pstr(&r.pk, "trace");
	pstr(&r.pk, "message");
	pstr(&r.pk, "m");
	raw_frame(&r, &b);
	expect_bad(&b, true, "log.level: expected one of debug, info, warn, error, got 'trace'");
	buf_free(&b);
}

/* {t: hello, protocol, module, version[, concurrency]} */
static void hello_frame(struct buf *b, int64_t protocol, const char *module, bool with_conc,
                        int64_t conc)
{
	struct raw r;
	raw_init(&r);
	msgpack_pack_map(&r.pk, with_conc ? 5 : 4);
	pstr(&r.pk, "t");
	pstr(&r.pk, "hello");
	pstr(&r.pk, "protocol");
	msgpack_pack_int64(&r.pk, protocol);
	pstr(&r.pk, "module");
	pstr(&r.pk, module);
	pstr(&r.pk, "version");
	pstr(&r.pk, "1");
	if (with_conc) {
		pstr(&r.pk, "concurrency");
		msgpack_pack_int64(&r.pk, conc);
	}
	raw_frame(&r, b);
}

static void test_hello_values(void **state)
{
	struct buf b = BUF_INIT;
	struct frame f;
	hello_frame(&b, 2, "m", false, 0);
	expect_bad(&b, true, "hello.protocol: version 2 is not supported (expected 1)");
	buf_reset(&b);
	hello_frame(&b, -1, "m", false, 0);
	expect_bad(&b, true, "hello.protocol: version -1 is not supported (expected 1)");
	buf_reset(&b);
	hello_frame(&b, 1LL << 40, "m", false, 0);
	expect_bad(&b, true,
	           "hello.protocol: 1099511627776 is out of range -2147483648..2147483647");
	buf_reset(&b);
	hello_frame(&b, 1, "", false, 0);
	expect_bad(&b, true, "hello.module: must not be empty");
	buf_reset(&b);
	hello_frame(&b, 1, "m", true, 0);
	expect_bad(&b, true, "hello.concurrency: 0 is out of range 1..2147483647");
	buf_reset(&b);
	hello_frame(&b, 1, "m", true, -3);
	expect_bad(&b, true, "hello.concurrency: -3 is out of range 1..2147483647");
	buf_reset(&b);
	hello_frame(&b, 1, "m", true, 2147483648LL);
	expect_bad(&b, true, "hello.concurrency: 2147483648 is out of range 1..2147483647");
	buf_reset(&b);
	hello_frame(&b, 1, "m", true, 16);
	decode_ok(&b, true, &f);
	assert_int_equal(f.u.hello.concurrency, 16);
	frame_clear(&f);
	buf_free(&b);
}

/* {t: progress, fraction: <packed by the caller>} */
static void progress_frame(struct buf *b, double d, bool as_float32, bool as_int)
{
	struct raw r;
	raw_init(&r);
	msgpack_pack_map(&r.pk, 2);
	pstr(&r.pk, "t");
	pstr(&r.pk, "progress");
	pstr(&r.pk, "fraction");
	if (as_int)
		msgpack_pack_int64(&r.pk, (int64_t)d);
	else if (as_float32)
		msgpack_pack_float(&r.pk, (float)d);
	else
		msgpack_pack_double(&r.pk, d);
	raw_frame(&r, b);
}

static void test_progress_fraction(void **state)
{
	static const struct {
		double in;
		bool f32, integer;
		double want;
	} cases[] = {
	        {0.25, false, false, 0.25},  {0.25, true, false, 0.25},
	        {-0.5, false, false, 0},     {1.5, false, false, 1},
	        {1, false, true, 1},         {-7, false, true, 0},
	        {9, false, true, 1},         {INFINITY, false, false, 1},
	        {-INFINITY, true, false, 0},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct buf b = BUF_INIT;
		struct frame f;
		progress_frame(&b, cases[i].in, cases[i].f32, cases[i].integer);
		decode_ok(&b, true, &f);
		if (f.u.progress.fraction != cases[i].want)
			fail_msg("case %zu: fraction %g, want %g", i, f.u.progress.fraction,
			         cases[i].want);
		frame_clear(&f);
		buf_free(&b);
	}
	struct buf b = BUF_INIT;
	progress_frame(&b, NAN, false, false);
	expect_bad(&b, true, "progress.fraction: expected a number, got NaN");
	buf_reset(&b);
	progress_frame(&b, NAN, true, false);
	expect_bad(&b, true, "progress.fraction: expected a number, got NaN");
	buf_free(&b);
}

/* {t: error, message: m[, category: c][, retryable: r]} */
static void error_frame(struct buf *b, const char *category, int retryable)
{
	struct raw r;
	raw_init(&r);
	msgpack_pack_map(&r.pk, 2 + (category != NULL) + (retryable >= 0));
	pstr(&r.pk, "t");
	pstr(&r.pk, "error");
	pstr(&r.pk, "message");
	pstr(&r.pk, "m");
	if (category) {
		pstr(&r.pk, "category");
		pstr(&r.pk, category);
	}
	if (retryable >= 0) {
		pstr(&r.pk, "retryable");
		if (retryable)
			msgpack_pack_true(&r.pk);
		else
			msgpack_pack_false(&r.pk);
	}
	raw_frame(&r, b);
}

static void test_error_category(void **state)
{
	static const struct {
		const char *category;
		int retryable; /* -1: absent */
		enum frame_category want_cat;
		bool want_retry;
	} cases[] = {
	        {NULL, -1, FRAME_CAT_MODULE, true},
	        {NULL, 0, FRAME_CAT_MODULE, false},
	        {"module", -1, FRAME_CAT_MODULE, true},
	        {"infra", -1, FRAME_CAT_INFRA, true},
	        {"infra", 0, FRAME_CAT_INFRA, false},
	        {"input", -1, FRAME_CAT_INPUT, false},
	        {"input", 1, FRAME_CAT_INPUT, false}, /* never retried */
	        {"cancelled", -1, FRAME_CAT_CANCELLED, false},
	        {"cancelled", 1, FRAME_CAT_CANCELLED, true},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct buf b = BUF_INIT;
		struct frame f;
		error_frame(&b, cases[i].category, cases[i].retryable);
		decode_ok(&b, true, &f);
		assert_int_equal(f.u.error.category, cases[i].want_cat);
		if (f.u.error.retryable != cases[i].want_retry)
			fail_msg("case %zu: retryable %d", i, f.u.error.retryable);
		frame_clear(&f);
		buf_free(&b);
	}
	struct buf b = BUF_INIT;
	error_frame(&b, "fatal", -1);
	expect_bad(&b, true,
	           "error.category: expected one of module, input, infra, cancelled, got 'fatal'");
	buf_free(&b);
}

/* {t: artifact, name, path: <path>, type, role} */
static void artifact_frame(struct buf *b, const char *path, size_t n, const char *role)
{
	struct raw r;
	raw_init(&r);
	msgpack_pack_map(&r.pk, 5);
	pstr(&r.pk, "t");
	pstr(&r.pk, "artifact");
	pstr(&r.pk, "name");
	pstr(&r.pk, "a");
	pstr(&r.pk, "path");
	pstrn(&r.pk, path, n);
	pstr(&r.pk, "type");
	pstr(&r.pk, "audio");
	pstr(&r.pk, "role");
	pstr(&r.pk, role);
	raw_frame(&r, b);
}

static void test_artifact_path(void **state)
{
	static const char *bad[] = {"/etc/passwd", "../x",    "a/../../b", "",     "..",
	                            "a/..",        "a//../b", "/",         "./..", "x/../"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		struct buf b = BUF_INIT;
		artifact_frame(&b, bad[i], strlen(bad[i]), "output");
		expect_bad(&b, true, "artifact.path: must be relative to the workdir without '..'");
		buf_free(&b);
	}
	struct buf b = BUF_INIT;
	artifact_frame(&b, "a\0b", 3, "output");
	expect_bad(&b, true, "artifact.path: contains a NUL byte");
	buf_reset(&b);
	artifact_frame(&b, "a", 1, "scratch");
	expect_bad(&b, true, "artifact.role: expected one of output, intermediate, got 'scratch'");
	buf_free(&b);

	static const char *good[] = {"out/a.wav", "a",    "..a/b..", "a/./b",
	                             "x..y",      "a/b/", ".hidden"};
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
		struct frame f;
		artifact_frame(&b, good[i], strlen(good[i]), "intermediate");
		decode_ok(&b, true, &f);
		assert_string_equal(f.u.artifact.path, good[i]);
		assert_string_equal(f.u.artifact.role, "intermediate");
		frame_clear(&f);
		buf_reset(&b);
	}
	buf_free(&b);
}

static void test_int_ranges(void **state)
{
	struct raw r;
	struct buf b = BUF_INIT;
	raw_init(&r); /* attempt 0 */
	msgpack_pack_map(&r.pk, 10);
	pstr(&r.pk, "t");
	pstr(&r.pk, "task");
	for (size_t i = 0; i < NKEYS; i++) {
		if (keys[i].type != FRAME_TASK)
			continue;
		pstr(&r.pk, keys[i].key);
		if (strcmp(keys[i].key, "attempt") == 0)
			msgpack_pack_int(&r.pk, 0);
		else
			pack_good(&r.pk, &keys[i]);
	}
	raw_frame(&r, &b);
	expect_bad(&b, false, "task.attempt: 0 is out of range 1..2147483647");
	buf_reset(&b);

	raw_init(&r); /* progress.current beyond int64 */
	msgpack_pack_map(&r.pk, 3);
	pstr(&r.pk, "t");
	pstr(&r.pk, "progress");
	pstr(&r.pk, "fraction");
	msgpack_pack_double(&r.pk, 0);
	pstr(&r.pk, "current");
	msgpack_pack_uint64(&r.pk, UINT64_MAX);
	raw_frame(&r, &b);
	expect_bad(&b, true,
	           "progress.current: 18446744073709551615 is out of range "
	           "-9223372036854775808..9223372036854775807");
	buf_reset(&b);

	raw_init(&r); /* an integer field given a float */
	msgpack_pack_map(&r.pk, 3);
	pstr(&r.pk, "t");
	pstr(&r.pk, "progress");
	pstr(&r.pk, "fraction");
	msgpack_pack_double(&r.pk, 0);
	pstr(&r.pk, "total");
	msgpack_pack_double(&r.pk, 3.0);
	raw_frame(&r, &b);
	expect_bad(&b, true, "progress.total: expected an integer, got float");
	buf_reset(&b);

	raw_init(&r); /* INT64_MIN passes */
	msgpack_pack_map(&r.pk, 3);
	pstr(&r.pk, "t");
	pstr(&r.pk, "progress");
	pstr(&r.pk, "fraction");
	msgpack_pack_double(&r.pk, 0);
	pstr(&r.pk, "total");
	msgpack_pack_int64(&r.pk, INT64_MIN);
	raw_frame(&r, &b);
	struct frame f;
	decode_ok(&b, true, &f);
	assert_true(f.u.progress.total == INT64_MIN);
	assert_true(f.u.progress.has_total);
	assert_false(f.u.progress.has_current);
	frame_clear(&f);
	buf_free(&b);
}

/* A task frame whose inputs array the caller packs. */
static void task_with_inputs(struct buf *b, void (*inputs)(msgpack_packer *))
{
	struct raw r;
	raw_init(&r);
	msgpack_pack_map(&r.pk, 10);
	pstr(&r.pk, "t");
	pstr(&r.pk, "task");
	for (size_t i = 0; i < NKEYS; i++) {
		if (keys[i].type != FRAME_TASK)
			continue;
		pstr(&r.pk, keys[i].key);
		if (keys[i].kind == V_INPUTS)
			inputs(&r.pk);
		else
			pack_good(&r.pk, &keys[i]);
	}
	raw_frame(&r, b);
}

static void input_map(msgpack_packer *pk, const char *omit, bool size_as_str)
{
	static const char *names[] = {"name", "type", "path", "size_bytes"};
	msgpack_pack_map(pk, omit ? 3 : 4);
	for (int i = 0; i < 4; i++) {
		if (omit && strcmp(omit, names[i]) == 0)
			continue;
		pstr(pk, names[i]);
		if (i == 3 && !size_as_str)
			msgpack_pack_int(pk, 1);
		else
			pstr(pk, "v");
	}
}

static void inputs_second_lacks_path(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 2);
	input_map(pk, NULL, false);
	input_map(pk, "path", false);
}

static void inputs_size_is_str(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 1);
	input_map(pk, NULL, true);
}

static void inputs_elem_not_map(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 2);
	input_map(pk, NULL, false);
	pstr(pk, "x");
}

static void inputs_negative_size(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 1);
	msgpack_pack_map(pk, 4);
	pstr(pk, "name");
	pstr(pk, "n");
	pstr(pk, "type");
	pstr(pk, "t");
	pstr(pk, "path");
	pstr(pk, "/p");
	pstr(pk, "size_bytes");
	msgpack_pack_int(pk, -1);
}

static void inputs_empty(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 0);
}

static void test_task_inputs(void **state)
{
	struct buf b = BUF_INIT;
	task_with_inputs(&b, inputs_second_lacks_path);
	expect_bad(&b, false, "task.inputs[1].path: required key missing");
	buf_reset(&b);
	task_with_inputs(&b, inputs_size_is_str);
	expect_bad(&b, false, "task.inputs[0].size_bytes: expected an integer, got str");
	buf_reset(&b);
	task_with_inputs(&b, inputs_elem_not_map);
	expect_bad(&b, false, "task.inputs[1]: expected a map, got str");
	buf_reset(&b);
	task_with_inputs(&b, inputs_negative_size);
	expect_bad(&b, false,
	           "task.inputs[0].size_bytes: -1 is out of range 0..9223372036854775807");
	buf_reset(&b);
	struct frame f;
	task_with_inputs(&b, inputs_empty);
	decode_ok(&b, false, &f);
	assert_int_equal(f.u.task.ninputs, 0);
	assert_null(f.u.task.inputs);
	frame_clear(&f);
	buf_free(&b);
}

/* ---- JSON data: result.output ---- */

static int nest_depth; /* containers inside output */
static bool nest_maps; /* maps instead of arrays */
static size_t big_count; /* entries */

/* {t: result, output: <fill>} */
static void result_frame(struct buf *b, void (*fill)(msgpack_packer *))
{
	struct raw r;
	raw_init(&r);
	msgpack_pack_map(&r.pk, 2);
	pstr(&r.pk, "t");
	pstr(&r.pk, "result");
	pstr(&r.pk, "output");
	fill(&r.pk);
	raw_frame(&r, b);
}

/* output = {"x": <nest_depth non-empty containers>, innermost holding 1} */
static void fill_nested(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 1);
	pstr(pk, "x");
	for (int i = 0; i < nest_depth; i++) {
		if (nest_maps) {
			msgpack_pack_map(pk, 1);
			pstr(pk, "k");
		} else {
			msgpack_pack_array(pk, 1);
		}
	}
	msgpack_pack_int(pk, 1);
}

static void test_depth_limit(void **state)
{
	/* The frame's map is depth 1, output 2, then nest_depth more. */
	for (int maps = 0; maps < 2; maps++) {
		nest_maps = maps;
		struct buf b = BUF_INIT;
		struct frame f;
		nest_depth = 30; /* depth 32: allowed, and msgpack-c copes */
		result_frame(&b, fill_nested);
		decode_ok(&b, true, &f);
		json_t *v = json_object_get(f.u.result.output, "x");
		int d = 0;
		while (json_is_array(v) || json_is_object(v)) {
			v = json_is_array(v) ? json_array_get(v, 0) : json_object_get(v, "k");
			d++;
		}
		assert_int_equal(d, 30);
		assert_int_equal(json_integer_value(v), 1);
		frame_clear(&f);
		buf_reset(&b);

		nest_depth = 31; /* depth 33 */
		result_frame(&b, fill_nested);
		expect_bad(&b, true, "output: nesting deeper than 32 levels");
		/* A configured limit above msgpack-c's stack is held at 32. */
		struct frame_limits big = {.max_depth = 100};
		expect_bad_lim(&b, true, &big, "output: nesting deeper than 32 levels");
		buf_reset(&b);

		nest_depth = 3; /* depth 5 against a limit of 4 */
		result_frame(&b, fill_nested);
		struct frame_limits lim = {.max_depth = 4};
		expect_bad_lim(&b, true, &lim, "output: nesting deeper than 4 levels");
		lim.max_depth = 5;
		decode_ok_lim(&b, true, &lim, &f);
		frame_clear(&f);
		buf_free(&b);
	}
}

/* An empty container counts as a level too. */
static void fill_deep_empty(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 1);
	pstr(pk, "x");
	for (int i = 0; i < 30; i++)
		msgpack_pack_array(pk, 1);
	msgpack_pack_array(pk, 0);
}

static void test_depth_empty_innermost(void **state)
{
	struct buf b = BUF_INIT;
	result_frame(&b, fill_deep_empty);
	expect_bad(&b, true, "output: nesting deeper than 32 levels");
	buf_free(&b);
}

static void fill_big_array(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 1);
	pstr(pk, "x");
	msgpack_pack_array(pk, big_count);
	for (size_t i = 0; i < big_count; i++)
		msgpack_pack_nil(pk);
}

static void fill_big_map(msgpack_packer *pk)
{
	msgpack_pack_map(pk, big_count);
	for (size_t i = 0; i < big_count; i++) {
		char k[24];
		snprintf(k, sizeof k, "%zu", i);
		pstr(pk, k);
		msgpack_pack_true(pk);
	}
}

static void test_item_limit(void **state)
{
	struct buf b = BUF_INIT;
	struct frame f;
	big_count = 65536;
	result_frame(&b, fill_big_array);
	decode_ok(&b, true, &f);
	assert_int_equal(json_array_size(json_object_get(f.u.result.output, "x")), 65536);
	frame_clear(&f);
	buf_reset(&b);

	big_count = 65537;
	result_frame(&b, fill_big_array);
	expect_bad(&b, true, "output: array of 65537 entries exceeds the 65536-entry limit");
	buf_reset(&b);

	result_frame(&b, fill_big_map);
	expect_bad(&b, true, "output: map of 65537 entries exceeds the 65536-entry limit");
	buf_reset(&b);

	big_count = 65536;
	result_frame(&b, fill_big_map);
	decode_ok(&b, true, &f);
	assert_int_equal(json_object_size(f.u.result.output), 65536);
	frame_clear(&f);
	buf_reset(&b);

	/* A configured limit, and the frame's own map counts too. */
	struct frame_limits lim = {.max_items = 3};
	big_count = 4;
	result_frame(&b, fill_big_array);
	expect_bad_lim(&b, true, &lim, "output: array of 4 entries exceeds the 3-entry limit");
	buf_reset(&b);
	lim.max_items = 1;
	big_count = 1;
	result_frame(&b, fill_big_array);
	expect_bad_lim(&b, true, &lim, "map of 2 entries exceeds the 1-entry limit");
	buf_free(&b);
}

static size_t fill_values; /* values inside output's "a" array */

/* output = {"a": [[1, 1, ...], ...]} with fill_values values below "a". */
static void fill_many_values(msgpack_packer *pk)
{
	size_t per = 65535, narr = (fill_values + per) / (per + 1), left = fill_values - narr;
	msgpack_pack_map(pk, 1);
	pstr(pk, "a");
	msgpack_pack_array(pk, narr);
	for (size_t i = 0; i < narr; i++) {
		size_t c = left < per ? left : per;
		left -= c;
		msgpack_pack_array(pk, c);
		for (size_t j = 0; j < c; j++)
			msgpack_pack_int(pk, 1);
	}
}

/* Each container is within its limit, but the frame as a whole holds too
 * many values: 2^20 at most, every key, element and container counted. */
static void test_value_limit(void **state)
{
	struct buf b = BUF_INIT;
	struct frame f;
	/* map, "t", "result", "output", output's map, "a", a's array: 7 */
	fill_values = 1048576 - 7;
	result_frame(&b, fill_many_values);
	decode_ok(&b, true, &f);
	json_t *a = json_object_get(f.u.result.output, "a");
	size_t sum = json_array_size(a);
	for (size_t i = 0; i < json_array_size(a); i++)
		sum += json_array_size(json_array_get(a, i));
	assert_int_equal(sum, fill_values);
	frame_clear(&f);
	buf_reset(&b);

	fill_values++;
	result_frame(&b, fill_many_values);
	expect_bad(&b, true, "output: more than 1048576 values in one frame");
	buf_free(&b);
}

/* Containers that claim more entries than there are bytes left. */
static void test_claims_past_the_end(void **state)
{
	struct buf b = BUF_INIT;
	/* {"t": [65535 entries, none there]} */
	buf_add(&b, "\0\0\0\x06\x81\xa1t\xdc\xff\xff", 10);
	expect_bad(&b, true, "t: truncated array of 65535 entries");
	buf_reset(&b);
	/* array32 of 2^32-1 with a large configured limit: still no allocation. */
	struct frame_limits lim = {.max_items = SIZE_MAX};
	buf_add(&b, "\0\0\0\x08\x81\xa1t\xdd\xff\xff\xff\xff", 12);
	expect_bad_lim(&b, true, &lim, "t: truncated array of 4294967295 entries");
	buf_reset(&b);
	/* map32 likewise */
	buf_add(&b, "\0\0\0\x05\xdf\xff\xff\xff\xff", 9);
	expect_bad_lim(&b, true, &lim, "truncated map of 4294967295 entries");
	buf_reset(&b);
	/* a str that runs past the payload */
	buf_add(&b, "\0\0\0\x05\x81\xa1t\xa5x", 9);
	expect_bad(&b, true, "t: truncated str of 5 bytes");
	buf_reset(&b);
	/* str32 header cut short */
	buf_add(&b, "\0\0\0\x05\x81\xa1t\xdb\0", 9);
	expect_bad(&b, true, "t: truncated str value");
	buf_reset(&b);
	/* a value missing: {"t": ...} */
	buf_add(&b, "\0\0\0\x03\x81\xa1t", 7);
	expect_bad(&b, true, "t: truncated frame: a value is missing");
	buf_reset(&b);
	/* 0xc1 inside */
	buf_add(&b, "\0\0\0\x04\x81\xa1t\xc1", 8);
	expect_bad(&b, true, "t: invalid MessagePack byte 0xc1");
	buf_free(&b);
}

static void test_trailing_bytes(void **state)
{
	struct buf good = BUF_INIT;
	frame_encode_shutdown(&good);
	/* The same map, one garbage byte after it inside the frame's length. */
	struct buf b = BUF_INIT;
	size_t n = good.len - 4 + 1;
	uint8_t len[4] = {0, 0, 0, (uint8_t)n};
	buf_add(&b, len, 4);
	buf_add(&b, good.data + 4, good.len - 4);
	buf_addc(&b, '\x00');
	expect_bad(&b, false, "1 trailing bytes after the frame's map");
	buf_reset(&b);
	/* Or a whole second map. */
	n = 2 * (good.len - 4);
	len[3] = (uint8_t)n;
	buf_add(&b, len, 4);
	buf_add(&b, good.data + 4, good.len - 4);
	buf_add(&b, good.data + 4, good.len - 4);
	char want[64];
	snprintf(want, sizeof want, "%zu trailing bytes after the frame's map", good.len - 4);
	expect_bad(&b, false, want);
	buf_free(&b);
	buf_free(&good);
}

static void fill_bin(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 1);
	pstr(pk, "b");
	msgpack_pack_bin(pk, 3);
	msgpack_pack_bin_body(pk, "abc", 3);
}

static void fill_ext(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 1);
	pstr(pk, "a");
	msgpack_pack_array(pk, 2);
	msgpack_pack_nil(pk);
	msgpack_pack_ext(pk, 4, 7);
	msgpack_pack_ext_body(pk, "abcd", 4);
}

static void fill_int_key(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 1);
	msgpack_pack_int(pk, 1);
	msgpack_pack_int(pk, 2);
}

static void fill_nested_bool_key(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 1);
	pstr(pk, "a");
	msgpack_pack_map(pk, 1);
	msgpack_pack_true(pk);
	msgpack_pack_int(pk, 2);
}

static void fill_nan(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 1);
	pstr(pk, "x");
	msgpack_pack_double(pk, NAN);
}

static void fill_inf32(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 1);
	pstr(pk, "x");
	msgpack_pack_float(pk, -INFINITY);
}

static void fill_huge_uint(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 1);
	pstr(pk, "x");
	msgpack_pack_uint64(pk, (uint64_t)INT64_MAX + 1);
}

static void fill_bad_utf8(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 1);
	pstr(pk, "s");
	msgpack_pack_array(pk, 2);
	pstr(pk, "ok");
	pstr(pk, "\xed\xbf\xbf");
}

static void fill_bad_utf8_key(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 1);
	pstr(pk, "\xfe");
	msgpack_pack_nil(pk);
}

static void fill_nul(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 1);
	pstr(pk, "s");
	pstrn(pk, "a\0b", 3);
}

static void fill_dup(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 2);
	pstr(pk, "a");
	msgpack_pack_int(pk, 1);
	pstr(pk, "a");
	msgpack_pack_int(pk, 2);
}

static void fill_long_key_path(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 1);
	pstr(pk, "a-key-that-is-much-longer-than-thirty-two-bytes\n");
	msgpack_pack_bin(pk, 0);
}

static void fill_array_top(msgpack_packer *pk)
{
	msgpack_pack_array(pk, 0);
}

static void test_json_data(void **state)
{
	static const struct {
		void (*fill)(msgpack_packer *);
		const char *want;
	} cases[] = {
	        {fill_bin, "result.output.b: bin data is not allowed in JSON data"},
	        {fill_ext, "result.output.a[1]: extension types are not allowed in JSON data"},
	        {fill_int_key, "result.output: map key is not a string (got int)"},
	        {fill_nested_bool_key, "result.output.a: map key is not a string (got bool)"},
	        {fill_nan, "result.output.x: NaN is not a JSON number"},
	        {fill_inf32, "result.output.x: infinity is not a JSON number"},
	        {fill_huge_uint,
	         "result.output.x: integer 9223372036854775808 is out of the 64-bit signed range"},
	        {fill_bad_utf8, "result.output.s[1]: string is not valid UTF-8"},
	        {fill_bad_utf8_key, "result.output: map key is not valid UTF-8"},
	        {fill_nul, "result.output.s: string contains a NUL byte"},
	        {fill_dup, "result.output: duplicate key 'a'"},
	        {fill_long_key_path, "result.output.a-key-that-is-much-longer-than-t...: bin "
	                             "data is not allowed in JSON data"},
	        {fill_array_top, "result.output: expected a map, got array"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct buf b = BUF_INIT;
		result_frame(&b, cases[i].fill);
		expect_bad(&b, true, cases[i].want);
		buf_free(&b);
	}
}

/* JSON maps in every other place go through the same converter. */
static void test_json_in_each_map(void **state)
{
	static const struct {
		enum frame_type type;
		const char *key;
	} maps[] = {
	        {FRAME_TASK, "params"},    {FRAME_LOG, "fields"},    {FRAME_ARTIFACT, "meta"},
	        {FRAME_WARNING, "detail"}, {FRAME_RESULT, "output"}, {FRAME_RESULT, "resources"},
	        {FRAME_ERROR, "detail"},
	};
	for (size_t m = 0; m < sizeof maps / sizeof maps[0]; m++) {
		struct raw r;
		struct buf b = BUF_INIT;
		size_t n = 1;
		for (size_t i = 0; i < NKEYS; i++)
			n += keys[i].type == maps[m].type;
		raw_init(&r);
		msgpack_pack_map(&r.pk, n);
		pstr(&r.pk, "t");
		pstr(&r.pk, frame_type_name(maps[m].type));
		for (size_t i = 0; i < NKEYS; i++) {
			if (keys[i].type != maps[m].type)
				continue;
			pstr(&r.pk, keys[i].key);
			if (strcmp(keys[i].key, maps[m].key) == 0)
				fill_bin(&r.pk);
			else
				pack_good(&r.pk, &keys[i]);
		}
		raw_frame(&r, &b);
		char want[100];
		snprintf(want, sizeof want, "%s.%s.b: bin data is not allowed in JSON data",
		         frame_type_name(maps[m].type), maps[m].key);
		expect_bad(&b, maps[m].type >= FRAME_HELLO, want);
		buf_free(&b);
	}
}

static void fill_float32(msgpack_packer *pk)
{
	msgpack_pack_map(pk, 2);
	pstr(pk, "f");
	msgpack_pack_float(pk, 0.25f);
	pstr(pk, "n");
	msgpack_pack_int64(pk, INT64_MIN);
}

static void test_json_float32_and_ints(void **state)
{
	struct buf b = BUF_INIT;
	struct frame f;
	result_frame(&b, fill_float32);
	decode_ok(&b, true, &f);
	json_t *want = js("{\"f\":0.25,\"n\":-9223372036854775808}");
	assert_json(f.u.result.output, want);
	json_decref(want);
	frame_clear(&f);
	buf_free(&b);
}

static void test_null_err_and_limits(void **state)
{
	struct buf b = BUF_INIT;
	struct frame f;
	size_t used;
	buf_add(&b, "\0\0\0\0", 4);
	assert_int_equal(frame_decode(b.data, b.len, NULL, true, &f, &used, NULL), FRAME_BAD);
	buf_reset(&b);
	frame_encode_shutdown(&b);
	struct frame_limits zero = {0, 0, 0};
	assert_int_equal(frame_decode(b.data, b.len, &zero, false, &f, &used, NULL), FRAME_OK);
	assert_int_equal(used, b.len);
	frame_clear(&f);
	buf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_roundtrip_task),
	        cmocka_unit_test(test_roundtrip_cancel_shutdown),
	        cmocka_unit_test(test_roundtrip_hello),
	        cmocka_unit_test(test_roundtrip_progress),
	        cmocka_unit_test(test_roundtrip_log),
	        cmocka_unit_test(test_roundtrip_artifact),
	        cmocka_unit_test(test_roundtrip_warning),
	        cmocka_unit_test(test_roundtrip_result),
	        cmocka_unit_test(test_roundtrip_error),
	        cmocka_unit_test(test_names),
	        cmocka_unit_test(test_partial_byte_by_byte),
	        cmocka_unit_test(test_back_to_back),
	        cmocka_unit_test(test_length_limits),
	        cmocka_unit_test(test_not_a_map),
	        cmocka_unit_test(test_top_keys),
	        cmocka_unit_test(test_wrong_direction),
	        cmocka_unit_test(test_table_frames_are_good),
	        cmocka_unit_test(test_missing_required_key),
	        cmocka_unit_test(test_wrong_typed_key),
	        cmocka_unit_test(test_duplicate_known_key),
	        cmocka_unit_test(test_unknown_keys_ignored),
	        cmocka_unit_test(test_utf8),
	        cmocka_unit_test(test_log_level),
	        cmocka_unit_test(test_hello_values),
	        cmocka_unit_test(test_progress_fraction),
	        cmocka_unit_test(test_error_category),
	        cmocka_unit_test(test_artifact_path),
	        cmocka_unit_test(test_int_ranges),
	        cmocka_unit_test(test_task_inputs),
	        cmocka_unit_test(test_depth_limit),
	        cmocka_unit_test(test_depth_empty_innermost),
	        cmocka_unit_test(test_item_limit),
	        cmocka_unit_test(test_value_limit),
	        cmocka_unit_test(test_claims_past_the_end),
	        cmocka_unit_test(test_trailing_bytes),
	        cmocka_unit_test(test_json_data),
	        cmocka_unit_test(test_json_in_each_map),
	        cmocka_unit_test(test_json_float32_and_ints),
	        cmocka_unit_test(test_null_err_and_limits),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
