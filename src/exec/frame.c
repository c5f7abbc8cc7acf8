/* The worker protocol's codec (proto/worker-protocol.md). Decoding runs in
 * three steps so that nothing trusts a module's bytes before they are
 * checked: the length prefix against the frame limit; then an iterative scan
 * of the raw MessagePack that bounds nesting depth, container sizes and the
 * values in the frame, and proves every declared length fits in the payload
 * (msgpack-c allocates a container's slots from its declared count and has
 * no depth limit of its own); only then msgpack-c's unpacker, and a walk of
 * its objects that checks each known key against a per-type table and
 * converts the JSON-carrying maps to jansson. Encoding packs straight into a
 * struct buf. */
#include "exec/frame.h"

#include <limits.h>
#include <math.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/xmalloc.h"

/* msgpack-c 4.0's unpacker keeps open containers on a fixed stack of
 * MSGPACK_EMBED_STACK_SIZE (32, compiled into the library; the macro is not
 * in the public headers) entries and fails deeper input with NOMEM, so a
 * configured depth can't exceed it. test_frame checks depth 32 unpacks. */
#define FRAME_HARD_MAX_DEPTH 32

/* Only guards the encoder's recursion against cyclic or absurd jansson
 * values; anything deeper than the decoder's limit is refused by the peer. */
#define FRAME_ENCODE_MAX_DEPTH 512

/* Values in one frame, every key, element and container counted. The
 * per-container limits alone let a 16 MiB frame of empty maps cost 4 GiB
 * and 8 s to decode (each value becomes a msgpack_object and a jansson
 * node); at this cap the worst case is ~250 MiB. Not yet configurable:
 * struct frame_limits has no field for it. */
#define FRAME_MAX_VALUES (1024u * 1024)

struct limits {
	size_t max_bytes;
	int max_depth;
	size_t max_items;
	size_t max_values;
};

static const char *const type_names[FRAME_NTYPES] = {
        [FRAME_TASK] = "task",         [FRAME_CANCEL] = "cancel",     [FRAME_SHUTDOWN] = "shutdown",
        [FRAME_HELLO] = "hello",       [FRAME_PROGRESS] = "progress", [FRAME_LOG] = "log",
        [FRAME_ARTIFACT] = "artifact", [FRAME_WARNING] = "warning",   [FRAME_RESULT] = "result",
        [FRAME_ERROR] = "error",
};

/* Indexed by enum frame_category. */
static const char *const category_names[] = {"module", "input", "infra", "cancelled", NULL};
static const char *const level_names[] = {"debug", "info", "warn", "error", NULL};
static const char *const role_names[] = {"output", "intermediate", NULL};

const char *frame_type_name(enum frame_type t)
{
	if ((unsigned)t >= FRAME_NTYPES)
		return "unknown";
	return type_names[t];
}

const char *frame_category_name(enum frame_category c)
{
	if ((unsigned)c > FRAME_CAT_CANCELLED)
		return "unknown";
	return category_names[c];
}

static bool from_module_type(enum frame_type t)
{
	return t >= FRAME_HELLO;
}

/* ---- errors ---- */

static bool fail(struct frame_error *err, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));

static bool fail(struct frame_error *err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof err->msg, fmt, ap);
	va_end(ap);
	return false;
}

/* Peer bytes shown in a message: printable ASCII only and short, so the
 * message stays valid UTF-8 whatever the peer sent and wherever snprintf
 * truncates it. */
static void show(char *out, size_t cap, const char *s, size_t n)
{
	const size_t max = 32;
	size_t o = 0;
	for (size_t i = 0; i < n && i < max && o + 1 < cap; i++) {
		unsigned char c = (unsigned char)s[i];
		out[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
	}
	if (n > max && o + 4 < cap) {
		memcpy(out + o, "...", 3);
		o += 3;
	}
	out[o] = '\0';
}

/* ---- UTF-8 ---- */

/* Strict: no overlong forms, no surrogates, nothing past U+10FFFF. */
static bool utf8_valid(const unsigned char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned char c = s[i];
		if (c < 0x80) {
			i++;
			continue;
		}
		size_t len;
		unsigned char lo = 0x80, hi = 0xbf;
		if (c >= 0xc2 && c <= 0xdf) {
			len = 2;
		} else if (c >= 0xe0 && c <= 0xef) {
			len = 3;
			if (c == 0xe0)
				lo = 0xa0;
			else if (c == 0xed)
				hi = 0x9f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			len = 4;
			if (c == 0xf0)
				lo = 0x90;
			else if (c == 0xf4)
				hi = 0x8f;
		} else {
			return false;
		}
		if (n - i < len)
			return false;
		if (s[i + 1] < lo || s[i + 1] > hi)
			return false;
		for (size_t k = 2; k < len; k++)
			if ((s[i + k] & 0xc0) != 0x80)
				return false;
		i += len;
	}
	return true;
}

/* ---- step 2: the raw scan ---- */

static uint16_t be16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t be32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static const char *byte_kind(uint8_t c)
{
	if (c <= 0x7f || c >= 0xe0)
		return "int";
	if (c <= 0x8f)
		return "map";
	if (c <= 0x9f)
		return "array";
	if (c <= 0xbf)
		return "str";
	switch (c) {
	case 0xc0: return "nil";
	case 0xc2:
	case 0xc3: return "bool";
	case 0xc4:
	case 0xc5:
	case 0xc6: return "bin";
	case 0xca:
	case 0xcb: return "float";
	case 0xd9:
	case 0xda:
	case 0xdb: return "str";
	case 0xdc:
	case 0xdd: return "array";
	case 0xde:
	case 0xdf: return "map";
	case 0xc1: return "an invalid byte";
	default:
		if (c >= 0xcc && c <= 0xd3)
			return "int";
		return "ext";
	}
}

/* The root key whose value the scan is in, as a message prefix. */
struct scan_where {
	const uint8_t *key;
	size_t klen;
	bool in_value;
};

static bool scan_fail(struct frame_error *err, const struct scan_where *w, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static bool scan_fail(struct frame_error *err, const struct scan_where *w, const char *fmt, ...)
{
	char what[192];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof what, fmt, ap);
	va_end(ap);
	if (w->in_value && w->key != NULL) {
		char k[40];
		show(k, sizeof k, (const char *)w->key, w->klen);
		return fail(err, "%s: %s", k, what);
	}
	return fail(err, "%s", what);
}

