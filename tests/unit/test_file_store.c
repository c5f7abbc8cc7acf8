/* Unit tests for store/file_store.c: the key rules (a traversal table), and
 * the file backend driven for real on an event_base over a temporary root —
 * round trips, 20 MiB streaming copies that must take many loop passes,
 * head/list/delete, NOT_FOUND, cancel and free with copies in flight (no
 * callback, nothing half-written left), presigned links and the metrics. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include "core/config.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/xmalloc.h"
#include "store/store.h"

#define BIG_BYTES (20u * 1024 * 1024)

struct fx {
	char dir[64]; /* the test's temporary directory */
	char *root; /* dir/objects: the store's root */
	struct event_base *base;
	struct store *store;
	struct event *ticker;
	unsigned ticks; /* loop passes seen by the ticker */
	unsigned cancel_at; /* the ticker cancels `victim` at this tick (0 = never) */
	struct store_op *victim;
	struct res *victim_res; /* no cancel once it has called back (a stale handle) */
};

/* What a callback saw. */
struct res {
	int calls;
	bool failed;
	struct store_error err;
	struct buf_copy {
		char *data;
		size_t len;
	} data;
	struct store_object_info info;
	char *info_key, *info_type;
	char **keys;
	uint64_t *sizes;
	size_t n;
	unsigned tick_at_done;
	struct fx *fx;
	struct store_op *self; /* for cancel-inside-callback */
	bool free_store; /* store_free() from inside the callback */
};

static void res_clear(struct res *r)
{
	free(r->data.data);
	free(r->info_key);
	free(r->info_type);
	for (size_t i = 0; i < r->n; i++)
		free(r->keys[i]);
	free(r->keys);
	free(r->sizes);
	struct fx *fx = r->fx;
	memset(r, 0, sizeof(*r));
	r->fx = fx;
}

static void res_note(struct res *r, const struct store_error *err)
{
	r->calls++;
	r->failed = err != NULL;
	if (err)
		r->err = *err;
	if (r->fx)
		r->tick_at_done = r->fx->ticks;
	if (r->self)
		store_op_cancel(r->self); /* a no-op from inside its own callback */
	if (r->free_store) {
		store_free(r->fx->store);
		r->fx->store = NULL;
	}
}

static void done_cb(const struct store_error *err, void *arg)
{
	res_note(arg, err);
}

static void head_cb(const struct store_error *err, const struct store_object_info *info, void *arg)
{
	struct res *r = arg;
	if (info) {
		r->info = *info;
		r->info_key = xstrdup(info->key);
		r->info_type = xstrdup(info->content_type);
	}
	res_note(r, err);
}

static void get_buf_cb(const struct store_error *err, const struct store_object_info *info,
                       const char *data, size_t len, void *arg)
{
	struct res *r = arg;
	if (data) {
		assert_int_equal(data[len], '\0');
		r->data.data = xmalloc(len + 1);
		memcpy(r->data.data, data, len + 1);
		r->data.len = len;
	}
	if (info) {
		r->info = *info;
		r->info_type = xstrdup(info->content_type);
	}
	res_note(r, err);
}

static void list_cb(const struct store_error *err, const struct store_list_entry *entries, size_t n,
                    void *arg)
{
	struct res *r = arg;
	r->keys = xcalloc(n + 1, sizeof(char *));
	r->sizes = xcalloc(n + 1, sizeof(uint64_t));
	for (size_t i = 0; i < n; i++) {
		r->keys[i] = xstrdup(entries[i].key);
		r->sizes[i] = entries[i].size;
		assert_true(entries[i].mtime_ms > 0);
	}
	r->n = n;
	res_note(r, err);
}

static void ticker_cb(evutil_socket_t fd, short what, void *arg)
{
	struct fx *fx = arg;
	static const struct timeval zero = {0, 0};
	fx->ticks++;
	if (fx->cancel_at && fx->ticks == fx->cancel_at && fx->victim &&
	    fx->victim_res->calls == 0) {
		store_op_cancel(fx->victim);
		fx->victim = NULL;
	}
	evtimer_add(fx->ticker, &zero);
}

/* Runs the loop until r has been called (or nothing is pending). */
static void run_until(struct fx *fx, struct res *r)
{
	for (int i = 0; i < 1000000 && (!r || r->calls == 0); i++)
		if (event_base_loop(fx->base, EVLOOP_ONCE) != 0)
			break;
}

