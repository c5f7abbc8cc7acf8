/* Unit tests for engine/dag: the stable topological order (ties keep
 * declaration order), §11's speech-demo shape, 64-node chains, fan-out/
 * fan-in and a seeded random DAG checked against a brute-force reference,
 * cycles named in flow order, ready sets as stages finish, and the
 * descendant / ancestor sets used by retry-from-stage and resume_from. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "engine/dag.h"

#define ADD(d, node, dep) assert_true(dag_add_dep((d), (node), (dep)))

static void assert_order(const size_t *got, const size_t *want, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (got[i] != want[i])
			print_message("order differs at %zu: got %zu, want %zu\n", i, got[i],
			              want[i]);
		assert_int_equal(got[i], want[i]);
	}
}

/* Every node once, and every dependency placed before its user. */
static void assert_topological(const struct dag *d, const size_t *order)
{
	size_t n = dag_size(d);
	size_t *pos = malloc((n ? n : 1) * sizeof *pos);
	for (size_t i = 0; i < n; i++)
		pos[i] = SIZE_MAX;
	for (size_t i = 0; i < n; i++) {
		assert_true(order[i] < n);
		assert_int_equal(pos[order[i]], SIZE_MAX);
		pos[order[i]] = i;
	}
	for (size_t v = 0; v < n; v++) {
		size_t nd;
		const size_t *deps = dag_deps(d, v, &nd);
		for (size_t j = 0; j < nd; j++)
			assert_true(pos[deps[j]] < pos[v]);
	}
	free(pos);
}

/* The definition the planner must meet, computed the slow way: repeatedly
 * take the lowest-numbered node whose dependencies are all placed. */
static bool reference_order(const struct dag *d, size_t *order)
{
	size_t n = dag_size(d);
	bool *placed = calloc(n ? n : 1, sizeof *placed);
	size_t k = 0;
	for (; k < n; k++) {
		size_t pick = SIZE_MAX;
		for (size_t v = 0; v < n && pick == SIZE_MAX; v++) {
			if (placed[v])
				continue;
			size_t nd;
			const size_t *deps = dag_deps(d, v, &nd);
			bool ok = true;
			for (size_t j = 0; j < nd && ok; j++)
				ok = placed[deps[j]];
			if (ok)
				pick = v;
		}
		if (pick == SIZE_MAX)
			break;
		placed[pick] = true;
		order[k] = pick;
	}
	free(placed);
	return k == n;
}

static void test_add_dep(void **state)
{
	struct dag *d = dag_new(3);
	assert_int_equal(dag_size(d), 3);
	assert_false(dag_add_dep(d, 3, 0));
	assert_false(dag_add_dep(d, 0, 3));
	ADD(d, 2, 0);
	ADD(d, 2, 0); /* kept once */
	ADD(d, 2, 1);
	ADD(d, 1, 0);
	size_t n;
	const size_t *deps = dag_deps(d, 2, &n);
	assert_int_equal(n, 2);
	assert_int_equal(deps[0], 0);
	assert_int_equal(deps[1], 1);
	const size_t *users = dag_users(d, 0, &n);
	assert_int_equal(n, 2);
	assert_int_equal(users[0], 1); /* ascending though added 2 first */
	assert_int_equal(users[1], 2);
	dag_deps(d, 0, &n);
	assert_int_equal(n, 0);
	dag_free(d);
	dag_free(NULL);

	struct dag *empty = dag_new(0);
	size_t order[1];
	assert_true(dag_sort(empty, order, NULL, NULL));
	dag_free(empty);
}

static void test_ties_keep_declaration_order(void **state)
{
	/* No edges: declaration order exactly. */
	struct dag *d = dag_new(6);
	size_t order[6];
	assert_true(dag_sort(d, order, NULL, NULL));
	assert_order(order, (size_t[]){0, 1, 2, 3, 4, 5}, 6);
	/* Node 0 waits for 3; once 3 is placed, 0 goes before 4 and 5 (the lowest
	 * ready node wins, not the one that became ready first). */
	ADD(d, 0, 3);
	assert_true(dag_sort(d, order, NULL, NULL));
	assert_order(order, (size_t[]){1, 2, 3, 0, 4, 5}, 6);
	/* 5 depends on 4, 4 on 1: still lowest-ready-first. */
	ADD(d, 5, 4);
	ADD(d, 4, 1);
	ADD(d, 2, 5);
	assert_true(dag_sort(d, order, NULL, NULL));
	assert_order(order, (size_t[]){1, 3, 0, 4, 5, 2}, 6);
	assert_topological(d, order);
	dag_free(d);
}

enum { TTS, NORMALIZE, ALIGN, TRANSCRIBE, STATS, SUBTITLES, REPORT, NSPEECH };

