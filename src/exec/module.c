/* The worker-module supervisor: spawns module processes, speaks the frame
 * protocol over their pipes, enforces the timeouts and limits, and turns
 * what happened into one outcome per task. Every libevent callback is
 * bracketed by runner_enter()/runner_leave(); the outermost leave is the
 * safe point where finished tasks are announced, queued tasks dispatched and
 * dead objects freed, so no callback ever touches freed memory and no
 * callback fires from inside an API call (module.h states the contract). */
#include "exec/module.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "core/clock.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/trace.h"
#include "core/xmalloc.h"

/* Reads are chunked and budgeted per loop pass (memcached's reqs_per_event)
 * so one flooding module cannot starve the loop. */
#define MODULE_READ_CHUNK (64 * 1024)
#define MODULE_READ_BUDGET (256 * 1024)
#define MODULE_FRAMES_PER_PASS 4096
#define MODULE_MAX_LINE (64 * 1024)
/* module_runner_free() waits this long at most for SIGKILLed processes. */
#define MODULE_FREE_REAP_US (1000 * 1000)

enum task_answer { ANSWER_NONE, ANSWER_RESULT, ANSWER_ERROR };
enum task_stop { STOP_NONE, STOP_DEADLINE, STOP_CANCEL };
/* How far the kill escalation of a process has gone. */
enum kill_level {
	KILL_NONE,
	KILL_LINGER, /* SIGTERM is scheduled */
	KILL_TERM, /* SIGTERM sent (or the leader exited): SIGKILL next */
	KILL_KILL, /* SIGKILL sent: force-closing the pipes next */
	KILL_CLOSED, /* pipes force-closed: only the exit is awaited */
};

struct module_proc;

struct module_task {
	struct module_runner *r;
	struct module_proc *p; /* NULL while queued (and after a failed spawn) */
	TAILQ_ENTRY(module_task) link; /* r->queue, p->tasks, r->finishing or r->dead */
	enum module_task_state state;

	char *task_id, *job_id, *stage, *workdir, *request_id;
	int attempt;
	struct buf frame; /* the encoded task frame, until sent */
	int64_t deadline_ms;
	struct event *deadline_ev;
	struct event *grace_ev; /* persistent: the cancel's answer is due */

	struct module_task_cbs cbs;
	void *arg;
	bool detached;

	enum task_stop stop;
	char *stop_reason;
	enum task_answer answer;
	json_t *output, *resources;
	char *err_message, *err_code;
	enum frame_category err_category;
	bool err_retryable;
	json_t *err_detail;
	char *panic_reason; /* set when no process could be started */

	uint64_t log_bytes, log_dropped;
	bool log_truncated;

	int64_t submit_us, start_us, sent_us;
	struct trace_span *span;
};

TAILQ_HEAD(task_list, module_task);

struct module_proc {
	struct module_runner *r;
	TAILQ_ENTRY(module_proc) link; /* r->procs or r->dead_procs */
	enum module_proc_state state;
	pid_t pid;

	int fd_in, fd_out, fd_err;
	struct event *ev_in, *ev_out, *ev_err, *ev_more, *hello_ev, *kill_ev;
	bool reading; /* ev_out is added */
	bool writing; /* ev_in is added */

	struct buf in; /* stdout bytes; undecoded from in_off */
	size_t in_off;
	bool out_eof; /* read() said EOF (frames may still wait in `in`) */
	struct buf err; /* a partial stderr line */
	struct buf out; /* frames for stdin; unwritten from out_off */
	size_t out_off;
	bool close_in_pending;

	bool got_hello;
	bool was_ready; /* reached READY (persistent: served or could serve) */
	unsigned cap; /* persistent: in-flight tasks at most */
	bool exited, reaped;
	int exit_code, term_signal;
	struct rusage ru;
	enum kill_level kill_level;
	int64_t term_at_us; /* KILL_LINGER: when SIGTERM goes */
	bool discard; /* after a violation: drain stdout unread */
	char *violation; /* the protocol error that ended it */
	char engine_id[160]; /* module@version from the hello */
	char *kill_reason; /* why we stopped it (hello timeout, stuck cancel) */
	int64_t spawn_us, hello_us;
	uint64_t stderr_bytes; /* persistent default stderr logging cap */
	bool stderr_truncated;

	struct task_list tasks;
	size_t ntasks;
};

TAILQ_HEAD(proc_list, module_proc);

struct module_runner {
	struct event_base *base;
	char *name;
	char *path; /* argv[0] resolved */
	char **argv;
	char **env; /* the def's env, STAGELINE_* dropped */
	char *cwd, *home;
	bool persistent;
	unsigned concurrency, hello_timeout_ms, cancel_grace_ms, kill_grace_ms;
	unsigned restart_min_ms, restart_max_ms;
	struct frame_limits limits;
	size_t log_cap, pipe_cap;

	struct event *sigchld_ev, *defer_ev, *restart_ev, *shutdown_ev;
	struct task_list queue, finishing, dead;
	struct proc_list procs, dead_procs;
	size_t nqueued, nrunning, nprocs;

	struct module_proc *pproc; /* persistent: the process taking new tasks */
	unsigned restart_attempt;
	int64_t next_spawn_us; /* persistent: not before (monotonic) */
	bool restart_armed;
	uint64_t spawns, restarts;
	uint32_t rnd;

	bool shutting_down, shutdown_notified, shutdown_graced;
	void (*shutdown_cb)(struct module_runner *r, void *arg);
	void *shutdown_arg;

	void (*stderr_cb)(struct module_runner *r, pid_t pid, const char *line, size_t len,
	                  void *arg);
	void *stderr_arg;

	int depth;
	bool free_pending;
};

static void runner_leave(struct module_runner *r);
static void proc_flush_soon(struct module_proc *p);
static void proc_close_stdin(struct module_proc *p);
static void proc_terminate(struct module_proc *p, unsigned delay_ms);
static void proc_kill_now(struct module_proc *p);
static void proc_check_done(struct module_proc *p);
static void proc_decode(struct module_proc *p);
static enum module_outcome task_finish(struct module_task *t);

static void runner_enter(struct module_runner *r)
{
	r->depth++;
}

/* Names and state machines. ------------------------------------------------ */

const char *module_outcome_name(enum module_outcome o)
{
	switch (o) {
	case MODULE_COMPLETE: return "complete";
	case MODULE_ERROR: return "error";
	case MODULE_PANIC: return "panic";
	case MODULE_TIMEOUT: return "timeout";
	case MODULE_CANCELLED: return "cancelled";
	}
	return "?";
}

const char *module_task_state_name(enum module_task_state s)
{
	static const char *const names[] = {
	        [MODULE_TASK_QUEUED] = "queued",   [MODULE_TASK_STARTING] = "starting",
	        [MODULE_TASK_RUNNING] = "running", [MODULE_TASK_ANSWERED] = "answered",
	        [MODULE_TASK_DONE] = "done",
	};
	return (unsigned)s < MODULE_TASK_NSTATES ? names[s] : "?";
}

const char *module_proc_state_name(enum module_proc_state s)
{
	static const char *const names[] = {
	        [MODULE_PROC_STARTING] = "starting", [MODULE_PROC_READY] = "ready",
	        [MODULE_PROC_DRAINING] = "draining", [MODULE_PROC_KILLING] = "killing",
	        [MODULE_PROC_DEAD] = "dead",
	};
	return (unsigned)s < MODULE_PROC_NSTATES ? names[s] : "?";
}

bool module_task_state_allowed(enum module_task_state from, enum module_task_state to)
{
	static const bool edges[MODULE_TASK_NSTATES][MODULE_TASK_NSTATES] = {
	        [MODULE_TASK_QUEUED] = {[MODULE_TASK_STARTING] = true,
	                                [MODULE_TASK_RUNNING] = true,
	                                [MODULE_TASK_DONE] = true},
	        [MODULE_TASK_STARTING] = {[MODULE_TASK_RUNNING] = true, [MODULE_TASK_DONE] = true},
	        [MODULE_TASK_RUNNING] = {[MODULE_TASK_ANSWERED] = true, [MODULE_TASK_DONE] = true},
	        [MODULE_TASK_ANSWERED] = {[MODULE_TASK_DONE] = true},
	};
	if ((unsigned)from >= MODULE_TASK_NSTATES || (unsigned)to >= MODULE_TASK_NSTATES)
		return false;
	return edges[from][to];
}

bool module_proc_state_allowed(enum module_proc_state from, enum module_proc_state to)
{
	static const bool edges[MODULE_PROC_NSTATES][MODULE_PROC_NSTATES] = {
	        [MODULE_PROC_STARTING] = {[MODULE_PROC_READY] = true,
	                                  [MODULE_PROC_DRAINING] = true,
	                                  [MODULE_PROC_KILLING] = true,
	                                  [MODULE_PROC_DEAD] = true},
	        [MODULE_PROC_READY] = {[MODULE_PROC_DRAINING] = true,
	                               [MODULE_PROC_KILLING] = true,
	                               [MODULE_PROC_DEAD] = true},
	        [MODULE_PROC_DRAINING] = {[MODULE_PROC_KILLING] = true, [MODULE_PROC_DEAD] = true},
	        [MODULE_PROC_KILLING] = {[MODULE_PROC_DEAD] = true},
	};
	if ((unsigned)from >= MODULE_PROC_NSTATES || (unsigned)to >= MODULE_PROC_NSTATES)
		return false;
	return edges[from][to];
}

