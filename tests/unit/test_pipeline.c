/* Unit tests for engine/pipeline: loading §11's speech-demo from a real
 * config file (stage order, numbers, defaults, module resolution, YAML
 * params as JSON), every validation error with its file:line:col, the
 * pipelines_dir files, the declared job params check, the stage params
 * overlay and the GET /v1/pipelines rendering. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/config.h"
#include "core/xmalloc.h"
#include "engine/dag.h"
#include "engine/pipeline.h"

/* Each test gets its own directory for the config and pipelines_dir. */
struct fixture {
	char dir[64];
	struct config *cfg;
	struct config_errors errs;
	struct pipeline_set *set;
	char *cfg_path;
};

static int setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof *f);
	strcpy(f->dir, "/tmp/test_pipeline_XXXXXX");
	if (mkdtemp(f->dir) == NULL)
		return -1;
	f->cfg = config_new();
	*state = f;
	return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	pipeline_set_free(f->set);
	config_free(f->cfg);
	config_errors_clear(&f->errs);
	free(f->cfg_path);
	nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

/* Writes dir/name (creating one level of subdirectory when name has one). */
static char *write_file(struct fixture *f, const char *name, const char *text)
{
	char *path = xasprintf("%s/%s", f->dir, name);
	char *slash = strrchr(path, '/');
	*slash = '\0';
	mkdir(path, 0700);
	*slash = '/';
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	size_t len = strlen(text);
	assert_int_equal(write(fd, text, len), (ssize_t)len);
	close(fd);
	return path;
}

static void dump_errors(const struct config_errors *errs)
{
	for (size_t i = 0; i < errs->n; i++)
		print_message("  error: %s\n", errs->msgs[i]);
}

/* Writes the config, loads it and then the pipelines; returns the set. */
static const struct pipeline_set *load(struct fixture *f, const char *yaml)
{
	free(f->cfg_path);
	f->cfg_path = write_file(f, "stageline.yaml", yaml);
	if (!config_load_file(f->cfg, f->cfg_path, &f->errs)) {
		dump_errors(&f->errs);
		fail_msg("the config itself did not load");
	}
	pipeline_set_free(f->set);
	f->set = pipeline_set_load(f->cfg, &f->errs);
	return f->set;
}

static const struct pipeline_set *load_ok(struct fixture *f, const char *yaml)
{
	const struct pipeline_set *set = load(f, yaml);
	if (set == NULL || f->errs.n != 0) {
		dump_errors(&f->errs);
		fail_msg("pipelines did not load");
	}
	return set;
}

/* Asserts an error reads exactly "<file>:<rest>". */
static void assert_error_in(const struct fixture *f, const char *file, const char *rest)
{
	char *want = xasprintf("%s:%s", file, rest);
	bool found = false;
	for (size_t i = 0; i < f->errs.n && !found; i++)
		found = strcmp(f->errs.msgs[i], want) == 0;
	if (!found) {
		print_message("missing error: %s\n", want);
		dump_errors(&f->errs);
	}
	free(want);
	assert_true(found);
}

static void assert_error(const struct fixture *f, const char *rest)
{
	assert_error_in(f, f->cfg_path, rest);
}

static const char speech_yaml[] =
        "modules:\n"
        "  tts:\n"
        "    command: [\"/usr/bin/python3\", \"contrib/modules/tts.py\"]\n"
        "    concurrency: 2\n"
        "  noop:\n"
        "    command: [\"contrib/modules/noop\", \"--fast\"]\n"
        "    persistent: true\n"
        "    concurrency: 256\n"
        "    version: \"1.2\"\n"
        "  sox:\n"
        "    command: [sox]\n"
        "    timeout: 2m\n"
        "    env: {LANG: C.UTF-8, THREADS: 3}\n"
        "  align: {command: [./bin/align]}\n"
        "  asr: {command: [asr]}\n"
        "  stats: {command: [stats]}\n"
        "  srt: {command: [srt]}\n"
        "  report: {command: [report]}\n"
        "pipelines:\n"
        "  speech-demo:\n"
        "    description: Text to speech, then everything else\n"
        "    stages:\n"
        "      - { name: tts,        module: tts,   timeout: 60s, retries: 2 }\n"
        "      - { name: normalize,  module: sox,   needs: [tts] }\n"
        "      - { name: align,      module: align, needs: [normalize], retries: 1, backoff: 1s }\n"
        "      - { name: transcribe, module: asr,   needs: [normalize], required: false }\n"
        "      - { name: audio-stats, module: stats, needs: [normalize], required: false }\n"
        "      - { name: subtitles,  module: srt,   needs: [align] }\n"
        "      - { name: report,     module: report, needs: [align, transcribe, audio-stats] }\n";

