/* The migration runner: one pg_conn of its own and a small state machine on
 * the loop. Every step is one batch (one round trip, one transaction):
 *   lock    SET statement_timeout / lock_timeout = 0 (they are meant for the
 *           request path), SELECT pg_advisory_lock(key): session-level;
 *           another instance waits for it server-side
 *   read    CREATE TABLE IF NOT EXISTS schema_migrations; SELECT the rows
 *   apply   the migration's statements + its INSERT INTO schema_migrations,
 *           once per missing migration, in version order
 *   unlock  SELECT pg_advisory_unlock(key)
 * A lost connection or a transient server error sends it back to the lock
 * step on the next session (the lock dies with the session; the reread of
 * schema_migrations tells what a lost batch did). An error in a migration,
 * or an applied migration whose text changed, ends it with done(false).
 * The splitter below is what lets one file become one batch: the extended
 * protocol takes a single statement per message. */
#include "db/migrate.h"

#include <ctype.h>
#include <event2/event.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/xmalloc.h"

#define MIG_RETRY_MS 1000 /* after a transient error on a live connection */
#define MIG_LOCK_WAIT_LOG_MS 2000

/* The splitter. --------------------------------------------------------------- */

static bool sql_ident_start(unsigned char c)
{
	return isalpha(c) || c == '_' || c >= 0x80;
}

static bool sql_ident_char(unsigned char c)
{
	return isalnum(c) || c == '_' || c == '$' || c >= 0x80;
}

static bool sql_word_is(const char *w, size_t n, const char *kw)
{
	return strlen(kw) == n && strncasecmp(w, kw, n) == 0;
}

/* Past a nested block comment opened at i ("/" "*"), or len when it never closes. */
static size_t sql_skip_block_comment(const char *s, size_t len, size_t i)
{
	int depth = 0;
	while (i < len) {
		if (s[i] == '/' && i + 1 < len && s[i + 1] == '*') {
			depth++;
			i += 2;
		} else if (s[i] == '*' && i + 1 < len && s[i + 1] == '/') {
			i += 2;
			if (--depth == 0)
				return i;
		} else {
			i++;
		}
	}
	return len + 1;
}

/* Past the quoted text opened at i (s[i] is the quote); '' (or "") inside
 * is an escaped quote, and with backslashes also \x escapes. len + 1 when
 * it never closes. */
static size_t sql_skip_quoted(const char *s, size_t len, size_t i, bool backslashes)
{
	char q = s[i++];
	while (i < len) {
		if (backslashes && s[i] == '\\') {
			i += 2;
		} else if (s[i] == q) {
			if (i + 1 < len && s[i + 1] == q)
				i += 2;
			else
				return i + 1;
		} else {
			i++;
		}
	}
	return len + 1;
}

/* At a '$': the length of a $tag$ opener (tag empty or an identifier
 * without '$'), or 0 when this '$' opens none ($1, a lone '$'). */
static size_t sql_dollar_tag(const char *s, size_t len, size_t i)
{
	size_t j = i + 1;
	if (j < len && isdigit((unsigned char)s[j]))
		return 0;
	while (j < len && s[j] != '$' && sql_ident_char((unsigned char)s[j]))
		j++;
	if (j < len && s[j] == '$')
		return j + 1 - i;
	return 0;
}

/* Past the whitespace and comments at i. When a block comment never closes,
 * *unterminated is set and the result is where it opens. */
static size_t sql_skip_space(const char *s, size_t len, size_t i, bool *unterminated)
{
	*unterminated = false;
	for (;;) {
		while (i < len && isspace((unsigned char)s[i]))
			i++;
		if (i + 1 < len && s[i] == '-' && s[i + 1] == '-') {
			while (i < len && s[i] != '\n')
				i++;
		} else if (i + 1 < len && s[i] == '/' && s[i + 1] == '*') {
			size_t end = sql_skip_block_comment(s, len, i);
			if (end > len) {
				*unterminated = true;
				return i;
			}
			i = end;
		} else {
			return i;
		}
	}
}

