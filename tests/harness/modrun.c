/* modrun: drives exec/module.c from the command line for the integration
 * tests and the benchmark. It runs one module runner on its own event loop,
 * submits N tasks (at most --parallel outstanding), prints one JSON line per
 * callback and a summary line, and exits when every task is done.
 *
 *   modrun --module-json '{"name":"noop","argv":["/path/noop"],"persistent":true,
 *                          "concurrency":64,"hello_timeout_ms":2000,...}'
 *          --task-json '{"params":{...},"deadline_ms":300}'   (or an array, cycled)
 *          [--tasks N] [--parallel P] [--cancel-after-ms X] [--detach-after-ms X]
 *          [--workdir DIR] [--events all|done|none] [--log-level LEVEL]
 *          [--shutdown-grace-ms G] [--shutdown-after-ms X] [--no-shutdown]
 *
 * Either JSON may be given as @FILE. Module keys: name, argv, env (object or ["K=V"]), cwd, persistent,
 * concurrency, hello_timeout_ms, cancel_grace_ms, kill_grace_ms,
 * restart_min_ms, restart_max_ms, max_frame_bytes, log_cap_bytes,
 * pipe_buf_bytes. Task keys: params, deadline_ms (relative to submission),
 * job_id, stage, attempt, request_id, workdir, inputs, task_id (default a
 * fresh UUID), cancel_after_ms, detach_after_ms.
 *
 * After the last task, the runner is shut down gracefully (grace G, default
 * 5000 ms) and freed; --shutdown-after-ms starts that shutdown X ms after
 * the first submission instead, with tasks still running (tasks not yet
 * submitted then are counted as "refused"). --no-shutdown frees it at once.
 *
 * The summary: {"summary": true, "done", "outcomes", "fds_before",
 * "fds_after", "zombies", "children_left", "rss_start_kb", "rss_kb",
 * "maxrss_kb", "elapsed_s", "cpu_s", "tasks_per_s", "supervisor_us_per_task",
 * "spawns", "restarts", "metrics": {spawns_total, panics_total,
 * restarts_total}}. Exit status 0 when every task reached on_done (or was
 * detached), 2 on bad usage. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "core/clock.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/xmalloc.h"
#include "exec/module.h"

enum events_mode { EV_ALL, EV_DONE, EV_NONE };

struct run {
	struct event_base *base;
	struct module_runner *r;
	const char *module_name;
	json_t *tasks; /* array of task specs, cycled */
	const char *workdir;
	long ntasks, parallel, submitted, done, detached, outstanding;
	long cancel_after_ms, detach_after_ms;
	long grace_ms;
	enum events_mode events;
	json_t *outcomes;
	bool shutdown_done;
};

struct task_ctx {
	struct run *run;
	long index;
	struct module_task *t;
	struct event *timer;
	bool timer_detaches;
	char task_id[ID_UUID_LEN + 1];
	long stderr_lines;
	long long stderr_bytes;
	long frames[FRAME_NTYPES];
	long long log_message_bytes;
	char *last_stderr;
};

static void emit(json_t *o)
{
	char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
	if (s) {
		fputs(s, stdout);
		fputc('\n', stdout);
		free(s);
	}
	json_decref(o);
}

static json_t *json_or_null(const json_t *v)
{
	return v ? json_deep_copy(v) : json_null();
}

static json_t *str_or_null(const char *s)
{
	return s ? json_string(s) : json_null();
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return -1;
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1; /* the directory's own descriptor */
}

/* Children of this process: all of them, and those that are zombies. */
static void count_children(int *children, int *zombies)
{
	*children = *zombies = 0;
	DIR *d = opendir("/proc");
	if (!d)
		return;
	pid_t self = getpid();
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] < '0' || e->d_name[0] > '9')
			continue;
		char path[300], buf[512];
		snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		size_t n = fread(buf, 1, sizeof buf - 1, f);
		fclose(f);
		buf[n] = '\0';
		char *rp = strrchr(buf, ')');
		char state;
		int ppid;
		if (!rp || sscanf(rp + 1, " %c %d", &state, &ppid) != 2 || ppid != self)
			continue;
		(*children)++;
		if (state == 'Z')
			(*zombies)++;
	}
	closedir(d);
}