static void test_speech_demo(void **state)
{
	struct fixture *f = *state;
	const struct pipeline_set *set = load_ok(f, speech_yaml);
	assert_int_equal(set->nmodules, 8);
	assert_int_equal(set->npipelines, 1);

	const struct module_def *tts = module_def_find(set, "tts");
	assert_non_null(tts);
	assert_int_equal(tts->argc, 2);
	assert_string_equal(tts->argv[0], "/usr/bin/python3");
	assert_string_equal(tts->argv[1], "contrib/modules/tts.py"); /* no such file here */
	assert_null(tts->argv[2]);
	assert_int_equal(tts->concurrency, 2);
	assert_false(tts->persistent);
	assert_int_equal(tts->timeout_ms, PIPELINE_DEFAULT_TIMEOUT_MS);
	assert_int_equal(tts->nenv, 0);
	assert_null(tts->version);

	const struct module_def *noop = module_def_find(set, "noop");
	char *want = xasprintf("%s/contrib/modules/noop", f->cfg->dir);
	assert_string_equal(noop->argv[0], want);
	free(want);
	assert_string_equal(noop->argv[1], "--fast");
	assert_true(noop->persistent);
	assert_int_equal(noop->concurrency, 256);
	assert_string_equal(noop->version, "1.2");

	const struct module_def *sox = module_def_find(set, "sox");
	assert_string_equal(sox->argv[0], "sox"); /* no '/': found on PATH at spawn */
	assert_int_equal(sox->timeout_ms, 120000);
	assert_int_equal(sox->nenv, 2);
	assert_string_equal(sox->env[0], "LANG=C.UTF-8");
	assert_string_equal(sox->env[1], "THREADS=3");
	assert_null(sox->env[2]);
	want = xasprintf("%s/bin/align", f->cfg->dir);
	assert_string_equal(module_def_find(set, "align")->argv[0], want);
	free(want);
	assert_null(module_def_find(set, "nope"));

	const struct pipeline *p = pipeline_set_find(set, "speech-demo");
	assert_non_null(p);
	assert_null(pipeline_set_find(set, "speech"));
	assert_string_equal(p->description, "Text to speech, then everything else");
	assert_string_equal(p->source, f->cfg_path);
	assert_false(p->params_declared);
	assert_int_equal(p->nstages, 7);
	static const char *const names[] = {"tts",         "normalize", "align", "transcribe",
	                                    "audio-stats", "subtitles", "report"};
	for (size_t i = 0; i < 7; i++) {
		assert_string_equal(p->stages[i].name, names[i]);
		assert_int_equal(p->stages[i].stage_number, (int)i + 1);
		assert_int_equal(p->stages[i].decl_index, i);
		assert_true(json_is_object(p->stages[i].params));
		assert_int_equal(json_object_size(p->stages[i].params), 0);
		assert_ptr_equal(p->stages[i].mod, module_def_find(set, p->stages[i].module));
		assert_ptr_equal(pipeline_stage_find(p, names[i]), &p->stages[i]);
	}
	assert_null(pipeline_stage_find(p, "nope"));

	const struct stage_def *s = &p->stages[0];
	assert_int_equal(s->retries, 2);
	assert_int_equal(s->timeout_ms, 60000);
	assert_int_equal(s->backoff_ms, PIPELINE_DEFAULT_BACKOFF_MS);
	assert_true(s->required);
	assert_int_equal(s->nneeds, 0);
	s = &p->stages[1]; /* normalize takes sox's timeout */
	assert_int_equal(s->timeout_ms, 120000);
	assert_int_equal(s->nneeds, 1);
	assert_int_equal(s->dep_idx[0], 0);
	s = &p->stages[2];
	assert_int_equal(s->retries, 1);
	assert_int_equal(s->backoff_ms, 1000);
	assert_int_equal(s->timeout_ms, PIPELINE_DEFAULT_TIMEOUT_MS);
	assert_false(p->stages[3].required);
	assert_false(p->stages[4].required);
	s = &p->stages[6];
	assert_int_equal(s->nneeds, 3);
	assert_string_equal(s->needs[0], "align");
	assert_string_equal(s->needs[1], "transcribe");
	assert_string_equal(s->needs[2], "audio-stats");
	assert_int_equal(s->dep_idx[0], 2);
	assert_int_equal(s->dep_idx[1], 3);
	assert_int_equal(s->dep_idx[2], 4);

	/* The pipeline's DAG is over stages[]: retry from align re-runs align,
	 * subtitles and report. */
	bool mask[7];
	dag_descendants(p->dag, 2, true, mask);
	for (size_t i = 0; i < 7; i++)
		assert_int_equal(mask[i], i == 2 || i == 5 || i == 6);
}

/* Relative arguments that name a file under the config's directory resolve
 * like the program does; options, absolute paths, words and paths that
 * don't exist stay as written. */
static void test_argv_paths_resolve(void **state)
{
	struct fixture *f = *state;
	free(write_file(f, "mods/run.py", "print('hi')\n"));
	const struct pipeline_set *set =
	        load_ok(f, "modules:\n"
	                   "  m:\n"
	                   "    command: [\"/usr/bin/python3\", \"mods/run.py\", \"--out=a/b\", "
	                   "\"no/such.py\",\n"
	                   "              \"/abs/x\", \"word\"]\n"
	                   "pipelines:\n"
	                   "  p:\n"
	                   "    stages:\n"
	                   "      - {name: s, module: m}\n");
	const struct module_def *m = module_def_find(set, "m");
	assert_non_null(m);
	assert_int_equal(m->argc, 6);
	char *want = xasprintf("%s/mods/run.py", f->cfg->dir);
	assert_string_equal(m->argv[1], want);
	free(want);
	assert_string_equal(m->argv[2], "--out=a/b");
	assert_string_equal(m->argv[3], "no/such.py");
	assert_string_equal(m->argv[4], "/abs/x");
	assert_string_equal(m->argv[5], "word");
}

