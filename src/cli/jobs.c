/* The job commands of `stageline`: thin shells over the daemon's HTTP API
 * (proto/openapi.yaml), one request or a few per command, through the
 * blocking client in cli/http. Every failure is one line on stderr (a
 * problem's title and detail, plus one line per invalid field) and exit 1;
 * a bad command line is usage and exit 2. `watch` reads the job's
 * revisions from job_feed_next() — the daemon's event stream applied to a
 * copy of the job, or, from a daemon without one, a poll with
 * If-None-Match — and hands each to a view: progress bars redrawn in place
 * on a terminal, one line per stage change otherwise, or JSON lines. */
#include "cli/jobs.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "cli/http.h"
#include "cli/output.h"
#include "core/app.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/xmalloc.h"

#define DEFAULT_URL "http://127.0.0.1:8080"
#define REQUEST_TIMEOUT_MS 30000
#define EXIT_CANCELLED 3
#define REDRAW_MIN_US 200000 /* a terminal is redrawn at most 5 times a second */
#define DEFAULT_INTERVAL_US 200000
#define LIST_PAGE_MAX 200

/* --- usage --------------------------------------------------------------- */

#define COMMON_OPTS                                                                           \
	"\n"                                                                                  \
	"  --url URL          the daemon (default: $STAGELINE_URL, else " DEFAULT_URL ")\n"   \
	"  --api-key KEY      an API key (default: $STAGELINE_API_KEY; none with auth off)\n" \
	"  --json             print the API's JSON instead\n"

#define WATCH_EXIT                                                                    \
	"\n"                                                                          \
	"Exit status: 0 the job completed, 1 it failed (or an error), 3 it was\n"     \
	"cancelled. On a terminal each stage gets a progress bar redrawn in place;\n" \
	"otherwise one line is printed per stage change, then the stages table.\n"

static const char usage_submit[] =
        "usage: stageline submit PIPELINE [--param K=V ...] [--params-file F.json]\n"
        "           [--input-file F.json | --input JSON] [--idempotency-key K]\n"
        "           [--resume-from JOB_ID:STAGE [--same-input]] [--wait [--interval S]]\n"
        "           [--json]\n"
        "\n"
        "Submits a job of PIPELINE and prints its id (with --json, the job).\n"
        "\n"
        "  --param K=V          a job param; V is read as JSON when it is valid JSON\n"
        "                       (42, true, null, [1,2], {\"a\":1}, \"007\"), else taken as\n"
        "                       a string; repeatable, and applied over --params-file\n"
        "  --params-file F      the params, a JSON object (- reads stdin)\n"
        "  --input-file F       the job's input, any JSON value (- reads stdin)\n"
        "  --input JSON         the job's input, inline\n"
        "  --idempotency-key K  a repeat with the same K and body returns the first job\n"
        "  --resume-from J:S    run stage S and its dependents again, take the other\n"
        "                       stages over from the earlier job J\n"
        "  --same-input         with --resume-from: send J's input and upload again\n"
        "                       (GET /v1/jobs/J/input) instead of --input/--input-file\n"
        "  --wait               then follow the job as `watch` does, and exit as it does\n"
        "  --interval S         with --wait: as for `watch` (default 0.2)\n" COMMON_OPTS WATCH_EXIT;

static const char usage_status[] =
        "usage: stageline status JOB_ID [--json]\n"
        "\n"
        "Shows a job: status, progress, run time and error, then its stages (number,\n"
        "name, status, attempt, wait, run time, error or skip reason).\n" COMMON_OPTS;

static const char usage_list[] =
        "usage: stageline list [--status S] [--pipeline P] [--limit N] [--all] [--json]\n"
        "\n"
        "Lists jobs, newest first: id, pipeline, status, progress, creation time.\n"
        "\n"
        "  --status S     only jobs in status S (queued, running, completed, failed,\n"
        "                 cancelled)\n"
        "  --pipeline P   only jobs of pipeline P\n"
        "  --limit N      jobs per page, 1-200 (default 50)\n"
        "  --all          every page, not just the first\n" COMMON_OPTS;

static const char usage_watch[] =
        "usage: stageline watch JOB_ID [--interval S] [--json]\n"
        "\n"
        "Follows a job until it completes, fails or is cancelled. With --json,\n"
        "prints every new revision of the job as one line of JSON.\n"
        "\n"
        "  --interval S   seconds between updates that only move progress; with a\n"
        "                 daemon that has no event stream, between polls (default "
        "0.2)\n" COMMON_OPTS WATCH_EXIT;

static const char usage_cancel[] =
        "usage: stageline cancel JOB_ID [--json]\n"
        "\n"
        "Cancels a job. Its stages that have not started are cancelled at once; a\n"
        "running module is stopped and its stage settles shortly after. A completed\n"
        "or failed job cannot be cancelled (retry it instead).\n" COMMON_OPTS;

static const char usage_retry[] =
        "usage: stageline retry JOB_ID [--from-stage S] [--json]\n"
        "\n"
        "Runs a settled job again, in place (same id, attempt + 1): stage S (default:\n"
        "the first failed, else the first cancelled stage), every stage depending on\n"
        "it, and every failed or cancelled stage.\n"
        "\n"
        "  --from-stage S   the stage to run again\n" COMMON_OPTS;

static const char usage_attempts[] =
        "usage: stageline attempts JOB_ID STAGE [--json]\n"
        "\n"
        "Lists every attempt at running one stage of a job (STAGE is its name or\n"
        "number): outcome, instance, process, exit status, where the time went, "
        "error.\n" COMMON_OPTS;

static const char usage_artifacts[] =
        "usage: stageline artifacts JOB_ID [--stage S] [--json]\n"
        "\n"
        "Lists the files the job's stages stored (the artifacts their modules\n"
        "declared as outputs, and retained intermediates): stage, name, type,\n"
        "format, role, size and SHA-256, from each stage's manifest. --stage S (a\n"
        "name or number) lists one stage's. --json adds each file's signed download\n"
        "link (url, expires_at; a path on the daemon with the file store).\n" COMMON_OPTS;

static const char usage_logs[] =
        "usage: stageline logs JOB_ID [--stage S] [-f|--follow] [--json]\n"
        "\n"
        "Prints the stored logs of a job's stages (each stage's stage.log: the\n"
        "engine's lines and the module's log lines and stderr), in stage order, each\n"
        "under a header line `==> NN_stage <==`; stages that have not run yet are\n"
        "left out. With --json, one line of JSON per stage: {stage, task_id, log}.\n"
        "\n"
        "  --stage S      only stage S (its name or number); exit 1 when it has no\n"
        "                 log yet\n"
        "  -f, --follow   then print the module's log lines as they come, as\n"
        "                 `[stage] message`, and each stage's outcome, until the job\n"
        "                 settles; exit as `watch` does (with --json: the events)\n" COMMON_OPTS;

static const char usage_pipelines[] =
        "usage: stageline pipelines [--json]\n"
        "\n"
        "Lists the pipelines the daemon runs: names, descriptions, params and\n"
        "stages.\n" COMMON_OPTS;

/* --- arguments ------------------------------------------------------------- */

/* Command-specific options: getopt_long returns these letters, and each
 * command lists the letters it takes. */
enum {
	OPT_PARAM = 'p',
	OPT_PARAMS_FILE = 'P',
	OPT_INPUT_FILE = 'F',
	OPT_INPUT = 'i',
	OPT_IDEMPOTENCY_KEY = 'k',
	OPT_RESUME_FROM = 'r',
	OPT_WAIT = 'w',
	OPT_INTERVAL = 'n',
	OPT_STATUS = 's',
	OPT_PIPELINE = 'l',
	OPT_LIMIT = 'L',
	OPT_ALL = 'a',
	OPT_FROM_STAGE = 'R',
	OPT_STAGE = 'S',
	OPT_FOLLOW = 'f', /* also -f */
	OPT_SAME_INPUT = 'I',
	OPT_URL = 256,
	OPT_API_KEY,
	OPT_JSON,
};

struct args {
	const char *url, *api_key;
	bool json, help, wait, all, follow, same_input;
	const char *params_file, *input_file, *input, *idempotency_key, *resume_from;
	const char *status, *pipeline, *from_stage, *stage;
	int limit; /* 0: the server's default */
	int64_t interval_us;
	bool interval_set;
	const char **params; /* --param K=V, in order */
	size_t nparams;
	char **pos; /* positional arguments */
	int npos;
};

struct api;
struct job_command {
	const char *name;
	const char *usage;
	const char *options; /* the OPT_* letters it takes */
	int npos; /* positional arguments */
	const char *missing; /* what to say when they are missing */
	int (*fn)(struct api *a, const struct args *o);
};

static bool parse_interval(const char *s, int64_t *us)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !(v >= 0.01 && v <= 3600))
		return false;
	*us = (int64_t)(v * 1e6);
	return true;
}

static bool parse_limit(const char *s, int *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || *s == '+' || *s == ' ' || v < 1 || v > LIST_PAGE_MAX)
		return false;
	*out = (int)v;
	return true;
}

static void args_free(struct args *o)
{
	free(o->params);
	o->params = NULL;
}

/* Parses the command's options (argv[0] is the command). Returns 0, -1
 * after printing --help, or EXIT_USAGE after printing usage. */
static int args_parse(const struct job_command *cmd, int argc, char **argv, struct args *o)
{
	static const struct option longopts[] = {
	        {"url", required_argument, NULL, OPT_URL},
	        {"api-key", required_argument, NULL, OPT_API_KEY},
	        {"json", no_argument, NULL, OPT_JSON},
	        {"help", no_argument, NULL, 'h'},
	        {"param", required_argument, NULL, OPT_PARAM},
	        {"params-file", required_argument, NULL, OPT_PARAMS_FILE},
	        {"input-file", required_argument, NULL, OPT_INPUT_FILE},
	        {"input", required_argument, NULL, OPT_INPUT},
	        {"idempotency-key", required_argument, NULL, OPT_IDEMPOTENCY_KEY},
	        {"resume-from", required_argument, NULL, OPT_RESUME_FROM},
	        {"same-input", no_argument, NULL, OPT_SAME_INPUT},
	        {"wait", no_argument, NULL, OPT_WAIT},
	        {"interval", required_argument, NULL, OPT_INTERVAL},
	        {"status", required_argument, NULL, OPT_STATUS},
	        {"pipeline", required_argument, NULL, OPT_PIPELINE},
	        {"limit", required_argument, NULL, OPT_LIMIT},
	        {"all", no_argument, NULL, OPT_ALL},
	        {"from-stage", required_argument, NULL, OPT_FROM_STAGE},
	        {"stage", required_argument, NULL, OPT_STAGE},
	        {"follow", no_argument, NULL, OPT_FOLLOW},
	        {NULL, 0, NULL, 0},
	};
	const char *usage = cmd->usage;
	memset(o, 0, sizeof *o);
	o->interval_us = DEFAULT_INTERVAL_US;
	o->params = xcalloc((size_t)argc + 1, sizeof *o->params);
	optind = 0; /* GNU: reinitialise */
	opterr = 0;
	int ch, idx = -1;
	while ((ch = getopt_long(argc, argv, ":hf", longopts, &idx)) != -1) {
		if (ch < 256 && ch != 'h' && ch != ':' && ch != '?' && !strchr(cmd->options, ch)) {
			char opt[3] = {'-', (char)ch, '\0'}; /* a short option: no idx */
			return output_usage_error(usage, "%s%s does not apply to `stageline %s`",
			                          idx >= 0 ? "--" : "",
			                          idx >= 0 ? longopts[idx].name : opt, cmd->name);
		}
		switch (ch) {
		case 'h': o->help = true; break;
		case OPT_URL: o->url = optarg; break;
		case OPT_API_KEY: o->api_key = optarg; break;
		case OPT_JSON: o->json = true; break;
		case OPT_PARAM: {
			const char *eq = strchr(optarg, '=');
			if (eq == NULL || eq == optarg)
				return output_usage_error(
				        usage, "--param wants KEY=VALUE, not '%s'", optarg);
			o->params[o->nparams++] = optarg;
			break;
		}
		case OPT_PARAMS_FILE: o->params_file = optarg; break;
		case OPT_INPUT_FILE: o->input_file = optarg; break;
		case OPT_INPUT: o->input = optarg; break;
		case OPT_IDEMPOTENCY_KEY: o->idempotency_key = optarg; break;
		case OPT_RESUME_FROM: {
			const char *colon = strchr(optarg, ':');
			if (colon == NULL || colon == optarg || colon[1] == '\0')
				return output_usage_error(
				        usage, "--resume-from wants JOB_ID:STAGE, not '%s'",
				        optarg);
			o->resume_from = optarg;
			break;
		}
		case OPT_SAME_INPUT: o->same_input = true; break;
		case OPT_WAIT: o->wait = true; break;
		case OPT_INTERVAL:
			if (!parse_interval(optarg, &o->interval_us))
				return output_usage_error(
				        usage,
				        "--interval wants seconds from 0.01 to 3600, not '%s'",
				        optarg);
			o->interval_set = true;
			break;
		case OPT_STATUS: o->status = optarg; break;
		case OPT_PIPELINE: o->pipeline = optarg; break;
		case OPT_LIMIT:
			if (!parse_limit(optarg, &o->limit))
				return output_usage_error(usage, "--limit wants 1 to %d, not '%s'",
				                          LIST_PAGE_MAX, optarg);
			break;
		case OPT_ALL: o->all = true; break;
		case OPT_FROM_STAGE: o->from_stage = optarg; break;
		case OPT_STAGE: o->stage = optarg; break;
		case OPT_FOLLOW: o->follow = true; break;
		case ':': return output_usage_error(usage, "%s needs a value", argv[optind - 1]);
		default: return output_usage_error(usage, "unknown option '%s'", argv[optind - 1]);
		}
		idx = -1;
	}
	o->pos = argv + optind;
	o->npos = argc - optind;
	if (o->help) {
		fputs(usage, stdout);
		return -1;
	}
	if (o->npos < cmd->npos)
		return output_usage_error(usage, "%s",
		                          o->npos ? "the STAGE is missing" : cmd->missing);
	if (o->npos > cmd->npos)
		return output_usage_error(usage, "unexpected argument '%s'", o->pos[cmd->npos]);
	for (int i = 0; i < o->npos; i++)
		if (o->pos[i][0] == '\0')
			return output_usage_error(usage, "an empty argument");
	if (o->input && o->input_file)
		return output_usage_error(usage, "give --input or --input-file, not both");
	if (o->same_input && !o->resume_from)
		return output_usage_error(usage, "--same-input goes with --resume-from");
	if (o->same_input && (o->input || o->input_file))
		return output_usage_error(usage, "--same-input sends the earlier job's input: "
		                                 "give it or --input/--input-file, not both");
	if (o->input_file && o->params_file && strcmp(o->input_file, "-") == 0 &&
	    strcmp(o->params_file, "-") == 0)
		return output_usage_error(usage, "only one of the files can be stdin (-)");
	if (o->interval_set && strchr(cmd->options, OPT_WAIT) && !o->wait)
		return output_usage_error(usage, "--interval goes with --wait");
	return 0;
}

