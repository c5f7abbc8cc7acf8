/* artifacts: what the engine writes next to a stage's files in the store
 * (ARCHITECTURE.md §6), built by pure functions so tests can check them
 * byte for byte:
 *   - manifest.json (reference/logging-architecture.md; the JSON Schema is
 *     proto/manifest.schema.json): written `running` when the module starts,
 *     finalized when the attempt ends;
 *   - logs/pipeline.log: the job's stage starts, inputs, outputs,
 *     completions with durations and failures, rendered from its job_events
 *     rows in the reference's line shape, so its grep recipes work;
 *   - the stage log's bounded memory (struct stage_log_ring).
 * No I/O here: scheduler.c stores what these build, api_jobs.c serves it. */
#ifndef SL_ENGINE_ARTIFACTS_H
#define SL_ENGINE_ARTIFACTS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

/* --- manifest.json ---------------------------------------------------------- */

#define MANIFEST_VERSION 1

/* One file the manifest names. path is relative to the job's root in the
 * store ("02_normalize/speech.wav", "input.json"); key is the full store key
 * (NULL for an intermediate file that was not kept). sha256 is 64 lowercase
 * hex or NULL (not hashed yet: a running manifest). meta (an object, may be
 * NULL) adds the module's own fields (sample_rate, ...) without replacing
 * the standard ones. */
struct manifest_file {
	const char *name, *type, *format, *path, *key, *sha256, *reason;
	int64_t size_bytes;
	bool retained;
	const json_t *meta;
};

struct manifest_in {
	const char *job_id, *task_id, *stage, *module, *instance_id;
	int stage_number, attempt;
	const char *status; /* running | success | failed | skipped | cancelled */
	const char *skip_reason; /* skipped: why (dependency_failed, reused) */
	int64_t started_us, completed_us; /* completed_us 0 while running */
	const struct manifest_file *inputs, *outputs, *intermediates;
	size_t ninputs, noutputs, nintermediates;
	const json_t *config; /* the stage's params; NULL = {} */
	/* resources: only when have_resources (a finished module run) */
	bool have_resources;
	double cpu_seconds;
	int64_t max_rss_bytes;
	const json_t *error; /* the typed error {code, category, message, detail}, or NULL */
	const json_t *warnings; /* [{timestamp, message}], or NULL */
};

/* The manifest object (a new reference). Keys in a fixed order. */
json_t *manifest_build(const struct manifest_in *m);
/* The manifest status of a finished task status ("completed" -> "success",
 * "failed", "cancelled", "skipped"); NULL for any other. */
const char *manifest_status(const char *task_status);

/* --- logs/pipeline.log ------------------------------------------------------ */

/* One stage as pipeline.log names it: its number (for "NN_stage/" paths),
 * what it needs and the files it stored (tasks.artifacts: [{name, key,
 * ...}]), borrowed. */
struct pipelog_stage {
	const char *name;
	int stage_number;
	const char *const *needs;
	size_t nneeds;
	const json_t *files;
};

/* Appends the lines of events to out: events is an array of job_events rows
 * as objects {ts_us (Unix µs), kind, stage, reason, data}, in seq
 * order. The job's own lines first mention job_id and pipeline. Unknown
 * kinds are skipped. */
void pipelog_render(const char *job_id, const char *pipeline, const json_t *events,
                    const struct pipelog_stage *stages, size_t nstages, struct buf *out);

/* SQL expressions (JSON text) reading what pipelog_render_tasks() takes for
 * the job whose id is the SQL expression J: its events and its tasks. */
#define PIPELOG_EVENTS_SQL(J)                                                                  \
	"(SELECT coalesce(json_agg(json_build_object('ts_us', (extract(epoch from e.ts) * "    \
	"1e6)::bigint, 'kind', e.kind, 'stage', e.stage, 'reason', e.reason, 'data', e.data) " \
	"ORDER BY e.seq), '[]') FROM job_events e WHERE e.job_id = " J ")::text"
#define PIPELOG_TASKS_SQL(J)                                                                 \
	"(SELECT coalesce(json_agg(json_build_object('stage', t.stage, 'stage_number', "     \
	"t.stage_number, 'depends_on', t.depends_on, 'artifacts', t.artifacts, 'id', t.id, " \
	"'status', t.status, 'attempt', t.attempt, 'skip_reason', t.skip_reason, 'module', " \
	"t.module, 'params', t.params) ORDER BY t.stage_number), '[]') FROM tasks t WHERE "  \
	"t.job_id = " J ")::text"

/* As pipelog_render() with the stages read from tasks rows: an array of
 * {stage, stage_number, depends_on: [names], artifacts: [...] or null, ...}
 * (PIPELOG_TASKS_SQL). */
void pipelog_render_tasks(const char *job_id, const char *pipeline, const json_t *events,
                          const json_t *tasks, struct buf *out);

/* The manifest of a stage that never ran (status skipped, attempt 0), from
 * its PIPELOG_TASKS_SQL row; skipped_us is when it was skipped. */
json_t *manifest_skipped(const char *job_id, const json_t *task, int64_t skipped_us);

/* --- The stage log in memory ------------------------------------------------ *
 * Bounded: the first `head` bytes are kept whole (the stage's start, its
 * inputs); past `cap`, the oldest lines after the head go, in whole lines,
 * and one marker line says how many bytes were dropped. `total` counts every
 * byte ever appended, so a reader following at a logical offset can tell what
 * it missed. */
struct stage_log_ring {
	struct buf b; /* the text: head + marker (once dropped) + tail */
	size_t cap, head;
	uint64_t total; /* bytes ever appended */
	uint64_t dropped; /* bytes dropped from the middle */
	size_t marker_at, marker_len; /* where the marker line sits in b (len 0: none) */
};

void stage_log_ring_init(struct stage_log_ring *r, size_t cap, size_t head);
void stage_log_ring_free(struct stage_log_ring *r);
/* Appends one line (a '\n' is added when line does not end with one). */
void stage_log_ring_add(struct stage_log_ring *r, const char *line, size_t len);
/* The bytes a reader at logical offset `from` has not seen: *skipped gets how
 * many logical bytes in between are gone (0 normally). Returns a pointer
 * into r->b valid until the next add, and its length in *len. */
const char *stage_log_ring_since(const struct stage_log_ring *r, uint64_t from, size_t *len,
                                 uint64_t *skipped);

#endif
