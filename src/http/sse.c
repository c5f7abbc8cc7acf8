/* Job event streams (sse.h). A stream walks
 *   OPENING (auth, the job read) -> REPLAY (job_events after the resume
 *   point, in batches) -> SNAPSHOT (a fresh read; if events landed since
 *   the replay, replay again) -> LIVE (bus events in seq order; a gap or
 *   another instance's NOTIFY fetches the missing ones) -> closed
 * and writes nothing twice and skips nothing: the job's seq is assigned
 * under its row lock, so seq order is commit order. */
#include "http/sse.h"

#include <event2/event.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/apikey.h"
#include "core/app.h"
#include "core/buf.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/xmalloc.h"
#include "db/pg.h"
#include "engine/engine.h"
#include "engine/events.h"
#include "engine/job.h"
#include "http/api.h"
#include "http/auth.h"
#include "http/outstream.h"
#include "http/server.h"

enum sse_state { SSE_OPENING, SSE_REPLAY, SSE_SNAPSHOT, SSE_LIVE };

/* Another instance changed a job some stream follows: one fetch for all of
 * that job's streams, a moment later (our own commits' NOTIFYs come back
 * too, sometimes before their results: by then the bus has told us). */
struct job_note {
	TAILQ_ENTRY(job_note) link;
	struct sse_hub *hub;
	char job_id[ID_UUID_LEN + 1];
	char project[AUTH_PROJECT_MAX + 1];
	int64_t rev;
	struct job_op *op;
	bool again; /* news came while the fetch was in flight */
};

#define SSE_NOTE_DELAY_MS 30

struct sse_hub {
	struct api_ctx *ctx;
	struct event_base *base;
	struct event_sub *sub;
	struct event *hb_ev;
	TAILQ_HEAD(, sse_stream) streams;
	size_t n;
	bool draining;
	TAILQ_HEAD(, job_note) notes;
	struct event *note_ev, *poke_ev;
	bool poke_armed;
};

struct sse_stream {
	TAILQ_ENTRY(sse_stream) link;
	struct sse_hub *hub;
	bool project_stream; /* GET /v1/events: every job of the project */
	char cursor_txid[24]; /* project streams: the resume point (txid, id) */
	int64_t cursor_id;
	struct event *recheck_ev; /* events held back by a running transaction */
	struct http_req *req; /* OPENING only */
	struct outstream *os; /* from the head on (NULL: OPENING) */
	enum sse_state state;
	char job_id[ID_UUID_LEN + 1];
	char project[AUTH_PROJECT_MAX + 1];
	int64_t last_seq; /* the last durable event written */
	int64_t last_rev; /* the job revision that event (or the snapshot) showed */
	int64_t resume_from; /* -1: none asked; else Last-Event-ID */
	bool bad_resume; /* a Last-Event-ID that is not a number */
	bool logs;
	bool catchup; /* a fetch of missed events is in flight or wanted */
	bool refetch; /* a NOTIFY came while a fetch was in flight */
	struct job_op *op;
	json_t *snapshot_job; /* OPENING: the job as first read */
};

static void stream_close(struct sse_stream *st, const char *why);
static void stream_fetch(struct sse_stream *st);
static void note_request(struct sse_hub *hub, const char *job_id, const char *project, int64_t rev);

/* --- Writing ------------------------------------------------------------ */

/* Writes through; only what the socket refuses is queued, up to the bound.
 * False when the stream is gone (closed here). */
static bool stream_send(struct sse_stream *st, const char *data, size_t len)
{
	if (st->os == NULL)
		return false;
	if (outstream_write(st->os, data, len))
		return true;
	if (outstream_overflowed(st->os)) {
		metric_inc(metrics_default_get(M_SSE_CLIENTS_DROPPED_TOTAL), 1, "slow");
		log_warn("sse.dropped", "a client fell behind; its stream is closed",
		         LF_STR("job_id", st->job_id),
		         LF_UINT("pending_bytes", outstream_pending(st->os)));
		stream_close(st, NULL);
	} else {
		stream_close(st, "write_error");
	}
	return false;
}

