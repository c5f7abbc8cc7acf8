/* job: jobs and their tasks as the API sees them — submission (batched into
 * shared transactions), reads with the per-stage breakdown, keyset listing —
 * and the state machines of ARCHITECTURE §4. Every status change is
 * validated against the tables here, written with its job_events row (the
 * job's gapless seq) in the same transaction, and only after the commit
 * logged, counted and published on the event bus. */
#ifndef SL_ENGINE_JOB_H
#define SL_ENGINE_JOB_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct engine;
struct pipeline;
struct pg_error;

enum job_status {
	JOB_PENDING,
	JOB_QUEUED,
	JOB_RUNNING,
	JOB_COMPLETED,
	JOB_FAILED,
	JOB_CANCELLED,
	JOB_NSTATUS
};

enum task_status {
	TASK_PENDING,
	TASK_READY,
	TASK_RUNNING,
	TASK_COMPLETED,
	TASK_FAILED,
	TASK_SKIPPED,
	TASK_CANCELLED,
	TASK_NSTATUS
};

const char *job_status_name(enum job_status s);
bool job_status_parse(const char *s, enum job_status *out);
bool job_status_terminal(enum job_status s);
/* The transition tables (ARCHITECTURE §4). */
bool job_status_edge_ok(enum job_status from, enum job_status to);
const char *task_status_name(enum task_status s);
bool task_status_parse(const char *s, enum task_status *out);
bool task_status_edge_ok(enum task_status from, enum task_status to);
/* The lifecycle event kind of a job edge ("job.lifecycle.enqueue"), NULL
 * when the edge has none. */
const char *job_lifecycle_kind(enum job_status from, enum job_status to);

/* A pending operation; job_op_cancel() guarantees its callback never runs. */
struct job_op;
void job_op_cancel(struct job_op *op);

struct job_submit {
	const char *project_id;
	const struct pipeline *pipeline;
	const json_t *params; /* effective: declared defaults filled in */
	const json_t *input; /* NULL when none */
	const char *idempotency_key; /* NULL when none */
	unsigned char request_hash[32]; /* SHA-256 of the canonical request */
	const char *request_id;
	/* resume_from: {job_id, stage} as given (kept on the job), and per
	 * stage (pipeline order) whether it is taken over from that job:
	 * created skipped with skip_reason "reused". NULL for none. */
	const json_t *resume_from;
	const bool *reused;
	/* The key of an uploaded file (POST /v1/uploads) the root stages get as
	 * input "upload"; NULL for none. */
	const char *input_upload;
};

enum job_submit_result {
	JOB_SUBMIT_CREATED,
	JOB_SUBMIT_EXISTING, /* same Idempotency-Key, same request: the first job */
	JOB_SUBMIT_CONFLICT, /* same Idempotency-Key, another request */
	JOB_SUBMIT_ERROR,
};

/* job is a new reference the callback owns (NULL for CONFLICT and ERROR),
 * rev its revision (the ETag); err is set for ERROR. */
typedef void (*job_submit_cb)(enum job_submit_result r, json_t *job, int64_t rev,
                              const struct pg_error *err, void *arg);
/* Submissions made in the same loop pass share one transaction. */
struct job_op *job_submit(struct engine *e, const struct job_submit *s, job_submit_cb cb,
                          void *arg);

/* job (owned by the callback) is NULL when no job of that project has that
 * id; rev is its revision (the ETag). */
typedef void (*job_get_cb)(json_t *job, int64_t rev, const struct pg_error *err, void *arg);
struct job_op *job_get(struct engine *e, const char *project_id, const char *job_id, job_get_cb cb,
                       void *arg);
/* The revision last seen for the job, from this instance's reads and
 * events: lets a conditional GET answer 304 without a database round trip. */
bool job_rev_cached(struct engine *e, const char *project_id, const char *job_id, int64_t *rev);

struct job_list_query {
	const char *project_id;
	const char *status; /* NULL: any */
	const char *pipeline; /* NULL: any */
	int64_t created_after_us; /* 0: any */
	const char *cursor_id; /* NULL: from the newest */
	size_t limit; /* 1..200 */
};
/* page = {data: [...], next_cursor: string|null}, owned by the callback. */
typedef void (*job_list_cb)(json_t *page, const struct pg_error *err, void *arg);
struct job_op *job_list(struct engine *e, const struct job_list_query *q, job_list_cb cb,
                        void *arg);

/* --- Status changes ----------------------------------------------------
 * The one way a status changes (ARCHITECTURE §1). Changes are collected in
 * a job_txn and written by job_txn_commit() in ONE transaction: each edge is
 * checked against the tables above when it is added, and fenced in the
 * database by the status it expects (and, for tasks, the lease token), so a
 * late or duplicate change is simply not applied. Each applied change gets
 * its job_events row (the job's next seq) in the same transaction; after the
 * commit it is logged, counted and published on the event bus. */

struct job_ref {
	const char *job_id, *project_id, *pipeline, *request_id;
};

struct task_ref {
	const char *task_id, *job_id, *project_id, *pipeline, *stage, *request_id;
};

struct task_set_opts {
	const char *kind; /* job.module.* for module edges; NULL: job.stage.* */
	const char *lease_token; /* fence: the change applies only under this lease */
	const char *skip_reason; /* to skipped */
	const json_t *error; /* to failed (and kept on retries) */
	int64_t not_before_us; /* to ready after a retryable failure */
	/* Applies only if this batch's change of the task's job applies too:
	 * a cancel moves the job and its stages together or not at all. */
	bool with_job;
	const json_t *data; /* the event's own fields (module, attempt, pid, ...);
	                     * an "engine_id" member is also kept on the task */
	const json_t *output; /* to completed: the module's result output */
	const json_t *artifacts; /* to completed: the stored files, for dependents */
	/* The end of the running attempt, written to its task_attempts row:
	 * {outcome, pid, exit_code, signal, error, fetch_ms, run_ms, upload_ms,
	 * cpu_seconds, max_rss_bytes} (absent members stay null). */
	const json_t *attempt_end;
	/* running -> ready without spending a retry (shutdown, lost lease). */
	bool keep_retries;
};

