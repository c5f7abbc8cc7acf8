/* The LISTEN connection. LISTEN is session state: it dies with the session,
 * so every READY re-issues one LISTEN per channel, each in its own batch
 * (everything before a sync is one transaction, and a failing neighbour
 * would roll a LISTEN back: TOOLCHAIN §3). When the last of them has
 * succeeded the session is live and on_resync tells the owner to reread
 * what it watches: notifications sent before that point went nowhere.
 * Results of a dropped session arrive after its DISCONNECTED and before the
 * next READY (pg.c delivers them inside the drop), so a per-session count
 * of LISTENs in flight is enough to know when a session is live. */
#include "db/listen.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/xmalloc.h"

#define LISTEN_MAX_NAME 63

struct listen_chan {
	struct pg_listener *l;
	char *name;
	char *sql; /* LISTEN "name" */
	uint64_t live_gen; /* the session whose LISTEN succeeded; 0 none */
};

struct pg_listener {
	struct pg_conn *conn;
	pg_listener_notify_cb on_notify;
	void (*on_resync)(void *arg);
	void *arg;

	struct listen_chan **chans;
	size_t nchans;

	uint64_t gen; /* session number: bumps on every READY */
	size_t pending; /* LISTENs of this session's resync still in flight */
	bool resync_due; /* this session's on_resync has not fired yet */
	bool session_failed; /* a LISTEN of this session was refused */

	int depth;
	bool free_pending;
};

bool pg_listener_channel_valid(const char *channel)
{
	if (!channel || !*channel)
		return false;
	size_t n = 0;
	for (const char *p = channel; *p; p++, n++) {
		char c = *p;
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
			return false;
	}
	return n <= LISTEN_MAX_NAME;
}

static void listener_destroy(struct pg_listener *l)
{
	pg_conn_free(l->conn);
	for (size_t i = 0; i < l->nchans; i++) {
		free(l->chans[i]->name);
		free(l->chans[i]->sql);
		free(l->chans[i]);
	}
	free(l->chans);
	free(l);
}

static void listener_enter(struct pg_listener *l)
{
	l->depth++;
}

static void listener_leave(struct pg_listener *l)
{
	if (--l->depth == 0 && l->free_pending)
		listener_destroy(l);
}

static bool listener_listen_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct listen_chan *ch = arg;
	struct pg_listener *l = ch->l;
	listener_enter(l);
	if (!err) {
		ch->live_gen = l->gen;
		log_debug("db.listen.live", "listening", LF_STR("channel", ch->name));
	} else if (err->kind == PG_ERR_QUERY || err->kind == PG_ERR_USAGE) {
		/* Not the connection (a reconnect redoes those): the server refused
		 * it, e.g. a hot standby. The owner's slow poll covers the gap. */
		l->session_failed = true;
		log_error("db.listen.failed", "LISTEN refused", LF_STR("channel", ch->name),
		          LF_STR("sqlstate", err->sqlstate), LF_STR("error", err->message));
	}
	if (l->pending > 0 && --l->pending == 0 && l->resync_due) {
		l->resync_due = false;
		if (!l->session_failed) {
			log_info("db.listen.resync", "listening on every channel: resync",
			         LF_UINT("channels", l->nchans), LF_UINT("session", l->gen));
			if (l->on_resync && !l->free_pending)
				l->on_resync(l->arg);
		}
	}
	listener_leave(l);
	return false;
}

static void listener_send(struct pg_listener *l, struct listen_chan *ch)
{
	l->pending++;
	(void)pg_conn_query(l->conn, ch->sql, 0, NULL, listener_listen_cb, ch);
}

static void listener_state_cb(struct pg_conn *c, enum pg_conn_state state, void *arg)
{
	struct pg_listener *l = arg;
	listener_enter(l);
	if (state == PG_CONN_READY) {
		l->gen++;
		l->pending = 0;
		l->session_failed = false;
		l->resync_due = l->nchans > 0;
		for (size_t i = 0; i < l->nchans && !l->free_pending; i++)
			listener_send(l, l->chans[i]);
	} else if (state == PG_CONN_DISCONNECTED) {
		/* The LISTENs in flight come back as lost; none of them counts. */
		l->pending = 0;
		l->resync_due = false;
	}
	listener_leave(l);
}

static void listener_notify_cb(struct pg_conn *c, const char *channel, const char *payload,
                               int be_pid, void *arg)
{
	struct pg_listener *l = arg;
	listener_enter(l);
	if (!l->free_pending)
		l->on_notify(channel, payload, be_pid, l->arg);
	listener_leave(l);
}

struct pg_listener *pg_listener_new(struct event_base *base, const char *conninfo,
                                    pg_listener_notify_cb on_notify, void *arg,
                                    const struct pg_listener_opts *opts)
{
	struct pg_listener *l = xcalloc(1, sizeof *l);
	l->on_notify = on_notify;
	l->on_resync = opts ? opts->on_resync : NULL;
	l->arg = arg;
	struct pg_conn_opts co = {0};
	if (opts)
		co = opts->conn;
	co.on_state = listener_state_cb;
	co.on_notify = listener_notify_cb;
	co.arg = l;
	l->conn = pg_conn_new(base, conninfo, "listen", &co);
	if (!l->conn) {
		free(l);
		return NULL;
	}
	return l;
}

bool pg_listener_listen(struct pg_listener *l, const char *channel)
{
	if (!pg_listener_channel_valid(channel))
		return false;
	for (size_t i = 0; i < l->nchans; i++)
		if (strcmp(l->chans[i]->name, channel) == 0)
			return true;
	struct listen_chan *ch = xcalloc(1, sizeof *ch);
	ch->l = l;
	ch->name = xstrdup(channel);
	/* Quoted, so a keyword ("select", "end") is a name too; the charset
	 * check above keeps quotes and backslashes out. */
	ch->sql = xasprintf("LISTEN \"%s\"", channel);
	l->chans = xrealloc(l->chans, (l->nchans + 1) * sizeof *l->chans);
	l->chans[l->nchans++] = ch;
	if (pg_conn_is_ready(l->conn)) {
		/* Part of this session's resync while that is still under way. */
		if (l->resync_due)
			listener_send(l, ch);
		else
			(void)pg_conn_query(l->conn, ch->sql, 0, NULL, listener_listen_cb, ch);
	}
	return true;
}

void pg_listener_free(struct pg_listener *l)
{
	if (!l || l->free_pending)
		return;
	l->free_pending = true;
	if (l->depth == 0)
		listener_destroy(l);
}

bool pg_listener_is_live(const struct pg_listener *l)
{
	if (!pg_conn_is_ready(l->conn))
		return false;
	for (size_t i = 0; i < l->nchans; i++)
		if (l->chans[i]->live_gen != l->gen)
			return false;
	return true;
}

size_t pg_listener_channels(const struct pg_listener *l)
{
	return l->nchans;
}

const char *pg_listener_last_error(const struct pg_listener *l)
{
	return pg_conn_last_error(l->conn);
}