/* Runs n loop passes. */
static void run_passes(struct fx *fx, unsigned n)
{
	unsigned until = fx->ticks + n;
	while (fx->ticks < until)
		if (event_base_loop(fx->base, EVLOOP_ONCE) != 0)
			break;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static int setup(void **state)
{
	struct fx *fx = xcalloc(1, sizeof(*fx));
	strcpy(fx->dir, "/tmp/sl-store-XXXXXX");
	assert_non_null(mkdtemp(fx->dir));
	fx->root = xasprintf("%s/objects", fx->dir);
	fx->base = event_base_new();
	assert_non_null(fx->base);
	char *err = NULL;
	fx->store = store_new_file(fx->base, fx->root, "s3cr3t-for-tests", &err);
	assert_null(err);
	assert_non_null(fx->store);
	fx->ticker = evtimer_new(fx->base, ticker_cb, fx);
	static const struct timeval zero = {0, 0};
	evtimer_add(fx->ticker, &zero);
	*state = fx;
	return 0;
}

static int teardown(void **state)
{
	struct fx *fx = *state;
	store_free(fx->store);
	event_free(fx->ticker);
	event_base_free(fx->base);
	nftw(fx->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(fx->root);
	free(fx);
	return 0;
}

static char *obj_path(struct fx *fx, const char *key)
{
	return xasprintf("%s/%s", fx->root, key);
}

static bool exists(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0;
}

/* Entries of a directory other than . and ..; -1 when it is missing. */
static int dir_entries(const char *path)
{
	DIR *d = opendir(path);
	if (!d)
		return -1;
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
			n++;
	closedir(d);
	return n;
}

static void write_random_file(const char *path, size_t n)
{
	char *p = xmalloc(n);
	uint64_t x = 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid();
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (char)(x >> 24);
	}
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(p, 1, n, f), n);
	assert_int_equal(fclose(f), 0);
	free(p);
}

static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	assert_non_null(f);
	struct stat st;
	assert_int_equal(fstat(fileno(f), &st), 0);
	char *p = xmalloc((size_t)st.st_size + 1);
	assert_int_equal(fread(p, 1, (size_t)st.st_size, f), (size_t)st.st_size);
	fclose(f);
	*len = (size_t)st.st_size;
	return p;
}

static void put_buf_sync(struct fx *fx, const char *key, const char *text)
{
	struct res r = {.fx = fx};
	store_put_buf(fx->store, key, text, strlen(text), "text/plain", done_cb, &r);
	run_until(fx, &r);
	assert_int_equal(r.calls, 1);
	if (r.failed)
		fail_msg("put %s: %s", key, r.err.message);
}

/* Key rules. ------------------------------------------------------------------ */

static void test_key_valid(void **state)
{
	static const char *const good[] = {
	        "a",
	        "proj/0190a6b2-0000-7000-8000-000000000000/input.json",
	        "proj/job/01_tts/attempts/1/out.wav",
	        "proj/job/logs/pipeline.log",
	        ".hidden",
	        "a/.b",
	        "a/...",
	        "a/..b",
	        "a b/c d",
	        "ünïcödé/ファイル/😀",
	        "a/stl-tmp.x",
	        "a?#%&=+ ,;",
	};
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		const char *why = NULL;
		if (!store_key_valid(good[i], strlen(good[i]), &why))
			fail_msg("'%s' refused: %s", good[i], why);
	}

	static const struct {
		const char *k;
		size_t len; /* 0: strlen */
	} bad[] = {
	        {"", 0},
	        {"/abs", 0},
	        {"/", 0},
	        {"a/", 0},
	        {"a//b", 0},
	        {"//a", 0},
	        {"..", 0},
	        {".", 0},
	        {"../x", 0},
	        {"a/../b", 0},
	        {"a/..", 0},
	        {"a/./b", 0},
	        {"./a", 0},
	        {"a\\b", 0},
	        {"..\\x", 0},
	        {"a\0b", 3},
	        {"a\0", 2},
	        {"a\nb", 0},
	        {"a\rb", 0},
	        {"a\tb", 0},
	        {"a\x7f", 0},
	        {"\xff", 0},
	        {"a/\xc0\xaf", 0}, /* overlong '/' */
	        {"\xc0\xae\xc0\xae/x", 0}, /* overlong ".." */
	        {"\xe0\x80\xaf", 0}, /* 3-byte overlong '/' */
	        {"\xed\xa0\x80", 0}, /* surrogate */
	        {"\xe2\x82", 0}, /* truncated */
	        {"\xf4\x90\x80\x80", 0}, /* past U+10FFFF */
	        {"\x80", 0}, /* lone continuation */
	        {".stl-tmp.0123", 0},
	        {"a/.stl-tmp.x/b", 0},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		size_t len = bad[i].len ? bad[i].len : strlen(bad[i].k);
		const char *why = NULL;
		if (store_key_valid(bad[i].k, len, &why))
			fail_msg("bad key #%zu accepted", i);
		assert_non_null(why);
	}
	assert_false(store_key_valid(NULL, 0, NULL));

	/* Lengths: 1024 bytes is the limit, a segment 255. */
	char k[STORE_KEY_MAX + 2];
	for (size_t i = 0; i < sizeof(k); i++)
		k[i] = (i % 200 == 199) ? '/' : 'x';
	k[STORE_KEY_MAX - 1] = 'x';
	assert_true(store_key_valid(k, STORE_KEY_MAX, NULL));
	assert_false(store_key_valid(k, STORE_KEY_MAX + 1, NULL));
	memset(k, 'y', sizeof(k));
	assert_true(store_key_valid(k, STORE_SEGMENT_MAX, NULL));
	assert_false(store_key_valid(k, STORE_SEGMENT_MAX + 1, NULL));

	/* Prefixes. */
	assert_true(store_prefix_valid("", 0, NULL));
	assert_true(store_prefix_valid("a", 1, NULL));
	assert_true(store_prefix_valid("a/", 2, NULL));
	assert_true(store_prefix_valid("p/job/01_", 9, NULL));
	assert_false(store_prefix_valid("/", 1, NULL));
	assert_false(store_prefix_valid("a//", 3, NULL));
	assert_false(store_prefix_valid("../", 3, NULL));
	assert_false(store_prefix_valid("a/../", 5, NULL));
	assert_false(store_prefix_valid(NULL, 0, NULL));
}

