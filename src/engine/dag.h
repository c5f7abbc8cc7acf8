/* dag: the pure planner behind a pipeline's stages. It knows nodes 0..n-1
 * (numbered in the order the config declares them) and which nodes each one
 * depends on; it owns nothing else and does no I/O. It gives the stable
 * topological order (ties keep declaration order), one cycle when there is
 * no order, the ready set of a running job, and the descendants (retry from
 * a stage) and ancestors (resume_from) of a node. */
#ifndef SL_ENGINE_DAG_H
#define SL_ENGINE_DAG_H

#include <stdbool.h>
#include <stddef.h>

struct dag;

/* A graph of n nodes and no edges; the caller frees it with dag_free(). */
struct dag *dag_new(size_t n);
void dag_free(struct dag *d);
size_t dag_size(const struct dag *d);

/* Records that node depends on dep (dep must finish before node starts).
 * A repeated edge is kept once; node == dep is allowed and is a cycle.
 * Returns false, changing nothing, when an index is out of range. */
bool dag_add_dep(struct dag *d, size_t node, size_t dep) __attribute__((warn_unused_result));

/* The nodes node depends on, in the order they were added (borrowed; valid
 * until the next dag_add_dep or dag_free). *n gets their count. */
const size_t *dag_deps(const struct dag *d, size_t node, size_t *n);
/* The nodes that depend on node, in ascending index order (borrowed, as
 * above). */
const size_t *dag_users(const struct dag *d, size_t node, size_t *n);

/* Kahn's algorithm, always taking the lowest-numbered node among those whose
 * dependencies are placed, so independent nodes keep declaration order.
 * On success order[0..n-1] holds every node once and true is returned.
 * On a cycle returns false, and when cycle is not NULL sets *cycle to a new
 * array (the caller frees it) of *ncycle nodes c0, c1, ..., where each c[i+1]
 * depends on c[i] and c0 depends on the last one: read "c0 -> c1 -> ... ->
 * c0" in the direction work flows. c0 is the lowest-numbered node of that
 * cycle; a self-dependency is a cycle of one node. order is then unspecified. */
bool dag_sort(const struct dag *d, size_t order[], size_t **cycle, size_t *ncycle);

/* Nodes that may start now: not started and every dependency done.
 * done[i]: node i's outcome lets its dependents run (completed or reused).
 * started[i]: node i has left `pending` (ready, running, finished, skipped).
 * Writes them to out (room for n) in ascending order; returns how many. */
size_t dag_ready(const struct dag *d, const bool done[], const bool started[], size_t out[]);

/* out[i] (all n entries written) becomes true for every node that depends on
 * node, directly or transitively, and for node itself when include_self. */
void dag_descendants(const struct dag *d, size_t node, bool include_self, bool out[]);
/* out[i] becomes true for every node that node depends on, directly or
 * transitively, and for node itself when include_self. */
void dag_ancestors(const struct dag *d, size_t node, bool include_self, bool out[]);

#endif
