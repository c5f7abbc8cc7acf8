/* artifacts: manifest.json, pipeline.log and the stage log's memory
 * (artifacts.h). Pure. */
#include "engine/artifacts.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"

/* --- manifest.json ---------------------------------------------------------- */

static json_t *iso_or_null(int64_t us)
{
	if (us <= 0)
		return json_null();
	char ts[40];
	clock_fmt_rfc3339_us(ts, sizeof ts, us);
	return json_string(ts);
}

static json_t *str_or_null(const char *s)
{
	return s ? json_string(s) : json_null();
}

static json_t *file_entry(const struct manifest_file *f, bool intermediate)
{
	json_t *o = json_object();
	json_object_set_new(o, "name", str_or_null(f->name));
	json_object_set_new(o, "type",
	                    json_string(intermediate ? "intermediate"
	                                : f->type    ? f->type
	                                             : "file"));
	if (intermediate && f->type)
		json_object_set_new(o, "content_type", json_string(f->type));
	json_object_set_new(o, "path", str_or_null(f->path));
	json_object_set_new(o, "key", str_or_null(f->key));
	json_object_set_new(o, "size_bytes", json_integer(f->size_bytes));
	json_object_set_new(o, "format", str_or_null(f->format));
	json_object_set_new(o, "sha256", str_or_null(f->sha256));
	if (intermediate) {
		json_object_set_new(o, "retained", json_boolean(f->retained));
		json_object_set_new(o, "reason",
		                    json_string(f->reason ? f->reason
		                                : f->retained
		                                        ? "intermediate file kept in the store"
		                                        : "intermediate file, not kept"));
	}
	const char *k;
	json_t *v;
	json_object_foreach((json_t *)f->meta, k, v)
	{
		if (json_object_get(o, k) == NULL)
			json_object_set(o, k, v);
	}
	return o;
}

static json_t *files_array(const struct manifest_file *f, size_t n, bool intermediate)
{
	json_t *a = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(a, file_entry(&f[i], intermediate));
	return a;
}

const char *manifest_status(const char *task_status)
{
	if (task_status == NULL)
		return NULL;
	if (strcmp(task_status, "completed") == 0)
		return "success";
	if (strcmp(task_status, "failed") == 0 || strcmp(task_status, "cancelled") == 0 ||
	    strcmp(task_status, "skipped") == 0)
		return task_status;
	return NULL;
}

json_t *manifest_build(const struct manifest_in *m)
{
	json_t *o = json_object();
	json_object_set_new(o, "manifest_version", json_integer(MANIFEST_VERSION));
	json_object_set_new(o, "stage", json_string(m->stage));
	json_object_set_new(o, "stage_number", json_integer(m->stage_number));
	json_object_set_new(o, "job_id", json_string(m->job_id));
	json_object_set_new(o, "task_id", json_string(m->task_id));
	json_object_set_new(o, "attempt", json_integer(m->attempt));
	json_object_set_new(o, "module", str_or_null(m->module));
	json_object_set_new(o, "instance_id", str_or_null(m->instance_id));
	json_object_set_new(o, "timestamp", iso_or_null(m->started_us));
	json_object_set_new(o, "status", json_string(m->status));
	if (m->skip_reason)
		json_object_set_new(o, "skip_reason", json_string(m->skip_reason));
	bool done = m->completed_us > 0;
	json_object_set_new(o, "duration_seconds",
	                    done && m->started_us > 0
	                            ? json_real((double)(m->completed_us - m->started_us) / 1e6)
	                            : json_null());
	json_object_set_new(o, "completed_at", done ? iso_or_null(m->completed_us) : json_null());
	json_object_set_new(o, "inputs", files_array(m->inputs, m->ninputs, false));
	json_object_set_new(o, "outputs", files_array(m->outputs, m->noutputs, false));
	json_object_set_new(o, "intermediate_files",
	                    files_array(m->intermediates, m->nintermediates, true));
	json_object_set_new(o, "config", m->config ? json_deep_copy(m->config) : json_object());
	json_t *res = json_object();
	if (m->have_resources) {
		double wall = done && m->started_us > 0
		                      ? (double)(m->completed_us - m->started_us) / 1e6
		                      : 0;
		/* whole percent of one CPU, as the reference reports it */
		double pct = wall > 0 ? m->cpu_seconds / wall * 100.0 : 0;
		json_object_set_new(res, "cpu_percent",
		                    json_real((double)(int64_t)(pct * 10) / 10));
		json_object_set_new(
		        res, "memory_mb",
		        json_real((double)(int64_t)((double)m->max_rss_bytes / 1048576.0 * 10) /
		                  10));
		json_object_set_new(res, "cpu_seconds", json_real(m->cpu_seconds));
		json_object_set_new(res, "max_rss_bytes", json_integer(m->max_rss_bytes));
	}
	json_object_set_new(o, "resources", res);
	json_t *errs = json_array();
	if (m->error) {
		const char *code = json_string_value(json_object_get(m->error, "code"));
		const char *cat = json_string_value(json_object_get(m->error, "category"));
		const char *msg = json_string_value(json_object_get(m->error, "message"));
		json_t *detail = json_object_get(m->error, "detail");
		char *dtext = detail && !json_is_null(detail)
		                      ? json_dumps(detail,
		                                   JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY)
		                      : NULL;
		json_array_append_new(
		        errs, json_pack("{s:o, s:s, s:s, s:o, s:s, s:s}", "timestamp",
		                        iso_or_null(m->completed_us), "message", msg ? msg : "",
		                        "exception_type", code ? code : "error", "exception_detail",
		                        dtext ? json_string(dtext) : json_null(), "code",
		                        code ? code : "error", "category", cat ? cat : "unknown"));
		free(dtext);
	}
	json_object_set_new(o, "errors", errs);
	json_object_set_new(o, "warnings",
	                    m->warnings ? json_deep_copy(m->warnings) : json_array());
	return o;
}

