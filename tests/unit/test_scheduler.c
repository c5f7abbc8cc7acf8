/* Unit tests for the scheduler's pure parts: the retry backoff (exponential,
 * full jitter, capped) and the DAG step run on every fresh read of a job
 * (ready after dependencies, skips along failed optional paths, fail fast on
 * a required failure, reused stages counting as done, settling). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <string.h>

#include "engine/scheduler.h"

static void test_backoff_bounds(void **state)
{
	(void)state;
	/* rnd 0 -> 0; rnd just under 1 -> just under base * 2^retries */
	assert_int_equal(scheduler_backoff_ms(1000, 300000, 0, 0.0), 0);
	assert_in_range(scheduler_backoff_ms(1000, 300000, 0, 0.999999), 990, 999);
	assert_in_range(scheduler_backoff_ms(1000, 300000, 1, 0.999999), 1990, 1999);
	assert_in_range(scheduler_backoff_ms(1000, 300000, 3, 0.999999), 7990, 7999);
	assert_int_equal(scheduler_backoff_ms(1000, 300000, 2, 0.5), 2000);
	/* capped */
	assert_in_range(scheduler_backoff_ms(1000, 300000, 20, 0.999999), 299000, 299999);
	assert_int_equal(scheduler_backoff_ms(1000, 300000, 1000, 0.5), 150000);
	/* out-of-range inputs stay in range */
	assert_int_equal(scheduler_backoff_ms(1000, 300000, -5, 0.5), 500);
	assert_in_range(scheduler_backoff_ms(1000, 300000, 0, 7.0), 0, 999);
	assert_int_equal(scheduler_backoff_ms(1000, 300000, 0, -1.0), 0);
	assert_int_equal(scheduler_backoff_ms(0, 300000, 4, 0.9), 0);
	/* no cap */
	assert_in_range(scheduler_backoff_ms(100, 0, 10, 0.999999), 102300, 102400);
}

static void test_backoff_monotone_in_rnd(void **state)
{
	(void)state;
	for (int r = 0; r < 12; r++) {
		int64_t prev = -1;
		for (int i = 0; i < 100; i++) {
			int64_t v = scheduler_backoff_ms(250, 60000, r, i / 100.0);
			assert_true(v >= prev);
			assert_true(v >= 0 && v <= 60000);
			prev = v;
		}
	}
}

/* a -> b, a -> c, b + c -> d */
static const size_t dep_a[] = {0};
static const size_t dep_bc[] = {1, 2};

static void diamond(struct adv_task t[4], enum adv_task_status a, enum adv_task_status b,
                    enum adv_task_status c, enum adv_task_status d)
{
	memset(t, 0, 4 * sizeof *t);
	t[0].status = a;
	t[1].status = b;
	t[2].status = c;
	t[3].status = d;
	for (int i = 0; i < 4; i++)
		t[i].required = true;
	t[1].deps = dep_a;
	t[1].ndeps = 1;
	t[2].deps = dep_a;
	t[2].ndeps = 1;
	t[3].deps = dep_bc;
	t[3].ndeps = 2;
}

static void test_advance_parallel_branch_ready(void **state)
{
	(void)state;
	struct adv_task t[4];
	size_t failed = 99;
	diamond(t, ADV_COMPLETED, ADV_PENDING, ADV_PENDING, ADV_PENDING);
	assert_int_equal(scheduler_advance_plan(t, 4, &failed), ADV_JOB_NOTHING);
	assert_int_equal(t[1].next, ADV_READY);
	assert_int_equal(t[2].next, ADV_READY);
	assert_int_equal(t[3].next, ADV_PENDING);
	/* one branch done, the other running: d waits */
	diamond(t, ADV_COMPLETED, ADV_COMPLETED, ADV_RUNNING, ADV_PENDING);
	assert_int_equal(scheduler_advance_plan(t, 4, &failed), ADV_JOB_NOTHING);
	assert_int_equal(t[3].next, ADV_PENDING);
	diamond(t, ADV_COMPLETED, ADV_COMPLETED, ADV_COMPLETED, ADV_PENDING);
	assert_int_equal(scheduler_advance_plan(t, 4, &failed), ADV_JOB_NOTHING);
	assert_int_equal(t[3].next, ADV_READY);
	diamond(t, ADV_COMPLETED, ADV_COMPLETED, ADV_COMPLETED, ADV_COMPLETED);
	assert_int_equal(scheduler_advance_plan(t, 4, &failed), ADV_JOB_COMPLETE);
	for (int i = 0; i < 4; i++)
		assert_int_equal(t[i].next, t[i].status);
}

