/* Unit tests for core/config: defaults, the YAML loader and its error
 * positions, environment and flag layers, the value parsers, validation and
 * path resolution. Also checks that contrib/stageline.yaml holds exactly the
 * defaults and that docs/configuration.md names every key. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <libfyaml.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/config.h"
#include "core/xmalloc.h"

/* Writes text to a new file in dir (or /tmp); caller unlinks and frees. */
static char *write_tmp_in(const char *dir, const char *text)
{
	char *path = xasprintf("%s/test_config_XXXXXX.yaml", dir ? dir : "/tmp");
	int fd = mkstemps(path, 5);
	assert_true(fd >= 0);
	size_t len = strlen(text);
	assert_int_equal(write(fd, text, len), (ssize_t)len);
	close(fd);
	return path;
}

static char *write_tmp(const char *text)
{
	return write_tmp_in(NULL, text);
}

static void remove_tmp(char *path)
{
	unlink(path);
	free(path);
}

/* Index of the first error containing needle, or -1. */
static int find_error(const struct config_errors *errs, const char *needle)
{
	for (size_t i = 0; i < errs->n; i++) {
		if (strstr(errs->msgs[i], needle) != NULL)
			return (int)i;
	}
	return -1;
}

static void dump_errors(const struct config_errors *errs)
{
	for (size_t i = 0; i < errs->n; i++)
		print_message("  error: %s\n", errs->msgs[i]);
}

/* Asserts that an error reads exactly "<path>:<rest>". */
static void assert_error_at(const struct config_errors *errs, const char *path, const char *rest)
{
	char *want = xasprintf("%s:%s", path, rest);
	bool found = false;
	for (size_t i = 0; i < errs->n && !found; i++)
		found = strcmp(errs->msgs[i], want) == 0;
	if (!found) {
		print_message("missing error: %s\n", want);
		dump_errors(errs);
	}
	free(want);
	assert_true(found);
}

/* Loads text as a config file; returns the loader's verdict. */
static bool load_text(struct config *cfg, const char *text, struct config_errors *errs,
                      char **pathp)
{
	char *path = write_tmp(text);
	bool ok = config_load_file(cfg, path, errs);
	if (pathp)
		*pathp = path;
	else
		remove_tmp(path);
	return ok;
}

static void test_defaults(void **state)
{
	struct config *cfg = config_new();
	assert_null(cfg->path);
	char *cwd = get_current_dir_name();
	assert_string_equal(cfg->dir, cwd);
	free(cwd);

	assert_string_equal(cfg->server.listen, "127.0.0.1:8080");
	assert_int_equal(cfg->server.shutdown_grace_ms, 30000);
	assert_string_equal(cfg->server.metrics_listen, "");
	assert_true(cfg->server.metrics);
	assert_string_equal(cfg->database.url, "postgresql:///stageline?host=/var/run/postgresql");
	assert_int_equal(cfg->database.pool, 8);
	assert_string_equal(cfg->store.backend, "file");
	assert_string_equal(cfg->store.path, "./var/objects");
	assert_string_equal(cfg->store.url_secret, "");
	assert_int_equal(cfg->store.url_ttl_ms, 300000);
	assert_string_equal(cfg->store.s3.endpoint, "");
	assert_string_equal(cfg->store.s3.bucket, "");
	assert_string_equal(cfg->store.s3.region, "us-east-1");
	assert_string_equal(cfg->store.s3.prefix, "");
	assert_string_equal(cfg->store.s3.access_key_id, "");
	assert_string_equal(cfg->store.s3.secret_access_key, "");
	assert_false(cfg->store.s3.path_style);
	assert_string_equal(cfg->log.format, "json");
	assert_string_equal(cfg->log.level, "info");
	assert_string_equal(cfg->log.file, "");
	assert_true(cfg->auth.enabled);
	assert_int_equal(cfg->scheduler.max_concurrency, 64);
	assert_int_equal(cfg->scheduler.lease_ms, 30000);
	assert_int_equal(cfg->scheduler.heartbeat_ms, 10000);
	assert_int_equal(cfg->scheduler.rescue_every_ms, 15000);
	assert_int_equal(cfg->scheduler.poll_ms, 5000);
	assert_string_equal(cfg->scheduler.scratch_dir, "./var/scratch");
	assert_int_equal(cfg->quota.max_concurrent_jobs, 0);
	assert_int_equal(cfg->quota.max_queued_jobs, 0);
	assert_int_equal(cfg->quota.max_input_bytes, 0);
	assert_true(cfg->quota.submissions_per_second == 0.0);
	assert_int_equal(cfg->limits.max_input_bytes, 16 * 1024 * 1024);
	assert_int_equal(cfg->limits.max_header_bytes, 32 * 1024);
	assert_int_equal(cfg->limits.max_header_fields, 100);
	assert_int_equal(cfg->limits.header_timeout_ms, 10000);
	assert_int_equal(cfg->limits.idle_timeout_ms, 60000);
	assert_int_equal(cfg->limits.max_params_bytes, 1024 * 1024);
	assert_int_equal(cfg->limits.max_stages, 64);
	assert_int_equal(cfg->limits.max_frame_bytes, 16 * 1024 * 1024);
	assert_string_equal(cfg->pipelines_dir, "");
	assert_null(cfg->doc);
	assert_null(cfg->modules);
	assert_null(cfg->pipelines);

	struct config_errors errs = {0};
	assert_true(config_validate(cfg, &errs));
	assert_int_equal(errs.n, 0);
	config_free(cfg);
	config_free(NULL);
}

static void test_keys_and_env_names(void **state)
{
	size_t n = 0;
	while (config_keys[n])
		n++;
	assert_int_equal(n, 58);
	for (size_t i = 0; i < n; i++) {
		for (size_t j = i + 1; j < n; j++) {
			assert_string_not_equal(config_keys[i], config_keys[j]);
			char *a = config_env_name(config_keys[i]);
			char *b = config_env_name(config_keys[j]);
			assert_string_not_equal(a, b);
			free(a);
			free(b);
		}
	}
	static const char *const pairs[][2] = {
	        {"store.s3.endpoint", "STAGELINE_STORE_S3_ENDPOINT"},
	        {"server.shutdown_grace", "STAGELINE_SERVER_SHUTDOWN_GRACE"},
	        {"quota.max_queued_jobs", "STAGELINE_QUOTA_MAX_QUEUED_JOBS"},
	        {"pipelines_dir", "STAGELINE_PIPELINES_DIR"},
	};
	for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
		char *name = config_env_name(pairs[i][0]);
		assert_string_equal(name, pairs[i][1]);
		free(name);
	}

	/* Every key is reachable through its variable: an empty value is either
	 * taken (strings) or refused naming that key, never "unknown". */
	struct config *cfg = config_new();
	for (size_t i = 0; i < n; i++) {
		char *name = config_env_name(config_keys[i]);
		char *var = xasprintf("%s=", name);
		char *envp[] = {var, NULL};
		struct config_errors errs = {0};
		bool ok = config_apply_env(cfg, envp, &errs);
		assert_int_equal(ok, errs.n == 0);
		assert_int_equal(find_error(&errs, "unknown"), -1);
		if (errs.n > 0) {
			char *want = xasprintf("%s: %s: expected", name, config_keys[i]);
			assert_int_equal(find_error(&errs, want), 0);
			free(want);
		}
		config_errors_clear(&errs);
		free(var);
		free(name);
	}
	config_free(cfg);
}