/* --- the API ----------------------------------------------------------------- */

struct api {
	struct cli_http_url url;
	char *display; /* the base URL for messages */
	const char *key;
};

/* An answer: 2xx with its JSON, or 304 without. */
struct reply {
	int status;
	json_t *json;
	char *etag;
};

static void reply_clear(struct reply *r)
{
	json_decref(r->json);
	free(r->etag);
	memset(r, 0, sizeof *r);
}

static bool api_open(struct api *a, const struct jobs_globals *g, const struct args *o)
{
	memset(a, 0, sizeof *a);
	const char *url = o->url ? o->url : g->url ? g->url : getenv("STAGELINE_URL");
	if (url == NULL || *url == '\0')
		url = DEFAULT_URL;
	const char *key = o->api_key   ? o->api_key
	                  : g->api_key ? g->api_key
	                               : getenv("STAGELINE_API_KEY");
	a->key = key && *key ? key : NULL;
	struct cli_http_error e;
	if (!cli_http_url_parse(url, &a->url, &e)) {
		output_err("%s", e.msg);
		return false;
	}
	a->display = xasprintf("http://%s%s", a->url.authority, a->url.base_path);
	return true;
}

static void api_close(struct api *a)
{
	cli_http_url_clear(&a->url);
	free(a->display);
}

/* Text from the server or a module, fit for one line of a terminal:
 * control characters (newlines, escapes) become spaces. */
static void add_clean(struct buf *b, const char *s)
{
	for (; *s; s++)
		buf_addc(b, ((unsigned char)*s < ' ' || *s == 0x7f) ? ' ' : *s);
}

static void add_names(struct buf *b, json_t *arr)
{
	size_t i;
	json_t *v;
	json_array_foreach(arr, i, v)
	{
		if (i)
			buf_adds(b, ", ");
		add_clean(b, json_is_string(v) ? json_string_value(v) : "?");
	}
}

/* Reports a refused request: the problem's title and detail, then a line
 * per invalid field; a response that is no problem by its status line. */
static void report_failure(const struct api *a, const char *method, const char *path,
                           const struct cli_http_response *r)
{
	json_t *p = json_loadb(r->body.data, r->body.len, 0, NULL);
	const char *title = json_string_value(json_object_get(p, "title"));
	const char *detail = json_string_value(json_object_get(p, "detail"));
	struct buf b = BUF_INIT;
	if (title) {
		add_clean(&b, title);
		if (detail && *detail) {
			buf_adds(&b, ": ");
			add_clean(&b, detail);
		}
	} else {
		buf_printf(&b, "%s %s%s: HTTP %d ", method, a->display, path, r->status);
		add_clean(&b, r->reason ? r->reason : "");
	}
	output_err("%s", b.data);
	size_t i;
	json_t *v;
	json_array_foreach(json_object_get(p, "errors"), i, v)
	{
		const char *field = json_string_value(json_object_get(v, "field"));
		const char *msg = json_string_value(json_object_get(v, "message"));
		buf_reset(&b);
		add_clean(&b, field && *field ? field : "(body)");
		buf_adds(&b, ": ");
		add_clean(&b, msg ? msg : "invalid");
		output_err("  %s", b.data);
	}
	static const char *const lists[][2] = {{"missing_scopes", "missing scopes"},
	                                       {"stages", "stages"}};
	for (size_t k = 0; k < sizeof lists / sizeof lists[0]; k++) {
		json_t *arr = json_object_get(p, lists[k][0]);
		if (json_array_size(arr) == 0)
			continue;
		buf_reset(&b);
		add_names(&b, arr);
		output_err("  %s: %s", lists[k][1], b.data);
	}
	if (r->status == 401 && a->key == NULL)
		output_err("no API key was given: pass --api-key or set STAGELINE_API_KEY");
	buf_free(&b);
	json_decref(p);
}

/* The headers of a request: Accept, User-Agent, the API key, and what the
 * caller adds. */
struct api_headers {
	char ua[64];
	char *auth;
	struct cli_http_field h[6];
	size_t n;
};

static void api_headers_init(struct api_headers *hs, const struct api *a, const char *accept)
{
	memset(hs, 0, sizeof *hs);
	snprintf(hs->ua, sizeof hs->ua, "stageline/%s", app_version);
	hs->auth = a->key ? xasprintf("Bearer %s", a->key) : NULL;
	hs->h[hs->n++] = (struct cli_http_field){"Accept", accept};
	hs->h[hs->n++] = (struct cli_http_field){"User-Agent", hs->ua};
	if (hs->auth)
		hs->h[hs->n++] = (struct cli_http_field){"Authorization", hs->auth};
}

static void api_headers_add(struct api_headers *hs, const char *name, const char *value)
{
	if (value && hs->n < sizeof hs->h / sizeof hs->h[0])
		hs->h[hs->n++] = (struct cli_http_field){name, value};
}

static void api_headers_clear(struct api_headers *hs)
{
	if (hs->auth) {
		memset(hs->auth, 0, strlen(hs->auth));
		free(hs->auth);
	}
	memset(hs, 0, sizeof *hs);
}

/* A request that got no answer, in words. */
static void add_http_error(struct buf *b, const struct api *a, const char *method, const char *path,
                           const struct cli_http_error *e)
{
	if (e->kind == CLI_HTTP_ERR_CONNECT)
		buf_printf(b, "cannot connect to %s: %s", a->display, e->msg);
	else if (e->kind == CLI_HTTP_ERR_REQUEST)
		buf_printf(b, "cannot send %s %s: %s", method, path, e->msg);
	else
		buf_printf(b, "%s %s%s: %s", method, a->display, path, e->msg);
}

static void report_http_error(const struct api *a, const char *method, const char *path,
                              const struct cli_http_error *e)
{
	struct buf b = BUF_INIT;
	add_http_error(&b, a, method, path, e);
	output_err("%s", b.data);
	buf_free(&b);
}

/* Sends a request (body: a JSON value or NULL; if_none_match and
 * idempotency_key when not NULL) and decodes the answer into out. A 2xx or
 * 304 is an answer; a transport error or any other status is reported on
 * stderr and returns false. */
static bool api_call(struct api *a, const char *method, const char *path, json_t *body,
                     const char *if_none_match, const char *idempotency_key, struct reply *out)
{
	memset(out, 0, sizeof *out);
	struct api_headers hs;
	api_headers_init(&hs, a, "application/json, application/problem+json");
	api_headers_add(&hs, "If-None-Match", if_none_match);
	api_headers_add(&hs, "Idempotency-Key", idempotency_key);
	char *text = body ? json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
	struct cli_http_request rq = {
	        .method = method,
	        .path = path,
	        .headers = hs.h,
	        .nheaders = hs.n,
	        .body = text,
	        .body_len = text ? strlen(text) : 0,
	        .content_type = "application/json",
	};
	struct cli_http_response resp = {0};
	struct cli_http_error e;
	bool ok = cli_http_exchange(&a->url, &rq, REQUEST_TIMEOUT_MS, &resp, &e);
	free(text);
	api_headers_clear(&hs);
	if (!ok) {
		report_http_error(a, method, path, &e);
		cli_http_response_clear(&resp);
		return false;
	}
	if (resp.status == 304 || (resp.status >= 200 && resp.status < 300)) {
		out->status = resp.status;
		const char *etag = cli_http_response_header(&resp, "ETag");
		out->etag = etag ? xstrdup(etag) : NULL;
		if (resp.status != 304 && resp.body.len) {
			json_error_t je;
			out->json = json_loadb(resp.body.data, resp.body.len, JSON_DECODE_ANY, &je);
			if (out->json == NULL) {
				output_err("%s %s%s: the answer is not JSON (%s)", method,
				           a->display, path, je.text);
				reply_clear(out);
				ok = false;
			}
		}
	} else {
		report_failure(a, method, path, &resp);
		ok = false;
	}
	cli_http_response_clear(&resp);
	return ok;
}

/* A GET whose answer must be a JSON object: returns it (the caller's) or NULL. */
static json_t *api_get(struct api *a, const char *path)
{
	struct reply r;
	if (!api_call(a, "GET", path, NULL, NULL, NULL, &r))
		return NULL;
	json_t *j = r.json;
	r.json = NULL;
	reply_clear(&r);
	if (!json_is_object(j)) {
		output_err("GET %s%s: the answer is not a JSON object", a->display, path);
		json_decref(j);
		return NULL;
	}
	return j;
}

/* Appends s percent-encoded as one path segment or query value. */
static void add_escaped(struct buf *b, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		    c == '-' || c == '.' || c == '_' || c == '~') {
			buf_addc(b, (char)c);
		} else {
			buf_addc(b, '%');
			buf_addc(b, hex[c >> 4]);
			buf_addc(b, hex[c & 15]);
		}
	}
}

/* "/v1/jobs/<id><suffix>"; the caller frees. */
static char *job_path(const char *id, const char *suffix)
{
	struct buf b = BUF_INIT;
	buf_adds(&b, "/v1/jobs/");
	add_escaped(&b, id);
	buf_adds(&b, suffix);
	return buf_steal(&b);
}

/* --- formatting -------------------------------------------------------------- */

static const char *str_or(json_t *v, const char *fallback)
{
	const char *s = json_string_value(v);
	return s ? s : fallback;
}

/* A duration in ms for people: 880ms, 2.31s, 3m05s, 2h07m; "-" for null. */
static void fmt_ms(char *out, size_t size, json_t *v)
{
	if (!json_is_number(v)) {
		snprintf(out, size, "-");
		return;
	}
	double ms = json_number_value(v);
	if (ms < 1000)
		snprintf(out, size, "%.0fms", ms);
	else if (ms < 60000)
		snprintf(out, size, "%.2fs", ms / 1000);
	else if (ms < 3600000)
		snprintf(out, size, "%dm%02ds", (int)(ms / 60000), (int)(ms / 1000) % 60);
	else
		snprintf(out, size, "%dh%02dm", (int)(ms / 3600000), (int)(ms / 60000) % 60);
}

/* Progress 0..1 as a whole percentage, rounded down (100 only when done). */
static int pct(json_t *v)
{
	double p = json_number_value(v);
	if (!(p > 0))
		return 0;
	if (p >= 1)
		return 100;
	return (int)(p * 100 + 1e-9);
}