static void test_order_is_topological(void **state)
{
	struct fixture *f = *state;
	/* Declared backwards: the order follows needs; among the stages that
	 * could go next, the one declared first goes (report, declared first,
	 * comes before lone as soon as it can run). */
	const struct pipeline_set *set =
	        load_ok(f, "modules:\n"
	                   "  m: {command: [m]}\n"
	                   "pipelines:\n"
	                   "  back:\n"
	                   "    stages:\n"
	                   "      - {name: report, module: m, needs: [c, b]}\n"
	                   "      - {name: c, module: m, needs: [a]}\n"
	                   "      - {name: b, module: m, needs: [a]}\n"
	                   "      - {name: a, module: m}\n"
	                   "      - {name: lone, module: m}\n");
	const struct pipeline *p = &set->pipelines[0];
	static const char *const names[] = {"a", "c", "b", "report", "lone"};
	static const size_t decl[] = {3, 1, 2, 0, 4};
	for (size_t i = 0; i < 5; i++) {
		assert_string_equal(p->stages[i].name, names[i]);
		assert_int_equal(p->stages[i].stage_number, (int)i + 1);
		assert_int_equal(p->stages[i].decl_index, decl[i]);
	}
	/* dep_idx follows the new order, in the order needs lists them. */
	assert_int_equal(p->stages[3].dep_idx[0], 1);
	assert_int_equal(p->stages[3].dep_idx[1], 2);
	assert_int_equal(p->stages[1].dep_idx[0], 0);
	for (size_t i = 0; i < 5; i++) {
		for (size_t j = 0; j < p->stages[i].nneeds; j++)
			assert_true(p->stages[i].dep_idx[j] < i);
	}
}

static void test_stage_params_yaml(void **state)
{
	struct fixture *f = *state;
	const struct pipeline_set *set = load_ok(f, "modules:\n"
	                                            "  m: {command: [m]}\n"
	                                            "pipelines:\n"
	                                            "  p:\n"
	                                            "    stages:\n"
	                                            "      - name: a\n"
	                                            "        module: m\n"
	                                            "        params:\n"
	                                            "          voice: alice\n"
	                                            "          quoted: \"123\"\n"
	                                            "          tagged: !!str 42\n"
	                                            "          n: 42\n"
	                                            "          neg: -7\n"
	                                            "          hex: 0x1F\n"
	                                            "          oct: 0o17\n"
	                                            "          f: 2.5\n"
	                                            "          e: 1e3\n"
	                                            "          yes_word: yes\n"
	                                            "          t: true\n"
	                                            "          nothing: ~\n"
	                                            "          empty:\n"
	                                            "          list: &l [1, two, {three: 3}]\n"
	                                            "          again: *l\n"
	                                            "          nested: {a: {b: [false]}}\n");
	const json_t *params = set->pipelines[0].stages[0].params;
	json_error_t jerr;
	json_t *want = json_loads("{\"voice\": \"alice\", \"quoted\": \"123\", \"tagged\": \"42\","
	                          " \"n\": 42, \"neg\": -7, \"hex\": 31, \"oct\": 15, \"f\": 2.5,"
	                          " \"e\": 1000.0, \"yes_word\": \"yes\", \"t\": true,"
	                          " \"nothing\": null, \"empty\": null,"
	                          " \"list\": [1, \"two\", {\"three\": 3}],"
	                          " \"again\": [1, \"two\", {\"three\": 3}],"
	                          " \"nested\": {\"a\": {\"b\": [false]}}}",
	                          0, &jerr);
	assert_non_null(want);
	if (!json_equal(params, want)) {
		char *got = json_dumps(params, JSON_SORT_KEYS);
		print_message("got %s\n", got);
		free(got);
	}
	assert_true(json_equal(params, want));
	assert_true(json_is_integer(json_object_get(params, "n")));
	assert_true(json_is_real(json_object_get(params, "e")));
	json_decref(want);
}

static void test_empty_config(void **state)
{
	struct fixture *f = *state;
	const struct pipeline_set *set = load_ok(f, "server: {listen: \"127.0.0.1:1\"}\n");
	assert_int_equal(set->nmodules, 0);
	assert_int_equal(set->npipelines, 0);
	assert_null(pipeline_set_find(set, "x"));

	/* No config file at all. */
	struct config *cfg = config_new();
	struct config_errors errs = {0};
	struct pipeline_set *empty = pipeline_set_load(cfg, &errs);
	assert_non_null(empty);
	assert_int_equal(errs.n, 0);
	pipeline_set_free(empty);
	pipeline_set_free(NULL);
	config_free(cfg);
}

/* One bad config per row, each with the exact error it must give. */
struct bad_case {
	const char *yaml;
	const char *error; /* "LINE:COL: path: message" */
};

#define MOD "modules:\n  m: {command: [m]}\n" /* lines 1-2 */
#define PIPE MOD "pipelines:\n  p:\n    stages:\n" /* lines 3-5; stages from line 6 */

