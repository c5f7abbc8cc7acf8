/* Jobs: the state tables, the submission batcher, reads and listing.
 *
 * Submissions arriving in the same loop pass are written by ONE statement
 * (data-modifying CTEs over jsonb_to_recordset): the jobs, their tasks and
 * their first events, so a burst of N requests costs one commit instead of
 * N (TOOLCHAIN.md §10). Idempotency keys are settled inside it with ON
 * CONFLICT DO NOTHING and a second statement of the same transaction that
 * reads the rows that won. Only after the commit are the events logged,
 * counted and published, so nothing is announced that might roll back.
 *
 * Reads fetch the job row with its tasks aggregated in the same statement
 * (one snapshot) and build the representation here (job_to_json, pure). */
#include "engine/job.h"

#include <event2/event.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/app.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/trace.h"
#include "core/xmalloc.h"
#include "db/listen.h"
#include "db/pgjson.h"
#include "db/pool.h"
#include "engine/artifacts.h"
#include "engine/engine_int.h"
#include "engine/events.h"
#include "engine/pipeline.h"

/* --- State machines ------------------------------------------------------ */

static const char *const job_status_names[JOB_NSTATUS] = {
        "pending", "queued", "running", "completed", "failed", "cancelled",
};

static const char *const task_status_names[TASK_NSTATUS] = {
        "pending", "ready", "running", "completed", "failed", "skipped", "cancelled",
};

/* ARCHITECTURE §4: pending → queued → running → completed | failed |
 * cancelled; terminal → queued only through retry; cancel from any
 * non-terminal state. */
static const bool job_edges[JOB_NSTATUS][JOB_NSTATUS] = {
        [JOB_PENDING] = {[JOB_QUEUED] = true, [JOB_CANCELLED] = true},
        [JOB_QUEUED] = {[JOB_RUNNING] = true, [JOB_CANCELLED] = true, [JOB_FAILED] = true},
        [JOB_RUNNING] = {[JOB_COMPLETED] = true,
                         [JOB_FAILED] = true,
                         [JOB_CANCELLED] = true,
                         [JOB_QUEUED] = true},
        [JOB_COMPLETED] = {[JOB_QUEUED] = true},
        [JOB_FAILED] = {[JOB_QUEUED] = true},
        [JOB_CANCELLED] = {[JOB_QUEUED] = true},
};

/* pending → ready → running → completed | failed | skipped | cancelled; a
 * retryable failure goes running → ready; pending and ready tasks can be
 * skipped or cancelled; retry-from-stage resets settled tasks to pending. */
static const bool task_edges[TASK_NSTATUS][TASK_NSTATUS] = {
        [TASK_PENDING] = {[TASK_READY] = true, [TASK_SKIPPED] = true, [TASK_CANCELLED] = true},
        [TASK_READY] = {[TASK_RUNNING] = true,
                        [TASK_SKIPPED] = true,
                        [TASK_CANCELLED] = true,
                        [TASK_PENDING] = true},
        [TASK_RUNNING] = {[TASK_COMPLETED] = true,
                          [TASK_FAILED] = true,
                          [TASK_READY] = true,
                          [TASK_CANCELLED] = true},
        [TASK_COMPLETED] = {[TASK_PENDING] = true},
        [TASK_FAILED] = {[TASK_PENDING] = true},
        [TASK_SKIPPED] = {[TASK_PENDING] = true},
        [TASK_CANCELLED] = {[TASK_PENDING] = true},
};

const char *job_status_name(enum job_status s)
{
	return s < JOB_NSTATUS ? job_status_names[s] : "unknown";
}

bool job_status_parse(const char *s, enum job_status *out)
{
	for (int i = 0; i < JOB_NSTATUS; i++) {
		if (strcmp(s, job_status_names[i]) == 0) {
			*out = (enum job_status)i;
			return true;
		}
	}
	return false;
}

bool job_status_terminal(enum job_status s)
{
	return s == JOB_COMPLETED || s == JOB_FAILED || s == JOB_CANCELLED;
}

bool job_status_edge_ok(enum job_status from, enum job_status to)
{
	return from < JOB_NSTATUS && to < JOB_NSTATUS && job_edges[from][to];
}

const char *task_status_name(enum task_status s)
{
	return s < TASK_NSTATUS ? task_status_names[s] : "unknown";
}

bool task_status_parse(const char *s, enum task_status *out)
{
	for (int i = 0; i < TASK_NSTATUS; i++) {
		if (strcmp(s, task_status_names[i]) == 0) {
			*out = (enum task_status)i;
			return true;
		}
	}
	return false;
}

bool task_status_edge_ok(enum task_status from, enum task_status to)
{
	return from < TASK_NSTATUS && to < TASK_NSTATUS && task_edges[from][to];
}

const char *job_lifecycle_kind(enum job_status from, enum job_status to)
{
	if (!job_status_edge_ok(from, to))
		return NULL;
	switch (to) {
	case JOB_QUEUED:
		return from == JOB_PENDING ? "job.lifecycle.enqueue" : "job.lifecycle.retry";
	case JOB_RUNNING: return "job.lifecycle.start";
	case JOB_COMPLETED: return "job.lifecycle.complete";
	case JOB_FAILED: return "job.lifecycle.fail";
	case JOB_CANCELLED: return "job.lifecycle.cancel";
	default: return NULL;
	}
}

/* --- The revision cache (cheap conditional GETs) ------------------------- */

struct rev_entry {
	char id[ID_UUID_LEN + 1]; /* "" = empty slot */
	char project[64];
	int64_t rev;
};

struct rev_cache {
	struct rev_entry *slots;
	size_t cap; /* a power of two, twice the entry limit */
	size_t n;
	size_t max;
};

static uint64_t fnv1a(const char *s)
{
	uint64_t h = 1469598103934665603ULL;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

static struct rev_cache *rev_cache_new(size_t max)
{
	struct rev_cache *c = xcalloc(1, sizeof *c);
	c->max = max;
	c->cap = 16;
	while (c->cap < max * 2)
		c->cap *= 2;
	c->slots = xcalloc(c->cap, sizeof *c->slots);
	return c;
}

static void rev_cache_free(struct rev_cache *c)
{
	if (c == NULL)
		return;
	free(c->slots);
	free(c);
}

static struct rev_entry *rev_cache_slot(struct rev_cache *c, const char *id)
{
	size_t i = (size_t)fnv1a(id) & (c->cap - 1);
	while (c->slots[i].id[0] && strcmp(c->slots[i].id, id) != 0)
		i = (i + 1) & (c->cap - 1);
	return &c->slots[i];
}

/* Remembers (or, with only_known, refreshes) a job's revision. A full cache
 * starts over: it is an optimisation, losing it costs one query each. */
static void rev_cache_put(struct rev_cache *c, const char *id, const char *project, int64_t rev,
                          bool only_known)
{
	if (strlen(id) != ID_UUID_LEN || strlen(project) >= sizeof c->slots[0].project)
		return;
	struct rev_entry *s = rev_cache_slot(c, id);
	if (s->id[0] == '\0') {
		if (only_known)
			return;
		if (c->n >= c->max) {
			memset(c->slots, 0, c->cap * sizeof *c->slots);
			c->n = 0;
			s = rev_cache_slot(c, id);
		}
		memcpy(s->id, id, ID_UUID_LEN + 1);
		snprintf(s->project, sizeof s->project, "%s", project);
		c->n++;
	}
	if (rev > s->rev)
		s->rev = rev;
}

bool job_rev_cached(struct engine *e, const char *project_id, const char *job_id, int64_t *rev)
{
	/* Without a live LISTEN, another instance's change could go unseen. */
	if (e->listener == NULL || !pg_listener_is_live(e->listener))
		return false;
	if (strlen(job_id) != ID_UUID_LEN)
		return false;
	struct rev_entry *s = rev_cache_slot(e->revs, job_id);
	if (s->id[0] == '\0' || strcmp(s->project, project_id) != 0)
		return false;
	*rev = s->rev;
	return true;
}

bool job_rev_known(struct engine *e, const char *job_id, int64_t *rev)
{
	if (strlen(job_id) != ID_UUID_LEN)
		return false;
	struct rev_entry *s = rev_cache_slot(e->revs, job_id);
	if (s->id[0] == '\0')
		return false;
	*rev = s->rev;
	return true;
}

void job_rev_note(struct engine *e, const char *job_id, const char *project_id, int64_t rev)
{
	rev_cache_put(e->revs, job_id, project_id, rev, false);
}

void engine_set_listener(struct engine *e, struct pg_listener *l)
{
	e->listener = l;
}

void engine_on_jobs_notify(struct engine *e, const char *payload)
{
	char id[ID_UUID_LEN + 1];
	const char *sp = strchr(payload, ' ');
	if (sp == NULL || sp - payload != ID_UUID_LEN)
		return;
	memcpy(id, payload, ID_UUID_LEN);
	id[ID_UUID_LEN] = '\0';
	char *end;
	long long rev = strtoll(sp + 1, &end, 10);
	if (*end != '\0' || rev <= 0 || !id_uuid_valid(id))
		return;
	rev_cache_put(e->revs, id, "", rev, true);
}

void engine_resync(struct engine *e)
{
	memset(e->revs->slots, 0, e->revs->cap * sizeof *e->revs->slots);
	e->revs->n = 0;
}

static void rev_on_event_cb(const struct sl_event *ev, void *arg)
{
	struct engine *e = arg;
	if (ev->rev > 0)
		rev_cache_put(e->revs, ev->job_id, ev->project_id, ev->rev, true);
}

/* --- Representation ------------------------------------------------------ */

static json_t *ts_json(int64_t us)
{
	if (us <= 0)
		return json_null();
	char b[40];
	clock_fmt_rfc3339_us(b, sizeof b, us);
	return json_string(b);
}

static int64_t json_us(const json_t *o, const char *key)
{
	const json_t *v = json_object_get(o, key);
	return json_is_integer(v) ? json_integer_value(v) : 0;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return x < y ? -1 : x > y;
}

int64_t job_total_wait_ms(const int64_t *ready_us, const int64_t *started_us, size_t n,
                          int64_t now_us)
{
	/* Intervals [ready, started or now), sorted by start, merged. */
	int64_t(*iv)[2] = xcalloc(n ? n : 1, sizeof *iv);
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		if (ready_us[i] <= 0)
			continue;
		int64_t end = started_us[i] > 0 ? started_us[i] : now_us;
		if (end > ready_us[i]) {
			iv[k][0] = ready_us[i];
			iv[k][1] = end;
			k++;
		}
	}
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
	free(iv);
	return total / 1000;
}

static json_t *jnull_or_str(const char *s)
{
	return s && *s ? json_string(s) : json_null();
}