enum pg_sql_split pg_sql_split_next(const char *sql, size_t len, size_t *pos, size_t *start,
                                    size_t *stmt_len)
{
	size_t i = *pos;
	bool unterminated;
	/* Leading whitespace, comments and empty statements. */
	for (;;) {
		i = sql_skip_space(sql, len, i, &unterminated);
		if (unterminated) {
			*start = i;
			*stmt_len = len - i;
			*pos = len;
			return PG_SQL_UNTERMINATED;
		}
		if (i < len && sql[i] == ';') {
			i++;
			continue;
		}
		break;
	}
	if (i >= len) {
		*pos = len;
		return PG_SQL_END;
	}

	size_t s = i;
	int parens = 0;
	int begins = 0; /* BEGIN ... END depth inside a CREATE FUNCTION/PROCEDURE */
	char idents[4] = {0}; /* initials of the statement's first words, as psql keeps */
	size_t nidents = 0;
	size_t e_prefix_end = (size_t)-1; /* just past a lone word E: an E'...' string */
	size_t end = len;
	bool found = false;
	while (i < len && !found) {
		unsigned char c = (unsigned char)sql[i];
		size_t next;
		if (c == '-' && i + 1 < len && sql[i + 1] == '-') {
			while (i < len && sql[i] != '\n')
				i++;
			continue;
		}
		if (c == '/' && i + 1 < len && sql[i + 1] == '*') {
			next = sql_skip_block_comment(sql, len, i);
		} else if (c == '\'') {
			next = sql_skip_quoted(sql, len, i, e_prefix_end == i);
		} else if (c == '"') {
			next = sql_skip_quoted(sql, len, i, false);
		} else if (c == '$') {
			size_t tag = sql_dollar_tag(sql, len, i);
			if (tag == 0) {
				i++;
				while (i < len && isdigit((unsigned char)sql[i]))
					i++;
				continue;
			}
			const char *close = memmem(sql + i + tag, len - i - tag, sql + i, tag);
			next = close ? (size_t)(close - sql) + tag : len + 1;
		} else if (sql_ident_start(c)) {
			size_t j = i;
			while (j < len && sql_ident_char((unsigned char)sql[j]))
				j++;
			const char *w = sql + i;
			size_t n = j - i;
			static const char *const tracked[] = {"create", "function", "procedure",
			                                      "or", "replace"};
			if (nidents == 0)
				memset(idents, 0, sizeof idents);
			for (size_t k = 0; k < sizeof tracked / sizeof tracked[0]; k++)
				if (sql_word_is(w, n, tracked[k]) && nidents < sizeof idents)
					idents[nidents] = tracked[k][0];
			nidents++;
			bool routine =
			        idents[0] == 'c' && (idents[1] == 'f' || idents[1] == 'p' ||
			                             (idents[1] == 'o' && idents[2] == 'r' &&
			                              (idents[3] == 'f' || idents[3] == 'p')));
			if (routine && parens == 0) {
				if (sql_word_is(w, n, "begin"))
					begins++;
				else if (sql_word_is(w, n, "case") && begins > 0)
					begins++;
				else if (sql_word_is(w, n, "end") && begins > 0)
					begins--;
			}
			if (n == 1 && (w[0] == 'e' || w[0] == 'E'))
				e_prefix_end = j;
			i = j;
			continue;
		} else if (isdigit(c)) {
			while (i < len &&
			       (isalnum((unsigned char)sql[i]) || sql[i] == '_' || sql[i] == '.'))
				i++;
			continue;
		} else {
			if (c == '(')
				parens++;
			else if (c == ')' && parens > 0)
				parens--;
			else if (c == ';' && parens == 0 && begins == 0) {
				end = i;
				found = true;
			}
			i++;
			continue;
		}
		if (next > len) {
			*start = i;
			*stmt_len = len - i;
			*pos = len;
			return PG_SQL_UNTERMINATED;
		}
		i = next;
	}
	*pos = found ? end + 1 : len;
	while (end > s && isspace((unsigned char)sql[end - 1]))
		end--;
	*start = s;
	*stmt_len = end - s;
	return PG_SQL_STMT;
}

