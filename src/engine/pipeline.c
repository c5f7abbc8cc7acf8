/* Module and pipeline definitions. The loader walks the libfyaml nodes that
 * config.c kept (cfg->modules, cfg->pipelines) and the files of
 * pipelines_dir, checks every key, collects every problem with its
 * file:line:col and dotted path, and only when there is none builds the
 * immutable pipeline_set: stages in topological order (engine/dag.c), their
 * default params and the declared job params as jansson values. The params
 * helpers at the end are pure and used per request. */
#include "engine/pipeline.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <libfyaml.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <strings.h>
#include <sys/stat.h>

#include "core/buf.h"
#include "core/xmalloc.h"
#include "engine/dag.h"

#define NAME_MAX_LEN 63
#define PARAM_NAME_MAX_LEN 64

static const char *const param_type_names[] = {
        [PARAM_STRING] = "string",   [PARAM_INTEGER] = "integer", [PARAM_NUMBER] = "number",
        [PARAM_BOOLEAN] = "boolean", [PARAM_OBJECT] = "object",   [PARAM_ARRAY] = "array",
};
#define N_PARAM_TYPES (sizeof param_type_names / sizeof param_type_names[0])

/* A pipeline name seen so far, valid or not, to report a second definition. */
struct seen_pipeline {
	char *name;
	char *where;
};

struct load {
	const struct config *cfg;
	struct config_errors *errs;
	const char *file; /* the file the current nodes come from */
	struct pipeline_set *set;
	/* Every key under `modules`, even those whose definition is broken, so a
	 * stage naming one is not also reported as naming an unknown module. */
	char **declared;
	size_t ndeclared;
	struct seen_pipeline *seen;
	size_t nseen;
};

/* --- names --- */

static bool name_ok(const char *s, size_t len)
{
	if (len == 0 || len > NAME_MAX_LEN)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
		if (!alnum && (i == 0 || (c != '_' && c != '-')))
			return false;
	}
	return true;
}

bool pipeline_name_ok(const char *s)
{
	return s != NULL && name_ok(s, strlen(s));
}

/* Job parameter names: [A-Za-z_][A-Za-z0-9_-]{0,63}, so they read as
 * identifiers in every module language. */
static bool param_name_ok(const char *s)
{
	size_t len = strlen(s);
	if (len == 0 || len > PARAM_NAME_MAX_LEN)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
		          (i > 0 && ((c >= '0' && c <= '9') || c == '-'));
		if (!ok)
			return false;
	}
	return true;
}

#define NAME_RULE "1-63 characters from a-z, 0-9, '_' and '-', starting with a letter or digit"

const char *param_type_name(enum param_type t)
{
	return (size_t)t < N_PARAM_TYPES ? param_type_names[t] : "?";
}

/* --- positions and errors (the same shape as core/config.c's) --- */

static char *load_where(const struct load *ld, struct fy_node *at, struct fy_node *fallback)
{
	return config_node_where(ld->file, at, fallback);
}

static void load_error(const struct load *ld, struct fy_node *at, struct fy_node *fallback,
                       const char *path, const char *fmt, ...)
        __attribute__((format(printf, 5, 6)));
static void load_error(const struct load *ld, struct fy_node *at, struct fy_node *fallback,
                       const char *path, const char *fmt, ...)
{
	char *where = load_where(ld, at, fallback);
	va_list ap;
	va_start(ap, fmt);
	char *msg = xvasprintf(fmt, ap);
	va_end(ap);
	config_errors_add(ld->errs, "%s: %s: %s", where, path, msg);
	free(msg);
	free(where);
}

/* --- scalars --- */

/* The text of a non-null scalar (len set), else NULL. */
static const char *scalar_text(struct fy_node *n, size_t *len)
{
	if (n == NULL || !fy_node_is_scalar(n) || config_node_is_null(n))
		return NULL;
	const char *s = fy_node_get_scalar(n, len);
	if (s == NULL) {
		*len = 0;
		return "";
	}
	return s;
}

/* A mapping key as a C string; NULL (reported) unless a plain scalar
 * without NUL bytes. */
static char *key_text(const struct load *ld, struct fy_node *k, struct fy_node *v, const char *path)
{
	size_t len;
	const char *s = scalar_text(k, &len);
	if (s == NULL || memchr(s, '\0', len) != NULL) {
		load_error(ld, k, v, path, "keys must be plain names");
		return NULL;
	}
	return xstrndup(s, len);
}

static bool get_string(const struct load *ld, struct fy_node *k, struct fy_node *v,
                       const char *path, char **out)
{
	size_t len;
	const char *s = scalar_text(v, &len);
	if (s == NULL) {
		load_error(ld, v, k, path, "expected a string, got %s", config_node_kind(v));
		return false;
	}
	if (memchr(s, '\0', len) != NULL) {
		load_error(ld, v, k, path, "value contains a NUL byte");
		return false;
	}
	free(*out);
	*out = xstrndup(s, len);
	return true;
}

/* The same words config.c takes for its booleans. */
static bool get_bool(const struct load *ld, struct fy_node *k, struct fy_node *v, const char *path,
                     bool *out)
{
	static const char *const yes[] = {"true", "yes", "on", "1"};
	static const char *const no[] = {"false", "no", "off", "0"};
	size_t len;
	const char *s = scalar_text(v, &len);
	for (size_t i = 0; s != NULL && i < sizeof yes / sizeof yes[0]; i++) {
		if (strlen(yes[i]) == len && strncasecmp(s, yes[i], len) == 0) {
			*out = true;
			return true;
		}
		if (strlen(no[i]) == len && strncasecmp(s, no[i], len) == 0) {
			*out = false;
			return true;
		}
	}
	if (s == NULL)
		load_error(ld, v, k, path, "expected true or false, got %s", config_node_kind(v));
	else
		load_error(ld, v, k, path, "expected true or false, got '%.*s'", (int)len, s);
	return false;
}

static bool get_int(const struct load *ld, struct fy_node *k, struct fy_node *v, const char *path,
                    int min, int max, int *out)
{
	size_t len;
	const char *s = scalar_text(v, &len);
	if (s == NULL) {
		load_error(ld, v, k, path, "expected a whole number from %d to %d, got %s", min,
		           max, config_node_kind(v));
		return false;
	}
	int64_t n = 0;
	bool ok = len > 0 && len <= 10;
	for (size_t i = 0; ok && i < len; i++) {
		ok = s[i] >= '0' && s[i] <= '9';
		n = n * 10 + (s[i] - '0');
	}
	if (!ok || n < min || n > max) {
		load_error(ld, v, k, path, "expected a whole number from %d to %d, got '%.*s'", min,
		           max, (int)len, s);
		return false;
	}
	*out = (int)n;
	return true;
}