/* Operations. --------------------------------------------------------------------- */

static void test_buf_round_trip(void **state)
{
	struct fx *fx = *state;
	struct res r = {.fx = fx};
	const char *json = "{\"stage\":\"tts\",\"status\":\"success\"}";
	store_put_buf(fx->store, "p/j1/01_tts/manifest.json", json, strlen(json),
	              "application/json", done_cb, &r);
	assert_int_equal(r.calls, 0); /* never from inside the call */
	run_until(fx, &r);
	assert_int_equal(r.calls, 1);
	assert_false(r.failed);

	char *path = obj_path(fx, "p/j1/01_tts/manifest.json");
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, strlen(json));
	free(path);
	assert_int_equal(dir_entries(fx->root), 1); /* "p": no temporary file left */

	res_clear(&r);
	store_get_buf(fx->store, "p/j1/01_tts/manifest.json", 4096, get_buf_cb, &r);
	assert_int_equal(r.calls, 0);
	run_until(fx, &r);
	assert_false(r.failed);
	assert_int_equal(r.data.len, strlen(json));
	assert_string_equal(r.data.data, json);
	assert_string_equal(r.info_type, "application/json");
	assert_int_equal(r.info.size, strlen(json));

	/* Exactly max_bytes is fine, one less is TOO_LARGE. */
	res_clear(&r);
	store_get_buf(fx->store, "p/j1/01_tts/manifest.json", strlen(json), get_buf_cb, &r);
	run_until(fx, &r);
	assert_false(r.failed);
	res_clear(&r);
	store_get_buf(fx->store, "p/j1/01_tts/manifest.json", strlen(json) - 1, get_buf_cb, &r);
	run_until(fx, &r);
	assert_true(r.failed);
	assert_int_equal(r.err.kind, STORE_ERR_TOO_LARGE);
	assert_null(r.data.data);

	/* Overwrite replaces; an empty object is an object. */
	put_buf_sync(fx, "p/j1/01_tts/manifest.json", "{}");
	put_buf_sync(fx, "p/j1/empty.log", "");
	res_clear(&r);
	store_get_buf(fx->store, "p/j1/01_tts/manifest.json", 4096, get_buf_cb, &r);
	run_until(fx, &r);
	assert_string_equal(r.data.data, "{}");
	res_clear(&r);
	store_get_buf(fx->store, "p/j1/empty.log", 0, get_buf_cb, &r);
	run_until(fx, &r);
	assert_false(r.failed);
	assert_int_equal(r.data.len, 0);
	assert_string_equal(r.info_type, "text/plain; charset=utf-8");
	res_clear(&r);
}

static void test_big_file(void **state)
{
	struct fx *fx = *state;
	char *src = xasprintf("%s/big.src", fx->dir);
	char *dst = xasprintf("%s/big.dst", fx->dir);
	write_random_file(src, BIG_BYTES);

	struct res r = {.fx = fx};
	unsigned t0 = fx->ticks;
	store_put_file(fx->store, "p/j1/02_mix/out.wav", src, "audio/wav", done_cb, &r);
	run_until(fx, &r);
	if (r.failed)
		fail_msg("put_file: %s", r.err.message);
	/* 80 chunks of 256 KiB: the loop went round between them (and at least
	 * 20 times whatever the chunk: at most 1 MiB per pass). */
	assert_true(r.tick_at_done - t0 >= BIG_BYTES / STORE_CHUNK_BYTES);
	assert_true(r.tick_at_done - t0 >= 20);

	res_clear(&r);
	store_head(fx->store, "p/j1/02_mix/out.wav", head_cb, &r);
	run_until(fx, &r);
	assert_false(r.failed);
	assert_int_equal(r.info.size, BIG_BYTES);
	assert_string_equal(r.info_key, "p/j1/02_mix/out.wav");
	assert_string_equal(r.info_type, "audio/wav");
	assert_true(r.info.mtime_ms > 1700000000000);

	res_clear(&r);
	t0 = fx->ticks;
	store_get_file(fx->store, "p/j1/02_mix/out.wav", dst, done_cb, &r);
	run_until(fx, &r);
	if (r.failed)
		fail_msg("get_file: %s", r.err.message);
	assert_true(r.tick_at_done - t0 >= BIG_BYTES / STORE_CHUNK_BYTES);
	assert_true(r.tick_at_done - t0 >= 20);

	size_t la, lb;
	char *a = read_file(src, &la);
	char *b = read_file(dst, &lb);
	assert_int_equal(la, BIG_BYTES);
	assert_int_equal(lb, BIG_BYTES);
	assert_memory_equal(a, b, BIG_BYTES);
	free(a);
	free(b);
	char *obj = obj_path(fx, "p/j1/02_mix/out.wav");
	b = read_file(obj, &lb);
	assert_int_equal(lb, BIG_BYTES);
	free(b);
	free(obj);
	/* Only the two files: get_file left no temporary beside dst. */
	assert_int_equal(dir_entries(fx->dir), 3); /* objects, big.src, big.dst */

	/* get_buf of it is refused before reading, put_file of a missing file fails. */
	res_clear(&r);
	store_get_buf(fx->store, "p/j1/02_mix/out.wav", 1024 * 1024, get_buf_cb, &r);
	run_until(fx, &r);
	assert_int_equal(r.err.kind, STORE_ERR_TOO_LARGE);
	res_clear(&r);
	store_put_file(fx->store, "p/x", "/nonexistent/file", NULL, done_cb, &r);
	run_until(fx, &r);
	assert_true(r.failed);
	assert_int_equal(r.err.kind, STORE_ERR_IO);
	res_clear(&r);
	store_put_file(fx->store, "p/x", fx->dir, NULL, done_cb, &r); /* a directory */
	run_until(fx, &r);
	assert_int_equal(r.err.kind, STORE_ERR_IO);
	res_clear(&r);
	store_get_file(fx->store, "p/j1/02_mix/out.wav", "/nonexistent/dir/x", done_cb, &r);
	run_until(fx, &r);
	assert_int_equal(r.err.kind, STORE_ERR_IO);
	res_clear(&r);
	free(src);
	free(dst);
}