/* One SSE event. data is one line (compact JSON escapes CR, LF and NUL). */
/* The bytes of one SSE event; built once and written to every stream. */
static void frame_event(struct buf *b, const char *type, int64_t id, const char *data)
{
	if (id > 0)
		buf_printf(b, "id: %lld\n", (long long)id);
	buf_printf(b, "event: %s\ndata: ", type);
	size_t start = b->len;
	buf_adds(b, data);
	/* defence in depth: a raw line break would end the event early */
	for (size_t i = start; i < b->len; i++)
		if (b->data[i] == '\r' || b->data[i] == '\n')
			b->data[i] = ' ';
	buf_adds(b, "\n\n");
}

static bool stream_event(struct sse_stream *st, const char *type, int64_t id, const char *data)
{
	struct buf b = BUF_INIT;
	frame_event(&b, type, id, data);
	bool ok = stream_send(st, b.data, b.len);
	buf_free(&b);
	if (ok)
		metric_inc(metrics_default_get(M_SSE_EVENTS_SENT_TOTAL), 1, type);
	return ok;
}

static bool stream_event_json(struct sse_stream *st, const char *type, int64_t id, const json_t *o)
{
	char *text = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
	bool ok = text && stream_event(st, type, id, text);
	free(text);
	return ok;
}

static bool terminal_lifecycle(const char *kind, const char *status_to)
{
	return kind && status_to && strncmp(kind, "job.lifecycle.", 14) == 0 &&
	       (strcmp(status_to, "completed") == 0 || strcmp(status_to, "failed") == 0 ||
	        strcmp(status_to, "cancelled") == 0);
}

/* Writes `end` and closes. Called only on an open stream (something was
 * just written to it), so a failed write means the stream is already gone:
 * stream_send closed it. */
static void stream_end(struct sse_stream *st, const char *status)
{
	json_t *o = json_pack("{s:s, s:s, s:I}", "job_id", st->job_id, "status", status, "last_seq",
	                      (json_int_t)st->last_seq);
	bool open = stream_event_json(st, "end", 0, o);
	json_decref(o);
	if (open)
		stream_close(st, NULL);
}

/* --- Lifecycle ------------------------------------------------------------ */

/* The client left (EOF, reset) or a queued write failed. */
static void stream_gone_cb(struct outstream *os, void *arg)
{
	(void)os;
	stream_close(arg, NULL);
}

static void stream_free(struct sse_stream *st)
{
	job_op_cancel(st->op);
	if (st->recheck_ev)
		event_free(st->recheck_ev);
	outstream_free(st->os);
	json_decref(st->snapshot_job);
	free(st);
}

static void stream_close(struct sse_stream *st, const char *why)
{
	struct sse_hub *hub = st->hub;
	if (why)
		log_debug("sse.close", why, LF_STR("job_id", st->job_id));
	TAILQ_REMOVE(&hub->streams, st, link);
	hub->n--;
	metric_set(metrics_default_get(M_SSE_STREAMS_OPEN), (double)hub->n);
	stream_free(st);
}

/* --- Replay, snapshot, live --------------------------------------------- */

static void stream_snapshot_cb(json_t *job, int64_t rev, const struct pg_error *err, void *arg);

/* Writes fetched events with seq > last_seq, in order; false when the
 * stream closed (end or error). */
static bool stream_write_events(struct sse_stream *st, const json_t *events)
{
	size_t i;
	json_t *ev;
	json_array_foreach(events, i, ev)
	{
		int64_t seq = json_integer_value(json_object_get(ev, "seq"));
		if (seq <= st->last_seq)
			continue;
		const char *kind = json_string_value(json_object_get(ev, "kind"));
		if (!stream_event_json(st, event_sse_type(kind), seq, ev))
			return false;
		st->last_seq = seq;
		if (st->state == SSE_LIVE &&
		    terminal_lifecycle(kind, json_string_value(json_object_get(ev, "status_to")))) {
			stream_end(st, json_string_value(json_object_get(ev, "status_to")));
			return false;
		}
	}
	return true;
}

