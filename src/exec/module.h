/* module: the worker-module supervisor (proto/worker-protocol.md). A runner
 * owns the processes of one module — one per task, or one persistent process
 * serving many — their pipes, timers and the FIFO of tasks waiting for a
 * slot; it knows frames and processes, not jobs.
 *
 * Rules it keeps:
 * - A process is finished only when it has exited AND its stdout and stderr
 *   reached EOF (tmux's JOB_DEAD && JOB_CLOSED). Exits are seen through
 *   SIGCHLD (an evsignal per runner) and waitid(P_PID, pid, WNOWAIT) on each
 *   of the runner's own pids, so the leader stays unreaped — and its process
 *   group id cannot be reused — until the end: signals to the group (kill of
 *   -pid) are always safe. wait4() reaps it last and gives the rusage.
 * - Modules run in their own process group, cwd = the task's workdir
 *   (one-shot) or def->cwd (persistent), every other descriptor closed, all
 *   signal dispositions default and an empty signal mask, and a clean
 *   environment: PATH, LANG, HOME, the def's env, STAGELINE_*. Never the
 *   daemon's. The daemon must ignore SIGPIPE (main() does).
 * - Cancel (owner or deadline): a cancel frame; after cancel_grace SIGTERM to
 *   the group; after kill_grace SIGKILL. A persistent module that does not
 *   answer a cancel within cancel_grace is restarted the same way (TERM, then
 *   KILL): one stuck task cannot be killed alone in a shared process, so its
 *   other in-flight tasks end as PANIC (retryable) and the stuck one as
 *   TIMEOUT or CANCELLED.
 * - A protocol violation (FRAME_BAD, a frame before hello, a second hello,
 *   a frame for a task_id that is not in flight — anything after a task's
 *   result or error included —, a persistent def whose hello lacks
 *   persistent:true, protocol != 1) SIGKILLs the group at once; the tasks it
 *   had end as PANIC with the decoder's message.
 * - Persistent restarts: when the process dies, only its in-flight tasks end
 *   (PANIC, retryable); queued ones wait for the restart (exponential
 *   backoff with jitter, restart_min_ms -> restart_max_ms, reset by the
 *   first answered task). But a process that dies before it was ever ready
 *   (no hello, bad hello, exit or crash at startup) also ends the queued
 *   tasks as PANIC ("module failed to start: ..."), like a spawn failure:
 *   otherwise a broken module would hold the queue until the deadlines. A one-shot def accepts a
 *   hello saying persistent:true (the process serves its one task; stdin is
 *   closed after the answer so it exits).
 * - Backpressure: stdout is read into a buffer of at most pipe_buf_bytes (or
 *   one whole frame when a frame is larger); frames are decoded and delivered
 *   synchronously, at most a fixed number per loop pass, and EV_READ is off
 *   while the buffer is full of undelivered frames. stderr is split into
 *   lines of at most 64 KiB. A flooding module therefore blocks on its pipe;
 *   our memory stays bounded by one frame plus the buffers.
 * - Callbacks never fire from inside a call into this API (submit, cancel,
 *   detach, shutdown, free): they come from the loop. Any API call is
 *   allowed from inside a callback, module_runner_free() included (the
 *   memory goes when the outermost callback returns, redis/pgbouncer style).
 * Ownership: module_runner_new() returns a runner the caller frees with
 * module_runner_free(); a struct module_task belongs to the runner and is
 * valid until its on_done returns (or until module_task_detach()). */
#ifndef SL_EXEC_MODULE_H
#define SL_EXEC_MODULE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "exec/frame.h"

struct event_base;
struct module_runner;
struct module_task;

#define MODULE_DEFAULT_HELLO_TIMEOUT_MS 10000
#define MODULE_DEFAULT_CANCEL_GRACE_MS 5000
#define MODULE_DEFAULT_KILL_GRACE_MS 5000
#define MODULE_DEFAULT_RESTART_MIN_MS 100
#define MODULE_DEFAULT_RESTART_MAX_MS 5000
#define MODULE_DEFAULT_LOG_CAP_BYTES (8u * 1024 * 1024)
#define MODULE_DEFAULT_PIPE_BUF_BYTES (1024u * 1024)
#define MODULE_ENV_PATH "/usr/local/bin:/usr/bin:/bin"

/* How to run one module. Copied by module_runner_new(); 0 means the default
 * for every number. (engine/pipeline.h's struct module_def is the config's
 * view; the engine builds this from it.) */