json_t *job_to_json(const struct job_row *j, const json_t *tasks, int64_t now_us)
{
	json_t *o = json_object();
	json_object_set_new(o, "id", json_string(j->id));
	json_object_set_new(o, "pipeline", json_string(j->pipeline));
	json_object_set_new(o, "status", json_string(j->status));
	json_object_set_new(o, "progress", json_real(j->progress));
	json_object_set_new(o, "current_stage", jnull_or_str(j->current_stage));
	json_object_set_new(o, "attempt", json_integer(j->attempt));
	json_object_set_new(o, "created_at", ts_json(j->created_us));
	json_object_set_new(o, "queued_at", ts_json(j->queued_us));
	json_object_set_new(o, "started_at", ts_json(j->started_us));
	json_object_set_new(o, "completed_at", ts_json(j->completed_us));
	if (j->started_us > 0)
		json_object_set_new(o, "duration_ms",
		                    json_integer(((j->completed_us > 0 ? j->completed_us : now_us) -
		                                  j->started_us) /
		                                 1000));
	else
		json_object_set_new(o, "duration_ms", json_null());
	json_object_set_new(o, "error", j->error ? json_deep_copy(j->error) : json_null());
	json_object_set_new(o, "logs_key", jnull_or_str(j->logs_key));
	json_object_set_new(o, "params", j->params ? json_deep_copy(j->params) : json_object());
	json_object_set_new(o, "event_seq", json_integer(j->event_seq));
	/* job_get() fills in why a queued job waits; elsewhere only since */
	json_object_set_new(o, "queue",
	                    strcmp(j->status, "queued") == 0
	                            ? json_pack("{s:o, s:n, s:n, s:n}", "since",
	                                        ts_json(j->queued_us), "position", "blocked_by",
	                                        "module")
	                            : json_null());

	size_t n = json_array_size(tasks);
	double progress_sum = 0;
	const char *running_stage = NULL;
	int64_t *ready = xcalloc(n ? n : 1, sizeof *ready);
	int64_t *started = xcalloc(n ? n : 1, sizeof *started);
	json_t *stages = json_array();
	for (size_t i = 0; i < n; i++) {
		const json_t *t = json_array_get(tasks, i);
		ready[i] = json_us(t, "ready_us");
		started[i] = json_us(t, "started_us");
		int64_t completed = json_us(t, "completed_us");
		json_t *s = json_object();
		json_object_set(s, "stage", json_object_get(t, "stage"));
		json_object_set(s, "stage_number", json_object_get(t, "stage_number"));
		json_object_set(s, "task_id", json_object_get(t, "id"));
		json_object_set(s, "module", json_object_get(t, "module"));
		json_t *engine_id = json_object_get(t, "engine_id");
		json_object_set_new(s, "engine_id",
		                    engine_id ? json_incref(engine_id) : json_null());
		json_object_set(s, "status", json_object_get(t, "status"));
		json_object_set_new(s, "started_at", ts_json(started[i]));
		json_object_set_new(s, "completed_at", ts_json(completed));
		json_t *dur = json_object_get(t, "duration_ms");
		if (json_is_integer(dur))
			json_object_set(s, "duration_ms", dur);
		else if (started[i] > 0)
			json_object_set_new(
			        s, "duration_ms",
			        json_integer(((completed > 0 ? completed : now_us) - started[i]) /
			                     1000));
		else
			json_object_set_new(s, "duration_ms", json_null());
		json_object_set(s, "required", json_object_get(t, "required"));
		json_object_set(s, "retries", json_object_get(t, "retries"));
		json_object_set(s, "attempt", json_object_get(t, "attempt"));
		json_t *err = json_object_get(t, "error");
		json_object_set_new(s, "error", err ? json_incref(err) : json_null());
		json_t *skip = json_object_get(t, "skip_reason");
		json_object_set_new(s, "skip_reason", skip ? json_incref(skip) : json_null());
		json_object_set_new(s, "ready_at", ts_json(ready[i]));
		if (ready[i] > 0) {
			/* ready_at and started_at come from two transactions'
			 * clocks: never show a negative wait */
			int64_t w = ((started[i] > 0 ? started[i] : now_us) - ready[i]) / 1000;
			json_object_set_new(s, "wait_ms", json_integer(w > 0 ? w : 0));
		} else
			json_object_set_new(s, "wait_ms", json_null());
		json_t *progress = json_object_get(t, "progress");
		json_object_set_new(
		        s, "progress",
		        json_real(json_is_number(progress) ? json_number_value(progress) : 0));
		json_t *deps = json_object_get(t, "depends_on");
		json_object_set_new(s, "depends_on",
		                    json_is_array(deps) ? json_incref(deps) : json_array());
		json_t *timing = json_object_get(t, "timing");
		json_object_set_new(
		        s, "timing",
		        json_is_object(timing)
		                ? json_incref(timing)
		                : json_pack("{s:n, s:n, s:n}", "fetch_ms", "run_ms", "upload_ms"));
		/* The job's progress: each stage weighs the same, a settled one
		 * counts whole; current_stage: the first stage running. */
		const char *st = json_string_value(json_object_get(t, "status"));
		enum task_status ts = TASK_PENDING;
		(void)task_status_parse(st, &ts);
		if (ts == TASK_COMPLETED || ts == TASK_FAILED || ts == TASK_SKIPPED ||
		    ts == TASK_CANCELLED)
			progress_sum += 1;
		else if (ts == TASK_RUNNING)
			progress_sum += json_is_number(progress) ? json_number_value(progress) : 0;
		if (ts == TASK_RUNNING && running_stage == NULL)
			running_stage = json_string_value(json_object_get(t, "stage"));
		json_array_append_new(stages, s);
	}
	if (n > 0) {
		double p = progress_sum / (double)n;
		json_object_set_new(o, "progress", json_real(p > 1 ? 1 : p));
		json_object_set_new(o, "current_stage",
		                    running_stage ? json_string(running_stage) : json_null());
	}
	json_object_set_new(o, "total_wait_ms",
	                    json_integer(job_total_wait_ms(ready, started, n, now_us)));
	json_object_set_new(o, "stages", stages);
	free(ready);
	free(started);
	return o;
}

/* --- Operations ---------------------------------------------------------- */

enum job_op_kind { OP_SUBMIT, OP_GET, OP_LIST, OP_JSON };

struct submit_batch;

struct job_op {
	enum job_op_kind kind;
	struct engine *e;
	struct pg_pool_query *q;
	bool cancelled;
	union {
		job_submit_cb submit;
		job_get_cb get;
		job_list_cb list;
	} cb;
	void *arg;
	/* OP_GET: the job id, for the revision cache */
	char project[64];
	char job_id[ID_UUID_LEN + 1];
	/* OP_LIST */
	size_t limit;
	/* OP_SUBMIT */
	TAILQ_ENTRY(job_op) link;
	struct submit_batch *batch;
	json_t *job; /* the representation to answer with */
	json_t *rows_job; /* a jsonb_to_recordset row for jobs */
	json_t *rows_tasks;
	json_t *rows_events;
	char *idem_key;
	char hash_hex[65];
	char pipeline[128];
	char request_id[130];
	size_t ntasks, nready;
	struct job_op *inner; /* EXISTING: the read of the first job */
	struct trace_span *span;
};

static void job_op_free(struct job_op *op)
{
	trace_span_end(op->span, op->cancelled ? "cancelled" : NULL);
	json_decref(op->job);
	json_decref(op->rows_job);
	json_decref(op->rows_tasks);
	json_decref(op->rows_events);
	free(op->idem_key);
	free(op);
}

/* --- Reads --------------------------------------------------------------- */

#define JOB_COLS                                                                                  \
	"j.id::text, j.project_id, j.pipeline, j.status, j.params::text, j.attempt, j.progress, " \
	"j.current_stage, j.error::text, "                                                        \
	"(extract(epoch from j.created_at) * 1e6)::bigint, "                                      \
	"(extract(epoch from j.queued_at) * 1e6)::bigint, "                                       \
	"(extract(epoch from j.started_at) * 1e6)::bigint, "                                      \
	"(extract(epoch from j.completed_at) * 1e6)::bigint, j.logs_key, j.event_seq, j.rev"

/* Why a queued job waits ($3: the configured max_concurrent_jobs): its
 * position among the ready tasks of its first ready task's module (claims
 * take them in id order; counted up to JOB_QUEUE_AHEAD_MAX ahead, a short
 * backward scan of tasks_ready_module, so 101 means further back), and what
 * holds it: the project's running-jobs quota, a retry's backoff, or the
 * module's free slots. The job's own tasks are read through tasks_job behind
 * an OFFSET 0 fence: left to itself the planner ANDed in tasks_ready, a walk
 * over every ready task (27 ms a GET with 50,000 queued; 0.4 ms now). */
#define JOB_QUEUE_AHEAD_MAX "100" /* tasks counted ahead: a read stays cheap in a long queue */
#define JOB_QUEUE_SQL                                                                              \
	"CASE WHEN j.status = 'queued' THEN (SELECT json_build_object('since', "                   \
	"to_char(j.queued_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "           \
	"'position', "                                                                             \
	"CASE WHEN f.id IS NULL THEN NULL ELSE (SELECT count(*) + 1 FROM (SELECT 1 FROM tasks r "  \
	"WHERE r.status = 'ready' AND r.module = f.module AND r.id < f.id ORDER BY r.id DESC "     \
	"LIMIT " JOB_QUEUE_AHEAD_MAX ") ahead) END, 'blocked_by', CASE WHEN lim.n > 0 "            \
	"AND (SELECT count(*) FROM jobs x WHERE x.project_id = j.project_id AND x.status = "       \
	"'running') >= lim.n THEN 'quota:max_concurrent_jobs' WHEN f.not_before > now() THEN "     \
	"'backoff' WHEN f.id IS NOT NULL THEN 'capacity:module' END, 'module', f.module) FROM "    \
	"(SELECT coalesce((SELECT p.max_concurrent_jobs FROM projects p WHERE p.id = "             \
	"j.project_id), $3::int) AS n) lim LEFT JOIN LATERAL (SELECT id, module, not_before FROM " \
	"(SELECT * FROM tasks WHERE job_id = j.id OFFSET 0) t WHERE t.status = 'ready' ORDER BY "  \
	"t.stage_number LIMIT 1) f ON true)::text END"

#define SQL_JOB_GET                                                                               \
	"SELECT " JOB_COLS ", (SELECT coalesce(json_agg(t ORDER BY t.stage_number), '[]') FROM (" \
	"SELECT id::text AS id, stage, stage_number, module, engine_id, depends_on, required, "   \
	"status, attempt, retries, max_retries, duration_ms, progress, error, skip_reason, "      \
	"(extract(epoch from ready_at) * 1e6)::bigint AS ready_us, "                              \
	"(extract(epoch from started_at) * 1e6)::bigint AS started_us, "                          \
	"(extract(epoch from completed_at) * 1e6)::bigint AS completed_us, "                      \
	"(SELECT json_build_object('fetch_ms', a.fetch_ms, 'run_ms', a.run_ms, 'upload_ms', "     \
	"a.upload_ms) FROM task_attempts a WHERE a.task_id = tasks.id ORDER BY a.attempt DESC "   \
	"LIMIT 1) AS timing "                                                                     \
	"FROM tasks WHERE job_id = j.id) t)::text, " JOB_QUEUE_SQL                                \
	" FROM jobs j WHERE j.id = $1::uuid AND j.project_id = $2"

/* Keyset listing; one statement per filter shape so each keeps an index
 * plan. The cursor and created_after always have values (sentinels when
 * absent) so the generic plan can use them as index bounds. */
#define SQL_JOB_LIST_HEAD "SELECT " JOB_COLS " FROM jobs j WHERE j.project_id = $1 "
#define SQL_JOB_LIST_TAIL \
	" AND j.id < $2::uuid AND j.created_at > $3::timestamptz ORDER BY j.id DESC LIMIT $4"