static void stream_events_cb(json_t *events, const struct pg_error *err, void *arg)
{
	struct sse_stream *st = arg;
	st->op = NULL;
	if (err || events == NULL) {
		json_decref(events);
		stream_close(st, err ? err->message : "job gone");
		return;
	}
	size_t n = json_array_size(events);
	bool open = stream_write_events(st, events);
	json_decref(events);
	if (!open)
		return;
	if (n == SSE_REPLAY_BATCH) { /* more to come */
		stream_fetch(st);
		return;
	}
	if (st->state == SSE_REPLAY) {
		/* the snapshot, read after the replay */
		st->state = SSE_SNAPSHOT;
		st->op = job_get(st->hub->ctx->engine, st->project, st->job_id, stream_snapshot_cb,
		                 st);
		return;
	}
	st->catchup = false;
	if (st->refetch) {
		st->refetch = false;
		stream_fetch(st);
	}
}

static void stream_fetch(struct sse_stream *st)
{
	st->catchup = true;
	st->op = job_events_after(st->hub->ctx->engine, st->project, st->job_id, st->last_seq,
	                          SSE_REPLAY_BATCH, stream_events_cb, st);
}

static void stream_snapshot_cb(json_t *job, int64_t rev, const struct pg_error *err, void *arg)
{
	struct sse_stream *st = arg;
	st->op = NULL;
	if (err || job == NULL) {
		json_decref(job);
		stream_close(st, err ? err->message : "job gone");
		return;
	}
	int64_t seq = json_integer_value(json_object_get(job, "event_seq"));
	if (seq > st->last_seq) {
		/* events landed during the replay: send them before the snapshot */
		json_decref(job);
		st->state = SSE_REPLAY;
		stream_fetch(st);
		return;
	}
	st->last_rev = rev;
	if (!stream_event_json(st, "snapshot", 0, job)) {
		json_decref(job);
		return;
	}
	const char *status = json_string_value(json_object_get(job, "status"));
	bool done = status && (strcmp(status, "completed") == 0 || strcmp(status, "failed") == 0 ||
	                       strcmp(status, "cancelled") == 0);
	if (done) {
		char s[16];
		snprintf(s, sizeof s, "%s", status);
		json_decref(job);
		stream_end(st, s);
		return;
	}
	json_decref(job);
	st->state = SSE_LIVE;
	st->catchup = false;
	if (st->refetch) { /* a NOTIFY or a gap came while we were reading */
		st->refetch = false;
		stream_fetch(st);
	}
}

/* The socket is ours (fd from http_req_take_stream; < 0: the client left
 * before the head): a modest kernel buffer (what a client has not read
 * stays bounded in the kernel too, and SSE_MAX_PENDING_BYTES is reached soon
 * enough to drop a client that stopped reading), then the retry hint. False
 * when the stream closed. */
static bool stream_start_io(struct sse_stream *st, int fd)
{
	if (fd < 0) {
		stream_close(st, "client gone before the head");
		return false;
	}
	int sndbuf = SSE_SNDBUF_BYTES;
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
	st->os = outstream_new(st->hub->base, fd, SSE_MAX_PENDING_BYTES, NULL, stream_gone_cb, st);
	char hello[32];
	int n = snprintf(hello, sizeof hello, "retry: %d\n\n", SSE_RETRY_MS);
	return stream_send(st, hello, (size_t)n);
}

/* --- The project stream ---------------------------------------------------- */

static void project_fetch(struct sse_stream *st);

static void project_recheck_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	project_fetch(arg);
}

/* Something may have committed: fetch, now or after the fetch in flight. */
static void project_poke(struct sse_stream *st)
{
	if (st->state != SSE_LIVE)
		return;
	if (st->catchup) {
		st->refetch = true;
		return;
	}
	project_fetch(st);
}