static void test_errors_add_clear(void **state)
{
	struct config_errors errs = {0};
	config_errors_add(&errs, "a %d", 1);
	config_errors_add(&errs, "%s", "b");
	config_errors_add(&errs, "c");
	assert_int_equal(errs.n, 3);
	assert_string_equal(errs.msgs[0], "a 1");
	assert_string_equal(errs.msgs[1], "b");
	assert_string_equal(errs.msgs[2], "c");
	config_errors_clear(&errs);
	assert_int_equal(errs.n, 0);
	assert_null(errs.msgs);
	config_errors_clear(&errs);
}

static const char full_yaml[] = "# every key, none at its default\n"
                                "server:\n"
                                "  listen: \"0.0.0.0:9090\"\n"
                                "  shutdown_grace: 2m\n"
                                "  metrics_listen: \"127.0.0.1:9100\"\n"
                                "database:\n"
                                "  url: \"postgresql://u@db/x\"\n"
                                "  pool: 16\n"
                                "store:\n"
                                "  backend: s3\n"
                                "  path: /srv/objects\n"
                                "  url_secret: 's3cr3t'\n"
                                "  url_ttl: 60s\n"
                                "  s3:\n"
                                "    endpoint: \"http://127.0.0.1:4569\"\n"
                                "    bucket: test-bucket\n"
                                "    region: eu-west-1\n"
                                "    prefix: stageline/\n"
                                "    access_key_id: AK\n"
                                "    secret_access_key: SK\n"
                                "    path_style: yes\n"
                                "log: { format: text, level: debug, file: /var/log/s.log }\n"
                                "auth:\n"
                                "  enabled: off\n"
                                "scheduler:\n"
                                "  max_concurrency: 4\n"
                                "  lease: &lease 3s\n"
                                "  heartbeat: 500ms\n"
                                "  rescue_every: *lease\n"
                                "  poll: 1h\n"
                                "  scratch_dir: scratch\n"
                                "quota:\n"
                                "  max_concurrent_jobs: 2\n"
                                "  max_queued_jobs: 10\n"
                                "  max_input_bytes: 1MiB\n"
                                "  submissions_per_second: 2.5\n"
                                "limits:\n"
                                "  max_input_bytes: 2MiB\n"
                                "  max_header_bytes: 8KiB\n"
                                "  max_header_fields: 50\n"
                                "  header_timeout: 5s\n"
                                "  idle_timeout: 1m\n"
                                "  max_params_bytes: 64KiB\n"
                                "  max_stages: 8\n"
                                "  max_frame_bytes: 1GiB\n"
                                "pipelines_dir: pipelines.d\n";

static void test_load_full_file(void **state)
{
	struct config *cfg = config_new();
	struct config_errors errs = {0};
	char *path;
	bool ok = load_text(cfg, full_yaml, &errs, &path);
	dump_errors(&errs);
	assert_true(ok);
	assert_int_equal(errs.n, 0);

	assert_string_equal(cfg->path, path);
	assert_string_equal(cfg->dir, "/tmp");
	assert_string_equal(cfg->server.listen, "0.0.0.0:9090");
	assert_int_equal(cfg->server.shutdown_grace_ms, 120000);
	assert_string_equal(cfg->server.metrics_listen, "127.0.0.1:9100");
	assert_string_equal(cfg->database.url, "postgresql://u@db/x");
	assert_int_equal(cfg->database.pool, 16);
	assert_string_equal(cfg->store.backend, "s3");
	assert_string_equal(cfg->store.path, "/srv/objects");
	assert_string_equal(cfg->store.url_secret, "s3cr3t");
	assert_int_equal(cfg->store.url_ttl_ms, 60000);
	assert_string_equal(cfg->store.s3.endpoint, "http://127.0.0.1:4569");
	assert_string_equal(cfg->store.s3.bucket, "test-bucket");
	assert_string_equal(cfg->store.s3.region, "eu-west-1");
	assert_string_equal(cfg->store.s3.prefix, "stageline/");
	assert_string_equal(cfg->store.s3.access_key_id, "AK");
	assert_string_equal(cfg->store.s3.secret_access_key, "SK");
	assert_true(cfg->store.s3.path_style);
	assert_string_equal(cfg->log.format, "text");
	assert_string_equal(cfg->log.level, "debug");
	assert_string_equal(cfg->log.file, "/var/log/s.log");
	assert_false(cfg->auth.enabled);
	assert_int_equal(cfg->scheduler.max_concurrency, 4);
	assert_int_equal(cfg->scheduler.lease_ms, 3000);
	assert_int_equal(cfg->scheduler.heartbeat_ms, 500);
	assert_int_equal(cfg->scheduler.rescue_every_ms, 3000);
	assert_int_equal(cfg->scheduler.poll_ms, 3600000);
	assert_string_equal(cfg->scheduler.scratch_dir, "scratch");
	assert_int_equal(cfg->quota.max_concurrent_jobs, 2);
	assert_int_equal(cfg->quota.max_queued_jobs, 10);
	assert_int_equal(cfg->quota.max_input_bytes, 1 << 20);
	assert_true(cfg->quota.submissions_per_second == 2.5);
	assert_int_equal(cfg->limits.max_input_bytes, 2 << 20);
	assert_int_equal(cfg->limits.max_header_bytes, 8 << 10);
	assert_int_equal(cfg->limits.max_header_fields, 50);
	assert_int_equal(cfg->limits.header_timeout_ms, 5000);
	assert_int_equal(cfg->limits.idle_timeout_ms, 60000);
	assert_int_equal(cfg->limits.max_params_bytes, 64 << 10);
	assert_int_equal(cfg->limits.max_stages, 8);
	assert_int_equal(cfg->limits.max_frame_bytes, 1 << 30);
	assert_string_equal(cfg->pipelines_dir, "pipelines.d");
	assert_non_null(cfg->doc);
	assert_null(cfg->modules);
	assert_null(cfg->pipelines);

	assert_true(config_validate(cfg, &errs));
	dump_errors(&errs);
	assert_int_equal(errs.n, 0);
	remove_tmp(path);
	config_free(cfg);
}