static void test_not_found(void **state)
{
	struct fx *fx = *state;
	put_buf_sync(fx, "p/j1/input.json", "{}");
	char *dst = xasprintf("%s/out", fx->dir);
	static const char *const missing[] = {"p/j1/nope.json", "p/j2/input.json", "q/x",
	                                      "p/j1" /* a directory is not an object */,
	                                      "p/j1/input.json/deeper"};
	for (size_t i = 0; i < sizeof(missing) / sizeof(missing[0]); i++) {
		struct res r = {.fx = fx};
		store_head(fx->store, missing[i], head_cb, &r);
		run_until(fx, &r);
		assert_int_equal(r.err.kind, STORE_ERR_NOT_FOUND);
		res_clear(&r);
		store_get_buf(fx->store, missing[i], 100, get_buf_cb, &r);
		run_until(fx, &r);
		assert_int_equal(r.err.kind, STORE_ERR_NOT_FOUND);
		res_clear(&r);
		store_get_file(fx->store, missing[i], dst, done_cb, &r);
		run_until(fx, &r);
		assert_int_equal(r.err.kind, STORE_ERR_NOT_FOUND);
		res_clear(&r);
		store_delete(fx->store, missing[i], done_cb, &r);
		run_until(fx, &r);
		assert_int_equal(r.err.kind, STORE_ERR_NOT_FOUND);
		res_clear(&r);
	}
	assert_false(exists(dst));
	free(dst);
}

static void test_invalid_keys_refused(void **state)
{
	struct fx *fx = *state;
	static const char *const bad[] = {"../escape", "a/../../escape", "/tmp/escape", "a//b",
	                                  "a\\b"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct res r = {.fx = fx};
		store_put_buf(fx->store, bad[i], "x", 1, NULL, done_cb, &r);
		assert_int_equal(r.calls, 0);
		run_until(fx, &r);
		assert_int_equal(r.calls, 1);
		assert_int_equal(r.err.kind, STORE_ERR_INVALID_KEY);
		res_clear(&r);
		store_get_buf(fx->store, bad[i], 10, get_buf_cb, &r);
		run_until(fx, &r);
		assert_int_equal(r.err.kind, STORE_ERR_INVALID_KEY);
		res_clear(&r);
		store_delete(fx->store, bad[i], done_cb, &r);
		run_until(fx, &r);
		assert_int_equal(r.err.kind, STORE_ERR_INVALID_KEY);
		res_clear(&r);
	}
	struct res r = {.fx = fx};
	store_head(fx->store, NULL, head_cb, &r);
	run_until(fx, &r);
	assert_int_equal(r.err.kind, STORE_ERR_INVALID_KEY);
	res_clear(&r);
	store_list(fx->store, "../", list_cb, &r);
	run_until(fx, &r);
	assert_int_equal(r.err.kind, STORE_ERR_INVALID_KEY);
	res_clear(&r);
	/* Nothing was written anywhere: the root and its parent are as they were. */
	assert_int_equal(dir_entries(fx->root), 0);
	assert_int_equal(dir_entries(fx->dir), 1);
}

static void test_symlinks_not_followed(void **state)
{
	struct fx *fx = *state;
	char *outside = xasprintf("%s/outside", fx->dir);
	char *secret = xasprintf("%s/outside/secret", fx->dir);
	assert_int_equal(mkdir(outside, 0700), 0);
	write_random_file(secret, 10);
	char *l1 = obj_path(fx, "dirlink");
	char *l2 = obj_path(fx, "filelink");
	assert_int_equal(symlink(outside, l1), 0);
	assert_int_equal(symlink(secret, l2), 0);

	struct res r = {.fx = fx};
	store_get_buf(fx->store, "dirlink/secret", 100, get_buf_cb, &r);
	run_until(fx, &r);
	assert_int_equal(r.err.kind, STORE_ERR_NOT_FOUND);
	res_clear(&r);
	store_get_buf(fx->store, "filelink", 100, get_buf_cb, &r);
	run_until(fx, &r);
	assert_int_equal(r.err.kind, STORE_ERR_NOT_FOUND);
	res_clear(&r);
	store_put_buf(fx->store, "dirlink/planted", "x", 1, NULL, done_cb, &r);
	run_until(fx, &r);
	assert_int_equal(r.err.kind, STORE_ERR_IO);
	res_clear(&r);
	store_delete(fx->store, "filelink", done_cb, &r);
	run_until(fx, &r);
	assert_int_equal(r.err.kind, STORE_ERR_NOT_FOUND);
	res_clear(&r);
	store_list(fx->store, "", list_cb, &r);
	run_until(fx, &r);
	assert_false(r.failed);
	assert_int_equal(r.n, 0);
	res_clear(&r);
	assert_int_equal(dir_entries(outside), 1); /* only secret */
	assert_true(exists(secret));
	free(outside);
	free(secret);
	free(l1);
	free(l2);
}