static const struct bad_case bad_cases[] = {
        {"modules:\n"
         "  m: {command: [m], comand: x}\n",
         "2:21: modules.m: unknown key 'comand'"},
        {"modules:\n"
         "  m:\n"
         "    persistent: true\n",
         "2:3: modules.m: missing required key 'command'"},
        {"modules:\n"
         "  m: {command: []}\n",
         "2:7: modules.m.command: expected a non-empty list of strings, got an empty list"},
        {"modules:\n"
         "  m: {command: sox}\n",
         "2:16: modules.m.command: expected a non-empty list of strings, got a scalar"},
        {"modules:\n"
         "  m: {command: [[a]]}\n",
         "2:7: modules.m.command[0]: expected a string, got a sequence"},
        {"modules:\n"
         "  m: {command: [\"\"]}\n",
         "2:7: modules.m.command: the program (first item) must not be empty"},
        {"modules:\n"
         "  m: {command: [m], concurrency: 0}\n",
         "2:34: modules.m.concurrency: expected a whole number from 1 to 1000000, got '0'"},
        {"modules:\n"
         "  m: {command: [m], timeout: 1.5s}\n",
         "2:30: modules.m.timeout: expected a duration like 30s (ms, s, m or h), got '1.5s'"},
        {"modules:\n"
         "  m: {command: [m], timeout: 0s}\n",
         "2:30: modules.m.timeout: must be greater than 0, got '0s'"},
        {"modules:\n"
         "  m: {command: [m], persistent: maybe}\n",
         "2:33: modules.m.persistent: expected true or false, got 'maybe'"},
        {"modules:\n"
         "  m: {command: [m], env: {STAGELINE_JOB_ID: x}}\n",
         "2:27: modules.m.env.STAGELINE_JOB_ID: STAGELINE_* variables are set by the daemon and "
         "cannot be overridden"},
        {"modules:\n"
         "  m: {command: [m], env: {9a: x}}\n",
         "2:27: modules.m.env.9a: not a variable name: use letters, digits and '_', not starting "
         "with a digit"},
        {"modules:\n"
         "  m: {command: [m], env: [A]}\n",
         "2:21: modules.m.env: expected a mapping of NAME: value, got a sequence"},
        {"modules:\n"
         "  Tts: {command: [m]}\n",
         "2:3: modules.Tts: bad module name 'Tts': use 1-63 characters from a-z, 0-9, '_' and '-', "
         "starting with a letter or digit"},
        {"modules:\n"
         "  m: [m]\n",
         "2:3: modules.m: expected a mapping, got a sequence"},
        {MOD "pipelines:\n"
             "  p: {}\n",
         "4:3: pipelines.p: missing required key 'stages'"},
        {MOD "pipelines:\n"
             "  p: {stages: [{name: a, module: m}], color: red}\n",
         "4:39: pipelines.p: unknown key 'color'"},
        {MOD "pipelines:\n"
             "  p: {stages: []}\n",
         "4:7: pipelines.p.stages: expected a non-empty list of stages, got an empty list"},
        {MOD "pipelines:\n"
             "  P_1: {stages: [{name: a, module: m}]}\n",
         "4:3: pipelines.P_1: bad pipeline name 'P_1': use 1-63 characters from a-z, 0-9, '_' and "
         "'-', starting with a letter or digit"},
        {MOD "pipelines:\n"
             "  p: {description: [x], stages: [{name: a, module: m}]}\n",
         "4:7: pipelines.p.description: expected a string, got a sequence"},
        {PIPE "      - {name: a, module: m, colour: red}\n",
         "6:30: pipelines.p.stages[0]: unknown key 'colour'"},
        {PIPE "      - {name: a}\n", "6:10: pipelines.p.stages[0]: missing required key 'module'"},
        {PIPE "      - {module: m}\n", "6:10: pipelines.p.stages[0]: missing required key 'name'"},
        {PIPE "      - a\n",
         "6:9: pipelines.p.stages[0]: expected a mapping with name and module, got a scalar"},
        {PIPE "      - {name: a, module: nope}\n",
         "6:27: pipelines.p.stages[0].module: unknown module 'nope'"},
        {PIPE "      - {name: Bad Name, module: m}\n",
         "6:16: pipelines.p.stages[0].name: bad stage name 'Bad Name': use 1-63 characters from "
         "a-z, 0-9, '_' and '-', starting with a letter or digit"},
        {PIPE "      - {name: a, module: m}\n"
              "      - {name: a, module: m}\n",
         "7:10: pipelines.p.stages[1]: duplicate stage name 'a' (also stages[0])"},
        {PIPE "      - {name: a, module: m, needs: [a]}\n",
         "6:38: pipelines.p.stages[0].needs: stage 'a' cannot need itself"},
        {PIPE "      - {name: a, module: m}\n"
              "      - {name: b, module: m, needs: [a, a]}\n",
         "7:41: pipelines.p.stages[1].needs: 'a' is listed twice"},
        {PIPE "      - {name: a, module: m, needs: a}\n",
         "6:37: pipelines.p.stages[0].needs: expected a list of stage names, got a scalar"},
        {PIPE "      - {name: a, module: m, retries: -1}\n",
         "6:39: pipelines.p.stages[0].retries: expected a whole number from 0 to 1000, got '-1'"},
        {PIPE "      - {name: a, module: m, backoff: soon}\n",
         "6:39: pipelines.p.stages[0].backoff: expected a duration like 30s (ms, s, m or h), got "
         "'soon'"},
        {PIPE "      - {name: a, module: m, required: maybe}\n",
         "6:40: pipelines.p.stages[0].required: expected true or false, got 'maybe'"},
        {PIPE "      - {name: a, module: m, params: [1]}\n",
         "6:30: pipelines.p.stages[0].params: expected a mapping, got a sequence"},
        {PIPE "      - {name: a, module: m, params: {x: .inf}}\n",
         "6:42: pipelines.p.stages[0].params.x: '.inf' has no JSON form; quote it for a string"},
        {PIPE "      - {name: a, module: m, params: {x: [1, 99999999999999999999]}}\n",
         "6:46: pipelines.p.stages[0].params.x[1]: integer '99999999999999999999' does not fit in "
         "64 bits"},
        {PIPE "      - {name: tts, module: m}\n"
              "      - {name: normalize, module: m, needs: [tts]}\n"
              "      - {name: subtitles, module: m, needs: [algn]}\n",
         "8:46: pipelines.p.stages[2].needs: unknown stage 'algn'"},
        {PIPE "      - {name: a, module: m, needs: [c]}\n"
              "      - {name: b, module: m, needs: [a]}\n"
              "      - {name: c, module: m, needs: [b]}\n",
         "6:38: pipelines.p.stages[0].needs: cycle: a -> b -> c -> a"},
        {PIPE "      - {name: x, module: m}\n"
              "      - {name: b, module: m, needs: [x, a]}\n"
              "      - {name: a, module: m, needs: [b]}\n",
         "7:41: pipelines.p.stages[1].needs: cycle: b -> a -> b"},
        {PIPE "      - {name: a, module: m}\n"
              "    params:\n"
              "      lang: {type: text}\n",
         "8:20: pipelines.p.params.lang.type: expected one of string, integer, number, boolean, "
         "object, array, got 'text'"},
        {PIPE "      - {name: a, module: m}\n"
              "    params:\n"
              "      n: {type: integer, default: x}\n",
         "8:35: pipelines.p.params.n.default: expected an integer, got a string"},
        {PIPE "      - {name: a, module: m}\n"
              "    params:\n"
              "      n: {type: integer, default: 1.5}\n",
         "8:35: pipelines.p.params.n.default: expected an integer, got a number with a fraction"},
        {PIPE "      - {name: a, module: m}\n"
              "    params:\n"
              "      o: {type: object, default: []}\n",
         "8:25: pipelines.p.params.o.default: expected an object, got an array"},
        {PIPE "      - {name: a, module: m}\n"
              "    params:\n"
              "      n: {type: string, required: true, default: x}\n",
         "8:25: pipelines.p.params.n: a required parameter cannot have a default"},
        {PIPE "      - {name: a, module: m}\n"
              "    params:\n"
              "      n: {required: true}\n",
         "8:7: pipelines.p.params.n: missing required key 'type'"},
        {PIPE "      - {name: a, module: m}\n"
              "    params:\n"
              "      n: {type: string, min: 1}\n",
         "8:25: pipelines.p.params.n: unknown key 'min'"},
        {PIPE "      - {name: a, module: m}\n"
              "    params:\n"
              "      9lives: {type: string}\n",
         "8:7: pipelines.p.params.9lives: bad parameter name '9lives': use 1-64 characters from "
         "A-Z, a-z, 0-9, '_' and '-', starting with a letter or '_'"},
        {PIPE "      - {name: a, module: m}\n"
              "    params: [a]\n",
         "7:5: pipelines.p.params: expected a mapping of name: {type, required, default}, got a "
         "sequence"},

};