/* §11: tts -> normalize -> {align, transcribe, audio-stats}; align ->
 * subtitles; report needs align, transcribe, audio-stats. */
static struct dag *speech_demo(void)
{
	struct dag *d = dag_new(NSPEECH);
	ADD(d, NORMALIZE, TTS);
	ADD(d, ALIGN, NORMALIZE);
	ADD(d, TRANSCRIBE, NORMALIZE);
	ADD(d, STATS, NORMALIZE);
	ADD(d, SUBTITLES, ALIGN);
	ADD(d, REPORT, ALIGN);
	ADD(d, REPORT, TRANSCRIBE);
	ADD(d, REPORT, STATS);
	return d;
}

static void test_speech_demo_order(void **state)
{
	struct dag *d = speech_demo();
	size_t order[NSPEECH];
	assert_true(dag_sort(d, order, NULL, NULL));
	/* Stage numbers 1..7 in declaration order: tts 1, normalize 2, align 3,
	 * transcribe 4, audio-stats 5, subtitles 6, report 7. */
	assert_order(order, (size_t[]){TTS, NORMALIZE, ALIGN, TRANSCRIBE, STATS, SUBTITLES, REPORT},
	             NSPEECH);
	dag_free(d);

	/* The same graph declared backwards: dependencies still come first, and
	 * among the three parallel stages the earlier-declared goes first. */
	enum { R, SUB, ST, TR, AL, NO, TT };
	d = dag_new(7);
	ADD(d, NO, TT);
	ADD(d, AL, NO);
	ADD(d, TR, NO);
	ADD(d, ST, NO);
	ADD(d, SUB, AL);
	ADD(d, R, AL);
	ADD(d, R, TR);
	ADD(d, R, ST);
	size_t o2[7];
	assert_true(dag_sort(d, o2, NULL, NULL));
	assert_order(o2, (size_t[]){TT, NO, ST, TR, AL, R, SUB}, 7);
	assert_topological(d, o2);
	dag_free(d);
}

static void test_64_chain(void **state)
{
	enum { N = 64 };
	/* Declared backwards: node i depends on node i + 1. */
	struct dag *d = dag_new(N);
	for (size_t i = 0; i + 1 < N; i++)
		ADD(d, i, i + 1);
	size_t order[N];
	assert_true(dag_sort(d, order, NULL, NULL));
	for (size_t i = 0; i < N; i++)
		assert_int_equal(order[i], N - 1 - i);
	assert_topological(d, order);

	bool mask[N];
	dag_descendants(d, N - 1, true, mask);
	for (size_t i = 0; i < N; i++)
		assert_true(mask[i]);
	dag_ancestors(d, 0, false, mask);
	assert_false(mask[0]);
	for (size_t i = 1; i < N; i++)
		assert_true(mask[i]);
	dag_free(d);
}

static void test_64_fan_out_fan_in(void **state)
{
	enum { N = 64 };
	struct dag *d = dag_new(N);
	for (size_t i = 1; i + 1 < N; i++) {
		ADD(d, i, 0);
		ADD(d, N - 1, i);
	}
	size_t order[N];
	assert_true(dag_sort(d, order, NULL, NULL));
	for (size_t i = 0; i < N; i++)
		assert_int_equal(order[i], i);

	bool done[N] = {false}, started[N] = {false};
	size_t ready[N];
	assert_int_equal(dag_ready(d, done, started, ready), 1);
	assert_int_equal(ready[0], 0);
	done[0] = started[0] = true;
	/* Every middle node becomes ready at once. */
	assert_int_equal(dag_ready(d, done, started, ready), N - 2);
	for (size_t i = 0; i < N - 2; i++)
		assert_int_equal(ready[i], i + 1);
	for (size_t i = 1; i + 1 < N; i++)
		started[i] = done[i] = i != 30;
	started[30] = true; /* running */
	assert_int_equal(dag_ready(d, done, started, ready), 0);
	done[30] = true;
	assert_int_equal(dag_ready(d, done, started, ready), 1);
	assert_int_equal(ready[0], N - 1);
	dag_free(d);
}

/* A deterministic generator so the random DAG is the same on every run. */
static uint64_t rng_next(uint64_t *s)
{
	*s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
	return *s >> 33;
}