/* A job's events after a seq, in order (the SSE replay). */
#define SQL_JOB_EVENTS_AFTER                                                                       \
	"SELECT coalesce(json_agg(json_build_object('id', e.id, 'seq', e.seq, 'ts', "              \
	"to_char(e.ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), 'kind', e.kind, "  \
	"'job_id', e.job_id, 'task_id', e.task_id, 'stage', e.stage, 'status_from', "              \
	"e.status_from, "                                                                          \
	"'status_to', e.status_to, 'reason', e.reason, 'request_id', e.request_id, 'data', "       \
	"e.data) "                                                                                 \
	"ORDER BY e.seq), '[]')::text FROM (SELECT * FROM job_events WHERE job_id = $1::uuid AND " \
	"project_id = $2 AND seq > $3::bigint ORDER BY seq LIMIT $4::int) e"

/* A project's events after a (txid, id) point, in transaction order, only
 * from transactions older than every one still running (the project SSE
 * stream); with the count of later events still held back by a running
 * one, and the current xmin. */
#define SQL_PROJECT_EVENTS_AFTER                                                                   \
	"WITH x AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin), "                     \
	"e AS (SELECT e.* FROM job_events e, x WHERE e.project_id = $1 AND (e.txid > $2::xid8 OR " \
	"(e.txid = $2::xid8 AND e.id > $3::bigint)) AND e.txid < x.xmin ORDER BY e.txid, e.id "    \
	"LIMIT $4::int) "                                                                          \
	"SELECT coalesce((SELECT json_agg(json_build_object('id', e.id, 'seq', e.seq, 'txid', "    \
	"e.txid::text, 'ts', to_char(e.ts AT TIME ZONE 'UTC', "                                    \
	"'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), 'kind', e.kind, 'job_id', e.job_id, 'task_id', "    \
	"e.task_id, 'stage', e.stage, 'status_from', e.status_from, 'status_to', e.status_to, "    \
	"'reason', e.reason, 'request_id', e.request_id, 'data', e.data) ORDER BY e.txid, e.id) "  \
	"FROM e), '[]')::text, (SELECT count(*) FROM job_events h, x WHERE h.project_id = $1 AND " \
	"h.txid >= x.xmin), (SELECT xmin::text FROM x)"

/* Where an event sits in transaction order: its txid, for a resume. */
#define SQL_EVENT_TXID "SELECT txid::text FROM job_events WHERE id = $1::bigint AND project_id = $2"

/* A task's attempts, oldest first; the task must belong to the project's job. */
#define SQL_TASK_ATTEMPTS                                                                         \
	"SELECT coalesce(json_agg(json_build_object('attempt', a.attempt, 'instance_id', "        \
	"a.instance_id, 'pid', a.pid, 'started_at', to_char(a.started_at AT TIME ZONE 'UTC', "    \
	"'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), 'ended_at', to_char(a.ended_at AT TIME ZONE "      \
	"'UTC', "                                                                                 \
	"'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), 'outcome', a.outcome, 'exit_code', a.exit_code, "  \
	"'signal', a.signal, 'error', a.error, 'wait_ms', a.wait_ms, 'fetch_ms', a.fetch_ms, "    \
	"'run_ms', a.run_ms, 'upload_ms', a.upload_ms, 'cpu_seconds', a.cpu_seconds, "            \
	"'max_rss_bytes', a.max_rss_bytes) ORDER BY a.attempt) FILTER (WHERE a.task_id IS NOT "   \
	"NULL), '[]')::text, "                                                                    \
	"(SELECT coalesce(jsonb_agg(jsonb_build_object('name', f->>'name', 'type', f->>'type', "  \
	"'format', f->'format', 'role', f->>'role', 'size_bytes', (f->>'size_bytes')::bigint)), " \
	"'[]'::jsonb) FROM jsonb_array_elements(coalesce(t.artifacts, '[]'::jsonb)) f)::text "    \
	"FROM tasks t JOIN "                                                                      \
	"jobs "                                                                                   \
	"j ON j.id = t.job_id LEFT JOIN task_attempts a ON a.task_id = t.id WHERE t.id = "        \
	"$1::uuid "                                                                               \
	"AND t.job_id = $2::uuid AND j.project_id = $3 GROUP BY t.id"

/* What GET /v1/jobs/{id}/logs renders pipeline.log from. */
#define SQL_JOB_LOG_SOURCE                                                                       \
	"SELECT j.id::text, j.pipeline, j.status, j.tasks_running, " PIPELOG_EVENTS_SQL(         \
	        "j.id") ", " PIPELOG_TASKS_SQL("j.id") " FROM jobs j WHERE j.id = $1::uuid AND " \
	                                               "j.project_id = $2"

/* What GET /v1/jobs/{id}/input returns: the job's input and the id of its
 * upload (the last segment of <project>/uploads/<id>). */
#define SQL_JOB_INPUT                                                                           \
	"SELECT json_build_object('job_id', j.id, 'input', j.input, 'upload', "                 \
	"substring(j.input_upload from '[^/]+$'))::text FROM jobs j WHERE j.id = $1::uuid AND " \
	"j.project_id = $2"

static const struct {
	const char *name;
	const char *sql;
	int nparams;
} job_statements[] = {
        {"job_input", SQL_JOB_INPUT, 2},
        {"job_log_source", SQL_JOB_LOG_SOURCE, 2},
        {"task_attempts", SQL_TASK_ATTEMPTS, 3},
        {"job_events_after", SQL_JOB_EVENTS_AFTER, 4},
        {"project_events_after", SQL_PROJECT_EVENTS_AFTER, 4},
        {"event_txid", SQL_EVENT_TXID, 2},
        {"job_get", SQL_JOB_GET, 3},
        {"job_list", SQL_JOB_LIST_HEAD SQL_JOB_LIST_TAIL, 4},
        {"job_list_s", SQL_JOB_LIST_HEAD "AND j.status = $5" SQL_JOB_LIST_TAIL, 5},
        {"job_list_p", SQL_JOB_LIST_HEAD "AND j.pipeline = $5" SQL_JOB_LIST_TAIL, 5},
        {"job_list_sp", SQL_JOB_LIST_HEAD "AND j.status = $5 AND j.pipeline = $6" SQL_JOB_LIST_TAIL,
         6},
};

static int64_t col_i64(const PGresult *r, int row, int col)
{
	return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static const char *col_str(const PGresult *r, int row, int col)
{
	return PQgetisnull(r, row, col) ? NULL : PQgetvalue(r, row, col);
}

/* Maps the JOB_COLS of one row to the representation. */
static json_t *row_to_json(const PGresult *r, int row, const json_t *tasks, int64_t *rev)
{
	json_t *params = pg_json(r, row, 4);
	json_t *error = pg_json(r, row, 8);
	struct job_row j = {
	        .id = col_str(r, row, 0),
	        .project_id = col_str(r, row, 1),
	        .pipeline = col_str(r, row, 2),
	        .status = col_str(r, row, 3),
	        .params = params,
	        .attempt = (int)col_i64(r, row, 5),
	        .progress = PQgetisnull(r, row, 6) ? 0 : strtod(PQgetvalue(r, row, 6), NULL),
	        .current_stage = col_str(r, row, 7),
	        .error = error,
	        .created_us = col_i64(r, row, 9),
	        .queued_us = col_i64(r, row, 10),
	        .started_us = col_i64(r, row, 11),
	        .completed_us = col_i64(r, row, 12),
	        .logs_key = col_str(r, row, 13),
	        .event_seq = col_i64(r, row, 14),
	        .rev = col_i64(r, row, 15),
	};
	json_t *o = job_to_json(&j, tasks, clock_now_us());
	if (tasks == NULL)
		json_object_del(o, "stages"), json_object_del(o, "total_wait_ms"),
		        json_object_del(o, "queue");
	json_decref(params);
	json_decref(error);
	if (rev)
		*rev = j.rev;
	return o;
}

static bool job_get_result_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct job_op *op = arg;
	op->q = NULL;
	json_t *job = NULL;
	int64_t rev = 0;
	if (res && PQntuples(res) == 1) {
		json_t *tasks = pg_json(res, 0, 16);
		job = row_to_json(res, 0, tasks ? tasks : json_array(), &rev);
		json_decref(tasks);
		json_t *queue = pg_json(res, 0, 17);
		if (queue)
			json_object_set_new(job, "queue", queue);
		rev_cache_put(op->e->revs, op->job_id, op->project, rev, false);
	}
	op->cb.get(job, rev, err, op->arg);
	job_op_free(op);
	return false;
}

struct job_op *job_get(struct engine *e, const char *project_id, const char *job_id, job_get_cb cb,
                       void *arg)
{
	struct job_op *op = xcalloc(1, sizeof *op);
	op->kind = OP_GET;
	op->e = e;
	op->cb.get = cb;
	op->arg = arg;
	snprintf(op->project, sizeof op->project, "%s", project_id);
	snprintf(op->job_id, sizeof op->job_id, "%s", job_id);
	char mc[24];
	snprintf(mc, sizeof mc, "%lld", (long long)e->app->cfg->quota.max_concurrent_jobs);
	const char *values[3] = {job_id, project_id, mc};
	op->q = pg_pool_query_prepared(e->pool, "job_get", 3, values, job_get_result_cb, op);
	return op;
}

/* An operation answered with one JSON value (a job_list_cb): the shape of
 * the small reads below. */
static struct job_op *json_op_start(struct engine *e, const char *stmt, int nparams,
                                    const char *const *values, pg_result_cb rcb, job_list_cb cb,
                                    void *arg)
{
	struct job_op *op = xcalloc(1, sizeof *op);
	op->kind = OP_JSON;
	op->e = e;
	op->cb.list = cb;
	op->arg = arg;
	op->q = pg_pool_query_prepared(e->pool, stmt, nparams, values, rcb, op);
	return op;
}

/* One JSON value in the first column of one row; NULL when no row. */
static bool one_json_result_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct job_op *op = arg;
	op->q = NULL;
	json_t *v = NULL;
	if (res && PQntuples(res) == 1)
		v = pg_json(res, 0, 0);
	op->cb.list(v, err, op->arg);
	job_op_free(op);
	return false;
}

static bool task_detail_result_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct job_op *op = arg;
	op->q = NULL;
	json_t *detail = NULL;
	if (res && PQntuples(res) == 1) {
		json_t *att = pg_json(res, 0, 0), *files = pg_json(res, 0, 1);
		detail = json_pack("{s:o, s:o}", "attempts", att ? att : json_array(), "files",
		                   files ? files : json_array());
	}
	op->cb.list(detail, err, op->arg);
	job_op_free(op);
	return false;
}

struct job_op *job_task_attempts(struct engine *e, const char *project_id, const char *job_id,
                                 const char *task_id, job_list_cb cb, void *arg)
{
	const char *values[3] = {task_id, job_id, project_id};
	return json_op_start(e, "task_attempts", 3, values, task_detail_result_cb, cb, arg);
}

struct job_op *job_events_after(struct engine *e, const char *project_id, const char *job_id,
                                int64_t after_seq, int limit, job_list_cb cb, void *arg)
{
	char after[32], lim[16];
	snprintf(after, sizeof after, "%lld", (long long)after_seq);
	snprintf(lim, sizeof lim, "%d", limit);
	const char *values[4] = {job_id, project_id, after, lim};
	return json_op_start(e, "job_events_after", 4, values, one_json_result_cb, cb, arg);
}