static bool get_duration(const struct load *ld, struct fy_node *k, struct fy_node *v,
                         const char *path, int64_t min_ms, int64_t *out)
{
	size_t len;
	const char *s = scalar_text(v, &len);
	if (s == NULL) {
		load_error(ld, v, k, path, "expected a duration like 30s, got %s",
		           config_node_kind(v));
		return false;
	}
	char *text = xstrndup(s, len);
	int64_t ms;
	bool ok = config_parse_duration_ms(text, &ms);
	if (!ok)
		load_error(ld, v, k, path, "expected a duration like 30s (ms, s, m or h), got '%s'",
		           text);
	else if (ms < min_ms)
		load_error(ld, v, k, path, "must be greater than 0, got '%s'", text);
	free(text);
	if (!ok || ms < min_ms)
		return false;
	*out = ms;
	return true;
}

/* --- YAML values as JSON --- */

enum yaml_int { YAML_NOT_INT, YAML_INT, YAML_INT_RANGE };

/* YAML 1.2 core schema integers: [-+]?[0-9]+, 0o[0-7]+, 0x[0-9a-fA-F]+. */
static enum yaml_int yaml_int_parse(const char *s, size_t len, long long *out)
{
	char buf[72];
	if (len == 0 || len >= sizeof buf)
		return YAML_NOT_INT;
	memcpy(buf, s, len);
	buf[len] = '\0';
	const char *digits = buf, *set = "0123456789";
	int base = 10;
	if (buf[0] == '0' && (buf[1] == 'x' || buf[1] == 'o')) {
		base = buf[1] == 'x' ? 16 : 8;
		set = base == 16 ? "0123456789abcdefABCDEF" : "01234567";
		digits = buf + 2;
	} else if (buf[0] == '-' || buf[0] == '+') {
		digits = buf + 1;
	}
	if (digits[0] == '\0' || strspn(digits, set) != strlen(digits))
		return YAML_NOT_INT;
	errno = 0;
	long long v = strtoll(base == 10 ? buf : digits, NULL, base);
	if (errno == ERANGE)
		return YAML_INT_RANGE;
	*out = v;
	return YAML_INT;
}

/* YAML 1.2 core schema floats: [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)? */
static bool is_yaml_float(const char *s, size_t len)
{
	size_t i = 0, digits = 0;
	if (i < len && (s[i] == '-' || s[i] == '+'))
		i++;
	while (i < len && s[i] >= '0' && s[i] <= '9')
		i++, digits++;
	if (i < len && s[i] == '.') {
		i++;
		while (i < len && s[i] >= '0' && s[i] <= '9')
			i++, digits++;
	}
	if (digits == 0)
		return false;
	if (i < len && (s[i] == 'e' || s[i] == 'E')) {
		i++;
		if (i < len && (s[i] == '-' || s[i] == '+'))
			i++;
		size_t exp = 0;
		while (i < len && s[i] >= '0' && s[i] <= '9')
			i++, exp++;
		if (exp == 0)
			return false;
	}
	return i == len;
}

static bool tagged_str(struct fy_node *n)
{
	size_t len = 0;
	const char *tag = fy_node_get_tag(n, &len);
	if (tag == NULL)
		return false;
	return (len == 5 && memcmp(tag, "!!str", 5) == 0) ||
	       (len == 21 && memcmp(tag, "tag:yaml.org,2002:str", 21) == 0);
}

static json_t *scalar_to_json(const struct load *ld, struct fy_node *n, const char *path)
{
	size_t len;
	const char *s = fy_node_get_scalar(n, &len);
	if (s == NULL) {
		s = "";
		len = 0;
	}
	if (fy_node_get_style(n) == FYNS_PLAIN && !tagged_str(n)) {
		if (config_node_is_null(n))
			return json_null();
		static const char *const t[] = {"true", "True", "TRUE"};
		static const char *const f[] = {"false", "False", "FALSE"};
		for (size_t i = 0; i < 3; i++) {
			if (strlen(t[i]) == len && memcmp(s, t[i], len) == 0)
				return json_true();
			if (strlen(f[i]) == len && memcmp(s, f[i], len) == 0)
				return json_false();
		}
		long long iv;
		switch (yaml_int_parse(s, len, &iv)) {
		case YAML_INT: return json_integer(iv);
		case YAML_INT_RANGE:
			load_error(ld, n, NULL, path, "integer '%.*s' does not fit in 64 bits",
			           (int)len, s);
			return NULL;
		case YAML_NOT_INT: break;
		}
		if (is_yaml_float(s, len)) {
			char *text = xstrndup(s, len);
			double d = strtod(text, NULL);
			free(text);
			if (!isfinite(d)) {
				load_error(ld, n, NULL, path, "number '%.*s' is out of range",
				           (int)len, s);
				return NULL;
			}
			return json_real(d);
		}
		static const char *const odd[] = {".inf",  "-.inf", "+.inf", ".Inf",
		                                  "-.Inf", "+.Inf", ".INF",  "-.INF",
		                                  "+.INF", ".nan",  ".NaN",  ".NAN"};
		for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
			if (strlen(odd[i]) == len && memcmp(s, odd[i], len) == 0) {
				load_error(ld, n, NULL, path,
				           "'%.*s' has no JSON form; quote it for a string",
				           (int)len, s);
				return NULL;
			}
		}
	}
	json_t *j = json_stringn(s, len);
	if (j == NULL)
		load_error(ld, n, NULL, path, "string is not valid UTF-8");
	return j;
}

/* Any YAML value as JSON (core schema: plain true/false/null/numbers are
 * typed, anything quoted is a string). NULL after reporting a problem. */
static json_t *yaml_to_json(const struct load *ld, struct fy_node *n, const char *path)
{
	if (n == NULL)
		return json_null();
	if (fy_node_is_scalar(n))
		return scalar_to_json(ld, n, path);
	void *iter = NULL;
	if (fy_node_is_sequence(n)) {
		json_t *arr = json_array();
		struct fy_node *item;
		size_t i = 0;
		bool ok = true;
		while ((item = fy_node_sequence_iterate(n, &iter)) != NULL) {
			char *p = xasprintf("%s[%zu]", path, i++);
			json_t *j = yaml_to_json(ld, item, p);
			free(p);
			if (j == NULL)
				ok = false;
			else
				json_array_append_new(arr, j);
		}
		if (!ok) {
			json_decref(arr);
			return NULL;
		}
		return arr;
	}
	json_t *obj = json_object();
	struct fy_node_pair *pair;
	bool ok = true;
	while ((pair = fy_node_mapping_iterate(n, &iter)) != NULL) {
		struct fy_node *pk = fy_node_pair_key(pair), *pv = fy_node_pair_value(pair);
		char *key = key_text(ld, pk, pv, path);
		if (key == NULL) {
			ok = false;
			continue;
		}
		char *p = xasprintf("%s.%s", path, key);
		json_t *j = yaml_to_json(ld, pv, p);
		free(p);
		if (j == NULL) {
			ok = false;
		} else if (json_object_set_new(obj, key, j) != 0) {
			load_error(ld, pk, pv, path, "key '%s' is not valid UTF-8", key);
			ok = false;
		}
		free(key);
	}
	if (!ok) {
		json_decref(obj);
		return NULL;
	}
	return obj;
}