static void task_set_state(struct module_task *t, enum module_task_state to)
{
	enum module_task_state from = t->state;
	if (from == to)
		return;
	if (!module_task_state_allowed(from, to))
		log_error("module.task.state", "invalid task state transition",
		          LF_STR("module", t->r->name), LF_STR("task_id", t->task_id),
		          LF_STR("from", module_task_state_name(from)),
		          LF_STR("to", module_task_state_name(to)));
	log_debug("module.task.state", "task state change", LF_STR("module", t->r->name),
	          LF_STR("task_id", t->task_id), LF_STR("from", module_task_state_name(from)),
	          LF_STR("to", module_task_state_name(to)));
	t->state = to;
}

static void proc_set_state(struct module_proc *p, enum module_proc_state to)
{
	enum module_proc_state from = p->state;
	if (from == to)
		return;
	if (!module_proc_state_allowed(from, to))
		log_error("module.proc.state", "invalid process state transition",
		          LF_STR("module", p->r->name), LF_INT("pid", p->pid),
		          LF_STR("from", module_proc_state_name(from)),
		          LF_STR("to", module_proc_state_name(to)));
	log_debug("module.proc.state", "process state change", LF_STR("module", p->r->name),
	          LF_INT("pid", p->pid), LF_STR("from", module_proc_state_name(from)),
	          LF_STR("to", module_proc_state_name(to)));
	p->state = to;
}

unsigned module_backoff_ms(unsigned min_ms, unsigned max_ms, unsigned attempt, uint32_t rnd)
{
	if (max_ms < min_ms)
		max_ms = min_ms;
	uint64_t hi = min_ms;
	for (unsigned i = 0; i <= attempt && hi < max_ms; i++)
		hi *= 2;
	if (hi > max_ms)
		hi = max_ms;
	uint64_t span = hi - min_ms + 1;
	return (unsigned)(min_ms + rnd % span);
}

/* Small helpers. ----------------------------------------------------------- */

static uint32_t runner_rand(struct module_runner *r)
{
	/* xorshift32: jitter only, seeded from the kernel. */
	uint32_t x = r->rnd;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return r->rnd = x;
}

static void fmt_ms(char *out, size_t size, unsigned ms)
{
	if (ms % 1000 == 0)
		snprintf(out, size, "%us", ms / 1000);
	else
		snprintf(out, size, "%ums", ms);
}

static struct timeval tv_ms(int64_t ms)
{
	if (ms < 0)
		ms = 0;
	return (struct timeval){.tv_sec = (time_t)(ms / 1000),
	                        .tv_usec = (suseconds_t)(ms % 1000) * 1000};
}

static char *xstrdup_or_empty(const char *s)
{
	return xstrdup(s ? s : "");
}

static void close_fd(int *fd)
{
	if (*fd >= 0) {
		close(*fd);
		*fd = -1;
	}
}

/* Pipe ends must not be 0..2 (when the daemon runs with a closed stdio),
 * or the child's dup2s onto 0, 1, 2 would clobber one another. */
static bool fd_above_stdio(int *fd)
{
	if (*fd > 2)
		return true;
	int nfd = fcntl(*fd, F_DUPFD_CLOEXEC, 3);
	if (nfd < 0)
		return false;
	close(*fd);
	*fd = nfd;
	return true;
}

static bool fd_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	return fl >= 0 && fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0;
}

static void runner_kick(struct module_runner *r)
{
	/* Inside one of our callbacks the outermost leave does the work. */
	if (r->depth == 0 && !r->free_pending)
		event_active(r->defer_ev, EV_TIMEOUT, 0);
}

/* The environment: "NAME=value" strings, later ones replacing earlier ones
 * of the same name. */
struct envv {
	char **v;
	size_t n, cap;
};

static void env_put(struct envv *e, char *kv)
{
	const char *eq = strchr(kv, '=');
	size_t nlen = eq ? (size_t)(eq - kv) : strlen(kv);
	for (size_t i = 0; i < e->n; i++) {
		if (strncmp(e->v[i], kv, nlen) == 0 && e->v[i][nlen] == '=') {
			free(e->v[i]);
			e->v[i] = kv;
			return;
		}
	}
	if (e->n + 2 > e->cap) {
		e->cap = e->cap ? e->cap * 2 : 16;
		e->v = xrealloc(e->v, e->cap * sizeof *e->v);
	}
	e->v[e->n++] = kv;
	e->v[e->n] = NULL;
}

static char **runner_build_env(const struct module_runner *r, const struct module_task *t)
{
	struct envv e = {0};
	env_put(&e, xstrdup("PATH=" MODULE_ENV_PATH));
	env_put(&e, xstrdup("LANG=C.UTF-8"));
	env_put(&e, xasprintf("HOME=%s", t ? t->workdir : r->home));
	for (char **kv = r->env; kv && *kv; kv++)
		env_put(&e, xstrdup(*kv));
	if (t) {
		env_put(&e, xasprintf("STAGELINE_JOB_ID=%s", t->job_id));
		env_put(&e, xasprintf("STAGELINE_TASK_ID=%s", t->task_id));
		env_put(&e, xasprintf("STAGELINE_STAGE=%s", t->stage));
		env_put(&e, xasprintf("STAGELINE_ATTEMPT=%d", t->attempt));
		env_put(&e, xasprintf("STAGELINE_WORKDIR=%s", t->workdir));
		env_put(&e, xasprintf("STAGELINE_REQUEST_ID=%s", t->request_id));
	}
	env_put(&e, xstrdup("STAGELINE_PROTOCOL=1"));
	return e.v;
}

static void strv_free(char **v)
{
	for (char **s = v; s && *s; s++)
		free(*s);
	free(v);
}

static char **strv_copy(const char *const *v, bool drop_reserved)
{
	size_t n = 0;
	for (const char *const *s = v; s && *s; s++)
		n++;
	char **out = xcalloc(n + 1, sizeof *out);
	size_t j = 0;
	for (size_t i = 0; i < n; i++) {
		if (drop_reserved && strncmp(v[i], "STAGELINE_", 10) == 0)
			continue;
		out[j++] = xstrdup(v[i]);
	}
	return out;
}

/* argv[0] without a '/' is looked up in the module's PATH, once; a relative
 * one with a '/' is made absolute against our cwd, since the child changes
 * to the task's workdir before exec. */
static char *resolve_path(const char *name, char **env)
{
	if (name[0] == '/')
		return xstrdup(name);
	if (strchr(name, '/')) {
		char *cwd = getcwd(NULL, 0);
		char *abs = cwd ? xasprintf("%s/%s", cwd, name) : xstrdup(name);
		free(cwd);
		return abs;
	}
	const char *path = MODULE_ENV_PATH;
	for (char **kv = env; kv && *kv; kv++)
		if (strncmp(*kv, "PATH=", 5) == 0)
			path = *kv + 5;
	const char *s = path;
	while (*s) {
		const char *colon = strchr(s, ':');
		size_t n = colon ? (size_t)(colon - s) : strlen(s);
		if (n > 0) {
			char *cand = xasprintf("%.*s/%s", (int)n, s, name);
			if (access(cand, X_OK) == 0)
				return cand;
			free(cand);
		}
		s += n;
		if (*s == ':')
			s++;
	}
	return xstrdup(name);
}

/* Tasks. -------------------------------------------------------------------- */

static void task_free(struct module_task *t)
{
	if (t->deadline_ev)
		event_free(t->deadline_ev);
	if (t->grace_ev)
		event_free(t->grace_ev);
	trace_span_end(t->span, "dropped");
	buf_free(&t->frame);
	json_decref(t->output);
	json_decref(t->resources);
	json_decref(t->err_detail);
	free(t->task_id);
	free(t->job_id);
	free(t->stage);
	free(t->workdir);
	free(t->request_id);
	free(t->stop_reason);
	free(t->err_message);
	free(t->err_code);
	free(t->panic_reason);
	free(t);
}

static void task_deliver_stderr(struct module_task *t, const char *line, size_t len)
{
	struct module_runner *r = t->r;
	if (t->log_truncated || t->log_bytes + len > r->log_cap) {
		t->log_truncated = true;
		t->log_dropped += len;
		return;
	}
	t->log_bytes += len;
	if (!t->detached && t->cbs.on_stderr_line)
		t->cbs.on_stderr_line(t, line, len, t->arg);
}

/* Why a process ended, for a panic message. */
static void proc_describe_end(const struct module_proc *p, char *out, size_t size)
{
	if (p->kill_reason)
		snprintf(out, size, "%s", p->kill_reason);
	else if (!p->exited)
		snprintf(out, size, "module did not start");
	else if (p->term_signal) {
		const char *abbrev = sigabbrev_np(p->term_signal);
		snprintf(out, size, "module killed by SIG%s (signal %d) %s", abbrev ? abbrev : "?",
		         p->term_signal, p->got_hello ? "without a result" : "before its hello");
	} else
		snprintf(out, size, "module exited with code %d %s", p->exit_code,
		         p->got_hello ? "without a result" : "before its hello");
}

/* Announces the end (on_done) and parks t on the dead list. t is on no list
 * when called. Returns the outcome. */
static enum module_outcome task_finish(struct module_task *t)
{
	struct module_runner *r = t->r;
	struct module_proc *p = t->p;
	char why[256];

	if (t->state == MODULE_TASK_STARTING || t->state == MODULE_TASK_RUNNING ||
	    t->state == MODULE_TASK_ANSWERED)
		r->nrunning--;
	if (t->deadline_ev)
		event_del(t->deadline_ev);
	if (t->grace_ev)
		event_del(t->grace_ev);
	task_set_state(t, MODULE_TASK_DONE);