/* "CODE (category): message" of an error object; nothing for null. */
static void add_error(struct buf *b, json_t *e)
{
	if (!json_is_object(e))
		return;
	const char *code = json_string_value(json_object_get(e, "code"));
	const char *cat = json_string_value(json_object_get(e, "category"));
	const char *msg = json_string_value(json_object_get(e, "message"));
	if (code)
		add_clean(b, code);
	if (cat) {
		buf_adds(b, code ? " (" : "(");
		add_clean(b, cat);
		buf_addc(b, ')');
	}
	if (msg) {
		if (code || cat)
			buf_adds(b, ": ");
		add_clean(b, msg);
	}
}

/* Why a stage is where it is: its error, else its skip reason. */
static void add_stage_why(struct buf *b, json_t *stage)
{
	json_t *e = json_object_get(stage, "error");
	if (json_is_object(e))
		add_error(b, e);
	else if (json_is_string(json_object_get(stage, "skip_reason")))
		add_clean(b, json_string_value(json_object_get(stage, "skip_reason")));
}

/* sep and why the stage is where it is, when there is a why. */
static void add_stage_why_after(struct buf *b, const char *sep, json_t *stage)
{
	struct buf why = BUF_INIT;
	add_stage_why(&why, stage);
	if (why.len) {
		buf_adds(b, sep);
		buf_add(b, why.data, why.len);
	}
	buf_free(&why);
}

/* "2026-11-23T14:09:16.123456Z" -> "2026-11-23 14:09:16". */
static char *fmt_time(json_t *v)
{
	const char *s = json_string_value(v);
	if (s == NULL)
		return xstrdup("-");
	if (strlen(s) >= 19 && s[10] == 'T')
		return xasprintf("%.10s %.8s", s, s + 11);
	return xstrdup(s);
}

/* A growing table of owned cells. */
struct table {
	size_t ncols;
	char **cells;
	size_t n, cap;
};

static void table_add(struct table *t, char *owned)
{
	if (t->n == t->cap) {
		t->cap = t->cap ? 2 * t->cap : 64;
		t->cells = xrealloc(t->cells, t->cap * sizeof *t->cells);
	}
	t->cells[t->n++] = owned;
}

static void table_free(struct table *t)
{
	for (size_t i = 0; i < t->n; i++)
		free(t->cells[i]);
	free(t->cells);
	memset(t, 0, sizeof *t);
}

static void table_print(struct table *t, const char *const *head, int indent)
{
	output_table(head, t->ncols, t->cells, t->n / t->ncols, indent);
	table_free(t);
}

/* The job line ("job ID (pipeline P): running, 40%, 1.20s") and its error. */
static void print_job_head(json_t *job)
{
	char dur[32], wait[32];
	fmt_ms(dur, sizeof dur, json_object_get(job, "duration_ms"));
	struct buf b = BUF_INIT;
	buf_printf(&b, "job %s (pipeline ", str_or(json_object_get(job, "id"), "?"));
	add_clean(&b, str_or(json_object_get(job, "pipeline"), "?"));
	buf_printf(&b, "): %s, %d%%, %s", str_or(json_object_get(job, "status"), "?"),
	           pct(json_object_get(job, "progress")), dur);
	json_t *tw = json_object_get(job, "total_wait_ms");
	if (json_is_number(tw)) {
		fmt_ms(wait, sizeof wait, tw);
		buf_printf(&b, " (waited %s)", wait);
	}
	json_int_t attempt = json_integer_value(json_object_get(job, "attempt"));
	if (attempt > 1)
		buf_printf(&b, ", attempt %lld", (long long)attempt);
	puts(b.data);
	if (json_is_object(json_object_get(job, "error"))) {
		buf_reset(&b);
		add_error(&b, json_object_get(job, "error"));
		printf("error: %s\n", b.data);
	}
	buf_free(&b);
}

static char *stage_status_text(json_t *s)
{
	const char *status = str_or(json_object_get(s, "status"), "?");
	if (strcmp(status, "running") == 0)
		return xasprintf("running %d%%", pct(json_object_get(s, "progress")));
	return xstrdup(status);
}

static void print_stages(json_t *job)
{
	static const char *const head[] = {
	        "#", "STAGE", "STATUS", "ATTEMPT", "WAIT", "RUN", "ERROR / SKIP REASON"};
	struct table t = {.ncols = 7};
	size_t i;
	json_t *s;
	json_array_foreach(json_object_get(job, "stages"), i, s)
	{
		char ms[32];
		struct buf b = BUF_INIT;
		table_add(&t, xasprintf("%lld", (long long)json_integer_value(
		                                        json_object_get(s, "stage_number"))));
		add_clean(&b, str_or(json_object_get(s, "stage"), "?"));
		table_add(&t, buf_steal(&b));
		table_add(&t, stage_status_text(s));
		table_add(&t, xasprintf("%lld", (long long)json_integer_value(
		                                        json_object_get(s, "attempt"))));
		fmt_ms(ms, sizeof ms, json_object_get(s, "wait_ms"));
		table_add(&t, xstrdup(ms));
		fmt_ms(ms, sizeof ms, json_object_get(s, "duration_ms"));
		table_add(&t, xstrdup(ms));
		add_stage_why(&b, s);
		table_add(&t, b.data ? buf_steal(&b) : xstrdup(""));
	}
	table_print(&t, head, 0);
}

static void print_job(json_t *job)
{
	print_job_head(job);
	putchar('\n');
	print_stages(job);
}

static bool job_settled(json_t *job)
{
	const char *st = str_or(json_object_get(job, "status"), "");
	return strcmp(st, "completed") == 0 || strcmp(st, "failed") == 0 ||
	       strcmp(st, "cancelled") == 0;
}

/* The exit status of a settled job. */
static int job_outcome(json_t *job)
{
	const char *st = str_or(json_object_get(job, "status"), "");
	if (strcmp(st, "completed") == 0)
		return 0;
	if (strcmp(st, "cancelled") == 0)
		return EXIT_CANCELLED;
	return EXIT_FAIL;
}

/* --- watch: the source of updates ------------------------------------------- */

/* The revisions of one job, in order, from the daemon's event stream (GET
 * /v1/jobs/{id}/events, docs/api.md "Following a job live"): the feed keeps
 * a copy of the job, the stream's snapshot, and applies the events that
 * follow it the way the daemon changes its rows (src/engine/job.c
 * SQL_JOB_TXN, scheduler.c SQL_CLAIM): a stage event sets the stage's
 * status, attempt, error and timestamps, a progress event its progress, a
 * lifecycle event the job's status; the fields the API derives (progress,
 * current_stage, durations, waits) are derived again, with the server's
 * clock (the events' ts). A revision is handed out once what has arrived
 * is applied: at once after a durable event, at most once per interval for
 * progress alone. Once the job has settled (a terminal lifecycle event,
 * then `end`, or the stream closing after it) one GET /v1/jobs/{id} gives
 * the exact final revision.
 *
 * A stream that breaks before that is resumed with Last-Event-ID after
 * RECONNECT_MIN_US, doubling to RECONNECT_MAX_US, for at most
 * RECONNECT_GIVE_UP_US without a snapshot; a stream silent for longer than
 * STREAM_IDLE_US (the server sends a heartbeat every 15 s) counts as
 * broken. The first request's failures are reported as any other
 * request's. A daemon without the stream (404 or 405, or an answer that is
 * not an event stream) is polled instead: GET /v1/jobs/{id} every
 * interval with the last ETag in If-None-Match (304: nothing new). */
#define STREAM_IDLE_US (45 * 1000000LL)
#define RECONNECT_MIN_US 200000
#define RECONNECT_MAX_US 2000000
#define RECONNECT_GIVE_UP_US (30 * 1000000LL)

struct job_feed {
	struct api *api;
	const char *id; /* the caller's */
	char *path; /* /v1/jobs/{id} */
	char *events_path; /* /v1/jobs/{id}/events */
	int64_t interval_us;
	/* polling, with a daemon that has no event stream */
	bool polling;
	char *etag;
	int64_t next_poll_us;
	/* the event stream */
	struct cli_http_stream stream;
	bool open; /* stream is open */
	bool connected; /* a stream was opened once: from then on failures are retried */
	char *last_id; /* the id of the last event read (Last-Event-ID), or NULL */
	struct buf ev_type, ev_data, ev_id; /* the event being read */
	bool ev_has_id;
	json_t *job; /* the last snapshot, with the events since applied */
	bool live; /* this connection's snapshot came: events apply */
	bool changed; /* job changed since it was handed out */
	bool changed_now; /* ... by a durable event: hand it out at once */
	int64_t handed_us; /* when a revision was last handed out */
	int64_t server_us; /* the ts of the last event applied (the server's clock) */
	bool settled; /* the job settled: only the final GET is left */
	bool ended; /* `end` came */
	int64_t last_rx_us; /* a line arrived */
	int64_t failing_since_us; /* 0: no failure since the last snapshot */
	int64_t backoff_us;
	int64_t next_connect_us;
	char *last_error; /* the last failure, for the message when giving up */
	/* `logs -f`: every stage and log event as it is read, replayed or live */
	void (*on_event)(void *arg, const char *type, json_t *ev);
	void *on_event_arg;
};

enum feed_next {
	FEED_JOB, /* *job is a new revision */
	FEED_IDLE, /* the deadline came first */
	FEED_ERROR, /* reported on stderr */
};

static void job_feed_init(struct job_feed *f, struct api *a, const char *id, int64_t interval_us)
{
	memset(f, 0, sizeof *f);
	f->api = a;
	f->id = id;
	f->path = job_path(id, "");
	f->events_path = job_path(id, "/events");
	f->interval_us = interval_us;
	f->backoff_us = RECONNECT_MIN_US;
}

/* Asks the stream for the module's log lines too (?logs=1) and hands each
 * stage and log event to fn as it is read. */
static void job_feed_on_events(struct job_feed *f,
                               void (*fn)(void *arg, const char *type, json_t *ev), void *arg)
{
	free(f->events_path);
	f->events_path = job_path(f->id, "/events?logs=1");
	f->on_event = fn;
	f->on_event_arg = arg;
}

static void ev_reset(struct job_feed *f)
{
	buf_reset(&f->ev_type);
	buf_reset(&f->ev_data);
	buf_reset(&f->ev_id);
	f->ev_has_id = false;
}

static void stream_close(struct job_feed *f)
{
	if (f->open)
		cli_http_stream_close(&f->stream);
	f->open = false;
	f->live = false;
	ev_reset(f);
}

static void job_feed_clear(struct job_feed *f)
{
	stream_close(f);
	free(f->path);
	free(f->events_path);
	free(f->etag);
	free(f->last_id);
	free(f->last_error);
	buf_free(&f->ev_type);
	buf_free(&f->ev_data);
	buf_free(&f->ev_id);
	json_decref(f->job);
	memset(f, 0, sizeof *f);
}

static void sleep_us(int64_t us)
{
	struct timespec ts = {.tv_sec = (time_t)(us / 1000000),
	                      .tv_nsec = (long)(us % 1000000) * 1000};
	nanosleep(&ts, NULL); /* an interrupted sleep just polls early */
}

/* GET /v1/jobs/{id} (with If-None-Match: etag unless NULL): the job in r,
 * or a 304; false after reporting. */
static bool feed_get(struct job_feed *f, const char *etag, struct reply *r)
{
	if (!api_call(f->api, "GET", f->path, NULL, etag, NULL, r))
		return false;
	if (r->status != 304 &&
	    (!json_is_object(r->json) || !json_is_array(json_object_get(r->json, "stages")))) {
		output_err("GET %s%s: the answer is not a job", f->api->display, f->path);
		reply_clear(r);
		return false;
	}
	return true;
}

/* The polling feed. */
static enum feed_next feed_poll(struct job_feed *f, int64_t deadline_us, json_t **job)
{
	for (;;) {
		int64_t now = clock_mono_us();
		if (now >= f->next_poll_us) {
			f->next_poll_us = now + f->interval_us;
			struct reply r;
			if (!feed_get(f, f->etag, &r))
				return FEED_ERROR;
			if (r.status == 304) {
				reply_clear(&r);
				continue;
			}
			free(f->etag);
			f->etag = r.etag;
			*job = r.json;
			r.etag = NULL;
			r.json = NULL;
			reply_clear(&r);
			return FEED_JOB;
		}
		if (now >= deadline_us)
			return FEED_IDLE;
		sleep_us((f->next_poll_us < deadline_us ? f->next_poll_us : deadline_us) - now);
	}
}

/* --- applying events to the copy --- */

static json_t *find_stage_of(json_t *job, json_t *ev)
{
	const char *task = json_string_value(json_object_get(ev, "task_id"));
	const char *name = json_string_value(json_object_get(ev, "stage"));
	size_t i;
	json_t *s;
	json_array_foreach(json_object_get(job, "stages"), i, s)
	{
		const char *t = json_string_value(json_object_get(s, "task_id"));
		const char *n = json_string_value(json_object_get(s, "stage"));
		if ((task && t && strcmp(task, t) == 0) ||
		    (!task && name && n && strcmp(name, n) == 0))
			return s;
	}
	return NULL;
}

