/* storecli: drives one store backend (store.h) from the command line for the
 * integration tests and the S3 benchmark. It makes the store, runs one
 * operation on its own event loop, prints the result as one JSON line on
 * stdout and exits: 0 on success, 1 when the operation failed, 2 on bad
 * usage.
 *
 *   storecli [options] put KEY FILE        store_put_file()
 *   storecli [options] putbuf KEY TEXT     store_put_buf()
 *   storecli [options] putmany PREFIX FILE N   N puts of FILE as PREFIX0,
 *                                          PREFIX1, ..., one line each; at most
 *                                          --parallel P (1) at a time, the next
 *                                          one --interval-ms I (0) after a put ends
 *   storecli [options] get KEY FILE        store_get_file()
 *   storecli [options] getbuf KEY MAX      store_get_buf()
 *   storecli [options] getrange KEY OFF MAX  store_get_range()
 *   storecli [options] head KEY
 *   storecli [options] list PREFIX         {"n": .., "entries": [{key,size,mtime_ms}]}
 *   storecli [options] del KEY
 *   storecli [options] presign KEY TTL     {"url": ..}
 *
 * Options: --backend s3|file (s3), --root DIR (file), --endpoint URL,
 * --bucket B, --region R, --prefix P, --access-key AK, --secret SK,
 * --session-token T, --path-style / --virtual-host (path style by default),
 * --tries N, --base-ms N, --cap-ms N, --connect-timeout-ms N,
 * --io-timeout-ms N, --ca-file F, --log-level L (warn). Anything left empty
 * falls back to the AWS_* environment as store_new_s3() documents.
 *
 * Every result line has "op", "ok", "elapsed_ms", "rss_kb" (VmRSS) and
 * "hwm_kb" (VmHWM, the peak), "baseline_hwm_kb" (VmHWM once the store was
 * made, before the operation), and on failure "error": {"kind", "message"}.
 * get_buf and get_range add "len", "size", "sha256" and "data_b64". */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/evp.h>

#include "core/buf.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/xmalloc.h"
#include "store/store.h"

struct run {
	struct event_base *base;
	struct store *store;
	const char *op;
	char **args;
	int nargs;
	long many, many_scheduled, many_started, many_done, parallel, interval_ms;
	int failures;
	bool done;
	int64_t start_us;
	long baseline_hwm_kb;
};

static long status_kb(const char *field)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long v = -1;
	size_t n = strlen(field);
	while (f && fgets(line, sizeof(line), f))
		if (strncmp(line, field, n) == 0 && line[n] == ':')
			v = strtol(line + n + 1, NULL, 10);
	if (f)
		fclose(f);
	return v;
}

/* Starts the JSON line for a result. */
static void head_json(struct run *r, struct buf *b, const struct store_error *err, const char *key)
{
	buf_printf(b, "{\"op\":\"%s\",\"ok\":%s,\"key\":", r->op, err ? "false" : "true");
	buf_add_json_str(b, key ? key : "", key ? strlen(key) : 0);
	buf_printf(b, ",\"elapsed_ms\":%.3f,\"rss_kb\":%ld,\"hwm_kb\":%ld,\"baseline_hwm_kb\":%ld",
	           (double)(clock_mono_us() - r->start_us) / 1000.0, status_kb("VmRSS"),
	           status_kb("VmHWM"), r->baseline_hwm_kb);
	if (err) {
		buf_printf(b, ",\"error\":{\"kind\":\"%s\",\"message\":",
		           store_error_kind_name(err->kind));
		buf_add_json_str(b, err->message, strlen(err->message));
		buf_adds(b, "}");
		r->failures++;
	}
}

static void emit(struct buf *b)
{
	buf_adds(b, "}\n");
	fwrite(b->data, 1, b->len, stdout);
	fflush(stdout);
	buf_free(b);
}

static void next_cb(evutil_socket_t fd, short what, void *arg);

struct put_one {
	struct run *r;
	char *key;
};

