/* Unit tests for the pure parts of db/: the migration SQL splitter
 * (comments, nested block comments, strings with ';', E'' strings,
 * quoted identifiers, dollar quotes with and without tags, nested-looking
 * dollar quotes, parameters, parentheses, BEGIN ATOMIC bodies, trailing
 * statements without ';', empty statements, unterminated input, and every
 * embedded migration), the migration checksum, the listener's channel
 * names, and the pool's routing choice. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db/listen.h"
#include "db/migrate.h"
#include "db/pool.h"

#define MAX_STMTS 16

/* Splits sql and checks the statements against the NULL-terminated list;
 * the split must end with PG_SQL_END. */
static void check_split(const char *sql, const char *const *want)
{
	size_t len = strlen(sql), pos = 0, start = 0, n = 0, i = 0;
	enum pg_sql_split r;
	while ((r = pg_sql_split_next(sql, len, &pos, &start, &n)) == PG_SQL_STMT) {
		if (!want[i])
			fail_msg("extra statement %zu: [%.*s] in [%s]", i + 1, (int)n, sql + start,
			         sql);
		if (strlen(want[i]) != n || memcmp(want[i], sql + start, n) != 0)
			fail_msg("statement %zu: got [%.*s], want [%s]", i + 1, (int)n, sql + start,
			         want[i]);
		assert_true(pos <= len);
		i++;
	}
	assert_int_equal(r, PG_SQL_END);
	assert_int_equal(pos, len);
	if (want[i])
		fail_msg("missing statement %zu: [%s] in [%s]", i + 1, want[i], sql);
	/* The end is sticky. */
	assert_int_equal(pg_sql_split_next(sql, len, &pos, &start, &n), PG_SQL_END);
}

#define SPLIT(sql, ...) check_split((sql), (const char *const[]){__VA_ARGS__ __VA_OPT__(, ) NULL})

/* The first non-statement result must be UNTERMINATED at offset at. */
static void check_unterminated(const char *sql, size_t nstmts, size_t at)
{
	size_t len = strlen(sql), pos = 0, start = 0, n = 0, k = 0;
	enum pg_sql_split r;
	while ((r = pg_sql_split_next(sql, len, &pos, &start, &n)) == PG_SQL_STMT)
		k++;
	assert_int_equal(k, nstmts);
	assert_int_equal(r, PG_SQL_UNTERMINATED);
	assert_int_equal(start, at);
	assert_int_equal(pos, len);
}

static void test_basic(void **state)
{
	SPLIT("SELECT 1; SELECT 2;", "SELECT 1", "SELECT 2");
	SPLIT("SELECT 1;SELECT 2", "SELECT 1", "SELECT 2");
	SPLIT("\n  SELECT\n 1  \n;\n", "SELECT\n 1");
	SPLIT("");
	SPLIT("   \n\t ");
}

static void test_trailing_without_semicolon(void **state)
{
	SPLIT("SELECT 1;\n  SELECT 2  \n", "SELECT 1", "SELECT 2");
	SPLIT("SELECT 'x'", "SELECT 'x'");
	/* A trailing comment stays with its statement; the server ignores it. */
	SPLIT("SELECT 1 -- done", "SELECT 1 -- done");
}

static void test_empty_statements_skipped(void **state)
{
	SPLIT(";;  ;\n SELECT 1;;; -- tail\n /* c */ ;", "SELECT 1");
	SPLIT("-- only a comment\n");
	SPLIT("/* only */ ; -- comments ;\n;");
}

static void test_comments(void **state)
{
	SPLIT("-- a; b\nSELECT 1 /* ; */ + 2; -- x;\nSELECT 3", "SELECT 1 /* ; */ + 2", "SELECT 3");
	/* Block comments nest in PostgreSQL. */
	SPLIT("/* outer /* inner ; */ still; */ SELECT 1; SELECT 2", "SELECT 1", "SELECT 2");
	SPLIT("SELECT 1 /* a /* b */ c; */; SELECT 2", "SELECT 1 /* a /* b */ c; */", "SELECT 2");
	/* "--" inside a string or an operator-looking "-" is not a comment. */
	SPLIT("SELECT '--;'; SELECT 3-1;", "SELECT '--;'", "SELECT 3-1");
	/* A comment opener inside a string is text. */
	SPLIT("SELECT '/*'; SELECT 2", "SELECT '/*'", "SELECT 2");
}