/* Walks the payload without building anything: exactly one value, a map,
 * filling it to the last byte; every length within the payload; no
 * container over max_items entries or deeper than max_depth (the root map
 * is depth 1); no byte 0xc1. Iterative, with one counter per open
 * container. */
static bool scan(const uint8_t *p, size_t len, const struct limits *l, struct frame_error *err)
{
	uint64_t rem[FRAME_HARD_MAX_DEPTH];
	int depth = 0;
	size_t i = 0, values = 0;
	struct scan_where w = {NULL, 0, false};

	if (!((p[0] >= 0x80 && p[0] <= 0x8f) || p[0] == 0xde || p[0] == 0xdf))
		return fail(err, "frame is not a map (got %s)", byte_kind(p[0]));

	for (;;) {
		/* At the root, an even count of items left means a key is next. */
		bool root_key = depth == 1 && rem[0] % 2 == 0;
		if (depth == 1)
			w.in_value = !root_key;
		if (i == len)
			return scan_fail(err, &w, "truncated frame: a value is missing");
		if (++values > l->max_values)
			return scan_fail(err, &w, "more than %zu values in one frame",
			                 l->max_values);
		uint8_t c = p[i];
		size_t left = len - i;
		size_t hdr = 1; /* bytes before the body */
		int lenbytes = 0; /* size of the length field at p[i + 1] */
		size_t body = 0;
		int container = 0; /* 1 array, 2 map */
		uint64_t count = 0;

		if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
			/* one byte */
		} else if (c <= 0x8f) {
			container = 2;
			count = c & 0x0f;
		} else if (c <= 0x9f) {
			container = 1;
			count = c & 0x0f;
		} else if (c <= 0xbf) {
			body = c & 0x1f;
		} else {
			switch (c) {
			case 0xc4:
			case 0xd9: hdr = 2, lenbytes = 1; break;
			case 0xc5:
			case 0xda: hdr = 3, lenbytes = 2; break;
			case 0xc6:
			case 0xdb: hdr = 5, lenbytes = 4; break;
			case 0xc7: hdr = 3, lenbytes = 1; break; /* ext: length, type */
			case 0xc8: hdr = 4, lenbytes = 2; break;
			case 0xc9: hdr = 6, lenbytes = 4; break;
			case 0xca: hdr = 5; break;
			case 0xcb: hdr = 9; break;
			case 0xcc:
			case 0xd0: hdr = 2; break;
			case 0xcd:
			case 0xd1: hdr = 3; break;
			case 0xce:
			case 0xd2: hdr = 5; break;
			case 0xcf:
			case 0xd3: hdr = 9; break;
			case 0xd4: hdr = 2, body = 1; break; /* fixext: type, data */
			case 0xd5: hdr = 2, body = 2; break;
			case 0xd6: hdr = 2, body = 4; break;
			case 0xd7: hdr = 2, body = 8; break;
			case 0xd8: hdr = 2, body = 16; break;
			case 0xdc: hdr = 3, lenbytes = 2, container = 1; break;
			case 0xdd: hdr = 5, lenbytes = 4, container = 1; break;
			case 0xde: hdr = 3, lenbytes = 2, container = 2; break;
			case 0xdf: hdr = 5, lenbytes = 4, container = 2; break;
			default: /* 0xc1 */
				return scan_fail(err, &w, "invalid MessagePack byte 0xc1");
			}
		}
		if (left < hdr)
			return scan_fail(err, &w, "truncated %s value", byte_kind(c));
		if (lenbytes) {
			uint32_t v = lenbytes == 1   ? p[i + 1]
			             : lenbytes == 2 ? be16(p + i + 1)
			                             : be32(p + i + 1);
			if (container)
				count = v;
			else
				body = v;
		}

		if (root_key) {
			bool is_str = (c >= 0xa0 && c <= 0xbf) || (c >= 0xd9 && c <= 0xdb);
			w.key = is_str ? p + i + hdr : NULL;
			w.klen = is_str && body <= left - hdr ? body : 0;
		}

		if (container) {
			const char *what = container == 1 ? "array" : "map";
			if (count > l->max_items)
				return scan_fail(err, &w,
				                 "%s of %llu entries exceeds the %zu-entry limit",
				                 what, (unsigned long long)count, l->max_items);
			if (depth + 1 > l->max_depth)
				return scan_fail(err, &w, "nesting deeper than %d levels",
				                 l->max_depth);
			uint64_t items = container == 2 ? 2 * count : count;
			/* Every item takes at least one byte. */
			if (items > left - hdr)
				return scan_fail(err, &w, "truncated %s of %llu entries", what,
				                 (unsigned long long)count);
			i += hdr;
			if (items > 0) {
				rem[depth++] = items;
				continue;
			}
		} else {
			if (body > left - hdr)
				return scan_fail(err, &w, "truncated %s of %zu bytes", byte_kind(c),
				                 body);
			i += hdr + body;
		}

		/* A value is complete: count it off, closing finished containers. */
		while (depth > 0) {
			if (--rem[depth - 1] > 0)
				break;
			depth--;
		}
		if (depth == 0)
			break;
	}
	if (i != len)
		return fail(err, "%zu trailing bytes after the frame's map", len - i);
	return true;
}

/* ---- step 3: msgpack objects → frame ---- */

static const char *obj_kind(const msgpack_object *o)
{
	switch (o->type) {
	case MSGPACK_OBJECT_NIL: return "nil";
	case MSGPACK_OBJECT_BOOLEAN: return "bool";
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "int";
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64: return "float";
	case MSGPACK_OBJECT_STR: return "str";
	case MSGPACK_OBJECT_ARRAY: return "array";
	case MSGPACK_OBJECT_MAP: return "map";
	case MSGPACK_OBJECT_BIN: return "bin";
	case MSGPACK_OBJECT_EXT: return "ext";
	}
	return "unknown";
}

static bool key_is(const msgpack_object *k, const char *name)
{
	size_t n = strlen(name);
	return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
	       memcmp(k->via.str.ptr, name, n) == 0;
}

/* Where a JSON value sits, for messages: "result.output.a[3].b". */
struct jpath {
	const char *prefix;
	int n;
	struct {
		const char *key; /* NULL: an array index */
		size_t klen;
		size_t idx;
	} seg[FRAME_HARD_MAX_DEPTH + 1];
};