static void project_events_cb(json_t *page, const struct pg_error *err, void *arg)
{
	struct sse_stream *st = arg;
	st->op = NULL;
	st->catchup = false;
	if (err || page == NULL) {
		json_decref(page);
		stream_close(st, err ? err->message : "no answer");
		return;
	}
	json_t *events = json_object_get(page, "events");
	size_t i;
	json_t *ev;
	json_array_foreach(events, i, ev)
	{
		const char *kind = json_string_value(json_object_get(ev, "kind"));
		int64_t id = json_integer_value(json_object_get(ev, "id"));
		snprintf(st->cursor_txid, sizeof st->cursor_txid, "%s",
		         json_string_value(json_object_get(ev, "txid")));
		st->cursor_id = id;
		json_object_del(ev, "txid");
		if (!stream_event_json(st, event_sse_type(kind), id, ev)) {
			json_decref(page);
			return;
		}
	}
	bool more = json_array_size(events) == SSE_REPLAY_BATCH;
	bool held = json_integer_value(json_object_get(page, "held_back")) > 0;
	json_decref(page);
	if (more || st->refetch) {
		st->refetch = false;
		project_fetch(st);
	} else if (held) {
		/* a running transaction holds newer events back: look again soon */
		if (st->recheck_ev == NULL)
			st->recheck_ev = evtimer_new(st->hub->base, project_recheck_cb, st);
		struct timeval tv = {0, 20000};
		evtimer_add(st->recheck_ev, &tv);
	}
}

static void project_fetch(struct sse_stream *st)
{
	if (st->catchup || st->os == NULL)
		return;
	st->catchup = true;
	st->op = project_events_after(st->hub->ctx->engine, st->project, st->cursor_txid,
	                              st->cursor_id, SSE_REPLAY_BATCH, project_events_cb, st);
}

static void project_open(struct sse_stream *st, int fd)
{
	if (!stream_start_io(st, fd))
		return;
	if (st->bad_resume) {
		json_t *o = json_pack("{s:s}", "reason",
		                      st->resume_from == -2 ? "unknown_event_id"
		                                            : "invalid_last_event_id");
		bool ok = stream_event_json(st, "reset", 0, o);
		json_decref(o);
		if (!ok)
			return;
	}
	/* replay from the resume point (nothing when it is "now"), then live */
	st->state = SSE_LIVE;
	project_fetch(st);
}

/* The cursor is set: answer with the head and start. */
static void project_take(struct sse_stream *st)
{
	int fd = http_req_take_stream(st->req, "text/event-stream");
	st->req = NULL;
	project_open(st, fd);
}

static void project_refuse(struct sse_stream *st)
{
	struct http_req *req = st->req;
	st->req = NULL;
	http_set_header(req, "Retry-After", "1");
	http_reply_problem(req, 503, "db-unavailable", "Database unavailable",
	                   "the database is unavailable; retry shortly", NULL);
	stream_close(st, NULL);
}

/* No resume point: the stream starts at "now", the oldest running
 * transaction, fixed before the head is sent — whatever commits after the
 * client has the head reaches it. */
static void project_now_cb(json_t *page, const struct pg_error *err, void *arg)
{
	struct sse_stream *st = arg;
	st->op = NULL;
	const char *xmin = json_string_value(json_object_get(page, "xmin"));
	if (err || xmin == NULL) {
		json_decref(page);
		project_refuse(st);
		return;
	}
	snprintf(st->cursor_txid, sizeof st->cursor_txid, "%s", xmin);
	st->cursor_id = 0;
	json_decref(page);
	project_take(st);
}

static void project_start_now(struct sse_stream *st)
{
	st->op = project_events_after(st->hub->ctx->engine, st->project, "0", 0, 0, project_now_cb,
	                              st);
}

static void project_txid_cb(json_t *txid, const struct pg_error *err, void *arg)
{
	struct sse_stream *st = arg;
	st->op = NULL;
	if (err) {
		json_decref(txid);
		project_refuse(st);
		return;
	}
	if (txid == NULL) {
		st->bad_resume = true; /* an id this project never had: from now */
		st->resume_from = -2;
		project_start_now(st);
		return;
	}
	snprintf(st->cursor_txid, sizeof st->cursor_txid, "%s", json_string_value(txid));
	st->cursor_id = st->resume_from;
	json_decref(txid);
	project_take(st);
}