static void test_load_lists_every_error(void **state)
{
	static const char text[] = "server:\n" /* 1 */
	                           "  listen: \"127.0.0.1:1\"\n" /* 2 */
	                           "  shutdown_grace: abc\n" /* 3 */
	                           "  lisen: x\n" /* 4 */
	                           "database:\n" /* 5 */
	                           "  pool: -1\n" /* 6 */
	                           "  url: keepgoing\n" /* 7 */
	                           "store:\n" /* 8 */
	                           "  s3:\n" /* 9 */
	                           "    path_style: maybe\n" /* 10 */
	                           "log:\n" /* 11 */
	                           "  format: xml\n" /* 12 */
	                           "limits:\n" /* 13 */
	                           "  max_input_bytes: 16MB\n" /* 14 */
	                           "bogus: 1\n" /* 15 */
	                           "scheduler: 5\n" /* 16 */
	                           "quota:\n" /* 17 */
	                           "  submissions_per_second: -2\n"; /* 18 */
	struct config *cfg = config_new();
	struct config_errors errs = {0};
	char *path;
	assert_false(load_text(cfg, text, &errs, &path));
	assert_error_at(&errs, path,
	                "3:19: server.shutdown_grace: expected a duration like 30s, got 'abc'");
	assert_error_at(&errs, path, "4:3: unknown key 'server.lisen'");
	assert_error_at(
	        &errs, path,
	        "6:9: database.pool: expected a whole number from 0 to 2147483647, got '-1'");
	assert_error_at(&errs, path,
	                "10:17: store.s3.path_style: expected true or false, got 'maybe'");
	assert_error_at(&errs, path, "12:11: log.format: expected one of json, text, got 'xml'");
	assert_error_at(
	        &errs, path,
	        "14:20: limits.max_input_bytes: expected a size like 16MiB (bytes, KiB, MiB "
	        "or GiB), got '16MB'");
	assert_error_at(&errs, path, "15:1: unknown key 'bogus'");
	assert_error_at(&errs, path, "16:12: scheduler: expected a mapping, got a scalar");
	assert_error_at(&errs, path,
	                "18:27: quota.submissions_per_second: expected a number >= 0, got '-2'");
	assert_int_equal(errs.n, 9);
	/* Good keys around the bad ones still count; bad ones keep the default. */
	assert_string_equal(cfg->server.listen, "127.0.0.1:1");
	assert_string_equal(cfg->database.url, "keepgoing");
	assert_int_equal(cfg->database.pool, 8);
	assert_int_equal(cfg->server.shutdown_grace_ms, 30000);
	config_errors_clear(&errs);
	remove_tmp(path);
	config_free(cfg);
}

static void test_load_unknown_keys(void **state)
{
	static const char text[] = "server:\n"
	                           "  lisen: x\n"
	                           "servr:\n"
	                           "  listen: x\n"
	                           "server.listen: x\n"
	                           "auth:\n"
	                           "  jwks: {url: x}\n"
	                           "store:\n"
	                           "  s4:\n"
	                           "    bucket: b\n"
	                           "  s3:\n"
	                           "    buckett: b\n"
	                           "quota:\n"
	                           "  ? [a, b]\n"
	                           "  : 1\n";
	struct config *cfg = config_new();
	struct config_errors errs = {0};
	char *path;
	assert_false(load_text(cfg, text, &errs, &path));
	assert_error_at(&errs, path, "2:3: unknown key 'server.lisen'");
	assert_error_at(&errs, path, "3:1: unknown key 'servr'");
	assert_error_at(&errs, path, "5:1: unknown key 'server.listen'");
	assert_error_at(&errs, path, "7:3: unknown key 'auth.jwks'");
	assert_error_at(&errs, path, "9:3: unknown key 'store.s4'");
	assert_error_at(&errs, path, "12:5: unknown key 'store.s3.buckett'");
	assert_error_at(&errs, path, "14:6: quota: keys must be plain names");
	assert_int_equal(errs.n, 7);
	assert_string_equal(cfg->server.listen, "127.0.0.1:8080");
	config_errors_clear(&errs);
	remove_tmp(path);
	config_free(cfg);
}

static void test_load_wrong_kinds(void **state)
{
	static const char text[] = "server:\n"
	                           "  listen: {host: x}\n"
	                           "  shutdown_grace: [1, 2]\n"
	                           "  metrics_listen:\n"
	                           "  # an empty section sets nothing\n"
	                           "quota:\n"
	                           "modules: [a]\n"
	                           "pipelines: \"x\"\n"
	                           "log:\n"
	                           "  - level\n"
	                           "database:\n"
	                           "  url: \"a\\0b\"\n";
	struct config *cfg = config_new();
	struct config_errors errs = {0};
	char *path;
	assert_false(load_text(cfg, text, &errs, &path));
	assert_error_at(&errs, path, "2:3: server.listen: expected a string, got a mapping");
	assert_error_at(&errs, path,
	                "3:3: server.shutdown_grace: expected a duration like 30s, got a sequence");
	assert_error_at(
	        &errs, path,
	        "4:3: server.metrics_listen: expected a string, got nothing (write \"\" for "
	        "empty)");
	assert_error_at(&errs, path, "7:1: modules: expected a mapping, got a sequence");
	/* libfyaml marks a quoted scalar at its first character inside the quotes. */
	assert_error_at(&errs, path, "8:13: pipelines: expected a mapping, got a scalar");
	assert_error_at(&errs, path, "9:1: log: expected a mapping, got a sequence");
	assert_error_at(&errs, path, "12:9: database.url: value contains a NUL byte");
	assert_int_equal(errs.n, 7);
	assert_null(cfg->modules);
	assert_null(cfg->pipelines);
	config_errors_clear(&errs);
	remove_tmp(path);

	/* The top level itself. */
	assert_false(load_text(cfg, "- server\n- log\n", &errs, &path));
	assert_error_at(&errs, path,
	                "1:3: the top level must be a mapping of sections, got a sequence");
	assert_int_equal(errs.n, 1);
	config_errors_clear(&errs);
	remove_tmp(path);
	config_free(cfg);
}

