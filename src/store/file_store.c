/* The file store: objects as files under one root directory, the embedded
 * default backend of store.h. Every operation is a small state machine
 * driven by a zero-timeout timer, so each loop pass does one bounded piece of
 * blocking file I/O (an open, one STORE_CHUNK_BYTES chunk, an fdatasync, a
 * rename) and the loop polls its sockets between pieces. Puts that reach
 * their flush in the same pass share it (group commit): one syncfs() makes
 * all their data durable, their renames follow, and a second syncfs() makes
 * the new names durable — two flushes per pass instead of two per object.
 * A lone put keeps its own fdatasync() and directory fsync(). Writes go to a
 * ".stl-tmp.*" file in the object's directory and are renamed over the key,
 * so a key holds a whole object or nothing. Paths are never built from keys
 * as strings: every directory is opened segment by segment from the root's
 * descriptor with O_NOFOLLOW, so neither a key nor a symlink planted in the
 * tree can reach outside the root. The first section is backend-neutral
 * (key rules, store_new()) and moves to store.c with the s3 backend. */
#include "store/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "core/buf.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/ids.h"
#include "core/fsutil.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/xmalloc.h"

/* Backend-neutral. ------------------------------------------------------------ */

bool store_key_valid(const char *key, size_t len, const char **why)
{
	const char *dummy;
	if (!why)
		why = &dummy;
	if (!key || len == 0) {
		*why = "empty key";
		return false;
	}
	if (len > STORE_KEY_MAX) {
		*why = "key longer than 1024 bytes";
		return false;
	}
	const unsigned char *s = (const unsigned char *)key;
	size_t seg = 0; /* start of the current segment */
	for (size_t i = 0; i <= len; i++) {
		if (i == len || s[i] == '/') {
			size_t n = i - seg;
			if (n == 0) {
				*why = seg == 0   ? "key starts with '/'"
				       : i == len ? "key ends with '/'"
				                  : "empty segment ('//')";
				return false;
			}
			if ((n == 1 && s[seg] == '.') ||
			    (n == 2 && s[seg] == '.' && s[seg + 1] == '.')) {
				*why = "'.' or '..' segment";
				return false;
			}
			if (n > STORE_SEGMENT_MAX) {
				*why = "segment longer than 255 bytes";
				return false;
			}
			if (n >= sizeof(STORE_TMP_PREFIX) - 1 &&
			    memcmp(s + seg, STORE_TMP_PREFIX, sizeof(STORE_TMP_PREFIX) - 1) == 0) {
				*why = "segment starts with the reserved '" STORE_TMP_PREFIX "'";
				return false;
			}
			seg = i + 1;
			continue;
		}
		if (s[i] == '\0') {
			*why = "NUL byte in key";
			return false;
		}
		if (s[i] < 0x20 || s[i] == 0x7f) {
			*why = "control character in key";
			return false;
		}
		if (s[i] == '\\') {
			*why = "backslash in key";
			return false;
		}
		if (s[i] >= 0x80) {
			size_t l = buf_utf8_seq_len(s + i, len - i);
			if (l == 0) {
				*why = "invalid UTF-8 in key";
				return false;
			}
			i += l - 1;
		}
	}
	return true;
}

bool store_prefix_valid(const char *prefix, size_t len, const char **why)
{
	if (prefix && len == 0)
		return true;
	if (prefix && prefix[len - 1] == '/')
		len--;
	return store_key_valid(prefix, len, why);
}

const char *store_error_kind_name(enum store_error_kind kind)
{
	switch (kind) {
	case STORE_ERR_NOT_FOUND: return "not_found";
	case STORE_ERR_INVALID_KEY: return "invalid_key";
	case STORE_ERR_INVALID_ARG: return "invalid_argument";
	case STORE_ERR_IO: return "io";
	case STORE_ERR_TOO_LARGE: return "too_large";
	case STORE_ERR_DENIED: return "denied";
	case STORE_ERR_CANCELLED: return "cancelled";
	}
	return "unknown";
}

struct store *store_new(struct event_base *base, const struct config *cfg, char **err)
{
	const char *backend = cfg->store.backend ? cfg->store.backend : "";
	if (strcmp(backend, "file") == 0) {
		char *root = config_resolve_path(cfg, cfg->store.path ? cfg->store.path : "");
		struct store *s = store_new_file(base, root, cfg->store.url_secret, err);
		if (s && (!cfg->store.url_secret || cfg->store.url_secret[0] == '\0'))
			log_warn("store.links_off",
			         "store.url_secret is empty: the file store will not sign download "
			         "links",
			         LF_STR("root", root));
		free(root);
		return s;
	}
	if (strcmp(backend, "s3") == 0) {
		struct store_s3_options o = {
		        .endpoint = cfg->store.s3.endpoint,
		        .bucket = cfg->store.s3.bucket,
		        .region = cfg->store.s3.region,
		        .prefix = cfg->store.s3.prefix,
		        .access_key_id = cfg->store.s3.access_key_id,
		        .secret_access_key = cfg->store.s3.secret_access_key,
		        .path_style = cfg->store.s3.path_style,
		};
		return store_new_s3(base, &o, err);
	}
	*err = xasprintf("store.backend: unknown backend '%s' (expected file or s3)", backend);
	return NULL;
}

bool store_presign_get(struct store *s, const char *key, int64_t ttl_s, char **out_url,
                       struct store_error *err)
{
	return store_presign_get_at(s, key, ttl_s, clock_now_us() / 1000000, out_url, err);
}

/* The file backend. ----------------------------------------------------------- */

#define FS_SERVICE "file"
#define FS_DIR_MODE 0750
#define FS_FILE_MODE 0640
#define FS_LIST_BUDGET 4096 /* directory entries looked at per loop pass */
#define FS_PUT_ATTEMPTS 3 /* a concurrent delete may prune the directory we create */
#define FS_SIG_DOMAIN "stageline-object-get-v1"
#define FS_SIG_DOMAIN_PUT "stageline-object-put-v1"

TAILQ_HEAD(fs_op_list, fs_op);

struct file_store {
	struct store base;
	struct event_base *evbase;
	char *root; /* absolute */
	int rootfd;
	char *secret;
	size_t secret_len;
	struct fs_op_list ops;
	TAILQ_HEAD(, fs_op) syncq; /* puts waiting for the pass's shared flush */
	struct event *sync_ev;
	unsigned depth; /* callbacks running */
	bool dead; /* store_free() inside a callback: finish when it returns */
};

enum fs_kind {
	FS_PUT_FILE,
	FS_PUT_BUF,
	FS_GET_FILE,
	FS_GET_BUF,
	FS_GET_RANGE,
	FS_HEAD,
	FS_LIST,
	FS_DELETE
};

