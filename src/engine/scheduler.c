/* The scheduler (scheduler.h). One struct stask per claimed task walks
 *   FETCH (inputs into the scratch dir) -> RUN (its module) -> UPLOAD
 *   (output.json, stage.log, the stage's input.json) -> COMMIT (a shared
 *   transaction, fenced by the lease) -> gone
 * and a task whose lease is lost or whose job stopped is cancelled where it
 * is. Database work is batched: one claim statement per module per pass,
 * every outcome of a loop pass in one job_txn, one read and one job_txn for
 * the DAG steps that follow. */
#include "engine/scheduler.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <ftw.h>
#include <libpq-fe.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/app.h"
#include "core/buf.h"
#include "core/clock.h"
#include "core/config.h"
#include "core/fsutil.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/scrub.h"
#include "core/xmalloc.h"
#include "db/pgjson.h"
#include "db/pool.h"
#include "engine/artifacts.h"
#include "engine/engine_int.h"
#include "engine/events.h"
#include "engine/job.h"
#include "engine/pipeline.h"
#include "exec/module.h"
#include "store/store.h"

/* --- Pure parts ----------------------------------------------------------- */

int64_t scheduler_backoff_ms(int64_t base_ms, int64_t cap_ms, int retries, double rnd)
{
	if (base_ms <= 0)
		return 0;
	double hi = (double)base_ms * pow(2.0, retries < 0 ? 0 : retries > 60 ? 60 : retries);
	if (cap_ms > 0 && hi > (double)cap_ms)
		hi = (double)cap_ms;
	if (rnd < 0)
		rnd = 0;
	if (rnd >= 1)
		rnd = 0.999999;
	return (int64_t)(hi * rnd);
}

static bool adv_settled(enum adv_task_status s)
{
	return s == ADV_COMPLETED || s == ADV_FAILED || s == ADV_SKIPPED || s == ADV_CANCELLED;
}

enum adv_job scheduler_advance_plan(struct adv_task *t, size_t n, size_t *failed)
{
	bool any_required_failed = false;
	for (size_t i = 0; i < n; i++) {
		t[i].next = t[i].status;
		if (t[i].status == ADV_FAILED && t[i].required && !any_required_failed) {
			any_required_failed = true;
			*failed = i;
		}
	}
	if (any_required_failed) {
		/* Fail fast: nothing more starts. */
		for (size_t i = 0; i < n; i++)
			if (t[i].status == ADV_PENDING || t[i].status == ADV_READY)
				t[i].next = ADV_CANCELLED;
		return ADV_JOB_FAIL;
	}
	/* Stage order is topological: one pass settles chains of skips. */
	for (size_t i = 0; i < n; i++) {
		if (t[i].status != ADV_PENDING)
			continue;
		bool all_done = true, blocked = false;
		for (size_t k = 0; k < t[i].ndeps; k++) {
			const struct adv_task *d = &t[t[i].deps[k]];
			enum adv_task_status ds = d->next;
			if (ds == ADV_COMPLETED || (ds == ADV_SKIPPED && d->reused))
				continue;
			all_done = false;
			if (ds == ADV_FAILED || ds == ADV_CANCELLED || ds == ADV_SKIPPED) {
				blocked = true;
				/* a dependency skipped in this pass passes its cause on */
				t[i].cause = ds == ADV_SKIPPED && d->status != ADV_SKIPPED
				                     ? d->cause
				                     : t[i].deps[k];
				break;
			}
		}
		if (blocked)
			t[i].next = ADV_SKIPPED;
		else if (all_done)
			t[i].next = ADV_READY;
	}
	for (size_t i = 0; i < n; i++)
		if (!adv_settled(t[i].next))
			return ADV_JOB_NOTHING;
	return ADV_JOB_COMPLETE;
}

/* --- State ----------------------------------------------------------------- */

enum stask_state { ST_ARCHIVE, ST_FETCH, ST_RUN, ST_UPLOAD, ST_COMMIT };

struct claim_ctx;
struct jput;
struct fin_batch;
struct xfer;
struct hash_job;

struct srunner {
	struct scheduler *s;
	const struct module_def *def;
	struct module_runner *r;
	int running; /* claimed and not yet committed */
	bool claiming;
	bool more; /* the last claim was full: there may be more */
	bool starved; /* wanted slots, but other claims held them all */
	bool again; /* a wake-up came while the claim was in flight */
	struct pg_pool_query *claim_q;
	struct claim_ctx *claim_c;
};

struct stask {
	TAILQ_ENTRY(stask) link;
	struct scheduler *s;
	struct srunner *sr;
	enum stask_state state;
	char *id, *job_id, *project, *pipeline, *stage, *lease, *request_id;
	int stage_number, attempt, retries, max_retries;
	int64_t backoff_ms, timeout_ms;
	json_t *params, *input, *resume_from;
	struct scrub_values *pii; /* privacy.scrub: the values of params' personal fields */
	bool pii_found; /* pii was looked for */
	json_t *dep_artifacts; /* [{stage, name, type, format, key, ...}] to fetch */
	char *upload_key; /* the job's uploaded input (root stages fetch it), or NULL */
	json_t *declared; /* the module's artifact frames: [{name, path, type, ...}] */
	json_t *stored; /* what was uploaded, for tasks.artifacts */
	const struct pipeline *p;
	const struct stage_def *sd;
	char *workdir;
	LIST_HEAD(, xfer) xfers; /* store transfers in flight or waiting to retry */
	int nx; /* of them, the ones the task's step waits for */
	int nside; /* the others: the running manifest, a stage-log flush */
	bool upload_waiting; /* the upload waits for a side transfer to end */
	char **input_keys; /* per input: its store key (NULL: written here) */
	char **input_sha; /* per input: sha256 hex once hashed */
	/* UPLOAD hashes every file it names in the manifest first, a chunk
	 * per loop pass */
	struct hash_job *hash;
	struct event *step_ev; /* the next step once a phase's transfers ended */
	int archive_n, archive_phase; /* ARCHIVE: the earlier attempt moved, 0/1 */
	int64_t output_len; /* bytes of output.json */
	json_t *warnings; /* [{timestamp, message}] for the manifest */
	uint64_t log_flushed; /* log.total when stage.log was last stored */
	int64_t log_flush_us; /* monotonic: the last flush */
	struct frame_input *inputs;
	size_t ninputs;
	struct module_task *mt;
	int64_t t_claimed, t_fetch_end, t_run_end, t_upload_start, t_upload_end;
	int64_t lease_ok_us; /* monotonic: when the lease was last known ours */
	bool lease_checking;
	struct event *recheck_ev; /* a lease check that failed is asked again */
	struct pg_pool_query *check_q;
	struct hb_ctx *check_c;
	struct stage_log_ring log; /* stage.log text, bounded */
	/* the attempt's end */
	enum module_outcome outcome;
	bool have_outcome;
	json_t *error; /* typed error, NULL on success */
	json_t *output;
	char *engine_id;
	bool protocol_error;
	pid_t pid;
	int exit_code, term_signal;
	double cpu_seconds;
	int64_t max_rss_bytes;
	const char *stop_reason; /* why we cancelled it: job_cancelled, shutdown */
	bool lost; /* the lease is gone: nothing of it is written */
	bool fetch_failed;
	/* progress frames, flushed every PROGRESS_EVERY_MS */
	double progress;
	bool progress_dirty;
	int64_t progress_pub_us; /* the last progress event published (mono) */
};

#define PROGRESS_EVERY_MS 500
#define STAGE_LOG_CAP (8u * 1024 * 1024)
#define STAGE_LOG_HEAD (256u * 1024) /* kept whole when the middle is dropped */
#define XFER_TRIES 8 /* store transfers: tries before the task gives up */
#define XFER_BACKOFF_MS 500
#define XFER_BACKOFF_CAP_MS 30000
#define HASH_CHUNK (1u << 20) /* bytes hashed per loop pass */
#define ARCHIVE_MANIFEST_MAX (4u << 20)
#define FINALIZE_BATCH 200
#define ADVANCE_BATCH_MAX 1000
#define COMMIT_INFLIGHT_MAX 4

struct scheduler {
	struct engine *e;
	struct app *app;
	struct store *store;
	struct scheduler_opts o;
	struct srunner *runners;
	size_t nrunners;
	TAILQ_HEAD(, stask) tasks; /* every local task */
	int running; /* all claimed, not committed */
	struct event *kick_ev, *poll_ev, *hb_ev, *rescue_ev, *progress_ev, *commit_ev, *advance_ev,
	        *nb_ev, *grace_ev, *drained_ev;
	int64_t nb_at_us; /* the not_before timer's target, 0 when off */
	bool nb_followup;
	/* outcomes waiting for the next commit */
	TAILQ_HEAD(, stask) to_commit;
	size_t commit_inflight;
	/* jobs waiting for a DAG step */
	char **adv;
	size_t nadv, capadv;
	size_t adv_inflight;
	struct adv_slot {
		struct scheduler *s;
		struct pg_pool_query *q;
	} adv_q[2]; /* DAG-step reads in flight */
	bool hb_inflight, rescue_inflight, progress_inflight;
	bool draining;
	void (*drain_done)(void *arg);
	void *drain_arg;
	struct pg_pool_query *hb_q, *rescue_q, *stuck_q, *stats_q, *progress_q;
	struct hb_ctx *hb_c; /* the heartbeat in flight */
	struct event_sub *bus_sub; /* this instance's own job changes */
	unsigned char *hash_chunk; /* HASH_CHUNK bytes, shared by the hash jobs */
	/* job-level files (input.json, pipeline.log) */
	LIST_HEAD(, jput) jputs;
	struct event *fin_ev;
	struct pg_pool_query *fin_q;
	struct fin_batch *fin_batch;
	bool fin_inflight, fin_more;
	uint64_t rnd;
};

static void sched_kick(struct scheduler *s);
static void fin_kick(struct scheduler *s, int64_t ms);
static void stask_commit(struct stask *t);
static void stask_free(struct stask *t);
static void adv_add(struct scheduler *s, const char *job_id);

static double sched_rand(struct scheduler *s)
{
	/* xorshift64*: jitter only */
	s->rnd ^= s->rnd >> 12;
	s->rnd ^= s->rnd << 25;
	s->rnd ^= s->rnd >> 27;
	return (double)((s->rnd * 2685821657736338717ull) >> 11) / 9007199254740992.0;
}

static void tv_ms(struct timeval *tv, int64_t ms)
{
	if (ms < 0)
		ms = 0;
	tv->tv_sec = ms / 1000;
	tv->tv_usec = (ms % 1000) * 1000;
}

static const char *col(const PGresult *r, int row, int c)
{
	return PQgetisnull(r, row, c) ? NULL : PQgetvalue(r, row, c);
}

static int64_t col_i(const PGresult *r, int row, int c)
{
	return PQgetisnull(r, row, c) ? 0 : strtoll(PQgetvalue(r, row, c), NULL, 10);
}

/* --- SQL ------------------------------------------------------------------- */

/* The claim (TOOLCHAIN §10): candidate ready tasks of one module in id order,
 * their jobs locked first (the order job_txn locks in; SKIP LOCKED, so two
 * instances never wait on each other), then the tasks, re-checked. One
 * statement writes the leases, the attempts, the job start and the events. */
#define SQL_CLAIM                                                                                  \
	"WITH bp AS (SELECT p.id, coalesce(p.max_concurrent_jobs, $5::int) AS lim, (SELECT "       \
	"count(*) FROM jobs r WHERE r.project_id = p.id AND r.status = 'running') AS n FROM "      \
	"projects p WHERE coalesce(p.max_concurrent_jobs, $5::int) > 0), "                         \
	"c AS (SELECT t.id, t.job_id FROM tasks t WHERE t.status = 'ready' AND t.module = $2 AND " \
	"(t.not_before IS NULL OR t.not_before <= now()) AND NOT EXISTS (SELECT 1 FROM bp JOIN "   \
	"jobs q ON q.project_id = bp.id WHERE q.id = t.job_id AND q.status = 'queued' AND bp.n "   \
	">= bp.lim) ORDER BY t.id LIMIT $4), "                                                     \
	"jk AS (SELECT j.id, j.project_id, j.status, j.input, j.resume_from, j.created_at, "       \
	"j.queued_at, j.request_id, j.input_upload FROM jobs j WHERE j.id = ANY(ARRAY(SELECT "     \
	"job_id FROM c)) AND "                                                                     \
	"j.status IN ('queued', 'running') ORDER BY j.id FOR UPDATE SKIP LOCKED), "                \
	"jl AS (SELECT jr.id, jr.status, jr.input, jr.resume_from, jr.created_at, jr.queued_at, "  \
	"jr.request_id, jr.input_upload FROM (SELECT jk.*, row_number() OVER (PARTITION BY "       \
	"jk.project_id, "                                                                          \
	"jk.status ORDER BY jk.id) AS rk FROM jk) jr LEFT JOIN bp ON bp.id = jr.project_id WHERE " \
	"jr.status = 'running' OR bp.id IS NULL OR jr.rk <= bp.lim - bp.n), "                      \
	"tu AS (UPDATE tasks t SET status = 'running', attempt = t.attempt + 1, started_at = "     \
	"now(), lease_owner = $1, lease_token = gen_random_uuid(), lease_expires_at = now() + "    \
	"$3::bigint * interval '1 millisecond', progress = 0 WHERE t.id = ANY(ARRAY(SELECT c.id "  \
	"FROM c JOIN jl ON jl.id = c.job_id)) AND t.status = 'ready' RETURNING t.id, t.job_id, "   \
	"t.stage, t.stage_number, t.module, t.attempt, t.retries, t.max_retries, t.backoff_ms, "   \
	"t.timeout_ms, t.params, t.lease_token, t.depends_on, "                                    \
	"greatest(0, (extract(epoch from now() - t.ready_at) * 1000))::bigint AS wait_ms), "       \
	"cnt AS (SELECT job_id, count(*) AS n FROM tu GROUP BY job_id), "                          \
	"ju AS (UPDATE jobs j SET status = 'running', started_at = coalesce(j.started_at, "        \
	"now()), event_seq = j.event_seq + cnt.n + (jl.status = 'queued')::int, rev = j.rev + 1, " \
	"tasks_running = j.tasks_running + cnt.n, "                                                \
	"current_stage = (SELECT tu.stage FROM tu WHERE tu.job_id = j.id ORDER BY "                \
	"tu.stage_number LIMIT 1) FROM cnt JOIN jl ON jl.id = cnt.job_id WHERE j.id = "            \
	"cnt.job_id RETURNING j.id, jl.status AS old_status, j.event_seq - cnt.n - (jl.status = "  \
	"'queued')::int AS base, j.rev, j.project_id, j.pipeline, j.tasks_total, "                 \
	"j.tasks_completed, j.tasks_failed, j.tasks_running), "                                    \
	"counts AS (SELECT ju.id AS job_id, jsonb_build_object('tasks_total', ju.tasks_total, "    \
	"'tasks_completed', ju.tasks_completed, 'tasks_failed', ju.tasks_failed, "                 \
	"'tasks_running', ju.tasks_running) AS c FROM ju), "                                       \
	"evs AS (SELECT ju.id AS job_id, ju.base + 1 AS seq, ju.project_id, "                      \
	"'job.lifecycle.start' AS kind, NULL::uuid AS task_id, NULL::text AS stage, "              \
	"'queued' AS status_from, 'running' AS status_to, 'task_claimed' AS reason, counts.c AS "  \
	"data FROM ju JOIN counts ON counts.job_id = ju.id WHERE ju.old_status = 'queued' "        \
	"UNION ALL SELECT tu.job_id, ju.base + (ju.old_status = 'queued')::int + row_number() "    \
	"OVER (PARTITION BY tu.job_id ORDER BY tu.stage_number, tu.id), ju.project_id, "           \
	"'job.module.spawn', tu.id, tu.stage, 'ready', 'running', 'claimed', "                     \
	"jsonb_build_object('module', tu.module, 'attempt', tu.attempt, 'lease_token', "           \
	"tu.lease_token, 'instance_id', $1::text, 'duration_ms', tu.wait_ms) || counts.c FROM "    \
	"tu JOIN ju ON ju.id = tu.job_id JOIN counts ON counts.job_id = tu.job_id), "              \
	"ev AS (INSERT INTO job_events (job_id, seq, project_id, kind, task_id, stage, "           \
	"status_from, status_to, reason, data) SELECT * FROM evs RETURNING job_id, seq, id, "      \
	"task_id, kind, data, ts), "                                                               \
	"ta AS (INSERT INTO task_attempts (task_id, attempt, job_id, instance_id, wait_ms) "       \
	"SELECT tu.id, tu.attempt, tu.job_id, $1, tu.wait_ms FROM tu ON CONFLICT DO NOTHING) "     \
	"SELECT ev.kind, ev.job_id::text, ev.seq, ev.id, ev.data::text, ju.rev, ju.project_id, "   \
	"ju.pipeline, (extract(epoch from jl.created_at) * 1e6)::bigint, "                         \
	"(extract(epoch from jl.queued_at) * 1e6)::bigint, tu.id::text, tu.stage, "                \
	"tu.stage_number, tu.module, tu.attempt, tu.retries, tu.max_retries, tu.backoff_ms, "      \
	"tu.timeout_ms, tu.params::text, tu.lease_token::text, jl.input::text, "                   \
	"jl.resume_from::text, jl.request_id, "                                                    \
	"(SELECT jsonb_agg(a || jsonb_build_object('stage', d.stage)) FROM tasks d, "              \
	"jsonb_array_elements(coalesce(d.artifacts, (SELECT e.artifacts FROM tasks e WHERE "       \
	"e.job_id = (jl.resume_from->>'job_id')::uuid AND e.stage = d.stage))) a WHERE "           \
	"tu.id IS NOT NULL AND d.job_id = tu.job_id AND d.stage = ANY(tu.depends_on) AND "         \
	"coalesce(a->>'role', 'output') = 'output')::text, "                                       \
	"pg_notify('" ENGINE_JOBS_CHANNEL "', ju.id::text || ' ' || ju.rev), "                     \
	"(extract(epoch from ev.ts) * 1e6)::bigint, jl.input_upload "                              \
	"FROM ev JOIN ju ON ju.id = ev.job_id JOIN jl ON jl.id = ev.job_id LEFT JOIN tu ON "       \
	"tu.id = ev.task_id ORDER BY ev.job_id, ev.seq"