/* --- freeing --- */

static void strv_free(char **v, size_t n)
{
	for (size_t i = 0; v != NULL && i < n; i++)
		free(v[i]);
	free(v);
}

static void module_def_clear(struct module_def *m)
{
	free(m->name);
	strv_free(m->argv, m->argc);
	strv_free(m->env, m->nenv);
	free(m->version);
}

static void stage_def_clear(struct stage_def *s)
{
	free(s->name);
	free(s->module);
	strv_free(s->needs, s->nneeds);
	free(s->dep_idx);
	json_decref(s->params);
}

static void param_def_clear(struct param_def *p)
{
	free(p->name);
	json_decref(p->default_value);
	free(p->description);
}

static void pipeline_clear(struct pipeline *p)
{
	free(p->name);
	free(p->description);
	free(p->source);
	for (size_t i = 0; i < p->nstages; i++)
		stage_def_clear(&p->stages[i]);
	free(p->stages);
	dag_free(p->dag);
	for (size_t i = 0; i < p->nparams; i++)
		param_def_clear(&p->params[i]);
	free(p->params);
}

void pipeline_set_free(struct pipeline_set *set)
{
	if (set == NULL)
		return;
	for (size_t i = 0; i < set->nmodules; i++)
		module_def_clear(&set->modules[i]);
	free(set->modules);
	for (size_t i = 0; i < set->npipelines; i++)
		pipeline_clear(&set->pipelines[i]);
	free(set->pipelines);
	free(set);
}

/* --- modules --- */

static bool declared_module(const struct load *ld, const char *name)
{
	for (size_t i = 0; i < ld->ndeclared; i++) {
		if (strcmp(ld->declared[i], name) == 0)
			return true;
	}
	return false;
}

static void load_command(const struct load *ld, struct fy_node *k, struct fy_node *v,
                         const char *path, struct module_def *m)
{
	if (v == NULL || !fy_node_is_sequence(v) || fy_node_sequence_item_count(v) == 0) {
		load_error(ld, v, k, path, "expected a non-empty list of strings, got %s",
		           v != NULL && fy_node_is_sequence(v) ? "an empty list"
		                                               : config_node_kind(v));
		return;
	}
	size_t n = (size_t)fy_node_sequence_item_count(v);
	char **argv = xcalloc(n + 1, sizeof *argv);
	void *iter = NULL;
	struct fy_node *item;
	size_t i = 0;
	bool ok = true;
	while ((item = fy_node_sequence_iterate(v, &iter)) != NULL && i < n) {
		char *p = xasprintf("%s[%zu]", path, i);
		ok = get_string(ld, k, item, p, &argv[i]) && ok;
		free(p);
		i++;
	}
	if (ok && argv[0][0] == '\0') {
		load_error(ld, v, k, path, "the program (first item) must not be empty");
		ok = false;
	}
	if (!ok) {
		strv_free(argv, n);
		return;
	}
	if (argv[0][0] != '/' && strchr(argv[0], '/') != NULL) {
		char *abs = config_resolve_path(ld->cfg, argv[0]);
		free(argv[0]);
		argv[0] = abs;
	}
	/* "Relative paths are relative to the config file" (ARCHITECTURE §11)
	 * holds for the arguments too — ["/usr/bin/python3",
	 * "modules/tts.py"] — but an argument is only text to us: it is taken
	 * as a path when it has a '/', isn't absolute or an option, and names
	 * an existing file under the config's directory. */
	for (size_t a = 1; a < n; a++) {
		if (argv[a][0] == '/' || argv[a][0] == '-' || strchr(argv[a], '/') == NULL)
			continue;
		char *abs = config_resolve_path(ld->cfg, argv[a]);
		if (access(abs, F_OK) == 0) {
			free(argv[a]);
			argv[a] = abs;
		} else {
			free(abs);
		}
	}
	strv_free(m->argv, m->argc);
	m->argv = argv;
	m->argc = n;
}