struct module_runner_def {
	const char *name;
	/* argv[0] is a path (a relative one is made absolute against the
	 * daemon's cwd), or a bare name looked up in MODULE_ENV_PATH (or the
	 * PATH of env), when the runner is created. The other arguments are
	 * passed as they are: a relative path among them is relative to the
	 * child's cwd (the task's workdir). NULL-terminated. */
	const char *const *argv;
	const char *const *env; /* "NAME=value", NULL-terminated; NULL for none.
	                         * They override PATH/LANG/HOME; STAGELINE_* names
	                         * are reserved and dropped. */
	const char *cwd; /* persistent: the process's cwd and HOME; NULL = the daemon's */
	bool persistent;
	/* Tasks at once: processes for one-shot, in-flight tasks for persistent
	 * (then also capped by the hello's concurrency). 0 = 1. */
	unsigned concurrency;
	unsigned hello_timeout_ms; /* spawn -> hello, else panic */
	unsigned cancel_grace_ms; /* cancel frame -> SIGTERM (persistent: restart) */
	unsigned kill_grace_ms; /* SIGTERM -> SIGKILL */
	unsigned restart_min_ms, restart_max_ms; /* persistent restart backoff */
	struct frame_limits limits;
	size_t log_cap_bytes; /* stderr + log text per task delivered, then dropped */
	size_t pipe_buf_bytes; /* unread stdout buffered before reading stops */
};

/* One task. Everything is copied at submit (the task frame is encoded
 * then), so nothing needs to outlive the call. */
struct module_task_spec {
	const char *task_id; /* required */
	const char *job_id, *stage, *request_id; /* NULL = "" */
	const char *workdir; /* required for one-shot modules: cwd and HOME */
	int attempt; /* 0 = 1 */
	const json_t *params; /* an object; NULL = {} */
	const struct frame_input *inputs;
	size_t ninputs;
	int64_t deadline_ms; /* Unix time in ms; 0 = none */
};

enum module_outcome {
	MODULE_COMPLETE, /* a result frame, nothing worse */
	MODULE_ERROR, /* an error frame (before any cancel) */
	MODULE_PANIC, /* exit/signal/closed pipe/protocol violation/spawn failure */
	MODULE_TIMEOUT, /* the deadline passed without a result */
	MODULE_CANCELLED, /* module_task_cancel() (or shutdown) without a result */
};
const char *module_outcome_name(enum module_outcome o);

/* What on_done gets. Pointers are valid for the callback's duration (take a
 * reference / copy to keep them). */
struct module_task_result {
	enum module_outcome outcome;
	bool retryable; /* ERROR: the frame's; PANIC, TIMEOUT: true; else false */
	const char *message; /* ERROR: the module's; otherwise why; "" on COMPLETE */
	/* ERROR only (the frame's fields). */
	const char *error_code; /* NULL when absent */
	enum frame_category category;
	const json_t *detail; /* NULL when absent */
	/* COMPLETE only. */
	const json_t *output; /* object */
	const json_t *module_resources; /* the result's `resources`, NULL when absent */
	/* The process: one-shot modules only (a persistent process is shared:
	 * pid is reported, the rest is -1/0). */
	pid_t pid; /* 0 when it never started */
	int exit_code; /* -1 unless it exited normally */
	int term_signal; /* 0 unless killed by a signal */
	double cpu_seconds; /* ru_utime + ru_stime */
	int64_t max_rss_bytes; /* ru_maxrss * 1024 */
	/* Durations in ms: submit -> start (spawn or dispatch), spawn -> hello
	 * (persistent: of the serving process), task sent -> done. -1 when the
	 * step never happened. */
	double queued_ms, spawn_to_hello_ms, hello_to_done_ms;
	uint64_t log_bytes_dropped; /* stderr+log text past log_cap_bytes */
	bool protocol_error; /* PANIC because the module broke the protocol */
	const char *engine_id; /* "module@version" from the hello; "" before one */
};

/* Callbacks; any may be NULL. */
struct module_task_cbs {
	/* One-shot: the process was spawned; persistent: the task frame was
	 * queued to the serving process. */
	void (*on_start)(struct module_task *t, pid_t pid, void *arg);
	/* progress, log, artifact and warning frames (f is valid for the call;
	 * log frames past the cap are dropped, not delivered). */
	void (*on_frame)(struct module_task *t, const struct frame *f, void *arg);
	/* One stderr line without its newline (one-shot modules; persistent
	 * stderr goes to the runner's hook), and once, before on_done, the
	 * marker "[stage.log truncated: N bytes dropped]" when the cap cut. */
	void (*on_stderr_line)(struct module_task *t, const char *line, size_t len, void *arg);
	/* Exactly once, unless detached or the runner was freed first. */
	void (*on_done)(struct module_task *t, const struct module_task_result *res, void *arg);
};