static void done_cb(const struct store_error *err, void *arg)
{
	struct run *r = arg;
	struct buf b = BUF_INIT;
	head_json(r, &b, err, r->args[0]);
	emit(&b);
	r->done = true;
}

static void many_done_cb(const struct store_error *err, void *arg)
{
	struct put_one *p = arg;
	struct run *r = p->r;
	struct buf b = BUF_INIT;
	head_json(r, &b, err, p->key);
	emit(&b);
	free(p->key);
	free(p);
	if (++r->many_done == r->many) {
		r->done = true;
		return;
	}
	if (r->many_scheduled < r->many) {
		r->many_scheduled++; /* counted now: several may end before it runs */
		struct timeval tv = {.tv_sec = r->interval_ms / 1000,
		                     .tv_usec = (r->interval_ms % 1000) * 1000};
		event_base_once(r->base, -1, EV_TIMEOUT, next_cb, r, &tv);
	}
}

static void head_cb(const struct store_error *err, const struct store_object_info *info, void *arg)
{
	struct run *r = arg;
	struct buf b = BUF_INIT;
	head_json(r, &b, err, r->args[0]);
	if (info) {
		buf_printf(&b, ",\"size\":%" PRIu64 ",\"mtime_ms\":%" PRId64 ",\"content_type\":",
		           info->size, info->mtime_ms);
		buf_add_json_str(&b, info->content_type, strlen(info->content_type));
	}
	emit(&b);
	r->done = true;
}

static void get_buf_cb(const struct store_error *err, const struct store_object_info *info,
                       const char *data, size_t len, void *arg)
{
	struct run *r = arg;
	struct buf b = BUF_INIT;
	head_json(r, &b, err, r->args[0]);
	if (info) {
		unsigned char d[32];
		unsigned int dl = 0;
		EVP_Digest(data, len, d, &dl, EVP_sha256(), NULL);
		buf_printf(&b, ",\"len\":%zu,\"size\":%" PRIu64 ",\"sha256\":\"", len, info->size);
		for (int i = 0; i < 32; i++)
			buf_printf(&b, "%02x", d[i]);
		buf_adds(&b, "\",\"data_b64\":\"");
		char *enc = xmalloc(4 * ((len + 2) / 3) + 1);
		int n = EVP_EncodeBlock((unsigned char *)enc, (const unsigned char *)data,
		                        (int)len);
		buf_add(&b, enc, (size_t)n);
		free(enc);
		buf_adds(&b, "\"");
	}
	emit(&b);
	r->done = true;
}

static void list_cb(const struct store_error *err, const struct store_list_entry *entries, size_t n,
                    void *arg)
{
	struct run *r = arg;
	struct buf b = BUF_INIT;
	head_json(r, &b, err, r->args[0]);
	if (!err) {
		buf_printf(&b, ",\"n\":%zu,\"entries\":[", n);
		for (size_t i = 0; i < n; i++) {
			buf_adds(&b, i ? ",{\"key\":" : "{\"key\":");
			buf_add_json_str(&b, entries[i].key, strlen(entries[i].key));
			buf_printf(&b, ",\"size\":%" PRIu64 ",\"mtime_ms\":%" PRId64 "}",
			           entries[i].size, entries[i].mtime_ms);
		}
		buf_adds(&b, "]");
	}
	emit(&b);
	r->done = true;
}

static bool need(struct run *r, int n)
{
	if (r->nargs != n) {
		fprintf(stderr, "storecli: %s takes %d argument(s)\n", r->op, n);
		return false;
	}
	return true;
}

static void start_next(struct run *r)
{
	struct put_one *p = xcalloc(1, sizeof(*p));
	p->r = r;
	p->key = xasprintf("%s%ld", r->args[0], r->many_started++);
	(void)store_put_file(r->store, p->key, r->args[1], NULL, many_done_cb, p);
}

static void next_cb(evutil_socket_t fd, short what, void *arg)
{
	start_next(arg);
}