static bool jfail(struct frame_error *err, const struct jpath *jp, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static bool jfail(struct frame_error *err, const struct jpath *jp, const char *fmt, ...)
{
	char path[160];
	size_t o = (size_t)snprintf(path, sizeof path, "%s", jp->prefix);
	for (int i = 0; i < jp->n && o < sizeof path; i++) {
		if (jp->seg[i].key) {
			char k[40];
			show(k, sizeof k, jp->seg[i].key, jp->seg[i].klen);
			o += (size_t)snprintf(path + o, sizeof path - o, ".%s", k);
		} else {
			o += (size_t)snprintf(path + o, sizeof path - o, "[%zu]", jp->seg[i].idx);
		}
	}
	char what[160];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof what, fmt, ap);
	va_end(ap);
	return fail(err, "%s: %s", path, what);
}

/* A string that becomes text: valid UTF-8 and no NUL (C strings here, and
 * PostgreSQL's jsonb can't hold \u0000 either). */
static bool text_ok(const msgpack_object *o, const char **why)
{
	const char *s = o->via.str.ptr;
	size_t n = o->via.str.size;
	if (n > 0 && memchr(s, '\0', n) != NULL) {
		*why = "contains a NUL byte";
		return false;
	}
	if (!utf8_valid((const unsigned char *)s, n)) {
		*why = "is not valid UTF-8";
		return false;
	}
	return true;
}

/* Bounded by the scan: depth <= FRAME_HARD_MAX_DEPTH, so the recursion is. */
static bool to_json(const msgpack_object *o, struct jpath *jp, json_t **out,
                    struct frame_error *err)
{
	const char *why;
	*out = NULL;
	switch (o->type) {
	case MSGPACK_OBJECT_NIL: *out = json_null(); return true;
	case MSGPACK_OBJECT_BOOLEAN: *out = json_boolean(o->via.boolean); return true;
	case MSGPACK_OBJECT_POSITIVE_INTEGER:
		if (o->via.u64 > (uint64_t)INT64_MAX)
			return jfail(err, jp, "integer %llu is out of the 64-bit signed range",
			             (unsigned long long)o->via.u64);
		*out = json_integer((json_int_t)o->via.u64);
		break;
	case MSGPACK_OBJECT_NEGATIVE_INTEGER: *out = json_integer((json_int_t)o->via.i64); break;
	case MSGPACK_OBJECT_FLOAT32:
	case MSGPACK_OBJECT_FLOAT64:
		if (!isfinite(o->via.f64))
			return jfail(err, jp, "%s is not a JSON number",
			             isnan(o->via.f64) ? "NaN" : "infinity");
		*out = json_real(o->via.f64);
		break;
	case MSGPACK_OBJECT_STR:
		if (!text_ok(o, &why))
			return jfail(err, jp, "string %s", why);
		*out = json_stringn_nocheck(o->via.str.ptr, o->via.str.size);
		break;
	case MSGPACK_OBJECT_BIN: return jfail(err, jp, "bin data is not allowed in JSON data");
	case MSGPACK_OBJECT_EXT:
		return jfail(err, jp, "extension types are not allowed in JSON data");
	case MSGPACK_OBJECT_ARRAY: {
		if (jp->n >= FRAME_HARD_MAX_DEPTH)
			return jfail(err, jp, "nesting too deep");
		json_t *a = json_array();
		if (a == NULL)
			break;
		for (uint32_t i = 0; i < o->via.array.size; i++) {
			jp->seg[jp->n].key = NULL;
			jp->seg[jp->n].idx = i;
			jp->n++;
			json_t *v;
			bool ok = to_json(&o->via.array.ptr[i], jp, &v, err);
			jp->n--;
			if (!ok || json_array_append_new(a, v) != 0) {
				json_decref(a);
				return ok ? jfail(err, jp, "out of memory") : false;
			}
		}
		*out = a;
		return true;
	}
	case MSGPACK_OBJECT_MAP: {
		if (jp->n >= FRAME_HARD_MAX_DEPTH)
			return jfail(err, jp, "nesting too deep");
		json_t *m = json_object();
		if (m == NULL)
			break;
		for (uint32_t i = 0; i < o->via.map.size; i++) {
			const msgpack_object *k = &o->via.map.ptr[i].key;
			bool ok = false;
			if (k->type != MSGPACK_OBJECT_STR) {
				jfail(err, jp, "map key is not a string (got %s)", obj_kind(k));
			} else if (!text_ok(k, &why)) {
				jfail(err, jp, "map key %s", why);
			} else if (json_object_getn(m, k->via.str.ptr, k->via.str.size) != NULL) {
				char ks[40];
				show(ks, sizeof ks, k->via.str.ptr, k->via.str.size);
				jfail(err, jp, "duplicate key '%s'", ks);
			} else {
				jp->seg[jp->n].key = k->via.str.ptr;
				jp->seg[jp->n].klen = k->via.str.size;
				jp->n++;
				json_t *v;
				ok = to_json(&o->via.map.ptr[i].val, jp, &v, err);
				jp->n--;
				if (ok && json_object_setn_new_nocheck(m, k->via.str.ptr,
				                                       k->via.str.size, v) != 0)
					ok = jfail(err, jp, "out of memory");
			}
			if (!ok) {
				json_decref(m);
				return false;
			}
		}
		*out = m;
		return true;
	}
	}
	if (*out == NULL)
		return jfail(err, jp, "out of memory");
	return true;
}

enum field_kind { K_STR, K_INT, K_I64, K_BOOL, K_NUM, K_MAP, K_INPUTS, K_CATEGORY };

#define F_REQ 1u /* missing is an error */
#define F_NONEMPTY 2u /* "" is an error */
#define F_HAS 4u /* has_off names a bool set when present */

struct field_spec {
	const char *key;
	enum field_kind kind;
	unsigned flags;
	size_t off, has_off;
	int64_t min, max; /* K_INT, K_I64 */
	const char *const *allowed; /* K_STR, K_CATEGORY: the values allowed */
};

#define FOFF(m) offsetof(struct frame, m)
#define TASK_ID                                                            \
	{                                                                  \
		"task_id", K_STR, F_NONEMPTY, FOFF(task_id), 0, 0, 0, NULL \
	}