static void test_validation_errors(void **state)
{
	struct fixture *f = *state;
	for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
		config_errors_clear(&f->errs);
		assert_null(load(f, bad_cases[i].yaml));
		assert_error(f, bad_cases[i].error);
		if (f->errs.n != 1) { /* each case has exactly one problem */
			dump_errors(&f->errs);
			assert_int_equal(f->errs.n, 1);
		}
	}
}

static void test_max_stages(void **state)
{
	struct fixture *f = *state;
	const char *yaml = "limits: {max_stages: 3}\n" PIPE "      - {name: a, module: m}\n"
	                   "      - {name: b, module: m}\n"
	                   "      - {name: c, module: m}\n"
	                   "      - {name: d, module: m}\n";
	assert_null(load(f, yaml));
	assert_int_equal(f->errs.n, 1);
	assert_error(f, "6:5: pipelines.p.stages: 4 stages, more than limits.max_stages (3)");

	/* Exactly at the limit is fine. */
	config_errors_clear(&f->errs);
	config_free(f->cfg); /* a fresh config: the limit must not carry over */
	f->cfg = config_new();
	load_ok(f, "limits: {max_stages: 3}\n" PIPE "      - {name: a, module: m}\n"
	           "      - {name: b, module: m}\n"
	           "      - {name: c, module: m}\n");

	/* 64 stages, a chain declared backwards, loads with the default limit. */
	config_errors_clear(&f->errs);
	config_free(f->cfg);
	f->cfg = config_new();
	char *text = xstrdup(PIPE);
	for (int i = 0; i < 64; i++) {
		char *line = i < 63 ? xasprintf("      - {name: s%d, module: m, needs: [s%d]}\n", i,
		                                i + 1)
		                    : xasprintf("      - {name: s%d, module: m}\n", i);
		char *next = xasprintf("%s%s", text, line);
		free(text);
		free(line);
		text = next;
	}
	const struct pipeline_set *set = load_ok(f, text);
	const struct pipeline *p = &set->pipelines[0];
	assert_int_equal(p->nstages, 64);
	for (int i = 0; i < 64; i++) {
		char want[8];
		snprintf(want, sizeof want, "s%d", 63 - i);
		assert_string_equal(p->stages[i].name, want);
	}
	/* A 65th stage is one too many. */
	config_errors_clear(&f->errs);
	char *more = xasprintf("%s      - {name: extra, module: m}\n", text);
	assert_null(load(f, more));
	assert_error(f, "5:5: pipelines.p.stages: 65 stages, more than limits.max_stages (64)");
	free(more);
	free(text);
}

static void test_all_errors_collected(void **state)
{
	struct fixture *f = *state;
	/* Problems in a module, a stage, the DAG and the params all at once; a
	 * broken but declared module is not also "unknown". */
	assert_null(load(f, "modules:\n"
	                    "  m: {command: [m]}\n"
	                    "  broken: {command: []}\n"
	                    "pipelines:\n"
	                    "  p:\n"
	                    "    stages:\n"
	                    "      - {name: a, module: broken, needs: [b]}\n"
	                    "      - {name: b, module: m, needs: [a, zz]}\n"
	                    "    params:\n"
	                    "      x: {type: float}\n"
	                    "  q:\n"
	                    "    stages:\n"
	                    "      - {name: a, module: nope}\n"));
	assert_error(f, "3:12: modules.broken.command: expected a non-empty list of strings, got "
	                "an empty list");
	assert_error(f, "8:41: pipelines.p.stages[1].needs: unknown stage 'zz'");
	assert_error(f, "7:43: pipelines.p.stages[0].needs: cycle: a -> b -> a");
	assert_error(f, "10:17: pipelines.p.params.x.type: expected one of string, integer, "
	                "number, boolean, object, array, got 'float'");
	assert_error(f, "13:27: pipelines.q.stages[0].module: unknown module 'nope'");
	assert_int_equal(f->errs.n, 5);
}

