/* Settings for stagelined. One table (CONFIG_SETTINGS below) lists every
 * scalar key with its type, its place in struct config, its default and what
 * it means; defaults, the YAML file, STAGELINE_* variables and flags all go
 * through the same per-type setter, so a value is parsed the same way
 * whichever layer it came from. The file's `modules` and `pipelines` are not
 * read here: the parsed document stays alive in cfg->doc for engine code. */
#include "core/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libfyaml.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/scrub.h"
#include "core/xmalloc.h"

enum setting_type {
	SET_STRING,
	SET_INT, /* a count: 0..INT32_MAX */
	SET_DURATION, /* stored in milliseconds */
	SET_SIZE, /* stored in bytes */
	SET_BOOL,
	SET_DOUBLE, /* finite, >= 0 */
	SET_ENUM, /* a string from a fixed list */
};

/* The C type of the field each setting type writes; checked at compile time
 * below so a wrong table row cannot scribble over a neighbouring field. */
#define CTYPE_STRING char *
#define CTYPE_ENUM char *
#define CTYPE_INT int64_t
#define CTYPE_DURATION int64_t
#define CTYPE_SIZE int64_t
#define CTYPE_BOOL bool
#define CTYPE_DOUBLE double

static const char *const log_formats[] = {"json", "text", NULL};
static const char *const log_levels[] = {"debug", "info", "warn", "error", NULL};
static const char *const store_backends[] = {"file", "s3", NULL};

/* X(key, type, field, choices, default, doc). docs/configuration.md and
 * contrib/stageline.yaml follow this table; test_config checks they name
 * every key. */