static bool log_source_result_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct job_op *op = arg;
	op->q = NULL;
	json_t *src = NULL;
	if (res && PQntuples(res) == 1)
		src = json_pack("{s:s, s:s, s:s, s:I, s:o, s:o}", "job_id", PQgetvalue(res, 0, 0),
		                "pipeline", PQgetvalue(res, 0, 1), "status", PQgetvalue(res, 0, 2),
		                "tasks_running", (json_int_t)col_i64(res, 0, 3), "events",
		                pg_json(res, 0, 4), "tasks", pg_json(res, 0, 5));
	op->cb.list(src, err, op->arg);
	job_op_free(op);
	return false;
}

struct job_op *job_log_source(struct engine *e, const char *project_id, const char *job_id,
                              job_list_cb cb, void *arg)
{
	const char *values[2] = {job_id, project_id};
	return json_op_start(e, "job_log_source", 2, values, log_source_result_cb, cb, arg);
}

struct job_op *job_input(struct engine *e, const char *project_id, const char *job_id,
                         job_list_cb cb, void *arg)
{
	const char *values[2] = {job_id, project_id};
	return json_op_start(e, "job_input", 2, values, one_json_result_cb, cb, arg);
}

static bool project_events_result_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct job_op *op = arg;
	op->q = NULL;
	json_t *page = NULL;
	if (res && PQntuples(res) == 1) {
		page = json_pack("{s:o, s:I, s:s}", "events", pg_json(res, 0, 0), "held_back",
		                 (json_int_t)col_i64(res, 0, 1), "xmin", PQgetvalue(res, 0, 2));
		if (page && !json_is_array(json_object_get(page, "events")))
			json_object_set_new(page, "events", json_array());
	}
	op->cb.list(page, err, op->arg);
	job_op_free(op);
	return false;
}

struct job_op *project_events_after(struct engine *e, const char *project_id, const char *txid,
                                    int64_t after_id, int limit, job_list_cb cb, void *arg)
{
	char after[32], lim[16];
	snprintf(after, sizeof after, "%lld", (long long)after_id);
	snprintf(lim, sizeof lim, "%d", limit);
	const char *values[4] = {project_id, txid, after, lim};
	return json_op_start(e, "project_events_after", 4, values, project_events_result_cb, cb,
	                     arg);
}

static bool event_txid_result_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct job_op *op = arg;
	op->q = NULL;
	json_t *t = NULL;
	if (res && PQntuples(res) == 1)
		t = json_string(PQgetvalue(res, 0, 0));
	op->cb.list(t, err, op->arg);
	job_op_free(op);
	return false;
}

struct job_op *event_txid(struct engine *e, const char *project_id, int64_t id, job_list_cb cb,
                          void *arg)
{
	char ids[32];
	snprintf(ids, sizeof ids, "%lld", (long long)id);
	const char *values[2] = {ids, project_id};
	return json_op_start(e, "event_txid", 2, values, event_txid_result_cb, cb, arg);
}

static bool job_list_result_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct job_op *op = arg;
	op->q = NULL;
	json_t *page = NULL;
	if (res) {
		page = json_object();
		json_t *data = json_array();
		int n = PQntuples(res);
		for (int i = 0; i < n && (size_t)i < op->limit; i++)
			json_array_append_new(data, row_to_json(res, i, NULL, NULL));
		json_object_set_new(page, "data", data);
		if ((size_t)n > op->limit) {
			char *c = job_cursor_encode(PQgetvalue(res, (int)op->limit - 1, 0));
			json_object_set_new(page, "next_cursor", json_string(c));
			free(c);
		} else {
			json_object_set_new(page, "next_cursor", json_null());
		}
	}
	op->cb.list(page, err, op->arg);
	job_op_free(op);
	return false;
}

struct job_op *job_list(struct engine *e, const struct job_list_query *q, job_list_cb cb, void *arg)
{
	struct job_op *op = xcalloc(1, sizeof *op);
	op->kind = OP_LIST;
	op->e = e;
	op->cb.list = cb;
	op->arg = arg;
	op->limit = q->limit;
	char limit[24], after[40];
	snprintf(limit, sizeof limit, "%zu", q->limit + 1); /* one more: is there a next page? */
	if (q->created_after_us > 0)
		clock_fmt_rfc3339_us(after, sizeof after, q->created_after_us);
	else
		snprintf(after, sizeof after, "-infinity");
	const char *values[6] = {
	        q->project_id, q->cursor_id ? q->cursor_id : "ffffffff-ffff-ffff-ffff-ffffffffffff",
	        after,         limit,
	        NULL,          NULL};
	const char *name = "job_list";
	int n = 4;
	if (q->status && q->pipeline) {
		name = "job_list_sp";
		values[n++] = q->status;
		values[n++] = q->pipeline;
	} else if (q->status) {
		name = "job_list_s";
		values[n++] = q->status;
	} else if (q->pipeline) {
		name = "job_list_p";
		values[n++] = q->pipeline;
	}
	op->q = pg_pool_query_prepared(e->pool, name, n, values, job_list_result_cb, op);
	return op;
}

/* --- Idempotency ---------------------------------------------------------- */

void job_request_hash(const json_t *body, unsigned char out[32])
{
	/* Sorted keys, no whitespace: the same request written differently
	 * is the same request. */
	char *canon = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
	unsigned int len = 0;
	EVP_Digest(canon ? canon : "", canon ? strlen(canon) : 0, out, &len, EVP_sha256(), NULL);
	free(canon);
}

/* --- Cursors ------------------------------------------------------------- */

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

char *job_cursor_encode(const char *job_id)
{
	struct buf b = BUF_INIT;
	buf_adds(&b, "c1");
	const unsigned char *p = (const unsigned char *)job_id;
	size_t n = strlen(job_id);
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)p[i + 1] << 8;
		if (i + 2 < n)
			v |= p[i + 2];
		buf_addc(&b, b64url[(v >> 18) & 63]);
		buf_addc(&b, b64url[(v >> 12) & 63]);
		if (i + 1 < n)
			buf_addc(&b, b64url[(v >> 6) & 63]);
		if (i + 2 < n)
			buf_addc(&b, b64url[v & 63]);
	}
	return buf_steal(&b);
}

bool job_cursor_decode(const char *cursor, char out[37])
{
	if (cursor == NULL || strncmp(cursor, "c1", 2) != 0)
		return false;
	const char *s = cursor + 2;
	size_t n = strlen(s), o = 0;
	if (n != 48) /* 36 bytes of id */
		return false;
	for (size_t i = 0; i < n; i += 4) {
		uint32_t v = 0;
		for (size_t k = 0; k < 4; k++) {
			const char *c = strchr(b64url, s[i + k]);
			if (c == NULL || s[i + k] == '\0')
				return false;
			v = (v << 6) | (uint32_t)(c - b64url);
		}
		out[o++] = (char)(v >> 16);
		out[o++] = (char)(v >> 8);
		out[o++] = (char)v;
	}
	out[36] = '\0';
	return id_uuid_valid(out);
}

/* --- Submission ---------------------------------------------------------- */

struct submit_batch {
	struct engine *e;
	struct job_op **ops;
	size_t n;
	PGresult *inserted; /* statement 1: (job_id, seq, event id) of new jobs' events */
	PGresult *existing; /* statement 2: rows holding the batch's idempotency keys */
	bool has_keys;
	struct pg_error err; /* the first failure, copied */
	char err_msg[256];
	char err_state[6];
	bool failed;
	size_t pending; /* statement callbacks still to come */
};

#define SQL_JOB_SUBMIT                                                                             \
	"WITH x AS (SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(id uuid, project_id text, "   \
	"pipeline text, params jsonb, input jsonb, idempotency_key text, request_hash text, "      \
	"request_id text, created_at timestamptz, logs_key text, event_seq bigint, "               \
	"resume_from jsonb, tasks_total int, input_upload text)), "                                \
	"j AS (INSERT INTO jobs (id, project_id, pipeline, status, params, input, "                \
	"idempotency_key, "                                                                        \
	"request_hash, request_id, created_at, queued_at, logs_key, event_seq, rev, resume_from, " \
	"tasks_total, input_upload) "                                                              \
	"SELECT id, project_id, pipeline, 'queued', params, input, idempotency_key, "              \
	"decode(request_hash, 'hex'), request_id, created_at, created_at, logs_key, event_seq, "   \
	"1, "                                                                                      \
	"resume_from, tasks_total, input_upload "                                                  \
	"FROM x ON CONFLICT (project_id, idempotency_key) DO NOTHING RETURNING id), "              \
	"t AS (INSERT INTO tasks (id, job_id, project_id, stage, stage_number, module, "           \
	"depends_on, "                                                                             \
	"required, status, max_retries, backoff_ms, timeout_ms, params, ready_at, skip_reason, "   \
	"completed_at) "                                                                           \
	"SELECT y.id, y.job_id, y.project_id, y.stage, y.stage_number, y.module, "                 \
	"ARRAY(SELECT jsonb_array_elements_text(y.depends_on)), y.required, y.status, "            \
	"y.max_retries, y.backoff_ms, y.timeout_ms, y.params, y.ready_at, y.skip_reason, "         \
	"y.completed_at "                                                                          \
	"FROM jsonb_to_recordset($2::jsonb) AS y(id uuid, job_id uuid, project_id text, "          \
	"stage text, stage_number int, module text, depends_on jsonb, required bool, status "      \
	"text, "                                                                                   \
	"max_retries int, backoff_ms bigint, timeout_ms bigint, params jsonb, ready_at "           \
	"timestamptz, skip_reason text, completed_at timestamptz) WHERE y.job_id IN (SELECT id "   \
	"FROM j)), "                                                                               \
	"e AS (INSERT INTO job_events (job_id, seq, project_id, ts, kind, task_id, stage, "        \
	"status_from, status_to, reason, request_id, data) "                                       \
	"SELECT z.job_id, z.seq, z.project_id, z.ts, z.kind, z.task_id, z.stage, z.status_from, "  \
	"z.status_to, z.reason, z.request_id, z.data FROM jsonb_to_recordset($3::jsonb) AS "       \
	"z(job_id uuid, seq bigint, project_id text, ts timestamptz, kind text, task_id uuid, "    \
	"stage text, status_from text, status_to text, reason text, request_id text, data jsonb) " \
	"WHERE z.job_id IN (SELECT id FROM j) RETURNING job_id, seq, id) "                         \
	"SELECT job_id::text, seq, id, (SELECT pg_notify('stageline_ready', '') WHERE EXISTS "     \
	"(SELECT 1 FROM j)) FROM e"

#define SQL_JOB_KEYS                                                                         \
	"SELECT j.id::text, j.project_id, j.idempotency_key, encode(j.request_hash, 'hex') " \
	"FROM jsonb_to_recordset($1::jsonb) AS k(project_id text, idempotency_key text) "    \
	"JOIN jobs j USING (project_id, idempotency_key)"

static void submit_schedule(struct engine *e);

static json_t *counts_json(size_t total)
{
	return json_pack("{s:I, s:i, s:i, s:i}", "tasks_total", (json_int_t)total,
	                 "tasks_completed", 0, "tasks_failed", 0, "tasks_running", 0);
}

/* Builds the rows a submission writes and the representation it answers
 * with: status queued, root stages ready, the rest pending. */