struct job_txn;
struct job_txn *job_txn_new(struct engine *e);
/* Appends a change; false (logged, nothing appended) for an edge the state
 * machine doesn't have. */
bool job_set_status(struct job_txn *t, const struct job_ref *j, enum job_status from,
                    enum job_status to, const char *reason, const json_t *error)
        __attribute__((warn_unused_result));
/* As job_set_status, with the event's own fields (data, an object). */
bool job_set_status_data(struct job_txn *t, const struct job_ref *j, enum job_status from,
                         enum job_status to, const char *reason, const json_t *error,
                         const json_t *data) __attribute__((warn_unused_result));
/* As job_set_status_data, applied only if this batch's change of task
 * task_id applies: a single-stage job settles with its stage's outcome in
 * one transaction. task_id's change must be in the same batch. */
bool job_set_status_after(struct job_txn *t, const struct job_ref *j, enum job_status from,
                          enum job_status to, const char *reason, const json_t *error,
                          const json_t *data, const char *task_id)
        __attribute__((warn_unused_result));
bool task_set_status(struct job_txn *t, const struct task_ref *k, enum task_status from,
                     enum task_status to, const char *reason, const struct task_set_opts *o)
        __attribute__((warn_unused_result));
size_t job_txn_size(const struct job_txn *t);
/* applied: how many changes the database took (the others found another
 * status or lease there), which[i] whether change i (in the order they were
 * added) did; err: the transaction failed and nothing applied. */
typedef void (*job_txn_cb)(size_t applied, size_t total, const bool *which,
                           const struct pg_error *err, void *arg);
/* Writes the batch; the txn frees itself after cb. */
void job_txn_commit(struct job_txn *t, job_txn_cb cb, void *arg);
/* The owner went away: cb won't run, the changes still commit. */
void job_txn_detach(struct job_txn *t);
/* Frees a batch never committed. */
void job_txn_free(struct job_txn *t);

/* A task of the project's job: {attempts, files} (owned by the callback):
 * attempts oldest first, each {attempt, instance_id, pid, started_at,
 * ended_at, outcome, exit_code, signal, error, wait_ms, fetch_ms, run_ms,
 * upload_ms, cpu_seconds, max_rss_bytes}; files are what its latest
 * completed attempt stored, each {name, type, format, role, size_bytes}.
 * NULL when there is no such task. */
struct job_op *job_task_attempts(struct engine *e, const char *project_id, const char *job_id,
                                 const char *task_id, job_list_cb cb, void *arg);

/* The project's job's events with seq > after_seq, oldest first, at most
 * limit: a JSON array (owned by the callback) of {id, seq, ts, kind, job_id,
 * task_id, stage, status_from, status_to, reason, request_id, data}. */
struct job_op *job_events_after(struct engine *e, const char *project_id, const char *job_id,
                                int64_t after_seq, int limit, job_list_cb cb, void *arg);

/* What the job's pipeline.log is rendered from (pipelog_render_tasks()):
 * {job_id, pipeline, status, tasks_running, events, tasks}, NULL when the
 * project has no such job. */
struct job_op *job_log_source(struct engine *e, const char *project_id, const char *job_id,
                              job_list_cb cb, void *arg);

/* The project's job's input: {job_id, input, upload} (input: the JSON value
 * submitted, null when none; upload: the upload id, or null), NULL when the
 * project has no such job. */
struct job_op *job_input(struct engine *e, const char *project_id, const char *job_id,
                         job_list_cb cb, void *arg);

/* The project's events after (txid, after_id) in transaction order, only
 * from transactions older than every running one, at most limit: the
 * callback gets {events: [... each with "txid" ...], held_back: N (later
 * events a running transaction still holds back), xmin: "txid"}.
 * txid "0" with after_id 0 starts at the beginning. */
struct job_op *project_events_after(struct engine *e, const char *project_id, const char *txid,
                                    int64_t after_id, int limit, job_list_cb cb, void *arg);
/* The txid (a JSON string) of the project's event id, NULL when none. */
struct job_op *event_txid(struct engine *e, const char *project_id, int64_t id, job_list_cb cb,
                          void *arg);

/* SHA-256 of the request body in canonical form (sorted keys, compact):
 * what an Idempotency-Key is bound to. Pure. */
void job_request_hash(const json_t *body, unsigned char out[32]);

/* Opaque keyset cursors: "c1" + the base64url of the last job id. */
char *job_cursor_encode(const char *job_id);
bool job_cursor_decode(const char *cursor, char out[37]);

/* The API representation (pure): the job row fields plus the stages array
 * built from tasks (a JSON array as PostgreSQL aggregates it). now_us closes
 * intervals that are still open (waits, running durations). */
struct job_row {
	const char *id, *project_id, *pipeline, *status, *current_stage, *logs_key;
	const json_t *params;
	const json_t *error;
	int attempt;
	double progress;
	int64_t created_us, queued_us, started_us, completed_us;
	int64_t event_seq, rev;
};
json_t *job_to_json(const struct job_row *j, const json_t *tasks, int64_t now_us);
/* The union of [ready_at, started_at or now) over the stages, in ms: parallel
 * waits count once. Pure; exposed for tests. */
int64_t job_total_wait_ms(const int64_t *ready_us, const int64_t *started_us, size_t n,
                          int64_t now_us);

#endif