static void test_list_head_delete(void **state)
{
	struct fx *fx = *state;
	static const char *const keys[] = {
	        "p/j1/input.json",     "p/j1/01_a/output.json",
	        "p/j1/01_a/stage.log", "p/j1/01_a/attempts/1/stage.log",
	        "p/j10/input.json",    "p/j2/input.json",
	        "q/other.bin",
	};
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		put_buf_sync(fx, keys[i], keys[i]);
	/* A leftover temporary file (a crash mid-put) is never listed. */
	char *tmp = obj_path(fx, "p/j1/" STORE_TMP_PREFIX "deadbeef");
	write_random_file(tmp, 5);

	struct res r = {.fx = fx};
	store_list(fx->store, "p/j1/", list_cb, &r);
	assert_int_equal(r.calls, 0);
	run_until(fx, &r);
	assert_false(r.failed);
	assert_int_equal(r.n, 4);
	assert_string_equal(r.keys[0], "p/j1/01_a/attempts/1/stage.log");
	assert_string_equal(r.keys[1], "p/j1/01_a/output.json");
	assert_string_equal(r.keys[2], "p/j1/01_a/stage.log");
	assert_string_equal(r.keys[3], "p/j1/input.json");
	assert_int_equal(r.sizes[3], strlen("p/j1/input.json"));
	res_clear(&r);

	/* A string prefix, as S3's: "p/j1" also matches p/j10. */
	store_list(fx->store, "p/j1", list_cb, &r);
	run_until(fx, &r);
	assert_int_equal(r.n, 5);
	assert_string_equal(r.keys[4], "p/j10/input.json");
	res_clear(&r);
	store_list(fx->store, "p/j1/01_a/s", list_cb, &r);
	run_until(fx, &r);
	assert_int_equal(r.n, 1);
	assert_string_equal(r.keys[0], "p/j1/01_a/stage.log");
	res_clear(&r);
	store_list(fx->store, "", list_cb, &r);
	run_until(fx, &r);
	assert_int_equal(r.n, 7);
	for (size_t i = 1; i < r.n; i++)
		assert_true(strcmp(r.keys[i - 1], r.keys[i]) < 0);
	res_clear(&r);
	store_list(fx->store, "nothing/here/", list_cb, &r);
	run_until(fx, &r);
	assert_false(r.failed);
	assert_int_equal(r.n, 0);
	res_clear(&r);
	store_list(fx->store, "p/j1/input.json/", list_cb, &r); /* under a file */
	run_until(fx, &r);
	assert_false(r.failed);
	assert_int_equal(r.n, 0);
	res_clear(&r);

	/* Delete prunes the directories it empties, and only those. */
	store_delete(fx->store, "p/j2/input.json", done_cb, &r);
	run_until(fx, &r);
	assert_false(r.failed);
	res_clear(&r);
	char *j2 = obj_path(fx, "p/j2");
	assert_false(exists(j2));
	free(j2);
	store_head(fx->store, "p/j2/input.json", head_cb, &r);
	run_until(fx, &r);
	assert_int_equal(r.err.kind, STORE_ERR_NOT_FOUND);
	res_clear(&r);
	store_delete(fx->store, "p/j2/input.json", done_cb, &r);
	run_until(fx, &r);
	assert_int_equal(r.err.kind, STORE_ERR_NOT_FOUND);
	res_clear(&r);
	store_delete(fx->store, "q/other.bin", done_cb, &r);
	run_until(fx, &r);
	assert_false(r.failed);
	res_clear(&r);
	char *q = obj_path(fx, "q");
	assert_false(exists(q));
	free(q);
	assert_true(exists(fx->root));
	store_delete(fx->store, "p/j1/01_a/attempts/1/stage.log", done_cb, &r);
	run_until(fx, &r);
	res_clear(&r);
	char *a1 = obj_path(fx, "p/j1/01_a");
	assert_int_equal(dir_entries(a1), 2); /* output.json, stage.log */
	free(a1);

	/* A key under an object, or over a directory, is an I/O error. */
	store_put_buf(fx->store, "p/j1/input.json/x", "x", 1, NULL, done_cb, &r);
	run_until(fx, &r);
	assert_int_equal(r.err.kind, STORE_ERR_IO);
	res_clear(&r);
	store_put_buf(fx->store, "p/j1/01_a", "x", 1, NULL, done_cb, &r);
	run_until(fx, &r);
	assert_int_equal(r.err.kind, STORE_ERR_IO);
	res_clear(&r);
	char *j1 = obj_path(fx, "p/j1");
	assert_int_equal(dir_entries(j1), 3); /* 01_a, input.json, the planted tmp */
	free(j1);
	free(tmp);
}