void pg_migrate_checksum(const char *sql, size_t len, char out[65])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	if (EVP_Digest(sql, len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
		abort(); /* OpenSSL fails here only when out of memory */
	static const char hex[] = "0123456789abcdef";
	for (unsigned i = 0; i < mdlen; i++) {
		out[2 * i] = hex[md[i] >> 4];
		out[2 * i + 1] = hex[md[i] & 15];
	}
	out[64] = '\0';
}

/* The runner. ----------------------------------------------------------------- */

enum mig_step {
	MIG_WAIT_CONN, /* for a READY connection */
	MIG_LOCK,
	MIG_READ,
	MIG_APPLY,
	MIG_UNLOCK,
	MIG_RETRY, /* transient error on a live connection: the retry timer */
	MIG_DONE,
};

struct mig_stmt_ctx {
	struct pg_migrate *m;
	size_t index;
	unsigned line;
};

struct pg_migrate {
	struct event_base *base;
	struct pg_conn *conn;
	const struct pg_migration *list;
	size_t n;
	char (*sums)[65];
	bool *applied; /* per list entry, from schema_migrations */
	char key[24];
	pg_migrate_done_cb done;
	void *arg;

	enum mig_step step;
	bool locked; /* this session holds the advisory lock */
	bool lock_logged;
	size_t cur; /* the migration being applied */
	size_t napplied; /* by this run */
	int version; /* highest in the database */
	int64_t start_us;
	int64_t step_us;

	/* The batch in flight. */
	struct mig_stmt_ctx *ctx;
	size_t nctx;
	size_t ndelivered;
	bool batch_transient; /* it failed with an error worth a retry */
	char *batch_error; /* the first real failure, already worded */

	/* The outcome, kept while the unlock runs. */
	bool ok;
	char *error;

	struct event *timer_ev; /* MIG_RETRY, and the lock-wait log line */
	int depth;
	bool free_pending;
};

static void mig_destroy(struct pg_migrate *m)
{
	pg_conn_free(m->conn);
	if (m->timer_ev)
		event_free(m->timer_ev);
	free(m->sums);
	free(m->applied);
	free(m->ctx);
	free(m->batch_error);
	free(m->error);
	free(m);
}

static void mig_enter(struct pg_migrate *m)
{
	m->depth++;
}

static void mig_leave(struct pg_migrate *m)
{
	if (--m->depth == 0 && m->free_pending)
		mig_destroy(m);
}

static void mig_add_timer(struct pg_migrate *m, unsigned ms)
{
	struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (suseconds_t)(ms % 1000) * 1000};
	evtimer_add(m->timer_ev, &tv);
}

static int64_t mig_ms_since(int64_t us)
{
	return (clock_mono_us() - us) / 1000;
}

/* Errors worth another try on a fresh transaction: a lost connection, a
 * server going down, deadlock and serialization failures, lock timeouts,
 * resource exhaustion. */
static bool mig_transient(const struct pg_error *err)
{
	switch (err->kind) {
	case PG_ERR_CONN_LOST:
	case PG_ERR_TIMEOUT:
	case PG_ERR_UNAVAILABLE: return true;
	case PG_ERR_QUERY: break;
	default: return false;
	}
	const char *st = err->sqlstate;
	return strncmp(st, "08", 2) == 0 || strncmp(st, "40", 2) == 0 ||
	       strncmp(st, "53", 2) == 0 || strcmp(st, "57P01") == 0 || strcmp(st, "57P02") == 0 ||
	       strcmp(st, "57P03") == 0 || strcmp(st, "55P03") == 0;
}

static void mig_send_lock(struct pg_migrate *m);

/* Reports the outcome once; m may be freed by done, so nothing touches it
 * afterwards (the caller's leave does the freeing). */
static void mig_report(struct pg_migrate *m)
{
	m->step = MIG_DONE;
	evtimer_del(m->timer_ev);
	if (m->ok)
		log_info("db.migrate.done",
		         m->napplied ? "migrations applied" : "schema up to date",
		         LF_UINT("applied", m->napplied), LF_INT("version", m->version),
		         LF_UINT("known", m->n), LF_INT("ms", mig_ms_since(m->start_us)));
	else
		log_error("db.migrate.failed", m->error, LF_UINT("applied", m->napplied),
		          LF_INT("version", m->version), LF_INT("ms", mig_ms_since(m->start_us)));
	if (m->done)
		m->done(m->ok, m->ok ? NULL : m->error, m->arg);
}

