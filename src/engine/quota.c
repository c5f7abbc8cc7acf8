/* quota (quota.h). */
#include "engine/quota.h"

#include <event2/event.h>
#include <libpq-fe.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "core/clock.h"
#include "core/xmalloc.h"
#include "db/pool.h"

#define SQL_QUOTA_LIMITS                                                                         \
	"SELECT coalesce(p.max_queued_jobs, $2::bigint), coalesce(p.max_input_bytes, "           \
	"$3::bigint), CASE WHEN coalesce(p.max_queued_jobs, $2::bigint) > 0 THEN (SELECT "       \
	"count(*) FROM jobs j WHERE j.project_id = p.id AND j.status IN ('pending', 'queued')) " \
	"ELSE 0 END FROM projects p WHERE p.id = $1"

struct qproj {
	TAILQ_ENTRY(qproj) link; /* most recently used first */
	char id[64];
	double tokens;
	int64_t refilled_us;
	bool have_row;
	int64_t row_us; /* monotonic: when the row was read */
	int64_t max_queued, max_input;
};

struct quota {
	struct event_base *base;
	struct pg_pool *pool;
	struct quota_limits d;
	TAILQ_HEAD(qproj_list, qproj) projects;
	size_t nprojects;
	TAILQ_HEAD(, quota_op) ops;
};

struct quota_op {
	TAILQ_ENTRY(quota_op) link;
	struct quota *q;
	struct pg_pool_query *pq;
	struct event *now_ev; /* a verdict without I/O, delivered from the loop */
	char project[64];
	size_t body_bytes;
	struct quota_result r;
	quota_cb cb;
	void *arg;
};

struct quota *quota_new(struct event_base *base, struct pg_pool *pool,
                        const struct quota_limits *defaults)
{
	if (pool && !pg_pool_prepare(pool, "quota_limits", SQL_QUOTA_LIMITS, 3, NULL))
		return NULL;
	struct quota *q = xcalloc(1, sizeof *q);
	q->base = base;
	q->pool = pool;
	q->d = *defaults;
	TAILQ_INIT(&q->projects);
	TAILQ_INIT(&q->ops);
	return q;
}

static void op_free(struct quota_op *op)
{
	TAILQ_REMOVE(&op->q->ops, op, link);
	pg_pool_cancel(op->pq);
	if (op->now_ev)
		event_free(op->now_ev);
	free(op);
}

void quota_free(struct quota *q)
{
	if (q == NULL)
		return;
	struct quota_op *op;
	while ((op = TAILQ_FIRST(&q->ops)) != NULL)
		op_free(op);
	struct qproj *p;
	while ((p = TAILQ_FIRST(&q->projects)) != NULL) {
		TAILQ_REMOVE(&q->projects, p, link);
		free(p);
	}
	free(q);
}

/* The project's entry, made (and the oldest evicted) when missing. */
static struct qproj *proj(struct quota *q, const char *id, int64_t now_us)
{
	struct qproj *p;
	TAILQ_FOREACH(p, &q->projects, link)
	{
		if (strcmp(p->id, id) == 0) {
			TAILQ_REMOVE(&q->projects, p, link);
			TAILQ_INSERT_HEAD(&q->projects, p, link);
			return p;
		}
	}
	if (q->nprojects >= QUOTA_PROJECTS_MAX) {
		p = TAILQ_LAST(&q->projects, qproj_list);
		TAILQ_REMOVE(&q->projects, p, link);
		free(p);
		q->nprojects--;
	}
	p = xcalloc(1, sizeof *p);
	snprintf(p->id, sizeof p->id, "%s", id);
	p->tokens = -1; /* full on first use */
	p->refilled_us = now_us;
	TAILQ_INSERT_HEAD(&q->projects, p, link);
	q->nprojects++;
	return p;
}