#define CONFIG_SETTINGS(X)                                                                         \
	X("server.listen", STRING, server.listen, NULL, "127.0.0.1:8080",                          \
	  "Address of the HTTP API: host:port or unix:/absolute/path.")                            \
	X("server.shutdown_grace", DURATION, server.shutdown_grace_ms, NULL, "30s",                \
	  "After SIGTERM, how long running tasks may finish before they are cancelled.")           \
	X("server.metrics_listen", STRING, server.metrics_listen, NULL, "",                        \
	  "Separate address for the metrics endpoint; empty = off.")                               \
	X("server.metrics", BOOL, server.metrics, NULL, "true",                                    \
	  "Collect metrics; false makes every metric update a no-op.")                             \
	X("server.console_dir", STRING, server.console_dir, NULL, "",                              \
	  "Directory of the built web console served at /console/; empty = off.")                  \
	X("database.url", STRING, database.url, NULL,                                              \
	  "postgresql:///stageline?host=/var/run/postgresql", "libpq connection string.")          \
	X("database.pool", INT, database.pool, NULL, "8", "Database connections (1-256).")         \
	X("store.backend", ENUM, store.backend, store_backends, "file",                            \
	  "Where artifacts live: file or s3.")                                                     \
	X("store.path", STRING, store.path, NULL, "./var/objects",                                 \
	  "Root directory of the file store.")                                                     \
	X("store.url_secret", STRING, store.url_secret, NULL, "",                                  \
	  "HMAC key for the file store's download links.")                                         \
	X("store.url_ttl", DURATION, store.url_ttl_ms, NULL, "300s",                               \
	  "Lifetime of download URLs (at most 15m).")                                              \
	X("store.s3.endpoint", STRING, store.s3.endpoint, NULL, "",                                \
	  "S3 endpoint URL; empty = AWS for the region.")                                          \
	X("store.s3.bucket", STRING, store.s3.bucket, NULL, "", "S3 bucket (required for s3).")    \
	X("store.s3.region", STRING, store.s3.region, NULL, "us-east-1", "S3 region for SigV4.")   \
	X("store.s3.prefix", STRING, store.s3.prefix, NULL, "", "Key prefix inside the bucket.")   \
	X("store.s3.access_key_id", STRING, store.s3.access_key_id, NULL, "", "S3 access key id.") \
	X("store.s3.secret_access_key", STRING, store.s3.secret_access_key, NULL, "",              \
	  "S3 secret access key.")                                                                 \
	X("store.s3.path_style", BOOL, store.s3.path_style, NULL, "false",                         \
	  "Path-style addressing (MinIO, s3rver) instead of virtual-host.")                        \
	X("log.format", ENUM, log.format, log_formats, "json", "Process log format.")              \
	X("log.level", ENUM, log.level, log_levels, "info", "Lowest level written.")               \
	X("log.file", STRING, log.file, NULL, "", "Process log file; empty = stderr.")             \
	X("auth.enabled", BOOL, auth.enabled, NULL, "true", "Require API keys.")                   \
	X("auth.max_failures", INT, auth.max_failures, NULL, "10",                                 \
	  "Failed authentications per client address per window before 429; 0 = off.")             \
	X("auth.failure_window", DURATION, auth.failure_window_ms, NULL, "60s",                    \
	  "Window of auth.max_failures, and how long a blocked address stays blocked.")            \
	X("auth.jwt.enabled", BOOL, auth.jwt.enabled, NULL, "false",                               \
	  "Accept JWT bearer tokens beside API keys.")                                             \
	X("auth.jwt.issuer", STRING, auth.jwt.issuer, NULL, "", "Required iss claim.")             \
	X("auth.jwt.audience", STRING, auth.jwt.audience, NULL, "",                                \
	  "Required aud claim (or an element of it).")                                             \
	X("auth.jwt.leeway", DURATION, auth.jwt.leeway_ms, NULL, "60s",                            \
	  "Clock skew allowed on exp and nbf (at most 5m).")                                       \
	X("auth.jwt.hs256_secret", STRING, auth.jwt.hs256_secret, NULL, "",                        \
	  "HS256 key, at least 32 bytes; empty = none.")                                           \
	X("auth.jwt.hs256_kid", STRING, auth.jwt.hs256_kid, NULL, "",                              \
	  "kid of the HS256 key; empty = none.")                                                   \
	X("auth.jwt.public_key_file", STRING, auth.jwt.public_key_file, NULL, "",                  \
	  "PEM public key, RSA (RS256) or EC P-256 (ES256); empty = none.")                        \
	X("auth.jwt.public_key_kid", STRING, auth.jwt.public_key_kid, NULL, "",                    \
	  "kid of the public key; empty = none.")                                                  \
	X("auth.jwt.project_claim", STRING, auth.jwt.project_claim, NULL, "project",               \
	  "Claim naming the project.")                                                             \
	X("auth.jwt.scopes_claim", STRING, auth.jwt.scopes_claim, NULL, "scope",                   \
	  "Claim holding the scopes: a space-separated string or an array.")                       \
	X("scheduler.enabled", BOOL, scheduler.enabled, NULL, "true",                              \
	  "Run tasks here; false makes an API-only instance.")                                     \
	X("scheduler.max_concurrency", INT, scheduler.max_concurrency, NULL, "64",                 \
	  "Tasks running at once on this instance.")                                               \
	X("scheduler.lease", DURATION, scheduler.lease_ms, NULL, "30s",                            \
	  "Lease of a claimed task; another instance may rescue it after this.")                   \
	X("scheduler.heartbeat", DURATION, scheduler.heartbeat_ms, NULL, "10s",                    \
	  "How often leases are renewed; less than the lease.")                                    \
	X("scheduler.rescue_every", DURATION, scheduler.rescue_every_ms, NULL, "15s",              \
	  "How often expired leases are returned to ready.")                                       \
	X("scheduler.poll", DURATION, scheduler.poll_ms, NULL, "5s",                               \
	  "Safety-net poll for ready tasks when no NOTIFY arrives.")                               \
	X("scheduler.log_flush", DURATION, scheduler.log_flush_ms, NULL, "5s",                     \
	  "How often a running stage's log is stored (a crash loses at most this much).")          \
	X("scheduler.scratch_dir", STRING, scheduler.scratch_dir, NULL, "./var/scratch",           \
	  "Where task inputs are fetched and modules run.")                                        \
	X("quota.max_concurrent_jobs", INT, quota.max_concurrent_jobs, NULL, "0",                  \
	  "Running jobs per project; 0 = off.")                                                    \
	X("quota.max_queued_jobs", INT, quota.max_queued_jobs, NULL, "0",                          \
	  "Queued jobs per project; 0 = off.")                                                     \
	X("quota.max_input_bytes", SIZE, quota.max_input_bytes, NULL, "0",                         \
	  "Job input size per project; 0 = limits.max_input_bytes.")                               \
	X("quota.submissions_per_second", DOUBLE, quota.submissions_per_second, NULL, "0",         \
	  "Job submissions per second per project; 0 = off.")                                      \
	X("privacy.scrub", BOOL, privacy.scrub, NULL, "false",                                     \
	  "Mask personal data (fields, e-mail, phone) in logs, events and stage logs.")            \
	X("privacy.scrub_fields", STRING, privacy.scrub_fields, NULL, SCRUB_DEFAULT_FIELDS,        \
	  "Field names whose values are masked, comma-separated.")                                 \
	X("privacy.scrub_patterns", STRING, privacy.scrub_patterns, NULL, "email,phone",           \
	  "Patterns masked in module text, comma-separated: email, phone.")                        \
	X("limits.max_input_bytes", SIZE, limits.max_input_bytes, NULL, "16MiB",                   \
	  "Largest request body (413).")                                                           \
	X("limits.max_header_bytes", SIZE, limits.max_header_bytes, NULL, "32KiB",                 \
	  "Largest request header block (431).")                                                   \
	X("limits.max_header_fields", INT, limits.max_header_fields, NULL, "100",                  \
	  "Most request header fields (431).")                                                     \
	X("limits.header_timeout", DURATION, limits.header_timeout_ms, NULL, "10s",                \
	  "Deadline for reading request headers (408).")                                           \
	X("limits.idle_timeout", DURATION, limits.idle_timeout_ms, NULL, "60s",                    \
	  "Idle keep-alive connections are closed after this.")                                    \
	X("limits.max_params_bytes", SIZE, limits.max_params_bytes, NULL, "1MiB",                  \
	  "Largest job params object.")                                                            \
	X("limits.max_stages", INT, limits.max_stages, NULL, "64", "Most stages in a pipeline.")   \
	X("limits.max_frame_bytes", SIZE, limits.max_frame_bytes, NULL, "16MiB",                   \
	  "Largest worker-protocol frame.")                                                        \
	X("pipelines_dir", STRING, pipelines_dir, NULL, "",                                        \
	  "Directory of pipeline files, one pipeline each; empty = none.")

struct setting {
	const char *key;
	enum setting_type type;
	size_t off;
	const char *const *choices; /* SET_ENUM: NULL-terminated */
	const char *def; /* parsed by the setter like any other value */
	const char *doc;
};