	struct module_task_result res = {
	        .message = "",
	        .exit_code = -1,
	        .queued_ms = -1,
	        .spawn_to_hello_ms = -1,
	        .hello_to_done_ms = -1,
	        .engine_id = p ? p->engine_id : "",
	};
	int64_t now = clock_mono_us();
	if (t->start_us)
		res.queued_ms = (double)(t->start_us - t->submit_us) / 1000.0;
	if (t->sent_us)
		res.hello_to_done_ms = (double)(now - t->sent_us) / 1000.0;
	if (p) {
		res.pid = p->pid;
		if (p->hello_us)
			res.spawn_to_hello_ms = (double)(p->hello_us - p->spawn_us) / 1000.0;
		if (p->exited) {
			res.exit_code = p->term_signal ? -1 : p->exit_code;
			res.term_signal = p->term_signal;
		}
		if (p->reaped && !r->persistent) {
			res.cpu_seconds = (double)p->ru.ru_utime.tv_sec +
			                  (double)p->ru.ru_utime.tv_usec / 1e6 +
			                  (double)p->ru.ru_stime.tv_sec +
			                  (double)p->ru.ru_stime.tv_usec / 1e6;
			res.max_rss_bytes = (int64_t)p->ru.ru_maxrss * 1024;
		}
	}
	res.log_bytes_dropped = t->log_dropped;

	if (p && p->violation) {
		res.protocol_error = true;
		res.outcome = MODULE_PANIC;
		res.retryable = true;
		res.message = p->violation;
	} else if (t->answer == ANSWER_RESULT) {
		res.outcome = MODULE_COMPLETE;
		res.output = t->output;
		res.module_resources = t->resources;
	} else if (t->stop == STOP_DEADLINE) {
		res.outcome = MODULE_TIMEOUT;
		res.retryable = true;
		res.message = "deadline passed";
	} else if (t->stop == STOP_CANCEL) {
		res.outcome = MODULE_CANCELLED;
		res.message = t->stop_reason;
	} else if (t->answer == ANSWER_ERROR) {
		res.outcome = MODULE_ERROR;
		res.retryable = t->err_retryable;
		res.message = t->err_message;
		res.error_code = t->err_code;
		res.category = t->err_category;
		res.detail = t->err_detail;
	} else {
		res.outcome = MODULE_PANIC;
		res.retryable = true;
		if (t->panic_reason)
			res.message = t->panic_reason;
		else if (p) {
			proc_describe_end(p, why, sizeof why);
			res.message = why;
		} else
			res.message = "module did not start";
	}

	trace_span_end(t->span,
	               res.outcome == MODULE_COMPLETE ? NULL : module_outcome_name(res.outcome));
	t->span = NULL;
	log_debug("module.task.done", "task ended", LF_STR("module", r->name),
	          LF_STR("task_id", t->task_id), LF_INT("pid", res.pid),
	          LF_STR("outcome", module_outcome_name(res.outcome)),
	          LF_PII("message", res.message));

	if (!t->detached && !r->free_pending) {
		if (t->log_dropped && t->cbs.on_stderr_line) {
			char marker[96];
			int n = snprintf(marker, sizeof marker,
			                 "[stage.log truncated: %llu bytes dropped]",
			                 (unsigned long long)t->log_dropped);
			t->cbs.on_stderr_line(t, marker, (size_t)n, t->arg);
		}
		if (!r->free_pending && !t->detached && t->cbs.on_done)
			t->cbs.on_done(t, &res, t->arg);
	}
	TAILQ_INSERT_TAIL(&r->dead, t, link);
	return res.outcome;
}

static void task_grace_cb(evutil_socket_t fd, short what, void *arg);

/* Cancel or deadline: the escalation for t's current state. */
static void task_stop_now(struct module_task *t)
{
	struct module_runner *r = t->r;
	struct module_proc *p = t->p;
	switch (t->state) {
	case MODULE_TASK_QUEUED:
		TAILQ_REMOVE(&r->queue, t, link);
		r->nqueued--;
		TAILQ_INSERT_TAIL(&r->finishing, t, link);
		runner_kick(r);
		break;
	case MODULE_TASK_STARTING:
		/* No task frame was sent yet: nothing to cancel politely. */
		proc_terminate(p, 0);
		break;
	case MODULE_TASK_RUNNING:
		if (p->fd_in >= 0 && !p->close_in_pending) {
			frame_encode_cancel(&p->out, t->task_id, t->stop_reason);
			proc_flush_soon(p);
		}
		if (!r->persistent) {
			proc_terminate(p, r->cancel_grace_ms);
		} else {
			if (!t->grace_ev)
				t->grace_ev = evtimer_new(r->base, task_grace_cb, t);
			struct timeval tv = tv_ms(r->cancel_grace_ms);
			evtimer_add(t->grace_ev, &tv);
		}
		break;
	case MODULE_TASK_ANSWERED:
	case MODULE_TASK_DONE:
	case MODULE_TASK_NSTATES: break;
	}
}

static void task_stop(struct module_task *t, enum task_stop why, const char *reason)
{
	if (t->state == MODULE_TASK_DONE || t->answer != ANSWER_NONE || t->stop != STOP_NONE)
		return;
	t->stop = why;
	t->stop_reason = xstrdup(reason);
	log_debug("module.task.stop", "stopping task", LF_STR("module", t->r->name),
	          LF_STR("task_id", t->task_id), LF_STR("reason", reason));
	task_stop_now(t);
}

static void task_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct module_task *t = arg;
	struct module_runner *r = t->r;
	runner_enter(r);
	task_stop(t, STOP_DEADLINE, "deadline");
	runner_leave(r);
}

/* A persistent module did not answer a cancel: one task cannot be killed
 * alone in a shared process, so the process is restarted. */
static void task_grace_cb(evutil_socket_t fd, short what, void *arg)
{
	struct module_task *t = arg;
	struct module_runner *r = t->r;
	struct module_proc *p = t->p;
	runner_enter(r);
	if (t->state == MODULE_TASK_RUNNING && t->answer == ANSWER_NONE && p &&
	    p->kill_level < KILL_TERM) {
		char d[32];
		fmt_ms(d, sizeof d, r->cancel_grace_ms);
		if (!p->kill_reason)
			p->kill_reason = xasprintf(
			        "module restarted: task %s did not answer its cancel within %s",
			        t->task_id, d);
		log_warn("module.cancel_unanswered",
		         "persistent module did not answer a cancel: restarting it",
		         LF_STR("module", r->name), LF_INT("pid", p->pid),
		         LF_STR("task_id", t->task_id), LF_UINT("in_flight", p->ntasks));
		proc_terminate(p, 0);
	}
	runner_leave(r);
}

/* Processes. ---------------------------------------------------------------- */

static void proc_free(struct module_proc *p)
{
	close_fd(&p->fd_in);
	close_fd(&p->fd_out);
	close_fd(&p->fd_err);
	struct event **evs[] = {&p->ev_in,   &p->ev_out,   &p->ev_err,
	                        &p->ev_more, &p->hello_ev, &p->kill_ev};
	for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++)
		if (*evs[i])
			event_free(*evs[i]);
	buf_free(&p->in);
	buf_free(&p->err);
	buf_free(&p->out);
	free(p->violation);
	free(p->kill_reason);
	free(p);
}

static void proc_del_events(struct module_proc *p)
{
	struct event *evs[] = {p->ev_in, p->ev_out, p->ev_err, p->ev_more, p->hello_ev, p->kill_ev};
	for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++)
		if (evs[i])
			event_del(evs[i]);
	p->reading = p->writing = false;
}

static void proc_arm_kill(struct module_proc *p, unsigned ms)
{
	struct timeval tv = tv_ms(ms);
	evtimer_add(p->kill_ev, &tv);
}

/* The leader is never reaped before proc_finish(), so its pid — the group
 * id — cannot have been reused: signalling the group is safe. */
static void proc_signal_group(struct module_proc *p, int sig)
{
	if (p->reaped)
		return;
	if (kill(-p->pid, sig) != 0 && errno != ESRCH)
		log_warn("module.kill", "cannot signal the module's process group",
		         LF_STR("module", p->r->name), LF_INT("pid", p->pid), LF_INT("signal", sig),
		         LF_STR("error", strerror(errno)));
}

/* This persistent process takes no new task; failure: the next one waits for
 * the restart backoff. */
static void proc_retire(struct module_proc *p, bool failure)
{
	struct module_runner *r = p->r;
	if (r->pproc != p)
		return;
	r->pproc = NULL;
	if (failure) {
		unsigned d = module_backoff_ms(r->restart_min_ms, r->restart_max_ms,
		                               r->restart_attempt, runner_rand(r));
		if (r->restart_attempt < 32)
			r->restart_attempt++;
		r->next_spawn_us = clock_mono_us() + (int64_t)d * 1000;
	}
}

static void proc_close_stdout(struct module_proc *p)
{
	if (p->ev_out)
		event_del(p->ev_out);
	p->reading = false;
	close_fd(&p->fd_out);
}

static void proc_close_stderr(struct module_proc *p)
{
	if (p->ev_err)
		event_del(p->ev_err);
	close_fd(&p->fd_err);
}

static void proc_close_stdin_now(struct module_proc *p)
{
	if (p->ev_in)
		event_del(p->ev_in);
	p->writing = false;
	close_fd(&p->fd_in);
	buf_free(&p->out);
	p->out_off = 0;
	p->close_in_pending = false;
}

/* Closes stdin once what is queued for it has been written. */
static void proc_close_stdin(struct module_proc *p)
{
	if (p->fd_in < 0)
		return;
	if (p->out.len > p->out_off) {
		p->close_in_pending = true;
		proc_flush_soon(p);
		return;
	}
	proc_close_stdin_now(p);
}