static void submit_prepare(struct job_op *op, const struct job_submit *s)
{
	const struct pipeline *p = s->pipeline;
	int64_t now = clock_now_us();
	char ts[40], id[ID_UUID_LEN + 1];
	clock_fmt_rfc3339_us(ts, sizeof ts, now);
	id_uuid7_at(id, (uint64_t)(now / 1000));
	char *logs_key = xasprintf("%s/%s/logs/pipeline.log", s->project_id, id);
	snprintf(op->job_id, sizeof op->job_id, "%s", id);
	snprintf(op->project, sizeof op->project, "%s", s->project_id);
	snprintf(op->pipeline, sizeof op->pipeline, "%s", p->name);
	snprintf(op->request_id, sizeof op->request_id, "%s", s->request_id ? s->request_id : "");

	op->rows_tasks = json_array();
	op->rows_events = json_array();
	json_t *tasks = json_array(); /* as job_get's aggregate would return them */
	int64_t seq = 1;
	json_array_append_new(
	        op->rows_events,
	        json_pack("{s:s, s:I, s:s, s:s, s:s, s:n, s:n, s:s, s:s, s:s, s:s?, s:o}", "job_id",
	                  id, "seq", (json_int_t)seq, "project_id", s->project_id, "ts", ts, "kind",
	                  "job.lifecycle.enqueue", "task_id", "stage", "status_from", "pending",
	                  "status_to", "queued", "reason", "submitted", "request_id", s->request_id,
	                  "data", counts_json(p->nstages)));
	for (size_t i = 0; i < p->nstages; i++) {
		const struct stage_def *st = &p->stages[i];
		char tid[ID_UUID_LEN + 1];
		id_uuid7_at(tid, (uint64_t)(now / 1000));
		bool reused = s->reused && s->reused[i];
		bool root = !reused;
		for (size_t k = 0; k < st->nneeds && root; k++)
			root = s->reused && s->reused[st->dep_idx[k]];
		json_t *deps = json_array();
		for (size_t k = 0; k < st->nneeds; k++)
			json_array_append_new(deps, json_string(st->needs[k]));
		json_t *params = pipeline_stage_params(st, s->params);
		json_array_append_new(
		        op->rows_tasks,
		        json_pack(
		                "{s:s, s:s, s:s, s:s, s:i, s:s, s:O, s:b, s:s, s:i, s:I, s:I, s:o, "
		                "s:s?, s:s?, s:s?}",
		                "id", tid, "job_id", id, "project_id", s->project_id, "stage",
		                st->name, "stage_number", st->stage_number, "module", st->module,
		                "depends_on", deps, "required", st->required, "status",
		                reused ? "skipped"
		                : root ? "ready"
		                       : "pending",
		                "max_retries", st->retries, "backoff_ms",
		                (json_int_t)st->backoff_ms, "timeout_ms",
		                (json_int_t)st->timeout_ms, "params", params, "ready_at",
		                root ? ts : NULL, "skip_reason", reused ? "reused" : NULL,
		                "completed_at", reused ? ts : NULL));
		json_array_append_new(
		        tasks, json_pack("{s:s, s:s, s:i, s:s, s:n, s:o, s:b, s:s, s:i, s:i, s:i, "
		                         "s:n, s:f, s:n, s:n, s:I, s:n, s:n}",
		                         "id", tid, "stage", st->name, "stage_number",
		                         st->stage_number, "module", st->module, "engine_id",
		                         "depends_on", deps, "required", st->required, "status",
		                         reused ? "skipped"
		                         : root ? "ready"
		                                : "pending",
		                         "attempt", 0, "retries", 0, "max_retries", st->retries,
		                         "duration_ms", "progress", 0.0, "error", "skip_reason",
		                         "ready_us", (json_int_t)(root ? now : 0), "started_us",
		                         "completed_us"));
		if (reused) {
			json_t *row = json_array_get(tasks, json_array_size(tasks) - 1);
			json_object_set_new(row, "skip_reason", json_string("reused"));
			json_object_set_new(row, "completed_us", json_integer(now));
			json_array_append_new(
			        op->rows_events,
			        json_pack(
			                "{s:s, s:I, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s?, "
			                "s:o}",
			                "job_id", id, "seq", (json_int_t)++seq, "project_id",
			                s->project_id, "ts", ts, "kind", "job.stage.skipped",
			                "task_id", tid, "stage", st->name, "status_from", "pending",
			                "status_to", "skipped", "reason", "reused", "request_id",
			                s->request_id, "data", counts_json(p->nstages)));
		}
		if (root) {
			op->nready++;
			json_array_append_new(
			        op->rows_events,
			        json_pack(
			                "{s:s, s:I, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s?, "
			                "s:o}",
			                "job_id", id, "seq", (json_int_t)++seq, "project_id",
			                s->project_id, "ts", ts, "kind", "job.stage.ready",
			                "task_id", tid, "stage", st->name, "status_from", "pending",
			                "status_to", "ready", "reason", "no_dependencies",
			                "request_id", s->request_id, "data",
			                counts_json(p->nstages)));
		}
	}
	op->ntasks = p->nstages;
	buf_hex(op->hash_hex, s->request_hash, 32);
	op->idem_key = s->idempotency_key ? xstrdup(s->idempotency_key) : NULL;
	op->rows_job = json_pack(
	        "{s:s, s:s, s:s, s:O, s:O?, s:s?, s:s, s:s?, s:s, s:s, s:I, s:O?, s:I, "
	        "s:s?}",
	        "id", id, "project_id", s->project_id, "pipeline", p->name, "params", s->params,
	        "input", s->input, "idempotency_key", s->idempotency_key, "request_hash",
	        op->hash_hex, "request_id", s->request_id, "created_at", ts, "logs_key", logs_key,
	        "event_seq", (json_int_t)seq, "resume_from", s->resume_from, "tasks_total",
	        (json_int_t)p->nstages, "input_upload", s->input_upload);
	struct job_row jr = {
	        .id = id,
	        .project_id = s->project_id,
	        .pipeline = p->name,
	        .status = "queued",
	        .params = s->params,
	        .attempt = 1,
	        .created_us = now,
	        .queued_us = now,
	        .logs_key = logs_key,
	        .event_seq = seq,
	        .rev = 1,
	};
	op->job = job_to_json(&jr, tasks, now);
	json_decref(tasks);
	free(logs_key);
}

struct job_op *job_submit(struct engine *e, const struct job_submit *s, job_submit_cb cb, void *arg)
{
	struct job_op *op = xcalloc(1, sizeof *op);
	op->kind = OP_SUBMIT;
	op->e = e;
	op->cb.submit = cb;
	op->arg = arg;
	submit_prepare(op, s);
	op->span = trace_start("job.submit", NULL, TA_STR("job_id", op->job_id),
	                       TA_STR("pipeline", op->pipeline), TA_STR("project_id", op->project));
	TAILQ_INSERT_TAIL(&e->submits, op, link);
	e->nsubmits++;
	submit_schedule(e);
	return op;
}

/* The event's ts as written (the submission's clock), so that the live
 * event and its replay from job_events carry the same time. */
static int64_t row_ts_us(const json_t *row)
{
	int64_t us = 0;
	if (!clock_parse_rfc3339(json_string_value(json_object_get(row, "ts")), &us))
		us = clock_now_us();
	return us;
}

/* After the commit: each event is a log line, a metric and a bus event. */
static void submit_announce(struct engine *e, struct job_op *op, const PGresult *ins)
{
	metric_inc(metrics_default_get(M_JOBS_CREATED_TOTAL), 1);
	metric_inc(metrics_default_get(M_JOBS_STATUS_TRANSITION_TOTAL), 1, "pending", "queued");
	size_t nev = json_array_size(op->rows_events);
	for (size_t i = 0; i < nev; i++) {
		const json_t *r = json_array_get(op->rows_events, i);
		int64_t seq = json_integer_value(json_object_get(r, "seq"));
		int64_t gid = 0;
		for (int k = 0; ins && k < PQntuples(ins); k++) {
			if (strcmp(PQgetvalue(ins, k, 0), op->job_id) == 0 &&
			    strtoll(PQgetvalue(ins, k, 1), NULL, 10) == seq) {
				gid = strtoll(PQgetvalue(ins, k, 2), NULL, 10);
				break;
			}
		}
		struct sl_event ev = {
		        .id = gid,
		        .seq = seq,
		        .rev = 1,
		        .ts_us = row_ts_us(r),
		        .kind = json_string_value(json_object_get(r, "kind")),
		        .job_id = op->job_id,
		        .project_id = op->project,
		        .pipeline = op->pipeline,
		        .task_id = json_string_value(json_object_get(r, "task_id")),
		        .stage = json_string_value(json_object_get(r, "stage")),
		        .status_from = json_string_value(json_object_get(r, "status_from")),
		        .status_to = json_string_value(json_object_get(r, "status_to")),
		        .reason = json_string_value(json_object_get(r, "reason")),
		        .request_id = op->request_id,
		        .data = json_object_get(r, "data"),
		};
		/* ARCHITECTURE §4: every event carries the aggregate counts. */
		if (ev.task_id == NULL)
			log_info(ev.kind, "job queued", LF_STR("job_id", ev.job_id),
			         LF_STR("project_id", ev.project_id),
			         LF_STR("pipeline", ev.pipeline),
			         LF_STR("status_from", ev.status_from),
			         LF_STR("status_to", ev.status_to), LF_STR("reason", ev.reason),
			         LF_INT("duration_ms", 0), LF_INT("seq", ev.seq),
			         LF_UINT("tasks_total", op->ntasks), LF_INT("tasks_completed", 0),
			         LF_INT("tasks_failed", 0), LF_INT("tasks_running", 0),
			         LF_STR("request_id", ev.request_id));
		else
			log_info(ev.kind,
			         strcmp(ev.kind, "job.stage.ready") == 0 ? "stage ready"
			                                                 : "stage skipped",
			         LF_STR("job_id", ev.job_id), LF_STR("project_id", ev.project_id),
			         LF_STR("pipeline", ev.pipeline), LF_STR("task_id", ev.task_id),
			         LF_STR("stage", ev.stage), LF_STR("status_from", ev.status_from),
			         LF_STR("status_to", ev.status_to), LF_STR("reason", ev.reason),
			         LF_INT("seq", ev.seq), LF_UINT("tasks_total", op->ntasks),
			         LF_INT("tasks_completed", 0), LF_INT("tasks_failed", 0),
			         LF_INT("tasks_running", 0), LF_STR("request_id", ev.request_id));
		event_bus_publish(e->bus, &ev);
	}
	rev_cache_put(e->revs, op->job_id, op->project, 1, false);
}

/* The row in statement 2 holding op's idempotency key, or -1. */
static int submit_existing_row(const PGresult *ex, const struct job_op *op)
{
	for (int k = 0; ex && k < PQntuples(ex); k++)
		if (strcmp(PQgetvalue(ex, k, 1), op->project) == 0 &&
		    strcmp(PQgetvalue(ex, k, 2), op->idem_key) == 0)
			return k;
	return -1;
}

static void submit_existing_get_cb(json_t *job, int64_t rev, const struct pg_error *err, void *arg)
{
	struct job_op *op = arg;
	op->inner = NULL;
	if (job)
		op->cb.submit(JOB_SUBMIT_EXISTING, job, rev, NULL, op->arg);
	else
		op->cb.submit(JOB_SUBMIT_ERROR, NULL, 0, err, op->arg);
	job_op_free(op);
}

static bool job_inserted(const PGresult *ins, const char *job_id)
{
	for (int k = 0; ins && k < PQntuples(ins); k++)
		if (strcmp(PQgetvalue(ins, k, 0), job_id) == 0)
			return true;
	return false;
}

