/* problem: RFC 9457 problem details (application/problem+json). Pure
 * rendering: the server decides when to send one, this decides how it reads.
 * Every type is a stable URN, urn:stageline:problem:<slug>, documented in
 * proto/openapi.yaml. */
#ifndef SL_HTTP_PROBLEM_H
#define SL_HTTP_PROBLEM_H

#include <jansson.h>

#define PROBLEM_CONTENT_TYPE "application/problem+json"
#define PROBLEM_TYPE_PREFIX "urn:stageline:problem:"

/* The standard reason phrase for a status ("Not Found"); "Unknown" when none. */
const char *http_status_reason(int status);
/* Renders {"type","title","status","detail","instance", ...extra}. slug NULL
 * means "about:blank"; title NULL takes the reason phrase; detail and
 * instance may be NULL; extra (borrowed, may be NULL) adds members but
 * cannot override the five standard ones. Returns a heap string. */
char *problem_render(int status, const char *slug, const char *title, const char *detail,
                     const char *instance, const json_t *extra);

#endif
