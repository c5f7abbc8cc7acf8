/* scheduler: this instance's share of running jobs (ARCHITECTURE §5, §10).
 * It claims ready tasks in batches under leases (global and per-module
 * slots), fetches each task's inputs from the store into a scratch
 * directory, runs it in its module, uploads what it produced, and commits
 * the outcome — completion, typed failure, retry with backoff — fenced by
 * the lease, in shared transactions. After each commit it advances the
 * affected jobs' DAGs from a fresh read (ready, skipped, job settled). A
 * heartbeat renews the leases and notices cancelled jobs and lost leases;
 * a rescuer returns expired leases of dead instances to ready and re-advances
 * jobs left between two steps by a crash. Wake-ups come from NOTIFY with a
 * slow poll as the safety net. */
#ifndef SL_ENGINE_SCHEDULER_H
#define SL_ENGINE_SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct engine;
struct store;
struct scheduler;
struct scrub;

/* The channel every change that makes a task ready NOTIFYs. */
#define SCHEDULER_READY_CHANNEL "stageline_ready"
#define SCHEDULER_CLAIM_MAX 1000 /* tasks one claim statement takes */
#define SCHEDULER_BACKOFF_CAP_MS (5 * 60 * 1000)

struct scheduler_opts {
	int max_concurrency; /* tasks at once on this instance */
	int64_t lease_ms, heartbeat_ms, rescue_every_ms, poll_ms;
	int64_t log_flush_ms; /* a running stage's log is stored this often */
	const char *scratch_dir; /* absolute */
	size_t max_frame_bytes;
	/* privacy.scrub: module text (stderr, log, progress and warning frames,
	 * error messages) is scrubbed before it reaches the stage log, live
	 * events, task errors and the process log. Borrowed; NULL = off. */
	const struct scrub *scrub;
};

/* Starts claiming at once. engine and store are borrowed. NULL (logged) when
 * the scratch directory cannot be made or a module runner cannot be built. */
struct scheduler *scheduler_start(struct engine *e, struct store *store,
                                  const struct scheduler_opts *o)
        __attribute__((warn_unused_result));
/* A NOTIFY on SCHEDULER_READY_CHANNEL: claim soon. */
void scheduler_wake(struct scheduler *s);
/* A NOTIFY on the jobs channel ("<job id> <rev>"): if a task of that job
 * runs here, check at once whether it should stop. */
void scheduler_on_job_notify(struct scheduler *s, const char *payload);
/* Re-reads the jobs and moves what can move (ready, skipped, settled). */
void scheduler_advance(struct scheduler *s, const char *job_id);
/* SIGTERM: claim nothing more; running tasks may finish for grace_ms, then
 * they are cancelled and returned to ready without spending a retry. done
 * fires (from the loop) once nothing runs or waits for a commit. */
void scheduler_drain(struct scheduler *s, int64_t grace_ms, void (*done)(void *arg), void *arg);
/* Stops everything at once (modules killed, no commit). NULL is a no-op. */
void scheduler_free(struct scheduler *s);
size_t scheduler_running(const struct scheduler *s);
/* The stage log so far of a task running here, from logical byte `from`
 * (0: all of it): borrowed until the next loop pass; *total is every byte
 * it ever held, *skipped what was dropped between `from` and the text
 * returned (a log past its memory bound keeps its head and its tail). NULL
 * when the task does not run here. */
const char *scheduler_task_log(struct scheduler *s, const char *task_id, uint64_t from, size_t *len,
                               uint64_t *skipped, uint64_t *total);

/* Retry delay after `retries` earlier retries: exponential with full jitter,
 * uniform in [0, min(cap, base * 2^retries)], picked by rnd in [0, 1). Pure. */
int64_t scheduler_backoff_ms(int64_t base_ms, int64_t cap_ms, int retries, double rnd);

/* The DAG step of one job, pure (engine/scheduler.c runs it on a fresh read).
 * tasks in stage order; deps[i] lists indices of task i's dependencies. */
enum adv_task_status {
	ADV_PENDING,
	ADV_READY,
	ADV_RUNNING,
	ADV_COMPLETED,
	ADV_FAILED,
	ADV_SKIPPED,
	ADV_CANCELLED
};
struct adv_task {
	enum adv_task_status status;
	bool required;
	bool reused; /* skipped with skip_reason "reused" */
	const size_t *deps;
	size_t ndeps;
	/* out */
	enum adv_task_status next; /* == status when nothing changes */
	size_t cause; /* SKIPPED: the index of the failed dependency */
};
enum adv_job { ADV_JOB_NOTHING, ADV_JOB_COMPLETE, ADV_JOB_FAIL };
/* Fills next/cause for every task; returns what happens to the job and, for
 * ADV_JOB_FAIL, *failed = the first required failed task. */
enum adv_job scheduler_advance_plan(struct adv_task *t, size_t n, size_t *failed);

#endif