static void submit_batch_done(struct submit_batch *b)
{
	struct engine *e = b->e;
	for (size_t i = 0; i < b->n; i++) {
		struct job_op *op = b->ops[i];
		if (b->failed) {
			if (!op->cancelled)
				op->cb.submit(JOB_SUBMIT_ERROR, NULL, 0, &b->err, op->arg);
			job_op_free(op);
			continue;
		}
		if (job_inserted(b->inserted, op->job_id)) {
			submit_announce(e, op, b->inserted);
			if (!op->cancelled) {
				json_t *job = op->job;
				op->job = NULL;
				op->cb.submit(JOB_SUBMIT_CREATED, job, 1, NULL, op->arg);
			}
			job_op_free(op);
			continue;
		}
		int row = op->idem_key ? submit_existing_row(b->existing, op) : -1;
		if (op->cancelled || row < 0) {
			/* Not inserted and no row holds the key: only a concurrent
			 * delete could do that; report it rather than guess. */
			if (!op->cancelled) {
				struct pg_error err = {.kind = PG_ERR_QUERY,
				                       .sqlstate = "",
				                       .message = "the job could not be created"};
				op->cb.submit(JOB_SUBMIT_ERROR, NULL, 0, &err, op->arg);
			}
			job_op_free(op);
		} else if (strcmp(PQgetvalue(b->existing, row, 3), op->hash_hex) != 0) {
			op->cb.submit(JOB_SUBMIT_CONFLICT, NULL, 0, NULL, op->arg);
			job_op_free(op);
		} else {
			op->batch = NULL;
			op->inner = job_get(e, op->project, PQgetvalue(b->existing, row, 0),
			                    submit_existing_get_cb, op);
		}
	}
	PQclear(b->inserted);
	PQclear(b->existing);
	free(b->ops);
	free(b);
	e->submit_inflight--;
	submit_schedule(e);
}

static void submit_batch_fail(struct submit_batch *b, const struct pg_error *err)
{
	if (b->failed || err == NULL)
		return;
	b->failed = true;
	snprintf(b->err_msg, sizeof b->err_msg, "%s", err->message);
	snprintf(b->err_state, sizeof b->err_state, "%s", err->sqlstate ? err->sqlstate : "");
	b->err.kind = err->kind;
	b->err.message = b->err_msg;
	b->err.sqlstate = b->err_state;
	b->err.detail = NULL;
}

static bool submit_insert_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct submit_batch *b = arg;
	submit_batch_fail(b, err);
	b->inserted = res;
	if (--b->pending == 0)
		submit_batch_done(b);
	return res != NULL;
}

static bool submit_keys_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct submit_batch *b = arg;
	submit_batch_fail(b, err);
	b->existing = res;
	if (--b->pending == 0)
		submit_batch_done(b);
	return res != NULL;
}

/* True when op's idempotency key is already taken by an op of the batch:
 * such a twin waits for the next batch, where the database settles it. */
static bool submit_key_taken(struct job_op **ops, size_t n, const struct job_op *op)
{
	if (op->idem_key == NULL)
		return false;
	for (size_t i = 0; i < n; i++)
		if (ops[i]->idem_key && strcmp(ops[i]->idem_key, op->idem_key) == 0 &&
		    strcmp(ops[i]->project, op->project) == 0)
			return true;
	return false;
}

static void submit_flush(struct engine *e)
{
	struct submit_batch *b = xcalloc(1, sizeof *b);
	b->e = e;
	b->ops = xcalloc(e->opts.submit_batch_max, sizeof *b->ops);
	json_t *jobs = json_array(), *tasks = json_array(), *events = json_array();
	json_t *keys = json_array();
	struct job_op *op, *next;
	for (op = TAILQ_FIRST(&e->submits); op && b->n < e->opts.submit_batch_max; op = next) {
		next = TAILQ_NEXT(op, link);
		if (submit_key_taken(b->ops, b->n, op))
			continue;
		TAILQ_REMOVE(&e->submits, op, link);
		e->nsubmits--;
		op->batch = b;
		b->ops[b->n++] = op;
		json_array_append(jobs, op->rows_job);
		json_array_extend(tasks, op->rows_tasks);
		json_array_extend(events, op->rows_events);
		if (op->idem_key)
			json_array_append_new(keys,
			                      json_pack("{s:s, s:s}", "project_id", op->project,
			                                "idempotency_key", op->idem_key));
	}
	char *pj = json_dumps(jobs, JSON_COMPACT);
	char *pt = json_dumps(tasks, JSON_COMPACT);
	char *pe = json_dumps(events, JSON_COMPACT);
	char *pk = json_dumps(keys, JSON_COMPACT);
	const char *v1[3] = {pj, pt, pe};
	const char *v2[1] = {pk};
	b->has_keys = json_array_size(keys) > 0;
	struct pg_stmt stmts[2] = {
	        {.name = "job_submit",
	         .nparams = 3,
	         .values = v1,
	         .cb = submit_insert_cb,
	         .arg = b},
	        {.name = "job_keys", .nparams = 1, .values = v2, .cb = submit_keys_cb, .arg = b},
	};
	size_t nst = b->has_keys ? 2 : 1;
	b->pending = nst;
	e->submit_inflight++;
	/* One transaction: the keys are read after the insert settled them. */
	(void)pg_pool_batch(e->pool, stmts, nst);
	free(pj);
	free(pt);
	free(pe);
	free(pk);
	json_decref(jobs);
	json_decref(tasks);
	json_decref(events);
	json_decref(keys);
}

static void submit_flush_cb(evutil_socket_t fd, short what, void *arg)
{
	struct engine *e = arg;
	while (e->nsubmits > 0 && e->submit_inflight < e->opts.submit_inflight_max) {
		size_t before = e->nsubmits;
		submit_flush(e);
		if (e->nsubmits == before)
			break; /* only key twins left: they go after this batch */
	}
}

static void submit_schedule(struct engine *e)
{
	if (e->nsubmits > 0 && e->submit_inflight < e->opts.submit_inflight_max)
		event_active(e->flush_ev, EV_TIMEOUT, 0);
}

void job_op_cancel(struct job_op *op)
{
	if (op == NULL)
		return;
	switch (op->kind) {
	case OP_SUBMIT:
		if (op->inner) {
			job_op_cancel(op->inner);
			job_op_free(op);
		} else if (op->batch) {
			op->cancelled = true; /* the batch still commits and announces */
		} else {
			TAILQ_REMOVE(&op->e->submits, op, link);
			op->e->nsubmits--;
			job_op_free(op);
		}
		break;
	case OP_GET:
	case OP_LIST:
	case OP_JSON:
		pg_pool_cancel(op->q);
		job_op_free(op);
		break;
	}
}

/* --- Status changes: job_set_status / task_set_status -------------------- */

/* One statement writes a whole batch of changes: the job rows are locked
 * first (in id order, so two batches can't deadlock on them), task changes
 * are fenced by their expected status and lease token, job changes by their
 * expected status; only what applied gets an event, numbered from the job's
 * event_seq so every job's events stay gapless; the job's rev moves once. */