static bool env_name_ok(const char *s)
{
	if (!((s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z') || s[0] == '_'))
		return false;
	for (const char *p = s; *p; p++) {
		if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
		      (*p >= '0' && *p <= '9') || *p == '_'))
			return false;
	}
	return true;
}

static void load_env(const struct load *ld, struct fy_node *k, struct fy_node *v, const char *path,
                     struct module_def *m)
{
	if (config_node_is_null(v))
		return;
	if (!fy_node_is_mapping(v)) {
		load_error(ld, v, k, path, "expected a mapping of NAME: value, got %s",
		           config_node_kind(v));
		return;
	}
	void *iter = NULL;
	struct fy_node_pair *pair;
	while ((pair = fy_node_mapping_iterate(v, &iter)) != NULL) {
		struct fy_node *ek = fy_node_pair_key(pair), *ev = fy_node_pair_value(pair);
		char *name = key_text(ld, ek, ev, path);
		if (name == NULL)
			continue;
		char *p = xasprintf("%s.%s", path, name);
		char *value = NULL;
		if (!env_name_ok(name))
			load_error(ld, ek, ev, p,
			           "not a variable name: use letters, digits and '_', not "
			           "starting with a digit");
		else if (strncmp(name, "STAGELINE_", 10) == 0)
			load_error(ld, ek, ev, p,
			           "STAGELINE_* variables are set by the daemon and cannot be "
			           "overridden");
		else if (get_string(ld, ek, ev, p, &value)) {
			m->env = xrealloc(m->env, (m->nenv + 2) * sizeof *m->env);
			m->env[m->nenv++] = xasprintf("%s=%s", name, value);
			m->env[m->nenv] = NULL;
		}
		free(value);
		free(p);
		free(name);
	}
}

static void load_module(struct load *ld, const char *name, struct fy_node *k, struct fy_node *v)
{
	char *path = xasprintf("modules.%s", name);
	size_t before = ld->errs->n;
	struct module_def m = {.concurrency = 1, .timeout_ms = PIPELINE_DEFAULT_TIMEOUT_MS};
	m.name = xstrdup(name);
	if (!name_ok(name, strlen(name)))
		load_error(ld, k, v, path, "bad module name '%s': use " NAME_RULE, name);
	bool has_command = false;
	if (v == NULL || !fy_node_is_mapping(v)) {
		load_error(ld, v, k, path, "expected a mapping, got %s", config_node_kind(v));
		goto out;
	}
	void *iter = NULL;
	struct fy_node_pair *pair;
	while ((pair = fy_node_mapping_iterate(v, &iter)) != NULL) {
		struct fy_node *fk = fy_node_pair_key(pair), *fv = fy_node_pair_value(pair);
		char *key = key_text(ld, fk, fv, path);
		if (key == NULL)
			continue;
		char *p = xasprintf("%s.%s", path, key);
		if (strcmp(key, "command") == 0) {
			has_command = true;
			load_command(ld, fk, fv, p, &m);
		} else if (strcmp(key, "persistent") == 0) {
			(void)get_bool(ld, fk, fv, p, &m.persistent);
		} else if (strcmp(key, "concurrency") == 0) {
			(void)get_int(ld, fk, fv, p, 1, PIPELINE_MAX_CONCURRENCY, &m.concurrency);
		} else if (strcmp(key, "timeout") == 0) {
			(void)get_duration(ld, fk, fv, p, 1, &m.timeout_ms);
		} else if (strcmp(key, "env") == 0) {
			load_env(ld, fk, fv, p, &m);
		} else if (strcmp(key, "version") == 0) {
			(void)get_string(ld, fk, fv, p, &m.version);
		} else {
			load_error(ld, fk, fv, path, "unknown key '%s'", key);
		}
		free(p);
		free(key);
	}
	if (!has_command)
		load_error(ld, v, k, path, "missing required key 'command'");
out:
	if (ld->errs->n == before) {
		struct pipeline_set *set = ld->set;
		set->modules = xrealloc(set->modules, (set->nmodules + 1) * sizeof *set->modules);
		set->modules[set->nmodules++] = m;
	} else {
		module_def_clear(&m);
	}
	free(path);
}

static void load_modules(struct load *ld, struct fy_node *map)
{
	void *iter = NULL;
	struct fy_node_pair *pair;
	/* Names first, so the pipelines see every module even when some are broken. */
	while ((pair = fy_node_mapping_iterate(map, &iter)) != NULL) {
		size_t len;
		const char *s = scalar_text(fy_node_pair_key(pair), &len);
		if (s == NULL)
			continue;
		ld->declared = xrealloc(ld->declared, (ld->ndeclared + 1) * sizeof *ld->declared);
		ld->declared[ld->ndeclared++] = xstrndup(s, len);
	}
	iter = NULL;
	while ((pair = fy_node_mapping_iterate(map, &iter)) != NULL) {
		struct fy_node *k = fy_node_pair_key(pair), *v = fy_node_pair_value(pair);
		char *name = key_text(ld, k, v, "modules");
		if (name != NULL)
			load_module(ld, name, k, v);
		free(name);
	}
}

/* --- pipelines --- */

/* A stage as read, before the order is known. */
struct stage_tmp {
	struct stage_def def;
	struct fy_node *node;
	struct fy_node **need_nodes; /* def.nneeds of them, for positions */
	size_t *need_decl; /* dependency's declared index, or SIZE_MAX */
	bool has_timeout;
	bool name_valid;
};

static void load_needs(const struct load *ld, struct fy_node *k, struct fy_node *v,
                       const char *path, struct stage_tmp *t)
{
	if (config_node_is_null(v))
		return;
	if (!fy_node_is_sequence(v)) {
		load_error(ld, v, k, path, "expected a list of stage names, got %s",
		           config_node_kind(v));
		return;
	}
	void *iter = NULL;
	struct fy_node *item;
	while ((item = fy_node_sequence_iterate(v, &iter)) != NULL) {
		char *name = NULL;
		if (!get_string(ld, k, item, path, &name))
			continue;
		bool dup = false;
		for (size_t i = 0; i < t->def.nneeds && !dup; i++)
			dup = strcmp(t->def.needs[i], name) == 0;
		if (dup) {
			load_error(ld, item, k, path, "'%s' is listed twice", name);
			free(name);
			continue;
		}
		size_t n = t->def.nneeds;
		t->def.needs = xrealloc(t->def.needs, (n + 1) * sizeof *t->def.needs);
		t->need_nodes = xrealloc(t->need_nodes, (n + 1) * sizeof *t->need_nodes);
		t->def.needs[n] = name;
		t->need_nodes[n] = item;
		t->def.nneeds = n + 1;
	}
}

static void load_stage(struct load *ld, const char *path, struct fy_node *v, struct stage_tmp *t)
{
	t->node = v;
	t->def.required = true;
	t->def.backoff_ms = PIPELINE_DEFAULT_BACKOFF_MS;
	t->def.timeout_ms = PIPELINE_DEFAULT_TIMEOUT_MS;
	if (v == NULL || !fy_node_is_mapping(v)) {
		load_error(ld, v, NULL, path, "expected a mapping with name and module, got %s",
		           config_node_kind(v));
		return;
	}
	struct fy_node *name_node = NULL, *module_node = NULL;
	void *iter = NULL;
	struct fy_node_pair *pair;
	while ((pair = fy_node_mapping_iterate(v, &iter)) != NULL) {
		struct fy_node *fk = fy_node_pair_key(pair), *fv = fy_node_pair_value(pair);
		char *key = key_text(ld, fk, fv, path);
		if (key == NULL)
			continue;
		char *p = xasprintf("%s.%s", path, key);
		if (strcmp(key, "name") == 0) {
			name_node = fk;
			if (get_string(ld, fk, fv, p, &t->def.name)) {
				t->name_valid = name_ok(t->def.name, strlen(t->def.name));
				if (!t->name_valid)
					load_error(ld, fv, fk, p,
					           "bad stage name '%s': use " NAME_RULE,
					           t->def.name);
			}
		} else if (strcmp(key, "module") == 0) {
			module_node = fk;
			if (get_string(ld, fk, fv, p, &t->def.module) &&
			    !declared_module(ld, t->def.module))
				load_error(ld, fv, fk, p, "unknown module '%s'", t->def.module);
		} else if (strcmp(key, "needs") == 0) {
			load_needs(ld, fk, fv, p, t);
		} else if (strcmp(key, "required") == 0) {
			(void)get_bool(ld, fk, fv, p, &t->def.required);
		} else if (strcmp(key, "retries") == 0) {
			(void)get_int(ld, fk, fv, p, 0, PIPELINE_MAX_RETRIES, &t->def.retries);
		} else if (strcmp(key, "backoff") == 0) {
			(void)get_duration(ld, fk, fv, p, 0, &t->def.backoff_ms);
		} else if (strcmp(key, "timeout") == 0) {
			t->has_timeout = get_duration(ld, fk, fv, p, 1, &t->def.timeout_ms);
		} else if (strcmp(key, "params") == 0) {
			if (config_node_is_null(fv)) {
				/* an empty section: no defaults */
			} else if (!fy_node_is_mapping(fv)) {
				load_error(ld, fv, fk, p, "expected a mapping, got %s",
				           config_node_kind(fv));
			} else {
				json_decref(t->def.params);
				t->def.params = yaml_to_json(ld, fv, p);
			}
		} else {
			load_error(ld, fk, fv, path, "unknown key '%s'", key);
		}
		free(p);
		free(key);
	}
	if (name_node == NULL)
		load_error(ld, v, NULL, path, "missing required key 'name'");
	if (module_node == NULL)
		load_error(ld, v, NULL, path, "missing required key 'module'");
	if (t->def.params == NULL)
		t->def.params = json_object();
}

static const char *json_kind(const json_t *j)
{
	switch (json_typeof(j)) {
	case JSON_OBJECT: return "an object";
	case JSON_ARRAY: return "an array";
	case JSON_STRING: return "a string";
	case JSON_INTEGER: return "an integer";
	case JSON_REAL: return "a number with a fraction";
	case JSON_TRUE:
	case JSON_FALSE: return "a boolean";
	case JSON_NULL: return "null";
	}
	return "?";
}

static const char *type_article(enum param_type t)
{
	return t == PARAM_INTEGER || t == PARAM_OBJECT || t == PARAM_ARRAY ? "an" : "a";
}

static bool type_matches(enum param_type t, const json_t *j)
{
	switch (t) {
	case PARAM_STRING: return json_is_string(j);
	case PARAM_INTEGER: return json_is_integer(j);
	case PARAM_NUMBER: return json_is_number(j);
	case PARAM_BOOLEAN: return json_is_boolean(j);
	case PARAM_OBJECT: return json_is_object(j);
	case PARAM_ARRAY: return json_is_array(j);
	}
	return false;
}

static void load_param(const struct load *ld, const char *name, struct fy_node *k,
                       struct fy_node *v, const char *path, struct pipeline *p)
{
	size_t before = ld->errs->n;
	struct param_def d = {.name = xstrdup(name)};
	struct fy_node *type_node = NULL, *default_key = NULL, *default_node = NULL;
	struct fy_node *required_node = NULL;
	if (!param_name_ok(name))
		load_error(ld, k, v, path,
		           "bad parameter name '%s': use 1-64 characters from A-Z, a-z, 0-9, "
		           "'_' and '-', starting with a letter or '_'",
		           name);
	if (v == NULL || !fy_node_is_mapping(v)) {
		load_error(ld, v, k, path,
		           "expected a mapping with type, required, default, got %s",
		           config_node_kind(v));
		goto out;
	}
	void *iter = NULL;
	struct fy_node_pair *pair;
	bool type_ok = false;
	while ((pair = fy_node_mapping_iterate(v, &iter)) != NULL) {
		struct fy_node *fk = fy_node_pair_key(pair), *fv = fy_node_pair_value(pair);
		char *key = key_text(ld, fk, fv, path);
		if (key == NULL)
			continue;
		char *fp = xasprintf("%s.%s", path, key);
		if (strcmp(key, "type") == 0) {
			type_node = fk;
			char *t = NULL;
			if (get_string(ld, fk, fv, fp, &t)) {
				for (size_t i = 0; i < N_PARAM_TYPES && !type_ok; i++) {
					if (strcmp(t, param_type_names[i]) == 0) {
						d.type = (enum param_type)i;
						type_ok = true;
					}
				}
				if (!type_ok)
					load_error(ld, fv, fk, fp,
					           "expected one of string, integer, number, "
					           "boolean, object, array, got '%s'",
					           t);
			}
			free(t);
		} else if (strcmp(key, "required") == 0) {
			required_node = fk;
			(void)get_bool(ld, fk, fv, fp, &d.required);
		} else if (strcmp(key, "default") == 0) {
			default_key = fk;
			default_node = fv;
			json_decref(d.default_value);
			d.default_value = yaml_to_json(ld, fv, fp);
		} else if (strcmp(key, "description") == 0) {
			(void)get_string(ld, fk, fv, fp, &d.description);
		} else {
			load_error(ld, fk, fv, path, "unknown key '%s'", key);
		}
		free(fp);
		free(key);
	}
	if (type_node == NULL)
		load_error(ld, v, k, path, "missing required key 'type'");
	if (type_ok && d.default_value != NULL && !type_matches(d.type, d.default_value)) {
		char *fp = xasprintf("%s.default", path);
		load_error(ld, default_node, default_key, fp, "expected %s %s, got %s",
		           type_article(d.type), param_type_names[d.type],
		           json_kind(d.default_value));
		free(fp);
	}
	if (d.required && d.default_value != NULL)
		load_error(ld, required_node, NULL, path,
		           "a required parameter cannot have a default");
out:
	if (ld->errs->n == before) {
		p->params = xrealloc(p->params, (p->nparams + 1) * sizeof *p->params);
		p->params[p->nparams++] = d;
	} else {
		param_def_clear(&d);
	}
}

static void load_params_decl(const struct load *ld, struct fy_node *k, struct fy_node *v,
                             const char *path, struct pipeline *p)
{
	p->params_declared = true;
	if (config_node_is_null(v))
		return;
	if (!fy_node_is_mapping(v)) {
		load_error(ld, v, k, path,
		           "expected a mapping of name: {type, required, default}, "
		           "got %s",
		           config_node_kind(v));
		return;
	}
	void *iter = NULL;
	struct fy_node_pair *pair;
	while ((pair = fy_node_mapping_iterate(v, &iter)) != NULL) {
		struct fy_node *pk = fy_node_pair_key(pair), *pv = fy_node_pair_value(pair);
		char *name = key_text(ld, pk, pv, path);
		if (name == NULL)
			continue;
		char *pp = xasprintf("%s.%s", path, name);
		load_param(ld, name, pk, pv, pp, p);
		free(pp);
		free(name);
	}
}

static size_t stage_tmp_find(const struct stage_tmp *t, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++) {
		if (t[i].def.name != NULL && strcmp(t[i].def.name, name) == 0)
			return i;
	}
	return SIZE_MAX;
}