json_t *manifest_skipped(const char *job_id, const json_t *task, int64_t skipped_us)
{
	struct manifest_in m = {
	        .job_id = job_id,
	        .task_id = json_string_value(json_object_get(task, "id")),
	        .stage = json_string_value(json_object_get(task, "stage")),
	        .module = json_string_value(json_object_get(task, "module")),
	        .stage_number = (int)json_integer_value(json_object_get(task, "stage_number")),
	        .attempt = 0,
	        .status = "skipped",
	        .skip_reason = json_string_value(json_object_get(task, "skip_reason")),
	        .started_us = skipped_us,
	        .completed_us = skipped_us,
	        .config = json_object_get(task, "params"),
	};
	if (m.task_id == NULL || m.stage == NULL)
		return NULL;
	return manifest_build(&m);
}

/* --- logs/pipeline.log ------------------------------------------------------ */

static const struct pipelog_stage *pl_stage(const struct pipelog_stage *st, size_t n,
                                            const char *name)
{
	for (size_t i = 0; name && i < n; i++)
		if (strcmp(st[i].name, name) == 0)
			return &st[i];
	return NULL;
}

static void pl_line(struct buf *out, int64_t ts_us, const char *level, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

static void pl_line(struct buf *out, int64_t ts_us, const char *level, const char *fmt, ...)
{
	char ts[32];
	clock_fmt_log_ms(ts, sizeof ts, ts_us);
	buf_printf(out, "[%s] [pipeline] [%s] ", ts, level);
	va_list ap;
	va_start(ap, fmt);
	buf_vprintf(out, fmt, ap);
	va_end(ap);
	buf_addc(out, '\n');
}

static const char *err_message(const json_t *data)
{
	const json_t *e = json_object_get(data, "error");
	const char *m = json_string_value(json_object_get(e, "message"));
	const char *c = json_string_value(json_object_get(e, "code"));
	return m && m[0] ? m : c ? c : "unknown error";
}

static double secs(const json_t *data)
{
	return (double)json_integer_value(json_object_get(data, "duration_ms")) / 1000.0;
}

void pipelog_render(const char *job_id, const char *pipeline, const json_t *events,
                    const struct pipelog_stage *stages, size_t nstages, struct buf *out)
{
	size_t i;
	const json_t *ev;
	int64_t started = 0;
	json_array_foreach((json_t *)events, i, ev)
	{
		int64_t ts = json_integer_value(json_object_get(ev, "ts_us"));
		const char *kind = json_string_value(json_object_get(ev, "kind"));
		const char *stage = json_string_value(json_object_get(ev, "stage"));
		const char *reason = json_string_value(json_object_get(ev, "reason"));
		const json_t *data = json_object_get(ev, "data");
		const struct pipelog_stage *ps = pl_stage(stages, nstages, stage);
		if (kind == NULL)
			continue;
		if (strcmp(kind, "job.lifecycle.enqueue") == 0) {
			pl_line(out, ts, "INFO", "Job %s (pipeline %s): QUEUED", job_id, pipeline);
		} else if (strcmp(kind, "job.lifecycle.start") == 0) {
			started = ts;
			pl_line(out, ts, "INFO", "Job %s: RUNNING", job_id);
		} else if (strcmp(kind, "job.lifecycle.complete") == 0) {
			pl_line(out, ts, "INFO", "Job %s: COMPLETED (%.1fs)", job_id,
			        started > 0 ? (double)(ts - started) / 1e6 : 0.0);
		} else if (strcmp(kind, "job.lifecycle.fail") == 0) {
			pl_line(out, ts, "ERROR", "Job %s: FAILED: %s", job_id,
			        reason ? reason : "stage_failed");
		} else if (strcmp(kind, "job.lifecycle.cancel") == 0) {
			pl_line(out, ts, "WARNING", "Job %s: CANCELLED (%s)", job_id,
			        reason ? reason : "cancelled");
		} else if (strcmp(kind, "job.lifecycle.retry") == 0) {
			const char *from = json_string_value(json_object_get(data, "from_stage"));
			pl_line(out, ts, "INFO", "Job %s: RETRY (attempt %d, from stage %s)",
			        job_id, (int)json_integer_value(json_object_get(data, "attempt")),
			        from ? from : "?");
		} else if (stage == NULL) {
			continue;
		} else if (strcmp(kind, "job.module.spawn") == 0) {
			pl_line(out, ts, "INFO", "Stage %s: STARTING (attempt %d)", stage,
			        (int)json_integer_value(json_object_get(data, "attempt")));
			pl_line(out, ts, "INFO", "Input: input.json");
			for (size_t k = 0; ps && k < ps->nneeds; k++) {
				const struct pipelog_stage *d =
				        pl_stage(stages, nstages, ps->needs[k]);
				if (d)
					pl_line(out, ts, "INFO", "Input: %02d_%s/output.json",
					        d->stage_number, d->name);
			}
		} else if (strcmp(kind, "job.module.complete") == 0) {
			if (ps) {
				pl_line(out, ts, "INFO", "Output: %02d_%s/output.json",
				        ps->stage_number, ps->name);
				size_t k;
				const json_t *f;
				json_array_foreach((json_t *)ps->files, k, f)
				{
					const char *key =
					        json_string_value(json_object_get(f, "key"));
					const char *rel = key ? strstr(key, "/") : NULL;
					/* <project>/<job>/NN_stage/x: drop two segments */
					rel = rel ? strstr(rel + 1, "/") : NULL;
					if (rel)
						pl_line(out, ts, "INFO", "Output: %s", rel + 1);
				}
			}
			pl_line(out, ts, "INFO", "Stage %s: COMPLETED (%.1fs)", stage, secs(data));
		} else if (strcmp(kind, "job.module.error") == 0 ||
		           strcmp(kind, "job.module.panic") == 0 ||
		           strcmp(kind, "job.module.timeout") == 0) {
			pl_line(out, ts, "ERROR", "Stage %s: FAILED: %s", stage, err_message(data));
		} else if (strcmp(kind, "job.module.retry") == 0) {
			pl_line(out, ts, "WARNING", "Stage %s: RETRY (%s): %s", stage,
			        reason ? reason : "retry", err_message(data));
		} else if (strcmp(kind, "job.stage.skipped") == 0) {
			pl_line(out, ts, "INFO", "Stage %s: SKIPPED (%s)", stage,
			        reason ? reason : "skipped");
		} else if (strcmp(kind, "job.stage.cancelled") == 0) {
			pl_line(out, ts, "WARNING", "Stage %s: CANCELLED (%s)", stage,
			        reason ? reason : "cancelled");
		} else if (strcmp(kind, "job.stage.reset") == 0) {
			pl_line(out, ts, "INFO", "Stage %s: RESET (%s)", stage,
			        reason ? reason : "retry");
		}
	}
}

/* --- The stage log in memory ------------------------------------------------ */

void stage_log_ring_init(struct stage_log_ring *r, size_t cap, size_t head)
{
	memset(r, 0, sizeof *r);
	r->cap = cap;
	r->head = head < cap / 2 ? head : cap / 2;
}

void stage_log_ring_free(struct stage_log_ring *r)
{
	buf_free(&r->b);
	memset(r, 0, sizeof *r);
}

/* Past cap: drop whole lines after the head until 3/4 of cap is left. */
static void ring_trim(struct stage_log_ring *r)
{
	struct buf *b = &r->b;
	if (r->marker_len == 0) {
		/* the head ends at a line end within r->head bytes */
		size_t h = r->head;
		while (h > 0 && b->data[h - 1] != '\n')
			h--;
		r->marker_at = h;
	}
	size_t tail = r->marker_at + r->marker_len;
	size_t target = r->cap / 4 * 3;
	size_t cut = tail;
	if (b->len > target)
		cut = tail + (b->len - target);
	while (cut < b->len && b->data[cut - 1] != '\n')
		cut++;
	if (cut > b->len)
		cut = b->len;
	r->dropped += cut - tail;
	char marker[96];
	int n = snprintf(marker, sizeof marker,
	                 "[... %llu bytes of the stage log dropped to stay in memory bounds ...]\n",
	                 (unsigned long long)r->dropped);
	size_t mlen = (size_t)n;
	size_t rest = b->len - cut;
	/* head | marker | b[cut..len) */
	buf_reserve(b, mlen);
	memmove(b->data + r->marker_at + mlen, b->data + cut, rest);
	memcpy(b->data + r->marker_at, marker, mlen);
	b->len = r->marker_at + mlen + rest;
	b->data[b->len] = '\0';
	r->marker_len = mlen;
}

void stage_log_ring_add(struct stage_log_ring *r, const char *line, size_t len)
{
	bool nl = len > 0 && line[len - 1] == '\n';
	/* a single line longer than the tail room keeps its end */
	size_t room = r->cap / 2;
	if (len > room) {
		r->dropped += len - room;
		r->total += len - room;
		line += len - room;
		len = room;
	}
	buf_add(&r->b, line, len);
	if (!nl)
		buf_addc(&r->b, '\n');
	r->total += len + (nl ? 0 : 1);
	if (r->b.len > r->cap)
		ring_trim(r);
}

const char *stage_log_ring_since(const struct stage_log_ring *r, uint64_t from, size_t *len,
                                 uint64_t *skipped)
{
	*skipped = 0;
	if (from >= r->total) {
		*len = 0;
		return r->b.data ? r->b.data + r->b.len : "";
	}
	if (r->marker_len == 0) {
		size_t at = (size_t)from < r->b.len ? (size_t)from : r->b.len;
		*len = r->b.len - at;
		return r->b.data + at;
	}
	uint64_t tail_logical = r->total - (r->b.len - (r->marker_at + r->marker_len));
	size_t at;
	if (from < r->marker_at) {
		at = (size_t)from; /* the rest of the head, the marker, the tail */
		*skipped = tail_logical - r->marker_at;
	} else if (from < tail_logical) {
		at = r->marker_at; /* the marker and the tail */
		*skipped = tail_logical - from;
	} else {
		at = r->marker_at + r->marker_len + (size_t)(from - tail_logical);
	}
	*len = r->b.len - at;
	return r->b.data + at;
}

void pipelog_render_tasks(const char *job_id, const char *pipeline, const json_t *events,
                          const json_t *tasks, struct buf *out)
{
	size_t n = json_array_size(tasks);
	struct pipelog_stage *st = calloc(n ? n : 1, sizeof *st);
	const char **needs = NULL;
	size_t nneeds = 0, used = 0;
	size_t i;
	const json_t *t;
	json_array_foreach((json_t *)tasks, i, t) nneeds +=
	        json_array_size(json_object_get(t, "depends_on"));
	needs = calloc(nneeds ? nneeds : 1, sizeof *needs);
	if (st == NULL || needs == NULL)
		abort();
	json_array_foreach((json_t *)tasks, i, t)
	{
		const json_t *deps = json_object_get(t, "depends_on");
		st[i].name = json_string_value(json_object_get(t, "stage"));
		if (st[i].name == NULL)
			st[i].name = "";
		st[i].stage_number = (int)json_integer_value(json_object_get(t, "stage_number"));
		st[i].needs = needs + used;
		st[i].files = json_object_get(t, "artifacts");
		size_t k;
		const json_t *d;
		json_array_foreach((json_t *)deps, k, d)
		{
			if (json_is_string(d))
				needs[used + st[i].nneeds++] = json_string_value(d);
		}
		used += st[i].nneeds;
	}
	pipelog_render(job_id, pipeline, events, st, n, out);
	free(needs);
	free(st);
}