static void proc_flush_soon(struct module_proc *p)
{
	if (p->fd_in < 0 || p->writing || p->out.len == p->out_off)
		return;
	event_add(p->ev_in, NULL);
	p->writing = true;
}

/* One step of SIGTERM -> SIGKILL -> force-close. */
static void proc_escalate(struct module_proc *p)
{
	struct module_runner *r = p->r;
	if (p->state != MODULE_PROC_KILLING && p->state != MODULE_PROC_DEAD)
		proc_set_state(p, MODULE_PROC_KILLING);
	switch (p->kill_level) {
	case KILL_NONE:
	case KILL_LINGER:
		if (!p->exited) {
			log_debug("module.kill", "SIGTERM to the module's process group",
			          LF_STR("module", r->name), LF_INT("pid", p->pid));
			proc_signal_group(p, SIGTERM);
		}
		p->kill_level = KILL_TERM;
		proc_arm_kill(p, r->kill_grace_ms);
		break;
	case KILL_TERM:
		log_debug("module.kill", "SIGKILL to the module's process group",
		          LF_STR("module", r->name), LF_INT("pid", p->pid));
		proc_signal_group(p, SIGKILL);
		p->kill_level = KILL_KILL;
		proc_arm_kill(p, r->kill_grace_ms);
		break;
	case KILL_KILL:
		/* Something outside the group (a setsid'd grandchild) holds the
		 * pipes: stop waiting for their EOF. */
		log_warn("module.pipes_held", "module pipes still open after SIGKILL: closing them",
		         LF_STR("module", r->name), LF_INT("pid", p->pid));
		p->kill_level = KILL_CLOSED;
		p->discard = true;
		p->out_eof = true;
		buf_free(&p->in);
		p->in_off = 0;
		proc_close_stdout(p);
		proc_close_stderr(p);
		proc_close_stdin_now(p);
		proc_check_done(p);
		break;
	case KILL_CLOSED: break;
	}
}

/* SIGTERM after delay_ms (0: now), then the escalation. */
static void proc_terminate(struct module_proc *p, unsigned delay_ms)
{
	if (p->kill_level >= KILL_TERM || p->state == MODULE_PROC_DEAD)
		return;
	proc_retire(p, true);
	if (delay_ms == 0) {
		proc_escalate(p);
		return;
	}
	int64_t at = clock_mono_us() + (int64_t)delay_ms * 1000;
	if (p->kill_level == KILL_LINGER && p->term_at_us <= at)
		return;
	p->kill_level = KILL_LINGER;
	p->term_at_us = at;
	proc_arm_kill(p, delay_ms);
}

static void proc_kill_now(struct module_proc *p)
{
	if (p->kill_level >= KILL_KILL || p->state == MODULE_PROC_DEAD)
		return;
	proc_retire(p, true);
	if (p->state != MODULE_PROC_KILLING)
		proc_set_state(p, MODULE_PROC_KILLING);
	log_debug("module.kill", "SIGKILL to the module's process group",
	          LF_STR("module", p->r->name), LF_INT("pid", p->pid));
	proc_signal_group(p, SIGKILL);
	p->kill_level = KILL_KILL;
	proc_arm_kill(p, p->r->kill_grace_ms);
}

static void proc_kill_cb(evutil_socket_t fd, short what, void *arg)
{
	struct module_proc *p = arg;
	struct module_runner *r = p->r;
	runner_enter(r);
	proc_escalate(p);
	runner_leave(r);
}

static void proc_violation(struct module_proc *p, const char *task_id, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
static void proc_violation(struct module_proc *p, const char *task_id, const char *fmt, ...)
{
	if (p->violation)
		return;
	va_list ap;
	va_start(ap, fmt);
	p->violation = xvasprintf(fmt, ap);
	va_end(ap);
	log_warn("module.protocol_violation", p->violation, LF_STR("module", p->r->name),
	         LF_INT("pid", p->pid), LF_STR("task_id", task_id ? task_id : ""));
	p->discard = true;
	proc_close_stdin_now(p);
	proc_kill_now(p);
}

static void proc_hello_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct module_proc *p = arg;
	struct module_runner *r = p->r;
	runner_enter(r);
	if (!p->got_hello && !p->exited) {
		char d[32];
		fmt_ms(d, sizeof d, r->hello_timeout_ms);
		free(p->kill_reason);
		p->kill_reason = xasprintf("no hello within %s", d);
		log_warn("module.hello_timeout", p->kill_reason, LF_STR("module", r->name),
		         LF_INT("pid", p->pid));
		proc_terminate(p, 0);
	}
	runner_leave(r);
}

static void proc_finish(struct module_proc *p)
{
	struct module_runner *r = p->r;
	if (!p->reaped) {
		int status;
		struct rusage ru;
		pid_t w;
		do
			w = wait4(p->pid, &status, WNOHANG, &ru);
		while (w < 0 && errno == EINTR);
		if (w == p->pid) {
			p->reaped = true;
			p->ru = ru;
		} else {
			log_warn("module.reap", "cannot reap the module process",
			         LF_STR("module", r->name), LF_INT("pid", p->pid),
			         LF_STR("error", w < 0 ? strerror(errno) : "not exited"));
		}
	}
	proc_del_events(p);
	proc_close_stdin_now(p);
	proc_set_state(p, MODULE_PROC_DEAD);
	TAILQ_REMOVE(&r->procs, p, link);
	r->nprocs--;
	TAILQ_INSERT_TAIL(&r->dead_procs, p, link);

	bool unplanned = r->persistent && !r->shutting_down &&
	                 (p->violation || p->kill_reason || p->term_signal || p->exit_code != 0 ||
	                  p->ntasks > 0);
	proc_retire(p, unplanned);
	log_debug("module.finish", "module process finished", LF_STR("module", r->name),
	          LF_INT("pid", p->pid), LF_INT("exit_code", p->term_signal ? -1 : p->exit_code),
	          LF_INT("signal", p->term_signal), LF_UINT("tasks", p->ntasks));

	bool panicked = false;
	struct module_task *t;
	while ((t = TAILQ_FIRST(&p->tasks)) != NULL) {
		TAILQ_REMOVE(&p->tasks, t, link);
		p->ntasks--;
		if (task_finish(t) == MODULE_PANIC)
			panicked = true;
	}
	if (r->persistent && !p->was_ready && !r->shutting_down && !r->free_pending) {
		/* It never got to serve: waiting for restarts would leave the
		 * queue to its deadlines. End the queued tasks now (retryable),
		 * as a spawn failure does; the next spawn still waits for the
		 * backoff. */
		char why[256];
		if (p->violation)
			snprintf(why, sizeof why, "%s", p->violation);
		else
			proc_describe_end(p, why, sizeof why);
		while ((t = TAILQ_FIRST(&r->queue)) != NULL) {
			TAILQ_REMOVE(&r->queue, t, link);
			r->nqueued--;
			t->panic_reason = xasprintf("module failed to start: %s", why);
			TAILQ_INSERT_TAIL(&r->finishing, t, link);
			panicked = true;
		}
	}
	if (panicked || unplanned)
		metric_inc(metrics_default_get(M_MODULES_PANICS_TOTAL), 1, r->name);
}

static void proc_check_done(struct module_proc *p)
{
	if (p->state != MODULE_PROC_DEAD && p->exited && p->fd_out < 0 && p->fd_err < 0)
		proc_finish(p);
}

static void proc_on_exit(struct module_proc *p, int code, int status)
{
	struct module_runner *r = p->r;
	p->exited = true;
	if (code == CLD_EXITED)
		p->exit_code = status;
	else
		p->term_signal = status;
	log_debug("module.exit", "module process exited", LF_STR("module", r->name),
	          LF_INT("pid", p->pid), LF_INT("exit_code", p->term_signal ? -1 : p->exit_code),
	          LF_INT("signal", p->term_signal));
	if (p->hello_ev)
		event_del(p->hello_ev);
	if ((p->fd_out >= 0 || p->fd_err >= 0) && p->kill_level < KILL_TERM) {
		/* The leader is gone; if something it left behind holds the pipes,
		 * the group gets SIGKILL after kill_grace (cancelled when the
		 * pipes close first, as they normally do). */
		p->kill_level = KILL_TERM;
		proc_arm_kill(p, r->kill_grace_ms);
	}
	proc_check_done(p);
}

static void runner_sigchld_cb(evutil_socket_t sig, short what, void *arg)
{
	struct module_runner *r = arg;
	runner_enter(r);
	struct module_proc *p, *next;
	for (p = TAILQ_FIRST(&r->procs); p && !r->free_pending; p = next) {
		next = TAILQ_NEXT(p, link);
		if (p->exited)
			continue;
		/* WNOWAIT: observe the exit, leave the zombie (and with it the
		 * process group id) until the pipes are closed too. */
		siginfo_t si;
		memset(&si, 0, sizeof si);
		int rc;
		do
			rc = waitid(P_PID, (id_t)p->pid, &si, WEXITED | WNOHANG | WNOWAIT);
		while (rc < 0 && errno == EINTR);
		if (rc == 0 && si.si_pid == p->pid) {
			proc_on_exit(p, si.si_code, si.si_status);
		} else if (rc < 0 && errno == ECHILD) {
			log_warn("module.reap", "module process was reaped by someone else",
			         LF_STR("module", r->name), LF_INT("pid", p->pid));
			p->reaped = true;
			proc_on_exit(p, CLD_EXITED, -1);
		}
	}
	runner_leave(r);
}

/* stdin. */