/* Resolves needs, builds the DAG and checks it; with no new error, moves
 * the stages into p in topological order. */
static void plan_stages(struct load *ld, const char *path, struct stage_tmp *t, size_t n,
                        struct pipeline *p, size_t before)
{
	struct dag *d = dag_new(n);
	for (size_t i = 0; i < n; i++) {
		char *sp = xasprintf("%s.stages[%zu]", path, i);
		if (t[i].def.name != NULL) {
			size_t first = stage_tmp_find(t, i, t[i].def.name);
			if (first != SIZE_MAX)
				load_error(ld, t[i].node, NULL, sp,
				           "duplicate stage name '%s' (also stages[%zu])",
				           t[i].def.name, first);
		}
		t[i].need_decl = xmalloc((t[i].def.nneeds ? t[i].def.nneeds : 1) * sizeof(size_t));
		char *np = xasprintf("%s.needs", sp);
		for (size_t j = 0; j < t[i].def.nneeds; j++) {
			const char *need = t[i].def.needs[j];
			t[i].need_decl[j] = SIZE_MAX;
			if (t[i].def.name != NULL && strcmp(need, t[i].def.name) == 0) {
				load_error(ld, t[i].need_nodes[j], NULL, np,
				           "stage '%s' cannot need itself", need);
				continue;
			}
			size_t dep = stage_tmp_find(t, n, need);
			if (dep == SIZE_MAX) {
				load_error(ld, t[i].need_nodes[j], NULL, np, "unknown stage '%s'",
				           need);
				continue;
			}
			if (dag_add_dep(d, i, dep)) /* always: both indices are < n */
				t[i].need_decl[j] = dep;
		}
		free(np);
		free(sp);
	}