/* A member of the event's data: nested in `data` (the API's shape), or
 * flattened into the event. */
static json_t *ev_field(json_t *ev, const char *name)
{
	json_t *d = json_object_get(ev, "data");
	json_t *v = json_is_object(d) ? json_object_get(d, name) : NULL;
	return v ? v : json_object_get(ev, name);
}

static bool is_one_of(const char *s, const char *const *list, size_t n)
{
	for (size_t i = 0; s && i < n; i++)
		if (strcmp(s, list[i]) == 0)
			return true;
	return false;
}

static bool task_settled(const char *st)
{
	static const char *const done[] = {"completed", "failed", "skipped", "cancelled"};
	return is_one_of(st, done, 4);
}

static bool job_status_settled(const char *st)
{
	static const char *const done[] = {"completed", "failed", "cancelled"};
	return is_one_of(st, done, 3);
}

/* A timestamp member in epoch µs; 0 when null or unreadable. */
static int64_t ts_us(json_t *o, const char *key)
{
	int64_t us;
	const char *s = json_string_value(json_object_get(o, key));
	return s && clock_parse_rfc3339(s, &us) ? us : 0;
}

static void set_ts(json_t *o, const char *key, int64_t us)
{
	char b[40];
	if (us <= 0) {
		json_object_set_new(o, key, json_null());
		return;
	}
	clock_fmt_rfc3339_us(b, sizeof b, us);
	json_object_set_new(o, key, json_string(b));
}

static int64_t ms_between(int64_t from_us, int64_t to_us)
{
	return to_us > from_us ? (to_us - from_us) / 1000 : 0;
}

static int cmp_i64(const void *pa, const void *pb)
{
	int64_t x = *(const int64_t *)pa, y = *(const int64_t *)pb;
	return x < y ? -1 : x > y;
}

/* The time some stage waited ready, overlaps counted once: the daemon's
 * job_total_wait_ms() (src/engine/job.c). iv[i] = {ready, started or now}. */
static int64_t total_wait_ms(int64_t (*iv)[2], size_t k)
{
	qsort(iv, k, sizeof *iv, cmp_i64);
	int64_t total = 0, cs = 0, ce = 0;
	for (size_t i = 0; i < k; i++) {
		if (i == 0 || iv[i][0] > ce) {
			total += ce - cs;
			cs = iv[i][0];
			ce = iv[i][1];
		} else if (iv[i][1] > ce) {
			ce = iv[i][1];
		}
	}
	total += ce - cs;
	return total / 1000;
}

/* What the API derives from the rows, as of now_us (the server's clock):
 * the job's progress (each stage weighs the same, a settled one whole),
 * current_stage, total_wait_ms and duration_ms, each stage's wait_ms and a
 * running stage's duration_ms. */
static void derive(json_t *job, int64_t now_us)
{
	json_t *stages = json_object_get(job, "stages"), *s;
	size_t n = json_array_size(stages), i, k = 0;
	int64_t(*iv)[2] = xcalloc(n ? n : 1, sizeof *iv);
	double sum = 0;
	const char *running = NULL;
	json_array_foreach(stages, i, s)
	{
		const char *st = str_or(json_object_get(s, "status"), "");
		double p = json_number_value(json_object_get(s, "progress"));
		int64_t ready = ts_us(s, "ready_at"), started = ts_us(s, "started_at");
		bool is_running = strcmp(st, "running") == 0;
		if (task_settled(st))
			sum += 1;
		else if (is_running)
			sum += p;
		if (is_running && running == NULL)
			running = json_string_value(json_object_get(s, "stage"));
		if (now_us <= 0)
			continue;
		if (is_running && started > 0)
			json_object_set_new(s, "duration_ms",
			                    json_integer(ms_between(started, now_us)));
		if (ready > 0) {
			int64_t end = started > 0 ? started : now_us;
			json_object_set_new(s, "wait_ms", json_integer(ms_between(ready, end)));
			if (end > ready) {
				iv[k][0] = ready;
				iv[k][1] = end;
				k++;
			}
		} else {
			json_object_set_new(s, "wait_ms", json_null());
		}
	}
	if (n) {
		double p = sum / (double)n;
		json_object_set_new(job, "progress", json_real(p > 1 ? 1 : p));
		json_object_set_new(job, "current_stage",
		                    running ? json_string(running) : json_null());
	}
	if (now_us > 0) {
		json_object_set_new(job, "total_wait_ms", json_integer(total_wait_ms(iv, k)));
		int64_t started = ts_us(job, "started_at"), done = ts_us(job, "completed_at");
		json_object_set_new(
		        job, "duration_ms",
		        started > 0 ? json_integer(ms_between(started, done > 0 ? done : now_us))
		                    : json_null());
	}
	free(iv);
}

/* job.stage.* and job.module.*: the task's row as the daemon updates it. */
static void apply_stage_event(json_t *s, json_t *ev, int64_t ts)
{
	const char *to = json_string_value(json_object_get(ev, "status_to"));
	if (to == NULL)
		return;
	char *from = xstrdup(str_or(json_object_get(s, "status"), ""));
	bool to_waiting = strcmp(to, "pending") == 0 || strcmp(to, "ready") == 0;
	bool to_running = strcmp(to, "running") == 0;
	json_object_set_new(s, "status", json_string(to));
	if (strcmp(to, "ready") == 0)
		set_ts(s, "ready_at", ts);
	else if (strcmp(to, "pending") == 0)
		set_ts(s, "ready_at", 0);
	if (to_running)
		set_ts(s, "started_at", ts);
	else if (to_waiting)
		set_ts(s, "started_at", 0);
	set_ts(s, "completed_at", task_settled(to) ? ts : 0);
	int64_t started = ts_us(s, "started_at");
	if (job_status_settled(to) && strcmp(from, "running") == 0 && started > 0)
		json_object_set_new(s, "duration_ms", json_integer(ms_between(started, ts)));
	else if (to_waiting)
		json_object_set_new(s, "duration_ms", json_null());
	json_t *attempt = ev_field(ev, "attempt");
	if (json_is_integer(attempt))
		json_object_set(s, "attempt", attempt);
	else if (to_running)
		json_object_set_new(
		        s, "attempt",
		        json_integer(json_integer_value(json_object_get(s, "attempt")) + 1));
	json_t *retries = ev_field(ev, "retries");
	if (strcmp(to, "pending") == 0)
		json_object_set_new(s, "retries", json_integer(0));
	else if (json_is_integer(retries))
		json_object_set(s, "retries", retries);
	json_t *engine = ev_field(ev, "engine_id");
	if (strcmp(to, "pending") == 0)
		json_object_set_new(s, "engine_id", json_null());
	else if (json_is_string(engine))
		json_object_set(s, "engine_id", engine);
	if (strcmp(to, "skipped") == 0)
		json_object_set(s, "skip_reason", json_object_get(ev, "reason"));
	else if (strcmp(to, "pending") == 0)
		json_object_set_new(s, "skip_reason", json_null());
	json_t *error = ev_field(ev, "error");
	if (json_is_object(error))
		json_object_set(s, "error", error);
	else if (strcmp(to, "pending") == 0 || strcmp(to, "completed") == 0)
		json_object_set_new(s, "error", json_null());
	if (strcmp(to, "completed") == 0)
		json_object_set_new(s, "progress", json_real(1));
	else if (to_waiting || to_running)
		json_object_set_new(s, "progress", json_real(0));
	free(from);
}

/* job.lifecycle.*: the job's row. */
static void apply_lifecycle_event(json_t *job, json_t *ev, int64_t ts)
{
	const char *to = json_string_value(json_object_get(ev, "status_to"));
	const char *from = str_or(json_object_get(ev, "status_from"), "");
	if (to == NULL)
		return;
	json_object_set_new(job, "status", json_string(to));
	if (strcmp(to, "queued") == 0) {
		set_ts(job, "queued_at", ts);
		set_ts(job, "completed_at", 0);
		json_object_set_new(job, "error", json_null());
		json_t *attempt = ev_field(ev, "attempt");
		if (json_is_integer(attempt))
			json_object_set(job, "attempt", attempt);
		else if (strcmp(from, "pending") != 0)
			json_object_set_new(
			        job, "attempt",
			        json_integer(json_integer_value(json_object_get(job, "attempt")) +
			                     1));
	} else if (strcmp(to, "running") == 0) {
		if (ts_us(job, "started_at") <= 0)
			set_ts(job, "started_at", ts);
	} else if (job_status_settled(to)) {
		set_ts(job, "completed_at", ts);
	}
}

/* Applies a lifecycle, stage or progress event to f->job; true when it
 * changed something. */
static bool feed_apply(struct job_feed *f, const char *type, json_t *ev)
{
	int64_t ts = ts_us(ev, "ts");
	if (ts > f->server_us)
		f->server_us = ts;
	json_t *seq = json_object_get(ev, "seq");
	if (json_is_integer(seq))
		json_object_set(f->job, "event_seq", seq);
	if (strcmp(type, "lifecycle") == 0) {
		apply_lifecycle_event(f->job, ev, ts);
		f->settled = job_settled(f->job);
	} else {
		json_t *s = find_stage_of(f->job, ev);
		if (s == NULL)
			return json_is_integer(seq);
		if (strcmp(type, "stage") == 0) {
			apply_stage_event(s, ev, ts);
		} else {
			json_t *p = ev_field(ev, "progress"), *attempt = ev_field(ev, "attempt");
			if (!json_is_number(p) ||
			    strcmp(str_or(json_object_get(s, "status"), ""), "running") != 0 ||
			    (json_is_integer(attempt) &&
			     json_integer_value(attempt) !=
			             json_integer_value(json_object_get(s, "attempt"))))
				return false;
			double v = json_number_value(p);
			v = v > 1 ? 1 : v < 0 ? 0 : v;
			if (v == json_number_value(json_object_get(s, "progress")))
				return false;
			json_object_set_new(s, "progress", json_real(v));
		}
	}
	derive(f->job, f->server_us);
	return true;
}

/* --- the stream --- */

/* A failure to remember for the message when giving up. */
static void feed_note(struct job_feed *f, char *owned)
{
	free(f->last_error);
	f->last_error = owned;
}

/* The stream broke (or would not open): try again later, or give up. */
static bool feed_retry_later(struct job_feed *f)
{
	int64_t now = clock_mono_us();
	if (f->failing_since_us == 0) {
		f->failing_since_us = now;
		f->backoff_us = RECONNECT_MIN_US;
	}
	if (now - f->failing_since_us >= RECONNECT_GIVE_UP_US) {
		struct buf b = BUF_INIT;
		add_clean(&b, f->id);
		output_err("lost the event stream of job %s and could not resume it for %lld s: %s",
		           b.data, (long long)(RECONNECT_GIVE_UP_US / 1000000),
		           f->last_error ? f->last_error : "no reason given");
		buf_free(&b);
		return false;
	}
	f->next_connect_us = now + f->backoff_us;
	f->backoff_us = f->backoff_us * 2 > RECONNECT_MAX_US ? RECONNECT_MAX_US : f->backoff_us * 2;
	return true;
}

static void feed_lost(struct job_feed *f, char *why)
{
	stream_close(f);
	feed_note(f, why);
}

static void feed_event(struct job_feed *f, const char *type, const char *data, size_t len)
{
	if (strcmp(type, "end") == 0) {
		f->ended = true;
		stream_close(f); /* the server closes too */
		return;
	}
	bool hooked = f->on_event && (strcmp(type, "stage") == 0 || strcmp(type, "log") == 0);
	if (!hooked && strcmp(type, "snapshot") != 0 && strcmp(type, "lifecycle") != 0 &&
	    strcmp(type, "stage") != 0 && strcmp(type, "progress") != 0)
		return; /* reset (a snapshot follows), log, or one we don't know */
	json_t *o = json_loadb(data, len, 0, NULL);
	if (!json_is_object(o)) {
		json_decref(o);
		return;
	}
	if (hooked)
		f->on_event(f->on_event_arg, type, o);
	if (strcmp(type, "log") == 0) {
		json_decref(o);
		return;
	}
	if (strcmp(type, "snapshot") == 0) {
		if (!json_is_array(json_object_get(o, "stages"))) {
			json_decref(o);
			return;
		}
		json_decref(f->job);
		f->job = o;
		f->live = true;
		f->changed = f->changed_now = true;
		f->settled = job_settled(o);
		f->server_us = 0;
		f->failing_since_us = 0; /* this connection works */
		return;
	}
	/* the replay before the snapshot is in the snapshot */
	if (f->live && feed_apply(f, type, o)) {
		f->changed = true;
		f->changed_now = f->changed_now || strcmp(type, "progress") != 0;
	}
	json_decref(o);
}

/* An id fit for the Last-Event-ID header: visible ASCII. */
static bool id_ok(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] <= ' ' || s[i] > '~')
			return false;
	return true;
}