/* Lease renewal for the tasks this instance holds; what comes back is still
 * ours, with its job's status (a stopped job stops its modules). */
#define SQL_HEARTBEAT                                                                           \
	"WITH l AS (SELECT * FROM jsonb_to_recordset($2::jsonb) AS l(id uuid, lease uuid)) "    \
	"UPDATE tasks t SET lease_expires_at = now() + $3::bigint * interval '1 millisecond' "  \
	"FROM l WHERE t.id = l.id AND t.lease_token = l.lease AND t.lease_owner = $1 AND "      \
	"t.status = 'running' RETURNING t.id::text, (SELECT j.status FROM jobs j WHERE j.id = " \
	"t.job_id)"

/* Running tasks whose lease lapsed, or whose owner's heartbeat stopped. */
#define SQL_RESCUE_FIND                                                                            \
	"SELECT t.id::text, t.job_id::text, j.project_id, j.pipeline, t.stage, "                   \
	"t.lease_token::text, t.lease_owner, j.status, t.attempt, t.module FROM tasks t JOIN "     \
	"jobs j ON j.id = t.job_id WHERE t.status = 'running' AND t.lease_owner IS DISTINCT FROM " \
	"$1 AND (t.lease_expires_at < now() OR NOT EXISTS (SELECT 1 FROM instances i WHERE i.id "  \
	"= t.lease_owner AND i.heartbeat_at > now() - $2::bigint * interval '1 millisecond')) "    \
	"ORDER BY t.lease_expires_at LIMIT 1000"

/* Active jobs with nothing ready or running: a crash between a commit and
 * its DAG step, or a retry just re-queued. */
#define SQL_STUCK                                                                               \
	"SELECT j.id::text FROM jobs j WHERE j.status IN ('queued', 'running') AND NOT EXISTS " \
	"(SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.status IN ('ready', 'running')) "   \
	"LIMIT 500"

#define SQL_ADV_READ                                                                               \
	"SELECT j.id::text, j.status, j.project_id, j.pipeline, (SELECT "                          \
	"json_agg(json_build_object("                                                              \
	"'id', t.id, 'stage', t.stage, 'status', t.status, 'required', t.required, 'depends_on', " \
	"t.depends_on, 'skip_reason', t.skip_reason, 'error', t.error) ORDER BY t.stage_number) "  \
	"FROM tasks t WHERE t.job_id = j.id)::text, j.request_id FROM jobs j WHERE j.id = "        \
	"ANY($1::uuid[]) AND j.status IN ('queued', 'running')"

#define SQL_PROGRESS                                                                               \
	"WITH x AS (SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(id uuid, job_id uuid, lease " \
	"uuid, p float8)), jl AS (SELECT id FROM jobs WHERE id IN (SELECT job_id FROM x) ORDER "   \
	"BY "                                                                                      \
	"id FOR UPDATE), tu AS (UPDATE tasks t SET progress = least(1, greatest(0, x.p)) FROM x "  \
	"WHERE t.id = x.id AND t.lease_token = x.lease AND t.status = 'running' AND t.job_id IN "  \
	"(SELECT id FROM jl) RETURNING t.job_id), ju AS (UPDATE jobs j SET rev = j.rev + 1 WHERE " \
	"j.id IN (SELECT job_id FROM tu) RETURNING j.id, j.rev, j.project_id) SELECT id::text, "   \
	"rev, project_id, pg_notify('" ENGINE_JOBS_CHANNEL "', id::text || ' ' || rev) FROM ju"

#define SQL_QUEUE_STATS                                                                           \
	"SELECT j.pipeline, count(*), coalesce(max(extract(epoch from now() - t.ready_at) * "     \
	"1000), 0)::bigint FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.status = 'ready' " \
	"GROUP BY j.pipeline"

#define SQL_LOGS_CLAIM                                                                             \
	"WITH c AS (SELECT id FROM jobs WHERE status IN ('completed', 'failed', 'cancelled') AND " \
	"logs_seq IS DISTINCT FROM event_seq AND tasks_running = 0 AND (logs_claimed_until IS "    \
	"NULL OR logs_claimed_until < now()) ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED), "       \
	"u AS (UPDATE jobs j SET logs_claimed_until = now() + interval '60 seconds' FROM c WHERE " \
	"j.id = c.id RETURNING j.id, j.project_id, j.pipeline, j.input, j.event_seq, j.logs_key) " \
	"SELECT u.id::text, u.project_id, u.pipeline, u.input::text, u.event_seq, "                \
	"u.logs_key, " PIPELOG_EVENTS_SQL("u.id") ", " PIPELOG_TASKS_SQL("u.id") " FROM u"

#define SQL_LOGS_DONE                                                         \
	"UPDATE jobs j SET logs_seq = x.seq, logs_claimed_until = NULL FROM " \
	"jsonb_to_recordset($1::jsonb) AS x(id uuid, seq bigint) WHERE j.id = x.id"

bool scheduler_prepare(struct engine *e)
{
	struct pg_pool *p = e->pool;
	return pg_pool_prepare(p, "sched_claim", SQL_CLAIM, 5, NULL) &&
	       pg_pool_prepare(p, "sched_heartbeat", SQL_HEARTBEAT, 3, NULL) &&
	       pg_pool_prepare(p, "sched_rescue_find", SQL_RESCUE_FIND, 2, NULL) &&
	       pg_pool_prepare(p, "sched_stuck", SQL_STUCK, 0, NULL) &&
	       pg_pool_prepare(p, "sched_adv_read", SQL_ADV_READ, 1, NULL) &&
	       pg_pool_prepare(p, "sched_progress", SQL_PROGRESS, 1, NULL) &&
	       pg_pool_prepare(p, "sched_queue_stats", SQL_QUEUE_STATS, 0, NULL) &&
	       pg_pool_prepare(p, "sched_logs_claim", SQL_LOGS_CLAIM, 1, NULL) &&
	       pg_pool_prepare(p, "sched_logs_done", SQL_LOGS_DONE, 1, NULL);
}

/* --- Scratch directories ---------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	if (flag == FTW_DP || flag == FTW_D)
		rmdir(path);
	else
		unlink(path);
	return 0;
}

static void rm_rf(const char *dir)
{
	if (dir && dir[0])
		nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static bool write_file(const char *path, const char *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0640);
	if (fd < 0)
		return false;
	size_t off = 0;
	while (off < len) {
		ssize_t w = write(fd, data + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			close(fd);
			return false;
		}
		off += (size_t)w;
	}
	return close(fd) == 0;
}

/* --- Keys ----------------------------------------------------------------- */

static char *stage_key(const char *project, const char *job_id, int stage_number, const char *stage,
                       const char *file)
{
	return xasprintf("%s/%s/%02d_%s/%s", project, job_id, stage_number, stage, file);
}

/* --- Task life ------------------------------------------------------------- */

static void stage_log(struct stask *t, const char *level, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* privacy.scrub: the values under personal-data fields of the task's
 * params, looked for once; NULL when there are none or scrubbing is off. */
static const struct scrub_values *stask_pii(struct stask *t)
{
	if (t->s->o.scrub && !t->pii_found) {
		t->pii = scrub_values_new(t->s->o.scrub, t->params);
		t->pii_found = true;
	}
	return t->pii;
}

/* A stage.log line in the reference's shape. */
static void stage_log(struct stask *t, const char *level, const char *fmt, ...)
{
	char line[4096];
	char ts[32];
	clock_fmt_log_ms(ts, sizeof ts, clock_now_us());
	int n = snprintf(line, sizeof line, "[%s] [%s] [%s] ", ts, t->stage, level);
	va_list ap;
	va_start(ap, fmt);
	if (n > 0 && (size_t)n < sizeof line)
		vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
	va_end(ap);
	/* the text after the prefix may carry a module's words */
	size_t len = strlen(line), pre = n > 0 && (size_t)n <= len ? (size_t)n : 0;
	struct buf sb = BUF_INIT;
	const char *text = line;
	if (t->s->o.scrub && pre < len) {
		buf_add(&sb, line, pre);
		if (scrub_text_values(t->s->o.scrub, stask_pii(t), &sb, line + pre, len - pre)) {
			text = sb.data;
			len = sb.len;
		}
	}
	stage_log_ring_add(&t->log, text, len);
	if (strcmp(level, "WARNING") == 0) {
		char iso[40];
		clock_fmt_rfc3339_us(iso, sizeof iso, clock_now_us());
		if (t->warnings == NULL)
			t->warnings = json_array();
		if (json_array_size(t->warnings) < 1000)
			json_array_append_new(t->warnings, json_pack("{s:s, s:s}", "timestamp", iso,
			                                             "message", text + pre));
	}
	buf_free(&sb);
}

static json_t *typed_error(const char *code, const char *category, bool retryable,
                           const char *message, const json_t *detail)
{
	return json_pack("{s:s, s:s, s:b, s:s, s:O?}", "code", code, "category", category,
	                 "retryable", retryable, "message", message ? message : "", "detail",
	                 detail);
}

static void xfer_free(struct xfer *x);
static void hash_job_free(struct hash_job *h);

static void stask_cancel_ops(struct stask *t)
{
	struct xfer *x;
	while ((x = LIST_FIRST(&t->xfers)) != NULL)
		xfer_free(x);
	t->nx = t->nside = 0;
	hash_job_free(t->hash);
	t->hash = NULL;
}

struct hb_ctx;
static void hb_ctx_free(struct hb_ctx *c);

/* The drain is over when nothing runs, waits for a commit, or waits for
 * the DAG step its commit called for. */
static void drain_check(struct scheduler *s)
{
	if (s->draining && s->drained_ev && s->running == 0 && s->nadv == 0 && s->adv_inflight == 0)
		event_active(s->drained_ev, EV_TIMEOUT, 0);
}

static void stask_free(struct stask *t)
{
	struct scheduler *s = t->s;
	TAILQ_REMOVE(&s->tasks, t, link);
	s->running--;
	t->sr->running--;
	metric_set(metrics_default_get(M_WORKER_INFLIGHT_JOBS), (double)s->running);
	stask_cancel_ops(t);
	if (t->recheck_ev)
		event_free(t->recheck_ev);
	if (t->step_ev)
		event_free(t->step_ev);
	if (t->check_q) {
		pg_pool_cancel(t->check_q);
		hb_ctx_free(t->check_c);
	}
	if (t->mt)
		module_task_detach(t->mt);
	rm_rf(t->workdir);
	for (size_t i = 0; i < t->ninputs; i++) {
		free(t->inputs[i].name);
		free(t->inputs[i].type);
		free(t->inputs[i].path);
		free(t->inputs[i].format);
	}
	for (size_t i = 0; i < t->ninputs; i++) {
		free(t->input_keys[i]);
		free(t->input_sha[i]);
	}
	free(t->input_keys);
	free(t->input_sha);
	free(t->inputs);
	free(t->id);
	free(t->job_id);
	free(t->project);
	free(t->pipeline);
	free(t->stage);
	free(t->lease);
	free(t->request_id);
	free(t->upload_key);
	free(t->workdir);
	free(t->engine_id);
	json_decref(t->params);
	scrub_values_free(t->pii);
	json_decref(t->input);
	json_decref(t->resume_from);
	json_decref(t->dep_artifacts);
	json_decref(t->declared);
	json_decref(t->stored);
	json_decref(t->error);
	json_decref(t->output);
	json_decref(t->warnings);
	stage_log_ring_free(&t->log);
	free(t);
	drain_check(s);
	sched_kick(s);
}

/* --- Store transfers ----------------------------------------------------------
 * Every store operation of a task is a struct xfer: an I/O error is tried
 * again with backoff (XFER_TRIES, full jitter), keeping the task and so its
 * lease — a store that is down for a while delays the task, it does not fail
 * it. `side` transfers (the running manifest, stage-log flushes) are tried
 * once: what they write is written again later. */
enum xfer_kind { X_PUT_BUF, X_PUT_FILE, X_GET_FILE, X_GET_BUF, X_DELETE };

typedef void (*xfer_done_fn)(struct xfer *x, const struct store_error *err, const char *data,
                             size_t len);

struct xfer {
	LIST_ENTRY(xfer) link;
	struct stask *t;
	enum xfer_kind kind;
	bool side;
	char *key, *path, *data, *ctype;
	size_t len;
	int tries;
	struct store_op *op;
	struct event *retry_ev;
	xfer_done_fn done; /* may be NULL; runs before the xfer is freed */
	void *arg; /* the caller's, for done */
	char *fallback_key; /* X_GET_FILE: tried once when key is NOT_FOUND */
	char *dest; /* the caller's: a key to store the fetched file under */
};

static void xfer_free(struct xfer *x)
{
	LIST_REMOVE(x, link);
	if (x->side)
		x->t->nside--;
	else
		x->t->nx--;
	store_op_cancel(x->op);
	if (x->retry_ev)
		event_free(x->retry_ev);
	free(x->key);
	free(x->path);
	free(x->data);
	free(x->ctype);
	free(x->fallback_key);
	free(x->dest);
	free(x);
}

static void xfer_start(struct xfer *x);

static void xfer_buf_cb(const struct store_error *err, const struct store_object_info *info,
                        const char *data, size_t len, void *arg);

static void xfer_end(struct xfer *x, const struct store_error *err, const char *data, size_t len)
{
	struct stask *t = x->t;
	x->op = NULL;
	if (err && err->kind == STORE_ERR_IO && !x->side && !t->lost && x->tries < XFER_TRIES) {
		int64_t ms = scheduler_backoff_ms(XFER_BACKOFF_MS, XFER_BACKOFF_CAP_MS, x->tries,
		                                  sched_rand(t->s));
		static const char *const op_names[] = {"put", "put", "get", "get", "delete"};
		metric_inc(metrics_default_get(M_STORE_TRANSFER_RETRIES_TOTAL), 1,
		           op_names[x->kind]);
		if (x->tries == 1)
			log_warn("job.module.store_retry", "a store transfer failed; trying again",
			         LF_STR("job_id", t->job_id), LF_STR("task_id", t->id),
			         LF_STR("stage", t->stage), LF_STR("key", x->key),
			         LF_STR("error", err->message), LF_INT("backoff_ms", ms));
		struct timeval tv;
		tv_ms(&tv, ms < 1 ? 1 : ms);
		evtimer_add(x->retry_ev, &tv);
		return;
	}
	if (err && err->kind == STORE_ERR_NOT_FOUND && x->fallback_key) {
		free(x->key);
		x->key = x->fallback_key;
		x->fallback_key = NULL;
		x->tries = 0;
		xfer_start(x);
		return;
	}
	if (x->done)
		x->done(x, err, data, len);
	xfer_free(x);
}

static void xfer_done_cb(const struct store_error *err, void *arg)
{
	xfer_end(arg, err, NULL, 0);
}

static void xfer_buf_cb(const struct store_error *err, const struct store_object_info *info,
                        const char *data, size_t len, void *arg)
{
	(void)info;
	xfer_end(arg, err, data, len);
}

static void xfer_start(struct xfer *x)
{
	struct store *st = x->t->s->store;
	x->tries++;
	switch (x->kind) {
	case X_PUT_BUF:
		x->op = store_put_buf(st, x->key, x->data, x->len, x->ctype, xfer_done_cb, x);
		break;
	case X_PUT_FILE:
		x->op = store_put_file(st, x->key, x->path, x->ctype, xfer_done_cb, x);
		break;
	case X_GET_FILE: x->op = store_get_file(st, x->key, x->path, xfer_done_cb, x); break;
	case X_GET_BUF: x->op = store_get_buf(st, x->key, x->len, xfer_buf_cb, x); break;
	case X_DELETE: x->op = store_delete(st, x->key, xfer_done_cb, x); break;
	}
}

static void xfer_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	xfer_start(arg);
}