/* Live events of this instance, from the bus. */
static void hub_bus_cb(const struct sl_event *ev, void *arg)
{
	struct sse_hub *hub = arg;
	struct buf frame = BUF_INIT; /* the event's bytes, framed once for every stream */
	size_t sent = 0;
	if (strcmp(ev->kind, "rev") == 0) { /* a revision without an event */
		struct sse_stream *st;
		TAILQ_FOREACH(st, &hub->streams, link)
		{
			if (!st->project_stream && strcmp(st->job_id, ev->job_id) == 0 &&
			    ev->rev > st->last_rev)
				st->last_rev = ev->rev;
		}
		return;
	}
	const char *type = event_sse_type(ev->kind);
	bool durable = ev->seq > 0;
	struct sse_stream *st, *next;
	for (st = TAILQ_FIRST(&hub->streams); st; st = next) {
		next = TAILQ_NEXT(st, link);
		if (st->project_stream) {
			if (durable && strcmp(st->project, ev->project_id) == 0)
				project_poke(st);
			continue;
		}
		if (strcmp(st->job_id, ev->job_id) != 0)
			continue;
		if (!durable) {
			if (st->state != SSE_LIVE || (strcmp(ev->kind, "log") == 0 && !st->logs))
				continue;
		} else if (st->state != SSE_LIVE || st->catchup) {
			st->refetch = true; /* fetched with the rest once live */
			continue;
		} else if (ev->seq <= st->last_seq) {
			continue;
		} else if (ev->seq != st->last_seq + 1) {
			/* a gap: another instance's events come first */
			note_request(hub, st->job_id, st->project, ev->rev);
			continue;
		}
		if (frame.data == NULL) {
			json_t *o = event_to_json(ev);
			char *text = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
			json_decref(o);
			frame_event(&frame, type, durable ? ev->seq : 0, text ? text : "{}");
			free(text);
		}
		if (!stream_send(st, frame.data, frame.len))
			continue;
		sent++;
		if (durable) {
			st->last_seq = ev->seq;
			if (ev->rev > st->last_rev)
				st->last_rev = ev->rev;
			if (terminal_lifecycle(ev->kind, ev->status_to))
				stream_end(st, ev->status_to);
		}
	}
	if (sent)
		metric_inc(metrics_default_get(M_SSE_EVENTS_SENT_TOTAL), (double)sent, type);
	buf_free(&frame);
}

static struct job_note *note_find(struct sse_hub *hub, const char *job_id)
{
	struct job_note *n;
	TAILQ_FOREACH(n, &hub->notes, link)
	if (strcmp(n->job_id, job_id) == 0)
		return n;
	return NULL;
}

static void note_free(struct job_note *n)
{
	TAILQ_REMOVE(&n->hub->notes, n, link);
	job_op_cancel(n->op);
	free(n);
}

static void note_fetch(struct job_note *n);

/* The events another instance committed: to every live stream of the job,
 * each from where it is. */
static void note_events_cb(json_t *events, const struct pg_error *err, void *arg)
{
	struct job_note *n = arg;
	struct sse_hub *hub = n->hub;
	n->op = NULL;
	struct sse_stream *st, *next;
	for (st = TAILQ_FIRST(&hub->streams); st; st = next) {
		next = TAILQ_NEXT(st, link);
		if (st->project_stream || strcmp(st->job_id, n->job_id) != 0)
			continue;
		if (err || st->state != SSE_LIVE || st->catchup) {
			st->refetch = true; /* its own fetch brings it up to date */
			if (st->state == SSE_LIVE && !st->catchup)
				stream_fetch(st);
			continue;
		}
		if (n->rev > st->last_rev)
			st->last_rev = n->rev;
		stream_write_events(st, events);
	}
	bool more = json_array_size(events) == SSE_REPLAY_BATCH;
	json_decref(events);
	if (more || n->again) {
		n->again = false;
		note_fetch(n);
		return;
	}
	note_free(n);
}

