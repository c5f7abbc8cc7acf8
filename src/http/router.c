/* Template router. Routes are few (tens), so matching walks them in order
 * and compares segment by segment; a literal segment beats a parameter, so
 * /v1/jobs/search would win over /v1/jobs/{id}. Parameter values are
 * percent-decoded; an encoded NUL or slash makes the path invalid rather
 * than letting it reach a handler. */
#include "http/router.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/xmalloc.h"

#define ROUTER_MAX_SEGMENTS 64

struct route {
	char *template_;
	unsigned methods;
	void *handler;
	void *arg;
	size_t nseg;
	bool rest; /* the last segment is {name+}: one or more segments */
	struct {
		char *text; /* literal, or parameter name */
		bool param;
	} seg[ROUTER_MAX_SEGMENTS];
};

struct router {
	struct route *routes;
	size_t n;
};

struct router *router_new(void)
{
	return xcalloc(1, sizeof(struct router));
}

void router_free(struct router *r)
{
	if (r == NULL)
		return;
	for (size_t i = 0; i < r->n; i++) {
		free(r->routes[i].template_);
		for (size_t s = 0; s < r->routes[i].nseg; s++)
			free(r->routes[i].seg[s].text);
	}
	free(r->routes);
	free(r);
}

static bool parse_template(struct route *rt, const char *t)
{
	if (t[0] != '/')
		return false;
	rt->nseg = 0;
	const char *p = t + 1;
	if (*p == '\0')
		return true; /* "/" */
	for (;;) {
		const char *e = strchr(p, '/');
		size_t len = e ? (size_t)(e - p) : strlen(p);
		if (len == 0 || rt->nseg == ROUTER_MAX_SEGMENTS)
			return false;
		bool param = p[0] == '{';
		if (param && (len < 3 || p[len - 1] != '}'))
			return false;
		if (!param && memchr(p, '{', len))
			return false;
		bool rest = param && p[len - 2] == '+';
		if (rest && (e != NULL || len < 4))
			return false; /* {name+} only last, with a name */
		rt->seg[rt->nseg].param = param;
		rt->seg[rt->nseg].text = param ? xstrndup(p + 1, len - 2 - rest) : xstrndup(p, len);
		rt->nseg++;
		rt->rest = rest;
		if (e == NULL)
			return true;
		p = e + 1;
	}
}

static bool same_shape(const struct route *a, const struct route *b)
{
	if (a->nseg != b->nseg || a->rest != b->rest)
		return false;
	for (size_t i = 0; i < a->nseg; i++) {
		if (a->seg[i].param != b->seg[i].param)
			return false;
		if (!a->seg[i].param && strcmp(a->seg[i].text, b->seg[i].text) != 0)
			return false;
	}
	return true;
}