static const struct field_spec task_fields[] = {
        {"task_id", K_STR, F_REQ | F_NONEMPTY, FOFF(task_id), 0, 0, 0, NULL},
        {"job_id", K_STR, F_REQ | F_NONEMPTY, FOFF(u.task.job_id), 0, 0, 0, NULL},
        {"stage", K_STR, F_REQ | F_NONEMPTY, FOFF(u.task.stage), 0, 0, 0, NULL},
        {"attempt", K_INT, F_REQ, FOFF(u.task.attempt), 0, 1, INT_MAX, NULL},
        {"params", K_MAP, F_REQ, FOFF(u.task.params), 0, 0, 0, NULL},
        {"inputs", K_INPUTS, F_REQ, 0, 0, 0, 0, NULL},
        {"workdir", K_STR, F_REQ | F_NONEMPTY, FOFF(u.task.workdir), 0, 0, 0, NULL},
        {"deadline", K_I64, F_REQ, FOFF(u.task.deadline_ms), 0, INT64_MIN, INT64_MAX, NULL},
        {"request_id", K_STR, 0, FOFF(u.task.request_id), 0, 0, 0, NULL},
};

static const struct field_spec input_fields[] = {
        {"name", K_STR, F_REQ | F_NONEMPTY, offsetof(struct frame_input, name), 0, 0, 0, NULL},
        {"type", K_STR, F_REQ | F_NONEMPTY, offsetof(struct frame_input, type), 0, 0, 0, NULL},
        {"path", K_STR, F_REQ | F_NONEMPTY, offsetof(struct frame_input, path), 0, 0, 0, NULL},
        {"size_bytes", K_I64, F_REQ, offsetof(struct frame_input, size_bytes), 0, 0, INT64_MAX,
         NULL},
        {"format", K_STR, 0, offsetof(struct frame_input, format), 0, 0, 0, NULL},
};

static const struct field_spec cancel_fields[] = {
        {"task_id", K_STR, F_REQ | F_NONEMPTY, FOFF(task_id), 0, 0, 0, NULL},
        {"reason", K_STR, F_REQ, FOFF(u.cancel.reason), 0, 0, 0, NULL},
};

static const struct field_spec hello_fields[] = {
        {"protocol", K_INT, F_REQ, FOFF(u.hello.protocol), 0, INT_MIN, INT_MAX, NULL},
        {"module", K_STR, F_REQ | F_NONEMPTY, FOFF(u.hello.module), 0, 0, 0, NULL},
        {"version", K_STR, F_REQ | F_NONEMPTY, FOFF(u.hello.version), 0, 0, 0, NULL},
        {"persistent", K_BOOL, 0, FOFF(u.hello.persistent), 0, 0, 0, NULL},
        {"concurrency", K_INT, 0, FOFF(u.hello.concurrency), 0, 1, INT_MAX, NULL},
};

static const struct field_spec progress_fields[] = {
        TASK_ID,
        {"fraction", K_NUM, F_REQ, FOFF(u.progress.fraction), 0, 0, 0, NULL},
        {"message", K_STR, 0, FOFF(u.progress.message), 0, 0, 0, NULL},
        {"current", K_I64, F_HAS, FOFF(u.progress.current), FOFF(u.progress.has_current), INT64_MIN,
         INT64_MAX, NULL},
        {"total", K_I64, F_HAS, FOFF(u.progress.total), FOFF(u.progress.has_total), INT64_MIN,
         INT64_MAX, NULL},
};

static const struct field_spec log_fields[] = {
        TASK_ID,
        {"level", K_STR, F_REQ, FOFF(u.log.level), 0, 0, 0, level_names},
        {"message", K_STR, F_REQ, FOFF(u.log.message), 0, 0, 0, NULL},
        {"fields", K_MAP, 0, FOFF(u.log.fields), 0, 0, 0, NULL},
};

static const struct field_spec artifact_fields[] = {
        TASK_ID,
        {"name", K_STR, F_REQ | F_NONEMPTY, FOFF(u.artifact.name), 0, 0, 0, NULL},
        /* Checked by artifact_path_ok(), which says more than "empty". */
        {"path", K_STR, F_REQ, FOFF(u.artifact.path), 0, 0, 0, NULL},
        {"type", K_STR, F_REQ | F_NONEMPTY, FOFF(u.artifact.type), 0, 0, 0, NULL},
        {"format", K_STR, 0, FOFF(u.artifact.format), 0, 0, 0, NULL},
        {"role", K_STR, F_REQ, FOFF(u.artifact.role), 0, 0, 0, role_names},
        {"retained", K_BOOL, 0, FOFF(u.artifact.retained), 0, 0, 0, NULL},
        {"reason", K_STR, 0, FOFF(u.artifact.reason), 0, 0, 0, NULL},
        {"meta", K_MAP, 0, FOFF(u.artifact.meta), 0, 0, 0, NULL},
};

static const struct field_spec warning_fields[] = {
        TASK_ID,
        {"message", K_STR, F_REQ, FOFF(u.warning.message), 0, 0, 0, NULL},
        {"detail", K_MAP, 0, FOFF(u.warning.detail), 0, 0, 0, NULL},
};

static const struct field_spec result_fields[] = {
        TASK_ID,
        {"output", K_MAP, F_REQ, FOFF(u.result.output), 0, 0, 0, NULL},
        {"resources", K_MAP, 0, FOFF(u.result.resources), 0, 0, 0, NULL},
};

/* "retryable" must stay at index 4: error_finish() reads its presence. */
static const struct field_spec error_fields[] = {
        TASK_ID,
        {"message", K_STR, F_REQ, FOFF(u.error.message), 0, 0, 0, NULL},
        {"code", K_STR, 0, FOFF(u.error.code), 0, 0, 0, NULL},
        {"category", K_CATEGORY, 0, FOFF(u.error.category), 0, 0, 0, category_names},
        {"retryable", K_BOOL, 0, FOFF(u.error.retryable), 0, 0, 0, NULL},
        {"detail", K_MAP, 0, FOFF(u.error.detail), 0, 0, 0, NULL},
};
#define ERROR_RETRYABLE_IDX 4