static void test_pipelines_dir(void **state)
{
	struct fixture *f = *state;
	char *a = write_file(f, "pipes/20-align.yaml",
	                     "name: align-only\n"
	                     "description: just align\n"
	                     "stages:\n"
	                     "  - {name: align, module: m}\n"
	                     "params:\n"
	                     "  lang: {type: string, default: en}\n");
	free(write_file(f, "pipes/10-first.yml", "stages:\n  - {name: one, module: m}\n"));
	free(write_file(f, "pipes/.hidden.yaml", "this: is: not: yaml: ["));
	free(write_file(f, "pipes/notes.txt", "not a pipeline"));
	free(write_file(f, "pipes/sub.yaml/x", "a directory named like a file"));
	const struct pipeline_set *set =
	        load_ok(f, MOD "pipelines:\n"
	                       "  inline: {stages: [{name: s, module: m}]}\n"
	                       "pipelines_dir: pipes\n");
	assert_int_equal(set->npipelines, 3);
	/* Config first, then files by file name; a file without name takes its own. */
	assert_string_equal(set->pipelines[0].name, "inline");
	assert_string_equal(set->pipelines[1].name, "10-first");
	assert_string_equal(set->pipelines[2].name, "align-only");
	const struct pipeline *p = &set->pipelines[2];
	assert_string_equal(p->source, a);
	assert_string_equal(p->description, "just align");
	assert_true(p->params_declared);
	assert_int_equal(p->nparams, 1);
	assert_string_equal(p->params[0].name, "lang");
	assert_int_equal(p->params[0].type, PARAM_STRING);
	assert_false(p->params[0].required);
	assert_string_equal(json_string_value(p->params[0].default_value), "en");
	assert_ptr_equal(p->stages[0].mod, module_def_find(set, "m"));

	/* Defined twice: in the config and in a file. */
	config_errors_clear(&f->errs);
	char *dup = write_file(f, "pipes/30-dup.yaml",
	                       "# again\nname: inline\n"
	                       "stages: [{name: s, module: m}]\n");
	assert_null(load(f, MOD "pipelines:\n"
	                        "  inline: {stages: [{name: s, module: m}]}\n"
	                        "pipelines_dir: pipes\n"));
	char *rest = xasprintf("2:7: pipelines.inline: pipeline 'inline' is already defined at "
	                       "%s:4:3",
	                       f->cfg_path);
	assert_error_in(f, dup, rest);
	assert_int_equal(f->errs.n, 1);
	free(rest);
	unlink(dup);
	free(dup);

	/* Errors inside a file name that file; a bad file name is a bad pipeline name. */
	config_errors_clear(&f->errs);
	char *bad = write_file(f, "pipes/40-bad.yaml", "stages:\n  - {name: s, module: nope}\n");
	char *syntax = write_file(f, "pipes/50-syntax.yaml", "stages: [\n");
	char *two = write_file(f, "pipes/60-two.yaml",
	                       "stages: [{name: s, module: m}]\n---\nstages: []\n");
	char *scalar = write_file(f, "pipes/70-scalar.yaml", "just text\n");
	char *empty = write_file(f, "pipes/80-empty.yaml", "");
	char *noname = write_file(f, "pipes/90-noname.yaml", "name: [x]\nstages: []\n");
	assert_null(load(f, MOD "pipelines_dir: pipes\n"));
	assert_error_in(f, bad, "2:23: pipelines.40-bad.stages[0].module: unknown module 'nope'");
	bool found = false;
	for (size_t i = 0; i < f->errs.n && !found; i++)
		found = strncmp(f->errs.msgs[i], syntax, strlen(syntax)) == 0 &&
		        strstr(f->errs.msgs[i], ": invalid YAML: ") != NULL;
	if (!found)
		dump_errors(&f->errs);
	assert_true(found);
	assert_error_in(f, two, "3:1: pipelines_dir: a pipeline file holds one YAML document");
	assert_error_in(f, scalar,
	                "1:1: pipelines.70-scalar: expected a pipeline mapping (name, description, "
	                "stages, params), got a scalar");
	char *want = xasprintf("%s: pipelines_dir: the file is empty", empty);
	found = false;
	for (size_t i = 0; i < f->errs.n && !found; i++)
		found = strcmp(f->errs.msgs[i], want) == 0;
	free(want);
	assert_true(found);
	assert_error_in(f, noname,
	                "1:1: pipelines.90-noname.name: expected a string, got a sequence");
	free(bad);
	free(syntax);
	free(two);
	free(scalar);
	free(empty);
	free(noname);

	/* A missing directory. */
	config_errors_clear(&f->errs);
	assert_null(load(f, MOD "pipelines_dir: nowhere\n"));
	assert_int_equal(f->errs.n, 1);
	want = xasprintf("%s/nowhere: pipelines_dir: cannot open: No such file or directory",
	                 f->cfg->dir);
	assert_string_equal(f->errs.msgs[0], want);
	free(want);
	free(a);
}

static const char params_yaml[] = MOD "pipelines:\n"
                                      "  p:\n"
                                      "    stages:\n"
                                      "      - name: a\n"
                                      "        module: m\n"
                                      "        params: {lang: de, speed: 1, keep: {x: 1}}\n"
                                      "    params:\n"
                                      "      lang: {type: string, required: true,"
                                      " description: Spoken language}\n"
                                      "      speed: {type: number, default: 1.5}\n"
                                      "      count: {type: integer, default: 3}\n"
                                      "      verbose: {type: boolean}\n"
                                      "      opts: {type: object, default: {a: [1]}}\n"
                                      "      tags: {type: array}\n"
                                      "  open:\n"
                                      "    stages: [{name: a, module: m}]\n"
                                      "  closed:\n"
                                      "    stages: [{name: a, module: m}]\n"
                                      "    params: {}\n";