static bool mig_unlock_cb(PGresult *res, const struct pg_error *err, void *arg);

/* The end, good or bad: unlock first when this session holds the lock. */
static void mig_finish(struct pg_migrate *m, bool ok, char *error)
{
	m->ok = ok;
	free(m->error);
	m->error = error;
	if (m->locked && pg_conn_is_ready(m->conn)) {
		m->step = MIG_UNLOCK;
		const char *values[] = {m->key};
		(void)pg_conn_query(m->conn, "SELECT pg_advisory_unlock($1::bigint)", 1, values,
		                    mig_unlock_cb, m);
		return;
	}
	mig_report(m);
}

static bool mig_unlock_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct pg_migrate *m = arg;
	mig_enter(m);
	m->locked = false;
	if (err)
		log_warn("db.migrate.unlock",
		         "cannot release the migration lock (the session end will)",
		         LF_STR("error", err->message));
	mig_report(m);
	mig_leave(m);
	return false;
}

/* A transient failure: start over from the lock on this session after a
 * pause, or on the next one. */
static void mig_retry(struct pg_migrate *m, const char *why)
{
	log_warn("db.migrate.retry", "migration interrupted, will retry", LF_STR("error", why),
	         LF_UINT("applied", m->napplied));
	if (pg_conn_is_ready(m->conn)) {
		m->step = MIG_RETRY;
		mig_add_timer(m, MIG_RETRY_MS);
	} else {
		m->step = MIG_WAIT_CONN;
		evtimer_del(m->timer_ev);
	}
}

static void mig_batch_reset(struct pg_migrate *m, size_t n)
{
	free(m->ctx);
	m->ctx = xcalloc(n, sizeof *m->ctx);
	m->nctx = n;
	m->ndelivered = 0;
	m->batch_transient = false;
	free(m->batch_error);
	m->batch_error = NULL;
	m->step_us = clock_mono_us();
	for (size_t i = 0; i < n; i++)
		m->ctx[i] = (struct mig_stmt_ctx){.m = m, .index = i};
}

/* Files one statement's error for the batch; the first real one wins. */
static void mig_batch_error(struct pg_migrate *m, const struct pg_error *err, char *msg)
{
	if (mig_transient(err))
		m->batch_transient = true;
	if (err->kind == PG_ERR_ABORTED || m->batch_error) {
		free(msg);
		return;
	}
	m->batch_error = msg;
}

static void mig_apply_next(struct pg_migrate *m);

static void mig_format_name(const struct pg_migration *mg, char *out, size_t size)
{
	snprintf(out, size, "%04d_%s", mg->version, mg->name);
}

/* apply */

static bool mig_apply_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct mig_stmt_ctx *cx = arg;
	struct pg_migrate *m = cx->m;
	mig_enter(m);
	const struct pg_migration *mg = &m->list[m->cur];
	char name[96];
	mig_format_name(mg, name, sizeof name);
	if (err) {
		bool record = cx->index + 1 == m->nctx;
		mig_batch_error(
		        m, err,
		        record ? xasprintf("migration %s: recording it in schema_migrations "
		                           "failed: %s",
		                           name, err->message)
		               : xasprintf("migration %s failed at statement %zu (line %u)%s%s: "
		                           "%s",
		                           name, cx->index + 1, cx->line,
		                           *err->sqlstate ? ", SQLSTATE " : "", err->sqlstate,
		                           err->message));
	}
	if (++m->ndelivered == m->nctx) {
		if (!m->batch_error && !m->batch_transient) {
			m->applied[m->cur] = true;
			m->napplied++;
			if (mg->version > m->version)
				m->version = mg->version;
			log_info("db.migrate.apply", "migration applied",
			         LF_INT("version", mg->version), LF_STR("name", mg->name),
			         LF_UINT("statements", m->nctx - 1),
			         LF_INT("ms", mig_ms_since(m->step_us)));
			m->cur++;
			mig_apply_next(m);
		} else if (m->batch_transient) {
			mig_retry(m, m->batch_error ? m->batch_error : "connection lost");
		} else {
			char *e = m->batch_error;
			m->batch_error = NULL;
			mig_finish(m, false, e);
		}
	}
	mig_leave(m);
	return false;
}