/* One line of text/event-stream (the HTML standard's "event stream
 * interpretation"). */
static void feed_line(struct job_feed *f, const char *line, size_t len)
{
	if (len == 0) { /* dispatch */
		if (f->ev_has_id) {
			free(f->last_id);
			f->last_id = f->ev_id.len ? xstrdup(f->ev_id.data) : NULL;
		}
		if (f->ev_data.len) {
			f->ev_data.data[--f->ev_data.len] = '\0'; /* the last LF */
			char *type = xstrdup(f->ev_type.len ? f->ev_type.data : "message");
			struct buf data = f->ev_data;
			f->ev_data = (struct buf)BUF_INIT;
			ev_reset(f);
			feed_event(f, type, data.data, data.len);
			free(type);
			buf_free(&data);
		}
		ev_reset(f);
		return;
	}
	if (line[0] == ':')
		return; /* a comment: the heartbeat */
	const char *colon = memchr(line, ':', len);
	size_t nlen = colon ? (size_t)(colon - line) : len;
	const char *v = colon ? colon + 1 : line + len;
	if (v < line + len && *v == ' ')
		v++;
	size_t vlen = (size_t)(line + len - v);
	if (nlen == 5 && memcmp(line, "event", 5) == 0) {
		buf_reset(&f->ev_type);
		buf_add(&f->ev_type, v, vlen);
	} else if (nlen == 4 && memcmp(line, "data", 4) == 0) {
		buf_add(&f->ev_data, v, vlen);
		buf_addc(&f->ev_data, '\n');
	} else if (nlen == 2 && memcmp(line, "id", 2) == 0 && !memchr(v, '\0', vlen)) {
		buf_reset(&f->ev_id);
		if (id_ok(v, vlen))
			buf_add(&f->ev_id, v, vlen);
		f->ev_has_id = true;
	} /* retry: our own backoff instead; other fields are ignored */
}

enum feed_connect {
	CONNECT_OK,
	CONNECT_POLL, /* no event stream here: poll */
	CONNECT_RETRY, /* try again later */
	CONNECT_FAIL, /* reported */
};

static bool content_type_is(const char *value, const char *type)
{
	size_t n = strlen(type);
	if (value == NULL || strncasecmp(value, type, n) != 0)
		return false;
	value += n;
	while (*value == ' ' || *value == '\t')
		value++;
	return *value == '\0' || *value == ';';
}

static enum feed_connect feed_connect(struct job_feed *f)
{
	struct api *a = f->api;
	struct api_headers hs;
	api_headers_init(&hs, a, "text/event-stream");
	api_headers_add(&hs, "Last-Event-ID", f->last_id);
	struct cli_http_request rq = {
	        .method = "GET", .path = f->events_path, .headers = hs.h, .nheaders = hs.n};
	struct cli_http_error e;
	bool ok = cli_http_stream_open(&f->stream, &a->url, &rq, REQUEST_TIMEOUT_MS, &e);
	api_headers_clear(&hs);
	ev_reset(f);
	if (!ok) {
		if (!f->connected || e.kind == CLI_HTTP_ERR_REQUEST) {
			report_http_error(a, "GET", f->events_path, &e);
			return CONNECT_FAIL;
		}
		struct buf b = BUF_INIT;
		add_http_error(&b, a, "GET", f->events_path, &e);
		feed_note(f, buf_steal(&b));
		return CONNECT_RETRY;
	}
	f->open = true;
	struct cli_http_response *r = &f->stream.resp;
	int st = r->status;
	if (st >= 200 && st < 300 &&
	    content_type_is(cli_http_response_header(r, "Content-Type"), "text/event-stream")) {
		f->connected = true;
		return CONNECT_OK;
	}
	enum feed_connect out;
	if (st == 404 || st == 405 || (st >= 200 && st < 300)) {
		out = CONNECT_POLL; /* an older daemon (or a proxy that knows no streams) */
	} else if (f->connected && (st >= 500 || st == 408 || st == 429)) {
		struct buf b = BUF_INIT;
		buf_printf(&b, "GET %s%s: HTTP %d ", a->display, f->events_path, st);
		add_clean(&b, r->reason ? r->reason : "");
		feed_note(f, buf_steal(&b));
		out = CONNECT_RETRY;
	} else {
		report_failure(a, "GET", f->events_path, r);
		out = CONNECT_FAIL;
	}
	stream_close(f);
	return out;
}

/* After `end` (or the stream closing once the job settled): the job as
 * GET /v1/jobs/{id} shows it. Should it have moved on (retried), the
 * stream is followed again. */
static enum feed_next feed_final(struct job_feed *f, json_t **job)
{
	struct reply r;
	if (!feed_get(f, NULL, &r))
		return FEED_ERROR;
	*job = r.json;
	r.json = NULL;
	reply_clear(&r);
	f->ended = false;
	f->settled = job_settled(*job);
	json_decref(f->job);
	f->job = json_deep_copy(*job);
	f->changed = f->changed_now = false;
	f->handed_us = clock_mono_us();
	f->next_connect_us = 0;
	f->failing_since_us = 0;
	return FEED_JOB;
}

/* Hands out a copy of the job as it is now. */
static enum feed_next feed_hand_out(struct job_feed *f, json_t **job)
{
	*job = json_deep_copy(f->job);
	f->changed = f->changed_now = false;
	f->handed_us = clock_mono_us();
	return FEED_JOB;
}

static int64_t min3(int64_t a, int64_t b, int64_t c)
{
	int64_t m = a < b ? a : b;
	return m < c ? m : c;
}

/* Waits for the job's next revision (*job, the caller's) until deadline_us
 * on the monotonic clock (INT64_MAX: no deadline). */
static enum feed_next job_feed_next(struct job_feed *f, int64_t deadline_us, json_t **job)
{
	for (;;) {
		if (f->polling)
			return feed_poll(f, deadline_us, job);
		/* a revision to hand out, now or once the interval has passed */
		int64_t now = clock_mono_us();
		bool due = f->changed && f->job && !f->settled;
		int64_t hand_at = !due             ? INT64_MAX
		                  : f->changed_now ? now
		                                   : f->handed_us + f->interval_us;
		if (!f->open) {
			if (f->ended || f->settled)
				return feed_final(f, job);
			if (now >= hand_at)
				return feed_hand_out(f, job);
			if (now < f->next_connect_us) {
				if (now >= deadline_us)
					return FEED_IDLE;
				sleep_us(min3(f->next_connect_us, deadline_us, hand_at) - now);
				continue;
			}
			switch (feed_connect(f)) {
			case CONNECT_OK: f->last_rx_us = clock_mono_us(); continue;
			case CONNECT_POLL: f->polling = true; continue;
			case CONNECT_FAIL: return FEED_ERROR;
			case CONNECT_RETRY:
				if (!feed_retry_later(f))
					return FEED_ERROR;
				continue;
			}
		}
		/* what has arrived first, then the revision */
		const char *line;
		size_t len;
		struct cli_http_error e;
		enum cli_http_read got = cli_http_stream_line(
		        &f->stream, min3(f->last_rx_us + STREAM_IDLE_US, deadline_us, hand_at),
		        &line, &len, &e);
		if (got == CLI_HTTP_READ_LINE) {
			f->last_rx_us = clock_mono_us();
			feed_line(f, line, len);
			continue;
		}
		if (got == CLI_HTTP_READ_END || got == CLI_HTTP_READ_ERROR) {
			struct buf b = BUF_INIT;
			if (got == CLI_HTTP_READ_END)
				buf_printf(&b, "GET %s%s: the server closed the stream",
				           f->api->display, f->events_path);
			else
				add_http_error(&b, f->api, "GET", f->events_path, &e);
			feed_lost(f, buf_steal(&b));
			if (!f->settled && !feed_retry_later(f))
				return FEED_ERROR;
			continue;
		}
		now = clock_mono_us();
		if (now >= hand_at)
			return feed_hand_out(f, job);
		if (now - f->last_rx_us >= STREAM_IDLE_US) {
			feed_lost(f, xasprintf("GET %s%s: nothing from the server for %lld s",
			                       f->api->display, f->events_path,
			                       (long long)(STREAM_IDLE_US / 1000000)));
			if (!feed_retry_later(f))
				return FEED_ERROR;
			continue;
		}
		if (now >= deadline_us)
			return FEED_IDLE;
	}
}

/* --- watch: the views -------------------------------------------------------- */

enum view_mode {
	VIEW_LINES, /* not a terminal: a line per stage change */
	VIEW_TTY, /* progress bars redrawn in place */
	VIEW_JSON, /* each revision as a line of JSON */
};

struct view {
	enum view_mode mode;
	int64_t start_us;
	int64_t last_draw_us;
	int lines; /* VIEW_TTY: lines of the last drawing */
	json_t *pending; /* VIEW_TTY: a revision the rate limit held back */
	json_t *seen; /* VIEW_LINES: stage name -> the state last printed */
	bool color;
};

static void view_init(struct view *v, bool json)
{
	memset(v, 0, sizeof *v);
	const char *term = getenv("TERM");
	if (json)
		v->mode = VIEW_JSON;
	else if (isatty(STDOUT_FILENO) && !(term && strcmp(term, "dumb") == 0))
		v->mode = VIEW_TTY;
	else
		v->mode = VIEW_LINES;
	v->start_us = clock_mono_us();
	v->seen = json_object();
	const char *no_color = getenv("NO_COLOR");
	v->color = !(no_color && *no_color);
}

static void view_clear(struct view *v)
{
	json_decref(v->pending);
	json_decref(v->seen);
	memset(v, 0, sizeof *v);
}

/* VIEW_LINES: "[  1.23s] tts          running 40%" for every stage whose
 * status, attempt or quarter of progress changed since the last line. */
static void view_lines_update(struct view *v, json_t *job)
{
	double t = (double)(clock_mono_us() - v->start_us) / 1e6;
	size_t i;
	json_t *s;
	json_array_foreach(json_object_get(job, "stages"), i, s)
	{
		const char *name = str_or(json_object_get(s, "stage"), "?");
		const char *status = str_or(json_object_get(s, "status"), "?");
		bool running = strcmp(status, "running") == 0;
		int p = pct(json_object_get(s, "progress"));
		json_int_t attempt = json_integer_value(json_object_get(s, "attempt"));
		char key[64];
		snprintf(key, sizeof key, "%s/%d/%lld", status, running ? p / 25 : -1,
		         (long long)attempt);
		if (strcmp(str_or(json_object_get(v->seen, name), ""), key) == 0)
			continue;
		json_object_set_new(v->seen, name, json_string(key));
		struct buf b = BUF_INIT;
		buf_printf(&b, "[%6.2fs] ", t);
		add_clean(&b, name);
		for (size_t w = output_text_width(name); w < 12; w++)
			buf_addc(&b, ' ');
		buf_printf(&b, " %s", status);
		if (running)
			buf_printf(&b, " %d%%", p);
		if (attempt > 1)
			buf_printf(&b, " (attempt %lld)", (long long)attempt);
		add_stage_why_after(&b, ": ", s);
		puts(b.data);
		buf_free(&b);
	}
	fflush(stdout);
}

/* Appends at most *room code points of s, and takes them off *room. */
static void add_fit(struct buf *b, const char *s, int *room)
{
	for (; *s && *room > 0; s++) {
		buf_addc(b, *s);
		unsigned char next = (unsigned char)s[1];
		if ((next & 0xC0) != 0x80)
			(*room)--;
	}
}

static const char *status_color(const char *status)
{
	if (strcmp(status, "completed") == 0)
		return "\033[32m";
	if (strcmp(status, "failed") == 0)
		return "\033[31m";
	if (strcmp(status, "running") == 0)
		return "\033[36m";
	if (strcmp(status, "skipped") == 0 || strcmp(status, "cancelled") == 0)
		return "\033[33m";
	return "\033[2m";
}

/* VIEW_TTY: a header line and one line per stage with a progress bar,
 * drawn over the previous drawing. Lines are cut to the terminal's width
 * so that none wraps and the cursor goes back up exactly. */