/* Runs config_load_file with fd 2 redirected; returns the bytes written. */
static off_t load_capturing_stderr(struct config *cfg, const char *path, struct config_errors *errs,
                                   bool *ok)
{
	char tmpl[] = "/tmp/test_config_stderr_XXXXXX";
	int fd = mkstemp(tmpl);
	assert_true(fd >= 0);
	unlink(tmpl);
	fflush(stderr);
	int saved = dup(STDERR_FILENO);
	assert_true(saved >= 0);
	assert_true(dup2(fd, STDERR_FILENO) >= 0);
	*ok = config_load_file(cfg, path, errs);
	fflush(stderr);
	assert_true(dup2(saved, STDERR_FILENO) >= 0);
	close(saved);
	off_t size = lseek(fd, 0, SEEK_END);
	close(fd);
	return size;
}

static void test_yaml_syntax_errors(void **state)
{
	struct config *cfg = config_new();
	struct config_errors errs = {0};
	bool ok;

	char *path = write_tmp("server:\n"
	                       "  listen: \"127.0.0.1:1\"\n"
	                       "  metrics_listen: [unclosed\n"
	                       "log:\n"
	                       "  level: info\n");
	assert_int_equal(load_capturing_stderr(cfg, path, &errs, &ok), 0);
	assert_false(ok);
	assert_int_equal(errs.n, 1);
	char *want = xasprintf("%s:", path);
	assert_ptr_equal(strstr(errs.msgs[0], want), errs.msgs[0]);
	free(want);
	assert_non_null(strstr(errs.msgs[0], ": invalid YAML: "));
	/* A line number follows the file name. */
	int line = atoi(errs.msgs[0] + strlen(path) + 1);
	assert_true(line >= 3 && line <= 6);
	assert_null(cfg->doc);
	config_errors_clear(&errs);
	remove_tmp(path);

	path = write_tmp("server:\n  listen: a\n  listen: b\n");
	assert_int_equal(load_capturing_stderr(cfg, path, &errs, &ok), 0);
	assert_false(ok);
	assert_error_at(&errs, path, "3:3: invalid YAML: duplicate key");
	assert_int_equal(errs.n, 1);
	config_errors_clear(&errs);
	remove_tmp(path);

	path = write_tmp("server:\n  listen: *nowhere\n");
	assert_int_equal(load_capturing_stderr(cfg, path, &errs, &ok), 0);
	assert_false(ok);
	assert_int_equal(errs.n, 1);
	want = xasprintf("%s:2:", path);
	assert_int_equal(find_error(&errs, want), 0);
	free(want);
	config_errors_clear(&errs);
	remove_tmp(path);

	config_free(cfg);
	cfg = config_new();
	assert_int_equal(load_capturing_stderr(cfg, "/nonexistent/stageline.yaml", &errs, &ok), 0);
	assert_false(ok);
	assert_string_equal(errs.msgs[0],
	                    "/nonexistent/stageline.yaml: cannot open: No such file or directory");
	assert_null(cfg->path);
	config_errors_clear(&errs);

	assert_false(config_load_file(cfg, "/tmp", &errs));
	assert_string_equal(errs.msgs[0], "/tmp: is a directory");
	config_errors_clear(&errs);
	config_free(cfg);
}

static void test_load_empty_and_multi_document(void **state)
{
	static const char *const empty[] = {"", "# nothing here\n", "---\n", "---\n...\n"};
	for (size_t i = 0; i < sizeof empty / sizeof empty[0]; i++) {
		struct config *cfg = config_new();
		struct config_errors errs = {0};
		assert_true(load_text(cfg, empty[i], &errs, NULL));
		assert_int_equal(errs.n, 0);
		assert_string_equal(cfg->server.listen, "127.0.0.1:8080");
		config_free(cfg);
	}

	struct config *cfg = config_new();
	struct config_errors errs = {0};
	char *path;
	assert_false(
	        load_text(cfg, "server: {listen: \"127.0.0.1:1\"}\n---\nlog: {}\n", &errs, &path));
	assert_error_at(&errs, path, "3:1: only one YAML document is allowed in a config file");
	assert_int_equal(errs.n, 1);
	config_errors_clear(&errs);
	remove_tmp(path);
	config_free(cfg);
}

static const char modules_yaml[] =
        "modules:\n"
        "  tts:\n"
        "    command: [\"/usr/bin/python3\", \"contrib/modules/tts.py\"]\n"
        "    concurrency: 2\n"
        "  noop:\n"
        "    command: [\"contrib/modules/noop\"]\n"
        "    persistent: true\n"
        "    concurrency: 256\n"
        "pipelines:\n"
        "  speech-demo:\n"
        "    stages:\n"
        "      - { name: tts,        module: tts,   timeout: 60s, retries: 2 }\n"
        "      - { name: normalize,  module: sox,   needs: [tts] }\n"
        "pipelines_dir: /etc/stageline/pipelines\n";

static void test_modules_and_pipelines_kept(void **state)
{
	struct config *cfg = config_new();
	struct config_errors errs = {0};
	assert_true(load_text(cfg, modules_yaml, &errs, NULL));
	assert_int_equal(errs.n, 0);
	assert_non_null(cfg->doc);
	assert_non_null(cfg->modules);
	assert_non_null(cfg->pipelines);
	assert_true(fy_node_is_mapping(cfg->modules));
	assert_int_equal(fy_node_mapping_item_count(cfg->modules), 2);
	struct fy_node *n =
	        fy_node_by_path(cfg->modules, "/noop/concurrency", FY_NT, FYNWF_DONT_FOLLOW);
	assert_non_null(n);
	assert_string_equal(fy_node_get_scalar0(n), "256");
	n = fy_node_by_path(cfg->pipelines, "/speech-demo/stages/1/needs/0", FY_NT,
	                    FYNWF_DONT_FOLLOW);
	assert_non_null(n);
	assert_string_equal(fy_node_get_scalar0(n), "tts");
	assert_string_equal(cfg->pipelines_dir, "/etc/stageline/pipelines");

	/* A second file replaces the document and what pointed into it. */
	assert_true(load_text(cfg, "log: {level: warn}\n", &errs, NULL));
	assert_null(cfg->modules);
	assert_null(cfg->pipelines);
	assert_string_equal(cfg->log.level, "warn");
	config_free(cfg);
}