#define SQL_JOB_TXN                                                                                \
	"WITH y AS (SELECT * FROM jsonb_to_recordset($1::jsonb) AS y(ord int, id uuid, "           \
	"from_ text, to_ text, reason text, error jsonb, kind text, request_id text, data "        \
	"jsonb, needs_task uuid)), "                                                               \
	"x AS (SELECT * FROM jsonb_to_recordset($2::jsonb) AS x(ord int, id uuid, job_id uuid, "   \
	"from_ text, to_ text, reason text, kind text, stage text, lease uuid, skip_reason text, " \
	"error jsonb, not_before timestamptz, request_id text, data jsonb, with_job bool, "        \
	"output jsonb, att jsonb, keep_retries bool, artifacts jsonb)), "                          \
	"jl AS (SELECT j.id, j.status, j.project_id, j.pipeline, j.created_at, j.queued_at, "      \
	"j.started_at FROM jobs j WHERE j.id IN (SELECT id FROM y UNION SELECT job_id FROM x) "    \
	"ORDER BY j.id FOR UPDATE), "                                                              \
	"yok AS (SELECT y.* FROM y JOIN jl ON jl.id = y.id AND jl.status = y.from_ WHERE "         \
	"y.needs_task IS NULL), "                                                                  \
	"tu AS (UPDATE tasks t SET status = x.to_, "                                               \
	"ready_at = CASE WHEN x.to_ = 'ready' THEN now() WHEN x.to_ = 'pending' THEN NULL "        \
	"ELSE t.ready_at END, "                                                                    \
	"not_before = CASE WHEN x.to_ = 'ready' THEN x.not_before ELSE NULL END, "                 \
	"started_at = CASE WHEN x.to_ = 'running' THEN now() WHEN x.to_ IN ('pending', 'ready') "  \
	"THEN NULL ELSE t.started_at END, "                                                        \
	"completed_at = CASE WHEN x.to_ IN ('completed', 'failed', 'skipped', 'cancelled') "       \
	"THEN now() ELSE NULL END, "                                                               \
	"duration_ms = CASE WHEN x.to_ IN ('completed', 'failed', 'cancelled') AND t.started_at "  \
	"IS NOT NULL AND t.status = 'running' THEN (extract(epoch from now() - t.started_at) * "   \
	"1000)::bigint WHEN x.to_ IN ('pending', 'ready') THEN NULL ELSE t.duration_ms END, "      \
	"attempt = t.attempt + (x.to_ = 'running')::int, "                                         \
	"retries = CASE WHEN x.to_ = 'pending' THEN 0 ELSE t.retries END + (t.status = "           \
	"'running' AND x.to_ = 'ready' "                                                           \
	"AND NOT coalesce(x.keep_retries, false))::int, "                                          \
	"output = CASE WHEN x.to_ = 'completed' THEN x.output WHEN x.to_ = 'pending' THEN NULL "   \
	"ELSE t.output END, "                                                                      \
	"artifacts = CASE WHEN x.to_ = 'completed' THEN x.artifacts WHEN x.to_ = 'pending' THEN "  \
	"NULL ELSE t.artifacts END, "                                                              \
	"engine_id = CASE WHEN x.to_ = 'pending' THEN NULL ELSE coalesce(x.data->>'engine_id', "   \
	"t.engine_id) END, "                                                                       \
	"skip_reason = CASE WHEN x.to_ = 'skipped' THEN x.skip_reason WHEN x.to_ = 'pending' "     \
	"THEN NULL ELSE t.skip_reason END, "                                                       \
	"error = CASE WHEN x.error IS NOT NULL THEN x.error WHEN x.to_ IN ('pending', "            \
	"'completed') THEN NULL "                                                                  \
	"ELSE t.error END, "                                                                       \
	"progress = CASE WHEN x.to_ = 'completed' THEN 1 WHEN x.to_ IN ('pending', 'ready') "      \
	"THEN 0 ELSE t.progress END, "                                                             \
	"lease_owner = CASE WHEN x.to_ = 'running' THEN t.lease_owner ELSE NULL END, "             \
	"lease_token = CASE WHEN x.to_ = 'running' THEN t.lease_token ELSE NULL END, "             \
	"lease_expires_at = CASE WHEN x.to_ = 'running' THEN t.lease_expires_at ELSE NULL END "    \
	"FROM x WHERE t.id = x.id AND t.job_id = x.job_id AND t.job_id IN (SELECT id FROM jl) "    \
	"AND t.status = x.from_ AND (x.lease IS NULL OR t.lease_token = x.lease) "                 \
	"AND (NOT coalesce(x.with_job, false) OR x.job_id IN (SELECT id FROM yok)) "               \
	"RETURNING x.ord, x.job_id, x.from_, x.to_, t.id, t.attempt, t.stage, t.stage_number, "    \
	"x.att), "                                                                                 \
	"ta AS (UPDATE task_attempts a SET ended_at = now(), outcome = tu.att->>'outcome', "       \
	"pid = (tu.att->>'pid')::int, exit_code = (tu.att->>'exit_code')::int, "                   \
	"signal = (tu.att->>'signal')::int, error = tu.att->'error', "                             \
	"fetch_ms = (tu.att->>'fetch_ms')::bigint, run_ms = (tu.att->>'run_ms')::bigint, "         \
	"upload_ms = (tu.att->>'upload_ms')::bigint, "                                             \
	"cpu_seconds = (tu.att->>'cpu_seconds')::float8, "                                         \
	"max_rss_bytes = (tu.att->>'max_rss_bytes')::bigint "                                      \
	"FROM tu WHERE tu.att IS NOT NULL AND a.task_id = tu.id AND a.attempt = tu.attempt), "     \
	"ydep AS (SELECT y.* FROM y JOIN jl ON jl.id = y.id AND jl.status = y.from_ WHERE "        \
	"y.needs_task IN (SELECT id FROM tu)), "                                                   \
	"yall AS (SELECT * FROM yok UNION ALL SELECT * FROM ydep), "                               \
	"applied AS (SELECT ord, job_id FROM tu UNION ALL SELECT ord, id FROM yall), "             \
	"cnt AS (SELECT job_id, count(*)::bigint AS n FROM applied GROUP BY job_id), "             \
	"td AS (SELECT tu.job_id, "                                                                \
	"sum((tu.to_ = 'completed')::int - (tu.from_ = 'completed')::int) AS completed, "          \
	"sum((tu.to_ = 'failed')::int - (tu.from_ = 'failed')::int) AS failed, "                   \
	"sum((tu.to_ = 'running')::int - (tu.from_ = 'running')::int) AS running "                 \
	"FROM tu GROUP BY tu.job_id), "                                                            \
	"ju AS (UPDATE jobs j SET event_seq = j.event_seq + cnt.n, rev = j.rev + 1, "              \
	"tasks_completed = j.tasks_completed + coalesce(td.completed, 0), "                        \
	"tasks_failed = j.tasks_failed + coalesce(td.failed, 0), "                                 \
	"tasks_running = j.tasks_running + coalesce(td.running, 0), "                              \
	"status = coalesce(yall.to_, j.status), "                                                  \
	"queued_at = CASE WHEN yall.to_ = 'queued' THEN now() ELSE j.queued_at END, "              \
	"started_at = CASE WHEN yall.to_ = 'running' THEN coalesce(j.started_at, now()) "          \
	"ELSE j.started_at END, "                                                                  \
	"completed_at = CASE WHEN yall.to_ IN ('completed', 'failed', 'cancelled') THEN now() "    \
	"WHEN yall.to_ = 'queued' THEN NULL ELSE j.completed_at END, "                             \
	"error = CASE WHEN yall.to_ = 'failed' THEN yall.error WHEN yall.to_ = 'queued' THEN "     \
	"NULL "                                                                                    \
	"ELSE j.error END, "                                                                       \
	"attempt = j.attempt + coalesce(yall.to_ = 'queued' AND yall.from_ <> 'pending', "         \
	"false)::int, "                                                                            \
	"progress = CASE WHEN yall.to_ = 'completed' THEN 1 WHEN yall.to_ = 'queued' THEN 0 ELSE " \
	"least(1, greatest(0, (SELECT coalesce(avg(CASE WHEN coalesce(tu.to_, t.status) IN "       \
	"('completed', 'skipped', 'failed', 'cancelled') THEN 1 WHEN coalesce(tu.to_, t.status) "  \
	"IN ('pending', 'ready') THEN 0 ELSE t.progress END), 0) FROM tasks t LEFT JOIN tu ON "    \
	"tu.id = t.id WHERE t.job_id = j.id))) END, "                                              \
	"current_stage = CASE WHEN yall.to_ IN ('completed', 'failed', 'cancelled', 'queued') "    \
	"THEN "                                                                                    \
	"NULL ELSE j.current_stage END, "                                                          \
	"cancel_requested = CASE WHEN yall.to_ = 'cancelled' THEN true WHEN yall.to_ = 'queued' "  \
	"THEN false ELSE j.cancel_requested END "                                                  \
	"FROM cnt LEFT JOIN yall ON yall.id = cnt.job_id LEFT JOIN td ON td.job_id = cnt.job_id "  \
	"WHERE j.id = cnt.job_id "                                                                 \
	"RETURNING j.id, j.event_seq - cnt.n AS base, j.rev, j.project_id, j.pipeline, "           \
	"j.tasks_total, j.tasks_completed, j.tasks_failed, j.tasks_running), "                     \
	"counts AS (SELECT ju.id AS job_id, jsonb_build_object('tasks_total', ju.tasks_total, "    \
	"'tasks_completed', ju.tasks_completed, 'tasks_failed', ju.tasks_failed, "                 \
	"'tasks_running', ju.tasks_running) AS c FROM ju), "                                       \
	"num AS (SELECT a.ord, a.job_id, ju.base + row_number() OVER (PARTITION BY a.job_id "      \
	"ORDER BY a.ord) AS seq FROM applied a JOIN ju ON ju.id = a.job_id), "                     \
	"ev AS (INSERT INTO job_events (job_id, seq, project_id, kind, task_id, stage, "           \
	"status_from, status_to, reason, request_id, data) "                                       \
	"SELECT num.job_id, num.seq, ju.project_id, coalesce(x.kind, y.kind), x.id, x.stage, "     \
	"coalesce(x.from_, y.from_), coalesce(x.to_, y.to_), coalesce(x.reason, y.reason), "       \
	"coalesce(x.request_id, y.request_id), coalesce(x.data, y.data, '{}') || counts.c "        \
	"FROM num JOIN ju ON ju.id = num.job_id JOIN counts ON counts.job_id = num.job_id "        \
	"LEFT JOIN x ON x.ord = num.ord LEFT JOIN y ON y.ord = num.ord "                           \
	"RETURNING job_id, seq, id, data, ts) "                                                    \
	"SELECT num.ord, ev.seq, ev.id, ju.rev, ev.data::text, "                                   \
	"(extract(epoch from jl.created_at) * 1e6)::bigint, "                                      \
	"(extract(epoch from jl.queued_at) * 1e6)::bigint, "                                       \
	"(extract(epoch from jl.started_at) * 1e6)::bigint, "                                      \
	"pg_notify('" ENGINE_JOBS_CHANNEL "', ju.id::text || ' ' || ju.rev), "                     \
	"(SELECT pg_notify('stageline_ready', '') WHERE EXISTS (SELECT 1 FROM tu WHERE tu.to_ = "  \
	"'ready')), (extract(epoch from ev.ts) * 1e6)::bigint "                                    \
	"FROM ev JOIN num ON num.job_id = ev.job_id AND num.seq = ev.seq "                         \
	"JOIN ju ON ju.id = ev.job_id JOIN jl ON jl.id = ev.job_id ORDER BY num.ord"

/* One change of the batch, kept for the announcement after the commit. */
struct txn_change {
	bool is_task;
	int from, to; /* enum job_status or enum task_status */
	char *job_id, *project_id, *pipeline, *task_id, *stage, *kind, *reason, *request_id;
	json_t *error;
};

struct job_txn {
	struct engine *e;
	TAILQ_ENTRY(job_txn) link; /* on e->txns while its commit is in flight */
	bool listed;
	json_t *jobs, *tasks; /* the statement's two parameters */
	struct txn_change *changes;
	size_t n, cap;
	job_txn_cb cb;
	void *arg;
	struct pg_pool_query *q;
};

struct job_txn *job_txn_new(struct engine *e)
{
	struct job_txn *t = xcalloc(1, sizeof *t);
	t->e = e;
	t->jobs = json_array();
	t->tasks = json_array();
	return t;
}

void job_txn_free(struct job_txn *t)
{
	if (t == NULL)
		return;
	pg_pool_cancel(t->q);
	if (t->listed)
		TAILQ_REMOVE(&t->e->txns, t, link);
	for (size_t i = 0; i < t->n; i++) {
		struct txn_change *c = &t->changes[i];
		free(c->job_id);
		free(c->project_id);
		free(c->pipeline);
		free(c->task_id);
		free(c->stage);
		free(c->kind);
		free(c->reason);
		free(c->request_id);
		json_decref(c->error);
	}
	free(t->changes);
	json_decref(t->jobs);
	json_decref(t->tasks);
	free(t);
}

static struct txn_change *txn_add(struct job_txn *t)
{
	if (t->n == t->cap) {
		t->cap = t->cap ? t->cap * 2 : 8;
		t->changes = xrealloc(t->changes, t->cap * sizeof *t->changes);
	}
	struct txn_change *c = &t->changes[t->n++];
	memset(c, 0, sizeof *c);
	return c;
}

static char *dup_or_null(const char *s)
{
	return s ? xstrdup(s) : NULL;
}

bool job_set_status(struct job_txn *t, const struct job_ref *j, enum job_status from,
                    enum job_status to, const char *reason, const json_t *error)
{
	return job_set_status_data(t, j, from, to, reason, error, NULL);
}

bool job_set_status_data(struct job_txn *t, const struct job_ref *j, enum job_status from,
                         enum job_status to, const char *reason, const json_t *error,
                         const json_t *data)
{
	return job_set_status_after(t, j, from, to, reason, error, data, NULL);
}

bool job_set_status_after(struct job_txn *t, const struct job_ref *j, enum job_status from,
                          enum job_status to, const char *reason, const json_t *error,
                          const json_t *data, const char *task_id)
{
	const char *kind = job_lifecycle_kind(from, to);
	if (kind == NULL) {
		log_error("job.invalid_transition", "refused a job status change",
		          LF_STR("job_id", j->job_id), LF_STR("status_from", job_status_name(from)),
		          LF_STR("status_to", job_status_name(to)));
		return false;
	}
	size_t ord = t->n;
	struct txn_change *c = txn_add(t);
	c->from = (int)from;
	c->to = (int)to;
	c->job_id = xstrdup(j->job_id);
	c->project_id = xstrdup(j->project_id);
	c->pipeline = xstrdup(j->pipeline);
	c->kind = xstrdup(kind);
	c->reason = dup_or_null(reason);
	c->request_id = dup_or_null(j->request_id);
	c->error = error ? json_deep_copy(error) : NULL;
	json_array_append_new(t->jobs, json_pack("{s:I, s:s, s:s, s:s, s:s?, s:O?, s:s, s:s?}",
	                                         "ord", (json_int_t)ord, "id", j->job_id, "from_",
	                                         job_status_name(from), "to_", job_status_name(to),
	                                         "reason", reason, "error", error, "kind", kind,
	                                         "request_id", j->request_id));
	json_t *row = json_array_get(t->jobs, json_array_size(t->jobs) - 1);
	if (data)
		json_object_set(row, "data", (json_t *)data);
	if (task_id)
		json_object_set_new(row, "needs_task", json_string(task_id));
	return true;
}

/* The kind of a task edge that no module run explains (ARCHITECTURE §4). */
static const char *task_stage_kind(enum task_status to)
{
	switch (to) {
	case TASK_READY: return "job.stage.ready";
	case TASK_SKIPPED: return "job.stage.skipped";
	case TASK_CANCELLED: return "job.stage.cancelled";
	case TASK_PENDING: return "job.stage.reset"; /* retry-from-stage */
	default: return NULL; /* module edges name their job.module.* kind */
	}
}