static unsigned mig_line_at(const char *s, size_t off)
{
	unsigned line = 1;
	for (size_t i = 0; i < off; i++)
		line += s[i] == '\n';
	return line;
}

/* Sends the next missing migration as one batch, or unlocks when none is
 * left. */
static void mig_apply_next(struct pg_migrate *m)
{
	while (m->cur < m->n && m->applied[m->cur])
		m->cur++;
	if (m->cur == m->n) {
		mig_finish(m, true, NULL);
		return;
	}
	const struct pg_migration *mg = &m->list[m->cur];
	char name[96];
	mig_format_name(mg, name, sizeof name);
	size_t len = strlen(mg->sql);

	/* Split first: a file that can't be split fails before anything runs. */
	size_t cap = 16, nst = 0;
	size_t(*spans)[2] = xmalloc(cap * sizeof *spans);
	size_t pos = 0, st, sl;
	enum pg_sql_split r;
	while ((r = pg_sql_split_next(mg->sql, len, &pos, &st, &sl)) == PG_SQL_STMT) {
		if (nst == cap) {
			cap *= 2;
			spans = xrealloc(spans, cap * sizeof *spans);
		}
		spans[nst][0] = st;
		spans[nst][1] = sl;
		nst++;
	}
	if (r == PG_SQL_UNTERMINATED || nst == 0) {
		free(spans);
		mig_finish(m, false,
		           r == PG_SQL_UNTERMINATED
		                   ? xasprintf("migration %s: a quote or comment opened at line %u "
		                               "never closes",
		                               name, mig_line_at(mg->sql, st))
		                   : xasprintf("migration %s has no statement", name));
		return;
	}

	mig_batch_reset(m, nst + 1);
	struct pg_stmt *stmts = xcalloc(nst + 1, sizeof *stmts);
	char **texts = xcalloc(nst, sizeof *texts);
	for (size_t i = 0; i < nst; i++) {
		texts[i] = xstrndup(mg->sql + spans[i][0], spans[i][1]);
		m->ctx[i].line = mig_line_at(mg->sql, spans[i][0]);
		stmts[i] = (struct pg_stmt){.sql = texts[i], .cb = mig_apply_cb, .arg = &m->ctx[i]};
	}
	char version[16];
	snprintf(version, sizeof version, "%d", mg->version);
	const char *values[] = {version, mg->name, m->sums[m->cur]};
	stmts[nst] = (struct pg_stmt){.sql = "INSERT INTO schema_migrations (version, name, "
	                                     "checksum) VALUES ($1, $2, $3)",
	                              .nparams = 3,
	                              .values = values,
	                              .cb = mig_apply_cb,
	                              .arg = &m->ctx[nst]};
	m->step = MIG_APPLY;
	log_debug("db.migrate.send", "applying migration", LF_INT("version", mg->version),
	          LF_STR("name", mg->name), LF_UINT("statements", nst));
	/* libpq copies the statements into its buffer here. */
	(void)pg_conn_batch(m->conn, stmts, nst + 1);
	for (size_t i = 0; i < nst; i++)
		free(texts[i]);
	free(texts);
	free(stmts);
	free(spans);
}

/* read */

static bool mig_create_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct pg_migrate *m = arg;
	if (err)
		mig_batch_error(m, err,
		                xasprintf("cannot create schema_migrations: %s", err->message));
	m->ndelivered++;
	return false;
}

static const struct pg_migration *mig_find(const struct pg_migrate *m, int version, size_t *idx)
{
	for (size_t i = 0; i < m->n; i++)
		if (m->list[i].version == version) {
			*idx = i;
			return &m->list[i];
		}
	return NULL;
}

/* Compares what the database holds with the compiled list; the error text
 * when they disagree, else NULL. */
