/* config: stagelined's settings. Defaults, then the YAML file (libfyaml),
 * then STAGELINE_<SECTION>_<KEY> environment overrides, then command-line
 * flags — each later layer wins. Every error names where it came from
 * (file:line:column, the environment variable, or the flag) and the key.
 * The config owns every string in it; config_free() releases them. */
#ifndef SL_CORE_CONFIG_H
#define SL_CORE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct fy_document;
struct fy_node;

/* Accumulated errors: --check-config prints them all. */
struct config_errors {
	char **msgs;
	size_t n;
};

void config_errors_add(struct config_errors *e, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));
void config_errors_clear(struct config_errors *e);

struct config {
	char *path; /* the config file, NULL when none */
	char *dir; /* its directory: relative paths resolve against it (cwd when no file) */

	struct {
		char *listen; /* "127.0.0.1:8080" or "unix:/path" */
		int64_t shutdown_grace_ms;
		char *metrics_listen; /* "" = off */
		bool metrics; /* false: metric updates are no-ops */
		char *console_dir; /* the built web console; "" = /console/ is off */
	} server;
	struct {
		char *url;
		int64_t pool;
	} database;
	struct {
		char *backend; /* file | s3 */
		char *path;
		char *url_secret;
		int64_t url_ttl_ms;
		struct {
			char *endpoint;
			char *bucket;
			char *region;
			char *prefix;
			char *access_key_id;
			char *secret_access_key;
			bool path_style;
		} s3;
	} store;
	struct {
		char *format; /* json | text */
		char *level; /* debug | info | warn | error */
		char *file; /* "" = stderr */
	} log;
	struct {
		bool enabled;
		int64_t max_failures; /* 401s per client address per window; 0 = off */
		int64_t failure_window_ms;
		struct {
			bool enabled;
			char *issuer;
			char *audience;
			int64_t leeway_ms;
			char *hs256_secret; /* "" = none */
			char *hs256_kid;
			char *public_key_file; /* PEM, RSA or EC P-256; "" = none */
			char *public_key_kid;
			char *project_claim;
			char *scopes_claim;
		} jwt;
	} auth;
	struct {
		bool enabled;
		int64_t max_concurrency;
		int64_t lease_ms;
		int64_t heartbeat_ms;
		int64_t rescue_every_ms;
		int64_t poll_ms;
		int64_t log_flush_ms;
		char *scratch_dir;
	} scheduler;
	struct {
		int64_t max_concurrent_jobs;
		int64_t max_queued_jobs;
		int64_t max_input_bytes;
		double submissions_per_second;
	} quota;
	struct {
		bool scrub; /* mask personal data in logs, events, stage logs */
		char *scrub_fields; /* comma list of field names */
		char *scrub_patterns; /* comma list from email, phone */
	} privacy;
	struct {
		int64_t max_input_bytes;
		int64_t max_header_bytes;
		int64_t max_header_fields;
		int64_t header_timeout_ms;
		int64_t idle_timeout_ms;
		int64_t max_params_bytes;
		int64_t max_stages;
		int64_t max_frame_bytes;
	} limits;

	/* `modules`, `pipelines` and `pipelines_dir` are read by engine/pipeline.c
	 * from these nodes (NULL when absent); doc owns them. */
	struct fy_document *doc;
	struct fy_node *modules;
	struct fy_node *pipelines;
	char *pipelines_dir;
};

/* A config holding every default. */
struct config *config_new(void);
void config_free(struct config *cfg);

/* Reads a YAML file over cfg. Unknown keys, wrong types and bad values are
 * errors naming file:line:col and the dotted key; all are collected. An
 * empty file is valid. Sets path and dir, and replaces doc, modules and
 * pipelines (the doc's libfyaml diag is silenced: report through errors). */
bool config_load_file(struct config *cfg, const char *path, struct config_errors *errs)
        __attribute__((warn_unused_result));
/* Applies STAGELINE_* variables from envp (NULL-terminated "K=V" strings).
 * STAGELINE_URL and STAGELINE_API_KEY belong to the CLI and are ignored;
 * an unknown STAGELINE_<SECTION>_* name for a known section is an error. */
bool config_apply_env(struct config *cfg, char *const *envp, struct config_errors *errs)
        __attribute__((warn_unused_result));
/* Sets one scalar by dotted key from text (a flag or an env value); origin
 * names it in errors ("--listen", "STAGELINE_SERVER_LISTEN"). */
bool config_set(struct config *cfg, const char *key, const char *value, const char *origin,
                struct config_errors *errs) __attribute__((warn_unused_result));
/* Cross-field checks after all layers (enums, ranges, listen syntax). */
bool config_validate(struct config *cfg, struct config_errors *errs)
        __attribute__((warn_unused_result));
/* Resolves a path from the config against cfg->dir; caller frees. */
char *config_resolve_path(const struct config *cfg, const char *path);

/* "file:LINE:COL" (1-based) of a YAML node: at itself when it is a scalar,
 * else fallback, else at's first scalar; just "file" when none has a
 * position (libfyaml 0.7 gives collections none). Caller frees. */
char *config_node_where(const char *file, struct fy_node *at, struct fy_node *fallback);

/* YAML's null (empty, ~, null; plain style) and a node's kind for error
 * messages ("nothing", "a mapping", "a sequence", "a scalar"). */
bool config_node_is_null(struct fy_node *n);
const char *config_node_kind(struct fy_node *n);

/* Pure parsers shared with the flags: "250ms", "10s", "2m", "1h" (a bare
 * number is seconds) and "512", "32KiB", "16MiB", "1GiB" (bytes). */
bool config_parse_duration_ms(const char *s, int64_t *out);
bool config_parse_size(const char *s, int64_t *out);

/* Every scalar key, for docs and tests: NULL-terminated dotted names. */
extern const char *const config_keys[];
/* The environment variable that overrides key: "store.s3.endpoint" ->
 * "STAGELINE_STORE_S3_ENDPOINT". Caller frees. */
char *config_env_name(const char *key);

#endif