static void test_env_and_precedence(void **state)
{
	struct config *cfg = config_new();
	struct config_errors errs = {0};
	assert_true(load_text(cfg,
	                      "server: {listen: \"127.0.0.1:1000\"}\n"
	                      "database: {pool: 3}\n"
	                      "log: {level: debug}\n",
	                      &errs, NULL));
	char *envp[] = {
	        "PATH=/usr/bin",
	        "STAGELINE_SERVER_LISTEN=127.0.0.1:2000",
	        "STAGELINE_DATABASE_POOL=5",
	        "STAGELINE_URL=http://cli.example",
	        "STAGELINE_API_KEY=sl_secret",
	        "STAGELINE_JOB_ID=not-ours",
	        "STAGELINE_QUOTA_MAX_QUEUED_JOBS=7",
	        "STAGELINE_QUOTA_SUBMISSIONS_PER_SECOND=0.5",
	        "STAGELINE_STORE_S3_ENDPOINT=https://s3.example",
	        "STAGELINE_STORE_S3_PATH_STYLE=on",
	        "STAGELINE_SCHEDULER_LEASE=45s",
	        "STAGELINE_PIPELINES_DIR=pipes",
	        "STAGELINE_NOEQUALS",
	        NULL,
	};
	assert_true(config_apply_env(cfg, envp, &errs));
	dump_errors(&errs);
	assert_int_equal(errs.n, 0);
	assert_string_equal(cfg->server.listen, "127.0.0.1:2000"); /* env beats file */
	assert_int_equal(cfg->database.pool, 5);
	assert_string_equal(cfg->log.level, "debug"); /* file beats default */
	assert_int_equal(cfg->quota.max_queued_jobs, 7);
	assert_true(cfg->quota.submissions_per_second == 0.5);
	assert_string_equal(cfg->store.s3.endpoint, "https://s3.example");
	assert_true(cfg->store.s3.path_style);
	assert_int_equal(cfg->scheduler.lease_ms, 45000);
	assert_string_equal(cfg->pipelines_dir, "pipes");

	assert_true(config_set(cfg, "server.listen", "127.0.0.1:3000", "--listen", &errs));
	assert_string_equal(cfg->server.listen, "127.0.0.1:3000"); /* flag beats env */
	assert_true(config_validate(cfg, &errs));
	assert_int_equal(errs.n, 0);
	config_free(cfg);
}

static void test_env_errors(void **state)
{
	struct config *cfg = config_new();
	struct config_errors errs = {0};
	char *envp[] = {
	        "STAGELINE_SERVER_LISTN=x",        "STAGELINE_QUOTA_MAX_QUEUED=1",
	        "STAGELINE_STORE_S3_=1",           "STAGELINE_SERVER_SHUTDOWN_GRACE=abc",
	        "STAGELINE_LOG_LEVEL=loud",        "STAGELINE_SOMETHING_ELSE=ignored",
	        "STAGELINE_server_listen=ignored", NULL,
	};
	assert_false(config_apply_env(cfg, envp, &errs));
	if (errs.n != 5)
		dump_errors(&errs);
	assert_int_equal(errs.n, 5);
	assert_string_equal(errs.msgs[0], "STAGELINE_SERVER_LISTN: unknown setting");
	assert_string_equal(errs.msgs[1], "STAGELINE_QUOTA_MAX_QUEUED: unknown setting");
	assert_string_equal(errs.msgs[2], "STAGELINE_STORE_S3_: unknown setting");
	assert_string_equal(errs.msgs[3], "STAGELINE_SERVER_SHUTDOWN_GRACE: server.shutdown_grace: "
	                                  "expected a duration like 30s, got 'abc'");
	assert_string_equal(errs.msgs[4], "STAGELINE_LOG_LEVEL: log.level: expected one of debug, "
	                                  "info, warn, error, got 'loud'");
	assert_int_equal(cfg->server.shutdown_grace_ms, 30000);
	assert_string_equal(cfg->log.level, "info");
	config_errors_clear(&errs);

	char *none[] = {NULL};
	assert_true(config_apply_env(cfg, none, &errs));
	assert_true(config_apply_env(cfg, NULL, &errs));
	assert_int_equal(errs.n, 0);
	config_free(cfg);
}

static void test_config_set(void **state)
{
	struct config *cfg = config_new();
	struct config_errors errs = {0};
	assert_false(config_set(cfg, "server.lisen", "x", "--lisen", &errs));
	assert_string_equal(errs.msgs[0], "--lisen: unknown key 'server.lisen'");
	assert_false(config_set(cfg, "database.pool", "many", "--pool", &errs));
	assert_string_equal(errs.msgs[1], "--pool: database.pool: expected a whole number from 0 "
	                                  "to 2147483647, got 'many'");
	assert_int_equal(cfg->database.pool, 8);
	assert_false(config_set(cfg, "server", "x", "--server", &errs));
	assert_int_equal(errs.n, 3);
	config_errors_clear(&errs);

	/* Booleans, counts and numbers, table-driven. */
	static const struct {
		const char *key, *value;
		bool ok;
	} cases[] = {
	        {"auth.enabled", "true", true},
	        {"auth.enabled", "FALSE", true},
	        {"auth.enabled", "yes", true},
	        {"auth.enabled", "Off", true},
	        {"auth.enabled", "1", true},
	        {"auth.enabled", "0", true},
	        {"auth.enabled", "2", false},
	        {"auth.enabled", "", false},
	        {"auth.enabled", "y", false},
	        {"auth.enabled", "true ", false},
	        {"database.pool", "0", true},
	        {"database.pool", "2147483647", true},
	        {"database.pool", "2147483648", false},
	        {"database.pool", "-1", false},
	        {"database.pool", "+1", false},
	        {"database.pool", " 1", false},
	        {"database.pool", "1e3", false},
	        {"database.pool", "0x10", false},
	        {"database.pool", "", false},
	        {"quota.submissions_per_second", "0", true},
	        {"quota.submissions_per_second", "0.25", true},
	        {"quota.submissions_per_second", "1e2", true},
	        {"quota.submissions_per_second", "-1", false},
	        {"quota.submissions_per_second", "inf", false},
	        {"quota.submissions_per_second", "nan", false},
	        {"quota.submissions_per_second", "0x10", false},
	        {"quota.submissions_per_second", "1e999", false},
	        {"quota.submissions_per_second", ".5", false},
	        {"log.format", "text", true},
	        {"log.format", "TEXT", false},
	        {"store.backend", "s3", true},
	        {"store.backend", "gcs", false},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		bool ok = config_set(cfg, cases[i].key, cases[i].value, "--x", &errs);
		if (ok != cases[i].ok)
			print_message("case %s=%s\n", cases[i].key, cases[i].value);
		assert_int_equal(ok, cases[i].ok);
		assert_int_equal(errs.n, ok ? 0 : 1);
		config_errors_clear(&errs);
	}
	assert_true(config_set(cfg, "auth.enabled", "no", "--x", &errs));
	assert_false(cfg->auth.enabled);
	assert_true(config_set(cfg, "quota.submissions_per_second", "0.25", "--x", &errs));
	assert_true(cfg->quota.submissions_per_second == 0.25);
	config_free(cfg);
}

