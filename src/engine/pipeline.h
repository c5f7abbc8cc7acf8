/* pipeline: the module and pipeline definitions, read once from the config's
 * `modules` and `pipelines` and from `pipelines_dir`, validated as a whole,
 * and kept immutable for the daemon's life. A pipeline_set owns every
 * module_def, pipeline and stage_def in it; the pure helpers below check a
 * job's params against a pipeline and build what a stage receives.
 * docs/pipelines.md describes the YAML. */
#ifndef SL_ENGINE_PIPELINE_H
#define SL_ENGINE_PIPELINE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/config.h"

struct dag;

/* A module's timeout when it names none; a stage's default is its module's. */
#define PIPELINE_DEFAULT_TIMEOUT_MS (10 * 60 * 1000)
#define PIPELINE_DEFAULT_BACKOFF_MS 1000
#define PIPELINE_MAX_RETRIES 1000
#define PIPELINE_MAX_CONCURRENCY 1000000

struct module_def {
	char *name;
	char **argv; /* argc strings and a NULL; argv[0] resolved against cfg->dir
	              * when it is relative and contains a '/' */
	size_t argc;
	bool persistent;
	int concurrency; /* >= 1: tasks at once on one instance */
	int64_t timeout_ms;
	char **env; /* nenv "NAME=value" strings and a NULL, in file order */
	size_t nenv;
	char *version; /* NULL when not given */
};

enum param_type {
	PARAM_STRING,
	PARAM_INTEGER, /* a JSON integer: 3 is one, 3.0 is not */
	PARAM_NUMBER, /* any JSON number, integers included */
	PARAM_BOOLEAN,
	PARAM_OBJECT,
	PARAM_ARRAY,
};

/* One declared job parameter. */
struct param_def {
	char *name;
	enum param_type type;
	bool required;
	json_t *default_value; /* NULL when none; otherwise of type */
	char *description; /* NULL when none */
};

struct stage_def {
	char *name;
	char *module;
	const struct module_def *mod; /* in the same pipeline_set */
	char **needs; /* stage names, in the order the config lists them */
	size_t *dep_idx; /* needs[i] is stages[dep_idx[i]]; each < this stage's index */
	size_t nneeds;
	bool required;
	int retries; /* 0..PIPELINE_MAX_RETRIES */
	int64_t backoff_ms;
	int64_t timeout_ms;
	json_t *params; /* the stage's default params: always an object */
	int stage_number; /* 1-based position in stages[] */
	size_t decl_index; /* 0-based position in the config's list */
};

struct pipeline {
	char *name;
	char *description; /* NULL when none */
	char *source; /* the file it was read from */
	struct stage_def *stages; /* topological order, ties in declaration order */
	size_t nstages;
	struct dag *dag; /* over indices into stages[] */
	/* Declared job params in declaration order. params_declared false means
	 * the pipeline has no `params` key: any object is accepted unchecked. */
	struct param_def *params;
	size_t nparams;
	bool params_declared;
};

/* Read-only after load; iterate the arrays directly. Pipelines come in
 * config order, then pipelines_dir files by file name. */
struct pipeline_set {
	struct module_def *modules;
	size_t nmodules;
	struct pipeline *pipelines;
	size_t npipelines;
};

/* Reads every module and pipeline. Every problem is added to errs as
 * "FILE:LINE:COL: path: message" (path like pipelines.x.stages[2].needs,
 * stage positions 0-based); on any problem returns NULL. The caller frees
 * the set with pipeline_set_free(); it borrows nothing from cfg. */
struct pipeline_set *pipeline_set_load(const struct config *cfg, struct config_errors *errs)
        __attribute__((warn_unused_result));
void pipeline_set_free(struct pipeline_set *set);

/* Lookups by name; NULL when there is none. */
const struct pipeline *pipeline_set_find(const struct pipeline_set *set, const char *name);
const struct module_def *module_def_find(const struct pipeline_set *set, const char *name);
const struct stage_def *pipeline_stage_find(const struct pipeline *p, const char *name);

/* [a-z0-9][a-z0-9_-]{0,62}: module, pipeline and stage names. */
bool pipeline_name_ok(const char *s);
const char *param_type_name(enum param_type t);

/* {name, description, params: {name: {type, required, default?,
 * description?}}, additional_params, stages: [{name, stage_number, module,
 * needs, required, retries, backoff_ms, timeout_ms, params}]}: the shape of
 * GET /v1/pipelines. description is null when not given. New reference. */
json_t *pipeline_to_json(const struct pipeline *p);

/* Checks a job's params (NULL counts as {}) against p's declarations:
 * an object, no unknown keys, every required key, every value of its type.
 * Returns NULL when they pass, with *effective a new object holding params
 * plus the declared defaults of absent keys. Otherwise returns a new array
 * of {"field": "params.x", "message": "..."} (every problem, declared order
 * first, then unknown keys sorted) for a 422 problem's "errors", and sets
 * *effective to NULL. Pure. */
json_t *pipeline_check_params(const struct pipeline *p, const json_t *params, json_t **effective)
        __attribute__((warn_unused_result));

/* What a stage receives as params: a copy of the stage's defaults with each
 * top-level key of job_params (may be NULL) put over it — the job wins, an
 * object replaces an object whole. New reference. */
json_t *pipeline_stage_params(const struct stage_def *s, const json_t *job_params);

#endif