void quota_take(struct quota *q, const char *project, int64_t now_us, struct quota_result *out)
{
	memset(out, 0, sizeof *out);
	double rate = q->d.submissions_per_second;
	if (rate <= 0)
		return;
	struct qproj *p = proj(q, project, now_us);
	double burst = rate < 1 ? 1 : rate;
	if (p->tokens < 0) {
		p->tokens = burst;
	} else {
		double add = (double)(now_us - p->refilled_us) / 1e6 * rate;
		p->tokens = p->tokens + add > burst ? burst : p->tokens + add;
	}
	p->refilled_us = now_us;
	if (p->tokens >= 1) {
		p->tokens -= 1;
		return;
	}
	out->verdict = QUOTA_RATE;
	out->limit = "submissions_per_second";
	out->rate = rate;
	out->value = (int64_t)rate;
	out->usage = (int64_t)ceil(rate); /* the bucket is empty: the rate is in use */
	out->retry_after_s = (int64_t)ceil((1 - p->tokens) / rate);
	if (out->retry_after_s < 1)
		out->retry_after_s = 1;
}

/* The verdict from a project's limits and usage. */
static void judge(const struct quota_op *op, int64_t max_queued, int64_t max_input, int64_t queued,
                  struct quota_result *r)
{
	memset(r, 0, sizeof *r);
	if (max_input > 0 && (int64_t)op->body_bytes > max_input) {
		r->verdict = QUOTA_INPUT_TOO_LARGE;
		r->limit = "max_input_bytes";
		r->value = max_input;
		r->usage = (int64_t)op->body_bytes;
	} else if (max_queued > 0 && queued >= max_queued) {
		r->verdict = QUOTA_QUEUED_FULL;
		r->limit = "max_queued_jobs";
		r->value = max_queued;
		r->usage = queued;
	}
}

static void now_cb(evutil_socket_t fd, short what, void *arg)
{
	struct quota_op *op = arg;
	(void)fd;
	(void)what;
	quota_cb cb = op->cb;
	void *a = op->arg;
	struct quota_result r = op->r;
	op_free(op);
	cb(&r, NULL, a);
}

static bool limits_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct quota_op *op = arg;
	op->pq = NULL;
	struct quota_result r = {0};
	if (!err && PQntuples(res) == 0) {
		r.verdict = QUOTA_NO_PROJECT;
	} else if (!err) {
		int64_t mq = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
		int64_t mi = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
		int64_t n = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
		struct qproj *p = proj(op->q, op->project, clock_mono_us());
		p->have_row = true;
		p->row_us = clock_mono_us();
		p->max_queued = mq;
		p->max_input = mi;
		judge(op, mq, mi, n, &r);
	}
	quota_cb cb = op->cb;
	void *a = op->arg;
	op_free(op);
	cb(&r, err, a);
	return false;
}

struct quota_op *quota_check(struct quota *q, const char *project, size_t body_bytes, quota_cb cb,
                             void *arg)
{
	struct quota_op *op = xcalloc(1, sizeof *op);
	op->q = q;
	op->cb = cb;
	op->arg = arg;
	op->body_bytes = body_bytes;
	snprintf(op->project, sizeof op->project, "%s", project);
	TAILQ_INSERT_TAIL(&q->ops, op, link);
	int64_t now = clock_mono_us();
	struct qproj *p = proj(q, project, now);
	/* A fresh row without a queued limit decides without a query. */
	if (q->pool == NULL ||
	    (p->have_row && now - p->row_us < QUOTA_CACHE_MS * 1000 && p->max_queued <= 0)) {
		judge(op, q->pool ? p->max_queued : q->d.max_queued_jobs,
		      q->pool ? p->max_input : q->d.max_input_bytes, 0, &op->r);
		op->now_ev = event_new(q->base, -1, 0, now_cb, op);
		event_active(op->now_ev, EV_TIMEOUT, 0);
		return op;
	}
	char mq[24], mi[24];
	snprintf(mq, sizeof mq, "%lld", (long long)q->d.max_queued_jobs);
	snprintf(mi, sizeof mi, "%lld", (long long)q->d.max_input_bytes);
	const char *v[3] = {project, mq, mi};
	op->pq = pg_pool_query_prepared(q->pool, "quota_limits", 3, v, limits_cb, op);
	return op;
}

void quota_op_cancel(struct quota_op *op)
{
	if (op)
		op_free(op);
}