/* Starts a transfer; key and path are copied, data (X_PUT_BUF) too. For
 * X_GET_BUF, len is the most it reads. */
static struct xfer *xfer_new(struct stask *t, enum xfer_kind kind, bool side, const char *key,
                             const char *path, const void *data, size_t len, const char *ctype,
                             xfer_done_fn done, void *arg)
{
	struct xfer *x = xcalloc(1, sizeof *x);
	x->t = t;
	x->kind = kind;
	x->side = side;
	x->key = xstrdup(key);
	x->path = path ? xstrdup(path) : NULL;
	if (kind == X_PUT_BUF) {
		x->data = xmalloc(len + 1);
		memcpy(x->data, data, len);
	}
	x->len = len;
	x->ctype = ctype ? xstrdup(ctype) : NULL;
	x->done = done;
	x->arg = arg;
	x->retry_ev = evtimer_new(t->s->app->base, xfer_retry_cb, x);
	LIST_INSERT_HEAD(&t->xfers, x, link);
	if (side)
		t->nside++;
	else
		t->nx++;
	xfer_start(x);
	return x;
}

/* --- Hashing ----------------------------------------------------------------
 * SHA-256 of the files a manifest names, HASH_CHUNK bytes per loop pass so a
 * big file never stalls the loop. */
struct hash_job {
	struct stask *t;
	struct event *ev;
	char **paths; /* files, in order */
	char **out; /* hex digests (NULL: unreadable), owned by the job */
	size_t n, i;
	int fd;
	EVP_MD_CTX *md;
	void (*done)(struct stask *t);
};

static void hash_job_free(struct hash_job *h)
{
	if (h == NULL)
		return;
	event_free(h->ev);
	if (h->fd >= 0)
		close(h->fd);
	EVP_MD_CTX_free(h->md);
	for (size_t i = 0; i < h->n; i++) {
		free(h->paths[i]);
		free(h->out[i]);
	}
	free(h->paths);
	free(h->out);
	free(h);
}