bool router_add(struct router *r, unsigned methods, const char *template_, void *handler, void *arg)
{
	struct route rt = {.methods = methods, .handler = handler, .arg = arg};
	if (!parse_template(&rt, template_)) {
		for (size_t s = 0; s < rt.nseg; s++)
			free(rt.seg[s].text);
		return false;
	}
	for (size_t i = 0; i < r->n; i++) {
		if (same_shape(&r->routes[i], &rt) && (r->routes[i].methods & methods)) {
			for (size_t s = 0; s < rt.nseg; s++)
				free(rt.seg[s].text);
			return false;
		}
	}
	rt.template_ = xstrdup(template_);
	r->routes = xrealloc(r->routes, (r->n + 1) * sizeof *r->routes);
	r->routes[r->n++] = rt;
	return true;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Percent-decodes [p, p+len); NULL when the encoding is bad or yields NUL or '/'. */
static char *decode_segment(const char *p, size_t len)
{
	char *out = xmalloc(len + 1);
	size_t o = 0;
	for (size_t i = 0; i < len; i++) {
		char c = p[i];
		if (c == '%') {
			if (i + 2 >= len) {
				free(out);
				return NULL;
			}
			int h = hexval(p[i + 1]), l = hexval(p[i + 2]);
			if (h < 0 || l < 0) {
				free(out);
				return NULL;
			}
			c = (char)(h * 16 + l);
			if (c == '\0' || c == '/') {
				free(out);
				return NULL;
			}
			i += 2;
		}
		out[o++] = c;
	}
	out[o] = '\0';
	return out;
}

/* A segment is acceptable when its escapes are well formed, decode to
 * neither NUL nor '/', and it is not a dot segment, raw or encoded. */
static bool segment_ok(const char *p, size_t len)
{
	char *d = decode_segment(p, len);
	if (d == NULL)
		return false;
	bool dot = strcmp(d, ".") == 0 || strcmp(d, "..") == 0;
	free(d);
	return !dot;
}

/* Splits path into segments; false when one is empty or unacceptable. */
static bool split_path(const char *path, const char **seg, size_t *seglen, size_t *nseg)
{
	*nseg = 0;
	if (path[0] != '/')
		return false;
	const char *p = path + 1;
	if (*p == '\0')
		return true;
	for (;;) {
		const char *e = strchr(p, '/');
		size_t len = e ? (size_t)(e - p) : strlen(p);
		if (len == 0)
			return false; /* "//": an empty inner segment */
		if (!segment_ok(p, len) || *nseg == ROUTER_MAX_SEGMENTS)
			return false;
		seg[*nseg] = p;
		seglen[*nseg] = len;
		(*nseg)++;
		if (e == NULL || e[1] == '\0')
			return true; /* a single trailing slash is tolerated */
		p = e + 1;
	}
}

/* Score: how many literal segments matched (higher is more specific), -1 no match. */
static int route_score(const struct route *rt, const char **seg, const size_t *seglen, size_t n)
{
	if (rt->rest ? n < rt->nseg : rt->nseg != n)
		return -1;
	int score = 0;
	for (size_t i = 0; i < rt->nseg; i++) {
		if (rt->seg[i].param)
			continue;
		if (strlen(rt->seg[i].text) != seglen[i] ||
		    memcmp(rt->seg[i].text, seg[i], seglen[i]) != 0)
			return -1;
		score++;
	}
	return score * 2 + !rt->rest; /* equal literals: the fixed shape wins */
}

void router_match(const struct router *r, enum http_method method, const char *path,
                  struct route_match *m)
{
	memset(m, 0, sizeof *m);
	m->template_ = ROUTER_UNMATCHED;
	m->status = ROUTER_NOT_FOUND;
	const char *seg[ROUTER_MAX_SEGMENTS];
	size_t seglen[ROUTER_MAX_SEGMENTS], n;
	if (!split_path(path, seg, seglen, &n)) {
		m->status = ROUTER_BAD_PATH;
		return;
	}
	unsigned want = method == HTTP_M_HEAD ? (HTTP_M_HEAD | HTTP_M_GET) : (unsigned)method;
	const struct route *best = NULL, *best_any = NULL;
	int best_score = -1, best_any_score = -1;
	for (size_t i = 0; i < r->n; i++) {
		const struct route *rt = &r->routes[i];
		int s = route_score(rt, seg, seglen, n);
		if (s < 0)
			continue;
		if (s > best_any_score) {
			best_any = rt;
			best_any_score = s;
		}
		if ((rt->methods & want) && s > best_score) {
			best = rt;
			best_score = s;
		}
	}
	if (best_any == NULL)
		return;
	/* Allow lists the methods of the most specific template for this path. */
	for (size_t i = 0; i < r->n; i++)
		if (same_shape(&r->routes[i], best_any))
			m->allow |= r->routes[i].methods;
	if (m->allow & HTTP_M_GET)
		m->allow |= HTTP_M_HEAD;
	if (best == NULL || best_score < best_any_score) {
		m->status = ROUTER_METHOD_NOT_ALLOWED;
		m->template_ = best_any->template_;
		return;
	}
	for (size_t i = 0; i < best->nseg; i++) {
		if (!best->seg[i].param)
			continue;
		char *v = NULL;
		if (best->rest && i == best->nseg - 1) {
			/* {name+}: the remaining segments, each decoded, joined by '/' */
			size_t cap = 1;
			for (size_t k = i; k < n; k++)
				cap += seglen[k] + 1;
			v = xmalloc(cap);
			v[0] = '\0';
			for (size_t k = i; k < n; k++) {
				char *d = decode_segment(seg[k], seglen[k]);
				if (d == NULL) {
					free(v);
					v = NULL;
					break;
				}
				if (k > i)
					strcat(v, "/");
				strcat(v, d);
				free(d);
			}
		} else {
			v = decode_segment(seg[i], seglen[i]);
		}
		if (v == NULL) {
			route_match_clear(m);
			m->status = ROUTER_BAD_PATH;
			m->template_ = best->template_;
			return;
		}
		m->params[m->nparams].name = best->seg[i].text;
		m->params[m->nparams].value = v;
		m->nparams++;
	}
	m->status = ROUTER_FOUND;
	m->template_ = best->template_;
	m->handler = best->handler;
	m->arg = best->arg;
}

void route_match_clear(struct route_match *m)
{
	for (size_t i = 0; i < m->nparams; i++)
		free(m->params[i].value);
	m->nparams = 0;
}

const char *route_match_param(const struct route_match *m, const char *name)
{
	for (size_t i = 0; i < m->nparams; i++)
		if (strcmp(m->params[i].name, name) == 0)
			return m->params[i].value;
	return NULL;
}

static const struct {
	enum http_method m;
	const char *name;
} method_names[] = {
        {HTTP_M_GET, "GET"},         {HTTP_M_HEAD, "HEAD"},     {HTTP_M_POST, "POST"},
        {HTTP_M_PUT, "PUT"},         {HTTP_M_DELETE, "DELETE"}, {HTTP_M_PATCH, "PATCH"},
        {HTTP_M_OPTIONS, "OPTIONS"},
};

enum http_method http_method_parse(const char *s)
{
	for (size_t i = 0; i < sizeof method_names / sizeof method_names[0]; i++)
		if (strcmp(s, method_names[i].name) == 0)
			return method_names[i].m;
	return HTTP_M_OTHER;
}

const char *http_method_name(enum http_method m)
{
	for (size_t i = 0; i < sizeof method_names / sizeof method_names[0]; i++)
		if (method_names[i].m == m)
			return method_names[i].name;
	return "OTHER";
}

void http_methods_format(unsigned mask, char *out, size_t size)
{
	size_t o = 0;
	out[0] = '\0';
	for (size_t i = 0; i < sizeof method_names / sizeof method_names[0]; i++) {
		if (!(mask & method_names[i].m))
			continue;
		int n = snprintf(out + o, size - o, "%s%s", o ? ", " : "", method_names[i].name);
		if (n < 0 || (size_t)n >= size - o)
			break;
		o += (size_t)n;
	}
}