#define SETTING_ROW(key, type, field, choices, def, doc) \
	{key, SET_##type, offsetof(struct config, field), choices, def, doc},
static const struct setting settings[] = {CONFIG_SETTINGS(SETTING_ROW)};
#define N_SETTINGS (sizeof settings / sizeof settings[0])

#define SETTING_KEY(key, type, field, choices, def, doc) key,
const char *const config_keys[] = {CONFIG_SETTINGS(SETTING_KEY) NULL};

#define SETTING_CHECK(key, type, field, choices, def, doc)                                   \
	_Static_assert(__builtin_types_compatible_p(__typeof__(((struct config *)0)->field), \
	                                            CTYPE_##type),                           \
	               key ": table type does not match the struct field");
CONFIG_SETTINGS(SETTING_CHECK)

/* Durations are capped so that converting them to nanoseconds cannot
 * overflow an int64_t anywhere downstream (about 292 years). */
#define DURATION_MAX_MS (INT64_MAX / 1000000)
#define COUNT_MAX INT32_MAX
#define ENV_PREFIX "STAGELINE_"

void config_errors_add(struct config_errors *e, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *msg = xvasprintf(fmt, ap);
	va_end(ap);
	e->msgs = xrealloc(e->msgs, (e->n + 1) * sizeof *e->msgs);
	e->msgs[e->n++] = msg;
}

void config_errors_clear(struct config_errors *e)
{
	for (size_t i = 0; i < e->n; i++)
		free(e->msgs[i]);
	free(e->msgs);
	e->msgs = NULL;
	e->n = 0;
}

/* Parses the leading decimal digits of s into *v; returns the rest, or NULL
 * when there are no digits or the number does not fit below max. */
static const char *parse_digits(const char *s, uint64_t max, uint64_t *v)
{
	uint64_t n = 0;
	const char *p = s;
	if (!isdigit((unsigned char)*p))
		return NULL;
	for (; isdigit((unsigned char)*p); p++) {
		unsigned d = (unsigned)(*p - '0');
		if (n > (max - d) / 10)
			return NULL;
		n = n * 10 + d;
	}
	*v = n;
	return p;
}

/* Whole numbers only: "1.5s" is refused rather than rounded, so the value a
 * user wrote is exactly the value used ("1500ms" says the same thing). */
bool config_parse_duration_ms(const char *s, int64_t *out)
{
	static const struct {
		const char *unit;
		uint64_t ms;
	} units[] = {{"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60 * 1000}, {"h", 3600 * 1000}};
	uint64_t v;
	const char *rest = s ? parse_digits(s, UINT64_MAX, &v) : NULL;
	if (rest == NULL)
		return false;
	for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
		if (strcmp(rest, units[i].unit) != 0)
			continue;
		if (v > (uint64_t)DURATION_MAX_MS / units[i].ms)
			return false;
		*out = (int64_t)(v * units[i].ms);
		return true;
	}
	return false;
}

bool config_parse_size(const char *s, int64_t *out)
{
	static const struct {
		const char *unit;
		uint64_t mult;
	} units[] = {{"", 1}, {"KiB", 1ULL << 10}, {"MiB", 1ULL << 20}, {"GiB", 1ULL << 30}};
	uint64_t v;
	const char *rest = s ? parse_digits(s, UINT64_MAX, &v) : NULL;
	if (rest == NULL)
		return false;
	for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
		if (strcmp(rest, units[i].unit) != 0)
			continue;
		if (v > (uint64_t)INT64_MAX / units[i].mult)
			return false;
		*out = (int64_t)(v * units[i].mult);
		return true;
	}
	return false;
}

static bool parse_count(const char *s, int64_t *out)
{
	uint64_t v;
	const char *rest = parse_digits(s, COUNT_MAX, &v);
	if (rest == NULL || *rest != '\0')
		return false;
	*out = (int64_t)v;
	return true;
}

static bool parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = {"true", "yes", "on", "1"};
	static const char *const no[] = {"false", "no", "off", "0"};
	for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
		if (strcasecmp(s, yes[i]) == 0) {
			*out = true;
			return true;
		}
		if (strcasecmp(s, no[i]) == 0) {
			*out = false;
			return true;
		}
	}
	return false;
}

/* A plain decimal: strtod alone would also take " 1", "+1", "0x1p3", "inf"
 * and "nan". */
static bool parse_double(const char *s, double *out)
{
	if (!isdigit((unsigned char)s[0]) || strspn(s, "0123456789.eE+-") != strlen(s))
		return false;
	char *end;
	errno = 0;
	double d = strtod(s, &end);
	if (*end != '\0' || errno == ERANGE || !isfinite(d) || d < 0)
		return false;
	*out = d;
	return true;
}

static void setting_describe(const struct setting *s, struct buf *b)
{
	switch (s->type) {
	case SET_STRING: buf_adds(b, "a string"); break;
	case SET_INT: buf_printf(b, "a whole number from 0 to %d", COUNT_MAX); break;
	case SET_DURATION: buf_adds(b, "a duration like 30s"); break;
	case SET_SIZE: buf_adds(b, "a size like 16MiB (bytes, KiB, MiB or GiB)"); break;
	case SET_BOOL: buf_adds(b, "true or false"); break;
	case SET_DOUBLE: buf_adds(b, "a number >= 0"); break;
	case SET_ENUM:
		buf_adds(b, "one of ");
		for (size_t i = 0; s->choices[i]; i++)
			buf_printf(b, "%s%s", i ? ", " : "", s->choices[i]);
		break;
	}
}

static const struct setting *setting_find(const char *key, size_t len)
{
	for (size_t i = 0; i < N_SETTINGS; i++) {
		if (strlen(settings[i].key) == len && memcmp(settings[i].key, key, len) == 0)
			return &settings[i];
	}
	return NULL;
}

/* True when some key lives under "prefix." (a section like "store.s3"). */
static bool section_exists(const char *prefix, size_t len)
{
	for (size_t i = 0; i < N_SETTINGS; i++) {
		const char *k = settings[i].key;
		if (strncmp(k, prefix, len) == 0 && k[len] == '.')
			return true;
	}
	return false;
}

/* The one place a value becomes a setting. where names the origin in errors;
 * on error the field keeps its previous value. */