static void proc_stdin_cb(evutil_socket_t fd, short what, void *arg)
{
	struct module_proc *p = arg;
	struct module_runner *r = p->r;
	runner_enter(r);
	while (p->out_off < p->out.len) {
		ssize_t n = write(p->fd_in, p->out.data + p->out_off, p->out.len - p->out_off);
		if (n > 0) {
			p->out_off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			break;
		/* EPIPE: the module closed its stdin or died; its exit tells the rest. */
		log_debug("module.stdin", "cannot write to the module's stdin",
		          LF_STR("module", r->name), LF_INT("pid", p->pid),
		          LF_STR("error", n < 0 ? strerror(errno) : "short write"));
		proc_close_stdin_now(p);
		goto out;
	}
	if (p->out_off == p->out.len) {
		p->out_off = 0;
		if (p->out.cap > 4 * MODULE_READ_CHUNK)
			buf_free(&p->out);
		else
			buf_reset(&p->out);
		event_del(p->ev_in);
		p->writing = false;
		if (p->close_in_pending)
			proc_close_stdin_now(p);
	}
out:
	runner_leave(r);
}

/* stdout. */

static size_t proc_in_limit(const struct module_proc *p)
{
	const struct module_runner *r = p->r;
	size_t limit = r->pipe_cap;
	size_t avail = p->in.len - p->in_off;
	if (avail >= FRAME_HEADER_LEN) {
		/* A frame larger than the cap must fit whole to be decoded. */
		const unsigned char *h = (const unsigned char *)p->in.data + p->in_off;
		size_t n =
		        (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | (size_t)h[3];
		size_t max = r->limits.max_bytes ? r->limits.max_bytes : FRAME_DEFAULT_MAX_BYTES;
		if (n > max)
			n = max;
		if (FRAME_HEADER_LEN + n > limit)
			limit = FRAME_HEADER_LEN + n;
	}
	return limit;
}

static void proc_set_reading(struct module_proc *p, bool on)
{
	if (p->fd_out < 0 || on == p->reading)
		return;
	if (on)
		event_add(p->ev_out, NULL);
	else
		event_del(p->ev_out);
	p->reading = on;
}

static void proc_stdout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct module_proc *p = arg;
	struct module_runner *r = p->r;
	runner_enter(r);
	size_t budget = MODULE_READ_BUDGET;
	while (budget > 0 && !p->out_eof && p->fd_out >= 0) {
		if (p->discard) {
			p->in.len = p->in_off = 0;
		}
		size_t avail = p->in.len - p->in_off;
		size_t limit = proc_in_limit(p);
		if (avail >= limit)
			break;
		size_t want = limit - avail;
		if (want > MODULE_READ_CHUNK)
			want = MODULE_READ_CHUNK;
		if (want > budget)
			want = budget;
		buf_reserve(&p->in, want);
		ssize_t n = read(p->fd_out, p->in.data + p->in.len, want);
		if (n > 0) {
			p->in.len += (size_t)n;
			p->in.data[p->in.len] = '\0';
			budget -= (size_t)n;
			if ((size_t)n < want)
				break; /* drained for now */
			continue;
		}
		if (n == 0) {
			p->out_eof = true;
			break;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			break;
		log_debug("module.stdout", "cannot read the module's stdout",
		          LF_STR("module", r->name), LF_INT("pid", p->pid),
		          LF_STR("error", strerror(errno)));
		p->out_eof = true;
	}
	proc_decode(p);
	runner_leave(r);
}

static void proc_more_cb(evutil_socket_t fd, short what, void *arg)
{
	struct module_proc *p = arg;
	struct module_runner *r = p->r;
	runner_enter(r);
	proc_decode(p);
	runner_leave(r);
}

static struct module_task *proc_find_task(const struct module_proc *p, const char *task_id)
{
	struct module_task *t;
	/* Answers mostly come in dispatch order: the head is the usual hit. */
	TAILQ_FOREACH(t, &p->tasks, link)
	{
		if (strcmp(t->task_id, task_id) == 0)
			return t;
	}
	return NULL;
}

static void task_send(struct module_proc *p, struct module_task *t)
{
	struct module_runner *r = p->r;
	buf_add(&p->out, t->frame.data, t->frame.len);
	buf_free(&t->frame);
	t->sent_us = clock_mono_us();
	task_set_state(t, MODULE_TASK_RUNNING);
	t->span = trace_start("module.task", NULL, TA_STR("module", r->name),
	                      TA_STR("task_id", t->task_id), TA_INT("pid", p->pid));
	proc_flush_soon(p);
}

static void proc_on_hello(struct module_proc *p, const struct frame *f)
{
	struct module_runner *r = p->r;
	if (p->got_hello) {
		proc_violation(p, NULL, "second hello frame");
		return;
	}
	if (f->u.hello.protocol != FRAME_PROTOCOL) {
		proc_violation(p, NULL, "hello says protocol %d; this daemon speaks %d",
		               f->u.hello.protocol, FRAME_PROTOCOL);
		return;
	}
	if (r->persistent && !f->u.hello.persistent) {
		proc_violation(
		        p, NULL,
		        "module is configured persistent but its hello lacks persistent: true");
		return;
	}
	p->got_hello = true;
	p->hello_us = clock_mono_us();
	snprintf(p->engine_id, sizeof p->engine_id, "%s@%s",
	         f->u.hello.module ? f->u.hello.module : r->name,
	         f->u.hello.version ? f->u.hello.version : "unknown");
	event_del(p->hello_ev);
	log_debug("module.hello", "module said hello", LF_STR("module", r->name),
	          LF_INT("pid", p->pid), LF_STR("version", f->u.hello.version),
	          LF_BOOL("persistent", f->u.hello.persistent),
	          LF_INT("concurrency", f->u.hello.concurrency));
	if (p->state != MODULE_PROC_STARTING)
		return; /* being stopped already: nothing more to send */
	proc_set_state(p, MODULE_PROC_READY);
	p->was_ready = true;
	if (r->persistent) {
		unsigned c = f->u.hello.concurrency >= 1 ? (unsigned)f->u.hello.concurrency : 1;
		p->cap = c < r->concurrency ? c : r->concurrency;
		return; /* the outermost leave dispatches */
	}
	struct module_task *t = TAILQ_FIRST(&p->tasks);
	if (t && t->state == MODULE_TASK_STARTING)
		task_send(p, t);
}

static void task_on_answer(struct module_proc *p, struct module_task *t)
{
	struct module_runner *r = p->r;
	if (!r->persistent) {
		/* Done when it has exited and closed its pipes; EOF on stdin tells
		 * a persistent-capable module to exit, and it has cancel_grace. */
		task_set_state(t, MODULE_TASK_ANSWERED);
		proc_close_stdin(p);
		if (p->state == MODULE_PROC_READY)
			proc_set_state(p, MODULE_PROC_DRAINING);
		proc_terminate(p, r->cancel_grace_ms);
		return;
	}
	TAILQ_REMOVE(&p->tasks, t, link);
	p->ntasks--;
	r->restart_attempt = 0;
	if (p->ntasks == 0 && p->state == MODULE_PROC_DRAINING)
		proc_close_stdin(p);
	task_finish(t);
}

static void proc_on_frame(struct module_proc *p, struct frame *f)
{
	struct module_runner *r = p->r;
	if (f->type == FRAME_HELLO) {
		proc_on_hello(p, f);
		return;
	}
	const char *tname = frame_type_name(f->type);
	if (!p->got_hello) {
		proc_violation(p, f->task_id, "%s frame before hello", tname);
		return;
	}
	struct module_task *t;
	if (r->persistent) {
		if (!f->task_id) {
			proc_violation(p, NULL, "%s frame without task_id from a persistent module",
			               tname);
			return;
		}
		t = proc_find_task(p, f->task_id);
		if (!t) {
			proc_violation(p, f->task_id,
			               "%s frame for task_id %s, which is not in flight", tname,
			               f->task_id);
			return;
		}
	} else {
		t = TAILQ_FIRST(&p->tasks);
		if (!t || t->state == MODULE_TASK_STARTING) {
			proc_violation(p, f->task_id, "%s frame before the task was sent", tname);
			return;
		}
		if (f->task_id && strcmp(f->task_id, t->task_id) != 0) {
			proc_violation(p, f->task_id, "%s frame for task_id %s; the task is %s",
			               tname, f->task_id, t->task_id);
			return;
		}
		if (t->state != MODULE_TASK_RUNNING) {
			proc_violation(p, t->task_id, "%s frame after the task's %s", tname,
			               t->answer == ANSWER_RESULT ? "result" : "error");
			return;
		}
	}
	switch (f->type) {
	case FRAME_LOG: {
		size_t len = f->u.log.message ? strlen(f->u.log.message) : 0;
		if (t->log_truncated || t->log_bytes + len > r->log_cap) {
			t->log_truncated = true;
			t->log_dropped += len;
			return;
		}
		t->log_bytes += len;
	}
		/* fallthrough */
	case FRAME_PROGRESS:
	case FRAME_ARTIFACT:
	case FRAME_WARNING:
		if (!t->detached && t->cbs.on_frame)
			t->cbs.on_frame(t, f, t->arg);
		return;
	case FRAME_RESULT:
		t->answer = ANSWER_RESULT;
		t->output = f->u.result.output;
		f->u.result.output = NULL;
		t->resources = f->u.result.resources;
		f->u.result.resources = NULL;
		break;
	case FRAME_ERROR:
		t->answer = ANSWER_ERROR;
		t->err_message = xstrdup_or_empty(f->u.error.message);
		t->err_code = f->u.error.code ? xstrdup(f->u.error.code) : NULL;
		t->err_category = f->u.error.category;
		t->err_retryable = f->u.error.retryable;
		t->err_detail = f->u.error.detail;
		f->u.error.detail = NULL;
		break;
	default: proc_violation(p, t->task_id, "unexpected %s frame from a module", tname); return;
	}
	task_on_answer(p, t);
}

/* Decodes and delivers what stdout brought, at most MODULE_FRAMES_PER_PASS
 * frames per loop pass; reading stays off while the buffer is full. */
static void proc_decode(struct module_proc *p)
{
	struct module_runner *r = p->r;
	unsigned nframes = 0;
	bool more = false;
	while (!p->discard && p->in_off < p->in.len) {
		if (nframes == MODULE_FRAMES_PER_PASS) {
			more = true;
			break;
		}
		struct frame f;
		size_t used = 0;
		struct frame_error fe;
		enum frame_status st = frame_decode(p->in.data + p->in_off, p->in.len - p->in_off,
		                                    &r->limits, true, &f, &used, &fe);
		if (st == FRAME_NEED_MORE)
			break;
		if (st == FRAME_BAD) {
			const struct module_task *t = TAILQ_FIRST(&p->tasks);
			const char *tid = t && !r->persistent ? t->task_id : NULL;
			const unsigned char *h = (const unsigned char *)p->in.data + p->in_off;
			size_t avail = p->in.len - p->in_off;
			bool text = avail >= FRAME_HEADER_LEN;
			for (size_t i = 0; text && i < FRAME_HEADER_LEN; i++)
				text = (h[i] >= 0x20 && h[i] < 0x7f) || h[i] == '\t' ||
				       h[i] == '\n';
			if (text) {
				/* The usual cause: a print() to stdout. Say so. */
				size_t n = avail < 24 ? avail : 24;
				char quoted[100];
				size_t q = 0;
				for (size_t i = 0; i < n && q + 4 < sizeof quoted; i++)
					quoted[q++] =
					        h[i] >= 0x20 && h[i] < 0x7f ? (char)h[i] : '.';
				quoted[q] = '\0';
				proc_violation(p, tid, "%s (stdout holds text, not frames: \"%s\")",
				               fe.msg, quoted);
			} else {
				proc_violation(p, tid, "%s", fe.msg);
			}
			break;
		}
		p->in_off += used;
		nframes++;
		proc_on_frame(p, &f);
		frame_clear(&f);
		if (r->free_pending)
			return;
	}
	if (p->discard)
		p->in.len = p->in_off = 0;
	size_t avail = p->in.len - p->in_off;
	if (p->in_off > 0) {
		if (avail)
			memmove(p->in.data, p->in.data + p->in_off, avail);
		p->in.len = avail;
		p->in_off = 0;
		p->in.data[avail] = '\0';
	}
	/* Give a big frame's memory back. */
	if (avail == 0 && p->in.cap > 2 * r->pipe_cap + 64)
		buf_free(&p->in);
	if (more) {
		event_active(p->ev_more, EV_TIMEOUT, 0);
		proc_set_reading(p, !p->out_eof && avail < proc_in_limit(p));
		return;
	}
	if (p->out_eof && p->fd_out >= 0) {
		if (avail > 0 && !p->discard)
			proc_violation(p, NULL, "stdout closed inside a frame (%zu bytes pending)",
			               avail);
		proc_close_stdout(p);
		buf_free(&p->in);
		if (!p->exited) {
			/* It can no longer answer: it should be exiting. */
			proc_terminate(p, r->cancel_grace_ms);
		}
		proc_check_done(p);
		return;
	}
	proc_set_reading(p, avail < proc_in_limit(p));
}

/* stderr. */

static void proc_emit_stderr(struct module_proc *p, const char *line, size_t len)
{
	struct module_runner *r = p->r;
	if (len && line[len - 1] == '\r')
		len--;
	if (!r->persistent) {
		struct module_task *t = TAILQ_FIRST(&p->tasks);
		if (t)
			task_deliver_stderr(t, line, len);
		return;
	}
	if (r->stderr_cb) {
		r->stderr_cb(r, p->pid, line, len, r->stderr_arg);
		return;
	}
	if (p->stderr_truncated)
		return;
	if (p->stderr_bytes + len > r->log_cap) {
		p->stderr_truncated = true;
		log_warn("module.stderr_truncated",
		         "module stderr past the cap: the rest is dropped",
		         LF_STR("module", r->name), LF_INT("pid", p->pid));
		return;
	}
	p->stderr_bytes += len;
	log_info("module.stderr", "module stderr", LF_STR("module", r->name), LF_INT("pid", p->pid),
	         LF_PIIN("line", line, len));
}

static void proc_split_stderr(struct module_proc *p, bool flush)
{
	struct module_runner *r = p->r;
	size_t start = 0;
	while (start < p->err.len) {
		const char *s = p->err.data + start;
		size_t rest = p->err.len - start;
		const char *nl = memchr(s, '\n', rest);
		size_t len;
		if (nl)
			len = (size_t)(nl - s);
		else if (rest >= MODULE_MAX_LINE)
			len = MODULE_MAX_LINE;
		else if (flush)
			len = rest;
		else
			break;
		proc_emit_stderr(p, s, len);
		if (r->free_pending)
			return;
		start += len + (nl ? 1 : 0);
	}
	size_t rest = p->err.len - start;
	if (start > 0) {
		if (rest)
			memmove(p->err.data, p->err.data + start, rest);
		p->err.len = rest;
		p->err.data[rest] = '\0';
	}
}

static void proc_stderr_cb(evutil_socket_t fd, short what, void *arg)
{
	struct module_proc *p = arg;
	struct module_runner *r = p->r;
	runner_enter(r);
	size_t budget = MODULE_READ_BUDGET;
	bool eof = false;
	while (budget > 0 && p->fd_err >= 0) {
		buf_reserve(&p->err, MODULE_READ_CHUNK);
		ssize_t n = read(p->fd_err, p->err.data + p->err.len, MODULE_READ_CHUNK);
		if (n > 0) {
			p->err.len += (size_t)n;
			p->err.data[p->err.len] = '\0';
			budget -= (size_t)n;
			proc_split_stderr(p, false);
			if (r->free_pending)
				goto out;
			if (n < MODULE_READ_CHUNK)
				break;
			continue;
		}
		if (n == 0) {
			eof = true;
			break;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			eof = true;
		break;
	}
	if (eof) {
		proc_split_stderr(p, true);
		if (r->free_pending)
			goto out;
		buf_free(&p->err);
		proc_close_stderr(p);
		proc_check_done(p);
	}
out:
	runner_leave(r);
}

/* Spawning. ---------------------------------------------------------------- */

/* Starts a process: for t (one-shot) or the runner's persistent one (t
 * NULL). On failure returns NULL with the reason in err. */
static struct module_proc *proc_spawn(struct module_runner *r, struct module_task *t, char *err,
                                      size_t errsize)
{
	int in[2] = {-1, -1}, out[2] = {-1, -1}, errp[2] = {-1, -1};
	if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0 ||
	    pipe2(errp, O_CLOEXEC) != 0) {
		snprintf(err, errsize, "cannot start module: pipe: %s", strerror(errno));
		goto fail;
	}
	int *fds[] = {&in[0], &in[1], &out[0], &out[1], &errp[0], &errp[1]};
	for (size_t i = 0; i < 6; i++) {
		if (!fd_above_stdio(fds[i])) {
			snprintf(err, errsize, "cannot start module: fcntl: %s", strerror(errno));
			goto fail;
		}
	}
	if (!fd_nonblock(in[1]) || !fd_nonblock(out[0]) || !fd_nonblock(errp[0])) {
		snprintf(err, errsize, "cannot start module: fcntl: %s", strerror(errno));
		goto fail;
	}

	const char *cwd = t ? t->workdir : r->cwd;
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&at);
	posix_spawn_file_actions_adddup2(&fa, in[0], 0);
	posix_spawn_file_actions_adddup2(&fa, out[1], 1);
	posix_spawn_file_actions_adddup2(&fa, errp[1], 2);
	posix_spawn_file_actions_addclosefrom_np(&fa, 3);
	if (cwd)
		posix_spawn_file_actions_addchdir_np(&fa, cwd);
	sigset_t mask, def;
	sigemptyset(&mask);
	sigfillset(&def);
	sigdelset(&def, SIGKILL);
	sigdelset(&def, SIGSTOP);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
	                                      POSIX_SPAWN_SETSIGDEF);
	posix_spawnattr_setpgroup(&at, 0);
	posix_spawnattr_setsigmask(&at, &mask);
	posix_spawnattr_setsigdefault(&at, &def);

	char **envp = runner_build_env(r, t);
	pid_t pid = 0;
	int rc = posix_spawn(&pid, r->path, &fa, &at, r->argv, envp);
	strv_free(envp);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	close_fd(&in[0]);
	close_fd(&out[1]);
	close_fd(&errp[1]);
	if (rc != 0) {
		snprintf(err, errsize, "cannot start module %s%s%s: %s", r->path, cwd ? " in " : "",
		         cwd ? cwd : "", strerror(rc));
		goto fail;
	}

	struct module_proc *p = xcalloc(1, sizeof *p);
	p->r = r;
	p->pid = pid;
	p->state = MODULE_PROC_STARTING;
	p->fd_in = in[1];
	p->fd_out = out[0];
	p->fd_err = errp[0];
	TAILQ_INIT(&p->tasks);
	p->spawn_us = clock_mono_us();
	p->ev_in = event_new(r->base, p->fd_in, EV_WRITE | EV_PERSIST, proc_stdin_cb, p);
	p->ev_out = event_new(r->base, p->fd_out, EV_READ | EV_PERSIST, proc_stdout_cb, p);
	p->ev_err = event_new(r->base, p->fd_err, EV_READ | EV_PERSIST, proc_stderr_cb, p);
	p->ev_more = event_new(r->base, -1, 0, proc_more_cb, p);
	p->hello_ev = evtimer_new(r->base, proc_hello_timeout_cb, p);
	p->kill_ev = evtimer_new(r->base, proc_kill_cb, p);
	if (!p->ev_in || !p->ev_out || !p->ev_err || !p->ev_more || !p->hello_ev || !p->kill_ev) {
		/* libevent out of memory: treat like xmalloc. */
		log_error("module.spawn", "cannot create events", LF_STR("module", r->name));
		abort();
	}
	event_add(p->ev_out, NULL);
	p->reading = true;
	event_add(p->ev_err, NULL);
	struct timeval tv = tv_ms(r->hello_timeout_ms);
	evtimer_add(p->hello_ev, &tv);
	TAILQ_INSERT_TAIL(&r->procs, p, link);
	r->nprocs++;
	r->spawns++;
	metric_inc(metrics_default_get(M_MODULES_SPAWNS_TOTAL), 1, r->name);
	log_debug("module.spawn", "module process started", LF_STR("module", r->name),
	          LF_INT("pid", pid), LF_STR("task_id", t ? t->task_id : ""),
	          LF_BOOL("persistent", r->persistent));
	return p;

fail:
	for (size_t i = 0; i < 2; i++) {
		close_fd(&in[i]);
		close_fd(&out[i]);
		close_fd(&errp[i]);
	}
	log_warn("module.spawn", err, LF_STR("module", r->name),
	         LF_STR("task_id", t ? t->task_id : ""));
	return NULL;
}