	size_t *order = xmalloc((n ? n : 1) * sizeof *order);
	size_t *cycle = NULL, ncycle = 0;
	if (!dag_sort(d, order, &cycle, &ncycle)) {
		struct buf b = BUF_INIT;
		for (size_t i = 0; i <= ncycle; i++)
			buf_printf(&b, "%s%s", i ? " -> " : "", t[cycle[i % ncycle]].def.name);
		/* Point at c0's entry naming the last stage of the cycle. */
		size_t c0 = cycle[0], last = cycle[ncycle - 1];
		struct fy_node *at = t[c0].node;
		for (size_t j = 0; j < t[c0].def.nneeds; j++) {
			if (t[c0].need_decl[j] == last)
				at = t[c0].need_nodes[j];
		}
		char *np = xasprintf("%s.stages[%zu].needs", path, c0);
		load_error(ld, at, NULL, np, "cycle: %s", b.data);
		free(np);
		buf_free(&b);
		free(cycle);
	}

	if (ld->errs->n == before) {
		size_t *pos = xmalloc(n * sizeof *pos); /* declared index -> position */
		for (size_t i = 0; i < n; i++)
			pos[order[i]] = i;
		p->stages = xcalloc(n, sizeof *p->stages);
		p->nstages = n;
		p->dag = dag_new(n);
		for (size_t i = 0; i < n; i++) {
			struct stage_tmp *src = &t[order[i]];
			struct stage_def *s = &p->stages[i];
			*s = src->def;
			memset(&src->def, 0, sizeof src->def);
			s->stage_number = (int)i + 1;
			s->decl_index = order[i];
			s->mod = module_def_find(ld->set, s->module);
			if (!src->has_timeout && s->mod != NULL)
				s->timeout_ms = s->mod->timeout_ms;
			s->dep_idx = xmalloc((s->nneeds ? s->nneeds : 1) * sizeof *s->dep_idx);
			for (size_t j = 0; j < s->nneeds; j++) {
				s->dep_idx[j] = pos[src->need_decl[j]];
				bool added = dag_add_dep(p->dag, i, s->dep_idx[j]);
				(void)added; /* the same edges as d, renumbered: all in range */
			}
		}
		free(pos);
	}
	free(order);
	dag_free(d);
}

static void load_stages(struct load *ld, struct fy_node *k, struct fy_node *v, const char *path,
                        struct pipeline *p, size_t before)
{
	char *sp = xasprintf("%s.stages", path);
	if (v == NULL || !fy_node_is_sequence(v) || fy_node_sequence_item_count(v) == 0) {
		load_error(ld, v, k, sp, "expected a non-empty list of stages, got %s",
		           v != NULL && fy_node_is_sequence(v) ? "an empty list"
		                                               : config_node_kind(v));
		free(sp);
		return;
	}
	size_t n = (size_t)fy_node_sequence_item_count(v);
	if ((int64_t)n > ld->cfg->limits.max_stages)
		load_error(ld, k, v, sp, "%zu stages, more than limits.max_stages (%" PRId64 ")", n,
		           ld->cfg->limits.max_stages);
	struct stage_tmp *t = xcalloc(n, sizeof *t);
	void *iter = NULL;
	struct fy_node *item;
	size_t i = 0;
	while ((item = fy_node_sequence_iterate(v, &iter)) != NULL && i < n) {
		char *ip = xasprintf("%s[%zu]", sp, i);
		load_stage(ld, ip, item, &t[i]);
		free(ip);
		i++;
	}
	plan_stages(ld, path, t, n, p, before);
	for (i = 0; i < n; i++) {
		stage_def_clear(&t[i].def);
		free(t[i].need_nodes);
		free(t[i].need_decl);
	}
	free(t);
	free(sp);
}

/* A pipeline from `pipelines.<name>` or from a file (from_file: the mapping
 * may also hold `name`, already read by the caller). name_node positions
 * errors about the name itself. */
static void load_pipeline(struct load *ld, const char *name, struct fy_node *name_node,
                          struct fy_node *v, bool from_file)
{
	size_t before = ld->errs->n;
	char *path = xasprintf("pipelines.%s", name);
	if (!name_ok(name, strlen(name)))
		load_error(ld, name_node, v, path, "bad pipeline name '%s': use " NAME_RULE, name);
	char *where = load_where(ld, name_node, v);
	for (size_t i = 0; i < ld->nseen; i++) {
		if (strcmp(ld->seen[i].name, name) == 0) {
			load_error(ld, name_node, v, path, "pipeline '%s' is already defined at %s",
			           name, ld->seen[i].where);
			break;
		}
	}
	ld->seen = xrealloc(ld->seen, (ld->nseen + 1) * sizeof *ld->seen);
	ld->seen[ld->nseen++] = (struct seen_pipeline){xstrdup(name), where};