static bool start(struct run *r)
{
	const char *op = r->op;
	char **a = r->args;
	if (strcmp(op, "put") == 0 && need(r, 2)) {
		(void)store_put_file(r->store, a[0], a[1], NULL, done_cb, r);
	} else if (strcmp(op, "putbuf") == 0 && need(r, 2)) {
		(void)store_put_buf(r->store, a[0], a[1], strlen(a[1]), "text/plain", done_cb, r);
	} else if (strcmp(op, "putmany") == 0 && need(r, 3)) {
		r->many = strtol(a[2], NULL, 10);
		if (r->many < 1)
			return false;
		for (long i = 0; i < r->parallel && i < r->many; i++) {
			r->many_scheduled++;
			start_next(r);
		}
	} else if (strcmp(op, "get") == 0 && need(r, 2)) {
		(void)store_get_file(r->store, a[0], a[1], done_cb, r);
	} else if (strcmp(op, "getbuf") == 0 && need(r, 2)) {
		(void)store_get_buf(r->store, a[0], strtoull(a[1], NULL, 10), get_buf_cb, r);
	} else if (strcmp(op, "getrange") == 0 && need(r, 3)) {
		(void)store_get_range(r->store, a[0], strtoull(a[1], NULL, 10),
		                      strtoull(a[2], NULL, 10), get_buf_cb, r);
	} else if (strcmp(op, "head") == 0 && need(r, 1)) {
		(void)store_head(r->store, a[0], head_cb, r);
	} else if (strcmp(op, "list") == 0 && need(r, 1)) {
		(void)store_list(r->store, a[0], list_cb, r);
	} else if (strcmp(op, "del") == 0 && need(r, 1)) {
		(void)store_delete(r->store, a[0], done_cb, r);
	} else if (strcmp(op, "presign") == 0 && need(r, 2)) {
		char *url = NULL;
		struct store_error err;
		bool ok = store_presign_get(r->store, a[0], strtoll(a[1], NULL, 10), &url, &err);
		struct buf b = BUF_INIT;
		head_json(r, &b, ok ? NULL : &err, a[0]);
		if (ok) {
			buf_adds(&b, ",\"url\":");
			buf_add_json_str(&b, url, strlen(url));
		}
		free(url);
		emit(&b);
		r->done = true;
	} else {
		return false;
	}
	return true;
}

static void usage(void)
{
	fprintf(stderr, "usage: storecli [options] put|putbuf|putmany|get|getbuf|getrange|head|"
	                "list|del|presign ARGS (see tests/harness/storecli.c)\n");
}