static void test_64_random(void **state)
{
	enum { N = 64 };
	for (uint64_t seed = 1; seed <= 20; seed++) {
		uint64_t s = seed;
		/* A hidden order (a shuffle); edges only go forward in it, so there
		 * is no cycle, but declaration order and flow order disagree. */
		size_t perm[N];
		for (size_t i = 0; i < N; i++)
			perm[i] = i;
		for (size_t i = N - 1; i > 0; i--) {
			size_t j = rng_next(&s) % (i + 1), t = perm[i];
			perm[i] = perm[j];
			perm[j] = t;
		}
		struct dag *d = dag_new(N);
		size_t edges = 0;
		for (size_t i = 0; i < N; i++) {
			for (size_t j = i + 1; j < N; j++) {
				if (rng_next(&s) % 100 < 8) {
					ADD(d, perm[j], perm[i]);
					edges++;
				}
			}
		}
		assert_true(edges > 50);
		size_t order[N], want[N];
		assert_true(dag_sort(d, order, NULL, NULL));
		assert_topological(d, order);
		assert_true(reference_order(d, want));
		assert_order(order, want, N);

		/* Ready sets while walking the order: each ready set is exactly the
		 * nodes whose deps are done, and the next node is always in it. */
		bool done[N] = {false}, started[N] = {false};
		size_t ready[N];
		for (size_t i = 0; i < N; i++) {
			size_t k = dag_ready(d, done, started, ready);
			bool found = false;
			for (size_t j = 0; j < k; j++) {
				found = found || ready[j] == order[i];
				if (j > 0)
					assert_true(ready[j - 1] < ready[j]);
			}
			assert_true(found);
			started[order[i]] = done[order[i]] = true;
		}

		/* Descendants and ancestors agree with each other. */
		bool desc[N], anc[N];
		for (size_t a = 0; a < N; a++) {
			dag_descendants(d, a, false, desc);
			for (size_t b = 0; b < N; b++) {
				dag_ancestors(d, b, false, anc);
				assert_int_equal(desc[b], anc[a]);
			}
		}
		dag_free(d);
	}
}

/* Checks that cycle reads c0 -> c1 -> ... -> c0 along real edges. */
static void assert_cycle(const struct dag *d, const size_t *c, size_t k)
{
	for (size_t i = 0; i < k; i++) {
		size_t from = c[i], to = c[(i + 1) % k];
		size_t nd;
		const size_t *deps = dag_deps(d, to, &nd);
		bool edge = false;
		for (size_t j = 0; j < nd; j++)
			edge = edge || deps[j] == from;
		assert_true(edge);
		assert_true(c[0] <= c[i]);
	}
}

static void test_cycles(void **state)
{
	size_t order[10], *cycle, ncycle;

	/* Self loop. */
	struct dag *d = dag_new(3);
	ADD(d, 2, 0);
	ADD(d, 1, 1);
	assert_false(dag_sort(d, order, &cycle, &ncycle));
	assert_int_equal(ncycle, 1);
	assert_int_equal(cycle[0], 1);
	free(cycle);
	assert_false(dag_sort(d, order, NULL, NULL)); /* cycle not wanted */
	dag_free(d);

	/* Two nodes need each other. */
	d = dag_new(3);
	ADD(d, 0, 2);
	ADD(d, 2, 0);
	ADD(d, 1, 0);
	assert_false(dag_sort(d, order, &cycle, &ncycle));
	assert_int_equal(ncycle, 2);
	assert_int_equal(cycle[0], 0);
	assert_int_equal(cycle[1], 2);
	assert_cycle(d, cycle, ncycle);
	free(cycle);
	dag_free(d);

	/* a needs c, b needs a, c needs b: a -> b -> c -> a. */
	d = dag_new(3);
	ADD(d, 0, 2);
	ADD(d, 1, 0);
	ADD(d, 2, 1);
	assert_false(dag_sort(d, order, &cycle, &ncycle));
	assert_int_equal(ncycle, 3);
	assert_order(cycle, (size_t[]){0, 1, 2}, 3);
	free(cycle);
	dag_free(d);

	/* A long cycle 3 -> 7 -> 5 -> 9 -> 8 -> 3 with a tail leading into it
	 * (0 -> 1 -> 3), nodes hanging off it (9 -> 4, 6 needs 4) and a clean
	 * part (2). */
	d = dag_new(10);
	ADD(d, 1, 0);
	ADD(d, 3, 1);
	ADD(d, 7, 3);
	ADD(d, 5, 7);
	ADD(d, 9, 5);
	ADD(d, 8, 9);
	ADD(d, 3, 8);
	ADD(d, 4, 9);
	ADD(d, 6, 4);
	assert_false(dag_sort(d, order, &cycle, &ncycle));
	assert_int_equal(ncycle, 5);
	assert_order(cycle, (size_t[]){3, 7, 5, 9, 8}, 5);
	assert_cycle(d, cycle, ncycle);
	free(cycle);
	dag_free(d);

	/* Walking in from a node outside the cycle still finds the loop. */
	d = dag_new(4);
	ADD(d, 0, 3); /* 0 is left over but not on the cycle 2 <-> 3 */
	ADD(d, 3, 2);
	ADD(d, 2, 3);
	assert_false(dag_sort(d, order, &cycle, &ncycle));
	assert_int_equal(ncycle, 2);
	assert_order(cycle, (size_t[]){2, 3}, 2);
	free(cycle);
	dag_free(d);
}