#define SPEC(a) a, sizeof(a) / sizeof(a[0])
static const struct {
	const struct field_spec *fields;
	size_t n;
} type_specs[FRAME_NTYPES] = {
        [FRAME_TASK] = {SPEC(task_fields)},
        [FRAME_CANCEL] = {SPEC(cancel_fields)},
        [FRAME_SHUTDOWN] = {NULL, 0},
        [FRAME_HELLO] = {SPEC(hello_fields)},
        [FRAME_PROGRESS] = {SPEC(progress_fields)},
        [FRAME_LOG] = {SPEC(log_fields)},
        [FRAME_ARTIFACT] = {SPEC(artifact_fields)},
        [FRAME_WARNING] = {SPEC(warning_fields)},
        [FRAME_RESULT] = {SPEC(result_fields)},
        [FRAME_ERROR] = {SPEC(error_fields)},
};

#define MAX_FIELDS 10

static const char *kind_expected(enum field_kind k)
{
	switch (k) {
	case K_STR:
	case K_CATEGORY: return "a string";
	case K_INT:
	case K_I64: return "an integer";
	case K_BOOL: return "a boolean";
	case K_NUM: return "a number";
	case K_MAP: return "a map";
	case K_INPUTS: return "an array of maps";
	}
	return "?";
}

static bool decode_inputs(const msgpack_object *v, const char *prefix, struct frame *f,
                          struct frame_error *err);

static bool extract_fields(const msgpack_object *map, const struct field_spec *spec, size_t nspec,
                           char *base, const char *prefix, struct frame *f,
                           const msgpack_object **vals, struct frame_error *err);

/* One field's value into base + s->off. */
static bool extract_one(const msgpack_object *v, const struct field_spec *s, char *base,
                        const char *prefix, struct frame *f, struct frame_error *err)
{
	const char *why;
	bool type_ok;
	switch (s->kind) {
	case K_STR:
	case K_CATEGORY: type_ok = v->type == MSGPACK_OBJECT_STR; break;
	case K_INT:
	case K_I64:
		type_ok = v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
		          v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER;
		break;
	case K_BOOL: type_ok = v->type == MSGPACK_OBJECT_BOOLEAN; break;
	case K_NUM:
		type_ok = v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
		          v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ||
		          v->type == MSGPACK_OBJECT_FLOAT32 || v->type == MSGPACK_OBJECT_FLOAT64;
		break;
	case K_MAP: type_ok = v->type == MSGPACK_OBJECT_MAP; break;
	case K_INPUTS: type_ok = v->type == MSGPACK_OBJECT_ARRAY; break;
	default: type_ok = false;
	}
	if (!type_ok)
		return fail(err, "%s.%s: expected %s, got %s", prefix, s->key,
		            kind_expected(s->kind), obj_kind(v));

	switch (s->kind) {
	case K_STR:
	case K_CATEGORY: {
		if (!text_ok(v, &why))
			return fail(err, "%s.%s: %s", prefix, s->key, why);
		if ((s->flags & F_NONEMPTY) && v->via.str.size == 0)
			return fail(err, "%s.%s: must not be empty", prefix, s->key);
		int idx = -1;
		if (s->allowed) {
			for (int i = 0; s->allowed[i]; i++)
				if (key_is(v, s->allowed[i]))
					idx = i;
			if (idx < 0) {
				char got[40], list[96];
				size_t o = 0;
				show(got, sizeof got, v->via.str.ptr, v->via.str.size);
				list[0] = '\0';
				for (int i = 0; s->allowed[i] && o < sizeof list; i++)
					o += (size_t)snprintf(list + o, sizeof list - o, "%s%s",
					                      i ? ", " : "", s->allowed[i]);
				return fail(err, "%s.%s: expected one of %s, got '%s'", prefix,
				            s->key, list, got);
			}
		}
		if (s->kind == K_CATEGORY)
			*(enum frame_category *)(base + s->off) = (enum frame_category)idx;
		else
			*(char **)(base + s->off) = xstrndup(v->via.str.ptr, v->via.str.size);
		return true;
	}
	case K_INT:
	case K_I64: {
		bool neg = v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER;
		if ((!neg && v->via.u64 > (uint64_t)s->max) || (neg && v->via.i64 < s->min) ||
		    (!neg && (int64_t)v->via.u64 < s->min)) {
			if (neg)
				return fail(err, "%s.%s: %lld is out of range %lld..%lld", prefix,
				            s->key, (long long)v->via.i64, (long long)s->min,
				            (long long)s->max);
			return fail(err, "%s.%s: %llu is out of range %lld..%lld", prefix, s->key,
			            (unsigned long long)v->via.u64, (long long)s->min,
			            (long long)s->max);
		}
		int64_t x = neg ? v->via.i64 : (int64_t)v->via.u64;
		if (s->kind == K_INT)
			*(int *)(base + s->off) = (int)x;
		else
			*(int64_t *)(base + s->off) = x;
		if (s->flags & F_HAS)
			*(bool *)(base + s->has_off) = true;
		return true;
	}
	case K_BOOL: *(bool *)(base + s->off) = v->via.boolean; return true;
	case K_NUM: {
		double d = v->type == MSGPACK_OBJECT_POSITIVE_INTEGER   ? (double)v->via.u64
		           : v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER ? (double)v->via.i64
		                                                        : v->via.f64;
		if (isnan(d))
			return fail(err, "%s.%s: expected a number, got NaN", prefix, s->key);
		*(double *)(base + s->off) = d;
		return true;
	}
	case K_MAP: {
		struct jpath jp;
		char pre[64];
		snprintf(pre, sizeof pre, "%s.%s", prefix, s->key);
		jp.prefix = pre;
		jp.n = 0;
		return to_json(v, &jp, (json_t **)(base + s->off), err);
	}
	case K_INPUTS: {
		char pre[64];
		snprintf(pre, sizeof pre, "%s.%s", prefix, s->key);
		return decode_inputs(v, pre, f, err);
	}
	}
	return false;
}

static bool decode_inputs(const msgpack_object *v, const char *prefix, struct frame *f,
                          struct frame_error *err)
{
	uint32_t n = v->via.array.size;
	if (n == 0)
		return true;
	/* ninputs first, so frame_clear() frees a half-filled array. */
	f->u.task.inputs = xcalloc(n, sizeof *f->u.task.inputs);
	f->u.task.ninputs = n;
	for (uint32_t i = 0; i < n; i++) {
		const msgpack_object *e = &v->via.array.ptr[i];
		char pre[80];
		snprintf(pre, sizeof pre, "%s[%u]", prefix, i);
		if (e->type != MSGPACK_OBJECT_MAP)
			return fail(err, "%s: expected a map, got %s", pre, obj_kind(e));
		const msgpack_object *vals[MAX_FIELDS];
		if (!extract_fields(e, SPEC(input_fields), (char *)&f->u.task.inputs[i], pre, f,
		                    vals, err))
			return false;
	}
	return true;
}