/* Each kind walks a subset, in this order: START, then COPY (put, get, list)
 * until its source is drained, then SYNC (put), then COMMIT (put, get_file).
 * Every step but COPY runs once, each in a loop pass of its own (a list
 * reads its first entries in the pass that opens it). */
enum fs_step { FS_START, FS_COPY, FS_SYNC, FS_COMMIT, FS_SYNCED };

struct fs_dir {
	DIR *d;
	char *rel; /* "" for the root, else "a/b/" */
};

struct fs_op {
	struct store_op base;
	struct file_store *fs;
	TAILQ_ENTRY(fs_op) link;
	TAILQ_ENTRY(fs_op) sync_link;
	bool in_sync; /* on fs->syncq */
	bool sync_failed; /* FS_SYNCED: the shared flush or the rename failed (err set) */
	enum fs_kind kind;
	enum fs_step step;
	const char *opname; /* the metrics' op label */
	struct event *ev;
	int64_t start_us;
	bool delivering;
	bool refused; /* at the call (a bad argument): op->err goes out on the first pass */
	char *key; /* the prefix for a list */
	char *local_path;
	union {
		store_done_cb done;
		store_head_cb head;
		store_get_buf_cb get_buf;
		store_list_cb list;
	} cb;
	void *arg;
	struct store_error err;

	/* Copies: a source (src_fd or src_mem) and a destination (dst_fd, a
	 * temporary tmp_name in dst_dirfd renamed to dst_name at commit, or
	 * dst_mem). */
	int src_fd;
	char *src_mem;
	size_t src_len, src_off;
	int dst_dirfd, dst_fd;
	char *tmp_name, *dst_name;
	struct buf dst_mem;
	size_t max_bytes;
	uint64_t range_off; /* get_range: the first byte */
	uint64_t range_want; /* get_range: the bytes it returns */
	char *chunk;
	uint64_t copied;
	struct stat st; /* the object, for head and get_buf */

	/* Lists. */
	struct fs_dir *dirs;
	size_t ndirs, capdirs;
	struct store_list_entry *entries;
	size_t nentries, capentries;
};

static const struct store_ops file_store_ops;
static void fs_op_timer_cb(evutil_socket_t fd, short what, void *arg);