static void test_strings(void **state)
{
	SPLIT("SELECT 'a;b', 'it''s;'; SELECT 2", "SELECT 'a;b', 'it''s;'", "SELECT 2");
	SPLIT("INSERT INTO t VALUES (';'), ('''');SELECT 1", "INSERT INTO t VALUES (';'), ('''')",
	      "SELECT 1");
	/* Standard strings: a backslash is a plain character. */
	SPLIT("SELECT 'a\\'; SELECT 2", "SELECT 'a\\'", "SELECT 2");
	/* E'' strings: \' does not close. */
	SPLIT("SELECT E'a\\';b'; SELECT 2", "SELECT E'a\\';b'", "SELECT 2");
	SPLIT("SELECT e'x\\\\'; SELECT 2", "SELECT e'x\\\\'", "SELECT 2");
	/* A word merely ending in e is no prefix. */
	SPLIT("SELECT 1 AS none, 'a\\'; SELECT 2", "SELECT 1 AS none, 'a\\'", "SELECT 2");
	/* Other prefixes are plain strings. */
	SPLIT("SELECT U&'d\\0061t;', B'01', X'1F'; SELECT 2", "SELECT U&'d\\0061t;', B'01', X'1F'",
	      "SELECT 2");
	/* Bytes above 127 (UTF-8) pass through. */
	SPLIT("SELECT '\xc3\xa9;'; SELECT 2", "SELECT '\xc3\xa9;'", "SELECT 2");
}

static void test_quoted_identifiers(void **state)
{
	SPLIT("CREATE TABLE \"a;\"\"b\" (x int); SELECT 1", "CREATE TABLE \"a;\"\"b\" (x int)",
	      "SELECT 1");
	SPLIT("SELECT \"it's\"; SELECT 2", "SELECT \"it's\"", "SELECT 2");
}

static void test_dollar_quotes(void **state)
{
	SPLIT("CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql; SELECT 2",
	      "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql", "SELECT 2");
	SPLIT("DO $body$ BEGIN PERFORM 1; END $body$; SELECT 2",
	      "DO $body$ BEGIN PERFORM 1; END $body$", "SELECT 2");
	/* Quotes and comments mean nothing inside. */
	SPLIT("SELECT $$ it's -- /* ; $$; SELECT 2", "SELECT $$ it's -- /* ; $$", "SELECT 2");
	/* Tags are case-sensitive and may hold digits and underscores. */
	SPLIT("SELECT $A_1$ x; $a_1$ ; $A_1$; SELECT 2", "SELECT $A_1$ x; $a_1$ ; $A_1$",
	      "SELECT 2");
}

static void test_nested_looking_dollar_quotes(void **state)
{
	SPLIT("DO $outer$ BEGIN EXECUTE $inner$ SELECT 1; $inner$; END $outer$; SELECT 2",
	      "DO $outer$ BEGIN EXECUTE $inner$ SELECT 1; $inner$; END $outer$", "SELECT 2");
	/* $$ inside a tagged quote does not close it. */
	SPLIT("SELECT $a$ $$ ; $$ $a$; SELECT 2", "SELECT $a$ $$ ; $$ $a$", "SELECT 2");
	/* ...and a tagged one inside $$ does not either. */
	SPLIT("SELECT $$ $x$ ; $$; SELECT 2", "SELECT $$ $x$ ; $$", "SELECT 2");
}

static void test_not_dollar_quotes(void **state)
{
	/* Parameters and '$' inside identifiers open nothing. */
	SPLIT("SELECT $1; SELECT $2", "SELECT $1", "SELECT $2");
	SPLIT("SELECT a$b$c; SELECT 2", "SELECT a$b$c", "SELECT 2");
	SPLIT("SELECT $1::int, $22; SELECT 2", "SELECT $1::int, $22", "SELECT 2");
	/* A tag can't start with a digit. */
	SPLIT("SELECT $1a$; SELECT 2", "SELECT $1a$", "SELECT 2");
}

static void test_parentheses_and_atomic(void **state)
{
	/* psql keeps ';' inside parentheses (CREATE RULE ... DO (a; b)). */
	SPLIT("CREATE RULE r AS ON INSERT TO t DO ALSO (SELECT 1; SELECT 2); SELECT 3",
	      "CREATE RULE r AS ON INSERT TO t DO ALSO (SELECT 1; SELECT 2)", "SELECT 3");
	/* SQL-standard bodies: BEGIN ATOMIC ... END, CASE ... END inside. */
	SPLIT("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; "
	      "SELECT CASE WHEN true THEN 1 END; END; SELECT 2",
	      "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; "
	      "SELECT CASE WHEN true THEN 1 END; END",
	      "SELECT 2");
	SPLIT("create or replace procedure p() language sql begin atomic insert into t values "
	      "(1); end; SELECT 2",
	      "create or replace procedure p() language sql begin atomic insert into t values (1); "
	      "end",
	      "SELECT 2");
	/* Outside CREATE FUNCTION, BEGIN and END are statements. */
	SPLIT("BEGIN; SELECT 1; END;", "BEGIN", "SELECT 1", "END");
	SPLIT("SELECT CASE WHEN x THEN 1 END; SELECT 2", "SELECT CASE WHEN x THEN 1 END",
	      "SELECT 2");
	/* A $$ body of a CREATE FUNCTION hides its BEGIN ... END. */
	SPLIT("CREATE FUNCTION g() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END "
	      "$$; SELECT 2",
	      "CREATE FUNCTION g() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
	      "SELECT 2");
}