/* The runner. ---------------------------------------------------------------- */

static void task_start_common(struct module_task *t, struct module_proc *p)
{
	struct module_runner *r = t->r;
	t->p = p;
	TAILQ_INSERT_TAIL(&p->tasks, t, link);
	p->ntasks++;
	r->nrunning++;
	t->start_us = clock_mono_us();
}

/* Starts what can start. Returns true when it changed anything. */
static bool runner_dispatch(struct module_runner *r)
{
	bool did = false;
	struct module_task *t;
	char err[512];
	if (r->shutting_down)
		return false;
	if (!r->persistent) {
		while (!r->free_pending && (t = TAILQ_FIRST(&r->queue)) != NULL &&
		       r->nrunning < r->concurrency) {
			TAILQ_REMOVE(&r->queue, t, link);
			r->nqueued--;
			did = true;
			struct module_proc *p = proc_spawn(r, t, err, sizeof err);
			if (!p) {
				t->panic_reason = xstrdup(err);
				metric_inc(metrics_default_get(M_MODULES_PANICS_TOTAL), 1, r->name);
				task_finish(t);
				continue;
			}
			task_start_common(t, p);
			task_set_state(t, MODULE_TASK_STARTING);
			if (!t->detached && t->cbs.on_start)
				t->cbs.on_start(t, p->pid, t->arg);
		}
		return did;
	}

	if (TAILQ_EMPTY(&r->queue))
		return false;
	if (!r->pproc) {
		if (r->restart_armed)
			return false;
		int64_t now = clock_mono_us();
		if (now < r->next_spawn_us) {
			struct timeval tv = tv_ms((r->next_spawn_us - now + 999) / 1000);
			evtimer_add(r->restart_ev, &tv);
			r->restart_armed = true;
			return false;
		}
		bool restart = r->spawns > 0;
		struct module_proc *p = proc_spawn(r, NULL, err, sizeof err);
		if (!p) {
			/* A spawn failure is not a crash to wait out: the queued
			 * tasks end now (retryable), the next submit tries again
			 * after the backoff. */
			unsigned d = module_backoff_ms(r->restart_min_ms, r->restart_max_ms,
			                               r->restart_attempt, runner_rand(r));
			if (r->restart_attempt < 32)
				r->restart_attempt++;
			r->next_spawn_us = now + (int64_t)d * 1000;
			metric_inc(metrics_default_get(M_MODULES_PANICS_TOTAL), 1, r->name);
			while ((t = TAILQ_FIRST(&r->queue)) != NULL) {
				TAILQ_REMOVE(&r->queue, t, link);
				r->nqueued--;
				t->panic_reason = xstrdup(err);
				TAILQ_INSERT_TAIL(&r->finishing, t, link);
			}
			return true;
		}
		if (restart) {
			r->restarts++;
			metric_inc(metrics_default_get(M_MODULES_RESTARTS_TOTAL), 1, r->name);
			log_debug("module.restart", "persistent module restarted",
			          LF_STR("module", r->name), LF_INT("pid", p->pid),
			          LF_UINT("attempt", r->restart_attempt));
		}
		r->pproc = p;
		p->cap = 1;
		return true;
	}
	struct module_proc *p = r->pproc;
	if (p->state != MODULE_PROC_READY)
		return false;
	while (!r->free_pending && r->pproc == p && (t = TAILQ_FIRST(&r->queue)) != NULL &&
	       p->ntasks < p->cap && r->nrunning < r->concurrency) {
		TAILQ_REMOVE(&r->queue, t, link);
		r->nqueued--;
		did = true;
		task_start_common(t, p);
		task_send(p, t);
		if (!t->detached && t->cbs.on_start)
			t->cbs.on_start(t, p->pid, t->arg);
	}
	return did;
}