static void note_fetch(struct job_note *n)
{
	struct sse_hub *hub = n->hub;
	int64_t from = -1;
	struct sse_stream *st;
	TAILQ_FOREACH(st, &hub->streams, link)
	{
		if (st->project_stream || strcmp(st->job_id, n->job_id) != 0)
			continue;
		if (st->state == SSE_LIVE && !st->catchup && st->last_rev < n->rev &&
		    (from < 0 || st->last_seq < from))
			from = st->last_seq;
	}
	if (from < 0) { /* every stream saw it already (the bus), or none is live */
		note_free(n);
		return;
	}
	n->op = job_events_after(hub->ctx->engine, n->project, n->job_id, from, SSE_REPLAY_BATCH,
	                         note_events_cb, n);
}

/* Asks for one shared fetch of the job's events, a moment from now. */
static void note_request(struct sse_hub *hub, const char *job_id, const char *project, int64_t rev)
{
	struct job_note *n = note_find(hub, job_id);
	if (n == NULL) {
		n = xcalloc(1, sizeof *n);
		n->hub = hub;
		snprintf(n->job_id, sizeof n->job_id, "%s", job_id);
		snprintf(n->project, sizeof n->project, "%s", project);
		TAILQ_INSERT_TAIL(&hub->notes, n, link);
	} else if (n->op) {
		n->again = true;
	}
	if (rev > n->rev)
		n->rev = rev;
	if (!evtimer_pending(hub->note_ev, NULL)) {
		struct timeval delay = {0, SSE_NOTE_DELAY_MS * 1000};
		evtimer_add(hub->note_ev, &delay);
	}
}

static void note_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sse_hub *hub = arg;
	(void)fd;
	(void)what;
	struct job_note *n, *next;
	for (n = TAILQ_FIRST(&hub->notes); n; n = next) {
		next = TAILQ_NEXT(n, link);
		if (n->op == NULL)
			note_fetch(n);
	}
}

static void poke_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sse_hub *hub = arg;
	(void)fd;
	(void)what;
	hub->poke_armed = false;
	struct sse_stream *st, *next;
	for (st = TAILQ_FIRST(&hub->streams); st; st = next) {
		next = TAILQ_NEXT(st, link);
		if (st->project_stream)
			project_poke(st);
	}
}

void sse_hub_on_job_notify(struct sse_hub *hub, const char *payload)
{
	if (hub == NULL || payload == NULL || strlen(payload) < ID_UUID_LEN + 2)
		return;
	int64_t rev = strtoll(payload + ID_UUID_LEN + 1, NULL, 10);
	char job_id[ID_UUID_LEN + 1];
	memcpy(job_id, payload, ID_UUID_LEN);
	job_id[ID_UUID_LEN] = '\0';
	struct timeval delay = {0, SSE_NOTE_DELAY_MS * 1000};
	bool project_streams = false;
	const char *project = NULL;
	struct sse_stream *st;
	TAILQ_FOREACH(st, &hub->streams, link)
	{
		if (st->project_stream)
			project_streams = true;
		else if (strcmp(st->job_id, job_id) == 0 && rev > st->last_rev)
			project = st->project;
	}
	if (project_streams && !hub->poke_armed) {
		/* the payload does not say whose job it is: every project
		 * stream looks, once per moment */
		hub->poke_armed = true;
		evtimer_add(hub->poke_ev, &delay);
	}
	if (project == NULL)
		return; /* no stream of this job, or all have seen it */
	note_request(hub, job_id, project, rev);
}

static void hub_heartbeat_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sse_hub *hub = arg;
	(void)fd;
	(void)what;
	struct sse_stream *st, *next;
	for (st = TAILQ_FIRST(&hub->streams); st; st = next) {
		next = TAILQ_NEXT(st, link);
		if (st->os)
			stream_send(st, ": heartbeat\n\n", 13);
	}
}

/* --- The request ------------------------------------------------------------ */

static void stream_abort_cb(struct http_req *req, void *arg)
{
	struct sse_stream *st = arg;
	st->req = NULL;
	stream_close(st, NULL);
}