static void fs_set_error(struct fs_op *op, enum store_error_kind kind, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static void fs_set_error(struct fs_op *op, enum store_error_kind kind, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	op->err.kind = kind;
	vsnprintf(op->err.message, sizeof(op->err.message), fmt, ap);
	va_end(ap);
}

static const char *fs_outcome(const struct store_error *err)
{
	if (!err)
		return "success";
	return err->kind == STORE_ERR_NOT_FOUND ? "not_found" : "error";
}

static void fs_count(struct file_store *fs, const char *op, const char *outcome, int64_t start_us)
{
	/* Looked up each time (an array index), never cached: a handle would
	 * dangle if the default registry were freed and made again (tests). */
	metric_inc(metrics_default_get(M_EXTERNAL_CALLS_TOTAL), 1, FS_SERVICE, op, outcome);
	if (start_us)
		metric_observe(metrics_default_get(M_EXTERNAL_CALL_LATENCY_MS),
		               (double)(clock_mono_us() - start_us) / 1000.0, FS_SERVICE, op);
}

static bool fs_errno_missing(int e)
{
	return e == ENOENT || e == ENOTDIR || e == ELOOP;
}

static void fs_close(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* Opens the directory made of the first dirlen bytes of key ("" = the root),
 * one segment at a time with O_NOFOLLOW, creating missing ones (mode 0750)
 * when create. The caller closes the descriptor. -1 with errno set. */
static int fs_open_dir(struct file_store *fs, const char *key, size_t dirlen, bool create)
{
	int cur = fcntl(fs->rootfd, F_DUPFD_CLOEXEC, 0);
	size_t i = 0;
	while (cur >= 0 && i < dirlen) {
		size_t j = i;
		while (j < dirlen && key[j] != '/')
			j++;
		char name[STORE_SEGMENT_MAX + 1];
		memcpy(name, key + i, j - i);
		name[j - i] = '\0';
		int next = openat(cur, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (next < 0 && errno == ENOENT && create) {
			if (mkdirat(cur, name, FS_DIR_MODE) < 0 && errno != EEXIST) {
				int e = errno;
				close(cur);
				errno = e;
				return -1;
			}
			next = openat(cur, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		}
		int e = errno;
		close(cur);
		errno = e;
		cur = next;
		i = j + 1;
	}
	return cur;
}

/* The last segment of key and the length of what precedes its '/'. */
static const char *fs_key_base(const char *key, size_t *dirlen)
{
	const char *slash = strrchr(key, '/');
	*dirlen = slash ? (size_t)(slash - key) : 0;
	return slash ? slash + 1 : key;
}

static char *fs_tmp_name(void)
{
	char hex[17];
	id_random_hex(hex, 8);
	return xasprintf("%s%s", STORE_TMP_PREFIX, hex);
}

/* write(2) until all of it is written. */
static bool fs_write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return false;
		}
		p += w;
		n -= (size_t)w;
	}
	return true;
}

static ssize_t fs_read(int fd, char *p, size_t n)
{
	ssize_t r;
	do
		r = read(fd, p, n);
	while (r < 0 && errno == EINTR);
	return r;
}

/* Releases everything op holds; a temporary file it created is removed. */
static void fs_op_release(struct fs_op *op)
{
	if (op->in_sync) {
		TAILQ_REMOVE(&op->fs->syncq, op, sync_link);
		op->in_sync = false;
	}
	if (op->ev) {
		event_free(op->ev);
		op->ev = NULL;
	}
	fs_close(&op->src_fd);
	fs_close(&op->dst_fd);
	if (op->tmp_name && op->dst_dirfd >= 0 && unlinkat(op->dst_dirfd, op->tmp_name, 0) < 0 &&
	    errno != ENOENT)
		log_warn("store.tmp_cleanup", "cannot remove a temporary file",
		         LF_STR("dir", op->fs->root), LF_STR("key", op->key),
		         LF_STR("tmp", op->tmp_name), LF_STR("error", strerror(errno)));
	free(op->tmp_name);
	op->tmp_name = NULL;
	fs_close(&op->dst_dirfd);
	for (size_t i = 0; i < op->ndirs; i++) {
		closedir(op->dirs[i].d);
		free(op->dirs[i].rel);
	}
	free(op->dirs);
	op->dirs = NULL;
	op->ndirs = 0;
	free(op->chunk);
	op->chunk = NULL;
	free(op->src_mem);
	op->src_mem = NULL;
}

static void fs_op_free(struct fs_op *op)
{
	fs_op_release(op);
	for (size_t i = 0; i < op->nentries; i++)
		free((char *)op->entries[i].key);
	free(op->entries);
	buf_free(&op->dst_mem);
	free(op->dst_name);
	free(op->local_path);
	free(op->key);
	free(op);
}

static void fs_destroy(struct file_store *fs)
{
	struct fs_op *op;
	while ((op = TAILQ_FIRST(&fs->ops))) {
		TAILQ_REMOVE(&fs->ops, op, link);
		fs_count(fs, op->opname, "cancelled", 0);
		fs_op_free(op);
	}
	if (fs->sync_ev)
		event_free(fs->sync_ev);
	close(fs->rootfd);
	free(fs->root);
	if (fs->secret)
		OPENSSL_cleanse(fs->secret, fs->secret_len);
	free(fs->secret);
	free(fs);
}

static const char *fs_content_type(const char *key)
{
	static const struct {
		const char *ext, *type;
	} types[] = {
	        {"json", "application/json"},
	        {"jsonl", "application/x-ndjson"},
	        {"log", "text/plain; charset=utf-8"},
	        {"txt", "text/plain; charset=utf-8"},
	        {"csv", "text/csv; charset=utf-8"},
	        {"srt", "application/x-subrip"},
	        {"vtt", "text/vtt; charset=utf-8"},
	        {"wav", "audio/wav"},
	        {"mp3", "audio/mpeg"},
	        {"flac", "audio/flac"},
	        {"bin", "application/octet-stream"},
	};
	size_t dirlen;
	const char *base = fs_key_base(key, &dirlen);
	const char *dot = strrchr(base, '.');
	if (dot && dot != base)
		for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
			if (strcasecmp(dot + 1, types[i].ext) == 0)
				return types[i].type;
	return "application/octet-stream";
}

static int64_t fs_mtime_ms(const struct stat *st)
{
	return (int64_t)st->st_mtim.tv_sec * 1000 + st->st_mtim.tv_nsec / 1000000;
}

/* Ends op: releases its files, counts it, calls its callback once (err NULL
 * on success) and frees it — and the store, when store_free() was called from
 * inside that callback. */
static void fs_op_finish(struct fs_op *op, bool ok)
{
	struct file_store *fs = op->fs;
	const struct store_error *err = ok ? NULL : &op->err;
	fs_op_release(op);
	fs_count(fs, op->opname, fs_outcome(err), op->start_us);
	if (err)
		log_debug("store.op_failed", err->message, LF_STR("op", op->opname),
		          LF_STR("key", op->key), LF_STR("kind", store_error_kind_name(err->kind)));

	struct store_object_info info = {.key = op->key,
	                                 .size = (uint64_t)op->st.st_size,
	                                 .mtime_ms = fs_mtime_ms(&op->st),
	                                 .content_type = fs_content_type(op->key)};
	op->delivering = true;
	fs->depth++;
	switch (op->kind) {
	case FS_PUT_FILE:
	case FS_PUT_BUF:
	case FS_GET_FILE:
	case FS_DELETE: op->cb.done(err, op->arg); break;
	case FS_HEAD: op->cb.head(err, err ? NULL : &info, op->arg); break;
	case FS_GET_BUF:
	case FS_GET_RANGE:
		if (op->kind == FS_GET_BUF)
			info.size = op->dst_mem.len;
		if (err)
			op->cb.get_buf(err, NULL, NULL, 0, op->arg);
		else
			op->cb.get_buf(NULL, &info, op->dst_mem.data ? op->dst_mem.data : "",
			               op->dst_mem.len, op->arg);
		break;
	case FS_LIST:
		op->cb.list(err, err ? NULL : op->entries, err ? 0 : op->nentries, op->arg);
		break;
	}
	fs->depth--;
	TAILQ_REMOVE(&fs->ops, op, link);
	fs_op_free(op);
	if (fs->dead && fs->depth == 0)
		fs_destroy(fs);
}

static void fs_op_schedule(struct fs_op *op)
{
	static const struct timeval zero = {0, 0};
	evtimer_add(op->ev, &zero);
}

static struct fs_op *fs_op_new(struct file_store *fs, enum fs_kind kind, const char *opname,
                               const char *key, void *arg)
{
	struct fs_op *op = xcalloc(1, sizeof(*op));
	op->base.store = &fs->base;
	op->fs = fs;
	op->kind = kind;
	op->step = FS_START;
	op->opname = opname;
	op->start_us = clock_mono_us();
	op->key = xstrdup(key ? key : "");
	op->arg = arg;
	op->src_fd = op->dst_fd = op->dst_dirfd = -1;
	op->ev = evtimer_new(fs->evbase, fs_op_timer_cb, op);
	if (!op->ev) { /* only on OOM inside libevent: xmalloc's policy */
		fprintf(stderr, "stagelined: out of memory (evtimer_new)\n");
		abort();
	}
	TAILQ_INSERT_TAIL(&fs->ops, op, link);
	fs_op_schedule(op);
	return op;
}

/* Opens the object under op->key for reading into op->src_fd (and op->st). */
static bool fs_open_object(struct fs_op *op)
{
	struct file_store *fs = op->fs;
	size_t dirlen;
	const char *base = fs_key_base(op->key, &dirlen);
	int dirfd = fs_open_dir(fs, op->key, dirlen, false);
	if (dirfd >= 0) {
		op->src_fd = openat(dirfd, base, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		int e = errno;
		close(dirfd);
		errno = e;
	}
	if (op->src_fd < 0) {
		if (fs_errno_missing(errno) || errno == EISDIR)
			fs_set_error(op, STORE_ERR_NOT_FOUND, "no object '%s'", op->key);
		else
			fs_set_error(op, STORE_ERR_IO, "cannot open object '%s': %s", op->key,
			             strerror(errno));
		return false;
	}
	if (fstat(op->src_fd, &op->st) < 0) {
		fs_set_error(op, STORE_ERR_IO, "cannot stat object '%s': %s", op->key,
		             strerror(errno));
		return false;
	}
	if (!S_ISREG(op->st.st_mode)) {
		fs_set_error(op, STORE_ERR_NOT_FOUND, "no object '%s' (not a regular file)",
		             op->key);
		return false;
	}
	return true;
}

/* Opens (creating) the key's directory and a fresh op->tmp_name in it. */
static bool fs_start_put(struct fs_op *op)
{
	struct file_store *fs = op->fs;
	size_t dirlen;
	const char *base = fs_key_base(op->key, &dirlen);
	for (int attempt = 0; attempt < FS_PUT_ATTEMPTS; attempt++) {
		fs_close(&op->dst_dirfd);
		free(op->tmp_name);
		op->tmp_name = NULL;
		op->dst_dirfd = fs_open_dir(fs, op->key, dirlen, true);
		if (op->dst_dirfd < 0) {
			if (errno == ENOENT)
				continue;
			if (errno == ENOTDIR || errno == ELOOP || errno == EEXIST)
				fs_set_error(op, STORE_ERR_IO,
				             "cannot put '%s': a parent of the key is an object",
				             op->key);
			else
				fs_set_error(op, STORE_ERR_IO,
				             "cannot create the directory of '%s': %s", op->key,
				             strerror(errno));
			return false;
		}
		op->tmp_name = fs_tmp_name();
		op->dst_fd = openat(op->dst_dirfd, op->tmp_name,
		                    O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, FS_FILE_MODE);
		if (op->dst_fd >= 0)
			break;
		int e = errno;
		free(op->tmp_name);
		op->tmp_name = NULL;
		if (e == ENOENT) /* the directory was pruned under us */
			continue;
		fs_set_error(op, STORE_ERR_IO, "cannot create a temporary file for '%s': %s",
		             op->key, strerror(e));
		return false;
	}
	if (op->dst_fd < 0) {
		fs_set_error(op, STORE_ERR_IO, "cannot create the directory of '%s': %s", op->key,
		             strerror(ENOENT));
		return false;
	}
	op->dst_name = xstrdup(base);
	return true;
}

static bool fs_start_get_file(struct fs_op *op)
{
	const char *lp = op->local_path;
	const char *slash = strrchr(lp, '/');
	const char *base = slash ? slash + 1 : lp;
	if (base[0] == '\0' || strcmp(base, ".") == 0 || strcmp(base, "..") == 0) {
		fs_set_error(op, STORE_ERR_INVALID_ARG, "get '%s': local path '%s' names no file",
		             op->key, lp);
		return false;
	}
	char *dir = slash ? (slash == lp ? xstrdup("/") : xstrndup(lp, (size_t)(slash - lp)))
	                  : xstrdup(".");
	op->dst_dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int e = errno;
	free(dir);
	if (op->dst_dirfd < 0) {
		fs_set_error(op, STORE_ERR_IO, "get '%s': cannot open the directory of '%s': %s",
		             op->key, lp, strerror(e));
		return false;
	}
	op->tmp_name = fs_tmp_name();
	op->dst_fd = openat(op->dst_dirfd, op->tmp_name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
	                    FS_FILE_MODE);
	if (op->dst_fd < 0) {
		e = errno;
		free(op->tmp_name);
		op->tmp_name = NULL;
		fs_set_error(op, STORE_ERR_IO, "get '%s': cannot create a file beside '%s': %s",
		             op->key, lp, strerror(e));
		return false;
	}
	op->dst_name = xstrdup(base);
	return true;
}

static bool fs_do_start(struct fs_op *op)
{
	switch (op->kind) {
	case FS_PUT_FILE:
		op->src_fd = open(op->local_path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
		if (op->src_fd < 0) {
			fs_set_error(op, STORE_ERR_IO, "put '%s': cannot open '%s': %s", op->key,
			             op->local_path, strerror(errno));
			return false;
		}
		if (fstat(op->src_fd, &op->st) < 0 || !S_ISREG(op->st.st_mode)) {
			fs_set_error(op, STORE_ERR_IO, "put '%s': '%s' is not a regular file",
			             op->key, op->local_path);
			return false;
		}
		op->chunk = xmalloc(STORE_CHUNK_BYTES);
		return fs_start_put(op);
	case FS_PUT_BUF: return fs_start_put(op);
	case FS_GET_FILE:
		if (!fs_open_object(op) || !fs_start_get_file(op))
			return false;
		op->chunk = xmalloc(STORE_CHUNK_BYTES);
		return true;
	case FS_GET_BUF:
		if (!fs_open_object(op))
			return false;
		if ((uint64_t)op->st.st_size > op->max_bytes) {
			fs_set_error(op, STORE_ERR_TOO_LARGE,
			             "object '%s' is %" PRIu64 " bytes, more than the %zu allowed",
			             op->key, (uint64_t)op->st.st_size, op->max_bytes);
			return false;
		}
		buf_reserve(&op->dst_mem, (size_t)op->st.st_size);
		return true;
	case FS_GET_RANGE:
		if (!fs_open_object(op))
			return false;
		if (op->range_off < (uint64_t)op->st.st_size) {
			uint64_t left = (uint64_t)op->st.st_size - op->range_off;
			op->range_want = left < op->max_bytes ? left : op->max_bytes;
		}
		buf_reserve(&op->dst_mem, (size_t)op->range_want);
		op->dst_mem.data[0] = '\0';
		return true;
	default: return false;
	}
}

/* One chunk. Returns false on error; sets *eof when the source is drained. */
static bool fs_do_copy(struct fs_op *op, bool *eof)
{
	*eof = false;
	if (op->kind == FS_PUT_BUF) {
		size_t n = op->src_len - op->src_off;
		if (n > STORE_CHUNK_BYTES)
			n = STORE_CHUNK_BYTES;
		if (!fs_write_all(op->dst_fd, op->src_mem + op->src_off, n)) {
			fs_set_error(op, STORE_ERR_IO, "put '%s': write failed: %s", op->key,
			             strerror(errno));
			return false;
		}
		op->src_off += n;
		op->copied += n;
		*eof = op->src_off == op->src_len;
		return true;
	}
	if (op->kind == FS_GET_BUF) {
		/* One byte past max_bytes tells a grown file from a full one. */
		size_t left = op->max_bytes - op->dst_mem.len;
		size_t room = left >= STORE_CHUNK_BYTES ? STORE_CHUNK_BYTES : left + 1;
		buf_reserve(&op->dst_mem, room);
		ssize_t r = fs_read(op->src_fd, op->dst_mem.data + op->dst_mem.len, room);
		if (r < 0) {
			fs_set_error(op, STORE_ERR_IO, "get '%s': read failed: %s", op->key,
			             strerror(errno));
			return false;
		}
		op->dst_mem.len += (size_t)r;
		op->dst_mem.data[op->dst_mem.len] = '\0';
		if (op->dst_mem.len > op->max_bytes) {
			fs_set_error(op, STORE_ERR_TOO_LARGE,
			             "object '%s' is more than the %zu allowed", op->key,
			             op->max_bytes);
			return false;
		}
		*eof = r == 0;
		return true;
	}
	if (op->kind == FS_GET_RANGE) {
		/* pread: the object may change size under us; what it holds at
		 * each read counts, and a short read ends the range. */
		uint64_t left = op->range_want - op->dst_mem.len;
		size_t n = left < STORE_CHUNK_BYTES ? (size_t)left : STORE_CHUNK_BYTES;
		if (n == 0) {
			*eof = true;
			return true;
		}
		ssize_t r;
		do
			r = pread(op->src_fd, op->dst_mem.data + op->dst_mem.len, n,
			          (off_t)(op->range_off + op->dst_mem.len));
		while (r < 0 && errno == EINTR);
		if (r < 0) {
			fs_set_error(op, STORE_ERR_IO, "get_range '%s': read failed: %s", op->key,
			             strerror(errno));
			return false;
		}
		op->dst_mem.len += (size_t)r;
		op->dst_mem.data[op->dst_mem.len] = '\0';
		*eof = r == 0 || op->dst_mem.len == op->range_want;
		return true;
	}
	ssize_t r = fs_read(op->src_fd, op->chunk, STORE_CHUNK_BYTES);
	if (r < 0) {
		fs_set_error(op, STORE_ERR_IO, "%s '%s': read failed: %s", op->opname, op->key,
		             strerror(errno));
		return false;
	}
	if (r == 0) {
		*eof = true;
		return true;
	}
	if (!fs_write_all(op->dst_fd, op->chunk, (size_t)r)) {
		fs_set_error(op, STORE_ERR_IO, "%s '%s': write failed: %s", op->opname, op->key,
		             strerror(errno));
		return false;
	}
	/* Start writeback now (it does not wait), so the fdatasync() at the end
	 * has little left to flush; best effort. */
	if (op->kind == FS_PUT_FILE)
		(void)sync_file_range(op->dst_fd, (off_t)op->copied, (off_t)r,
		                      SYNC_FILE_RANGE_WRITE);
	op->copied += (uint64_t)r;
	return true;
}

static bool fs_do_commit(struct fs_op *op, bool dir_fsync)
{
	int fd = op->dst_fd;
	op->dst_fd = -1;
	if (close(fd) < 0) {
		fs_set_error(op, STORE_ERR_IO, "%s '%s': close failed: %s", op->opname, op->key,
		             strerror(errno));
		return false;
	}
	if (renameat(op->dst_dirfd, op->tmp_name, op->dst_dirfd, op->dst_name) < 0) {
		int e = errno;
		if (e == EISDIR || e == ENOTEMPTY || e == EEXIST)
			fs_set_error(op, STORE_ERR_IO, "%s '%s': the name is taken by a directory",
			             op->opname, op->key);
		else
			fs_set_error(op, STORE_ERR_IO, "%s '%s': rename failed: %s", op->opname,
			             op->key, strerror(e));
		return false;
	}
	free(op->tmp_name);
	op->tmp_name = NULL;
	/* The new name is durable once its directory is: puts only (a get
	 * writes scratch, which a crash may lose). */
	if (dir_fsync && (op->kind == FS_PUT_FILE || op->kind == FS_PUT_BUF) &&
	    fsync(op->dst_dirfd) < 0) {
		fs_set_error(op, STORE_ERR_IO, "put '%s': fsync of its directory failed: %s",
		             op->key, strerror(errno));
		return false;
	}
	return true;
}

static void fs_do_head(struct fs_op *op)
{
	size_t dirlen;
	const char *base = fs_key_base(op->key, &dirlen);
	int dirfd = fs_open_dir(op->fs, op->key, dirlen, false);
	int r = dirfd < 0 ? -1 : fstatat(dirfd, base, &op->st, AT_SYMLINK_NOFOLLOW);
	int e = errno;
	if (dirfd >= 0)
		close(dirfd);
	if (r < 0 && !fs_errno_missing(e)) {
		fs_set_error(op, STORE_ERR_IO, "head '%s': %s", op->key, strerror(e));
		fs_op_finish(op, false);
	} else if (r < 0 || !S_ISREG(op->st.st_mode)) {
		fs_set_error(op, STORE_ERR_NOT_FOUND, "no object '%s'", op->key);
		fs_op_finish(op, false);
	} else {
		fs_op_finish(op, true);
	}
}

/* Removes the directories of key that the delete left empty, deepest first,
 * never the root. */
static void fs_prune(struct file_store *fs, const char *key, size_t dirlen)
{
	while (dirlen > 0) {
		size_t parentlen = dirlen;
		while (parentlen > 0 && key[parentlen - 1] != '/')
			parentlen--;
		char name[STORE_SEGMENT_MAX + 1];
		size_t n = dirlen - parentlen;
		memcpy(name, key + parentlen, n);
		name[n] = '\0';
		int pfd = fs_open_dir(fs, key, parentlen ? parentlen - 1 : 0, false);
		if (pfd < 0)
			return;
		int r = unlinkat(pfd, name, AT_REMOVEDIR);
		close(pfd);
		if (r < 0)
			return; /* not empty (or raced): the rest is not empty either */
		dirlen = parentlen ? parentlen - 1 : 0;
	}
}

static void fs_do_delete(struct fs_op *op)
{
	size_t dirlen;
	const char *base = fs_key_base(op->key, &dirlen);
	int dirfd = fs_open_dir(op->fs, op->key, dirlen, false);
	struct stat st;
	int r = dirfd < 0 ? -1 : fstatat(dirfd, base, &st, AT_SYMLINK_NOFOLLOW);
	if (r == 0 && !S_ISREG(st.st_mode)) {
		r = -1;
		errno = ENOENT;
	}
	if (r == 0)
		r = unlinkat(dirfd, base, 0);
	int e = errno;
	if (dirfd >= 0)
		close(dirfd);
	if (r < 0) {
		if (fs_errno_missing(e))
			fs_set_error(op, STORE_ERR_NOT_FOUND, "no object '%s'", op->key);
		else
			fs_set_error(op, STORE_ERR_IO, "delete '%s': %s", op->key, strerror(e));
		fs_op_finish(op, false);
		return;
	}
	fs_prune(op->fs, op->key, dirlen);
	fs_op_finish(op, true);
}

static bool fs_list_push(struct fs_op *op, int fd, char *rel)
{
	DIR *d = fdopendir(fd);
	if (!d) {
		fs_set_error(op, STORE_ERR_IO, "list '%s': cannot read '%s': %s", op->key, rel,
		             strerror(errno));
		close(fd);
		free(rel);
		return false;
	}
	if (op->ndirs == op->capdirs) {
		op->capdirs = op->capdirs ? op->capdirs * 2 : 8;
		op->dirs = xrealloc(op->dirs, op->capdirs * sizeof(*op->dirs));
	}
	op->dirs[op->ndirs++] = (struct fs_dir){.d = d, .rel = rel};
	return true;
}

static bool fs_list_start(struct fs_op *op)
{
	/* Start at the deepest whole directory the prefix names. */
	const char *slash = strrchr(op->key, '/');
	size_t dirlen = slash ? (size_t)(slash - op->key) : 0;
	int fd = fs_open_dir(op->fs, op->key, dirlen, false);
	if (fd < 0) {
		if (fs_errno_missing(errno))
			return true; /* nothing there: an empty list */
		fs_set_error(op, STORE_ERR_IO, "list '%s': %s", op->key, strerror(errno));
		return false;
	}
	return fs_list_push(op, fd, slash ? xstrndup(op->key, dirlen + 1) : xstrdup(""));
}

static int fs_entry_cmp(const void *a, const void *b)
{
	return strcmp(((const struct store_list_entry *)a)->key,
	              ((const struct store_list_entry *)b)->key);
}

/* Up to FS_LIST_BUDGET directory entries; *eof when the walk is over. */
static bool fs_list_step(struct fs_op *op, bool *eof)
{
	size_t plen = strlen(op->key);
	for (unsigned budget = FS_LIST_BUDGET; budget > 0 && op->ndirs > 0; budget--) {
		struct fs_dir *top = &op->dirs[op->ndirs - 1];
		errno = 0;
		struct dirent *de = readdir(top->d);
		if (!de) {
			if (errno) {
				fs_set_error(op, STORE_ERR_IO, "list '%s': readdir failed: %s",
				             op->key, strerror(errno));
				return false;
			}
			closedir(top->d);
			free(top->rel);
			op->ndirs--;
			continue;
		}
		const char *name = de->d_name;
		if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0 ||
		    strncmp(name, STORE_TMP_PREFIX, sizeof(STORE_TMP_PREFIX) - 1) == 0)
			continue;
		char *full = xasprintf("%s%s", top->rel, name);
		size_t flen = strlen(full);
		struct stat st;
		if (fstatat(dirfd(top->d), name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			free(full); /* gone since readdir: skip it */
			continue;
		}
		if (S_ISDIR(st.st_mode)) {
			/* Descend only where keys can still match the prefix. */
			size_t n = flen + 1 < plen ? flen + 1 : plen;
			char *rel = xasprintf("%s/", full);
			free(full);
			if (strncmp(rel, op->key, n) != 0) {
				free(rel);
				continue;
			}
			int fd = openat(dirfd(top->d), name,
			                O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (fd < 0) {
				if (fs_errno_missing(errno)) {
					free(rel);
					continue;
				}
				fs_set_error(op, STORE_ERR_IO, "list '%s': cannot open '%s': %s",
				             op->key, rel, strerror(errno));
				free(rel);
				return false;
			}
			if (!fs_list_push(op, fd, rel)) /* moves op->dirs: top is stale now */
				return false;
			continue;
		}
		if (!S_ISREG(st.st_mode) || strncmp(full, op->key, plen) != 0 ||
		    !store_key_valid(full, flen, NULL)) {
			free(full);
			continue;
		}
		if (op->nentries == STORE_LIST_MAX) {
			free(full);
			fs_set_error(op, STORE_ERR_TOO_LARGE, "list '%s': more than %d objects",
			             op->key, STORE_LIST_MAX);
			return false;
		}
		if (op->nentries == op->capentries) {
			op->capentries = op->capentries ? op->capentries * 2 : 16;
			op->entries = xrealloc(op->entries, op->capentries * sizeof(*op->entries));
		}
		op->entries[op->nentries++] = (struct store_list_entry){
		        .key = full, .size = (uint64_t)st.st_size, .mtime_ms = fs_mtime_ms(&st)};
	}
	*eof = op->ndirs == 0;
	if (*eof && op->nentries > 1)
		qsort(op->entries, op->nentries, sizeof(*op->entries), fs_entry_cmp);
	return true;
}

/* One loop pass of op: one step's worth of blocking work. */
static void fs_op_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct fs_op *op = arg;
	bool eof = false;
	if (op->refused) {
		fs_op_finish(op, false);
		return;
	}
	switch (op->kind) {
	case FS_HEAD: fs_do_head(op); return;
	case FS_DELETE: fs_do_delete(op); return;
	case FS_LIST:
		if (op->step == FS_START) {
			if (!fs_list_start(op)) {
				fs_op_finish(op, false);
				return;
			}
			op->step = FS_COPY;
		}
		if (!fs_list_step(op, &eof)) {
			fs_op_finish(op, false);
		} else if (eof) {
			fs_op_finish(op, true);
		} else {
			fs_op_schedule(op);
		}
		return;
	default: break;
	}

	bool ok = true;
	switch (op->step) {
	case FS_START:
		ok = fs_do_start(op);
		op->step = FS_COPY;
		break;
	case FS_COPY:
		ok = fs_do_copy(op, &eof);
		if (ok && eof) {
			if (op->kind == FS_GET_BUF) {
				op->st.st_size = (off_t)op->dst_mem.len;
				fs_op_finish(op, true);
				return;
			}
			if (op->kind == FS_GET_RANGE) {
				fs_op_finish(op, true);
				return;
			}
			op->step = op->kind == FS_GET_FILE ? FS_COMMIT : FS_SYNC;
		}
		break;
	case FS_SYNC:
		/* Wait for the pass's shared flush (fs_sync_cb). */
		TAILQ_INSERT_TAIL(&op->fs->syncq, op, sync_link);
		op->in_sync = true;
		event_active(op->fs->sync_ev, EV_TIMEOUT, 0);
		return;
	case FS_COMMIT: fs_op_finish(op, fs_do_commit(op, true)); return;
	case FS_SYNCED: fs_op_finish(op, !op->sync_failed); return;
	}
	if (!ok)
		fs_op_finish(op, false);
	else
		fs_op_schedule(op);
}

/* The shared flush of the puts that reached it in this pass. It runs after
 * the pass's other events (lowest priority); no callback runs from here:
 * every op finishes from its own timer. */
static void fs_sync_cb(evutil_socket_t fd, short what, void *arg)
{
	struct file_store *fs = arg;
	(void)fd;
	(void)what;
	struct fs_op *op = TAILQ_FIRST(&fs->syncq);
	if (op == NULL)
		return;
	if (TAILQ_NEXT(op, sync_link) == NULL) {
		/* One put: its own fdatasync, then rename + directory fsync. */
		TAILQ_REMOVE(&fs->syncq, op, sync_link);
		op->in_sync = false;
		if (fdatasync(op->dst_fd) < 0) {
			fs_set_error(op, STORE_ERR_IO, "put '%s': fdatasync failed: %s", op->key,
			             strerror(errno));
			op->sync_failed = true;
			op->step = FS_SYNCED;
		} else {
			op->step = FS_COMMIT;
		}
		fs_op_schedule(op);
		return;
	}
	int e = syncfs(fs->rootfd) < 0 ? errno : 0;
	TAILQ_FOREACH(op, &fs->syncq, sync_link)
	{
		if (e) {
			fs_set_error(op, STORE_ERR_IO, "put '%s': syncfs failed: %s", op->key,
			             strerror(e));
			op->sync_failed = true;
		} else if (!fs_do_commit(op, false)) {
			op->sync_failed = true;
		}
	}
	if (!e && syncfs(fs->rootfd) < 0) {
		e = errno;
		TAILQ_FOREACH(op, &fs->syncq, sync_link)
		{
			if (!op->sync_failed) {
				fs_set_error(op, STORE_ERR_IO, "put '%s': syncfs failed: %s",
				             op->key, strerror(e));
				op->sync_failed = true;
			}
		}
	}
	while ((op = TAILQ_FIRST(&fs->syncq)) != NULL) {
		TAILQ_REMOVE(&fs->syncq, op, sync_link);
		op->in_sync = false;
		op->step = FS_SYNCED;
		fs_op_schedule(op);
	}
}

static struct file_store *fs_of(struct store *s)
{
	return (struct file_store *)s;
}

/* A new op; a bad key is reported from the loop like any other error. */
static struct fs_op *fs_op_start(struct store *s, enum fs_kind kind, const char *opname,
                                 const char *key, void *arg)
{
	struct fs_op *op = fs_op_new(fs_of(s), kind, opname, key, arg);
	const char *why = NULL;
	bool valid = kind == FS_LIST ? key && store_prefix_valid(key, strlen(key), &why)
	                             : key && store_key_valid(key, strlen(key), &why);
	op->refused = !valid;
	if (!valid)
		fs_set_error(op, STORE_ERR_INVALID_KEY, "%s: invalid %s: %s", opname,
		             kind == FS_LIST ? "prefix" : "key", why ? why : "NULL");
	return op;
}

static struct store_op *fs_put_file(struct store *s, const char *key, const char *local_path,
                                    const char *content_type, store_done_cb cb, void *arg)
{
	struct fs_op *op = fs_op_start(s, FS_PUT_FILE, "put", key, arg);
	op->cb.done = cb;
	op->local_path = xstrdup(local_path ? local_path : "");
	if (!op->refused && !local_path) {
		op->refused = true;
		fs_set_error(op, STORE_ERR_INVALID_ARG, "put '%s': no local path", op->key);
	}
	return &op->base;
}

static struct store_op *fs_put_buf(struct store *s, const char *key, const void *data, size_t len,
                                   const char *content_type, store_done_cb cb, void *arg)
{
	struct fs_op *op = fs_op_start(s, FS_PUT_BUF, "put", key, arg);
	op->cb.done = cb;
	op->src_mem = xmalloc(len ? len : 1);
	if (len)
		memcpy(op->src_mem, data, len);
	op->src_len = len;
	return &op->base;
}

static struct store_op *fs_get_file(struct store *s, const char *key, const char *local_path,
                                    store_done_cb cb, void *arg)
{
	struct fs_op *op = fs_op_start(s, FS_GET_FILE, "get", key, arg);
	op->cb.done = cb;
	op->local_path = xstrdup(local_path ? local_path : "");
	return &op->base;
}

static struct store_op *fs_get_buf(struct store *s, const char *key, size_t max_bytes,
                                   store_get_buf_cb cb, void *arg)
{
	struct fs_op *op = fs_op_start(s, FS_GET_BUF, "get", key, arg);
	op->cb.get_buf = cb;
	op->max_bytes = max_bytes;
	return &op->base;
}

static struct store_op *fs_get_range(struct store *s, const char *key, uint64_t offset,
                                     size_t max_bytes, store_get_buf_cb cb, void *arg)
{
	struct fs_op *op = fs_op_start(s, FS_GET_RANGE, "get_range", key, arg);
	op->cb.get_buf = cb;
	op->range_off = offset;
	op->max_bytes = max_bytes;
	return &op->base;
}

static struct store_op *fs_head(struct store *s, const char *key, store_head_cb cb, void *arg)
{
	struct fs_op *op = fs_op_start(s, FS_HEAD, "head", key, arg);
	op->cb.head = cb;
	return &op->base;
}

static struct store_op *fs_list(struct store *s, const char *prefix, store_list_cb cb, void *arg)
{
	struct fs_op *op = fs_op_start(s, FS_LIST, "list", prefix, arg);
	op->cb.list = cb;
	return &op->base;
}

static struct store_op *fs_del(struct store *s, const char *key, store_done_cb cb, void *arg)
{
	struct fs_op *op = fs_op_start(s, FS_DELETE, "delete", key, arg);
	op->cb.done = cb;
	return &op->base;
}

static void fs_cancel(struct store_op *sop)
{
	struct fs_op *op = (struct fs_op *)sop;
	if (op->delivering)
		return; /* its callback is running; the op goes when it returns */
	TAILQ_REMOVE(&op->fs->ops, op, link);
	fs_count(op->fs, op->opname, "cancelled", 0);
	fs_op_free(op);
}

static void fs_free(struct store *s)
{
	struct file_store *fs = fs_of(s);
	if (fs->depth == 0) {
		fs_destroy(fs);
		return;
	}
	/* Inside a callback: cancel the others now, the running one and the
	 * store itself go when it returns (fs_op_finish). */
	struct fs_op *op, *next;
	for (op = TAILQ_FIRST(&fs->ops); op; op = next) {
		next = TAILQ_NEXT(op, link);
		if (!op->delivering)
			fs_cancel(&op->base);
	}
	fs->dead = true;
}

/* Presigned links. ------------------------------------------------------------ */

/* HMAC-SHA256(secret, domain "\n" exp "\n" key): exp is digits, so the
 * message splits one way only. */
/* GET links: "stageline-object-get-v1\n<exp>\n<key>"; PUT links (put true):
 * "stageline-object-put-v1\n<exp>\n<size>\n<key>". */
static bool fs_sign_op(const struct file_store *fs, bool put, const char *key, int64_t exp,
                       uint64_t size, unsigned char out[32])
{
	struct buf msg = BUF_INIT;
	if (put)
		buf_printf(&msg, "%s\n%" PRId64 "\n%" PRIu64 "\n%s", FS_SIG_DOMAIN_PUT, exp, size,
		           key);
	else
		buf_printf(&msg, "%s\n%" PRId64 "\n%s", FS_SIG_DOMAIN, exp, key);
	unsigned int n = 0;
	bool ok = HMAC(EVP_sha256(), fs->secret, (int)fs->secret_len,
	               (const unsigned char *)msg.data, msg.len, out, &n) != NULL &&
	          n == 32;
	buf_free(&msg);
	return ok;
}

static bool fs_presign(struct store *s, bool put, const char *key, int64_t ttl_s, int64_t now_s,
                       uint64_t size, char **out_url, struct store_error *err);

static bool fs_presign_get(struct store *s, const char *key, int64_t ttl_s, int64_t now_s,
                           char **out_url, struct store_error *err)
{
	return fs_presign(s, false, key, ttl_s, now_s, 0, out_url, err);
}

static bool fs_presign_put(struct store *s, const char *key, int64_t ttl_s, int64_t now_s,
                           uint64_t size, char **out_url, struct store_error *err)
{
	return fs_presign(s, true, key, ttl_s, now_s, size, out_url, err);
}

static bool fs_presign(struct store *s, bool put, const char *key, int64_t ttl_s, int64_t now_s,
                       uint64_t size, char **out_url, struct store_error *err)
{
	struct file_store *fs = fs_of(s);
	int64_t start = clock_mono_us();
	struct store_error dummy;
	if (!err)
		err = &dummy;
	const char *why = NULL;
	*out_url = NULL;
	if (!key || !store_key_valid(key, strlen(key), &why)) {
		err->kind = STORE_ERR_INVALID_KEY;
		snprintf(err->message, sizeof(err->message), "presign: invalid key: %s",
		         why ? why : "NULL");
	} else if (fs->secret_len == 0) {
		err->kind = STORE_ERR_INVALID_ARG;
		snprintf(err->message, sizeof(err->message),
		         "presign '%s': links are off (store.url_secret is empty)", key);
	} else if (ttl_s < 1 || ttl_s > STORE_PRESIGN_MAX_TTL_S) {
		err->kind = STORE_ERR_INVALID_ARG;
		snprintf(err->message, sizeof(err->message),
		         "presign '%s': ttl %" PRId64 "s is not within 1..%ds", key, ttl_s,
		         STORE_PRESIGN_MAX_TTL_S);
	} else {
		unsigned char mac[32];
		int64_t exp = now_s + ttl_s;
		if (fs_sign_op(fs, put, key, exp, size, mac)) {
			struct buf url = BUF_INIT;
			buf_adds(&url, "/v1/objects/");
			for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
				if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
				    (*p >= '0' && *p <= '9') || strchr("-._~/", *p))
					buf_addc(&url, (char)*p);
				else
					buf_printf(&url, "%%%02X", *p); /* RFC 3986: upper case */
			}
			buf_printf(&url, "?exp=%" PRId64, exp);
			if (put)
				buf_printf(&url, "&size=%" PRIu64, size);
			char sig[2 * sizeof(mac) + 1];
			buf_hex(sig, mac, sizeof(mac));
			buf_printf(&url, "&sig=%s", sig);
			*out_url = buf_steal(&url);
			fs_count(fs, "presign", "success", start);
			return true;
		}
		err->kind = STORE_ERR_IO;
		snprintf(err->message, sizeof(err->message), "presign '%s': HMAC failed", key);
	}
	fs_count(fs, "presign", "error", start);
	return false;
}

static int fs_hex_val(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static bool fs_verify(struct store *s, bool put, const char *key, int64_t exp, uint64_t size,
                      const char *sig, int64_t now_s);

static bool fs_presign_verify(struct store *s, const char *key, int64_t exp, const char *sig,
                              int64_t now_s)
{
	return fs_verify(s, false, key, exp, 0, sig, now_s);
}

static bool fs_presign_verify_put(struct store *s, const char *key, int64_t exp, uint64_t size,
                                  const char *sig, int64_t now_s)
{
	return fs_verify(s, true, key, exp, size, sig, now_s);
}

static bool fs_verify(struct store *s, bool put, const char *key, int64_t exp, uint64_t size,
                      const char *sig, int64_t now_s)
{
	struct file_store *fs = fs_of(s);
	if (fs->secret_len == 0 || !key || !sig || !store_key_valid(key, strlen(key), NULL))
		return false;
	if (now_s > exp || exp - now_s > STORE_PRESIGN_MAX_TTL_S)
		return false;
	if (strlen(sig) != 64)
		return false;
	unsigned char got[32], want[32];
	for (size_t i = 0; i < 32; i++) {
		int hi = fs_hex_val(sig[2 * i]), lo = fs_hex_val(sig[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return false;
		got[i] = (unsigned char)(hi << 4 | lo);
	}
	return fs_sign_op(fs, put, key, exp, size, want) &&
	       CRYPTO_memcmp(got, want, sizeof(want)) == 0;
}

static const struct store_ops file_store_ops = {
        .name = FS_SERVICE,
        .put_file = fs_put_file,
        .put_buf = fs_put_buf,
        .get_file = fs_get_file,
        .get_buf = fs_get_buf,
        .get_range = fs_get_range,
        .head = fs_head,
        .list = fs_list,
        .del = fs_del,
        .cancel = fs_cancel,
        .presign_get = fs_presign_get,
        .presign_verify = fs_presign_verify,
        .presign_put = fs_presign_put,
        .presign_verify_put = fs_presign_verify_put,
        .free = fs_free,
};

struct store *store_new_file(struct event_base *base, const char *root_dir, const char *url_secret,
                             char **err)
{
	if (!root_dir || root_dir[0] == '\0') {
		*err = xstrdup("file store: the root directory (store.path) is empty");
		return NULL;
	}
	char *abs;
	if (root_dir[0] == '/') {
		abs = xstrdup(root_dir);
	} else {
		char *cwd = getcwd(NULL, 0);
		if (!cwd) {
			*err = xasprintf("file store: cannot resolve '%s': %s", root_dir,
			                 strerror(errno));
			return NULL;
		}
		abs = xasprintf("%s/%s", cwd, root_dir);
		free(cwd);
	}
	int fd = -1;
	if (!mkdir_p(abs, FS_DIR_MODE) ||
	    (fd = open(abs, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
		*err = xasprintf("file store: cannot create or open '%s': %s", abs,
		                 strerror(errno));
		free(abs);
		return NULL;
	}
	char *real = realpath(abs, NULL);
	if (real) {
		free(abs);
		abs = xstrdup(real); /* ours to free with free(), like every string here */
		free(real);
	}

	struct file_store *fs = xcalloc(1, sizeof(*fs));
	fs->base.ops = &file_store_ops;
	fs->evbase = base;
	fs->root = abs;
	fs->rootfd = fd;
	fs->secret_len = url_secret ? strlen(url_secret) : 0;
	fs->secret = xstrdup(url_secret ? url_secret : "");
	TAILQ_INIT(&fs->ops);
	TAILQ_INIT(&fs->syncq);
	fs->sync_ev = event_new(base, -1, 0, fs_sync_cb, fs);
	event_priority_set(fs->sync_ev, event_base_get_npriorities(base) - 1);
	log_info("store.open", "file store ready", LF_STR("root", fs->root),
	         LF_BOOL("links", fs->secret_len > 0));
	return &fs->base;
}
