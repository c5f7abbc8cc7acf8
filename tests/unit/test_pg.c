/* Unit tests for db/pg.c's pure parts: the connection state table (every
 * edge walked against an independent statement of it) and the reconnect
 * backoff (bounds, growth, cap, full jitter). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "db/pg.h"

#define NSTATES (PG_CONN_CLOSED + 1)

static bool edge_expected(enum pg_conn_state f, enum pg_conn_state t)
{
	if (t == PG_CONN_CLOSED)
		return f != PG_CONN_CLOSED; /* free from anywhere, once */
	switch (f) {
	case PG_CONN_DISCONNECTED: return t == PG_CONN_CONNECTING;
	case PG_CONN_CONNECTING: return t == PG_CONN_READY || t == PG_CONN_DISCONNECTED;
	case PG_CONN_READY: return t == PG_CONN_BUSY || t == PG_CONN_DISCONNECTED;
	case PG_CONN_BUSY: return t == PG_CONN_READY || t == PG_CONN_DISCONNECTED;
	default: return false;
	}
}

static void test_state_table(void **state)
{
	for (int f = 0; f < NSTATES; f++) {
		assert_non_null(pg_conn_state_name((enum pg_conn_state)f));
		for (int t = 0; t < NSTATES; t++)
			assert_int_equal(
			        pg_conn_state_allowed((enum pg_conn_state)f, (enum pg_conn_state)t),
			        edge_expected((enum pg_conn_state)f, (enum pg_conn_state)t));
	}
}

static void test_backoff(void **state)
{
	/* within [min, min(max, min * 2^(attempt+1))] for every draw */
	for (unsigned attempt = 0; attempt < 20; attempt++) {
		uint64_t ceil = 100ull << (attempt + 1);
		if (ceil > 5000)
			ceil = 5000;
		unsigned lo = ~0u, hi = 0;
		for (uint32_t rnd = 0; rnd < 20000; rnd += 7) {
			unsigned d = pg_conn_backoff_ms(100, 5000, attempt, rnd * 2654435761u);
			assert_true(d >= 100 && d <= ceil);
			lo = d < lo ? d : lo;
			hi = d > hi ? d : hi;
		}
		/* full jitter: the draws spread over the range */
		assert_true(lo < 100 + (ceil - 100) / 4);
		assert_true(hi > 100 + 3 * (ceil - 100) / 4);
	}
	/* degenerate settings stay sane */
	assert_int_equal(pg_conn_backoff_ms(200, 100, 3, 12345), 200);
	assert_int_equal(pg_conn_backoff_ms(500, 500, 9, 99), 500);
	assert_true(pg_conn_backoff_ms(0, 10, 50, 7) <= 10);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_state_table),
	        cmocka_unit_test(test_backoff),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