static json_t *parse(const char *text)
{
	json_error_t jerr;
	json_t *j = json_loads(text, JSON_DECODE_ANY, &jerr);
	if (j == NULL)
		fail_msg("bad JSON in test: %s", jerr.text);
	return j;
}

/* Checks params against p and compares the errors (or effective params)
 * with the JSON text want. */
static void check_params(const struct pipeline *p, const char *params, bool ok, const char *want)
{
	json_t *in = params ? parse(params) : NULL;
	json_t *effective = (json_t *)1;
	json_t *errors = pipeline_check_params(p, in, &effective);
	json_t *expect = parse(want);
	json_t *got = ok ? effective : errors;
	if (ok) {
		assert_null(errors);
		assert_non_null(effective);
	} else {
		assert_non_null(errors);
		assert_null(effective);
	}
	if (!json_equal(got, expect)) {
		char *s = json_dumps(got, JSON_SORT_KEYS | JSON_ENCODE_ANY);
		print_message("params %s\n  got  %s\n  want %s\n", params ? params : "NULL", s,
		              want);
		free(s);
	}
	assert_true(json_equal(got, expect));
	json_decref(got);
	json_decref(expect);
	json_decref(in);
}

static void test_check_params(void **state)
{
	struct fixture *f = *state;
	const struct pipeline_set *set = load_ok(f, params_yaml);
	const struct pipeline *p = pipeline_set_find(set, "p");

	/* Defaults fill in; given values stay; integers count as numbers. */
	check_params(p, "{\"lang\": \"en\"}", true,
	             "{\"lang\": \"en\", \"speed\": 1.5, \"count\": 3, \"opts\": {\"a\": [1]}}");
	check_params(p,
	             "{\"lang\": \"en\", \"speed\": 2, \"count\": 7, \"verbose\": false,"
	             " \"opts\": {}, \"tags\": [\"x\"]}",
	             true,
	             "{\"lang\": \"en\", \"speed\": 2, \"count\": 7, \"verbose\": false,"
	             " \"opts\": {}, \"tags\": [\"x\"]}");

	/* Missing required, wrong types, unknown keys (sorted): all reported. */
	check_params(
	        p, "{\"zeta\": 1, \"count\": 2.5, \"speed\": \"fast\", \"alpha\": true}", false,
	        "[{\"field\": \"params.lang\", \"message\": \"required parameter missing\"},"
	        " {\"field\": \"params.speed\", \"message\": \"expected a number, got a string\"},"
	        " {\"field\": \"params.count\","
	        "  \"message\": \"expected an integer, got a number with a fraction\"},"
	        " {\"field\": \"params.alpha\", \"message\": \"unknown parameter\"},"
	        " {\"field\": \"params.zeta\", \"message\": \"unknown parameter\"}]");
	check_params(
	        p,
	        "{\"lang\": 1, \"count\": \"3\", \"verbose\": 1, \"opts\": [],"
	        " \"tags\": {}}",
	        false,
	        "[{\"field\": \"params.lang\", \"message\": \"expected a string, got an integer\"},"
	        " {\"field\": \"params.count\", \"message\": \"expected an integer, got a "
	        "string\"},"
	        " {\"field\": \"params.verbose\","
	        "  \"message\": \"expected a boolean, got an integer\"},"
	        " {\"field\": \"params.opts\", \"message\": \"expected an object, got an array\"},"
	        " {\"field\": \"params.tags\", \"message\": \"expected an array, got an "
	        "object\"}]");
	check_params(
	        p, "{\"lang\": null}", false,
	        "[{\"field\": \"params.lang\", \"message\": \"expected a string, got null\"}]");
	check_params(p, "[1]", false,
	             "[{\"field\": \"params\", \"message\": \"must be an object, got an array\"}]");
	check_params(p, NULL, false,
	             "[{\"field\": \"params.lang\", \"message\": \"required parameter missing\"}]");

	/* No declaration: anything goes through untouched. */
	const struct pipeline *open = pipeline_set_find(set, "open");
	check_params(open, "{\"anything\": [1, {\"b\": null}]}", true,
	             "{\"anything\": [1, {\"b\": null}]}");
	check_params(open, NULL, true, "{}");
	check_params(open, "\"text\"", false,
	             "[{\"field\": \"params\", \"message\": \"must be an object, got a string\"}]");
	/* Declared empty: nothing may be given. */
	const struct pipeline *closed = pipeline_set_find(set, "closed");
	check_params(closed, "{}", true, "{}");
	check_params(closed, "{\"x\": 1}", false,
	             "[{\"field\": \"params.x\", \"message\": \"unknown parameter\"}]");

	/* The effective params are a copy: changing them leaves the defaults. */
	json_t *in = parse("{\"lang\": \"en\"}"), *eff = NULL;
	assert_null(pipeline_check_params(p, in, &eff));
	json_array_append_new(json_object_get(json_object_get(eff, "opts"), "a"), json_integer(2));
	json_decref(eff);
	json_decref(in);
	assert_int_equal(json_array_size(json_object_get(p->params[4].default_value, "a")), 1);
}