static void test_unterminated(void **state)
{
	check_unterminated("SELECT 'abc", 0, 7);
	check_unterminated("SELECT 1; /* open", 1, 10);
	check_unterminated("SELECT 1; /* a /* b */ still open", 1, 10);
	check_unterminated("SELECT $x$ abc $y$", 0, 7);
	check_unterminated("SELECT \"abc", 0, 7);
	check_unterminated("SELECT E'a\\'", 0, 8);
	check_unterminated("SELECT 'it''", 0, 7);
}

static void test_embedded_migrations(void **state)
{
	assert_true(pg_migrations_embedded_count >= 1);
	assert_int_equal(pg_migrations_embedded[0].version, 1);
	assert_string_equal(pg_migrations_embedded[0].name, "init");
	assert_null(pg_migrations_embedded[pg_migrations_embedded_count].sql);
	for (size_t m = 0; m < pg_migrations_embedded_count; m++) {
		const struct pg_migration *mg = &pg_migrations_embedded[m];
		if (m > 0)
			assert_true(mg->version > pg_migrations_embedded[m - 1].version);
		size_t len = strlen(mg->sql), pos = 0, start = 0, n = 0, count = 0;
		enum pg_sql_split r;
		while ((r = pg_sql_split_next(mg->sql, len, &pos, &start, &n)) == PG_SQL_STMT) {
			assert_true(n > 0);
			assert_true(mg->sql[start + n - 1] != ';');
			if (m == 0 && strncmp(mg->sql + start, "CREATE ", 7) != 0)
				fail_msg("0001 statement %zu does not start with CREATE: %.*s",
				         count + 1, (int)n, mg->sql + start);
			count++;
		}
		assert_int_equal(r, PG_SQL_END);
		assert_true(count >= 1);
	}
	/* 0001 is frozen once released (its checksum is stored), so its shape
	 * may be pinned: 7 tables and 9 indexes. */
	const char *sql = pg_migrations_embedded[0].sql;
	size_t len = strlen(sql), pos = 0, start = 0, n = 0, count = 0;
	while (pg_sql_split_next(sql, len, &pos, &start, &n) == PG_SQL_STMT)
		count++;
	assert_int_equal(count, 16);
}