/* Matches map's keys against spec (unknown keys ignored, a known one twice
 * is an error), then extracts each field. vals[] gets each field's value or
 * NULL. */
static bool extract_fields(const msgpack_object *map, const struct field_spec *spec, size_t nspec,
                           char *base, const char *prefix, struct frame *f,
                           const msgpack_object **vals, struct frame_error *err)
{
	const char *why;
	for (size_t j = 0; j < nspec; j++)
		vals[j] = NULL;
	for (uint32_t i = 0; i < map->via.map.size; i++) {
		const msgpack_object *k = &map->via.map.ptr[i].key;
		if (k->type != MSGPACK_OBJECT_STR)
			return fail(err, "%s: map key is not a string (got %s)", prefix,
			            obj_kind(k));
		if (!text_ok(k, &why))
			return fail(err, "%s: map key %s", prefix, why);
		for (size_t j = 0; j < nspec; j++) {
			if (!key_is(k, spec[j].key))
				continue;
			if (vals[j] != NULL)
				return fail(err, "%s.%s: duplicate key", prefix, spec[j].key);
			vals[j] = &map->via.map.ptr[i].val;
		}
	}
	for (size_t j = 0; j < nspec; j++) {
		if (vals[j] == NULL) {
			if (spec[j].flags & F_REQ)
				return fail(err, "%s.%s: required key missing", prefix,
				            spec[j].key);
			continue;
		}
		if (!extract_one(vals[j], &spec[j], base, prefix, f, err))
			return false;
	}
	return true;
}

/* Relative, non-empty, no ".." component. Where the file really lands
 * (symlinks) is the uploader's to check, with the workdir as its root. */
static bool artifact_path_ok(const char *p)
{
	if (p[0] == '\0' || p[0] == '/')
		return false;
	for (const char *s = p; *s;) {
		size_t n = strcspn(s, "/");
		if (n == 2 && s[0] == '.' && s[1] == '.')
			return false;
		s += n;
		while (*s == '/')
			s++;
	}
	return true;
}

static bool decode_map(const msgpack_object *top, bool from_module, struct frame *f,
                       struct frame_error *err)
{
	const char *why;
	const msgpack_object *t = NULL;
	for (uint32_t i = 0; i < top->via.map.size; i++) {
		const msgpack_object *k = &top->via.map.ptr[i].key;
		if (k->type != MSGPACK_OBJECT_STR)
			return fail(err, "frame: map key is not a string (got %s)", obj_kind(k));
		if (key_is(k, "t")) {
			if (t != NULL)
				return fail(err, "t: duplicate key");
			t = &top->via.map.ptr[i].val;
		}
	}
	if (t == NULL)
		return fail(err, "frame has no 't' key");
	if (t->type != MSGPACK_OBJECT_STR)
		return fail(err, "t: expected a string, got %s", obj_kind(t));
	if (!text_ok(t, &why))
		return fail(err, "t: %s", why);
	int type = -1;
	for (int i = 0; i < FRAME_NTYPES; i++)
		if (key_is(t, type_names[i]))
			type = i;
	if (type < 0) {
		char got[40];
		show(got, sizeof got, t->via.str.ptr, t->via.str.size);
		return fail(err, "unknown frame type '%s'", got);
	}
	if (from_module_type((enum frame_type)type) != from_module)
		return fail(err, "frame type '%s' is not allowed from %s", type_names[type],
		            from_module ? "a module" : "the daemon");
	f->type = (enum frame_type)type;
	if (type == FRAME_HELLO)
		f->u.hello.concurrency = 1;

	const msgpack_object *vals[MAX_FIELDS];
	if (!extract_fields(top, type_specs[type].fields, type_specs[type].n, (char *)f,
	                    type_names[type], f, vals, err))
		return false;

	switch (f->type) {
	case FRAME_HELLO:
		if (f->u.hello.protocol != FRAME_PROTOCOL)
			return fail(err,
			            "hello.protocol: version %d is not supported (expected %d)",
			            f->u.hello.protocol, FRAME_PROTOCOL);
		break;
	case FRAME_PROGRESS:
		/* NaN was refused; infinities clamp like any value out of range. */
		if (f->u.progress.fraction < 0)
			f->u.progress.fraction = 0;
		else if (f->u.progress.fraction > 1)
			f->u.progress.fraction = 1;
		break;
	case FRAME_ARTIFACT:
		if (!artifact_path_ok(f->u.artifact.path))
			return fail(err,
			            "artifact.path: must be relative to the workdir without '..'");
		break;
	case FRAME_ERROR:
		if (vals[ERROR_RETRYABLE_IDX] == NULL)
			f->u.error.retryable = f->u.error.category == FRAME_CAT_MODULE ||
			                       f->u.error.category == FRAME_CAT_INFRA;
		/* The task's input is bad: another run can't help. */
		if (f->u.error.category == FRAME_CAT_INPUT)
			f->u.error.retryable = false;
		break;
	default: break;
	}
	return true;
}

static void limits_resolve(const struct frame_limits *lim, struct limits *l)
{
	l->max_bytes = lim && lim->max_bytes ? lim->max_bytes : FRAME_DEFAULT_MAX_BYTES;
	l->max_depth = lim && lim->max_depth > 0 ? lim->max_depth : FRAME_DEFAULT_MAX_DEPTH;
	if (l->max_depth > FRAME_HARD_MAX_DEPTH)
		l->max_depth = FRAME_HARD_MAX_DEPTH;
	l->max_items = lim && lim->max_items ? lim->max_items : FRAME_DEFAULT_MAX_ITEMS;
	l->max_values = FRAME_MAX_VALUES;
}

enum frame_status frame_decode(const void *buf, size_t len, const struct frame_limits *lim,
                               bool from_module, struct frame *f, size_t *used,
                               struct frame_error *err)
{
	struct frame_error dummy;
	if (err == NULL)
		err = &dummy;
	err->msg[0] = '\0';
	memset(f, 0, sizeof *f);
	*used = 0;