static bool setting_set(struct config *cfg, const struct setting *s, const char *val, size_t len,
                        const char *where, struct config_errors *errs)
{
	void *field = (char *)cfg + s->off;
	if (memchr(val, '\0', len) != NULL) {
		config_errors_add(errs, "%s: %s: value contains a NUL byte", where, s->key);
		return false;
	}
	char *text = xstrndup(val, len);
	bool ok = false;
	switch (s->type) {
	case SET_STRING:
		free(*(char **)field);
		*(char **)field = text;
		return true;
	case SET_ENUM:
		for (size_t i = 0; s->choices[i]; i++) {
			if (strcmp(text, s->choices[i]) == 0) {
				free(*(char **)field);
				*(char **)field = text;
				return true;
			}
		}
		break;
	case SET_INT: ok = parse_count(text, (int64_t *)field); break;
	case SET_DURATION: ok = config_parse_duration_ms(text, (int64_t *)field); break;
	case SET_SIZE: ok = config_parse_size(text, (int64_t *)field); break;
	case SET_BOOL: ok = parse_bool(text, (bool *)field); break;
	case SET_DOUBLE: ok = parse_double(text, (double *)field); break;
	}
	if (!ok) {
		struct buf want = BUF_INIT;
		setting_describe(s, &want);
		config_errors_add(errs, "%s: %s: expected %s, got '%s'", where, s->key, want.data,
		                  text);
		buf_free(&want);
	}
	free(text);
	return ok;
}

static char *cwd_or_dot(void)
{
	char *cwd = get_current_dir_name();
	if (cwd == NULL)
		return xstrdup(".");
	char *copy = xstrdup(cwd);
	free(cwd);
	return copy;
}

struct config *config_new(void)
{
	struct config *cfg = xcalloc(1, sizeof *cfg);
	struct config_errors errs = {0};
	cfg->dir = cwd_or_dot();
	for (size_t i = 0; i < N_SETTINGS; i++) {
		const struct setting *s = &settings[i];
		if (!setting_set(cfg, s, s->def, strlen(s->def), "default", &errs)) {
			/* A bad default is a bug in the table above, not a user error. */
			fprintf(stderr, "stageline: %s\n", errs.msgs[0]);
			abort();
		}
	}
	return cfg;
}

void config_free(struct config *cfg)
{
	if (cfg == NULL)
		return;
	for (size_t i = 0; i < N_SETTINGS; i++) {
		if (settings[i].type == SET_STRING || settings[i].type == SET_ENUM)
			free(*(char **)((char *)cfg + settings[i].off));
	}
	free(cfg->path);
	free(cfg->dir);
	if (cfg->doc)
		fy_document_destroy(cfg->doc);
	free(cfg);
}

bool config_set(struct config *cfg, const char *key, const char *value, const char *origin,
                struct config_errors *errs)
{
	const struct setting *s = setting_find(key, strlen(key));
	if (s == NULL) {
		config_errors_add(errs, "%s: unknown key '%s'", origin, key);
		return false;
	}
	return setting_set(cfg, s, value, strlen(value), origin, errs);
}

/* "store.s3.endpoint" -> "STAGELINE_STORE_S3_ENDPOINT" into b. */
static void env_name(struct buf *b, const char *key)
{
	buf_reset(b);
	buf_adds(b, ENV_PREFIX);
	for (const char *p = key; *p; p++)
		buf_addc(b, *p == '.' ? '_' : (char)toupper((unsigned char)*p));
}

char *config_env_name(const char *key)
{
	struct buf b = BUF_INIT;
	env_name(&b, key);
	return buf_steal(&b);
}

/* True when name (after STAGELINE_) starts with a known section, so a typo
 * such as STAGELINE_SERVER_LISTN is reported instead of silently ignored. */
static bool env_in_known_section(const char *name, size_t len)
{
	struct buf b = BUF_INIT;
	bool found = false;
	for (size_t i = 0; i < N_SETTINGS && !found; i++) {
		const char *dot = strchr(settings[i].key, '.');
		if (dot == NULL)
			continue;
		buf_reset(&b);
		buf_adds(&b, ENV_PREFIX);
		for (const char *p = settings[i].key; p < dot; p++)
			buf_addc(&b, (char)toupper((unsigned char)*p));
		buf_addc(&b, '_');
		found = len >= b.len && memcmp(name, b.data, b.len) == 0;
	}
	buf_free(&b);
	return found;
}

bool config_apply_env(struct config *cfg, char *const *envp, struct config_errors *errs)
{
	size_t before = errs->n;
	struct buf b = BUF_INIT;
	for (; envp && *envp; envp++) {
		const char *var = *envp;
		const char *eq = strchr(var, '=');
		if (eq == NULL || strncmp(var, ENV_PREFIX, strlen(ENV_PREFIX)) != 0)
			continue;
		size_t len = (size_t)(eq - var);
		char *name = xstrndup(var, len);
		/* The CLI's variables: a daemon started from a shell that has them set
		 * must not fail. */
		if (strcmp(name, "STAGELINE_URL") == 0 || strcmp(name, "STAGELINE_API_KEY") == 0) {
			free(name);
			continue;
		}
		const struct setting *s = NULL;
		for (size_t i = 0; i < N_SETTINGS && s == NULL; i++) {
			env_name(&b, settings[i].key);
			if (strcmp(b.data, name) == 0)
				s = &settings[i];
		}
		if (s != NULL)
			(void)setting_set(cfg, s, eq + 1, strlen(eq + 1), name, errs);
		else if (env_in_known_section(name, len))
			config_errors_add(errs, "%s: unknown setting", name);
		free(name);
	}
	buf_free(&b);
	return errs->n == before;
}

/* --- the YAML file --- */

struct load_ctx {
	struct config *cfg;
	const char *path;
	struct config_errors *errs;
};

/* 0-based position of a scalar node; collections and empty values have no
 * token of their own in libfyaml 0.7, so callers pass a fallback node. */