bool task_set_status(struct job_txn *t, const struct task_ref *k, enum task_status from,
                     enum task_status to, const char *reason, const struct task_set_opts *o)
{
	const char *kind = o && o->kind ? o->kind : task_stage_kind(to);
	if (!task_status_edge_ok(from, to) || kind == NULL) {
		log_error("job.invalid_transition", "refused a task status change",
		          LF_STR("job_id", k->job_id), LF_STR("task_id", k->task_id),
		          LF_STR("status_from", task_status_name(from)),
		          LF_STR("status_to", task_status_name(to)));
		return false;
	}
	size_t ord = t->n;
	struct txn_change *c = txn_add(t);
	c->is_task = true;
	c->from = (int)from;
	c->to = (int)to;
	c->job_id = xstrdup(k->job_id);
	c->project_id = xstrdup(k->project_id);
	c->pipeline = xstrdup(k->pipeline);
	c->task_id = xstrdup(k->task_id);
	c->stage = xstrdup(k->stage);
	c->kind = xstrdup(kind);
	c->reason = dup_or_null(reason);
	c->request_id = dup_or_null(k->request_id);
	c->error = o && o->error ? json_deep_copy(o->error) : NULL;
	char nb[40] = "";
	if (o && o->not_before_us > 0)
		clock_fmt_rfc3339_us(nb, sizeof nb, o->not_before_us);
	json_t *row =
	        json_pack("{s:I, s:s, s:s, s:s, s:s, s:s?, s:s, s:s, s:s?, s:s?, s:O?, s:s?, s:s?}",
	                  "ord", (json_int_t)ord, "id", k->task_id, "job_id", k->job_id, "from_",
	                  task_status_name(from), "to_", task_status_name(to), "reason", reason,
	                  "kind", kind, "stage", k->stage, "lease", o ? o->lease_token : NULL,
	                  "skip_reason", o ? o->skip_reason : NULL, "error", o ? o->error : NULL,
	                  "not_before", nb[0] ? nb : NULL, "request_id", k->request_id);
	if (o && o->with_job)
		json_object_set_new(row, "with_job", json_true());
	if (o && o->keep_retries)
		json_object_set_new(row, "keep_retries", json_true());
	if (o && o->data)
		json_object_set(row, "data", (json_t *)o->data);
	if (o && o->output)
		json_object_set(row, "output", (json_t *)o->output);
	if (o && o->attempt_end)
		json_object_set(row, "att", (json_t *)o->attempt_end);
	if (o && o->artifacts)
		json_object_set(row, "artifacts", (json_t *)o->artifacts);
	json_array_append_new(t->tasks, row);
	return true;
}

size_t job_txn_size(const struct job_txn *t)
{
	return t->n;
}

static enum log_level task_event_level(const char *kind)
{
	if (strcmp(kind, "job.module.retry") == 0)
		return LOG_LVL_WARN;
	if (strcmp(kind, "job.module.error") == 0 || strcmp(kind, "job.module.panic") == 0 ||
	    strcmp(kind, "job.module.timeout") == 0)
		return LOG_LVL_ERROR;
	return LOG_LVL_INFO;
}

#define DATA_INT(k) LF_INT(k, json_integer_value(json_object_get(ev->data, k)))
#define DATA_JSON(k) LF_JSON(k, json_object_get(ev->data, k))

void job_announce(struct engine *e, const struct sl_event *ev, bool is_task, int64_t dur_ms,
                  const json_t *error, int64_t created_us)
{
	if (is_task) {
		log_emit(task_event_level(ev->kind), ev->kind, "stage status changed",
		         LF_STR("job_id", ev->job_id), LF_STR("project_id", ev->project_id),
		         LF_STR("pipeline", ev->pipeline), LF_STR("task_id", ev->task_id),
		         LF_STR("stage", ev->stage), LF_STR("status_from", ev->status_from),
		         LF_STR("status_to", ev->status_to), LF_STR("reason", ev->reason),
		         LF_INT("seq", ev->seq), DATA_JSON("module"), DATA_JSON("attempt"),
		         DATA_JSON("pid"), DATA_JSON("duration_ms"), DATA_JSON("error"),
		         DATA_JSON("exit_code"), DATA_JSON("signal"), DATA_JSON("retries"),
		         DATA_JSON("backoff_ms"), DATA_INT("tasks_total"),
		         DATA_INT("tasks_completed"), DATA_INT("tasks_failed"),
		         DATA_INT("tasks_running"), LF_STR("request_id", ev->request_id), LF_END);
	} else {
		log_emit(error ? LOG_LVL_ERROR : LOG_LVL_INFO, ev->kind, "job status changed",
		         LF_STR("job_id", ev->job_id), LF_STR("project_id", ev->project_id),
		         LF_STR("pipeline", ev->pipeline), LF_STR("status_from", ev->status_from),
		         LF_STR("status_to", ev->status_to), LF_STR("reason", ev->reason),
		         LF_INT("duration_ms", dur_ms), LF_INT("seq", ev->seq),
		         DATA_INT("tasks_total"), DATA_INT("tasks_completed"),
		         DATA_INT("tasks_failed"), DATA_INT("tasks_running"),
		         LF_JSON("error", error), LF_STR("request_id", ev->request_id), LF_END);
		metric_inc(metrics_default_get(M_JOBS_STATUS_TRANSITION_TOTAL), 1, ev->status_from,
		           ev->status_to);
		enum job_status to;
		if (job_status_parse(ev->status_to, &to) && job_status_terminal(to) &&
		    created_us > 0)
			metric_observe(metrics_default_get(M_JOBS_TOTAL_LATENCY_MS),
			               (double)(clock_now_us() - created_us) / 1000.0);
	}
	rev_cache_put(e->revs, ev->job_id, ev->project_id, ev->rev, true);
	event_bus_publish(e->bus, ev);
}

/* After the commit: a log line, metrics and a bus event per applied change. */
static void txn_announce(struct job_txn *t, const PGresult *res)
{
	int64_t now = clock_now_us();
	for (int r = 0; r < PQntuples(res); r++) {
		size_t ord = (size_t)strtoull(PQgetvalue(res, r, 0), NULL, 10);
		if (ord >= t->n)
			continue;
		struct txn_change *c = &t->changes[ord];
		json_t *data = pg_json(res, r, 4);
		struct sl_event ev = {
		        .id = strtoll(PQgetvalue(res, r, 2), NULL, 10),
		        .seq = strtoll(PQgetvalue(res, r, 1), NULL, 10),
		        .rev = strtoll(PQgetvalue(res, r, 3), NULL, 10),
		        .ts_us = PQgetisnull(res, r, 10)
		                         ? now
		                         : strtoll(PQgetvalue(res, r, 10), NULL, 10),
		        .kind = c->kind,
		        .job_id = c->job_id,
		        .project_id = c->project_id,
		        .pipeline = c->pipeline,
		        .task_id = c->task_id,
		        .stage = c->stage,
		        .status_from =
		                c->is_task ? task_status_name(c->from) : job_status_name(c->from),
		        .status_to = c->is_task ? task_status_name(c->to) : job_status_name(c->to),
		        .reason = c->reason,
		        .request_id = c->request_id,
		        .data = data,
		};
		/* duration_ms of a job edge: the time spent in the state left. */
		int64_t created = strtoll(PQgetvalue(res, r, 5), NULL, 10);
		int64_t queued = strtoll(PQgetvalue(res, r, 6), NULL, 10);
		int64_t started = strtoll(PQgetvalue(res, r, 7), NULL, 10);
		int64_t since = c->from == JOB_RUNNING  ? started
		                : c->from == JOB_QUEUED ? queued
		                                        : created;
		int64_t dur_ms = since > 0 ? (now - since) / 1000 : 0;
		job_announce(t->e, &ev, c->is_task, dur_ms, c->error, created);
		json_decref(data);
	}
}

static bool txn_result_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct job_txn *t = arg;
	t->q = NULL;
	if (t->listed) {
		TAILQ_REMOVE(&t->e->txns, t, link);
		t->listed = false;
	}
	if (res)
		txn_announce(t, res);
	else
		metric_inc(metrics_default_get(M_EVENTS_PERSIST_FAILURES_TOTAL), (double)t->n);
	size_t applied = res ? (size_t)PQntuples(res) : 0;
	bool *which = xcalloc(t->n ? t->n : 1, sizeof *which);
	for (int r = 0; res && r < PQntuples(res); r++) {
		size_t ord = (size_t)strtoull(PQgetvalue(res, r, 0), NULL, 10);
		if (ord < t->n)
			which[ord] = true;
	}
	if (t->cb)
		t->cb(applied, t->n, which, err, t->arg);
	free(which);
	job_txn_free(t);
	return false;
}

void job_txn_commit(struct job_txn *t, job_txn_cb cb, void *arg)
{
	t->cb = cb;
	t->arg = arg;
	char *pj = json_dumps(t->jobs, JSON_COMPACT);
	char *pt = json_dumps(t->tasks, JSON_COMPACT);
	const char *values[2] = {pj, pt};
	t->q = pg_pool_query_prepared(t->e->pool, "job_txn", 2, values, txn_result_cb, t);
	TAILQ_INSERT_TAIL(&t->e->txns, t, link);
	t->listed = true;
	free(pj);
	free(pt);
}

void job_txn_detach(struct job_txn *t)
{
	if (t != NULL)
		t->cb = NULL; /* the changes still commit and are announced */
}

/* --- Engine wiring ------------------------------------------------------- */

void job_engine_init(struct engine *e)
{
	TAILQ_INIT(&e->submits);
	TAILQ_INIT(&e->txns);
	e->revs = rev_cache_new(e->opts.rev_cache_max);
	e->rev_sub = event_bus_subscribe(e->bus, rev_on_event_cb, e);
	e->flush_ev = event_new(e->app->base, -1, 0, submit_flush_cb, e);
}

void job_engine_fini(struct engine *e)
{
	/* Commits still in flight when the loop stopped: not applied as far as
	 * anyone here will know; nothing of them outlives the engine. */
	struct job_txn *t;
	while ((t = TAILQ_FIRST(&e->txns)) != NULL) {
		TAILQ_REMOVE(&e->txns, t, link);
		t->listed = false;
		job_txn_free(t);
	}
	struct job_op *op;
	while ((op = TAILQ_FIRST(&e->submits)) != NULL) {
		TAILQ_REMOVE(&e->submits, op, link);
		job_op_free(op);
	}
	event_sub_cancel(e->rev_sub);
	rev_cache_free(e->revs);
	if (e->flush_ev)
		event_free(e->flush_ev);
}

bool job_engine_prepare(struct engine *e)
{
	bool ok = pg_pool_prepare(e->pool, "job_submit", SQL_JOB_SUBMIT, 3, NULL) &&
	          pg_pool_prepare(e->pool, "job_txn", SQL_JOB_TXN, 2, NULL) &&
	          pg_pool_prepare(e->pool, "job_keys", SQL_JOB_KEYS, 1, NULL);
	for (size_t i = 0; i < sizeof job_statements / sizeof job_statements[0]; i++)
		ok = ok && pg_pool_prepare(e->pool, job_statements[i].name, job_statements[i].sql,
		                           job_statements[i].nparams, NULL);
	return ok;
}