	struct limits l;
	limits_resolve(lim, &l);
	if (len < FRAME_HEADER_LEN)
		return FRAME_NEED_MORE;
	const uint8_t *p = buf;
	uint32_t n = be32(p);
	if (n == 0) {
		fail(err, "empty frame (length 0)");
		return FRAME_BAD;
	}
	/* Refused before it arrives: nobody waits for 4 GiB. */
	if (n > l.max_bytes) {
		fail(err, "frame of %lu bytes exceeds the %zu-byte limit", (unsigned long)n,
		     l.max_bytes);
		return FRAME_BAD;
	}
	if (len - FRAME_HEADER_LEN < n)
		return FRAME_NEED_MORE;
	const uint8_t *payload = p + FRAME_HEADER_LEN;
	if (!scan(payload, n, &l, err))
		return FRAME_BAD;

	msgpack_unpacked up;
	msgpack_unpacked_init(&up);
	size_t off = 0;
	msgpack_unpack_return r = msgpack_unpack_next(&up, (const char *)payload, n, &off);
	bool ok;
	if (r != MSGPACK_UNPACK_SUCCESS || off != n || up.data.type != MSGPACK_OBJECT_MAP)
		ok = fail(err, "frame is not valid MessagePack (unpacker said %d)", (int)r);
	else
		ok = decode_map(&up.data, from_module, f, err);
	msgpack_unpacked_destroy(&up);
	if (!ok) {
		frame_clear(f);
		return FRAME_BAD;
	}
	*used = FRAME_HEADER_LEN + (size_t)n;
	return FRAME_OK;
}

void frame_clear(struct frame *f)
{
	if (f == NULL)
		return;
	free(f->task_id);
	switch (f->type) {
	case FRAME_TASK:
		free(f->u.task.job_id);
		free(f->u.task.stage);
		free(f->u.task.workdir);
		free(f->u.task.request_id);
		json_decref(f->u.task.params);
		for (size_t i = 0; i < f->u.task.ninputs; i++) {
			free(f->u.task.inputs[i].name);
			free(f->u.task.inputs[i].type);
			free(f->u.task.inputs[i].path);
			free(f->u.task.inputs[i].format);
		}
		free(f->u.task.inputs);
		break;
	case FRAME_CANCEL: free(f->u.cancel.reason); break;
	case FRAME_SHUTDOWN: break;
	case FRAME_HELLO:
		free(f->u.hello.module);
		free(f->u.hello.version);
		break;
	case FRAME_PROGRESS: free(f->u.progress.message); break;
	case FRAME_LOG:
		free(f->u.log.level);
		free(f->u.log.message);
		json_decref(f->u.log.fields);
		break;
	case FRAME_ARTIFACT:
		free(f->u.artifact.name);
		free(f->u.artifact.path);
		free(f->u.artifact.type);
		free(f->u.artifact.format);
		free(f->u.artifact.role);
		free(f->u.artifact.reason);
		json_decref(f->u.artifact.meta);
		break;
	case FRAME_WARNING:
		free(f->u.warning.message);
		json_decref(f->u.warning.detail);
		break;
	case FRAME_RESULT:
		json_decref(f->u.result.output);
		json_decref(f->u.result.resources);
		break;
	case FRAME_ERROR:
		free(f->u.error.message);
		free(f->u.error.code);
		json_decref(f->u.error.detail);
		break;
	case FRAME_NTYPES: break;
	}
	memset(f, 0, sizeof *f);
}

/* ---- encoding ---- */

/* The packer writes into a struct buf, which aborts on OOM like the rest of
 * the daemon instead of failing quietly as msgpack_sbuffer would. */
static int buf_write_cb(void *data, const char *p, size_t n)
{
	buf_add(data, p, n);
	return 0;
}

struct enc {
	struct buf body; /* the map's entries */
	msgpack_packer pk;
	uint32_t n; /* entries so far */
};

static void pack_str(msgpack_packer *pk, const char *s, size_t n)
{
	msgpack_pack_str(pk, n);
	msgpack_pack_str_body(pk, s, n);
}

static void pack_json(msgpack_packer *pk, const json_t *v, int depth)
{
	if (v == NULL || depth > FRAME_ENCODE_MAX_DEPTH) {
		msgpack_pack_nil(pk);
		return;
	}
	switch (json_typeof(v)) {
	case JSON_OBJECT: {
		const char *k;
		size_t kl;
		json_t *e;
		msgpack_pack_map(pk, json_object_size(v));
		json_object_keylen_foreach((json_t *)v, k, kl, e)
		{
			pack_str(pk, k, kl);
			pack_json(pk, e, depth + 1);
		}
		break;
	}
	case JSON_ARRAY: {
		size_t n = json_array_size(v);
		msgpack_pack_array(pk, n);
		for (size_t i = 0; i < n; i++)
			pack_json(pk, json_array_get(v, i), depth + 1);
		break;
	}
	case JSON_STRING: pack_str(pk, json_string_value(v), json_string_length(v)); break;
	case JSON_INTEGER: msgpack_pack_int64(pk, json_integer_value(v)); break;
	case JSON_REAL: msgpack_pack_double(pk, json_real_value(v)); break;
	case JSON_TRUE: msgpack_pack_true(pk); break;
	case JSON_FALSE: msgpack_pack_false(pk); break;
	case JSON_NULL: msgpack_pack_nil(pk); break;
	}
}

static void enc_key(struct enc *e, const char *k)
{
	pack_str(&e->pk, k, strlen(k));
	e->n++;
}

static void enc_str(struct enc *e, const char *k, const char *v)
{
	if (v == NULL)
		return;
	enc_key(e, k);
	pack_str(&e->pk, v, strlen(v));
}

static void enc_int(struct enc *e, const char *k, int64_t v)
{
	enc_key(e, k);
	msgpack_pack_int64(&e->pk, v);
}

static void enc_bool(struct enc *e, const char *k, bool v)
{
	enc_key(e, k);
	if (v)
		msgpack_pack_true(&e->pk);
	else
		msgpack_pack_false(&e->pk);
}

/* A NULL optional map is left out; a NULL required one is written as {}. */
static void enc_json(struct enc *e, const char *k, const json_t *v, bool required)
{
	if (v == NULL && !required)
		return;
	enc_key(e, k);
	if (v == NULL)
		msgpack_pack_map(&e->pk, 0);
	else
		pack_json(&e->pk, v, 1);
}