static bool node_mark(struct fy_node *n, int *line, int *col)
{
	if (n == NULL || !fy_node_is_scalar(n))
		return false;
	struct fy_token *t = fy_node_get_scalar_token(n);
	const struct fy_mark *m = t ? fy_token_start_mark(t) : NULL;
	if (m == NULL)
		return false;
	*line = m->line;
	*col = m->column;
	return true;
}

/* Where a collection starts: its first scalar (exact for block style). */
static bool node_mark_deep(struct fy_node *n, int *line, int *col)
{
	if (n == NULL || node_mark(n, line, col))
		return n != NULL;
	void *iter = NULL;
	if (fy_node_is_mapping(n)) {
		struct fy_node_pair *pair = fy_node_mapping_iterate(n, &iter);
		return pair != NULL && node_mark_deep(fy_node_pair_key(pair), line, col);
	}
	if (fy_node_is_sequence(n))
		return node_mark_deep(fy_node_sequence_iterate(n, &iter), line, col);
	return false;
}

/* "path:LINE:COL" (1-based) of at, else of fallback, else of at's first
 * child, else just "path". */
/* "file:LINE:COL" (1-based) of at, else of fallback, else of at's first
 * child, else just "file". Shared with engine/pipeline.c. */
char *config_node_where(const char *file, struct fy_node *at, struct fy_node *fallback)
{
	int line, col;
	if (node_mark(at, &line, &col) || node_mark(fallback, &line, &col) ||
	    node_mark_deep(at, &line, &col))
		return xasprintf("%s:%d:%d", file, line + 1, col + 1);
	return xstrdup(file);
}

static char *load_where(const struct load_ctx *lc, struct fy_node *at, struct fy_node *fallback)
{
	return config_node_where(lc->path, at, fallback);
}