	struct pipeline p = {.name = xstrdup(name), .source = xstrdup(ld->file)};
	if (v == NULL || !fy_node_is_mapping(v)) {
		load_error(ld, v, name_node, path, "expected a mapping with stages, got %s",
		           config_node_kind(v));
		goto out;
	}
	bool has_stages = false;
	void *iter = NULL;
	struct fy_node_pair *pair;
	while ((pair = fy_node_mapping_iterate(v, &iter)) != NULL) {
		struct fy_node *fk = fy_node_pair_key(pair), *fv = fy_node_pair_value(pair);
		char *key = key_text(ld, fk, fv, path);
		if (key == NULL)
			continue;
		char *p2 = xasprintf("%s.%s", path, key);
		if (strcmp(key, "description") == 0) {
			(void)get_string(ld, fk, fv, p2, &p.description);
		} else if (strcmp(key, "stages") == 0) {
			has_stages = true;
			load_stages(ld, fk, fv, path, &p, before);
		} else if (strcmp(key, "params") == 0) {
			load_params_decl(ld, fk, fv, p2, &p);
		} else if (!(from_file && strcmp(key, "name") == 0)) {
			load_error(ld, fk, fv, path, "unknown key '%s'", key);
		}
		free(p2);
		free(key);
	}
	if (!has_stages)
		load_error(ld, v, name_node, path, "missing required key 'stages'");
out:
	if (ld->errs->n == before) {
		struct pipeline_set *set = ld->set;
		set->pipelines =
		        xrealloc(set->pipelines, (set->npipelines + 1) * sizeof *set->pipelines);
		set->pipelines[set->npipelines++] = p;
	} else {
		pipeline_clear(&p);
	}
	free(path);
}

static void load_pipelines(struct load *ld, struct fy_node *map)
{
	void *iter = NULL;
	struct fy_node_pair *pair;
	while ((pair = fy_node_mapping_iterate(map, &iter)) != NULL) {
		struct fy_node *k = fy_node_pair_key(pair), *v = fy_node_pair_value(pair);
		char *name = key_text(ld, k, v, "pipelines");
		if (name != NULL)
			load_pipeline(ld, name, k, v, false);
		free(name);
	}
}

/* --- pipelines_dir --- */

/* libfyaml's messages go nowhere: its errors are collected with positions
 * and reported through errs. */
static void diag_discard_cb(struct fy_diag *diag, void *user, const char *text, size_t len)
{
}

/* Parses one file; NULL (errors added) on a syntax error or when the file
 * holds no document, or more than one. The caller destroys the document. */
static struct fy_document *parse_file(struct load *ld, const char *path)
{
	struct fy_diag_cfg dcfg;
	fy_diag_cfg_default(&dcfg);
	dcfg.fp = NULL;
	dcfg.output_fn = diag_discard_cb;
	dcfg.colorize = false;
	struct fy_diag *diag = fy_diag_create(&dcfg);
	if (diag == NULL) {
		config_errors_add(ld->errs, "%s: cannot set up the YAML parser", path);
		return NULL;
	}
	fy_diag_set_collect_errors(diag, true);
	struct fy_parse_cfg pcfg = {
	        .flags = FYPCF_QUIET | FYPCF_RESOLVE_DOCUMENT,
	        .diag = diag,
	};
	struct fy_parser *fyp = fy_parser_create(&pcfg);
	struct fy_document *doc = NULL, *extra = NULL;
	if (fyp != NULL && fy_parser_set_input_file(fyp, path) == 0) {
		doc = fy_parse_load_document(fyp);
		if (doc != NULL)
			extra = fy_parse_load_document(fyp);
	}
	size_t before = ld->errs->n;
	void *iter = NULL;
	struct fy_diag_error *e;
	while ((e = fy_diag_errors_iterate(diag, &iter)) != NULL)
		config_errors_add(ld->errs, "%s:%d:%d: invalid YAML: %s", path, e->line, e->column,
		                  e->msg);
	if (ld->errs->n == before && (fyp == NULL || fy_diag_got_error(diag)))
		config_errors_add(ld->errs, "%s: invalid YAML", path);
	if (extra != NULL) {
		load_error(ld, fy_document_root(extra), NULL, "pipelines_dir",
		           "a pipeline file holds one YAML document");
		fy_document_destroy(extra);
	}
	if (fyp != NULL)
		fy_parser_destroy(fyp);
	if (ld->errs->n == before && doc == NULL)
		config_errors_add(ld->errs, "%s: pipelines_dir: the file is empty", path);
	if (ld->errs->n != before && doc != NULL) {
		fy_document_destroy(doc);
		doc = NULL;
	}
	/* As in core/config.c: stop collecting (which drops what was collected)
	 * and leave the diag to the document, which holds a reference. */
	fy_diag_set_collect_errors(diag, false);
	fy_diag_unref(diag);
	return doc;
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool yaml_name(const char *s)
{
	size_t len = strlen(s);
	if (s[0] == '.')
		return false;
	return (len > 5 && strcmp(s + len - 5, ".yaml") == 0) ||
	       (len > 4 && strcmp(s + len - 4, ".yml") == 0);
}

static void load_file(struct load *ld, const char *path, const char *base)
{
	ld->file = path;
	struct fy_document *doc = parse_file(ld, path);
	if (doc == NULL)
		return;
	struct fy_node *root = fy_document_root(doc);
	/* name: optional, the file name without .yaml / .yml by default. */
	size_t blen = strlen(base);
	char *name = xstrndup(base, blen - (strcmp(base + blen - 4, ".yml") == 0 ? 4 : 5));
	struct fy_node *name_node = NULL;
	if (root == NULL || !fy_node_is_mapping(root)) {
		char *path2 = xasprintf("pipelines.%s", name);
		load_error(
		        ld, root, NULL, path2,
		        "expected a pipeline mapping (name, description, stages, params), got %s",
		        config_node_kind(root));
		free(path2);
		goto out;
	}
	void *iter = NULL;
	struct fy_node_pair *pair;
	while ((pair = fy_node_mapping_iterate(root, &iter)) != NULL) {
		size_t len;
		struct fy_node *k = fy_node_pair_key(pair);
		const char *ks = scalar_text(k, &len);
		if (ks == NULL || len != 4 || memcmp(ks, "name", 4) != 0)
			continue;
		char *path2 = xasprintf("pipelines.%s.name", name);
		name_node = fy_node_pair_value(pair);
		bool ok = get_string(ld, k, name_node, path2, &name);
		free(path2);
		if (!ok)
			goto out;
	}
	load_pipeline(ld, name, name_node, root, true);
out:
	free(name);
	fy_document_destroy(doc);
}

static void load_dir(struct load *ld)
{
	char *dir = config_resolve_path(ld->cfg, ld->cfg->pipelines_dir);
	DIR *d = opendir(dir);
	if (d == NULL) {
		config_errors_add(ld->errs, "%s: pipelines_dir: cannot open: %s", dir,
		                  strerror(errno));
		free(dir);
		return;
	}
	char **names = NULL;
	size_t n = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (!yaml_name(de->d_name))
			continue;
		names = xrealloc(names, (n + 1) * sizeof *names);
		names[n++] = xstrdup(de->d_name);
	}
	closedir(d);
	if (n > 0)
		qsort(names, n, sizeof *names, name_cmp);
	for (size_t i = 0; i < n; i++) {
		char *path = xasprintf("%s/%s", dir, names[i]);
		struct stat st;
		if (stat(path, &st) != 0)
			config_errors_add(ld->errs, "%s: pipelines_dir: cannot read: %s", path,
			                  strerror(errno));
		else if (S_ISREG(st.st_mode)) /* a directory named x.yaml is no pipeline */
			load_file(ld, path, names[i]);
		free(path);
		free(names[i]);
	}
	free(names);
	free(dir);
}