static void enc_begin(struct enc *e, enum frame_type t)
{
	struct buf init = BUF_INIT;
	e->body = init;
	msgpack_packer_init(&e->pk, &e->body, buf_write_cb);
	e->n = 0;
	enc_str(e, "t", frame_type_name(t));
}

static void enc_end(struct enc *e, struct buf *out)
{
	struct buf head = BUF_INIT;
	msgpack_packer pk;
	msgpack_packer_init(&pk, &head, buf_write_cb);
	msgpack_pack_map(&pk, e->n);
	size_t n = head.len + e->body.len;
	/* Unreachable in practice (frames are limited to far less); a wrapped
	 * length would desynchronise the stream, which is worse than a crash. */
	if (n > UINT32_MAX)
		abort();
	uint8_t len[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
	buf_add(out, len, sizeof len);
	buf_add(out, head.data, head.len);
	buf_add(out, e->body.data, e->body.len);
	buf_free(&head);
	buf_free(&e->body);
}

void frame_encode_task(struct buf *out, const char *task_id, const char *job_id, const char *stage,
                       int attempt, const json_t *params, const struct frame_input *inputs,
                       size_t ninputs, const char *workdir, int64_t deadline_ms,
                       const char *request_id)
{
	struct enc e;
	enc_begin(&e, FRAME_TASK);
	enc_str(&e, "task_id", task_id);
	enc_str(&e, "job_id", job_id);
	enc_str(&e, "stage", stage);
	enc_int(&e, "attempt", attempt);
	enc_json(&e, "params", params, true);
	enc_key(&e, "inputs");
	msgpack_pack_array(&e.pk, ninputs);
	for (size_t i = 0; i < ninputs; i++) {
		const struct frame_input *in = &inputs[i];
		msgpack_pack_map(&e.pk, in->format ? 5 : 4);
		pack_str(&e.pk, "name", 4);
		pack_str(&e.pk, in->name ? in->name : "", in->name ? strlen(in->name) : 0);
		pack_str(&e.pk, "type", 4);
		pack_str(&e.pk, in->type ? in->type : "", in->type ? strlen(in->type) : 0);
		pack_str(&e.pk, "path", 4);
		pack_str(&e.pk, in->path ? in->path : "", in->path ? strlen(in->path) : 0);
		pack_str(&e.pk, "size_bytes", 10);
		msgpack_pack_int64(&e.pk, in->size_bytes);
		if (in->format) {
			pack_str(&e.pk, "format", 6);
			pack_str(&e.pk, in->format, strlen(in->format));
		}
	}
	enc_str(&e, "workdir", workdir);
	enc_int(&e, "deadline", deadline_ms);
	enc_str(&e, "request_id", request_id);
	enc_end(&e, out);
}

void frame_encode_cancel(struct buf *out, const char *task_id, const char *reason)
{
	struct enc e;
	enc_begin(&e, FRAME_CANCEL);
	enc_str(&e, "task_id", task_id);
	enc_str(&e, "reason", reason);
	enc_end(&e, out);
}

void frame_encode_shutdown(struct buf *out)
{
	struct enc e;
	enc_begin(&e, FRAME_SHUTDOWN);
	enc_end(&e, out);
}

void frame_encode(struct buf *out, const struct frame *f)
{
	struct enc e;
	switch (f->type) {
	case FRAME_TASK:
		frame_encode_task(out, f->task_id, f->u.task.job_id, f->u.task.stage,
		                  f->u.task.attempt, f->u.task.params, f->u.task.inputs,
		                  f->u.task.ninputs, f->u.task.workdir, f->u.task.deadline_ms,
		                  f->u.task.request_id);
		return;
	case FRAME_CANCEL: frame_encode_cancel(out, f->task_id, f->u.cancel.reason); return;
	case FRAME_SHUTDOWN: frame_encode_shutdown(out); return;
	case FRAME_NTYPES: return;
	default: break;
	}

	enc_begin(&e, f->type);
	if (f->type != FRAME_HELLO)
		enc_str(&e, "task_id", f->task_id);
	switch (f->type) {
	case FRAME_HELLO:
		enc_int(&e, "protocol", f->u.hello.protocol);
		enc_str(&e, "module", f->u.hello.module);
		enc_str(&e, "version", f->u.hello.version);
		enc_bool(&e, "persistent", f->u.hello.persistent);
		enc_int(&e, "concurrency", f->u.hello.concurrency);
		break;
	case FRAME_PROGRESS:
		enc_key(&e, "fraction");
		msgpack_pack_double(&e.pk, f->u.progress.fraction);
		enc_str(&e, "message", f->u.progress.message);
		if (f->u.progress.has_current)
			enc_int(&e, "current", f->u.progress.current);
		if (f->u.progress.has_total)
			enc_int(&e, "total", f->u.progress.total);
		break;
	case FRAME_LOG:
		enc_str(&e, "level", f->u.log.level);
		enc_str(&e, "message", f->u.log.message);
		enc_json(&e, "fields", f->u.log.fields, false);
		break;
	case FRAME_ARTIFACT:
		enc_str(&e, "name", f->u.artifact.name);
		enc_str(&e, "path", f->u.artifact.path);
		enc_str(&e, "type", f->u.artifact.type);
		enc_str(&e, "format", f->u.artifact.format);
		enc_str(&e, "role", f->u.artifact.role);
		enc_bool(&e, "retained", f->u.artifact.retained);
		enc_str(&e, "reason", f->u.artifact.reason);
		enc_json(&e, "meta", f->u.artifact.meta, false);
		break;
	case FRAME_WARNING:
		enc_str(&e, "message", f->u.warning.message);
		enc_json(&e, "detail", f->u.warning.detail, false);
		break;
	case FRAME_RESULT:
		enc_json(&e, "output", f->u.result.output, true);
		enc_json(&e, "resources", f->u.result.resources, false);
		break;
	case FRAME_ERROR:
		enc_str(&e, "message", f->u.error.message);
		enc_str(&e, "code", f->u.error.code);
		enc_str(&e, "category", frame_category_name(f->u.error.category));
		enc_bool(&e, "retryable", f->u.error.retryable);
		enc_json(&e, "detail", f->u.error.detail, false);
		break;
	default: break;
	}
	enc_end(&e, out);
}