static void load_error(const struct load_ctx *lc, struct fy_node *at, struct fy_node *fallback,
                       const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void load_error(const struct load_ctx *lc, struct fy_node *at, struct fy_node *fallback,
                       const char *fmt, ...)
{
	char *where = load_where(lc, at, fallback);
	va_list ap;
	va_start(ap, fmt);
	char *msg = xvasprintf(fmt, ap);
	va_end(ap);
	config_errors_add(lc->errs, "%s: %s", where, msg);
	free(msg);
	free(where);
}

/* YAML's null: an empty value, ~ or null, unquoted. */
bool config_node_is_null(struct fy_node *n)
{
	if (n == NULL)
		return true;
	if (!fy_node_is_scalar(n) || fy_node_get_style(n) != FYNS_PLAIN)
		return false;
	size_t len;
	const char *s = fy_node_get_scalar(n, &len);
	if (s == NULL || len == 0)
		return true;
	static const char *const nulls[] = {"~", "null", "Null", "NULL"};
	for (size_t i = 0; i < sizeof nulls / sizeof nulls[0]; i++) {
		if (strlen(nulls[i]) == len && memcmp(s, nulls[i], len) == 0)
			return true;
	}
	return false;
}

const char *config_node_kind(struct fy_node *n)
{
	if (config_node_is_null(n))
		return "nothing";
	switch (fy_node_get_type(n)) {
	case FYNT_MAPPING: return "a mapping";
	case FYNT_SEQUENCE: return "a sequence";
	default: return "a scalar";
	}
}

static void load_scalar(const struct load_ctx *lc, const struct setting *s, struct fy_node *k,
                        struct fy_node *v)
{
	if (v == NULL || !fy_node_is_scalar(v) || config_node_is_null(v)) {
		struct buf want = BUF_INIT;
		setting_describe(s, &want);
		load_error(lc, v, k, "%s: expected %s, got %s%s", s->key, want.data,
		           config_node_kind(v),
		           s->type == SET_STRING && config_node_is_null(v)
		                   ? " (write \"\" for empty)"
		                   : "");
		buf_free(&want);
		return;
	}
	size_t len;
	const char *text = fy_node_get_scalar(v, &len);
	char *where = load_where(lc, v, k);
	(void)setting_set(lc->cfg, s, text ? text : "", text ? len : 0, where, lc->errs);
	free(where);
}

/* Walks one mapping; prefix is the dotted section ("" at the top level). */
static void load_mapping(const struct load_ctx *lc, const char *prefix, struct fy_node *map)
{
	void *iter = NULL;
	struct fy_node_pair *pair;
	while ((pair = fy_node_mapping_iterate(map, &iter)) != NULL) {
		struct fy_node *k = fy_node_pair_key(pair);
		struct fy_node *v = fy_node_pair_value(pair);
		size_t klen = 0;
		const char *ktext = k && fy_node_is_scalar(k) ? fy_node_get_scalar(k, &klen) : NULL;
		if (ktext == NULL || config_node_is_null(k)) {
			load_error(lc, k, NULL, "%s%skeys must be plain names", prefix,
			           *prefix ? ": " : "");
			continue;
		}
		char *full = *prefix ? xasprintf("%s.%.*s", prefix, (int)klen, ktext)
		                     : xstrndup(ktext, klen);
		/* A key containing '.' or NUL would alias a nested one; refuse it. */
		bool plain = memchr(ktext, '.', klen) == NULL && memchr(ktext, '\0', klen) == NULL;
		const struct setting *s = plain ? setting_find(full, strlen(full)) : NULL;
		if (s != NULL) {
			load_scalar(lc, s, k, v);
		} else if (plain && *prefix == '\0' &&
		           (strcmp(full, "modules") == 0 || strcmp(full, "pipelines") == 0)) {
			if (v != NULL && fy_node_is_mapping(v))
				*(strcmp(full, "modules") == 0 ? &lc->cfg->modules
				                               : &lc->cfg->pipelines) = v;
			else if (!config_node_is_null(v))
				load_error(lc, v, k, "%s: expected a mapping, got %s", full,
				           config_node_kind(v));
		} else if (plain && section_exists(full, strlen(full))) {
			if (v != NULL && fy_node_is_mapping(v))
				load_mapping(lc, full, v);
			else if (!config_node_is_null(v)) /* an empty section sets nothing */
				load_error(lc, v, k, "%s: expected a mapping, got %s", full,
				           config_node_kind(v));
		} else {
			load_error(lc, k, v, "unknown key '%s'", full);
		}
		free(full);
	}
}

/* libfyaml reports through this only what it does not collect (it collects
 * errors with positions); kept in case a failure comes without one. */
static void load_diag_output_cb(struct fy_diag *diag, void *user, const char *text, size_t len)
{
	buf_add(user, text, len);
}

static void load_set_path(struct config *cfg, const char *path)
{
	char *copy = xstrdup(path);
	const char *dir = dirname(copy);
	char *real = realpath(dir, NULL);
	free(cfg->dir);
	if (real != NULL) {
		cfg->dir = xstrdup(real);
		free(real);
	} else if (dir[0] == '/') {
		cfg->dir = xstrdup(dir);
	} else {
		char *cwd = cwd_or_dot();
		cfg->dir = xasprintf("%s/%s", cwd, dir);
		free(cwd);
	}
	free(copy);
	free(cfg->path);
	cfg->path = xstrdup(path);
}

/* Parses the file into a document. Returns false with errors added on a
 * syntax error; *docp stays NULL for a file with no document at all. */
static bool load_parse(const struct load_ctx *lc, struct fy_document **docp)
{
	struct buf out = BUF_INIT;
	struct fy_diag_cfg dcfg;
	fy_diag_cfg_default(&dcfg);
	dcfg.fp = NULL; /* never print to stderr: --check-config owns the output */
	dcfg.output_fn = load_diag_output_cb;
	dcfg.user = &out;
	dcfg.colorize = false;
	struct fy_diag *diag = fy_diag_create(&dcfg);
	if (diag == NULL) {
		config_errors_add(lc->errs, "%s: cannot set up the YAML parser", lc->path);
		return false;
	}
	fy_diag_set_collect_errors(diag, true);
	struct fy_parse_cfg pcfg = {
	        .flags = FYPCF_QUIET | FYPCF_RESOLVE_DOCUMENT,
	        .diag = diag,
	};
	struct fy_parser *fyp = fy_parser_create(&pcfg);
	struct fy_document *doc = NULL, *extra = NULL;
	if (fyp != NULL && fy_parser_set_input_file(fyp, lc->path) == 0) {
		doc = fy_parse_load_document(fyp);
		if (doc != NULL)
			extra = fy_parse_load_document(fyp);
	}
	size_t before = lc->errs->n;
	void *iter = NULL;
	struct fy_diag_error *e;
	while ((e = fy_diag_errors_iterate(diag, &iter)) != NULL) {
		config_errors_add(lc->errs, "%s:%d:%d: invalid YAML: %s", lc->path, e->line,
		                  e->column, e->msg);
	}
	if (lc->errs->n == before && (fyp == NULL || fy_diag_got_error(diag))) {
		/* No positioned error: say what libfyaml said, on one line. */
		while (out.len && (out.data[out.len - 1] == '\n' || out.data[out.len - 1] == ' '))
			out.data[--out.len] = '\0';
		config_errors_add(lc->errs, "%s: invalid YAML: %s", lc->path,
		                  out.len ? out.data : "parse failed");
	}
	if (extra != NULL) {
		load_error(lc, fy_document_root(extra), NULL,
		           "only one YAML document is allowed in a config file");
		fy_document_destroy(extra);
	}
	if (fyp != NULL)
		fy_parser_destroy(fyp);
	/* The document keeps a reference to diag, and a last unref does not free
	 * collected errors (only fy_diag_destroy does, and that would also lock
	 * the document's diag for good). So drop them, stop collecting, and send
	 * output nowhere rather than into our stack buffer; engine code that
	 * wants libfyaml's messages can give the diag a new cfg. */
	fy_diag_set_collect_errors(diag, false);
	dcfg.output_fn = NULL;
	dcfg.user = NULL;
	fy_diag_set_cfg(diag, &dcfg);
	fy_diag_unref(diag);
	buf_free(&out);
	if (lc->errs->n != before) {
		if (doc != NULL)
			fy_document_destroy(doc);
		return false;
	}
	*docp = doc;
	return true;
}

bool config_load_file(struct config *cfg, const char *path, struct config_errors *errs)
{
	struct load_ctx lc = {cfg, path, errs};
	/* Checked first so a missing file reads "No such file or directory"
	 * rather than libfyaml's generic failure. */
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		config_errors_add(errs, "%s: cannot open: %s", path, strerror(errno));
		return false;
	}
	struct stat st;
	bool is_dir = fstat(fd, &st) == 0 && S_ISDIR(st.st_mode);
	close(fd);
	if (is_dir) {
		config_errors_add(errs, "%s: is a directory", path);
		return false;
	}
	load_set_path(cfg, path);

	/* The nodes of a previous file die with its document. */
	cfg->modules = cfg->pipelines = NULL;
	if (cfg->doc != NULL) {
		fy_document_destroy(cfg->doc);
		cfg->doc = NULL;
	}
	struct fy_document *doc = NULL;
	if (!load_parse(&lc, &doc))
		return false;
	if (doc == NULL)
		return true; /* empty file: every default stands */
	cfg->doc = doc;

	size_t before = errs->n;
	struct fy_node *root = fy_document_root(doc);
	if (root != NULL && fy_node_is_mapping(root))
		load_mapping(&lc, "", root);
	else if (!config_node_is_null(root))
		load_error(&lc, root, NULL, "the top level must be a mapping of sections, got %s",
		           config_node_kind(root));
	return errs->n == before;
}