static void hash_step_cb(evutil_socket_t fd, short what, void *arg)
{
	struct hash_job *h = arg;
	(void)fd;
	(void)what;
	while (h->i < h->n) {
		if (h->fd < 0) {
			h->fd = open(h->paths[h->i], O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
			if (h->fd < 0) {
				h->i++;
				continue;
			}
			EVP_DigestInit_ex(h->md, EVP_sha256(), NULL);
		}
		/* one buffer for every task: a chunk is read and hashed at once */
		unsigned char *chunk = h->t->s->hash_chunk;
		ssize_t r = read(h->fd, chunk, HASH_CHUNK);
		if (r < 0 && errno == EINTR)
			break;
		if (r > 0) {
			EVP_DigestUpdate(h->md, chunk, (size_t)r);
			if (r == (ssize_t)HASH_CHUNK)
				break; /* more next pass */
		}
		if (r == 0 || r > 0) {
			unsigned char md[32];
			unsigned int mdlen = 0;
			EVP_DigestFinal_ex(h->md, md, &mdlen);
			h->out[h->i] = xmalloc(65);
			buf_hex(h->out[h->i], md, 32);
		}
		close(h->fd);
		h->fd = -1;
		h->i++;
	}
	if (h->i < h->n) {
		event_active(h->ev, EV_TIMEOUT, 0);
		return;
	}
	h->done(h->t);
}

static struct hash_job *hash_job_new(struct stask *t, void (*done)(struct stask *t))
{
	struct hash_job *h = xcalloc(1, sizeof *h);
	h->t = t;
	h->fd = -1;
	h->md = EVP_MD_CTX_new();
	h->done = done;
	h->ev = event_new(t->s->app->base, -1, 0, hash_step_cb, h);
	return h;
}

static void hash_job_add(struct hash_job *h, const char *path)
{
	h->paths = xrealloc(h->paths, (h->n + 1) * sizeof *h->paths);
	h->out = xrealloc(h->out, (h->n + 1) * sizeof *h->out);
	h->paths[h->n] = xstrdup(path);
	h->out[h->n++] = NULL;
}

/* The digest of path once the job ran (NULL when it was not named or not
 * readable). */
static const char *hash_job_get(const struct hash_job *h, const char *path)
{
	for (size_t i = 0; h && i < h->n; i++)
		if (strcmp(h->paths[i], path) == 0)
			return h->out[i];
	return NULL;
}

static void sha256_hex(const void *data, size_t len, char hex[65])
{
	unsigned char md[32];
	unsigned int mdlen = 0;
	EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
	buf_hex(hex, md, 32);
}

/* The attempt ended before its module ran (inputs could not be fetched). */
static void stask_fail_infra(struct stask *t, const char *code, const char *msg)
{
	if (t->have_outcome)
		return;
	t->have_outcome = true;
	t->outcome = MODULE_ERROR;
	t->error = typed_error(code, "infra", true, msg, NULL);
	stage_log(t, "ERROR", "Stage %s: FAILED: %s", t->stage, msg);
}

static void upload_start(struct stask *t);
static char *manifest_text(struct stask *t, const char *output_sha);
static void side_done(struct xfer *x, const struct store_error *err, const char *data, size_t len);

/* The module answered (or never ran): classify and upload. */
static void stask_module_done(struct module_task *mt, const struct module_task_result *res,
                              void *arg)
{
	struct stask *t = arg;
	(void)mt;
	t->mt = NULL;
	t->t_run_end = clock_now_us();
	t->pid = res->pid;
	t->exit_code = res->exit_code;
	t->term_signal = res->term_signal;
	t->cpu_seconds = res->cpu_seconds;
	t->max_rss_bytes = res->max_rss_bytes;
	t->protocol_error = res->protocol_error;
	if (res->engine_id && res->engine_id[0])
		t->engine_id = xstrdup(res->engine_id);
	t->have_outcome = true;
	t->outcome = res->outcome;
	double secs = (double)(t->t_run_end - t->t_fetch_end) / 1e6;
	/* The error is stored, announced and logged as written here: with
	 * privacy.scrub the module's words are scrubbed first. */
	char *scrubbed = scrub_dup_values(t->s->o.scrub, stask_pii(t), res->message);
	const char *message = scrubbed ? scrubbed : res->message;
	json_t *detail = t->s->o.scrub && res->detail ? json_deep_copy(res->detail)
	                                              : json_incref((json_t *)res->detail);
	scrub_json_values(t->s->o.scrub, stask_pii(t), detail);
	switch (res->outcome) {
	case MODULE_COMPLETE:
		t->output = json_deep_copy(res->output);
		stage_log(t, "INFO", "Stage %s: COMPLETED (%.1fs)", t->stage, secs);
		break;
	case MODULE_ERROR: {
		const char *cat = frame_category_name(res->category);
		bool retryable = res->retryable && res->category != FRAME_CAT_INPUT;
		t->error = typed_error(res->error_code ? res->error_code : "module_error", cat,
		                       retryable, message, detail);
		stage_log(t, "ERROR", "Stage %s: FAILED: %s", t->stage, message);
		break;
	}
	case MODULE_PANIC:
		t->error = typed_error(res->protocol_error ? "protocol_error" : "module_panic",
		                       "module", true, message, NULL);
		stage_log(t, "ERROR", "Stage %s: FAILED: %s", t->stage, message);
		break;
	case MODULE_TIMEOUT:
		t->error = typed_error("deadline_exceeded", "timeout", true, message, NULL);
		stage_log(t, "ERROR", "Stage %s: FAILED: %s", t->stage, message);
		break;
	case MODULE_CANCELLED:
		t->error = typed_error("cancelled", "cancelled", false,
		                       t->stop_reason ? t->stop_reason : "cancelled", NULL);
		stage_log(t, "WARNING", "Stage %s: CANCELLED (%s)", t->stage,
		          t->stop_reason ? t->stop_reason : "cancelled");
		break;
	}
	if (res->log_bytes_dropped)
		stage_log(t, "WARNING", "[stage.log truncated: %llu bytes dropped]",
		          (unsigned long long)res->log_bytes_dropped);
	free(scrubbed);
	json_decref(detail);
	upload_start(t);
}

/* progress and log: ephemeral events for live streams (no row, no seq). */
static void stask_publish(struct stask *t, const char *kind, json_t *data)
{
	struct sl_event ev = {
	        .ts_us = clock_now_us(),
	        .kind = kind,
	        .job_id = t->job_id,
	        .project_id = t->project,
	        .pipeline = t->pipeline,
	        .task_id = t->id,
	        .stage = t->stage,
	        .request_id = t->request_id,
	        .data = data,
	};
	event_bus_publish(t->s->e->bus, &ev);
	json_decref(data);
}

static void stask_on_frame(struct module_task *mt, const struct frame *f, void *arg)
{
	struct stask *t = arg;
	(void)mt;
	switch (f->type) {
	case FRAME_PROGRESS:
		t->progress = f->u.progress.fraction;
		t->progress_dirty = true;
		/* at most 10 per second per task reach the streams */
		if (clock_mono_us() - t->progress_pub_us >= 100000) {
			t->progress_pub_us = clock_mono_us();
			json_t *d = json_pack("{s:f, s:i}", "progress", t->progress, "attempt",
			                      t->attempt);
			if (f->u.progress.message)
				json_object_set_new(d, "message",
				                    json_string(f->u.progress.message));
			if (f->u.progress.has_current)
				json_object_set_new(d, "current",
				                    json_integer(f->u.progress.current));
			if (f->u.progress.has_total)
				json_object_set_new(d, "total", json_integer(f->u.progress.total));
			scrub_json_values(t->s->o.scrub, stask_pii(t), d);
			stask_publish(t, "progress", d);
		}
		if (f->u.progress.message)
			stage_log(t, "INFO", "%s", f->u.progress.message);
		break;
	case FRAME_LOG: {
		/* the frame owns its fields: scrub a copy */
		json_t *fields = t->s->o.scrub && f->u.log.fields ? json_deep_copy(f->u.log.fields)
		                                                  : json_incref(f->u.log.fields);
		json_t *d = json_pack("{s:s, s:s, s:o?}", "level", f->u.log.level, "message",
		                      f->u.log.message ? f->u.log.message : "", "fields", fields);
		scrub_json_values(t->s->o.scrub, stask_pii(t), d);
		stask_publish(t, "log", d);
		stage_log(t,
		          strcmp(f->u.log.level, "warn") == 0    ? "WARNING"
		          : strcmp(f->u.log.level, "error") == 0 ? "ERROR"
		          : strcmp(f->u.log.level, "debug") == 0 ? "DEBUG"
		                                                 : "INFO",
		          "%s", f->u.log.message ? f->u.log.message : "");
		break;
	}
	case FRAME_WARNING:
		stage_log(t, "WARNING", "%s", f->u.warning.message ? f->u.warning.message : "");
		break;
	case FRAME_ARTIFACT: {
		const char *path = f->u.artifact.path ? f->u.artifact.path : "";
		const char *why = NULL;
		/* relative to the workdir, inside it, and a valid key segment path */
		static const char *const reserved[] = {"input.json", "output.json", "stage.log",
		                                       "manifest.json"};
		for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
			if (strcmp(path, reserved[i]) == 0)
				why = "the engine writes a file of that name";
		if (strncmp(path, "attempts/", 9) == 0)
			why = "attempts/ keeps earlier attempts";
		if (why || path[0] == '/' || !store_key_valid(path, strlen(path), &why)) {
			stage_log(t, "WARNING", "artifact %s: path '%s' refused: %s",
			          f->u.artifact.name ? f->u.artifact.name : "", path,
			          why ? why : "absolute");
			break;
		}
		if (t->declared == NULL)
			t->declared = json_array();
		json_array_append_new(
		        t->declared,
		        json_pack("{s:s, s:s, s:s, s:s?, s:s, s:b, s:s?, s:O?}", "name",
		                  f->u.artifact.name ? f->u.artifact.name : path, "path", path,
		                  "type", f->u.artifact.type ? f->u.artifact.type : "file",
		                  "format", f->u.artifact.format, "role",
		                  f->u.artifact.role ? f->u.artifact.role : "output", "retained",
		                  f->u.artifact.retained, "reason", f->u.artifact.reason, "meta",
		                  f->u.artifact.meta));
		stage_log(t, "INFO", "artifact %s: %s",
		          f->u.artifact.name ? f->u.artifact.name : "", path);
		break;
	}
	default: break;
	}
}

static void stask_on_stderr(struct module_task *mt, const char *line, size_t len, void *arg)
{
	struct stask *t = arg;
	(void)mt;
	struct buf sb = BUF_INIT;
	if (t->s->o.scrub && scrub_text_values(t->s->o.scrub, stask_pii(t), &sb, line, len)) {
		line = sb.data;
		len = sb.len;
	}
	/* a module's bytes: NUL, controls and bad UTF-8 become U+FFFD before
	 * they are stored, logged or streamed */
	struct buf clean = BUF_INIT;
	buf_add_utf8_clean(&clean, line, len);
	stask_publish(t, "log",
	              json_pack("{s:s, s:s%}", "level", "stderr", "message",
	                        clean.data ? clean.data : "", clean.len));
	stage_log_ring_add(&t->log, clean.data ? clean.data : "", clean.len);
	buf_free(&clean);
	buf_free(&sb);
}

static void inputs_sizes(struct stask *t)
{
	struct stat st;
	for (size_t i = 0; i < t->ninputs; i++)
		t->inputs[i].size_bytes = stat(t->inputs[i].path, &st) == 0 ? st.st_size : 0;
}

static void run_start(struct stask *t)
{
	t->t_fetch_end = clock_now_us();
	if (t->stop_reason && !t->have_outcome) { /* stopped while fetching */
		t->have_outcome = true;
		t->outcome = MODULE_CANCELLED;
		t->error = typed_error("cancelled", "cancelled", false, t->stop_reason, NULL);
	}
	if (t->have_outcome) { /* the fetch failed, or it was stopped */
		t->t_run_end = t->t_fetch_end;
		upload_start(t);
		return;
	}
	t->state = ST_RUN;
	inputs_sizes(t);
	stage_log(t, "INFO", "Stage %s: STARTING", t->stage);
	/* manifest.json says `running` while the module works */
	char *mkey = stage_key(t->project, t->job_id, t->stage_number, t->stage, "manifest.json");
	char *m = manifest_text(t, NULL);
	xfer_new(t, X_PUT_BUF, true, mkey, NULL, m, strlen(m), "application/json", side_done, NULL);
	free(m);
	free(mkey);
	t->log_flush_us = clock_mono_us();
	struct module_task_spec spec = {
	        .task_id = t->id,
	        .job_id = t->job_id,
	        .stage = t->stage,
	        .request_id = t->request_id,
	        .workdir = t->workdir,
	        .attempt = t->attempt,
	        .params = t->params,
	        .inputs = t->inputs,
	        .ninputs = t->ninputs,
	        .deadline_ms = t->timeout_ms > 0 ? clock_now_us() / 1000 + t->timeout_ms : 0,
	};
	struct module_task_cbs cbs = {
	        .on_frame = stask_on_frame,
	        .on_stderr_line = stask_on_stderr,
	        .on_done = stask_module_done,
	};
	t->mt = module_runner_submit(t->sr->r, &spec, &cbs, t);
	if (t->mt == NULL) {
		stask_fail_infra(t, "module_unavailable", "the module runner refused the task");
		t->t_run_end = clock_now_us();
		upload_start(t);
	}
}

/* --- FETCH ------------------------------------------------------------------ */

static void fetch_inputs(struct stask *t);

static void fetch_done(struct xfer *x, const struct store_error *err, const char *data, size_t len)
{
	struct stask *t = x->t;
	(void)data;
	(void)len;
	if (err && err->kind == STORE_ERR_NOT_FOUND && t->upload_key &&
	    strcmp(x->key, t->upload_key) == 0 && !t->have_outcome) {
		/* the job names an upload that is not there: the input is wrong */
		t->have_outcome = true;
		t->outcome = MODULE_ERROR;
		t->error = typed_error("upload_missing", "input", false,
		                       "the job's upload is not in the store", NULL);
		stage_log(t, "ERROR", "Stage %s: FAILED: the job's upload is not in the store",
		          t->stage);
	} else if (err) {
		stask_fail_infra(t, "fetch_failed", err->message);
	}
	if (t->nx == 1 && t->state == ST_FETCH) /* this one is the last */
		event_active(t->step_ev, EV_TIMEOUT, 0);
}

/* proto/worker-protocol.md: input.json (job-input), <stage>.output
 * (stage-output). size_bytes is filled in once the file is there; key is
 * where it came from (NULL: written here from the job row). */
static void input_add(struct stask *t, const char *name, const char *type, const char *path,
                      const char *key)
{
	t->inputs = xrealloc(t->inputs, (t->ninputs + 1) * sizeof *t->inputs);
	t->input_keys = xrealloc(t->input_keys, (t->ninputs + 1) * sizeof *t->input_keys);
	t->input_sha = xrealloc(t->input_sha, (t->ninputs + 1) * sizeof *t->input_sha);
	t->input_keys[t->ninputs] = key ? xstrdup(key) : NULL;
	t->input_sha[t->ninputs] = NULL;
	struct frame_input *in = &t->inputs[t->ninputs++];
	memset(in, 0, sizeof *in);
	in->name = xstrdup(name);
	in->type = xstrdup(type);
	in->path = xstrdup(path);
	in->format = xstrdup("json");
}

/* ARCHIVE (attempt > 1): the files an earlier attempt left in NN_<stage>/
 * move under NN_<stage>/attempts/<n>/ before this attempt writes its own;
 * n is the attempt its manifest names. Phases: read the manifest, copy,
 * delete what this attempt might not write again (output.json, stage.log). */
static const char *const archived[] = {"input.json", "output.json", "stage.log"};

static void archive_copied(struct xfer *x, const struct store_error *err, const char *data,
                           size_t len)
{
	struct stask *t = x->t;
	(void)data;
	(void)len;
	if (err && err->kind != STORE_ERR_NOT_FOUND)
		stask_fail_infra(t, "archive_failed", err->message);
	else if (!err && x->kind == X_GET_FILE) {
		/* fetched: store it under attempts/<n>/ */
		xfer_new(t, X_PUT_FILE, false, x->dest, x->path, NULL, 0, NULL, archive_copied,
		         NULL);
	}
	if (t->nx == 1)
		event_active(t->step_ev, EV_TIMEOUT, 0);
}

static void archive_manifest(struct xfer *x, const struct store_error *err, const char *data,
                             size_t len)
{
	struct stask *t = x->t;
	if (err && err->kind != STORE_ERR_NOT_FOUND) {
		stask_fail_infra(t, "archive_failed", err->message);
	} else if (!err) {
		json_t *m = json_loadb(data, len, 0, NULL);
		int n = (int)json_integer_value(json_object_get(m, "attempt"));
		if (n >= 1 && n < t->attempt) {
			t->archive_n = n;
			char *dir = xasprintf("attempts/%d", n);
			for (size_t i = 0; i < sizeof archived / sizeof archived[0]; i++) {
				char *rel = xasprintf("%s/%s", dir, archived[i]);
				char *to = stage_key(t->project, t->job_id, t->stage_number,
				                     t->stage, rel);
				char *from = stage_key(t->project, t->job_id, t->stage_number,
				                       t->stage, archived[i]);
				char *local = xasprintf("%s/.prev.%s", t->workdir, archived[i]);
				struct xfer *g = xfer_new(t, X_GET_FILE, false, from, local, NULL,
				                          0, NULL, archive_copied, NULL);
				g->dest = to;
				free(rel);
				free(from);
				free(local);
			}
			char *rel = xasprintf("%s/manifest.json", dir);
			char *to = stage_key(t->project, t->job_id, t->stage_number, t->stage, rel);
			xfer_new(t, X_PUT_BUF, false, to, NULL, data, len, "application/json",
			         archive_copied, NULL);
			free(to);
			free(rel);
			free(dir);
		}
		json_decref(m);
	}
	if (t->nx == 1)
		event_active(t->step_ev, EV_TIMEOUT, 0);
}

static void archive_deleted(struct xfer *x, const struct store_error *err, const char *data,
                            size_t len)
{
	struct stask *t = x->t;
	(void)data;
	(void)len;
	if (err && err->kind != STORE_ERR_NOT_FOUND)
		stask_fail_infra(t, "archive_failed", err->message);
	if (t->nx == 1)
		event_active(t->step_ev, EV_TIMEOUT, 0);
}

/* The next step once a phase's transfers are all done (from the loop). */
static void step_cb(evutil_socket_t fd, short what, void *arg)
{
	struct stask *t = arg;
	(void)fd;
	(void)what;
	if (t->nx > 0)
		return;
	if (t->state == ST_ARCHIVE) {
		if (t->have_outcome) {
			run_start(t);
		} else if (t->archive_phase == 0 && t->archive_n > 0) {
			t->archive_phase = 1;
			for (size_t i = 0; i < 2; i++) {
				char *key = stage_key(t->project, t->job_id, t->stage_number,
				                      t->stage, archived[i + 1]);
				xfer_new(t, X_DELETE, false, key, NULL, NULL, 0, NULL,
				         archive_deleted, NULL);
				free(key);
			}
		} else {
			fetch_inputs(t);
		}
	} else if (t->state == ST_FETCH) {
		run_start(t);
	} else if (t->state == ST_UPLOAD) {
		upload_start(t);
	}
}

/* FETCH: the job's input and each dependency's output.json into workdir. */
static void fetch_start(struct stask *t)
{
	struct scheduler *s = t->s;
	t->workdir = xasprintf("%s/%s.%d", s->o.scratch_dir, t->id, t->attempt);
	if (mkdir(t->workdir, 0750) < 0 && errno != EEXIST) {
		t->state = ST_FETCH;
		stask_fail_infra(t, "scratch_failed", strerror(errno));
		run_start(t);
		return;
	}
	if (t->attempt > 1) {
		t->state = ST_ARCHIVE;
		char *key = stage_key(t->project, t->job_id, t->stage_number, t->stage,
		                      "manifest.json");
		xfer_new(t, X_GET_BUF, false, key, NULL, NULL, ARCHIVE_MANIFEST_MAX, NULL,
		         archive_manifest, NULL);
		free(key);
		return;
	}
	fetch_inputs(t);
}

static void fetch_inputs(struct stask *t)
{
	t->state = ST_FETCH;
	char *inputs_dir = xasprintf("%s/inputs", t->workdir);
	/* inputs/ only when there is something to put there: every directory
	 * and file made here costs an inode allocation per task */
	bool root = t->sd && t->sd->nneeds == 0;
	bool has_inputs = (t->sd && t->sd->nneeds > 0) || json_array_size(t->dep_artifacts) > 0 ||
	                  (root && t->upload_key);
	if (has_inputs && mkdir(inputs_dir, 0750) < 0 && errno != EEXIST) {
		stask_fail_infra(t, "scratch_failed", strerror(errno));
		free(inputs_dir);
		run_start(t);
		return;
	}
	char *in_path = xasprintf("%s/input.json", t->workdir);
	char *text = json_dumps(t->input ? t->input : json_null(),
	                        JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS);
	if (!write_file(in_path, text, strlen(text)))
		stask_fail_infra(t, "scratch_failed", "cannot write input.json");
	else
		input_add(t, "input.json", "job-input", in_path, NULL);
	free(text);
	free(in_path);
	const char *reuse_job = json_string_value(json_object_get(t->resume_from, "job_id"));
	for (size_t k = 0; t->sd && k < t->sd->nneeds && !t->have_outcome; k++) {
		const struct stage_def *d = &t->p->stages[t->sd->dep_idx[k]];
		char *path = xasprintf("%s/%s.output.json", inputs_dir, d->name);
		char *name = xasprintf("%s.output", d->name);
		char *key =
		        stage_key(t->project, t->job_id, d->stage_number, d->name, "output.json");
		char *fb = reuse_job ? stage_key(t->project, reuse_job, d->stage_number, d->name,
		                                 "output.json")
		                     : NULL;
		input_add(t, name, "stage-output", path, key);
		struct xfer *x =
		        xfer_new(t, X_GET_FILE, false, key, path, NULL, 0, NULL, fetch_done, NULL);
		x->fallback_key = fb;
		free(name);
		free(path);
		free(key);
	}
	/* The job's uploaded file, for the stages that start the DAG. */
	if (root && t->upload_key && !t->have_outcome) {
		const char *base = strrchr(t->upload_key, '/');
		base = base ? base + 1 : t->upload_key;
		char *dir = xasprintf("%s/upload", inputs_dir);
		char *path = xasprintf("%s/%s", dir, base);
		if (mkdir(dir, 0750) < 0 && errno != EEXIST) {
			stask_fail_infra(t, "scratch_failed", strerror(errno));
		} else {
			input_add(t, "upload", "upload", path, t->upload_key);
			free(t->inputs[t->ninputs - 1].format);
			t->inputs[t->ninputs - 1].format = NULL;
			xfer_new(t, X_GET_FILE, false, t->upload_key, path, NULL, 0, NULL,
			         fetch_done, NULL);
		}
		free(path);
		free(dir);
	}
	/* Files the dependencies declared as outputs, by their store keys. */
	size_t k;
	json_t *a;
	json_array_foreach(t->dep_artifacts, k, a)
	{
		if (t->have_outcome)
			break;
		const char *stage = json_string_value(json_object_get(a, "stage"));
		const char *key = json_string_value(json_object_get(a, "key"));
		if (stage == NULL || key == NULL)
			continue;
		const char *base = strrchr(key, '/') ? strrchr(key, '/') + 1 : key;
		char *dir = xasprintf("%s/%s", inputs_dir, stage);
		if (mkdir(dir, 0750) < 0 && errno != EEXIST) {
			stask_fail_infra(t, "scratch_failed", strerror(errno));
			free(dir);
			break;
		}
		char *path = xasprintf("%s/%s", dir, base);
		const char *name = json_string_value(json_object_get(a, "name"));
		const char *type = json_string_value(json_object_get(a, "type"));
		input_add(t, name ? name : base, type ? type : "file", path, key);
		free(t->inputs[t->ninputs - 1].format);
		const char *fmt = json_string_value(json_object_get(a, "format"));
		t->inputs[t->ninputs - 1].format = fmt ? xstrdup(fmt) : NULL;
		xfer_new(t, X_GET_FILE, false, key, path, NULL, 0, NULL, fetch_done, NULL);
		free(path);
		free(dir);
	}
	free(inputs_dir);
	if (t->nx == 0)
		run_start(t);
}

/* --- manifest.json ----------------------------------------------------------- */

/* A key's path relative to this job's root ("02_x/a.wav"), or the key. */
static const char *job_rel(const struct stask *t, const char *key)
{
	size_t pl = strlen(t->project), jl = strlen(t->job_id);
	if (key && strncmp(key, t->project, pl) == 0 && key[pl] == '/' &&
	    strncmp(key + pl + 1, t->job_id, jl) == 0 && key[pl + 1 + jl] == '/')
		return key + pl + jl + 2;
	return key;
}

static const char *manifest_attempt_status(const struct stask *t)
{
	if (!t->have_outcome)
		return "running";
	switch (t->outcome) {
	case MODULE_COMPLETE: return "success";
	case MODULE_CANCELLED: return "cancelled";
	default: return "failed";
	}
}

/* The manifest as it stands: `running` before the outcome, final after. */
static char *manifest_text(struct stask *t, const char *output_sha)
{
	bool final = t->have_outcome;
	size_t ndecl = json_array_size(t->declared);
	struct manifest_file *in = xcalloc(t->ninputs + 1, sizeof *in);
	struct manifest_file *out = xcalloc(ndecl + 2, sizeof *out);
	struct manifest_file *mid = xcalloc(ndecl + 1, sizeof *mid);
	size_t nout = 0, nmid = 0;
	char **keys = xcalloc(ndecl + 1, sizeof *keys);
	for (size_t i = 0; i < t->ninputs; i++) {
		in[i] = (struct manifest_file){
		        .name = t->inputs[i].name,
		        .type = t->inputs[i].type,
		        .format = t->inputs[i].format,
		        .key = t->input_keys[i],
		        .path = t->input_keys[i] ? job_rel(t, t->input_keys[i]) : "input.json",
		        .size_bytes = t->inputs[i].size_bytes,
		        .sha256 = hash_job_get(t->hash, t->inputs[i].path),
		};
	}
	char *out_key = stage_key(t->project, t->job_id, t->stage_number, t->stage, "output.json");
	if (final && t->outcome == MODULE_COMPLETE && output_sha) {
		out[nout++] = (struct manifest_file){
		        .name = "output.json",
		        .type = "stage-output",
		        .format = "json",
		        .key = out_key,
		        .path = job_rel(t, out_key),
		        .size_bytes = t->output_len,
		        .sha256 = output_sha,
		};
	}
	size_t i;
	json_t *a;
	json_array_foreach(t->declared, i, a)
	{
		const char *rel = json_string_value(json_object_get(a, "path"));
		const char *role = json_string_value(json_object_get(a, "role"));
		bool retained = json_is_true(json_object_get(a, "retained"));
		bool is_out = strcmp(role, "output") == 0;
		char *local = xasprintf("%s/%s", t->workdir, rel);
		struct stat st;
		int64_t size = lstat(local, &st) == 0 && S_ISREG(st.st_mode) ? st.st_size : 0;
		keys[i] = is_out || retained
		                  ? stage_key(t->project, t->job_id, t->stage_number, t->stage, rel)
		                  : NULL;
		struct manifest_file f = {
		        .name = json_string_value(json_object_get(a, "name")),
		        .type = json_string_value(json_object_get(a, "type")),
		        .format = json_string_value(json_object_get(a, "format")),
		        .key = keys[i],
		        .path = keys[i] ? job_rel(t, keys[i]) : rel,
		        .size_bytes = size,
		        .sha256 = hash_job_get(t->hash, local),
		        .retained = retained,
		        .reason = json_string_value(json_object_get(a, "reason")),
		        .meta = json_object_get(a, "meta"),
		};
		free(local);
		if (is_out && final && t->outcome == MODULE_COMPLETE)
			out[nout++] = f;
		else if (!is_out)
			mid[nmid++] = f;
	}
	struct manifest_in m = {
	        .job_id = t->job_id,
	        .task_id = t->id,
	        .stage = t->stage,
	        .module = t->sr->def->name,
	        .instance_id = t->s->app->instance_id,
	        .stage_number = t->stage_number,
	        .attempt = t->attempt,
	        .status = manifest_attempt_status(t),
	        .started_us = t->t_fetch_end ? t->t_fetch_end : t->t_claimed,
	        .completed_us = final ? (t->t_run_end ? t->t_run_end : clock_now_us()) : 0,
	        .inputs = in,
	        .ninputs = t->ninputs,
	        .outputs = out,
	        .noutputs = nout,
	        .intermediates = mid,
	        .nintermediates = nmid,
	        .config = t->params,
	        .have_resources = final && t->pid > 0,
	        .cpu_seconds = t->cpu_seconds,
	        .max_rss_bytes = t->max_rss_bytes,
	        .error = final ? t->error : NULL,
	        .warnings = t->warnings,
	};
	json_t *j = manifest_build(&m);
	char *text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	json_decref(j);
	for (size_t k = 0; k < ndecl; k++)
		free(keys[k]);
	free(keys);
	free(out_key);
	free(in);
	free(out);
	free(mid);
	return text;
}

static void side_done(struct xfer *x, const struct store_error *err, const char *data, size_t len)
{
	struct stask *t = x->t;
	(void)data;
	(void)len;
	if (err)
		log_info("job.module.store_side_failed",
		         "a running manifest or stage-log flush was not stored; the attempt's end "
		         "writes it again",
		         LF_STR("job_id", t->job_id), LF_STR("task_id", t->id),
		         LF_STR("key", x->key), LF_STR("error", err->message));
	if (t->nside == 1 && t->upload_waiting) {
		t->upload_waiting = false;
		event_active(t->step_ev, EV_TIMEOUT, 0);
	}
}

/* Every few seconds while the module runs: stage.log so far, so a crash
 * loses at most that much of it. Only with a lease known to be ours. */
static void stage_log_flush(struct stask *t)
{
	if (t->state != ST_RUN || t->nside > 0 || t->log.total == t->log_flushed || t->lost ||
	    clock_mono_us() - t->lease_ok_us > t->s->o.lease_ms * 500)
		return;
	char *key = stage_key(t->project, t->job_id, t->stage_number, t->stage, "stage.log");
	xfer_new(t, X_PUT_BUF, true, key, NULL, t->log.b.data, t->log.b.len, "text/plain",
	         side_done, NULL);
	free(key);
	t->log_flushed = t->log.total;
	t->log_flush_us = clock_mono_us();
}

/* --- UPLOAD ----------------------------------------------------------------- */

static void upload_done(struct xfer *x, const struct store_error *err, const char *data, size_t len)
{
	struct stask *t = x->t;
	(void)data;
	(void)len;
	if (err && (t->outcome == MODULE_COMPLETE || !t->error)) {
		/* The outputs are not where the next stage will look: retry. */
		t->outcome = MODULE_ERROR;
		json_decref(t->output);
		t->output = NULL;
		json_decref(t->error);
		t->error = typed_error("upload_failed", "infra", true, err->message, NULL);
	}
	if (t->nx == 1 && t->state == ST_UPLOAD) {
		t->t_upload_end = clock_now_us();
		stask_commit(t);
	}
}

static void upload_put(struct stask *t, const char *file, const char *data, size_t len,
                       const char *ctype)
{
	char *key = stage_key(t->project, t->job_id, t->stage_number, t->stage, file);
	xfer_new(t, X_PUT_BUF, false, key, NULL, data, len, ctype, upload_done, NULL);
	free(key);
}

/* The declared outputs (and retained intermediates) go to NN_<stage>/<path>;
 * a declared file that is not there is the module's error. */
static void upload_artifacts(struct stask *t)
{
	size_t i;
	json_t *a;
	json_array_foreach(t->declared, i, a)
	{
		const char *role = json_string_value(json_object_get(a, "role"));
		if (strcmp(role, "output") != 0 && !json_is_true(json_object_get(a, "retained")))
			continue;
		const char *rel = json_string_value(json_object_get(a, "path"));
		char *local = xasprintf("%s/%s", t->workdir, rel);
		struct stat st;
		if (lstat(local, &st) < 0 || !S_ISREG(st.st_mode)) {
			char *msg = xasprintf("declared artifact '%s' is not a regular file in the "
			                      "workdir",
			                      rel);
			t->outcome = MODULE_ERROR;
			json_decref(t->output);
			t->output = NULL;
			json_decref(t->error);
			t->error = typed_error("artifact_missing", "module", false, msg, NULL);
			stage_log(t, "ERROR", "Stage %s: FAILED: %s", t->stage, msg);
			free(msg);
			free(local);
			json_decref(t->stored);
			t->stored = NULL;
			return;
		}
		char *key = stage_key(t->project, t->job_id, t->stage_number, t->stage, rel);
		if (t->stored == NULL)
			t->stored = json_array();
		json_t *fmt = json_object_get(a, "format");
		const char *sha = hash_job_get(t->hash, local);
		json_array_append_new(t->stored, json_pack("{s:O, s:O, s:O, s:O, s:s, s:I, s:s?}",
		                                           "name", json_object_get(a, "name"),
		                                           "type", json_object_get(a, "type"),
		                                           "format", fmt ? fmt : json_null(),
		                                           "role", json_object_get(a, "role"),
		                                           "key", key, "size_bytes",
		                                           (json_int_t)st.st_size, "sha256", sha));
		xfer_new(t, X_PUT_FILE, false, key, local, NULL, 0, NULL, upload_done, NULL);
		free(key);
		free(local);
	}
}

static void lease_check(struct stask *t);

/* Everything hashed: store the attempt's files, the manifest last in the
 * list (all of them must land before the commit). */
static void upload_puts(struct stask *t)
{
	/* What the module was given: its task frame's contents. */
	json_t *given = json_pack("{s:s, s:s, s:s, s:i, s:O, s:[]}", "job_id", t->job_id, "task_id",
	                          t->id, "stage", t->stage, "attempt", t->attempt, "params",
	                          t->params ? t->params : json_object(), "inputs");
	json_t *arr = json_object_get(given, "inputs");
	for (size_t i = 0; i < t->ninputs; i++)
		json_array_append_new(arr, json_pack("{s:s, s:s, s:s?}", "name", t->inputs[i].name,
		                                     "type", t->inputs[i].type, "format",
		                                     t->inputs[i].format));
	char *text = json_dumps(given, JSON_COMPACT | JSON_SORT_KEYS);
	upload_put(t, "input.json", text, strlen(text), "application/json");
	free(text);
	json_decref(given);
	if (t->outcome == MODULE_COMPLETE)
		upload_artifacts(t);
	char sha[65];
	bool have_out = false;
	if (t->outcome == MODULE_COMPLETE && t->output) {
		char *out = json_dumps(t->output, JSON_COMPACT | JSON_SORT_KEYS);
		t->output_len = (int64_t)strlen(out);
		sha256_hex(out, strlen(out), sha);
		have_out = true;
		upload_put(t, "output.json", out, strlen(out), "application/json");
		free(out);
	}
	if (t->log.b.len > 0)
		upload_put(t, "stage.log", t->log.b.data, t->log.b.len, "text/plain");
	char *m = manifest_text(t, have_out ? sha : NULL);
	upload_put(t, "manifest.json", m, strlen(m), "application/json");
	free(m);
	if (t->nx == 0) {
		t->t_upload_end = clock_now_us();
		stask_commit(t);
	}
}

static void upload_hashed(struct stask *t)
{
	upload_puts(t);
}

static void upload_start(struct stask *t)
{
	t->state = ST_UPLOAD;
	if (t->t_upload_start == 0)
		t->t_upload_start = clock_now_us();
	if (t->lost) {
		stask_commit(t);
		return;
	}
	/* A running-manifest put or a log flush still in flight would land
	 * after (over) the final files: wait for it. */
	if (t->nside > 0) {
		t->upload_waiting = true;
		return;
	}
	/* Store keys are per stage: a stale attempt must not overwrite the
	 * files of the attempt that took its lease over. A lease not confirmed
	 * for half its length (a paused or partitioned instance) is checked
	 * before anything is written. */
	if (clock_mono_us() - t->lease_ok_us > t->s->o.lease_ms * 500) {
		lease_check(t);
		return;
	}
	if (t->hash) /* hashing already */
		return;
	/* The manifest's sha256 of every file it names. */
	t->hash = hash_job_new(t, upload_hashed);
	for (size_t i = 0; i < t->ninputs; i++)
		hash_job_add(t->hash, t->inputs[i].path);
	if (t->workdir) {
		size_t i;
		json_t *a;
		json_array_foreach(t->declared, i, a)
		{
			char *local = xasprintf("%s/%s", t->workdir,
			                        json_string_value(json_object_get(a, "path")));
			hash_job_add(t->hash, local);
			free(local);
		}
	}
	event_active(t->hash->ev, EV_TIMEOUT, 0);
}

/* --- COMMIT ------------------------------------------------------------------ */

static void sched_commit_schedule(struct scheduler *s)
{
	if (s->commit_ev && !TAILQ_EMPTY(&s->to_commit) && s->commit_inflight < COMMIT_INFLIGHT_MAX)
		event_active(s->commit_ev, EV_TIMEOUT, 0);
}

static void stask_commit(struct stask *t)
{
	t->state = ST_COMMIT;
	TAILQ_REMOVE(&t->s->tasks, t, link);
	if (t->lost) {
		TAILQ_INSERT_TAIL(&t->s->tasks, t, link);
		log_warn("job.module.lease_lost",
		         "the task's lease is gone; its outcome is dropped",
		         LF_STR("job_id", t->job_id), LF_STR("task_id", t->id),
		         LF_STR("stage", t->stage), LF_INT("attempt", t->attempt));
		stask_free(t);
		return;
	}
	TAILQ_INSERT_TAIL(&t->s->to_commit, t, link);
	sched_commit_schedule(t->s);
}

static int64_t ms_between(int64_t a, int64_t b)
{
	return a > 0 && b >= a ? (b - a) / 1000 : 0;
}

static const char *outcome_attempt_name(const struct stask *t)
{
	switch (t->outcome) {
	case MODULE_COMPLETE: return "completed";
	case MODULE_ERROR: return "error";
	case MODULE_PANIC: return "panic";
	case MODULE_TIMEOUT: return "timeout";
	case MODULE_CANCELLED: return "cancelled";
	}
	return "error";
}

/* The reason of a module edge (proto/events.md). */
static const char *end_reason(const struct stask *t)
{
	switch (t->outcome) {
	case MODULE_COMPLETE: return "result";
	case MODULE_ERROR: return "error_frame";
	case MODULE_TIMEOUT: return "deadline";
	case MODULE_CANCELLED: return t->stop_reason ? t->stop_reason : "job_cancelled";
	case MODULE_PANIC:
		return t->protocol_error ? "protocol_error"
		       : t->term_signal  ? "signalled"
		                         : "crashed";
	}
	return "crashed";
}

struct commit_batch {
	struct scheduler *s;
	struct stask **t;
	ssize_t *jord; /* the change that settles t[i]'s job in this batch, or -1 */
	size_t n;
};

static void commit_done_cb(size_t applied, size_t total, const bool *which,
                           const struct pg_error *err, void *arg)
{
	struct commit_batch *b = arg;
	struct scheduler *s = b->s;
	s->commit_inflight--;
	for (size_t i = 0; i < b->n; i++) {
		struct stask *t = b->t[i];
		if (err) {
			/* Nothing applied; the lease still holds: try again soon. */
			TAILQ_INSERT_TAIL(&s->to_commit, t, link);
			continue;
		}
		if (!which[i])
			log_warn("job.module.result_fenced",
			         "the task's outcome was not applied: its lease or status moved on",
			         LF_STR("job_id", t->job_id), LF_STR("task_id", t->id),
			         LF_STR("stage", t->stage), LF_INT("attempt", t->attempt));
		else if (b->jord[i] < 0 || !which[b->jord[i]])
			adv_add(s, t->job_id); /* the DAG step reads what it needs */
		TAILQ_INSERT_TAIL(&s->tasks, t, link); /* stask_free removes it */
		stask_free(t);
	}
	if (err) {
		log_warn("sched.commit_failed", "task outcomes could not be written; retrying",
		         LF_STR("error", err->message), LF_UINT("tasks", b->n));
		struct timeval tv;
		tv_ms(&tv, 500);
		evtimer_add(s->commit_ev, &tv);
	}
	(void)applied;
	(void)total;
	free(b->t);
	free(b->jord);
	free(b);
	if (!err)
		sched_commit_schedule(s);
}

static void nb_timer_arm(struct scheduler *s, int64_t at_us)
{
	int64_t now = clock_now_us();
	if (s->nb_at_us && s->nb_at_us <= at_us && s->nb_at_us > now)
		return;
	s->nb_at_us = at_us;
	s->nb_followup = true;
	struct timeval tv;
	/* a little after: the claim compares with the database's clock */
	tv_ms(&tv, (at_us - now) / 1000 + 20);
	evtimer_add(s->nb_ev, &tv);
}

/* Adds one task's outcome to txn; false when the change is refused. */
static bool commit_add(struct scheduler *s, struct job_txn *txn, struct stask *t)
{
	struct task_ref tr = {t->id, t->job_id, t->project, t->pipeline, t->stage, t->request_id};
	int64_t now = clock_now_us();
	int64_t run_ms = ms_between(t->t_fetch_end, t->t_run_end);
	json_t *att = json_pack(
	        "{s:s, s:I, s:I, s:I, s:f, s:I}", "outcome", outcome_attempt_name(t), "fetch_ms",
	        (json_int_t)ms_between(t->t_claimed, t->t_fetch_end), "run_ms", (json_int_t)run_ms,
	        "upload_ms", (json_int_t)ms_between(t->t_upload_start, t->t_upload_end),
	        "cpu_seconds", t->cpu_seconds, "max_rss_bytes", (json_int_t)t->max_rss_bytes);
	json_t *data = json_pack("{s:s, s:i, s:I}", "module", t->sr->def->name, "attempt",
	                         t->attempt, "duration_ms", (json_int_t)run_ms);
	if (t->pid > 0) {
		json_object_set_new(att, "pid", json_integer(t->pid));
		json_object_set_new(data, "pid", json_integer(t->pid));
	}
	if (t->exit_code >= 0 && t->pid > 0 && !t->sr->def->persistent) {
		json_object_set_new(att, "exit_code", json_integer(t->exit_code));
		json_object_set_new(data, "exit_code", json_integer(t->exit_code));
	}
	if (t->term_signal > 0 && !t->sr->def->persistent) {
		json_object_set_new(att, "signal", json_integer(t->term_signal));
		json_object_set_new(data, "signal", json_integer(t->term_signal));
	}
	if (t->engine_id)
		json_object_set_new(data, "engine_id", json_string(t->engine_id));
	if (t->error) {
		json_object_set(att, "error", t->error);
		json_object_set(data, "error", t->error);
	}
	struct task_set_opts o = {
	        .lease_token = t->lease,
	        .data = data,
	        .attempt_end = att,
	};
	enum task_status to;
	const char *kind;
	const char *reason = end_reason(t);
	bool shutdown = t->outcome == MODULE_CANCELLED && t->stop_reason &&
	                strcmp(t->stop_reason, "shutdown") == 0;
	bool retryable = t->error && json_is_true(json_object_get(t->error, "retryable"));
	if (t->outcome == MODULE_COMPLETE) {
		to = TASK_COMPLETED;
		kind = "job.module.complete";
		o.output = t->output;
		o.artifacts = t->stored;
		metric_observe(metrics_default_get(M_WORKER_STAGE_LATENCY_MS), (double)run_ms,
		               t->stage);
	} else if (shutdown) {
		/* §10: cancelled by the drain, back to ready without a penalty */
		to = TASK_READY;
		kind = "job.module.retry";
		o.keep_retries = true;
		json_object_set_new(data, "retries", json_integer(t->retries));
	} else if (t->outcome == MODULE_CANCELLED) {
		to = TASK_CANCELLED;
		kind = "job.stage.cancelled";
	} else if (retryable && t->retries < t->max_retries) {
		int64_t delay = scheduler_backoff_ms(t->backoff_ms, SCHEDULER_BACKOFF_CAP_MS,
		                                     t->retries, sched_rand(s));
		to = TASK_READY;
		kind = "job.module.retry";
		o.not_before_us = now + delay * 1000;
		char nb[40];
		clock_fmt_rfc3339_us(nb, sizeof nb, o.not_before_us);
		json_object_set_new(data, "not_before", json_string(nb));
		json_object_set_new(data, "backoff_ms", json_integer(delay));
		json_object_set_new(data, "retries", json_integer(t->retries + 1));
		o.error = t->error;
		nb_timer_arm(s, o.not_before_us);
	} else {
		to = TASK_FAILED;
		kind = t->outcome == MODULE_PANIC     ? "job.module.panic"
		       : t->outcome == MODULE_TIMEOUT ? "job.module.timeout"
		                                      : "job.module.error";
		o.error = t->error;
	}
	if (t->error && !shutdown && t->outcome != MODULE_CANCELLED)
		metric_inc(metrics_default_get(M_WORKER_STAGE_FAILURES_TOTAL), 1, t->stage,
		           json_string_value(json_object_get(t->error, "category")));
	o.kind = kind;
	bool ok = task_set_status(txn, &tr, TASK_RUNNING, to, reason, &o);
	json_decref(att);
	json_decref(data);
	return ok;
}

static void commit_cb(evutil_socket_t fd, short what, void *arg)
{
	struct scheduler *s = arg;
	(void)fd;
	(void)what;
	while (!TAILQ_EMPTY(&s->to_commit) && s->commit_inflight < COMMIT_INFLIGHT_MAX) {
		struct commit_batch *b = xcalloc(1, sizeof *b);
		b->s = s;
		struct job_txn *txn = job_txn_new(s->e);
		struct stask *t;
		size_t cap = 0;
		while ((t = TAILQ_FIRST(&s->to_commit)) != NULL && b->n < SCHEDULER_CLAIM_MAX) {
			TAILQ_REMOVE(&s->to_commit, t, link);
			if (!commit_add(s, txn, t)) {
				/* a refused edge is a bug, logged by job.c: drop it */
				TAILQ_INSERT_TAIL(&s->tasks, t, link);
				stask_free(t);
				continue;
			}
			if (b->n == cap) {
				cap = cap ? cap * 2 : 64;
				b->t = xrealloc(b->t, cap * sizeof *b->t);
				b->jord = xrealloc(b->jord, cap * sizeof *b->jord);
			}
			b->jord[b->n] = -1;
			/* A single-stage job settles with its stage: no DAG step
			 * (read + write) needed afterwards. */
			if (t->outcome == MODULE_COMPLETE && t->p && t->p->nstages == 1 &&
			    !t->error) {
				struct job_ref jr = {t->job_id, t->project, t->pipeline,
				                     t->request_id};
				size_t ord = job_txn_size(txn);
				if (job_set_status_after(txn, &jr, JOB_RUNNING, JOB_COMPLETED,
				                         "all_stages_done", NULL, NULL, t->id))
					b->jord[b->n] = (ssize_t)ord;
			}
			b->t[b->n++] = t;
		}
		if (b->n == 0) {
			job_txn_free(txn);
			free(b);
			break;
		}
		s->commit_inflight++;
		job_txn_commit(txn, commit_done_cb, b);
	}
}

/* --- DAG steps ------------------------------------------------------------------ */

static void adv_add(struct scheduler *s, const char *job_id)
{
	for (size_t i = 0; i < s->nadv; i++)
		if (strcmp(s->adv[i], job_id) == 0)
			return;
	if (s->nadv == s->capadv) {
		s->capadv = s->capadv ? s->capadv * 2 : 64;
		s->adv = xrealloc(s->adv, s->capadv * sizeof *s->adv);
	}
	s->adv[s->nadv++] = xstrdup(job_id);
	if (s->adv_inflight < 2)
		event_active(s->advance_ev, EV_TIMEOUT, 0);
}

void scheduler_advance(struct scheduler *s, const char *job_id)
{
	if (s && id_uuid_valid(job_id))
		adv_add(s, job_id);
}

static enum adv_task_status adv_status(const char *s)
{
	enum task_status ts = TASK_PENDING;
	(void)task_status_parse(s, &ts);
	switch (ts) {
	case TASK_PENDING: return ADV_PENDING;
	case TASK_READY: return ADV_READY;
	case TASK_RUNNING: return ADV_RUNNING;
	case TASK_COMPLETED: return ADV_COMPLETED;
	case TASK_FAILED: return ADV_FAILED;
	case TASK_SKIPPED: return ADV_SKIPPED;
	default: return ADV_CANCELLED;
	}
}

static enum task_status adv_to_task(enum adv_task_status s)
{
	static const enum task_status map[] = {TASK_PENDING,   TASK_READY,  TASK_RUNNING,
	                                       TASK_COMPLETED, TASK_FAILED, TASK_SKIPPED,
	                                       TASK_CANCELLED};
	return map[s];
}

/* One job's step into txn; returns the number of changes added. */
static size_t adv_job(struct job_txn *txn, const PGresult *r, int row)
{
	const char *job_id = col(r, row, 0), *status = col(r, row, 1), *project = col(r, row, 2),
	           *pipeline = col(r, row, 3), *request_id = col(r, row, 5);
	json_t *tasks = pg_json(r, row, 4);
	size_t n = json_array_size(tasks);
	if (n == 0) {
		json_decref(tasks);
		return 0;
	}
	struct adv_task *at = xcalloc(n, sizeof *at);
	size_t *deps = xcalloc(n * n + 1, sizeof *deps);
	for (size_t i = 0; i < n; i++) {
		json_t *t = json_array_get(tasks, i);
		at[i].status = adv_status(json_string_value(json_object_get(t, "status")));
		at[i].required = json_is_true(json_object_get(t, "required"));
		const char *sr = json_string_value(json_object_get(t, "skip_reason"));
		at[i].reused = at[i].status == ADV_SKIPPED && sr && strcmp(sr, "reused") == 0;
		at[i].deps = deps + i * n;
		size_t k;
		json_t *d;
		json_array_foreach(json_object_get(t, "depends_on"), k, d)
		{
			for (size_t m = 0; m < n; m++) {
				const char *name = json_string_value(
				        json_object_get(json_array_get(tasks, m), "stage"));
				if (name && strcmp(name, json_string_value(d)) == 0 &&
				    at[i].ndeps < n)
					deps[i * n + at[i].ndeps++] = m;
			}
		}
	}
	size_t failed = 0;
	enum adv_job verdict = scheduler_advance_plan(at, n, &failed);
	size_t added = 0;
	struct job_ref jr = {job_id, project, pipeline, request_id};
	enum job_status js = JOB_RUNNING;
	(void)job_status_parse(status, &js);
	for (size_t i = 0; i < n; i++) {
		if (at[i].next == at[i].status)
			continue;
		json_t *t = json_array_get(tasks, i);
		struct task_ref tr = {json_string_value(json_object_get(t, "id")),
		                      job_id,
		                      project,
		                      pipeline,
		                      json_string_value(json_object_get(t, "stage")),
		                      request_id};
		struct task_set_opts o = {0};
		json_t *data = NULL;
		const char *reason;
		if (at[i].next == ADV_READY) {
			reason = "dependencies_completed";
		} else if (at[i].next == ADV_SKIPPED) {
			reason = "dependency_failed";
			o.skip_reason = "dependency_failed";
			data = json_pack("{s:s}", "cause_stage",
			                 json_string_value(json_object_get(
			                         json_array_get(tasks, at[i].cause), "stage")));
			o.data = data;
		} else {
			reason = "job_failed";
		}
		if (task_set_status(txn, &tr, adv_to_task(at[i].status), adv_to_task(at[i].next),
		                    reason, &o))
			added++;
		json_decref(data);
	}
	if (verdict == ADV_JOB_COMPLETE && js == JOB_RUNNING) {
		if (job_set_status(txn, &jr, JOB_RUNNING, JOB_COMPLETED, "all_stages_done", NULL))
			added++;
	} else if (verdict == ADV_JOB_FAIL) {
		json_t *ft = json_array_get(tasks, failed);
		json_t *err = json_deep_copy(json_object_get(ft, "error"));
		if (!json_is_object(err)) {
			json_decref(err);
			err = typed_error("stage_failed", "module", false,
			                  "a required stage failed", NULL);
		}
		if (job_set_status(txn, &jr, js, JOB_FAILED, "stage_failed", err))
			added++;
		json_decref(err);
	}
	free(deps);
	free(at);
	json_decref(tasks);
	return added;
}

static void adv_txn_done_cb(size_t applied, size_t total, const bool *which,
                            const struct pg_error *err, void *arg)
{
	struct scheduler *s = arg;
	(void)which;
	s->adv_inflight--;
	drain_check(s);
	if (err)
		log_warn("sched.advance_failed",
		         "a DAG step could not be written; the sweep retries",
		         LF_STR("error", err->message));
	if (applied > 0)
		sched_kick(s);
	(void)total;
	if (s->nadv > 0)
		event_active(s->advance_ev, EV_TIMEOUT, 0);
}

static bool adv_read_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct adv_slot *slot = arg;
	struct scheduler *s = slot->s;
	slot->q = NULL;
	if (err) {
		s->adv_inflight--;
		drain_check(s);
		log_warn("sched.advance_failed", "jobs could not be read for a DAG step",
		         LF_STR("error", err->message));
		return false;
	}
	struct job_txn *txn = job_txn_new(s->e);
	for (int r = 0; r < PQntuples(res); r++)
		adv_job(txn, res, r);
	if (job_txn_size(txn) == 0) {
		job_txn_free(txn);
		s->adv_inflight--;
		drain_check(s);
		if (s->nadv > 0)
			event_active(s->advance_ev, EV_TIMEOUT, 0);
		return false;
	}
	job_txn_commit(txn, adv_txn_done_cb, s);
	return false;
}