static void view_tty_draw(struct view *v, json_t *job)
{
	enum { BAR = 20 };
	struct winsize ws; /* read at every drawing: the terminal may have been resized */
	int width = (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col ? ws.ws_col : 80) - 1;
	struct buf out = BUF_INIT, line = BUF_INIT;
	if (v->lines)
		buf_printf(&out, "\033[%dA", v->lines);
	buf_addc(&out, '\r');
	int room = width;
	char dur[32];
	fmt_ms(dur, sizeof dur, json_object_get(job, "duration_ms"));
	buf_printf(&line, "job %s (", str_or(json_object_get(job, "id"), "?"));
	add_clean(&line, str_or(json_object_get(job, "pipeline"), "?"));
	buf_printf(&line, ")  %s  %d%%  %s", str_or(json_object_get(job, "status"), "?"),
	           pct(json_object_get(job, "progress")), dur);
	add_fit(&out, line.data, &room);
	buf_adds(&out, "\033[K\n");
	int n = 1;

	json_t *stages = json_object_get(job, "stages"), *s;
	size_t i, name_w = 5;
	json_array_foreach(stages, i, s)
	{
		size_t w = output_text_width(str_or(json_object_get(s, "stage"), "?"));
		if (w > name_w)
			name_w = w;
	}
	if (name_w > 24)
		name_w = 24;
	json_array_foreach(stages, i, s)
	{
		const char *status = str_or(json_object_get(s, "status"), "?");
		bool settled = strcmp(status, "completed") == 0 || strcmp(status, "failed") == 0 ||
		               strcmp(status, "skipped") == 0 || strcmp(status, "cancelled") == 0;
		int p = pct(json_object_get(s, "progress"));
		if (strcmp(status, "completed") == 0)
			p = 100;
		room = width;
		buf_reset(&line);
		buf_printf(&line, "%3lld ",
		           (long long)json_integer_value(json_object_get(s, "stage_number")));
		int name_room = (int)name_w;
		struct buf name = BUF_INIT;
		add_clean(&name, str_or(json_object_get(s, "stage"), "?"));
		add_fit(&line, name.data, &name_room);
		buf_free(&name);
		buf_printf(&line, "%*s ", name_room, "");
		add_fit(&out, line.data, &room);
		if (room > BAR + 2) {
			int fill = settled && strcmp(status, "completed") != 0 ? 0 : p * BAR / 100;
			buf_addc(&out, '[');
			if (v->color)
				buf_adds(&out, status_color(status));
			for (int k = 0; k < BAR; k++)
				buf_addc(&out, k < fill ? '#' : (settled && fill == 0 ? ' ' : '-'));
			if (v->color)
				buf_adds(&out, "\033[0m");
			buf_addc(&out, ']');
			room -= BAR + 2;
		}
		buf_reset(&line);
		buf_printf(&line, " %3d%%  %s", p, status);
		json_int_t attempt = json_integer_value(json_object_get(s, "attempt"));
		if (attempt > 1)
			buf_printf(&line, " (attempt %lld)", (long long)attempt);
		add_stage_why_after(&line, "  ", s);
		add_fit(&out, line.data, &room);
		buf_adds(&out, "\033[K\n");
		n++;
	}
	buf_adds(&out, "\033[J");
	fwrite(out.data, 1, out.len, stdout);
	fflush(stdout);
	v->lines = n;
	v->last_draw_us = clock_mono_us();
	buf_free(&out);
	buf_free(&line);
}

/* Takes a new revision; final when the job has settled. */
static void view_update(struct view *v, json_t *job, bool final)
{
	switch (v->mode) {
	case VIEW_JSON: output_json_line(json_incref(job)); break;
	case VIEW_LINES: view_lines_update(v, job); break;
	case VIEW_TTY:
		json_decref(v->pending);
		v->pending = NULL;
		if (final || v->lines == 0 || clock_mono_us() - v->last_draw_us >= REDRAW_MIN_US)
			view_tty_draw(v, job);
		else
			v->pending = json_incref(job);
		break;
	}
}

/* The time by which a held-back revision must be drawn (INT64_MAX: none). */
static int64_t view_deadline(const struct view *v)
{
	return v->pending ? v->last_draw_us + REDRAW_MIN_US : INT64_MAX;
}

static void view_flush(struct view *v)
{
	if (v->pending) {
		view_tty_draw(v, v->pending);
		json_decref(v->pending);
		v->pending = NULL;
	}
}

/* The closing words for a settled job. */
static void view_finish(struct view *v, json_t *job)
{
	size_t stopping = 0, i;
	json_t *s;
	json_array_foreach(json_object_get(job, "stages"), i, s) stopping +=
	        strcmp(str_or(json_object_get(s, "status"), ""), "running") == 0;
	switch (v->mode) {
	case VIEW_JSON: return;
	case VIEW_LINES:
		putchar('\n');
		print_job(job);
		break;
	case VIEW_TTY: print_job_head(job); break;
	}
	if (stopping)
		printf("(%zu stage%s still stopping)\n", stopping, stopping == 1 ? "" : "s");
}

/* Follows job id until it settles; returns its outcome or EXIT_FAIL. */
static int watch_job(struct api *a, const char *id, int64_t interval_us, bool json)
{
	struct job_feed feed;
	struct view view;
	job_feed_init(&feed, a, id, interval_us);
	view_init(&view, json);
	int rc = EXIT_FAIL;
	for (;;) {
		json_t *job = NULL;
		enum feed_next got = job_feed_next(&feed, view_deadline(&view), &job);
		if (got == FEED_ERROR)
			break;
		if (got == FEED_IDLE) {
			view_flush(&view);
			continue;
		}
		bool settled = job_settled(job);
		view_update(&view, job, settled);
		if (settled) {
			view_finish(&view, job);
			rc = job_outcome(job);
			json_decref(job);
			break;
		}
		json_decref(job);
	}
	view_clear(&view);
	job_feed_clear(&feed);
	return rc;
}

/* --- commands ------------------------------------------------------------------ */

/* Reads a JSON file (- is stdin); NULL after reporting. */
static json_t *read_json_file(const char *path, const char *what)
{
	bool is_stdin = strcmp(path, "-") == 0;
	FILE *f = is_stdin ? stdin : fopen(path, "r");
	if (f == NULL) {
		output_err("cannot read %s file %s: %s", what, path, strerror(errno));
		return NULL;
	}
	json_error_t je;
	json_t *v = json_loadf(f, JSON_DECODE_ANY, &je);
	int read_errno = ferror(f) ? errno : 0;
	if (!is_stdin)
		fclose(f);
	const char *name = is_stdin ? "stdin" : path;
	if (v == NULL && read_errno)
		output_err("cannot read %s file %s: %s", what, name, strerror(read_errno));
	else if (v == NULL)
		output_err("%s: invalid JSON in the %s file (line %d, column %d): %s", name, what,
		           je.line, je.column, je.text);
	return v;
}

static int cmd_submit(struct api *a, const struct args *o)
{
	const char *usage = usage_submit;
	json_t *body = json_object(), *params = NULL, *input = NULL;
	int rc = EXIT_FAIL;
	json_t *pipeline = json_string(o->pos[0]);
	if (pipeline == NULL) {
		rc = output_usage_error(usage, "the pipeline name is not UTF-8");
		goto out;
	}
	json_object_set_new(body, "pipeline", pipeline);

	/* the command line first (usage errors), then the files */
	json_t *cli_params = json_object();
	for (size_t i = 0; i < o->nparams; i++) {
		const char *eq = strchr(o->params[i], '=');
		char *key = xstrndup(o->params[i], (size_t)(eq - o->params[i]));
		json_t *v = json_loads(eq + 1, JSON_DECODE_ANY, NULL);
		if (v == NULL)
			v = json_string(eq + 1);
		if (v == NULL || json_object_set_new(cli_params, key, v) != 0) {
			free(key);
			json_decref(cli_params);
			rc = output_usage_error(usage, "--param %s is not UTF-8", o->params[i]);
			goto out;
		}
		free(key);
	}
	if (o->input) {
		json_error_t je;
		input = json_loads(o->input, JSON_DECODE_ANY, &je);
		if (input == NULL) {
			json_decref(cli_params);
			rc = output_usage_error(usage, "--input is not valid JSON: %s", je.text);
			goto out;
		}
	}
	if (o->params_file) {
		params = read_json_file(o->params_file, "params");
		if (params == NULL) {
			json_decref(cli_params);
			goto out;
		}
		if (!json_is_object(params)) {
			output_err("%s: the params must be a JSON object", o->params_file);
			json_decref(cli_params);
			goto out;
		}
	}
	if (o->nparams) {
		if (params == NULL)
			params = json_object();
		json_object_update(params, cli_params);
	}
	json_decref(cli_params);
	if (params)
		json_object_set(body, "params", params);
	if (o->input_file && (input = read_json_file(o->input_file, "input")) == NULL)
		goto out;
	if (input)
		json_object_set(body, "input", input);
	if (o->resume_from) {
		const char *colon = strchr(o->resume_from, ':');
		json_t *job = json_stringn(o->resume_from, (size_t)(colon - o->resume_from));
		json_t *stage = json_string(colon + 1);
		if (job == NULL || stage == NULL) {
			json_decref(job);
			json_decref(stage);
			rc = output_usage_error(usage, "--resume-from is not UTF-8");
			goto out;
		}
		json_object_set_new(body, "resume_from",
		                    json_pack("{s:o, s:o}", "job_id", job, "stage", stage));
		if (o->same_input) {
			char *jid = xstrndup(o->resume_from, (size_t)(colon - o->resume_from));
			char *path = job_path(jid, "/input");
			free(jid);
			json_t *earlier = api_get(a, path);
			free(path);
			if (earlier == NULL)
				goto out;
			json_t *in = json_object_get(earlier, "input"),
			       *up = json_object_get(earlier, "upload");
			if (in && !json_is_null(in))
				json_object_set(body, "input", in);
			if (json_is_string(up))
				json_object_set(body, "upload", up);
			json_decref(earlier);
		}
	}

	struct reply r;
	if (!api_call(a, "POST", "/v1/jobs", body, NULL, o->idempotency_key, &r))
		goto out;
	const char *id = json_string_value(json_object_get(r.json, "id"));
	if (id == NULL) {
		output_err("POST %s/v1/jobs: the answer has no job id", a->display);
		reply_clear(&r);
		goto out;
	}
	if (o->json && o->wait)
		output_json_line(json_incref(r.json));
	else if (o->json)
		output_json(json_incref(r.json));
	else
		printf("%s\n", id);
	fflush(stdout);
	if (r.status == 200)
		output_err("job %s is the one an earlier submission with this idempotency key made",
		           id);
	rc = 0;
	if (o->wait) {
		char *jid = xstrdup(id);
		reply_clear(&r);
		if (!o->json)
			putchar('\n');
		rc = watch_job(a, jid, o->interval_us, o->json);
		free(jid);
	}
	reply_clear(&r);
out:
	json_decref(params);
	json_decref(input);
	json_decref(body);
	return rc;
}

static int cmd_status(struct api *a, const struct args *o)
{
	char *path = job_path(o->pos[0], "");
	json_t *job = api_get(a, path);
	free(path);
	if (job == NULL)
		return EXIT_FAIL;
	if (o->json)
		output_json(job);
	else {
		print_job(job);
		json_decref(job);
	}
	return 0;
}

static void query_add(struct buf *b, const char *name, const char *value)
{
	if (value == NULL)
		return;
	if (b->data[b->len - 1] != '?')
		buf_addc(b, '&');
	buf_adds(b, name);
	buf_addc(b, '=');
	add_escaped(b, value);
}

static int cmd_list(struct api *a, const struct args *o)
{
	json_t *all = json_array(), *last = NULL;
	char *cursor = NULL;
	int rc = EXIT_FAIL;
	for (;;) {
		struct buf path = BUF_INIT;
		char limit[16];
		snprintf(limit, sizeof limit, "%d", o->limit);
		buf_adds(&path, "/v1/jobs?");
		query_add(&path, "status", o->status);
		query_add(&path, "pipeline", o->pipeline);
		query_add(&path, "limit", o->limit ? limit : NULL);
		query_add(&path, "cursor", cursor);
		if (path.data[path.len - 1] == '?')
			path.data[--path.len] = '\0';
		json_t *page = api_get(a, path.data);
		buf_free(&path);
		if (page == NULL)
			goto out;
		json_t *data = json_object_get(page, "data");
		if (!json_is_array(data)) {
			output_err("GET %s/v1/jobs: the answer has no data", a->display);
			json_decref(page);
			goto out;
		}
		json_array_extend(all, data);
		json_decref(last);
		last = page;
		const char *next = json_string_value(json_object_get(page, "next_cursor"));
		if (!o->all || next == NULL || (cursor && strcmp(cursor, next) == 0))
			break;
		free(cursor);
		cursor = xstrdup(next);
	}
	if (o->json && !o->all) {
		output_json(last);
		last = NULL;
	} else if (o->json) {
		output_json(json_pack("{s:O, s:n}", "data", all, "next_cursor"));
	} else {
		static const char *const head[] = {"ID", "PIPELINE", "STATUS", "PROGRESS",
		                                   "CREATED"};
		struct table t = {.ncols = 5};
		size_t i;
		json_t *j;
		json_array_foreach(all, i, j)
		{
			struct buf b = BUF_INIT;
			table_add(&t, xstrdup(str_or(json_object_get(j, "id"), "?")));
			add_clean(&b, str_or(json_object_get(j, "pipeline"), "?"));
			table_add(&t, buf_steal(&b));
			table_add(&t, xstrdup(str_or(json_object_get(j, "status"), "?")));
			table_add(&t, xasprintf("%d%%", pct(json_object_get(j, "progress"))));
			table_add(&t, fmt_time(json_object_get(j, "created_at")));
		}
		table_print(&t, head, 0);
		if (!o->all && json_is_string(json_object_get(last, "next_cursor")))
			output_err("more jobs than these: --all lists every page");
	}
	rc = 0;
out:
	free(cursor);
	json_decref(last);
	json_decref(all);
	return rc;
}