static void test_cancel_mid_copy(void **state)
{
	struct fx *fx = *state;
	char *src = xasprintf("%s/big.src", fx->dir);
	write_random_file(src, BIG_BYTES);

	struct res r = {.fx = fx};
	fx->victim = store_put_file(fx->store, "c/j/out.wav", src, NULL, done_cb, &r);
	fx->victim_res = &r;
	fx->cancel_at = fx->ticks + 10;
	run_passes(fx, 200);
	assert_null(fx->victim);
	assert_int_equal(r.calls, 0);
	char *obj = obj_path(fx, "c/j/out.wav");
	assert_false(exists(obj));
	char *dir = obj_path(fx, "c/j");
	assert_int_equal(dir_entries(dir), 0); /* the temporary file is gone */
	free(dir);

	/* And for get_file: the partial local file is removed, dst never appears. */
	store_put_file(fx->store, "c/j/out.wav", src, NULL, done_cb, &r);
	run_until(fx, &r);
	assert_false(r.failed);
	res_clear(&r);
	char *dst = xasprintf("%s/dst", fx->dir);
	fx->victim = store_get_file(fx->store, "c/j/out.wav", dst, done_cb, &r);
	fx->cancel_at = fx->ticks + 10;
	run_passes(fx, 200);
	assert_int_equal(r.calls, 0);
	assert_false(exists(dst));
	assert_int_equal(dir_entries(fx->dir), 2); /* objects, big.src */

	/* Cancelling at once, before the first pass, and NULL. */
	struct store_op *op = store_put_buf(fx->store, "c/j/x.json", "{}", 2, NULL, done_cb, &r);
	store_op_cancel(op);
	store_op_cancel(NULL);
	run_passes(fx, 5);
	assert_int_equal(r.calls, 0);

	/* Cancel from inside its own callback is a no-op. */
	r.self = store_get_buf(fx->store, "c/j/out.wav", 1, get_buf_cb, &r);
	run_until(fx, &r);
	assert_int_equal(r.calls, 1);
	run_passes(fx, 3);
	assert_int_equal(r.calls, 1);
	res_clear(&r);
	free(obj);
	free(dst);
	free(src);
}

static void test_free_with_pending(void **state)
{
	struct fx *fx = *state;
	char *src = xasprintf("%s/big.src", fx->dir);
	write_random_file(src, BIG_BYTES);

	struct res r1 = {.fx = fx}, r2 = {.fx = fx}, r3 = {.fx = fx};
	store_put_file(fx->store, "f/j/big.bin", src, NULL, done_cb, &r1);
	run_passes(fx, 5); /* part-way through the copy */
	store_put_buf(fx->store, "f/j/small.json", "{}", 2, NULL, done_cb, &r2);
	store_list(fx->store, "", list_cb, &r3);
	store_free(fx->store);
	fx->store = NULL;
	run_passes(fx, 50);
	assert_int_equal(r1.calls + r2.calls + r3.calls, 0);
	char *dir = obj_path(fx, "f/j");
	assert_int_equal(dir_entries(dir), 0);
	free(dir);

	/* store_free() from inside a callback: the other op never calls back. */
	char *err = NULL;
	fx->store = store_new_file(fx->base, fx->root, "", &err);
	assert_non_null(fx->store);
	r1.free_store = true;
	store_head(fx->store, "nope", head_cb, &r1);
	store_put_file(fx->store, "f/j/big.bin", src, NULL, done_cb, &r2);
	run_passes(fx, 50);
	assert_int_equal(r1.calls, 1);
	assert_null(fx->store);
	assert_int_equal(r2.calls, 0);
	free(src);
}

/* Presigned links. ---------------------------------------------------------------- */