static void advance_cb(evutil_socket_t fd, short what, void *arg)
{
	struct scheduler *s = arg;
	(void)fd;
	(void)what;
	if (s->nadv == 0 || s->adv_inflight >= 2)
		return;
	struct buf b = BUF_INIT;
	buf_addc(&b, '{');
	size_t n = s->nadv < ADVANCE_BATCH_MAX ? s->nadv : ADVANCE_BATCH_MAX;
	for (size_t i = 0; i < n; i++) {
		if (i)
			buf_addc(&b, ',');
		buf_adds(&b, s->adv[i]);
		free(s->adv[i]);
	}
	buf_addc(&b, '}');
	memmove(s->adv, s->adv + n, (s->nadv - n) * sizeof *s->adv);
	s->nadv -= n;
	const char *v[1] = {b.data};
	s->adv_inflight++;
	struct adv_slot *slot = s->adv_q[0].q ? &s->adv_q[1] : &s->adv_q[0];
	slot->s = s;
	slot->q = pg_pool_query_prepared(s->e->pool, "sched_adv_read", 1, v, adv_read_cb, slot);
	buf_free(&b);
	if (s->nadv > 0 && s->adv_inflight < 2)
		event_active(s->advance_ev, EV_TIMEOUT, 0);
}

/* --- Claims ---------------------------------------------------------------------- */