static long rss_kb(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	if (!f)
		return -1;
	char line[256];
	long kb = -1;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

static double cpu_seconds(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static double metric_value(enum metric_id id, const char *module)
{
	return metric_series_value(metric_series(metrics_default_get(id), METRIC_LABELS(module)));
}

static void submit_next(struct run *run);

static void ctx_free(struct task_ctx *c)
{
	if (c->timer)
		event_free(c->timer);
	free(c->last_stderr);
	free(c);
}

static void task_done(struct run *run)
{
	run->done++;
	run->outstanding--;
	if (run->submitted < run->ntasks)
		submit_next(run);
	if (run->done == run->ntasks)
		event_base_loopbreak(run->base);
}

static void on_start(struct module_task *t, pid_t pid, void *arg)
{
	struct task_ctx *c = arg;
	if (c->run->events != EV_ALL)
		return;
	emit(json_pack("{s:s, s:i, s:s, s:i}", "event", "spawn", "task", (int)c->index, "task_id",
	               c->task_id, "pid", (int)pid));
}

static void on_frame(struct module_task *t, const struct frame *f, void *arg)
{
	struct task_ctx *c = arg;
	c->frames[f->type]++;
	if (f->type == FRAME_LOG && f->u.log.message)
		c->log_message_bytes += (long long)strlen(f->u.log.message);
	if (c->run->events != EV_ALL)
		return;
	json_t *o = json_pack("{s:s, s:i, s:s}", "event", frame_type_name(f->type), "task",
	                      (int)c->index, "task_id", c->task_id);
	switch (f->type) {
	case FRAME_PROGRESS:
		json_object_set_new(o, "fraction", json_real(f->u.progress.fraction));
		json_object_set_new(o, "message", str_or_null(f->u.progress.message));
		if (f->u.progress.has_current)
			json_object_set_new(o, "current", json_integer(f->u.progress.current));
		if (f->u.progress.has_total)
			json_object_set_new(o, "total", json_integer(f->u.progress.total));
		break;
	case FRAME_LOG:
		json_object_set_new(o, "level", str_or_null(f->u.log.level));
		json_object_set_new(o, "message", str_or_null(f->u.log.message));
		json_object_set_new(o, "fields", json_or_null(f->u.log.fields));
		break;
	case FRAME_ARTIFACT:
		json_object_set_new(o, "name", str_or_null(f->u.artifact.name));
		json_object_set_new(o, "path", str_or_null(f->u.artifact.path));
		json_object_set_new(o, "type", str_or_null(f->u.artifact.type));
		json_object_set_new(o, "format", str_or_null(f->u.artifact.format));
		json_object_set_new(o, "role", str_or_null(f->u.artifact.role));
		json_object_set_new(o, "retained", json_boolean(f->u.artifact.retained));
		json_object_set_new(o, "reason", str_or_null(f->u.artifact.reason));
		json_object_set_new(o, "meta", json_or_null(f->u.artifact.meta));
		break;
	case FRAME_WARNING:
		json_object_set_new(o, "message", str_or_null(f->u.warning.message));
		json_object_set_new(o, "detail", json_or_null(f->u.warning.detail));
		break;
	default: break;
	}
	emit(o);
}

static void on_stderr_line(struct module_task *t, const char *line, size_t len, void *arg)
{
	struct task_ctx *c = arg;
	c->stderr_lines++;
	c->stderr_bytes += (long long)len;
	free(c->last_stderr);
	c->last_stderr = xstrndup(line, len);
	if (c->run->events != EV_ALL)
		return;
	emit(json_pack("{s:s, s:i, s:s, s:s%}", "event", "stderr", "task", (int)c->index, "task_id",
	               c->task_id, "line", line, len));
}

static void on_done(struct module_task *t, const struct module_task_result *res, void *arg)
{
	struct task_ctx *c = arg;
	struct run *run = c->run;
	const char *name = module_outcome_name(res->outcome);
	json_t *n = json_object_get(run->outcomes, name);
	json_object_set_new(run->outcomes, name, json_integer(n ? json_integer_value(n) + 1 : 1));
	if (run->events != EV_NONE) {
		json_t *o = json_pack(
		        "{s:s, s:i, s:s, s:s, s:b, s:s, s:i, s:i, s:i, s:f, s:I, s:f, s:f, s:f, "
		        "s:I, "
		        "s:i, s:I}",
		        "event", "done", "task", (int)c->index, "task_id", c->task_id, "outcome",
		        name, "retryable", res->retryable, "message",
		        res->message ? res->message : "", "pid", (int)res->pid, "exit_code",
		        res->exit_code, "signal", res->term_signal, "cpu_seconds", res->cpu_seconds,
		        "max_rss_bytes", (json_int_t)res->max_rss_bytes, "queued_ms",
		        res->queued_ms, "spawn_to_hello_ms", res->spawn_to_hello_ms,
		        "hello_to_done_ms", res->hello_to_done_ms, "log_bytes_dropped",
		        (json_int_t)res->log_bytes_dropped, "stderr_lines", (int)c->stderr_lines,
		        "stderr_bytes", (json_int_t)c->stderr_bytes);
		json_object_set_new(o, "last_stderr", str_or_null(c->last_stderr));
		json_t *fr = json_object();
		for (int k = 0; k < FRAME_NTYPES; k++)
			if (c->frames[k])
				json_object_set_new(fr, frame_type_name((enum frame_type)k),
				                    json_integer(c->frames[k]));
		json_object_set_new(o, "frames", fr);
		json_object_set_new(o, "log_message_bytes", json_integer(c->log_message_bytes));
		json_object_set_new(o, "output", json_or_null(res->output));
		json_object_set_new(o, "module_resources", json_or_null(res->module_resources));
		if (res->outcome == MODULE_ERROR) {
			json_object_set_new(o, "error_code", str_or_null(res->error_code));
			json_object_set_new(o, "category",
			                    json_string(frame_category_name(res->category)));
			json_object_set_new(o, "detail", json_or_null(res->detail));
		}
		emit(o);
	}
	ctx_free(c);
	task_done(run);
}

static void task_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct task_ctx *c = arg;
	if (!c->timer_detaches) {
		module_task_cancel(c->t, "job_cancelled");
		return;
	}
	struct run *run = c->run;
	module_task_detach(c->t);
	if (run->events != EV_NONE)
		emit(json_pack("{s:s, s:i, s:s}", "event", "detached", "task", (int)c->index,
		               "task_id", c->task_id));
	json_t *n = json_object_get(run->outcomes, "detached");
	json_object_set_new(run->outcomes, "detached",
	                    json_integer(n ? json_integer_value(n) + 1 : 1));
	run->detached++;
	ctx_free(c);
	task_done(run);
}

static const char *jstr(const json_t *o, const char *key, const char *dflt)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s ? s : dflt;
}