static void stream_opened(struct sse_stream *st, int fd)
{
	struct sse_hub *hub = st->hub;
	if (!stream_start_io(st, fd))
		return;
	json_t *job = st->snapshot_job;
	st->snapshot_job = NULL;
	int64_t seq = json_integer_value(json_object_get(job, "event_seq"));
	json_decref(job);
	if (st->bad_resume || st->resume_from > seq) {
		/* an id this job never had: say so, then the snapshot and live */
		json_t *o = json_pack("{s:s, s:I}", "reason",
		                      st->bad_resume ? "invalid_last_event_id" : "unknown_event_id",
		                      "event_seq", (json_int_t)seq);
		bool ok = stream_event_json(st, "reset", 0, o);
		json_decref(o);
		if (!ok)
			return;
		st->last_seq = seq;
		st->state = SSE_SNAPSHOT;
		st->op = job_get(hub->ctx->engine, st->project, st->job_id, stream_snapshot_cb, st);
		return;
	}
	st->last_seq = st->resume_from > 0 ? st->resume_from : 0;
	st->state = SSE_REPLAY;
	stream_fetch(st);
}

static void stream_job_cb(json_t *job, int64_t rev, const struct pg_error *err, void *arg)
{
	struct sse_stream *st = arg;
	struct http_req *req = st->req;
	st->op = NULL;
	(void)rev;
	if (err || job == NULL) {
		st->req = NULL;
		if (err)
			http_reply_problem(req, 503, "db-unavailable", "Database unavailable",
			                   "the database is unavailable; retry shortly", NULL);
		else
			http_reply_problem(req, 404, "not-found", NULL, "no such job", NULL);
		json_decref(job);
		stream_close(st, NULL);
		return;
	}
	st->snapshot_job = job;
	int fd = http_req_take_stream(req, "text/event-stream");
	st->req = NULL;
	stream_opened(st, fd);
}

static bool parse_event_id(const char *s, int64_t *out)
{
	if (s == NULL || *s == '\0' || strlen(s) > 18)
		return false;
	int64_t v = 0;
	for (const char *p = s; *p; p++) {
		if (*p < '0' || *p > '9')
			return false;
		v = v * 10 + (*p - '0');
	}
	*out = v;
	return true;
}

/* Starting or shutting down: an EventSource that gets anything but 200
 * stops for good, so answer 200 with a short retry hint and close: it
 * reconnects (with Last-Event-ID) a second later, here or elsewhere. */
static void not_now(struct http_req *req, bool draining)
{
	int fd = http_req_take_stream(req, "text/event-stream");
	if (fd < 0)
		return;
	static const char starting[] = "retry: 1000\n\n: the server is starting; reconnect\n\n";
	static const char stopping[] =
	        "retry: 1000\n\n: the server is shutting down; reconnect\n\n";
	const char *msg = draining ? stopping : starting;
	ssize_t w = write(fd, msg, strlen(msg));
	(void)w;
	close(fd);
}

static void job_events_authed(struct http_req *req, const struct auth_principal *p, void *arg)
{
	struct sse_hub *hub = arg;
	const char *id = http_req_param(req, "id");
	if (!id_uuid_valid(id)) {
		http_reply_problem(req, 404, "not-found", NULL, "no such job", NULL);
		return;
	}
	struct sse_stream *st = xcalloc(1, sizeof *st);
	st->hub = hub;
	st->req = req;
	st->resume_from = -1;
	for (int i = 0; i <= ID_UUID_LEN; i++)
		st->job_id[i] = (char)((id[i] >= 'A' && id[i] <= 'F') ? id[i] + 32 : id[i]);
	snprintf(st->project, sizeof st->project, "%s", p->project_id);
	const char *last = http_req_header(req, "Last-Event-ID");
	if (last == NULL)
		last = http_req_query(req, "last_event_id");
	if (last && !parse_event_id(last, &st->resume_from))
		st->bad_resume = true;
	const char *logs = http_req_query(req, "logs");
	st->logs = logs && (strcmp(logs, "1") == 0 || strcmp(logs, "true") == 0);
	TAILQ_INSERT_TAIL(&hub->streams, st, link);
	hub->n++;
	metric_set(metrics_default_get(M_SSE_STREAMS_OPEN), (double)hub->n);
	http_req_on_abort(req, stream_abort_cb, st);
	st->op = job_get(hub->ctx->engine, st->project, st->job_id, stream_job_cb, st);
}