struct claim_ctx {
	struct srunner *sr;
	int limit;
};

static void claim_announce(struct scheduler *s, const PGresult *res, int r)
{
	job_rev_note(s->e, col(res, r, 1), col(res, r, 6), col_i(res, r, 5));
	const char *kind = col(res, r, 0);
	bool is_task = !PQgetisnull(res, r, 10);
	json_t *data = pg_json(res, r, 4);
	struct sl_event ev = {
	        .id = col_i(res, r, 3),
	        .seq = col_i(res, r, 2),
	        .rev = col_i(res, r, 5),
	        .ts_us = col_i(res, r, 26),
	        .kind = kind,
	        .job_id = col(res, r, 1),
	        .project_id = col(res, r, 6),
	        .pipeline = col(res, r, 7),
	        .task_id = col(res, r, 10),
	        .stage = col(res, r, 11),
	        .status_from = is_task ? "ready" : "queued",
	        .status_to = "running",
	        .reason = is_task ? "claimed" : "task_claimed",
	        .request_id = col(res, r, 23),
	        .data = data,
	};
	int64_t queued = col_i(res, r, 9);
	job_announce(s->e, &ev, is_task, queued > 0 ? (ev.ts_us - queued) / 1000 : 0, NULL,
	             col_i(res, r, 8));
	json_decref(data);
}

static bool claim_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct claim_ctx *c = arg;
	struct srunner *sr = c->sr;
	struct scheduler *s = sr->s;
	sr->claiming = false;
	sr->claim_q = NULL;
	sr->claim_c = NULL;
	int limit = c->limit;
	free(c);
	if (err) {
		log_warn("sched.claim_failed", "could not claim tasks",
		         LF_STR("module", sr->def->name), LF_STR("error", err->message));
		sr->running -= limit;
		s->running -= limit;
		drain_check(s);
		return false;
	}
	int64_t now = clock_now_us();
	int claimed = 0;
	for (int r = 0; r < PQntuples(res); r++) {
		claim_announce(s, res, r);
		if (PQgetisnull(res, r, 10))
			continue;
		claimed++;
		struct stask *t = xcalloc(1, sizeof *t);
		t->s = s;
		t->sr = sr;
		t->t_claimed = now;
		t->lease_ok_us = clock_mono_us();
		t->job_id = xstrdup(col(res, r, 1));
		t->project = xstrdup(col(res, r, 6));
		t->pipeline = xstrdup(col(res, r, 7));
		t->id = xstrdup(col(res, r, 10));
		t->stage = xstrdup(col(res, r, 11));
		t->stage_number = (int)col_i(res, r, 12);
		t->attempt = (int)col_i(res, r, 14);
		t->retries = (int)col_i(res, r, 15);
		t->max_retries = (int)col_i(res, r, 16);
		t->backoff_ms = col_i(res, r, 17);
		t->timeout_ms = col_i(res, r, 18);
		t->params = pg_json(res, r, 19);
		t->lease = xstrdup(col(res, r, 20));
		t->input = pg_json(res, r, 21);
		t->resume_from = pg_json(res, r, 22);
		t->request_id = col(res, r, 23) ? xstrdup(col(res, r, 23)) : NULL;
		t->dep_artifacts = pg_json(res, r, 24);
		t->upload_key = col(res, r, 27) ? xstrdup(col(res, r, 27)) : NULL;
		t->exit_code = -1;
		stage_log_ring_init(&t->log, STAGE_LOG_CAP, STAGE_LOG_HEAD);
		t->step_ev = event_new(s->app->base, -1, 0, step_cb, t);
		t->p = pipeline_set_find(s->e->pipelines, t->pipeline);
		t->sd = t->p ? pipeline_stage_find(t->p, t->stage) : NULL;
		TAILQ_INSERT_TAIL(&s->tasks, t, link);
		if (t->sd == NULL) {
			/* Another instance's configuration: this one cannot run it. */
			t->have_outcome = true;
			t->outcome = MODULE_ERROR;
			t->error = typed_error("unknown_stage", "infra", true,
			                       "this instance's configuration has no such pipeline "
			                       "stage",
			                       NULL);
			t->t_fetch_end = t->t_run_end = now;
			upload_start(t);
			continue;
		}
		fetch_start(t);
	}
	/* Give back the slots the claim did not fill. */
	sr->running -= limit - claimed;
	s->running -= limit - claimed;
	drain_check(s); /* a drain may have been waiting for this claim */
	metric_set(metrics_default_get(M_WORKER_INFLIGHT_JOBS), (double)s->running);
	sr->more = claimed == limit;
	bool starved = false;
	for (size_t i = 0; i < s->nrunners; i++)
		starved = starved || s->runners[i].starved;
	bool again = sr->again;
	sr->again = false;
	if (sr->more || again || (starved && claimed < limit))
		sched_kick(s);
	return false;
}

static void claim_pass(struct scheduler *s)
{
	if (s->draining || !pg_pool_is_up(s->e->pool))
		return;
	/* Runners left without a slot last time go first, so one busy module's
	 * claims cannot keep the global slots from the others. */
	for (size_t k = 0; k < 2 * s->nrunners; k++) {
		struct srunner *sr = &s->runners[k % s->nrunners];
		if (k < s->nrunners && sr->claiming)
			sr->again = true; /* its claim may have missed new work */
		if (sr->claiming || (k < s->nrunners) != sr->starved)
			continue;
		int free_global = s->o.max_concurrency - s->running;
		int free_mod = sr->def->concurrency - sr->running;
		int n = free_global < free_mod ? free_global : free_mod;
		if (n > SCHEDULER_CLAIM_MAX)
			n = SCHEDULER_CLAIM_MAX;
		sr->starved = n <= 0 && free_mod > 0;
		if (n <= 0)
			continue;
		/* Slots are held while the claim is in flight. */
		sr->claiming = true;
		sr->running += n;
		s->running += n;
		struct claim_ctx *c = xcalloc(1, sizeof *c);
		c->sr = sr;
		c->limit = n;
		char lease[32], lim[16];
		snprintf(lease, sizeof lease, "%lld", (long long)s->o.lease_ms);
		snprintf(lim, sizeof lim, "%d", n);
		char mc[24];
		snprintf(mc, sizeof mc, "%lld", (long long)s->app->cfg->quota.max_concurrent_jobs);
		const char *v[5] = {s->app->instance_id, sr->def->name, lease, lim, mc};
		sr->claim_c = c;
		sr->claim_q = pg_pool_query_prepared(s->e->pool, "sched_claim", 5, v, claim_cb, c);
	}
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	claim_pass(arg);
}

static void sched_kick(struct scheduler *s)
{
	if (s->kick_ev && !s->draining)
		event_active(s->kick_ev, EV_TIMEOUT, 0);
}