static char *mig_check_applied(struct pg_migrate *m, const PGresult *res)
{
	memset(m->applied, 0, m->n * sizeof *m->applied);
	m->version = 0;
	for (int row = 0; row < PQntuples(res); row++) {
		int version = atoi(PQgetvalue(res, row, 0));
		const char *sum = PQgetisnull(res, row, 2) ? "" : PQgetvalue(res, row, 2);
		if (version > m->version)
			m->version = version;
		size_t i;
		const struct pg_migration *mg = mig_find(m, version, &i);
		if (!mg) {
			log_warn("db.migrate.unknown",
			         "the database has a migration this binary does not know (a newer "
			         "release?)",
			         LF_INT("version", version),
			         LF_STR("name", PQgetvalue(res, row, 1)));
			continue;
		}
		if (strcmp(sum, m->sums[i]) != 0) {
			char name[96];
			mig_format_name(mg, name, sizeof name);
			return xasprintf(
			        "migration %s (version %d) was changed after it was applied: "
			        "schema_migrations has checksum %s, this binary has %s; "
			        "refusing to start (restore the file and add a new migration "
			        "instead)",
			        name, version, *sum ? sum : "(none)", m->sums[i]);
		}
		m->applied[i] = true;
	}
	return NULL;
}

static bool mig_read_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct pg_migrate *m = arg;
	mig_enter(m);
	if (err)
		mig_batch_error(m, err,
		                xasprintf("cannot read schema_migrations: %s", err->message));
	if (m->batch_transient) {
		mig_retry(m, m->batch_error ? m->batch_error : "transient error");
	} else if (m->batch_error) {
		char *e = m->batch_error;
		m->batch_error = NULL;
		mig_finish(m, false, e);
	} else {
		char *bad = mig_check_applied(m, res);
		if (bad) {
			mig_finish(m, false, bad);
		} else {
			size_t pending = 0;
			for (size_t i = 0; i < m->n; i++)
				pending += !m->applied[i];
			log_debug("db.migrate.state", "schema_migrations read",
			          LF_INT("version", m->version), LF_UINT("pending", pending));
			m->cur = 0;
			mig_apply_next(m);
		}
	}
	mig_leave(m);
	return false;
}

static void mig_send_read(struct pg_migrate *m)
{
	mig_batch_reset(m, 2);
	struct pg_stmt stmts[] = {
	        {.sql = "CREATE TABLE IF NOT EXISTS schema_migrations ("
	                "version int PRIMARY KEY, name text NOT NULL, "
	                "applied_at timestamptz NOT NULL DEFAULT now(), checksum text)",
	         .cb = mig_create_cb,
	         .arg = m},
	        {.sql = "SELECT version, name, checksum FROM schema_migrations ORDER BY version",
	         .cb = mig_read_cb,
	         .arg = m},
	};
	m->step = MIG_READ;
	(void)pg_conn_batch(m->conn, stmts, 2);
}

/* lock */

/* The session setup ahead of the lock: a statement_timeout or lock_timeout
 * from the connection string (options=-c...) is meant for the request path;
 * it would fail the wait for another instance's lock or a long CREATE INDEX.
 * Session-level on the runner's own connection, set again on every session. */
static bool mig_setup_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct pg_migrate *m = arg;
	if (err)
		mig_batch_error(m, err,
		                xasprintf("cannot set up the migration session: %s", err->message));
	return false;
}

static bool mig_lock_cb(PGresult *res, const struct pg_error *err, void *arg)
{
	struct pg_migrate *m = arg;
	mig_enter(m);
	evtimer_del(m->timer_ev);
	if (err)
		mig_batch_error(m, err,
		                xasprintf("cannot take the migration lock: %s", err->message));
	if (m->batch_transient) {
		mig_retry(m, m->batch_error ? m->batch_error : "transient error");
	} else if (m->batch_error) {
		char *e = m->batch_error;
		m->batch_error = NULL;
		mig_finish(m, false, e);
	} else {
		m->locked = true;
		if (m->lock_logged)
			log_info("db.migrate.locked", "migration lock acquired",
			         LF_INT("waited_ms", mig_ms_since(m->step_us)));
		mig_send_read(m);
	}
	mig_leave(m);
	return false;
}

static void mig_send_lock(struct pg_migrate *m)
{
	if (m->locked) {
		mig_send_read(m);
		return;
	}
	mig_batch_reset(m, 3);
	m->step = MIG_LOCK;
	m->lock_logged = false;
	const char *values[] = {m->key};
	struct pg_stmt stmts[] = {
	        {.sql = "SET statement_timeout = 0", .cb = mig_setup_cb, .arg = m},
	        {.sql = "SET lock_timeout = 0", .cb = mig_setup_cb, .arg = m},
	        {.sql = "SELECT pg_advisory_lock($1::bigint)",
	         .nparams = 1,
	         .values = values,
	         .cb = mig_lock_cb,
	         .arg = m},
	};
	(void)pg_conn_batch(m->conn, stmts, 3);
	mig_add_timer(m, MIG_LOCK_WAIT_LOG_MS);
}

