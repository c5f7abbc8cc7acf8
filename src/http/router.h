/* router: maps (method, path) to a handler through path templates like
 * /v1/jobs/{id}/tasks/{task_id}. Pure: no evhtp types. A match also yields
 * the template, which access logs and metrics use as the route label so raw
 * paths (ids, tokens) never become labels. */
#ifndef SL_HTTP_ROUTER_H
#define SL_HTTP_ROUTER_H

#include <stdbool.h>
#include <stddef.h>

enum http_method {
	HTTP_M_GET = 1 << 0,
	HTTP_M_HEAD = 1 << 1,
	HTTP_M_POST = 1 << 2,
	HTTP_M_PUT = 1 << 3,
	HTTP_M_DELETE = 1 << 4,
	HTTP_M_PATCH = 1 << 5,
	HTTP_M_OPTIONS = 1 << 6,
	HTTP_M_OTHER = 1 << 7,
};

#define ROUTER_MAX_PARAMS 8
#define ROUTER_UNMATCHED "(unmatched)"

enum router_status { ROUTER_FOUND, ROUTER_NOT_FOUND, ROUTER_METHOD_NOT_ALLOWED, ROUTER_BAD_PATH };

struct router;

struct route_match {
	enum router_status status;
	const char *template_; /* ROUTER_UNMATCHED when not found */
	void *handler; /* opaque to the router */
	void *arg;
	unsigned allow; /* methods the path accepts, for 405's Allow */
	size_t nparams;
	struct {
		const char *name; /* points into the router's template */
		char *value; /* percent-decoded, owned by the match */
	} params[ROUTER_MAX_PARAMS];
};

struct router *router_new(void);
void router_free(struct router *r);
/* Registers methods (a mask) on a template. A last segment {name+} takes
 * one or more segments: its value is them, each percent-decoded, joined by
 * '/' (an encoded '/' inside a segment is still refused). Returns false when the template
 * is malformed or the same method is already routed on an equal template. */
bool router_add(struct router *r, unsigned methods, const char *template_, void *handler, void *arg)
        __attribute__((warn_unused_result));
/* Matches path (no query string). Literal segments win over parameters;
 * at equal literal counts a template without {name+} wins.
 * HEAD matches GET routes. The caller releases m with route_match_clear(). */
void router_match(const struct router *r, enum http_method method, const char *path,
                  struct route_match *m);
void route_match_clear(struct route_match *m);
const char *route_match_param(const struct route_match *m, const char *name);

enum http_method http_method_parse(const char *s);
const char *http_method_name(enum http_method m);
/* "GET, HEAD, POST" for an Allow header; out needs 64 bytes. */
void http_methods_format(unsigned mask, char *out, size_t size);

#endif