/* --- validation --- */

static bool port_ok(const char *s)
{
	uint64_t v;
	const char *rest = parse_digits(s, UINT64_MAX, &v);
	return rest != NULL && *rest == '\0' && rest - s <= 5 && v <= 65535;
}

/* host:port with an IPv4 literal, localhost or [IPv6]; or unix:/abs/path.
 * Names other than localhost are refused: resolving them would block. */
static bool listen_ok(const char *s)
{
	if (strncmp(s, "unix:", 5) == 0) {
		const char *p = s + 5;
		return p[0] == '/' && strlen(p) < sizeof(((struct sockaddr_un *)0)->sun_path);
	}
	char host[INET6_ADDRSTRLEN + 1];
	unsigned char addr[sizeof(struct in6_addr)];
	if (s[0] == '[') {
		const char *close = strchr(s, ']');
		if (close == NULL || close[1] != ':' || (size_t)(close - s - 1) >= sizeof host)
			return false;
		memcpy(host, s + 1, (size_t)(close - s - 1));
		host[close - s - 1] = '\0';
		return inet_pton(AF_INET6, host, addr) == 1 && port_ok(close + 2);
	}
	const char *colon = strchr(s, ':');
	if (colon == NULL || strchr(colon + 1, ':') != NULL || (size_t)(colon - s) >= sizeof host)
		return false;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = '\0';
	if (strcmp(host, "localhost") != 0 && inet_pton(AF_INET, host, addr) != 1)
		return false;
	return port_ok(colon + 1);
}

#define LISTEN_SYNTAX \
	"host:port (IPv4 address, localhost or [IPv6], port 0-65535) or unix:/absolute/path"