static void test_presign(void **state)
{
	struct fx *fx = *state;
	const int64_t now = 1800000000;
	const char *key = "p/j1/03_srt/out file ü.srt";
	char *url = NULL;
	struct store_error err;
	assert_true(store_presign_get_at(fx->store, key, 300, now, &url, &err));
	const char *want_prefix =
	        "/v1/objects/p/j1/03_srt/out%20file%20%C3%BC.srt?exp=1800000300&sig=";
	assert_int_equal(strncmp(url, want_prefix, strlen(want_prefix)), 0);
	const char *sig = url + strlen(want_prefix);
	assert_int_equal(strlen(sig), 64);
	for (const char *p = sig; *p; p++)
		assert_non_null(strchr("0123456789abcdef", *p));

	assert_true(store_presign_verify(fx->store, key, now + 300, sig, now));
	assert_true(
	        store_presign_verify(fx->store, key, now + 300, sig, now + 300)); /* last second */
	assert_false(store_presign_verify(fx->store, key, now + 300, sig, now + 301)); /* expired */
	assert_false(store_presign_verify(fx->store, key, now + 301, sig, now)); /* other exp */
	assert_false(store_presign_verify(fx->store, "p/j1/03_srt/other.srt", now + 300, sig, now));
	char *tampered = xstrdup(sig);
	tampered[10] = tampered[10] == '0' ? '1' : '0';
	assert_false(store_presign_verify(fx->store, key, now + 300, tampered, now));
	strcpy(tampered, sig);
	for (char *p = tampered; *p; p++) /* the right signature in upper case */
		*p = (char)((*p >= 'a' && *p <= 'f') ? *p - 32 : *p);
	assert_false(store_presign_verify(fx->store, key, now + 300, tampered, now));
	strcpy(tampered, sig);
	tampered[63] = '\0';
	assert_false(store_presign_verify(fx->store, key, now + 300, tampered, now)); /* short */
	assert_false(store_presign_verify(fx->store, key, now + 300, "", now));
	assert_false(store_presign_verify(fx->store, key, now + 300, NULL, now));
	assert_false(store_presign_verify(fx->store, "../x", now + 300, sig, now));
	free(tampered);
	/* Now, the wall-clock variant. */
	char *url2 = NULL;
	assert_true(store_presign_get(fx->store, key, 60, &url2, &err));
	free(url2);
	free(url);

	/* Refusals. */
	assert_false(store_presign_get_at(fx->store, key, 0, now, &url, &err));
	assert_int_equal(err.kind, STORE_ERR_INVALID_ARG);
	assert_null(url);
	assert_false(
	        store_presign_get_at(fx->store, key, STORE_PRESIGN_MAX_TTL_S + 1, now, &url, &err));
	assert_int_equal(err.kind, STORE_ERR_INVALID_ARG);
	assert_false(store_presign_get_at(fx->store, "a/../b", 60, now, &url, &err));
	assert_int_equal(err.kind, STORE_ERR_INVALID_KEY);
	/* A link claiming an expiry past the longest ttl is refused even if signed. */
	assert_true(store_presign_get_at(fx->store, key, STORE_PRESIGN_MAX_TTL_S, now, &url, &err));
	sig = strstr(url, "&sig=") + 5;
	assert_true(store_presign_verify(fx->store, key, now + STORE_PRESIGN_MAX_TTL_S, sig, now));
	assert_false(
	        store_presign_verify(fx->store, key, now + STORE_PRESIGN_MAX_TTL_S, sig, now - 1));
	free(url);

	/* Another secret does not verify this one's links; no secret, no links. */
	char *e = NULL;
	struct store *other = store_new_file(fx->base, fx->root, "another-secret", &e);
	struct store *none = store_new_file(fx->base, fx->root, "", &e);
	assert_true(store_presign_get_at(fx->store, key, 300, now, &url, &err));
	sig = strstr(url, "&sig=") + 5;
	assert_false(store_presign_verify(other, key, now + 300, sig, now));
	assert_false(store_presign_verify(none, key, now + 300, sig, now));
	free(url);
	url = NULL;
	assert_false(store_presign_get_at(none, key, 300, now, &url, &err));
	assert_int_equal(err.kind, STORE_ERR_INVALID_ARG);
	assert_null(url);
	store_free(other);
	store_free(none);
}

/* Metrics and construction. ----------------------------------------------------- */

static double calls(const char *op, const char *outcome)
{
	return metric_series_value(metric_series(metrics_default_get(M_EXTERNAL_CALLS_TOTAL),
	                                         METRIC_LABELS("file", op, outcome)));
}

static uint64_t timed(const char *op)
{
	return metric_series_obs_count(metric_series(
	        metrics_default_get(M_EXTERNAL_CALL_LATENCY_MS), METRIC_LABELS("file", op)));
}

static void test_metrics(void **state)
{
	struct fx *fx = *state;
	double put_ok = calls("put", "success"), get_nf = calls("get", "not_found");
	double get_err = calls("get", "error"), put_cancel = calls("put", "cancelled");
	double list_ok = calls("list", "success"), del_ok = calls("delete", "success");
	double head_ok = calls("head", "success"), presign_ok = calls("presign", "success");
	uint64_t put_t = timed("put"), get_t = timed("get");

	put_buf_sync(fx, "m/a.json", "{}");
	struct res r = {.fx = fx};
	store_get_buf(fx->store, "m/none", 10, get_buf_cb, &r);
	run_until(fx, &r);
	res_clear(&r);
	store_get_buf(fx->store, "m/a.json", 1, get_buf_cb, &r);
	run_until(fx, &r);
	res_clear(&r);
	store_head(fx->store, "m/a.json", head_cb, &r);
	run_until(fx, &r);
	res_clear(&r);
	store_list(fx->store, "m/", list_cb, &r);
	run_until(fx, &r);
	res_clear(&r);
	store_delete(fx->store, "m/a.json", done_cb, &r);
	run_until(fx, &r);
	res_clear(&r);
	store_op_cancel(store_put_buf(fx->store, "m/b.json", "{}", 2, NULL, done_cb, &r));
	char *url = NULL;
	assert_true(store_presign_get(fx->store, "m/a.json", 10, &url, NULL));
	free(url);

	assert_true(calls("put", "success") == put_ok + 1);
	assert_true(calls("get", "not_found") == get_nf + 1);
	assert_true(calls("get", "error") == get_err + 1);
	assert_true(calls("head", "success") == head_ok + 1);
	assert_true(calls("list", "success") == list_ok + 1);
	assert_true(calls("delete", "success") == del_ok + 1);
	assert_true(calls("put", "cancelled") == put_cancel + 1);
	assert_true(calls("presign", "success") == presign_ok + 1);
	assert_true(timed("put") == put_t + 1); /* a cancelled call is not timed */
	assert_true(timed("get") == get_t + 2);
}