static void test_ready_sets(void **state)
{
	struct dag *d = speech_demo();
	bool done[NSPEECH] = {false}, started[NSPEECH] = {false};
	size_t ready[NSPEECH];

	assert_int_equal(dag_ready(d, done, started, ready), 1);
	assert_int_equal(ready[0], TTS);
	started[TTS] = true; /* running: nothing else yet */
	assert_int_equal(dag_ready(d, done, started, ready), 0);
	done[TTS] = true;
	assert_int_equal(dag_ready(d, done, started, ready), 1);
	assert_int_equal(ready[0], NORMALIZE);
	started[NORMALIZE] = done[NORMALIZE] = true;

	/* The three branches become ready together. */
	assert_int_equal(dag_ready(d, done, started, ready), 3);
	assert_order(ready, (size_t[]){ALIGN, TRANSCRIBE, STATS}, 3);
	started[ALIGN] = true;
	assert_int_equal(dag_ready(d, done, started, ready), 2);
	assert_order(ready, (size_t[]){TRANSCRIBE, STATS}, 2);
	done[ALIGN] = true;
	assert_int_equal(dag_ready(d, done, started, ready), 3);
	assert_order(ready, (size_t[]){TRANSCRIBE, STATS, SUBTITLES}, 3);
	started[TRANSCRIBE] = started[STATS] = started[SUBTITLES] = true;
	done[TRANSCRIBE] = done[SUBTITLES] = true;
	assert_int_equal(dag_ready(d, done, started, ready), 0); /* report waits on stats */
	done[STATS] = true;
	assert_int_equal(dag_ready(d, done, started, ready), 1);
	assert_int_equal(ready[0], REPORT);
	dag_free(d);
}

static void assert_mask(const bool *got, const bool *want, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (got[i] != want[i])
			print_message("mask differs at %zu\n", i);
		assert_int_equal(got[i], want[i]);
	}
}

static void test_descendants_ancestors(void **state)
{
	struct dag *d = speech_demo();
	bool m[NSPEECH];

	/* Retry from align: align, subtitles, report re-run. */
	dag_descendants(d, ALIGN, true, m);
	assert_mask(m, (bool[NSPEECH]){[ALIGN] = true, [SUBTITLES] = true, [REPORT] = true},
	            NSPEECH);
	dag_descendants(d, ALIGN, false, m);
	assert_mask(m, (bool[NSPEECH]){[SUBTITLES] = true, [REPORT] = true}, NSPEECH);
	dag_descendants(d, NORMALIZE, false, m);
	assert_mask(m,
	            (bool[NSPEECH]){[ALIGN] = true,
	                            [TRANSCRIBE] = true,
	                            [STATS] = true,
	                            [SUBTITLES] = true,
	                            [REPORT] = true},
	            NSPEECH);
	dag_descendants(d, REPORT, false, m);
	assert_mask(m, (bool[NSPEECH]){false}, NSPEECH);

	/* resume_from report: everything before it is reused. */
	dag_ancestors(d, REPORT, false, m);
	assert_mask(m,
	            (bool[NSPEECH]){[TTS] = true,
	                            [NORMALIZE] = true,
	                            [ALIGN] = true,
	                            [TRANSCRIBE] = true,
	                            [STATS] = true},
	            NSPEECH);
	dag_ancestors(d, SUBTITLES, true, m);
	assert_mask(m,
	            (bool[NSPEECH]){
	                    [TTS] = true, [NORMALIZE] = true, [ALIGN] = true, [SUBTITLES] = true},
	            NSPEECH);
	dag_ancestors(d, TTS, false, m);
	assert_mask(m, (bool[NSPEECH]){false}, NSPEECH);
	dag_free(d);

	/* In a cycle a node reaches itself; include_self still decides. */
	d = dag_new(2);
	ADD(d, 0, 1);
	ADD(d, 1, 0);
	bool c[2];
	dag_descendants(d, 0, false, c);
	assert_false(c[0]);
	assert_true(c[1]);
	dag_ancestors(d, 1, true, c);
	assert_true(c[0]);
	assert_true(c[1]);
	dag_free(d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_add_dep),
	        cmocka_unit_test(test_ties_keep_declaration_order),
	        cmocka_unit_test(test_speech_demo_order),
	        cmocka_unit_test(test_64_chain),
	        cmocka_unit_test(test_64_fan_out_fan_in),
	        cmocka_unit_test(test_64_random),
	        cmocka_unit_test(test_cycles),
	        cmocka_unit_test(test_ready_sets),
	        cmocka_unit_test(test_descendants_ancestors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
