/* RFC 9457 rendering. The standard members come first and cannot be
 * overridden by extensions, so a handler can't produce a misleading problem. */
#include "http/problem.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/xmalloc.h"

static const struct {
	int status;
	const char *reason;
} reasons[] = {
        {100, "Continue"},
        {200, "OK"},
        {201, "Created"},
        {202, "Accepted"},
        {204, "No Content"},
        {206, "Partial Content"},
        {304, "Not Modified"},
        {400, "Bad Request"},
        {401, "Unauthorized"},
        {403, "Forbidden"},
        {404, "Not Found"},
        {405, "Method Not Allowed"},
        {406, "Not Acceptable"},
        {408, "Request Timeout"},
        {409, "Conflict"},
        {410, "Gone"},
        {411, "Length Required"},
        {412, "Precondition Failed"},
        {413, "Content Too Large"},
        {414, "URI Too Long"},
        {415, "Unsupported Media Type"},
        {416, "Range Not Satisfiable"},
        {422, "Unprocessable Content"},
        {429, "Too Many Requests"},
        {431, "Request Header Fields Too Large"},
        {500, "Internal Server Error"},
        {501, "Not Implemented"},
        {502, "Bad Gateway"},
        {503, "Service Unavailable"},
        {504, "Gateway Timeout"},
        {505, "HTTP Version Not Supported"},
};

const char *http_status_reason(int status)
{
	for (size_t i = 0; i < sizeof reasons / sizeof reasons[0]; i++)
		if (reasons[i].status == status)
			return reasons[i].reason;
	return "Unknown";
}

/* json_string() refuses invalid UTF-8: keep the text, with U+FFFD for the
 * bad bytes, rather than drop the member. */
static json_t *lossy_string(const char *s)
{
	json_t *j = json_string(s);
	if (j)
		return j;
	struct buf b = BUF_INIT;
	buf_add_json_str(&b, s, strlen(s));
	j = json_loads(b.data, JSON_DECODE_ANY, NULL);
	buf_free(&b);
	return j ? j : json_string("");
}

static bool is_standard_member(const char *k)
{
	return strcmp(k, "type") == 0 || strcmp(k, "title") == 0 || strcmp(k, "status") == 0 ||
	       strcmp(k, "detail") == 0 || strcmp(k, "instance") == 0;
}

char *problem_render(int status, const char *slug, const char *title, const char *detail,
                     const char *instance, const json_t *extra)
{
	json_t *o = json_object();
	char *type = slug ? xasprintf(PROBLEM_TYPE_PREFIX "%s", slug) : xstrdup("about:blank");
	json_object_set_new(o, "type", lossy_string(type));
	free(type);
	json_object_set_new(o, "title", lossy_string(title ? title : http_status_reason(status)));
	json_object_set_new(o, "status", json_integer(status));
	if (detail)
		json_object_set_new(o, "detail", lossy_string(detail));
	if (instance)
		json_object_set_new(o, "instance", lossy_string(instance));
	if (extra && json_is_object(extra)) {
		const char *k;
		json_t *v;
		json_object_foreach((json_t *)extra, k, v)
		{
			if (!is_standard_member(k))
				json_object_set(o, k, v);
		}
	}
	char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	if (s == NULL) /* only on OOM inside jansson */
		s = xasprintf("{\"type\":\"about:blank\",\"status\":%d}", status);
	return s; /* jansson allocates with malloc: the caller free()s it */
}