static long long jint(const json_t *o, const char *key, long long dflt)
{
	const json_t *v = json_object_get(o, key);
	return json_is_integer(v) ? json_integer_value(v) : dflt;
}

static void submit_next(struct run *run)
{
	long i = run->submitted++;
	const json_t *spec = json_array_get(run->tasks, (size_t)i % json_array_size(run->tasks));
	struct task_ctx *c = xcalloc(1, sizeof *c);
	c->run = run;
	c->index = i;
	const char *tid = jstr(spec, "task_id", NULL);
	if (tid)
		snprintf(c->task_id, sizeof c->task_id, "%s", tid);
	else
		id_uuid7_fast(c->task_id);

	const json_t *jinputs = json_object_get(spec, "inputs");
	size_t ninputs = json_array_size(jinputs);
	struct frame_input *inputs = ninputs ? xcalloc(ninputs, sizeof *inputs) : NULL;
	for (size_t k = 0; k < ninputs; k++) {
		const json_t *in = json_array_get(jinputs, k);
		inputs[k].name = (char *)jstr(in, "name", "");
		inputs[k].type = (char *)jstr(in, "type", "");
		inputs[k].path = (char *)jstr(in, "path", "");
		inputs[k].format = (char *)jstr(in, "format", NULL);
		inputs[k].size_bytes = jint(in, "size_bytes", 0);
	}
	long long rel = jint(spec, "deadline_ms", 0);
	struct module_task_spec ts = {
	        .task_id = c->task_id,
	        .job_id = jstr(spec, "job_id", "00000000-0000-7000-8000-000000000000"),
	        .stage = jstr(spec, "stage", "stage"),
	        .request_id = jstr(spec, "request_id", "modrun"),
	        .workdir = jstr(spec, "workdir", run->workdir),
	        .attempt = (int)jint(spec, "attempt", 1),
	        .params = json_object_get(spec, "params"),
	        .inputs = inputs,
	        .ninputs = ninputs,
	        .deadline_ms = rel > 0 ? clock_now_us() / 1000 + rel : 0,
	};
	static const struct module_task_cbs cbs = {
	        .on_start = on_start,
	        .on_frame = on_frame,
	        .on_stderr_line = on_stderr_line,
	        .on_done = on_done,
	};
	c->t = module_runner_submit(run->r, &ts, &cbs, c);
	free(inputs);
	run->outstanding++;
	if (!c->t) {
		fprintf(stderr, "modrun: submit %ld refused\n", i);
		json_t *n = json_object_get(run->outcomes, "refused");
		json_object_set_new(run->outcomes, "refused",
		                    json_integer(n ? json_integer_value(n) + 1 : 1));
		ctx_free(c);
		task_done(run);
		return;
	}
	long cancel_ms = (long)jint(spec, "cancel_after_ms", run->cancel_after_ms);
	long detach_ms = (long)jint(spec, "detach_after_ms", run->detach_after_ms);
	if (cancel_ms >= 0 || detach_ms >= 0) {
		c->timer_detaches = detach_ms >= 0;
		long ms = c->timer_detaches ? detach_ms : cancel_ms;
		c->timer = evtimer_new(run->base, task_timer_cb, c);
		struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
		evtimer_add(c->timer, &tv);
	}
}