bool config_validate(struct config *cfg, struct config_errors *errs)
{
	size_t before = errs->n;

	/* Enums again: a caller may have written a field directly. */
	for (size_t i = 0; i < N_SETTINGS; i++) {
		const struct setting *s = &settings[i];
		if (s->type != SET_ENUM)
			continue;
		const char *v = *(char **)((char *)cfg + s->off);
		bool found = false;
		for (size_t j = 0; s->choices[j] && !found; j++)
			found = strcmp(v, s->choices[j]) == 0;
		if (!found) {
			struct buf want = BUF_INIT;
			setting_describe(s, &want);
			config_errors_add(errs, "%s: expected %s, got '%s'", s->key, want.data, v);
			buf_free(&want);
		}
	}

	if (!listen_ok(cfg->server.listen))
		config_errors_add(errs, "server.listen: expected " LISTEN_SYNTAX ", got '%s'",
		                  cfg->server.listen);
	if (cfg->server.metrics_listen[0] != '\0') {
		if (!listen_ok(cfg->server.metrics_listen))
			config_errors_add(errs,
			                  "server.metrics_listen: expected " LISTEN_SYNTAX
			                  " or \"\" for off, got '%s'",
			                  cfg->server.metrics_listen);
		else if (strcmp(cfg->server.metrics_listen, cfg->server.listen) == 0)
			config_errors_add(errs,
			                  "server.metrics_listen: must differ from server.listen");
	}

	if (cfg->database.url[0] == '\0')
		config_errors_add(errs, "database.url: must not be empty");
	if (cfg->database.pool < 1 || cfg->database.pool > 256)
		config_errors_add(errs, "database.pool: must be from 1 to 256, got %" PRId64,
		                  cfg->database.pool);

	if (strcmp(cfg->store.backend, "file") == 0 && cfg->store.path[0] == '\0')
		config_errors_add(errs, "store.path: must not be empty with store.backend file");
	if (strcmp(cfg->store.backend, "s3") == 0) {
		if (cfg->store.s3.bucket[0] == '\0')
			config_errors_add(errs, "store.s3.bucket: required with store.backend s3");
		if (cfg->store.s3.region[0] == '\0')
			config_errors_add(errs, "store.s3.region: required with store.backend s3");
		const char *ep = cfg->store.s3.endpoint;
		if (ep[0] != '\0' && strncmp(ep, "http://", 7) != 0 &&
		    strncmp(ep, "https://", 8) != 0)
			config_errors_add(
			        errs,
			        "store.s3.endpoint: expected an http:// or https:// URL, got '%s'",
			        ep);
		if ((cfg->store.s3.access_key_id[0] == '\0') !=
		    (cfg->store.s3.secret_access_key[0] == '\0'))
			config_errors_add(errs,
			                  "store.s3.access_key_id, store.s3.secret_access_key: "
			                  "set both or neither");
	}
	/* S3 presigned URLs cannot outlive 15 minutes here (ARCHITECTURE §6); the
	 * file store follows the same bound so links behave alike. */
	if (cfg->store.url_ttl_ms < 1000 || cfg->store.url_ttl_ms > 900 * 1000)
		config_errors_add(errs, "store.url_ttl: must be from 1s to 15m, got %" PRId64 "ms",
		                  cfg->store.url_ttl_ms);

	if (cfg->scheduler.max_concurrency < 1)
		config_errors_add(errs, "scheduler.max_concurrency: must be at least 1");
	static const struct {
		const char *key;
		size_t off;
	} positive[] = {
	        {"scheduler.lease", offsetof(struct config, scheduler.lease_ms)},
	        {"scheduler.heartbeat", offsetof(struct config, scheduler.heartbeat_ms)},
	        {"scheduler.rescue_every", offsetof(struct config, scheduler.rescue_every_ms)},
	        {"scheduler.poll", offsetof(struct config, scheduler.poll_ms)},
	        {"scheduler.log_flush", offsetof(struct config, scheduler.log_flush_ms)},
	        {"limits.max_input_bytes", offsetof(struct config, limits.max_input_bytes)},
	        {"limits.max_header_bytes", offsetof(struct config, limits.max_header_bytes)},
	        {"limits.max_header_fields", offsetof(struct config, limits.max_header_fields)},
	        {"limits.header_timeout", offsetof(struct config, limits.header_timeout_ms)},
	        {"limits.idle_timeout", offsetof(struct config, limits.idle_timeout_ms)},
	        {"limits.max_params_bytes", offsetof(struct config, limits.max_params_bytes)},
	        {"limits.max_stages", offsetof(struct config, limits.max_stages)},
	        {"limits.max_frame_bytes", offsetof(struct config, limits.max_frame_bytes)},
	};
	for (size_t i = 0; i < sizeof positive / sizeof positive[0]; i++) {
		if (*(const int64_t *)((const char *)cfg + positive[i].off) <= 0)
			config_errors_add(errs, "%s: must be greater than 0", positive[i].key);
	}
	if (cfg->scheduler.heartbeat_ms > 0 &&
	    cfg->scheduler.heartbeat_ms >= cfg->scheduler.lease_ms)
		config_errors_add(errs,
		                  "scheduler.heartbeat: must be shorter than scheduler.lease "
		                  "(%" PRId64 "ms >= %" PRId64 "ms)",
		                  cfg->scheduler.heartbeat_ms, cfg->scheduler.lease_ms);
	if (cfg->scheduler.scratch_dir[0] == '\0')
		config_errors_add(errs, "scheduler.scratch_dir: must not be empty");

	if (cfg->auth.failure_window_ms < 1000 || cfg->auth.failure_window_ms > 86400 * 1000)
		config_errors_add(errs,
		                  "auth.failure_window: must be from 1s to 24h, got %" PRId64 "ms",
		                  cfg->auth.failure_window_ms);
	if (cfg->auth.jwt.leeway_ms > 5 * 60 * 1000)
		config_errors_add(errs, "auth.jwt.leeway: must be at most 5m, got %" PRId64 "ms",
		                  cfg->auth.jwt.leeway_ms);
	if (cfg->auth.jwt.hs256_secret[0] != '\0' && strlen(cfg->auth.jwt.hs256_secret) < 32)
		config_errors_add(errs, "auth.jwt.hs256_secret: must be at least 32 bytes, got %zu",
		                  strlen(cfg->auth.jwt.hs256_secret));
	if (cfg->auth.jwt.enabled) {
		/* Without iss and aud a token minted for any other service of the
		 * same issuer, or by any issuer sharing the key, would pass. */
		if (!cfg->auth.enabled)
			config_errors_add(errs, "auth.jwt.enabled: needs auth.enabled: true");
		if (cfg->auth.jwt.issuer[0] == '\0')
			config_errors_add(errs, "auth.jwt.issuer: required with auth.jwt.enabled");
		if (cfg->auth.jwt.audience[0] == '\0')
			config_errors_add(errs,
			                  "auth.jwt.audience: required with auth.jwt.enabled");
		if (cfg->auth.jwt.hs256_secret[0] == '\0' &&
		    cfg->auth.jwt.public_key_file[0] == '\0')
			config_errors_add(errs, "auth.jwt.hs256_secret, auth.jwt.public_key_file: "
			                        "set at least one with auth.jwt.enabled");
		if (cfg->auth.jwt.project_claim[0] == '\0')
			config_errors_add(errs, "auth.jwt.project_claim: must not be empty");
		if (cfg->auth.jwt.scopes_claim[0] == '\0')
			config_errors_add(errs, "auth.jwt.scopes_claim: must not be empty");
		if (cfg->auth.jwt.hs256_kid[0] != '\0' &&
		    strcmp(cfg->auth.jwt.hs256_kid, cfg->auth.jwt.public_key_kid) == 0)
			config_errors_add(errs, "auth.jwt.hs256_kid: must differ from "
			                        "auth.jwt.public_key_kid");
	}

	char *bad = NULL;
	unsigned pat;
	if (!scrub_patterns_parse(cfg->privacy.scrub_patterns, &pat, &bad))
		config_errors_add(errs,
		                  "privacy.scrub_patterns: unknown pattern '%s' (expected a "
		                  "comma-separated list of email, phone)",
		                  bad);
	free(bad);
	if (!scrub_fields_check(cfg->privacy.scrub_fields, &bad))
		config_errors_add(errs,
		                  "privacy.scrub_fields: '%s' is not a field name (1 to %d "
		                  "characters besides '-', '_', '.' and spaces)",
		                  bad, SCRUB_FIELD_MAX);
	free(bad);

	if (cfg->quota.max_input_bytes > cfg->limits.max_input_bytes)
		config_errors_add(errs,
		                  "quota.max_input_bytes: %" PRId64
		                  " is above limits.max_input_bytes (%" PRId64 ")",
		                  cfg->quota.max_input_bytes, cfg->limits.max_input_bytes);
	return errs->n == before;
}

char *config_resolve_path(const struct config *cfg, const char *path)
{
	if (path[0] == '/' || path[0] == '\0')
		return xstrdup(path);
	/* "./var/x" reads better in logs as "<dir>/var/x". */
	while (path[0] == '.' && path[1] == '/') {
		path += 2;
		while (path[0] == '/')
			path++;
	}
	if (path[0] == '\0' || strcmp(path, ".") == 0)
		return xstrdup(cfg->dir);
	size_t dlen = strlen(cfg->dir);
	bool slash = dlen > 0 && cfg->dir[dlen - 1] == '/';
	return xasprintf("%s%s%s", cfg->dir, slash ? "" : "/", path);
}