static void test_stage_params_overlay(void **state)
{
	struct fixture *f = *state;
	const struct pipeline_set *set = load_ok(f, params_yaml);
	const struct stage_def *s = &pipeline_set_find(set, "p")->stages[0];
	json_t *job = parse("{\"lang\": \"en\", \"keep\": {\"y\": 2}, \"count\": 3}");
	json_t *got = pipeline_stage_params(s, job);
	/* The job wins key by key; an object replaces the stage's object whole. */
	json_t *want =
	        parse("{\"lang\": \"en\", \"speed\": 1, \"keep\": {\"y\": 2}, \"count\": 3}");
	assert_true(json_equal(got, want));
	json_decref(got);
	json_decref(want);
	json_decref(job);
	/* The stage's defaults are untouched. */
	want = parse("{\"lang\": \"de\", \"speed\": 1, \"keep\": {\"x\": 1}}");
	assert_true(json_equal(s->params, want));
	got = pipeline_stage_params(s, NULL);
	assert_true(json_equal(got, want));
	assert_true(got != s->params);
	json_decref(got);
	json_decref(want);
}

static void test_to_json(void **state)
{
	struct fixture *f = *state;
	const struct pipeline_set *set = load_ok(f, params_yaml);
	json_t *got = pipeline_to_json(pipeline_set_find(set, "p"));
	json_t *want =
	        parse("{\"name\": \"p\", \"description\": null, \"additional_params\": false,"
	              " \"params\": {"
	              "   \"lang\": {\"type\": \"string\", \"required\": true,"
	              "              \"description\": \"Spoken language\"},"
	              "   \"speed\": {\"type\": \"number\", \"required\": false, \"default\": 1.5},"
	              "   \"count\": {\"type\": \"integer\", \"required\": false, \"default\": 3},"
	              "   \"verbose\": {\"type\": \"boolean\", \"required\": false},"
	              "   \"opts\": {\"type\": \"object\", \"required\": false, \"default\": "
	              "{\"a\": [1]}},"
	              "   \"tags\": {\"type\": \"array\", \"required\": false}},"
	              " \"stages\": [{\"name\": \"a\", \"stage_number\": 1, \"module\": \"m\","
	              "   \"needs\": [], \"required\": true, \"retries\": 0, \"backoff_ms\": 1000,"
	              "   \"timeout_ms\": 600000,"
	              "   \"params\": {\"lang\": \"de\", \"speed\": 1, \"keep\": {\"x\": 1}}}]}");
	if (!json_equal(got, want)) {
		char *s = json_dumps(got, JSON_SORT_KEYS);
		print_message("got %s\n", s);
		free(s);
	}
	assert_true(json_equal(got, want));
	/* Declared params keep declaration order in the rendering. */
	const char *key;
	json_t *v;
	const char *order[] = {"lang", "speed", "count", "verbose", "opts", "tags"};
	size_t i = 0;
	json_object_foreach(json_object_get(got, "params"), key, v)
	{
		assert_string_equal(key, order[i++]);
	}
	json_decref(got);
	json_decref(want);

	/* The speech demo: needs in listed order, description, open params. */
	config_errors_clear(&f->errs);
	set = load_ok(f, speech_yaml);
	got = pipeline_to_json(&set->pipelines[0]);
	assert_string_equal(json_string_value(json_object_get(got, "description")),
	                    "Text to speech, then everything else");
	assert_true(json_is_true(json_object_get(got, "additional_params")));
	assert_int_equal(json_object_size(json_object_get(got, "params")), 0);
	json_t *report = json_array_get(json_object_get(got, "stages"), 6);
	want = parse(
	        "{\"name\": \"report\", \"stage_number\": 7, \"module\": \"report\","
	        " \"needs\": [\"align\", \"transcribe\", \"audio-stats\"], \"required\": true,"
	        " \"retries\": 0, \"backoff_ms\": 1000, \"timeout_ms\": 600000, \"params\": {}}");
	assert_true(json_equal(report, want));
	json_decref(want);
	json_t *tts = json_array_get(json_object_get(got, "stages"), 0);
	assert_int_equal(json_integer_value(json_object_get(tts, "timeout_ms")), 60000);
	assert_int_equal(json_integer_value(json_object_get(tts, "retries")), 2);
	json_decref(got);
}

static void test_names(void **state)
{
	assert_true(pipeline_name_ok("a"));
	assert_true(pipeline_name_ok("0"));
	assert_true(pipeline_name_ok("speech-demo"));
	assert_true(pipeline_name_ok("audio_stats-2"));
	char name[65];
	memset(name, 'a', 64);
	name[64] = '\0';
	assert_false(pipeline_name_ok(name)); /* 64 characters */
	name[63] = '\0';
	assert_true(pipeline_name_ok(name)); /* 63 */
	assert_false(pipeline_name_ok(""));
	assert_false(pipeline_name_ok(NULL));
	assert_false(pipeline_name_ok("-a"));
	assert_false(pipeline_name_ok("_a"));
	assert_false(pipeline_name_ok("A"));
	assert_false(pipeline_name_ok("a.b"));
	assert_false(pipeline_name_ok("a b"));
	assert_false(pipeline_name_ok("a/b"));
	assert_string_equal(param_type_name(PARAM_STRING), "string");
	assert_string_equal(param_type_name(PARAM_INTEGER), "integer");
	assert_string_equal(param_type_name(PARAM_ARRAY), "array");
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
	        T(test_speech_demo),          T(test_argv_paths_resolve),
	        T(test_order_is_topological), T(test_stage_params_yaml),
	        T(test_empty_config),         T(test_validation_errors),
	        T(test_max_stages),           T(test_all_errors_collected),
	        T(test_pipelines_dir),        T(test_check_params),
	        T(test_stage_params_overlay), T(test_to_json),
	        cmocka_unit_test(test_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