static void test_store_new(void **state)
{
	struct fx *fx = *state;
	struct config *cfg = config_new();
	struct config_errors errs = {0};
	char *err = NULL;

	free(cfg->dir);
	cfg->dir = xstrdup(fx->dir);
	assert_true(config_set(cfg, "store.path", "./var/objects", "test", &errs));
	assert_true(config_set(cfg, "store.url_secret", "k", "test", &errs));
	struct store *s = store_new(fx->base, cfg, &err);
	assert_non_null(s);
	assert_null(err);
	char *root = xasprintf("%s/var/objects", fx->dir);
	struct stat st;
	assert_int_equal(stat(root, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 0027, 0); /* 0750 less the umask */
	char *url = NULL;
	assert_true(store_presign_get(s, "a", 10, &url, NULL));
	free(url);
	store_free(s);
	free(root);

	/* s3: without credentials an error naming the backend, with them the
	 * s3 backend (store_new_s3(), tested in test_s3_store.c). */
	unsetenv("AWS_ACCESS_KEY_ID");
	unsetenv("AWS_SECRET_ACCESS_KEY");
	assert_true(config_set(cfg, "store.backend", "s3", "test", &errs));
	assert_true(config_set(cfg, "store.s3.bucket", "b", "test", &errs));
	assert_true(config_set(cfg, "store.s3.endpoint", "http://127.0.0.1:9", "test", &errs));
	assert_null(store_new(fx->base, cfg, &err));
	assert_non_null(err);
	assert_non_null(strstr(err, "s3 store: no credentials"));
	free(err);
	err = NULL;
	assert_true(config_set(cfg, "store.s3.access_key_id", "AKID", "test", &errs));
	assert_true(config_set(cfg, "store.s3.secret_access_key", "sk", "test", &errs));
	s = store_new(fx->base, cfg, &err);
	assert_non_null(s);
	assert_string_equal(s->ops->name, "s3");
	store_free(s);

	/* A root that cannot be created is an error, not an abort. */
	char *file = xasprintf("%s/a-file", fx->dir);
	write_random_file(file, 1);
	char *under = xasprintf("%s/sub", file);
	assert_null(store_new_file(fx->base, under, "", &err));
	assert_non_null(err);
	free(err);
	err = NULL;
	assert_null(store_new_file(fx->base, "", "", &err));
	free(err);
	free(under);
	free(file);
	config_errors_clear(&errs);
	config_free(cfg);
}

/* Puts that reach their flush in the same pass share it: all of them land
 * whole, each callback fires once, no temporary file is left, and a put
 * cancelled while it waits for the shared flush leaves nothing. */
static void test_group_commit(void **state)
{
	struct fx *fx = *state;
	enum { N = 40 };
	struct res r[N];
	struct store_op *ops[N];
	char keys[N][64], texts[N][64];
	for (int i = 0; i < N; i++) {
		r[i] = (struct res){.fx = fx};
		snprintf(keys[i], sizeof keys[i], "p/job%d/%02d_s/output.json", i, i % 7);
		snprintf(texts[i], sizeof texts[i], "{\"i\":%d}", i);
		ops[i] = store_put_buf(fx->store, keys[i], texts[i], strlen(texts[i]),
		                       "application/json", done_cb, &r[i]);
	}
	/* every put is queued for the flush after two passes (start, copy) */
	run_passes(fx, 2);
	int victim = 13;
	if (r[victim].calls == 0) {
		store_op_cancel(ops[victim]);
		r[victim].calls = -1;
	}
	for (int i = 0; i < N; i++)
		if (i != victim || r[victim].calls != -1)
			run_until(fx, &r[i]);
	for (int i = 0; i < N; i++) {
		char *path = obj_path(fx, keys[i]);
		if (i == victim && r[i].calls == -1) {
			assert_false(exists(path));
		} else {
			assert_int_equal(r[i].calls, 1);
			assert_false(r[i].failed);
			size_t len = 0;
			char *got = read_file(path, &len);
			assert_non_null(got);
			assert_int_equal(len, strlen(texts[i]));
			assert_memory_equal(got, texts[i], len);
			free(got);
			/* the object's directory holds it and nothing else */
			char *dir = xstrdup(path);
			*strrchr(dir, '/') = '\0';
			assert_int_equal(dir_entries(dir), 1);
			free(dir);
		}
		free(path);
	}
	run_passes(fx, 3);
	for (int i = 0; i < N; i++)
		assert_true(r[i].calls <= 1);
}

int main(void)
{
	log_set_level(LOG_LVL_ERROR);
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_key_valid),
	        cmocka_unit_test_setup_teardown(test_buf_round_trip, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_big_file, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_not_found, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_invalid_keys_refused, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_symlinks_not_followed, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_list_head_delete, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_cancel_mid_copy, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_free_with_pending, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_presign, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_metrics, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_store_new, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_group_commit, setup, teardown),
	};
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	metrics_default_free();
	return rc;
}