static void test_parse_duration(void **state)
{
	static const struct {
		const char *in;
		bool ok;
		int64_t ms;
	} cases[] = {
	        {"0", true, 0},
	        {"0s", true, 0},
	        {"0ms", true, 0},
	        {"250ms", true, 250},
	        {"10s", true, 10000},
	        {"10", true, 10000},
	        {"2m", true, 120000},
	        {"1h", true, 3600000},
	        {"007s", true, 7000},
	        {"9223372036854ms", true, 9223372036854}, /* the cap: fits in ns */
	        {"9223372036855ms", false, 0},
	        {"2562047h", true, 2562047LL * 3600000},
	        {"2562048h", false, 0},
	        {"18446744073709551616", false, 0},
	        {"99999999999999999999999s", false, 0},
	        {"", false, 0},
	        {"s", false, 0},
	        {"ms", false, 0},
	        {"abc", false, 0},
	        {"-1s", false, 0},
	        {"+1s", false, 0},
	        {"1.5s", false, 0}, /* fractions are refused: write 1500ms */
	        {"10 s", false, 0},
	        {" 10s", false, 0},
	        {"10s ", false, 0},
	        {"10S", false, 0},
	        {"1d", false, 0},
	        {"1m30s", false, 0},
	        {"10sec", false, 0},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int64_t v = -42;
		bool ok = config_parse_duration_ms(cases[i].in, &v);
		if (ok != cases[i].ok)
			print_message("duration '%s'\n", cases[i].in);
		assert_int_equal(ok, cases[i].ok);
		assert_int_equal(v, ok ? cases[i].ms : -42);
	}
	int64_t v;
	assert_false(config_parse_duration_ms(NULL, &v));
}

static void test_parse_size(void **state)
{
	static const struct {
		const char *in;
		bool ok;
		int64_t bytes;
	} cases[] = {
	        {"0", true, 0},
	        {"512", true, 512},
	        {"32KiB", true, 32768},
	        {"16MiB", true, 16777216},
	        {"1GiB", true, 1073741824},
	        {"9223372036854775807", true, INT64_MAX},
	        {"9223372036854775808", false, 0},
	        {"8589934591GiB", true, 8589934591LL << 30},
	        {"8589934592GiB", false, 0},
	        {"", false, 0},
	        {"KiB", false, 0},
	        {"16MB", false, 0},
	        {"1KB", false, 0},
	        {"16mib", false, 0},
	        {"1B", false, 0},
	        {"1TiB", false, 0},
	        {"1.5MiB", false, 0},
	        {"-1", false, 0},
	        {"1 KiB", false, 0},
	        {"1KiB ", false, 0},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int64_t v = -42;
		bool ok = config_parse_size(cases[i].in, &v);
		if (ok != cases[i].ok)
			print_message("size '%s'\n", cases[i].in);
		assert_int_equal(ok, cases[i].ok);
		assert_int_equal(v, ok ? cases[i].bytes : -42);
	}
	int64_t v;
	assert_false(config_parse_size(NULL, &v));
}

static void test_validate_listen(void **state)
{
	char long_unix[200];
	snprintf(long_unix, sizeof long_unix, "unix:/%0120d", 0);
	static const struct {
		const char *addr;
		bool ok;
	} cases[] = {
	        {"127.0.0.1:8080", true},
	        {"0.0.0.0:0", true},
	        {"localhost:65535", true},
	        {"[::1]:8080", true},
	        {"[::]:80", true},
	        {"unix:/run/sl.sock", true},
	        {"127.0.0.1", false},
	        {"127.0.0.1:65536", false},
	        {"127.0.0.1:-1", false},
	        {"127.0.0.1:", false},
	        {":8080", false},
	        {"example.com:80", false},
	        {"::1:8080", false},
	        {"[::1]8080", false},
	        {"[::1]:", false},
	        {"[zz]:80", false},
	        {"[127.0.0.1]:80", false},
	        {"unix:rel.sock", false},
	        {"unix:", false},
	        {"256.0.0.1:80", false},
	        {"127.0.0.1:80x", false},
	        {"127.0.0.1:000080", false},
	        {"", false},
	        {"127.0.0.1: 80", false},
	};
	struct config_errors errs = {0};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0] + 1; i++) {
		const char *addr = i < sizeof cases / sizeof cases[0] ? cases[i].addr : long_unix;
		bool want = i < sizeof cases / sizeof cases[0] ? cases[i].ok : false;
		struct config *cfg = config_new();
		assert_true(config_set(cfg, "server.listen", addr, "--listen", &errs));
		bool ok = config_validate(cfg, &errs);
		if (ok != want)
			print_message("listen '%s'\n", addr);
		assert_int_equal(ok, want);
		if (!ok) {
			assert_int_equal(errs.n, 1);
			assert_ptr_equal(strstr(errs.msgs[0], "server.listen: "), errs.msgs[0]);
		}
		config_errors_clear(&errs);

		/* The same rules for the metrics address. */
		assert_true(config_set(cfg, "server.listen", "127.0.0.1:1", "--listen", &errs));
		assert_true(config_set(cfg, "server.metrics_listen", addr, "--metrics", &errs));
		ok = config_validate(cfg, &errs);
		assert_int_equal(ok, want || addr[0] == '\0');
		if (!ok)
			assert_int_equal(find_error(&errs, "server.metrics_listen: "), 0);
		config_errors_clear(&errs);
		config_free(cfg);
	}
}