static void runner_check_shutdown(struct module_runner *r)
{
	if (!r->shutting_down || r->shutdown_notified || r->nprocs > 0 || r->nqueued > 0 ||
	    r->nrunning > 0 || !TAILQ_EMPTY(&r->finishing))
		return;
	r->shutdown_notified = true;
	evtimer_del(r->shutdown_ev);
	log_debug("module.shutdown", "module runner stopped", LF_STR("module", r->name));
	if (r->shutdown_cb)
		r->shutdown_cb(r, r->shutdown_arg);
}

/* The safe point: announce, dispatch, until nothing moves. */
static void runner_settle(struct module_runner *r)
{
	while (!r->free_pending) {
		struct module_task *t = TAILQ_FIRST(&r->finishing);
		if (t) {
			TAILQ_REMOVE(&r->finishing, t, link);
			task_finish(t);
			continue;
		}
		if (!runner_dispatch(r))
			break;
	}
	if (!r->free_pending)
		runner_check_shutdown(r);
}

static void runner_collect(struct module_runner *r)
{
	struct module_task *t;
	while ((t = TAILQ_FIRST(&r->dead)) != NULL) {
		TAILQ_REMOVE(&r->dead, t, link);
		task_free(t);
	}
	struct module_proc *p;
	while ((p = TAILQ_FIRST(&r->dead_procs)) != NULL) {
		TAILQ_REMOVE(&r->dead_procs, p, link);
		proc_free(p);
	}
}

static void runner_destroy(struct module_runner *r)
{
	int64_t deadline = clock_mono_us() + MODULE_FREE_REAP_US;
	struct module_proc *p;
	struct module_task *t;
	while ((p = TAILQ_FIRST(&r->procs)) != NULL) {
		TAILQ_REMOVE(&r->procs, p, link);
		if (!p->reaped) {
			proc_signal_group(p, SIGKILL);
			for (;;) {
				pid_t w = waitpid(p->pid, NULL, WNOHANG);
				if (w == p->pid || (w < 0 && errno != EINTR))
					break;
				if (clock_mono_us() >= deadline) {
					log_warn("module.free",
					         "module process did not die in time",
					         LF_STR("module", r->name), LF_INT("pid", p->pid));
					break;
				}
				struct timespec ts = {0, 1000 * 1000};
				nanosleep(&ts, NULL);
			}
		}
		while ((t = TAILQ_FIRST(&p->tasks)) != NULL) {
			TAILQ_REMOVE(&p->tasks, t, link);
			task_free(t);
		}
		proc_free(p);
	}
	struct task_list *lists[] = {&r->queue, &r->finishing};
	for (size_t i = 0; i < 2; i++) {
		while ((t = TAILQ_FIRST(lists[i])) != NULL) {
			TAILQ_REMOVE(lists[i], t, link);
			task_free(t);
		}
	}
	runner_collect(r);
	event_free(r->sigchld_ev);
	event_free(r->defer_ev);
	event_free(r->restart_ev);
	event_free(r->shutdown_ev);
	free(r->name);
	free(r->path);
	strv_free(r->argv);
	strv_free(r->env);
	free(r->cwd);
	free(r->home);
	free(r);
}

static void runner_leave(struct module_runner *r)
{
	if (r->depth == 1 && !r->free_pending)
		runner_settle(r);
	if (--r->depth > 0)
		return;
	if (r->free_pending)
		runner_destroy(r);
	else
		runner_collect(r);
}

static void runner_defer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct module_runner *r = arg;
	runner_enter(r);
	runner_leave(r);
}

static void runner_restart_cb(evutil_socket_t fd, short what, void *arg)
{
	struct module_runner *r = arg;
	runner_enter(r);
	r->restart_armed = false;
	runner_leave(r);
}

static void runner_shutdown_grace_cb(evutil_socket_t fd, short what, void *arg)
{
	struct module_runner *r = arg;
	runner_enter(r);
	r->shutdown_graced = true;
	struct module_proc *p;
	TAILQ_FOREACH(p, &r->procs, link)
	{
		struct module_task *t;
		TAILQ_FOREACH(t, &p->tasks, link)
		{
			task_stop(t, STOP_CANCEL, "shutdown");
		}
		proc_terminate(p, p->ntasks ? r->cancel_grace_ms : 0);
	}
	runner_leave(r);
}