static int cmd_watch(struct api *a, const struct args *o)
{
	return watch_job(a, o->pos[0], o->interval_us, o->json);
}

/* The names of the stages in one of the given statuses, "a, b". */
static char *stages_in(json_t *job, const char *const *statuses, size_t n)
{
	struct buf b = BUF_INIT;
	size_t i;
	json_t *s;
	json_array_foreach(json_object_get(job, "stages"), i, s)
	{
		const char *st = str_or(json_object_get(s, "status"), "");
		for (size_t k = 0; k < n; k++)
			if (strcmp(st, statuses[k]) == 0) {
				if (b.len)
					buf_adds(&b, ", ");
				add_clean(&b, str_or(json_object_get(s, "stage"), "?"));
			}
	}
	return b.data ? buf_steal(&b) : NULL;
}

static int cmd_cancel(struct api *a, const struct args *o)
{
	char *path = job_path(o->pos[0], "");
	struct reply r;
	bool ok = api_call(a, "DELETE", path, NULL, NULL, NULL, &r);
	free(path);
	if (!ok)
		return EXIT_FAIL;
	if (o->json) {
		output_json(json_incref(r.json));
	} else {
		static const char *const running[] = {"running"};
		char *stopping = stages_in(r.json, running, 1);
		printf("job %s: %s", str_or(json_object_get(r.json, "id"), o->pos[0]),
		       str_or(json_object_get(r.json, "status"), "?"));
		if (stopping)
			printf(" (still stopping: %s)", stopping);
		putchar('\n');
		free(stopping);
	}
	reply_clear(&r);
	return 0;
}

static int cmd_retry(struct api *a, const struct args *o)
{
	json_t *body = json_object();
	if (o->from_stage) {
		json_t *s = json_string(o->from_stage);
		if (s == NULL) {
			json_decref(body);
			return output_usage_error(usage_retry, "--from-stage is not UTF-8");
		}
		json_object_set_new(body, "from_stage", s);
	}
	char *path = job_path(o->pos[0], "/retry");
	struct reply r;
	bool ok = api_call(a, "POST", path, body, NULL, NULL, &r);
	free(path);
	json_decref(body);
	if (!ok)
		return EXIT_FAIL;
	if (o->json) {
		output_json(json_incref(r.json));
	} else {
		static const char *const again[] = {"pending", "ready", "running"};
		char *stages = stages_in(r.json, again, 3);
		printf("job %s: %s (attempt %lld)",
		       str_or(json_object_get(r.json, "id"), o->pos[0]),
		       str_or(json_object_get(r.json, "status"), "?"),
		       (long long)json_integer_value(json_object_get(r.json, "attempt")));
		if (stages)
			printf(", runs again: %s", stages);
		putchar('\n');
		free(stages);
	}
	reply_clear(&r);
	return 0;
}

static void report_no_stage(json_t *job, const char *id, const char *name)
{
	struct buf b = BUF_INIT, n = BUF_INIT, j = BUF_INIT;
	size_t i;
	json_t *s;
	json_array_foreach(json_object_get(job, "stages"), i, s)
	{
		if (i)
			buf_adds(&b, ", ");
		add_clean(&b, str_or(json_object_get(s, "stage"), "?"));
	}
	add_clean(&n, name);
	add_clean(&j, id);
	output_err("job %s has no stage '%s' (its stages: %s)", j.data, n.data,
	           b.data ? b.data : "none");
	buf_free(&b);
	buf_free(&n);
	buf_free(&j);
}

/* The stage called name, else the one numbered name; NULL when none. */
static json_t *find_stage(json_t *job, const char *name)
{
	json_t *stages = json_object_get(job, "stages"), *s;
	size_t i;
	json_array_foreach(stages, i, s) if (strcmp(str_or(json_object_get(s, "stage"), ""),
	                                            name) == 0) return s;
	char *end;
	long n = strtol(name, &end, 10);
	if (*end == '\0' && end != name)
		json_array_foreach(stages, i, s) if (json_integer_value(json_object_get(
		                                             s, "stage_number")) == n) return s;
	return NULL;
}

/* GET /v1/jobs/{id}/tasks/{task_id}<part>: NULL after reporting the error. */
static json_t *get_task_part(struct api *a, const char *job_id, const char *task_id,
                             const char *part)
{
	struct buf tp = BUF_INIT;
	buf_adds(&tp, "/tasks/");
	add_escaped(&tp, task_id);
	buf_adds(&tp, part);
	char *path = job_path(job_id, tp.data);
	buf_free(&tp);
	json_t *task = api_get(a, path);
	free(path);
	return task;
}

static void fmt_bytes(char *out, size_t size, json_int_t n)
{
	if (n >= 1024 * 1024)
		snprintf(out, size, "%.1f MiB", (double)n / (1024.0 * 1024.0));
	else if (n >= 1024)
		snprintf(out, size, "%.1f KiB", (double)n / 1024.0);
	else
		snprintf(out, size, "%lld B", (long long)n);
}

static int cmd_artifacts(struct api *a, const struct args *o)
{
	const char *id = o->pos[0];
	char *path = job_path(id, "");
	json_t *job = api_get(a, path);
	free(path);
	if (job == NULL)
		return EXIT_FAIL;
	json_t *only = NULL;
	if (o->stage) {
		only = find_stage(job, o->stage);
		if (json_string_value(json_object_get(only, "task_id")) == NULL) {
			report_no_stage(job, id, o->stage);
			json_decref(job);
			return EXIT_FAIL;
		}
	}
	static const char *const head[] = {"STAGE", "NAME", "TYPE",  "FORMAT",
	                                   "ROLE",  "SIZE", "SHA256"};
	struct table t = {.ncols = 7};
	json_t *all = json_array();
	size_t i;
	json_t *stage;
	int rc = 0;
	json_array_foreach(json_object_get(job, "stages"), i, stage)
	{
		if (only && stage != only)
			continue;
		const char *task_id = json_string_value(json_object_get(stage, "task_id"));
		json_t *task = task_id ? get_task_part(a, id, task_id, "/artifacts") : NULL;
		if (task == NULL) {
			rc = EXIT_FAIL;
			break;
		}
		const char *name = str_or(json_object_get(stage, "stage"), "?");
		size_t k;
		json_t *f;
		json_array_foreach(json_object_get(task, "files"), k, f)
		{
			json_array_append_new(all, json_pack("{s:s, s:s, s:O}", "stage", name,
			                                     "task_id", task_id, "file", f));
			char size[32];
			fmt_bytes(size, sizeof size,
			          json_integer_value(json_object_get(f, "size_bytes")));
			struct buf b = BUF_INIT;
			add_clean(&b, name);
			table_add(&t, buf_steal(&b));
			static const char *const cols[] = {"name", "type", "format", "role"};
			for (size_t c = 0; c < 4; c++) {
				add_clean(&b, str_or(json_object_get(f, cols[c]), "-"));
				table_add(&t, buf_steal(&b));
			}
			table_add(&t, xstrdup(size));
			const char *sha = json_string_value(json_object_get(f, "sha256"));
			table_add(&t, xstrndup(sha ? sha : "-", 12));
		}
		json_decref(task);
	}
	if (rc == 0 && o->json) {
		output_json(all); /* takes it */
		all = NULL;
	} else if (rc == 0) {
		table_print(&t, head, 0);
	}
	table_free(&t);
	json_decref(all);
	json_decref(job);
	return rc;
}

static int cmd_attempts(struct api *a, const struct args *o)
{
	const char *id = o->pos[0], *name = o->pos[1];
	char *path = job_path(id, "");
	json_t *job = api_get(a, path);
	free(path);
	if (job == NULL)
		return EXIT_FAIL;
	json_t *stage = find_stage(job, name);
	const char *task_id = json_string_value(json_object_get(stage, "task_id"));
	if (task_id == NULL) {
		report_no_stage(job, id, name);
		json_decref(job);
		return EXIT_FAIL;
	}
	struct buf tp = BUF_INIT;
	buf_adds(&tp, "/tasks/");
	add_escaped(&tp, task_id);
	path = job_path(id, tp.data);
	buf_free(&tp);
	json_t *task = api_get(a, path);
	free(path);
	json_decref(job);
	if (task == NULL)
		return EXIT_FAIL;
	if (o->json) {
		output_json(task);
		return 0;
	}
	struct buf b = BUF_INIT;
	add_clean(&b, str_or(json_object_get(task, "stage"), name));
	printf("stage %s of job %s: %s, attempt %lld\n", b.data, id,
	       str_or(json_object_get(task, "status"), "?"),
	       (long long)json_integer_value(json_object_get(task, "attempt")));
	buf_free(&b);
	static const char *const head[] = {"ATTEMPT", "OUTCOME", "INSTANCE", "PID",  "EXIT",
	                                   "FETCH",   "RUN",     "UPLOAD",   "ERROR"};
	struct table t = {.ncols = 9};
	size_t i;
	json_t *at;
	json_array_foreach(json_object_get(task, "attempts"), i, at)
	{
		char ms[32];
		json_t *pid = json_object_get(at, "pid"), *code = json_object_get(at, "exit_code"),
		       *sig = json_object_get(at, "signal");
		table_add(&t, xasprintf("%lld", (long long)json_integer_value(
		                                        json_object_get(at, "attempt"))));
		table_add(&t, xstrdup(str_or(json_object_get(at, "outcome"), "running")));
		table_add(&t, xstrdup(str_or(json_object_get(at, "instance_id"), "-")));
		table_add(&t, json_is_integer(pid)
		                      ? xasprintf("%lld", (long long)json_integer_value(pid))
		                      : xstrdup("-"));
		if (json_is_integer(sig))
			table_add(&t, xasprintf("signal %lld", (long long)json_integer_value(sig)));
		else if (json_is_integer(code))
			table_add(&t, xasprintf("%lld", (long long)json_integer_value(code)));
		else
			table_add(&t, xstrdup("-"));
		static const char *const timing[] = {"fetch_ms", "run_ms", "upload_ms"};
		for (size_t k = 0; k < 3; k++) {
			fmt_ms(ms, sizeof ms, json_object_get(at, timing[k]));
			table_add(&t, xstrdup(ms));
		}
		add_error(&b, json_object_get(at, "error"));
		table_add(&t, b.data ? buf_steal(&b) : xstrdup(""));
	}
	table_print(&t, head, 0);
	json_decref(task);
	return 0;
}

static int cmd_pipelines(struct api *a, const struct args *o)
{
	json_t *list = api_get(a, "/v1/pipelines");
	if (list == NULL)
		return EXIT_FAIL;
	if (o->json) {
		output_json(list);
		return 0;
	}
	size_t i, k;
	json_t *p, *s;
	json_array_foreach(json_object_get(list, "data"), i, p)
	{
		struct buf b = BUF_INIT;
		if (i)
			putchar('\n');
		add_clean(&b, str_or(json_object_get(p, "name"), "?"));
		if (json_is_string(json_object_get(p, "description"))) {
			buf_adds(&b, ": ");
			add_clean(&b, json_string_value(json_object_get(p, "description")));
		}
		puts(b.data);
		buf_reset(&b);
		const char *pname;
		json_t *def;
		json_object_foreach(json_object_get(p, "params"), pname, def)
		{
			buf_adds(&b, b.len ? ", " : "  params: ");
			add_clean(&b, pname);
			buf_printf(&b, " (%s", str_or(json_object_get(def, "type"), "?"));
			if (json_is_true(json_object_get(def, "required")))
				buf_adds(&b, ", required");
			json_t *dflt = json_object_get(def, "default");
			if (dflt) {
				char *d = json_dumps(dflt, JSON_COMPACT | JSON_ENCODE_ANY);
				buf_adds(&b, ", default ");
				add_clean(&b, d ? d : "?");
				free(d);
			}
			buf_addc(&b, ')');
		}
		if (b.len)
			puts(b.data);
		else if (json_is_true(json_object_get(p, "additional_params")))
			puts("  params: any");
		buf_free(&b);
		static const char *const head[] = {"#", "STAGE", "MODULE", "NEEDS"};
		struct table t = {.ncols = 4};
		json_array_foreach(json_object_get(p, "stages"), k, s)
		{
			table_add(&t,
			          xasprintf("%lld", (long long)json_integer_value(
			                                    json_object_get(s, "stage_number"))));
			add_clean(&b, str_or(json_object_get(s, "name"), "?"));
			table_add(&t, buf_steal(&b));
			add_clean(&b, str_or(json_object_get(s, "module"), "?"));
			table_add(&t, buf_steal(&b));
			add_names(&b, json_object_get(s, "needs"));
			table_add(&t, b.data ? buf_steal(&b) : xstrdup("-"));
		}
		table_print(&t, head, 2);
	}
	json_decref(list);
	return 0;
}