static void test_validate_cross_checks(void **state)
{
	static const struct {
		const char *key, *value, *error;
	} cases[] = {
	        {"scheduler.heartbeat", "30s",
	         "scheduler.heartbeat: must be shorter than scheduler.lease"},
	        {"scheduler.lease", "5s",
	         "scheduler.heartbeat: must be shorter than scheduler.lease"},
	        {"scheduler.heartbeat", "0", "scheduler.heartbeat: must be greater than 0"},
	        {"scheduler.poll", "0ms", "scheduler.poll: must be greater than 0"},
	        {"scheduler.max_concurrency", "0", "scheduler.max_concurrency: must be at least 1"},
	        {"scheduler.scratch_dir", "", "scheduler.scratch_dir: must not be empty"},
	        {"database.pool", "0", "database.pool: must be from 1 to 256, got 0"},
	        {"database.pool", "257", "database.pool: must be from 1 to 256, got 257"},
	        {"database.url", "", "database.url: must not be empty"},
	        {"store.backend", "s3", "store.s3.bucket: required with store.backend s3"},
	        {"store.path", "", "store.path: must not be empty"},
	        {"store.url_ttl", "16m", "store.url_ttl: must be from 1s to 15m"},
	        {"store.url_ttl", "999ms", "store.url_ttl: must be from 1s to 15m"},
	        {"limits.max_stages", "0", "limits.max_stages: must be greater than 0"},
	        {"limits.max_frame_bytes", "0", "limits.max_frame_bytes: must be greater than 0"},
	        {"limits.header_timeout", "0", "limits.header_timeout: must be greater than 0"},
	        {"quota.max_input_bytes", "17MiB",
	         "quota.max_input_bytes: 17825792 is above "
	         "limits.max_input_bytes (16777216)"},
	        {"server.metrics_listen", "127.0.0.1:8080", "server.metrics_listen: must differ"},
	        {"privacy.scrub_patterns", "email, ssn",
	         "privacy.scrub_patterns: unknown pattern 'ssn'"},
	        {"privacy.scrub_fields", "email, --",
	         "privacy.scrub_fields: '--' is not a field name"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct config *cfg = config_new();
		struct config_errors errs = {0};
		assert_true(config_set(cfg, cases[i].key, cases[i].value, "--x", &errs));
		assert_false(config_validate(cfg, &errs));
		if (find_error(&errs, cases[i].error) != 0) {
			print_message("case %s=%s\n", cases[i].key, cases[i].value);
			dump_errors(&errs);
		}
		assert_int_equal(find_error(&errs, cases[i].error), 0);
		assert_int_equal(errs.n, 1);
		config_errors_clear(&errs);
		config_free(cfg);
	}

	/* S3 needs a bucket; keys come in pairs; the endpoint is a URL. */
	struct config *cfg = config_new();
	struct config_errors errs = {0};
	assert_true(config_set(cfg, "store.backend", "s3", "--x", &errs));
	assert_true(config_set(cfg, "store.s3.bucket", "b", "--x", &errs));
	assert_true(config_validate(cfg, &errs));
	assert_true(config_set(cfg, "store.s3.access_key_id", "AK", "--x", &errs));
	assert_true(config_set(cfg, "store.s3.endpoint", "s3.example", "--x", &errs));
	assert_false(config_validate(cfg, &errs));
	assert_int_equal(errs.n, 2);
	assert_int_equal(find_error(&errs, "store.s3.endpoint: expected an http"), 0);
	assert_int_equal(find_error(&errs, "store.s3.access_key_id, store.s3.secret_access_key"),
	                 1);
	config_errors_clear(&errs);

	/* A field written directly is still checked against its enum. */
	free(cfg->log.level);
	cfg->log.level = xstrdup("verbose");
	assert_false(config_validate(cfg, &errs));
	assert_int_equal(find_error(&errs, "log.level: expected one of debug, info, warn, error"),
	                 0);
	config_errors_clear(&errs);
	config_free(cfg);
}

static void test_resolve_path(void **state)
{
	struct config *cfg = config_new();
	char *cwd = get_current_dir_name();
	char *p = config_resolve_path(cfg, "var/x");
	char *want = xasprintf("%s/var/x", cwd);
	assert_string_equal(p, want);
	free(p);
	free(want);
	free(cwd);

	/* With a file given by a relative name: its directory, made absolute. */
	char dir_tmpl[] = "/tmp/test_config_dir_XXXXXX";
	assert_non_null(mkdtemp(dir_tmpl));
	char *real = realpath(dir_tmpl, NULL);
	assert_non_null(real);
	char *sub = xasprintf("%s/etc", dir_tmpl);
	assert_int_equal(mkdir(sub, 0700), 0);
	char *file = write_tmp_in(sub, "store: {path: ./objects}\n");
	char *old = get_current_dir_name();
	assert_int_equal(chdir(dir_tmpl), 0);
	char *rel = xasprintf("etc/%s", strrchr(file, '/') + 1);
	struct config_errors errs = {0};
	assert_true(config_load_file(cfg, rel, &errs));
	assert_int_equal(chdir(old), 0);
	assert_string_equal(cfg->path, rel);
	want = xasprintf("%s/etc", real);
	assert_string_equal(cfg->dir, want);
	free(want);

	static const struct {
		const char *in, *suffix; /* suffix NULL: returned as given */
	} cases[] = {
	        {"/abs/path", NULL},
	        {"", NULL},
	        {"objects", "/objects"},
	        {"./objects", "/objects"},
	        {".//a/b", "/a/b"},
	        {"../x", "/../x"},
	        {"./", ""},
	        {".", ""},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		p = config_resolve_path(cfg, cases[i].in);
		want = cases[i].suffix ? xasprintf("%s/etc%s", real, cases[i].suffix)
		                       : xstrdup(cases[i].in);
		assert_string_equal(p, want);
		free(p);
		free(want);
	}
	p = config_resolve_path(cfg, cfg->store.path);
	want = xasprintf("%s/etc/objects", real);
	assert_string_equal(p, want);
	free(p);
	free(want);

	remove_tmp(file);
	rmdir(sub);
	rmdir(dir_tmpl);
	free(sub);
	free(rel);
	free(old);
	free(real);
	config_free(cfg);
}

/* The source tree's root, from this file's path as the compiler saw it
 * (absolute, or relative to the build directory the tests run in). */
static char *source_path(const char *rel)
{
	const char *self = __FILE__;
	const char *tail = strstr(self, "tests/unit/test_config.c");
	assert_non_null(tail);
	return xasprintf("%.*s%s", (int)(tail - self), self, rel);
}

static char *read_all(const char *path)
{
	FILE *f = fopen(path, "r");
	if (f == NULL)
		print_message("cannot open %s\n", path);
	assert_non_null(f);
	char *data = NULL;
	size_t len = 0;
	char chunk[4096];
	size_t n;
	while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
		data = xrealloc(data, len + n + 1);
		memcpy(data + len, chunk, n);
		len += n;
	}
	fclose(f);
	data = xrealloc(data, len + 1);
	data[len] = '\0';
	return data;
}