struct module_runner *module_runner_new(struct event_base *base,
                                        const struct module_runner_def *def)
{
	if (!base || !def || !def->name || !*def->name || !def->argv || !def->argv[0]) {
		log_error("module.runner", "module definition without a name or argv",
		          LF_STR("module", def && def->name ? def->name : ""));
		return NULL;
	}
	struct module_runner *r = xcalloc(1, sizeof *r);
	r->base = base;
	r->name = xstrdup(def->name);
	r->argv = strv_copy(def->argv, false);
	r->env = strv_copy(def->env, true);
	r->path = resolve_path(r->argv[0], r->env);
	r->cwd = def->cwd ? xstrdup(def->cwd) : NULL;
	if (r->cwd) {
		r->home = xstrdup(r->cwd);
	} else {
		char *cwd = getcwd(NULL, 0);
		r->home = xstrdup(cwd ? cwd : "/");
		free(cwd);
	}
	r->persistent = def->persistent;
	r->concurrency = def->concurrency ? def->concurrency : 1;
	r->hello_timeout_ms =
	        def->hello_timeout_ms ? def->hello_timeout_ms : MODULE_DEFAULT_HELLO_TIMEOUT_MS;
	r->cancel_grace_ms =
	        def->cancel_grace_ms ? def->cancel_grace_ms : MODULE_DEFAULT_CANCEL_GRACE_MS;
	r->kill_grace_ms = def->kill_grace_ms ? def->kill_grace_ms : MODULE_DEFAULT_KILL_GRACE_MS;
	r->restart_min_ms =
	        def->restart_min_ms ? def->restart_min_ms : MODULE_DEFAULT_RESTART_MIN_MS;
	r->restart_max_ms =
	        def->restart_max_ms ? def->restart_max_ms : MODULE_DEFAULT_RESTART_MAX_MS;
	r->limits = def->limits;
	r->log_cap = def->log_cap_bytes ? def->log_cap_bytes : MODULE_DEFAULT_LOG_CAP_BYTES;
	r->pipe_cap = def->pipe_buf_bytes ? def->pipe_buf_bytes : MODULE_DEFAULT_PIPE_BUF_BYTES;
	TAILQ_INIT(&r->queue);
	TAILQ_INIT(&r->finishing);
	TAILQ_INIT(&r->dead);
	TAILQ_INIT(&r->procs);
	TAILQ_INIT(&r->dead_procs);
	id_random(&r->rnd, sizeof r->rnd);
	if (r->rnd == 0)
		r->rnd = 0x9e3779b9u;
	r->sigchld_ev = evsignal_new(base, SIGCHLD, runner_sigchld_cb, r);
	r->defer_ev = event_new(base, -1, 0, runner_defer_cb, r);
	r->restart_ev = evtimer_new(base, runner_restart_cb, r);
	r->shutdown_ev = evtimer_new(base, runner_shutdown_grace_cb, r);
	if (!r->sigchld_ev || !r->defer_ev || !r->restart_ev || !r->shutdown_ev ||
	    evsignal_add(r->sigchld_ev, NULL) != 0) {
		log_error("module.runner", "cannot create the runner's events",
		          LF_STR("module", r->name));
		abort();
	}
	log_debug("module.runner", "module runner created", LF_STR("module", r->name),
	          LF_STR("path", r->path), LF_BOOL("persistent", r->persistent),
	          LF_UINT("concurrency", r->concurrency));
	return r;
}

void module_runner_free(struct module_runner *r)
{
	if (!r || r->free_pending)
		return;
	r->free_pending = true;
	struct module_proc *p;
	TAILQ_FOREACH(p, &r->procs, link)
	{
		proc_signal_group(p, SIGKILL);
	}
	if (r->depth > 0)
		return; /* the outermost leave destroys it */
	runner_destroy(r);
}

struct module_task *module_runner_submit(struct module_runner *r,
                                         const struct module_task_spec *spec,
                                         const struct module_task_cbs *cbs, void *arg)
{
	if (!r || !spec || r->free_pending)
		return NULL;
	if (r->shutting_down) {
		log_warn("module.submit", "module runner is shutting down",
		         LF_STR("module", r->name),
		         LF_STR("task_id", spec->task_id ? spec->task_id : ""));
		return NULL;
	}
	if (!spec->task_id || !*spec->task_id ||
	    (!r->persistent && (!spec->workdir || !*spec->workdir))) {
		log_warn("module.submit", "task without a task_id or (one-shot) a workdir",
		         LF_STR("module", r->name),
		         LF_STR("task_id", spec->task_id ? spec->task_id : ""));
		return NULL;
	}
	struct module_task *t = xcalloc(1, sizeof *t);
	t->r = r;
	t->state = MODULE_TASK_QUEUED;
	t->task_id = xstrdup(spec->task_id);
	t->job_id = xstrdup_or_empty(spec->job_id);
	t->stage = xstrdup_or_empty(spec->stage);
	t->workdir = xstrdup_or_empty(spec->workdir);
	t->request_id = xstrdup_or_empty(spec->request_id);
	t->attempt = spec->attempt > 0 ? spec->attempt : 1;
	t->deadline_ms = spec->deadline_ms;
	json_t *empty = spec->params ? NULL : json_object();
	frame_encode_task(&t->frame, t->task_id, t->job_id, t->stage, t->attempt,
	                  spec->params ? spec->params : empty, spec->inputs, spec->ninputs,
	                  t->workdir, spec->deadline_ms, t->request_id);
	json_decref(empty);
	if (cbs)
		t->cbs = *cbs;
	t->arg = arg;
	t->submit_us = clock_mono_us();
	TAILQ_INSERT_TAIL(&r->queue, t, link);
	r->nqueued++;
	if (spec->deadline_ms > 0) {
		t->deadline_ev = evtimer_new(r->base, task_deadline_cb, t);
		struct timeval tv = tv_ms(spec->deadline_ms - clock_now_us() / 1000);
		evtimer_add(t->deadline_ev, &tv);
	}
	runner_kick(r);
	return t;
}

void module_task_cancel(struct module_task *t, const char *reason)
{
	if (!t || t->r->free_pending)
		return;
	task_stop(t, STOP_CANCEL, reason && *reason ? reason : "job_cancelled");
}

void module_task_detach(struct module_task *t)
{
	if (!t || t->detached)
		return;
	t->detached = true;
	memset(&t->cbs, 0, sizeof t->cbs);
	t->arg = NULL;
	if (!t->r->free_pending)
		task_stop(t, STOP_CANCEL, "job_cancelled");
}

void module_runner_shutdown(struct module_runner *r, unsigned grace_ms,
                            void (*done_cb)(struct module_runner *r, void *arg), void *arg)
{
	if (!r || r->free_pending || r->shutting_down)
		return;
	r->shutting_down = true;
	r->shutdown_cb = done_cb;
	r->shutdown_arg = arg;
	log_debug("module.shutdown", "module runner stopping", LF_STR("module", r->name),
	          LF_UINT("queued", r->nqueued), LF_UINT("running", r->nrunning));
	struct module_task *t;
	while ((t = TAILQ_FIRST(&r->queue)) != NULL) {
		TAILQ_REMOVE(&r->queue, t, link);
		r->nqueued--;
		t->stop = STOP_CANCEL;
		t->stop_reason = xstrdup("shutdown");
		TAILQ_INSERT_TAIL(&r->finishing, t, link);
	}
	evtimer_del(r->restart_ev);
	r->restart_armed = false;
	if (r->pproc)
		proc_retire(r->pproc, false);
	struct module_proc *p;
	TAILQ_FOREACH(p, &r->procs, link)
	{
		if (!r->persistent)
			continue;
		if (p->state == MODULE_PROC_READY) {
			/* stdin stays open while tasks are in flight: the cancels
			 * after the grace must still reach them. */
			if (p->fd_in >= 0 && !p->close_in_pending) {
				frame_encode_shutdown(&p->out);
				proc_flush_soon(p);
			}
			if (p->ntasks == 0)
				proc_close_stdin(p);
			proc_set_state(p, MODULE_PROC_DRAINING);
		} else if (p->state == MODULE_PROC_STARTING) {
			proc_terminate(p, 0);
		}
	}
	struct timeval tv = tv_ms(grace_ms);
	evtimer_add(r->shutdown_ev, &tv);
	runner_kick(r);
}

void module_runner_set_stderr_cb(struct module_runner *r,
                                 void (*cb)(struct module_runner *r, pid_t pid, const char *line,
                                            size_t len, void *arg),
                                 void *arg)
{
	if (!r)
		return;
	r->stderr_cb = cb;
	r->stderr_arg = arg;
}

const char *module_runner_name(const struct module_runner *r)
{
	return r ? r->name : NULL;
}

size_t module_runner_queued(const struct module_runner *r)
{
	return r ? r->nqueued : 0;
}

size_t module_runner_running(const struct module_runner *r)
{
	return r ? r->nrunning : 0;
}

size_t module_runner_procs(const struct module_runner *r)
{
	return r ? r->nprocs : 0;
}

uint64_t module_runner_spawns(const struct module_runner *r)
{
	return r ? r->spawns : 0;
}

uint64_t module_runner_restarts(const struct module_runner *r)
{
	return r ? r->restarts : 0;
}

const char *module_task_id(const struct module_task *t)
{
	return t ? t->task_id : NULL;
}

pid_t module_task_pid(const struct module_task *t)
{
	return t && t->p ? t->p->pid : 0;
}