static void on_persistent_stderr(struct module_runner *r, pid_t pid, const char *line, size_t len,
                                 void *arg)
{
	struct run *run = arg;
	if (run->events != EV_ALL)
		return;
	emit(json_pack("{s:s, s:n, s:i, s:s%}", "event", "stderr", "task", "pid", (int)pid, "line",
	               line, len));
}

static void on_shutdown(struct module_runner *r, void *arg)
{
	struct run *run = arg;
	run->shutdown_done = true;
	event_base_loopbreak(run->base);
}

static void shutdown_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct run *run = arg;
	module_runner_shutdown(run->r, (unsigned)run->grace_ms, on_shutdown, run);
}

static char **json_strv(const json_t *a, bool env)
{
	size_t n = json_is_array(a)    ? json_array_size(a)
	           : json_is_object(a) ? json_object_size(a)
	                               : 0;
	char **v = xcalloc(n + 1, sizeof *v);
	size_t i = 0;
	if (json_is_array(a)) {
		const json_t *e;
		size_t k;
		json_array_foreach(a, k, e)
		{
			if (json_is_string(e))
				v[i++] = xstrdup(json_string_value(e));
		}
	} else if (env && json_is_object(a)) {
		const char *key;
		const json_t *e;
		json_object_foreach((json_t *)a, key, e)
		{
			if (json_is_string(e))
				v[i++] = xasprintf("%s=%s", key, json_string_value(e));
		}
	}
	return v;
}

static void strv_free(char **v)
{
	for (char **s = v; s && *s; s++)
		free(*s);
	free(v);
}

