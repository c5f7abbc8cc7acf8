/* Unit tests for exec/module.c's pure parts: the task and process state
 * machines (every edge walked against an independent statement: states only
 * move forward, DONE/DEAD are final) and the restart backoff. The
 * supervisor itself is driven for real by tests/integration/test_modules.py. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "exec/module.h"

static bool task_edge(enum module_task_state f, enum module_task_state t)
{
	switch (f) {
	case MODULE_TASK_QUEUED:
		return t == MODULE_TASK_STARTING || t == MODULE_TASK_RUNNING ||
		       t == MODULE_TASK_DONE;
	case MODULE_TASK_STARTING: return t == MODULE_TASK_RUNNING || t == MODULE_TASK_DONE;
	case MODULE_TASK_RUNNING: return t == MODULE_TASK_ANSWERED || t == MODULE_TASK_DONE;
	case MODULE_TASK_ANSWERED: return t == MODULE_TASK_DONE;
	default: return false; /* DONE is final */
	}
}

static bool proc_edge(enum module_proc_state f, enum module_proc_state t)
{
	/* forward only, any later state may be skipped to */
	return f != MODULE_PROC_DEAD && t > f;
}

static void test_task_states(void **state)
{
	for (int f = 0; f < MODULE_TASK_NSTATES; f++) {
		assert_non_null(module_task_state_name((enum module_task_state)f));
		for (int t = 0; t < MODULE_TASK_NSTATES; t++)
			assert_int_equal(
			        module_task_state_allowed((enum module_task_state)f,
			                                  (enum module_task_state)t),
			        task_edge((enum module_task_state)f, (enum module_task_state)t));
	}
	assert_false(module_task_state_allowed(MODULE_TASK_NSTATES, MODULE_TASK_DONE));
}

static void test_proc_states(void **state)
{
	for (int f = 0; f < MODULE_PROC_NSTATES; f++) {
		assert_non_null(module_proc_state_name((enum module_proc_state)f));
		for (int t = 0; t < MODULE_PROC_NSTATES; t++)
			assert_int_equal(
			        module_proc_state_allowed((enum module_proc_state)f,
			                                  (enum module_proc_state)t),
			        proc_edge((enum module_proc_state)f, (enum module_proc_state)t));
	}
}

static void test_backoff(void **state)
{
	for (unsigned attempt = 0; attempt < 16; attempt++) {
		uint64_t ceil = 100ull << (attempt + 1);
		if (ceil > 5000)
			ceil = 5000;
		for (uint32_t rnd = 0; rnd < 5000; rnd += 13) {
			unsigned d = module_backoff_ms(100, 5000, attempt, rnd * 2246822519u);
			assert_true(d >= 100 && d <= ceil);
		}
	}
	assert_int_equal(module_backoff_ms(300, 300, 4, 77), 300);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_task_states),
	        cmocka_unit_test(test_proc_states),
	        cmocka_unit_test(test_backoff),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