void scheduler_wake(struct scheduler *s)
{
	if (s)
		sched_kick(s);
}

static void nb_cb(evutil_socket_t fd, short what, void *arg)
{
	struct scheduler *s = arg;
	(void)fd;
	(void)what;
	s->nb_at_us = 0;
	claim_pass(s);
	if (s->nb_followup) {
		/* once more, in case the claim ran a hair too early or was
		 * already in flight with an older snapshot */
		s->nb_followup = false;
		struct timeval tv;
		tv_ms(&tv, 250);
		evtimer_add(s->nb_ev, &tv);
	}
}

/* --- Heartbeat: leases, and jobs that stopped ------------------------------------- */

static struct stask *task_find(struct scheduler *s, const char *id)
{
	struct stask *t;
	TAILQ_FOREACH(t, &s->tasks, link)
	if (strcmp(t->id, id) == 0)
		return t;
	return NULL;
}

static void stask_stop(struct stask *t, const char *reason, bool lost)
{
	if (lost)
		t->lost = true;
	if (t->stop_reason == NULL)
		t->stop_reason = reason;
	if (t->mt)
		module_task_cancel(t->mt, reason);
}

struct hb_ctx {
	struct scheduler *s;
	char **ids; /* the tasks asked about */
	size_t n;
	int64_t sent_us; /* monotonic */
	struct stask *check; /* a lease check for this task before its upload */
};

static void hb_ctx_free(struct hb_ctx *c)
{
	for (size_t i = 0; i < c->n; i++)
		free(c->ids[i]);
	free(c->ids);
	free(c);
}

static void lease_check(struct stask *t);

static void recheck_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	lease_check(arg);
}

static bool hb_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct hb_ctx *c = arg;
	struct scheduler *s = c->s;
	if (c->check == NULL) {
		s->hb_q = NULL;
		s->hb_c = NULL;
		s->hb_inflight = false;
	}
	if (!err) {
		/* A task asked about that did not come back is no longer ours. */
		for (size_t i = 0; i < c->n; i++) {
			int found = -1;
			for (int r = 0; r < PQntuples(res); r++)
				if (strcmp(PQgetvalue(res, r, 0), c->ids[i]) == 0)
					found = r;
			struct stask *t = task_find(s, c->ids[i]);
			if (t == NULL || t->state == ST_COMMIT)
				continue;
			if (found < 0) {
				stask_stop(t, "lease_lost", true);
				continue;
			}
			t->lease_ok_us = c->sent_us;
			const char *js = PQgetvalue(res, found, 1);
			if (strcmp(js, "cancelled") == 0)
				stask_stop(t, "job_cancelled", false);
			else if (strcmp(js, "failed") == 0 || strcmp(js, "completed") == 0)
				stask_stop(t, "job_failed", false);
		}
	} else {
		log_warn("sched.heartbeat_failed", "leases could not be renewed",
		         LF_STR("error", err->message));
	}
	if (c->check) {
		/* found: lease_ok_us moved on and the upload goes ahead; lost:
		 * upload_start drops the outcome; failed: asked again soon */
		struct stask *t = task_find(s, c->ids[0]);
		if (t && t->lease_checking) {
			t->lease_checking = false;
			t->check_q = NULL;
			t->check_c = NULL;
			if (err) {
				if (t->recheck_ev == NULL)
					t->recheck_ev = evtimer_new(s->app->base, recheck_cb, t);
				struct timeval tv = {0, 500000};
				evtimer_add(t->recheck_ev, &tv);
			} else {
				upload_start(t);
			}
		}
	}
	hb_ctx_free(c);
	return false;
}

/* Renews the leases of the local tasks (only those of job_id when given). */
static void heartbeat_send(struct scheduler *s, const char *job_id)
{
	if (s->hb_inflight)
		return;
	struct hb_ctx *c = xcalloc(1, sizeof *c);
	c->s = s;
	json_t *arr = json_array();
	struct stask *t;
	TAILQ_FOREACH(t, &s->tasks, link)
	{
		if (job_id && strcmp(t->job_id, job_id) != 0)
			continue;
		json_array_append_new(arr, json_pack("{s:s, s:s}", "id", t->id, "lease", t->lease));
		c->ids = xrealloc(c->ids, (c->n + 1) * sizeof *c->ids);
		c->ids[c->n++] = xstrdup(t->id);
	}
	if (c->n == 0) {
		json_decref(arr);
		free(c);
		return;
	}
	char *p = json_dumps(arr, JSON_COMPACT);
	char lease[32];
	snprintf(lease, sizeof lease, "%lld", (long long)s->o.lease_ms);
	const char *v[3] = {s->app->instance_id, p, lease};
	c->sent_us = clock_mono_us();
	s->hb_inflight = true;
	s->hb_c = c;
	s->hb_q = pg_pool_query_prepared(s->e->pool, "sched_heartbeat", 3, v, hb_cb, c);
	free(p);
	json_decref(arr);
}

/* One task's lease, asked (and renewed) before its upload. */
static void lease_check(struct stask *t)
{
	struct scheduler *s = t->s;
	if (t->lease_checking)
		return;
	t->lease_checking = true;
	struct hb_ctx *c = xcalloc(1, sizeof *c);
	c->s = s;
	c->check = t;
	c->ids = xcalloc(1, sizeof *c->ids);
	c->ids[c->n++] = xstrdup(t->id);
	c->sent_us = clock_mono_us();
	json_t *arr = json_pack("[{s:s, s:s}]", "id", t->id, "lease", t->lease);
	char *p = json_dumps(arr, JSON_COMPACT);
	char lease[32];
	snprintf(lease, sizeof lease, "%lld", (long long)s->o.lease_ms);
	const char *v[3] = {s->app->instance_id, p, lease};
	t->check_c = c;
	t->check_q = pg_pool_query_prepared(s->e->pool, "sched_heartbeat", 3, v, hb_cb, c);
	free(p);
	json_decref(arr);
}

static void hb_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	heartbeat_send(arg, NULL);
}

/* A job this instance stopped (DELETE here, or a required stage failing
 * here) stops its tasks running here at once; other instances hear of it
 * through NOTIFY and the heartbeat. */
static void sched_bus_cb(const struct sl_event *ev, void *arg)
{
	struct scheduler *s = arg;
	if (ev->status_to &&
	    (strcmp(ev->status_to, "completed") == 0 || strcmp(ev->status_to, "failed") == 0 ||
	     strcmp(ev->status_to, "cancelled") == 0)) {
		fin_kick(s, 200); /* a job may have settled: its pipeline.log */
		if (ev->task_id == NULL)
			sched_kick(s); /* and a project under max_concurrent_jobs may start one */
	}
	if (ev->task_id != NULL || strncmp(ev->kind, "job.lifecycle.", 14) != 0)
		return;
	bool cancelled = strcmp(ev->status_to, "cancelled") == 0;
	if (!cancelled && strcmp(ev->status_to, "failed") != 0)
		return;
	struct stask *t;
	TAILQ_FOREACH(t, &s->tasks, link)
	{
		if (strcmp(t->job_id, ev->job_id) == 0 && t->state != ST_COMMIT)
			stask_stop(t, cancelled ? "job_cancelled" : "job_failed", false);
	}
}

void scheduler_on_job_notify(struct scheduler *s, const char *payload)
{
	if (s == NULL || payload == NULL)
		return;
	char id[ID_UUID_LEN + 1];
	const char *sp = strchr(payload, ' ');
	if (sp == NULL || (size_t)(sp - payload) != ID_UUID_LEN)
		return;
	memcpy(id, payload, ID_UUID_LEN);
	id[ID_UUID_LEN] = '\0';
	int64_t rev = strtoll(sp + 1, NULL, 10), known = 0;
	/* Our own changes come back too: only news matters. */
	if (job_rev_known(s->e, id, &known) && known >= rev)
		return;
	fin_kick(s, 1000); /* another instance's change may have settled a job */
	struct stask *t;
	TAILQ_FOREACH(t, &s->tasks, link)
	{
		if (strcmp(t->job_id, id) == 0 && t->state != ST_COMMIT) {
			heartbeat_send(s, id);
			return;
		}
	}
}

/* --- Rescue and the stuck-job sweep -------------------------------------------------- */

static void rescue_txn_cb(size_t applied, size_t total, const bool *which,
                          const struct pg_error *err, void *arg)
{
	struct scheduler *s = arg;
	(void)total;
	(void)which;
	s->rescue_inflight = false;
	if (err)
		log_warn("sched.rescue_failed", "expired leases could not be returned",
		         LF_STR("error", err->message));
	else if (applied)
		metric_inc(metrics_default_get(M_WORKER_RECOVERED_JOBS_TOTAL), (double)applied,
		           "lease_expired");
	if (applied)
		sched_kick(s);
}

static bool rescue_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct scheduler *s = arg;
	s->rescue_q = NULL;
	if (err || PQntuples(res) == 0) {
		s->rescue_inflight = false;
		return false;
	}
	struct job_txn *txn = job_txn_new(s->e);
	for (int r = 0; r < PQntuples(res); r++) {
		struct task_ref tr = {col(res, r, 0), col(res, r, 1), col(res, r, 2),
		                      col(res, r, 3), col(res, r, 4), NULL};
		const char *js = col(res, r, 7);
		bool active = strcmp(js, "queued") == 0 || strcmp(js, "running") == 0;
		json_t *err_o = typed_error("lease_expired", "infra", true,
		                            "the instance running the task stopped", NULL);
		json_t *att = json_pack("{s:s, s:O}", "outcome", "lost", "error", err_o);
		json_t *data = json_pack("{s:s, s:I, s:s?, s:O}", "module", col(res, r, 9),
		                         "attempt", (json_int_t)col_i(res, r, 8), "lost_owner",
		                         col(res, r, 6), "error", err_o);
		struct task_set_opts o = {
		        .kind = active ? "job.module.retry" : "job.stage.cancelled",
		        .lease_token = col(res, r, 5),
		        .data = data,
		        .attempt_end = att,
		        .keep_retries = true,
		};
		log_warn("sched.rescue", "returning a task whose lease expired",
		         LF_STR("task_id", tr.task_id), LF_STR("job_id", tr.job_id),
		         LF_STR("lease_owner", col(res, r, 6)));
		if (!task_set_status(txn, &tr, TASK_RUNNING, active ? TASK_READY : TASK_CANCELLED,
		                     active ? "lease_expired" : "job_cancelled", &o))
			log_error("sched.rescue", "the rescue edge was refused",
			          LF_STR("task_id", tr.task_id));
		json_decref(err_o);
		json_decref(att);
		json_decref(data);
		adv_add(s, tr.job_id);
	}
	job_txn_commit(txn, rescue_txn_cb, s);
	return false;
}

static bool stuck_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct scheduler *s = arg;
	s->stuck_q = NULL;
	for (int r = 0; !err && r < PQntuples(res); r++)
		adv_add(s, PQgetvalue(res, r, 0));
	return false;
}

static bool stats_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct scheduler *s = arg;
	s->stats_q = NULL;
	if (err)
		return false;
	/* Pipelines with nothing ready read 0. */
	const struct pipeline_set *ps = s->e->pipelines;
	for (size_t i = 0; ps && i < ps->npipelines; i++) {
		double depth = 0, age = 0;
		for (int r = 0; r < PQntuples(res); r++) {
			if (strcmp(PQgetvalue(res, r, 0), ps->pipelines[i].name) == 0) {
				depth = (double)col_i(res, r, 1);
				age = (double)col_i(res, r, 2);
			}
		}
		metric_set(metrics_default_get(M_QUEUE_DEPTH), depth, ps->pipelines[i].name);
		metric_set(metrics_default_get(M_QUEUE_OLDEST_READY_AGE_MS), age,
		           ps->pipelines[i].name);
	}
	return false;
}

static void fin_kick(struct scheduler *s, int64_t ms);

static void rescue_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct scheduler *s = arg;
	fin_kick(s, 0);
	(void)fd;
	(void)what;
	if (!s->rescue_inflight && !s->draining) {
		s->rescue_inflight = true;
		char lease[32];
		snprintf(lease, sizeof lease, "%lld", (long long)s->o.lease_ms);
		const char *v[2] = {s->app->instance_id, lease};
		s->rescue_q =
		        pg_pool_query_prepared(s->e->pool, "sched_rescue_find", 2, v, rescue_cb, s);
	}
	if (s->stuck_q == NULL && !s->draining)
		s->stuck_q =
		        pg_pool_query_prepared(s->e->pool, "sched_stuck", 0, NULL, stuck_cb, s);
}

static void poll_cb(evutil_socket_t fd, short what, void *arg)
{
	struct scheduler *s = arg;
	(void)fd;
	(void)what;
	claim_pass(s);
	if (s->stats_q == NULL)
		s->stats_q = pg_pool_query_prepared(s->e->pool, "sched_queue_stats", 0, NULL,
		                                    stats_cb, s);
}

/* --- Progress ------------------------------------------------------------------- */

static bool progress_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct scheduler *s = arg;
	s->progress_q = NULL;
	s->progress_inflight = false;
	for (int r = 0; !err && r < PQntuples(res); r++) {
		job_rev_note(s->e, PQgetvalue(res, r, 0), PQgetvalue(res, r, 2), col_i(res, r, 1));
		/* a revision with no event: streams learn it is not news */
		struct sl_event ev = {.ts_us = clock_now_us(),
		                      .kind = "rev",
		                      .job_id = PQgetvalue(res, r, 0),
		                      .project_id = PQgetvalue(res, r, 2),
		                      .rev = col_i(res, r, 1)};
		event_bus_publish(s->e->bus, &ev);
	}
	return false;
}

static void progress_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct scheduler *s = arg;
	(void)fd;
	(void)what;
	json_t *arr = NULL;
	struct stask *t;
	int64_t now = clock_mono_us();
	TAILQ_FOREACH(t, &s->tasks, link)
	{
		if (t->state == ST_RUN && now - t->log_flush_us >= s->o.log_flush_ms * 1000)
			stage_log_flush(t);
		if (!t->progress_dirty || t->state != ST_RUN || s->progress_inflight)
			continue;
		t->progress_dirty = false;
		if (arr == NULL)
			arr = json_array();
		json_array_append_new(arr,
		                      json_pack("{s:s, s:s, s:s, s:f}", "id", t->id, "job_id",
		                                t->job_id, "lease", t->lease, "p", t->progress));
	}
	if (arr == NULL)
		return;
	char *p = json_dumps(arr, JSON_COMPACT);
	const char *v[1] = {p};
	s->progress_inflight = true;
	s->progress_q = pg_pool_query_prepared(s->e->pool, "sched_progress", 1, v, progress_cb, s);
	free(p);
	json_decref(arr);
}

/* --- Job-level files: input.json, logs/pipeline.log ---------------------------
 * A job's input.json (its input is in jobs.input meanwhile) and pipeline.log
 * are stored once the job has settled: the finalizer claims settled jobs
 * whose log is missing or older than their last event (any instance, so a
 * crash only delays it), renders pipeline.log from job_events and stores both. */
struct jput {
	LIST_ENTRY(jput) link;
	struct scheduler *s;
	struct store_op *op;
	struct fin_batch *batch; /* NULL: the claim's input.json */
	size_t row;
};

struct fin_batch {
	struct scheduler *s;
	json_t *done; /* [{id, seq}] stored whole */
	size_t n;
	int *pending; /* per row: puts not yet back (-1: one failed) */
	int64_t *seq;
	char **ids;
	int left;
};

static void fin_batch_end(struct fin_batch *b);

static void jput_free(struct jput *j)
{
	LIST_REMOVE(j, link);
	store_op_cancel(j->op);
	free(j);
}

static void jput_cb(const struct store_error *err, void *arg)
{
	struct jput *j = arg;
	struct fin_batch *b = j->batch;
	size_t row = j->row;
	j->op = NULL;
	if (err)
		log_warn("job.logs.store_failed", "a job-level file was not stored",
		         LF_STR("error", err->message));
	jput_free(j);
	if (b == NULL)
		return;
	if (err && b->pending[row] > 0) {
		b->pending[row] = -1;
		metric_inc(metrics_default_get(M_JOBS_LOGS_STORED_TOTAL), 1, "failed");
	} else if (!err && b->pending[row] > 0 && --b->pending[row] == 0) {
		json_array_append_new(b->done, json_pack("{s:s, s:I}", "id", b->ids[row], "seq",
		                                         (json_int_t)b->seq[row]));
		metric_inc(metrics_default_get(M_JOBS_LOGS_STORED_TOTAL), 1, "stored");
	}
	if (--b->left == 0)
		fin_batch_end(b);
}