static void test_contrib_example_is_the_defaults(void **state)
{
	char *path = source_path("contrib/stageline.yaml");
	struct config *cfg = config_new();
	struct config *def = config_new();
	struct config_errors errs = {0};
	bool ok = config_load_file(cfg, path, &errs);
	dump_errors(&errs);
	assert_true(ok);
	/* Compare through config_set's view: every key written in the file must
	 * parse to the default. Strings compare directly; numbers by field. */
	assert_string_equal(cfg->server.listen, def->server.listen);
	assert_int_equal(cfg->server.shutdown_grace_ms, def->server.shutdown_grace_ms);
	assert_string_equal(cfg->server.metrics_listen, def->server.metrics_listen);
	assert_string_equal(cfg->database.url, def->database.url);
	assert_int_equal(cfg->database.pool, def->database.pool);
	assert_string_equal(cfg->store.backend, def->store.backend);
	assert_string_equal(cfg->store.path, def->store.path);
	assert_string_equal(cfg->store.url_secret, def->store.url_secret);
	assert_int_equal(cfg->store.url_ttl_ms, def->store.url_ttl_ms);
	assert_string_equal(cfg->store.s3.endpoint, def->store.s3.endpoint);
	assert_string_equal(cfg->store.s3.bucket, def->store.s3.bucket);
	assert_string_equal(cfg->store.s3.region, def->store.s3.region);
	assert_string_equal(cfg->store.s3.prefix, def->store.s3.prefix);
	assert_string_equal(cfg->store.s3.access_key_id, def->store.s3.access_key_id);
	assert_string_equal(cfg->store.s3.secret_access_key, def->store.s3.secret_access_key);
	assert_int_equal(cfg->store.s3.path_style, def->store.s3.path_style);
	assert_string_equal(cfg->log.format, def->log.format);
	assert_string_equal(cfg->log.level, def->log.level);
	assert_string_equal(cfg->log.file, def->log.file);
	assert_int_equal(cfg->auth.enabled, def->auth.enabled);
	assert_int_equal(cfg->scheduler.max_concurrency, def->scheduler.max_concurrency);
	assert_int_equal(cfg->scheduler.lease_ms, def->scheduler.lease_ms);
	assert_int_equal(cfg->scheduler.heartbeat_ms, def->scheduler.heartbeat_ms);
	assert_int_equal(cfg->scheduler.rescue_every_ms, def->scheduler.rescue_every_ms);
	assert_int_equal(cfg->scheduler.poll_ms, def->scheduler.poll_ms);
	assert_string_equal(cfg->scheduler.scratch_dir, def->scheduler.scratch_dir);
	assert_int_equal(cfg->quota.max_concurrent_jobs, def->quota.max_concurrent_jobs);
	assert_int_equal(cfg->quota.max_queued_jobs, def->quota.max_queued_jobs);
	assert_int_equal(cfg->quota.max_input_bytes, def->quota.max_input_bytes);
	assert_true(cfg->quota.submissions_per_second == def->quota.submissions_per_second);
	assert_int_equal(cfg->privacy.scrub, def->privacy.scrub);
	assert_string_equal(cfg->privacy.scrub_fields, def->privacy.scrub_fields);
	assert_string_equal(cfg->privacy.scrub_patterns, def->privacy.scrub_patterns);
	assert_int_equal(cfg->limits.max_input_bytes, def->limits.max_input_bytes);
	assert_int_equal(cfg->limits.max_header_bytes, def->limits.max_header_bytes);
	assert_int_equal(cfg->limits.max_header_fields, def->limits.max_header_fields);
	assert_int_equal(cfg->limits.header_timeout_ms, def->limits.header_timeout_ms);
	assert_int_equal(cfg->limits.idle_timeout_ms, def->limits.idle_timeout_ms);
	assert_int_equal(cfg->limits.max_params_bytes, def->limits.max_params_bytes);
	assert_int_equal(cfg->limits.max_stages, def->limits.max_stages);
	assert_int_equal(cfg->limits.max_frame_bytes, def->limits.max_frame_bytes);
	assert_string_equal(cfg->pipelines_dir, def->pipelines_dir);
	assert_true(config_validate(cfg, &errs));

	/* And every key is actually written in it (a missing one would also
	 * compare equal above). */
	char *text = read_all(path);
	for (size_t i = 0; config_keys[i]; i++) {
		const char *leaf = strrchr(config_keys[i], '.');
		char *needle = xasprintf("%s:", leaf ? leaf + 1 : config_keys[i]);
		if (strstr(text, needle) == NULL)
			print_message("contrib/stageline.yaml lacks %s\n", config_keys[i]);
		assert_non_null(strstr(text, needle));
		free(needle);
	}
	free(text);
	free(path);
	config_free(def);
	config_free(cfg);
}

static void test_docs_name_every_key(void **state)
{
	char *path = source_path("docs/configuration.md");
	char *text = read_all(path);
	for (size_t i = 0; config_keys[i]; i++) {
		char *key = xasprintf("`%s`", config_keys[i]);
		char *env = config_env_name(config_keys[i]);
		if (strstr(text, key) == NULL || strstr(text, env) == NULL)
			print_message("docs/configuration.md lacks %s or %s\n", key, env);
		assert_non_null(strstr(text, key));
		assert_non_null(strstr(text, env));
		free(key);
		free(env);
	}
	free(text);
	free(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_defaults),
	        cmocka_unit_test(test_keys_and_env_names),
	        cmocka_unit_test(test_errors_add_clear),
	        cmocka_unit_test(test_load_full_file),
	        cmocka_unit_test(test_load_lists_every_error),
	        cmocka_unit_test(test_load_unknown_keys),
	        cmocka_unit_test(test_load_wrong_kinds),
	        cmocka_unit_test(test_yaml_syntax_errors),
	        cmocka_unit_test(test_load_empty_and_multi_document),
	        cmocka_unit_test(test_modules_and_pipelines_kept),
	        cmocka_unit_test(test_env_and_precedence),
	        cmocka_unit_test(test_env_errors),
	        cmocka_unit_test(test_config_set),
	        cmocka_unit_test(test_parse_duration),
	        cmocka_unit_test(test_parse_size),
	        cmocka_unit_test(test_validate_listen),
	        cmocka_unit_test(test_validate_cross_checks),
	        cmocka_unit_test(test_resolve_path),
	        cmocka_unit_test(test_contrib_example_is_the_defaults),
	        cmocka_unit_test(test_docs_name_every_key),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