int main(int argc, char **argv)
{
	struct store_s3_options o = {.path_style = true};
	const char *backend = "s3", *root = NULL, *level = "warn";
	long parallel = 1, interval_ms = 0;
	enum {
		O_BACKEND = 256,
		O_ROOT,
		O_ENDPOINT,
		O_BUCKET,
		O_REGION,
		O_PREFIX,
		O_AK,
		O_SK,
		O_TOKEN,
		O_PATH,
		O_VHOST,
		O_TRIES,
		O_BASE,
		O_CAP,
		O_CTO,
		O_IOTO,
		O_CA,
		O_LOG,
		O_PARALLEL,
		O_INTERVAL
	};
	static const struct option longopts[] = {
	        {"backend", required_argument, NULL, O_BACKEND},
	        {"root", required_argument, NULL, O_ROOT},
	        {"endpoint", required_argument, NULL, O_ENDPOINT},
	        {"bucket", required_argument, NULL, O_BUCKET},
	        {"region", required_argument, NULL, O_REGION},
	        {"prefix", required_argument, NULL, O_PREFIX},
	        {"access-key", required_argument, NULL, O_AK},
	        {"secret", required_argument, NULL, O_SK},
	        {"session-token", required_argument, NULL, O_TOKEN},
	        {"path-style", no_argument, NULL, O_PATH},
	        {"virtual-host", no_argument, NULL, O_VHOST},
	        {"tries", required_argument, NULL, O_TRIES},
	        {"base-ms", required_argument, NULL, O_BASE},
	        {"cap-ms", required_argument, NULL, O_CAP},
	        {"connect-timeout-ms", required_argument, NULL, O_CTO},
	        {"io-timeout-ms", required_argument, NULL, O_IOTO},
	        {"ca-file", required_argument, NULL, O_CA},
	        {"log-level", required_argument, NULL, O_LOG},
	        {"parallel", required_argument, NULL, O_PARALLEL},
	        {"interval-ms", required_argument, NULL, O_INTERVAL},
	        {NULL, 0, NULL, 0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case O_BACKEND: backend = optarg; break;
		case O_ROOT: root = optarg; break;
		case O_ENDPOINT: o.endpoint = optarg; break;
		case O_BUCKET: o.bucket = optarg; break;
		case O_REGION: o.region = optarg; break;
		case O_PREFIX: o.prefix = optarg; break;
		case O_AK: o.access_key_id = optarg; break;
		case O_SK: o.secret_access_key = optarg; break;
		case O_TOKEN: o.session_token = optarg; break;
		case O_PATH: o.path_style = true; break;
		case O_VHOST: o.path_style = false; break;
		case O_TRIES: o.max_tries = (unsigned)strtoul(optarg, NULL, 10); break;
		case O_BASE: o.backoff_base_ms = (unsigned)strtoul(optarg, NULL, 10); break;
		case O_CAP: o.backoff_cap_ms = (unsigned)strtoul(optarg, NULL, 10); break;
		case O_CTO: o.connect_timeout_ms = strtoll(optarg, NULL, 10); break;
		case O_IOTO: o.io_timeout_ms = strtoll(optarg, NULL, 10); break;
		case O_CA: o.ca_file = optarg; break;
		case O_LOG: level = optarg; break;
		case O_PARALLEL: parallel = strtol(optarg, NULL, 10); break;
		case O_INTERVAL: interval_ms = strtol(optarg, NULL, 10); break;
		default: usage(); return 2;
		}
	}
	if (optind >= argc) {
		usage();
		return 2;
	}
	signal(SIGPIPE, SIG_IGN); /* httpc writes to sockets; as the daemon does */
	enum log_level lvl;
	if (!log_level_parse(level, &lvl) || !log_open(NULL, LOG_FMT_JSON, lvl)) {
		fprintf(stderr, "storecli: bad --log-level\n");
		return 2;
	}
	struct run r = {.op = argv[optind],
	                .args = argv + optind + 1,
	                .nargs = argc - optind - 1,
	                .parallel = parallel > 0 ? parallel : 1,
	                .interval_ms = interval_ms > 0 ? interval_ms : 0};
	r.base = event_base_new();
	char *err = NULL;
	if (strcmp(backend, "file") == 0)
		r.store = store_new_file(r.base, root ? root : "", "storecli-secret", &err);
	else
		r.store = store_new_s3(r.base, &o, &err);
	if (!r.store) {
		printf("{\"op\":\"%s\",\"ok\":false,\"error\":{\"kind\":\"setup\",\"message\":",
		       r.op);
		struct buf b = BUF_INIT;
		buf_add_json_str(&b, err, strlen(err));
		printf("%s}}\n", b.data);
		buf_free(&b);
		free(err);
		event_base_free(r.base);
		return 1;
	}
	r.baseline_hwm_kb = status_kb("VmHWM");
	r.start_us = clock_mono_us();
	if (!start(&r)) {
		usage();
		store_free(r.store);
		event_base_free(r.base);
		return 2;
	}
	while (!r.done)
		if (event_base_loop(r.base, EVLOOP_ONCE) != 0)
			break;
	store_free(r.store);
	event_base_free(r.base);
	metrics_default_free();
	log_close();
	return r.done && r.failures == 0 ? 0 : 1;
}