struct pipeline_set *pipeline_set_load(const struct config *cfg, struct config_errors *errs)
{
	size_t before = errs->n;
	struct load ld = {.cfg = cfg, .errs = errs, .file = cfg->path ? cfg->path : "config"};
	ld.set = xcalloc(1, sizeof *ld.set);
	if (cfg->modules != NULL && fy_node_is_mapping(cfg->modules))
		load_modules(&ld, cfg->modules);
	if (cfg->pipelines != NULL && fy_node_is_mapping(cfg->pipelines))
		load_pipelines(&ld, cfg->pipelines);
	if (cfg->pipelines_dir != NULL && cfg->pipelines_dir[0] != '\0')
		load_dir(&ld);
	strv_free(ld.declared, ld.ndeclared);
	for (size_t i = 0; i < ld.nseen; i++) {
		free(ld.seen[i].name);
		free(ld.seen[i].where);
	}
	free(ld.seen);
	if (errs->n != before) {
		pipeline_set_free(ld.set);
		return NULL;
	}
	return ld.set;
}

/* --- lookups and rendering --- */

const struct pipeline *pipeline_set_find(const struct pipeline_set *set, const char *name)
{
	for (size_t i = 0; set != NULL && i < set->npipelines; i++) {
		if (strcmp(set->pipelines[i].name, name) == 0)
			return &set->pipelines[i];
	}
	return NULL;
}

const struct module_def *module_def_find(const struct pipeline_set *set, const char *name)
{
	for (size_t i = 0; set != NULL && name != NULL && i < set->nmodules; i++) {
		if (strcmp(set->modules[i].name, name) == 0)
			return &set->modules[i];
	}
	return NULL;
}

const struct stage_def *pipeline_stage_find(const struct pipeline *p, const char *name)
{
	for (size_t i = 0; i < p->nstages; i++) {
		if (strcmp(p->stages[i].name, name) == 0)
			return &p->stages[i];
	}
	return NULL;
}

json_t *pipeline_to_json(const struct pipeline *p)
{
	json_t *params = json_object();
	for (size_t i = 0; i < p->nparams; i++) {
		const struct param_def *d = &p->params[i];
		json_t *o = json_pack("{s:s, s:b}", "type", param_type_names[d->type], "required",
		                      d->required);
		if (d->default_value != NULL)
			json_object_set(o, "default", d->default_value);
		if (d->description != NULL)
			json_object_set_new(o, "description", json_string(d->description));
		json_object_set_new(params, d->name, o);
	}
	json_t *stages = json_array();
	for (size_t i = 0; i < p->nstages; i++) {
		const struct stage_def *s = &p->stages[i];
		json_t *needs = json_array();
		for (size_t j = 0; j < s->nneeds; j++)
			json_array_append_new(needs, json_string(s->needs[j]));
		json_array_append_new(stages,
		                      json_pack("{s:s, s:i, s:s, s:o, s:b, s:i, s:I, s:I, s:O}",
		                                "name", s->name, "stage_number", s->stage_number,
		                                "module", s->module, "needs", needs, "required",
		                                s->required, "retries", s->retries, "backoff_ms",
		                                (json_int_t)s->backoff_ms, "timeout_ms",
		                                (json_int_t)s->timeout_ms, "params", s->params));
	}
	return json_pack("{s:s, s:s?, s:o, s:b, s:o}", "name", p->name, "description",
	                 p->description, "params", params, "additional_params", !p->params_declared,
	                 "stages", stages);
}

/* --- params --- */

static void add_problem(json_t *errors, const char *field, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
static void add_problem(json_t *errors, const char *field, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *msg = xvasprintf(fmt, ap);
	va_end(ap);
	json_array_append_new(errors, json_pack("{s:s, s:s}", "field", field, "message", msg));
	free(msg);
}

static const struct param_def *param_find(const struct pipeline *p, const char *name)
{
	for (size_t i = 0; i < p->nparams; i++) {
		if (strcmp(p->params[i].name, name) == 0)
			return &p->params[i];
	}
	return NULL;
}

json_t *pipeline_check_params(const struct pipeline *p, const json_t *params, json_t **effective)
{
	*effective = NULL;
	json_t *errors = json_array();
	if (params != NULL && !json_is_object(params)) {
		add_problem(errors, "params", "must be an object, got %s", json_kind(params));
		return errors;
	}
	json_t *out = params != NULL ? json_deep_copy(params) : json_object();
	if (p->params_declared) {
		for (size_t i = 0; i < p->nparams; i++) {
			const struct param_def *d = &p->params[i];
			char *field = xasprintf("params.%s", d->name);
			json_t *v = json_object_get(out, d->name);
			if (v == NULL && d->required)
				add_problem(errors, field, "required parameter missing");
			else if (v == NULL && d->default_value != NULL)
				json_object_set_new(out, d->name, json_deep_copy(d->default_value));
			else if (v != NULL && !type_matches(d->type, v))
				add_problem(errors, field, "expected %s %s, got %s",
				            type_article(d->type), param_type_names[d->type],
				            json_kind(v));
			free(field);
		}
		/* Unknown keys, sorted so the answer does not depend on the order
		 * the client wrote them in. */
		size_t n = json_object_size(out), k = 0;
		const char **unknown = xmalloc((n ? n : 1) * sizeof *unknown);
		const char *key;
		json_t *v;
		json_object_foreach(out, key, v)
		{
			if (param_find(p, key) == NULL)
				unknown[k++] = key;
		}
		qsort(unknown, k, sizeof *unknown, name_cmp);
		for (size_t i = 0; i < k; i++) {
			char *field = xasprintf("params.%s", unknown[i]);
			add_problem(errors, field, "unknown parameter");
			free(field);
		}
		free(unknown);
	}
	if (json_array_size(errors) > 0) {
		json_decref(out);
		return errors;
	}
	json_decref(errors);
	*effective = out;
	return NULL;
}

json_t *pipeline_stage_params(const struct stage_def *s, const json_t *job_params)
{
	json_t *out = json_deep_copy(s->params);
	if (job_params != NULL && json_is_object(job_params)) {
		const char *key;
		json_t *v;
		json_object_foreach((json_t *)job_params, key, v)
		{
			json_object_set_new(out, key, json_deep_copy(v));
		}
	}
	return out;
}