static void jput_start(struct scheduler *s, struct fin_batch *b, size_t row, const char *key,
                       const char *data, size_t len, const char *ctype)
{
	struct jput *j = xcalloc(1, sizeof *j);
	j->s = s;
	j->batch = b;
	j->row = row;
	LIST_INSERT_HEAD(&s->jputs, j, link);
	if (b)
		b->left++;
	j->op = store_put_buf(s->store, key, data, len, ctype, jput_cb, j);
}

/* The job's input.json, from jobs.input. */
static void job_input_put(struct scheduler *s, const char *project, const char *job_id,
                          const char *input_text, struct fin_batch *b, size_t row)
{
	char *key = xasprintf("%s/%s/input.json", project, job_id);
	const char *text = input_text ? input_text : "null";
	jput_start(s, b, row, key, text, strlen(text), "application/json");
	free(key);
}

static void fin_kick(struct scheduler *s, int64_t ms)
{
	if (s->fin_ev == NULL || s->draining)
		return;
	if (ms == 0 || !evtimer_pending(s->fin_ev, NULL)) {
		struct timeval tv;
		tv_ms(&tv, ms);
		evtimer_add(s->fin_ev, &tv);
	}
}

static void fin_batch_free(struct fin_batch *b)
{
	for (size_t i = 0; i < b->n; i++)
		free(b->ids[i]);
	free(b->ids);
	free(b->seq);
	free(b->pending);
	json_decref(b->done);
	free(b);
}

static bool fin_done_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct scheduler *s = arg;
	(void)res;
	s->fin_q = NULL;
	s->fin_inflight = false;
	if (err)
		log_warn("job.logs.mark_failed", "could not record stored pipeline logs",
		         LF_STR("error", err->message));
	if (s->fin_more)
		fin_kick(s, 0);
	return false;
}

static void fin_batch_end(struct fin_batch *b)
{
	struct scheduler *s = b->s;
	s->fin_batch = NULL;
	if (json_array_size(b->done) == 0) {
		s->fin_inflight = false;
		fin_batch_free(b);
		return;
	}
	char *p = json_dumps(b->done, JSON_COMPACT);
	const char *v[1] = {p};
	s->fin_q = pg_pool_query_prepared(s->e->pool, "sched_logs_done", 1, v, fin_done_cb, s);
	free(p);
	fin_batch_free(b);
}

/* Stages that never ran (skipped, attempt 0) get a manifest saying so. */
static void fin_skipped_manifests(struct scheduler *s, struct fin_batch *b, size_t row,
                                  const char *project, const char *job_id, const json_t *events,
                                  const json_t *tasks)
{
	size_t i;
	json_t *t;
	json_array_foreach((json_t *)tasks, i, t)
	{
		const char *st = json_string_value(json_object_get(t, "status"));
		if (st == NULL || strcmp(st, "skipped") != 0 ||
		    json_integer_value(json_object_get(t, "attempt")) != 0)
			continue;
		const char *stage = json_string_value(json_object_get(t, "stage"));
		int64_t when = 0;
		size_t k;
		json_t *ev;
		json_array_foreach((json_t *)events, k, ev)
		{
			const char *es = json_string_value(json_object_get(ev, "stage"));
			const char *kind = json_string_value(json_object_get(ev, "kind"));
			if (es && stage && kind && strcmp(es, stage) == 0 &&
			    strcmp(kind, "job.stage.skipped") == 0)
				when = json_integer_value(json_object_get(ev, "ts_us"));
		}
		json_t *m = manifest_skipped(job_id, t, when ? when : clock_now_us());
		if (m == NULL)
			continue;
		char *text = json_dumps(m, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		char *key = stage_key(project, job_id,
		                      (int)json_integer_value(json_object_get(t, "stage_number")),
		                      stage, "manifest.json");
		b->pending[row]++;
		jput_start(s, b, row, key, text, strlen(text), "application/json");
		free(key);
		free(text);
		json_decref(m);
	}
}

static bool fin_claim_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct scheduler *s = arg;
	s->fin_q = NULL;
	if (err) {
		s->fin_inflight = false;
		log_warn("job.logs.claim_failed", "could not read settled jobs for their logs",
		         LF_STR("error", err->message));
		return false;
	}
	int n = PQntuples(res);
	s->fin_more = n == FINALIZE_BATCH;
	if (n == 0) {
		s->fin_inflight = false;
		return false;
	}
	struct fin_batch *b = xcalloc(1, sizeof *b);
	b->s = s;
	b->n = (size_t)n;
	b->done = json_array();
	b->ids = xcalloc((size_t)n, sizeof *b->ids);
	b->seq = xcalloc((size_t)n, sizeof *b->seq);
	b->pending = xcalloc((size_t)n, sizeof *b->pending);
	s->fin_batch = b;
	b->left = 1; /* held until every put started */
	for (int r = 0; r < n; r++) {
		const char *id = col(res, r, 0), *project = col(res, r, 1);
		b->ids[r] = xstrdup(id);
		b->seq[r] = col_i(res, r, 4);
		b->pending[r] = 2;
		json_t *events = pg_json(res, r, 6), *tasks = pg_json(res, r, 7);
		struct buf text = BUF_INIT;
		pipelog_render_tasks(id, col(res, r, 2), events, tasks, &text);
		const char *key = col(res, r, 5);
		char *dflt = key ? NULL : xasprintf("%s/%s/logs/pipeline.log", project, id);
		jput_start(s, b, (size_t)r, key ? key : dflt, text.data ? text.data : "", text.len,
		           "text/plain");
		free(dflt);
		job_input_put(s, project, id, col(res, r, 3), b, (size_t)r);
		fin_skipped_manifests(s, b, (size_t)r, project, id, events, tasks);
		buf_free(&text);
		json_decref(events);
		json_decref(tasks);
	}
	if (--b->left == 0)
		fin_batch_end(b);
	return false;
}

static void fin_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct scheduler *s = arg;
	(void)fd;
	(void)what;
	if (s->fin_inflight || s->draining)
		return;
	s->fin_inflight = true;
	char lim[16];
	snprintf(lim, sizeof lim, "%d", FINALIZE_BATCH);
	const char *v[1] = {lim};
	s->fin_q = pg_pool_query_prepared(s->e->pool, "sched_logs_claim", 1, v, fin_claim_cb, s);
}

/* --- Start, drain, free ------------------------------------------------------------- */

static void runner_stderr_cb(struct module_runner *r, pid_t pid, const char *line, size_t len,
                             void *arg)
{
	struct scheduler *s = arg;
	/* privacy.scrub: the line is not tied to one task, so the personal
	 * values of every task this module has are masked (patterns: LF_PII) */
	struct buf b[2] = {BUF_INIT, BUF_INIT};
	int k = 0;
	struct stask *t;
	if (s->o.scrub) {
		TAILQ_FOREACH(t, &s->tasks, link)
		{
			const struct scrub_values *vs = t->sr->r == r ? stask_pii(t) : NULL;
			buf_reset(&b[k]);
			if (vs && scrub_text_values(NULL, vs, &b[k], line, len)) {
				line = b[k].data;
				len = b[k].len;
				k ^= 1;
			}
		}
	}
	log_info("module.stderr", "persistent module wrote to stderr",
	         LF_STR("module", module_runner_name(r)), LF_INT("pid", pid),
	         LF_PIIN("line", line, len));
	buf_free(&b[0]);
	buf_free(&b[1]);
}

struct scheduler *scheduler_start(struct engine *e, struct store *store,
                                  const struct scheduler_opts *o)
{
	if (!mkdir_p(o->scratch_dir, 0750)) {
		log_error("sched.start", "cannot create the scratch directory",
		          LF_STR("scratch_dir", o->scratch_dir), LF_STR("error", strerror(errno)));
		return NULL;
	}
	struct scheduler *s = xcalloc(1, sizeof *s);
	s->e = e;
	s->app = e->app;
	s->store = store;
	s->o = *o;
	s->o.scratch_dir = xstrdup(o->scratch_dir);
	if (s->o.max_concurrency < 1)
		s->o.max_concurrency = 1;
	id_random(&s->rnd, sizeof s->rnd);
	s->rnd |= 1;
	TAILQ_INIT(&s->tasks);
	TAILQ_INIT(&s->to_commit);
	const struct pipeline_set *ps = e->pipelines;
	s->nrunners = ps ? ps->nmodules : 0;
	s->runners = xcalloc(s->nrunners ? s->nrunners : 1, sizeof *s->runners);
	for (size_t i = 0; i < s->nrunners; i++) {
		const struct module_def *d = &ps->modules[i];
		struct module_runner_def rd = {
		        .name = d->name,
		        .argv = (const char *const *)d->argv,
		        .env = (const char *const *)d->env,
		        .cwd = s->o.scratch_dir,
		        .persistent = d->persistent,
		        .concurrency = (unsigned)d->concurrency,
		        .limits = {.max_bytes = o->max_frame_bytes},
		};
		s->runners[i].s = s;
		s->runners[i].def = d;
		s->runners[i].r = module_runner_new(s->app->base, &rd);
		if (s->runners[i].r == NULL) {
			scheduler_free(s);
			return NULL;
		}
		if (d->persistent)
			module_runner_set_stderr_cb(s->runners[i].r, runner_stderr_cb, s);
	}
	s->bus_sub = event_bus_subscribe(e->bus, sched_bus_cb, s);
	struct event_base *b = s->app->base;
	s->kick_ev = event_new(b, -1, 0, kick_cb, s);
	s->commit_ev = event_new(b, -1, 0, commit_cb, s);
	s->advance_ev = event_new(b, -1, 0, advance_cb, s);
	s->nb_ev = evtimer_new(b, nb_cb, s);
	/* Work arrives in bursts: the claim runs after the pass's other events. */
	event_priority_set(s->kick_ev, event_base_get_npriorities(b) - 1);
	event_priority_set(s->commit_ev, event_base_get_npriorities(b) - 1);
	event_priority_set(s->advance_ev, event_base_get_npriorities(b) - 1);
	struct timeval tv;
	s->poll_ev = event_new(b, -1, EV_PERSIST, poll_cb, s);
	tv_ms(&tv, o->poll_ms > 0 ? o->poll_ms : 5000);
	event_add(s->poll_ev, &tv);
	s->hb_ev = event_new(b, -1, EV_PERSIST, hb_timer_cb, s);
	tv_ms(&tv, o->heartbeat_ms > 0 ? o->heartbeat_ms : 10000);
	event_add(s->hb_ev, &tv);
	s->rescue_ev = event_new(b, -1, EV_PERSIST, rescue_timer_cb, s);
	tv_ms(&tv, o->rescue_every_ms > 0 ? o->rescue_every_ms : 15000);
	event_add(s->rescue_ev, &tv);
	s->fin_ev = evtimer_new(b, fin_timer_cb, s);
	s->hash_chunk = xmalloc(HASH_CHUNK);
	LIST_INIT(&s->jputs);
	s->progress_ev = event_new(b, -1, EV_PERSIST, progress_timer_cb, s);
	tv_ms(&tv, PROGRESS_EVERY_MS);
	event_add(s->progress_ev, &tv);
	log_info("sched.start", "scheduler started",
	         LF_INT("max_concurrency", s->o.max_concurrency), LF_UINT("modules", s->nrunners),
	         LF_INT("lease_ms", s->o.lease_ms), LF_STR("scratch_dir", s->o.scratch_dir));
	/* Work left by a crash: expired leases and half-advanced jobs. */
	rescue_timer_cb(-1, 0, s);
	sched_kick(s);
	return s;
}

static void drained_cb(evutil_socket_t fd, short what, void *arg)
{
	struct scheduler *s = arg;
	(void)fd;
	(void)what;
	if (s->running > 0 || s->nadv > 0 || s->adv_inflight > 0 || s->drain_done == NULL)
		return;
	void (*done)(void *) = s->drain_done;
	s->drain_done = NULL;
	log_info("sched.drained", "no task runs here any more");
	done(s->drain_arg);
}

static void grace_cb(evutil_socket_t fd, short what, void *arg)
{
	struct scheduler *s = arg;
	(void)fd;
	(void)what;
	struct stask *t;
	int n = 0;
	TAILQ_FOREACH(t, &s->tasks, link)
	{
		if (t->state == ST_ARCHIVE || t->state == ST_FETCH || t->state == ST_RUN) {
			stask_stop(t, "shutdown", false);
			n++;
		}
	}
	log_info("sched.drain", "shutdown grace over: cancelling running tasks",
	         LF_INT("tasks", n));
}

void scheduler_drain(struct scheduler *s, int64_t grace_ms, void (*done)(void *arg), void *arg)
{
	s->draining = true;
	s->drain_done = done;
	s->drain_arg = arg;
	s->drained_ev = event_new(s->app->base, -1, 0, drained_cb, s);
	s->grace_ev = evtimer_new(s->app->base, grace_cb, s);
	struct timeval tv;
	tv_ms(&tv, grace_ms);
	evtimer_add(s->grace_ev, &tv);
	log_info("sched.drain", "claiming stopped; letting running tasks finish",
	         LF_INT("tasks", s->running), LF_INT("grace_ms", grace_ms));
	event_active(s->drained_ev, EV_TIMEOUT, 0);
}

const char *scheduler_task_log(struct scheduler *s, const char *task_id, uint64_t from, size_t *len,
                               uint64_t *skipped, uint64_t *total)
{
	if (s == NULL)
		return NULL;
	struct stask *t = task_find(s, task_id);
	if (t == NULL) {
		TAILQ_FOREACH(t, &s->to_commit, link)
		if (strcmp(t->id, task_id) == 0)
			break;
	}
	if (t == NULL)
		return NULL;
	*total = t->log.total;
	return stage_log_ring_since(&t->log, from, len, skipped);
}

size_t scheduler_running(const struct scheduler *s)
{
	return s && s->running > 0 ? (size_t)s->running : 0;
}

void scheduler_free(struct scheduler *s)
{
	if (s == NULL)
		return;
	struct stask *t;
	while ((t = TAILQ_FIRST(&s->to_commit)) != NULL) {
		TAILQ_REMOVE(&s->to_commit, t, link);
		TAILQ_INSERT_TAIL(&s->tasks, t, link);
	}
	/* no callbacks from stask_free */
	struct event *kick = s->kick_ev, *drained = s->drained_ev;
	s->drained_ev = NULL;
	s->kick_ev = NULL;
	while ((t = TAILQ_FIRST(&s->tasks)) != NULL)
		stask_free(t);
	if (kick)
		event_free(kick);
	if (drained)
		event_free(drained);
	for (size_t i = 0; i < s->nrunners; i++) {
		module_runner_free(s->runners[i].r);
		if (s->runners[i].claim_q) {
			pg_pool_cancel(s->runners[i].claim_q);
			free(s->runners[i].claim_c);
		}
	}
	free(s->runners);
	for (size_t i = 0; i < 2; i++)
		pg_pool_cancel(s->adv_q[i].q);
	if (s->hb_q) {
		pg_pool_cancel(s->hb_q);
		hb_ctx_free(s->hb_c);
		s->hb_q = NULL;
	}
	event_sub_cancel(s->bus_sub);
	struct jput *jp;
	while ((jp = LIST_FIRST(&s->jputs)) != NULL)
		jput_free(jp);
	if (s->fin_batch)
		fin_batch_free(s->fin_batch);
	pg_pool_cancel(s->fin_q);
	if (s->fin_ev)
		event_free(s->fin_ev);
	pg_pool_cancel(s->hb_q);
	pg_pool_cancel(s->rescue_q);
	pg_pool_cancel(s->stuck_q);
	pg_pool_cancel(s->stats_q);
	pg_pool_cancel(s->progress_q);
	struct event *evs[] = {s->poll_ev,   s->hb_ev,      s->rescue_ev, s->progress_ev,
	                       s->commit_ev, s->advance_ev, s->nb_ev,     s->grace_ev};
	for (size_t i = 0; i < sizeof evs / sizeof evs[0]; i++)
		if (evs[i])
			event_free(evs[i]);
	for (size_t i = 0; i < s->nadv; i++)
		free(s->adv[i]);
	free(s->adv);
	free((char *)s->o.scratch_dir);
	free(s->hash_chunk);
	free(s);
}