/* --- logs --- */

static int cmp_stage_number(const void *pa, const void *pb)
{
	json_int_t x = json_integer_value(json_object_get(*(json_t *const *)pa, "stage_number"));
	json_int_t y = json_integer_value(json_object_get(*(json_t *const *)pb, "stage_number"));
	return x < y ? -1 : x > y;
}

enum log_fetch {
	LOG_OK, /* resp has the log */
	LOG_NONE, /* a 404: resp has the problem, to report or not */
	LOG_FAIL, /* reported */
};

/* GET /v1/jobs/{id}/tasks/{task_id}/logs: the stage's stored stage.log as
 * text/plain. resp is the caller's to clear, whatever the outcome. */
static enum log_fetch fetch_stage_log(struct api *a, const char *path,
                                      struct cli_http_response *resp)
{
	struct api_headers hs;
	api_headers_init(&hs, a, "text/plain, application/problem+json");
	struct cli_http_request rq = {
	        .method = "GET", .path = path, .headers = hs.h, .nheaders = hs.n};
	struct cli_http_error e;
	memset(resp, 0, sizeof *resp);
	bool ok = cli_http_exchange(&a->url, &rq, REQUEST_TIMEOUT_MS, resp, &e);
	api_headers_clear(&hs);
	if (!ok) {
		report_http_error(a, "GET", path, &e);
		return LOG_FAIL;
	}
	if (resp->status >= 200 && resp->status < 300)
		return LOG_OK;
	if (resp->status == 404)
		return LOG_NONE;
	report_failure(a, "GET", path, resp);
	return LOG_FAIL;
}

/* Prints a stored log: control characters other than tab and newline
 * become spaces (a CR before a newline goes), and the last line ends. */
static void print_log_text(const char *s, size_t n)
{
	struct buf b = BUF_INIT;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '\r' && i + 1 < n && s[i + 1] == '\n')
			continue;
		buf_addc(&b, c == '\n' || c == '\t' || (c >= ' ' && c != 0x7f) ? (char)c : ' ');
	}
	if (b.len && b.data[b.len - 1] != '\n')
		buf_addc(&b, '\n');
	if (b.len)
		fwrite(b.data, 1, b.len, stdout);
	buf_free(&b);
}

/* A JSON string of text that may not be UTF-8: each byte that does not
 * start a valid sequence becomes U+FFFD. */
static json_t *json_text(const char *s, size_t n)
{
	json_t *v = json_stringn(s, n);
	if (v)
		return v;
	struct buf b = BUF_INIT;
	for (size_t i = 0; i < n;) {
		unsigned char c = (unsigned char)s[i];
		size_t k = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
		json_t *one = i + k <= n ? json_stringn(s + i, k) : NULL;
		if (one) {
			buf_add(&b, s + i, k);
			json_decref(one);
			i += k;
		} else {
			buf_adds(&b, "\xEF\xBF\xBD");
			i++;
		}
	}
	v = json_stringn(b.data ? b.data : "", b.len);
	buf_free(&b);
	return v;
}

/* `logs -f`: what to print of the events that arrive. */
struct logs_follow {
	const char *only; /* --stage's stage name, or NULL */
	bool json;
};

/* A log event as "[stage] message"; a module outcome (job.module.complete,
 * error, panic, timeout) as "[stage] error (attempt 1, 42ms): CODE
 * (category): message". */
static void logs_on_event(void *arg, const char *type, json_t *ev)
{
	static const char *const outcomes[] = {"job.module.complete", "job.module.error",
	                                       "job.module.panic", "job.module.timeout"};
	const struct logs_follow *lf = arg;
	const char *stage = str_or(json_object_get(ev, "stage"), "?");
	const char *kind = str_or(json_object_get(ev, "kind"), "");
	bool is_log = strcmp(type, "log") == 0;
	if (lf->only && strcmp(stage, lf->only) != 0)
		return;
	if (!is_log && !is_one_of(kind, outcomes, 4))
		return;
	if (lf->json) {
		output_json_line(json_incref(ev));
		fflush(stdout);
		return;
	}
	struct buf b = BUF_INIT;
	buf_addc(&b, '[');
	add_clean(&b, stage);
	buf_adds(&b, "] ");
	if (is_log) {
		add_clean(&b, str_or(ev_field(ev, "message"), ""));
	} else {
		char ms[32];
		json_t *attempt = ev_field(ev, "attempt"), *dur = ev_field(ev, "duration_ms");
		add_clean(&b, kind + strlen("job.module."));
		if (json_is_integer(attempt) || json_is_number(dur)) {
			buf_adds(&b, " (");
			if (json_is_integer(attempt))
				buf_printf(&b, "attempt %lld%s",
				           (long long)json_integer_value(attempt),
				           json_is_number(dur) ? ", " : "");
			if (json_is_number(dur)) {
				fmt_ms(ms, sizeof ms, dur);
				buf_adds(&b, ms);
			}
			buf_addc(&b, ')');
		}
		struct buf why = BUF_INIT;
		add_error(&why, ev_field(ev, "error"));
		if (why.len) {
			buf_adds(&b, ": ");
			buf_add(&b, why.data, why.len);
		}
		buf_free(&why);
	}
	puts(b.data);
	fflush(stdout);
	buf_free(&b);
}

/* Opens the job's event stream with its log lines, from the events after
 * the job as read (its event_seq). False after reporting. */
static bool logs_follow_open(struct job_feed *f, json_t *job)
{
	json_t *seq = json_object_get(job, "event_seq");
	if (json_is_integer(seq) && json_integer_value(seq) > 0)
		f->last_id = xasprintf("%lld", (long long)json_integer_value(seq));
	switch (feed_connect(f)) {
	case CONNECT_OK: f->last_rx_us = clock_mono_us(); return true;
	case CONNECT_POLL:
		output_err("the daemon has no event stream: no log lines will follow, only the "
		           "job's outcome");
		f->polling = true;
		return true;
	case CONNECT_RETRY: return feed_retry_later(f);
	case CONNECT_FAIL: break;
	}
	return false;
}

/* Follows the feed until the job settles: its outcome, or EXIT_FAIL. */
static int logs_follow_run(struct job_feed *f)
{
	for (;;) {
		json_t *job = NULL;
		enum feed_next got = job_feed_next(f, INT64_MAX, &job);
		if (got == FEED_ERROR)
			return EXIT_FAIL;
		if (got == FEED_IDLE)
			continue;
		bool settled = job_settled(job);
		int rc = settled ? job_outcome(job) : 0;
		json_decref(job);
		if (settled)
			return rc;
	}
}

/* Prints the stored log of each stage in list (a header before each when
 * headers); a 404 is skipped, or reported when strict. Returns 0 or
 * EXIT_FAIL. */
static int logs_print_stored(struct api *a, const char *id, json_t **list, size_t n, bool headers,
                             bool strict, bool json)
{
	size_t shown = 0;
	for (size_t i = 0; i < n; i++) {
		const char *name = str_or(json_object_get(list[i], "stage"), "?");
		const char *task_id = json_string_value(json_object_get(list[i], "task_id"));
		if (task_id == NULL)
			continue;
		struct buf tp = BUF_INIT;
		buf_adds(&tp, "/tasks/");
		add_escaped(&tp, task_id);
		buf_adds(&tp, "/logs");
		char *path = job_path(id, tp.data);
		buf_free(&tp);
		struct cli_http_response resp;
		enum log_fetch got = fetch_stage_log(a, path, &resp);
		if (got == LOG_NONE && strict)
			report_failure(a, "GET", path, &resp);
		free(path);
		if (got == LOG_FAIL || (got == LOG_NONE && strict)) {
			cli_http_response_clear(&resp);
			return EXIT_FAIL;
		}
		if (got == LOG_OK && json) {
			output_json_line(json_pack(
			        "{s:s, s:s, s:o}", "stage", name, "task_id", task_id, "log",
			        json_text(resp.body.data ? resp.body.data : "", resp.body.len)));
		} else if (got == LOG_OK) {
			if (headers) {
				struct buf h = BUF_INIT;
				add_clean(&h, name);
				printf("%s==> %02lld_%s <==\n", shown ? "\n" : "",
				       (long long)json_integer_value(
				               json_object_get(list[i], "stage_number")),
				       h.data ? h.data : "");
				buf_free(&h);
			}
			print_log_text(resp.body.data ? resp.body.data : "", resp.body.len);
		}
		if (got == LOG_OK)
			shown++;
		cli_http_response_clear(&resp);
		fflush(stdout);
	}
	return 0;
}

static int cmd_logs(struct api *a, const struct args *o)
{
	const char *id = o->pos[0];
	char *path = job_path(id, "");
	json_t *job = api_get(a, path);
	free(path);
	if (job == NULL)
		return EXIT_FAIL;
	json_t *stages = json_object_get(job, "stages"), *s;
	size_t n = json_array_size(stages), k = 0, i;
	json_t **list = xcalloc(n ? n : 1, sizeof *list);
	struct logs_follow lf = {.json = o->json};
	struct job_feed feed;
	bool feeding = false;
	int rc = EXIT_FAIL;
	if (o->stage) {
		s = find_stage(job, o->stage);
		if (s == NULL || !json_is_string(json_object_get(s, "task_id"))) {
			report_no_stage(job, id, o->stage);
			goto out;
		}
		list[k++] = s;
		lf.only = json_string_value(json_object_get(s, "stage"));
	} else {
		json_array_foreach(stages, i, s) list[k++] = s;
		qsort(list, k, sizeof *list, cmp_stage_number);
	}
	/* following: the stream first, so that nothing that happens while the
	 * stored logs are read is missed */
	bool follow = o->follow && !job_settled(job);
	if (follow) {
		job_feed_init(&feed, a, id, DEFAULT_INTERVAL_US);
		job_feed_on_events(&feed, logs_on_event, &lf);
		feeding = true;
		if (!logs_follow_open(&feed, job))
			goto out;
	}
	rc = logs_print_stored(a, id, list, k, o->stage == NULL && k > 1, o->stage && !o->follow,
	                       o->json);
	if (rc == 0 && follow)
		rc = logs_follow_run(&feed);
	else if (rc == 0 && o->follow)
		rc = job_outcome(job);
out:
	if (feeding)
		job_feed_clear(&feed);
	free(list);
	json_decref(job);
	return rc;
}

/* --- dispatch -------------------------------------------------------------------- */

static const struct job_command job_commands[] = {
        {"submit", usage_submit, "pPFikrIwn", 1, "the PIPELINE is missing", cmd_submit},
        {"status", usage_status, "", 1, "the JOB_ID is missing", cmd_status},
        {"list", usage_list, "slLa", 0, NULL, cmd_list},
        {"watch", usage_watch, "n", 1, "the JOB_ID is missing", cmd_watch},
        {"cancel", usage_cancel, "", 1, "the JOB_ID is missing", cmd_cancel},
        {"retry", usage_retry, "R", 1, "the JOB_ID is missing", cmd_retry},
        {"attempts", usage_attempts, "", 2, "the JOB_ID and the STAGE are missing", cmd_attempts},
        {"logs", usage_logs, "Sf", 1, "the JOB_ID is missing", cmd_logs},
        {"artifacts", usage_artifacts, "S", 1, "the JOB_ID is missing", cmd_artifacts},
        {"pipelines", usage_pipelines, "", 0, NULL, cmd_pipelines},
};

static const struct job_command *find_command(const char *name)
{
	for (size_t i = 0; i < sizeof job_commands / sizeof job_commands[0]; i++)
		if (strcmp(job_commands[i].name, name) == 0)
			return &job_commands[i];
	return NULL;
}

bool jobs_is_command(const char *name)
{
	return find_command(name) != NULL;
}

int jobs_run(const struct jobs_globals *g, int argc, char **argv)
{
	const struct job_command *cmd = find_command(argv[0]);
	if (cmd == NULL)
		return output_usage_error(JOBS_USAGE_SUMMARY, "unknown command '%s'", argv[0]);
	struct args o;
	int rc = args_parse(cmd, argc, argv, &o);
	if (rc) {
		args_free(&o);
		return rc < 0 ? 0 : rc;
	}
	o.json = o.json || g->json;
	struct api a;
	if (rc == 0 && !api_open(&a, g, &o))
		rc = EXIT_FAIL;
	else if (rc == 0) {
		rc = cmd->fn(&a, &o);
		api_close(&a);
	}
	args_free(&o);
	return rc;
}