static void test_checksum(void **state)
{
	char out[65];
	pg_migrate_checksum("abc", 3, out);
	assert_string_equal(out,
	                    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	pg_migrate_checksum("", 0, out);
	assert_string_equal(out,
	                    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

static void test_channel_names(void **state)
{
	assert_true(pg_listener_channel_valid("jobs"));
	assert_true(pg_listener_channel_valid("job_events_2"));
	assert_true(pg_listener_channel_valid("0"));
	char name[70];
	memset(name, 'a', 63);
	name[63] = '\0';
	assert_true(pg_listener_channel_valid(name));
	name[63] = 'a';
	name[64] = '\0';
	assert_false(pg_listener_channel_valid(name));
	assert_false(pg_listener_channel_valid(NULL));
	assert_false(pg_listener_channel_valid(""));
	assert_false(pg_listener_channel_valid("Jobs"));
	assert_false(pg_listener_channel_valid("job-events"));
	assert_false(pg_listener_channel_valid("a\"b"));
	assert_false(pg_listener_channel_valid("a b"));
	assert_false(pg_listener_channel_valid("caf\xc3\xa9"));
}

/* The pool's routing. ---------------------------------------------------------- */

#define R(s) ((struct pg_pool_slot){.ready = true, .inflight = (s)})
#define C ((struct pg_pool_slot){.connecting = true})
#define D ((struct pg_pool_slot){0})

static void test_route_least_loaded(void **state)
{
	struct pg_pool_slot s[] = {R(3), R(1), R(2)};
	size_t pick = 99;
	assert_int_equal(pg_pool_route(s, 3, 16, 0, 1024, 0, &pick), PG_POOL_SEND);
	assert_int_equal(pick, 1);
	/* The start slot only breaks ties. */
	assert_int_equal(pg_pool_route(s, 3, 16, 0, 1024, 2, &pick), PG_POOL_SEND);
	assert_int_equal(pick, 1);
}

static void test_route_round_robin_ties(void **state)
{
	struct pg_pool_slot s[] = {R(0), R(0), R(0), R(0)};
	size_t pick = 99;
	for (size_t start = 0; start < 9; start++) {
		assert_int_equal(pg_pool_route(s, 4, 16, 0, 1024, start, &pick), PG_POOL_SEND);
		assert_int_equal(pick, start % 4);
	}
}

static void test_route_cap_and_waiting(void **state)
{
	size_t pick = 99;
	struct pg_pool_slot s[] = {R(16), R(16), R(15)};
	assert_int_equal(pg_pool_route(s, 3, 16, 0, 1024, 0, &pick), PG_POOL_SEND);
	assert_int_equal(pick, 2);
	s[2].inflight = 16;
	assert_int_equal(pg_pool_route(s, 3, 16, 0, 1024, 0, &pick), PG_POOL_WAIT);
	assert_int_equal(pg_pool_route(s, 3, 16, 1023, 1024, 0, &pick), PG_POOL_WAIT);
	assert_int_equal(pg_pool_route(s, 3, 16, 1024, 1024, 0, &pick), PG_POOL_FULL);
	/* FIFO: a free slot does not let a newcomer pass the ones waiting. */
	s[0].inflight = 0;
	assert_int_equal(pg_pool_route(s, 3, 16, 5, 1024, 0, &pick), PG_POOL_WAIT);
	assert_int_equal(pg_pool_route(s, 3, 16, 1024, 1024, 0, &pick), PG_POOL_FULL);
	/* The pump asks with waiting = 0 for the head. */
	assert_int_equal(pg_pool_route(s, 3, 16, 0, 1024, 1, &pick), PG_POOL_SEND);
	assert_int_equal(pick, 0);
}

static void test_route_not_ready(void **state)
{
	size_t pick = 99;
	/* An idle slot that is not ready is never picked. */
	struct pg_pool_slot s1[] = {D, R(7), C};
	assert_int_equal(pg_pool_route(s1, 3, 16, 0, 1024, 0, &pick), PG_POOL_SEND);
	assert_int_equal(pick, 1);
	/* Nothing ready, one connecting: wait for it. */
	struct pg_pool_slot s2[] = {D, C, D};
	assert_int_equal(pg_pool_route(s2, 3, 16, 0, 1024, 0, &pick), PG_POOL_WAIT);
	assert_int_equal(pg_pool_route(s2, 3, 16, 1024, 1024, 0, &pick), PG_POOL_FULL);
	/* Nothing ready or connecting: down, queue or not. */
	struct pg_pool_slot s3[] = {D, D, D};
	assert_int_equal(pg_pool_route(s3, 3, 16, 0, 1024, 0, &pick), PG_POOL_DOWN);
	assert_int_equal(pg_pool_route(s3, 3, 16, 10, 1024, 0, &pick), PG_POOL_DOWN);
	assert_int_equal(pg_pool_route(s3, 0, 16, 0, 1024, 0, &pick), PG_POOL_DOWN);
	/* Ready but all at the cap is still alive: wait, not down. */
	struct pg_pool_slot s4[] = {D, R(1)};
	assert_int_equal(pg_pool_route(s4, 2, 1, 0, 1024, 0, &pick), PG_POOL_WAIT);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_basic),
	        cmocka_unit_test(test_trailing_without_semicolon),
	        cmocka_unit_test(test_empty_statements_skipped),
	        cmocka_unit_test(test_comments),
	        cmocka_unit_test(test_strings),
	        cmocka_unit_test(test_quoted_identifiers),
	        cmocka_unit_test(test_dollar_quotes),
	        cmocka_unit_test(test_nested_looking_dollar_quotes),
	        cmocka_unit_test(test_not_dollar_quotes),
	        cmocka_unit_test(test_parentheses_and_atomic),
	        cmocka_unit_test(test_unterminated),
	        cmocka_unit_test(test_embedded_migrations),
	        cmocka_unit_test(test_checksum),
	        cmocka_unit_test(test_channel_names),
	        cmocka_unit_test(test_route_least_loaded),
	        cmocka_unit_test(test_route_round_robin_ties),
	        cmocka_unit_test(test_route_cap_and_waiting),
	        cmocka_unit_test(test_route_not_ready),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