/* A runner for def on base. Returns NULL (logged) when def is unusable (no
 * name or argv). Persistent processes start lazily on the first submit. */
struct module_runner *module_runner_new(struct event_base *base,
                                        const struct module_runner_def *def)
        __attribute__((warn_unused_result));

/* Kills everything at once: SIGKILL to every process group, then reaps them
 * (waiting up to ~1 s in total for the kernel to finish them: only at
 * teardown). No callback fires, every task handle becomes invalid. Safe from
 * inside a callback (the memory goes when it returns). NULL is a no-op. */
void module_runner_free(struct module_runner *r);

/* Queues a task (FIFO) and returns its handle; it starts when a slot is
 * free (one-shot) or the persistent process can take it. NULL (logged) when
 * spec lacks a task_id, a one-shot spec lacks a workdir, or the runner is
 * shutting down. */
struct module_task *module_runner_submit(struct module_runner *r,
                                         const struct module_task_spec *spec,
                                         const struct module_task_cbs *cbs, void *arg);

/* Stops the task: queued, it ends CANCELLED at once (from the loop);
 * running, a cancel frame with reason ("job_cancelled", "shutdown", ...) is
 * sent and the escalation above starts. It ends CANCELLED unless its result
 * arrives first. No-op once answered or done. */
void module_task_cancel(struct module_task *t, const char *reason);

/* The owner goes away: no callback of t fires any more, and it is cancelled
 * (reason "job_cancelled") and cleaned up as usual. t is invalid after. */
void module_task_detach(struct module_task *t);

/* Graceful stop: no new submit; queued tasks end CANCELLED ("shutdown");
 * a persistent process gets `shutdown`, and stdin EOF once nothing is in
 * flight (until then its stdin stays open for the cancels). Running tasks may
 * finish for grace_ms, then get a cancel (reason "shutdown") with the usual
 * escalation; a persistent process still alive then gets SIGTERM, then
 * SIGKILL. done_cb fires once (from the loop) when no process and no task
 * remain; then free the runner. */
void module_runner_shutdown(struct module_runner *r, unsigned grace_ms,
                            void (*done_cb)(struct module_runner *r, void *arg), void *arg);

/* Persistent modules: every stderr line of the shared process (lines cannot
 * be attributed to a task). Without a hook they are logged at info as
 * module.stderr, up to log_cap_bytes per process. */
void module_runner_set_stderr_cb(struct module_runner *r,
                                 void (*cb)(struct module_runner *r, pid_t pid, const char *line,
                                            size_t len, void *arg),
                                 void *arg);

const char *module_runner_name(const struct module_runner *r);
/* Tasks waiting for a slot / started and not done / processes not yet
 * finished (dying ones included). */
size_t module_runner_queued(const struct module_runner *r);
size_t module_runner_running(const struct module_runner *r);
size_t module_runner_procs(const struct module_runner *r);
/* Processes spawned so far, and persistent restarts. */
uint64_t module_runner_spawns(const struct module_runner *r);
uint64_t module_runner_restarts(const struct module_runner *r);

const char *module_task_id(const struct module_task *t);
pid_t module_task_pid(const struct module_task *t); /* 0 while queued */

/* The state machines, for tests and logs. */
enum module_task_state {
	MODULE_TASK_QUEUED, /* waiting for a slot */
	MODULE_TASK_STARTING, /* one-shot: spawned, waiting for hello */
	MODULE_TASK_RUNNING, /* the task frame was sent */
	MODULE_TASK_ANSWERED, /* one-shot: result/error seen, waiting for exit+EOF */
	MODULE_TASK_DONE,
	MODULE_TASK_NSTATES
};
enum module_proc_state {
	MODULE_PROC_STARTING, /* spawned, waiting for hello */
	MODULE_PROC_READY, /* hello seen */
	MODULE_PROC_DRAINING, /* takes no task: answered (one-shot) or shutdown */
	MODULE_PROC_KILLING, /* SIGTERM/SIGKILL under way, or being restarted */
	MODULE_PROC_DEAD, /* exited and both pipes closed */
	MODULE_PROC_NSTATES
};
const char *module_task_state_name(enum module_task_state s);
const char *module_proc_state_name(enum module_proc_state s);
bool module_task_state_allowed(enum module_task_state from, enum module_task_state to);
bool module_proc_state_allowed(enum module_proc_state from, enum module_proc_state to);

/* Restart delay after `attempt` failures in a row (0 = the first): uniform
 * in [min, min(max, min * 2^(attempt+1))], picked by rnd. Pure. */
unsigned module_backoff_ms(unsigned min_ms, unsigned max_ms, unsigned attempt, uint32_t rnd);

#endif