static void usage(void)
{
	fprintf(stderr,
	        "usage: modrun --module-json JSON --task-json JSON [--tasks N] [--parallel P]\n"
	        "              [--cancel-after-ms X] [--detach-after-ms X] [--workdir DIR]\n"
	        "              [--events all|done|none] [--log-level L]\n"
	        "              [--shutdown-grace-ms G] [--no-shutdown]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *module_json = NULL, *task_json = NULL, *workdir = NULL, *level = "warn";
	long ntasks = 1, parallel = 1024, cancel_after = -1, detach_after = -1, grace = 5000;
	long shutdown_after = -1;
	bool no_shutdown = false;
	enum events_mode events = EV_ALL;
	static const struct option opts[] = {
	        {"module-json", required_argument, NULL, 'm'},
	        {"task-json", required_argument, NULL, 't'},
	        {"tasks", required_argument, NULL, 'n'},
	        {"parallel", required_argument, NULL, 'p'},
	        {"cancel-after-ms", required_argument, NULL, 'c'},
	        {"detach-after-ms", required_argument, NULL, 'd'},
	        {"workdir", required_argument, NULL, 'w'},
	        {"events", required_argument, NULL, 'e'},
	        {"log-level", required_argument, NULL, 'l'},
	        {"shutdown-grace-ms", required_argument, NULL, 'g'},
	        {"no-shutdown", no_argument, NULL, 'S'},
	        {"shutdown-after-ms", required_argument, NULL, 's'},
	        {NULL, 0, NULL, 0},
	};
	int ch;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 'm': module_json = optarg; break;
		case 't': task_json = optarg; break;
		case 'n': ntasks = atol(optarg); break;
		case 'p': parallel = atol(optarg); break;
		case 'c': cancel_after = atol(optarg); break;
		case 'd': detach_after = atol(optarg); break;
		case 'w': workdir = optarg; break;
		case 'e':
			if (strcmp(optarg, "all") == 0)
				events = EV_ALL;
			else if (strcmp(optarg, "done") == 0)
				events = EV_DONE;
			else if (strcmp(optarg, "none") == 0)
				events = EV_NONE;
			else
				usage();
			break;
		case 'l': level = optarg; break;
		case 'g': grace = atol(optarg); break;
		case 'S': no_shutdown = true; break;
		case 's': shutdown_after = atol(optarg); break;
		default: usage();
		}
	}
	if (!module_json || !task_json || ntasks < 1 || parallel < 1)
		usage();
	signal(SIGPIPE, SIG_IGN);
	enum log_level lvl;
	if (!log_level_parse(level, &lvl) || !log_open(NULL, LOG_FMT_JSON, lvl))
		usage();

	json_error_t jerr;
	json_t *mod = module_json[0] == '@' ? json_load_file(module_json + 1, 0, &jerr)
	                                    : json_loads(module_json, 0, &jerr);
	json_t *tasks = task_json[0] == '@' ? json_load_file(task_json + 1, 0, &jerr)
	                                    : json_loads(task_json, 0, &jerr);
	if (!json_is_object(mod) || !(json_is_object(tasks) || json_is_array(tasks))) {
		fprintf(stderr, "modrun: bad --module-json or --task-json\n");
		return 2;
	}
	if (json_is_object(tasks)) {
		json_t *a = json_array();
		json_array_append_new(a, tasks);
		tasks = a;
	}
	if (json_array_size(tasks) == 0)
		usage();

	char *cwd = getcwd(NULL, 0);
	struct run run = {
	        .module_name = jstr(mod, "name", "module"),
	        .tasks = tasks,
	        .workdir = workdir ? workdir : cwd,
	        .ntasks = ntasks,
	        .parallel = parallel,
	        .cancel_after_ms = cancel_after,
	        .detach_after_ms = detach_after,
	        .events = events,
	        .grace_ms = grace,
	        .outcomes = json_object(),
	};
	char **margv = json_strv(json_object_get(mod, "argv"), false);
	char **menv = json_strv(json_object_get(mod, "env"), true);
	struct module_runner_def def = {
	        .name = run.module_name,
	        .argv = (const char *const *)margv,
	        .env = (const char *const *)menv,
	        .cwd = jstr(mod, "cwd", NULL),
	        .persistent = json_is_true(json_object_get(mod, "persistent")),
	        .concurrency = (unsigned)jint(mod, "concurrency", 1),
	        .hello_timeout_ms = (unsigned)jint(mod, "hello_timeout_ms", 0),
	        .cancel_grace_ms = (unsigned)jint(mod, "cancel_grace_ms", 0),
	        .kill_grace_ms = (unsigned)jint(mod, "kill_grace_ms", 0),
	        .restart_min_ms = (unsigned)jint(mod, "restart_min_ms", 0),
	        .restart_max_ms = (unsigned)jint(mod, "restart_max_ms", 0),
	        .limits = {.max_bytes = (size_t)jint(mod, "max_frame_bytes", 0)},
	        .log_cap_bytes = (size_t)jint(mod, "log_cap_bytes", 0),
	        .pipe_buf_bytes = (size_t)jint(mod, "pipe_buf_bytes", 0),
	};

	run.base = event_base_new();
	long rss_start = rss_kb();
	int fds_before = count_fds();
	run.r = module_runner_new(run.base, &def);
	if (!run.r) {
		fprintf(stderr, "modrun: bad module definition\n");
		return 2;
	}
	module_runner_set_stderr_cb(run.r, on_persistent_stderr, &run);

	struct event *shutdown_timer = NULL;
	if (shutdown_after >= 0) {
		shutdown_timer = evtimer_new(run.base, shutdown_timer_cb, &run);
		struct timeval tv = {.tv_sec = shutdown_after / 1000,
		                     .tv_usec = (shutdown_after % 1000) * 1000};
		evtimer_add(shutdown_timer, &tv);
	}
	double cpu0 = cpu_seconds();
	int64_t t0 = clock_mono_us();
	while (run.submitted < run.ntasks && run.outstanding < run.parallel)
		submit_next(&run);
	if (run.done < run.ntasks)
		event_base_dispatch(run.base);
	int64_t t1 = clock_mono_us();
	double cpu1 = cpu_seconds();

	if (shutdown_timer)
		event_free(shutdown_timer);
	if (!no_shutdown) {
		module_runner_shutdown(run.r, (unsigned)grace, on_shutdown, &run);
		if (!run.shutdown_done)
			event_base_dispatch(run.base);
	}
	uint64_t spawns = module_runner_spawns(run.r);
	uint64_t restarts = module_runner_restarts(run.r);
	module_runner_free(run.r);
	int fds_after = count_fds();
	int children, zombies;
	count_children(&children, &zombies);

	double elapsed = (double)(t1 - t0) / 1e6;
	double cpu = cpu1 - cpu0;
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	json_t *sum = json_pack(
	        "{s:b, s:i, s:O, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:f, s:f, s:I, s:I, "
	        "s:{s:f, s:f, s:f}}",
	        "summary", 1, "done", (int)run.done, "outcomes", run.outcomes, "fds_before",
	        fds_before, "fds_after", fds_after, "zombies", zombies, "children_left", children,
	        "rss_start_kb", (int)rss_start, "rss_kb", (int)rss_kb(), "maxrss_kb",
	        (int)ru.ru_maxrss, "elapsed_s", elapsed, "cpu_s", cpu, "tasks_per_s",
	        elapsed > 0 ? (double)run.done / elapsed : 0.0, "supervisor_us_per_task",
	        run.done ? cpu * 1e6 / (double)run.done : 0.0, "spawns", (json_int_t)spawns,
	        "restarts", (json_int_t)restarts, "metrics", "spawns_total",
	        metric_value(M_MODULES_SPAWNS_TOTAL, run.module_name), "panics_total",
	        metric_value(M_MODULES_PANICS_TOTAL, run.module_name), "restarts_total",
	        metric_value(M_MODULES_RESTARTS_TOTAL, run.module_name));
	emit(sum);
	fflush(stdout);

	event_base_free(run.base);
	json_decref(run.outcomes);
	json_decref(tasks);
	json_decref(mod);
	strv_free(margv);
	strv_free(menv);
	free(cwd);
	metrics_default_free();
	log_close();
	return run.done == run.ntasks ? 0 : 1;
}