static void mig_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pg_migrate *m = arg;
	mig_enter(m);
	if (m->step == MIG_LOCK && !m->lock_logged) {
		m->lock_logged = true;
		log_info("db.migrate.lock_wait",
		         "waiting for the migration lock (another instance is migrating)",
		         LF_INT("waited_ms", mig_ms_since(m->step_us)));
	} else if (m->step == MIG_RETRY) {
		if (pg_conn_is_ready(m->conn))
			mig_send_lock(m);
		else
			m->step = MIG_WAIT_CONN;
	}
	mig_leave(m);
}

static void mig_state_cb(struct pg_conn *c, enum pg_conn_state state, void *arg)
{
	struct pg_migrate *m = arg;
	mig_enter(m);
	if (state == PG_CONN_DISCONNECTED) {
		/* The lock died with the session. The batch in flight (if any)
		 * gets PG_ERR_CONN_LOST next and asks for a retry. */
		m->locked = false;
		if (m->step == MIG_RETRY) {
			evtimer_del(m->timer_ev);
			m->step = MIG_WAIT_CONN;
		}
	} else if (state == PG_CONN_READY && m->step == MIG_WAIT_CONN) {
		mig_send_lock(m);
	}
	mig_leave(m);
}

static bool mig_list_valid(const struct pg_migration *list, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (list[i].version <= 0 || !list[i].name || !list[i].sql)
			return false;
		if (i > 0 && list[i].version <= list[i - 1].version)
			return false;
	}
	return true;
}

struct pg_migrate *pg_migrate_start(struct event_base *base, const char *conninfo,
                                    const struct pg_migrate_opts *opts, pg_migrate_done_cb done,
                                    void *arg)
{
	const struct pg_migration *list = pg_migrations_embedded;
	size_t n = pg_migrations_embedded_count;
	if (opts && opts->migrations) {
		list = opts->migrations;
		n = opts->nmigrations;
	}
	if (!mig_list_valid(list, n)) {
		log_error("db.migrate.config",
		          "the migration list is not ordered by unique positive versions");
		return NULL;
	}
	struct pg_migrate *m = xcalloc(1, sizeof *m);
	m->base = base;
	m->list = list;
	m->n = n;
	m->done = done;
	m->arg = arg;
	m->start_us = clock_mono_us();
	snprintf(m->key, sizeof m->key, "%" PRId64,
	         opts && opts->lock_key ? opts->lock_key : PG_MIGRATE_LOCK_KEY);
	m->sums = xcalloc(n ? n : 1, sizeof *m->sums);
	m->applied = xcalloc(n ? n : 1, sizeof *m->applied);
	for (size_t i = 0; i < n; i++)
		pg_migrate_checksum(list[i].sql, strlen(list[i].sql), m->sums[i]);
	m->timer_ev = evtimer_new(base, mig_timer_cb, m);
	if (!m->timer_ev)
		abort(); /* libevent only fails here when out of memory */
	m->step = MIG_WAIT_CONN;

	struct pg_conn_opts co = {0};
	if (opts)
		co = opts->conn;
	co.on_state = mig_state_cb;
	co.on_notify = NULL;
	co.arg = m;
	m->conn = pg_conn_new(base, conninfo, "migrate", &co);
	if (!m->conn) {
		mig_destroy(m);
		return NULL;
	}
	log_info("db.migrate.start", "checking the schema", LF_UINT("known", n),
	         LF_INT("latest", n ? list[n - 1].version : 0));
	return m;
}

void pg_migrate_free(struct pg_migrate *m)
{
	if (!m || m->free_pending)
		return;
	m->free_pending = true;
	if (m->depth == 0)
		mig_destroy(m);
}

size_t pg_migrate_applied(const struct pg_migrate *m)
{
	return m->napplied;
}

int pg_migrate_version(const struct pg_migrate *m)
{
	return m->version;
}
