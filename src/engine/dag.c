/* The DAG planner: adjacency lists both ways, Kahn's algorithm over a
 * min-heap of node numbers (so ties fall back to declaration order), and
 * plain depth-first walks for the ready, descendant and ancestor sets. Pure:
 * no config, no I/O; sizes are whatever the caller asks for. */
#include "engine/dag.h"

#include <stdlib.h>
#include <string.h>

#include "core/xmalloc.h"

struct dag_node {
	size_t *deps; /* in insertion order */
	size_t ndeps;
	size_t *users; /* ascending */
	size_t nusers;
};

struct dag {
	size_t n;
	struct dag_node *nodes;
};

struct dag *dag_new(size_t n)
{
	struct dag *d = xcalloc(1, sizeof *d);
	d->n = n;
	d->nodes = xcalloc(n ? n : 1, sizeof *d->nodes);
	return d;
}

void dag_free(struct dag *d)
{
	if (d == NULL)
		return;
	for (size_t i = 0; i < d->n; i++) {
		free(d->nodes[i].deps);
		free(d->nodes[i].users);
	}
	free(d->nodes);
	free(d);
}

size_t dag_size(const struct dag *d)
{
	return d->n;
}

bool dag_add_dep(struct dag *d, size_t node, size_t dep)
{
	if (node >= d->n || dep >= d->n)
		return false;
	struct dag_node *a = &d->nodes[node];
	for (size_t i = 0; i < a->ndeps; i++) {
		if (a->deps[i] == dep)
			return true;
	}
	a->deps = xrealloc(a->deps, (a->ndeps + 1) * sizeof *a->deps);
	a->deps[a->ndeps++] = dep;

	struct dag_node *b = &d->nodes[dep];
	b->users = xrealloc(b->users, (b->nusers + 1) * sizeof *b->users);
	size_t at = b->nusers++;
	while (at > 0 && b->users[at - 1] > node) {
		b->users[at] = b->users[at - 1];
		at--;
	}
	b->users[at] = node;
	return true;
}

const size_t *dag_deps(const struct dag *d, size_t node, size_t *n)
{
	*n = d->nodes[node].ndeps;
	return d->nodes[node].deps;
}

const size_t *dag_users(const struct dag *d, size_t node, size_t *n)
{
	*n = d->nodes[node].nusers;
	return d->nodes[node].users;
}

/* A binary min-heap of node numbers. */
struct heap {
	size_t *v;
	size_t n;
};

static void heap_push(struct heap *h, size_t x)
{
	size_t i = h->n++;
	while (i > 0 && h->v[(i - 1) / 2] > x) {
		h->v[i] = h->v[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	h->v[i] = x;
}

static size_t heap_pop(struct heap *h)
{
	size_t top = h->v[0];
	size_t last = h->v[--h->n];
	size_t i = 0;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= h->n)
			break;
		if (c + 1 < h->n && h->v[c + 1] < h->v[c])
			c++;
		if (h->v[c] >= last)
			break;
		h->v[i] = h->v[c];
		i = c;
	}
	if (h->n > 0)
		h->v[i] = last;
	return top;
}

/* Every node left after Kahn's algorithm still waits on another left-over
 * node, so walking "depends on" edges inside that set must close a loop.
 * The walk goes against the flow; the result is reversed and rotated so it
 * reads in the flow's direction from its lowest node. */
static void find_cycle(const struct dag *d, const size_t *indeg, size_t **cycle, size_t *ncycle)
{
	size_t n = d->n;
	size_t start = 0;
	while (indeg[start] == 0)
		start++;
	size_t *path = xmalloc(n * sizeof *path);
	size_t *pos = xmalloc(n * sizeof *pos); /* position in path, n = not on it */
	for (size_t i = 0; i < n; i++)
		pos[i] = n;
	size_t len = 0, cur = start;
	while (pos[cur] == n) {
		pos[cur] = len;
		path[len++] = cur;
		const struct dag_node *a = &d->nodes[cur];
		size_t next = n;
		for (size_t i = 0; i < a->ndeps; i++) {
			if (indeg[a->deps[i]] > 0 && a->deps[i] < next)
				next = a->deps[i];
		}
		cur = next; /* always found: see above */
	}
	size_t first = pos[cur], k = len - first;
	size_t *c = xmalloc(k * sizeof *c);
	size_t low = 0;
	for (size_t i = 0; i < k; i++) {
		c[i] = path[len - 1 - i];
		if (c[i] < c[low])
			low = i;
	}
	size_t *out = xmalloc(k * sizeof *out);
	for (size_t i = 0; i < k; i++)
		out[i] = c[(low + i) % k];
	free(c);
	free(pos);
	free(path);
	*cycle = out;
	*ncycle = k;
}

bool dag_sort(const struct dag *d, size_t order[], size_t **cycle, size_t *ncycle)
{
	size_t n = d->n;
	if (cycle != NULL) {
		*cycle = NULL;
		*ncycle = 0;
	}
	size_t *indeg = xmalloc((n ? n : 1) * sizeof *indeg);
	struct heap h = {xmalloc((n ? n : 1) * sizeof *h.v), 0};
	for (size_t i = 0; i < n; i++) {
		indeg[i] = d->nodes[i].ndeps;
		if (indeg[i] == 0)
			heap_push(&h, i);
	}
	size_t placed = 0;
	while (h.n > 0) {
		size_t x = heap_pop(&h);
		order[placed++] = x;
		const struct dag_node *a = &d->nodes[x];
		for (size_t i = 0; i < a->nusers; i++) {
			if (--indeg[a->users[i]] == 0)
				heap_push(&h, a->users[i]);
		}
	}
	bool ok = placed == n;
	if (!ok && cycle != NULL)
		find_cycle(d, indeg, cycle, ncycle);
	free(h.v);
	free(indeg);
	return ok;
}

size_t dag_ready(const struct dag *d, const bool done[], const bool started[], size_t out[])
{
	size_t k = 0;
	for (size_t i = 0; i < d->n; i++) {
		if (started[i])
			continue;
		const struct dag_node *a = &d->nodes[i];
		bool ok = true;
		for (size_t j = 0; j < a->ndeps && ok; j++)
			ok = done[a->deps[j]];
		if (ok)
			out[k++] = i;
	}
	return k;
}

/* Marks everything reachable from node along users (down) or deps (up). */
static void walk(const struct dag *d, size_t node, bool down, bool include_self, bool out[])
{
	memset(out, 0, d->n * sizeof *out);
	if (node >= d->n)
		return;
	size_t *stack = xmalloc(d->n * sizeof *stack);
	size_t top = 0;
	stack[top++] = node;
	while (top > 0) {
		const struct dag_node *a = &d->nodes[stack[--top]];
		const size_t *next = down ? a->users : a->deps;
		size_t nnext = down ? a->nusers : a->ndeps;
		for (size_t i = 0; i < nnext; i++) {
			if (!out[next[i]]) {
				out[next[i]] = true;
				stack[top++] = next[i];
			}
		}
	}
	free(stack);
	/* In a cycle node reaches itself; the caller's choice still decides. */
	out[node] = include_self;
}

void dag_descendants(const struct dag *d, size_t node, bool include_self, bool out[])
{
	walk(d, node, true, include_self, out);
}

void dag_ancestors(const struct dag *d, size_t node, bool include_self, bool out[])
{
	walk(d, node, false, include_self, out);
}