static void job_events(struct http_req *req, void *arg)
{
	struct sse_hub *hub = arg;
	if (!hub->ctx->migrated || hub->draining) {
		not_now(req, hub->draining);
		return;
	}
	auth_require(hub->ctx->auth, req, APIKEY_SCOPE_JOBS_READ, job_events_authed, hub);
}

static void project_events_authed(struct http_req *req, const struct auth_principal *p, void *arg)
{
	struct sse_hub *hub = arg;
	struct sse_stream *st = xcalloc(1, sizeof *st);
	st->hub = hub;
	st->req = req;
	st->resume_from = -1;
	st->project_stream = true;
	snprintf(st->project, sizeof st->project, "%s", p->project_id);
	const char *last = http_req_header(req, "Last-Event-ID");
	if (last == NULL)
		last = http_req_query(req, "last_event_id");
	if (last && !parse_event_id(last, &st->resume_from)) {
		st->bad_resume = true;
		st->resume_from = -1;
	}
	TAILQ_INSERT_TAIL(&hub->streams, st, link);
	hub->n++;
	metric_set(metrics_default_get(M_SSE_STREAMS_OPEN), (double)hub->n);
	http_req_on_abort(req, stream_abort_cb, st);
	if (st->resume_from >= 0)
		st->op = event_txid(hub->ctx->engine, st->project, st->resume_from, project_txid_cb,
		                    st);
	else
		project_start_now(st);
}

static void project_events(struct http_req *req, void *arg)
{
	struct sse_hub *hub = arg;
	if (!hub->ctx->migrated || hub->draining) {
		not_now(req, hub->draining);
		return;
	}
	auth_require(hub->ctx->auth, req, APIKEY_SCOPE_JOBS_READ, project_events_authed, hub);
}

bool api_sse_register(struct router *r, struct sse_hub *hub)
{
	return http_route(r, HTTP_M_GET, "/v1/jobs/{id}/events", job_events, hub) &&
	       http_route(r, HTTP_M_GET, "/v1/events", project_events, hub);
}

/* --- The hub ------------------------------------------------------------------ */

struct sse_hub *sse_hub_new(struct api_ctx *ctx)
{
	struct sse_hub *hub = xcalloc(1, sizeof *hub);
	hub->ctx = ctx;
	hub->base = ctx->app->base;
	TAILQ_INIT(&hub->streams);
	TAILQ_INIT(&hub->notes);
	hub->note_ev = evtimer_new(hub->base, note_timer_cb, hub);
	hub->poke_ev = evtimer_new(hub->base, poke_timer_cb, hub);
	hub->sub = event_bus_subscribe(engine_bus(ctx->engine), hub_bus_cb, hub);
	hub->hb_ev = event_new(hub->base, -1, EV_PERSIST, hub_heartbeat_cb, hub);
	struct timeval tv = {SSE_HEARTBEAT_MS / 1000, (SSE_HEARTBEAT_MS % 1000) * 1000};
	event_add(hub->hb_ev, &tv);
	return hub;
}

void sse_hub_drain(struct sse_hub *hub)
{
	if (hub == NULL)
		return;
	hub->draining = true;
	struct sse_stream *st;
	while ((st = TAILQ_FIRST(&hub->streams)) != NULL) {
		if (st->req) {
			struct http_req *req = st->req;
			st->req = NULL;
			http_reply_problem(req, 503, "shutting-down", NULL,
			                   "the server is shutting down", NULL);
		}
		stream_close(st, NULL);
	}
}

void sse_hub_free(struct sse_hub *hub)
{
	if (hub == NULL)
		return;
	struct sse_stream *st;
	while ((st = TAILQ_FIRST(&hub->streams)) != NULL) {
		st->req = NULL; /* the server answers or frees its requests */
		stream_close(st, NULL);
	}
	struct job_note *n;
	while ((n = TAILQ_FIRST(&hub->notes)) != NULL)
		note_free(n);
	event_sub_cancel(hub->sub);
	event_free(hub->hb_ev);
	event_free(hub->note_ev);
	event_free(hub->poke_ev);
	free(hub);
}

size_t sse_hub_streams(const struct sse_hub *hub)
{
	return hub ? hub->n : 0;
}