static void test_advance_optional_failure_skips_dependents(void **state)
{
	(void)state;
	struct adv_task t[4];
	size_t failed = 99;
	diamond(t, ADV_COMPLETED, ADV_COMPLETED, ADV_FAILED, ADV_PENDING);
	t[2].required = false;
	assert_int_equal(scheduler_advance_plan(t, 4, &failed), ADV_JOB_COMPLETE);
	assert_int_equal(t[3].next, ADV_SKIPPED);
	assert_int_equal(t[3].cause, 2);
	assert_int_equal(failed, 99);
	/* the skip travels down a chain, naming the failed stage */
	static const size_t d0[] = {0}, d1[] = {1}, d2[] = {2};
	struct adv_task c[4] = {
	        {.status = ADV_FAILED, .required = false},
	        {.status = ADV_PENDING, .required = true, .deps = d0, .ndeps = 1},
	        {.status = ADV_PENDING, .required = true, .deps = d1, .ndeps = 1},
	        {.status = ADV_PENDING, .required = true, .deps = d2, .ndeps = 1},
	};
	assert_int_equal(scheduler_advance_plan(c, 4, &failed), ADV_JOB_COMPLETE);
	for (int i = 1; i < 4; i++) {
		assert_int_equal(c[i].next, ADV_SKIPPED);
		assert_int_equal(c[i].cause, 0);
	}
}

static void test_advance_required_failure_fails_fast(void **state)
{
	(void)state;
	struct adv_task t[4];
	size_t failed = 99;
	diamond(t, ADV_COMPLETED, ADV_FAILED, ADV_READY, ADV_PENDING);
	assert_int_equal(scheduler_advance_plan(t, 4, &failed), ADV_JOB_FAIL);
	assert_int_equal(failed, 1);
	assert_int_equal(t[2].next, ADV_CANCELLED);
	assert_int_equal(t[3].next, ADV_CANCELLED);
	assert_int_equal(t[0].next, ADV_COMPLETED);
	/* a running sibling is left to its instance (it sees the job stop) */
	diamond(t, ADV_COMPLETED, ADV_FAILED, ADV_RUNNING, ADV_PENDING);
	assert_int_equal(scheduler_advance_plan(t, 4, &failed), ADV_JOB_FAIL);
	assert_int_equal(t[2].next, ADV_RUNNING);
	/* the first required failure in stage order is the job's error */
	diamond(t, ADV_COMPLETED, ADV_FAILED, ADV_FAILED, ADV_PENDING);
	t[1].required = false;
	assert_int_equal(scheduler_advance_plan(t, 4, &failed), ADV_JOB_FAIL);
	assert_int_equal(failed, 2);
}

static void test_advance_reused_counts_as_done(void **state)
{
	(void)state;
	struct adv_task t[4];
	size_t failed = 99;
	diamond(t, ADV_SKIPPED, ADV_PENDING, ADV_SKIPPED, ADV_PENDING);
	t[0].reused = true;
	t[2].reused = true;
	assert_int_equal(scheduler_advance_plan(t, 4, &failed), ADV_JOB_NOTHING);
	assert_int_equal(t[1].next, ADV_READY);
	assert_int_equal(t[3].next, ADV_PENDING);
	diamond(t, ADV_SKIPPED, ADV_COMPLETED, ADV_SKIPPED, ADV_PENDING);
	t[0].reused = true;
	t[2].reused = true;
	assert_int_equal(scheduler_advance_plan(t, 4, &failed), ADV_JOB_NOTHING);
	assert_int_equal(t[3].next, ADV_READY);
	/* a skip that is not a reuse blocks */
	diamond(t, ADV_COMPLETED, ADV_COMPLETED, ADV_SKIPPED, ADV_PENDING);
	assert_int_equal(scheduler_advance_plan(t, 4, &failed), ADV_JOB_COMPLETE);
	assert_int_equal(t[3].next, ADV_SKIPPED);
}

static void test_advance_cancelled_and_empty(void **state)
{
	(void)state;
	struct adv_task t[4];
	size_t failed = 99;
	diamond(t, ADV_COMPLETED, ADV_CANCELLED, ADV_COMPLETED, ADV_PENDING);
	t[1].required = false;
	assert_int_equal(scheduler_advance_plan(t, 4, &failed), ADV_JOB_COMPLETE);
	assert_int_equal(t[3].next, ADV_SKIPPED);
	assert_int_equal(scheduler_advance_plan(t, 0, &failed), ADV_JOB_COMPLETE);
	/* retry-from-stage leaves the stage pending with done dependencies */
	diamond(t, ADV_COMPLETED, ADV_COMPLETED, ADV_PENDING, ADV_PENDING);
	assert_int_equal(scheduler_advance_plan(t, 4, &failed), ADV_JOB_NOTHING);
	assert_int_equal(t[2].next, ADV_READY);
	assert_int_equal(t[3].next, ADV_PENDING);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_backoff_bounds),
	        cmocka_unit_test(test_backoff_monotone_in_rnd),
	        cmocka_unit_test(test_advance_parallel_branch_ready),
	        cmocka_unit_test(test_advance_optional_failure_skips_dependents),
	        cmocka_unit_test(test_advance_required_failure_fails_fast),
	        cmocka_unit_test(test_advance_reused_counts_as_done),
	        cmocka_unit_test(test_advance_cancelled_and_empty),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
