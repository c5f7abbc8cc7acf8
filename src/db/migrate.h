/* migrate: the schema migrations compiled into the binary (NNNN_name.sql,
 * embedded at build time by src/db/migrations/embed.sh) and the runner that
 * applies the missing ones on its own connection under an advisory lock.
 * It also holds the SQL splitter, a pure function, and the file checksum. */
#ifndef SL_DB_MIGRATE_H
#define SL_DB_MIGRATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "db/pg.h"

struct event_base;
struct pg_migrate;

struct pg_migration {
	int version; /* NNNN, > 0 */
	const char *name; /* the file name's _name part */
	const char *sql; /* the file's text, byte for byte */
};

/* Generated (migrations_embedded.c), ordered by version; a {0, NULL, NULL}
 * entry follows the last one. */
extern const struct pg_migration pg_migrations_embedded[];
extern const size_t pg_migrations_embedded_count;

/* The session-level advisory lock every stageline instance takes while it
 * migrates ("stagelin" in ASCII); a second instance waits for it on the
 * server, which does not block its loop. */
#define PG_MIGRATE_LOCK_KEY INT64_C(0x73746167656c696e)

/* ok: every migration is applied (error is NULL). !ok: error says why
 * (a statement failed, an applied migration's checksum differs, ...). */
typedef void (*pg_migrate_done_cb)(bool ok, const char *error, void *arg);

struct pg_migrate_opts {
	/* NULL: pg_migrations_embedded. The list must be ordered by version,
	 * versions unique and > 0, and outlive the runner. */
	const struct pg_migration *migrations;
	size_t nmigrations;
	/* Reconnect and connect timing of the runner's connection; its
	 * on_state, on_notify and arg are the runner's own. */
	struct pg_conn_opts conn;
	int64_t lock_key; /* 0: PG_MIGRATE_LOCK_KEY */
};

/* Starts the runner on its own connection: it waits until the database is
 * reachable (however long: connection failures are retried, as are
 * transient errors such as a deadlock or a server shutdown), takes the
 * advisory lock (statement_timeout and lock_timeout are off for its session:
 * neither the wait nor a long CREATE INDEX may be cut short), creates
 * schema_migrations if needed, checks the checksums of what is applied,
 * applies each missing migration as ONE transaction (its statements plus its
 * schema_migrations row), unlocks and calls done once, from the loop. Each
 * applied migration is logged (db.migrate.apply) and so is the outcome
 * (db.migrate.done / db.migrate.failed). Returns NULL (logged) when conninfo
 * cannot be parsed or the list is malformed. The caller frees the runner
 * with pg_migrate_free(), also from inside done. */
struct pg_migrate *pg_migrate_start(struct event_base *base, const char *conninfo,
                                    const struct pg_migrate_opts *opts, pg_migrate_done_cb done,
                                    void *arg) __attribute__((warn_unused_result));

/* Stops the runner (done is not called) and closes its connection, which
 * releases the lock. A migration in flight commits or not, as a whole; the
 * next run sees which. NULL is a no-op. */
void pg_migrate_free(struct pg_migrate *m);

/* Migrations this run applied, and the highest version in the database
 * once it has been read (0 before). */
size_t pg_migrate_applied(const struct pg_migrate *m);
int pg_migrate_version(const struct pg_migrate *m);

/* SHA-256 of the text as 64 lowercase hex digits and a NUL: what
 * schema_migrations.checksum holds. */
void pg_migrate_checksum(const char *sql, size_t len, char out[65]);

/* The splitter. ---------------------------------------------------------------
 * The extended protocol runs ONE statement per message, so a file is cut
 * into statements the way psql cuts them: at a ';' outside '--' and (nested)
 * block comments, '...' strings ('' inside; E'...' also \'), "..."
 * identifiers, $tag$...$tag$ dollar quotes, parentheses, and the
 * BEGIN ... END body of CREATE [OR REPLACE] FUNCTION|PROCEDURE (psql's
 * heuristic). */
enum pg_sql_split {
	PG_SQL_STMT, /* [*start, *start + *len) is a statement */
	PG_SQL_END, /* nothing but whitespace, comments and ';' is left */
	PG_SQL_UNTERMINATED, /* a quote or comment opened at *start never ends */
};

/* Pure. Finds the statement at or after *pos in sql[0, len) and moves *pos
 * past it. A statement starts at its first token (leading whitespace and
 * comments skipped), ends before its ';' (or at the end of the text), has no
 * trailing whitespace and is never empty: ";;" and comment-only pieces are
 * skipped. */
enum pg_sql_split pg_sql_split_next(const char *sql, size_t len, size_t *pos, size_t *start,
                                    size_t *stmt_len);

#endif
